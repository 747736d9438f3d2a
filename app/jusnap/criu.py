"""The only module that runs CRIU.

Arguments are built as lists (never a shell line), every run has a timeout (``criu restore``
can hang on an internal BUG instead of exiting), and failures are turned into one readable
line taken from CRIU's own log, so users see "file ... has bad size" rather than "exit 1".

CRIU runs as the kernel's own uid in ``--unprivileged`` mode through a binary that carries
just the file capabilities it needs: a crafted image can then never restore as another user.
"""

from __future__ import annotations

import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import JusnapError, RestoreFailed, SnapshotFailed, StoreFull
from .proc import Creds, Reaper

DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"
LAZY_LOG = "lazy-pages.log"
STATS_DUMP = "stats-dump"
_STATS_MAGIC = 0x57093306

# CRIU log lines that explain a failure better than the last "Error" line does.
_HINTS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"No space left on device|ENOSPC"), "no space left on the snapshot store"),
    (re.compile(r"File (\S+) has bad size"), "file {0} changed size since the snapshot"),
    (re.compile(r"Can't fork for (\d+): File exists"), "PID {0} is in use by another process"),
    (
        re.compile(r"Can't dump ghost file (\S+) of (\d+) size"),
        "unlinked file {0} exceeds the ghost limit",
    ),
    (re.compile(r"Unexpected rt vDSO area bounds"), "this CRIU is too old for the running kernel"),
    (re.compile(r"Can't open (\S+img)"), "snapshot image {0} is missing"),
    (
        re.compile(r"(Unable to read|Corrupted|Unexpected EOF|magic mismatch|bad magic)", re.I),
        "snapshot image is damaged",
    ),
    (re.compile(r"Permission denied"), "permission denied"),
]


@dataclass(frozen=True)
class CriuResult:
    seconds: float
    pid: int | None = None


