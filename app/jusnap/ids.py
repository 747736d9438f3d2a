"""Identifiers: validated at every boundary, because they become file names and SQL keys.

Snapshot ids are ULIDs (time-ordered, so sorting by id is sorting by creation). Kernel ids are
UUIDs, the form Jupyter already uses for its kernels.

Every pattern ends in ``\\Z``, not ``$``: Python's ``$`` also matches before a final newline, so
``"<id>\\n"`` passed as a different id that looks the same (a second kernel with the same
visible id was created that way). The OpenAPI document spells ``\\Z`` as ``$``, which means the
end of the text in JSON Schema (see ``api/docs.py``).
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid

from .errors import InvalidRequest

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
SNAPSHOT_ID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}\Z")
KERNEL_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


_last = 0
_lock = threading.Lock()


def new_snapshot_id(now: float | None = None) -> str:
    """A ULID, strictly increasing within this process even inside one millisecond."""
    global _last
    ms = int((time.time() if now is None else now) * 1000)
    with _lock:
        value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
        if value <= _last:
            value = _last + 1
        _last = value
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def new_kernel_id() -> str:
    return str(uuid.uuid4())


def check_snapshot_id(value: object) -> str:
    if not isinstance(value, str) or not SNAPSHOT_ID_RE.match(value):
        raise InvalidRequest(f"not a snapshot id: {str(value)[:60]!r}")
    return value


def check_kernel_id(value: object) -> str:
    if not isinstance(value, str) or not KERNEL_ID_RE.match(value):
        raise InvalidRequest(f"not a kernel id: {str(value)[:60]!r}")
    return value
