"""Resume where you left off: a stopping server snapshots its Jusnap kernels first.

JupyterHub stops idle servers (``jupyterhub-idle-culler``) and users stop their own; the server
then shuts every kernel down, and a shut-down kernel's memory is gone. Just before that, each
Jusnap kernel gets a last automatic snapshot (``"final": true``: no cooldown, skipped when
nothing ran since its newest snapshot). The snapshot belongs to the notebook, and a notebook's
next kernel gets the same ports, so when the user comes back and opens the notebook the panel
lists that state among the notebook's snapshots and one click restores it.

Only the server's own stop goes this way (``shutdown_all``): a kernel the user shuts down by
hand is meant to go.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from jusnap.errors import JusnapError

from .provisioner import JusnapProvisioner, _call

# How long one kernel's snapshot may take (a large kernel dumps in seconds; the hub's spawner
# must wait at least this long before it kills the server: jupyterhub role, interrupt_timeout).
FINAL_TIMEOUT = 90.0


def jusnap_kernel_ids(km: Any) -> list[str]:
    """Kernels of this server that the Jusnap daemon runs (the others cannot be snapshotted)."""
    out = []
    for kid in list(km.list_kernel_ids()):
        kernel = km._kernels.get(kid)
        if isinstance(getattr(kernel, "provisioner", None), JusnapProvisioner):
            out.append(kid)
    return out


async def final_snapshot(kernel_id: str, log: Any) -> None:
    try:
        answer = await _call(
            "POST",
            f"/kernels/{kernel_id}/snapshots",
            {"trigger": "auto", "final": True},
            timeout=FINAL_TIMEOUT,
        )
    except JusnapError as exc:  # the kernel still stops; the newest snapshot stays
        log.warning("jusnap: no final snapshot of kernel %s: %s", kernel_id, exc.message)
        return
    if answer.get("status") == "created":
        log.info("jusnap: kernel %s saved before the server stops", kernel_id)
    else:
        log.info("jusnap: kernel %s: %s", kernel_id, answer.get("reason", answer))


async def snapshot_all(km: Any, log: Any) -> None:
    ids = jusnap_kernel_ids(km)
    if ids:
        await asyncio.gather(*(final_snapshot(kid, log) for kid in ids))


def stop_cleanly_on_sigint(serverapp: Any) -> None:
    """SIGINT stops a server without a terminal the way SIGTERM does, kernels and all.

    JupyterHub's spawner stops a server with SIGINT (SIGTERM only if it is still there after
    ``interrupt_timeout``). Jupyter installs its SIGINT handler (an interactive prompt) only on a
    terminal; elsewhere Python's default turns SIGINT into KeyboardInterrupt, which ends the
    event loop at once: no final snapshot, and the kernels would stay behind in the daemon.
    """
    if sys.stdin is None or not sys.stdin.isatty():
        signal.signal(signal.SIGINT, serverapp._signal_stop)


def snapshot_before_stopping(serverapp: Any) -> None:
    """Make the server's ``shutdown_all`` (its stop) snapshot the Jusnap kernels first."""
    stop_cleanly_on_sigint(serverapp)
    km = serverapp.kernel_manager
    original = km.shutdown_all

    async def shutdown_all(*args: Any, **kwargs: Any) -> None:
        await snapshot_all(km, serverapp.log)
        result = original(*args, **kwargs)
        if asyncio.iscoroutine(result):
            await result

    km.shutdown_all = shutdown_all
