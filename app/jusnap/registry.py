"""The daemon's memory: kernels and snapshots in one SQLite file in the state directory.

A restarted daemon rebuilds everything from here: which kernels to re-adopt (PID *and* start
time, so a reused PID is never mistaken for a kernel) and which snapshots exist. A snapshot row
is written only after its images are safely in the store, so a row always means a whole
snapshot.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .fsutil import connect_wal, immediate

SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kernels (
    id TEXT PRIMARY KEY,
    owner_uid INTEGER NOT NULL,
    run_uid INTEGER NOT NULL,
    run_gid INTEGER NOT NULL,
    pid INTEGER,
    started INTEGER,
    status TEXT NOT NULL,
    argv TEXT NOT NULL,
    env TEXT NOT NULL,
    cwd TEXT NOT NULL,
    connection TEXT NOT NULL,
    notebook_path TEXT,
    history_file TEXT,
    auto_snapshot INTEGER,
    cooldown REAL,
    created_at REAL NOT NULL,
    execution_count INTEGER
);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    kernel_id TEXT NOT NULL,
    owner_uid INTEGER NOT NULL,
    notebook_path TEXT,
    created_at REAL NOT NULL,
    trigger TEXT NOT NULL,
    label TEXT,
    size_bytes INTEGER NOT NULL,
    frozen_seconds REAL NOT NULL,
    execution_count INTEGER,
    pid INTEGER NOT NULL,
    ports TEXT NOT NULL,
    has_history INTEGER NOT NULL,
    hooks TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_kernel ON snapshots (kernel_id, id);
CREATE INDEX IF NOT EXISTS snapshots_notebook ON snapshots (owner_uid, notebook_path, id);
-- A restore in progress: written before the kernel is stopped, removed when the restore ends
-- (however it ends). A row found at start-up is a restore the daemon died in.
CREATE TABLE IF NOT EXISTS restores (
    kernel_id TEXT PRIMARY KEY,
    snapshot_id TEXT NOT NULL,
    pre_restore_id TEXT,
    started_ticks INTEGER NOT NULL,
    started_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS notebooks (
    owner_uid INTEGER NOT NULL,
    notebook_path TEXT NOT NULL,
    connection TEXT NOT NULL,
    PRIMARY KEY (owner_uid, notebook_path)
);
"""


@dataclass
class Kernel:
    id: str
    owner_uid: int
    run_uid: int
    run_gid: int
    pid: int | None
    started: int | None
    status: str  # running | dead | stopped
    argv: list[str]
    env: dict[str, str]
    cwd: str
    connection: dict[str, Any]
    notebook_path: str | None = None
    history_file: str | None = None
    auto_snapshot: bool | None = None
    cooldown: float | None = None
    created_at: float = 0.0
    execution_count: int | None = None
    notice: str | None = None  # what the daemon did to the kernel on its own (crash recovery)
    # A fork's origin: the kernel and snapshot it was copied from (None: launched).
    parent_kernel_id: str | None = None
    parent_snapshot_id: str | None = None
    # runtime only (not stored)
    execution_state: str | None = field(default=None, compare=False)
    operation: str | None = field(default=None, compare=False)  # snapshot, restore, ... in progress

    def ports(self) -> str:
        c = self.connection
        return ",".join(
            str(c[k]) for k in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
        )

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        for hidden in ("env", "argv", "connection", "history_file", "started", "run_gid"):
            d.pop(hidden)
        return d


@dataclass
class Snapshot:
    id: str
    kernel_id: str
    owner_uid: int
    notebook_path: str | None
    created_at: float
    trigger: str  # manual | auto | pre-restore
    label: str | None
    size_bytes: int
    frozen_seconds: float
    execution_count: int | None
    pid: int
    ports: str
    has_history: bool
    hooks: dict[str, Any]
    # The kernel's message-signing key at the dump (None: a snapshot from before schema 3): a
    # copy restored under another connection is told its new key with the old one.
    connection_key: str | None = None
    # Taken of a kernel in its own PID + mount namespace (comes back at a new PID; False for
    # snapshots from before schema 3, which were all of plain kernels).
    namespaced: bool = False

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        for hidden in ("ports", "pid", "connection_key", "namespaced"):
            d.pop(hidden)
        return d


@dataclass(frozen=True)
class RestoreJournal:
    kernel_id: str
    snapshot_id: str
    pre_restore_id: str | None
    started_ticks: int  # clock ticks since boot, as /proc counts a process's start
    started_at: float


_KERNEL_JSON = ("argv", "env", "connection")


