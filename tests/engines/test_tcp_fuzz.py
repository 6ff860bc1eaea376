"""Property tests for vmlan.engines.tcp: random operations over a bad link, random and hostile input.

Invariants, whatever happens:
* nothing raises (receive_segment never does, whatever the bytes);
* each side's received stream is a prefix of what the other side's host wrote, and every byte the
  sender saw acknowledged has been delivered (no acknowledged byte is ever lost);
* once the link heals and both hosts close, both connections reach Closed in bounded time;
* everything a connection emits is a well-formed segment with a correct checksum.
"""

from __future__ import annotations

import random
import struct

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vmlan.engines.tcp import CLOSED, Closed, TcpConnection, TcpParams
from vmlan.wire.checksum import internet_checksum, pseudo_header_sum_v4
from vmlan.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpHeader, TcpOptions

from .tcpnet import IP_A, IP_B, PORT_A, PORT_B, App, LinkConfig, Net, events, guest_segment

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

params_st = st.builds(
    TcpParams,
    mss=st.sampled_from([64, 536, 1460, 9000, 65495]),
    wscale=st.integers(0, 14),
    rcv_buffer=st.sampled_from([1, 700, 4096, 4096, 20_000, 65535, 1 << 18, 1 << 20]),
    snd_buffer=st.sampled_from([1, 3000, 65536, 1 << 20]),
    max_retransmits=st.integers(1, 6),
    syn_retries=st.integers(0, 3),
    rto_max=st.sampled_from([1.0, 10.0]),
    rto_min=st.just(0.2),
    rto_initial=st.just(1.0),
    fin_wait_2_timeout=st.sampled_from([None, 30.0]),
    keepalive_idle=st.sampled_from([None, 50.0]),
    keepalive_interval=st.just(5.0),
    keepalive_probes=st.integers(1, 3),
)

side = st.sampled_from(["a", "b"])
send = st.tuples(st.just("send"), side, st.integers(1, 120_000))
run = st.tuples(st.just("run"), st.one_of(st.floats(0.0005, 0.05), st.floats(0.05, 40.0)))
loss = st.tuples(st.just("loss"), st.sampled_from(["ab", "ba"]), st.sampled_from([0.0, 0.05, 0.2, 0.5, 1.0]))
# Weighted towards moving data (one_of picks its branches uniformly): an abort ends the interesting part.
operation = st.one_of(
    send,
    send,
    send,
    run,
    run,
    run,
    loss,
    loss,
    st.tuples(st.just("stall"), side),
    st.tuples(st.just("resume"), side),
    st.tuples(st.just("shutdown"), side),
    st.tuples(st.just("abort"), side),
)


def check_streams(net: Net) -> None:
    """Prefix and acknowledged-means-delivered, both directions."""
    for sender, app_tx, app_rx in ((net.a, net.app_a, net.app_b), (net.b, net.app_b, net.app_a)):
        received = bytes(app_rx.received)
        assert received == app_tx.data[: len(received)]
        if sender is not None:
            assert sender.bytes_acked <= len(received) <= app_tx.sent


def settled(net: Net) -> bool:
    if not net.app_a.closed:
        return False
    if net.b is None:
        return not net.ab.heap  # b never got a SYN and never will
    return net.app_b.closed and not net.ab.heap and not net.ba.heap


