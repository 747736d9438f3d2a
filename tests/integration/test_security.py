"""The kernel's user is hostile: each exploit of the 2026-11 review, as a regression test.

Real CRIU, real kernels running as the unprivileged test user; the attacker's moves are made
as that user (``as_user``) wherever the attacker would make them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from jusnap.criu import explain, frozen_seconds
from jusnap.errors import ImageRefused, RestoreFailed
from jusnap.kernels import namespace
from jusnap.proc import check_restored, ticks_now
from jusnap.registry import Snapshot
from jusnap.snapshots import Engine

from tests.conftest import PYTHON, REPO, Daemon, KernelSession, shutdown_all
from tests.criu_craft import (
    drop_creds,
    edit_creds,
    rewrite_hot,
    rewrite_stored,
    second_creds_with_caps,
    set_field,
    with_caps,
)

CRIU = "/usr/local/sbin/criu"


def as_user(user: pwd.struct_passwd, *argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as the kernel's user, with nothing but that user's rights."""
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--init-groups",
            "--inh-caps=-all",
            "--",
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kw,  # type: ignore[arg-type]
    )


def capable_processes(uid: int) -> list[str]:
    """Processes of ``uid`` holding any capability: none may, ever, except CRIU itself while
    the daemon lends it its capabilities for a dump or restore (another test's, say), and
    the daemon's ``setpriv`` in the instant between taking the uid and executing CRIU (a
    program without file capabilities: the kernel's user running it gains nothing)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "exe") in (CRIU, "/usr/bin/setpriv"):
                continue
            status = (entry / "status").read_text()
            fields = dict(ln.split(":", 1) for ln in status.splitlines() if ":" in ln)
            if int(fields["Uid"].split()[1]) != uid:
                continue
            caps = {k: int(fields[k], 16) for k in ("CapPrm", "CapEff", "CapAmb", "CapInh")}
            if any(caps.values()):
                out.append(f"{entry.name} {fields['Name'].strip()} {caps}")
    return out


def _snap(engine: Engine, kernel: KernelSession) -> Snapshot:
    s = engine.snapshot(kernel.id)
    assert isinstance(s, Snapshot)
    engine.wait_stored()  # these tests read (or damage) what the store holds
    return s


def _core_name(engine: Engine, snap: Snapshot) -> str:
    return next(engine.store.path(snap.id).glob("core-*.img")).name


@pytest.fixture
def secret_file() -> Iterator[Path]:
    """A root-only file the attacker wants to read."""
    d = Path(f"/root/jusnap-secret-{secrets.token_hex(4)}")
    d.mkdir(mode=0o700)
    f = d / "secret"
    f.write_text("Error (criu/x.c:1): TOPSECRET-" + secrets.token_hex(8) + "\n")
    f.chmod(0o600)
    yield f
    shutil.rmtree(d)


# ---- 1. capabilities through a crafted image ------------------------------------------------

CRAFTS: dict[str, Callable[[bytes], bytes]] = {
    "exploit-caps": lambda b: edit_creds(b, with_caps()),
    "caps-packed": lambda b: edit_creds(b, with_caps(packed=True)),
    "merged-creds": second_creds_with_caps,
    "no-creds": drop_creds,
    "uid-root": lambda b: edit_creds(b, set_field(1, 0)),
}


@pytest.mark.parametrize("tier", ["store", "hot"])
@pytest.mark.parametrize("craft", list(CRAFTS))
def test_crafted_image_is_refused_by_restore_and_kernel_untouched(
    kernel: KernelSession, engine: Engine, kernel_user: pwd.struct_passwd, craft: str, tier: str
) -> None:
    """Whether the restore reads the store or the hot tier's plain images, the images are
    checked for the kernel's identity before it is stopped."""
    kernel.run("x = 'snapshot'")
    snap = _snap(engine, kernel)
    kernel.run("x = 'current'")
    pid_before = engine.kernels.get(kernel.id).pid
    if tier == "store":
        engine.hot.drop(snap.id)  # restored from the store
        rewrite_stored(engine.store.path(snap.id), _core_name(engine, snap), CRAFTS[craft])
    else:
        entry = engine.hot.get(snap.id)
        assert entry is not None
        rewrite_hot(entry.path, _core_name(engine, snap), CRAFTS[craft])
    with pytest.raises(RestoreFailed, match="snapshot image refused") as info:
        engine.restore(snap.id)
    assert info.value.details["rolled_back"] is True
    assert "the kernel was not touched" in info.value.message
    assert engine.kernels.get(kernel.id).pid == pid_before
    assert kernel.value("x") == "'current'"
    assert capable_processes(kernel_user.pw_uid) == []


