"""Two ``-netdev vxlan`` ports over loopback (127.0.0.1 and 127.0.0.2), each on a hub of its own with a
recording port: frames cross, drops are counted by reason, unfinished checksums and TSO segments enter
the hub marked for offload, and the runtime registers and shows the kind."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from vmlan.config.netdev import parse_netdev
from vmlan.config.vxlan import VxlanNetdev
from vmlan.control.monitor import info_network
from vmlan.io.vxlan import VxlanPort
from vmlan.wire.checksum import pseudo_header_sum_v4
from vmlan.wire.vnet import FLAG_NEEDS_CSUM, GSO_TCPV4

from ..netns import HubThread, Recorder, wait_for
from .conftest import RunningLan, free_port

A, B = "127.0.0.1", "127.0.0.2"


def vxlan(local: str, remote: str, port: int, vni: int = 42) -> VxlanNetdev:
    nd = parse_netdev(f"vxlan,id=vx,vni={vni},remote={remote},local={local},port={port}")
    assert isinstance(nd, VxlanNetdev)
    return nd


class Pair:
    def __init__(self) -> None:
        self.port = free_port(socket.SOCK_DGRAM)
        self.ha, self.hb = HubThread(), HubThread()
        self.a = self.ha.start(VxlanPort(vxlan(A, B, self.port), self.ha.loop))
        self.b = self.hb.start(VxlanPort(vxlan(B, A, self.port), self.hb.loop))
        self.ha.attach(self.a)
        self.hb.attach(self.b)
        self.ra = self.ha.attach(Recorder("ra", keep=True))
        self.rb = self.hb.attach(Recorder("rb", offload_ok=True, keep=True))
        self.plain = self.hb.attach(Recorder("plain", keep=True))

    def send(self, frame: bytes) -> None:
        self.ha.call(self.ha.hub.input, self.ra, frame)

    def close(self) -> None:
        self.ha.close()
        self.hb.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    yield p
    p.close()


def tcp_frame(payload: bytes, partial: bool) -> bytes:
    pkt = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="192.168.77.1", dst="192.168.77.2") / \
        TCP(sport=1, dport=2) / payload
    if partial:
        pkt[TCP].chksum = pseudo_header_sum_v4(socket.inet_aton("192.168.77.1"), socket.inet_aton("192.168.77.2"), 6,
                                               20 + len(payload))
    return bytes(pkt)


def test_frames_cross_both_ways(pair: Pair) -> None:
    frame = bytes(Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / IP() / (b"x" * 100))
    pair.send(frame)
    wait_for(lambda: pair.rb.frames, what="A's frame at B")
    assert pair.rb.frames == [frame] and pair.rb.sizes[0][1] is None
    pair.hb.call(pair.hb.hub.input, pair.plain, frame[::-1])
    wait_for(lambda: pair.ra.frames, what="B's frame at A")
    assert pair.ra.frames == [frame[::-1]]
    assert pair.a.raw and pair.b.raw  # the tests run as root: per-flow source ports
    assert pair.a.counters.tx_frames == 1 and pair.b.counters.rx_frames == 1


def test_drops_are_counted_by_reason(pair: Pair) -> None:
    hostile = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    frame = bytes(12) + b"\x88\xb5" + bytes(46)
    for datagram in (bytes.fromhex("0000000000002a00") + frame, bytes.fromhex("0800000000002b00") + frame,
                     bytes.fromhex("0800000000002a00") + frame[:13], b""):
        hostile.sendto(datagram, (B, pair.port))
    hostile.close()
    wait_for(lambda: pair.b.counters.rx_dropped == 4, what="four drops")
    assert (pair.b.rx_no_i_flag, pair.b.rx_bad_vni, pair.b.rx_short, pair.b.rx_long) == (1, 1, 2, 0)
    pair.hb.call(setattr, pair.b, "max_frame", 100)
    pair.send(bytes(Ether() / IP() / (b"y" * 200)))
    wait_for(lambda: pair.b.rx_long == 1, what="the long frame")
    assert not pair.rb.frames
    text = pair.b.describe()
    assert "dropped: short 2, long 1, no I flag 1, other VNI 1" in text, text


def test_unfinished_checksums_and_tso_segments_are_marked(pair: Pair) -> None:
    pair.send(tcp_frame(b"a" * 100, partial=True))
    pair.send(tcp_frame(b"b" * 100, partial=False))
    pair.send(tcp_frame(b"c" * 30000, partial=True))
    wait_for(lambda: len(pair.rb.frames) == 3 and len(pair.plain.frames) >= 3, what="three frames")
    (_, small), (_, finished), (_, big) = pair.rb.sizes
    assert small.flags == FLAG_NEEDS_CSUM and (small.csum_start, small.csum_offset) == (34, 16) and not small.gso_size
    assert finished is None
    assert big.gso_type == GSO_TCPV4 and big.gso_size == 1460 and big.hdr_len == 54
    assert (pair.b.rx_csum_partial, pair.b.rx_gso) == (2, 1)
    # A port without offloads gets finished, 1514-byte frames whose checksums scapy accepts.
    plain = pair.plain.frames
    assert len(plain) == 2 + 21 and max(map(len, plain)) == 1514
    for raw in plain:
        pkt = Ether(raw)
        again = Ether(raw)
        del again[TCP].chksum
        assert Ether(bytes(again))[TCP].chksum == pkt[TCP].chksum
    assert b"".join(bytes(Ether(raw)[TCP].payload) for raw in plain[2:]) == b"c" * 30000


def test_source_ports_follow_the_flow() -> None:
    """A raw receiver on 127.0.0.2 sees the outer UDP source port per inner flow, from srcport=."""
    port = free_port(socket.SOCK_DGRAM)
    hub = HubThread()
    sniff = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    sniff.settimeout(5)
    try:
        nd = parse_netdev(f"vxlan,id=vx,vni=7,remote={B},local={A},port={port},srcport=40000-40099")
        assert isinstance(nd, VxlanNetdev)
        vx = hub.start(VxlanPort(nd, hub.loop))
        hub.attach(vx)
        rec = hub.attach(Recorder("r"))
        seen: dict[int, set[int]] = {}
        for sport in (1, 2, 3, 1, 2, 3):
            frame = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=sport, dport=80))
            hub.call(hub.hub.input, rec, frame)
            while True:
                data = sniff.recv(65536)
                ihl = (data[0] & 15) * 4
                src, dst, _, csum = struct.unpack_from("!HHHH", data, ihl)
                if dst == port:
                    break
            assert csum == 0 and data[ihl + 8 : ihl + 16] == bytes.fromhex("0800000000000700")
            seen.setdefault(sport, set()).add(src)
        assert all(len(ports) == 1 for ports in seen.values()), seen
        assert all(40000 <= p <= 40099 for ports in seen.values() for p in ports), seen
    finally:
        sniff.close()
        hub.close()


def test_runtime_opens_shows_and_removes_it() -> None:
    port = free_port(socket.SOCK_DGRAM)
    running = RunningLan(["-netdev", f"vxlan,id=vx,vni=5,remote={B},local={A},port={port}", "-netdev", "user,id=u"])
    running.start()
    try:
        text: Any = running.call(info_network, running.runtime)
        assert f" \\ vx: type=vxlan,vni=5,remote={B},local={A},port={port},srcport=" in text, text
        running.call(running.runtime.remove, "vx")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind((A, port))  # the port was closed with the netdev
    finally:
        running.stop()


def test_a_port_in_use_is_a_one_line_link_error() -> None:
    from vmlan.io.errors import LinkError

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind((A, 0))
        hub = HubThread()
        try:
            with pytest.raises(LinkError, match=r"^-netdev vxlan,id=vx: Address already in use$"):
                hub.call(VxlanPort(vxlan(A, B, busy.getsockname()[1]), hub.loop).start)
        finally:
            hub.close()


def test_a_unicast_port_is_not_shared() -> None:
    """Two unicast links on one port would split the datagrams between them: the second one fails."""
    from vmlan.io.errors import LinkError

    port = free_port(socket.SOCK_DGRAM)
    hub = HubThread()
    try:
        hub.start(VxlanPort(vxlan(A, B, port), hub.loop))
        with pytest.raises(LinkError, match="Address already in use"):
            hub.call(VxlanPort(vxlan(A, B, port, vni=43), hub.loop).start)
    finally:
        hub.close()


def test_tso_super_frames_leave_in_udp_gso_sends(pair: Pair) -> None:
    """A TAP's 64 KiB TCP segment: cut into 1514-byte frames, sent from the flow's own UDP socket."""
    from vmlan.wire.vnet import Offload

    data = bytes(range(256)) * 250
    frame = tcp_frame(data, partial=True)
    offload = Offload(FLAG_NEEDS_CSUM, GSO_TCPV4, 54, 1460, 34, 16)
    tso = Recorder("tso")
    pair.ha.attach(tso)
    pair.ha.call(pair.ha.hub.input, tso, frame, offload)
    pieces = -(-len(data) // 1460)
    wait_for(lambda: len(pair.plain.frames) == pieces, what="the segments at B")
    assert pair.a.tx_gso == 1 and pair.a.tx_gso_sends == 2  # 44 segments of 1522 bytes: 39 + 5
    assert b"".join(bytes(Ether(raw)[TCP].payload) for raw in pair.plain.frames) == data
    assert max(map(len, pair.plain.frames)) == 1514
    assert pair.b.counters.rx_frames == pieces and pair.b.rx_csum_partial == 0  # finished before they left
    (sport,) = pair.a._gso_socks  # one socket, for the flow's source port
    assert pair.a.sport_range[0] <= sport <= pair.a.sport_range[1]
