"""Talking to a kernel over its Jupyter channels from the daemon.

The daemon listens to every kernel's IOPub to know whether it is busy and its execution count
(recorded with each snapshot) without ever sending to the kernel's shell, where a request would
queue behind a running cell. After a restore it performs the handshake that proves the kernel
is answering again.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.session import Session

from ..errors import RestoreFailed
from . import tcpdiag

log = logging.getLogger(__name__)


def _session(conn: dict[str, Any]) -> Session:
    key = conn["key"].encode() if isinstance(conn["key"], str) else conn["key"]
    return Session(key=key, signature_scheme=conn.get("signature_scheme", "hmac-sha256"))


def _url(conn: dict[str, Any], port_key: str) -> str:
    return f"{conn.get('transport', 'tcp')}://{conn['ip']}:{conn[port_key]}"


@dataclass(frozen=True)
class Window:
    """What the kernel did between two moments (a dump's start and end), as IOPub told it."""

    count: int | None  # the last cell that had started by the window's start (None: none seen)
    quiet: bool  # no cell ran at any moment of the window: the state is exactly after ``count``
    # A request that may change the kernel's state started in the window without being a cell:
    # silent executes and comm messages (widgets) publish no ``execute_input``.
    requested: bool = False


# Requests that only read: a kernel that answered them holds the state it had.
READ_ONLY_REQUESTS = frozenset(
    {"kernel_info_request", "comm_info_request", "history_request", "is_complete_request"}
)


class IopubMonitor:
    """One background thread watching the IOPub channel of one kernel.

    Besides the live state it keeps when each recent cell started and ended (the kernel's own
    timestamps on ``execute_input`` and on the idle status that closes the request), so that a
    snapshot can record the execution count the frozen process really had, and tell whether a
    cell was running at any moment of the freeze.
    """

    def __init__(self, conn: dict[str, Any], on_update: Callable[[dict[str, Any]], None]) -> None:
        self.conn = conn
        self.on_update = on_update
        # (kernel time it started, its count, the request's msg_id)
        self.inputs: collections.deque[tuple[float, int, str]] = collections.deque(maxlen=256)
        self.ends: dict[str, float] = {}  # request msg_id -> kernel time it ended
        self.newest = 0.0  # kernel timestamp of the newest message seen
        self.requested = 0.0  # kernel timestamp of the newest request that may change state
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jusnap-iopub", daemon=True)
        # A pipe that wakes the thread's poll at stop(); closed by the thread as it ends.
        self._wake: tuple[int, int] | None = None
        self._wake_lock = threading.Lock()

    def start(self) -> None:
        self._wake = os.pipe()
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        """Stop watching; ``wait``: until the thread has closed its socket (woken at once; a
        restore waits for that once the kernel is stopped, see ``Engine._replace``)."""
        self._stop.set()
        with self._wake_lock:
            if self._wake is not None:
                os.write(self._wake[1], b"\0")
        if wait and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(_url(self.conn, "iopub_port"))
        session = _session(self.conn)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        if self._wake is not None:
            poller.register(self._wake[0], zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if sock not in dict(poller.poll(200)):
                    continue
                frames = sock.recv_multipart()
                try:
                    _, msg_frames = session.feed_identities(frames, copy=True)
                    msg = session.deserialize(msg_frames, content=True, copy=True)
                except Exception:  # noqa: S112 - a bad frame must not kill the watcher
                    continue
                self._note(msg)
                update = _interpret(msg)
                if update:
                    self.on_update(update)
        finally:
            sock.close(0)
            with self._wake_lock:
                if self._wake is not None:
                    for fd in self._wake:
                        os.close(fd)
                    self._wake = None

    def _note(self, msg: dict[str, Any]) -> None:
        date = msg["header"].get("date")
        when = date.timestamp() if hasattr(date, "timestamp") else None
        if when is None:
            return
        content = msg.get("content") or {}
        parent = msg.get("parent_header") or {}
        kind = msg["header"].get("msg_type")
        count = content.get("execution_count")
        if kind == "execute_input" and isinstance(count, int):
            self.inputs.append((when, count, str(parent.get("msg_id"))))
        elif (
            kind == "status"
            and content.get("execution_state") == "busy"
            and parent.get("msg_type") not in READ_ONLY_REQUESTS
        ):
            self.requested = max(self.requested, when)
        elif (
            kind == "status"
            and content.get("execution_state") == "idle"
            and parent.get("msg_type") == "execute_request"
        ):
            self.ends[str(parent.get("msg_id"))] = when
            if len(self.ends) > 512:  # only recent cells matter
                for key in list(self.ends)[:256]:
                    del self.ends[key]
        # Last: a reader that sees ``newest`` past a moment sees every message before it.
        self.newest = max(self.newest, when)

    def caught_up(self, when: float, settle: float) -> bool:
        """Wait up to ``settle`` s until a message published after ``when`` has arrived."""
        deadline = time.monotonic() + settle
        while self.newest < when and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.newest >= when

    def cell_running(self) -> bool:
        """Whether the newest cell seen started and has not ended (its request's idle status
        has not arrived). Status messages alone cannot say: a ``kernel_info`` (a ping, the
        notebook's nudge) publishes busy and idle too."""
        inputs = list(self.inputs)
        return bool(inputs) and inputs[-1][2] not in self.ends

    def cell_ended(self, count: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s until cell ``count`` has ended (its request's idle status
        arrived) or a later cell has started."""
        deadline = time.monotonic() + timeout
        while True:
            inputs = list(self.inputs)
            if any(c > count for _, c, _ in inputs) or any(
                c == count and mid in self.ends for _, c, mid in inputs
            ):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def window(self, start: float, end: float, settle: float) -> Window:
        """What happened between ``start`` and ``end`` (kernel clock = this machine's)."""
        caught_up = self.caught_up(end, settle)
        inputs = list(self.inputs)
        before = [(t, count, mid) for t, count, mid in inputs if t <= start]
        during = [count for t, count, _ in inputs if start < t <= end]
        last = before[-1] if before else None
        ended = last is None or self.ends.get(last[2], float("inf")) <= start
        return Window(
            count=last[1] if last else None,
            quiet=caught_up and ended and not during,
            requested=self.requested > start,
        )


def _interpret(msg: dict[str, Any]) -> dict[str, Any] | None:
    kind = msg["header"].get("msg_type")
    content = msg.get("content") or {}
    if kind == "status":
        return {"execution_state": content.get("execution_state")}
    if kind == "execute_input" and isinstance(content.get("execution_count"), int):
        return {"execution_count": content["execution_count"]}
    return None


def handshake(
    conn: dict[str, Any], timeout: float, alive: Callable[[], bool] | None = None
) -> float:
    """Resend kernel_info every 0.25 s until a reply *and* an IOPub status arrive.

    Returns the seconds it took. Raises RestoreFailed when the kernel stays silent, or at
    once when ``alive`` says it is gone (a lazy restore whose pages stopped coming).
    """
    # A private context, terminated on return: its sockets are then really closed, and do not
    # count as one of the clients the restore waits for (see wait_for_peers).
    ctx = zmq.Context()
    kc = BlockingKernelClient(context=ctx)
    kc.load_connection_info(conn)
    # Shell and IOPub only: the heartbeat channel is a thread that makes its socket when it
    # first runs, which a fast handshake's ``ctx.destroy`` could precede (its traceback
    # ended in the daemon's log, CI soak).
    kc.start_channels(stdin=False, hb=False, control=False)
    t0 = time.monotonic()
    # Both sockets in one poll, read as messages arrive: reading them in turn with a timeout
    # each (as before) added ~20 ms after the last message to every restore.
    shell, iopub = kc.shell_channel, kc.iopub_channel
    poller = zmq.Poller()
    poller.register(shell.socket, zmq.POLLIN)
    poller.register(iopub.socket, zmq.POLLIN)
    try:
        sent: set[str] = set()
        reply = status = False
        next_send = t0
        while (now := time.monotonic()) - t0 < timeout:
            if now >= next_send:
                sent.add(kc.kernel_info())
                next_send = now + 0.25
            ready = dict(poller.poll(max(1, int(min(next_send - now, 0.05) * 1000))))
            with contextlib.suppress(Exception):
                while shell.socket in ready and shell.msg_ready():
                    msg = shell.get_msg(timeout=0)
                    if msg["parent_header"].get("msg_id") in sent:
                        reply = True
            with contextlib.suppress(Exception):
                while iopub.socket in ready and iopub.msg_ready():
                    msg = iopub.get_msg(timeout=0)
                    if msg["msg_type"] == "status" and msg["parent_header"].get("msg_id") in sent:
                        status = True
            if reply and status:
                return time.monotonic() - t0
            if alive is not None and not alive():
                raise RestoreFailed("the restored kernel exited before it answered")
        raise RestoreFailed(f"the restored kernel did not answer within {timeout:.0f}s")
    finally:
        kc.stop_channels()
        ctx.destroy(linger=0)


def established_peers(port: int) -> int:
    """How many TCP connections a kernel has accepted on ``port`` (sock_diag, ``tcpdiag.py``;
    else /proc/net/tcp*, 30 ms a read on a machine with a few thousand sockets)."""
    peers = tcpdiag.accepted(port)
    if peers is not None:
        return len(peers)
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    fields = line.split()
                    local, st = fields[1], fields[3]
                    if st == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                        count += 1
        except OSError:
            continue
    return count


# What a ZeroMQ SUB peer has sent once it is connected but has not subscribed yet: the ZMTP
# greeting (64 bytes) and its READY command (27 bytes for a SUB without a routing id). Its
# subscription (a SUBSCRIBE command, 12 bytes for "" in ZMTP 3.1; 3 bytes in ZMTP 3.0) comes
# on top, so more than this many bytes received means the peer has subscribed again.
SUB_HANDSHAKE_BYTES = 64 + 27


def peer_bytes(port: int) -> dict[str, int] | None:
    """Bytes each accepted TCP connection on ``port`` has received, by peer address (from
    the kernel's socket statistics: sock_diag, else ``ss -ti``); None when neither works."""
    peers = tcpdiag.accepted(port)
    if peers is not None:
        return peers
    # The daemon's PATH under supervisord may lack /usr/sbin-style dirs: look in the usual places.
    ss = shutil.which("ss") or next(
        (p for p in ("/usr/bin/ss", "/bin/ss") if Path(p).exists()), None
    )
    if ss is None:
        return None
    try:
        out = subprocess.run(
            [ss, "-tinH", "state", "established", f"( sport = :{port} )"],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    peers: dict[str, int] = {}
    current: str | None = None
    for line in out.splitlines():
        if not line[:1].isspace():
            fields = line.split()
            current = fields[-1] if len(fields) >= 4 else None
            if current is not None:
                peers[current] = 0
        elif current is not None:
            m = re.search(r"\bbytes_received:(\d+)", line)
            if m:
                peers[current] = int(m.group(1))
    return peers


@dataclass
class Reconnection:
    """How the IOPub clients of a kernel came back after a restore."""

    expected: int
    connected: int
    # Clients connected again but without a subscription: their next cell's output is
    # published to nobody unless they send a request first (a "nudge").
    unsubscribed: list[str]
    seconds: float

    @property
    def complete(self) -> bool:
        return self.connected >= self.expected and not self.unsubscribed


def wait_for_peers(
    port: int, expected: int, timeout: float, subscribe_timeout: float = 1.0
) -> Reconnection:
    """Wait until the IOPub clients connected before a restore are back *and subscribed*.

    ZeroMQ clients reconnect by themselves (every 100 ms by default), but a SUB socket sends
    its subscription again only when its own thread next touches the socket: a client that
    polls all the time (Jupyter's server, through its event loop) does that within
    milliseconds, one that only reads when it expects something (a script's blocking
    client) does it when it runs its next cell, whose first messages (busy, execute_input,
    the first output) the kernel then publishes before the subscription arrives: lost,
    although the reply comes. Counting TCP connections alone (as before) therefore said
    "back" too early; the kernel's own socket statistics say which peers subscribed.

    Waits ``timeout`` seconds for the connections and then at most ``subscribe_timeout``
    for their subscriptions; the caller logs what is still missing.
    """
    t0 = time.monotonic()
    deadline = t0 + timeout
    # Looked at every 5 ms: a look is one sock_diag dump (~1-2 ms, tcpdiag.py), and the client
    # the restore waits for is what the user's first cell waits for too.
    while time.monotonic() < deadline and established_peers(port) < expected:
        time.sleep(0.005)
    connected = established_peers(port)
    sub_deadline = min(deadline, time.monotonic()) + subscribe_timeout
    unsubscribed: list[str] = []
    while True:
        peers = peer_bytes(port)
        if peers is None:
            # No socket statistics here: the old rule (connected, plus a moment for the
            # subscription to follow the handshake).
            time.sleep(0.1)
            unsubscribed = []
            break
        connected = len(peers)
        unsubscribed = sorted(a for a, n in peers.items() if n <= SUB_HANDSHAKE_BYTES)
        if (not unsubscribed and connected >= expected) or time.monotonic() >= sub_deadline:
            break
        time.sleep(0.005)
    return Reconnection(expected, connected, unsubscribed, time.monotonic() - t0)


def ping_control(conn: dict[str, Any], timeout: float = 1.0) -> bool:
    """A ``kernel_info_request`` on the control channel, answered even while a cell runs: the
    busy and idle statuses it publishes on IOPub carry the kernel's clock of now, so an IOPub
    watcher that sees them has seen everything the kernel published before."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(_url(conn, "control_port"))
    try:
        _session(conn).send(sock, "kernel_info_request", {})
        return bool(sock.poll(int(timeout * 1000)))
    finally:
        sock.close(0)


def request_shutdown(conn: dict[str, Any], timeout: float = 1.0) -> bool:
    """Ask the kernel to exit (``shutdown_request`` on control, as Jupyter does); True when
    it acknowledged. The polite stop of a kernel that is its PID namespace's init: such a
    process never gets a signal it has no handler for (SIGTERM included) from outside.

    A private context, destroyed on return: its descriptors are all closed then (a shared
    one's reaper thread closes them later, which reads as a descriptor leak)."""
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(_url(conn, "control_port"))
        _session(conn).send(sock, "shutdown_request", {"restart": False})
        return bool(sock.poll(int(timeout * 1000)))
    finally:
        ctx.destroy(linger=0)


def execute_silently(conn: dict[str, Any], code: str, timeout: float) -> bool:
    """Run ``code`` in the kernel without history or output; False if it did not finish."""
    kc = BlockingKernelClient()
    kc.load_connection_info(conn)
    kc.start_channels(iopub=False, stdin=False, hb=False, control=False)  # its reply is all
    try:
        msg_id = kc.execute(code, silent=True, store_history=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = kc.get_shell_msg(timeout=0.1)
            except Exception:  # noqa: S112 - queue.Empty: keep waiting
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg["content"].get("status") == "ok"
        return False
    finally:
        kc.stop_channels()
