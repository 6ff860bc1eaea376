"""The API the user stack drives: transmit/fill_from/take_data, TSO, buffer limits, IPv6, impossible SYNs.

The old API (segments_to_send, DataReceived, send) is covered by test_tcp.py; here it serves as the
reference the new calls must agree with.
"""

from __future__ import annotations

import random
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import TCP
from scapy.layers.inet6 import IPv6

from vmlan.engines.tcp import (
    ESTABLISHED,
    MAX_MSS_V6,
    Closed,
    Connected,
    DataReceived,
    EndOfStream,
    TcpConnection,
    TcpParams,
    TcpStateError,
)
from vmlan.wire.errors import SanityError, WireError
from vmlan.wire.tcp import ACK, FIN, PSH, SYN, TcpHeader, TcpOptions

from .tcpnet import (
    IP6_A,
    IP6_B,
    IP_A,
    IP_B,
    PORT_A,
    PORT_B,
    App,
    LinkConfig,
    Net,
    checksum_ok,
    events,
    guest_segment,
    parse,
    pseudo_sum,
)

GISN = 0x12345678
ISN = 0xA0B0C0D0


def passive(
    params: TcpParams | None = None,
    *,
    addrs: tuple[bytes, bytes] = (IP_A, IP_B),
    options: TcpOptions | None = None,
    window: int = 65535,
) -> TcpConnection:
    """An ESTABLISHED connection opened by the (test) guest at ``addrs[1]``; events drained."""
    local, remote = (addrs[0], PORT_A), (addrs[1], PORT_B)
    opts = options if options is not None else TcpOptions(mss=1460, wscale=7)
    syn = guest_segment(seq=GISN, flags=SYN, window=window, options=opts, src=remote, dst=local)
    conn = TcpConnection.from_syn(local, remote, syn, params or TcpParams(), 0.0, ISN)
    conn.accept(0.0)
    assert len(conn.segments_to_send(0.0)) == 1
    conn.receive_segment(guest_segment(seq=GISN + 1, ack=ISN + 1, flags=ACK, window=window, src=remote, dst=local), 0.0)
    assert conn.state == ESTABLISHED and events(conn) == [Connected()]
    return conn


def data_from_guest(conn: TcpConnection, offset: int, payload: bytes, flags: int = ACK, ack: int = ISN + 1) -> bytes:
    la, ra = conn.local[0], conn.remote[0]
    return guest_segment(
        seq=GISN + 1 + offset, ack=ack, flags=flags, payload=payload, src=(ra, PORT_B), dst=(la, PORT_A)
    )


def ack_from_guest(conn: TcpConnection, acked: int, window: int = 65535) -> bytes:
    la, ra = conn.local[0], conn.remote[0]
    return guest_segment(
        seq=GISN + 1, ack=ISN + 1 + acked, flags=ACK, window=window, src=(ra, PORT_B), dst=(la, PORT_A)
    )


class Recorder:
    """An ``emit`` that keeps what it was given: the header, a copy of the payload, and the view itself."""

    def __init__(self) -> None:
        self.headers: list[bytes] = []
        self.payloads: list[bytes] = []
        self.views: list[bytes | memoryview] = []

    def __call__(self, header: bytes, payload: bytes | memoryview) -> None:
        assert isinstance(header, bytes)
        self.headers.append(header)
        self.payloads.append(bytes(payload))
        self.views.append(payload)

    def segments(self) -> list[bytes]:
        return [h + p for h, p in zip(self.headers, self.payloads, strict=True)]


# -- impossible SYNs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("lport", "rport"), [(0, PORT_B), (PORT_A, 0), (0, 0)])
def test_port_zero_raises_sanity_error_not_value_error(lport: int, rport: int) -> None:
    syn = guest_segment(seq=GISN, flags=SYN, src=(IP_B, rport or 1), dst=(IP_A, lport or 1))
    with pytest.raises(SanityError) as info:
        TcpConnection.from_syn((IP_A, lport), (IP_B, rport), syn, TcpParams(), 0.0, ISN)
    assert isinstance(info.value, WireError) and "port" in str(info.value)
    with pytest.raises(SanityError):
        TcpConnection.connect((IP_A, lport), (IP_B, rport), TcpParams(), 0.0, ISN)


