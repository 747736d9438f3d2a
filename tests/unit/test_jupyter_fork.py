""" "Open as new notebook", the Jupyter side: the copy's name, the request's checks, and the
provisioner adopting a forked kernel instead of restarting it."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timezone
from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpec
from jusnap.client import ApiError
from jusnap.errors import DaemonUnavailable, JusnapError
from jusnap_jupyter import provisioner
from jusnap_jupyter.fork import api_path, fork_name, parse_body, snapshot_words
from jusnap_jupyter.handlers import Refused
from jusnap_jupyter.provisioner import JusnapProvisioner

SID = "01KB2X7Q8M3N4P5R6S7T8V9WXY"
# 2026-11-29 14:03:20 UTC
TAKEN = datetime(2026, 11, 29, 14, 3, 20, tzinfo=timezone.utc).timestamp()


def snap(label: str | None = None) -> dict[str, Any]:
    return {"id": SID, "label": label, "created_at": TAKEN}


def test_the_copy_says_which_snapshot_and_when_in_the_users_time_zone() -> None:
    assert fork_name("analysis.ipynb", snap("before training"), 0) == (
        "analysis (fork of before training 14-03).ipynb"
    )
    assert fork_name("a.ipynb", snap("x"), 60) == "a (fork of x 15-03).ipynb"
    assert fork_name("a.ipynb", snap("x"), -330) == "a (fork of x 08-33).ipynb"
    # unlabelled: the random tail of the ULID (its head is a timestamp, alike for neighbours)
    assert fork_name("a.ipynb", snap(None), 0) == "a (fork of 8V9WXY 14-03).ipynb"
    assert fork_name("a.ipynb", snap("   "), 0) == "a (fork of 8V9WXY 14-03).ipynb"


def test_a_label_becomes_a_safe_short_part_of_a_file_name() -> None:
    assert snapshot_words(snap("../../etc/passwd")) == "etc passwd"
    assert snapshot_words(snap('a:b*c?"d<e>f|g\\h')) == "a b c d e f g h"
    assert snapshot_words(snap("tab\tnew\nline")) == "tab new line"
    long = snapshot_words(snap("word " * 30))
    assert len(long) <= 40 and long.endswith("…")
    assert snapshot_words(snap("...")) == "8V9WXY"
    assert "/" not in fork_name("a.ipynb", snap("x/y"), 0)


def test_only_a_notebook_path_inside_the_root_is_accepted() -> None:
    assert api_path("dir/a.ipynb") == "dir/a.ipynb"
    assert api_path("/dir/a.ipynb") == "dir/a.ipynb"
    for bad in ("", "/", None, 3, "../a.ipynb", "d/../../a.ipynb", "d//a.ipynb", "./a.ipynb"):
        with pytest.raises(Refused) as e:
            api_path(bad)
        assert e.value.status == 400, bad
    for bad in ("a.py", "dir/", "a\\..\\b.ipynb", "a\x00.ipynb"):
        with pytest.raises(Refused):
            api_path(bad)


def test_the_body_is_checked_before_anything_is_made() -> None:
    ok = json.dumps({"snapshot_id": SID, "path": "a.ipynb", "utc_offset_minutes": 60}).encode()
    assert parse_body(ok) == (SID, "a.ipynb", 60)
    assert parse_body(json.dumps({"snapshot_id": SID, "path": "a.ipynb"}).encode())[2] is None
    for bad in (
        b"not json",
        b"[]",
        json.dumps({"snapshot_id": SID.lower(), "path": "a.ipynb"}).encode(),
        json.dumps({"snapshot_id": SID + "\n", "path": "a.ipynb"}).encode(),
        json.dumps({"snapshot_id": SID, "path": "a.ipynb", "kernel_id": "x"}).encode(),
        json.dumps({"snapshot_id": SID, "path": "a.ipynb", "utc_offset_minutes": True}).encode(),
        json.dumps({"snapshot_id": SID, "path": "a.ipynb", "utc_offset_minutes": 5000}).encode(),
        json.dumps({"snapshot_id": SID}).encode(),
    ):
        with pytest.raises(Refused) as e:
            parse_body(bad)
        assert e.value.status == 400


# ---- the provisioner: launch, restart or adopt --------------------------------------------------
class FakeDaemon:
    """The daemon's answers by path; records the calls (the decision is what is tested)."""

    def __init__(self, kernel: dict[str, Any] | None) -> None:
        self.kernel = kernel
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, method: str, path: str, body: Any = None, timeout: float = 0) -> Any:
        self.calls.append((method, path))
        conn = {"connection": {"key": "k", "shell_port": 1}}
        if method == "GET" and path == "/kernels/kid":
            if self.kernel is None:
                raise _NotFound()
            return self.kernel
        return conn


class _NotFound(JusnapError):
    http_status = 404
    code = "kernel_not_found"

    def __init__(self) -> None:
        super().__init__("no such kernel")


