#!/usr/bin/env python3
"""Fork prototype: run one Jupyter kernel's snapshot as a second live kernel beside it.

Standalone (stdlib + jupyter_client from the test venv), run as root; it cleans up what it
starts (kernels, CRIU temp dirs, its /var/tmp/fork-study-* state unless --keep). It follows
Jusnap's privilege model (docs/security.md, app/jusnap/criu.py): CRIU has no file
capabilities and runs as the kernel's uid, ``--unprivileged``, with ambient capabilities a
root parent gives it through ``setpriv``. The throwaway kernel user is ``forktest``.

The recipe that works (``--mode pidns-min``, the default; docs/fork-design.md has the
measurements and the variants that fail):
  * root launches the kernel in its own PID + mount namespace with a minimal mount tree
    (``/``, ``/dev``, a ``/proc`` of the namespace; ``/`` nosuid), then drops to the kernel
    user with no_new_privs: the kernel is PID 1 of its namespace, and so is every copy;
  * CRIU dumps it with Jusnap's capabilities, and restores a copy with + sys_admin,
    sys_chroot, in a private mount namespace with its own /tmp;
  * before the restore, every listening TCP port is rewritten in the dump's ``files.img``
    (inet_sk_entry.src_port/dst_port) to a fresh free port, described by a connection file
    of the fork's own;
  * a fixup cell gives the fork a new Jupyter session id, reseeds its RNGs and repoints
    ipykernel's debugger socket (which reconnects to the *original* kernel otherwise);
  * a jupyter_client on each connection file executes code in its own kernel, and the two
    states diverge; ``--fork-of-fork`` then forks the fork.

Usage (as root): /opt/jusnap-test/venv/bin/python bench/fork_prototype.py [--fork-of-fork]
  [--mb N] [--mode plain|pidns|pidns-proc|userns|userns-proc] [--replace] [--keep]
  [--dump-caps a,b] [--restore-caps a,b] [--dump-arg=X] [--restore-arg=X] [--as-root]
  FORK_VERBOSE=1: CRIU -v4; FORK_ROOT_CAPS=1 with --as-root: CRIU as uid 0 holding only the
  listed capabilities; FORK_RESTORE_TIMEOUT: seconds (default 60).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CRIU = "/usr/local/sbin/criu"
PYTHON = "/opt/jusnap-test/venv/bin/python"
USER = "forktest"
# Jusnap's capabilities today (app/jusnap/criu.py) ...
DUMP_CAPS = ("checkpoint_restore", "sys_ptrace", "setpcap", "net_admin")
RESTORE_CAPS = ("checkpoint_restore", "sys_ptrace", "setpcap")
# ... and what a *restore* of a kernel in its own PID + mount namespace adds (measured,
# docs/fork-design.md): sys_admin + sys_chroot to clone the new PID + mount namespaces and
# mount its tree. A dump of the minimal tree needs nothing more than today's DUMP_CAPS.
NS_CAPS = ("sys_admin", "sys_chroot")
# /dev is the host's devtmpfs: CRIU cannot mount a second one (EBUSY), so it is external.
NS_DUMP_ARGS = ("--external=mnt[/dev]:dev",)
NS_RESTORE_ARGS = ("--root=/", "--external=mnt[dev]:/dev")
FILES_MAGIC = 0x56303138
INETSK = 4
VERBOSE: list[str] = ["-v4"] if os.environ.get("FORK_VERBOSE") else []

# ---------------------------------------------------------------- minimal protobuf codec


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _enc_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_decode(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """A message as its ordered (field, wire type, value) occurrences."""
    out: list[tuple[int, int, int | bytes]] = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 1:
            val, i = buf[i : i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            val, i = buf[i : i + n], i + n
        elif wire == 5:
            val, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        out.append((num, wire, val))
    return out


def pb_encode(fields: list[tuple[int, int, int | bytes]]) -> bytes:
    out = bytearray()
    for num, wire, val in fields:
        out += _enc_varint(num << 3 | wire)
        if wire == 0:
            out += _enc_varint(int(val))
        elif wire == 2:
            out += _enc_varint(len(val)) + val  # type: ignore[arg-type]
        else:
            out += val  # type: ignore[operator]
    return bytes(out)


def rewrite_ports(files_img: Path, port_map: dict[int, int]) -> list[tuple[int, int, int]]:
    """Rewrite inet_sk_entry ports (files.img: file_entry.isk = 4, src_port = 7, dst_port = 8).

    dst_port too: a kernel has TCP connections to its own listening ports (ipykernel talks to
    itself over ZMQ); with --tcp-close they come back closed, but still bound.

    Returns (socket id, old port, new port) for every socket changed.
    """
    data = files_img.read_bytes()
    head, i, entries = data[:8], 8, []
    assert struct.unpack_from("<I", data, 4)[0] == FILES_MAGIC, "not a files.img"
    changed = []
    while i < len(data):
        (size,) = struct.unpack_from("<I", data, i)
        entry = data[i + 4 : i + 4 + size]
        i += 4 + size
        fe = pb_decode(entry)
        if any(n == 1 and v == INETSK for n, _, v in fe):
            new_fe = []
            for n, w, v in fe:
                if n == 4 and w == 2:
                    isk = pb_decode(v)  # type: ignore[arg-type]
                    sk_id = next(int(x) for m, _, x in isk if m == 1)
                    new_isk = []
                    for m, w2, x in isk:
                        if m in (7, 8) and int(x) in port_map:  # src_port, dst_port
                            changed.append((sk_id, int(x), port_map[int(x)]))
                            x = port_map[int(x)]
                        new_isk.append((m, w2, x))
                    v = pb_encode(new_isk)
                new_fe.append((n, w, v))
            entry = pb_encode(new_fe)
        entries.append(struct.pack("<I", len(entry)) + entry)
    files_img.write_bytes(head + b"".join(entries))
    return changed


MS_NOSUID = 0x2
# The launcher's tree as CRIU records it (mnt_entry: fstype 1, flags 5, mountpoint 7, source
# 8, ext_key 18; images/mnt.proto): what a fork may restore, and nothing else.
EXPECTED_TREE = sorted([
    ("/", 0, 0x200002, "/dev/vda", None),   # bound from --root; nosuid
    ("/proc", 1, 0x200000, "proc", None),   # the host's proc, under the namespace's
    ("/proc", 1, 0x20000E, "proc", None),   # the namespace's proc: nosuid,nodev,noexec
    ("/dev", 3, 0x200000, "devtmpfs", "dev"),  # external: bound back from the host
])  # fmt: skip


def mount_tree(img: Path) -> list[tuple]:
    data = img.read_bytes()
    i, out = 8, []
    while i < len(data):
        (size,) = struct.unpack_from("<I", data, i)
        d = {n: v for n, _, v in pb_decode(data[i + 4 : i + 4 + size])}
        i += 4 + size
        ext = d.get(18)
        out.append((d[7].decode(), d[1], d[5], d[8].decode(), ext.decode() if ext else None))
    return sorted(out)


def check_mountpoints(img: Path) -> str | None:
    """None when the dump's mount tree is exactly the launcher's; else why not.

    The source of ``/`` is the host's root device, whatever its name: compared by position.
    """
    tree = mount_tree(img)
    want = [(m, t, f, (tree[0][3] if m == "/" else s), e) for m, t, f, s, e in EXPECTED_TREE]
    if tree != sorted(want):
        extra = [x for x in tree if x not in want]
        return f"mount tree differs from the launcher's: {extra}"
    return None


def set_mount_flags(img: Path, mountpoint: str, flags: int) -> None:
    """Tamper with a mount's flags, as a hostile kernel user could while a dump is written."""
    data = img.read_bytes()
    head, i, entries = data[:8], 8, []
    while i < len(data):
        (size,) = struct.unpack_from("<I", data, i)
        fields = pb_decode(data[i + 4 : i + 4 + size])
        i += 4 + size
        if any(n == 7 and v == mountpoint.encode() for n, _, v in fields):
            fields = [(n, w, flags if n == 5 else v) for n, w, v in fields]
        entry = pb_encode(fields)
        entries.append(struct.pack("<I", len(entry)) + entry)
    img.write_bytes(head + b"".join(entries))


