"""IPv6 reassembly (RFC 8200 4.5) in the shared engine: scapy's fragment6() as the oracle, RFC 5722
overlaps, RFC 7112 header chains, RFC 6946 atomic fragments, caps shared with IPv4, a fake clock."""

from __future__ import annotations

import random
import struct
from collections.abc import Hashable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrHopByHop,
    fragment6,
)
from scapy.packet import Packet, Raw

from tests.engines.test_reassembly import check_invariants, pattern, raw_fragment
from tests.engines.test_reassembly import feed as feed4
from vmlan.engines.reassembly import REASSEMBLY_TIMEOUT, Reassembler, TimedOut

GUEST_A, GUEST_B = "guest-a", "guest-b"
SRC, DST = "fec0::5054:ff:fe12:3456", "fec0::2"
_SRC = bytes.fromhex("fec0000000000000505400fffe123456")
_DST = bytes.fromhex("fec0" + "00" * 13 + "02")
HBH = b"\x2c\x00\x01\x04\x00\x00\x00\x00"  # a hop-by-hop header (PadN) whose next header is Fragment


def with_fragment_header(pkt: Packet, ident: int) -> Packet:
    """``pkt`` with a Fragment header after its IPv6 header and a hop-by-hop header if it starts with one:
    what follows is the fragmentable part."""
    raw = bytearray(bytes(pkt))
    nh_at, pos = 6, 40
    if raw[6] == 0:
        nh_at, pos = 40, 40 + (raw[41] + 1) * 8
    raw[pos:pos] = struct.pack("!BBHI", raw[nh_at], 0, 0, ident)
    raw[nh_at] = 44
    struct.pack_into("!H", raw, 4, len(raw) - 40)
    return IPv6(bytes(raw))


def frags6(pkt: Packet, mtu: int = 1500, ident: int = 0x12345678) -> list[bytes]:
    out = [bytes(f) for f in fragment6(with_fragment_header(pkt, ident), mtu)]  # type: ignore[no-untyped-call]
    assert all(len(f) <= mtu for f in out)
    return out


def feed(r: Reassembler, owner: Hashable, raw: bytes, now: float = 0.0) -> bytes | None:
    return r.feed6(owner, raw, now)


def feed_all(r: Reassembler, owner: Hashable, raws: Sequence[bytes], now: float = 0.0) -> list[bytes]:
    return [out for raw in raws if (out := feed(r, owner, raw, now)) is not None]


def frag6(offset: int, data: bytes, more: bool, ident: int = 77, nh: int = 17, ext: bytes = b"", tc: int = 0,
          src: bytes = _SRC) -> bytes:
    """A fragment built by hand: ``ext`` is an unfragmentable chain ending in Next Header 44."""
    fragment = struct.pack("!BBHI", nh, 0, offset | int(more), ident)
    head = struct.pack("!IHBB16s16s", 0x60000000 | tc << 20, len(ext) + 8 + len(data), 0 if ext else 44, 64, src,
                       _DST)
    return head + ext + fragment + data


UDP_HEAD = b"\x13\x88\x17\x70\x00\x20\x00\x00"  # 8 bytes that pass for a UDP header


# -- scapy's fragment6() as the oracle ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pkt", "mtu"),
    [
        (IPv6(src=SRC, dst=DST) / ICMPv6EchoRequest(id=1, seq=1, data=pattern(4000)), 1500),  # ping -6 -s 4000
        (IPv6(src=SRC, dst=DST) / UDP(sport=1, dport=2) / Raw(pattern(8000)), 1500),  # 8000-byte UDP
        (IPv6(src=SRC, dst=DST) / UDP(sport=1, dport=2) / Raw(pattern(65519)), 1500),  # the largest scapy cuts
        (IPv6(src=SRC, dst=DST) / UDP(sport=1, dport=2) / Raw(pattern(3000)), 1280),  # the IPv6 minimum MTU
        (IPv6(src=SRC, dst=DST, tc=0x22) / TCP(flags="PA") / Raw(pattern(2000)), 104),  # 8-byte pieces... nearly
        (IPv6(src=SRC, dst=DST) / IPv6ExtHdrHopByHop() / UDP(sport=1, dport=2) / Raw(pattern(5000)), 1500),
        (IPv6(src=SRC, dst=DST) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / UDP() / Raw(pattern(3000)), 1400),
    ],
)
def test_in_order_reversed_and_shuffled_give_scapys_datagram(pkt: Packet, mtu: int) -> None:
    original = bytes(pkt)
    pieces = frags6(pkt, mtu)
    assert len(pieces) > 1
    shuffled = random.Random(len(original)).sample(pieces, len(pieces))
    for order in (pieces, pieces[::-1], shuffled):
        r = Reassembler()
        outs = [feed(r, GUEST_A, raw) for raw in order]
        assert outs[:-1] == [None] * (len(order) - 1)
        assert outs[-1] == original  # byte for byte: Payload Length, Next Header, no Fragment header
        assert r.counters.as_dict() == {
            "atomic": 0, "duplicates": 0, "evicted": 0, "fragments": len(order), "incomplete_chain": 0,
            "malformed": 0, "overlaps": 0, "oversize": 0, "reassembled": 1, "timeouts": 0,
        }  # fmt: skip
        assert r.datagrams_held == r.bytes_held == 0 and r.get_timer() is None


