"""Which notebook a kernel's snapshots belong to (issue 15): a file, never a directory, and
headless runs (papermill) either tied to their notebook or still listed once they ended."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import nbformat

from tests.conftest import PYTHON
from tests.helpers import wait_until
from tests.integration.conftest import JusnapStack


def _notebook(stack: JusnapStack, path: str, cells: list[str]) -> Path:
    """A notebook file in Jupyter's root, written through Jupyter (owned by its user)."""
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(c) for c in cells],
        metadata={"kernelspec": {"name": "jusnap-python3", "display_name": "Jusnap"}},
    )
    parent = path.rpartition("/")[0]
    if parent:
        body = {"type": "directory"}
        stack.jupyter.api("PUT", f"api/contents/{parent}", body)
    body = {"type": "notebook", "format": "json", "content": json.loads(nbformat.writes(nb))}
    stack.jupyter.api("PUT", f"api/contents/{path}", body, expect=201)
    return stack.jupyter.root / path


def _daemon_json(stack: JusnapStack, *args: str) -> list[dict]:
    r = stack.daemon.cli("--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_sessions_with_an_empty_name_belong_to_their_notebook_file(stack: JusnapStack) -> None:
    """Some clients create sessions with ``"name": ""``; Jupyter then tells the kernel the
    notebook's directory, which every notebook there would have shared."""
    paths = ["proj/a.ipynb", "proj/b.ipynb"]
    kids = []
    for path in paths:
        _notebook(stack, path, ["x = 1"])
        session = stack.jupyter.api(
            "POST",
            "api/sessions",
            {"path": path, "name": "", "type": "notebook", "kernel": {"name": "jusnap-python3"}},
            expect=201,
        )
        kids.append(session["kernel"]["id"])
    kernels = {k["id"]: k for k in _daemon_json(stack, "kernels")}
    assert [kernels[k]["notebook_path"] for k in kids] == [
        str(stack.jupyter.root / p) for p in paths
    ]
    sids = [_daemon_json(stack, "snapshot", k)["snapshot"]["id"] for k in kids]
    for kid, sid in zip(kids, sids, strict=True):  # each notebook lists its own snapshot only
        assert [s["id"] for s in _daemon_json(stack, "snapshots", kid)] == [sid]


def _papermill(stack: JusnapStack, src: Path, env: dict[str, str]) -> None:
    r = stack.jupyter.as_user(
        [
            PYTHON,
            "-m",
            "papermill",
            str(src),
            str(src.with_name("out.ipynb")),
            "-k",
            "jusnap-python3",
            "--cwd",
            str(src.parent),
        ],
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]


def test_papermill_runs_keep_their_snapshots(make_stack: Callable[..., JusnapStack]) -> None:
    """With JUSNAP_NOTEBOOK_PATH a headless run's snapshots belong to its notebook; without,
    papermill gives the provisioner no notebook path, and they are still listed after the
    kernel has shut down."""
    stack = make_stack(auto_snapshot=True)
    cells = ["import os; value = 42", "import time; time.sleep(3)  # the last auto snapshot"]
    src = _notebook(stack, "headless/in.ipynb", cells)

    def snaps() -> list[dict]:
        return _daemon_json(stack, "snapshots", "--all")

    _papermill(stack, src, {"JUSNAP_NOTEBOOK_PATH": str(src)})
    try:
        wait_until(lambda: len(snaps()) >= 1, timeout=30, what="the tied run's snapshots")
    except AssertionError:
        raise AssertionError(stack.daemon.log.read_text()[-4000:]) from None
    tied = snaps()
    assert {s["notebook_path"] for s in tied} == {str(src)}
    assert not any(s["kernel_alive"] for s in tied), "papermill shut its kernel down"
    assert _daemon_json(stack, "kernels") == []

    _papermill(stack, src, {})
    wait_until(lambda: len(snaps()) > len(tied), timeout=30)
    time.sleep(1)
    loose = [s for s in snaps() if s["id"] not in {t["id"] for t in tied}]
    assert loose and all(s["notebook_path"] is None for s in loose)
    assert all(not s["kernel_alive"] for s in loose)
