"""Free memory per GPU, from NVML (``libnvidia-ml.so.1``) through ctypes.

Placing a restored or forked kernel's GPU state needs to know how much memory each GPU has
free *now*; ``/proc`` does not say, and the CUDA driver would have to create a context on
every GPU to ask (hundreds of MiB each, from the daemon). NVML answers without a context.
Four calls are all Jusnap needs, so a small binding beats a dependency on ``pynvml``. The
library is loaded, initialised and shut down around each question: the daemon keeps no NVML
handle open between restores (an open handle shows up as an NVIDIA device file, the thing a
dump must not see). The :class:`GpuMemory` protocol lets the policy be tested without a GPU.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterable
from typing import Protocol

__all__ = ["GpuMemory", "Nvml", "NvmlMemory", "NvmlUnavailable"]

log = logging.getLogger(__name__)

NVML_SUCCESS = 0


class NvmlUnavailable(RuntimeError):
    """``libnvidia-ml.so.1`` cannot be loaded or initialised."""


class GpuMemory(Protocol):
    """What placement needs: free bytes of each GPU it asks about (UUIDs)."""

    def free_bytes(self, uuids: Iterable[str]) -> dict[str, int]:
        """Free bytes per UUID; a GPU NVML does not know is left out. May raise
        :class:`NvmlUnavailable`."""
        ...


class NvmlMemory(ctypes.Structure):
    """``nvmlMemory_t`` (v1): three ``unsigned long long``, in bytes."""

    _fields_ = (
        ("total", ctypes.c_ulonglong),
        ("free", ctypes.c_ulonglong),
        ("used", ctypes.c_ulonglong),
    )


class Nvml:
    """ctypes binding of the four NVML calls placement uses, loaded on first use."""

    def __init__(self, library: str = "libnvidia-ml.so.1") -> None:
        self.library = library
        self._lib: ctypes.CDLL | None = None

    def _load(self) -> ctypes.CDLL:
        if self._lib is None:
            try:
                lib = ctypes.CDLL(self.library)
            except OSError as exc:
                raise NvmlUnavailable(f"cannot load {self.library}: {exc}") from exc
            names = (
                "nvmlInit_v2",
                "nvmlShutdown",
                "nvmlDeviceGetHandleByUUID",
                "nvmlDeviceGetMemoryInfo",
            )
            missing = [n for n in names if not hasattr(lib, n)]
            if missing:
                raise NvmlUnavailable(f"{self.library} has no {', '.join(missing)}")
            lib.nvmlInit_v2.argtypes = []
            lib.nvmlShutdown.argtypes = []
            lib.nvmlDeviceGetHandleByUUID.argtypes = [
                ctypes.c_char_p,
                ctypes.POINTER(ctypes.c_void_p),
            ]
            lib.nvmlDeviceGetMemoryInfo.argtypes = [
                ctypes.c_void_p,
                ctypes.POINTER(NvmlMemory),
            ]
            for name in names:
                getattr(lib, name).restype = ctypes.c_int
            self._lib = lib
        return self._lib

    def free_bytes(self, uuids: Iterable[str]) -> dict[str, int]:
        lib = self._load()
        code = lib.nvmlInit_v2()
        if code != NVML_SUCCESS:
            raise NvmlUnavailable(f"nvmlInit_v2 failed (nvmlReturn_t {code})")
        free: dict[str, int] = {}
        try:
            for uuid in uuids:
                handle = ctypes.c_void_p()
                code = lib.nvmlDeviceGetHandleByUUID(uuid.encode(), ctypes.byref(handle))
                if code != NVML_SUCCESS:
                    log.info("NVML does not know GPU %s (nvmlReturn_t %d)", uuid, code)
                    continue
                memory = NvmlMemory()
                code = lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory))
                if code != NVML_SUCCESS:
                    log.info("NVML gave no memory figure for %s (nvmlReturn_t %d)", uuid, code)
                    continue
                free[uuid] = int(memory.free)
        finally:
            lib.nvmlShutdown()
        return free
