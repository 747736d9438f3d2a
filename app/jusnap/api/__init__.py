"""The REST API: an APIFlask app factory whose blueprints are thin layers over the engine.

APIFlask (Flask + marshmallow) validates every body against the schemas in ``schemas.py`` and
generates the OpenAPI document from the same schemas, so the document cannot drift from the
code.
"""

from __future__ import annotations

import logging
from typing import Any

from apiflask import APIFlask, HTTPError
from flask import g, request
from werkzeug.exceptions import HTTPException

from .. import __version__
from ..errors import JusnapError
from ..snapshots import Engine
from . import auth

PREFIX = "/jusnap/api/v1"
log = logging.getLogger(__name__)

_HTTP_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "busy", 413: "too_large", 415: "unsupported_media_type",
               422: "validation_failed", 500: "internal_error"}  # fmt: skip


def create_app(engine: Engine, config: dict[str, Any] | None = None) -> APIFlask:
    app = APIFlask(
        "jusnap",
        title="Jusnap API",
        version=__version__,
        spec_path=f"{PREFIX}/openapi.json",
        docs_path=None,
    )
    app.config.update(
        JUSNAP_ENGINE=engine,
        MAX_CONTENT_LENGTH=256 * 1024,
        VALIDATION_ERROR_DESCRIPTION="Validation error",
        SPEC_FORMAT="json",
        AUTO_404_RESPONSE=True,
        INFO={"description": "Snapshot and restore whole Jupyter kernels in place."},
    )
    app.config.update(config or {})
    app.security_schemes = {
        "PeerCredentials": {"type": "apiKey", "in": "header", "name": "X-Unix-Socket",
                            "description": "Unix socket callers are identified by SO_PEERCRED"},
        "Token": {"type": "http", "scheme": "bearer"},
    }  # fmt: skip

    @app.error_processor
    def http_error(err: HTTPError) -> tuple[dict[str, Any], int, Any]:
        body: dict[str, Any] = {"error": _HTTP_CODES.get(err.status_code, "error"), "message": err.message}
        if err.detail:
            body["details"] = err.detail
        return body, err.status_code, err.headers

    @app.errorhandler(JusnapError)
    def jusnap_error(err: JusnapError) -> tuple[dict[str, Any], int]:
        return err.to_dict(), err.http_status

    @app.errorhandler(HTTPException)
    def werkzeug_error(err: HTTPException) -> tuple[dict[str, Any], int]:
        code = err.code or 500
        return {"error": _HTTP_CODES.get(code, "error"), "message": err.description or err.name}, code

    @app.errorhandler(Exception)
    def unexpected(err: Exception) -> tuple[dict[str, Any], int]:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return {"error": "internal_error", "message": "internal error; see the daemon log"}, 500

    @app.before_request
    def authenticate() -> None:
        if request.path == f"{PREFIX}/health" or request.path == app.spec_path:
            g.identity = None
            return
        g.identity = auth.authenticate(request)

    from .kernels import bp as kernels_bp
    from .meta import bp as meta_bp
    from .snapshots import bp as snapshots_bp

    app.register_blueprint(meta_bp, url_prefix=PREFIX)
    app.register_blueprint(kernels_bp, url_prefix=f"{PREFIX}/kernels")
    app.register_blueprint(snapshots_bp, url_prefix=f"{PREFIX}/snapshots")
    return app