def test_duplicates_are_ignored_and_the_datagram_completes_once() -> None:
    pkt = IPv6(src=SRC, dst=DST) / UDP(sport=1, dport=2) / Raw(pattern(4000))
    pieces = frags6(pkt)
    r = Reassembler()
    assert feed_all(r, GUEST_A, [pieces[0], pieces[0], pieces[1], pieces[0], pieces[2]]) == [bytes(pkt)]
    assert r.counters.duplicates == 2 and r.counters.reassembled == 1 and r.counters.overlaps == 0


def test_an_identical_fragment_after_completion_starts_a_new_datagram_that_expires() -> None:
    pkt = IPv6(src=SRC, dst=DST) / UDP(sport=1, dport=2) / Raw(pattern(4000))
    pieces = frags6(pkt)
    r = Reassembler()
    assert feed_all(r, GUEST_A, [*pieces, pieces[1]]) == [bytes(pkt)]
    assert r.datagrams_held == 1
    assert r.handle_timer(REASSEMBLY_TIMEOUT) == [] and r.datagrams_held == 0  # no first fragment: unreported


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((0, UDP_HEAD + b"A" * 16, True), (16, b"B" * 16, True)),  # the second starts inside the first
        ((16, b"B" * 16, True), (0, UDP_HEAD + b"A" * 16, True)),  # the same, other order
        ((0, UDP_HEAD + b"A" * 16, True), (0, UDP_HEAD + b"C" * 16, True)),  # same place, other bytes
        ((8, b"B" * 32, True), (16, b"C" * 8, True)),  # one inside the other
        ((16, b"B" * 8, False), (8, b"C" * 16, True)),  # into the last fragment
    ],
)
def test_overlaps_drop_the_whole_datagram_rfc5722(
    first: tuple[int, bytes, bool], second: tuple[int, bytes, bool]
) -> None:
    r = Reassembler()
    assert feed(r, GUEST_A, frag6(*first)) is None
    assert feed(r, GUEST_A, frag6(*second)) is None
    assert r.counters.overlaps == 1 and r.datagrams_held == 0 and r.bytes_held == 0
    # what completes the datagram now starts a new one: nothing comes out of the dropped bytes
    assert feed(r, GUEST_A, frag6(40, b"end", False)) is None


@pytest.mark.parametrize(
    ("fragments", "why"),
    [
        ([(0, UDP_HEAD + b"x" * 5, True)], "M set and not a multiple of 8 (RFC 8200)"),
        ([(8, b"x" * 12, True)], "M set and not a multiple of 8, not the first"),
        ([(8, b"", True)], "empty"),
        ([(16, b"x", False), (24, b"y" * 8, True)], "past the end a last fragment fixed"),
        ([(16, b"x", False), (8, b"y", False)], "a second last fragment ending elsewhere"),
    ],
)
def test_bad_lengths_are_malformed(fragments: list[tuple[int, bytes, bool]], why: str) -> None:
    r = Reassembler()
    assert feed_all(r, GUEST_A, [frag6(*f) for f in fragments]) == [], why
    assert r.counters.malformed == 1, why
    check_invariants(r)


