"""RFC 826 ARP, restricted to what an Ethernet/IPv4 network uses.

Only hardware type 1 (Ethernet), protocol type 0x0800 (IPv4), 6-byte hardware
and 4-byte protocol addresses, and the request/reply operations are accepted:
the emulated network has nothing else, and a fixed 28-byte layout lets one
precompiled struct do the whole job.  Other combinations are well-formed ARP,
so they raise :class:`SanityError`, not :class:`IntegrityError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ._common import BytesLike, check_bytes
from .errors import IntegrityError, SanityError

__all__ = [
    "ARP_HLEN",
    "ARP_OP_REPLY",
    "ARP_OP_REQUEST",
    "ArpPacket",
]

ARP_OP_REQUEST = 1
ARP_OP_REPLY = 2

ARP_HTYPE_ETHERNET = 1
ARP_PTYPE_IPV4 = 0x0800

#: Length of an Ethernet/IPv4 ARP packet (a frame carrying it is padded to 60 bytes).
ARP_HLEN = 28

_PROTO = "ARP"

#  0                   1                   2                   3
#  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |     Hardware type (1)         |     Protocol type (0x0800)    |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |  HW len (6)   | Proto len (4) |          Operation            |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                  Sender hardware address                      |
# +                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                               |   Sender protocol address     |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |  Sender protocol address      |                               |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
# |                  Target hardware address                      |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                  Target protocol address                      |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
_ARP = struct.Struct("!HHBBH6s4s6s4s")


@dataclass(frozen=True, slots=True, kw_only=True)
class ArpPacket:
    """An Ethernet/IPv4 ARP request or reply (addresses as raw bytes: 6-byte MACs, 4-byte IPv4)."""

    op: int
    sha: bytes
    spa: bytes
    tha: bytes
    tpa: bytes

    def __post_init__(self) -> None:
        if self.op not in (ARP_OP_REQUEST, ARP_OP_REPLY):
            raise SanityError(_PROTO, f"operation {self.op} is neither request (1) nor reply (2)")
        check_bytes(_PROTO, "sha", self.sha, 6)
        check_bytes(_PROTO, "spa", self.spa, 4)
        check_bytes(_PROTO, "tha", self.tha, 6)
        check_bytes(_PROTO, "tpa", self.tpa, 4)

    @classmethod
    def parse(cls, buf: BytesLike, offset: int = 0) -> ArpPacket:
        """Decode the packet at ``offset``; trailing bytes (Ethernet padding) are ignored."""
        avail = len(buf) - offset
        if offset < 0 or avail < ARP_HLEN:
            raise IntegrityError(_PROTO, f"packet of {max(avail, 0)} bytes < {ARP_HLEN}")
        htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(buf, offset)
        if htype != ARP_HTYPE_ETHERNET or ptype != ARP_PTYPE_IPV4 or hlen != 6 or plen != 4:
            raise SanityError(
                _PROTO,
                f"unsupported htype {htype} ptype {ptype:#06x} hlen {hlen} plen {plen} (only Ethernet/IPv4)",
            )
        return cls(op=op, sha=sha, spa=spa, tha=tha, tpa=tpa)

    def to_bytes(self) -> bytes:
        return _ARP.pack(
            ARP_HTYPE_ETHERNET, ARP_PTYPE_IPV4, 6, 4, self.op, self.sha, self.spa, self.tha, self.tpa
        )

    @classmethod
    def request(cls, *, sha: bytes, spa: bytes, tpa: bytes) -> ArpPacket:
        """Who has ``tpa``?  Tell ``spa`` (at ``sha``).  The target MAC is unknown, so zero."""
        return cls(op=ARP_OP_REQUEST, sha=sha, spa=spa, tha=bytes(6), tpa=tpa)

    def reply(self, mac: bytes) -> ArpPacket:
        """The reply to this request from the owner of ``tpa``, whose MAC is ``mac``."""
        if self.op != ARP_OP_REQUEST:
            raise SanityError(_PROTO, "only a request can be replied to")
        return ArpPacket(op=ARP_OP_REPLY, sha=mac, spa=self.tpa, tha=self.sha, tpa=self.spa)
