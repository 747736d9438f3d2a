"""Copies of a kernel on other ports, on real CRIU with real ipykernels as an unprivileged user:
a snapshot restored into a kernel whose ports differ, and forks beside a running kernel."""

from __future__ import annotations

import glob
import json
import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from jupyter_client.blocking import BlockingKernelClient
from jusnap.client import ApiError, Client
from jusnap.config import Settings
from jusnap.criu_images import FILES_MAGIC, Message, entries, image
from jusnap.errors import ImageRefused
from jusnap.fork import ForkResult
from jusnap.fork import fork as fork_snapshot
from jusnap.kernels.supervisor import PORT_KEYS
from jusnap.ports import served_ports
from jusnap.registry import Kernel, Snapshot
from jusnap.snapshots import Engine

from tests.conftest import Daemon, KernelSession, shutdown_all
from tests.criu_craft import edit_creds, rewrite_hot, with_caps
from tests.helpers import connect, nudge, run_cell


def listening(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on (ss -ltnp)."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    return {int(ln.split()[3].rsplit(":", 1)[1]) for ln in out.splitlines() if f"pid={pid}," in ln}


def connected_to(pid: int, ports: set[int]) -> list[str]:
    """Established TCP connections of ``pid`` whose peer port is one of ``ports``."""
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established"], capture_output=True, text=True, check=True
    ).stdout
    return [
        f"{f[2]} -> {f[3]}"
        for f in (ln.split() for ln in out.splitlines() if f"pid={pid}," in ln)
        if int(f[3].rsplit(":", 1)[1]) in ports
    ]


def ports_of(conn_ports: str) -> set[int]:
    return {int(p) for p in conn_ports.split(",")}


def test_a_real_files_image_reencodes_byte_for_byte(kernel: KernelSession, engine: Engine) -> None:
    snap = engine.snapshot(kernel.id)
    assert isinstance(snap, Snapshot)
    entry = engine.hot.get(snap.id)
    assert entry is not None
    data = (entry.images / "files.img").read_bytes()
    again = image(data[:8], [Message.parse(e).encode() for e in entries(data, FILES_MAGIC)])
    assert again == data
    served = served_ports(data)
    # the 5 Jupyter ports and ipykernel's debugpy stream socket
    assert ports_of(snap.ports) < served and len(served) >= 6, served


def test_restore_into_a_kernel_with_other_ports(engine: Engine) -> None:
    a = KernelSession(engine)
    a.run("x = 41\nimport random, uuid\nsid = get_ipython().kernel.session.session")
    before = a.value("sid")
    snap = engine.snapshot(a.id)
    assert isinstance(snap, Snapshot)
    a.close()
    engine.kernels.shutdown(a.id)  # its snapshots stay; its PID is free again
    b = KernelSession(engine)
    try:
        assert ports_of(b.kernel.ports()).isdisjoint(ports_of(snap.ports))
        assert engine.restorable(snap, b.kernel)
        engine.restore(snap.id, into=b.id)
        b.after_restore()
        assert b.value("x") == "41"
        b.run("x += 1")
        assert b.value("x") == "42"
        k = engine.kernels.get(b.id)
        assert k.pid is not None and engine.supervisor.alive(k)
        own = listening(k.pid)
        assert ports_of(b.kernel.ports()) <= own
        assert own.isdisjoint(ports_of(snap.ports)), own
        assert connected_to(k.pid, ports_of(snap.ports)) == []
        assert b.value("get_ipython().kernel.session.session") != before
        cfile = str(engine.supervisor.connection_file(k))
        app = "__import__('ipykernel.kernelapp').kernelapp.IPKernelApp.instance()"
        assert b.value(f"{app}.connection_file") == repr(cfile)
        # the fixup left nothing in the user's namespace, history or count
        assert b.value("[n for n in ('_fixup', 'ARGS') if n in globals()]") == "[]"
        assert b.value("[c for c in In if '<jusnap' + '-fixup>' in c]") == "[]"
    finally:
        b.close()


def fork(engine: Engine, snap: Snapshot, **options: object) -> tuple[ForkResult, KernelSession]:
    """Fork ``snap`` and connect a client to the fork, as the notebook copy would."""
    result = fork_snapshot(engine, snap.id, None, **options)  # type: ignore[arg-type]
    return result, KernelSession.attach(engine, result.kernel.id)


