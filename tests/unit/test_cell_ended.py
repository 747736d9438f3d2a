"""IopubMonitor.cell_ended: an automatic snapshot asked for by a cell's post_run_cell hook
waits for that cell's end (its idle status) before the dump, so that it is listed under the
cell's number (snapshots.py ``CELL_END_WAIT``). Pure bookkeeping: no socket is opened."""

from __future__ import annotations

import threading
import time

from jusnap.kernels.channels import IopubMonitor


def _monitor() -> IopubMonitor:
    return IopubMonitor({}, lambda update: None)  # never started


def test_a_cell_that_has_ended_needs_no_wait() -> None:
    m = _monitor()
    m.inputs.append((1.0, 3, "a"))
    m.ends["a"] = 1.5
    t0 = time.monotonic()
    assert m.cell_ended(3, 5.0)
    assert time.monotonic() - t0 < 0.5


def test_waits_for_the_idle_status_of_the_cell() -> None:
    m = _monitor()
    m.inputs.append((1.0, 3, "a"))
    threading.Timer(0.2, lambda: m.ends.__setitem__("a", 1.5)).start()
    t0 = time.monotonic()
    assert m.cell_ended(3, 5.0)
    assert 0.15 < time.monotonic() - t0 < 4.0


def test_a_later_cell_started_counts_as_the_end() -> None:
    m = _monitor()
    m.inputs.extend([(1.0, 3, "a"), (1.2, 4, "b")])  # Run All: the next cell is running
    assert m.cell_ended(3, 5.0)


def test_gives_up_after_the_timeout() -> None:
    m = _monitor()
    m.inputs.append((1.0, 3, "a"))  # never ends
    t0 = time.monotonic()
    assert not m.cell_ended(3, 0.1)
    assert not m.cell_ended(7, 0.1)  # a cell never seen
    assert time.monotonic() - t0 < 2.0


def test_a_cell_runs_from_its_input_until_its_idle_whatever_other_statuses_say() -> None:
    """What a trailing snapshot asks before it fires (Engine._trailing_fire): a ping's or a
    nudge's busy status is not a running cell, and a cell's idle ends it."""
    m = _monitor()
    assert not m.cell_running()  # nothing run yet
    m.inputs.append((1.0, 3, "a"))
    assert m.cell_running()
    m.ends["ping"] = 1.1  # (only execute_request idles are kept; no effect either way)
    assert m.cell_running()
    m.ends["a"] = 1.5
    assert not m.cell_running()
