"""Kernels in their own PID + mount namespace (kernels/namespace.py, kernels/nsinit.py): real
ipykernels, real CRIU, the daemon's privilege model (CRIU as the kernel's uid, ambient caps)."""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jusnap.errors import ImageRefused, JusnapError, RestoreFailed
from jusnap.fork import fork as fork_snapshot
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
    assert kernel.value("sorted(m for m, _ in mounts)") == "['/', '/dev', '/dev/shm', '/proc']"
    assert "nosuid" in kernel.value("dict(mounts)['/']")
    # Its stdio was opened inside its mount namespace (else no dump): the log works.
    kernel.run("print('to the log', flush=True)")
    snap = _snap(engine, kernel)
    assert any(n.startswith("mountpoints-") for n in _images(engine, snap))
    assert b"to the log" in engine.kernels.logs(kernel.id)[0]


def test_snapshot_from_before_a_restart_restores_and_forks_with_its_old_pid_in_use(
    kernel: KernelSession, engine: Engine
) -> None:
    """The old PID is taken by another process: a namespaced restore, or fork, needs it not."""
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
        fork = KernelSession.attach(engine, fork_snapshot(engine, snap.id, None).kernel.id)
        try:
            assert fork.value("x") == "'before restart'"
            assert namespace.nspid(engine.kernels.get(fork.id).pid)[-1] == 1
        finally:
            fork.close()
            engine.kernels.shutdown(fork.id)
        assert squatter.poll() is None  # the process on the old PID was left alone
    finally:
        squatter.kill()
        squatter.wait()


ZOMBIES = r"""
import os, subprocess, time
child = subprocess.Popen(["true"])  # exits; not waited for: a zombie of the kernel's
subprocess.run("sleep 0.1 &", shell=True, check=True)  # an orphan: reparented to PID 1, ipykernel
time.sleep(1)
def zombies():
    out = []
    for task in os.listdir("/proc"):
        if task.isdigit():
            with open(f"/proc/{task}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    out.append(int(task))
    return sorted(out)
print(len(zombies()))
"""


def test_zombies_in_the_kernels_tree_are_snapshotted_and_come_back(
    kernel: KernelSession, engine: Engine
) -> None:
    """A child not waited for yet, and an orphan (its PID 1 is ipykernel, which reaps no one),
    are zombies: CRIU dumps them with no credentials, which the image check accepts for a
    zombie only. (A fresh kernel of a Jupyter session had one: CI, test_resume.)"""
    assert kernel.run(ZOMBIES).strip() == "2"
    snap = _snap(engine, kernel)
    kernel.run("x = 'after'")
    engine.restore(snap.id)
    kernel.after_restore()
    assert kernel.value("'x' in globals()") == "False"
    assert kernel.value("len(zombies())") == "2"
    assert kernel.value("child.wait()") == "0"  # its exit status came along
    assert kernel.value("len(zombies())") == "1"  # the orphan's stays: no one reaps it


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


def test_multiprocessing_in_a_namespaced_kernel_survives_snapshot_and_restore(
    kernel: KernelSession, engine: Engine, kernel_user: pwd.struct_passwd
) -> None:
    """The kernel's own /dev/shm (a directory of its uid, bound nosuid,nodev): a Pool works,
    a snapshot taken while it lives (its workers and semaphores in the dump) restores, and
    both that Pool and a new one work in the restored kernel."""
    shm = engine.supervisor.shm_dir(kernel.id)
    assert shm.stat().st_uid == kernel_user.pw_uid and shm.stat().st_mode & 0o777 == 0o700
    assert shm.parent.stat().st_uid == 0 and shm.parent.stat().st_mode & 0o777 == 0o711
    kernel.run(
        "import multiprocessing as mp, os\n"
        "pool = mp.get_context('fork').Pool(2)\n"
        "opts = {l.split()[4]: l.split()[5] for l in open('/proc/self/mountinfo')}['/dev/shm']\n"
        "open('/dev/shm/kept', 'w').write('data in shm')\n"
    )
    assert kernel.value("pool.map(abs, [-1, -2, -3])") == "[1, 2, 3]"
    assert {"nosuid", "nodev"} <= set(kernel.value("opts").strip("'").split(","))
    assert (shm / "kept").read_text() == "data in shm"  # the kernel's own directory
    snap = _snap(engine, kernel)
    kernel.run("del pool")
    engine.restore(snap.id)
    kernel.after_restore()
    assert kernel.value("pool.map(abs, [-4, -5])") == "[4, 5]"  # the dumped Pool, alive
    assert kernel.value("open('/dev/shm/kept').read()") == "'data in shm'"
    out = run_cell(
        kernel.client,
        "with mp.get_context('spawn').Pool(2) as p2:\n    print('new', p2.map(abs, [-6]))\n",
    )
    assert "new [6]" in out, out
    kernel.run("pool.terminate()")


