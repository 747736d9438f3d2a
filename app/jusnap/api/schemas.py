"""Request and response shapes: the single source of the OpenAPI document and of validation."""

from __future__ import annotations

from typing import Any

from apiflask import Schema
from apiflask.fields import Boolean, Dict, Float, Integer, List, Nested, String
from apiflask.validators import Length, OneOf, Range, Regexp
from marshmallow import RAISE, ValidationError, validates_schema

from ..autosnap import MAX_COOLDOWN
from ..ids import KERNEL_ID_RE
from ..signames import SIGNALS

# Strings that reach argv, the environment, file names or SQLite: no NUL (a process cannot get
# it), no lone surrogate (no encoding can store it); labels also without control characters.
# ``\Z``, not ``$``, ends each: ``$`` lets a final newline through (see ``ids.py``).
TEXT = r"^[^\x00]*\Z"
ENV_NAME = r"^[^\x00=]+\Z"
LABEL = r"^[^\x00-\x1f\x7f]*\Z"
PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


def encodable(value: str) -> None:
    """Reject lone surrogates (JSON can carry them as \\udXXX escapes; nothing downstream can)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("must be valid Unicode text (no lone surrogates)") from None


class JsonBoolean(Boolean):
    """``true`` or ``false`` only: marshmallow's Boolean also takes 0, 1, "yes", "on"..., which
    the document (``type: boolean``) does not allow and a typo should not turn into a setting."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


def notebook_file(value: str) -> None:
    """A notebook path names a file, never a directory (issue 15).

    It is the notebook's identity: its snapshot list, retention count and ports. A directory
    (``.../``, ``.``, ``..``), which Jupyter hands out for sessions created with an empty
    name, would make every notebook in it share them. The daemon cannot look at the user's
    files, so it refuses what can only be a directory; the provisioner checks the rest.
    """
    if value and (value.endswith(("/", "/.", "/..")) or value in (".", "..")):
        raise ValidationError("must name the notebook file, not a directory")


class Strict(Schema):
    class Meta:
        unknown = RAISE


class ErrorOut(Schema):
    error = String(required=True, metadata={"description": "stable machine-readable code"})
    message = String(required=True)
    details = Dict()


class HealthOut(Schema):
    status = String(required=True)
    version = String(required=True)
    criu = String()
    kernels = Integer()


class ConnectionIn(Strict):
    """A kernel's ZeroMQ connection; its five ports must differ (each socket binds its own)."""

    shell_port = Integer(required=True, validate=Range(1024, 65535))
    iopub_port = Integer(required=True, validate=Range(1024, 65535))
    stdin_port = Integer(required=True, validate=Range(1024, 65535))
    control_port = Integer(required=True, validate=Range(1024, 65535))
    hb_port = Integer(required=True, validate=Range(1024, 65535))
    ip = String(validate=OneOf(["127.0.0.1", "localhost"]))
    transport = String(validate=OneOf(["tcp"]))
    key = String(required=True, validate=[Length(16, 256), Regexp(TEXT), encodable])
    signature_scheme = String(validate=OneOf(["hmac-sha256"]))
    kernel_name = String(validate=[Length(0, 64), Regexp(TEXT), encodable])

    @validates_schema
    def ports_differ(self, data: dict[str, Any], **kwargs: Any) -> None:
        ports = [data[p] for p in PORTS if p in data]
        if len(set(ports)) != len(ports):
            raise ValidationError("the five ports must differ", field_name="_schema")


class KernelIn(Strict):
    kernel_id = String(validate=Regexp(KERNEL_ID_RE))
    argv = List(String(validate=[Length(1, 4096), Regexp(TEXT), encodable]), validate=Length(1, 64))
    env = Dict(keys=String(validate=[Length(1, 256), Regexp(ENV_NAME), encodable]),
               values=String(validate=[Length(0, 8192), Regexp(TEXT), encodable]))  # fmt: skip
    cwd = String(validate=[Length(1, 4096), Regexp(TEXT), encodable])
    notebook_path = String(
        validate=[Length(0, 4096), Regexp(TEXT), encodable, notebook_file], allow_none=True
    )
    connection = Nested(
        ConnectionIn,
        metadata={"description": "the five ports must differ from each other (else 422)"},
    )


class AutoOut(Schema):
    enabled = Boolean(required=True)
    cooldown = Float(required=True)
    pending_at = Float(
        allow_none=True,
        metadata={"description": "when the trailing automatic snapshot is due (epoch seconds)"},
    )
    last_error = String(
        allow_none=True,
        metadata={"description": "why the last automatic snapshot failed (null once one works)"},
    )


class AutoIn(Strict):
    enabled = JsonBoolean()
    cooldown = Float(validate=Range(0, MAX_COOLDOWN))


class SnapshotOut(Schema):
    id = String(required=True)
    kernel_id = String(required=True)
    owner_uid = Integer(required=True)
    notebook_path = String(allow_none=True)
    created_at = Float(required=True)
    trigger = String(required=True, validate=OneOf(["manual", "auto", "pre-restore"]))
    label = String(allow_none=True)
    size_bytes = Integer(required=True)
    frozen_seconds = Float(required=True)
    execution_count = Integer(allow_none=True)
    has_history = Boolean()
    hooks = Dict()
    restorable = Boolean(
        metadata={"description": "can be restored into the kernel now (in a kernel's list)"}
    )
    kernel_alive = Boolean(
        metadata={"description": "its kernel still exists (in the list of all snapshots)"}
    )


