""" "Open as new notebook" through the real Jupyter server: ``POST {base}jusnap/fork`` copies the
notebook beside it, the daemon forks the snapshot into a kernel id Jupyter chose, and the copy
has a Jupyter session on that kernel (the provisioner adopted it). Refusals leave no copy and
no kernel behind."""

from __future__ import annotations

import json
import re
import threading

import nbformat
import requests

from tests.integration.conftest import JusnapStack
from tests.jupyter import KernelWebsocket

FORK_NAME = re.compile(r"^fork-me \(fork of first \d\d-\d\d\)( 1)?\.ipynb$")


def _notebook(stack: JusnapStack, path: str) -> None:
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("x = 1")],
        metadata={"kernelspec": {"name": "jusnap-python3", "display_name": "Jusnap"}},
    )
    body = {"type": "notebook", "format": "json", "content": json.loads(nbformat.writes(nb))}
    stack.jupyter.api("PUT", f"api/contents/{path}", body, expect=201)


def _files(stack: JusnapStack) -> list[str]:
    return sorted(p.name for p in stack.jupyter.root.iterdir())


def _kernel_ids(stack: JusnapStack) -> set[str]:
    return {k["id"] for k in stack.jupyter.jusnap("GET", "kernels", expect=200)}


def _fork(stack: JusnapStack, body: dict, expect: int) -> dict:
    return stack.jupyter.api("POST", "jusnap/fork", body, expect=expect)


def test_refusals_leave_nothing_behind(stack: JusnapStack) -> None:
    j = stack.jupyter
    _notebook(stack, "mine.ipynb")
    _notebook(stack, "other.ipynb")
    session = j.new_session("mine.ipynb")
    kid = session["kernel"]["id"]
    sid = j.jusnap("POST", f"kernels/{kid}/snapshots", {"label": "s"}, expect=201)["snapshot"]["id"]
    files, kernels = _files(stack), _kernel_ids(stack)

    bad = {"snapshot_id": sid, "path": "../mine.ipynb"}
    assert _fork(stack, bad, 400)["error"] == "invalid_request"
    assert _fork(stack, {"snapshot_id": "nope", "path": "mine.ipynb"}, 400)["message"].startswith(
        "snapshot_id"
    )
    missing = {"snapshot_id": sid, "path": "missing.ipynb"}
    assert _fork(stack, missing, 404)["error"] == "not_found"
    unknown = {"snapshot_id": "0" * 26, "path": "mine.ipynb"}
    assert _fork(stack, unknown, 404)["message"], "the daemon's own 404, passed on"
    # A snapshot of one notebook is not forked as a copy of another.
    other = _fork(stack, {"snapshot_id": sid, "path": "other.ipynb"}, 409)
    assert "mine.ipynb" not in other["message"] and "other.ipynb" in other["message"]
    # Jupyter's login applies: no token, no fork.
    r = requests.post(j.url + "jusnap/fork", json={}, timeout=30)
    assert r.status_code == 403 and "Access-Control-Allow-Origin" not in r.headers

    assert _files(stack) == files
    assert _kernel_ids(stack) == kernels


def test_open_as_new_notebook_runs_beside_the_original(stack: JusnapStack) -> None:
    j = stack.jupyter
    _notebook(stack, "fork-me.ipynb")
    kid = j.new_session("fork-me.ipynb")["kernel"]["id"]
    ws = KernelWebsocket(j, kid)
    ws.run(
        "x = 41\ndef gen():\n    i = 0\n    while True:\n        i += 1\n        yield i\ng = gen()"
    )
    assert ws.run("print(next(g))").strip() == "1"
    sid = j.jusnap("POST", f"kernels/{kid}/snapshots", {"label": "first"}, expect=201)["snapshot"][
        "id"
    ]
    ws.run("x = 'original moved on'")

    answer = _fork(
        stack, {"snapshot_id": sid, "path": "fork-me.ipynb", "utc_offset_minutes": 0}, 201
    )
    copy, fork_kid = answer["path"], answer["kernel_id"]
    assert FORK_NAME.match(copy), copy
    assert fork_kid != kid and answer["parent_snapshot_id"] == sid
    assert answer["session"]["path"] == copy and answer["session"]["kernel"]["id"] == fork_kid
    # The copy is the notebook, beside it; its Jupyter session is on the fork's kernel.
    assert nbformat.read(j.root / copy, as_version=4).cells[0].source == "x = 1"
    sessions = {s["path"]: s["kernel"]["id"] for s in j.api("GET", "api/sessions", expect=200)}
    assert sessions == {"fork-me.ipynb": kid, copy: fork_kid}
    forked = j.jusnap("GET", f"kernels/{fork_kid}", expect=200)
    assert forked["status"] == "running" and forked["notebook_path"] == str(j.root / copy)
    assert forked.get("parent_snapshot_id") == sid and forked.get("parent_kernel_id") == kid

    # The fork has the snapshot's state (the generator goes on from it); the original its own.
    fws = KernelWebsocket(j, fork_kid)
    assert fws.run("print(x, next(g))").strip() == "41 2"
    assert ws.run("print(x, next(g))").strip() == "original moved on 2"

    # Both run at once, and their states diverge.
    outs: dict[str, str] = {}

    def run(name: str, sock: KernelWebsocket, value: str) -> None:
        outs[name] = sock.run(f"import time; time.sleep(1.5); x = {value!r}; print(x)")

    threads = [
        threading.Thread(target=run, args=("orig", ws, "left")),
        threading.Thread(target=run, args=("fork", fws, "right")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outs == {"orig": "left\n", "fork": "right\n"}
    assert ws.run("print(x)").strip() == "left"
    assert fws.run("print(x)").strip() == "right"

    # A second fork of the same snapshot gets a name of its own; its snapshots are its own.
    again = _fork(
        stack, {"snapshot_id": sid, "path": "fork-me.ipynb", "utc_offset_minutes": 0}, 201
    )
    assert again["path"] != copy and FORK_NAME.match(again["path"])
    assert j.jusnap("GET", f"kernels/{fork_kid}/snapshots", expect=200) == []

    # Shutting the fork's session down ends the fork only.
    j.api("DELETE", f"api/sessions/{answer['session']['id']}", expect=204)
    assert ws.run("print(x)").strip() == "left"
    ws.close()
    fws.close()


def test_a_snapshot_of_a_stopped_kernel_opens_as_new_notebook(stack: JusnapStack) -> None:
    """The notebook's kernel was shut down (or the server stopped and came back): its
    snapshots are still listed for the notebook, and one opens as a new notebook."""
    j = stack.jupyter
    _notebook(stack, "stopped.ipynb")
    session = j.new_session("stopped.ipynb")
    kid = session["kernel"]["id"]
    ws = KernelWebsocket(j, kid)
    ws.run("import threading\nstate = {'n': 7}\nlock = threading.Lock()")
    sid = j.jusnap("POST", f"kernels/{kid}/snapshots", {"label": "kept"}, expect=201)["snapshot"][
        "id"
    ]
    ws.close()
    j.api("DELETE", f"api/sessions/{session['id']}", expect=204)

    answer = _fork(stack, {"snapshot_id": sid, "path": "stopped.ipynb"}, 201)
    assert re.fullmatch(r"stopped \(fork of kept \d\d-\d\d\)\.ipynb", answer["path"])
    fws = KernelWebsocket(j, answer["kernel_id"])
    assert fws.run("with lock:\n    state['n'] += 1\nprint(state['n'])").strip() == "8"
    assert {s["path"] for s in j.api("GET", "api/sessions", expect=200)} == {answer["path"]}
    fws.close()
