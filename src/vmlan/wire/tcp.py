"""RFC 9293 TCP headers over IPv4, with the options a modern stack negotiates.

Two APIs, because the future TCP NAT touches every segment:

* :func:`parse_fixed` -- one ``Struct.unpack_from`` of the fixed 20 bytes into a
  :class:`TcpFixed` named tuple, plus the data-offset checks that make the
  result safe to use.  No options, no checksum, no dataclass: a NAT rewriting
  ports needs nothing more, and it adjusts the checksum incrementally.
* :class:`TcpHeader` -- the full decode, options parsed into
  :class:`TcpOptions` and the checksum verified when the IPv4 addresses are
  given, for the endpoint side of the user-mode stack.

Options are decoded into a small typed structure rather than a list of
objects: a stack asks "what MSS?" and "timestamps?", never "what is option 3".
They are re-encoded in Linux's order and alignment (MSS, SACK-permitted and
timestamps sharing a word, NOP-aligned window scale), so :meth:`TcpHeader.to_bytes`
of a parsed header is equivalent to, not necessarily identical with, the input.
Options the structure does not know are kept as ``(kind, data)`` pairs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from ._common import BytesLike, check_uint, explain_uint_fields, resolve_end
from .checksum import internet_checksum, pseudo_header_sum_v4
from .errors import IntegrityError, SanityError

__all__ = [
    "ACK",
    "CWR",
    "ECE",
    "FIN",
    "PSH",
    "RST",
    "SYN",
    "TCP_HLEN",
    "URG",
    "TcpFixed",
    "TcpHeader",
    "TcpOptions",
    "flags_to_str",
    "option_fields",
    "parse_fixed",
    "verify_checksum",
]

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

_FLAG_LETTERS = (
    (FIN, "F"),
    (SYN, "S"),
    (RST, "R"),
    (PSH, "P"),
    (ACK, "A"),
    (URG, "U"),
    (ECE, "E"),
    (CWR, "C"),
)

TCP_HLEN = 20
_MAX_HLEN = 60
_MAX_OPTIONS = _MAX_HLEN - TCP_HLEN
_IPPROTO_TCP = 6

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERMITTED = 4
OPT_SACK = 5
OPT_TIMESTAMPS = 8
_KNOWN = frozenset((OPT_EOL, OPT_NOP, OPT_MSS, OPT_WSCALE, OPT_SACK_PERMITTED, OPT_SACK, OPT_TIMESTAMPS))

_PROTO = "TCP"

#  0                   1                   2                   3
#  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |          Source Port          |       Destination Port        |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                        Sequence Number                        |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                    Acknowledgment Number                      |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |  Data |       |C|E|U|A|P|R|S|F|                               |
# | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             |
# |       |       |R|E|G|K|H|T|N|N|                               |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |           Checksum            |         Urgent Pointer        |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                           [Options]                           |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                             Data                              :
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
_TCP = struct.Struct("!HHIIBBHHH")

# Options (RFC 9293 3.2, RFC 7323, RFC 2018); one kind byte, then a length
# byte counting kind and length, except for EOL (0) and NOP (1):
#
# MSS             +--------+--------+--------+--------+
#                 |00000010|00000100|   max seg size  |
#                 +--------+--------+--------+--------+
_MSS = struct.Struct("!H")
# Window scale    +--------+--------+--------+
#                 |00000011|00000011|shift.cn|
#                 +--------+--------+--------+
# SACK-permitted  +--------+--------+
#                 |00000100|00000010|
#                 +--------+--------+
# SACK            +--------+--------+--------+ ... +--------+ ...
#                 |00000101| 2+8*n  | left edge 1 (32) | right edge 1 (32) | ...
#                 +--------+--------+--------+ ... +--------+ ...
_SACK_BLOCK = struct.Struct("!II")
# Timestamps      +--------+--------+-------+-------+-------+-------+
#                 |00001000|00001010| TSval (32)    | TSecr (32)    |
#                 +--------+--------+-------+-------+-------+-------+
_TS = struct.Struct("!II")
_OPT_MSS = struct.Struct("!BBH")
_OPT_TS = struct.Struct("!BBII")
_NOP_NOP_TS = b"\x01\x01\x08\x0a"


def flags_to_str(flags: int) -> str:
    """Letters of the set flags, scapy style: ``SYN | ACK`` -> ``"SA"``."""
    return "".join(letter for bit, letter in _FLAG_LETTERS if flags & bit)


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpOptions:
    """The options of one segment.  ``None``/``False``/``()`` mean "absent".

    ``timestamps`` is ``(tsval, tsecr)``, ``sack`` a tuple of ``(left, right)``
    edges, ``unknown`` the ``(kind, data)`` of any other option, in order.
    """

    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    sack: tuple[tuple[int, int], ...] = ()
    timestamps: tuple[int, int] | None = None
    unknown: tuple[tuple[int, bytes], ...] = ()

    def __post_init__(self) -> None:
        if self.mss is not None:
            check_uint(_PROTO, "mss", self.mss, 16)
        if self.wscale is not None:
            check_uint(_PROTO, "wscale", self.wscale, 8)
        if len(self.sack) > 4:
            raise SanityError(_PROTO, f"{len(self.sack)} SACK blocks > 4")
        for left, right in self.sack:
            check_uint(_PROTO, "SACK edge", left, 32)
            check_uint(_PROTO, "SACK edge", right, 32)
        if self.timestamps is not None:
            check_uint(_PROTO, "tsval", self.timestamps[0], 32)
            check_uint(_PROTO, "tsecr", self.timestamps[1], 32)
        for kind, data in self.unknown:
            if kind in _KNOWN or not 0 <= kind <= 255:
                raise SanityError(_PROTO, f"option kind {kind} cannot be an unknown option")
            if len(data) > _MAX_OPTIONS - 2:
                raise SanityError(_PROTO, f"option kind {kind} data of {len(data)} bytes too long")

    @classmethod
    def parse(cls, buf: BytesLike, offset: int, end: int) -> TcpOptions:
        """Decode the options area ``buf[offset:end]`` (the caller has bounded it by the data offset)."""
        if end - offset == 12 and buf[offset : offset + 4] == _NOP_NOP_TS:
            # What every segment of an established Linux connection carries.
            return cls(timestamps=_TS.unpack_from(buf, offset + 4))
        mss, wscale, sack_permitted, sack, timestamps, unknown = option_fields(buf, offset, end)
        return cls(
            mss=mss,
            wscale=wscale,
            sack_permitted=sack_permitted,
            sack=sack,
            timestamps=timestamps,
            unknown=tuple(unknown),
        )

    def to_bytes(self) -> bytes:
        """Encode in Linux's layout, padded with EOL to a multiple of 4 bytes (at most 40)."""
        parts: list[bytes] = []
        if self.mss is not None:
            parts.append(_OPT_MSS.pack(OPT_MSS, 4, self.mss))
        if self.timestamps is not None:
            # SACK-permitted fills the two bytes that would otherwise be NOPs.
            parts.append(b"\x04\x02" if self.sack_permitted else b"\x01\x01")
            parts.append(_OPT_TS.pack(OPT_TIMESTAMPS, 10, *self.timestamps))
        elif self.sack_permitted:
            parts.append(b"\x01\x01\x04\x02")
        if self.wscale is not None:
            parts.append(bytes((OPT_NOP, OPT_WSCALE, 3, self.wscale)))
        if self.sack:
            parts.append(bytes((OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(self.sack))))
            parts.extend(_SACK_BLOCK.pack(left, right) for left, right in self.sack)
        for kind, data in self.unknown:
            parts.append(bytes((kind, 2 + len(data))) + data)
        raw = b"".join(parts)
        if len(raw) > _MAX_OPTIONS:
            raise SanityError(_PROTO, f"options need {len(raw)} bytes > {_MAX_OPTIONS}")
        return raw + bytes(-len(raw) % 4)


