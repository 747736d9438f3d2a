"""Crash points: where the crash-safety tests kill the daemon, as an OOM kill or power cut would.

``JUSNAP_FAILPOINT=<name>`` in the daemon's environment makes it SIGKILL its whole process
group (gunicorn's master and worker; kernels live in sessions of their own) when it reaches
``<name>``. Unset, as on every real install, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading


def reached(name: str) -> None:
    if os.environ.get("JUSNAP_FAILPOINT") == name:
        os.killpg(os.getpgrp(), signal.SIGKILL)


def reached_soon(name: str, delay: float) -> None:
    """The point ``name`` is reached ``delay`` seconds from now, whatever the daemon is doing
    then: in the middle of a CRIU run (CRIU is in the daemon's process group, and dies too)."""
    if os.environ.get("JUSNAP_FAILPOINT") == name:
        timer = threading.Timer(delay, os.killpg, (os.getpgrp(), signal.SIGKILL))
        timer.daemon = True
        timer.start()
