"""RFC 7348 VXLAN header, the flow hash and the source-port mapping; scapy's VXLAN layer as the oracle."""

from __future__ import annotations

from socket import AF_INET6, inet_aton, inet_pton

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from vmlan.wire import IntegrityError, SanityError, WireError
from vmlan.wire.checksum import pseudo_header_sum_v4, pseudo_header_sum_v6
from vmlan.wire.gso import software_offload
from vmlan.wire.vnet import FLAG_NEEDS_CSUM, GSO_ECN, GSO_TCPV4, GSO_TCPV6, Offload
from vmlan.wire.vxlan import (
    FLAG_I,
    VXLAN_HLEN,
    VXLAN_PORT,
    VxlanHeader,
    flow_hash,
    header_bytes,
    peek,
    source_port,
    tcp_super_frame,
    unfinished_checksum,
)

from .strategies import only_wire_errors

INNER = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="192.168.77.1", dst="192.168.77.2")
              / TCP(sport=40000, dport=80))
# VNI 42 with the I flag: what `ip link add ... type vxlan id 42` puts before every frame.
GOLDEN = bytes.fromhex("08000000 00002a00")
ARP_FRAME = Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP()


def test_golden_header_parse_and_build() -> None:
    header, start = VxlanHeader.parse(GOLDEN + INNER)
    assert header == VxlanHeader(vni=42)
    assert start == VXLAN_HLEN
    assert header.to_bytes() == GOLDEN == header_bytes(42)
    assert header.build(INNER) == GOLDEN + INNER
    assert VxlanHeader(vni=0xABCDEF).to_bytes() == bytes.fromhex("08000000abcdef00")


def test_scapy_builds_what_we_build_and_parses_what_we_parse() -> None:
    for vni in (0, 1, 42, 0x123456, 0xFFFFFF):
        ours = header_bytes(vni) + INNER
        theirs = bytes(VXLAN(vni=vni, flags=FLAG_I) / Ether(INNER))
        assert ours == theirs
        pkt = VXLAN(ours)
        assert pkt.vni == vni and int(pkt.flags) == FLAG_I
        assert bytes(pkt.payload) == INNER


def test_whole_outer_packet_as_scapy_dissects_it() -> None:
    """scapy binds VXLAN to UDP port 4789: the header and inner frame in a real outer packet."""
    outer = bytes(IP(src="10.99.0.1", dst="10.99.0.2") / UDP(sport=50000, dport=VXLAN_PORT) / (header_bytes(7) + INNER))
    pkt = IP(outer)
    assert pkt[VXLAN].vni == 7
    header, start = VxlanHeader.parse(outer, 28)
    assert header.vni == 7 and outer[start:] == INNER


def test_reserved_fields_are_kept_and_ignored() -> None:
    raw = bytes.fromhex("0812345600002aff")
    header, _ = VxlanHeader.parse(raw)
    assert header == VxlanHeader(vni=42, flags=0x08, reserved1=0x123456, reserved2=0xFF)
    assert header.to_bytes() == raw
    assert peek(raw) == (0x08, 42)


def test_i_flag_clear_is_a_sanity_error() -> None:
    with pytest.raises(SanityError, match=r"^\[VXLAN\] I flag clear"):
        VxlanHeader.parse(bytes.fromhex("0000000000002a00"))
    with pytest.raises(SanityError, match=r"^\[VXLAN\] I flag clear"):
        VxlanHeader.parse(bytes.fromhex("f700000000002a00"))  # every bit but I


def test_short_buffer_is_an_integrity_error() -> None:
    with pytest.raises(IntegrityError, match=r"^\[VXLAN\] 7 bytes < minimum 8"):
        VxlanHeader.parse(GOLDEN[:7])
    with pytest.raises(IntegrityError):
        VxlanHeader.parse(GOLDEN, offset=4)


def test_out_of_range_fields_refused() -> None:
    with pytest.raises(SanityError, match="vni 16777216 does not fit 24 bits"):
        VxlanHeader(vni=1 << 24)
    with pytest.raises(SanityError):
        header_bytes(-1)
    with pytest.raises(SanityError):
        VxlanHeader(vni=1, flags=256)


