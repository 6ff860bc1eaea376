"""Software offload: what a NIC would do with a frame its sender left unfinished.

A TAP with vnet headers hands over TCP segments of up to 64 KiB whose checksum is only the
pseudo-header sum (GSO plus NEEDS_CSUM), and the user stack produces the same for offload-capable
ports. A port whose peer cannot take that (a QEMU stream socket, a VDE switch) gets the frame cut into
``gso_size`` segments with every header fixed up, as Linux's ``skb_segment``/``tcp_gso_segment`` do:

* TCP (GSO_TCPV4, GSO_TCPV6): the payload after the headers is cut into ``gso_size`` pieces; each
  piece's sequence number moves on by the bytes before it; CWR stays only on the first piece (RFC 3168
  6.1.2), FIN and PSH only on the last; IPv4 total length, identification (+1 per piece) and header
  checksum, or the IPv6 payload length, are rewritten; every TCP checksum is computed in full.
* UDP_L4 (USO): the UDP payload is cut into ``gso_size`` datagrams, each with its own UDP header.
* UDP (UFO, IPv4 only): the datagram is checksummed whole, then IP-fragmented at ``gso_size``.
* NEEDS_CSUM alone: the sum over ``csum_start..end`` (whose checksum field holds the pseudo-header
  sum) is complemented into ``csum_start + csum_offset``; a UDP result of 0 is sent as 0xFFFF.

Header lengths are taken from the headers themselves, never from ``hdr_len``: the metadata comes from
a guest or a kernel we do not trust to agree with the bytes. Anything inconsistent raises
:class:`~vmlan.wire.errors.WireError` (the port counts the frame as dropped).
"""

from __future__ import annotations

import struct

from ._common import BytesLike
from .checksum import internet_checksum, pseudo_header_sum_v4, pseudo_header_sum_v6
from .errors import IntegrityError, SanityError
from .vnet import FLAG_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4, Offload

__all__ = ["software_offload"]

_ETH_P_IP = 0x0800
_ETH_P_IPV6 = 0x86DD
_ETH_P_8021Q = 0x8100
_TCP_CWR = 0x80
_TCP_FIN_PSH = 0x09
_MAX_PIECES = 1024  # 64 KiB at an MSS of 64
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def software_offload(frame: BytesLike, offload: Offload) -> list[bytes]:
    """The wire frames ``frame`` stands for (one, or one per segment), all complete."""
    gso = offload.gso
    if gso == GSO_NONE:
        if not offload.flags & FLAG_NEEDS_CSUM:
            return [bytes(frame)]
        return [_complete_checksum(frame, offload)]
    l3, ethertype = _l3_offset(frame)
    if gso in (GSO_TCPV4, GSO_TCPV6):
        return _segment_tcp(frame, l3, ethertype, offload.gso_size, gso)
    if gso == GSO_UDP_L4:
        return _segment_udp(frame, l3, ethertype, offload.gso_size)
    if gso == GSO_UDP:
        return _fragment_udp(frame, l3, ethertype, offload.gso_size)
    raise SanityError("gso", f"unsupported gso_type {offload.gso_type:#04x}")


def _l3_offset(frame: BytesLike) -> tuple[int, int]:
    if len(frame) < 14:
        raise IntegrityError("gso", "frame shorter than an Ethernet header")
    ethertype = (frame[12] << 8) | frame[13]
    if ethertype == _ETH_P_8021Q:
        if len(frame) < 18:
            raise IntegrityError("gso", "truncated 802.1Q tag")
        return 18, (frame[16] << 8) | frame[17]
    return 14, ethertype


def _complete_checksum(frame: BytesLike, offload: Offload) -> bytes:
    start, field = offload.csum_start, offload.csum_start + offload.csum_offset
    if start < 14 or field + 2 > len(frame) or start > field:
        raise SanityError("gso", f"csum_start {start} / csum_offset {offload.csum_offset} outside the frame")
    out = bytearray(frame)
    csum = internet_checksum(memoryview(out)[start:])
    if csum == 0 and offload.csum_offset == 6:  # UDP: 0 means "no checksum"
        csum = 0xFFFF
    _U16.pack_into(out, field, csum)
    return bytes(out)


