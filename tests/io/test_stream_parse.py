"""The stream receive loop, driven on a real event loop over a socketpair: any frame sizes, any split of
the byte stream, any per-turn budget, and every frame comes out once, whole and in order."""

import asyncio
import socket
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmlan.io import stream
from vmlan.io.stream import NET_BUFSIZE, StreamPort
from vmlan.lan import Hub, Port

HDR = struct.Struct(">I")


class Sink(Port):
    __slots__ = ("got",)

    def __init__(self):
        super().__init__("sink")
        self.got = []

    def transmit(self, frame, src, offload):
        self.got.append(bytes(frame))
        return True


def deliver_all(frames, cuts, monkeypatch, budget):
    frames_per_turn, bytes_per_turn, check = budget
    monkeypatch.setattr(stream, "RX_FRAMES", frames_per_turn)
    monkeypatch.setattr(stream, "RX_BYTES", bytes_per_turn)
    monkeypatch.setattr(stream, "RX_CHECK", check)
    wire = b"".join(HDR.pack(len(f)) + f for f in frames)
    pieces, last = [], 0
    for cut in [*sorted(set(c % (len(wire) + 1) for c in cuts)), len(wire)]:
        pieces.append(wire[last:cut])
        last = cut
    loop = asyncio.new_event_loop()
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    hub, sink = Hub(0), Sink()
    closed = []
    port = StreamPort("p", ours, "test", loop, lambda p, why: closed.append(why))
    hub.attach(port)
    hub.attach(sink)
    port.start()
    expected = [f for f in frames if len(f) >= 14]
    runts = sum(1 for f in frames if 0 < len(f) < 14)

    async def feed():
        for piece in pieces:
            if piece:
                await loop.sock_sendall(theirs, piece)
            await asyncio.sleep(0)
        for _ in range(10000):
            if (len(sink.got) >= len(expected) and port.counters.rx_dropped >= runts) or closed:
                return
            await asyncio.sleep(0.001)

    try:
        loop.run_until_complete(feed())
    finally:
        port.close()
        theirs.close()
        loop.close()
    assert not closed or closed == ["closed"]
    assert sink.got == expected
    assert port.counters.rx_frames == len(expected)
    assert port.counters.rx_dropped == sum(1 for f in frames if 0 < len(f) < 14)
    return port


sizes = st.one_of(st.just(0), st.integers(1, 13), st.integers(14, 200), st.integers(1400, 1600),
                  st.integers(60000, NET_BUFSIZE))
budgets = st.sampled_from([(1024, 1024 * 1024, 32), (3, 100, 2), (1, 1, 1), (7, 5000, 3), (64, 70000, 64),
                           (3, 100000, 1)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(sizes, min_size=1, max_size=25),
    cuts=st.lists(st.integers(0, 10**7), max_size=12),
    budget=budgets,
)
def test_every_frame_once_whole_and_in_order(sizes, cuts, budget, monkeypatch):
    frames = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    deliver_all(frames, cuts, monkeypatch, budget)


def test_a_budget_that_runs_out_with_whole_frames_read_comes_back_for_them_by_itself(monkeypatch):
    """The kernel has nothing more to wake the reader: the port must schedule its own next turn."""
    resumed = []
    original = StreamPort._resume

    def counting(self):
        resumed.append(1)
        original(self)

    monkeypatch.setattr(StreamPort, "_resume", counting)
    frames = [bytes([i]) * 60 for i in range(200)]
    deliver_all(frames, [], monkeypatch, (3, 100000, 1))  # reads ~48 frames a turn, handles 3
    assert len(resumed) > 10
