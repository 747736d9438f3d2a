"""The Jusnap API under the Jupyter server: ``{base_url}jusnap/api/v1/...`` → the daemon's socket.

The browser already holds a Jupyter login, so the frontend calls the API through Jupyter with
``ServerConnection.makeRequest``: Jupyter's own authentication applies (cookie or token; its XSRF
check on state-changing methods; its authorizer), and the request reaches the daemon over the
Unix socket as the uid the Jupyter server runs as, so the daemon's ownership rules apply too.
Statuses and JSON bodies pass through unchanged; the blocking socket call runs in a thread.

The proxy is a security boundary of its own (docs/security-web.md), so it forwards exactly what
the daemon's API can mean and refuses the rest itself, in the API's JSON error shape:

* the path is forwarded *as received* (still percent-encoded), never decoded and re-joined: a
  decoded ``%3F`` or ``%2F`` would otherwise become a query or another path at the daemon. Every
  API path segment is plain ASCII (words, UUIDs, ULIDs, ``openapi.json``), so a segment with any
  other character, or a ``.``/``..`` segment, is refused with 400 before the daemon is asked;
* bodies over the daemon's limit are refused with 413 here: the daemon would close the socket
  while we still write, which surfaced as a 503 "Broken pipe";
* no CORS headers, ever (docs/api.md): Jupyter reflects the Origin of token-authenticated
  requests by default, which this handler switches off.
"""

from __future__ import annotations

import asyncio
import json
import re
from http import HTTPStatus
from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated, authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from jusnap.client import PREFIX, default_socket, raw_request
from jusnap.errors import JusnapError, code_for_status
from tornado import web

ROUTE = "jusnap/api/v1"
_PASSED_HEADERS = ("Content-Type",)
# The daemon's MAX_CONTENT_LENGTH (jusnap.api.MAX_BODY_BYTES; a unit test keeps them equal). Only
# the client side of ``jusnap`` is imported here (no Flask in Jupyter's environment): a copy.
MAX_BODY_BYTES = 256 * 1024
# One API path segment: what the daemon's routes and ids are made of. No percent-escapes, so
# what the daemon decodes is exactly what was checked here.
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
# A query string passed on as is: visible ASCII only (http.client refuses anything else).
_QUERY = re.compile(r"[\x21-\x7e]*")
_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"


class Refused(Exception):
    """A request a Jusnap handler answers itself (the proxy: without asking the daemon)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def daemon_target(raw_path: str, prefix: str, query: str) -> str:
    """The daemon's request target for a request to ``raw_path`` (still percent-encoded).

    ``prefix`` is ``{base_url}jusnap/api/v1/``. Raises Refused for anything the API cannot
    mean; never decodes the path, so the daemon sees the bytes that were checked.
    """
    if not raw_path.startswith(prefix):
        raise Refused(404, "not_found", "no such API path")
    rest = raw_path[len(prefix) :]
    if not rest:
        raise Refused(404, "not_found", "no such API path")
    for segment in rest.split("/"):
        if not _SEGMENT.fullmatch(segment):
            shown = segment if segment.isascii() and segment.isprintable() else repr(segment)
            raise Refused(400, "invalid_request", f"not a valid API path segment: {shown[:60]}")
    if not _QUERY.fullmatch(query):
        raise Refused(400, "invalid_request", "the query string must be plain ASCII")
    target = f"{PREFIX}/{rest}"
    return f"{target}?{query}" if query else target


class JusnapAPIHandler(APIHandler):  # type: ignore[misc]
    """What every Jusnap handler under Jupyter shares: no CORS, errors in the API's shape."""

    auth_resource = "jusnap"

    def set_default_headers(self) -> None:
        """Jupyter's defaults minus any Access-Control-* an admin put in ``headers``: the API
        sends no CORS headers at all (docs/api.md)."""
        super().set_default_headers()
        for name in self.settings.get("headers", {}):
            if name.lower().startswith("access-control-"):
                self.clear_header(name)

    def set_cors_headers(self) -> None:
        """No CORS: Jupyter would reflect the Origin of any token-authenticated request."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Jupyter's own refusals (login, XSRF) in the API's error shape."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or HTTPStatus(status_code).phrase
        code = "bad_gateway" if status_code == 502 else code_for_status(status_code)
        self._send_json(status_code, code, message)

    def _send_json(self, status: int, code: str, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": code, "message": message}))


class ProxyHandler(JusnapAPIHandler):
    async def _forward(self) -> None:
        prefix = url_path_join(self.base_url, ROUTE) + "/"
        try:
            target = daemon_target(self.request.path, prefix, self.request.query)
            body = self.request.body or None
            if body is not None and len(body) > MAX_BODY_BYTES:
                raise Refused(413, "too_large", f"request body over {MAX_BODY_BYTES // 1024} KiB")
        except Refused as refused:
            self._send_json(refused.status, refused.code, refused.message)
            return
        headers = {h: self.request.headers[h] for h in _PASSED_HEADERS if h in self.request.headers}
        try:
            status, ctype, data = await asyncio.to_thread(
                raw_request, default_socket(), self.request.method, target, body, headers
            )
        except JusnapError as exc:
            status, ctype = exc.http_status, "application/json"
            data = json.dumps(exc.to_dict()).encode()
        self.set_status(status)
        if status == 204 or not data:
            self.clear_header("Content-Type")
            await self.finish()
            return
        self.set_header("Content-Type", ctype)
        await self.finish(data)

    # The path argument is Tornado's *decoded* capture: ignored on purpose (see daemon_target).
    @web.authenticated
    @authorized
    async def get(self, _path: str) -> None:
        await self._forward()

    @web.authenticated
    @authorized
    async def post(self, _path: str) -> None:
        await self._forward()

    @web.authenticated
    @authorized
    async def patch(self, _path: str) -> None:
        await self._forward()

    @web.authenticated
    @authorized
    async def delete(self, _path: str) -> None:
        await self._forward()

    @allow_unauthenticated
    def options(self, *_args: Any, **_kwargs: Any) -> None:
        """A preflight gets the methods and nothing that would let another origin in."""
        self.set_status(204)
        self.set_header("Allow", _METHODS)
        self.finish()


def handlers(base_url: str) -> list[tuple[str, type[web.RequestHandler]]]:
    from .fork import FORK_ROUTE, ForkHandler

    return [
        (url_path_join(base_url, FORK_ROUTE), ForkHandler),
        (url_path_join(base_url, ROUTE, "(.*)"), ProxyHandler),
    ]
