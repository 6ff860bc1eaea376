"""ARP (RFC 826) for the user stack: answers for the virtual hosts, identity checks for the guests.

The neighbour table of the stack is the identity table itself (guests.py): a guest's address is bound to
its MAC and port by DHCP or by a checked claim, so ARP never teaches the stack anything a frame from
the same port could not. What ARP does here:

* a request for a virtual host (gateway, DNS, guestfwd servers) is answered with its 52:55 MAC;
* the sender fields must be the frame's own: sender MAC = Ethernet source, sender IP = 0.0.0.0 (a probe,
  RFC 5227) or an address that MAC owns or may claim (guests.py); anything else is spoofing, dropped;
* a reply (to the requests the stack sends for hostfwd targets it has not heard from) binds the address.

NDP (IPv6) is the Ndp class below: the router side of RFC 4861, with the same identity rules.

    ARP for IPv4 over Ethernet (RFC 826), after the 14-byte Ethernet header
     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |     Hardware type (1)         |     Protocol type (0x0800)    |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |  HLEN (6)     |  PLEN (4)     |          Operation            |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |  Sender hardware address (6), sender protocol address (4),    |
    |  target hardware address (6), target protocol address (4)     |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
"""

from __future__ import annotations

import random
import struct
from typing import TYPE_CHECKING

from vmlan.engines.usernet.core import LINK_LOCAL_ROUTER, virtual_mac
from vmlan.engines.usernet.l3 import multicast_mac
from vmlan.wire import BytesLike
from vmlan.wire.ethernet import ETH_P_ARP, ETH_P_IP

if TYPE_CHECKING:
    from vmlan.engines.usernet.core import Core
    from vmlan.engines.usernet.guests import Guest

__all__ = ["Neighbours"]

_ARP = struct.Struct("!HHBBH6s4s6s4s")
_ETH = struct.Struct("!6s6sH")
_ZERO4 = b"\0\0\0\0"


class Neighbours:
    __slots__ = ("core",)

    def __init__(self, core: Core) -> None:
        self.core = core

    def arp_input(self, guest: Guest, mac: bytes, frame: BytesLike) -> None:
        core = self.core
        if len(frame) < 14 + 28:
            core.counters.arp_bad += 1
            return
        htype, ptype, hlen, plen, op, sha, spa, _tha, tpa = _ARP.unpack_from(frame, 14)
        if htype != 1 or ptype != ETH_P_IP or hlen != 6 or plen != 4 or op not in (1, 2) or sha != mac:
            core.counters.arp_bad += 1
            return
        if spa != _ZERO4 and not core.guests.source_ok(guest, mac, spa):
            core.counters.bad_source += 1
            return
        if op != 1:
            return
        vmac = core.virtual.get(tpa)
        if vmac is None:
            return  # a guest asking for another guest: that one answers
        reply = _ARP.pack(1, ETH_P_IP, 6, 4, 2, vmac, tpa, sha, spa)
        core.frames.append((_ETH.pack(sha, vmac, ETH_P_ARP) + reply + b"\0" * 18, None))
        core.counters.arp_replies += 1


# -- IPv6: neighbour discovery (RFC 4861) -------------------------------------------------------------------
NDP_RS, NDP_RA, NDP_NS, NDP_NA, NDP_REDIRECT = 133, 134, 135, 136, 137
_ALL_NODES = b"\xff\x02" + b"\0" * 13 + b"\x01"
_UNSPECIFIED = b"\0" * 16
_SOLICITED_PREFIX = b"\xff\x02" + b"\0" * 9 + b"\x01\xff"  # ff02::1:ff00:0/104
# libslirp's timing (ip6_icmp.h): an unsolicited RA every 200..600 s, router lifetime 3 x 600 s
RA_MIN_INTERVAL, RA_MAX_INTERVAL = 200.0, 600.0
ROUTER_LIFETIME = 1800
VALID_LIFETIME, PREFERRED_LIFETIME = 86400, 14400
_RA = struct.Struct("!BBHBBHII")
_PREFIX_OPT = struct.Struct("!BBBBIII16s")


