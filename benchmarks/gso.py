"""Time vmlan.wire.gso.software_offload on the frames a TAP with vnet headers hands over.

Run with ``python -m benchmarks.gso`` from the repository root (not collected by pytest). The headline
figure is the first line: microseconds to cut one 64 KiB TCPv4 GSO frame (Ethernet + IPv4 + TCP with
timestamps, 65470 payload bytes) at gso_size 1448 into 46 complete frames. Best of 5 repeats of an
autoranged loop; the machine's other load shows as noise, so compare figures from one run.
"""

from __future__ import annotations

import argparse
import functools
import struct
import timeit
from collections.abc import Callable

from vmlan.wire import gso
from vmlan.wire.checksum import internet_checksum, pseudo_header_sum_v4
from vmlan.wire.gso import software_offload
from vmlan.wire.vnet import FLAG_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_UDP_L4, Offload

_ETH = bytes.fromhex("525500000202525400123456") + b"\x08\x00"
_SRC, _DST = bytes((10, 0, 2, 15)), bytes((93, 184, 216, 34))


def _ipv4(proto: int, l4: bytes) -> bytes:
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x4000, 64, proto, 0, _SRC, _DST))
    struct.pack_into("!H", header, 10, internet_checksum(header))
    return _ETH + bytes(header) + l4


def tcp_gso_frame(frame_len: int = 65536) -> bytes:
    """A TSO super-frame of ``frame_len`` bytes, its TCP checksum field holding the pseudo-header sum."""
    data_len = frame_len - 14 - 20 - 32
    options = bytes.fromhex("0101080a") + struct.pack("!II", 123456, 654321)
    psum = pseudo_header_sum_v4(_SRC, _DST, 6, 32 + data_len)
    tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1, 1, 8 << 4, 0x18, 502, psum, 0) + options
    return _ipv4(6, tcp + bytes(range(256)) * (data_len // 256) + bytes(data_len % 256))


def udp_gso_frame(data_len: int) -> bytes:
    psum = pseudo_header_sum_v4(_SRC, _DST, 17, 8 + data_len)
    return _ipv4(17, struct.pack("!HHHH", 5000, 5001, 8 + data_len, psum) + bytes(data_len))


def best_us(call: Callable[[], object]) -> float:
    timer = timeit.Timer(call)
    number, _ = timer.autorange()
    return min(timer.repeat(5, number)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="also USO, UFO, checksum-only and the pure-Python path")
    args = parser.parse_args()

    frame = tcp_gso_frame()
    tso = Offload(FLAG_NEEDS_CSUM, GSO_TCPV4, 66, 1448, 34, 16)
    segments = software_offload(frame, tso)
    assert len(segments) == 46 and all(len(s) <= 1514 for s in segments)
    us = best_us(lambda: software_offload(frame, tso))
    print(f"TCPv4 GSO 64 KiB frame at gso_size 1448 -> {len(segments)} frames: {us:.1f} us ({us / 46:.2f} us/frame)")
    if not args.all:
        return

    cases: list[tuple[str, bytes, Offload]] = [
        ("TCPv4 GSO 16 KiB at 1448", tcp_gso_frame(16384), tso),
        ("TCPv4 GSO 1514 B (fits one frame)", tcp_gso_frame(1514), tso),
        ("USO 8 KiB at 1472", udp_gso_frame(8192), Offload(FLAG_NEEDS_CSUM, GSO_UDP_L4, 42, 1472, 34, 6)),
        ("UFO 8 KiB at 1480", udp_gso_frame(8192), Offload(FLAG_NEEDS_CSUM, GSO_UDP, 42, 1480, 34, 6)),
        ("NEEDS_CSUM only, 1514 B TCP", tcp_gso_frame(1514), Offload(FLAG_NEEDS_CSUM, GSO_NONE, 0, 0, 34, 16)),
    ]
    for name, data, offload in cases:
        count = len(software_offload(data, offload))
        print(f"{name} -> {count} frames: {best_us(functools.partial(software_offload, data, offload)):.1f} us")
    saved = gso._piece_sums
    gso._piece_sums = gso._piece_sums_python
    try:
        us = best_us(lambda: software_offload(frame, tso))
    finally:
        gso._piece_sums = saved
    print(f"TCPv4 GSO 64 KiB at 1448, payload sums piece by piece (no batched numpy): {us:.1f} us")


if __name__ == "__main__":
    main()
