"""RFC 1071 / RFC 1624 checksum helpers against golden values, a reference loop and scapy."""

from __future__ import annotations

import os
import timeit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.utils import checksum as scapy_checksum

from vmlan.wire import checksum
from vmlan.wire.checksum import (
    checksum_adjust,
    internet_checksum,
    ones_complement_sum,
    pseudo_header_sum_v4,
)

from .strategies import ipv4_addrs, reference_checksum

numpy_sum16 = checksum._make_numpy_sum16()
needs_numpy = pytest.mark.skipif(numpy_sum16 is None, reason="numpy not installed")

SIZES = [0, 1, 2, 3, 63, 64, 1279, 1280, 1499, 1500, 2047, 2048, 2049, 4097, 9001, 65535, 65536]


def test_rfc1071_example_sum_and_checksum() -> None:
    # RFC 1071 section 3 worked example: words 0001 f203 f4f5 f6f7 sum to 0xddf2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_complement_sum(data) == 0xDDF2
    assert internet_checksum(data) == 0x220D


def test_known_ipv4_header_checksum_is_b861() -> None:
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(header) == 0xB861
    with_checksum = header[:10] + b"\xb8\x61" + header[12:]
    assert internet_checksum(with_checksum) == 0


def test_odd_length_pads_trailing_byte_as_high_half() -> None:
    assert internet_checksum(b"\x01") == 0xFEFF
    assert internet_checksum(b"\x00\x01\x02") == ~(0x0001 + 0x0200) & 0xFFFF


def test_zero_data_gives_ffff_and_nonzero_data_summing_to_minus_zero_gives_zero() -> None:
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(bytes(100)) == 0xFFFF
    assert ones_complement_sum(bytes(100)) == 0
    # Non-zero words summing to 0xFFFF must give checksum 0, not 0xFFFF (the % 0xFFFF pitfall).
    assert internet_checksum(b"\xff\xff") == 0
    assert internet_checksum(b"\x00\x01\xff\xfe") == 0
    assert internet_checksum(b"\xff\xff" * 40000) == 0  # big-buffer path too
    assert ones_complement_sum(b"\xff\xff" * 40000) == 0xFFFF


def test_initial_partial_sum_is_added_with_end_around_carry() -> None:
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert internet_checksum(data, 0x1234) == reference_checksum(data, 0x1234)
    assert internet_checksum(data, 0xFFFF) == reference_checksum(data, 0xFFFF)


@pytest.mark.parametrize("size", SIZES)
def test_matches_reference_loop_and_scapy_for_random_data(size: int) -> None:
    data = os.urandom(size)
    expected = reference_checksum(data)
    assert internet_checksum(data) == expected
    assert internet_checksum(bytearray(data)) == expected
    assert internet_checksum(memoryview(data)) == expected
    assert scapy_checksum(data) == expected


@pytest.mark.parametrize("size", SIZES)
def test_pure_python_path_matches_reference(size: int) -> None:
    for data in (os.urandom(size), bytes(size), b"\xff" * size):
        assert ~checksum._sum16_python(data) & 0xFFFF == reference_checksum(data)


@needs_numpy
@pytest.mark.parametrize("size", SIZES)
def test_numpy_path_matches_pure_python_path(size: int) -> None:
    assert numpy_sum16 is not None
    for data in (os.urandom(size), bytes(size), b"\xff" * size, os.urandom(size)):
        assert numpy_sum16(data) == checksum._sum16_python(data)
        assert numpy_sum16(memoryview(bytearray(data))) == checksum._sum16_python(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000), st.integers(0, 0xFFFF))
def test_checksum_equals_reference_for_arbitrary_data(data: bytes, initial: int) -> None:
    assert internet_checksum(data, initial) == reference_checksum(data, initial)
    if numpy_sum16 is not None:
        assert numpy_sum16(data) == checksum._sum16_python(data)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000))
def test_checksum_equals_scapy_for_arbitrary_data(data: bytes) -> None:
    assert internet_checksum(data) == scapy_checksum(data)


def test_checksum_of_64k_is_fast() -> None:
    # A per-word Python loop takes ~2 ms here; the fast paths take ~0.05 ms.
    data = os.urandom(65536)
    best = min(timeit.repeat(lambda: checksum._sum16_python(data), number=5, repeat=5)) / 5
    assert best < 0.001


def test_backend_reports_numpy_when_importable() -> None:
    assert checksum.checksum_backend() == ("python" if numpy_sum16 is None else "numpy")


@given(ipv4_addrs, ipv4_addrs, st.integers(0, 255), st.integers(0, 0xFFFF), st.binary(max_size=64))
def test_pseudo_header_sum_acts_like_the_pseudo_header_bytes(
    src: bytes, dst: bytes, proto: int, length: int, data: bytes
) -> None:
    pseudo = src + dst + bytes((0, proto)) + length.to_bytes(2, "big")
    partial = pseudo_header_sum_v4(src, dst, proto, length)
    assert partial == ones_complement_sum(pseudo)
    # As ``initial`` it is equivalent to checksumming the pseudo-header in front of the data.
    assert internet_checksum(data, partial) == reference_checksum(pseudo + data)


def test_pseudo_header_rejects_wrong_address_size() -> None:
    with pytest.raises(ValueError):
        pseudo_header_sum_v4(b"\x01\x02\x03", b"\x01\x02\x03\x04", 6, 20)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_checksum_adjust_equals_full_recompute(data: st.DataObject) -> None:
    packet = bytearray(data.draw(st.binary(min_size=8, max_size=200).filter(lambda b: len(b) % 2 == 0)))
    packet[0] |= 0x40  # keep the buffer non-zero, as every real header is
    packet[2:4] = b"\0\0"  # checksum field
    packet[2:4] = internet_checksum(packet).to_bytes(2, "big")
    start = data.draw(st.integers(4, len(packet) - 2)) & ~1
    size = data.draw(st.sampled_from([2, 4, 6])) if start + 6 <= len(packet) else 2
    new = data.draw(st.binary(min_size=size, max_size=size))
    old = bytes(packet[start : start + size])
    adjusted = checksum_adjust(int.from_bytes(packet[2:4], "big"), old, new)
    packet[start : start + size] = new
    packet[2:4] = b"\0\0"
    assert adjusted == internet_checksum(packet)


def test_checksum_adjust_rfc1624_example() -> None:
    # RFC 1624 section 4: HC = 0xDD2F, m changes 0x5555 -> 0x3285, HC' = 0x0000.
    assert checksum_adjust(0xDD2F, b"\x55\x55", b"\x32\x85") == 0x0000


def test_checksum_adjust_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        checksum_adjust(0, b"\x00\x01", b"\x00")
    with pytest.raises(ValueError):
        checksum_adjust(0, b"\x00", b"\x01")