def test_a_packet_shorter_than_its_fragment_header_or_payload_length_is_malformed() -> None:
    r = Reassembler()
    raw = frag6(8, b"x" * 8, True)
    assert feed(r, GUEST_A, raw[:44]) is None  # Payload Length disagrees
    cut = bytearray(raw[:44])
    cut[4:6] = b"\x00\x04"
    assert feed(r, GUEST_A, bytes(cut)) is None  # a Fragment header cut short
    assert feed(r, GUEST_A, b"\x45" + raw[1:]) is None  # not version 6
    assert r.counters.malformed == 3 and r.datagrams_held == 0


@pytest.mark.parametrize(
    ("nh", "data", "ok"),
    [
        (17, b"\x01\x02\x03\x04\x00\x08\x00", False),  # 7 bytes of UDP
        (17, UDP_HEAD, True),
        (6, b"\0" * 16, False),  # TCP needs its 20 bytes
        (6, b"\0" * 24, True),
        (58, b"\x80\0\0\0", False),  # ICMPv6 needs 8 (echo's identifier and sequence)
        (60, b"\x11\x00\x01\x04\0\0\0\0", False),  # a destination options header, then nothing of UDP
        (60, b"\x11\x00\x01\x04\0\0\0\0" + UDP_HEAD, True),
        (60, b"\x11\x01" + b"\0" * 6, False),  # a destination options header of 16 bytes cut at 8
        (44, b"\x11\0\0\0\0\0\0\1" + UDP_HEAD, False),  # a second Fragment header
        (59, b"\0" * 8, True),  # no next header: nothing more to hold
    ],
)
def test_the_first_fragment_must_hold_the_whole_header_chain_rfc7112(nh: int, data: bytes, ok: bool) -> None:
    if ok:
        data += b"\0" * (-len(data) % 8)  # M set: a multiple of 8 (the cut ones are refused before that rule)
    r = Reassembler()
    assert feed(r, GUEST_A, frag6(0, data, True, nh=nh)) is None
    if ok:
        assert r.counters.incomplete_chain == 0 and r.datagrams_held == 1
    else:
        assert r.counters.incomplete_chain == 1 and r.datagrams_held == 0, r.counters.as_dict()


def test_later_fragments_need_no_header_chain_and_a_refused_first_leaves_the_rest_alone() -> None:
    r = Reassembler()
    assert feed(r, GUEST_A, frag6(8, b"tail", False)) is None
    assert feed(r, GUEST_A, frag6(0, b"\0" * 8, True, nh=6)) is None  # 8 bytes of TCP: refused
    assert r.counters.incomplete_chain == 1 and r.datagrams_held == 1
    out = feed(r, GUEST_A, frag6(0, UDP_HEAD, True))
    assert out is not None and out[40:] == UDP_HEAD + b"tail" and out[6] == 17


def test_atomic_fragments_pass_whole_and_never_touch_the_table_rfc6946() -> None:
    pkt = IPv6(src=SRC, dst=DST) / IPv6ExtHdrHopByHop() / UDP(sport=1, dport=2) / Raw(b"atom")
    atomic = bytes(with_fragment_header(pkt, 77))
    r = Reassembler()
    assert feed(r, GUEST_A, frag6(8, b"tail", False, ident=77)) is None  # a datagram under the same ident
    assert feed(r, GUEST_A, atomic) == bytes(pkt)
    assert r.counters.atomic == 1 and r.counters.fragments == 1 and r.datagrams_held == 1
    out = feed(r, GUEST_A, frag6(0, UDP_HEAD, True, ident=77))
    assert out is not None and out[48:] == b"tail"  # the atomic one neither completed nor disturbed it


def test_a_datagram_with_no_fragment_header_passes_through() -> None:
    whole = bytes(IPv6(src=SRC, dst=DST) / IPv6ExtHdrHopByHop() / UDP() / Raw(b"x"))
    r = Reassembler()
    assert feed(r, GUEST_A, whole) == whole
    assert r.counters.as_dict() == dict.fromkeys(r.counters.as_dict(), 0)


def test_unfragmentable_headers_and_the_fragments_next_header_make_the_result() -> None:
    r = Reassembler()
    assert feed(r, GUEST_A, frag6(8, b"tail", False, nh=58, ext=HBH)) is None
    out = feed(r, GUEST_A, frag6(0, b"\x80\0\0\0\0\1\0\1", True, nh=58, ext=HBH))
    assert out is not None
    assert out[6] == 0 and out[40] == 58 and out[40:48] == b"\x3a" + HBH[1:]  # hop-by-hop now names ICMPv6
    assert struct.unpack_from("!H", out, 4)[0] == 8 + 12 and out[48:] == b"\x80\0\0\0\0\1\0\1tail"


