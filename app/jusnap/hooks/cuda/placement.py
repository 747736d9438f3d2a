"""Where a restored or forked kernel's GPU state goes: pure logic, no driver, no files.

The CUDA driver restores a checkpointed process onto the GPU it came from, unless it is given
GPU UUID pairs (driver API 13.1+), each naming a checkpointed GPU and the GPU to restore it
onto: same chip, enough free memory. A fork runs beside its original, which still holds its
own memory on that GPU, so "the same GPU" is often full. The policy:

1. A snapshot that does not say which GPU it used (older than ``gpu_uuids``), or whose free
   memory cannot be known (no NVML), restores as recorded: exactly the call made before.
2. Every recorded GPU is present with room for the snapshot -> as recorded (NULL args).
3. Otherwise (one GPU), the present GPU of the same model with the most free memory that
   has room -> restore with the pair (recorded, that GPU).
4. No GPU has room, or only another GPU does and the driver cannot take pairs ->
   :class:`NoRoom`, one line naming every candidate's free memory.

A kernel that used several GPUs restores as recorded: the snapshot records its GPU memory as
one figure (the host RSS the checkpoint added), so how much each GPU needs is unknown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .driver import GPU_PAIRS_MIN_DRIVER_API, format_driver_api, uuid_bytes
from .procfs import GpuInfo

__all__ = ["CONTEXT_MARGIN_BYTES", "NoRoom", "Placement", "needed_bytes", "plan", "recorded_uuids"]

MIB = 1024**2
GIB = 1024**3

#: Device memory a restore needs beyond the checkpointed allocations. The driver re-creates
#: the CUDA context on the target GPU (its module images, local memory and internal heaps:
#: a few hundred MiB on an H100/H200 with lazy module loading, CUDA 12.2+'s default), and
#: PyTorch's allocator reserves in 2 MiB / 20 MiB segments that the RSS figure rounds away.
CONTEXT_MARGIN_BYTES = 512 * MIB
#: ...plus this share of the recorded amount: the recorded figure is the host RSS the
#: checkpoint added, an estimate of the device memory, not the driver's own count.
MARGIN_SHARE = 0.05


class NoRoom(Exception):
    """No GPU can take this snapshot's GPU state now; ``str()`` is the one-line reason."""


@dataclass(frozen=True)
class Placement:
    """Where the state goes: ``pairs`` empty means "as recorded" (NULL restore args)."""

    pairs: tuple[tuple[str, str], ...]
    where: str  # for the log: "GPU-... (as recorded)", "GPU-... moved to GPU-..."

    @property
    def moved(self) -> bool:
        return any(old != new for old, new in self.pairs)


def needed_bytes(meta: Mapping[str, Any]) -> int:
    """Free device memory a GPU needs to take this snapshot: recorded + margins."""
    recorded = meta.get("gpu_memory_bytes")
    recorded = recorded if isinstance(recorded, int) and recorded > 0 else 0
    return recorded + int(recorded * MARGIN_SHARE) + CONTEXT_MARGIN_BYTES


def recorded_uuids(meta: Mapping[str, Any]) -> list[str]:
    """The GPUs the snapshot's kernel used; none if any entry is not a GPU UUID (then the
    snapshot restores as recorded rather than with pairs built from a bad name)."""
    uuids = meta.get("gpu_uuids")
    if not isinstance(uuids, list) or not all(isinstance(u, str) and _is_uuid(u) for u in uuids):
        return []
    return uuids


def _is_uuid(text: str) -> bool:
    try:
        uuid_bytes(text)
    except ValueError:
        return False
    return True


def gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def plan(
    meta: Mapping[str, Any],
    gpus: Sequence[GpuInfo],
    free: Mapping[str, int] | None,
    driver_api: int,
) -> Placement:
    """The placement for a snapshot with hook metadata ``meta`` on a machine with ``gpus``
    (``free`` bytes per UUID, None when unknown) and this driver API; raises :class:`NoRoom`."""
    recorded = recorded_uuids(meta)
    if not recorded:
        return Placement((), "its recorded GPU (the snapshot does not name it)")
    if len(recorded) > 1:
        return Placement((), f"{', '.join(recorded)} as recorded (several GPUs)")
    if free is None:
        return Placement((), f"{', '.join(recorded)} as recorded (free memory unknown)")
    old = recorded[0]
    need = needed_bytes(meta)
    present = {g.uuid: g for g in gpus if g.uuid and _is_uuid(g.uuid)}
    if old in present and free.get(old, need) >= need:
        return Placement((), f"{old} as recorded")
    model = present[old].model if old in present else meta.get("gpu_model")
    others = sorted(
        (g for g in present.values() if g.uuid != old and g.model == model and g.uuid in free),
        key=lambda g: (-free[g.uuid or ""], g.uuid),
    )
    fits = [g for g in others if free[g.uuid or ""] >= need]
    state = [f"{old} (recorded) {gib(free[old]) + ' free' if old in free else 'absent'}"]
    state += [f"{g.uuid} {gib(free[g.uuid or ''])} free" for g in others]
    if fits and driver_api >= GPU_PAIRS_MIN_DRIVER_API:
        new = fits[0].uuid or ""
        return Placement(((old, new),), f"{old} moved to {new} ({gib(free[new])} free)")
    name = model or "GPU of its model"
    if fits:
        why = "is not on this machine" if old not in present else f"has not {gib(need)} free"
        raise NoRoom(
            f"the {name} this snapshot was taken on {why} and this driver (CUDA"
            f" {format_driver_api(driver_api)}) cannot restore onto another GPU (CUDA"
            f" {format_driver_api(GPU_PAIRS_MIN_DRIVER_API)} can): {'; '.join(state)}"
        )
    raise NoRoom(
        f"no {name} has {gib(need)} free for this snapshot's GPU memory: {'; '.join(state)}"
    )
