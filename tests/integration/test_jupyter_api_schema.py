"""The API fuzzed from its own OpenAPI document (schemathesis), against the real daemon.

The daemon runs under gunicorn with a real engine, CRIU and kernels; requests go over loopback
TCP with the administrator token. Half of the generated kernel ids are swapped for a real,
running kernel's id, so the operations reach the engine (snapshots, restarts, signals) and not
only the 404 path. Bounded: ``MAX_EXAMPLES`` per operation. Every response must be documented,
match its schema, and no request may get a 5xx.
"""

from __future__ import annotations

import zlib

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from tests.integration.conftest import JusnapStack

MAX_EXAMPLES = 30
REAL_KERNEL = "5c0e8f3a-2b7d-4c1e-9f6a-0d4b8e2a7c31"


@pytest.fixture
def api_stack(stack: JusnapStack) -> JusnapStack:
    r = requests.post(
        stack.daemon_url + "kernels",
        json={"kernel_id": REAL_KERNEL},
        headers={"Authorization": f"Bearer {stack.admin_token}"},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    return stack


def _document() -> dict:
    """The OpenAPI document as the app factory generates it (no daemon needed to collect tests;
    ``test_the_daemon_serves_this_document`` checks the running daemon serves the same one)."""
    from jusnap.api import create_app
    from jusnap.config import load_settings
    from jusnap.snapshots import Engine

    settings = load_settings(None, {"jusnap.os.uid": "0", "jusnap.state_dir": "/nonexistent"})
    app = create_app(Engine(settings))
    return app.test_client().get("/jusnap/api/v1/openapi.json").get_json()


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


def test_the_daemon_serves_this_document(stack: JusnapStack) -> None:
    served = requests.get(stack.daemon_url + "openapi.json", timeout=30)
    assert served.status_code == 200
    without_servers = {k: v for k, v in served.json().items() if k != "servers"}
    assert without_servers == {k: v for k, v in DOCUMENT.items() if k != "servers"}
    for path, ops in DOCUMENT["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            if path.endswith("/health"):
                assert op["security"] == []
                continue
            assert {"401", "403"} <= codes, f"{method} {path} does not document its auth errors"
            if "{" in path:
                assert {"400", "404"} <= codes, f"{method} {path} does not document unknown ids"
    assert DOCUMENT["security"], "credentials are required by default"


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_api_matches_its_openapi_document(case: schemathesis.Case, api_stack: JusnapStack) -> None:
    params = case.path_parameters or {}
    if "kernel_id" in params and zlib.crc32(str(params["kernel_id"]).encode()) % 2 == 0:
        params["kernel_id"] = REAL_KERNEL
    excluded = []
    if (case.method, case.path) == ("POST", "/jusnap/api/v1/kernels"):
        # A launch is also refused (400) for what a JSON schema cannot say: a command that does
        # not exist, ports that are not distinct or not free. Everything else still applies.
        excluded.append(positive_data_acceptance)
    if (case.method, case.path) == ("POST", "/jusnap/api/v1/kernels/{kernel_id}/snapshots") and (
        isinstance(case.body, dict) and case.body.get("final")
    ):
        # Likewise a final snapshot with a label, a manual trigger or "wait": false (400).
        excluded.append(positive_data_acceptance)
    negative = {
        loc
        for loc, info in (case.meta.components if case.meta else {}).items()
        if info.mode.is_negative
    }
    if negative and negative <= {ParameterLocation.HEADER, ParameterLocation.COOKIE}:
        # Only the credentials were mutated, and this test sends valid ones over them.
        excluded.append(negative_data_rejection)
    case.call_and_validate(
        excluded_checks=excluded,
        base_url=f"http://127.0.0.1:{api_stack.http_port}",
        headers={"Authorization": f"Bearer {api_stack.admin_token}"},
        timeout=300,
    )