def _launch(monkeypatch: pytest.MonkeyPatch, daemon: FakeDaemon, launched: bool = False) -> None:
    monkeypatch.setattr(provisioner, "_call", daemon)
    ks = KernelSpec(argv=["python", "-m", "ipykernel_launcher"], display_name="J", language="py")
    p = JusnapProvisioner(kernel_id="kid", kernel_spec=ks, parent=None)
    p._launched = launched
    conn = asyncio.run(p.launch_kernel(["python"], cwd="/tmp"))
    assert conn["key"] == b"k"
    assert p.has_process


def test_a_kernel_the_daemon_does_not_know_is_launched(monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = FakeDaemon(None)
    _launch(monkeypatch, daemon)
    assert daemon.calls == [("GET", "/kernels/kid"), ("POST", "/kernels")]


def test_a_running_kernel_not_launched_here_is_adopted_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fork: the daemon runs it already; a restart would throw its state away."""
    daemon = FakeDaemon({"id": "kid", "status": "running"})
    _launch(monkeypatch, daemon)
    assert daemon.calls == [("GET", "/kernels/kid"), ("GET", "/kernels/kid/connection")]


def test_a_restart_by_jupyter_still_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = FakeDaemon({"id": "kid", "status": "running"})
    _launch(monkeypatch, daemon, launched=True)
    assert daemon.calls == [("POST", "/kernels/kid/restart"), ("GET", "/kernels/kid/connection")]


def test_a_known_dead_kernel_is_started_again(monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = FakeDaemon({"id": "kid", "status": "dead"})
    _launch(monkeypatch, daemon)
    assert daemon.calls[1] == ("POST", "/kernels/kid/restart")


# ---- a failure after the copy removes what the fork made ------------------------------------
class FakeContents:
    root_dir = None

    def __init__(self) -> None:
        self.files = {"a.ipynb"}

    async def get(self, path: str, content: bool = True) -> dict[str, Any]:
        return {"name": path.rpartition("/")[2], "path": path, "type": "notebook"}

    async def increment_filename(self, name: str, path: str = "", insert: str = "") -> str:
        return name

    async def copy(self, src: str, dst: str) -> None:
        self.files.add(dst)

    async def delete(self, path: str) -> None:
        self.files.discard(path)


class FakeKernels:
    def __init__(self) -> None:
        self.shut: list[str] = []
        self.kernel_spec_manager = None

    def cwd_for_path(self, path: str) -> str:
        return "/nb"

    def __contains__(self, kid: str) -> bool:
        return False


class FakeSessions:
    async def list_sessions(self) -> list[dict[str, Any]]:
        return []

    async def create_session(self, **kw: Any) -> dict[str, Any]:
        raise RuntimeError("no kernel for you")


def _failed_fork(monkeypatch: pytest.MonkeyPatch, fork_fails: Exception | None) -> tuple[Any, list]:
    from jusnap_jupyter import fork

    calls: list[tuple[str, str]] = []

    async def call(method: str, path: str, body: Any = None, timeout: float = 0) -> Any:
        calls.append((method, path))
        if method == "GET":
            return {**snap("s"), "notebook_path": "/nb/a.ipynb", "kernel_id": "k0"}
        if path.endswith("/fork") and fork_fails is not None:
            raise fork_fails
        if method == "DELETE":
            raise ApiError(404, {"error": "kernel_not_found", "message": "no such kernel"})
        return {"parent_snapshot_id": SID}

    monkeypatch.setattr(fork, "_call", call)
    handler = fork.ForkHandler.__new__(fork.ForkHandler)
    cm, km, sm = FakeContents(), FakeKernels(), FakeSessions()
    monkeypatch.setattr(fork.ForkHandler, "contents_manager", cm, raising=False)
    monkeypatch.setattr(fork.ForkHandler, "kernel_manager", km, raising=False)
    monkeypatch.setattr(fork.ForkHandler, "session_manager", sm, raising=False)
    monkeypatch.setattr(fork.ForkHandler, "_kernel_name", lambda *a: "jusnap-python3")
    monkeypatch.setattr(fork.ForkHandler, "log", logging.getLogger("t"), raising=False)
    with pytest.raises((Refused, JusnapError)) as e:
        asyncio.run(handler._fork(SID, "a.ipynb", 0))
    assert cm.files == {"a.ipynb"}, "the copy is gone"
    return e.value, calls


def _refused() -> ApiError:
    return ApiError(422, {"error": "refused", "message": "not forkable now"})


def test_a_daemon_refusal_removes_the_copy_and_passes_the_refusal_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    err, calls = _failed_fork(monkeypatch, _refused())
    assert isinstance(err, ApiError) and err.http_status == 422
    assert not any(m == "DELETE" for m, _ in calls), "no kernel was made"


def test_a_lost_answer_removes_the_kernel_the_daemon_may_have_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    err, calls = _failed_fork(monkeypatch, DaemonUnavailable("lost the connection"))
    assert isinstance(err, DaemonUnavailable)
    assert calls[-1][0] == "DELETE" and calls[-1][1].startswith("/kernels/")


def test_a_session_failure_removes_the_copy_and_the_forked_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    err, calls = _failed_fork(monkeypatch, None)
    assert isinstance(err, Refused) and err.status == 500
    assert calls[-1][0] == "DELETE" and calls[-1][1].startswith("/kernels/")
