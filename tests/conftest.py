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
import fcntl
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jusnap.config import Settings, load_settings
from jusnap.registry import Kernel
from jusnap.snapshots import Engine

from tests.helpers import connect
from tests.stack import PYTHON as PYTHON
from tests.stack import Daemon as Daemon
from tests.stack import make_state_dir as make_state_dir
from tests.stack import write_conf

CRIU = os.environ.get("JUSNAP_TEST_CRIU", "/usr/local/sbin/criu")
KERNEL_USER = os.environ.get("JUSNAP_TEST_USER", "jusnap-test")
REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
        if item.nodeid.rsplit("::", 1)[-1] != item.name and item.parent is not None:
            # schemathesis names each operation's test, but under pytest 9.2 leaves them all
            # one node id: pytest-xdist ran only the first of them (1 of 21 operations).
            item._id = item.parent.id.child(item.name)  # type: ignore[attr-defined]
    seen: set[str] = set()
    twice = {i.nodeid for i in items if i.nodeid in seen or seen.add(i.nodeid)}
    if twice:  # loud, not a silently smaller run
        raise pytest.UsageError(f"tests share node ids (xdist would run one): {sorted(twice)[:5]}")


def work_unit(nodeid: str) -> str:
    """What one of the suite's workers runs as a whole (``pytest -n 2``, as scripts/test runs
    it): a module, so that its module-scoped stack is made once; a browser module once per
    application; all appliance tests, since they provision and restart this host's services
    one after another."""
    path = nodeid.split("::", 1)[0]
    if path.startswith("tests/appliance/"):
        return "tests/appliance"
    if path.startswith("tests/e2e/"):
        app = re.search(r"\[(notebook|lab)\b", nodeid)
        return f"{path}[{app.group(1)}]" if app else path
    return path


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook; absent without it
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ByWorkUnit(config, log)


def _local_user(name: str) -> pwd.struct_passwd:
    """The local user ``name``, made if missing; under a lock, as the suite's workers may ask
    at the same moment (two ``useradd`` at once: one fails on /etc/passwd's lock)."""
    with open("/run/lock/jusnap-tests-users.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
            return pwd.getpwnam(name)


@pytest.fixture(scope="session")
def kernel_user() -> pwd.struct_passwd:
    """An unprivileged user, as the Ansible role sets one up (in no special group)."""
    assert os.geteuid() == 0, (
        "integration tests run as root (CI does): they launch kernels as another user"
    )
    return _local_user(KERNEL_USER)


@pytest.fixture(scope="session")
def second_user(kernel_user: pwd.struct_passwd) -> pwd.struct_passwd:
    """Another local user: kernels of different owners run as different uids."""
    return _local_user(f"{KERNEL_USER}2")


@pytest.fixture(scope="session")
def criu_binary(kernel_user: pwd.struct_passwd) -> str:
    assert Path(CRIU).exists(), f"{CRIU} missing: run .ci/install-criu.sh (the criu Ansible role)"
    return CRIU


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

    def __init__(self, engine: Engine, kernel: Kernel | None = None, **launch: Any) -> None:
        self.engine = engine
        self.kernel = kernel or engine.kernels.launch(owner_uid=0, **launch)
        self.id = self.kernel.id
        self.client = connect(self.kernel.connection)

    @classmethod
    def attach(cls, engine: Engine, kernel_id: str) -> KernelSession:
        """A client for a kernel the engine made some other way (a fork)."""
        return cls(engine, engine.kernels.get(kernel_id))

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


@pytest.fixture
def daemon(criu_binary: str, kernel_user: pwd.struct_passwd, state_dir: Path) -> Iterator[Daemon]:
    """A fresh daemon for each test: these tests kill it, restart it, break its store or
    assert on what a new one holds."""
    conf = write_conf(state_dir, criu_binary, kernel_user, restore_timeout=None)
    d = Daemon(state_dir, conf)
    d.start()
    yield d
    d.stop()
    # Kernels outlive the daemon by design (it re-adopts them); the test's must go.
    subprocess.run(["pkill", "-KILL", "-f", f"{state_dir}/kernels/"], check=False)
