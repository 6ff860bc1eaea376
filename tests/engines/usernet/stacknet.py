"""Drive a :class:`~vmlan.engines.usernet.UserStack` in memory: scapy frames in, decoded frames and
actions out, a fake clock that only moves when a test says so. Ports are plain objects (the stack only
needs them hashable), one per guest, as the hub would pass them.

Every frame the stack emits is cross-checked with scapy (:func:`check_frame`): the IPv4 header checksum
and the UDP/TCP/ICMP checksum recomputed by scapy must equal the emitted ones, and the Ethernet source
must be the virtual host the packet comes from (52:55:0a:00:02:03 for the resolver, 52:55:0a:00:02:02 for
everything else). GSO frames (to ports that take them) are segmented first and each piece checked.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Iterable
from typing import Any

from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP, in4_chksum
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw
from scapy.utils import checksum

from vmlan.config.qemuopts import parse_qemuopts
from vmlan.config.usernet import parse_user_netdev, stack_config
from vmlan.engines.usernet import StackConfig, UserStack
from vmlan.engines.usernet import actions as A
from vmlan.wire.checksum import internet_checksum, pseudo_header_sum_v4
from vmlan.wire.gso import software_offload
from vmlan.wire.vnet import GSO_NONE, Offload

HOST = "10.0.2.2"
DNS_IP = "10.0.2.3"
GUEST = "10.0.2.15"
GUEST2 = "10.0.2.16"
HOST_MAC = "52:55:0a:00:02:02"
DNS_MAC = "52:55:0a:00:02:03"
GUEST_MAC = "52:54:00:12:34:56"
GUEST2_MAC = "52:54:00:12:34:57"
BCAST_MAC = "ff:ff:ff:ff:ff:ff"
UPSTREAM = ("127.0.0.1", 5353)
OUTSIDE = "192.0.2.1"  # TEST-NET-1: never contacted, the engine only asks the I/O layer to
UDHCPC_PRL = [1, 3, 6, 12, 15, 26, 28, 42]
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806


def build_config(options: str = "", **changes: Any) -> StackConfig:
    text = "user,id=u0,dns-server=127.0.0.1:5353" + ("," + options if options else "")
    cfg = stack_config(parse_user_netdev(parse_qemuopts(text)), resolv_conf="/nonexistent")
    return dataclasses.replace(cfg, **changes) if changes else cfg


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def ip_bytes(addr: str) -> bytes:
    return bytes(int(x) for x in addr.split("."))


def virtual_mac(ip: str) -> str:
    return "52:55:" + ":".join(f"{int(x):02x}" for x in ip.split("."))


def only(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


def kinds(actions: Iterable[tuple[Any, ...]]) -> list[str]:
    return [A.NAMES[a[0]] for a in actions]


# -- checking what the stack emits ---------------------------------------------------------------------


def check_frame(raw: bytes) -> Ether:
    """Decode one emitted (wire-sized) frame with scapy and verify it; returns the scapy packet.

    A fragment is checked as far as it can be alone (IPv4 header, source MAC); its transport checksum
    is the reassembled datagram's, which the test checks after ``defragment``."""
    assert len(raw) >= 14, raw.hex()
    pkt = Ether(raw)
    if pkt.type == ETH_P_ARP:
        arp = pkt[ARP]
        assert (arp.hwtype, arp.ptype, arp.hwlen, arp.plen) == (1, ETH_P_IP, 6, 4)
        assert arp.op in (1, 2)
        if arp.op == 1:  # the stack asks only as the gateway, to everybody
            assert (pkt.src, pkt.dst, arp.hwsrc, arp.psrc) == (HOST_MAC, BCAST_MAC, HOST_MAC, HOST)
        else:
            assert pkt.src == virtual_mac(arp.psrc) and arp.hwsrc == pkt.src
            assert pkt.dst == arp.hwdst
        return pkt
    assert pkt.type == ETH_P_IP, f"unexpected ethertype {pkt.type:#06x}"
    ip = pkt[IP]
    assert ip.version == 4 and ip.ihl >= 5
    assert ip.ttl > 0
    assert len(raw) >= 14 + ip.len
    datagram = raw[14 : 14 + ip.len]
    hlen = ip.ihl * 4
    header = bytearray(datagram[:hlen])
    header[10:12] = b"\0\0"
    assert checksum(bytes(header)) == ip.chksum, "IPv4 header checksum"
    assert pkt.src == (DNS_MAC if ip.src == DNS_IP else HOST_MAC), f"source MAC {pkt.src} for {ip.src}"
    if ip.frag or ip.flags.MF:
        return pkt
    check_l4(ip.proto, ip.src, ip.dst, datagram[hlen:])
    return pkt


