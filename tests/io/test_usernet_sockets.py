"""io/usernet.py with real sockets: the stack driven by scapy frames through a hub, its host side on
loopback (or in a network namespace the test creates)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import struct
from typing import Any

import pytest
from scapy.layers.dns import DNS
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.l2 import Ether

from tests.engines.usernet.stacknet import (
    GUEST,
    HOST,
    GuestTcp,
    dns_answer,
    dns_query,
    l4_payload,
    tcp_fields,
    tcp_frame,
    udp,
)
from tests.io.usernet_harness import GuestPort, IoNet, run, run_in_netns
from vmlan.engines.tcp import TcpParams

LINGER_ABORT = struct.pack("ii", 1, 0)


def listener(kind: int = socket.SOCK_STREAM, addr: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind((addr, 0))
    if kind == socket.SOCK_STREAM:
        sock.listen(8)
    sock.setblocking(False)
    return sock


def closed_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def handshake(net: IoNet, t: GuestTcp) -> None:
    t.syn()
    synack = await net.frame(lambda f: bool(t.mine([f])) and f[TCP].flags == "SA", "SYN-ACK")
    t.take_synack([synack])
    t.send("A")


async def handshake_accepted(net: IoNet, t: GuestTcp, server: socket.socket) -> tuple[socket.socket, Any]:
    """The guest's handshake through the stack to ``server``: the host side's accepted socket and peer."""
    accept = asyncio.ensure_future(net.loop.sock_accept(server))
    await handshake(net, t)
    return await asyncio.wait_for(accept, 5)


async def receive(net: IoNet, t: GuestTcp, n: int) -> bytes:
    """Take ``n`` bytes the stack sends on ``t``, acknowledging as they come."""
    base = t.rcv_nxt
    got = b""
    start = len(net.seen)
    while len(got) < n:
        await net.until(lambda mark=start: len(net.seen) > mark, what=f"data ({len(got)} of {n} bytes)")
        segs = t.mine(net.seen[start:])
        start = len(net.seen)
        t.absorb(segs)
        got = t.reassemble(base) if base in t.received else got
        t.rcv_nxt = (base + len(got)) & 0xFFFFFFFF
        if segs:
            t.send("A")
    return got


def test_guest_tcp_to_a_loopback_server_both_ways_and_close() -> None:
    server = listener()
    port = server.getsockname()[1]

    async def body(net: IoNet) -> None:
        g = net.guest()
        t = GuestTcp(net, g, HOST, port)  # type: ignore[arg-type]
        conn, peer = await handshake_accepted(net, t, server)
        assert peer[0] == "127.0.0.1"
        conn.setblocking(False)
        t.send("PA", b"hello, host")
        assert await asyncio.wait_for(net.loop.sock_recv(conn, 100), 5) == b"hello, host"
        blob = bytes(range(256)) * 800  # 200 KiB: several windows' worth of segments
        send = asyncio.ensure_future(net.loop.sock_sendall(conn, blob))
        assert await receive(net, t, len(blob)) == blob
        await asyncio.wait_for(send, 5)
        # the host closes: FIN to the guest; the guest closes: the host socket reads EOF
        conn.shutdown(socket.SHUT_WR)
        await net.segments(t, lambda s: "F" in s.flags, "FIN")
        t.rcv_nxt += 1
        t.send("FA")
        assert await asyncio.wait_for(net.loop.sock_recv(conn, 100), 5) == b""
        await net.until(lambda: not net.stack.tcp.by_key, what="the flow to close")
        conn.close()

    try:
        run("", body)
    finally:
        server.close()


@pytest.mark.parametrize("reset", [False, True])
def test_a_host_that_answers_and_closes_at_once_gets_data_and_fin_in_one_segment(reset: bool) -> None:
    """The first host read looks for the EOF too: answer + FIN in one segment; answer + reset: the data,
    then a RST (as when the reset is read later)."""
    server = listener()
    port = server.getsockname()[1]

    async def body(net: IoNet) -> None:
        t = GuestTcp(net, net.guest(), HOST, port)  # type: ignore[arg-type]
        conn, _peer = await handshake_accepted(net, t, server)
        t.send("PA", b"q")
        assert await asyncio.wait_for(net.loop.sock_recv(conn, 10), 5) == b"q"
        conn.send(b"answer")  # and the end, before the stack's loop runs again
        if reset:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ABORT)
        conn.close()
        segs = await net.segments(t, lambda s: bool(s.flags & 0x05), "FIN or RST")
        data = [s for s in segs if bytes(s.payload)]
        assert len(data) == 1 and bytes(data[0].payload) == b"answer"
        if reset:
            assert "R" in segs[-1].flags and "F" not in data[0].flags
        else:
            assert data[0] is segs[-1] and "F" in data[0].flags
            t.rcv_nxt += len(b"answer") + 1
            t.send("FA")
        await net.until(lambda: not net.user._tcp, what="the host socket to close")

    try:
        run("", body)
    finally:
        server.close()


def test_a_guest_reset_makes_the_host_peer_see_econnreset() -> None:
    server = listener()
    port = server.getsockname()[1]

    async def body(net: IoNet) -> None:
        t = GuestTcp(net, net.guest(), HOST, port)  # type: ignore[arg-type]
        conn, _peer = await handshake_accepted(net, t, server)
        conn.setblocking(False)
        t.send("PA", b"x")
        assert await asyncio.wait_for(net.loop.sock_recv(conn, 10), 5) == b"x"
        t.send("RA")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(net.loop.sock_recv(conn, 10), 5)  # SO_LINGER 0: a RST, not a FIN
        conn.close()

    try:
        run("", body)
    finally:
        server.close()


def test_a_host_peers_reset_makes_the_guest_see_a_rst() -> None:
    server = listener()
    port = server.getsockname()[1]

    async def body(net: IoNet) -> None:
        t = GuestTcp(net, net.guest(), HOST, port)  # type: ignore[arg-type]
        conn, _peer = await handshake_accepted(net, t, server)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ABORT)
        conn.close()
        rst = (await net.segments(t, lambda s: "R" in s.flags, "RST"))[-1]
        assert rst.seq == t.rcv_nxt
        await net.until(lambda: not net.stack.tcp.by_key and not net.user._tcp, what="the flow to go")

    try:
        run("", body)
    finally:
        server.close()


def test_a_refused_loopback_connect_resets_the_guest() -> None:
    port = closed_port(socket.SOCK_STREAM)

    async def body(net: IoNet) -> None:
        t = GuestTcp(net, net.guest(), HOST, port, isn=4000)  # type: ignore[arg-type]
        t.syn()
        rst = (await net.segments(t, lambda s: "R" in s.flags, "RST"))[-1]
        assert str(rst.flags) == "RA" and rst.ack == 4001
        await net.until(lambda: not net.user._tcp, what="the socket to close")

    run("", body)


def test_udp_to_a_closed_loopback_port_gives_icmp_port_unreachable() -> None:
    """The host socket's error queue (IP_RECVERR) turns the kernel's port unreachable into ICMP type 3
    code 3 for the guest, quoting its datagram."""
    port = closed_port(socket.SOCK_DGRAM)

    async def body(net: IoNet) -> None:
        g = net.guest()
        net.send(g.port, Ether(src=g.mac, dst="52:55:0a:00:02:02") / udp(HOST, port, b"anyone?", sport=40404))
        err = await net.frame(lambda f: ICMP in f, "ICMP")
        assert (err[IP].src, err[IP].dst) == (HOST, GUEST)
        assert (err[ICMP].type, err[ICMP].code) == (3, 3)
        assert (err[IPerror].src, err[IPerror].dst, err[IPerror].proto) == (GUEST, HOST, 17)
        assert (err[UDPerror].sport, err[UDPerror].dport) == (40404, port)

    run("", body)


def test_udp_to_a_loopback_server_and_back() -> None:
    server = listener(socket.SOCK_DGRAM)
    port = server.getsockname()[1]

    async def body(net: IoNet) -> None:
        g = net.guest()
        net.send(g.port, Ether(src=g.mac, dst="52:55:0a:00:02:02") / udp(HOST, port, b"question", sport=40500))
        data, peer = await asyncio.wait_for(net.loop.sock_recvfrom(server, 100), 5)
        assert data == b"question"
        await net.loop.sock_sendto(server, b"answer", peer)
        reply = await net.frame(lambda f: UDP in f, "the answer")
        assert (reply[IP].src, reply[UDP].sport, reply[UDP].dport) == (HOST, port, 40500)
        assert l4_payload(reply) == b"answer"

    try:
        run("", body)
    finally:
        server.close()


NETNS = [
    "ip route add unreachable 192.0.2.0/24",  # connect() fails at once with EHOSTUNREACH
    "ip route add prohibit 198.51.100.0/24",  # ... with EACCES
    "ip addr add 203.0.113.7/32 dev lo",  # a non-loopback host address
]


@pytest.mark.parametrize(("dst", "code"), [("192.0.2.1", 1), ("198.51.100.1", 13), ("203.0.113.250", 0)],
                         ids=["host-unreachable", "prohibited", "net-unreachable"])
def test_an_unreachable_connect_gives_the_guest_icmp_quoting_its_syn(dst: str, code: int) -> None:
    async def body(net: IoNet) -> None:
        t = GuestTcp(net, net.guest(), dst, 80, sport=45678, isn=777)  # type: ignore[arg-type]
        t.syn()
        err = await net.frame(lambda f: ICMP in f, "ICMP")
        assert (err[ICMP].type, err[ICMP].code) == (3, code)
        assert (err[IPerror].src, err[IPerror].dst, err[IPerror].proto) == (GUEST, dst, 6)
        assert (err[TCPerror].sport, err[TCPerror].dport, err[TCPerror].seq) == (45678, 80, 777)
        assert not net.stack.tcp.by_key and not net.user._tcp

    # 203.0.113.250 is not on lo and there is no default route: ENETUNREACH
    run_in_netns(NETNS, "", body)


def test_hostfwd_tcp_through_a_real_listener_and_its_client_cap() -> None:
    async def body(net: IoNet) -> None:
        await net.dhcp()
        g = net.guest()
        (_rule, _fd, port), = net.user.forward_fds()
        clients = []
        guests = []
        for n in range(2):
            c = socket.socket()
            c.setblocking(False)
            await asyncio.wait_for(net.loop.sock_connect(c, ("127.0.0.1", port)), 5)
            syn = await net.frame(lambda f: TCP in f and f[TCP].flags == "S", "the SYN to the guest")
            assert (syn[IP].src, syn[IP].dst, syn[TCP].dport) == (HOST, GUEST, 22)  # loopback: the gateway
            t = GuestTcp(net, g, HOST, syn[TCP].sport, sport=22, isn=9000 + n)  # type: ignore[arg-type]
            t.rcv_nxt = syn[TCP].seq + 1
            t.send("SA", options=[("MSS", 1460)])
            t.seq = t.isn + 1
            clients.append(c)
            guests.append(t)
        c0, t0 = clients[0], guests[0]
        await net.loop.sock_sendall(c0, b"from the client")
        assert await receive(net, t0, 15) == b"from the client"
        t0.send("PA", b"from the guest")
        assert await asyncio.wait_for(net.loop.sock_recv(c0, 100), 5) == b"from the guest"
        # hostfwd-clients=2: a third client is accepted and closed at once
        c3 = socket.socket()
        c3.setblocking(False)
        await asyncio.wait_for(net.loop.sock_connect(c3, ("127.0.0.1", port)), 5)
        assert await asyncio.wait_for(net.loop.sock_recv(c3, 10), 5) == b""
        assert net.stack.counters.tcp_refused_cap == 1
        # one client leaves: the next one is served
        clients[1].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ABORT)
        clients[1].close()
        await net.segments(guests[1], lambda s: "R" in s.flags, "the RST for the client that left")
        c4 = socket.socket()
        c4.setblocking(False)
        await asyncio.wait_for(net.loop.sock_connect(c4, ("127.0.0.1", port)), 5)
        await net.frame(lambda f: TCP in f and f[TCP].flags == "S", "the SYN for the next client")
        for c in (c0, c3, c4):
            c.close()

    run("hostfwd=tcp:127.0.0.1:0-:22,hostfwd-clients=2", body)


def test_hostfwd_udp_through_a_real_socket() -> None:
    async def body(net: IoNet) -> None:
        await net.dhcp()
        g = net.guest()
        (_rule, _fd, port), = net.user.forward_fds()
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
        client.setblocking(False)
        cport = client.getsockname()[1]
        await net.loop.sock_sendto(client, b"question", ("127.0.0.1", port))
        frame = await net.frame(lambda f: UDP in f and f[UDP].dport == 55, "the datagram")
        assert (frame[IP].src, frame[UDP].sport, frame[IP].dst) == (HOST, cport, GUEST)
        assert l4_payload(frame) == b"question"
        net.send(g.port, Ether(src=g.mac, dst="52:55:0a:00:02:02") / udp(HOST, cport, b"answer", sport=55))
        data, peer = await asyncio.wait_for(net.loop.sock_recvfrom(client, 100), 5)
        assert (data, peer) == (b"answer", ("127.0.0.1", port))
        client.close()

    run("hostfwd=udp:127.0.0.1:0-:55", body)


def test_hostfwd_keeps_a_non_loopback_clients_address() -> None:
    """In a namespace with 203.0.113.7 on lo: a client from there appears to the guest as itself."""

    async def body(net: IoNet) -> None:
        await net.dhcp()
        (_rule, _fd, port), = net.user.forward_fds()
        c = socket.socket()
        c.bind(("203.0.113.7", 0))
        c.setblocking(False)
        await asyncio.wait_for(net.loop.sock_connect(c, ("203.0.113.7", port)), 5)
        syn = await net.frame(lambda f: TCP in f and f[TCP].flags == "S", "the SYN to the guest")
        assert (syn[IP].src, syn[IP].dst, syn[TCP].dport) == ("203.0.113.7", GUEST, 22)
        c.close()

    run_in_netns(NETNS, "hostfwd=tcp::0-:22", body)


def test_a_ping_beyond_the_stack_goes_through_a_host_socket() -> None:
    """In a namespace: an echo request to a host address comes back as an echo reply (ping socket or,
    as root without ping_group_range, the shared raw socket)."""

    async def body(net: IoNet) -> None:
        g = net.guest()
        net.send(g.port, Ether(src=g.mac, dst="52:55:0a:00:02:02") / IP(src=GUEST, dst="203.0.113.7")
                 / ICMP(id=0x77, seq=3) / b"ping through")
        reply = await net.frame(lambda f: ICMP in f and f[ICMP].type == 0, "the echo reply")
        assert (reply[IP].src, reply[IP].dst, reply[ICMP].id, reply[ICMP].seq) == ("203.0.113.7", GUEST, 0x77, 3)
        assert l4_payload(reply) == b"ping through"

    run_in_netns(NETNS, "", body)


@pytest.mark.parametrize(("dst", "code"), [("192.0.2.1", 1), ("198.51.100.1", 13), ("203.0.113.250", 0)],
                         ids=["host-unreachable", "prohibited", "net-unreachable"])
def test_a_udp_send_the_host_refuses_at_once_gives_the_guest_icmp(dst: str, code: int) -> None:
    """sendto() itself fails (no route, an unreachable or prohibit route): libslirp answers with ICMP
    unreachable (udp_input: icmp_send_error on sosendto failure) rather than dropping it silently."""

    async def body(net: IoNet) -> None:
        g = net.guest()
        net.send(g.port, Ether(src=g.mac, dst="52:55:0a:00:02:02") / udp(dst, 5000, b"hello?", sport=40600))
        err = await net.frame(lambda f: ICMP in f, "ICMP")
        assert (err[ICMP].type, err[ICMP].code) == (3, code)
        assert (err[IPerror].src, err[IPerror].dst, err[IPerror].proto) == (GUEST, dst, 17)
        assert (err[UDPerror].sport, err[UDPerror].dport) == (40600, 5000)

    run_in_netns(NETNS, "", body)


def test_guestfwd_to_a_command() -> None:
    """guestfwd=...-cmd:cat: the command's stdin/stdout is the connection (an echo server)."""

    async def body(net: IoNet) -> None:
        t = GuestTcp(net, net.guest(), "10.0.2.100", 80)  # type: ignore[arg-type]
        await handshake(net, t)
        t.send("PA", b"echo me")
        assert await receive(net, t, 7) == b"echo me"
        t.send("FA")  # cat sees EOF and exits: its end of the connection closes too
        await net.segments(t, lambda s: "F" in s.flags, "FIN")
        t.rcv_nxt += 1
        t.send("A")
        await net.until(lambda: not net.user._tcp, what="the command's socket to close")

    run("guestfwd=tcp:10.0.2.100:80-cmd:cat", body)


