"""Where a snapshot's own new pages lie in its pack: hints that spare a restore the index.

Why: rebuilding a page image looked every page up in the SQLite index (~2.5 µs a page, ~0.6 s
per GiB, more than the rest of the rebuild of incompressible pages together). A commit knows
where it put the pages it added (its own pack, in image order), so it writes them next to the
manifest as runs: (first page, page count, pack, offset) plus each page's stored length.
A restore reads a run with one ``pread`` and writes it with one ``pwrite``.

Why only hints: the file is not part of the snapshot's content and never trusted for it. Every
page is still checked against its hash from the (verified) hash tree; a run whose hint is
stale (its chunks were moved: a pack rewritten by garbage collection, a damaged chunk that
``gc --verify`` forgot and a later commit stored again) or damaged is looked up in the index
instead, and fails the restore only if the index's copy fails its hash too. A snapshot
without the file (written before it existed, or migrated) is rebuilt through the index, and
a jusnap that does not know the file ignores it (the manifest does not list it).

Pages the snapshot shares with earlier ones (deduplicated) have no hint: the commit only asks
the index *whether* it holds them (what makes committing known pages fast), not where.

Format (little-endian): ``MAGIC``, u32 pack count, u32 run count, u32 page count of the image;
per pack a u16 length and its UTF-8 name; the runs (``_RUN``: first page, page count, pack
number, offset of the first page's chunk); one u16 per hinted page, its
stored length (0: a raw 4 KiB page, otherwise a zstd frame of one page).
"""

from __future__ import annotations

import re
import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

MAGIC = b"JSNPLOC1"
SUFFIX = ".locs"
_HEAD = struct.Struct("<III")
_RUN = struct.Struct("<IIIQ")  # first page, page count, pack number, offset in the pack
_PACK_NAME = re.compile(r"^[0-9A-Za-z_-]{1,200}\.pack$")
MAX_BYTES = 256 * 1024 * 1024  # larger files are refused (not read), not trusted


@dataclass(frozen=True)
class Hints:
    """Runs of pages lying back to back in one pack; run ``i`` is ``runs[i]`` = (first page,
    page count, pack name, offset), its pages' stored lengths ``clens[starts[i]:]``."""

    runs: list[tuple[int, int, str, int]]
    clens: array  # u16 per hinted page; 0 = raw page
    starts: list[int]  # index into clens of each run's first page


def _u16(values: Sequence[int] | bytes) -> array:
    a = array("H")
    if isinstance(values, bytes):
        a.frombytes(values)
        if sys.byteorder != "little":
            a.byteswap()
    else:
        a.extend(values)
    return a


def build(
    digests: Sequence[bytes], rows: dict[bytes, tuple], page: int, skip: bytes
) -> bytes | None:
    """Hints for the pages of ``digests`` that ``rows`` (a pack writer's new rows) holds whole
    (not as deltas); ``skip`` (the zero page) is never read at restore. None: nothing to hint."""
    packs: dict[str, int] = {}
    runs: list[list[int]] = []
    clens: list[int] = []
    cur_pack, cur_end, cur_next = None, -1, -1
    for i, d in enumerate(digests):
        row = rows.get(d)
        # row: (pack, off, clen, ulen, raw, base, depth)
        if row is None or row[5] is not None or row[3] != page or d == skip:
            continue
        name, off, clen, raw = row[0], row[1], row[2], row[4]
        if name == cur_pack and off == cur_end and i == cur_next:
            runs[-1][1] += 1
        else:
            runs.append([i, 1, packs.setdefault(name, len(packs)), off])
            cur_pack = name
        clens.append(0 if raw else clen)
        cur_end, cur_next = off + clen, i + 1
    if not runs:
        return None
    out = [MAGIC, _HEAD.pack(len(packs), len(runs), len(digests))]
    for name in packs:  # in order of first use: the numbers given above
        raw_name = name.encode()
        out.append(struct.pack("<H", len(raw_name)) + raw_name)
    out.extend(_RUN.pack(*r) for r in runs)
    c = _u16(clens)
    if sys.byteorder != "little":
        c.byteswap()
    out.append(c.tobytes())
    return b"".join(out)


def parse(data: bytes, pages: int, page: int) -> Hints | None:
    """The hints in ``data`` for an image of ``pages`` pages; None if anything is off."""
    try:
        if not data.startswith(MAGIC):
            return None
        pos = len(MAGIC)
        npacks, nruns, total = _HEAD.unpack_from(data, pos)
        pos += _HEAD.size
        if total != pages:
            return None
        packs = []
        for _ in range(npacks):
            (n,) = struct.unpack_from("<H", data, pos)
            name = data[pos + 2 : pos + 2 + n].decode()
            if not _PACK_NAME.match(name):
                return None
            packs.append(name)
            pos += 2 + n
        end = pos + nruns * _RUN.size
        if end > len(data):
            return None
        runs: list[tuple[int, int, str, int]] = []
        starts: list[int] = []
        hinted, last = 0, 0
        for first, count, pack, off in _RUN.iter_unpack(data[pos:end]):
            if count < 1 or first < last or first + count > pages or pack >= npacks or off >> 62:
                return None
            runs.append((first, count, packs[pack], off))
            starts.append(hinted)
            hinted += count
            last = first + count
        if len(data) != end + 2 * hinted:
            return None
        clens = _u16(data[end:])
        if clens and max(clens) > page:
            return None
        return Hints(runs, clens, starts)
    except (struct.error, ValueError, UnicodeDecodeError):
        return None
