"""Lazy restore: ``criu lazy-pages`` serves a snapshot's pages after the kernel is back.

The restored kernel answers as soon as its small images are restored; its memory arrives
behind it through userfaultfd (measured here: a 4 GB kernel usable in 0.38 s instead of 4 s).

The server gets a directory of its own under the daemon's work directory, ``<name>-lazy``
(root's, 0750, the kernel's group): ``img/`` holds the images, root's and read-only for the
kernel's group like every staged image (hard links to a hot entry's files, or the staged
directory moved in), so neither the hot tier trimming its entry nor the restore's scratch
directory going away takes them from the server; ``criu/`` is the kernel uid's work directory
(its logs and ``lazy-pages.socket``, where the restore connects). Everything goes when the
server exits: it does once every page was handed over, or is killed after ``timeout``.

A server that does not exit cleanly (killed, crashed, timed out) leaves the kernel with pages
that will never arrive: the kernel reads zeros there, crashes or, worse, computes on. So its
exit status is collected and anything but 0 kills the restored kernel (``on_broken``): the
user sees a dead kernel and restores again, never a silently wrong one. While the server
runs, the kernel is not snapshotted (:meth:`LazyServers.wait`): the images would be of pages
still missing.

A daemon that dies meanwhile leaves the server running (its own session) with nobody to see
how it ends. ``server.json`` (root's, in the root-owned home) names the kernel, the server and,
once known, the restored process; the next daemon finds the directory, kills that server and
that kernel (:func:`leftover`): the pages cannot be proven complete, and a stopped kernel with
a notice is better than one computing on zeros.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .criu import Criu
from .fsutil import write_json
from .proc import Creds, check_restored, kill_tree, start_time, ticks_now
from .untrusted import read_untrusted

log = logging.getLogger(__name__)


@dataclass
class LazyServer:
    """One running ``criu lazy-pages``: its directory and process."""

    home: Path
    process: subprocess.Popen[bytes] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False
    record: dict[str, object] = field(default_factory=dict)

    @property
    def images(self) -> Path:
        return self.home / "img"

    @property
    def work(self) -> Path:
        return self.home / "criu"


def prepare(images: Path, home: Path, creds: Creds, linked: bool) -> LazyServer:
    """Give the images a home of their own (see the module's docstring).

    ``linked``: ``images`` are a hot entry's (kept by the hot tier): hard-link them (copy
    where a link is impossible); otherwise they are a restore's staged copy: move it. A
    fork's (or a restore into another kernel's) view of a hot entry is root's symbolic links
    to the entry's files beside its own ``files.img`` (``Engine._retarget``): the files they
    name are linked, so that the server keeps them should the entry go. Every link here is
    the daemon's own, in root's directories: none of them is the kernel user's to aim.
    """
    home.mkdir(mode=0o750)
    os.chown(home, 0, creds.gid)
    try:
        img = home / "img"
        if linked:
            img.mkdir(mode=0o750)
            os.chown(img, 0, creds.gid)
            for src in sorted(images.iterdir()):
                try:
                    os.link(src, img / src.name, follow_symlinks=True)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                        raise
                    shutil.copy2(src, img / src.name, follow_symlinks=True)
                    os.chown(img / src.name, 0, creds.gid)
        else:
            images.rename(img)
        work = home / "criu"
        work.mkdir(mode=0o700)
        os.chown(work, creds.uid, creds.gid)
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise
    return LazyServer(home)


RECORD = "server.json"


def start(criu: Criu, server: LazyServer, creds: Creds, kernel_id: str) -> None:
    """Start the lazy-pages server (it listens once this returns) and record it."""
    not_before = ticks_now()
    server.process = criu.lazy_pages(server.images, server.work, creds)
    pid = server.process.pid
    server.record = {"kernel": kernel_id, "uid": creds.uid, "not_before": not_before,
                     "server": [pid, start_time(pid)]}  # fmt: skip
    write_json(server.home / RECORD, server.record, durable=False)


def restored(server: LazyServer, pid: int, started: int | None) -> None:
    """Record the process the server feeds (a restored namespace init has a new PID)."""
    server.record["kernel_pid"] = [pid, started]
    write_json(server.home / RECORD, server.record, durable=False)


@dataclass(frozen=True)
class Leftover:
    """What a lazy restore the daemon died in left running, now killed."""

    kernel_id: str
    killed: tuple[tuple[int, int], ...]  # (pid, start time) of the kernel processes killed


def leftover(home: Path, pid_of: Callable[[str], int | None]) -> Leftover | None:
    """Kill the kernel and the server of a lazy restore a dead daemon left (see the module's
    docstring). ``pid_of(kernel_id)``: the kernel's PID as the registry has it, used when the
    restored PID was not recorded yet (it is the dumped PID for a plain kernel). A process is
    killed only if it is the kernel uid's and started after the server."""
    data = read_untrusted(home / RECORD, 4096)  # root's file in a root-owned directory
    try:
        rec = json.loads(data or b"")
        kernel_id, uid, not_before = str(rec["kernel"]), int(rec["uid"]), int(rec["not_before"])
        spid, sstarted = (int(x) for x in rec["server"])
        kpid = tuple(int(x) for x in rec["kernel_pid"]) if rec.get("kernel_pid") else None
    except (ValueError, TypeError, KeyError):
        return None
    candidates = [kpid[0]] if kpid else []
    registry_pid = pid_of(kernel_id)
    if registry_pid is not None:
        candidates.append(registry_pid)
    killed = []
    for pid in dict.fromkeys(candidates):
        started = start_time(pid)
        if started is not None and check_restored(pid, uid, not_before, any_parent=True) is None:
            kill_tree(pid, started)
            killed.append((pid, started))
    if killed:
        kill_tree(spid, sstarted)
    # Else the server's client is unknown (a namespaced kernel's new PID not recorded yet,
    # which the restore journal may adopt): the server is left to finish; it exits by itself
    # once the pages are in or its client is gone.
    return Leftover(kernel_id, tuple(killed))


