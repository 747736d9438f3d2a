"""Kernels as a service: who they are, what they are doing, and their life cycle.

The engine (``snapshots.py``) asks this service for a kernel and works on it; the API's
kernel endpoints call it directly. It keeps the registry's records and the live state the
daemon learns from each kernel's IOPub (busy/idle, execution count, last snapshot), and it
takes the same per-kernel operation lock as snapshots and restores, so a restart never runs
in the middle of a dump.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from ..autosnap import AutoSettings, check_cooldown, effective
from ..config import Settings
from ..errors import InvalidRequest, KernelNotFound, SnapshotNotFound
from ..ids import check_kernel_id
from ..proc import Reaper
from ..registry import Kernel, Registry
from .channels import IopubMonitor, Window, ping_control
from .locks import USER_WAIT, OperationLocks
from .logs import LogKeeper
from .supervisor import PORT_KEYS, LaunchRequest, Supervisor, ports_free

log = logging.getLogger(__name__)

ADMIN = None  # owner value meaning "any owner" (root, or the daemon itself)


def check_owner(owner_uid: int | None, actual: int, what: str) -> None:
    if owner_uid is not None and owner_uid != actual:
        # Same answer as for an unknown id: do not reveal other users' ids.
        raise (KernelNotFound if what == "kernel" else SnapshotNotFound)(f"no such {what}")


class KernelService:
    def __init__(
        self, settings: Settings, registry: Registry, reaper: Reaper, locks: OperationLocks
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.locks = locks
        self.supervisor = Supervisor(settings, registry, reaper)
        self._monitors: dict[str, IopubMonitor] = {}
        self._live: dict[str, dict[str, Any]] = {}
        self._log_keeper = LogKeeper(self.supervisor.logs, lambda: list(self._monitors))

    # ---- life of the service ---------------------------------------------------------------
    def adopt_all(self) -> None:
        """After a daemon restart: keep watching the kernels that still run."""
        for k in self.supervisor.adopt_all():
            if k.status == "running":
                self.watch(k)
        self._log_keeper.start()

    def close(self) -> None:
        self._log_keeper.stop()
        for m in self._monitors.values():
            m.stop()

    # ---- lookups -------------------------------------------------------------------------------
    def get(self, kernel_id: str, owner_uid: int | None = ADMIN) -> Kernel:
        check_kernel_id(kernel_id)
        k = self.registry.get_kernel(kernel_id)
        if k is None:
            raise KernelNotFound(f"no such kernel: {kernel_id}")
        check_owner(owner_uid, k.owner_uid, "kernel")
        self.supervisor.refresh(k)
        live = self._live.get(k.id, {})
        k.execution_state = live.get("execution_state") if k.status == "running" else None
        k.execution_count = live.get("execution_count", k.execution_count)
        k.operation = self.locks.current(k.id)
        return k

    def list(self, owner_uid: int | None = ADMIN) -> list[Kernel]:
        return [
            self.get(k.id)
            for k in self.registry.kernels()
            if owner_uid is None or k.owner_uid == owner_uid
        ]

    # ---- live state ----------------------------------------------------------------------------
    def live(self, kernel_id: str) -> dict[str, Any]:
        """What the daemon knows of a running kernel (execution state and count, last
        snapshot time); the engine updates it around snapshots and restores."""
        return self._live.setdefault(kernel_id, {})

    def reset_live(self, kernel_id: str, **values: Any) -> None:
        self._live[kernel_id] = dict(values)

    def watch(self, k: Kernel) -> None:
        self.unwatch(k)
        live = self.live(k.id)
        live["execution_count"] = k.execution_count
        m = IopubMonitor(k.connection, live.update)
        self._monitors[k.id] = m
        m.start()

    def window(self, kernel_id: str, start: float, end: float, settle: float = 0.02) -> Window:
        """What the kernel did between ``start`` and ``end`` (see IopubMonitor.window). An idle
        kernel publishes nothing: unless a message from after ``end`` arrives within ``settle``
        seconds, its control channel is asked for a status to catch up on (0: at once, for a
        kernel expected to be idle, which would only make the caller wait)."""
        m = self._monitors.get(kernel_id)
        if m is None:
            return Window(count=None, quiet=False)
        time.sleep(max(0.0, end - time.time()))  # the ping's status must come after ``end``
        if not m.caught_up(end, settle=settle):
            ping_control(m.conn)
        return m.window(start, end, settle=1.0)

    def settled(self, kernel_id: str, timeout: float = 1.0) -> tuple[int | None, bool] | None:
        """The kernel's cell count and whether a cell runs, as of now: the watcher reads
        IOPub in a thread of its own and may be behind (a cell that ended a moment ago still
        running, or not counted yet). A control ping makes even an idle kernel publish a
        status stamped after now; once it has arrived every message before it has been read.
        None: nobody watches the kernel, or its watcher did not catch up within ``timeout``."""
        m = self._monitors.get(kernel_id)
        if m is None:
            return None
        now = time.time()
        if not m.caught_up(now, settle=0.0):
            ping_control(m.conn, timeout)
            if not m.caught_up(now, settle=timeout):
                return None
        return self.live(kernel_id).get("execution_count"), m.cell_running()

    def cell_ended(self, kernel_id: str, count: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the end of cell ``count`` (see IopubMonitor.cell_ended);
        False at once for a kernel nobody watches."""
        m = self._monitors.get(kernel_id)
        return m is not None and m.cell_ended(count, timeout)

    def unwatch(self, k: Kernel, wait: bool = True) -> IopubMonitor | None:
        """Stop watching the kernel; returns the stopped watcher (``wait=False``: its thread
        may still be closing its socket, see :meth:`IopubMonitor.stop`)."""
        old = self._monitors.pop(k.id, None)
        if old:
            old.stop(wait)
        return old

    # ---- life cycle ----------------------------------------------------------------------------
    def launch(self, owner_uid: int, **options: Any) -> Kernel:
        """Start a kernel for ``owner_uid``; ``options`` are :class:`LaunchRequest`'s fields."""
        request = LaunchRequest(owner_uid, **options)
        kernel_id, env, notebook_path = request.kernel_id, request.env, request.notebook_path
        if kernel_id is not None:
            check_kernel_id(kernel_id)
            existing = self.registry.get_kernel(kernel_id)
            if existing is not None:
                check_owner(owner_uid, existing.owner_uid, "kernel")
                raise InvalidRequest(f"kernel {kernel_id} exists already")
        if env is not None and not (
            isinstance(env, dict)
            and all(isinstance(a, str) and isinstance(b, str) for a, b in env.items())
        ):
            raise InvalidRequest("env must map strings to strings")
        run_uid, _ = self.supervisor.run_as(owner_uid)
        if request.connection is None and notebook_path:
            connection = self._notebook_connection(run_uid, notebook_path)
            request = dataclasses.replace(request, connection=connection)
        k = self.supervisor.create(request)
        if notebook_path:
            self.registry.set_notebook_connection(k.owner_uid, notebook_path, k.connection)
        self.watch(k)
        return k

    def _notebook_connection(self, owner_uid: int, notebook_path: str) -> dict[str, Any] | None:
        """The notebook's previous connection, so that its snapshots fit the new kernel.

        None (new ports) when there is none yet or its ports are taken, e.g. by another kernel
        of the same notebook that still runs: that notebook's older snapshots then no longer fit.
        """
        conn = self.registry.notebook_connection(owner_uid, notebook_path)
        if conn is None:
            return None
        ports = {conn.get(p) for p in PORT_KEYS}
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

    def restart(self, kernel_id: str, owner_uid: int | None = ADMIN) -> Kernel:
        k = self.get(kernel_id, owner_uid)
        with self.locks.exclusive(k.id, "restart"):
            self.supervisor.stop(k)
            self.supervisor.start(k)
            self.reset_live(k.id, execution_count=0)
            self.watch(k)
        return k

    def signal(self, kernel_id: str, signame: str, owner_uid: int | None = ADMIN) -> None:
        self.supervisor.signal(self.get(kernel_id, owner_uid), signame)

    def interrupt(self, kernel_id: str, owner_uid: int | None = ADMIN) -> None:
        self.signal(kernel_id, "SIGINT", owner_uid)

    def shutdown(self, kernel_id: str, owner_uid: int | None = ADMIN, forget: bool = True) -> None:
        """Stop the kernel; its snapshots stay (they belong to the notebook) unless cleared."""
        k = self.get(kernel_id, owner_uid)
        # Closing a notebook while its snapshot runs waits for the snapshot (which is kept),
        # rather than answering "busy" to Jupyter, which would leave the session half closed.
        with self.locks.exclusive(k.id, "shutdown", wait=USER_WAIT):
            self.unwatch(k)
            self.supervisor.terminate(k, grace=self.settings.graceful.shutdown_timeout)
            if forget:
                self.supervisor.remove(k)

    def logs(
        self, kernel_id: str, owner_uid: int | None = ADMIN, limit: int = 64 * 1024
    ) -> tuple[bytes, bool]:
        """The newest ``limit`` bytes of the kernel's stdout and stderr (and whether older
        output exists): what it printed before a crash, which no notebook shows."""
        k = self.get(kernel_id, owner_uid)
        return self.supervisor.logs.read(k.id, limit)

    # ---- automatic snapshots ------------------------------------------------------------------
    def set_auto(
        self,
        kernel_id: str,
        owner_uid: int | None = ADMIN,
        enabled: bool | None = None,
        cooldown: float | None = None,
    ) -> Kernel:
        k = self.get(kernel_id, owner_uid)
        if enabled is not None:
            k.auto_snapshot = bool(enabled)
        if cooldown is not None:
            k.cooldown = check_cooldown(cooldown)
        self.registry.put_kernel(k)
        return k

    def auto_settings(self, k: Kernel) -> AutoSettings:
        ip = self.settings.jusnap.ipython
        return effective(ip.auto_snapshot, ip.cooldown, k.auto_snapshot, k.cooldown)
