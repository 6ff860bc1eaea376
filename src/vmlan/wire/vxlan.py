"""RFC 7348 VXLAN: an Ethernet frame in a UDP datagram, tagged with a 24-bit network identifier.

The outer UDP destination port is 4789 (IANA); Linux's vxlan driver defaults to 8472, the port it used
before the assignment, unless ``ip link add ... type vxlan dstport 4789`` says otherwise. The outer UDP
source port carries entropy: the sender derives it from a hash of the inner frame's flow (addresses,
protocol, ports) so that routers balancing by 5-tuple (ECMP) spread flows and keep each flow's frames
in order. :func:`flow_hash` and :func:`source_port` do that, the way the kernel's ``udp_flow_src_port``
maps its hash onto a port range.

A kernel VTEP whose underlay is a veth pair (containers, network namespaces) leaves the inner TCP or UDP
checksum unfinished, as a NIC with checksum offload would finish it: the field holds only the
pseudo-header's sum. A receiver outside the kernel sees that; :func:`unfinished_checksum` tells. Over
veth the kernel even hands a UDP socket whole TSO segments (up to 64 KiB inside one datagram, the
segmentation left to a NIC that never comes); :func:`tcp_super_frame` says how to cut them.

Receivers (section 5): the I flag must be set; the reserved fields are ignored. Linux drops a
datagram whose reserved bits are not zero unless an extension (GBP, GPE) claims them; the RFC does
not, and neither does :meth:`VxlanHeader.parse`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ._common import BytesLike, check_uint, resolve_end
from .errors import SanityError
from .vnet import GSO_ECN, GSO_TCPV4, GSO_TCPV6

__all__ = [
    "FLAG_I",
    "LINUX_DEFAULT_PORT",
    "MAX_VNI",
    "VXLAN_HLEN",
    "VXLAN_PORT",
    "VxlanHeader",
    "flow_hash",
    "header_bytes",
    "peek",
    "source_port",
    "tcp_super_frame",
    "unfinished_checksum",
]

VXLAN_HLEN = 8
VXLAN_PORT = 4789  # IANA
LINUX_DEFAULT_PORT = 8472  # the vxlan module's udp_port default when `ip link ... dstport` is not given
FLAG_I = 0x08  # "a valid VNI is present"
MAX_VNI = (1 << 24) - 1

_PROTO = "VXLAN"

#  0                   1                   2                   3
#  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |R|R|R|R|I|R|R|R|            Reserved                           |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                VXLAN Network Identifier (VNI) |   Reserved    |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
_VXLAN = struct.Struct("!II")  # flags << 24 | reserved1, vni << 8 | reserved2


@dataclass(frozen=True, slots=True, kw_only=True)
class VxlanHeader:
    """A VXLAN header; ``reserved1`` (24 bits) and ``reserved2`` (8 bits) hold what was received."""

    vni: int
    flags: int = FLAG_I
    reserved1: int = 0
    reserved2: int = 0

    def __post_init__(self) -> None:
        check_uint(_PROTO, "vni", self.vni, 24)
        check_uint(_PROTO, "flags", self.flags, 8)
        check_uint(_PROTO, "reserved1", self.reserved1, 24)
        check_uint(_PROTO, "reserved2", self.reserved2, 8)

    @classmethod
    def parse(cls, buf: BytesLike, offset: int = 0, end: int | None = None) -> tuple[VxlanHeader, int]:
        """Decode the header at ``buf[offset:]``; return it and where the inner frame starts.

        Raises IntegrityError for fewer than 8 bytes, SanityError when the I flag is clear (the VNI
        means nothing then).
        """
        resolve_end(_PROTO, buf, offset, end, VXLAN_HLEN)
        word0, word1 = _VXLAN.unpack_from(buf, offset)
        flags = word0 >> 24
        if not flags & FLAG_I:
            raise SanityError(_PROTO, f"I flag clear (flags {flags:#04x})")
        header = cls(vni=word1 >> 8, flags=flags, reserved1=word0 & 0xFFFFFF, reserved2=word1 & 0xFF)
        return header, offset + VXLAN_HLEN

    def to_bytes(self) -> bytes:
        """The header exactly as the fields say."""
        return _VXLAN.pack(self.flags << 24 | self.reserved1, self.vni << 8 | self.reserved2)

    def build(self, frame: BytesLike) -> bytes:
        """The UDP payload: this header, then the inner Ethernet frame."""
        return self.to_bytes() + bytes(frame)


def header_bytes(vni: int) -> bytes:
    """The 8 bytes a sender puts before every frame of ``vni``: I flag set, reserved fields zero."""
    check_uint(_PROTO, "vni", vni, 24)
    return _VXLAN.pack(FLAG_I << 24, vni << 8)


def peek(buf: BytesLike) -> tuple[int, int]:
    """``(flags, vni)`` of the header at the start of ``buf``, for a receive loop that has checked
    the length itself (the hot path: no header object per datagram)."""
    word0, word1 = _VXLAN.unpack_from(buf, 0)
    return word0 >> 24, word1 >> 8


_ETH_IPV4 = b"\x08\x00"
_ETH_IPV6 = b"\x86\xdd"
_PORTED = frozenset({6, 17, 132, 136})  # TCP, UDP, SCTP, UDP-Lite: the first 4 bytes are the ports


def flow_hash(frame: BytesLike) -> int:
    """A 32-bit hash of the inner frame's flow: the IP addresses, protocol and (unfragmented) ports
    for IPv4 and IPv6, the MAC addresses and EtherType for anything else. Frames of one flow hash
    alike, so they leave with one source port and stay in order across ECMP paths."""
    n = len(frame)
    ethertype = frame[12:14]
    if ethertype == _ETH_IPV4 and n >= 34:
        proto = frame[23]
        h = zlib.crc32(frame[26:34], proto)
        l4 = 14 + (frame[14] & 0x0F) * 4
        unfragmented = not (frame[20] & 0x3F or frame[21])  # MF clear and offset 0
        if proto in _PORTED and unfragmented and n >= l4 + 4:
            h = zlib.crc32(frame[l4 : l4 + 4], h)
        return h
    if ethertype == _ETH_IPV6 and n >= 54:
        proto = frame[20]
        h = zlib.crc32(frame[22:54], proto)
        if proto in _PORTED and n >= 58:
            h = zlib.crc32(frame[54:58], h)
        return h
    return zlib.crc32(frame[0:14])


def source_port(flow: int, low: int, high: int) -> int:
    """Map a 32-bit flow hash onto ``low..high`` (inclusive), as the kernel's ``udp_flow_src_port``:
    the hash's halves are folded together first (it goes on the wire), then scaled, not reduced
    modulo, so every port of the range is equally likely."""
    flow = (flow ^ (flow << 16)) & 0xFFFFFFFF
    return ((flow * (high - low + 1)) >> 32) + low


_ADDR_V4 = struct.Struct("!4H")  # IPv4 source and destination as 16-bit words
_ADDR_V6 = struct.Struct("!16H")
_CSUM_OFFSET = {6: 16, 17: 6}  # where the checksum field sits in a TCP, UDP header


def unfinished_checksum(frame: BytesLike) -> tuple[int, int] | None:
    """``(csum_start, csum_offset)`` if the frame's TCP or UDP checksum field holds just the folded
    pseudo-header sum: the sender left the sum over the segment to be added (virtio-net's NEEDS_CSUM,
    the kernel's CHECKSUM_PARTIAL), else None.

    Treating a finished checksum that happens to equal that value (one segment in 65536) as unfinished
    is harmless: finishing adds the segment's sum to the field, which yields the same checksum again.
    Fragments, other protocols and IPv4 UDP without a checksum (0) are None.
    """
    n = len(frame)
    ethertype = frame[12:14]
    if ethertype == _ETH_IPV4 and n >= 34 and frame[14] >> 4 == 4:
        ihl = (frame[14] & 0x0F) * 4
        total = frame[16] << 8 | frame[17]
        offset = _CSUM_OFFSET.get(frame[23])
        if offset is None or frame[20] & 0x3F or frame[21] or ihl < 20 or total < ihl:
            return None
        start = 14 + ihl
        total_sum = sum(_ADDR_V4.unpack_from(frame, 26)) + frame[23] + total - ihl
    elif ethertype == _ETH_IPV6 and n >= 54 and frame[14] >> 4 == 6:
        offset = _CSUM_OFFSET.get(frame[20])
        if offset is None:
            return None
        start = 54
        total = 40 + (frame[18] << 8 | frame[19])
        total_sum = sum(_ADDR_V6.unpack_from(frame, 22)) + frame[20] + total - 40
    else:
        return None
    field = start + offset
    if field + 2 > min(n, 14 + total):
        return None
    while total_sum >> 16:
        total_sum = (total_sum & 0xFFFF) + (total_sum >> 16)
    return (start, offset) if frame[field] << 8 | frame[field + 1] == total_sum else None


WIRE_MTU = 1500  # what a TCP super-frame is cut to: Ethernet's MTU, frames of 1514 bytes


def tcp_super_frame(frame: BytesLike, csum_start: int) -> tuple[int, int, int] | None:
    """``(gso_type, hdr_len, gso_size)`` for a TCP frame with an unfinished checksum at ``csum_start``
    (:func:`unfinished_checksum`) that is longer than an Ethernet frame: a TSO segment to cut into
    segments that make 1514-byte frames; None if it fits one frame or its TCP header is bad.

    Any segment size up to the sender's MSS is correct for TCP, and the sender's peer on our side
    advertised at least what an Ethernet MTU allows, so WIRE_MTU is safe. CWR set asks for GSO_ECN, as
    the kernel's SKB_GSO_TCP_ECN: only the first segment keeps the flag.
    """
    n = len(frame)
    if n <= 14 + WIRE_MTU or n < csum_start + 20:
        return None
    thl = (frame[csum_start + 12] >> 4) * 4
    if thl < 20 or n < csum_start + thl:
        return None
    gso_type = GSO_TCPV4 if frame[12:14] == _ETH_IPV4 else GSO_TCPV6
    if frame[csum_start + 13] & 0x80:
        gso_type |= GSO_ECN
    return gso_type, csum_start + thl, WIRE_MTU - (csum_start - 14) - thl
