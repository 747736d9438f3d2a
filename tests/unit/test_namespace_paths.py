"""Pure logic of the namespaced launch: which mount a path is on, mountinfo escapes."""

from __future__ import annotations

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
    assert sorted(TREE) == ["/", "/dev", "/proc"]


def test_mountinfo_escapes() -> None:
    assert _unescape(r"/mnt/with\040space") == "/mnt/with space"
    assert _unescape(r"/a\011tab\012nl\134bs") == "/a\ttab\nnl\\bs"
    assert _unescape("/plain") == "/plain"
    assert _unescape("/trailing\\04") == "/trailing\\04"
