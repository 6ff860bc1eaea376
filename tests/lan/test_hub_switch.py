from vmlan.lan import Hub, Port, Switch


class FakePort(Port):
    __slots__ = ("accept", "got")

    def __init__(self, name, accept=True):
        super().__init__(name)
        self.got = []
        self.accept = accept

    def transmit(self, frame, src, offload):
        if self.accept:
            self.got.append(bytes(frame))
        return self.accept


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def mac(n):
    return bytes([2, 0, 0, 0, 0, n])


def frame(dst, src, payload=b"x" * 46):
    return dst + src + b"\x08\x00" + payload


BCAST = b"\xff" * 6


def ports(lan, n):
    out = [FakePort(f"p{i}") for i in range(n)]
    for p in out:
        lan.attach(p)
    return out


def test_hub_floods_to_every_other_port_and_counts():
    hub = Hub(0)
    a, b, c = ports(hub, 3)
    f = frame(mac(2), mac(1))
    hub.input(a, f)
    assert a.got == [] and b.got == [f] and c.got == [f]
    assert (a.counters.rx_frames, a.counters.rx_bytes) == (1, len(f))
    assert (b.counters.tx_frames, b.counters.tx_bytes) == (1, len(f))


def test_runts_are_dropped_and_counted():
    hub = Hub(0)
    a, b = ports(hub, 2)
    hub.input(a, b"\x00" * 13)
    assert b.got == [] and a.counters.rx_dropped == 1 and a.counters.rx_frames == 0


def test_refused_transmit_and_link_down_count_as_drops():
    hub = Hub(0)
    a, b = ports(hub, 2)
    b.accept = False
    hub.input(a, frame(BCAST, mac(1)))
    assert b.counters.tx_dropped == 1 and b.counters.tx_frames == 0
    b.accept = True
    b.link_up = False
    hub.input(a, frame(BCAST, mac(1)))
    assert b.counters.tx_dropped == 2 and b.got == []


def test_switch_learns_unicast_and_keeps_it_from_third_port():
    sw = Switch(0, aging=300, clock=Clock())
    a, b, c = ports(sw, 3)
    sw.input(a, frame(BCAST, mac(1)))  # ARP request: flooded, A learned
    assert len(b.got) == 1 and len(c.got) == 1
    sw.input(b, frame(mac(1), mac(2)))  # reply: only to A, B learned
    assert len(a.got) == 1 and len(c.got) == 1
    for _ in range(5):
        sw.input(a, frame(mac(2), mac(1)))
    assert len(b.got) == 6 and len(c.got) == 1


def test_switch_floods_unknown_and_multicast_never_back_to_ingress():
    sw = Switch(0, clock=Clock())
    a, b, c = ports(sw, 3)
    sw.input(a, frame(mac(9), mac(1)))  # unknown destination
    sw.input(a, frame(b"\x01\x00\x5e\x00\x00\x01", mac(1)))  # multicast
    assert len(b.got) == 2 and len(c.got) == 2 and a.got == []
    sw.input(b, frame(mac(1), mac(1)))  # A seen on B now (moved): destination is ingress -> filtered
    assert sw.filtered == 1 and a.got == [] and len(c.got) == 2


def test_switch_entries_age_out_then_flood():
    clock = Clock()
    sw = Switch(0, aging=10, clock=clock)
    a, b, c = ports(sw, 3)
    sw.input(b, frame(BCAST, mac(2)))
    sw.input(a, frame(mac(2), mac(1)))
    assert len(c.got) == 1
    clock.now = 11
    sw.input(a, frame(mac(2), mac(1)))
    assert len(c.got) == 2


def test_detach_forgets_learned_addresses():
    sw = Switch(0, clock=Clock())
    a, b, c = ports(sw, 3)
    sw.input(b, frame(BCAST, mac(2)))
    sw.detach(b)
    sw.input(a, frame(mac(2), mac(1)))
    assert len(c.got) == 2  # flooded: B's address was forgotten with its port
    assert b.lan is None
