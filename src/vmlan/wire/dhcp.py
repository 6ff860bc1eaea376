"""RFC 2131 DHCP messages (the BOOTP format of RFC 951 with RFC 2132 options).

A message is the fixed 236-byte BOOTP header, the magic cookie 99.130.83.99
and a list of options.  Options are kept as ``(code, data)`` pairs in the
order they first appear; the decoder applies the two rules that make the
same option appear more than once or in other places:

* RFC 3396: several instances of one code are one option, their data
  concatenated in order (how option 119 longer than 255 octets travels).
* RFC 2131 section 4.1 / RFC 2132 section 9.3: option 52 "overload" says the
  ``file`` and/or ``sname`` fields hold more options, read after the options
  field, ``file`` first.  They are merged in and the fields decode as empty.

The encoder is the inverse: data longer than 255 octets is cut into
consecutive instances, an END option closes the list and the message is
zero-padded to the 300 octets RFC 1542 section 3.4 says BOOTP relays and
old clients may insist on.

Typed views of single options (:func:`option_ipv4`, :func:`option_u16`, ...)
raise :class:`SanityError` for a wrong length, so an engine decoding a client
message gets one kind of failure for every malformed input.  The domain
search option (RFC 3397) is a list of RFC 1035 names whose compression
pointers count from the start of the (concatenated) option data:
:func:`encode_domain_search` and :func:`decode_domain_search`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from ._common import BytesLike, check_bytes, check_uint, resolve_end
from .dns import decode_name, encode_name
from .errors import IntegrityError, SanityError

__all__ = [
    "BOOTP_MIN_LEN",
    "BOOTREPLY",
    "BOOTREQUEST",
    "DHCPACK",
    "DHCPDECLINE",
    "DHCPDISCOVER",
    "DHCPINFORM",
    "DHCPNAK",
    "DHCPOFFER",
    "DHCPRELEASE",
    "DHCPREQUEST",
    "DHCP_CLIENT_PORT",
    "DHCP_FIXED_LEN",
    "DHCP_MIN_LEN",
    "DHCP_SERVER_PORT",
    "FLAG_BROADCAST",
    "MAGIC_COOKIE",
    "OPT_BOOTFILE",
    "OPT_BROADCAST",
    "OPT_CLIENT_ID",
    "OPT_DNS",
    "OPT_DOMAIN_NAME",
    "OPT_DOMAIN_SEARCH",
    "OPT_END",
    "OPT_HOSTNAME",
    "OPT_LEASE_TIME",
    "OPT_MAX_SIZE",
    "OPT_MESSAGE",
    "OPT_MESSAGE_TYPE",
    "OPT_MTU",
    "OPT_OVERLOAD",
    "OPT_PAD",
    "OPT_PARAM_REQ",
    "OPT_REBINDING_T2",
    "OPT_RENEWAL_T1",
    "OPT_REQUESTED_IP",
    "OPT_ROUTER",
    "OPT_SERVER_ID",
    "OPT_SUBNET_MASK",
    "OPT_TFTP_SERVER",
    "OPT_VENDOR_CLASS",
    "DhcpMessage",
    "decode_domain_search",
    "encode_domain_search",
    "option_ipv4",
    "option_ipv4_list",
    "option_u8",
    "option_u16",
    "option_u32",
    "options_wire_len",
]

_PROTO = "DHCP"

DHCP_SERVER_PORT = 67
DHCP_CLIENT_PORT = 68

BOOTREQUEST = 1
BOOTREPLY = 2

# Option 53 values (RFC 2132 section 9.6).
DHCPDISCOVER = 1
DHCPOFFER = 2
DHCPREQUEST = 3
DHCPDECLINE = 4
DHCPACK = 5
DHCPNAK = 6
DHCPRELEASE = 7
DHCPINFORM = 8

#: The one defined bit of ``flags``: the client cannot receive unicast before it is configured.
FLAG_BROADCAST = 0x8000

MAGIC_COOKIE = b"\x63\x82\x53\x63"

OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_DNS = 6
OPT_HOSTNAME = 12
OPT_DOMAIN_NAME = 15
OPT_MTU = 26
OPT_BROADCAST = 28
OPT_REQUESTED_IP = 50
OPT_LEASE_TIME = 51
OPT_OVERLOAD = 52
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_PARAM_REQ = 55
OPT_MESSAGE = 56
OPT_MAX_SIZE = 57
OPT_RENEWAL_T1 = 58
OPT_REBINDING_T2 = 59
OPT_VENDOR_CLASS = 60
OPT_CLIENT_ID = 61
OPT_TFTP_SERVER = 66
OPT_BOOTFILE = 67
OPT_DOMAIN_SEARCH = 119
OPT_END = 255

_OVERLOAD_FILE = 1
_OVERLOAD_SNAME = 2

_SNAME_LEN = 64
_FILE_LEN = 128
_CHADDR_LEN = 16

#  0                   1                   2                   3
#  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |     op (1)    |   htype (1)   |   hlen (1)    |   hops (1)    |
# +---------------+---------------+---------------+---------------+
# |                            xid (4)                            |
# +-------------------------------+-------------------------------+
# |           secs (2)            |           flags (2)           |
# +-------------------------------+-------------------------------+
# |                          ciaddr  (4)                          |
# +---------------------------------------------------------------+
# |                          yiaddr  (4)                          |
# +---------------------------------------------------------------+
# |                          siaddr  (4)                          |
# +---------------------------------------------------------------+
# |                          giaddr  (4)                          |
# +---------------------------------------------------------------+
# |                          chaddr  (16)                         |
# +---------------------------------------------------------------+
# |                          sname   (64)                         |
# +---------------------------------------------------------------+
# |                          file    (128)                        |
# +---------------------------------------------------------------+
# |                          options (variable)                   |
# +---------------------------------------------------------------+
# options starts with the magic cookie 99.130.83.99, then code/length/data triples; PAD (0) and
# END (255) are a lone code octet.
_BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")

#: The fixed BOOTP part, before the magic cookie.
DHCP_FIXED_LEN = _BOOTP.size  # 236
#: The shortest DHCP message: the fixed part and the cookie.
DHCP_MIN_LEN = DHCP_FIXED_LEN + len(MAGIC_COOKIE)
#: RFC 1542 section 3.4: a BOOTP message is at least 300 octets (a 64-octet ``vend`` field).
BOOTP_MIN_LEN = 300

_ZERO4 = bytes(4)


def _cstring(field: bytes) -> bytes:
    nul = field.find(0)
    return field if nul < 0 else field[:nul]


def _scan_options(
    buf: BytesLike, start: int, end: int, where: str, found: dict[int, bytearray], honour_overload: bool
) -> int:
    """Collect the options in ``buf[start:end]`` into ``found``; return the overload value seen (0 if none).

    A missing END is tolerated (the field simply ends), as every deployed client and server
    does; an option whose length runs past the end is an :class:`IntegrityError`.
    """
    overload = 0
    pos = start
    while pos < end:
        code = buf[pos]
        if code == OPT_PAD:
            pos += 1
            continue
        if code == OPT_END:
            break
        if pos + 1 >= end:
            raise IntegrityError(_PROTO, f"option {code} at {where}+{pos - start} has no length octet")
        length = buf[pos + 1]
        data_start = pos + 2
        if data_start + length > end:
            raise IntegrityError(
                _PROTO, f"option {code} at {where}+{pos - start} of {length} octets runs past the end of {where}"
            )
        data = buf[data_start : data_start + length]
        if code == OPT_OVERLOAD:
            if honour_overload:
                if length != 1 or data[0] not in (1, 2, 3):
                    raise SanityError(_PROTO, f"option 52 (overload) value {bytes(data).hex()} is not 1, 2 or 3")
                overload |= data[0]
        else:
            slot = found.get(code)
            if slot is None:
                found[code] = bytearray(data)
            else:
                slot += data
        pos = data_start + length
    return overload


def options_wire_len(data_len: int) -> int:
    """Octets one option with ``data_len`` octets of data takes, split into 255-octet instances."""
    if data_len == 0:
        return 2
    instances = (data_len + 254) // 255
    return data_len + 2 * instances


def _encode_option(code: int, data: bytes) -> bytes:
    if len(data) <= 255:
        return bytes((code, len(data))) + data
    out = bytearray()
    for i in range(0, len(data), 255):
        chunk = data[i : i + 255]
        out.append(code)
        out.append(len(chunk))
        out += chunk
    return bytes(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class DhcpMessage:
    """A BOOTP/DHCP message.

    ``chaddr`` holds the ``hlen`` octets of the client hardware address (6 for Ethernet), so the
    length field is implied; ``sname`` and ``file`` are the NUL-terminated strings without padding;
    ``options`` excludes PAD, END and OVERLOAD (see the module docstring) and holds each code once.
    """

    op: int
    xid: int
    chaddr: bytes
    htype: int = 1
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: bytes = _ZERO4
    yiaddr: bytes = _ZERO4
    siaddr: bytes = _ZERO4
    giaddr: bytes = _ZERO4
    sname: bytes = b""
    file: bytes = b""
    options: tuple[tuple[int, bytes], ...] = ()

    def __post_init__(self) -> None:
        if self.op not in (BOOTREQUEST, BOOTREPLY):
            raise SanityError(_PROTO, f"op {self.op} is neither BOOTREQUEST (1) nor BOOTREPLY (2)")
        check_uint(_PROTO, "xid", self.xid, 32)
        check_uint(_PROTO, "htype", self.htype, 8)
        check_uint(_PROTO, "hops", self.hops, 8)
        check_uint(_PROTO, "secs", self.secs, 16)
        check_uint(_PROTO, "flags", self.flags, 16)
        if len(self.chaddr) > _CHADDR_LEN:
            raise SanityError(_PROTO, f"chaddr of {len(self.chaddr)} octets > {_CHADDR_LEN}")
        for name in ("ciaddr", "yiaddr", "siaddr", "giaddr"):
            check_bytes(_PROTO, name, getattr(self, name), 4)
        if len(self.sname) > _SNAME_LEN or 0 in self.sname:
            raise SanityError(_PROTO, f"sname must be at most {_SNAME_LEN} octets without NUL")
        if len(self.file) > _FILE_LEN or 0 in self.file:
            raise SanityError(_PROTO, f"file must be at most {_FILE_LEN} octets without NUL")
        seen = set()
        for code, _ in self.options:
            if not 0 < code < 255 or code == OPT_OVERLOAD:
                raise SanityError(_PROTO, f"option code {code} cannot be carried as an option")
            if code in seen:
                raise SanityError(_PROTO, f"option {code} given twice (concatenate the data instead)")
            seen.add(code)

    # ----------------------------------------------------------------- decoding

    @classmethod
    def parse(cls, buf: BytesLike, offset: int = 0, end: int | None = None) -> DhcpMessage:
        """Decode the message in ``buf[offset:end]`` (a UDP payload: trailing padding is ignored)."""
        end = resolve_end(_PROTO, buf, offset, end, DHCP_MIN_LEN)
        (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname, file) = (
            _BOOTP.unpack_from(buf, offset)
        )
        cookie_at = offset + DHCP_FIXED_LEN
        if buf[cookie_at : cookie_at + 4] != MAGIC_COOKIE:
            raise IntegrityError(_PROTO, f"magic cookie {bytes(buf[cookie_at : cookie_at + 4]).hex()} != 63825363")
        found: dict[int, bytearray] = {}
        overload = _scan_options(buf, cookie_at + 4, end, "options", found, honour_overload=True)
        if overload & _OVERLOAD_FILE:
            at = offset + DHCP_FIXED_LEN - _FILE_LEN
            _scan_options(buf, at, at + _FILE_LEN, "file", found, honour_overload=False)
            file = b""
        if overload & _OVERLOAD_SNAME:
            at = offset + DHCP_FIXED_LEN - _FILE_LEN - _SNAME_LEN
            _scan_options(buf, at, at + _SNAME_LEN, "sname", found, honour_overload=False)
            sname = b""
        if hlen > _CHADDR_LEN:
            raise SanityError(_PROTO, f"hlen {hlen} > {_CHADDR_LEN}")
        return cls(
            op=op,
            xid=xid,
            chaddr=chaddr[:hlen],
            htype=htype,
            hops=hops,
            secs=secs,
            flags=flags,
            ciaddr=ciaddr,
            yiaddr=yiaddr,
            siaddr=siaddr,
            giaddr=giaddr,
            sname=_cstring(sname),
            file=_cstring(file),
            options=tuple((code, bytes(data)) for code, data in found.items()),
        )

    def option(self, code: int) -> bytes | None:
        """The data of option ``code``, or None if absent."""
        for c, data in self.options:
            if c == code:
                return data
        return None

    @property
    def message_type(self) -> int | None:
        """Option 53, or None for a plain BOOTP message; a wrong length is a :class:`SanityError`."""
        return option_u8(self, OPT_MESSAGE_TYPE)

    # ----------------------------------------------------------------- encoding

    def build(self, *, pad_to: int = BOOTP_MIN_LEN) -> bytes:
        """Encode: fixed part, cookie, options (long ones split per RFC 3396), END, zero padding."""
        out = bytearray(
            _BOOTP.pack(
                self.op,
                self.htype,
                len(self.chaddr),
                self.hops,
                self.xid,
                self.secs,
                self.flags,
                self.ciaddr,
                self.yiaddr,
                self.siaddr,
                self.giaddr,
                self.chaddr,
                self.sname,
                self.file,
            )
        )
        out += MAGIC_COOKIE
        for code, data in self.options:
            out += _encode_option(code, data)
        out.append(OPT_END)
        if len(out) < pad_to:
            out += bytes(pad_to - len(out))
        return bytes(out)

    def wire_len(self) -> int:
        """Length of :meth:`build`'s output before padding."""
        return DHCP_MIN_LEN + sum(options_wire_len(len(data)) for _, data in self.options) + 1


