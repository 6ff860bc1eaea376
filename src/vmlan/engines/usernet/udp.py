"""UDP NAT for the user stack, and the sessions of UDP host forwards.

One host socket per guest source (address, port), whatever the destination: libslirp's
endpoint-independent mapping, which keeps STUN, games and DNS resolvers that reuse a socket working.
Flows expire after ``udp_timeout`` idle seconds (``udp_dns_timeout`` when they were opened toward port
53), and each guest has a cap: at the cap, a new flow takes the place of the guest's longest-idle one when
that has been idle for ``EVICT_IDLE`` seconds (a guest that once used its 256 ports is not locked out
for the 240 s timeout), otherwise the datagram is dropped (so a flood of new source ports cannot make
the stack churn host sockets). A host socket's ICMP errors (port unreachable from a closed host port,
host unreachable) come back to the guest as ICMP, so its ``recv`` fails at once (ECONNREFUSED) instead
of timing out; so does a datagram to a virtual host (the DNS address, a guestfwd or SMB address, the
IPv6 router) at a port no service listens on gets a port unreachable (no host socket is opened).

A UDP hostfwd rule delivers each host client's datagrams to the guest from the client's address
(loopback clients appear as the gateway); a session per (guest, client) remembers where the guest's
answers go, bounded per rule (the oldest session makes room).
"""

from __future__ import annotations

import struct
from itertools import islice
from typing import TYPE_CHECKING

from vmlan.engines.usernet import actions as A
from vmlan.engines.usernet.config import HostForward
from vmlan.engines.usernet.flows import Flow
from vmlan.engines.usernet.icmp import Icmp
from vmlan.wire import BytesLike

if TYPE_CHECKING:
    from vmlan.engines.usernet.core import Core
    from vmlan.engines.usernet.guests import Guest

__all__ = ["Udp", "UdpFlow", "UdpFwdSession"]

_UDP = struct.Struct("!HHHH")
EVICT_IDLE = 10.0  # seconds a flow must have been idle before a new flow of its guest may take its place
_EVICT_SCAN = 16  # oldest flows looked at per eviction; the busy ones among them move to the back


class UdpFlow(Flow):
    __slots__ = ("guest_ip", "guest_port", "last_dst", "timeout", "udp")

    def __init__(self, udp: Udp, guest: Guest, guest_ip: bytes, guest_port: int, timeout: float) -> None:
        super().__init__(guest)
        self.udp = udp
        self.guest_ip = guest_ip
        self.guest_port = guest_port
        self.timeout = timeout
        self.last_dst: tuple[str, int] = ("", 0)

    def on_timer(self, now: float) -> None:
        self.udp.close(self)


class UdpFwdSession(Flow):
    """A host client of a UDP hostfwd rule, as the guest sees it: (guest, guest port, src, sport)."""

    __slots__ = ("client", "key", "rule", "timeout", "udp")

    def __init__(self, udp: Udp, guest: Guest | None, rule: int, client: tuple[str, int],
                 key: tuple[bytes, int, bytes, int], timeout: float) -> None:
        super().__init__(guest)
        self.udp = udp
        self.rule = rule
        self.client = client
        self.key = key
        self.timeout = timeout

    def on_timer(self, now: float) -> None:
        self.udp.close_session(self)


