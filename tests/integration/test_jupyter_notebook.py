"""Notebook 7 with Jusnap kernels, driven exactly as the browser drives it.

A session is created through Jupyter's REST API, cells run over Jupyter's kernel websocket (v1
binary protocol), snapshots and restores go through the Jusnap API (Jupyter's proxy path and the
daemon's socket), and the websocket is never reconnected by the test.
"""

from __future__ import annotations

import json
import threading
import time

from tests.helpers import wait_until
from tests.integration.conftest import JusnapStack
from tests.jupyter import KernelWebsocket

ROUNDS = 20


def _kernel_of(stack: JusnapStack, path: str) -> tuple[str, KernelWebsocket]:
    session = stack.jupyter.new_session(path)
    assert session["kernel"]["name"] == "jusnap-python3", "Jusnap kernels are the default"
    kid = session["kernel"]["id"]
    return kid, KernelWebsocket(stack.jupyter, kid)


def _snapshot_via_daemon(stack: JusnapStack, kid: str, label: str) -> str:
    r = stack.daemon.cli("--json", "snapshot", kid, "--label", label)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["snapshot"]["id"]


def test_restore_in_place_over_the_same_websocket(stack: JusnapStack) -> None:
    j = stack.jupyter
    kid, ws = _kernel_of(stack, "rounds.ipynb")
    # The Jusnap kernel id is Jupyter's kernel id, and the daemon knows the notebook.
    k = j.jusnap("GET", f"kernels/{kid}", expect=200)
    assert k["status"] == "running" and k["notebook_path"].endswith("rounds.ipynb")
    assert ws.run("import os; print(os.getuid())").strip() == str(stack.jupyter.user.pw_uid)
    ws.run("import numpy as np; big = np.arange(1_000_000)")
    ok = 0
    for i in range(ROUNDS):
        ws.run(f"x = {i}; y = 'state-{i}'; big[:] = {i}")
        if i % 2 == 0:  # through Jupyter's proxy, as the frontend does
            sid = j.jusnap("POST", f"kernels/{kid}/snapshots", {"label": f"round {i}"}, expect=201)[
                "snapshot"
            ]["id"]
        else:  # through the daemon's socket (the CLI)
            sid = _snapshot_via_daemon(stack, kid, f"round {i}")
        ws.run("x = -1; y = 'changed'; big[:] = -1; del np")
        if i % 2 == 0:
            r = j.jusnap("POST", f"snapshots/{sid}/restore", {"kernel_id": kid}, expect=200)
            assert r["kernel"]["id"] == kid
        else:
            r = stack.daemon.cli("--json", "restore", sid, "--into", kid)
            assert r.returncode == 0, r.stderr
        # The very first cell after the restore: its output must arrive on the same websocket.
        out = ws.run("print(x, y, int(big.sum()) // len(big), 'np' in globals())", timeout=30)
        assert out.strip() == f"{i} state-{i} {i} True", f"round {i}: {out!r}"
        assert ws.connected
        ok += 1
    assert ok == ROUNDS