def test_a_syn_whose_header_says_port_0_or_another_port_raises_sanity_error() -> None:
    # The stack takes the ports from the header it dispatched on; a SYN carrying other ports (or 0) is
    # refused by the header parser itself.
    zero = bytearray(guest_segment(seq=GISN, flags=SYN))
    zero[0:2] = b"\0\0"
    zero[16:18] = b"\0\0"
    from vmlan.wire.checksum import internet_checksum

    zero[16:18] = internet_checksum(zero, pseudo_sum(IP_B, IP_A) + len(zero)).to_bytes(2, "big")
    with pytest.raises(SanityError):
        TcpConnection.from_syn((IP_A, PORT_A), (IP_B, PORT_B), bytes(zero), TcpParams(), 0.0, ISN)
    with pytest.raises(WireError):
        TcpConnection.from_syn((IP_A, PORT_A), (IP_B, PORT_B), b"\x00" * 7, TcpParams(), 0.0, ISN)


def test_addresses_must_be_two_of_one_family() -> None:
    with pytest.raises(SanityError):
        TcpConnection.connect((IP_A, PORT_A), (IP6_B, PORT_B), TcpParams(), 0.0, ISN)
    with pytest.raises(SanityError):
        TcpConnection.connect((b"\x01\x02", PORT_A), (b"\x03\x04", PORT_B), TcpParams(), 0.0, ISN)


# -- IPv6 -----------------------------------------------------------------------------------------------------


def scapy6_checksum_ok(segment: bytes, src: bytes, dst: bytes) -> bool:
    """scapy recomputes the TCP checksum over the IPv6 pseudo-header; compare with ours."""
    src_s, dst_s = socket.inet_ntop(socket.AF_INET6, src), socket.inet_ntop(socket.AF_INET6, dst)
    pkt = IPv6(src=src_s, dst=dst_s) / TCP(segment)
    theirs = pkt[TCP].chksum
    del pkt[TCP].chksum
    return bool(IPv6(bytes(pkt))[TCP].chksum == theirs)


def test_ipv6_handshake_data_and_checksums_agree_with_scapy() -> None:
    # The guest's SYN is built by scapy (its checksum is scapy's), not by our helper.
    g, h = socket.inet_ntop(socket.AF_INET6, IP6_B), socket.inet_ntop(socket.AF_INET6, IP6_A)
    syn = bytes(
        IPv6(src=g, dst=h)
        / TCP(sport=PORT_B, dport=PORT_A, seq=GISN, flags="S", options=[("MSS", 1440), ("WScale", 7)])
    )[40:]
    conn = TcpConnection.from_syn((IP6_A, PORT_A), (IP6_B, PORT_B), syn, TcpParams(mss=65495), 0.0, ISN)
    conn.accept(0.0)
    (synack,) = conn.segments_to_send(0.0)
    assert scapy6_checksum_ok(synack, IP6_A, IP6_B)
    tcp = TCP(synack)
    assert str(tcp.flags) == "SA" and tcp.ack == GISN + 1
    assert tcp.options[0] == ("MSS", MAX_MSS_V6)  # 65495 clamped to what IPv6 can carry
    # The same bytes are not a valid segment for IPv4 addresses: the pseudo-header is really v6.
    assert not checksum_ok(synack, IP_A, IP_B)
    ack = bytes(IPv6(src=g, dst=h) / TCP(sport=PORT_B, dport=PORT_A, seq=GISN + 1, ack=ISN + 1, flags="A", window=512))
    conn.receive_segment(ack[40:], 0.1)
    assert conn.state == ESTABLISHED
    data = bytes(
        IPv6(src=g, dst=h) / TCP(sport=PORT_B, dport=PORT_A, seq=GISN + 1, ack=ISN + 1, flags="PA") / (b"v6!" * 500)
    )
    conn.receive_segment(data[40:], 0.2)
    assert conn.take_data() == bytearray(b"v6!" * 500)
    conn.send(bytes(range(256)) * 20, 0.2)
    out = conn.segments_to_send(0.2)
    assert out and all(scapy6_checksum_ok(s, IP6_A, IP6_B) for s in out)
    assert [len(TCP(s).payload) for s in out] == [1440, 1440, 1440, 800]
    # A corrupted segment is counted, not taken.
    bad = bytearray(data[40:])
    bad[-1] ^= 1
    conn.receive_segment(bytes(bad), 0.3)
    assert conn.counters.bad_checksum == 1 and conn.take_data() is None


