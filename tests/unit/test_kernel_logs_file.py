"""The kernel log file on its own: where it lives, how it is opened, trimmed and read."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

import pytest
from jusnap.kernels.logs import KernelLogs

KID = "0b5c2c3e-2f6a-4c1e-9a55-3c1f2a4b5d6e"


def test_the_log_is_private_and_append_only(tmp_path: Path) -> None:
    logs = KernelLogs(tmp_path, 4096)
    fd = logs.open_for_kernel(KID, os.getuid(), os.getgid())
    try:
        assert os.get_inheritable(fd) is False  # given to children only on purpose
        assert os.O_APPEND & fcntl.fcntl(fd, fcntl.F_GETFL)
    finally:
        os.close(fd)
    assert stat.S_IMODE(logs.path(KID).stat().st_mode) == 0o600
    assert stat.S_IMODE(logs.dir.stat().st_mode) == 0o711
    assert logs.criu_key(KID) == str(logs.path(KID))[1:]


def test_trim_keeps_the_newest_bytes_and_appends_continue_at_the_new_end(
    tmp_path: Path,
) -> None:
    logs = KernelLogs(tmp_path, 4096)
    fd = logs.open_for_kernel(KID, os.getuid(), os.getgid())
    try:
        os.write(fd, b"a" * 5000 + b"B" * 1000)
        assert logs.trim(KID)
        assert logs.path(KID).stat().st_size == 0
        os.write(fd, b"after\n")  # O_APPEND: at offset 0 of the truncated file
        assert logs.path(KID).read_bytes() == b"after\n"
        text, truncated = logs.read(KID, 1 << 20)
        assert truncated  # the first 1904 bytes were dropped by the rotation
        assert text.endswith(b"B" * 1000 + b"after\n") and len(text) == 4096 + 6
        tail, truncated = logs.read(KID, 10)
        assert (tail, truncated) == (b"BBBBafter\n", True)
        assert not logs.trim(KID)  # under the limit: nothing to do
    finally:
        os.close(fd)


def test_a_short_log_is_read_whole(tmp_path: Path) -> None:
    logs = KernelLogs(tmp_path, 4096)
    assert logs.read(KID, 100) == (b"", False)  # no log yet
    fd = logs.open_for_kernel(KID, os.getuid(), os.getgid())
    os.close(fd)
    logs.note(KID, "kernel started")
    text, truncated = logs.read(KID, 1000)
    assert text.startswith(b"--- jusnap ") and b"kernel started" in text and not truncated


def test_links_are_neither_opened_nor_read(tmp_path: Path) -> None:
    logs = KernelLogs(tmp_path, 4096)
    secret = tmp_path / "secret"
    secret.write_bytes(b"root only")
    logs.dir.mkdir(parents=True)
    logs.path(KID).symlink_to(secret)
    assert logs.read(KID, 100) == (b"", False)
    with pytest.raises(OSError):
        logs.open_for_kernel(KID, os.getuid(), os.getgid())
    logs.note(KID, "x")  # never writes through the link either
    assert secret.read_bytes() == b"root only"
    logs.remove(KID)
    assert not logs.path(KID).is_symlink() and secret.exists()
