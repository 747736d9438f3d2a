"""The only module that runs CRIU.

Arguments are built as lists (never a shell line), every run has a timeout (``criu restore``
can hang on an internal BUG instead of exiting), and failures are turned into one readable
line taken from CRIU's own log, so users see "file ... has bad size" rather than "exit 1".

Privileges: CRIU runs as the kernel's own uid in ``--unprivileged`` mode, from a binary with
no file capabilities (so the kernel's user, who can execute it, gains nothing by running it).
The root daemon gives each run just the capabilities it needs as *ambient* capabilities of a
child that switches to the kernel's uid and groups before it execs CRIU (``setpriv``). The
kernel's other processes cannot borrow them: the kernel refuses ptrace, /proc/PID/mem and the
like of a process holding capabilities its tracer lacks. CRIU restores the capability sets an
image names up to what it holds, so images are checked first (``criu_images.py``).

CRIU reads its logs, writes its pid file and runs in ``work_dir`` (``-W``), a directory the
kernel's uid owns and may tamper with: logs are read through ``untrusted.py`` and the pid file
is never believed (the engine checks the restored process itself).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .criu_images import stats_field
from .errors import JusnapError, RestoreFailed, SnapshotFailed, StoreFull
from .proc import Creds, Reaper
from .untrusted import read_untrusted

DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"
LAZY_LOG = "lazy-pages.log"
STATS_DUMP = "stats-dump"
LOG_LIMIT = 1024 * 1024  # the tail of a CRIU log worth reading
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"

# What CRIU needs in --unprivileged mode (criu/crtools.c, measured here): checkpoint_restore
# (set_tid, map_files), sys_ptrace (seize other processes of the uid), setpcap (restore the
# bounding set); a dump of established TCP connections (the kernel's ZeroMQ peers) also needs
# net_admin for TCP_REPAIR. A restore with --tcp-close does not, so it runs without it.
DUMP_CAPS = ("checkpoint_restore", "sys_ptrace", "setpcap", "net_admin")
RESTORE_CAPS = ("checkpoint_restore", "sys_ptrace", "setpcap")
# A kernel in its own PID + mount namespace (kernels/namespace.py) dumps with DUMP_CAPS (its
# minimal tree holds no tmpfs CRIU would have to enter), its /dev declared external: it is the
# host's devtmpfs, which CRIU could not mount a second time. Restoring it clones a new PID and
# mount namespace and builds the tree: CAP_SYS_ADMIN + CAP_SYS_CHROOT on top (measured:
# "Can't fork for 1: Operation not permitted", "Can't restore mntns back"). What keeps these
# from the kernel's user is in docs/security.md.
NS_RESTORE_CAPS = (*RESTORE_CAPS, "sys_admin", "sys_chroot")
NS_DUMP_ARGS = ("--external", "mnt[/dev]:dev")
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
# Run by root in a private mount namespace (``unshare --mount``) around a namespaced restore:
# CRIU gets a /tmp of its own (it mkdtemp()s and bind-mounts /tmp/cr-tmpfs.XXXXXX there while
# holding CAP_SYS_ADMIN: never in a /tmp the kernel's user can write), a NON-recursive bind of /
# as --root (a recursive one would hand the restored kernel /sys, /dev/shm, ... and its next
# snapshot would not restore), and its pid file there; once CRIU has exited, the restored
# tree's outer PID is printed on stderr's last line. Fixed text: arguments arrive as "$@".
_NS_RESTORE_SH = (
    "mount -t tmpfs -o mode=1777,size=16m jusnap-criu /tmp && mkdir /tmp/root && "
    "mount --bind / /tmp/root && mount --make-private /tmp/root || exit 125; "
    '"$@"; rc=$?; if [ $rc -eq 0 ]; then printf "\\n%s%s\\n" "$PID_MARK" '
    '"$(cat /tmp/restored.pid)" >&2; fi; exit $rc'
)
NS_ROOT = "/tmp/root"
NS_PIDFILE = "/tmp/restored.pid"
PID_MARK = "jusnap-restored-pid="

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
    """A one-line reason from a CRIU log (a file the kernel's user can write)."""
    data = read_untrusted(log_path, LOG_LIMIT, tail=True)
    if data is None:
        return fallback
    text = data.decode(errors="replace")
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

    def _run(
        self,
        argv: list[str],
        creds: Creds | None,
        caps: Sequence[str],
        timeout: float,
        **kwargs: object,
    ) -> tuple[int, bytes]:
        """Run CRIU as ``creds`` holding exactly ``caps`` (ambient), or as root for root."""
        if creds is None or creds.uid == 0 or os.geteuid() != 0:
            return self.reaper.run(argv, None, timeout, **kwargs)  # type: ignore[arg-type]
        return self.reaper.run(with_capabilities(argv, creds, caps), None, timeout, **kwargs)  # type: ignore[arg-type]

    def dump(
        self,
        pid: int,
        images_dir: Path,
        work_dir: Path,
        creds: Creds,
        action_script: str | None = None,
        env: dict[str, str] | None = None,
        namespaced: bool = False,
    ) -> CriuResult:
        """Dump ``pid`` and its tree, leaving it running. Raises SnapshotFailed.

        ``--skip-in-flight``: a client connecting at the instant of the freeze (Jupyter, the
        daemon's own watchers) has a connection the kernel has not accepted yet; the running
        kernel accepts it as usual, and a restored copy's clients reconnect anyway.
        """
        argv = [
            self.binary, "dump", "-t", str(pid), "-D", str(images_dir), "-W", str(work_dir),
            "--leave-running", "--tcp-established", "--skip-in-flight", "--network-lock", "skip",
            "--ghost-limit", str(self.ghost_limit_bytes), "-o", DUMP_LOG,
            *self._mode_flags(creds), *self._common(),
        ]  # fmt: skip
        if action_script:
            argv += ["--action-script", action_script]
        if namespaced:
            argv += NS_DUMP_ARGS
        t0 = time.monotonic()
        rc, err = self._run(argv, creds, DUMP_CAPS, self.dump_timeout, env=env)
        elapsed = time.monotonic() - t0
        if rc != 0:
            if rc == -9:
                raise SnapshotFailed(f"criu dump timed out after {self.dump_timeout:.0f}s")
            why = explain(work_dir / DUMP_LOG, _stderr_line(err) or f"criu dump exited {rc}")
            cls = StoreFull if "no space" in why else SnapshotFailed
            raise cls(f"snapshot failed: {why}")
        return CriuResult(elapsed)

    def restore(
        self,
        images_dir: Path,
        work_dir: Path,
        creds: Creds,
        lazy: bool = False,
        inherit: Sequence[tuple[int, str]] = (),
        namespaced: bool = False,
    ) -> CriuResult:
        """Restore detached. Raises RestoreFailed.

        A plain tree keeps its dumped PIDs, and CRIU's pid file in ``work_dir`` is not read
        back, since the kernel's user could have rewritten it (the engine checks the process
        itself). ``namespaced``: the images hold a kernel in its own PID + mount namespace
        (checked to be the launcher's tree); it comes back as PID 1 of a new namespace with a
        new outer PID, returned in ``CriuResult.pid`` (read from a pid file in CRIU's private
        /tmp, which no process of the kernel's user can reach; the engine checks it too).
        ``lazy``: pages come from a ``lazy_pages`` server already started on ``images_dir``.
        ``inherit``: (descriptor, file name as CRIU records it) pairs: the restored process
        gets the daemon's descriptor instead of CRIU opening (and size-checking) that file.
        """
        argv = [
            self.binary, "restore", "-D", str(images_dir), "-W", str(work_dir),
            "--restore-detached", "--tcp-close", "-o", RESTORE_LOG,
            *self._mode_flags(creds), *self._common(),
        ]  # fmt: skip
        if lazy:
            argv.append("--lazy-pages")
        for fd, key in inherit:
            argv += ["--inherit-fd", f"fd[{fd}]:{key}"]
        fds = tuple(fd for fd, _ in inherit)
        caps = RESTORE_CAPS
        if namespaced:
            argv += [f"--root={NS_ROOT}", "--external", "mnt[dev]:/dev", "--pidfile", NS_PIDFILE]
            caps = NS_RESTORE_CAPS
        t0 = time.monotonic()
        if namespaced and os.geteuid() == 0:
            inner = with_capabilities(argv, creds, caps) if creds.uid != 0 else argv
            wrapped = [UNSHARE, "--mount", "--propagation", "private", "--", "sh", "-c",
                       _NS_RESTORE_SH, "jusnap-restore", *inner]  # fmt: skip
            rc, err = self.reaper.run(
                wrapped, None, self.restore_timeout, pass_fds=fds, env=_ns_env()
            )
        else:
            rc, err = self._run(argv, creds, caps, self.restore_timeout, pass_fds=fds)
        elapsed = time.monotonic() - t0
        if rc == 125:
            raise RestoreFailed("restore failed: cannot set up CRIU's private mount namespace")
        if rc != 0:
            if rc == -9:
                raise RestoreFailed(f"criu restore timed out after {self.restore_timeout:.0f}s")
            why = explain(work_dir / RESTORE_LOG, _stderr_line(err) or f"criu restore exited {rc}")
            raise RestoreFailed(f"restore failed: {why}")
        if namespaced:
            return CriuResult(elapsed, _marked_pid(err))
        return CriuResult(elapsed)

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
        rc, err = self._run(argv, creds, RESTORE_CAPS, self.restore_timeout)
        if rc != 0:
            fallback = _stderr_line(err) or f"criu lazy-pages exited {rc}"
            why = explain(images_dir / LAZY_LOG, fallback)
            raise RestoreFailed(f"restore failed: lazy pages: {why}")
        data = read_untrusted(pidfile, 32)  # privileged mode only: a root-owned directory
        try:
            return int((data or b"").strip())
        except ValueError:
            raise RestoreFailed("restore failed: criu lazy-pages wrote no pid file") from None

    def check(self, creds: Creds | None = None) -> str:
        """``criu check`` as the kernel user; returns its verdict line ("Looks good.")."""
        argv = [self.binary, "check", *(self._mode_flags(creds) if creds else [])]
        rc, out = self._run(argv, creds, DUMP_CAPS, 60, merge_stdout=True)
        lines = [ln for ln in out.decode(errors="replace").splitlines() if ln and "Warn" not in ln]
        if rc != 0:
            raise JusnapError(f"criu check failed: {(lines or [str(rc)])[-1]}")
        return lines[-1] if lines else "Looks good."


def frozen_seconds(images_dir: Path) -> float | None:
    """How long CRIU kept the tree frozen, from its own ``stats-dump`` image."""
    data = read_untrusted(images_dir / STATS_DUMP, 64 * 1024)
    frozen = stats_field(data, 1, 2) if data else None  # dump_stats_entry.frozen_time (us)
    return frozen / 1e6 if frozen is not None else None


def with_capabilities(argv: Sequence[str], creds: Creds, caps: Sequence[str]) -> list[str]:
    """``argv`` run as ``creds`` holding ``caps`` as ambient capabilities, via setpriv.

    setpriv keeps the capabilities across the uid change and raises them into the inheritable
    and ambient sets, so that the capability-less CRIU binary gets them at exec.
    """
    wanted = ",".join(["-all", *(f"+{c}" for c in caps)])
    groups = (
        [f"--groups={','.join(str(g) for g in creds.groups)}"]
        if creds.groups
        else ["--clear-groups"]
    )
    return [
        SETPRIV, f"--reuid={creds.uid}", f"--regid={creds.gid}", *groups,
        f"--inh-caps={wanted}", f"--ambient-caps={wanted}", "--", *argv,
    ]  # fmt: skip


def _ns_env() -> dict[str, str]:
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "PID_MARK": PID_MARK}  # fmt: skip


def _marked_pid(err: bytes) -> int | None:
    """The restored tree's outer PID from the wrapper's last stderr line (printed by root
    after CRIU exited; None when there is none)."""
    lines = [ln.strip() for ln in err.decode(errors="replace").splitlines() if ln.strip()]
    if lines and lines[-1].startswith(PID_MARK):
        value = lines[-1].removeprefix(PID_MARK)
        if value.isdigit():
            return int(value)
    return None


def _stderr_line(err: bytes) -> str:
    lines = [ln.strip() for ln in err.decode(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln]
    return (errors or lines or [""])[-1][:300]
