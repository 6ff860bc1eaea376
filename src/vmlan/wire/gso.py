"""Software offload: what a NIC would do with a frame its sender left unfinished.

A TAP with vnet headers hands over TCP segments of up to 64 KiB whose checksum is only the
pseudo-header sum (GSO plus NEEDS_CSUM), and the user stack produces the same for offload-capable
ports. A port whose peer cannot take that (a QEMU stream socket, a VDE switch) gets the frame cut into
``gso_size`` segments with every header fixed up, as Linux's ``skb_segment``/``tcp_gso_segment`` do:

* TCP (GSO_TCPV4, GSO_TCPV6): the payload after the headers is cut into ``gso_size`` pieces; each
  piece's sequence number moves on by the bytes before it; CWR stays only on the first piece (RFC 3168
  6.1.2), FIN and PSH only on the last; IPv4 total length, identification (+1 per piece, as Linux does
  for every GSO frame a virtio header can describe) and header checksum, or the IPv6 payload length,
  are rewritten; every TCP checksum is computed in full. Options (IP and TCP) go on every piece.
* UDP_L4 (USO): the UDP payload is cut into ``gso_size`` datagrams, each with its own UDP header
  (IPv4 identification +1 per datagram, as for TCP).
* UDP (UFO, IPv4 only): the datagram is checksummed whole, then IP-fragmented into pieces of
  ``gso_size`` bytes of the UDP datagram (rounded down to the 8-byte fragment unit; the UDP header
  counts, as in Linux's ``udp4_ufo_fragment``), all with the original identification.
* NEEDS_CSUM alone: the sum over ``csum_start`` to the end of the IP datagram (whose checksum field
  holds the pseudo-header sum) is complemented into ``csum_start + csum_offset``; a result of 0 is
  sent as 0xFFFF, as Linux's ``skb_checksum_help`` does (the same value in one's complement, and the
  only form UDP allows). Linux sums to the end of the buffer; we stop at the IP datagram's end so
  Ethernet padding cannot corrupt the sum.

A GSO frame whose payload fits one piece (shorter than ``gso_size``, or empty) becomes one complete
frame: Linux's ``virtio_net_hdr_to_skb`` treats such frames as not GSO at all ("too small packets are
not really GSO ones").

Header lengths are taken from the headers themselves, never from ``hdr_len``, ``csum_start`` or
``csum_offset`` of a GSO frame: the metadata comes from a guest or a kernel we do not trust to agree
with the bytes. Anything inconsistent raises :class:`~vmlan.wire.errors.WireError` (the port counts
the frame as dropped); nothing else escapes.

Speed: this sits between a TAP and every port that cannot take offloaded frames, so the per-segment
work is kept to integer arithmetic and one ``struct`` pack. The payload sums of all full-sized pieces
come from one numpy reduction over the payload viewed as a ``(pieces, gso_size)`` matrix; the
headers' constant words are summed once per frame; each piece's checksums are those sums plus the
words that change (length, identification, sequence number, flags), reduced ``% 0xFFFF``. See
``python -m benchmarks.gso`` for the figures.
"""

from __future__ import annotations

import importlib
import struct
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from ._common import BytesLike
from .checksum import internet_checksum, ones_complement_sum
from .errors import IntegrityError, SanityError
from .ethernet import ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6
from .vnet import FLAG_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4, Offload

__all__ = ["MAX_SEGMENTS", "software_offload"]

_TCP_CWR = 0x80
_TCP_FIN_PSH = 0x09
#: Most frames one super-frame may turn into (64 KiB at a gso_size of 64); more raises.
MAX_SEGMENTS = 1024
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_IPPROTO_TCP = 6
_IPPROTO_UDP = 17


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
    if ethertype == ETH_P_8021Q:
        if len(frame) < 18:
            raise IntegrityError("gso", "truncated 802.1Q tag")
        return 18, (frame[16] << 8) | frame[17]
    return 14, ethertype


