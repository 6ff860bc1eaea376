"""RFC 791 IPv4 headers, options kept as raw bytes.

Order of checks on receive, each before trusting anything it guards:
version, IHL, total length against the buffer, header checksum (all
:class:`IntegrityError`); only then the fields are decoded and checked for
values a host must not accept (:class:`SanityError`).  The payload bounds come
from Total Length, not from the buffer, because Ethernet pads short datagrams
to 60 bytes and the padding is not payload.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ._common import BytesLike, check_bytes, explain_uint_fields
from .checksum import internet_checksum
from .errors import IntegrityError, SanityError

__all__ = [
    "IPPROTO_ICMP",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "IPV4_HLEN",
    "IPV4_MAX_LEN",
    "IP_DF",
    "IP_MF",
    "IP_RF",
    "Ipv4Header",
    "ipv4_from_str",
    "ipv4_to_str",
    "is_fragment",
]

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17

# The 3-bit Flags field.
IP_RF = 0x4  # reserved, must be zero
IP_DF = 0x2  # don't fragment
IP_MF = 0x1  # more fragments

#: Header length without options.
IPV4_HLEN = 20
IPV4_MAX_LEN = 0xFFFF
_MAX_OPTIONS = 40

_PROTO = "IPv4"

#  0                   1                   2                   3
#  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |Version|  IHL  |Type of Service|          Total Length         |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |         Identification        |Flags|      Fragment Offset    |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |  Time to Live |    Protocol   |         Header Checksum       |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                       Source Address                          |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                    Destination Address                        |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                    Options                    |    Padding    |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
_IPV4 = struct.Struct("!BBHHHBBH4s4s")


def ipv4_to_str(addr: bytes) -> str:
    """``b"\\x0a\\x00\\x02\\x02"`` -> ``"10.0.2.2"``."""
    return ".".join(map(str, addr))


def ipv4_from_str(text: str) -> bytes:
    """Dotted quad to 4 bytes; strict (no ``"10.2"`` shorthand, no leading zeros)."""
    try:
        return ipaddress.IPv4Address(text).packed
    except ValueError:
        raise SanityError(_PROTO, f"malformed address {text!r}") from None


_HEADER_FIELDS = (
    ("proto", 8),
    ("tos", 8),
    ("total_length", 16),
    ("ident", 16),
    ("flags", 3),
    ("frag_offset", 13),
    ("ttl", 8),
    ("checksum", 16),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ipv4Header:
    """An IPv4 header.  ``frag_offset`` is the raw field, in units of 8 bytes.

    ``total_length`` and ``checksum`` hold what was received;
    :meth:`build_header`/:meth:`build` compute them, :meth:`to_bytes` does not.
    """

    src: bytes
    dst: bytes
    proto: int
    tos: int = 0
    total_length: int = 0
    ident: int = 0
    flags: int = 0
    frag_offset: int = 0
    ttl: int = 64
    checksum: int = 0
    options: bytes = b""

    def __post_init__(self) -> None:
        if len(self.src) != 4 or len(self.dst) != 4:
            check_bytes(_PROTO, "src", self.src, 4)
            check_bytes(_PROTO, "dst", self.dst, 4)
        if not (
            0 <= self.proto <= 0xFF
            and 0 <= self.tos <= 0xFF
            and 0 <= self.total_length <= 0xFFFF
            and 0 <= self.ident <= 0xFFFF
            and 0 <= self.flags <= 0x7
            and 0 <= self.frag_offset <= 0x1FFF
            and 0 <= self.ttl <= 0xFF
            and 0 <= self.checksum <= 0xFFFF
        ):
            explain_uint_fields(_PROTO, self, _HEADER_FIELDS)
        if len(self.options) % 4 or len(self.options) > _MAX_OPTIONS:
            raise SanityError(
                _PROTO, f"options must be a multiple of 4 bytes, at most 40, got {len(self.options)}"
            )

    @property
    def header_len(self) -> int:
        return IPV4_HLEN + len(self.options)

    @property
    def df(self) -> bool:
        return bool(self.flags & IP_DF)

    @property
    def mf(self) -> bool:
        return bool(self.flags & IP_MF)

    @property
    def is_fragment(self) -> bool:
        """True for any fragment of a fragmented datagram (first, middle or last)."""
        return bool(self.flags & IP_MF) or self.frag_offset != 0

    @classmethod
    def parse(cls, buf: BytesLike, offset: int = 0) -> tuple[Ipv4Header, int, int]:
        """Decode the header at ``offset``; return it and the payload's ``(start, end)``."""
        avail = len(buf) - offset
        if offset < 0 or avail < IPV4_HLEN:
            raise IntegrityError(_PROTO, f"packet of {max(avail, 0)} bytes < {IPV4_HLEN}")
        (vihl, tos, total_length, ident, frag, ttl, proto, checksum, src, dst) = _IPV4.unpack_from(
            buf, offset
        )
        if vihl >> 4 != 4:
            raise IntegrityError(_PROTO, f"version {vihl >> 4} != 4")
        hlen = (vihl & 0x0F) * 4
        if hlen < IPV4_HLEN:
            raise IntegrityError(_PROTO, f"header length {vihl & 0x0F} < 5")
        if total_length < hlen:
            raise IntegrityError(_PROTO, f"total length {total_length} < header length {hlen}")
        if total_length > avail:
            raise IntegrityError(_PROTO, f"total length {total_length} > {avail} bytes received")
        if internet_checksum(buf[offset : offset + hlen]) != 0:
            raise IntegrityError(_PROTO, f"bad header checksum {checksum:#06x}")

        flags = frag >> 13
        frag_offset = frag & 0x1FFF
        if 224 <= src[0] <= 239 or src == b"\xff\xff\xff\xff":
            raise SanityError(_PROTO, f"source {ipv4_to_str(src)} is multicast or broadcast")
        if flags & IP_DF and flags & IP_MF:
            raise SanityError(_PROTO, "both DF and MF set")
        if frag_offset * 8 + total_length - hlen > IPV4_MAX_LEN:
            raise SanityError(_PROTO, "fragment would end beyond 65535 bytes")
        header = cls(
            src=src,
            dst=dst,
            proto=proto,
            tos=tos,
            total_length=total_length,
            ident=ident,
            flags=flags,
            frag_offset=frag_offset,
            ttl=ttl,
            checksum=checksum,
            options=bytes(buf[offset + IPV4_HLEN : offset + hlen]),
        )
        return header, offset + hlen, offset + total_length

    def _pack(self, total_length: int, checksum: int) -> bytes:
        hlen = IPV4_HLEN + len(self.options)
        return (
            _IPV4.pack(
                0x40 | hlen >> 2,
                self.tos,
                total_length,
                self.ident,
                self.flags << 13 | self.frag_offset,
                self.ttl,
                self.proto,
                checksum,
                self.src,
                self.dst,
            )
            + self.options
        )

    def to_bytes(self) -> bytes:
        """The header exactly as the fields say, stored ``total_length`` and ``checksum`` included."""
        return self._pack(self.total_length, self.checksum)

    def build_header(self, payload_len: int) -> bytes:
        """The header for a ``payload_len``-byte payload, Total Length and checksum computed."""
        total_length = self.header_len + payload_len
        if total_length > IPV4_MAX_LEN:
            raise SanityError(_PROTO, f"datagram of {total_length} bytes > {IPV4_MAX_LEN}")
        raw = self._pack(total_length, 0)
        checksum = internet_checksum(raw)
        return raw[:10] + checksum.to_bytes(2, "big") + raw[12:]

    def build(self, payload: BytesLike = b"") -> bytes:
        """The whole datagram: :meth:`build_header` followed by ``payload``."""
        return self.build_header(len(payload)) + bytes(payload)


def is_fragment(header: Ipv4Header) -> bool:
    """True if ``header`` belongs to a fragment (MF set or a non-zero offset)."""
    return header.is_fragment
