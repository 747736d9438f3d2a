"""Paired A/B of the snapshot path: early writeback on and off, on one kernel, alternating.

Run by hand as root (not in CI):

    sudo PYTHONPATH=app:python_modules/jusnap_jupyter:. /opt/jusnap-test/venv/bin/python \\
        bench/snapshot_ab.py --size 1G --repeat 5 [--criu /usr/local/sbin/criu]

On the shared 2-core machine the spread between two runs of ``engine_vs_criu.py`` (minutes
apart) was larger than the effect measured, so the two variants run in one process on one
kernel, alternating (on/off, then off/on), each pair followed by a raw ``criu dump``: the
snapshot call until it returns (**recorded**: durable, checked, listed), CRIU's freeze (its
``frozen_time``) and the phases ``dump`` and ``hot_put`` (fsync included). "off" disables the
early writeback of ``store/hot.py`` only. Writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jusnap.store.hot as hot
from jusnap.config import load_settings
from jusnap.snapshots import Engine

from bench.engine_vs_criu import DATA, Phases, parse_size, raw_dump
from tests.helpers import connect, run_cell


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", default="1G")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--data", choices=sorted(DATA), default="random")
    ap.add_argument("--user", default=os.environ.get("JUSNAP_TEST_USER", "jusnap-test"))
    ap.add_argument("--criu", default="/usr/local/lib/jusnap/criu")
    ap.add_argument("--out", default="docs/bench/snapshot_ab.json")
    args = ap.parse_args()
    real = hot._sync_file_range
    state = Path(tempfile.mkdtemp(prefix="jusnap-ab-", dir="/var/tmp"))
    state.chmod(0o711)
    settings = load_settings(None, {
        "jusnap.state_dir": str(state), "jusnap.criu.binary": args.criu, "jusnap.os.uid": args.user,
        "jusnap.ipython.python_interpreter": sys.executable, "jusnap.http.socket": str(state / "s.sock"),
    })  # fmt: skip
    e = Engine(settings).start()
    phases = Phases()
    phases.install(e)
    rows: dict[str, list[dict[str, float]]] = {"on": [], "off": [], "raw": []}
    k = e.kernels.launch(owner_uid=0)
    try:
        kc = connect(k.connection)
        run_cell(kc, DATA[args.data].format(size=parse_size(args.size)), timeout=600)
        creds = e.supervisor.creds(k)
        s = e.snapshot(k.id)  # warm-up
        e.wait_stored()
        e.delete_snapshot(s.id)
        for i in range(args.repeat):
            for mode in ("on", "off") if i % 2 == 0 else ("off", "on"):
                hot._sync_file_range = real if mode == "on" else None
                load = os.getloadavg()[0]
                t0 = time.monotonic()
                s = e.snapshot(k.id)
                wall = time.monotonic() - t0
                p = phases.take(t0)
                rows[mode].append({"recorded": wall, "frozen": s.frozen_seconds,
                                   "dump": p.get("dump", 0.0), "hot_put": p.get("hot_put", 0.0),
                                   "load": load})  # fmt: skip
                e.wait_stored()
                e.delete_snapshot(s.id)
            raw = state / f"raw-{i}"
            frozen, wall = raw_dump(e, e.kernels.get(k.id).pid, creds, raw / "img")
            shutil.rmtree(raw)
            rows["raw"].append({"recorded": wall, "frozen": frozen, "dump": wall, "hot_put": 0.0,
                                "load": os.getloadavg()[0]})  # fmt: skip
            print(f"  pair {i + 1}/{args.repeat}: "
                  + "; ".join(f"{m} recorded {v[-1]['recorded']:.3f} s frozen {v[-1]['frozen']:.3f} s"
                              for m, v in rows.items()), flush=True)  # fmt: skip
        kc.stop_channels()
    finally:
        hot._sync_file_range = real
        e.kernels.shutdown(k.id)  # kernels outlive the engine by design
        e.close()
        shutil.rmtree(state, ignore_errors=True)
    median = {
        m: {key: statistics.median(r[key] for r in v) for key in v[0]} for m, v in rows.items()
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"median": median, "rows": rows}, indent=1))
    print(table(median))
    return 0


def table(median: dict[str, dict[str, Any]]) -> str:
    raw = median["raw"]["dump"]
    lines = ["| early writeback | recorded | ÷ raw dump | freeze | dump | hot put (fsync) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for mode, m in median.items():
        lines.append(
            f"| {mode} | {m['recorded']:.2f} s | {m['recorded'] / raw:.2f}× | {m['frozen']:.2f} s "
            f"| {m['dump']:.2f} s | {m['hot_put']:.2f} s |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
