"""IPv4 reassembly: scapy's fragment() as the oracle, overlap attacks, caps per owner, timeouts on a fake clock."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Hashable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption, fragment
from scapy.packet import Packet, Raw

from vmlan.engines.reassembly import (
    DATAGRAM_OVERHEAD,
    FRAGMENT_OVERHEAD,
    REASSEMBLY_TIMEOUT,
    Ipv4Reassembler,
    TimedOut,
)
from vmlan.wire.ipv4 import IP_DF, IP_MF, Ipv4Header

GUEST_A, GUEST_B = "guest-a", "guest-b"
SRC, DST = "10.0.2.15", "10.0.2.2"


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((i * 13 + seed + (i >> 8)) & 0xFF for i in range(n))


def datagram(payload_len: int = 4008, ident: int = 0x1234, **ip: Any) -> Packet:
    """An ICMP echo request of ``payload_len`` IP payload bytes (``ping -s payload_len-8``)."""
    return IP(src=SRC, dst=DST, id=ident, **ip) / ICMP(type=8, id=9, seq=1) / Raw(pattern(payload_len - 8, ident))


def frags(pkt: Packet, size: int = 1480) -> list[bytes]:
    return [bytes(f) for f in fragment(pkt, fragsize=size)]  # type: ignore[no-untyped-call]


def feed(r: Ipv4Reassembler, owner: Hashable, raw: bytes, now: float = 0.0) -> bytes | None:
    header, start, end = Ipv4Header.parse(raw)
    return r.feed(owner, header, memoryview(raw)[start:end], now)


def feed_all(r: Ipv4Reassembler, owner: Hashable, raws: Sequence[bytes], now: float = 0.0) -> list[bytes]:
    return [out for raw in raws if (out := feed(r, owner, raw, now)) is not None]


def raw_fragment(
    offset: int, data: bytes, more: bool, ident: int = 77, proto: int = 17, tos: int = 0, options: bytes = b""
) -> bytes:
    """A fragment built by hand: for the cases scapy's fragment() never produces."""
    header = Ipv4Header(
        src=bytes((10, 0, 2, 15)), dst=bytes((10, 0, 2, 2)), proto=proto, ident=ident, tos=tos,
        flags=IP_MF if more else 0, frag_offset=offset // 8, options=options,
    )  # fmt: skip
    return header.build(data)


def check_invariants(r: Ipv4Reassembler) -> None:
    """The caps hold and the books balance (reads internals: this is the engine's own test)."""
    assert r.datagrams_held <= r.max_datagrams
    assert r.bytes_held <= r.max_bytes
    total_charge = 0
    total_datagrams = 0
    for owner, account in r._owners.items():
        assert account.datagrams, "an empty account is removed"
        count, charge = r.owner_usage(owner)
        assert count <= r.max_datagrams_per_owner and charge <= r.max_bytes_per_owner
        dg_charge = 0
        for key, dg in account.datagrams.items():
            assert key[0] == owner and r._datagrams[key] is dg
            assert dg.starts == sorted(dg.starts)
            assert all(e > s for s, e in zip(dg.starts, dg.ends, strict=True))
            assert all(dg.ends[i] <= dg.starts[i + 1] for i in range(len(dg.starts) - 1)), "no overlaps held"
            assert [len(d) for d in dg.datas] == [e - s for s, e in zip(dg.starts, dg.ends, strict=True)]
            assert dg.received == sum(len(d) for d in dg.datas) != dg.total
            kept = len(dg.first) if isinstance(dg.first, bytes) else 0  # an IPv6 first fragment's headers
            assert dg.charge == DATAGRAM_OVERHEAD + kept + sum(len(d) + FRAGMENT_OVERHEAD for d in dg.datas)
            dg_charge += dg.charge
        assert charge == dg_charge
        total_charge += charge
        total_datagrams += count
    assert total_charge == r.bytes_held
    assert total_datagrams == r.datagrams_held == len(r._datagrams)
    deadlines = [dg.deadline for dg in r._datagrams.values()]
    assert deadlines == sorted(deadlines)
    assert r.get_timer() == (deadlines[0] if deadlines else None)


