"""A network emulator for one direction of one link, as a sans-IO engine (``-object filter-netem``).

The semantics are Linux netem's (net/sched/sch_netem.c, tc-netem(8)), without its correlation, loss
models, distribution tables and corruption:

* **duplicate**: an offered frame gets a second copy with probability ``duplicate``, decided first.
* **loss**: every copy is then lost independently with probability ``loss``. netem rolls loss for the
  original and sends the duplicate through the qdisc once more, where it meets its own loss roll: the
  same thing. A frame that is both duplicated and lost once still gets through once.
* **limit**: a copy that finds ``limit`` frames (or ``max_bytes`` bytes) already queued is dropped
  (tail drop, ``overlimit``).
* **reorder**: a queued copy is sent at once, without delay or rate, with probability ``reorder``, so
  it overtakes the delayed frames before it (netem's ``reorder PCT`` with its default ``gap 1``).
  Reordering needs a delay for there to be anything to overtake: netem's tc refuses it without one, and
  so does :class:`NetemParams`.
* **delay, jitter**: every other copy waits ``delay`` plus a uniform draw from [-jitter, +jitter]
  (netem's default, table-less distribution), never less than nothing. As in netem, jitter alone
  reorders frames: the queue is kept in deadline order (netem's tfifo), not in arrival order.
* **rate**: serialization at ``rate`` bits/s: a copy leaves ``size * 8 / rate`` seconds after the
  later of its own delayed time and the departure of the last frame queued before it. So it never
  overtakes (and, like netem, the rate is applied after jitter: with a rate, jitter cannot reorder).

Everything is per direction, as a qdisc is: the I/O layer keeps one engine per direction of a port.
Items are opaque (the I/O layer's frame tuples); ``size`` is the frame's length in bytes for ``rate``
and ``max_bytes``. Time is an argument and randomness is injected (``random.Random(seed)``), so a
seeded engine driven by a fake clock is exactly reproducible.

Counters count copies: ``offered + duplicated == passed + lost + overlimit + flushed + len(engine)``
holds at every moment.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_LIMIT = 1000  # tc-netem's default limit, frames
DEFAULT_MAX_BYTES = 32 * 1024 * 1024  # vmlan's own cap on what one direction of one port may hold


@dataclass(frozen=True, slots=True)
class NetemParams:
    """One direction's emulation, in engine units: probabilities 0..1, seconds, bits per second.

    A zero turns a feature off. Raises ValueError for values outside their ranges, and for reordering
    without a delay.
    """

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    rate: float = 0.0
    limit: int = DEFAULT_LIMIT
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"netem: {name} must be a probability 0..1 (got {value!r})")
        for name in ("delay", "jitter", "rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"netem: {name} must be finite and >= 0 (got {value!r})")
        if self.limit < 1 or self.max_bytes < 1:
            raise ValueError(f"netem: limit and max_bytes must be >= 1 (got {self.limit}, {self.max_bytes})")
        if self.reorder and not self.delay:
            raise ValueError("netem: reordering is not possible without a delay")

    @property
    def holds(self) -> bool:
        """True if frames can wait in the queue; False if every survivor leaves in the call that offers it."""
        return bool(self.delay or self.jitter or self.rate)


class NetemCounters:
    """What happened to the frames one engine was offered, counted in copies."""

    __slots__ = ("duplicated", "flushed", "lost", "offered", "overlimit", "passed", "reordered")

    def __init__(self) -> None:
        self.offered = 0  # frames given to offer()
        self.duplicated = 0  # extra copies made
        self.lost = 0  # copies dropped by the loss roll
        self.overlimit = 0  # copies dropped because the queue was full
        self.reordered = 0  # copies sent at once, overtaking delayed ones
        self.passed = 0  # copies handed back by due()
        self.flushed = 0  # copies still queued when the engine was cleared

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class Netem(Generic[T]):
    """One direction's queue: ``offer`` decides each frame's fate, ``due`` hands back those whose time came.

    Copies that leave at once (reordered ones, and every copy when nothing delays) wait in a plain list
    at the head of the queue, like netem's requeued skbs, ahead of the deadline-ordered rest.
    """

    __slots__ = (
        "_bytes",
        "_heap",
        "_holds",
        "_last",
        "_ready",
        "_ready_bytes",
        "_ready_since",
        "_rng",
        "_seq",
        "counters",
        "params",
    )

    def __init__(self, params: NetemParams, rng: random.Random) -> None:
        self.params = params
        self.counters = NetemCounters()
        self._rng = rng
        self._holds = params.holds
        self._heap: list[tuple[float, int, int, T]] = []  # (deadline, arrival order, size, item)
        self._seq = itertools.count()
        self._ready: list[T] = []  # due at once, in arrival order
        self._ready_since = 0.0  # when the oldest of them was offered
        self._ready_bytes = 0
        self._bytes = 0  # everything queued, both lists
        self._last = -math.inf  # latest deadline given under rate= (when the link is busy until)

    def __len__(self) -> int:
        return len(self._heap) + len(self._ready)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def offer(self, item: T, now: float, size: int = 0) -> None:
        """Take one frame at time ``now``: lose it, duplicate it, queue it for later or for at once."""
        p = self.params
        c = self.counters
        c.offered += 1
        copies = 1
        if p.duplicate and self._rng.random() < p.duplicate:
            copies = 2
            c.duplicated += 1
        while copies:
            copies -= 1
            if p.loss and self._rng.random() < p.loss:
                c.lost += 1
                continue
            if len(self._heap) + len(self._ready) >= p.limit or self._bytes + size > p.max_bytes:
                c.overlimit += 1
                continue
            self._bytes += size
            if not self._holds or (p.reorder and self._rng.random() < p.reorder):
                if p.reorder:
                    c.reordered += 1
                if not self._ready:
                    self._ready_since = now
                self._ready.append(item)
                self._ready_bytes += size
                continue
            delay = p.delay
            if p.jitter:
                delay = max(0.0, delay + self._rng.uniform(-p.jitter, p.jitter))
            deadline = now + delay
            if p.rate:
                # netem: the last frame queued is the reference; the link is idle if it has left.
                deadline = max(deadline, self._last) + size * 8 / p.rate
                self._last = deadline
            heapq.heappush(self._heap, (deadline, next(self._seq), size, item))

    def due(self, now: float) -> list[T]:
        """What is due at ``now``: the copies sent at once, then those whose deadline came, in deadline
        order (ties: arrival order)."""
        heap = self._heap
        out = self._ready
        if out:
            self._ready = []
            self._bytes -= self._ready_bytes
            self._ready_bytes = 0
        elif not heap or heap[0][0] > now:
            return []
        else:
            out = []  # not the (empty) ready list itself
        while heap and heap[0][0] <= now:
            _, _, size, item = heapq.heappop(heap)
            self._bytes -= size
            out.append(item)
        self.counters.passed += len(out)
        return out

    def get_timer(self) -> float | None:
        """The earliest deadline queued, or None when nothing is queued."""
        if self._ready:
            return self._ready_since
        return self._heap[0][0] if self._heap else None

    def clear(self) -> int:
        """Drop everything queued (counted as ``flushed``); returns how many copies that was."""
        n = len(self)
        self._heap.clear()
        self._ready = []
        self._ready_bytes = self._bytes = 0
        self.counters.flushed += n
        return n