class Udp:
    __slots__ = ("core", "flows_by_src", "fwd_count", "icmp", "sessions")

    def __init__(self, core: Core, icmp: Icmp) -> None:
        self.core = core
        self.icmp = icmp
        self.flows_by_src: dict[tuple[bytes, int], UdpFlow] = {}
        self.sessions: dict[tuple[bytes, int, bytes, int], UdpFwdSession] = {}
        self.fwd_count: dict[int, int] = {}

    def input(self, guest: Guest, src: bytes, dst: bytes, sport: int, dport: int, data: memoryview, now: float) -> None:
        """A guest datagram no service claimed: a hostfwd session's answer, or NAT toward the host."""
        core = self.core
        if self.sessions:
            session = self.sessions.get((src, sport, dst, dport))
            if session is not None:
                core.flows.arm(session, now + session.timeout)
                core.actions.append((A.UDP_FWD_REPLY, session.rule, session.client, bytes(data)))
                return
        if core.cfg.restrict:
            core.counters.restricted += 1
            return
        v6 = len(dst) == 16
        target = core.host_target6(dst) if v6 else core.host_target(dst)
        if target is None or dport == 0:
            core.counters.no_route += 1
            if dport and dst in core.virtual and dst not in (core.host_ip, core.host6):  # no service there
                head = _UDP.pack(sport, dport, 8 + len(data), 0)
                self.icmp.unreachable(dst, src, 4 if v6 else 3, Icmp.rebuild(src, dst, 17, head, 8 + len(data)))
            return
        key = (src, sport)
        flow = self.flows_by_src.get(key)
        if flow is None:
            if guest.udp >= core.limits.udp_per_guest and not self.evict(guest, now):
                core.counters.udp_dropped_cap += 1
                return
            if len(core.flows) >= core.limits.max_flows:
                core.counters.udp_dropped_cap += 1
                return
            timeout = core.cfg.udp_dns_timeout if dport == 53 else core.cfg.udp_timeout
            flow = UdpFlow(self, guest, src, sport, timeout)
            core.flows.add(flow)
            guest.udp += 1
            guest.udp_flows[flow] = None
            self.flows_by_src[key] = flow
            core.counters.udp_flows += 1
        core.flows.arm(flow, now + flow.timeout)
        flow.last_dst = (target, dport)
        core.actions.append((A.UDP_SEND, flow.fid, 6 if v6 else 4, (target, dport), bytes(data)))

    def received(self, fid: int, data: BytesLike, src: tuple[str, int], now: float) -> None:
        """A datagram arrived on a flow's host socket."""
        flow = self.core.flows.get(fid)
        if not isinstance(flow, UdpFlow):
            return
        core = self.core
        core.flows.arm(flow, now + flow.timeout)
        core.send_udp(core.guest_source(src[0]), src[1], flow.guest_ip, flow.guest_port, data)

    def error(self, fid: int, dst: tuple[str, int], code: int, now: float) -> None:
        """The flow's host socket got an ICMP destination-unreachable ``code`` for a datagram to ``dst``
        (ICMPv6's own code on an IPv6 flow)."""
        flow = self.core.flows.get(fid)
        if not isinstance(flow, UdpFlow):
            return
        far = self.core.guest_source(dst[0])
        head = _UDP.pack(flow.guest_port, dst[1], 8, 0)
        self.icmp.unreachable(far, flow.guest_ip, code, Icmp.rebuild(flow.guest_ip, far, 17, head, 8))

    def close(self, flow: UdpFlow) -> None:
        core = self.core
        if not core.flows.live(flow):
            return
        core.flows.remove(flow)
        key = (flow.guest_ip, flow.guest_port)
        if self.flows_by_src.get(key) is flow:
            del self.flows_by_src[key]
        if flow.guest is not None:
            flow.guest.udp -= 1
            flow.guest.udp_flows.pop(flow, None)
        core.actions.append((A.UDP_CLOSE, flow.fid))

    def evict(self, guest: Guest, now: float) -> bool:
        """Close the guest's longest-idle flow among its oldest ones if it has been idle ``EVICT_IDLE``
        seconds (True), moving the busy ones it passes to the back so the next look sees others."""
        flows = guest.udp_flows
        idlest: UdpFlow | None = None
        idle_since = now - EVICT_IDLE
        busy: list[UdpFlow] = []
        for flow in list(islice(flows, _EVICT_SCAN)):
            last_used = flow.deadline - flow.timeout
            if last_used > idle_since:
                busy.append(flow)
            elif idlest is None or last_used < idlest.deadline - idlest.timeout:
                idlest = flow
        for flow in busy:
            del flows[flow]
            flows[flow] = None
        if idlest is None:
            return False
        self.close(idlest)
        self.core.counters.udp_evicted += 1
        return True

    # -- UDP host forwards ---------------------------------------------------------------------------------
    def hostfwd(self, index: int, rule: HostForward, client: tuple[str, int], data: BytesLike, now: float) -> None:
        """A datagram to a UDP hostfwd port: deliver it to the guest from the client's address."""
        core = self.core
        src = core.guest_source(client[0])
        key = (rule.guest_addr, rule.guest_port, src, client[1])
        session = self.sessions.get(key)
        if session is None:
            if self.fwd_count.get(index, 0) >= core.limits.fwd_clients:
                oldest = min((s for s in self.sessions.values() if s.rule == index), key=lambda s: s.deadline)
                self.close_session(oldest)
            owner = core.guests.lookup(rule.guest_addr)
            session = UdpFwdSession(self, owner[0] if owner else None, index, client, key, core.cfg.udp_timeout)
            core.flows.add(session)
            self.sessions[key] = session
            self.fwd_count[index] = self.fwd_count.get(index, 0) + 1
        session.client = client
        core.flows.arm(session, now + session.timeout)
        core.send_udp(src, client[1], rule.guest_addr, rule.guest_port, data)

    def close_rule(self, rule: int) -> None:
        for session in [s for s in self.sessions.values() if s.rule == rule]:
            self.close_session(session)
        self.fwd_count.pop(rule, None)

    def close_session(self, session: UdpFwdSession) -> None:
        core = self.core
        if not core.flows.live(session):
            return
        core.flows.remove(session)
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]
        if session.rule in self.fwd_count:
            self.fwd_count[session.rule] -= 1
