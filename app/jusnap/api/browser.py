"""Browser requests over TCP: the Jupyter server vouches for them, its XSRF token guards writes.

nginx may route ``/jusnap/`` straight to the daemon's loopback port, so a browser reaches the
daemon with the credentials it already holds for Jupyter: the login cookie or an
``Authorization: token ...`` header. The daemon keeps no passwords of its own: it replays those
credentials to the Jupyter server's ``GET /api/me`` (200 means logged in) and trusts the answer
for a few seconds, keyed by a hash of the credentials so that no secret sits in memory as a key.
A cookie is sent by the browser to any request, including forged cross-site ones, so writes that
rely on it must also carry the ``X-XSRFToken`` header matching Jupyter's ``_xsrf`` cookie, exactly
as Jupyter itself demands.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
import threading
import time
import urllib.error
import urllib.request
from http.cookies import CookieError, SimpleCookie

from ..errors import Forbidden, JupyterUnavailable

_VERSIONED = re.compile(r"^([1-9][0-9]*)\|(.*)$")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_MAX_CACHED = 1024


def decode_xsrf(value: str) -> bytes | None:
    """The raw token inside a tornado XSRF value (cookie or header), or None if malformed.

    Tornado (and so Jupyter) masks the token differently in every page it renders
    (``2|mask|masked|timestamp``), so two values are equal when their decoded tokens are; the
    old unversioned form is the hex token itself (see tornado.web.RequestHandler's
    ``_decode_xsrf_token``).
    """
    m = _VERSIONED.match(value)
    try:
        if m:
            if m.group(1) != "2":
                return None
            _, mask_hex, masked_hex, timestamp = value.split("|")
            int(timestamp)
            mask = binascii.a2b_hex(mask_hex)
            masked = binascii.a2b_hex(masked_hex)
            if not mask:
                return None
            return bytes(b ^ mask[i % len(mask)] for i, b in enumerate(masked))
        try:
            return binascii.a2b_hex(value)
        except (binascii.Error, ValueError):
            return value.encode()
    except (binascii.Error, ValueError):
        return None


def xsrf_matches(cookie_value: str | None, header_value: str | None) -> bool:
    if not cookie_value or not header_value:
        return False
    a, b = decode_xsrf(cookie_value), decode_xsrf(header_value)
    return a is not None and b is not None and len(a) > 0 and hmac.compare_digest(a, b)


def xsrf_cookie(cookie_header: str) -> str | None:
    jar = SimpleCookie()
    try:
        jar.load(cookie_header)
    except CookieError:
        return None
    morsel = jar.get("_xsrf")
    return morsel.value if morsel else None


class JupyterVouch:
    """Asks the Jupyter server whether a browser's credentials belong to a logged-in user."""

    def __init__(self, base_url: str, ttl: float, timeout: float = 5.0) -> None:
        self.me_url = base_url + "api/me"
        self.ttl = ttl
        self.timeout = timeout
        self._lock = threading.Lock()
        self._cache: dict[str, float] = {}  # credential hash -> valid until (monotonic)

    @staticmethod
    def _key(cookie: str, authorization: str) -> str:
        return hashlib.sha256(f"{cookie}\0{authorization}".encode()).hexdigest()

    def check(self, cookie: str, authorization: str) -> None:
        """Return if Jupyter accepts these credentials; raise Forbidden (or 502) otherwise."""
        key = self._key(cookie, authorization)
        now = time.monotonic()
        with self._lock:
            until = self._cache.get(key)
            if until is not None and until > now:
                return
        headers = {"Accept": "application/json"}
        if cookie:
            headers["Cookie"] = cookie
        if authorization:
            headers["Authorization"] = authorization
        req = urllib.request.Request(self.me_url, headers=headers, method="GET")  # noqa: S310 - URL from config
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError) as exc:
            raise JupyterUnavailable(
                f"cannot ask the Jupyter server who is logged in: {exc}"
            ) from None
        if status != 200:
            raise Forbidden("the Jupyter server does not accept these credentials")
        with self._lock:
            if len(self._cache) >= _MAX_CACHED:
                self._cache = {k: v for k, v in self._cache.items() if v > now}
                if len(self._cache) >= _MAX_CACHED:
                    self._cache.clear()
            self._cache[key] = now + self.ttl
