"""IPv6 fragments on the user stack: what a guest fragments is reassembled and goes on as a whole datagram
(ICMPv6 echo to the router, UDP to the host), what the stack relays past the MTU goes back fragmented,
and incomplete datagrams expire with ICMPv6 Time Exceeded (code 1)."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6TimeExceeded,
    IPv6,
    IPv6ExtHdrFragment,
    defragment6,
    fragment6,
    in6_chksum,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from tests.engines.test_reassembly6 import with_fragment_header
from tests.engines.usernet.stacknet import Port, StackNet, only
from vmlan.engines.usernet import actions as A
from vmlan.wire.vnet import FLAG_DATA_VALID, GSO_NONE, Offload

MAC = "52:54:00:12:34:56"
MAC_B = "52:54:00:12:34:57"
ROUTER_MAC = "52:56:00:00:00:02"
G6 = "fec0::5054:ff:fe12:3456"
G6_B = "fec0::5054:ff:fe12:3457"
HOST6 = "fec0::2"


def fragments_of(pkt: Packet, mtu: int = 1500, ident: int = 0xCAFE) -> list[Packet]:
    return list(fragment6(with_fragment_header(pkt, ident), mtu))  # type: ignore[no-untyped-call]


def send_all(net: StackNet, port: Port, frags: list[Packet], mac: str = MAC) -> None:
    for frag in frags:
        net.send(port, Ether(src=mac, dst=ROUTER_MAC) / frag)


def taken(net: StackNet) -> list[Ether]:
    """The frames emitted, each within the MTU."""
    out = []
    for raw, _offload in net.stack.take_frames():
        assert len(raw) <= 14 + net.cfg.mtu
        out.append(Ether(raw))
    return out


def whole(frames: list[Ether]) -> Packet:
    """The one datagram ``frames`` carry, put together by scapy; its checksum checked."""
    assert len(frames) > 1 and all(IPv6ExtHdrFragment in f for f in frames)
    assert len({f[IPv6ExtHdrFragment].id for f in frames}) == 1
    ip = defragment6([f[IPv6] for f in frames])  # type: ignore[no-untyped-call]
    pkt = IPv6(bytes(ip))
    payload = bytearray(bytes(pkt.payload))
    field = {58: 2, 17: 6}[pkt.nh]
    stored = int.from_bytes(payload[field : field + 2], "big")
    payload[field : field + 2] = b"\0\0"
    assert stored == in6_chksum(pkt.nh, pkt, bytes(payload)), "the checksum covers the whole datagram"
    return pkt


def test_a_fragmented_echo_to_the_router_is_answered_fragmented() -> None:
    net = StackNet()
    a = Port("a")
    data = bytes(range(256)) * 15 + b"tail"
    pkt = IPv6(src=G6, dst=HOST6) / ICMPv6EchoRequest(id=7, seq=1, data=data)
    frags = fragments_of(pkt)
    assert len(frags) == 3
    send_all(net, a, frags[::-1])
    reply = whole(taken(net))
    assert (reply.src, reply.dst) == (HOST6, G6)
    assert reply[ICMPv6EchoReply].id == 7 and reply[ICMPv6EchoReply].data == data
    c = net.stack.counters
    assert (c.fragments, c.fragments6, c.fragmented6, c.icmp_local_replies) == (3, 3, 1, 1)
    assert net.stack.reassembly.counters.reassembled == 1 and net.stack.reassembly.datagrams_held == 0


def test_an_atomic_fragment_echo_is_answered_whole() -> None:
    net = StackNet()
    a = Port("a")
    send_all(net, a, fragments_of(IPv6(src=G6, dst=HOST6) / ICMPv6EchoRequest(id=3, data=b"atom")))
    reply = only(taken(net))
    assert IPv6ExtHdrFragment not in reply and reply[ICMPv6EchoReply].data == b"atom"
    assert net.stack.reassembly.counters.atomic == 1 and net.stack.reassembly.datagrams_held == 0


def test_a_fragmented_udp_datagram_reaches_the_host_whole_and_its_big_answer_goes_back_fragmented() -> None:
    net = StackNet()
    a = Port("a")
    data = bytes(range(251)) * 32  # 8032 bytes
    send_all(net, a, fragments_of(IPv6(src=G6, dst="2001:db8::7") / UDP(sport=5000, dport=7) / data))
    send = only(net.actions())
    assert send[0] == A.UDP_SEND and send[2:] == (6, ("2001:db8::7", 7), data)
    net.stack.udp_received(send[1], data[::-1], ("2001:db8::7", 7), net.now)
    frames = taken(net)
    assert len(frames) == 6
    back = whole(frames)
    assert (back.src, back.dst, back[UDP].sport, back[UDP].dport) == ("2001:db8::7", G6, 7, 5000)
    assert bytes(back[UDP].payload) == data[::-1]


def test_a_bad_checksum_is_found_on_the_whole_datagram_whatever_offload_said() -> None:
    net = StackNet()
    a = Port("a")
    pkt = IPv6(src=G6, dst="2001:db8::7") / UDP(sport=5000, dport=7, chksum=0x1234) / (b"x" * 3000)
    for frag in fragments_of(pkt):
        raw = bytes(Ether(src=MAC, dst=ROUTER_MAC) / frag)
        net.stack.receive_frame(raw, a, Offload(FLAG_DATA_VALID, GSO_NONE, 0, 0, 0), net.now)
    assert net.actions() == [] and net.stack.counters.bad_l4 == 1


def test_an_incomplete_datagram_expires_with_time_exceeded_code_1() -> None:
    net = StackNet()
    a = Port("a")
    first, *_ = fragments_of(IPv6(src=G6, dst=HOST6) / ICMPv6EchoRequest(id=1, data=b"q" * 3000))
    send_all(net, a, [first])
    assert taken(net) == [] and net.stack.reassembly.datagrams_held == 1
    net.advance(29)
    assert taken(net) == []
    net.advance(2)
    err = only(taken(net))
    assert err[ICMPv6TimeExceeded].code == 1 and (err[IPv6].src, err[IPv6].dst) == (HOST6, G6)
    quoted = bytes(err)[14 + 40 + 8 :]
    assert quoted == bytes(first)[: len(quoted)] and 1000 < len(quoted) <= 1232  # RFC 4443 2.4 (c)
    assert net.stack.reassembly.datagrams_held == 0 and net.stack.counters.icmp_errors_sent == 1


def test_fragments_from_another_guests_address_are_dropped_before_they_are_held() -> None:
    net = StackNet()
    a, b = Port("a"), Port("b")
    send_all(net, a, fragments_of(IPv6(src=G6, dst=HOST6) / ICMPv6EchoRequest(id=1)))  # a claims G6
    taken(net)
    send_all(net, b, fragments_of(IPv6(src=G6, dst=HOST6) / ICMPv6EchoRequest(data=b"x" * 3000)), MAC_B)
    assert taken(net) == [] and net.stack.reassembly.datagrams_held == 0
    assert net.stack.counters.bad_source == 3


def test_two_guests_with_the_same_identification_reassemble_apart() -> None:
    net = StackNet()
    a, b = Port("a"), Port("b")
    fa = fragments_of(IPv6(src=G6, dst=HOST6) / ICMPv6EchoRequest(id=1, data=b"a" * 3000))
    fb = fragments_of(IPv6(src=G6_B, dst=HOST6) / ICMPv6EchoRequest(id=2, data=b"b" * 3000))
    for x, y in zip(fa, fb, strict=True):
        send_all(net, a, [x])
        send_all(net, b, [y], MAC_B)
    frames = taken(net)
    got = {whole([f for f in frames if f[IPv6].dst == dst])[ICMPv6EchoReply].data for dst in (G6, G6_B)}
    assert got == {b"a" * 3000, b"b" * 3000}


def test_a_first_fragment_without_its_upper_layer_header_is_dropped_and_counted() -> None:
    net = StackNet()
    a = Port("a")
    head = struct.pack("!IHBB16s16s", 0x60000000, 8 + 8, 44, 64, _pton(G6), _pton(HOST6))
    frag = head + struct.pack("!BBHI", 17, 0, 1, 5) + b"\x13\x88\x00\x07\x00\x10\x00\x00"[:4] + b"\0" * 4
    net.send(a, Ether(src=MAC, dst=ROUTER_MAC, type=0x86DD) / frag)
    assert net.stack.reassembly.counters.incomplete_chain == 0  # 8 bytes: a whole UDP header
    assert net.stack.reassembly.datagrams_held == 1
    tcp = head + struct.pack("!BBHI", 6, 0, 1, 6) + b"\0" * 8  # 8 bytes of a 20-byte TCP header
    net.send(a, Ether(src=MAC, dst=ROUTER_MAC, type=0x86DD) / tcp)
    assert net.stack.reassembly.counters.incomplete_chain == 1 and net.stack.reassembly.datagrams_held == 1


def test_the_counters_show_ipv6_fragments_and_the_reasons_for_drops() -> None:
    net = StackNet()
    a = Port("a")
    x = fragments_of(IPv6(src=G6, dst=HOST6) / ICMPv6EchoRequest(data=b"o" * 3000), ident=1)
    send_all(net, a, [x[0], x[0]])
    counters: dict[str, Any] = net.stack.counters.as_dict()
    assert counters["fragments6"] == counters["fragments"] == 2
    assert counters["frag_duplicates"] == 1 and counters["frag_overlaps"] == 0
    assert "frag_fragments" not in counters and "reassembly" not in counters


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 0, 8, 1448, 65528]) | st.integers(0, 0x1FFF).map(lambda v: v * 8),
                          st.booleans(), st.integers(0, 2), st.sampled_from([17, 58, 6, 60, 44, 0, 59]),
                          st.binary(max_size=80), st.booleans(), st.sampled_from([0.0, 0.0, 31.0])),
                max_size=40))
def test_any_ipv6_fragments_from_two_guests_never_fault_and_stay_bounded(ops: list[tuple[Any, ...]]) -> None:
    net = StackNet()
    ports = {False: (Port("a"), MAC, G6), True: (Port("b"), MAC_B, G6_B)}
    for offset, more, ident, nh, data, second, wait in ops:
        port, mac, src = ports[second]
        head = struct.pack("!IHBB16s16s", 0x60000000, 8 + len(data), 44, 64, _pton(src), _pton(HOST6))
        net.send(port, Ether(src=mac, dst=ROUTER_MAC, type=0x86DD) / (head + struct.pack("!BBHI", nh, 0,
                                                                                          offset | more, ident) + data))
        net.advance(wait)
        taken(net)
        net.actions()
        assert net.stack.faults.total == 0
        for port, _mac, _src in ports.values():
            guest = net.stack.guests.by_port.get(port)
            if guest is not None:
                count, charge = net.stack.reassembly.owner_usage(guest)
                assert count <= net.cfg.limits.frag_datagrams_per_guest
                assert charge <= net.cfg.limits.frag_bytes_per_guest


def _pton(text: str) -> bytes:
    import socket

    return socket.inet_pton(socket.AF_INET6, text)
