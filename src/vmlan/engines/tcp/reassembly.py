"""The out-of-order receive store: data that arrived beyond a gap, kept until the gap fills.

A sorted list of non-overlapping ``(start, bytes)`` blocks (unwrapped sequence numbers). The caller
hands in only data inside its advertised window, so the bytes held are bounded by the window; the
number of blocks is bounded too (:attr:`ReassemblyQueue.max_blocks`), because a hostile guest sending
one byte in every other position would otherwise make each insertion cost a longer list walk. Without
SACK a loss is repaired one round trip at a time, and on a virtual link that is microseconds, so
nothing cleverer (an interval tree, SACK blocks) pays for itself.
"""

from __future__ import annotations

import bisect
from typing import Final

__all__ = ["DUPLICATE", "FULL", "KEPT", "ReassemblyQueue"]

KEPT: Final = 1  # some new bytes were stored
DUPLICATE: Final = 0  # everything was already held
FULL: Final = -1  # new bytes, but the block list is at its limit: dropped


def _first(block: tuple[int, bytes]) -> int:
    return block[0]


class ReassemblyQueue:
    """Blocks of out-of-order data; :attr:`nbytes` is what they hold (cheap to read)."""

    __slots__ = ("_blocks", "max_blocks", "nbytes")

    def __init__(self, max_blocks: int = 4096) -> None:
        self._blocks: list[tuple[int, bytes]] = []
        self.max_blocks = max_blocks
        self.nbytes = 0

    def __bool__(self) -> bool:
        return bool(self._blocks)

    def __len__(self) -> int:
        return len(self._blocks)

    def spans(self) -> list[tuple[int, int]]:
        """The held ``(start, end)`` ranges, in order (for tests and debugging)."""
        return [(s, s + len(d)) for s, d in self._blocks]

    def add(self, start: int, data: bytes | bytearray | memoryview) -> int:
        """Keep the parts of ``data`` (at sequence number ``start``) not already held.

        Returns :data:`KEPT`, :data:`DUPLICATE` or :data:`FULL`. ``data`` is copied (it usually is a view
        into the caller's frame buffer)."""
        blocks = self._blocks
        end = start + len(data)
        i = bisect.bisect_right(blocks, start, key=_first)
        if i:
            ps, pd = blocks[i - 1]
            pe = ps + len(pd)
            if pe >= end:
                return DUPLICATE
            if pe > start:
                data = data[pe - start :]
                start = pe
        pieces: list[tuple[int, bytes]] = []
        while start < end:
            if i < len(blocks) and blocks[i][0] < end:
                ns, nd = blocks[i]
                if ns > start:
                    pieces.append((start, bytes(data[: ns - start])))
                ne = ns + len(nd)
                if ne >= end:
                    break
                data = data[ne - start :]
                start = ne
                i += 1
            else:
                pieces.append((start, bytes(data)))
                break
        if not pieces:
            return DUPLICATE
        if len(blocks) + len(pieces) > self.max_blocks:
            return FULL
        for piece in pieces:
            bisect.insort(blocks, piece, key=_first)
            self.nbytes += len(piece[1])
        return KEPT

    def drain(self, nxt: int, sink: bytearray) -> int:
        """Append to ``sink`` the held bytes that continue the stream at ``nxt``; return the new ``nxt``.

        Blocks wholly at or below the new ``nxt`` are released."""
        blocks = self._blocks
        k = 0
        released = 0
        for s, data in blocks:
            if s > nxt:
                break
            k += 1
            released += len(data)
            e = s + len(data)
            if e > nxt:
                if s == nxt:
                    sink += data
                else:
                    with memoryview(data) as view:
                        sink += view[nxt - s :]
                nxt = e
        if k:
            del blocks[:k]
            self.nbytes -= released
        return nxt

    def clear(self) -> None:
        self._blocks.clear()
        self.nbytes = 0
