"""The flow table's one timer structure: deadlines honoured, and the heap bounded by live flows."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from vmlan.engines.usernet.flows import INF, Flow, FlowTable


class Recording(Flow):
    __slots__ = ("fired",)

    def __init__(self) -> None:
        super().__init__(None)
        self.fired: list[float] = []

    def on_timer(self, now: float) -> None:
        self.fired.append(now)


def run_due(table: FlowTable, now: float) -> list[Flow]:
    due = table.pop_due(now)
    for flow in due:
        flow.on_timer(now)
    return due


def test_a_flow_fires_once_at_its_latest_deadline() -> None:
    table = FlowTable()
    f = Recording()
    table.add(f)
    table.arm(f, 5.0)
    table.arm(f, 10.0)  # later: no new entry, the current one re-queues it
    assert table.heap_size == 1
    assert run_due(table, 5.0) == []
    assert table.next_deadline() == 10.0
    assert run_due(table, 10.0) == [f]
    assert f.fired == [10.0] and f.deadline == INF
    assert table.next_deadline() is None


def test_moving_a_deadline_earlier_makes_the_old_entry_stale() -> None:
    table = FlowTable()
    f = Recording()
    table.add(f)
    table.arm(f, 10.0)
    table.arm(f, 2.0)
    assert run_due(table, 2.0) == [f]
    assert run_due(table, 10.0) == []  # the stale entry is skipped
    assert f.fired == [2.0]


def test_removed_and_cancelled_flows_never_fire() -> None:
    table = FlowTable()
    a, b = Recording(), Recording()
    table.add(a)
    table.add(b)
    table.arm(a, 1.0)
    table.arm(b, 1.0)
    table.remove(a)
    table.arm(b, INF)
    assert run_due(table, 5.0) == []
    assert len(table) == 1 and table.get(b.fid) is b and table.get(a.fid) is None


def test_guest_flow_ids_are_tracked() -> None:
    from vmlan.engines.usernet.guests import Guest

    g = Guest("port", "p", False)
    table = FlowTable()
    f = Flow(g)
    fid = table.add(f)
    assert g.flows == {fid}
    table.remove(f)
    assert g.flows == set()


def test_ten_thousand_interactive_exchanges_keep_the_heap_bounded_by_live_flows() -> None:
    """The old stack orphaned a keepalive entry per exchange: 3,000 exchanges left 3,000 entries due two
    hours later. Here a connection alternates a short timer (delayed ACK) and a long one (keepalive)."""
    table = FlowTable()
    flows = [Recording() for _ in range(10)]
    for f in flows:
        table.add(f)
    now = 0.0
    rng = random.Random(1)
    for _ in range(10_000):
        now += 0.01
        f = rng.choice(flows)
        table.arm(f, now + 7200.0)  # keepalive re-armed by the exchange
        table.arm(f, now + 0.04)  # delayed ACK due first
        run_due(table, now)
        assert table.heap_size <= 2 * len(table) + 64
    assert table.compactions > 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.sampled_from(["arm", "remove", "run"]), st.floats(0, 100)),
                max_size=300))
def test_model_every_live_armed_flow_fires_when_due(ops: list[tuple[int, str, float]]) -> None:
    table = FlowTable()
    flows = [Recording() for _ in range(10)]
    live = set()
    for f in flows:
        table.add(f)
        live.add(f.fid)
    expected: dict[int, float] = {}
    now = 0.0
    for index, op, value in ops:
        f = flows[index]
        if op == "arm" and f.fid in live:
            table.arm(f, now + value)
            expected[f.fid] = now + value
        elif op == "remove":
            table.remove(f)
            live.discard(f.fid)
            expected.pop(f.fid, None)
        else:
            now += value
            fired = {x.fid for x in run_due(table, now)}
            want = {fid for fid, d in expected.items() if d <= now}
            assert fired == want
            for fid in want:
                del expected[fid]
        assert table.heap_size <= 2 * len(table) + 64
