"""Every parser either decodes or raises a WireError subclass: never IndexError, struct.error, ..."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmlan.wire import IntegrityError
from vmlan.wire.arp import ArpPacket
from vmlan.wire.ethernet import ETH_P_ARP, ETH_P_IP, EthernetHeader
from vmlan.wire.icmp import IcmpMessage
from vmlan.wire.ipv4 import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4Header
from vmlan.wire.tcp import ACK, SYN, TcpHeader, TcpOptions, parse_fixed
from vmlan.wire.udp import UdpHeader

from .strategies import mutated, only_wire_errors

MAC_A = bytes.fromhex("525400123456")
MAC_B = bytes.fromhex("525400123502")
IP_A = bytes((10, 0, 2, 15))
IP_B = bytes((10, 0, 2, 2))


def _ip_frame(proto: int, l4: bytes, vlan: int | None = None) -> bytes:
    eth = EthernetHeader(dst=MAC_B, src=MAC_A, ethertype=ETH_P_IP, vlan_tci=vlan)
    return eth.build(Ipv4Header(src=IP_A, dst=IP_B, proto=proto, options=b"\x01\x01\x01\x00").build(l4))


def _valid_frames() -> list[bytes]:
    syn = TcpHeader(
        sport=40000,
        dport=80,
        seq=1,
        flags=SYN,
        window=64240,
        options=TcpOptions(
            mss=1460, sack_permitted=True, timestamps=(1, 0), wscale=7, unknown=((30, b"ab"),)
        ),
    )
    ack = TcpHeader(sport=80, dport=40000, seq=2, ack=2, flags=ACK, options=TcpOptions(sack=((1, 2), (3, 4))))
    return [
        EthernetHeader(dst=MAC_B, src=MAC_A, ethertype=ETH_P_ARP).build(
            ArpPacket.request(sha=MAC_A, spa=IP_A, tpa=IP_B).to_bytes(), pad=True
        ),
        _ip_frame(IPPROTO_TCP, syn.build(b"", src_addr=IP_A, dst_addr=IP_B)),
        _ip_frame(IPPROTO_TCP, ack.build(b"payload", src_addr=IP_A, dst_addr=IP_B), vlan=5),
        _ip_frame(IPPROTO_UDP, UdpHeader(sport=5, dport=53).build(b"q", src_addr=IP_A, dst_addr=IP_B)),
        _ip_frame(IPPROTO_ICMP, IcmpMessage.echo_request(ident=1, seq=2, data=b"ping").build()),
    ]


VALID = _valid_frames()
frames = st.binary(max_size=120) | mutated(st.sampled_from(VALID))


def decode_frame(frame: bytes) -> object:
    """Walk Ethernet -> ARP/IPv4 -> ICMP/UDP/TCP like an engine would, verifying every checksum."""
    eth, at = EthernetHeader.parse(frame)
    if eth.ethertype == ETH_P_ARP:
        return ArpPacket.parse(frame, at)
    if eth.ethertype != ETH_P_IP:
        return eth
    ip, start, end = Ipv4Header.parse(frame, at)
    if ip.proto == IPPROTO_ICMP:
        return IcmpMessage.parse(frame, start, end)
    if ip.proto == IPPROTO_UDP:
        return UdpHeader.parse(frame, start, end, src_addr=ip.src, dst_addr=ip.dst)
    if ip.proto == IPPROTO_TCP:
        return TcpHeader.parse(frame, start, end, src_addr=ip.src, dst_addr=ip.dst)
    return ip


def test_valid_frames_decode_fully() -> None:
    kinds = [type(decode_frame(f)) for f in VALID]
    assert kinds == [ArpPacket, tuple, tuple, tuple, IcmpMessage]


PARSERS: list[Callable[[bytes, int, int], object]] = [
    lambda b, o, e: EthernetHeader.parse(b, o),
    lambda b, o, e: ArpPacket.parse(b, o),
    lambda b, o, e: Ipv4Header.parse(b, o),
    lambda b, o, e: IcmpMessage.parse(b, o, e),
    lambda b, o, e: UdpHeader.parse(b, o, e),
    lambda b, o, e: UdpHeader.parse(b, o, e, src_addr=IP_A, dst_addr=IP_B),
    lambda b, o, e: TcpHeader.parse(b, o, e),
    lambda b, o, e: TcpHeader.parse(b, o, e, src_addr=IP_A, dst_addr=IP_B),
    lambda b, o, e: parse_fixed(b, o, e),
]


@settings(max_examples=400, deadline=None)
@given(frames, st.integers(-3, 130), st.integers(-3, 130), st.sampled_from(range(len(PARSERS))))
def test_every_parser_at_any_offset_and_end_raises_only_wire_errors(
    frame: bytes, offset: int, end: int, which: int
) -> None:
    parser = PARSERS[which]
    only_wire_errors(lambda: parser(frame, offset, end))
    only_wire_errors(lambda: parser(frame, max(offset, 0), len(frame)))


def _layer(frame: bytes) -> bytes:
    """The innermost layer of a valid frame (ARP packet, or the IPv4 datagram's payload)."""
    eth, at = EthernetHeader.parse(frame)
    if eth.ethertype == ETH_P_ARP:
        return frame[at:]
    _, start, end = Ipv4Header.parse(frame, at)
    return frame[start:end]


# (parser, its valid input): mutations land in the layer's own header rather than in front of it.
LAYERS: list[tuple[Callable[[bytes], object], bytes]] = [
    (ArpPacket.parse, _layer(VALID[0])),
    (TcpHeader.parse, _layer(VALID[1])),
    (TcpHeader.parse, _layer(VALID[2])),
    (UdpHeader.parse, _layer(VALID[3])),
    (IcmpMessage.parse, _layer(VALID[4])),
    (Ipv4Header.parse, VALID[1][14:]),
]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(range(len(LAYERS))).flatmap(
        lambda i: st.tuples(st.just(i), mutated(st.just(LAYERS[i][1])))
    )
)
def test_mutated_layers_raise_only_wire_errors(case: tuple[int, bytes]) -> None:
    which, data = case
    only_wire_errors(lambda: LAYERS[which][0](data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_arbitrary_tcp_options_raise_only_wire_errors(options: bytes) -> None:
    only_wire_errors(lambda: TcpOptions.parse(options, 0, len(options)))
    padded = options + bytes(-len(options) % 4)
    segment = bytes.fromhex("0001000200000000000000000010ffff00000000")
    segment = segment[:12] + bytes(((20 + len(padded)) << 2,)) + segment[13:] + padded
    only_wire_errors(lambda: TcpHeader.parse(segment))


def test_every_truncation_of_valid_inputs_raises_only_wire_errors() -> None:
    # Exhaustive where random cuts are thin: every prefix of every valid frame and layer.
    for frame in VALID:
        for cut in range(len(frame) + 1):
            only_wire_errors(lambda data=frame[:cut]: decode_frame(data))
            for parser in PARSERS:
                only_wire_errors(lambda data=frame[:cut], parser=parser: parser(data, 0, len(data)))
    for parse, layer in LAYERS:
        for cut in range(len(layer) + 1):
            only_wire_errors(lambda data=layer[:cut], parse=parse: parse(data))


def test_negative_offsets_and_windows_past_the_buffer_raise_integrity_error() -> None:
    frame = VALID[1]
    for parser in PARSERS:
        with pytest.raises(IntegrityError):
            parser(frame, -1, len(frame))
    for parser in PARSERS[3:]:  # the ones that take an end
        with pytest.raises(IntegrityError):
            parser(frame, 34, len(frame) + 1)
        with pytest.raises(IntegrityError):
            parser(frame, 34, 33)