def test_guestfwd_to_a_host_name_resolves_it_and_connects() -> None:
    """guestfwd=...-localhost:PORT: the name is resolved off the event loop when the guest connects, and
    the connection reaches the listener behind it."""
    server = listener()
    port = server.getsockname()[1]

    async def body(net: IoNet) -> None:
        t = GuestTcp(net, net.guest(), "10.0.2.100", 80, isn=70)  # type: ignore[arg-type]
        conn, _peer = await handshake_accepted(net, t, server)
        conn.setblocking(False)
        t.send("PA", b"by name")
        assert await asyncio.wait_for(net.loop.sock_recv(conn, 100), 5) == b"by name"
        conn.close()
        assert not net.user._resolving

    try:
        run(f"guestfwd=tcp:10.0.2.100:80-localhost:{port}", body)
    finally:
        server.close()


def test_guestfwd_to_a_name_that_does_not_resolve_fails_the_guests_connect() -> None:
    """The target is a host name nobody can resolve (a namespace with nothing but lo): the guest's
    connection must fail, not hang with its socket leaked and an internal error counted."""

    async def body(net: IoNet) -> None:
        t = GuestTcp(net, net.guest(), "10.0.2.100", 80, isn=50)  # type: ignore[arg-type]
        t.syn()
        await net.frame(lambda f: (TCP in f and "R" in f[TCP].flags) or ICMP in f, "RST or ICMP")
        assert not net.user._tcp and not net.stack.tcp.by_key

    run_in_netns(NETNS, "guestfwd=tcp:10.0.2.100:80-nonexistent.invalid:80", body)


