"""The network layer as the user stack needs it, one object per address family.

Everything above (TCP, UDP and ICMP handling, the flow table) takes addresses as opaque bytes and a
:class:`Family`; nothing else knows that IPv4 addresses are 4 bytes or where the checksum lives. IPv4
is implemented here (RFC 791); IPv6 (RFC 8200) plugs in as a second Family.

Hot path: a frame is taken apart with ONE ``Struct.unpack_from`` over Ethernet + IPv4 + the first four
bytes of the transport header (both ports for TCP and UDP), and a frame toward a guest is built with one
``pack`` of Ethernet + IPv4 whose header checksum is a few additions over a per-flow constant
(:meth:`Ipv4.header_sum`), never a pass over the header bytes.

    IPv4 header (RFC 791 section 3.1)
     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |Version|  IHL  |Type of Service|          Total Length         |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |         Identification        |Flags|      Fragment Offset    |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |  Time to Live |    Protocol   |         Header Checksum       |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                       Source Address                          |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                    Destination Address                        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
"""

from __future__ import annotations

import socket
import struct
from typing import Final

from vmlan.wire import BytesLike
from vmlan.wire.checksum import internet_checksum, pseudo_header_sum_v4, pseudo_header_sum_v6
from vmlan.wire.ethernet import ETH_P_IP

__all__ = ["ETH_IP", "ETH_IP_PORTS", "IPV4", "Family", "Ipv4"]

#: Ethernet (14) + IPv4 without options (20).
ETH_IP: Final = struct.Struct("!6s6sHBBHHHBBH4s4s")
#: The same plus the transport header's first 4 bytes: (sport, dport) for TCP and UDP.
ETH_IP_PORTS: Final = struct.Struct("!6s6sHBBHHHBBH4s4sHH")
_IP_HDR: Final = struct.Struct("!BBHHHBBH4s4s")

TTL: Final = 64
DF: Final = 0x4000
MF: Final = 0x2000


class Family:
    """What differs between IPv4 and IPv6 for the layers above."""

    version: int
    addr_len: int
    header_len: int  # of the fixed IP header
    ethertype: int

    def ntop(self, addr: bytes) -> str:
        raise NotImplementedError

    def pton(self, text: str) -> bytes:
        raise NotImplementedError

    def pseudo_sum(self, src: bytes, dst: bytes, proto: int) -> int:
        """The pseudo-header sum without the length (the TCP engine adds it per segment)."""
        raise NotImplementedError

    def max_mss(self) -> int:
        raise NotImplementedError


class Ipv4(Family):
    version = 4
    addr_len = 4
    header_len = 20
    ethertype = ETH_P_IP

    def ntop(self, addr: bytes) -> str:
        return socket.inet_ntoa(addr)

    def pton(self, text: str) -> bytes:
        return socket.inet_aton(text)

    def pseudo_sum(self, src: bytes, dst: bytes, proto: int) -> int:
        return pseudo_header_sum_v4(src, dst, proto, 0)

    def max_mss(self) -> int:
        return 65495

    @staticmethod
    def header_sum(src: bytes, dst: bytes, proto: int, flags: int = 0) -> int:
        """The one's complement sum of an outgoing header's constant words (version/IHL, TTL/protocol,
        flags, addresses); :meth:`frame_prefix` adds the total length and identification."""
        s = int.from_bytes(src, "big")
        d = int.from_bytes(dst, "big")
        return 0x4500 + (TTL << 8) + proto + flags + (s >> 16) + (s & 0xFFFF) + (d >> 16) + (d & 0xFFFF)

    @staticmethod
    def frame_prefix(
        dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, proto: int, l4_len: int, ident: int,
        base: int, flags: int = 0,
    ) -> bytes:
        """Ethernet + IPv4 header for ``l4_len`` bytes of transport; ``base`` from :meth:`header_sum`."""
        total = 20 + l4_len
        s = base + total + ident
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        return ETH_IP.pack(dst_mac, src_mac, ETH_P_IP, 0x45, 0, total, ident, flags, TTL, proto, ~s & 0xFFFF, src,
                           dst)

    @staticmethod
    def fragments(
        dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, proto: int, payload: BytesLike, ident: int, mtu: int
    ) -> list[bytes]:
        """The frames of one datagram too large for ``mtu`` (RFC 791 fragmentation, 8-byte units)."""
        step = (mtu - 20) & ~7
        view = memoryview(payload)
        out = []
        eth = dst_mac + src_mac + b"\x08\x00"
        for offset in range(0, len(payload), step):
            chunk = view[offset : offset + step]
            more = MF if offset + step < len(payload) else 0
            header = bytearray(_IP_HDR.pack(0x45, 0, 20 + len(chunk), ident, more | (offset >> 3), TTL, proto, 0, src,
                                            dst))
            header[10:12] = internet_checksum(header).to_bytes(2, "big")
            out.append(eth + header + chunk)
        return out


