"""The snapshot engine: create, list, restore-with-rollback and delete, one kernel at a time.

The rules that shape this module:

* A failed snapshot never harms the running kernel: CRIU dumps with ``--leave-running`` into a
  scratch directory, and nothing reaches the store or the registry unless the dump succeeded.
* A failed restore never loses the user's state: before the running kernel is touched it is
  snapshotted (``pre-restore``) and the target snapshot is verified; if anything fails after
  the kernel was stopped, the pre-restore snapshot is brought back.
* A restore waits for nothing it does not need (issue 12): the target is staged while the
  pre-restore dump runs, the pre-restore copy is made durable as plain images in the hot tier
  (``store/hot.py``, fsynced, checked) and committed into the store in the background after
  the restore answered; a rollback restores from those images directly. Snapshots restored
  from the hot tier skip rebuilding their pages from the store; their images are verified
  while the old kernel stops, and CRIU starts only once both are done (damage found after
  the stop is rolled back like a failed CRIU restore).
* One operation per kernel at a time (others get :class:`Busy` at once); different kernels
  proceed in parallel.

Kernels themselves (lookups, launch, restart, live state) belong to
:class:`~jusnap.kernels.service.KernelService`, which the engine holds as ``engine.kernels``;
whether an automatic snapshot runs is decided by :mod:`jusnap.autosnap`. The API and the CLI
are thin layers over both. CRIU and the store can be handed in (tests, benchmarks).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import autosnap, failpoints, heap, lazyrestore
from . import criu as criu_mod
from .autosnap import Skipped
from .config import Settings
from .criu import Criu, CriuResult
from .criu_images import (
    EXTERNAL_FILE,
    Identity,
    ImageCheck,
    external_files,
    launcher_tree,
    needs_bytes,
)
from .errors import (
    Busy,
    Forbidden,
    ImageRefused,
    InvalidRequest,
    JusnapError,
    KernelNotFound,
    KernelNotRunning,
    QuotaExceeded,
    Refused,
    RestoreFailed,
    SnapshotFailed,
    SnapshotNotFound,
)
from .fork import forget_unfinished
from .fsutil import readable_dir
from .hooks import HookSet
from .ids import check_snapshot_id, new_snapshot_id
from .kernels import namespace
from .kernels.channels import (
    established_peers,
    execute_silently,
    handshake,
    wait_for_peers,
)
from .kernels.fixup import apply_fixup
from .kernels.locks import USER_WAIT, OperationLocks
from .kernels.service import ADMIN, KernelService, check_owner
from .kernels.supervisor import Supervisor
from .ports import move_ports, rename_file
from .proc import Reaper, check_restored, cpu_seconds, kill_tree, start_time, ticks_now
from .registry import Kernel, Registry, RestoreJournal, Snapshot
from .store.hot import EarlyWriteback, HotEntry, HotTier
from .store.local import LocalStore
from .store.service import StoreService
from .trailing import BUSY_RETRY, TrailingSnapshots

log = logging.getLogger(__name__)

TRIGGERS = ("manual", "auto", "pre-restore")
HISTORY_NAME = "history.sqlite"
# SQLite's rollback journal beside it, while a write is under way (see ACTION_SCRIPT).
JOURNAL_NAME = HISTORY_NAME + "-journal"
HISTORY_FILES = frozenset({HISTORY_NAME, JOURNAL_NAME})
MAX_LABEL = 200
# CPU time an idle kernel may use after a snapshot and still hold its state (answering
# kernel_info and heartbeats); more means something ran (a thread in the background).
HELD_CPU_SLACK = 0.1
# How long an automatic snapshot asked for at the end of a cell waits for that cell's end.
CELL_END_WAIT = 2.0
# CRIU's words when the kernel had a connection to the daemon open at the freeze.
_TRANSIENT_DUMP_FAILURES = ("External socket is used", "Non-empty write queue on an in-flight")

ACTION_SCRIPT = """#!/bin/sh
# Run by CRIU as the kernel's user. At post-dump the kernel is still frozen, so the copy of its
# history database matches exactly what the restored process will expect on disk: with its
# rollback journal when the freeze caught SQLite in a write (the process holds it open, and
# SQLite deletes it at the commit: without the copy the snapshot could never be restored).
# The copies run without the capabilities the daemon lent CRIU.
[ "$CRTOOLS_SCRIPT_ACTION" = "post-dump" ] || exit 0
[ -n "$JUSNAP_HISTORY_SRC" ] || exit 0
exec setpriv --inh-caps=-all --ambient-caps=-all -- sh -c \\
    'cp -- "$1" "$2" && { [ ! -e "$1-journal" ] || cp -- "$1-journal" "$2-journal"; }' \\
    sh "$JUSNAP_HISTORY_SRC" "$JUSNAP_HISTORY_DST"
