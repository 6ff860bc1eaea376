"""ICMP echo (icmp.py): the virtual hosts answer pings themselves; pings beyond them become ping flows
(one host socket each) with an idle timeout and a per-guest cap."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP

from tests.engines.usernet.stacknet import (
    DNS_IP,
    DNS_MAC,
    GUEST,
    GUEST2,
    GUEST2_MAC,
    GUEST_MAC,
    HOST,
    HOST_MAC,
    OUTSIDE,
    StackNet,
    echo,
    kinds,
    l4_payload,
    only,
)
from vmlan.engines.usernet import actions as A
from vmlan.engines.usernet.core import TimerFlow


@pytest.mark.parametrize("restrict", ["off", "on"])
@pytest.mark.parametrize(("target", "mac"), [(HOST, HOST_MAC), (DNS_IP, DNS_MAC)])
def test_ping_virtual_hosts_answered_locally(target: str, mac: str, restrict: str) -> None:
    net = StackNet(f"restrict={restrict}")
    a = net.guest()
    net.send_ip(a, echo(target, ident=0x4D2, seq=7, data=b"abcdefgh" * 7), dst_mac=mac)
    reply = only(net.frames())
    assert reply.src == mac and reply.dst == GUEST_MAC
    assert (reply[IP].src, reply[IP].dst) == (target, GUEST)
    icmp = reply[ICMP]
    assert (icmp.type, icmp.code, icmp.id, icmp.seq) == (0, 0, 0x4D2, 7)
    assert l4_payload(reply) == b"abcdefgh" * 7
    assert net.actions() == []
    assert net.stack.counters.icmp_local_replies == 1


def test_ping_outside_goes_through_the_host() -> None:
    net = StackNet()
    a = net.guest()
    net.send_ip(a, echo(OUTSIDE, ident=0x99, seq=1, data=b"payload!"))
    assert net.frames() == []
    send = only(net.actions())
    assert send[0] == A.PING_SEND
    _kind, fid, family, dst, ident, seq, data = send
    assert (family, dst, ident, seq, data) == (4, OUTSIDE, 0x99, 1, b"payload!")
    net.now += 0.01
    net.stack.ping_reply(fid, 1, b"payload!", net.now)
    reply = only(net.frames())
    assert (reply[IP].src, reply[IP].dst, reply.dst) == (OUTSIDE, GUEST, GUEST_MAC)
    assert (reply[ICMP].type, reply[ICMP].code, reply[ICMP].id, reply[ICMP].seq) == (0, 0, 0x99, 1)
    assert l4_payload(reply) == b"payload!"
    # the same echo id reuses the flow; idle for icmp_timeout, it is closed and later replies dropped
    net.send_ip(a, echo(OUTSIDE, ident=0x99, seq=2, data=b"again"))
    assert only(net.actions())[1] == fid
    net.advance(net.cfg.icmp_timeout - 1)
    assert net.actions() == []
    net.advance(2)
    assert net.actions() == [(A.PING_CLOSE, fid)]
    net.stack.ping_reply(fid, 2, b"again", net.now)
    assert net.frames() == []
    assert net.stack.faults.counts == {}


def test_ping_to_the_host_address_reaches_the_host_loopback_only_beyond_the_stack() -> None:
    """10.0.2.2 answers for itself: a ping to it never goes to the host (libslirp does the same)."""
    net = StackNet()
    a = net.guest()
    net.send_ip(a, echo(HOST))
    assert net.actions() == [] and len(net.frames()) == 1


def test_ping_outside_dropped_under_restrict() -> None:
    net = StackNet("restrict=on")
    a = net.guest()
    net.send_ip(a, echo(OUTSIDE))
    assert net.frames() == [] and net.actions() == []
    assert net.stack.counters.restricted == 1


def test_ping_every_flow_is_closed_when_the_id_moves_to_another_destination() -> None:
    net = StackNet()
    a = net.guest()
    opened, closed = [], []
    for dst in (OUTSIDE, "192.0.2.2", "192.0.2.3"):
        net.send_ip(a, echo(dst, ident=0x77))
        actions = net.actions()
        opened.append(only([x for x in actions if x[0] == A.PING_SEND])[1])
        closed += [x[1] for x in actions if x[0] == A.PING_CLOSE]  # the old flow, at once
    assert len(set(opened)) == 3
    assert closed == opened[:2]
    net.advance(net.cfg.icmp_timeout + 1)
    closed += [x[1] for x in net.actions() if x[0] == A.PING_CLOSE]
    assert sorted(closed) == sorted(opened)
    assert all(isinstance(f, TimerFlow) for f in net.stack.flows)  # only the stack-wide timers remain
    assert net.stack.icmp.pings == {}


def test_ping_with_bad_checksum_is_dropped() -> None:
    net = StackNet()
    a = net.guest()
    pkt = IP(bytes(echo(HOST)))
    pkt[ICMP].chksum ^= 0x5555
    net.send_ip(a, pkt)
    assert net.frames() == [] and net.actions() == []
    assert net.stack.counters.bad_l4 == 1


@pytest.mark.parametrize("kind", [0, 3, 11, 13])
def test_icmp_other_than_echo_requests_means_nothing_to_the_stack(kind: int) -> None:
    net = StackNet()
    a = net.guest()
    net.send_ip(a, IP(src=GUEST, dst=OUTSIDE) / ICMP(type=kind, code=0) / (b"x" * 28))
    assert net.frames() == [] and net.actions() == []
    assert net.stack.counters.unsupported == 1


def test_pings_per_guest_are_capped() -> None:
    net = StackNet("guest-pings=8")
    a = net.guest()
    for ident in range(100):
        net.send_ip(a, echo(OUTSIDE, ident=ident))
    sends = [x for x in net.actions() if x[0] == A.PING_SEND]
    assert len(sends) == 8
    assert net.stack.counters.ping_dropped_cap == 100 - 8
    b = net.guest("b", GUEST2_MAC, GUEST2)  # another guest has its own share
    net.send_ip(b, echo(OUTSIDE, src=GUEST2, ident=1))
    assert kinds(net.actions()) == ["PING_SEND"]
    net.advance(net.cfg.icmp_timeout + 1)  # idle flows expire and give the share back
    assert kinds(net.actions()) == ["PING_CLOSE"] * 9
    net.send_ip(a, echo(OUTSIDE, ident=500))
    assert kinds(net.actions()) == ["PING_SEND"]
