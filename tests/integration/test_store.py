"""The content-addressed store with real CRIU dumps: dedup, damage, gc, retention, lazy, du."""

from __future__ import annotations

import json
import os
import pwd
import threading
import time
from pathlib import Path

import pytest
import xxhash
from jusnap.errors import QuotaExceeded, RestoreFailed
from jusnap.registry import Snapshot
from jusnap.snapshots import Engine
from jusnap.store.local import MANIFEST, is_page_image

from tests.conftest import KERNEL_USER, Daemon, KernelSession, shutdown_all
from tests.helpers import connect, run_cell, wait_until

MiB = 1024 * 1024


def _snap(engine: Engine, kernel: KernelSession, **kw: object) -> Snapshot:
    s = engine.snapshot(kernel.id, **kw)
    assert isinstance(s, Snapshot), s
    engine.wait_stored()  # these tests read (or damage) what the store holds
    return s


def _new_bytes(engine: Engine, snap: Snapshot) -> int:
    return engine.store.read_manifest(snap.id).new_bytes


def test_second_snapshot_after_a_small_change_adds_little(
    kernel: KernelSession, engine: Engine
) -> None:
    kernel.run("import numpy as np; a = np.arange(8_000_000, dtype=float)")  # 64 MB
    first = _snap(engine, kernel)
    kernel.run("a[:80_000] += 1")  # 1% of the array: 640 KB of pages
    second = _snap(engine, kernel)
    assert first.size_bytes > 64 * MiB
    assert _new_bytes(engine, first) > 5 * MiB
    # What the cell changed plus the kernel's own churn (heap, stacks), compressed.
    assert _new_bytes(engine, second) < 3 * MiB, _new_bytes(engine, second)
    kernel.run("x = 1")  # a trivial cell: only the interpreter's churn, mostly stored as deltas
    third = _snap(engine, kernel)
    assert _new_bytes(engine, third) < 1.5 * MiB, _new_bytes(engine, third)
    (u,) = engine.storage.usage(first.owner_uid)
    assert u["snapshots"] == 3
    assert u["shared_bytes"] > 5 * u["unique_bytes"]
    assert u["stored_bytes"] < first.size_bytes / 2  # three 64+ MB images in < half of one
    engine.restore(first.id)
    kernel.after_restore()
    assert kernel.value("(a[0], a[80_000])") == "(np.float64(0.0), np.float64(80000.0))"
    engine.restore(second.id)
    kernel.after_restore()
    assert kernel.value("(a[0], a[80_000])") == "(np.float64(1.0), np.float64(80000.0))"


def test_damage_is_confined_to_the_snapshots_that_need_the_chunk(
    kernel: KernelSession, engine: Engine
) -> None:
    kernel.run("import numpy as np; a = np.arange(2_000_000, dtype=float); v = 'first'")
    first = _snap(engine, kernel)
    kernel.run("a[:200_000] = -1.0; v = 'second'")
    second = _snap(engine, kernel)
    kernel.run("v = 'current'")
    for s in (first, second):
        engine.hot.drop(s.id)  # restored from the store
    pack = engine.store.chunks(second.owner_uid).packs / f"{second.id}.pack"
    with pack.open("r+b") as fh:  # the pages only the second snapshot has
        fh.seek(pack.stat().st_size // 2)
        fh.write(b"\xde\xad\xbe\xef" * 64)
    pid = engine.kernels.get(kernel.id).pid
    with pytest.raises(RestoreFailed, match="checksum") as info:
        engine.restore(second.id)
        kernel.after_restore()
    assert "not touched" in info.value.message
    assert engine.kernels.get(kernel.id).pid == pid
    assert kernel.value("v") == "'current'"
    engine.restore(first.id)  # shares most pages, but not the damaged ones
    kernel.after_restore()
    assert kernel.value("(v, a[0])") == "('first', np.float64(0.0))"


def test_gc_running_concurrently_never_removes_a_needed_chunk(
    kernel: KernelSession, engine: Engine
) -> None:
    kernel.run("import numpy as np; a = np.zeros(4_000_000); i = 0")
    stop = threading.Event()
    errors: list[BaseException] = []
    runs = [0]

    def collector() -> None:
        try:
            while not stop.is_set():
                engine.storage.gc(kernel.kernel.owner_uid)
                runs[0] += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=collector)
    t.start()
    kept: list[tuple[Snapshot, int]] = []
    try:
        for i in range(6):
            kernel.run(f"i = {i}; a[{i} * 400_000:({i} + 1) * 400_000] = {i} + 1")
            s = _snap(engine, kernel)
            kept.append((s, i))
            if i % 2:  # delete one snapshot in two: its unique pages become garbage
                old = kept.pop(-2)[0]
                engine.delete_snapshot(old.id)
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert runs[0] >= 2, "gc really ran alongside"
    for s, _ in kept:  # every remaining snapshot's every page is there and verifies
        out = Path(engine.work_dir) / f"verify-{s.id}"
        out.mkdir()
        engine.store.stage_out(s.id, out, os.getuid(), os.getgid())
    s, i = kept[0]
    engine.restore(s.id)
    kernel.after_restore()
    assert kernel.value("(i, float(a.sum()))") == repr(
        (i, sum((j + 1) * 400_000.0 for j in range(i + 1)))
    )


