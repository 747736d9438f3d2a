"""Snapshot and in-place restore of a namespaced kernel against a plain one (by hand, as root).

    sudo PYTHONPATH=app:. /opt/jusnap-test/venv/bin/python bench/namespaces.py [--mb 100] [--repeat 5]

For each mode (``jusnap.kernels.namespaces`` off / auto) a fresh ipykernel as the test
kernel user holds ``--mb`` MiB of random bytes; then, ``--repeat`` times, alternating the
modes: ``Engine.snapshot`` (CRIU's frozen time) and ``Engine.restore`` (CRIU's restore time,
and the whole call to the answered handshake). Prints medians.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "app"), str(Path(__file__).parents[1])]

from jusnap.config import load_settings  # noqa: E402
from jusnap.registry import Snapshot  # noqa: E402
from jusnap.snapshots import Engine  # noqa: E402

from tests.conftest import CRIU, KERNEL_USER, PYTHON, KernelSession, shutdown_all  # noqa: E402
from tests.stack import make_state_dir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rows: dict[str, dict[str, list[float]]] = {}
    stacks = {}
    for mode in ("off", "auto"):
        state = make_state_dir("jusnap-bench-ns-")
        e = Engine(load_settings(None, {
            "jusnap.state_dir": str(state), "jusnap.criu.binary": CRIU,
            "jusnap.os.uid": KERNEL_USER, "jusnap.ipython.python_interpreter": PYTHON,
            "jusnap.http.socket": str(state / "jusnap.sock"), "jusnap.ipython.cooldown": "0s",
            "jusnap.kernels.namespaces": mode,
        })).start()  # fmt: skip
        ks = KernelSession(e)
        ks.run(f"import os; ballast = bytearray(os.urandom(1 << 20)) * {args.mb}")
        stacks[mode] = (e, ks)
        rows[mode] = {
            "dump frozen": [],
            "snapshot call": [],
            "criu restore": [],
            "restore call": [],
        }
    try:
        for _ in range(args.repeat):
            for mode, (e, ks) in stacks.items():
                t0 = time.monotonic()
                snap = e.snapshot(ks.id)
                assert isinstance(snap, Snapshot)
                rows[mode]["snapshot call"].append(time.monotonic() - t0)
                rows[mode]["dump frozen"].append(snap.frozen_seconds or 0.0)
                r = e.restore(snap.id)
                ks.after_restore()
                rows[mode]["criu restore"].append(r.criu_seconds)
                rows[mode]["restore call"].append(r.seconds)
                e.wait_stored()
    finally:
        for e, ks in stacks.values():
            ks.close()
            shutdown_all(e)
            shutil.rmtree(e.state_dir, ignore_errors=True)
    print(f"{args.mb} MiB kernel, median of {args.repeat} (s)")
    print("| kernel | " + " | ".join(rows["off"]) + " |")
    print("|---" * (len(rows["off"]) + 1) + "|")
    for mode, label in (("off", "plain"), ("auto", "namespaced")):
        cells = " | ".join(f"{statistics.median(v):.3f}" for v in rows[mode].values())
        print(f"| {label} | {cells} |")


if __name__ == "__main__":
    main()
