"""RFC 826 ARP for Ethernet/IPv4."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.l2 import ARP, Ether

from vmlan.wire import IntegrityError, SanityError
from vmlan.wire.arp import ARP_HLEN, ARP_OP_REPLY, ARP_OP_REQUEST, ArpPacket
from vmlan.wire.ethernet import BROADCAST, ETH_P_ARP, EthernetHeader

from .strategies import ipv4_addrs, macs

GUEST_MAC = bytes.fromhex("525400123456")
GATEWAY_MAC = bytes.fromhex("525400123502")
GUEST_IP = bytes((10, 0, 2, 15))
GATEWAY_IP = bytes((10, 0, 2, 2))

# "Who has 10.0.2.2? Tell 10.0.2.15" as a QEMU guest sends it: Ethernet header,
# the 28-byte ARP packet, and 18 bytes of padding up to the 60-byte minimum.
GOLDEN_REQUEST_FRAME = bytes.fromhex(
    "ffffffffffff 525400123456 0806"  # Ethernet: broadcast <- guest, ARP
    " 0001 0800 06 04 0001"  # Ethernet/IPv4, request
    " 525400123456 0a00020f"  # sender: guest MAC, 10.0.2.15
    " 000000000000 0a000202"  # target: unknown MAC, 10.0.2.2
) + bytes(18)
GOLDEN_REPLY = bytes.fromhex(
    "0001 0800 06 04 0002"  # Ethernet/IPv4, reply
    " 525400123502 0a000202"  # sender: gateway MAC, 10.0.2.2
    " 525400123456 0a00020f"  # target: guest MAC, 10.0.2.15
)


def test_parse_golden_request_frame_ignoring_padding() -> None:
    eth, at = EthernetHeader.parse(GOLDEN_REQUEST_FRAME)
    assert eth.ethertype == ETH_P_ARP
    arp = ArpPacket.parse(GOLDEN_REQUEST_FRAME, at)
    assert arp == ArpPacket(op=ARP_OP_REQUEST, sha=GUEST_MAC, spa=GUEST_IP, tha=bytes(6), tpa=GATEWAY_IP)


def test_request_helper_builds_golden_bytes() -> None:
    arp = ArpPacket.request(sha=GUEST_MAC, spa=GUEST_IP, tpa=GATEWAY_IP)
    frame = EthernetHeader(dst=BROADCAST, src=GUEST_MAC, ethertype=ETH_P_ARP).build(arp.to_bytes(), pad=True)
    assert frame == GOLDEN_REQUEST_FRAME


def test_reply_helper_answers_request_with_golden_bytes() -> None:
    request = ArpPacket.parse(GOLDEN_REQUEST_FRAME, 14)
    reply = request.reply(GATEWAY_MAC)
    assert reply.op == ARP_OP_REPLY
    assert reply.to_bytes() == GOLDEN_REPLY
    assert ArpPacket.parse(GOLDEN_REPLY) == reply


def test_replying_to_a_reply_raises_sanity_error() -> None:
    with pytest.raises(SanityError):
        ArpPacket.parse(GOLDEN_REPLY).reply(GUEST_MAC)


@pytest.mark.parametrize("size", [0, 1, 8, 27])
def test_truncated_packet_raises_integrity_error(size: int) -> None:
    with pytest.raises(IntegrityError, match=r"^\[ARP\]"):
        ArpPacket.parse(GOLDEN_REPLY[:size])


@pytest.mark.parametrize(
    ("position", "value"),
    [(1, 6), (2, 0x86), (4, 8), (5, 16)],  # htype IEEE 802, ptype IPv6-ish, hlen 8, plen 16
)
def test_non_ethernet_ipv4_formats_raise_sanity_error(position: int, value: int) -> None:
    bad = bytearray(GOLDEN_REPLY)
    bad[position] = value
    with pytest.raises(SanityError, match="only Ethernet/IPv4"):
        ArpPacket.parse(bad)


@pytest.mark.parametrize("op", [0, 3, 4, 8, 0xFFFF])
def test_operations_other_than_request_and_reply_raise_sanity_error(op: int) -> None:
    bad = bytearray(GOLDEN_REPLY)
    bad[6:8] = op.to_bytes(2, "big")
    with pytest.raises(SanityError):
        ArpPacket.parse(bad)


def test_wrong_address_sizes_raise_sanity_error() -> None:
    with pytest.raises(SanityError):
        ArpPacket.request(sha=GUEST_MAC[:5], spa=GUEST_IP, tpa=GATEWAY_IP)
    with pytest.raises(SanityError):
        ArpPacket.request(sha=GUEST_MAC, spa=GUEST_IP, tpa=GATEWAY_IP + b"\0")


packets = st.builds(
    ArpPacket,
    op=st.sampled_from([ARP_OP_REQUEST, ARP_OP_REPLY]),
    sha=macs,
    spa=ipv4_addrs,
    tha=macs,
    tpa=ipv4_addrs,
)


@settings(max_examples=200)
@given(packets)
def test_to_bytes_then_parse_round_trips(arp: ArpPacket) -> None:
    raw = arp.to_bytes()
    assert len(raw) == ARP_HLEN
    assert ArpPacket.parse(raw) == arp


@settings(max_examples=50, deadline=None)
@given(packets)
def test_vmlan_packets_decode_identically_in_scapy(arp: ArpPacket) -> None:
    pkt = ARP(arp.to_bytes())
    assert (pkt.hwtype, pkt.ptype, pkt.hwlen, pkt.plen, pkt.op) == (1, 0x0800, 6, 4, arp.op)
    assert bytes.fromhex(pkt.hwsrc.replace(":", "")) == arp.sha
    assert bytes.fromhex(pkt.hwdst.replace(":", "")) == arp.tha
    assert pkt.psrc == ".".join(map(str, arp.spa)) and pkt.pdst == ".".join(map(str, arp.tpa))


def test_scapy_request_decodes_identically_in_vmlan() -> None:
    frame = bytes(
        Ether(dst="ff:ff:ff:ff:ff:ff", src="52:54:00:12:34:56")
        / ARP(op="who-has", hwsrc="52:54:00:12:34:56", psrc="10.0.2.15", pdst="10.0.2.2")
    )
    assert frame == GOLDEN_REQUEST_FRAME[:42]
    assert ArpPacket.parse(frame, 14) == ArpPacket.request(sha=GUEST_MAC, spa=GUEST_IP, tpa=GATEWAY_IP)
