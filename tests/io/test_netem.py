"""filter-netem on a real event loop: stream ports over socketpairs, a hub, and NetemFilter attached directly."""

import asyncio
import math
import socket
import struct

import pytest
import uvloop
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from vmlan.config.filters import NetemConfig
from vmlan.io.netem import NetemFilter
from vmlan.io.stream import StreamPort
from vmlan.lan import Hub, Port
from vmlan.wire.gso import software_offload
from vmlan.wire.vnet import FLAG_DATA_VALID, FLAG_NEEDS_CSUM, GSO_TCPV4, Offload

HDR = struct.Struct(">I")
EPS = 1e-9  # float rounding of loop times (uvloop's are whole milliseconds in a float)
BCAST = b"\xff" * 6
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def frame(n, size=64, src=1):
    body = BCAST + bytes([2, 0, 0, 0, 0, src]) + b"\x88\xb5" + HDR.pack(n)
    return body + b"\0" * (size - len(body))


def number(f):
    return HDR.unpack_from(f, 14)[0]


class Peer:
    """The far end of one stream port: the test writes frames into it and reads what the LAN sends."""

    def __init__(self, sock, loop):
        self.sock = sock
        self.loop = loop
        self.buf = bytearray()
        self.got = []  # (loop time, frame)
        self.event = asyncio.Event()
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self):
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        if not data:
            self.loop.remove_reader(self.sock.fileno())
            return
        self.buf += data
        while len(self.buf) >= 4 and len(self.buf) >= 4 + HDR.unpack_from(self.buf)[0]:
            n = HDR.unpack_from(self.buf)[0]
            self.got.append((self.loop.time(), bytes(self.buf[4 : 4 + n])))
            del self.buf[: 4 + n]
        self.event.set()

    def send(self, *frames):
        """Write frames in one go (a unix socket's buffer counts small writes dearly); returns the time."""
        data = b"".join(HDR.pack(len(f)) + f for f in frames)
        assert self.sock.send(data) == len(data)
        return self.loop.time()

    @property
    def frames(self):
        return [f for _, f in self.got]

    async def wait(self, n, timeout=10.0):
        async with asyncio.timeout(timeout):
            while len(self.got) < n:
                self.event.clear()
                await self.event.wait()

    def close(self):
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


