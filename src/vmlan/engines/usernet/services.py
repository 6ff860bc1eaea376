"""The stack's own servers, registered by (protocol, address, port), and the handlers behind them.

A guest datagram or connection first looks up ``(address, port)`` in the registry of its protocol; only
what no service claims goes to NAT. Today: DHCP (UDP 67 at the gateway and the broadcast addresses), DNS
(UDP and TCP 53 at the DNS address) and guestfwd (TCP at its virtual address); TFTP and DHCPv6 register
the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, cast

from vmlan.engines.dhcp import DhcpServer, Lease
from vmlan.engines.dns import DnsForwarder, Reply, SendUpstream, TcpDnsFramer
from vmlan.engines.tftp import TftpServer
from vmlan.engines.usernet import actions as A

if TYPE_CHECKING:
    from vmlan.engines.usernet.core import Core, TimerFlow
    from vmlan.engines.usernet.guests import Guest

__all__ = ["DhcpService", "DnsService", "DnsTcpState", "Services", "UdpHandler"]

#: A UDP service: (guest, guest MAC, source address, source port, destination address, data, now).
UdpHandler = Callable[["Guest", bytes, bytes, int, bytes, memoryview, float], None]


class Services:
    __slots__ = ("tcp", "udp")

    def __init__(self) -> None:
        self.udp: dict[tuple[bytes, int], UdpHandler] = {}
        self.tcp: dict[tuple[bytes, int], object] = {}  # a guestfwd target, or a TCP service object

    def register_udp(self, addr: bytes, port: int, handler: UdpHandler) -> None:
        self.udp[(addr, port)] = handler

    def register_tcp(self, addr: bytes, port: int, target: object) -> None:
        self.tcp[(addr, port)] = target


class DhcpService:
    """DHCP (engines/dhcp.py) for the guests: leases bind addresses to the requesting port's MAC."""

    __slots__ = ("core", "on_change", "server")

    def __init__(self, core: Core, server: DhcpServer) -> None:
        self.core = core
        self.server = server
        #: Called whenever a message changed the lease table, before its answer leaves (a daemon commits
        #: the lease first, so a crash never forgets an address a guest was given).
        self.on_change: Callable[[], None] | None = None
        server.in_use = self._in_use
        core.dhcp_holder = lambda ip: server.holder(ip, core.now)

    def _in_use(self, ip: bytes, mac: bytes) -> bool:
        owner = self.core.guests.ip_owner.get(ip)
        return owner is not None and owner[1] != mac

    def handle(self, guest: Guest, mac: bytes, src: bytes, sport: int, dst: bytes, data: memoryview,
               now: float) -> None:
        if sport != 68:
            self.core.counters.no_route += 1
            return
        before = self.server.changed
        reply = self.server.handle(data, mac, now)
        if self.server.changed != before and self.on_change is not None:
            self.on_change()
        if reply is None:
            return
        core = self.core
        if reply.lease is not None:
            core.guests.bind(guest, mac, reply.lease.ip)
        core.send_udp(core.host_ip, 67, reply.dst_ip, 68, reply.payload, reply.dst_mac)

    def leases(self) -> list[Lease]:
        return self.server.leases()


class DnsTcpState:
    """DNS over TCP from one guest connection: a framer, answers owed, and a FIN waiting for them."""

    __slots__ = ("eof", "framer", "pending")

    def __init__(self) -> None:
        self.framer = TcpDnsFramer()
        self.pending = 0
        self.eof = False


class DnsService:
    """The resolver at the DNS address (engines/dns.py), over UDP and TCP, with its upstream actions."""

    __slots__ = ("core", "resolver", "tcp_reply", "timer")

    def __init__(self, core: Core, resolver: DnsForwarder) -> None:
        self.core = core
        self.resolver = resolver
        self.timer: TimerFlow = core.timer(self._on_timer)
        # set by the TCP part: (fid, framed answer, now) -> None
        self.tcp_reply: Callable[[int, bytes, bool, float], None] = lambda fid, data, last, now: None

    def handle_udp(self, guest: Guest, mac: bytes, src: bytes, sport: int, dst: bytes, data: memoryview,
                   now: float) -> None:
        self._apply(self.resolver.query(bytes(data), ("udp", src, sport), now, guest=guest), now)

    def tcp_data(self, fid: int, state: DnsTcpState, guest: Guest | None, data: bytes | bytearray, now: float) -> None:
        for message in state.framer.feed(data):
            actions = self.resolver.query(message, ("tcp", fid), now, tcp=True, guest=guest)
            if actions:  # dropped queries (duplicates, malformed) get no answer to wait for
                state.pending += 1
            self._apply(actions, now)

    def answer(self, payload: bytes, upstream: tuple[str, int], tcp: bool, now: float) -> None:
        self._apply(self.resolver.upstream_response(payload, upstream, now, tcp=tcp), now)

    def _on_timer(self, now: float) -> None:
        self._apply(self.resolver.handle_timer(now), now)

    def _apply(self, actions: list[Any], now: float) -> None:
        core = self.core
        for action in actions:
            if isinstance(action, SendUpstream):
                core.actions.append((A.DNS_SEND, action.upstream, action.payload, action.tcp))
            elif isinstance(action, Reply):
                if action.upstream_id is not None:
                    core.actions.append((A.DNS_FORGET, action.upstream_id))
                client = cast("tuple[Any, ...]", action.client)  # ("udp", ip, port) or ("tcp", fid), as queried
                if client[0] == "udp":
                    src = core.dns6 if len(client[1]) == 16 else core.dns_ip
                    core.send_udp(src, 53, client[1], client[2], action.payload)
                else:
                    self.tcp_reply(client[1], TcpDnsFramer.frame(action.payload), True, now)
        deadline = self.resolver.get_timer()
        core.flows.arm(self.timer, deadline if deadline is not None else float("inf"))


