"""Early writeback of a dump being written (store/hot.py EarlyWriteback): it hands what each
file of the kernel's user gained to the kernel's writeback, and nothing else; a planted link,
FIFO or someone else's file is left alone and never blocks it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from jusnap.store import hot
from jusnap.store.hot import EarlyWriteback


def _wait(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_growing_files_are_handed_to_writeback_and_planted_names_left_alone(
    tmp_path: Path,
) -> None:
    images = tmp_path / "img"
    images.mkdir()
    os.mkfifo(images / "fifo")
    (images / "link").symlink_to("/etc/passwd")
    pages = images / "pages-1.img"
    chunk = os.urandom(1 << 20)
    with EarlyWriteback(images, os.geteuid()) as wb, pages.open("wb") as fh:
        for _ in range(3):  # below the least growth worth a call
            fh.write(chunk)
        fh.flush()
        _wait(lambda: "pages-1.img" in wb._fds)
        time.sleep(5 * hot.WRITEBACK_INTERVAL)
        assert wb._done["pages-1.img"] == 0
        for _ in range(6):
            fh.write(chunk)
        fh.flush()
        # A pass may see the file half written: at the end less than the least growth is left.
        _wait(lambda: (9 << 20) - wb._done["pages-1.img"] < hot.WRITEBACK_MIN)
        _wait(lambda: {"fifo", "link"} <= wb._skip)
    assert not wb._fds  # every descriptor closed at the end
    assert not wb._thread.is_alive()


def test_files_of_another_uid_are_not_opened(tmp_path: Path) -> None:
    images = tmp_path / "img"
    images.mkdir()
    (images / "core-1.img").write_bytes(b"x" * (8 << 20))
    with EarlyWriteback(images, os.geteuid() + 4242) as wb:
        _wait(lambda: "core-1.img" in wb._skip)
    assert not wb._done


def test_a_missing_directory_ends_quietly(tmp_path: Path) -> None:
    with EarlyWriteback(tmp_path / "gone", os.geteuid()) as wb:
        _wait(lambda: not wb._thread.is_alive())
