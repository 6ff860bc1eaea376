"""One's complement sums shaped for the engine's hot path (the general API is :mod:`vmlan.wire.checksum`).

Two differences from :func:`~vmlan.wire.checksum.ones_complement_sum`, each worth a fraction of a
microsecond per segment, which is a large part of the engine's budget:

* The result is any integer *congruent* to the sum modulo 0xFFFF, not the folded 16-bit value. The
  engine adds the pseudo-header and header words and reduces once, with ``% 0xFFFF``; whether the
  fold would have given 0x0000 or 0xFFFF never matters there (see ``connection.py``).
* :func:`piece_sums` sums a run of equal-sized pieces of one buffer in a single numpy call -- every
  data segment of a transmit burst -- so numpy's ~1 us fixed cost is paid once per burst instead of
  once per segment.

Little-endian words are summed (numpy's native order) and the total multiplied by 256: a 16-bit
word's little-endian value is its big-endian value times 256 modulo 0xFFFF (because 2**16 = 1 there),
and 256 * 256 = 1 as well. numpy is imported on the first large buffer; without it the pure-Python
paths of :mod:`vmlan.wire.checksum` are used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from vmlan.wire._common import BytesLike
from vmlan.wire.checksum import ones_complement_sum

__all__ = ["NUMPY_MIN_BYTES", "piece_sums", "sum16"]

#: Buffers at least this long are summed by numpy (the crossover with ``int.from_bytes`` on CPython 3.11).
NUMPY_MIN_BYTES = 640
_BIG_INT_MAX = 2048  # above this, int.from_bytes + % costs more than wire.checksum's chunked sum
_BATCH_MAX = 16384  # largest piece piece_sums() sums in a batch

_from_bytes = int.from_bytes
_np: Any = None  # the numpy module once loaded, False when missing


def _not_loaded(*args: Any) -> Any:
    raise RuntimeError("numpy is not loaded: check _add_reduce first")


_frombuffer: Callable[..., Any] = _not_loaded  # valid once _add_reduce is not None
_add_reduce: Callable[..., Any] | None = None
_U2: Any = None
_U4: Any = None
_U8: Any = None


def _load() -> bool:
    global _np, _frombuffer, _add_reduce, _U2, _U4, _U8
    if _np is None:
        try:
            np = importlib.import_module("numpy")
        except ImportError:
            _np = False
            return False
        _np = np
        _frombuffer = np.frombuffer
        _add_reduce = np.add.reduce
        _U2 = np.dtype("<u2")
        _U4 = np.dtype("<u4")
        _U8 = np.dtype("<u8")
    return _np is not False


def sum16(data: BytesLike) -> int:
    """An integer congruent (mod 0xFFFF) to the RFC 1071 sum of ``data`` as big-endian 16-bit words."""
    n = len(data)
    if n >= NUMPY_MIN_BYTES and (_add_reduce is not None or _load()):
        assert _add_reduce is not None
        n4 = n >> 2
        s: int = int(_add_reduce(_frombuffer(data, _U4, n4))) << 8
        if n & 3:  # the tail starts at a multiple of 4, so its big-endian value keeps the word alignment
            s += _from_bytes(data[n4 << 2 :], "big") << ((n & 1) << 3)
        return s
    if n <= _BIG_INT_MAX:
        return _from_bytes(data, "big") << ((n & 1) << 3)  # an odd last byte is a word's high half
    return ones_complement_sum(data)


def piece_sums(buf: bytearray, offset: int, size: int, count: int) -> list[int]:
    """:func:`sum16` of each of the ``count`` consecutive ``size``-byte pieces of ``buf`` from ``offset``.

    No buffer export survives the call (``buf`` may be resized afterwards). Pieces of up to
    :data:`_BATCH_MAX` bytes are summed in one numpy call: numpy's fixed cost dominates those, while
    bigger ones gain nothing from it."""
    if count > 1 and not size & 1 and 64 <= size <= _BATCH_MAX and (_add_reduce is not None or _load()):
        assert _add_reduce is not None
        if size & 3:
            arr = _frombuffer(buf, _U2, count * (size >> 1), offset).reshape(count, size >> 1)
        else:
            arr = _frombuffer(buf, _U4, count * (size >> 2), offset).reshape(count, size >> 2)
        sums: list[int] = _add_reduce(arr, axis=1, dtype=_U8).tolist()
        del arr
        return [s << 8 for s in sums]
    with memoryview(buf) as view:
        out = []
        for i in range(count):
            start = offset + i * size
            with view[start : start + size] as piece:
                out.append(sum16(piece))
        return out
