"""The transition table (vmlan.engines.tcp.state) and the rule that nothing else changes a connection's state.

The property test drives random inputs -- segments with every flag combination, host calls, timer
firings -- into connections in every state, and checks after each one that every state change went
through the table (the connection's ``on_transition`` hook reports each, and the chain must explain
the change), that nothing raised except the misuse the table itself names, and that once the inputs
stop every connection reaches CLOSED in bounded (fake) time.
"""

from __future__ import annotations

import ast
import pathlib
import struct
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import vmlan.engines.tcp as tcp_pkg
from vmlan.engines.tcp import CLOSED, Closed, Input, TcpConnection, TcpParams, TcpStateError
from vmlan.engines.tcp.state import HOST_CALLS, SEGMENTS, STATES, TABLE, TIMERS, Do, lookup
from vmlan.wire.checksum import internet_checksum
from vmlan.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpOptions

from .tcpnet import IP_A, IP_B, PORT_A, PORT_B, checksum_ok, guest_segment, pseudo_sum

GISN = 0x7FFFFFF0
ISN = 0xFFFFFFF0
PARAMS = TcpParams(
    rcv_buffer=8000,
    snd_buffer=20_000,
    max_retransmits=4,
    syn_retries=2,
    rto_max=10.0,
    keepalive_idle=30.0,
    keepalive_interval=5.0,
    keepalive_probes=2,
    fin_wait_2_timeout=60.0,
)
LOCAL, REMOTE = (IP_A, PORT_A), (IP_B, PORT_B)


# -- static: one writer of the state -------------------------------------------------------------------------


def test_the_state_is_assigned_only_by_fire_and_the_constructor() -> None:
    root = pathlib.Path(tcp_pkg.__file__).parent
    writers = []
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                targets: list[ast.expr] = []
                if isinstance(node, ast.Assign):
                    targets = node.targets
                elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                    targets = [node.target]
                for target in targets:
                    for t in ast.walk(target):
                        if isinstance(t, ast.Attribute) and t.attr in ("_state", "state"):
                            writers.append((path.name, func.name))
    assert sorted(set(writers)) == [("connection.py", "__init__"), ("connection.py", "_fire")]


def test_state_is_read_only_from_outside() -> None:
    conn = TcpConnection.connect(LOCAL, REMOTE, PARAMS, 0.0, ISN)
    try:
        conn.state = CLOSED  # type: ignore[misc]
    except AttributeError:
        pass
    else:
        raise AssertionError("state must not be assignable")
    assert conn.state == "SYN_SENT"


# -- the table ---------------------------------------------------------------------------------------------------


def test_every_row_is_well_formed() -> None:
    assert set(SEGMENTS) | set(HOST_CALLS) | set(TIMERS) == set(Input)
    for (state, inp), t in TABLE.items():
        assert state in STATES and t.next in STATES and isinstance(inp, Input)
        if t.next == CLOSED and state != CLOSED:
            assert t.reason, (state, inp)
        else:
            assert t.reason is None, (state, inp)
        assert Do.MISUSE not in t.actions or t.actions == (Do.MISUSE,)
        assert (Do.DROP in t.actions) <= (inp in SEGMENTS)
    # Every host call is listed for every state: what a caller may do is never left to a default.
    for state in STATES:
        for inp in HOST_CALLS:
            assert (state, inp) in TABLE, (state, inp)


def test_unlisted_pairs_take_the_defined_default_paths() -> None:
    t, listed = lookup("LISTEN", Input.FIN)
    assert not listed and t.next == "LISTEN" and t.actions == (Do.DROP,)
    t, listed = lookup("CLOSED", Input.TIME_WAIT_END)
    assert not listed and t.next == "CLOSED" and t.actions == ()
    t, listed = lookup("ESTABLISHED", Input.FIN)
    assert listed and t.next == "CLOSE_WAIT" and t.actions == (Do.EOF,)


def test_rfc_9293_figure_5_rows() -> None:
    def nxt(state: str, inp: Input) -> str:
        return lookup(state, inp)[0].next

    assert nxt("LISTEN", Input.ACCEPT) == "SYN_RECEIVED"
    assert nxt("SYN_SENT", Input.SYN_ACK) == "ESTABLISHED"
    assert nxt("SYN_SENT", Input.SYN) == "SYN_RECEIVED"  # simultaneous open
    assert nxt("SYN_RECEIVED", Input.ACK_OF_SYN) == "ESTABLISHED"
    assert nxt("ESTABLISHED", Input.SHUTDOWN) == "FIN_WAIT_1"
    assert nxt("FIN_WAIT_1", Input.ACK_OF_FIN) == "FIN_WAIT_2"
    assert nxt("FIN_WAIT_1", Input.FIN) == "CLOSING"
    assert nxt("FIN_WAIT_2", Input.FIN) == "TIME_WAIT"
    assert nxt("CLOSING", Input.ACK_OF_FIN) == "TIME_WAIT"
    assert nxt("ESTABLISHED", Input.FIN) == "CLOSE_WAIT"
    assert nxt("CLOSE_WAIT", Input.SHUTDOWN) == "LAST_ACK"
    assert nxt("LAST_ACK", Input.ACK_OF_FIN) == "CLOSED"
    assert nxt("TIME_WAIT", Input.TIME_WAIT_END) == "CLOSED"


