"""Whatever a guest sends is validated before it means anything: bad frames are dropped and counted,
never answered, never an internal error."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from tests.engines.usernet.stacknet import (
    DNS_IP,
    GUEST,
    GUEST2_MAC,
    HOST,
    OUTSIDE,
    GuestTcp,
    StackNet,
    dns_query,
    echo,
    open_tcp,
    udp,
)


@pytest.mark.parametrize(
    "pkt",
    [
        echo(HOST),
        udp(OUTSIDE, 7, b"x"),
        dns_query(1),
        IP(src=GUEST, dst=HOST) / TCP(sport=45000, dport=8080, flags="S"),
    ],
    ids=["icmp", "udp", "dns", "tcp"],
)
def test_frames_for_another_guest_mac_are_ignored(pkt: Packet) -> None:
    net = StackNet()
    a = net.guest()
    net.send_ip(a, pkt, dst_mac=GUEST2_MAC)
    assert net.frames() == [] and net.actions() == []
    assert net.stack.counters.not_for_us == 1
    assert net.stack.guests.by_port == {}  # not even looked at: the port is not learned from it


def test_multicast_frames_are_ignored() -> None:
    net = StackNet()
    a = net.guest()
    net.send_ip(a, udp("224.0.0.251", 5353, b"mdns"), dst_mac="01:00:5e:00:00:fb")
    assert net.frames() == [] and net.actions() == []
    assert net.stack.counters.not_for_us == 1


def test_a_lone_fragment_is_held_and_unknown_protocols_are_dropped() -> None:
    """Adapted: the old stack dropped every fragment; this one reassembles them (test_fragments.py), so a
    first fragment alone is held, not acted upon, until it expires."""
    net = StackNet()
    a = net.guest()
    net.send_ip(a, IP(src=GUEST, dst=OUTSIDE, flags="MF", id=5) / UDP(sport=1, dport=2) / Raw(b"a" * 32))
    net.send_ip(a, IP(src=GUEST, dst=OUTSIDE, proto=47) / Raw(b"gre!"))
    assert net.frames() == [] and net.actions() == []
    assert net.stack.counters.fragments == 1 and net.stack.counters.unsupported == 1
    assert net.stack.reassembly.datagrams_held == 1


@pytest.mark.parametrize("ethertype", [0x8100, 0x88CC])
def test_other_ethertypes_are_counted_as_unsupported(ethertype: int) -> None:
    net = StackNet()
    a = net.guest()
    net.send(a.port, Ether(src=a.mac, dst="52:55:0a:00:02:02", type=ethertype) / Raw(b"\0" * 46))
    assert net.frames() == [] and net.stack.counters.unsupported == 1


def test_ipv6_with_ipv6_off_is_counted_as_unsupported() -> None:
    net = StackNet("ipv6=off")
    a = net.guest()
    net.send(a.port, Ether(src=a.mac, dst="52:55:0a:00:02:02", type=0x86DD) / Raw(b"\0" * 46))
    assert net.frames() == [] and net.stack.counters.unsupported == 1


@pytest.mark.parametrize("mutation", ["version", "ihl", "total_long", "total_short", "checksum"])
def test_bad_ipv4_headers_are_dropped(mutation: str) -> None:
    net = StackNet()
    a = net.guest()
    raw = bytearray(bytes(Ether(src=a.mac, dst="52:55:0a:00:02:02") / udp(HOST, 9, b"payload" * 8)))
    if mutation == "version":
        raw[14] = 0x65
    elif mutation == "ihl":
        raw[14] = 0x44
    elif mutation == "total_long":
        raw[16:18] = (len(raw) - 14 + 1).to_bytes(2, "big")
    elif mutation == "total_short":
        raw[16:18] = (19).to_bytes(2, "big")
    if mutation != "checksum":
        raw[24:26] = b"\0\0"
        s = sum(int.from_bytes(raw[i : i + 2], "big") for i in range(14, 34, 2))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        raw[24:26] = (~s & 0xFFFF).to_bytes(2, "big")
    else:
        raw[24] ^= 0xFF
    net.send(a.port, bytes(raw))
    assert net.actions() == [] and net.frames() == []
    assert net.stack.counters.bad_ipv4 == 1
    assert net.stack.faults.counts == {}


def test_runts_are_dropped() -> None:
    net = StackNet()
    a = net.guest()
    for n in (0, 1, 13):
        net.stack.receive_frame(b"\xff" * n, a.port, None, net.now)
    ip = bytes(Ether(src=a.mac, dst="52:55:0a:00:02:02") / udp(HOST, 9, b"x"))
    for n in (14, 20, 33, 37):
        net.stack.receive_frame(ip[:n], a.port, None, net.now)
    assert net.actions() == [] and net.frames() == []
    assert net.stack.faults.counts == {}


@pytest.mark.parametrize("flags", ["A", "PA", "F", "", "R"])
def test_a_bad_checksum_segment_for_no_connection_is_dropped_not_answered(flags: str) -> None:
    """A RST answers a segment only once it is known to be one: a corrupted segment is dropped and
    counted like any bad one (the stack RST'd whatever it could not match, checksum or not)."""
    net = StackNet()
    a = net.guest()
    pkt = IP(bytes(IP(src=GUEST, dst=HOST) / TCP(sport=45000, dport=8080, flags=flags, seq=5, ack=9) / b"xy"))
    pkt[TCP].chksum ^= 0x0101
    net.send_ip(a, pkt)
    assert net.frames() == [] and net.actions() == []
    assert net.stack.counters.bad_l4 == 1


@pytest.mark.parametrize("options", ["restrict=on", "host-loopback=off", "guest-tcp=1"])
def test_a_bad_checksum_syn_is_never_answered_even_when_refused(options: str) -> None:
    net = StackNet(options)
    a = net.guest()
    if options == "guest-tcp=1":
        GuestTcp(net, a, OUTSIDE, 80, sport=1).syn()
        net.actions()
    pkt = IP(bytes(IP(src=GUEST, dst=HOST) / TCP(sport=45000, dport=8080, flags="S", seq=5)))
    pkt[TCP].chksum ^= 0x0101
    net.send_ip(a, pkt)
    assert net.frames() == [] and net.actions() == []
    assert net.stack.counters.bad_l4 == 1


def test_a_bad_checksum_segment_of_a_connection_is_dropped() -> None:
    net = StackNet()
    a = net.guest()
    g, fid = open_tcp(net, a)
    pkt = IP(bytes(IP(src=GUEST, dst=HOST) / TCP(sport=g.sport, dport=8080, flags="PA", seq=g.seq,
                                                 ack=g.rcv_nxt) / b"corrupt"))
    pkt[TCP].chksum ^= 0x0101
    net.send_ip(a, pkt)
    assert net.actions() == []
    g.send("PA", b"fine")
    assert net.actions()[0][2] == b"fine"
    assert net.stack.faults.counts == {} and fid


def test_dns_to_the_resolver_from_a_port_other_than_53_is_plain_nat_drop() -> None:
    net = StackNet()
    a = net.guest()
    net.send_ip(a, IP(src=GUEST, dst=DNS_IP) / UDP(sport=1, dport=54) / b"x")
    assert net.actions() == [] and net.stack.counters.no_route == 1
