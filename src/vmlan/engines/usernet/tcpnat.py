"""TCP for the user stack: each guest connection terminated by an engine (engines/tcp), relayed to a host
socket (NAT, guestfwd, hostfwd) or to one of the stack's own services (DNS over TCP).

A connection toward the host is answered only once the host ``connect()`` succeeded (libslirp does the
same): ECONNREFUSED becomes a RST, an unreachable network or host an ICMP unreachable quoting the SYN,
so the guest's ``connect()`` fails at once with the host's reason. A guest RST aborts the host socket
(SO_LINGER 0: the host peer sees ECONNRESET, not an orderly end), and a host reset becomes a RST to the
guest. Initial sequence numbers are keyed (RFC 6528), hostfwd source ports unpredictable.

Caps per guest (connections, connections still waiting for the host, guestfwd commands) and for the
stack (flows, pending connects) keep a flood from one guest from taking the host's file descriptors;
a memory budget over every connection's buffers shrinks windows under pressure (like Linux's
tcp_mem) instead of letting 256 connections x 2 MiB per guest grow unbounded.

Hot path (a guest data segment of an established connection): one dict lookup by 4-tuple, the
engine's header-predicted input, the in-order bytes handed to the I/O layer as one action, the ACKs
built as one ``join`` of Ethernet+IPv4 prefix, TCP header and payload view (one copy toward the guest).
"""

from __future__ import annotations

import errno
import hashlib
import struct
from typing import TYPE_CHECKING

from vmlan.engines.tcp import (
    TIME_WAIT,
    Closed,
    EndOfStream,
    Reset,
    TcpConnection,
)
from vmlan.engines.tcp.isn import EphemeralPorts, IsnGenerator
from vmlan.engines.tcp.params import MIN_MSS
from vmlan.engines.usernet import actions as A
from vmlan.engines.usernet.config import GuestForward, HostForward
from vmlan.engines.usernet.flows import INF, Flow
from vmlan.engines.usernet.icmp import Icmp
from vmlan.engines.usernet.l3 import DF, IPV4, IPV6, TTL
from vmlan.engines.usernet.l3 import ETH_IP as _ETH_IP
from vmlan.engines.usernet.services import DnsService, DnsTcpState
from vmlan.wire import BytesLike, WireError
from vmlan.wire.checksum import internet_checksum
from vmlan.wire.ethernet import ETH_P_IP
from vmlan.wire.icmp import ICMP_HOST_UNREACH, ICMP_NET_UNREACH
from vmlan.wire.vnet import FLAG_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, Offload

if TYPE_CHECKING:
    from collections.abc import Callable

    from vmlan.engines.usernet.core import Core
    from vmlan.engines.usernet.guests import Guest

__all__ = ["READ_CHUNK", "TcpFlow", "TcpNat"]

_HDR = struct.Struct("!HHIIBBHHH")
READ_CHUNK = 256 * 1024  # the most one host read offers (the send buffer grows to about twice it)
_ICMP_CODE = {
    errno.ENETUNREACH: ICMP_NET_UNREACH,
    errno.EHOSTUNREACH: ICMP_HOST_UNREACH,
    errno.ETIMEDOUT: ICMP_HOST_UNREACH,
    errno.EHOSTDOWN: ICMP_HOST_UNREACH,
    errno.EACCES: 13,  # communication administratively prohibited (RFC 1812)
    errno.EPERM: 13,
}
# ICMPv6 destination unreachable codes (RFC 4443 3.1): no route, administratively prohibited, address
_ICMP6_CODE = {
    errno.ENETUNREACH: 0,
    errno.EHOSTUNREACH: 3,
    errno.ETIMEDOUT: 3,
    errno.EHOSTDOWN: 3,
    errno.EACCES: 1,
    errno.EPERM: 1,
}
MEMORY_CHECK = 0.25  # seconds between looks at the TCP memory budget
MIN_BUFFER = 64 * 1024  # no connection's buffers shrink below this under pressure

_TCP_WRITE = A.TCP_WRITE

# A segment of at most one MSS whose checksum the port finishes (one shared Offload each: they are immutable).
_CSUM4 = Offload(FLAG_NEEDS_CSUM, GSO_NONE, 0, 0, 34, 16)
_CSUM6 = Offload(FLAG_NEEDS_CSUM, GSO_NONE, 0, 0, 54, 16)

# kinds of far side
NAT, GUESTFWD, HOSTFWD, SERVICE = 0, 1, 2, 3


