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
from ..errors import InternalError, JusnapError, code_for_status
from ..snapshots import Engine
from . import auth
from .browser import JupyterVouch
from .docs import SECURITY, SECURITY_SCHEMES, DictKeys, refine
from .schemas import ErrorOut

PREFIX = "/jusnap/api/v1"
# Largest request body the API accepts (413 ``too_large`` above it). Every API body is a small
# JSON object; the limit keeps a client from tying up a worker thread with a huge upload. The
# Jupyter proxy (jusnap_jupyter.handlers.MAX_BODY_BYTES) and nginx refuse the same size first.
MAX_BODY_BYTES = 256 * 1024
log = logging.getLogger(__name__)


def _describe(detail: Any, prefix: str = "") -> str:
    """Marshmallow's nested error dict as one line: ``signal: Must be one of: ...``."""
    if isinstance(detail, dict):
        parts = []
        for key, value in detail.items():
            # the first level is the location (json, query): not worth showing
            top = key in ("json", "query", "path", "form") and not prefix
            name = "" if top else f"{prefix}{key}"
            parts.append(_describe(value, f"{name}." if name else ""))
        return "; ".join(parts)
    if isinstance(detail, list):
        text = " ".join(str(d) for d in detail)
        return f"{prefix.rstrip('.')}: {text}" if prefix else text
    return str(detail)


def create_app(engine: Engine, config: dict[str, Any] | None = None) -> APIFlask:
    app = APIFlask(
        "jusnap",
        title="Jusnap API",
        version=__version__,
        spec_path=f"{PREFIX}/openapi.json",
        docs_path=None,
        spec_plugins=[DictKeys()],
    )
    app.config.update(
        JUSNAP_ENGINE=engine,
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        VALIDATION_ERROR_DESCRIPTION="Validation error",
        SPEC_FORMAT="json",
        AUTO_404_RESPONSE=True,
        INFO={
            "description": "Snapshot and restore whole Jupyter kernels in place. Local callers use"
            " the Unix socket (/run/jusnap/jusnap.sock; identified by uid); browsers use their"
            " Jupyter login, through Jupyter ({base_url}jusnap/api/v1/) or nginx."
        },
        HTTP_ERROR_SCHEMA=ErrorOut,
        VALIDATION_ERROR_SCHEMA=ErrorOut,
        VALIDATION_ERROR_STATUS_CODE=422,
    )
    s = engine.settings
    if s.jusnap.jupyter.browser_auth:
        app.config.update(
            JUSNAP_JUPYTER_VOUCH=JupyterVouch(s.jupyter_url, float(s.jusnap.jupyter.auth_cache)),
            JUSNAP_JUPYTER_UID=s.jupyter_uid,
        )
    app.config.update(config or {})
    app.security_schemes = SECURITY_SCHEMES

    @app.spec_processor
    def document_security(spec: dict[str, Any]) -> dict[str, Any]:
        """Every operation needs credentials unless it says otherwise (health, this document)."""
        spec["security"] = SECURITY
        health = spec.get("paths", {}).get(f"{PREFIX}/health", {})
        for op in health.values():
            op["security"] = []
        return refine(spec)

    @app.error_processor
    def http_error(err: HTTPError) -> tuple[dict[str, Any], int, Any]:
        message = err.message
        if err.status_code == 422 and err.detail:
            message = "invalid request: " + _describe(err.detail)
        body: dict[str, Any] = {
            "error": code_for_status(err.status_code),
            "message": message,
        }
        if err.detail:
            body["details"] = err.detail
        return body, err.status_code, err.headers

    @app.errorhandler(JusnapError)
    def jusnap_error(err: JusnapError) -> tuple[dict[str, Any], int]:
        return err.to_dict(), err.http_status

    @app.errorhandler(HTTPException)
    def werkzeug_error(err: HTTPException) -> tuple[dict[str, Any], int, list[tuple[str, str]]]:
        code = err.code or 500
        # Keep werkzeug's headers (e.g. Allow on 405, as RFC 9110 requires), not its HTML type.
        headers = [(k, v) for k, v in err.get_headers() if k.lower() != "content-type"]
        return (
            {
                "error": code_for_status(code),
                "message": err.description or err.name,
            },
            code,
            headers,
        )

    @app.errorhandler(Exception)
    def unexpected(err: Exception) -> tuple[dict[str, Any], int]:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return InternalError("internal error; see the daemon log").to_dict(), 500

    @app.before_request
    def authenticate() -> None:
        if request.path == f"{PREFIX}/health" or request.path == app.spec_path:
            g.identity = None
            return
        g.identity = auth.authenticate(request)

    from .kernels import bp as kernels_bp
    from .meta import bp as meta_bp
    from .snapshots import bp as snapshots_bp
    from .store import bp as store_bp

    app.register_blueprint(meta_bp, url_prefix=PREFIX)
    app.register_blueprint(kernels_bp, url_prefix=f"{PREFIX}/kernels")
    app.register_blueprint(snapshots_bp, url_prefix=f"{PREFIX}/snapshots")
    app.register_blueprint(store_bp, url_prefix=f"{PREFIX}/store")
    return app
