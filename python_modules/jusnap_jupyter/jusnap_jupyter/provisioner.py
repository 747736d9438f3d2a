"""A jupyter_client kernel provisioner whose kernels the Jusnap daemon launches and supervises.

The daemon, not Jupyter, owns the kernel process: it launches it as the kernel user, knows its
PID after a restore (a restored kernel is a new child of the daemon with the old PID), and keeps
its connection (ports and key) fixed across restarts, which is what lets a snapshot be restored
into it. So every process operation of Jupyter's ``KernelManager`` -- poll, signal, kill,
restart -- is a call to the daemon, and Jupyter's own restarter, which only ever asks ``poll``,
sees a restored kernel as alive instead of fighting it.

Contract with the frontend: the Jusnap kernel id *is* Jupyter's kernel id.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import KernelProvisionerBase
from jusnap.client import Client
from jusnap.errors import JusnapError
from jusnap.signames import SIGNALS

# What the daemon is given of the Jupyter server's environment: the kernelspec's own ``env``
# plus these. The rest (the server's PATH, tokens, JPY_PARENT_PID, ...) stays with the server.
_PASSED_ENV = ("JPY_SESSION_NAME", "LANG", "LC_ALL", "TZ")
# The notebook file a kernel belongs to, when its launcher knows it: set by this package's
# Jupyter server extension for every session, or by hand for headless runs
# (``JUSNAP_NOTEBOOK_PATH=$PWD/in.ipynb papermill in.ipynb out.ipynb -k jusnap-python3``).
NOTEBOOK_ENV = "JUSNAP_NOTEBOOK_PATH"


def notebook_path(env: dict[str, str], cwd: str | None = None) -> str | None:
    """The file that identifies the kernel's notebook, or None (the kernel is its own).

    The identity keys a notebook's snapshot list, retention and ports, so it must name one
    file. Jupyter's ``JPY_SESSION_NAME`` is ``os.path.join(cwd, name)``: a client that sends
    ``"name": ""`` makes it the notebook's *directory*, which every notebook there would share
    (issue 15). A directory is therefore never used; ``JUSNAP_NOTEBOOK_PATH`` comes first.
    """
    base = Path(cwd) if cwd else Path.cwd()
    explicit = env.get(NOTEBOOK_ENV)
    if explicit and not _directory(explicit, base):
        return os.path.normpath(base / Path(explicit).expanduser())
    session = env.get("JPY_SESSION_NAME")
    if session and not _directory(session, base):
        return session  # as Jupyter gave it: existing notebooks keep their identity
    return None


def _directory(path: str, base: Path) -> bool:
    if path.endswith(("/", "/.", "/..")) or path in (".", ".."):
        return True
    return (base / Path(path).expanduser()).is_dir()


_PYTHON_NAMES = {
    "python",
    f"python{sys.version_info[0]}",
    "python{}.{}".format(*sys.version_info[:2]),
}
_SIGNAMES = {int(sig): name for name, sig in SIGNALS.items()}
DEAD = 1  # the exit status reported for a kernel the daemon says is not running
SHUTDOWN_WAIT = 120.0  # seconds a shutdown waits for a snapshot of the kernel to finish


def _alive(kernel: dict[str, Any]) -> bool:
    """Running, or being restored or restarted (a kernel Jupyter must not give up on)."""
    return kernel.get("status") == "running" or kernel.get("operation") in ("restore", "restart")


async def _call(method: str, path: str, body: Any = None, timeout: float = 600.0) -> Any:
    """The blocking client off the event loop: Jupyter's server keeps serving meanwhile."""
    return await asyncio.to_thread(Client(timeout=timeout).request, method, path, body)


