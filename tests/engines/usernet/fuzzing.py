"""A stack-level fuzzer: random and mutated frames from several ports, random host-side results and timer
firings in between, and the invariants checked after every step.

Frames start from valid bases (ARP, DHCP, ICMP, DNS over UDP and TCP, UDP, TCP SYNs and segments of the
connections already open, fragments, hostfwd answers), built once with scapy, then have fields flipped,
lengths rewritten, bytes cut or added, sources swapped for another guest's, and their checksums fixed
or not. The host side answers what the stack asks as an I/O layer would -- connect results (successes
and every errno the layer reports), partial writes, reads, EOFs and resets, datagrams and ICMP errors,
ping replies, DNS answers (right and garbage), host forward clients -- in random order, each only where
an I/O layer could (no data after EOF, no more ``tcp_written`` than was handed over).

The invariants: nothing raises, ``stack.faults.counts`` stays empty (an internal error is a bug), every
emitted frame checks out, the flow table and its heap stay bounded, every per-guest account equals what
the flow table holds, and a silent network returns to the empty state.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import random
from collections.abc import Callable
from typing import Any

from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from tests.engines.usernet.stacknet import (
    BCAST_MAC,
    DNS_IP,
    DNS_MAC,
    HOST,
    HOST_MAC,
    OUTSIDE,
    UPSTREAM,
    Guest,
    StackNet,
    build_config,
    check_frame,
    dns_answer,
    dns_tcp,
    ip_bytes,
    mac_bytes,
    tcp_frame,
    wire_frames,
)
from vmlan.engines.usernet import PingFlow, TcpFlow, UdpFlow, UdpFwdSession
from vmlan.engines.usernet import actions as A
from vmlan.engines.usernet.core import TimerFlow
from vmlan.wire.checksum import internet_checksum, pseudo_header_sum_v4

OPTIONS = ",".join([
    "hostfwd=udp::5555-:55", "hostfwd=tcp::2222-:22", "guestfwd=tcp:10.0.2.100:80-cmd:cat",
    "guestfwd=tcp:10.0.2.100:81-127.0.0.1:7", "dns-static=foo.test:192.0.2.9", "guest-tcp=12", "guest-udp=12",
    "guest-pings=6", "max-flows=64", "hostfwd-clients=4", "guest-macs=2",
])
MAX_FLOWS = 64
ERRNOS = [errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT, errno.EACCES, errno.EPERM,
          errno.EMFILE, errno.EADDRNOTAVAIL]
TCP_FLAG_SETS = ["A", "PA", "FA", "R", "RA", "S", "SA", "F", "", "FPAU", "SF", "SR", "FPA"]


# -- checking frames fast (scapy is ~0.3 ms a frame; the seeded fuzzer emits tens of thousands) ------------

def fast_check(raw: bytes) -> None:
    """What :func:`check_frame` checks, with our own checksum code instead of scapy's."""
    assert len(raw) >= 14
    ethertype = int.from_bytes(raw[12:14], "big")
    if ethertype == 0x0806:
        assert len(raw) >= 42 and raw[14:20] == b"\x00\x01\x08\x00\x06\x04"
        assert raw[6:12] == raw[22:28] and raw[6:8] == b"\x52\x55"
        return
    assert ethertype == 0x0800
    assert raw[14] == 0x45
    total = int.from_bytes(raw[16:18], "big")
    assert len(raw) >= 14 + total >= 34
    assert internet_checksum(raw[14:34]) == 0, "IPv4 header checksum"
    src, dst, proto = raw[26:30], raw[30:34], raw[23]
    assert raw[6:12] == (mac_bytes(DNS_MAC) if src == ip_bytes(DNS_IP) else mac_bytes(HOST_MAC))
    if int.from_bytes(raw[20:22], "big") & 0x3FFF:
        return  # a fragment: its transport checksum is the datagram's
    l4 = raw[34 : 14 + total]
    if proto == 1:
        assert internet_checksum(l4) == 0, "ICMP checksum"
    else:
        assert proto in (6, 17)
        if proto == 17:
            assert int.from_bytes(l4[4:6], "big") == len(l4)
        assert internet_checksum(l4, pseudo_header_sum_v4(src, dst, proto, len(l4))) == 0, f"proto {proto} checksum"


