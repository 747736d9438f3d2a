"""The CUDA driver's checkpoint API (``cuCheckpointProcess*``), called through ctypes.

The driver (r570+, CUDA 12.8 driver API) can checkpoint a live process from the outside: lock
it (no new CUDA calls get through), copy every GPU allocation into host memory and close its
device files, and later put it all back. This module is only the binding: the calls, their
argument layout and their errors. When to call them is the hook's business (``hook.py``), and
the :class:`Driver` protocol lets the hook's sequencing be tested against a fake driver.
"""

from __future__ import annotations

import ctypes
from enum import IntEnum
from typing import Any, Protocol

__all__ = [
    "CUDA_ERROR_NOT_INITIALIZED",
    "CUDA_SUCCESS",
    "MIN_DRIVER_API_VERSION",
    "CUcheckpointLockArgs",
    "CudaDriver",
    "CudaError",
    "Driver",
    "DriverUnavailable",
    "ProcessState",
    "format_driver_api",
    "state_name",
]

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
