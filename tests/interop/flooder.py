"""A hostile peer for the flood tests: one stream connection to a vmlan hub, QEMU's framing (a 4-byte
big-endian length before each frame), frames built with scapy, driven line by line on stdin.

    python flooder.py SOCKET_PATH [--mac MAC] [--frames N]

Commands (one per line; each is answered with one line on stdout once done or started):

``syn``      SYNs from forged sources (10.0.2.40-239, one MAC), each to a destination and port of its own:
             half to 198.18.0.0/15 (pending connects, where the test routes that into a sink), half to
             closed ports of 10.0.2.2 (the host's loopback)
``udp``      UDP the same way, each datagram from a source address and port of its own (one flow each)
``mix``      both, interleaved
``pause``    stop sending (the connection stays)
``idle PATH N``  connect N more unix stream sockets to PATH and leave them idle (never read, never write)
``close-idle``   close them
``stats``    ``sent FRAMES BYTES SECONDS`` since the last ``syn``/``udp``/``mix``
``quit``     close everything and exit

The frames are built once (``--frames`` of each kind, with scapy, so every checksum is right) and sent
round and round; a send blocks while vmlan's socket buffer is full, so the flood goes as fast as vmlan
takes it. The peer never reads: what vmlan sends it piles up in vmlan's output queue for it.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import struct
import sys
import threading
import time

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet

GATEWAY_MAC = "52:55:0a:00:02:02"
BATCH = 64  # frames per send


def build(kind: str, mac: str, count: int, avoid_port: int) -> list[bytes]:
    frames = []
    for i in range(count):
        src = f"10.0.2.{40 + i % 200}"
        sport = 1024 + (i * 7919) % 60000
        if i % 2:
            dst, dport = f"198.{18 + (i >> 16) % 2}.{(i >> 8) & 255}.{i & 255}", 1 + (i * 104729) % 65535
        else:
            dst, dport = "10.0.2.2", 1 + (i * 104729) % 65535
            if dport == avoid_port:
                dport = dport % 65535 + 1
        ip = IP(src=src, dst=dst, ttl=64, id=i & 0xFFFF)
        l4: Packet
        if kind == "syn":
            l4 = TCP(sport=sport, dport=dport, flags="S", seq=i * 2654435761 & 0xFFFFFFFF, window=64240,
                     options=[("MSS", 1460), ("SAckOK", b""), ("WScale", 7)])
        else:
            l4 = UDP(sport=sport, dport=dport) / (b"flood %08d " % i + b"x" * 20)
        frame = bytes(Ether(src=mac, dst=GATEWAY_MAC) / ip / l4)
        frames.append(struct.pack(">I", len(frame)) + frame)
    return frames


class Flooder:
    def __init__(self, path: str, frames: dict[str, list[bytes]]) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.frames = frames
        self.mode = ""
        self.sent = 0
        self.bytes = 0
        self.since = time.monotonic()
        self.cond = threading.Condition()
        self.stopping = False
        self.error = ""
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def set_mode(self, mode: str) -> None:
        with self.cond:
            self.mode = mode
            self.sent = self.bytes = 0
            self.since = time.monotonic()
            self.cond.notify_all()

    def run(self) -> None:
        batches: dict[str, list[bytes]] = {}
        for kind, frames in self.frames.items():
            batches[kind] = [b"".join(frames[i : i + BATCH]) for i in range(0, len(frames), BATCH)]
        batches["mix"] = [b for pair in zip(batches["syn"], batches["udp"], strict=False) for b in pair]
        index = 0
        while True:
            with self.cond:
                while not self.mode and not self.stopping:
                    self.cond.wait()
                if self.stopping:
                    return
                mine = batches[self.mode]
            chunk = mine[index % len(mine)]
            index += 1
            try:
                self.sock.sendall(chunk)
            except OSError as exc:
                self.error = str(exc)
                return
            with self.cond:
                self.sent += BATCH
                self.bytes += len(chunk)

    def stats(self) -> str:
        with self.cond:
            return f"sent {self.sent} {self.bytes} {time.monotonic() - self.since:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--mac", default="52:54:00:66:66:66")
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--avoid-port", type=int, default=0, help="a host port the SYNs must not reach")
    args = parser.parse_args()
    started = time.monotonic()
    frames = {kind: build(kind, args.mac, args.frames, args.avoid_port) for kind in ("syn", "udp")}
    flooder = Flooder(args.path, frames)
    print(f"ready {2 * args.frames} frames built in {time.monotonic() - started:.1f} s", flush=True)
    idle: list[socket.socket] = []
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        cmd = words[0]
        if cmd in ("syn", "udp", "mix"):
            flooder.set_mode(cmd)
            print(f"flooding {cmd}", flush=True)
        elif cmd == "pause":
            flooder.set_mode("")
            print("paused", flush=True)
        elif cmd == "stats":
            print(flooder.stats() + (f" error {flooder.error}" if flooder.error else ""), flush=True)
        elif cmd == "idle":
            path, count = words[1], int(words[2])
            failed = 0
            for _ in range(count):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(path)
                except OSError:
                    failed += 1
                    s.close()
                    continue
                idle.append(s)
            print(f"idle {len(idle)} connected, {failed} failed", flush=True)
        elif cmd == "close-idle":
            for s in idle:
                s.close()
            idle.clear()
            print("idle closed", flush=True)
        elif cmd == "quit":
            break
        else:
            print(f"unknown command {cmd}", flush=True)
    with flooder.cond:
        flooder.stopping = True
        flooder.mode = ""
        flooder.cond.notify_all()
    with contextlib.suppress(OSError):
        flooder.sock.shutdown(socket.SHUT_RDWR)  # wakes a sender blocked on a full buffer
    flooder.sock.close()
    for s in idle:
        s.close()
    print("bye", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
