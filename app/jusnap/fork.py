"""Fork: a snapshot restored as a second live kernel, beside the kernel it was taken from.

The original is never touched (not even frozen): a fork restores a *stored* snapshot. What
makes the copy a kernel of its own (docs/fork-design.md, docs/fork.md):

* its own PID: a kernel launched in its own PID + mount namespace comes back as PID 1 of a
  new namespace (``Criu.restore(namespaced=True)``); a snapshot of a plain kernel forks only
  while its PID is free (else 422, nothing done);
* its own ports: every port the dump serves is moved in the staged ``files.img``
  (``ports.py``), the five Jupyter ones to a new connection file's (same signing key: the key
  is in the copy's memory), the others (debugpy, the user's own servers) to fresh ones,
  reported as ``ports_moved``;
* its own identity: the fixup (``kernels/fixup.py``) gives it a new Jupyter session id,
  reseeds its RNGs (``reseed``), repoints its debugger socket and connection file;
* its own files where Jusnap keeps them: log, connection file, and a copy of the snapshot's
  history database handed to CRIU as an inherited descriptor (the original's file is never
  opened by the copy).

It reuses the engine's staging, checks and restore pieces (``snapshots.py``). Any failure
kills the copy and removes its record and directory. The fork is a kernel like any other from
then on: its snapshots are its own list, and deleting either kernel or its snapshots does not
touch the other (the content-addressed store shares their chunks).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InvalidRequest, KernelExists, Refused, RestoreFailed
from .ids import check_kernel_id, new_kernel_id
from .kernels.channels import handshake
from .kernels.locks import USER_WAIT
from .kernels.supervisor import new_connection
from .proc import kill_tree, start_time
from .registry import Kernel, Snapshot

if TYPE_CHECKING:
    from .snapshots import Engine, Staged

_PID_IN_USE = (
    "this snapshot is of a kernel launched without its own PID namespace, and its process id"
    " {pid} is in use (its kernel still runs): it can be forked once that kernel is stopped"
)

log = logging.getLogger(__name__)

HISTORY_NAME = "history.sqlite"


@dataclass(frozen=True)
class ForkResult:
    kernel: Kernel
    snapshot: Snapshot
    ports_moved: dict[int, int]
    seconds: float
    criu_seconds: float

    def public(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel.public(),
            "parent_kernel_id": self.snapshot.kernel_id,
            "parent_snapshot_id": self.snapshot.id,
            "ports_moved": {str(old): new for old, new in sorted(self.ports_moved.items())},
            "seconds": round(self.seconds, 4),
            "criu_seconds": round(self.criu_seconds, 4),
        }


def fork(
    engine: Engine,
    snapshot_id: str,
    owner_uid: int | None,
    kernel_id: str | None = None,
    notebook_path: str | None = None,
    reseed: bool = True,
) -> ForkResult:
    """Restore ``snapshot_id`` as a new kernel (``kernel_id``, or a new id) owned by the
    snapshot's owner, running as the same uid, on ports of its own."""
    t0 = time.monotonic()
    snap = engine.snapshot_info(snapshot_id, owner_uid)  # 404 for unknown / not yours
    if kernel_id is not None:
        check_kernel_id(kernel_id)
        existing = engine.registry.get_kernel(kernel_id)
        if existing is not None:
            if owner_uid is not None and existing.owner_uid != owner_uid:
                raise KernelExists("that kernel id is taken")
            raise KernelExists(f"kernel {kernel_id} exists already")
    if notebook_path is not None and not isinstance(notebook_path, str):
        raise InvalidRequest("notebook_path must be a string")
    key = engine.snapshot_key(snap)
    if key is None:
        raise Refused(
            "this snapshot is older than Jusnap's record of connection keys and its kernel is"
            " gone: it cannot be forked"
        )
    if not snap.namespaced and start_time(snap.pid) is not None:
        raise Refused(_PID_IN_USE.format(pid=snap.pid))
    engine.hooks.preflight_restore(snap.hooks, beside=True)  # a fork needs room beside it
    k = _new_kernel(engine, snap, kernel_id or new_kernel_id(), notebook_path, key)
    try:
        # The original's lock (not its process): its hot entry, which the fork may restore
        # from, is neither trimmed nor replaced meanwhile; its snapshots wait or are retried.
        with (
            engine.locks.exclusive(k.id, "fork"),
            engine.locks.exclusive(snap.kernel_id, "fork", wait=USER_WAIT),
        ):
            moved, criu_s = _bring_up(engine, k, snap, reseed)
    except BaseException:
        _discard(engine, k)
        raise
    engine.retain_spared(k)  # the original's snapshots were spared while it was locked
    if notebook_path:
        engine.registry.set_notebook_connection(k.owner_uid, notebook_path, k.connection)
    log.info("kernel %s forked from snapshot %s of kernel %s", k.id, snap.id, snap.kernel_id)
    return ForkResult(engine.kernels.get(k.id), snap, moved, time.monotonic() - t0, criu_s)


