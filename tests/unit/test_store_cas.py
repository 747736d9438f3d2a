"""The content-addressed store without CRIU: dedup, integrity, gc under concurrency, retention."""

from __future__ import annotations

import json
import os
import random
import struct
import threading
from pathlib import Path

import pytest
from jusnap.config import StoreSettings
from jusnap.errors import ConfigError, RestoreFailed
from jusnap.registry import Snapshot
from jusnap.store import gc, hints, local, retention
from jusnap.store.cas import MAX_DELTA_DEPTH, PAGE, split_lists
from jusnap.store.local import MANIFEST, LocalStore
from jusnap.store.migrate import migrate
from jusnap.store.service import StoreService
from jusnap.store.usage import references, usage

from tests.criu_craft import varint as _varint

IDS = iter(f"01M8AQ{i:020d}" for i in range(10**6))


def new_id() -> str:
    return next(IDS)


def pages(seed: int, n: int, zero_every: int = 0) -> bytes:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if zero_every and i % zero_every == 0:
            out.append(bytes(PAGE))
        else:
            out.append(rng.randbytes(64) * (PAGE // 64))  # compressible, distinct per page
    return b"".join(out)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    s = LocalStore(tmp_path / "snapshots", threads=2)
    s.ensure()
    return s


def dump(tmp_path: Path, data: bytes, core: bytes = b"core") -> Path:
    d = tmp_path / f"dump-{new_id()}"
    d.mkdir()
    (d / "pages-1.img").write_bytes(data)
    (d / "core-1.img").write_bytes(core)
    (d / "files.img").write_bytes(b"files" * 100)  # a small image: one chunk, shared
    return d


def stage(store: LocalStore, sid: str, tmp_path: Path) -> dict[str, bytes]:
    out = tmp_path / f"out-{new_id()}"
    out.mkdir()
    store.stage_out(sid, out, os.getuid(), os.getgid())
    return {p.name: p.read_bytes() for p in out.iterdir()}


def test_round_trip_and_dedup(store: LocalStore, tmp_path: Path) -> None:
    a = pages(1, 600, zero_every=7)
    s1 = new_id()
    assert store.commit(s1, dump(tmp_path, a), owner=1000) == len(a) + 4 + 500
    b = bytearray(a)
    b[100 * PAGE : 106 * PAGE] = pages(2, 6)  # 1% of the pages change
    b[300 * PAGE : 300 * PAGE] = pages(3, 2)  # and two pages appear in the middle
    s2 = new_id()
    store.commit(s2, dump(tmp_path, bytes(b)), owner=1000)
    assert stage(store, s1, tmp_path) == {
        "pages-1.img": a,
        "core-1.img": b"core",
        "files.img": b"files" * 100,
    }
    # Page images are not kept whole: their pages are chunks; the hints say where s1's lie.
    assert sorted(p.name for p in store.path(s1).iterdir()) == [
        "core-1.img",
        MANIFEST,
        "pages-1.img.locs",
    ]
    assert stage(store, s2, tmp_path)["pages-1.img"] == bytes(b)
    m1, m2 = store.read_manifest(s1), store.read_manifest(s2)
    # Only the 8 new pages (compressed) and a few hash blocks are new.
    assert 0 < m2.new_bytes < m1.new_bytes / 20
    u = usage(store, 1000)
    assert u["snapshots"] == 2 and u["shared_bytes"] > 10 * u["unique_bytes"]
    assert u["compression_ratio"] > 4
    # Modes: daemon only.
    cs = store.chunks(1000)
    assert (cs.root.stat().st_mode & 0o777) == 0o700
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in cs.packs.iterdir())
    assert (store.path(s1) / MANIFEST).stat().st_mode & 0o777 == 0o600


def test_owners_do_not_share(store: LocalStore, tmp_path: Path) -> None:
    a = pages(1, 100)
    store.commit(new_id(), dump(tmp_path, a), owner=1000)
    s2 = new_id()
    store.commit(s2, dump(tmp_path, a), owner=1001)
    # The second user stores everything again: nothing tells them the first has these bytes.
    assert store.read_manifest(s2).new_bytes >= usage(store, 1000)["stored_bytes"] * 0.9
    assert store.owners() == [1000, 1001]


@pytest.mark.parametrize("how", ["none", "missing", "garbage", "shifted", "moved"])
def test_location_hints_are_only_hints(
    store: LocalStore, tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshots without hints (older stores), with damaged or stale hints (chunks moved by
    garbage collection) rebuild through the index, page for page verified."""
    a = pages(8, 700, zero_every=5)
    a = a[: 200 * PAGE] + random.Random(9).randbytes(300 * PAGE) + a[200 * PAGE :]  # raw pages
    sid = new_id()
    store.commit(sid, dump(tmp_path, a), owner=11)
    locs = store.path(sid) / f"pages-1.img{hints.SUFFIX}"
    found = hints.parse(locs.read_bytes(), len(a) // PAGE, PAGE)
    assert found is not None and sum(n for _, n, _, _ in found.runs) > 800
    if how == "missing":
        locs.unlink()
    elif how == "garbage":
        locs.write_bytes(locs.read_bytes()[:-7] + b"garbage")
    elif how == "shifted":  # every run points one page further into the pack
        data = bytearray(locs.read_bytes())
        end = len(data) - 2 * len(found.clens)
        for i in range(len(found.runs)):
            at = end - (len(found.runs) - i) * 20 + 12
            struct.pack_into("<Q", data, at, struct.unpack_from("<Q", data, at)[0] + PAGE)
        locs.write_bytes(bytes(data))
        assert hints.parse(bytes(data), len(a) // PAGE, PAGE) is not None
    elif how == "moved":  # what a collection does to a pack holding garbage
        gc._compact(store.chunks(11), f"{sid}.pack")
        assert not (store.chunks(11).packs / f"{sid}.pack").exists()
    fallbacks = []
    original = local._Stager._fallback
    monkeypatch.setattr(
        local._Stager, "_fallback", lambda self, *a: fallbacks.append(a) or original(self, *a)
    )
    assert stage(store, sid, tmp_path)["pages-1.img"] == a
    assert bool(fallbacks) == (how in ("shifted", "moved"))


@pytest.mark.parametrize("how", ["flip", "truncate", "delete-pack"])
def test_damaged_chunk_fails_staging(store: LocalStore, tmp_path: Path, how: str) -> None:
    sid = new_id()
    store.commit(sid, dump(tmp_path, pages(5, 300)), owner=7)
    (pack,) = list(store.chunks(7).packs.iterdir())
    if how == "flip":
        with pack.open("r+b") as fh:
            fh.seek(pack.stat().st_size // 2)
            byte = fh.read(1)
            fh.seek(-1, 1)
            fh.write(bytes([byte[0] ^ 0xFF]))
    elif how == "truncate":
        os.truncate(pack, pack.stat().st_size // 2)
    else:
        pack.unlink()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RestoreFailed, match="damaged"):
        store.stage_out(sid, out, os.getuid(), os.getgid())
    assert not [p for p in out.iterdir() if p.name.startswith("pages")], "no garbage left"


def test_raw_chunks_for_incompressible_pages(store: LocalStore, tmp_path: Path) -> None:
    data = os.urandom(50 * PAGE)
    sid = new_id()
    store.commit(sid, dump(tmp_path, data), owner=3)
    assert stage(store, sid, tmp_path)["pages-1.img"] == data
    _n, clen, ulen = store.chunks(3).sizes()
    assert clen <= ulen + 2 * PAGE  # stored raw, not inflated by zstd framing


def test_content_defined_hash_blocks_survive_insertions() -> None:
    digests = [random.Random(i).randbytes(16) for i in range(20000)]
    before = set(split_lists(digests))
    after = set(split_lists([*digests[:50], b"\x01" * 16, *digests[50:]]))
    assert len(after - before) <= 2  # the block with the insertion, not everything after it


def test_gc_removes_only_unreferenced(store: LocalStore, tmp_path: Path) -> None:
    a, b = pages(1, 200), pages(2, 200)
    s1, s2 = new_id(), new_id()
    store.commit(s1, dump(tmp_path, a), owner=5)
    store.commit(s2, dump(tmp_path, a[: 100 * PAGE] + b[: 100 * PAGE]), owner=5)
    store.delete(s1)
    res = gc.collect(store, 5, compact_below=0.9)
    assert res.chunks_removed >= 99 and res.bytes_freed > 0
    assert stage(store, s2, tmp_path)["pages-1.img"] == a[: 100 * PAGE] + b[: 100 * PAGE]
    assert usage(store, 5)["garbage_bytes"] == 0
    store.delete(s2)
    assert gc.collect(store, 5).store_removed  # nothing left: no packs, no index
    assert not store.chunks(5).root.exists()


def test_gc_concurrent_with_commits_never_loses_a_needed_chunk(
    store: LocalStore, tmp_path: Path
) -> None:
    """Commits reuse chunks while gc sweeps the snapshots deleted meanwhile."""
    base = pages(9, 300)
    kept: list[tuple[str, bytes]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def collector() -> None:
        try:
            while not stop.is_set():
                gc.collect(store, 9, compact_below=0.99)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=collector)
    t.start()
    try:
        prev: str | None = None
        for i in range(25):
            data = bytearray(base)
            data[i * PAGE : (i + 3) * PAGE] = pages(100 + i, 3)
            sid = new_id()
            store.commit(sid, dump(tmp_path, bytes(data)), owner=9)
            kept.append((sid, bytes(data)))
            if prev and i % 2:
                store.delete(prev)  # every other snapshot goes: its unique chunks become garbage
                kept = [k for k in kept if k[0] != prev]
            prev = sid
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    gc.collect(store, 9, compact_below=0.99)
    for sid, data in kept:
        assert stage(store, sid, tmp_path)["pages-1.img"] == data


def snap(sid: str, trigger: str, created: float, label: str | None = None,
         nb: str = "a.ipynb", owner: int = 1) -> Snapshot:  # fmt: skip
    return Snapshot(sid, "k1", owner, nb, created, trigger, label, 100, 0.1, 1, 1, "", False, {})


def test_retention_keeps_what_it_promises() -> None:
    snaps = [snap(f"a{i}", "auto", i) for i in range(6)]
    snaps += [snap("m", "manual", 0.5), snap("l", "auto", 0.2, label="keep me")]
    snaps += [snap("p-old", "pre-restore", 1), snap("p-new", "pre-restore", 995)]
    snaps += [snap(f"b{i}", "auto", i, nb="b.ipynb") for i in range(2)]
    policy = retention.Policy(keep_auto=3, pre_restore_ttl=100)
    doomed = retention.by_count_and_age(snaps, policy, now=1000, protect={"a0"})
    assert sorted(doomed) == ["a1", "a2", "p-old"]


def test_size_cap_removes_oldest_auto_first(store: LocalStore, tmp_path: Path) -> None:
    ids = []
    for i in range(4):
        sid = new_id()
        store.commit(sid, dump(tmp_path, os.urandom(40 * PAGE)), owner=4)  # ~160 KiB each
        ids.append(sid)
    snaps = [snap(sid, "auto", i, owner=4) for i, sid in enumerate(ids)]
    snaps[0] = snap(ids[0], "manual", 0, owner=4)
    cs = store.chunks(4)
    refs = references(store, cs, 4)
    sizes = {h: c for h, _p, c, _u in cs.all_rows()}
    policy = retention.Policy(max_user_bytes=350 * 1024)
    doomed = retention.by_size(snaps, refs, sizes, policy, protect={ids[3]})
    assert doomed == [ids[1], ids[2]]  # the manual one and the newest stay


def test_size_plan_reports_what_cannot_fit(store: LocalStore, tmp_path: Path) -> None:
    """Only manual snapshots over the cap: nothing to remove, and the total says it is over
    (the store service then refuses the new snapshot: the user's quota)."""
    ids = []
    for _ in range(3):
        sid = new_id()
        store.commit(sid, dump(tmp_path, os.urandom(40 * PAGE)), owner=5)
        ids.append(sid)
    snaps = [snap(sid, "manual", i, owner=5) for i, sid in enumerate(ids)]
    cs = store.chunks(5)
    refs = references(store, cs, 5)
    sizes = {h: c for h, _p, c, _u in cs.all_rows()}
    doomed, total = retention.plan_size(
        snaps, refs, sizes, retention.Policy(max_user_bytes=200 * 1024), {ids[-1]}
    )
    assert doomed == [] and total > 3 * 40 * PAGE
    # Without a cap nothing goes either, and the total is the same.
    assert retention.plan_size(snaps, refs, sizes, retention.Policy(), set()) == ([], total)


def test_migration_of_version_1_snapshots(store: LocalStore, tmp_path: Path) -> None:
    import xxhash

    sid = new_id()
    d = store.path(sid)
    d.mkdir(mode=0o700)
    data = pages(4, 50)
    (d / "pages-1.img").write_bytes(data)
    (d / "core-1.img").write_bytes(b"core")
    files = [{"name": n, "size": len(b), "xxh3": xxhash.xxh3_128_hexdigest(b), "mode": 0o600}
             for n, b in (("pages-1.img", data), ("core-1.img", b"core"))]  # fmt: skip
    (d / MANIFEST).write_text(json.dumps({"version": 1, "files": files}))
    assert migrate(store, {sid: 42}) == 1
    assert sorted(p.name for p in d.iterdir()) == ["core-1.img", MANIFEST]
    assert store.read_manifest(sid).owner == 42
    assert stage(store, sid, tmp_path) == {"pages-1.img": data, "core-1.img": b"core"}
    assert migrate(store, {sid: 42}) == 0  # idempotent


def test_newer_store_is_refused(store: LocalStore) -> None:
    sid = new_id()
    store.path(sid).mkdir()
    (store.path(sid) / MANIFEST).write_text(json.dumps({"version": 3, "files": []}))
    with pytest.raises(ConfigError, match="newer jusnap"):
        migrate(store, {sid: 1})


def _msg(fields: dict[int, int]) -> bytes:
    body = b"".join(_varint(k << 3) + _varint(v) for k, v in fields.items())
    return len(body).to_bytes(4, "little") + body


def dump_with_pagemap(tmp_path: Path, data: bytes, vaddr: int = 0x7F0000000000) -> Path:
    """A dump whose one process (pid 100) maps ``data`` contiguously at ``vaddr``."""
    d = dump(tmp_path, data)
    magics = struct.pack("<II", 0x54564319, 0x56084025)  # IMG_COMMON_MAGIC, PAGEMAP_MAGIC
    pm = magics + _msg({1: 1}) + _msg({1: vaddr, 4: 4, 5: len(data) // PAGE})
    (d / "pagemap-100.img").write_bytes(pm)
    return d


def test_pages_changed_by_a_few_bytes_are_stored_as_deltas(
    store: LocalStore, tmp_path: Path
) -> None:
    rng = random.Random(3)
    base = bytearray(rng.randbytes(200 * PAGE))  # incompressible: only deltas can help
    versions = []
    for i in range(10):  # longer than the delta chain limit
        for p in range(0, 200, 3):  # a third of the pages get 8 bytes changed
            off = p * PAGE + rng.randrange(PAGE - 8)
            base[off : off + 8] = rng.randbytes(8)
        sid = new_id()
        store.commit(sid, dump_with_pagemap(tmp_path, bytes(base)), owner=11)
        versions.append((sid, bytes(base)))
    first = store.read_manifest(versions[0][0]).new_bytes
    later = [store.read_manifest(s).new_bytes for s, _ in versions[1:]]
    # 67 changed pages of 4 KiB each: ~270 KiB whole, a few KiB as deltas; once per
    # MAX_DELTA_DEPTH snapshots a chain is too long and the pages are stored whole again.
    small = [n for n in later if n < first / 50]
    assert len(small) >= len(later) - len(later) // MAX_DELTA_DEPTH, (first, later)
    for sid, data in versions:
        assert stage(store, sid, tmp_path)["pages-1.img"] == data
    # Deleting the snapshots the deltas are based on keeps the bases alive.
    for sid, _ in versions[:-1]:
        store.delete(sid)
    gc.collect(store, 11, compact_below=0.99)
    assert stage(store, versions[-1][0], tmp_path)["pages-1.img"] == versions[-1][1]
    assert usage(store, 11)["garbage_bytes"] == 0


def test_damaged_delta_base_fails_cleanly(store: LocalStore, tmp_path: Path) -> None:
    data = bytearray(random.Random(4).randbytes(20 * PAGE))
    s1 = new_id()
    store.commit(s1, dump_with_pagemap(tmp_path, bytes(data)), owner=12)
    data[100:108] = b"\xff" * 8
    s2 = new_id()
    store.commit(s2, dump_with_pagemap(tmp_path, bytes(data)), owner=12)
    with (store.chunks(12).packs / f"{s1}.pack").open("r+b") as fh:
        fh.seek(10)  # inside the first page: the base of the second snapshot's delta
        fh.write(b"\x00" * 16)
    out = tmp_path / "out-delta"
    out.mkdir()
    with pytest.raises(RestoreFailed, match="checksum"):
        store.stage_out(s2, out, os.getuid(), os.getgid())


def test_scrub_finds_damage_and_later_snapshots_heal(store: LocalStore, tmp_path: Path) -> None:
    data = pages(21, 100)
    s1 = new_id()
    store.commit(s1, dump(tmp_path, data), owner=13)
    (pack,) = list(store.chunks(13).packs.iterdir())
    with pack.open("r+b") as fh:
        fh.seek(pack.stat().st_size // 3)
        fh.write(b"\x00" * 64)
    out = tmp_path / "out-scrub"
    out.mkdir()
    with pytest.raises(RestoreFailed, match="damaged"):
        store.stage_out(s1, out, os.getuid(), os.getgid())
    report = gc.scrub(store, 13)
    assert report["chunks_damaged"] >= 1 and report["snapshots_damaged"] == [s1]
    s2 = new_id()  # the same pages again: the damaged ones are stored anew
    store.commit(s2, dump(tmp_path, data), owner=13)
    assert stage(store, s2, tmp_path)["pages-1.img"] == data
    assert gc.scrub(store, 13)["chunks_damaged"] == 0  # the damaged copy was forgotten
    # Content addressing heals the first snapshot too: its pages are whole in the store again.
    assert stage(store, s1, tmp_path)["pages-1.img"] == data


# ---- issue 15: the index shrinks with the data, gc frees what is unreferenced -------------


def test_gc_shrinks_the_index_and_removes_the_store_of_an_owner_with_nothing_left(
    store: LocalStore, tmp_path: Path
) -> None:
    service = StoreService(store, StoreSettings())
    ids = []
    for i in range(6):  # ~7000 distinct pages: an index of a few MB, WAL included
        sid = new_id()
        store.commit(sid, dump(tmp_path, pages(40 + i, 1200)), owner=21)
        ids.append(sid)
    cs = store.chunks(21)
    (u,) = service.usage(21)
    full = u["index_bytes"]
    assert full == cs.index_bytes() > 1024 * 1024, "du counts the index and its WAL"
    assert u["disk_bytes"] >= u["index_bytes"] + cs.pack_bytes()
    for sid in ids[1:]:
        store.delete(sid)
    (res,) = service.gc(21)
    assert res["index_bytes_freed"] > 0 and not res["store_removed"]
    assert (cs.root / "index.db-wal").stat().st_size == 0, "WAL checkpointed and truncated"
    (u,) = service.usage(21)
    assert u["index_bytes"] < full / 4, (u, full)  # one snapshot's rows, not six
    assert stage(store, ids[0], tmp_path)["pages-1.img"] == pages(40, 1200)
    store.delete(ids[0])
    (res,) = service.gc(21)
    assert res["store_removed"] and res["bytes_freed"] > 0
    assert not cs.root.exists() and store.owners() == []
    assert service.usage(21) == [] and service.gc(21) == [], "asking does not re-create it"
    # The owner snapshots again: the store comes back, through the object held all along.
    sid = new_id()
    store.commit(sid, dump(tmp_path, pages(50, 100)), owner=21)
    assert stage(store, sid, tmp_path)["pages-1.img"] == pages(50, 100)
    assert store.owners() == [21]


def test_store_removal_never_loses_a_concurrent_commit(store: LocalStore, tmp_path: Path) -> None:
    """gc removes the empty store over and over while snapshots are taken and deleted."""
    errors: list[BaseException] = []
    stop = threading.Event()
    removed = [0]

    def collector() -> None:
        try:
            while not stop.is_set():
                removed[0] += gc.collect(store, 22).store_removed
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=collector)
    t.start()
    try:
        for i in range(30):
            data = pages(200 + i, 40)
            sid = new_id()
            store.commit(sid, dump(tmp_path, data), owner=22)
            assert stage(store, sid, tmp_path)["pages-1.img"] == data
            store.delete(sid)
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert removed[0] >= 2, "the store really was removed in between"


def test_explicit_gc_frees_garbage_inside_packs_that_are_still_mostly_live(
    store: LocalStore, tmp_path: Path
) -> None:
    """The first snapshot's pack holds most pages; deleting it leaves a quarter of it dead."""
    service = StoreService(store, StoreSettings())
    a = pages(60, 400)
    s1, s2 = new_id(), new_id()
    store.commit(s1, dump(tmp_path, a), owner=23)
    second = a[: 300 * PAGE] + pages(61, 100)
    store.commit(s2, dump(tmp_path, second), owner=23)
    store.delete(s1)
    (u,) = service.usage(23)
    assert u["garbage_bytes"] > 0
    auto = gc.collect(store, 23)  # after retention: the pack stays, and gc says so
    assert auto.garbage_left_bytes > 0 and auto.packs_left == 1
    assert service.usage(23)[0]["garbage_bytes"] == auto.garbage_left_bytes
    (res,) = service.gc(23)  # asked for: everything unreferenced goes now
    assert res["packs_compacted"] == 1 and res["garbage_left_bytes"] == 0
    assert res["bytes_freed"] >= auto.garbage_left_bytes
    assert service.usage(23)[0]["garbage_bytes"] == 0
    assert stage(store, s2, tmp_path)["pages-1.img"] == second


def test_gc_reports_pages_kept_only_as_delta_bases(store: LocalStore, tmp_path: Path) -> None:
    """A deleted snapshot's pages that a later snapshot's deltas need are said, not hidden."""
    data = bytearray(random.Random(24).randbytes(100 * PAGE))
    s1, s2 = new_id(), new_id()
    store.commit(s1, dump_with_pagemap(tmp_path, bytes(data)), owner=24)
    for p in range(100):
        data[p * PAGE + 10 : p * PAGE + 18] = b"\x01" * 8
    store.commit(s2, dump_with_pagemap(tmp_path, bytes(data)), owner=24)
    store.delete(s1)
    (res,) = StoreService(store, StoreSettings()).gc(24)
    assert res["delta_base_bytes"] >= 90 * PAGE, res
    assert stage(store, s2, tmp_path)["pages-1.img"] == bytes(data)


def test_a_commit_cut_short_can_be_made_again_under_the_same_id(
    store: LocalStore, tmp_path: Path
) -> None:
    """A daemon killed during a background commit leaves that commit's pack behind; the next
    start commits the same snapshot id again (from its hot-tier entry), into a pack of its own."""
    sid = new_id()
    data = pages(7, 64)
    cs = store.chunks(0)
    (cs.packs / f"{sid}.pack").write_bytes(b"half a commit")  # what the killed commit left
    store.commit(sid, dump(tmp_path, data))
    assert (cs.packs / f"{sid}.pack").read_bytes() == b"half a commit"  # left to gc
    assert stage(store, sid, tmp_path)["pages-1.img"] == data


def test_zero_pages_stay_holes_and_pieces_reuse_one_buffer(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image read in many pieces (one reused buffer) and staged in many runs (pwritev,
    several threads) comes back byte for byte; its zero pages are holes, not written."""
    from jusnap.store import local

    monkeypatch.setattr(local, "READ_PIECE", 7 * PAGE)
    monkeypatch.setattr(local, "STAGE_PIECE", 5)
    data = bytearray(pages(11, 300, zero_every=3))
    data[50 * PAGE : 250 * PAGE] = bytes(200 * PAGE)  # a long run of zero pages
    data[280 * PAGE :] = os.urandom(20 * PAGE)  # raw chunks too
    sid = new_id()
    store.commit(sid, dump(tmp_path, bytes(data)), owner=9)
    again = new_id()
    store.commit(again, dump(tmp_path, bytes(data)), owner=9)  # every page known
    for s in (sid, again):
        out = tmp_path / f"out-{s}"
        out.mkdir()
        store.stage_out(s, out, os.getuid(), os.getgid())
        img = out / "pages-1.img"
        assert img.read_bytes() == bytes(data)
        assert img.stat().st_blocks * 512 < len(data) - 150 * PAGE, "zero pages are holes"


def test_du_counts_a_snapshots_location_hints_with_its_manifest(
    store: LocalStore, tmp_path: Path
) -> None:
    """The hints beside a manifest (2 bytes per page a snapshot added) are on disk: du and the
    quota count them."""
    service = StoreService(store, StoreSettings())
    sid = new_id()
    store.commit(sid, dump(tmp_path, pages(77, 3000)), owner=24)
    side = [p for p in store.path(sid).iterdir() if p.name.endswith(".locs")]
    assert side, "the snapshot's new pages have location hints"
    want = sum(p.stat().st_size for p in side) + (store.path(sid) / MANIFEST).stat().st_size
    (u,) = service.usage(24)
    (per,) = u["per_snapshot"]
    assert u["whole_file_bytes"] >= want and per["unique_bytes"] >= want, (u, want)
