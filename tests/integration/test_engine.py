"""The snapshot engine on real CRIU with real ipykernels running as an unprivileged user."""

from __future__ import annotations

import os
import pwd

import pytest
from jusnap.errors import InvalidRequest, KernelNotFound, SnapshotNotFound
from jusnap.registry import Snapshot
from jusnap.snapshots import Engine, Skipped

from tests.conftest import KernelSession

SETUP = r"""
import numpy as np, sqlite3, threading, os, tempfile
n = 42
f = 3.5
s = "hello"
arr = np.arange(1_000_000, dtype=np.float64)
square = lambda v: v * v
def counter():
    i = 0
    while True:
        yield i
        i += 1
gen = counter()
[next(gen) for _ in range(5)]
fh = open(os.path.join(tempfile.mkdtemp(), "data.txt"), "w+")
fh.write("line1\nline2\nline3\n"); fh.flush(); fh.seek(0); fh.readline()
lock = threading.Lock(); lock.acquire()
ticks = []
stop = threading.Event()
def work():
    while not stop.is_set():
        ticks.append(1)
        stop.wait(0.01)
worker = threading.Thread(target=work, daemon=True); worker.start()
db = sqlite3.connect(":memory:")
db.execute("create table t (v integer)")
db.executemany("insert into t values (?)", [(i,) for i in range(10)])
"""

MUTATE = r"""
n = -1; f = 0.0; s = "changed"; arr[:] = 0; square = None
gen = iter(()); fh.seek(0, 2); lock.release(); db.execute("delete from t")
"""

CHECK = r"""
import time
t0 = len(ticks); time.sleep(0.2)
print(n, f, s, float(arr.sum()), square(7), next(gen), fh.readline().strip(), lock.locked(),
      worker.is_alive(), len(ticks) > t0, db.execute("select count(*), sum(v) from t").fetchone())
"""
EXPECTED = "42 3.5 hello 499999500000.0 49 5 line2 True True True (10, 45)"


def test_objects_no_pickle_tool_can_save_survive(kernel: KernelSession, engine: Engine) -> None:
    kernel.run(SETUP)
    snap = engine.snapshot(kernel.id, label="objects")
    assert isinstance(snap, Snapshot)
    assert kernel.run(CHECK).strip() == EXPECTED  # consumes the generator and the file
    kernel.run(MUTATE)
    result = engine.restore(snap.id)
    kernel.after_restore()
    assert result.pre_restore is not None and result.pre_restore.trigger == "pre-restore"
    assert kernel.run(CHECK).strip() == EXPECTED


def test_dataframe_survives(kernel: KernelSession, engine: Engine) -> None:
    kernel.run("import pandas as pd; df = pd.DataFrame({'a': range(1000), 'b': ['x'] * 1000})")
    snap = engine.snapshot(kernel.id)
    kernel.run("df = df.iloc[:3]")
    engine.restore(snap.id)
    kernel.after_restore()
    assert kernel.value("(len(df), int(df.a.sum()), df.b.iloc[-1])") == "(1000, 499500, 'x')"


def test_older_snapshot_and_same_snapshot_twice(kernel: KernelSession, engine: Engine) -> None:
    kernel.run("x = 1")
    first = engine.snapshot(kernel.id)
    kernel.run("x = 2")
    second = engine.snapshot(kernel.id)
    kernel.run("x = 3")
    assert isinstance(first, Snapshot) and isinstance(second, Snapshot)
    listed = [s.id for s in engine.list_snapshots(kernel.id)]
    assert listed == sorted(listed, reverse=True), "newest first"
    assert listed[:2] == [second.id, first.id]

    engine.restore(first.id)

    kernel.after_restore()
    assert kernel.value("x") == "1"
    kernel.run("x = 10")
    engine.restore(first.id)
    kernel.after_restore()
    assert kernel.value("x") == "1"
    engine.restore(second.id)
    kernel.after_restore()
    assert kernel.value("x") == "2"


