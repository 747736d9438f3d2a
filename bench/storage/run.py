"""Storage benchmark: Jusnap (auto-snapshot after every cell) vs raw CRIU vs dill vs Kishu.

Run by hand, as root, on an otherwise idle machine (not in CI)::

    .venv/bin/python bench/storage/run.py --scale 1 --out bench/storage/results.json
    /var/tmp/jusnap-bench/venv/bin/python bench/storage/plot.py bench/storage/results.json

Kernels run as the unprivileged kernel user with the interpreter given by ``--python`` (a venv
holding ipykernel, numpy, pandas, scikit-learn, dill and kishu; see docs/storage.md). For each
workload and system a fresh kernel runs the cells; after each cell the system takes its
snapshot:

* ``jusnap``: ``Engine.snapshot(trigger="auto")`` (CRIU dump, then the content-addressed
  commit after the kernel was let go);
* ``criu``: a raw full ``criu dump --leave-running`` into its own directory per cell;
* ``dill``: ``dill.dump_module()`` in the kernel, one file per cell;
* ``kishu``: Kishu's own automatic per-cell checkpoint (``init_kishu`` hooks);
* ``none``: no snapshots, for the baseline cell times.

Then each system brings back the state after the first cell ("early") and after the last
("latest") and the time until the kernel answers an execute is measured; the workload's
verify cell says which objects came back working.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from jusnap.config import load_settings
from jusnap.criu import frozen_seconds
from jusnap.proc import start_time
from jusnap.registry import Snapshot
from jusnap.snapshots import Engine

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from workloads import ALL, Workload

from tests.helpers import CellError, connect, nudge, run_cell

USER = "jusnap-test"
SYSTEMS = ["none", "jusnap", "criu", "dill", "kishu"]


def du(path: Path) -> int:
    """Bytes allocated on disk (what ``du`` reports), not apparent sizes."""
    if not path.exists():
        return 0
    out = subprocess.run(["du", "-sB1", str(path)], capture_output=True, text=True, check=False)
    return int(out.stdout.split()[0]) if out.stdout else 0


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="jusnap-bench-", dir=args.dir))
        self.root.chmod(0o711)
        self.user = pwd.getpwnam(USER)
        s = load_settings(
            None,
            {
                "jusnap.state_dir": str(self.root / "state"),
                "jusnap.os.uid": USER,
                "jusnap.ipython.python_interpreter": args.python,
                "jusnap.http.socket": str(self.root / "s.sock"),
                "jusnap.ipython.cooldown": "0s",
                "jusnap.store.keep_auto": "0",
                "jusnap.criu.dump_timeout": "600s",
                "jusnap.criu.restore_timeout": "600s",
            },
        )
        self.engine = Engine(s).start()
        self.owner = 0  # each workload gets its own owner uid, hence its own chunk store

    def close(self) -> None:
        for k in self.engine.registry.kernels():
            with contextlib.suppress(Exception):
                self.engine.supervisor.remove(k)
        self.engine.close()
        if not self.args.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def workdir(self, name: str) -> Path:
        d = self.root / "work" / name
        d.mkdir(parents=True, exist_ok=True)
        (self.root / "work").chmod(0o711)
        os.chown(d, self.user.pw_uid, self.user.pw_gid)
        return d

    def kernel(self, cwd: Path, env: dict[str, str] | None = None) -> tuple[Any, Any]:
        k = self.engine.kernels.launch(owner_uid=self.owner, cwd=str(cwd), env=env)
        return k, connect(k.connection)

    def stop(self, k: Any, kc: Any) -> None:
        kc.stop_channels()
        with contextlib.suppress(Exception):
            self.engine.supervisor.remove(self.engine.kernels.get(k.id))

    # ---- one workload on one system ------------------------------------------------------
    def session(self, w: Workload, system: str) -> dict[str, Any]:
        wd = self.workdir(f"{w.name}-{system}")
        env = {"TEST_NOTEBOOK_PATH": str(wd / "nb.ipynb"), "ENV_KISHU_TEST_MODE": "true"}
        k, kc = self.kernel(wd, env if system == "kishu" else None)
        res: dict[str, Any] = {"system": system, "workload": w.name, "cells": []}
        snaps: list[Any] = []
        try:
            if system == "kishu":
                self.init_kishu(kc, create=True)
            if system == "dill":
                run_cell(kc, "import dill")
            for i, code in enumerate(w.cells):
                cell: dict[str, Any] = {}
                t0 = time.monotonic()
                run_cell(kc, code, timeout=1800)
                cell["cell_s"] = time.monotonic() - t0
                try:
                    snaps.append(self.snapshot(system, k, kc, wd, i, cell))
                except Exception as exc:
                    cell["error"] = f"{type(exc).__name__}: {exc}"[:300]
                    snaps.append(None)
                res["cells"].append(cell)
            res["disk_bytes"] = self.disk(system, wd)
            res["restore"] = {}
            for label, idx in (("early", 0), ("latest", len(w.cells) - 1)):
                try:
                    k, kc, seconds = self.restore(system, k, kc, wd, snaps[idx])
                    res["restore"][label] = seconds
                    if system == "jusnap":
                        res.setdefault("restore_parts", {})[label] = self.last_restore
                except Exception as exc:
                    res["restore"][label] = None
                    res.setdefault("restore_errors", {})[label] = f"{type(exc).__name__}: {exc}"[
                        :300
                    ]
                    traceback.print_exc()
            try:
                if res["restore"].get("latest") is None:
                    raise RuntimeError("nothing restored: the latest state did not come back")
                res["verify"] = json.loads(
                    run_cell(kc, w.verify, timeout=120).strip().splitlines()[-1]
                )
            except Exception as exc:
                res["verify"] = {}
                res["verify_error"] = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            self.stop(k, kc)
        return res

    @staticmethod
    def init_kishu(kc: Any, create: bool = False) -> None:
        """Attach Kishu as its docs say, in a cell (its post-cell hook then complains once
        about that very cell having had no pre-cell hook: harmless, ignored)."""
        code = "from kishu import init_kishu; init_kishu('nb.ipynb')"
        if create:
            code = (
                "import nbformat\nnbformat.write(nbformat.v4.new_notebook(), 'nb.ipynb')\n" + code
            )
        with contextlib.suppress(CellError):
            run_cell(kc, code)
        run_cell(kc, "assert '_kishu' in globals()")

    def snapshot(self, system: str, k: Any, kc: Any, wd: Path, i: int, cell: dict[str, Any]) -> Any:
        if system == "none":
            return None
        if system == "jusnap":
            t0 = time.monotonic()
            s = self.engine.snapshot(k.id, trigger="auto")
            assert isinstance(s, Snapshot), s
            cell["snapshot_s"] = time.monotonic() - t0
            cell["freeze_s"] = s.frozen_seconds
            m = self.engine.store.read_manifest(s.id)
            cell["new_bytes"], cell["new_page_bytes"] = m.new_bytes, m.new_page_bytes
            cell["image_bytes"] = s.size_bytes
            return s.id
        if system == "criu":
            d = wd / f"criu-{i}"
            d.mkdir()
            os.chown(d, self.user.pw_uid, self.user.pw_gid)
            kk = self.engine.kernels.get(k.id)
            t0 = time.monotonic()
            self.engine.criu.dump(kk.pid, d, d, self.engine.supervisor.creds(kk))
            cell["snapshot_s"] = time.monotonic() - t0
            cell["freeze_s"] = frozen_seconds(d)
            cell["new_bytes"] = du(d)
            cell["image_bytes"] = cell["new_bytes"]
            return d
        if system == "dill":
            t0 = time.monotonic()
            run_cell(kc, f"dill.dump_module('dill-{i}.pkl')", timeout=1800)
            cell["snapshot_s"] = time.monotonic() - t0
            cell["freeze_s"] = cell["snapshot_s"]  # the kernel is busy pickling meanwhile
            cell["new_bytes"] = du(wd / f"dill-{i}.pkl")
            return wd / f"dill-{i}.pkl"
        if system == "kishu":
            reply = kc.execute("", silent=True, user_expressions={
                "head": "_kishu._kishu_graph.head()",
                "t": "_kishu._kishu_commit.get_commit(_kishu._kishu_graph.head())"
                ".checkpoint_runtime_s",
            })  # fmt: skip
            msg = kc.get_shell_msg(timeout=60)
            while msg["parent_header"].get("msg_id") != reply:
                msg = kc.get_shell_msg(timeout=60)
            ue = msg["content"]["user_expressions"]
            head = ue["head"]["data"]["text/plain"].strip("'\"")
            with contextlib.suppress(KeyError, ValueError):
                cell["freeze_s"] = float(ue["t"]["data"]["text/plain"])
                cell["snapshot_s"] = cell["freeze_s"]
            cell["new_bytes"] = None  # Kishu's database grows in place; total below
            return head
        raise ValueError(system)

    def disk(self, system: str, wd: Path) -> int:
        if system == "jusnap":
            st = self.root / "state"
            reg = self.engine.registry
            mine = (reg.get_snapshot(i) for i in reg.all_snapshot_ids())
            snaps = [s.id for s in mine if s and s.owner_uid == self.owner]
            return sum(du(st / "snapshots" / s) for s in snaps) + du(
                st / "chunks" / str(self.owner)
            )
        if system in ("criu", "dill"):
            return sum(du(p) for p in wd.glob("criu-*" if system == "criu" else "dill-*"))
        if system == "kishu":
            return sum(du(p) for p in wd.glob("nb.kishudb*")) + du(
                Path(self.user.pw_dir) / ".kishu"
            )
        return 0

    def restore(self, system: str, k: Any, kc: Any, wd: Path, snap: Any) -> tuple[Any, Any, float]:
        if snap is None:
            raise RuntimeError("no snapshot to restore")
        if system == "jusnap":
            probe = self.root / "stage-probe"  # how long staging alone takes (reported apart)
            probe.mkdir(exist_ok=True)
            t0 = time.monotonic()
            self.engine.store.stage_out(snap, probe, 0, 0)
            stage_s = time.monotonic() - t0
            shutil.rmtree(probe)
            t0 = time.monotonic()
            r = self.engine.restore(snap)
            nudge(kc)
            run_cell(kc, "1")
            self.last_restore = {**r.public(), "stage_s": stage_s}
            return k, kc, time.monotonic() - t0
        if system == "criu":
            kk = self.engine.kernels.get(k.id)
            t0 = time.monotonic()
            self.engine.kernels.unwatch(kk)
            self.engine.supervisor.stop(kk)
            pidfile = wd / f"criu-{time.monotonic_ns()}.pid"
            r = self.engine.criu.restore(snap, self.engine.supervisor.creds(kk), pidfile)
            kk.pid, kk.started, kk.status = r.pid, start_time(r.pid), "running"
            self.engine.registry.put_kernel(kk)
            nudge(kc)
            run_cell(kc, "1")
            return k, kc, time.monotonic() - t0
        # dill and Kishu bring the state into a new kernel
        self.stop(k, kc)
        env = {"TEST_NOTEBOOK_PATH": str(wd / "nb.ipynb"), "ENV_KISHU_TEST_MODE": "true"}
        t0 = time.monotonic()
        k, kc = self.kernel(wd, env if system == "kishu" else None)
        if system == "dill":
            run_cell(kc, f"import dill; dill.load_module('{snap.name}')", timeout=1800)
        else:
            self.init_kishu(kc)
            run_cell(kc, f"_kishu.checkout('{snap}')", timeout=1800)
        run_cell(kc, "1")
        return k, kc, time.monotonic() - t0


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--python", default="/var/tmp/jusnap-bench/venv/bin/python")
    p.add_argument("--dir", default="/var/tmp")
    p.add_argument("--workloads", default=",".join(ALL))
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--out", default="bench/storage/results.json")
    p.add_argument("--keep", action="store_true", help="keep the state directory")
    args = p.parse_args()
    run = Run(args)
    out: dict[str, Any] = {
        "scale": args.scale,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores,"
        f" {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB,"
        f" kernel {platform.release()}",
        "load_before": os.getloadavg(),
        "results": [],
    }
    try:
        for wname in args.workloads.split(","):
            w = ALL[wname](args.scale)
            run.owner = 20000 + list(ALL).index(wname)
            for system in args.systems.split(","):
                print(f"== {w.name} / {system}", flush=True)
                t0 = time.monotonic()
                try:
                    r = run.session(w, system)
                except (CellError, Exception) as exc:
                    traceback.print_exc()
                    r = {"system": system, "workload": w.name, "error": str(exc)[:300]}
                r["title"] = w.title
                r["wall_s"] = time.monotonic() - t0
                out["results"].append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "cells"}), flush=True)
                Path(args.out).write_text(json.dumps(out, indent=1))
                if system == "jusnap" and not args.keep:  # next system: an empty store
                    for s in run.engine.registry.all_snapshot_ids():
                        run.engine.registry.delete_snapshot(s)
                        run.engine.store.delete(s)
                    run.engine.storage.gc(None)
    finally:
        out["load_after"] = os.getloadavg()
        out["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        Path(args.out).write_text(json.dumps(out, indent=1))
        run.close()


if __name__ == "__main__":
    main()