@pytest.mark.parametrize("loss", [0.0, 0.05])
def test_ipv6_transfer_both_ways(loss: float) -> None:
    data_a, data_b = random.Random(1).randbytes(400_000), random.Random(2).randbytes(300_000)
    link = LinkConfig(loss=loss, dup=0.02 if loss else 0.0, reorder=0.05 if loss else 0.0, seed=3)
    net = Net(
        ab=link, ba=LinkConfig(loss=loss, seed=4), app_a=App(data=data_a), app_b=App(data=data_b), addrs=(IP6_A, IP6_B)
    )
    checked = []

    def tap(segment: bytes, now: float) -> None:
        checked.append(checksum_ok(segment, IP6_A, IP6_B))

    net.ab.taps.append(tap)
    net.run(net.both_closed, max_time=50_000)
    assert bytes(net.app_b.received) == data_a and bytes(net.app_a.received) == data_b
    assert checked and all(checked)
    assert net.app_a.close_reason() == "closed" and net.app_b.close_reason() == "closed"


def test_explicit_pseudo_header_sums_are_the_ones_used() -> None:
    syn = guest_segment(seq=GISN, flags=SYN, options=TcpOptions(mss=1460))
    right = TcpConnection.from_syn(
        (IP_A, PORT_A),
        (IP_B, PORT_B),
        syn,
        TcpParams(),
        0.0,
        ISN,
        psum_in=pseudo_sum(IP_B, IP_A),
        psum_out=pseudo_sum(IP_A, IP_B),
    )
    right.accept(0.0)
    (synack,) = right.segments_to_send(0.0)
    assert checksum_ok(synack, IP_A, IP_B)
    # A caller whose addresses are translated (NAT) passes the sums of the addresses on the wire.
    other = bytes((192, 168, 1, 9))
    nat = TcpConnection.connect((IP_A, PORT_A), (IP_B, PORT_B), TcpParams(), 0.0, ISN, psum_out=pseudo_sum(other, IP_B))
    (syn_out,) = nat.segments_to_send(0.0)
    assert checksum_ok(syn_out, other, IP_B) and not checksum_ok(syn_out, IP_A, IP_B)
    with pytest.raises(WireError):  # the guest's SYN does not verify against a wrong incoming sum
        TcpConnection.from_syn(
            (IP_A, PORT_A), (IP_B, PORT_B), syn, TcpParams(), 0.0, ISN, psum_in=pseudo_sum(other, IP_A)
        )
    assert (
        TcpConnection.from_syn(  # ... unless the caller says it verified it already
            (IP_A, PORT_A), (IP_B, PORT_B), syn, TcpParams(), 0.0, ISN, psum_in=pseudo_sum(other, IP_A), verified=True
        ).state
        == "LISTEN"
    )


# -- transmit ---------------------------------------------------------------------------------------------------


