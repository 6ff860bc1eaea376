"""The DNS forwarder's upstream sockets (io/dns.py) against real UDP+TCP servers on 127.0.0.1 and ::1.

The servers run on the test's own event loop (add_reader callbacks, like the code under test), and
answer with messages scapy builds.  Like tests/servers.py's DnsServer they serve UDP and TCP on one
port; unlike it they bind IPv6 loopback too and can truncate every UDP answer (TC set, no records)
while answering in full over TCP, as a resolver under response-rate limiting does.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRROPT

from vmlan.engines.dns import DnsConfig, DnsForwarder, Reply, SendUpstream, read_resolv_conf
from vmlan.io.dns import DnsUpstreams, resolve_upstream

FAMILIES = ["127.0.0.1", "::1"]
BIG = 90  # A records for names starting with "big": about 2 KB, more than UDP carries here (scapy parses 100 at most)


@dataclass(frozen=True)
class Seen:
    transport: str
    client: tuple[str, int]
    qid: int
    name: str


def _answer(query: bytes, *, truncate: bool) -> bytes:
    q = DNS(query)
    name = q.qd[0].qname.decode()
    if truncate:
        return bytes(DNS(id=q.id, qr=1, aa=1, tc=1, rd=q.rd, ra=1, qd=q.qd))
    count = BIG if name.startswith("big") else 1
    records = [DNSRR(rrname=name, type="A", ttl=60, rdata=f"10.7.{i // 250}.{i % 250 + 1}") for i in range(count)]
    return bytes(DNS(id=q.id, qr=1, aa=1, rd=q.rd, ra=1, qd=q.qd, an=records))


class LoopDnsServer:
    """UDP and TCP on one port of ``host``; ``truncate_udp``, ``silent_udp``, ``silent_tcp`` as named."""

    def __init__(
        self, host: str, *, truncate_udp: bool = False, silent_udp: bool = False, silent_tcp: bool = False
    ) -> None:
        self.host = host
        self.truncate_udp = truncate_udp
        self.silent_udp = silent_udp
        self.silent_tcp = silent_tcp
        self.seen: list[Seen] = []
        self.loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for _ in range(20):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((host, 0))
            self.port = udp.getsockname()[1]
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((host, self.port))
            except OSError:
                udp.close()
                tcp.close()
                continue
            break
        else:
            raise OSError("no port free for both UDP and TCP")
        tcp.listen(16)
        udp.setblocking(False)
        tcp.setblocking(False)
        self.udp, self.tcp = udp, tcp
        self.conns: dict[socket.socket, bytearray] = {}
        self.loop.add_reader(udp.fileno(), self._on_udp)
        self.loop.add_reader(tcp.fileno(), self._on_accept)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def _on_udp(self) -> None:
        data, src = self.udp.recvfrom(65535)
        self.seen.append(Seen("udp", (src[0], src[1]), int.from_bytes(data[:2], "big"), DNS(data).qd[0].qname.decode()))
        if not self.silent_udp:
            self.udp.sendto(_answer(data, truncate=self.truncate_udp), src)

    def _on_accept(self) -> None:
        conn, _ = self.tcp.accept()
        conn.setblocking(False)
        self.conns[conn] = bytearray()
        self.loop.add_reader(conn.fileno(), self._on_conn, conn)

    def _on_conn(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except ConnectionError:
            data = b""
        if not data:
            self._drop(conn)
            return
        buf = self.conns[conn]
        buf += data
        while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
            size = int.from_bytes(buf[:2], "big")
            msg = bytes(buf[2 : 2 + size])
            del buf[: 2 + size]
            peer = conn.getpeername()
            self.seen.append(
                Seen("tcp", (peer[0], peer[1]), int.from_bytes(msg[:2], "big"), DNS(msg).qd[0].qname.decode())
            )
            if not self.silent_tcp:
                reply = _answer(msg, truncate=False)
                conn.sendall(len(reply).to_bytes(2, "big") + reply)  # a few KB into an empty buffer

    def _drop(self, conn: socket.socket) -> None:
        self.loop.remove_reader(conn.fileno())
        del self.conns[conn]
        conn.close()

    def close(self) -> None:
        for conn in list(self.conns):
            self._drop(conn)
        for sock in (self.udp, self.tcp):
            self.loop.remove_reader(sock.fileno())
            sock.close()


async def wait_for(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Run the loop until ``cond()`` holds (polled each millisecond), failing after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.001)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def query(name: str, ident: int, *, edns: int | None = None) -> bytes:
    if edns is None:
        return bytes(DNS(id=ident, rd=1, qd=DNSQR(qname=name, qtype="A")))
    return bytes(DNS(id=ident, rd=1, qd=DNSQR(qname=name, qtype="A"), ar=DNSRROPT(rclass=edns)))


class Answers:
    """The on_answer callback, recording what arrived."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, tuple[str, int], bool]] = []

    def __call__(self, payload: bytes, upstream: tuple[str, int], tcp: bool) -> None:
        self.got.append((payload, upstream, tcp))


