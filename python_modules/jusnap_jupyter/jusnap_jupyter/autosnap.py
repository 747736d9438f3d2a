"""IPython extension: ask the Jusnap daemon for an automatic snapshot after every executed cell.

Loaded into Jusnap kernels by their kernelspec (``--ext=jusnap_jupyter.autosnap``). Three rules:

* Never block the cell, never drop the last one: the request is made from a background thread;
  cells that end while a request is under way are folded into one more request, for the newest
  of them, sent when it returns. (Dropping them lost the end of a Run All whenever the daemon
  answered slower than the cells ran: the daemon never heard of the last cell, so no trailing
  snapshot followed it.)
* Never hold a connection to the daemon while being dumped: CRIU cannot dump a Unix socket
  connected outside the kernel. The request says ``"wait": false``; the daemon answers at once
  and starts the dump only after this side has closed the connection.
* Quiet: the daemon decides (on/off per kernel, cooldown); a skipped snapshot prints nothing, a
  failure prints one line, and the same failure is not repeated cell after cell.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

from jusnap.client import Client
from jusnap.errors import JusnapError, KernelNotFound

REQUEST_TIMEOUT = 10.0
_NOTHING = object()  # no cell waiting for a request


def user_cell(result: Any) -> bool:
    """Whether IPython ran a cell of the user's: not the kernel's start-up lines
    (``exec_lines``) nor a frontend's silent request (e.g. a variable inspector). A fresh
    kernel's start-up would otherwise take a snapshot of nothing, which then comes first in
    the notebook's list, above the state its last kernel left (docs/multiuser.md)."""
    info = getattr(result, "info", None)
    if info is None:
        return True
    return bool(getattr(info, "store_history", True)) and not getattr(info, "silent", False)


class AutoSnapshot:
    def __init__(self, kernel_id: str | None) -> None:
        self.kernel_id = kernel_id
        self._lock = threading.Lock()
        self._waiting: object = _NOTHING  # the newest cell not yet asked for
        self._sending = False
        self._last_error: str | None = None

    def post_run_cell(self, result: Any) -> None:
        if not user_cell(result):
            return
        with self._lock:
            self._waiting = getattr(result, "execution_count", None)
            if self._sending:
                return  # the sender asks for it when its request returns
            self._sending = True
        try:
            threading.Thread(target=self._send, name="jusnap-autosnap", daemon=True).start()
        except BaseException:
            with self._lock:
                self._sending = False
            raise

    def _send(self) -> None:
        """Ask for the newest waiting cell until none is left."""
        while True:
            with self._lock:
                count, self._waiting = self._waiting, _NOTHING
                if count is _NOTHING:
                    self._sending = False
                    return
            self._request(count if isinstance(count, int) else None)

    def _request(self, execution_count: int | None) -> None:
        try:
            previous = self._ask(execution_count)
            if previous:
                # The daemon answered the previous request before its dump ran; it failed.
                self._report(previous)
            else:
                self._last_error = None
        except JusnapError as exc:
            self._report(exc.message)
        except Exception as exc:
            self._report(str(exc))

    def _ask(self, execution_count: int | None) -> str | None:
        """Ask for the snapshot; return why the previous automatic one failed, if it did."""
        body = {"trigger": "auto", "wait": False, "execution_count": execution_count}
        daemon = Client(timeout=REQUEST_TIMEOUT)
        if self.kernel_id is None:
            self.kernel_id = self._find_self(daemon)
        try:
            answer = daemon.request("POST", f"/kernels/{self.kernel_id}/snapshots", body)
        except JusnapError as exc:
            if exc.http_status != 404:
                raise
            # Restored from a snapshot of an earlier kernel of this notebook: the kernel id
            # in memory is that kernel's. The daemon knows this process by its PID.
            self.kernel_id = self._find_self(daemon)
            answer = daemon.request("POST", f"/kernels/{self.kernel_id}/snapshots", body)
        return answer.get("previous_error") if isinstance(answer, dict) else None

    def _find_self(self, daemon: Client) -> str:
        pid = os.getpid()
        # PID 1 of its own namespace (the daemon knows it by another PID): by the namespace.
        pidns = Path("/proc/self/ns/pid").stat().st_ino if pid == 1 else None
        for k in daemon.kernels():
            if k.get("status") != "running":
                continue
            if (pidns is not None and k.get("pid_namespace") == pidns) or (
                pidns is None and k.get("pid") == pid
            ):
                return str(k["id"])
        raise KernelNotFound("this kernel is not one of the daemon's kernels")

    def _report(self, message: str) -> None:
        if message == self._last_error:
            return
        self._last_error = message
        print(f"jusnap: automatic snapshot failed: {message}", file=sys.stderr, flush=True)


_instance: AutoSnapshot | None = None


def load_ipython_extension(ipython: Any) -> None:
    global _instance
    if _instance is not None:
        return
    _instance = AutoSnapshot(os.environ.get("JUSNAP_KERNEL_ID"))
    ipython.events.register("post_run_cell", _instance.post_run_cell)


def unload_ipython_extension(ipython: Any) -> None:
    global _instance
    if _instance is not None:
        ipython.events.unregister("post_run_cell", _instance.post_run_cell)
        _instance = None
