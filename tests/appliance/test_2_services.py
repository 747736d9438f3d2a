"""The supervised services: who listens where, and crash recovery under supervisord."""

from __future__ import annotations

import os
import re
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.jupyter import KernelWebsocket

from .host import (
    DAEMON_PROGRAM,
    JUPYTER,
    JUPYTER_PROGRAM,
    JUSNAP_CLI,
    NOTEBOOKS,
    cleanup_kernel,
    jupyter_api,
    jusnap,
    program_pid,
    run,
    token,
    wait_for,
    write_notebook,
)

SOCKET = Path("/run/jusnap/jusnap.sock")
LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|\[::1\]|::1|\[::ffff:127\.\d+\.\d+\.\d+\])$")


def listeners() -> list[tuple[str, int, str]]:
    """(address, port, processes) of every listening TCP socket."""
    out = []
    for line in run("ss", "-Hltnp").stdout.splitlines():
        cols = line.split()
        local = cols[3]
        addr, _, port = local.rpartition(":")
        out.append((addr, int(port), " ".join(cols[5:])))
    return out


def socket_id() -> tuple[int, int]:
    """Identifies the socket file (inode numbers are reused at once on some filesystems)."""
    st = SOCKET.stat()
    return st.st_ino, st.st_ctime_ns


def pids_of(pid: int) -> set[int]:
    """pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        out.add(p)
        todo += children.get(p, [])
    return out


def test_programs_running(appliance: None) -> None:
    status = run("supervisorctl", "status", check=False).stdout
    assert re.search(rf"^{DAEMON_PROGRAM}\s+RUNNING", status, re.MULTILINE), status
    assert re.search(rf"^{JUPYTER_PROGRAM}\s+RUNNING", status, re.MULTILINE), status
    assert SOCKET.is_socket()
    # Jupyter runs as the jusnap user, the daemon as root.
    assert Path(f"/proc/{program_pid(JUPYTER_PROGRAM)}").stat().st_uid != 0
    assert Path(f"/proc/{program_pid(DAEMON_PROGRAM)}").stat().st_uid == 0


# CAP_* numbers (linux/capability.h) of the daemon's bounding set (supervisor role defaults).
DAEMON_CAPS = {"chown": 0, "dac_override": 1, "fowner": 3, "kill": 5, "setgid": 6, "setuid": 7,
               "setpcap": 8, "net_admin": 12, "sys_chroot": 18, "sys_ptrace": 19, "sys_admin": 21,
               "checkpoint_restore": 40}  # fmt: skip


def test_daemon_runs_with_a_small_capability_set(appliance: None) -> None:
    """Root, but not full root: what the daemon (and all it starts) can hold is bounded."""
    status = Path(f"/proc/{program_pid(DAEMON_PROGRAM)}/status").read_text()
    caps = dict(line.split(":\t") for line in status.splitlines() if line.startswith("Cap"))
    expected = sum(1 << n for n in DAEMON_CAPS.values())
    assert int(caps["CapBnd"], 16) == expected, caps
    assert int(caps["CapEff"], 16) == expected, caps
    assert int(caps["CapAmb"], 16) == 0, caps


def test_only_nginx_listens_beyond_loopback(appliance: None) -> None:
    ours = pids_of(program_pid(DAEMON_PROGRAM)) | pids_of(program_pid(JUPYTER_PROGRAM))
    socks = listeners()
    by_port = {port: procs for addr, port, procs in socks if not LOOPBACK.match(addr)}
    assert "nginx" in by_port.get(80, ""), socks
    assert "nginx" in by_port.get(443, ""), socks
    public_pids = {
        int(p)
        for addr, _port, procs in socks
        if not LOOPBACK.match(addr)
        for p in re.findall(r"pid=(\d+)", procs)
    }
    assert not public_pids & ours, (
        f"the daemon, Jupyter or a kernel listens beyond loopback: {socks}"
    )
    for addr, port, procs in socks:
        if port in (8000, 8888):
            assert LOOPBACK.match(addr), (addr, port, procs)


@dataclass
class _Server:
    """What tests.jupyter.KernelWebsocket needs to know about a Jupyter server."""

    port: int
    token: str


@dataclass
class Kernel:
    id: str
    notebook: str
    ws: KernelWebsocket

    def reconnect(self) -> None:
        self.ws.close()
        self.ws = KernelWebsocket(_Server(8888, token()), self.id)  # type: ignore[arg-type]


@pytest.fixture
def kernel(appliance: None) -> Iterator[Kernel]:
    """A Jusnap kernel started through Jupyter (provisioner → daemon), as the UI would."""
    name = write_notebook(f"appliance-{uuid.uuid4().hex[:8]}.ipynb", ["x = 41"])
    session = jupyter_api(
        "POST",
        "api/sessions",
        {"path": name, "name": name, "type": "notebook", "kernel": {"name": "jusnap-python3"}},
        expect=201,
    )
    kid = session["kernel"]["id"]
    k = Kernel(kid, name, KernelWebsocket(_Server(8888, token()), kid))  # type: ignore[arg-type]
    try:
        yield k
    finally:
        k.ws.close()
        cleanup_kernel(kid)
        (NOTEBOOKS / name).unlink(missing_ok=True)


def daemon_kernel(kid: str) -> dict:
    return next(k for k in jusnap("kernels") if k["id"] == kid)


def test_daemon_crash_restarts_and_readopts_kernels(kernel: Kernel) -> None:
    assert kernel.ws.run("x = 41; print(x)").strip() == "41"
    before = daemon_kernel(kernel.id)
    assert before["status"] == "running" and before["pid"]
    snap = jusnap("snapshot", kernel.id, "--label", "appliance-crash")
    sid = snap.get("id") or snap.get("snapshot", {}).get("id")
    assert sid, snap

    old = program_pid(DAEMON_PROGRAM)
    old_socket = socket_id()
    os.kill(old, signal.SIGKILL)
    wait_for(
        "supervisord to restart the daemon",
        lambda: (p := program_pid(DAEMON_PROGRAM)) and p != old,
        timeout=60,
    )
    # Until the new master binds, the old worker may still answer on the old socket.
    wait_for("the new daemon's socket", lambda: socket_id() != old_socket, timeout=60)
    wait_for("the new daemon", lambda: run(JUSNAP_CLI, "health", check=False).returncode == 0)

    after = daemon_kernel(kernel.id)
    assert after["status"] == "running", after
    assert after["pid"] == before["pid"], "the kernel was re-adopted, not restarted"
    os.kill(after["pid"], 0)
    assert sid in [s["id"] for s in jusnap("snapshots", kernel.id)]
    # The kernel kept its state and still answers through Jupyter.
    assert kernel.ws.run("print(x + 1)").strip() == "42"
    # And the new daemon can snapshot it.
    assert jusnap("snapshot", kernel.id, "--label", "after-crash")


def test_jupyter_crash_restarts_and_kernels_survive(kernel: Kernel) -> None:
    assert kernel.ws.run("x = 7; print(x)").strip() == "7"
    jusnap("snapshot", kernel.id, "--label", "before-jupyter-crash")
    kpid = daemon_kernel(kernel.id)["pid"]

    old = program_pid(JUPYTER_PROGRAM)
    os.kill(old, signal.SIGKILL)
    wait_for(
        "supervisord to restart Jupyter",
        lambda: (p := program_pid(JUPYTER_PROGRAM)) and p != old and p,
        timeout=60,
    )
    wait_for(
        "the new Jupyter",
        lambda: jupyter_api("GET", "api/status", expect=200) is not None,
        timeout=90,
    )

    # The daemon still runs the kernel (Jupyter does not own it) and keeps its snapshots.
    k = daemon_kernel(kernel.id)
    assert (k["status"], k["pid"]) == ("running", kpid)
    os.kill(kpid, 0)
    labels = [s.get("label") for s in jusnap("snapshots", kernel.id)]
    assert "before-jupyter-crash" in labels
    # Jupyter serves the snapshot API again (through its extension, with its auth).
    snaps = jupyter_api("GET", f"jusnap/api/v1/kernels/{kernel.id}/snapshots", expect=200)
    assert "before-jupyter-crash" in [s.get("label") for s in snaps]
    assert JUPYTER  # the same loopback address as before


def test_pid_space_is_wide(appliance: None) -> None:
    """Kernels are restored with their own PIDs: the role widens the PID space so that other
    processes rarely take them meanwhile."""
    assert int(Path("/proc/sys/kernel/pid_max").read_text()) >= 4194304
