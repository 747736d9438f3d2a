"""IPython extension: ask the Jusnap daemon for an automatic snapshot after every executed cell.

Loaded into Jusnap kernels by their kernelspec (``--ext=jusnap_jupyter.autosnap``). Three rules:

* Never block the cell: the request is made from a background thread; if the previous one is
  still under way, this cell's is dropped (the cooldown would skip it anyway).
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
from typing import Any

from jusnap.client import Client
from jusnap.errors import JusnapError, KernelNotFound

REQUEST_TIMEOUT = 10.0


class AutoSnapshot:
    def __init__(self, kernel_id: str | None) -> None:
        self.kernel_id = kernel_id
        self._busy = threading.Lock()
        self._last_error: str | None = None

    def post_run_cell(self, result: Any) -> None:
        count = getattr(result, "execution_count", None)
        if not self._busy.acquire(blocking=False):
            return
        try:
            threading.Thread(
                target=self._request, args=(count,), name="jusnap-autosnap", daemon=True
            ).start()
        except BaseException:
            self._busy.release()
            raise

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
        finally:
            self._busy.release()

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
        for k in daemon.kernels():
            if k.get("pid") == pid and k.get("status") == "running":
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
