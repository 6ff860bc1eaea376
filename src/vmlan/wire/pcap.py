"""Classic libpcap files, byte for byte as QEMU's ``-object filter-dump`` writes them.

QEMU (net/dump.c) writes the global header and each record header in *host*
byte order with microsecond timestamps, Ethernet link type, and ``snaplen``
equal to the filter's ``maxlen`` (65536 by default); frames longer than that
are truncated to ``snaplen`` bytes while the record keeps the original length.
The writer here does the same, so a capture from vmlan and one from QEMU are
interchangeable.  The reader accepts what other tools write too: either byte
order and the nanosecond variant of the magic.  Nothing here touches files --
callers write the bytes wherever they like.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from ._common import BytesLike
from .errors import IntegrityError, SanityError

__all__ = [
    "LINKTYPE_ETHERNET",
    "PCAP_DEFAULT_SNAPLEN",
    "PCAP_MAGIC",
    "PCAP_MAGIC_NSEC",
    "PcapFileHeader",
    "PcapRecord",
    "build_global_header",
    "build_record",
    "iter_records",
]

PCAP_MAGIC = 0xA1B2C3D4  # microsecond timestamps
PCAP_MAGIC_NSEC = 0xA1B23C4D  # nanosecond timestamps
LINKTYPE_ETHERNET = 1
PCAP_DEFAULT_SNAPLEN = 65536

_PROTO = "pcap"

# Global header (24 bytes):
#  0                   1                   2                   3
#  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                     Magic Number (0xa1b2c3d4)                 |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |      Major Version (2)        |      Minor Version (4)        |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                     thiszone (GMT offset, 0)                  |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                     sigfigs (accuracy, 0)                     |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                     SnapLen                                   |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                     LinkType (1 = Ethernet)                   |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
#
# Record header (16 bytes), followed by Captured Length bytes of frame:
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                     Timestamp (seconds)                       |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                     Timestamp (microseconds or nanoseconds)   |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                     Captured Length                           |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                     Original Length                           |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
_GLOBAL = {order: struct.Struct(order + "IHHiIII") for order in "<>"}
_RECORD = {order: struct.Struct(order + "IIII") for order in "<>"}
_HOST = "<" if sys.byteorder == "little" else ">"
_GLOBAL_LEN = 24
_RECORD_LEN = 16
# QEMU's record header holds signed 32-bit seconds.
_MAX_SECONDS = 0x7FFFFFFF


def build_global_header(snaplen: int = PCAP_DEFAULT_SNAPLEN) -> bytes:
    """The 24-byte file header QEMU writes: host order, v2.4, microseconds, Ethernet."""
    if not 0 < snaplen <= 0xFFFFFFFF:
        raise SanityError(_PROTO, f"snaplen {snaplen} out of range")
    return _GLOBAL[_HOST].pack(PCAP_MAGIC, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET)


def build_record(frame: BytesLike, ts: float, snaplen: int = PCAP_DEFAULT_SNAPLEN) -> bytes:
    """One record: header (``ts`` in seconds since the epoch) and the frame cut to ``snaplen``."""
    usec_total = round(ts * 1_000_000)
    sec, usec = divmod(usec_total, 1_000_000)
    if not 0 <= sec <= _MAX_SECONDS:
        raise SanityError(_PROTO, f"timestamp {ts} outside 1970..2038")
    length = len(frame)
    caplen = min(length, snaplen)
    return _RECORD[_HOST].pack(sec, usec, caplen, length) + bytes(frame[:caplen])


@dataclass(frozen=True, slots=True, kw_only=True)
class PcapFileHeader:
    """The decoded global header.  ``byteorder`` is ``"<"`` or ``">"`` as the file was written."""

    byteorder: str
    nanosecond: bool
    version_major: int
    version_minor: int
    thiszone: int
    sigfigs: int
    snaplen: int
    linktype: int

    @classmethod
    def parse(cls, data: BytesLike) -> PcapFileHeader:
        if len(data) < _GLOBAL_LEN:
            raise IntegrityError(_PROTO, f"file of {len(data)} bytes < global header of {_GLOBAL_LEN}")
        for order in "<>":
            magic, major, minor, zone, sigfigs, snaplen, linktype = _GLOBAL[order].unpack_from(data)
            if magic in (PCAP_MAGIC, PCAP_MAGIC_NSEC):
                break
        else:
            raise IntegrityError(_PROTO, f"bad magic {bytes(data[:4]).hex()}")
        if major != 2:
            raise SanityError(_PROTO, f"unsupported version {major}.{minor}")
        return cls(
            byteorder=order,
            nanosecond=magic == PCAP_MAGIC_NSEC,
            version_major=major,
            version_minor=minor,
            thiszone=zone,
            sigfigs=sigfigs,
            snaplen=snaplen,
            linktype=linktype,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PcapRecord:
    """One captured frame; ``ts_nsec`` is the sub-second part in nanoseconds whatever the file used."""

    ts_sec: int
    ts_nsec: int
    orig_len: int
    data: bytes

    @property
    def timestamp(self) -> float:
        return self.ts_sec + self.ts_nsec / 1e9

    @property
    def truncated(self) -> bool:
        return len(self.data) < self.orig_len


def iter_records(data: BytesLike) -> Iterator[PcapRecord]:
    """Yield the records of a whole pcap file held in ``data``.

    Raises :class:`IntegrityError` (when the iteration reaches it) if a record
    header or record data is cut short.
    """
    header = PcapFileHeader.parse(data)
    rec = _RECORD[header.byteorder]
    scale = 1 if header.nanosecond else 1000
    pos = _GLOBAL_LEN
    end = len(data)
    while pos < end:
        if end - pos < _RECORD_LEN:
            raise IntegrityError(_PROTO, f"record header at {pos} cut to {end - pos} bytes")
        sec, frac, caplen, orig_len = rec.unpack_from(data, pos)
        pos += _RECORD_LEN
        if caplen > end - pos:
            raise IntegrityError(
                _PROTO, f"record at {pos - _RECORD_LEN} needs {caplen} bytes, {end - pos} left"
            )
        yield PcapRecord(
            ts_sec=sec, ts_nsec=frac * scale, orig_len=orig_len, data=bytes(data[pos : pos + caplen])
        )
        pos += caplen
