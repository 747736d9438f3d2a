"""The snapshot engine: create, list, restore-with-rollback and delete, one kernel at a time.

The rules that shape this module:

* A failed snapshot never harms the running kernel: CRIU dumps with ``--leave-running`` into a
  scratch directory, and nothing reaches the store or the registry unless the dump succeeded.
* A failed restore never loses the user's state: before the running kernel is touched it is
  snapshotted (``pre-restore``) and the target snapshot is verified; if anything fails after
  the kernel was stopped, the pre-restore snapshot is brought back.
* One operation per kernel at a time (others get :class:`Busy` at once); different kernels
  proceed in parallel.

The API and the CLI are thin layers over :class:`Engine`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import criu as criu_mod
from .config import Settings
from .criu import Criu
from .criu_images import Identity, ImageCheck, needs_bytes
from .errors import (
    Busy,
    Forbidden,
    InvalidRequest,
    JusnapError,
    KernelNotFound,
    KernelNotRunning,
    Refused,
    RestoreFailed,
    SnapshotFailed,
    SnapshotNotFound,
)
from .hooks import HookSet
from .ids import check_kernel_id, check_snapshot_id, new_snapshot_id
from .kernels.channels import (
    IopubMonitor,
    established_peers,
    execute_silently,
    handshake,
    wait_for_peers,
)
from .kernels.supervisor import Supervisor, ports_free
from .lazyrestore import serve_lazily
from .proc import Reaper, check_restored, kill_tree, start_time, ticks_now
from .registry import Kernel, Registry, Snapshot
from .store.local import LocalStore
from .store.service import StoreService

log = logging.getLogger(__name__)

TRIGGERS = ("manual", "auto", "pre-restore")
HISTORY_NAME = "history.sqlite"
MAX_LABEL = 200
# How long a request someone waits for queues behind a running operation on the same kernel
# (typically the automatic snapshot of the cell just run) before it answers "busy".
USER_WAIT = 30.0

ACTION_SCRIPT = """#!/bin/sh
# Run by CRIU as the kernel's user. At post-dump the kernel is still frozen, so the copy of its
# history database matches exactly what the restored process will expect on disk. The copy
# runs without the capabilities the daemon lent CRIU.
[ "$CRTOOLS_SCRIPT_ACTION" = "post-dump" ] || exit 0
[ -n "$JUSNAP_HISTORY_SRC" ] || exit 0
exec setpriv --inh-caps=-all --ambient-caps=-all -- \\
    cp -- "$JUSNAP_HISTORY_SRC" "$JUSNAP_HISTORY_DST"
