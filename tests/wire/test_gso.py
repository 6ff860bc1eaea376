"""Software offload (TSO, USO, UFO, checksum completion) with scapy as the oracle for every frame produced."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial as partial_call

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption, defragment
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw

from vmlan.wire import IntegrityError, SanityError, WireError
from vmlan.wire import gso as gso_module
from vmlan.wire.checksum import internet_checksum, pseudo_header_sum_v4, pseudo_header_sum_v6
from vmlan.wire.gso import MAX_SEGMENTS, software_offload
from vmlan.wire.vnet import (
    FLAG_DATA_VALID,
    FLAG_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    Offload,
)

from .strategies import mutated, only_wire_errors

SRC4, DST4 = "10.0.2.15", "93.184.216.34"
SRC6, DST6 = "fd00::15", "2001:db8::2"
TS_OPTIONS: list[tuple[str, object]] = [("NOP", None), ("NOP", None), ("Timestamp", (123456, 654321))]
ROUTER_ALERT = [IPOption(b"\x94\x04\x00\x00")]


def pattern(n: int, seed: int = 0) -> bytes:
    """Payload bytes where every offset differs from its neighbours (a misplaced cut shows)."""
    return bytes((i * 7 + seed + (i >> 8)) & 0xFF for i in range(n))


def _l2(vlan: int | None) -> Packet:
    eth = Ether(src="52:54:00:12:34:56", dst="52:55:0a:00:02:02")
    return eth if vlan is None else eth / Dot1Q(vlan=vlan, prio=3)


def tcp_frame(
    payload: bytes,
    *,
    v6: bool = False,
    vlan: int | None = None,
    flags: str = "PA",
    seq: int = 1000,
    ip_id: int = 100,
    ip_options: list[IPOption] | None = None,
    tcp_options: list[tuple[str, object]] | None = None,
) -> bytes:
    """A TSO super-frame with the checksums a sender would leave: junk the offload must not trust."""
    if v6:
        l3: Packet = IPv6(src=SRC6, dst=DST6, tc=0x28, hlim=61)
    else:
        l3 = IP(src=SRC4, dst=DST4, id=ip_id, flags="DF", tos=0x10, ttl=61, options=ip_options or [], chksum=0xBEEF)
    tcp = TCP(
        sport=40000, dport=80, seq=seq, ack=777, flags=flags, window=502, urgptr=9,
        options=TS_OPTIONS if tcp_options is None else tcp_options, chksum=0x1234,
    )  # fmt: skip
    return bytes(_l2(vlan) / l3 / tcp / Raw(payload))


def udp_frame(payload: bytes, *, v6: bool = False, vlan: int | None = None, ip_id: int = 300) -> bytes:
    if v6:
        l3: Packet = IPv6(src=SRC6, dst=DST6)
    else:
        l3 = IP(src=SRC4, dst=DST4, id=ip_id, flags="DF", chksum=0xBEEF)
    return bytes(_l2(vlan) / l3 / UDP(sport=40001, dport=40002, chksum=0x4321) / Raw(payload))


def tso(size: int, v6: bool = False, ecn: bool = False) -> Offload:
    kind = (GSO_TCPV6 if v6 else GSO_TCPV4) | (GSO_ECN if ecn else 0)
    return Offload(FLAG_NEEDS_CSUM, kind, hdr_len=0, gso_size=size, csum_start=34, csum_offset=16)


def oracle(frame: bytes) -> Packet:
    """Decode with scapy and check every length and checksum against scapy's own computation."""
    pkt = Ether(frame)
    l3off = 18 if Dot1Q in pkt else 14
    fragment = IP in pkt and (pkt[IP].frag or pkt[IP].flags.MF)
    again = pkt.copy()
    if IP in pkt:
        assert pkt[IP].len == len(frame) - l3off
        del again[IP].chksum
    else:
        assert pkt[IPv6].plen == len(frame) - l3off - 40
    for layer in (TCP, UDP):
        if layer in pkt and not fragment:
            del again[layer].chksum
            if layer is UDP:
                del again[UDP].len
    rebuilt = Ether(bytes(again))
    if IP in pkt:
        assert pkt[IP].chksum == rebuilt[IP].chksum, "IPv4 header checksum"
    for layer in (TCP, UDP):
        if layer in pkt and not fragment:
            assert pkt[layer].chksum == rebuilt[layer].chksum, f"{layer.__name__} checksum"
            if layer is UDP:
                assert pkt[UDP].len == rebuilt[UDP].len
    return pkt


