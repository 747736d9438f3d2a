"""Content-addressed chunks of one owner: 4 KiB pages, hashed, stored once, zstd-compressed.

Why 4 KiB: CRIU's ``pages-*.img`` is the concatenation of the dumped pages, so one page more
or less shifts everything after it. Fixed chunks larger than a page then stop lining up after
the first change: on a real 336 MiB kernel a trivial cell made 0.73 % of the bytes new with
4 KiB chunks, 13 % with 16 KiB and 17 % with 256 KiB (``bench/storage/chunk_size.py``).

Why packs: one file per 4 KiB chunk would cost a filesystem block and an inode each, more than
the compressed chunk itself. Each commit appends its new chunks to one pack file of its own;
an SQLite index maps a chunk's xxh3-128 to (pack, offset, length). A pack is fsynced before
its index rows are committed, so a row always points at durable bytes; a crash in between
leaves an orphan pack that garbage collection removes.

Why one store per owner uid: a store shared between users would let one user learn, from how
little a snapshot adds, that another user holds the same bytes.

Concurrency: commits and reads hold a shared ``flock`` on the store's lock file, garbage
collection holds it exclusively, so a chunk that a commit found in the index cannot be swept
before that commit's manifest exists.

Why the index is compacted: SQLite never gives back the pages of deleted rows, and a WAL file
keeps the size of the largest transaction it ever held (a commit of a big kernel, a sweep),
so without help the index of a user who deleted everything stayed as large as it ever was
(71 MB + 70 MB of WAL for 11 MB of data, issue 15). ``journal_size_limit`` trims the WAL after
each checkpoint, ``compact_index`` (run by garbage collection) checkpoints with TRUNCATE and
VACUUMs when enough pages are free, and ``remove`` drops the store of an owner who has nothing
left; the lock protocol below lets a store be removed while other threads hold the object.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sqlite3
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import xxhash
import zstandard

from ..fsutil import fsync_dir, immediate, open_nofollow, write_all

PAGE = 4096
DIGEST = 16  # xxh3-128
SQL_BATCH = 900  # below SQLite's default limit of host parameters
# A chunk whose zstd frame is not smaller than this fraction is stored raw: random floats
# shrink ~1.1x at best, and a raw chunk costs nothing to read back.
RAW_IF_RATIO = 0.95
# A page may be stored as the XOR with an earlier page (its predecessor at the same address):
# a cell typically dirties hundreds of pages by a few bytes each (reference counts, GC
# headers), and such deltas compress ~15x better than the pages (bench/storage/
# delta_potential.py). Chains stay short so that a restore reads at most this many bases.
MAX_DELTA_DEPTH = 6
DELTA_IF_RATIO = 0.5  # use the delta only when it is at most half the page's own frame
# Deltas cost a base read and a second compression per page: a batch first tries a sample
# and skips deltas when few pay off (new data written where old data was, e.g. a rebuilt
# DataFrame, is no near-copy of what was there).
DELTA_SAMPLE = 128
DELTA_SAMPLE_HITS = 0.25
# The WAL is cut back to this after a checkpoint (SQLite otherwise keeps its largest size).
WAL_KEEP = 1024 * 1024
# VACUUM rewrites the whole index: worth it when this much of it is free pages.
VACUUM_MIN_FREE = 256 * 1024
VACUUM_MIN_FRACTION = 0.25
INDEX_FILES = ("index.db", "index.db-wal", "index.db-shm")
LOCK_TRIES = 100  # a store removed this often while being locked is not a race but a fault


def _close_quietly(db: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        db.close()


class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced (``_OPEN``), unlike sqlite3's own."""


# Every open connection to each store's index in this process, so that ``remove`` can close
# them all; a thread's connection still goes away with its thread. ``_GENERATION`` tells a
# thread that its connection was closed.
_OPEN: defaultdict[str, weakref.WeakSet[_Connection]] = defaultdict(weakref.WeakSet)
_GENERATION: defaultdict[str, int] = defaultdict(int)
_OPEN_LOCK = threading.RLock()