def fix_checksums(frame: bytearray) -> None:
    """Make the IPv4 header and UDP/TCP/ICMP checksums of a (mutated) frame valid again, where it parses."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return
    ihl = (frame[14] & 0x0F) * 4
    if ihl < 20 or len(frame) < 14 + ihl:
        return
    frame[24:26] = b"\0\0"
    frame[24:26] = internet_checksum(frame[14 : 14 + ihl]).to_bytes(2, "big")
    total = int.from_bytes(frame[16:18], "big")
    proto = frame[23]
    start, end = 14 + ihl, min(14 + total, len(frame))
    offset = {1: 2, 6: 16, 17: 6}.get(proto)
    if offset is None or end - start < offset + 2:
        return
    at = start + offset
    frame[at : at + 2] = b"\0\0"
    seg = frame[start:end]
    if proto == 1:
        value = internet_checksum(seg)
    else:
        value = internet_checksum(seg, pseudo_header_sum_v4(bytes(frame[26:30]), bytes(frame[30:34]), proto, len(seg)))
    frame[at : at + 2] = value.to_bytes(2, "big")


# -- the guests' side -------------------------------------------------------------------------------------

def bases(g: Guest) -> list[bytes]:
    """Valid frames guest ``g`` could send, one of each kind."""
    return list(_bases(g.mac, g.ip))


@functools.lru_cache(maxsize=16)
def _bases(mac: str, ip: str) -> tuple[bytes, ...]:
    eth = Ether(src=mac, dst=HOST_MAC)
    dns = Ether(src=mac, dst=DNS_MAC)
    chaddr = mac_bytes(mac) + b"\0" * 10
    from scapy.layers.dhcp import BOOTP, DHCP

    def dhcp(mtype: str, extra: list[Any]) -> Any:
        return (Ether(src=mac, dst=BCAST_MAC) / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
                / BOOTP(chaddr=chaddr, xid=7) / DHCP(options=[("message-type", mtype), *extra, "end"]))

    big = IP(src=ip, dst=HOST, id=77) / ICMP(id=1, seq=1) / (b"p" * 3000)
    pkts = [
        Ether(src=mac, dst=BCAST_MAC) / ARP(op=1, hwsrc=mac, psrc=ip, pdst=HOST),
        Ether(src=mac, dst=HOST_MAC) / ARP(op=2, hwsrc=mac, psrc=ip, hwdst=HOST_MAC, pdst=HOST),
        dhcp("discover", []),
        dhcp("request", [("server_id", HOST), ("requested_addr", ip)]),
        dhcp("release", [("server_id", HOST)]),
        eth / IP(src=ip, dst=HOST) / ICMP(id=3, seq=1) / b"ping",
        eth / IP(src=ip, dst=OUTSIDE) / ICMP(id=4, seq=2) / b"ping outside",
        dns / IP(src=ip, dst=DNS_IP) / UDP(sport=33333, dport=53) / DNS(id=0x1234, rd=1, qd=DNSQR(qname="x.example")),
        dns / IP(src=ip, dst=DNS_IP) / UDP(sport=33334, dport=53) / DNS(id=0x2345, rd=1, qd=DNSQR(qname="foo.test")),
        dns / IP(src=ip, dst=DNS_IP) / TCP(sport=45100, dport=53, flags="S", seq=1, options=[("MSS", 1460)]),
        eth / IP(src=ip, dst=HOST) / UDP(sport=40001, dport=9999) / b"hello",
        eth / IP(src=ip, dst=OUTSIDE) / UDP(sport=40002, dport=53) / (b"\x12\x34" + b"\0" * 10),
        eth / IP(src=ip, dst="127.0.0.1") / UDP(sport=40003, dport=7) / b"loop",
        eth / IP(src=ip, dst=HOST) / UDP(sport=55, dport=41000) / b"fwd answer",
        eth / IP(src=ip, dst=HOST) / TCP(sport=45000, dport=8080, flags="S", seq=1000,
                                        options=[("MSS", 1460), ("WScale", 7), ("SAckOK", b""), ("Timestamp", (1, 0))]),
        eth / IP(src=ip, dst=OUTSIDE) / TCP(sport=45001, dport=443, flags="S", seq=2000),
        eth / IP(src=ip, dst="10.0.2.100") / TCP(sport=45002, dport=80, flags="S", seq=3000),
        eth / IP(src=ip, dst="10.0.2.100") / TCP(sport=45003, dport=81, flags="S", seq=3000),
        eth / IP(src=ip, dst=HOST, options=[]) / TCP(sport=45000, dport=8080, flags="PA", seq=1001) / b"data",
        eth / IP(src=ip, dst=HOST) / TCP(sport=45000, dport=8080, flags="FA", seq=1001),
        eth / IP(src=ip, dst=HOST) / TCP(sport=22, dport=50000, flags="SA", seq=9, ack=1),
        *[eth / f for f in fragment(big, fragsize=1480)],
        eth / IP(src=ip, dst=OUTSIDE, proto=47) / b"gre!",
    ]
    return tuple(bytes(p).ljust(60, b"\0") for p in pkts)


class GuestConn:
    """A TCP connection a fuzzed guest keeps, driven with struct-built frames."""

    def __init__(self, g: Guest, dst: str, dport: int, sport: int) -> None:
        self.g = g
        self.dst, self.dport, self.sport = dst, dport, sport
        self.seq = 5000 + sport
        self.ack = 0

    def syn(self) -> bytes:
        raw = tcp_frame(self.g.mac, DNS_MAC if self.dst == DNS_IP else HOST_MAC, self.g.ip, self.dst, self.sport,
                        self.dport, self.seq, 0, "S", options=bytes((2, 4, 5, 0xB4, 1, 3, 3, 7)))
        self.seq += 1
        return raw

    def ack_frame(self) -> bytes:
        return tcp_frame(self.g.mac, DNS_MAC if self.dst == DNS_IP else HOST_MAC, self.g.ip, self.dst, self.sport,
                         self.dport, self.seq, self.ack, "A")

    def frame(self, rng: random.Random) -> bytes:
        flags = rng.choice(["A", "PA", "PA", "PA", "A", *TCP_FLAG_SETS])
        dseq = rng.choice([0, 0, 0, 1, -1, rng.randint(-70000, 70000)])
        dack = rng.choice([0, 0, 0, 1, -1, rng.randint(-70000, 70000)])
        payload = b"p" * rng.choice([0, 0, 1, 100, 1460, rng.randint(0, 3000)])
        if self.dport == 53 and rng.random() < 0.95:
            payload = rng.choice([dns_tcp(rng.randint(0, 0xFFFF), "x.example"), dns_tcp(7, "foo.test"), b"",
                                  dns_tcp(8)[: rng.randint(0, 20)], b"\x00\x03abc", b"\xff\xff" + b"q" * 100])
        options = rng.choice([b"", b"", bytes((2, 4, 5, 0xB4)), bytes((1, 1, 1, 0)), bytes((8, 10)) + rng.randbytes(8),
                              bytes((5, 10)) + rng.randbytes(8), rng.randbytes(4 * rng.randint(1, 10))])
        dst_mac = DNS_MAC if self.dst == DNS_IP else HOST_MAC
        raw = tcp_frame(self.g.mac, dst_mac, self.g.ip, self.dst, self.sport, self.dport, self.seq + dseq,
                        self.ack + dack, flags, payload, window=rng.choice([0, 1, 512, 0xFFFF]), options=options)
        if dseq == 0:
            self.seq += len(payload) + ("S" in flags) + ("F" in flags)
        return raw

    def learn(self, raw: bytes) -> None:
        """Follow the stack's side: what it sends to us moves our ACK."""
        if len(raw) < 54 or raw[23] != 6 or raw[30:34] != ip_bytes(self.g.ip):
            return
        if int.from_bytes(raw[36:38], "big") != self.sport or int.from_bytes(raw[34:36], "big") != self.dport:
            return
        seq = int.from_bytes(raw[38:42], "big")
        total = int.from_bytes(raw[16:18], "big")
        plen = total - 20 - (raw[46] >> 4) * 4
        flags = raw[47]
        self.ack = (seq + plen + (1 if flags & 0x03 else 0)) & 0xFFFFFFFF
        if flags & 0x10:
            self.seq = int.from_bytes(raw[42:46], "big")  # resynchronise on what the stack took


