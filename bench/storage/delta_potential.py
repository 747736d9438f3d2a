"""How much would sub-page deltas save? Measured on two real dumps around a trivial cell.

Pages a small cell "changes" are mostly pages where a few bytes moved (reference counts, GC
headers, interpreter state). This aligns the pages of two consecutive dumps by virtual address
(from CRIU's pagemap image) and compares, for the pages new to a content-addressed store, the
zstd size of the page with the zstd size of its XOR against the same address in the previous
dump. Run as root: ``.venv/bin/python bench/storage/delta_potential.py``.
"""

from __future__ import annotations

import shutil
import struct
import sys
import tempfile
from pathlib import Path

import xxhash
import zstandard
from jusnap.config import load_settings
from jusnap.criu import _fields
from jusnap.registry import Snapshot
from jusnap.snapshots import Engine

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.helpers import connect, run_cell

PAGE = 4096
PE_PRESENT = 4


def pages_by_vaddr(d: Path) -> dict[tuple[int, int], bytes]:
    """{(pagemap id, vaddr): page bytes} for every process image in ``d``."""
    out = {}
    for pm in sorted(d.glob("pagemap-*.img")):
        data = pm.read_bytes()
        i = 8  # magic + image-type magic
        entries = []
        while i + 4 <= len(data):
            (size,) = struct.unpack_from("<I", data, i)
            entries.append(_fields(data[i + 4 : i + 4 + size]))
            i += 4 + size
        head, rest = entries[0], entries[1:]
        pages = (d / f"pages-{head[1]}.img").read_bytes()
        off = 0
        for e in rest:
            flags = e.get(4, PE_PRESENT)
            n = int(e.get(5) or e.get(2) or 0)  # field 5 in CRIU 4 (2 is the old 32-bit one)
            if isinstance(flags, int) and flags & PE_PRESENT:
                for j in range(n):
                    out[(int(pm.stem.split("-")[1]), int(e[1]) + j * PAGE)] = pages[
                        off : off + PAGE
                    ]
                    off += PAGE
    return out


def main() -> None:
    state = Path(tempfile.mkdtemp(prefix="jusnap-delta-", dir="/var/tmp"))
    state.chmod(0o711)
    s = load_settings(None, {"jusnap.state_dir": str(state), "jusnap.os.uid": "jusnap-test",
                             "jusnap.ipython.python_interpreter": sys.executable,
                             "jusnap.http.socket": str(state / "s.sock")})  # fmt: skip
    e = Engine(s).start()
    k = e.kernels.launch(owner_uid=0)
    kc = connect(k.connection)
    try:
        run_cell(kc, "import numpy as np, pandas as pd; x = list(range(100000))")
        dirs = []
        for code in ("v0 = 1", "v1 = [j * j for j in range(1000)]; s1 = 'x' * 1000"):
            run_cell(kc, code)
            snap = e.snapshot(k.id)
            assert isinstance(snap, Snapshot)
            d = state / f"out-{len(dirs)}"
            d.mkdir()
            e.store.stage_out(snap.id, d, 0, 0)
            dirs.append(d)
        a, b = pages_by_vaddr(dirs[0]), pages_by_vaddr(dirs[1])
        known = {xxhash.xxh3_128_digest(p) for p in a.values()}
        z = zstandard.ZstdCompressor(level=1)
        full = delta = n = no_base = 0
        for key, page in b.items():
            if xxhash.xxh3_128_digest(page) in known:
                continue
            n += 1
            full += len(z.compress(page))
            base = a.get(key)
            if base is None:
                no_base += 1
                delta += len(z.compress(page))
            else:
                x = bytes(i ^ j for i, j in zip(page, base, strict=True))
                delta += min(len(z.compress(x)), len(z.compress(page)))
        print(
            f"new pages {n} ({n * PAGE / 2**20:.2f} MiB), {no_base} without a page at that"
            f" address before; zstd of the pages {full / 2**10:.0f} KiB,"
            f" zstd of XOR deltas {delta / 2**10:.0f} KiB ({full / max(delta, 1):.1f}x less)"
        )
    finally:
        kc.stop_channels()
        for kk in e.registry.kernels():
            e.supervisor.remove(kk)
        e.close()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
