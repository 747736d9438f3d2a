"""Copies of a kernel on other ports, on real CRIU with real ipykernels as an unprivileged user:
a snapshot restored into a kernel whose ports differ, and forks beside a running kernel."""

from __future__ import annotations

import subprocess

from jusnap.criu_images import FILES_MAGIC, Message, entries, image
from jusnap.fork import ForkResult
from jusnap.fork import fork as fork_snapshot
from jusnap.ports import served_ports
from jusnap.registry import Snapshot
from jusnap.snapshots import Engine

from tests.conftest import KernelSession


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
        assert k.pid == snap.pid
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
