"""Pure logic of the namespaced launch: which mount a path is on, mountinfo escapes."""

from __future__ import annotations

import re

from jusnap.kernels import namespace
from jusnap.kernels.namespace import _mount_of
from jusnap.kernels.nsinit import TREE, _unescape

POINTS = ["/", "/dev", "/dev/shm", "/proc", "/home", "/home/data", "/srv/nfs"]


def test_a_path_is_on_its_longest_mount_point() -> None:
    assert _mount_of("/var/lib/jusnap", POINTS) == "/"
    assert _mount_of("/dev/null", POINTS) == "/dev"
    assert _mount_of("/dev/shm", POINTS) == "/dev/shm"
    assert _mount_of("/dev/shmem", POINTS) == "/dev"  # a prefix is not a parent
    assert _mount_of("/home/ann/nb", POINTS) == "/home"
    assert _mount_of("/home/data/x", POINTS) == "/home/data"
    assert _mount_of("/srv/nfsx", POINTS) == "/"


def test_the_launcher_tree_is_the_minimal_one() -> None:
    assert sorted(TREE) == ["/", "/dev", "/dev/shm", "/proc"]


def test_mountinfo_escapes() -> None:
    assert _unescape(r"/mnt/with\040space") == "/mnt/with space"
    assert _unescape(r"/a\011tab\012nl\134bs") == "/a\ttab\nnl\\bs"
    assert _unescape("/plain") == "/plain"
    assert _unescape("/trailing\\04") == "/trailing\\04"


def _binds(monkeypatch, points: list[str], paths: list[str], ro: list[str] = []):
    monkeypatch.setattr(namespace, "mountpoints", lambda: points)
    monkeypatch.setattr(namespace.os.path, "realpath", lambda p: p)
    return namespace.binds(paths, ro)


def test_binds_keeps_the_mounts_that_hold_what_the_kernel_needs(monkeypatch) -> None:
    points = ["/", "/dev", "/dev/shm", "/proc", "/run", "/run/user/1000", "/home", "/home/ann"]
    got = _binds(monkeypatch, points, ["/usr/bin/python3", "/home/ann/nb"], ["/run/jusnap"])
    # /home/ann with /home it hangs on, writable; /run for the socket alone: read-only
    assert got == ([("/home", False), ("/run", True), ("/home/ann", False)], None)
    assert _binds(monkeypatch, points, ["/run/x"], ["/run/jusnap"]) == ([("/run", False)], None)
    assert _binds(monkeypatch, points, ["/var/lib/jusnap"]) == ([], None)  # all on /


def test_binds_refuses_what_cannot_be_kept(monkeypatch) -> None:
    base = ["/", "/dev", "/proc", "/sys"]
    for points, path, why in [
        ([*base, "/dev/shm"], "/dev/shm/x", "does not see"),
        ([*base, "/tmp"], "/tmp/nb", "does not see"),
        ([*base, "/sys/fs/x"], "/sys/fs/x/y", "does not see"),
        ([*base, "/srv", "/srv"], "/srv/nb", "stacked"),
        ([*base, "/srv/a b"], "/srv/a b/nb", "cannot be passed"),
        ([*base, "/srv/x]:y"], "/srv/x]:y/nb", "cannot be passed"),
    ]:
        keep, reason = _binds(monkeypatch, points, [path])
        assert keep == [] and reason is not None and why in reason, (path, reason)


def test_bind_keys_come_from_the_path_only() -> None:
    assert namespace.bind_key("/run") == namespace.bind_key("/run")
    assert namespace.bind_key("/run") != namespace.bind_key("/home")
    assert re.fullmatch(r"bind-[0-9a-f]{16}", namespace.bind_key("/run"))
