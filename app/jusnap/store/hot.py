"""The hot tier: the newest snapshots of each kernel kept as plain images, ready for CRIU.

Why: rebuilding a page image from the content-addressed store (``cas.py``) verifies and
decompresses every 4 KiB page, ~3 s per GiB on 2 cores here, five times CRIU's own restore of
the same kernel. The snapshots a user goes back to are mostly the newest ones, and the
pre-restore copy of a restore must be restorable at once (rollback). So the engine first takes
each dump out of the kernel user's reach into a hot entry, then commits the store *from that
entry*: the store's image check sees exactly the bytes the hot entry holds, and a restore
hands the entry to CRIU as it is (the check runs again for the target kernel's identity; it
reads only the small images, ~1 ms).

Trust: an entry is root's files in root's directories (``<id>/`` root:<kernel gid> 0750,
images 0440). The dump's files are not copied but taken over: the directory and each file
become root's, and each file must then have no writer left anywhere (a read lease is granted
only then; see :meth:`HotTier.put`), so that no descriptor the kernel's user opened during
the dump can change them afterwards. The kernel's user can read its own snapshot's images,
as CRIU running as that user must, and change nothing.

Layout::

    hot/<id>/img/             CRIU's images
    hot/<id>/history/         the kernel's IPython history database, if saved
    hot/<id>/meta.json        the snapshot's record, whether it is in the store yet, the boot
    hot/.partial-<id>/        an entry being written (removed at start-up)

A snapshot's entry is *pending* until the store holds it: the pre-restore copy of a restore is
committed in the background, after the restore answered. Pending entries are fsynced before
the kernel is stopped and committed at start-up should the daemon die first. Entries that are
in the store already are a cache: they are written without fsync and dropped at start-up when
the machine rebooted since (a power cut may have lost their pages).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from ..errors import RestoreFailed, SnapshotFailed, StoreFull
from ..fsutil import fsync_dir, open_nofollow, readable_dir, write_json
from ..ids import SNAPSHOT_ID_RE
from ..untrusted import open_untrusted, open_untrusted_path

log = logging.getLogger(__name__)

META = "meta.json"
IMAGES = "img"
HISTORY = "history"
PARTIAL = ".partial-"
COPY_CHUNK = 1 << 30
# Early writeback: how often the dump's files are looked at, and the least growth worth a call.
WRITEBACK_INTERVAL = 0.02
WRITEBACK_MIN = 4 << 20
SYNC_FILE_RANGE_WRITE = 2
DIGEST_CHUNK = 4 << 20
#: Each image is hashed in parts of this size, the parts on every core at once: a 4 GiB
#: entry verified in 0.17-0.27 s on 2 cores instead of 0.3-0.48 s (one xxh3 stream runs at
#: the speed of one core's copy out of the page cache). The size is recorded with the digests.
DIGEST_PART = 256 << 20
DIGEST_WORKERS = max(1, min(4, os.cpu_count() or 1))


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class HotEntry:
    id: str
    path: Path
    meta: dict[str, Any]

    @property
    def images(self) -> Path:
        return self.path / IMAGES

    @property
    def history(self) -> Path | None:
        p = self.path / HISTORY
        return p if p.is_dir() and any(p.iterdir()) else None

    @property
    def pending(self) -> bool:
        return bool(self.meta.get("pending"))

    @property
    def snapshot(self) -> dict[str, Any]:
        return dict(self.meta.get("snapshot") or {})


class HotTier:
    """Hot entries under ``root`` (root 0711: the kernel's user may pass, never list)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._boot = boot_id()
        self._meta_lock = threading.Lock()  # read-modify-write of meta.json

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chown(self.root, os.geteuid(), os.getegid())
        self.root.chmod(0o711)

    def _dir(self, snapshot_id: str) -> Path:
        if not SNAPSHOT_ID_RE.match(snapshot_id):
            raise ValueError(snapshot_id)
        return self.root / snapshot_id

    # ---- writing -------------------------------------------------------------------------
    def put(
        self,
        snapshot_id: str,
        images: Path,
        history: Path | None,
        gid: int,
        file_owner: int,
        durable: bool,
    ) -> HotEntry:
        """Take a finished dump (``images``: the kernel user's directory, in a root-owned
        parent) into an entry: the directory and its files become root's, then move.

        The files are not copied (a copy of a 1 GB dump cost 0.6–4 s here, writeback
        included). Instead the directory is made root's first (no new names, no renames),
        then each file: it must be a regular file of ``file_owner`` with one link (opened
        without following links), becomes root's and read-only, and must have no writer left:
        a read lease (``F_SETLEASE``) is granted only while nobody holds the file open for
        writing, in any process, mapped or passed over a socket. After that no one can open
        it for writing again; a file that still had a writer is copied instead. The entry is
        pending until :meth:`committed`; ``durable`` fsyncs it (a pre-restore copy: the only
        copy of the kernel's state once the kernel is stopped).
        """
        final = self._dir(snapshot_id)
        partial = self.root / f"{PARTIAL}{snapshot_id}"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            readable_dir(partial, gid)
            img = partial / IMAGES
            _secure(images, gid, file_owner, durable)
            try:
                images.rename(img)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.copytree(images, img)  # another filesystem: root's files already
            if history is not None:
                # The database, and its rollback journal when the dump caught a write.
                for path in (history, history.with_name(f"{history.name}-journal")):
                    try:
                        src = open_untrusted_path(path, file_owner)
                    except FileNotFoundError:
                        continue
                    try:
                        if not (partial / HISTORY).exists():
                            readable_dir(partial / HISTORY, gid)
                        _copy(src, partial / HISTORY / path.name, gid, durable)
                    finally:
                        os.close(src)
            # A cached entry records each file's hash (read back from the page cache, after the
            # kernel resumed), checked before it is restored, as the store checks its pages.
            # A durable one is needed right away (rollback) or goes to the store: no hashes.
            digests = {} if durable else digest_files(img)
            meta = {"pending": True, "boot": self._boot, "durable": durable, "snapshot": None,
                    "xxh3": digests, "xxh3_part": DIGEST_PART}  # fmt: skip
            write_json(partial / META, meta, durable)
            if durable:
                for d in (img, partial):
                    fsync_dir(d)
            partial.rename(final)
            if durable:
                fsync_dir(self.root)
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFull("snapshot failed: no space left on the snapshot store") from None
            raise SnapshotFailed(
                f"snapshot failed: cannot keep images: {exc.strerror or exc}"
            ) from None
        return HotEntry(snapshot_id, final, meta)

    def describe(
        self, snapshot_id: str, snapshot: dict[str, Any], identity: dict[str, Any], pending: bool
    ) -> None:
        """Record the snapshot an entry holds (its registry row, the identity its images were
        checked for) and whether it is pending; fsynced for a durable entry."""
        with self._meta_lock:
            e = self.get(snapshot_id)
            if e is None:
                return
            meta = {**e.meta, "snapshot": snapshot, "identity": identity, "pending": pending,
                    "used_at": time.time()}  # fmt: skip
            write_json(e.path / META, meta, bool(e.meta.get("durable")))

    def committed(self, snapshot_id: str, with_digests: bool = False) -> None:
        """The store holds the entry's snapshot now; ``with_digests``: record the images'
        hashes (a durable entry was written without, to keep them off the critical path)."""
        e = self.get(snapshot_id)
        if e is None or not e.pending:
            return
        digests = e.meta.get("xxh3") or {}
        part = e.meta.get("xxh3_part")
        if with_digests and not digests:
            digests, part = digest_files(e.images), DIGEST_PART
        with self._meta_lock:
            e = self.get(snapshot_id)
            if e is not None and e.pending:
                meta = {**e.meta, "pending": False, "xxh3": digests, "xxh3_part": part}
                write_json(e.path / META, meta, False)

    def touch(self, snapshot_id: str) -> None:
        """The entry was just restored: it is among the last to be dropped."""
        with self._meta_lock:
            e = self.get(snapshot_id)
            if e is not None:
                write_json(e.path / META, {**e.meta, "used_at": time.time()}, False)

    # ---- reading -------------------------------------------------------------------------
    def get(self, snapshot_id: str) -> HotEntry | None:
        path = self._dir(snapshot_id)
        try:
            meta = json.loads((path / META).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or not (path / IMAGES).is_dir():
            return None
        return HotEntry(snapshot_id, path, meta)

    def entries(self) -> Iterator[HotEntry]:
        for p in sorted(self.root.iterdir()):
            if SNAPSHOT_ID_RE.match(p.name):
                e = self.get(p.name)
                if e is not None:
                    yield e

    def verify(self, entry: HotEntry) -> None:
        """Raise RestoreFailed unless every image of a cached entry has the recorded hash."""
        digests = entry.meta.get("xxh3") or {}
        names = sorted(p.name for p in entry.images.iterdir())
        if digests and sorted(digests) != names:
            raise RestoreFailed(f"snapshot {entry.id} is damaged: its hot images changed")
        part = entry.meta.get("xxh3_part")
        wanted = {n: d for n, d in digests.items() if n in names}
        if isinstance(part, int) and part > 0 and all(isinstance(d, list) for d in wanted.values()):
            found = digest_files(entry.images, part, only=set(wanted))
        else:  # an entry from before part digests: one digest per file
            found = {n: _digest(entry.images / n) for n in wanted}
        for name in sorted(wanted):
            if found.get(name) != wanted[name]:
                raise RestoreFailed(f"snapshot {entry.id} is damaged: {name} fails its checksum")

    def size(self, snapshot_id: str) -> int:
        """Bytes of an entry's images and history (what the store calls its logical size)."""
        e = self.get(snapshot_id)
        if e is None:
            return 0
        dirs = [e.images] + ([e.history] if e.history else [])
        return sum(p.stat().st_size for d in dirs for p in d.iterdir() if p.is_file())

    def usage(self) -> dict[int, tuple[int, int]]:
        """Per owner uid: (entries, bytes on disk) of the hot tier, for ``jusnap du``. Each
        entry is a whole plain image (no dedup, no compression): a 1 GB kernel keeps ~1 GB
        here per entry on top of what the store needs."""
        out: dict[int, tuple[int, int]] = {}
        for e in self.entries():
            try:
                owner = int(e.snapshot.get("owner_uid", -1))
                dirs = [e.images] + ([e.history] if e.history else [])
                used = sum(
                    p.lstat().st_blocks * 512 for d in dirs for p in d.iterdir() if p.is_file()
                )
            except (OSError, TypeError, ValueError):
                continue  # dropped meanwhile (trimming), or a record being rewritten
            n, total = out.get(owner, (0, 0))
            out[owner] = (n + 1, total + used)
        return out

    # ---- removal -------------------------------------------------------------------------
    def drop(self, snapshot_id: str) -> None:
        path = self._dir(snapshot_id)
        if path.exists():
            doomed = self.root / f"{PARTIAL}{snapshot_id}-dropped"
            with contextlib.suppress(FileNotFoundError):
                path.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def keep(self, kernel_id: str, n: int, known: set[str]) -> None:
        """Keep the ``n`` entries of a kernel's snapshots used (taken or restored) last; drop
        the others, and entries of snapshots that no longer exist. Pending entries stay."""
        mine = []
        for e in self.entries():
            if e.pending:
                continue
            if e.id not in known:
                self.drop(e.id)
            elif e.snapshot.get("kernel_id") == kernel_id:
                mine.append(e)
        mine.sort(key=lambda e: float(e.meta.get("used_at") or 0), reverse=True)
        for e in mine[max(0, n) :]:
            self.drop(e.id)

    def recover(self, known: set[str]) -> list[HotEntry]:
        """Start-up: remove partial entries, cached entries the store does not know or that an
        earlier boot wrote without fsync; return the pending entries (to be committed)."""
        pending = []
        for p in list(self.root.iterdir()):
            if p.name.startswith(PARTIAL):
                shutil.rmtree(p, ignore_errors=True)
                continue
            if not SNAPSHOT_ID_RE.match(p.name):
                continue
            e = self.get(p.name)
            if e is None:
                shutil.rmtree(p, ignore_errors=True)
            elif e.pending and (e.meta.get("durable") or e.meta.get("boot") == self._boot):
                if e.snapshot:
                    pending.append(e)
                else:
                    self.drop(e.id)  # the dump was never recorded: nothing refers to it
            elif e.pending or e.id not in known or e.meta.get("boot") != self._boot:
                self.drop(e.id)
        return pending


class EarlyWriteback:
    """While CRIU writes a dump that must become durable, start writing its files to disk.

    Why: a durable hot entry is fsynced before the snapshot is listed, and CRIU leaves the
    whole image dirty in the page cache (below ``vm.dirty_background_ratio`` nothing writes it
    back earlier), so that fsync wrote ~1 GiB after the dump had ended: 0.3-0.4 s per GiB, most
    of the time between a raw dump and a recorded snapshot. Here a thread asks the kernel every
    20 ms to start writeback of what each file gained (``sync_file_range(SYNC_FILE_RANGE_WRITE)``,
    which neither waits nor drops the cached pages that the restore and the store then read),
    so the disk works while CRIU does and the fsync in :meth:`HotTier.put` finds little left.

    It is only a hint: durability still comes from that fsync, and nothing here is trusted.
    The files are the kernel user's while CRIU writes them, so each is opened as
    :func:`open_untrusted` opens them (no links, regular files of ``owner`` only, never
    blocking) and only ever handed to ``sync_file_range``; any failure ends the hints.
    """

    def __init__(self, images: Path, owner: int) -> None:
        self.images = images
        self.owner = owner
        self._stop = threading.Event()
        self._fds: dict[str, int] = {}
        self._done: dict[str, int] = {}  # bytes of each file handed to writeback
        self._skip: set[str] = set()  # names that are not files of the kernel's user
        self._thread = threading.Thread(target=self._run, name="jusnap-writeback", daemon=True)

    def __enter__(self) -> EarlyWriteback:
        if _sync_file_range is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _run(self) -> None:
        # The pages are written back from this thread (the kernel does the work in the caller
        # of sync_file_range): at the lowest priority, so that CRIU, which holds the kernel
        # frozen while it writes, keeps its core.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            dfd = os.open(self.images, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            while not self._stop.wait(WRITEBACK_INTERVAL):
                self._pass(dfd)
        except OSError as exc:
            log.debug("early writeback of %s stopped: %s", self.images, exc)
        finally:
            os.close(dfd)

    def _pass(self, dfd: int) -> None:
        for name in os.listdir(dfd):
            fd = self._fds.get(name)
            if fd is None:
                if name in self._skip:
                    continue
                try:
                    fd = open_untrusted(dfd, name, self.owner)
                except OSError:
                    self._skip.add(name)
                    continue
                self._fds[name], self._done[name] = fd, 0
            size = os.fstat(fd).st_size
            start = self._done[name]
            if size - start >= WRITEBACK_MIN:
                _start_writeback(fd, start, size - start)
                self._done[name] = size


def _load_sync_file_range() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing a range of a file's dirty pages to disk; returns without waiting."""
    if _sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _secure(images: Path, gid: int, owner: int, durable: bool) -> None:
    """Make a dump directory and its files root's, read-only, with no writer left (``put``)."""
    dfd = os.open(images, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if os.geteuid() == 0:
            os.fchown(dfd, 0, gid)
        os.fchmod(dfd, 0o750)
        for name in sorted(os.listdir(dfd)):  # noqa: PTH208 - listdir of an fd
            try:
                fd = open_untrusted(dfd, name, owner)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise  # a link, or a file of someone else: refuse the dump
                # sockets, fifos, directories: never part of an image
                if stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                    shutil.rmtree(images / name, ignore_errors=True)
                else:
                    os.unlink(name, dir_fd=dfd)
                continue
            try:
                if os.geteuid() == 0:
                    os.fchown(fd, 0, gid)
                os.fchmod(fd, 0o440)
                if not _no_writer(fd):
                    tmp = f".{name}.copy"
                    _copy(fd, images / tmp, gid, durable)
                    os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                elif durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        os.close(dfd)


def _no_writer(fd: int) -> bool:
    """Whether no open file description anywhere may write the file (a read lease says so)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError:
        return False
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return True


def _copy(src: int, dst_path: Path, gid: int, durable: bool) -> None:
    """Copy in the kernel (``copy_file_range``: no pass through Python's memory)."""
    dst = open_nofollow(dst_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        size = os.fstat(src).st_size
        done = 0
        while True:
            n = os.copy_file_range(src, dst, COPY_CHUNK)
            if n == 0:
                break
            done += n
        if done < size:
            raise OSError(errno.EIO, f"{dst_path.name} shrank while it was copied")
        if os.geteuid() == 0:
            os.fchown(dst, 0, gid)
        os.fchmod(dst, 0o440)
        if durable:
            os.fsync(dst)
    finally:
        os.close(dst)


def digest_files(
    folder: Path, part: int = DIGEST_PART, only: set[str] | None = None
) -> dict[str, list[str]]:
    """xxh3-128 of every ``part`` bytes of each file in ``folder`` (or of those ``only``
    names), hashed on up to :data:`DIGEST_WORKERS` cores at once. A file is opened once
    (without following links) and its parts read with ``pread``: every part is of the file
    that was opened, whatever the name points to meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    fds: dict[str, int] = {}
    try:
        for path in sorted(folder.iterdir()):
            if only is None or path.name in only:
                fds[path.name] = open_nofollow(path)
        tasks = [
            (name, off)
            for name, fd in fds.items()
            for off in range(0, max(os.fstat(fd).st_size, 1), part)
        ]
        with ThreadPoolExecutor(min(DIGEST_WORKERS, len(tasks) or 1), "digest") as pool:
            done = list(pool.map(lambda t: _digest_part(fds[t[0]], t[1], part), tasks))
    finally:
        for fd in fds.values():
            os.close(fd)
    out: dict[str, list[str]] = {name: [] for name in fds}
    for (name, _off), digest in zip(tasks, done, strict=True):
        out[name].append(digest)
    return out


def _digest_part(fd: int, offset: int, size: int) -> str:
    """xxh3-128 of ``size`` bytes of ``fd`` from ``offset`` (fewer at the end of the file)."""
    h = xxhash.xxh3_128()
    buf = bytearray(min(DIGEST_CHUNK, size))
    view = memoryview(buf)
    end = offset + size
    while offset < end:
        n = os.preadv(fd, [view[: min(len(buf), end - offset)]], offset)
        if not n:
            break
        h.update(view[:n])
        offset += n
    return h.hexdigest()


def _digest(path: Path) -> str:
    """xxh3-128 of a file. Read into one buffer, used again for every chunk: hashing itself
    runs at ~20 GB/s here, so the cost is the copy out of the page cache, and a fresh
    buffer per read (``os.read``) added its page faults (10-15% of a 1 GiB verify)."""
    h = xxhash.xxh3_128()
    buf = bytearray(DIGEST_CHUNK)
    view = memoryview(buf)
    fd = open_nofollow(path)
    try:
        while n := os.readv(fd, [buf]):
            h.update(view[:n])
    finally:
        os.close(fd)
    return h.hexdigest()
