"""Fixtures for the Jupyter tests: the real daemon (gunicorn, socket + loopback TCP) and a real
Notebook 7 server running as the kernel user, wired to each other as in a Jusnap install."""

from __future__ import annotations

import json
import pwd
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import PYTHON, Daemon, make_state_dir
from tests.jupyter import JupyterServer, free_port


class JusnapStack:
    """A daemon and a Jupyter server that knows it, sharing one scratch directory."""

    def __init__(self, daemon: Daemon, jupyter: JupyterServer, http_port: int) -> None:
        self.daemon = daemon
        self.jupyter = jupyter
        self.http_port = http_port

    @property
    def daemon_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/jusnap/api/v1/"

    @property
    def admin_token(self) -> str:
        return (self.daemon.state_dir / "api-token").read_text().strip()


def stop_kernels(daemon: Daemon) -> None:
    """Kernels outlive the daemon by design; the test's own must go (by id, through the daemon)."""
    if daemon.proc is None or daemon.proc.poll() is not None:
        return
    r = daemon.cli("--json", "kernels")
    for k in json.loads(r.stdout or "[]"):
        daemon.cli("stop", k["id"])


@pytest.fixture
def make_stack(
    criu_binary: str, kernel_user: pwd.struct_passwd
) -> Iterator[Callable[..., JusnapStack]]:
    made: list[JusnapStack] = []

    def make(auto_snapshot: bool = False, cooldown: str = "0s") -> JusnapStack:
        state_dir = make_state_dir()
        http_port, jupyter_port = free_port(), free_port()
        conf = state_dir / "conf.yml"
        conf.write_text(
            "jusnap:\n"
            f"  state_dir: {state_dir}\n"
            "  criu:\n"
            f"    binary: {criu_binary}\n"
            "    restore_timeout: 60s\n"
            "  http:\n"
            f"    socket: {state_dir / 'jusnap.sock'}\n"
            "    host: 127.0.0.1\n"
            f"    port: '{http_port}'\n"
            "  ipython:\n"
            f"    python_interpreter: {PYTHON}\n"
            f"    cooldown: {cooldown}\n"
            f"    auto_snapshot: {str(auto_snapshot).lower()}\n"
            "  jupyter:\n"
            f"    port: {jupyter_port}\n"
            "    auth_cache: 2s\n"
            "  os:\n"
            f"    uid: {kernel_user.pw_name}\n"
        )
        daemon = Daemon(state_dir, conf)
        daemon.start()
        jupyter = JupyterServer(
            Path(make_state_dir("jusnap-jupyter-")), kernel_user, daemon.socket, jupyter_port
        )
        stack = JusnapStack(daemon, jupyter, http_port)
        made.append(stack)
        jupyter.install_kernelspec()
        jupyter.start()
        return stack

    yield make
    for stack in made:
        stack.jupyter.stop()
        stop_kernels(stack.daemon)
        stack.daemon.stop()
        shutil.rmtree(stack.jupyter.base, ignore_errors=True)
        shutil.rmtree(stack.daemon.state_dir, ignore_errors=True)


@pytest.fixture
def stack(make_stack: Callable[..., JusnapStack]) -> JusnapStack:
    return make_stack()