@FUZZ
@given(
    pa=params_st,
    pb=params_st,
    first=st.tuples(st.integers(0, 200_000), st.integers(0, 200_000), st.booleans(), st.booleans()),
    ops=st.lists(operation, max_size=16),
    seed=st.integers(0, 2**16),
    dup=st.sampled_from([0.0, 0.05]),
    reorder=st.sampled_from([0.0, 0.2]),
)
def test_random_operations_keep_streams_intact_and_always_end_closed(pa, pb, first, ops, seed, dup, reorder):
    rng = random.Random(seed)
    net = Net(
        pa,
        pb,
        LinkConfig(dup=dup, reorder=reorder, seed=seed),
        LinkConfig(dup=dup, reorder=reorder, seed=seed + 1),
        app_a=App(shutdown_when_sent=False, chunk=rng.choice([1, 1000, 1 << 16])),
        app_b=App(shutdown_when_sent=False),
        isn_a=rng.getrandbits(32),
        isn_b=rng.getrandbits(32),
        accept_delay=rng.choice([0.0, 0.3]),
    )
    apps = {"a": net.app_a, "b": net.app_b}
    net.app_a.consume, net.app_b.consume = not first[2], not first[3]  # readers that start stalled
    # Tiny windows cost a round trip per few bytes: keep those streams short so an example stays fast.
    cap = {
        "a": 300_000 if min(pa.snd_buffer, pb.rcv_buffer, pa.mss) >= 4096 else 20_000,
        "b": 300_000 if min(pb.snd_buffer, pa.rcv_buffer, pb.mss) >= 4096 else 20_000,
    }
    for op in [("send", "a", first[0]), ("send", "b", first[1]), *ops]:
        kind = op[0]
        if kind == "send":
            app = apps[op[1]]
            n = min(op[2], cap[op[1]] - len(app.data))
            if not app.shut and n > 0:
                app.data += rng.randbytes(n)
        elif kind == "stall":
            apps[op[1]].consume = False
        elif kind == "resume":
            apps[op[1]].consume = True
        elif kind == "shutdown":
            apps[op[1]].shutdown_when_sent = True
        elif kind == "abort":
            conn = net.a if op[1] == "a" else net.b
            if conn is not None:
                conn.abort(net.now)
        elif kind == "loss":
            pipe = net.ab if op[1] == "ab" else net.ba
            pipe.cfg.loss = op[2]
        else:
            net.run_for(op[1])
        net.flush()
        check_streams(net)
    # Heal the link, let the readers read and the writers finish: everything must end.
    net.ab.cfg.loss = net.ba.cfg.loss = 0.0
    for app in apps.values():
        app.consume = True
        app.shutdown_when_sent = True
    net.flush()
    net.run(lambda: settled(net), max_time=100_000, max_steps=150_000)
    check_streams(net)
    assert net.a.state == CLOSED and net.a.get_timer() is None
    if net.b is not None:
        assert net.b.state == CLOSED and net.b.get_timer() is None
    # What the example exercised (shown by --hypothesis-show-statistics).
    event(f"close a={net.app_a.close_reason()} b={net.app_b.close_reason()}")
    moved = len(net.app_a.received) + len(net.app_b.received)
    event(
        f"bytes moved: {'0' if not moved else '<10k' if moved < 10_000 else '<100k' if moved < 100_000 else '>=100k'}"
    )
    for name, conn in (("a", net.a), ("b", net.b)):
        if conn is not None:
            c = conn.counters
            event(f"{name} retransmitted: {bool(c.retransmits)}; {name} probed a zero window: {bool(c.window_probes)}")
    # An orderly close on both sides means every byte written arrived.
    if net.app_a.close_reason() == "closed" and net.app_b.close_reason() == "closed":
        assert bytes(net.app_b.received) == net.app_a.data
        assert bytes(net.app_a.received) == net.app_b.data


# -- hostile input ----------------------------------------------------------------------------------------------

GISN = 0x7FFFFFF0
ISN = 0xFFFFFFF0


def _established() -> TcpConnection:
    syn = guest_segment(seq=GISN, flags=SYN, options=TcpOptions(mss=1460, wscale=7))
    conn = TcpConnection.from_syn((IP_A, PORT_A), (IP_B, PORT_B), syn, TcpParams(rcv_buffer=8000), 0.0, ISN)
    conn.accept(0.0)
    conn.segments_to_send(0.0)
    conn.receive_segment(guest_segment(seq=GISN + 1, ack=ISN + 1, flags=ACK), 0.0)
    conn.send(bytes(5000), 0.0)
    return conn


def connection_in(state: str) -> TcpConnection:
    """A connection driven by hand into ``state`` (segments it wanted to send are discarded)."""
    params = TcpParams(rcv_buffer=8000)
    if state == "LISTEN":
        syn = guest_segment(seq=GISN, flags=SYN, options=TcpOptions(mss=1460, wscale=7))
        return TcpConnection.from_syn((IP_A, PORT_A), (IP_B, PORT_B), syn, params, 0.0, ISN)
    if state == "SYN_SENT":
        conn = TcpConnection.connect((IP_A, PORT_A), (IP_B, PORT_B), params, 0.0, ISN)
        conn.segments_to_send(0.0)
        return conn
    if state == "SYN_RECEIVED":
        conn = connection_in("LISTEN")
        conn.accept(0.0)
        conn.segments_to_send(0.0)
        return conn
    conn = _established()
    if state == "FIN_WAIT_1":
        conn.shutdown(0.0)
    elif state == "CLOSE_WAIT":
        conn.receive_segment(guest_segment(seq=GISN + 1, ack=ISN + 1, flags=ACK | FIN), 0.0)
    elif state == "TIME_WAIT":
        conn = connection_in("LISTEN")
        conn.accept(0.0)
        conn.segments_to_send(0.0)
        conn.receive_segment(guest_segment(seq=GISN + 1, ack=ISN + 1, flags=ACK), 0.0)
        conn.shutdown(0.0)
        conn.segments_to_send(0.0)
        conn.receive_segment(guest_segment(seq=GISN + 1, ack=ISN + 2, flags=ACK | FIN), 0.0)
    elif state == "CLOSED":
        conn.abort(0.0)
    conn.segments_to_send(0.0)
    assert conn.state == state
    return conn