def mutate(rng: random.Random, frame: bytes, macs: list[str], ips: list[str]) -> bytes:
    out = bytearray(frame)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(9)
        if op == 0 and out:
            for _ in range(rng.randint(1, 6)):
                out[rng.randrange(len(out))] ^= rng.randint(1, 255)
        elif op == 1:
            del out[rng.randint(0, len(out)) :]
        elif op == 2:
            out += rng.randbytes(rng.randint(1, 40))
        elif op == 3 and len(out) >= 18:
            total = rng.choice([0, 19, 20, 28, len(out) - 14, len(out) - 13, 0xFFFF, rng.randint(0, 2000)])
            out[16:18] = total.to_bytes(2, "big")
        elif op == 4 and len(out) >= 15:
            out[14] = rng.choice([0x40, 0x44, 0x46, 0x4F, 0x45, 0x65, rng.randint(0, 255)])
        elif op == 5 and len(out) >= 40:
            out[38:40] = rng.choice([0, 7, 8, 9, 0xFFFF, len(out) - 34, rng.randint(0, 2000)]).to_bytes(2, "big")
        elif op == 6 and len(out) >= 47:
            out[46] = rng.randint(0, 15) << 4
        elif op == 7 and len(out) >= 12:
            out[6:12] = mac_bytes(rng.choice(macs))
        elif op == 8 and len(out) >= 30:
            out[26:30] = ip_bytes(rng.choice(ips))
        if len(out) >= 22 and rng.random() < 0.1:
            out[20:22] = rng.choice([0x2000, 0x2001, 0x0001, 0x4000, 0x1FFF]).to_bytes(2, "big")
    if rng.random() < 0.6:
        fix_checksums(out)
    return bytes(out)


