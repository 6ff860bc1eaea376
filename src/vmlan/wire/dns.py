"""RFC 1035 DNS messages: header, questions, resource records and compressed names.

The codec serves two users.  The DNS forwarder (:mod:`vmlan.engines.dns`)
needs to read a guest's query (header and question), build small answers of
its own and match an upstream's response to the query it answers, without
re-encoding responses it passes through; DHCP option 119 (RFC 3397, in
:mod:`vmlan.wire.dhcp`) reuses the name codec, whose compression pointers
there count from the start of the option data.

Names are text: labels joined by ``"."`` with no trailing dot, the root being
``"."``.  A label byte that is not printable ASCII, or is ``.`` or ``\\``,
is written as a master-file escape (RFC 1035 section 5.1: ``\\DDD`` decimal, or
``\\X`` for the two specials), so every name on the wire has exactly one text
form and :func:`name_to_labels` turns it back into the same bytes.  Comparisons
that DNS defines as case-insensitive (ASCII only) use :func:`name_key`.

Decoding follows the wire layer's order: integrity first (truncation,
lengths, compression pointers that do not point strictly backwards -- the
guard that makes pointer loops impossible), then sanity (an A record whose
RDATA is not 4 bytes).  Names found inside the RDATA of the RFC 1035 types
that may be compressed (NS, CNAME, SOA, PTR, MX, ...) are expanded on decode,
so a parsed record is self-contained and can be re-encoded anywhere; encoding
never compresses RDATA (always legal, and RFC 3597 forbids it for newer
types).

Work is bounded by the message, whatever its contents: section counts are checked against the
message length before anything is decoded (a question takes at least 5 octets, a record 11), a
name takes at most :data:`MAX_NAME_STEPS` labels and pointers, and within one message every
name is decoded through a cache of the suffixes already read, so each octet is walked at most
twice however the compression pointers chain (:class:`DnsMessage.parse`, :func:`parse_questions`).
A caller that wants exactly one question says so (``expect=1``) and a message with any other
count is refused before its first name is read.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from ._common import BytesLike, check_uint, resolve_end
from .errors import IntegrityError, SanityError

__all__ = [
    "CLASS_ANY",
    "CLASS_IN",
    "DNS_HLEN",
    "FLAG_AA",
    "FLAG_AD",
    "FLAG_CD",
    "FLAG_QR",
    "FLAG_RA",
    "FLAG_RD",
    "FLAG_TC",
    "MAX_NAME_LEN",
    "MAX_NAME_STEPS",
    "OPCODE_QUERY",
    "RCODE_FORMERR",
    "RCODE_NOERROR",
    "RCODE_NOTIMP",
    "RCODE_NXDOMAIN",
    "RCODE_REFUSED",
    "RCODE_SERVFAIL",
    "TYPE_A",
    "TYPE_AAAA",
    "TYPE_ANY",
    "TYPE_CNAME",
    "TYPE_MX",
    "TYPE_NS",
    "TYPE_OPT",
    "TYPE_PTR",
    "TYPE_SOA",
    "TYPE_TXT",
    "DnsHeader",
    "DnsMessage",
    "DnsQuestion",
    "DnsRecord",
    "decode_name",
    "encode_name",
    "labels_to_name",
    "make_flags",
    "name_key",
    "name_to_labels",
    "parse_questions",
]

_PROTO = "DNS"

DNS_HLEN = 12
#: RFC 1035 section 2.3.4: a name is at most 255 octets on the wire (length octets included).
MAX_NAME_LEN = 255
#: Labels, pointers and the root octet read for one name.  A 255-octet name has at most 127
#: labels, and an encoder that compresses honestly follows at most one pointer per label
#: (each suffix it points at was written as labels before a pointer), so 2 * 127 + 1 steps never
#: refuse one; a longer walk is a chain of pointers built to burn time.
MAX_NAME_STEPS = 2 * 127 + 1
#: The fewest octets a question (root name, type, class) and a record (root name, type, class,
#: TTL, RDLENGTH) take: what a section count is checked against before decoding.
_MIN_QUESTION = 5
_MIN_RECORD = 11
_MAX_LABEL = 63
_MAX_POINTER = 0x3FFF
_DIGITS = frozenset("0123456789")
# Label octets whose text is the octet itself: printable ASCII but "." and "\\".
_PLAIN = bytes(b for b in range(0x21, 0x7F) if b not in (0x2E, 0x5C))

# Header flag bits (the 16-bit word after the ID).
FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080
FLAG_AD = 0x0020
FLAG_CD = 0x0010

OPCODE_QUERY = 0

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5

TYPE_A = 1
TYPE_NS = 2
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_PTR = 12
TYPE_MX = 15
TYPE_TXT = 16
TYPE_AAAA = 28
TYPE_OPT = 41
TYPE_ANY = 255

CLASS_IN = 1
CLASS_ANY = 255

#                                 1  1  1  1  1  1
#   0  1  2  3  4  5  6  7  8  9  0  1  2  3  4  5
# +--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+
# |                      ID                       |
# +--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+
# |QR|   Opcode  |AA|TC|RD|RA| Z|AD|CD|   RCODE   |
# +--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+
# |                    QDCOUNT                    |
# +--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+
# |                    ANCOUNT                    |
# +--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+
# |                    NSCOUNT                    |
# +--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+
# |                    ARCOUNT                    |
# +--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+--+
_HEADER = struct.Struct("!HHHHHH")

# Question, after QNAME:            Resource record, after NAME:
# +--+--+--+--+--+--+--+--+         +--+--+--+--+--+--+--+--+--+--+--+--+
# |   QTYPE   |  QCLASS   |         | TYPE | CLASS |  TTL  | RDLENGTH  |
# +--+--+--+--+--+--+--+--+         +--+--+--+--+--+--+--+--+--+--+--+--+
#                                   then RDLENGTH octets of RDATA
_QUESTION = struct.Struct("!HH")
_RR = struct.Struct("!HHIH")

# RDATA layouts made of names (N) and fixed octets (an int), for the types RFC 1035 lets senders compress.
_RDATA_NAMES: dict[int, tuple[int | str, ...]] = {
    TYPE_NS: ("N",),
    3: ("N",),  # MD
    4: ("N",),  # MF
    TYPE_CNAME: ("N",),
    TYPE_SOA: ("N", "N", 20),
    7: ("N",),  # MB
    8: ("N",),  # MG
    9: ("N",),  # MR
    TYPE_PTR: ("N",),
    14: ("N", "N"),  # MINFO
    TYPE_MX: (2, "N"),
}
_RDATA_FIXED = {TYPE_A: 4, TYPE_AAAA: 16}


# --------------------------------------------------------------------------- names


def _label_to_text(label: bytes) -> str:
    if not label.translate(None, _PLAIN):
        return label.decode("ascii")
    out = []
    for b in label:
        if b in (0x2E, 0x5C):  # "." and "\"
            out.append("\\" + chr(b))
        elif 0x21 <= b <= 0x7E:
            out.append(chr(b))
        else:
            out.append(f"\\{b:03d}")
    return "".join(out)


def labels_to_name(labels: Sequence[bytes]) -> str:
    """Wire labels -> text (``[b"www", b"example", b"com"]`` -> ``"www.example.com"``; ``[]`` -> ``"."``)."""
    if not labels:
        return "."
    return ".".join(_label_to_text(label) for label in labels)


@functools.lru_cache(maxsize=1024)
def name_to_labels(name: str) -> tuple[bytes, ...]:
    """Text -> wire labels; the inverse of :func:`labels_to_name`, which also accepts a trailing dot.

    Refuses (:class:`SanityError`) what cannot be a DNS name: empty labels, labels over 63
    octets, names over 255 octets on the wire, non-ASCII characters (use the IDNA form).
    """
    if name in ("", "."):
        return ()
    if "\\" not in name:  # the common case: no escapes, split at the dots
        if not name.isascii():
            raise SanityError(_PROTO, f"non-ASCII character in name {name!r} (use its IDNA form)")
        plain = tuple(label.encode("ascii") for label in (name[:-1] if name.endswith(".") else name).split("."))
        _check_labels(plain, name)
        return plain
    labels: list[bytes] = []
    cur = bytearray()
    i, n = 0, len(name)
    while i < n:
        ch = name[i]
        if ch == "\\":
            digits = name[i + 1 : i + 4]
            if len(digits) == 3 and all(c in _DIGITS for c in digits):
                value = int(digits)
                if value > 0xFF:
                    raise SanityError(_PROTO, f"escape \\{digits} > 255 in name {name!r}")
                cur.append(value)
                i += 4
                continue
            if i + 1 < n and name[i + 1] not in _DIGITS and ord(name[i + 1]) < 0x80:
                cur.append(ord(name[i + 1]))
                i += 2
                continue
            raise SanityError(_PROTO, f"bad escape in name {name!r}")
        if ch == ".":
            if not cur:
                raise SanityError(_PROTO, f"empty label in name {name!r}")
            labels.append(bytes(cur))
            cur.clear()
            if i == n - 1:  # the optional trailing dot of an absolute name
                break
        elif ord(ch) < 0x80:
            cur.append(ord(ch))
        else:
            raise SanityError(_PROTO, f"non-ASCII character {ch!r} in name {name!r} (use its IDNA form)")
        i += 1
    else:
        if not cur:  # pragma: no cover - a name ending without "." always leaves a label
            raise SanityError(_PROTO, f"empty label in name {name!r}")
        labels.append(bytes(cur))
    _check_labels(labels, name)
    return tuple(labels)


def _check_labels(labels: Sequence[bytes], what: object) -> None:
    wire = 1
    for label in labels:
        if not 0 < len(label) <= _MAX_LABEL:
            raise SanityError(_PROTO, f"label of {len(label)} octets in {what!r} (1..63)")
        wire += 1 + len(label)
    if wire > MAX_NAME_LEN:
        raise SanityError(_PROTO, f"name {what!r} is {wire} octets on the wire > {MAX_NAME_LEN}")


def name_key(name: str) -> str:
    """The form two names compare equal in: ASCII case folded, escapes and trailing dot normalised.

    A name :func:`decode_name` produced is already normalised, so ``name.lower()`` is its key.
    """
    return labels_to_name([label.lower() for label in name_to_labels(name)])


def encode_name(
    name: str | Sequence[bytes], table: dict[tuple[bytes, ...], int] | None = None, offset: int = 0
) -> bytes:
    """The wire form of ``name`` (text or labels), compressed against ``table`` when one is given.

    ``table`` maps label suffixes already written to their offsets; ``offset`` is where this name
    will start, counted from the place pointers count from (the DNS header, or the start of DHCP
    option 119's data).  New suffixes are added to ``table`` when their offset fits in a pointer.
    Matching is byte-exact, so an encoded name decodes to exactly the labels given.
    """
    labels = name_to_labels(name) if isinstance(name, str) else tuple(name)
    if not isinstance(name, str):
        _check_labels(labels, labels)
    out = bytearray()
    for i in range(len(labels)):
        suffix = labels[i:]
        if table is not None:
            target = table.get(suffix)
            if target is not None:
                out += (0xC000 | target).to_bytes(2, "big")
                return bytes(out)
            here = offset + len(out)
            if here <= _MAX_POINTER:
                table[suffix] = here
        out.append(len(labels[i]))
        out += labels[i]
    out.append(0)
    return bytes(out)


def decode_name(buf: BytesLike, offset: int, end: int | None = None) -> tuple[str, int]:
    """Decode the name at ``offset`` in ``buf[:end]``; return it and the offset just after it.

    Pointers count from the start of ``buf``.  The name's own labels must end within ``end``;
    what a pointer leads to must point strictly backwards and lie entirely before the part of the
    name that pointed to it (before the name's first octet, for its first pointer), so each jump
    goes further back and no octet is read twice: loops, pointers to themselves or forward, and
    overlapping tricks raise :class:`IntegrityError`, as does a name of more than
    :data:`MAX_NAME_STEPS` labels and pointers.  Encoders only ever point at names written
    earlier, which meet both rules.
    """
    text, _, after = _Names(buf, cache=False).read(offset, len(buf) if end is None else end)
    return text, after


# A suffix already read: text, uncompressed wire form, steps (labels, pointers, root), the end of
# its first part (up to and including its first pointer or the root) and the end of the part that
# pointer leads to (0 if none).  The two ends are what a name reusing it must check.
_Suffix: TypeAlias = tuple[str, bytes, int, int, int]
_ROOT: tuple[str, bytes] = (".", b"\x00")


class _Names:
    """Reads the names of one buffer; with ``cache``, every suffix it has read is kept by offset.

    The cache bounds the work for a whole message: once inside a pointer's target, reaching an
    offset read before (by any earlier name) takes the rest of the name from the cache.  Each
    octet is then walked at most once through pointers in the whole message and once in place
    (in-place parts of different names never overlap: fields follow each other), so ``steps``,
    the octets actually walked, stays below twice the message length.  Cached or not, a name
    decodes to the same text or fails: the checks a cached suffix would have made against the
    name that reuses it are made on its two stored ends.
    """

    __slots__ = ("buf", "cache", "size", "steps")

    def __init__(self, buf: BytesLike, *, cache: bool) -> None:
        self.buf = buf
        self.size = len(buf)
        self.cache: dict[int, _Suffix] | None = {} if cache else None
        self.steps = 0

    def read(self, offset: int, end: int, *, wire_form: bool = False) -> tuple[str, bytes, int]:
        """(text, uncompressed wire form, offset after) of the name at ``offset``, in place within ``end``.

        Without a cache the wire form is only built when ``wire_form`` is asked for (else ``b""``).
        """
        buf = self.buf
        cache = self.cache
        pos = offset
        limit = min(end, self.size)
        lowest = offset  # where the part being read started
        after = -1
        labels: list[bytes] = []
        walked: list[int] = []  # offsets of the labels, and (as ~offset) of the pointers, in order
        wire = 1
        hit: _Suffix | None = None
        while True:
            if after >= 0 and cache is not None:
                hit = cache.get(pos)
                if hit is not None:
                    break
            if pos >= limit:
                raise IntegrityError(_PROTO, f"name at {offset} runs past the end ({limit})")
            self.steps += 1
            length = buf[pos]
            if length == 0:
                break
            if len(walked) >= MAX_NAME_STEPS - 1:  # this step and the root, at least, are still to come
                raise IntegrityError(_PROTO, f"name at {offset} takes more than {MAX_NAME_STEPS} steps")
            kind = length & 0xC0
            if kind == 0xC0:
                if pos + 1 >= limit:
                    raise IntegrityError(_PROTO, f"compression pointer at {pos} cut short")
                target = ((length & 0x3F) << 8) | buf[pos + 1]
                if target >= lowest:
                    raise IntegrityError(_PROTO, f"compression pointer at {pos} to {target} does not point backwards")
                if after < 0:
                    after = pos + 2
                walked.append(~pos)
                limit = lowest
                lowest = pos = target
                continue
            if kind:
                raise IntegrityError(_PROTO, f"label type {kind:#04x} at {pos} (only 0x00 and pointers exist)")
            if pos + 1 + length > limit:
                raise IntegrityError(_PROTO, f"label at {pos} of {length} octets runs past the end ({limit})")
            wire += 1 + length
            if wire > MAX_NAME_LEN:
                raise IntegrityError(_PROTO, f"name at {offset} longer than {MAX_NAME_LEN} octets")
            walked.append(pos)
            labels.append(bytes(buf[pos + 1 : pos + 1 + length]))
            pos += 1 + length
        if hit is not None:
            text, tail, steps, first_end, next_end = hit
            if first_end > limit or next_end > lowest:
                raise IntegrityError(_PROTO, f"name at {offset}: a pointer leads to a part that is not before it")
            if len(walked) + steps > MAX_NAME_STEPS:
                raise IntegrityError(_PROTO, f"name at {offset} takes more than {MAX_NAME_STEPS} steps")
            if wire - 1 + len(tail) > MAX_NAME_LEN:
                raise IntegrityError(_PROTO, f"name at {offset} longer than {MAX_NAME_LEN} octets")
        else:
            jumped = after >= 0
            if not jumped:
                after = pos + 1
            if cache is None:  # one name: nothing worth keeping, join once
                if not labels:
                    return ".", b"\x00", after
                text = ".".join(map(_label_to_text, labels))
                if not wire_form:
                    return text, b"", after
                if not jumped:  # all in place: the wire form is the octets themselves
                    return text, bytes(buf[offset:after]), after
                return text, b"".join(bytes((len(label),)) + label for label in labels) + b"\x00", after
            text, tail = _ROOT
            steps, first_end, next_end = 1, pos + 1, 0
            cache[pos] = (text, tail, steps, first_end, next_end)
        assert cache is not None  # a hit needs one
        i = len(labels)
        for at in reversed(walked):
            steps += 1
            if at < 0:
                next_end, first_end = first_end, ~at + 2
                at = ~at
            else:
                i -= 1
                label = labels[i]
                piece = _label_to_text(label)
                text = piece if text == "." else piece + "." + text
                tail = bytes((len(label),)) + label + tail
            cache[at] = (text, tail, steps, first_end, next_end)
        return text, tail, after


# --------------------------------------------------------------------------- header


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsHeader:
    """The 12-byte header.  ``flags`` is the whole second word; the properties pick it apart."""

    id: int
    flags: int = 0
    qdcount: int = 0
    ancount: int = 0
    nscount: int = 0
    arcount: int = 0

    def __post_init__(self) -> None:
        for field_name in ("id", "flags", "qdcount", "ancount", "nscount", "arcount"):
            check_uint(_PROTO, field_name, getattr(self, field_name), 16)

    @property
    def qr(self) -> bool:
        return bool(self.flags & FLAG_QR)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    @classmethod
    def parse(cls, buf: BytesLike, offset: int = 0) -> DnsHeader:
        resolve_end(_PROTO, buf, offset, None, DNS_HLEN)
        ident, flags, qd, an, ns, ar = _HEADER.unpack_from(buf, offset)
        return cls(id=ident, flags=flags, qdcount=qd, ancount=an, nscount=ns, arcount=ar)

    def to_bytes(self) -> bytes:
        return _HEADER.pack(self.id, self.flags, self.qdcount, self.ancount, self.nscount, self.arcount)


def make_flags(*, qr: bool = False, opcode: int = 0, rcode: int = 0, bits: int = 0) -> int:
    """Assemble a flags word from its parts (``bits``: any of the FLAG_* single bits)."""
    check_uint(_PROTO, "opcode", opcode, 4)
    check_uint(_PROTO, "rcode", rcode, 4)
    return (FLAG_QR if qr else 0) | (opcode << 11) | rcode | (bits & 0x07F0)


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsQuestion:
    """One entry of the question section."""

    name: str
    qtype: int
    qclass: int = CLASS_IN

    def __post_init__(self) -> None:
        name_to_labels(self.name)
        check_uint(_PROTO, "qtype", self.qtype, 16)
        check_uint(_PROTO, "qclass", self.qclass, 16)

    def key(self) -> tuple[str, int, int]:
        """What two questions must share to be the same question (the name ignoring case)."""
        return (name_key(self.name), self.qtype, self.qclass)

    @classmethod
    def parse(cls, buf: BytesLike, offset: int, end: int | None = None) -> tuple[DnsQuestion, int]:
        return _read_question(_Names(buf, cache=False), offset, len(buf) if end is None else end)


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsRecord:
    """A resource record; ``rdata`` is uncompressed (see the module docstring)."""

    name: str
    rtype: int
    rclass: int = CLASS_IN
    ttl: int = 0
    rdata: bytes = b""

    def __post_init__(self) -> None:
        name_to_labels(self.name)
        check_uint(_PROTO, "rtype", self.rtype, 16)
        check_uint(_PROTO, "rclass", self.rclass, 16)
        check_uint(_PROTO, "ttl", self.ttl, 32)
        check_uint(_PROTO, "rdlength", len(self.rdata), 16)
        size = _RDATA_FIXED.get(self.rtype)
        if size is not None and self.rclass in (CLASS_IN, CLASS_ANY) and len(self.rdata) != size:
            raise SanityError(_PROTO, f"type {self.rtype} RDATA of {len(self.rdata)} octets, not {size}")

    @classmethod
    def a(cls, name: str, address: bytes, ttl: int) -> DnsRecord:
        """An IN A record."""
        return cls(name=name, rtype=TYPE_A, rclass=CLASS_IN, ttl=ttl, rdata=bytes(address))

    @classmethod
    def parse(cls, buf: BytesLike, offset: int, end: int | None = None) -> tuple[DnsRecord, int]:
        return _read_record(_Names(buf, cache=False), offset, len(buf) if end is None else end)


# Decoding builds questions and records without __post_init__: names read from the wire are valid
# by construction and the integers came out of a struct, and re-validating every name would cost
# a walk over its text per record (what the bounded decoder exists to avoid).
_set = object.__setattr__


def _read_question(names: _Names, offset: int, end: int) -> tuple[DnsQuestion, int]:
    name, _, pos = names.read(offset, end)
    if pos + 4 > end:
        raise IntegrityError(_PROTO, f"question at {offset} cut short")
    qtype, qclass = _QUESTION.unpack_from(names.buf, pos)
    q = object.__new__(DnsQuestion)
    _set(q, "name", name)
    _set(q, "qtype", qtype)
    _set(q, "qclass", qclass)
    return q, pos + 4


def _read_record(names: _Names, offset: int, end: int) -> tuple[DnsRecord, int]:
    buf = names.buf
    name, _, pos = names.read(offset, end)
    if pos + _RR.size > end:
        raise IntegrityError(_PROTO, f"record at {offset} cut short")
    rtype, rclass, ttl, rdlength = _RR.unpack_from(buf, pos)
    start = pos + _RR.size
    stop = start + rdlength
    if stop > end:
        raise IntegrityError(_PROTO, f"RDLENGTH {rdlength} at {pos} runs past the end ({end})")
    layout = _RDATA_NAMES.get(rtype)
    if layout is None:
        rdata = bytes(buf[start:stop])
        size = _RDATA_FIXED.get(rtype)
        if size is not None and rclass in (CLASS_IN, CLASS_ANY) and rdlength != size:
            raise SanityError(_PROTO, f"type {rtype} RDATA of {rdlength} octets, not {size}")
    else:
        rdata = _expand_rdata(names, start, stop, layout)
    rr = object.__new__(DnsRecord)
    _set(rr, "name", name)
    _set(rr, "rtype", rtype)
    _set(rr, "rclass", rclass)
    _set(rr, "ttl", ttl)
    _set(rr, "rdata", rdata)
    return rr, stop


def _expand_rdata(names: _Names, start: int, stop: int, layout: tuple[int | str, ...]) -> bytes:
    buf = names.buf
    out = bytearray()
    pos = start
    for part in layout:
        if part == "N":
            _, wire, pos = names.read(pos, stop, wire_form=True)
            out += wire
        else:
            assert isinstance(part, int)
            if pos + part > stop:
                raise IntegrityError(_PROTO, f"RDATA at {start} cut short")
            out += buf[pos : pos + part]
            pos += part
    if pos != stop:
        raise IntegrityError(_PROTO, f"RDATA at {start} has {stop - pos} octets after its last field")
    return bytes(out)


def _check_counts(header: DnsHeader, size: int, *, records: bool) -> None:
    """Refuse counts the message cannot hold, before decoding anything (bounded work, see above)."""
    need = DNS_HLEN + header.qdcount * _MIN_QUESTION
    if records:
        need += (header.ancount + header.nscount + header.arcount) * _MIN_RECORD
    if need > size:
        what = "section counts" if records else f"QDCOUNT {header.qdcount}"
        raise IntegrityError(_PROTO, f"{what} need at least {need} octets, message has {size}")


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsMessage:
    """A whole message; the section counts are implied by the tuples."""

    id: int
    flags: int = 0
    questions: tuple[DnsQuestion, ...] = ()
    answers: tuple[DnsRecord, ...] = ()
    authorities: tuple[DnsRecord, ...] = ()
    additionals: tuple[DnsRecord, ...] = ()

    def __post_init__(self) -> None:
        check_uint(_PROTO, "id", self.id, 16)
        check_uint(_PROTO, "flags", self.flags, 16)

    @property
    def header(self) -> DnsHeader:
        return DnsHeader(
            id=self.id,
            flags=self.flags,
            qdcount=len(self.questions),
            ancount=len(self.answers),
            nscount=len(self.authorities),
            arcount=len(self.additionals),
        )

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    @classmethod
    def parse(cls, buf: BytesLike, offset: int = 0, end: int | None = None) -> DnsMessage:
        """Decode a message occupying ``buf[offset:end]``; pointers count from ``offset``.

        Bytes after the last record are ignored (some senders pad), a count larger than
        what follows is an :class:`IntegrityError`.
        """
        end = resolve_end(_PROTO, buf, offset, end, DNS_HLEN)
        view = memoryview(buf)[offset:end]
        header = DnsHeader.parse(view)
        size = len(view)
        _check_counts(header, size, records=True)
        names = _Names(view, cache=True)
        pos = DNS_HLEN
        questions = []
        for _ in range(header.qdcount):
            q, pos = _read_question(names, pos, size)
            questions.append(q)
        sections: list[list[DnsRecord]] = [[], [], []]
        for section, count in zip(sections, (header.ancount, header.nscount, header.arcount), strict=True):
            for _ in range(count):
                rr, pos = _read_record(names, pos, size)
                section.append(rr)
        return cls(
            id=header.id,
            flags=header.flags,
            questions=tuple(questions),
            answers=tuple(sections[0]),
            authorities=tuple(sections[1]),
            additionals=tuple(sections[2]),
        )

    def build(self, *, compress: bool = True) -> bytes:
        """Encode the message; question and owner names are compressed unless ``compress=False``."""
        for what, items in (("qdcount", self.questions), ("ancount", self.answers)):
            check_uint(_PROTO, what, len(items), 16)
        check_uint(_PROTO, "nscount", len(self.authorities), 16)
        check_uint(_PROTO, "arcount", len(self.additionals), 16)
        out = bytearray(self.header.to_bytes())
        table: dict[tuple[bytes, ...], int] | None = {} if compress else None
        for q in self.questions:
            out += encode_name(q.name, table, len(out))
            out += _QUESTION.pack(q.qtype, q.qclass)
        for rr in (*self.answers, *self.authorities, *self.additionals):
            out += encode_name(rr.name, table, len(out))
            out += _RR.pack(rr.rtype, rr.rclass, rr.ttl, len(rr.rdata))
            out += rr.rdata
        return bytes(out)


def parse_questions(buf: BytesLike, *, expect: int | None = None) -> tuple[DnsHeader, tuple[DnsQuestion, ...], int]:
    """Decode the header and the question section only; return them and where the answers start.

    What the forwarder needs to match a response to its query without decoding (and so
    without being able to fail on) the records it passes through untouched.  ``expect``: the
    only QDCOUNT the caller accepts; any other is a :class:`SanityError` raised before a name
    is read.  The other counts are not checked (the records are not read).
    """
    header = DnsHeader.parse(buf)
    count = header.qdcount
    if expect is not None and count != expect:
        raise SanityError(_PROTO, f"{count} questions (exactly {expect} expected)")
    _check_counts(header, len(buf), records=False)
    names = _Names(buf, cache=count > 1)
    pos = DNS_HLEN
    questions = []
    for _ in range(count):
        q, pos = _read_question(names, pos, len(buf))
        questions.append(q)
    return header, tuple(questions), pos