class Resolver:
    """What the stack's adapter does: the engine's actions onto DnsUpstreams, its timer onto the loop."""

    def __init__(self, cfg: DnsConfig) -> None:
        self.loop = asyncio.get_running_loop()
        self.fwd = DnsForwarder(cfg)
        self.up = DnsUpstreams(self.loop, self._answer)
        self.replies: list[Reply] = []
        self._timer: asyncio.TimerHandle | None = None

    def ask(self, payload: bytes, client: object = ("10.0.2.15", 5000), *, tcp: bool = False) -> None:
        self._run(self.fwd.query(payload, client, self.loop.time(), tcp=tcp, guest="g"))

    def _answer(self, payload: bytes, upstream: tuple[str, int], tcp: bool) -> None:
        self._run(self.fwd.upstream_response(payload, upstream, self.loop.time(), tcp=tcp))

    def _on_timer(self) -> None:
        self._timer = None
        self._run(self.fwd.handle_timer(self.loop.time()))

    def _run(self, actions: list[SendUpstream | Reply]) -> None:
        for action in actions:
            if isinstance(action, SendUpstream):
                self.up.send(action.upstream, action.payload, action.tcp)
            else:
                if action.upstream_id is not None:
                    self.up.forget(action.upstream_id)
                self.replies.append(action)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.fwd.get_timer()
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.up.close()


# --------------------------------------------------------------------------- plain answers


@pytest.mark.parametrize("host", FAMILIES)
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_answers_arrive_from_ipv4_and_ipv6_servers(host: str, tcp: bool) -> None:
    async def scenario() -> None:
        server = LoopDnsServer(host)
        answers = Answers()
        up = DnsUpstreams(asyncio.get_running_loop(), answers)
        up.send(server.address, query("small.test", 0x1234), tcp)
        await wait_for(lambda: answers.got, what="the answer")
        payload, upstream, over_tcp = answers.got[0]
        assert upstream == server.address and over_tcp is tcp  # the very tuple it was sent to
        msg = DNS(payload)
        assert msg.id == 0x1234 and msg.an[0].rdata == "10.7.0.1"
        assert [(s.transport, s.qid) for s in server.seen] == [("tcp" if tcp else "udp", 0x1234)]
        assert ":" in server.seen[0].client[0] if ":" in host else "." in server.seen[0].client[0]
        await wait_for(lambda: up.open_sockets() == (0, 0), what="the socket closing after its answer")
        assert up.stats.answers == 1 and up.stats.socket_errors == 0
        up.close()
        server.close()

    run(scenario)


def test_udp_source_ports_are_random_per_query() -> None:
    async def scenario() -> None:
        server = LoopDnsServer("127.0.0.1")
        answers = Answers()
        up = DnsUpstreams(asyncio.get_running_loop(), answers)

        async def ask(n: int) -> None:
            up.send(server.address, query(f"n{n}.test", n), False)
            await wait_for(lambda: len(answers.got) == n + 1, what=f"answer {n}")

        for n in range(20):  # one at a time: each socket is closed before the next opens
            await ask(n)
        ports = [s.client[1] for s in server.seen]
        assert len(ports) == 20
        assert len(set(ports)) >= 18  # two repeats among 20 draws from ~28000 ports: practically never
        assert max(ports) - min(ports) > 1000  # and not handed out one after the other
        up.close()
        server.close()

    run(scenario)


