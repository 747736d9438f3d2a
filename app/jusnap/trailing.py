"""Trailing automatic snapshots: the newest state is saved even when cells come in a burst.

The cooldown and the one-operation-per-kernel rule skip most automatic requests of a Run All
(50 quick cells once gave a single snapshot, after the first cell). A skipped request therefore
leaves one *pending* snapshot per kernel, due when the cooldown ends (or shortly after the
running operation): debouncing with a trailing edge. When it fires it snapshots the kernel if
it is idle; if a cell is running, that cell's own request will schedule the next one. So the
newest automatic snapshot reflects the last finished cell at most cooldown + one snapshot
time later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# How soon to try again after a request found another operation running on the kernel.
BUSY_RETRY = 1.0


class TrailingSnapshots:
    def __init__(self, fire: Callable[[str], None]) -> None:
        self._fire = fire
        self._lock = threading.Lock()
        self._timers: dict[str, tuple[float, threading.Timer]] = {}

    def schedule(self, kernel_id: str, delay: float) -> float:
        """Make sure a snapshot of the kernel is due within ``delay`` seconds; return when."""
        due = time.time() + max(0.0, delay)
        with self._lock:
            current = self._timers.get(kernel_id)
            if current is not None and current[0] <= due:
                return current[0]
            if current is not None:
                current[1].cancel()
            timer = threading.Timer(max(0.0, delay), self._run, args=(kernel_id,))
            timer.daemon = True
            timer.name = f"jusnap-trailing-{kernel_id[:8]}"
            self._timers[kernel_id] = (due, timer)
            timer.start()
            return due

    def due(self, kernel_id: str) -> float | None:
        """When the kernel's pending snapshot is due (None: nothing pending)."""
        with self._lock:
            current = self._timers.get(kernel_id)
        return current[0] if current else None

    def cancel(self, kernel_id: str) -> None:
        with self._lock:
            current = self._timers.pop(kernel_id, None)
        if current is not None:
            current[1].cancel()

    def close(self) -> None:
        with self._lock:
            timers, self._timers = list(self._timers.values()), {}
        for _, timer in timers:
            timer.cancel()

    def _run(self, kernel_id: str) -> None:
        with self._lock:
            current = self._timers.get(kernel_id)
            if current is None or current[1] is not threading.current_thread():
                return
            del self._timers[kernel_id]
        try:
            self._fire(kernel_id)
        except Exception:
            log.exception("trailing snapshot of kernel %s failed", kernel_id)