def test_ecn_rules_of_rfc3168_apply_to_ipv6() -> None:
    r = Reassembler()
    assert feed(r, GUEST_A, frag6(0, UDP_HEAD, True, tc=0x02)) is None  # ECT(0)
    out = feed(r, GUEST_A, frag6(8, b"y", False, tc=0x03))  # CE
    assert out is not None and (out[1] >> 4) & 3 == 3
    assert feed(r, GUEST_A, frag6(0, UDP_HEAD, True, tc=0x00)) is None  # Not-ECT ...
    assert feed(r, GUEST_A, frag6(8, b"y", False, tc=0x01)) is None  # ... with ECT(1): dropped
    assert r.counters.malformed == 1 and r.datagrams_held == 0


def test_a_payload_past_65535_is_oversize_the_unfragmentable_headers_counted() -> None:
    r = Reassembler()
    assert feed(r, GUEST_A, frag6(65528, b"x" * 8, False)) is None  # ends at 65536
    assert r.counters.oversize == 1 and r.datagrams_held == 0
    assert feed(r, GUEST_A, frag6(65520, b"x" * 15, False)) is None  # 65535: fine so far
    assert feed(r, GUEST_A, frag6(0, UDP_HEAD, True, ext=HBH)) is None  # but 8 bytes of hop-by-hop with it
    assert r.counters.oversize == 2 and r.datagrams_held == 0


def test_the_largest_payload_reassembles() -> None:
    body = UDP_HEAD + pattern(65535 - 8)  # Payload Length 65535 once whole: 8 more than a fragment can say
    pieces = [frag6(off, body[off : off + 1448], off + 1448 < len(body)) for off in range(0, len(body), 1448)]
    r = Reassembler(max_bytes_per_owner=1 << 20)
    (out,) = feed_all(r, GUEST_A, pieces[::-1])
    assert struct.unpack_from("!H", out, 4)[0] == 65535 and out[40:] == body and out[6] == 17


# -- caps: per owner, global, shared with IPv4 ----------------------------------------------------------------
def halves(owner_ident: int, count: int) -> list[bytes]:
    return [frag6(0, UDP_HEAD + b"h" * 8, True, ident=owner_ident * 1000 + i) for i in range(count)]


def test_per_guest_datagram_cap_evicts_that_guests_oldest_and_is_shared_with_ipv4() -> None:
    r = Reassembler(max_datagrams_per_owner=3)
    assert feed4(r, GUEST_A, raw_fragment(0, b"v4" * 4, True, ident=1)) is None
    feed_all(r, GUEST_A, halves(1, 2))
    assert r.owner_usage(GUEST_A)[0] == 3 and r.counters.evicted == 0
    feed_all(r, GUEST_A, halves(2, 1))
    assert r.owner_usage(GUEST_A)[0] == 3 and r.counters.evicted == 1
    assert all(len(key) == 4 for key in r._datagrams), "the IPv4 datagram, oldest, was the one to go"
    check_invariants(r)


def test_per_guest_byte_cap_holds_for_ipv6_fragments() -> None:
    r = Reassembler(max_bytes_per_owner=8192, max_datagrams_per_owner=64)
    for i in range(20):
        feed(r, GUEST_A, frag6(0, UDP_HEAD + b"z" * 1000, True, ident=i))
        check_invariants(r)
    assert r.owner_usage(GUEST_A)[1] <= 8192 and r.counters.evicted > 0


def test_one_guest_flooding_fragments_cannot_evict_another_guests() -> None:
    r = Reassembler(max_datagrams=8, max_bytes=64 * 1024, max_datagrams_per_owner=16)
    feed_all(r, GUEST_B, halves(2, 2))
    b_usage = r.owner_usage(GUEST_B)
    for i in range(200):
        feed(r, GUEST_A, frag6(0, UDP_HEAD + b"f" * 400, True, ident=10_000 + i))
        check_invariants(r)
    assert r.owner_usage(GUEST_B) == b_usage
    assert r.datagrams_held <= 8 and r.counters.evicted >= 190


