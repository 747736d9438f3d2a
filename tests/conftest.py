"""Fixtures for real-component tests: real CRIU, real ipykernel, a real unprivileged user.

The integration tests need root (to launch kernels as another user, and to lend CRIU its
capabilities) and CRIU; CI has both (`.ci/run` installs them). Paths can be overridden for
development:

* ``JUSNAP_TEST_CRIU``   – CRIU binary (default: the one the criu role builds)
* ``JUSNAP_TEST_USER``   – the kernel user (default ``jusnap-test``, created if missing)
* ``JUSNAP_TEST_PYTHON`` – the interpreter kernels run with (default: this one)
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jusnap.config import Settings, load_settings
from jusnap.snapshots import Engine

from tests.helpers import connect

CRIU = os.environ.get("JUSNAP_TEST_CRIU", "/usr/local/sbin/criu")
KERNEL_USER = os.environ.get("JUSNAP_TEST_USER", "jusnap-test")
PYTHON = os.environ.get("JUSNAP_TEST_PYTHON", sys.executable)
REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kernel_user() -> pwd.struct_passwd:
    """An unprivileged user, as the Ansible role sets one up (in no special group)."""
    assert os.geteuid() == 0, (
        "integration tests run as root (CI does): they launch kernels as another user"
    )
    try:
        user = pwd.getpwnam(KERNEL_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/bash", KERNEL_USER], check=True
        )
        user = pwd.getpwnam(KERNEL_USER)
    return user


@pytest.fixture(scope="session")
def second_user(kernel_user: pwd.struct_passwd) -> pwd.struct_passwd:
    """Another local user: kernels of different owners run as different uids."""
    name = f"{KERNEL_USER}2"
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
        return pwd.getpwnam(name)


@pytest.fixture(scope="session")
def criu_binary(kernel_user: pwd.struct_passwd) -> str:
    assert Path(CRIU).exists(), f"{CRIU} missing: run .ci/install-criu.sh (the criu Ansible role)"
    return CRIU


def make_state_dir(prefix: str = "jusnap-test-") -> Path:
    """A state dir the kernel user can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    path.chmod(0o711)
    return path


@pytest.fixture
def state_dir() -> Iterator[Path]:
    path = make_state_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_settings(
    criu_binary: str, kernel_user: pwd.struct_passwd, state_dir: Path
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        base = {
            "jusnap.state_dir": str(state_dir),
            "jusnap.criu.binary": criu_binary,
            "jusnap.os.uid": kernel_user.pw_name,
            "jusnap.ipython.python_interpreter": PYTHON,
            "jusnap.http.socket": str(state_dir / "jusnap.sock"),
            "jusnap.ipython.cooldown": "0s",
            "jusnap.criu.restore_timeout": "60s",
        }
        base.update(overrides)
        return load_settings(None, base)

    return make


@pytest.fixture
def engine(make_settings: Callable[..., Settings]) -> Iterator[Engine]:
    e = Engine(make_settings()).start()
    yield e
    shutdown_all(e)


def shutdown_all(e: Engine) -> None:
    for k in e.registry.kernels():
        with contextlib.suppress(Exception):
            e.supervisor.remove(k)
    e.close()


class KernelSession:
    """A kernel launched by the engine plus a client talking to it, as a notebook would."""

    def __init__(self, engine: Engine, **launch: Any) -> None:
        self.engine = engine
        self.kernel = engine.kernels.launch(owner_uid=0, **launch)
        self.id = self.kernel.id
        self.client = connect(self.kernel.connection)

    def run(self, code: str, timeout: float = 60) -> str:
        from tests.helpers import run_cell

        return run_cell(self.client, code, timeout)

    def value(self, expr: str) -> str:
        from tests.helpers import value

        return value(self.client, expr)

    def after_restore(self) -> None:
        """What a Jupyter client does when its kernel came back (restore or restart)."""
        from tests.helpers import nudge

        nudge(self.client)

    def close(self) -> None:
        self.client.stop_channels()


@pytest.fixture
def kernel(engine: Engine) -> Iterator[KernelSession]:
    ks = KernelSession(engine)
    yield ks
    ks.close()


# ---- the daemon as a real process (gunicorn), for CLI and crash tests ------------------------


class Daemon:
    def __init__(self, state_dir: Path, conf: Path) -> None:
        self.state_dir = state_dir
        self.conf = conf
        self.socket = str(state_dir / "jusnap.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state_dir / "daemon.log"

    def start(self, timeout: float = 30, env: dict[str, str] | None = None) -> None:
        with contextlib.suppress(FileNotFoundError):
            Path(self.socket).unlink()
        logf = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jusnap.cli", "serve", "--config", str(self.conf)],
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


@pytest.fixture
def daemon(criu_binary: str, kernel_user: pwd.struct_passwd, state_dir: Path) -> Iterator[Daemon]:
    conf = state_dir / "conf.yml"
    conf.write_text(
        "jusnap:\n"
        f"  state_dir: {state_dir}\n"
        "  criu:\n"
        f"    binary: {criu_binary}\n"
        "  http:\n"
        f"    socket: {state_dir / 'jusnap.sock'}\n"
        "    host: ''\n"
        "  ipython:\n"
        f"    python_interpreter: {PYTHON}\n"
        "    cooldown: 0s\n"
        "  os:\n"
        f"    uid: {kernel_user.pw_name}\n"
    )
    d = Daemon(state_dir, conf)
    d.start()
    yield d
    d.stop()
    # Kernels outlive the daemon by design (it re-adopts them); the test's must go.
    subprocess.run(["pkill", "-KILL", "-f", f"{state_dir}/kernels/"], check=False)