def test_what_retention_spared_during_a_restore_goes_when_it_ends(make_settings) -> None:
    """Passes that run while a kernel's restore holds it (its last cells' commits) leave its
    snapshots alone; the restore's end applies them: an idle notebook does not keep
    keep_auto + 2 until its next cell."""
    e = Engine(make_settings(**{"jusnap.store.keep_auto": "2"})).start()
    ks = KernelSession(e)
    try:
        e._busy = lambda kernel_id: True  # type: ignore[method-assign]  # every pass spares
        autos = []
        for i in range(4):
            ks.run(f"x = {i}")
            autos.append(_snap(e, ks, trigger="auto"))
        assert len(e.list_snapshots(ks.id)) == 4, "the passes spared them"
        del e._busy  # the engine's own again
        e.restore(autos[3].id)  # the newest holds the state: no safety dump
        ks.after_restore()
        assert {s.id for s in e.list_snapshots(ks.id)} == {autos[2].id, autos[3].id}
        assert ks.value("x") == "3"
    finally:
        ks.close()
        shutdown_all(e)


def test_retention_keeps_what_it_promises(make_settings) -> None:
    e = Engine(make_settings(**{"jusnap.store.keep_auto": "2"})).start()
    ks = KernelSession(e)
    try:
        ks.run("x = 0")
        manual = _snap(e, ks)
        autos = []
        for i in range(4):
            ks.run(f"x = {i + 1}")
            autos.append(_snap(e, ks, trigger="auto"))
            if i == 0:
                e.relabel(autos[0].id, "keep me")
        left = {s.id for s in e.list_snapshots(ks.id)}
        assert left == {manual.id, autos[0].id, autos[2].id, autos[3].id}
        assert not Path(e.store.path(autos[1].id)).exists()
        (u,) = e.storage.usage(manual.owner_uid)
        assert u["garbage_bytes"] == 0, "gc ran after retention"
        # A restore's safety copy expires after pre_restore_ttl (a state no snapshot holds).
        ks.run("x = 'unsaved'")
        r = e.restore(autos[2].id)
        ks.after_restore()
        assert r.pre_restore is not None and r.pre_restore.trigger == "pre-restore"
        e.settings.jusnap.store.pre_restore_ttl = 0  # type: ignore[assignment]
        time.sleep(0.05)
        # The safety copy is stored in the background, under the kernel's lock: an automatic
        # snapshot that came now would be skipped ("another operation is running").
        e.wait_stored()
        wait_until(lambda: e.locks.current(ks.id) is None, 30, what="the kernel's lock free")
        newest = _snap(e, ks, trigger="auto")
        left = {s.id for s in e.list_snapshots(ks.id)}
        assert r.pre_restore.id not in left
        assert left == {manual.id, autos[0].id, autos[3].id, newest.id}
        assert ks.value("x") == "3"
    finally:
        ks.close()
        shutdown_all(e)


def test_size_cap_removes_oldest_automatic_snapshots(make_settings) -> None:
    e = Engine(make_settings(**{"jusnap.store.max_user_mb": "40"})).start()
    ks = KernelSession(e)
    try:
        ks.run("import numpy as np; rng = np.random.default_rng(0)")
        manual = _snap(e, ks)
        autos = []
        for _ in range(4):
            ks.run("b = rng.random(1_500_000)")  # 12 MB of new, incompressible pages each
            autos.append(_snap(e, ks, trigger="auto"))
        left = [s.id for s in e.list_snapshots(ks.id)]
        assert manual.id in left and autos[-1].id in left
        assert autos[0].id not in left
        (u,) = e.storage.usage(manual.owner_uid)
        assert u["stored_bytes"] <= 40 * MiB
    finally:
        ks.close()
        shutdown_all(e)


