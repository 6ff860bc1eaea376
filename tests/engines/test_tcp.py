"""vmlan.engines.tcp, segment by segment: handshakes, options, RST/SYN validation, timers, edge cases.

The "guest" here is the test itself, writing raw segments with :func:`tcpnet.guest_segment`; the
byte-stream tests over a lossy link are in test_tcp_transfer.py, the property tests in test_tcp_fuzz.py.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP

from vmlan.engines.tcp import (
    CLOSE_WAIT,
    CLOSED,
    ESTABLISHED,
    FIN_WAIT_1,
    FIN_WAIT_2,
    LAST_ACK,
    LISTEN,
    SYN_RECEIVED,
    SYN_SENT,
    TIME_WAIT,
    Closed,
    Connected,
    DataReceived,
    EndOfStream,
    Reset,
    TcpConnection,
    TcpParams,
    TcpStateError,
)
from vmlan.wire import WireError
from vmlan.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpOptions

from .tcpnet import IP_A, IP_B, PORT_A, PORT_B, events, guest_segment, parse

LOCAL = (IP_A, PORT_A)  # the engine's side
REMOTE = (IP_B, PORT_B)  # the guest, played by the test
GISN = 0x12345678  # the guest's ISN
ISN = 0xA0B0C0D0  # ours

# A Linux guest's SYN: MSS 1460, SACK-permitted, timestamps, window scale 7 (what Linux 6.x sends).
LINUX_SYN = guest_segment(
    seq=GISN,
    flags=SYN,
    window=64240,
    options=TcpOptions(mss=1460, sack_permitted=True, timestamps=(0xDEADBEEF, 0), wscale=7),
)
# Our answer with the default TcpParams: MSS 1460, NOP, window scale 7 -- no SACK, no timestamps.
GOLDEN_SYNACK = bytes.fromhex(
    "9c40 1f90 a0b0c0d0 12345679"  # ports 40000 -> 8080, seq = our ISN, ack = guest ISN + 1
    " 70 12 ffff e5f8 0000"  # data offset 7, SYN|ACK, window 65535 (SYN windows are never scaled), checksum
    " 020405b4 01 030307"  # MSS 1460, NOP, window scale 7
)


def seg(**kw: object) -> bytes:
    return guest_segment(**kw)  # type: ignore[arg-type]


def passive(
    params: TcpParams | None = None,
    *,
    options: TcpOptions | None = None,
    window: int = 65535,
    now: float = 0.0,
    isn: int = ISN,
    gisn: int = GISN,
) -> TcpConnection:
    """An ESTABLISHED connection opened by the (test) guest; its Connected event already drained."""
    if options is None:
        options = TcpOptions(mss=1460, wscale=7)
    syn = seg(seq=gisn, flags=SYN, window=window, options=options)
    conn = TcpConnection.from_syn(LOCAL, REMOTE, syn, params or TcpParams(), now, isn)
    conn.accept(now)
    assert len(conn.segments_to_send(now)) == 1  # the SYN-ACK
    conn.receive_segment(seg(seq=gisn + 1, ack=isn + 1, flags=ACK, window=window), now)
    assert conn.state == ESTABLISHED
    assert events(conn) == [Connected()]
    assert conn.segments_to_send(now) == []
    return conn


def headers(segments: list[bytes]) -> list[tuple[int, int, int, int, int]]:
    """(seq relative to ISN, ack relative to guest ISN, flags, window, payload length) per segment."""
    out = []
    for s in segments:
        h, payload = parse(s)
        out.append(((h.seq - ISN) & 0xFFFFFFFF, (h.ack - GISN) & 0xFFFFFFFF, h.flags, h.window, len(payload)))
    return out


def scapy_checksum_ok(segment: bytes, src: str = "10.0.2.2", dst: str = "10.0.2.15") -> bool:
    """Let scapy recompute the TCP checksum over the IPv4 pseudo-header and compare."""
    pkt = IP(src=src, dst=dst) / TCP(segment)
    theirs = pkt[TCP].chksum
    del pkt[TCP].chksum
    return bool(IP(bytes(pkt))[TCP].chksum == theirs)


# -- handshakes and options ----------------------------------------------------------------------------------


def test_passive_open_is_silent_until_accept_then_sends_the_golden_synack():
    conn = TcpConnection.from_syn(LOCAL, REMOTE, LINUX_SYN, TcpParams(), 0.0, ISN)
    assert conn.state == LISTEN
    assert conn.segments_to_send(0.0) == [] and conn.get_timer() is None
    conn.receive_segment(LINUX_SYN, 0.5)  # the guest retransmits its SYN while the host connect() runs
    assert conn.segments_to_send(0.5) == [] and events(conn) == []
    conn.accept(1.0)
    assert conn.state == SYN_RECEIVED
    (synack,) = conn.segments_to_send(1.0)
    assert synack == GOLDEN_SYNACK
    tcp = TCP(synack)
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack) == (PORT_A, PORT_B, ISN, GISN + 1)
    assert str(tcp.flags) == "SA" and tcp.dataofs == 7 and tcp.window == 65535
    assert tcp.options == [("MSS", 1460), ("NOP", None), ("WScale", 7)]
    assert scapy_checksum_ok(synack)
    assert conn.get_timer() == pytest.approx(2.0)  # RTO: rto_initial


def test_synack_omits_wscale_when_the_syn_lacks_it_and_mss_follows_params():
    syn = seg(seq=GISN, flags=SYN, options=TcpOptions(mss=1400))
    conn = TcpConnection.from_syn(LOCAL, REMOTE, syn, TcpParams(mss=8960), 0.0, ISN)
    conn.accept(0.0)
    (synack,) = conn.segments_to_send(0.0)
    assert TCP(synack).options == [("MSS", 8960)]
    assert scapy_checksum_ok(synack)


def test_active_open_syn_layout_and_handshake():
    conn = TcpConnection.connect(LOCAL, REMOTE, TcpParams(mss=65495, wscale=9), 0.0, 0x01020304)
    assert conn.state == SYN_SENT
    (syn,) = conn.segments_to_send(0.0)
    assert syn == bytes.fromhex("9c401f90 01020304 00000000 7002ffff b20b0000 0204ffd7 01030309")
    tcp = TCP(syn)
    assert str(tcp.flags) == "S" and tcp.options == [("MSS", 65495), ("NOP", None), ("WScale", 9)]
    assert scapy_checksum_ok(syn)
    synack = seg(seq=GISN, ack=0x01020305, flags=SYN | ACK, window=1000, options=TcpOptions(mss=1460, wscale=3))
    conn.receive_segment(synack, 0.01)
    assert conn.state == ESTABLISHED and events(conn) == [Connected()]
    (ack,) = conn.segments_to_send(0.01)
    h, _ = parse(ack)
    assert (h.seq, h.ack, h.flags) == (0x01020305, GISN + 1, ACK)
    assert h.window == (1 << 20) >> 9  # our free buffer, scaled by our shift
    # The SYN-ACK's window is never scaled (RFC 7323 2.2): 1000 bytes until the guest's next segment,
    # whose window field is scaled by its shift (1000 << 3).
    assert conn.send(bytes(20000), 0.02) == 20000
    sent = conn.segments_to_send(0.02)
    assert sum(len(parse(s)[1]) for s in sent) == 1000
    conn.receive_segment(seg(seq=GISN + 1, ack=0x01020305 + 1000, flags=ACK, window=1000), 0.03)
    sent = conn.segments_to_send(0.03)
    # Five full segments; the 700-byte rest waits for more window (sender SWS avoidance, RFC 9293 3.8.6.2.1).
    assert [len(parse(s)[1]) for s in sent] == [1460] * 5


def test_no_window_scaling_unless_both_syns_carry_it():
    # The guest offers none: we must neither scale our window nor its.
    conn = passive(options=TcpOptions(mss=1460), window=5000)
    conn.receive_segment(seg(seq=GISN + 1, ack=ISN + 1, flags=ACK, window=5000), 0.0)
    conn.send(bytes(100_000), 0.0)
    out = conn.segments_to_send(0.0)
    assert [len(parse(s)[1]) for s in out] == [1460] * 3  # 5000 bytes of window, SWS keeps the 620 back
    assert all(parse(s)[0].window == 0xFFFF for s in out)  # 1 MiB free but unscaled: capped at 65535
    # Active open whose SYN-ACK has no window scale option: our offer is void.
    a = TcpConnection.connect(LOCAL, REMOTE, TcpParams(), 0.0, ISN)
    a.segments_to_send(0.0)
    a.receive_segment(seg(seq=GISN, ack=ISN + 1, flags=SYN | ACK, window=3000, options=TcpOptions(mss=1460)), 0.0)
    (ack,) = a.segments_to_send(0.0)
    assert parse(ack)[0].window == 0xFFFF
    a.send(bytes(10_000), 0.0)
    assert [len(parse(s)[1]) for s in a.segments_to_send(0.0)] == [1460, 1460]  # 3000 unscaled


def test_missing_mss_means_536_and_ours_caps_it():
    conn = passive(options=TcpOptions(wscale=7))
    conn.send(bytes(2000), 0.0)
    assert [n for *_, n in headers(conn.segments_to_send(0.0))] == [536, 536, 536, 392]
    big = passive(TcpParams(mss=1000), options=TcpOptions(mss=9000, wscale=7))
    big.send(bytes(2500), 0.0)
    assert [n for *_, n in headers(big.segments_to_send(0.0))] == [1000, 1000, 500]
    tiny = passive(options=TcpOptions(mss=1, wscale=7))  # a hostile MSS is raised to 64
    tiny.send(bytes(200), 0.0)
    assert [n for *_, n in headers(tiny.segments_to_send(0.0))] == [64, 64, 64, 8]


def test_refuse_answers_the_syn_with_rst_ack():
    conn = TcpConnection.from_syn(LOCAL, REMOTE, LINUX_SYN, TcpParams(), 0.0, ISN)
    conn.refuse(0.1)
    (rst,) = conn.segments_to_send(0.1)
    assert rst == bytes.fromhex("9c401f90 00000000 12345679 50140000 73420000")
    tcp = TCP(rst)
    assert str(tcp.flags) == "RA" and tcp.seq == 0 and tcp.ack == GISN + 1
    assert scapy_checksum_ok(rst)
    assert conn.state == CLOSED and events(conn) == [Closed("refused")]
    assert conn.get_timer() is None and conn.segments_to_send(0.2) == []
    conn.accept(0.3)  # a late accept() after the end is harmless
    conn.refuse(0.3)
    assert conn.segments_to_send(0.3) == [] and events(conn) == []


def test_guest_rst_before_accept_closes_and_accept_is_then_a_noop():
    conn = TcpConnection.from_syn(LOCAL, REMOTE, LINUX_SYN, TcpParams(), 0.0, ISN)
    conn.receive_segment(seg(seq=GISN + 5, flags=RST), 0.1)  # wrong sequence: ignored
    assert conn.state == LISTEN
    conn.receive_segment(seg(seq=GISN + 1, flags=RST), 0.2)
    assert events(conn) == [Reset(), Closed("reset")]
    conn.accept(0.3)
    assert conn.segments_to_send(0.3) == []


def test_lost_synack_is_resent_on_the_guests_syn_retransmission_and_by_rto():
    conn = TcpConnection.from_syn(LOCAL, REMOTE, LINUX_SYN, TcpParams(), 0.0, ISN)
    conn.accept(0.0)
    first = conn.segments_to_send(0.0)
    conn.receive_segment(LINUX_SYN, 0.5)
    assert conn.segments_to_send(0.5) == first
    conn.handle_timer(conn.get_timer() or 0.0)
    assert conn.segments_to_send(1.0) == first
    assert conn.counters.retransmits == 2


def test_syn_retries_exhausted_closes_with_backoff():
    params = TcpParams(syn_retries=4, rto_initial=1.0)
    conn = TcpConnection.connect(LOCAL, REMOTE, params, 0.0, ISN)
    times = []
    now = 0.0
    while conn.state != CLOSED:
        for s in conn.segments_to_send(now):
            assert parse(s)[0].flags == SYN
            times.append(now)
        deadline = conn.get_timer()
        assert deadline is not None
        now = deadline
        conn.handle_timer(now)
    assert times == [0.0, 1.0, 3.0, 7.0, 15.0]  # 1 + syn_retries SYNs, RTO doubling each time
    assert now == 31.0
    assert events(conn) == [Closed("syn timeout")]
    assert conn.segments_to_send(now) == [] and conn.get_timer() is None


def test_guest_refuses_our_active_open():
    conn = TcpConnection.connect(LOCAL, REMOTE, TcpParams(), 0.0, ISN)
    conn.segments_to_send(0.0)
    conn.receive_segment(seg(seq=0, ack=ISN + 7, flags=RST | ACK), 0.01)  # unacceptable ACK: ignored
    conn.receive_segment(seg(seq=0, flags=RST), 0.01)  # RST without ACK in SYN_SENT: ignored
    assert conn.state == SYN_SENT
    conn.receive_segment(seg(seq=0, ack=ISN + 1, flags=RST | ACK), 0.02)
    assert events(conn) == [Reset(), Closed("refused")]


def test_synack_with_a_bad_ack_gets_a_rst():
    conn = TcpConnection.connect(LOCAL, REMOTE, TcpParams(), 0.0, ISN)
    conn.segments_to_send(0.0)
    conn.receive_segment(seg(seq=GISN, ack=ISN + 99, flags=SYN | ACK, options=TcpOptions(mss=1460)), 0.01)
    (rst,) = conn.segments_to_send(0.01)
    h, _ = parse(rst)
    assert h.flags == RST and h.seq == ISN + 99
    assert conn.state == SYN_SENT


def test_data_queued_before_the_handshake_goes_out_after_it_then_fin():
    # hostfwd: the host client writes and closes before the guest has answered our SYN.
    conn = TcpConnection.connect(LOCAL, REMOTE, TcpParams(), 0.0, ISN)
    assert conn.send(b"GET / HTTP/1.0\r\n\r\n", 0.0) == 18
    conn.shutdown(0.0)
    (syn,) = conn.segments_to_send(0.0)
    assert parse(syn)[0].flags == SYN
    conn.receive_segment(seg(seq=GISN, ack=ISN + 1, flags=SYN | ACK, options=TcpOptions(mss=1460, wscale=7)), 0.1)
    assert conn.state == FIN_WAIT_1
    (data,) = conn.segments_to_send(0.1)
    h, payload = parse(data)
    assert payload == b"GET / HTTP/1.0\r\n\r\n" and h.flags == ACK | PSH | FIN and h.seq == ISN + 1
    with pytest.raises(TcpStateError):
        conn.send(b"more", 0.1)
    assert conn.send_space() == 0


# -- RFC 5961 validation, malformed input ----------------------------------------------------------------------


def test_rst_exact_sequence_resets_in_window_gets_challenge_ack_outside_is_ignored():
    conn = passive()
    conn.receive_segment(seg(seq=GISN + 1 + 10**6, flags=RST), 1.0)  # outside the window: silently dropped
    assert conn.segments_to_send(1.0) == [] and conn.counters.out_of_window == 1
    conn.receive_segment(seg(seq=GISN + 1 + 500, flags=RST), 1.0)  # in the window, not exact
    (challenge,) = conn.segments_to_send(1.0)
    h, _ = parse(challenge)
    assert h.flags == ACK and h.ack == GISN + 1 and h.seq == ISN + 1
    assert conn.state == ESTABLISHED and conn.counters.challenge_acks == 1 and events(conn) == []
    conn.receive_segment(seg(seq=GISN + 1, flags=RST), 1.0)
    assert events(conn) == [Reset(), Closed("reset")] and conn.state == CLOSED


def test_syn_on_an_established_connection_gets_a_challenge_ack():
    conn = passive()
    conn.receive_segment(seg(seq=GISN + 77, flags=SYN, options=TcpOptions(mss=1460)), 1.0)
    (challenge,) = conn.segments_to_send(1.0)
    assert parse(challenge)[0].flags == ACK and parse(challenge)[0].ack == GISN + 1
    assert conn.state == ESTABLISHED and conn.counters.challenge_acks == 1


def test_bad_checksum_and_malformed_segments_are_dropped_and_counted():
    conn = passive()
    good = seg(seq=GISN + 1, ack=ISN + 1, flags=ACK | PSH, payload=b"hello")
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    conn.receive_segment(bytes(bad), 1.0)
    assert conn.counters.bad_checksum == 1 and events(conn) == []
    conn.receive_segment(b"\x00" * 7, 1.0)
    doff_big = bytearray(seg(seq=GISN + 1, ack=ISN + 1, flags=ACK))
    doff_big[12] = 0xF0  # 60-byte header in a 20-byte segment (checksum fixed below)
    doff_big[16:18] = b"\0\0"
    from vmlan.wire.checksum import internet_checksum, pseudo_header_sum_v4

    doff_big[16:18] = internet_checksum(doff_big, pseudo_header_sum_v4(IP_B, IP_A, 6, 20)).to_bytes(2, "big")
    conn.receive_segment(bytes(doff_big), 1.0)
    wrong_port = seg(seq=GISN + 1, ack=ISN + 1, flags=ACK, src=(IP_B, 9))
    conn.receive_segment(wrong_port, 1.0)
    assert conn.counters.malformed == 3
    conn.receive_segment(memoryview(good), 1.0)  # memoryview input works; the checksum was fine all along
    assert events(conn) == [DataReceived(b"hello")]


def test_ack_field_of_an_old_retransmission_is_used():
    """The guest retransmits data we already hold, with a newer ACK field (Linux refreshes it): that
    acknowledgment counts even though the data is dropped (BSD keeps processing it; two ends that only
    exchange old retransmissions would otherwise never learn each other's progress)."""
    conn = passive()
    conn.send(bytes(1000), 1.0)
    conn.segments_to_send(1.0)
    conn.receive_segment(seg(seq=GISN + 1, ack=ISN + 1, flags=ACK, payload=b"abc"), 1.0)
    conn.receive_segment(seg(seq=GISN + 1, ack=ISN + 1 + 1000, flags=ACK, payload=b"abc"), 1.5)
    assert conn.bytes_acked == 1000 and conn.counters.duplicates == 1
    assert events(conn) == [DataReceived(b"abc")]
    (ack,) = conn.segments_to_send(1.5)
    assert parse(ack)[0].ack == GISN + 4


def test_segment_acking_unsent_data_is_dropped_with_an_ack():
    conn = passive()
    conn.receive_segment(seg(seq=GISN + 1, ack=ISN + 5000, flags=ACK, payload=b"x"), 1.0)
    assert events(conn) == [] and conn.counters.out_of_window == 1
    (ack,) = conn.segments_to_send(1.0)
    assert parse(ack)[0].ack == GISN + 1


def test_from_syn_rejects_what_is_not_a_bare_syn():
    with pytest.raises(WireError):
        TcpConnection.from_syn(LOCAL, REMOTE, seg(seq=1, ack=2, flags=SYN | ACK), TcpParams(), 0.0, ISN)
    with pytest.raises(WireError):
        TcpConnection.from_syn(LOCAL, REMOTE, LINUX_SYN[:-1] + b"\x00", TcpParams(), 0.0, ISN)  # bad checksum
    with pytest.raises(WireError):
        TcpConnection.from_syn((IP_A, 1), REMOTE, LINUX_SYN, TcpParams(), 0.0, ISN)  # not our port


def test_api_misuse_raises():
    conn = passive()
    with pytest.raises(TcpStateError):
        conn.accept(0.0)
    with pytest.raises(ValueError):
        conn.consume(1)
    conn.shutdown(0.0)
    conn.shutdown(0.0)  # idempotent
    with pytest.raises(TcpStateError):
        conn.send(b"x", 0.0)
    with pytest.raises(ValueError):
        TcpParams(mss=10)
    with pytest.raises(ValueError):
        TcpParams(wscale=15)


# -- receiving --------------------------------------------------------------------------------------------------


def test_ack_every_second_segment_or_after_the_delayed_ack_timer():
    conn = passive()
    conn.receive_segment(seg(seq=GISN + 1, ack=ISN + 1, flags=ACK, payload=b"a" * 1460), 1.0)
    assert conn.segments_to_send(1.0) == []
    deadline = conn.get_timer()
    assert deadline is not None and 1.0 < deadline <= 1.04
    conn.handle_timer(deadline)
    (ack,) = conn.segments_to_send(deadline)
    assert parse(ack)[0].ack == GISN + 1 + 1460
    conn.receive_segment(seg(seq=GISN + 1461, ack=ISN + 1, flags=ACK, payload=b"b" * 1460), 2.0)
    conn.receive_segment(seg(seq=GISN + 2921, ack=ISN + 1, flags=ACK, payload=b"c" * 1460), 2.0)
    (ack,) = conn.segments_to_send(2.0)
    assert parse(ack)[0].ack == GISN + 1 + 3 * 1460
    assert events(conn) == [DataReceived(b"a" * 1460 + b"b" * 1460 + b"c" * 1460)]


def test_out_of_order_segments_are_dup_acked_at_once_and_reassembled():
    conn = passive()
    base = GISN + 1
    parts = [bytes([65 + i]) * 1000 for i in range(5)]

    def data(i: int, payload: bytes | None = None) -> bytes:
        return seg(seq=base + 1000 * i, ack=ISN + 1, flags=ACK, payload=parts[i] if payload is None else payload)

    conn.receive_segment(data(2), 1.0)
    conn.receive_segment(data(4), 1.0)
    conn.receive_segment(data(2), 1.0)  # a duplicate of held data
    dup_acks = conn.segments_to_send(1.0)
    assert len(dup_acks) == 3 and all(parse(s)[0].ack == base for s in dup_acks)
    assert events(conn) == []
    # A segment covering 1..4.5 overlaps both held blocks; only the new bytes are kept.
    overlap = parts[1] + parts[2] + parts[3] + parts[4][:500]
    conn.receive_segment(seg(seq=base + 1000, ack=ISN + 1, flags=ACK, payload=overlap), 1.0)
    conn.receive_segment(data(0), 1.0)
    (ack,) = conn.segments_to_send(1.0)
    assert parse(ack)[0].ack == base + 5000
    assert events(conn) == [DataReceived(b"".join(parts))]
    assert conn.counters.ooo_segments == 3
    conn.receive_segment(data(3), 1.0)  # an old duplicate: ACKed again, not delivered
    assert parse(conn.segments_to_send(1.0)[0])[0].ack == base + 5000 and events(conn) == []


def test_out_of_order_fin_is_held_until_the_gap_fills():
    conn = passive()
    conn.receive_segment(seg(seq=GISN + 1 + 5, ack=ISN + 1, flags=ACK | FIN, payload=b"world"), 1.0)
    assert conn.state == ESTABLISHED and events(conn) == []
    conn.receive_segment(seg(seq=GISN + 1, ack=ISN + 1, flags=ACK, payload=b"hello"), 1.1)
    assert events(conn) == [DataReceived(b"helloworld"), EndOfStream()]
    assert conn.state == CLOSE_WAIT
    (ack,) = conn.segments_to_send(1.1)
    assert parse(ack)[0].ack == GISN + 1 + 10 + 1


def test_window_is_free_buffer_never_shrinks_and_data_beyond_it_is_trimmed():
    params = TcpParams(rcv_buffer=10_000, mss=1000, wscale=0)
    conn = passive(params, options=TcpOptions(mss=1000, wscale=0))
    base = GISN + 1
    edges = []
    for i in range(12):  # 12000 bytes offered, only 10000 fit
        conn.receive_segment(seg(seq=base + 1000 * i, ack=ISN + 1, flags=ACK, payload=bytes(1000)), 1.0)
        for s in conn.segments_to_send(1.0):
            h, _ = parse(s)
            edges.append(h.ack + h.window)
    conn.handle_timer(2.0)
    for s in conn.segments_to_send(2.0):
        h, _ = parse(s)
        edges.append(h.ack + h.window)
        assert h.window == 0 and h.ack == base + 10_000
    assert edges == sorted(edges) and edges[-1] == base + 10_000
    assert conn.unconsumed == 10_000
    (received,) = events(conn)
    assert isinstance(received, DataReceived) and len(received.data) == 10_000
    # A zero-window probe is answered with an ACK and the (still closed) window.
    conn.receive_segment(seg(seq=base + 10_000, ack=ISN + 1, flags=ACK, payload=b"p"), 3.0)
    (ack,) = conn.segments_to_send(3.0)
    assert parse(ack)[0].window == 0 and parse(ack)[0].ack == base + 10_000
    # Consuming a little does not reopen it (receiver SWS avoidance), not even in the next ACK;
    # consuming a segment's worth does.
    conn.consume(100)
    assert conn.segments_to_send(3.0) == []
    conn.receive_segment(seg(seq=base + 10_000, ack=ISN + 1, flags=ACK, payload=b"p"), 3.1)
    (ack,) = conn.segments_to_send(3.1)
    assert parse(ack)[0].window == 0
    conn.consume(5000)
    (update,) = conn.segments_to_send(3.0)
    assert parse(update)[0].window == 5100


def test_window_update_after_consume_only_when_it_matters():
    conn = passive()
    # The SYN-ACK offered 65535 (unscaled); growing to the 1 MiB buffer is worth an update at once.
    conn.receive_segment(seg(seq=GISN + 1, ack=ISN + 1, flags=ACK, payload=bytes(1000)), 1.0)
    events(conn)
    conn.consume(1000)
    (update,) = conn.segments_to_send(1.0)
    assert parse(update)[0].window == (1 << 20) >> 7
    # Now the window is wide open: consuming more is no reason for a gratuitous segment.
    conn.receive_segment(seg(seq=GISN + 1001, ack=ISN + 1, flags=ACK, payload=bytes(1000)), 1.1)
    events(conn)
    conn.consume(1000)
    assert conn.segments_to_send(1.1) == []


# -- sending ----------------------------------------------------------------------------------------------------


def _acks(conn: TcpConnection, ack: int, now: float, n: int = 1, window: int = 65535) -> None:
    for _ in range(n):
        conn.receive_segment(seg(seq=GISN + 1, ack=ack, flags=ACK, window=window), now)


def test_initial_window_is_ten_segments_and_slow_start_grows_it():
    conn = passive(options=TcpOptions(mss=1000, wscale=10))
    conn.send(bytes(200_000), 0.0)
    first = conn.segments_to_send(0.0)
    assert [n for *_, n in headers(first)] == [1000] * 10
    _acks(conn, ISN + 1 + 10_000, 0.01)
    second = conn.segments_to_send(0.01)
    assert len(second) == 20  # cwnd grew by the 10000 bytes acknowledged


def test_send_accepts_at_most_the_free_buffer():
    conn = passive(TcpParams(snd_buffer=5000))
    assert conn.send_space() == 5000
    assert conn.send(bytes(8000), 0.0) == 5000
    assert conn.send_space() == 0 and conn.send(b"x", 0.0) == 0
    conn.segments_to_send(0.0)
    _acks(conn, ISN + 1 + 2920, 0.01)
    assert conn.send_space() == 2920 and conn.bytes_acked == 2920 and conn.bytes_unacked == 2080


def test_fast_retransmit_on_the_third_duplicate_ack():
    conn = passive()
    conn.send(bytes(range(256)) * 40, 0.0)  # 10240 bytes: 8 segments
    sent = conn.segments_to_send(0.0)
    assert len(sent) == 8
    _acks(conn, ISN + 1 + 1460, 0.01)  # segment 1 arrived, segment 2 lost
    assert conn.segments_to_send(0.01) == []
    _acks(conn, ISN + 1 + 1460, 0.01, n=2)
    assert conn.segments_to_send(0.01) == []
    _acks(conn, ISN + 1 + 1460, 0.01)  # third duplicate
    (rexmit,) = conn.segments_to_send(0.01)
    assert rexmit == sent[1]
    assert conn.counters.fast_retransmits == 1 and conn.counters.dup_acks == 3
    _acks(conn, ISN + 1 + 10240, 0.02)  # everything
    assert conn.get_timer() is not None and conn.get_timer() > 1000  # only keepalive left
    assert conn.counters.timeouts == 0


def test_rto_backs_off_keeps_karn_and_collapses_after_a_clean_sample():
    params = TcpParams(rto_min=0.2, rto_max=5.0)
    conn = passive(params)  # handshake RTT 0: rto = rto_min
    conn.send(b"x" * 100, 10.0)
    conn.segments_to_send(10.0)
    assert conn.get_timer() == pytest.approx(10.2)
    conn.handle_timer(10.2)
    assert len(conn.segments_to_send(10.2)) == 1
    assert conn.get_timer() == pytest.approx(10.6)  # doubled
    conn.handle_timer(10.6)
    conn.segments_to_send(10.6)
    assert conn.get_timer() == pytest.approx(11.4)
    _acks(conn, ISN + 101, 11.0)  # acks a retransmitted segment: no RTT sample (Karn)
    conn.send(b"y" * 100, 11.0)
    conn.segments_to_send(11.0)
    assert conn.get_timer() == pytest.approx(11.8)  # still the backed-off 0.8 s
    _acks(conn, ISN + 201, 11.05)  # a clean sample of 50 ms: RTO collapses to rto_min
    conn.send(b"z" * 100, 11.05)
    conn.segments_to_send(11.05)
    assert conn.get_timer() == pytest.approx(11.25)
    assert conn.counters.timeouts == 2 and conn.counters.retransmits == 2


def test_retransmission_limit_aborts_with_rst():
    params = TcpParams(max_retransmits=5, rto_min=0.2, rto_max=1.0)
    conn = passive(params)
    conn.send(b"data", 0.0)
    now = 0.0
    out: list[bytes] = conn.segments_to_send(now)
    while conn.state != CLOSED:
        deadline = conn.get_timer()
        assert deadline is not None
        now = deadline
        conn.handle_timer(now)
        out += conn.segments_to_send(now)
    flags = [parse(s)[0].flags for s in out]
    assert flags[:-1] == [ACK | PSH] * 6 and flags[-1] == RST | ACK
    assert parse(out[-1])[0].seq == ISN + 1 + 4
    assert now == pytest.approx(0.2 + 0.4 + 0.8 + 1.0 + 1.0 + 1.0)  # capped at rto_max
    assert events(conn) == [Closed("timeout")]


def test_zero_window_stops_sending_probes_and_resumes():
    conn = passive(TcpParams(rto_min=0.2), options=TcpOptions(mss=1000, wscale=0))
    conn.send(bytes(5000), 0.0)
    assert len(conn.segments_to_send(0.0)) == 5
    _acks(conn, ISN + 1 + 3000, 0.01, window=0)  # took 3000, buffer full: 2000 in flight are dropped
    assert conn.segments_to_send(0.01) == []
    now = 0.01
    probes = []
    for _ in range(20):  # many more probes than max_retransmits: answered probes never kill it
        deadline = conn.get_timer()
        assert deadline is not None and deadline - now <= 60.0 + 1e-9
        now = deadline
        conn.handle_timer(now)
        for s in conn.segments_to_send(now):
            h, payload = parse(s)
            probes.append((h.seq, len(payload)))
        _acks(conn, ISN + 1 + 3000, now, window=0)
    assert probes and all(p == (ISN + 3000, 0) for p in probes)  # SND.UNA - 1, no data
    assert conn.state == ESTABLISHED and conn.counters.window_probes == len(probes)
    _acks(conn, ISN + 1 + 3000, now, window=4000)  # the reader caught up: window update
    resumed = conn.segments_to_send(now)
    assert [(s - 1 - 3000, n) for s, _, _, _, n in headers(resumed)] == [(0, 1000), (1000, 1000)]


def test_unanswered_zero_window_probes_abort():
    conn = passive(TcpParams(max_retransmits=3, rto_max=2.0), options=TcpOptions(mss=1000, wscale=0))
    conn.send(bytes(3000), 0.0)
    conn.segments_to_send(0.0)
    _acks(conn, ISN + 1 + 1000, 0.01, window=0)
    now = 0.01
    while conn.state != CLOSED:
        deadline = conn.get_timer()
        assert deadline is not None
        now = deadline
        conn.handle_timer(now)
        conn.segments_to_send(now)
    assert events(conn) == [Closed("persist timeout")]
    assert now < 20


# -- closing ----------------------------------------------------------------------------------------------------


def test_passive_close_close_wait_last_ack():
    conn = passive()
    conn.receive_segment(seg(seq=GISN + 1, ack=ISN + 1, flags=ACK | FIN), 1.0)
    assert conn.state == CLOSE_WAIT and events(conn) == [EndOfStream()]
    conn.send(b"bye", 1.0)  # half-close: we keep sending
    conn.shutdown(1.0)
    assert conn.state == LAST_ACK
    (last,) = conn.segments_to_send(1.0)
    h, payload = parse(last)
    assert payload == b"bye" and h.flags & FIN and h.ack == GISN + 2
    conn.receive_segment(seg(seq=GISN + 2, ack=ISN + 1 + 3 + 1, flags=ACK), 1.1)
    assert conn.state == CLOSED and events(conn) == [Closed("closed")]


def test_active_close_time_wait_acks_a_retransmitted_fin_and_ends():
    conn = passive(TcpParams(time_wait=1.0))
    conn.shutdown(1.0)
    (fin,) = conn.segments_to_send(1.0)
    assert parse(fin)[0].flags == ACK | FIN and conn.state == FIN_WAIT_1
    conn.receive_segment(seg(seq=GISN + 1, ack=ISN + 2, flags=ACK), 1.1)
    assert conn.state == FIN_WAIT_2
    conn.receive_segment(seg(seq=GISN + 1, ack=ISN + 2, flags=ACK | PSH, payload=b"late"), 1.2)
    conn.receive_segment(seg(seq=GISN + 5, ack=ISN + 2, flags=ACK | FIN), 1.3)
    assert conn.state == TIME_WAIT
    assert events(conn) == [DataReceived(b"late"), EndOfStream()]
    assert parse(conn.segments_to_send(1.3)[-1])[0].ack == GISN + 6
    conn.receive_segment(seg(seq=GISN + 5, ack=ISN + 2, flags=ACK | FIN), 2.0)  # our ACK was lost
    assert parse(conn.segments_to_send(2.0)[0])[0].ack == GISN + 6
    assert conn.get_timer() == pytest.approx(3.0)  # TIME_WAIT restarted
    conn.handle_timer(3.0)
    assert conn.state == CLOSED and events(conn) == [Closed("closed")]


def test_simultaneous_close_goes_through_closing():
    conn = passive()
    conn.shutdown(1.0)
    conn.segments_to_send(1.0)
    conn.receive_segment(seg(seq=GISN + 1, ack=ISN + 1, flags=ACK | FIN), 1.1)  # its FIN crossed ours
    assert conn.state == "CLOSING"
    conn.receive_segment(seg(seq=GISN + 2, ack=ISN + 2, flags=ACK), 1.2)
    assert conn.state == TIME_WAIT


def test_fin_wait_2_idle_timeout_resets():
    conn = passive(TcpParams(fin_wait_2_timeout=30.0, keepalive_idle=None))
    conn.shutdown(1.0)
    conn.segments_to_send(1.0)
    conn.receive_segment(seg(seq=GISN + 1, ack=ISN + 2, flags=ACK), 1.1)
    assert conn.get_timer() == pytest.approx(31.1)
    conn.receive_segment(seg(seq=GISN + 1, ack=ISN + 2, flags=ACK, payload=b"x"), 20.0)  # activity restarts it
    assert conn.get_timer() == pytest.approx(20.04)  # the delayed ACK comes first
    conn.handle_timer(20.04)
    conn.segments_to_send(20.04)
    assert conn.get_timer() == pytest.approx(50.0)
    while conn.state != CLOSED:
        deadline = conn.get_timer()
        assert deadline is not None
        conn.handle_timer(deadline)
    assert deadline == pytest.approx(50.0)
    assert parse(conn.segments_to_send(deadline)[-1])[0].flags == RST | ACK
    assert events(conn)[-1] == Closed("fin_wait_2 timeout")


def test_time_wait_syn_for_a_new_connection_ends_it():
    conn = passive()
    conn.shutdown(1.0)
    conn.segments_to_send(1.0)
    conn.receive_segment(seg(seq=GISN + 1, ack=ISN + 2, flags=ACK | FIN), 1.1)
    assert conn.state == TIME_WAIT
    conn.receive_segment(seg(seq=GISN + 100_000, flags=SYN, options=TcpOptions(mss=1460)), 1.2)
    assert conn.state == CLOSED and events(conn)[-1] == Closed("reused")


def test_abort_sends_rst_and_closed_segments_get_rst():
    conn = passive()
    conn.send(b"abc", 1.0)
    conn.segments_to_send(1.0)
    conn.abort(1.0)
    (rst,) = conn.segments_to_send(1.0)
    h, _ = parse(rst)
    assert h.flags == RST | ACK and h.seq == ISN + 4 and h.ack == GISN + 1
    assert events(conn) == [Closed("aborted")] and conn.get_timer() is None
    conn.abort(1.0)
    assert events(conn) == [] and conn.send(b"x", 1.0) == 0 and conn.send_space() == 0
    conn.receive_segment(seg(seq=GISN + 1, ack=ISN + 4, flags=ACK, payload=b"z"), 1.1)  # RFC 9293 3.10.7.1
    (rst2,) = conn.segments_to_send(1.1)
    assert parse(rst2)[0].flags == RST and parse(rst2)[0].seq == ISN + 4


def test_keepalive_probes_an_idle_guest_and_gives_up_on_a_silent_one():
    params = TcpParams(keepalive_idle=100.0, keepalive_interval=10.0, keepalive_probes=3)
    conn = passive(params)
    assert conn.get_timer() == pytest.approx(100.0)
    conn.handle_timer(100.0)
    (probe,) = conn.segments_to_send(100.0)
    h, payload = parse(probe)
    assert h.seq == ISN and payload == b"" and h.flags == ACK  # SND.UNA - 1: forces an ACK
    _acks(conn, ISN + 1, 100.001)  # the guest is alive
    assert conn.get_timer() == pytest.approx(200.001)
    now = 200.001
    while conn.state != CLOSED:
        conn.handle_timer(now)
        conn.segments_to_send(now)
        now = conn.get_timer() or now
    assert conn.counters.keepalives == 4
    assert events(conn) == [Closed("keepalive timeout")]


def test_sequence_numbers_wrap():
    conn = passive(isn=0xFFFFFF00, gisn=0xFFFFFFF0)
    conn.send(bytes(range(256)) * 8, 0.0)  # 2048 bytes across our wrap
    out = conn.segments_to_send(0.0)
    assert [parse(s)[0].seq for s in out] == [0xFFFFFF01, (0xFFFFFF01 + 1460) & 0xFFFFFFFF]
    conn.receive_segment(seg(seq=0xFFFFFFF1, ack=(0xFFFFFF01 + 2048) & 0xFFFFFFFF, flags=ACK, payload=b"q" * 100), 0.1)
    assert conn.bytes_acked == 2048
    assert events(conn) == [DataReceived(b"q" * 100)]
