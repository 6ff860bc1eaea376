"""RFC 792 ICMP for IPv4: echo request/reply and the error messages a router sends.

One dataclass covers every type: after type, code and checksum each ICMP
message has a 32-bit "rest of header" whose meaning depends on the type
(identifier and sequence for echo, next-hop MTU for "fragmentation needed"),
followed by data.  Keeping ``rest`` raw and offering properties lets unknown
types round-trip untouched, and error messages keep the quoted datagram as
``data`` for the caller (a NAT) to decode with :mod:`vmlan.wire.ipv4`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ._common import BytesLike, check_uint, resolve_end
from .checksum import internet_checksum
from .errors import IntegrityError, SanityError

__all__ = [
    "ICMP_DEST_UNREACH",
    "ICMP_ECHO",
    "ICMP_ECHOREPLY",
    "ICMP_EXC_FRAGTIME",
    "ICMP_EXC_TTL",
    "ICMP_FRAG_NEEDED",
    "ICMP_HLEN",
    "ICMP_HOST_UNREACH",
    "ICMP_NET_UNREACH",
    "ICMP_PORT_UNREACH",
    "ICMP_PROT_UNREACH",
    "ICMP_TIME_EXCEEDED",
    "IcmpMessage",
]

ICMP_ECHOREPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_ECHO = 8
ICMP_TIME_EXCEEDED = 11

# Destination unreachable codes.
ICMP_NET_UNREACH = 0
ICMP_HOST_UNREACH = 1
ICMP_PROT_UNREACH = 2
ICMP_PORT_UNREACH = 3
ICMP_FRAG_NEEDED = 4

# Time exceeded codes.
ICMP_EXC_TTL = 0
ICMP_EXC_FRAGTIME = 1

ICMP_HLEN = 8

# An error quotes the offending IP header and 64 bits of its payload (RFC 792); a
# datagram may be shorter than that, but without at least its IP header nobody
# can tell which flow the error is about (Linux drops such errors too).
_MIN_QUOTE = 20
# RFC 1812 4.3.2.3: the whole error datagram stays within 576 bytes (576 - 20 - 8).
_MAX_QUOTE = 548

_ERRORS = (ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED)

_PROTO = "ICMP"

# Echo request (type 8) and echo reply (type 0):
#  0                   1                   2                   3
#  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |     Type      |     Code      |          Checksum             |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |           Identifier          |        Sequence Number        |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |     Data ...
# +-+-+-+-+-
#
# Destination unreachable (type 3) and time exceeded (type 11):
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |     Type      |     Code      |          Checksum             |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |    unused     |    unused     | Next-Hop MTU (RFC 1191 code 4)|
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |      Internet Header + 64 bits of Original Data Datagram      |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
_ICMP = struct.Struct("!BBHI")


@dataclass(frozen=True, slots=True, kw_only=True)
class IcmpMessage:
    """An ICMP message: ``rest`` is the 32-bit field after the checksum, ``data`` the remainder.

    ``checksum`` holds what was received; :meth:`build` computes it,
    :meth:`to_bytes` does not.
    """

    type: int
    code: int
    checksum: int = 0
    rest: int = 0
    data: bytes = b""

    def __post_init__(self) -> None:
        check_uint(_PROTO, "type", self.type, 8)
        check_uint(_PROTO, "code", self.code, 8)
        check_uint(_PROTO, "checksum", self.checksum, 16)
        check_uint(_PROTO, "rest", self.rest, 32)

    @property
    def ident(self) -> int:
        """Echo identifier."""
        return self.rest >> 16

    @property
    def seq(self) -> int:
        """Echo sequence number."""
        return self.rest & 0xFFFF

    @property
    def next_hop_mtu(self) -> int:
        """MTU of the next hop for "fragmentation needed" (RFC 1191), 0 if not given."""
        return self.rest & 0xFFFF

    @property
    def is_error(self) -> bool:
        """True for destination unreachable and time exceeded, which quote a datagram."""
        return self.type in _ERRORS

    @classmethod
    def parse(cls, buf: BytesLike, offset: int = 0, end: int | None = None) -> IcmpMessage:
        """Decode ``buf[offset:end]`` (``end`` from the IPv4 Total Length), checksum verified."""
        end = resolve_end(_PROTO, buf, offset, end, ICMP_HLEN)
        if internet_checksum(buf[offset:end]) != 0:
            raise IntegrityError(_PROTO, "bad checksum")
        type_, code, checksum, rest = _ICMP.unpack_from(buf, offset)
        data = bytes(buf[offset + ICMP_HLEN : end])
        if type_ in _ERRORS and len(data) < _MIN_QUOTE:
            raise SanityError(_PROTO, f"error quotes {len(data)} bytes < an IP header")
        return cls(type=type_, code=code, checksum=checksum, rest=rest, data=data)

    def to_bytes(self) -> bytes:
        """The message exactly as the fields say, stored checksum included."""
        return _ICMP.pack(self.type, self.code, self.checksum, self.rest) + self.data

    def build(self) -> bytes:
        """The message with its checksum computed."""
        raw = _ICMP.pack(self.type, self.code, 0, self.rest) + self.data
        return raw[:2] + internet_checksum(raw).to_bytes(2, "big") + raw[4:]

    @classmethod
    def echo_request(cls, *, ident: int, seq: int, data: bytes = b"") -> IcmpMessage:
        check_uint(_PROTO, "ident", ident, 16)
        check_uint(_PROTO, "seq", seq, 16)
        return cls(type=ICMP_ECHO, code=0, rest=ident << 16 | seq, data=data)

    @classmethod
    def echo_reply(cls, *, ident: int, seq: int, data: bytes = b"") -> IcmpMessage:
        check_uint(_PROTO, "ident", ident, 16)
        check_uint(_PROTO, "seq", seq, 16)
        return cls(type=ICMP_ECHOREPLY, code=0, rest=ident << 16 | seq, data=data)

    def reply(self) -> IcmpMessage:
        """The echo reply answering this echo request (same identifier, sequence and data)."""
        if self.type != ICMP_ECHO:
            raise SanityError(_PROTO, f"type {self.type} is not an echo request")
        return IcmpMessage(type=ICMP_ECHOREPLY, code=0, rest=self.rest, data=self.data)

    @classmethod
    def dest_unreachable(cls, *, code: int, original: BytesLike, mtu: int = 0) -> IcmpMessage:
        """Destination unreachable quoting ``original`` (the offending IP datagram, cut to 548 bytes).

        ``mtu`` is the next-hop MTU, meaningful with ``code=ICMP_FRAG_NEEDED``.
        """
        check_uint(_PROTO, "mtu", mtu, 16)
        return cls(type=ICMP_DEST_UNREACH, code=code, rest=mtu, data=_quote(original))

    @classmethod
    def time_exceeded(cls, *, code: int, original: BytesLike) -> IcmpMessage:
        """Time exceeded (TTL or reassembly) quoting ``original``, cut to 548 bytes."""
        return cls(type=ICMP_TIME_EXCEEDED, code=code, data=_quote(original))


def _quote(original: BytesLike) -> bytes:
    if len(original) < _MIN_QUOTE:
        raise SanityError(_PROTO, f"quoted datagram of {len(original)} bytes < an IP header")
    return bytes(original[:_MAX_QUOTE])