def test_fork_of_a_stopped_kernels_snapshot(engine: Engine) -> None:
    """Any kernel's snapshot forks once its PID is free; the fork is a kernel of its own."""
    a = KernelSession(engine)
    a.run("x = 1\ngen = iter(range(10)); next(gen)")
    snap = engine.snapshot(a.id)
    assert isinstance(snap, Snapshot)
    a.close()
    engine.kernels.shutdown(a.id)
    result, b = fork(engine, snap, reseed=False)
    try:
        k = result.kernel
        assert (k.parent_kernel_id, k.parent_snapshot_id) == (a.id, snap.id)
        assert k.id != a.id and k.status == "running"
        public = result.public()
        assert public["parent_snapshot_id"] == snap.id
        assert set(public["ports_moved"]) >= {str(p) for p in ports_of(snap.ports)}
        assert b.value("(x, next(gen))") == "(1, 1)"
        assert listening(k.pid).isdisjoint(ports_of(snap.ports))
        assert engine.list_snapshots(k.id) == []
    finally:
        b.close()


SETUP = r"""
import os, tempfile, threading, random
x = 1
def counter():
    i = 0
    while True:
        yield i
        i += 1
gen = counter()
[next(gen) for _ in range(10)]
path = os.path.join(tempfile.mkdtemp(), "data.txt")
with open(path, "w") as w:
    w.write("".join(f"line{i}\n" for i in range(10)))
fh = open(path)
fh.readline()
ticks = []
stop = threading.Event()
def work():
    while not stop.is_set():
        ticks.append(1)
        stop.wait(0.01)
worker = threading.Thread(target=work, daemon=True)
worker.start()
"""
CONTINUES = r"""
import time
t0 = len(ticks); time.sleep(0.2)
print(next(gen), fh.readline().strip(), worker.is_alive() and len(ticks) > t0)
"""


