"""The one factory for the real stack the tests run against: a daemon configuration
(conf.yml), the daemon under gunicorn, and a Jupyter server as the kernel user that knows it.

``tests/conftest.py`` (``daemon``), ``tests/integration/conftest.py`` (``make_stack``,
``module_stack``, ``stack``) and ``tests/e2e/conftest.py`` (``make_stack``, ``app_stack``,
``stack``) all build on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Imported where a Jupyter server is made: tests/conftest.py imports this module, and the
    # GPU machine runs tests/gpu under it without requests or websocket-client (tests.jupyter).
    from tests.jupyter import JupyterServer

PYTHON = os.environ.get("JUSNAP_TEST_PYTHON", sys.executable)


def make_state_dir(prefix: str = "jusnap-test-") -> Path:
    """A state dir the kernel user can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    path.chmod(0o711)
    return path


def write_conf(
    state_dir: Path,
    criu_binary: str,
    kernel_user: pwd.struct_passwd,
    *,
    http_port: int | None = None,
    jupyter_port: int | None = None,
    auto_snapshot: bool | None = None,
    cooldown: str = "0s",
    restore_timeout: str | None = "60s",
) -> Path:
    """``state_dir/conf.yml`` for a test daemon. ``http_port``: also serve loopback TCP (else
    the socket only); ``auto_snapshot`` None: the daemon's default; ``jupyter_port``: the
    Jupyter the daemon expects (with a short authorisation cache)."""
    lines = [
        "jusnap:",
        f"  state_dir: {state_dir}",
        "  criu:",
        f"    binary: {criu_binary}",
        *([f"    restore_timeout: {restore_timeout}"] if restore_timeout else []),
        "  http:",
        f"    socket: {state_dir / 'jusnap.sock'}",
        *(
            ["    host: 127.0.0.1", f"    port: '{http_port}'"]
            if http_port is not None
            else ["    host: ''"]
        ),
        "  ipython:",
        f"    python_interpreter: {PYTHON}",
        f"    cooldown: {cooldown}",
        *(
            [f"    auto_snapshot: {str(auto_snapshot).lower()}"]
            if auto_snapshot is not None
            else []
        ),
        *(
            ["  jupyter:", f"    port: {jupyter_port}", "    auth_cache: 2s"]
            if jupyter_port is not None
            else []
        ),
        "  os:",
        f"    uid: {kernel_user.pw_name}",
    ]
    conf = state_dir / "conf.yml"
    conf.write_text("\n".join(lines) + "\n")
    return conf