# -- scapy's fragment() as the oracle ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pkt", "size"),
    [
        (datagram(4008), 1480),  # ping -s 4000 at MTU 1500: 1480 + 1480 + 1048
        (IP(src=SRC, dst=DST, id=5) / UDP(sport=1, dport=2) / Raw(pattern(8192)), 1480),  # 8 KB UDP
        (IP(src=SRC, dst=DST, id=6) / UDP(sport=1, dport=2) / Raw(pattern(65507)), 1480),  # the largest UDP
        (IP(src=SRC, dst=DST, id=7) / UDP(sport=1, dport=2) / Raw(pattern(3000)), 552),  # MTU 576
        (IP(src=SRC, dst=DST, id=8, tos=0x12, ttl=3) / TCP(flags="PA") / Raw(pattern(2000)), 8),  # 8-byte pieces
        (datagram(3000, options=[IPOption(b"\x94\x04\x00\x00")]), 1472),  # options kept from the first
    ],
)
def test_in_order_and_reversed_give_scapys_datagram(pkt: Packet, size: int) -> None:
    original = bytes(pkt)
    pieces = frags(pkt, size)
    assert len(pieces) > 1
    for order in (pieces, pieces[::-1]):
        r = Ipv4Reassembler()
        outs = [feed(r, GUEST_A, raw) for raw in order]
        assert outs[:-1] == [None] * (len(order) - 1)
        assert outs[-1] == original  # byte for byte: lengths, cleared fragment fields, header checksum
        assert r.counters.as_dict() == {
            "atomic": 0, "duplicates": 0, "evicted": 0, "fragments": len(order), "incomplete_chain": 0,
            "malformed": 0, "overlaps": 0, "oversize": 0, "reassembled": 1, "timeouts": 0,
        }  # fmt: skip
        assert r.datagrams_held == r.bytes_held == 0 and r.get_timer() is None


@st.composite
def shuffled_with_duplicates(draw: st.DrawFn) -> tuple[bytes, list[bytes], int]:
    size = draw(st.sampled_from([8, 16, 64, 552, 1472, 1480]) | st.integers(8, 3000))
    payload_len = draw(st.integers(size, 20000))  # with the UDP header, more than one fragment
    pkt = IP(src=SRC, dst=DST, id=draw(st.integers(0, 0xFFFF))) / UDP(sport=7, dport=9) / Raw(pattern(payload_len))
    pieces = frags(pkt, size)
    if len(pieces) > 300:
        pieces = frags(pkt, 1480)
    order = draw(st.permutations(pieces))
    sequence: list[bytes] = []
    dups = 0
    for i, raw in enumerate(order):
        sequence.append(raw)
        if i < len(order) - 1 and draw(st.integers(0, 3)) == 0:  # a copy of something already fed
            sequence.append(sequence[draw(st.integers(0, len(sequence) - 1))])
            dups += 1
    return bytes(pkt), sequence, dups


@settings(max_examples=120, deadline=None)
@given(shuffled_with_duplicates())
def test_shuffled_and_duplicated_fragments_reassemble_once(case: tuple[bytes, list[bytes], int]) -> None:
    original, sequence, dups = case
    r = Ipv4Reassembler()
    outs = [feed(r, GUEST_A, raw) for raw in sequence]
    assert outs[-1] == original
    assert outs[:-1] == [None] * (len(sequence) - 1)
    assert r.counters.duplicates == dups and r.counters.reassembled == 1
    assert r.counters.overlaps == r.counters.malformed == 0
    check_invariants(r)
    assert r.datagrams_held == 0


def test_interleaved_datagrams_of_two_guests_with_equal_keys_stay_apart() -> None:
    # Same addresses and ident from two guests (one forging the other's address): two datagrams.
    a, b = datagram(4008, ident=1), datagram(4008, ident=1)
    b[Raw].load = pattern(4000, 99)
    fa, fb = frags(a), frags(b)
    r = Ipv4Reassembler()
    outs = []
    for x, y in zip(fa, fb, strict=True):
        outs.append(feed(r, GUEST_A, x))
        outs.append(feed(r, GUEST_B, y))
    assert outs[-2:] == [bytes(a), bytes(b)]
    assert r.counters.overlaps == 0


