"""MAC addresses as libvirt reads, writes and invents them (src/util/virmacaddr.c).

virMacAddrParse takes six groups of one or two hex digits separated by ':' and then stops at any
character <= ' ' (so ``52:54:00:00:00:01 junk`` is accepted as ...:01, as libvirt does). Formatting is
always ``%02x`` lower case. A generated address is libvirt's QEMU prefix 52:54:00 plus three random
bytes; the random source is injectable so tests are repeatable.
"""

from __future__ import annotations

import random
import re
from typing import Protocol

_GROUP = re.compile(r"[0-9A-Fa-f]{1,2}")
_HEX = frozenset("0123456789abcdefABCDEF")

QEMU_PREFIX = b"\x52\x54\x00"


class RandomBytes(Protocol):
    """Anything with ``randbytes`` (``random.Random`` or ``random.SystemRandom``)."""

    def randbytes(self, n: int, /) -> bytes: ...


def parse_mac(text: str) -> bytes | None:
    """The six bytes of ``text`` or None when libvirt would refuse it."""
    out = bytearray()
    pos = 0
    for i in range(6):
        if pos >= len(text) or text[pos] not in _HEX:
            return None
        m = _GROUP.match(text, pos)
        assert m is not None
        end = m.end()
        if end < len(text) and text[end] in _HEX:  # three or more digits
            return None
        out.append(int(m.group(), 16))
        if i == 5:
            return bytes(out) if end == len(text) or text[end] <= " " else None
        if end >= len(text) or text[end] != ":":
            return None
        pos = end + 1
    return None  # pragma: no cover - the loop always returns


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def is_multicast(mac: bytes) -> bool:
    return bool(mac[0] & 1)


def generate_mac(rng: RandomBytes | None = None) -> bytes:
    """52:54:00:xx:xx:xx with three random bytes (virMacAddrGenerate with the QEMU prefix)."""
    source = rng if rng is not None else random.SystemRandom()
    return QEMU_PREFIX + source.randbytes(3)
