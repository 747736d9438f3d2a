"""One operation per kernel at a time: snapshot, restore, restart, shutdown, delete.

Different kernels proceed in parallel. Callers a person is waiting for queue briefly behind
the running operation (typically the automatic snapshot of the cell just run); automatic ones
fail fast and are skipped.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from ..errors import Busy

# How long a request someone waits for queues behind a running operation on the same kernel
# before it answers "busy".
USER_WAIT = 30.0


class OperationLocks:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._ops: dict[str, str] = {}  # kernel id -> operation in progress

    def current(self, kernel_id: str) -> str | None:
        """The operation running on the kernel now, if any."""
        return self._ops.get(kernel_id)

    @contextlib.contextmanager
    def exclusive(self, kernel_id: str, what: str, wait: float = 0.0) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(kernel_id, threading.Lock())
        if not lock.acquire(timeout=wait) if wait > 0 else not lock.acquire(blocking=False):
            doing = self._ops.get(kernel_id, "another snapshot operation")
            raise Busy(f"kernel {kernel_id} is busy ({doing}); try again", operation=doing)
        self._ops[kernel_id] = what
        try:
            yield
        finally:
            self._ops.pop(kernel_id, None)
            lock.release()
