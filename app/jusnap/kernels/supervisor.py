"""Kernel supervisor: launch kernels as the unprivileged user, re-adopt, signal, reap.

Kernels are started so that CRIU can always dump and restore them: a new session (no
controlling terminal), stdin on /dev/null, stdout and stderr on the kernel's own bounded log
(``logs.py``: an append-only file each restore hands back to CRIU, so its growth never fails
a restore with "bad size"), and a history database of their own that the engine saves with
each snapshot.

Each kernel runs as its owner's uid when the owner is a local user other than root, else as
the configured kernel user; its files live in a directory only that uid can read. Whatever
the request names in that user's world (the working directory, the IPython history to seed
from) is reached with that user's credentials, never root's.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import Forbidden, InvalidRequest, JusnapError, KernelNotRunning
from ..ids import new_kernel_id
from ..proc import Creds, Reaper, is_alive, kill_tree, start_time
from ..registry import Kernel, Registry
from ..signames import SIGNALS
from . import namespace
from .channels import request_shutdown
from .logs import KernelLogs

log = logging.getLogger(__name__)

# Seconds a namespaced kernel that acknowledged a shutdown_request gets to exit (see
# Supervisor._ask_to_exit) before it is killed.
ACKED_EXIT = 2.0
PORT_KEYS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
_SAFE_ENV = ("LANG", "LC_ALL", "TZ")

# ipykernel sends a cell's output to IOPub only; these make it also reach the kernel's log:
# ``quiet=False`` echoes sys.stdout/sys.stderr there (flushed with each IOPub flush), and
# faulthandler, enabled on ipykernel's copy of the original stderr (fd 2 itself is a pipe
# that dies with the process), writes the traceback of a fatal signal (abort, segfault)
# straight into the file. Nothing is left in the user's namespace.
IPYKERNEL_LOG_ARGS = (
    "--IPKernelApp.quiet=False",
    "--IPKernelApp.exec_lines=__import__('faulthandler').enable(file=getattr(__import__('sys')"
    ".stderr, '_original_stdstream_copy', 2), all_threads=True)",
)


def free_ports(n: int = 5) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def ports_free(conn: dict[str, Any]) -> bool:
    """Whether a kernel could bind all of ``conn``'s ports now (as ZeroMQ does: SO_REUSEADDR)."""
    socks = []
    try:
        for key in PORT_KEYS:
            s = socket.socket()
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", int(conn[key])))
        return True
    except (OSError, KeyError, ValueError, TypeError):
        return False
    finally:
        for s in socks:
            s.close()


def new_connection(kernel_name: str = "python3") -> dict[str, Any]:
    ports = free_ports()
    conn: dict[str, Any] = dict(zip(PORT_KEYS, ports, strict=True))
    conn.update(
        ip="127.0.0.1",
        transport="tcp",
        key=uuid.uuid4().hex,
        signature_scheme="hmac-sha256",
        kernel_name=kernel_name,
    )
    return conn


def check_connection(conn: object) -> dict[str, Any]:
    if not isinstance(conn, dict):
        raise InvalidRequest("connection must be an object")
    out: dict[str, Any] = {}
    for key in PORT_KEYS:
        port = conn.get(key)
        if not isinstance(port, int) or isinstance(port, bool) or not 1024 <= port <= 65535:
            raise InvalidRequest(f"connection.{key} must be a port number 1024-65535")
        out[key] = port
    if len(set(out.values())) != len(PORT_KEYS):
        raise InvalidRequest("connection ports must differ")
    key = conn.get("key")
    if not isinstance(key, str) or not 16 <= len(key) <= 256:
        raise InvalidRequest("connection.key must be a string of 16-256 characters")
    if conn.get("ip", "127.0.0.1") not in ("127.0.0.1", "localhost"):
        raise InvalidRequest("kernels listen on loopback only")
    if conn.get("transport", "tcp") != "tcp":
        raise InvalidRequest("only the tcp transport is supported")
    scheme = conn.get("signature_scheme", "hmac-sha256")
    if scheme not in ("hmac-sha256",):
        raise InvalidRequest("signature_scheme must be hmac-sha256")
    out.update(ip="127.0.0.1", transport="tcp", key=key, signature_scheme=scheme,
               kernel_name=str(conn.get("kernel_name", "python3"))[:64])  # fmt: skip
    return out


