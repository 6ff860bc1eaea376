"""The parts of vmlan.engines.tcp on their own: ISNs and ports, the RTT estimator, NewReno, the
out-of-order store and the checksum sums."""

from __future__ import annotations

import itertools
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmlan.engines.tcp import EphemeralPorts, IsnGenerator, NewReno, RttEstimator, TcpConnection, TcpParams
from vmlan.engines.tcp.reassembly import DUPLICATE, FULL, KEPT, ReassemblyQueue
from vmlan.engines.tcp.sums import piece_sums, sum16
from vmlan.wire.checksum import ones_complement_sum

from .tcpnet import IP6_A, IP6_B, IP_A, IP_B, guest_segment

KEY = bytes(range(16))

# -- RFC 6528 ISNs ---------------------------------------------------------------------------------------------


def test_isn_differs_per_four_tuple() -> None:
    gen = IsnGenerator(KEY)
    tuples = [(IP_A, 40000 + i, IP_B, 80) for i in range(200)] + [(IP_A, 40000, IP_B, 81), (IP_B, 40000, IP_A, 80)]
    tuples += [(IP6_A, 40000, IP6_B, 80), (IP6_A, 80, IP6_B, 40000)]
    isns = [gen.isn(la, lp, ra, rp, 5.0) for la, lp, ra, rp in tuples]
    assert len(set(isns)) == len(isns)
    # Not a counter in disguise: neighbouring ports give unrelated numbers.
    deltas = {(b - a) & 0xFFFFFFFF for a, b in itertools.pairwise(isns[:200])}
    assert len(deltas) > 190


def test_isn_of_one_tuple_advances_with_the_4_us_clock() -> None:
    gen = IsnGenerator(KEY)
    t = (IP_A, 40000, IP_B, 80)
    a, b, c = gen.isn(*t, 100.0), gen.isn(*t, 100.000004), gen.isn(*t, 101.0)
    assert (b - a) & 0xFFFFFFFF == 1
    assert (c - a) & 0xFFFFFFFF == 250_000
    assert gen.isn(*t, 100.0) == a  # a function of the tuple and the time, nothing else


def test_isn_keys_differ() -> None:
    t = (IP_A, 40000, IP_B, 80)
    assert IsnGenerator(KEY).isn(*t, 1.0) != IsnGenerator(bytes(16)).isn(*t, 1.0)
    assert IsnGenerator().isn(*t, 1.0) != IsnGenerator().isn(*t, 1.0)  # random keys (fails once in 2**32)
    with pytest.raises(ValueError):
        IsnGenerator(b"short")


def test_connections_without_an_explicit_isn_get_unpredictable_ones() -> None:
    syn_isns = set()
    for port in range(40000, 40020):
        conn = TcpConnection.connect((IP_A, port), (IP_B, 80), TcpParams(), 1.0)
        (syn,) = conn.segments_to_send(1.0)
        syn_isns.add(int.from_bytes(syn[4:8], "big"))
    assert len(syn_isns) == 20


# -- RFC 6056 ephemeral ports ----------------------------------------------------------------------------------


def test_ephemeral_ports_are_in_range_free_and_vary(monkeypatch: pytest.MonkeyPatch) -> None:
    # The counters' table starts random: zeroed here, so the picks are one fixed sequence. (Random, the
    # other destination's start fell inside the 300 taken ports ~2 % of runs, and skipping them landed
    # it just past the first destination's last pick.)
    monkeypatch.setattr(os, "urandom", bytes)
    ports = EphemeralPorts(key=KEY)
    used: set[int] = set()
    picks = []
    for _ in range(300):
        port = ports.pick(IP_A, IP_B, 22, used.__contains__)
        assert port is not None and 49152 <= port <= 65535 and port not in used
        used.add(port)
        picks.append(port)
    assert len(set(picks)) == 300
    steps = {(b - a) % 16384 for a, b in itertools.pairwise(picks)}
    assert steps == {1}  # one destination: its own counter advances (RFC 6056 algorithm 4) ...
    other = ports.pick(IP_A, IP_B, 23, used.__contains__)
    assert other is not None and other not in used and other != picks[-1] + 1  # ... another one starts elsewhere
    assert EphemeralPorts(key=KEY).pick(IP_A, IP_B, 22, used.__contains__) != EphemeralPorts(key=bytes(16)).pick(
        IP_A, IP_B, 22, used.__contains__
    )


