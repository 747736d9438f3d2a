"""One error hierarchy shared by the engine, the API and the CLI.

Every failure a user can cause or meet carries a stable machine-readable ``code``, the HTTP
status the API answers with, and the CLI exit code, so the three surfaces never disagree about
what went wrong. A client that only sees the API's JSON finds the class again by its ``code``
(:func:`by_code`): an exit code is never guessed from an HTTP status, which several codes share.
"""

from __future__ import annotations

from typing import Any


class JusnapError(Exception):
    """Base of every expected failure: a readable one-line message plus a stable code."""

    code = "error"
    http_status = 500
    exit_code = 1

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class ConfigError(JusnapError):
    code = "bad_config"
    http_status = 500
    exit_code = 78  # EX_CONFIG


class InvalidRequest(JusnapError):
    code = "invalid_request"
    http_status = 400
    exit_code = 64  # EX_USAGE


class ValidationFailed(InvalidRequest):
    """A body or query that does not match the API's schema."""

    code = "validation_failed"
    http_status = 422


class MethodNotAllowed(InvalidRequest):
    code = "method_not_allowed"
    http_status = 405


class TooLarge(InvalidRequest):
    code = "too_large"
    http_status = 413


class UnsupportedMediaType(InvalidRequest):
    code = "unsupported_media_type"
    http_status = 415


class InternalError(JusnapError):
    """A bug or an unforeseen failure in the daemon (its log has the traceback)."""

    code = "internal_error"


class Unauthorized(JusnapError):
    code = "unauthorized"
    http_status = 401
    exit_code = 77  # EX_NOPERM


class Forbidden(JusnapError):
    code = "forbidden"
    http_status = 403
    exit_code = 77


class NotFound(JusnapError):
    code = "not_found"
    http_status = 404
    exit_code = 3


class KernelNotFound(NotFound):
    code = "kernel_not_found"


class SnapshotNotFound(NotFound):
    code = "snapshot_not_found"


class Busy(JusnapError):
    """Another operation holds the kernel; callers may retry."""

    code = "busy"
    http_status = 409
    exit_code = 75  # EX_TEMPFAIL


class KernelExists(JusnapError):
    """A new kernel's requested id is taken (a fork with the caller's kernel id)."""

    code = "kernel_exists"
    http_status = 409
    exit_code = 64  # EX_USAGE: choose another id


class KernelNotRunning(JusnapError):
    code = "kernel_not_running"
    http_status = 409
    exit_code = 4


class SnapshotFailed(JusnapError):
    """The dump failed; the running kernel was left as it was."""

    code = "snapshot_failed"
    http_status = 500
    exit_code = 5


class StoreFull(SnapshotFailed):
    code = "store_full"
    http_status = 507


class QuotaExceeded(StoreFull):
    """The snapshot was taken but would put its owner over ``store.max_user_mb``: not kept."""

    code = "quota_exceeded"


class RestoreFailed(JusnapError):
    """The restore failed; ``details['rolled_back']`` tells whether the previous state is back."""

    code = "restore_failed"
    http_status = 500
    exit_code = 6


class Refused(JusnapError):
    """A precondition the snapshot or restore cannot meet, checked before touching the kernel."""

    code = "refused"
    http_status = 422
    exit_code = 7


class ImageRefused(Refused):
    """A snapshot image that would restore more than the kernel had (credentials, kinds)."""

    code = "image_refused"


class JupyterUnavailable(JusnapError):
    """The Jupyter server that vouches for browser credentials did not answer."""

    code = "jupyter_unavailable"
    http_status = 502
    exit_code = 69


class DaemonUnavailable(JusnapError):
    code = "daemon_unavailable"
    http_status = 503
    exit_code = 69  # EX_UNAVAILABLE


def _all(cls: type[JusnapError]) -> list[type[JusnapError]]:
    return [cls] + [c for sub in cls.__subclasses__() for c in _all(sub)]


_BY_CODE: dict[str, type[JusnapError]] = {c.code: c for c in _all(JusnapError)}

# The class a bare HTTP status stands for, when no JusnapError was raised (werkzeug's routing
# and size limits, APIFlask's validation): the first class declared with that status.
_BY_STATUS: dict[int, type[JusnapError]] = {
    c.http_status: c for c in reversed([InternalError, *_all(JusnapError)[1:]])
}


def by_code(code: str) -> type[JusnapError]:
    """The class behind an API error ``code``; the base class (exit 1) for a code unknown here,
    e.g. from a newer daemon."""
    return _BY_CODE.get(code, JusnapError)


def code_for_status(status: int) -> str:
    """The ``error`` code the API answers for a bare HTTP status (``error`` if none fits)."""
    cls = _BY_STATUS.get(status)
    return cls.code if cls else "error"
