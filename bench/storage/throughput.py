"""Per-core throughput of the store's data path, on one synthetic page image.

Run by hand (not in CI):

    /opt/jusnap-test/venv/bin/python bench/storage/throughput.py --size 512M

For random (incompressible) and typical (numeric, compressible) pages, with one thread
(``threads=1``: per core), it times:

* ``commit new``: hash every 4 KiB page, look it up, compress and write the new ones, fsync;
* ``commit again``: the same image once more: hash + dedup only (every page is known);
* ``stage out``: rebuild the image from the store, verifying every page (a restore's staging);
* ``hot copy``: what a hot-tier entry costs instead (``copy_file_range``, no verification).

Prints MB/s per phase (decimal MB of image bytes per second of wall time).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "app"))

from jusnap.store.local import LocalStore

UNITS = {"M": 1024**2, "G": 1024**3}


def image(kind: str, size: int) -> bytes:
    if kind == "random":
        return np.random.default_rng(1).bytes(size)
    return (np.arange(size // 8, dtype=np.float64) * 0.5).tobytes()


def run(kind: str, size: int, root: Path) -> dict[str, float]:
    src = root / f"dump-{kind}"
    src.mkdir()
    (src / "pages-1.img").write_bytes(image(kind, size))
    store = LocalStore(root / f"store-{kind}" / "snapshots", level=1, threads=1)
    store.ensure()
    out: dict[str, float] = {}
    t0 = time.monotonic()
    store.commit("01" + "A" * 24, src)
    out["commit new"] = time.monotonic() - t0
    t0 = time.monotonic()
    store.commit("01" + "B" * 24, src)
    out["commit again"] = time.monotonic() - t0
    dest = root / f"out-{kind}"
    dest.mkdir()
    t0 = time.monotonic()
    store.stage_out("01" + "A" * 24, dest, os.geteuid(), os.getegid())
    out["stage out"] = time.monotonic() - t0
    assert (dest / "pages-1.img").read_bytes() == (src / "pages-1.img").read_bytes()
    s = os.open(src / "pages-1.img", os.O_RDONLY)
    d = os.open(root / f"hot-{kind}", os.O_WRONLY | os.O_CREAT, 0o600)
    t0 = time.monotonic()
    while os.copy_file_range(s, d, 1 << 30):
        pass
    out["hot copy"] = time.monotonic() - t0
    os.close(s)
    os.close(d)
    return {k: size / v / 1e6 for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="512M")
    args = ap.parse_args()
    size = int(float(args.size[:-1]) * UNITS[args.size[-1].upper()])
    root = Path(tempfile.mkdtemp(prefix="jusnap-throughput-", dir="/var/tmp"))
    try:
        print(f"| data ({args.size}, 1 thread) | commit new | commit again (hash + dedup) "
              "| stage out (rebuild + verify) | hot copy |")  # fmt: skip
        print("|---|---|---|---|---|")
        for kind in ("random", "typical"):
            r = run(kind, size, root)
            print(f"| {kind} | " + " | ".join(f"{v:.0f} MB/s" for v in r.values()) + " |")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