def test_ephemeral_ports_exhausted() -> None:
    ports = EphemeralPorts(1000, 1009, key=KEY)
    taken = {1000, 1001, 1002, 1003, 1004, 1005, 1006, 1008, 1009}
    assert ports.pick(IP_A, IP_B, 80, taken.__contains__) == 1007
    taken.add(1007)
    assert ports.pick(IP_A, IP_B, 80, taken.__contains__) is None
    with pytest.raises(ValueError):
        EphemeralPorts(0, 10)


# -- RFC 6298 ----------------------------------------------------------------------------------------------------


def test_rtt_first_sample_then_smoothing_and_bounds() -> None:
    rtt = RttEstimator(1.0, 0.2, 60.0)
    rtt.sample(0.1)
    assert rtt.srtt == pytest.approx(0.1) and rtt.rttvar == pytest.approx(0.05)
    assert rtt.rto == pytest.approx(0.3)  # 0.1 + 4 * 0.05
    rtt.sample(0.5)
    assert rtt.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.4)
    assert rtt.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.5)
    for _ in range(50):
        rtt.sample(0.0001)
    assert rtt.rto == pytest.approx(0.2)  # rto_min
    rtt.sample(100.0)
    assert rtt.rto == 60.0  # rto_max


def test_rtt_karn_backoff_and_one_timed_segment() -> None:
    rtt = RttEstimator(1.0, 0.2, 8.0)
    rtt.start(1000, 0.0)
    rtt.start(2000, 0.1)  # already timing one: ignored
    rtt.on_ack(999, 0.2)
    assert rtt.srtt is None
    rtt.on_ack(1500, 0.3)
    assert rtt.srtt == pytest.approx(0.3) and rtt.timed_seq is None
    rtt.start(3000, 1.0)
    rtt.discard()  # a retransmission: the ACK would be ambiguous
    rtt.on_ack(3000, 1.5)
    assert rtt.srtt == pytest.approx(0.3)
    before = rtt.rto
    rtt.backoff()
    rtt.backoff()
    assert rtt.rto == pytest.approx(min(before * 4, 8.0))
    for _ in range(10):
        rtt.backoff()
    assert rtt.rto == 8.0


def test_rtt_after_a_retransmitted_syn_is_at_least_three_seconds() -> None:
    rtt = RttEstimator(1.0, 0.2, 60.0)
    rtt.backoff()
    rtt.on_established(syn_retransmitted=True)
    assert rtt.rto == 3.0
    other = RttEstimator(1.0, 0.2, 60.0)
    other.backoff()
    other.on_established(syn_retransmitted=False)
    assert other.rto == 1.0


# -- NewReno -----------------------------------------------------------------------------------------------------


def test_newreno_slow_start_fast_retransmit_partial_and_full_acks() -> None:
    cc = NewReno(0)
    cc.on_established(1000, 10, 1 << 20)
    assert cc.cwnd == 10_000
    assert not cc.on_ack(10_000, 10_001, 20_001)
    assert cc.cwnd == 20_000  # slow start: every acknowledged byte
    una, snd_max = 10_001, 30_001
    assert not cc.on_dup_ack(una, snd_max) and not cc.on_dup_ack(una, snd_max)
    assert cc.on_dup_ack(una, snd_max)  # the third: fast retransmit
    assert cc.in_recovery and cc.ssthresh == 10_000 and cc.cwnd == 13_000
    assert not cc.on_dup_ack(una, snd_max) and cc.cwnd == 14_000  # inflation
    assert cc.on_ack(2000, 12_001, snd_max)  # partial ACK: retransmit the next hole
    assert cc.in_recovery and cc.cwnd == 14_000 - 2000 + 1000
    assert cc.on_ack(10_000, 22_001, snd_max) and cc.in_recovery  # still below "recover": partial again
    assert not cc.on_ack(8000, 30_001, snd_max)  # full ACK: min(ssthresh, FlightSize + SMSS), RFC 6582 3.2
    assert not cc.in_recovery and cc.cwnd == 1000 + 1000  # nothing in flight any more
    assert not cc.on_ack(9000, 39_001, 39_001)
    assert cc.cwnd == 11_000  # slow start again, up to ssthresh ...
    assert not cc.on_ack(1000, 40_001, 40_001)
    assert cc.cwnd == 11_000 + 1000 * 1000 // 11_000  # ... then congestion avoidance: ~1 MSS per RTT