def test_interrupt_and_restart_from_jupyter_then_restore_older_snapshot(stack: JusnapStack) -> None:
    j = stack.jupyter
    kid, ws = _kernel_of(stack, "restart.ipynb")
    ws.run("before_restart = 'kept'")
    sid = j.jusnap("POST", f"kernels/{kid}/snapshots", {"label": "before restart"}, expect=201)[
        "snapshot"
    ]["id"]
    pid = j.jusnap("GET", f"kernels/{kid}", expect=200)["pid"]

    # Interrupt from the notebook UI (Jupyter's REST API → provisioner → daemon → SIGINT).
    result: dict[str, object] = {}
    t = threading.Thread(
        target=lambda: result.update(
            zip(("out", "err", "reply"), ws.execute("import time; time.sleep(60)", 90))
        )
    )
    t.start()
    wait_until(
        lambda: j.jusnap("GET", f"kernels/{kid}")["execution_state"] == "busy",
        30,
        what="busy kernel",
    )
    j.api("POST", f"api/kernels/{kid}/interrupt", expect=204)
    t.join(60)
    assert result["reply"]["ename"] == "KeyboardInterrupt"  # type: ignore[index]
    assert j.jusnap("GET", f"kernels/{kid}")["pid"] == pid

    # Restart from the notebook UI: a new process, the same connection, the same kernel id.
    conn_before = stack.daemon.cli("--json", "kernels")
    j.api("POST", f"api/kernels/{kid}/restart", expect=200)
    ws.kernel_info(timeout=60)
    k = j.jusnap("GET", f"kernels/{kid}", expect=200)
    assert k["status"] == "running" and k["pid"] != pid
    assert ws.run("print('before_restart' in globals())").strip() == "False"
    assert conn_before.returncode == 0

    # A snapshot taken before the restart restores into the restarted kernel.
    j.jusnap("POST", f"snapshots/{sid}/restore", {"kernel_id": kid}, expect=200)
    assert ws.run("print(before_restart)").strip() == "kept"
    # Jupyter's restarter did not fight the restored kernel (it would restart it: new PID).
    time.sleep(4)
    assert ws.run("print(before_restart)").strip() == "kept"
    assert j.api("GET", f"api/kernels/{kid}", expect=200)["execution_state"] in ("idle", "busy")

    # Shut down from the UI: the daemon forgets the kernel, the notebook keeps its snapshots.
    j.api("DELETE", f"api/kernels/{kid}", expect=204)
    ws.close()
    assert kid not in [k["id"] for k in j.jusnap("GET", "kernels", expect=200)]
    r = stack.daemon.cli("--json", "show", sid)
    assert r.returncode == 0, r.stderr


def test_snapshots_follow_the_notebook_across_a_jupyter_restart(stack: JusnapStack) -> None:
    j = stack.jupyter
    kid, ws = _kernel_of(stack, "keep.ipynb")
    ws.run("v = 42")
    sid = j.jusnap(
        "POST", f"kernels/{kid}/snapshots", {"label": "before server restart"}, expect=201
    )["snapshot"]["id"]
    ws.close()

    j.stop()
    assert kid not in [k["id"] for k in json.loads(stack.daemon.cli("--json", "kernels").stdout)]
    j.start()

    kid2, ws2 = _kernel_of(stack, "keep.ipynb")
    assert kid2 != kid
    listed = j.jusnap("GET", f"kernels/{kid2}/snapshots", expect=200)
    assert [(s["id"], s["restorable"]) for s in listed] == [(sid, True)]
    assert ws2.run("print('v' in globals())").strip() == "False"
    j.jusnap("POST", f"snapshots/{sid}/restore", {"kernel_id": kid2}, expect=200)
    assert ws2.run("print(v)").strip() == "42"
    # Another notebook does not see them.
    kid3, ws3 = _kernel_of(stack, "other.ipynb")
    assert j.jusnap("GET", f"kernels/{kid3}/snapshots", expect=200) == []
    ws3.close()
    ws2.close()


def _auto_on(stack: JusnapStack, kid: str) -> None:
    """Automatic snapshots on for this kernel, with a 4 s cooldown, through the API (as the
    frontend's toggle does): the module's stack has them off by default."""
    auto = stack.jupyter.jusnap(
        "PATCH", f"kernels/{kid}/auto", {"enabled": True, "cooldown": 4}, expect=200
    )
    assert (auto["enabled"], auto["cooldown"]) == (True, 4.0)


def _autos(stack: JusnapStack, kid: str) -> list[dict]:
    return [
        s
        for s in stack.jupyter.jusnap("GET", f"kernels/{kid}/snapshots", expect=200)
        if s["trigger"] == "auto"
    ]


