"""Micro-benchmark: what ``filter-netem`` adds to a frame crossing one hub, in-process, one core.

Run with ``python -m benchmarks.netem`` from the repository root.

Two in-memory ports on a hub (transmit accepts and forgets); frames go from ``a`` to ``b`` through
``Hub.input`` as memoryviews of one reused buffer, as a link's read loop hands them over. Cases:

* ``no filter``: the hub alone.
* ``other direction``: netem with ``queue=tx`` on ``a`` (the frames are rx on ``a``: no hook at all).
* ``tx on b, nothing set``: netem on ``b``'s tx with no option: the hook, the engine, straight on.
* ``loss=1``: the same with 1 % loss (one random draw).
* ``delay=1``: every frame copied and queued; the loop runs the timer, and the figure includes the
  hand-back when the timer fires (the frames pass in batches of about a millisecond).

Prints ns per frame (the median of 5 runs) for 64-byte and 1500-byte frames.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Coroutine
from typing import Any

from vmlan.config.filters import NetemConfig
from vmlan.io.netem import NetemFilter
from vmlan.lan import Hub, Port
from vmlan.wire import BytesLike
from vmlan.wire.vnet import Offload


class Sink(Port):
    __slots__ = ("n",)

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.n = 0

    def transmit(self, frame: BytesLike, src: Port, offload: Offload | None) -> bool:
        self.n += 1
        return True


CASES: dict[str, tuple[str, dict[str, object]] | None] = {
    "no filter": None,  # ns per frame offered, all cases
    "other direction": ("a", {"queue": "tx"}),
    "tx on b, nothing set": ("b", {"queue": "tx"}),
    "loss=1": ("b", {"queue": "tx", "loss": 1.0, "seed": 1}),
    "delay=1": ("b", {"queue": "tx", "delay": 1.0, "limit": 1_000_000}),
}


async def one_run(case: str, size: int, frames: int) -> float:
    loop = asyncio.get_running_loop()
    hub = Hub(0)
    a, b = Sink("a"), Sink("b")
    hub.attach(a)
    hub.attach(b)
    spec = CASES[case]
    filt = None
    if spec is not None:
        where, kw = spec
        filt = NetemFilter(NetemConfig("n", where, **kw), loop)  # type: ignore[arg-type]
        filt.attach(a if where == "a" else b)
    buf = bytearray(b"\xff" * 6 + b"\x02" * 6 + b"\x88\xb5" + b"\0" * (size - 14))
    view = memoryview(buf)
    start = time.perf_counter()
    for _ in range(frames):
        hub.input(a, view)
    while filt is not None and any(counts["queued"] for counts in filt.as_dict().values()):
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - start
    if filt is not None:
        filt.close()
    return elapsed / frames * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (vmlan's loop when installed)")
    args = parser.parse_args()
    def runner(coro: Coroutine[Any, Any, float]) -> float:
        if args.uvloop:
            import uvloop

            return uvloop.run(coro)
        return asyncio.run(coro)

    print(f"{'case':<24} {'64 B':>10} {'1500 B':>10}   (ns per frame, median of 5)")
    for case in CASES:
        cells = []
        for size in (64, 1500):
            runs = [runner(one_run(case, size, args.frames)) for _ in range(5)]
            cells.append(f"{statistics.median(runs):10.0f}")
        print(f"{case:<24} {' '.join(cells)}")


if __name__ == "__main__":
    main()