class TcpFlow(Flow):
    """One guest TCP connection: the engine, where its frames go, and what is on the far side."""

    __slots__ = (
        "closed",
        "conn",
        "connecting",
        "dns",
        "far",
        "guest_ip",
        "ip_base",
        "key",
        "kind",
        "mac",
        "nat",
        "partial",
        "read_paused",
        "released",
        "rule",
        "smac",
        "syn_len",
        "syn_quote",
        "target",
        "v6",
    )

    def __init__(self, nat: TcpNat, guest: Guest | None, conn: TcpConnection, key: tuple[bytes, int, bytes, int],
                 kind: int, target: object, mac: bytes | None) -> None:
        super().__init__(guest)
        self.nat = nat
        self.conn = conn
        self.key = key
        self.guest_ip = key[0]
        self.far = key[2]
        self.kind = kind
        self.target = target
        self.mac = mac  # the guest's MAC (None: not resolved yet, hostfwd to a silent guest)
        self.smac = nat.core.source_mac(self.far)
        self.v6 = len(self.guest_ip) == 16
        self.ip_base = 0 if self.v6 else IPV4.header_sum(self.far, self.guest_ip, 6, DF)
        self.connecting = False
        self.partial = False  # conn.partial_checksum, which only TcpNat sets (kept here: read per data frame)
        self.read_paused = False
        self.closed = False
        self.released = False  # in TIME_WAIT: the host socket and the guest's share are given back
        self.rule = -1
        self.syn_quote = b""  # the first 8 bytes of the guest's SYN (the ICMP quote is built only if needed)
        self.syn_len = 0
        self.dns: DnsTcpState | None = None
        # No ``emit = self._emit`` kept on the flow: that bound method is a reference cycle, which made every
        # closed connection (engine, buffers, estimators: ~10 objects) garbage only the cyclic GC could free.

    def on_timer(self, now: float) -> None:
        conn = self.conn
        conn.handle_timer(now)
        self.nat.after(self, now)

    def _emit(self, header: bytes, payload: BytesLike) -> None:
        mac = self.mac
        core = self.nat.core
        if mac is None:
            owner = core.guests.ip_owner.get(self.guest_ip)
            if owner is None:
                core.counters.unresolved += 1
                if self.v6:
                    core.neighbour_solicit(self.guest_ip)
                else:
                    core.arp_request(self.guest_ip)
                return
            self.mac = mac = owner[1]
        n = len(header) + len(payload)
        if self.v6:
            prefix = IPV6.frame_prefix(mac, self.smac, self.far, self.guest_ip, 6, n)
            start, gso = 54, GSO_TCPV6
        else:
            ident = core.ident = (core.ident + 1) & 0xFFFF
            # IPV4.frame_prefix(mac, self.smac, self.far, self.guest_ip, 6, n, ident, self.ip_base, DF), inlined:
            # once per frame toward the guest.
            total = 20 + n
            s = self.ip_base + total + ident
            s = (s & 0xFFFF) + (s >> 16)
            s = (s & 0xFFFF) + (s >> 16)
            prefix = _ETH_IP.pack(mac, self.smac, ETH_P_IP, 0x45, 0, total, ident, DF, TTL, 6, ~s & 0xFFFF, self.far,
                                  self.guest_ip)
            start, gso = 34, GSO_TCPV4
        offload = None
        if payload:
            # A payload up to MIN_MSS fits any send MSS: the property is read only for one that may not.
            plen = len(payload)
            if self.partial:  # the port finishes the checksum (and segments)
                if plen > MIN_MSS and plen > self.conn.send_mss:
                    offload = Offload(FLAG_NEEDS_CSUM, gso, start + len(header), self.conn.send_mss, start, 16)
                else:
                    offload = _CSUM6 if self.v6 else _CSUM4
            elif plen > MIN_MSS and plen > self.conn.send_mss:
                offload = Offload(0, gso, start + len(header), self.conn.send_mss, start, 16)
        core.frames.append((b"".join((prefix, header, payload)), offload))


