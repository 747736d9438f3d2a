"""The Jupyter proxy's path and size rules (pure logic; the real proxy is tested in
tests/integration/test_jupyter_proxy.py)."""

from __future__ import annotations

import pytest
from jusnap.api import MAX_BODY_BYTES as DAEMON_LIMIT
from jusnap_jupyter.handlers import MAX_BODY_BYTES, Refused, daemon_target

PREFIX = "/base/jusnap/api/v1/"


def test_the_proxy_refuses_bodies_at_the_daemons_limit() -> None:
    assert MAX_BODY_BYTES == DAEMON_LIMIT


@pytest.mark.parametrize(
    ("raw", "query", "target"),
    [
        ("health", "", "/jusnap/api/v1/health"),
        ("kernels", "a=1&b=%20", "/jusnap/api/v1/kernels?a=1&b=%20"),
        (
            "kernels/6b0c0f8e-1111-4222-8333-444455556666/snapshots",
            "",
            "/jusnap/api/v1/kernels/6b0c0f8e-1111-4222-8333-444455556666/snapshots",
        ),
        ("snapshots/01JC0000000000000000000000/restore", "", None),
        ("openapi.json", "", "/jusnap/api/v1/openapi.json"),
    ],
)
def test_api_paths_are_forwarded_as_received(raw: str, query: str, target: str | None) -> None:
    expected = target or f"/jusnap/api/v1/{raw}"
    assert daemon_target(PREFIX + raw, PREFIX, query) == expected


@pytest.mark.parametrize(
    ("raw", "query", "status"),
    [
        ("", "", 404),
        ("kernels/%C3%A9", "", 400),
        ("health%3Fx=1", "", 400),
        ("kernels%2Fx", "", 400),
        ("kernels/..", "", 400),
        ("kernels/.", "", 400),
        ("kernels//x", "", 400),
        ("kernels/", "", 400),
        ("kernels/\u00e9", "", 400),
        ("kernels", "x=\u00e9", 400),
        ("kernels", "x=a b", 400),
    ],
)
def test_anything_else_is_refused(raw: str, query: str, status: int) -> None:
    with pytest.raises(Refused) as info:
        daemon_target(PREFIX + raw, PREFIX, query)
    assert info.value.status == status


def test_a_path_outside_the_prefix_is_not_forwarded() -> None:
    with pytest.raises(Refused):
        daemon_target("/other/jusnap/api/v1/health", PREFIX, "")
