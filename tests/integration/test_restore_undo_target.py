"""A restore needs no second freeze when the newest snapshot already holds the kernel's state
(issue 12): the automatic snapshot after the last cell is the state the user gets back on undo
and on a failed restore. Whenever that is not sure, the restore dumps its pre-restore copy.

Real CRIU, real kernels as the test user.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator

import pytest
from jusnap.config import Settings
from jusnap.criu_images import CORE_MAGIC, entries
from jusnap.errors import RestoreFailed
from jusnap.registry import Snapshot
from jusnap.snapshots import Engine

from tests.conftest import Daemon, KernelSession, shutdown_all
from tests.criu_craft import decode, encode, image, rewrite_stored
from tests.helpers import connect, nudge, run_cell


@pytest.fixture
def counted(make_settings: Callable[..., Settings]) -> Iterator[tuple[Engine, list[str]]]:
    """An engine whose CRIU dumps are counted (the pre-restore dump is one of them)."""
    e = Engine(make_settings()).start()
    dumps: list[str] = []
    real_dump = e.criu.dump

    def dump(*args: object, **kw: object) -> object:
        dumps.append("dump")
        return real_dump(*args, **kw)  # type: ignore[arg-type]

    e.criu.dump = dump  # type: ignore[method-assign]
    yield e, dumps
    shutdown_all(e)


def _auto(e: Engine, ks: KernelSession, code: str) -> Snapshot:
    """A cell and the automatic snapshot after it, stored."""
    ks.run(code)
    s = e.snapshot(ks.id, trigger="auto")
    assert isinstance(s, Snapshot), s
    assert s.execution_count is not None, "the snapshot holds the state after its cell"
    e.wait_stored()
    return s


def test_restore_takes_the_newest_automatic_snapshot_as_the_state_to_undo_to(
    counted: tuple[Engine, list[str]],
) -> None:
    e, dumps = counted
    ks = KernelSession(e)
    try:
        old = _auto(e, ks, "import numpy as np; a = np.arange(1_000_000.0); x = 'old'")
        newest = _auto(e, ks, "a[:] = 1; x = 'current'")
        dumps.clear()
        r = e.restore(old.id)
        ks.after_restore()
        assert dumps == [], "no pre-restore dump: the newest snapshot holds the state"
        assert r.pre_restore is not None and r.pre_restore.id == newest.id
        assert [s.trigger for s in e.list_snapshots(ks.id)] == ["auto", "auto"]
        assert ks.value("(x, float(a.sum()))") == repr(("old", float(sum(range(1_000_000)))))
        # Undo: the snapshot the restore named brings the state back.
        e.restore(r.pre_restore.id)
        ks.after_restore()
        assert ks.value("(x, float(a.sum()))") == repr(("current", 1_000_000.0))
    finally:
        ks.close()


THREAD = """
import threading, time
x = 'snapshot'
def work():
    time.sleep(2.0)
    t = time.process_time()
    while time.process_time() - t < 0.5:
        pass
    globals()['x'] = 'changed by a thread'
