"""The user-mode network stack (QEMU's ``-netdev user``, libslirp's model) as a sans-IO engine.

The stack sits on a hub like any port. It plays the virtual hosts of the guest's network (the gateway
``host``, the resolver ``dns``), answers ARP for them, serves DHCP and DNS, answers pings to them, and
translates the guests' TCP, UDP and ICMP echo toward the host into host socket operations. Several
guests share one stack: each gets its own lease and its own flows.

Like every engine here it never touches a socket or a clock. Frames come in through
``receive_frame(frame, now)``; frames for the hub come out of ``frames_to_send()``; socket work comes out
of ``next_action()`` as small action objects, and socket results go back in through the ``udp_*``,
``tcp_*``, ``dns_*`` and ``ping_*`` methods. ``get_timer()``/``handle_timer(now)`` drive every timeout
(flow expiry, DNS retries, TCP retransmission), kept in one heap so that a thousand connections do not
cost a thousand comparisons per event.

Addressing follows libslirp: the virtual hosts have MAC 52:55:<IPv4 bytes>; traffic to the host
address reaches the host's loopback (127.0.0.1) unless ``host_loopback`` is off; with ``restrict`` the
guests reach nothing outside but the port forwards.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import struct
from collections import deque
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from vmlan.engines.dhcp import DhcpConfig, DhcpServer, Lease
from vmlan.engines.dns import DnsConfig, DnsForwarder, Reply, SendUpstream, TcpDnsFramer
from vmlan.engines.tcp import (
    Closed,
    DataReceived,
    EndOfStream,
    Reset,
    TcpConnection,
    TcpParams,
)
from vmlan.wire.checksum import internet_checksum, pseudo_header_sum_v4
from vmlan.wire.errors import WireError
from vmlan.wire.ethernet import BROADCAST, ETH_P_ARP, ETH_P_IP
from vmlan.wire.ipv4 import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4Header

LOOPBACK = "127.0.0.1"

_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_IP = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_ICMP_ECHO = struct.Struct("!BBHHH")
_TCP_PORTS_FLAGS = struct.Struct("!HHIIBB")


def l4_checksum(src: bytes, dst: bytes, proto: int, segment: bytes | bytearray | memoryview) -> int:
    """TCP/UDP checksum over the IPv4 pseudo-header and ``segment`` (its checksum field zero or not:
    a received segment sums to 0 when intact)."""
    return internet_checksum(segment, pseudo_header_sum_v4(src, dst, proto, len(segment)))


FlowKey = tuple[bytes, int, bytes, int]  # (guest address, guest port, far address, far port)


def virtual_mac(ip: bytes) -> bytes:
    """libslirp's MAC for a virtual host: 52:55 followed by its IPv4 address."""
    return b"\x52\x55" + ip


@dataclass(frozen=True, slots=True)
class HostForward:
    """``hostfwd``: the I/O layer listens on (host_addr, host_port) and hands clients to the stack."""

    proto: str  # "tcp" or "udp"
    host_addr: str
    host_port: int
    guest_addr: bytes  # resolved: the first DHCP address when the rule named none
    guest_port: int


@dataclass(frozen=True, slots=True)
class GuestForward:
    """``guestfwd``: guest connections to (addr, port) go to a host address (or command) instead."""

    addr: bytes
    port: int
    target: tuple[str, int] | str  # (host, port) or a shell command


_DEFAULT_NET = IPv4Network("10.0.2.0/24")
_DEFAULT_HOST = IPv4Address("10.0.2.2")
_DEFAULT_DNS = IPv4Address("10.0.2.3")


@dataclass(frozen=True)
class StackConfig:
    net: IPv4Network = _DEFAULT_NET
    host: IPv4Address = _DEFAULT_HOST
    dns: IPv4Address = _DEFAULT_DNS
    restrict: bool = False
    host_loopback: bool = True
    mtu: int = 1500
    dhcp: DhcpConfig | None = None
    dns_config: DnsConfig | None = None
    hostfwd: tuple[HostForward, ...] = ()
    guestfwd: tuple[GuestForward, ...] = ()
    udp_timeout: float = 240.0  # libslirp's SO_EXPIRE
    udp_dns_timeout: float = 10.0  # flows to port 53 die fast, as in libslirp
    icmp_timeout: float = 30.0
    max_udp_flows_per_guest: int = 256
    max_tcp_per_guest: int = 256  # each is a host socket: the fd limit is the real bound
    max_pings_per_guest: int = 32
    max_guest_addresses: int = 1024
    max_udp_fwd_sessions: int = 256  # per UDP hostfwd rule
    tcp: TcpParams = field(default_factory=TcpParams)