def test_transmit_emits_what_segments_to_send_returns_with_views_released_after_each_call() -> None:
    old, new = passive(), passive()
    payload = random.Random(5).randbytes(30_000)
    for conn in (old, new):
        conn.send(payload, 1.0)
        conn.receive_segment(data_from_guest(conn, 0, b"req"), 1.0)
    expected = old.segments_to_send(1.0)
    rec = Recorder()
    assert new.transmit(1.0, rec) == len(rec.headers) == len(expected)
    assert rec.segments() == expected
    assert all(checksum_ok(s, IP_A, IP_B) for s in expected)
    views = [v for v in rec.views if isinstance(v, memoryview)]
    assert len(views) == len(expected)  # every data payload was a view into the send buffer ...
    for view in views:
        with pytest.raises(ValueError):  # ... released when emit returned
            view.tobytes()
    # No export survives: the acknowledged prefix can be cut and the buffer grown.
    new.receive_segment(ack_from_guest(new, 14_600), 1.1)  # the initial window (10 segments)
    assert new.bytes_acked == 14_600
    assert new.send(b"more", 1.1) == 4 and new.bytes_unacked == 30_000 - 14_600 + 4


def test_transmit_data_headers_carry_ack_and_window_and_rst_comes_first() -> None:
    conn = passive()
    conn.send(b"x" * 3000, 1.0)
    rec = Recorder()
    conn.transmit(1.0, rec)
    hdrs = [parse(s)[0] for s in rec.segments()]
    assert [h.flags for h in hdrs] == [ACK, ACK, ACK | PSH]  # 1460 + 1460 + 80: PSH on the last
    assert all(h.ack == GISN + 1 and h.window == (1 << 20) >> 7 for h in hdrs)
    conn.abort(1.1)
    rec = Recorder()
    assert conn.transmit(1.1, rec) == 1 and rec.payloads == [b""]
    assert parse(rec.headers[0])[0].flags & 0x04


def test_an_emit_that_raises_leaves_the_connection_consistent() -> None:
    conn = passive()
    data = random.Random(6).randbytes(10 * 1460)
    conn.send(data, 1.0)
    good: list[bytes] = []

    def flaky(header: bytes, payload: bytes | memoryview) -> None:
        if len(good) == 3:
            raise OSError("ENOBUFS")
        good.append(header + payload)

    with pytest.raises(OSError):
        conn.transmit(1.0, flaky)
    assert conn.send(b"!", 1.0) == 1  # no view on the send buffer was left behind
    rest = conn.segments_to_send(1.0)
    got = b"".join(parse(s)[1] for s in good + rest)
    assert got == data + b"!"
    conn.receive_segment(ack_from_guest(conn, len(data) + 1), 1.1)
    assert conn.bytes_acked == len(data) + 1 and conn.bytes_unacked == 0


# -- fill_from --------------------------------------------------------------------------------------------------


def test_fill_from_gives_the_reader_exactly_the_room_and_keeps_what_it_wrote() -> None:
    conn = passive(TcpParams(snd_buffer=5000))
    conn.send(b"a" * 1000, 1.0)
    seen: list[int] = []

    def reader(view: memoryview) -> int:
        assert not view.readonly
        seen.append(len(view))
        view[:700] = b"b" * 700
        return 700

    assert conn.fill_from(reader, 10_000, 1.0) == 700
    assert seen == [4000]  # min(limit, send_space())
    assert conn.bytes_unacked == 1700 and conn.send_space() == 3300
    sizes: list[int] = []

    def small(view: memoryview) -> int:
        sizes.append(len(view))
        view[:] = b"c" * len(view)
        return len(view)

    assert conn.fill_from(small, 100, 1.0) == 100 and sizes == [100]  # the limit, when below the room
    out = conn.segments_to_send(1.0)
    assert b"".join(parse(s)[1] for s in out) == b"a" * 1000 + b"b" * 700 + b"c" * 100


def test_fill_from_reader_returning_zero_or_too_much_or_raising() -> None:
    conn = passive()
    assert conn.fill_from(lambda view: 0, 5000, 1.0) == 0  # EOF: nothing kept
    assert conn.bytes_unacked == 0
    kept: list[memoryview] = []

    def failing(view: memoryview) -> int:
        kept.append(view)
        raise BlockingIOError

    with pytest.raises(BlockingIOError):
        conn.fill_from(failing, 5000, 1.0)
    assert conn.bytes_unacked == 0
    with pytest.raises(ValueError):
        kept[0].tobytes()  # released
    with pytest.raises(ValueError):
        conn.fill_from(lambda view: len(view) + 1, 5000, 1.0)
    assert conn.bytes_unacked == 0
    conn.send(b"still works", 1.0)
    assert b"".join(parse(s)[1] for s in conn.segments_to_send(1.0)) == b"still works"


