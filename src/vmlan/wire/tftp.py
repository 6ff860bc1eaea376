"""RFC 1350 TFTP packets, with the option extension of RFC 2347 (requests with options, OACK).

Six packet kinds, told apart by the 2-octet opcode that starts every packet:

* :class:`TftpRequest` -- RRQ (1) and WRQ (2): a file name, a transfer mode and, RFC 2347, options;
* :class:`TftpData` (3): a block number and 0 to 65464 octets (RFC 2348's largest block size);
* :class:`TftpAck` (4): a block number;
* :class:`TftpError` (5): an error code and a message;
* :class:`TftpOack` (6, RFC 2347): the options the server accepted, with their values.

Strings (names, modes, option names and values, messages) are kept as the bytes the peer sent,
without their terminating NUL: RFC 1350 calls them netascii, but what a name means is the server's
business, not the codec's.  Option names are case-insensitive (RFC 2347); the codec keeps their case
and :func:`option_map` folds it.

Leniency, all of it on the receiving side and documented here: an ACK with octets after its block
number is read as the ACK (the extra octets are ignored), and NUL octets padding the end of a request
or an OACK after its last complete option, or an ERROR after its message, are ignored.  Everything
else that is not exactly the layout below raises :class:`IntegrityError` (a field cut short, a
string without its NUL, an option without a value) or :class:`SanityError` (an unknown opcode, a
DATA longer than 65464 octets).  Builders refuse what cannot be encoded (a NUL inside a string, a
block number of 70000) with :class:`SanityError`.

The hot path of a transfer has its own two functions, with no object in between:
:func:`encode_data` (header + data, one copy) and :func:`ack_block` (the block number of a 4-octet ACK,
or None for anything else).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from ._common import BytesLike, check_uint
from .errors import IntegrityError, SanityError

__all__ = [
    "BLKSIZE_MAX",
    "BLKSIZE_MIN",
    "DEFAULT_BLKSIZE",
    "ERR_ACCESS",
    "ERR_DISK_FULL",
    "ERR_EXISTS",
    "ERR_ILLEGAL_OP",
    "ERR_NOT_FOUND",
    "ERR_NO_USER",
    "ERR_OPTIONS",
    "ERR_UNDEFINED",
    "ERR_UNKNOWN_TID",
    "OP_ACK",
    "OP_DATA",
    "OP_ERROR",
    "OP_OACK",
    "OP_RRQ",
    "OP_WRQ",
    "TFTP_PORT",
    "Options",
    "TftpAck",
    "TftpData",
    "TftpError",
    "TftpOack",
    "TftpPacket",
    "TftpRequest",
    "ack_block",
    "encode_ack",
    "encode_data",
    "encode_error",
    "encode_oack",
    "option_map",
    "parse",
]

_PROTO = "TFTP"

#: The well-known port requests go to (RFC 1350 section 4); transfers move to a port of their own.
TFTP_PORT = 69

OP_RRQ = 1
OP_WRQ = 2
OP_DATA = 3
OP_ACK = 4
OP_ERROR = 5
OP_OACK = 6  # RFC 2347

# RFC 1350 appendix "Error Codes", and 8 from RFC 2347.
ERR_UNDEFINED = 0  # "Not defined, see error message (if any)."
ERR_NOT_FOUND = 1
ERR_ACCESS = 2
ERR_DISK_FULL = 3
ERR_ILLEGAL_OP = 4
ERR_UNKNOWN_TID = 5
ERR_EXISTS = 6
ERR_NO_USER = 7
ERR_OPTIONS = 8  # "the transfer should be terminated due to option negotiation"

#: RFC 1350's block size, used unless RFC 2348's blksize option says otherwise.
DEFAULT_BLKSIZE = 512
#: RFC 2348 section "Blocksize Option Specification": valid values are 8 to 65464 octets.
BLKSIZE_MIN = 8
BLKSIZE_MAX = 65464

#: RFC 2347 options as (name, value) pairs in the order they travel.
Options: TypeAlias = tuple[tuple[bytes, bytes], ...]

# RFC 1350 section 5, figure 5-2 (DATA) and 5-3 (ACK); ERROR (figure 5-4) starts the same way.
#
#   2 bytes    2 bytes     n bytes
#  +--------+----------+-----------+
#  | Opcode |  Block # |   Data    |     DATA: 0 <= n <= blksize; n < blksize ends the transfer
#  +--------+----------+-----------+
#  | Opcode |  Block # |                ACK
#  +--------+----------+
#  | Opcode | ErrorCode|  ErrMsg  | 0 |  ERROR
#  +--------+----------+----------+---+
_HEAD = struct.Struct("!HH")
_OPCODE = struct.Struct("!H")
_ACK_PREFIX = b"\x00\x04"


def _check_string(name: str, value: bytes) -> None:
    if b"\0" in value:
        raise SanityError(_PROTO, f"{name} must not contain NUL")


def _strings(what: str, body: BytesLike) -> list[bytes]:
    """NUL-terminated strings filling ``body`` exactly (the last one too), without their NULs."""
    if not body or body[-1] != 0:
        raise IntegrityError(_PROTO, f"{what}: last string not NUL-terminated")
    return bytes(body[:-1]).split(b"\0")


def _pairs(what: str, fields: list[bytes]) -> Options:
    """Option (name, value) pairs from the strings after a request's mode or an OACK's opcode."""
    # NUL padding after the last complete option reads as empty strings: one left over, or pairs.
    if len(fields) % 2:
        if fields[-1]:
            raise IntegrityError(_PROTO, f"{what}: option {fields[-1]!r} without a value")
        del fields[-1]
    while fields[-2:] == [b"", b""]:
        del fields[-2:]
    return tuple(zip(fields[0::2], fields[1::2], strict=True))


def _encode_pairs(options: Iterable[tuple[bytes, bytes]]) -> bytes:
    out = bytearray()
    for name, value in options:
        _check_string("option name", name)
        _check_string("option value", value)
        out += name + b"\0" + value + b"\0"
    return bytes(out)


# RFC 1350 figure 5-1, with RFC 2347's options appended:
#
#   2 bytes   string    1 byte  string  1 byte  string  1 byte  string  1 byte
#  +--------+----------+---+----------+---+--------+---+--------+---+--->
#  | Opcode | Filename | 0 |   Mode   | 0 |  opt1  | 0 | value1 | 0 | ... optN 0 valueN 0
#  +--------+----------+---+----------+---+--------+---+--------+---+--->
@dataclass(frozen=True, slots=True)
class TftpRequest:
    """RRQ or WRQ.  ``mode`` is as sent ("octet", "netascii", "mail", any case)."""

    opcode: int
    filename: bytes
    mode: bytes
    options: Options = ()

    @classmethod
    def parse(cls, buf: BytesLike) -> TftpRequest:
        opcode = _opcode(buf)
        if opcode not in (OP_RRQ, OP_WRQ):
            raise SanityError(_PROTO, f"opcode {opcode} is not a request")
        fields = _strings("request", memoryview(buf)[2:])
        if len(fields) < 2:
            raise IntegrityError(_PROTO, "request without a mode")
        return cls(opcode, fields[0], fields[1], _pairs("request", fields[2:]))

    def to_bytes(self) -> bytes:
        if self.opcode not in (OP_RRQ, OP_WRQ):
            raise SanityError(_PROTO, f"opcode {self.opcode} is not a request")
        _check_string("filename", self.filename)
        _check_string("mode", self.mode)
        return _OPCODE.pack(self.opcode) + self.filename + b"\0" + self.mode + b"\0" + _encode_pairs(self.options)


@dataclass(frozen=True, slots=True)
class TftpData:
    block: int
    data: bytes

    @classmethod
    def parse(cls, buf: BytesLike) -> TftpData:
        if len(buf) < 4:
            raise IntegrityError(_PROTO, f"DATA of {len(buf)} bytes < 4")
        opcode, block = _HEAD.unpack_from(buf)
        if opcode != OP_DATA:
            raise SanityError(_PROTO, f"opcode {opcode} is not DATA")
        if len(buf) - 4 > BLKSIZE_MAX:
            raise SanityError(_PROTO, f"DATA carries {len(buf) - 4} bytes > {BLKSIZE_MAX}")
        return cls(block, bytes(buf[4:]))

    def to_bytes(self) -> bytes:
        return encode_data(self.block, self.data)


@dataclass(frozen=True, slots=True)
class TftpAck:
    block: int

    @classmethod
    def parse(cls, buf: BytesLike) -> TftpAck:
        if len(buf) < 4:
            raise IntegrityError(_PROTO, f"ACK of {len(buf)} bytes < 4")
        opcode, block = _HEAD.unpack_from(buf)
        if opcode != OP_ACK:
            raise SanityError(_PROTO, f"opcode {opcode} is not ACK")
        return cls(block)

    def to_bytes(self) -> bytes:
        return encode_ack(self.block)


@dataclass(frozen=True, slots=True)
class TftpError:
    code: int
    message: bytes

    @classmethod
    def parse(cls, buf: BytesLike) -> TftpError:
        if len(buf) < 5:
            raise IntegrityError(_PROTO, f"ERROR of {len(buf)} bytes < 5")
        opcode, code = _HEAD.unpack_from(buf)
        if opcode != OP_ERROR:
            raise SanityError(_PROTO, f"opcode {opcode} is not ERROR")
        fields = _strings("ERROR", memoryview(buf)[4:])
        if any(fields[1:]):
            raise IntegrityError(_PROTO, "ERROR: bytes after the message's NUL")
        return cls(code, fields[0])

    def to_bytes(self) -> bytes:
        return encode_error(self.code, self.message)


# RFC 2347 "Option Acknowledgment":
#
#  +-------+---~~---+---+---~~---+---+---~~---+---+---~~---+---+
#  |  opc  |  opt1  | 0 | value1 | 0 |  optN  | 0 | valueN | 0 |
#  +-------+---~~---+---+---~~---+---+---~~---+---+---~~---+---+
@dataclass(frozen=True, slots=True)
class TftpOack:
    options: Options

    @classmethod
    def parse(cls, buf: BytesLike) -> TftpOack:
        opcode = _opcode(buf)
        if opcode != OP_OACK:
            raise SanityError(_PROTO, f"opcode {opcode} is not OACK")
        if len(buf) == 2:
            return cls(())
        return cls(_pairs("OACK", _strings("OACK", memoryview(buf)[2:])))

    def to_bytes(self) -> bytes:
        return encode_oack(self.options)


TftpPacket: TypeAlias = TftpRequest | TftpData | TftpAck | TftpError | TftpOack

_PARSERS: dict[int, type[TftpRequest] | type[TftpData] | type[TftpAck] | type[TftpError] | type[TftpOack]] = {
    OP_RRQ: TftpRequest,
    OP_WRQ: TftpRequest,
    OP_DATA: TftpData,
    OP_ACK: TftpAck,
    OP_ERROR: TftpError,
    OP_OACK: TftpOack,
}


def _opcode(buf: BytesLike) -> int:
    if len(buf) < 2:
        raise IntegrityError(_PROTO, f"{len(buf)} bytes < 2 (no opcode)")
    opcode: int = _OPCODE.unpack_from(buf)[0]
    return opcode


def parse(buf: BytesLike) -> TftpPacket:
    """Any TFTP packet, by its opcode."""
    opcode = _opcode(buf)
    kind = _PARSERS.get(opcode)
    if kind is None:
        raise SanityError(_PROTO, f"unknown opcode {opcode}")
    return kind.parse(buf)


def ack_block(buf: BytesLike) -> int | None:
    """The block number of an ACK (4 octets or more), or None if ``buf`` is anything else."""
    if len(buf) >= 4 and buf[0] == 0 and buf[1] == OP_ACK:
        block: int = _HEAD.unpack_from(buf)[1]
        return block
    return None


def encode_data(block: int, data: BytesLike) -> bytes:
    if not 0 <= block <= 0xFFFF:
        check_uint(_PROTO, "block", block, 16)
    if len(data) > BLKSIZE_MAX:
        raise SanityError(_PROTO, f"DATA of {len(data)} bytes > {BLKSIZE_MAX}")
    return _HEAD.pack(OP_DATA, block) + data


def encode_ack(block: int) -> bytes:
    check_uint(_PROTO, "block", block, 16)
    return _HEAD.pack(OP_ACK, block)


def encode_error(code: int, message: bytes) -> bytes:
    check_uint(_PROTO, "error code", code, 16)
    _check_string("error message", message)
    return _HEAD.pack(OP_ERROR, code) + message + b"\0"


def encode_oack(options: Sequence[tuple[bytes, bytes]]) -> bytes:
    return _OPCODE.pack(OP_OACK) + _encode_pairs(options)


def option_map(options: Options) -> dict[bytes, bytes]:
    """Options by lower-cased name; the first of repeated names wins (RFC 2347 leaves repeats open)."""
    out: dict[bytes, bytes] = {}
    for name, value in options:
        out.setdefault(name.lower(), value)
    return out
