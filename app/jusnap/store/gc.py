"""Garbage collection of chunks no snapshot references (mark and sweep, then compaction).

Runs under the owner's store lock held exclusively: a commit holds it shared from the moment
it looks a chunk up in the index until its manifest is in place, so no chunk a commit decided
to reuse can be swept under it (no grace period needed). A manifest that cannot be read stops
the collection: when in doubt, nothing is deleted.

Packs whose live bytes fall under ``compact_below`` of their size are rewritten with only the
live chunks (frames copied as they are, no recompression); empty and orphaned packs (a
crash between a pack's fsync and its index rows) are removed.

Why the collection after retention and the one asked for differ (issue 15, "gc lag"): a pack
holds the chunks one commit added, and most of a kernel's pages are added by its first
snapshot and shared by the later ones. Deleting snapshots then leaves their pages dead
*inside* packs that are still mostly alive; with a 50 % bar such a pack kept its garbage
until some later deletion pushed it under the bar, and then freed gigabytes at once. There is
no grace period and no cached reference set: mark always reads the manifests on disk. The
automatic collection after retention keeps the bar (it runs after every snapshot that
retention trims, and rewriting a big pack each time would cost far more than it frees); an
explicit collection (``jusnap gc``, ``POST /store/gc``) rewrites every pack that holds garbage
(``FULL``), and both report what they left and why (``garbage_left_bytes`` in packs under the
bar, ``delta_base_bytes`` kept only because live deltas are based on them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from ..fsutil import open_nofollow, write_all
from ..ids import new_snapshot_id
from .cas import ChunkError, ChunkStore
from .local import PARTIAL_PREFIX, LocalStore
from .usage import manifests, references

log = logging.getLogger(__name__)

AUTO = 0.5  # after retention: rewrite a pack once less than half of it is live
FULL = 1.0  # asked for: rewrite every pack holding garbage


@dataclass
class GcResult:
    owner_uid: int
    chunks_removed: int = 0
    packs_removed: int = 0
    packs_compacted: int = 0
    bytes_freed: int = 0  # packs and index together
    index_bytes_freed: int = 0
    garbage_left_bytes: int = 0  # dead bytes left in packs still mostly live (under the bar)
    packs_left: int = 0  # packs holding that garbage
    delta_base_bytes: int = 0  # unreferenced chunks kept because live deltas need them
    store_removed: bool = False  # the owner had nothing left: the chunk store is gone
    seconds: float = 0.0

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 4)
        return d


def collect(store: LocalStore, owner: int, compact_below: float = AUTO) -> GcResult:
    """Sweep the owner's unreferenced chunks, shrink the index, drop an empty store.

    ``compact_below``: a pack whose live bytes are under this fraction of its size is
    rewritten (``AUTO`` after retention, ``FULL`` when asked for: see the module doc).
    """
    t0 = time.monotonic()
    cs = store.chunks(owner)
    res = GcResult(owner)
    with cs.lock(exclusive=True):
        refs = references(store, cs, owner)
        direct = refs.live()
        live = cs.closure(direct)  # with delta bases
        dead: list[bytes] = []
        live_bytes: dict[str, int] = defaultdict(int)
        for h, pack, clen, _ulen in cs.all_rows():
            if h in live:
                live_bytes[pack] += clen
                if h not in direct:
                    res.delta_base_bytes += clen
            else:
                dead.append(h)
        cs.forget(dead)
        res.chunks_removed = len(dead)
        for path in sorted(cs.packs.iterdir()):
            size = path.stat().st_size
            keep = live_bytes.get(path.name, 0)
            if keep == 0:
                path.unlink()
                res.packs_removed += 1
                res.bytes_freed += size
            elif keep < size * compact_below:
                _compact(cs, path.name)
                res.packs_compacted += 1
                res.bytes_freed += size - keep
            elif keep < size:
                res.garbage_left_bytes += size - keep
                res.packs_left += 1
        if not live and not refs.leaves and not _has_snapshots(store, owner):
            before = cs.index_bytes()
            cs.remove()
            res.store_removed = True
            res.index_bytes_freed = before
        else:
            res.index_bytes_freed = cs.compact_index()
        res.bytes_freed += res.index_bytes_freed
    res.seconds = time.monotonic() - t0
    if res.chunks_removed or res.packs_removed or res.store_removed:
        log.info("gc of uid %d: %s", owner, res.public())
    return res


def _has_snapshots(store: LocalStore, owner: int) -> bool:
    """Whether any snapshot may still need the owner's store: a complete one of the owner
    (of any manifest version), or a commit under way (``.partial-*``, owner not yet known),
    which made its directory before it locked the store and would otherwise race every
    collection to re-create it."""
    if any(p.name.startswith(PARTIAL_PREFIX) for p in store.root.iterdir()):
        return True
    return bool(manifests(store, owner))


def _compact(cs: ChunkStore, pack: str) -> None:
    """Copy a pack's live chunks into a new pack, repoint them, drop the old pack."""
    rows = (
        cs._db()
        .execute("SELECT h, off, clen FROM chunks WHERE pack=? ORDER BY off", (pack,))
        .fetchall()
    )
    new_name = f"gc-{new_snapshot_id()}.pack"
    new_path = cs.packs / new_name
    src = open_nofollow(cs.packs / pack)
    dst = open_nofollow(new_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    moved: list[tuple[bytes, str, int]] = []
    try:
        off = 0
        for h, old_off, clen in rows:
            data = os.pread(src, clen, old_off)
            write_all(dst, data)
            moved.append((h, new_name, off))
            off += clen
        os.fsync(dst)
    except BaseException:
        os.close(dst)
        with contextlib.suppress(FileNotFoundError):
            new_path.unlink()
        raise
    finally:
        os.close(src)
    os.close(dst)
    cs.move(moved)
    (cs.packs / pack).unlink()


def scrub(store: LocalStore, owner: int) -> dict[str, Any]:
    """Read back and verify every chunk of the owner; forget the damaged ones.

    Commits reuse a chunk as soon as its hash is in the index, so a chunk damaged on disk
    would otherwise be referenced by every later snapshot holding the same page. Forgotten,
    it is written again by the next commit that has the page, which also makes whole again
    the snapshots that referenced it; until then their restores fail their checksum (before
    the kernel is stopped).
    """
    t0 = time.monotonic()
    cs = store.chunks(owner)
    damaged: list[bytes] = []
    hit: list[str] | None = []
    with cs.lock(exclusive=True):
        rows = [h for h, _pack, _clen, _ulen in cs.all_rows()]
        for i in range(0, len(rows), 4096):
            part = rows[i : i + 4096]
            try:
                cs.read(part)
            except ChunkError:
                for h in part:
                    try:
                        cs.read([h])
                    except ChunkError:
                        damaged.append(h)
        bad = set(damaged)
        if bad:
            try:
                refs = references(store, cs, owner)
                hit = sorted(
                    sid for sid in refs.leaves if refs.pages(sid) & bad or refs.lists & bad
                )
            except ChunkError:
                hit = None  # a damaged hash block: which snapshots need it is unknowable
        cs.forget(damaged)
    if damaged:
        log.error("uid %d: %d damaged chunk(s); snapshots affected: %s", owner, len(bad), hit)
    return {
        "owner_uid": owner,
        "chunks_checked": len(rows),
        "chunks_damaged": len(bad),
        "snapshots_damaged": hit,
        "seconds": round(time.monotonic() - t0, 4),
    }