def test_crafted_image_through_the_api_and_cli(daemon: Daemon, kernel_user) -> None:
    import json

    from tests.helpers import connect, run_cell, wait_until

    info = json.loads(daemon.cli("--json", "start").stdout)
    kc = connect(info["connection"])
    try:
        run_cell(kc, "x = 'snapshot'")
        snap = json.loads(daemon.cli("--json", "snapshot", info["id"]).stdout)
        run_cell(kc, "x = 'current'")
        snap = snap["snapshot"]
        store = daemon.state_dir / "snapshots" / snap["id"]
        hot = daemon.state_dir / "hot" / snap["id"]

        def stored() -> bool:
            try:
                return json.loads((hot / "meta.json").read_text())["pending"] is False
            except (OSError, ValueError):
                return False

        wait_until(stored, 60, what="snapshot stored")  # the background commit is over
        shutil.rmtree(hot)  # restore from the store
        core = next(store.glob("core-*.img")).name
        rewrite_stored(store, core, CRAFTS["exploit-caps"])
        r = daemon.cli("restore", snap["id"])
        assert r.returncode != 0
        assert "snapshot image refused" in r.stderr and "capabilities" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert run_cell(kc, "print(x)").strip() == "current"
        assert capable_processes(kernel_user.pw_uid) == []
    finally:
        kc.stop_channels()


def test_tampered_dump_is_refused_before_commit(
    kernel: KernelSession, engine: Engine, kernel_user: pwd.struct_passwd
) -> None:
    """The kernel's user rewrites its own dump while it is in flight (the files are its)."""
    real_dump = engine.criu.dump
    script = (
        "import sys, pathlib; sys.path.insert(0, sys.argv[2]); sys.path.insert(0, sys.argv[3])\n"
        "from tests.criu_craft import edit_creds, with_caps\n"
        "p = next(pathlib.Path(sys.argv[1]).glob('core-*.img'))\n"
        "p.write_bytes(edit_creds(p.read_bytes(), with_caps()))\n"
    )

    def dump_then_tamper(pid, images, *args, **kwargs):
        result = real_dump(pid, images, *args, **kwargs)
        r = as_user(kernel_user, PYTHON, "-c", script, str(images), str(REPO), str(REPO / "app"))
        assert r.returncode == 0, r.stderr
        return result

    engine.criu.dump = dump_then_tamper  # type: ignore[method-assign]
    kernel.run("x = 41")
    with pytest.raises(ImageRefused, match="capabilities are not empty"):
        engine.snapshot(kernel.id)
    assert engine.list_snapshots(kernel.id) == []
    assert list(engine.store.root.iterdir()) == []  # nothing half-committed either
    kernel.run("x += 1")
    assert kernel.value("x") == "42"


@pytest.mark.parametrize("plant", ["extra-creds-image", "hardlink-root-file", "symlink"])
def test_planted_files_in_the_dump_are_refused(
    kernel: KernelSession, engine: Engine, kernel_user, secret_file: Path, plant: str
) -> None:
    real_dump = engine.criu.dump

    def dump_then_plant(pid, images, *args, **kwargs):
        result = real_dump(pid, images, *args, **kwargs)
        if plant == "extra-creds-image":
            r = as_user(
                kernel_user,
                "cp",
                str(next(images.glob("core-*.img"))),
                str(images / f"creds-{pid}.img"),
            )
            assert r.returncode == 0, r.stderr
        else:
            target = images / "pages-99.img"
            # A root file under a name the store would keep (root plants it here: the
            # attacker could where hard links are not protected).
            (os.link if plant == "hardlink-root-file" else os.symlink)(secret_file, target)
        return result

    engine.criu.dump = dump_then_plant  # type: ignore[method-assign]
    with pytest.raises((ImageRefused, Exception)) as info:
        engine.snapshot(kernel.id)
    assert "TOPSECRET" not in str(info.value)
    assert engine.list_snapshots(kernel.id) == []
    if plant == "extra-creds-image":
        assert isinstance(info.value, ImageRefused)