def l4_payload(pkt: Packet) -> bytes:
    """What follows the TCP or UDP header (whatever layer scapy's port bindings decoded it as)."""
    layer = pkt[TCP] if TCP in pkt else pkt[UDP]
    return bytes(layer.payload)


def check_tso(frame: bytes, size: int, segments: list[bytes]) -> None:
    """Everything a receiver could tell about the segments of ``frame`` cut at ``size``."""
    orig = Ether(frame)
    payload = l4_payload(orig)
    count = max(1, math.ceil(len(payload) / size))
    assert len(segments) == count
    pieces = []
    for i, seg in enumerate(segments):
        pkt = oracle(seg)
        piece = l4_payload(pkt)
        assert piece == payload[i * size : (i + 1) * size]
        pieces.append(piece)
        o, t = orig[TCP], pkt[TCP]
        assert t.seq == (o.seq + i * size) % 2**32
        expected = int(o.flags)
        if i > 0:
            expected &= ~0x80  # CWR only on the first
        if i < count - 1:
            expected &= ~0x09  # FIN and PSH only on the last
        assert int(t.flags) == expected
        for field in ("sport", "dport", "ack", "window", "urgptr", "dataofs", "reserved", "options"):
            assert getattr(t, field) == getattr(o, field), field
        if IP in orig:
            assert pkt[IP].id == (orig[IP].id + i) & 0xFFFF
            for field in ("tos", "ttl", "flags", "frag", "src", "dst", "options", "ihl", "proto"):
                assert getattr(pkt[IP], field) == getattr(orig[IP], field), field
        else:
            for field in ("tc", "fl", "hlim", "nh", "src", "dst"):
                assert getattr(pkt[IPv6], field) == getattr(orig[IPv6], field), field
        assert seg[: 18 if Dot1Q in orig else 14] == frame[: 18 if Dot1Q in orig else 14]
    assert b"".join(pieces) == payload


# -- TCP segmentation ---------------------------------------------------------------------------------------
def test_64k_tcpv4_at_1448() -> None:
    payload = pattern(65536 - 66)
    frame = tcp_frame(payload, flags="FPAC")
    assert len(frame) == 65536
    segments = software_offload(frame, tso(1448))
    assert len(segments) == 46
    assert [len(s) for s in segments] == [1514] * 45 + [66 + 65470 - 45 * 1448]
    check_tso(frame, 1448, segments)


def test_tcpv6_with_vlan_tag() -> None:
    frame = tcp_frame(pattern(10000, 3), v6=True, vlan=42, flags="AE")
    segments = software_offload(frame, tso(1428, v6=True))
    check_tso(frame, 1428, segments)
    assert all(Ether(s)[Dot1Q].vlan == 42 for s in segments)


def test_ip_and_tcp_options_are_copied_to_every_segment() -> None:
    frame = tcp_frame(pattern(5000), ip_options=ROUTER_ALERT, tcp_options=[("MSS", 1460), ("NOP", None)] * 2)
    check_tso(frame, 1000, software_offload(frame, tso(1000)))


@pytest.mark.parametrize("length", [0, 1, 1447, 1448])
def test_payload_that_fits_one_segment_becomes_one_complete_frame(length: int) -> None:
    frame = tcp_frame(pattern(length), flags="FPAC")
    [segment] = software_offload(frame, tso(1448))
    check_tso(frame, 1448, [segment])
    assert Ether(segment)[TCP].flags == "FPAC"  # all flags stay on the only segment


def test_exact_multiple_ends_with_a_full_segment() -> None:
    frame = tcp_frame(pattern(4 * 1448), flags="FPA")
    segments = software_offload(frame, tso(1448))
    assert [len(s) - 66 for s in segments] == [1448] * 4
    check_tso(frame, 1448, segments)