# -- the host's side --------------------------------------------------------------------------------------

class HostSide:
    """Plays the I/O layer: keeps what an I/O layer would know (flow ids, what it owes) and answers at random."""

    def __init__(self, net: StackNet, rng: random.Random) -> None:
        self.net = net
        self.rng = rng
        self.connecting: set[int] = set()
        self.tcp: set[int] = set()
        self.eof: set[int] = set()
        self.unwritten: dict[int, int] = {}
        self.udp: dict[int, tuple[str, int]] = {}
        self.pings: dict[int, tuple[int, bytes]] = {}
        self.dns: list[tuple[tuple[str, int], bytes, bool]] = []
        self.closes: dict[int, int] = {}
        self.opened: set[int] = set()  # every flow the host side holds a socket for (connects, forwards)

    def take(self) -> None:
        for action in self.net.stack.take_actions():
            kind = action[0]
            if kind == A.TCP_CONNECT:
                self.connecting.add(action[1])
                self.opened.add(action[1])
            elif kind == A.TCP_WRITE:
                self.unwritten[action[1]] = self.unwritten.get(action[1], 0) + len(action[2])
            elif kind == A.TCP_CLOSE:
                fid = action[1]
                self.closes[fid] = self.closes.get(fid, 0) + 1
                self.connecting.discard(fid)
                self.tcp.discard(fid)
                self.eof.discard(fid)
                self.unwritten.pop(fid, None)
            elif kind == A.UDP_SEND:
                self.udp[action[1]] = action[3]
            elif kind == A.UDP_CLOSE:
                self.udp.pop(action[1], None)
            elif kind == A.PING_SEND:
                self.pings[action[1]] = (action[5], action[6])
            elif kind == A.PING_CLOSE:
                self.pings.pop(action[1], None)
            elif kind == A.DNS_SEND:
                self.dns.append((action[1], action[2], action[3]))
                del self.dns[:-8]

    def act(self) -> None:
        """One random thing an I/O layer could report now."""
        rng, stack, now = self.rng, self.net.stack, self.net.now
        self.take()
        choice = rng.randrange(14)
        if choice == 0 and self.connecting:
            fid = rng.choice(sorted(self.connecting))
            self.connecting.discard(fid)
            if rng.random() < 0.7:
                stack.tcp_connected(fid, now)
                self.tcp.add(fid)
            else:
                stack.tcp_failed(fid, rng.choice(ERRNOS), now)
        elif choice == 1 and self.unwritten:
            fid = rng.choice(sorted(self.unwritten))
            n = rng.choice([self.unwritten[fid], rng.randint(0, self.unwritten[fid])])
            self.unwritten[fid] -= n
            stack.tcp_written(fid, n, now)
        elif choice in (2, 3) and self.tcp - self.eof:
            fid = rng.choice(sorted(self.tcp - self.eof))
            data = rng.randbytes(rng.choice([1, 100, 5000, 70000]))
            if rng.random() < 0.9:
                n = stack.tcp_fill(fid, _reader(data), now)
            else:
                n = stack.tcp_fill(fid, _reader(b""), now)
                if n == 0:
                    self.eof.add(fid)
            assert n is None or 0 <= n <= len(data)
        elif choice == 4 and self.tcp - self.eof:
            fid = rng.choice(sorted(self.tcp - self.eof))
            if rng.random() < 0.5:
                stack.tcp_send(fid, rng.randbytes(rng.randint(0, 3000)), now)
            else:
                stack.tcp_eof(fid, now)
                self.eof.add(fid)
        elif choice == 5 and self.tcp:
            stack.tcp_reset(rng.choice(sorted(self.tcp)), now)
        elif choice == 6 and self.udp:
            fid = rng.choice(sorted(self.udp))
            dst = self.udp[fid]
            stack.udp_received(fid, rng.randbytes(rng.choice([0, 10, 2000, 9000])), rng.choice([dst, ("127.0.0.1", 53),
                               ("203.0.113.5", 1)]), now)
        elif choice == 7 and self.udp:
            fid = rng.choice(sorted(self.udp))
            stack.udp_error(fid, self.udp[fid], rng.choice([0, 1, 3, 10, 13]), now)
        elif choice == 8 and self.pings:
            fid = rng.choice(sorted(self.pings))
            seq, data = self.pings[fid]
            stack.ping_reply(fid, rng.choice([seq, rng.randint(0, 0xFFFF)]), data, now)
        elif choice == 9 and self.dns:
            upstream, payload, tcp = self.dns.pop(rng.randrange(len(self.dns)))
            qid = int.from_bytes(payload[:2], "big")
            answer = rng.choice([dns_answer(qid, "x.example"), dns_answer(qid)[:rng.randint(0, 40)],
                                 rng.randbytes(rng.randint(0, 600)), dns_answer(qid + 1, "x.example")])
            stack.dns_answer(answer, rng.choice([upstream, UPSTREAM, ("127.0.0.1", 53)]), tcp, now)
        elif choice == 10:
            fid = stack.hostfwd_tcp(1, (rng.choice(["127.0.0.1", "198.51.100.7"]), rng.randint(1, 65535)), now)
            if fid is not None:
                self.tcp.add(fid)
                self.opened.add(fid)
        elif choice == 11:
            stack.hostfwd_udp(0, (rng.choice(["127.0.0.1", "198.51.100.7"]), rng.randint(40000, 40010)),
                              rng.randbytes(rng.choice([0, 5, 3000])), now)
        elif choice == 12:
            self.net.advance(rng.choice([0.001, 0.05, 0.3, 1.0, 5.0, 30.0, 300.0]))
        self.take()


