"""A real Jupyter (Notebook 7) server for the tests, and a kernel websocket client like a browser's.

The server runs as the kernel user, as in production (Jupyter and its kernels run as ``jusnap``),
with its own config, data and runtime directories, the ``jusnap_jupyter`` server extension and
the "Python 3 (Jusnap)" kernelspec installed by ``python -m jusnap_jupyter install-kernelspec``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests
import websocket

WS_PROTOCOL = "v1.kernel.websocket.jupyter.org"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterServer:
    def __init__(
        self, base: Path, user: pwd.struct_passwd, jusnap_socket: str, port: int | None = None
    ) -> None:
        self.base = base
        self.user = user
        self.port = port or free_port()
        self.token = uuid.uuid4().hex
        self.jusnap_socket = jusnap_socket
        self.root = base / "notebooks"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "jupyter.log"
        for d in ("notebooks", "config", "data", "runtime", "prefix"):
            (base / d).mkdir(parents=True, exist_ok=True)
            os.chown(base / d, user.pw_uid, user.pw_gid)
        os.chown(base, user.pw_uid, user.pw_gid)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": self.user.pw_dir,
            "USER": self.user.pw_name,
            "LANG": "C.UTF-8",
            "JUPYTER_CONFIG_DIR": str(self.base / "config"),
            "JUPYTER_DATA_DIR": str(self.base / "data"),
            "JUPYTER_RUNTIME_DIR": str(self.base / "runtime"),
            "JUPYTER_PATH": str(self.base / "prefix" / "share" / "jupyter"),
            "JUPYTER_PLATFORM_DIRS": "1",
            "JUSNAP_SOCKET": self.jusnap_socket,
            # A run against a working tree sets PYTHONPATH to it: Jupyter must then load that
            # tree's server extension too, not the copy installed in the test virtualenv.
            **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
        }

    def as_user(
        self, argv: list[str], env: dict[str, str] | None = None, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as Jupyter's user, in its environment plus ``env``."""
        return subprocess.run(
            argv,
            user=self.user.pw_uid,
            group=self.user.pw_gid,
            extra_groups=[],
            env={**self.env(), **(env or {})},
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **kwargs,
        )

    def install_kernelspec(self) -> str:
        r = self.as_user(
            [
                sys.executable,
                "-m",
                "jusnap_jupyter",
                "install-kernelspec",
                "--prefix",
                str(self.base / "prefix"),
            ]
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    module = "notebook"  # the server application (``python -m notebook``)
    start_timeout = 60.0
    app_args: tuple[str, ...] = ()  # further options the application always gets

    def start(self, timeout: float | None = None, extra_args: list[str] | None = None) -> None:
        """Start the server; ``extra_args`` are further command-line options (configuration)."""
        logf = self.log.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                self.module,
                "--no-browser",
                f"--port={self.port}",
                "--ip=127.0.0.1",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={self.root}",
                "--ServerApp.jpserver_extensions={'jusnap_jupyter': True}",
                "--KernelManager.shutdown_wait_time=5",
                *self.app_args,
                *(extra_args or []),
            ],
            user=self.user.pw_uid,
            group=self.user.pw_gid,
            extra_groups=[],
            env=self.env(),
            cwd=self.base,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(requests.RequestException):
                if (
                    requests.get(self.url + "api/status", headers=self.auth, timeout=2).status_code
                    == 200
                ):
                    return
            time.sleep(0.2)
        raise AssertionError(
            f"Jupyter ({self.module}) did not start:\n{self.log.read_text()[-4000:]}"
        )

    def stop(self, timeout: float = 60) -> None:
        """Stop as an admin would (SIGTERM): Jupyter shuts its kernels down first."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def api(
        self, method: str, path: str, body: Any = None, expect: int | None = None, **kw: Any
    ) -> Any:
        """A token-authenticated call relative to the base URL; returns the decoded JSON."""
        r = requests.request(
            method,
            self.url + path,
            json=body,
            headers={**self.auth, **kw.pop("headers", {})},
            timeout=300,
            **kw,
        )
        if expect is not None:
            assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    def jusnap(self, method: str, path: str, body: Any = None, expect: int | None = None) -> Any:
        """The Jusnap API through Jupyter's proxy, as the frontend calls it."""
        return self.api(method, f"jusnap/api/v1/{path}", body, expect)

    def new_session(self, path: str, kernel_name: str | None = None) -> dict[str, Any]:
        kernel: dict[str, Any] = {"name": kernel_name} if kernel_name else {}
        return self.api(
            "POST",
            "api/sessions",
            {"path": path, "name": path, "type": "notebook", "kernel": kernel},
            expect=201,
        )

    def browser(self) -> requests.Session:
        """A session logged in with a cookie, as a browser is after following a token link."""
        s = requests.Session()
        r = s.get(self.url + "tree", params={"token": self.token}, timeout=30)
        assert r.status_code == 200, r.status_code
        s.get(self.url + "api/me", timeout=30)  # sets the _xsrf cookie like the app's first page
        assert any(c.name.startswith("username-") for c in s.cookies), list(s.cookies)
        return s


# ---- the kernel websocket, v1 binary protocol (what JupyterLab 4 / Notebook 7 speak) ---------


def ws_pack(channel: str, parts: list[bytes]) -> bytes:
    chan = channel.encode()
    offsets = [8 * (1 + 1 + len(parts) + 1)]
    offsets.append(offsets[-1] + len(chan))
    for p in parts:
        offsets.append(offsets[-1] + len(p))
    head = len(offsets).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets)
    return head + chan + b"".join(parts)


