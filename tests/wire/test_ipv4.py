"""RFC 791 IPv4 headers."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP

from vmlan.wire import IntegrityError, SanityError
from vmlan.wire.checksum import internet_checksum
from vmlan.wire.ipv4 import (
    IP_DF,
    IP_MF,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Ipv4Header,
    ipv4_from_str,
    ipv4_to_str,
    is_fragment,
)

from .strategies import ipv4_addrs, u8, u16, unicast_ipv4

# The classic example header (UDP, 192.168.0.1 -> 192.168.0.199, DF, checksum 0xb861),
# followed by its 95 bytes of payload.
GOLDEN_HEADER = bytes.fromhex("4500 0073 0000 4000 4011 b861 c0a80001 c0a800c7")
GOLDEN_PAYLOAD = bytes(range(95))
GOLDEN = GOLDEN_HEADER + GOLDEN_PAYLOAD
GOLDEN_FIELDS = Ipv4Header(
    src=bytes((192, 168, 0, 1)),
    dst=bytes((192, 168, 0, 199)),
    proto=IPPROTO_UDP,
    total_length=0x73,
    flags=IP_DF,
    ttl=64,
    checksum=0xB861,
)


def with_checksum(header: bytes | bytearray) -> bytes:
    """Patch a correct header checksum into ``header`` (for crafting bad-but-consistent headers)."""
    raw = bytearray(header)
    raw[10:12] = b"\0\0"
    raw[10:12] = internet_checksum(raw).to_bytes(2, "big")
    return bytes(raw)


def test_parse_golden_header() -> None:
    header, start, end = Ipv4Header.parse(GOLDEN)
    assert header == GOLDEN_FIELDS
    assert (start, end) == (20, 0x73)
    assert header.df and not header.mf and not header.is_fragment


def test_build_golden_header() -> None:
    unbuilt = Ipv4Header(src=GOLDEN_FIELDS.src, dst=GOLDEN_FIELDS.dst, proto=IPPROTO_UDP, flags=IP_DF)
    assert unbuilt.build_header(len(GOLDEN_PAYLOAD)) == GOLDEN_HEADER
    assert unbuilt.build(GOLDEN_PAYLOAD) == GOLDEN
    assert GOLDEN_FIELDS.to_bytes() == GOLDEN_HEADER


def test_to_bytes_keeps_stored_length_and_checksum() -> None:
    header = Ipv4Header(src=bytes(4), dst=bytes(4), proto=1, total_length=1234, checksum=0xBEEF)
    raw = header.to_bytes()
    assert raw[2:4] == (1234).to_bytes(2, "big") and raw[10:12] == b"\xbe\xef"


def test_payload_bounds_follow_total_length_not_ethernet_padding() -> None:
    datagram = Ipv4Header(src=bytes((10, 0, 2, 2)), dst=bytes((10, 0, 2, 15)), proto=1).build(b"12345678")
    frame = b"E" * 14 + datagram + bytes(60 - 14 - len(datagram))
    header, start, end = Ipv4Header.parse(frame, 14)
    assert frame[start:end] == b"12345678"
    assert header.total_length == 28


def test_options_are_kept_and_counted_in_ihl() -> None:
    router_alert = bytes.fromhex("94040000")
    header = Ipv4Header(src=bytes(4), dst=bytes((224, 0, 0, 22)), proto=2, ttl=1, options=router_alert)
    datagram = header.build(b"igmp")
    assert datagram[0] == 0x46
    parsed, start, end = Ipv4Header.parse(datagram)
    assert parsed.options == router_alert and parsed.header_len == 24
    assert datagram[start:end] == b"igmp"


@pytest.mark.parametrize("size", [0, 1, 19])
def test_truncated_header_raises_integrity_error(size: int) -> None:
    with pytest.raises(IntegrityError, match=r"^\[IPv4\]"):
        Ipv4Header.parse(GOLDEN[:size])


def test_header_length_below_5_raises_integrity_error_with_message() -> None:
    bad = with_checksum(b"\x44" + GOLDEN_HEADER[1:])
    with pytest.raises(IntegrityError) as info:
        Ipv4Header.parse(bad + GOLDEN_PAYLOAD)
    assert str(info.value) == "[IPv4] header length 4 < 5"
    assert info.value.proto == "IPv4"


def test_version_other_than_4_raises_integrity_error() -> None:
    with pytest.raises(IntegrityError, match="version 6"):
        Ipv4Header.parse(with_checksum(b"\x65" + GOLDEN_HEADER[1:]) + GOLDEN_PAYLOAD)


def test_header_length_beyond_buffer_raises_integrity_error() -> None:
    with pytest.raises(IntegrityError):
        Ipv4Header.parse(with_checksum(b"\x4f" + GOLDEN_HEADER[1:]))


def test_total_length_beyond_buffer_raises_integrity_error() -> None:
    with pytest.raises(IntegrityError, match="total length 115 > 114"):
        Ipv4Header.parse(GOLDEN[:-1])


def test_total_length_below_header_length_raises_integrity_error() -> None:
    bad = with_checksum(GOLDEN_HEADER[:2] + b"\x00\x13" + GOLDEN_HEADER[4:])
    with pytest.raises(IntegrityError, match="total length 19 < header length 20"):
        Ipv4Header.parse(bad + GOLDEN_PAYLOAD)


def test_bad_header_checksum_raises_integrity_error() -> None:
    bad = bytearray(GOLDEN)
    bad[8] = 63  # TTL changed, checksum not updated
    with pytest.raises(IntegrityError, match="bad header checksum"):
        Ipv4Header.parse(bad)


def test_multicast_and_broadcast_sources_raise_sanity_error() -> None:
    for src in (bytes((224, 0, 0, 1)), bytes((239, 255, 255, 250)), b"\xff\xff\xff\xff"):
        datagram = Ipv4Header(src=src, dst=bytes((10, 0, 2, 2)), proto=17).build()
        with pytest.raises(SanityError, match="multicast or broadcast"):
            Ipv4Header.parse(datagram)


def test_df_and_mf_together_raise_sanity_error() -> None:
    datagram = Ipv4Header(src=bytes(4), dst=bytes(4), proto=17, flags=IP_DF | IP_MF).build()
    with pytest.raises(SanityError, match="DF and MF"):
        Ipv4Header.parse(datagram)


def test_fragment_ending_beyond_64k_raises_sanity_error() -> None:
    ok = Ipv4Header(src=bytes(4), dst=bytes(4), proto=17, frag_offset=8189).build(bytes(8 * 2 + 7))
    Ipv4Header.parse(ok)  # ends at 65535: legal
    ping_of_death = Ipv4Header(src=bytes(4), dst=bytes(4), proto=17, frag_offset=8189).build(bytes(8 * 2 + 8))
    with pytest.raises(SanityError, match="beyond 65535"):
        Ipv4Header.parse(ping_of_death)


def test_is_fragment_for_first_middle_last_and_whole_datagrams() -> None:
    base = {"src": bytes(4), "dst": bytes(4), "proto": 17}
    assert not is_fragment(Ipv4Header(**base))
    assert not is_fragment(Ipv4Header(**base, flags=IP_DF))
    assert is_fragment(Ipv4Header(**base, flags=IP_MF))
    assert is_fragment(Ipv4Header(**base, flags=IP_MF, frag_offset=185))
    assert is_fragment(Ipv4Header(**base, frag_offset=370))


def test_datagram_over_65535_bytes_raises_sanity_error() -> None:
    with pytest.raises(SanityError):
        Ipv4Header(src=bytes(4), dst=bytes(4), proto=17).build_header(65516)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"src": bytes(3)},
        {"ttl": 256},
        {"frag_offset": 0x2000},
        {"flags": 8},
        {"options": b"\x01\x01\x01"},
        {"options": bytes(44)},
    ],
)
def test_unencodable_fields_raise_sanity_error(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {"src": bytes(4), "dst": bytes(4), "proto": 6} | kwargs
    with pytest.raises(SanityError):
        Ipv4Header(**fields)


def test_address_string_helpers() -> None:
    assert ipv4_to_str(bytes((10, 0, 2, 15))) == "10.0.2.15"
    assert ipv4_from_str("10.0.2.15") == bytes((10, 0, 2, 15))
    for bad in ("10.0.2", "10.0.2.256", "10.2", "", "a.b.c.d", "010.0.2.15"):
        with pytest.raises(SanityError):
            ipv4_from_str(bad)


headers = st.builds(
    Ipv4Header,
    src=unicast_ipv4,
    dst=ipv4_addrs,
    proto=u8,
    tos=u8,
    ident=u16,
    flags=st.sampled_from([0, IP_DF, IP_MF]),
    frag_offset=st.integers(0, 1000),
    ttl=u8,
    options=st.integers(0, 10).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)),
)


@settings(max_examples=200)
@given(headers, st.binary(max_size=100))
def test_build_then_parse_round_trips(header: Ipv4Header, payload: bytes) -> None:
    datagram = header.build(payload)
    parsed, start, end = Ipv4Header.parse(datagram)
    assert parsed.total_length == len(datagram)
    assert parsed.to_bytes() == datagram[:start]
    # Everything but the computed fields is what was asked for.
    assert parsed == dataclasses.replace(header, total_length=len(datagram), checksum=parsed.checksum)
    assert datagram[start:end] == payload


@settings(max_examples=60, deadline=None)
@given(headers, st.binary(max_size=40))
def test_vmlan_datagrams_decode_identically_in_scapy(header: Ipv4Header, payload: bytes) -> None:
    datagram = header.build(payload)
    pkt = IP(datagram)
    assert (pkt.version, pkt.ihl, pkt.tos, pkt.len, pkt.id) == (
        4,
        header.header_len // 4,
        header.tos,
        len(datagram),
        header.ident,
    )
    assert (int(pkt.flags), pkt.frag, pkt.ttl, pkt.proto) == (
        header.flags,
        header.frag_offset,
        header.ttl,
        header.proto,
    )
    assert (pkt.src, pkt.dst) == (ipv4_to_str(header.src), ipv4_to_str(header.dst))
    # scapy recomputes the checksum when the field is cleared: it must agree with ours.
    pkt.chksum = None
    assert bytes(pkt) == datagram


@settings(max_examples=60, deadline=None)
@given(unicast_ipv4, ipv4_addrs, u8, u16, st.sampled_from(["", "DF", "MF"]), u8, st.binary(max_size=40))
def test_scapy_datagrams_decode_identically_in_vmlan(
    src: bytes, dst: bytes, tos: int, ident: int, flags: str, ttl: int, payload: bytes
) -> None:
    datagram = bytes(
        IP(
            src=ipv4_to_str(src),
            dst=ipv4_to_str(dst),
            tos=tos,
            id=ident,
            flags=flags,
            ttl=ttl,
            proto=IPPROTO_TCP,
        )
        / payload
    )
    header, start, end = Ipv4Header.parse(datagram)
    assert (header.src, header.dst, header.tos, header.ident, header.ttl) == (src, dst, tos, ident, ttl)
    assert header.df == (flags == "DF") and header.mf == (flags == "MF")
    assert header.checksum == int.from_bytes(datagram[10:12], "big")
    assert datagram[start:end] == payload
