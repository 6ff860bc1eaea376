"""The netem engine driven in memory with a fake clock and seeded randomness."""

import itertools
import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmlan.engines.netem import Netem, NetemParams


def engine(seed=1, **kw):
    return Netem(NetemParams(**kw), random.Random(seed))


def run(net, arrivals):
    """Offer ``(time, item, size)`` arrivals in time order and drain by jumping the clock to each deadline.

    Like the I/O layer, frames due at once leave in the call that offers them; a deadline equal to an
    arrival time is served first. Returns ``[(departure time, item)]``.
    """
    out = []
    i = 0
    while True:
        timer = net.get_timer()
        arrival = arrivals[i][0] if i < len(arrivals) else None
        if timer is not None and (arrival is None or timer <= arrival):
            out.extend((timer, item) for item in net.due(timer))
        elif arrival is not None:
            now, item, size = arrivals[i]
            i += 1
            net.offer(item, now, size)
            out.extend((now, item) for item in net.due(now))
        else:
            return out


def within(count, n, p, sigmas=5):
    """``count`` successes of ``n`` trials is within ``sigmas`` standard deviations of ``n * p``."""
    sd = math.sqrt(n * p * (1 - p))
    return abs(count - n * p) <= sigmas * sd


def balanced(net):
    c = net.counters
    return c.offered + c.duplicated == c.passed + c.lost + c.overlimit + c.flushed + len(net)


def test_loss_rate_and_order_without_delay():
    net = engine(loss=0.02)
    n = 100_000
    out = run(net, [(i * 1e-4, i, 60) for i in range(n)])
    c = net.counters
    assert within(c.lost, n, 0.02)
    assert c.passed == len(out) == n - c.lost
    items = [item for _, item in out]
    assert items == sorted(items) and len(set(items)) == len(items)
    assert all(t == i * 1e-4 for t, i in out)  # nothing waits: no delay was asked for
    assert c.duplicated == c.reordered == c.overlimit == 0 and balanced(net)


def test_duplicate_rate_copies_follow_each_other():
    net = engine(seed=2, duplicate=0.1)
    n = 50_000
    out = [item for _, item in run(net, [(float(i), i, 60) for i in range(n)])]
    twice = [item for item, k in Counter(out).items() if k == 2]
    assert net.counters.duplicated == len(twice) and within(len(twice), n, 0.1)
    assert set(Counter(out).values()) == {1, 2} and sorted(out) == out
    assert len(out) == n + len(twice) and balanced(net)


def test_loss_and_duplicate_are_independent_percentages():
    pl, pd = 0.3, 0.4
    net = engine(seed=3, loss=pl, duplicate=pd)
    n = 40_000
    copies = Counter(item for _, item in run(net, [(float(i), i, 60) for i in range(n)]))
    histogram = Counter(copies.get(i, 0) for i in range(n))
    expected = {
        0: (1 - pd) * pl + pd * pl * pl,
        1: (1 - pd) * (1 - pl) + pd * 2 * pl * (1 - pl),
        2: pd * (1 - pl) ** 2,
    }
    for k, p in expected.items():
        assert within(histogram[k], n, p), (k, histogram[k], n * p)
    c = net.counters
    assert within(c.duplicated, n, pd) and within(c.lost, n + c.duplicated, pl) and balanced(net)


def test_delay_is_exact_without_jitter():
    net = engine(delay=0.05)
    out = run(net, [(i * 0.001, i, 100) for i in range(200)])
    assert [item for _, item in out] == list(range(200))
    assert all(t == pytest.approx(i * 0.001 + 0.05, abs=1e-12) for t, i in out)


