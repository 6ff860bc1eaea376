"""RFC 792 ICMP echo and error messages."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP

from vmlan.wire import IntegrityError, SanityError
from vmlan.wire.icmp import (
    ICMP_DEST_UNREACH,
    ICMP_ECHO,
    ICMP_ECHOREPLY,
    ICMP_EXC_TTL,
    ICMP_FRAG_NEEDED,
    ICMP_PORT_UNREACH,
    ICMP_TIME_EXCEEDED,
    IcmpMessage,
)
from vmlan.wire.ipv4 import IPPROTO_ICMP, Ipv4Header

from .strategies import u8, u16, u32

# Echo request id 0x1234 seq 1 with data "vmlan ping"; checksum 0xb60a worked out by hand:
# 0800+1234+0001+766d+6c61+6e20+7069+6e67 = 0x249f3 -> 0x49f5 -> ~ = 0xb60a.
GOLDEN_ECHO = bytes.fromhex("0800 b60a 1234 0001") + b"vmlan ping"

# A UDP datagram to 10.0.2.3:53 and the port-unreachable error quoting it, inside its IP header.
QUOTED_UDP = bytes.fromhex(
    "4500003900010000401162a20a00020f0a000203823500350025e9ecabcd01000001000000000000076578616d706c6503636f6d0000010001"
)
GOLDEN_PORT_UNREACH_DATAGRAM = (
    bytes.fromhex("4500005500010000400162970a00020f0a000202 0303 1545 00000000")  # IPv4, ICMP 3/3
    + QUOTED_UDP
)


def test_parse_golden_echo_request() -> None:
    msg = IcmpMessage.parse(GOLDEN_ECHO)
    assert (msg.type, msg.code, msg.checksum, msg.ident, msg.seq) == (ICMP_ECHO, 0, 0xB60A, 0x1234, 1)
    assert msg.data == b"vmlan ping" and not msg.is_error


def test_build_golden_echo_request() -> None:
    msg = IcmpMessage.echo_request(ident=0x1234, seq=1, data=b"vmlan ping")
    assert msg.build() == GOLDEN_ECHO
    assert IcmpMessage.parse(GOLDEN_ECHO).to_bytes() == GOLDEN_ECHO


def test_reply_to_echo_request_keeps_id_seq_and_data() -> None:
    reply = IcmpMessage.parse(GOLDEN_ECHO).reply()
    assert reply == IcmpMessage.echo_reply(ident=0x1234, seq=1, data=b"vmlan ping")
    raw = reply.build()
    assert raw[0] == ICMP_ECHOREPLY
    # Type 8 -> 0 lowers the sum by 0x0800, so the checksum rises by 0x0800.
    assert int.from_bytes(raw[2:4], "big") == 0xB60A + 0x0800


def test_reply_to_non_echo_raises_sanity_error() -> None:
    with pytest.raises(SanityError):
        IcmpMessage.echo_reply(ident=1, seq=1).reply()


def test_parse_golden_port_unreachable_quoting_original_datagram() -> None:
    ip, start, end = Ipv4Header.parse(GOLDEN_PORT_UNREACH_DATAGRAM)
    assert ip.proto == IPPROTO_ICMP
    msg = IcmpMessage.parse(GOLDEN_PORT_UNREACH_DATAGRAM, start, end)
    assert (msg.type, msg.code, msg.rest) == (ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0)
    assert msg.is_error and msg.data == QUOTED_UDP
    # The quoted datagram decodes again, with its own valid header checksum.
    quoted, _, _ = Ipv4Header.parse(msg.data)
    assert quoted.dst == bytes((10, 0, 2, 3))


def test_build_golden_port_unreachable() -> None:
    msg = IcmpMessage.dest_unreachable(code=ICMP_PORT_UNREACH, original=QUOTED_UDP)
    assert msg.build() == GOLDEN_PORT_UNREACH_DATAGRAM[20:]


def test_frag_needed_carries_next_hop_mtu() -> None:
    msg = IcmpMessage.parse(
        IcmpMessage.dest_unreachable(code=ICMP_FRAG_NEEDED, original=QUOTED_UDP, mtu=1400).build()
    )
    assert msg.next_hop_mtu == 1400 and msg.code == ICMP_FRAG_NEEDED


def test_error_quote_is_cut_to_548_bytes() -> None:
    big = Ipv4Header(src=bytes(4), dst=bytes(4), proto=17).build(bytes(1000))
    msg = IcmpMessage.time_exceeded(code=ICMP_EXC_TTL, original=big)
    assert msg.type == ICMP_TIME_EXCEEDED and msg.data == big[:548]
    assert len(msg.build()) == 8 + 548


def test_error_quoting_less_than_an_ip_header_raises_sanity_error() -> None:
    with pytest.raises(SanityError):
        IcmpMessage.dest_unreachable(code=ICMP_PORT_UNREACH, original=QUOTED_UDP[:19])
    short = IcmpMessage(type=ICMP_DEST_UNREACH, code=ICMP_PORT_UNREACH, data=QUOTED_UDP[:19]).build()
    with pytest.raises(SanityError, match=r"^\[ICMP\]"):
        IcmpMessage.parse(short)


def test_bad_checksum_raises_integrity_error() -> None:
    bad = bytearray(GOLDEN_ECHO)
    bad[-1] ^= 1
    with pytest.raises(IntegrityError, match="bad checksum"):
        IcmpMessage.parse(bad)


@pytest.mark.parametrize("size", range(8))
def test_messages_shorter_than_8_bytes_raise_integrity_error(size: int) -> None:
    with pytest.raises(IntegrityError):
        IcmpMessage.parse(GOLDEN_ECHO[:size])


def test_end_bounds_the_message_and_must_lie_inside_the_buffer() -> None:
    padded = GOLDEN_ECHO + bytes(6)  # trailing Ethernet padding would break the checksum
    assert IcmpMessage.parse(padded, 0, len(GOLDEN_ECHO)).data == b"vmlan ping"
    with pytest.raises(IntegrityError):
        IcmpMessage.parse(GOLDEN_ECHO, 0, len(GOLDEN_ECHO) + 1)


def test_large_echo_of_64k_is_verified() -> None:
    data = bytes(range(256)) * 255 + b"odd"
    raw = IcmpMessage.echo_request(ident=7, seq=9, data=data).build()
    assert IcmpMessage.parse(raw).data == data
    assert ICMP(raw).chksum == int.from_bytes(raw[2:4], "big")
    bad = bytearray(raw)
    bad[40000] ^= 0x80
    with pytest.raises(IntegrityError):
        IcmpMessage.parse(bad)


def test_unencodable_fields_raise_sanity_error() -> None:
    with pytest.raises(SanityError):
        IcmpMessage.echo_request(ident=0x10000, seq=0)
    with pytest.raises(SanityError):
        IcmpMessage(type=256, code=0)
    with pytest.raises(SanityError):
        IcmpMessage(type=0, code=0, rest=1 << 32)


messages = st.builds(IcmpMessage, type=u8, code=u8, rest=u32, data=st.binary(min_size=20, max_size=200))


@settings(max_examples=200)
@given(messages)
def test_build_then_parse_round_trips(msg: IcmpMessage) -> None:
    raw = msg.build()
    parsed = IcmpMessage.parse(raw)
    assert (parsed.type, parsed.code, parsed.rest, parsed.data) == (msg.type, msg.code, msg.rest, msg.data)
    assert parsed.to_bytes() == raw


@settings(max_examples=50, deadline=None)
@given(u16, u16, st.binary(max_size=100), st.booleans())
def test_vmlan_echo_decodes_identically_in_scapy(ident: int, seq: int, data: bytes, request: bool) -> None:
    make = IcmpMessage.echo_request if request else IcmpMessage.echo_reply
    raw = make(ident=ident, seq=seq, data=data).build()
    pkt = ICMP(raw)
    assert (pkt.type, pkt.code, pkt.id, pkt.seq) == (8 if request else 0, 0, ident, seq)
    assert bytes(pkt.payload) == data
    pkt.chksum = None
    assert bytes(pkt) == raw  # scapy's checksum equals ours


@settings(max_examples=50, deadline=None)
@given(u16, u16, st.binary(max_size=100))
def test_scapy_echo_decodes_identically_in_vmlan(ident: int, seq: int, data: bytes) -> None:
    msg = IcmpMessage.parse(bytes(ICMP(type="echo-request", id=ident, seq=seq) / data))
    assert (msg.type, msg.ident, msg.seq, msg.data) == (ICMP_ECHO, ident, seq, data)


def test_scapy_port_unreachable_decodes_identically_in_vmlan() -> None:
    original = IP(src="10.0.2.15", dst="10.0.2.3") / UDP(sport=33333, dport=53) / b"query"
    datagram = bytes(IP(src="10.0.2.3", dst="10.0.2.15") / ICMP(type=3, code=3) / original)
    _, start, end = Ipv4Header.parse(datagram)
    msg = IcmpMessage.parse(datagram, start, end)
    assert (msg.type, msg.code, msg.data) == (ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, bytes(original))
