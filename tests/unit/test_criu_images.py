"""The image checks on synthetic CRIU images: every way to smuggle credentials is refused.

Pure logic (bytes in, verdict out); the same checks run against real dumps in
tests/integration/test_security.py.
"""

from __future__ import annotations

import pytest
from jusnap.criu_images import (
    CORE_MAGIC,
    Identity,
    Message,
    check_images,
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


@pytest.mark.parametrize(
    "name",
    [
        "creds-42.img",
        "tunfile.img",
        "netns-1.img",
        "cgroup.img",
        "userns-1.img",
        "mountpoints-1.img",
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