def test_jitter_stays_within_bounds_and_is_uniform():
    net = engine(seed=4, delay=0.1, jitter=0.02)
    n = 20_000
    out = run(net, [(i * 0.001, i, 100) for i in range(n)])
    waits = [t - i * 0.001 for t, i in out]
    assert len(waits) == n
    assert all(0.08 - 1e-9 <= w <= 0.12 + 1e-9 for w in waits)
    assert min(waits) < 0.0805 and max(waits) > 0.1195
    assert sum(waits) / n == pytest.approx(0.1, abs=0.0005)
    # Uniform: each quarter of [-jitter, +jitter] holds a quarter of the draws.
    quarters = Counter(min(3, int((w - 0.08) / 0.01)) for w in waits)
    assert all(within(quarters[q], n, 0.25) for q in range(4))
    # As in netem (tfifo), jitter alone reorders: departures follow deadlines, not arrivals.
    items = [item for _, item in out]
    assert items != sorted(items)
    assert [t for t, _ in out] == sorted(t for t, _ in out)


def test_jitter_larger_than_delay_never_goes_below_zero():
    net = engine(seed=5, delay=0.005, jitter=0.02)
    out = run(net, [(float(i), i, 60) for i in range(2000)])
    waits = [t - i for t, i in out]
    assert min(waits) == 0.0 and max(waits) <= 0.025 + 1e-9
    assert within(sum(1 for w in waits if w == 0.0), 2000, 15 / 40)


def test_reorder_sends_a_share_at_once_and_it_overtakes():
    net = engine(seed=6, delay=0.05, reorder=0.25)
    n = 20_000
    out = run(net, [(i * 0.001, i, 100) for i in range(n)])
    at_once = [i for t, i in out if t == i * 0.001]
    delayed = [i for t, i in out if t == pytest.approx(i * 0.001 + 0.05, abs=1e-12)]
    assert len(at_once) + len(delayed) == n == len(out)
    assert net.counters.reordered == len(at_once) and within(len(at_once), n, 0.25)
    position = {item: k for k, (_, item) in enumerate(out)}
    overtakes = sum(1 for i in at_once if i > 0 and position[i] < position[i - 1])
    assert overtakes > 0.9 * len(at_once) * 0.75  # nearly every one passes a delayed predecessor
    assert sorted(delayed) == [i for _, i in out if i in set(delayed)]  # the delayed keep their order


def test_reorder_needs_a_delay():
    with pytest.raises(ValueError, match="reordering is not possible without a delay"):
        NetemParams(reorder=0.1)
    with pytest.raises(ValueError, match="reordering"):
        NetemParams(reorder=0.1, jitter=0.01)


def test_rate_spaces_frames_by_their_serialization_time():
    net = engine(rate=8e6)  # 1 byte per microsecond
    out = run(net, [(0.0, i, 1000) for i in range(5)] + [(1.0, 5, 500)])
    assert [i for _, i in out] == list(range(6))
    expected = [0.001, 0.002, 0.003, 0.004, 0.005, 1.0005]  # the last finds the link idle
    assert [t for t, _ in out] == pytest.approx(expected, abs=1e-12)


def test_rate_after_delay_and_jitter_never_reorders():
    net = engine(seed=7, rate=8e6, delay=0.01)
    out = run(net, [(0.0, 0, 1000), (0.0, 1, 1000), (0.0105, 2, 1000)])
    assert [t for t, _ in out] == pytest.approx([0.011, 0.012, 0.0215], abs=1e-12)
    net = engine(seed=7, rate=1e9, delay=0.05, jitter=0.04)
    out = run(net, [(i * 1e-4, i, 1500) for i in range(5000)])
    assert [i for _, i in out] == list(range(5000)) and net.counters.overlimit == 0
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(out)]
    assert min(gaps) >= 1500 * 8 / 1e9 - 1e-12


def test_limit_tail_drops_and_counts():
    net = engine(delay=1.0, limit=10)
    for i in range(15):
        net.offer(i, 0.0, 60)
    assert len(net) == 10 and net.counters.overlimit == 5
    assert net.due(0.999) == [] and net.due(1.0) == list(range(10))
    net.offer(99, 1.0, 60)
    assert len(net) == 1 and net.counters.passed == 10 and balanced(net)


def test_byte_cap_drops_too():
    net = engine(delay=1.0, max_bytes=3000)
    for i in range(5):
        net.offer(i, 0.0, 1000)
    assert len(net) == 3 and net.queued_bytes == 3000 and net.counters.overlimit == 2
    net.due(1.0)
    assert net.queued_bytes == 0


