"""The one exception hierarchy of the wire layer.

Every parser in :mod:`vmlan.wire` either returns a value or raises a
:class:`WireError` subclass; ``IndexError``, ``struct.error`` and friends never
escape, so a network engine can wrap a whole decode in a single ``except
WireError`` and count or drop the frame.

The split follows PyTCP's "integrity first, then sanity" order:

* :class:`IntegrityError` -- the bytes cannot be the protocol at all: too short,
  a length field pointing past the buffer, a wrong checksum.  Nothing in the
  packet can be trusted.
* :class:`SanityError` -- the packet decodes cleanly but carries values the
  protocol forbids (ARP for a non-Ethernet hardware type, IPv4 from a multicast
  source, a TCP SYN+FIN).  Builders raise it too, for field values that cannot
  be encoded (a port of 70000, a 5-byte MAC address).

Messages are prefixed with the protocol (``"[IPv4] header length 4 < 5"``) so a
log line is self-explanatory; the protocol and the bare detail are also kept as
attributes for code that wants to branch on them.
"""

from __future__ import annotations

__all__ = ["IntegrityError", "SanityError", "WireError"]


class WireError(Exception):
    """Base class: a buffer could not be decoded, or a value could not be encoded."""

    proto: str
    detail: str

    def __init__(self, proto: str, detail: str) -> None:
        super().__init__(f"[{proto}] {detail}")
        self.proto = proto
        self.detail = detail

    def __reduce__(self) -> tuple[type[WireError], tuple[str, str]]:
        # Exception pickles its args (the formatted message); rebuild from the parts instead.
        return (type(self), (self.proto, self.detail))


class IntegrityError(WireError):
    """Malformed bytes: truncated, inconsistent length fields or a bad checksum."""


class SanityError(WireError):
    """Well-formed bytes (or requested fields) carrying values the protocol forbids."""
