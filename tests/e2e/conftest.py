"""Browser tests: Debian's chromium, driven by Playwright, against real Jupyter servers
(Notebook 7 and JupyterLab 4) with the jusnap_jupyter server extension and provisioner, the
jusnap_labextension frontend and the real Jusnap daemon (CRIU, kernels as the kernel user).

Needs what the integration tests need (root, CRIU, the kernel user) plus ``chromium`` (apt)
and the ``playwright`` Python package; ``jusnap_labextension`` must be pip-installed (built).
Screenshots go to ``.artifacts/e2e/`` at the repository root.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import PYTHON, REPO, Daemon, make_state_dir
from tests.jupyter import JupyterServer, free_port

CHROMIUM = os.environ.get("JUSNAP_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
ARTIFACTS = Path(os.environ.get("JUSNAP_TEST_ARTIFACTS", REPO / ".artifacts" / "e2e"))
APPS = ("notebook", "lab")

# User settings for the browser session: no news pop-up over the notifications, and a short
# background refresh so that auto-snapshots show up quickly.
NEWS = "@jupyterlab/apputils-extension/notification.jupyterlab-settings"
JUSNAP = "jusnap-labextension/plugin.jupyterlab-settings"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


class BrowserJupyter(JupyterServer):
    """tests.jupyter's server as ``jupyter notebook`` or ``jupyter lab``, with lab user settings."""

    def __init__(self, app: str, settings: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = app
        lab_settings = self.base / "lab-settings"
        for name, values in {NEWS: {"fetchNews": "false"}, JUSNAP: settings}.items():
            path = lab_settings / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        for d in [lab_settings, *lab_settings.rglob("*")]:
            os.chown(d, self.user.pw_uid, self.user.pw_gid)

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "JUPYTERLAB_SETTINGS_DIR": str(self.base / "lab-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(self.base / "lab-workspaces"),
        }

    def start(self, timeout: float = 90) -> None:
        module = {"notebook": "notebook", "lab": "jupyterlab"}[self.app]
        logf = self.log.open("ab")
        argv = [
            sys.executable, "-m", module, "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--ServerApp.jpserver_extensions={'jusnap_jupyter': True}",
            "--KernelManager.shutdown_wait_time=5", "--LabApp.news_url=None",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv,
            user=self.user.pw_uid,
            group=self.user.pw_gid,
            extra_groups=[],
            env=self.env(),
            cwd=self.base,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(requests.RequestException):
                r = requests.get(self.url + "api/status", headers=self.auth, timeout=2)
                if r.status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"Jupyter ({self.app}) did not start:\n{self.log.read_text()[-4000:]}")

    def page_url(self, notebook: str) -> str:
        path = {"notebook": "notebooks", "lab": "lab/tree"}[self.app]
        return f"{self.url}{path}/{notebook}?token={self.token}"

    def write_notebook(self, name: str, cells: list[str]) -> str:
        kernelspec = {
            "name": "jusnap-python3",
            "display_name": "Python 3 (Jusnap)",
            "language": "python",
        }
        nb = {
            "cells": [
                {
                    "cell_type": "code",
                    "execution_count": None,
                    "id": f"c{i}",
                    "metadata": {},
                    "outputs": [],
                    "source": src,
                }
                for i, src in enumerate(cells)
            ],
            "metadata": {"kernelspec": kernelspec, "language_info": {"name": "python"}},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
        path = self.root / name
        path.write_text(json.dumps(nb, indent=1))
        os.chown(path, self.user.pw_uid, self.user.pw_gid)
        return name


class Stack:
    def __init__(self, daemon: Daemon, jupyter: BrowserJupyter) -> None:
        self.daemon = daemon
        self.jupyter = jupyter


def _stop_kernels(daemon: Daemon) -> None:
    if daemon.proc is None or daemon.proc.poll() is not None:
        return
    r = daemon.cli("--json", "kernels")
    with contextlib.suppress(ValueError):
        for k in json.loads(r.stdout or "[]"):
            daemon.cli("stop", k["id"])


@pytest.fixture(params=APPS)
def app(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_stack(criu_binary: str, kernel_user: pwd.struct_passwd) -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def make(
        app: str, auto_snapshot: bool = False, cooldown: str = "0s", refresh_interval: int = 3
    ) -> Stack:
        state_dir = make_state_dir()
        conf = state_dir / "conf.yml"
        conf.write_text(
            "jusnap:\n"
            f"  state_dir: {state_dir}\n"
            "  criu:\n"
            f"    binary: {criu_binary}\n"
            "    restore_timeout: 60s\n"
            "  http:\n"
            f"    socket: {state_dir / 'jusnap.sock'}\n"
            "    host: ''\n"
            "  ipython:\n"
            f"    python_interpreter: {PYTHON}\n"
            f"    cooldown: {cooldown}\n"
            f"    auto_snapshot: {str(auto_snapshot).lower()}\n"
            "  os:\n"
            f"    uid: {kernel_user.pw_name}\n"
        )
        daemon = Daemon(state_dir, conf)
        daemon.start()
        base = Path(make_state_dir("jusnap-e2e-"))
        settings = {"refreshInterval": refresh_interval}
        jupyter = BrowserJupyter(app, settings, base, kernel_user, daemon.socket, free_port())
        stack = Stack(daemon, jupyter)
        made.append(stack)
        jupyter.install_kernelspec()
        jupyter.start()
        return stack

    yield make
    for stack in made:
        stack.jupyter.stop()
        _stop_kernels(stack.daemon)
        stack.daemon.stop()
        shutil.rmtree(stack.jupyter.base, ignore_errors=True)
        shutil.rmtree(stack.daemon.state_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Module scope: Playwright's sync API keeps an asyncio loop running in this thread until it
    # stops, which would break later tests that call asyncio.run().
    playwright = pytest.importorskip("playwright.sync_api")
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: apt-get install -y chromium"
    with playwright.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(
        viewport={"width": 1440, "height": 900}, locale="en-GB", timezone_id="UTC"
    )
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    console: list[str] = []
    pg.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    pg.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    yield pg
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):
            pg.screenshot(path=str(ARTIFACTS / f"FAILED-{request.node.name}.png"))
        log = [failed.longreprtext[-6000:], "---- browser console ----", *console]
        (ARTIFACTS / f"FAILED-{request.node.name}.txt").write_text("\n".join(log))
    context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def shot() -> Callable[[Any, str], Path]:
    """Save a screenshot under .artifacts/e2e/ (kept by CI as a test artifact)."""

    def take(target: Any, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        target.screenshot(path=str(path))
        return path

    return take