def check_l4(proto: int, src: str, dst: str, segment: bytes) -> None:
    l4 = bytearray(segment)
    offset = {1: 2, 6: 16, 17: 6}.get(proto)
    assert offset is not None, f"unexpected protocol {proto}"
    assert len(l4) >= offset + 2
    stored = int.from_bytes(l4[offset : offset + 2], "big")
    l4[offset : offset + 2] = b"\0\0"
    if proto == 1:
        expect_sum = checksum(bytes(l4))
    else:
        expect_sum = in4_chksum(proto, IP(src=src, dst=dst), bytes(l4))
        if proto == 17:
            assert int.from_bytes(l4[4:6], "big") == len(l4), "UDP length"
            expect_sum = expect_sum or 0xFFFF  # RFC 768: a computed 0 is sent as all ones
    assert stored == expect_sum, f"{proto=} checksum {stored:#06x}, scapy says {expect_sum:#06x}"


def wire_frames(raw: bytes, offload: Offload | None) -> list[bytes]:
    """What a port that cannot take offloads would get: GSO frames cut, partial checksums completed."""
    if offload is None or (offload.gso_type == GSO_NONE and not offload.needs_csum):
        return [raw]
    return software_offload(raw, offload)


def l4_payload(pkt: Packet) -> bytes:
    """The bytes after the UDP/TCP/ICMP header, whatever scapy decoded them as."""
    layer = pkt[UDP] if UDP in pkt else pkt[TCP] if TCP in pkt else pkt[ICMP]
    return bytes(layer.payload)


# -- guests and the harness ------------------------------------------------------------------------------


class Port:
    """A stand-in for a hub port (the stack keys guests by it)."""

    def __init__(self, name: str, offload_ok: bool = False) -> None:
        self.name = name
        self.offload_ok = offload_ok

    def __repr__(self) -> str:
        return f"<Port {self.name}>"


@dataclasses.dataclass
class Guest:
    """One guest as a test plays it: the port it sits behind, its MAC and its address."""

    port: Port
    mac: str = GUEST_MAC
    ip: str = GUEST


class StackNet:
    def __init__(self, options: str = "", *, cfg: StackConfig | None = None, **changes: Any) -> None:
        self.cfg = cfg if cfg is not None else build_config(options, **changes)
        self.stack = UserStack(self.cfg, secret=b"k" * 16, port_tso=lambda p: bool(getattr(p, "offload_ok", False)))
        self.now = 100.0
        self.offloads: list[Offload | None] = []  # of the frames last taken

    def guest(self, name: str = "a", mac: str = GUEST_MAC, ip: str = GUEST, *, dhcp: bool = False,
              offload_ok: bool = False) -> Guest:
        """A guest on a new port. With ``dhcp`` it gets its address by DHCP, else it claims ``ip`` by
        using it (a statically configured guest: guests.py)."""
        g = Guest(Port(name, offload_ok), mac, ip)
        if dhcp:
            g.ip = self.dhcp(g.port, mac)
        return g

    def send(self, port: Port, pkt: Packet | bytes) -> None:
        raw = bytes(pkt)
        if len(raw) < 60:
            raw += b"\0" * (60 - len(raw))  # a real NIC pads to Ethernet's minimum
        self.stack.receive_frame(raw, port, None, self.now)

    def send_ip(self, g: Guest, pkt: Packet, *, dst_mac: str | None = None, src_mac: str | None = None) -> None:
        """An IP packet from guest ``g``, to the MAC of the virtual host it is addressed to."""
        if dst_mac is None:
            dst_mac = DNS_MAC if pkt[IP].dst == DNS_IP else HOST_MAC
        self.send(g.port, Ether(src=src_mac or g.mac, dst=dst_mac) / pkt)

    def raw_frames(self) -> list[tuple[bytes, Offload | None]]:
        return self.stack.take_frames()

    def frames(self) -> list[Ether]:
        """Every frame the stack emitted since the last call, checked (GSO frames cut first)."""
        out = []
        self.offloads = []
        for raw, offload in self.stack.take_frames():
            for piece in wire_frames(raw, offload):
                out.append(check_frame(piece))
                self.offloads.append(offload)
        return out

    def actions(self) -> list[tuple[Any, ...]]:
        return self.stack.take_actions()

    def advance(self, seconds: float) -> None:
        """Move the clock, running every timer that comes due on the way (in order)."""
        end = self.now + seconds
        for _ in range(1_000_000):
            deadline = self.stack.get_timer()
            if deadline is None or deadline > end:
                break
            self.now = max(self.now, deadline)
            self.stack.handle_timer(self.now)
        else:
            raise AssertionError("the timers never settle")
        self.now = end

    def dhcp(self, port: Port, mac: str, xid: int = 0x1234) -> str:
        """A full DISCOVER/OFFER/REQUEST/ACK from ``mac`` on ``port``; returns the leased address."""
        chaddr = mac_bytes(mac) + b"\0" * 10

        def message(mtype: str, extra: list[Any]) -> Packet:
            return (Ether(src=mac, dst=BCAST_MAC) / IP(src="0.0.0.0", dst="255.255.255.255")
                    / UDP(sport=68, dport=67) / BOOTP(chaddr=chaddr, xid=xid)
                    / DHCP(options=[("message-type", mtype), *extra, "end"]))

        self.send(port, message("discover", []))
        offers = [f for f in self.frames() if f.haslayer(BOOTP)]
        assert offers, "no DHCPOFFER"
        addr = offers[-1][BOOTP].yiaddr
        self.send(port, message("request", [("server_id", HOST), ("requested_addr", addr)]))
        acks = [f for f in self.frames() if f.haslayer(DHCP) and ("message-type", 5) in f[DHCP].options]
        assert acks, "no DHCPACK"
        return str(acks[-1][BOOTP].yiaddr)


