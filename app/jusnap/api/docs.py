"""What the OpenAPI document says about errors and authentication, in one place.

Every error body is :class:`~jusnap.api.schemas.ErrorOut` (APIFlask's ``HTTP_ERROR_SCHEMA``);
each operation lists the statuses it can answer, so that clients (and the schemathesis test)
can rely on the document: an undocumented status is a bug.
"""

from __future__ import annotations

from typing import Any

from apispec import APISpec, BasePlugin
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.field_converter import FieldConverterMixin
from marshmallow import fields

from ..ids import KERNEL_ID_RE, SNAPSHOT_ID_RE

_WHY = {
    400: "malformed request or id (error `invalid_request`)",
    401: "no credentials (error `unauthorized`)",
    403: "credentials refused, XSRF token missing or wrong, or not allowed (error `forbidden`)",
    404: "no such kernel or snapshot, or one owned by someone else"
    " (`kernel_not_found`, `snapshot_not_found`, `not_found`)",
    409: "the kernel is busy with another operation, or not running (`busy`,"
    " `kernel_not_running`); a fork's kernel id is taken (`kernel_exists`)",
    413: "request body too large (`too_large`)",
    422: "body failed validation (`validation_failed`), or refused before touching the kernel"
    " (`refused`; a fork: not forkable now)",
    500: "the snapshot or restore failed (`snapshot_failed`, `restore_failed`; see details)",
    502: "the Jupyter server that vouches for browser credentials did not answer"
    " (`jupyter_unavailable`)",
    507: "no space left for the snapshot (`store_full`), or it would put its owner over"
    " `store.max_user_mb` (`quota_exceeded`; the snapshot is not kept)",
}
AUTH = (401, 403, 502)
BODY = (400, 413, 422)
BY_ID = (400, 404)


def errors(*codes: int) -> dict[int, str]:
    """The documented error responses: the authentication ones plus ``codes``."""
    return {c: _WHY[c] for c in sorted({*AUTH, *codes})}


def response(schema_name: str, description: str) -> dict[str, Any]:
    """A success response reusing a schema already in the document (by reference)."""
    return {
        "description": description,
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
        },
    }


SECURITY_SCHEMES = {
    "AdminToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The administrator token (root-only file `state_dir/api-token`), over"
        " loopback TCP. Callers on the Unix socket need no credentials: the daemon reads their uid"
        " (SO_PEERCRED).",
    },
    "JupyterToken": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "`token <Jupyter token>`: accepted when the Jupyter server accepts it"
        " (GET /api/me); acts as the user Jupyter runs as.",
    },
    "JupyterCookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": "_xsrf",
        "description": "A browser's Jupyter login cookie, checked with the Jupyter server. POST,"
        " PATCH and DELETE also need the `X-XSRFToken` header matching Jupyter's `_xsrf` cookie.",
    },
}
SECURITY = [{"AdminToken": []}, {"JupyterToken": []}, {"JupyterCookie": []}]


def json_schema_pattern(pattern: str) -> str:
    """A Python pattern as JSON Schema writes it: Python's ``\\Z`` (end of text) is ``$`` there
    (ECMA-262 ``$`` without the multiline flag), and ``\\Z`` is not valid in ECMA-262."""
    return pattern[:-2] + "$" if pattern.endswith("\\Z") else pattern


def _patterns(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                node[key] = json_schema_pattern(value)
            else:
                _patterns(value)
    elif isinstance(node, list):
        for item in node:
            _patterns(item)


class DictKeys(BasePlugin):
    """Documents a Dict field's key rules as ``propertyNames`` (apispec documents only values),
    so that e.g. the rules for environment variable names are in the document, not only in the
    code."""

    def init_spec(self, spec: APISpec) -> None:
        for plugin in spec.plugins:
            if isinstance(plugin, MarshmallowPlugin) and plugin.converter is not None:
                plugin.converter.add_attribute_function(_property_names)


def _property_names(self: FieldConverterMixin, field: Any, **kwargs: Any) -> dict[str, Any]:
    keys = getattr(field, "key_field", None)
    if isinstance(field, fields.Dict) and keys is not None:
        return {"propertyNames": self.field2property(keys)}
    return {}


_ID_PATTERNS = {"kernel_id": KERNEL_ID_RE.pattern, "snapshot_id": SNAPSHOT_ID_RE.pattern}


def refine(spec: dict[str, Any]) -> dict[str, Any]:
    """What Flask's routes and APIFlask leave unsaid: id formats, bodies that must be present;
    patterns in JSON Schema's dialect."""
    _patterns(spec)
    schemas = spec.get("components", {}).get("schemas", {})
    for ops in spec.get("paths", {}).values():
        for op in ops.values():
            if not isinstance(op, dict):
                continue
            for param in op.get("parameters", []):
                pattern = _ID_PATTERNS.get(param.get("name", ""))
                if pattern and param.get("in") == "path":
                    schema = param.setdefault("schema", {"type": "string"})
                    schema["pattern"] = json_schema_pattern(pattern)
            body = op.get("requestBody")
            if body:
                ref = (
                    body.get("content", {})
                    .get("application/json", {})
                    .get("schema", {})
                    .get("$ref", "")
                )
                if schemas.get(ref.rsplit("/", 1)[-1], {}).get("required"):
                    body["required"] = True
    return spec