def _datagram_end(frame: BytesLike) -> int:
    """Where the IP datagram in ``frame`` ends (its length fields, if sane), else the frame's end."""
    n = len(frame)
    if n < 14:
        return n
    l3, ethertype = _l3_offset(frame)
    if ethertype == ETH_P_IP and n >= l3 + 20 and frame[l3] >> 4 == 4:
        total = (frame[l3 + 2] << 8) | frame[l3 + 3]
        if (frame[l3] & 0x0F) * 4 <= total and l3 + total <= n:
            return l3 + total
    elif ethertype == ETH_P_IPV6 and n >= l3 + 40 and frame[l3] >> 4 == 6:
        end = l3 + 40 + ((frame[l3 + 4] << 8) | frame[l3 + 5])
        if end <= n:
            return end
    return n


def _complete_checksum(frame: BytesLike, offload: Offload) -> bytes:
    start, field = offload.csum_start, offload.csum_start + offload.csum_offset
    end = _datagram_end(frame)
    if start < 14 or offload.csum_offset < 0 or field + 2 > end:
        raise SanityError("gso", f"csum_start {start} / csum_offset {offload.csum_offset} outside the datagram")
    out = bytearray(frame)
    _U16.pack_into(out, field, internet_checksum(memoryview(out)[start:end]) or 0xFFFF)
    return bytes(out)


def _ip_layout(frame: BytesLike, l3: int, ethertype: int, proto: int) -> tuple[int, int, int]:
    """(IP header length, L4 offset, end of the IP datagram) after checking ``proto`` is carried."""
    n = len(frame)
    if ethertype == ETH_P_IP:
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
    if ethertype == ETH_P_IPV6:
        if n < l3 + 40 or frame[l3] >> 4 != 6:
            raise IntegrityError("gso", "not an IPv6 header")
        plen = _U16.unpack_from(frame, l3 + 4)[0]
        if l3 + 40 + plen > n:
            raise IntegrityError("gso", f"IPv6 payload length {plen} in a {n}-byte frame")
        if frame[l3 + 6] != proto:
            raise SanityError("gso", "IPv6 extension headers or another protocol under GSO")
        return 40, l3 + 40, l3 + 40 + plen
    raise SanityError("gso", f"GSO of ethertype {ethertype:#06x}")


def _address_sum(frame: BytesLike, l3: int, ethertype: int, proto: int) -> int:
    """The pseudo-header's words but the length: addresses and protocol (not folded)."""
    if ethertype == ETH_P_IP:
        return ones_complement_sum(frame[l3 + 12 : l3 + 20]) + proto
    return ones_complement_sum(frame[l3 + 8 : l3 + 40]) + proto


