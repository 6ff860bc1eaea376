"""The learning switch's forwarding table, as a sans-IO engine.

A switch learns which port each unicast source MAC was last seen on and forgets it after ``aging``
seconds of silence (IEEE 802.1D's default is 300 s). Time is an argument: the table never reads a clock,
so tests drive it with a fake one. Ports are opaque objects compared by identity.
"""

from __future__ import annotations

from typing import Generic, TypeVar

P = TypeVar("P")


class _Entry(Generic[P]):
    __slots__ = ("port", "seen")

    def __init__(self, port: P, seen: float) -> None:
        self.port = port
        self.seen = seen


class MacTable(Generic[P]):
    """MAC -> (port, last seen). Bounded: when full, unknown sources are not learned (they flood)."""

    __slots__ = ("_entries", "_last_expire", "aging", "capacity", "learn_refused")

    def __init__(self, aging: float = 300.0, capacity: int = 4096) -> None:
        self.aging = aging
        self.capacity = capacity
        self.learn_refused = 0
        self._last_expire = float("-inf")
        self._entries: dict[bytes, _Entry[P]] = {}

    def learn(self, mac: bytes, port: P, now: float) -> None:
        """Record that ``mac`` (a unicast source) was just seen on ``port``."""
        entry = self._entries.get(mac)
        if entry is not None:
            entry.port = port
            entry.seen = now
            return
        if len(self._entries) >= self.capacity:
            # A full table is scanned at most once a second: a guest spraying source MACs would
            # otherwise make every frame cost a scan of the whole table.
            if now - self._last_expire >= 1.0:
                self._last_expire = now
                self.expire(now)
            if len(self._entries) >= self.capacity:
                self.learn_refused += 1
                return
        self._entries[mac] = _Entry(port, now)

    def lookup(self, mac: bytes, now: float) -> P | None:
        """The port ``mac`` lives behind, or None (unknown or aged out: the caller floods)."""
        entry = self._entries.get(mac)
        if entry is None:
            return None
        if now - entry.seen > self.aging:
            del self._entries[mac]
            return None
        return entry.port

    def forget_port(self, port: P) -> None:
        """A port went away: drop every address learned on it."""
        stale = [mac for mac, entry in self._entries.items() if entry.port is port]
        for mac in stale:
            del self._entries[mac]

    def expire(self, now: float) -> float | None:
        """Drop aged entries; returns when the next one will age out (the caller's next timer)."""
        deadline = now - self.aging
        stale = [mac for mac, entry in self._entries.items() if entry.seen < deadline]
        for mac in stale:
            del self._entries[mac]
        if not self._entries:
            return None
        return min(entry.seen for entry in self._entries.values()) + self.aging

    def entries(self) -> list[tuple[bytes, P, float]]:
        return [(mac, e.port, e.seen) for mac, e in self._entries.items()]

    def __len__(self) -> int:
        return len(self._entries)