def test_global_byte_cap_makes_the_heaviest_guest_pay() -> None:
    r = Reassembler(max_bytes=16 * 1024, max_bytes_per_owner=16 * 1024, max_datagrams_per_owner=64)
    feed(r, GUEST_B, frag6(0, UDP_HEAD + b"b" * 800, True, ident=1))
    b_usage = r.owner_usage(GUEST_B)
    for i in range(60):
        feed(r, GUEST_A, frag6(0, UDP_HEAD + b"a" * 800, True, ident=100 + i))
        check_invariants(r)
    assert r.owner_usage(GUEST_B) == b_usage and r.bytes_held <= 16 * 1024


def test_two_guests_fragments_never_mix() -> None:
    a = IPv6(src=SRC, dst=DST) / UDP(sport=1, dport=2) / Raw(pattern(4000, 1))
    b = IPv6(src=SRC, dst=DST) / UDP(sport=1, dport=2) / Raw(pattern(4000, 2))  # the same key, forged
    fa, fb = frags6(a), frags6(b)
    r = Reassembler()
    outs = []
    for x, y in zip(fa, fb, strict=True):
        outs.append(feed(r, GUEST_A, x))
        outs.append(feed(r, GUEST_B, y))
    assert outs[-2:] == [bytes(a), bytes(b)] and r.counters.overlaps == 0
    # and a guest's fragment never completes another's datagram
    r2 = Reassembler()
    assert feed_all(r2, GUEST_A, fa[:-1]) == [] and feed(r2, GUEST_B, fa[-1]) is None
    assert r2.datagrams_held == 2


def test_identification_and_addresses_separate_datagrams() -> None:
    r = Reassembler()
    feed(r, GUEST_A, frag6(0, UDP_HEAD, True, ident=1))
    feed(r, GUEST_A, frag6(0, UDP_HEAD, True, ident=1 << 31))  # 32-bit identification
    feed(r, GUEST_A, frag6(0, UDP_HEAD, True, ident=1, src=b"\xfe\x80" + _SRC[2:]))
    assert r.datagrams_held == 3
    out = feed(r, GUEST_A, frag6(8, b"one", False, ident=1))
    assert out is not None and out[8:24] == _SRC and out[48:] == b"one"


# -- time ----------------------------------------------------------------------------------------------------
def test_an_incomplete_datagram_expires_with_a_quote_for_time_exceeded() -> None:
    r = Reassembler()
    pkt = IPv6(src=SRC, dst=DST) / ICMPv6EchoRequest(id=1, seq=1, data=pattern(3000))
    first, *_rest = frags6(pkt)
    assert feed(r, GUEST_A, first, now=100.0) is None
    assert r.get_timer() == 100.0 + REASSEMBLY_TIMEOUT
    assert feed(r, GUEST_A, frag6(8, b"x" * 8, True), now=120.0) is None  # another datagram, later
    assert r.handle_timer(129.9) == []
    (expired,) = r.handle_timer(130.0)
    assert expired == TimedOut(GUEST_A, first)  # its headers through the Fragment header and its data
    assert r.datagrams_held == 1 and r.get_timer() == 150.0
    assert r.handle_timer(150.0) == []  # no first fragment: nothing to quote
    assert r.counters.timeouts == 2 and r.datagrams_held == r.bytes_held == 0


def test_later_fragments_do_not_extend_a_datagrams_life() -> None:
    r = Reassembler()
    feed(r, GUEST_A, frag6(0, UDP_HEAD, True), now=0.0)
    feed(r, GUEST_A, frag6(16, b"y" * 8, True), now=29.0)
    assert len(r.handle_timer(30.0)) == 1 and r.datagrams_held == 0


# -- never raises, always bounded; random fragmentations reassemble -------------------------------------------
@st.composite
def fragmented(draw: st.DrawFn) -> tuple[str, int, int, str, int, int, int, list[int]]:
    """What to build (scapy draws randomness of its own, so packets are made in the test): upper layer,
    body length and seed, extension headers, traffic class, MTU, identification, and an order."""
    upper = draw(st.sampled_from(["udp", "icmp", "tcp"]))
    length, seed = draw(st.integers(0, 12000)), draw(st.integers(0, 255))
    ext = draw(st.sampled_from(["", "hbh", "hbh+dst", "dst"]))
    tc = draw(st.sampled_from([0, 0x20, 0x22]))
    mtu = draw(st.sampled_from([1280, 1500, 9000]) | st.integers(200, 4000))
    ident = draw(st.integers(0, 0xFFFFFFFF))
    order = draw(st.permutations(range(80)))
    return upper, length, seed, ext, tc, mtu, ident, list(order)