def test_a_retry_to_the_same_upstream_reuses_the_querys_socket() -> None:
    async def scenario() -> None:
        server = LoopDnsServer("127.0.0.1", silent_udp=True)
        up = DnsUpstreams(asyncio.get_running_loop(), Answers())
        up.send(server.address, query("slow.test", 7), False)
        up.send(server.address, query("slow.test", 7), False)
        await wait_for(lambda: len(server.seen) == 2, what="both tries")
        assert server.seen[0].client == server.seen[1].client  # a late answer to try 1 still arrives
        assert up.open_sockets() == (1, 0) and up.stats.udp_resent == 1
        up.close()
        server.close()

    run(scenario)


def test_answers_from_anyone_but_the_upstream_never_reach_the_callback() -> None:
    async def scenario() -> None:
        server = LoopDnsServer("127.0.0.1", silent_udp=True)
        answers = Answers()
        up = DnsUpstreams(asyncio.get_running_loop(), answers)
        up.send(server.address, query("x.test", 9), False)
        await wait_for(lambda: server.seen, what="the query")
        client = server.seen[0].client
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spoofer:  # right port and ID, wrong source
            spoofer.sendto(_answer(query("x.test", 9), truncate=False), client)
        server.udp.sendto(b"\x00\x09\x80" + bytes(9), client)  # from the upstream: delivered (the engine judges)
        await wait_for(lambda: answers.got, what="the upstream's datagram")
        assert [p[:3] for p, _, _ in answers.got] == [b"\x00\x09\x80"]
        up.close()
        server.close()

    run(scenario)


# --------------------------------------------------------------------------- the engine on top


@pytest.mark.parametrize("host", FAMILIES)
def test_a_truncated_udp_answer_is_fetched_over_tcp_and_relayed_in_full(host: str) -> None:
    async def scenario() -> None:
        server = LoopDnsServer(host, truncate_udp=True)
        (nameserver,) = read_resolv_conf(f"nameserver {host}\n")  # IPv6 from resolv.conf works end to end
        resolver = Resolver(DnsConfig(upstreams=[(nameserver, server.port)], tcp_upstream=True))
        resolver.ask(query("big.test", 0xABCD, edns=4096))
        await wait_for(lambda: resolver.replies, what="the reply")
        reply = DNS(resolver.replies[0].payload)
        assert reply.id == 0xABCD and reply.tc == 0 and reply.ancount == BIG
        assert [s.transport for s in server.seen] == ["udp", "tcp"]
        assert server.seen[0].qid == server.seen[1].qid != 0xABCD  # the engine's ID, the same on both legs
        assert resolver.fwd.stats.tcp_retries == 1 and resolver.up.open_sockets() == (0, 0)
        resolver.close()
        server.close()

    run(scenario)


def test_guests_that_cannot_take_the_full_answer_get_tc_then_get_it_over_tcp() -> None:
    async def scenario() -> None:
        server = LoopDnsServer("::1", truncate_udp=True)
        resolver = Resolver(DnsConfig(upstreams=[server.address], tcp_upstream=True))
        resolver.ask(query("big.test", 1))  # no EDNS: 512 octets at most
        await wait_for(lambda: resolver.replies, what="the truncated reply")
        first = DNS(resolver.replies[0].payload)
        assert first.id == 1 and first.tc == 1 and len(resolver.replies[0].payload) <= 512
        # The guest retries over TCP, as TC tells it to; that goes upstream over TCP directly.
        resolver.ask(query("big.test", 2), ("10.0.2.15", 5001), tcp=True)
        await wait_for(lambda: len(resolver.replies) == 2, what="the TCP reply")
        second = DNS(resolver.replies[1].payload)
        assert second.id == 2 and second.tc == 0 and second.ancount == BIG
        assert [s.transport for s in server.seen] == ["udp", "tcp", "tcp"]
        resolver.close()
        server.close()

    run(scenario)