# -- actions: what the I/O layer must do ----------------------------------------------------------------


class UdpFlow:
    """One guest UDP source (address, port): one host socket, any number of destinations (libslirp's
    endpoint-independent mapping, which keeps STUN and games working)."""

    __slots__ = ("expires", "guest_ip", "guest_port", "handle", "last_dst", "timeout")

    def __init__(self, guest_ip: bytes, guest_port: int, timeout: float, now: float) -> None:
        self.guest_ip = guest_ip
        self.guest_port = guest_port
        self.timeout = timeout
        self.expires = now + timeout
        self.last_dst: tuple[str, int] = ("", 0)
        self.handle: object = None  # the I/O layer's socket


class TcpRelay:
    """One guest TCP connection and what is on the far side of it."""

    __slots__ = (
        "conn",
        "dns_eof",
        "dns_framer",
        "dns_pending",
        "guest_key",
        "handle",
        "host_target",
        "hostfwd",
        "read_paused",
        "scheduled",
    )

    def __init__(self, conn: TcpConnection, host_target: tuple[str, int] | str | None, guest_key: FlowKey) -> None:
        self.conn = conn
        self.host_target = host_target  # None: served by the stack itself (DNS over TCP)
        self.guest_key = guest_key
        self.handle: object = None
        self.dns_framer: TcpDnsFramer | None = None
        self.dns_pending = 0  # DNS-over-TCP queries not answered yet
        self.dns_eof = False  # the guest half-closed: FIN once they are answered
        self.read_paused = False
        self.scheduled = float("inf")  # the deadline this relay has in the stack's timer heap
        self.hostfwd = False


class UdpFwdSession:
    """A host client of a UDP hostfwd rule, as the guest sees it: (guest, port, src, sport)."""

    __slots__ = ("client", "expires", "key", "rule")

    def __init__(self, rule: HostForward, client: tuple[str, int], key: FlowKey, expires: float) -> None:
        self.rule = rule
        self.client = client
        self.key = key
        self.expires = expires


class PingFlow:
    __slots__ = ("dst", "expires", "guest_ip", "handle", "ident")

    def __init__(self, guest_ip: bytes, ident: int, dst: str, now: float, timeout: float) -> None:
        self.guest_ip = guest_ip
        self.ident = ident
        self.dst = dst
        self.expires = now + timeout
        self.handle: object = None


@dataclass(slots=True)
class UdpSend:
    flow: UdpFlow
    dst: tuple[str, int]
    data: bytes


@dataclass(slots=True)
class UdpClose:
    flow: UdpFlow


@dataclass(slots=True)
class TcpConnect:
    relay: TcpRelay
    target: tuple[str, int] | str  # (host, port), or a command for guestfwd cmd:


@dataclass(slots=True)
class TcpWrite:
    relay: TcpRelay
    data: bytes


@dataclass(slots=True)
class TcpShutdown:
    relay: TcpRelay


@dataclass(slots=True)
class TcpClose:
    relay: TcpRelay


@dataclass(slots=True)
class TcpResume:
    """The guest acknowledged data: the host socket may be read again."""

    relay: TcpRelay


@dataclass(slots=True)
class UdpFwdReply:
    """The guest answered a UDP hostfwd client: send from the rule's listening socket."""

    rule: HostForward
    client: tuple[str, int]
    data: bytes


@dataclass(slots=True)
class DnsSend:
    upstream: tuple[str, int]
    data: bytes


@dataclass(slots=True)
class PingSend:
    flow: PingFlow
    seq: int
    data: bytes


@dataclass(slots=True)
class PingClose:
    flow: PingFlow


Action = (
    UdpSend | UdpClose | UdpFwdReply | TcpConnect | TcpWrite | TcpShutdown | TcpClose | TcpResume | DnsSend
    | PingSend | PingClose
)


