"""Reading CRIU's images, and refusing the ones that would restore more than a kernel had.

CRIU restores whatever credentials an image's ``core-*.img`` carry, bounded only by the
capabilities CRIU itself holds while restoring. CRIU runs as the kernel's uid, but with the
capabilities it needs (see ``criu.py``), and the kernel's user can write the images while a
dump is in flight: an edited image would otherwise come back as a process holding
CAP_SYS_PTRACE, which reads any root process's memory. So every image is checked against the
kernel's own identity when it enters the store and again, from the staged copy CRIU will
read, before every restore (:func:`check_images`).

The checks are an allow-list, because anything CRIU can restore with its capabilities is a
way in: only image kinds a kernel process produces are accepted (no ``creds-*.img`` that
CRIU falls back to, no network, namespace, cgroup or tun images), every thread must carry its
credentials (without them CRIU would leave its own capabilities on the restored thread), and
those credentials must be the kernel user's, with every capability set empty.

The protobuf reader is deliberately small (varints, length-delimited fields, fixed 32/64
bit) and follows protobuf's merge rules the way CRIU's protobuf-c does: a repeated embedded
message field is merged, the last scalar wins, repeated scalars may come packed or not. Its
writer (:meth:`Message.encode`, :func:`image`) re-encodes what the reader parsed, field by
field, so the daemon can edit its own staged copy of an image (``ports.py``) without a
protobuf dependency; an image CRIU wrote comes back byte for byte.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import ImageRefused
from .ids import KERNEL_ID_RE

IMG_COMMON_MAGIC = 0x54564319
IMG_SERVICE_MAGIC = 0x55105940
CORE_MAGIC = 0x55053847
MNTS_MAGIC = 0x55563928
FILES_MAGIC = 0x56303138
STATS_MAGIC = 0x57093306

# Image files a kernel's dump is made of (CRIU 4.x names, criu/image-desc.c). Anything else
# (creds-*, netns-*, tunfile, cgroup, userns-*, pidns-*, tmpfs-dev-*, iptables-*, ...) is
# refused. ``mountpoints-<n>.img`` (a kernel in its own mount namespace) only when it is the
# launcher's tree, entry for entry (``check_mountpoints``), and only one of them.
_ALLOWED = re.compile(
    r"(inventory|pstree|files|seccomp|filelocks|memfd|remap-fpath|tty-info|tty-data|"
    r"pipes-data|fifo-data|sk-queues|"
    r"(core|fdinfo|fs|ids|mm|pagemap|pagemap-shmem|pages|timens|rlimit|"
    r"itimers|posix-timers|signal-s|signal-p|sigacts)-\d+|"
    r"(ghost-file|tcp-stream)-[0-9a-f]+|mountpoints-\d+)\.img\Z"
    r"|stats-(dump|restore)\Z"
)

# file_entry.type values (images/fdinfo.proto) a kernel may hold and CRIU may restore with
# the capabilities it runs with; packet, netlink and tun sockets, namespaces, external files,
# fanotify and BPF maps are refused.
FD_TYPES_ALLOWED = {
    1: "REG", 2: "PIPE", 3: "FIFO", 4: "INETSK", 5: "UNIXSK", 6: "EVENTFD", 7: "EVENTPOLL",
    8: "INOTIFY", 9: "SIGNALFD", 11: "TTY", 17: "TIMERFD", 18: "MEMFD", 20: "PIDFD",
}  # fmt: skip
FD_TYPE_NAMES = {10: "PACKETSK", 12: "FANOTIFY", 13: "NETLINKSK", 14: "NS", 15: "TUNF",
                 16: "EXT", 19: "BPFMAP"}  # fmt: skip

# creds_entry field numbers (images/creds.proto).
_UID, _GID, _EUID, _EGID, _SUID, _SGID, _FSUID, _FSGID = range(1, 9)
_CAP_INH, _CAP_PRM, _CAP_EFF, _CAP_BND, _SECBITS, _GROUPS = 9, 10, 11, 12, 13, 14
_LSM_PROFILE, _LSM_SOCKCREATE, _APPARMOR_DATA, _NO_NEW_PRIVS, _CAP_AMB = 15, 16, 17, 18, 19
_CORE_TC, _CORE_THREAD_CORE = 3, 5
_TC_TASK_STATE = 1  # task_core_entry
TASK_DEAD = 2  # compel's COMPEL_TASK_DEAD: a zombie
# mnt_entry field numbers (images/mnt.proto).
_MNT_FSTYPE, _MNT_ID, _MNT_ROOT_DEV, _MNT_PARENT, _MNT_FLAGS = 1, 2, 3, 4, 5
_MNT_ROOT, _MNT_POINT, _MNT_SOURCE, _MNT_OPTIONS = 6, 7, 8, 9
_MNT_SHARED, _MNT_MASTER, _MNT_SB_FLAGS, _MNT_EXT_KEY = 10, 11, 17, 18
_MNT_FIELDS = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 17, 18}  # plugin, external, fsname, ...: no
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_RELATIME = 0x2, 0x4, 0x8, 0x200000
SHM = "/dev/shm"
# CRIU's fstype numbers (images/mnt.proto): 0 = a file system CRIU does not know (the root,
# bound from --root), 1 = proc, 3 = devtmpfs.
FSTYPE_AUTO, FSTYPE_PROC, FSTYPE_DEVTMPFS = 0, 1, 3
_THREAD_CORE_CREDS = 10
_FILE_TYPE = 1


class Malformed(ValueError):
    """Bytes that are not the protobuf they claim to be."""


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise Malformed("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _enc_varint(value: int) -> bytes:
    if value < 0 or value >= 1 << 64:
        raise Malformed(f"varint out of range: {value}")
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


@dataclass
class Message:
    """A protobuf message as its raw occurrences: field number -> [(wire type, value)]."""

    fields: dict[int, list[tuple[int, int | bytes]]]

    @classmethod
    def parse(cls, buf: bytes) -> Message:
        fields: dict[int, list[tuple[int, int | bytes]]] = {}
        i = 0
        while i < len(buf):
            key, i = _varint(buf, i)
            num, wire = key >> 3, key & 7
            value: int | bytes
            if wire == 0:
                value, i = _varint(buf, i)
            elif wire == 1:
                if i + 8 > len(buf):
                    raise Malformed("truncated fixed64")
                value, i = struct.unpack_from("<Q", buf, i)[0], i + 8
            elif wire == 2:
                size, i = _varint(buf, i)
                if i + size > len(buf):
                    raise Malformed("truncated field")
                value, i = bytes(buf[i : i + size]), i + size
            elif wire == 5:
                if i + 4 > len(buf):
                    raise Malformed("truncated fixed32")
                value, i = struct.unpack_from("<I", buf, i)[0], i + 4
            else:
                raise Malformed(f"unsupported wire type {wire}")
            if num == 0:
                raise Malformed("field number 0")
            fields.setdefault(num, []).append((wire, value))
        return cls(fields)

    def encode(self) -> bytes:
        """The message as protobuf bytes: fields in the order first seen, each field's
        occurrences in their order (what CRIU's protobuf-c writes comes back unchanged)."""
        out = bytearray()
        for num, occurrences in self.fields.items():
            for wire, value in occurrences:
                out += _enc_varint(num << 3 | wire)
                if wire == 0 and isinstance(value, int):
                    out += _enc_varint(value)
                elif wire == 1 and isinstance(value, int):
                    out += struct.pack("<Q", value)
                elif wire == 2 and isinstance(value, bytes):
                    out += _enc_varint(len(value)) + value
                elif wire == 5 and isinstance(value, int):
                    out += struct.pack("<I", value)
                else:
                    raise Malformed(f"field {num}: wire type {wire} cannot hold {value!r}")
        return bytes(out)

    def set_scalar(self, num: int, value: int) -> None:
        """Replace a varint field (every occurrence) by one occurrence of ``value``."""
        self.fields[num] = [(0, value)]

    def set_message(self, num: int, msg: Message) -> None:
        """Replace an embedded message field (every occurrence, merged) by ``msg``."""
        self.fields[num] = [(2, msg.encode())]

    def has(self, num: int) -> bool:
        return num in self.fields

    def scalar(self, num: int) -> int | None:
        """A varint field: the last occurrence wins, as in protobuf-c."""
        occurrences = self.fields.get(num)
        if not occurrences:
            return None
        wire, value = occurrences[-1]
        if wire != 0 or not isinstance(value, int):
            raise Malformed(f"field {num} is not a varint")
        return value

    def repeated(self, num: int) -> list[int]:
        """A repeated varint field, packed or not (parsers accept both)."""
        out: list[int] = []
        for wire, value in self.fields.get(num, []):
            if wire == 0 and isinstance(value, int):
                out.append(value)
            elif wire == 2 and isinstance(value, bytes):
                i = 0
                while i < len(value):
                    v, i = _varint(value, i)
                    out.append(v)
            else:
                raise Malformed(f"field {num} is not a repeated varint")
        return out

    def message(self, num: int) -> Message | None:
        """An embedded message: every occurrence merged, as protobuf does."""
        occurrences = self.fields.get(num)
        if not occurrences:
            return None
        if any(wire != 2 for wire, _ in occurrences):
            raise Malformed(f"field {num} is not a message")
        return Message.parse(b"".join(v for _, v in occurrences if isinstance(v, bytes)))

    def raw(self, num: int) -> list[bytes]:
        return [v for w, v in self.fields.get(num, []) if w == 2 and isinstance(v, bytes)]


def entries(data: bytes, magic: int | None) -> list[bytes]:
    """The protobuf entries of a CRIU image with the given type magic (None: any)."""
    if len(data) < 8:
        raise Malformed("image too short")
    first, second = struct.unpack_from("<II", data)
    if first not in (IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC) or magic not in (None, second):
        raise Malformed("bad magic")
    out, i = [], 8
    while i < len(data):
        if i + 4 > len(data):
            raise Malformed("truncated entry size")
        (size,) = struct.unpack_from("<I", data, i)
        i += 4
        if i + size > len(data):
            raise Malformed("truncated entry")
        out.append(data[i : i + size])
        i += size
    return out


def image(head: bytes, payloads: Iterable[bytes]) -> bytes:
    """A CRIU image: its 8-byte header (the two magics, kept from the image read) and each
    entry as a 32-bit little-endian size and its bytes; the inverse of :func:`entries`."""
    if len(head) != 8:
        raise Malformed("image header must be 8 bytes")
    return head + b"".join(struct.pack("<I", len(p)) + p for p in payloads)


@dataclass(frozen=True)
class Identity:
    """What every restored thread must be: the kernel's uid, gid and (at most) its groups."""

    uid: int
    gid: int
    groups: frozenset[int]


def _refuse(name: str, why: str) -> ImageRefused:
    return ImageRefused(f"snapshot image refused: {name}: {why}")


def check_creds(name: str, creds: Message, who: Identity) -> None:
    for field, what in ((_UID, "uid"), (_EUID, "euid"), (_SUID, "suid"), (_FSUID, "fsuid")):
        value = creds.scalar(field)
        if value != who.uid:
            raise _refuse(name, f"{what} {value} is not the kernel's uid {who.uid}")
    for field, what in ((_GID, "gid"), (_EGID, "egid"), (_SGID, "sgid"), (_FSGID, "fsgid")):
        value = creds.scalar(field)
        if value != who.gid:
            raise _refuse(name, f"{what} {value} is not the kernel's gid {who.gid}")
    if who.uid == 0:
        return  # a root kernel (privileged CRIU) has every capability anyway
    for field, what in ((_CAP_INH, "inheritable"), (_CAP_PRM, "permitted"),
                        (_CAP_EFF, "effective"), (_CAP_AMB, "ambient")):  # fmt: skip
        if any(creds.repeated(field)):
            raise _refuse(name, f"{what} capabilities are not empty")
    if creds.scalar(_SECBITS):
        raise _refuse(name, "securebits are set")
    extra = set(creds.repeated(_GROUPS)) - who.groups
    if extra:
        raise _refuse(name, f"supplementary groups {sorted(extra)} are not the kernel's")
    for field in (_LSM_PROFILE, _LSM_SOCKCREATE, _APPARMOR_DATA):
        if any(creds.raw(field)):
            raise _refuse(name, "a security-module profile is set")


def check_core(name: str, data: bytes, who: Identity) -> bool:
    """Every thread of a task has its own credentials, and they are the kernel's. Returns
    whether every thread has no_new_privs set (required of a namespaced kernel).

    A zombie (a child that exited and was not waited for yet, common under ``subprocess``,
    and every orphan of a namespaced kernel, whose PID 1 is ipykernel) is dumped with its
    task state and exit code only, no thread and no credentials: CRIU's restore forks it and
    it exits at once with that code (``restore_one_zombie``), running no code of the
    kernel's, so it is accepted as such. Which tasks are zombies CRIU decides from ``/proc``,
    not from anything the kernel can write."""
    nnp = True
    for entry in entries(data, CORE_MAGIC):
        core = Message.parse(entry)
        thread = core.message(_CORE_THREAD_CORE)
        creds = thread.message(_THREAD_CORE_CREDS) if thread else None
        if thread is None and _is_zombie(core):
            continue
        if creds is None:
            raise _refuse(name, "no credentials (CRIU would keep its own capabilities)")
        check_creds(name, creds, who)
        nnp = nnp and creds.scalar(_NO_NEW_PRIVS) == 1
    return nnp


def _is_zombie(core: Message) -> bool:
    tc = core.message(_CORE_TC)
    return tc is not None and tc.scalar(_TC_TASK_STATE) == TASK_DEAD


def check_files(name: str, data: bytes) -> None:
    for entry in entries(data, FILES_MAGIC):
        kind = Message.parse(entry).scalar(_FILE_TYPE)
        if kind not in FD_TYPES_ALLOWED:
            what = FD_TYPE_NAMES.get(kind or 0, f"type {kind}")
            raise _refuse(name, f"holds a {what} file, which Jusnap does not restore")


@dataclass(frozen=True)
class MountEntry:
    """One mount of a kernel's tree as CRIU records it (the fields a restore acts on)."""

    mountpoint: str
    fstype: int | None  # None: not compared (a host mount kept as an external bind)
    flags: int
    source: str | None  # None: not compared (idem: CRIU binds the daemon's path)
    root: str = "/"
    ext_key: str | None = None
    options: str | None = None  # None: not compared (a bind from the host: CRIU ignores it)


def _ms_flags(statvfs_flags: int) -> int:
    """The per-mount MS_ flags CRIU records for a mount with these statvfs flags."""
    st_to_ms = {1: 0x1, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: 0x400, 2048: 0x800,
                4096: MS_RELATIME}  # fmt: skip
    return sum(ms for st, ms in st_to_ms.items() if statvfs_flags & st)


def launcher_tree(
    shm_parent: str | None = None, kept: Sequence[tuple[str, str, bool]] = ()
) -> tuple[MountEntry, ...]:
    """The tree ``kernels/nsinit.py`` gives a namespaced kernel on this host: ``/`` (the
    host's root file system, remounted nosuid), ``/dev`` (the host's devtmpfs, external key
    ``dev``), ``/dev/shm`` (a kernel's own directory under ``shm_parent``, bound nosuid,nodev,
    external key ``shm``; its root is any kernel's directory there: CRIU binds the restoring
    kernel's own one instead, never this path), a ``/proc`` of the namespace (nosuid,
    nodev, noexec), and each host mount ``kept`` ((mount point, external key, read-only): the
    daemon's configuration names them, ``kernels.namespace.binds``) with the host's flags
    plus nosuid,nodev (and read-only) and its root; CRIU binds the host's mount at that
    path back by key."""
    import os

    with open("/proc/self/mountinfo") as fh:
        info = [ln.split() for ln in fh if " - " in ln]
    # The last "/" listed is the one on top (the root the kernel and CRIU see).
    tops = [f for f in info if f[4] == "/"]
    source = tops[-1][tops[-1].index("-") + 2] if tops else ""
    fs_root = tops[-1][3] if tops else "/"
    root_flags = _ms_flags(os.statvfs("/").f_flag) | MS_NOSUID
    dev_flags = _ms_flags(os.statvfs("/dev").f_flag)
    proc_flags = MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME
    tree = [
        MountEntry("/", FSTYPE_AUTO, root_flags, source),
        MountEntry("/dev", FSTYPE_DEVTMPFS, dev_flags, "devtmpfs", ext_key="dev"),
        MountEntry("/proc", FSTYPE_PROC, proc_flags, "proc", options=""),
    ]
    if shm_parent is not None:
        # The directory's path inside the root file system, as CRIU records a bind's root.
        inside = f"{fs_root.rstrip('/')}{os.path.realpath(shm_parent)}/"
        # On / (a namespaced launch needs the state directory there): /'s flags, and nodev.
        flags = root_flags | MS_NODEV
        tree.insert(2, MountEntry(SHM, FSTYPE_AUTO, flags, source, inside, ext_key="shm"))
    roots = {f[4]: f[3] for f in info}  # mount point -> its root in its file system
    for point, key, ro in kept:
        flags = _ms_flags(os.statvfs(point).f_flag) | MS_NOSUID | MS_NODEV | (0x1 if ro else 0)
        root = roots.get(_escape(point), "?")
        tree.append(MountEntry(point, None, flags, None, _unescape(root), ext_key=key))
    return tuple(tree)


def _escape(path: str) -> str:
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _string(msg: Message, num: int) -> str | None:
    values = msg.raw(num)
    return values[-1].decode(errors="replace") if values else None


def check_mountpoints(name: str, data: bytes, tree: tuple[MountEntry, ...]) -> None:
    """The dumped mount namespace must be exactly ``tree``, entry for entry.

    A restore of a namespaced kernel runs CRIU with CAP_SYS_ADMIN, and CRIU builds the new
    namespace from this image as it says: an edited one (written by the kernel's user while
    the dump is in flight) could drop nosuid from ``/`` or mount a tmpfs over ``/etc``.
    """
    want = {e.mountpoint: e for e in tree}
    seen: dict[str, tuple[int, int]] = {}  # mountpoint -> (mnt_id, parent_mnt_id)
    for entry in entries(data, MNTS_MAGIC):
        m = Message.parse(entry)
        extra = set(m.fields) - _MNT_FIELDS
        if extra:
            raise _refuse(name, f"a mount carries fields {sorted(extra)} the launcher never sets")
        point = _string(m, _MNT_POINT) or ""
        e = want.get(point)
        if e is None or point in seen:
            raise _refuse(name, f"mount {point!r} is not in the launcher's tree {sorted(want)}")
        got = MountEntry(
            point, m.scalar(_MNT_FSTYPE) or 0, m.scalar(_MNT_FLAGS) or 0,
            _string(m, _MNT_SOURCE) or "", _string(m, _MNT_ROOT) or "",
            _string(m, _MNT_EXT_KEY), None if e.options is None else _string(m, _MNT_OPTIONS),
        )  # fmt: skip
        got = dataclasses.replace(  # what CRIU does not act on for an external bind
            got, **{f: None for f in ("fstype", "source") if getattr(e, f) is None}
        )
        if point == SHM:  # any kernel's own directory under e.root; nothing else
            ok = _is_kernel_dir(got.root, e.root)
            got = dataclasses.replace(got, root=e.root if ok else f"{got.root} (no kernel's)")
        if got != e:
            diff = [f"{f}={getattr(got, f)!r} (want {getattr(e, f)!r})"
                    for f in ("fstype", "flags", "source", "root", "ext_key", "options")
                    if getattr(got, f) != getattr(e, f)]  # fmt: skip
            raise _refuse(name, f"mount {point} differs from the launcher's: {', '.join(diff)}")
        for num, what in ((_MNT_SHARED, "shared"), (_MNT_MASTER, "slave"),
                          (_MNT_SB_FLAGS, "superblock flags")):  # fmt: skip
            if m.scalar(num):
                raise _refuse(name, f"mount {point} has {what} set; the launcher's are private")
        seen[point] = (m.scalar(_MNT_ID) or 0, m.scalar(_MNT_PARENT) or 0)
    # /dev/shm may be absent: a snapshot from before the launcher bound it.
    if set(seen) | {SHM} != set(want) | {SHM}:
        raise _refuse(name, f"mounts {sorted(set(want) - set(seen) - {SHM})} are missing")
    for point, (_mnt_id, parent) in seen.items():
        on = _parent_point(point, want)
        if point != "/" and parent != seen[on][0]:
            raise _refuse(name, f"mount {point} does not hang on {on}")


def _parent_point(point: str, points: Iterable[str]) -> str:
    """The mount point of the tree ``point`` hangs on: the longest one above it."""
    above = [p for p in points if p != point and (p == "/" or point.startswith(p + "/"))]
    return max(above, key=len, default="/")


def _is_kernel_dir(root: str, parent: str) -> bool:
    """Whether a bind's root is a kernel's directory right under ``parent`` (ends in /)."""
    return root.startswith(parent) and bool(KERNEL_ID_RE.match(root[len(parent) :]))


_REG, _FILE_REG, _REG_NAME, _REG_EXT = 1, 3, 6, 9
EXTERNAL_FILE = re.compile(r"file\[[0-9a-f]{1,8}:[0-9a-f]{1,16}\]\Z")


def external_files(data: bytes) -> list[str]:
    """The names of the regular files a dump declared external (``--external file[...]``):
    CRIU restores them only from descriptors handed over with ``--inherit-fd``."""
    out = []
    for entry in entries(data, FILES_MAGIC):
        fe = Message.parse(entry)
        reg = fe.message(_FILE_REG) if fe.scalar(_FILE_TYPE) == _REG else None
        if reg is not None and reg.scalar(_REG_EXT):
            out.append(_string(reg, _REG_NAME) or "")
    return sorted(set(out))


def check_name(name: str) -> None:
    if not _ALLOWED.match(name):
        raise _refuse(name, "not an image kind a kernel's dump contains")


class ImageCheck:
    """Checks a dump's files as they are read, then that nothing vital was missing.

    ``feed`` gets each file's name and, for the small images, their bytes; page images are
    data (``bytes`` is then None). Raises :class:`ImageRefused` at the first problem.
    """

    def __init__(self, who: Identity, tree: tuple[MountEntry, ...] | None = None) -> None:
        self.who = who
        self.tree = tree
        self.cores = 0
        self.without_nnp: list[str] = []  # cores of a thread without no_new_privs
        self.namespaced = False
        self.seen: set[str] = set()

    def feed(self, name: str, data: bytes | None) -> None:
        check_name(name)
        self.seen.add(name)
        try:
            if name.startswith("core-"):
                if data is None:
                    raise _refuse(name, "unreadable")
                if not check_core(name, data, self.who):
                    self.without_nnp.append(name)
                self.cores += 1
            elif name.startswith("mountpoints-"):
                if data is None or self.namespaced:
                    raise _refuse(name, "unreadable, or a second mount namespace")
                check_mountpoints(name, data, self.tree or launcher_tree())
                self.namespaced = True
            elif name == "files.img" and data is not None:
                check_files(name, data)
        except Malformed as exc:
            raise _refuse(name, f"malformed ({exc})") from None

    def done(self) -> None:
        if not self.cores or "pstree.img" not in self.seen:
            raise ImageRefused("snapshot image refused: it has no process in it")
        if self.namespaced and self.without_nnp:
            # / is nosuid in the kernel's namespace, and no_new_privs holds independently:
            # even a swapped mount cannot turn a setuid program into root.
            raise _refuse(self.without_nnp[0], "a thread of a namespaced kernel lacks no_new_privs")


def check_images(
    files: Iterable[tuple[str, bytes | None]],
    who: Identity,
    tree: tuple[MountEntry, ...] | None = None,
) -> bool:
    """Check a whole dump; returns whether it is of a namespaced kernel."""
    check = ImageCheck(who, tree)
    for name, data in files:
        check.feed(name, data)
    check.done()
    return check.namespaced


def needs_bytes(name: str) -> bool:
    """Whether :class:`ImageCheck` reads this file's contents."""
    return name.startswith(("core-", "mountpoints-")) or name == "files.img"


def stats_field(data: bytes, *path: int) -> int | None:
    """A varint inside CRIU's ``stats-dump`` image (a service image)."""
    try:
        (entry,) = entries(data, STATS_MAGIC)
        msg: Message | None = Message.parse(entry)
        for num in path[:-1]:
            msg = msg.message(num) if msg else None
        return msg.scalar(path[-1]) if msg else None
    except (Malformed, ValueError):
        return None
