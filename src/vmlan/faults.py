"""Internal errors, counted per kind: a bug or an exhausted resource costs one frame, never a port.

Each kind is a short string naming where it happened ("tcp input", "udp send"). The first traceback of
each kind is kept (for the monitor) and reported once through ``on_new``, which the I/O layer points at
its logger: later errors of a known kind are only counted, so a guest that triggers one bug in a loop
cannot flood the log, and a second, different bug is still seen.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

__all__ = ["Faults"]


class Faults:
    __slots__ = ("counts", "first", "on_new")

    def __init__(self, on_new: Callable[[str, BaseException], None] | None = None) -> None:
        self.counts: dict[str, int] = {}
        self.first: dict[str, str] = {}
        self.on_new = on_new

    def record(self, kind: str, exc: BaseException) -> None:
        n = self.counts.get(kind, 0)
        self.counts[kind] = n + 1
        if n == 0:
            self.first[kind] = "".join(traceback.format_exception(exc))
            if self.on_new is not None:
                self.on_new(kind, exc)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)
