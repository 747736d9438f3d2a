"""Who is calling: every request is authenticated before it reaches a view.

Local callers (the CLI, the kernel provisioner, the auto-snapshot extension) connect to the
daemon's Unix socket and are identified by the kernel itself (``SO_PEERCRED``): no password to
leak. Root is the administrator and may act on every kernel; any other uid only sees kernels it
owns. Callers over loopback TCP present either the administrator token from a file readable
only by root (tools), or a browser's Jupyter login (cookie or token) that the Jupyter server
vouches for (see ``browser.py``); the latter act as the user Jupyter runs as.
"""

from __future__ import annotations

import hmac
import os
import secrets
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from flask import Request, current_app, g

from ..errors import Forbidden, Unauthorized
from .browser import SAFE_METHODS, JupyterVouch, xsrf_cookie, xsrf_matches


@dataclass(frozen=True)
class Identity:
    uid: int
    via: str

    @property
    def admin(self) -> bool:
        return self.uid == 0

    @property
    def owner(self) -> int | None:
        """The owner filter for engine calls: None lets the administrator see everything."""
        return None if self.admin else self.uid


def peer_uid(request: Request) -> int | None:
    sock = request.environ.get("gunicorn.socket")
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def ensure_token(path: Path) -> str:
    """The administrator token for loopback TCP callers, created once, mode 0600."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        return token


def authenticate(request: Request) -> Identity:
    uid = peer_uid(request)
    if uid is not None:
        return Identity(uid, "socket")
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    vouch: JupyterVouch | None = current_app.config.get("JUSNAP_JUPYTER_VOUCH")
    if scheme.lower() in ("bearer", "token") and value.strip():
        expected = current_app.config.get("JUSNAP_ADMIN_TOKEN")
        if expected and hmac.compare_digest(value.strip().encode(), expected.encode()):
            return Identity(0, "token")
        if vouch is None:
            raise Forbidden("invalid token")
        vouch.check("", header)
        return Identity(current_app.config["JUSNAP_JUPYTER_UID"], "jupyter-token")
    cookie = request.headers.get("Cookie", "")
    if vouch is not None and cookie and not header:
        if request.method not in SAFE_METHODS and not xsrf_matches(
            xsrf_cookie(cookie), request.headers.get("X-XSRFToken")
        ):
            raise Forbidden("missing or wrong X-XSRFToken header (Jupyter's _xsrf cookie)")
        vouch.check(cookie, "")
        return Identity(current_app.config["JUSNAP_JUPYTER_UID"], "jupyter-cookie")
    raise Unauthorized(
        "authentication required: use the Unix socket, an API token or a Jupyter login"
    )


def identity() -> Identity:
    return g.identity