def test_ident_protocol_and_addresses_separate_datagrams() -> None:
    r = Ipv4Reassembler()
    one = raw_fragment(0, b"A" * 8, True, ident=1, proto=17)
    assert feed(r, GUEST_A, one) is None
    assert feed(r, GUEST_A, raw_fragment(0, b"B" * 8, True, ident=2, proto=17)) is None
    assert feed(r, GUEST_A, raw_fragment(0, b"C" * 8, True, ident=1, proto=1)) is None
    assert r.datagrams_held == 3 and r.counters.overlaps == 0
    out = feed(r, GUEST_A, raw_fragment(8, b"end", False, ident=1, proto=17))
    assert out is not None and out[20:] == b"A" * 8 + b"end"


def test_a_datagram_that_is_not_a_fragment_passes_through() -> None:
    whole = bytes(datagram(100, flags="DF"))
    r = Ipv4Reassembler()
    assert feed(r, GUEST_A, whole) == whole
    assert r.counters.fragments == 0 and r.datagrams_held == 0


def test_ecn_rules_of_rfc3168() -> None:
    r = Ipv4Reassembler()
    assert feed(r, GUEST_A, raw_fragment(0, b"x" * 8, True, tos=0x02)) is None  # ECT(0)
    out = feed(r, GUEST_A, raw_fragment(8, b"y", False, tos=0x03))  # CE
    assert out is not None
    assert Ipv4Header.parse(out)[0].tos & 3 == 3
    assert feed(r, GUEST_A, raw_fragment(0, b"x" * 8, True, tos=0x00)) is None  # Not-ECT ...
    assert feed(r, GUEST_A, raw_fragment(8, b"y", False, tos=0x01)) is None  # ... with ECT(1): dropped
    assert r.counters.malformed == 1 and r.datagrams_held == 0


def test_reassembled_header_clears_df_and_keeps_the_first_fragments_fields() -> None:
    parsed = Ipv4Header.parse(raw_fragment(0, pattern(16), True, options=b"\x94\x04\x00\x00"))[0]
    first = dataclasses.replace(parsed, flags=IP_DF | IP_MF, ttl=9)
    r = Ipv4Reassembler()
    assert r.feed(GUEST_A, first, pattern(16), 0.0) is None
    out = feed(r, GUEST_A, raw_fragment(16, b"tail", False))
    assert out is not None
    header, start, end = Ipv4Header.parse(out)
    assert (header.flags, header.frag_offset, header.ttl, header.options) == (0, 0, 9, b"\x94\x04\x00\x00")
    assert out[start:end] == pattern(16) + b"tail" and header.total_length == 24 + 20


# -- overlaps, teardrop and friends ---------------------------------------------------------------------------------
def test_teardrop_second_fragment_inside_the_first_drops_the_datagram() -> None:
    r = Ipv4Reassembler()
    assert feed(r, GUEST_A, raw_fragment(0, pattern(36 - 4)[:32], True)) is None
    assert feed(r, GUEST_A, raw_fragment(24, b"xyz", False)) is None
    assert r.counters.overlaps == 1 and r.datagrams_held == 0
    # What the guest sends next starts a new datagram, uncontaminated.
    assert feed(r, GUEST_A, raw_fragment(8, b"new", False)) is None
    out = feed(r, GUEST_A, raw_fragment(0, b"N" * 8, True))
    assert out is not None and out[20:] == b"N" * 8 + b"new"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((0, b"A" * 24, True), (8, b"B" * 16, True)),  # RFC 1858 overlapping attack: FO=1 rewrites TCP flags
        ((8, b"A" * 16, True), (0, b"B" * 16, True)),  # reaching into the next one
        ((0, b"A" * 16, True), (0, b"B" * 16, True)),  # same range, other bytes: first-wins vs last-wins
        ((0, b"A" * 32, True), (8, b"A" * 8, True)),  # inside, even with the same bytes (Linux: a DUP)
        ((16, b"A" * 5, False), (8, b"B" * 16, True)),  # into the last fragment
        ((0, b"A" * 8, True), (0, b"A" * 16, True)),  # same start, longer
    ],
)
def test_overlaps_drop_the_whole_datagram(first: tuple[int, bytes, bool], second: tuple[int, bytes, bool]) -> None:
    r = Ipv4Reassembler()
    assert feed(r, GUEST_A, raw_fragment(*first)) is None
    assert feed(r, GUEST_A, raw_fragment(*second)) is None
    assert r.counters.overlaps == 1 and r.datagrams_held == 0 and r.bytes_held == 0


