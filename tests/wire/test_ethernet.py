"""Ethernet II / 802.1Q headers and MAC helpers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.l2 import Dot1Q, Ether

from vmlan.wire import IntegrityError, SanityError
from vmlan.wire.ethernet import (
    BROADCAST,
    ETH_P_8021Q,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    EthernetHeader,
    is_broadcast,
    is_multicast,
    mac_from_str,
    mac_to_str,
)

from .strategies import macs, u16

QEMU_MAC = bytes.fromhex("525400123456")
# Broadcast ARP frame from QEMU's default NIC: dst, src, EtherType 0x0806, then payload.
GOLDEN_UNTAGGED = bytes.fromhex("ffffffffffff 525400123456 0806") + b"payload"
# Same frame tagged with PCP 5, DEI 0, VID 100 (TCI 0xa064).
GOLDEN_TAGGED = bytes.fromhex("ffffffffffff 525400123456 8100 a064 0800") + b"payload"


def test_constants_have_ieee_values() -> None:
    assert (ETH_P_IP, ETH_P_ARP, ETH_P_IPV6, ETH_P_8021Q) == (0x0800, 0x0806, 0x86DD, 0x8100)
    assert BROADCAST == b"\xff" * 6


def test_parse_golden_untagged_frame() -> None:
    header, payload_at = EthernetHeader.parse(GOLDEN_UNTAGGED)
    assert header == EthernetHeader(dst=BROADCAST, src=QEMU_MAC, ethertype=ETH_P_ARP)
    assert header.vlan_tci is None and header.vlan_id is None and header.header_len == 14
    assert payload_at == 14
    assert GOLDEN_UNTAGGED[payload_at:] == b"payload"


def test_build_golden_untagged_frame() -> None:
    header = EthernetHeader(dst=BROADCAST, src=QEMU_MAC, ethertype=ETH_P_ARP)
    assert header.build(b"payload") == GOLDEN_UNTAGGED
    assert header.to_bytes() == GOLDEN_UNTAGGED[:14]


def test_parse_and_build_golden_vlan_tagged_frame() -> None:
    header, payload_at = EthernetHeader.parse(GOLDEN_TAGGED)
    assert header.ethertype == ETH_P_IP
    assert header.vlan_tci == 0xA064 and header.vlan_id == 100 and header.vlan_pcp == 5
    assert payload_at == 18 and header.header_len == 18
    assert header.build(b"payload") == GOLDEN_TAGGED


def test_parse_at_offset_inside_larger_buffer() -> None:
    buf = bytearray(b"junk" + GOLDEN_UNTAGGED)
    header, payload_at = EthernetHeader.parse(memoryview(buf), 4)
    assert header.src == QEMU_MAC and payload_at == 18


@pytest.mark.parametrize("size", range(14))
def test_frames_shorter_than_14_bytes_raise_integrity_error(size: int) -> None:
    with pytest.raises(IntegrityError, match=r"^\[Ethernet\]"):
        EthernetHeader.parse(GOLDEN_UNTAGGED[:size])


@pytest.mark.parametrize("size", range(14, 18))
def test_tagged_frames_shorter_than_18_bytes_raise_integrity_error(size: int) -> None:
    with pytest.raises(IntegrityError):
        EthernetHeader.parse(GOLDEN_TAGGED[:size])


def test_build_pads_short_frames_to_60_bytes_only_when_asked() -> None:
    header = EthernetHeader(dst=BROADCAST, src=QEMU_MAC, ethertype=ETH_P_ARP)
    assert len(header.build(b"x")) == 15
    padded = header.build(b"x", pad=True)
    assert len(padded) == 60 and padded[15:] == bytes(45)
    assert len(header.build(bytes(100), pad=True)) == 114


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dst": b"\x00" * 5, "src": QEMU_MAC, "ethertype": 0x800},
        {"dst": BROADCAST, "src": b"\x00" * 7, "ethertype": 0x800},
        {"dst": BROADCAST, "src": QEMU_MAC, "ethertype": 0x10000},
        {"dst": BROADCAST, "src": QEMU_MAC, "ethertype": 0x800, "vlan_tci": -1},
    ],
)
def test_header_with_unencodable_fields_raises_sanity_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(SanityError):
        EthernetHeader(**kwargs)


def test_mac_to_str_and_back() -> None:
    assert mac_to_str(QEMU_MAC) == "52:54:00:12:34:56"
    assert mac_from_str("52:54:00:12:34:56") == QEMU_MAC
    assert mac_from_str("52-54-00-12-34-56") == QEMU_MAC
    assert mac_from_str("52:54:0:12:34:56") == QEMU_MAC
    assert mac_from_str("FF:ff:FF:ff:FF:ff") == BROADCAST


@pytest.mark.parametrize(
    "text",
    [
        "",
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "52:54:00:12:34:5g",
        "525400123456",
        "52:54:00:12:34:567",
        " 52:54:00:12:34:56",
        "52:54:00:12:34:56\n",
        "52::54:00:12:34:56",
        "+2:54:00:12:34:56",
    ],
)
def test_malformed_mac_strings_raise_sanity_error(text: str) -> None:
    with pytest.raises(SanityError, match=r"^\[Ethernet\] malformed MAC"):
        mac_from_str(text)


@given(macs)
def test_mac_string_round_trip(mac: bytes) -> None:
    assert mac_from_str(mac_to_str(mac)) == mac


def test_multicast_and_broadcast_predicates() -> None:
    assert is_multicast(BROADCAST) and is_broadcast(BROADCAST)
    assert is_multicast(bytes.fromhex("01005e000001"))  # IPv4 multicast
    assert is_multicast(bytes.fromhex("333300000001"))  # IPv6 multicast
    assert not is_multicast(QEMU_MAC) and not is_broadcast(QEMU_MAC)
    assert not is_multicast(bytes.fromhex("020000000000"))  # locally administered unicast


@st.composite
def headers(draw: st.DrawFn, ethertypes: st.SearchStrategy[int] = u16) -> EthernetHeader:
    tci = draw(st.none() | u16)
    ethertype = draw(ethertypes.filter(lambda t: t != ETH_P_8021Q) if tci is None else ethertypes)
    return EthernetHeader(dst=draw(macs), src=draw(macs), ethertype=ethertype, vlan_tci=tci)


@settings(max_examples=200)
@given(headers(), st.binary(max_size=64))
def test_build_then_parse_round_trips(header: EthernetHeader, payload: bytes) -> None:
    frame = header.build(payload)
    parsed, payload_at = EthernetHeader.parse(frame)
    assert parsed == header
    assert frame[payload_at:] == payload


@settings(max_examples=50, deadline=None)
@given(headers(st.integers(0x0600, 0xFFFF)))  # below 0x600 scapy decodes an 802.3 length
def test_vmlan_frames_decode_identically_in_scapy(header: EthernetHeader) -> None:
    pkt = Ether(header.build(b"\x00" * 4))
    assert pkt.dst == mac_to_str(header.dst) and pkt.src == mac_to_str(header.src)
    if header.vlan_tci is None:
        assert pkt.type == header.ethertype
    else:
        assert pkt.type == ETH_P_8021Q
        tag = pkt[Dot1Q]
        assert (tag.prio, tag.dei, tag.vlan, tag.type) == (
            header.vlan_tci >> 13,
            header.vlan_tci >> 12 & 1,
            header.vlan_tci & 0xFFF,
            header.ethertype,
        )


def test_scapy_frames_decode_identically_in_vmlan() -> None:
    frame = bytes(
        Ether(dst="01:00:5e:00:00:fb", src="52:54:00:aa:bb:cc") / Dot1Q(prio=3, vlan=42, type=0x86DD)
    )
    header, payload_at = EthernetHeader.parse(frame)
    assert header.dst == mac_from_str("01:00:5e:00:00:fb")
    assert header.src == mac_from_str("52:54:00:aa:bb:cc")
    assert header.vlan_id == 42 and header.vlan_pcp == 3 and header.ethertype == ETH_P_IPV6
    assert payload_at == 18