class Registry:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._db = connect_wal(path, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(kernels)")}
            if "notice" not in columns:  # schema 1 -> 2
                self._db.execute("ALTER TABLE kernels ADD COLUMN notice TEXT")
            for column in ("parent_kernel_id", "parent_snapshot_id"):  # schema 2 -> 3: forks
                if column not in columns:
                    self._db.execute(f"ALTER TABLE kernels ADD COLUMN {column} TEXT")
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(snapshots)")}
            if "connection_key" not in columns:
                self._db.execute("ALTER TABLE snapshots ADD COLUMN connection_key TEXT")
            if "namespaced" not in columns:
                self._db.execute(
                    "ALTER TABLE snapshots ADD COLUMN namespaced INTEGER NOT NULL DEFAULT 0"
                )
            self._db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))

    def schema_version(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        return int(row[0])

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return immediate(self._db, self._lock)

    @contextlib.contextmanager
    def _tx_fast(self) -> Iterator[sqlite3.Connection]:
        """A write transaction committed without its fsync (``synchronous=NORMAL``).

        For rows whose loss in a power cut changes nothing a reboot keeps: a kernel's PID,
        status and cell count describe a process that dies with the machine. The commit is in
        the WAL (a daemon that dies keeps it, as the OS does), and WAL keeps commits in order:
        the next durable commit makes it durable too, and a power cut loses at most a tail of
        them, never one before an earlier one. A restore writes three such rows after the
        kernel's stop, one fsync each before (10-60 ms together on the loaded machine here)."""
        with self._lock:
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                with immediate(self._db) as db:
                    yield db
            finally:
                self._db.execute("PRAGMA synchronous=FULL")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- kernels ---------------------------------------------------------------------
    def put_kernel(self, k: Kernel, durable: bool = True) -> None:
        """Insert or update a kernel's row; ``durable=False``: see :meth:`_tx_fast`."""
        row = asdict(k)
        row.pop("execution_state")
        row.pop("operation")
        for key in _KERNEL_JSON:
            row[key] = json.dumps(row[key])
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._tx() if durable else self._tx_fast() as db:
            db.execute(
                f"INSERT OR REPLACE INTO kernels ({cols}) VALUES ({marks})",  # noqa: S608 - own columns
                tuple(row.values()),
            )

    def _kernel(self, row: sqlite3.Row) -> Kernel:
        d = dict(row)
        for key in _KERNEL_JSON:
            d[key] = json.loads(d[key])
        if d["auto_snapshot"] is not None:
            d["auto_snapshot"] = bool(d["auto_snapshot"])
        return Kernel(**d)

    def get_kernel(self, kernel_id: str) -> Kernel | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM kernels WHERE id=?", (kernel_id,)).fetchone()
        return self._kernel(row) if row else None

    def kernels(self) -> list[Kernel]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM kernels ORDER BY created_at").fetchall()
        return [self._kernel(r) for r in rows]

    def delete_kernel(self, kernel_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM kernels WHERE id=?", (kernel_id,))

    # ---- notebooks ---------------------------------------------------------------------
    def notebook_connection(self, owner_uid: int, notebook_path: str) -> dict[str, Any] | None:
        """The connection (ports and key) a notebook's kernels keep, so its snapshots fit them."""
        with self._lock:
            row = self._db.execute(
                "SELECT connection FROM notebooks WHERE owner_uid=? AND notebook_path=?",
                (owner_uid, notebook_path),
            ).fetchone()
        return json.loads(row[0]) if row else None

    def set_notebook_connection(
        self, owner_uid: int, notebook_path: str, connection: dict[str, Any]
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO notebooks (owner_uid, notebook_path, connection)"
                " VALUES (?, ?, ?)",
                (owner_uid, notebook_path, json.dumps(connection)),
            )

    # ---- snapshots -------------------------------------------------------------------
    def add_snapshot(self, s: Snapshot) -> None:
        row = asdict(s)
        row["hooks"] = json.dumps(row["hooks"])
        row["has_history"] = int(row["has_history"])
        row["namespaced"] = int(row["namespaced"])
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._tx() as db:
            db.execute(f"INSERT INTO snapshots ({cols}) VALUES ({marks})", tuple(row.values()))  # noqa: S608

    def _snapshot(self, row: sqlite3.Row) -> Snapshot:
        d = dict(row)
        d["hooks"] = json.loads(d["hooks"])
        d["has_history"] = bool(d["has_history"])
        d["namespaced"] = bool(d["namespaced"])
        return Snapshot(**d)

    # ---- restores in progress ---------------------------------------------------------------
    def begin_restore(self, j: RestoreJournal) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO restores VALUES (?, ?, ?, ?, ?)",
                (j.kernel_id, j.snapshot_id, j.pre_restore_id, j.started_ticks, j.started_at),
            )

    def end_restore(self, kernel_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM restores WHERE kernel_id=?", (kernel_id,))

    def restores(self) -> list[RestoreJournal]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM restores").fetchall()
        return [RestoreJournal(**dict(r)) for r in rows]

    def get_snapshot(self, snapshot_id: str) -> Snapshot | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM snapshots WHERE id=?", (snapshot_id,)).fetchone()
        return self._snapshot(row) if row else None

    def snapshots_of(
        self, kernel_id: str, owner_uid: int, notebook_path: str | None
    ) -> list[Snapshot]:
        """Newest first. A notebook's snapshots follow it across kernel ids."""
        with self._lock:
            if notebook_path:
                rows = self._db.execute(
                    "SELECT * FROM snapshots WHERE kernel_id=? OR (owner_uid=? AND notebook_path=?)"
                    " ORDER BY id DESC",
                    (kernel_id, owner_uid, notebook_path),
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM snapshots WHERE kernel_id=? ORDER BY id DESC", (kernel_id,)
                ).fetchall()
        return [self._snapshot(r) for r in rows]

    def snapshots_owned(self, owner_uid: int | None) -> list[Snapshot]:
        """Every snapshot of ``owner_uid`` (None: everyone's), newest first.

        The only list that reaches snapshots whose kernel is gone and that belong to no
        notebook (a headless nbclient or papermill run): without it they were listed nowhere.
        """
        with self._lock:
            if owner_uid is None:
                rows = self._db.execute("SELECT * FROM snapshots ORDER BY id DESC").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM snapshots WHERE owner_uid=? ORDER BY id DESC", (owner_uid,)
                ).fetchall()
        return [self._snapshot(r) for r in rows]

    def all_snapshot_ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT id FROM snapshots")}

    def delete_snapshot(self, snapshot_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM snapshots WHERE id=?", (snapshot_id,))

    def set_label(self, snapshot_id: str, label: str | None) -> None:
        with self._tx() as db:
            db.execute("UPDATE snapshots SET label=? WHERE id=?", (label, snapshot_id))
