"""The state every part of the user stack shares: addresses, the flow table, the guests, the outputs.

The parts (neighbours, TCP, UDP, ICMP, services) each hold a reference to one :class:`Core` and call
each other through it; the public face is :class:`~vmlan.engines.usernet.stack.UserStack`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable, Hashable
from ipaddress import IPv4Address

from vmlan.engines.reassembly import ReassemblyCounters
from vmlan.engines.usernet.actions import Action
from vmlan.engines.usernet.config import StackConfig
from vmlan.engines.usernet.flows import Flow, FlowTable
from vmlan.engines.usernet.guests import Guests
from vmlan.engines.usernet.l3 import DF, IPV4, IPV6, multicast_mac, solicited_node
from vmlan.faults import Faults
from vmlan.wire import BytesLike
from vmlan.wire.checksum import internet_checksum
from vmlan.wire.ethernet import BROADCAST
from vmlan.wire.vnet import Offload

__all__ = ["LOOPBACK", "Core", "StackCounters", "TimerFlow", "virtual_mac"]

LOOPBACK = "127.0.0.1"
LOOPBACK6 = "::1"
_ALL_ONES = b"\xff\xff\xff\xff"
#: libslirp's router address on the link (LINKLOCAL_ADDR): the source of router advertisements.
LINK_LOCAL_ROUTER = b"\xfe\x80" + b"\0" * 13 + b"\x02"
_LINK_LOCAL_PREFIX = b"\xfe\x80" + b"\0" * 6
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def virtual_mac(ip: bytes) -> bytes:
    """libslirp's MAC for a virtual host: 52:55 followed by its IPv4 address, or 52:56 followed by the
    last four bytes of its IPv6 address (in6_compute_ethaddr)."""
    return b"\x52\x55" + ip if len(ip) == 4 else b"\x52\x56" + ip[12:]


class StackCounters:
    """Stack-wide counters; every dropped frame lands in exactly one of the drop counters."""

    __slots__ = (
        "arp_bad",
        "arp_replies",
        "arp_requests",
        "bad_ipv4",
        "bad_l4",
        "bad_source",
        "fragmented6",
        "fragments",
        "fragments6",
        "frames_in",
        "icmp_errors_sent",
        "icmp_local_replies",
        "icmp_sent",
        "memory_pressure",
        "no_route",
        "not_for_us",
        "ping_dropped_cap",
        "reassembly",
        "restricted",
        "tcp_flows",
        "tcp_refused_cap",
        "too_big",
        "udp_dropped_cap",
        "udp_evicted",
        "udp_flows",
        "unresolved",
        "unsupported",
    )

    def __init__(self) -> None:
        self.frames_in = 0
        self.not_for_us = 0  # another guest's unicast or multicast, seen because hubs flood
        self.bad_ipv4 = 0  # malformed IPv4 header or bad header checksum
        self.bad_l4 = 0  # malformed TCP/UDP/ICMP or bad checksum
        self.bad_source = 0  # MAC or IP the guest may not use (see guests.py for which)
        self.unsupported = 0  # ethertypes and IP protocols the stack does not speak
        self.fragments = 0  # fragments received (reassembled or not), both families
        self.fragments6 = 0  # of those, IPv6 fragments (the Fragment header's atomic ones included)
        self.fragmented6 = 0  # IPv6 datagrams for a guest larger than the MTU, sent fragmented
        self.restricted = 0  # refused by restrict=on
        self.no_route = 0  # destinations the stack cannot reach (multicast, 0/8, 127/8, ...)
        self.tcp_flows = 0  # TCP connections opened (both directions)
        self.tcp_refused_cap = 0  # SYNs refused by a per-guest or stack-wide cap
        self.udp_flows = 0
        self.udp_dropped_cap = 0
        self.udp_evicted = 0  # idle flows closed to make room for a new one of the same guest
        self.ping_dropped_cap = 0
        self.icmp_local_replies = 0
        self.icmp_sent = 0  # echo requests sent to the host's network
        self.icmp_errors_sent = 0  # unreachables (and the like) sent to guests
        self.arp_replies = 0
        self.arp_requests = 0
        self.arp_bad = 0
        self.unresolved = 0  # frames for a guest address nobody owns (an ARP request goes out instead)
        self.too_big = 0  # IPv6 datagrams for a guest past 65535 bytes of payload (not even fragments carry them)
        self.memory_pressure = 0  # times the TCP memory budget had to shrink windows
        #: The reassembler's counters (stack.py sets them): reported beside these as ``frag_<name>``.
        self.reassembly: ReassemblyCounters | None = None

    def as_dict(self) -> dict[str, int]:
        out: dict[str, int] = {name: getattr(self, name) for name in self.__slots__ if name != "reassembly"}
        if self.reassembly is not None:
            out.update((f"frag_{k}", v) for k, v in self.reassembly.as_dict().items() if k != "fragments")
        return out


class TimerFlow(Flow):
    """A stack-wide timer (DNS retries, reassembly expiry, the memory check) in the one flow table."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[float], None]) -> None:
        super().__init__(None)
        self.callback = callback

    def on_timer(self, now: float) -> None:
        self.callback(now)


