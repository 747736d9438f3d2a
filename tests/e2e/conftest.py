"""Browser tests: Debian's chromium, driven by Playwright, against real Jupyter servers
(Notebook 7 and JupyterLab 4) with the jusnap_jupyter server extension and provisioner, the
jusnap_labextension frontend and the real Jusnap daemon (CRIU, kernels as the kernel user).

Needs what the integration tests need (root, CRIU, the kernel user) plus ``chromium`` (apt)
and the ``playwright`` Python package; ``jusnap_labextension`` must be pip-installed (built),
or ``JUSNAP_TEST_LABEXTENSION`` names a built one (``python_modules/labextension/
jusnap_labextension/labextension`` after ``npm run build:prod``): the test servers then serve
that one, and a working tree's frontend is tested without reinstalling the shared virtualenv.
Screenshots go to ``.artifacts/e2e/`` at the repository root.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.jupyter import JupyterServer
from tests.stack import Stack as Stack
from tests.stack import StackFactory

CHROMIUM = os.environ.get("JUSNAP_TEST_CHROMIUM", "/usr/bin/chromium")
LABEXTENSION = os.environ.get("JUSNAP_TEST_LABEXTENSION")
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

    start_timeout = 90.0
    app_args = ("--LabApp.news_url=None",)

    def __init__(self, app: str, settings: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = app
        self.module = {"notebook": "notebook", "lab": "jupyterlab"}[app]
        lab_settings = self.base / "lab-settings"
        for name, values in {NEWS: {"fetchNews": "false"}, JUSNAP: settings}.items():
            path = lab_settings / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        for d in [lab_settings, *lab_settings.rglob("*")]:
            os.chown(d, self.user.pw_uid, self.user.pw_gid)
        if LABEXTENSION:  # first on JUPYTER_PATH: found before the installed one
            extensions = self.base / "prefix" / "share" / "jupyter" / "labextensions"
            shutil.copytree(LABEXTENSION, extensions / "jusnap-labextension")
            for d in [*extensions.parents[:2], extensions, *extensions.rglob("*")]:
                os.chown(d, self.user.pw_uid, self.user.pw_gid)

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "JUPYTERLAB_SETTINGS_DIR": str(self.base / "lab-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(self.base / "lab-workspaces"),
        }

    def forget_workspaces(self) -> None:
        """Drop JupyterLab's saved layouts: the next page opens only its own notebook."""
        shutil.rmtree(self.base / "lab-workspaces", ignore_errors=True)

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


@pytest.fixture(scope="module", params=APPS)
def app(request: pytest.FixtureRequest) -> str:
    """The application; module scope so that the tests of one application share its stack."""
    return str(request.param)


def _make(factory: StackFactory, app: str, auto_snapshot: bool, refresh_interval: int) -> Stack:
    settings = {"refreshInterval": refresh_interval}
    jupyter = functools.partial(BrowserJupyter, app, settings)
    return factory.make(auto_snapshot, tcp=False, jupyter=jupyter)


@pytest.fixture
def make_stack(criu_binary: str, kernel_user: pwd.struct_passwd) -> Iterator[Callable[..., Stack]]:
    """A stack of the test's own, for a test that stops the daemon or needs other settings."""
    factory = StackFactory(criu_binary, kernel_user)

    def make(app: str, auto_snapshot: bool = False, refresh_interval: int = 3) -> Stack:
        return _make(factory, app, auto_snapshot, refresh_interval)

    yield make
    factory.close()


@pytest.fixture(scope="module")
def app_stack(app: str, criu_binary: str, kernel_user: pwd.struct_passwd) -> Iterator[Stack]:
    """One stack per application (default settings: automatic snapshots off, refresh every
    3 s) shared by the tests that only need *a* stack: each uses notebooks of its own and
    switches automatic snapshots on for its kernel itself, as a user does."""
    factory = StackFactory(criu_binary, kernel_user)
    yield _make(factory, app, auto_snapshot=False, refresh_interval=3)
    factory.close()


@pytest.fixture
def stack(app_stack: Stack) -> Iterator[Stack]:
    """The application's shared stack, running, with no kernel left by an earlier test."""
    app_stack.revive()
    yield app_stack
    app_stack.clear_kernels()
    jupyter = app_stack.jupyter
    assert isinstance(jupyter, BrowserJupyter)
    jupyter.forget_workspaces()


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