states = st.sampled_from(
    ["LISTEN", "SYN_SENT", "SYN_RECEIVED", "ESTABLISHED", "FIN_WAIT_1", "CLOSE_WAIT", "TIME_WAIT", "CLOSED"]
)


@st.composite
def hostile_segment(draw: st.DrawFn) -> bytes:
    """A segment with a *correct* checksum (so it gets past the first check) and arbitrary contents:
    sequence numbers near and far from the live ones, any flags, raw (possibly malformed) options."""
    near = st.integers(-70_000, 70_000)
    seq = (GISN + 1 + draw(st.one_of(near, st.integers(0, 2**32 - 1)))) & 0xFFFFFFFF
    ack = (ISN + 1 + draw(st.one_of(near, st.integers(0, 2**32 - 1)))) & 0xFFFFFFFF
    usual = st.sampled_from([ACK, ACK | FIN, SYN, SYN | ACK, RST, RST | ACK, ACK | PSH])
    flags = draw(st.one_of(usual, st.integers(0, 255)))
    options = draw(st.one_of(st.just(b""), st.binary(max_size=40)))
    options += bytes(-len(options) % 4)
    doff = draw(st.one_of(st.just((20 + len(options)) // 4), st.integers(0, 15)))
    payload = draw(st.one_of(st.just(b""), st.binary(max_size=3000)))
    window = draw(st.integers(0, 0xFFFF))
    sport = draw(st.one_of(st.just(PORT_B), st.integers(0, 0xFFFF)))
    raw = bytearray(struct.pack("!HHIIBBHHH", sport, PORT_A, seq, ack, doff << 4, flags, window, 0, 0))
    raw += options + payload
    csum = internet_checksum(raw, pseudo_header_sum_v4(IP_B, IP_A, 6, len(raw)))
    raw[16:18] = csum.to_bytes(2, "big")
    return bytes(raw)


def drive(conn: TcpConnection, now: float) -> float | None:
    """What a caller does after any input: send, drain events, read the timer. Checks the output."""
    for segment in conn.segments_to_send(now):
        header, _, _ = TcpHeader.parse(segment, src_addr=IP_A, dst_addr=IP_B)
        assert (header.sport, header.dport) == (PORT_A, PORT_B)
    evs = events(conn)
    assert all(not isinstance(e, Closed) for e in evs[:-1])  # Closed is last, if present
    assert conn.state != CLOSED or conn.next_event() is None
    return conn.get_timer()


def fire(conn: TcpConnection, now: float) -> float | None:
    """Run the timers due at ``now``; afterwards none may still be due (no busy loop for the caller)."""
    conn.handle_timer(now)
    deadline = drive(conn, now)
    assert deadline is None or deadline > now
    return deadline


@settings(max_examples=300, deadline=None)
@given(
    state=states,
    inputs=st.lists(st.tuples(st.one_of(st.binary(max_size=120), hostile_segment()), st.booleans()), max_size=12),
)
def test_hostile_segments_never_raise_in_any_state(state, inputs):
    conn = connection_in(state)
    now = 1.0
    for data, fire_timer in inputs:
        conn.receive_segment(data, now)
        deadline = drive(conn, now)
        if fire_timer and deadline is not None:
            now = max(now, deadline)
            fire(conn, now)
        now += 0.01
    if conn.state == "LISTEN":  # a connection nobody answers yet: the caller decides
        conn.refuse(now)
    # No connection lingers: after enough (fake) time everything is closed.
    conn.shutdown(now)
    drive(conn, now)
    for _ in range(200):
        if conn.state == CLOSED:
            break
        deadline = conn.get_timer()
        assert deadline is not None, f"{conn!r} has no timer and is not closed"
        now = max(now, deadline)
        fire(conn, now)
    assert conn.state == CLOSED


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200), view=st.booleans())
def test_random_bytes_never_raise_and_are_counted(data, view):
    conn = connection_in("ESTABLISHED")
    before = conn.counters.as_dict()
    conn.receive_segment(memoryview(data) if view else data, 1.0)
    drive(conn, 1.0)
    after = conn.counters.as_dict()
    assert after["segments_in"] == before["segments_in"] + 1