def explain(log_path: Path, fallback: str) -> str:
    """A one-line reason from a CRIU log."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return fallback
    for pattern, message in _HINTS:
        m = pattern.search(text)
        if m:
            return message.format(*m.groups())
    errors = [ln for ln in text.splitlines() if "Error (" in ln]
    if errors:
        line = errors[0]
        return line[line.index("):") + 2 :].strip() if "):" in line else line.strip()
    return fallback


@dataclass
class Criu:
    binary: str
    reaper: Reaper
    ghost_limit_bytes: int = 64 * 1024 * 1024
    file_locks: bool = True
    dump_timeout: float = 120.0
    restore_timeout: float = 120.0
    unprivileged: str = "auto"

    def _mode_flags(self, creds: Creds) -> list[str]:
        use = self.unprivileged == "true" or (self.unprivileged == "auto" and creds.uid != 0)
        return ["--unprivileged"] if use else []

    def _common(self) -> list[str]:
        return ["--file-locks"] if self.file_locks else []

    def dump(
        self,
        pid: int,
        images_dir: Path,
        creds: Creds,
        action_script: str | None = None,
        env: dict[str, str] | None = None,
    ) -> CriuResult:
        """Dump ``pid`` and its tree, leaving it running. Raises SnapshotFailed."""
        argv = [
            self.binary, "dump", "-t", str(pid), "-D", str(images_dir),
            "--leave-running", "--tcp-established", "--network-lock", "skip",
            "--ghost-limit", str(self.ghost_limit_bytes), "-o", DUMP_LOG,
            *self._mode_flags(creds), *self._common(),
        ]  # fmt: skip
        if action_script:
            argv += ["--action-script", action_script]
        t0 = time.monotonic()
        rc, err = self.reaper.run(argv, creds, self.dump_timeout, env=env)
        elapsed = time.monotonic() - t0
        if rc != 0:
            if rc == -9:
                raise SnapshotFailed(f"criu dump timed out after {self.dump_timeout:.0f}s")
            why = explain(images_dir / DUMP_LOG, _stderr_line(err) or f"criu dump exited {rc}")
            cls = StoreFull if "no space" in why else SnapshotFailed
            raise cls(f"snapshot failed: {why}")
        return CriuResult(elapsed)

    def restore(
        self, images_dir: Path, creds: Creds, pidfile: Path, lazy: bool = False
    ) -> CriuResult:
        """Restore detached; returns the restored root PID. Raises RestoreFailed.

        ``lazy``: pages come from a ``lazy_pages`` server already started on ``images_dir``.
        """
        argv = [
            self.binary, "restore", "-D", str(images_dir), "--restore-detached",
            "--tcp-close", "-o", RESTORE_LOG, "--pidfile", str(pidfile),
            *self._mode_flags(creds), *self._common(),
        ]  # fmt: skip
        if lazy:
            argv.append("--lazy-pages")
        t0 = time.monotonic()
        rc, err = self.reaper.run(argv, creds, self.restore_timeout)
        elapsed = time.monotonic() - t0
        if rc != 0:
            if rc == -9:
                raise RestoreFailed(f"criu restore timed out after {self.restore_timeout:.0f}s")
            why = explain(
                images_dir / RESTORE_LOG, _stderr_line(err) or f"criu restore exited {rc}"
            )
            raise RestoreFailed(f"restore failed: {why}")
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            raise RestoreFailed("restore failed: criu wrote no pid file") from None
        return CriuResult(elapsed, pid)

    def lazy_capable(self, creds: Creds) -> bool:
        """Whether CRIU can serve lazy pages for these credentials.

        CRIU 4.2.1 turns userfaultfd off in ``--unprivileged`` mode (``kerndat_uffd`` in
        criu/kerndat.c returns early), so ``criu lazy-pages`` exits at once there: lazy restore
        needs CRIU running privileged (a root kernel, or ``unprivileged: false``).
        """
        return not self._mode_flags(creds)

    def lazy_pages(self, images_dir: Path, creds: Creds) -> int:
        """Start ``criu lazy-pages`` as a daemon serving ``images_dir``; return its PID.

        It exits by itself once the restored process has all its pages; the images must stay
        until then.
        """
        pidfile = images_dir / "lazy-pages.pid"
        argv = [
            self.binary, "lazy-pages", "-D", str(images_dir), "-d", "--pidfile", str(pidfile),
            "-o", LAZY_LOG, *self._mode_flags(creds),
        ]  # fmt: skip
        rc, err = self.reaper.run(argv, creds, self.restore_timeout)
        if rc != 0:
            fallback = _stderr_line(err) or f"criu lazy-pages exited {rc}"
            why = explain(images_dir / LAZY_LOG, fallback)
            raise RestoreFailed(f"restore failed: lazy pages: {why}")
        try:
            return int(pidfile.read_text().strip())
        except (OSError, ValueError):
            raise RestoreFailed("restore failed: criu lazy-pages wrote no pid file") from None

    def check(self, creds: Creds | None = None) -> str:
        """``criu check`` as the kernel user; returns its verdict line ("Looks good.")."""
        argv = [self.binary, "check", *(self._mode_flags(creds) if creds else [])]
        rc, out = self.reaper.run(argv, creds, 60, merge_stdout=True)
        lines = [ln for ln in out.decode(errors="replace").splitlines() if ln and "Warn" not in ln]
        if rc != 0:
            raise JusnapError(f"criu check failed: {(lines or [str(rc)])[-1]}")
        return lines[-1] if lines else "Looks good."


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes) -> dict[int, int | bytes]:
    """Just enough protobuf to read CRIU's stats image (varints and nested messages)."""
    out: dict[int, int | bytes] = {}
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            out[num], i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            out[num] = buf[i : i + size]
            i += size
        else:
            break
    return out


def frozen_seconds(images_dir: Path) -> float | None:
    """How long CRIU kept the tree frozen, from its own ``stats-dump`` image."""
    try:
        data = (images_dir / STATS_DUMP).read_bytes()
        _, magic, size = struct.unpack_from("<III", data)
        if magic != _STATS_MAGIC:
            return None
        dump = _fields(data[12 : 12 + size]).get(1)
        if not isinstance(dump, bytes):
            return None
        frozen = _fields(dump).get(2)
        return frozen / 1e6 if isinstance(frozen, int) else None
    except (OSError, struct.error, IndexError):
        return None


def _stderr_line(err: bytes) -> str:
    lines = [ln.strip() for ln in err.decode(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln]
    return (errors or lines or [""])[-1][:300]
