"""Snapshot images on local disk, owned and readable by the daemon alone.

CRIU runs as the kernel's uid, so it dumps into (and restores from) a scratch directory that
uid owns. The store never trusts that directory: files are opened without following links,
must be regular, and are *copied* into root-owned files (a rename would keep the user's inode,
which an open descriptor could still change). Every file is hashed on the way in and verified
on the way out, so a damaged image fails the restore instead of restoring garbage.

Crash safety: a snapshot is assembled under ``.partial-<id>``, fsynced, then renamed to its
id; only then does the engine record it. Start-up removes partial directories and directories
no record points to.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import xxhash

from ..errors import RestoreFailed, SnapshotFailed, StoreFull
from ..ids import SNAPSHOT_ID_RE

MANIFEST = "manifest.json"
PARTIAL_PREFIX = ".partial-"
BUF = 8 * 1024 * 1024


@dataclass(frozen=True)
class StoredFile:
    name: str
    size: int
    xxh3: str
    mode: int = 0o600  # the source file's permission bits: CRIU checks them at restore


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        written = 0
        while written < n:
            written += os.write(dst, chunk[written:])
        total += n
    return total, h.hexdigest()


def _open_untrusted(dirfd: int, name: str) -> int:
    """Open a file in a user-owned directory: no links, regular files only."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{name} is not a regular file")
    return fd


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    # ---- layout ----------------------------------------------------------------------
    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chown(self.root, os.geteuid(), os.getegid())
        self.root.chmod(0o700)

    def path(self, snapshot_id: str) -> Path:
        if not SNAPSHOT_ID_RE.match(snapshot_id):
            raise ValueError(snapshot_id)
        return self.root / snapshot_id

    def exists(self, snapshot_id: str) -> bool:
        return (self.path(snapshot_id) / MANIFEST).is_file()

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
    def commit(self, snapshot_id: str, staging: Path, extra: dict[str, Path] | None = None) -> int:
        """Copy a finished dump into the store atomically; return its size in bytes."""
        final = self.path(snapshot_id)
        partial = self.root / f"{PARTIAL_PREFIX}{snapshot_id}"
        partial.mkdir(mode=0o700)
        files: list[StoredFile] = []
        try:
            sources: list[tuple[str, int, str]] = []  # (name, dirfd, name-in-dir)
            sfd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                sources = [(n, sfd, n) for n in sorted(os.listdir(sfd))]  # noqa: PTH208 - listdir of an fd
                for store_name, path in (extra or {}).items():
                    sources.append((store_name, -1, str(path)))
                for store_name, dirfd, name in sources:
                    try:
                        src = (
                            _open_untrusted(dirfd, name)
                            if dirfd >= 0
                            else _open_untrusted_path(Path(name))
                        )
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        if exc.errno == errno.EINVAL:
                            continue  # sockets, fifos: never part of an image
                        raise
                    mode = os.fstat(src).st_mode & 0o777
                    try:
                        dst = os.open(
                            partial / store_name,
                            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                            0o600,
                        )
                        try:
                            size, digest = _copy_fd(src, dst)
                            os.fsync(dst)
                        finally:
                            os.close(dst)
                    finally:
                        os.close(src)
                    files.append(StoredFile(store_name, size, digest, mode))
            finally:
                os.close(sfd)
            manifest = {"version": 1, "files": [f.__dict__ for f in files]}
            mfd = os.open(
                partial / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
            with os.fdopen(mfd, "w") as fh:
                json.dump(manifest, fh)
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_dir(partial)
            partial.rename(final)
            _fsync_dir(self.root)
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFull("snapshot failed: no space left on the snapshot store") from None
            raise SnapshotFailed(
                f"snapshot failed: cannot store images: {exc.strerror or exc}"
            ) from None
        return sum(f.size for f in files)

    # ---- reading ---------------------------------------------------------------------
    def manifest(self, snapshot_id: str) -> list[StoredFile]:
        try:
            data = json.loads((self.path(snapshot_id) / MANIFEST).read_text())
            return [StoredFile(**f) for f in data["files"]]
        except (OSError, ValueError, KeyError, TypeError):
            raise RestoreFailed(f"snapshot {snapshot_id} is damaged: unreadable manifest") from None

    def has_file(self, snapshot_id: str, name: str) -> bool:
        return any(f.name == name for f in self.manifest(snapshot_id))

    def stage_out(
        self,
        snapshot_id: str,
        dest: Path,
        uid: int,
        gid: int,
        only: set[str] | None = None,
        skip: set[str] | None = None,
        rename: dict[str, Path] | None = None,
    ) -> None:
        """Copy verified files into ``dest`` (owned by ``uid``) or to paths in ``rename``."""
        src_dir = self.path(snapshot_id)
        for f in self.manifest(snapshot_id):
            if (only is not None and f.name not in only) or (skip and f.name in skip):
                continue
            target = (rename or {}).get(f.name, dest / f.name)
            tmp = target.with_name(f".{target.name}.jusnap-tmp")
            try:
                src = os.open(src_dir / f.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                raise RestoreFailed(
                    f"snapshot {snapshot_id} is damaged: {f.name} is missing"
                ) from None
            try:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                dst = os.open(
                    tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
                )
                try:
                    size, digest = _copy_fd(src, dst)
                    if os.geteuid() == 0:
                        os.fchown(dst, uid, gid)
                    os.fchmod(dst, f.mode)
                finally:
                    os.close(dst)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise RestoreFailed(
                    f"cannot stage snapshot {snapshot_id}: {exc.strerror or exc}"
                ) from None
            finally:
                os.close(src)
            if size != f.size or digest != f.xxh3:
                tmp.unlink()
                raise RestoreFailed(
                    f"snapshot {snapshot_id} is damaged: {f.name} fails its checksum"
                )
            tmp.replace(target)

    def size(self, snapshot_id: str) -> int:
        return sum(f.size for f in self.manifest(snapshot_id))

    def delete(self, snapshot_id: str) -> None:
        path = self.path(snapshot_id)
        if path.exists():
            # Rename first so a crash mid-delete leaves a partial dir, cleaned at start-up.
            doomed = self.root / f"{PARTIAL_PREFIX}{snapshot_id}-deleted"
            path.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)


def replace_contents(src: Path, dst: Path) -> None:
    """Put ``src``'s bytes into ``dst`` keeping ``dst``'s inode.

    SQLite remembers the inode of the database it opened and treats a changed one as "moved",
    turning the restored kernel's history read-only; so the history file is rewritten in place.
    """
    if not dst.exists():
        src.replace(dst)
        return
    sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        dfd = os.open(dst, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _copy_fd(sfd, dfd)
            os.fchmod(dfd, os.fstat(sfd).st_mode & 0o777)
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    src.unlink()


def _open_untrusted_path(path: Path) -> int:
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _open_untrusted(dfd, path.name)
    finally:
        os.close(dfd)
