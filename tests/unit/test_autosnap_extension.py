"""The IPython extension's request pacing (pure logic: the daemon is replaced by a recorder).

Cells that end while a request is under way must not be dropped: the newest of them is asked
for when the request returns. (Dropped, they lost the end of a Run All under load: the daemon
never heard of the last cell, so no trailing snapshot followed it.)
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from jusnap_jupyter.autosnap import AutoSnapshot

from tests.helpers import wait_until


class Recorder(AutoSnapshot):
    def __init__(self) -> None:
        super().__init__("k")
        self.asked: list[int | None] = []
        self.gate = threading.Event()

    def _ask(self, execution_count: int | None) -> str | None:
        self.asked.append(execution_count)
        self.gate.wait(10)  # a slow daemon
        return None


def _cell(n: int | None) -> SimpleNamespace:
    return SimpleNamespace(execution_count=n)


def test_cells_during_a_request_fold_into_one_for_the_newest() -> None:
    ext = Recorder()
    ext.post_run_cell(_cell(1))
    wait_until(lambda: ext.asked == [1], 5, what="the first request")
    for n in range(2, 8):
        ext.post_run_cell(_cell(n))  # never blocks the cell
    ext.gate.set()
    wait_until(lambda: not ext._sending, 5, what="the sender to finish")
    assert ext.asked == [1, 7]


def test_a_quiet_kernel_asks_once_per_cell() -> None:
    ext = Recorder()
    ext.gate.set()
    for n in (1, 2, 3):
        ext.post_run_cell(_cell(n))
        wait_until(lambda: not ext._sending, 5, what="the request")
    time.sleep(0.05)
    assert ext.asked == [1, 2, 3]


def test_a_failed_request_is_printed_once_and_the_sender_goes_on(capsys) -> None:
    class Failing(Recorder):
        def _ask(self, execution_count: int | None) -> str | None:
            self.asked.append(execution_count)
            raise OSError("daemon away")

    ext = Failing()
    for n in (1, 2):
        ext.post_run_cell(_cell(n))
        wait_until(lambda: not ext._sending, 5, what="the request")
    assert ext.asked == [1, 2]
    assert capsys.readouterr().err.count("automatic snapshot failed: daemon away") == 1


class _Daemon:
    def __init__(self, kernels: list[dict]) -> None:
        self._kernels = kernels

    def kernels(self) -> list[dict]:
        return self._kernels


def test_the_extension_finds_its_kernel_by_pid_or_by_pid_namespace(monkeypatch) -> None:
    """A plain kernel is known to the daemon by its PID; a namespaced one is PID 1 inside,
    and is found by the inode of its PID namespace instead (as the daemon lists it)."""
    import os
    from pathlib import Path

    import pytest
    from jusnap.errors import KernelNotFound

    mine = Path("/proc/self/ns/pid").stat().st_ino
    listing = [
        {"id": "dead", "status": "dead", "pid": os.getpid(), "pid_namespace": mine},
        {"id": "plain", "status": "running", "pid": os.getpid(), "pid_namespace": None},
        {"id": "ns", "status": "running", "pid": 4242, "pid_namespace": mine},
    ]
    ext = AutoSnapshot(None)
    assert ext._find_self(_Daemon(listing)) == "plain"  # type: ignore[arg-type]
    monkeypatch.setattr(os, "getpid", lambda: 1)
    assert ext._find_self(_Daemon(listing)) == "ns"  # type: ignore[arg-type]
    with pytest.raises(KernelNotFound):
        ext._find_self(_Daemon(listing[:2]))  # type: ignore[arg-type]
