"""Which virtual address each page of a dump's ``pages-*.img`` belongs to (CRIU's pagemap).

Used only to pick delta bases: the page at the same address of the same process in the
previous snapshot is the likeliest near-copy of a new page. The images come from the kernel
user's scratch directory, so they are parsed defensively; anything unexpected yields no layout
(pages are then stored without deltas, never wrongly: every chunk is verified by its hash).
"""

from __future__ import annotations

import contextlib
import os
import re
import struct

from ..criu import _fields

PE_PRESENT = 4
_NAME = re.compile(r"^pagemap-(\d+)\.img$")
MAX_IMAGE = 64 * 1024 * 1024

Key = tuple[int, int]  # (pid, virtual address)


def _entries(data: bytes) -> list[dict[int, int | bytes]]:
    out = []
    i = 8  # the image's two magic numbers
    while i + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, i)
        if i + 4 + size > len(data):
            raise ValueError("truncated pagemap")
        out.append(_fields(data[i + 4 : i + 4 + size]))
        i += 4 + size
    return out


def layout(dirfd: int, names: list[str], limit: int = 1 << 62) -> dict[str, list[Key]]:
    """{``pages-N.img``: [(pid, vaddr) of each of its pages, in file order]}; {} if unsure
    or if there are more than ``limit`` pages (the caller would not keep them anyway)."""
    out: dict[str, list[Key]] = {}
    total = 0
    try:
        for name in names:
            m = _NAME.match(name)
            if not m:
                continue
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
            try:
                data = os.read(fd, MAX_IMAGE)
            finally:
                os.close(fd)
            entries = _entries(data)
            if not entries or not isinstance(entries[0].get(1), int):
                return {}
            pid = int(m.group(1))
            keys = out.setdefault(f"pages-{entries[0][1]}.img", [])
            for e in entries[1:]:
                vaddr, flags = e.get(1), e.get(4, PE_PRESENT)
                n = e.get(5) or e.get(2) or 0  # nr_pages: field 5 in CRIU 4, 2 before
                if not (isinstance(vaddr, int) and isinstance(n, int) and isinstance(flags, int)):
                    return {}
                if flags & PE_PRESENT:
                    total += n
                    if total > limit:
                        return {}
                    keys.extend((pid, vaddr + j * 4096) for j in range(n))
    except (OSError, ValueError, IndexError, struct.error):
        return {}
    return out


def root_pid(names: list[str]) -> int | None:
    """The dumped tree's root (lowest pid with a pagemap): the same kernel keeps it."""
    pids = []
    for name in names:
        m = _NAME.match(name)
        if m:
            with contextlib.suppress(ValueError):
                pids.append(int(m.group(1)))
    return min(pids) if pids else None