@pytest.mark.parametrize("tier", ["store", "hot"])
def test_staged_images_are_out_of_the_kernel_users_reach(
    kernel: KernelSession, engine: Engine, kernel_user: pwd.struct_passwd, tier: str
) -> None:
    """Between the check and CRIU's read, the user can change nothing CRIU will read: neither
    images staged from the store nor a hot-tier entry (the target's, the pre-restore copy's)."""
    snap = _snap(engine, kernel)
    if tier == "store":
        engine.hot.drop(snap.id)
    attempts: list[subprocess.CompletedProcess[str]] = []
    untouched: list[bool] = []
    real_check = engine._check_staged

    def attack_then_check(k, images: Path) -> bool:
        core = next(images.glob("core-*.img"))
        before = (core.read_bytes(), core.stat().st_mode, core.stat().st_uid)
        attempts.append(as_user(kernel_user, "tee", "-a", str(core), input="x"))
        attempts.append(as_user(kernel_user, "touch", str(images / "creds-1.img")))
        attempts.append(as_user(kernel_user, "mv", str(images), str(images) + ".moved"))
        attempts.append(as_user(kernel_user, "chmod", "0777", str(core)))
        attempts.append(as_user(kernel_user, "mkdir", str(images.parent / "img2")))
        # Judged by what changed: exit statuses are unreliable here, since the engine's reaper
        # (a child subreaper in this very process) may collect an attempt before
        # subprocess does, which then reports 0 (seen under load, with the error printed).
        untouched.append(
            (core.read_bytes(), core.stat().st_mode, core.stat().st_uid) == before
            and not (images / "creds-1.img").exists()
            and images.is_dir()
            and not Path(f"{images}.moved").exists()
            and not (images.parent / "img2").exists()
        )
        return real_check(k, images)

    engine._check_staged = attack_then_check  # type: ignore[method-assign]
    engine.restore(snap.id)
    kernel.after_restore()
    assert untouched == [True, True]  # the pre-restore copy's images, then the target's
    assert len(attempts) == 10
    refused = ("Permission denied", "Operation not permitted")
    assert all(any(r in a.stderr for r in refused) for a in attempts), [a.stderr for a in attempts]
    hot = engine.state_dir / "hot"
    listing = as_user(kernel_user, "ls", str(hot))
    assert listing.stdout == "" and "Permission denied" in listing.stderr, listing  # no listing


# ---- 2. CRIU itself in the kernel user's hands ------------------------------------------------


def test_the_kernel_user_cannot_use_criu_for_capabilities(
    kernel: KernelSession, kernel_user: pwd.struct_passwd
) -> None:
    """From a cell: dump a child with CRIU, as the 2026-11 exploit did. CRIU has nothing to
    lend: it carries no file capabilities and the user holds none."""
    out = kernel.run(
        "import subprocess, tempfile\n"
        "child = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
        "d = tempfile.mkdtemp()\n"
        f"r = subprocess.run(['{CRIU}', 'dump', '-t', str(child.pid), '-D', d, '--unprivileged',"
        " '--leave-running', '-o', 'x.log'], capture_output=True, text=True)\n"
        "child.kill()\n"
        "print(r.returncode)\n"
        "print(open('/proc/self/status').read())\n"
    )
    assert out.splitlines()[0] != "0"
    status = dict(ln.split(":", 1) for ln in out.splitlines()[1:] if ":" in ln)
    for key in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(status[key], 16) == 0, status
    assert (os.stat(CRIU).st_mode & (stat.S_ISUID | stat.S_ISGID)) == 0
    getcap = subprocess.run(["getcap", CRIU], capture_output=True, text=True, check=True)
    assert getcap.stdout.strip() == ""
    assert capable_processes(kernel_user.pw_uid) == []


def test_the_capabilities_lent_to_criu_cannot_be_borrowed(kernel_user) -> None:
    """CRIU runs as the kernel's uid holding capabilities (ambient, from the daemon). The
    user's other processes must not reach into it: ptrace and /proc/PID/mem are refused."""
    from jusnap.criu import DUMP_CAPS, with_capabilities
    from jusnap.proc import Creds

    creds = Creds.of_user(kernel_user.pw_uid, kernel_user.pw_gid)
    lent = subprocess.Popen(with_capabilities(["sleep", "60"], creds, DUMP_CAPS))
    try:
        time.sleep(0.3)
        status = Path(f"/proc/{lent.pid}/status").read_text()
        assert f"Uid:\t{kernel_user.pw_uid}\t" in status
        assert "CapEff:\t0000000000000000" not in status, "it really holds capabilities"
        for path in ("mem", "environ", "maps"):
            r = as_user(kernel_user, "cat", f"/proc/{lent.pid}/{path}")
            assert r.returncode != 0 and "Permission denied" in r.stderr, (path, r.stderr)
        attach = (
            "import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True)\n"
            "rc = libc.ptrace(16, int(sys.argv[1]), 0, 0)\n"  # PTRACE_ATTACH
            "print(rc, ctypes.get_errno())\n"
        )
        r = as_user(kernel_user, PYTHON, "-c", attach, str(lent.pid))
        assert r.stdout.split()[0] == "-1", r.stdout + r.stderr
    finally:
        lent.kill()
        lent.wait()


