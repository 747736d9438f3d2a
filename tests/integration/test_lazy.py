"""Lazy restore of unprivileged kernels with real CRIU (the criu role's userfaultfd patch).

The kernel runs as the unprivileged test user; CRIU restores it ``--unprivileged`` and
``criu lazy-pages`` (the same uid, the restore's capabilities) hands its memory over after it
answers. What must hold: the first execute is answered, every byte arrives (a checksum of a
200 MB bytearray), the server and its directory are gone afterwards, and a server that dies
half-way does not leave a kernel running on missing (zero) pages.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from jusnap.errors import KernelNotRunning, RestoreFailed, SnapshotFailed
from jusnap.fork import fork as fork_snapshot
from jusnap.proc import start_time
from jusnap.registry import Snapshot
from jusnap.snapshots import Engine

from tests.conftest import Daemon, KernelSession, shutdown_all
from tests.helpers import connect, nudge, run_cell, wait_until

CELL = (
    "import hashlib, os; b = bytearray(os.urandom(200 * 2**20));"
    " want = hashlib.sha256(b).hexdigest(); tag = 'snap'"
)


def _lazy_engine(make_settings) -> tuple[Engine, list[tuple[Path, subprocess.Popen[bytes]]]]:
    e = Engine(
        make_settings(
            **{"jusnap.store.lazy_pages": "true", "jusnap.store.lazy_unprivileged": "true"}
        )
    ).start()
    servers: list[tuple[Path, subprocess.Popen[bytes]]] = []
    real = e.criu.lazy_pages

    def spy(images: Path, work: Path, creds: object) -> subprocess.Popen[bytes]:
        p = real(images, work, creds)  # type: ignore[arg-type]
        servers.append((images.parent, p))
        return p

    e.criu.lazy_pages = spy  # type: ignore[method-assign]
    return e, servers


def _snap(e: Engine, ks: KernelSession) -> Snapshot:
    s = e.snapshot(ks.id)
    assert isinstance(s, Snapshot), s
    return s


def _uid_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@pytest.mark.parametrize("source", ["hot", "store"])
def test_unprivileged_lazy_restore_answers_and_brings_every_byte(
    make_settings, kernel_user, source: str
) -> None:
    e, servers = _lazy_engine(make_settings)
    ks = KernelSession(e)
    try:
        assert e.criu.lazy_capable(e.supervisor.creds(ks.kernel)), (
            f"{e.criu.binary} has no userfaultfd in --unprivileged mode: build it with the"
            " criu role (its kerndat_uffd patch)"
        )
        ks.run(CELL)
        s = _snap(e, ks)
        if source == "store":
            e.wait_stored()
            e.hot.drop(s.id)
        ks.run("b[:4096] = bytes(4096); tag = 'later'")
        e.restore(s.id)
        ks.after_restore()
        assert ks.value("tag") == "'snap'"  # first execute answered
        assert len(servers) == 1, "the restore went through criu lazy-pages"
        home, p = servers[0]
        uid = _uid_of(p.pid)
        assert uid in (None, kernel_user.pw_uid), uid  # the kernel's uid, never root
        assert ks.value("hashlib.sha256(b).hexdigest() == want") == "True"
        # Every page handed over: the server exits by itself, cleanly, and its files go.
        wait_until(lambda: p.returncode is not None, 60, what="criu lazy-pages to exit")
        assert p.returncode == 0
        wait_until(lambda: not home.exists(), 10, what="the lazy-pages directory to go")
        k = e.kernels.get(ks.id)
        assert k.status == "running" and start_time(k.pid) is not None
        again = _snap(e, ks)  # a snapshot of the restored kernel is whole
        ks.run("b[:] = bytes(len(b))")
        e.restore(again.id)
        ks.after_restore()
        assert ks.value("hashlib.sha256(b).hexdigest() == want") == "True"
    finally:
        ks.close()
        shutdown_all(e)


@pytest.mark.parametrize("source", ["hot", "store"])
def test_a_lazy_fork_beside_its_kernel_brings_every_byte(make_settings, source: str) -> None:
    """A fork restores lazily as a restore does (its own server on the fork's own images:
    for a hot entry, the entry's files behind the fork's rewritten files.img), and every
    byte arrives; the original runs on untouched meanwhile."""
    e, servers = _lazy_engine(make_settings)
    a = KernelSession(e)
    b: KernelSession | None = None
    try:
        a.run(CELL)
        s = _snap(e, a)
        if source == "store":
            e.wait_stored()
            e.hot.drop(s.id)
        a.run("b[:4096] = bytes(4096); tag = 'later'")
        result = fork_snapshot(e, s.id, None)
        b = KernelSession.attach(e, result.kernel.id)
        assert b.value("tag") == "'snap'"  # first execute answered
        assert len(servers) == 1, "the fork went through criu lazy-pages"
        home, p = servers[0]
        assert b.value("hashlib.sha256(b).hexdigest() == want") == "True"
        wait_until(lambda: p.returncode is not None, 60, what="criu lazy-pages to exit")
        assert p.returncode == 0
        wait_until(lambda: not home.exists(), 10, what="the lazy-pages directory to go")
        assert a.value("(tag, hashlib.sha256(b).hexdigest() == want)") == "('later', False)"
        again = _snap(e, b)  # the fork's own snapshot, once its pages are all in, is whole
        assert again.kernel_id == result.kernel.id
    finally:
        if b is not None:
            b.close()
        a.close()
        shutdown_all(e)


def test_lazy_server_dying_half_way_never_leaves_a_kernel_on_missing_pages(make_settings) -> None:
    """The server is killed as soon as CRIU's restore returns, before it handed every page
    over. The kernel either dies before the handshake (the restore fails and rolls back to
    the pre-restore copy) or answers and is then stopped by the daemon: never does it run on
    with zero pages where its memory was."""
    e, servers = _lazy_engine(make_settings)
    real_restore = e.criu.restore

    def restore_then_kill_server(*args: object, **kw: object):  # type: ignore[no-untyped-def]
        result = real_restore(*args, **kw)  # type: ignore[arg-type]
        if len(servers) == 1:  # the restore's own server; a rollback's is left alone
            os.killpg(servers[0][1].pid, signal.SIGKILL)
        return result

    e.criu.restore = restore_then_kill_server  # type: ignore[method-assign]
    ks = KernelSession(e)
    try:
        ks.run(CELL)
        s = _snap(e, ks)
        try:
            e.restore(s.id)
            restored = True
        except RestoreFailed as exc:
            assert exc.details.get("rolled_back") is True, exc.message
            restored = False
        assert servers, "the restore went through criu lazy-pages"
        home, p = servers[0]
        wait_until(lambda: p.returncode is not None, 30, what="criu lazy-pages to be reaped")
        # Killed, not finished; or, under load, the kill came after its last page (it exits
        # 0 then): that restore is whole and must be left running, which is checked instead.
        assert p.returncode in (-signal.SIGKILL, 0), p.returncode
        wait_until(lambda: not home.exists(), 10, what="the lazy-pages directory to go")
        k = e.kernels.get(ks.id)
        if p.returncode == 0:
            assert restored
            ks.after_restore()
            assert ks.value("hashlib.sha256(b).hexdigest() == want") == "True"
            assert ks.value("tag") == "'snap'"
        elif restored:
            wait_until(
                lambda: k.pid is None or start_time(k.pid) is None, 30, what="the kernel to stop"
            )
            with pytest.raises((KernelNotRunning, SnapshotFailed)):
                e.snapshot(ks.id)
            log = e.supervisor.logs.path(ks.id).read_text(errors="replace")
            assert "lazy restore failed" in log, log[-2000:]
        else:  # rolled back: the kernel runs its pre-restore state, whole
            ks.after_restore()
            assert ks.value("hashlib.sha256(b).hexdigest() == want") == "True"
        # The snapshot itself is fine: an eager restore brings it back.
        e.criu.restore = real_restore  # type: ignore[method-assign]
        e.storage.settings.lazy_pages = "false"
        e.restore(s.id)
        ks.after_restore()
        assert ks.value("hashlib.sha256(b).hexdigest() == want") == "True"
    finally:
        ks.close()
        shutdown_all(e)


def test_daemon_killed_during_a_lazy_restore_never_leaves_a_kernel_on_missing_pages(
    daemon: Daemon,
) -> None:
    """kill -9 of the daemon right after a lazy restore (its server still handing pages over,
    nobody left to see how it ends): the next daemon stops that server and that kernel, and
    its restore journal brings back the state from before the restore, whole."""
    daemon.stop()
    daemon.flags = ("--jusnap.store.lazy_pages=true", "--jusnap.store.lazy_unprivileged=true")
    daemon.start()
    info = json.loads(daemon.cli("--json", "start").stdout)
    kc = connect(info["connection"])
    try:
        run_cell(kc, CELL)
        snap = json.loads(daemon.cli("--json", "snapshot", info["id"]).stdout)["snapshot"]
        run_cell(kc, "tag = 'current'")
        daemon.stop()
        daemon.start(env={"JUSNAP_FAILPOINT": "restore:handshake"})
        daemon.died_under("restore", snap["id"])
        k = json.loads(daemon.cli("--json", "kernels").stdout)[0]
        assert k["status"] == "running", (k, daemon.log.read_text()[-3000:])
        assert "before it" in (k["notice"] or ""), k  # the pre-restore state came back
        assert "memory was still arriving" in daemon.log.read_text(), daemon.log.read_text()[-3000:]
        nudge(kc)
        assert run_cell(kc, "print(tag)").strip() == "current"
        assert run_cell(kc, "print(hashlib.sha256(b).hexdigest() == want)").strip() == "True"
        wait_until(
            lambda: not list((daemon.state_dir / "work").glob("*-lazy")),
            60,
            what="the lazy-pages directories to go",
        )
    finally:
        kc.stop_channels()