class StackCounters:
    __slots__ = (
        "arp_replies",
        "bad_ipv4",
        "bad_source",
        "dropped_restrict",
        "fragments",
        "icmp_local_replies",
        "icmp_sent",
        "not_for_us",
        "ping_dropped_cap",
        "tcp_flows",
        "tcp_refused_cap",
        "udp_dropped_cap",
        "udp_flows",
    )

    def __init__(self) -> None:
        self.arp_replies = 0
        self.bad_ipv4 = 0  # malformed or bad checksum: dropped
        self.bad_source = 0  # source address outside the guests' network: dropped
        self.dropped_restrict = 0
        self.fragments = 0
        self.icmp_local_replies = 0
        self.icmp_sent = 0
        self.ping_dropped_cap = 0
        self.not_for_us = 0
        self.tcp_flows = 0
        self.tcp_refused_cap = 0
        self.udp_dropped_cap = 0
        self.udp_flows = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class UserStack:
    def __init__(self, cfg: StackConfig, leases: list[Lease] | None = None, isn_seed: int = 0) -> None:
        self.cfg = cfg
        self.host_ip = cfg.host.packed
        self.dns_ip = cfg.dns.packed
        self.net_addr = int(cfg.net.network_address)
        self.net_mask = int(cfg.net.netmask)
        self.bcast_ip = cfg.net.broadcast_address.packed
        self.host_mac = virtual_mac(self.host_ip)
        self.dns_mac = virtual_mac(self.dns_ip)
        self.dhcp = DhcpServer(cfg.dhcp, leases or ()) if cfg.dhcp is not None else None
        self.resolver = DnsForwarder(cfg.dns_config) if cfg.dns_config is not None and not cfg.restrict else None
        self.counters = StackCounters()
        self.guest_macs: dict[bytes, bytes] = {}  # guest IPv4 -> MAC, learned from what they send
        self.udp_flows: dict[tuple[bytes, int], UdpFlow] = {}
        self.tcp: dict[FlowKey, TcpRelay] = {}
        self.pings: dict[tuple[bytes, int], PingFlow] = {}
        self.udp_fwd: dict[FlowKey, UdpFwdSession] = {}
        self._guestfwd = {(g.addr, g.port): g for g in cfg.guestfwd}
        self._frames: list[bytes] = []
        self._actions: deque[Action] = deque()
        self._timers: list[tuple[float, int, object]] = []
        self._timer_seq = itertools.count()
        self._ip_ident = 0
        self._resolver_scheduled = float("inf")
        self._isn = isn_seed & 0xFFFFFFFF
        self._udp_count: dict[bytes, int] = {}
        self._tcp_count: dict[bytes, int] = {}
        self._ping_count: dict[bytes, int] = {}

    # -- outputs -----------------------------------------------------------------------------------------
    def frames_to_send(self) -> list[bytes]:
        frames, self._frames = self._frames, []
        return frames

    def next_action(self) -> Action | None:
        return self._actions.popleft() if self._actions else None

    # -- frames from the hub -----------------------------------------------------------------------------
    def receive_frame(self, frame: bytes | memoryview, now: float) -> None:
        if len(frame) < 14:
            return
        dst = bytes(frame[0:6])
        if dst != BROADCAST and dst[0:2] != b"\x52\x55":
            self.counters.not_for_us += 1  # another guest's unicast, seen because hubs flood
            return
        ethertype = (frame[12] << 8) | frame[13]
        if ethertype == ETH_P_IP:
            self._ipv4(frame, bytes(frame[6:12]), now)
        elif ethertype == ETH_P_ARP:
            self._arp(frame)

    def _arp(self, frame: bytes | memoryview) -> None:
        if len(frame) < 14 + 28:
            return
        htype, ptype, hlen, plen, op, sha, spa, _tha, tpa = _ARP.unpack_from(frame, 14)
        if htype != 1 or ptype != ETH_P_IP or hlen != 6 or plen != 4:
            return
        if self._in_net(spa) and spa not in (self.host_ip, self.dns_ip, self.bcast_ip) and spa != b"\0\0\0\0":
            self._learn_mac(spa, sha)
        if op != 1 or not self._is_virtual_host(tpa):
            return
        mac = virtual_mac(tpa)
        reply = _ARP.pack(1, ETH_P_IP, 6, 4, 2, mac, tpa, sha, spa)
        self._frames.append(_ETH.pack(sha, mac, ETH_P_ARP) + reply + b"\0" * 18)
        self.counters.arp_replies += 1

    def _learn_mac(self, ip: bytes, mac: bytes) -> None:
        """Bounded: a guest spraying source addresses (net may be as large as /4) must not grow it."""
        macs = self.guest_macs
        if macs.get(ip) != mac:
            if len(macs) >= self.cfg.max_guest_addresses and ip not in macs:
                del macs[next(iter(macs))]  # the oldest learned
            macs[ip] = mac

    def _is_virtual_host(self, ip: bytes) -> bool:
        return ip == self.host_ip or ip == self.dns_ip or any(g.addr == ip for g in self.cfg.guestfwd)

    def _in_net(self, ip: bytes) -> bool:
        return (int.from_bytes(ip, "big") & self.net_mask) == self.net_addr

    def _ipv4(self, frame: bytes | memoryview, src_mac: bytes, now: float) -> None:
        try:
            ip, start, end = Ipv4Header.parse(frame, 14)
        except WireError:
            self.counters.bad_ipv4 += 1
            return
        if ip.is_fragment:
            self.counters.fragments += 1  # libslirp reassembles; guests at MTU <= link MTU never fragment TCP
            return
        src = ip.src
        if not self._in_net(src) or src in (self.host_ip, self.dns_ip, self.bcast_ip):
            if not (src == b"\0\0\0\0" and ip.proto == IPPROTO_UDP):  # DHCP clients have no address yet
                self.counters.bad_source += 1  # spoofed: would dodge the per-guest caps
                return
        else:
            self._learn_mac(src, src_mac)
        payload = memoryview(frame)[start:end]
        if ip.proto == IPPROTO_TCP:
            self._tcp_input(ip, payload, now)
        elif ip.proto == IPPROTO_UDP:
            self._udp_input(ip, payload, src_mac, now)
        elif ip.proto == IPPROTO_ICMP:
            self._icmp_input(ip, payload, now)

    # -- building frames toward guests -------------------------------------------------------------------
    def _emit_ip(
        self, src: bytes, dst: bytes, proto: int, payload: bytes | bytearray | memoryview, mac: bytes | None = None
    ) -> None:
        if mac is None:
            mac = BROADCAST if dst == b"\xff\xff\xff\xff" or dst == self.bcast_ip else self.guest_macs.get(dst)
        if mac is None:
            self._arp_request(dst)
            return
        self._ip_ident = (self._ip_ident + 1) & 0xFFFF
        eth = _ETH.pack(mac, self.dns_mac if src == self.dns_ip else self.host_mac, ETH_P_IP)
        if 20 + len(payload) <= self.cfg.mtu:
            header = bytearray(_IP.pack(0x45, 0, 20 + len(payload), self._ip_ident, 0, 64, proto, 0, src, dst))
            struct.pack_into("!H", header, 10, internet_checksum(header))
            self._frames.append(eth + header + payload)
            return
        # Larger than the guest's MTU (a big UDP datagram or echo reply): fragment, as libslirp's ip_output.
        step = (self.cfg.mtu - 20) & ~7
        view = memoryview(payload)
        for offset in range(0, len(payload), step):
            chunk = view[offset : offset + step]
            more = 0x2000 if offset + step < len(payload) else 0
            header = bytearray(
                _IP.pack(0x45, 0, 20 + len(chunk), self._ip_ident, more | (offset >> 3), 64, proto, 0, src, dst)
            )
            struct.pack_into("!H", header, 10, internet_checksum(header))
            self._frames.append(eth + header + chunk)

    def _arp_request(self, ip: bytes) -> None:
        body = _ARP.pack(1, ETH_P_IP, 6, 4, 1, self.host_mac, self.host_ip, b"\0" * 6, ip)
        self._frames.append(_ETH.pack(BROADCAST, self.host_mac, ETH_P_ARP) + body + b"\0" * 18)

    def _emit_udp(
        self, src: bytes, sport: int, dst: bytes, dport: int, data: bytes | memoryview, mac: bytes | None = None
    ) -> None:
        datagram = bytearray(_UDP.pack(sport, dport, 8 + len(data), 0)) + data
        struct.pack_into("!H", datagram, 6, l4_checksum(src, dst, IPPROTO_UDP, datagram) or 0xFFFF)
        self._emit_ip(src, dst, IPPROTO_UDP, datagram, mac)

    # -- address translation -----------------------------------------------------------------------------
    def _host_target(self, dst: bytes) -> str | None:
        """Where a guest packet to ``dst`` goes on the host, or None if nowhere."""
        if dst == self.host_ip:
            return LOOPBACK if self.cfg.host_loopback else None
        if self._in_net(dst) or dst[0] >= 224 or dst[0] in (0, 127):
            return None  # 0/8 would reach the host's loopback too (Linux delivers 0.0.0.0 locally)
        return socket.inet_ntoa(dst)

    def _guest_source(self, host: str) -> bytes:
        """The address a host peer appears from, inside the guest network."""
        if host.startswith("127."):
            return self.host_ip
        return socket.inet_aton(host)

    # -- UDP -----------------------------------------------------------------------------------------------
    def _udp_input(self, ip: Ipv4Header, seg: memoryview, src_mac: bytes, now: float) -> None:
        if len(seg) < 8:
            self.counters.bad_ipv4 += 1
            return
        sport, dport, length, csum = _UDP.unpack_from(seg)
        if length < 8 or length > len(seg):
            self.counters.bad_ipv4 += 1
            return
        data = seg[8:length]
        if csum and l4_checksum(ip.src, ip.dst, IPPROTO_UDP, seg[:length]) not in (0, 0xFFFF):
            self.counters.bad_ipv4 += 1
            return
        if dport == 67 and (ip.dst in (b"\xff\xff\xff\xff", self.host_ip, self.bcast_ip)):
            self._dhcp(bytes(data), src_mac, now)
            return
        session = self.udp_fwd.get((ip.src, sport, ip.dst, dport)) if self.udp_fwd else None
        if session is not None:
            session.expires = now + self.cfg.udp_timeout
            self._actions.append(UdpFwdReply(session.rule, session.client, bytes(data)))
            return
        if ip.dst == self.dns_ip and dport == 53:
            if self.resolver is not None:
                client = (ip.src, sport)
                self._dns_actions(self.resolver.query(bytes(data), client, now), now)
            else:
                self.counters.dropped_restrict += 1
            return
        if self.cfg.restrict:
            self.counters.dropped_restrict += 1
            return
        target = self._host_target(ip.dst)
        if target is None:
            return
        key = (ip.src, sport)
        flow = self.udp_flows.get(key)
        if flow is None:
            if self._udp_count.get(ip.src, 0) >= self.cfg.max_udp_flows_per_guest:
                self.counters.udp_dropped_cap += 1
                return
            timeout = self.cfg.udp_dns_timeout if dport == 53 else self.cfg.udp_timeout
            flow = UdpFlow(ip.src, sport, timeout, now)
            self.udp_flows[key] = flow
            self._udp_count[ip.src] = self._udp_count.get(ip.src, 0) + 1
            self.counters.udp_flows += 1
            self._schedule(flow.expires, flow)
        flow.expires = now + flow.timeout
        flow.last_dst = (target, dport)
        self._actions.append(UdpSend(flow, (target, dport), bytes(data)))

    def udp_received(self, flow: UdpFlow, data: bytes | memoryview, src: tuple[str, int], now: float) -> None:
        """A datagram arrived on a flow's host socket."""
        if self.udp_flows.get((flow.guest_ip, flow.guest_port)) is not flow:
            return
        flow.expires = now + flow.timeout
        self._emit_udp(self._guest_source(src[0]), src[1], flow.guest_ip, flow.guest_port, data)

    def _dhcp(self, data: bytes, src_mac: bytes, now: float) -> None:
        if self.dhcp is None:
            return
        reply = self.dhcp.handle(data, src_mac, now)
        if reply is None:
            return
        if reply.dst_ip != b"\xff\xff\xff\xff":
            self._learn_mac(reply.dst_ip, reply.dst_mac)
        self._emit_udp(self.host_ip, 67, reply.dst_ip, 68, reply.payload, reply.dst_mac)

    # -- DNS -----------------------------------------------------------------------------------------------
    def _dns_actions(self, actions: list[SendUpstream | Reply], now: float) -> None:
        for action in actions:
            if isinstance(action, SendUpstream):
                self._actions.append(DnsSend(action.upstream, action.payload))
                continue
            client = action.client
            if isinstance(client, TcpRelay):
                client.dns_pending = max(0, client.dns_pending - 1)
                if client.dns_framer is not None and self.tcp.get(client.guest_key) is client:
                    message = TcpDnsFramer.frame(action.payload)
                    if client.conn.send(message, now) < len(message):
                        client.conn.abort(now)  # a guest that never reads: a cut message would corrupt the stream
                        self._flush_tcp(client, now)
                        continue
                    if client.dns_eof and client.dns_pending == 0:
                        client.conn.shutdown(now)
                    self._flush_tcp(client, now)
            elif isinstance(client, tuple):
                guest_ip, guest_port = client
                self._emit_udp(self.dns_ip, 53, guest_ip, guest_port, action.payload)
        if self.resolver is not None:
            deadline = self.resolver.get_timer()
            if deadline is not None and deadline < self._resolver_scheduled:
                self._resolver_scheduled = deadline
                self._schedule(deadline, self.resolver)

    def dns_response(self, upstream: tuple[str, int], data: bytes, now: float) -> None:
        if self.resolver is not None:
            self._dns_actions(self.resolver.upstream_response(data, upstream, now), now)

    # -- ICMP ----------------------------------------------------------------------------------------------
    def _icmp_input(self, ip: Ipv4Header, msg: memoryview, now: float) -> None:
        if len(msg) < 8 or internet_checksum(msg) != 0:
            self.counters.bad_ipv4 += 1
            return
        kind, _code, _csum, ident, seq = _ICMP_ECHO.unpack_from(msg)
        if kind != 8:
            return
        if ip.dst in (self.host_ip, self.dns_ip) or self._is_virtual_host(ip.dst):
            reply = bytearray(msg)
            reply[0] = 0
            reply[2:4] = b"\0\0"
            struct.pack_into("!H", reply, 2, internet_checksum(reply))
            self._emit_ip(ip.dst, ip.src, IPPROTO_ICMP, reply)
            self.counters.icmp_local_replies += 1
            return
        if self.cfg.restrict:
            self.counters.dropped_restrict += 1
            return
        target = self._host_target(ip.dst)
        if target is None:
            return
        key = (ip.src, ident)
        flow = self.pings.get(key)
        if flow is None and self._ping_count.get(ip.src, 0) >= self.cfg.max_pings_per_guest:
            self.counters.ping_dropped_cap += 1
            return
        if flow is None or flow.dst != target:
            if flow is None:
                self._ping_count[ip.src] = self._ping_count.get(ip.src, 0) + 1
            else:
                self._actions.append(PingClose(flow))  # same id, new destination: a new socket
            flow = PingFlow(ip.src, ident, target, now, self.cfg.icmp_timeout)
            self.pings[key] = flow
            self._schedule(flow.expires, flow)
        flow.expires = now + self.cfg.icmp_timeout
        self.counters.icmp_sent += 1
        self._actions.append(PingSend(flow, seq, bytes(msg[8:])))

    def ping_reply(self, flow: PingFlow, seq: int, data: bytes, now: float) -> None:
        if self.pings.get((flow.guest_ip, flow.ident)) is not flow:
            return
        reply = bytearray(_ICMP_ECHO.pack(0, 0, 0, flow.ident, seq)) + data
        struct.pack_into("!H", reply, 2, internet_checksum(reply))
        self._emit_ip(self._guest_source(flow.dst), flow.guest_ip, IPPROTO_ICMP, reply)

    # -- TCP -----------------------------------------------------------------------------------------------
    def _next_isn(self) -> int:
        self._isn = (self._isn + 0x9E3779B1) & 0xFFFFFFFF
        return self._isn

    def _tcp_input(self, ip: Ipv4Header, seg: memoryview, now: float) -> None:
        if len(seg) < 20:
            self.counters.bad_ipv4 += 1
            return
        sport, dport, _seq, _ack, _off, flags = _TCP_PORTS_FLAGS.unpack_from(seg)
        key = (ip.src, sport, ip.dst, dport)
        relay = self.tcp.get(key)
        if relay is not None:
            relay.conn.receive_segment(seg, now)
            self._flush_tcp(relay, now)
            if flags & 0x17 == 0x02 and self.tcp.get(key) is not relay:
                self._tcp_input(ip, seg, now)  # a new SYN ended the old connection (TIME_WAIT): open it now
            return
        if flags & 0x04:  # RST for nothing we know
            return
        if flags & 0x12 != 0x02:  # not a bare SYN: answer with RST (RFC 9293 §3.10.7.1)
            self._tcp_reset_for(ip, seg)
            return
        local = (ip.dst, dport)
        remote = (ip.src, sport)
        target: tuple[str, int] | str | None
        fwd = self._guestfwd.get((ip.dst, dport))
        if fwd is not None:
            target = fwd.target
        elif ip.dst == self.dns_ip and dport == 53 and self.resolver is not None:
            target = None  # DNS over TCP, served here
        elif self.cfg.restrict or ip.dst == self.dns_ip:
            self.counters.dropped_restrict += self.cfg.restrict
            self._tcp_reset_for(ip, seg)
            return
        else:
            host = self._host_target(ip.dst)
            if host is None:
                self._tcp_reset_for(ip, seg)
                return
            target = (host, dport)
        if self._tcp_count.get(ip.src, 0) >= self.cfg.max_tcp_per_guest:
            self.counters.tcp_refused_cap += 1
            self._tcp_reset_for(ip, seg)
            return
        try:
            conn = TcpConnection.from_syn(local, remote, seg, self.cfg.tcp, now, self._next_isn())
        except WireError:
            self.counters.bad_ipv4 += 1  # bad checksum or a malformed SYN: dropped, as any bad segment
            return
        relay = TcpRelay(conn, target, key)
        self.tcp[key] = relay
        self._tcp_count[ip.src] = self._tcp_count.get(ip.src, 0) + 1
        self.counters.tcp_flows += 1
        if target is None:
            relay.dns_framer = TcpDnsFramer()
            conn.accept(now)
        else:
            self._actions.append(TcpConnect(relay, target))
        self._flush_tcp(relay, now)

    def _tcp_reset_for(self, ip: Ipv4Header, seg: memoryview) -> None:
        """RST for a segment that belongs to no connection (or that we refuse)."""
        sport, dport, seq, ack, off, flags = _TCP_PORTS_FLAGS.unpack_from(seg)
        hlen = (off >> 4) * 4
        plen = max(0, len(seg) - hlen)
        if flags & 0x10:
            rseq, rack, rflags = ack, 0, 0x04
        else:
            rseq = 0
            rack = (seq + plen + (1 if flags & 0x02 else 0) + (1 if flags & 0x01 else 0)) & 0xFFFFFFFF
            rflags = 0x14
        header = bytearray(struct.pack("!HHIIBBHHH", dport, sport, rseq, rack, 5 << 4, rflags, 0, 0, 0))
        struct.pack_into("!H", header, 16, l4_checksum(ip.dst, ip.src, IPPROTO_TCP, header))
        self._emit_ip(ip.dst, ip.src, IPPROTO_TCP, header)

    def _flush_tcp(self, relay: TcpRelay, now: float) -> None:
        """Send what the connection wants to send, act on its events, re-arm its timer."""
        conn = relay.conn
        for segment in conn.segments_to_send(now):
            self._emit_ip(conn.local[0], conn.remote[0], IPPROTO_TCP, segment)
        while (event := conn.next_event()) is not None:
            if isinstance(event, DataReceived):
                if relay.dns_framer is not None:
                    conn.consume(len(event.data))
                    for message in relay.dns_framer.feed(event.data):
                        if self.resolver is not None:
                            actions = self.resolver.query(message, relay, now, tcp=True)
                            if actions:  # dropped queries (duplicates, malformed) get no answer to wait for
                                relay.dns_pending += 1
                            self._dns_actions(actions, now)
                else:
                    self._actions.append(TcpWrite(relay, event.data))
            elif isinstance(event, EndOfStream):
                if relay.dns_framer is not None:
                    relay.dns_eof = True
                    if relay.dns_pending == 0:
                        conn.shutdown(now)
                else:
                    self._actions.append(TcpShutdown(relay))
            elif isinstance(event, Reset | Closed):
                self._tcp_forget(relay)
                break
        if relay.read_paused and conn.send_space() > 0 and self.tcp.get(relay.guest_key) is relay:
            relay.read_paused = False
            self._actions.append(TcpResume(relay))
        for segment in conn.segments_to_send(now):
            self._emit_ip(conn.local[0], conn.remote[0], IPPROTO_TCP, segment)
        deadline = conn.get_timer()
        if deadline is not None and deadline < relay.scheduled and self.tcp.get(relay.guest_key) is relay:
            relay.scheduled = deadline  # later deadlines are found when this entry comes due
            self._schedule(deadline, relay)

    def _tcp_forget(self, relay: TcpRelay) -> None:
        if self.tcp.get(relay.guest_key) is relay:
            del self.tcp[relay.guest_key]
            guest = relay.conn.remote[0]
            self._tcp_count[guest] = max(0, self._tcp_count.get(guest, 1) - 1)
            if relay.host_target is not None or relay.hostfwd:
                self._actions.append(TcpClose(relay))

    # host-side results for TCP
    def tcp_connected(self, relay: TcpRelay, now: float) -> None:
        if self.tcp.get(relay.guest_key) is relay and not relay.hostfwd:
            relay.conn.accept(now)
            self._flush_tcp(relay, now)

    def tcp_failed(self, relay: TcpRelay, refused: bool, now: float) -> None:
        """The host connect() failed: RST to the guest (libslirp sends RST for refused, ICMP otherwise;
        a RST is what makes a guest's connect() fail fast in both cases)."""
        if self.tcp.get(relay.guest_key) is relay:
            if relay.hostfwd:
                relay.conn.abort(now)
            else:
                relay.conn.refuse(now)
            self._flush_tcp(relay, now)
            self._tcp_forget(relay)

    def tcp_data(self, relay: TcpRelay, data: bytes | memoryview, now: float) -> int:
        """Host bytes for the guest; returns how many were taken. 0 means: stop reading until TcpResume."""
        if self.tcp.get(relay.guest_key) is not relay:
            return len(data)
        taken = relay.conn.send(data, now)
        if taken < len(data) or relay.conn.send_space() == 0:
            relay.read_paused = True
        self._flush_tcp(relay, now)
        return taken

    def tcp_send_space(self, relay: TcpRelay) -> int:
        return relay.conn.send_space() if self.tcp.get(relay.guest_key) is relay else 0

    def tcp_written(self, relay: TcpRelay, n: int, now: float) -> None:
        """n bytes the guest sent were written to the host socket: open the guest's window again."""
        if self.tcp.get(relay.guest_key) is relay:
            relay.conn.consume(n)
            self._flush_tcp(relay, now)

    def tcp_eof(self, relay: TcpRelay, now: float) -> None:
        if self.tcp.get(relay.guest_key) is relay:
            relay.conn.shutdown(now)
            self._flush_tcp(relay, now)

    def tcp_error(self, relay: TcpRelay, now: float) -> None:
        if self.tcp.get(relay.guest_key) is relay:
            relay.conn.abort(now)
            self._flush_tcp(relay, now)
            self._tcp_forget(relay)

    def hostfwd_connect(self, rule: HostForward, client: tuple[str, int], now: float) -> TcpRelay | None:
        """A host client connected to a hostfwd port: dial the guest, appearing from the client's address
        (the host address for loopback clients, which a guest would drop as martians)."""
        src = self._guest_source(client[0])
        for _ in range(64):
            port = 1024 + (self._next_isn() % 64000)
            key = (rule.guest_addr, rule.guest_port, src, port)
            if key not in self.tcp:
                break
        else:
            return None
        conn = TcpConnection.connect((src, port), (rule.guest_addr, rule.guest_port), self.cfg.tcp, now,
                                     self._next_isn())
        relay = TcpRelay(conn, None, key)
        relay.hostfwd = True
        self.tcp[key] = relay
        self._tcp_count[rule.guest_addr] = self._tcp_count.get(rule.guest_addr, 0) + 1
        self.counters.tcp_flows += 1
        self._flush_tcp(relay, now)
        return relay

    def hostfwd_udp(self, rule: HostForward, client: tuple[str, int], data: bytes | memoryview, now: float) -> None:
        """A datagram to a UDP hostfwd port: deliver it to the guest from the client's address; the
        guest's answers to that address go back out of the forward's socket (UdpFwdReply)."""
        src = self._guest_source(client[0])
        key = (rule.guest_addr, rule.guest_port, src, client[1])
        session = self.udp_fwd.get(key)
        if session is None:
            sessions = [s for s in self.udp_fwd.values() if s.rule is rule]
            if len(sessions) >= self.cfg.max_udp_fwd_sessions:
                oldest = min(sessions, key=lambda s: s.expires)
                del self.udp_fwd[oldest.key]  # its heap entry is skipped when it comes due
            session = UdpFwdSession(rule, client, key, now + self.cfg.udp_timeout)
            self.udp_fwd[key] = session
            self._schedule(session.expires, session)
        session.client = client
        session.expires = now + self.cfg.udp_timeout
        self._emit_udp(src, client[1], rule.guest_addr, rule.guest_port, data)

    # -- timers --------------------------------------------------------------------------------------------
    def _schedule(self, deadline: float, owner: object) -> None:
        heapq.heappush(self._timers, (deadline, next(self._timer_seq), owner))

    def get_timer(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def handle_timer(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _deadline, _seq, owner = heapq.heappop(timers)
            if isinstance(owner, TcpRelay):
                if self.tcp.get(owner.guest_key) is owner and _deadline == owner.scheduled:
                    owner.scheduled = float("inf")
                    deadline = owner.conn.get_timer()
                    if deadline is not None and deadline <= now:
                        owner.conn.handle_timer(now)
                        self._flush_tcp(owner, now)
                    elif deadline is not None:
                        owner.scheduled = deadline
                        self._schedule(deadline, owner)
            elif isinstance(owner, UdpFlow):
                key = (owner.guest_ip, owner.guest_port)
                if self.udp_flows.get(key) is owner:
                    if owner.expires <= now:
                        del self.udp_flows[key]
                        self._udp_count[owner.guest_ip] = max(0, self._udp_count.get(owner.guest_ip, 1) - 1)
                        self._actions.append(UdpClose(owner))
                    else:
                        self._schedule(owner.expires, owner)
            elif isinstance(owner, UdpFwdSession):
                if self.udp_fwd.get(owner.key) is owner:
                    if owner.expires <= now:
                        del self.udp_fwd[owner.key]
                    else:
                        self._schedule(owner.expires, owner)
            elif isinstance(owner, PingFlow):
                key2 = (owner.guest_ip, owner.ident)
                if self.pings.get(key2) is owner:
                    if owner.expires <= now:
                        del self.pings[key2]
                        self._ping_count[owner.guest_ip] = max(0, self._ping_count.get(owner.guest_ip, 1) - 1)
                        self._actions.append(PingClose(owner))
                    else:
                        self._schedule(owner.expires, owner)
            elif owner is self.resolver and self.resolver is not None and _deadline == self._resolver_scheduled:
                self._resolver_scheduled = float("inf")
                deadline = self.resolver.get_timer()
                if deadline is not None and deadline <= now:
                    self._dns_actions(self.resolver.handle_timer(now), now)
                elif deadline is not None:
                    self._resolver_scheduled = deadline
                    self._schedule(deadline, self.resolver)

    # -- monitor -------------------------------------------------------------------------------------------
    def leases(self) -> list[Lease]:
        return self.dhcp.leases() if self.dhcp is not None else []
