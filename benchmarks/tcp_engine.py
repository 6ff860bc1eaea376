"""Micro-benchmark: in-memory throughput of :mod:`vmlan.engines.tcp`, one core, no loss.

Run with ``python -m benchmarks.tcp_engine`` from the repository root (``--help`` for options).

Two connections are wired back to back (no link model; the clock advances 100 us per round): the
sender's host side keeps its send buffer full, the receiver's host side consumes at once. Both ends
run in this process, and the time spent in each end's calls is measured separately: in vmlan only one
end is ours (the other is the guest's kernel), so the sending end is vmlan's cost for host->guest
traffic and the receiving end its cost for guest->host traffic. The figures are microseconds per data
segment (the ACKs an end receives or sends are part of its cost). Times are the thread's CPU time
(``time.thread_time``), so other processes on a shared machine disturb them less than wall time.

Two APIs:

* ``old``: ``send()`` (a copy into the send buffer), ``segments_to_send()`` (each segment joined into
  one ``bytes``), ``next_event()``/``DataReceived`` (another copy), ``consume()`` -- what the old
  user stack does.
* ``new``: ``fill_from()`` with a ``recv_into``-like reader, ``transmit()`` with an ``emit`` that
  joins a 34-byte Ethernet+IPv4 prefix, the header and the payload into the frame (the one copy of the
  payload on its way to the guest), the receiver fed ``memoryview(frame)[34:]`` as the stack does,
  ``take_data()`` and ``consume()``. ``new+verified`` is the same with ``receive_segment(...,
  verified=True)`` (a vnet header said DATA_VALID): the engine without the checksum. ``new+TSO``
  (MSS 1460 only) sends 64 KiB TSO segments (``set_tso``), which the receiver takes as GRO segments.

Two receive patterns: ``per-segment`` (the receiver flushes after each segment, so it ACKs every
second one: what the stack does today) and ``burst`` (it takes a whole round, then answers with one
stretch ACK: what an I/O layer draining a batch of frames before flushing gets).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.engines.tcpnet import IP_A, IP_B, PORT_A, PORT_B

from vmlan.engines.tcp import DataReceived, TcpConnection, TcpParams
from vmlan.wire.checksum import checksum_backend

PREFIX = bytes(34)  # Ethernet + IPv4 headers, as the stack would put in front of every segment


def pair(mss: int, buffer: int) -> tuple[TcpConnection, TcpConnection]:
    params = TcpParams(mss=mss, rcv_buffer=buffer, snd_buffer=buffer)
    now = 0.0
    a = TcpConnection.connect((IP_A, PORT_A), (IP_B, PORT_B), params, now, 1)
    (syn,) = a.segments_to_send(now)
    b = TcpConnection.from_syn((IP_B, PORT_B), (IP_A, PORT_A), syn, params, now, 2)
    b.accept(now)
    for seg in b.segments_to_send(now):
        a.receive_segment(seg, now)
    for seg in a.segments_to_send(now):
        b.receive_segment(seg, now)
    while a.next_event() or b.next_event():
        pass
    return a, b


@dataclass
class Result:
    seconds: float
    sender: float  # seconds spent in the sending end's calls
    receiver: float  # ... and in the receiving end's
    segments: int  # data segments


def run_old(mss: int, total: int, buffer: int, per_segment: bool) -> Result:
    """Send ``total`` bytes a -> b with the old API."""
    a, b = pair(mss, buffer)
    chunk = memoryview(bytes(range(256)) * (buffer // 256 + 1))
    clock = time.thread_time
    sent = received = segments = 0
    t_send = t_recv = 0.0
    now = 1.0
    start = clock()
    while received < total:
        now += 0.0001
        t0 = clock()
        space = a.send_space()
        if space and sent < total:
            sent += a.send(chunk[: min(space, total - sent)], now)
        data_segments = a.segments_to_send(now)
        t1 = clock()
        t_send += t1 - t0
        segments += len(data_segments)
        acks: list[bytes] = []
        for seg in data_segments:
            b.receive_segment(seg, now)
            if per_segment:
                while (event := b.next_event()) is not None:
                    if isinstance(event, DataReceived):
                        received += len(event.data)
                        b.consume(len(event.data))
                acks += b.segments_to_send(now)
        while (event := b.next_event()) is not None:
            if isinstance(event, DataReceived):
                received += len(event.data)
                b.consume(len(event.data))
        acks += b.segments_to_send(now)
        if not data_segments:
            deadline = b.get_timer()  # the delayed ACK
            if deadline is not None:
                now = max(now, deadline)
                b.handle_timer(now)
                acks += b.segments_to_send(now)
        t2 = clock()
        t_recv += t2 - t1
        for seg in acks:
            a.receive_segment(seg, now)
        t_send += clock() - t2
    return Result(clock() - start, t_send, t_recv, segments)


def run_new(mss: int, total: int, buffer: int, per_segment: bool, *, verified: bool = False, tso: int = 0) -> Result:
    """Send ``total`` bytes a -> b with fill_from/transmit/take_data, frames joined as the stack would."""
    a, b = pair(mss, buffer)
    if tso:
        a.set_tso(tso)
    source = memoryview(bytes(range(256)) * (buffer // 256 + 2))
    pos = [0]

    def reader(view: memoryview) -> int:  # what sock.recv_into does: one copy into the given buffer
        n = len(view)
        p = pos[0]
        if p + n > len(source):
            p = 0
        view[:] = source[p : p + n]
        pos[0] = p + n & 0xFF
        return n

    data_frames: list[bytes] = []
    ack_frames: list[bytes] = []
    join = b"".join

    def emitter(frames: list[bytes]) -> Callable[[bytes, bytes | memoryview], None]:
        append = frames.append

        def emit(header: bytes, payload: bytes | memoryview) -> None:
            append(join((PREFIX, header, payload)))

        return emit

    emit_data = emitter(data_frames)
    emit_ack = emitter(ack_frames)
    clock = time.thread_time
    sent = received = segments = 0
    t_send = t_recv = 0.0
    now = 1.0
    start = clock()
    while received < total:
        now += 0.0001
        t0 = clock()
        if sent < total:
            sent += a.fill_from(reader, total - sent, now)
        data_frames.clear()
        a.transmit(now, emit_data)
        t1 = clock()
        t_send += t1 - t0
        segments += len(data_frames)
        ack_frames.clear()
        for frame in data_frames:
            b.receive_segment(memoryview(frame)[34:], now, verified)
            if per_segment:
                data = b.take_data()
                if data is not None:
                    received += len(data)
                    b.consume(len(data))
                b.transmit(now, emit_ack)
        data = b.take_data()
        if data is not None:
            received += len(data)
            b.consume(len(data))
        b.transmit(now, emit_ack)
        if not data_frames:
            deadline = b.get_timer()  # the delayed ACK
            if deadline is not None:
                now = max(now, deadline)
                b.handle_timer(now)
                b.transmit(now, emit_ack)
        t2 = clock()
        t_recv += t2 - t1
        for frame in ack_frames:
            a.receive_segment(memoryview(frame)[34:], now, verified)
        t_send += clock() - t2
    return Result(clock() - start, t_send, t_recv, segments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=100, help="bytes per run, in MB (default 100)")
    parser.add_argument("--runs", type=int, default=3, help="best of N (default 3)")
    parser.add_argument("--pattern", choices=["per-segment", "burst", "both"], default="both")
    parser.add_argument("--mss", type=int, action="append", help="MSS to run (repeatable; default 1460 and 65495)")
    parser.add_argument("--api", action="append", choices=["old", "new", "new+verified", "new+TSO"], help="repeatable")
    args = parser.parse_args()
    total = args.megabytes * 1_000_000
    patterns = [args.pattern] if args.pattern != "both" else ["per-segment", "burst"]
    apis = args.api or ["old", "new", "new+verified", "new+TSO"]
    print(f"checksum backend: {checksum_backend()}; {args.megabytes} MB per run, best of {args.runs}; 1 MiB buffers")
    print("us per data segment in each end's calls (the ACKs it handles included)")
    for pattern in patterns:
        per_segment = pattern == "per-segment"
        for mss in args.mss or [1460, 65495]:
            for api in apis:
                if api == "new+TSO" and mss > 32768:
                    continue

                def once(api: str = api, mss: int = mss, per_segment: bool = per_segment) -> Result:
                    if api == "old":
                        return run_old(mss, total, 1 << 20, per_segment)
                    tso = 65535 if api == "new+TSO" else 0
                    return run_new(mss, total, 1 << 20, per_segment, verified=api == "new+verified", tso=tso)

                r = min((once() for _ in range(args.runs)), key=lambda r: r.seconds)
                rate = total / r.seconds
                # For TSO the receiver sees super-segments: report per MSS-sized piece, comparable with the rest.
                pieces = total / mss if api == "new+TSO" else r.segments
                print(
                    f"{pattern:>11}  MSS {mss:>5}  {api:<12}: {rate / 1e6:7.1f} MB/s both ends"
                    f" | sending end {r.sender / pieces * 1e6:6.2f} us,"
                    f" receiving end {r.receiver / pieces * 1e6:6.2f} us"
                    f" per {'MSS piece' if api == 'new+TSO' else 'segment'}"
                )


if __name__ == "__main__":
    main()
