"""The API's error shapes, through Flask's test client: no gunicorn, no CRIU, no kernels.

The engine is built with a CRIU that cannot run (``/bin/false``) and a store in a temporary
directory: every answer here comes from validation, authentication and the registry, and
each must be a JSON body with a stable ``error`` code and the documented HTTP status.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from jusnap.api import PREFIX, create_app
from jusnap.config import load_settings
from jusnap.criu import Criu
from jusnap.proc import Reaper
from jusnap.snapshots import Engine
from jusnap.store.local import LocalStore

TOKEN = "unit-test-admin-token-0123456789abcdef"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[FlaskClient]:
    settings = load_settings(
        None,
        {
            "jusnap.state_dir": str(tmp_path / "state"),
            "jusnap.os.uid": getpass.getuser(),
            "jusnap.http.socket": str(tmp_path / "jusnap.sock"),
            "jusnap.jupyter.browser_auth": "false",
        },
    )
    reaper = Reaper()
    engine = Engine(
        settings,
        criu=Criu(binary="/bin/false", reaper=reaper),
        store=LocalStore(tmp_path / "state" / "snapshots"),
    ).start()
    try:
        yield create_app(engine, {"JUSNAP_ADMIN_TOKEN": TOKEN}).test_client()
    finally:
        engine.close()


def _call(client: FlaskClient, method: str, path: str, auth: bool = True, **kw):
    headers = {"Authorization": f"Bearer {TOKEN}"} if auth else {}
    return client.open(f"{PREFIX}/{path}", method=method, headers=headers, **kw)


UNKNOWN_KERNEL = "00000000-0000-4000-8000-000000000000"
UNKNOWN_SNAPSHOT = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


@pytest.mark.parametrize(
    ("method", "path", "kw", "status", "code"),
    [
        ("GET", "kernels", {"auth": False}, 401, "unauthorized"),
        ("GET", f"kernels/{UNKNOWN_KERNEL}", {}, 404, "kernel_not_found"),
        ("GET", "kernels/not-a-kernel-id", {}, 400, "invalid_request"),
        ("GET", f"snapshots/{UNKNOWN_SNAPSHOT}", {}, 404, "snapshot_not_found"),
        ("POST", f"snapshots/{UNKNOWN_SNAPSHOT}/restore", {"json": {}}, 404, "snapshot_not_found"),
        ("POST", f"kernels/{UNKNOWN_KERNEL}/snapshots", {"json": {}}, 404, "kernel_not_found"),
        (
            "PATCH",
            f"kernels/{UNKNOWN_KERNEL}/auto",
            {"json": {"cooldown": -1}},
            422,
            "validation_failed",
        ),
        ("POST", "kernels", {"json": {"argv": "python"}}, 422, "validation_failed"),
        (
            "POST",
            "kernels",
            {"data": b"x" * (300 * 1024), "content_type": "application/json"},
            413,
            "too_large",
        ),
        ("DELETE", "kernels", {}, 405, "method_not_allowed"),
        (
            "POST",
            f"kernels/{UNKNOWN_KERNEL}/snapshots",
            {"json": {"final": True, "trigger": "manual"}},
            400,
            "invalid_request",
        ),
        (
            "POST",
            f"kernels/{UNKNOWN_KERNEL}/snapshots",
            {"json": {"final": True, "trigger": "auto"}},
            404,
            "kernel_not_found",
        ),
    ],
)
def test_errors_are_json_with_stable_codes(
    client: FlaskClient, method: str, path: str, kw: dict, status: int, code: str
) -> None:
    auth = kw.pop("auth", True)
    r = _call(client, method, path, auth=auth, **kw)
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.is_json
    body = r.get_json()
    assert body["error"] == code and body["message"], body
    assert "Traceback" not in r.get_data(as_text=True)


def test_an_empty_daemon_lists_nothing(client: FlaskClient) -> None:
    assert _call(client, "GET", "kernels").get_json() == []
