"""A tiny HTTP client for the Jusnap daemon's Unix socket (stdlib only).

Vendored rather than imported from the ``jusnap`` package on purpose: this package runs in the
Jupyter server *and inside every kernel* (the auto-snapshot extension), whose environment need
not contain the daemon, and its only contract with the daemon is the HTTP API. The socket tells
the daemon our uid (``SO_PEERCRED``), so no secret is needed.

Every connection is closed before a call returns: the auto-snapshot extension depends on it (a
kernel must hold no connection to the daemon when it is dumped).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any

PREFIX = "/jusnap/api/v1"
DEFAULT_SOCKET = "/run/jusnap/jusnap.sock"


def socket_path() -> str:
    return os.environ.get("JUSNAP_SOCKET") or DEFAULT_SOCKET


class DaemonError(Exception):
    """The daemon answered with an error, or could not be reached (status 503)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(self.timeout)
            s.connect(self._path)
        except BaseException:
            s.close()
            raise
        self.sock = s


def raw_request(
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 600.0,
    sock: str | None = None,
) -> tuple[int, str, bytes]:
    """One request; returns (status, content type, body). Raises DaemonError(503) if unreachable."""
    where = sock or socket_path()
    conn = _UnixConnection(where, timeout)
    hdrs = {"Accept": "application/json", "Connection": "close", **(headers or {})}
    try:
        conn.request(method, path, body, hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, resp.getheader("Content-Type", "application/json"), data
    except (FileNotFoundError, ConnectionRefusedError):
        raise DaemonError(
            503, "daemon_unavailable", f"the jusnap daemon is not running (no socket at {where})"
        ) from None
    except PermissionError:
        raise DaemonError(
            503, "daemon_unavailable", f"cannot connect to {where}: permission denied"
        ) from None
    except (TimeoutError, OSError, http.client.HTTPException) as exc:
        raise DaemonError(
            503, "daemon_unavailable", f"lost the connection to the daemon: {exc}"
        ) from None
    finally:
        conn.close()


def call(
    method: str, path: str, body: Any = None, timeout: float = 600.0, sock: str | None = None
) -> Any:
    """A JSON API call under ``/jusnap/api/v1``; raises DaemonError for any error status."""
    payload = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    status, _, raw = raw_request(method, PREFIX + path, payload, headers, timeout, sock)
    data: Any = None
    if raw:
        try:
            data = json.loads(raw)
        except ValueError:
            data = {"error": "bad_response", "message": raw[:200].decode(errors="replace")}
    if status >= 400:
        info = data if isinstance(data, dict) else {}
        raise DaemonError(
            status, str(info.get("error", "error")), str(info.get("message") or f"HTTP {status}")
        )
    return data
