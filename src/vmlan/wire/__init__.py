"""Pure codecs for the protocols vmlan moves around: no I/O, no clocks.

One module per protocol (:mod:`.ethernet`, :mod:`.arp`, :mod:`.ipv4`,
:mod:`.icmp`, :mod:`.udp`, :mod:`.tcp`, :mod:`.pcap`) plus the shared
:mod:`.checksum`.  Each header is a frozen, slotted dataclass with a
``parse(buf, offset=0, ...)`` classmethod accepting ``bytes``, ``bytearray`` or
``memoryview``, a ``to_bytes()`` that serialises the fields as they are and,
where a header has lengths or checksums, a ``build(...)`` that computes them.
Parsers check integrity (lengths, checksums) before decoding meaning and
sanity after; whatever goes wrong surfaces as a :class:`WireError` subclass.
"""

from ._common import BytesLike
from .errors import IntegrityError, SanityError, WireError

__all__ = ["BytesLike", "IntegrityError", "SanityError", "WireError"]
