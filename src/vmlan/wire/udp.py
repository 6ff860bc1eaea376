"""RFC 768 UDP over IPv4.

The checksum covers an IPv4 pseudo-header, so it can only be verified or
computed with the addresses from the enclosing IP header: pass ``src_addr`` and
``dst_addr`` to :meth:`UdpHeader.parse` to verify, to :meth:`UdpHeader.build`
to compute.  On the wire 0 means "no checksum" (so it is not verified), and a
computed 0 is therefore sent as its one's complement twin 0xFFFF.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ._common import BytesLike, check_uint, resolve_end
from .checksum import internet_checksum, pseudo_header_sum_v4
from .errors import IntegrityError, SanityError

__all__ = ["UDP_HLEN", "UdpHeader"]

UDP_HLEN = 8
_IPPROTO_UDP = 17

_PROTO = "UDP"

#  0      7 8     15 16    23 24    31
# +--------+--------+--------+--------+
# |     Source      |   Destination   |
# |      Port       |      Port       |
# +--------+--------+--------+--------+
# |                 |                 |
# |     Length      |    Checksum     |
# +--------+--------+--------+--------+
# |
# |          data octets ...
# +---------------- ...
_UDP = struct.Struct("!HHHH")


@dataclass(frozen=True, slots=True, kw_only=True)
class UdpHeader:
    """A UDP header.  ``length`` (header plus data) and ``checksum`` hold what was received."""

    sport: int
    dport: int
    length: int = 0
    checksum: int = 0

    def __post_init__(self) -> None:
        check_uint(_PROTO, "sport", self.sport, 16)
        check_uint(_PROTO, "dport", self.dport, 16)
        check_uint(_PROTO, "length", self.length, 16)
        check_uint(_PROTO, "checksum", self.checksum, 16)

    @classmethod
    def parse(
        cls,
        buf: BytesLike,
        offset: int = 0,
        end: int | None = None,
        *,
        src_addr: bytes | None = None,
        dst_addr: bytes | None = None,
    ) -> tuple[UdpHeader, int, int]:
        """Decode the datagram in ``buf[offset:end]``; return the header and the data's ``(start, end)``.

        The data ends where the Length field says, which may be before ``end``.
        With both addresses given a non-zero checksum is verified.
        """
        end = resolve_end(_PROTO, buf, offset, end, UDP_HLEN)
        sport, dport, length, checksum = _UDP.unpack_from(buf, offset)
        if length < UDP_HLEN:
            raise IntegrityError(_PROTO, f"length field {length} < {UDP_HLEN}")
        if length > end - offset:
            raise IntegrityError(_PROTO, f"length field {length} > {end - offset} bytes received")
        if (src_addr is None) != (dst_addr is None):
            raise ValueError("pass both src_addr and dst_addr to verify the checksum, or neither")
        if checksum and src_addr is not None and dst_addr is not None:
            initial = pseudo_header_sum_v4(src_addr, dst_addr, _IPPROTO_UDP, length)
            if internet_checksum(buf[offset : offset + length], initial) != 0:
                raise IntegrityError(_PROTO, f"bad checksum {checksum:#06x}")
        if dport == 0:
            raise SanityError(_PROTO, "destination port 0")
        return (
            cls(sport=sport, dport=dport, length=length, checksum=checksum),
            offset + UDP_HLEN,
            offset + length,
        )

    def to_bytes(self) -> bytes:
        """The header exactly as the fields say, stored length and checksum included."""
        return _UDP.pack(self.sport, self.dport, self.length, self.checksum)

    def build(self, payload: BytesLike, *, src_addr: bytes, dst_addr: bytes, checksum: bool = True) -> bytes:
        """The whole datagram, Length and (unless ``checksum=False``) checksum computed."""
        length = UDP_HLEN + len(payload)
        if length > 0xFFFF:
            raise SanityError(_PROTO, f"datagram of {length} bytes > 65535")
        raw = _UDP.pack(self.sport, self.dport, length, 0) + bytes(payload)
        if not checksum:
            return raw
        csum = internet_checksum(raw, pseudo_header_sum_v4(src_addr, dst_addr, _IPPROTO_UDP, length))
        return raw[:6] + (csum or 0xFFFF).to_bytes(2, "big") + raw[8:]
