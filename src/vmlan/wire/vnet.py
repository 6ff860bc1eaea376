"""The virtio-net header (``struct virtio_net_hdr``), and :class:`Offload`, what it says about a frame.

A TAP device opened with IFF_VNET_HDR (and QEMU's filter-mirror with vnet_hdr_support) puts this
header before every frame. It carries the two offload facts the rest of vmlan passes along with a
frame (:mod:`vmlan.lan`): the checksum is not filled in yet (NEEDS_CSUM: the sender summed only the
pseudo-header; the sum over ``csum_start..end`` goes at ``csum_start + csum_offset``) or the sender
already checked it (DATA_VALID), and the frame is a GSO super-frame (one TCP segment of up to 64 KiB
that is to be cut into ``gso_size`` pieces on the way out). Linux's include/uapi/linux/virtio_net.h,
virtio spec 1.2 section 5.1.6. Little-endian on every machine we run on (virtio 1.0 and x86 legacy)::

     0               1               2               3
     0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |     flags     |   gso_type    |       hdr_len (le16)          |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |        gso_size (le16)        |      csum_start (le16)        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |      csum_offset (le16)       |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
"""

from __future__ import annotations

import struct
from typing import Final

from ._common import BytesLike
from .errors import IntegrityError, SanityError

__all__ = [
    "FLAG_DATA_VALID",
    "FLAG_NEEDS_CSUM",
    "GSO_ECN",
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_TCPV6",
    "GSO_UDP",
    "GSO_UDP_L4",
    "PLAIN_HEADER",
    "VNET_HLEN",
    "Offload",
]

FLAG_NEEDS_CSUM: Final = 1
FLAG_DATA_VALID: Final = 2
GSO_NONE: Final = 0
GSO_TCPV4: Final = 1
GSO_UDP: Final = 3
GSO_TCPV6: Final = 4
GSO_UDP_L4: Final = 5
GSO_ECN: Final = 0x80

VNET_HLEN: Final = 10
_VNET = struct.Struct("<BBHHHH")
_KNOWN_GSO = frozenset((GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4))
_KNOWN_FLAGS = FLAG_NEEDS_CSUM | FLAG_DATA_VALID


class Offload:
    """What a frame's sender left undone or vouched for. Immutable by convention (slots, no setters).

    ``None`` stands for "nothing": a complete, unchecked frame, which is what every link but a TAP with
    vnet headers carries. Ports that cannot take offloaded frames get them segmented and checksummed
    first (:mod:`vmlan.wire.gso`).
    """

    __slots__ = ("_header", "csum_offset", "csum_start", "flags", "gso_size", "gso_type", "hdr_len")

    def __init__(
        self,
        flags: int = 0,
        gso_type: int = GSO_NONE,
        hdr_len: int = 0,
        gso_size: int = 0,
        csum_start: int = 0,
        csum_offset: int = 0,
    ) -> None:
        self.flags = flags
        self.gso_type = gso_type
        self.hdr_len = hdr_len
        self.gso_size = gso_size
        self.csum_start = csum_start
        self.csum_offset = csum_offset
        self._header: bytes | None = None  # to_bytes(), kept: shared offloads go out once per frame

    @property
    def needs_csum(self) -> bool:
        return bool(self.flags & FLAG_NEEDS_CSUM)

    @property
    def data_valid(self) -> bool:
        return bool(self.flags & FLAG_DATA_VALID)

    @property
    def gso(self) -> int:
        """The GSO kind without the ECN bit (GSO_NONE for an ordinary frame)."""
        return self.gso_type & ~GSO_ECN

    @property
    def is_plain(self) -> bool:
        """Nothing left to do: any port may take the frame as it is."""
        return not self.flags & FLAG_NEEDS_CSUM and self.gso_type == GSO_NONE

    @classmethod
    def parse(cls, buf: BytesLike, offset: int = 0) -> Offload:
        """Decode the header at ``offset``; what no sender may say raises :class:`SanityError`.

        Refused: flags other than NEEDS_CSUM and DATA_VALID (RSC_INFO and the tunnel flags travel only
        toward a guest that negotiated them, which vmlan never does), an unknown GSO type, the ECN bit
        on anything but TCP (Linux's ``virtio_net_hdr_to_skb`` refuses it on USO too), and a GSO frame
        with a gso_size of 0.
        Offsets are not checked against the frame here (the header does not know its frame);
        :func:`vmlan.wire.gso.software_offload` checks what it uses.
        """
        if offset < 0 or len(buf) - offset < VNET_HLEN:
            raise IntegrityError("vnet", f"header needs {VNET_HLEN} bytes, got {max(len(buf) - offset, 0)}")
        flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = _VNET.unpack_from(buf, offset)
        if flags & ~_KNOWN_FLAGS:
            raise SanityError("vnet", f"unknown flags {flags:#04x}")
        gso = gso_type & ~GSO_ECN
        if gso not in _KNOWN_GSO:
            raise SanityError("vnet", f"unknown gso_type {gso_type:#04x}")
        if gso_type & GSO_ECN and gso not in (GSO_TCPV4, GSO_TCPV6):
            raise SanityError("vnet", f"ECN bit on gso_type {gso}")
        if gso != GSO_NONE and gso_size == 0:
            raise SanityError("vnet", "GSO frame with gso_size 0")
        return cls(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)

    def _fields(self) -> tuple[int, int, int, int, int, int]:
        return (self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset)

    def to_bytes(self) -> bytes:
        """The 10-byte header; a field that does not fit its width raises :class:`SanityError`."""
        header = self._header
        if header is None:
            try:
                header = self._header = _VNET.pack(*self._fields())
            except struct.error:
                raise SanityError("vnet", f"a field of {self!r} does not fit the header") from None
        return header

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Offload):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"Offload(flags={self.flags}, gso_type={self.gso_type}, hdr_len={self.hdr_len}, "
            f"gso_size={self.gso_size}, csum_start={self.csum_start}, csum_offset={self.csum_offset})"
        )


#: The header of a frame with nothing to say (what a vnet TAP gets for a plain frame).
PLAIN_HEADER: Final = Offload().to_bytes()