@functools.cache
def login_uid_range() -> tuple[int, int]:
    """UID_MIN..UID_MAX of /etc/login.defs (1000..60000 where it says nothing)."""
    bounds = {"UID_MIN": 1000, "UID_MAX": 60000}
    with contextlib.suppress(OSError):
        for line in Path("/etc/login.defs").read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] in bounds and parts[1].isdigit():
                bounds[parts[0]] = int(parts[1])
    return bounds["UID_MIN"], bounds["UID_MAX"]


def _is_ipykernel(argv: list[str]) -> bool:
    return any("ipykernel" in a for a in argv[:4])


@dataclass(frozen=True)
class LaunchRequest:
    """What a caller may ask of a new kernel; the supervisor decides the rest (its uid, its
    directory, its history, ports where none are given)."""

    owner_uid: int
    argv: list[str] | None = None
    env: dict[str, str] | None = None
    cwd: str | None = None
    notebook_path: str | None = None
    connection: dict[str, Any] | None = None
    kernel_id: str | None = None


class Supervisor:
    def __init__(self, settings: Settings, registry: Registry, reaper: Reaper) -> None:
        self.settings = settings
        self.registry = registry
        self.reaper = reaper
        self.kernels_dir = settings.state_dir / "kernels"
        self.logs = KernelLogs(settings.state_dir, settings.log_limit_bytes)

    # ---- paths -------------------------------------------------------------------------
    def kernel_dir(self, kernel_id: str) -> Path:
        return self.kernels_dir / kernel_id

    def shm_dir(self, kernel_id: str) -> Path:
        """The kernel's own ``/dev/shm`` when namespaced (``multiprocessing`` semaphores,
        joblib's memmaps): ``<state_dir>/shm/<kernel id>``."""
        return self.settings.state_dir / "shm" / kernel_id

    def prepare_shm(self, k: Kernel) -> Path:
        """Make ``k``'s shm directory (kept when it is already a directory of its uid): root
        owns the 0711 parent, so the user can never swap the name for a link; the directory
        is the user's, 0700. Files the kernel left there stay (a restore needs those that
        were open at the dump)."""
        parent = self.settings.state_dir / "shm"
        self.make_private_dir(parent, os.geteuid(), os.getegid())
        parent.chmod(0o711)
        path = self.shm_dir(k.id)
        try:
            st = path.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != k.run_uid:
                raise JusnapError(f"{path} is not a directory of uid {k.run_uid}")
        except FileNotFoundError:
            path.mkdir(mode=0o700)
            os.chown(path, k.run_uid, k.run_gid)
        return path

    def seed_shm(self, k: Kernel, from_id: str) -> None:
        """Copy kernel ``from_id``'s shm files into ``k``'s (a snapshot restored into another
        kernel, or a fork: files open in /dev/shm at the dump must be there), as ``k``'s user
        (root would follow the links the user planted), never over a file ``k`` already has.
        Nothing to copy when the source kernel is gone; a copy that fails is logged (CRIU
        then refuses the restore if it needed the file, and the restore is undone)."""
        src = self.shm_dir(from_id)
        if from_id == k.id or not src.is_dir():
            return
        argv = ["cp", "-R", "-n", "--no-dereference", "--preserve=mode,timestamps", "--",
                f"{src}/.", f"{self.shm_dir(k.id)}/"]  # fmt: skip
        try:
            self._as_user(self.creds(k), argv, "copy /dev/shm")
        except JusnapError as exc:
            log.warning("kernel %s: /dev/shm of %s not copied: %s", k.id, from_id, exc)

    def creds(self, k: Kernel) -> Creds:
        return Creds.of_user(k.run_uid, k.run_gid)

    def run_as(self, owner_uid: int) -> tuple[int, int]:
        """The uid and gid a kernel of ``owner_uid`` runs as: its own for local login users,
        the kernel user's for root. System accounts (daemons, ``nobody``) get no kernels."""
        if owner_uid in (0, self.settings.kernel_uid):
            return self.settings.kernel_uid, self.settings.kernel_gid
        try:
            entry = pwd.getpwuid(owner_uid)
        except KeyError:
            raise Forbidden(f"uid {owner_uid} is no local user") from None
        if not login_uid_range()[0] <= owner_uid <= login_uid_range()[1]:
            raise Forbidden("only the kernel user, root and local login users may launch kernels")
        return owner_uid, entry.pw_gid

    def _as_user(self, creds: Creds, argv: list[str], what: str) -> None:
        rc, err = self.reaper.run(argv, creds, 30)
        if rc != 0:
            line = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {rc}"]
            raise JusnapError(f"{what}: {line[0][:200]}")

    def copy_as_user(self, creds: Creds, src: Path, dest: Path) -> None:
        """Copy ``src`` over ``dest`` (same inode) with the user's own rights."""
        self._as_user(creds, ["cp", "--no-preserve=all", "--", str(src), str(dest)], "copy")

    def remove_as_user(self, creds: Creds, path: Path) -> None:
        """Remove ``path``, if it is there, with the user's own rights."""
        self._as_user(creds, ["rm", "-f", "--", str(path)], "remove")

    def _usable_cwd(self, creds: Creds, cwd: str) -> bool:
        """Whether the user itself can enter ``cwd`` (asked as the user, not as root)."""
        try:
            self._as_user(creds, ["test", "-d", cwd, "-a", "-x", cwd], "cwd")
            return True
        except JusnapError:
            return False

    def home_dir(self, uid: int) -> str:
        try:
            return pwd.getpwuid(uid).pw_dir
        except KeyError:
            return "/"

    def make_private_dir(self, path: Path, uid: int, gid: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(path, uid, gid)
        path.chmod(0o700)

    def write_private(self, path: Path, text: str, uid: int, gid: int) -> None:
        """Write a file in the kernel user's directory as root: into a new file (``O_EXCL``,
        never a link or an existing inode the user planted, such as a hard link to a root
        file), then renamed over ``path``."""
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            with os.fdopen(fd, "w") as fh:
                if os.geteuid() == 0:
                    os.fchown(fh.fileno(), uid, gid)
                fh.write(text)
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # ---- launching ---------------------------------------------------------------------
    def create(self, request: LaunchRequest) -> Kernel:
        owner_uid, argv, env, cwd = request.owner_uid, request.argv, request.env, request.cwd
        notebook_path, connection = request.notebook_path, request.connection
        uid, gid = self.run_as(owner_uid)
        if argv is not None and (not argv or not all(isinstance(a, str) for a in argv)):
            raise InvalidRequest("argv must be a non-empty list of strings")
        if cwd is not None and (not isinstance(cwd, str) or not cwd.startswith("/")):
            raise InvalidRequest("cwd must be an absolute path")
        k = Kernel(
            id=request.kernel_id or new_kernel_id(),
            # Ownership is the uid the kernel runs as: kernels the administrator starts
            # belong to the kernel user, whose other kernels could read them anyway.
            owner_uid=uid,
            run_uid=uid,
            run_gid=gid,
            pid=None,
            started=None,
            status="stopped",
            argv=list(argv) if argv else self.settings.kernel_argv(),
            env=dict(env or {}),
            cwd=cwd or self.home_dir(uid),
            connection=check_connection(connection) if connection else new_connection(),
            notebook_path=notebook_path,
            created_at=time.time(),
        )
        kdir = self.kernel_dir(k.id)
        self.make_private_dir(self.kernels_dir, os.geteuid(), os.getegid())
        self.kernels_dir.chmod(0o711)
        self.make_private_dir(kdir, uid, gid)
        try:
            if self.settings.jusnap.ipython.history_enabled and _is_ipykernel(k.argv):
                k.history_file = str(kdir / "history.sqlite")
                self._seed_history(k, Path(k.history_file))
            self.start(k)
        except BaseException:
            # A launch that failed leaves nothing behind.
            with contextlib.suppress(Exception):
                self.registry.delete_kernel(k.id)
            shutil.rmtree(kdir, ignore_errors=True)
            shutil.rmtree(self.shm_dir(k.id), ignore_errors=True)
            self.logs.remove(k.id)
            raise
        return k

    def _seed_history(self, k: Kernel, dest: Path) -> None:
        """Start each kernel's own history from the user's IPython history file, copied by
        the user itself: root would follow a link the user planted to a file it cannot read."""
        home = self.home_dir(k.run_uid)
        src = self.settings.jusnap.ipython.history_file.replace("~", home, 1)
        with contextlib.suppress(JusnapError):
            self.copy_as_user(self.creds(k), Path(src), dest)

    def connection_file(self, k: Kernel) -> Path:
        return self.kernel_dir(k.id) / "connection.json"

    def start(self, k: Kernel) -> None:
        """(Re)start the kernel process with the kernel's fixed connection and history."""
        cfile = self.connection_file(k)
        self.write_private(cfile, json.dumps(k.connection), k.run_uid, k.run_gid)
        argv = [a.replace("{connection_file}", str(cfile)) for a in k.argv]
        if _is_ipykernel(argv):
            if k.history_file:
                argv.append(f"--HistoryManager.hist_file={k.history_file}")
            else:
                # In memory: the history is then part of the dumped process itself.
                argv.append("--HistoryManager.enabled=False")
            argv.extend(IPYKERNEL_LOG_ARGS)
        home = self.home_dir(k.run_uid)
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": home,
            "USER": pwd.getpwuid(k.run_uid).pw_name if k.run_uid >= 0 else "",
            **{v: os.environ[v] for v in _SAFE_ENV if v in os.environ},
            **k.env,
            "JUSNAP_KERNEL_ID": k.id,
            "JUSNAP_SOCKET": self.settings.jusnap.http.socket,
            "PYTHONUNBUFFERED": "1",
        }
        creds = self.creds(k)
        # The user enters its working directory itself (env --chdir, after the switch to its
        # uid): root entering it first would open root-only directories to the kernel.
        cwd = next(
            (d for d in (k.cwd, home) if self._usable_cwd(creds, d)), str(self.kernel_dir(k.id))
        )
        if shutil.which(argv[0], path=env["PATH"]) is None:
            raise InvalidRequest(f"cannot start kernel {argv[0]!r}: no such program")
        out = self.logs.open_for_kernel(k.id, k.run_uid, k.run_gid)
        keep, why_plain = self._namespace_plan(k)
        if why_plain is None:
            os.close(out)  # the launcher opens it again inside the kernel's mount namespace
            kept = f"; host mounts kept: {', '.join(mp for mp, _ in keep)}" if keep else ""
            self.logs.note(k.id, f"kernel {k.id} starting (own PID and mount namespace{kept})")
            shm = self.prepare_shm(k)
            pid = namespace.launch(
                self.reaper, argv, creds, self.logs.path(k.id), shm, keep, [cwd, "/"], env
            )
        else:
            if why_plain:
                log.warning("kernel %s: plain launch, no namespace: %s", k.id, why_plain)
            try:
                self.logs.note(k.id, f"kernel {k.id} starting")
                p = self.reaper.spawn(
                    ["env", f"--chdir={cwd}", "--", *argv],
                    creds,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                    close_fds=True,
                    cwd="/",
                    env=env,
                )
            except OSError as exc:
                raise InvalidRequest(f"cannot start kernel {argv[0]!r}: {exc.strerror}") from None
            finally:
                os.close(out)
            self.reaper.release(p)  # the reaper owns it from now on
            pid = p.pid
        k.pid = pid
        k.started = start_time(pid)
        k.status = "running"
        k.execution_count = 0
        self.registry.put_kernel(k)
        log.info("kernel %s started as pid %s (uid %s)", k.id, k.pid, k.run_uid)

    def _program(self, k: Kernel) -> str:
        path = k.env.get("PATH", os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"))
        return shutil.which(k.argv[0], path=path) or k.argv[0]

    def kept_mounts(self, k: Kernel) -> tuple[list[tuple[str, bool]], str | None]:
        """The host mounts a namespaced ``k`` keeps (``namespace.binds``) for what it needs
        under the daemon's current configuration: its interpreter, working directory, home
        and the daemon's socket directory (the IPython extension asks for automatic
        snapshots there; on systemd hosts it is on the tmpfs /run; read-only when kept for it
        alone); or why it cannot be namespaced. The same answer at launch, dump, image check
        and restore."""
        socket_dir = str(Path(self.settings.jusnap.http.socket).parent)
        home = self.home_dir(k.run_uid)
        keep, why = namespace.binds([self._program(k), k.cwd or home, home], [socket_dir])
        if why:
            return [], why
        # The state directory (images, log, /dev/shm directories) stays on / itself.
        state = os.path.realpath(self.settings.state_dir)
        off_root, why = namespace.binds([state, str(self.logs.path(k.id))])
        if off_root or why:
            return [], f"the state directory {state} is not on the root file system"
        if state == "/tmp" or state.startswith("/tmp/"):
            # A namespaced restore gives CRIU a private /tmp, which would hide the images.
            return [], f"the state directory {state} is under /tmp"
        return keep, None

    def _namespace_plan(self, k: Kernel) -> tuple[list[tuple[str, bool]], str | None]:
        """(kept host mounts, None) when ``k`` starts in its own namespaces; else ([], why
        not): "" when namespaces are off or the daemon is no root (nothing worth a warning)."""
        setting = self.settings.jusnap.kernels.namespaces
        if not namespace.wanted(setting) or k.run_uid == 0:
            return [], ""
        keep, why = self.kept_mounts(k)
        if why and setting == "on":
            raise JusnapError(f"cannot start kernel in its own namespace: {why}")
        return keep, why

    # ---- state ---------------------------------------------------------------------------
    def alive(self, k: Kernel) -> bool:
        return k.pid is not None and is_alive(k.pid, k.started)

    def refresh(self, k: Kernel) -> Kernel:
        if k.status == "running" and not self.alive(k):
            k.status = "dead"
            self.registry.put_kernel(k)
        return k

    def adopt_all(self) -> list[Kernel]:
        """After a daemon restart: keep kernels whose PID and start time still match."""
        out = []
        for k in self.registry.kernels():
            if k.status == "running" and not self.alive(k):
                log.warning("kernel %s (pid %s) is gone; marked dead", k.id, k.pid)
                k.status = "dead"
                self.registry.put_kernel(k)
            out.append(k)
        return out

    # ---- signals -------------------------------------------------------------------------
    def signal(self, k: Kernel, signame: str) -> None:
        sig = SIGNALS.get(signame.upper()) if isinstance(signame, str) else None
        if sig is None:
            raise InvalidRequest(f"unsupported signal {signame!r}; use one of {', '.join(SIGNALS)}")
        if not self.alive(k):
            raise KernelNotRunning(f"kernel {k.id} is not running")
        assert k.pid is not None
        if (
            sig not in (signal.SIGKILL, signal.SIGSTOP)
            and namespace.is_namespace_init(k.pid)
            and not namespace.handles(k.pid, sig)
        ):
            # PID 1 of its namespace would drop it; every signal offered here ends a plain
            # process that does not handle it (their default action), so it ends this one.
            sig = signal.SIGKILL
        os.kill(k.pid, sig)

    def stop(self, k: Kernel, timeout: float = 10.0, durable: bool = True) -> None:
        """Kill the kernel's process group and wait until its PID is really free.
        ``durable=False``: the row's status without an fsync (``Registry._tx_fast``)."""
        if k.pid is not None:
            kill_tree(k.pid, k.started)
            if not self.reaper.wait_gone(k.pid, k.started, timeout):
                log.warning("kernel %s pid %s did not go away in %.0fs", k.id, k.pid, timeout)
        k.status = "stopped"
        self.registry.put_kernel(k, durable)

    def terminate(self, k: Kernel, grace: float) -> None:
        """Polite shutdown, then SIGKILL after ``grace`` seconds: SIGTERM for a plain kernel;
        a namespaced one (PID 1 of its namespace ignores SIGTERM, which it has no handler
        for) gets ipykernel's ``shutdown_request``. SIGKILL of a namespace's init ends every
        process in it."""
        if k.pid is not None and self.alive(k):
            if namespace.is_namespace_init(k.pid):
                self._ask_to_exit(k, grace)
            else:
                kill_tree(k.pid, k.started, signal.SIGTERM)
                self.reaper.wait_gone(k.pid, k.started, grace)
        self.stop(k)

    def _ask_to_exit(self, k: Kernel, grace: float) -> None:
        """``shutdown_request`` until the kernel acknowledges it (a request whose connection
        was not up within a second is dropped with the socket), then a little while for its
        exit: ipykernel replies once its shutdown work is done, but its interpreter then
        sometimes waits forever on a thread reading its own stdout pipe (measured: 1 run in
        3), so after ``ACKED_EXIT`` seconds the caller's SIGKILL ends it."""
        assert k.pid is not None
        deadline = time.monotonic() + grace
        while (left := deadline - time.monotonic()) > 0:
            acked = False
            with contextlib.suppress(Exception):  # a kernel that never answers: killed
                acked = request_shutdown(k.connection, timeout=min(left, 1.0))
            wait = min(left, ACKED_EXIT) if acked else min(max(left, 0.0), 0.5)
            if self.reaper.wait_gone(k.pid, k.started, wait) or acked:
                return

    def remove(self, k: Kernel) -> None:
        self.stop(k)
        self.registry.delete_kernel(k.id)
        shutil.rmtree(self.kernel_dir(k.id), ignore_errors=True)
        shutil.rmtree(self.shm_dir(k.id), ignore_errors=True)  # fd-based: follows no link
        self.logs.remove(k.id)