def test_overlap_drops_every_fragment_already_held() -> None:
    pieces = frags(datagram(6000), 1480)
    r = Ipv4Reassembler()
    feed_all(r, GUEST_A, pieces[:3])
    evil = raw_fragment(1480 + 8, b"E" * 8, True, ident=0x1234, proto=1)
    assert feed(r, GUEST_A, evil) is None and r.counters.overlaps == 1
    assert feed_all(r, GUEST_A, pieces[3:]) == []  # the held pieces went with the overlap
    assert r.datagrams_held == 1


@pytest.mark.parametrize(
    ("fragments", "why"),
    [
        ([(0, b"A" * 12, True)], "MF fragment not a multiple of 8"),
        ([(0, b"", True)], "zero-length fragment"),
        ([(16, b"", False)], "zero-length last fragment"),
        ([(16, b"A" * 16, True), (8, b"B" * 8, False)], "last fragment ends before data held"),
        ([(16, b"Z" * 8, False), (24, b"Y" * 8, False)], "a second last fragment with another end"),
        ([(16, b"Z" * 8, False), (24, b"Y" * 8, True)], "a fragment past the known end"),
        ([(8, b"A" * 8, True), (8, b"A" * 8, False)], "the same bytes with and without MF"),
    ],
)
def test_inconsistent_lengths_are_malformed(fragments: list[tuple[int, bytes, bool]], why: str) -> None:
    r = Ipv4Reassembler()
    assert feed_all(r, GUEST_A, [raw_fragment(*f) for f in fragments]) == []
    assert r.counters.malformed == 1, why
    assert r.datagrams_held == 0, why


def test_header_length_disagreeing_with_the_payload_is_malformed() -> None:
    header = Ipv4Header.parse(raw_fragment(0, b"A" * 16, True))[0]
    r = Ipv4Reassembler()
    assert r.feed(GUEST_A, header, b"A" * 8, 0.0) is None
    assert r.feed(GUEST_A, dataclasses.replace(header, flags=0, frag_offset=0), b"short", 0.0) is None
    assert r.counters.malformed == 2 and r.datagrams_held == 0


def _header(offset: int, size: int, more: bool, options: bytes = b"") -> Ipv4Header:
    # Built directly: Ipv4Header.parse already refuses fragments ending past 65535.
    return Ipv4Header(
        src=bytes((10, 0, 2, 15)), dst=bytes((10, 0, 2, 2)), proto=1, ident=3, flags=IP_MF if more else 0,
        frag_offset=offset // 8, options=options, total_length=20 + len(options) + size,
    )  # fmt: skip


def test_ping_of_death_is_oversize() -> None:
    r = Ipv4Reassembler()
    assert r.feed(GUEST_A, _header(0, 1480, True), bytes(1480), 0.0) is None
    assert r.feed(GUEST_A, _header(65528, 16, False), bytes(16), 0.0) is None  # ends at 65544 > 65535
    assert r.counters.oversize == 1 and r.datagrams_held == 0


def test_first_fragment_options_that_push_the_datagram_past_65535_are_oversize() -> None:
    r = Ipv4Reassembler()
    # 65504 payload bytes are fine behind a 20-byte header; behind 20 + 40 bytes of options they are not.
    assert r.feed(GUEST_A, _header(65496, 8, False), bytes(8), 0.0) is None
    assert r.counters.oversize == 0
    assert r.feed(GUEST_A, _header(0, 8, True, options=b"\x01" * 40), bytes(8), 0.0) is None
    assert r.counters.oversize == 1 and r.datagrams_held == 0


def test_largest_legal_datagram_reassembles() -> None:
    r = Ipv4Reassembler()
    out = None
    for offset in range(0, 65515, 1480):
        size = min(1480, 65515 - offset)
        out = r.feed(GUEST_A, _header(offset, size, offset + size < 65515), bytes(size), 0.0)
    assert out is not None and len(out) == 65535 and r.counters.oversize == 0


# -- caps -----------------------------------------------------------------------------------------------------
def first_halves(owner_seed: int, count: int, size: int = 1480) -> list[bytes]:
    """First fragments of ``count`` distinct datagrams (never completed)."""
    return [raw_fragment(0, pattern(size, i), True, ident=(owner_seed * 1000 + i) & 0xFFFF) for i in range(count)]


