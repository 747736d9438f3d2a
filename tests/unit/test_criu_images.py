"""The image checks on synthetic CRIU images: every way to smuggle credentials is refused.

Pure logic (bytes in, verdict out); the same checks run against real dumps in
tests/integration/test_security.py.
"""

from __future__ import annotations

import pytest
from jusnap.criu_images import (
    CORE_MAGIC,
    MNTS_MAGIC,
    Identity,
    Message,
    MountEntry,
    check_images,
    launcher_tree,
    stats_field,
)
from jusnap.errors import ImageRefused

from tests.criu_craft import (
    drop_creds,
    edit_creds,
    encode,
    files_image,
    image,
    second_creds_with_caps,
    set_field,
    with_caps,
)

WHO = Identity(uid=1001, gid=1001, groups=frozenset({1001, 27}))


def creds(uid: int = 1001, gid: int = 1001, groups: tuple[int, ...] = (1001,)) -> bytes:
    fields = [(n, 0, uid) for n in (1, 3, 5, 7)] + [(n, 0, gid) for n in (2, 4, 6, 8)]
    fields += [(9, 0, 0), (9, 0, 0), (10, 0, 0), (10, 0, 0), (11, 0, 0), (11, 0, 0)]
    fields += [(12, 0, 0xFFFFFFFF), (12, 0, 0x1FF), (13, 0, 0)]
    fields += [(14, 0, g) for g in groups]
    return encode(fields)


def core(creds_bytes: bytes | None = None) -> bytes:
    thread = [(1, 0, 0), (2, 0, 24)]
    if creds_bytes is not None:
        thread.append((10, 2, creds_bytes))
    entry = encode([(1, 0, 1), (2, 2, b"\x08\x00"), (5, 2, encode(thread))])
    return image(CORE_MAGIC, [entry])


def dump(core_bytes: bytes, **extra: bytes | None) -> list[tuple[str, bytes | None]]:
    files = [("inventory.img", b""), ("pstree.img", b""), ("core-42.img", core_bytes),
             ("pages-1.img", None), ("files.img", files_image([1, 2, 4, 5, 6, 7]))]  # fmt: skip
    return files + list(extra.items())


def test_a_kernels_own_image_passes() -> None:
    check_images(dump(core(creds())), WHO)


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (with_caps(), "capabilities are not empty"),
        (with_caps(packed=True), "capabilities are not empty"),
        (with_caps((0, 1 << 8)), "capabilities are not empty"),  # CAP_CHECKPOINT_RESTORE alone
        (set_field(1, 0), "uid 0 is not the kernel's"),
        (set_field(3, 0), "euid 0"),
        (set_field(7, 0), "fsuid 0"),
        (set_field(4, 0), "egid 0"),
        (set_field(13, 1), "securebits"),
        (lambda c: [*c, (14, 0, 0)], r"supplementary groups \[0\]"),
        (lambda c: [*c, (15, 2, b"unconfined")], "security-module"),
    ],
    ids=[
        "caps",
        "caps-packed",
        "one-cap",
        "uid",
        "euid",
        "fsuid",
        "egid",
        "secbits",
        "group",
        "lsm",
    ],
)
def test_crafted_credentials_are_refused(edit, why: str) -> None:
    crafted = edit_creds(core(creds()), edit)
    with pytest.raises(ImageRefused, match=why):
        check_images(dump(crafted), WHO)


def test_a_second_creds_message_is_merged_like_protobuf_does() -> None:
    with pytest.raises(ImageRefused, match="capabilities are not empty"):
        check_images(dump(second_creds_with_caps(core(creds()))), WHO)


def test_a_thread_without_creds_is_refused() -> None:
    """CRIU would then leave its own (lent) capabilities on the restored thread."""
    with pytest.raises(ImageRefused, match="no credentials"):
        check_images(dump(drop_creds(core(creds()))), WHO)
    with pytest.raises(ImageRefused, match="no credentials"):
        check_images(dump(core(None)), WHO)


def _task_only_core(task_state: int) -> bytes:
    """A core image as CRIU writes it for a zombie: march and task state, no thread."""
    tc = encode([(1, 0, task_state), (2, 0, 0), (3, 0, 0), (4, 0, 0), (5, 0, 0)])
    return image(CORE_MAGIC, [encode([(1, 0, 1), (3, 2, tc)])])


