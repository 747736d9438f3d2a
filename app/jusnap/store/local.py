"""Snapshot images on local disk, owned and readable by the daemon alone.

CRIU runs as the kernel's uid, so it dumps into (and restores from) a scratch directory that
uid owns. The store never trusts that directory: files are opened without following links,
must be regular, and are *copied* into root-owned files (a rename would keep the user's inode,
which an open descriptor could still change).

Layout (manifest version 2)::

    snapshots/<id>/manifest.json     what the snapshot is made of
    snapshots/<id>/<small image>     CRIU's small images and the history file, whole
    snapshots/<id>/pages-N.img.locs  where the pages the snapshot added lie (``hints.py``)
    chunks/<owner uid>/              the owner's content-addressed pages (``cas.py``)

Page images (``pages-*.img``, nearly all of a snapshot's bytes) are split into 4 KiB pages
that are stored once per owner, zstd-compressed, and listed in the manifest through blocks of
page hashes. The small images stay whole: they are a few hundred KiB, change every time, and
tests and people can read them as CRIU wrote them. Every byte is verified on the way out (page
hashes, small files' xxh3), so a damaged snapshot fails its restore before the kernel is
stopped, instead of restoring garbage.

Crash safety: a snapshot is assembled under ``.partial-<id>`` (pages first go to the owner's
chunk store, fsynced), the manifest is fsynced, the directory renamed to its id; only then
does the engine record it. Start-up removes partial directories and directories no record
points to; chunks nobody references are left to garbage collection.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import queue
import shutil
import sqlite3
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash
import zstandard

from ..criu_images import ImageCheck, needs_bytes
from ..errors import ConfigError, ImageRefused, RestoreFailed, SnapshotFailed, StoreFull
from ..fsutil import fsync_dir, open_nofollow, pwritev_all, write_all, write_json
from ..ids import SNAPSHOT_ID_RE
from ..untrusted import open_untrusted, open_untrusted_path
from . import hints, pagemap
from .cas import (
    PAGE,
    ZERO_DIGEST,
    ChunkError,
    ChunkStore,
    hash_tree,
    split_digests,
)

log = logging.getLogger(__name__)
_xxh3 = xxhash.xxh3_128_digest  # ``cas.digest`` without a Python call per page

MANIFEST = "manifest.json"
PARTIAL_PREFIX = ".partial-"
BUF = 8 * 1024 * 1024
VERSION = 2
READ_PIECE = 64 * 1024 * 1024  # bytes of a page image hashed and compressed at a time
STAGE_PIECE = 4096  # pages reassembled per task when staging out
# Page hashes by address of each kernel's last snapshot, kept in memory as delta bases for its
# next one; kernels with more pages than this go without (about 40 MB of memory at the limit).
PARENT_LIMIT = 300_000
# Small images other than the per-thread core images (which change every time) go to the chunk
# store whole: most are identical from one snapshot to the next, and as files each would cost
# a filesystem block (on a Python kernel ~35 files, ~140 KiB per snapshot).
SMALL_CAS_MAX = 4 * 1024 * 1024
MAX_CHECKED = 64 * 1024 * 1024  # a core or files image larger than this is not a kernel's


@dataclass(frozen=True)
class StoredFile:
    name: str
    size: int
    xxh3: str | None  # whole-file hash (small files); pages are checked page by page
    mode: int = 0o600  # the source file's permission bits: CRIU checks them at restore
    lists: list[str] = field(default_factory=list)  # roots of a page image's hash tree
    depth: int = 1  # levels of hash blocks under the roots
    cas: bool = False  # a small image kept as one chunk (its xxh3 is the chunk's hash)

    @property
    def chunked(self) -> bool:
        return self.xxh3 is None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "size": self.size, "xxh3": self.xxh3,
                             "mode": self.mode}  # fmt: skip
        if self.chunked:
            d["lists"] = self.lists
            d["depth"] = self.depth
        if self.cas:
            d["cas"] = True
        return d


@dataclass(frozen=True)
class Manifest:
    version: int
    owner: int | None
    files: list[StoredFile]
    new_bytes: int = 0  # compressed chunk bytes the commit added to the owner's store
    new_page_bytes: int = 0  # uncompressed size of the pages it added (what changed)

    @property
    def logical_bytes(self) -> int:
        return sum(f.size for f in self.files)


def is_page_image(name: str) -> bool:
    return name.startswith("pages-") and name.endswith(".img")


def _copy_fd(src: int, dst: int) -> tuple[int, str]:
    h = xxhash.xxh3_128()
    total = 0
    buf = bytearray(BUF)
    view = memoryview(buf)
    while True:
        n = os.readv(src, [buf])
        if n == 0:
            break
        chunk = view[:n]
        h.update(chunk)
        write_all(dst, chunk)
        total += n
    return total, h.hexdigest()


def _pieces_into(fd: int, size: int = READ_PIECE) -> Iterator[memoryview]:
    """The file in pieces read into one reused buffer: each piece is valid until the next
    one is read. Fresh memory costs more than reading here (a new 64 MiB object per piece
    is first touched page by page, ~2 GB/s in a VM)."""
    buf = bytearray(size)
    view = memoryview(buf)
    while True:
        n = 0
        while n < size:
            got = os.readv(fd, [view[n:]])
            if not got:
                break
            n += got
        if n:
            yield view[:n]
        if n < size:
            return


def _write_runs(dst: int, first: int, pages: list[int], data: list[Any]) -> None:
    """Write chunk ``data[k]`` at page ``first + pages[k]``: consecutive pages in one
    ``pwritev`` (no joined copy); pages not listed stay holes."""
    k = 0
    while k < len(pages):
        j = k + 1
        while j < len(pages) and pages[j] == pages[j - 1] + 1:
            j += 1
        pwritev_all(dst, data[k:j], (first + pages[k]) * PAGE)
        k = j


def _write_hints(path: Path, digests: list[bytes], rows: dict[bytes, tuple]) -> None:
    """Write the image's location hints (not fsynced: a hint lost or torn in a crash only
    sends the pages it covered through the index at restore)."""
    data = hints.build(digests, rows, PAGE, ZERO_DIGEST)
    if data is None:
        return
    fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def _read_hints(path: Path, pages: int) -> hints.Hints | None:
    try:
        fd = open_nofollow(path)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size > hints.MAX_BYTES:
            return None
        data = b"".join(_read_pieces(fd))
    except OSError:
        return None
    finally:
        os.close(fd)
    return hints.parse(data, pages, PAGE)


def _read_pieces(fd: int, size: int = READ_PIECE) -> Iterator[bytes]:
    while True:
        parts = []
        want = size
        while want:
            data = os.read(fd, want)
            if not data:
                break
            parts.append(data)
            want -= len(data)
        piece = b"".join(parts)
        if not piece:
            return
        yield piece
        if want:
            return


def write_manifest(directory: Path, manifest: Manifest, name: str = MANIFEST) -> None:
    """Write ``name`` in ``directory`` atomically (temp, fsync, rename)."""
    data = {"version": manifest.version, "owner": manifest.owner,
            "new_bytes": manifest.new_bytes,
            "new_page_bytes": manifest.new_page_bytes,
            "files": [f.to_json() for f in manifest.files]}  # fmt: skip
    write_json(directory / name, data)


def read_manifest(path: Path) -> Manifest:
    """Parse a manifest (version 1 or 2); raises ValueError/OSError/KeyError/TypeError."""
    data = json.loads(path.read_text())
    version = int(data["version"])
    if version > VERSION:
        raise ConfigError(
            f"snapshot store {path.parent.parent} was written by a newer jusnap"
            f" (manifest version {version}); refusing to use it"
        )
    files = [
        StoredFile(
            f["name"],
            int(f["size"]),
            f.get("xxh3"),
            int(f.get("mode", 0o600)),
            list(f.get("lists") or []),
            int(f.get("depth", 1)),
            bool(f.get("cas", False)),
        )
        for f in data["files"]
    ]
    return Manifest(
        version,
        data.get("owner"),
        files,
        int(data.get("new_bytes", 0)),
        int(data.get("new_page_bytes", 0)),
    )


def _whole_page(clen: int, raw: int) -> bool:
    """Whether an index row's chunk is a whole page: PAGE bytes raw, or a zstd frame of
    fewer (a frame that does not shrink the page is stored raw, ``RAW_IF_RATIO``)."""
    return clen == PAGE if raw else clen < PAGE


class _Stager:
    """The tasks that rebuild one page image into ``dst``; each returns the bytes it
    accounts for (pages written plus zero pages left as holes)."""

    def __init__(self, cs: ChunkStore, digests: list[bytes], dst: int) -> None:
        self.cs = cs
        self.digests = digests
        self.dst = dst
        self.covered = bytearray(len(digests))  # 1: the page is in a hinted run
        self.buffers: queue.SimpleQueue[bytearray] = queue.SimpleQueue()

    def hinted(self, found: hints.Hints) -> list[Callable[[], int]]:
        tasks: list[Callable[[], int]] = []
        for (first, count, pack, off), start in zip(found.runs, found.starts, strict=True):
            self.covered[first : first + count] = b"\x01" * count
            for s in range(0, count, STAGE_PIECE):
                n = min(STAGE_PIECE, count - s)
                clens = found.clens[start + s : start + s + n]
                tasks.append(functools.partial(self._run, first + s, pack, off, clens))
                off += sum(c or PAGE for c in clens)
        return tasks

    def indexed(self) -> list[Callable[[], int]]:
        """The pages no hint covers, found through the index: runs of pages lying back to
        back in a pack as for hints, deltas and anything unusual chunk by chunk."""
        todo = [i for i in range(len(self.digests)) if not self.covered[i]]
        if not todo:
            return []
        zeros = sum(1 for i in todo if self.digests[i] == ZERO_DIGEST)
        pages = [i for i in todo if self.digests[i] != ZERO_DIGEST]
        rows = self.cs.rows(self.digests[i] for i in pages)
        tasks: list[Callable[[], int]] = [lambda: zeros * PAGE]
        loose: list[int] = []
        first, pack, off, end = -1, "", 0, -1
        clens = array("H")

        def flush() -> None:
            if clens:
                tasks.append(functools.partial(self._run, first, pack, off, clens))

        for i in pages:
            row = rows.get(self.digests[i])
            # A raw page is PAGE bytes, a zstd frame of a page less (``RAW_IF_RATIO``);
            # anything else (a delta, a short last page, no row) goes chunk by chunk.
            if row is None or row[5] is not None or not _whole_page(row[3], row[4]):
                loose.append(i)
                continue
            _, p, o, c, raw = row[:5]
            if i != first + len(clens) or p != pack or o != end or len(clens) >= STAGE_PIECE:
                flush()
                first, pack, off, end, clens = i, p, o, o, array("H")
            clens.append(0 if raw else c)
            end += c
        flush()
        for s in range(0, len(loose), STAGE_PIECE):
            tasks.append(functools.partial(self._indexed, loose[s : s + STAGE_PIECE], None))
        return tasks

    def _indexed(self, pages: list[int], locs: dict[bytes, Any] | None) -> int:
        data = self.cs.read([self.digests[i] for i in pages], locs)
        _write_runs(self.dst, 0, pages, data)
        return sum(len(c) for c in data)

    def _fallback(self, first: int, n: int) -> int:
        """A run whose hint did not hold (its chunks moved, or damage): through the index."""
        pages = [i for i in range(first, first + n) if self.digests[i] != ZERO_DIGEST]
        return (n - len(pages)) * PAGE + self._indexed(pages, None)

    def _run(self, first: int, pack: str, off: int, clens: array) -> int:
        n = len(clens)
        size = sum(c or PAGE for c in clens)
        want = self.digests[first : first + n]
        try:
            buf = self.buffers.get_nowait()
        except queue.Empty:
            buf = bytearray(STAGE_PIECE * PAGE)
        try:
            try:
                fd = open_nofollow(self.cs.packs / pack)
            except OSError:
                return self._fallback(first, n)
            try:
                view = memoryview(buf)[:size]
                got = os.preadv(fd, [view], off)
            finally:
                os.close(fd)
            if got != size:
                return self._fallback(first, n)
            if size == n * PAGE and not any(clens):  # raw pages: write what was read
                if [_xxh3(view[k : k + PAGE]) for k in range(0, size, PAGE)] != want:
                    return self._fallback(first, n)
                pwritev_all(self.dst, [view], first * PAGE)
                return size
            pages: list[bytes | memoryview] = []
            dctx = zstandard.ZstdDecompressor()
            pos = 0
            for c in clens:
                if c:
                    frame = view[pos : pos + c]
                    if zstandard.frame_content_size(frame) != PAGE:
                        return self._fallback(first, n)
                    pages.append(dctx.decompress(frame))
                    pos += c
                else:
                    pages.append(view[pos : pos + PAGE])
                    pos += PAGE
            if [_xxh3(p) for p in pages] != want:
                return self._fallback(first, n)
            pwritev_all(self.dst, pages, first * PAGE)
            return n * PAGE
        except zstandard.ZstdError:
            return self._fallback(first, n)
        finally:
            self.buffers.put(buf)


class LocalStore:
    def __init__(
        self,
        root: Path,
        chunk_root: Path | None = None,
        level: int = 1,
        threads: int = 2,
    ) -> None:
        self.root = root
        self.chunk_root = chunk_root or root.parent / "chunks"
        self.level = level
        self.threads = max(1, threads)
        self._chunks: dict[int, ChunkStore] = {}
        self._parents: dict[tuple[int, int], dict[pagemap.Key, bytes]] = {}

    # ---- layout ----------------------------------------------------------------------
    def ensure(self) -> None:
        for d in (self.root, self.chunk_root):
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, os.geteuid(), os.getegid())
            d.chmod(0o700)

    def chunks(self, owner: int) -> ChunkStore:
        """The owner's chunk store (created on first use)."""
        cs = self._chunks.get(owner)
        if cs is None:
            cs = ChunkStore(self.chunk_root / str(int(owner)), self.level, self.threads)
            self._chunks[owner] = cs
        return cs

    def owners(self) -> list[int]:
        return sorted(int(p.name) for p in self.chunk_root.iterdir() if p.name.isdigit())

    def path(self, snapshot_id: str) -> Path:
        if not SNAPSHOT_ID_RE.match(snapshot_id):
            raise ValueError(snapshot_id)
        return self.root / snapshot_id

    def exists(self, snapshot_id: str) -> bool:
        return (self.path(snapshot_id) / MANIFEST).is_file()

    def snapshot_ids(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if SNAPSHOT_ID_RE.match(p.name))

    def recover(self, known: set[str]) -> list[str]:
        """Remove leftovers of interrupted writes and unrecorded snapshots; return what went."""
        removed = []
        for entry in self.root.iterdir():
            if entry.name.startswith(PARTIAL_PREFIX) or (
                SNAPSHOT_ID_RE.match(entry.name) and entry.name not in known
            ):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return removed

    # ---- writing ---------------------------------------------------------------------
    def commit(
        self,
        snapshot_id: str,
        staging: Path,
        extra: dict[str, Path] | None = None,
        owner: int = 0,
        check: ImageCheck | None = None,
        file_owner: int | None = None,
    ) -> int:
        """Copy a finished dump into the store atomically; return its (logical) size in bytes.

        Runs after CRIU let the kernel go (``--leave-running``): hashing and compressing here
        never lengthens the kernel's freeze. ``check`` sees the images' bytes exactly as they
        are stored and can refuse the snapshot before it is committed; with ``file_owner``
        every file must belong to that uid (CRIU wrote them as the kernel's user).
        """
        final = self.path(snapshot_id)
        partial = self.root / f"{PARTIAL_PREFIX}{snapshot_id}"
        partial.mkdir(mode=0o700)
        cs = self.chunks(owner)
        writer = cs.writer(snapshot_id)
        files: list[StoredFile] = []
        try:
            with cs.lock():
                sfd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                try:
                    names = sorted(os.listdir(sfd))  # noqa: PTH208 - listdir of an fd
                    sources = [(n, sfd, n) for n in names]
                    pages_at = pagemap.layout(sfd, names, PARENT_LIMIT)
                    root = pagemap.root_pid(names)
                    parent = self._parents.get((owner, root or -1), {})
                    addresses: dict[pagemap.Key, bytes] = {}
                    for store_name, path in (extra or {}).items():
                        sources.append((store_name, -1, str(path)))
                    for store_name, dirfd, name in sources:
                        try:
                            src = (
                                open_untrusted(dirfd, name, file_owner)
                                if dirfd >= 0
                                else open_untrusted_path(Path(name), file_owner)
                            )
                        except FileNotFoundError:
                            continue
                        except OSError as exc:
                            if exc.errno == errno.EINVAL:
                                continue  # sockets, fifos: never part of an image
                            raise
                        try:
                            mode = os.fstat(src).st_mode & 0o777
                            if check is not None and dirfd >= 0 and is_page_image(store_name):
                                check.feed(store_name, None)
                            if is_page_image(store_name):
                                where = pages_at.get(store_name) if dirfd >= 0 else None
                                files.append(
                                    self._put_pages(
                                        writer,
                                        store_name,
                                        src,
                                        mode,
                                        where,
                                        parent,
                                        addresses,
                                        partial,
                                    )
                                )
                            else:
                                files.append(
                                    self._put_small(
                                        writer,
                                        partial,
                                        store_name,
                                        src,
                                        mode,
                                        check if dirfd >= 0 else None,
                                    )
                                )
                        finally:
                            os.close(src)
                finally:
                    os.close(sfd)
                if check is not None:
                    check.done()
                writer.finish()
                manifest = Manifest(VERSION, owner, files, writer.new_bytes, writer.new_page_bytes)
                write_manifest(partial, manifest)
                partial.rename(final)
                fsync_dir(self.root)
            if root is not None:
                self._parents.pop((owner, root), None)
                if 0 < len(addresses) <= PARENT_LIMIT:
                    self._parents[(owner, root)] = addresses
        except (OSError, sqlite3.Error) as exc:
            writer.abort()
            shutil.rmtree(partial, ignore_errors=True)
            full = (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or (
                isinstance(exc, sqlite3.Error) and "full" in str(exc)
            )
            if full:
                raise StoreFull("snapshot failed: no space left on the snapshot store") from None
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise SnapshotFailed(f"snapshot failed: cannot store images: {why}") from None
        except BaseException:
            writer.abort()
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return sum(f.size for f in files)

    def _put_small(
        self, writer: Any, partial: Path, name: str, src: int, mode: int,
        check: ImageCheck | None = None,
    ) -> StoredFile:  # fmt: skip
        if check is not None and needs_bytes(name):
            # Read once: the bytes checked are the bytes stored.
            data = b"".join(_read_pieces(src, MAX_CHECKED + 1))[: MAX_CHECKED + 1]
            if len(data) > MAX_CHECKED:
                raise ImageRefused(f"snapshot image refused: {name}: too large")
            check.feed(name, data)
            if name.startswith("core-"):
                return self._put_bytes(partial, name, data, mode)
        else:
            if check is not None:
                check.feed(name, None)
            if name.startswith("core-") or os.fstat(src).st_size > SMALL_CAS_MAX:
                return self._put_whole(partial, name, src, mode)
            data = b"".join(_read_pieces(src))
        (digest,) = writer.put([data])
        return StoredFile(name, len(data), digest.hex(), mode, cas=True)

    def _put_bytes(self, partial: Path, name: str, data: bytes, mode: int) -> StoredFile:
        dst = open_nofollow(partial / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            write_all(dst, data)
            os.fsync(dst)
        finally:
            os.close(dst)
        return StoredFile(name, len(data), xxhash.xxh3_128_hexdigest(data), mode)

    def _put_whole(self, partial: Path, name: str, src: int, mode: int) -> StoredFile:
        dst = open_nofollow(partial / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            size, digest = _copy_fd(src, dst)
            os.fsync(dst)
        finally:
            os.close(dst)
        return StoredFile(name, size, digest, mode)

    def _put_pages(
        self,
        writer: Any,
        name: str,
        src: int,
        mode: int,
        where: list[pagemap.Key] | None = None,
        parent: dict[pagemap.Key, bytes] | None = None,
        addresses: dict[pagemap.Key, bytes] | None = None,
        hint_dir: Path | None = None,
    ) -> StoredFile:
        """Store a page image; ``where`` (page addresses) and ``parent`` find delta bases;
        the locations of the pages it adds go to ``hint_dir`` (``hints.py``)."""
        size = 0
        digests: list[bytes] = []
        added = writer.new_page_bytes
        # Each piece is consumed (hashed, new chunks copied) before the next is read.
        for view in _pieces_into(src, READ_PIECE):
            chunks = [view[i : i + PAGE] for i in range(0, len(view), PAGE)]
            keys = where[len(digests) : len(digests) + len(chunks)] if where else []
            bases = [parent.get(k) for k in keys] if parent and len(keys) == len(chunks) else None
            got = writer.put(chunks, bases)
            if (
                addresses is not None
                and len(keys) == len(chunks)
                and len(addresses) <= PARENT_LIMIT
            ):
                addresses.update(zip(keys, got, strict=True))
            digests += got
            size += len(view)
        if hint_dir is not None and writer.new_page_bytes > added:  # it added pages: hint them
            _write_hints(hint_dir / f"{name}{hints.SUFFIX}", digests, writer.rows)
        roots, depth = hash_tree(writer.put, digests)
        return StoredFile(name, size, None, mode, [d.hex() for d in roots], depth)

    # ---- reading ---------------------------------------------------------------------
    def read_manifest(self, snapshot_id: str) -> Manifest:
        try:
            return read_manifest(self.path(snapshot_id) / MANIFEST)
        except ConfigError:
            raise
        except (OSError, ValueError, KeyError, TypeError):
            raise RestoreFailed(f"snapshot {snapshot_id} is damaged: unreadable manifest") from None

    def manifest(self, snapshot_id: str) -> list[StoredFile]:
        return self.read_manifest(snapshot_id).files

    def has_file(self, snapshot_id: str, name: str) -> bool:
        return any(f.name == name for f in self.manifest(snapshot_id))

    def page_digests(self, cs: ChunkStore, f: StoredFile) -> list[bytes]:
        """A chunked file's page hashes, in order, from its (verified) hash tree."""
        level = [bytes.fromhex(h) for h in f.lists]
        for _ in range(f.depth):
            level = [d for block in cs.read(level) for d in split_digests(block)]
        return level

    def stage_out(
        self,
        snapshot_id: str,
        dest: Path,
        uid: int,
        gid: int,
        only: set[str] | None = None,
        skip: set[str] | None = None,
        rename: dict[str, Path] | None = None,
        mode: int | None = None,
    ) -> None:
        """Write verified files into ``dest`` (owned by ``uid``) or to paths in ``rename``;
        ``mode`` replaces the files' recorded permission bits."""
        m = self.read_manifest(snapshot_id)
        src_dir = self.path(snapshot_id)
        for f in m.files:
            if (only is not None and f.name not in only) or (skip and f.name in skip):
                continue
            target = (rename or {}).get(f.name, dest / f.name)
            tmp = target.with_name(f".{target.name}.jusnap-tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            try:
                dst = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except OSError as exc:
                raise RestoreFailed(
                    f"cannot stage snapshot {snapshot_id}: {exc.strerror or exc}"
                ) from None
            try:
                if f.chunked:
                    if m.owner is None:
                        raise RestoreFailed(f"snapshot {snapshot_id} is damaged: no owner")
                    self._stage_pages(snapshot_id, self.chunks(int(m.owner)), f, dst, src_dir)
                elif f.cas and not (src_dir / f.name).exists():
                    if m.owner is None:
                        raise RestoreFailed(f"snapshot {snapshot_id} is damaged: no owner")
                    self._stage_cas(snapshot_id, self.chunks(int(m.owner)), f, dst)
                else:
                    self._stage_whole(snapshot_id, src_dir, f, dst)
                if os.geteuid() == 0:
                    os.fchown(dst, uid, gid)
                os.fchmod(dst, f.mode if mode is None else mode)
            except OSError as exc:
                os.close(dst)
                tmp.unlink()
                raise RestoreFailed(
                    f"cannot stage snapshot {snapshot_id}: {exc.strerror or exc}"
                ) from None
            except BaseException:
                os.close(dst)
                tmp.unlink()
                raise
            os.close(dst)
            tmp.replace(target)

    def _stage_whole(self, snapshot_id: str, src_dir: Path, f: StoredFile, dst: int) -> None:
        try:
            src = open_nofollow(src_dir / f.name)
        except OSError:
            raise RestoreFailed(f"snapshot {snapshot_id} is damaged: {f.name} is missing") from None
        try:
            size, digest = _copy_fd(src, dst)
        finally:
            os.close(src)
        if size != f.size or digest != f.xxh3:
            raise RestoreFailed(f"snapshot {snapshot_id} is damaged: {f.name} fails its checksum")

    def _stage_cas(self, snapshot_id: str, cs: ChunkStore, f: StoredFile, dst: int) -> None:
        assert f.xxh3 is not None
        try:
            with cs.lock():
                (data,) = cs.read([bytes.fromhex(f.xxh3)])
        except (ChunkError, ValueError) as exc:
            raise RestoreFailed(
                f"snapshot {snapshot_id} is damaged: {f.name} fails its checksum ({exc})"
            ) from None
        if len(data) != f.size:
            raise RestoreFailed(f"snapshot {snapshot_id} is damaged: {f.name} fails its checksum")
        write_all(dst, data)

    def _stage_pages(
        self, snapshot_id: str, cs: ChunkStore, f: StoredFile, dst: int, src_dir: Path
    ) -> None:
        """Reassemble a page image, several pieces at a time (zstd releases the GIL).

        Pages the snapshot added are found through its hints (``hints.py``): one ``pread`` and
        one write per run, no index lookup; the others through the index. Every page is
        checked against its hash either way. Zero pages are known by their hash: neither read
        nor written (the file has holes there, which read as zeros)."""
        try:
            with cs.lock():
                digests = self.page_digests(cs, f)
                os.ftruncate(dst, f.size)
                found = _read_hints(src_dir / f"{f.name}{hints.SUFFIX}", len(digests))
                stager = _Stager(cs, digests, dst)
                tasks = stager.hinted(found) if found else []
                tasks += stager.indexed()
                if self.threads > 1 and len(tasks) > 1:
                    with ThreadPoolExecutor(self.threads) as pool:
                        total = sum(pool.map(lambda task: task(), tasks))
                else:
                    total = sum(task() for task in tasks)
        except ChunkError as exc:
            raise RestoreFailed(
                f"snapshot {snapshot_id} is damaged: {f.name} fails its checksum ({exc})"
            ) from None
        except sqlite3.Error as exc:
            raise RestoreFailed(f"snapshot {snapshot_id}: chunk index unreadable ({exc})") from None
        if total != f.size or os.fstat(dst).st_size != f.size:
            raise RestoreFailed(f"snapshot {snapshot_id} is damaged: {f.name} has the wrong size")

    def size(self, snapshot_id: str) -> int:
        return self.read_manifest(snapshot_id).logical_bytes

    def delete(self, snapshot_id: str) -> None:
        """Forget a snapshot; its chunks stay until garbage collection finds them unreferenced."""
        path = self.path(snapshot_id)
        if path.exists():
            # Rename first so a crash mid-delete leaves a partial dir, cleaned at start-up.
            doomed = self.root / f"{PARTIAL_PREFIX}{snapshot_id}-deleted"
            path.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
