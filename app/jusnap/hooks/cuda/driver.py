"""The CUDA driver's checkpoint API (``cuCheckpointProcess*``), called through ctypes.

The driver (r570+, CUDA 12.8 driver API) can checkpoint a live process from the outside: lock
it (no new CUDA calls get through), copy every GPU allocation into host memory and close its
device files, and later put it all back. This module is only the binding: the calls, their
argument layout and their errors. When to call them is the hook's business (``hook.py``), and
the :class:`Driver` protocol lets the hook's sequencing be tested against a fake driver.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from enum import IntEnum
from typing import Any, Protocol

__all__ = [
    "CUDA_ERROR_NOT_INITIALIZED",
    "CUDA_SUCCESS",
    "GPU_PAIRS_MIN_DRIVER_API",
    "MIN_DRIVER_API_VERSION",
    "CUcheckpointGpuPair",
    "CUcheckpointLockArgs",
    "CUcheckpointRestoreArgs",
    "CudaDriver",
    "CudaError",
    "Driver",
    "DriverUnavailable",
    "ProcessState",
    "format_driver_api",
    "restore_args",
    "state_name",
    "uuid_bytes",
]

#: ``cuDriverGetVersion`` value of the first driver API with ``cuCheckpointProcess*``
#: (CUDA 12.8, display driver r570). r550's ``cuda-checkpoint`` tool used private entry points.
MIN_DRIVER_API_VERSION = 12080

#: First driver API whose ``CUcheckpointRestoreArgs`` has ``gpuPairs`` (restore onto other GPUs).
#: CUDA 12.8 and 12.9 declare the struct as ``reserved[8]`` only; 13.1 is the first release in
#: which the field could be confirmed (13.0 was not, so it is not trusted with pairs).
GPU_PAIRS_MIN_DRIVER_API = 13010

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
    def restore(self, pid: int, gpu_pairs: Sequence[tuple[str, str]] = ()) -> None: ...
    def unlock(self, pid: int) -> None: ...


class CUcheckpointLockArgs(ctypes.Structure):
    """Layout from ``cuda.h`` (CUDA 12.8+): 64 bytes, reserved fields must be zero."""

    _fields_ = (
        ("timeoutMs", ctypes.c_uint),
        ("reserved0", ctypes.c_uint),
        ("reserved1", ctypes.c_uint64 * 7),
    )


class CUuuid(ctypes.Structure):
    """``CUuuid``: the GPU's 16 UUID bytes, in the order ``GPU-xxxxxxxx-...`` prints them."""

    _fields_ = (("bytes", ctypes.c_ubyte * 16),)


class CUcheckpointGpuPair(ctypes.Structure):
    """``CUcheckpointGpuPair`` (CUDA 13.1+): checkpointed GPU -> GPU to restore onto."""

    _fields_ = (("oldUuid", CUuuid), ("newUuid", CUuuid))


class CUcheckpointRestoreArgs(ctypes.Structure):
    """``CUcheckpointRestoreArgs``: 64 bytes; ``gpuPairs`` at 0, ``gpuPairsCount`` at 8, the
    rest reserved and zero (later headers name part of it, e.g. ``customStorageInfo_out``,
    whose NULL means "restore from host memory", what Jusnap wants)."""

    _fields_ = (
        ("gpuPairs", ctypes.POINTER(CUcheckpointGpuPair)),
        ("gpuPairsCount", ctypes.c_uint),
        ("reserved", ctypes.c_char * (64 - 8 - 4)),
    )


def uuid_bytes(uuid: str) -> bytes:
    """``GPU-5f2c7b4e-1a2b-3c4d-5e6f-0123456789ab`` -> its 16 raw bytes (a ``CUuuid``).

    Raises ValueError for anything else (MIG instances' ``MIG-`` UUIDs included: MIG is
    refused before a snapshot, so one here means corrupt metadata).
    """
    if not uuid.startswith("GPU-"):
        raise ValueError(f"not a GPU UUID: {uuid!r}")
    digits = uuid[4:]
    parts = digits.split("-")
    if [len(p) for p in parts] != [8, 4, 4, 4, 12]:
        raise ValueError(f"not a GPU UUID: {uuid!r}")
    try:
        return bytes.fromhex("".join(parts))
    except ValueError:
        raise ValueError(f"not a GPU UUID: {uuid!r}") from None


def restore_args(
    gpu_pairs: Sequence[tuple[str, str]],
) -> tuple[CUcheckpointRestoreArgs, ctypes.Array[CUcheckpointGpuPair]]:
    """The restore arguments for ``gpu_pairs`` (old UUID, new UUID), and the pair array they
    point to (the caller keeps it alive for the call)."""
    pairs = (CUcheckpointGpuPair * len(gpu_pairs))()
    for slot, (old, new) in zip(pairs, gpu_pairs, strict=True):
        slot.oldUuid.bytes[:] = list(uuid_bytes(old))
        slot.newUuid.bytes[:] = list(uuid_bytes(new))
    args = CUcheckpointRestoreArgs()  # zeroed, reserved bytes included
    args.gpuPairs = ctypes.cast(pairs, ctypes.POINTER(CUcheckpointGpuPair))
    args.gpuPairsCount = len(gpu_pairs)
    return args, pairs


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
                # Checkpoint/Restore/Unlock take optional arg structs: NULL, or (restore
                # onto other GPUs) a CUcheckpointRestoreArgs passed by address.
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

    def restore(self, pid: int, gpu_pairs: Sequence[tuple[str, str]] = ()) -> None:
        """Put ``pid``'s GPU state back: where it was (NULL args, as every driver takes), or
        per ``gpu_pairs`` (every checkpointed GPU -> the GPU to restore it onto)."""
        if not gpu_pairs:
            self._call("cuCheckpointProcessRestore", pid, None)
            return
        args, pairs = restore_args(gpu_pairs)
        self._call("cuCheckpointProcessRestore", pid, ctypes.addressof(args))
        del pairs  # kept alive until the call returned

    def unlock(self, pid: int) -> None:
        self._call("cuCheckpointProcessUnlock", pid, None)


def format_driver_api(version: int) -> str:
    """12080 -> '12.8': how NVIDIA names driver API levels."""
    return f"{version // 1000}.{(version % 1000) // 10}"