def _ident(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _ident_fd(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


class ChunkError(Exception):
    """A chunk is missing or does not match its hash: the snapshot that needs it is damaged."""


class Loc(NamedTuple):
    """Where a chunk lies (a tuple: a restore builds one per page)."""

    pack: str
    offset: int
    clen: int  # bytes in the pack
    raw: bool  # stored uncompressed
    base: bytes | None = None  # stored as XOR with this chunk (a zstd frame of the XOR)
    depth: int = 0  # length of the base chain under it


# An index row: (h, pack, off, clen, raw, base, depth).
Row = tuple[bytes, str, int, int, int, bytes | None, int]


def xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def digest(data: bytes | memoryview) -> bytes:
    return xxhash.xxh3_128_digest(data)


# Kernels hold many all-zero pages (fresh heap, numpy zeros): their content is known from their
# hash alone, so a restore neither reads nor writes them (the rebuilt image has a hole there).
ZERO_PAGE = bytes(PAGE)
ZERO_DIGEST = digest(ZERO_PAGE)


def split_lists(
    digests: Sequence[bytes], mask: int = 31, min_len: int = 4, max_len: int = 256
) -> list[bytes]:
    """Cut a hash sequence into blocks at content-defined points (``hash[0] & mask == 0``).

    Blocks are stored as chunks themselves, in a tree (``hash_tree``), so a manifest holds a
    few dozen hashes whatever the image size, and blocks that did not change are shared
    between snapshots even when pages were inserted before them (fixed-size blocks would
    shift). Small blocks (32 hashes on average, 512 bytes) keep what a changed page costs in
    hash blocks small; ``min_len`` keeps runs of identical pages (zero pages) from making one
    block per page.
    """
    blocks: list[bytes] = []
    start = 0
    for i, d in enumerate(digests):
        n = i + 1 - start
        if (n >= min_len and not d[0] & mask) or n >= max_len:
            blocks.append(b"".join(digests[start : i + 1]))
            start = i + 1
    if start < len(digests):
        blocks.append(b"".join(digests[start:]))
    return blocks


def hash_tree(
    put: Callable[[list[bytes]], list[bytes]], digests: list[bytes], fanout: int = 64
) -> tuple[list[bytes], int]:
    """Store the page hashes as a tree of hash blocks; return (roots, depth)."""
    level, depth = digests, 0
    while len(level) > fanout or depth == 0:
        level = put(split_lists(level))
        depth += 1
    return level, depth


def split_digests(block: bytes | memoryview) -> list[bytes]:
    return [bytes(block[i : i + DIGEST]) for i in range(0, len(block), DIGEST)]


class ChunkStore:
    """The chunks of one owner under ``root`` (mode 0700, daemon only)."""

    def __init__(self, root: Path, level: int = 1, threads: int = 2) -> None:
        self.root = root
        self.packs = root / "packs"
        self.level = level
        self.threads = max(1, threads)
        self._local = threading.local()
        self.ensure()

    def ensure(self) -> None:
        """Make the store (directories, index schema); atomic with respect to ``remove``."""
        with _OPEN_LOCK:
            self._ensure()

    def _ensure(self) -> None:
        for d in (self.root, self.packs):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            d.chmod(0o700)
        db = self._db()
        db.execute(
            "CREATE TABLE IF NOT EXISTS chunks (h BLOB PRIMARY KEY, pack TEXT NOT NULL,"
            " off INTEGER NOT NULL, clen INTEGER NOT NULL, ulen INTEGER NOT NULL,"
            " raw INTEGER NOT NULL, base BLOB, depth INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID"
        )
        cols = {row[1] for row in db.execute("PRAGMA table_info(chunks)")}
        if "base" not in cols:  # an index written before deltas existed
            db.execute("ALTER TABLE chunks ADD COLUMN base BLOB")
            db.execute("ALTER TABLE chunks ADD COLUMN depth INTEGER NOT NULL DEFAULT 0")
        db.execute("CREATE INDEX IF NOT EXISTS chunks_pack ON chunks (pack)")
        (self.root / "index.db").chmod(0o600)

    def _db(self) -> sqlite3.Connection:
        """This thread's connection to the index (a new one after ``remove`` closed it)."""
        key = str(self.root)
        db = getattr(self._local, "db", None)
        if db is not None and getattr(self._local, "generation", -1) != _GENERATION[key]:
            db = None  # closed by ``remove``
        if db is None:
            # Opened and first used (SQLite opens the WAL by name on first use) under the
            # same lock as ``remove``, so a connection never spans a removal.
            with _OPEN_LOCK:
                db = sqlite3.connect(
                    self.root / "index.db",
                    timeout=60,
                    isolation_level=None,
                    check_same_thread=False,  # ``remove`` closes it from another thread
                    factory=_Connection,
                )
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=FULL")
                    db.execute(f"PRAGMA journal_size_limit={WAL_KEEP}")
                except BaseException:
                    db.close()
                    raise
                _OPEN[key].add(db)
                self._local.generation = _GENERATION[key]
            self._local.db = db
            # Closed with its thread: a connection lives in a reference cycle, which only the
            # garbage collector's rare full pass would break, so every short-lived thread
            # (a trailing snapshot's timer) left an open index behind until then.
            weakref.finalize(threading.current_thread(), _close_quietly, db)
        return db

    # ---- locking -------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, exclusive: bool = False) -> Iterator[None]:
        """Shared for commits and reads, exclusive for garbage collection (see module doc).

        A lock taken on a lock file that ``remove`` unlinked meanwhile protects nothing: the
        file at the path must still be the one locked, otherwise the store is made again (its
        owner is taking a snapshot after all) and the lock taken anew.
        """
        path = self.root / "lock"
        for attempt in range(LOCK_TRIES):
            try:
                fd = open_nofollow(path, os.O_RDWR | os.O_CREAT)
            except FileNotFoundError:
                try:
                    self.ensure()
                except (FileNotFoundError, sqlite3.OperationalError, sqlite3.ProgrammingError):
                    if attempt == LOCK_TRIES - 1:
                        raise
                continue  # removed again while being made: try again
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
                same = _ident(path) == _ident_fd(fd)
            except BaseException:
                os.close(fd)
                raise
            if same:
                break
            os.close(fd)
        else:
            raise OSError(errno.EAGAIN, f"chunk store {self.root} keeps being removed")
        try:
            yield
        finally:
            os.close(fd)

    # ---- lookups -------------------------------------------------------------------------
    def locate(self, digests: Iterable[bytes]) -> dict[bytes, Loc]:
        """Where the chunks are."""
        wanted = set(digests)
        rows = self.rows(wanted)
        return {
            h: Loc(pack, off, clen, bool(raw), base, depth)
            for h, (_, pack, off, clen, raw, base, depth) in rows.items()
            if h in wanted
        }

    def rows(self, digests: Iterable[bytes]) -> dict[bytes, Row]:
        """The index rows of the chunks, as SQLite returns them (no object per row: a
        restore asks for 250 000 per GiB); may hold rows of other chunks too.

        Sorted lookups walk the index B-tree in order (~40 % faster than in hash order);
        wanting most of the index, one scan is faster still."""
        want = set(digests)
        db = self._db()
        cols = "h, pack, off, clen, raw, base, depth"
        if len(want) > 50_000:
            (rows,) = db.execute("SELECT count(*) FROM chunks").fetchone()
            if len(want) * 3 > rows:
                return {r[0]: r for r in db.execute(f"SELECT {cols} FROM chunks")}  # noqa: S608
        wanted = sorted(want)
        out: dict[bytes, Row] = {}
        for i in range(0, len(wanted), SQL_BATCH):
            part = wanted[i : i + SQL_BATCH]
            marks = ",".join("?" * len(part))
            out.update(
                {
                    r[0]: r
                    for r in db.execute(
                        f"SELECT {cols} FROM chunks WHERE h IN ({marks})",  # noqa: S608
                        part,
                    )
                }
            )
        return out

    def known(self, digests: Iterable[bytes]) -> set[bytes]:
        """Which of the chunks are stored: a commit needs no more (no locations, no rows
        turned into objects), which makes committing known pages ~2x faster."""
        wanted = sorted(set(digests))
        out: set[bytes] = set()
        db = self._db()
        for i in range(0, len(wanted), SQL_BATCH):
            part = wanted[i : i + SQL_BATCH]
            marks = ",".join("?" * len(part))
            out.update(
                h
                for (h,) in db.execute(f"SELECT h FROM chunks WHERE h IN ({marks})", part)  # noqa: S608
            )
        return out

    # ---- writing -------------------------------------------------------------------------
    def writer(self, name: str) -> PackWriter:
        return PackWriter(self, name)

    # ---- reading -------------------------------------------------------------------------
    def read(
        self, digests: Sequence[bytes], locs: dict[bytes, Loc] | None = None
    ) -> list[bytes | memoryview]:
        """The chunks' bytes, each decompressed and checked against its hash."""
        locs = locs if locs is not None else self.locate(digests)
        order: list[Loc] = []
        for d in digests:
            loc = locs.get(d)
            if loc is None:
                raise ChunkError(f"chunk {d.hex()} is missing")
            order.append(loc)
        frames: list[bytes | memoryview] = []
        fds: dict[str, int] = {}
        try:
            i = 0
            while i < len(order):
                # One read for a run of chunks lying back to back in the same pack (the usual
                # case: a commit writes its new pages in image order).
                first = order[i]
                j, end = i + 1, first.offset + first.clen
                while j < len(order) and order[j].pack == first.pack and order[j].offset == end:
                    end += order[j].clen
                    j += 1
                fd = fds.get(first.pack)
                if fd is None:
                    try:
                        fd = open_nofollow(self.packs / first.pack)
                    except OSError:
                        raise ChunkError(f"pack {first.pack} is missing") from None
                    fds[first.pack] = fd
                data = os.pread(fd, end - first.offset, first.offset)
                if len(data) != end - first.offset:
                    raise ChunkError(f"pack {first.pack} is truncated")
                view = memoryview(data)
                pos = 0
                for loc in order[i:j]:
                    frames.append(view[pos : pos + loc.clen] if j - i > 1 else data)
                    pos += loc.clen
                i = j
        finally:
            for fd in fds.values():
                os.close(fd)
        raw_flags = [loc.raw for loc in order]
        out = self._decompress(frames, raw_flags)
        bases = list(dict.fromkeys(loc.base for loc in order if loc.base is not None))
        if bases:
            plain = dict(zip(bases, self.read(bases), strict=True))  # verified themselves
            for i, loc in enumerate(order):
                if loc.base is not None:
                    if len(out[i]) != len(plain[loc.base]):
                        raise ChunkError(f"chunk {digests[i].hex()} fails its checksum")
                    out[i] = xor(out[i], plain[loc.base])
        for d, data in zip(digests, out, strict=True):
            if xxhash.xxh3_128_digest(data) != d:
                raise ChunkError(f"chunk {d.hex()} fails its checksum")
        return out

    def _decompress(
        self, frames: list[bytes | memoryview], raw_flags: list[bool]
    ) -> list[bytes | memoryview]:
        """Plain chunk bytes; raw chunks stay views into what was read (no copy)."""
        packed = [f for f, raw in zip(frames, raw_flags, strict=True) if not raw]
        try:
            if len(packed) > 64 and self.threads > 1:
                coll = zstandard.ZstdDecompressor().multi_decompress_to_buffer(
                    packed, threads=self.threads
                )
                plain = [coll[i].tobytes() for i in range(len(coll))]
            else:
                dctx = zstandard.ZstdDecompressor()
                plain = [dctx.decompress(f) for f in packed]
        except (zstandard.ZstdError, ValueError) as exc:
            raise ChunkError(f"a chunk cannot be decompressed ({exc})") from None
        it = iter(plain)
        return [f if raw else next(it) for f, raw in zip(frames, raw_flags, strict=True)]

    # ---- maintenance ---------------------------------------------------------------------
    def all_rows(self) -> Iterator[tuple[bytes, str, int, int]]:
        yield from self._db().execute("SELECT h, pack, clen, ulen FROM chunks")

    def closure(self, live: set[bytes]) -> set[bytes]:
        """``live`` plus every chunk a live delta chunk is based on, transitively."""
        based = dict(self._db().execute("SELECT h, base FROM chunks WHERE base IS NOT NULL"))
        out = set(live)
        for h in live:
            b = based.get(h)
            while b is not None and b not in out:
                out.add(b)
                b = based.get(b)
        return out

    def forget(self, digests: Iterable[bytes]) -> None:
        items = list(digests)
        with immediate(self._db()) as db:
            for i in range(0, len(items), SQL_BATCH):
                part = items[i : i + SQL_BATCH]
                marks = ",".join("?" * len(part))
                db.execute(f"DELETE FROM chunks WHERE h IN ({marks})", part)  # noqa: S608

    def move(self, rows: list[tuple[bytes, str, int]]) -> None:
        """Point chunks at their new place (pack, offset) after a compaction."""
        with immediate(self._db()) as db:
            db.executemany("UPDATE chunks SET pack=?, off=? WHERE h=?",
                           [(p, o, h) for h, p, o in rows])  # fmt: skip

    def sizes(self) -> tuple[int, int, int]:
        """(chunks, compressed bytes, uncompressed bytes) in the index."""
        n, c, u = (
            self._db()
            .execute("SELECT count(*), coalesce(sum(clen),0), coalesce(sum(ulen),0) FROM chunks")
            .fetchone()
        )
        return int(n), int(c), int(u)

    def pack_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.packs.iterdir())

    def index_bytes(self) -> int:
        """Bytes of the index on disk: the database, its WAL and shared-memory file."""
        total = 0
        for name in INDEX_FILES:
            with contextlib.suppress(FileNotFoundError):
                total += (self.root / name).stat().st_size
        return total

    def compact_index(self) -> int:
        """Give the index's free space back to the filesystem; return the bytes freed.

        Call with the store locked exclusively (no other reader may pin the WAL). The WAL is
        checkpointed and truncated; the database is VACUUMed only when its free pages are
        worth a rewrite (``VACUUM_MIN_FREE`` and ``VACUUM_MIN_FRACTION``).
        """
        before = self.index_bytes()
        db = self._db()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        free, pages, size = (
            db.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("freelist_count", "page_count", "page_size")
        )
        if free * size >= VACUUM_MIN_FREE and free >= pages * VACUUM_MIN_FRACTION:
            db.execute("VACUUM")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return max(0, before - self.index_bytes())

    def remove(self) -> None:
        """Delete the whole store (its owner has no snapshot and no chunk left).

        Call with the store locked exclusively. Every connection to the index in this process
        is closed first, while its path still leads to it: SQLite deletes the WAL *by name*
        when the last connection closes, which after a re-creation would be the new store's.
        The directory is then renamed away (a crash leaves no half-removed store under the
        owner's name) and deleted; threads still holding this object reconnect (``_db``) and
        re-create the store when they lock it (``lock``).
        """
        key = str(self.root)
        doomed = self.root.with_name(f".removed-{self.root.name}-{time.time_ns()}")
        with _OPEN_LOCK:
            for db in list(_OPEN.pop(key, ())):
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            _GENERATION[key] += 1
            self.root.rename(doomed)
        self._local.db = None
        shutil.rmtree(doomed, ignore_errors=True)


class PackWriter:
    """Appends one commit's new chunks to its own pack; rows become visible on ``finish``."""

    def __init__(self, store: ChunkStore, name: str) -> None:
        self.store = store
        self.name = f"{name}.pack"
        if (store.packs / self.name).exists():
            # A commit of the same snapshot cut short (its pack may even have index rows,
            # so it stays for garbage collection): this one writes a pack of its own.
            self.name = f"{name}-{time.time_ns()}.pack"
        self.path = store.packs / self.name
        self.fd: int | None = None
        self.offset = 0
        self.rows: dict[bytes, tuple[str, int, int, int, int, bytes | None, int]] = {}
        self.new_bytes = 0  # compressed bytes this commit added
        self.new_raw_bytes = 0  # their uncompressed size
        self.new_page_bytes = 0  # of which 4 KiB pages (not hash blocks)
        self.cctx = zstandard.ZstdCompressor(level=store.level, write_checksum=False)
        self._base_depth: dict[bytes, int] = {}

    def put(
        self,
        chunks: Sequence[bytes | memoryview],
        bases: Sequence[bytes | None] | None = None,
    ) -> list[bytes]:
        """Store what is not stored yet; return every chunk's hash, in order.

        ``bases``: for each chunk, the hash of a likely predecessor (the page at the same
        address in the previous snapshot), tried as a delta base.
        """
        digests = [xxhash.xxh3_128_digest(c) for c in chunks]
        known = self.store.known(d for d in digests if d not in self.rows)
        todo: dict[bytes, int] = {}
        for i, d in enumerate(digests):
            if d not in known and d not in self.rows and d not in todo:
                todo[d] = i
        if todo:
            self._append([(d, chunks[i], bases[i] if bases else None) for d, i in todo.items()])
        return digests

    def _deltas(self, items: list[tuple[bytes, bytes, bytes | None]]) -> dict[bytes, bytes]:
        """XOR of each new page with its base, where the base is stored and chains are short."""
        wanted = [b for _, p, b in items if b is not None and len(p) == PAGE]
        if not wanted:
            return {}
        locs = self.store.locate(wanted)
        usable = [b for b in dict.fromkeys(wanted) if b in locs and locs[b].depth < MAX_DELTA_DEPTH]
        if not usable:
            return {}
        try:
            plain = dict(zip(usable, self.store.read(usable, locs), strict=True))
        except ChunkError:
            return {}  # a damaged base: store the pages whole
        self._base_depth.update({b: locs[b].depth for b in usable})
        return {d: xor(p, plain[b]) for d, p, b in items if b in plain and len(plain[b]) == len(p)}

    def _compress(self, plain: list[bytes]) -> list[bytes]:
        if len(plain) > 64 and self.store.threads > 1:
            coll = self.cctx.multi_compress_to_buffer(plain, threads=self.store.threads)
            return [coll[i].tobytes() for i in range(len(coll))]
        return [self.cctx.compress(p) for p in plain]

    def _append(self, items: list[tuple[bytes, bytes | memoryview, bytes | None]]) -> None:
        if self.fd is None:
            self.fd = open_nofollow(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        plain = [bytes(c) for _, c, _ in items]
        frames = self._compress(plain)
        cands = [(d, p, b) for (d, _, b), p in zip(items, plain, strict=True) if b is not None]
        if len(cands) > DELTA_SAMPLE:
            size = {
                d: min(len(f), len(p)) for (d, _, _), p, f in zip(items, plain, frames, strict=True)
            }
            sample = cands[:: len(cands) // DELTA_SAMPLE][:DELTA_SAMPLE]
            hits = sum(
                len(self.cctx.compress(x)) <= size[d] * DELTA_IF_RATIO
                for d, x in self._deltas(sample).items()
            )
            if hits < len(sample) * DELTA_SAMPLE_HITS:
                cands = []
        deltas = self._deltas(cands)
        dframes = dict(zip(deltas, self._compress(list(deltas.values())), strict=True))
        out: list[bytes] = []
        for (d, _, b), p, f in zip(items, plain, frames, strict=True):
            raw = len(f) >= len(p) * RAW_IF_RATIO
            data = p if raw else f
            df = dframes.get(d)
            if df is not None and b is not None and len(df) <= len(data) * DELTA_IF_RATIO:
                data, raw = df, False
                self.rows[d] = (self.name, self.offset, len(data), len(p), 0, b,
                                self._base_depth[b] + 1)  # fmt: skip
            else:
                self.rows[d] = (self.name, self.offset, len(data), len(p), int(raw), None, 0)
            self.offset += len(data)
            self.new_bytes += len(data)
            self.new_raw_bytes += len(p)
            if len(p) == PAGE:
                self.new_page_bytes += len(p)
            out.append(data)
        write_all(self.fd, b"".join(out))

    def finish(self) -> None:
        """Make the pack durable, then publish its rows."""
        if self.fd is None:
            return
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = None
        fsync_dir(self.store.packs)
        with immediate(self.store._db()) as db:
            db.executemany(
                "INSERT OR IGNORE INTO chunks (h, pack, off, clen, ulen, raw, base, depth)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(h, *r) for h, r in self.rows.items()],
            )

    def abort(self) -> None:
        """Drop the pack of a failed commit (its rows were never published)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
