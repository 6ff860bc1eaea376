"""The user stack's host-socket side (io/usernet.py), driven without a guest."""

from __future__ import annotations

import asyncio
import socket

from vmlan.config.qemuopts import parse_qemuopts
from vmlan.config.usernet import parse_user_netdev, stack_config
from vmlan.io.usernet import UserNetPort, _HostTcp


def test_a_closed_connection_still_writes_the_guests_acknowledged_bytes_to_a_slow_host_reader() -> None:
    """The guest saw these bytes acknowledged: closing the connection (TCP_CLOSE, not abortive) must not
    throw them away."""

    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()
        user = parse_user_netdev(parse_qemuopts("user,id=u0,dns-server=127.0.0.1:53"))
        port = UserNetPort(user, loop, stack_config(user, resolv_conf="/nonexistent"))
        ours, theirs = socket.socketpair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        ours.setblocking(False)
        fid = 12345  # a flow the engine does not know: its tcp_written() reports are ignored
        host = _HostTcp(fid, ours)
        port._tcp[fid] = host
        payload = bytes(range(256)) * 4096  # 1 MiB, far more than the socket buffers hold
        port._tcp_write(fid, bytearray(payload))
        assert host.out, "the test needs bytes still waiting when the connection closes"
        port._tcp_close(fid, False)
        assert fid not in port._tcp and host in port._lingering
        theirs.setblocking(False)
        got = bytearray()
        for _ in range(4000):
            await asyncio.sleep(0.002)  # a slow reader
            try:
                chunk = theirs.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            got += chunk
        lingering = set(port._lingering)
        port.close()
        theirs.close()
        assert not lingering, "the socket is closed once everything is written"
        assert port.stack.faults.counts == {}
        return bytes(got) if got == payload else bytes(got[:16]) + b"...%d" % len(got)

    payload = bytes(range(256)) * 4096
    assert asyncio.run(scenario()) == payload


def test_an_abortive_close_resets_and_drops_what_is_unwritten() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        user = parse_user_netdev(parse_qemuopts("user,id=u0,dns-server=127.0.0.1:53"))
        port = UserNetPort(user, loop, stack_config(user, resolv_conf="/nonexistent"))
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        ours = socket.create_connection(server.getsockname())
        theirs, _ = server.accept()
        ours.setblocking(False)
        host = _HostTcp(7, ours)
        port._tcp[7] = host
        port._tcp_write(7, bytearray(b"x" * 4_000_000))
        port._tcp_close(7, True)
        assert not port._lingering and ours.fileno() == -1
        theirs.setblocking(False)
        reset = False
        for _ in range(2000):
            await asyncio.sleep(0.001)
            try:
                if not theirs.recv(1 << 20):
                    break
            except BlockingIOError:
                continue
            except ConnectionResetError:
                reset = True
                break
        assert reset, "SO_LINGER 0: the peer sees a reset"
        theirs.close()
        server.close()
        port.close()

    asyncio.run(scenario())
