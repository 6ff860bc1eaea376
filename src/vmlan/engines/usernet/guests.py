"""Who is who on the stack's network: each guest is the port its frames arrive on.

QEMU's stack serves one guest and believes whatever source address it uses. vmlan's serves every port of
a hub, so it must not: a guest choosing its source IP or MAC could use another guest's address, dodge
its caps (one MAC sending SYNs from 10.0.2.4..254 got 64,256 host connects where the cap was 256), drain
the DHCP pool with random MACs, or take over another guest's port forward.

The rules, libvirt's clean-traffic semantics adapted to a router that also hands out the addresses:

* A port may use up to ``Limits.macs_per_port`` unicast MACs. A MAC in use by another port, the
  virtual hosts' 52:55:... MACs, multicast and zero MACs are refused (counted, frame dropped).
* Each MAC owns at most one IPv4 address. A MAC with a DHCP lease uses its lease's address; a MAC
  without one may claim a free address of the network by using it (a guest configured statically), and
  a later claim moves its address. An address owned by another MAC, leased to another MAC, or
  belonging to the stack itself (network, broadcast, gateway, DNS, guestfwd servers) is never claimed.
* 0.0.0.0 is a valid source only for DHCP (UDP to port 67).
* IPv6: a MAC may use up to ``Limits.addrs6_per_mac`` addresses of the prefix or the link (fe80::/64):
  its link-local, SLAAC and temporary addresses, each claimed by first use (the oldest makes room for a
  new one); an address another MAC uses, or one of the stack's, is never claimed. The unspecified
  address :: is a valid source only for duplicate address detection (a neighbour solicitation).

Every per-guest account (flows, pings, DNS queries, fragments) hangs off the :class:`Guest` of the
port, so whatever addresses a guest forges it spends only its own share. When the port leaves the hub,
its guest is forgotten and the stack closes what it held (its DHCP leases stay, keyed by MAC).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmlan.engines.usernet.udp import UdpFlow

__all__ = ["Guest", "GuestCounters", "Guests"]

_ZERO_MAC = b"\0" * 6


class Guest:
    """One port of the hub and everything the stack holds for it."""

    __slots__ = (
        "cmd",
        "connecting",
        "flows",
        "ip6_of",
        "ip_of",
        "macs",
        "name",
        "pings",
        "port",
        "tcp",
        "tso",
        "udp",
        "udp_flows",
    )

    def __init__(self, port: Hashable, name: str, tso: bool) -> None:
        self.port = port
        self.name = name
        self.tso = tso  # the port takes 64 KiB TCP segments (GSO) and partial checksums
        self.macs: set[bytes] = set()
        self.ip_of: dict[bytes, bytes] = {}  # MAC -> its IPv4 address
        self.ip6_of: dict[bytes, list[bytes]] = {}  # MAC -> its IPv6 addresses, oldest first
        self.flows: set[int] = set()  # ids of every flow (TCP, UDP, ping) the guest holds
        self.tcp = 0
        self.connecting = 0
        self.udp = 0
        self.udp_flows: dict[UdpFlow, None] = {}  # the guest's UdpFlows, oldest first (see Udp.evict)
        self.pings = 0
        self.cmd = 0

    def __repr__(self) -> str:
        return f"<Guest {self.name} macs={len(self.macs)} flows={len(self.flows)}>"


class GuestCounters:
    __slots__ = ("claims", "mac_cap", "mac_spoofed", "source_spoofed")

    def __init__(self) -> None:
        self.mac_cap = 0  # frames from a MAC beyond the port's cap
        self.mac_spoofed = 0  # frames from a MAC another port uses, or a reserved MAC
        self.source_spoofed = 0  # frames from an address the MAC does not own and cannot claim
        self.claims = 0  # addresses taken by use (statically configured guests)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class Guests:
    """The identity tables: port -> guest, MAC -> guest, IPv4 -> (guest, MAC)."""

    __slots__ = ("_is_guest_addr", "_leased_to", "addrs6_per_mac", "by_port", "counters", "ip_owner", "mac_owner",
                 "macs_per_port")

    def __init__(
        self,
        macs_per_port: int,
        is_guest_addr: Callable[[bytes], bool],
        leased_to: Callable[[bytes], bytes | None],
        addrs6_per_mac: int = 8,
    ) -> None:
        """``is_guest_addr(ip)``: inside the network and not one of the stack's own addresses;
        ``leased_to(ip)``: the MAC holding an active DHCP lease on ``ip``, if any."""
        self.macs_per_port = macs_per_port
        self.addrs6_per_mac = addrs6_per_mac
        self._is_guest_addr = is_guest_addr
        self._leased_to = leased_to
        self.by_port: dict[Hashable, Guest] = {}
        self.mac_owner: dict[bytes, Guest] = {}
        self.ip_owner: dict[bytes, tuple[Guest, bytes]] = {}
        self.counters = GuestCounters()

    def guest(self, port: Hashable, name: str, tso: bool) -> Guest:
        g = self.by_port.get(port)
        if g is None:
            g = self.by_port[port] = Guest(port, name, tso)
        return g

    def admit(self, guest: Guest, mac: bytes) -> bool:
        """May ``guest`` send from ``mac``? Learns the MAC when it may."""
        if mac in guest.macs:
            return True
        owner = self.mac_owner.get(mac)
        if owner is not None or mac[0] & 1 or mac == _ZERO_MAC or mac[:2] == b"\x52\x55":
            self.counters.mac_spoofed += 1
            return False
        if len(guest.macs) >= self.macs_per_port:
            self.counters.mac_cap += 1
            return False
        guest.macs.add(mac)
        self.mac_owner[mac] = guest
        return True

    def source_ok(self, guest: Guest, mac: bytes, ip: bytes) -> bool:
        """Is ``ip`` the address of (guest, mac), or may that MAC claim it now? (``mac`` admitted.)"""
        if len(ip) == 16:
            return self._source_ok6(guest, mac, ip)
        if guest.ip_of.get(mac) == ip:
            return True
        if not self._is_guest_addr(ip) or ip in self.ip_owner:
            self.counters.source_spoofed += 1
            return False
        holder = self._leased_to(ip)
        if holder is not None and holder != mac:
            self.counters.source_spoofed += 1
            return False
        current = guest.ip_of.get(mac)
        if current is not None and self._leased_to(current) == mac:
            self.counters.source_spoofed += 1  # a MAC with a lease keeps to it
            return False
        self.counters.claims += 1
        self.bind(guest, mac, ip)
        return True

    def _source_ok6(self, guest: Guest, mac: bytes, ip: bytes) -> bool:
        addrs = guest.ip6_of.get(mac)
        if addrs is not None and ip in addrs:
            return True
        if not self._is_guest_addr(ip) or ip in self.ip_owner:
            self.counters.source_spoofed += 1
            return False
        if addrs is None:
            addrs = guest.ip6_of[mac] = []
        if len(addrs) >= self.addrs6_per_mac:
            old = addrs.pop(0)
            if self.ip_owner.get(old) == (guest, mac):
                del self.ip_owner[old]
        addrs.append(ip)
        self.ip_owner[ip] = (guest, mac)
        self.counters.claims += 1
        return True

    def bind(self, guest: Guest, mac: bytes, ip: bytes) -> None:
        """``mac`` of ``guest`` now owns ``ip`` (its DHCP lease, or a claim)."""
        old = guest.ip_of.get(mac)
        if old == ip:
            return
        if old is not None and self.ip_owner.get(old, (None, b""))[1] == mac:
            del self.ip_owner[old]
        previous = self.ip_owner.get(ip)
        if previous is not None:
            other, other_mac = previous
            if other.ip_of.get(other_mac) == ip:
                del other.ip_of[other_mac]
        guest.ip_of[mac] = ip
        self.ip_owner[ip] = (guest, mac)

    def lookup(self, ip: bytes) -> tuple[Guest, bytes] | None:
        """The guest and MAC owning ``ip`` (where to send a frame for it)."""
        return self.ip_owner.get(ip)

    def forget(self, port: Hashable) -> Guest | None:
        """The port left: drop its identity; returns its guest so the stack can release the rest."""
        g = self.by_port.pop(port, None)
        if g is None:
            return None
        for mac in g.macs:
            if self.mac_owner.get(mac) is g:
                del self.mac_owner[mac]
        for mac, ip in g.ip_of.items():
            if self.ip_owner.get(ip) == (g, mac):
                del self.ip_owner[ip]
        for mac, addrs in g.ip6_of.items():
            for ip in addrs:
                if self.ip_owner.get(ip) == (g, mac):
                    del self.ip_owner[ip]
        g.macs.clear()
        g.ip_of.clear()
        g.ip6_of.clear()
        return g
