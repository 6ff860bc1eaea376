"""Micro-benchmark: in-memory throughput of :mod:`vmlan.engines.tcp`, one core, no loss.

Run with ``python -m benchmarks.tcp_engine`` from the repository root.

Two connections are wired back to back (no link model; the clock advances 100 us per round): the
sender's host side keeps its send buffer full, the receiver's host side consumes at once. Both ends
run in this process, so the headline figure is the cost of *both* ends per byte. In vmlan only one
end is ours (the other is the guest's kernel), so the time is also split per end: the sending end is
vmlan's cost for host->guest traffic, the receiving end its cost for guest->host traffic.

Two receive patterns:

* ``burst``: the receiver takes every segment of a round, then answers with one (stretch) ACK --
  what an I/O layer that drains a batch of frames before flushing gets.
* ``per-segment``: the receiver flushes after each segment, as ``usernet._flush_tcp`` does today,
  so it ACKs every second segment.

Prints MB/s (10**6 bytes) and Gb/s for 1460-byte and 64 KiB (65495-byte) segments.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from tests.engines.tcpnet import IP_A, IP_B, PORT_A, PORT_B

from vmlan.engines.tcp import DataReceived, TcpConnection, TcpParams
from vmlan.wire.checksum import checksum_backend


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
    sender: float  # seconds spent in the sending end's methods
    receiver: float  # ... and in the receiving end's
    segments: int  # data segments


def run(mss: int, total: int, buffer: int, per_segment: bool) -> Result:
    """Send ``total`` bytes a -> b."""
    a, b = pair(mss, buffer)
    chunk = memoryview(bytes(range(256)) * (buffer // 256 + 1))
    clock = time.perf_counter
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=200, help="bytes per run, in MB (default 200)")
    parser.add_argument("--runs", type=int, default=3, help="best of N (default 3)")
    args = parser.parse_args()
    total = args.megabytes * 1_000_000
    print(f"checksum backend: {checksum_backend()}; {args.megabytes} MB per run, best of {args.runs}; 1 MiB buffers")
    for per_segment in (False, True):
        mode = "per-segment" if per_segment else "burst"
        for mss in (1460, 65495):
            r = min((run(mss, total, 1 << 20, per_segment) for _ in range(args.runs)), key=lambda r: r.seconds)
            rate = total / r.seconds
            print(
                f"{mode:>11}  MSS {mss:>5}: {rate / 1e6:7.1f} MB/s {rate * 8 / 1e9:5.2f} Gb/s both ends"
                f" | sending end {total / r.sender / 1e6:7.1f} MB/s, receiving end {total / r.receiver / 1e6:7.1f} MB/s"
                f" | {r.seconds / r.segments * 1e6:5.1f} us/segment"
            )


if __name__ == "__main__":
    main()