def test_ip_id_and_sequence_numbers_wrap() -> None:
    frame = tcp_frame(pattern(3000), seq=2**32 - 1500, ip_id=0xFFFF)
    segments = software_offload(frame, tso(1000))
    check_tso(frame, 1000, segments)
    assert [Ether(s)[IP].id for s in segments] == [0xFFFF, 0, 1]
    assert [Ether(s)[TCP].seq for s in segments] == [2**32 - 1500, 2**32 - 500, 500]


def test_ecn_bit_and_cwr_only_on_the_first_segment() -> None:
    frame = tcp_frame(pattern(3000), flags="PAC")
    segments = software_offload(frame, tso(1000, ecn=True))
    assert [str(Ether(s)[TCP].flags) for s in segments] == ["AC", "A", "PA"]


def test_ethernet_padding_after_the_datagram_is_not_payload() -> None:
    frame = tcp_frame(pattern(2500)) + b"\xaa" * 7
    segments = software_offload(frame, tso(1000))
    check_tso(frame[:-7], 1000, segments)


def test_memoryview_input_inside_a_larger_buffer() -> None:
    frame = tcp_frame(pattern(4000))
    buf = bytearray(b"\0" * 5 + frame + b"\0" * 9)
    view = memoryview(buf)[5 : 5 + len(frame)]
    assert software_offload(view, tso(1448)) == software_offload(frame, tso(1448))