async def until(predicate, timeout=10.0):
    """Wait for a condition of the LAN's state (counters, queues) that no frame signals."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.002)


class Lan:
    def __init__(self, loop, names=("a", "b")):
        self.hub = Hub(0)
        self.ports = {}
        self.peers = {}
        for name in names:
            inside, outside = socket.socketpair()
            port = StreamPort(name, inside, f"test {name}", loop, lambda port, reason: None)
            self.hub.attach(port)
            port.start()
            self.ports[name] = port
            self.peers[name] = Peer(outside, loop)

    def close(self):
        for name, port in self.ports.items():
            port.close()
            self.peers[name].close()


@pytest.fixture(params=sorted(LOOPS))
def run(request):
    """Run ``scenario(loop, lan)`` on a fresh loop of each kind (vmlan runs on uvloop when installed)."""

    def runner(scenario, names=("a", "b")):
        loop = LOOPS[request.param]()
        lan = Lan(loop, names)
        try:
            return loop.run_until_complete(scenario(loop, lan))
        finally:
            lan.close()
            loop.close()

    return runner


def netem(loop, port, **kw):
    filt = NetemFilter(NetemConfig("n0", "a", **kw), loop)
    filt.attach(port)
    return filt


def test_frames_are_delayed_both_ways(run):
    async def scenario(loop, lan):
        filt = netem(loop, lan.ports["a"], delay=40.0)
        t0 = lan.peers["a"].send(frame(1))
        await lan.peers["b"].wait(1)
        t1 = lan.peers["b"].send(frame(2, src=2))
        await lan.peers["a"].wait(1)
        (r0, f0), (r1, f1) = lan.peers["b"].got[0], lan.peers["a"].got[0]
        assert (number(f0), number(f1)) == (1, 2)
        assert 0.040 - EPS <= r0 - t0 < 1.0 and 0.040 - EPS <= r1 - t1 < 1.0
        counts = filt.as_dict()
        for direction in ("rx", "tx"):
            assert counts[direction]["offered"] == counts[direction]["passed"] == 1
            assert counts[direction]["queued"] == 0
        assert filt._timer is None  # nothing queued: nothing armed

    run(scenario)


def test_an_unconfigured_direction_gets_no_hook(run):
    async def scenario(loop, lan):
        port = lan.ports["a"]
        filt = netem(loop, port, delay=200.0, queue="rx")
        assert port.tx_filter is None and port.rx_filter is not None and list(filt.as_dict()) == ["rx"]
        t0 = lan.peers["a"].send(frame(1))
        lan.peers["b"].send(frame(2, src=2))
        await lan.peers["a"].wait(1)
        await lan.peers["b"].wait(1)
        assert lan.peers["b"].got[0][0] - t0 >= 0.200 - EPS
        assert filt.as_dict()["rx"]["passed"] == 1

    run(scenario)


def test_loss_is_observed_counted_and_reproducible(run):
    n = 400

    async def scenario(loop, lan):
        filt = netem(loop, lan.ports["a"], loss=30.0, seed=7)
        lan.peers["a"].send(*(frame(i) for i in range(n)))
        await until(lambda: filt.as_dict()["rx"]["offered"] == n)
        counts = filt.as_dict()["rx"]
        await lan.peers["b"].wait(counts["passed"])
        got = [number(f) for f in lan.peers["b"].frames]
        assert len(got) == counts["passed"] == n - counts["lost"]
        assert got == sorted(set(got)) and set(got) <= set(range(n))
        assert abs(counts["lost"] - 0.3 * n) <= 5 * math.sqrt(n * 0.3 * 0.7)
        assert lan.ports["a"].counters.rx_frames == n  # the port counts what its peer sent
        assert lan.ports["b"].counters.tx_frames == counts["passed"]
        return got

    assert run(scenario) == run(scenario)  # seed=7: the same frames are lost


def test_duplicate_and_reorder(run):
    async def scenario(loop, lan):
        netem(loop, lan.ports["a"], duplicate=100.0, queue="rx")
        netem(loop, lan.ports["b"], delay=100.0, reorder=50.0, seed=3, queue="rx")
        lan.peers["a"].send(*(frame(i) for i in range(5)))
        await lan.peers["b"].wait(10)
        assert [number(f) for f in lan.peers["b"].frames] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
        lan.peers["b"].send(*(frame(i, src=2) for i in range(40)))
        await lan.peers["a"].wait(40)
        got = [number(f) for f in lan.peers["a"].frames]
        assert sorted(got) == list(range(40)) and got != list(range(40))

    run(scenario)


def test_rate_paces_frames(run):
    async def scenario(loop, lan):
        netem(loop, lan.ports["a"], rate=0.8)  # 100 bytes per millisecond
        t0 = lan.peers["a"].send(*(frame(i, size=1000) for i in range(10)))
        await lan.peers["b"].wait(10)
        times = [t for t, _ in lan.peers["b"].got]
        assert [number(f) for f in lan.peers["b"].frames] == list(range(10))
        assert times[0] - t0 >= 0.010 - EPS and times[-1] - t0 >= 0.100 - EPS

    run(scenario)


def test_close_drops_what_is_queued_and_cancels_the_timer(run):
    async def scenario(loop, lan):
        port = lan.ports["a"]
        filt = netem(loop, port, delay=10_000.0)
        lan.peers["a"].send(*(frame(i) for i in range(5)))
        await until(lambda: filt.as_dict()["rx"]["queued"] == 5)
        handle = filt._timer
        assert handle is not None and not handle.cancelled()
        filt.close()
        assert handle.cancelled() and filt._timer is None
        assert port.rx_filter is None and port.tx_filter is None
        counts = filt.as_dict()["rx"]
        assert counts["flushed"] == 5 and counts["queued"] == 0 and counts["queued_bytes"] == 0
        lan.peers["a"].send(frame(99))
        await lan.peers["b"].wait(1)
        assert [number(f) for f in lan.peers["b"].frames] == [99]

    run(scenario)


def test_detach_lets_queued_frames_leave_on_time(run):
    async def scenario(loop, lan):
        filt = netem(loop, lan.ports["a"], delay=150.0)
        sent = [lan.peers["a"].send(frame(i)) for i in range(3)]
        await until(lambda: filt.as_dict()["rx"]["queued"] == 3)
        filt.detach()
        lan.peers["a"].send(frame(3))
        await lan.peers["b"].wait(4)
        got = lan.peers["b"].got
        assert [number(f) for _, f in got] == [3, 0, 1, 2]
        assert all(t - sent[number(f)] >= 0.150 - EPS for t, f in got[1:])

    run(scenario)


def test_a_tx_frame_outlives_the_port_it_came_from(run):
    async def scenario(loop, lan):
        filt = netem(loop, lan.ports["a"], delay=300.0, queue="tx")
        lan.peers["c"].send(frame(7, src=3))
        await lan.peers["b"].wait(1)  # b has no filter: it has the frame already
        await until(lambda: filt.as_dict()["tx"]["queued"] == 1)
        lan.ports["c"].close()
        assert lan.ports["c"].lan is None
        await lan.peers["a"].wait(1)
        assert number(lan.peers["a"].frames[0]) == 7 and filt.as_dict()["tx"]["passed"] == 1

    run(scenario, names=("a", "b", "c"))


def test_frames_of_a_port_that_left_go_nowhere(run):
    async def scenario(loop, lan):
        filt = netem(loop, lan.ports["a"], delay=50.0)
        lan.peers["a"].send(frame(1), frame(2))
        await until(lambda: filt.as_dict()["rx"]["queued"] == 2)
        lan.ports["a"].close()
        await until(lambda: filt._timer is None)  # the deadline came and the queue drained
        assert filt.as_dict()["rx"]["passed"] == 2
        assert lan.peers["b"].got == [] and lan.ports["b"].counters.tx_frames == 0

    run(scenario)


# -- in-process ports ----------------------------------------------------------------------------------
class FakePort(Port):
    __slots__ = ("got",)

    def __init__(self, name):
        super().__init__(name)
        self.got = []

    def transmit(self, frame, src, offload):
        self.got.append((bytes(frame), offload))
        return True


class OffloadPort(FakePort):
    __slots__ = ()
    offload_ok = True


class EchoPort(FakePort):
    """A port whose peer answers at once, from one reused buffer (as a user stack might)."""

    __slots__ = ("answers", "buf")

    def __init__(self, name, answers):
        super().__init__(name)
        self.answers = answers
        self.buf = bytearray(64)

    def transmit(self, frame, src, offload):
        super().transmit(frame, src, offload)
        reply = self.answers.get(number(frame))
        if reply is not None:
            self.buf[:] = globals()["frame"](reply)
            self.lan.input(self, memoryview(self.buf))
            self.buf[:] = b"\xee" * 64  # the buffer is reused at once
        return True


def in_loop(scenario):
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(scenario(loop))
    finally:
        loop.close()


def test_frames_that_come_straight_back_keep_their_order_and_bytes():
    async def scenario(loop):
        hub = Hub(0)
        rec = FakePort("rec")
        echo_e = EchoPort("e", {1: 2, 3: 4})
        echo_f = EchoPort("f", {2: 3})
        for port in (rec, echo_e, echo_f):
            hub.attach(port)
        filt = NetemFilter(NetemConfig("n", "e", loss=0.0), loop)
        filt.attach(echo_e)
        hub.input(rec, frame(1))
        await until(lambda: len(rec.got) == 3)
        assert [number(f) for f, _ in rec.got] == [2, 3, 4]
        assert all(f[:6] == BCAST for f, _ in rec.got)  # none was read from the reused buffer too late
        counts = filt.as_dict()
        assert counts["tx"]["passed"] == 2 and counts["rx"]["passed"] == 2

    in_loop(scenario)


def tcp_super_frame(payload_size):
    pkt = Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / IP(src="10.0.2.15", dst="10.0.2.2") / TCP(
        sport=40000, dport=80, flags="PA", seq=1000
    ) / (b"z" * payload_size)
    offload = Offload(FLAG_NEEDS_CSUM, GSO_TCPV4, 54, 1000, 34, 16)
    return bytes(pkt), offload


@pytest.mark.parametrize("queue", ["rx", "tx"])
def test_gso_super_frames_are_cut_before_the_emulator(queue):
    async def scenario(loop):
        hub = Hub(0)
        src, dst = OffloadPort("src"), OffloadPort("dst")
        hub.attach(src)
        hub.attach(dst)
        filt = NetemFilter(NetemConfig("n", "x", delay=1.0, queue=queue), loop)
        filt.attach(src if queue == "rx" else dst)
        super_frame, offload = tcp_super_frame(3000)
        hub.input(src, super_frame, offload)
        await until(lambda: len(dst.got) == 3)
        assert dst.got == [(piece, None) for piece in software_offload(super_frame, offload)]
        assert filt.as_dict()[queue]["offered"] == 3
        checked = Offload(FLAG_DATA_VALID)
        hub.input(src, frame(5), checked)  # checksum facts only: one frame, its offload kept
        await until(lambda: len(dst.got) == 4)
        assert dst.got[3] == (frame(5), checked) and filt.as_dict()[queue]["offered"] == 4

    in_loop(scenario)


def test_one_filter_per_port_and_per_slot():
    async def scenario(loop):
        port = FakePort("p")
        filt = NetemFilter(NetemConfig("n", "p"), loop)
        filt.attach(port)
        with pytest.raises(RuntimeError, match="already attached"):
            filt.attach(FakePort("q"))
        with pytest.raises(RuntimeError, match="already has a filter"):
            NetemFilter(NetemConfig("m", "p", queue="tx"), loop).attach(port)
        filt.close()
        NetemFilter(NetemConfig("m", "p", queue="tx"), loop).attach(port)  # the slot is free again

    in_loop(scenario)