def test_fill_from_without_room_does_not_call_the_reader_and_after_shutdown_raises() -> None:
    conn = passive(TcpParams(snd_buffer=10))
    conn.send(b"x" * 10, 1.0)

    def reader(view: memoryview) -> int:
        raise AssertionError("called without room")

    assert conn.fill_from(reader, 100, 1.0) == 0
    conn.shutdown(1.0)
    with pytest.raises(TcpStateError):
        conn.fill_from(reader, 100, 1.0)


def test_fill_from_a_socket_recv_into() -> None:
    conn = passive()
    left, right = socket.socketpair()
    with left, right:
        right.setblocking(False)
        message = random.Random(7).randbytes(50_000)
        left.sendall(message)
        got = 0
        while got < len(message):
            got += conn.fill_from(right.recv_into, 1 << 16, 1.0)
        with pytest.raises(BlockingIOError):  # nothing more to read: the error propagates, nothing kept
            conn.fill_from(right.recv_into, 1 << 16, 1.0)
        left.shutdown(socket.SHUT_WR)
        assert conn.fill_from(right.recv_into, 1 << 16, 1.0) == 0  # EOF
    assert conn.bytes_unacked == len(message)
    sent = b""
    acked = 0
    for _ in range(20):
        sent += b"".join(parse(s)[1] for s in conn.segments_to_send(1.0))
        acked = len(sent)
        conn.receive_segment(ack_from_guest(conn, acked), 1.0)
    assert sent == message


# -- take_data --------------------------------------------------------------------------------------------------


def test_take_data_hands_over_the_buffer_and_next_event_then_reports_no_data() -> None:
    conn = passive()
    assert conn.take_data() is None
    conn.receive_segment(data_from_guest(conn, 0, b"hello "), 1.0)
    conn.receive_segment(data_from_guest(conn, 6, b"world"), 1.0)
    first = conn.take_data()
    assert isinstance(first, bytearray) and first == b"hello world"
    assert conn.unconsumed == 11  # handed over, but still in the window until consumed
    conn.receive_segment(data_from_guest(conn, 16, b"!", ACK | FIN), 1.1)  # out of order, with FIN
    conn.receive_segment(data_from_guest(conn, 11, b"again"), 1.1)
    assert first == b"hello world"  # the handed-over buffer is the caller's: later data goes elsewhere
    assert conn.take_data() == bytearray(b"again!")
    assert events(conn) == [EndOfStream()]  # no DataReceived: those bytes were taken
    conn.consume(17)
    assert conn.unconsumed == 0


def test_without_take_data_next_event_orders_data_before_eof_and_closed() -> None:
    conn = passive()
    conn.receive_segment(data_from_guest(conn, 0, b"abc", ACK | FIN), 1.0)
    conn.abort(1.0)
    assert events(conn) == [DataReceived(b"abc"), EndOfStream(), Closed("aborted")]


# -- TSO and GRO ------------------------------------------------------------------------------------------------


