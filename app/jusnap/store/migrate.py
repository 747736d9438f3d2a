"""Bring snapshots written by the previous layout (manifest version 1, whole images) over.

At start-up every version-1 snapshot has its page images moved into its owner's chunk store
(verified against the old whole-file hash on the way) and gets a version-2 manifest; then the
old page files are removed. A damaged version-1 snapshot is left as it is (its restore fails
its checksum, as it did before) and logged. A store written by a *newer* version stops the
daemon with one line (``ConfigError`` from ``read_manifest``).

Crash safety: the new manifest replaces the old one atomically, and page files are removed
only afterwards; files a manifest does not list are removed on the next start.
"""

from __future__ import annotations

import logging
from pathlib import Path

import xxhash

from .cas import PAGE, hash_tree
from .local import (
    MANIFEST,
    VERSION,
    LocalStore,
    Manifest,
    StoredFile,
    is_page_image,
    read_manifest,
    write_manifest,
)

log = logging.getLogger(__name__)


def migrate(store: LocalStore, owners: dict[str, int]) -> int:
    """Convert every version-1 snapshot in ``owners`` (id -> owner uid); return how many."""
    done = 0
    for sid, owner in sorted(owners.items()):
        d = store.path(sid)
        if not (d / MANIFEST).exists():
            continue
        m = read_manifest(d / MANIFEST)
        if m.version == VERSION:
            _drop_unlisted(d, m)
            continue
        if _convert(store, sid, d, m, owner):
            done += 1
    if done:
        log.warning("migrated %d snapshot(s) to the content-addressed store", done)
    return done


def _convert(store: LocalStore, sid: str, d: Path, m: Manifest, owner: int) -> bool:
    cs = store.chunks(owner)
    writer = cs.writer(f"migrate-{sid}")
    files: list[StoredFile] = []
    try:
        with cs.lock():
            for f in m.files:
                if not is_page_image(f.name):
                    files.append(f)
                    continue
                data = (d / f.name).read_bytes()
                if len(data) != f.size or xxhash.xxh3_128_hexdigest(data) != f.xxh3:
                    log.error("snapshot %s: %s fails its checksum; left unmigrated", sid, f.name)
                    writer.abort()
                    return False
                view = memoryview(data)
                digests = writer.put([view[i : i + PAGE] for i in range(0, len(data), PAGE)])
                roots, depth = hash_tree(writer.put, digests)
                files.append(
                    StoredFile(f.name, f.size, None, f.mode, [h.hex() for h in roots], depth)
                )
            writer.finish()
            write_manifest(d, Manifest(VERSION, owner, files, writer.new_bytes))
    except OSError as exc:
        writer.abort()
        log.error("snapshot %s: migration failed (%s); left as it was", sid, exc)
        return False
    _drop_unlisted(d, Manifest(VERSION, owner, files))
    return True


def _drop_unlisted(d: Path, m: Manifest) -> None:
    keep = {f.name for f in m.files if not f.chunked and not f.cas} | {MANIFEST}
    for p in d.iterdir():
        if p.name not in keep:
            p.unlink()
