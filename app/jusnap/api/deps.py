"""Small accessors shared by the blueprints."""

from __future__ import annotations

from typing import Any

from flask import current_app

from ..kernels import namespace
from ..registry import Kernel
from ..snapshots import Engine


def engine() -> Engine:
    return current_app.config["JUSNAP_ENGINE"]


def kernel_view(k: Kernel) -> dict[str, Any]:
    e = engine()
    d = k.public()
    d["auto"] = e.auto_status(k)
    last = e.last_snapshot(k)
    d["last_snapshot"] = last.public() if last else None
    d["pid_namespace"] = namespace.pid_namespace(k.pid) if k.status == "running" else None
    return d