# -- packets guests send -----------------------------------------------------------------------------------


def arp_request(pdst: str, *, psrc: str = GUEST, hwsrc: str = GUEST_MAC) -> Packet:
    return Ether(src=hwsrc, dst=BCAST_MAC) / ARP(op=1, hwsrc=hwsrc, psrc=psrc, hwdst="00:00:00:00:00:00", pdst=pdst)


def echo(dst: str, *, src: str = GUEST, ident: int = 0x4D2, seq: int = 7, data: bytes = b"vmlan-ping-0123456789"
         ) -> Packet:
    return IP(src=src, dst=dst) / ICMP(type=8, code=0, id=ident, seq=seq) / Raw(data)


def udp(dst: str, dport: int, data: bytes, *, sport: int = 40001, src: str = GUEST) -> Packet:
    return IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(data)


def dns_query(qid: int, name: str = "example.com", qtype: str = "A", sport: int = 33333, src: str = GUEST) -> Packet:
    return IP(src=src, dst=DNS_IP) / UDP(sport=sport, dport=53) / DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype=qtype))


def dns_answer(qid: int, name: str = "example.com", addr: str = "192.0.2.80") -> bytes:
    return bytes(DNS(id=qid, qr=1, rd=1, ra=1, qd=DNSQR(qname=name, qtype="A"),
                     an=DNSRR(rrname=name, type="A", ttl=300, rdata=addr)))


def dns_tcp(qid: int, name: str = "example.com") -> bytes:
    msg = bytes(DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype="A")))
    return len(msg).to_bytes(2, "big") + msg


def reader_of(data: bytes) -> Callable[[memoryview], int]:
    """A ``sock.recv_into`` stand-in that hands out ``data`` (then 0: EOF)."""
    source = memoryview(data)
    pos = 0

    def read(view: memoryview) -> int:
        nonlocal pos
        n = min(len(view), len(source) - pos)
        view[:n] = source[pos : pos + n]
        pos += n
        return n

    return read


