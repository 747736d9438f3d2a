"""The Jupyter server extension's proxy to the daemon is a boundary of its own (issue 10).

Through a real Notebook 7 server and a real daemon: the path reaches the daemon exactly as it
was checked (never decoded and re-joined), anything that is not an API path is refused with a
4xx JSON error before the daemon is asked, over-large bodies get 413, and no CORS headers are
sent whatever the Origin (docs/api.md).
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable

import pytest
import requests

from tests.integration.conftest import JusnapStack


def _json_error(r: requests.Response, status: int, code: str) -> None:
    assert r.status_code == status, f"{r.request.method} {r.url}: {r.status_code} {r.text[:300]}"
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    assert r.json()["error"] == code, r.text


def _raw(stack: JusnapStack, request_line: bytes) -> tuple[int, bytes]:
    """One request with a request line sent byte for byte (no client re-encodes it)."""
    j = stack.jupyter
    with socket.create_connection(("127.0.0.1", j.port), timeout=30) as s:
        s.sendall(
            request_line
            + b"\r\nHost: 127.0.0.1:%d\r\nAuthorization: token %s\r\nConnection: close\r\n\r\n"
            % (j.port, j.token.encode())
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.fixture
def api(stack: JusnapStack) -> str:
    return stack.jupyter.url + "jusnap/api/v1/"


def test_valid_paths_and_queries_still_pass(stack: JusnapStack, api: str) -> None:
    auth = stack.jupyter.auth
    r = requests.get(api + "health", headers=auth, timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    r = requests.get(api + "kernels?x=1&y=%20", headers=auth, timeout=30)
    assert r.status_code == 200 and r.json() == []
    assert requests.get(api + "openapi.json", headers=auth, timeout=30).json()["openapi"]
    _json_error(
        requests.get(api + f"kernels/{uuid.uuid4()}", headers=auth, timeout=30),
        404,
        "kernel_not_found",
    )


@pytest.mark.parametrize(
    "path",
    [
        # A Unicode id: decoded, it reached http.client, which cannot encode it (was 500).
        "kernels/%C3%A9t%C3%A9",
        "snapshots/%E2%82%AC",
        # %3F decoded became a query at the daemon: this was GET health?x=1, a 200.
        "health%3Fx=1",
        # %2F decoded became another path: this was GET kernels, a 200.
        "kernels%2F",
        # An encoded dot segment: decoded, kernels/../health.
        "kernels/%2E%2E/health",
        "kernels/%2e%2e/health",
        # Spaces, quotes, and dot segments as such.
        "kernels/a%20b",
        "kernels/%22",
        "kernels/./x",
    ],
)
def test_paths_that_are_not_api_paths_are_refused(stack: JusnapStack, api: str, path: str) -> None:
    r = requests.get(api + path, headers=stack.jupyter.auth, timeout=30)
    _json_error(r, 400, "invalid_request")


def test_malformed_ids_are_refused_by_the_daemon_as_json(stack: JusnapStack, api: str) -> None:
    """ASCII ids of the wrong shape reach the daemon, which validates every id (400, JSON)."""
    auth = stack.jupyter.auth
    for path in ("kernels/not-a-uuid", "snapshots/lowercase0123456789abcdefgh", "snapshots/x"):
        _json_error(requests.get(api + path, headers=auth, timeout=30), 400, "invalid_request")


def test_raw_request_lines_are_refused(stack: JusnapStack) -> None:
    """What HTTP clients would normalise or encode, sent as is: 400 with JSON, never a 500."""
    for line in (
        # Percent-encoded plain characters: the daemon must see exactly what was checked.
        b"GET /jusnap/api/v1/%68ealth HTTP/1.1",
        # Raw UTF-8 in the query, in a segment; an invalid UTF-8 escape.
        b"GET /jusnap/api/v1/kernels?\xc3\xa9 HTTP/1.1",
        b"GET /jusnap/api/v1/kernels/\xc3\xa9 HTTP/1.1",
        b"GET /jusnap/api/v1/kernels/%FF HTTP/1.1",
    ):
        status, body = _raw(stack, line)
        assert status == 400, (line, status, body[:300])
        assert json.loads(body)["error"] == "invalid_request", (line, body[:300])


def test_body_over_the_daemons_limit_is_413(stack: JusnapStack, api: str) -> None:
    """300 KB: the daemon hung up while the proxy still wrote (a 503 "Broken pipe")."""
    body = b'{"label": "' + b"x" * 300_000 + b'"}'
    r = requests.post(
        api + f"kernels/{uuid.uuid4()}/snapshots",
        data=body,
        headers={**stack.jupyter.auth, "Content-Type": "application/json"},
        timeout=60,
    )
    _json_error(r, 413, "too_large")


def test_no_cors_through_jupyter(stack: JusnapStack, api: str) -> None:
    """docs/api.md: no CORS headers are ever sent; Jupyter reflected a token request's Origin."""
    j = stack.jupyter
    origin = "https://evil.example"
    requests_to_check = [
        ("GET", "kernels", {**j.auth, "Origin": origin}),
        ("GET", "health", {**j.auth, "Origin": origin}),
        ("POST", f"kernels/{uuid.uuid4()}/snapshots", {**j.auth, "Origin": origin}),
        ("GET", "kernels", {"Origin": origin}),
        (
            "OPTIONS",
            "kernels",
            {
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        ),
    ]
    for method, path, headers in requests_to_check:
        r = requests.request(method, api + path, headers=headers, json={}, timeout=30)
        assert r.status_code < 500, (method, path, r.status_code, r.text)
        cors = {k: v for k, v in r.headers.items() if k.lower().startswith("access-control-")}
        assert not cors, (method, path, cors)


def test_no_cors_even_when_jupyter_allows_origins(make_stack: Callable[..., JusnapStack]) -> None:
    """An admin may open Jupyter's own API to other origins; the snapshot API stays closed."""
    # A stack of its own: Jupyter is restarted with another configuration.
    j = make_stack().jupyter
    api = j.url + "jusnap/api/v1/"
    j.stop()
    j.start(
        extra_args=[
            "--ServerApp.allow_origin=*",
            "--ServerApp.allow_credentials=True",
            '--ServerApp.tornado_settings={"headers": {"Access-Control-Expose-Headers": "X-A"}}',
        ]
    )
    origin = {"Origin": "https://evil.example"}
    # Jupyter's own API does answer with CORS headers now (the configuration took effect) ...
    r = requests.get(j.url + "api/status", headers={**j.auth, **origin}, timeout=30)
    assert r.headers.get("Access-Control-Allow-Origin") == "*", dict(r.headers)
    # ... the snapshot API does not.
    for method in ("GET", "OPTIONS"):
        r = requests.request(
            method,
            api + "kernels",
            headers={**j.auth, **origin, "Access-Control-Request-Method": "POST"},
            timeout=30,
        )
        assert r.status_code < 400, (method, r.status_code, r.text)
        cors = {k: v for k, v in r.headers.items() if k.lower().startswith("access-control-")}
        assert not cors, (method, cors)
