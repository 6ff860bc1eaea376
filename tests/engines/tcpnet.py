"""An in-memory network for :mod:`vmlan.engines.tcp`: two connections, a lossy link, a fake clock.

The two ends are both :class:`~vmlan.engines.tcp.TcpConnection`: ``a`` opens actively (``connect()``),
``b`` is created by ``from_syn()`` from the first SYN that reaches it and then ``accept()``\\ s (after
``accept_delay``, the time a host ``connect()`` would take). TCP is symmetric, so each is the other's
"guest". Time only moves when :meth:`Net.step` jumps to the earliest pending delivery or timer: no
real sleeps, fully deterministic for a given seed.

Lower-level helpers in the style of aioquic's tests, for tests that choreograph segments by hand:
:func:`roundtrip` moves everything one side wants to send into the other, :func:`drop` discards it.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from vmlan.engines.tcp import (
    CLOSED,
    Closed,
    Connected,
    DataReceived,
    EndOfStream,
    Event,
    Reset,
    TcpConnection,
    TcpParams,
)
from vmlan.wire.checksum import internet_checksum, pseudo_header_sum_v4, pseudo_header_sum_v6
from vmlan.wire.errors import IntegrityError
from vmlan.wire.tcp import SYN, TcpHeader, TcpOptions

IP_A = bytes((10, 0, 2, 2))  # the "host" side (vmlan's address as the guest sees it)
IP_B = bytes((10, 0, 2, 15))  # the "guest"
IP6_A = bytes.fromhex("fec00000000000000000000000000002")  # fec0::2, libslirp's IPv6 gateway
IP6_B = bytes.fromhex("fec00000000000005054fffe123456aa")  # a SLAAC guest address in fec0::/64
PORT_A = 40000
PORT_B = 8080


def pseudo_sum(src: bytes, dst: bytes) -> int:
    """The TCP pseudo-header sum (without the length) for 4- or 16-byte addresses."""
    return (pseudo_header_sum_v6 if len(src) == 16 else pseudo_header_sum_v4)(src, dst, 6, 0)


def checksum_ok(segment: bytes | memoryview, src: bytes, dst: bytes) -> bool:
    return internet_checksum(segment, pseudo_sum(src, dst) + len(segment)) == 0


def guest_segment(
    *,
    seq: int,
    ack: int = 0,
    flags: int,
    window: int = 65535,
    payload: bytes = b"",
    options: TcpOptions | None = None,
    src: tuple[bytes, int] = (IP_B, PORT_B),
    dst: tuple[bytes, int] = (IP_A, PORT_A),
) -> bytes:
    """A raw segment as a guest would send it, with a correct checksum (IPv4 or IPv6 addresses)."""
    header = TcpHeader(
        sport=src[1],
        dport=dst[1],
        seq=seq & 0xFFFFFFFF,
        ack=ack & 0xFFFFFFFF,
        flags=flags,
        window=window,
        options=options if options is not None else TcpOptions(),
    )
    raw = bytearray(header.to_bytes() + payload)
    raw[16:18] = b"\0\0"
    raw[16:18] = internet_checksum(raw, pseudo_sum(src[0], dst[0]) + len(raw)).to_bytes(2, "big")
    return bytes(raw)


def parse(segment: bytes, src: bytes = IP_A, dst: bytes = IP_B) -> tuple[TcpHeader, bytes]:
    """Decode (and checksum-verify, for either family) a segment a connection produced."""
    if not checksum_ok(segment, src, dst):
        raise IntegrityError("TCP", "bad checksum")
    header, start, end = TcpHeader.parse(segment)
    return header, bytes(segment[start:end])


def roundtrip(sender: TcpConnection, receiver: TcpConnection, now: float) -> int:
    """Deliver everything ``sender`` wants to send to ``receiver`` at once; returns the segment count."""
    segments = sender.segments_to_send(now)
    for segment in segments:
        receiver.receive_segment(segment, now)
    return len(segments)


def drop(sender: TcpConnection, now: float) -> int:
    """Discard everything ``sender`` wants to send (a lost burst); returns the segment count."""
    return len(sender.segments_to_send(now))


def strip_syn_options(*, keep_mss: bool) -> Callable[[bytes], bytes]:
    """A middlebox for :attr:`Pipe.rewrite`: SYNs lose window scaling (and the MSS unless ``keep_mss``)."""

    def rewrite(segment: bytes) -> bytes:
        header, start, end = TcpHeader.parse(segment)
        if not header.flags & SYN:
            return segment
        options = TcpOptions(mss=header.options.mss if keep_mss else None)
        stripped = TcpHeader(
            sport=header.sport,
            dport=header.dport,
            seq=header.seq,
            ack=header.ack,
            flags=header.flags,
            window=header.window,
            options=options,
        )
        src, dst = ((IP_A, PORT_A), (IP_B, PORT_B)) if header.sport == PORT_A else ((IP_B, PORT_B), (IP_A, PORT_A))
        return guest_segment(
            seq=stripped.seq,
            ack=stripped.ack,
            flags=stripped.flags,
            window=stripped.window,
            payload=bytes(segment[start:end]),
            options=options,
            src=src,
            dst=dst,
        )

    return rewrite


def events(conn: TcpConnection) -> list[Event]:
    out = []
    while (event := conn.next_event()) is not None:
        out.append(event)
    return out


@dataclass
class LinkConfig:
    """One direction of the link. ``reorder`` is the chance a segment is held back by up to
    ``reorder_delay`` extra seconds (so later ones overtake it)."""

    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0005
    reorder_delay: float = 0.003
    seed: int = 1


class Pipe:
    """One direction: a heap of (delivery time, order, segment) with seeded impairments."""

    def __init__(self, cfg: LinkConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.heap: list[tuple[float, int, bytes]] = []
        self.order = 0
        self.blackhole = False
        self.drop_if: Callable[[bytes], bool] | None = None
        self.rewrite: Callable[[bytes], bytes] | None = None  # a middlebox (e.g. stripping SYN options)
        self.taps: list[Callable[[bytes, float], None]] = []  # observers of every segment entering the pipe
        self.sent = 0
        self.lost = 0

    def push(self, segment: bytes, now: float) -> None:
        cfg = self.cfg
        self.sent += 1
        for tap in self.taps:
            tap(segment, now)
        if self.rewrite is not None:
            segment = self.rewrite(segment)
        if self.blackhole or (self.drop_if is not None and self.drop_if(segment)):
            self.lost += 1
            return
        rng = self.rng
        if cfg.loss and rng.random() < cfg.loss:
            self.lost += 1
            return
        copies = 2 if cfg.dup and rng.random() < cfg.dup else 1
        for _ in range(copies):
            t = now + cfg.delay
            if cfg.reorder and rng.random() < cfg.reorder:
                t += rng.random() * cfg.reorder_delay
            self.order += 1
            heapq.heappush(self.heap, (t, self.order, segment))

    def next_time(self) -> float | None:
        return self.heap[0][0] if self.heap else None

    def pop_due(self, now: float) -> list[bytes]:
        out = []
        heap = self.heap
        while heap and heap[0][0] <= now:
            out.append(heapq.heappop(heap)[2])
        return out


@dataclass
class App:
    """The host-side application on one end: streams ``data``, collects what arrives."""

    data: bytes = b""
    chunk: int = 1 << 16
    consume: bool = True  # False: a reader that stopped reading (the window closes)
    shutdown_when_sent: bool = True
    start_on_eof: bool = False  # reply only after the peer's EndOfStream (a half-close exchange)
    sent: int = 0
    shut: bool = False
    received: bytearray = field(default_factory=bytearray)
    unconsumed: int = 0
    events: list[Event] = field(default_factory=list)

    @property
    def closed(self) -> bool:
        return any(isinstance(e, Closed) for e in self.events)

    @property
    def eof(self) -> bool:
        return any(isinstance(e, EndOfStream) for e in self.events)

    @property
    def reset(self) -> bool:
        return any(isinstance(e, Reset) for e in self.events)

    @property
    def connected(self) -> bool:
        return any(isinstance(e, Connected) for e in self.events)

    def close_reason(self) -> str | None:
        for e in self.events:
            if isinstance(e, Closed):
                return e.reason
        return None

    def pump(self, conn: TcpConnection, now: float) -> None:
        while (event := conn.next_event()) is not None:
            if isinstance(event, DataReceived):
                self.received += event.data
                if self.consume:
                    conn.consume(len(event.data))
                else:
                    self.unconsumed += len(event.data)
            else:
                self.events.append(event)
        if self.consume and self.unconsumed and conn.state != CLOSED:
            conn.consume(self.unconsumed)
            self.unconsumed = 0
        if conn.state == CLOSED or (self.start_on_eof and not self.eof):
            return
        data = self.data
        while self.sent < len(data) and not self.shut:
            space = conn.send_space()
            if space <= 0:
                break
            n = conn.send(memoryview(data)[self.sent : self.sent + min(space, self.chunk)], now)
            if n == 0:
                break
            self.sent += n
        if self.shutdown_when_sent and self.sent >= len(data) and not self.shut:
            self.shut = True
            conn.shutdown(now)


class Net:
    """``a`` (active) and ``b`` (passive, accepted after ``accept_delay``) over two :class:`Pipe`\\ s."""

    def __init__(
        self,
        params_a: TcpParams | None = None,
        params_b: TcpParams | None = None,
        ab: LinkConfig | None = None,
        ba: LinkConfig | None = None,
        *,
        app_a: App | None = None,
        app_b: App | None = None,
        isn_a: int = 0x1000,
        isn_b: int = 0xF0000000,
        accept_delay: float = 0.0,
        refuse: bool = False,
        start: float = 100.0,
        addrs: tuple[bytes, bytes] = (IP_A, IP_B),
    ) -> None:
        self.now = start
        self.params_a = params_a or TcpParams()
        self.params_b = params_b or TcpParams()
        self.ab = Pipe(ab or LinkConfig(seed=1))
        self.ba = Pipe(ba or LinkConfig(seed=2))
        self.app_a = app_a or App()
        self.app_b = app_b or App()
        self.isn_b = isn_b
        self.accept_delay = accept_delay
        self.refuse = refuse
        self.accept_at: float | None = None
        self.ip_a, self.ip_b = addrs
        self.a = TcpConnection.connect((self.ip_a, PORT_A), (self.ip_b, PORT_B), self.params_a, self.now, isn_a)
        self.b: TcpConnection | None = None
        self.steps = 0
        self.started = False  # the first flush (a's SYN) waits for the first step: tests add hooks first

    # -- driving --------------------------------------------------------------------------------------------
    def flush(self) -> None:
        now = self.now
        for _ in range(4):  # app reactions can make more output (window updates after consume)
            moved = 0
            self.app_a.pump(self.a, now)
            for seg in self.a.segments_to_send(now):
                self.ab.push(seg, now)
                moved += 1
            if self.b is not None:
                self.app_b.pump(self.b, now)
                for seg in self.b.segments_to_send(now):
                    self.ba.push(seg, now)
                    moved += 1
            if not moved:
                break

    def next_time(self) -> float | None:
        times = [self.ab.next_time(), self.ba.next_time(), self.a.get_timer(), self.accept_at]
        if self.b is not None:
            times.append(self.b.get_timer())
        present = [t for t in times if t is not None]
        return min(present) if present else None

    def step(self) -> bool:
        """Advance to the next delivery or timer and process everything due; False when idle."""
        if not self.started:
            self.started = True
            self.flush()
        t = self.next_time()
        if t is None:
            return False
        self.steps += 1
        self.now = max(self.now, t)
        now = self.now
        for seg in self.ab.pop_due(now):
            if self.b is None:
                self.b = TcpConnection.from_syn(
                    (self.ip_b, PORT_B), (self.ip_a, PORT_A), seg, self.params_b, now, self.isn_b
                )
                self.accept_at = now + self.accept_delay
            else:
                self.b.receive_segment(seg, now)
        for seg in self.ba.pop_due(now):
            self.a.receive_segment(seg, now)
        if self.accept_at is not None and now >= self.accept_at and self.b is not None:
            self.accept_at = None
            if self.refuse:
                self.b.refuse(now)
            else:
                self.b.accept(now)
        for conn in (self.a, self.b):
            if conn is not None:
                deadline = conn.get_timer()
                if deadline is not None and deadline <= now:
                    conn.handle_timer(now)
        self.flush()
        return True

    def run(self, until: Callable[[], bool], *, max_time: float = 10_000.0, max_steps: int = 5_000_000) -> None:
        """Step until ``until()`` holds; fails the test if time or steps run out first."""
        limit = self.now + max_time
        step_limit = self.steps + max_steps
        while not until():
            if self.now > limit or self.steps > step_limit or not self.step():
                raise AssertionError(
                    f"network stalled or timed out at t={self.now:.3f} ({self.steps} steps): a={self.a!r} b={self.b!r}"
                    f" a_events={self.app_a.events} b_events={self.app_b.events}"
                )

    def run_for(self, seconds: float) -> None:
        end = self.now + seconds
        if not self.started:
            self.step()
        while True:
            t = self.next_time()
            if t is None or t > end:
                break
            self.step()
        self.now = max(self.now, end)

    def both_closed(self) -> bool:
        return self.app_a.closed and self.app_b.closed