def test_per_owner_datagram_cap_evicts_that_owners_oldest() -> None:
    r = Ipv4Reassembler(max_datagrams_per_owner=16)
    feed_all(r, GUEST_A, first_halves(1, 17, size=8))
    assert r.owner_usage(GUEST_A)[0] == 16 and r.counters.evicted == 1
    # The oldest (ident 1000) is gone: its tail now starts a datagram of its own.
    assert feed(r, GUEST_A, raw_fragment(8, b"t", False, ident=1000)) is None
    assert r.counters.evicted == 2  # ... which pushed out the next oldest
    assert feed(r, GUEST_A, raw_fragment(8, b"t", False, ident=1016)) is not None  # the newest completes
    check_invariants(r)


def test_per_owner_byte_cap_holds_and_evicts_oldest_first() -> None:
    r = Ipv4Reassembler(max_bytes_per_owner=64 * 1024, max_datagrams_per_owner=100)
    for raw in first_halves(1, 60):
        feed(r, GUEST_A, raw)
        check_invariants(r)
    count, charge = r.owner_usage(GUEST_A)
    per = DATAGRAM_OVERHEAD + 1480 + FRAGMENT_OVERHEAD
    assert count == 64 * 1024 // per and charge == count * per
    assert r.counters.evicted == 60 - count
    idents = [key[4] for key in r._owners[GUEST_A].datagrams]
    assert idents == list(range(1060 - count, 1060))  # the newest survive


def test_a_single_datagram_of_tiny_fragments_cannot_pass_the_owner_cap() -> None:
    r = Ipv4Reassembler(max_bytes_per_owner=32 * 1024)
    for offset in range(0, 60000, 8):
        feed(r, GUEST_A, raw_fragment(offset, b"12345678", True))
        assert r.owner_usage(GUEST_A)[1] <= 32 * 1024
    assert r.counters.evicted > 0
    check_invariants(r)


def test_one_owner_cannot_evict_another_owners_datagrams() -> None:
    victim = datagram(4008, ident=42)
    pieces = frags(victim)
    r = Ipv4Reassembler()
    feed_all(r, GUEST_B, pieces[:-1])
    rng = random.Random(5)
    for i in range(3000):  # a flood of first fragments, tails and tiny pieces, all from guest A
        kind = rng.randrange(3)
        if kind == 0:
            raw = raw_fragment(0, pattern(1480, i), True, ident=i & 0xFFFF)
        elif kind == 1:
            raw = raw_fragment(rng.randrange(0, 8000, 8), b"z" * 8, True, ident=rng.randrange(50))
        else:
            raw = raw_fragment(0, b"q" * 8, True, ident=42, proto=1)  # guest B's key, guest A's account
        feed(r, GUEST_A, raw)
    check_invariants(r)
    assert r.owner_usage(GUEST_B)[0] == 1
    assert feed(r, GUEST_B, pieces[-1]) == bytes(victim)


@pytest.mark.parametrize(
    "caps",
    [
        {"max_bytes": 100 * 1024, "max_bytes_per_owner": 40 * 1024, "max_datagrams": 40},  # the count binds
        {"max_bytes": 20 * 1024, "max_bytes_per_owner": 40 * 1024, "max_datagrams": 1000},  # the bytes bind
    ],
)
def test_global_caps_make_the_heaviest_owner_pay(caps: dict[str, int]) -> None:
    r = Ipv4Reassembler(**caps)
    feed(r, "light", raw_fragment(0, b"L" * 8, True, ident=1))
    for round_ in range(20):
        for owner in range(8):  # eight guests, each within its own caps, together past the global ones
            feed(r, owner, raw_fragment(0, pattern(1480, round_), True, ident=round_))
            check_invariants(r)
    assert r.counters.evicted > 0
    assert r.owner_usage("light")[0] == 1  # never the heaviest, so never evicted by the others
    out = feed(r, "light", raw_fragment(8, b"end", False, ident=1))
    assert out is not None and out[20:] == b"L" * 8 + b"end"


def test_global_datagram_cap() -> None:
    r = Ipv4Reassembler(max_datagrams=10)
    for owner in range(30):
        feed(r, owner, raw_fragment(0, b"x" * 8, True))
        check_invariants(r)
    assert r.datagrams_held == 10 and r.counters.evicted == 20


