"""CUDA kernels: move GPU state into host memory so CRIU can dump it, and back afterwards.

CRIU cannot dump a process that maps ``/dev/nvidia*`` (``Can't handle non-regular mapping``).
The CUDA driver's checkpoint API (``driver.py``) takes a live process's GPU state into host
memory and closes its device files, so CRIU sees an ordinary process; after the dump the same
driver puts the memory back and unlocks, and after ``criu restore`` it does so in the restored
process. This module is the policy: when a kernel counts as a GPU kernel (``procfs.py``), what
refuses a snapshot or a restore, the order of the driver calls and how every failure is walked
back, and how automatic snapshots of GPU kernels are throttled (the ``gpu`` config section).

Everything here runs in the daemon, never in the kernel: the kernel may be busy, hung in a
cell, or owned by another user, and the driver's checkpoint API is designed for an outside
controller. The driver binding and the ``/proc`` root are injectable so the sequencing is unit
tested without a GPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from jusnap.config import GpuSettings
from jusnap.errors import Refused, RestoreFailed, SnapshotFailed
from jusnap.hooks import AutoPolicy, CheckpointHook

from .driver import (
    MIN_DRIVER_API_VERSION,
    CudaDriver,
    CudaError,
    Driver,
    DriverUnavailable,
    ProcessState,
    format_driver_api,
    state_name,
)
from .nvml import GpuMemory, Nvml, NvmlUnavailable
from .placement import NoRoom, Placement, plan, recorded_uuids
from .procfs import GpuSystem

__all__ = ["CudaHook", "free_torch_cache_code"]

log = logging.getLogger(__name__)

_FREE_TORCH_CACHE = """\
def _jusnap_free_torch_cache():
    import sys
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if torch.cuda.is_initialized():
            import gc
            gc.collect()
            torch.cuda.empty_cache()
    except Exception:
        pass
