"""ARP (RFC 826) for the user stack: answers for the virtual hosts, identity checks for the guests.

The neighbour table of the stack is the identity table itself (guests.py): a guest's address is bound to
its MAC and port by DHCP or by a checked claim, so ARP never teaches the stack anything a frame from
the same port could not. What ARP does here:

* a request for a virtual host (gateway, DNS, guestfwd servers) is answered with its 52:55 MAC;
* the sender fields must be the frame's own: sender MAC = Ethernet source, sender IP = 0.0.0.0 (a probe,
  RFC 5227) or an address that MAC owns or may claim (guests.py); anything else is spoofing, dropped;
* a reply (to the requests the stack sends for hostfwd targets it has not heard from) binds the address.

NDP (IPv6) will live beside it.

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

import struct
from typing import TYPE_CHECKING

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