@given(vni=st.integers(0, 0xFFFFFF), flags=st.integers(0, 255).map(lambda f: f | FLAG_I),
       r1=st.integers(0, 0xFFFFFF), r2=st.integers(0, 255), payload=st.binary(max_size=64))
def test_round_trip(vni: int, flags: int, r1: int, r2: int, payload: bytes) -> None:
    header = VxlanHeader(vni=vni, flags=flags, reserved1=r1, reserved2=r2)
    raw = header.build(payload)
    again, start = VxlanHeader.parse(raw)
    assert again == header and raw[start:] == payload
    assert peek(raw) == (flags, vni)
    if flags == FLAG_I:  # other flags switch scapy to the GPE/GBP extensions' layouts
        assert VXLAN(raw).vni == vni


@given(st.binary(max_size=24))
def test_only_wire_errors_our_error(raw: bytes) -> None:
    only_wire_errors(lambda: VxlanHeader.parse(raw))


def test_flow_hash_follows_the_flow_not_the_payload() -> None:
    def tcp(sport: int, payload: bytes = b"", src: str = "192.168.77.1") -> bytes:
        return bytes(Ether() / IP(src=src, dst="192.168.77.2", id=sport) / TCP(sport=sport, dport=5201) / payload)

    assert flow_hash(tcp(40000, b"a")) == flow_hash(tcp(40000, b"bbbb"))
    assert flow_hash(tcp(40000)) != flow_hash(tcp(40001))
    assert flow_hash(tcp(40000)) != flow_hash(tcp(40000, src="192.168.77.3"))
    v6 = [bytes(Ether() / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=p, dport=53) / (b"x" * p)) for p in (1, 2)]
    assert flow_hash(v6[0]) != flow_hash(v6[1])
    # A fragment's ports are not where a whole datagram's are: fragments of one datagram share a hash.
    frags = [bytes(Ether() / IP(src="1.2.3.4", dst="5.6.7.8", flags=f, frag=o, proto=17) / bytes(range(k, k + 8)))
             for f, o, k in (("MF", 0, 0), ("MF", 100, 8), (0, 200, 16))]
    assert len({flow_hash(f) for f in frags[1:]}) == 1
    arp = bytes(Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP())
    assert flow_hash(arp) == flow_hash(arp[:14] + b"\0" * 28)
    for runt in (b"", b"\x08\x00", INNER[:20], INNER[:14]):
        assert 0 <= flow_hash(runt) < 1 << 32
    for frame in (INNER, v6[0], arp):  # the receive loop hands out memoryviews
        assert flow_hash(memoryview(frame)) == flow_hash(bytearray(frame)) == flow_hash(frame)


@given(flow=st.integers(0, 0xFFFFFFFF), low=st.integers(1, 65535), span=st.integers(0, 65534))
def test_source_port_stays_in_range(flow: int, low: int, span: int) -> None:
    high = min(65535, low + span)
    assert low <= source_port(flow, low, high) <= high


def test_source_port_spreads_over_the_range() -> None:
    ports = {source_port(flow_hash(bytes(Ether() / IP() / TCP(sport=s))), 32768, 60999) for s in range(1000, 1400)}
    assert len(ports) > 300
    assert min(ports) < 36000 and max(ports) > 57000
    assert source_port(0xFFFFFFFF, 1000, 1000) == 1000


def test_errors_are_wire_errors() -> None:
    assert issubclass(IntegrityError, WireError) and issubclass(SanityError, WireError)


def _partial(pkt: Ether) -> bytes:
    """The frame as a kernel leaves it for offload: the L4 checksum field holds the pseudo-header sum."""
    ip = pkt.payload
    l4 = ip.payload
    length = len(bytes(l4))
    if isinstance(ip, IP):
        seed = pseudo_header_sum_v4(inet_aton(ip.src), inet_aton(ip.dst), ip.proto, length)
    else:
        seed = pseudo_header_sum_v6(inet_pton(AF_INET6, ip.src), inet_pton(AF_INET6, ip.dst), ip.nh, length)
    l4.chksum = seed
    return bytes(pkt)