def _count(size: int, total: int) -> int:
    """How many pieces ``total`` payload bytes make at ``size`` (one for an empty payload)."""
    if size <= 0:
        raise SanityError("gso", f"gso_size {size}")
    count = max(1, -(-total // size))
    if count > MAX_SEGMENTS:
        raise SanityError("gso", f"{total} bytes at gso_size {size} is more than {MAX_SEGMENTS} segments")
    return count


# -- payload sums --------------------------------------------------------------------------------------
def _piece_sums_python(data: memoryview, size: int, count: int) -> list[int]:
    return [ones_complement_sum(data[off : off + size]) for off in range(0, count * size, size)]


def _make_numpy_piece_sums() -> Callable[[memoryview, int, int], list[int]] | None:
    """One numpy reduction for the sums of all full pieces (None when numpy is missing).

    The payload is read as little-endian words (u32 when ``size`` is a multiple of 4, else u16) in a
    ``(pieces, words)`` matrix summed along its rows. A little-endian word is its big-endian twin
    times 256 modulo 0xFFFF, and so is a sum of them, hence the ``<< 8``: the values returned are
    congruent to each piece's RFC 1071 sum modulo 0xFFFF, which is all a one's complement sum needs.
    An odd ``size`` starts every other piece in the middle of a word: those go piece by piece.
    """
    try:
        np: Any = importlib.import_module("numpy")
    except ImportError:
        return None
    frombuffer, u64 = np.frombuffer, np.uint64
    le_u32, le_u16 = np.dtype("<u4"), np.dtype("<u2")

    def piece_sums(data: memoryview, size: int, count: int) -> list[int]:
        full = min(count, len(data) // size)
        if size & 1 or full < 2:
            return _piece_sums_python(data, size, count)
        dtype, width = (le_u32, 4) if not size & 3 else (le_u16, 2)
        words = frombuffer(data, dtype=dtype, count=full * size // width).reshape(full, size // width)
        sums: list[int] = [s << 8 for s in words.sum(axis=1, dtype=u64).tolist()]
        if full < count:
            sums.append(ones_complement_sum(data[full * size :]))
        return sums

    return piece_sums


def _resolve_piece_sums(data: memoryview, size: int, count: int) -> list[int]:
    global _piece_sums
    _piece_sums = _make_numpy_piece_sums() or _piece_sums_python
    return _piece_sums(data, size, count)


_piece_sums: Callable[[memoryview, int, int], list[int]] = _resolve_piece_sums


# -- per-piece header layouts ----------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _tcp_layout(l3: int, ihl: int, thl: int, v4: bool) -> struct.Struct:
    """Ethernet + IP + TCP header with the per-piece fields as struct slots, the rest as byte runs.

    IPv4: frame[:l3+2] | total | ident | frame[l3+6:l3+10] | IP checksum | frame[l3+12:l3+ihl];
    IPv6: frame[:l3+4] | payload length | frame[l3+6:l3+40]. Then TCP: ports | seq | ack |
    data offset byte | flags | window | checksum | urgent pointer and options.
    """
    ip = f"{l3 + 2}sHH4sH{ihl - 12}s" if v4 else f"{l3 + 4}sH34s"
    return struct.Struct(f"!{ip}4sI4sBB2sH{thl - 18}s")


@lru_cache(maxsize=64)
def _udp_layout(l3: int, ihl: int, v4: bool) -> struct.Struct:
    ip = f"{l3 + 2}sHH4sH{ihl - 12}s" if v4 else f"{l3 + 4}sH34s"
    return struct.Struct(f"!{ip}4sHH")


def _fold(s: int) -> int:
    """A positive sum of words reduced to its 16-bit one's complement value (1..0xFFFF)."""
    return s % 0xFFFF or 0xFFFF


def _ip_parts(head: BytesLike, l3: int, ihl: int, v4: bool) -> tuple[tuple[bytes, ...], int]:
    """The constant byte runs of the IP header and (IPv4) the sum of its words that do not change."""
    if v4:
        a, b, c = bytes(head[: l3 + 2]), bytes(head[l3 + 6 : l3 + 10]), bytes(head[l3 + 12 : l3 + ihl])
        return (a, b, c), ones_complement_sum(a[l3:] + b + c)
    return (bytes(head[: l3 + 4]), bytes(head[l3 + 6 : l3 + 40])), 0


def _segment_tcp(frame: BytesLike, l3: int, ethertype: int, size: int, gso: int) -> list[bytes]:
    if ethertype in (ETH_P_IP, ETH_P_IPV6) and (gso == GSO_TCPV4) != (ethertype == ETH_P_IP):
        raise SanityError("gso", "gso_type does not match the IP version")
    ihl, l4, end = _ip_layout(frame, l3, ethertype, _IPPROTO_TCP)
    if end - l4 < 20:
        raise IntegrityError("gso", "truncated TCP header")
    thl = (frame[l4 + 12] >> 4) * 4
    if thl < 20 or l4 + thl > end:
        raise IntegrityError("gso", f"TCP data offset {thl}")
    v4 = ethertype == ETH_P_IP
    data = memoryview(frame)[l4 + thl : end]
    dlen = len(data)
    count = _count(size, dlen)
    sums = _piece_sums(data, size, count) if dlen else [0]

    tcp = bytes(frame[l4 : l4 + thl])
    ports, ack, window, rest = tcp[0:4], tcp[8:12], tcp[14:16], tcp[18:]
    seq = _U32.unpack_from(tcp, 4)[0]
    doff, flags = tcp[12], tcp[13]
    const = ones_complement_sum(ports + ack + window + rest) + _address_sum(frame, l3, ethertype, _IPPROTO_TCP)
    ip_runs, ip_const = _ip_parts(frame, l3, ihl, v4)
    ident = _U16.unpack_from(frame, l3 + 4)[0] if v4 else 0
    pack = _tcp_layout(l3, ihl, thl, v4).pack
    doff_word = doff << 8
    mid_flags = flags & ~(_TCP_CWR | _TCP_FIN_PSH)
    last = count - 1

    out: list[bytes] = []
    append = out.append
    for i in range(count):
        off = i * size
        chunk = data[off : off + size]
        seg_len = thl + len(chunk)
        f = flags if count == 1 else (flags & ~_TCP_FIN_PSH if i == 0 else mid_flags if i < last else flags & ~_TCP_CWR)
        s = (seq + off) & 0xFFFFFFFF
        csum = _fold(const + seg_len + (s >> 16) + (s & 0xFFFF) + (doff_word | f) + sums[i]) ^ 0xFFFF
        if v4:
            total = ihl + seg_len
            iid = (ident + i) & 0xFFFF
            ip_csum = _fold(ip_const + total + iid) ^ 0xFFFF
            head = pack(
                ip_runs[0], total, iid, ip_runs[1], ip_csum, ip_runs[2], ports, s, ack, doff, f, window, csum, rest
            )
        else:
            head = pack(ip_runs[0], seg_len, ip_runs[1], ports, s, ack, doff, f, window, csum, rest)
        append(head + chunk)
    return out


def _segment_udp(frame: BytesLike, l3: int, ethertype: int, size: int) -> list[bytes]:
    ihl, l4, end = _ip_layout(frame, l3, ethertype, _IPPROTO_UDP)
    if end - l4 < 8:
        raise IntegrityError("gso", "truncated UDP header")
    v4 = ethertype == ETH_P_IP
    data = memoryview(frame)[l4 + 8 : end]
    dlen = len(data)
    count = _count(size, dlen)
    sums = _piece_sums(data, size, count) if dlen else [0]
    ports = bytes(frame[l4 : l4 + 4])
    const = ones_complement_sum(ports) + _address_sum(frame, l3, ethertype, _IPPROTO_UDP)
    ip_runs, ip_const = _ip_parts(frame, l3, ihl, v4)
    ident = _U16.unpack_from(frame, l3 + 4)[0] if v4 else 0
    pack = _udp_layout(l3, ihl, v4).pack
    out: list[bytes] = []
    for i in range(count):
        chunk = data[i * size : (i + 1) * size]
        udp_len = 8 + len(chunk)
        csum = _fold(const + 2 * udp_len + sums[i]) ^ 0xFFFF or 0xFFFF  # length: header and pseudo-header
        if v4:
            total = ihl + udp_len
            iid = (ident + i) & 0xFFFF
            ip_csum = _fold(ip_const + total + iid) ^ 0xFFFF
            head = pack(ip_runs[0], total, iid, ip_runs[1], ip_csum, ip_runs[2], ports, udp_len, csum)
        else:
            head = pack(ip_runs[0], udp_len, ip_runs[1], ports, udp_len, csum)
        out.append(head + chunk)
    return out


def _fragment_udp(frame: BytesLike, l3: int, ethertype: int, size: int) -> list[bytes]:
    if ethertype != ETH_P_IP:
        raise SanityError("gso", "UFO is IPv4 only here")
    ihl, l4, end = _ip_layout(frame, l3, ethertype, _IPPROTO_UDP)
    if end - l4 < 8:
        raise IntegrityError("gso", "truncated UDP header")
    if size <= 0:
        raise SanityError("gso", f"gso_size {size}")
    datagram = bytearray(frame[l4:end])
    n = len(datagram)
    _U16.pack_into(datagram, 4, n)
    datagram[6:8] = b"\0\0"
    csum = internet_checksum(datagram, _address_sum(frame, l3, ethertype, _IPPROTO_UDP) + n) or 0xFFFF
    _U16.pack_into(datagram, 6, csum)
    frag_word = _U16.unpack_from(frame, l3 + 6)[0]  # DF or nothing: fragments were refused above
    step = n if n <= size else size & ~7
    if step == 0 or -(-n // step) > MAX_SEGMENTS:
        raise SanityError("gso", f"a {n}-byte datagram in fragments of gso_size {size}")
    out: list[bytes] = []
    for off in range(0, n, step):
        chunk = datagram[off : off + step]
        head = bytearray(frame[: l3 + ihl])
        _U16.pack_into(head, l3 + 2, ihl + len(chunk))
        if step < n:  # as Linux's inet_gso_segment for UFO: offset and MF replace the whole field
            frag_word = (0x2000 if off + step < n else 0) | (off >> 3)
        _U16.pack_into(head, l3 + 6, frag_word)
        head[l3 + 10 : l3 + 12] = b"\0\0"
        _U16.pack_into(head, l3 + 10, internet_checksum(memoryview(head)[l3 : l3 + ihl]))
        out.append(bytes(head + chunk))
    return out
