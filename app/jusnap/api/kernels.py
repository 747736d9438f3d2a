"""Kernels: launch, inspect, signal, restart, shut down; a kernel's snapshots and settings."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from flask import request
from marshmallow import RAISE

from ..errors import InvalidRequest
from ..snapshots import Skipped
from .auth import identity
from .deps import engine, kernel_view
from .docs import BODY, BY_ID, errors, response
from .handoff import after_hangup
from .schemas import (
    AutoIn,
    AutoOut,
    ClearedOut,
    KernelCreatedOut,
    KernelIn,
    KernelOut,
    LogsIn,
    LogsOut,
    SignalIn,
    SnapshotCreatedOut,
    SnapshotIn,
    SnapshotOut,
)

bp = APIBlueprint("kernels", __name__)


@bp.get("")
@bp.output(KernelOut(many=True))
@bp.doc(responses=errors())
def list_kernels() -> list[dict[str, Any]]:
    return [kernel_view(k) for k in engine().kernels.list(identity().owner)]


@bp.post("")
@bp.input(KernelIn, arg_name="body")
@bp.output(KernelCreatedOut, status_code=201)
@bp.doc(responses=errors(*BODY, 404))  # 404: kernel_id is another user's kernel
def launch_kernel(body: dict[str, Any]) -> dict[str, Any]:
    who = identity()
    e = engine()
    # Local login users may start kernels: they run as the caller's own uid (root's as the
    # kernel user), so a caller only ever gets a process it could have started itself.
    k = e.kernels.launch(
        owner_uid=who.uid,
        argv=body.get("argv"),
        env=body.get("env"),
        cwd=body.get("cwd"),
        notebook_path=body.get("notebook_path"),
        connection=body.get("connection"),
        kernel_id=body.get("kernel_id"),
    )
    return {**kernel_view(k), "connection": k.connection}


@bp.get("/<kernel_id>")
@bp.output(KernelOut)
@bp.doc(responses=errors(*BY_ID))
def get_kernel(kernel_id: str) -> dict[str, Any]:
    return kernel_view(engine().kernels.get(kernel_id, identity().owner))


@bp.get("/<kernel_id>/connection")
@bp.output(KernelCreatedOut)
@bp.doc(responses=errors(*BY_ID))
def get_connection(kernel_id: str) -> dict[str, Any]:
    k = engine().kernels.get(kernel_id, identity().owner)
    return {**kernel_view(k), "connection": k.connection}


@bp.delete("/<kernel_id>")
@bp.output({}, status_code=204)
@bp.doc(responses=errors(*BY_ID, 409))
def shutdown_kernel(kernel_id: str) -> tuple[str, int]:
    engine().shutdown(kernel_id, identity().owner)
    return "", 204


@bp.post("/<kernel_id>/restart")
@bp.output(KernelOut)
@bp.doc(responses=errors(*BY_ID, 409))
def restart_kernel(kernel_id: str) -> dict[str, Any]:
    return kernel_view(engine().kernels.restart(kernel_id, identity().owner))


@bp.post("/<kernel_id>/interrupt")
@bp.output({}, status_code=204)
@bp.doc(responses=errors(*BY_ID, 409))
def interrupt_kernel(kernel_id: str) -> tuple[str, int]:
    engine().kernels.interrupt(kernel_id, identity().owner)
    return "", 204


@bp.post("/<kernel_id>/signal")
@bp.input(SignalIn, arg_name="body")
@bp.output({}, status_code=204)
@bp.doc(responses=errors(*BY_ID, *BODY, 409))
def signal_kernel(kernel_id: str, body: dict[str, Any]) -> tuple[str, int]:
    engine().kernels.signal(kernel_id, body["signal"], identity().owner)
    return "", 204


@bp.get("/<kernel_id>/logs")
@bp.input(LogsIn, location="query", arg_name="query", unknown=RAISE)  # webargs: EXCLUDE
@bp.output(LogsOut)
@bp.doc(summary="The kernel's stdout and stderr", responses=errors(*BY_ID, *BODY))
def kernel_logs(kernel_id: str, query: dict[str, Any]) -> dict[str, Any]:
    """The newest output the kernel wrote outside its notebook (kept bounded, across
    snapshots, restores and daemon restarts), e.g. why it crashed. Owner only."""
    k = engine().kernels.get(kernel_id, identity().owner)
    data, truncated = engine().kernels.logs(k.id, identity().owner, query["bytes"])
    return {"kernel_id": k.id, "text": data.decode(errors="replace"), "truncated": truncated}


@bp.get("/<kernel_id>/auto")
@bp.output(AutoOut)
@bp.doc(responses=errors(*BY_ID))
def get_auto(kernel_id: str) -> dict[str, Any]:
    e = engine()
    return e.auto_status(e.kernels.get(kernel_id, identity().owner))


@bp.patch("/<kernel_id>/auto")
@bp.input(AutoIn, arg_name="body")
@bp.output(AutoOut)
@bp.doc(responses=errors(*BY_ID, *BODY))
def set_auto(kernel_id: str, body: dict[str, Any]) -> dict[str, Any]:
    e = engine()
    k = e.kernels.set_auto(kernel_id, identity().owner, body.get("enabled"), body.get("cooldown"))
    return e.auto_status(k)


@bp.get("/<kernel_id>/snapshots")
@bp.output(SnapshotOut(many=True))
@bp.doc(responses=errors(*BY_ID))
def list_snapshots(kernel_id: str) -> list[dict[str, Any]]:
    """The kernel's snapshots and those of its notebook; ``restorable``: they can be restored
    into it now (ports are moved when they differ; the snapshot's PID must be free)."""
    e = engine()
    k = e.kernels.get(kernel_id, identity().owner)
    snaps = e.list_snapshots(k.id, identity().owner)
    return [{**s.public(), "restorable": e.restorable(s, k)} for s in snaps]


@bp.post("/<kernel_id>/snapshots")
@bp.input(SnapshotIn, arg_name="body")
@bp.output(SnapshotCreatedOut, status_code=201)
@bp.doc(
    responses={
        **errors(*BY_ID, *BODY, 409, 500, 507),
        200: response("SnapshotCreatedOut", "automatic snapshot skipped (cooldown, off, busy)"),
        202: response("SnapshotCreatedOut", '"wait": false: taken once the caller hangs up'),
    }
)
def create_snapshot(kernel_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    e = engine()
    owner = identity().owner
    trigger = body.get("trigger", "manual")
    if body.get("final"):
        if trigger != "auto" or body.get("label") or body.get("wait") is False:
            raise InvalidRequest('"final" is an automatic snapshot: trigger "auto", no label, wait')
        final = e.final_snapshot(kernel_id, owner)
        if isinstance(final, Skipped):
            return final.public(), 200
        return {"status": "created", "snapshot": final.public()}, 201
    if body.get("wait") is False:
        # Asked from inside the kernel: answer first, dump once the kernel has hung up.
        k = e.kernels.get(kernel_id, owner)
        # The kernel learns here that its previous automatic snapshot failed (it was answered
        # before that dump ran), and its extension prints it once in the notebook.
        previous = e.auto_status(k)["last_error"] if trigger == "auto" else None
        extra = {"previous_error": previous} if previous else {}
        skipped = e.check_auto(k.id, owner) if trigger == "auto" else None
        if skipped is not None:
            return {**skipped.public(), **extra}, 200
        count, label = body.get("execution_count"), body.get("label")
        after_hangup(
            request.environ.get("gunicorn.socket"),
            lambda: e.snapshot(k.id, owner, trigger=trigger, label=label, execution_count=count),
            f"{trigger} snapshot of {k.id}",
        )
        return {"status": "scheduled", "kernel_id": k.id, **extra}, 202
    result = e.snapshot(
        kernel_id,
        owner,
        trigger=trigger,
        label=body.get("label"),
        execution_count=body.get("execution_count"),
    )
    if isinstance(result, Skipped):
        return result.public(), 200
    return {"status": "created", "snapshot": result.public()}, 201


@bp.delete("/<kernel_id>/snapshots")
@bp.output(ClearedOut)
@bp.doc(responses=errors(*BY_ID, 409))
def clear_snapshots(kernel_id: str) -> dict[str, Any]:
    return {"deleted": engine().clear(kernel_id, identity().owner)}
