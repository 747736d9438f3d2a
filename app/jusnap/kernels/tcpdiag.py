"""The established TCP connections accepted on a local port, from the kernel's sock_diag.

Why: a restore counts a kernel's IOPub clients before the stop and waits for them after
(``channels.wait_for_peers``). Reading ``/proc/net/tcp`` formats every socket of the machine as
text (30-37 ms per read here, with ~2,000 sockets in TIME_WAIT from test suites), and
``ss -ti`` is a process of its own (~25 ms); a restore read them several times. A netlink
``SOCK_DIAG_BY_FAMILY`` dump asks the kernel for established sockets only, in binary, with
their ``tcp_info`` (the bytes each peer sent, which says whether a ZeroMQ SUB has subscribed
again): well under a millisecond.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_ESTABLISHED = 1
INET_DIAG_INFO = 2  # attribute carrying struct tcp_info
INET_DIAG_REQ_BYTECODE = 1  # request attribute: a filter program
INET_DIAG_BC_S_GE = 2
INET_DIAG_BC_S_LE = 3

_NLMSGHDR = struct.Struct("=IHHII")
# struct inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid (48 bytes)
_REQ = struct.Struct("=BBBBI48s")
# struct inet_diag_msg: family, state, timer, retrans; sockid: sport, dport (big-endian), src,
# dst (16 bytes each), interface, cookie; then expires, rqueue, wqueue, uid, inode.
_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")
_RTA = struct.Struct("=HH")
_BYTES_RECEIVED = struct.Struct("=Q")
BYTES_RECEIVED_AT = 128  # offsetof(struct tcp_info, tcpi_bytes_received), linux/tcp.h


def accepted(port: int) -> dict[str, int] | None:
    """Bytes received so far by each established connection whose local port is ``port``,
    by peer address (``ip:port``, ``[ip6]:port``); None when sock_diag cannot be asked."""
    peers: dict[str, int] = {}
    try:
        for family in (socket.AF_INET, socket.AF_INET6):
            peers.update(_dump(family, port))
    except OSError:
        return None
    return peers


def _dump(family: int, port: int) -> dict[str, int]:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    try:
        sock.settimeout(2.0)
        req = _REQ.pack(
            family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0, 1 << TCP_ESTABLISHED,
            b"",
        )  # fmt: skip
        req += _port_filter(port)
        hdr = _NLMSGHDR.pack(
            _NLMSGHDR.size + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
        )
        sock.sendto(hdr + req, (0, 0))
        peers: dict[str, int] = {}
        while True:
            data = sock.recv(1 << 16)
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
                if length < _NLMSGHDR.size:
                    return peers
                if kind == NLMSG_DONE:
                    return peers
                if kind == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", data, off + _NLMSGHDR.size)
                    if err:
                        raise OSError(-err, os.strerror(-err))
                    return peers
                if kind == SOCK_DIAG_BY_FAMILY:
                    found = _parse(data[off + _NLMSGHDR.size : off + length], family, port)
                    if found is not None:
                        peers[found[0]] = found[1]
                off += (length + 3) & ~3
    finally:
        sock.close()


def _port_filter(port: int) -> bytes:
    """An ``INET_DIAG_REQ_BYTECODE`` attribute: the kernel reports only sockets whose local
    port is ``port`` (sport >= port, then sport <= port; a failed test jumps past the end).
    Each comparison is an op (code, yes, no) followed by one carrying the port in ``no``."""
    op = struct.Struct("=BBH")
    code = op.pack(INET_DIAG_BC_S_GE, 8, 20) + op.pack(0, 0, port)
    code += op.pack(INET_DIAG_BC_S_LE, 8, 12) + op.pack(0, 0, port)
    return _RTA.pack(_RTA.size + len(code), INET_DIAG_REQ_BYTECODE) + code


def _parse(body: bytes, family: int, port: int) -> tuple[str, int] | None:
    if len(body) < _MSG.size:
        return None
    fields = _MSG.unpack_from(body)
    state, sport, dport, dst = fields[1], fields[4], fields[5], fields[7]
    if state != TCP_ESTABLISHED or int.from_bytes(sport, "big") != port:
        return None
    if family == socket.AF_INET:
        peer = f"{ipaddress.IPv4Address(dst[:4])}:{int.from_bytes(dport, 'big')}"
    else:
        peer = f"[{ipaddress.IPv6Address(dst)}]:{int.from_bytes(dport, 'big')}"
    received = 0
    off = _MSG.size
    while off + _RTA.size <= len(body):
        rlen, rtype = _RTA.unpack_from(body, off)
        if rlen < _RTA.size:
            break
        if rtype == INET_DIAG_INFO and rlen - _RTA.size >= BYTES_RECEIVED_AT + 8:
            (received,) = _BYTES_RECEIVED.unpack_from(body, off + _RTA.size + BYTES_RECEIVED_AT)
        off += (rlen + 3) & ~3
    return peer, received