def _new_kernel(
    engine: Engine, snap: Snapshot, kernel_id: str, notebook_path: str | None, key: str
) -> Kernel:
    """The fork's record (stopped until it answers) and its private directory."""
    sup = engine.supervisor
    uid, gid = sup.run_as(snap.owner_uid)
    origin = engine.registry.get_kernel(snap.kernel_id)
    conn = {**new_connection(), "key": key}
    if origin is not None:
        conn["kernel_name"] = origin.connection.get("kernel_name", "python3")
    k = Kernel(
        id=kernel_id,
        owner_uid=snap.owner_uid,
        run_uid=uid,
        run_gid=gid,
        pid=None,
        started=None,
        status="stopped",
        # A restart of the fork starts what the original started (a fresh kernel).
        argv=list(origin.argv) if origin else engine.settings.kernel_argv(),
        env=dict(origin.env) if origin else {},
        cwd=origin.cwd if origin else sup.home_dir(uid),
        connection=conn,
        notebook_path=notebook_path,
        created_at=time.time(),
        auto_snapshot=origin.auto_snapshot if origin else None,
        cooldown=origin.cooldown if origin else None,
        execution_count=snap.execution_count,
        parent_kernel_id=snap.kernel_id,
        parent_snapshot_id=snap.id,
    )
    kdir = sup.kernel_dir(k.id)
    sup.make_private_dir(sup.kernels_dir, os.geteuid(), os.getegid())
    sup.kernels_dir.chmod(0o711)
    try:
        kdir.mkdir(mode=0o700)
    except FileExistsError:
        raise KernelExists(f"kernel {k.id} exists already") from None
    try:
        if os.geteuid() == 0:
            os.chown(kdir, uid, gid)
        if snap.has_history and engine.settings.jusnap.ipython.history_enabled:
            k.history_file = str(kdir / HISTORY_NAME)
        sup.write_private(sup.connection_file(k), json.dumps(k.connection), uid, gid)
        os.close(sup.logs.open_for_kernel(k.id, uid, gid))  # its own log, opened by CRIU
        sup.logs.note(k.id, f"kernel {k.id} forked from snapshot {snap.id} of {snap.kernel_id}")
        engine.registry.put_kernel(k)
    except BaseException:
        shutil.rmtree(kdir, ignore_errors=True)
        raise
    return k


