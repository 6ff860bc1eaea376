"""Byte streams between two vmlan.engines.tcp connections over an impaired in-memory link.

Every test drives :class:`tcpnet.Net` with a fake clock, so loss recovery that takes minutes of
simulated time (RTO backoff, persist, keepalive) runs in milliseconds. Seeds are fixed: a failure
reproduces exactly.
"""

from __future__ import annotations

import itertools
import random

import pytest

from vmlan.engines.tcp import CLOSE_WAIT, ESTABLISHED, FIN_WAIT_2, TcpParams
from vmlan.wire.tcp import FIN, SYN, TcpHeader

from .tcpnet import IP_A, IP_B, App, LinkConfig, Net, parse, strip_syn_options

MB = 1_000_000


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def impaired(loss: float, seed: int) -> LinkConfig:
    if not loss:
        return LinkConfig(seed=seed)
    return LinkConfig(loss=loss, dup=0.02, reorder=0.05, seed=seed)


def assert_intact(net: Net, data_a: bytes, data_b: bytes) -> None:
    # Compare lengths first: a multi-MB assertion diff is useless.
    assert len(net.app_b.received) == len(data_a) and bytes(net.app_b.received) == data_a
    assert len(net.app_a.received) == len(data_b) and bytes(net.app_a.received) == data_b


@pytest.mark.parametrize("loss", [0.0, 0.05, 0.20])
def test_megabytes_both_ways_under_loss_reordering_and_duplication(loss: float) -> None:
    data_a, data_b = payload(3 * MB, 1), payload(3 * MB, 2)
    net = Net(
        ab=impaired(loss, 11),
        ba=impaired(loss, 12),
        app_a=App(data=data_a),
        app_b=App(data=data_b),
    )
    net.run(net.both_closed, max_time=50_000)
    assert_intact(net, data_a, data_b)
    assert net.app_a.close_reason() == "closed" and net.app_b.close_reason() == "closed"
    assert net.app_a.eof and net.app_b.eof and not net.app_a.reset and not net.app_b.reset
    if loss:
        assert net.ab.lost > 0 and net.a.counters.retransmits > 0 and net.b.counters.retransmits > 0
        assert net.a.counters.ooo_segments > 0 and net.a.counters.duplicates > 0
    else:
        assert net.a.counters.retransmits == 0 and net.b.counters.retransmits == 0
        assert net.now - 100.0 < 1.5  # a second of it is TIME_WAIT


def test_gso_sized_segments_with_loss() -> None:
    params = TcpParams(mss=65495, rcv_buffer=4 << 20, snd_buffer=4 << 20)
    data_a, data_b = payload(12 * MB, 3), payload(12 * MB, 4)
    net = Net(params, params, impaired(0.05, 21), impaired(0.05, 22), app_a=App(data=data_a), app_b=App(data=data_b))
    biggest = [0]

    def tap(segment: bytes, now: float) -> None:
        biggest[0] = max(biggest[0], len(segment) - 20)

    net.ab.taps.append(tap)
    net.run(net.both_closed, max_time=50_000)
    assert_intact(net, data_a, data_b)
    assert biggest[0] == 65495


@pytest.mark.parametrize("first", ["a", "b"])
def test_half_close_each_way(first: str) -> None:
    """One side sends and shuts down; the other answers only after the EOF, then shuts down too."""
    request, response = payload(300_000, 5), payload(2 * MB, 6)
    if first == "a":
        app_a, app_b = App(data=request), App(data=response, start_on_eof=True)
    else:
        app_a, app_b = App(data=response, start_on_eof=True), App(data=request)
    net = Net(ab=impaired(0.05, 31), ba=impaired(0.05, 32), app_a=app_a, app_b=app_b)
    # Sample both states at every step: the replier sends its whole response in CLOSE_WAIT while the
    # first closer, in FIN_WAIT_2, keeps receiving it.
    pairs = set()
    while not net.both_closed():
        net.step()
        replier, closer = (net.b, net.a) if first == "a" else (net.a, net.b)
        if replier is not None and closer is not None:
            pairs.add((closer.state, replier.state))
    assert (FIN_WAIT_2, CLOSE_WAIT) in pairs
    closer = net.a if first == "a" else net.b
    assert closer is not None and closer.counters.bytes_in == len(response)
    if first == "a":
        assert_intact(net, request, response)
    else:
        assert_intact(net, response, request)
    assert net.app_a.close_reason() == "closed" and net.app_b.close_reason() == "closed"