# -- DHCPv6, stateless (RFC 8415 section 6.1: Information-request -> Reply) ---------------------------------
DHCP6_SERVERS = b"\xff\x02" + b"\0" * 11 + b"\x01\x00\x02"  # ff02::1:2, All_DHCP_Relay_Agents_and_Servers
_INFORMATION_REQUEST, _REPLY = 11, 7
_OPT_CLIENTID, _OPT_SERVERID, _OPT_IA_NA, _OPT_IA_TA, _OPT_IA_PD = 1, 2, 3, 4, 25
_OPT_DNS_SERVERS, _OPT_DOMAIN_LIST = 23, 24
_MAX_OPTIONS = 64


class Dhcpv6Service:
    """Stateless DHCPv6 for the guests (what libslirp's dhcpv6.c does): an Information-request gets a
    Reply with the resolver (ipv6-dns) and the search list. Addresses come from SLAAC (the router
    advertisements), so Solicit/Request (stateful) are not answered. Checked per RFC 8415 16.12: no IA
    options, our server id if one is named; malformed or oversized messages are dropped and counted.

        DHCPv6 message (RFC 8415 section 8) and option (section 21.1)
         0                   1                   2                   3
         0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |    msg-type   |               transaction-id                  |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |          option-code          |           option-len          |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                          option-data ...                      |
    """

    __slots__ = ("core", "dns_search", "dropped", "duid", "replies")

    def __init__(self, core: Core, dnssearch: Sequence[str]) -> None:
        from vmlan.engines.usernet.core import LINK_LOCAL_ROUTER, virtual_mac

        self.core = core
        # DUID-LL (type 3) on hardware type 1 (Ethernet) with the router's MAC
        self.duid = b"\x00\x03\x00\x01" + virtual_mac(LINK_LOCAL_ROUTER)
        self.dns_search = b"".join(_wire_name(name) for name in dnssearch)
        self.replies = 0
        self.dropped = 0

    def handle(self, guest: Guest, mac: bytes, src: bytes, sport: int, dst: bytes, data: memoryview,
               now: float) -> None:
        from vmlan.engines.usernet.core import LINK_LOCAL_ROUTER

        core = self.core
        options = _options(data)
        if options is None or sport != 546 or data[0] != _INFORMATION_REQUEST:
            self.dropped += 1
            return
        codes = {code for code, _value in options}
        server = next((value for code, value in options if code == _OPT_SERVERID), None)
        if codes & {_OPT_IA_NA, _OPT_IA_TA, _OPT_IA_PD} or (server is not None and server != self.duid):
            self.dropped += 1
            return
        out = bytearray(bytes((_REPLY,)) + bytes(data[1:4]))
        for code, value in options:
            if code == _OPT_CLIENTID:
                out += _option(_OPT_CLIENTID, value)
        out += _option(_OPT_SERVERID, self.duid)
        out += _option(_OPT_DNS_SERVERS, core.dns6)
        if self.dns_search:
            out += _option(_OPT_DOMAIN_LIST, self.dns_search)
        self.replies += 1
        core.send_udp(LINK_LOCAL_ROUTER, 547, src, 546, out, mac)


def _option(code: int, value: bytes) -> bytes:
    return code.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value


def _options(data: memoryview) -> list[tuple[int, bytes]] | None:
    """The message's options, or None when the lengths do not add up (bounded: at most 64 options)."""
    if len(data) < 4:
        return None
    out: list[tuple[int, bytes]] = []
    pos = 4
    while pos < len(data):
        if pos + 4 > len(data) or len(out) >= _MAX_OPTIONS:
            return None
        code = (data[pos] << 8) | data[pos + 1]
        length = (data[pos + 2] << 8) | data[pos + 3]
        if pos + 4 + length > len(data):
            return None
        out.append((code, bytes(data[pos + 4 : pos + 4 + length])))
        pos += 4 + length
    return out


def _wire_name(name: str) -> bytes:
    """A domain name in DNS wire format, uncompressed (RFC 8415 10: the search list's encoding)."""
    out = bytearray()
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        out += bytes((len(raw),)) + raw
    return bytes(out) + b"\0"


class TftpService:
    """``tftp=DIR`` (engines/tftp.py) at the gateway's UDP port 69. Every transfer answers from port 69,
    as libslirp's does: the registry needs no per-transfer ports, and both tftp-hpa and atftp accept it
    (the engine keys transfers by client, which includes the guest's port of the hub)."""

    __slots__ = ("core", "server", "timer")

    def __init__(self, core: Core, server: TftpServer) -> None:
        self.core = core
        self.server = server
        self.timer: TimerFlow = core.timer(self._on_timer)

    def handle(self, guest: Guest, mac: bytes, src: bytes, sport: int, dst: bytes, data: memoryview,
               now: float) -> None:
        self._send(self.server.receive((guest, src, sport), 69, data, now, guest=guest))

    def _on_timer(self, now: float) -> None:
        self._send(self.server.handle_timer(now))

    def _send(self, datagrams: list[tuple[Hashable, int, bytes]]) -> None:
        core = self.core
        for client, port, payload in datagrams:
            key: tuple[Guest, bytes, int] = client  # type: ignore[assignment]  # the key handle() gave
            ip, cport = key[1], key[2]
            core.send_udp(core.host_ip if len(ip) == 4 else core.host6, port, ip, cport, payload)
        self.server.take_closed()
        deadline = self.server.get_timer()
        core.flows.arm(self.timer, deadline if deadline is not None else float("inf"))