@pytest.mark.parametrize("pkt", [
    Ether() / IP(src="192.168.77.1", dst="192.168.77.2") / TCP(sport=40000, dport=5201) / (b"d" * 1400),
    Ether() / IP(src="192.168.77.1", dst="192.168.77.2", options=b"\x01\x01\x01\x00") / UDP(sport=1, dport=2) / b"u",
    Ether() / IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=1, dport=2, flags="S"),
    Ether() / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=2) / (b"x" * 99),
])
def test_unfinished_checksum_found_and_finished(pkt: Ether) -> None:
    finished = bytes(pkt)
    partial = _partial(pkt.copy())
    assert unfinished_checksum(finished) is None
    found = unfinished_checksum(memoryview(partial))
    assert found is not None
    start, offset = found
    assert start == (34 if IP in pkt and not pkt[IP].options else 38 if IP in pkt else 54)
    assert offset == (16 if TCP in pkt else 6)
    assert software_offload(partial, Offload(FLAG_NEEDS_CSUM, csum_start=start, csum_offset=offset)) == [finished]


def test_unfinished_checksum_ignores_what_it_cannot_finish() -> None:
    no_sum = Ether() / IP(src="1.2.3.4", dst="5.6.7.8") / UDP(sport=1, dport=2, chksum=0) / b"x"
    assert unfinished_checksum(bytes(no_sum)) is None
    frag = Ether() / IP(src="1.2.3.4", dst="5.6.7.8", flags="MF") / TCP()
    assert unfinished_checksum(_partial(frag)) is None
    icmp = bytes(Ether() / IP() / b"\x08\x00\x00\x00")
    assert unfinished_checksum(icmp) is None
    partial = _partial(Ether() / IP(src="1.2.3.4", dst="5.6.7.8") / TCP())
    for cut in (0, 14, 33, 40, 49):
        assert unfinished_checksum(partial[:cut]) is None
    assert unfinished_checksum(bytes(ARP_FRAME)) is None


@given(st.binary(max_size=80))
def test_unfinished_checksum_never_raises(raw: bytes) -> None:
    for frame in (raw, INNER[:14] + raw, bytes(Ether() / IPv6())[:14] + raw):
        result = unfinished_checksum(frame)
        assert result is None or result[0] + result[1] + 2 <= len(frame)


@pytest.mark.parametrize("ip", [IP(src="192.168.77.1", dst="192.168.77.2"), IPv6(src="fd00::1", dst="fd00::2")])
def test_tcp_super_frame_cut_into_ethernet_frames(ip: IP | IPv6) -> None:
    """What a kernel VTEP on a veth hands a UDP socket: one 60 KB TCP segment, checksum unfinished."""
    data = bytes(range(256)) * 240
    tcp = TCP(sport=5201, dport=40000, seq=1000, flags="PA", options=[("NOP", None)] * 12)
    segment = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / tcp / data
    partial = _partial(segment)
    found = unfinished_checksum(partial)
    assert found is not None
    gso = tcp_super_frame(partial, found[0])
    assert gso is not None
    gso_type, hdr_len, gso_size = gso
    assert gso_type == (GSO_TCPV4 if IP in segment else GSO_TCPV6)
    assert hdr_len == found[0] + 32
    frames = software_offload(partial, Offload(FLAG_NEEDS_CSUM, gso_type, hdr_len, gso_size, *found))
    assert max(len(f) for f in frames) == 1514
    got = b""
    for frame in frames:
        piece = Ether(frame)[TCP]
        again = Ether(frame)
        del again[TCP].chksum
        assert Ether(bytes(again))[TCP].chksum == piece.chksum  # scapy agrees with every checksum
        assert piece.seq == 1000 + len(got)
        got += bytes(piece.payload)
    assert got == data
    assert tcp_super_frame(_partial(Ether() / ip / TCP() / (b"x" * 1400)), found[0]) is None  # fits a frame
    cwr = tcp_super_frame(_partial(Ether() / ip / TCP(flags="AC") / data), found[0])
    assert cwr is not None and cwr[0] & GSO_ECN
