"""Ethernet II frames with an optional IEEE 802.1Q VLAN tag, and MAC address helpers.

QEMU's virtual NICs exchange whole Ethernet frames without preamble or FCS,
so that is what this module decodes: 14 header bytes, or 18 when the first
EtherType is the 802.1Q TPID.  Parsing deliberately makes no policy decisions
(multicast source, 802.3 length instead of EtherType): a hub forwards such
frames untouched and a switch applies its own rules, so neither is an error.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from ._common import BytesLike, check_bytes, check_uint
from .errors import IntegrityError, SanityError

__all__ = [
    "BROADCAST",
    "ETH_HLEN",
    "ETH_P_8021Q",
    "ETH_P_ARP",
    "ETH_P_IP",
    "ETH_P_IPV6",
    "ETH_ZLEN",
    "VLAN_HLEN",
    "EthernetHeader",
    "is_broadcast",
    "is_multicast",
    "mac_from_str",
    "mac_to_str",
]

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100

ETH_HLEN = 14
VLAN_HLEN = 4
#: Minimum frame length without FCS; shorter frames are padded by the sender.
ETH_ZLEN = 60

BROADCAST = b"\xff" * 6

_PROTO = "Ethernet"

#  0                   1                   2                   3
#  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                  Destination MAC address                      |
# +                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                               |                               |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
# |                     Source MAC address                        |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |    EtherType (or TPID 0x8100) |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
_ETH = struct.Struct("!6s6sH")

# 802.1Q tag, present when the EtherType above is 0x8100:
#  0                   1                   2                   3
#  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# | PCP |D|        VLAN ID        |        Inner EtherType        |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
_VLAN = struct.Struct("!HH")
_ETH_VLAN = struct.Struct("!6s6sHHH")

_MAC_RE = re.compile(r"([0-9A-Fa-f]{1,2})[:-]" * 5 + r"([0-9A-Fa-f]{1,2})")


def mac_to_str(mac: bytes) -> str:
    """``b"\\x52\\x54\\x00\\x12\\x34\\x56"`` -> ``"52:54:00:12:34:56"``."""
    return mac.hex(":")


def mac_from_str(text: str) -> bytes:
    """Parse ``"52:54:00:12:34:56"`` (or with ``-``; 1-2 hex digits per group, as QEMU accepts)."""
    m = _MAC_RE.fullmatch(text)
    if m is None:
        raise SanityError(_PROTO, f"malformed MAC address {text!r}")
    return bytes(int(g, 16) for g in m.groups())


def is_multicast(mac: bytes) -> bool:
    """True for group addresses (I/G bit, the low bit of the first octet), broadcast included."""
    return bool(mac[0] & 1)


def is_broadcast(mac: bytes) -> bool:
    return mac == BROADCAST


@dataclass(frozen=True, slots=True, kw_only=True)
class EthernetHeader:
    """An Ethernet II header; ``vlan_tci`` is the 802.1Q tag control field, or None if untagged.

    With a tag, ``ethertype`` is the inner EtherType (the one naming the
    payload); the TPID is implied by ``vlan_tci`` being set.
    """

    dst: bytes
    src: bytes
    ethertype: int
    vlan_tci: int | None = None

    def __post_init__(self) -> None:
        check_bytes(_PROTO, "dst", self.dst, 6)
        check_bytes(_PROTO, "src", self.src, 6)
        check_uint(_PROTO, "ethertype", self.ethertype, 16)
        if self.vlan_tci is not None:
            check_uint(_PROTO, "vlan_tci", self.vlan_tci, 16)

    @property
    def header_len(self) -> int:
        return ETH_HLEN if self.vlan_tci is None else ETH_HLEN + VLAN_HLEN

    @property
    def vlan_id(self) -> int | None:
        return None if self.vlan_tci is None else self.vlan_tci & 0x0FFF

    @property
    def vlan_pcp(self) -> int | None:
        return None if self.vlan_tci is None else self.vlan_tci >> 13

    @classmethod
    def parse(cls, buf: BytesLike, offset: int = 0) -> tuple[EthernetHeader, int]:
        """Decode the header at ``offset``; return it and the offset of the payload.

        The payload runs to the end of ``buf`` (frames carry no length field;
        padding of short frames is for the inner protocol to ignore).
        """
        avail = len(buf) - offset
        if offset < 0 or avail < ETH_HLEN:
            raise IntegrityError(_PROTO, f"frame of {max(avail, 0)} bytes < header length {ETH_HLEN}")
        dst, src, ethertype = _ETH.unpack_from(buf, offset)
        if ethertype != ETH_P_8021Q:
            return cls(dst=dst, src=src, ethertype=ethertype), offset + ETH_HLEN
        if avail < ETH_HLEN + VLAN_HLEN:
            raise IntegrityError(_PROTO, f"802.1Q frame of {avail} bytes < header length 18")
        tci, inner = _VLAN.unpack_from(buf, offset + ETH_HLEN)
        return cls(dst=dst, src=src, ethertype=inner, vlan_tci=tci), offset + ETH_HLEN + VLAN_HLEN

    def to_bytes(self) -> bytes:
        if self.vlan_tci is None:
            return _ETH.pack(self.dst, self.src, self.ethertype)
        return _ETH_VLAN.pack(self.dst, self.src, ETH_P_8021Q, self.vlan_tci, self.ethertype)

    def build(self, payload: BytesLike = b"", *, pad: bool = False) -> bytes:
        """Header plus payload; with ``pad`` zero-fill to the 60-byte minimum as a real NIC would."""
        frame = self.to_bytes() + bytes(payload)
        if pad and len(frame) < ETH_ZLEN:
            frame += bytes(ETH_ZLEN - len(frame))
        return frame