def inet_sockets(files_img: Path) -> list[dict[str, int]]:
    data = files_img.read_bytes()
    i, out = 8, []
    while i < len(data):
        (size,) = struct.unpack_from("<I", data, i)
        fe = pb_decode(data[i + 4 : i + 4 + size])
        i += 4 + size
        for n, w, v in fe:
            if n == 4 and w == 2:
                d = {m: x for m, _, x in pb_decode(v) if isinstance(x, int)}  # type: ignore[arg-type]
                out.append({"id": d[1], "state": d[6], "src_port": d[7], "dst_port": d[8]})
    return out


# ---------------------------------------------------------------- processes


def log(*a: object) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


AS_ROOT = False  # --as-root: the kernel and CRIU run as root (CRIU privileged)
ROOT_CAPS = bool(os.environ.get("FORK_ROOT_CAPS"))  # ... but CRIU limited to the caps given


def criu_mode() -> list[str]:
    return [] if AS_ROOT and not ROOT_CAPS else ["--unprivileged"]


def as_user(argv: list[str], caps: tuple[str, ...] = ()) -> list[str]:
    """argv run as the kernel user with exactly ``caps`` as ambient capabilities."""
    if AS_ROOT:
        if not ROOT_CAPS or not caps:
            return argv
        # uid 0, but only ``caps`` (bounding set): what a privileged step really needs
        bset = ",".join(["-all", *(f"+{c}" for c in caps)])
        return ["setpriv", f"--bounding-set={bset}", f"--inh-caps={bset}", "--", *argv]
    pw = pwd.getpwnam(USER)
    wanted = ",".join(["-all", *(f"+{c}" for c in caps)])
    return [
        "setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups",
        f"--inh-caps={wanted}", f"--ambient-caps={wanted}", "--", *argv,
    ]  # fmt: skip


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