def test_auto_snapshots_after_cells_with_cooldown_and_off_switch(stack: JusnapStack) -> None:
    j = stack.jupyter
    kid, ws = _kernel_of(stack, "auto.ipynb")
    _auto_on(stack, kid)
    assert (
        j.jusnap("GET", f"kernels/{kid}/auto", expect=200).items()
        >= {"enabled": True, "cooldown": 4.0}.items()
    )
    # The cell is not blocked by the snapshot and prints nothing of it (run() asserts no stderr).
    t0 = time.monotonic()
    assert ws.run("a = 1; print('cell 1')").strip() == "cell 1"
    assert time.monotonic() - t0 < 2
    first = wait_until(lambda: _autos(stack, kid), 30, what="an automatic snapshot")
    assert len(first) == 1 and first[0]["execution_count"] == 1
    # Within the cooldown: nothing at once, but one trailing snapshot when the cooldown ends,
    # holding the last cell of the burst.
    ws.run("a = 2")
    ws.run("a = 3")
    time.sleep(1.5)
    assert len(_autos(stack, kid)) == 1
    trailing = wait_until(
        lambda: len(_autos(stack, kid)) == 2 and _autos(stack, kid), 30, what="a trailing one"
    )
    assert trailing[0]["execution_count"] == 3
    # The next cell is snapshotted too (once its cooldown allows).
    ws.run("a = 4")
    second = wait_until(
        lambda: (autos := _autos(stack, kid))[0]["execution_count"] == 4 and autos,
        30,
        what="a snapshot of cell 4",
    )
    assert len(second) == 3
    # An automatic snapshot (taken right after the kernel's own request) restores fine.
    ws.run("a = 'later'")
    j.jusnap("POST", f"snapshots/{second[0]['id']}/restore", {"kernel_id": kid}, expect=200)
    assert ws.run("print(a)").strip() == "4"
    # Off for this kernel (the API the frontend uses; `jusnap auto KERNEL off` does the same).
    assert (
        j.jusnap("PATCH", f"kernels/{kid}/auto", {"enabled": False}, expect=200)["enabled"] is False
    )
    time.sleep(4.5)
    count = len(_autos(stack, kid))
    for n in range(3):
        ws.run(f"b = {n}")
    time.sleep(2)
    assert len(_autos(stack, kid)) == count
    ws.close()


def test_auto_snapshot_failure_prints_one_line(stack: JusnapStack) -> None:
    kid, ws = _kernel_of(stack, "fail.ipynb")
    _auto_on(stack, kid)
    ws.run("import os")
    # Point the extension at a socket that does not exist: every cell's request fails.
    out, err, reply = ws.execute("os.environ['JUSNAP_SOCKET'] = '/nonexistent/jusnap.sock'")
    assert reply["status"] == "ok" and out == ""
    _, err2, _ = ws.execute("x = 2")
    time.sleep(0.5)
    _, err3, _ = ws.execute("x = 3")
    time.sleep(0.5)
    ws.kernel_info()
    stray = "".join(m["content"]["text"] for m in ws.stray if m["msg_type"] == "stream")
    text = err + err2 + err3 + stray
    assert text.count("jusnap: automatic snapshot failed") == 1, text
    assert len([line for line in text.splitlines() if line.strip()]) == 1
    ws.close()


def test_auto_snapshots_go_on_after_restoring_an_older_kernels_snapshot(
    stack: JusnapStack,
) -> None:
    """The restored process remembers its old kernel id; the extension finds its new one."""
    j = stack.jupyter
    kid, ws = _kernel_of(stack, "follow.ipynb")
    _auto_on(stack, kid)
    ws.run("z = 'from the first kernel'")
    first = wait_until(lambda: _autos(stack, kid), 30, what="an automatic snapshot")[0]
    j.api("DELETE", f"api/kernels/{kid}", expect=204)
    ws.close()

    kid2, ws2 = _kernel_of(stack, "follow.ipynb")
    _auto_on(stack, kid2)
    j.jusnap("POST", f"snapshots/{first['id']}/restore", {"kernel_id": kid2}, expect=200)
    assert ws2.run("print(z)").strip() == "from the first kernel"
    time.sleep(4.2)  # the cooldown after the restore
    ws2.run("z = 'later'")  # no stderr: the extension recovered without a word
    # (The cell run right after the restore may get a trailing snapshot of its own first.)
    mine = wait_until(
        lambda: [
            s
            for s in _autos(stack, kid2)
            if s["kernel_id"] == kid2 and s["execution_count"] == first["execution_count"] + 2
        ],
        30,
        what="a snapshot of the new kernel's last cell",
    )
    assert mine
    ws2.close()