OptionFields = tuple[
    int | None, int | None, bool, tuple[tuple[int, int], ...], tuple[int, int] | None, list[tuple[int, bytes]]
]


def option_fields(buf: BytesLike, offset: int, end: int) -> OptionFields:
    """The options area ``buf[offset:end]`` checked and decoded into plain values -- ``(mss, wscale,
    sack_permitted, sack, timestamps, unknown)`` -- without building a :class:`TcpOptions` (whose frozen
    dataclass construction and range checks, needless for values read from bytes of their widths, cost
    more than the scan: a SYN's receiver reads two of them). Malformed options raise
    :class:`IntegrityError`, as :meth:`TcpOptions.parse` does (it is built on this)."""
    mss: int | None = None
    wscale: int | None = None
    sack_permitted = False
    sack: tuple[tuple[int, int], ...] = ()
    timestamps: tuple[int, int] | None = None
    unknown: list[tuple[int, bytes]] = []
    i = offset
    while i < end:
        kind = buf[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            raise IntegrityError(_PROTO, f"option kind {kind} lacks its length byte")
        olen = buf[i + 1]
        if olen < 2 or i + olen > end:
            raise IntegrityError(_PROTO, f"option kind {kind} has bad length {olen}")
        if kind == OPT_MSS:
            if olen != 4:
                raise IntegrityError(_PROTO, f"MSS option length {olen} != 4")
            (mss,) = _MSS.unpack_from(buf, i + 2)
        elif kind == OPT_WSCALE:
            if olen != 3:
                raise IntegrityError(_PROTO, f"window scale option length {olen} != 3")
            wscale = buf[i + 2]
        elif kind == OPT_SACK_PERMITTED:
            if olen != 2:
                raise IntegrityError(_PROTO, f"SACK-permitted option length {olen} != 2")
            sack_permitted = True
        elif kind == OPT_SACK:
            if olen < 10 or (olen - 2) % 8:
                raise IntegrityError(_PROTO, f"SACK option length {olen} is not 2 + 8n")
            sack = tuple(_SACK_BLOCK.iter_unpack(bytes(buf[i + 2 : i + olen])))
        elif kind == OPT_TIMESTAMPS:
            if olen != 10:
                raise IntegrityError(_PROTO, f"timestamps option length {olen} != 10")
            timestamps = _TS.unpack_from(buf, i + 2)
        else:
            unknown.append((kind, bytes(buf[i + 2 : i + olen])))
        i += olen
    return mss, wscale, sack_permitted, sack, timestamps, unknown


_NO_OPTIONS = TcpOptions()


class TcpFixed(NamedTuple):
    """The fixed 20-byte header as :func:`parse_fixed` returns it; ``header_len`` includes options."""

    sport: int
    dport: int
    seq: int
    ack: int
    header_len: int
    flags: int
    window: int
    checksum: int
    urgent: int


def parse_fixed(buf: BytesLike, offset: int = 0, end: int | None = None) -> TcpFixed:
    """Fast path: decode the fixed header of the segment in ``buf[offset:end]``.

    Validates only what makes the result safe -- 20 bytes present, data offset
    at least 5 and within the segment -- so ``buf[offset + header_len:end]`` is
    the payload.  Options are not decoded and the checksum is not verified.
    """
    if end is None:
        end = len(buf)
    if offset < 0 or end > len(buf) or end - offset < TCP_HLEN:
        end = resolve_end(_PROTO, buf, offset, end, TCP_HLEN)  # raises with the right message
    sport, dport, seq, ack, doff, flags, window, checksum, urgent = _TCP.unpack_from(buf, offset)
    hlen = (doff >> 4) * 4
    if hlen < TCP_HLEN:
        raise IntegrityError(_PROTO, f"data offset {doff >> 4} < 5")
    if hlen > end - offset:
        raise IntegrityError(_PROTO, f"data offset {doff >> 4} beyond segment of {end - offset} bytes")
    return TcpFixed(sport, dport, seq, ack, hlen, flags, window, checksum, urgent)


def verify_checksum(buf: BytesLike, offset: int, end: int, src_addr: bytes, dst_addr: bytes) -> bool:
    """True if the segment ``buf[offset:end]`` carries a correct checksum for these IPv4 addresses."""
    initial = pseudo_header_sum_v4(src_addr, dst_addr, _IPPROTO_TCP, end - offset)
    return internet_checksum(buf[offset:end], initial) == 0


_HEADER_FIELDS = (
    ("sport", 16),
    ("dport", 16),
    ("seq", 32),
    ("ack", 32),
    ("flags", 8),
    ("window", 16),
    ("checksum", 16),
    ("urgent", 16),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpHeader:
    """A TCP header.  ``flags`` is the 8-bit CWR..FIN field; ``checksum`` holds what was received."""

    sport: int
    dport: int
    seq: int = 0
    ack: int = 0
    flags: int = 0
    window: int = 0
    checksum: int = 0
    urgent: int = 0
    options: TcpOptions = field(default=_NO_OPTIONS)

    def __post_init__(self) -> None:
        if not (
            0 <= self.sport <= 0xFFFF
            and 0 <= self.dport <= 0xFFFF
            and 0 <= self.seq <= 0xFFFFFFFF
            and 0 <= self.ack <= 0xFFFFFFFF
            and 0 <= self.flags <= 0xFF
            and 0 <= self.window <= 0xFFFF
            and 0 <= self.checksum <= 0xFFFF
            and 0 <= self.urgent <= 0xFFFF
        ):
            explain_uint_fields(_PROTO, self, _HEADER_FIELDS)

    @classmethod
    def parse(
        cls,
        buf: BytesLike,
        offset: int = 0,
        end: int | None = None,
        *,
        src_addr: bytes | None = None,
        dst_addr: bytes | None = None,
    ) -> tuple[TcpHeader, int, int]:
        """Decode the segment in ``buf[offset:end]``; return the header and the data's ``(start, end)``.

        ``end`` comes from the IPv4 Total Length (TCP has no length field).
        With both addresses given the checksum is verified.
        """
        fixed = parse_fixed(buf, offset, end)
        if end is None:
            end = len(buf)
        if (src_addr is None) != (dst_addr is None):
            raise ValueError("pass both src_addr and dst_addr to verify the checksum, or neither")
        if (
            src_addr is not None
            and dst_addr is not None
            and not verify_checksum(buf, offset, end, src_addr, dst_addr)
        ):
            raise IntegrityError(_PROTO, f"bad checksum {fixed.checksum:#06x}")
        start = offset + fixed.header_len
        options = (
            TcpOptions.parse(buf, offset + TCP_HLEN, start) if start > offset + TCP_HLEN else _NO_OPTIONS
        )
        flags = fixed.flags
        if fixed.sport == 0 or fixed.dport == 0:
            raise SanityError(_PROTO, f"port 0 ({fixed.sport} -> {fixed.dport})")
        if flags & SYN and flags & (FIN | RST):
            raise SanityError(_PROTO, f"SYN combined with FIN or RST ({flags_to_str(flags)})")
        header = cls(
            sport=fixed.sport,
            dport=fixed.dport,
            seq=fixed.seq,
            ack=fixed.ack,
            flags=flags,
            window=fixed.window,
            checksum=fixed.checksum,
            urgent=fixed.urgent,
            options=options,
        )
        return header, start, end

    def _pack(self, checksum: int) -> bytes:
        opts = self.options.to_bytes() if self.options is not _NO_OPTIONS else b""
        doff = (TCP_HLEN + len(opts)) << 2
        fixed = _TCP.pack(
            self.sport, self.dport, self.seq, self.ack, doff, self.flags, self.window, checksum, self.urgent
        )
        return fixed + opts

    def to_bytes(self) -> bytes:
        """The header with its options re-encoded and the stored checksum."""
        return self._pack(self.checksum)

    def build(self, payload: BytesLike, *, src_addr: bytes, dst_addr: bytes) -> bytes:
        """The whole segment, checksum computed over the pseudo-header, header and ``payload``."""
        raw = self._pack(0) + bytes(payload)
        csum = internet_checksum(raw, pseudo_header_sum_v4(src_addr, dst_addr, _IPPROTO_TCP, len(raw)))
        return raw[:16] + csum.to_bytes(2, "big") + raw[18:]