def test_newreno_rto_and_the_cap() -> None:
    cc = NewReno(0)
    cc.on_established(1000, 10, 20_000)
    cc.on_rto(1, 8001)
    assert cc.cwnd == 1000 and cc.ssthresh == 4000 and cc.recover == 8001
    for _ in range(3):  # duplicates caused by the go-back-N retransmission start no fast retransmit
        assert not cc.on_dup_ack(1, 8001)
    for _ in range(100):
        cc.on_ack(100_000, 1, 1)
    assert cc.cwnd == cc.cwnd_cap == 24_000


# -- the out-of-order store ---------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.tuples(st.integers(1, 3000), st.integers(1, 800)), max_size=40))
def test_reassembly_matches_a_set_model(pieces: list[tuple[int, int]]) -> None:
    source = random.Random(len(pieces)).randbytes(4000)
    q = ReassemblyQueue()
    held: set[int] = set()
    for start, n in pieces:
        n = min(n, 4000 - start)
        if n <= 0:
            continue
        new = set(range(start, start + n)) - held
        result = q.add(start, memoryview(source)[start : start + n])
        assert result == (KEPT if new else DUPLICATE)
        held |= new
        spans = q.spans()
        assert all(a < b for a, b in spans) and all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(spans))
        assert q.nbytes == len(held) == sum(b - a for a, b in spans)
    sink = bytearray(source[:1])
    nxt = q.drain(1, sink)
    run = 1
    while run in held:
        run += 1
    assert nxt == run and bytes(sink) == source[:run]
    assert q.nbytes == len({x for x in held if x >= run})


def test_reassembly_block_limit() -> None:
    q = ReassemblyQueue(max_blocks=3)
    assert [q.add(s, b"x") for s in (10, 20, 30)] == [KEPT] * 3
    assert q.add(40, b"y") == FULL and q.nbytes == 3
    assert q.add(11, b"z") == FULL  # adjacent to a block, but a block of its own: over the limit
    assert q.add(10, b"x") == DUPLICATE
    q.clear()
    assert not q and q.nbytes == 0


# -- sums ----------------------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=5000), offset=st.integers(0, 3))
def test_sum16_is_congruent_to_the_rfc_1071_sum(data: bytes, offset: int) -> None:
    view = memoryview(bytes(offset) + data)[offset:]
    assert sum16(view) % 0xFFFF == ones_complement_sum(data) % 0xFFFF


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 3000), count=st.integers(1, 8), offset=st.integers(0, 7))
def test_piece_sums_match_one_by_one_and_leave_no_export(size: int, count: int, offset: int) -> None:
    buf = bytearray(random.Random(size * count).randbytes(offset + size * count))
    sums = piece_sums(buf, offset, size, count)
    for i, s in enumerate(sums):
        piece = buf[offset + i * size : offset + (i + 1) * size]
        assert s % 0xFFFF == ones_complement_sum(piece) % 0xFFFF
    buf += b"resizable"


def test_a_segment_built_by_the_engine_verifies_with_the_wire_checksum() -> None:
    seg = guest_segment(seq=1, flags=0x10, payload=bytes(range(256)) * 7)
    assert sum16(seg) % 0xFFFF == ones_complement_sum(seg) % 0xFFFF