# ---- 3. files the root daemon reads --------------------------------------------------------------


def test_restored_pid_is_checked_not_read(
    kernel: KernelSession, engine: Engine, kernel_user: pwd.struct_passwd
) -> None:
    """A kernel-user process writes pid files naming PID 1 into every directory it can during
    the restore; the daemon adopts the restored kernel, never PID 1."""
    snap = _snap(engine, kernel)
    loop = (
        "import glob, sys, time\n"
        "end = time.time() + 20\n"
        "while time.time() < end:\n"
        "    for d in glob.glob(sys.argv[1] + '/*/criu'):\n"
        "        for n in ('restored.pid', 'restore.pid', 'pidfile'):\n"
        "            try: open(d + '/' + n, 'w').write('1\\n')\n"
        "            except OSError: pass\n"
        "    time.sleep(0.001)\n"
    )
    attacker = subprocess.Popen(
        [
            "setpriv",
            f"--reuid={kernel_user.pw_uid}",
            f"--regid={kernel_user.pw_gid}",
            "--init-groups",
            "--",
            PYTHON,
            "-c",
            loop,
            str(engine.work_dir),
        ]
    )
    try:
        engine.restore(snap.id)
        kernel.after_restore()
    finally:
        attacker.kill()
        attacker.wait()
    k = engine.kernels.get(kernel.id)
    # A namespaced kernel comes back as PID 1 of a new namespace, at a new outer PID that
    # the daemon read from CRIU's private pid file (not one of these) and checked.
    assert k.pid is not None and k.pid not in (1, snap.pid), (k.pid, snap.pid)
    assert namespace.nspid(k.pid) == [k.pid, 1]
    assert check_restored(1, kernel_user.pw_uid, 0) is not None
    assert check_restored(os.getpid(), kernel_user.pw_uid, ticks_now()) is not None
    assert kernel.value("1 + 1") == "2"


@pytest.mark.parametrize("kind", ["symlink", "fifo", "devzero", "huge"])
def test_logs_are_read_without_following_links(
    tmp_path: Path, kernel_user, secret_file: Path, kind: str
) -> None:
    work = tmp_path / "criu"
    work.mkdir()
    os.chown(work, kernel_user.pw_uid, kernel_user.pw_gid)
    log = work / "restore.log"
    if kind == "symlink":
        log.symlink_to(secret_file)
        (work / "stats-dump").symlink_to(secret_file)
    elif kind == "fifo":
        os.mkfifo(log)
    elif kind == "devzero":
        log.symlink_to("/dev/zero")
    else:
        with log.open("wb") as fh:
            fh.truncate(8 << 30)  # 8 GiB, sparse
            fh.seek(8 << 30)
            fh.write(b"\nError (criu/x.c:1): the last words\n")
    t0 = time.monotonic()
    why = explain(log, "criu restore exited 1")
    assert time.monotonic() - t0 < 5
    assert "TOPSECRET" not in why
    if kind == "huge":
        assert why == "the last words"
    else:
        assert why == "criu restore exited 1"
    assert frozen_seconds(work) is None


def test_kernel_cwd_is_entered_as_the_user(
    engine: Engine, kernel_user: pwd.struct_passwd, secret_file: Path
) -> None:
    ks = KernelSession(engine, cwd=str(secret_file.parent))
    try:
        out = ks.run(
            "import os\nprint(os.getcwd())\n"
            f"try:\n    os.listdir({str(secret_file.parent)!r}); print('LISTED')\nexcept PermissionError:\n    print('DENIED')\n"
        )
        assert str(secret_file.parent) not in out.splitlines()[0]
        assert out.splitlines()[0] == kernel_user.pw_dir
        assert "DENIED" in out
    finally:
        ks.close()


def test_history_is_seeded_as_the_user(
    make_settings, kernel_user: pwd.struct_passwd, secret_file: Path
) -> None:
    home = Path(kernel_user.pw_dir)
    planted = home / f"planted-history-{secrets.token_hex(4)}.sqlite"
    planted.symlink_to(secret_file)
    os.lchown(planted, kernel_user.pw_uid, kernel_user.pw_gid)
    e = Engine(
        make_settings(
            **{
                "jusnap.ipython.history_enabled": "true",
                "jusnap.ipython.history_file": str(planted),
            }
        )
    ).start()
    try:
        ks = KernelSession(e)
        try:
            assert ks.value("1") == "1"
            kdir = e.supervisor.kernel_dir(ks.id)
            for f in kdir.iterdir():
                if f.is_file():
                    assert b"TOPSECRET" not in f.read_bytes(), f
        finally:
            ks.close()
    finally:
        planted.unlink()
        shutdown_all(e)