def test_a_zombie_passes_and_only_a_zombie_goes_without_credentials() -> None:
    """A zombie is restored as a task that exits at once, running none of the kernel's code:
    it needs no credentials. A task that will run (alive, stopped) without them is refused."""
    zombie = [("core-43.img", _task_only_core(2))]
    check_images(dump(core(creds()), **dict(zombie)), WHO)
    for state in (1, 3):
        with pytest.raises(ImageRefused, match="no credentials"):
            check_images(dump(core(creds()), **{"core-43.img": _task_only_core(state)}), WHO)


@pytest.mark.parametrize(
    "name",
    [
        "creds-42.img",
        "tunfile.img",
        "netns-1.img",
        "cgroup.img",
        "userns-1.img",
        "pidns-1.img",
        "tmpfs-dev-23.tar.gz.img",
        "mntns-1.img",
        "../core-1.img",
        "core-1.img\n",
    ],
)
def test_image_kinds_a_kernel_never_has_are_refused(name: str) -> None:
    with pytest.raises(ImageRefused, match="not an image kind"):
        check_images(dump(core(creds()), **{name: b""}), WHO)


@pytest.mark.parametrize("kind", [10, 13, 14, 15, 16, 19])
def test_file_kinds_needing_privileges_are_refused(kind: int) -> None:
    files = dump(core(creds()))
    files = [(n, files_image([1, kind]) if n == "files.img" else d) for n, d in files]
    with pytest.raises(ImageRefused, match="which Jusnap does not restore"):
        check_images(files, WHO)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x19\x43\x56\x54",
        image(0x12345678, [b""]),
        image(CORE_MAGIC, [b"\xff"]),
        core(creds())[:-3],
        image(CORE_MAGIC, [b"\x0b\x00"]),
    ],
    ids=["empty", "short", "other-magic", "bad-varint", "truncated", "group-wire-type"],
)
def test_malformed_core_images_are_refused(data: bytes) -> None:
    with pytest.raises(ImageRefused):
        check_images(dump(data), WHO)


def test_an_empty_dump_is_refused() -> None:
    with pytest.raises(ImageRefused, match="no process"):
        check_images([("inventory.img", b"")], WHO)


def test_root_kernels_keep_their_capabilities() -> None:
    root = Identity(0, 0, frozenset({0}))
    check_images(dump(edit_creds(core(creds(0, 0, (0,))), with_caps())), root)


def test_protobuf_reader_rules() -> None:
    m = Message.parse(encode([(1, 0, 5), (1, 0, 7), (2, 2, b"\x01\x02"), (2, 0, 3)]))
    assert m.scalar(1) == 7  # last wins
    assert m.repeated(2) == [1, 2, 3]  # packed and unpacked together
    assert stats_field(b"garbage", 1, 2) is None


# ---- a kernel in its own mount namespace: mountpoints-<n>.img pinned to the launcher's tree

# A real dump's mountpoints-10.img (a namespaced kernel on the dev machine, CRIU 4.2.1): /proc
# of the namespace, /dev external as "dev", / from /dev/vda remounted nosuid.
REAL_MOUNTPOINTS = bytes.fromhex(
    "1943565428395655260000000801102c1827202b288e80800132012f3a052f70726f63420470726f634a00"
    "50005800880100580000000803103a1806202b288080800132012f3a042f6465764208646576746d706673"
    "4a2973697a653d31323333343433326b2c6e725f696e6f6465733d333038333630382c6d6f64653d373535"
    "50005800880100920103646576560000000800102b188080807f202a288280800132012f3a012f42082f64"
    "65762f7664614a2d646973636172642c726573765f7374726963742c7265737569643d36353533342c7265"
    "736769643d363535333450005800880100"
)
TREE = (
    MountEntry("/", 0, 0x200002, "/dev/vda"),
    MountEntry("/dev", 3, 0x200000, "devtmpfs", ext_key="dev"),
    MountEntry("/proc", 1, 0x20000E, "proc", options=""),
)
NNP = 18  # creds_entry.no_new_privs


def mounts(*entries: list[tuple[int, int, int | bytes]]) -> bytes:
    return image(MNTS_MAGIC, [encode(e) for e in entries])


