"""Each kernel's stdout and stderr, kept in a bounded file that survives dumps and restores.

Why a plain file, and why CRIU does not trip over it: CRIU records the size of every regular
file a process holds and refuses a restore when it changed ("File … has bad size"), and a log
grows after every dump. A pipe to the daemon is no better: it dies with the daemon, and CRIU
cannot restore its other end. So the kernel writes to an ``O_APPEND`` file and each restore
hands CRIU the daemon's own descriptor of that same file (``--inherit-fd
fd[N]:<path as CRIU records it>``); CRIU then uses that descriptor instead of opening the path,
and skips the size check, which only applies to files it opens itself (criu/files-reg.c,
``open_path``: ``inherited_fd`` first).

Where it lives: ``<state_dir>/logs/<kernel id>.log``, owned by the kernel's uid (its disk
quota, its own output), mode 0600, in a directory only root can list or change (0711: CRIU,
as the kernel's uid, must be able to ``stat`` the path while dumping). The kernel's user can
therefore neither replace the file by a link nor read another kernel's log; the daemon reads
it through :mod:`..untrusted` anyway (no links, regular files only, size-capped), since its
contents are whatever the kernel wrote.

Bounded: when the file passes the limit, its newest ``limit`` bytes become ``<id>.log.1`` and
the file is truncated (``O_APPEND`` writers continue at the new end), so at most twice the
limit plus what the kernel writes between two checks (0.5 s) stays on disk. Lines written
between the copy and the truncation of a rotation are lost, as with logrotate's copytruncate.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from ..fsutil import write_all
from ..untrusted import read_untrusted

log = logging.getLogger(__name__)

CHECK_EVERY = 0.5  # seconds between two size checks of every kernel's log


class KernelLogs:
    """Where each kernel's output goes, and the daemon's view of it."""

    def __init__(self, state_dir: Path, limit: int) -> None:
        self.dir = state_dir / "logs"
        self.limit = max(4096, limit)
        self._lock = threading.Lock()

    def path(self, kernel_id: str) -> Path:
        return self.dir / f"{kernel_id}.log"

    def _old(self, kernel_id: str) -> Path:
        return self.dir / f"{kernel_id}.log.1"

    def criu_key(self, kernel_id: str) -> str:
        """The name CRIU gives the file in its images (absolute path without the first /)."""
        return str(self.path(kernel_id)).lstrip("/")

    def _ensure_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(self.dir, 0, 0)
        self.dir.chmod(0o711)

    def open_for_kernel(self, kernel_id: str, uid: int, gid: int) -> int:
        """An ``O_APPEND`` descriptor of the kernel's log (created if missing), for its stdio
        or for CRIU's ``--inherit-fd``. The caller closes it."""
        self._ensure_dir()
        fd = os.open(
            self.path(kernel_id),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            0o600,
        )
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{self.path(kernel_id)} is not a regular file")
            if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (uid, gid):
                os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o600)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def note(self, kernel_id: str, text: str) -> None:
        """Append one line of the daemon's own (a start, a restore) so that the log reads as
        the kernel's life; never fails the operation it describes."""
        line = f"--- jusnap {time.strftime('%Y-%m-%d %H:%M:%S')}: {text} ---\n".encode()
        try:
            fd = os.open(
                self.path(kernel_id),
                os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            )
        except OSError:
            return
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                write_all(fd, line)
        except OSError as exc:
            log.warning("kernel %s: cannot note %r in its log: %s", kernel_id, text, exc)
        finally:
            os.close(fd)

    def read(self, kernel_id: str, limit: int) -> tuple[bytes, bool]:
        """The newest ``limit`` bytes of the kernel's output, and whether older output was
        left out (beyond ``limit``, or dropped by a rotation, which keeps only the newest)."""
        limit = max(0, limit)
        new = read_untrusted(self.path(kernel_id), limit + 1, tail=True) or b""
        rotated = self._old(kernel_id).exists()
        if len(new) > limit:
            return new[len(new) - limit :], True
        old = read_untrusted(self._old(kernel_id), limit - len(new) + 1, tail=True) or b""
        data = old + new
        if len(data) > limit:
            return data[len(data) - limit :], True
        return data, rotated

    def trim(self, kernel_id: str) -> bool:
        """Rotate the log once it passes the limit; True when it did."""
        with self._lock:
            try:
                fd = os.open(
                    self.path(kernel_id),
                    os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                )
            except OSError:
                return False
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_size <= self.limit:
                    return False
                tail = os.pread(fd, self.limit, st.st_size - self.limit)
                self._write_old(kernel_id, tail, st.st_uid, st.st_gid)
                os.ftruncate(fd, 0)
                return True
            except OSError as exc:
                log.warning("kernel %s: cannot trim its log: %s", kernel_id, exc)
                return False
            finally:
                os.close(fd)

    def _write_old(self, kernel_id: str, data: bytes, uid: int, gid: int) -> None:
        old = self._old(kernel_id)
        tmp = old.with_name(f".{old.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            if os.geteuid() == 0:
                os.fchown(fd, uid, gid)
            write_all(fd, data)
        finally:
            os.close(fd)
        tmp.replace(old)

    def remove(self, kernel_id: str) -> None:
        for p in (self.path(kernel_id), self._old(kernel_id)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


class LogKeeper:
    """One thread keeping every running kernel's log under its limit."""

    def __init__(self, logs: KernelLogs, running: Callable[[], Iterable[str]]) -> None:
        self.logs = logs
        self.running = running
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jusnap-logs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while not self._stop.wait(CHECK_EVERY):
            try:
                for kernel_id in self.running():
                    self.logs.trim(kernel_id)
            except Exception:
                log.exception("trimming kernels' logs failed; trying again")