class TcpNat:
    __slots__ = (
        "by_key",
        "core",
        "dns",
        "fwd_count",
        "guestfwd",
        "icmp",
        "isn",
        "mem_timer",
        "ports",
        "pressure",
        "smb",
    )

    def __init__(self, core: Core, icmp: Icmp, dns: DnsService | None) -> None:
        self.core = core
        self.icmp = icmp
        self.dns = dns
        self.by_key: dict[tuple[bytes, int, bytes, int], TcpFlow] = {}
        self.guestfwd: dict[tuple[bytes, int], GuestForward] = {(g.addr, g.port): g for g in core.cfg.guestfwd}
        cfg = core.cfg
        self.smb = cfg.smbserver.packed if cfg.smb_dir is not None and cfg.smbserver is not None else None
        self.isn = IsnGenerator(core.secret)
        self.ports = EphemeralPorts(key=hashlib.blake2b(core.secret, digest_size=16, person=b"hostfwd").digest())
        self.fwd_count: dict[int, int] = {}
        self.pressure = False
        self.mem_timer = core.timer(self._check_memory)
        if dns is not None:
            dns.tcp_reply = self._service_reply

    # -- guest segments -------------------------------------------------------------------------------------
    def segment(self, guest: Guest, mac: bytes, src: bytes, dst: bytes, sport: int, dport: int, seg: memoryview,
                verified: bool, now: float) -> None:
        key = (src, sport, dst, dport)
        flow = self.by_key.get(key)
        if flow is not None:
            if flow.guest is not guest:
                if flow.guest is not None:
                    self.core.counters.bad_source += 1  # another port's connection: never
                    return
                self._adopt(flow, guest)
            flow.conn.receive_segment(seg, now, verified)
            self.after(flow, now)
            if seg[13] & 0x17 == 0x02 and self.by_key.get(key) is not flow:
                self._new(guest, mac, key, seg, verified, now)  # a new SYN ended the old one (TIME_WAIT)
            return
        self._new(guest, mac, key, seg, verified, now)

    def _adopt(self, flow: TcpFlow, guest: Guest) -> None:
        """A hostfwd flow opened before its guest was heard from now has an owner."""
        flow.guest = guest
        guest.flows.add(flow.fid)
        guest.tcp += 1

    def _new(self, guest: Guest, mac: bytes, key: tuple[bytes, int, bytes, int], seg: memoryview, verified: bool,
             now: float) -> None:
        core = self.core
        src, sport, dst, dport = key
        # Validated before it means anything, a RST included: a corrupted segment is dropped, not answered.
        off = (seg[12] >> 4) * 4
        v6 = len(src) == 16
        family = IPV6 if v6 else IPV4
        if off < 20 or off > len(seg) or sport == 0 or dport == 0 or (
            not verified and internet_checksum(seg, family.pseudo_sum(src, dst, 6) + len(seg))
        ):
            core.counters.bad_l4 += 1
            return
        flags = seg[13]
        if flags & 0x04:
            return  # RST for nothing we know
        if flags & 0x12 != 0x02:
            self._reset_for(src, dst, seg)  # not a bare SYN (RFC 9293 3.10.7.1)
            return
        if not (v6 or core.in_net(src)):
            core.counters.bad_l4 += 1
            return
        target: object
        service = False
        fwd = self.guestfwd.get((dst, dport))
        if dst == self.smb and dport in (445, 139):  # smb=DIR: an smbd of the host's for this connection
            kind, target = GUESTFWD, A.Service("smb")
        elif fwd is not None:
            kind, target = GUESTFWD, fwd.target
            busy = guest.cmd >= core.limits.cmd_per_guest or self._cmds() >= core.limits.max_cmd
            if isinstance(fwd.target, str) and busy:
                core.counters.tcp_refused_cap += 1
                self._reset_for(src, dst, seg)
                return
        elif (dst == core.dns_ip or (v6 and dst == core.dns6)) and dport == 53 and self.dns is not None:
            kind, target = SERVICE, None
            service = True
        elif core.cfg.restrict:
            core.counters.restricted += 1
            self._reset_for(src, dst, seg)
            return
        else:
            host = core.host_target6(dst) if v6 else core.host_target(dst)
            if host is None or (dst == core.dns_ip and dst != core.host_ip) or (v6 and dst == core.dns6):
                core.counters.no_route += 1
                self._reset_for(src, dst, seg)
                return
            kind, target = NAT, (host, dport)
        limits = core.limits
        waiting = kind != SERVICE
        if (
            guest.tcp >= limits.tcp_per_guest
            or len(core.flows) >= limits.max_flows
            or (waiting and guest.connecting >= limits.tcp_connecting_per_guest)
            or (waiting and self._connecting() >= limits.max_connecting)
        ):
            core.counters.tcp_refused_cap += 1
            self._reset_for(src, dst, seg)
            return
        isn = self.isn.isn(dst, dport, src, sport, now)
        try:
            params = core.tcp6 if v6 else core.cfg.tcp
            conn = TcpConnection.from_syn((dst, dport), (src, sport), seg, params, now, isn, verified=verified)
        except WireError:
            core.counters.bad_l4 += 1  # bad checksum or a malformed SYN: dropped, as any bad segment
            return
        flow = TcpFlow(self, guest, conn, key, kind, target, mac)
        self._register(flow, guest)
        if self.pressure:
            conn.set_buffer_limits(MIN_BUFFER, MIN_BUFFER)
        if guest.tso:
            conn.set_tso(65535 - 40 - 40)
            conn.set_partial_checksum(True)
            flow.partial = True
        if service:
            flow.dns = DnsTcpState()
            conn.accept(now)
            self.after(flow, now)
            return
        flow.connecting = True
        guest.connecting += 1
        flow.syn_quote = bytes(seg[:8])
        flow.syn_len = len(seg)
        if kind == GUESTFWD and isinstance(target, str):
            guest.cmd += 1
        core.actions.append((A.TCP_CONNECT, flow.fid, 6 if v6 else 4, target))

    def _register(self, flow: TcpFlow, guest: Guest | None) -> None:
        self.core.flows.add(flow)
        if not self.by_key and self.mem_timer.deadline == INF:
            self.core.flows.arm(self.mem_timer, self.core.now + MEMORY_CHECK)
        self.by_key[flow.key] = flow
        if guest is not None:
            guest.tcp += 1
        self.core.counters.tcp_flows += 1

    def _connecting(self) -> int:
        return sum(g.connecting for g in self.core.guests.by_port.values())

    def _cmds(self) -> int:
        return sum(g.cmd for g in self.core.guests.by_port.values())

    def _reset_for(self, src: bytes, dst: bytes, seg: memoryview) -> None:
        """RST for a segment that belongs to no connection (or that we refuse)."""
        if len(seg) < 20:
            return
        sport, dport, seq, ack, off, flags, _w, _c, _u = _HDR.unpack_from(seg)
        plen = max(0, len(seg) - (off >> 4) * 4)
        if flags & 0x10:
            rseq, rack, rflags = ack, 0, 0x04
        else:
            rseq = 0
            rack = (seq + plen + (1 if flags & 0x02 else 0) + (1 if flags & 0x01 else 0)) & 0xFFFFFFFF
            rflags = 0x14
        header = bytearray(_HDR.pack(dport, sport, rseq, rack, 5 << 4, rflags, 0, 0, 0))
        family = IPV6 if len(src) == 16 else IPV4
        header[16:18] = internet_checksum(header, family.pseudo_sum(dst, src, 6) + 20).to_bytes(2, "big")
        self.core.send_ip(dst, src, 6, header)

    # -- after any input: data, events, segments, timer -------------------------------------------------------
    def after(self, flow: TcpFlow, now: float) -> None:
        conn = flow.conn
        core = self.core
        data = conn.take_data()
        if data:
            if flow.dns is not None:
                conn.consume(len(data))
                if self.dns is not None:
                    self.dns.tcp_data(flow.fid, flow.dns, flow.guest, data, now)
            else:
                core.actions.append((_TCP_WRITE, flow.fid, data))
        event = conn.next_event()
        while event is not None:
            kind = type(event)  # the event classes are final: identity, not an isinstance() call per test
            if kind is EndOfStream:
                self._guest_eof(flow, now)
            elif kind is Reset:
                self._close(flow, abortive=True)
            elif kind is Closed:
                self._close(flow, abortive=False)
            event = conn.next_event()
        conn.transmit(now, flow._emit)
        if flow.closed:
            return
        if not flow.released and conn.state == TIME_WAIT:
            self._release(flow)
        if flow.read_paused and conn.send_space() > 0:
            flow.read_paused = False
            core.actions.append((A.TCP_RESUME, flow.fid))
        deadline = conn.get_timer()
        if deadline is None:
            deadline = INF
        if deadline != flow.deadline:
            core.flows.arm(flow, deadline)

    def _guest_eof(self, flow: TcpFlow, now: float) -> None:
        state = flow.dns
        if state is not None:
            state.eof = True
            if state.pending == 0:
                flow.conn.shutdown(now)
        else:
            self.core.actions.append((A.TCP_SHUTDOWN, flow.fid))

    def _close(self, flow: TcpFlow, abortive: bool) -> None:
        core = self.core
        if flow.closed:
            return
        flow.closed = True
        core.flows.remove(flow)
        if self.by_key.get(flow.key) is flow:
            del self.by_key[flow.key]
        if not flow.released:
            self._give_back(flow)
            if flow.kind != SERVICE:
                core.actions.append((A.TCP_CLOSE, flow.fid, abortive))

    def _release(self, flow: TcpFlow) -> None:
        """TIME_WAIT: both directions are finished. The engine lingers (to ACK a retransmitted FIN) with
        only the flow table's cap on it: the host socket closes now and the guest's share comes back, so a
        guest opening and closing connections fast is not refused for TIME_WAITs (Linux's tw buckets
        hold no socket either)."""
        flow.released = True
        self._give_back(flow)
        if flow.kind != SERVICE:
            self.core.actions.append((A.TCP_CLOSE, flow.fid, False))

    def _give_back(self, flow: TcpFlow) -> None:
        guest = flow.guest
        if guest is not None:
            guest.tcp -= 1
            if flow.connecting:
                guest.connecting -= 1
            if flow.kind == GUESTFWD and isinstance(flow.target, str):
                guest.cmd -= 1
        flow.connecting = False
        if flow.kind == HOSTFWD:
            self.fwd_count[flow.rule] -= 1

    def forget(self, flow: TcpFlow, now: float) -> None:
        """The guest left: reset the host side (the guest itself is gone)."""
        self._close(flow, abortive=True)

    # -- the host side ----------------------------------------------------------------------------------------
    def _flow(self, fid: int) -> TcpFlow | None:
        flow = self.core.flows.get(fid)
        return flow if type(flow) is TcpFlow else None  # TcpFlow has no subclasses

    def connected(self, fid: int, now: float) -> None:
        flow = self._flow(fid)
        if flow is None or not flow.connecting:
            return
        self._connect_done(flow)
        if flow.kind != HOSTFWD:
            flow.conn.accept(now)
        self.after(flow, now)

    def _connect_done(self, flow: TcpFlow) -> None:
        flow.connecting = False
        if flow.guest is not None:
            flow.guest.connecting -= 1

    def failed(self, fid: int, err: int, now: float) -> None:
        """The host connect() failed with ``err``: RST when refused, ICMP unreachable otherwise."""
        flow = self._flow(fid)
        if flow is None:
            return
        if flow.connecting:
            self._connect_done(flow)
        code = (_ICMP6_CODE if flow.v6 else _ICMP_CODE).get(err)
        if code is not None and flow.syn_quote:
            # Nothing was answered yet: forget the connection silently, tell the guest why by ICMP.
            router = self.core.host6 if flow.v6 else self.core.host_ip
            quote = Icmp.rebuild(flow.guest_ip, flow.far, 6, flow.syn_quote, flow.syn_len)
            self.icmp.unreachable(router, flow.guest_ip, code, quote)
        else:
            flow.conn.refuse(now)
            self.after(flow, now)
        self._close(flow, abortive=False)

    def fill(self, fid: int, reader: Callable[[memoryview], int], now: float, limit: int = READ_CHUNK,
             ended: Callable[[], bool] | None = None) -> int | None:
        """Read host bytes for the guest straight into the connection's send buffer (at most ``limit``).

        Returns the count (0: the host sent EOF, already handled), or None when the I/O layer must stop
        reading until TCP_RESUME (no room, or the connection is gone). ``reader`` errors propagate.
        ``ended``, asked after a read that returned data, says whether the reader also saw the host's
        EOF: the FIN then leaves with the data, in one segment (a request/response connection that the
        host closes after answering costs the guest one segment and one ACK less)."""
        flow = self.core.flows.get(fid)  # _flow(), inlined: once per host read
        if type(flow) is not TcpFlow:
            return None
        conn = flow.conn
        if conn.send_space() <= 0:
            flow.read_paused = True
            return None
        n = conn.fill_from(reader, limit, now)
        if n == 0 or (ended is not None and ended()):
            conn.shutdown(now)
        elif conn.send_space() <= 0:
            flow.read_paused = True
        self.after(flow, now)
        return n

    def send_space(self, fid: int) -> int:
        flow = self._flow(fid)
        return flow.conn.send_space() if flow is not None else 0

    def send(self, fid: int, data: BytesLike, now: float) -> int:
        """Host bytes for the guest from a buffer (guestfwd pipes); returns how many were taken."""
        flow = self._flow(fid)
        if flow is None:
            return len(data)
        taken = flow.conn.send(data, now)
        if taken < len(data) or flow.conn.send_space() == 0:
            flow.read_paused = True
        self.after(flow, now)
        return taken

    def written(self, fid: int, n: int, now: float) -> None:
        """``n`` bytes the guest sent reached the host socket: open the guest's window again.

        Called once per guest segment on the bulk path, so it does only what consuming can cause: a
        window update (the engine decides whether one is due) and a new timer."""
        flow = self.core.flows.get(fid)
        if type(flow) is not TcpFlow:
            return
        conn = flow.conn
        conn.consume(n)
        if conn.transmit(now, flow._emit):
            deadline = conn.get_timer()
            if deadline is None:
                deadline = INF
            if deadline != flow.deadline:
                self.core.flows.arm(flow, deadline)

    def eof(self, fid: int, now: float) -> None:
        flow = self._flow(fid)
        if flow is not None:
            flow.conn.shutdown(now)
            self.after(flow, now)

    def reset(self, fid: int, now: float) -> None:
        """The host socket failed or was reset: RST to the guest."""
        flow = self._flow(fid)
        if flow is not None:
            flow.conn.abort(now)
            self.after(flow, now)
            self._close(flow, abortive=False)

    # -- host forwards ----------------------------------------------------------------------------------------
    def hostfwd(self, index: int, rule: HostForward, client: tuple[str, int], now: float) -> int | None:
        """A host client connected to a hostfwd port: dial the guest from the client's address (the
        gateway for loopback clients). Returns the flow id, or None when refused (cap, no port)."""
        core = self.core
        if self.fwd_count.get(index, 0) >= core.limits.fwd_clients or len(core.flows) >= core.limits.max_flows:
            core.counters.tcp_refused_cap += 1
            return None
        src = core.guest_source(client[0])
        owner = core.guests.lookup(rule.guest_addr)
        guest, mac = owner if owner is not None else (None, None)
        if guest is not None and guest.tcp >= core.limits.tcp_per_guest:
            core.counters.tcp_refused_cap += 1
            return None
        port = self.ports.pick(src, rule.guest_addr, rule.guest_port,
                               lambda p: (rule.guest_addr, rule.guest_port, src, p) in self.by_key)
        if port is None:
            return None
        key = (rule.guest_addr, rule.guest_port, src, port)
        params = core.tcp6 if len(src) == 16 else core.cfg.tcp
        conn = TcpConnection.connect((src, port), (rule.guest_addr, rule.guest_port), params, now,
                                     self.isn.isn(src, port, rule.guest_addr, rule.guest_port, now))
        flow = TcpFlow(self, guest, conn, key, HOSTFWD, None, mac)
        flow.rule = index
        self._register(flow, guest)
        self.fwd_count[index] = self.fwd_count.get(index, 0) + 1
        if self.pressure:
            conn.set_buffer_limits(MIN_BUFFER, MIN_BUFFER)
        if guest is not None and guest.tso:
            conn.set_tso(65535 - 40 - 40)
            conn.set_partial_checksum(True)
            flow.partial = True
        self.after(flow, now)
        return flow.fid

    # -- the stack's own TCP services -------------------------------------------------------------------------
    def _service_reply(self, fid: int, data: bytes, last: bool, now: float) -> None:
        flow = self._flow(fid)
        if flow is None or flow.dns is None:
            return
        state = flow.dns
        state.pending = max(0, state.pending - 1)
        if flow.conn.send(data, now) < len(data):
            flow.conn.abort(now)  # a guest that never reads: a cut message would corrupt the stream
        elif state.eof and state.pending == 0:
            flow.conn.shutdown(now)
        self.after(flow, now)

    # -- memory budget ----------------------------------------------------------------------------------------
    def _check_memory(self, now: float) -> None:
        """Like Linux's tcp_mem: above the budget, every connection's buffers shrink toward an equal share
        (never below MIN_BUFFER); below half of it, they get their configured size back."""
        core = self.core
        flows = list(self.by_key.values())
        if flows:
            used = sum(f.conn.buffered for f in flows)
            budget = core.limits.mem_budget
            if used > budget:
                share = max(MIN_BUFFER, budget // len(flows))
                if not self.pressure:
                    core.counters.memory_pressure += 1
                self.pressure = True
                for f in flows:
                    f.conn.set_buffer_limits(share, share)
            elif self.pressure and used < budget // 2:
                self.pressure = False
                p = core.cfg.tcp
                for f in flows:
                    f.conn.set_buffer_limits(p.rcv_buffer, p.snd_buffer)
        if flows:
            core.flows.arm(self.mem_timer, now + MEMORY_CHECK)
        else:
            self.pressure = False  # nothing holds memory: the next connection starts at full size
