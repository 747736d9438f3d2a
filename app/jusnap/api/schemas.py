"""Request and response shapes: the single source of the OpenAPI document and of validation."""

from __future__ import annotations

from apiflask import Schema
from apiflask.fields import Boolean, Dict, Float, Integer, List, Nested, String
from apiflask.validators import Length, OneOf, Range, Regexp
from marshmallow import RAISE, ValidationError

KERNEL_ID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
# Strings that reach argv, the environment, file names or SQLite: no NUL (a process cannot get
# it), no lone surrogate (no encoding can store it); labels also without control characters.
TEXT = r"^[^\x00]*$"
ENV_NAME = r"^[^\x00=]+$"
LABEL = r"^[^\x00-\x1f\x7f]*$"


def encodable(value: str) -> None:
    """Reject lone surrogates (JSON can carry them as \\udXXX escapes; nothing downstream can)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("must be valid Unicode text (no lone surrogates)") from None


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


class KernelIn(Strict):
    kernel_id = String(validate=Regexp(KERNEL_ID))
    argv = List(String(validate=[Length(1, 4096), Regexp(TEXT), encodable]), validate=Length(1, 64))
    env = Dict(keys=String(validate=[Length(1, 256), Regexp(ENV_NAME), encodable]),
               values=String(validate=[Length(0, 8192), Regexp(TEXT), encodable]))  # fmt: skip
    cwd = String(validate=[Length(1, 4096), Regexp(TEXT), encodable])
    notebook_path = String(
        validate=[Length(0, 4096), Regexp(TEXT), encodable, notebook_file], allow_none=True
    )
    connection = Nested(ConnectionIn)


class AutoOut(Schema):
    enabled = Boolean(required=True)
    cooldown = Float(required=True)


class AutoIn(Strict):
    enabled = Boolean()
    cooldown = Float(validate=Range(0, 86400))


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
    restorable = Boolean(metadata={"description": "fits the kernel's ports (in a kernel's list)"})
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
    auto = Nested(AutoOut)
    last_snapshot = Nested(SnapshotOut, allow_none=True)


class KernelCreatedOut(KernelOut):
    connection = Dict(required=True)


class SnapshotIn(Strict):
    label = String(validate=[Length(0, 200), Regexp(LABEL), encodable], allow_none=True)
    trigger = String(validate=OneOf(["manual", "auto"]))
    execution_count = Integer(validate=Range(0, 2**31), allow_none=True)
    wait = Boolean(
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


class LabelIn(Strict):
    label = String(
        required=True, validate=[Length(0, 200), Regexp(LABEL), encodable], allow_none=True
    )


class RestoreIn(Strict):
    kernel_id = String(validate=Regexp(KERNEL_ID))


class RestoreOut(Schema):
    status = String(required=True)
    snapshot = Nested(SnapshotOut, required=True)
    kernel = Nested(KernelOut, required=True)
    pre_restore = Nested(SnapshotOut, allow_none=True)
    seconds = Float(required=True)
    criu_seconds = Float(required=True)
    handshake_seconds = Float(required=True)


class SignalIn(Strict):
    signal = String(
        required=True,
        validate=OneOf(["SIGINT", "SIGTERM", "SIGKILL", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGQUIT"]),
    )


class ClearedOut(Schema):
    deleted = Integer(required=True)