def build_fragmented(case: tuple[str, int, int, str, int, int, int, list[int]]) -> tuple[bytes, list[bytes]]:
    upper, length, seed, ext, tc, mtu, ident, order = case
    pkt: Packet = IPv6(src=SRC, dst=DST, tc=tc)
    if "hbh" in ext:
        pkt = pkt / IPv6ExtHdrHopByHop()
    if "dst" in ext:  # fragmentable: in the first fragment's header chain
        pkt = pkt / IPv6ExtHdrDestOpt()
    layer = {"udp": UDP(sport=5, dport=7), "icmp": ICMPv6EchoRequest(id=1), "tcp": TCP(flags="A")}[upper]
    pkt = pkt / layer / Raw(pattern(length, seed))
    pieces = frags6(pkt, mtu, ident)
    ranks = {i: rank for rank, i in enumerate(order)}  # the drawn permutation, cut to the pieces there are
    return bytes(pkt), sorted(pieces, key=lambda raw: ranks.get(pieces.index(raw), 0))


@settings(max_examples=150, deadline=None)
@given(fragmented())
def test_random_fragmentations_of_random_datagrams_reassemble_to_the_original(
    case: tuple[str, int, int, str, int, int, int, list[int]],
) -> None:
    original, pieces = build_fragmented(case)
    r = Reassembler(max_bytes_per_owner=1 << 20)
    outs = [feed(r, GUEST_A, raw) for raw in pieces]
    assert outs[-1] == original
    assert outs[:-1] == [None] * (len(pieces) - 1)
    check_invariants(r)
    assert r.datagrams_held == 0


@st.composite
def garbage(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    ops: list[tuple[Any, ...]] = []
    clock = 0.0
    for _ in range(draw(st.integers(1, 80))):
        clock += draw(st.sampled_from([0.0] * 6 + [1.0, 31.0]))
        kind = draw(st.sampled_from(["feed"] * 8 + ["raw", "timer", "forget"]))
        owner = draw(st.sampled_from([GUEST_A, GUEST_B]))
        if kind == "feed":  # plausible fragments of a few idents, with random chains and lengths
            ext = draw(st.sampled_from([b"", b"", HBH, b"\x3c\x00\x01\x04\0\0\0\0"]))
            if ext and ext[0] == 0x3C:
                ext = b"\x2c" + ext[1:]
            raw = frag6(
                draw(st.sampled_from([0, 0, 8, 16, 1448]) | st.integers(0, 0x1FFF).map(lambda v: v * 8)),
                draw(st.binary(max_size=64) | st.sampled_from([UDP_HEAD, UDP_HEAD * 4])),
                draw(st.booleans()),
                ident=draw(st.integers(0, 3)),
                nh=draw(st.sampled_from([17, 17, 6, 58, 60, 44, 59, 0])),
                ext=ext,
                tc=draw(st.sampled_from([0] * 8 + [1, 2, 3])),
            )
            ops.append(("feed", owner, clock, raw))
        elif kind == "raw":
            ops.append(("feed", owner, clock, draw(st.binary(max_size=120))))
        else:
            ops.append((kind, owner, clock))
    return ops


@settings(max_examples=300, deadline=None)
@given(garbage(), st.sampled_from([{}, {"max_datagrams_per_owner": 2, "max_bytes_per_owner": 2048,
                                        "max_datagrams": 3, "max_bytes": 4096}]))
def test_random_garbage_never_raises_and_stays_bounded(ops: list[tuple[Any, ...]], caps: dict[str, int]) -> None:
    r = Reassembler(**caps)
    for op in ops:
        kind, owner, clock = op[:3]
        if kind == "feed":
            out = r.feed6(owner, op[3], clock)
            if out is not None:
                assert out[0] >> 4 == 6 and struct.unpack_from("!H", out, 4)[0] == len(out) - 40
        elif kind == "timer":
            for expired in r.handle_timer(clock):
                assert expired.quote[0] >> 4 == 6
        else:
            r.forget_owner(owner)
        check_invariants(r)
