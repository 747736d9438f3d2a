"""Root-side launcher of a namespaced kernel: run by the daemon as ``python -I nsinit.py``.

Standalone (stdlib only, no import of Jusnap): the daemon is multi-threaded, so it cannot
``fork`` and then call ``unshare``/``mount`` in the child safely, and ``unshare(CLONE_NEWPID)``
in the daemon itself would put every later child of every thread into the new namespace.

What it does (docs/fork-design.md, "Recommended design", measured to dump and restore):

1. ``unshare(CLONE_NEWPID | CLONE_NEWNS)`` and makes every mount private (nothing the kernel
   namespace does propagates back to the host);
2. forks the kernel-to-be, which is PID 1 of the new PID namespace; in it, still as root:
   unmounts everything but ``/`` and ``/dev`` (detached, deepest first), mounts a ``/proc`` of
   the new namespace (nosuid, nodev, noexec), remounts ``/`` nosuid (in this namespace only),
   checks that exactly the tree ``/``, ``/dev``, ``/proc`` is left, opens its stdio *inside*
   the new mount namespace (``/dev/null``, and the kernel's log, append-only: a descriptor
   opened in the host's mount namespace fails the dump with "Can't lookup mount"), sets
   no_new_privs, starts a new session, drops to the kernel's uid, gid and groups (no
   capability survives that), enters the first working directory the user itself can enter,
   and execs the kernel;
3. the parent waits until the child has exec'd (a close-on-exec pipe reaches EOF) or failed
   (the pipe carries the reason), prints ``pid <outer pid>`` or ``error: <why>`` and exits: the
   kernel is then re-parented to the daemon, a child subreaper, which read the PID from this
   root process's stdout, never from a file the kernel's user can write.

Usage: nsinit.py UID GID GROUPS(comma list, may be empty) LOG CWD[:CWD...] -- ARGV...
(the environment is the kernel's).
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 0x400, 0x800, 0x200000
MNT_DETACH = 0x2
PR_SET_NO_NEW_PRIVS = 38
# statvfs f_flag bits -> the per-mount MS_ flags a bind remount must repeat to keep them.
_ST_TO_MS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME,
             2048: MS_NODIRATIME, 4096: MS_RELATIME}  # fmt: skip
#: The mount tree a namespaced kernel sees, and the only one its snapshots may carry.
TREE = ("/", "/dev", "/proc")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), None),
           f"mount {target}")  # fmt: skip


def _unescape(field: str) -> str:
    """A mountinfo path: spaces, tabs, newlines and backslashes come octal-escaped."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and len(field[i + 1 : i + 4]) == 3:
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mountpoints() -> list[str]:
    with open("/proc/self/mountinfo") as fh:
        return [_unescape(line.split()[4]) for line in fh if line.strip()]


def _trim_tree() -> None:
    """Leave ``/`` and ``/dev`` only, then the namespace's own ``/proc``; ``/`` nosuid."""
    for _ in range(16):  # stacked mounts (a second /dev/shm over the first) take passes
        extra = [m for m in mountpoints() if m not in ("/", "/dev", "/proc")]
        if not extra:
            break
        for mp in sorted(extra, key=lambda m: (-m.count("/"), m)):
            if _libc.umount2(mp.encode(), MNT_DETACH) != 0 and ctypes.get_errno() not in (22, 2):
                _check(-1, f"umount {mp}")  # EINVAL/ENOENT: already gone with its parent
    for _ in range(mountpoints().count("/proc")):  # the host's /proc goes last: it lists them
        _check(_libc.umount2(b"/proc", MNT_DETACH), "umount /proc")
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    keep = 0
    for bit, ms in _ST_TO_MS.items():
        if os.statvfs("/").f_flag & bit:
            keep |= ms
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_NOSUID | keep)
    left = sorted(mountpoints())
    if left != sorted(TREE):
        raise OSError(0, f"mount tree is {left}, not {sorted(TREE)}")


def _child(uid: int, gid: int, groups: list[int], log: str, cwds: list[str],
           argv: list[str], errpipe: int) -> None:  # fmt: skip
    # Nothing opened outside the kernel's mount namespace may reach it (CRIU could not dump
    # it: "Can't lookup mount"); the error pipe closes itself at exec.
    os.closerange(3, errpipe)
    os.closerange(errpipe + 1, os.sysconf("SC_OPEN_MAX"))
    _trim_tree()
    null = os.open("/dev/null", os.O_RDONLY)
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NOCTTY)
    if not stat.S_ISREG(os.fstat(out).st_mode):
        raise OSError(0, f"{log} is not a regular file")
    for fd, target in ((null, 0), (out, 1), (out, 2)):
        os.dup2(fd, target)
    os.close(null)
    os.close(out)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    os.setsid()
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # from root to a user: every capability set is cleared
    for cwd in cwds:
        try:
            os.chdir(cwd)  # as the user: root entering it would open root-only directories
            break
        except OSError:
            continue
    else:
        os.chdir("/")
    os.execvpe(argv[0], argv, dict(os.environ))  # noqa: S606 - a list argv, no shell


def main(args: list[str]) -> int:
    try:
        sep = args.index("--")
        uid_s, gid_s, groups_s, log, cwds_s = args[:sep]
        argv = args[sep + 1 :]
        uid, gid = int(uid_s), int(gid_s)
        groups = [int(g) for g in groups_s.split(",") if g]
        cwds = [c for c in cwds_s.split(":") if c]
    except ValueError:
        print("error: usage: nsinit.py UID GID GROUPS LOG CWDS -- ARGV...", flush=True)
        return 2
    if not argv or uid == 0:
        print("error: no kernel command, or a root kernel", flush=True)
        return 2
    try:
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID), "unshare")
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
    except OSError as exc:
        print(f"error: {exc.strerror or exc}", flush=True)
        return 1
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            _child(uid, gid, groups, log, cwds, argv, w)
        except BaseException as exc:  # reported to the parent, whatever it is
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            os.write(w, (why or type(exc).__name__).encode(errors="replace")[:500])
        os._exit(127)
    os.close(w)
    why = b""
    while chunk := os.read(r, 4096):
        why += chunk
    if why:
        os.waitpid(pid, 0)
        print(f"error: {why.decode(errors='replace')}", flush=True)
        return 1
    print(f"pid {pid}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