class JusnapProvisioner(KernelProvisionerBase):  # type: ignore[misc]
    """Kernels launched, watched and signalled through the Jusnap daemon."""

    _launched: bool = False
    _exit_status: int | None = None
    _cwd: str | None = None
    _notebook: str | None = None

    @property
    def has_process(self) -> bool:
        return self._launched

    # ---- launch ----------------------------------------------------------------------------
    def _kernel_cmd(self, extra_arguments: list[str]) -> list[str]:
        """The kernelspec's argv, ``{connection_file}`` left for the daemon to fill in."""
        argv = list(self.kernel_spec.argv) + list(extra_arguments)
        if argv and argv[0] in _PYTHON_NAMES:
            argv[0] = sys.executable  # as jupyter_client does: the server's own interpreter
        resource_dir = getattr(self.kernel_spec, "resource_dir", "") or ""
        return [a.replace("{resource_dir}", resource_dir) for a in argv]

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        extra = kwargs.pop("extra_arguments", [])
        kwargs = await super().pre_launch(**kwargs)
        full_env: dict[str, str] = kwargs.pop("env")
        # nbclient and papermill pass no cwd: the kernel runs where a local kernel would, in
        # the caller's working directory (the daemon falls back if the user cannot enter it).
        if not kwargs.get("cwd"):
            kwargs["cwd"] = str(Path.cwd())
        self._notebook = notebook_path(full_env, str(kwargs["cwd"]))
        keep = set(self.kernel_spec.env or {}) | set(_PASSED_ENV)
        kwargs["env"] = {k: v for k, v in full_env.items() if k in keep}
        kwargs["cmd"] = self._kernel_cmd(extra)
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Launch the kernel in the daemon, restart it, or adopt it; return its connection.

        * launched by this provisioner before: Jupyter restarts it (same id, same ports);
        * unknown to the daemon: a new kernel under Jupyter's id;
        * running in the daemon but not launched here: a fork (``jusnap/fork`` asked the daemon
          for it under the id Jupyter now starts): adopted as it is, its state untouched;
        * known but not running (it died while no Jupyter held it): started again.
        """
        env: dict[str, str] = kwargs.get("env") or {}
        self._cwd = str(kwargs["cwd"]) if kwargs.get("cwd") else None
        existing = None if self._launched else await self._daemon_kernel()
        if self._launched or (existing is not None and not _alive(existing)):
            await _call("POST", f"/kernels/{self.kernel_id}/restart")
            info = await _call("GET", f"/kernels/{self.kernel_id}/connection")
        elif existing is not None:
            info = await _call("GET", f"/kernels/{self.kernel_id}/connection")
            self.log.info("jusnap: adopted kernel %s (a fork)", self.kernel_id)
        else:
            body: dict[str, Any] = {"kernel_id": self.kernel_id, "argv": cmd, "env": env}
            if kwargs.get("cwd"):
                body["cwd"] = str(kwargs["cwd"])
            if self._notebook:
                body["notebook_path"] = self._notebook
            info = await _call("POST", "/kernels", body)
        self._launched = True
        self._exit_status = None
        conn = dict(info["connection"])
        conn["key"] = conn["key"].encode()
        self.connection_info = conn
        return conn

    async def _daemon_kernel(self) -> dict[str, Any] | None:
        """The daemon's record of this kernel id, or None if it has none (for this user)."""
        try:
            kernel: dict[str, Any] = await _call("GET", f"/kernels/{self.kernel_id}", timeout=30)
        except JusnapError as exc:
            if exc.http_status == 404:
                return None
            raise
        return kernel

    # ---- state -----------------------------------------------------------------------------
    async def poll(self) -> int | None:
        """None while the daemon says the kernel runs, or is being restored or restarted."""
        if not self._launched:
            return self._exit_status
        try:
            k = await _call("GET", f"/kernels/{self.kernel_id}", timeout=30)
        except JusnapError as exc:
            if exc.http_status == 404:
                return DEAD
            # The daemon restarting: kernels outlive it and it re-adopts them; do not kill.
            self.log.warning(
                "jusnap: cannot ask the daemon about kernel %s: %s", self.kernel_id, exc.message
            )
            return None
        return None if _alive(k) else DEAD

    async def wait(self) -> int | None:
        while (status := await self.poll()) is None:
            await asyncio.sleep(0.1)
        return status

    # ---- signals ---------------------------------------------------------------------------
    async def send_signal(self, signum: int) -> None:
        name = _SIGNAMES.get(signum)
        if name is None:
            raise ValueError(
                f"jusnap kernels accept {', '.join(_SIGNAMES.values())}, not signal {signum}"
            )
        try:
            await _call("POST", f"/kernels/{self.kernel_id}/signal", {"signal": name}, timeout=30)
        except JusnapError as exc:
            if exc.code != "kernel_not_running":
                raise

    async def kill(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGTERM)

    async def cleanup(self, restart: bool = False) -> None:
        """On shutdown the daemon forgets the kernel; the notebook keeps its snapshots."""
        if restart or not self._launched:
            return
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_WAIT
        while True:
            try:
                await _call("DELETE", f"/kernels/{self.kernel_id}", timeout=60)
            except JusnapError as exc:
                # The automatic snapshot of the last cell may still be under way (a headless
                # run shuts down right after it): wait for it rather than fail the run.
                if exc.code == "busy" and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.25)
                    continue
                if exc.http_status != 404:
                    raise
            break
        self._launched = False
        self._exit_status = DEAD

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info["launched"] = self._launched
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self._launched = bool(provisioner_info.get("launched"))

    def resolve_path(self, path: str) -> str | None:
        """Relative paths (e.g. for the debugger) resolve under the kernel's working directory."""
        if not self._cwd:
            return None
        return os.path.normpath(Path(self._cwd) / Path(path).expanduser())
