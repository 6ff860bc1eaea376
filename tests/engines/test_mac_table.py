from vmlan.engines.switch import MacTable

A, B = b"\x02\x00\x00\x00\x00\x0a", b"\x02\x00\x00\x00\x00\x0b"


def test_learns_moves_and_ages_out():
    t: MacTable[str] = MacTable(aging=10)
    assert t.lookup(A, 0) is None
    t.learn(A, "p1", 0)
    assert t.lookup(A, 5) == "p1"
    t.learn(A, "p2", 6)
    assert t.lookup(A, 15) == "p2"
    assert t.lookup(A, 16.5) is None
    assert len(t) == 0


def test_expire_returns_next_deadline_and_forget_port():
    t: MacTable[str] = MacTable(aging=10)
    t.learn(A, "p1", 0)
    t.learn(B, "p2", 4)
    assert t.expire(3) == 10
    assert t.expire(11) == 14 and t.lookup(A, 11) is None
    t.forget_port("p2")
    assert t.lookup(B, 11) is None


def test_capacity_bound_refuses_new_sources():
    t: MacTable[int] = MacTable(aging=100, capacity=2)
    t.learn(A, 1, 0)
    t.learn(B, 2, 0)
    t.learn(b"\x02" * 6, 3, 1)
    assert len(t) == 2 and t.learn_refused == 1
    t.learn(b"\x02" * 6, 3, 200)  # everything older has aged out: room again
    assert t.lookup(b"\x02" * 6, 200) == 3


def test_a_full_table_is_not_rescanned_for_every_new_source():
    """A guest spraying source MACs must not make each frame scan the whole table."""
    class Counting(MacTable[int]):
        scans = 0

        def expire(self, now: float) -> float | None:
            Counting.scans += 1
            return super().expire(now)

    t = Counting(aging=300, capacity=64)
    for i in range(5000):
        t.learn(i.to_bytes(6, "big"), i, now=i * 0.0001)  # 5000 sources in half a second
    assert len(t) == 64 and t.learn_refused == 5000 - 64
    assert Counting.scans <= 1