def mnt(point: str, fstype: int, flags: int, source: str, mnt_id: int, parent: int,
        ext_key: str | None = None, options: str = "") -> list[tuple[int, int, int | bytes]]:  # fmt: skip
    fields: list[tuple[int, int, int | bytes]] = [
        (1, 0, fstype), (2, 0, mnt_id), (3, 0, 7), (4, 0, parent), (5, 0, flags),
        (6, 2, b"/"), (7, 2, point.encode()), (8, 2, source.encode()), (9, 2, options.encode()),
        (10, 0, 0), (11, 0, 0), (17, 0, 0),
    ]  # fmt: skip
    if ext_key is not None:
        fields.append((18, 2, ext_key.encode()))
    return fields


GOOD = [
    mnt("/proc", 1, 0x20000E, "proc", 44, 43),
    mnt("/dev", 3, 0x200000, "devtmpfs", 58, 43, ext_key="dev", options="size=1k"),
    mnt("/", 0, 0x200002, "/dev/vda", 43, 42, options="discard"),
]


def ns_dump(mountpoints: bytes, nnp: int | None = 1) -> list[tuple[str, bytes | None]]:
    c = creds() + (encode([(NNP, 0, nnp)]) if nnp is not None else b"")
    return dump(core(c), **{"mountpoints-10.img": mountpoints})


def test_the_real_launcher_tree_is_accepted() -> None:
    assert check_images(ns_dump(REAL_MOUNTPOINTS), WHO, TREE) is True
    assert check_images(ns_dump(mounts(*GOOD)), WHO, TREE) is True
    assert check_images(dump(core(creds())), WHO, TREE) is False  # a plain kernel's dump


def _changed(index: int, field: int, value: int | bytes) -> list:
    out = [list(e) for e in GOOD]
    out[index] = [(n, w, value if n == field else v) for n, w, v in out[index]]
    return out


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        (_changed(2, 5, 0x200000), "flags"),  # nosuid cleared on /
        (_changed(0, 5, 0x200000), "flags"),  # /proc without nosuid,nodev,noexec
        (_changed(1, 5, 0x200001), "flags"),  # /dev read-only
        (_changed(2, 1, 2), "fstype"),  # / as a tmpfs-like known file system
        (_changed(0, 1, 0), "fstype"),
        (_changed(2, 8, b"/dev/vdb"), "source"),  # another device as /
        (_changed(2, 6, b"/etc"), "root"),  # a subtree bound as /
        (_changed(1, 18, b"other"), "ext_key"),  # /dev bound from elsewhere
        (_changed(0, 9, b"hidepid=0,gid=0"), "options"),
        (_changed(0, 7, b"/etc"), "not in the launcher's tree"),  # a mount over /etc
        (_changed(1, 10, 5), "shared"),
        (_changed(1, 11, 5), "slave"),
        (_changed(0, 17, 1), "superblock"),
        (_changed(0, 4, 99), "does not hang on /"),
        (GOOD[:2], "missing"),
        ([*GOOD, GOOD[0]], "not in the launcher's tree"),  # a second /proc stacked
        ([*GOOD, mnt("/tmp", 2, 0x200002, "tmpfs", 60, 43)], "not in the launcher's tree"),
        ([*GOOD[:2], [*GOOD[2], (12, 0, 1)]], "fields"),  # with_plugin
        ([GOOD[0], [f for f in GOOD[1] if f[0] != 18], GOOD[2]], "ext_key"),  # /dev not external
    ],
)
def test_each_change_to_the_launcher_tree_is_refused(entries: list, why: str) -> None:
    with pytest.raises(ImageRefused, match=why):
        check_images(ns_dump(mounts(*entries)), WHO, TREE)


def test_real_tree_with_nosuid_cleared_is_refused() -> None:
    """The tamper a kernel user could do while its dump is written (docs/fork-design.md)."""
    data = bytearray(REAL_MOUNTPOINTS)
    at = data.index(bytes.fromhex("288280800132012f3a012f"))  # / : flags 0x200002
    data[at + 1] = 0x80  # 0x200000: nosuid gone
    with pytest.raises(ImageRefused, match=r"mount / differs.*flags"):
        check_images(ns_dump(bytes(data)), WHO, TREE)


@pytest.mark.parametrize("nnp", [None, 0])
def test_a_namespaced_core_without_no_new_privs_is_refused(nnp: int | None) -> None:
    with pytest.raises(ImageRefused, match="no_new_privs"):
        check_images(ns_dump(REAL_MOUNTPOINTS, nnp=nnp), WHO, TREE)
    # the same core in a plain kernel's dump is fine (plain kernels never had it)
    assert check_images(dump(core(creds())), WHO, TREE) is False


