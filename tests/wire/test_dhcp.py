"""RFC 2131 DHCP messages: udhcpc's DISCOVER, RFC 3397's own example, scapy both ways, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP

from vmlan.wire import IntegrityError, SanityError, WireError
from vmlan.wire.dhcp import (
    BOOTP_MIN_LEN,
    BOOTREPLY,
    BOOTREQUEST,
    DHCPDISCOVER,
    DHCPOFFER,
    OPT_DOMAIN_NAME,
    OPT_DOMAIN_SEARCH,
    OPT_HOSTNAME,
    OPT_MAX_SIZE,
    OPT_MESSAGE_TYPE,
    OPT_MTU,
    OPT_PARAM_REQ,
    OPT_ROUTER,
    OPT_SERVER_ID,
    DhcpMessage,
    decode_domain_search,
    encode_domain_search,
    option_ipv4,
    option_ipv4_list,
    option_u16,
    option_u32,
    options_wire_len,
)

from .strategies import macs, mutated, only_wire_errors, u16, u32

MAC = bytes.fromhex("525400123456")
XID = 0x3903F326
UDHCPC_PRL = [1, 3, 6, 12, 15, 26, 28, 42]

# busybox udhcpc's DISCOVER: init_packet() (op, htype, hlen, xid, chaddr, cookie, option 53), then
# add_client_options(): 57 = 576 (IP_UDP_DHCP_SIZE) and the parameter request list, END, and
# udhcp_send_raw_packet() trims the zero tail of the options buffer down to the 300-octet minimum.
UDHCPC_DISCOVER = (
    bytes.fromhex(
        "01 01 06 00"  # op BOOTREQUEST, htype Ethernet, hlen 6, hops 0
        "39 03 f3 26"  # xid
        "00 00 00 00"  # secs 0, flags 0 (udhcpc sets BROADCAST only with -B)
        + "00" * 16  # ciaddr, yiaddr, siaddr, giaddr
        + "52 54 00 12 34 56"
        + "00" * 10  # chaddr
        + "00" * 64  # sname
        + "00" * 128  # file
        + "63 82 53 63"  # magic cookie
        "35 01 01"  # 53 message type: DISCOVER
        "39 02 02 40"  # 57 maximum message size: 576
        "37 08 01 03 06 0c 0f 1a 1c 2a"  # 55 parameter request list
        "ff"
    )
    + bytes(300 - 240 - 3 - 4 - 10 - 1)
)

# RFC 3397 section 3: "eng.apple.com." and "marketing.apple.com." in three 9-octet instances of 119,
# the second name ending in a pointer to offset 4 ("apple") of the concatenated data.
RFC3397_OPTIONS = bytes.fromhex(
    "77 09 03 65 6e 67 05 61 70 70 6c"  # 119, 9: 3 'eng' 5 'appl
    "77 09 65 03 63 6f 6d 00 09 6d 61"  # 119, 9: e' 3 'com' 0 9 'ma
    "77 09 72 6b 65 74 69 6e 67 c0 04"  # 119, 9: rketing' C0 04
)
RFC3397_DATA = b"\x03eng\x05apple\x03com\x00\x09marketing\xc0\x04"


def _with_options(options: bytes, fixed: bytes = UDHCPC_DISCOVER[:236]) -> bytes:
    return fixed + b"\x63\x82\x53\x63" + options


def test_udhcpc_discover_golden_bytes_parse() -> None:
    assert len(UDHCPC_DISCOVER) == BOOTP_MIN_LEN
    msg = DhcpMessage.parse(UDHCPC_DISCOVER)
    assert msg == DhcpMessage(
        op=BOOTREQUEST,
        xid=XID,
        chaddr=MAC,
        options=((OPT_MESSAGE_TYPE, b"\x01"), (OPT_MAX_SIZE, b"\x02\x40"), (OPT_PARAM_REQ, bytes(UDHCPC_PRL))),
    )
    assert msg.message_type == DHCPDISCOVER
    assert option_u16(msg, OPT_MAX_SIZE) == 576
    assert msg.build() == UDHCPC_DISCOVER


def test_udhcpc_discover_is_what_scapy_builds() -> None:
    pkt = BOOTP(chaddr=MAC, xid=XID) / DHCP(
        options=[("message-type", "discover"), ("max_dhcp_size", 576), ("param_req_list", UDHCPC_PRL), "end"]
    )
    raw = bytes(pkt)
    assert raw + bytes(BOOTP_MIN_LEN - len(raw)) == UDHCPC_DISCOVER
    assert DhcpMessage.parse(raw) == DhcpMessage.parse(UDHCPC_DISCOVER)


def test_rfc3397_example_split_option_is_concatenated_and_decoded() -> None:
    msg = DhcpMessage.parse(_with_options(b"\x35\x01\x02" + RFC3397_OPTIONS + b"\xff"))
    assert msg.option(OPT_DOMAIN_SEARCH) == RFC3397_DATA
    assert decode_domain_search(RFC3397_DATA) == ["eng.apple.com", "marketing.apple.com"]
    assert encode_domain_search(["eng.apple.com.", "marketing.apple.com"]) == RFC3397_DATA


def test_long_search_list_is_split_into_255_octet_instances() -> None:
    names = [f"{'x' * 50}{i}.example{i}.org" for i in range(6)]  # ~400 octets, little to compress
    data = encode_domain_search(names)
    assert len(data) > 255
    wire = DhcpMessage(op=BOOTREPLY, xid=1, chaddr=MAC, options=((OPT_DOMAIN_SEARCH, data),)).build()
    assert wire[240] == 119 and wire[241] == 255
    assert wire[240 + 257] == 119 and wire[240 + 258] == len(data) - 255
    assert options_wire_len(len(data)) == len(data) + 4
    assert decode_domain_search(DhcpMessage.parse(wire).option(OPT_DOMAIN_SEARCH) or b"") == names
    # scapy sees two instances of option 119 whose concatenation is the list.
    instances = [opt for opt in DHCP(wire[240:]).options if isinstance(opt, tuple) and opt[0] == 119]
    assert b"".join(value for _, value in instances) == data


def test_search_list_compression_shares_suffixes() -> None:
    data = encode_domain_search(["a.example.com", "b.example.com", "example.com", "example.org"])
    assert data == (
        b"\x01a\x07example\x03com\x00"  # 0
        b"\x01b\xc0\x02"  # 15: "b" + pointer to "example.com" at 2
        b"\xc0\x02"  # 19: "example.com"
        b"\x07example\x03org\x00"  # 21
    )
    assert decode_domain_search(data) == ["a.example.com", "b.example.com", "example.com", "example.org"]
    with pytest.raises(SanityError):
        encode_domain_search(["."])


@pytest.mark.parametrize(
    "data",
    [b"\x03eng", b"\x03eng\x05apple\xc0\x00", b"\xc0\x05", b"\x01a\x00\xc0\x03"],
)
def test_malformed_search_lists_raise_integrity_error(data: bytes) -> None:
    with pytest.raises(IntegrityError):
        decode_domain_search(data)


def test_option_overload_reads_file_then_sname() -> None:
    fixed = bytearray(UDHCPC_DISCOVER[:236])
    fixed[44:108] = b"\x0f\x03lan\xff".ljust(64, b"\0")  # sname: 15 "lan"
    fixed[108:236] = b"\x0c\x05guest\x0c\x02-1\xff".ljust(128, b"\0")  # file: 12 "guest", then 12 "-1" (RFC 3396)
    msg = DhcpMessage.parse(_with_options(b"\x35\x01\x01\x34\x01\x03\xff", bytes(fixed)))
    assert msg.options == ((OPT_MESSAGE_TYPE, b"\x01"), (OPT_HOSTNAME, b"guest-1"), (OPT_DOMAIN_NAME, b"lan"))
    assert msg.sname == b"" and msg.file == b""
    # Without the overload option the same fields are plain strings.
    plain = DhcpMessage.parse(_with_options(b"\x35\x01\x01\xff", bytes(fixed)))
    assert plain.sname == b"\x0f\x03lan\xff" and plain.options == ((OPT_MESSAGE_TYPE, b"\x01"),)


@pytest.mark.parametrize("value", [b"\x00", b"\x04", b"\x01\x02", b""])
def test_bad_overload_values_are_insane(value: bytes) -> None:
    with pytest.raises(SanityError, match="overload"):
        DhcpMessage.parse(_with_options(b"\x34" + bytes((len(value),)) + value + b"\xff"))


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (UDHCPC_DISCOVER[:239], IntegrityError, "239 bytes < minimum 240"),
        (UDHCPC_DISCOVER[:236] + b"\x63\x82\x53\x64" + b"\xff", IntegrityError, "magic cookie"),
        (_with_options(b"\x35"), IntegrityError, "no length octet"),
        (_with_options(b"\x35\x05\x01"), IntegrityError, "runs past the end"),
        (b"\x03" + UDHCPC_DISCOVER[1:], SanityError, "op 3"),
        (UDHCPC_DISCOVER[:2] + b"\x11" + UDHCPC_DISCOVER[3:], SanityError, "hlen 17"),
    ],
)
def test_malformed_messages(data: bytes, error: type[WireError], match: str) -> None:
    with pytest.raises(error, match=match):
        DhcpMessage.parse(data)


def test_missing_end_and_trailing_padding_are_tolerated() -> None:
    assert DhcpMessage.parse(_with_options(b"\x35\x01\x01")).message_type == DHCPDISCOVER
    assert DhcpMessage.parse(_with_options(b"\x35\x01\x01\xff\x35\x01\x02")).message_type == DHCPDISCOVER


def test_typed_option_views_check_lengths() -> None:
    msg = DhcpMessage(
        op=BOOTREPLY,
        xid=1,
        chaddr=MAC,
        options=((OPT_SERVER_ID, b"\x0a\x00\x02\x02"), (OPT_ROUTER, b"\x0a\x00\x02"), (51, b"\x00\x01\x51\x80")),
    )
    assert option_ipv4(msg, OPT_SERVER_ID) == b"\x0a\x00\x02\x02"
    assert option_u32(msg, 51) == 86400
    assert option_ipv4(msg, 50) is None
    with pytest.raises(SanityError):
        option_ipv4_list(msg, OPT_ROUTER)
    with pytest.raises(SanityError):
        option_u16(msg, OPT_SERVER_ID)
    bad_type = DhcpMessage(op=BOOTREQUEST, xid=1, chaddr=MAC, options=((OPT_MESSAGE_TYPE, b"\x01\x01"),))
    with pytest.raises(SanityError):
        _ = bad_type.message_type


@pytest.mark.parametrize(
    "kwargs",
    [
        {"op": 0},
        {"xid": 1 << 32},
        {"chaddr": bytes(17)},
        {"ciaddr": b"\x01\x02\x03"},
        {"sname": b"a" * 65},
        {"file": b"a\x00b"},
        {"options": ((0, b""),)},
        {"options": ((255, b""),)},
        {"options": ((52, b"\x01"),)},
        {"options": ((12, b"a"), (12, b"b"))},
    ],
)
def test_builder_refuses_unencodable_fields(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"op": BOOTREQUEST, "xid": 1, "chaddr": MAC}
    with pytest.raises(SanityError):
        DhcpMessage(**(base | kwargs))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- scapy both ways


def test_scapy_reads_our_offer() -> None:
    offer = DhcpMessage(
        op=BOOTREPLY,
        xid=XID,
        chaddr=MAC,
        yiaddr=bytes((10, 0, 2, 15)),
        siaddr=bytes((10, 0, 2, 2)),
        file=b"pxelinux.0",
        options=(
            (OPT_MESSAGE_TYPE, bytes((DHCPOFFER,))),
            (OPT_SERVER_ID, bytes((10, 0, 2, 2))),
            (51, (86400).to_bytes(4, "big")),
            (1, bytes((255, 255, 255, 0))),
            (OPT_ROUTER, bytes((10, 0, 2, 2))),
            (6, bytes((10, 0, 2, 3, 1, 1, 1, 1))),
            (OPT_HOSTNAME, b"guest"),
            (OPT_MTU, (1400).to_bytes(2, "big")),
        ),
    )
    pkt = BOOTP(offer.build())
    assert (pkt.op, pkt.xid, pkt.yiaddr, pkt.siaddr) == (2, XID, "10.0.2.15", "10.0.2.2")
    assert pkt.chaddr[:6] == MAC and pkt.file.rstrip(b"\0") == b"pxelinux.0"
    opts = dict(o for o in pkt[DHCP].options if isinstance(o, tuple) and len(o) == 2)
    assert opts["message-type"] == 2
    assert opts["server_id"] == "10.0.2.2" and opts["lease_time"] == 86400
    assert opts["subnet_mask"] == "255.255.255.0" and opts["router"] == "10.0.2.2"
    assert opts["hostname"] == b"guest" and opts["interface-mtu"] == 1400
    name_servers = [o[1:] for o in pkt[DHCP].options if isinstance(o, tuple) and o[0] == "name_server"]
    assert name_servers == [("10.0.2.3", "1.1.1.1")]


@settings(max_examples=150, deadline=None)
@given(
    xid=u32,
    mac=macs,
    flags=u16,
    secs=u16,
    ciaddr=st.binary(min_size=4, max_size=4),
    hostname=st.binary(min_size=1, max_size=255).filter(lambda b: b"\0" not in b),
    requested=st.binary(min_size=4, max_size=4),
    prl=st.lists(st.integers(1, 254), min_size=1, max_size=40),
    mtype=st.integers(1, 8),
)
def test_scapy_built_requests_parse(
    xid: int,
    mac: bytes,
    flags: int,
    secs: int,
    ciaddr: bytes,
    hostname: bytes,
    requested: bytes,
    prl: list[int],
    mtype: int,
) -> None:
    pkt = BOOTP(chaddr=mac, xid=xid, flags=flags, secs=secs, ciaddr=".".join(map(str, ciaddr))) / DHCP(
        options=[
            ("message-type", mtype),
            ("requested_addr", ".".join(map(str, requested))),
            ("hostname", hostname),
            ("param_req_list", prl),
            "end",
        ]
    )
    msg = DhcpMessage.parse(bytes(pkt))
    assert (msg.xid, msg.chaddr, msg.flags, msg.secs, msg.ciaddr) == (xid, mac, flags, secs, ciaddr)
    assert msg.message_type == mtype
    assert option_ipv4(msg, 50) == requested
    assert msg.option(OPT_HOSTNAME) == hostname
    assert msg.option(OPT_PARAM_REQ) == bytes(prl)


# --------------------------------------------------------------------------- hypothesis

option_lists = st.dictionaries(st.integers(1, 254).filter(lambda c: c != 52), st.binary(max_size=600), max_size=8).map(
    lambda d: tuple(d.items())
)
messages = st.builds(
    DhcpMessage,
    op=st.sampled_from([BOOTREQUEST, BOOTREPLY]),
    xid=u32,
    chaddr=st.binary(max_size=16),
    htype=st.integers(0, 255),
    hops=st.integers(0, 255),
    secs=u16,
    flags=u16,
    ciaddr=st.binary(min_size=4, max_size=4),
    yiaddr=st.binary(min_size=4, max_size=4),
    siaddr=st.binary(min_size=4, max_size=4),
    giaddr=st.binary(min_size=4, max_size=4),
    sname=st.binary(max_size=64).map(lambda b: b.replace(b"\0", b"x")),
    file=st.binary(max_size=128).map(lambda b: b.replace(b"\0", b"x")),
    options=option_lists,
)


@settings(max_examples=200, deadline=None)
@given(messages, st.integers(0, 700))
def test_messages_round_trip(msg: DhcpMessage, pad_to: int) -> None:
    wire = msg.build(pad_to=pad_to)
    assert len(wire) == max(msg.wire_len(), pad_to)
    assert DhcpMessage.parse(wire) == msg


search_names = st.lists(
    st.lists(st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True), min_size=1, max_size=4).map(".".join),
    min_size=1,
    max_size=30,
)


@given(search_names)
def test_search_lists_round_trip(names: list[str]) -> None:
    data = encode_domain_search(names)
    assert decode_domain_search(data) == names
    assert len(data) <= sum(len(n) + 2 for n in names)


# --------------------------------------------------------------------------- fuzzing

VALID = [
    UDHCPC_DISCOVER,
    _with_options(b"\x35\x01\x02" + RFC3397_OPTIONS + b"\xff"),
    _with_options(b"\x35\x01\x01\x34\x01\x03\xff"),
]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300) | mutated(st.sampled_from(VALID)))
def test_parser_raises_only_wire_errors(data: bytes) -> None:
    def decode() -> None:
        msg = DhcpMessage.parse(data)
        _ = msg.message_type
        decode_domain_search(msg.option(OPT_DOMAIN_SEARCH) or b"")

    only_wire_errors(decode)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_option_areas_raise_only_wire_errors(options: bytes) -> None:
    only_wire_errors(lambda: DhcpMessage.parse(_with_options(options)))
    only_wire_errors(lambda: decode_domain_search(options))


def test_every_truncation_below_the_minimum_is_an_integrity_error() -> None:
    for cut in range(240):
        with pytest.raises(IntegrityError):
            DhcpMessage.parse(UDHCPC_DISCOVER[:cut])