PORT_KEYS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


def write_conn(path: Path, key: str, ports: list[int]) -> dict:
    info = {"ip": "127.0.0.1", "transport": "tcp", "signature_scheme": "hmac-sha256", "key": key,
            "kernel_name": ""}  # fmt: skip
    info.update(dict(zip(PORT_KEYS, ports, strict=True)))
    path.write_text(json.dumps(info))
    return info


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def run(argv: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def criu_errors(log_file: Path) -> list[str]:
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return []
    return [ln for ln in text.splitlines() if "Error (" in ln and "RLIMIT_NOFILE" not in ln][:6]


class Kernel:
    """A kernel tree: ``root`` is the outer PID of the namespace's PID 1 (what CRIU dumps)."""

    def __init__(self, root: int, conn: Path, launcher: subprocess.Popen | None = None):
        self.root, self.conn, self.launcher = root, conn, launcher

    def alive(self) -> bool:
        return Path(f"/proc/{self.root}").exists()

    def kill(self) -> None:
        if self.alive():
            # SIGKILL to PID 1 of a PID namespace kills the whole namespace.
            os.kill(self.root, signal.SIGKILL)
        if self.launcher is not None:
            try:
                self.launcher.wait(5)
            except subprocess.TimeoutExpired:
                self.launcher.kill()


def launch(state: Path, mode: str) -> Kernel:
    pw = pwd.getpwnam("root" if AS_ROOT else USER)
    conn = state / "kernel-a.json"
    write_conn(conn, os.urandom(16).hex(), free_ports(5))
    os.chown(conn, pw.pw_uid, pw.pw_gid)
    kernel = ["sh", "-c", 'exec "$@" </dev/null >/dev/null 2>&1', "kernel",
              PYTHON, "-m", "ipykernel_launcher", "-f", str(conn),
              "--HistoryManager.hist_file=:memory:"]  # fmt: skip
    if mode == "pidns":  # root makes the namespace, then drops to the kernel user inside it
        argv = ["unshare", "--pid", "--fork", "--", *as_user(["setsid", *kernel])]
    elif mode == "userns":  # the kernel user makes both namespaces itself, no privilege
        argv = as_user(["unshare", "--user", "--map-root-user", "--pid", "--fork", "--",
                        "setsid", *kernel])  # fmt: skip
    elif mode == "userns-proc":  # ... plus a mount namespace with the PID namespace's /proc
        argv = as_user(["unshare", "--user", "--map-root-user", "--pid", "--fork",
                        "--mount-proc", "--", "setsid", *kernel])  # fmt: skip
    elif mode == "pidns-min":  # ... and a minimal mount tree: /, /dev, the namespace's /proc
        trim = (
            "for m in $(awk '{print $5}' /proc/self/mountinfo | sort -r); do case $m in "
            "/|/dev|/proc) ;; *) umount -l $m 2>/dev/null;; esac; done; "
            # setuid binaries are inert in the kernel's namespace, whatever a mount shows
            'mount -o remount,bind,nosuid / && exec "$@"'
        )
        argv = ["unshare", "--pid", "--fork", "--mount-proc", "--", "sh", "-c", trim, "trim",
                *as_user(["setpriv", "--no-new-privs", "setsid", *kernel])]  # fmt: skip
    elif mode == "pidns-proc":  # root makes PID + mount namespaces, /proc of its own
        argv = ["unshare", "--pid", "--fork", "--mount-proc", "--",
                *as_user(["setsid", *kernel])]  # fmt: skip
    else:  # start_new_session already makes it a session leader
        argv = as_user(kernel)
    env = {"HOME": str(state / "home"), "IPYTHONDIR": str(state / "ipython"),
           "JUPYTER_RUNTIME_DIR": str(state / "runtime"), "PATH": "/usr/bin:/bin",
           "LANG": "C.UTF-8"}  # fmt: skip
    with open(state / "launcher.out", "wb") as out:
        launcher = subprocess.Popen(argv, cwd=state, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
    if mode == "plain":
        return Kernel(launcher.pid, conn, launcher)
    for _ in range(100):
        kids = children(launcher.pid)
        if kids:
            return Kernel(kids[0], conn, launcher)
        time.sleep(0.05)
    raise RuntimeError("no namespace child")


def client(conn: Path):
    from jupyter_client import BlockingKernelClient

    kc = BlockingKernelClient()
    kc.load_connection_file(str(conn))
    kc.start_channels()
    kc.wait_for_ready(timeout=30)
    return kc


def execute(kc, code: str, expr: str | None = None, timeout: float = 30) -> str | None:
    msg_id = kc.execute(code, user_expressions={"r": expr} if expr else {})
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    content = reply["content"]
    if content["status"] != "ok":
        raise RuntimeError(f"{content.get('ename')}: {content.get('evalue')}")
    if expr:
        r = content["user_expressions"]["r"]
        return r["data"]["text/plain"] if r["status"] == "ok" else f"ERR {r}"
    return None


def criu_dump(
    kernel: Kernel, images: Path, caps=DUMP_CAPS, extra: tuple[str, ...] = ()
) -> tuple[int, float]:
    argv = [CRIU, "dump", "-t", str(kernel.root), "-D", str(images), "-W", str(images),
            "--leave-running", "--tcp-established", "--skip-in-flight", "--network-lock", "skip",
            "--ghost-limit", str(64 << 20), "-o", "dump.log", *criu_mode(), "--file-locks", *VERBOSE, *extra]  # fmt: skip
    t0 = time.monotonic()
    p = run(as_user(argv, caps))
    if p.returncode:
        log("criu dump stderr:", p.stderr.strip()[-300:])
    return p.returncode, time.monotonic() - t0


def criu_restore(
    images: Path, caps=RESTORE_CAPS, extra: tuple[str, ...] = ()
) -> tuple[int, float, int | None]:
    pidfile = images / "restore.pid"
    pidfile.unlink(missing_ok=True)
    argv = [CRIU, "restore", "-D", str(images), "-W", str(images), "--restore-detached",
            "--tcp-close", "-o", "restore.log", *criu_mode(), "--file-locks",
            "--pidfile", str(pidfile), *VERBOSE, *extra]  # fmt: skip
    cmd = as_user(argv, caps)
    if any(a.startswith("--root") for a in extra):
        # CRIU makes and bind-mounts /tmp/cr-tmpfs.XXXXXX (criu/mount.c:2354), in a /tmp the
        # kernel user can write, holding CAP_SYS_ADMIN: give it a private /tmp of its own.
        # The fork's root is a *non-recursive* bind of /, so that its mount tree is the same
        # minimal one as the original's (with --root=/ it inherited /sys, /dev/shm, ... and
        # could not be dumped and restored again: "Unable to mount sysfs ... busy").
        cmd = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
               "mount -t tmpfs -o mode=1777 fork-criu-tmp /tmp && mkdir /tmp/fork-root && "
               'mount --bind / /tmp/fork-root && exec "$@"', "criu",
               *[("--root=/tmp/fork-root" if a.startswith("--root") else a) for a in cmd]]  # fmt: skip
    t0 = time.monotonic()
    p = run(cmd, timeout=float(os.environ.get("FORK_RESTORE_TIMEOUT", "60")))
    dt = time.monotonic() - t0
    if p.returncode:
        log("criu restore stderr:", p.stderr.strip()[-300:])
    pid = int(pidfile.read_text()) if p.returncode == 0 and pidfile.exists() else None
    return p.returncode, dt, pid


def ns_ids(pid: int) -> dict[str, str]:
    out = {}
    for ns in ("pid", "user", "net", "mnt"):
        try:
            out[ns] = os.readlink(f"/proc/{pid}/ns/{ns}")
        except OSError:
            out[ns] = "?"
    return out


def inner_pid(pid: int) -> str:
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith("NSpid:"):
            return ln.split(":", 1)[1].strip()
    return "?"


# Run in the fork (as the user's own code, no privilege) before anyone else talks to it: what
# a copy shares with its original that would confuse Jupyter or the user.
FORK_FIXUP = """
import random as _r, sys as _s, uuid as _u
from ipykernel.kernelapp import IPKernelApp as _A
_k = get_ipython().kernel
_k.session.session = str(_u.uuid4())       # message headers name a new kernel session
_k.session.bsession = _k.session.session.encode()
_r.seed()                                  # unseeded RNG streams no longer repeat the original's
if 'numpy' in _s.modules:
    _s.modules['numpy'].random.seed()
_app = _A.instance()
_app.connection_file = {conn!r}            # %connect_info names the fork's own ports
# ipykernel's debugger socket is *connected* to the kernel's own shell port; ZeroMQ keeps the
# endpoint string in memory and reconnects to it, i.e. to the ORIGINAL kernel: repoint it.
import zmq as _z
# (disconnect() + connect() left the old connection up in 1 of 3 runs: replace the socket.)
_was = _app.debug_shell_socket
_new = _was.context.socket(_z.DEALER)
_new.linger = 1000
_new.connect("tcp://127.0.0.1:{shell_port}")
_app.debug_shell_socket = _k.debug_shell_socket = _new
if getattr(_k, "debugger", None) is not None:
    _k.debugger.shell_socket = _new
_was.close(linger=0)
"""


def fork_into_original(a: Kernel, b: Kernel) -> list[str]:
    """The fork's established TCP connections whose peer is one of the original's ports."""
    old_listen = {int(ln.split()[3].rsplit(":", 1)[1]) for ln in
                  run(["ss", "-Hltnp"]).stdout.splitlines() if f"pid={a.root}," in ln}  # fmt: skip
    est = [ln.split() for ln in run(["ss", "-Htnp", "state", "established"]).stdout.splitlines()
           if f"pid={b.root}," in ln]  # fmt: skip
    return [f"{e[2]} -> {e[3]}" for e in est if int(e[3].rsplit(":", 1)[1]) in old_listen]


def fork_again(b: Kernel, state: Path, pw, args, kernels: list, clients: list) -> bool:
    """Dump the fork itself and restore a fork of it, with ports of its own again."""
    images = state / "img2"
    images.mkdir()
    os.chown(images, pw.pw_uid, pw.pw_gid)
    caps = tuple(c for c in args.dump_caps.split(",") if c)
    rc_d, dt = criu_dump(b, images, caps, tuple(args.dump_arg))
    log(f"fork of fork: dump rc={rc_d} {dt:.2f}s", *criu_errors(images / "dump.log"))
    if rc_d:
        return False
    listening = sorted({s["src_port"] for s in inet_sockets(images / "files.img")
                        if s["state"] == 10})  # fmt: skip
    fresh = dict(zip(listening, free_ports(len(listening)), strict=True))
    rewrite_ports(images / "files.img", fresh)
    old = json.loads(b.conn.read_text())
    conn_c = state / "kernel-c.json"
    write_conn(conn_c, old["key"], [fresh.get(old[k], old[k]) for k in PORT_KEYS])
    caps = tuple(c for c in args.restore_caps.split(",") if c)
    rc_r, dt, pid_c = criu_restore(images, caps, tuple(args.restore_arg))
    log(f"fork of fork: restore rc={rc_r} {dt:.2f}s pid={pid_c}",
        *criu_errors(images / "restore.log"))  # fmt: skip
    if rc_r or pid_c is None:
        return False
    kernels.append(Kernel(pid_c, conn_c))
    kc = client(conn_c)
    clients.append(kc)
    xc = execute(kc, "", "x")
    log(f"fork of fork: x = {xc} (the fork's 2), NSpid {inner_pid(pid_c)}")
    return xc == "2"


def set_subreaper() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: restored trees reparent to us


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main() -> int:
    ap = argparse.ArgumentParser()
    modes = ("pidns-min", "plain", "pidns", "pidns-proc", "userns", "userns-proc")
    ap.add_argument(
        "--mode",
        choices=modes,
        default="pidns-min",
        help="how the kernel is launched (pidns-min: the recipe that works)",
    )
    ap.add_argument("--restore-caps", help="comma list (default: per mode)")
    ap.add_argument("--dump-caps", help="comma list (default: per mode)")
    ap.add_argument("--no-rewrite", action="store_true", help="keep the dumped ports")
    ap.add_argument("--keep", action="store_true", help="keep the state directory")
    ap.add_argument("--dump-arg", action="append", help="extra criu dump args (default: per mode)")
    ap.add_argument("--restore-arg", action="append", help="extra criu restore args")
    ap.add_argument(
        "--replace",
        action="store_true",
        help="stop the original before the restore (a restore onto new ports)",
    )
    ap.add_argument("--fork-of-fork", action="store_true", help="then fork the fork")
    ap.add_argument(
        "--tamper-nosuid",
        action="store_true",
        help="drop nosuid from / in the image, show the check and what CRIU does",
    )
    ap.add_argument("--child", action="store_true", help="the kernel runs a `sleep` child")
    ap.add_argument("--mb", type=int, default=0, help="MiB of data the kernel holds")
    ap.add_argument("--as-root", action="store_true", help="kernel and CRIU as root")
    args = ap.parse_args()
    global AS_ROOT
    AS_ROOT = args.as_root
    ns = args.mode == "pidns-min"
    if args.dump_caps is None:
        args.dump_caps = ",".join(DUMP_CAPS)
    if args.restore_caps is None:
        args.restore_caps = ",".join(RESTORE_CAPS + (NS_CAPS if ns else ()))
    if args.dump_arg is None:
        args.dump_arg = list(NS_DUMP_ARGS if ns else ())
    if args.restore_arg is None:
        args.restore_arg = list(NS_RESTORE_ARGS if ns else ())
    if os.geteuid() != 0:
        sys.exit("run as root")
    set_subreaper()
    pw = pwd.getpwnam("root" if AS_ROOT else USER)
    state = Path(tempfile.mkdtemp(prefix="fork-study-", dir="/var/tmp"))
    for d in ("home", "ipython", "runtime", "img"):
        (state / d).mkdir()
    for d in (state, *state.iterdir()):
        os.chown(d, pw.pw_uid, pw.pw_gid)
    kernels: list[Kernel] = []
    clients = []
    rc = 1
    try:
        a = launch(state, args.mode)
        kernels.append(a)
        ka = client(a.conn)
        clients.append(ka)
        log(f"original: outer pid {a.root}, NSpid {inner_pid(a.root)}, ns {ns_ids(a.root)}")
        execute(ka, "import os, random, threading, itertools\n"
                    "x = 1; gen = itertools.count(10); next(gen)\n"
                    "f = open('/etc/services'); f.readline()\n"
                    "saved = random.getstate()\n"
                    "import time\nticks = [0]\n"
                    "def _tick():\n"
                    "    while True:\n"
                    "        ticks[0] += 1; time.sleep(0.01)\n"
                    "threading.Thread(target=_tick, daemon=True).start()\n")  # fmt: skip
        log("original x =", execute(ka, "", "x"), "pid inside", execute(ka, "", "os.getpid()"),
            "uid inside", execute(ka, "", "os.getuid()"))  # fmt: skip
        if args.child:
            execute(ka, "import subprocess; child = subprocess.Popen(['sleep', '1000'])")
        if args.mb:
            execute(ka, f"ballast = bytearray(os.urandom(1 << 20)) * {args.mb}")
            log(
                "original RSS MiB:",
                execute(ka, "", "int(open('/proc/self/statm').read().split()[1]) * 4096 >> 20"),
            )
        images = state / "img"
        rc_d, dt = criu_dump(a, images, tuple(c for c in args.dump_caps.split(",") if c),
                           tuple(args.dump_arg))  # fmt: skip
        log(f"criu dump rc={rc_d} {dt:.2f}s", *criu_errors(images / "dump.log"))
        if rc_d:
            return 2
        log("image files:", " ".join(sorted(p.name for p in images.iterdir())))
        log("inet sockets:", inet_sockets(images / "files.img"))
        old = json.loads(a.conn.read_text())
        conn_b = state / "kernel-b.json"
        listening = sorted({s["src_port"] for s in inet_sockets(images / "files.img")
                            if s["state"] == 10})  # TCP_LISTEN  # fmt: skip
        fresh = dict(zip(listening, free_ports(len(listening)), strict=True))
        if args.no_rewrite:
            fresh = {p: p for p in listening}
        new_ports = [fresh.get(old[k], old[k]) for k in PORT_KEYS]
        log(f"listening ports {listening}, {len(listening) - 5} not in the connection file")
        write_conn(conn_b, old["key"], new_ports)
        os.chown(conn_b, pw.pw_uid, pw.pw_gid)
        if not args.no_rewrite:
            t0 = time.monotonic()
            changed = rewrite_ports(images / "files.img", fresh)
            log(
                f"rewrote {len(changed)} sockets in {1e3 * (time.monotonic() - t0):.1f} ms:",
                changed,
            )
        draw_a = execute(ka, "", "random.random()")  # first draw after the dump
        execute(ka, "x = 100")  # the original moves on while the fork is made
        mnt_imgs = sorted(images.glob("mountpoints-*.img"))
        if mnt_imgs:
            if args.tamper_nosuid:
                set_mount_flags(mnt_imgs[0], "/", 0x200000)
                log("TAMPERED: / without nosuid in", mnt_imgs[0].name)
            why = check_mountpoints(mnt_imgs[0])
            log("mountpoints check:", why or "ok, exactly the launcher's tree")
            if why and not args.tamper_nosuid:
                return 4
        if args.replace:
            ka.stop_channels()
            clients.remove(ka)
            a.kill()
            reap()
            time.sleep(0.2)
        caps = tuple(c for c in args.restore_caps.split(",") if c)
        rc_r, dt, pid_b = criu_restore(images, caps, tuple(args.restore_arg))
        log(f"criu restore (caps {caps}) rc={rc_r} {dt:.2f}s pid={pid_b}",
            *criu_errors(images / "restore.log"))  # fmt: skip
        if rc_r or pid_b is None:
            return 3
        b = Kernel(pid_b, conn_b)
        kernels.append(b)
        log(f"fork: outer pid {pid_b}, NSpid {inner_pid(pid_b)}, ns {ns_ids(pid_b)}")
        status = Path(f"/proc/{pid_b}/status").read_text().splitlines()
        log("fork creds:", *[ln.replace("\t", " ") for ln in status
                             if ln.startswith(("Uid:", "CapEff:", "CapPrm:", "CapAmb:"))])  # fmt: skip
        t0 = time.monotonic()
        kb = client(conn_b)
        clients.append(kb)
        log(f"fork answered kernel_info in {time.monotonic() - t0:.2f}s after restore")
        draw_b = execute(kb, "", "random.random()")  # the fork's first draw
        log(f"first random.random() after the dump: original {draw_a}, fork {draw_b}")
        if args.replace:
            xb = execute(kb, "", "x")
            log("restored onto new ports: x =", xb, "RESULT:", "ok" if xb == "1" else "FAILED")
            return 0 if xb == "1" else 1
        log("fork x =", execute(kb, "", "x"), "| original x =", execute(ka, "", "x"))
        execute(kb, "x = 2")
        execute(ka, "x = 3")
        xa, xb = execute(ka, "", "x"), execute(kb, "", "x")
        log(f"after diverging: original x={xa}, fork x={xb}")
        log("fork continues generator:", execute(kb, "", "next(gen)"),
            "original:", execute(ka, "", "next(gen)"))  # fmt: skip
        t1 = execute(kb, "", "ticks[0]")
        time.sleep(0.3)
        log("fork's thread keeps ticking:", t1, "->", execute(kb, "", "ticks[0]"))
        if args.child:
            alive = "(child.pid, child.poll() is None)"
            log("child process: original", execute(ka, "", alive), "fork", execute(kb, "", alive))
        log("fork open file continues:", execute(kb, "", "f.readline()"), "original:",
            execute(ka, "", "f.readline()"),
            "pid inside fork", execute(kb, "", "os.getpid()"))  # fmt: skip
        sess = "get_ipython().kernel.session.session"
        log(f"session id: original {execute(ka, '', sess)} fork {execute(kb, '', sess)}")
        t0 = time.monotonic()
        cross = fork_into_original(a, b)
        log("before fixup, fork's connections into the ORIGINAL's ports:", cross or "none")
        execute(kb, FORK_FIXUP.format(conn=str(conn_b), shell_port=new_ports[0]))
        log(f"fork identity fixup ({1e3 * (time.monotonic() - t0):.0f} ms): session",
            execute(kb, "", sess), "connection_file", execute(kb, "", "_app.connection_file"),
            "random.random()", execute(kb, "", "random.random()"))  # fmt: skip
        t0 = time.monotonic()
        while (cross := fork_into_original(a, b)) and time.monotonic() - t0 < 5:
            time.sleep(0.1)  # ZeroMQ closes a disconnected peer in its I/O thread, later
        log(f"after fixup (+{time.monotonic() - t0:.1f}s), fork's connections into the "
            f"ORIGINAL's ports: {cross or 'none'}")  # fmt: skip
        listen = run(["ss", "-Hltnp"]).stdout
        ours = [" ".join(ln.split()) for ln in listen.splitlines()
                if f"pid={a.root}," in ln or f"pid={b.root}," in ln]  # fmt: skip
        log("listening:\n  " + "\n  ".join(ours))
        ok = xa == "3" and xb == "2" and not cross
        mounts = "[ln.split()[4] + ':' + ln.split()[5] for ln in open('/proc/self/mountinfo')]"
        nnp = "[ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('NoNewPrivs')]"
        log("no_new_privs: original", execute(ka, "", nnp), "fork", execute(kb, "", nnp))
        log("mounts: original", execute(ka, "", mounts), "fork", execute(kb, "", mounts))
        if ok and args.fork_of_fork:
            ok = fork_again(b, state, pw, args, kernels, clients)  # type: ignore[arg-type]
        if ok:  # the original goes away; the fork does not notice
            ka.stop_channels()
            clients.remove(ka)
            a.kill()
            reap()
            xb = execute(kb, "x += 1", "x")
            log("original killed; fork x =", xb)
            ok = xb == "3"
        log("RESULT:", "fork works, states diverge" if ok else "FAILED")
        rc = 0 if ok else 1
    finally:
        for kc in clients:
            kc.stop_channels()
        for k in kernels:
            k.kill()
        time.sleep(0.3)
        reap()
        if args.keep:
            log("state kept in", state)
        else:
            shutil.rmtree(state, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