def test_a_second_mount_namespace_is_refused() -> None:
    files = [*ns_dump(REAL_MOUNTPOINTS), ("mountpoints-11.img", REAL_MOUNTPOINTS)]
    with pytest.raises(ImageRefused, match="second mount namespace"):
        check_images(files, WHO, TREE)


# ---- /dev/shm: the kernel's own directory, bound nosuid,nodev, external key "shm"

# A real dump's mountpoints image with the launcher's /dev/shm (CRIU 4.2.1, dev machine): the
# bind's root is the dumped kernel's directory (CRIU records it; a restore binds the restoring
# kernel's own directory given by key, never this path).
REAL_WITH_SHM = bytes.fromhex(
    "1943565428395655a800000008001045188080807f2059288680800132462f7661722f746d702f6a75736e61"
    "702d746573742d6d706865723637652f73686d2f37623265663330312d363237642d343132312d613933372d"
    "3739303334303335653831343a082f6465762f73686d42082f6465762f7664614a2d646973636172642c7265"
    "73765f7374726963742c7265737569643d36353533342c7265736769643d3635353334500058008801009201"
    "0373686d2600000008011044182f2043288e80800132012f3a052f70726f63420470726f634a005000580088"
    "0100580000000803105918062043288080800132012f3a042f6465764208646576746d7066734a2973697a65"
    "3d31323333343433326b2c6e725f696e6f6465733d333038333630382c6d6f64653d37353550005800880100"
    "9201036465765600000008001043188080807f2042288280800132012f3a012f42082f6465762f7664614a2d"
    "646973636172642c726573765f7374726963742c7265737569643d36353533342c7265736769643d36353533"
    "3450005800880100"
)
SHM_PARENT = "/var/tmp/jusnap-test-mpher67e/shm/"
SHM_ROOT = SHM_PARENT + "7b2ef301-627d-4121-a937-79034035e814"
TREE_SHM = (
    *TREE[:2],
    MountEntry("/dev/shm", 0, 0x200006, "/dev/vda", SHM_PARENT, ext_key="shm"),
    TREE[2],
)


def shm(root: str = SHM_ROOT, flags: int = 0x200006, parent: int = 58, ext: str = "shm",
        fstype: int = 0, source: str = "/dev/vda") -> list:  # fmt: skip
    fields = mnt("/dev/shm", fstype, flags, source, 69, parent, ext_key=ext)
    return [(n, w, root.encode() if n == 6 else v) for n, w, v in fields]


def test_the_real_tree_with_shm_is_accepted_and_so_is_one_without() -> None:
    assert check_images(ns_dump(REAL_WITH_SHM), WHO, TREE_SHM) is True
    assert check_images(ns_dump(mounts(*GOOD, shm())), WHO, TREE_SHM) is True
    # Any kernel's directory (a restore into another kernel binds its own directory).
    other = SHM_PARENT + "00000000-1111-2222-3333-444444444444"
    assert check_images(ns_dump(mounts(*GOOD, shm(root=other))), WHO, TREE_SHM) is True
    # A snapshot from before /dev/shm was bound.
    assert check_images(ns_dump(REAL_MOUNTPOINTS), WHO, TREE_SHM) is True
    # A tree that never allowed it refuses it.
    with pytest.raises(ImageRefused, match="not in the launcher's tree"):
        check_images(ns_dump(REAL_WITH_SHM), WHO, TREE)


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (shm(flags=0x200004), "flags"),  # nosuid cleared
        (shm(flags=0x200002), "flags"),  # nodev cleared
        (shm(root="/"), "root"),  # the whole root file system
        (shm(root="/etc"), "root"),
        (shm(root=SHM_PARENT), "root"),  # every kernel's directories
        (shm(root=SHM_PARENT + "../../etc"), "root"),
        (shm(root=SHM_ROOT + "/sub"), "root"),
        (shm(root="/var/tmp/other/shm/" + SHM_ROOT.rsplit("/", 1)[1]), "root"),
        (shm(ext="dev"), "ext_key"),
        (shm(fstype=2), "fstype"),  # a tmpfs CRIU would mount and fill from the images
        (shm(source="/dev/vdb"), "source"),
        (shm(parent=43), "does not hang on /dev"),
        ([f for f in shm() if f[0] != 18], "ext_key"),  # not external: CRIU would bind a path
    ],
)
def test_each_change_to_shm_is_refused(entry: list, why: str) -> None:
    with pytest.raises(ImageRefused, match=why):
        check_images(ns_dump(mounts(*GOOD, entry)), WHO, TREE_SHM)