def test_when_the_tcp_leg_never_answers_the_guest_gets_the_truncated_answer() -> None:
    async def scenario() -> None:
        server = LoopDnsServer("127.0.0.1", truncate_udp=True, silent_tcp=True)
        resolver = Resolver(DnsConfig(upstreams=[server.address], tcp_upstream=True, timeout=0.2, attempts=2))
        resolver.ask(query("big.test", 3, edns=1232))
        await wait_for(lambda: resolver.replies, what="the reply after the TCP timeouts")
        reply = DNS(resolver.replies[0].payload)
        assert reply.id == 3 and reply.tc == 1 and reply.rcode == 0
        assert [s.transport for s in server.seen] == ["udp", "tcp", "tcp"]  # TCP try, then its retry
        assert resolver.fwd.pending() == 0
        await wait_for(lambda: resolver.up.open_sockets() == (0, 0), what="forget() closing the stuck connections")
        resolver.close()
        server.close()

    run(scenario)


# --------------------------------------------------------------------------- sockets: caps, errors, leaks


def test_no_socket_outlives_close_or_its_lifetime() -> None:
    async def scenario() -> None:
        before = open_fds()
        silent = LoopDnsServer("127.0.0.1", silent_udp=True, silent_tcp=True)
        talker = LoopDnsServer("::1")
        answers = Answers()
        up = DnsUpstreams(asyncio.get_running_loop(), answers, lifetime=0.3)
        for n in range(10):
            up.send(silent.address, query("q.test", n), n % 2 == 1)
            up.send(talker.address, query("q.test", 100 + n), n % 2 == 1)
        assert up.open_sockets() == (10, 10)
        await wait_for(lambda: len(answers.got) == 10, what="the talker's answers")
        await wait_for(lambda: up.open_sockets() == (5, 5), what="answered sockets closing")
        await wait_for(lambda: up.open_sockets() == (0, 0), what="the lifetime closing the rest")
        assert up.stats.expired == 10
        for n in range(6):
            up.send(silent.address, query("q.test", 200 + n), n % 2 == 1)
        up.close()
        assert up.open_sockets() == (0, 0)
        up.send(silent.address, query("q.test", 300), False)  # after close: ignored
        assert up.open_sockets() == (0, 0)
        silent.close()
        talker.close()
        assert open_fds() == before

    run(scenario)


def test_caps_close_the_oldest_and_forget_closes_a_querys_sockets() -> None:
    async def scenario() -> None:
        server = LoopDnsServer("127.0.0.1", silent_udp=True, silent_tcp=True)
        other = LoopDnsServer("::1", silent_udp=True)
        up = DnsUpstreams(asyncio.get_running_loop(), Answers(), max_udp=4, max_tcp=2)
        for n in range(6):
            up.send(server.address, query("q.test", n), False)
        for n in range(3):
            up.send(server.address, query("q.test", n), True)
        assert up.open_sockets() == (4, 2) and up.stats.evicted == 3
        up.send(other.address, query("q.test", 5), False)  # query 5 asked of a second upstream too
        assert up.open_sockets() == (4, 2)
        up.forget(5)
        assert up.open_sockets() == (2, 2)  # query 5's two UDP sockets
        up.forget(2)
        assert up.open_sockets() == (2, 1)
        up.close()
        server.close()
        other.close()

    run(scenario)


def test_unreachable_upstreams_are_counted_never_raised() -> None:
    async def scenario() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]  # nothing listens once this is closed
        answers = Answers()
        up = DnsUpstreams(asyncio.get_running_loop(), answers)
        up.send(("127.0.0.1", closed_port), query("q.test", 1), True)  # connection refused
        up.send(("127.0.0.1", closed_port), query("q.test", 2), False)  # ICMP port unreachable
        up.send(("dns.example", 53), query("q.test", 3), False)  # not a literal: no lookup from the loop
        up.send(("fe80::1%no-such-interface0", 53), query("q.test", 4), False)
        await wait_for(lambda: up.open_sockets() == (0, 0), what="both sockets failing")
        assert up.stats.socket_errors == 1 and up.stats.recv_errors == 1 and up.stats.bad_upstream == 2
        assert answers.got == []
        up.close()

    run(scenario)


