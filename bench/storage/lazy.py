"""Lazy vs eager restore of a large root-owned kernel (lazy pages need privileged CRIU).

Run as root: ``.venv/bin/python bench/storage/lazy.py [GB]``. Prints, for each mode, the
engine's total restore time, CRIU's part, the staging part and the time until an execute
that touches the whole array is answered.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from jusnap.config import load_settings
from jusnap.snapshots import Engine

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.helpers import connect, nudge, run_cell


def main() -> None:
    gb = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    for mode in ("false", "true"):
        state = Path(tempfile.mkdtemp(prefix="jusnap-lazy-", dir="/var/tmp"))
        state.chmod(0o711)
        s = load_settings(None, {"jusnap.state_dir": str(state), "jusnap.os.uid": "root",
                                 "jusnap.ipython.python_interpreter": sys.executable,
                                 "jusnap.http.socket": str(state / "s.sock"),
                                 "jusnap.store.lazy_pages": mode})  # fmt: skip
        e = Engine(s).start()
        k = e.kernels.launch(owner_uid=0)
        kc = connect(k.connection)
        try:
            n = int(gb * 1e9 / 8)
            run_cell(kc, f"import numpy as np; a = np.random.default_rng(0).random({n})")
            snap = e.snapshot(k.id)
            run_cell(kc, "a[:] = 0")
            t0 = time.monotonic()
            probe = state / "probe"
            probe.mkdir()
            e.store.stage_out(snap.id, probe, 0, 0)
            stage = time.monotonic() - t0
            shutil.rmtree(probe)
            t0 = time.monotonic()
            r = e.restore(snap.id)
            nudge(kc)
            run_cell(kc, "1")
            first = time.monotonic() - t0
            run_cell(kc, "float(a.sum())")
            whole = time.monotonic() - t0
            print(
                f"lazy={mode}: engine {r.seconds:.2f}s (criu {r.criu_seconds:.2f}s,"
                f" staging alone {stage:.2f}s), first answer {first:.2f}s,"
                f" whole array read {whole:.2f}s",
                flush=True,
            )
        finally:
            kc.stop_channels()
            for kk in e.registry.kernels():
                e.supervisor.remove(kk)
            e.close()
            shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
