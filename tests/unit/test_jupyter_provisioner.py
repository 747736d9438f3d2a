"""The provisioner's pure parts: the command and environment handed to the daemon."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpec
from jusnap_jupyter.provisioner import NOTEBOOK_ENV, JusnapProvisioner, notebook_path


def _provisioner(**spec: object) -> JusnapProvisioner:
    ks = KernelSpec(
        argv=["python", "-m", "ipykernel_launcher", "-f", "{connection_file}", "--ext=x"],
        display_name="Python 3 (Jusnap)",
        language="python",
        **spec,
    )
    ks.resource_dir = "/res"
    return JusnapProvisioner(kernel_id="k", kernel_spec=ks, parent=None)


def test_command_keeps_the_connection_file_placeholder_for_the_daemon() -> None:
    p = _provisioner()
    kw = asyncio.run(p.pre_launch(env={"PATH": "/x"}, extra_arguments=["--foo"]))
    assert kw["cmd"] == [
        sys.executable,
        "-m",
        "ipykernel_launcher",
        "-f",
        "{connection_file}",
        "--ext=x",
        "--foo",
    ]


def test_only_the_kernelspec_env_and_the_session_name_reach_the_daemon() -> None:
    p = _provisioner(env={"MY_VAR": "1"})
    server_env = {
        "PATH": "/srv/bin",
        "JUPYTER_TOKEN": "secret",
        "JPY_PARENT_PID": "1",
        "JPY_SESSION_NAME": "/nb/a.ipynb",
        "LANG": "C.UTF-8",
    }
    kw = asyncio.run(p.pre_launch(env=server_env))
    assert kw["env"] == {"MY_VAR": "1", "JPY_SESSION_NAME": "/nb/a.ipynb", "LANG": "C.UTF-8"}


def test_not_launched_means_no_process() -> None:
    p = _provisioner()
    assert not p.has_process
    assert asyncio.run(p.poll()) is None


def test_a_session_named_by_its_directory_never_becomes_the_notebook(tmp_path: Path) -> None:
    """Issue 15: ``"name": ""`` makes JPY_SESSION_NAME the directory of the notebook."""
    (tmp_path / "a.ipynb").write_text("{}")
    d = str(tmp_path)
    assert notebook_path({"JPY_SESSION_NAME": d + "/"}, d) is None
    assert notebook_path({"JPY_SESSION_NAME": d}, d) is None  # an existing directory
    assert notebook_path({"JPY_SESSION_NAME": "."}, d) is None
    assert notebook_path({"JPY_SESSION_NAME": f"{d}/a.ipynb"}, d) == f"{d}/a.ipynb"
    # What the server extension (or a headless caller) says wins; relative to the kernel's cwd.
    env = {"JPY_SESSION_NAME": d + "/", NOTEBOOK_ENV: "a.ipynb"}
    assert notebook_path(env, d) == f"{d}/a.ipynb"
    assert notebook_path({NOTEBOOK_ENV: d}, d) is None


def test_headless_launch_runs_in_the_callers_cwd_and_names_the_notebook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nbclient and papermill pass neither cwd nor a notebook: the caller's cwd is used."""
    monkeypatch.chdir(tmp_path)
    p = _provisioner()
    kw = asyncio.run(p.pre_launch(env={NOTEBOOK_ENV: "run.ipynb"}))
    assert kw["cwd"] == str(tmp_path)
    assert p._notebook == str(tmp_path / "run.ipynb")
    assert NOTEBOOK_ENV not in kw["env"], "not passed on to the kernel"


def test_only_the_users_cells_ask_for_automatic_snapshots() -> None:
    """Start-up lines (store_history=False) and silent requests take no snapshot: a fresh
    kernel's would come first in the notebook's list, above the state to resume from."""
    from types import SimpleNamespace

    from jusnap_jupyter.autosnap import user_cell

    def result(**info: bool) -> SimpleNamespace:
        return SimpleNamespace(execution_count=1, info=SimpleNamespace(**info))

    assert user_cell(result(store_history=True, silent=False))
    assert not user_cell(result(store_history=False, silent=False))
    assert not user_cell(result(store_history=True, silent=True))
    assert user_cell(SimpleNamespace(execution_count=3))  # an IPython without ``info``
