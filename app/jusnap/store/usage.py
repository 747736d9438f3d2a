"""What a user's snapshots take: logical size, bytes on disk, shared vs unique, ratios.

Reads manifests and the chunk index under the store's shared lock. Hash blocks common to
several snapshots are read once, so the cost follows the amount of *distinct* data, not the
number of snapshots.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cas import ChunkStore, split_digests
from .hints import SUFFIX
from .local import MANIFEST, LocalStore, Manifest, read_manifest


@dataclass
class Refs:
    """Which chunks an owner's snapshots need, walked once per distinct hash block."""

    leaves: dict[str, set[bytes]] = field(default_factory=dict)  # snapshot -> leaf blocks
    leaf_pages: dict[bytes, list[bytes]] = field(default_factory=dict)  # leaf -> page hashes
    lists: set[bytes] = field(default_factory=set)  # every hash block (chunks themselves)
    whole: dict[str, int] = field(default_factory=dict)  # snapshot id -> bytes kept whole
    logical: dict[str, int] = field(default_factory=dict)  # snapshot id -> image bytes

    def pages(self, sid: str) -> set[bytes]:
        out: set[bytes] = set()
        for leaf in self.leaves[sid]:
            out.update(self.leaf_pages[leaf])
        return out

    def live(self) -> set[bytes]:
        out = set(self.lists)
        for pages in self.leaf_pages.values():
            out.update(pages)
        return out


def manifests(store: LocalStore, owner: int | None) -> dict[str, Manifest]:
    """Every complete snapshot of ``owner`` (v1 snapshots have no owner field: all owners')."""
    out = {}
    for sid in store.snapshot_ids():
        path = store.path(sid) / MANIFEST
        try:
            m = read_manifest(path)  # unreadable: raise, never guess what is unreferenced
        except FileNotFoundError:
            # Not complete yet, or deleted since the listing (retention or a user, which do
            # not take the chunk lock): nothing to count or keep. (The soak test's `jusnap du`
            # got a 500 from this race.)
            continue
        if owner is None or m.owner is None or m.owner == owner:
            out[sid] = m
    return out


def references(store: LocalStore, cs: ChunkStore, owner: int) -> Refs:
    refs = Refs()
    mans = {sid: m for sid, m in manifests(store, owner).items() if m.owner == owner}
    kids: dict[bytes, list[bytes]] = {}

    def expand(blocks: list[bytes]) -> list[bytes]:
        todo = [b for b in dict.fromkeys(blocks) if b not in kids]
        for i in range(0, len(todo), 256):
            part = todo[i : i + 256]
            for b, data in zip(part, cs.read(part), strict=True):
                kids[b] = split_digests(data)
        return [c for b in dict.fromkeys(blocks) for c in kids[b]]

    for sid, m in mans.items():
        leaves: set[bytes] = set()
        whole = 0
        for f in m.files:
            if f.cas and f.xxh3:
                refs.lists.add(bytes.fromhex(f.xxh3))  # a small image kept as one chunk
                continue
            if not f.chunked:
                whole += f.size
                continue
            level = [bytes.fromhex(h) for h in f.lists]
            for _ in range(f.depth - 1):
                refs.lists.update(level)
                level = expand(level)
            refs.lists.update(level)
            leaves.update(level)
        expand(list(leaves))
        for leaf in leaves:
            refs.leaf_pages[leaf] = kids[leaf]
        refs.leaves[sid] = leaves
        refs.whole[sid] = whole + _side_files_size(store.path(sid))
        refs.logical[sid] = m.logical_bytes
    return refs


def _side_files_size(path: Path) -> int:
    """Bytes of what a snapshot keeps beside its chunks: its manifest and its location hints
    (``hints.py``, 2 bytes per page it added): on disk and in the quota like the rest."""
    total = 0
    try:
        names = [e for e in os.scandir(path) if e.name == MANIFEST or e.name.endswith(SUFFIX)]
        for entry in names:
            total += entry.stat(follow_symlinks=False).st_size
    except OSError:
        pass  # deleted meanwhile: nothing to count
    return total


def usage(store: LocalStore, owner: int) -> dict[str, Any]:
    """``jusnap du`` for one owner."""
    cs = store.chunks(owner)
    with cs.lock():
        refs = references(store, cs, owner)
        rows = {h: (clen, ulen) for h, _pack, clen, ulen in cs.all_rows()}
        pack_bytes = cs.pack_bytes()
        index_bytes = cs.index_bytes()  # with its WAL: it can outgrow the data (issue 15)
    count: Counter[bytes] = Counter()
    per_pages = {sid: refs.pages(sid) for sid in refs.leaves}
    for pages in per_pages.values():
        count.update(pages)
    unique = shared = live_c = live_u = 0
    per_unique: dict[str, int] = dict.fromkeys(per_pages, 0)
    for sid, pages in per_pages.items():
        for h in pages:
            if count[h] == 1 and h in rows:
                per_unique[sid] += rows[h][0]
    for h, n in count.items():
        clen, ulen = rows.get(h, (0, 0))
        live_c += clen
        live_u += ulen
        if n == 1:
            unique += clen
        else:
            shared += clen
    lists_c = sum(rows.get(h, (0, 0))[0] for h in refs.lists)
    with cs.lock():
        bases = cs.closure(set(count) | refs.lists) - set(count) - refs.lists
    lists_c += sum(rows.get(h, (0, 0))[0] for h in bases)  # pages kept as delta bases
    whole = sum(refs.whole.values())
    logical = sum(refs.logical.values())
    stored = live_c + lists_c + whole
    return {
        "owner_uid": owner,
        "snapshots": len(refs.leaves),
        "logical_bytes": logical,
        "stored_bytes": stored,
        "disk_bytes": pack_bytes + index_bytes + whole,
        "unique_bytes": unique,
        "shared_bytes": shared,
        "whole_file_bytes": whole,
        "index_bytes": index_bytes,
        "hash_block_bytes": lists_c,
        "garbage_bytes": max(0, pack_bytes - live_c - lists_c),
        "pages_stored": len(count),
        "compression_ratio": round(live_u / live_c, 3) if live_c else None,
        "dedup_ratio": round(logical / stored, 3) if stored else None,
        "per_snapshot": [
            {
                "id": sid,
                "logical_bytes": refs.logical[sid],
                "unique_bytes": per_unique[sid] + refs.whole[sid],
            }
            for sid in sorted(refs.leaves)
        ],
    }
