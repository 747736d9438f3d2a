"""The signals a kernel may be sent through Jusnap, by name: one list for the daemon, its API
schema and the Jupyter provisioner (which maps Jupyter's signal numbers onto these names)."""

from __future__ import annotations

import signal

SIGNALS: dict[str, signal.Signals] = {
    s.name: s
    for s in (
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGKILL,
        signal.SIGHUP,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGQUIT,
    )
}
