"""File and SQLite primitives the store and the registry share, so each rule lives once.

* ``os.write`` may write less than asked (a signal, a full pipe, a large buffer): a store that
  forgot to loop would keep a truncated pack or image with a valid-looking index row.
* A rename or a new file is durable only once its *directory* is fsynced.
* Snapshot images are staged in directories the kernel user can write: every open there must
  refuse symlinks (``O_NOFOLLOW``) and keep descriptors out of children (``O_CLOEXEC``).
* SQLite writes take the write lock up front (``BEGIN IMMEDIATE``): a deferred transaction that
  upgrades later can fail with "database is locked" halfway through.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any


def write_all(fd: int, data: bytes | bytearray | memoryview) -> int:
    """Write all of ``data`` to ``fd``; return its length."""
    view = memoryview(data)
    written = 0
    while written < len(view):
        written += os.write(fd, view[written:])
    return written


IOV_MAX = os.sysconf("SC_IOV_MAX")


def pwritev_all(fd: int, buffers: list[bytes | memoryview], offset: int) -> int:
    """Write ``buffers`` back to back at ``offset`` (``pwritev``, at most ``IOV_MAX`` per
    call, short writes continued); return the bytes written."""
    views = [memoryview(b).cast("B") for b in buffers]
    total = i = 0
    while i < len(views):
        n = os.pwritev(fd, views[i : i + IOV_MAX], offset + total)
        if n == 0:
            raise OSError(errno.EIO, "pwritev wrote nothing")
        total += n
        while i < len(views) and n >= len(views[i]):
            n -= len(views[i])
            i += 1
        if n:
            views[i] = views[i][n:]
    return total


def fsync_dir(path: Path) -> None:
    """Make the entries of ``path`` (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: Any, durable: bool = True) -> None:
    """Replace ``path`` by ``data`` as JSON, atomically: a temp file (one per thread, so two
    writers never share it) renamed over it. ``durable``: the file and the rename are fsynced
    before this returns (a manifest, a hot entry's record)."""
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        if durable:
            os.fsync(fh.fileno())
    tmp.replace(path)
    if durable:
        fsync_dir(path.parent)


def readable_dir(path: Path, gid: int) -> Path:
    """Make ``path`` (new) root's, readable by group ``gid`` only (0750): images CRIU reads as
    the kernel's uid through its group, and that the kernel's user cannot change."""
    path.mkdir(mode=0o750)
    if os.geteuid() == 0:
        os.chown(path, 0, gid)
    path.chmod(0o750)
    return path


def open_nofollow(
    path: Path | str, flags: int = os.O_RDONLY, mode: int = 0o600, dir_fd: int | None = None
) -> int:
    """``os.open`` that never follows a final symlink and never leaks into a child."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)


def open_regular(name: Path | str, dir_fd: int | None = None) -> int:
    """Open for reading a file in a directory someone else controls: no links, regular files
    only (``EINVAL`` for sockets, fifos, devices), so a planted name cannot redirect the read
    or block it (``O_NONBLOCK``: opening a FIFO for reading would wait for a writer)."""
    fd = open_nofollow(name, os.O_RDONLY | os.O_NONBLOCK, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{name} is not a regular file")
    return fd


def connect_wal(
    path: Path, timeout: float = 5.0, check_same_thread: bool = True
) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions via :func:`immediate`), WAL, and
    ``synchronous=FULL``: a committed row survives a power cut, as the files it points to do."""
    db = sqlite3.connect(
        path, timeout=timeout, check_same_thread=check_same_thread, isolation_level=None
    )
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


@contextmanager
def immediate(
    db: sqlite3.Connection, lock: AbstractContextManager[object] | None = None
) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed if the block ends, rolled back if it raises. ``lock``
    serialises threads sharing ``db`` (SQLite connections are not thread-safe)."""
    with lock if lock is not None else nullcontext():
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
