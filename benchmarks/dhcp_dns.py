"""Throughput of the DHCP and DNS engines, in requests per second (best of several runs).

Run with ``python -m benchmarks.dhcp_dns`` from the repository root.
Measures the engines alone (no sockets): DISCOVER -> OFFER for returning and for new clients, static
DNS answers, forwarded query + upstream answer pairs, and the hostile 64 KiB query (QDCOUNT 65535, every
name a chain of backward pointers; the decoder before bounded parsing spent 8-14 s on one) refused.
"""

from __future__ import annotations

import itertools
import struct
import time
from collections.abc import Callable

from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dns import DNS, DNSQR, DNSRR

from vmlan.engines.dhcp import DhcpConfig, DhcpServer
from vmlan.engines.dns import HOST_NAME, DnsConfig, DnsForwarder, Reply, SendUpstream

UDHCPC_PRL = [1, 3, 6, 12, 15, 26, 28, 42]
UPSTREAM = ("192.0.2.1", 53)


def discover(mac: bytes) -> bytes:
    opts = [("message-type", "discover"), ("max_dhcp_size", 576), ("param_req_list", UDHCPC_PRL), "end"]
    raw = bytes(BOOTP(chaddr=mac, xid=0x1234) / DHCP(options=opts))
    return raw + bytes(300 - len(raw))


def rate(run: Callable[[int], None], n: int, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(n)
        best = min(best, time.perf_counter() - start)
    return n / best


def bench_dhcp_returning(n: int) -> float:
    cfg = DhcpConfig(hostname="guest", domainname="vmlan.test", dnssearch=["vmlan.test", "example.org"])
    server = DhcpServer(cfg)
    macs = [bytes((0x52, 0x54, 0, 0x12, 0x34, i)) for i in range(16)]
    payloads = [(discover(m), m) for m in macs]

    def run(count: int) -> None:
        for payload, mac in itertools.islice(itertools.cycle(payloads), count):
            assert server.handle(payload, mac, 0.0) is not None

    return rate(run, n)


def bench_dhcp_new_clients(n: int) -> float:
    macs = [bytes((2, 0, 0, i >> 16 & 0xFF, i >> 8 & 0xFF, i & 0xFF)) for i in range(n)]
    payloads = [(discover(m), m) for m in macs]
    cfg = DhcpConfig(
        server_ip="10.0.0.2",
        netmask="255.252.0.0",
        router="10.0.0.2",
        dns=("10.0.0.3",),
        pool_start="10.1.0.1",
        pool_size=n,
    )

    best = float("inf")
    for _ in range(3):
        server = DhcpServer(cfg)  # fresh each run: every DISCOVER allocates
        start = time.perf_counter()
        for payload, mac in payloads:
            assert server.handle(payload, mac, 0.0) is not None
        best = min(best, time.perf_counter() - start)
    return n / best


def bench_dns_static(n: int) -> float:
    fwd = DnsForwarder(DnsConfig(upstreams=[UPSTREAM]))
    q = bytes(DNS(id=1, rd=1, qd=DNSQR(qname=HOST_NAME, qtype="A")))

    def run(count: int) -> None:
        for _ in range(count):
            fwd.query(q, "guest", 0.0)

    return rate(run, n)


def bench_dns_forward(n: int) -> float:
    fwd = DnsForwarder(DnsConfig(upstreams=[UPSTREAM], max_pending=4096))
    q = bytes(DNS(id=1, rd=1, qd=DNSQR(qname="www.example.com", qtype="A")))
    resp_tail = bytes(
        DNS(
            id=0,
            qr=1,
            rd=1,
            ra=1,
            qd=DNSQR(qname="www.example.com"),
            an=DNSRR(rrname="www.example.com", rdata="192.0.2.80"),
        )
    )[2:]

    def run(count: int) -> None:
        for i in range(count):
            (send,) = fwd.query((i & 0xFFFF).to_bytes(2, "big") + q[2:], "guest", 0.0)
            assert isinstance(send, SendUpstream)
            (_reply,) = fwd.upstream_response(send.payload[:2] + resp_tail, UPSTREAM, 0.0)

    return rate(run, n)


def hostile_query() -> bytes:
    buf = bytearray(struct.pack("!HHHHHH", 0x4242, 0x0100, 0xFFFF, 0, 0, 0)) + b"\x00\x00\x01\x00\x01"
    while len(buf) + 2 <= 0xFFFF:
        buf += struct.pack("!H", 0xC000 | min(len(buf) - 2 if len(buf) > 17 else 12, 0x3FFF))
    return bytes(buf)


def bench_dns_hostile(n: int) -> float:
    fwd = DnsForwarder(DnsConfig(upstreams=[UPSTREAM]))
    q = hostile_query()

    def run(count: int) -> None:
        for _ in range(count):
            (reply,) = fwd.query(q, "guest", 0.0)
            assert isinstance(reply, Reply)

    return rate(run, n)


def main() -> None:
    print(f"DHCP DISCOVER->OFFER, 16 returning clients: {bench_dhcp_returning(20000):>9,.0f} req/s")
    print(f"DHCP DISCOVER->OFFER, new clients (pool 20000): {bench_dhcp_new_clients(20000):>9,.0f} req/s")
    print(f"DNS static answer (A {HOST_NAME}): {bench_dns_static(20000):>9,.0f} req/s")
    print(f"DNS forwarded query + upstream answer: {bench_dns_forward(20000):>9,.0f} pairs/s")
    print(f"DNS hostile 64 KiB query refused (FORMERR): {bench_dns_hostile(2000):>9,.0f} req/s")


if __name__ == "__main__":
    main()
