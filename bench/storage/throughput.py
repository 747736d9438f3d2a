"""Per-core throughput of the store's data path, on one synthetic page image.

Run by hand (not in CI):

    /opt/jusnap-test/venv/bin/python bench/storage/throughput.py --size 512M

For random (incompressible) and typical (numeric, compressible) pages, with one thread
(``threads=1``: per core), it times:

* ``commit new``: hash every 4 KiB page, look it up, compress and write the new ones, fsync;
* ``commit again``: the same image once more: hash + dedup only (every page is known);
* ``stage out``: rebuild the image from the store, verifying every page (a restore's staging);
  the first commit's pages are its own (found through its location hints, ``hints.py``);
* ``stage out shared``: the same for the second commit, whose pages are all shared with the
  first (found through the index, as for every snapshot written before hints existed);
* ``hot copy``: what a hot-tier entry costs instead (``copy_file_range``, no verification).

Prints MB/s per phase (decimal MB of image bytes per second of wall time) and, in
parentheses, per second of this process's CPU time: on a shared machine the wall time also
holds the waits for other processes' CPU, the CPU figure is what one core does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "app"))

from jusnap.store.local import LocalStore

UNITS = {"M": 1024**2, "G": 1024**3}


def image(kind: str, size: int) -> bytes:
    if kind == "random":
        return np.random.default_rng(1).bytes(size)
    return (np.arange(size // 8, dtype=np.float64) * 0.5).tobytes()


class Timer:
    """Wall and CPU seconds of each phase."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable[[], object]) -> None:
        t0, c0 = time.monotonic(), time.process_time()
        fn()
        self.wall[name] = time.monotonic() - t0
        self.cpu[name] = time.process_time() - c0


def copy(src: Path, dst: Path) -> None:
    s = os.open(src, os.O_RDONLY)
    d = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o600)
    while os.copy_file_range(s, d, 1 << 30):
        pass
    os.close(s)
    os.close(d)


def run(kind: str, size: int, root: Path) -> dict[str, tuple[float, float]]:
    src = root / f"dump-{kind}"
    src.mkdir()
    (src / "pages-1.img").write_bytes(image(kind, size))
    store = LocalStore(root / f"store-{kind}" / "snapshots", level=1, threads=1)
    store.ensure()
    t = Timer()
    t("commit new", lambda: store.commit("01" + "A" * 24, src))
    t("commit again", lambda: store.commit("01" + "B" * 24, src))
    dest = root / f"out-{kind}"
    dest.mkdir()
    t("stage out", lambda: store.stage_out("01" + "A" * 24, dest, os.geteuid(), os.getegid()))
    assert (dest / "pages-1.img").read_bytes() == (src / "pages-1.img").read_bytes()
    shutil.rmtree(dest)
    dest.mkdir()
    t("stage shared", lambda: store.stage_out("01" + "B" * 24, dest, os.geteuid(), os.getegid()))
    assert (dest / "pages-1.img").read_bytes() == (src / "pages-1.img").read_bytes()
    shutil.rmtree(dest)
    t("hot copy", lambda: copy(src / "pages-1.img", root / f"hot-{kind}"))
    return {k: (size / v / 1e6, size / max(t.cpu[k], 1e-9) / 1e6) for k, v in t.wall.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="512M")
    args = ap.parse_args()
    size = int(float(args.size[:-1]) * UNITS[args.size[-1].upper()])
    root = Path(tempfile.mkdtemp(prefix="jusnap-throughput-", dir="/var/tmp"))
    try:
        print(f"| data ({args.size}, 1 thread) | commit new | commit again (hash + dedup) "
              "| stage out (rebuild + verify) | stage out, shared pages | hot copy |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        for kind in ("random", "typical"):
            r = run(kind, size, root)
            cells = [f"{w:.0f} MB/s ({c:.0f})" for w, c in r.values()]
            load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
            print(f"| {kind} | " + " | ".join(cells) + f" | load {load}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