class Core:
    __slots__ = (
        "actions",
        "bcast_ip",
        "cfg",
        "counters",
        "dhcp_holder",
        "dns6",
        "dns_ip",
        "dns_mac",
        "faults",
        "flows",
        "frames",
        "guests",
        "host6",
        "host_ip",
        "host_mac",
        "ident",
        "ident6",
        "limits",
        "net6_addr",
        "net6_mask",
        "net_addr",
        "net_mask",
        "now",
        "port_tso",
        "reserved",
        "secret",
        "tcp6",
        "virtual",
    )

    def __init__(self, cfg: StackConfig, secret: bytes | None, port_tso: Callable[[Hashable], bool] | None) -> None:
        self.cfg = cfg
        self.limits = cfg.limits
        self.secret = secret if secret is not None else os.urandom(16)
        self.host_ip = cfg.host.packed
        self.dns_ip = cfg.dns.packed
        self.net_addr = int(cfg.net.network_address)
        self.net_mask = int(cfg.net.netmask)
        self.bcast_ip = cfg.net.broadcast_address.packed
        self.host_mac = virtual_mac(self.host_ip)
        self.dns_mac = virtual_mac(self.dns_ip)
        # The virtual hosts: they answer ARP, and guests may not claim their addresses.
        self.virtual: dict[bytes, bytes] = {self.host_ip: self.host_mac, self.dns_ip: self.dns_mac}
        for g in cfg.guestfwd:
            self.virtual.setdefault(g.addr, virtual_mac(g.addr))
        if cfg.smb_dir is not None and cfg.smbserver is not None:
            self.virtual.setdefault(cfg.smbserver.packed, virtual_mac(cfg.smbserver.packed))
        # IPv6 (cfg.ipv6): the prefix, the router (host6, and fe80::2 on the link) and the resolver.
        self.host6 = cfg.host6.packed
        self.dns6 = cfg.dns6.packed
        self.net6_addr = int(cfg.net6.network_address)
        self.net6_mask = int(cfg.net6.netmask)
        if cfg.ipv6:
            for ip6 in (self.host6, self.dns6, LINK_LOCAL_ROUTER):
                self.virtual[ip6] = virtual_mac(ip6)
        self.tcp6 = dataclasses.replace(cfg.tcp, mss=max(64, cfg.tcp.mss - 20))
        self.reserved = {
            *self.virtual,
            IPv4Address(self.net_addr).packed,
            self.bcast_ip,
            cfg.net6.network_address.packed,
        }
        self.dhcp_holder: Callable[[bytes], bytes | None] = lambda ip: None
        self.port_tso = port_tso if port_tso is not None else (lambda port: False)
        self.flows = FlowTable()
        self.guests = Guests(cfg.limits.macs_per_port, self.is_guest_addr, lambda ip: self.dhcp_holder(ip),
                             cfg.limits.addrs6_per_mac)
        self.frames: list[tuple[bytes, Offload | None]] = []
        self.actions: list[Action] = []
        self.counters = StackCounters()
        self.faults = Faults()
        self.ident = int.from_bytes(os.urandom(2), "big")
        self.ident6 = int.from_bytes(os.urandom(4), "big")
        self.now = 0.0

    # -- addresses ----------------------------------------------------------------------------------------
    def in_net(self, ip: bytes) -> bool:
        return (int.from_bytes(ip, "big") & self.net_mask) == self.net_addr

    def in_net6(self, ip: bytes) -> bool:
        return (int.from_bytes(ip, "big") & self.net6_mask) == self.net6_addr

    def is_guest_addr(self, ip: bytes) -> bool:
        """An address a guest may own: inside the network (IPv4) or the prefix or the link (IPv6) and not
        one the stack keeps for itself."""
        if len(ip) == 4:
            return self.in_net(ip) and ip not in self.reserved
        return (self.in_net6(ip) or ip[:8] == _LINK_LOCAL_PREFIX) and ip not in self.reserved

    def host_target(self, dst: bytes) -> str | None:
        """Where a guest packet to ``dst`` goes on the host, or None if nowhere (counted by the caller)."""
        if dst == self.host_ip:
            return LOOPBACK if self.cfg.host_loopback else None
        if self.in_net(dst) or dst[0] >= 224 or dst[0] in (0, 127) or dst == _ALL_ONES:
            return None  # 0/8 would reach the host's loopback too (Linux delivers 0.0.0.0 locally)
        return socket.inet_ntoa(dst)

    def host_target6(self, dst: bytes) -> str | None:
        """IPv6: the host's ::1 for ipv6-host (as 10.0.2.2 reaches 127.0.0.1), the address itself for a
        global destination, None for what cannot leave the link (the prefix, link-local, multicast,
        loopback, unspecified, v4-mapped)."""
        if dst == self.host6:
            return LOOPBACK6 if self.cfg.host_loopback else None
        if (self.in_net6(dst) or dst[0] == 0xFF or dst[:2] == b"\xfe\x80" or dst[:12] == _V4_MAPPED
                or dst[:15] == b"\0" * 15):
            return None
        return socket.inet_ntop(socket.AF_INET6, dst)

    def guest_source(self, host: str) -> bytes:
        """The address a host peer appears from, inside the guest network (a guest drops 127/8 sources);
        an IPv6 peer keeps its address, the host's own ::1 appears as ipv6-host."""
        if host.startswith("127.") or host.startswith("::ffff:127."):
            return self.host_ip
        if host == LOOPBACK6:
            return self.host6
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        if ":" in host:
            return socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
        return socket.inet_aton(host)

    def source_mac(self, src: bytes) -> bytes:
        """The Ethernet source of a packet from ``src``: the DNS's own MAC, else the gateway's."""
        if len(src) == 16:
            return virtual_mac(self.dns6) if src == self.dns6 else virtual_mac(LINK_LOCAL_ROUTER)
        return self.dns_mac if src == self.dns_ip else self.host_mac

    def next_ident(self) -> int:
        self.ident = (self.ident + 1) & 0xFFFF
        return self.ident

    # -- output -------------------------------------------------------------------------------------------
    def guest_mac(self, dst: bytes) -> bytes | None:
        if dst == _ALL_ONES or dst == self.bcast_ip:
            return BROADCAST
        owner = self.guests.ip_owner.get(dst)
        return owner[1] if owner is not None else None

    def send_ip(self, src: bytes, dst: bytes, proto: int, l4: BytesLike, mac: bytes | None = None) -> None:
        """One IPv4 datagram toward a guest, fragmented to the MTU when it is larger (ICMP, UDP)."""
        if len(dst) == 16:
            self.send_ip6(src, dst, proto, l4, mac)
            return
        if mac is None:
            mac = self.guest_mac(dst)
            if mac is None:
                self.counters.unresolved += 1
                self.arp_request(dst)
                return
        ident = self.next_ident()
        smac = self.source_mac(src)
        if 20 + len(l4) <= self.cfg.mtu:
            base = IPV4.header_sum(src, dst, proto, DF if proto == 6 else 0)
            prefix = IPV4.frame_prefix(mac, smac, src, dst, proto, len(l4), ident, base, DF if proto == 6 else 0)
            self.frames.append((prefix + l4, None))
            return
        for frame in IPV4.fragments(mac, smac, src, dst, proto, l4, ident, self.cfg.mtu):
            self.frames.append((frame, None))

    def send_ip6(self, src: bytes, dst: bytes, nh: int, l4: BytesLike, mac: bytes | None = None,
                 hop_limit: int = 64) -> None:
        """One IPv6 datagram toward a guest (or a link multicast group), fragmented when it is larger than
        the MTU: the stack is the source of what it relays (RFC 8200 4.5 lets only sources fragment), and
        a guest reassembles as it would from the host's kernel. At most 65535 bytes make 46 frames at MTU
        1500. Identifications count from a random start (one sequence: every datagram goes to a guest
        on this link, so no destination's sequence tells another's)."""
        if mac is None:
            if dst[0] == 0xFF:
                mac = multicast_mac(dst)
            else:
                mac = self.guest_mac(dst)
                if mac is None:
                    self.counters.unresolved += 1
                    self.neighbour_solicit(dst)
                    return
        if 40 + len(l4) > self.cfg.mtu:
            if len(l4) > 0xFFFF:
                self.counters.too_big += 1
                return
            self.counters.fragmented6 += 1
            self.ident6 = (self.ident6 + 1) & 0xFFFFFFFF
            for frame in IPV6.fragments(mac, self.source_mac(src), src, dst, nh, l4, self.ident6, self.cfg.mtu,
                                        hop_limit):
                self.frames.append((frame, None))
            return
        prefix = IPV6.frame_prefix(mac, self.source_mac(src), src, dst, nh, len(l4), hop_limit)
        self.frames.append((prefix + l4, None))

    def send_icmp6(self, src: bytes, dst: bytes, message: bytearray, mac: bytes | None = None,
                   hop_limit: int = 64) -> None:
        """ICMPv6 (its checksum covers the IPv6 pseudo-header, RFC 4443 2.3) toward a guest."""
        message[2:4] = b"\0\0"
        csum = internet_checksum(message, IPV6.pseudo_sum(src, dst, 58) + len(message))
        message[2:4] = csum.to_bytes(2, "big")
        self.send_ip6(src, dst, 58, message, mac, hop_limit)

    def neighbour_solicit(self, ip6: bytes) -> None:
        """RFC 4861 7.2.2: ask the solicited-node group who has ``ip6``, as the router."""
        if not self.is_guest_addr(ip6):
            return
        self.counters.arp_requests += 1
        router_mac = virtual_mac(LINK_LOCAL_ROUTER)
        ns = bytearray(b"\x87\0\0\0\0\0\0\0" + ip6 + b"\x01\x01" + router_mac)
        group = solicited_node(ip6)
        self.send_icmp6(LINK_LOCAL_ROUTER, group, ns, multicast_mac(group), 255)

    def send_udp(
        self, src: bytes, sport: int, dst: bytes, dport: int, data: BytesLike, mac: bytes | None = None
    ) -> None:
        n = 8 + len(data)
        header = bytearray(8)
        header[0:2] = sport.to_bytes(2, "big")
        header[2:4] = dport.to_bytes(2, "big")
        header[4:6] = n.to_bytes(2, "big")
        datagram = header + data
        family = IPV6 if len(dst) == 16 else IPV4
        csum = internet_checksum(datagram, family.pseudo_sum(src, dst, 17) + n) or 0xFFFF
        datagram[6:8] = csum.to_bytes(2, "big")
        self.send_ip(src, dst, 17, datagram, mac)

    def arp_request(self, ip: bytes) -> None:
        """Ask who has ``ip`` (as the gateway, to everybody); the answer binds it (guests.py rules)."""
        if not self.is_guest_addr(ip):
            return
        self.counters.arp_requests += 1
        body = (b"\x00\x01\x08\x00\x06\x04\x00\x01" + self.host_mac + self.host_ip + b"\0" * 6 + ip)
        self.frames.append((BROADCAST + self.host_mac + b"\x08\x06" + body + b"\0" * 18, None))

    # -- timers -------------------------------------------------------------------------------------------
    def timer(self, callback: Callable[[float], None]) -> TimerFlow:
        flow = TimerFlow(callback)
        self.flows.add(flow)
        return flow
