"""Health: unauthenticated, says only whether the daemon is up."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint

from .. import __version__
from .schemas import HealthOut

bp = APIBlueprint("meta", __name__)


@bp.get("/health")
@bp.output(HealthOut)
@bp.doc(security=[])
def health() -> dict[str, Any]:
    return {"status": "ok", "version": __version__}