def ws_unpack(data: bytes) -> tuple[str, list[bytes]]:
    n = int.from_bytes(data[:8], "little")
    offsets = [int.from_bytes(data[8 * (i + 1) : 8 * (i + 2)], "little") for i in range(n)]
    offsets.append(len(data))
    channel = data[offsets[0] : offsets[1]].decode()
    parts = [data[offsets[i] : offsets[i + 1]] for i in range(1, n)]
    return channel, parts


class CellFailed(AssertionError):
    pass


class KernelWebsocket:
    """One websocket to a kernel through Jupyter, kept open for the whole test."""

    def __init__(
        self,
        server: JupyterServer,
        kernel_id: str,
        base: str | None = None,
        sslopt: dict[str, Any] | None = None,
    ) -> None:
        """``base``: the server's websocket URL where it is not ``ws://127.0.0.1:{port}/``
        (e.g. ``wss://localhost/user/NAME/`` behind nginx and JupyterHub)."""
        self.session = uuid.uuid4().hex
        base = base or f"ws://127.0.0.1:{server.port}/"
        url = f"{base}api/kernels/{kernel_id}/channels?session_id={self.session}"
        self.ws = websocket.create_connection(
            url,
            header=[f"Authorization: token {server.token}"],
            subprotocols=[WS_PROTOCOL],
            timeout=60,
            sslopt=sslopt,
        )
        assert self.ws.subprotocol == WS_PROTOCOL
        self.stray: list[dict[str, Any]] = []  # messages of no cell we are waiting for
        self.kernel_info(timeout=60)

    def send(self, channel: str, msg_type: str, content: dict[str, Any]) -> str:
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "msg_type": msg_type,
            "session": self.session,
            "username": "test",
            "date": datetime.now(timezone.utc).isoformat(),
            "version": "5.3",
        }
        parts = [json.dumps(x).encode() for x in (header, {}, {}, content)]
        self.ws.send(ws_pack(channel, parts), opcode=websocket.ABNF.OPCODE_BINARY)
        return msg_id

    def recv(self, timeout: float) -> tuple[str, dict[str, Any]]:
        """The next kernel message, within ``timeout`` overall (server pings do not extend it)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no kernel message within {timeout:.0f}s")
            self.ws.settimeout(left)
            try:
                opcode, frame = self.ws.recv_data_frame(control_frame=True)
            except websocket.WebSocketTimeoutException:
                raise TimeoutError(f"no kernel message within {timeout:.0f}s") from None
            if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                break
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise ConnectionError("the server closed the kernel websocket")
        data = frame.data
        if opcode == websocket.ABNF.OPCODE_TEXT:
            msg = json.loads(data)
            return msg["channel"], msg
        channel, parts = ws_unpack(data)
        header, parent, metadata, content = (json.loads(p) for p in parts[:4])
        return channel, {
            "header": header,
            "parent_header": parent,
            "metadata": metadata,
            "content": content,
            "msg_type": header["msg_type"],
        }

    def kernel_info(self, timeout: float = 30) -> dict[str, Any]:
        """Ask until both the reply and its IOPub status arrive, as jupyter_server's "nudge" does.

        A kernel that was just (re)started may answer on shell before the server's IOPub
        subscription reaches it; output sent in between would be lost.
        """
        deadline = time.monotonic() + timeout
        sent: set[str] = set()
        reply: dict[str, Any] | None = None
        status = False
        next_send = 0.0
        while not (reply is not None and status):
            now = time.monotonic()
            if now >= deadline:
                raise AssertionError(f"no kernel_info reply and status (reply={reply is not None})")
            if now >= next_send:
                sent.add(self.send("shell", "kernel_info_request", {}))
                next_send = now + 0.5
            try:
                channel, msg = self.recv(min(0.5, deadline - now))
            except TimeoutError:
                continue
            if msg["parent_header"].get("msg_id") not in sent:
                continue
            if channel == "shell":
                reply = msg["content"]
            elif channel == "iopub" and msg["msg_type"] == "status":
                status = True
        return reply

    def execute(self, code: str, timeout: float = 60) -> tuple[str, str, dict[str, Any]]:
        """Run a cell; wait for its reply *and* its idle status; return (stdout, stderr, reply)."""
        msg_id = self.send(
            "shell",
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
        )
        out: list[str] = []
        err: list[str] = []
        reply: dict[str, Any] | None = None
        idle = False
        deadline = time.monotonic() + timeout
        while not (reply is not None and idle):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"cell timed out (reply={reply is not None}, idle={idle}): {code!r}; out={out}"
                )
            channel, msg = self.recv(left)
            if msg["parent_header"].get("msg_id") != msg_id:
                self.stray.append(msg)
                continue
            kind, content = msg["msg_type"], msg["content"]
            if channel == "shell" and kind == "execute_reply":
                reply = content
            elif kind == "stream":
                (out if content["name"] == "stdout" else err).append(content["text"])
            elif kind == "execute_result":
                out.append(content["data"].get("text/plain", "") + "\n")
            elif kind == "error":
                err.append(f"{content['ename']}: {content['evalue']}")
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
        return "".join(out), "".join(err), reply

    def run(self, code: str, timeout: float = 60) -> str:
        out, err, reply = self.execute(code, timeout)
        if reply.get("status") != "ok":
            raise CellFailed(f"{reply.get('ename')}: {reply.get('evalue')}\n{err}")
        assert not err, f"unexpected stderr: {err!r}"
        return out

    @property
    def connected(self) -> bool:
        return bool(self.ws.connected)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