def test_tso_segments_are_whole_mss_multiples_within_window_and_cwnd() -> None:
    conn = passive(options=TcpOptions(mss=1460, wscale=7))
    assert conn.send_mss == 1460
    conn.set_tso(65535)
    conn.send(bytes(300_000), 0.0)
    first = conn.segments_to_send(0.0)
    assert [len(parse(s)[1]) for s in first] == [14600]  # the initial window, 10 MSS, in one segment
    assert all(checksum_ok(s, IP_A, IP_B) for s in first)
    conn.receive_segment(ack_from_guest(conn, 14600, window=1000), 0.01)  # 1000 << 7 = 128000 bytes
    sizes = [len(parse(s)[1]) for s in conn.segments_to_send(0.01)]
    assert sizes == [29200]  # cwnd 29200 (slow start), below the window
    conn.receive_segment(ack_from_guest(conn, 14600 + 29200, window=1000), 0.02)
    sizes = [len(parse(s)[1]) for s in conn.segments_to_send(0.02)]
    assert sizes == [58400]  # cwnd 58400
    conn.receive_segment(ack_from_guest(conn, 14600 + 29200 + 58400, window=1000), 0.03)
    sizes = [len(parse(s)[1]) for s in conn.segments_to_send(0.03)]
    assert sizes == [64240, 116800 - 64240]  # cwnd 116800 < window: 44 MSS (65535 rounded down), the rest
    acked = 14600 + 29200 + 58400 + 116800
    conn.receive_segment(ack_from_guest(conn, acked, window=400), 0.04)  # window 51200, cwnd 233600
    sizes = [len(parse(s)[1]) for s in conn.segments_to_send(0.04)]
    assert sizes == [51100]  # window-limited: whole MSS pieces (35), the 100-byte rest waits (SWS)
    conn.set_tso(0)
    conn.receive_segment(ack_from_guest(conn, acked + 51100, window=1000), 0.05)
    sizes = [len(parse(s)[1]) for s in conn.segments_to_send(0.05)]
    assert sizes == [1460] * 20 + [700]  # TSO off again: MSS segments up to the end of the data
    with pytest.raises(ValueError):
        conn.set_tso(70000)


def test_tso_below_two_segments_is_off_and_follows_a_small_peer_mss() -> None:
    conn = passive(options=TcpOptions(wscale=7))  # no MSS option: 536
    assert conn.send_mss == 536
    conn.set_tso(1000)
    conn.send(bytes(5000), 0.0)
    assert {len(parse(s)[1]) for s in conn.segments_to_send(0.0)} <= {536, 5000 - 9 * 536}
    other = passive(options=TcpOptions(wscale=7))
    other.set_tso(4000)
    other.send(bytes(5000), 0.0)
    assert [len(parse(s)[1]) for s in other.segments_to_send(0.0)] == [3752, 1248]  # 7 * 536, the rest (PSH)


def test_tso_sender_to_a_receiver_that_takes_gro_super_segments() -> None:
    data_a, data_b = random.Random(8).randbytes(2_000_000), random.Random(9).randbytes(100_000)
    net = Net(app_a=App(data=data_a), app_b=App(data=data_b), ab=LinkConfig(loss=0.02, seed=5), ba=LinkConfig(seed=6))
    net.run(lambda: net.b is not None and net.a.state == ESTABLISHED)
    net.a.set_tso(65535)
    biggest = [0]
    net.ab.taps.append(lambda s, now: biggest.__setitem__(0, max(biggest[0], len(s) - 20)))
    net.run(net.both_closed, max_time=50_000)
    assert bytes(net.app_b.received) == data_a and bytes(net.app_a.received) == data_b
    assert biggest[0] > 1460 and biggest[0] % 1460 == 0


def test_a_gro_segment_larger_than_the_mss_is_accepted_in_window_and_acked_at_once() -> None:
    conn = passive(TcpParams(mss=1460))
    big = random.Random(10).randbytes(40_000)
    conn.receive_segment(data_from_guest(conn, 0, big), 1.0)
    assert conn.take_data() == bytearray(big)
    (ack,) = conn.segments_to_send(1.0)  # no delayed ACK: it stands for many segments
    assert parse(ack)[0].ack == GISN + 1 + 40_000
    small = passive(TcpParams(rcv_buffer=30_000))
    small.receive_segment(data_from_guest(small, 0, big), 1.0)  # beyond the 30000-byte window: trimmed
    data = small.take_data()
    assert data is not None and len(data) <= 30_000 + (1 << 7) and bytes(data) == big[: len(data)]


def test_verified_skips_the_checksum() -> None:
    conn = passive()
    bad = bytearray(data_from_guest(conn, 0, b"payload"))
    bad[16] ^= 0xFF
    conn.receive_segment(bytes(bad), 1.0)
    assert conn.counters.bad_checksum == 1 and conn.take_data() is None
    conn.receive_segment(memoryview(bad), 1.0, verified=True)
    assert conn.take_data() == bytearray(b"payload")


