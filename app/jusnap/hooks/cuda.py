"""CUDA kernels: move GPU state into host memory so CRIU can dump it, and back afterwards.

CRIU cannot dump a process that maps ``/dev/nvidia*`` (``Can't handle non-regular mapping``).
The CUDA driver (r570+, CUDA 12.8 driver API) can *checkpoint* a live process from the outside:
lock it (no new CUDA calls get through), copy every GPU allocation into host memory and close
its device files. CRIU then sees an ordinary process. After the dump the same driver puts the
memory back and unlocks, and after ``criu restore`` it does so in the restored process.

Everything here runs in the daemon, never in the kernel: the kernel may be busy, hung in a
cell, or owned by another user, and the driver's checkpoint API is designed for an outside
controller. The driver binding and the ``/proc`` root are injectable so the sequencing is unit
tested without a GPU.
"""

from __future__ import annotations

import ctypes
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from enum import IntEnum
from pathlib import Path
from typing import Any, Protocol

from jusnap.errors import ConfigError, Refused, RestoreFailed, SnapshotFailed
from jusnap.hooks import AutoPolicy, CheckpointHook

log = logging.getLogger(__name__)

#: ``cuDriverGetVersion`` value of the first driver API with ``cuCheckpointProcess*``
#: (CUDA 12.8, display driver r570). r550's ``cuda-checkpoint`` tool used private entry points.
MIN_DRIVER_API_VERSION = 12080

CUDA_SUCCESS = 0
CUDA_ERROR_NOT_INITIALIZED = 3


class ProcessState(IntEnum):
    """``CUprocessState`` as the driver reports it."""

    RUNNING = 0
    LOCKED = 1
    CHECKPOINTED = 2
    FAILED = 3


def state_name(state: int | None) -> str:
    """A readable name even for states newer drivers may add."""
    if state is None:
        return "unknown"
    try:
        return ProcessState(state).name.lower()
    except ValueError:
        return f"state {state}"


class CudaError(RuntimeError):
    """A driver call failed; carries the ``CUresult`` so callers can tell causes apart."""

    def __init__(self, call: str, code: int, text: str) -> None:
        super().__init__(f"{call} failed: {text} (CUresult {code})")
        self.call = call
        self.code = code
        self.text = text


class DriverUnavailable(RuntimeError):
    """``libcuda.so.1`` cannot be loaded, or lacks the checkpoint entry points."""


class Driver(Protocol):
    """What the hook needs from the CUDA driver; the real one is :class:`CudaDriver`."""

    def version(self) -> int: ...
    def has_checkpoint_api(self) -> bool: ...
    def get_state(self, pid: int) -> int: ...
    def lock(self, pid: int, timeout_ms: int) -> None: ...
    def checkpoint(self, pid: int) -> None: ...
    def restore(self, pid: int) -> None: ...
    def unlock(self, pid: int) -> None: ...


class CUcheckpointLockArgs(ctypes.Structure):
    """Layout from ``cuda.h`` (CUDA 12.8+): 64 bytes, reserved fields must be zero."""

    _fields_ = (
        ("timeoutMs", ctypes.c_uint),
        ("reserved0", ctypes.c_uint),
        ("reserved1", ctypes.c_uint64 * 7),
    )


_CHECKPOINT_SYMBOLS = (
    "cuCheckpointProcessGetState",
    "cuCheckpointProcessLock",
    "cuCheckpointProcessCheckpoint",
    "cuCheckpointProcessRestore",
    "cuCheckpointProcessUnlock",
)