class Ndp:
    """NDP for the user stack's router: router advertisements (on solicitation and every 200..600 s)
    with the prefix (SLAAC), the MTU and the resolver (RDNSS, RFC 8106); neighbour advertisements for the
    virtual hosts (the router fe80::2, ipv6-host, ipv6-dns); guests' own advertisements and solicitations
    teach the stack their addresses under the identity rules of guests.py. Messages are checked as RFC
    4861 requires (hop limit 255, code 0, lengths) before they mean anything.

        Router Advertisement (RFC 4861 4.2)
         0                   1                   2                   3
         0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |     Type      |     Code      |          Checksum             |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        | Cur Hop Limit |M|O|  Reserved |       Router Lifetime         |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                         Reachable Time                        |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                          Retrans Timer                        |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |   Options ...
    """

    __slots__ = ("core", "rng", "timer")

    def __init__(self, core: Core) -> None:
        self.core = core
        self.rng = random.Random(core.secret)
        self.timer = core.timer(self._periodic)

    def start(self, now: float) -> None:
        self.core.flows.arm(self.timer, now + self.rng.uniform(RA_MIN_INTERVAL, RA_MAX_INTERVAL))

    def _periodic(self, now: float) -> None:
        if self.core.guests.by_port:
            self.send_ra(_ALL_NODES)
        self.start(now)

    def input(self, guest: Guest, mac: bytes, src: bytes, dst: bytes, hop_limit: int, msg: memoryview) -> None:
        core = self.core
        kind, code = msg[0], msg[1]
        if hop_limit != 255 or code != 0:
            core.counters.arp_bad += 1  # RFC 4861 6.1/7.1: not from the link itself
            return
        if kind == NDP_RS:
            if len(msg) < 8 or (src == _UNSPECIFIED and _has_source_lladdr(msg, 8)):
                core.counters.arp_bad += 1
                return
            self.send_ra(_ALL_NODES)
        elif kind == NDP_NS:
            if len(msg) < 24 or msg[8] == 0xFF:
                core.counters.arp_bad += 1
                return
            target = bytes(msg[8:24])
            if src == _UNSPECIFIED and dst[:13] != _SOLICITED_PREFIX:
                core.counters.arp_bad += 1  # DAD goes to a solicited-node group
                return
            vmac = core.virtual.get(target)
            if vmac is None or len(target) != 16:
                return  # another guest's address: that guest answers
            self.send_na(target, vmac, src, mac)
        elif kind == NDP_NA:
            if len(msg) < 24 or msg[8] == 0xFF:
                core.counters.arp_bad += 1
                return
            target = bytes(msg[8:24])
            if not core.guests.source_ok(guest, mac, target):
                core.counters.bad_source += 1
        else:  # a guest's RA or redirect: a router here is the stack (libslirp warns and ignores them)
            core.counters.unsupported += 1

    def send_ra(self, dst: bytes) -> None:
        core = self.core
        cfg = core.cfg
        router_mac = virtual_mac(LINK_LOCAL_ROUTER)
        ra = bytearray(_RA.pack(NDP_RA, 0, 0, 64, 0x40, ROUTER_LIFETIME, 0, 0))  # O: DHCPv6 for DNS search
        ra += b"\x01\x01" + router_mac  # source link-layer address
        ra += struct.pack("!BBHI", 5, 1, 0, cfg.mtu)  # MTU
        prefix = cfg.net6.network_address.packed
        ra += _PREFIX_OPT.pack(3, 4, cfg.net6.prefixlen, 0xC0, VALID_LIFETIME, PREFERRED_LIFETIME, 0, prefix)
        if core.dns6:
            ra += struct.pack("!BBHI", 25, 3, 0, int(2 * RA_MAX_INTERVAL)) + core.dns6  # RDNSS
        core.send_icmp6(LINK_LOCAL_ROUTER, dst, ra, multicast_mac(dst) if dst[0] == 0xFF else None, 255)
        core.counters.arp_replies += 1

    def send_na(self, target: bytes, vmac: bytes, to: bytes, to_mac: bytes) -> None:
        """RFC 4861 7.2.4: solicited (S) unless the solicitation was DAD (then to all nodes), router (R)
        for the router's addresses, override (O)."""
        dst, mac = (to, to_mac) if to != _UNSPECIFIED else (_ALL_NODES, multicast_mac(_ALL_NODES))
        flags = 0x80 | 0x20 | (0x40 if to != _UNSPECIFIED else 0)  # Router, Override, Solicited
        na = bytearray(struct.pack("!BBHB3x", NDP_NA, 0, 0, flags)) + target + b"\x02\x01" + vmac
        self.core.send_icmp6(target, dst, na, mac, 255)
        self.core.counters.arp_replies += 1


def _has_source_lladdr(msg: memoryview, offset: int) -> bool:
    """Does an NDP message carry a source link-layer option (which an unspecified source must not)?"""
    while offset + 2 <= len(msg):
        length = msg[offset + 1] * 8
        if length == 0:
            return False
        if msg[offset] == 1:
            return True
        offset += length
    return False