def test_quota_refuses_a_snapshot_that_cannot_fit(make_settings) -> None:
    """store.max_user_mb as a quota: when even retention cannot make room (manual snapshots
    stay), the new snapshot is not kept, the caller gets a readable 507, automatic ones leave
    the message where the notebook shows it, and the kernel runs on untouched."""
    e = Engine(
        make_settings(**{"jusnap.store.max_user_mb": "30", "jusnap.ipython.cooldown": "0s"})
    ).start()
    ks = KernelSession(e)
    try:
        ks.run("import numpy as np; rng = np.random.default_rng(0)")
        first = _snap(e, ks)
        ks.run("b = rng.random(4_000_000)")  # 32 MB of incompressible pages
        with pytest.raises(QuotaExceeded) as err:
            e.snapshot(ks.id)
        assert err.value.http_status == 507 and err.value.code == "quota_exceeded"
        assert "over your quota of 30 MB" in err.value.message, err.value.message
        assert [s.id for s in e.list_snapshots(ks.id)] == [first.id]
        (u,) = e.storage.usage(first.owner_uid)
        assert u["stored_bytes"] <= 30 * MiB and u["garbage_bytes"] == 0, u
        with pytest.raises(QuotaExceeded):
            e.snapshot(ks.id, trigger="auto")
        k = e.kernels.get(ks.id)
        assert "quota" in (e.auto_status(k)["last_error"] or "")
        assert ks.value("round(float(b.sum()) / len(b), 1)") == "0.5"  # the kernel is fine
        ks.run("del b")
        second = _snap(e, ks)  # room again
        assert {s.id for s in e.list_snapshots(ks.id)} == {first.id, second.id}
        # What was kept is whole: the refused snapshot's removal freed only its own pages.
        e.restore(first.id)
        ks.after_restore()
        assert ks.value("('b' in globals(), 'rng' in globals())") == "(False, True)"
    finally:
        ks.close()
        shutdown_all(e)


def test_lazy_restore_end_to_end(make_settings) -> None:
    """Lazy restore of a kernel CRIU restores privileged (root); unprivileged: test_lazy.py."""
    e = Engine(
        make_settings(**{"jusnap.os.uid": "root", "jusnap.store.lazy_pages": "true"})
    ).start()
    used = []
    real = e.criu.lazy_pages

    def spy(images: Path, work: Path, creds: object) -> object:
        used.append(images)
        return real(images, work, creds)  # type: ignore[arg-type]

    e.criu.lazy_pages = spy  # type: ignore[method-assign]
    ks = KernelSession(e)
    try:
        ks.run("import numpy as np; big = np.arange(30_000_000, dtype=float); tag = 'snap'")
        s = _snap(e, ks)
        ks.run("big[:] = 0; tag = 'later'")
        e.restore(s.id)
        ks.after_restore()
        assert used, "the restore went through criu lazy-pages"
        assert ks.value("(tag, float(big[-1]), float(big.sum()))") == repr(
            ("snap", 29_999_999.0, float(sum(range(30_000_000))))
        )
        # The server hands over every page, exits, and its images are removed.
        wait_until(lambda: not used[0].exists(), 60, what="the lazy-pages server to finish")
    finally:
        ks.close()
        shutdown_all(e)


def test_unprivileged_kernel_falls_back_to_eager_restore(make_settings) -> None:
    """Without jusnap.store.lazy_unprivileged (the default) a --unprivileged restore is eager."""
    e = Engine(make_settings(**{"jusnap.store.lazy_pages": "true"})).start()

    def no_lazy(*args: object) -> object:
        raise AssertionError("criu lazy-pages started for an unprivileged kernel")

    e.criu.lazy_pages = no_lazy  # type: ignore[method-assign]
    ks = KernelSession(e)
    try:
        ks.run("y = 'kept'")
        s = _snap(e, ks)
        ks.run("y = 'changed'")
        e.restore(s.id)
        ks.after_restore()
        assert ks.value("y") == "'kept'"
    finally:
        ks.close()
        shutdown_all(e)


def test_previous_layout_is_migrated_at_start(
    kernel: KernelSession, engine: Engine, make_settings
) -> None:
    kernel.run("z = 'from the old layout'")
    snap = _snap(engine, kernel)
    d = engine.store.path(snap.id)
    # Rewrite the snapshot as the previous store did: whole images, manifest version 1.
    engine.store.stage_out(snap.id, d, os.getuid(), os.getgid(), skip=None)
    files = []
    for p in sorted(d.iterdir()):
        if p.name == MANIFEST or p.name.endswith(".locs"):  # version 1 had no hints
            continue
        data = p.read_bytes()
        files.append({"name": p.name, "size": len(data),
                      "xxh3": xxhash.xxh3_128_hexdigest(data), "mode": 0o600})  # fmt: skip
    (d / MANIFEST).write_text(json.dumps({"version": 1, "files": files}))
    assert any(is_page_image(f["name"]) for f in files)
    kernel.run("z = 'new'")
    again = Engine(make_settings()).start()
    try:
        m = again.store.read_manifest(snap.id)
        assert m.version == 2 and m.owner == snap.owner_uid
        assert not any(is_page_image(p.name) for p in d.iterdir())
        again.restore(snap.id)
        kernel.after_restore()
        assert kernel.value("z") == "'from the old layout'"
    finally:
        again.close()


