"""A small client of the daemon's API over its Unix socket (stdlib only).

Used by the CLI and by what runs inside Jupyter (provisioner, auto-snapshot extension): the
socket identifies the caller by uid, so none of them needs a password.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import quote

from .errors import DaemonUnavailable, JusnapError

PREFIX = "/jusnap/api/v1"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class ApiError(JusnapError):
    """An error answered by the daemon, carrying its code and status through."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(
            str(body.get("message") or f"HTTP {status}"), **(body.get("details") or {})
        )
        self.code = str(body.get("error", "error"))
        self.http_status = status
        self.exit_code = _EXIT_BY_CODE.get(self.code) or _EXIT_BY_STATUS.get(status, 1)


_EXIT_BY_CODE = {"validation_failed": 64, "invalid_request": 64, "kernel_not_running": 4}
_EXIT_BY_STATUS = {400: 64, 401: 77, 403: 77, 404: 3, 409: 75, 422: 7, 500: 6, 503: 69, 507: 5}


def _q(segment: str) -> str:
    """One URL path segment: ids never change the path (the daemon validates them)."""
    return quote(segment, safe="")


class Client:
    def __init__(self, socket_path: str, timeout: float = 600.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        conn = _UnixConnection(self.socket_path, self.timeout)
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, PREFIX + path, payload, headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonUnavailable(
                f"the jusnap daemon is not running (no socket at {self.socket_path})"
            ) from None
        except PermissionError:
            raise DaemonUnavailable(
                f"cannot connect to {self.socket_path}: permission denied"
            ) from None
        except (TimeoutError, OSError) as exc:
            raise DaemonUnavailable(f"lost the connection to the daemon: {exc}") from None
        finally:
            conn.close()
        data: Any = None
        if raw:
            try:
                data = json.loads(raw)
            except ValueError:
                data = {"error": "bad_response", "message": raw[:200].decode(errors="replace")}
        if resp.status >= 400:
            raise ApiError(resp.status, data if isinstance(data, dict) else {})
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