def _ip_layout(frame: BytesLike, l3: int, ethertype: int, proto: int) -> tuple[int, int, int]:
    """(IP header length, L4 offset, end of the IP datagram) after checking ``proto`` is carried."""
    n = len(frame)
    if ethertype == _ETH_P_IP:
        if n < l3 + 20 or frame[l3] >> 4 != 4:
            raise IntegrityError("gso", "not an IPv4 header")
        ihl = (frame[l3] & 0x0F) * 4
        total = _U16.unpack_from(frame, l3 + 2)[0]
        if ihl < 20 or total < ihl or l3 + total > n:
            raise IntegrityError("gso", f"IPv4 lengths ihl={ihl} total={total} in a {n}-byte frame")
        if frame[l3 + 9] != proto:
            raise SanityError("gso", f"IPv4 protocol {frame[l3 + 9]} where {proto} was announced")
        if _U16.unpack_from(frame, l3 + 6)[0] & 0x3FFF:
            raise SanityError("gso", "GSO of an IPv4 fragment")
        return ihl, l3 + ihl, l3 + total
    if ethertype == _ETH_P_IPV6:
        if n < l3 + 40 or frame[l3] >> 4 != 6:
            raise IntegrityError("gso", "not an IPv6 header")
        plen = _U16.unpack_from(frame, l3 + 4)[0]
        if l3 + 40 + plen > n:
            raise IntegrityError("gso", f"IPv6 payload length {plen} in a {n}-byte frame")
        if frame[l3 + 6] != proto:
            raise SanityError("gso", "IPv6 extension headers or another protocol under GSO")
        return 40, l3 + 40, l3 + 40 + plen
    raise SanityError("gso", f"GSO of ethertype {ethertype:#06x}")


def _pseudo_sum(frame: BytesLike, l3: int, ethertype: int, proto: int, length: int) -> int:
    if ethertype == _ETH_P_IP:
        return pseudo_header_sum_v4(bytes(frame[l3 + 12 : l3 + 16]), bytes(frame[l3 + 16 : l3 + 20]), proto, length)
    return pseudo_header_sum_v6(bytes(frame[l3 + 8 : l3 + 24]), bytes(frame[l3 + 24 : l3 + 40]), proto, length)


def _new_ip_header(frame: BytesLike, l3: int, ethertype: int, ihl: int, l4_len: int, index: int) -> bytearray:
    """The Ethernet and IP headers for piece ``index`` carrying ``l4_len`` bytes of L4."""
    head = bytearray(frame[: l3 + ihl])
    if ethertype == _ETH_P_IP:
        _U16.pack_into(head, l3 + 2, ihl + l4_len)
        ident = (_U16.unpack_from(head, l3 + 4)[0] + index) & 0xFFFF
        _U16.pack_into(head, l3 + 4, ident)
        head[l3 + 10 : l3 + 12] = b"\0\0"
        _U16.pack_into(head, l3 + 10, internet_checksum(memoryview(head)[l3 : l3 + ihl]))
    else:
        _U16.pack_into(head, l3 + 4, l4_len)
    return head


def _pieces(size: int, total: int) -> range:
    if size <= 0:
        raise SanityError("gso", "gso_size 0")
    if (total + size - 1) // size > _MAX_PIECES:
        raise SanityError("gso", f"{total} bytes at gso_size {size} is more than {_MAX_PIECES} segments")
    return range(0, total, size) if total else range(0, 1)


