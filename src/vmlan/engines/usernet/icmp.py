"""ICMP for the user stack: echo (answered by the virtual hosts, or relayed through host ping sockets)
and the errors the stack sends guests so that they fail fast instead of waiting out timeouts.

Pings beyond the stack become ping flows keyed by (guest address, identifier), each with its own host
socket (the I/O layer picks ping sockets, a raw socket or nothing), idle-expired after
``icmp_timeout``, capped per guest. Errors toward a guest quote the datagram they are about (RFC 792:
its IP header and 64 bits of payload), rebuilt from the flow when the original is not kept, which is
all a guest's stack needs to find the socket (Linux matches addresses, protocol and ports).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from vmlan.engines.usernet import actions as A
from vmlan.engines.usernet.flows import Flow
from vmlan.wire import BytesLike
from vmlan.wire.checksum import internet_checksum
from vmlan.wire.icmp import ICMP_DEST_UNREACH, ICMP_ECHO, ICMP_ECHOREPLY, ICMP_TIME_EXCEEDED

if TYPE_CHECKING:
    from vmlan.engines.usernet.core import Core
    from vmlan.engines.usernet.guests import Guest

__all__ = ["Icmp", "PingFlow"]

_ECHO = struct.Struct("!BBHHH")
_IP_HDR = struct.Struct("!BBHHHBBH4s4s")
_MAX_QUOTE = 548  # RFC 1812 4.3.2.3: the whole error stays within 576 bytes


class PingFlow(Flow):
    __slots__ = ("dst", "guest_ip", "icmp", "ident", "timeout")

    def __init__(self, icmp: Icmp, guest: Guest, guest_ip: bytes, ident: int, dst: str, timeout: float) -> None:
        super().__init__(guest)
        self.icmp = icmp
        self.guest_ip = guest_ip
        self.ident = ident
        self.dst = dst
        self.timeout = timeout

    def on_timer(self, now: float) -> None:
        self.icmp.close(self)  # idle for icmp_timeout


ICMP6_UNREACH = 1
ICMP6_TOO_BIG = 2
ICMP6_ECHO = 128
ICMP6_ECHO_REPLY = 129
_MAX_QUOTE6 = 1280 - 40 - 8  # RFC 4443 2.4 (c): the error fits the IPv6 minimum MTU
_IP6_HDR = struct.Struct("!IHBB16s16s")


class Icmp:
    __slots__ = ("core", "pings")

    def __init__(self, core: Core) -> None:
        self.core = core
        self.pings: dict[tuple[bytes, int], PingFlow] = {}

    def input(self, guest: Guest, src: bytes, dst: bytes, msg: memoryview, verified: bool, now: float) -> None:
        core = self.core
        if len(msg) < 8 or (not verified and internet_checksum(msg) != 0):
            core.counters.bad_l4 += 1
            return
        kind, _code, _csum, ident, seq = _ECHO.unpack_from(msg)
        if kind != ICMP_ECHO:
            core.counters.unsupported += 1  # errors and replies from guests mean nothing to the stack
            return
        if dst in core.virtual:
            reply = bytearray(msg)
            reply[0] = ICMP_ECHOREPLY
            reply[2:4] = b"\0\0"
            reply[2:4] = internet_checksum(reply).to_bytes(2, "big")
            core.send_ip(dst, src, 1, reply)
            core.counters.icmp_local_replies += 1
            return
        if core.cfg.restrict:
            core.counters.restricted += 1
            return
        target = core.host_target(dst)
        if target is None:
            core.counters.no_route += 1
            return
        self._relay(guest, src, ident, seq, target, 4, msg, now)  # same id, new destination: a new socket

    def input6(self, guest: Guest, src: bytes, dst: bytes, msg: memoryview, now: float) -> None:
        """ICMPv6 echo requests (RFC 4443 4.1): answered by the virtual hosts, else relayed; the
        checksum (with the pseudo-header) was checked by the caller; NDP went elsewhere."""
        core = self.core
        kind, _code, _csum, ident, seq = _ECHO.unpack_from(msg)
        if kind != ICMP6_ECHO:
            core.counters.unsupported += 1
            return
        if dst in core.virtual:
            reply = bytearray(msg)
            reply[0] = ICMP6_ECHO_REPLY
            core.send_icmp6(dst, src, reply)
            core.counters.icmp_local_replies += 1
            return
        if core.cfg.restrict:
            core.counters.restricted += 1
            return
        target = core.host_target6(dst)
        if target is None:
            core.counters.no_route += 1
            return
        self._relay(guest, src, ident, seq, target, 6, msg, now)

    def _relay(self, guest: Guest, src: bytes, ident: int, seq: int, target: str, family: int, msg: memoryview,
               now: float) -> None:
        core = self.core
        key = (src, ident)
        flow = self.pings.get(key)
        if flow is not None and flow.dst != target:
            self.close(flow)
            flow = None
        if flow is None:
            if guest.pings >= core.limits.pings_per_guest or len(core.flows) >= core.limits.max_flows:
                core.counters.ping_dropped_cap += 1
                return
            flow = PingFlow(self, guest, src, ident, target, core.cfg.icmp_timeout)
            core.flows.add(flow)
            guest.pings += 1
            self.pings[key] = flow
        core.flows.arm(flow, now + flow.timeout)
        core.counters.icmp_sent += 1
        core.actions.append((A.PING_SEND, flow.fid, family, target, ident, seq, bytes(msg[8:])))

    def reply(self, fid: int, seq: int, data: BytesLike, now: float) -> None:
        flow = self.core.flows.get(fid)
        if not isinstance(flow, PingFlow):
            return
        core = self.core
        if len(flow.guest_ip) == 16:
            message = bytearray(_ECHO.pack(ICMP6_ECHO_REPLY, 0, 0, flow.ident, seq)) + data
            core.send_icmp6(core.guest_source(flow.dst), flow.guest_ip, message)
            return
        message = bytearray(_ECHO.pack(ICMP_ECHOREPLY, 0, 0, flow.ident, seq)) + data
        message[2:4] = internet_checksum(message).to_bytes(2, "big")
        core.send_ip(core.guest_source(flow.dst), flow.guest_ip, 1, message)

    def close(self, flow: PingFlow) -> None:
        core = self.core
        if not core.flows.live(flow):
            return
        core.flows.remove(flow)
        if self.pings.get((flow.guest_ip, flow.ident)) is flow:
            del self.pings[(flow.guest_ip, flow.ident)]
        if flow.guest is not None:
            flow.guest.pings -= 1
        core.actions.append((A.PING_CLOSE, flow.fid))

    # -- errors toward guests -------------------------------------------------------------------------------
    def unreachable(self, src: bytes, guest_ip: bytes, code: int, original: BytesLike) -> None:
        """Destination unreachable from ``src`` to ``guest_ip`` about ``original`` (an IP datagram the
        guest sent, or its first bytes rebuilt); ICMPv6's (type 1, RFC 4443 3.1, ``code`` its own) for
        an IPv6 guest."""
        if len(guest_ip) == 16:
            self.error6(src, guest_ip, ICMP6_UNREACH, code, 0, original)
            return
        quote = bytes(original[:_MAX_QUOTE])
        message = bytearray(_ECHO.pack(ICMP_DEST_UNREACH, code, 0, 0, 0)) + quote
        message[2:4] = internet_checksum(message).to_bytes(2, "big")
        self.core.send_ip(src, guest_ip, 1, message)
        self.core.counters.icmp_errors_sent += 1

    def error6(self, src: bytes, guest_ip: bytes, kind: int, code: int, value: int, original: BytesLike) -> None:
        """An ICMPv6 error (unreachable, packet too big with ``value`` the MTU) quoting ``original``."""
        message = bytearray(_ECHO.pack(kind, code, 0, value >> 16, value & 0xFFFF)) + bytes(original[:_MAX_QUOTE6])
        self.core.send_icmp6(src, guest_ip, message)
        self.core.counters.icmp_errors_sent += 1

    def time_exceeded(self, src: bytes, guest_ip: bytes, code: int, original: BytesLike) -> None:
        message = bytearray(_ECHO.pack(ICMP_TIME_EXCEEDED, code, 0, 0, 0)) + bytes(original[:_MAX_QUOTE])
        message[2:4] = internet_checksum(message).to_bytes(2, "big")
        self.core.send_ip(src, guest_ip, 1, message)
        self.core.counters.icmp_errors_sent += 1

    @staticmethod
    def rebuild(src: bytes, dst: bytes, proto: int, l4_head: bytes, length: int) -> bytes:
        """The IP header (and the first 8 bytes of transport) of a datagram the guest sent."""
        if len(src) == 16:
            return _IP6_HDR.pack(0x60000000, length, proto, 64, src, dst) + l4_head[:8]
        header = bytearray(_IP_HDR.pack(0x45, 0, 20 + length, 0, 0, 64, proto, 0, src, dst))
        header[10:12] = internet_checksum(header).to_bytes(2, "big")
        return bytes(header) + l4_head[:8]

