"""The `jusnap` CLI against the real daemon (gunicorn, Unix socket, real CRIU and kernels)."""

from __future__ import annotations

import json
import pwd
import socket
from pathlib import Path

from jusnap.client import ApiError, Client

from tests.conftest import Daemon
from tests.helpers import connect, nudge, run_cell


def _json(d: Daemon, *args: str) -> object:
    r = d.cli("--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_cli_round_trip(daemon: Daemon) -> None:
    k = _json(daemon, "start")
    assert isinstance(k, dict)
    cfile = Path(k["connection_file"])
    assert cfile.parent == daemon.state_dir / "runtime"
    assert (cfile.stat().st_mode & 0o777) == 0o600
    assert json.loads(cfile.read_text())["key"] == k["connection"]["key"]
    kc = connect(k["connection"])
    run_cell(kc, "x = 'first'")

    r = daemon.cli("snapshot", k["id"][:8], "--label", "first state")
    assert r.returncode == 0, r.stderr
    sid = r.stdout.split()[0]

    run_cell(kc, "x = 'second'")
    table = daemon.cli("snapshots", k["id"])
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split()[:3] == ["SNAPSHOT", "CREATED", "TRIGGER"]
    assert sid in table.stdout and "first state" in table.stdout

    listed = _json(daemon, "kernels")
    assert [x["id"] for x in listed] == [k["id"]]
    assert listed[0]["last_snapshot"]["id"] == sid

    r = daemon.cli("restore", sid)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"restored {sid} into {k['id']}")
    nudge(kc)
    assert run_cell(kc, "print(x)").strip() == "first"

    snaps = _json(daemon, "snapshots", k["id"])
    assert [s["trigger"] for s in snaps] == ["pre-restore", "manual"]
    shown = _json(daemon, "show", sid)
    assert shown["label"] == "first state" and shown["execution_count"] == 1

    assert daemon.cli("label", sid, "renamed").returncode == 0
    assert _json(daemon, "show", sid)["label"] == "renamed"

    assert daemon.cli("rm", snaps[0]["id"]).returncode == 0
    assert [s["id"] for s in _json(daemon, "snapshots", k["id"])] == [sid]

    auto = _json(daemon, "auto", k["id"], "off", "--cooldown", "12")
    assert auto == {"enabled": False, "cooldown": 12.0, "pending_at": None, "last_error": None}
    skipped = _json(daemon, "snapshot", k["id"], "--auto")
    assert skipped["status"] == "skipped"

    cleared = _json(daemon, "clear", k["id"], "--yes")
    assert cleared == {"deleted": 1}
    assert _json(daemon, "snapshots", k["id"]) == []

    assert daemon.cli("interrupt", k["id"]).returncode == 0
    r = daemon.cli("restart", k["id"])
    assert r.returncode == 0, r.stderr
    kc.wait_for_ready(timeout=30)
    assert run_cell(kc, "print('x' in globals())").strip() == "False"
    assert daemon.cli("stop", k["id"]).returncode == 0
    assert _json(daemon, "kernels") == []
    kc.stop_channels()


def test_cli_errors_are_one_line_with_documented_exit_codes(daemon: Daemon) -> None:
    cases = [
        (["snapshots", "00000000-0000-4000-8000-000000000000"], 3, "no such kernel"),
        (["restore", "01ARZ3NDEKTSV4RRFFQ69G5FAV"], 3, "no such snapshot"),
        (["restore", "not-an-id"], 64, "not a snapshot id"),
        (["rm", "../../etc/passwd"], 64, "not a snapshot id"),
        (["signal", "00000000-0000-4000-8000-000000000000", "SIGSEGV"], 64, "signal"),
    ]
    for args, code, text in cases:
        r = daemon.cli(*args)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        assert r.stderr.startswith("jusnap: ") and r.stderr.count("\n") == 1, r.stderr
        assert text in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_api_errors_are_json(daemon: Daemon) -> None:
    c = Client(daemon.socket)
    for method, path, body, status, code in [
        ("GET", "/kernels/00000000-0000-4000-8000-000000000000", None, 404, "kernel_not_found"),
        ("GET", "/nowhere", None, 404, "not_found"),
        ("PUT", "/kernels", None, 405, "method_not_allowed"),
        ("POST", "/kernels", {"argv": "python"}, 422, "validation_failed"),
        ("POST", "/kernels", {"bogus": 1}, 422, "validation_failed"),
        ("GET", "/snapshots/xyz", None, 400, "invalid_request"),
    ]:
        try:
            c.request(method, path, body)
        except ApiError as exc:
            assert (exc.http_status, exc.code) == (status, code), (method, path, exc.to_dict())
            assert exc.message
        else:
            raise AssertionError(f"{method} {path} succeeded")
    # malformed JSON body
    s = socket.socket(socket.AF_UNIX)
    s.connect(daemon.socket)
    s.sendall(
        b"POST /jusnap/api/v1/kernels HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 9\r\nConnection: close\r\n\r\n{not json"
    )
    raw = b""
    while chunk := s.recv(65536):
        raw += chunk
    s.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split()[1] in (b"400", b"422"), head
    assert "error" in json.loads(body)