def _reader(data: bytes) -> Callable[[memoryview], int]:
    def read(view: memoryview) -> int:
        n = min(len(view), len(data))
        view[:n] = data[:n]
        return n

    return read


# -- the invariants ----------------------------------------------------------------------------------------

def check_invariants(net: StackNet) -> None:
    stack = net.stack
    assert stack.faults.counts == {}, stack.faults.first
    # the engines the stack hosts keep their own count of swallowed internal errors
    assert stack.dhcp is None or stack.dhcp.server.stats.internal_errors == 0
    assert stack.dns is None or stack.dns.resolver.stats.internal_errors == 0
    flows = stack.flows
    assert len(flows) <= MAX_FLOWS + 8  # + the stack-wide timers and what hostfwd UDP sessions hold
    assert flows.heap_size <= 2 * len(flows) + 64
    live = list(flows)
    for guest in stack.guests.by_port.values():
        mine = [f for f in live if f.guest is guest]
        tcp = [f for f in mine if isinstance(f, TcpFlow) and not f.released]  # TIME_WAIT: given back
        assert guest.tcp == len(tcp), (guest, guest.tcp, len(tcp))
        assert guest.connecting == sum(f.connecting for f in tcp)
        assert guest.cmd == sum(1 for f in tcp if f.kind == 1 and isinstance(f.target, str))
        assert guest.udp == sum(isinstance(f, UdpFlow) for f in mine)
        assert guest.pings == sum(isinstance(f, PingFlow) for f in mine)
        assert guest.flows == {f.fid for f in mine}
    assert set(stack.tcp.by_key.values()) == {f for f in live if isinstance(f, TcpFlow)}
    for index, count in stack.tcp.fwd_count.items():
        assert count == sum(1 for f in live if isinstance(f, TcpFlow) and f.kind == 2 and f.rule == index
                            and not f.released)
    for index, count in stack.udp.fwd_count.items():
        assert count == sum(1 for f in live if isinstance(f, UdpFwdSession) and f.rule == index)
    assert set(stack.udp.flows_by_src.values()) == {f for f in live if isinstance(f, UdpFlow)}
    assert set(stack.icmp.pings.values()) == {f for f in live if isinstance(f, PingFlow)}


