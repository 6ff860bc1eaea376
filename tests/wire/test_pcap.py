"""Classic pcap files as QEMU's filter-dump writes them, read back by vmlan, scapy and tshark."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.utils import rdpcap

from vmlan.wire import IntegrityError, SanityError
from vmlan.wire.pcap import (
    LINKTYPE_ETHERNET,
    PCAP_MAGIC,
    PCAP_MAGIC_NSEC,
    PcapFileHeader,
    build_global_header,
    build_record,
    iter_records,
)

from .strategies import only_wire_errors

HOST = "<" if sys.byteorder == "little" else ">"
FRAMES = [
    bytes.fromhex("ffffffffffff5254001234560806") + bytes(46),
    bytes.fromhex("525400123456525400123502080045") + os.urandom(1500),
    os.urandom(60),
]
TIMESTAMPS = [1700000000.0, 1700000000.25, 1700000001.999999]


def capture(frames: list[bytes], stamps: list[float], snaplen: int = 65536) -> bytes:
    return build_global_header(snaplen) + b"".join(
        build_record(frame, ts, snaplen) for frame, ts in zip(frames, stamps, strict=True)
    )


def foreign_capture(order: str, nanosecond: bool) -> bytes:
    """A file as another tool may write it: chosen byte order and timestamp resolution."""
    magic = PCAP_MAGIC_NSEC if nanosecond else PCAP_MAGIC
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, LINKTYPE_ETHERNET)
    out += struct.pack(order + "IIII", 1700000000, 123456789 if nanosecond else 123456, 3, 60) + b"abc"
    out += struct.pack(order + "IIII", 1700000001, 5, 4, 4) + b"defg"
    return out


def test_global_header_matches_qemu_layout_in_host_byte_order() -> None:
    expected = struct.pack(HOST + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65536, 1)
    assert build_global_header() == expected
    if sys.byteorder == "little":
        assert build_global_header() == bytes.fromhex(
            "d4c3b2a1 0200 0400 00000000 00000000 00000100 01000000"
        )


def test_record_header_holds_seconds_microseconds_caplen_and_len() -> None:
    record = build_record(b"0123456789", 1700000000.5)
    assert record == struct.pack(HOST + "iiII", 1700000000, 500000, 10, 10) + b"0123456789"


def test_record_longer_than_snaplen_is_truncated_but_keeps_original_length() -> None:
    record = build_record(b"0123456789", 1.0, snaplen=4)
    assert record == struct.pack(HOST + "iiII", 1, 0, 4, 10) + b"0123"


def test_microsecond_rounding_carries_into_seconds() -> None:
    assert build_record(b"", 1.9999996)[:8] == struct.pack(HOST + "ii", 2, 0)


@pytest.mark.parametrize("ts", [-1.0, 2.0**31])
def test_timestamps_outside_int32_seconds_raise_sanity_error(ts: float) -> None:
    with pytest.raises(SanityError):
        build_record(b"x", ts)


def test_vmlan_reads_back_what_it_wrote() -> None:
    records = list(iter_records(capture(FRAMES, TIMESTAMPS)))
    assert [r.data for r in records] == FRAMES
    assert [r.orig_len for r in records] == [len(f) for f in FRAMES]
    assert [r.timestamp for r in records] == pytest.approx(TIMESTAMPS, abs=1e-6)
    assert records[1].ts_sec == 1700000000 and records[1].ts_nsec == 250_000_000


def test_truncated_records_report_original_length() -> None:
    (record,) = iter_records(capture([bytes(100)], [0.0], snaplen=64))
    assert record.truncated and len(record.data) == 64 and record.orig_len == 100


def test_scapy_rdpcap_reads_vmlan_file(tmp_path: Path) -> None:
    path = tmp_path / "dump.pcap"
    path.write_bytes(capture(FRAMES, TIMESTAMPS))
    packets = rdpcap(str(path))
    assert [bytes(p) for p in packets] == FRAMES
    assert [float(p.time) for p in packets] == pytest.approx(TIMESTAMPS, abs=1e-6)
    assert [p.wirelen for p in packets] == [len(f) for f in FRAMES]


def test_scapy_rdpcap_reads_truncated_records(tmp_path: Path) -> None:
    path = tmp_path / "snap.pcap"
    path.write_bytes(capture(FRAMES, TIMESTAMPS, snaplen=100))
    packets = rdpcap(str(path))
    assert [bytes(p) for p in packets] == [f[:100] for f in FRAMES]
    assert [p.wirelen for p in packets] == [len(f) for f in FRAMES]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_tshark_reads_vmlan_file(tmp_path: Path) -> None:
    path = tmp_path / "dump.pcap"
    path.write_bytes(capture(FRAMES, TIMESTAMPS, snaplen=1000))
    result = subprocess.run(
        [
            "tshark",
            "-n",
            "-r",
            str(path),
            "-T",
            "fields",
            "-e",
            "frame.len",
            "-e",
            "frame.cap_len",
            "-e",
            "frame.time_epoch",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [(int(length), int(cap)) for length, cap, _ in rows] == [
        (len(f), min(len(f), 1000)) for f in FRAMES
    ]
    assert [float(epoch) for _, _, epoch in rows] == pytest.approx(TIMESTAMPS, abs=1e-6)


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_reads_both_byte_orders_and_timestamp_resolutions(order: str, nanosecond: bool) -> None:
    data = foreign_capture(order, nanosecond)
    header = PcapFileHeader.parse(data)
    assert (header.byteorder, header.nanosecond, header.snaplen, header.linktype) == (
        order,
        nanosecond,
        262144,
        1,
    )
    first, second = iter_records(data)
    assert (first.ts_sec, first.ts_nsec, first.orig_len, first.data) == (
        1700000000,
        123456789 if nanosecond else 123456000,
        60,
        b"abc",
    )
    assert second.data == b"defg" and second.ts_nsec == (5 if nanosecond else 5000)


@pytest.mark.parametrize("order", ["<", ">"])
def test_scapy_agrees_on_foreign_byte_order_files(order: str, tmp_path: Path) -> None:
    path = tmp_path / "foreign.pcap"
    path.write_bytes(foreign_capture(order, nanosecond=False))
    assert [bytes(p) for p in rdpcap(str(path))] == [r.data for r in iter_records(path.read_bytes())]


def test_cutting_a_file_anywhere_but_a_record_boundary_raises_integrity_error() -> None:
    data = capture(FRAMES, TIMESTAMPS)
    boundaries = {24}
    pos = 24
    for frame in FRAMES:
        pos += 16 + len(frame)
        boundaries.add(pos)
    for cut in range(len(data)):
        if cut in boundaries:
            assert len(list(iter_records(data[:cut]))) == sorted(boundaries).index(cut)
        else:
            with pytest.raises(IntegrityError, match=r"^\[pcap\]"):
                list(iter_records(data[:cut]))


def test_bad_magic_raises_integrity_error_and_bad_version_sanity_error() -> None:
    data = bytearray(capture(FRAMES[:1], TIMESTAMPS[:1]))
    with pytest.raises(IntegrityError, match="bad magic"):
        list(iter_records(b"\x0a\x0d\x0d\x0a" + bytes(data[4:])))  # a pcapng section header
    bad_version = bytearray(data)
    bad_version[4:6] = struct.pack(HOST + "H", 3)
    with pytest.raises(SanityError, match=r"version 3\.4"):
        list(iter_records(bytes(bad_version)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_read_or_raise_wire_error(data: bytes) -> None:
    only_wire_errors(lambda: list(iter_records(data)))
    only_wire_errors(lambda: list(iter_records(build_global_header() + data)))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.binary(max_size=300), st.floats(0, 2.0**31 - 2)), max_size=5), st.integers(1, 400)
)
def test_any_capture_round_trips(frames: list[tuple[bytes, float]], snaplen: int) -> None:
    data = build_global_header(snaplen) + b"".join(build_record(f, ts, snaplen) for f, ts in frames)
    records = list(iter_records(memoryview(data)))
    assert [r.data for r in records] == [f[:snaplen] for f, _ in frames]
    assert [r.orig_len for r in records] == [len(f) for f, _ in frames]
    for record, (_, ts) in zip(records, frames, strict=True):
        assert abs(record.timestamp - ts) <= 1e-6 * max(1.0, ts / 1e9)