class CudaDriver:
    """ctypes binding over ``libcuda.so.1``, loaded on first use.

    Loading lazily keeps the daemon free of the NVIDIA library on machines without a GPU. The
    checkpoint calls take a *pid* and act on that process; ``cuInit`` is only called if the
    driver insists (``CUDA_ERROR_NOT_INITIALIZED``), so the daemon normally opens no device.
    """

    def __init__(self, library: str = "libcuda.so.1") -> None:
        self.library = library
        self._lib: ctypes.CDLL | None = None
        self._initialized = False

    def _load(self) -> ctypes.CDLL:
        if self._lib is None:
            try:
                lib = ctypes.CDLL(self.library)
            except OSError as exc:
                raise DriverUnavailable(f"cannot load {self.library}: {exc}") from exc
            lib.cuDriverGetVersion.argtypes = [ctypes.POINTER(ctypes.c_int)]
            lib.cuDriverGetVersion.restype = ctypes.c_int
            lib.cuGetErrorString.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
            lib.cuGetErrorString.restype = ctypes.c_int
            lib.cuInit.argtypes = [ctypes.c_uint]
            lib.cuInit.restype = ctypes.c_int
            if all(hasattr(lib, name) for name in _CHECKPOINT_SYMBOLS):
                lib.cuCheckpointProcessGetState.argtypes = [
                    ctypes.c_int,
                    ctypes.POINTER(ctypes.c_int),
                ]
                lib.cuCheckpointProcessLock.argtypes = [
                    ctypes.c_int,
                    ctypes.POINTER(CUcheckpointLockArgs),
                ]
                # Checkpoint/Restore/Unlock take optional arg structs; we always pass NULL.
                for name in _CHECKPOINT_SYMBOLS[2:]:
                    getattr(lib, name).argtypes = [ctypes.c_int, ctypes.c_void_p]
                for name in _CHECKPOINT_SYMBOLS:
                    getattr(lib, name).restype = ctypes.c_int
            self._lib = lib
        return self._lib

    def error_string(self, code: int) -> str:
        text = ctypes.c_char_p()
        if self._load().cuGetErrorString(code, ctypes.byref(text)) == CUDA_SUCCESS and text.value:
            return text.value.decode(errors="replace")
        return "unknown CUDA error"

    def _call(self, name: str, *args: Any) -> None:
        lib = self._load()
        if not hasattr(lib, name):
            raise DriverUnavailable(f"{self.library} has no {name} (driver older than r570)")
        fn = getattr(lib, name)
        code = fn(*args)
        if code == CUDA_ERROR_NOT_INITIALIZED and not self._initialized:
            self._initialized = True
            init = lib.cuInit(0)
            if init != CUDA_SUCCESS:
                raise CudaError("cuInit", init, self.error_string(init))
            code = fn(*args)
        if code != CUDA_SUCCESS:
            raise CudaError(name, code, self.error_string(code))

    def version(self) -> int:
        value = ctypes.c_int()
        code = self._load().cuDriverGetVersion(ctypes.byref(value))
        if code != CUDA_SUCCESS:
            raise CudaError("cuDriverGetVersion", code, self.error_string(code))
        return value.value

    def has_checkpoint_api(self) -> bool:
        lib = self._load()
        return all(hasattr(lib, name) for name in _CHECKPOINT_SYMBOLS)

    def get_state(self, pid: int) -> int:
        state = ctypes.c_int(-1)
        self._call("cuCheckpointProcessGetState", pid, ctypes.byref(state))
        return state.value

    def lock(self, pid: int, timeout_ms: int) -> None:
        args = CUcheckpointLockArgs(timeoutMs=timeout_ms)
        self._call("cuCheckpointProcessLock", pid, ctypes.byref(args))

    def checkpoint(self, pid: int) -> None:
        self._call("cuCheckpointProcessCheckpoint", pid, None)

    def restore(self, pid: int) -> None:
        self._call("cuCheckpointProcessRestore", pid, None)

    def unlock(self, pid: int) -> None:
        self._call("cuCheckpointProcessUnlock", pid, None)


def format_driver_api(version: int) -> str:
    """12080 -> '12.8': how NVIDIA names driver API levels."""
    return f"{version // 1000}.{(version % 1000) // 10}"


@dataclass
class CudaSettings:
    """The ``gpu:`` section of the config file.

    GPU snapshots are heavier than CPU ones (every byte of GPU memory goes through host memory
    into the image), so automatic snapshots of GPU kernels get their own, longer cooldown.
    """

    lock_timeout_ms: int = 10_000
    free_torch_cache: bool = False
    auto_snapshot: bool = True
    auto_cooldown_seconds: float = 60.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> CudaSettings:
        """Build from the raw ``gpu:`` mapping of conf.yml, rejecting typos and bad values."""
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError("jusnap.gpu: expected a mapping of settings")
        data = dict(data or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"jusnap.gpu: unknown setting(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(names))}"
            )
        values: dict[str, Any] = {}
        for key, raw in data.items():
            values[key] = _coerce_setting(key, type(getattr(cls, key)), raw)
        if values.get("lock_timeout_ms", 1) < 0:
            raise ConfigError("jusnap.gpu.lock_timeout_ms: must not be negative (0 waits forever)")
        if values.get("auto_cooldown_seconds", 0) < 0:
            raise ConfigError("jusnap.gpu.auto_cooldown_seconds: must not be negative")
        return cls(**values)