def test_restored_into_another_kernel_the_shm_files_come_along(engine: Engine) -> None:
    """A file held open in /dev/shm at the dump is copied (as the user, never over the other
    kernel's own files) into the restoring kernel's directory, which CRIU binds there."""
    a = KernelSession(engine)
    a.run("held = open('/dev/shm/held', 'w+')\nheld.write('x' * 100)\nheld.flush()\n")
    snap = _snap(engine, a)
    a.close()
    engine.kernels.shutdown(a.id, forget=False)  # stopped: its directory stays
    b = KernelSession(engine, connection=a.kernel.connection)
    try:
        (engine.supervisor.shm_dir(b.id) / "own").touch()
        engine.restore(snap.id, into=b.id)
        b.after_restore()
        assert b.value("held.seek(0) or held.read(3)") == "'xxx'"
        assert b.value("sorted(__import__('os').listdir('/dev/shm'))") == "['held', 'own']"
        assert (engine.supervisor.shm_dir(b.id) / "held").stat().st_size == 100
    finally:
        b.close()
    engine.kernels.shutdown(a.id)
    assert not engine.supervisor.shm_dir(a.id).exists()  # removed with its kernel


@pytest.fixture
def other_mounts(kernel_user: pwd.struct_passwd) -> Iterator[tuple[Path, Path]]:
    """Two tmpfs mounts of their own, as a systemd host's /run and a /home volume are: one
    for the daemon's socket directory, one for the notebook's directory (with a third mount
    below it that the kernel does not need)."""
    base = Path(tempfile.mkdtemp(prefix="jusnap-mnt-", dir="/var/tmp"))
    base.chmod(0o755)
    run, data = base / "run", base / "data"
    mounted: list[Path] = []
    try:
        for mp in (run, data, data / "nested"):
            mp.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=8m", "jt", str(mp)],
                           check=True)  # fmt: skip
            mounted.append(mp)
        (run / "jusnap").mkdir()
        (data / "proj").mkdir()
        os.chown(data / "proj", kernel_user.pw_uid, kernel_user.pw_gid)
        yield run, data
    finally:
        for mp in reversed(mounted):
            subprocess.run(["umount", "-l", str(mp)], check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)


