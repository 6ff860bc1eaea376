"""Micro-benchmark: the user stack's TCP data path, in memory, one core, no sockets.

Run with ``python -m benchmarks.stack_path`` from the repository root.

A guest TCP connection to 10.0.2.2 is set up through :class:`vmlan.engines.usernet.UserStack` exactly as
a guest would (SYN frame, host connect reported done, handshake ACK). Then:

* **guest->host**: prebuilt 1460-byte data segments (Ethernet + IPv4 + TCP, valid checksums, as a QEMU
  guest sends them over a stream link) go through ``receive_frame``; every TCP_WRITE action is answered
  at once with ``tcp_written`` (a host socket that always takes everything), and the ACK frames the stack
  emits are taken and dropped. The figure is microseconds per segment for all of that: what vmlan's
  process spends per guest segment apart from the socket syscalls.
* **host->guest**: ``tcp_fill`` with a reader that copies from a constant buffer into the view it is
  given (what ``sock.recv_into`` does), the emitted data frames taken, and the guest's ACK for every
  second segment fed back. Microseconds per 1460-byte segment sent. On this path a byte is copied twice
  inside vmlan: from the kernel into the connection's send buffer (recv_into) and into the frame (one
  ``join`` of prefix, header and payload view).
"""

from __future__ import annotations

import argparse
import struct
import time

from vmlan.config.qemuopts import parse_qemuopts
from vmlan.config.usernet import parse_user_netdev, stack_config
from vmlan.engines.usernet import UserStack
from vmlan.engines.usernet import actions as A
from vmlan.wire.checksum import internet_checksum, pseudo_header_sum_v4

GUEST_MAC = bytes.fromhex("525400123456")
HOST_MAC = bytes.fromhex("52550a000202")
GUEST = bytes((10, 0, 2, 15))
HOST = bytes((10, 0, 2, 2))
SPORT, DPORT = 40000, 8080
_ETH_IP = struct.Struct("!6s6sHBBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")


def frame(seq: int, ack: int, flags: int, payload: bytes = b"", options: bytes = b"", window: int = 0xFFFF) -> bytes:
    hlen = 20 + len(options)
    tcp = bytearray(_TCP.pack(SPORT, DPORT, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (hlen // 4) << 4, flags, window, 0, 0))
    tcp += options + payload
    tcp[16:18] = internet_checksum(tcp, pseudo_header_sum_v4(GUEST, HOST, 6, len(tcp))).to_bytes(2, "big")
    ip = bytearray(_ETH_IP.pack(HOST_MAC, GUEST_MAC, 0x0800, 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, GUEST, HOST))
    ip[24:26] = internet_checksum(ip[14:34]).to_bytes(2, "big")
    return bytes(ip + tcp)


def setup() -> tuple[UserStack, int, int, int]:
    cfg = stack_config(parse_user_netdev(parse_qemuopts("user,id=u0,dns-server=127.0.0.1:53")), "/nonexistent")
    stack = UserStack(cfg)
    now = 1.0
    port = object()
    syn_opts = bytes((2, 4, 0x05, 0xB4, 1, 3, 3, 7))  # MSS 1460, NOP, wscale 7
    stack.receive_frame(frame(1000, 0, 0x02, options=syn_opts), port, None, now)
    (connect,) = [a for a in stack.take_actions() if a[0] == A.TCP_CONNECT]
    fid = connect[1]
    stack.tcp_connected(fid, now)
    synack = stack.take_frames()[-1][0]
    iss = struct.unpack_from("!I", synack, 34 + 4)[0]
    stack.receive_frame(frame(1001, iss + 1, 0x10), port, None, now)
    stack.take_frames()
    stack.take_actions()
    return stack, fid, 1001, iss + 1


def guest_to_host(segments: int) -> float:
    stack, fid, seq, ack = setup()
    port = next(iter(stack.guests.by_port))
    payload = bytes(range(256)) * 5 + bytes(180)
    frames = []
    for _ in range(segments):
        frames.append(frame(seq, ack, 0x10, payload))
        seq += len(payload)
    now = 2.0
    receive, take_actions, take_frames = stack.receive_frame, stack.take_actions, stack.take_frames
    written = stack.tcp_written
    moved = 0
    start = time.perf_counter()
    for f in frames:
        now += 0.00001
        receive(f, port, None, now)
        for action in take_actions():
            if action[0] == A.TCP_WRITE:
                n = len(action[2])
                moved += n
                written(fid, n, now)
        take_frames()
    elapsed = time.perf_counter() - start
    assert moved == segments * len(payload), (moved, segments * len(payload))
    return elapsed / segments * 1e6


def host_to_guest(segments: int) -> float:
    stack, fid, guest_seq, _ack = setup()
    port = next(iter(stack.guests.by_port))
    source = memoryview(bytes(range(256)) * 1024)

    def reader(view: memoryview) -> int:
        n = min(len(view), len(source))
        view[:n] = source[:n]
        return n

    now = 2.0
    sent = 0
    pending_acks = 0
    highest = 0
    start = time.perf_counter()
    while sent < segments:
        now += 0.00001
        if stack.tcp_fill(fid, reader, now) is None:
            pass
        for data, _off in stack.take_frames():
            seq = struct.unpack_from("!I", data, 38)[0]
            plen = len(data) - 54
            if plen > 0:
                sent += 1
                highest = (seq + plen) & 0xFFFFFFFF
                pending_acks += 1
                if pending_acks == 2:
                    pending_acks = 0
                    stack.receive_frame(frame(guest_seq, highest, 0x10), port, None, now)
        if pending_acks:
            pending_acks = 0
            stack.receive_frame(frame(guest_seq, highest, 0x10), port, None, now)
        stack.take_actions()
    elapsed = time.perf_counter() - start
    return elapsed / sent * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5, help="best of N (default 5)")
    args = parser.parse_args()
    g2h = min(guest_to_host(args.segments) for _ in range(args.runs))
    h2g = min(host_to_guest(args.segments) for _ in range(args.runs))
    print(f"guest->host, 1460-byte segments: {g2h:6.2f} us/segment through the whole stack")
    print(f"host->guest, 1460-byte segments: {h2g:6.2f} us/segment through the whole stack")


if __name__ == "__main__":
    main()