def test_fin_wait_2_keeps_receiving_for_long() -> None:
    """A half-closed download that outlasts the FIN_WAIT_2 idle limit is not cut while data flows."""
    params = TcpParams(fin_wait_2_timeout=2.0, rcv_buffer=64 << 10)
    response = payload(4 * MB, 7)
    app_b = App(data=response, start_on_eof=True, chunk=4096)
    net = Net(params, params, app_a=App(data=b"GET"), app_b=app_b, ab=LinkConfig(delay=0.01), ba=LinkConfig(delay=0.01))
    net.run(lambda: net.a.state == FIN_WAIT_2)
    net.run(net.both_closed, max_time=1000)
    assert bytes(net.app_a.received) == response
    assert net.now - 100 > 2.0  # lasted longer than the idle limit
    assert net.app_a.close_reason() == "closed"


@pytest.mark.parametrize("aborter", ["a", "b"])
def test_rst_each_way_mid_transfer(aborter: str) -> None:
    data_a, data_b = payload(2 * MB, 8), payload(2 * MB, 9)
    net = Net(app_a=App(data=data_a), app_b=App(data=data_b), ab=LinkConfig(delay=0.001), ba=LinkConfig(delay=0.001))
    net.run(lambda: len(net.app_a.received) > 200_000 and len(net.app_b.received) > 200_000)
    conn = net.a if aborter == "a" else net.b
    assert conn is not None
    conn.abort(net.now)
    net.flush()
    net.run(net.both_closed)
    me, peer = (net.app_a, net.app_b) if aborter == "a" else (net.app_b, net.app_a)
    assert me.close_reason() == "aborted" and not me.reset
    assert peer.reset and peer.close_reason() == "reset"
    # Whatever arrived before the reset is an intact prefix.
    assert bytes(net.app_b.received) == data_a[: len(net.app_b.received)]
    assert bytes(net.app_a.received) == data_b[: len(net.app_a.received)]
    assert len(net.app_a.received) < len(data_b) or len(net.app_b.received) < len(data_a)


def test_zero_window_reader_stops_sender_probes_then_resumes() -> None:
    params_b = TcpParams(rcv_buffer=256 << 10, wscale=4)
    data = payload(3 * MB, 10)
    app_b = App(consume=False, shutdown_when_sent=False)
    net = Net(TcpParams(), params_b, app_a=App(data=data), app_b=app_b)
    edges: list[int] = []
    b_params_shift = 4

    def tap(segment: bytes, now: float) -> None:
        header, _ = parse(segment, IP_B, IP_A)
        if header.flags & SYN:
            return
        edges.append(header.ack + (header.window << b_params_shift))

    net.ba.taps.append(tap)
    net.run_for(120.0)  # the reader is stuck for two minutes
    app_b.shutdown_when_sent = True
    a = net.a
    assert a.state == ESTABLISHED
    assert a.bytes_acked <= (256 << 10) + (1 << b_params_shift)  # the sender stopped at the window
    assert len(app_b.received) == a.bytes_acked  # everything acknowledged was delivered
    assert a.counters.window_probes >= 3
    assert a.counters.timeouts == 0  # persist, not RTO: a stuck reader is not a dead peer
    probes_while_stuck = a.counters.window_probes
    assert probes_while_stuck < 30  # persist backs off
    app_b.consume = True
    net.run(net.both_closed, max_time=1000)
    assert bytes(app_b.received) == data
    b = net.b
    assert b is not None and b.counters.out_of_window == 0  # nothing sent beyond what b offered
    assert b.counters.duplicates >= probes_while_stuck  # the probes: SND.UNA - 1, left of the window
    # The offered right edge never retracts by more than the scaling granularity (RFC 7323 2.4).
    assert all(later > earlier - (1 << b_params_shift) for earlier, later in itertools.pairwise(edges))


@pytest.mark.parametrize("negotiated", [True, False])
def test_window_scaling_negotiated_or_not(negotiated: bool) -> None:
    data_a, data_b = payload(2 * MB, 12), payload(2 * MB, 13)
    net = Net(app_a=App(data=data_a), app_b=App(data=data_b), ab=impaired(0.02, 41), ba=impaired(0.02, 42))
    if not negotiated:
        net.ab.rewrite = strip_syn_options(keep_mss=True)  # the SYN reaches b without window scaling
    windows: list[int] = []
    net.ba.taps.append(lambda s, now: windows.append(parse(s, IP_B, IP_A)[0].window))
    net.run(net.both_closed, max_time=50_000)
    assert_intact(net, data_a, data_b)
    synack_window, later = windows[0], windows[1:]
    assert synack_window == 0xFFFF  # never scaled in a SYN
    if negotiated:
        assert max(later) == (1 << 20) >> 7  # 1 MiB of free buffer, scaled by 7
    else:
        assert max(later) == 0xFFFF  # capped at 64 KiB - 1: no scaling either way


