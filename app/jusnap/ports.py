"""Moving a dumped kernel's listening ports: the socket images of a copy that must not collide.

A restored process binds its sockets to the ports it had when it was dumped. A second live
copy of a kernel (a fork) beside the original would then fail its restore ("Address already in
use"), or, where CRIU set ``SO_REUSEPORT``, silently share the original's ports. The same holds
for a snapshot restored into a kernel whose connection names other ports. So before such a
restore every port the kernel *serves* (each listening TCP socket, each bound UDP socket) is
rewritten in the staged ``files.img`` to another port, and every socket whose source or
destination port was one of them (connections the kernel accepted, and its connections to
itself: ipykernel talks to its own ports over ZeroMQ) is rewritten with it. Established TCP
connections come back closed (``--tcp-close``), so only their ports matter, never their state.

The five Jupyter ports go where the caller says (the new connection file's ports); the rest
(ipykernel's debugpy stream socket, a user's own servers) get fresh free ports, reported back
as the map old -> new. The daemon edits only its own root-owned staged copy, after the image
check, and checks the result again (``criu_images.py``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection, Mapping
from pathlib import Path

from .criu_images import FILES_MAGIC, Malformed, Message, entries, image
from .errors import ImageRefused

REG, INETSK = 1, 4  # file_entry.type (images/fdinfo.proto)
_FE_TYPE, _FE_REG, _FE_ISK = 1, 3, 4  # file_entry.type, .reg, .isk
_REG_NAME = 6  # reg_file_entry.name (images/regfile.proto)
# inet_sk_entry (images/sk-inet.proto)
_ISK_ID, _ISK_TYPE, _ISK_STATE, _ISK_SRC, _ISK_DST = 1, 4, 6, 7, 8
TCP_LISTEN = 10
SOCK_DGRAM = 2


def _sockets(data: bytes) -> list[tuple[Message, Message | None]]:
    """Every file entry of a files.img, with its inet socket message when it is one."""
    out = []
    for entry in entries(data, FILES_MAGIC):
        fe = Message.parse(entry)
        isk = fe.message(_FE_ISK) if fe.scalar(_FE_TYPE) == INETSK else None
        if fe.scalar(_FE_TYPE) == INETSK and isk is None:
            raise Malformed("an inet socket entry without its socket")
        out.append((fe, isk))
    return out


def _port(isk: Message, num: int) -> int:
    value = isk.scalar(num)
    if value is None or not 0 <= value <= 65535:
        raise Malformed(f"inet socket {isk.scalar(_ISK_ID)}: port field {num} is {value}")
    return value


def served_ports(data: bytes) -> set[int]:
    """The ports a dump's sockets serve: listening TCP sockets and bound UDP sockets."""
    ports = set()
    try:
        for _fe, isk in _sockets(data):
            if isk is None:
                continue
            src = _port(isk, _ISK_SRC)
            if isk.scalar(_ISK_STATE) == TCP_LISTEN or (
                isk.scalar(_ISK_TYPE) == SOCK_DGRAM and src
            ):
                ports.add(src)
    except Malformed as exc:
        raise ImageRefused(f"snapshot image refused: files.img: malformed ({exc})") from None
    ports.discard(0)
    return ports


def rewrite(data: bytes, port_map: Mapping[int, int]) -> tuple[bytes, int]:
    """``files.img`` bytes with every inet socket's source/destination port in ``port_map``
    replaced; returns the new bytes and how many sockets changed. Other entries and fields
    stay byte for byte."""
    for old, new in port_map.items():
        if not (0 < old <= 65535 and 0 < new <= 65535):
            raise ValueError(f"not a port mapping: {old} -> {new}")
    try:
        head = data[:8]
        changed, payloads = 0, []
        for fe, isk in _sockets(data):
            if isk is not None:
                src, dst = _port(isk, _ISK_SRC), _port(isk, _ISK_DST)
                if src in port_map or dst in port_map:
                    isk.set_scalar(_ISK_SRC, port_map.get(src, src))
                    isk.set_scalar(_ISK_DST, port_map.get(dst, dst))
                    fe.set_message(_FE_ISK, isk)
                    changed += 1
            payloads.append(fe.encode())
    except Malformed as exc:
        raise ImageRefused(f"snapshot image refused: files.img: malformed ({exc})") from None
    return image(head, payloads), changed


def fresh_ports(n: int, avoid: Collection[int] = ()) -> list[int]:
    """``n`` distinct ports free now on every IPv4 address (all held until all are picked),
    none of them in ``avoid``."""
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            socks.append(s)
            s.bind(("0.0.0.0", 0))  # noqa: S104 - bound, never listening: a port free everywhere
            port = s.getsockname()[1]
            if port not in avoid:
                ports.append(port)
        return ports
    finally:
        for s in socks:
            s.close()


def plan(served: set[int], fixed: Mapping[int, int]) -> dict[int, int]:
    """Where each served port goes: ``fixed`` ones as given (the Jupyter ports), every other
    one to a fresh free port. ``fixed`` entries for ports the dump does not serve are kept
    (a connection port of a kernel that had not bound it yet still belongs to it)."""
    rest = sorted(served - set(fixed))
    taken = set(fixed) | set(fixed.values()) | served
    return {**fixed, **dict(zip(rest, fresh_ports(len(rest), taken), strict=True))}


def move_ports(files_img: Path, fixed: Mapping[int, int]) -> dict[int, int]:
    """Rewrite a staged ``files.img`` in place (a new file renamed over it, same owner and
    mode): every served port moves, the Jupyter ones as ``fixed`` says. Returns old -> new
    for every port moved (identity entries left out)."""
    data = files_img.read_bytes()
    port_map = {o: n for o, n in plan(served_ports(data), fixed).items() if o != n}
    if not port_map:
        return {}
    new, _changed = rewrite(data, port_map)
    _write_over(files_img, new)
    return port_map


def rename_file(files_img: Path, old: str, new: str) -> int:
    """Point every regular-file entry of a staged ``files.img`` named ``old`` at ``new`` (a
    fork's own copy of a file the daemon keeps per kernel: its history database); returns
    how many entries changed."""
    data = files_img.read_bytes()
    want = old.lstrip("/").encode()
    changed, payloads = 0, []
    try:
        for entry in entries(data, FILES_MAGIC):
            fe = Message.parse(entry)
            reg = fe.message(_FE_REG) if fe.scalar(_FE_TYPE) == REG else None
            name = reg.raw(_REG_NAME)[-1] if reg is not None and reg.raw(_REG_NAME) else None
            if reg is not None and name is not None and name.lstrip(b"/") == want:
                # the same form CRIU wrote (it names files with or without the leading /)
                slash = b"/" if name.startswith(b"/") else b""
                reg.fields[_REG_NAME] = [(2, slash + new.lstrip("/").encode())]
                fe.set_message(_FE_REG, reg)
                changed += 1
            payloads.append(fe.encode())
    except Malformed as exc:
        raise ImageRefused(f"snapshot image refused: files.img: malformed ({exc})") from None
    if changed:
        _write_over(files_img, image(data[:8], payloads))
    return changed


def _write_over(path: Path, data: bytes) -> None:
    """Replace ``path`` (a file, or a link to one) by a new file with ``data``, with the same
    owner and mode as what it pointed to."""
    st = path.stat()
    tmp = path.with_name(f".{path.name}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, st.st_mode & 0o777)
    try:
        with os.fdopen(fd, "wb") as fh:
            if os.geteuid() == 0:
                os.fchown(fh.fileno(), st.st_uid, st.st_gid)
            fh.write(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
