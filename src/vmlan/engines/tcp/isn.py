"""Unpredictable initial sequence numbers (RFC 6528) and ephemeral ports (RFC 6056).

An ISN or a source port an off-path attacker can guess lets it inject into, or reset, a connection it
cannot see (RFC 6528 section 1). A guest is not off-path for its own connections, but several guests
share one stack, and hostfwd connections start from our side: neither may be guessable from another
connection's numbers. So both are a keyed hash of the 4-tuple (different for every tuple, unrelated
across tuples without the key), plus, for the ISN, a clock that keeps one tuple's successive ISNs
increasing so a new incarnation's segments are not mistaken for an old one's.

Sans-IO like the rest of the engine: the clock is the ``now`` the caller passes (seconds), never read
here; the key is random at construction unless given (tests give it).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Final

__all__ = ["EphemeralPorts", "IsnGenerator"]

_TICKS_PER_SECOND: Final = 250_000  # RFC 6528 / RFC 9293 3.4.1: M is a 4-microsecond timer
_KEY_BYTES: Final = 16


def _check_key(key: bytes | None) -> bytes:
    if key is None:
        return os.urandom(_KEY_BYTES)
    if len(key) < _KEY_BYTES:
        raise ValueError(f"key of {len(key)} bytes: need at least {_KEY_BYTES}")
    return bytes(key[:64])  # blake2b keys are at most 64 bytes


def _tuple_bytes(local: bytes, local_port: int, remote: bytes, remote_port: int) -> bytes:
    # The lengths first: a 4-byte and a 16-byte address must not concatenate into another pair's bytes.
    ports = local_port.to_bytes(2, "big") + remote_port.to_bytes(2, "big")
    return bytes((len(local), len(remote))) + local + remote + ports


class IsnGenerator:
    """``ISN = M + F(localip, localport, remoteip, remoteport, secretkey)`` (RFC 6528 section 3).

    ``F`` is BLAKE2b keyed with a random 16-byte secret, truncated to 32 bits; ``M`` counts 4 us ticks
    of the caller's clock, so one tuple's ISN advances 2**32 in about 4.8 hours, as RFC 9293's clock.
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes | None = None) -> None:
        self._key = _check_key(key)

    def isn(self, local: bytes, local_port: int, remote: bytes, remote_port: int, now: float) -> int:
        f = hashlib.blake2b(_tuple_bytes(local, local_port, remote, remote_port), digest_size=4, key=self._key)
        return (int(now * _TICKS_PER_SECOND) + int.from_bytes(f.digest(), "big")) & 0xFFFFFFFF


class EphemeralPorts:
    """Source ports for connections we open (hostfwd dialing a guest): RFC 6056's algorithm 4.

    Each (local address, remote address, remote port) gets a keyed starting offset into
    ``low..high``; a small table of counters, indexed by a second keyed hash, moves it on after every
    pick, so consecutive connections to one destination get different ports while connections to other
    destinations reveal nothing about them. ``in_use(port)`` is the caller's predicate (its connection
    table); taken ports are skipped, and None means the whole range is taken.
    """

    __slots__ = ("_key", "_table", "high", "low")

    def __init__(self, low: int = 49152, high: int = 65535, *, key: bytes | None = None, table_size: int = 256) -> None:
        if not 1 <= low <= high <= 0xFFFF:
            raise ValueError(f"port range {low}..{high} outside 1..65535")
        if table_size < 1:
            raise ValueError("table_size must be at least 1")
        self.low = low
        self.high = high
        self._key = _check_key(key)
        self._table = [int.from_bytes(os.urandom(2), "big") for _ in range(table_size)]

    def pick(self, local: bytes, remote: bytes, remote_port: int, in_use: Callable[[int], bool]) -> int | None:
        """A free port for a connection from ``local`` to ``remote:remote_port``, or None."""
        digest = hashlib.blake2b(_tuple_bytes(local, 0, remote, remote_port), digest_size=8, key=self._key).digest()
        offset = int.from_bytes(digest[:4], "big")
        index = int.from_bytes(digest[4:], "big") % len(self._table)
        table = self._table
        count = self.high - self.low + 1
        for _ in range(count):
            port = self.low + (offset + table[index]) % count
            table[index] += 1
            if not in_use(port):
                return port
        return None
