"""The user-mode network stack (QEMU's ``-netdev user``, libslirp's model), as a sans-IO engine.

The stack sits on a hub like any port. It plays the virtual hosts of the guests' network (the gateway
``host``, the resolver ``dns``, guestfwd servers), answers ARP for them, serves DHCP and DNS, answers pings
to them, and translates the guests' TCP, UDP and ICMP echo toward the host into host socket operations.
Several guests share one stack; each is known by the port its frames arrive on (guests.py).

Like every engine here it never touches a socket or a clock. Frames come in through
``receive_frame(frame, port, offload, now)``; frames for the hub come out of :meth:`take_frames` and
socket work out of :meth:`take_actions` (tuples, actions.py); socket results go back in through the
``tcp_*``, ``udp_*``, ``hostfwd_*``, ``dns_answer`` and ``ping_reply`` methods. ``get_timer()`` and
``handle_timer(now)`` drive every timeout through the one flow table (flows.py).

The parts, each in its module: guests.py (identity), neighbours.py (ARP), l3.py (IPv4, the family
interface), flows.py (flow table and timers), services.py (DHCP, DNS and the registry), tcpnat.py,
udp.py, icmp.py. A frame never raises out of here: an internal error costs that frame and is counted per
kind (``faults``).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from vmlan.engines.dhcp import DhcpServer, Lease
from vmlan.engines.dns import DnsForwarder
from vmlan.engines.reassembly import Reassembler
from vmlan.engines.tftp import FileSource, TftpConfig, TftpServer
from vmlan.engines.usernet.actions import Action
from vmlan.engines.usernet.config import HostForward, StackConfig
from vmlan.engines.usernet.core import Core
from vmlan.engines.usernet.flows import INF
from vmlan.engines.usernet.guests import Guest
from vmlan.engines.usernet.icmp import Icmp, PingFlow
from vmlan.engines.usernet.l3 import ETH_IP, ETH_IP6, ETH_IP_PORTS, IPV4, IPV6
from vmlan.engines.usernet.neighbours import Ndp, Neighbours
from vmlan.engines.usernet.services import (
    DHCP6_SERVERS,
    DhcpService,
    Dhcpv6Service,
    DnsService,
    Services,
    TftpService,
)
from vmlan.engines.usernet.tcpnat import READ_CHUNK, TcpFlow, TcpNat
from vmlan.engines.usernet.udp import Udp, UdpFlow, UdpFwdSession
from vmlan.wire import BytesLike, WireError
from vmlan.wire.checksum import internet_checksum
from vmlan.wire.ipv4 import Ipv4Header
from vmlan.wire.vnet import FLAG_DATA_VALID, FLAG_NEEDS_CSUM, Offload

__all__ = ["UserStack"]

_BROADCAST = b"\xff" * 6
_ZERO4 = b"\0\0\0\0"
_ALL_ONES4 = b"\xff\xff\xff\xff"
_UNSPECIFIED6 = b"\0" * 16
_L4_VOUCHED = FLAG_DATA_VALID | FLAG_NEEDS_CSUM
_ETH = struct.Struct("!6s6sH")
_PORTS = struct.Struct("!HH")


class UserStack:
    __slots__ = ("_next_rule", "_reassembly_timer", "core", "counters", "dhcp", "dhcp6", "dns", "faults", "flows",
                 "guests", "hostfwd", "icmp", "ndp", "neighbours", "reassembly", "services", "tcp", "tftp", "udp")

    def __init__(
        self,
        cfg: StackConfig,
        leases: Iterable[Lease] = (),
        *,
        secret: bytes | None = None,
        port_tso: Callable[[Hashable], bool] | None = None,
        tftp_files: FileSource | None = None,
    ) -> None:
        """``secret`` keys ISNs and ports (random if None); ``port_tso(port)`` says whether a port takes
        GSO frames (the I/O layer asks the port object)."""
        core = self.core = Core(cfg, secret, port_tso)
        self.flows = core.flows
        self.guests = core.guests
        self.counters = core.counters
        self.faults = core.faults
        self.services = Services()
        self.icmp = Icmp(core)
        self.udp = Udp(core, self.icmp)
        self.neighbours = Neighbours(core)
        self.dhcp = DhcpService(core, DhcpServer(cfg.dhcp, leases)) if cfg.dhcp is not None else None
        self.dns = None
        if cfg.dns_config is not None and (not cfg.restrict or cfg.restrict_local_dns):
            dns_cfg = cfg.dns_config
            if cfg.restrict:  # the local names only: nothing leaves the stack
                dns_cfg = dataclasses.replace(dns_cfg, upstreams=())
            self.dns = DnsService(core, DnsForwarder(dns_cfg))
        self.tcp = TcpNat(core, self.icmp, self.dns)
        self.hostfwd: dict[int, HostForward] = dict(enumerate(cfg.hostfwd))
        self._next_rule = len(cfg.hostfwd)
        limits = cfg.limits
        # One engine for both families: a guest's fragment caps are shared by its IPv4 and IPv6.
        self.reassembly = Reassembler(max_datagrams_per_owner=limits.frag_datagrams_per_guest,
                                      max_bytes_per_owner=limits.frag_bytes_per_guest)
        core.counters.reassembly = self.reassembly.counters
        self._reassembly_timer = core.timer(self._reassembly_expired)
        if self.dhcp is not None and cfg.ipv4:
            for addr in (core.host_ip, core.bcast_ip, _ALL_ONES4):
                self.services.register_udp(addr, 67, self.dhcp.handle)
        if self.dns is not None:
            self.services.register_udp(core.dns_ip, 53, self.dns.handle_udp)
        self.tftp: TftpService | None = None
        if tftp_files is not None:
            self.tftp = TftpService(core, TftpServer(tftp_files, TftpConfig(
                transfer_ports=None, max_sessions_per_guest=cfg.limits.tftp_per_guest)))
            self.services.register_udp(core.host_ip, 69, self.tftp.handle)
            if cfg.ipv6:
                self.services.register_udp(core.host6, 69, self.tftp.handle)
        self.ndp: Ndp | None = None
        self.dhcp6: Dhcpv6Service | None = None
        if cfg.ipv6:
            self.ndp = Ndp(core)
            self.dhcp6 = Dhcpv6Service(core, cfg.dhcp.dnssearch if cfg.dhcp is not None else ())
            self.services.register_udp(DHCP6_SERVERS, 547, self.dhcp6.handle)
            if self.dns is not None:
                self.services.register_udp(core.dns6, 53, self.dns.handle_udp)

    # -- outputs --------------------------------------------------------------------------------------------
    def take_frames(self) -> list[tuple[bytes, Offload | None]]:
        core = self.core
        frames, core.frames = core.frames, []
        return frames

    def take_actions(self) -> list[Action]:
        core = self.core
        actions, core.actions = core.actions, []
        return actions

    # -- frames from the hub ------------------------------------------------------------------------------
    def receive_frame(self, frame: BytesLike, port: Hashable, offload: Offload | None, now: float) -> None:
        """A frame from ``port``'s peer (``frame`` is only valid during the call). Never raises.

        The Ethernet dispatch is written inside the try block rather than called from it: one call less
        per frame (a try block costs nothing on CPython 3.11+ until something is raised)."""
        try:
            core = self.core
            core.now = now
            c = core.counters
            c.frames_in += 1
            n = len(frame)
            if n >= 38:
                # The common case in one unpack: Ethernet, IPv4 and the transport ports.
                dmac, mac, ethertype, vihl, _tos, total, _ident, frag, _ttl, proto, _csum, src, dst, sport, dport = (
                    ETH_IP_PORTS.unpack_from(frame)
                )
            elif n >= 14:
                dmac, mac, ethertype = _ETH.unpack_from(frame)
            else:
                c.unsupported += 1
                return
            d0 = dmac[0]
            if d0 & 1:
                if dmac != _BROADCAST and (dmac[:2] != b"\x33\x33" or ethertype != 0x86DD):
                    c.not_for_us += 1  # multicast but IPv6's (NDP, DHCPv6) and broadcast
                    return
            elif d0 != 0x52 or (dmac[1] != 0x55 and dmac[1] != 0x56):
                c.not_for_us += 1  # another guest's unicast, seen because hubs flood
                return
            guests = core.guests
            guest = guests.by_port.get(port)
            if guest is None:
                guest = guests.guest(port, str(getattr(port, "name", port)), core.port_tso(port))
            if mac not in guest.macs and not guests.admit(guest, mac):
                c.bad_source += 1
                return
            if ethertype != 0x0800 or not core.cfg.ipv4:
                if ethertype == 0x86DD and core.cfg.ipv6:
                    self._ipv6(guest, mac, frame, offload, now)
                elif ethertype == 0x0806 and core.cfg.ipv4:
                    self.neighbours.arp_input(guest, mac, frame)
                else:
                    c.unsupported += 1
                return
            if n < 38:
                if n < 34:
                    c.bad_ipv4 += 1
                    return
                _d, _s, _t, vihl, _tos, total, _ident, frag, _ttl, proto, _csum, src, dst = ETH_IP.unpack_from(frame)
                sport = dport = 0
            self._ipv4(guest, mac, frame, offload, now, vihl, total, frag, proto, src, dst, sport, dport)
        except Exception as exc:
            self.faults.record(_frame_kind(frame), exc)

    def _ipv4(self, guest: Guest, mac: bytes, frame: BytesLike, offload: Offload | None, now: float, vihl: int,
              total: int, frag: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int) -> None:
        core = self.core
        ihl = 20
        if vihl != 0x45:
            ihl = (vihl & 0x0F) * 4
            if vihl >> 4 != 4 or ihl < 20:
                core.counters.bad_ipv4 += 1
                return
        end = 14 + total
        if total < ihl or end > len(frame):
            core.counters.bad_ipv4 += 1
            return
        view = memoryview(frame)
        # RFC 1071: a correct header sums to 0xFFFF, i.e. to 0 modulo 0xFFFF (a zero header cannot
        # get here: its version nibble would be 0).
        if int.from_bytes(view[14 : 14 + ihl], "big") % 0xFFFF:
            core.counters.bad_ipv4 += 1
            return
        l4 = view[14 + ihl : end]
        if ihl != 20:  # the one unpack read the ports at offset 20: inside the options
            sport = dport = 0
            if len(l4) >= 4:
                sport = (l4[0] << 8) | l4[1]
                dport = (l4[2] << 8) | l4[3]
        if guest.ip_of.get(mac) != src:
            if src == _ZERO4:
                if proto != 17 or dport != 67 or frag & 0x3FFF:
                    core.counters.bad_source += 1
                    return
            elif not core.guests.source_ok(guest, mac, src):
                core.counters.bad_source += 1
                return
        if frag & 0x3FFF:
            self._fragment(guest, mac, frame, now)
            return
        vouched = offload is not None and bool(offload.flags & _L4_VOUCHED)
        if proto == 6:
            if len(l4) < 20:
                core.counters.bad_l4 += 1
                return
            self.tcp.segment(guest, mac, src, dst, sport, dport, l4, vouched, now)
        elif proto == 17:
            self._udp(guest, mac, src, dst, sport, dport, l4, vouched, now)
        elif proto == 1:
            self.icmp.input(guest, src, dst, l4, vouched, now)
        else:
            core.counters.unsupported += 1

    def _ipv6(self, guest: Guest, mac: bytes, frame: BytesLike, offload: Offload | None, now: float) -> None:
        """An IPv6 datagram (RFC 8200): the header, hop-by-hop and destination options skipped (MLD
        carries a router alert), fragments reassembled (:meth:`_fragment6`), routing headers dropped and
        counted."""
        core = self.core
        n = len(frame)
        if n < 54:
            core.counters.bad_ipv4 += 1
            return
        _d, _s, _t, vtf, plen, nh, hop_limit, src, dst = ETH_IP6.unpack_from(frame)
        end = 54 + plen
        if vtf >> 28 != 6 or end > n:
            core.counters.bad_ipv4 += 1
            return
        off = 54
        for _ in range(4):
            if nh not in (0, 60):
                break
            if off + 8 > end:
                core.counters.bad_ipv4 += 1
                return
            nh, length = frame[off], (frame[off + 1] + 1) * 8
            off += length
        if nh in (0, 60, 43) or off > end:
            core.counters.unsupported += 1  # routing headers, an option chain too long
            return
        l4 = memoryview(frame)[off:end]
        ndp = self.ndp
        if ndp is not None and ndp.timer.deadline == INF:
            ndp.start(now)  # unsolicited router advertisements from the first IPv6 frame on
        if src == _UNSPECIFIED6:
            if nh != 58 or len(l4) < 1 or l4[0] != 135:
                core.counters.bad_source += 1  # only duplicate address detection comes from ::
                return
        else:
            addrs = guest.ip6_of.get(mac)
            if (addrs is None or src not in addrs) and not core.guests.source_ok(guest, mac, src):
                core.counters.bad_source += 1
                return
        if nh == 44:
            self._fragment6(guest, mac, frame, end, now)
            return
        vouched = offload is not None and bool(offload.flags & _L4_VOUCHED)
        if nh == 58:
            if len(l4) < 4 or (not vouched and internet_checksum(l4, IPV6.pseudo_sum(src, dst, 58) + len(l4))):
                core.counters.bad_l4 += 1
                return
            if 133 <= l4[0] <= 137:
                if self.ndp is not None:
                    self.ndp.input(guest, mac, src, dst, hop_limit, l4)
            elif dst[0] != 0xFF and len(l4) >= 8:
                self.icmp.input6(guest, src, dst, l4, now)
            else:
                core.counters.unsupported += 1  # MLD reports and the like: nothing to do here
            return
        if len(l4) < 8:
            core.counters.bad_l4 += 1
            return
        sport = (l4[0] << 8) | l4[1]
        dport = (l4[2] << 8) | l4[3]
        if nh == 17:
            if l4[6] == 0 and l4[7] == 0:
                core.counters.bad_l4 += 1  # RFC 8200 8.1: a zero UDP checksum is not allowed over IPv6
                return
            self._udp(guest, mac, src, dst, sport, dport, l4, vouched, now)
        elif nh == 6 and dst[0] != 0xFF:
            if len(l4) < 20:
                core.counters.bad_l4 += 1
                return
            self.tcp.segment(guest, mac, src, dst, sport, dport, l4, vouched, now)
        else:
            core.counters.unsupported += 1

    def _fragment(self, guest: Guest, mac: bytes, frame: BytesLike, now: float) -> None:
        """A fragment (already identity-checked): reassemble within the guest's share, then go on."""
        core = self.core
        core.counters.fragments += 1
        try:
            header, start, end = Ipv4Header.parse(frame, 14)
        except WireError:
            core.counters.bad_ipv4 += 1
            return
        datagram = self.reassembly.feed(guest, header, memoryview(frame)[start:end], now)
        deadline = self.reassembly.get_timer()
        core.flows.arm(self._reassembly_timer, deadline if deadline is not None else INF)
        if datagram is not None:
            whole = bytes(frame[:14]) + datagram
            _d, _s, _t, vihl, _tos, total, _ident, frag, _ttl, proto, _csum, src, dst = ETH_IP.unpack_from(whole)
            l4 = 14 + (vihl & 0x0F) * 4
            sport, dport = _PORTS.unpack_from(whole, l4) if len(whole) >= l4 + 4 else (0, 0)
            if not frag & 0x3FFF:
                self._ipv4(guest, mac, whole, None, now, vihl, total, frag, proto, src, dst, sport, dport)

    def _fragment6(self, guest: Guest, mac: bytes, frame: BytesLike, end: int, now: float) -> None:
        """An IPv6 fragment (identity checked; ``end`` where its datagram ends in ``frame``): reassembled
        within the guest's share, then the whole datagram goes through :meth:`_ipv6` with nothing vouched
        (offload flags spoke of the fragment). The engine refuses first fragments whose header chain holds
        another Fragment header, so this never recurses twice."""
        core = self.core
        core.counters.fragments += 1
        core.counters.fragments6 += 1
        datagram = self.reassembly.feed6(guest, memoryview(frame)[14:end], now)
        deadline = self.reassembly.get_timer()
        core.flows.arm(self._reassembly_timer, deadline if deadline is not None else INF)
        if datagram is not None:
            self._ipv6(guest, mac, bytes(frame[:14]) + datagram, None, now)

    def _reassembly_expired(self, now: float) -> None:
        core = self.core
        for expired in self.reassembly.handle_timer(now):
            quote = expired.quote
            if quote[0] >> 4 == 6:  # RFC 8200 4.5: ICMPv6 time exceeded (type 3), code 1, to the sender
                self.icmp.error6(core.host6, quote[8:24], 3, 1, 0, quote)
            elif len(quote) >= 28:  # RFC 792: time exceeded in reassembly, to the sender
                self.icmp.time_exceeded(core.host_ip, quote[12:16], 1, quote)
        deadline = self.reassembly.get_timer()
        core.flows.arm(self._reassembly_timer, deadline if deadline is not None else INF)

    def _udp(self, guest: Guest, mac: bytes, src: bytes, dst: bytes, sport: int, dport: int, l4: memoryview,
             vouched: bool, now: float) -> None:
        core = self.core
        if len(l4) < 8:
            core.counters.bad_l4 += 1
            return
        length = (l4[4] << 8) | l4[5]
        if length < 8 or length > len(l4):
            core.counters.bad_l4 += 1
            return
        if not vouched and (l4[6] or l4[7]):
            family = IPV6 if len(src) == 16 else IPV4
            s = internet_checksum(l4[:length], family.pseudo_sum(src, dst, 17) + length)
            if s not in (0, 0xFFFF):
                core.counters.bad_l4 += 1
                return
        data = l4[8:length]
        handler = self.services.udp.get((dst, dport))
        if handler is not None:
            handler(guest, mac, src, sport, dst, data, now)
            return
        if src == _ZERO4:
            core.counters.bad_source += 1
            return
        self.udp.input(guest, src, dst, sport, dport, data, now)

    def port_left(self, port: Hashable, now: float) -> None:
        """``port`` left the hub: forget its guest and close everything it held."""
        self.core.now = now
        guest = self.guests.forget(port)
        if guest is None:
            return
        self.reassembly.forget_owner(guest)
        for fid in list(guest.flows):
            flow = self.flows.get(fid)
            try:
                if isinstance(flow, TcpFlow):
                    self.tcp.forget(flow, now)
                elif isinstance(flow, UdpFlow):
                    self.udp.close(flow)
                elif isinstance(flow, UdpFwdSession):
                    self.udp.close_session(flow)
                elif isinstance(flow, PingFlow):
                    self.icmp.close(flow)
            except Exception as exc:
                self.faults.record("port left", exc)

    # -- timers ---------------------------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        return self.flows.next_deadline()

    def handle_timer(self, now: float) -> None:
        self.core.now = now
        for flow in self.flows.pop_due(now):
            try:
                flow.on_timer(now)
            except Exception as exc:
                self.faults.record(f"timer {type(flow).__name__}", exc)

    # -- results from the host side ---------------------------------------------------------------------------
    def _guarded(self, kind: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            self.faults.record(kind, exc)
            return None

    def tcp_connected(self, fid: int, now: float) -> None:
        self.core.now = now
        self._guarded("tcp connected", self.tcp.connected, fid, now)

    def tcp_failed(self, fid: int, err: int, now: float) -> None:
        self.core.now = now
        self._guarded("tcp failed", self.tcp.failed, fid, err, now)

    def tcp_fill(self, fid: int, reader: Callable[[memoryview], int], now: float,
                 limit: int = READ_CHUNK, ended: Callable[[], bool] | None = None) -> int | None:
        """Host bytes for the guest via ``reader`` (``sock.recv_into``, offered at most ``limit`` bytes);
        errors from reader propagate. ``ended()`` True after a read with data: the host's EOF came too."""
        self.core.now = now
        return self.tcp.fill(fid, reader, now, limit, ended)

    def tcp_send(self, fid: int, data: BytesLike, now: float) -> int:
        self.core.now = now
        taken = self._guarded("tcp send", self.tcp.send, fid, data, now)
        return len(data) if taken is None else int(taken)

    def tcp_send_space(self, fid: int) -> int:
        return self.tcp.send_space(fid)

    def tcp_written(self, fid: int, n: int, now: float) -> None:
        self.core.now = now
        try:  # _guarded(), inlined: once per guest segment
            self.tcp.written(fid, n, now)
        except Exception as exc:
            self.faults.record("tcp written", exc)

    def tcp_eof(self, fid: int, now: float) -> None:
        self.core.now = now
        self._guarded("tcp eof", self.tcp.eof, fid, now)

    def tcp_reset(self, fid: int, now: float) -> None:
        self.core.now = now
        self._guarded("tcp reset", self.tcp.reset, fid, now)

    def udp_received(self, fid: int, data: BytesLike, src: tuple[str, int], now: float) -> None:
        self.core.now = now
        self._guarded("udp received", self.udp.received, fid, data, src, now)

    def udp_error(self, fid: int, dst: tuple[str, int], code: int, now: float) -> None:
        self.core.now = now
        self._guarded("udp error", self.udp.error, fid, dst, code, now)

    # -- host forwards (QEMU's hostfwd=, hostfwd_add, hostfwd_remove) -----------------------------------------
    def add_hostfwd(self, rule: HostForward) -> int:
        """A new forwarding rule; returns its id (the I/O layer listens, then reports clients by id)."""
        ident = self._next_rule
        self._next_rule += 1
        self.hostfwd[ident] = rule
        return ident

    def remove_hostfwd(self, ident: int) -> None:
        """The rule's listener is gone: no new clients. Its TCP connections live on (as in QEMU); its UDP
        sessions end, since their answers would go out of the closed socket."""
        if self.hostfwd.pop(ident, None) is not None:
            self.udp.close_rule(ident)

    def hostfwd_tcp(self, index: int, client: tuple[str, int], now: float) -> int | None:
        self.core.now = now
        rule = self.hostfwd.get(index)
        if rule is None:
            return None
        fid = self._guarded("hostfwd tcp", self.tcp.hostfwd, index, rule, client, now)
        return fid if isinstance(fid, int) else None

    def hostfwd_udp(self, index: int, client: tuple[str, int], data: BytesLike, now: float) -> None:
        self.core.now = now
        rule = self.hostfwd.get(index)
        if rule is not None:
            self._guarded("hostfwd udp", self.udp.hostfwd, index, rule, client, data, now)

    def dns_answer(self, payload: bytes, upstream: tuple[str, int], tcp: bool, now: float) -> None:
        self.core.now = now
        if self.dns is not None:
            self._guarded("dns answer", self.dns.answer, payload, upstream, tcp, now)

    def ping_reply(self, fid: int, seq: int, data: BytesLike, now: float) -> None:
        self.core.now = now
        self._guarded("ping reply", self.icmp.reply, fid, seq, data, now)

    # -- monitor --------------------------------------------------------------------------------------------
    def leases(self) -> list[Lease]:
        return self.dhcp.leases() if self.dhcp is not None else []

    @property
    def cfg(self) -> StackConfig:
        return self.core.cfg


def _frame_kind(frame: BytesLike) -> str:
    """A fault's kind from the frame that caused it: "ipv4/6", "arp", ..."""
    try:
        ethertype = (frame[12] << 8) | frame[13]
        if ethertype == 0x0800 and len(frame) > 23:
            return {6: "tcp input", 17: "udp input", 1: "icmp input"}.get(frame[23], "ipv4 input")
        return "arp input" if ethertype == 0x0806 else "frame input"
    except IndexError:
        return "frame input"