"""


@dataclass(frozen=True)
class RestoreResult:
    snapshot: Snapshot
    kernel: Kernel
    pre_restore: Snapshot | None
    seconds: float
    criu_seconds: float
    handshake_seconds: float

    def public(self) -> dict[str, Any]:
        return {
            "status": "restored",
            "snapshot": self.snapshot.public(),
            "kernel": self.kernel.public(),
            "pre_restore": self.pre_restore.public() if self.pre_restore else None,
            "seconds": round(self.seconds, 4),
            "criu_seconds": round(self.criu_seconds, 4),
            "handshake_seconds": round(self.handshake_seconds, 4),
        }


class Engine:
    def __init__(
        self,
        settings: Settings,
        hooks: HookSet | None = None,
        criu: Criu | None = None,
        store: LocalStore | None = None,
    ) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir
        self.hooks = hooks or HookSet()
        self.reaper = criu.reaper if criu is not None else Reaper()
        st = settings.jusnap.store
        self.store = store or LocalStore(
            self.state_dir / "snapshots", level=st.compression_level, threads=st.threads
        )
        self.storage = StoreService(self.store, st)  # retention, gc, usage, migration
        c = settings.jusnap.criu
        self.criu = criu or Criu(
            binary=c.binary,
            reaper=self.reaper,
            ghost_limit_bytes=settings.ghost_limit_bytes,
            file_locks=c.file_locks,
            dump_timeout=c.dump_timeout,
            restore_timeout=c.restore_timeout,
            unprivileged=c.unprivileged,
            lazy_unprivileged=st.lazy_unprivileged,
        )
        self.registry: Registry
        self.kernels: KernelService
        self.locks = OperationLocks()
        self.trailing = TrailingSnapshots(self._trailing_fire)
        self.work_dir = self.state_dir / "work"
        self.action_script = self.state_dir / "bin" / "criu-action"
        self.hot = HotTier(self.state_dir / "hot")
        # Snapshots being committed in the background: id -> (thread, kernel id, owner uid).
        self._commits: dict[str, tuple[threading.Thread, str, int]] = {}
        self._commits_lock = threading.Lock()
        self._lazy = lazyrestore.LazyServers()  # lazy restores still receiving pages

    # ---- life cycle ----------------------------------------------------------------------
    def start(self) -> Engine:
        sd = self.state_dir
        sd.mkdir(parents=True, exist_ok=True)
        sd.chmod(0o711)
        for sub, mode in (("work", 0o711), ("kernels", 0o711), ("bin", 0o755)):
            (sd / sub).mkdir(exist_ok=True)
            (sd / sub).chmod(mode)
        self.store.ensure()
        self.hot.ensure()
        self._install_action_script()
        self.registry = Registry(sd / "jusnap.db")
        (sd / "jusnap.db").chmod(0o600)
        self.reaper.start()
        self.kernels = KernelService(self.settings, self.registry, self.reaper, self.locks)
        self._recover()
        self.kernels.adopt_all()
        forget_unfinished(self)
        for journal in self.registry.restores():
            self._resume_restore(journal)
        return self

    def _resume_restore(self, j: RestoreJournal) -> None:
        """A restore the daemon died in (its journal row survived): keep what it restored if
        that runs, else bring back the state from before it; say so in the kernel's notice."""
        try:
            k = self.registry.get_kernel(j.kernel_id)
            target = self.registry.get_snapshot(j.snapshot_id)
            if k is None or target is None:
                return
            restored = self.find_restored(k, target, j.started_ticks)
            if restored is None and self.supervisor.alive(k):
                note = "a restore was interrupted before it changed anything"
            elif restored is not None:
                # CRIU had brought the snapshot back: adopt it (its clients reconnect alone).
                self.hooks.after_restore(restored, target.hooks)
                k.pid, k.started, k.status = restored, start_time(restored), "running"
                k.execution_count = target.execution_count
                self.registry.put_kernel(k)
                self.kernels.watch(k)
                note = f"the daemon restarted during a restore; snapshot {target.id} was restored"
            elif pre := self.registry.get_snapshot(j.pre_restore_id or ""):
                self.registry.end_restore(k.id)
                # The stopped kernel's zombie went to PID 1, which may reap it slowly (a
                # namespaced one comes back at a new PID: nothing to wait for).
                self.reaper.wait_gone(pre.pid, None, 10)
                try:
                    self.restore(j.pre_restore_id, into=k.id)
                    note = (
                        "the daemon restarted during a restore; the state from before it"
                        f" (snapshot {j.pre_restore_id}) was brought back"
                    )
                except JusnapError as exc:
                    note = (
                        "the daemon restarted during a restore and could not bring back the"
                        f" state from before it (snapshot {j.pre_restore_id}): {exc.message}"
                    )
            else:
                note = "the daemon restarted during a restore; the kernel is stopped"
            log.warning("kernel %s: %s", k.id, note)
            k = self.registry.get_kernel(k.id) or k
            k.notice = note
            self.registry.put_kernel(k)
        except Exception:
            log.exception("finishing the interrupted restore of kernel %s failed", j.kernel_id)
        finally:
            self.registry.end_restore(j.kernel_id)

    def find_restored(self, k: Kernel, target: Snapshot, not_before: int) -> int | None:
        """The process an interrupted restore of ``target`` into ``k`` left running, if any.

        A plain snapshot comes back at its dumped PID. A namespaced one comes back as PID 1 of
        a new PID namespace, at a PID nobody wrote down before the daemon died: the one
        process of the kernel's uid, in our user namespace, PID 1 one level down, started
        after the restore began, listening on this kernel's shell port (a restore keeps the
        kernel's ports), that is no other kernel's (the kernel's user cannot make such a
        process: a PID namespace owned by our user namespace needs CAP_SYS_ADMIN). Its
        parent is whoever adopted it when the daemon died.
        """
        shell_port = int(k.connection["shell_port"])
        if check_restored(
            target.pid, k.run_uid, not_before, any_parent=True
        ) is None and namespace.listens_on(target.pid, shell_port):
            return target.pid
        others = {o.pid for o in self.registry.kernels() if o.id != k.id and o.pid}
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in others:
                continue
            pid = int(entry.name)
            if (
                namespace.is_namespace_init(pid)
                and namespace.same_user_ns(pid)
                and check_restored(pid, k.run_uid, not_before, any_parent=True) is None
                and namespace.listens_on(pid, shell_port)
            ):
                found.append(pid)
        if k.pid in found:
            return k.pid  # recorded before the daemon died
        if len(found) > 1:
            log.error("kernel %s: %d candidate restored processes %s; adopting none",
                      k.id, len(found), found)  # fmt: skip
            return None
        return found[0] if found else None

    @property
    def supervisor(self) -> Supervisor:
        return self.kernels.supervisor

    def close(self) -> None:
        with self._commits_lock:
            commits = [t for t, _k, _o in self._commits.values()]
        for t in commits:  # an unfinished one is committed at the next start
            t.join(timeout=60)
        self.trailing.close()
        self.kernels.close()
        self.reaper.stop()

    def _install_action_script(self) -> None:
        tmp = self.action_script.with_suffix(".tmp")
        tmp.write_text(ACTION_SCRIPT)
        tmp.chmod(0o755)
        tmp.replace(self.action_script)

    def _recover(self) -> None:
        """Undo whatever a crash left half done."""
        for entry in self.work_dir.iterdir():
            if entry.name.endswith("-lazy"):
                self._lazy_leftover(entry)
            shutil.rmtree(entry, ignore_errors=True)
        known = self.registry.all_snapshot_ids()
        removed = self.store.recover(known)
        if removed:
            log.warning("removed %d incomplete snapshot(s) left by a crash", len(removed))
        for entry in self.hot.recover(known):
            # A restore's safety copy the daemon died before storing: store it now (before
            # any interrupted restore is resumed, which may need it).
            log.warning("storing the pre-restore snapshot %s left by a crash", entry.id)
            self._commit_hot(entry, register=True)
        known = self.registry.all_snapshot_ids()
        for sid in known:
            entry = self.hot.get(sid)
            if entry is not None and entry.pending:
                continue  # restorable from its hot entry; stored at a later start
            if not self.store.exists(sid):
                log.warning("snapshot %s has no images on disk; forgetting it", sid)
                self.registry.delete_snapshot(sid)
        self.storage.start(self.registry)  # migrates an older store layout

    @contextlib.contextmanager
    def _scratch(self, trim: bool = True) -> Iterator[Path]:
        """A directory for one operation, owned by root: the kernel's user can enter it but
        never rename, replace or add anything in it; what CRIU may write goes in
        :meth:`_user_dir` subdirectories. ``trim``: image bytes pass through the daemon's
        memory (the heap is trimmed after, ~10 ms)."""
        path = self.work_dir / new_snapshot_id()
        path.mkdir(mode=0o711)
        path.chmod(0o711)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            if trim:
                heap.give_back()  # what the images' bytes took while they passed through

    @staticmethod
    def _user_dir(path: Path, uid: int, gid: int) -> Path:
        path.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.chown(path, uid, gid)
        return path

    def _identity(self, k: Kernel) -> Identity:
        creds = self.supervisor.creds(k)
        return Identity(k.run_uid, k.run_gid, frozenset(creds.groups) | {k.run_gid})

    # ---- snapshots ---------------------------------------------------------------------------
    def snapshot(
        self,
        kernel_id: str,
        owner_uid: int | None = ADMIN,
        trigger: str = "manual",
        label: str | None = None,
        execution_count: int | None = None,
    ) -> Snapshot | Skipped:
        if trigger not in ("manual", "auto"):
            raise InvalidRequest("trigger must be manual or auto")
        label = _check_label(label)
        k = self.kernels.get(kernel_id, owner_uid)
        if trigger == "auto":
            skipped = self._auto_skipped(k)
            if skipped is not None:
                return self._pend(skipped)
            if execution_count is not None:
                # Asked from the cell's post_run_cell hook, before the kernel has answered
                # the cell: dumped at once, the cell often still counted as running (under
                # load, 1 run in 3 here), and the snapshot was listed without its number, the
                # numbered one a cooldown and a commit later (80 s once at 1.5 GB).
                self.kernels.cell_ended(k.id, execution_count, CELL_END_WAIT)
        try:
            snap = self._snapshot_retrying(k, trigger, label, execution_count)
        except Busy:
            if trigger == "auto":
                return self._pend(Skipped(k.id, "another operation is running", 0.0))
            raise
        except JusnapError as exc:
            if trigger == "auto":
                # Nobody waits for an automatic snapshot: keep the failure where the notebook
                # (the kernel's view, the next automatic request) will show it.
                why = exc.message.removeprefix("snapshot failed: ")
                self.kernels.live(k.id)["auto_error"] = {"at": time.time(), "message": why}
            raise
        return self._kept(k, snap)

    def _kept(self, k: Kernel, snap: Snapshot) -> Snapshot:
        """Retention and the owner's quota after a snapshot; the automatic ones' error state."""
        auto = snap.trigger == "auto"
        try:
            if snap.id not in self._pending_ids():
                self._retain(snap)  # else after it is stored (retention by size reads the store)
        except QuotaExceeded as exc:
            if auto:
                self.kernels.live(k.id)["auto_error"] = {"at": time.time(), "message": exc.message}
            raise
        if auto:
            self.kernels.live(k.id).pop("auto_error", None)
        return snap

    def final_snapshot(self, kernel_id: str, owner_uid: int | None = ADMIN) -> Snapshot | Skipped:
        """The last automatic snapshot of a kernel whose server is stopping (culled by
        JupyterHub, stopped by its user): what the user resumes from when they come back.

        Unlike a cell's automatic snapshot it waits for a running operation (the last cell's
        snapshot) and ignores the cooldown; it is skipped when automatic snapshots are off for
        the kernel, nothing ran in it, or nothing ran since its newest snapshot (that one
        already has the state).
        """
        k = self.kernels.get(kernel_id, owner_uid)
        with self.locks.exclusive(k.id, "snapshot", wait=USER_WAIT):
            skipped = self._final_skipped(k)
            if skipped is not None:
                return skipped
            try:
                snap = self._snapshot_locked(k, "auto", None)
            except JusnapError as exc:
                why = exc.message.removeprefix("snapshot failed: ")
                self.kernels.live(k.id)["auto_error"] = {"at": time.time(), "message": why}
                raise
        return self._kept(k, snap)

    def shutdown(self, kernel_id: str, owner_uid: int | None = ADMIN) -> None:
        """Stop a kernel. With automatic snapshots on, its last state is saved first when no
        snapshot has it yet: a headless run (papermill) shuts its kernel down right after
        its last cell, before that cell's own snapshot could run, and a notebook may be
        closed the same instant."""
        self.trailing.cancel(kernel_id)
        try:
            self.final_snapshot(kernel_id, owner_uid)
        except (KernelNotFound, Forbidden):
            raise
        except JusnapError as exc:  # recorded on the kernel; the shutdown goes on
            log.warning("kernel %s: no final snapshot before its shutdown: %s", kernel_id, exc)
        self.kernels.shutdown(kernel_id, owner_uid)

    def _final_skipped(self, k: Kernel) -> Skipped | None:
        skipped = self._auto_skipped(k, cooldown=False)
        if skipped is not None:
            return skipped
        if not self.supervisor.alive(k):
            return Skipped(k.id, "the kernel is not running", 0.0)
        count = self.kernels.live(k.id).get("execution_count", k.execution_count)
        if not count:  # a fresh kernel: its snapshot would only bury the notebook's last state
            return Skipped(k.id, "nothing ran in this kernel", 0.0)
        if self._state_held_by(k) is not None:
            return Skipped(k.id, "nothing ran since the newest snapshot", 0.0)
        return None

    def _state_held_by(self, k: Kernel) -> Snapshot | None:
        """The kernel's newest snapshot when it holds the kernel's current state exactly (None:
        not sure), which then needs no dump: the final snapshot is skipped, and a restore takes
        it as its safety copy.

        Its dump found the kernel idle (no cell, request or comm message at any moment of it,
        see :meth:`_dump`), it was taken of this very process (not before a restart, restore or
        a daemon restart: those forget ``state_of``), and since then the kernel ran nothing: the
        same execution count, idle, no request on IOPub but read-only ones, and hardly any CPU
        time used (a thread working in the background changes the state silently).
        """
        live = self.kernels.live(k.id)
        held = live.get("state_of")
        if held is None or k.pid is None or not self.supervisor.alive(k):
            return None
        sid, since, cpu, started = held
        newest = self.registry.snapshots_of(k.id, k.owner_uid, None)
        if not newest or newest[0].id != sid or newest[0].pid != k.pid:
            return None
        if start_time(k.pid) != started:  # another process under the same PID
            return None
        count = live.get("execution_count", k.execution_count)
        if newest[0].execution_count != count or live.get("execution_state") != "idle":
            return None
        seen = self.kernels.window(k.id, since, time.time(), settle=0.0)  # idle: ping at once
        used = cpu_seconds(k.pid)
        if not seen.quiet or seen.requested or used is None or used - cpu > HELD_CPU_SLACK:
            return None
        return newest[0]

    def _snapshot_retrying(
        self, k: Kernel, trigger: str, label: str | None, execution_count: int | None
    ) -> Snapshot:
        """One dump under the kernel's lock; an automatic one is tried once more when the
        kernel had a connection to the daemon open at the freeze (its next request was on its
        way: CRIU cannot dump a Unix socket connected outside the kernel)."""
        wait = 0.0 if trigger == "auto" else USER_WAIT
        for attempt in (1, 2):
            try:
                with self.locks.exclusive(k.id, "snapshot", wait=wait):
                    return self._snapshot_locked(
                        k, trigger, label, execution_count, exact=trigger == "auto"
                    )
            except SnapshotFailed as exc:
                transient = any(m in exc.message for m in _TRANSIENT_DUMP_FAILURES)
                # A manual one too: the kernel's own extension may have had its request to
                # the daemon open at that freeze (CI); the kernel ran on untouched.
                if attempt == 2 or not transient:
                    raise
                log.info("kernel %s: %s; trying again", k.id, exc.message)
                time.sleep(0.5)
        raise AssertionError("unreachable")  # pragma: no cover

    def _pend(self, skipped: Skipped) -> Skipped:
        """A skipped automatic request leaves one trailing snapshot due (``trailing.py``)."""
        if skipped.reason == "cooldown":
            self.trailing.schedule(skipped.kernel_id, skipped.retry_in)
        elif skipped.reason == "another operation is running":
            self.trailing.schedule(skipped.kernel_id, BUSY_RETRY)
        return skipped

    def _trailing_fire(self, kernel_id: str) -> None:
        """The pending snapshot is due: take it if the kernel is idle and has run a cell since
        its newest snapshot (a busy kernel's running cell will ask again when it ends)."""
        try:
            k = self.kernels.get(kernel_id)
        except KernelNotFound:
            return
        if k.status != "running":
            return
        # As of now, not as the IOPub watcher last heard: a view lagging behind the burst's
        # last cell (still running, or not counted yet) dropped its snapshot (CI, under load).
        state = self.kernels.settled(k.id)
        if state is None:
            live = self.kernels.live(k.id)
            state = live.get("execution_count"), live.get("execution_state") == "busy"
        count, running = state
        if running:
            return
        newest = self.registry.snapshots_of(k.id, k.owner_uid, None)
        if newest and count is not None and newest[0].execution_count == count:
            return
        with contextlib.suppress(JusnapError):  # recorded in the kernel's live state
            self.snapshot(k.id, trigger="auto")

    def auto_status(self, k: Kernel) -> dict[str, Any]:
        """Automatic snapshots of the kernel: settings, the pending one, the last failure."""
        error = self.kernels.live(k.id).get("auto_error")
        return {
            **self.kernels.auto_settings(k).public(),
            "pending_at": self.trailing.due(k.id),
            "last_error": error["message"] if error else None,
        }

    def _retain(self, snap: Snapshot) -> None:
        """Retention (and gc) after a snapshot, outside the kernel's lock; fails it only when
        it does not fit the owner's quota (QuotaExceeded: the snapshot is gone again).

        A kernel's snapshots are left for the next pass while an operation that may read one
        of them runs on it (a restore, a fork, a trim of its hot tier); a snapshot being taken
        reads none, and sparing a whole burst's snapshots let a busy notebook's list grow past
        ``keep_auto`` until it went idle."""
        try:
            self.storage.after_snapshot(self.registry, snap, self._busy)
        except QuotaExceeded:
            raise
        except Exception:
            log.exception("retention after snapshot %s failed", snap.id)
        self._keep_hot(snap.kernel_id)  # drops the entries of snapshots retention removed

    def _busy(self, kernel_id: str) -> bool:
        """Whether an operation that may read the kernel's snapshots runs on it now."""
        return self.locks.current(kernel_id) not in (None, "snapshot")

    def retain_spared(self, k: Kernel) -> None:
        """After a restore or a fork: the retention passes that ran meanwhile (commits of the
        last cells' snapshots) left this kernel's snapshots alone; apply them now."""
        try:
            if self.storage.retain(self.registry, k.owner_uid, self._busy):
                self._keep_hot(k.id)
        except Exception:
            log.exception("retention after an operation on kernel %s failed", k.id)

    def check_auto(self, kernel_id: str, owner_uid: int | None = ADMIN) -> Skipped | None:
        """Why an automatic snapshot of the kernel would be skipped now (None: it would run);
        a skipped one leaves a trailing snapshot due."""
        k = self.kernels.get(kernel_id, owner_uid)
        skipped = self._auto_skipped(k)
        if skipped is None and self.locks.current(k.id) is not None:
            skipped = Skipped(k.id, "another operation is running", 0.0)
        return self._pend(skipped) if skipped is not None else None

    def _auto_skipped(self, k: Kernel, cooldown: bool = True) -> Skipped | None:
        gpu = None
        if k.pid is not None:
            gpu = self.hooks.auto_policy(self.hooks.for_pid(k.pid), k.pid)
        return autosnap.decide(
            k.id,
            self.kernels.auto_settings(k),
            None if gpu is None else gpu.enabled,
            0.0 if gpu is None else gpu.min_cooldown,
            self._last_snapshot_time(k) if cooldown else None,
            time.time(),
        )

    def _last_snapshot_time(self, k: Kernel) -> float | None:
        live = self.kernels.live(k.id)
        if "last_snapshot_at" in live:
            return float(live["last_snapshot_at"])
        snaps = self.registry.snapshots_of(k.id, k.owner_uid, None)
        return snaps[0].created_at if snaps else None

    def _snapshot_locked(
        self,
        k: Kernel,
        trigger: str,
        label: str | None,
        execution_count: int | None = None,
        exact: bool = False,
    ) -> Snapshot:
        """Dump, check, commit, record. ``exact`` (a cell's automatic snapshot): a dump that
        caught a cell running is kept without a cell number rather than listed under one it
        may not hold, and a trailing snapshot is made due for the state after the cell."""
        st = self.settings.jusnap.store
        # A per-user quota needs the snapshot's stored size before it answers (507 to the
        # notebook, not a snapshot silently removed later): stored in the request then.
        background = st.background_commit and not st.max_user_mb
        # One commit per kernel at a time, in order (deltas against the previous one). A
        # snapshot recorded before it is stored need not wait for the previous one's commit
        # (1.5 GB: 4 s here, a minute under load, which the next cell's snapshot waited): its
        # own commit queues behind it. At most one waits so: no pile of full-size pending hot
        # entries behind a kernel that snapshots faster than its commits run.
        self._await_commits(k.id, keep=1 if background else 0)
        if background:
            before = self._committing(k.id)
            snap = self._save_pending(k, trigger, label, execution_count, exact)
            self._commit_later(snap.id, after=before)
            return snap
        snap, entry = self._dump(k, trigger, label, execution_count, durable=False, exact=exact)
        try:
            # The store reads the hot entry (root's copy), so the check sees exactly the
            # bytes that both the store and the hot tier keep, before the snapshot is recorded.
            snap.size_bytes = self.store.commit(
                snap.id, entry.images, self._hot_extra(entry), owner=k.owner_uid,
                check=self._image_check(self._identity(k), k), file_owner=os.geteuid(),
            )  # fmt: skip
            try:
                self.registry.add_snapshot(snap)
            except Exception:
                self.store.delete(snap.id)
                raise
            # Described only once recorded: trimming (another thread) drops entries of
            # snapshots it does not find in the registry.
            self.hot.describe(snap.id, asdict(snap), self._identity_json(k), pending=False)
        except BaseException:
            self.hot.drop(snap.id)
            raise
        self._keep_hot(k.id, locked=True)
        self._recorded(k, snap)
        return snap

    def _dump(
        self,
        k: Kernel,
        trigger: str,
        label: str | None,
        execution_count: int | None,
        durable: bool,
        exact: bool = False,
    ) -> tuple[Snapshot, HotEntry]:
        """Dump the kernel (left running) and copy the images into a hot entry (pending).
        ``exact``: see :meth:`_snapshot_locked`."""
        if not self.supervisor.alive(k):
            raise KernelNotRunning(
                f"kernel {k.id} is not running; restart it or restore a snapshot"
            )
        assert k.pid is not None
        # A lazily restored kernel still missing pages: its image would lack them.
        if not self._lazy.wait(k.id, self._lazy_timeout()):
            raise SnapshotFailed("snapshot failed: the kernel's lazy restore has not finished")
        sid = new_snapshot_id()
        created = time.time()
        active = self.hooks.for_pid(k.pid)
        creds = self.supervisor.creds(k)
        if execution_count is None:
            execution_count = self.kernels.live(k.id).get("execution_count", k.execution_count)
        with self._scratch() as scratch:
            images = self._user_dir(scratch / "img", k.run_uid, k.run_gid)
            work = self._user_dir(scratch / "criu", k.run_uid, k.run_gid)
            env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
            history_copy = work / HISTORY_NAME
            if k.history_file:
                env.update(JUSNAP_HISTORY_SRC=k.history_file, JUSNAP_HISTORY_DST=str(history_copy))
            self._prepare(k, active)
            namespaced = namespace.is_namespace_init(k.pid)
            # A namespaced kernel's log: external, handed back on restore (_criu_restore).
            external = (
                namespace.external_log_keys(k.pid, self.supervisor.logs.path(k.id))
                if namespaced
                else []
            )
            # Host mounts kept in its namespace: external by a key from their path.
            kept = [(mp, namespace.bind_key(mp)) for mp in namespace.kept_in(k.pid)]
            try:
                t_hooks, t_request = time.monotonic(), time.time()
                # A durable entry is fsynced next: its writeback starts while CRIU writes.
                early: contextlib.AbstractContextManager[object] = (
                    EarlyWriteback(images, k.run_uid)
                    if durable and self.settings.jusnap.store.early_writeback
                    else contextlib.nullcontext()
                )
                # The action script only copies the history database: without one, CRIU
                # need not start a shell for each of its actions, some while the kernel is frozen.
                script = str(self.action_script) if k.history_file else None
                with self.hooks.around_dump(k.pid, active) as hook_meta, early:
                    result = self.criu.dump(
                        k.pid, images, work, creds, script, env,
                        namespaced=namespaced, external_files=external,
                        kept_mounts=kept if namespaced else (),
                    )  # fmt: skip
                hooked_seconds = time.monotonic() - t_hooks
            except JusnapError:
                raise
            except Exception as exc:  # a hook's own failure
                raise SnapshotFailed(f"snapshot failed: {exc}") from exc
            # (A little past the dump's end: a request queued in the frozen kernel starts
            # right after the thaw, and must count as having run during the window.)
            window_end = time.time() + 0.05
            live = self.kernels.live(k.id)
            live.pop("state_of", None)
            # The kernel's CPU time at the thaw: what it uses from here on is not in the images.
            cpu = cpu_seconds(k.pid)
            # CRIU writes its stats image into its work directory (``-W``), not beside the
            # images: read there, the freeze was CRIU's whole run (0.53 s for 0.21 s frozen).
            frozen = criu_mod.frozen_seconds(work) or result.seconds
            if active:
                # A hooked kernel (e.g. a locked CUDA context) is stalled from the hook's entry
                # to its exit, not only while CRIU holds it.
                frozen = max(frozen, hooked_seconds)
            # Every file is copied once, from the user's directory, into root-only files.
            # Before the window is read: its wait past the dump's end overlaps the fsync.
            history = history_copy if history_copy.exists() else None
            entry = self.hot.put(sid, images, history, k.run_gid, k.run_uid, durable)
        try:
            # The count the frozen process had, not the one the request carried: the kernel
            # may have started further cells since.
            seen = self.kernels.window(k.id, t_request, window_end)
        except BaseException:
            self.hot.drop(sid)
            raise
        execution_count = seen.count if seen.count is not None else execution_count
        if seen.quiet and not seen.requested and cpu is not None:
            # The images hold the kernel's state as it is now (see _state_held_by).
            live["state_of"] = (sid, t_request, cpu, start_time(k.pid))
        if exact and not seen.quiet:
            # A cell ran at some moment of the freeze: the images may hold it half run (or
            # a request queued in the frozen kernel), so no cell number is sure to be true.
            # Kept all the same (a headless run may shut its kernel down before any later
            # snapshot), listed without a number; the exact one follows it.
            execution_count = None
            self.trailing.schedule(k.id, BUSY_RETRY)
        snap = Snapshot(
            id=sid,
            kernel_id=k.id,
            owner_uid=k.owner_uid,
            notebook_path=k.notebook_path,
            created_at=created,
            trigger=trigger,
            label=label,
            size_bytes=self.hot.size(sid),
            frozen_seconds=frozen,
            execution_count=execution_count,
            pid=k.pid,
            ports=k.ports(),
            has_history=entry.history is not None,
            hooks=hook_meta,
            connection_key=str(k.connection["key"]),
            namespaced=namespaced,
        )
        return snap, entry

    def _recorded(self, k: Kernel, snap: Snapshot) -> None:
        self.kernels.live(k.id)["last_snapshot_at"] = snap.created_at
        log.info(
            "snapshot %s of kernel %s (%s, %.3fs frozen, %d bytes)",
            snap.id,
            k.id,
            snap.trigger,
            snap.frozen_seconds,
            snap.size_bytes,
        )

    @staticmethod
    def _hot_extra(entry: HotEntry) -> dict[str, Path]:
        if entry.history is None:
            return {}
        return {p.name: p for p in entry.history.iterdir() if p.name in HISTORY_FILES}

    def _identity_json(self, k: Kernel) -> dict[str, Any]:
        i = self._identity(k)
        return {"uid": i.uid, "gid": i.gid, "groups": sorted(i.groups)}

    def _keep_hot(self, kernel_id: str, locked: bool = False) -> None:
        """Trim the kernel's hot entries to the configured number (never fails the caller).

        Only under the kernel's lock (``locked``: the caller holds it), since a restore may be
        reading an entry; a kernel busy now is trimmed after its operation."""
        try:
            with contextlib.nullcontext() if locked else self.locks.exclusive(kernel_id, "trim"):
                known = set(self.registry.all_snapshot_ids())
                self.hot.keep(kernel_id, self.settings.jusnap.store.hot_snapshots, known)
        except Busy:
            return
        except OSError:
            log.exception("trimming the hot tier of kernel %s failed", kernel_id)

    def _commit_hot(self, entry: HotEntry, register: bool) -> None:
        """Store a pending hot entry (a restore's safety copy); ``register``: add its registry
        row if missing (start-up), else a missing row means it was deleted meanwhile."""
        snap = Snapshot(**entry.snapshot)
        ident = entry.meta.get("identity") or {}
        try:
            identity = Identity(int(ident["uid"]), int(ident["gid"]),
                                frozenset(int(g) for g in ident["groups"]))  # fmt: skip
            if not self.store.exists(snap.id):
                self.store.commit(
                    snap.id, entry.images, self._hot_extra(entry), owner=snap.owner_uid,
                    check=self._image_check(identity, self.registry.get_kernel(snap.kernel_id)),
                    file_owner=os.geteuid(),
                )  # fmt: skip
        except (ImageRefused, KeyError, TypeError, ValueError) as exc:
            why = exc.message if isinstance(exc, JusnapError) else f"bad record ({exc})"
            log.error("snapshot %s refused by the store, forgotten: %s", snap.id, why)
            self.registry.delete_snapshot(snap.id)
            self.hot.drop(snap.id)
            return
        except JusnapError as exc:
            # The store is full or failing: the snapshot stays restorable from its durable hot
            # entry, and storing it is tried again at the daemon's next start.
            log.error("snapshot %s could not be stored yet: %s", snap.id, exc.message)
            self.kernels.live(snap.kernel_id)["auto_error"] = {
                "at": time.time(), "message": f"snapshot {snap.id} not stored: {exc.message}"
            }  # fmt: skip
            return
        if self.registry.get_snapshot(snap.id) is None:
            if not register:
                self.store.delete(snap.id)  # deleted while it was being stored
                self.hot.drop(snap.id)
                return
            self.registry.add_snapshot(snap)
        self.hot.committed(snap.id, with_digests=True)

    def _commit_later(self, snapshot_id: str, after: Sequence[threading.Thread] = ()) -> None:
        """Store a pending hot entry in a thread, once the commits ``after`` have ended."""
        entry = self.hot.get(snapshot_id)
        if entry is None or not entry.pending:
            return
        t = threading.Thread(
            target=self._commit_background, args=(entry, tuple(after)),
            name=f"commit-{snapshot_id}", daemon=True,
        )  # fmt: skip
        with self._commits_lock:
            self._commits[snapshot_id] = (
                t, str(entry.snapshot.get("kernel_id")), int(entry.snapshot.get("owner_uid", -1))
            )  # fmt: skip
        t.start()

    def _commit_background(self, entry: HotEntry, after: tuple[threading.Thread, ...] = ()) -> None:
        try:
            for t in after:
                t.join()
            failpoints.reached("snapshot:recorded")  # durable and listed, not yet stored
            self._commit_hot(entry, register=False)
            snap = self.registry.get_snapshot(entry.id)
            if snap is not None and snap.trigger != "pre-restore":
                self._retain(snap)
            self._keep_hot(str(entry.snapshot.get("kernel_id")))
        except Exception:
            log.exception("storing the pre-restore snapshot %s failed", entry.id)
        finally:
            with self._commits_lock:
                self._commits.pop(entry.id, None)

    def _await_commit(self, snapshot_id: str) -> None:
        """Wait until a background commit of the snapshot (if any) has ended."""
        with self._commits_lock:
            c = self._commits.get(snapshot_id)
        if c is not None:
            c[0].join()

    def _pending_ids(self) -> set[str]:
        with self._commits_lock:
            return set(self._commits)

    def _committing(self, kernel_id: str) -> list[threading.Thread]:
        with self._commits_lock:
            return [t for t, kid, _o in self._commits.values() if kid == kernel_id]

    def _await_commits(self, kernel_id: str, keep: int = 0) -> None:
        """Wait until no more than ``keep`` of the kernel's snapshots are still committing in
        the background (the oldest end first: they commit in order)."""
        while len(threads := self._committing(kernel_id)) > keep:
            threads[0].join()

    def wait_stored(self, owner_uid: int | None = ADMIN) -> None:
        """Wait until the owner's (everyone's: ``ADMIN``) snapshots committing in the
        background are in the store: for readers of the store (usage, gc) and tests."""
        with self._commits_lock:
            threads = [t for t, _k, o in self._commits.values() if owner_uid in (ADMIN, o)]
        for t in threads:
            t.join()

    def _prepare(self, k: Kernel, active: list[Any]) -> None:
        """Run the hooks' preparation code in the kernel, only if it is idle right now."""
        assert k.pid is not None
        codes = self.hooks.prepare_code(active, k.pid)
        if not codes or self.kernels.live(k.id).get("execution_state") != "idle":
            return
        for code in codes:
            if not execute_silently(k.connection, code, timeout=10.0):
                log.warning("kernel %s: preparation before the snapshot did not finish", k.id)

    def snapshot_info(self, snapshot_id: str, owner_uid: int | None = ADMIN) -> Snapshot:
        check_snapshot_id(snapshot_id)
        s = self.registry.get_snapshot(snapshot_id)
        if s is None:
            raise SnapshotNotFound(f"no such snapshot: {snapshot_id}")
        check_owner(owner_uid, s.owner_uid, "snapshot")
        return s

    def list_snapshots(self, kernel_id: str, owner_uid: int | None = ADMIN) -> list[Snapshot]:
        k = self.kernels.get(kernel_id, owner_uid)
        return self.registry.snapshots_of(k.id, k.owner_uid, k.notebook_path)

    def all_snapshots(self, owner_uid: int | None = ADMIN) -> list[Snapshot]:
        """Every snapshot of the owner, whether or not its kernel or notebook still exists."""
        return self.registry.snapshots_owned(owner_uid)

    def last_snapshot(self, k: Kernel) -> Snapshot | None:
        snaps = self.registry.snapshots_of(k.id, k.owner_uid, k.notebook_path)
        return snaps[0] if snaps else None

    def relabel(
        self, snapshot_id: str, label: str | None, owner_uid: int | None = ADMIN
    ) -> Snapshot:
        s = self.snapshot_info(snapshot_id, owner_uid)
        self.registry.set_label(s.id, _check_label(label))
        return self.snapshot_info(snapshot_id, owner_uid)

    def delete_snapshot(self, snapshot_id: str, owner_uid: int | None = ADMIN) -> None:
        s = self.snapshot_info(snapshot_id, owner_uid)
        with self.locks.exclusive(s.kernel_id, "delete", wait=USER_WAIT):
            self._await_commit(s.id)
            self.registry.delete_snapshot(s.id)
            self.store.delete(s.id)
            self.hot.drop(s.id)

    def clear(self, kernel_id: str, owner_uid: int | None = ADMIN) -> int:
        snaps = self.list_snapshots(kernel_id, owner_uid)
        with self.locks.exclusive(kernel_id, "clear", wait=USER_WAIT):
            for s in snaps:
                self._await_commit(s.id)
                self.registry.delete_snapshot(s.id)
                self.store.delete(s.id)
                self.hot.drop(s.id)
        return len(snaps)

    # ---- restore -------------------------------------------------------------------------------
    def restore(
        self, snapshot_id: str, owner_uid: int | None = ADMIN, into: str | None = None
    ) -> RestoreResult:
        snap = self.snapshot_info(snapshot_id, owner_uid)
        k = self.kernels.get(into or snap.kernel_id, owner_uid)
        if not self.restorable(snap, k):
            raise Refused(
                f"this snapshot needs its process id {snap.pid}, which another process holds now"
                " (the snapshot's own kernel still runs, or the id was reused); nothing was touched"
            )
        if snap.ports != k.ports() and self.snapshot_key(snap) is None:
            raise Refused(
                "this snapshot is older than Jusnap's record of connection keys and its kernel"
                " is gone: it restores only into a kernel with the ports it was taken with"
            )
        self.hooks.preflight_restore(snap.hooks)
        t0 = time.monotonic()
        with self.locks.exclusive(k.id, "restore", wait=USER_WAIT):
            # Clients connected now (the notebook server, and our own IOPub watcher) reconnect
            # by themselves after the restore; count them so the restore can wait for them.
            peers = established_peers(k.connection["iopub_port"])
            pre: Snapshot | None = None
            dumped = False
            with self.staging_of(k, snap) as staging:  # staged while the current state is saved
                if self.supervisor.alive(k):
                    pre = self._stored_state(k)
                if pre is None and self.supervisor.alive(k):
                    try:
                        pre, dumped = self._pre_restore(k), True
                    except JusnapError as exc:
                        raise RestoreFailed(
                            "restore not attempted: could not save the current state first"
                            f" ({exc.message})",
                            rolled_back=True,
                        ) from None
                # Should the daemon die from here on, its next start finishes or undoes this.
                self.registry.begin_restore(
                    RestoreJournal(k.id, snap.id, pre.id if pre else None, ticks_now(), time.time())
                )
                try:
                    criu_s, hs_s = self._restore_or_roll_back(k, snap, pre, staging, peers, dumped)
                finally:
                    self.registry.end_restore(k.id)
                    if dumped:
                        assert pre is not None
                        self._commit_later(pre.id)  # the safety copy goes to the store now
                    self._keep_hot(k.id, locked=True)
        k = self.kernels.get(k.id)
        if k.notice:
            k.notice = None  # the user has moved on from whatever recovery said
            self.registry.put_kernel(k)
        self.retain_spared(k)
        return RestoreResult(snap, k, pre, time.monotonic() - t0, criu_s, hs_s)

    def restorable(self, snap: Snapshot, k: Kernel) -> bool:
        """Whether ``snap`` can be restored into ``k`` now: its ports are moved if they differ
        (``ports.py``); a namespaced kernel comes back as PID 1 of a new namespace, a plain
        one with the PID it had, which must be free once ``k`` is stopped."""
        return snap.namespaced or snap.pid == k.pid or start_time(snap.pid) is None

    def _pre_restore(self, k: Kernel) -> Snapshot:
        """Save the running kernel's state before a restore stops it: dumped, taken into a
        durable hot entry (fsynced), its images checked and recorded, all before the kernel is
        touched. Storing it in the content-addressed store waits until after the restore."""
        return self._save_pending(k, "pre-restore", None, None)

    def _stored_state(self, k: Kernel) -> Snapshot | None:
        """The restore's safety copy without a dump (issue 12): the newest snapshot when it
        holds the kernel's current state (:meth:`_state_held_by`) and is stored (committed,
        its images checked), so nothing can take it away while the restore relies on it."""
        held = self._state_held_by(k)
        if held is None or held.id in self._pending_ids() or not self.store.exists(held.id):
            return None
        log.info("kernel %s: snapshot %s holds its state; no pre-restore dump", k.id, held.id)
        return held

    def _save_pending(
        self,
        k: Kernel,
        trigger: str,
        label: str | None,
        execution_count: int | None,
        exact: bool = False,
    ) -> Snapshot:
        """A snapshot recorded as soon as its images are durable and checked in the hot tier;
        the caller has it committed into the store in the background (``_commit_later``)."""
        snap, entry = self._dump(k, trigger, label, execution_count, durable=True, exact=exact)
        try:
            self._check_staged(k, entry.images)
            self.hot.describe(snap.id, asdict(snap), self._identity_json(k), pending=True)
            self.registry.add_snapshot(snap)
        except BaseException:
            self.hot.drop(snap.id)
            self.registry.delete_snapshot(snap.id)
            raise
        self._recorded(k, snap)
        return snap

    def _forget(self, snap: Snapshot) -> None:
        self.registry.delete_snapshot(snap.id)
        self.store.delete(snap.id)
        self.hot.drop(snap.id)

    def _restore_or_roll_back(
        self, k: Kernel, snap: Snapshot, pre: Snapshot | None, staging: Future[Staged],
        peers: int, dumped: bool,
    ) -> tuple[float, float]:  # fmt: skip
        """Replace the kernel by ``snap``; on failure bring ``pre`` back (under the lock).
        ``dumped``: ``pre`` was made for this restore (else it is the newest snapshot)."""
        try:
            staged = staging.result()
            result = self._replace(k, snap, staged, peers)
            if staged.hot:
                self.hot.touch(snap.id)
            return result
        except Untouched as exc:
            # Nothing was stopped: the kernel runs on as it was; its safety copy is moot.
            if pre is not None and dumped:
                self._forget(pre)
            raise RestoreFailed(
                f"{exc.error.message}; the kernel was not touched", rolled_back=True
            ) from None
        except JusnapError as exc:
            log.error("restore of %s into %s failed: %s", snap.id, k.id, exc.message)
            if pre is None:
                raise RestoreFailed(exc.message, rolled_back=False) from None
            try:
                # From the pre-restore copy's plain images (hot, checked), not from the store.
                with self._scratch() as scratch:
                    self._replace(k, pre, self._stage(k, pre, scratch), peers)
            except (JusnapError, Untouched) as exc2:
                why = exc2.error.message if isinstance(exc2, Untouched) else exc2.message
                log.critical("rollback to %s failed too: %s", pre.id, why)
                raise RestoreFailed(
                    f"{exc.message}; rolling back to the pre-restore snapshot {pre.id}"
                    f" failed as well ({why})",
                    rolled_back=False,
                    pre_restore=pre.id,
                ) from None
            raise RestoreFailed(
                f"{exc.message}; the kernel was put back as it was",
                rolled_back=True,
                pre_restore=pre.id,
            ) from None

    @contextlib.contextmanager
    def staging_of(self, k: Kernel, snap: Snapshot) -> Iterator[Future[Staged]]:
        """Stage ``snap`` in a thread of its own (see :meth:`_stage`) and verify its hot entry,
        if any, in another: that hashes every image byte (~0.1 s per GiB), and the restore
        waits for it only after the old kernel's stop (:meth:`_replace`), which takes about as
        long. The scratch directory outlives both (the pool is shut down, waiting for them,
        before the directory goes)."""
        entry = self.hot.get(snap.id)
        # A hot entry's images reach CRIU as they are (hashed through one 4 MiB buffer): no
        # heap to trim on the way to the restore's answer.
        with (
            self._scratch(trim=entry is None) as scratch,
            ThreadPoolExecutor(2, "stage") as pool,
        ):
            verified = pool.submit(self.hot.verify, entry) if entry is not None else None
            yield pool.submit(self._stage, k, snap, scratch, entry, verified)

    def _stage(
        self,
        k: Kernel,
        snap: Snapshot,
        scratch: Path,
        entry: HotEntry | None = None,
        verified: Future[None] | None = None,
    ) -> Staged:
        """The images CRIU will restore ``snap`` from, where CRIU (as the kernel's uid) can read
        them but the kernel's user cannot change them: root's files in root's directories,
        readable through the kernel's group; checked for this kernel's identity.

        A hot entry is used as it is (``entry``, else looked up); otherwise the snapshot is
        verified and copied out of the store into ``scratch``. A snapshot taken with other
        ports than ``k``'s connection has its served ports moved (``ports.py``) in a copy of
        its own, checked again. This happens before the running kernel is stopped: a damaged
        or crafted snapshot fails here, with the kernel untouched (raised as
        :class:`Untouched`). ``verified``: the hot entry's verification, running elsewhere
        (:meth:`staging_of`); the result carries it and :meth:`_replace` waits for it before
        CRIU reads a byte (a failure found only after the stop is rolled back like a failed
        CRIU restore). Without it the entry is verified here.
        """
        try:
            creds = self.supervisor.creds(k)
            lazy = self.storage.lazy_for(snap, self.criu.lazy_capable(creds))
            want_history = snap.has_history and bool(k.history_file)
            if entry is None:
                entry = self.hot.get(snap.id)  # a lazy restore links a hot entry's images
            history: Path | None = None
            if entry is not None:
                images = entry.images
                if verified is None:
                    self.hot.verify(entry)
                self._check_staged(k, images)
                if want_history and entry.history:
                    history = entry.history / HISTORY_NAME
            else:
                images = readable_dir(scratch / "img", k.run_gid)
                self.store.stage_out(snap.id, images, 0, k.run_gid, skip=HISTORY_FILES, mode=0o440)
                self._check_staged(k, images)
                if want_history:
                    self.store.stage_out(
                        snap.id, readable_dir(scratch / "history", k.run_gid), 0,
                        k.run_gid, only=HISTORY_FILES, mode=0o440,
                    )  # fmt: skip
                    history = scratch / "history" / HISTORY_NAME
            # Checked above to be exactly the launcher's tree, with no_new_privs throughout.
            namespaced = any(images.glob("mountpoints-*.img"))
            images, moved = self._retarget(k, snap, images, scratch, namespaced)
            work = self._user_dir(scratch / "criu", k.run_uid, k.run_gid)
        except JusnapError as exc:
            raise Untouched(exc) from None
        pending = verified if entry is not None else None
        return Staged(images, history, work, entry is not None, lazy, namespaced, moved, pending)

    def _retarget(
        self, k: Kernel, snap: Snapshot, images: Path, scratch: Path, namespaced: bool
    ) -> tuple[Path, dict[int, int]]:
        """Staged images of another kernel's snapshot made to fit ``k`` (a fork, a restore
        into another kernel): its served ports moved to ``k``'s (``ports.py``; the others to
        fresh ones), and, for a namespaced kernel (which opens its files by path in its own
        mount tree), its history file named as ``k``'s (its log is an external file, handed
        over by :meth:`_criu_restore`). Checked again after.

        Images staged from the store are edited where they are; a hot entry's are reached
        through symbolic links in ``scratch`` (root's directory), and ``files.img`` replaced
        there: the entry's own files stay as they are (no hard link either: the store refuses
        files with more than one)."""
        renames: dict[str, str] = {}
        if namespaced and snap.kernel_id != k.id and snap.has_history and k.history_file:
            old = self.supervisor.kernel_dir(snap.kernel_id) / HISTORY_NAME
            renames[str(old)] = k.history_file
            renames[f"{old}-journal"] = f"{k.history_file}-journal"
        if snap.ports == k.ports() and not renames:
            return images, {}
        if images.parent != scratch:
            links = readable_dir(scratch / "img-own", k.run_gid)
            for path in images.iterdir():
                (links / path.name).symlink_to(path)
            images = links
        files = images / "files.img"
        if not files.exists():
            raise ImageRefused("snapshot image refused: files.img is missing")
        moved = move_ports(files, port_map(snap.ports, k)) if snap.ports != k.ports() else {}
        for old, new in renames.items():
            rename_file(files, old, new)
        self._check_staged(k, images)
        return images, moved

    def _image_check(self, who: Identity, k: Kernel | None) -> ImageCheck:
        """A check of a dump whose namespaced tree may bind a kernel's own /dev/shm and keep
        the host mounts the daemon's configuration keeps for kernel ``k`` (none without it)."""
        keep = self.supervisor.kept_mounts(k)[0] if k is not None else []
        kept = [(mp, namespace.bind_key(mp), ro) for mp, ro in keep]
        return ImageCheck(who, launcher_tree(str(self.supervisor.shm_dir("-").parent), kept))

    def _check_staged(self, k: Kernel, images: Path) -> bool:
        """Check a dump's images; returns whether they hold a namespaced kernel."""
        check = self._image_check(self._identity(k), k)
        for path in sorted(images.iterdir()):
            check.feed(path.name, path.read_bytes() if needs_bytes(path.name) else None)
        check.done()
        return check.namespaced

    def _replace(
        self, k: Kernel, snap: Snapshot, staged: Staged, peers: int
    ) -> tuple[float, float]:
        """Stop the kernel and bring ``snap`` back in its place. On failure it stays stopped.

        ``peers`` IOPub clients are waited for after the handshake: a cell they run before
        their subscription is back would publish its output to nobody.
        """
        failpoints.reached("restore:before-stop")
        early = staged.unverified()
        if early is not None:  # the damage is known before anything was stopped
            raise Untouched(early)
        if self.supervisor.alive(k):
            # Counted again at the last moment before the stop: a client that left while the
            # state was saved and the target staged (seconds; a closed tab) is not one that
            # will come back. (A rollback finds the kernel stopped and keeps the first count.)
            peers = established_peers(k.connection["iopub_port"])
        watcher = self.kernels.unwatch(k, wait=False)  # it ends while the kernel stops
        # The kernel rows written from here on need no fsync of their own (the journal row,
        # durable, says what to do should the daemon die; Registry._tx_fast says why).
        self.supervisor.stop(k, durable=False)
        if watcher is not None:
            # Its socket must be closed before the restored kernel listens: reconnecting
            # there for a moment, it would count as a client that came back (wait_for_peers)
            # and then leave, and the restore would report a client that did not.
            watcher.stop(wait=True)
        failpoints.reached("restore:kernel-stopped")
        try:
            # Verified while the old kernel stopped: nothing is put in its place before that.
            staged.wait_verified()
            if staged.history is not None and k.history_file:
                # As the kernel's user, into the same inode: SQLite treats a changed inode as
                # "moved" and turns the restored kernel's history read-only.
                self.place_history(k, staged.history, Path(k.history_file))
            with self.run_criu(k, snap, staged, "restore") as (restored_pid, result):
                k.pid, k.started, k.status = restored_pid, start_time(restored_pid), "running"
                self.registry.put_kernel(k, durable=False)
                failpoints.reached("restore:handshake")
                old_key = self.snapshot_key(snap) or str(k.connection["key"])
                # It answers (on k's ports) with the key it was dumped with until the fixup.
                hs = handshake(
                    {**k.connection, "key": old_key},
                    self.settings.jusnap.ipython.handshake_timeout,
                    lambda pid=restored_pid, t=k.started: start_time(pid) == t,
                )
                if staged.ports_moved or old_key != k.connection["key"] or snap.kernel_id != k.id:
                    # Another kernel's snapshot: it must learn its new ports, key and files.
                    self.fixup(k, reseed=False, old_key=old_key)
                self.kernels.reset_live(
                    k.id, execution_count=snap.execution_count, last_snapshot_at=time.time()
                )
                self.kernels.watch(k)
                self._await_peers(k, peers)
        except Exception as exc:
            k.status = "dead"
            self.registry.put_kernel(k)
            if isinstance(exc, JusnapError):
                raise
            raise RestoreFailed(f"restore failed: {exc}") from exc
        k.execution_count = snap.execution_count
        self.registry.put_kernel(k, durable=False)  # made durable with the journal's end
        return result.seconds, hs

    def place_history(self, k: Kernel, staged: Path, dest: Path) -> None:
        """Put a snapshot's history database at ``dest``, as the kernel's user, with its
        journal when the dump caught SQLite in a write. Without one, a journal left there (a
        kernel stopped in a write) goes: SQLite would roll the restored database back with
        it, pages of another state."""
        creds = self.supervisor.creds(k)
        self.supervisor.copy_as_user(creds, staged, dest)
        journal = staged.with_name(staged.name + "-journal")
        if journal.exists():
            self.supervisor.copy_as_user(creds, journal, dest.with_name(dest.name + "-journal"))
        else:
            self.supervisor.remove_as_user(creds, dest.with_name(dest.name + "-journal"))

    def _await_peers(self, k: Kernel, peers: int) -> None:
        """Wait (3 s at most) for the IOPub clients counted before the stop to come back: a
        cell they run before their subscription is back would publish to nobody."""
        back = wait_for_peers(k.connection["iopub_port"], peers, timeout=3.0)
        if back.connected < back.expected:
            # A warning, not an error: a connection count cannot tell a client that failed
            # to come back from one that closed in the moment of the stop.
            log.warning(
                "kernel %s: %d of %d IOPub clients did not reconnect within 3 s of the"
                " restore (or closed meanwhile); those still open see no output until"
                " they do",
                k.id, back.expected - back.connected, back.expected,
            )  # fmt: skip
        if back.unsubscribed:
            # Expected for a client that nudges after a restore (it reads its socket only
            # then); for one that does not, its next cell's first messages are lost.
            log.warning(
                "kernel %s: IOPub client(s) %s reconnected after the restore but had not"
                " subscribed again %.1f s later; the first messages of their next cell"
                " (busy, execute_input, output) are lost unless they send a request first"
                " (kernel_info, as Jupyter's nudge does)",
                k.id, ", ".join(back.unsubscribed), back.seconds,
            )  # fmt: skip

    @contextlib.contextmanager
    def run_criu(
        self,
        k: Kernel,
        snap: Snapshot,
        staged: Staged,
        op: str,
        extra: Sequence[tuple[int, str]] = (),
    ) -> Iterator[tuple[int, CriuResult]]:
        """CRIU brings the staged ``snap`` back as kernel ``k``'s process, for a restore in
        place and a fork alike (``op`` names it in errors and failpoints): through a
        ``criu lazy-pages`` server of its own when staged lazily, and checked to be the tree
        it restored (``_not_restored``) before it is adopted. Yields its PID and CRIU's
        result; should the caller's next steps fail (handshake, fixup), the copy is killed
        and its server stopped on the way out: nothing half made is left running."""
        staged.wait_verified()
        if not staged.namespaced and start_time(snap.pid) is not None:
            raise RestoreFailed(f"{op} failed: PID {snap.pid} is in use by another process")
        restored_pid: int | None = None
        server: lazyrestore.LazyServer | None = None
        try:
            images, work = staged.images, staged.work
            if staged.lazy:
                # The server's own copy of the images and work directory (it listens there,
                # and the restore connects there): lazyrestore's docstring says why.
                creds = self.supervisor.creds(k)
                home = self.work_dir / f"{staged.work.parent.name}-lazy"
                server = lazyrestore.prepare(images, home, creds, linked=staged.hot)
                lazyrestore.start(self.criu, server, creds, k.id)
                images, work = server.images, server.work
            not_before = ticks_now()
            failpoints.reached_soon(f"{op}:criu-running", 0.1)
            result = self._criu_restore(
                k, snap, images, work, server is not None, staged.namespaced, extra
            )
            pid = result.pid if staged.namespaced else snap.pid
            why = (
                "CRIU named no restored process"
                if pid is None
                else _not_restored(pid, k.run_uid, not_before, staged.namespaced)
            )
            if why is not None:
                if pid is not None and staged.namespaced and namespace.is_namespace_init(pid):
                    kill_tree(pid, start_time(pid))  # its own namespace: nobody else's
                log.critical("%s of %s as %s: %s; not adopting it", op, snap.id, k.id, why)
                raise RestoreFailed(f"{op} failed: {why}")
            assert pid is not None
            restored_pid = pid
            if server is not None:
                self._watch_lazy(k, server, pid, start_time(pid))
                server = None  # the watcher cleans up from now on
            failpoints.reached(f"{op}:criu-restored")
            self.hooks.after_restore(pid, snap.hooks)
            yield pid, result
        except BaseException:
            if restored_pid is not None:
                started = start_time(restored_pid)
                kill_tree(restored_pid, started)
                self.reaper.wait_gone(restored_pid, started, 10)
            if server is not None:
                lazyrestore.stop(self.criu, server)
            raise

    def _lazy_leftover(self, home: Path) -> None:
        """A lazy restore this daemon's predecessor died in: its kernel may lack pages."""

        def pid_of(kernel_id: str) -> int | None:
            k = self.registry.get_kernel(kernel_id)
            return k.pid if k else None

        left = lazyrestore.leftover(home, pid_of)
        if left is None or not left.killed:
            return
        for pid, started in left.killed:
            self.reaper.wait_gone(pid, started, 10)
        note = (
            "the daemon restarted while the kernel's memory was still arriving (lazy restore);"
            " it was stopped, since that memory may be incomplete"
        )
        log.warning("kernel %s: %s", left.kernel_id, note)
        k = self.registry.get_kernel(left.kernel_id)
        if k is not None:
            self.supervisor.logs.note(k.id, note)
            k.notice = note
            self.registry.put_kernel(k)

    def _lazy_timeout(self) -> float:
        return max(600.0, self.criu.restore_timeout * 5)

    def _watch_lazy(
        self, k: Kernel, server: lazyrestore.LazyServer, pid: int, started: int | None
    ) -> None:
        """Follow a lazy restore's server; if it fails, the kernel it left without pages is
        killed (it would read zeros where its memory should be), never left running."""

        def broken(why: str) -> None:
            kill_tree(pid, started)
            self.supervisor.logs.note(
                k.id, f"lazy restore failed ({why}): the kernel lost memory and was stopped;"
                " restore a snapshot"
            )  # fmt: skip

        lazyrestore.restored(server, pid, started)
        self._lazy.add(k.id, server)
        lazyrestore.watch(self.criu, server, self._lazy_timeout(), broken)

    def fixup(self, k: Kernel, reseed: bool, old_key: str | None = None) -> None:
        """Give a restored copy its own identity (``kernels/fixup.py``) before it is used."""
        timeout = self.settings.jusnap.ipython.handshake_timeout
        cfile = str(self.supervisor.connection_file(k))
        apply_fixup(k.connection, cfile, reseed, timeout, old_key, k.history_file, k.id)

    def snapshot_key(self, snap: Snapshot) -> str | None:
        """The signing key the snapshot's kernel had (recorded with snapshots since schema 3;
        for older ones, its kernel's if that still exists)."""
        if snap.connection_key is not None:
            return snap.connection_key
        origin = self.registry.get_kernel(snap.kernel_id)
        return str(origin.connection["key"]) if origin is not None else None

    def _criu_restore(
        self,
        k: Kernel,
        snap: Snapshot,
        images: Path,
        work: Path,
        lazy: bool,
        namespaced: bool = False,
        extra: Sequence[tuple[int, str]] = (),
    ) -> CriuResult:
        """Run CRIU's restore with the kernel's log handed over as an inherited descriptor.

        The log grew since the dump; opened by CRIU itself it would fail the restore ("has bad
        size"). The snapshot names the log of the kernel it was taken from, which is this one's
        unless the snapshot is restored into another kernel: either name gets this kernel's log.
        ``extra``: more (descriptor, name) pairs to inherit (a plain fork's history copy).

        A namespaced kernel's descriptors of its log were dumped as external files
        (``file[<mnt_id>:<inode>]``, see ``namespace.external_log_keys``): a path lookup would
        need the file's mount inside the dumped namespace, which a descriptor the daemon
        handed over on an earlier restore is not on ("Can't lookup mount"). Each such key gets
        this kernel's log; the images may name no other external file.
        """
        logs = self.supervisor.logs
        # A namespaced kernel's /dev/shm comes back bound from this kernel's own directory.
        shm = self.supervisor.prepare_shm(k) if namespaced else None
        kept: list[tuple[str, str]] = []
        if namespaced:
            self.supervisor.seed_shm(k, snap.kernel_id)
            # The host mounts come from the daemon's configuration, never from the image.
            keep = self.supervisor.kept_mounts(k)[0]
            kept = [(mp, namespace.bind_key(mp)) for mp, _ in keep]
        if namespaced:
            keys = external_files((images / "files.img").read_bytes())
            if not all(EXTERNAL_FILE.match(key) for key in keys):
                raise RestoreFailed("restore failed: the snapshot names external files it may not")
            if not keys:  # a kernel that closed its stdio: nothing to hand over
                creds = self.supervisor.creds(k)
                return self.criu.restore(images, work, creds, lazy, (), True, shm, kept)
        else:
            keys = [logs.criu_key(snap.kernel_id), logs.criu_key(k.id)]
        keys = list(dict.fromkeys(keys))
        fd = logs.open_for_kernel(k.id, k.run_uid, k.run_gid)
        # One descriptor per name: CRIU closes each after taking it into its fd store.
        fds = [fd] + [os.dup(fd) for _ in keys[1:]]
        try:
            inherit = [*zip(fds, keys, strict=True), *(() if namespaced else extra)]
            result = self.criu.restore(
                images, work, self.supervisor.creds(k), lazy, inherit, namespaced, shm, kept
            )
        finally:
            for f in fds:
                os.close(f)
        where = f" (new namespace, pid {result.pid})" if namespaced else ""
        logs.note(k.id, f"restored snapshot {snap.id}{where}")
        return result