def test_a_kernel_needing_other_mounts_keeps_them_and_restores(
    make_settings, other_mounts: tuple[Path, Path]
) -> None:
    """Socket directory and working directory on mounts of their own: the kernel is still
    namespaced, sees exactly those two mounts (not the one below), nosuid,nodev, reaches the
    socket and its directory, and a snapshot of it restores."""
    import socket

    run, data = other_mounts
    sock_path = run / "jusnap" / "jusnap.sock"
    engine = Engine(make_settings(**{"jusnap.http.socket": str(sock_path)})).start()
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(sock_path))
        sock_path.chmod(0o666)
        server.listen(4)
        ks = KernelSession(engine, cwd=str(data / "proj"))
        pid = engine.kernels.get(ks.id).pid
        assert namespace.nspid(pid) == [pid, 1]  # no fallback to a plain launch
        ks.run(
            "import os, socket\n"
            "def mounts():\n"
            "    rows = [l.split() for l in open('/proc/self/mountinfo')]\n"
            "    return {r[4]: r[5] for r in rows}\n"
            "open('made-inside', 'w').write('hi')\n"
            f"s = socket.socket(socket.AF_UNIX); s.connect({str(sock_path)!r}); s.close()\n"
            "x = 'before'\n"
        )
        want = sorted(["/", "/dev", "/dev/shm", "/proc", str(run), str(data)])
        assert ks.value("sorted(mounts())") == repr(want)
        opts = {}
        for mp in (run, data):
            opts[mp] = set(ks.value(f"mounts()[{str(mp)!r}]").strip("'").split(","))
            assert {"nosuid", "nodev"} <= opts[mp]
        # Kept for the socket alone: read-only (connect() needs no writable mount); the
        # notebook's mount: writable.
        assert "ro" in opts[run] and "rw" in opts[data]
        assert "Errno 30" in ks.run(
            f"try:\n    open({str(run / 'x')!r}, 'w')\nexcept OSError as e:\n    print(e)\n"
        )
        assert ks.value("os.getcwd()") == repr(str(data / "proj"))
        assert (data / "proj" / "made-inside").read_text() == "hi"
        snap = _snap(engine, ks)
        ks.run("x = 'after'")
        engine.restore(snap.id)
        ks.after_restore()
        assert ks.value("x") == "'before'"
        new = engine.kernels.get(ks.id).pid
        assert new != pid and namespace.nspid(new) == [new, 1]
        assert ks.value("sorted(mounts())") == repr(want)
        for mp in (run, data):  # the same flags, from the image (checked) and CRIU
            assert set(ks.value(f"mounts()[{str(mp)!r}]").strip("'").split(",")) == opts[mp]
        ks.run(f"s = socket.socket(socket.AF_UNIX); s.connect({str(sock_path)!r}); s.close()")
        assert ks.value("open('made-inside').read()") == "'hi'"
        ks.close()
    finally:
        server.close()
        shutdown_all(engine)


def test_a_launch_requests_environment_never_reaches_root(
    engine: Engine, kernel_user: pwd.struct_passwd, tmp_path: Path
) -> None:
    """The launcher runs as root: LD_PRELOAD from the request must act in the kernel only."""
    import shutil

    if shutil.which("cc") is None:
        pytest.fail("a C compiler is needed (build-essential, installed for CRIU)")
    lib_dir = Path(tempfile.mkdtemp(prefix="jusnap-preload-", dir="/var/tmp"))
    try:
        src, lib = lib_dir / "p.c", lib_dir / "p.so"
        marks = lib_dir / "marks"
        src.write_text(
            "#include <stdio.h>\n#include <unistd.h>\n"
            "__attribute__((constructor)) static void mark(void) {\n"
            f'  FILE *f = fopen("{marks}", "a"); if (f) {{ fprintf(f, "%d\\n", (int)getuid());'
            " fclose(f); }\n}\n"
        )
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
        marks.touch()
        os.chmod(lib_dir, 0o755)
        os.chmod(marks, 0o666)
        k = engine.kernels.launch(owner_uid=0, env={"LD_PRELOAD": str(lib)})
        assert k.pid is not None and namespace.nspid(k.pid) == [k.pid, 1]
        uids = {int(v) for v in marks.read_text().split()}
        assert uids == {kernel_user.pw_uid}, uids  # the kernel's processes only, never root
    finally:
        shutil.rmtree(lib_dir, ignore_errors=True)


def test_a_signal_the_kernel_does_not_handle_still_ends_it(
    kernel: KernelSession, engine: Engine
) -> None:
    """PID 1 drops SIGTERM (no handler in ipykernel); sent through Jusnap it ends the kernel
    as it ends a plain one. A handled one (SIGINT) is delivered as it is."""
    pid = engine.kernels.get(kernel.id).pid
    assert pid is not None and not namespace.handles(pid, 15) and namespace.handles(pid, 2)
    engine.kernels.signal(kernel.id, "SIGINT")
    assert kernel.value("1 + 1") == "2"  # interrupting an idle kernel harms nothing
    engine.kernels.signal(kernel.id, "SIGTERM")
    assert engine.reaper.wait_gone(pid, None, 5), "SIGTERM did not end the namespaced kernel"