def _coerce_setting(key: str, typ: type, raw: Any) -> Any:
    """YAML gives typed values, command-line flags give strings: accept both."""
    where = f"jusnap.gpu.{key}"
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {raw!r}")
    if isinstance(raw, bool):
        raise ConfigError(f"{where}: expected a number, got {raw!r}")
    try:
        return typ(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, got {raw!r}") from None


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


_DRIVER_VERSION_RE = re.compile(r"NVRM version:.*?\s(\d+\.\d+(?:\.\d+)?)\s")
_MODEL_RE = re.compile(r"^Model:\s*(.+?)\s*$", re.MULTILINE)


class GpuSystem:
    """What the machine says about its GPUs, read from ``/proc`` and ``/dev`` only.

    Reading files instead of calling NVML keeps these checks cheap, free of extra libraries,
    and testable against a fake tree (``proc_root`` / ``dev_root``).
    """

    def __init__(self, proc_root: Path | str = "/proc", dev_root: Path | str = "/dev") -> None:
        self.proc = Path(proc_root)
        self.dev = Path(dev_root)

    def device_present(self) -> bool:
        return (self.dev / "nvidiactl").exists()

    def gpu_models(self) -> list[str]:
        models = []
        for info in sorted((self.proc / "driver/nvidia/gpus").glob("*/information")):
            match = _MODEL_RE.search(_read_text(info))
            if match:
                models.append(match.group(1))
        return models

    def driver_version(self) -> str | None:
        match = _DRIVER_VERSION_RE.search(_read_text(self.proc / "driver/nvidia/version"))
        return match.group(1) if match else None

    def mig_access_minors(self) -> set[int]:
        """Device minors of ``/dev/nvidia-caps/nvidia-capN`` that grant a MIG instance.

        Every CUDA process opens some ``nvidia-caps`` files (the MIG *config* and *monitor*
        capabilities, seen on a non-MIG H200), so only the minors the driver publishes for GPU
        and compute instances (``gi*/access``, ``gi*/ci*/access``) mean MIG is in use.
        """
        minors = set()
        caps = self.proc / "driver/nvidia/capabilities"
        for access in [*caps.glob("gpu*/mig/gi*/access"), *caps.glob("gpu*/mig/gi*/ci*/access")]:
            match = re.search(r"DeviceFileMinor:\s*(\d+)", _read_text(access))
            if match:
                minors.add(int(match.group(1)))
        return minors

    def mps_server_running(self) -> bool:
        for comm in self.proc.glob("[0-9]*/comm"):
            if _read_text(comm).strip() == "nvidia-cuda-mps-server":
                return True
        return False

    # --- per process ----------------------------------------------------------------------

    def fd_targets(self, pid: int) -> list[str]:
        targets = []
        fd_dir = self.proc / str(pid) / "fd"
        try:
            entries = list(fd_dir.iterdir())
        except OSError:
            return []
        for entry in entries:
            try:
                targets.append(str(entry.readlink()))
            except OSError:
                continue
        return targets

    def mapped_paths(self, pid: int) -> list[str]:
        paths = []
        for line in _read_text(self.proc / str(pid) / "maps").splitlines():
            parts = line.split(None, 5)
            if len(parts) == 6:
                paths.append(parts[5])
        return paths

    def nvidia_files(self, pid: int) -> set[str]:
        """Device files of the NVIDIA driver that ``pid`` holds open or mapped."""
        found = {p for p in self.fd_targets(pid) if p.startswith("/dev/nvidia")}
        found.update(p for p in self.mapped_paths(pid) if p.startswith("/dev/nvidia"))
        return found

    def uses_mig(self, pid: int) -> bool:
        """``pid`` holds the access capability of a MIG GPU or compute instance."""
        minors = self.mig_access_minors()
        if not minors:
            return False
        for path in self.nvidia_files(pid):
            match = re.fullmatch(r"/dev/nvidia-caps/nvidia-cap(\d+)", path)
            if match and int(match.group(1)) in minors:
                return True
        return False

    def uses_mps(self, pid: int) -> bool:
        """``pid`` talks to an MPS server (a unix socket under the MPS pipe directory)."""
        inodes = set()
        for target in self.fd_targets(pid):
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
        if not inodes:
            return False
        for line in _read_text(self.proc / str(pid) / "net/unix").splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 8 and parts[6] in inodes and "nvidia-mps" in parts[7]:
                return True
        return False

    def rss_bytes(self, pid: int) -> int | None:
        for line in _read_text(self.proc / str(pid) / "status").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


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
        settings: CudaSettings | None = None,
        driver: Driver | None = None,
        system: GpuSystem | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or CudaSettings()
        self.driver: Driver = driver if driver is not None else CudaDriver()
        self.system = system or GpuSystem()
        self.clock = clock
        #: Durations of the last around_dump / after_restore, in seconds; for logs and benches.
        self.last_timings: dict[str, float] = {}

    @classmethod
    def from_settings(cls, gpu: CudaSettings | Mapping[str, Any] | None = None) -> CudaHook:
        """The hook as the daemon builds it from the ``gpu:`` section of the config."""
        settings = gpu if isinstance(gpu, CudaSettings) else CudaSettings.from_dict(gpu)
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

    def preflight_restore(self, meta: dict[str, Any]) -> None:
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
            models = self.system.gpu_models()
            meta: dict[str, Any] = {
                "gpu_model": models[0] if models else None,
                "gpu_models": models,
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
        timings: dict[str, float] = {}
        self.last_timings = timings
        start = self.clock()
        try:
            self.driver.restore(pid)
            timings["restore_seconds"] = self.clock() - start
            self.driver.unlock(pid)
        except (CudaError, DriverUnavailable) as exc:
            raise RestoreFailed(
                f"criu restored the kernel but its CUDA state did not come back: {exc}"
            ) from exc
        timings["cuda_restore_seconds"] = self.clock() - start
        state = self._state_or_none(pid)
        if state != ProcessState.RUNNING:
            raise RestoreFailed(
                f"criu restored the kernel but its CUDA state is {state_name(state)}, not running",
                cuda_state=state,
            )