class Fuzzer:
    """One stack with three guests (two by DHCP, one of them taking GSO frames; one static), open
    connections, a pending DNS query, and the host side; ``step()`` sends one frame and lets the host
    side do one thing."""

    def __init__(self, rng: random.Random, *, scapy_check: bool = False) -> None:
        self.rng = rng
        self.scapy_check = scapy_check
        cfg = build_config(OPTIONS)
        cfg = dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, mem_budget=400_000, cmd_per_guest=2,
                                                                  max_cmd=3, tcp_connecting_per_guest=5))
        net = self.net = StackNet(cfg=cfg)
        self.guests = [net.guest("a", "52:54:00:12:34:56", dhcp=True),
                       net.guest("b", "52:54:00:12:34:57", dhcp=True, offload_ok=True),
                       net.guest("c", "52:54:00:12:34:58", "10.0.2.50")]
        self.host = HostSide(net, rng)
        self.bases = {g.port.name: bases(g) for g in self.guests}
        self.conns = [GuestConn(g, dst, dport, 46000 + n) for n, (g, dst, dport) in enumerate(
            (g, dst, dport) for g in self.guests for dst, dport in ((HOST, 8080), (DNS_IP, 53), (OUTSIDE, 80)))]
        self.macs = [g.mac for g in self.guests] + ["52:54:00:99:99:99", HOST_MAC, "01:00:5e:00:00:01"]
        self.ips = [g.ip for g in self.guests] + ["0.0.0.0", HOST, "10.0.2.77", "198.51.100.1", "10.0.2.255"]
        self.frames_sent = 0
        for c in self.conns:  # open them: SYN, the host connects, SYN-ACK, ACK
            net.send(c.g.port, c.syn())
        self.settle()
        for fid in sorted(self.host.connecting):
            net.stack.tcp_connected(fid, net.now)
            self.host.tcp.add(fid)
        self.host.connecting.clear()
        self.settle()
        for c in self.conns:
            net.stack.receive_frame(c.ack_frame(), c.g.port, None, net.now)
        self.settle()
        assert all(f.conn.state == "ESTABLISHED" for f in net.stack.tcp.by_key.values())

    def settle(self) -> None:
        for raw, offload in self.net.stack.take_frames():
            for piece in wire_frames(raw, offload):
                if self.scapy_check:
                    check_frame(piece)
                else:
                    fast_check(piece)
                for c in self.conns:
                    c.learn(piece)
                self.answer_syn(piece)
        self.host.take()

    def answer_syn(self, raw: bytes) -> None:
        """A SYN toward a guest (hostfwd): that guest gets a conversation for it, and often accepts."""
        if len(raw) < 54 or raw[12:14] != b"\x08\x00" or raw[23] != 6 or raw[47] & 0x12 != 0x02:
            return
        g = next((g for g in self.guests if ip_bytes(g.ip) == raw[30:34]), None)
        if g is None or len(self.conns) >= 40:
            return
        c = GuestConn(g, ".".join(map(str, raw[26:30])), int.from_bytes(raw[34:36], "big"),
                      int.from_bytes(raw[36:38], "big"))
        c.ack = (int.from_bytes(raw[38:42], "big") + 1) & 0xFFFFFFFF
        self.conns.append(c)
        if self.rng.random() < 0.7:
            frame = tcp_frame(g.mac, HOST_MAC, g.ip, c.dst, c.sport, c.dport, c.seq, c.ack, "SA",
                              options=bytes((2, 4, 5, 0xB4)))
            c.seq += 1
            self.net.stack.receive_frame(frame, g.port, None, self.net.now)

    def step(self) -> None:
        rng, net = self.rng, self.net
        g = rng.choice(self.guests)
        port = g.port if rng.random() < 0.9 else rng.choice(self.guests).port
        kind = rng.randrange(10)
        if kind < 4:
            c = rng.choice(self.conns)
            frame = c.frame(rng)
            if kind == 3:
                frame = mutate(rng, frame, self.macs, self.ips)
            port = c.g.port
        elif kind < 8:
            frame = rng.choice(self.bases[g.port.name])
            if kind >= 5:
                frame = mutate(rng, frame, self.macs, self.ips)
        elif kind == 8:
            frame = bytes(Ether(src=g.mac, dst=rng.choice([HOST_MAC, DNS_MAC, BCAST_MAC]),
                                type=rng.choice([0x0800, 0x0806])) / Raw(rng.randbytes(rng.randint(0, 200))))
            if rng.random() < 0.5:
                frame = bytes(_fixed(frame))
        else:
            frame = rng.randbytes(rng.randint(0, 120))
        net.stack.receive_frame(frame if rng.random() < 0.8 else memoryview(frame), port, None, net.now)
        self.frames_sent += 1
        self.settle()
        if rng.random() < 0.5:
            self.host.act()
            self.settle()
        if rng.random() < 0.002:
            self.leave_and_return(rng.choice(self.guests))
        net.now += rng.choice([0.0, 0.0001, 0.01])

    def leave_and_return(self, g: Guest) -> None:
        self.net.stack.port_left(g.port, self.net.now)
        self.settle()
        g.port = type(g.port)(g.port.name, g.port.offload_ok)

    def check(self) -> None:
        check_invariants(self.net)

    def wind_down(self) -> None:
        """Every guest goes silent, the host side answers what is left: the stack must end up empty."""
        net, host = self.net, self.host
        for _ in range(3):
            for fid in sorted(host.connecting):
                net.stack.tcp_failed(fid, errno.ECONNREFUSED, net.now)
            host.connecting.clear()
            for fid, n in list(host.unwritten.items()):
                net.stack.tcp_written(fid, n, net.now)
            host.unwritten.clear()
            self.settle()
            net.advance(4000)  # SYN-ACK retries, keepalive, FIN_WAIT_2 and TIME_WAIT all end
            self.settle()
        check_invariants(net)
        assert net.stack.tcp.by_key == {} and net.stack.udp.flows_by_src == {} and net.stack.icmp.pings == {}
        assert net.stack.udp.sessions == {}
        # only the stack-wide timers are left (reassembly, DNS, TCP memory, router advertisements)
        assert all(isinstance(f, TimerFlow) for f in net.stack.flows), list(net.stack.flows)
        assert net.stack.reassembly.datagrams_held == 0
        assert all(n == 1 for n in host.closes.values()), host.closes  # each closed exactly once
        assert host.opened <= set(host.closes), host.opened - set(host.closes)  # and every one closed


def _fixed(frame: bytes) -> bytearray:
    out = bytearray(frame)
    fix_checksums(out)
    return out