# -- buffer limits ----------------------------------------------------------------------------------------------


def edge(segment: bytes, shift: int = 0) -> int:
    h, _ = parse(segment)
    return h.ack + (h.window << shift)


def test_lowering_the_receive_limit_shrinks_the_window_without_moving_the_edge_left() -> None:
    params = TcpParams(rcv_buffer=64_000, mss=1000, wscale=0)
    conn = passive(params, options=TcpOptions(mss=1000, wscale=0))
    acks: list[tuple[int, int]] = []  # (ack, window) of every segment we sent
    offset = 0

    def feed(n: int, now: float) -> None:
        nonlocal offset
        for _ in range(n):
            conn.receive_segment(data_from_guest(conn, offset, bytes(1000)), now)
            offset += 1000
            data = conn.take_data()
            if data is not None:
                conn.consume(len(data))  # the host reads at once
            for s in conn.segments_to_send(now):
                h, _ = parse(s)
                acks.append((h.ack, h.window))

    feed(10, 1.0)
    assert acks[-1][1] == 64_000
    before = len(acks)
    conn.set_buffer_limits(8000, 64_000)
    feed(80, 1.1)
    edges = [a + w for a, w in acks]
    assert edges == sorted(edges)  # the right edge never moves left (RFC 9293 3.8.6) ...
    windows = [w for _, w in acks[before:]]
    assert windows[0] > 8000 and windows[-1] <= 8000  # ... the window shrinks as the guest fills it
    assert max(windows[-10:]) <= 8000
    conn.set_buffer_limits(64_000, 64_000)  # raised again: a window update goes out at once
    (update,) = conn.segments_to_send(5.1)
    assert parse(update)[0].window == 64_000
    conn.set_buffer_limits(10**9, 10**9)  # clamped to the params
    assert conn.send_space() == params.snd_buffer


def test_lowering_the_receive_limit_while_data_is_unconsumed_keeps_the_offered_edge() -> None:
    params = TcpParams(rcv_buffer=20_000, mss=1000, wscale=0)
    conn = passive(params, options=TcpOptions(mss=1000, wscale=0))
    for k in range(6):
        conn.receive_segment(data_from_guest(conn, 1000 * k, bytes(1000)), 1.0)
    offered = max(edge(s) for s in conn.segments_to_send(1.0))
    conn.set_buffer_limits(4000, 20_000)  # 6000 bytes held, more than the new limit
    k = 6
    while True:  # the guest may still fill what we offered: the window shrinks to zero, the edge stays
        conn.receive_segment(data_from_guest(conn, 1000 * k, bytes(1000)), 1.1)
        k += 1
        out = conn.segments_to_send(1.1)
        if out:
            assert edge(out[-1]) == offered
            if parse(out[-1])[0].window == 0:
                break
        assert k < 30
    assert conn.unconsumed == offered - (GISN + 1)  # everything offered was accepted
    conn.take_data()
    conn.consume(conn.unconsumed)
    (update,) = conn.segments_to_send(2.0)  # reopened, within the new limit
    assert parse(update)[0].window == 4000


def test_send_limit_and_buffered() -> None:
    conn = passive(TcpParams(snd_buffer=100_000))
    conn.send(bytes(50_000), 1.0)
    conn.set_buffer_limits(1 << 20, 20_000)
    assert conn.send_space() == 0 and conn.send(b"x", 1.0) == 0
    assert conn.bytes_unacked == 50_000  # queued data stays
    conn.receive_segment(data_from_guest(conn, 0, b"in order"), 1.0)
    conn.receive_segment(data_from_guest(conn, 100, b"out of order"), 1.0)
    assert conn.buffered == 50_000 + 8 + 12
    sent = 0
    while sent < 40_000:  # the guest acknowledges what it gets, round after round
        sent += sum(len(parse(s)[1]) for s in conn.segments_to_send(1.0) if len(s) > 20)
        conn.receive_segment(ack_from_guest(conn, min(sent, 40_000)), 1.1)
    assert conn.bytes_unacked == 10_000 and conn.send_space() == 10_000
    assert conn.buffered == 10_000 + 8 + 12
    with pytest.raises(ValueError):
        conn.set_buffer_limits(-1, 0)