def test_bad_caps_are_refused() -> None:
    with pytest.raises(ValueError, match="max_datagrams_per_owner must be at least 1"):
        Ipv4Reassembler(max_datagrams_per_owner=0)
    with pytest.raises(ValueError, match="max_bytes must be at least 1024"):
        Ipv4Reassembler(max_bytes=100)
    with pytest.raises(ValueError, match="timeout"):
        Ipv4Reassembler(timeout=0)


# -- time ------------------------------------------------------------------------------------------------------
def test_datagrams_expire_thirty_seconds_after_their_first_fragment() -> None:
    pieces = frags(datagram(6000, ident=3))
    r = Ipv4Reassembler()
    assert r.get_timer() is None
    feed(r, GUEST_A, pieces[0], now=100.0)
    assert r.get_timer() == 100.0 + REASSEMBLY_TIMEOUT
    feed(r, GUEST_A, pieces[1], now=125.0)  # later fragments do not extend the lifetime
    assert r.get_timer() == 130.0
    assert r.handle_timer(129.999) == [] and r.datagrams_held == 1
    [expired] = r.handle_timer(130.0)
    assert expired.owner == GUEST_A
    assert expired.quote == pieces[0][:28]  # the first fragment's header and 8 bytes: what ICMP quotes
    assert r.counters.timeouts == 1 and r.datagrams_held == 0 and r.bytes_held == 0
    assert r.get_timer() is None
    assert feed_all(r, GUEST_A, pieces[2:], now=131.0) == []  # the rest starts over


def test_a_datagram_without_its_first_fragment_expires_unreported() -> None:
    r = Ipv4Reassembler(timeout=5.0)
    feed(r, GUEST_A, raw_fragment(8, b"tail", False), now=1.0)
    assert r.handle_timer(6.0) == [] and r.counters.timeouts == 1


def test_timer_order_survives_a_clock_that_steps_back() -> None:
    r = Ipv4Reassembler(timeout=10.0)
    feed(r, GUEST_A, raw_fragment(0, b"a" * 8, True, ident=1), now=50.0)
    feed(r, GUEST_A, raw_fragment(0, b"b" * 8, True, ident=2), now=40.0)  # a clock gone backwards
    feed(r, GUEST_B, raw_fragment(0, b"c" * 8, True, ident=3), now=55.0)
    check_invariants(r)
    assert r.get_timer() == 60.0
    assert [t.owner for t in r.handle_timer(60.0)] == [GUEST_A, GUEST_A]
    assert [t.owner for t in r.handle_timer(65.0)] == [GUEST_B]
    assert isinstance(TimedOut(GUEST_A, b""), tuple)


def test_forget_owner_drops_only_that_owners_datagrams() -> None:
    r = Ipv4Reassembler()
    feed_all(r, GUEST_A, first_halves(1, 5))
    feed_all(r, GUEST_B, first_halves(2, 3))
    b_usage = r.owner_usage(GUEST_B)
    r.forget_owner(GUEST_A)
    r.forget_owner("never seen")
    assert r.owner_usage(GUEST_A) == (0, 0) and r.owner_usage(GUEST_B) == b_usage
    assert r.bytes_held == b_usage[1] and r.datagrams_held == 3
    assert r.counters.evicted == r.counters.timeouts == 0
    check_invariants(r)