# ---- 4. owners are uids ---------------------------------------------------------------------


def test_kernels_of_other_owners_run_as_other_uids(
    engine: Engine, kernel_user: pwd.struct_passwd, second_user: pwd.struct_passwd
) -> None:
    mine = KernelSession(engine)
    theirs = engine.kernels.launch(owner_uid=second_user.pw_uid)
    try:
        status = Path(f"/proc/{theirs.pid}/status").read_text()
        assert f"Uid:\t{second_user.pw_uid}\t" in status
        assert theirs.owner_uid == theirs.run_uid == second_user.pw_uid
        cfile = engine.supervisor.connection_file(theirs)
        # From a cell of the other owner's kernel: the connection key is out of reach.
        out = mine.run(
            f"try:\n    open({str(cfile)!r}).read(); print('READ')\n"
            "except PermissionError:\n    print('DENIED')\n"
        )
        assert out.strip() == "DENIED"
        # And the other owner's snapshot works with CRIU as that uid.
        snap = engine.snapshot(theirs.id, owner_uid=second_user.pw_uid)
        assert isinstance(snap, Snapshot) and snap.owner_uid == second_user.pw_uid
        with pytest.raises(Exception, match="no such"):
            engine.snapshot_info(snap.id, owner_uid=kernel_user.pw_uid)
    finally:
        mine.close()
        engine.supervisor.remove(engine.kernels.get(theirs.id))


def test_failed_launch_leaves_nothing(engine: Engine) -> None:
    before = set(engine.supervisor.kernels_dir.iterdir())
    with pytest.raises(Exception, match="no such program"):
        engine.kernels.launch(owner_uid=0, argv=["/nonexistent/python", "-m", "ipykernel_launcher"])
    assert set(engine.supervisor.kernels_dir.iterdir()) == before
    assert engine.kernels.list() == []


def test_root_never_writes_through_a_planted_link(
    kernel: KernelSession, engine: Engine, secret_file: Path
) -> None:
    """The kernel's directory is the user's: a hard link planted as its connection file (the
    attacker's move where hard links are not protected) must not make root overwrite the
    linked file when the kernel (re)starts."""
    before = secret_file.read_bytes()
    cfile = engine.supervisor.connection_file(engine.kernels.get(kernel.id))
    cfile.unlink()
    os.link(secret_file, cfile)
    engine.kernels.restart(kernel.id)
    kernel.after_restore()
    assert secret_file.read_bytes() == before
    assert os.stat(cfile).st_ino != os.stat(secret_file).st_ino
    assert kernel.value("1 + 1") == "2"


def test_a_dump_file_still_open_for_writing_is_copied_not_taken(
    engine: Engine, kernel_user: pwd.struct_passwd
) -> None:
    """The hot tier takes a dump's files over (root's, read-only) instead of copying them,
    unless a descriptor could still write one (one the kernel's user opened during the dump):
    that file is copied, so writes through the descriptor never reach the kept images."""
    from jusnap.ids import new_snapshot_id

    dump = engine.work_dir / new_snapshot_id()
    dump.mkdir(mode=0o700)
    uid, gid = kernel_user.pw_uid, kernel_user.pw_gid
    os.chown(dump, uid, gid)
    for name in ("pages-1.img", "core-1.img"):
        (dump / name).write_bytes(b"dumped " + name.encode())
        os.chown(dump / name, uid, gid)
    taken_ino = (dump / "core-1.img").stat().st_ino
    held = os.open(dump / "pages-1.img", os.O_WRONLY)  # the user's descriptor, kept open
    try:
        entry = engine.hot.put(new_snapshot_id(), dump, None, gid, uid, durable=False)
        os.pwrite(held, b"CHANGED", 0)
    finally:
        os.close(held)
    pages, core = entry.images / "pages-1.img", entry.images / "core-1.img"
    assert pages.read_bytes() == b"dumped pages-1.img"
    assert core.read_bytes() == b"dumped core-1.img"
    assert core.stat().st_ino == taken_ino  # no writer: taken over, not copied
    for f in (pages, core, entry.images):
        st = f.stat()
        assert (st.st_uid, st.st_gid) == (0, gid)
        assert st.st_mode & 0o777 == (0o750 if f == entry.images else 0o440)
    engine.hot.drop(entry.id)
