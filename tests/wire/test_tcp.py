"""RFC 9293 TCP headers, options and checksum."""

from __future__ import annotations

import dataclasses
import os

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP

from vmlan.wire import IntegrityError, SanityError
from vmlan.wire.ipv4 import IPPROTO_TCP, Ipv4Header, ipv4_to_str
from vmlan.wire.tcp import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    TcpFixed,
    TcpHeader,
    TcpOptions,
    flags_to_str,
    parse_fixed,
    verify_checksum,
)

from .strategies import ports, reference_checksum, u8, u16, u32, unicast_ipv4

GUEST = bytes((10, 0, 2, 15))
SERVER = bytes((93, 184, 216, 34))

# A Linux-style SYN 10.0.2.15:40000 -> 93.184.216.34:80 with MSS 1460, SACK-permitted,
# timestamps (TSval 0xdeadbeef) and window scale 7, in Linux's option layout.
GOLDEN_SYN = bytes.fromhex(
    "9c40 0050 12345678 00000000"  # ports 40000 -> 80, seq, ack
    " a0 02 faf0 684b 0000"  # data offset 10, SYN, window 64240, checksum, urgent
    " 020405b4 0402 080a deadbeef 00000000 01 030307"  # MSS, SACK-perm, TS, NOP, WS 7
)
GOLDEN_SYN_DATAGRAM = bytes.fromhex("4500003c1c4640004006dc8c0a00020f5db8d822") + GOLDEN_SYN
GOLDEN_SYN_HEADER = TcpHeader(
    sport=40000,
    dport=80,
    seq=0x12345678,
    flags=SYN,
    window=64240,
    checksum=0x684B,
    options=TcpOptions(mss=1460, sack_permitted=True, timestamps=(0xDEADBEEF, 0), wscale=7),
)


def segment(options: bytes, payload: bytes = b"", flags: int = ACK) -> bytes:
    """A segment with raw ``options`` (a multiple of 4 bytes) and a correct checksum."""
    raw = bytes.fromhex("9c40 0050 00000001 00000002") + bytes(((20 + len(options)) << 2, flags))
    raw += bytes.fromhex("faf0 0000 0000") + options + payload
    pseudo = GUEST + SERVER + bytes((0, IPPROTO_TCP)) + len(raw).to_bytes(2, "big")
    return raw[:16] + reference_checksum(pseudo + raw).to_bytes(2, "big") + raw[18:]


def core(h: TcpHeader) -> tuple[int, ...]:
    """The header fields a caller sets (everything but checksum and options)."""
    return (h.sport, h.dport, h.seq, h.ack, h.flags, h.window, h.urgent)


def test_flag_constants_have_rfc9293_values() -> None:
    assert (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR) == (1, 2, 4, 8, 16, 32, 64, 128)
    assert flags_to_str(SYN | ACK) == "SA" and flags_to_str(0) == "" and flags_to_str(0xFF) == "FSRPAUEC"


def test_parse_golden_syn_from_its_datagram() -> None:
    ip, start, end = Ipv4Header.parse(GOLDEN_SYN_DATAGRAM)
    header, data_start, data_end = TcpHeader.parse(
        GOLDEN_SYN_DATAGRAM, start, end, src_addr=ip.src, dst_addr=ip.dst
    )
    assert header == GOLDEN_SYN_HEADER
    assert (data_start, data_end) == (start + 40, end)


def test_build_golden_syn() -> None:
    unbuilt = TcpHeader(
        sport=40000,
        dport=80,
        seq=0x12345678,
        flags=SYN,
        window=64240,
        options=TcpOptions(mss=1460, sack_permitted=True, timestamps=(0xDEADBEEF, 0), wscale=7),
    )
    assert unbuilt.build(b"", src_addr=GUEST, dst_addr=SERVER) == GOLDEN_SYN
    assert GOLDEN_SYN_HEADER.to_bytes() == GOLDEN_SYN


def test_golden_syn_checksum_agrees_with_reference_and_scapy() -> None:
    pseudo = GUEST + SERVER + bytes((0, IPPROTO_TCP, 0, len(GOLDEN_SYN)))
    assert reference_checksum(pseudo + GOLDEN_SYN[:16] + b"\0\0" + GOLDEN_SYN[18:]) == 0x684B
    pkt = IP(GOLDEN_SYN_DATAGRAM)
    pkt[TCP].chksum = None
    assert bytes(pkt) == GOLDEN_SYN_DATAGRAM


