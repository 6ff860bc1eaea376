"""Re-measure the Internet checksum candidates behind vmlan.wire.checksum's choice.

Run with ``python -m benchmarks.checksum`` from the repository root; not
collected by pytest.  Prints microseconds per call (best of several runs) for
64 B, 1500 B and 64 KiB buffers.
"""

from __future__ import annotations

import array
import os
import sys
import timeit
from collections.abc import Callable

from tests.wire.strategies import reference_checksum

from vmlan.wire import checksum


def mod_whole(data: bytes) -> int:
    x = int.from_bytes(data, "big")
    if len(data) & 1:
        x <<= 8
    r = x % 0xFFFF
    return 0xFFFF if r == 0 and x else r


def fold_halves(data: bytes) -> int:
    n = len(data)
    x = int.from_bytes(data, "big")
    if n & 1:
        x <<= 8
        n += 1
    bits = n * 8
    while bits > 64:
        half = ((bits >> 1) + 15) & ~15
        x = (x >> half) + (x & ((1 << half) - 1))
        bits = half + 16
    r = x % 0xFFFF
    return 0xFFFF if r == 0 and x else r


def _fold(s: int, swap: bool) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ((s & 0xFF) << 8 | s >> 8) if swap else s


def array_sum(data: bytes) -> int:
    padded = data + b"\0" if len(data) & 1 else data
    return _fold(sum(array.array("H", padded)), sys.byteorder == "little")


def memoryview_sum(data: bytes) -> int:
    padded = data + bytes(-len(data) % 4)
    return _fold(sum(memoryview(padded).cast("I")), sys.byteorder == "little")


def numpy_u16(data: bytes) -> int:
    import numpy as np

    padded = data + b"\0" if len(data) & 1 else data
    return _fold(int(np.frombuffer(padded, dtype=">u2").sum(dtype=np.uint64)), False)


def main() -> None:
    candidates: dict[str, Callable[[bytes], int]] = {
        "per-word loop (reference)": lambda d: ~reference_checksum(d) & 0xFFFF,
        "from_bytes % 0xFFFF": mod_whole,
        "from_bytes, fold by halves": fold_halves,
        "array('H') + sum": array_sum,
        "memoryview.cast('I') + sum": memoryview_sum,
        "2 KiB chunks + sum + % (vmlan)": checksum._sum16_python,
    }
    numpy_sum = checksum._make_numpy_sum16()
    if numpy_sum is not None:
        candidates["numpy '>u2' sum"] = numpy_u16
        candidates["numpy '<u4' sum (vmlan)"] = numpy_sum
    candidates["internet_checksum() as dispatched"] = checksum.internet_checksum
    sizes = (64, 1500, 65536)
    print(f"{'candidate':34}" + "".join(f"{n:>10} B" for n in sizes) + "   (us per call)")
    for name, func in candidates.items():
        row = []
        for size in sizes:
            data = os.urandom(size)
            if func is not checksum.internet_checksum:
                assert func(data) == checksum._sum16_python(data), name
            timer = timeit.Timer(lambda func=func, data=data: func(data))
            number, _ = timer.autorange()
            row.append(min(timer.repeat(5, number)) / number * 1e6)
        print(f"{name:34}" + "".join(f"{t:12.2f}" for t in row))


if __name__ == "__main__":
    main()
