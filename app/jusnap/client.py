"""The one client of the daemon's API over its Unix socket (stdlib only).

Used by the CLI and by what runs inside Jupyter (the provisioner, the API proxy, and the
auto-snapshot extension inside every kernel), so it imports nothing beyond the standard library
and :mod:`jusnap.errors`: the Jupyter environment installs the ``jusnap`` package for it, and
importing this module must not pull in the daemon's dependencies. The socket tells the daemon
our uid (``SO_PEERCRED``), so no secret is needed.

Every connection is closed before a call returns, also when connecting fails: the
auto-snapshot extension depends on it (a kernel must hold no connection to the daemon when it
is dumped, and a leaked socket would be).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any
from urllib.parse import quote

from .errors import DaemonUnavailable, JusnapError, by_code

PREFIX = "/jusnap/api/v1"
DEFAULT_SOCKET = "/run/jusnap/jusnap.sock"


def default_socket() -> str:
    """``$JUSNAP_SOCKET`` or the appliance's socket: one default for the CLI and Jupyter."""
    return os.environ.get("JUSNAP_SOCKET") or DEFAULT_SOCKET


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


class ApiError(JusnapError):
    """An error answered by the daemon: its code, status and the exit code of its class."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(
            str(body.get("message") or f"HTTP {status}"), **(body.get("details") or {})
        )
        self.code = str(body.get("error", "error"))
        self.http_status = status
        self.exit_code = by_code(self.code).exit_code


def raw_request(
    socket_path: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 600.0,
) -> tuple[int, str, bytes]:
    """One request, answered as (status, content type, body) whatever the status: the Jupyter
    proxy passes errors through unchanged. Raises DaemonUnavailable if there is no answer."""
    conn = _UnixConnection(socket_path, timeout)
    hdrs = {"Accept": "application/json", "Connection": "close", **(headers or {})}
    try:
        conn.request(method, path, body, hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, resp.getheader("Content-Type", "application/json"), data
    except (FileNotFoundError, ConnectionRefusedError):
        raise DaemonUnavailable(
            f"the jusnap daemon is not running (no socket at {socket_path})"
        ) from None
    except PermissionError:
        raise DaemonUnavailable(f"cannot connect to {socket_path}: permission denied") from None
    except (TimeoutError, OSError, http.client.HTTPException) as exc:
        raise DaemonUnavailable(f"lost the connection to the daemon: {exc}") from None
    finally:
        conn.close()


def _q(segment: str) -> str:
    """One URL path segment: ids never change the path (the daemon validates them)."""
    return quote(segment, safe="")


class Client:
    def __init__(self, socket_path: str | None = None, timeout: float = 600.0) -> None:
        self.socket_path = socket_path or default_socket()
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """A JSON call under ``/jusnap/api/v1``; an error status raises :class:`ApiError`."""
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        status, _, raw = raw_request(
            self.socket_path, method, PREFIX + path, payload, headers, self.timeout
        )
        data: Any = None
        if raw:
            try:
                data = json.loads(raw)
            except ValueError:
                data = {"error": "bad_response", "message": raw[:200].decode(errors="replace")}
        if status >= 400:
            raise ApiError(status, data if isinstance(data, dict) else {})
        return data

    # convenience wrappers, one per API call
    def health(self) -> Any:
        return self.request("GET", "/health")

    def kernels(self) -> Any:
        return self.request("GET", "/kernels")

    def kernel(self, kernel_id: str) -> Any:
        return self.request("GET", f"/kernels/{_q(kernel_id)}")

    def launch(self, **body: Any) -> Any:
        return self.request("POST", "/kernels", {k: v for k, v in body.items() if v is not None})

    def shutdown(self, kernel_id: str) -> Any:
        return self.request("DELETE", f"/kernels/{_q(kernel_id)}")

    def restart(self, kernel_id: str) -> Any:
        return self.request("POST", f"/kernels/{_q(kernel_id)}/restart")

    def interrupt(self, kernel_id: str) -> Any:
        return self.request("POST", f"/kernels/{_q(kernel_id)}/interrupt")

    def signal(self, kernel_id: str, sig: str) -> Any:
        return self.request("POST", f"/kernels/{_q(kernel_id)}/signal", {"signal": sig})

    def logs(self, kernel_id: str, nbytes: int | None = None) -> Any:
        query = f"?bytes={int(nbytes)}" if nbytes is not None else ""
        return self.request("GET", f"/kernels/{_q(kernel_id)}/logs{query}")

    def all_snapshots(self) -> Any:
        return self.request("GET", "/snapshots")

    def auto(self, kernel_id: str, **body: Any) -> Any:
        if not body:
            return self.request("GET", f"/kernels/{_q(kernel_id)}/auto")
        return self.request("PATCH", f"/kernels/{_q(kernel_id)}/auto", body)

    def snapshots(self, kernel_id: str) -> Any:
        return self.request("GET", f"/kernels/{_q(kernel_id)}/snapshots")

    def snapshot(self, kernel_id: str, **body: Any) -> Any:
        return self.request(
            "POST",
            f"/kernels/{_q(kernel_id)}/snapshots",
            {k: v for k, v in body.items() if v is not None},
        )

    def clear(self, kernel_id: str) -> Any:
        return self.request("DELETE", f"/kernels/{_q(kernel_id)}/snapshots")

    def show(self, snapshot_id: str) -> Any:
        return self.request("GET", f"/snapshots/{_q(snapshot_id)}")

    def relabel(self, snapshot_id: str, label: str | None) -> Any:
        return self.request("PATCH", f"/snapshots/{_q(snapshot_id)}", {"label": label})

    def delete(self, snapshot_id: str) -> Any:
        return self.request("DELETE", f"/snapshots/{_q(snapshot_id)}")

    def store(self) -> Any:
        return self.request("GET", "/store")

    def gc(self, verify: bool = False) -> Any:
        return self.request("POST", "/store/gc" + ("?verify=true" if verify else ""))

    def restore(self, snapshot_id: str, kernel_id: str | None = None) -> Any:
        body = {"kernel_id": kernel_id} if kernel_id else {}
        return self.request("POST", f"/snapshots/{_q(snapshot_id)}/restore", body)

    def fork(
        self,
        snapshot_id: str,
        kernel_id: str | None = None,
        notebook_path: str | None = None,
        reseed: bool = True,
    ) -> Any:
        """Open a snapshot as a new live kernel beside its original (``POST .../fork``)."""
        body: dict[str, Any] = {"reseed": reseed}
        if kernel_id is not None:
            body["kernel_id"] = kernel_id
        if notebook_path is not None:
            body["notebook_path"] = notebook_path
        return self.request("POST", f"/snapshots/{_q(snapshot_id)}/fork", body)
