"""The file and SQLite primitives, on real files, pipes and databases."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from pathlib import Path

import pytest
from jusnap.fsutil import (
    IOV_MAX,
    connect_wal,
    fsync_dir,
    immediate,
    open_nofollow,
    open_regular,
    pwritev_all,
    write_all,
)


def test_write_all_survives_short_writes() -> None:
    r, w = os.pipe()
    os.set_blocking(w, True)
    data = os.urandom(1 << 20)  # far more than a pipe buffer: os.write returns short
    got = bytearray()

    def drain() -> None:
        while chunk := os.read(r, 65536):
            got.extend(chunk)

    t = threading.Thread(target=drain)
    t.start()
    assert write_all(w, memoryview(data)) == len(data)
    os.close(w)
    t.join()
    os.close(r)
    assert bytes(got) == data


def test_pwritev_all_writes_more_buffers_than_one_call_takes(tmp_path: Path) -> None:
    parts = [os.urandom(1 + i % 5000) for i in range(IOV_MAX * 2 + 3)]
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"head", 0)
        assert pwritev_all(fd, [memoryview(p) for p in parts], 4) == sum(map(len, parts))
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"head" + b"".join(parts)


def test_opens_refuse_links_and_special_files(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_text("x")
    (tmp_path / "link").symlink_to(target)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError) as exc:
        open_nofollow(tmp_path / "link")
    assert exc.value.errno == errno.ELOOP
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as exc:
            open_regular("link", dir_fd=dfd)
        assert exc.value.errno == errno.ELOOP
        fd = os.open(tmp_path / "fifo", os.O_RDWR)  # a writer, so the reader's open returns
        try:
            with pytest.raises(OSError) as exc:
                open_regular("fifo", dir_fd=dfd)
            assert exc.value.errno == errno.EINVAL
        finally:
            os.close(fd)
        fd = open_regular("secret", dir_fd=dfd)
        assert os.read(fd, 1) == b"x"
        assert os.get_inheritable(fd) is False
        os.close(fd)
    finally:
        os.close(dfd)
    fsync_dir(tmp_path)


def test_immediate_commits_or_rolls_back(tmp_path: Path) -> None:
    db = connect_wal(tmp_path / "t.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute("CREATE TABLE t (x INTEGER)")
    with immediate(db, threading.Lock()):
        db.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.IntegrityError), immediate(db):
        db.execute("INSERT INTO t VALUES (2)")
        raise sqlite3.IntegrityError("abort")
    assert db.execute("SELECT x FROM t").fetchall() == [(1,)]
    assert not db.in_transaction
