"""Snapshots: all of the caller's; by id: show, relabel, restore, fork, delete."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint

from ..fork import fork
from .auth import identity
from .deps import engine, kernel_view
from .docs import BODY, BY_ID, errors
from .schemas import ForkIn, ForkOut, LabelIn, RestoreIn, RestoreOut, SnapshotOut

bp = APIBlueprint("snapshots", __name__)


@bp.get("")
@bp.output(SnapshotOut(many=True))
@bp.doc(summary="All of the caller's snapshots", responses=errors())
def list_all() -> list[dict[str, Any]]:
    """Every snapshot the caller owns (root: everyone's), newest first, whether or not its
    kernel still exists: snapshots of headless runs belong to no notebook and are reachable
    only here once their kernel is gone. ``kernel_alive`` says which kernels still exist."""
    e = engine()
    owner = identity().owner
    alive = {k.id for k in e.kernels.list(owner)}
    return [{**s.public(), "kernel_alive": s.kernel_id in alive} for s in e.all_snapshots(owner)]


@bp.get("/<snapshot_id>")
@bp.output(SnapshotOut)
@bp.doc(responses=errors(*BY_ID))
def get_snapshot(snapshot_id: str) -> dict[str, Any]:
    return engine().snapshot_info(snapshot_id, identity().owner).public()


@bp.patch("/<snapshot_id>")
@bp.input(LabelIn, arg_name="body")
@bp.output(SnapshotOut)
@bp.doc(responses=errors(*BY_ID, *BODY))
def relabel(snapshot_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return engine().relabel(snapshot_id, body.get("label"), identity().owner).public()


@bp.delete("/<snapshot_id>")
@bp.output({}, status_code=204)
@bp.doc(responses=errors(*BY_ID, 409))
def delete_snapshot(snapshot_id: str) -> tuple[str, int]:
    engine().delete_snapshot(snapshot_id, identity().owner)
    return "", 204


@bp.post("/<snapshot_id>/restore")
@bp.input(RestoreIn, arg_name="body")
@bp.output(RestoreOut)
@bp.doc(responses=errors(*BY_ID, *BODY, 409, 500))
def restore(snapshot_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return engine().restore(snapshot_id, identity().owner, into=body.get("kernel_id")).public()


@bp.post("/<snapshot_id>/fork")
@bp.input(ForkIn, arg_name="body")
@bp.output(ForkOut, status_code=201)
@bp.doc(responses=errors(*BY_ID, *BODY, 409, 500, 507))
def fork_snapshot(snapshot_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Open the snapshot as a second live kernel beside the one it was taken from (which is
    not touched): a new kernel (``kernel_id`` if given) of the snapshot's owner, on ports of
    its own; ``ports_moved`` maps every port the snapshot served (Jupyter's, debugpy's, the
    user's own servers) to the fork's. 409: ``kernel_id`` exists (``kernel_exists``); 422:
    not forkable now (``refused``: a kernel without its own PID namespace whose PID is in
    use)."""
    e = engine()
    result = fork(
        e, snapshot_id, identity().owner, kernel_id=body.get("kernel_id"),
        notebook_path=body.get("notebook_path"), reseed=body.get("reseed", True),
    )  # fmt: skip
    return {**result.public(), "kernel": kernel_view(result.kernel)}
