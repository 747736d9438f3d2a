"""The snapshot store: space used (``jusnap du``), retention settings, garbage collection.

A user sees and collects only their own store (snapshots are stored per owner uid); the
administrator sees every owner's.
"""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint, Schema
from apiflask.fields import Boolean, Float, Integer, List, Nested, String
from marshmallow import RAISE

from .auth import identity
from .deps import engine
from .docs import errors

bp = APIBlueprint("store", __name__)


class RetentionOut(Schema):
    keep_auto = Integer(metadata={"description": "automatic snapshots kept per notebook"})
    max_user_mb = Integer(metadata={"description": "space cap per user in MB (0: none)"})
    pre_restore_ttl = Float(metadata={"description": "seconds pre-restore copies are kept"})
    gc_after_retention = Boolean()
    compression_level = Integer()
    lazy_pages = String()
    lazy_threshold_mb = Integer()
    chunk_bytes = Integer()


class SnapshotUsageOut(Schema):
    id = String()
    logical_bytes = Integer()
    unique_bytes = Integer(metadata={"description": "bytes freed if only it were deleted"})


class UsageOut(Schema):
    owner_uid = Integer()
    snapshots = Integer()
    logical_bytes = Integer(metadata={"description": "sum of the snapshots' image sizes"})
    stored_bytes = Integer(metadata={"description": "bytes the snapshots need, after dedup"})
    disk_bytes = Integer(metadata={"description": "bytes on disk, garbage included"})
    unique_bytes = Integer(metadata={"description": "page bytes used by one snapshot only"})
    shared_bytes = Integer(metadata={"description": "page bytes used by several snapshots"})
    whole_file_bytes = Integer(
        metadata={
            "description": "images kept as whole files, with each snapshot's manifest and"
            " location hints"
        }
    )
    index_bytes = Integer(
        metadata={"description": "the chunk index on disk (SQLite database, WAL included)"}
    )
    hash_block_bytes = Integer(
        metadata={"description": "stored hash blocks, small images and delta bases"}
    )
    garbage_bytes = Integer(metadata={"description": "unreferenced bytes gc would free"})
    pages_stored = Integer()
    compression_ratio = Float(allow_none=True)
    dedup_ratio = Float(allow_none=True)
    per_snapshot = List(Nested(SnapshotUsageOut))
    hot_snapshots = Integer(
        metadata={"description": "snapshots also kept as plain images for fast restores"}
    )
    hot_bytes = Integer(
        metadata={"description": "bytes on disk of those plain images (not in disk_bytes)"}
    )


class StoreOut(Schema):
    retention = Nested(RetentionOut)
    usage = List(Nested(UsageOut))


class VerifyOut(Schema):
    owner_uid = Integer()
    chunks_checked = Integer()
    chunks_damaged = Integer()
    snapshots_damaged = List(String(), allow_none=True)
    seconds = Float()


class GcResultOut(Schema):
    owner_uid = Integer()
    chunks_removed = Integer()
    packs_removed = Integer()
    packs_compacted = Integer()
    bytes_freed = Integer(metadata={"description": "packs and index together"})
    index_bytes_freed = Integer(metadata={"description": "of which the chunk index"})
    garbage_left_bytes = Integer(
        metadata={
            "description": "unreferenced bytes left inside packs that are mostly live"
            " (only after retention; an explicit gc rewrites every such pack)"
        }
    )
    packs_left = Integer(metadata={"description": "packs holding garbage_left_bytes"})
    delta_base_bytes = Integer(
        metadata={
            "description": "chunks no snapshot lists but live deltas are based on;"
            " freed with the last snapshot whose deltas need them"
        }
    )
    store_removed = Boolean(
        metadata={"description": "the owner had nothing left: its chunk store was removed"}
    )
    seconds = Float()
    verify = Nested(VerifyOut)


class GcIn(Schema):
    verify = Boolean(
        load_default=False,
        metadata={"description": "also read back every chunk and forget damaged ones"},
    )


class GcOut(Schema):
    results = List(Nested(GcResultOut))


ERRORS = errors()  # documented auth errors; bodies are ErrorOut (HTTP_ERROR_SCHEMA)


@bp.get("")
@bp.output(StoreOut)
@bp.doc(summary="Space used and retention settings", responses=errors())
def store_usage() -> dict[str, Any]:
    storage = engine().storage
    engine().wait_stored(identity().owner)  # snapshots still being stored count too
    usage = storage.usage(identity().owner, engine().hot)
    return {"retention": storage.public_settings(), "usage": usage}


@bp.post("/gc")
@bp.input(GcIn, location="query", arg_name="query", unknown=RAISE)  # webargs: EXCLUDE
@bp.output(GcOut)
@bp.doc(summary="Collect unreferenced pages", responses=errors(400, 422))
def store_gc(query: dict[str, Any]) -> dict[str, Any]:
    engine().wait_stored(identity().owner)
    return {"results": engine().storage.gc(identity().owner, verify=query.get("verify", False))}
