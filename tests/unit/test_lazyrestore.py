"""The lazy-pages server's directory and the wait for a kernel's lazy restore (real files)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from jusnap.lazyrestore import LazyServer, LazyServers, prepare
from jusnap.proc import Creds

CREDS = Creds(uid=os.getuid() or 1001, gid=os.getgid() or 1001)


def _images(d: Path) -> Path:
    d.mkdir()
    for name, data in (("pages-1.img", b"p" * 8192), ("core-1.img", b"c")):
        (d / name).write_bytes(data)
        (d / name).chmod(0o440)
    return d


def test_hot_images_are_linked_and_outlive_the_hot_entry(tmp_path: Path) -> None:
    hot = _images(tmp_path / "hot")
    server = prepare(hot, tmp_path / "x-lazy", CREDS, linked=True)
    for name in ("pages-1.img", "core-1.img"):
        assert (server.images / name).stat().st_ino == (hot / name).stat().st_ino
    for p in list(hot.iterdir()):  # the hot tier trims its entry
        p.unlink()
    hot.rmdir()
    assert (server.images / "pages-1.img").read_bytes() == b"p" * 8192
    home = server.home.stat()
    assert (home.st_uid, home.st_gid, stat.S_IMODE(home.st_mode)) == (0, CREDS.gid, 0o750)
    img = server.images.stat()
    assert (img.st_uid, stat.S_IMODE(img.st_mode)) == (0, 0o750)
    work = server.work.stat()  # the kernel uid's: CRIU's logs and socket, nothing else
    assert (work.st_uid, stat.S_IMODE(work.st_mode)) == (CREDS.uid, 0o700)


def test_staged_images_are_moved_in(tmp_path: Path) -> None:
    staged = _images(tmp_path / "img")
    server = prepare(staged, tmp_path / "y-lazy", CREDS, linked=False)
    assert not staged.exists()
    assert sorted(p.name for p in server.images.iterdir()) == ["core-1.img", "pages-1.img"]


def test_a_failed_prepare_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        prepare(tmp_path / "missing", tmp_path / "z-lazy", CREDS, linked=True)
    assert not (tmp_path / "z-lazy").exists()


def test_a_snapshot_waits_for_the_kernels_lazy_restore(tmp_path: Path) -> None:
    servers = LazyServers()
    assert servers.wait("k", 0.01)  # none running
    server = LazyServer(tmp_path)
    servers.add("k", server)
    assert not servers.wait("k", 0.05)
    threading.Timer(0.05, server.done.set).start()
    assert servers.wait("k", 5)
    assert servers.wait("k", 0.01)  # forgotten once done
