"""Whether an automatic snapshot runs now: one pure decision, like ``store/retention.py``.

Three sources are merged here and nowhere else: the daemon's configuration (``ipython``
section), the kernel's own override (``jusnap auto KERNEL on --cooldown S``) and the GPU
hook's policy for kernels holding CUDA memory (off, or a longer cooldown).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest

MAX_COOLDOWN = 86400.0


@dataclass(frozen=True)
class Skipped:
    """An automatic snapshot that was not taken, and why."""

    kernel_id: str
    reason: str
    retry_in: float

    def public(self) -> dict[str, Any]:
        return {"status": "skipped", "kernel_id": self.kernel_id, "reason": self.reason,
                "retry_in": round(self.retry_in, 3)}  # fmt: skip


@dataclass(frozen=True)
class AutoSettings:
    enabled: bool
    cooldown: float

    def public(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "cooldown": self.cooldown}


def check_cooldown(value: float) -> float:
    """The one place the range is checked (configuration, API, CLI all come through here)."""
    if not 0 <= value <= MAX_COOLDOWN:
        raise InvalidRequest(f"cooldown must be between 0 and {MAX_COOLDOWN:.0f} seconds")
    return float(value)


def effective(
    default_enabled: bool,
    default_cooldown: float,
    enabled: bool | None,
    cooldown: float | None,
) -> AutoSettings:
    """The kernel's override where it has one, else the configuration."""
    return AutoSettings(
        default_enabled if enabled is None else bool(enabled),
        float(default_cooldown if cooldown is None else cooldown),
    )


def decide(
    kernel_id: str,
    settings: AutoSettings,
    gpu_enabled: bool | None,
    gpu_min_cooldown: float,
    last_snapshot_at: float | None,
    now: float,
) -> Skipped | None:
    """None when an automatic snapshot should run now, else why not.

    ``gpu_enabled`` is None for kernels no GPU hook claims.
    """
    if not settings.enabled:
        return Skipped(kernel_id, "automatic snapshots are off for this kernel", 0.0)
    if gpu_enabled is False:
        return Skipped(kernel_id, "automatic snapshots are off for GPU kernels", 0.0)
    cooldown = settings.cooldown
    if gpu_enabled:
        cooldown = max(cooldown, gpu_min_cooldown)
    wait = last_snapshot_at + cooldown - now if last_snapshot_at else 0.0
    if wait > 0:
        return Skipped(kernel_id, "cooldown", wait)
    return None
