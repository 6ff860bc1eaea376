"""The user stack's host-socket side (io/usernet.py), driven without a guest."""

import asyncio
import socket

from vmlan.config.qemuopts import parse_qemuopts
from vmlan.config.usernet import parse_user_netdev
from vmlan.engines.tcp import TcpConnection, TcpParams
from vmlan.engines.usernet import TcpRelay
from vmlan.io.usernet import UserNetPort, _HostTcp


def test_a_closed_relay_still_writes_the_guests_last_bytes_to_a_slow_host_reader():
    """The guest saw these bytes acknowledged: closing the relay must not throw them away."""

    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()
        port = UserNetPort(parse_user_netdev(parse_qemuopts("user,id=u0,dns-server=127.0.0.1:53")), loop)
        ours, theirs = socket.socketpair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        ours.setblocking(False)
        conn = TcpConnection.connect((b"\x0a\x00\x02\x02", 1), (b"\x0a\x00\x02\x0f", 2), TcpParams(), 0.0, 1)
        relay = TcpRelay(conn, ("127.0.0.1", 9), (b"\x0a\x00\x02\x0f", 2, b"\x0a\x00\x02\x02", 1))
        host = _HostTcp(ours)
        relay.handle = host
        payload = bytes(range(256)) * 4096  # 1 MiB, far more than the socket buffers hold
        port._tcp_write(relay, payload)
        assert host.out, "the test needs bytes still waiting when the relay closes"
        port._close_host(relay)
        theirs.setblocking(False)
        got = bytearray()
        for _ in range(2000):
            await asyncio.sleep(0.002)  # a slow reader
            try:
                chunk = theirs.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            got += chunk
        port.close()
        theirs.close()
        return bytes(got) if got == payload else bytes(got[:16]) + b"...%d" % len(got)

    payload = bytes(range(256)) * 4096
    assert asyncio.run(scenario()) == payload
