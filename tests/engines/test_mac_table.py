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
