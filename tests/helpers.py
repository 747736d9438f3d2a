"""Test helpers shared by the integration suites: running cells like a Jupyter client does."""

from __future__ import annotations

import queue
import time
from typing import Any

from jupyter_client.blocking import BlockingKernelClient


class CellError(AssertionError):
    pass


def connect(connection: dict[str, Any], timeout: float = 60) -> BlockingKernelClient:
    kc = BlockingKernelClient()
    kc.load_connection_info(connection)
    # Without a KernelManager the client judges "alive" by the heartbeat, which gives up after
    # one second without a beat: on a loaded 2-core machine (load 12, seen in CI) a kernel
    # still starting misses that, and wait_for_ready says it "died before replying".
    kc.hb_channel.time_to_dead = 10.0
    kc.start_channels()
    kc.wait_for_ready(timeout=timeout)
    return kc


def run_cell(kc: BlockingKernelClient, code: str, timeout: float = 60) -> str:
    """Execute ``code`` and return its stdout; raise CellError on an exception in the cell."""
    out: list[str] = []
    errors: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        kind = msg["msg_type"]
        content = msg["content"]
        if kind == "stream" and content.get("name") == "stdout":
            out.append(content["text"])
        elif kind == "execute_result":
            out.append(content["data"].get("text/plain", "") + "\n")
        elif kind == "error":
            errors.append(f"{content['ename']}: {content['evalue']}")

    reply = kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    if reply["content"]["status"] != "ok" or errors:
        raise CellError("; ".join(errors) or str(reply["content"]))
    return "".join(out)


def nudge(kc: BlockingKernelClient, timeout: float = 30) -> None:
    """What a client does after its kernel was restored: resend kernel_info every 0.25 s until
    the reply *and* an IOPub status for it arrive.

    The restored kernel listens again at once, but each ZeroMQ client reconnects on its own
    schedule; until its IOPub subscription is back, a cell's output is published to nobody
    (seen in 1 of 3 restores here without this). Jupyter's server does the same ("nudge") for
    its websocket connections.
    """
    deadline = time.monotonic() + timeout
    sent: set[str] = set()
    reply = status = False
    next_send = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() >= next_send:
            sent.add(kc.kernel_info())
            next_send = time.monotonic() + 0.25
        try:
            msg = kc.get_shell_msg(timeout=0.02)
            reply = reply or msg["parent_header"].get("msg_id") in sent
        except queue.Empty:
            pass
        try:
            while True:
                msg = kc.get_iopub_msg(timeout=0.02)
                if msg["msg_type"] == "status" and msg["parent_header"].get("msg_id") in sent:
                    status = True
        except queue.Empty:
            pass
        if reply and status:
            return
    raise AssertionError(f"kernel did not answer on shell and IOPub within {timeout}s")


def value(kc: BlockingKernelClient, expr: str, timeout: float = 60) -> str:
    return run_cell(kc, f"print(repr({expr}))", timeout).strip()


def drain(kc: BlockingKernelClient) -> None:
    for getter in (kc.get_iopub_msg, kc.get_shell_msg):
        while True:
            try:
                getter(timeout=0.05)
            except queue.Empty:
                break


def wait_until(
    predicate: Any, timeout: float, interval: float = 0.05, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
