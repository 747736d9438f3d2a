"""Resume where you left off: a Jupyter server that stops (JupyterHub culls it or its user stops
it: SIGINT, then SIGTERM) snapshots its kernels first, and the notebook's next kernel restores
that state. The same path through a real hub and nginx: tests/appliance/test_5_hub.py."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable

from tests.helpers import wait_until
from tests.integration.conftest import JusnapStack
from tests.jupyter import JupyterServer, KernelWebsocket


def _daemon_kernels(stack: JusnapStack) -> set[str]:
    r = stack.daemon.cli("--json", "kernels")
    assert r.returncode == 0, r.stderr
    return {k["id"] for k in json.loads(r.stdout)}


def _kernels_run_this_tree(j: JupyterServer) -> None:
    """The kernels' own code (the auto-snapshot extension) from the tree under test when the
    run points PYTHONPATH at it, as the Jupyter server's already is (tests/jupyter.py)."""
    path = os.environ.get("PYTHONPATH")
    if not path:
        return
    spec = j.base / "prefix" / "share" / "jupyter" / "kernels" / "jusnap-python3" / "kernel.json"
    data = json.loads(spec.read_text())
    data["env"] = {**data.get("env", {}), "PYTHONPATH": path}
    spec.write_text(json.dumps(data))


def test_a_stopping_server_snapshots_its_kernels_for_the_next_one(
    make_stack: Callable[..., JusnapStack],
) -> None:
    # A long cooldown: the second cell's automatic snapshot is skipped, so only the snapshot
    # taken while the server stops can hold `resume_me`.
    stack = make_stack(auto_snapshot=True, cooldown="1h")
    j = stack.jupyter
    _kernels_run_this_tree(j)
    kid = j.new_session("resume.ipynb")["kernel"]["id"]
    ws = KernelWebsocket(j, kid)
    try:
        ws.run("x = 1")
        wait_until(lambda: j.jusnap("GET", f"kernels/{kid}/snapshots"), 30, what="a snapshot")
        ws.run("resume_me = 'left-off-here'")
    finally:
        ws.close()
    before = {s["id"] for s in j.jusnap("GET", f"kernels/{kid}/snapshots", expect=200)}
    assert j.proc is not None
    j.proc.send_signal(signal.SIGINT)  # how JupyterHub's LocalProcessSpawner stops a server
    assert j.proc.wait(timeout=90) == 0
    assert kid not in _daemon_kernels(stack), "the stopped server's kernel is gone"

    j.start()
    new = j.new_session("resume.ipynb")["kernel"]["id"]
    offered = j.jusnap("GET", f"kernels/{new}/snapshots", expect=200)
    final = [s for s in offered if s["kernel_id"] == kid and s["id"] not in before]
    assert len(final) == 1, f"no snapshot taken while the server stopped: {offered}"
    assert final[0]["trigger"] == "auto" and final[0]["restorable"], final[0]
    j.jusnap("POST", f"snapshots/{final[0]['id']}/restore", {"kernel_id": new}, expect=200)
    ws = KernelWebsocket(j, new)
    try:
        assert ws.run("print(resume_me, x)").strip() == "left-off-here 1"
    finally:
        ws.close()

    # A kernel in which nothing ran leaves no snapshot when its server stops (SIGTERM here).
    j.stop()
    j.start()
    fresh = j.new_session("resume.ipynb")["kernel"]["id"]
    count = len(j.jusnap("GET", f"kernels/{fresh}/snapshots", expect=200))
    j.stop()
    j.start()
    newer = j.new_session("resume.ipynb")["kernel"]["id"]
    listed = j.jusnap("GET", f"kernels/{newer}/snapshots", expect=200)
    assert len(listed) == count, [
        (s["kernel_id"][:8], s["trigger"], s["execution_count"], s["created_at"]) for s in listed
    ] + [kid[:8], new[:8], fresh[:8], newer[:8]]
