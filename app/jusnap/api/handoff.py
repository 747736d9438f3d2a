"""Automatic snapshots asked for by the kernel itself, taken after the kernel has hung up.

The auto-snapshot extension runs inside the kernel that is to be dumped. CRIU cannot dump a Unix
socket connected to a process outside the dumped tree, and the daemon is such a process: while
the kernel's request is open, its snapshot is impossible. So the daemon answers at once (202),
keeps a duplicate of the connection, and starts the dump only when the kernel's end is closed
(the duplicate reads end-of-file). A kernel that never hangs up gets no snapshot, not a failed
dump.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

HANGUP_TIMEOUT = 10.0


def wait_for_hangup(sock: socket.socket, timeout: float = HANGUP_TIMEOUT) -> bool:
    """True once the peer has closed its end of ``sock`` (EOF or reset), False on timeout."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            readable, _, _ = select.select([sock], [], [], min(left, 0.5))
        except (OSError, ValueError):
            return True
        if not readable:
            continue
        try:
            data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        except OSError:
            return True  # reset: the peer is gone
        if not data:
            return True
        time.sleep(0.01)  # the peer sent more (keep-alive): gunicorn will read it; keep waiting
    return False


def after_hangup(conn: socket.socket | None, job: Callable[[], object], what: str) -> None:
    """Run ``job`` in a thread of its own once the caller on ``conn`` has hung up."""
    dup = conn.dup() if conn is not None else None

    def run() -> None:
        try:
            if dup is not None and not wait_for_hangup(dup):
                log.warning("%s: the caller kept its connection open; skipped", what)
                return
        finally:
            if dup is not None:
                with contextlib.suppress(OSError):
                    dup.close()
        try:
            job()
        except Exception as exc:
            log.warning("%s failed: %s", what, getattr(exc, "message", exc))

    threading.Thread(target=run, name="jusnap-handoff", daemon=True).start()
