"""Guests' fragments are reassembled (libslirp does; Linux guests fragment pings and big UDP datagrams)."""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, UDP, fragment
from scapy.layers.l2 import Ether

from tests.engines.usernet.stacknet import HOST, HOST_MAC, Port, StackNet
from vmlan.engines.usernet import actions as A

MAC = "52:54:00:12:34:56"


def test_a_fragmented_ping_to_the_gateway_is_answered_fragmented() -> None:
    net = StackNet()
    a = Port("a")
    net.dhcp(a, MAC)
    pkt = IP(src="10.0.2.15", dst=HOST, id=77) / ICMP(id=1, seq=1) / (b"p" * 4000)
    for frag in reversed(fragment(pkt, fragsize=1480)):
        net.send(a, Ether(src=MAC, dst=HOST_MAC) / frag)
    frames = net.frames()
    assert len(frames) == 3 and all(f[IP].dst == "10.0.2.15" for f in frames)
    payload = b"".join(bytes(f[IP].payload) for f in sorted(frames, key=lambda f: f[IP].frag))
    reply = ICMP(payload)
    assert reply.type == 0 and bytes(reply.payload) == b"p" * 4000


def test_an_8kb_udp_datagram_in_fragments_reaches_the_host_whole() -> None:
    net = StackNet()
    a = Port("a")
    net.dhcp(a, MAC)
    pkt = IP(src="10.0.2.15", dst="192.0.2.1", id=9) / UDP(sport=5000, dport=6000) / (bytes(range(256)) * 32)
    for frag in fragment(pkt, fragsize=1480):
        net.send(a, Ether(src=MAC, dst=HOST_MAC) / frag)
    (send,) = [x for x in net.actions() if x[0] == A.UDP_SEND]
    assert send[3] == ("192.0.2.1", 6000) and send[4] == bytes(range(256)) * 32


def test_an_incomplete_datagram_expires_with_time_exceeded() -> None:
    net = StackNet()
    a = Port("a")
    net.dhcp(a, MAC)
    pkt = IP(src="10.0.2.15", dst=HOST, id=5) / ICMP(id=1, seq=1) / (b"q" * 3000)
    first = fragment(pkt, fragsize=1480)[0]
    net.send(a, Ether(src=MAC, dst=HOST_MAC) / first)
    assert net.frames() == []
    net.advance(31)
    (err,) = net.frames()
    assert err[ICMP].type == 11 and err[ICMP].code == 1 and err[IP].dst == "10.0.2.15"
    assert net.stack.reassembly.datagrams_held == 0


def test_fragments_from_another_guests_address_are_dropped() -> None:
    net = StackNet()
    a, b = Port("a"), Port("b")
    net.dhcp(a, MAC)
    net.dhcp(b, "52:54:00:12:34:57")
    pkt = IP(src="10.0.2.15", dst=HOST, id=5) / ICMP(id=1, seq=1) / (b"q" * 3000)
    for frag in fragment(pkt, fragsize=1480):
        net.send(b, Ether(src="52:54:00:12:34:57", dst=HOST_MAC) / frag)
    assert net.frames() == [] and net.stack.reassembly.datagrams_held == 0