def test_restore_after_kernel_restart(kernel: KernelSession, engine: Engine) -> None:
    kernel.run("before_restart = 'kept'")
    snap = engine.snapshot(kernel.id)
    old_pid = engine.kernels.get(kernel.id).pid
    engine.kernels.restart(kernel.id)
    assert engine.kernels.get(kernel.id).pid != old_pid
    kernel.after_restore()  # a restarted kernel, too, needs the client's IOPub to come back
    assert kernel.value("'before_restart' in globals()") == "False"
    engine.restore(snap.id)
    kernel.after_restore()
    assert kernel.value("before_restart") == "'kept'"


@pytest.mark.parametrize(
    "history_enabled", [False, True], ids=["history-in-memory", "history-file"]
)
def test_history_matches_snapshot(make_settings, history_enabled: bool) -> None:
    e = Engine(make_settings(**{"jusnap.ipython.history_enabled": str(history_enabled)})).start()
    try:
        ks = KernelSession(e)
        ks.run("a = 1")
        ks.run("b = 2")
        snap = e.snapshot(ks.id)
        assert isinstance(snap, Snapshot)
        assert snap.has_history is history_enabled
        assert snap.execution_count == 2
        ks.run("c = 3")
        ks.run("d = 4")
        e.restore(snap.id)
        ks.after_restore()
        # In[] is the process's own memory; %history reads IPython's history database.
        assert ks.value("In[1:3]") == "['a = 1', 'b = 2']"
        hist = ks.run("%history -n")
        assert "a = 1" in hist and "b = 2" in hist
        assert "c = 3" not in hist and "d = 4" not in hist
        ks.run("e = 5")  # the history database keeps working after the restore
        assert "e = 5" in ks.run("%history -n")
        ks.close()
    finally:
        for k in e.registry.kernels():
            e.supervisor.remove(k)
        e.close()


def test_early_writeback_snapshot_restores_whole(make_settings) -> None:
    """A snapshot written back while CRIU dumps it (``jusnap.store.early_writeback``, off by
    default) is as whole as any: listed once durable, restored byte for byte."""
    e = Engine(make_settings(**{"jusnap.store.early_writeback": "True"})).start()
    try:
        ks = KernelSession(e)
        ks.run("import numpy as np; a = np.random.default_rng(1).bytes(64 << 20)")
        want = ks.value("hash(a)")
        snap = e.snapshot(ks.id)
        assert isinstance(snap, Snapshot)
        ks.run("a = b''")
        e.restore(snap.id)
        ks.after_restore()
        assert ks.value("hash(a)") == want
        ks.close()
    finally:
        for k in e.registry.kernels():
            e.supervisor.remove(k)
        e.close()


def test_kernel_runs_as_unprivileged_user(kernel: KernelSession, engine: Engine) -> None:
    uid = int(kernel.value("__import__('os').getuid()"))
    assert uid != 0
    assert uid == pwd.getpwnam(os.environ.get("JUSNAP_TEST_USER", "jusnap-test")).pw_uid
    snap = engine.snapshot(kernel.id)
    engine.restore(snap.id)
    kernel.after_restore()
    assert int(kernel.value("__import__('os').getuid()")) == uid


def test_snapshot_metadata(kernel: KernelSession, engine: Engine) -> None:
    kernel.run("1 + 1")
    kernel.run("2 + 2")
    snap = engine.snapshot(kernel.id, label="  my label ")
    assert isinstance(snap, Snapshot)
    assert snap.label == "my label"
    assert snap.trigger == "manual"
    assert snap.kernel_id == kernel.id
    assert snap.size_bytes > 1_000_000
    assert 0 < snap.frozen_seconds < 30
    assert snap.execution_count == 2
    assert engine.snapshot_info(snap.id) == snap
    # images are the daemon's alone (in the store once stored, in the background)
    engine.wait_stored()
    path = engine.store.path(snap.id)
    assert (path.stat().st_mode & 0o777) == 0o700 and path.stat().st_uid == 0
    for f in path.iterdir():
        assert (f.stat().st_mode & 0o077) == 0, f"{f} is readable by others"
    assert (engine.store.root.stat().st_mode & 0o777) == 0o700


