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

from ..criu_images import Malformed, Message, entries

PE_PRESENT = 4
_NAME = re.compile(r"^pagemap-(\d+)\.img$")
MAX_IMAGE = 64 * 1024 * 1024

Key = tuple[int, int]  # (pid, virtual address)


def _entries(data: bytes) -> list[Message]:
    return [Message.parse(e) for e in entries(data, None)]


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
            found = _entries(data)
            pages_id = found[0].scalar(1) if found else None
            if pages_id is None:
                return {}
            pid = int(m.group(1))
            keys = out.setdefault(f"pages-{pages_id}.img", [])
            for e in found[1:]:
                vaddr, flags = e.scalar(1), e.scalar(4)
                flags = PE_PRESENT if flags is None else flags
                n = e.scalar(5) or e.scalar(2) or 0  # nr_pages: field 5 in CRIU 4, 2 before
                if vaddr is None:
                    return {}
                if flags & PE_PRESENT:
                    total += n
                    if total > limit:
                        return {}
                    keys.extend((pid, vaddr + j * 4096) for j in range(n))
    except (OSError, ValueError, Malformed):
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
