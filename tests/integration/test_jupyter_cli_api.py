"""The CLI (root, over the socket) and the API (the browser's path through Jupyter) agree."""

from __future__ import annotations

import json
from typing import Any

from tests.integration.conftest import JusnapStack
from tests.jupyter import KernelWebsocket


def _cli(stack: JusnapStack, *args: str) -> Any:
    r = stack.daemon.cli("--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_cli_and_api_agree(stack: JusnapStack) -> None:
    j = stack.jupyter
    kid = j.new_session("agree.ipynb")["kernel"]["id"]
    ws = KernelWebsocket(j, kid)
    ws.run("a = 1")
    via_api = j.jusnap("POST", f"kernels/{kid}/snapshots", {"label": "api"}, expect=201)["snapshot"]
    ws.run("a = 2")
    via_cli = _cli(stack, "snapshot", kid, "--label", "cli")["snapshot"]
    assert set(via_api) == set(via_cli)

    # Same lists, same fields, same order.
    api_list = j.jusnap("GET", f"kernels/{kid}/snapshots", expect=200)
    assert _cli(stack, "snapshots", kid) == api_list
    assert [s["id"] for s in api_list] == [via_cli["id"], via_api["id"]]
    for s in (via_api, via_cli):
        assert _cli(stack, "show", s["id"]) == j.jusnap("GET", f"snapshots/{s['id']}", expect=200)

    # The kernel: the CLI's row and the API's object are one record.
    cli_kernel = next(k for k in _cli(stack, "kernels") if k["id"] == kid)
    api_kernel = j.jusnap("GET", f"kernels/{kid}", expect=200)
    volatile = {"execution_state"}
    assert {k: v for k, v in cli_kernel.items() if k not in volatile} == {
        k: v for k, v in api_kernel.items() if k not in volatile
    }
    # A prefix of the id works in the CLI, like git's.
    assert _cli(stack, "snapshots", kid[:8]) == api_list

    # Settings changed on one side are seen on the other.
    assert (
        _cli(stack, "auto", kid, "off", "--cooldown", "7").items()
        >= {"enabled": False, "cooldown": 7.0}.items()
    )
    assert (
        j.jusnap("GET", f"kernels/{kid}/auto", expect=200).items()
        >= {"enabled": False, "cooldown": 7.0}.items()
    )
    j.jusnap("PATCH", f"kernels/{kid}/auto", {"enabled": True}, expect=200)
    assert _cli(stack, "auto", kid).items() >= {"enabled": True, "cooldown": 7.0}.items()
    assert _cli(stack, "label", via_api["id"], "renamed")["label"] == "renamed"
    assert j.jusnap("GET", f"snapshots/{via_api['id']}", expect=200)["label"] == "renamed"

    # A restore answers the same shape either way.
    r_cli = _cli(stack, "restore", via_api["id"], "--into", kid)
    assert ws.run("print(a)").strip() == "1"
    r_api = j.jusnap("POST", f"snapshots/{via_cli['id']}/restore", {"kernel_id": kid}, expect=200)
    assert ws.run("print(a)").strip() == "2"
    assert set(r_cli) == set(r_api) and r_cli["kernel"]["id"] == r_api["kernel"]["id"] == kid

    # Deleted on one side, gone on both, with the same error code.
    assert _cli(stack, "rm", via_cli["id"]) == {"deleted": [via_cli["id"]]}
    body = j.jusnap("GET", f"snapshots/{via_cli['id']}", expect=404)
    assert body["error"] == "snapshot_not_found"
    r = stack.daemon.cli("show", via_cli["id"])
    assert r.returncode == 3 and "no such snapshot" in r.stderr
    ws.close()
