"""The Jusnap API under the Jupyter server: ``{base_url}jusnap/api/v1/...`` → the daemon's socket.

The browser already holds a Jupyter login, so the frontend calls the API through Jupyter with
``ServerConnection.makeRequest``: Jupyter's own authentication applies (cookie or token; its XSRF
check on state-changing methods; its authorizer), and the request reaches the daemon over the
Unix socket as the uid the Jupyter server runs as, so the daemon's ownership rules apply too.
Statuses and JSON bodies pass through unchanged; the blocking socket call runs in a thread.
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from jusnap.client import PREFIX, default_socket, raw_request
from jusnap.errors import JusnapError, code_for_status
from tornado import web

ROUTE = "jusnap/api/v1"
_PASSED_HEADERS = ("Content-Type",)


class ProxyHandler(APIHandler):  # type: ignore[misc]
    auth_resource = "jusnap"

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Jupyter's own refusals (login, XSRF) in the API's error shape."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or HTTPStatus(status_code).phrase
        self.set_header("Content-Type", "application/json")
        code = "bad_gateway" if status_code == 502 else code_for_status(status_code)
        self.finish(json.dumps({"error": code, "message": message}))

    async def _forward(self, path: str) -> None:
        if ".." in path.split("/"):
            raise web.HTTPError(404, "no such API path")
        target = f"{PREFIX}/{path}"
        if self.request.query:
            target += f"?{self.request.query}"
        headers = {h: self.request.headers[h] for h in _PASSED_HEADERS if h in self.request.headers}
        body = self.request.body or None
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

    @web.authenticated
    @authorized
    async def get(self, path: str) -> None:
        await self._forward(path)

    @web.authenticated
    @authorized
    async def post(self, path: str) -> None:
        await self._forward(path)

    @web.authenticated
    @authorized
    async def patch(self, path: str) -> None:
        await self._forward(path)

    @web.authenticated
    @authorized
    async def delete(self, path: str) -> None:
        await self._forward(path)


def handlers(base_url: str) -> list[tuple[str, type[web.RequestHandler]]]:
    return [(url_path_join(base_url, ROUTE, "(.*)"), ProxyHandler)]
