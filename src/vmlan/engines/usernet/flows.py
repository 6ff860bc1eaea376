"""One flow table for everything the stack keeps per conversation, and one timer structure for it.

Every TCP connection, UDP mapping, ping flow, UDP forward session and service timer is a :class:`Flow`
with an id the I/O layer uses to find its socket (actions carry ids, never objects). All their
deadlines live in ONE heap of ``(deadline, seq, flow)`` entries, lazily invalidated:

* a flow has at most one *current* entry (``flow.armed`` is its deadline); moving the deadline later
  just records it, and the current entry, when it comes due, re-queues the flow at the later time;
* moving it earlier pushes a new entry and makes the old one stale;
* stale entries are skipped when popped, and when they outnumber live flows the heap is rebuilt from
  the live flows alone.

So the heap never holds more than ``2 * flows + 64`` entries: the structure is bounded by live flows
(the old stack pushed a new keepalive entry on every interactive exchange and kept them for two hours).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmlan.engines.usernet.guests import Guest

__all__ = ["INF", "Flow", "FlowTable"]

INF = float("inf")
_SLACK = 64


class Flow:
    """Base of every flow: an id, the guest it belongs to (None for stack-wide timers), a deadline."""

    __slots__ = ("armed", "deadline", "fid", "guest")

    def __init__(self, guest: Guest | None) -> None:
        self.fid = 0  # set by FlowTable.add
        self.guest = guest
        self.deadline = INF  # when on_timer() wants to run
        self.armed = INF  # the deadline of this flow's current heap entry

    def on_timer(self, now: float) -> None:
        """Called once ``deadline`` has passed (the deadline is reset to INF first)."""


class FlowTable:
    __slots__ = ("_flows", "_heap", "_next_id", "_seq", "compactions", "low")

    def __init__(self) -> None:
        self._flows: dict[int, Flow] = {}
        self._heap: list[tuple[float, int, Flow]] = []
        # At most the earliest heap entry's deadline, so at most next_deadline(): a caller holding a timer for
        # ``t <= low`` knows without a call that nothing earlier is due. Pops only raise the true minimum, so
        # only a push lowers it; next_deadline() tightens it.
        self.low = INF
        self._next_id = 1
        self._seq = 0
        self.compactions = 0

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[Flow]:
        return iter(list(self._flows.values()))

    def get(self, fid: int) -> Flow | None:
        return self._flows.get(fid)

    def add(self, flow: Flow) -> int:
        fid = self._next_id
        self._next_id += 1
        flow.fid = fid
        self._flows[fid] = flow
        if flow.guest is not None:
            flow.guest.flows.add(fid)
        return fid

    def remove(self, flow: Flow) -> None:
        if self._flows.pop(flow.fid, None) is flow and flow.guest is not None:
            flow.guest.flows.discard(flow.fid)
        flow.deadline = INF

    def live(self, flow: Flow) -> bool:
        return self._flows.get(flow.fid) is flow

    def arm(self, flow: Flow, deadline: float) -> None:
        """Run ``flow.on_timer`` at ``deadline`` (replacing any earlier wish); INF cancels."""
        flow.deadline = deadline
        if deadline < flow.armed:
            flow.armed = deadline
            self._seq += 1
            heapq.heappush(self._heap, (deadline, self._seq, flow))
            if deadline < self.low:
                self.low = deadline
            if len(self._heap) > 2 * len(self._flows) + _SLACK:
                self._compact()

    def _compact(self) -> None:
        self.compactions += 1
        heap = []
        for flow in self._flows.values():
            if flow.deadline < INF:
                self._seq += 1
                flow.armed = flow.deadline
                heap.append((flow.deadline, self._seq, flow))
            else:
                flow.armed = INF
        heapq.heapify(heap)
        self._heap = heap

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            deadline, _seq, flow = heap[0]
            if flow.armed == deadline and self._flows.get(flow.fid) is flow:
                self.low = deadline
                return deadline
            heapq.heappop(heap)  # stale
        self.low = INF
        return None

    def pop_due(self, now: float) -> list[Flow]:
        """The flows whose deadline has passed, each once, deadline reset to INF."""
        heap = self._heap
        due: list[Flow] = []
        while heap and heap[0][0] <= now:
            deadline, _seq, flow = heapq.heappop(heap)
            if flow.armed != deadline or self._flows.get(flow.fid) is not flow:
                continue
            flow.armed = INF
            if flow.deadline <= now:
                flow.deadline = INF
                due.append(flow)
            elif flow.deadline < INF:
                self.arm(flow, flow.deadline)
        return due

    @property
    def heap_size(self) -> int:
        return len(self._heap)