# -- the send buffer -------------------------------------------------------------------------------------------


def test_send_buffer_compacts_grows_and_lets_go_when_empty() -> None:
    """Partial ACKs and refills in every proportion: the stream stays intact through the buffer's
    compactions and growths, and an emptied big buffer is released (white-box: its capacity)."""
    rng = random.Random(11)
    conn = passive(TcpParams(snd_buffer=300_000), options=TcpOptions(mss=1460, wscale=14))
    conn.set_tso(65535)
    source = rng.randbytes(3_000_000)
    queued = sent = acked = 0
    received = bytearray()
    while acked < len(source):
        room = conn.send_space()
        if room and queued < len(source):
            n = min(room, rng.choice([1, 100, 5000, 70_000, room]), len(source) - queued)
            if rng.random() < 0.5:
                queued += conn.send(memoryview(source)[queued : queued + n], 1.0)
            else:

                def reader(view: memoryview, at: int = queued) -> int:
                    k = min(len(view), rng.choice([len(view), 1, 999]))
                    view[:k] = source[at : at + k]
                    return k

                queued += conn.fill_from(reader, n, 1.0)
        for s in conn.segments_to_send(1.0):
            _, payload = parse(s)
            received += payload
            sent += len(payload)
        acked = min(sent, acked + rng.choice([1, 1460, 30_000, 1 << 20]))
        conn.receive_segment(ack_from_guest(conn, acked, window=0xFFFF), 1.0)
        assert conn.bytes_unacked == queued - conn.bytes_acked
        assert len(conn._sndbuf) <= 2 * (300_000 + 70_000)  # bounded by about twice the limit
    assert bytes(received) == source and conn.bytes_acked == len(source)
    assert len(conn._sndbuf) <= 1 << 16  # emptied: a big allocation is not kept


@settings(max_examples=400, deadline=None)
@given(
    flags=st.sampled_from([SYN, SYN | ACK, SYN | FIN, SYN | 0x04, SYN | PSH, ACK, 0]),
    doff=st.integers(0, 15),
    options=st.binary(max_size=40),
    payload=st.binary(max_size=8),
    sport=st.sampled_from([PORT_B, 0, 1]),
    cut=st.integers(0, 80),
)
def test_from_syn_bytes_agree_with_the_parsed_header(flags: int, doff: int, options: bytes, payload: bytes,
                                                     sport: int, cut: int) -> None:
    # from_syn reads raw SYNs without TcpHeader.parse: it must accept, refuse and decode exactly as the
    # reference path (the header parsed first, then handed over) does.
    raw = struct.pack("!HHIIBBHHH", sport, PORT_A, GISN, 0, doff << 4, flags, 5000, 0, 0) + options + payload
    if cut < 20:
        raw = raw[:cut]  # short segments too

    def build(syn: TcpHeader | bytes) -> TcpConnection | type[WireError]:
        try:
            return TcpConnection.from_syn((IP_A, PORT_A), (IP_B, PORT_B), syn, TcpParams(), 0.0, ISN, verified=True)
        except WireError as exc:
            return type(exc)

    fast = build(raw)
    try:
        header, start, end = TcpHeader.parse(raw)
    except WireError as exc:
        assert fast is type(exc)
        return
    ref = build(header)
    if not isinstance(ref, TcpConnection):
        assert fast is ref
        return
    assert isinstance(fast, TcpConnection)
    assert (fast._irs, fast._smss, fast._snd_wscale, fast._wscale_ok, fast._snd_wnd, fast._syn_data) == (
        ref._irs, ref._smss, ref._snd_wscale, ref._wscale_ok, ref._snd_wnd, end - start)