def test_an_unlisted_pair_is_counted() -> None:
    conn = TcpConnection.connect(LOCAL, REMOTE, PARAMS, 0.0, ISN)
    conn._fire(Input.FIN, 0.0)  # no FIN can be classified in SYN_SENT; the default path drops it
    assert conn.state == "SYN_SENT" and conn.counters.unlisted == 1 and conn.counters.dropped == 1


# -- connections in every state ----------------------------------------------------------------------------------


def seg(**kw: object) -> bytes:
    return guest_segment(**kw)  # type: ignore[arg-type]


def connection_in(state: str) -> TcpConnection:
    """A connection driven by hand into ``state`` (what it wanted to send is discarded)."""
    if state == "SYN_SENT":
        conn = TcpConnection.connect(LOCAL, REMOTE, PARAMS, 0.0, ISN)
        conn.segments_to_send(0.0)
        return conn
    syn = seg(seq=GISN, flags=SYN, options=TcpOptions(mss=1460, wscale=7))
    conn = TcpConnection.from_syn(LOCAL, REMOTE, syn, PARAMS, 0.0, ISN)
    if state == "LISTEN":
        return conn
    conn.accept(0.0)
    conn.segments_to_send(0.0)
    if state == "SYN_RECEIVED":
        return conn
    conn.receive_segment(seg(seq=GISN + 1, ack=ISN + 1, flags=ACK), 0.0)
    steps: dict[str, list[tuple[str, object]]] = {
        "ESTABLISHED": [("send", 3000)],
        "FIN_WAIT_1": [("send", 3000), ("shutdown", None)],
        "FIN_WAIT_2": [("shutdown", None), ("seg", seg(seq=GISN + 1, ack=ISN + 2, flags=ACK))],
        "CLOSE_WAIT": [("seg", seg(seq=GISN + 1, ack=ISN + 1, flags=ACK | FIN))],
        "CLOSING": [("shutdown", None), ("seg", seg(seq=GISN + 1, ack=ISN + 1, flags=ACK | FIN))],
        "LAST_ACK": [("seg", seg(seq=GISN + 1, ack=ISN + 1, flags=ACK | FIN)), ("shutdown", None)],
        "TIME_WAIT": [("shutdown", None), ("seg", seg(seq=GISN + 1, ack=ISN + 2, flags=ACK | FIN))],
        "CLOSED": [("abort", None)],
    }
    for kind, arg in steps[state]:
        if kind == "send":
            assert isinstance(arg, int)
            conn.send(bytes(arg), 0.0)
        elif kind == "shutdown":
            conn.shutdown(0.0)
        elif kind == "abort":
            conn.abort(0.0)
        else:
            assert isinstance(arg, bytes)
            conn.receive_segment(arg, 0.0)
        conn.segments_to_send(0.0)
    assert conn.state == state, (conn.state, state)
    while conn.next_event() is not None:
        pass
    return conn