# -- never raises, always bounded ----------------------------------------------------------------------------------
@st.composite
def operations(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    ops: list[tuple[Any, ...]] = []
    clock = 0.0
    for _ in range(draw(st.integers(1, 120))):
        clock += draw(st.sampled_from([0.0] * 6 + [0.5, 3.0, 31.0]))
        kind = draw(st.sampled_from(["feed"] * 8 + ["timer", "forget"]))
        owner = draw(st.sampled_from([GUEST_A, GUEST_B, 3]))
        if kind == "feed":
            # Mostly plausible fragments of a few small datagrams (so some complete), sometimes anything.
            size = draw(st.sampled_from([8] * 8 + [16, 16, 3, 5, 0, 1, 7, 1480]) | st.integers(0, 3000))
            fields = (
                draw(st.sampled_from([b"\x0a\x00\x02\x0f"] * 3 + [b"\x0a\x00\x02\x10"])),
                draw(st.sampled_from([17, 17, 17, 1])),
                draw(st.integers(0, 1)),
                draw(st.sampled_from([0] * 12 + [1, 2, 3])),  # ECN: mostly Not-ECT throughout
                draw(st.sampled_from([IP_MF, IP_MF, 0, IP_DF | IP_MF, IP_DF])),
                draw(st.integers(0, 3) | st.integers(0, 0x1FFF)),
                draw(st.sampled_from([b"", b"", b"\x01" * 40])),
                draw(st.sampled_from([True] * 9 + [False])),  # a total length that agrees with the payload
                draw(st.integers(0, 0xFFFF)),
                draw(st.integers(0, 255)),
            )
            ops.append(("feed", owner, clock, size, *fields))
        else:
            ops.append((kind, owner, clock))
    return ops


@settings(max_examples=300, deadline=None)
@given(
    operations(),
    st.sampled_from(
        [
            {},
            {"max_datagrams_per_owner": 2, "max_bytes_per_owner": 4096, "max_datagrams": 4, "max_bytes": 6000},
            {"max_datagrams_per_owner": 1, "max_bytes_per_owner": 1024, "max_datagrams": 2, "max_bytes": 1024},
        ]
    ),
)
def test_any_sequence_never_raises_and_stays_bounded(ops: list[tuple[Any, ...]], caps: dict[str, int]) -> None:
    r = Ipv4Reassembler(timeout=30.0, **caps)
    for op in ops:
        kind, owner, clock = op[0], op[1], op[2]
        if kind == "feed":
            size, src, proto, ident, tos, flags, frag, options, agree, total, fill = op[3:]
            header = Ipv4Header(
                src=src, dst=b"\x0a\x00\x02\x02", proto=proto, ident=ident, tos=tos, flags=flags, frag_offset=frag,
                options=options, total_length=20 + len(options) + size if agree else total,
            )  # fmt: skip
            out = r.feed(owner, header, bytes((fill,)) * size, clock)
            if out is not None:
                parsed, _, end = Ipv4Header.parse(out)  # whatever comes out is a valid datagram
                assert not parsed.is_fragment and end == len(out)
        elif kind == "timer":
            for expired in r.handle_timer(clock):
                assert isinstance(expired, TimedOut)
            timer = r.get_timer()
            assert timer is None or timer > clock
        else:
            r.forget_owner(owner)
            assert r.owner_usage(owner) == (0, 0)
        check_invariants(r)


@st.composite
def genuine_among_noise(draw: st.DrawFn) -> tuple[dict[tuple[str, int], bytes], list[tuple[str, bytes]]]:
    """Whole datagrams of two guests, fragmented and shuffled among junk fragments on other idents."""
    originals: dict[tuple[str, int], bytes] = {}
    streams: list[list[tuple[str, bytes]]] = []
    for n in range(draw(st.integers(1, 6))):
        owner = draw(st.sampled_from([GUEST_A, GUEST_B]))
        pkt = IP(src=SRC, dst=DST, id=n) / UDP(sport=n, dport=9) / Raw(pattern(draw(st.integers(100, 6000)), n))
        originals[(owner, n)] = bytes(pkt)
        streams.append([(owner, raw) for raw in frags(pkt, draw(st.sampled_from([8, 64, 552, 1480])))])
    noise = [
        (
            draw(st.sampled_from([GUEST_A, GUEST_B, "guest-c"])),
            raw_fragment(
                draw(st.integers(0, 800)) * 8,
                draw(st.binary(min_size=1, max_size=64)),
                draw(st.booleans()),
                ident=draw(st.integers(100, 103)),
            ),
        )
        for _ in range(draw(st.integers(0, 80)))
    ]
    merged: list[tuple[str, bytes]] = []
    pools = [*streams, noise]
    while any(pools):
        pool = draw(st.sampled_from([p for p in pools if p]))
        merged.append(pool.pop(0) if pool is not noise else pool.pop(draw(st.integers(0, len(pool) - 1))))
    return originals, merged


@settings(max_examples=100, deadline=None)
@given(genuine_among_noise())
def test_genuine_datagrams_come_out_exact_whatever_junk_surrounds_them(
    case: tuple[dict[tuple[str, int], bytes], list[tuple[str, bytes]]],
) -> None:
    originals, merged = case
    r = Ipv4Reassembler()
    seen: dict[tuple[str, int], bytes] = {}
    for owner, raw in merged:
        out = feed(r, owner, raw)
        if out is not None:
            ident = Ipv4Header.parse(out)[0].ident
            if ident < 100:
                seen[(owner, ident)] = out
        check_invariants(r)
    assert seen == originals
