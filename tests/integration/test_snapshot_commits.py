"""Snapshots recorded before they are stored (``jusnap.store.background_commit``): a kernel's
next snapshot does not wait for the previous one's commit, the commits run one at a time in
order, and no more than one waits behind a running one.

Real CRIU, real kernels as the test user; the store's commit is held at a gate (the real
commit runs once it opens) to make it slower than the snapshots.
"""

from __future__ import annotations

import threading
from typing import Any

from jusnap.registry import Snapshot
from jusnap.snapshots import Engine

from tests.conftest import KernelSession


def _gated(e: Engine) -> tuple[threading.Event, list[str]]:
    gate = threading.Event()
    order: list[str] = []
    real = e.store.commit

    def commit(snapshot_id: str, *args: Any, **kw: Any) -> int:
        order.append(snapshot_id)
        assert gate.wait(120), "the test never opened the gate"
        return real(snapshot_id, *args, **kw)

    e.store.commit = commit  # type: ignore[method-assign]
    return gate, order


def _snapshot_in_thread(
    e: Engine, ks: KernelSession, code: str
) -> tuple[threading.Thread, list[Snapshot]]:
    ks.run(code)
    box: list[Snapshot] = []
    t = threading.Thread(target=lambda: box.append(e.snapshot(ks.id)), daemon=True)
    t.start()
    return t, box


def test_the_next_snapshot_is_recorded_while_the_previous_one_is_stored(
    engine: Engine, kernel: KernelSession
) -> None:
    e = engine
    gate, order = _gated(e)
    try:
        t1, s1 = _snapshot_in_thread(e, kernel, "x = 1")
        t1.join(60)
        assert s1, "the first snapshot is recorded before it is stored"
        t2, s2 = _snapshot_in_thread(e, kernel, "x = 2")
        t2.join(60)
        assert s2, "the second one did not wait for the first one's commit"
        assert order == [s1[0].id], "its own commit waits behind the first one's"
        # A third one waits: one commit running and one queued is the most.
        t3, s3 = _snapshot_in_thread(e, kernel, "x = 3")
        t3.join(2)
        assert t3.is_alive() and not s3
    finally:
        gate.set()
    t3.join(60)
    assert s3
    e.wait_stored()
    assert order == [s1[0].id, s2[0].id, s3[0].id]
    for s in (s1[0], s2[0], s3[0]):
        assert e.store.exists(s.id)
        entry = e.hot.get(s.id)
        assert entry is None or not entry.pending
    # Each holds its own state.
    e.restore(s2[0].id)
    kernel.after_restore()
    assert kernel.value("x") == "2"