"""

ADMIN = None  # owner value meaning "any owner" (root, or the daemon itself)


@dataclass(frozen=True)
class Skipped:
    """An automatic snapshot that the cooldown suppressed."""

    kernel_id: str
    reason: str
    retry_in: float

    def public(self) -> dict[str, Any]:
        return {"status": "skipped", "kernel_id": self.kernel_id, "reason": self.reason,
                "retry_in": round(self.retry_in, 3)}  # fmt: skip


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
    def __init__(self, settings: Settings, hooks: HookSet | None = None) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir
        self.hooks = hooks or HookSet()
        self.reaper = Reaper()
        st = settings.jusnap.store
        self.store = LocalStore(
            self.state_dir / "snapshots", level=st.compression_level, threads=st.threads
        )
        self.storage = StoreService(self.store, st)  # retention, gc, usage, migration
        c = settings.jusnap.criu
        self.criu = Criu(
            binary=c.binary,
            reaper=self.reaper,
            ghost_limit_bytes=settings.ghost_limit_bytes,
            file_locks=c.file_locks,
            dump_timeout=c.dump_timeout,
            restore_timeout=c.restore_timeout,
            unprivileged=c.unprivileged,
        )
        self.registry: Registry
        self.supervisor: Supervisor
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._ops: dict[str, str] = {}  # kernel id -> operation in progress
        self._monitors: dict[str, IopubMonitor] = {}
        self._live: dict[str, dict[str, Any]] = {}
        self.work_dir = self.state_dir / "work"
        self.action_script = self.state_dir / "bin" / "criu-action"

    # ---- life cycle ----------------------------------------------------------------------
    def start(self) -> Engine:
        sd = self.state_dir
        sd.mkdir(parents=True, exist_ok=True)
        sd.chmod(0o711)
        for sub, mode in (("work", 0o711), ("kernels", 0o711), ("bin", 0o755)):
            (sd / sub).mkdir(exist_ok=True)
            (sd / sub).chmod(mode)
        self.store.ensure()
        self._install_action_script()
        self.registry = Registry(sd / "jusnap.db")
        (sd / "jusnap.db").chmod(0o600)
        self.reaper.start()
        self.supervisor = Supervisor(self.settings, self.registry, self.reaper)
        self._recover()
        for k in self.supervisor.adopt_all():
            if k.status == "running":
                self._watch(k)
        return self

    def close(self) -> None:
        for m in self._monitors.values():
            m.stop()
        self.reaper.stop()

    def _install_action_script(self) -> None:
        tmp = self.action_script.with_suffix(".tmp")
        tmp.write_text(ACTION_SCRIPT)
        tmp.chmod(0o755)
        tmp.replace(self.action_script)

    def _recover(self) -> None:
        """Undo whatever a crash left half done."""
        for entry in self.work_dir.iterdir():
            shutil.rmtree(entry, ignore_errors=True)
        known = self.registry.all_snapshot_ids()
        removed = self.store.recover(known)
        if removed:
            log.warning("removed %d incomplete snapshot(s) left by a crash", len(removed))
        for sid in known:
            if not self.store.exists(sid):
                log.warning("snapshot %s has no images on disk; forgetting it", sid)
                self.registry.delete_snapshot(sid)
        self.storage.start(self.registry)  # migrates an older store layout

    # ---- locking ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _exclusive(self, kernel_id: str, what: str, wait: float = 0.0) -> Iterator[None]:
        """One operation per kernel. Callers a person is waiting for (``wait`` > 0) queue
        briefly behind, e.g., the automatic snapshot of the cell just run; others fail fast."""
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

    @contextlib.contextmanager
    def _scratch(self) -> Iterator[Path]:
        """A directory for one operation, owned by root: the kernel's user can enter it but
        never rename, replace or add anything in it; what CRIU may write goes in
        :meth:`_user_dir` subdirectories."""
        path = self.work_dir / new_snapshot_id()
        path.mkdir(mode=0o711)
        path.chmod(0o711)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def _user_dir(path: Path, uid: int, gid: int) -> Path:
        path.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.chown(path, uid, gid)
        return path

    def _identity(self, k: Kernel) -> Identity:
        creds = self.supervisor.creds(k)
        return Identity(k.run_uid, k.run_gid, frozenset(creds.groups) | {k.run_gid})

    # ---- kernels ---------------------------------------------------------------------------
    def _check_owner(self, owner_uid: int | None, actual: int, what: str) -> None:
        if owner_uid is not None and owner_uid != actual:
            # Same answer as for an unknown id: do not reveal other users' ids.
            raise (KernelNotFound if what == "kernel" else SnapshotNotFound)(f"no such {what}")

    def kernel(self, kernel_id: str, owner_uid: int | None = ADMIN) -> Kernel:
        check_kernel_id(kernel_id)
        k = self.registry.get_kernel(kernel_id)
        if k is None:
            raise KernelNotFound(f"no such kernel: {kernel_id}")
        self._check_owner(owner_uid, k.owner_uid, "kernel")
        self.supervisor.refresh(k)
        k.execution_state = (
            self._live.get(k.id, {}).get("execution_state") if k.status == "running" else None
        )
        k.execution_count = self._live.get(k.id, {}).get("execution_count", k.execution_count)
        k.operation = self._ops.get(k.id)
        return k

    def kernels(self, owner_uid: int | None = ADMIN) -> list[Kernel]:
        return [
            self.kernel(k.id)
            for k in self.registry.kernels()
            if owner_uid is None or k.owner_uid == owner_uid
        ]

    def launch_kernel(
        self,
        owner_uid: int,
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        notebook_path: str | None = None,
        connection: dict[str, Any] | None = None,
        kernel_id: str | None = None,
    ) -> Kernel:
        if kernel_id is not None:
            check_kernel_id(kernel_id)
            existing = self.registry.get_kernel(kernel_id)
            if existing is not None:
                self._check_owner(owner_uid, existing.owner_uid, "kernel")
                raise InvalidRequest(f"kernel {kernel_id} exists already")
        if env is not None and not (
            isinstance(env, dict)
            and all(isinstance(a, str) and isinstance(b, str) for a, b in env.items())
        ):
            raise InvalidRequest("env must map strings to strings")
        if connection is None and notebook_path:
            connection = self._notebook_connection(owner_uid, notebook_path)
        k = self.supervisor.create(owner_uid, argv, env, cwd, notebook_path, connection, kernel_id)
        if notebook_path:
            self.registry.set_notebook_connection(owner_uid, notebook_path, k.connection)
        self._watch(k)
        return k

    def _notebook_connection(self, owner_uid: int, notebook_path: str) -> dict[str, Any] | None:
        """The notebook's previous connection, so that its snapshots fit the new kernel.

        None (new ports) when there is none yet or its ports are taken, e.g. by another kernel
        of the same notebook that still runs: that notebook's older snapshots then no longer fit.
        """
        conn = self.registry.notebook_connection(owner_uid, notebook_path)
        if conn is None:
            return None
        ports = {
            conn.get(p)
            for p in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
        }
        in_use = any(
            k.status == "running" and ports & set(k.connection.values())
            for k in self.registry.kernels()
        )
        if in_use or not ports_free(conn):
            log.warning(
                "ports of notebook %s are taken; its older snapshots will not fit the new kernel",
                notebook_path,
            )
            return None
        return conn

    def _unwatch(self, k: Kernel) -> None:
        old = self._monitors.pop(k.id, None)
        if old:
            old.stop()

    def _watch(self, k: Kernel) -> None:
        self._unwatch(k)
        live = self._live.setdefault(k.id, {})
        live["execution_count"] = k.execution_count

        def update(change: dict[str, Any]) -> None:
            live.update(change)

        m = IopubMonitor(k.connection, update)
        self._monitors[k.id] = m
        m.start()

    def restart_kernel(self, kernel_id: str, owner_uid: int | None = ADMIN) -> Kernel:
        k = self.kernel(kernel_id, owner_uid)
        with self._exclusive(k.id, "restart"):
            self.supervisor.stop(k)
            self.supervisor.start(k)
            self._live[k.id] = {"execution_count": 0}
            self._watch(k)
        return k

    def signal_kernel(self, kernel_id: str, signame: str, owner_uid: int | None = ADMIN) -> None:
        self.supervisor.signal(self.kernel(kernel_id, owner_uid), signame)

    def interrupt_kernel(self, kernel_id: str, owner_uid: int | None = ADMIN) -> None:
        self.signal_kernel(kernel_id, "SIGINT", owner_uid)

    def shutdown_kernel(
        self, kernel_id: str, owner_uid: int | None = ADMIN, forget: bool = True
    ) -> None:
        """Stop the kernel; its snapshots stay (they belong to the notebook) unless cleared."""
        k = self.kernel(kernel_id, owner_uid)
        with self._exclusive(k.id, "shutdown"):
            self._unwatch(k)
            self.supervisor.terminate(k, grace=self.settings.graceful.shutdown_timeout)
            if forget:
                self.supervisor.remove(k)

    def set_auto(
        self,
        kernel_id: str,
        owner_uid: int | None = ADMIN,
        enabled: bool | None = None,
        cooldown: float | None = None,
    ) -> Kernel:
        k = self.kernel(kernel_id, owner_uid)
        if enabled is not None:
            k.auto_snapshot = bool(enabled)
        if cooldown is not None:
            if not 0 <= cooldown <= 86400:
                raise InvalidRequest("cooldown must be between 0 and 86400 seconds")
            k.cooldown = float(cooldown)
        self.registry.put_kernel(k)
        return k

    def auto_settings(self, k: Kernel) -> dict[str, Any]:
        ip = self.settings.jusnap.ipython
        return {
            "enabled": ip.auto_snapshot if k.auto_snapshot is None else k.auto_snapshot,
            "cooldown": float(ip.cooldown if k.cooldown is None else k.cooldown),
        }

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
        k = self.kernel(kernel_id, owner_uid)
        if trigger == "auto":
            skipped = self._auto_skipped(k)
            if skipped is not None:
                return skipped
        try:
            with self._exclusive(k.id, "snapshot", wait=0.0 if trigger == "auto" else USER_WAIT):
                snap = self._snapshot_locked(k, trigger, label, execution_count)
        except Busy:
            if trigger == "auto":
                return Skipped(k.id, "another operation is running", 0.0)
            raise
        self._retain(snap)
        return snap

    def _retain(self, snap: Snapshot) -> None:
        """Retention (and gc) after a snapshot, outside the kernel's lock; never fails it."""
        try:
            self.storage.after_snapshot(self.registry, snap, lambda kid: kid in self._ops)
        except Exception:
            log.exception("retention after snapshot %s failed", snap.id)

    def check_auto(self, kernel_id: str, owner_uid: int | None = ADMIN) -> Skipped | None:
        """Why an automatic snapshot of the kernel would be skipped now (None: it would run)."""
        k = self.kernel(kernel_id, owner_uid)
        skipped = self._auto_skipped(k)
        if skipped is None and k.id in self._ops:
            return Skipped(k.id, "another operation is running", 0.0)
        return skipped

    def _auto_skipped(self, k: Kernel) -> Skipped | None:
        auto = self.auto_settings(k)
        if not auto["enabled"]:
            return Skipped(k.id, "automatic snapshots are off for this kernel", 0.0)
        cooldown = auto["cooldown"]
        if k.pid is not None:
            policy = self.hooks.auto_policy(self.hooks.for_pid(k.pid), k.pid)
            if policy is not None and not policy.enabled:
                return Skipped(k.id, "automatic snapshots are off for GPU kernels", 0.0)
            if policy is not None:
                cooldown = max(cooldown, policy.min_cooldown)
        last = self._last_snapshot_time(k)
        wait = last + cooldown - time.time() if last else 0.0
        if wait > 0:
            return Skipped(k.id, "cooldown", wait)
        return None

    def _last_snapshot_time(self, k: Kernel) -> float | None:
        live = self._live.get(k.id, {})
        if "last_snapshot_at" in live:
            return float(live["last_snapshot_at"])
        snaps = self.registry.snapshots_of(k.id, k.owner_uid, None)
        return snaps[0].created_at if snaps else None

    def _snapshot_locked(
        self, k: Kernel, trigger: str, label: str | None, execution_count: int | None = None
    ) -> Snapshot:
        if not self.supervisor.alive(k):
            raise KernelNotRunning(
                f"kernel {k.id} is not running; restart it or restore a snapshot"
            )
        assert k.pid is not None
        sid = new_snapshot_id()
        created = time.time()
        active = self.hooks.for_pid(k.pid)
        creds = self.supervisor.creds(k)
        if execution_count is None:
            execution_count = self._live.get(k.id, {}).get("execution_count", k.execution_count)
        with self._scratch() as scratch:
            images = self._user_dir(scratch / "img", k.run_uid, k.run_gid)
            work = self._user_dir(scratch / "criu", k.run_uid, k.run_gid)
            env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
            history_copy = work / HISTORY_NAME
            if k.history_file:
                env.update(JUSNAP_HISTORY_SRC=k.history_file, JUSNAP_HISTORY_DST=str(history_copy))
            self._prepare(k, active)
            try:
                t_hooks = time.monotonic()
                with self.hooks.around_dump(k.pid, active) as hook_meta:
                    result = self.criu.dump(
                        k.pid, images, work, creds, str(self.action_script), env
                    )
                hooked_seconds = time.monotonic() - t_hooks
            except JusnapError:
                raise
            except Exception as exc:  # a hook's own failure
                raise SnapshotFailed(f"snapshot failed: {exc}") from exc
            frozen = criu_mod.frozen_seconds(images) or result.seconds
            if active:
                # A hooked kernel (e.g. a locked CUDA context) is stalled from the hook's entry
                # to its exit, not only while CRIU holds it.
                frozen = max(frozen, hooked_seconds)
            extra = {HISTORY_NAME: history_copy} if history_copy.exists() else {}
            # Every file is read once, from the user's directory, into root-only storage; the
            # check sees exactly those bytes, before the snapshot is committed.
            size = self.store.commit(
                sid, images, extra, owner=k.owner_uid,
                check=ImageCheck(self._identity(k)), file_owner=k.run_uid,
            )  # fmt: skip
        snap = Snapshot(
            id=sid,
            kernel_id=k.id,
            owner_uid=k.owner_uid,
            notebook_path=k.notebook_path,
            created_at=created,
            trigger=trigger,
            label=label,
            size_bytes=size,
            frozen_seconds=frozen,
            execution_count=execution_count,
            pid=k.pid,
            ports=k.ports(),
            has_history=bool(extra),
            hooks=hook_meta,
        )
        try:
            self.registry.add_snapshot(snap)
        except Exception:
            self.store.delete(sid)
            raise
        self._live.setdefault(k.id, {})["last_snapshot_at"] = created
        log.info(
            "snapshot %s of kernel %s (%s, %.3fs frozen, %d bytes)",
            sid,
            k.id,
            trigger,
            frozen,
            size,
        )
        return snap

    def _prepare(self, k: Kernel, active: list[Any]) -> None:
        """Run the hooks' preparation code in the kernel, only if it is idle right now."""
        assert k.pid is not None
        codes = self.hooks.prepare_code(active, k.pid)
        if not codes or self._live.get(k.id, {}).get("execution_state") != "idle":
            return
        for code in codes:
            if not execute_silently(k.connection, code, timeout=10.0):
                log.warning("kernel %s: preparation before the snapshot did not finish", k.id)

    def snapshot_info(self, snapshot_id: str, owner_uid: int | None = ADMIN) -> Snapshot:
        check_snapshot_id(snapshot_id)
        s = self.registry.get_snapshot(snapshot_id)
        if s is None:
            raise SnapshotNotFound(f"no such snapshot: {snapshot_id}")
        self._check_owner(owner_uid, s.owner_uid, "snapshot")
        return s

    def list_snapshots(self, kernel_id: str, owner_uid: int | None = ADMIN) -> list[Snapshot]:
        k = self.kernel(kernel_id, owner_uid)
        return self.registry.snapshots_of(k.id, k.owner_uid, k.notebook_path)

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
        with self._exclusive(s.kernel_id, "delete", wait=USER_WAIT):
            self.registry.delete_snapshot(s.id)
            self.store.delete(s.id)

    def clear(self, kernel_id: str, owner_uid: int | None = ADMIN) -> int:
        snaps = self.list_snapshots(kernel_id, owner_uid)
        with self._exclusive(kernel_id, "clear", wait=USER_WAIT):
            for s in snaps:
                self.registry.delete_snapshot(s.id)
                self.store.delete(s.id)
        return len(snaps)

    # ---- restore -------------------------------------------------------------------------------
    def restore(
        self, snapshot_id: str, owner_uid: int | None = ADMIN, into: str | None = None
    ) -> RestoreResult:
        snap = self.snapshot_info(snapshot_id, owner_uid)
        k = self.kernel(into or snap.kernel_id, owner_uid)
        if snap.ports != k.ports():
            raise Refused(
                "this snapshot was taken with other kernel ports than the kernel's current ones;"
                " it cannot be restored into this kernel"
            )
        self.hooks.preflight_restore(snap.hooks)
        t0 = time.monotonic()
        with self._exclusive(k.id, "restore", wait=USER_WAIT):
            pre: Snapshot | None = None
            if self.supervisor.alive(k):
                try:
                    pre = self._snapshot_locked(k, "pre-restore", None)
                except JusnapError as exc:
                    raise RestoreFailed(
                        "restore not attempted: could not save the current state first"
                        f" ({exc.message})",
                        rolled_back=True,
                    ) from None
            # Clients connected now (the notebook server, and our own IOPub watcher) reconnect
            # by themselves after the restore; count them so the restore can wait for them.
            peers = established_peers(k.connection["iopub_port"])
            try:
                with self._staged(k, snap) as staged:
                    criu_s, hs_s = self._replace(k, snap, staged, peers)
            except _Untouched as exc:
                # Nothing was stopped: the kernel runs on as it was; its safety copy is moot.
                if pre is not None:
                    self.registry.delete_snapshot(pre.id)
                    self.store.delete(pre.id)
                raise RestoreFailed(
                    f"{exc.error.message}; the kernel was not touched", rolled_back=True
                ) from None
            except JusnapError as exc:
                log.error("restore of %s into %s failed: %s", snap.id, k.id, exc.message)
                if pre is None:
                    raise RestoreFailed(exc.message, rolled_back=False) from None
                try:
                    with self._staged(k, pre) as staged:
                        self._replace(k, pre, staged, peers)
                except (JusnapError, _Untouched) as exc2:
                    why = exc2.error.message if isinstance(exc2, _Untouched) else exc2.message
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
        return RestoreResult(snap, self.kernel(k.id), pre, time.monotonic() - t0, criu_s, hs_s)

    @contextlib.contextmanager
    def _staged(self, k: Kernel, snap: Snapshot) -> Iterator[Path]:
        """Verify and copy a snapshot's images where CRIU (as the kernel's uid) can read them
        but the kernel's user cannot change them: root's files in root's directories, readable
        through the kernel's group; then check the very files CRIU will read.

        This happens before the running kernel is stopped: a damaged or crafted snapshot fails
        here, with the kernel untouched (raised as :class:`_Untouched`).
        """
        with self._scratch() as scratch:
            try:
                images = self._readable_dir(scratch / "img", k.run_gid)
                self.store.stage_out(snap.id, images, 0, k.run_gid, skip={HISTORY_NAME}, mode=0o440)
                self._check_staged(k, images)
                if snap.has_history and k.history_file:
                    self.store.stage_out(
                        snap.id, self._readable_dir(scratch / "history", k.run_gid), 0,
                        k.run_gid, only={HISTORY_NAME}, mode=0o440,
                    )  # fmt: skip
                self._user_dir(scratch / "criu", k.run_uid, k.run_gid)
            except JusnapError as exc:
                raise _Untouched(exc) from None
            yield scratch

    @staticmethod
    def _readable_dir(path: Path, gid: int) -> Path:
        path.mkdir(mode=0o750)
        if os.geteuid() == 0:
            os.chown(path, 0, gid)
        path.chmod(0o750)
        return path

    def _check_staged(self, k: Kernel, images: Path) -> None:
        check = ImageCheck(self._identity(k))
        for path in sorted(images.iterdir()):
            check.feed(path.name, path.read_bytes() if needs_bytes(path.name) else None)
        check.done()

    def _replace(self, k: Kernel, snap: Snapshot, scratch: Path, peers: int) -> tuple[float, float]:
        """Stop the kernel and bring ``snap`` back in its place. On failure it stays stopped.

        ``peers`` IOPub clients are waited for after the handshake: a cell they run before
        their subscription is back would publish its output to nobody.
        """
        self._unwatch(k)
        self.supervisor.stop(k)
        restored_pid: int | None = None
        try:
            creds = self.supervisor.creds(k)
            if snap.has_history and k.history_file:
                # As the kernel's user, into the same inode: SQLite treats a changed inode as
                # "moved" and turns the restored kernel's history read-only.
                self.supervisor.copy_as_user(
                    creds, scratch / "history" / HISTORY_NAME, Path(k.history_file)
                )
            if start_time(snap.pid) is not None:
                raise RestoreFailed(f"restore failed: PID {snap.pid} is in use by another process")
            images, lazy = scratch / "img", False
            if self.storage.lazy_for(snap, self.criu.lazy_capable(creds)):
                timeout = max(600.0, self.criu.restore_timeout * 5)
                images, lazy = serve_lazily(self.criu, images, self.work_dir, creds, timeout), True
            not_before = ticks_now()
            # The lazy-pages server listens in its work directory (its images'), and the
            # restore must look there: only privileged CRIU restores lazily (root's files).
            work = images if lazy else scratch / "criu"
            result = self.criu.restore(images, work, creds, lazy=lazy)
            why = check_restored(snap.pid, k.run_uid, not_before)
            if why is not None:
                log.critical("restore of %s into %s: %s; not adopting it", snap.id, k.id, why)
                raise RestoreFailed(f"restore failed: {why}")
            restored_pid = snap.pid
            self.hooks.after_restore(restored_pid, snap.hooks)
            k.pid, k.started, k.status = restored_pid, start_time(restored_pid), "running"
            self.registry.put_kernel(k)
            hs = handshake(k.connection, self.settings.jusnap.ipython.handshake_timeout)
            live = {"execution_count": snap.execution_count, "last_snapshot_at": time.time()}
            self._live[k.id] = live
            self._watch(k)
            if not wait_for_peers(k.connection["iopub_port"], peers, timeout=3.0):
                log.warning("kernel %s: not every client reconnected after the restore", k.id)
        except Exception as exc:
            if restored_pid is not None:
                started = start_time(restored_pid)
                kill_tree(restored_pid, started)
                self.reaper.wait_gone(restored_pid, started, 10)
            k.status = "dead"
            self.registry.put_kernel(k)
            if isinstance(exc, JusnapError):
                raise
            raise RestoreFailed(f"restore failed: {exc}") from exc
        k.execution_count = snap.execution_count
        self.registry.put_kernel(k)
        return result.seconds, hs


class _Untouched(Exception):
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
