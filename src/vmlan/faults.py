"""Internal errors (bugs), counted by kind so that none goes unnoticed and none floods the log.

A guest's bad frame is not a fault: it is dropped and counted where it is parsed. A fault is an
exception vmlan did not expect (an engine bug, a broken invariant). The code that catches one costs the
guest one frame or one connection and goes on; it calls :meth:`Faults.record` with a short, fixed kind
("stream rx", "dhcp", ...). The first time a kind is seen, its traceback is kept and ``on_new`` is
called, so the I/O layer logs it once, with the traceback; later occurrences are only counted. The
monitor shows :meth:`Faults.as_dict`.

Kinds are chosen by vmlan's code, never by a guest, but the table is capped all the same
(:data:`MAX_KINDS`; beyond it every new kind is counted as :data:`OVERFLOW_KIND`), and each kept
traceback is cut to :data:`MAX_TRACEBACK` characters.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Callable

MAX_KINDS = 64
MAX_TRACEBACK = 8192
OVERFLOW_KIND = "other"


class Faults:
    """Per-kind counts of internal errors, with the first traceback of each kind."""

    __slots__ = ("_counts", "_first", "on_new")

    def __init__(self, on_new: Callable[[str, str], None] | None = None) -> None:
        self.on_new = on_new  # (kind, traceback text): called once per new kind
        self._counts: dict[str, int] = {}
        self._first: dict[str, str] = {}

    def record(self, kind: str, exc: BaseException | None = None) -> None:
        """Count one fault of ``kind``: ``exc``, or the exception being handled when called from ``except``.

        Never raises: a failing ``on_new`` callback is ignored (the fault is already counted).
        """
        counts = self._counts
        if kind not in counts and len(counts) >= MAX_KINDS:
            kind = OVERFLOW_KIND
        seen = counts.get(kind, 0)
        counts[kind] = seen + 1
        if seen:
            return
        if exc is None:
            exc = sys.exc_info()[1]
        text = "".join(traceback.format_exception(exc)) if exc is not None else f"{kind} (no exception)\n"
        if len(text) > MAX_TRACEBACK:
            text = "...\n" + text[-MAX_TRACEBACK:]
        self._first[kind] = text
        if self.on_new is not None:
            with contextlib.suppress(Exception):  # reporting must never turn one fault into two
                self.on_new(kind, text)

    def count(self, kind: str) -> int:
        return self._counts.get(kind, 0)

    @property
    def counts(self) -> dict[str, int]:
        """``{kind: N}``, a copy (tests assert it stays empty)."""
        return dict(self._counts)

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def first_traceback(self, kind: str) -> str | None:
        return self._first.get(kind)

    def as_dict(self) -> dict[str, dict[str, int | str]]:
        """``{kind: {"count": N, "first": traceback text}}``, kinds in the order first seen."""
        return {kind: {"count": n, "first": self._first.get(kind, "")} for kind, n in self._counts.items()}