threading.Thread(target=work, daemon=True).start()
"""


@pytest.mark.parametrize("change", ["silent-execute", "background-thread", "not-stored-yet"])
def test_a_state_the_newest_snapshot_may_not_hold_is_dumped_first(
    counted: tuple[Engine, list[str]], change: str
) -> None:
    """Changes that leave the execution count alone still get their pre-restore copy."""
    e, dumps = counted
    ks = KernelSession(e)
    try:
        old = _auto(e, ks, "x = 'old'")
        gate = threading.Event()
        if change == "background-thread":
            # Started by the cell before the snapshot, it changes the state after it.
            _auto(e, ks, THREAD)
            threading.Event().wait(3.0)
            expected = "changed by a thread"
        else:
            _auto(e, ks, "x = 'snapshot'")
        if change == "silent-execute":  # as widgets or a variable inspector do: no count
            ks.client.execute("x = 'changed silently'", silent=True, store_history=False)
            ks.client.get_shell_msg(timeout=30)
            expected = "changed silently"
        elif change == "not-stored-yet":
            real_commit = e.store.commit

            def held_back(*args: object, **kw: object) -> object:
                gate.wait(60)
                return real_commit(*args, **kw)  # type: ignore[arg-type]

            e.store.commit = held_back  # type: ignore[method-assign]
            ks.run("x = 'not stored yet'")
            s = e.snapshot(ks.id, trigger="auto")
            assert isinstance(s, Snapshot) and s.execution_count is not None
            expected = "not stored yet"
        dumps.clear()
        try:
            r = e.restore(old.id)
        finally:
            gate.set()
        ks.after_restore()
        assert dumps == ["dump"], change
        assert r.pre_restore is not None and r.pre_restore.trigger == "pre-restore"
        assert ks.value("x") == "'old'"
        e.restore(r.pre_restore.id)
        ks.after_restore()
        assert ks.value("x") == repr(expected)
    finally:
        ks.close()


def test_a_failed_restore_rolls_back_to_the_newest_snapshot(
    counted: tuple[Engine, list[str]],
) -> None:
    """CRIU refuses the target after the kernel was stopped: the kernel comes back from the
    newest automatic snapshot, which is the state the user had, without a dump before."""
    e, dumps = counted
    ks = KernelSession(e)
    try:
        old = _auto(e, ks, "y = 'before restore'")
        newest = _auto(e, ks, "import numpy as np; arr = np.full(500_000, 3.0); y = 'must survive'")
        path = e.store.path(old.id)
        core = next(path.glob("core-*.img"))
        e.hot.drop(old.id)  # restored from the store, where the image is rewritten

        def no_registers(data: bytes) -> bytes:
            (entry,) = entries(data, CORE_MAGIC)
            return image(CORE_MAGIC, [encode([(n, w, v) for n, w, v in decode(entry) if n != 2])])

        rewrite_stored(path, core.name, no_registers)
        dumps.clear()
        with pytest.raises(RestoreFailed) as info:
            e.restore(old.id)
        assert dumps == []
        assert info.value.details["rolled_back"] is True
        assert info.value.details["pre_restore"] == newest.id
        assert "put back as it was" in info.value.message
        assert e.kernels.get(ks.id).execution_count == newest.execution_count
        ks.after_restore()
        assert ks.value("(y, float(arr.sum()))") == repr(("must survive", 1_500_000.0))
        assert [s.id for s in e.list_snapshots(ks.id)] == [newest.id, old.id]
    finally:
        ks.close()


def test_daemon_killed_after_the_stop_brings_back_the_newest_snapshot(daemon: Daemon) -> None:
    """kill -9 of the daemon once the kernel was stopped for a restore that dumped nothing:
    the next daemon brings back the newest automatic snapshot (the restore journal names it)."""
    daemon.stop()
    daemon.start(env={"JUSNAP_FAILPOINT": "restore:kernel-stopped"})
    info = json.loads(daemon.cli("--json", "start").stdout)
    kc = connect(info["connection"])
    try:
        sids = []
        for value in ("old", "current"):
            run_cell(kc, f"x = '{value}'")
            r = daemon.cli("--json", "snapshot", "--auto", info["id"])
            assert r.returncode == 0, r.stderr
            sids.append(json.loads(r.stdout)["snapshot"]["id"])
        assert daemon.cli("du").returncode == 0  # waits until both are stored
        daemon.died_under("restore", sids[0])
        k = json.loads(daemon.cli("--json", "kernels").stdout)[0]
        assert k["status"] == "running", (k, daemon.log.read_text()[-3000:])
        assert sids[1] in k["notice"], k
        snaps = json.loads(daemon.cli("--json", "snapshots", info["id"]).stdout)
        assert [s["trigger"] for s in snaps] == ["auto", "auto"], snaps
        nudge(kc)
        assert run_cell(kc, "print(x)").strip() == "current"
    finally:
        kc.stop_channels()