def test_reordered_copies_count_against_the_limit_while_queued():
    net = engine(seed=8, delay=1.0, reorder=1.0, limit=2)
    for i in range(3):
        net.offer(i, 0.0, 60)
    assert net.counters.reordered == 2 and net.counters.overlimit == 1
    assert net.due(0.0) == [0, 1]


def test_timer_and_clear():
    net = engine(delay=0.2, jitter=0.1)
    assert net.get_timer() is None
    net.offer("a", 1.0, 60)
    net.offer("b", 1.0, 60)
    first = net.get_timer()
    assert first is not None and 1.1 <= first <= 1.3
    assert net.clear() == 2 and net.get_timer() is None and net.counters.flushed == 2 and balanced(net)


def test_seeded_runs_repeat_and_seeds_differ():
    def outcome(seed):
        net = engine(seed=seed, loss=0.1, duplicate=0.1, delay=0.01, jitter=0.005, reorder=0.2)
        return run(net, [(i * 0.001, i, 100) for i in range(2000)])

    assert outcome(11) == outcome(11)
    assert outcome(11) != outcome(12)


def test_certain_loss_and_no_options():
    assert run(engine(loss=1.0), [(0.0, 1, 60), (1.0, 2, 60)]) == []
    assert run(engine(), [(0.0, 1, 60), (0.0, 2, 60)]) == [(0.0, 1), (0.0, 2)]


@pytest.mark.parametrize(
    "kw",
    [
        {"loss": -0.1},
        {"loss": 1.5},
        {"duplicate": math.nan},
        {"delay": -1.0},
        {"jitter": math.inf},
        {"rate": math.nan},
        {"limit": 0},
        {"max_bytes": 0},
    ],
)
def test_params_refuse_out_of_range(kw):
    with pytest.raises(ValueError):
        NetemParams(**kw)


# -- properties ----------------------------------------------------------------------------------------
def timing():
    return st.fixed_dictionaries(
        {
            "delay": st.sampled_from([0.0, 0.001, 0.05]),
            "jitter": st.sampled_from([0.0, 0.0005, 0.03]),
            "rate": st.sampled_from([0.0, 1e6, 1e9]),
        }
    )


def arrivals():
    gaps = st.lists(st.sampled_from([0.0, 0.0001, 0.001, 0.01]), min_size=1, max_size=200)
    return gaps.map(lambda gs: [(sum(gs[: i + 1]), i, 60 + 7 * i) for i in range(len(gs))])


@settings(max_examples=200, deadline=None)
@given(timing(), st.sampled_from([0.0, 0.3, 1.0]), arrivals(), st.integers(0, 2**32))
def test_nothing_lost_or_duplicated_unless_asked(kw, reorder, frames, seed):
    if reorder and not kw["delay"]:
        reorder = 0.0
    net = engine(seed=seed, reorder=reorder, limit=len(frames), **kw)
    out = run(net, frames)
    assert sorted(item for _, item in out) == [item for _, item, _ in frames]
    assert len(net) == 0 and net.counters.lost == net.counters.duplicated == 0 and balanced(net)
    sent = {item: t for t, item, _ in frames}
    assert all(t >= sent[item] for t, item in out)  # nothing leaves before it arrived
    if not reorder and not kw["jitter"]:
        assert [item for _, item in out] == [item for _, item, _ in frames]  # nothing to reorder them


@settings(max_examples=200, deadline=None)
@given(timing(), st.floats(0, 1), st.floats(0, 1), arrivals(), st.integers(0, 2**32), st.integers(1, 50))
def test_counters_always_balance(kw, loss, duplicate, frames, seed, limit):
    net = engine(seed=seed, loss=loss, duplicate=duplicate, limit=limit, **kw)
    out = run(net, frames)
    copies = Counter(item for _, item in out)
    assert set(copies) <= {item for _, item, _ in frames}
    assert max(copies.values(), default=0) <= (2 if duplicate else 1)
    if not loss and limit >= 2 * len(frames):
        assert set(copies) == {item for _, item, _ in frames}  # loss=0: every frame gets through
    assert net.counters.passed == len(out) and balanced(net)