def test_cli_and_api_agree(daemon: Daemon) -> None:
    k = _json(daemon, "start")
    snap = _json(daemon, "snapshot", k["id"], "--label", "same")["snapshot"]
    api = Client(daemon.socket)
    assert api.show(snap["id"]) == _json(daemon, "show", snap["id"])
    assert api.snapshots(k["id"]) == _json(daemon, "snapshots", k["id"])
    assert [x["id"] for x in api.kernels()] == [x["id"] for x in _json(daemon, "kernels")]


def test_check_runs_criu_as_the_kernel_user(criu_binary: str, kernel_user) -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "jusnap.cli", "check", "--jusnap.os.uid", kernel_user.pw_name,
         "--jusnap.criu.binary", criu_binary],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "Looks good."


def test_snapshots_outlive_their_kernel_and_the_store_shrinks_to_nothing(
    daemon: Daemon, kernel_user: pwd.struct_passwd
) -> None:
    """Issue 15: a kernel without a notebook (a headless run) leaves snapshots that stay
    reachable after it stopped; deleting them all and `jusnap gc` leaves no store behind."""

    def cli(*args: str) -> str:
        r = daemon.cli(*args, user=kernel_user)
        assert r.returncode == 0, r.stderr
        return r.stdout

    k = json.loads(cli("--json", "start"))
    kc = connect(k["connection"])
    run_cell(kc, "import numpy as np; a = np.random.default_rng(1).random(2_000_000)")  # 16 MB
    sids = [json.loads(cli("--json", "snapshot", k["id"]))["snapshot"]["id"]]
    run_cell(kc, "a[:500_000] = 0.5")
    sids.append(
        json.loads(cli("--json", "snapshot", k["id"], "--label", "second"))["snapshot"]["id"]
    )
    kc.stop_channels()
    cli("stop", k["id"])

    listed = json.loads(cli("--json", "snapshots", "--all"))
    assert [s["id"] for s in listed] == sids[::-1]
    assert all(s["kernel_id"] == k["id"] and not s["kernel_alive"] for s in listed)
    table = cli("snapshots", "--all")
    assert table.splitlines()[0].split()[-1] == "NOTEBOOK"
    assert f"kernel {k['id'][:8]} (gone)" in table and "second" in table
    assert daemon.cli("snapshots", user=kernel_user).returncode == 64  # a kernel, or --all

    du = json.loads(cli("--json", "du"))["usage"]
    (mine,) = [u for u in du if u["owner_uid"] == kernel_user.pw_uid]
    store = daemon.state_dir / "chunks" / str(kernel_user.pw_uid)
    index = sum(p.stat().st_size for p in store.glob("index.db*"))
    assert mine["index_bytes"] == index > 0 and mine["disk_bytes"] > index
    assert "chunk index" in cli("du")

    cli("rm", *sids)
    assert json.loads(cli("--json", "snapshots", "--all")) == []
    out = cli("gc")
    assert f"uid {kernel_user.pw_uid}: freed" in out and "store removed" in out, out
    assert not store.exists(), "an owner with nothing left keeps no index"
    assert cli("du").splitlines()[-1] == "no snapshots stored"