def test_a_second_shm_is_refused() -> None:
    with pytest.raises(ImageRefused, match="not in the launcher's tree"):
        check_images(ns_dump(mounts(*GOOD, shm(), shm())), WHO, TREE_SHM)


# ---- host mounts kept in the namespace (socket directory, home, data volume)

KEPT = MountEntry("/run", None, 0x200006, None, "/", ext_key="bind-0123456789abcdef")
# /run/x kept read-only (for the daemon's socket alone)
KEPT_SUB = MountEntry("/run/x", None, 0x200007, None, "/sub", ext_key="bind-fedcba9876543210")
TREE_KEPT = (*TREE_SHM, KEPT, KEPT_SUB)


def kept(point: str = "/run", flags: int = 0x200006, parent: int = 43, root: str = "/",
         ext: str | None = "bind-0123456789abcdef", mnt_id: int = 80) -> list:  # fmt: skip
    fields = mnt(point, 2, flags, "tmpfs", mnt_id, parent, ext_key=ext)
    return [(n, w, root.encode() if n == 6 else v) for n, w, v in fields]


SUB = kept("/run/x", 0x200007, 80, "/sub", "bind-fedcba9876543210", 81)


def test_kept_host_mounts_are_accepted_as_configured() -> None:
    assert check_images(ns_dump(mounts(*GOOD, shm(), kept(), SUB)), WHO, TREE_KEPT) is True
    # file system type and source: not what CRIU acts on for an external bind
    other = [(n, w, 5 if n == 1 else b"x" if n == 8 else v) for n, w, v in kept()]
    assert check_images(ns_dump(mounts(*GOOD, other, SUB)), WHO, TREE_KEPT) is True


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([kept(flags=0x200004), SUB], "flags"),  # nosuid cleared
        ([kept(flags=0x200002), SUB], "flags"),  # nodev cleared
        (
            [kept(), kept("/run/x", 0x200006, 80, "/sub", "bind-fedcba9876543210", 81)],
            "flags",
        ),  # writable where the configuration keeps it read-only
        ([kept(ext="bind-ffffffffffffffff"), SUB], "ext_key"),  # another host path's key
        ([kept(ext=None), SUB], "ext_key"),  # not external: CRIU would mount a tmpfs itself
        ([kept(root="/etc"), SUB], "root"),
        ([kept()], "missing"),  # the configuration keeps /run/x too
        ([kept(), SUB, kept("/srv", mnt_id=82)], "not in the launcher's tree"),
        (
            [kept(), kept("/run/x", 0x200007, 43, "/sub", "bind-fedcba9876543210")],
            "does not hang on /run",
        ),
    ],
)
def test_each_change_to_a_kept_mount_is_refused(entries: list, why: str) -> None:
    with pytest.raises(ImageRefused, match=why):
        check_images(ns_dump(mounts(*GOOD, *entries)), WHO, TREE_KEPT)


def test_a_kept_mount_the_configuration_no_longer_keeps_is_refused() -> None:
    with pytest.raises(ImageRefused, match="not in the launcher's tree"):
        check_images(ns_dump(mounts(*GOOD, kept())), WHO, TREE_SHM)


def test_launcher_tree_pins_shm_under_the_state_directory(tmp_path) -> None:
    tree = {e.mountpoint: e for e in launcher_tree(str(tmp_path / "shm"))}
    assert sorted(tree) == ["/", "/dev", "/dev/shm", "/proc"]
    e = tree["/dev/shm"]
    assert e.ext_key == "shm" and e.root.endswith(f"{tmp_path}/shm/")
    assert e.flags & 0x6 == 0x6 and e.source == tree["/"].source and e.fstype == tree["/"].fstype
    assert "/dev/shm" not in {e.mountpoint for e in launcher_tree()}


def test_a_malformed_mountpoints_image_is_refused() -> None:
    with pytest.raises(ImageRefused, match="malformed"):
        check_images(ns_dump(REAL_MOUNTPOINTS[:-3]), WHO, TREE)