def test_on_answer_raising_is_counted_and_the_loop_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        server = LoopDnsServer("127.0.0.1")
        loop = asyncio.get_running_loop()
        failures: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: failures.append(context))

        def broken(payload: bytes, upstream: tuple[str, int], tcp: bool) -> None:
            raise RuntimeError("engine bug")

        up = DnsUpstreams(loop, broken)
        up.send(server.address, query("q.test", 1), False)
        await wait_for(lambda: up.stats.internal_errors == 1, what="the callback's failure")
        assert up.open_sockets() == (0, 0)
        # A bug in the socket callbacks themselves costs that query only.
        monkeypatch.setattr(DnsUpstreams, "_on_tcp_writable", lambda self, q: 1 / 0)
        up.send(server.address, query("q.test", 2), True)
        await wait_for(lambda: up.stats.internal_errors == 2, what="the socket callback's failure")
        assert up.open_sockets() == (0, 0) and failures == []  # nothing reached the loop
        up.close()
        server.close()

    run(scenario)


# Run in a network namespace of its own: a veth pair, d0 with the link-local fe80::53 (no DAD),
# a UDP and a TCP server on it that answer each query with the query itself, QR set, and DnsUpstreams
# sending to "fe80::53%d0" over both.  Prints what came back.
_ZONE_SCRIPT = r"""
import asyncio, json, socket, subprocess
from vmlan.io.dns import DnsUpstreams
for cmd in ("ip link set lo up", "ip link add d0 type veth peer name d1", "ip link set d0 up",
            "ip link set d1 up", "ip -6 addr add fe80::53/64 dev d0 nodad"):
    subprocess.run(cmd.split(), check=True)
scope = socket.if_nametoindex("d0")

async def main():
    loop = asyncio.get_running_loop()
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.bind(("fe80::53", 0, 0, scope))
    port = udp.getsockname()[1]
    tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp.bind(("fe80::53", port, 0, scope))
    tcp.listen(4)
    def on_udp():
        data, src = udp.recvfrom(512)
        udp.sendto(data[:2] + bytes([data[2] | 0x80]) + data[3:], src)
    def on_conn(conn):
        data = conn.recv(512)  # the whole framed query: one small segment
        loop.remove_reader(conn.fileno())
        conn.sendall(data[:4] + bytes([data[4] | 0x80]) + data[5:])
        conn.close()
    def on_accept():
        conn, _ = tcp.accept()
        conn.setblocking(False)
        loop.add_reader(conn.fileno(), on_conn, conn)
    loop.add_reader(udp.fileno(), on_udp)
    loop.add_reader(tcp.fileno(), on_accept)
    got = []
    up = DnsUpstreams(loop, lambda payload, upstream, over_tcp: got.append([payload.hex(), list(upstream), over_tcp]))
    query = bytes.fromhex("abcd01000001000000000000076578616d706c6503636f6d0000010001")
    up.send(("fe80::53%d0", port), query, False)
    up.send(("fe80::53%d0", port), b"\x12\x34" + query[2:], True)
    for _ in range(5000):
        if len(got) == 2:
            break
        await asyncio.sleep(0.001)
    up.close()
    print(json.dumps({"port": port, "got": got, "errors": up.stats.socket_errors + up.stats.recv_errors}))

asyncio.run(main())
"""


def test_a_link_local_upstream_with_a_zone_answers_over_udp_and_tcp() -> None:
    out = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", _ZONE_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    port = result["port"]
    query = "abcd01000001000000000000076578616d706c6503636f6d0000010001"
    assert sorted(result["got"], key=lambda g: g[2]) == [
        ["abcd81" + query[6:], ["fe80::53%d0", port], False],
        ["123481" + query[6:], ["fe80::53%d0", port], True],
    ]
    assert result["errors"] == 0


def test_upstream_literals_and_zones() -> None:
    assert resolve_upstream(("192.0.2.1", 53)) == (socket.AF_INET, ("192.0.2.1", 53))
    family, sockaddr = resolve_upstream(("fe80::1%lo", 5353))
    assert family == socket.AF_INET6 and sockaddr == ("fe80::1", 5353, 0, socket.if_nametoindex("lo"))
    assert resolve_upstream(("::1", 53))[1][:2] == ("::1", 53)
    with pytest.raises(OSError) as exc:
        resolve_upstream(("resolver.example", 53))
    assert exc.value.errno in (socket.EAI_NONAME, errno.ENOENT)
