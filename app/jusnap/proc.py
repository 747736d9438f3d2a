"""Processes: spawning as another user, reaping, and telling a live PID from a reused one.

The daemon is a child subreaper: kernels restored by CRIU (whose parent, ``criu restore``,
exits) and orphaned grandchildren are re-parented to it, and every one of them must be reaped
quickly, because a restore needs the dumped PID to be free and a zombie holds it. The reaper
reaps any zombie child except processes whose exit status a caller is waiting for (CRIU runs),
which are spawned under the reaper's lock so the two can never race.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class Creds:
    """Who a child process runs as. ``groups`` is the exact supplementary group list."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    @classmethod
    def of_user(cls, uid: int, gid: int) -> Creds:
        import pwd

        try:
            name = pwd.getpwuid(uid).pw_name
            groups = tuple(sorted(set(os.getgrouplist(name, gid))))
        except KeyError:
            groups = (gid,)
        return cls(uid, gid, groups)

    def popen_kwargs(self) -> dict[str, object]:
        if os.geteuid() != 0:
            # Not root: we can only run as ourselves (development and tests as a user).
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}


def set_child_subreaper(on: bool = True) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except OSError:  # pragma: no cover - not Linux
        return False


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first); None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    return stat[stat.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """Kernel start time of ``pid`` in clock ticks since boot; None when it is gone."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def cpu_seconds(pid: int) -> float | None:
    """CPU time ``pid`` has used (all its threads, user and system); None when it is gone."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else None


def ticks_now() -> int:
    """Now, in the clock ticks since boot that ``start_time`` counts."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK"))


def uids(pid: int) -> tuple[int, ...] | None:
    """Real, effective, saved and filesystem uid of ``pid``; None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return tuple(int(v) for v in line.split()[1:5])
    except (OSError, ValueError):
        return None
    return None


def check_restored(pid: int, uid: int, not_before: int, any_parent: bool = False) -> str | None:
    """Why ``pid`` is not the tree a restore just brought back (None: it is).

    The restore gives the process its dumped PID, re-parents it to us (the subreaper) and
    runs it as the kernel's uid; it started after the restore began. A process of the
    kernel's user cannot fake all four, so no file it can write decides what the daemon
    adopts (and later signals).
    """
    started = start_time(pid)
    if started is None or state(pid) in ("Z", "X"):
        return f"no process {pid} after the restore"
    if started + 1 < not_before:
        return f"process {pid} is older than the restore"
    if uids(pid) != (uid, uid, uid, uid):
        return f"process {pid} does not run as uid {uid}"
    fields = _stat(pid)
    if fields is None:
        return f"no process {pid} after the restore"
    if int(fields[1]) != os.getpid() and not any_parent:
        return f"process {pid} is not a child of the daemon"
    return None


def state(pid: int) -> str | None:
    """One-letter process state (R, S, Z, ...) or None when there is no such process."""
    fields = _stat(pid)
    return fields[0] if fields else None


def is_alive(pid: int, started: int | None) -> bool:
    """The very process we launched is still running (not a zombie, not a reused PID)."""
    st = state(pid)
    if st is None or st in ("Z", "X"):
        return False
    return started is None or start_time(pid) == started


def children() -> set[int]:
    out: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            out.update(int(p) for p in (task / "children").read_text().split())
    return out


@dataclass
class Reaper:
    """Reaps zombie children in the background and remembers kernels' exit statuses."""

    interval: float = 0.1
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _exempt: set[int] = field(default_factory=set)
    _statuses: dict[int, int] = field(default_factory=dict)
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    on_exit: Callable[[int, int], None] | None = None

    def start(self) -> None:
        set_child_subreaper()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="jusnap-reaper", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop reaping, and stop adopting orphans nobody would reap any more (they go to
        PID 1 again): a process that hosted an engine lives on in tests and tools."""
        self._stop.set()
        set_child_subreaper(False)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.reap_now()
            except Exception:  # pragma: no cover - keep reaping whatever happens
                log.exception("reaper pass failed")

    def reap_now(self) -> None:
        with self._lock:
            for pid in children() - self._exempt:
                if state(pid) != "Z":
                    continue
                try:
                    got, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    continue
                if got:
                    self._statuses[got] = status
                    if self.on_exit:
                        self.on_exit(got, status)

    def exit_status(self, pid: int) -> int | None:
        return self._statuses.get(pid)

    def spawn(
        self, argv: Sequence[str], creds: Creds | None = None, **kwargs: object
    ) -> subprocess.Popen[bytes]:
        """Start a child whose exit status the caller will collect itself."""
        if creds is not None:
            kwargs.update(creds.popen_kwargs())
        with self._lock:
            p = subprocess.Popen(list(argv), **kwargs)  # type: ignore[call-overload]
            self._exempt.add(p.pid)
        return p

    def release(self, p: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._exempt.discard(p.pid)

    def run(
        self,
        argv: Sequence[str],
        creds: Creds | None,
        timeout: float,
        merge_stdout: bool = False,
        **kwargs: object,
    ) -> tuple[int, bytes]:
        """Run to completion in its own session; on timeout kill the whole session.

        Returns (returncode, stderr, with stdout first if ``merge_stdout``). A timeout returns
        -9 after the kill.
        """
        p = self.spawn(
            argv,
            creds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if merge_stdout else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if merge_stdout else subprocess.PIPE,
            start_new_session=True,
            **kwargs,
        )
        try:
            try:
                out, err = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                out, err = p.communicate()
                return -9, (out if merge_stdout else err) or b""
            return p.returncode, (out if merge_stdout else err) or b""
        finally:
            self.release(p)

    def wait_gone(self, pid: int, started: int | None, timeout: float) -> bool:
        """Wait until ``pid`` no longer exists (reaped by us or by whoever is its parent)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.reap_now()
            st = state(pid)
            if st is None or (started is not None and start_time(pid) != started):
                return True
            time.sleep(0.01)
        return False


def kill_tree(pid: int, started: int | None, sig: int = signal.SIGKILL) -> None:
    """Signal a kernel's whole process group, but only if ``pid`` is still our process."""
    current = start_time(pid)
    if current is None or (started is not None and current != started):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