def test_parse_fixed_on_golden_syn() -> None:
    assert parse_fixed(GOLDEN_SYN) == TcpFixed(40000, 80, 0x12345678, 0, 40, SYN, 64240, 0x684B, 0)


def test_timestamps_only_segment_uses_nop_nop_ts_layout() -> None:
    raw = segment(bytes.fromhex("0101080a 00000001 00000002"), b"data")
    header, start, end = TcpHeader.parse(raw, src_addr=GUEST, dst_addr=SERVER)
    assert header.options == TcpOptions(timestamps=(1, 2))
    assert raw[start:end] == b"data"
    assert header.build(b"data", src_addr=GUEST, dst_addr=SERVER) == raw


def test_sack_blocks_are_parsed_and_rebuilt() -> None:
    options = "0101080a 00000001 00000002 01010512 00000064 000000c8 0000012c 00000190"
    raw = segment(bytes.fromhex(options))
    header, _, _ = TcpHeader.parse(raw, src_addr=GUEST, dst_addr=SERVER)
    assert header.options == TcpOptions(timestamps=(1, 2), sack=((100, 200), (300, 400)))
    assert header.build(b"", src_addr=GUEST, dst_addr=SERVER) == raw


def test_options_after_eol_are_ignored() -> None:
    raw = segment(bytes.fromhex("020405b4 00030307"), flags=SYN)
    header, _, _ = TcpHeader.parse(raw)
    assert header.options == TcpOptions(mss=1460)


def test_unknown_options_are_kept_in_order() -> None:
    raw = segment(bytes.fromhex("1e041234 22020000"))  # MPTCP-ish kind 30, TFO cookie request kind 34
    header, _, _ = TcpHeader.parse(raw)
    assert header.options.unknown == ((30, b"\x12\x34"), (34, b""))
    assert header.options.to_bytes() == bytes.fromhex("1e041234 22020000")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("01010102", "lacks its length byte"),  # kind 2 in the last byte of the options area
        ("02000000", "bad length 0"),
        ("02010000", "bad length 1"),
        ("02080000", "bad length 8"),  # runs past the options area
        ("02030000", "MSS option length 3"),
        ("03040000", "window scale option length 4"),
        ("04030000", "SACK-permitted option length 3"),
        ("0506000000000000", "SACK option length 6"),
        ("050b" + "00" * 10, "SACK option length 11"),
        ("0806000000000000", "timestamps option length 6"),
    ],
)
def test_malformed_options_raise_integrity_error(options: str, message: str) -> None:
    with pytest.raises(IntegrityError, match=message):
        TcpHeader.parse(segment(bytes.fromhex(options)), src_addr=GUEST, dst_addr=SERVER)


@pytest.mark.parametrize("doff", [0, 4])
def test_data_offset_below_5_raises_integrity_error(doff: int) -> None:
    bad = bytearray(GOLDEN_SYN)
    bad[12] = doff << 4
    with pytest.raises(IntegrityError, match=rf"^\[TCP\] data offset {doff} < 5"):
        parse_fixed(bad)
    with pytest.raises(IntegrityError):
        TcpHeader.parse(bad)


def test_data_offset_beyond_segment_raises_integrity_error() -> None:
    with pytest.raises(IntegrityError, match="beyond segment"):
        parse_fixed(GOLDEN_SYN[:39])
    with pytest.raises(IntegrityError, match="beyond segment"):
        TcpHeader.parse(GOLDEN_SYN, 0, 36)


@pytest.mark.parametrize("size", [0, 1, 19])
def test_truncated_fixed_header_raises_integrity_error(size: int) -> None:
    with pytest.raises(IntegrityError):
        parse_fixed(GOLDEN_SYN[:size])


def test_bad_checksum_raises_integrity_error_only_when_addresses_given() -> None:
    bad = bytearray(GOLDEN_SYN)
    bad[4] ^= 0x10  # sequence number
    TcpHeader.parse(bad)
    assert not verify_checksum(bad, 0, len(bad), GUEST, SERVER)
    with pytest.raises(IntegrityError, match=r"^\[TCP\] bad checksum 0x684b"):
        TcpHeader.parse(bad, src_addr=GUEST, dst_addr=SERVER)
    with pytest.raises(IntegrityError):
        TcpHeader.parse(GOLDEN_SYN, src_addr=SERVER, dst_addr=GUEST[::-1])


