"""Which chunk size for the content-addressed store? Measured on real CRIU dumps.

Dumps one kernel three times (after a workload, after rewriting 1% of a big array, after a
trivial cell) with the pre-CAS store (whole images) and, for each candidate chunk size, reports
what a content-addressed store would add per snapshot, the zstd ratio, and the hashing and
compression speed. Run as root: ``.venv/bin/python bench/storage/chunk_size.py [MiB]``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import xxhash
import zstandard
from jusnap.config import load_settings
from jusnap.snapshots import Engine

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.helpers import connect, run_cell

SIZES = [4096, 16384, 65536, 262144]


def pages(d: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(d.glob("pages-*.img")))


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    state = Path(tempfile.mkdtemp(prefix="jusnap-chunk-", dir="/var/tmp"))
    state.chmod(0o711)
    s = load_settings(
        None,
        {
            "jusnap.state_dir": str(state),
            "jusnap.os.uid": "jusnap-test",
            "jusnap.ipython.python_interpreter": sys.executable,
            "jusnap.http.socket": str(state / "s.sock"),
        },
    )
    e = Engine(s).start()
    k = e.kernels.launch(owner_uid=0)
    kc = connect(k.connection)
    n = mib * 1024 * 1024 // 8
    dumps = {}
    try:
        run_cell(
            kc,
            f"import numpy as np, pandas as pd\nrng = np.random.default_rng(0)\n"
            f"a = rng.random({n // 2})\nb = np.arange({n // 2}, dtype=float)\n"
            "df = pd.DataFrame({'s': [f'row {i}' for i in range(200_000)]})",
        )
        dumps["base"] = e.snapshot(k.id)
        run_cell(kc, f"a[{n // 4}:{n // 4 + n // 100}] += 1.0")  # 1% of all array bytes
        dumps["1pct"] = e.snapshot(k.id)
        run_cell(kc, "x = 1")
        dumps["trivial"] = e.snapshot(k.id)
        data = {name: pages(e.store.path(sn.id)) for name, sn in dumps.items()}
        print(f"pages: base {len(data['base']) / 2**20:.0f} MiB")
        cctx = zstandard.ZstdCompressor(level=1)
        for size in SIZES:
            seen: set[bytes] = set()
            row = [f"{size // 1024:>4} KiB"]
            for name in ("base", "1pct", "trivial"):
                buf = data[name]
                new = 0
                t0 = time.perf_counter()
                digests = [
                    xxhash.xxh3_128_digest(buf[i : i + size]) for i in range(0, len(buf), size)
                ]
                th = time.perf_counter() - t0
                comp = 0
                tc = 0.0
                for i, d in zip(range(0, len(buf), size), digests, strict=True):
                    if d not in seen:
                        seen.add(d)
                        chunk = buf[i : i + size]
                        new += len(chunk)
                        t1 = time.perf_counter()
                        comp += len(cctx.compress(chunk))
                        tc += time.perf_counter() - t1
                row.append(
                    f"{name}: new {new / 2**20:7.2f} MiB ({100 * new / len(buf):5.2f}%)"
                    f" zstd {comp / 2**20:7.2f} MiB"
                )
                if name == "base":
                    row.append(
                        f"hash {len(buf) / th / 1e9:.2f} GB/s"
                        f" zstd {new / max(tc, 1e-9) / 1e6:.0f} MB/s"
                    )
            print(" | ".join(row))
    finally:
        kc.stop_channels()
        for kk in e.registry.kernels():
            e.supervisor.remove(kk)
        e.close()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
