"""``jusnap serve``: the daemon, the API served by gunicorn.

One gunicorn worker (threads for concurrency) holds the engine, because kernels are its
children and per-kernel locks live in its memory. The gunicorn master is made a child
subreaper too: should the worker die, its kernels are re-parented to the master (which reaps
them) rather than to a slow PID 1, and the next worker re-adopts them from the registry.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from .api import create_app
from .api.auth import ensure_token
from .config import Settings
from .heap import tame_allocator
from .hooks import HookSet
from .proc import set_child_subreaper
from .snapshots import Engine

log = logging.getLogger(__name__)


def default_hooks(settings: Settings) -> HookSet:
    """The dump/restore hooks this host supports (GPU support only where a driver exists)."""
    from .hooks.cuda import CudaHook

    # Cheap on machines without a GPU: the driver is loaded only when a kernel uses /dev/nvidia*.
    # The ``jusnap.gpu`` section was checked with the rest of the config at start-up.
    return HookSet([CudaHook.from_settings(settings.jusnap.gpu)])


def build_app(settings: Settings) -> Any:
    engine = Engine(settings, default_hooks(settings)).start()
    token = ensure_token(settings.state_dir / "api-token")
    return create_app(engine, {"JUSNAP_ADMIN_TOKEN": token})


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        h = s.jusnap.http
        sock = Path(h.socket)
        sock.parent.mkdir(parents=True, exist_ok=True)
        sock.parent.chmod(0o755)
        binds = [f"unix:{sock}"]
        if h.host:
            host = f"[{h.host}]" if ":" in h.host else h.host
            binds.append(f"{host}:{h.port}")
        c = s.jusnap.criu
        # A request may legitimately take a pre-restore dump plus a restore plus a handshake.
        longest = c.dump_timeout + c.restore_timeout * 2 + s.jusnap.ipython.handshake_timeout * 2
        options = {
            "bind": binds,
            "workers": 1,
            "worker_class": "gthread",
            "threads": h.workers_threads,
            "timeout": int(longest + 30),
            "graceful_timeout": int(s.graceful.shutdown_timeout),
            "keepalive": int(max(h.read_timeout, 1)),
            "umask": 0,  # the socket is open to all local users; peers are checked by uid
            "loglevel": s.jusnap.log_level.lower(),
            "accesslog": "-" if s.jusnap.log_level.lower() == "debug" else None,
            "errorlog": "-",
            "proc_name": "jusnap",
            "control_socket_disable": True,  # nothing else listens
            "on_starting": lambda _arbiter: set_child_subreaper(),
        }
        for key, value in options.items():
            if key in self.cfg.settings:  # e.g. the control socket exists from gunicorn 24 on
                self.cfg.set(key, value)

    def load(self) -> Any:
        logging.basicConfig(
            level=self.settings.jusnap.log_level.upper()
            .replace("WARN", "WARNING")
            .replace("WARNINGING", "WARNING"),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        return build_app(self.settings)


def serve(settings: Settings) -> None:
    if os.geteuid() != 0:
        log.warning("not running as root: kernels will run as this user")
    tame_allocator()  # inherited by the worker gunicorn forks
    _Gunicorn(settings).run()