@st.composite
def segments(draw: st.DrawFn) -> tuple[str, bytes]:
    """A segment with a correct checksum and anything else: every flag combination, sequence and
    acknowledgment numbers near the live ones or anywhere, options well-formed or not, payload or not."""
    near = st.integers(-70_000, 70_000)
    seq = (GISN + 1 + draw(st.one_of(near, st.sampled_from([-1, 0, 1]), st.integers(0, 2**32 - 1)))) & 0xFFFFFFFF
    ack = (
        ISN + 1 + draw(st.one_of(near, st.sampled_from([0, 1, 2, 3000, 3001]), st.integers(0, 2**32 - 1)))
    ) & 0xFFFFFFFF
    usual = st.sampled_from([ACK, ACK | FIN, SYN, SYN | ACK, RST, RST | ACK, ACK | PSH, FIN, 0])
    flags = draw(st.one_of(usual, st.integers(0, 255)))
    if draw(st.booleans()):
        options = TcpOptions(mss=draw(st.integers(1, 0xFFFF)), wscale=draw(st.integers(0, 20))).to_bytes()
    else:
        options = draw(st.binary(max_size=40))
        options += bytes(-len(options) % 4)
    doff = draw(st.one_of(st.just((20 + len(options)) // 4), st.integers(0, 15)))
    payload = draw(st.one_of(st.just(b""), st.binary(min_size=1, max_size=2000)))
    window = draw(st.integers(0, 0xFFFF))
    raw = bytearray(struct.pack("!HHIIBBHHH", PORT_B, PORT_A, seq, ack, doff << 4, flags, window, 0, 0))
    raw += options + payload
    raw[16:18] = internet_checksum(raw, pseudo_sum(IP_B, IP_A) + len(raw)).to_bytes(2, "big")
    return ("segment", bytes(raw))


host_calls = st.one_of(
    st.tuples(st.sampled_from(["accept", "refuse", "shutdown", "abort", "take"]), st.just(0)),
    st.tuples(st.sampled_from(["send", "fill", "consume", "tso"]), st.integers(0, 30_000)),
    st.tuples(st.just("limits"), st.integers(0, 10_000)),
)
timers = st.one_of(st.tuples(st.just("timer"), st.just(0.0)), st.tuples(st.just("wait"), st.floats(0.001, 100.0)))
inputs = st.lists(st.one_of(segments(), segments(), host_calls, timers), max_size=20)


class Checker:
    """Records the transitions the table performs and checks the outputs of a connection."""

    def __init__(self, conn: TcpConnection) -> None:
        self.conn = conn
        self.log: list[tuple[str, Input, str]] = []
        self.closed = False
        conn.on_transition = self.record

    def record(self, old: str, inp: Input, new: str) -> None:
        t, _ = lookup(old, inp)
        assert t.next == new, (old, inp, new)
        self.log.append((old, inp, new))

    def apply(self, before: str, action: object) -> None:
        """Check that the state change since ``before`` is exactly the chain of table transitions."""
        state = self.conn.state
        if not self.log:
            assert state == before, f"{action}: {before} -> {state} without a table transition"
        else:
            assert self.log[0][0] == before, (action, self.log)
            for (_, _, new), (old, _, _) in zip(self.log, self.log[1:], strict=False):
                assert new == old, (action, self.log)
            assert self.log[-1][2] == state, (action, self.log)
        self.log.clear()

    def drive(self, now: float) -> None:
        """What a caller does after any input: transmit, take the data, drain the events."""
        out: list[bytes] = []
        self.conn.transmit(now, lambda h, p: out.append(h + p))
        for s in out:
            assert checksum_ok(s, IP_A, IP_B) and s[:4] == struct.pack("!HH", PORT_A, PORT_B)
        self.conn.take_data()
        while (ev := self.conn.next_event()) is not None:
            assert not self.closed, "an event after Closed"
            self.closed = isinstance(ev, Closed)
        assert self.closed == (self.conn.state == CLOSED)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=st.sampled_from(STATES), script=inputs)
def test_random_inputs_in_every_state_change_state_only_through_the_table(state: str, script: list[Any]) -> None:
    conn = connection_in(state)
    check = Checker(conn)
    check.closed = state == CLOSED  # its Closed event was drained already
    now = 1.0
    shut = state in ("FIN_WAIT_1", "FIN_WAIT_2", "CLOSING", "LAST_ACK", "TIME_WAIT")  # made by shutdown()
    for kind, arg in script:
        before = conn.state
        if kind == "segment":
            conn.receive_segment(arg, now)
        elif kind in ("accept", "refuse", "shutdown", "abort"):
            t, _ = lookup(before, Input[kind.upper()])
            try:
                getattr(conn, kind)(now)
            except TcpStateError:
                assert t.actions == (Do.MISUSE,), (before, kind)
            else:
                assert t.actions != (Do.MISUSE,), (before, kind)
            if kind == "shutdown" and Do.QUEUE_FIN in t.actions:
                shut = True
        elif kind in ("send", "fill"):
            try:
                n = conn.send(bytes(arg), now) if kind == "send" else conn.fill_from(len, arg, now)
                assert 0 <= n <= arg
            except TcpStateError:
                assert shut, "send() raised without a shutdown() first"
            else:
                assert not shut
        elif kind == "consume":
            conn.consume(min(arg, conn.unconsumed))
        elif kind == "take":
            conn.take_data()
        elif kind == "tso":
            conn.set_tso(min(arg, 0xFFFF))
        elif kind == "limits":
            conn.set_buffer_limits(arg, arg * 2)
        elif kind == "timer":
            deadline = conn.get_timer()
            if deadline is not None:
                now = max(now, deadline)
            conn.handle_timer(now)
        else:
            now += arg
            conn.handle_timer(now)
        check.apply(before, (kind, arg))
        check.drive(now)
        now += 0.001
    event(f"final state before the silence: {conn.state}")
    # The inputs stop. A passive open still waiting for its host connect is the caller's to end (its
    # connect timeout); here the host side connected. Nothing else may linger.
    if conn.state == "LISTEN":
        before = conn.state
        conn.accept(now)
        check.apply(before, "accept")
        check.drive(now)
    start = now
    for _ in range(500):
        if conn.state == CLOSED:
            break
        deadline = conn.get_timer()
        assert deadline is not None, f"{conn!r} has no timer and is not closed"
        now = max(now, deadline)
        before = conn.state
        conn.handle_timer(now)
        check.apply(before, "timer")
        check.drive(now)
        later = conn.get_timer()
        assert later is None or later > now  # nothing still due: no busy loop for the caller
    assert conn.state == CLOSED and conn.get_timer() is None
    # Keepalive (30 s idle + 2 probes * 5 s), FIN_WAIT_2 (60 s), RTO backoff (capped at 10 s, 4 retries +
    # the SYN retries): minutes at most.
    assert now - start < 400, now - start
    assert check.closed
