"""sock_diag's view of the connections accepted on a port (real sockets, the real kernel)."""

from __future__ import annotations

import socket
import time

from jusnap.kernels import channels, tcpdiag


def test_accepted_counts_peers_and_their_bytes() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    accepted = [server.accept()[0] for _ in clients]
    try:
        clients[0].sendall(b"x" * 100)
        clients[1].sendall(b"y" * 7)
        for conn, n in zip(accepted, (100, 7), strict=True):
            got = b""
            while len(got) < n:
                got += conn.recv(n - len(got))
        peers = tcpdiag.accepted(port)
        assert peers is not None
        want = {
            f"127.0.0.1:{c.getsockname()[1]}": n for c, n in zip(clients, (100, 7), strict=True)
        }
        assert peers == want
        # The client's own end has the client's port: counted on that port, as /proc and ss do.
        assert tcpdiag.accepted(clients[0].getsockname()[1]) == {f"127.0.0.1:{port}": 0}
        assert channels.established_peers(port) == 2
        clients[0].close()
        accepted[0].close()
        deadline = time.monotonic() + 5
        while channels.established_peers(port) != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert channels.established_peers(port) == 1
    finally:
        for s in [*clients, *accepted, server]:
            s.close()


def test_ipv6_peers_are_named_in_brackets() -> None:
    try:
        server = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        return  # no IPv6 loopback here
    port = server.getsockname()[1]
    client = socket.create_connection(("::1", port))
    conn = server.accept()[0]
    try:
        assert tcpdiag.accepted(port) == {f"[::1]:{client.getsockname()[1]}": 0}
    finally:
        for s in (client, conn, server):
            s.close()
