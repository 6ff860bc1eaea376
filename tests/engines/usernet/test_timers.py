"""Every timeout of the stack lives in one flow table heap, bounded by live flows (flows.py)."""

from __future__ import annotations

import random

from tests.engines.usernet.stacknet import (
    GUEST,
    GUEST_MAC,
    HOST,
    HOST_MAC,
    Port,
    StackNet,
    only,
    tcp_fields,
    tcp_frame,
    tcp_payload,
)
from vmlan.engines.usernet import actions as A


class FastTcp:
    """A guest connection driven with struct-built frames (thousands of exchanges in a second)."""

    def __init__(self, net: StackNet, port: Port, sport: int) -> None:
        self.net = net
        self.port = port
        self.sport = sport
        self.seq = 1000 + sport
        self.ack = 0
        net.stack.receive_frame(self.frame("S", options=bytes((2, 4, 5, 0xB4, 1, 3, 3, 7))), self.port, None, net.now)
        self.seq += 1
        connect = only(net.actions())
        self.fid: int = connect[1]
        net.stack.tcp_connected(self.fid, net.now)
        (synack, _off), = net.stack.take_frames()
        self.ack = tcp_fields(synack)[2] + 1
        self.send("A")

    def frame(self, flags: str, payload: bytes = b"", options: bytes = b"") -> bytes:
        return tcp_frame(GUEST_MAC, HOST_MAC, GUEST, HOST, self.sport, 8080, self.seq, self.ack, flags, payload,
                         options=options)

    def send(self, flags: str, payload: bytes = b"") -> None:
        self.net.stack.receive_frame(self.frame(flags, payload), self.port, None, self.net.now)
        self.seq += len(payload)

    def absorb(self, frames: list[bytes]) -> int:
        got = 0
        for f in frames:
            _sport, dport, seq, _ack, _flags, _w = tcp_fields(f)
            if dport == self.sport:
                data = tcp_payload(f)
                if data and seq == self.ack:
                    self.ack += len(data)
                    got += len(data)
        return got


def test_ten_thousand_interactive_exchanges_keep_the_heap_bounded_by_live_flows() -> None:
    """The old stack pushed a keepalive entry (due two hours later) on every exchange and kept them all:
    10,000 request/response exchanges left ~10,000 entries. Here the heap stays within 2 * flows + 64."""
    net = StackNet()
    port = Port("a")
    conns = [FastTcp(net, port, 40000 + n) for n in range(4)]
    net.stack.take_frames()
    rng = random.Random(7)
    flows = net.stack.flows
    for _ in range(10_000):
        c = rng.choice(conns)
        c.send("PA", b"q" * 32)
        for action in net.stack.take_actions():
            if action[0] == A.TCP_WRITE:
                net.stack.tcp_written(action[1], len(action[2]), net.now)
        assert net.stack.tcp_send(c.fid, b"r" * 48, net.now) == 48
        assert c.absorb([f for f, _o in net.stack.take_frames()]) == 48
        c.send("A")
        net.advance(rng.choice((0.01, 0.5, 1.0, 3.0)))  # think time: the RTO timer lapses, keepalive re-arms
        assert net.stack.take_frames() == []
        assert flows.heap_size <= 2 * len(flows) + 64, flows.heap_size
    assert len(net.stack.tcp.by_key) == 4
    assert net.stack.faults.counts == {}


def test_the_heap_stays_small_during_a_long_transfer() -> None:
    """Each segment re-arms the connection's timers; the heap must not keep an entry per call (the old
    stack's did: two per segment, half of them due two hours later with keepalive)."""
    net = StackNet()
    c = FastTcp(net, Port("a"), 40000)
    for _ in range(5000):
        net.now += 0.0005
        c.send("A", b"x" * 1000)
        for action in net.stack.take_actions():
            if action[0] == A.TCP_WRITE:
                net.stack.tcp_written(action[1], len(action[2]), net.now)
        net.stack.take_frames()
        assert net.stack.flows.heap_size < 20
    net.advance(10)
    assert net.stack.flows.heap_size < 20


def test_an_idle_stack_has_no_timer_and_a_closed_flow_leaves_nothing_due() -> None:
    net = StackNet()
    assert net.stack.get_timer() is None
    c = FastTcp(net, Port("a"), 40000)
    assert net.stack.get_timer() is not None  # keepalive, and the memory check
    c.send("RA")
    assert net.stack.take_actions() == [(A.TCP_CLOSE, c.fid, True)]
    net.advance(1.0)  # the memory check sees no connection and stops
    assert net.stack.get_timer() is None