def test_two_guests_pinging_with_the_same_identifier_each_get_their_own_replies() -> None:
    """Without ping sockets (a new namespace's ping_group_range is "1 0") the stack shares one raw socket:
    two guests' echo identifiers must not collide on it (the second took the first's replies)."""

    async def body(net: IoNet) -> None:
        other = GuestPort("guest2")
        net.hub.attach(other)
        macs = {"52:54:00:12:34:56": net.guest_port, "52:54:00:12:34:57": other}
        for n, (mac, port) in enumerate(macs.items()):
            net.send(port, Ether(src=mac, dst="52:55:0a:00:02:02") / IP(src=f"10.0.2.{15 + n}", dst="203.0.113.7")
                     / ICMP(id=0x99, seq=n) / f"from guest {n}".encode())
        def replies() -> list[Ether] | None:
            found = [f for f in net.seen if ICMP in f and f[ICMP].type == 0]
            return found if len(found) >= 2 else None

        found = await net.until(replies, what="two echo replies")
        got = {(f.dst, f[IP].dst, f[ICMP].id, f[ICMP].seq, l4_payload(f)) for f in found}
        assert got == {("52:54:00:12:34:56", "10.0.2.15", 0x99, 0, b"from guest 0"),
                       ("52:54:00:12:34:57", "10.0.2.16", 0x99, 1, b"from guest 1")}

    run_in_netns(NETNS, "", body)