def no_connection_into(pid: int, ports: set[int], timeout: float = 5.0) -> list[str]:
    """The fork's connections into the original's ports, once ZeroMQ closed dropped ones."""
    deadline = time.monotonic() + timeout
    while (cross := connected_to(pid, ports)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return cross


AUTOSNAP = "__import__('sys').modules['jusnap_jupyter.autosnap']._instance.kernel_id"


def test_fork_beside_a_running_kernel(engine: Engine) -> None:
    argv = [*engine.settings.kernel_argv(), "--ext=jusnap_jupyter.autosnap"]
    a = KernelSession(engine, argv=argv)
    assert a.value(AUTOSNAP) == repr(a.id)
    a.run(SETUP)
    snap = engine.snapshot(a.id)
    assert isinstance(snap, Snapshot)
    a_session = a.value("get_ipython().kernel.session.session")
    a.run("x = 100")
    a_pid = engine.kernels.get(a.id).pid
    result, b = fork(engine, snap)
    try:
        k = result.kernel
        assert k.pid != a_pid and engine.supervisor.alive(engine.kernels.get(a.id))
        assert b.value("x") == "1" and a.value("x") == "100"
        # both run cells at the same time, and their states diverge
        with ThreadPoolExecutor(2) as pool:
            runs = [pool.submit(s.run, "import time; time.sleep(1); x += 1") for s in (a, b)]
            t0 = time.monotonic()
            for r in runs:
                r.result()
        assert time.monotonic() - t0 < 1.9, "the two cells did not run concurrently"
        assert (a.value("x"), b.value("x")) == ("101", "2")
        # the generator, the open file and the thread continue from the snapshot in the fork
        assert b.run(CONTINUES).split() == ["10", "line1", "True"]
        assert a.run(CONTINUES).split() == ["10", "line1", "True"]
        # an identity of its own, and nothing of the original's
        assert b.value("get_ipython().kernel.session.session") != a_session
        a_ports = ports_of(engine.kernels.get(a.id).ports())
        assert listening(k.pid).isdisjoint(listening(a_pid))
        assert no_connection_into(k.pid, a_ports) == []
        # its automatic snapshots are its own, not the original's
        assert b.value(AUTOSNAP) == repr(k.id)
        assert b.value("__import__('os').environ['JUSNAP_KERNEL_ID']") == repr(k.id)
        assert engine.list_snapshots(k.id) == []
        assert [s.id for s in engine.list_snapshots(a.id)] == [snap.id]
        # the fork goes: the original runs on, with its snapshots
        b.close()
        engine.kernels.shutdown(k.id)
        a.run("x += 1")
        assert a.value("x") == "102"
        assert [s.id for s in engine.list_snapshots(a.id)] == [snap.id]
    finally:
        b.close()
        a.close()


def test_fork_of_a_fork_and_deleting_either_side(engine: Engine) -> None:
    a = KernelSession(engine)
    a.run("x = 'a'")
    snap_a = engine.snapshot(a.id)
    assert isinstance(snap_a, Snapshot)
    _r, b = fork(engine, snap_a)
    c: KernelSession | None = None
    try:
        b.run("x = 'b'")
        snap_b = engine.snapshot(b.id)
        assert isinstance(snap_b, Snapshot)
        result_c, c = fork(engine, snap_b)
        assert result_c.kernel.parent_kernel_id == b.id
        assert c.value("x") == "'b'"
        assert [s.id for s in engine.list_snapshots(b.id)] == [snap_b.id]
        assert [s.id for s in engine.list_snapshots(a.id)] == [snap_a.id]
        # the original and its snapshots go: the forks do not notice
        a.close()
        engine.kernels.shutdown(a.id)
        engine.delete_snapshot(snap_a.id)
        b.run("x += '!'")
        assert b.value("x") == "'b!'"
        # the fork's snapshot goes: its own fork runs on
        engine.delete_snapshot(snap_b.id)
        c.run("x += '?'")
        assert c.value("x") == "'b?'"
        assert engine.kernels.get(c.id).status == "running"
    finally:
        b.close()
        if c is not None:
            c.close()


def test_fork_while_the_original_is_busy(engine: Engine) -> None:
    a = KernelSession(engine)
    a.run("x = 7")
    snap = engine.snapshot(a.id)
    assert isinstance(snap, Snapshot)
    busy = a.client.execute("import time\nfor _ in range(40): time.sleep(0.1)\nx = 8")
    _r, b = fork(engine, snap)
    try:
        assert b.value("x") == "7"
        reply = a.client.get_shell_msg(timeout=60)
        assert reply["parent_header"]["msg_id"] == busy
        assert reply["content"]["status"] == "ok"
        assert a.value("x") == "8" and b.value("x") == "7"
    finally:
        b.close()
        a.close()


def test_fork_through_the_api_and_the_cli(daemon: Daemon) -> None:
    api = Client(daemon.socket)
    k = json.loads(daemon.cli("--json", "start").stdout)
    kc = connect(k["connection"])
    forks: list[BlockingKernelClient] = []
    try:
        run_cell(kc, "x = 5")
        sid = daemon.cli("snapshot", k["id"]).stdout.split()[0]
        # bad input: 4xx with a JSON error, nothing created
        before = {x["id"] for x in api.kernels()}
        for body, status, code in [
            ({"reseed": "yes"}, 422, "validation_failed"),
            ({"kernel_id": "../etc"}, 422, "validation_failed"),
            ({"kernel_id": k["id"]}, 409, "kernel_exists"),
            ({"notebook_path": "dir/"}, 422, "validation_failed"),
            ({"unknown": 1}, 422, "validation_failed"),
        ]:
            with pytest.raises(ApiError) as info:
                api.request("POST", f"/snapshots/{sid}/fork", body)
            assert (info.value.http_status, info.value.code) == (status, code), body
        with pytest.raises(ApiError) as info:
            api.fork("01" + "0" * 24)
        assert (info.value.http_status, info.value.code) == (404, "snapshot_not_found")
        assert {x["id"] for x in api.kernels()} == before

        # the API: the caller's kernel id, the notebook, the port map
        mine = str(uuid.uuid4())
        r = api.fork(sid, kernel_id=mine, notebook_path="/tmp/fork-test (fork).ipynb")
        assert r["kernel"]["id"] == mine and r["parent_snapshot_id"] == sid
        assert r["parent_kernel_id"] == k["id"]
        assert r["kernel"]["notebook_path"] == "/tmp/fork-test (fork).ipynb"
        old = {str(k["connection"][p]) for p in PORT_KEYS}
        assert old <= set(r["ports_moved"])
        shown = api.kernel(mine)
        assert (shown["parent_kernel_id"], shown["parent_snapshot_id"]) == (k["id"], sid)
        assert api.kernel(k["id"])["parent_kernel_id"] is None
        conn = api.request("GET", f"/kernels/{mine}/connection")["connection"]
        assert {conn[p] for p in PORT_KEYS} == {r["ports_moved"][p] for p in old}
        forks.append(connect(conn))
        assert run_cell(forks[-1], "print(x)").strip() == "5"

        # the CLI: the new kernel id first, one readable line on error
        out = daemon.cli("fork", sid, "--no-reseed")
        assert out.returncode == 0, out.stderr
        new_id = out.stdout.split()[0]
        assert f"forked from snapshot {sid}" in out.stdout
        forks.append(connect(api.request("GET", f"/kernels/{new_id}/connection")["connection"]))
        assert run_cell(forks[-1], "print(x)").strip() == "5"
        bad = daemon.cli("fork", "01" + "0" * 24)
        assert bad.returncode == 3 and bad.stderr.count("\n") == 1, bad.stderr
        assert "Traceback" not in bad.stderr
        run_cell(kc, "x += 1")
        assert run_cell(kc, "print(x)").strip() == "6"
    finally:
        for c in [kc, *forks]:
            c.stop_channels()


@pytest.mark.parametrize("namespaces", ["on", "off"])
def test_a_fork_keeps_its_own_history_file(
    make_settings: Callable[..., Settings], namespaces: str
) -> None:
    """Namespaced: the staged image names the fork's copy; plain (once the original's PID is
    free): the copy is handed over as an inherited descriptor."""
    e = Engine(
        make_settings(**{"jusnap.ipython.history_enabled": "True",
                         "jusnap.kernels.namespaces": namespaces})
    ).start()  # fmt: skip
    try:
        a = KernelSession(e)
        a.run("x = 'in both histories'")
        snap = e.snapshot(a.id)
        assert isinstance(snap, Snapshot) and snap.has_history
        assert snap.namespaced == (namespaces == "on")
        if not snap.namespaced:
            e.kernels.shutdown(a.id, forget=False)  # its PID must be free; its files stay
            a.close()
            a = KernelSession(e)
            a.run("z = 'original only'")
        result, b = fork(e, snap)
        try:
            k = result.kernel
            original = e.kernels.get(snap.kernel_id).history_file
            assert k.history_file and k.history_file != original
            b.run("y = 'fork only'")
            a.run("z = 'original only'")
            hist = "get_ipython().history_manager"
            b.run(f"{hist}.writeout_cache(); {hist}.save_flag.set()")
            assert b.value(f"str({hist}.hist_file)") == repr(k.history_file)
            # what each kernel has open: its own database, never the other's
            fork_files = {os.readlink(f) for f in glob.glob(f"/proc/{k.pid}/fd/*")}
            assert original not in fork_files
            inputs = b.value(f"[s for _, _, s in {hist}.get_range(output=False)]")
            assert "x = 'in both histories'" in inputs and "z = 'original only'" not in inputs
            assert "'fork only'" in b.value(f"list({hist}.search('y = *'))")
        finally:
            b.close()
            a.close()
    finally:
        shutdown_all(e)


CAUGHT_WRITE = r"""
import os, sqlite3
hm = get_ipython().history_manager
writer = sqlite3.connect(str(hm.hist_file), timeout=0.1)
writer.execute("BEGIN IMMEDIATE")
writer.execute("INSERT INTO history VALUES (?, ?, ?, ?)", (hm.session_number, 99999, "w", "w"))
print(os.path.exists(str(hm.hist_file) + "-journal"))
"""
FINISH_WRITE = r"""
writer.commit()
print(sqlite3.connect(str(hm.hist_file)).execute(
    "SELECT count(*) FROM history WHERE line = 99999").fetchone()[0])
"""


@pytest.mark.parametrize("source", ["hot", "store"])
def test_a_snapshot_that_caught_a_history_write_restores_and_forks(
    make_settings: Callable[..., Settings], source: str
) -> None:
    """The freeze caught SQLite in a write: the kernel held the history database's rollback
    journal open, which SQLite deletes at the commit. The journal is kept with the snapshot and
    put back: the snapshot restores and forks long after that commit, and restored in place it
    finishes its write. (Before: "Can't open file ...history.sqlite-journal on restore".)"""
    e = Engine(make_settings(**{"jusnap.ipython.history_enabled": "True"})).start()
    try:
        a = KernelSession(e)
        assert a.run(CAUGHT_WRITE).strip() == "True"
        snap = e.snapshot(a.id)
        assert isinstance(snap, Snapshot) and snap.has_history
        assert a.run(FINISH_WRITE).strip() == "1"  # that journal is gone now
        if source == "store":
            e.wait_stored()
            e.hot.drop(snap.id)
        # The fork restores with its own copies of both files. (What becomes of the write it
        # copied is SQLite's: it deletes the journal by the name it opened, the original's,
        # and IPython's own connection is reopened on the fork's files by the fixup.)
        _result, b = fork(e, snap)
        try:
            assert b.value("1 + 1") == "2"
        finally:
            b.close()
        e.restore(snap.id)  # in place, into the same files
        a.after_restore()
        assert a.run(FINISH_WRITE).strip() == "1"  # the write the snapshot caught, once
        a.close()
    finally:
        shutdown_all(e)


def test_a_refused_fork_leaves_nothing_and_the_original_untouched(engine: Engine) -> None:
    a = KernelSession(engine)
    a.run("x = 'original'")
    snap = engine.snapshot(a.id)
    assert isinstance(snap, Snapshot)
    engine.wait_stored()  # the hot entry then records its images' hashes
    entry = engine.hot.get(snap.id)
    assert entry is not None
    core = next(entry.images.glob("core-*.img")).name
    rewrite_hot(entry.path, core, lambda b: edit_creds(b, with_caps()))  # as an attacker could
    pid = engine.kernels.get(a.id).pid
    before = {k.id for k in engine.registry.kernels()}
    with pytest.raises(ImageRefused, match="capabilities"):
        fork_snapshot(engine, snap.id, None, kernel_id=str(uuid.uuid4()))
    assert {k.id for k in engine.registry.kernels()} == before
    assert sorted(p.name for p in engine.supervisor.kernels_dir.iterdir()) == sorted(before)
    assert engine.kernels.get(a.id).pid == pid
    assert a.value("x") == "'original'"
    a.close()


def test_a_fork_the_daemon_died_in_is_forgotten_at_start(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    e = Engine(settings).start()
    k = Kernel(
        id=str(uuid.uuid4()), owner_uid=0, run_uid=0, run_gid=0, pid=None, started=None,
        status="stopped", argv=["python"], env={}, cwd="/", connection={}, created_at=1.0,
        parent_kernel_id=str(uuid.uuid4()), parent_snapshot_id="01" + "0" * 24,
    )  # fmt: skip
    e.registry.put_kernel(k)
    e.supervisor.kernel_dir(k.id).mkdir(parents=True)
    e.close()
    e = Engine(settings).start()
    try:
        assert e.registry.get_kernel(k.id) is None
        assert not e.supervisor.kernel_dir(k.id).exists()
    finally:
        shutdown_all(e)


def test_daemon_killed_mid_fork_leaves_no_fork_behind(daemon: Daemon) -> None:
    """kill -9 of the daemon once CRIU restored the fork, before it was adopted: the next
    daemon removes the fork's record and kills the copy (its fixup never ran); the original
    runs on."""
    k = json.loads(daemon.cli("--json", "start").stdout)
    kc = connect(k["connection"])
    try:
        run_cell(kc, "x = 'original'")
        sid = daemon.cli("snapshot", k["id"]).stdout.split()[0]
        daemon.stop()
        daemon.start(env={"JUSNAP_FAILPOINT": "fork:criu-restored"})
        r = daemon.cli("fork", sid, timeout=60)
        assert r.returncode != 0  # the daemon died under the request
        assert daemon.proc is not None
        daemon.proc.wait(timeout=30)
        db = sqlite3.connect(daemon.state_dir / "jusnap.db")
        (row,) = db.execute(
            "SELECT id, connection FROM kernels WHERE parent_snapshot_id IS NOT NULL"
        ).fetchall()
        db.close()
        fork_id, shell_port = row[0], json.loads(row[1])["shell_port"]
        assert any("pid=" in ln for ln in _listeners(shell_port)), "CRIU had restored it"
        daemon.start()
        assert [x["id"] for x in Client(daemon.socket).kernels()] == [k["id"]]
        assert not (daemon.state_dir / "kernels" / fork_id).exists()
        assert _listeners(shell_port) == []
        nudge(kc)
        assert run_cell(kc, "print(x)").strip() == "original"
    finally:
        kc.stop_channels()


def _listeners(port: int) -> list[str]:
    out = subprocess.run(
        ["ss", "-Hltnp", f"( sport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    return [ln for ln in out.splitlines() if ln.strip()]
