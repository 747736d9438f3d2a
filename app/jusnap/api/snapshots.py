"""Snapshots by id: show, relabel, restore, delete."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint

from .auth import identity
from .deps import engine
from .schemas import ErrorOut, LabelIn, RestoreIn, RestoreOut, SnapshotOut

bp = APIBlueprint("snapshots", __name__)
ERRORS = {401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut}


@bp.get("/<snapshot_id>")
@bp.output(SnapshotOut)
@bp.doc(responses=ERRORS)
def get_snapshot(snapshot_id: str) -> dict[str, Any]:
    return engine().snapshot_info(snapshot_id, identity().owner).public()


@bp.patch("/<snapshot_id>")
@bp.input(LabelIn, arg_name="body")
@bp.output(SnapshotOut)
@bp.doc(responses={**ERRORS, 400: ErrorOut})
def relabel(snapshot_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return engine().relabel(snapshot_id, body.get("label"), identity().owner).public()


@bp.delete("/<snapshot_id>")
@bp.output({}, status_code=204)
@bp.doc(responses=ERRORS)
def delete_snapshot(snapshot_id: str) -> tuple[str, int]:
    engine().delete_snapshot(snapshot_id, identity().owner)
    return "", 204


@bp.post("/<snapshot_id>/restore")
@bp.input(RestoreIn, arg_name="body")
@bp.output(RestoreOut)
@bp.doc(responses={**ERRORS, 422: ErrorOut, 500: ErrorOut})
def restore(snapshot_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return engine().restore(snapshot_id, identity().owner, into=body.get("kernel_id")).public()
