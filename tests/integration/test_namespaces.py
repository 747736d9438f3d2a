"""Kernels in their own PID + mount namespace (kernels/namespace.py, kernels/nsinit.py): real
ipykernels, real CRIU, the daemon's privilege model (CRIU as the kernel's uid, ambient caps)."""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path

import pytest
from jusnap.errors import ImageRefused, JusnapError, RestoreFailed
from jusnap.kernels import namespace
from jusnap.registry import Snapshot
from jusnap.snapshots import Engine

from tests.conftest import PYTHON, REPO, KernelSession, shutdown_all
from tests.criu_craft import clear_no_new_privs, clear_root_nosuid, rewrite_hot
from tests.helpers import run_cell

from .test_security import as_user


def _snap(engine: Engine, kernel: KernelSession) -> Snapshot:
    s = engine.snapshot(kernel.id)
    assert isinstance(s, Snapshot)
    engine.wait_stored()  # stored, and the hot entry's digests recorded
    return s


def _images(engine: Engine, snap: Snapshot) -> list[str]:
    entry = engine.hot.get(snap.id)
    assert entry is not None
    return sorted(p.name for p in entry.images.iterdir())


def test_kernel_is_pid_1_of_its_own_namespaces(
    kernel: KernelSession, engine: Engine, kernel_user: pwd.struct_passwd
) -> None:
    pid = engine.kernels.get(kernel.id).pid
    assert pid is not None and namespace.nspid(pid) == [pid, 1]
    ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert ppid == os.getpid()  # adopted by the daemon's subreaper, as plain kernels are
    kernel.run(
        "import os\n"
        "status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines())\n"
        "mounts = [(l.split()[4], l.split()[5]) for l in open('/proc/self/mountinfo')]\n"
    )
    assert kernel.value("os.getpid()") == "1"
    assert kernel.value("status['NoNewPrivs']") == "'1'"
    assert kernel.value("status['Uid'].split()") == repr([str(kernel_user.pw_uid)] * 4)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert kernel.value(f"int(status[{cap!r}], 16)") == "0", cap
    assert kernel.value("sorted(m for m, _ in mounts)") == "['/', '/dev', '/proc']"
    assert "nosuid" in kernel.value("dict(mounts)['/']")
    # Its stdio was opened inside its mount namespace (else no dump): the log works.
    kernel.run("print('to the log', flush=True)")
    snap = _snap(engine, kernel)
    assert any(n.startswith("mountpoints-") for n in _images(engine, snap))
    assert b"to the log" in engine.kernels.logs(kernel.id)[0]


def test_snapshot_from_before_a_restart_restores_with_its_old_pid_in_use(
    kernel: KernelSession, engine: Engine
) -> None:
    """The old PID is taken by another process: a namespaced restore does not need it."""
    kernel.run("x = 'before restart'")
    snap = _snap(engine, kernel)
    engine.kernels.restart(kernel.id)
    kernel.after_restore()
    assert kernel.value("'x' in globals()") == "False"
    squatter = _occupy(snap.pid)
    try:
        engine.restore(snap.id)
        kernel.after_restore()
        assert kernel.value("x") == "'before restart'"
        new_pid = engine.kernels.get(kernel.id).pid
        assert new_pid != snap.pid and namespace.nspid(new_pid) == [new_pid, 1]
        assert squatter.poll() is None  # the process on the old PID was left alone
    finally:
        squatter.kill()
        squatter.wait()


def _occupy(pid: int) -> subprocess.Popen[bytes]:
    """A process of ours at exactly ``pid`` (via ns_last_pid; other processes may race it)."""
    last = Path("/proc/sys/kernel/ns_last_pid")
    for _ in range(50):
        last.write_text(str(pid - 1))
        p = subprocess.Popen(["sleep", "300"])
        if p.pid == pid:
            return p
        p.kill()
        p.wait()
    pytest.fail(f"could not start a process at PID {pid}")


def test_plain_kernels_and_their_old_snapshots_still_work(make_settings) -> None:
    """A snapshot of a kernel launched before namespaces (images without mountpoints-*.img)
    restores as before, also after kernels became namespaced."""
    engine = Engine(make_settings(**{"jusnap.kernels.namespaces": "off"})).start()
    ks = KernelSession(engine)
    try:
        pid = engine.kernels.get(ks.id).pid
        assert pid is not None and namespace.nspid(pid) == [pid]
        ks.run("x = 'plain'")
        snap = _snap(engine, ks)
        assert not any(n.startswith("mountpoints-") for n in _images(engine, snap))
        engine.settings.jusnap.kernels.namespaces = "auto"
        engine.kernels.restart(ks.id)  # now namespaced
        ks.after_restore()
        pid = engine.kernels.get(ks.id).pid
        assert pid is not None and namespace.nspid(pid) == [pid, 1]
        engine.restore(snap.id)  # a plain restore (its PID is free again)
        ks.after_restore()
        assert ks.value("x") == "'plain'"
        assert engine.kernels.get(ks.id).pid == snap.pid
    finally:
        ks.close()
        shutdown_all(engine)


