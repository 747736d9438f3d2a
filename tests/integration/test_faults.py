"""Faults: damaged images, a full store, a daemon killed mid-dump. The user's kernel survives."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from jusnap.criu_images import CORE_MAGIC, entries
from jusnap.errors import RestoreFailed, StoreFull
from jusnap.registry import Snapshot
from jusnap.snapshots import Engine

from tests.conftest import Daemon, KernelSession, make_state_dir, shutdown_all
from tests.criu_craft import decode, encode, image, rewrite_stored
from tests.helpers import connect, run_cell, wait_until


def _snap(engine: Engine, kernel: KernelSession) -> Snapshot:
    s = engine.snapshot(kernel.id)
    assert isinstance(s, Snapshot)
    engine.wait_stored()  # these tests read (or damage) what the store holds
    return s


def _biggest_image(engine: Engine, snap: Snapshot) -> Path:
    """The pack holding most of the snapshot's pages (the store keeps pages by content); the
    snapshot's hot-tier copy is dropped, so that its restore reads the store."""
    engine.hot.drop(snap.id)
    packs = engine.store.chunks(snap.owner_uid).packs
    return max(packs.iterdir(), key=lambda f: f.stat().st_size)


def test_truncated_image_fails_cleanly_and_state_is_back(
    kernel: KernelSession, engine: Engine
) -> None:
    kernel.run("x = 'snapshot state'")
    snap = _snap(engine, kernel)
    kernel.run("x = 'current state'")
    pages = _biggest_image(engine, snap)
    with pages.open("r+b") as fh:
        fh.truncate(pages.stat().st_size // 2)
    pid_before, started_before = (
        engine.kernels.get(kernel.id).pid,
        engine.kernels.get(kernel.id).started,
    )
    with pytest.raises(RestoreFailed, match="damaged") as info:
        engine.restore(snap.id)
    assert info.value.details["rolled_back"] is True
    # Verified before anything was stopped: the very same process is still running.
    assert (engine.kernels.get(kernel.id).pid, engine.kernels.get(kernel.id).started) == (
        pid_before,
        started_before,
    )
    assert kernel.value("x") == "'current state'"


def test_corrupted_image_fails_cleanly_and_state_is_back(
    kernel: KernelSession, engine: Engine
) -> None:
    kernel.run("import numpy as np; arr = np.full(1_000_000, 7.0)")
    snap = _snap(engine, kernel)
    kernel.run("arr[:] = 1.0")
    pages = _biggest_image(engine, snap)
    with pages.open("r+b") as fh:
        fh.seek(pages.stat().st_size // 2)
        fh.write(b"\xde\xad\xbe\xef" * 256)
    pid_before = engine.kernels.get(kernel.id).pid
    with pytest.raises(RestoreFailed, match="checksum") as info:
        engine.restore(snap.id)
    assert "not touched" in info.value.message
    assert engine.kernels.get(kernel.id).pid == pid_before
    assert kernel.value("float(arr.sum())") == "1000000.0"
    assert [s.trigger for s in engine.list_snapshots(kernel.id)] == ["manual"], (
        "no stray pre-restore"
    )


def test_criu_failure_after_stop_rolls_back(kernel: KernelSession, engine: Engine) -> None:
    """An image that passes the checksum but that CRIU rejects: the pre-restore state returns."""
    kernel.run("y = 'before restore'")
    snap = _snap(engine, kernel)
    kernel.run("y = 'must survive'")
    # Rewrite a core image consistently (manifest updated) so only CRIU can notice: the same
    # credentials (the image checks pass) but no registers (thread_info), which CRIU refuses.
    path = engine.store.path(snap.id)
    core = next(path.glob("core-*.img"))
    engine.hot.drop(snap.id)  # restored from the store, where the image is rewritten

    def other_arch(data: bytes) -> bytes:
        (entry,) = entries(data, CORE_MAGIC)
        fields = [(n, w, v) for n, w, v in decode(entry) if n != 2]
        return image(CORE_MAGIC, [encode(fields)])

    rewrite_stored(path, core.name, other_arch)
    with pytest.raises(RestoreFailed) as info:
        engine.restore(snap.id)
    assert info.value.details["rolled_back"] is True
    assert "put back as it was" in info.value.message
    kernel.after_restore()
    assert kernel.value("y") == "'must survive'"
    # and the kernel keeps working for snapshots and restores
    good = _snap(engine, kernel)
    kernel.run("y = 'later'")
    engine.restore(good.id)
    kernel.after_restore()
    assert kernel.value("y") == "'must survive'"


def test_damaged_hot_image_fails_cleanly_and_state_is_back(
    kernel: KernelSession, engine: Engine
) -> None:
    """A hot-tier copy is checked against the hashes taken when it was written."""
    kernel.run("import numpy as np; arr = np.full(1_000_000, 7.0)")
    snap = _snap(engine, kernel)
    kernel.run("arr[:] = 1.0")
    entry = engine.hot.get(snap.id)
    assert entry is not None and not entry.pending
    pages = max(entry.images.glob("pages-*.img"), key=lambda f: f.stat().st_size)
    with pages.open("r+b") as fh:
        fh.seek(pages.stat().st_size // 2)
        fh.write(b"\xde\xad\xbe\xef" * 256)
    pid_before = engine.kernels.get(kernel.id).pid
    with pytest.raises(RestoreFailed, match="checksum") as info:
        engine.restore(snap.id)
    assert "not touched" in info.value.message
    assert engine.kernels.get(kernel.id).pid == pid_before
    assert kernel.value("float(arr.sum())") == "1000000.0"
    engine.hot.drop(snap.id)  # the store's copy is intact
    engine.restore(snap.id)
    kernel.after_restore()
    assert kernel.value("float(arr.sum())") == "7000000.0"


def test_damage_found_after_the_stop_rolls_back(
    kernel: KernelSession, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hot entry is verified while the old kernel stops (the restore waits for both before
    CRIU reads an image): damage found only then brings the state from before back, from the
    newest snapshot, which holds it (no pre-restore dump)."""
    kernel.run("import numpy as np; arr = np.full(1_000_000, 7.0)")
    snap = _snap(engine, kernel)
    kernel.run("arr[:] = 1.0")
    newest = _snap(engine, kernel)
    entry = engine.hot.get(snap.id)
    assert entry is not None
    pages = max(entry.images.glob("pages-*.img"), key=lambda f: f.stat().st_size)
    with pages.open("r+b") as fh:
        fh.seek(pages.stat().st_size // 2)
        fh.write(b"\xde\xad\xbe\xef" * 256)
    # The real verification, held back until the kernel is stopped (a 4 GB kernel's takes as
    # long as its stop).
    stopped = threading.Event()
    real_stop, real_verify = engine.supervisor.stop, engine.hot.verify

    def stop(*args: object, **kwargs: object) -> None:
        real_stop(*args, **kwargs)  # type: ignore[arg-type]
        stopped.set()

    def verify(e: object) -> None:
        assert stopped.wait(60)
        real_verify(e)  # type: ignore[arg-type]

    monkeypatch.setattr(engine.supervisor, "stop", stop)
    monkeypatch.setattr(engine.hot, "verify", verify)
    with pytest.raises(RestoreFailed, match="checksum") as info:
        engine.restore(snap.id)
    assert info.value.details["rolled_back"] is True
    assert "put back as it was" in info.value.message
    assert info.value.details["pre_restore"] == newest.id
    kernel.after_restore()
    assert kernel.value("float(arr.sum())") == "1000000.0"
    assert [s.id for s in engine.list_snapshots(kernel.id)] == [newest.id, snap.id]


@pytest.fixture
def small_fs():
    """A 48 MiB tmpfs as the state directory: too small for a kernel holding 64 MiB."""
    path = make_state_dir("jusnap-full-")
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m,mode=0711", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


def test_full_store_gives_clear_error_and_kernel_untouched(make_settings, small_fs: Path) -> None:
    e = Engine(make_settings(**{"jusnap.state_dir": str(small_fs)})).start()
    try:
        ks = KernelSession(e)
        ks.run("import numpy as np; big = np.random.default_rng(1).random(8_000_000)")  # 64 MB
        pid = e.kernels.get(ks.id).pid
        with pytest.raises(StoreFull, match="no space left"):
            e.snapshot(ks.id)
        assert e.kernels.get(ks.id).pid == pid
        assert ks.value("big.shape") == "(8000000,)"
        assert e.list_snapshots(ks.id) == []
        assert not list((small_fs / "work").iterdir()), "scratch space is cleaned up"
        assert [p.name for p in (small_fs / "snapshots").iterdir()] == []
        ks.run("del big; import gc; gc.collect()")
        ks.close()
    finally:
        shutdown_all(e)


def test_daemon_killed_during_dump(daemon: Daemon) -> None:
    """SIGKILL of the whole daemon mid-dump: no half snapshot listed, the kernel still works."""
    r = daemon.cli("--json", "start")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    kc = connect(info["connection"])
    run_cell(
        kc,
        "import numpy as np; big = np.random.default_rng(2).random(100_000_000); marker = 'alive'",
    )  # 800 MB
    done = threading.Event()

    def snapshot() -> None:
        daemon.cli("snapshot", info["id"])
        done.set()

    t = threading.Thread(target=snapshot)
    t.start()
    # Wait until CRIU is writing images, then kill gunicorn master and worker at once.
    wait_until(
        lambda: any(daemon.state_dir.glob("work/*/img/pages-*.img")), 60, what="criu to write pages"
    )
    daemon.kill()
    t.join(60)
    wait_until(lambda: not _criu_running(daemon.state_dir), 120, what="the orphaned criu to finish")
    daemon.start()
    r = daemon.cli("--json", "snapshots", info["id"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []
    assert not list((daemon.state_dir / "snapshots").iterdir())
    assert not list((daemon.state_dir / "work").iterdir())
    # the kernel was re-adopted and still answers
    r = daemon.cli("--json", "kernels")
    kernels = json.loads(r.stdout)
    assert [k["status"] for k in kernels] == ["running"]
    kc.wait_for_ready(timeout=30)
    assert run_cell(kc, "print(marker, big.shape)").strip() == "alive (100000000,)"
    # and snapshots work again
    r = daemon.cli("--json", "snapshot", info["id"])
    assert r.returncode == 0, r.stderr
    kc.stop_channels()


def _criu_running(state_dir: Path) -> bool:
    out = subprocess.run(["pgrep", "-f", f"criu.*{state_dir}"], capture_output=True, text=True)
    return bool(out.stdout.strip())


def test_leftovers_of_an_interrupted_write_are_removed_at_start(
    kernel: KernelSession, engine: Engine, make_settings
) -> None:
    snap = _snap(engine, kernel)
    root = engine.store.root
    # What a crash could leave: a partial copy, an unrecorded complete copy, a scratch dir.
    (root / ".partial-01M8AQZZZZZZZZZZZZZZZZZZZZ").mkdir()
    shutil.copytree(root / snap.id, root / "01M8AQYYYYYYYYYYYYYYYYYYYY")
    (engine.work_dir / "01M8AQXXXXXXXXXXXXXXXXXXXX").mkdir()
    again = Engine(make_settings()).start()
    try:
        assert sorted(p.name for p in root.iterdir()) == [snap.id]
        assert not list(engine.work_dir.iterdir())
        assert [s.id for s in again.list_snapshots(kernel.id)] == [snap.id]
        # re-adopted: same PID and start time
        assert again.kernels.get(kernel.id).status == "running"
    finally:
        again.close()


def test_readopt_never_signals_a_reused_pid(
    kernel: KernelSession, engine: Engine, make_settings
) -> None:
    k = engine.kernels.get(kernel.id)
    k.started = (k.started or 0) + 12345  # as if the PID now belonged to another process
    engine.registry.put_kernel(k)
    again = Engine(make_settings()).start()
    try:
        assert again.kernels.get(kernel.id).status == "dead"
        with pytest.raises(Exception, match="not running"):
            again.kernels.interrupt(kernel.id)
        assert os.path.exists(f"/proc/{k.pid}")
        assert kernel.value("1") == "1"  # the real process was not touched
    finally:
        again.close()