def _not_restored(pid: int, uid: int, not_before: int, namespaced: bool) -> str | None:
    """Why ``pid`` is not the tree a restore just brought back (None: it is)."""
    why = check_restored(pid, uid, not_before)
    if why is None and namespaced:
        if not namespace.is_namespace_init(pid):
            why = f"process {pid} is not PID 1 of a new namespace"
        elif not namespace.same_user_ns(pid):
            why = f"process {pid} is in another user namespace"
    return why


@dataclass(frozen=True)
class Staged:
    """What a restore hands CRIU: images (a hot entry or staged), history, CRIU's work dir."""

    images: Path
    history: Path | None
    work: Path  # the kernel user's: CRIU's logs
    hot: bool
    lazy: bool
    namespaced: bool = False  # a kernel in its own PID + mount namespace: a new PID back
    ports_moved: dict[int, int] = field(default_factory=dict)  # old -> new (ports.py)
    # The hot entry's verification, still running (None: verified already, or no hot entry).
    verified: Future[None] | None = None

    def unverified(self) -> JusnapError | None:
        """Why the images failed their verification, if it has ended so (before the stop)."""
        v = self.verified
        if v is None or not v.done():
            return None
        exc = v.exception()
        if exc is None or isinstance(exc, JusnapError):
            return exc
        return RestoreFailed(f"restore failed: cannot verify the images: {exc}")

    def wait_verified(self) -> None:
        """Raise RestoreFailed unless the images passed their verification (waits for it)."""
        if self.verified is None:
            return
        try:
            self.verified.result()
        except JusnapError:
            raise
        except Exception as exc:
            raise RestoreFailed(f"restore failed: cannot verify the images: {exc}") from exc


def port_map(ports: str, k: Kernel) -> dict[int, int]:
    """Where a snapshot's Jupyter ports (as recorded with it) go in kernel ``k``."""
    return dict(
        zip((int(p) for p in ports.split(",")), map(int, k.ports().split(",")), strict=True)
    )


class Untouched(Exception):
    """A restore failed before the running kernel was stopped."""

    def __init__(self, error: JusnapError) -> None:
        super().__init__(error.message)
        self.error = error


def _check_label(label: object) -> str | None:
    if label is None:
        return None
    if not isinstance(label, str):
        raise InvalidRequest("label must be a string")
    label = label.strip()
    if len(label) > MAX_LABEL:
        raise InvalidRequest(f"label is longer than {MAX_LABEL} characters")
    if any(ord(c) < 32 for c in label):
        raise InvalidRequest("label must not contain control characters")
    return label or None


__all__ = ["TRIGGERS", "Engine", "Forbidden", "RestoreResult", "Skipped"]