def _segment_tcp(frame: BytesLike, l3: int, ethertype: int, size: int, gso: int) -> list[bytes]:
    if (gso == GSO_TCPV4) != (ethertype == _ETH_P_IP):
        raise SanityError("gso", "gso_type does not match the IP version")
    ihl, l4, end = _ip_layout(frame, l3, ethertype, 6)
    if end - l4 < 20:
        raise IntegrityError("gso", "truncated TCP header")
    thl = (frame[l4 + 12] >> 4) * 4
    if thl < 20 or l4 + thl > end:
        raise IntegrityError("gso", f"TCP data offset {thl}")
    tcp = bytes(frame[l4 : l4 + thl])
    seq = _U32.unpack_from(tcp, 4)[0]
    flags = tcp[13]
    data = memoryview(frame)[l4 + thl : end]
    offsets = _pieces(size, len(data))
    last = offsets[-1]
    out: list[bytes] = []
    for index, off in enumerate(offsets):
        chunk = data[off : off + size]
        header = bytearray(tcp)
        _U32.pack_into(header, 4, (seq + off) & 0xFFFFFFFF)
        f = flags
        if index:
            f &= ~_TCP_CWR
        if off != last:
            f &= ~_TCP_FIN_PSH
        header[13] = f
        header[16:18] = b"\0\0"
        seg_len = thl + len(chunk)
        psum = _pseudo_sum(frame, l3, ethertype, 6, seg_len)
        csum = internet_checksum(bytes(header) + chunk, psum)
        _U16.pack_into(header, 16, csum)
        out.append(bytes(_new_ip_header(frame, l3, ethertype, ihl, seg_len, index) + header + chunk))
    return out


def _segment_udp(frame: BytesLike, l3: int, ethertype: int, size: int) -> list[bytes]:
    ihl, l4, end = _ip_layout(frame, l3, ethertype, 17)
    if end - l4 < 8:
        raise IntegrityError("gso", "truncated UDP header")
    sport_dport = bytes(frame[l4 : l4 + 4])
    data = memoryview(frame)[l4 + 8 : end]
    out: list[bytes] = []
    for index, off in enumerate(_pieces(size, len(data))):
        chunk = data[off : off + size]
        header = bytearray(sport_dport + _U16.pack(8 + len(chunk)) + b"\0\0")
        psum = _pseudo_sum(frame, l3, ethertype, 17, 8 + len(chunk))
        csum = internet_checksum(bytes(header) + chunk, psum) or 0xFFFF
        _U16.pack_into(header, 6, csum)
        out.append(bytes(_new_ip_header(frame, l3, ethertype, ihl, 8 + len(chunk), index) + header + chunk))
    return out


def _fragment_udp(frame: BytesLike, l3: int, ethertype: int, size: int) -> list[bytes]:
    if ethertype != _ETH_P_IP:
        raise SanityError("gso", "UFO is IPv4 only here")
    ihl, l4, end = _ip_layout(frame, l3, ethertype, 17)
    if end - l4 < 8:
        raise IntegrityError("gso", "truncated UDP header")
    datagram = bytearray(frame[l4:end])
    _U16.pack_into(datagram, 4, len(datagram))
    datagram[6:8] = b"\0\0"
    csum = internet_checksum(datagram, _pseudo_sum(frame, l3, ethertype, 17, len(datagram))) or 0xFFFF
    _U16.pack_into(datagram, 6, csum)
    step = max(8, size & ~7)
    if (len(datagram) + step - 1) // step > _MAX_PIECES:
        raise SanityError("gso", "too many fragments")
    out: list[bytes] = []
    for off in range(0, len(datagram), step):
        chunk = datagram[off : off + step]
        head = bytearray(frame[: l3 + ihl])
        _U16.pack_into(head, l3 + 2, ihl + len(chunk))
        more = 0x2000 if off + step < len(datagram) else 0
        _U16.pack_into(head, l3 + 6, more | (off >> 3))
        head[l3 + 10 : l3 + 12] = b"\0\0"
        _U16.pack_into(head, l3 + 10, internet_checksum(memoryview(head)[l3 : l3 + ihl]))
        out.append(bytes(head + chunk))
    return out
