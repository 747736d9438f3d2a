"""Why a 4 GiB eager fork is slower than a restore in place on a VM: where its memory comes from.

Run by hand as root (not in CI):

    PYTHONPATH=app:python_modules/jusnap_jupyter:. /opt/jusnap-test/venv/bin/python \\
        bench/fork_beside_memory.py --size 4G

A restore in place stops the old kernel first and CRIU refills memory that was freed a moment
before. A fork needs as much memory again, beside the running original. This forks the same
snapshot three times and times each to its first answered execute, with the fork's CRIU phase:

1. beside the original, memory as the machine left it (free for a while);
2. beside the original, right after ``drop_caches`` freed the page cache (the hot entry's
   images are read back in first, so only *other* caches are gone);
3. after the original was shut down (its memory freed a moment before).

On a VM with free-page reporting (virtio-balloon ``F_REPORTING``: free memory goes back to the
host and faults in again when reused) case 1 is slow and cases 2 and 3 run at restore speed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import engine_vs_criu as bench
from jusnap.config import load_settings
from jusnap.snapshots import Engine


def free_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemFree:"):
            return int(line.split()[1]) >> 10
    return -1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="4G")
    ap.add_argument("--user", default=os.environ.get("JUSNAP_TEST_USER", "jusnap-test"))
    ap.add_argument("--criu", default="/usr/local/lib/jusnap/criu")
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="jusnap-bench-", dir="/var/tmp"))
    state.chmod(0o711)
    engine = Engine(load_settings(None, {
        "jusnap.state_dir": str(state), "jusnap.criu.binary": args.criu, "jusnap.os.uid": args.user,
        "jusnap.ipython.python_interpreter": sys.executable, "jusnap.http.socket": str(state / "s.sock"),
    })).start()  # fmt: skip
    phases = bench.Phases()
    phases.install(engine)

    def fork(case: str, snapshot_id: str) -> None:
        time.sleep(5)
        phases.take(0.0)
        free = free_mib()
        t0 = time.monotonic()
        seconds = bench.fork_to_execute(engine, snapshot_id)
        criu = phases.take(t0).get("criu_restore", 0.0)
        print(f"| {case} | {free} MiB | {seconds:.2f} s | {criu:.2f} s |", flush=True)

    try:
        k = engine.kernels.launch(owner_uid=0)
        kc = bench.connect(k.connection)
        bench.run_cell(kc, bench.DATA["random"].format(size=bench.parse_size(args.size)), 600)
        snap = engine.snapshot(k.id)
        engine.wait_stored()
        print(
            f"{args.size}, load {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        )
        print(
            "| case | free before | fork to first execute | its CRIU restore |\n|---|---|---|---|"
        )
        fork("beside the original", snap.id)
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("1")
        entry = engine.hot.get(snap.id)
        assert entry is not None, "the snapshot has no hot entry"
        for path in entry.images.iterdir():  # back into the page cache: only other caches go
            with path.open("rb") as f:
                while f.read(1 << 22):
                    pass
        fork("beside the original, page cache just dropped", snap.id)
        kc.stop_channels()
        engine.kernels.shutdown(k.id)
        fork("original shut down a moment before", snap.id)
    finally:
        engine.close()
        subprocess.run(["pkill", "-KILL", "-f", f"{state}/kernels/"], check=False)
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
