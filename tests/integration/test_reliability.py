"""Never lose the latest state: Run All bursts, failed automatic snapshots, closing a notebook
while its snapshot runs, a daemon killed in the middle of a restore.

Real CRIU, real kernels as the test user; automatic requests are made the way the IPython
extension makes them (after each cell).
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from jusnap.errors import SnapshotFailed
from jusnap.registry import Snapshot
from jusnap.snapshots import Engine

from tests.conftest import Daemon, KernelSession, shutdown_all
from tests.helpers import connect, nudge, run_cell, wait_until


def _autos(e: Engine, kernel_id: str) -> list[Snapshot]:
    return [s for s in e.list_snapshots(kernel_id) if s.trigger == "auto"]


def test_run_all_burst_ends_with_its_last_cell_saved(make_settings) -> None:
    """50 quick cells with a 2 s cooldown: requests during the cooldown leave one trailing
    snapshot, which holds the state after the last cell."""
    e = Engine(make_settings(**{"jusnap.ipython.cooldown": "2s"})).start()
    ks = KernelSession(e)
    try:
        ks.run("import numpy as np; a = np.zeros(1_000_000)")
        for i in range(1, 51):
            ks.run(f"a[{i}] = {i}; last = {i}")
            e.snapshot(ks.id, trigger="auto")  # the extension's request after each cell
        final = e.kernels.get(ks.id).execution_count
        assert e.auto_status(e.kernels.get(ks.id))["pending_at"] is not None
        newest = wait_until(
            lambda: next((s for s in _autos(e, ks.id) if s.execution_count == final), None),
            30,
            what="a trailing snapshot of the last cell",
        )
        assert len(_autos(e, ks.id)) <= 4  # a burst is not 50 snapshots either
        wait_until(lambda: e.trailing.due(ks.id) is None, 10, what="nothing left pending")
        ks.run("last = -1")
        e.restore(newest.id)
        ks.after_restore()
        assert ks.value("(last, float(a[50]), float(a.sum()))") == repr((50, 50.0, 1275.0))
    finally:
        ks.close()
        shutdown_all(e)


def test_a_failed_automatic_snapshot_is_reported_not_only_logged(make_settings) -> None:
    e = Engine(make_settings(**{"jusnap.ipython.cooldown": "0s"})).start()
    ks = KernelSession(e)
    try:
        # An unlinked 80 MB file held open: over the 64 MB ghost limit, CRIU refuses the dump.
        ks.run(
            "import os, tempfile\n"
            "f = tempfile.TemporaryFile()\n"
            "f.write(os.urandom(80 * 1024 * 1024)); f.flush()\n"
        )
        with pytest.raises(SnapshotFailed, match="ghost"):
            e.snapshot(ks.id, trigger="auto")
        status = e.auto_status(e.kernels.get(ks.id))
        assert "ghost" in status["last_error"]
        ks.run("f.close()")
        assert isinstance(e.snapshot(ks.id, trigger="auto"), Snapshot)
        assert e.auto_status(e.kernels.get(ks.id))["last_error"] is None
    finally:
        ks.close()
        shutdown_all(e)


def test_the_notebook_hears_of_a_failed_automatic_snapshot(daemon: Daemon) -> None:
    """Through the API the kernel's extension uses: the next automatic request's answer
    carries the previous one's failure."""
    import socket as socketlib
    from http.client import HTTPConnection

    class UnixHTTP(HTTPConnection):
        def connect(self) -> None:
            self.sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
            self.sock.connect(daemon.socket)

    info = json.loads(daemon.cli("--json", "start").stdout)
    kc = connect(info["connection"])
    try:
        run_cell(
            kc,
            "import os, tempfile\nf = tempfile.TemporaryFile()\n"
            "f.write(os.urandom(80 * 1024 * 1024)); f.flush()\n",
        )

        def ask() -> dict:
            c = UnixHTTP("localhost")
            c.request(
                "POST",
                f"/jusnap/api/v1/kernels/{info['id']}/snapshots",
                json.dumps({"trigger": "auto", "wait": False}),
                {"Content-Type": "application/json"},
            )
            body = json.loads(c.getresponse().read())
            c.close()
            return body

        assert ask()["status"] == "scheduled"
        k = wait_until(
            lambda: (lambda k: k if k["auto"]["last_error"] else None)(
                json.loads(daemon.cli("--json", "kernels").stdout)[0]
            ),
            60,
            what="the failure to be recorded",
        )
        assert "ghost" in k["auto"]["last_error"]
        assert "ghost" in ask()["previous_error"]
    finally:
        kc.stop_channels()


