"""struct virtio_net_hdr: golden bytes, round trips, what parse refuses, and "parse or raise WireError"."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmlan.wire import IntegrityError, SanityError, WireError
from vmlan.wire.vnet import (
    FLAG_DATA_VALID,
    FLAG_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    PLAIN_HEADER,
    VNET_HLEN,
    Offload,
)

from .strategies import only_wire_errors, u8, u16

# A TSO frame as Linux's tun hands it over: Ethernet (14) + IPv4 (20) + TCP with timestamps (32) = 66
# header bytes, MSS 1448, checksum to fill in at 34 + 16.
TSO_HEADER = bytes.fromhex("01 01 4200 a805 2200 1000")


def test_golden_tso_header() -> None:
    offload = Offload(FLAG_NEEDS_CSUM, GSO_TCPV4, hdr_len=66, gso_size=1448, csum_start=34, csum_offset=16)
    assert offload.to_bytes() == TSO_HEADER
    assert len(TSO_HEADER) == VNET_HLEN == 10
    parsed = Offload.parse(TSO_HEADER)
    assert (parsed.flags, parsed.gso_type, parsed.hdr_len, parsed.gso_size, parsed.csum_start, parsed.csum_offset) == (
        1,
        1,
        66,
        1448,
        34,
        16,
    )
    assert parsed == offload
    assert hash(parsed) == hash(offload)


def test_golden_ipv6_tso_with_ecn_and_udp_checksum_only() -> None:
    ecn6 = Offload(FLAG_NEEDS_CSUM, GSO_TCPV6 | GSO_ECN, 86, 1428, 54, 16)
    assert ecn6.to_bytes() == bytes.fromhex("01 84 5600 9405 3600 1000")
    assert ecn6.gso == GSO_TCPV6
    udp = Offload(FLAG_NEEDS_CSUM, csum_start=34, csum_offset=6)
    assert udp.to_bytes() == bytes.fromhex("01 00 0000 0000 2200 0600")
    assert Offload.parse(udp.to_bytes()) == udp


def test_plain_header_is_ten_zero_bytes_and_means_nothing_to_do() -> None:
    assert bytes(10) == PLAIN_HEADER
    plain = Offload.parse(PLAIN_HEADER)
    assert plain.is_plain and not plain.needs_csum and not plain.data_valid and plain.gso == GSO_NONE


def test_flag_properties() -> None:
    valid = Offload(FLAG_DATA_VALID)
    assert valid.data_valid and not valid.needs_csum and valid.is_plain
    partial = Offload(FLAG_NEEDS_CSUM, csum_start=34, csum_offset=16)
    assert partial.needs_csum and not partial.is_plain
    gso = Offload(FLAG_NEEDS_CSUM, GSO_UDP_L4, gso_size=1472)
    assert gso.gso == GSO_UDP_L4 and not gso.is_plain


def test_parse_at_an_offset_inside_a_larger_buffer() -> None:
    buf = memoryview(b"\xee" * 3 + TSO_HEADER + b"frame...")
    assert Offload.parse(buf, 3).to_bytes() == TSO_HEADER


@pytest.mark.parametrize(
    ("header", "error", "message"),
    [
        (b"", IntegrityError, "header needs 10 bytes, got 0"),
        (TSO_HEADER[:9], IntegrityError, "header needs 10 bytes, got 9"),
        (bytes.fromhex("0002000000000000 0000"), SanityError, "unknown gso_type 0x02"),
        (bytes.fromhex("0006000000000000 0000"), SanityError, "unknown gso_type 0x06"),
        (bytes.fromhex("0021000000000000 0000"), SanityError, "unknown gso_type 0x21"),  # UDP tunnel bit
        (bytes.fromhex("0400000000000000 0000"), SanityError, "unknown flags 0x04"),  # RSC_INFO
        (bytes.fromhex("0800000000000000 0000"), SanityError, "unknown flags 0x08"),
        (bytes.fromhex("0185000000000000 0000"), SanityError, "ECN bit on gso_type 5"),
        (bytes.fromhex("0080000000000000 0000"), SanityError, "ECN bit on gso_type 0"),
        (bytes.fromhex("0101420000002200 1000"), SanityError, "GSO frame with gso_size 0"),
    ],
)
def test_parse_refuses(header: bytes, error: type[WireError], message: str) -> None:
    with pytest.raises(error) as info:
        Offload.parse(header)
    assert info.value.detail == message
    assert str(info.value) == f"[vnet] {message}"


def test_parse_refuses_offsets_outside_the_buffer() -> None:
    with pytest.raises(IntegrityError):
        Offload.parse(TSO_HEADER, -1)
    with pytest.raises(IntegrityError):
        Offload.parse(TSO_HEADER, 1)


@pytest.mark.parametrize(
    "fields",
    [
        {"flags": 256},
        {"gso_type": -1},
        {"hdr_len": 65536},
        {"gso_size": 70000},
        {"csum_start": -5},
        {"csum_offset": 1 << 20},
    ],
)
def test_to_bytes_refuses_fields_that_do_not_fit(fields: dict[str, int]) -> None:
    with pytest.raises(SanityError):
        Offload(**fields).to_bytes()


def test_equality_and_hash_do_not_depend_on_encodability() -> None:
    odd = Offload(gso_size=1 << 20)
    assert odd == Offload(gso_size=1 << 20)
    assert hash(odd) == hash(Offload(gso_size=1 << 20))
    assert odd != Offload()
    assert Offload() != "Offload()"
    assert {Offload(FLAG_NEEDS_CSUM, csum_start=34, csum_offset=6)} == {Offload(1, 0, 0, 0, 34, 6)}


def test_repr_names_every_field() -> None:
    assert repr(Offload(1, 1, 66, 1448, 34, 16)) == (
        "Offload(flags=1, gso_type=1, hdr_len=66, gso_size=1448, csum_start=34, csum_offset=16)"
    )


valid_headers = st.builds(
    Offload,
    flags=st.sampled_from([0, FLAG_NEEDS_CSUM, FLAG_DATA_VALID, FLAG_NEEDS_CSUM | FLAG_DATA_VALID]),
    gso_type=st.sampled_from([GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4, GSO_TCPV4 | GSO_ECN]),
    hdr_len=u16,
    gso_size=st.integers(1, 0xFFFF),
    csum_start=u16,
    csum_offset=u16,
)


@settings(max_examples=300, deadline=None)
@given(valid_headers)
def test_round_trip(offload: Offload) -> None:
    raw = offload.to_bytes()
    assert len(raw) == VNET_HLEN
    back = Offload.parse(raw)
    assert back == offload and back.to_bytes() == raw


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=16), st.integers(-2, 16))
def test_any_bytes_parse_or_raise_wire_error(data: bytes, offset: int) -> None:
    only_wire_errors(lambda: Offload.parse(data, offset))


interesting_u8 = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 0x80, 0x81, 0x83, 0x84, 0x85, 0x20, 0xFF]) | u8


@settings(max_examples=400, deadline=None)
@given(interesting_u8, interesting_u8, u16, st.sampled_from([0, 1, 1448]) | u16, u16, u16)
def test_parse_accepts_exactly_the_documented_headers(
    flags: int, gso_type: int, hdr_len: int, gso_size: int, csum_start: int, csum_offset: int
) -> None:
    raw = bytes((flags, gso_type)) + b"".join(
        v.to_bytes(2, "little") for v in (hdr_len, gso_size, csum_start, csum_offset)
    )
    gso = gso_type & 0x7F
    acceptable = (
        not flags & ~3
        and gso in (0, 1, 3, 4, 5)
        and (not gso_type & 0x80 or gso in (1, 4))
        and (gso == 0 or gso_size != 0)
    )
    if acceptable:
        assert Offload.parse(raw).to_bytes() == raw
    else:
        with pytest.raises(SanityError):
            Offload.parse(raw)