@pytest.mark.parametrize(
    ("sport", "dport", "flags", "message"),
    [
        (0, 80, SYN, "port 0"),
        (1, 0, ACK, "port 0"),
        (1, 80, SYN | FIN, "SYN combined"),
        (1, 80, SYN | RST, "SYN"),
    ],
)
def test_illegal_ports_and_flag_combinations_raise_sanity_error(
    sport: int, dport: int, flags: int, message: str
) -> None:
    raw = TcpHeader(sport=sport, dport=dport, flags=flags).build(b"", src_addr=GUEST, dst_addr=SERVER)
    with pytest.raises(SanityError, match=message):
        TcpHeader.parse(raw, src_addr=GUEST, dst_addr=SERVER)
    assert parse_fixed(raw).flags == flags  # the fast path does no sanity checks


def test_options_over_40_bytes_raise_sanity_error() -> None:
    too_long = TcpOptions(mss=1460, timestamps=(1, 2), sack=((1, 2), (3, 4), (5, 6)))  # 4 + 12 + 28 = 44
    with pytest.raises(SanityError, match="options need 44 bytes"):
        too_long.to_bytes()
    assert len(TcpOptions(timestamps=(1, 2), sack=((1, 2), (3, 4), (5, 6))).to_bytes()) == 40


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mss": 65536},
        {"wscale": 256},
        {"sack": ((0, 1),) * 5},
        {"sack": ((0, 1 << 32),)},
        {"timestamps": (0, -1)},
        {"unknown": ((8, b""),)},
        {"unknown": ((300, b""),)},
        {"unknown": ((30, bytes(39)),)},
    ],
)
def test_unencodable_options_raise_sanity_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(SanityError):
        TcpOptions(**kwargs)


def test_unencodable_header_fields_raise_sanity_error() -> None:
    for field, value in (("sport", -1), ("seq", 1 << 32), ("flags", 256), ("window", 65536)):
        fields: dict[str, object] = {"sport": 1, "dport": 2, field: value}
        with pytest.raises(SanityError):
            TcpHeader(**fields)


def test_only_one_address_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        TcpHeader.parse(GOLDEN_SYN, dst_addr=SERVER)


@pytest.mark.parametrize("size", [65475, 65535, 65536])
def test_64k_payload_segments_build_parse_and_verify(size: int) -> None:
    payload = os.urandom(size)
    header = TcpHeader(
        sport=443,
        dport=50000,
        seq=1,
        ack=2,
        flags=ACK | PSH,
        window=512,
        options=TcpOptions(timestamps=(7, 8)),
    )
    raw = header.build(payload, src_addr=SERVER, dst_addr=GUEST)
    parsed, start, end = TcpHeader.parse(raw, src_addr=SERVER, dst_addr=GUEST)
    assert raw[start:end] == payload and parsed.options.timestamps == (7, 8)
    fixed = parse_fixed(raw)
    assert fixed.header_len == 32 and verify_checksum(raw, 0, len(raw), SERVER, GUEST)
    pseudo_len = len(raw).to_bytes(4, "big")  # lengths over 65535 carry into the high word
    pseudo = SERVER + GUEST + bytes((0, IPPROTO_TCP)) + pseudo_len[2:]
    extra = int.from_bytes(pseudo_len[:2], "big")
    assert reference_checksum(pseudo + raw[:16] + b"\0\0" + raw[18:], extra) == parsed.checksum
    if size <= 65475:  # fits one IPv4 datagram: scapy must agree
        pkt = IP(Ipv4Header(src=SERVER, dst=GUEST, proto=IPPROTO_TCP).build(raw))
        assert pkt[TCP].chksum == parsed.checksum
        pkt[TCP].chksum = None
        assert bytes(pkt[TCP]) == raw


@st.composite
def tcp_options(draw: st.DrawFn) -> TcpOptions:
    options = TcpOptions(
        mss=draw(st.none() | u16),
        wscale=draw(st.none() | u8),
        sack_permitted=draw(st.booleans()),
        sack=tuple(draw(st.lists(st.tuples(u32, u32), max_size=4))),
        timestamps=draw(st.none() | st.tuples(u32, u32)),
        unknown=tuple(
            draw(
                st.lists(
                    st.tuples(st.integers(6, 255).filter(lambda k: k != 8), st.binary(max_size=6)), max_size=2
                )
            )
        ),
    )
    try:
        options.to_bytes()
    except SanityError:
        assume(False)
    return options