_jusnap_free_torch_cache()
del _jusnap_free_torch_cache
"""


def free_torch_cache_code() -> str:
    """Source a kernel runs silently before a snapshot to shrink the image.

    PyTorch's caching allocator keeps freed blocks reserved on the GPU; the driver checkpoints
    reserved memory, not just live tensors, so emptying the cache can shrink the image a lot.
    It only acts when the user already imported torch and initialised CUDA: importing torch
    (seconds, and a CUDA context) just to free nothing would be worse than no cleanup.
    """
    return _FREE_TORCH_CACHE


class CudaHook(CheckpointHook):
    """Lock → checkpoint → (CRIU dump) → restore → unlock, and restore → unlock after a restore.

    A CUDA process left locked or checkpointed hangs on its next CUDA call, so every path out of
    :meth:`around_dump` (success, CRIU failure, exception, Ctrl-C) walks the state back to
    *running*, trying each step even if an earlier one failed, and then reports what it could
    not undo.
    """

    name = "cuda"

    def __init__(
        self,
        settings: GpuSettings | None = None,
        driver: Driver | None = None,
        system: GpuSystem | None = None,
        clock: Callable[[], float] = time.monotonic,
        memory: GpuMemory | None = None,
    ) -> None:
        self.settings = settings or GpuSettings()
        self.driver: Driver = driver if driver is not None else CudaDriver()
        self.system = system or GpuSystem()
        self.clock = clock
        self.memory: GpuMemory = memory if memory is not None else Nvml()
        #: Durations of the last around_dump / after_restore, in seconds; for logs and benches.
        self.last_timings: dict[str, float] = {}
        #: Where the last after_restore put the GPU state (for logs, tests and benches).
        self.last_placement: Placement | None = None

    @classmethod
    def from_settings(cls, gpu: GpuSettings | Mapping[str, Any] | None = None) -> CudaHook:
        """The hook as the daemon builds it from the ``jusnap.gpu`` section of the config.

        A raw mapping (what this took before the section was typed) is still accepted and
        checked exactly like conf.yml, so a bad value stops the daemon with one line.
        """
        settings = gpu if isinstance(gpu, GpuSettings) else GpuSettings.from_dict(gpu)
        return cls(settings)

    # --- detection and refusals -----------------------------------------------------------

    def detect(self, pid: int) -> bool:
        return bool(self.system.nvidia_files(pid))

    def prepare_code(self, pid: int) -> str | None:
        return free_torch_cache_code() if self.settings.free_torch_cache else None

    def auto_policy(self, pid: int) -> AutoPolicy:
        return AutoPolicy(self.settings.auto_snapshot, self.settings.auto_cooldown_seconds)

    def _require_driver(self, action: str) -> int:
        try:
            version = self.driver.version()
            has_api = self.driver.has_checkpoint_api()
        except (DriverUnavailable, CudaError) as exc:
            raise Refused(
                f"cannot {action} a GPU kernel: the NVIDIA driver is not usable here ({exc})"
            ) from exc
        if version < MIN_DRIVER_API_VERSION or not has_api:
            raise Refused(
                f"cannot {action} a GPU kernel: the NVIDIA driver supports CUDA "
                f"{format_driver_api(version)}, checkpointing needs CUDA "
                f"{format_driver_api(MIN_DRIVER_API_VERSION)} (driver r570 or newer)",
                driver_api=version,
            )
        return version

    def preflight_dump(self, pid: int) -> None:
        self._require_driver("snapshot")
        if self.system.uses_mig(pid):
            raise Refused(
                "cannot snapshot a GPU kernel on a MIG-partitioned GPU: "
                "CUDA checkpointing does not support MIG"
            )
        if self.system.uses_mps(pid) or self.system.mps_server_running():
            raise Refused(
                "cannot snapshot a GPU kernel while CUDA MPS is in use: "
                "CUDA checkpointing does not support MPS clients"
            )
        try:
            state = self.driver.get_state(pid)
        except CudaError as exc:
            raise Refused(f"cannot snapshot this GPU kernel: {exc}") from exc
        if state != ProcessState.RUNNING:
            raise Refused(
                f"cannot snapshot this GPU kernel: its CUDA state is {state_name(state)}, "
                "not running (another checkpoint tool may hold it)",
                cuda_state=state,
            )

    def preflight_restore(self, meta: dict[str, Any], beside: bool = False) -> None:
        """Refuse what cannot restore here. ``beside``: the restored process will run beside
        everything running now (a fork), so the GPU memory free now is what it gets and a
        snapshot no GPU has room for is refused here, before anything is made. A restore in
        place replaces a kernel whose GPU memory is only freed later, so its placement is
        decided in :meth:`after_restore`, when that memory is free."""
        if not self.system.device_present():
            raise Refused("cannot restore a GPU snapshot: no NVIDIA GPU is present on this machine")
        self._require_driver("restore")
        recorded = meta.get("gpu_model")
        models = self.system.gpu_models()
        if recorded and models and recorded not in models:
            raise Refused(
                f"cannot restore a GPU snapshot taken on {recorded} onto {', '.join(models)}: "
                "CUDA state only restores onto the same GPU model",
                recorded=recorded,
                present=models,
            )
        recorded_driver = meta.get("driver_version")
        current_driver = self.system.driver_version()
        if recorded_driver and current_driver and recorded_driver != current_driver:
            raise Refused(
                f"cannot restore a GPU snapshot taken with NVIDIA driver {recorded_driver} "
                f"under driver {current_driver}: the snapshot holds the old user-space driver",
                recorded=recorded_driver,
                present=current_driver,
            )
        if beside:
            try:
                placement = self.placement(meta)
            except NoRoom as exc:
                raise Refused(f"cannot restore this GPU snapshot: {exc}") from None
            log.info("GPU snapshot will restore onto %s", placement.where)

    def placement(self, meta: dict[str, Any]) -> Placement:
        """Where ``meta``'s GPU state would go now (see :mod:`.placement`); raises NoRoom."""
        gpus = self.system.gpus()
        free: dict[str, int] | None = {}
        if len(recorded_uuids(meta)) == 1:  # else the policy needs no figures: skip NVML
            try:
                free = self.memory.free_bytes([g.uuid for g in gpus if g.uuid])
            except NvmlUnavailable as exc:
                log.info("GPU placement: no free-memory figures (%s); restoring as recorded", exc)
                free = None
        return plan(meta, gpus, free, self._safe_version() or 0)

    # --- the sequence ---------------------------------------------------------------------

    def _state_or_none(self, pid: int) -> int | None:
        try:
            return self.driver.get_state(pid)
        except CudaError:
            return None

    @contextmanager
    def around_dump(self, pid: int) -> Iterator[dict[str, Any]]:
        driver = self.driver
        timings: dict[str, float] = {}
        self.last_timings = timings
        locked = checkpointed = False
        try:
            start = self.clock()
            try:
                driver.lock(pid, self.settings.lock_timeout_ms)
                locked = True
            except CudaError as exc:
                # A timed-out lock should leave the process running; make sure of it.
                locked = self._state_or_none(pid) == ProcessState.LOCKED
                raise SnapshotFailed(
                    f"could not lock the kernel's CUDA state within "
                    f"{self.settings.lock_timeout_ms} ms: {exc}",
                    cuda_error=exc.code,
                ) from exc
            timings["lock_seconds"] = self.clock() - start
            # Which GPUs: read now, the checkpoint closes the device files that tell.
            uuids = self.system.gpu_uuids(pid)

            rss_before = self.system.rss_bytes(pid)
            start = self.clock()
            try:
                driver.checkpoint(pid)
                checkpointed = True
            except CudaError as exc:
                checkpointed = self._state_or_none(pid) == ProcessState.CHECKPOINTED
                raise SnapshotFailed(
                    f"CUDA checkpoint of the kernel failed: {exc}", cuda_error=exc.code
                ) from exc
            timings["checkpoint_seconds"] = self.clock() - start
            rss_after = self.system.rss_bytes(pid)

            left = self.system.nvidia_files(pid)
            if left:
                raise SnapshotFailed(
                    "the kernel still holds NVIDIA device files after the CUDA checkpoint "
                    f"({', '.join(sorted(left))}): an NVML handle or another non-CUDA user "
                    "of the GPU; CRIU cannot dump it",
                    files=sorted(left),
                )
            # The checkpoint copies every GPU allocation (the caching allocator's reserve
            # included) into host memory, so the RSS growth is what the image gains from GPU.
            gpu_bytes = max(0, rss_after - rss_before) if rss_before and rss_after else None
            gpus = self.system.gpus()
            models = [g.model for g in gpus if g.model]
            used = [g.model for u in uuids for g in gpus if g.uuid == u and g.model]
            meta: dict[str, Any] = {
                # The model of the GPU the kernel used (the first one's, on a mixed machine).
                "gpu_model": used[0] if used else models[0] if models else None,
                "gpu_models": models,
                "gpu_uuids": uuids,
                "driver_version": self.system.driver_version(),
                "driver_api": self._safe_version(),
                "gpu_memory_bytes": gpu_bytes,
                "host_rss_bytes": rss_after,
                "lock_seconds": round(timings["lock_seconds"], 4),
                "checkpoint_seconds": round(timings["checkpoint_seconds"], 4),
            }
            yield meta
        finally:
            if locked or checkpointed:
                start = self.clock()
                self._back_to_running(pid, locked=locked, checkpointed=checkpointed)
                timings["resume_seconds"] = self.clock() - start

    def _safe_version(self) -> int | None:
        try:
            return self.driver.version()
        except (CudaError, DriverUnavailable):
            return None

    def _back_to_running(self, pid: int, *, locked: bool, checkpointed: bool) -> None:
        """Restore then unlock, each attempted whatever the other did; raise if not running."""
        failures: list[str] = []
        if checkpointed:
            try:
                self.driver.restore(pid)
            except CudaError as exc:
                failures.append(str(exc))
        if locked or checkpointed:
            try:
                self.driver.unlock(pid)
            except CudaError as exc:
                failures.append(str(exc))
        state = self._state_or_none(pid)
        if state == ProcessState.RUNNING and not failures:
            return
        if state != ProcessState.RUNNING:
            failures.append(f"CUDA state is {state_name(state)} afterwards")
        log.error("kernel %d: could not resume CUDA after the dump: %s", pid, "; ".join(failures))
        raise SnapshotFailed(
            "the kernel's CUDA state could not be resumed after the snapshot attempt "
            f"({'; '.join(failures)}); its next CUDA call may hang, restart it",
            cuda_state=state,
            failures=failures,
        )

    def after_restore(self, pid: int, meta: dict[str, Any]) -> None:
        """Put the GPU state back, where :mod:`.placement` says (decided now: the kernel a
        restore replaced has freed its GPU memory by now), then unlock."""
        timings: dict[str, float] = {}
        self.last_timings = timings
        start = self.clock()
        try:
            placement = self.placement(meta)
        except NoRoom as exc:
            # The figures are estimates: let the driver decide, as before placement existed.
            log.warning("kernel %d: %s; restoring its GPU state as recorded", pid, exc)
            placement = Placement((), "its recorded GPU (no GPU seemed to have room)")
        timings["placement_seconds"] = self.clock() - start
        self.last_placement = placement
        start = self.clock()
        try:
            if placement.pairs:
                self.driver.restore(pid, placement.pairs)
            else:
                self.driver.restore(pid)  # NULL args: exactly the call older Jusnap made
            timings["restore_seconds"] = self.clock() - start
            self.driver.unlock(pid)
        except (CudaError, DriverUnavailable) as exc:
            raise RestoreFailed(
                f"criu restored the kernel but its CUDA state did not come back onto"
                f" {placement.where}: {exc}"
            ) from exc
        timings["cuda_restore_seconds"] = self.clock() - start
        state = self._state_or_none(pid)
        if state != ProcessState.RUNNING:
            raise RestoreFailed(
                f"criu restored the kernel but its CUDA state is {state_name(state)}, not running",
                cuda_state=state,
            )
        log.info("kernel %d: CUDA state restored onto %s", pid, placement.where)