# --------------------------------------------------------------------------- typed option views


def _fixed(msg: DhcpMessage, code: int, size: int) -> bytes | None:
    data = msg.option(code)
    if data is not None and len(data) != size:
        raise SanityError(_PROTO, f"option {code} of {len(data)} octets, not {size}")
    return data


def option_u8(msg: DhcpMessage, code: int) -> int | None:
    data = _fixed(msg, code, 1)
    return None if data is None else data[0]


def option_u16(msg: DhcpMessage, code: int) -> int | None:
    data = _fixed(msg, code, 2)
    return None if data is None else int.from_bytes(data, "big")


def option_u32(msg: DhcpMessage, code: int) -> int | None:
    data = _fixed(msg, code, 4)
    return None if data is None else int.from_bytes(data, "big")


def option_ipv4(msg: DhcpMessage, code: int) -> bytes | None:
    return _fixed(msg, code, 4)


def option_ipv4_list(msg: DhcpMessage, code: int) -> list[bytes] | None:
    """A list of addresses (router, DNS servers): a non-empty multiple of 4 octets."""
    data = msg.option(code)
    if data is None:
        return None
    if not data or len(data) % 4:
        raise SanityError(_PROTO, f"option {code} of {len(data)} octets is not a list of IPv4 addresses")
    return [data[i : i + 4] for i in range(0, len(data), 4)]


# --------------------------------------------------------------------------- option 119


def encode_domain_search(names: Iterable[str]) -> bytes:
    """RFC 3397 option data for a search list, compressed as RFC 1035 section 4.1.4 describes.

    Pointers count from the start of the option data, which is why a list longer than 255
    octets is split only after encoding (the pieces are concatenated again before decoding).
    """
    table: dict[tuple[bytes, ...], int] = {}
    out = bytearray()
    for name in names:
        if name in ("", "."):
            raise SanityError(_PROTO, "the root is not a search domain")
        out += encode_name(name, table, len(out))
    return bytes(out)


def decode_domain_search(data: BytesLike) -> list[str]:
    """The names in option 119's (concatenated) data; malformed data raises a :class:`WireError`."""
    names: list[str] = []
    pos = 0
    while pos < len(data):
        name, pos = decode_name(data, pos, len(data))
        names.append(name)
    return names
