"""Shared hypothesis strategies and helpers for the wire tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from hypothesis import strategies as st

from vmlan.wire import WireError

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
ports = st.integers(1, 0xFFFF)
macs = st.binary(min_size=6, max_size=6)
ipv4_addrs = st.binary(min_size=4, max_size=4)
# Sources a host accepts: not multicast (224/4), not limited broadcast.
unicast_ipv4 = ipv4_addrs.filter(lambda a: not 224 <= a[0] <= 239 and a != b"\xff\xff\xff\xff")


def reference_checksum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 section 4.1 verbatim: the slow loop the fast code must agree with."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    s = initial
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid packet with a few bytes overwritten, then possibly cut short or extended."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(0, 4))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(u8)
    # Bias cuts towards the headers, where length checks live.
    cut = draw(st.integers(0, len(data)) | st.integers(0, min(len(data), 64)))
    if draw(st.booleans()):
        del data[cut:]
    if draw(st.booleans()):
        data += draw(st.binary(max_size=16))
    return bytes(data)


def only_wire_errors(call: Callable[[], object]) -> None:
    """Run a decode; a WireError is an accepted outcome, anything else propagates and fails the test."""
    with contextlib.suppress(WireError):
        call()
