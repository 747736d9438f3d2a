"""Output after a restore under concurrent load (issue 15: "the first execute after a restore
got its reply but no IOPub messages for 120 s", 1 in 11 restores while another client drove
the API).

Cause (reproduced here): a ZeroMQ SUB socket reconnects by itself, but sends its
subscription again only when its own thread next touches the socket. The daemon counted TCP
connections and waited 0.1 s more; a client that had not touched its socket yet (or whose
event loop was busy) subscribed only after its next cell had published busy, execute_input
and the output: lost, while the reply and the final idle arrived. The daemon now waits for
every client's subscription (from the kernel's socket statistics) and logs loudly for a
client that does not come back or does not subscribe.

Real daemon (gunicorn, threads), real CRIU, real kernels. One kernel is restored again and
again while a second thread drives the API (lists, snapshots of another kernel). Two
clients stay connected throughout: one like Jupyter's server (its IOPub socket is read all
the time by its own thread, as a ZMQStream on an event loop is, and it runs a cell at once
after the restore), one like the notebook frontend plus the server's nudge (a blocking
client that nudges, then runs a cell). Each must see its cell's output within seconds.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
import time
from typing import Any

import zmq
from jupyter_client.blocking import BlockingKernelClient
from jusnap.client import ApiError, Client
from jusnap.snapshots import Engine

from tests.conftest import Daemon, KernelSession
from tests.helpers import connect, nudge, run_cell

RESTORES = 50
OUTPUT_WITHIN = 5.0


class PolledClient:
    """A kernel client whose IOPub socket is read by its own thread, as Jupyter's server reads
    it (a ZMQStream on its event loop), and which never nudges. The loop gets to the socket
    every ``every`` seconds, as a server busy with other clients does: a restore that answers
    before the socket was touched again (and so subscribed again) loses the next cell's
    first messages; with the old rule (connections counted, then 0.1 s) this test lost 2 of
    50 such outputs, like the 1 in 11 of the issue."""

    def __init__(self, conn: dict[str, Any], every: float = 0.3) -> None:
        self.every = every
        self.kc = BlockingKernelClient()
        self.kc.load_connection_info(conn)
        self.kc.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._url = f"tcp://127.0.0.1:{conn['iopub_port']}"
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _read(self) -> None:
        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self._url)
        self._ready.set()
        try:
            while not self._stop.wait(self.every):
                while sock.poll(0):
                    frames = sock.recv_multipart()
                    _, msg = self.kc.session.feed_identities(frames)
                    self.messages.put(self.kc.session.deserialize(msg))
        finally:
            sock.close(0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.kc.stop_channels()


def _output_arrives(execute: Any, get_iopub: Any, text: str) -> bool:
    """Run ``print(text)``; whether its stream output arrives within OUTPUT_WITHIN s."""
    msg_id = execute(f"print({text!r})")
    deadline = time.monotonic() + OUTPUT_WITHIN
    while time.monotonic() < deadline:
        try:
            msg = get_iopub(timeout=0.05)
        except queue.Empty:
            continue
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "stream"
            and text in msg["content"].get("text", "")
        ):
            return True
    return False


def _drive_api(client: Client, other: str, stop: threading.Event, errors: list[str]) -> None:
    """The second client: what a busy user's other notebook and panel do meanwhile."""
    n = 0
    while not stop.is_set():
        try:
            client.kernels()
            client.all_snapshots()
            if n % 3 == 0:
                client.snapshot(other)
            client.snapshots(other)
        except ApiError as exc:
            if exc.http_status != 409:  # "busy" is an answer, not a failure
                errors.append(f"{exc.http_status} {exc}")
        except Exception as exc:
            errors.append(repr(exc))
        n += 1


def _named_clients(line: str) -> list[str]:
    """The client addresses a daemon log line about unsubscribed clients names."""
    m = re.search(r"IOPub client\(s\) (.*?) reconnected", line)
    return m.group(1).split(", ") if m else []


def _drain(kc: BlockingKernelClient) -> None:
    for get in (kc.get_shell_msg, kc.get_iopub_msg):
        while True:
            try:
                get(timeout=0.01)
            except queue.Empty:
                break


def test_every_first_execute_after_a_restore_gets_its_output(daemon: Daemon) -> None:
    client = Client(daemon.socket, timeout=120)
    a = client.launch()
    b = client.launch()
    conn: dict[str, Any] = a["connection"]
    frontend = connect(conn)
    server = PolledClient(conn)
    try:
        run_cell(frontend, "x = 41")
        snap = client.snapshot(a["id"], label="base")["snapshot"]
        stop, errors = threading.Event(), []
        driver = threading.Thread(
            target=_drive_api, args=(Client(daemon.socket), b["id"], stop, errors)
        )
        driver.start()
        lost: list[str] = []
        t0 = time.monotonic()
        try:
            for i in range(RESTORES):
                client.restore(snap["id"])
                if not _output_arrives(server.kc.execute, server.messages.get, f"server-{i}"):
                    lost.append(f"restore {i}: the polled client's first output")
                nudge(frontend, timeout=15)
                if not _output_arrives(frontend.execute, frontend.get_iopub_msg, f"front-{i}"):
                    lost.append(f"restore {i}: the nudging client's first output")
                _drain(frontend)
        finally:
            stop.set()
            driver.join(timeout=120)
        elapsed = time.monotonic() - t0
        log = daemon.log.read_text(errors="replace")
        assert not errors, f"{errors[:3]}\n{log[-4000:]}"
        assert not lost, f"{len(lost)} outputs lost in {RESTORES} restores: {lost[:5]}"
        # The polled client was subscribed again before every restore answered; the blocking
        # one cannot be (it reads its socket only when it nudges), and is named: one client.
        unsubscribed = [line for line in log.splitlines() if "not subscribed again" in line]
        assert len(unsubscribed) <= RESTORES, unsubscribed[:3]
        assert all(len(_named_clients(line)) == 1 for line in unsubscribed), unsubscribed[:3]
        assert "did not reconnect" not in log, log[-4000:]
        assert run_cell(frontend, "print(x)").strip() == "41"
        print(f"{RESTORES} restores under load in {elapsed:.1f}s")
    finally:
        server.close()
        frontend.stop_channels()
        for k in (a, b):
            with contextlib.suppress(ApiError):
                client.shutdown(k["id"])


def test_a_client_that_does_not_subscribe_again_is_logged(
    kernel: KernelSession, engine: Engine, caplog: Any
) -> None:
    """A blocking client does not touch its socket during the restore: it is connected again
    but not subscribed, so the daemon says so (and a nudge brings its output back)."""
    kernel.run("y = 1")
    snap = engine.snapshot(kernel.id)
    with caplog.at_level(logging.WARNING, logger="jusnap.snapshots"):
        engine.restore(snap.id)
    assert any("not subscribed again" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
    kernel.after_restore()
    assert kernel.value("y") == "1"