IPV4: Final = Ipv4()

ETH_P_IPV6: Final = 0x86DD
#: Ethernet (14) + IPv6 (40): version/class/flow, payload length, next header, hop limit, addresses.
ETH_IP6: Final = struct.Struct("!6s6sHIHBB16s16s")
#: The same plus the transport header's first 4 bytes.
ETH_IP6_PORTS: Final = struct.Struct("!6s6sHIHBB16s16sHH")
#: The Fragment header (RFC 8200 4.5): next header, reserved, offset << 3 | M, identification.
_FRAG6: Final = struct.Struct("!BBHI")


class Ipv6(Family):
    """IPv6 (RFC 8200). What the stack originates fits the link MTU the router advertisements announce,
    except the datagrams it relays (a host's 8 KB UDP answer, a big echo reply): it is their source, so
    it fragments them (:meth:`fragments`, RFC 8200 4.5) as the host's kernel would have.

        IPv6 header (RFC 8200 section 3)
         0                   1                   2                   3
         0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |Version| Traffic Class |           Flow Label                  |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |         Payload Length        |  Next Header  |   Hop Limit   |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                    Source Address (128 bits)                  |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                 Destination Address (128 bits)                |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    """

    version = 6
    addr_len = 16
    header_len = 40
    ethertype = ETH_P_IPV6

    def ntop(self, addr: bytes) -> str:
        return socket.inet_ntop(socket.AF_INET6, addr)

    def pton(self, text: str) -> bytes:
        return socket.inet_pton(socket.AF_INET6, text)

    def pseudo_sum(self, src: bytes, dst: bytes, proto: int) -> int:
        return pseudo_header_sum_v6(src, dst, proto, 0)

    def max_mss(self) -> int:
        return 65475

    @staticmethod
    def frame_prefix(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, nh: int, l4_len: int,
                     hop_limit: int = TTL) -> bytes:
        return ETH_IP6.pack(dst_mac, src_mac, ETH_P_IPV6, 0x60000000, l4_len, nh, hop_limit, src, dst)

    @staticmethod
    def fragments(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, nh: int, payload: BytesLike, ident: int,
                  mtu: int, hop_limit: int = TTL) -> list[bytes]:
        """The frames of one datagram too large for ``mtu``: each the fixed header, a Fragment header
        (RFC 8200 4.5: next header, offset in 8-byte units, M, 32-bit ``ident``) and a piece."""
        step = (mtu - 48) & ~7
        view = memoryview(payload)
        n = len(payload)
        out = []
        for offset in range(0, n, step):
            chunk = view[offset : offset + step]
            more = 1 if offset + step < n else 0
            out.append(ETH_IP6.pack(dst_mac, src_mac, ETH_P_IPV6, 0x60000000, 8 + len(chunk), 44, hop_limit, src, dst)
                       + _FRAG6.pack(nh, 0, offset | more, ident) + chunk)
        return out


IPV6: Final = Ipv6()


def multicast_mac(ip6: bytes) -> bytes:
    """RFC 2464 section 7: 33:33 followed by the group's last 32 bits."""
    return b"\x33\x33" + ip6[12:]


def solicited_node(ip6: bytes) -> bytes:
    """RFC 4291 2.7.1: ff02::1:ffXX:XXXX, the group a host listens on for neighbour solicitations."""
    return b"\xff\x02" + b"\0" * 9 + b"\x01\xff" + ip6[13:]
