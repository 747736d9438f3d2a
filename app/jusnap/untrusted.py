"""Reading files that a kernel's user can write, as root, without being led astray.

CRIU runs as the kernel's uid, so its logs, pid file and freshly dumped images sit in
directories that uid controls, and a hostile kernel can replace any of them at any moment with
a symbolic link to a root-only file, a hard link to someone else's file, a FIFO that never
answers, or /dev/zero. Every such read goes through here: no links followed, regular files
only, owned by the expected uid when asked, never blocking, and never more than a cap.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .fsutil import open_regular


def open_untrusted(dirfd: int, name: str, owner: int | None = None) -> int:
    """Open ``name`` in a directory the user controls: no links, regular files only.

    With ``owner``, the file must belong to that uid and have one link, so a hard link to a
    file of another user (which root could read) is refused.
    """
    if "/" in name or name in ("", ".", ".."):
        raise OSError(errno.EINVAL, f"{name!r} is not a plain file name")
    fd = open_regular(name, dir_fd=dirfd)
    st = os.fstat(fd)
    if owner is not None and (st.st_uid != owner or st.st_nlink != 1):
        os.close(fd)
        raise OSError(errno.EPERM, f"{name} is not a file of uid {owner}")
    return fd


def open_untrusted_path(path: Path, owner: int | None = None) -> int:
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return open_untrusted(dfd, path.name, owner)
    finally:
        os.close(dfd)


def read_untrusted(path: Path, limit: int, tail: bool = False) -> bytes | None:
    """At most ``limit`` bytes of a user-writable file (its last ones with ``tail``); None
    when it is missing, a link, not a regular file, or unreadable."""
    try:
        fd = open_untrusted_path(path)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - limit) if tail else 0
        return os.pread(fd, min(limit, size), start)
    except OSError:
        return None
    finally:
        os.close(fd)