def test_cli_du_and_gc(daemon: Daemon) -> None:
    r = daemon.cli("--json", "start")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    kc = connect(info["connection"])
    try:
        run_cell(kc, "import numpy as np; a = np.arange(1_000_000, dtype=float)")
        for _ in range(2):
            assert daemon.cli("snapshot", info["id"]).returncode == 0
        r = daemon.cli("du")
        assert r.returncode == 0, r.stderr
        # The administrator's kernels run as (and belong to) the kernel user.
        owner = pwd.getpwnam(KERNEL_USER).pw_uid
        assert (
            "shared pages" in r.stdout and f"uid {owner} ({KERNEL_USER}): 2 snapshot(s)" in r.stdout
        )
        data = json.loads(daemon.cli("--json", "du").stdout)
        assert data["retention"]["keep_auto"] == 50
        (u,) = data["usage"]
        assert u["shared_bytes"] > u["unique_bytes"] and u["compression_ratio"] > 1
        # The hot tier's plain images: whole images, counted apart from the store's bytes.
        hot = [p for p in (daemon.state_dir / "hot").glob("*/*/*") if p.is_file()]
        assert u["hot_snapshots"] == 2 and u["hot_bytes"] >= u["logical_bytes"] * 0.9
        assert u["hot_bytes"] == sum(p.stat().st_blocks * 512 for p in hot)
        assert "hot tier" in r.stdout and "2 snapshot(s) also kept as plain images" in r.stdout
        snaps = json.loads(daemon.cli("--json", "snapshots", info["id"]).stdout)
        assert daemon.cli("rm", snaps[0]["id"]).returncode == 0
        r = daemon.cli("--json", "gc")
        assert r.returncode == 0, r.stderr
        (g,) = json.loads(r.stdout)["results"]
        assert g["chunks_removed"] > 0
        assert "freed" in daemon.cli("gc").stdout
        r = daemon.cli("--json", "gc", "--verify")
        assert r.returncode == 0, r.stderr
        (g,) = json.loads(r.stdout)["results"]
        assert g["verify"]["chunks_checked"] > 0 and g["verify"]["chunks_damaged"] == 0
    finally:
        kc.stop_channels()


def test_restore_from_the_hot_tier_and_from_the_store_give_the_same_state(
    kernel: KernelSession, engine: Engine
) -> None:
    """The hot tier (plain images of the newest snapshots) and the store restore the same
    state; the store is only read when the hot copy is gone. The pre-restore copy reaches the
    store after the restore, and the hot tier keeps the configured number of entries."""
    kernel.run("import numpy as np; a = np.arange(3_000_000, dtype=float); v = 'saved'")
    snap = _snap(engine, kernel)
    kernel.run("a[:] = 0; v = 'changed'")
    staged_out: list[str] = []
    real_stage_out = engine.store.stage_out

    def counting(snapshot_id: str, *args: object, **kw: object) -> None:
        staged_out.append(snapshot_id)
        real_stage_out(snapshot_id, *args, **kw)  # type: ignore[arg-type]

    engine.store.stage_out = counting  # type: ignore[method-assign]
    values = []
    for tier in ("hot", "store"):
        if tier == "store":
            engine.hot.drop(snap.id)
        result = engine.restore(snap.id)
        kernel.after_restore()
        values.append(kernel.value("(v, float(a.sum()), a[12345])"))
        assert (snap.id in staged_out) == (tier == "store"), (tier, staged_out)
        pre = result.pre_restore
        assert pre is not None
        engine.wait_stored()
        assert engine.store.exists(pre.id)
        entry = engine.hot.get(pre.id)
        assert entry is None or not entry.pending
        kernel.run("a[:] = 0; v = 'changed'")
    assert (
        values[0] == values[1] == f"('saved', {float(sum(range(3_000_000)))}, np.float64(12345.0))"
    )
    for _ in range(3):
        _snap(engine, kernel)
    mine = [e for e in engine.hot.entries() if e.snapshot.get("kernel_id") == kernel.id]
    assert len(mine) == engine.settings.jusnap.store.hot_snapshots, [e.id for e in mine]
