"""RFC 1350/2347 TFTP packets: the requests tftp-hpa and atftp really send, every packet kind both ways,
scapy as an oracle, exact error messages, the documented leniency, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.tftp import (
    TFTP,
    TFTP_ACK,
    TFTP_DATA,
    TFTP_ERROR,
    TFTP_OACK,
    TFTP_RRQ,
    TFTP_WRQ,
    TFTP_Option,
    TFTP_Options,
)

from vmlan.wire import IntegrityError, SanityError, WireError
from vmlan.wire.tftp import (
    BLKSIZE_MAX,
    OP_DATA,
    OP_RRQ,
    OP_WRQ,
    TftpAck,
    TftpData,
    TftpError,
    TftpOack,
    TftpPacket,
    TftpRequest,
    ack_block,
    encode_ack,
    encode_data,
    encode_error,
    encode_oack,
    option_map,
    parse,
)

from .strategies import mutated, only_wire_errors, u16

# Captured from the Debian 12 clients (a UDP socket standing in for the server):
#   tftp -m binary 127.0.0.1 PORT -c get pxelinux.0 out           (tftp-hpa 5.2, octet, no options)
#   tftp 127.0.0.1 PORT -c get readme.txt out                     (tftp-hpa's default mode is netascii)
#   atftp --option "blksize 1468" --option "tsize enable" --option "windowsize 8" --option "timeout 2" \
#         --get -r pxelinux.0 -l out 127.0.0.1 PORT               (atftp 0.8.0; note tsize's value)
HPA_OCTET = b"\x00\x01pxelinux.0\x00octet\x00"
HPA_NETASCII = b"\x00\x01readme.txt\x00netascii\x00"
ATFTP_OPTIONS = (
    b"\x00\x01pxelinux.0\x00octet\x00tsize\x00enable\x00timeout\x002\x00blksize\x001468\x00windowsize\x008\x00"
)

GOLDEN: list[tuple[bytes, TftpPacket]] = [
    (HPA_OCTET, TftpRequest(OP_RRQ, b"pxelinux.0", b"octet")),
    (HPA_NETASCII, TftpRequest(OP_RRQ, b"readme.txt", b"netascii")),
    (
        ATFTP_OPTIONS,
        TftpRequest(
            OP_RRQ,
            b"pxelinux.0",
            b"octet",
            ((b"tsize", b"enable"), (b"timeout", b"2"), (b"blksize", b"1468"), (b"windowsize", b"8")),
        ),
    ),
    (b"\x00\x02upload.bin\x00OCTET\x00", TftpRequest(OP_WRQ, b"upload.bin", b"OCTET")),
    (b"\x00\x03\x00\x01" + b"A" * 512, TftpData(1, b"A" * 512)),
    (b"\x00\x03\xff\xff", TftpData(0xFFFF, b"")),  # an empty last block
    (b"\x00\x04\x00\x00", TftpAck(0)),  # the ACK of an OACK
    (b"\x00\x04\xff\xff", TftpAck(0xFFFF)),
    (b"\x00\x05\x00\x01File not found\x00", TftpError(1, b"File not found")),
    (b"\x00\x05\x00\x00\x00", TftpError(0, b"")),
    (b"\x00\x06blksize\x001468\x00tsize\x0012345\x00", TftpOack(((b"blksize", b"1468"), (b"tsize", b"12345")))),
    (b"\x00\x06", TftpOack(())),
]


@pytest.mark.parametrize(("raw", "packet"), GOLDEN)
def test_golden_both_ways(raw: bytes, packet: TftpPacket) -> None:
    assert parse(raw) == packet
    assert type(packet).parse(raw) == packet
    assert packet.to_bytes() == raw
    assert parse(memoryview(bytearray(b"xx" + raw))[2:]) == packet  # in place, in a larger buffer


def test_encoders_match_classes() -> None:
    assert encode_data(7, b"abc") == TftpData(7, b"abc").to_bytes() == b"\x00\x03\x00\x07abc"
    assert encode_data(7, memoryview(b"abc")) == b"\x00\x03\x00\x07abc"
    assert encode_ack(0x1234) == b"\x00\x04\x12\x34"
    assert encode_error(2, b"Access violation") == b"\x00\x05\x00\x02Access violation\x00"
    assert encode_oack([(b"windowsize", b"8")]) == b"\x00\x06windowsize\x008\x00"


# -- scapy as the oracle ------------------------------------------------------------------------------------
def test_scapy_builds_what_we_parse() -> None:
    opts = TFTP_Options(options=[TFTP_Option(oname=b"blksize", value=b"1468"), TFTP_Option(oname=b"tsize", value=b"0")])
    assert parse(bytes(TFTP() / TFTP_RRQ(filename=b"boot/x", mode=b"octet") / opts)) == TftpRequest(
        OP_RRQ, b"boot/x", b"octet", ((b"blksize", b"1468"), (b"tsize", b"0"))
    )
    assert parse(bytes(TFTP() / TFTP_WRQ(filename=b"f", mode=b"netascii"))) == TftpRequest(OP_WRQ, b"f", b"netascii")
    assert parse(bytes(TFTP() / TFTP_DATA(block=65535) / b"data")) == TftpData(65535, b"data")
    assert parse(bytes(TFTP() / TFTP_ACK(block=513))) == TftpAck(513)
    assert parse(bytes(TFTP() / TFTP_ERROR(errorcode=5, errormsg=b"Unknown transfer ID"))) == TftpError(
        5, b"Unknown transfer ID"
    )
    oack = TFTP() / TFTP_OACK() / TFTP_Options(options=[TFTP_Option(oname=b"tsize", value=b"99")])
    assert parse(bytes(oack)) == TftpOack(((b"tsize", b"99"),))


def test_scapy_reads_what_we_build() -> None:
    req = TFTP(TftpRequest(OP_RRQ, b"pxelinux.0", b"octet", ((b"blksize", b"1428"),)).to_bytes())
    assert req[TFTP_RRQ].filename == b"pxelinux.0" and req[TFTP_RRQ].mode == b"octet"
    assert [(o.oname, o.value) for o in req[TFTP_Options].options] == [(b"blksize", b"1428")]
    data = TFTP(encode_data(42, b"xyz"))
    assert data[TFTP_DATA].block == 42 and bytes(data[TFTP_DATA].payload) == b"xyz"
    assert TFTP(encode_ack(9))[TFTP_ACK].block == 9
    err = TFTP(encode_error(2, b"Access violation"))
    assert err[TFTP_ERROR].errorcode == 2 and err[TFTP_ERROR].errormsg == b"Access violation"
    oack = TFTP(encode_oack([(b"blksize", b"8"), (b"windowsize", b"4")]))
    assert [(o.oname, o.value) for o in oack[TFTP_Options].options] == [(b"blksize", b"8"), (b"windowsize", b"4")]


# -- errors, with their messages ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "error", "message"),
    [
        (b"", IntegrityError, "[TFTP] 0 bytes < 2 (no opcode)"),
        (b"\x00", IntegrityError, "[TFTP] 1 bytes < 2 (no opcode)"),
        (b"\x00\x00", SanityError, "[TFTP] unknown opcode 0"),
        (b"\x00\x07abc", SanityError, "[TFTP] unknown opcode 7"),
        (b"\x01\x01f\x00octet\x00", SanityError, "[TFTP] unknown opcode 257"),
        (b"\x00\x01", IntegrityError, "[TFTP] request: last string not NUL-terminated"),
        (b"\x00\x01pxelinux.0", IntegrityError, "[TFTP] request: last string not NUL-terminated"),
        (b"\x00\x01pxelinux.0\x00octet", IntegrityError, "[TFTP] request: last string not NUL-terminated"),
        (b"\x00\x01pxelinux.0\x00", IntegrityError, "[TFTP] request without a mode"),
        (b"\x00\x01f\x00octet\x00blksize\x00", IntegrityError, "[TFTP] request: option b'blksize' without a value"),
        (b"\x00\x03\x00", IntegrityError, "[TFTP] DATA of 3 bytes < 4"),
        (b"\x00\x03\x00\x01" + bytes(BLKSIZE_MAX + 1), SanityError, "[TFTP] DATA carries 65465 bytes > 65464"),
        (b"\x00\x04\x00", IntegrityError, "[TFTP] ACK of 3 bytes < 4"),
        (b"\x00\x05\x00\x01", IntegrityError, "[TFTP] ERROR of 4 bytes < 5"),
        (b"\x00\x05\x00\x01File not found", IntegrityError, "[TFTP] ERROR: last string not NUL-terminated"),
        (b"\x00\x05\x00\x01a\x00b\x00", IntegrityError, "[TFTP] ERROR: bytes after the message's NUL"),
        (b"\x00\x06tsize\x001", IntegrityError, "[TFTP] OACK: last string not NUL-terminated"),
        (b"\x00\x06tsize\x00", IntegrityError, "[TFTP] OACK: option b'tsize' without a value"),
    ],
)
def test_parse_errors(raw: bytes, error: type[WireError], message: str) -> None:
    with pytest.raises(error) as info:
        parse(raw)
    assert type(info.value) is error
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("kind", "raw", "message"),
    [
        (TftpRequest, b"\x00\x03\x00\x01", "[TFTP] opcode 3 is not a request"),
        (TftpData, b"\x00\x04\x00\x01", "[TFTP] opcode 4 is not DATA"),
        (TftpAck, b"\x00\x03\x00\x01", "[TFTP] opcode 3 is not ACK"),
        (TftpError, b"\x00\x04\x00\x01\x00", "[TFTP] opcode 4 is not ERROR"),
        (TftpOack, b"\x00\x01f\x00octet\x00", "[TFTP] opcode 1 is not OACK"),
    ],
)
def test_parse_wrong_kind(kind: type[TftpPacket], raw: bytes, message: str) -> None:
    with pytest.raises(SanityError, match=None) as info:
        kind.parse(raw)
    assert str(info.value) == message


def test_leniency() -> None:
    # NUL padding after the last complete option (or after the mode, or in pairs) is not an option.
    for pad in (b"\x00", b"\x00\x00", b"\x00\x00\x00\x00\x00"):
        assert parse(HPA_OCTET + pad) == TftpRequest(OP_RRQ, b"pxelinux.0", b"octet")
        assert parse(b"\x00\x01f\x00octet\x00tsize\x000\x00" + pad).options == ((b"tsize", b"0"),)
    # ... but an option whose value is empty is still an option.
    assert parse(b"\x00\x01f\x00octet\x00tsize\x00\x00").options == ((b"tsize", b""),)
    assert parse(b"\x00\x01f\x00octet\x00a\x00\x00b\x00c\x00").options == ((b"a", b""), (b"b", b"c"))
    assert parse(b"\x00\x04\x00\x05\x00\x00") == TftpAck(5)  # octets after an ACK's block number
    assert parse(b"\x00\x05\x00\x01oops\x00\x00\x00") == TftpError(1, b"oops")
    assert parse(b"\x00\x06blksize\x00512\x00\x00") == TftpOack(((b"blksize", b"512"),))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TftpRequest(OP_RRQ, b"a\0b", b"octet").to_bytes(), "[TFTP] filename must not contain NUL"),
        (lambda: TftpRequest(OP_RRQ, b"a", b"oc\0tet").to_bytes(), "[TFTP] mode must not contain NUL"),
        (lambda: TftpRequest(OP_DATA, b"a", b"octet").to_bytes(), "[TFTP] opcode 3 is not a request"),
        (lambda: encode_oack([(b"bl\0k", b"1")]), "[TFTP] option name must not contain NUL"),
        (lambda: encode_oack([(b"blksize", b"1\0")]), "[TFTP] option value must not contain NUL"),
        (lambda: encode_data(0x10000, b""), "[TFTP] block 65536 does not fit 16 bits"),
        (lambda: encode_data(-1, b""), "[TFTP] block -1 does not fit 16 bits"),
        (lambda: encode_data(1, bytes(BLKSIZE_MAX + 1)), "[TFTP] DATA of 65465 bytes > 65464"),
        (lambda: encode_ack(0x10000), "[TFTP] block 65536 does not fit 16 bits"),
        (lambda: encode_error(0x10000, b""), "[TFTP] error code 65536 does not fit 16 bits"),
        (lambda: encode_error(1, b"a\0"), "[TFTP] error message must not contain NUL"),
    ],
)
def test_builders_refuse(build: object, message: str) -> None:
    with pytest.raises(SanityError) as info:
        build()  # type: ignore[operator]
    assert str(info.value) == message



def test_option_map_folds_case_first_wins() -> None:
    options = ((b"BlkSize", b"1428"), (b"tsize", b"0"), (b"BLKSIZE", b"8"))
    assert option_map(options) == {b"blksize": b"1428", b"tsize": b"0"}


def test_ack_block_fast_path() -> None:
    assert ack_block(b"\x00\x04\x01\x02") == 0x0102
    assert ack_block(memoryview(b"\x00\x04\xff\xff\x00")) == 0xFFFF
    for other in (b"", b"\x00\x04\x00", b"\x00\x03\x00\x01", b"\x01\x04\x00\x01", HPA_OCTET):
        assert ack_block(other) is None


# -- hypothesis ----------------------------------------------------------------------------------------------
strings = st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"x"))
names = st.binary(min_size=1, max_size=12).map(lambda b: b.replace(b"\0", b"y"))
options = st.lists(st.tuples(names, strings), max_size=5).map(tuple)
packets: st.SearchStrategy[TftpPacket] = st.one_of(
    st.builds(TftpRequest, st.sampled_from([OP_RRQ, OP_WRQ]), strings, strings, options),
    st.builds(TftpData, u16, st.binary(max_size=600)),
    st.builds(TftpAck, u16),
    st.builds(TftpError, u16, strings),
    st.builds(TftpOack, options),
)


@given(packets)
def test_round_trip(packet: TftpPacket) -> None:
    raw = packet.to_bytes()
    assert parse(raw) == packet
    assert TFTP(raw).build() == raw  # scapy takes it apart and puts it back the same


@settings(max_examples=500)
@given(st.binary(max_size=80))
def test_parse_or_wire_error_random(raw: bytes) -> None:
    only_wire_errors(lambda: parse(raw))
    only_wire_errors(lambda: parse(b"\x00" + raw[:1] + raw[1:]))
    assert (ack_block(raw) is None) == (len(raw) < 4 or raw[:2] != b"\x00\x04")


@settings(max_examples=500)
@given(mutated(packets.map(lambda p: p.to_bytes())))
def test_parse_or_wire_error_mutated(raw: bytes) -> None:
    only_wire_errors(lambda: parse(raw))