def watch(criu: Criu, server: LazyServer, timeout: float, on_broken: Callable[[str], None]) -> None:
    """After a lazy restore: wait for the server in a thread; clean up; report a failure."""
    threading.Thread(
        target=_wait, args=(criu, server, timeout, on_broken), name="lazy-pages", daemon=True
    ).start()


def _wait(criu: Criu, server: LazyServer, timeout: float, on_broken: Callable[[str], None]) -> None:
    p = server.process
    assert p is not None
    try:
        try:
            rc = p.wait(timeout)
            why = None if rc == 0 else f"criu lazy-pages exited {rc}"
        except subprocess.TimeoutExpired:
            _kill(p)
            rc = p.wait()
            why = f"criu lazy-pages still running after {timeout:.0f}s; killed"
        criu.reaper.release(p)
        if why is not None:
            tail = _log_tail(server.work / "lazy-pages.log")
            log.critical("lazy restore: %s%s; killing the restored kernel", why, tail)
            try:
                on_broken(why)
            except Exception:  # pragma: no cover - the thread must still clean up
                log.exception("lazy restore: could not stop the kernel")
        server.ok = why is None
    finally:
        shutil.rmtree(server.home, ignore_errors=True)
        server.done.set()


def _kill(p: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)


def _log_tail(path: Path) -> str:
    from .criu import explain

    why = explain(path, "")
    return f" ({why})" if why else ""


@dataclass
class LazyServers:
    """The running servers, by kernel id: a snapshot waits for its kernel's."""

    _by_kernel: dict[str, LazyServer] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kernel_id: str, server: LazyServer) -> None:
        with self._lock:
            self._by_kernel[kernel_id] = server

    def wait(self, kernel_id: str, timeout: float) -> bool:
        """Wait until the kernel's lazy restore (if any) has all its pages; False on timeout."""
        with self._lock:
            server = self._by_kernel.get(kernel_id)
        if server is None:
            return True
        if not server.done.wait(timeout):
            return False
        with self._lock:
            if self._by_kernel.get(kernel_id) is server:
                del self._by_kernel[kernel_id]
        return True