@st.composite
def sizes_and_lengths(draw: st.DrawFn, max_pieces: int = 40) -> tuple[int, int]:
    """(gso_size, payload length): shorter than one piece, exact multiples, zero, ragged tails."""
    size = draw(st.integers(1, 3000) | st.sampled_from([1, 2, 3, 4, 7, 8, 536, 1220, 1428, 1448, 1460]))
    pieces = draw(st.integers(0, max(1, min(max_pieces, 65000 // size))))
    shape = draw(st.sampled_from(["exact", "ragged", "short", "zero"]))
    if shape == "zero":
        return size, 0
    if shape == "short":
        return size, draw(st.integers(0, size))
    tail = draw(st.integers(1, size)) if shape == "ragged" and pieces < 65000 // size else 0
    return size, min(pieces * size + tail, 65000)


tcp_flags = st.sets(st.sampled_from("FSRPAUEC")).map(lambda s: "".join(sorted(s)) or "A")


@settings(max_examples=80, deadline=None)
@given(
    sizes_and_lengths(),
    st.booleans(),
    st.sampled_from([None, 1, 4094]),
    tcp_flags,
    st.integers(0, 2**32 - 1),
    st.integers(0, 0xFFFF),
    st.booleans(),
)
def test_tcp_segmentation_against_scapy(
    shape: tuple[int, int], v6: bool, vlan: int | None, flags: str, seq: int, ip_id: int, options: bool
) -> None:
    size, length = shape
    frame = tcp_frame(
        pattern(length, seq & 0xFF), v6=v6, vlan=vlan, flags=flags, seq=seq, ip_id=ip_id,
        ip_options=ROUTER_ALERT if options and not v6 else None, tcp_options=TS_OPTIONS if options else [],
    )  # fmt: skip
    check_tso(frame, size, software_offload(frame, tso(size, v6)))


def _python_sums_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gso_module, "_piece_sums", gso_module._piece_sums_python)


@settings(max_examples=150, deadline=None)
@given(sizes_and_lengths(max_pieces=60), st.booleans(), st.booleans())
def test_numpy_and_python_piece_sums_give_identical_frames(shape: tuple[int, int], v6: bool, udp: bool) -> None:
    size, length = shape
    numpy_sums = gso_module._make_numpy_piece_sums()
    assert numpy_sums is not None  # numpy is a dependency; the fast path must be the one tested
    data = memoryview(pattern(length, 9))
    count = max(1, -(-length // size))
    fast = numpy_sums(data, size, count) if length else [0]
    slow = gso_module._piece_sums_python(data, size, count) if length else [0]
    assert [s % 0xFFFF for s in fast] == [s % 0xFFFF for s in slow]
    frame = udp_frame(pattern(length), v6=v6) if udp else tcp_frame(pattern(length), v6=v6)
    offload = Offload(FLAG_NEEDS_CSUM, GSO_UDP_L4, gso_size=size) if udp else tso(size, v6)
    with pytest.MonkeyPatch.context() as mp:
        expected = software_offload(frame, offload)
        _python_sums_only(mp)
        assert software_offload(frame, offload) == expected


# -- UDP segmentation (USO) and fragmentation (UFO) ------------------------------------------------------------
def uso(size: int) -> Offload:
    return Offload(FLAG_NEEDS_CSUM, GSO_UDP_L4, gso_size=size, csum_start=34, csum_offset=6)


def check_uso(frame: bytes, size: int, segments: list[bytes]) -> None:
    orig = Ether(frame)
    payload = l4_payload(orig)
    assert len(segments) == max(1, math.ceil(len(payload) / size))
    pieces = []
    for i, seg in enumerate(segments):
        pkt = oracle(seg)
        piece = l4_payload(pkt)
        assert piece == payload[i * size : (i + 1) * size]
        assert pkt[UDP].len == 8 + len(piece)
        assert (pkt[UDP].sport, pkt[UDP].dport) == (orig[UDP].sport, orig[UDP].dport)
        assert pkt[UDP].chksum != 0
        if IP in orig:
            assert pkt[IP].id == (orig[IP].id + i) & 0xFFFF
            assert pkt[IP].flags == orig[IP].flags
        pieces.append(piece)
    assert b"".join(pieces) == payload


@settings(max_examples=60, deadline=None)
@given(sizes_and_lengths(), st.booleans(), st.sampled_from([None, 7]))
def test_udp_segmentation_against_scapy(shape: tuple[int, int], v6: bool, vlan: int | None) -> None:
    size, length = shape
    frame = udp_frame(pattern(length), v6=v6, vlan=vlan)
    check_uso(frame, size, software_offload(frame, uso(size)))


def test_uso_checksum_of_zero_is_sent_as_ffff() -> None:
    probe = b"\0\0" + pattern(30)
    [seg] = software_offload(udp_frame(probe), uso(1400))
    word = Ether(seg)[UDP].chksum  # adding the checksum itself makes the sum 0xFFFF, the checksum 0
    [seg] = software_offload(udp_frame(word.to_bytes(2, "big") + probe[2:]), uso(1400))
    assert Ether(seg)[UDP].chksum == 0xFFFF
    oracle(seg)


def ufo(size: int) -> Offload:
    return Offload(FLAG_NEEDS_CSUM, GSO_UDP, gso_size=size, csum_start=34, csum_offset=6)


@pytest.mark.parametrize(("length", "size"), [(4000, 1480), (8000, 1477), (65000, 1480), (9, 8), (100, 8)])
def test_ufo_fragments_reassemble_to_the_checksummed_datagram(length: int, size: int) -> None:
    payload = pattern(length)
    frame = udp_frame(payload, ip_id=4242)
    fragments = software_offload(frame, ufo(size))
    step = size & ~7
    assert len(fragments) == math.ceil((8 + length) / step)
    for i, frag in enumerate(fragments):
        pkt = oracle(frag)
        assert pkt[IP].id == 4242
        assert pkt[IP].frag * 8 == i * step
        assert pkt[IP].flags == ("MF" if i < len(fragments) - 1 else 0)
        if i < len(fragments) - 1:
            assert pkt[IP].len - 20 == step
    whole = defragment([Ether(f)[IP] for f in fragments])  # type: ignore[no-untyped-call]
    [datagram] = whole
    assert l4_payload(datagram) == payload
    rebuilt = datagram.copy()
    del rebuilt[UDP].chksum
    assert IP(bytes(rebuilt))[UDP].chksum == datagram[UDP].chksum
    assert datagram[UDP].len == 8 + length


@pytest.mark.parametrize(("length", "size"), [(1000, 1480), (1469, 1477), (0, 8)])
def test_ufo_datagram_that_fits_is_not_fragmented_and_keeps_df(length: int, size: int) -> None:
    # gso_size counts the UDP header (8 + 1469 = 1477): Linux leaves a datagram of at most gso_size whole,
    # even where gso_size rounded down to the fragment unit would not hold it.
    frame = udp_frame(pattern(length))
    [whole] = software_offload(frame, ufo(size))
    pkt = oracle(whole)
    assert pkt[IP].flags == "DF" and pkt[IP].frag == 0
    assert l4_payload(pkt) == pattern(length)


# -- checksum completion only ---------------------------------------------------------------------------------
def partial(frame: bytes, l3: int, proto: int, v6: bool = False) -> tuple[bytes, int]:
    """``frame`` with its L4 checksum field set to the folded pseudo-header sum, as a NEEDS_CSUM sender does."""
    out = bytearray(frame)
    if v6:
        l4 = l3 + 40
        psum = pseudo_header_sum_v6(bytes(out[l3 + 8 : l3 + 24]), bytes(out[l3 + 24 : l3 + 40]), proto, len(out) - l4)
    else:
        l4 = l3 + (out[l3] & 15) * 4
        end = l3 + int.from_bytes(out[l3 + 2 : l3 + 4], "big")
        psum = pseudo_header_sum_v4(bytes(out[l3 + 12 : l3 + 16]), bytes(out[l3 + 16 : l3 + 20]), proto, end - l4)
    field = l4 + (16 if proto == 6 else 6)
    out[field : field + 2] = psum.to_bytes(2, "big")
    if not v6:  # the sender's IP header is complete: only the L4 checksum is left to the offload
        out[l3 + 10 : l3 + 12] = b"\0\0"
        out[l3 + 10 : l3 + 12] = internet_checksum(out[l3:l4]).to_bytes(2, "big")
    return bytes(out), l4


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("vlan", [None, 3])
@pytest.mark.parametrize("proto", [6, 17])
def test_needs_csum_completes_tcp_and_udp(v6: bool, vlan: int | None, proto: int) -> None:
    l3 = 14 if vlan is None else 18
    raw = tcp_frame(pattern(333), v6=v6, vlan=vlan) if proto == 6 else udp_frame(pattern(333), v6=v6, vlan=vlan)
    frame, l4 = partial(raw, l3, proto, v6)
    offload = Offload(FLAG_NEEDS_CSUM, GSO_NONE, csum_start=l4, csum_offset=16 if proto == 6 else 6)
    [done] = software_offload(frame, offload)
    assert len(done) == len(frame)
    pkt = Ether(done)
    layer = TCP if proto == 6 else UDP
    again = pkt.copy()
    del again[layer].chksum
    assert pkt[layer].chksum == Ether(bytes(again))[layer].chksum
    assert done[:l4] == frame[:l4]  # the IP header is not the offload's business here


def test_needs_csum_completes_icmp_without_a_pseudo_header() -> None:
    frame = bytes(Ether() / IP(src=SRC4, dst=DST4) / ICMP(type=8, id=1, seq=2, chksum=0) / Raw(pattern(56)))
    [done] = software_offload(frame, Offload(FLAG_NEEDS_CSUM, csum_start=34, csum_offset=2))
    again = Ether(done)
    del again[ICMP].chksum
    assert Ether(done)[ICMP].chksum == Ether(bytes(again))[ICMP].chksum


def test_needs_csum_ignores_nonzero_ethernet_padding_and_keeps_it() -> None:
    frame, l4 = partial(udp_frame(b"hi"), 14, 17)
    padded = frame + b"\x5a" * 14
    [done] = software_offload(padded, Offload(FLAG_NEEDS_CSUM, csum_start=l4, csum_offset=6))
    assert done[len(frame) :] == b"\x5a" * 14
    pkt = Ether(done)
    again = pkt.copy()
    del again[UDP].chksum
    assert pkt[UDP].chksum == Ether(bytes(again))[UDP].chksum


@pytest.mark.parametrize("proto", [6, 17])
def test_needs_csum_sends_a_zero_checksum_as_ffff_like_linux(proto: int) -> None:
    def complete(data: bytes) -> tuple[bytes, int]:
        raw = tcp_frame(data) if proto == 6 else udp_frame(data)
        frame, l4 = partial(raw, 14, proto)
        [done] = software_offload(frame, Offload(FLAG_NEEDS_CSUM, csum_start=l4, csum_offset=16 if proto == 6 else 6))
        field = l4 + (16 if proto == 6 else 6)
        return done, int.from_bytes(done[field : field + 2], "big")

    probe = b"\0\0" + pattern(40)
    _, word = complete(probe)
    _, csum = complete(word.to_bytes(2, "big") + probe[2:])
    assert csum == 0xFFFF  # 0 and 0xFFFF are the same one's complement value; UDP needs the latter


def test_plain_and_data_valid_frames_pass_untouched() -> None:
    frame = tcp_frame(b"abc")
    assert software_offload(frame, Offload()) == [frame]
    assert software_offload(memoryview(frame), Offload(FLAG_DATA_VALID)) == [frame]


# -- what must raise WireError ---------------------------------------------------------------------------------
def _set(frame: bytes, at: int, value: bytes) -> bytes:
    return frame[:at] + value + frame[at + len(value) :]


TCP4 = tcp_frame(pattern(3000))
TCP6 = tcp_frame(pattern(3000), v6=True)
UDP4 = udp_frame(pattern(3000))

MALFORMED: list[tuple[str, bytes, Offload, type[WireError], str]] = [
    ("runt", TCP4[:13], tso(1448), IntegrityError, "frame shorter than an Ethernet header"),
    ("truncated vlan", bytes(_l2(5))[:16], tso(1448), IntegrityError, "truncated 802.1Q tag"),
    ("arp", _set(TCP4, 12, b"\x08\x06"), tso(1448), SanityError, "GSO of ethertype 0x0806"),
    ("ipv6 ethertype, v4 header", _set(TCP4, 12, b"\x86\xdd"), tso(1448, v6=True), IntegrityError, "not an IPv6"),
    ("version 6 in an IPv4 frame", _set(TCP4, 14, b"\x65"), tso(1448), IntegrityError, "not an IPv4 header"),
    ("ihl 4", _set(TCP4, 14, b"\x44"), tso(1448), IntegrityError, "IPv4 lengths ihl=16"),
    ("total beyond frame", _set(TCP4, 16, b"\xff\xff"), tso(1448), IntegrityError, "IPv4 lengths"),
    ("total below ihl", _set(TCP4, 16, b"\x00\x10"), tso(1448), IntegrityError, "IPv4 lengths"),
    ("truncated IPv4", TCP4[:30], tso(1448), IntegrityError, "not an IPv4 header"),
    ("udp under tcp gso", UDP4, tso(1448), SanityError, "IPv4 protocol 17 where 6 was announced"),
    ("tcp under uso", TCP4, uso(1448), SanityError, "IPv4 protocol 6 where 17 was announced"),
    ("tcpv6 type on v4", TCP4, tso(1448, v6=True), SanityError, "gso_type does not match the IP version"),
    ("tcpv4 type on v6", TCP6, tso(1448), SanityError, "gso_type does not match the IP version"),
    ("MF fragment", _set(TCP4, 20, b"\x20\x00"), tso(1448), SanityError, "GSO of an IPv4 fragment"),
    ("offset fragment", _set(TCP4, 20, b"\x00\x10"), tso(1448), SanityError, "GSO of an IPv4 fragment"),
    ("tcp doff 4", _set(TCP4, 46, b"\x40"), tso(1448), IntegrityError, "TCP data offset 16"),
    ("tcp doff past end", _set(tcp_frame(b""), 46, b"\xf0"), tso(1448), IntegrityError, "TCP data offset 60"),
    (
        "truncated tcp",
        _set(_set(TCP4, 16, b"\x00\x24"), 24, b"\0\0")[:50],
        tso(1448),
        IntegrityError,
        "truncated TCP header",
    ),
    ("truncated udp", _set(UDP4, 16, b"\x00\x1a")[:40], uso(1448), IntegrityError, "truncated UDP header"),
    ("v6 plen beyond frame", _set(TCP6, 18, b"\xff\xff"), tso(1448, v6=True), IntegrityError, "IPv6 payload length"),
    ("v6 extension header", _set(TCP6, 20, b"\x00"), tso(1448, v6=True), SanityError, "IPv6 extension headers"),
    ("gso_size 0", TCP4, tso(0), SanityError, "gso_size 0"),
    ("gso_size negative", TCP4, tso(-1), SanityError, "gso_size -1"),
    ("uso gso_size 0", UDP4, uso(0), SanityError, "gso_size 0"),
    ("ufo gso_size 0", UDP4, ufo(0), SanityError, "gso_size 0"),
    ("ufo gso_size 7", UDP4, ufo(7), SanityError, "fragments of gso_size 7"),
    ("ufo on v6", udp_frame(b"x" * 3000, v6=True), ufo(1280), SanityError, "UFO is IPv4 only here"),
    (
        "absurd count",
        tcp_frame(pattern(60000)),
        tso(1),
        SanityError,
        f"60000 bytes at gso_size 1 is more than {MAX_SEGMENTS} segments",
    ),
    ("absurd uso count", udp_frame(pattern(60000)), uso(8), SanityError, "more than"),
    ("absurd ufo count", udp_frame(pattern(60000)), ufo(8), SanityError, "fragments of gso_size 8"),
    ("unknown gso type", TCP4, Offload(FLAG_NEEDS_CSUM, 2, gso_size=1448), SanityError, "unsupported gso_type 0x02"),
    ("csum_start in L2", TCP4, Offload(FLAG_NEEDS_CSUM, csum_start=10, csum_offset=16), SanityError, "csum_start"),
    ("csum field past end", TCP4, Offload(FLAG_NEEDS_CSUM, csum_start=3060, csum_offset=16), SanityError, "outside"),
    ("csum offset negative", TCP4, Offload(FLAG_NEEDS_CSUM, csum_start=40, csum_offset=-4), SanityError, "outside"),
    (
        "csum field in padding",
        udp_frame(b"ab") + bytes(20),
        Offload(FLAG_NEEDS_CSUM, csum_start=44, csum_offset=2),
        SanityError,
        "outside the datagram",
    ),
]


@pytest.mark.parametrize(
    ("frame", "offload", "error", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_frames_raise_our_error(frame: bytes, offload: Offload, error: type[WireError], message: str) -> None:
    with pytest.raises(error) as info:
        software_offload(frame, offload)
    assert message in info.value.detail
    assert info.value.proto == "gso"


VALID_CASES: list[tuple[bytes, Offload]] = [
    (tcp_frame(pattern(3000), vlan=9), tso(1448)),
    (tcp_frame(pattern(3000), v6=True), tso(1000, v6=True)),
    (udp_frame(pattern(3000)), uso(1000)),
    (udp_frame(pattern(3000), v6=True, vlan=2), uso(1000)),
    (udp_frame(pattern(3000)), ufo(1480)),
    (partial(udp_frame(pattern(300)), 14, 17)[0], Offload(FLAG_NEEDS_CSUM, csum_start=34, csum_offset=6)),
]

offloads = st.builds(
    Offload,
    flags=st.sampled_from([0, FLAG_NEEDS_CSUM, FLAG_DATA_VALID]),
    gso_type=st.sampled_from([GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4, 2, 0x7F, GSO_TCPV4 | GSO_ECN]),
    gso_size=st.integers(-2, 70000) | st.sampled_from([0, 1, 8, 1448]),
    csum_start=st.integers(-2, 3200),
    csum_offset=st.integers(-2, 3200) | st.sampled_from([2, 6, 16]),
)


def _check_outputs(call: Callable[[], list[bytes]]) -> None:
    try:
        out = call()
    except WireError:
        return
    assert out and all(type(f) is bytes for f in out)


@settings(max_examples=800, deadline=None)
@given(st.sampled_from(range(len(VALID_CASES))).flatmap(lambda i: mutated(st.just(VALID_CASES[i][0]))), offloads)
def test_mutated_frames_with_any_metadata_parse_or_raise_our_error(frame: bytes, offload: Offload) -> None:
    _check_outputs(lambda: software_offload(frame, offload))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(len(VALID_CASES))).flatmap(lambda i: mutated(st.just(VALID_CASES[i][0]))))
def test_mutated_frames_with_their_own_metadata_parse_or_raise_our_error(frame: bytes) -> None:
    for _, offload in VALID_CASES:
        only_wire_errors(partial_call(software_offload, frame, offload))


def test_every_truncation_of_every_valid_case_parses_or_raises_our_error() -> None:
    for frame, offload in VALID_CASES:
        for cut in range(0, 120):
            _check_outputs(partial_call(software_offload, frame[:cut], offload))


def test_valid_cases_are_valid() -> None:
    for frame, offload in VALID_CASES:
        for out in software_offload(frame, offload):
            oracle(out)