class Daemon:
    def __init__(self, state_dir: Path, conf: Path, flags: tuple[str, ...] = ()) -> None:
        self.state_dir = state_dir
        self.conf = conf
        self.flags = flags  # ``--dotted.key=value`` settings over conf.yml
        self.socket = str(state_dir / "jusnap.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state_dir / "daemon.log"

    def start(self, timeout: float = 30, env: dict[str, str] | None = None) -> None:
        with contextlib.suppress(FileNotFoundError):
            Path(self.socket).unlink()
        logf = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jusnap.cli", "serve", "--config", str(self.conf), *self.flags],
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.cli("health").returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"daemon did not start:\n{self.log.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill gunicorn's master and worker (not the kernels: they live in their own sessions)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        self.proc.wait(timeout=30)

    def died_under(self, *args: str) -> None:
        """Run a CLI request the daemon dies under (a failpoint kills it), then start a new
        daemon (without the failpoint)."""
        r = self.cli(*args, timeout=60)
        assert r.returncode != 0, r.stdout  # the daemon died under the request
        assert self.proc is not None
        self.proc.wait(timeout=30)
        self.start()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.kill(signal.SIGTERM)

    def cli_argv(self) -> list[str]:
        return [sys.executable, "-m", "jusnap.cli", "--socket", self.socket]

    def cli(
        self, *args: str, timeout: float = 300, user: str | pwd.struct_passwd | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The real CLI, as root (the administrator) or (``user``) as another local user over
        the same socket: an owner like any other."""
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(self.state_dir / "runtime")}
        as_user: list[str] = []
        if user is not None:
            pw = pwd.getpwnam(user) if isinstance(user, str) else user
            as_user = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]
            runtime = self.state_dir / f"runtime-{pw.pw_name}"
            runtime.mkdir(exist_ok=True)
            os.chown(runtime, pw.pw_uid, pw.pw_gid)
            env["JUPYTER_RUNTIME_DIR"] = str(runtime)
            env["HOME"] = pw.pw_dir
        return subprocess.run(
            [*as_user, *self.cli_argv(), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )


def stop_kernels(daemon: Daemon) -> None:
    """Kernels outlive the daemon by design; the test's own must go (by id, through the daemon)."""
    if daemon.proc is None or daemon.proc.poll() is not None:
        return
    r = daemon.cli("--json", "kernels")
    with contextlib.suppress(ValueError):
        for k in json.loads(r.stdout or "[]"):
            daemon.cli("stop", k["id"])


class Stack:
    """A daemon and a Jupyter server that knows it, each with its own scratch directory."""

    def __init__(self, daemon: Daemon, jupyter: JupyterServer, http_port: int | None) -> None:
        self.daemon = daemon
        self.jupyter = jupyter
        self.http_port = http_port

    @property
    def daemon_url(self) -> str:
        assert self.http_port is not None, "this stack's daemon serves its socket only"
        return f"http://127.0.0.1:{self.http_port}/jusnap/api/v1/"

    @property
    def admin_token(self) -> str:
        return (self.daemon.state_dir / "api-token").read_text().strip()

    def revive(self) -> None:
        """Start again what an earlier test (sharing this stack) left stopped."""
        if self.daemon.proc is None or self.daemon.proc.poll() is not None:
            self.daemon.start()
        if self.jupyter.proc is None or self.jupyter.proc.poll() is not None:
            self.jupyter.start()

    def clear_kernels(self) -> None:
        """Shut down every kernel (Jupyter's through Jupyter, the rest through the daemon), so
        that the next test sharing this stack starts with none running, as on a fresh stack."""
        with contextlib.suppress(Exception):
            for session in self.jupyter.api("GET", "api/sessions", expect=200):
                self.jupyter.api("DELETE", f"api/sessions/{session['id']}")
            for k in self.jupyter.api("GET", "api/kernels", expect=200):
                self.jupyter.api("DELETE", f"api/kernels/{k['id']}")
        stop_kernels(self.daemon)

    def close(self) -> None:
        self.jupyter.stop()
        stop_kernels(self.daemon)
        self.daemon.stop()
        shutil.rmtree(self.jupyter.base, ignore_errors=True)
        shutil.rmtree(self.daemon.state_dir, ignore_errors=True)


class StackFactory:
    """Makes stacks and takes down all it made (``close``)."""

    def __init__(self, criu_binary: str, kernel_user: pwd.struct_passwd) -> None:
        self.criu_binary = criu_binary
        self.kernel_user = kernel_user
        self.made: list[Stack] = []

    def make(
        self,
        auto_snapshot: bool = False,
        cooldown: str = "0s",
        *,
        tcp: bool = True,
        jupyter: Callable[..., JupyterServer] | None = None,
        flags: tuple[str, ...] = (),
    ) -> Stack:
        """A started stack. ``tcp``: the daemon also serves loopback TCP and is told Jupyter's
        port; ``jupyter(base, user, socket, port)`` makes the (not yet started) server, a
        plain Notebook 7 ``JupyterServer`` by default; ``flags``: the daemon's
        ``--dotted.key=value`` settings beyond conf.yml."""
        from tests.jupyter import JupyterServer, free_port

        state_dir = make_state_dir()
        http_port = free_port() if tcp else None
        jupyter_port = free_port()
        conf = write_conf(
            state_dir,
            self.criu_binary,
            self.kernel_user,
            http_port=http_port,
            jupyter_port=jupyter_port if tcp else None,
            auto_snapshot=auto_snapshot,
            cooldown=cooldown,
        )
        daemon = Daemon(state_dir, conf, flags)
        daemon.start()
        server = (jupyter or JupyterServer)(
            make_state_dir("jusnap-jupyter-"), self.kernel_user, daemon.socket, jupyter_port
        )
        stack = Stack(daemon, server, http_port)
        self.made.append(stack)
        server.install_kernelspec()
        server.start()
        return stack

    def close(self) -> None:
        for stack in self.made:
            stack.close()
        self.made.clear()