tcp_headers = st.builds(
    TcpHeader,
    sport=ports,
    dport=ports,
    seq=u32,
    ack=u32,
    flags=u8.filter(lambda f: not (f & SYN and f & (FIN | RST))),
    window=u16,
    urgent=u16,
    options=tcp_options(),
)


@settings(max_examples=200, deadline=None)
@given(tcp_headers, st.binary(max_size=100), unicast_ipv4, unicast_ipv4)
def test_build_then_parse_round_trips(header: TcpHeader, payload: bytes, src: bytes, dst: bytes) -> None:
    raw = header.build(payload, src_addr=src, dst_addr=dst)
    parsed, start, end = TcpHeader.parse(raw, src_addr=src, dst_addr=dst)
    assert parsed.options == header.options
    assert core(parsed) == core(header)
    assert raw[start:end] == payload
    assert parsed.to_bytes() == raw[:start]
    fixed = parse_fixed(raw)
    assert (fixed.sport, fixed.seq, fixed.flags, fixed.checksum, fixed.header_len) == (
        parsed.sport,
        parsed.seq,
        parsed.flags,
        parsed.checksum,
        start,
    )


def _scapy_options(options: TcpOptions) -> list[tuple[str, object]]:
    """The same options in scapy's notation, deliberately in an order unlike ours."""
    out: list[tuple[str, object]] = []
    if options.wscale is not None:
        out.append(("WScale", options.wscale))
    if options.sack:
        out.append(("SAck", tuple(edge for block in options.sack for edge in block)))
    if options.timestamps is not None:
        out.append(("Timestamp", options.timestamps))
    if options.sack_permitted:
        out.append(("SAckOK", b""))
    if options.mss is not None:
        out.append(("MSS", options.mss))
    return out


def _from_scapy(options: list[tuple[str, object]]) -> TcpOptions:
    fields: dict[str, object] = {}
    for name, value in options:
        if name == "MSS":
            fields["mss"] = value
        elif name == "WScale":
            fields["wscale"] = value
        elif name == "SAckOK":
            fields["sack_permitted"] = True
        elif name == "SAck":
            assert isinstance(value, tuple)
            fields["sack"] = tuple(zip(value[::2], value[1::2], strict=True))
        elif name == "Timestamp":
            fields["timestamps"] = value
        else:
            assert name in ("NOP", "EOL"), name
    return TcpOptions(**fields)


known_options = tcp_options().map(
    lambda o: TcpOptions(
        mss=o.mss, wscale=o.wscale, sack_permitted=o.sack_permitted, sack=o.sack, timestamps=o.timestamps
    )
)


@settings(max_examples=60, deadline=None)
@given(tcp_headers, known_options, st.binary(max_size=60), unicast_ipv4, unicast_ipv4)
def test_vmlan_segments_decode_identically_in_scapy(
    header: TcpHeader, options: TcpOptions, payload: bytes, src: bytes, dst: bytes
) -> None:
    raw = dataclasses.replace(header, options=options).build(payload, src_addr=src, dst_addr=dst)
    pkt = IP(Ipv4Header(src=src, dst=dst, proto=IPPROTO_TCP).build(raw))
    tcp = pkt[TCP]
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack, int(tcp.flags), tcp.window, tcp.urgptr) == core(header)
    assert _from_scapy(tcp.options) == options
    tcp.chksum = None
    assert bytes(tcp) == raw  # scapy's checksum over our bytes equals ours


@settings(max_examples=60, deadline=None)
@given(tcp_headers, known_options, st.binary(max_size=60), unicast_ipv4, unicast_ipv4)
def test_scapy_segments_decode_identically_in_vmlan(
    header: TcpHeader, options: TcpOptions, payload: bytes, src: bytes, dst: bytes
) -> None:
    whole = bytes(
        IP(src=ipv4_to_str(src), dst=ipv4_to_str(dst))
        / TCP(
            sport=header.sport,
            dport=header.dport,
            seq=header.seq,
            ack=header.ack,
            flags=header.flags,
            window=header.window,
            urgptr=header.urgent,
            options=_scapy_options(options),
        )
        / payload
    )
    _, start, end = Ipv4Header.parse(whole)
    parsed, dstart, dend = TcpHeader.parse(whole, start, end, src_addr=src, dst_addr=dst)
    assert parsed.options == options
    assert core(parsed) == core(header)
    assert whole[dstart:dend] == payload
