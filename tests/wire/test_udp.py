"""RFC 768 UDP with the IPv4 pseudo-header checksum."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP

from vmlan.wire import IntegrityError, SanityError
from vmlan.wire.checksum import internet_checksum, pseudo_header_sum_v4
from vmlan.wire.ipv4 import Ipv4Header, ipv4_to_str
from vmlan.wire.udp import UDP_HLEN, UdpHeader

from .strategies import ipv4_addrs, ports, unicast_ipv4

GUEST = bytes((10, 0, 2, 15))
DNS = bytes((10, 0, 2, 3))
QUERY = bytes.fromhex("abcd01000001000000000000076578616d706c6503636f6d0000010001")  # A example.com
# The guest's DNS query 10.0.2.15:33333 -> 10.0.2.3:53 (checksum 0xe9ec, also what Linux computes).
GOLDEN = bytes.fromhex("8235 0035 0025 e9ec") + QUERY


def test_parse_golden_datagram_with_checksum_verified() -> None:
    header, start, end = UdpHeader.parse(GOLDEN, src_addr=GUEST, dst_addr=DNS)
    assert header == UdpHeader(sport=33333, dport=53, length=37, checksum=0xE9EC)
    assert GOLDEN[start:end] == QUERY


def test_build_golden_datagram() -> None:
    assert UdpHeader(sport=33333, dport=53).build(QUERY, src_addr=GUEST, dst_addr=DNS) == GOLDEN
    assert UdpHeader(sport=33333, dport=53, length=37, checksum=0xE9EC).to_bytes() == GOLDEN[:8]


def test_wrong_pseudo_header_address_fails_checksum() -> None:
    with pytest.raises(IntegrityError, match=r"^\[UDP\] bad checksum"):
        UdpHeader.parse(GOLDEN, src_addr=GUEST, dst_addr=bytes((10, 0, 2, 4)))


def test_checksum_not_verified_without_addresses() -> None:
    bad = bytearray(GOLDEN)
    bad[-1] ^= 1
    header, _, _ = UdpHeader.parse(bad)
    assert header.checksum == 0xE9EC
    with pytest.raises(IntegrityError):
        UdpHeader.parse(bad, src_addr=GUEST, dst_addr=DNS)


def test_zero_checksum_means_none_and_is_not_verified() -> None:
    unchecked = UdpHeader(sport=33333, dport=53).build(QUERY, src_addr=GUEST, dst_addr=DNS, checksum=False)
    assert unchecked[6:8] == b"\0\0"
    header, _, _ = UdpHeader.parse(unchecked, src_addr=GUEST, dst_addr=DNS)
    assert header.checksum == 0


def test_computed_zero_checksum_is_sent_as_ffff() -> None:
    # Pick the last payload word so that the one's complement sum is 0xFFFF, i.e. checksum 0.
    header = UdpHeader(sport=1000, dport=2000)
    probe = header.build(b"\0\0", src_addr=GUEST, dst_addr=DNS)
    partial = pseudo_header_sum_v4(GUEST, DNS, 17, len(probe))
    filler = internet_checksum(probe[:6] + b"\0\0" + probe[8:], partial)
    datagram = header.build(filler.to_bytes(2, "big"), src_addr=GUEST, dst_addr=DNS)
    assert datagram[6:8] == b"\xff\xff"
    parsed, _, _ = UdpHeader.parse(datagram, src_addr=GUEST, dst_addr=DNS)
    assert parsed.checksum == 0xFFFF
    assert bytes(IP(src="10.0.2.15", dst="10.0.2.3", proto=17) / UDP(datagram))  # scapy accepts it too


@pytest.mark.parametrize("length", [0, 7])
def test_length_field_below_8_raises_integrity_error(length: int) -> None:
    bad = GOLDEN[:4] + length.to_bytes(2, "big") + GOLDEN[6:]
    with pytest.raises(IntegrityError, match="length field"):
        UdpHeader.parse(bad)


def test_length_field_beyond_datagram_raises_integrity_error() -> None:
    with pytest.raises(IntegrityError, match="length field 37 > 36"):
        UdpHeader.parse(GOLDEN[:-1])
    with pytest.raises(IntegrityError):
        UdpHeader.parse(GOLDEN, 0, 36)


def test_bytes_after_length_field_are_not_data() -> None:
    _, start, end = UdpHeader.parse(GOLDEN + b"trailer", src_addr=GUEST, dst_addr=DNS)
    assert (start, end) == (8, 37)


@pytest.mark.parametrize("size", range(8))
def test_truncated_header_raises_integrity_error(size: int) -> None:
    with pytest.raises(IntegrityError):
        UdpHeader.parse(GOLDEN[:size])


def test_destination_port_zero_raises_sanity_error() -> None:
    datagram = UdpHeader(sport=1, dport=0).build(b"x", src_addr=GUEST, dst_addr=DNS)
    with pytest.raises(SanityError, match="destination port 0"):
        UdpHeader.parse(datagram, src_addr=GUEST, dst_addr=DNS)


def test_only_one_address_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        UdpHeader.parse(GOLDEN, src_addr=GUEST)


def test_unencodable_fields_raise_sanity_error() -> None:
    with pytest.raises(SanityError):
        UdpHeader(sport=65536, dport=53)
    with pytest.raises(SanityError):
        UdpHeader(sport=1, dport=53).build(bytes(65528), src_addr=GUEST, dst_addr=DNS)


def test_largest_datagram_checksum_matches_scapy() -> None:
    payload = os.urandom(65507)  # the most IPv4 can carry; odd length
    datagram = UdpHeader(sport=5353, dport=5353).build(payload, src_addr=GUEST, dst_addr=DNS)
    assert UdpHeader.parse(datagram, src_addr=GUEST, dst_addr=DNS)[0].length == 65515
    pkt = UDP(datagram)
    pkt.chksum = None
    assert bytes(IP(src="10.0.2.15", dst="10.0.2.3") / pkt)[20:] == datagram


datagrams = st.tuples(ports, ports, st.binary(max_size=300), unicast_ipv4, ipv4_addrs)


@settings(max_examples=200)
@given(datagrams)
def test_build_then_parse_round_trips(case: tuple[int, int, bytes, bytes, bytes]) -> None:
    sport, dport, payload, src, dst = case
    datagram = UdpHeader(sport=sport, dport=dport).build(payload, src_addr=src, dst_addr=dst)
    header, start, end = UdpHeader.parse(datagram, src_addr=src, dst_addr=dst)
    assert (header.sport, header.dport, header.length) == (sport, dport, UDP_HLEN + len(payload))
    assert header.checksum != 0
    assert datagram[start:end] == payload
    assert header.to_bytes() == datagram[:8]


@settings(max_examples=60, deadline=None)
@given(datagrams)
def test_vmlan_datagrams_decode_identically_in_scapy(case: tuple[int, int, bytes, bytes, bytes]) -> None:
    sport, dport, payload, src, dst = case
    datagram = UdpHeader(sport=sport, dport=dport).build(payload, src_addr=src, dst_addr=dst)
    whole = Ipv4Header(src=src, dst=dst, proto=17).build(datagram)
    pkt = IP(whole)
    assert (pkt[UDP].sport, pkt[UDP].dport, pkt[UDP].len) == (sport, dport, len(datagram))
    pkt[UDP].chksum = None  # make scapy compute its own checksum: it must equal ours
    assert bytes(pkt) == whole


@settings(max_examples=60, deadline=None)
@given(ports, ports, st.binary(max_size=300), unicast_ipv4, ipv4_addrs)
def test_scapy_datagrams_decode_identically_in_vmlan(
    sport: int, dport: int, payload: bytes, src: bytes, dst: bytes
) -> None:
    whole = bytes(IP(src=ipv4_to_str(src), dst=ipv4_to_str(dst)) / UDP(sport=sport, dport=dport) / payload)
    _, start, end = Ipv4Header.parse(whole)
    header, dstart, dend = UdpHeader.parse(whole, start, end, src_addr=src, dst_addr=dst)
    assert (header.sport, header.dport, header.length) == (sport, dport, 8 + len(payload))
    assert whole[dstart:dend] == payload
