"""Keep the daemon's memory flat: glibc's allocator otherwise keeps what one big operation needed.

A snapshot's commit and a restore's staging handle image files of hundreds of megabytes in a
worker with many threads. By default glibc raises its mmap threshold after each large free
(up to 32 MiB), so later large buffers come from per-thread heaps that are never given back:
the soak test saw the worker grow by 150 MB per round with nothing left to hold. A fixed
threshold keeps large buffers in their own mappings (returned to the kernel on free), two
arenas bound the per-thread heaps, and a trim after each operation returns what is free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 256 * 1024
ARENAS = 2

_libc: ctypes.CDLL | None = None


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            lib.mallopt  # noqa: B018 - glibc only (musl has no mallopt)
            lib.malloc_trim  # noqa: B018
        except (OSError, AttributeError):
            return None
        _libc = lib
    return _libc


def tame_allocator() -> bool:
    """Set the allocator's limits for this process (before its threads start)."""
    lib = _glibc()
    if lib is None:
        log.info("not glibc: the allocator's limits are left as they are")
        return False
    return bool(lib.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        lib.mallopt(_M_ARENA_MAX, ARENAS)
    )


def give_back() -> None:
    """Return free heap memory to the kernel (after a large operation)."""
    lib = _glibc()
    if lib is not None:
        lib.malloc_trim(0)
