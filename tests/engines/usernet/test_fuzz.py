"""The stack fuzzed as a whole (fuzzing.py): it never raises, records no internal error, emits only valid
frames, keeps every account equal to what it holds, and stays bounded."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.engines.usernet.fuzzing import Fuzzer, check_invariants, fix_checksums
from tests.engines.usernet.stacknet import GUEST_MAC, HOST_MAC, StackNet, mac_bytes

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.randoms(use_true_random=False))
def test_fuzz_conversations(rng: random.Random) -> None:
    """Short random conversations, every emitted frame checked with scapy."""
    f = Fuzzer(rng, scapy_check=True)
    for _ in range(40):
        f.step()
        f.check()
    f.wind_down()


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    net = StackNet()
    port = object()
    net.stack.receive_frame(data, port, None, net.now)
    net.stack.receive_frame(memoryview(data), port, None, net.now)
    net.frames()
    check_invariants(net)


@FUZZ
@given(dst_mac=st.sampled_from([HOST_MAC, "52:55:0a:00:02:03", "ff:ff:ff:ff:ff:ff"]),
       ethertype=st.sampled_from([b"\x08\x00", b"\x08\x06"]), body=st.binary(max_size=200))
def test_fuzz_random_payloads_behind_a_valid_ethernet_header(dst_mac: str, ethertype: bytes, body: bytes) -> None:
    net = StackNet()
    port = object()
    frame = bytearray(mac_bytes(dst_mac) + mac_bytes(GUEST_MAC) + ethertype + body)
    net.stack.receive_frame(bytes(frame), port, None, net.now)
    fix_checksums(frame)
    net.stack.receive_frame(bytes(frame), port, None, net.now)
    net.frames()
    net.advance(100)
    net.frames()
    check_invariants(net)


def test_seeded_fuzz_twenty_thousand_frames() -> None:
    """~20,000 frames from three ports with host results and timers in between (fast checks)."""
    f = Fuzzer(random.Random(20260101))
    while f.frames_sent < 20_000:
        f.step()
        if f.frames_sent % 50 == 0:
            f.check()
    f.check()
    f.wind_down()
    c = f.net.stack.counters
    # the fuzzer reached the paths it is meant to: drops of every kind, and real traffic
    assert min(c.bad_ipv4, c.bad_l4, c.bad_source, c.tcp_flows, c.udp_flows, c.arp_replies) > 0, c.as_dict()