class KernelOut(Schema):
    id = String(required=True)
    owner_uid = Integer(required=True)
    run_uid = Integer(required=True)
    pid = Integer(allow_none=True)
    status = String(required=True, validate=OneOf(["running", "dead", "stopped"]))
    notebook_path = String(allow_none=True)
    auto_snapshot = Boolean(allow_none=True)
    cooldown = Float(allow_none=True)
    created_at = Float(required=True)
    execution_count = Integer(allow_none=True)
    execution_state = String(allow_none=True)
    operation = String(allow_none=True, metadata={"description": "snapshot, restore, ... running"})
    notice = String(
        allow_none=True,
        metadata={"description": "what the daemon did on its own, e.g. after a crash mid-restore"},
    )
    parent_kernel_id = String(
        allow_none=True, metadata={"description": "a fork's original kernel (null: launched)"}
    )
    parent_snapshot_id = String(
        allow_none=True, metadata={"description": "the snapshot a fork was made from"}
    )
    auto = Nested(AutoOut)
    last_snapshot = Nested(SnapshotOut, allow_none=True)


class KernelCreatedOut(KernelOut):
    connection = Dict(required=True)


LOG_MAX_BYTES = 1024 * 1024


class LogsIn(Strict):
    bytes = Integer(
        load_default=64 * 1024,
        validate=Range(1, LOG_MAX_BYTES),
        metadata={"description": "how many of the newest bytes to return (at most 1 MiB)"},
    )


class LogsOut(Schema):
    kernel_id = String(required=True)
    text = String(
        required=True,
        metadata={
            "description": "the newest output the kernel wrote to its stdout and stderr (its"
            " cells' output, ipykernel's own messages, the traceback of a fatal signal),"
            " decoded as UTF-8 with replacement characters; lines starting with '--- jusnap'"
            " are the daemon's (start, restore)"
        },
    )
    truncated = Boolean(
        required=True, metadata={"description": "older output exists beyond ``bytes``"}
    )


class SnapshotIn(Strict):
    label = String(validate=[Length(0, 200), Regexp(LABEL), encodable], allow_none=True)
    trigger = String(validate=OneOf(["manual", "auto"]))
    final = JsonBoolean(
        metadata={
            "description": "true: the kernel's server is stopping (culled, stopped): an"
            " automatic snapshot that waits for a running one and ignores the cooldown, skipped"
            " when nothing ran since the newest snapshot (the Jupyter server extension sends it)"
        }
    )
    execution_count = Integer(validate=Range(0, 2**31), allow_none=True)
    wait = JsonBoolean(
        metadata={
            "description": "false: answer 202 at once, take the snapshot once the caller has"
            " closed its connection (for the kernel's own auto-snapshot extension)"
        }
    )


class SnapshotCreatedOut(Schema):
    status = String(required=True, validate=OneOf(["created", "skipped", "scheduled"]))
    kernel_id = String()
    snapshot = Nested(SnapshotOut, allow_none=True)
    reason = String()
    retry_in = Float()
    previous_error = String(
        metadata={"description": "automatic requests: why the previous automatic snapshot failed"}
    )


class LabelIn(Strict):
    label = String(
        required=True, validate=[Length(0, 200), Regexp(LABEL), encodable], allow_none=True
    )


class RestoreIn(Strict):
    kernel_id = String(validate=Regexp(KERNEL_ID_RE))


class RestoreOut(Schema):
    status = String(required=True)
    snapshot = Nested(SnapshotOut, required=True)
    kernel = Nested(KernelOut, required=True)
    pre_restore = Nested(SnapshotOut, allow_none=True)
    seconds = Float(required=True)
    criu_seconds = Float(required=True)
    handshake_seconds = Float(required=True)


class ForkIn(Strict):
    kernel_id = String(
        validate=Regexp(KERNEL_ID_RE),
        metadata={"description": "the new kernel's id (chosen by the caller); default: a new one"},
    )
    notebook_path = String(
        validate=[Length(0, 4096), Regexp(TEXT), encodable, notebook_file], allow_none=True,
        metadata={"description": "the notebook file the fork belongs to (e.g. its copy)"},
    )  # fmt: skip
    reseed = JsonBoolean(
        load_default=True,
        metadata={"description": "reseed random and numpy.random in the fork (default true)"},
    )


class ForkOut(Schema):
    kernel = Nested(KernelOut, required=True)
    parent_kernel_id = String(required=True)
    parent_snapshot_id = String(required=True)
    ports_moved = Dict(
        keys=String(), values=Integer(), required=True,
        metadata={"description": "every port the snapshot served -> the fork's (old -> new)"},
    )  # fmt: skip
    seconds = Float(required=True)
    criu_seconds = Float(required=True)


class SignalIn(Strict):
    signal = String(
        required=True,
        validate=OneOf(list(SIGNALS)),
    )


class ClearedOut(Schema):
    deleted = Integer(required=True)
