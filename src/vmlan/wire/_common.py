"""Small helpers shared by the codecs (private: import from the protocol modules)."""

from __future__ import annotations

from typing import NoReturn, TypeAlias

from .errors import IntegrityError, SanityError

__all__ = ["BytesLike", "check_bytes", "check_uint", "explain_uint_fields", "resolve_end"]

#: What every parser accepts.  ``memoryview`` lets an engine decode in place
#: inside a larger receive buffer without copying it first.
BytesLike: TypeAlias = bytes | bytearray | memoryview


def resolve_end(proto: str, buf: BytesLike, offset: int, end: int | None, need: int) -> int:
    """Validate ``buf[offset:end]`` as a window holding at least ``need`` bytes; return ``end``.

    Window errors are integrity errors: callers derive ``end`` from an outer
    header's length field, so a bad window means that field lied.
    """
    size = len(buf)
    if end is None:
        end = size
    elif end > size:
        raise IntegrityError(proto, f"end {end} beyond buffer of {size} bytes")
    if offset < 0 or offset > end:
        raise IntegrityError(proto, f"offset {offset} outside buffer window of {end} bytes")
    if end - offset < need:
        raise IntegrityError(proto, f"{end - offset} bytes < minimum {need}")
    return end


def check_uint(proto: str, name: str, value: int, bits: int) -> None:
    """Refuse a field value that does not fit ``bits`` unsigned bits (before struct.pack does)."""
    if not 0 <= value < 1 << bits:
        raise SanityError(proto, f"{name} {value} does not fit {bits} bits")


def check_bytes(proto: str, name: str, value: bytes, size: int) -> None:
    """Refuse an address of the wrong size (struct's ``"6s"`` would silently pad or cut it)."""
    if len(value) != size:
        raise SanityError(proto, f"{name} must be {size} bytes, got {len(value)}")


def explain_uint_fields(proto: str, obj: object, fields: tuple[tuple[str, int], ...]) -> NoReturn:
    """Slow path of a header's one-expression range check: name the first field that does not fit.

    Headers check all their integer fields in a single chained comparison
    (constructing one is on every decode path) and call this only on failure.
    """
    for name, bits in fields:
        check_uint(proto, name, getattr(obj, name), bits)
    raise AssertionError("explain_uint_fields called with all fields in range")  # pragma: no cover