def test_a_fast_host_sender_is_paused_and_resumed_by_a_slow_guest() -> None:
    """A 64 KiB send buffer and 1.5 MB from the host: the stack stops reading the host socket when the
    buffer is full (tcp_fill -> None) and reads again on TCP_RESUME when the guest acknowledges."""
    server = listener()
    port = server.getsockname()[1]
    blob = os.urandom(1_500_000)

    async def body(net: IoNet) -> None:
        t = GuestTcp(net, net.guest(), HOST, port)  # type: ignore[arg-type]
        conn, _peer = await handshake_accepted(net, t, server)
        conn.setblocking(False)
        send = asyncio.ensure_future(net.loop.sock_sendall(conn, blob))
        assert await receive(net, t, len(blob)) == blob
        await asyncio.wait_for(send, 5)
        conn.close()

    try:
        run("", body, tcp=TcpParams(mss=1460, snd_buffer=65536))
    finally:
        server.close()


def test_a_host_peer_that_does_not_read_closes_the_guests_window_and_nothing_piles_up() -> None:
    """Guest data the host socket cannot take stays counted against the guest's window: the guest is
    held back by a zero window, the I/O layer's queue stays within the receive buffer, and once the
    peer reads, everything arrives intact."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by the accepted socket
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    rcv_buffer = 256 * 1024

    async def body(net: IoNet) -> None:
        g = net.guest()
        t = GuestTcp(net, g, HOST, port, wscale=None)  # type: ignore[arg-type]
        conn, _peer = await handshake_accepted(net, t, server)
        conn.setblocking(False)
        rng = random.Random(5)
        sent_hash, got_hash = hashlib.sha256(), hashlib.sha256()
        sent = acked = 0
        window = 0xFFFF
        queued_max = 0
        start = 0
        while window and sent < 40_000_000:  # the peer reads nothing: the window must close
            while sent < acked + window:
                chunk = rng.randbytes(min(1460, acked + window - sent))
                sent_hash.update(chunk)
                net.send(g.port, tcp_frame(g.mac, "52:55:0a:00:02:02", g.ip, HOST, t.sport, port,
                                           t.isn + 1 + sent, t.rcv_nxt, "PA", chunk))
                sent += len(chunk)
            await net.until(lambda mark=start: len(net.guest_port.received) > mark, timeout=2, what="ACKs")
            for raw in net.guest_port.received[start:]:
                _sport, dport, _seq, ack, _flags, win = tcp_fields(raw)
                if dport == t.sport:
                    acked = max(acked, (ack - t.isn - 1) & 0xFFFFFFFF)
                    window = win
            start = len(net.guest_port.received)
            queued_max = max([queued_max] + [len(h.out) for h in net.user._tcp.values()])
        assert window == 0 and acked == sent
        assert queued_max <= rcv_buffer, queued_max
        received = 0
        while received < sent:  # now the peer reads: everything the guest saw acknowledged arrives
            chunk = await asyncio.wait_for(net.loop.sock_recv(conn, 1 << 20), 5)
            assert chunk
            got_hash.update(chunk)
            received += len(chunk)
        assert received == sent and got_hash.digest() == sent_hash.digest()
        await net.segments(t, lambda seg: seg.window > 0, "the window to open again")
        conn.close()

    try:
        run("", body, tcp=TcpParams(mss=1460, rcv_buffer=rcv_buffer))
    finally:
        server.close()


def test_dns_through_a_real_upstream_on_loopback() -> None:
    upstream = listener(socket.SOCK_DGRAM)
    port = upstream.getsockname()[1]

    async def body(net: IoNet) -> None:
        g = net.guest()
        net.send(g.port, Ether(src=g.mac, dst="52:55:0a:00:02:03") / dns_query(0x4242, name="real.example"))
        query, peer = await asyncio.wait_for(net.loop.sock_recvfrom(upstream, 1500), 5)
        qid = int.from_bytes(query[:2], "big")
        assert DNS(query).qd[0].qname == b"real.example."
        await net.loop.sock_sendto(upstream, dns_answer(qid, "real.example", "192.0.2.44"), peer)
        reply = await net.frame(lambda f: DNS in f, "the answer")
        assert (reply[IP].src, reply[UDP].sport, reply[DNS].id) == ("10.0.2.3", 53, 0x4242)
        assert reply[DNS].an[0].rdata == "192.0.2.44"

    try:
        run(f"dns-server=127.0.0.1:{port}", body)
    finally:
        upstream.close()


def test_a_guest_leaving_the_hub_resets_its_host_connections() -> None:
    server = listener()
    port = server.getsockname()[1]

    async def body(net: IoNet) -> None:
        t = GuestTcp(net, net.guest(), HOST, port)  # type: ignore[arg-type]
        conn, _peer = await handshake_accepted(net, t, server)
        conn.setblocking(False)
        net.hub.detach(net.guest_port)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(net.loop.sock_recv(conn, 10), 5)
        assert not net.user._tcp and not net.stack.guests.by_port
        conn.close()

    try:
        run("", body)
    finally:
        server.close()


def test_hostfwd_add_and_remove_at_run_time() -> None:
    """QEMU's HMP hostfwd_add / hostfwd_remove: a rule added while running forwards at once; removing it
    closes the listener (new clients are refused) and ends its UDP sessions."""
    from vmlan.config.usernet import parse_hostfwd_remove, parse_hostfwd_rule
    from vmlan.io.errors import LinkError

    async def body(net: IoNet) -> None:
        await net.dhcp()
        g = net.guest()
        assert net.user.forward_fds() == []
        port = net.user.add_hostfwd(parse_hostfwd_rule("udp:127.0.0.1:0-:55", net.user.cfg))
        assert [p for _r, _fd, p in net.user.forward_fds()] == [port]
        with pytest.raises(LinkError, match="already forwarded"):
            net.user.add_hostfwd(parse_hostfwd_rule(f"udp:127.0.0.1:{port}-:56", net.user.cfg))
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
        client.setblocking(False)
        await net.loop.sock_sendto(client, b"question", ("127.0.0.1", port))
        frame = await net.frame(lambda f: UDP in f and f[UDP].dport == 55, "the datagram")
        assert l4_payload(frame) == b"question"
        assert len(net.stack.udp.sessions) == 1
        assert net.user.remove_hostfwd(*parse_hostfwd_remove(f"udp:127.0.0.1:{port}"))
        assert not net.user.remove_hostfwd(*parse_hostfwd_remove(f"udp:127.0.0.1:{port}"))
        assert net.user.forward_fds() == [] and net.stack.udp.sessions == {}
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", port))  # the listener is closed: the port is free again
        probe.close()
        client.close()
        del g

    run("", body)