class GuestTcp:
    """The guest's end of one TCP connection, written by hand with scapy."""

    def __init__(self, net: StackNet, g: Guest, dst: str, dport: int, *, sport: int = 45000, isn: int = 1000,
                 mss: int | None = 1460, wscale: int | None = 7, window: int = 64240) -> None:
        self.net = net
        self.g = g
        self.dst, self.dport, self.sport, self.src, self.src_mac = dst, dport, sport, g.ip, g.mac
        self.isn = isn
        self.mss, self.wscale, self.window = mss, wscale, window
        self.seq = isn  # next sequence number to send
        self.rcv_nxt = 0  # next byte expected from the stack
        self.dst_mac = DNS_MAC if dst == DNS_IP else HOST_MAC
        self.received: dict[int, bytes] = {}

    def send(self, flags: str, payload: bytes = b"", *, seq: int | None = None, ack: int | None = None,
             window: int | None = None, options: list[Any] | None = None) -> None:
        tcp = TCP(sport=self.sport, dport=self.dport, flags=flags,
                  seq=(self.seq if seq is None else seq) & 0xFFFFFFFF,
                  ack=(self.rcv_nxt if ack is None else ack) & 0xFFFFFFFF,
                  window=self.window if window is None else window, options=options or [])
        pkt = IP(src=self.src, dst=self.dst, flags="DF") / tcp
        if payload:
            pkt = pkt / Raw(payload)
        self.net.send(self.g.port, Ether(src=self.src_mac, dst=self.dst_mac) / pkt)
        if seq is None:
            self.seq += len(payload) + (1 if "S" in flags else 0) + (1 if "F" in flags else 0)

    def syn(self) -> None:
        options: list[Any] = []
        if self.mss is not None:
            options.append(("MSS", self.mss))
        if self.wscale is not None:
            options.append(("WScale", self.wscale))
        self.send("S", ack=0, options=options)

    def mine(self, frames: Iterable[Ether]) -> list[TCP]:
        """The segments in ``frames`` that belong to this connection."""
        out = []
        for frame in frames:
            if (TCP in frame and frame[IP].dst == self.src and frame[TCP].dport == self.sport
                    and frame[IP].src == self.dst and frame[TCP].sport == self.dport):
                assert frame.dst == self.src_mac
                out.append(frame[TCP])
        return out

    def take_synack(self, frames: Iterable[Ether]) -> TCP:
        synack = only(self.mine(frames))
        assert synack.flags == "SA"
        assert synack.ack == (self.isn + 1) & 0xFFFFFFFF
        self.rcv_nxt = (synack.seq + 1) & 0xFFFFFFFF
        return synack

    def absorb(self, segments: Iterable[TCP]) -> None:
        for seg in segments:
            data = bytes(seg.payload)
            if data:
                self.received[seg.seq] = data

    def reassemble(self, base: int) -> bytes:
        """The contiguous bytes received from sequence number ``base``; moves rcv_nxt past them."""
        out = bytearray()
        pos = base
        while pos in self.received:
            chunk = self.received[pos]
            out += chunk
            pos = (pos + len(chunk)) & 0xFFFFFFFF
        self.rcv_nxt = pos
        return bytes(out)


def open_tcp(net: StackNet, g: Guest, dport: int = 8080, **kw: Any) -> tuple[GuestTcp, int]:
    """Guest connects to the host address: SYN, host connect() succeeds, SYN-ACK, ACK. Returns the flow id."""
    t = GuestTcp(net, g, HOST, dport, **kw)
    t.syn()
    assert net.frames() == []
    connect = only(net.actions())
    assert connect[0] == A.TCP_CONNECT
    fid: int = connect[1]
    net.now += 0.001
    net.stack.tcp_connected(fid, net.now)
    t.take_synack(net.frames())
    t.send("A")
    assert net.frames() == [] and net.actions() == []
    return t, fid


def mss_option(seg: TCP) -> int | None:
    return dict((k, v) for k, v in seg.options if isinstance(k, str)).get("MSS")


# -- fast frames (no scapy) for tests that send thousands ------------------------------------------------

_ETH_IP = struct.Struct("!6s6sHBBHHHBBH4s4s")
_TCP_HDR = struct.Struct("!HHIIBBHHH")
TCP_FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20}


def tcp_frame(src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int, seq: int, ack: int,
              flags: str, payload: bytes = b"", window: int = 0xFFFF, options: bytes = b"") -> bytes:
    """A TCP segment in Ethernet + IPv4 with valid checksums, built with struct (scapy takes ~0.3 ms)."""
    s, d = ip_bytes(src), ip_bytes(dst)
    bits = sum(TCP_FLAGS[c] for c in flags)
    hlen = 20 + len(options)
    seg = bytearray(_TCP_HDR.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (hlen // 4) << 4, bits, window,
                                  0, 0))
    seg += options + payload
    seg[16:18] = internet_checksum(seg, pseudo_header_sum_v4(s, d, 6, len(seg))).to_bytes(2, "big")
    ip = bytearray(_ETH_IP.pack(mac_bytes(dst_mac), mac_bytes(src_mac), ETH_P_IP, 0x45, 0, 20 + len(seg), 1, 0x4000,
                                64, 6, 0, s, d))
    ip[24:26] = internet_checksum(ip[14:34]).to_bytes(2, "big")
    return bytes(ip + seg)


def tcp_fields(frame: bytes) -> tuple[int, int, int, int, int, int]:
    """(sport, dport, seq, ack, flags, window) of an IPv4/TCP frame without options in the IP header."""
    sport, dport, seq, ack, _off, flags, window, _c, _u = _TCP_HDR.unpack_from(frame, 34)
    return sport, dport, seq, ack, flags, window


def tcp_payload(frame: bytes) -> bytes:
    total = int.from_bytes(frame[16:18], "big")
    off = (frame[34 + 12] >> 4) * 4
    return frame[34 + off : 14 + total]