def test_peer_without_mss_option_gets_536_byte_segments() -> None:
    data_a, data_b = payload(300_000, 14), payload(300_000, 15)
    net = Net(app_a=App(data=data_a), app_b=App(data=data_b))
    net.ab.rewrite = strip_syn_options(keep_mss=False)
    sizes_ba: list[int] = []
    sizes_ab: list[int] = []
    net.ba.taps.append(lambda s, now: sizes_ba.append(len(parse(s, IP_B, IP_A)[1])))
    net.ab.taps.append(lambda s, now: sizes_ab.append(len(s) - 4 * (s[12] >> 4)))
    net.run(net.both_closed)
    assert_intact(net, data_a, data_b)
    assert max(sizes_ba) == 536  # b never heard a's MSS
    assert max(sizes_ab) == 1460  # a heard b's


def test_sequence_numbers_wrap_during_transfer() -> None:
    data_a, data_b = payload(MB, 16), payload(MB, 17)
    net = Net(
        app_a=App(data=data_a),
        app_b=App(data=data_b),
        ab=impaired(0.05, 51),
        ba=impaired(0.05, 52),
        isn_a=0xFFFFFFFF - 300_000,
        isn_b=0xFFFFFFFF - 5,
    )
    net.run(net.both_closed, max_time=50_000)
    assert_intact(net, data_a, data_b)


def test_lost_syns_and_synack_are_retransmitted() -> None:
    net_drops = {"syn": 2, "synack": 1}

    def drop_syn(segment: bytes) -> bool:
        if segment[13] & SYN and net_drops["syn"]:
            net_drops["syn"] -= 1
            return True
        return False

    def drop_synack(segment: bytes) -> bool:
        if segment[13] & SYN and net_drops["synack"]:
            net_drops["synack"] -= 1
            return True
        return False

    net = Net(app_a=App(data=b"hello"), app_b=App(data=b"world"))
    net.ab.drop_if = drop_syn
    net.ba.drop_if = drop_synack
    net.run(net.both_closed)
    assert bytes(net.app_b.received) == b"hello" and bytes(net.app_a.received) == b"world"
    assert net.a.counters.retransmits == 2  # two lost SYNs
    assert net.b is not None and net.b.counters.retransmits == 1  # the lost SYN-ACK, on b's own RTO
    assert net.now - 100 >= 1 + 2  # two RTO backoffs before the third SYN


def test_slow_accept_and_refuse() -> None:
    net = Net(app_a=App(data=b"x" * 10_000), app_b=App(data=b"y"), accept_delay=0.5)
    net.run(net.both_closed)
    assert bytes(net.app_b.received) == b"x" * 10_000
    refused = Net(app_a=App(data=b"x"), refuse=True)
    refused.run(lambda: refused.app_a.closed)
    assert refused.app_a.reset and refused.app_a.close_reason() == "refused"
    assert refused.b is not None and refused.b.state == "CLOSED"


def test_blackholed_peer_never_leaks_either_side() -> None:
    """The link dies mid-transfer: the sender gives up after its retransmissions (its RST is lost too),
    the idle receiver after keepalive -- both end Closed in bounded time."""
    params = TcpParams(keepalive_idle=600.0, keepalive_interval=10.0, keepalive_probes=3)
    net = Net(params, params, app_a=App(data=payload(MB, 18)), app_b=App(shutdown_when_sent=False))
    net.run(lambda: len(net.app_b.received) > 100_000)
    net.ab.blackhole = net.ba.blackhole = True
    net.run(net.both_closed, max_time=5000)
    assert net.app_a.close_reason() == "timeout"
    assert net.app_b.close_reason() == "keepalive timeout"
    assert net.a.counters.timeouts == params.max_retransmits  # the expiry after those gives up
    assert net.ab.lost > 0 and not net.ab.heap and not net.ba.heap


def test_fin_is_retransmitted_until_acked() -> None:
    net = Net(app_a=App(data=b"abc"), app_b=App(data=b""))
    fins = {"n": 3}

    def drop_fins(segment: bytes) -> bool:
        header = TcpHeader.parse(segment)[0]
        if header.flags & FIN and fins["n"]:
            fins["n"] -= 1
            return True
        return False

    net.ab.drop_if = drop_fins
    net.run(net.both_closed)
    assert bytes(net.app_b.received) == b"abc" and net.app_b.eof
    assert net.app_a.close_reason() == "closed" and net.app_b.close_reason() == "closed"
    assert IP_A != IP_B
