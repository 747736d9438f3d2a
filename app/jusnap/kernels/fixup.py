"""What a restored copy of a kernel must change about itself before anyone talks to it.

CRIU copies a kernel's memory bit for bit, and with it things that are one kernel's identity:

* the Jupyter session id in every message header (``kernel.session.session``): two kernels
  with one id confuse logs and tools that key on it;
* the global ``random`` / ``numpy.random`` streams: the copy would repeat (shifted by a few
  draws) what the original draws; reseeded on request (``reseed``, a fork's default);
* ZeroMQ endpoints the kernel *connected* to on its own ports: the copy's ports were moved
  (``ports.py``), but ipykernel's debugger socket keeps the old endpoint string and would
  reconnect to the original kernel. Replacing the socket (a new DEALER on the new shell port;
  ``disconnect()`` + ``connect()`` left the old connection up in 1 of 3 runs) cleared it in 6
  of 6 runs (docs/fork-design.md);
* ``IPKernelApp.connection_file`` and its port attributes, which ``%connect_info`` shows;
* IPython's history database: the copy restores with its own copy of the file open, but
  SQLite names its journal after the path it opened, the original's: the history manager is
  reopened on the copy's own path (IPython's own stop/restart of its saving thread);
* the message-signing key, when the copy now serves a connection with another key (a
  snapshot restored into another kernel): the fixup is signed with the old key and switches
  the kernel to the new one as its very last step, so its reply (signed with the new key)
  proves that every step before ran.

The code runs in the restored kernel through the daemon's own client, silently (no history, no
execution count, no output, and so no automatic snapshot), in a namespace of its own: nothing
is left in the user's.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import zmq

from ..errors import RestoreFailed
from .channels import _session, _url
from .supervisor import PORT_KEYS

_BODY = """
def _fixup(session, reseed, connection_file, ports, shell_url, key, history_file):
    import random, sys
    import zmq
    from IPython import get_ipython
    kernel = get_ipython().kernel
    kernel.session.session = session
    kernel.session.bsession = session.encode()
    if reseed:
        random.seed()
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            numpy.random.seed()
    app = None
    try:
        from ipykernel.kernelapp import IPKernelApp
        if IPKernelApp.initialized():
            app = IPKernelApp.instance()
    except ImportError:
        pass
    if app is not None:
        app.connection_file = connection_file
        for name, port in ports.items():
            if hasattr(app, name):
                setattr(app, name, port)
    debugger = getattr(kernel, "debugger", None)
    owners = [o for o in (app, kernel) if getattr(o, "debug_shell_socket", None) is not None]
    old = owners[0].debug_shell_socket if owners else None
    if old is not None:
        new = old.context.socket(zmq.DEALER)
        new.linger = 1000
        new.connect(shell_url)
        for owner in owners:
            owner.debug_shell_socket = new
        if debugger is not None and getattr(debugger, "shell_socket", None) is old:
            debugger.shell_socket = new
        old.close(linger=0)
    hm = getattr(get_ipython(), "history_manager", None)
    if history_file and getattr(hm, "enabled", False) and str(hm.hist_file) != history_file:
        hm._stop_save_thread()
        hm.db.close()
        hm.hist_file = history_file
        hm.init_db()
        hm._restart_thread_if_stopped()
    if key is not None:
        for s in {id(x): x for x in (kernel.session, getattr(app, "session", None)) if x}.values():
            s.key = key.encode()


_fixup(**ARGS)
"""


def fixup_code(
    connection: dict[str, Any],
    connection_file: str,
    reseed: bool,
    key: str | None = None,
    history_file: str | None = None,
) -> str:
    """The code that gives a restored kernel its own identity (see the module doc);
    ``key``: the kernel's new signing key, when it changes; ``history_file``: its own IPython
    history database (None: none)."""
    args = {
        "session": str(uuid.uuid4()),
        "reseed": bool(reseed),
        "connection_file": connection_file,
        "ports": {name: int(connection[name]) for name in PORT_KEYS},
        "shell_url": f"tcp://{connection['ip']}:{int(connection['shell_port'])}",
        "key": key,
        "history_file": history_file,
    }
    return (
        "__import__('builtins').exec(__import__('builtins').compile("
        f"{_BODY!r}, '<jusnap-fixup>', 'exec'), {{'__name__': 'jusnap_fixup', 'ARGS': {args!r}}})"
    )


def apply_fixup(
    connection: dict[str, Any],
    connection_file: str,
    reseed: bool,
    timeout: float,
    old_key: str | None = None,
    history_file: str | None = None,
) -> None:
    """Run the fixup in the restored kernel, which listens on ``connection``'s ports and signs
    with ``old_key`` (None: ``connection``'s key already); RestoreFailed if it fails or does
    not answer within ``timeout`` seconds."""
    new_key = str(connection["key"])
    switch = old_key is not None and old_key != new_key
    code = fixup_code(
        connection, connection_file, reseed, new_key if switch else None, history_file
    )
    sender = {**connection, "key": old_key} if switch else connection
    reply = _execute(sender, connection, code, timeout)
    if reply is None:
        raise RestoreFailed(f"the restored kernel did not run its fixup within {timeout:.0f}s")
    if reply.get("status") != "ok":
        why = f"{reply.get('ename', 'error')}: {reply.get('evalue', '')}".strip(": ")
        raise RestoreFailed(f"the restored kernel's fixup failed ({why})")


def _execute(
    send_as: dict[str, Any], read_as: dict[str, Any], code: str, timeout: float
) -> dict[str, Any] | None:
    """A silent execute request signed with ``send_as``'s key; its reply is read (whenever it
    comes) with ``read_as``'s key, since the fixup may switch keys before it replies."""
    sender, reader = _session(send_as), _session(read_as)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(_url(send_as, "shell_port"))
    try:
        content = {
            "code": code, "silent": True, "store_history": False, "user_expressions": {},
            "allow_stdin": False, "stop_on_error": False,
        }  # fmt: skip
        msg_id = sender.send(sock, "execute_request", content)["header"]["msg_id"]
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(int(min(left, 0.2) * 1000)):
                continue
            _idents, frames = reader.feed_identities(sock.recv_multipart())
            try:
                reply = reader.deserialize(frames)
            except ValueError:  # signed with the old key: not the reply
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                return dict(reply["content"])
        return None
    finally:
        sock.close(0)
