"""Browser-auth pure logic: tornado's XSRF token format, cookie parsing, the hang-up hand-off."""

from __future__ import annotations

import socket
import threading
import time
from unittest import mock

import pytest
import tornado.httputil
import tornado.web
from jusnap.api.browser import decode_xsrf, xsrf_cookie, xsrf_matches
from jusnap.api.handoff import wait_for_hangup


def _tornado_tokens(n: int) -> tuple[bytes, list[str]]:
    """``n`` renderings of one XSRF token exactly as tornado (so Jupyter) produces them."""
    app = tornado.web.Application(xsrf_cookies=True, xsrf_cookie_version=2)
    start = tornado.httputil.RequestStartLine("GET", "/", "HTTP/1.1")
    headers = tornado.httputil.HTTPHeaders({"Host": "localhost"})
    request = tornado.httputil.HTTPServerRequest(
        start_line=start, headers=headers, connection=mock.Mock()
    )
    handler = tornado.web.RequestHandler(app, request)
    out = [handler.xsrf_token.decode()]
    raw = handler._raw_xsrf_token[1]
    for _ in range(n - 1):
        del handler._xsrf_token  # the next access masks the same token anew
        out.append(handler.xsrf_token.decode())
    return raw, out


def test_decodes_tornados_masked_tokens() -> None:
    raw, renderings = _tornado_tokens(3)
    assert len(set(renderings)) == 3, "each rendering is masked differently"
    for r in renderings:
        assert decode_xsrf(r) == raw
    assert xsrf_matches(renderings[0], renderings[2])


def test_rejects_missing_wrong_and_malformed_tokens() -> None:
    _, (a, *_) = _tornado_tokens(1)
    _, (b, *_) = _tornado_tokens(1)
    assert not xsrf_matches(a, b)
    assert not xsrf_matches(a, None)
    assert not xsrf_matches(None, a)
    assert not xsrf_matches(a, "")
    for bad in ("3|aa|bb|1", "2|zz|00|1", "2|00|00|notanumber", "2||00|1", "2|00|00"):
        assert decode_xsrf(bad) is None, bad
        assert not xsrf_matches(bad, bad)


def test_unversioned_tokens() -> None:
    assert decode_xsrf("00ff") == b"\x00\xff"
    assert decode_xsrf("not-hex") == b"not-hex"
    assert xsrf_matches("abcd", "abcd") and not xsrf_matches("abcd", "abce")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("_xsrf=2|a|b|1; username-127-0-0-1-8888=xyz", "2|a|b|1"),
        ("username-x=1", None),
        ("", None),
    ],
)
def test_xsrf_cookie(header: str, expected: str | None) -> None:
    assert xsrf_cookie(header) == expected


def test_hangup_is_seen_when_the_peer_closes() -> None:
    ours, theirs = socket.socketpair()
    try:
        threading.Timer(0.2, theirs.close).start()
        t0 = time.monotonic()
        assert wait_for_hangup(ours, timeout=5)
        assert 0.15 < time.monotonic() - t0 < 2
    finally:
        ours.close()


def test_hangup_waits_through_pending_data_and_times_out() -> None:
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(b"GET / HTTP/1.1\r\n\r\n")  # unread: the peer is still there
        assert not wait_for_hangup(ours, timeout=0.5)
    finally:
        ours.close()
        theirs.close()