def test_closing_a_notebook_while_its_snapshot_runs_waits_for_it(
    kernel: KernelSession, engine: Engine
) -> None:
    done: list[object] = []

    def slow_snapshot() -> None:
        with engine.locks.exclusive(kernel.id, "snapshot"):
            time.sleep(1.5)
            done.append(engine._snapshot_locked(engine.kernels.get(kernel.id), "manual", None))

    t = threading.Thread(target=slow_snapshot)
    t.start()
    time.sleep(0.2)
    engine.kernels.shutdown(kernel.id)  # waits instead of answering "busy"
    t.join()
    (snap,) = done
    assert isinstance(snap, Snapshot)
    assert engine.snapshot_info(snap.id).id == snap.id  # the snapshot taken is kept
    assert engine.kernels.list() == []


@pytest.mark.parametrize(
    "phase", ["before-stop", "kernel-stopped", "criu-running", "criu-restored", "handshake"]
)
def test_daemon_killed_mid_restore_brings_the_state_back(daemon: Daemon, phase: str) -> None:
    """kill -9 of the daemon (and of CRIU, in its process group) at each phase of a restore:
    once it is back, the kernel is running again with the state it had before the restore
    or the restored one, as its notice says, never a fresh one."""
    info = json.loads(daemon.cli("--json", "start").stdout)
    kc = connect(info["connection"])
    try:
        run_cell(kc, "x = 'old'")
        snap = json.loads(daemon.cli("--json", "snapshot", info["id"]).stdout)["snapshot"]
        run_cell(kc, "x = 'current'")
        daemon.stop()
        daemon.start(env={"JUSNAP_FAILPOINT": f"restore:{phase}"})
        daemon.died_under("restore", snap["id"])
        k = json.loads(daemon.cli("--json", "kernels").stdout)[0]
        assert k["status"] == "running", (k, daemon.log.read_text()[-3000:])
        assert k["notice"], k  # the notebook is told what happened
        nudge(kc)
        value = run_cell(kc, "print(x)").strip()
        if phase == "criu-running":  # CRIU may or may not have finished when it was killed
            expected = "old" if "was restored" in k["notice"] else "current"
        else:
            expected = "current" if phase in ("before-stop", "kernel-stopped") else "old"
        assert value == expected, (phase, value, k["notice"])
        # The pre-restore copy was not in the store yet when the daemon died (it is stored in
        # the background after the restore): the new daemon stored it.
        snaps = json.loads(daemon.cli("--json", "snapshots", info["id"]).stdout)
        pre = [s for s in snaps if s["trigger"] == "pre-restore"]
        assert pre, snaps
        assert all(
            (daemon.state_dir / "snapshots" / s["id"] / "manifest.json").is_file() for s in pre
        )
    finally:
        kc.stop_channels()


def test_daemon_killed_before_a_recorded_snapshot_is_stored_keeps_it(daemon: Daemon) -> None:
    """kill -9 of the daemon after a snapshot was recorded (durable in the hot tier) but
    before the store had it: the next daemon stores it, and it restores."""
    info = json.loads(daemon.cli("--json", "start").stdout)
    kc = connect(info["connection"])
    try:
        run_cell(kc, "x = 'saved'")
        daemon.stop()
        daemon.start(env={"JUSNAP_FAILPOINT": "snapshot:recorded"})
        daemon.cli("snapshot", info["id"], timeout=60)  # answered or not: the daemon dies
        assert daemon.proc is not None
        daemon.proc.wait(timeout=30)
        daemon.start()
        snaps = json.loads(daemon.cli("--json", "snapshots", info["id"]).stdout)
        assert [s["trigger"] for s in snaps] == ["manual"], snaps
        sid = snaps[0]["id"]
        assert (daemon.state_dir / "snapshots" / sid / "manifest.json").is_file()
        meta = json.loads((daemon.state_dir / "hot" / sid / "meta.json").read_text())
        assert meta["pending"] is False
        run_cell(kc, "x = 'changed'")
        r = daemon.cli("restore", sid, timeout=60)
        assert r.returncode == 0, r.stderr
        nudge(kc)
        assert run_cell(kc, "print(x)").strip() == "saved"
    finally:
        kc.stop_channels()