def _bring_up(
    engine: Engine, k: Kernel, snap: Snapshot, reseed: bool
) -> tuple[dict[int, int], float]:
    """Stage, check, move ports, restore (lazily where configured, as a restore would),
    verify, handshake, fix up: the fork runs. The hot entry's verification runs beside the
    staging and is waited for before anything is made from its files."""
    from .snapshots import Untouched

    with engine.staging_of(k, snap) as staging:
        try:
            staged = staging.result()  # checked; ports moved; checked again
        except Untouched as exc:
            raise exc.error from None
        if not staged.namespaced and start_time(snap.pid) is not None:
            raise Refused(_PID_IN_USE.format(pid=snap.pid))
        staged.wait_verified()
        with (
            _history(engine, k, snap, staged) as extra,
            engine.run_criu(k, snap, staged, "fork", extra) as (pid, result),
        ):
            k.pid, k.started, k.status = pid, start_time(pid), "running"
            engine.registry.put_kernel(k)
            # It answers (a request sent at once may be lost, hence the handshake's polling),
            # then it takes its own identity, before anyone else can know its ports.
            handshake(
                k.connection,
                engine.settings.jusnap.ipython.handshake_timeout,
                lambda t=k.started: start_time(pid) == t,
            )
            engine.fixup(k, reseed=reseed)
            engine.kernels.reset_live(
                k.id, execution_count=snap.execution_count, last_snapshot_at=time.time()
            )
            engine.kernels.watch(k)
        if staged.hot:
            engine.hot.touch(snap.id)
        return staged.ports_moved, result.seconds


@contextlib.contextmanager
def _history(
    engine: Engine, k: Kernel, snap: Snapshot, staged: Staged
) -> Iterator[list[tuple[int, str]]]:
    """The fork's own copy of the snapshot's history database (and its journal, when the dump
    caught a write), so that the copy never opens (nor size-checks) the original's. A
    namespaced kernel opens files by path inside its own mount tree (a descriptor of the
    daemon's would break its next dump): the staged ``files.img`` names the copies
    (``Engine._retarget``); a plain one gets them as inherited descriptors under the
    original's names."""
    if staged.history is None or not k.history_file:
        yield []
        return
    sup = engine.supervisor
    origin = sup.kernel_dir(snap.kernel_id) / HISTORY_NAME
    dest = Path(k.history_file)
    engine.place_history(k, staged.history, dest)  # as the kernel's user: its files
    if staged.namespaced:
        yield []  # the staged files.img names the copies (Engine._retarget)
        return
    # In the kernel user's directory: no link followed, no FIFO waited on, only its own files.
    fds: list[tuple[int, str]] = []
    try:
        for path, name in ((dest, origin), (Path(f"{dest}-journal"), Path(f"{origin}-journal"))):
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # no journal: the dump caught no write
            fds.append((fd, str(name).lstrip("/")))
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != k.run_uid:
                raise RestoreFailed("fork failed: the history copy was replaced")
        yield fds
    finally:
        for fd, _name in fds:
            os.close(fd)


def forget_unfinished(engine: Engine) -> None:
    """At the daemon's start: a fork it died in the middle of (a record made, no process
    adopted yet) is removed like a failed one, and the copy CRIU may already have restored
    is found as an interrupted restore's is (``Engine.find_restored``: a namespace init of
    the kernel's uid listening on the fork's own shell port) and killed: its fixup never ran.
    The user can fork again."""
    for k in engine.registry.kernels():
        if k.parent_snapshot_id is None or k.pid is not None or k.status != "stopped":
            continue
        log.warning("removing kernel %s: the daemon stopped while forking it", k.id)
        snap = engine.registry.get_snapshot(k.parent_snapshot_id)
        pid = engine.find_restored(k, snap, 0) if snap is not None else None
        if pid is not None:
            started = start_time(pid)
            kill_tree(pid, started)
            engine.reaper.wait_gone(pid, started, 10)
        _discard(engine, k)


def _discard(engine: Engine, k: Kernel) -> None:
    """A fork that failed leaves nothing: no record, no directory, no log, no process."""
    with contextlib.suppress(Exception):
        engine.kernels.unwatch(k)
    try:
        engine.supervisor.remove(k)
    except Exception:  # the original error matters more; say what is left
        log.exception("removing the failed fork %s", k.id)