def test_auto_snapshots_respect_cooldown(make_settings) -> None:
    e = Engine(make_settings(**{"jusnap.ipython.cooldown": "30s"})).start()
    try:
        ks = KernelSession(e)
        first = e.snapshot(ks.id, trigger="auto")
        assert isinstance(first, Snapshot) and first.trigger == "auto"
        second = e.snapshot(ks.id, trigger="auto")
        assert (
            isinstance(second, Skipped)
            and second.reason == "cooldown"
            and 0 < second.retry_in <= 30
        )
        manual = e.snapshot(ks.id)  # a manual request always runs
        assert isinstance(manual, Snapshot)
        e.kernels.set_auto(ks.id, cooldown=0)
        assert isinstance(e.snapshot(ks.id, trigger="auto"), Snapshot)
        e.kernels.set_auto(ks.id, enabled=False)
        off = e.snapshot(ks.id, trigger="auto")
        assert isinstance(off, Skipped) and "off" in off.reason
        ks.close()
    finally:
        for k in e.registry.kernels():
            e.supervisor.remove(k)
        e.close()


def test_delete_and_clear(kernel: KernelSession, engine: Engine) -> None:
    a = engine.snapshot(kernel.id)
    b = engine.snapshot(kernel.id)
    assert isinstance(a, Snapshot) and isinstance(b, Snapshot)
    engine.delete_snapshot(a.id)
    assert [s.id for s in engine.list_snapshots(kernel.id)] == [b.id]
    assert not engine.store.path(a.id).exists()
    with pytest.raises(SnapshotNotFound):
        engine.snapshot_info(a.id)
    engine.snapshot(kernel.id)
    assert engine.clear(kernel.id) == 2
    assert engine.list_snapshots(kernel.id) == []
    assert kernel.value("1 + 1") == "2"  # the kernel did not notice


def test_bad_ids_and_unknown_kernels(engine: Engine) -> None:
    with pytest.raises(InvalidRequest, match="not a kernel id"):
        engine.snapshot("../../etc")
    with pytest.raises(KernelNotFound):
        engine.snapshot("00000000-0000-4000-8000-000000000000")
    with pytest.raises(InvalidRequest, match="not a snapshot id"):
        engine.restore("nope; rm -rf /")
    with pytest.raises(SnapshotNotFound):
        engine.restore("01ARZ3NDEKTSV4RRFFQ69G5FAV")


def test_owner_cannot_touch_other_users_kernels(kernel: KernelSession, engine: Engine) -> None:
    snap = engine.snapshot(kernel.id)
    assert isinstance(snap, Snapshot)
    stranger = 4242
    with pytest.raises(KernelNotFound):
        engine.snapshot(kernel.id, owner_uid=stranger)
    with pytest.raises(SnapshotNotFound):
        engine.restore(snap.id, owner_uid=stranger)
    with pytest.raises(SnapshotNotFound):
        engine.delete_snapshot(snap.id, owner_uid=stranger)
    assert engine.kernels.list(owner_uid=stranger) == []
    assert [s.id for s in engine.list_snapshots(kernel.id)] == [snap.id]


def test_one_operation_per_kernel(kernel: KernelSession, engine: Engine, monkeypatch) -> None:
    import threading

    import jusnap.snapshots as snapshots_mod
    from jusnap.errors import Busy

    monkeypatch.setattr(snapshots_mod, "USER_WAIT", 0.3)
    with engine.locks.exclusive(kernel.id, "restore"):
        skipped = engine.snapshot(kernel.id, trigger="auto")
        assert isinstance(skipped, Skipped) and "another operation" in skipped.reason
        with pytest.raises(Busy, match="restore") as info:
            engine.snapshot(kernel.id)
        assert info.value.http_status == 409

    # A manual request queues behind a short operation instead of failing.
    monkeypatch.setattr(snapshots_mod, "USER_WAIT", 10.0)
    held = threading.Event()

    def hold() -> None:
        with engine.locks.exclusive(kernel.id, "snapshot"):
            held.set()
            threading.Event().wait(0.5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    assert isinstance(engine.snapshot(kernel.id), Snapshot)
    t.join()