def test_a_kernel_on_another_mount_falls_back_to_a_plain_launch(make_settings) -> None:
    """/dev/shm is a mount the minimal tree lacks: ``auto`` launches that kernel plainly,
    ``on`` refuses it."""
    engine = Engine(make_settings()).start()
    try:
        k = engine.kernels.launch(owner_uid=0, cwd="/dev/shm")
        assert k.pid is not None and namespace.nspid(k.pid) == [k.pid]
        engine.settings.jusnap.kernels.namespaces = "on"
        with pytest.raises(JusnapError, match="/dev/shm"):
            engine.kernels.launch(owner_uid=0, cwd="/dev/shm")
    finally:
        shutdown_all(engine)


def test_tampered_mountpoints_in_flight_is_refused_before_commit(
    kernel: KernelSession, engine: Engine, kernel_user: pwd.struct_passwd
) -> None:
    """The kernel's user clears nosuid on / in its dump while it is written (the files are
    its): CRIU would build the restored namespace from it, with CAP_SYS_ADMIN."""
    real_dump = engine.criu.dump
    script = (
        "import sys, pathlib; sys.path.insert(0, sys.argv[2]); sys.path.insert(0, sys.argv[3])\n"
        "from tests.criu_craft import clear_root_nosuid\n"
        "p = next(pathlib.Path(sys.argv[1]).glob('mountpoints-*.img'))\n"
        "p.write_bytes(clear_root_nosuid(p.read_bytes()))\n"
    )

    def dump_then_tamper(pid, images, *args, **kwargs):
        result = real_dump(pid, images, *args, **kwargs)
        r = as_user(kernel_user, PYTHON, "-c", script, str(images), str(REPO), str(REPO / "app"))
        assert r.returncode == 0, r.stderr
        return result

    engine.criu.dump = dump_then_tamper  # type: ignore[method-assign]
    kernel.run("x = 41")
    with pytest.raises(ImageRefused, match=r"mount / differs.*flags"):
        engine.snapshot(kernel.id)
    assert engine.list_snapshots(kernel.id) == []
    kernel.run("x += 1")
    assert kernel.value("x") == "42"


@pytest.mark.parametrize("edit", ["nosuid", "no_new_privs"])
def test_tampered_namespaced_snapshot_is_refused_before_restore(
    kernel: KernelSession, engine: Engine, edit: str
) -> None:
    kernel.run("x = 'snapshot'")
    snap = _snap(engine, kernel)
    kernel.run("x = 'current'")
    pid_before = engine.kernels.get(kernel.id).pid
    entry = engine.hot.get(snap.id)
    assert entry is not None
    names = _images(engine, snap)
    if edit == "nosuid":
        name = next(n for n in names if n.startswith("mountpoints-"))
        rewrite_hot(entry.path, name, clear_root_nosuid)
    else:
        name = next(n for n in names if n.startswith("core-"))
        rewrite_hot(entry.path, name, clear_no_new_privs)
    with pytest.raises(RestoreFailed, match="snapshot image refused") as info:
        engine.restore(snap.id)
    assert info.value.details["rolled_back"] is True
    assert engine.kernels.get(kernel.id).pid == pid_before
    assert kernel.value("x") == "'current'"


def test_namespaced_kernel_interrupts_and_shuts_down_politely(
    kernel: KernelSession, engine: Engine
) -> None:
    """PID 1 ignores signals it has no handler for: SIGINT works (ipykernel handles it),
    and a shutdown asks over the control channel instead of SIGTERM, well within the grace
    period (10 s, after which SIGKILL would come)."""
    msg_id = kernel.client.execute("import time; time.sleep(30)")
    time.sleep(1.0)
    t0 = time.monotonic()
    engine.kernels.interrupt(kernel.id)
    while True:
        reply = kernel.client.get_shell_msg(timeout=10)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert time.monotonic() - t0 < 5
    pid = engine.kernels.get(kernel.id).pid
    assert pid is not None
    t0 = time.monotonic()
    engine.kernels.shutdown(kernel.id)
    elapsed = time.monotonic() - t0
    assert not Path(f"/proc/{pid}").exists() or namespace.nspid(pid) != [pid, 1]
    assert elapsed < 5, f"shutdown took {elapsed:.1f}s: the polite request was not heard"


def test_multiprocessing_in_a_namespaced_kernel(kernel: KernelSession) -> None:
    """/dev/shm is not in the minimal tree: POSIX semaphores (multiprocessing's locks) and
    shared memory are unavailable; what works and what does not is pinned here (and said in
    docs/security.md)."""
    out = run_cell(
        kernel.client,
        "import multiprocessing as mp, os\n"
        "try:\n"
        "    with mp.get_context('fork').Pool(2) as pool:\n"
        "        print('pool', pool.map(abs, [-1, -2, -3]))\n"
        "except Exception as exc:\n"
        "    print('pool failed', type(exc).__name__, exc)\n"
        "print('shm', os.access('/dev/shm', os.W_OK))\n",
    )
    # The empty /dev/shm directory of / (root's, 0755) is all there is: no POSIX semaphore.
    assert "shm False" in out, out
    assert "pool failed PermissionError" in out, out
