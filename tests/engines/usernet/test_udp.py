"""UDP NAT (udp.py): one host socket per guest source, endpoint-independent, idle-expired, capped per guest;
host sockets' ICMP errors come back to the guest as ICMP."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror, defragment
from scapy.layers.l2 import Ether

from tests.engines.usernet.stacknet import (
    DNS_IP,
    GUEST,
    GUEST2,
    GUEST2_MAC,
    GUEST_MAC,
    HOST,
    HOST_MAC,
    OUTSIDE,
    GuestTcp,
    StackNet,
    check_frame,
    kinds,
    l4_payload,
    only,
    udp,
)
from vmlan.engines.usernet import actions as A
from vmlan.engines.usernet.udp import EVICT_IDLE


def test_udp_to_host_address_reaches_host_loopback() -> None:
    net = StackNet()
    a = net.guest()
    net.send_ip(a, udp(HOST, 9999, b"hello"))
    assert net.frames() == []
    send = only(net.actions())
    assert send[0] == A.UDP_SEND
    _kind, fid, family, dst, data = send
    assert (family, dst, data) == (4, ("127.0.0.1", 9999), b"hello")
    net.stack.udp_received(fid, b"world", ("127.0.0.1", 9999), net.now)
    frame = only(net.frames())
    assert frame.dst == GUEST_MAC
    assert (frame[IP].src, frame[UDP].sport, frame[IP].dst, frame[UDP].dport) == (HOST, 9999, GUEST, 40001)
    assert l4_payload(frame) == b"world"


def test_udp_to_outside_keeps_the_address_and_mapping_is_endpoint_independent() -> None:
    net = StackNet()
    a = net.guest()
    net.send_ip(a, udp(OUTSIDE, 7, b"one"))
    first = only(net.actions())
    assert (first[3], first[4]) == ((OUTSIDE, 7), b"one")
    net.send_ip(a, udp("198.51.100.20", 3478, b"two"))  # same source port, another destination
    second = only(net.actions())
    assert second[1] == first[1] and second[3] == ("198.51.100.20", 3478)
    net.stack.udp_received(first[1], b"back", (OUTSIDE, 7), net.now)
    frame = only(net.frames())
    assert (frame[IP].src, frame[UDP].sport, frame[UDP].dport) == (OUTSIDE, 7, 40001)
    assert l4_payload(frame) == b"back"
    net.stack.udp_received(first[1], b"from anyone", ("203.0.113.9", 1234), net.now)  # endpoint-independent
    frame = only(net.frames())
    assert (frame[IP].src, frame[UDP].sport) == ("203.0.113.9", 1234)
    assert net.stack.counters.udp_flows == 1


def test_udp_padding_and_bad_checksum() -> None:
    net = StackNet()
    a = net.guest()
    net.send_ip(a, udp(OUTSIDE, 7, b"x"))  # 43 bytes, padded to 60 by the harness: the padding is not data
    assert only(net.actions())[4] == b"x"
    pkt = IP(bytes(udp(OUTSIDE, 7, b"corrupt", sport=40002)))
    pkt[UDP].chksum ^= 0x0F0F
    net.send_ip(a, pkt)
    assert net.actions() == []
    assert net.stack.counters.bad_l4 == 1  # was bad_ipv4 in the old stack: the transport is what is bad
    nocsum = IP(bytes(udp(OUTSIDE, 7, b"no checksum", sport=40003)))
    nocsum[UDP].chksum = 0  # RFC 768: none computed; accepted
    net.send_ip(a, nocsum)
    assert only(net.actions())[4] == b"no checksum"


@pytest.mark.parametrize("length", [0, 7, 200])
def test_udp_with_a_wrong_length_field_is_dropped(length: int) -> None:
    net = StackNet()
    a = net.guest()
    pkt = IP(bytes(udp(OUTSIDE, 7, b"twelve bytes")))
    pkt[UDP].len = length
    del pkt[UDP].chksum
    net.send_ip(a, IP(bytes(pkt)))
    assert net.actions() == []
    assert net.stack.counters.bad_l4 == 1


def test_udp_shorter_length_field_cuts_the_data() -> None:
    """The UDP length, not the IP length, says where the data ends (RFC 768)."""
    net = StackNet()
    a = net.guest()
    pkt = IP(bytes(udp(OUTSIDE, 7, b"twelve bytes")))
    pkt[UDP].len = 8 + 6
    pkt[UDP].chksum = 0
    net.send_ip(a, IP(bytes(pkt)))
    assert only(net.actions())[4] == b"twelve"


def test_udp_datagram_larger_than_the_mtu_reaches_the_guest_fragmented() -> None:
    net = StackNet()
    a = net.guest()
    net.send_ip(a, udp(OUTSIDE, 7, b"x"))
    fid = only(net.actions())[1]
    data = random.Random(3).randbytes(4000)
    net.stack.udp_received(fid, data, (OUTSIDE, 7), net.now)
    frames = net.raw_frames()
    assert len(frames) == 3 and all(len(f) <= 14 + net.cfg.mtu and off is None for f, off in frames)
    for f, _off in frames:
        check_frame(f)  # header checksums, source MAC
    whole = defragment([Ether(f)[IP] for f, _off in frames])
    assert len(whole) == 1 and bytes(whole[0][UDP].payload) == data
    check_frame(bytes(Ether(src=HOST_MAC, dst=GUEST_MAC) / whole[0]))  # the whole datagram's UDP checksum


@pytest.mark.parametrize(("dst", "dport", "timeout"), [(HOST, 9999, 240.0), (OUTSIDE, 53, 10.0)])
def test_udp_flow_expires_after_idle_timeout(dst: str, dport: int, timeout: float) -> None:
    net = StackNet()
    a = net.guest()
    net.send_ip(a, udp(dst, dport, b"a"))
    fid = only(net.actions())[1]
    net.advance(timeout * 0.6)
    net.send_ip(a, udp(dst, dport, b"b"))  # guest traffic refreshes the flow
    assert only(net.actions())[1] == fid
    net.advance(timeout * 0.6)
    net.stack.udp_received(fid, b"c", (dst if dst != HOST else "127.0.0.1", dport), net.now)  # so does host's
    assert len(net.frames()) == 1
    net.advance(timeout - 0.1)
    assert net.actions() == []
    net.advance(0.2)
    assert net.actions() == [(A.UDP_CLOSE, fid)]
    net.stack.udp_received(fid, b"late", ("127.0.0.1", dport), net.now)
    assert net.frames() == []
    net.send_ip(a, udp(dst, dport, b"new"))
    again = only(net.actions())
    assert again[0] == A.UDP_SEND and again[1] != fid


def test_udp_flow_cap_per_guest() -> None:
    net = StackNet("guest-udp=2")
    a = net.guest("a")
    b = net.guest("b", GUEST2_MAC, GUEST2)
    net.send_ip(a, udp(OUTSIDE, 9, b"1", sport=1001))
    net.send_ip(a, udp(OUTSIDE, 9, b"2", sport=1002))
    assert len(net.actions()) == 2
    net.send_ip(a, udp(OUTSIDE, 9, b"3", sport=1003))
    assert net.actions() == []
    assert net.stack.counters.udp_dropped_cap == 1
    net.send_ip(a, udp(OUTSIDE, 9, b"1 again", sport=1001))  # existing flows keep working
    assert only(net.actions())[4] == b"1 again"
    net.send_ip(b, udp(OUTSIDE, 9, b"other guest", sport=1003, src=GUEST2))  # per guest (per port)
    assert only(net.actions())[4] == b"other guest"
    net.advance(net.cfg.udp_timeout + 1)
    assert kinds(net.actions()) == ["UDP_CLOSE"] * 3
    net.send_ip(a, udp(OUTSIDE, 9, b"3 later", sport=1003))
    assert only(net.actions())[4] == b"3 later"


def test_at_the_cap_a_new_flow_takes_the_place_of_an_idle_one() -> None:
    """Not a lockout for udp_timeout: once a flow has been idle EVICT_IDLE seconds it makes room; busy
    flows are never evicted, so a flood of new source ports only drops."""
    net = StackNet("guest-udp=3")
    a = net.guest("a")
    fids = {}
    for sport in (1001, 1002, 1003):
        net.send_ip(a, udp(OUTSIDE, 9, b"x", sport=sport))
        fids[sport] = only(net.actions())[1]
    net.advance(EVICT_IDLE / 2)
    net.send_ip(a, udp(OUTSIDE, 9, b"busy", sport=1002))
    net.send_ip(a, udp(OUTSIDE, 9, b"new", sport=2000))
    assert kinds(net.actions()) == ["UDP_SEND"]  # 1002's datagram; 2000 dropped, nothing idle long enough
    assert net.stack.counters.udp_dropped_cap == 1
    net.advance(EVICT_IDLE / 2 + 0.1)  # 1001 and 1003 idle for EVICT_IDLE now, 1002 only half that
    net.send_ip(a, udp(OUTSIDE, 9, b"new", sport=2000))
    closed, sent = net.actions()
    assert closed == (A.UDP_CLOSE, fids[1001]) and sent[0] == A.UDP_SEND and sent[4] == b"new"
    net.send_ip(a, udp(OUTSIDE, 9, b"new", sport=2001))
    closed, sent = net.actions()
    assert closed == (A.UDP_CLOSE, fids[1003]) and sent[4] == b"new"
    net.send_ip(a, udp(OUTSIDE, 9, b"new", sport=2002))
    assert net.actions() == []  # 1002, 2000 and 2001 are all recent
    assert (net.stack.counters.udp_evicted, net.stack.counters.udp_dropped_cap) == (2, 2)
    net.send_ip(a, udp(OUTSIDE, 9, b"still", sport=1002))
    assert only(net.actions())[1] == fids[1002]


def test_max_flows_caps_all_guests_together() -> None:
    net = StackNet("max-flows=8")
    a = net.guest("a")
    b = net.guest("b", GUEST2_MAC, GUEST2)
    base = len(net.stack.flows)  # the stack-wide timers live in the table too
    for sport in range(1000, 1020):
        net.send_ip(a, udp(OUTSIDE, 9, b"x", sport=sport))
    assert len(net.actions()) == 8 - base
    net.send_ip(b, udp(OUTSIDE, 9, b"y", src=GUEST2))
    assert net.actions() == []
    assert net.stack.counters.udp_dropped_cap == 20 - (8 - base) + 1
    assert len(net.stack.flows) == 8


def test_udp_dropped_under_restrict() -> None:
    net = StackNet("restrict=on")
    a = net.guest()
    net.send_ip(a, udp(HOST, 9999, b"x"))
    net.send_ip(a, udp(OUTSIDE, 9999, b"x"))
    assert net.actions() == [] and net.frames() == []
    assert net.stack.counters.restricted == 2


def test_udp_host_loopback_off_drops_traffic_to_the_host_address() -> None:
    net = StackNet("host-loopback=off")
    a = net.guest()
    net.send_ip(a, udp(HOST, 9999, b"x"))
    assert net.actions() == [] and net.frames() == []
    net.send_ip(a, udp(OUTSIDE, 9999, b"y"))
    assert only(net.actions())[3] == (OUTSIDE, 9999)
    g = GuestTcp(net, a, HOST, 8080)
    g.syn()
    assert only(g.mine(net.frames())).flags == "RA"
    assert net.actions() == []


@pytest.mark.parametrize("dst", ["127.0.0.1", "224.0.0.251", "255.255.255.255", "10.0.2.255", GUEST2, DNS_IP,
                                 "0.0.0.0", "0.1.2.3"])
def test_udp_to_unroutable_destinations_is_dropped(dst: str) -> None:
    net = StackNet()
    a = net.guest()
    net.send_ip(a, udp(dst, 5353, b"x"))
    assert net.actions() == []
    assert net.stack.counters.no_route == 1


def test_udp_to_port_zero_is_dropped() -> None:
    net = StackNet()
    a = net.guest()
    net.send_ip(a, udp(OUTSIDE, 0, b"x"))
    assert net.actions() == [] and net.stack.counters.no_route == 1


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_this_network_address_does_not_reach_the_host_when_loopback_is_off(proto: str) -> None:
    net = StackNet("host-loopback=off")
    a = net.guest()
    if proto == "udp":
        net.send_ip(a, udp("0.0.0.0", 9999, b"x"))
    else:
        net.send_ip(a, IP(src=GUEST, dst="0.0.0.0") / TCP(sport=45000, dport=9999, flags="S", seq=1))
    assert net.actions() == []


def test_sources_outside_the_guest_network_are_dropped_before_any_flow() -> None:
    """Per-guest caps are per port, and a port may only use addresses of the guest network."""
    net = StackNet()
    a = net.guest()
    for i in range(50):
        net.send_ip(a, IP(src=f"198.51.100.{i}", dst=HOST) / UDP(sport=4000, dport=9999) / b"x")
    assert net.actions() == [] and net.stack.udp.flows_by_src == {}
    assert net.stack.counters.bad_source == 50
    net.send_ip(a, IP(src=GUEST, dst=HOST) / UDP(sport=4000, dport=9999) / b"x")
    assert kinds(net.actions()) == ["UDP_SEND"]


@pytest.mark.parametrize(("dst", "code", "far"), [(HOST, 3, ("127.0.0.1", 9999)), (OUTSIDE, 1, (OUTSIDE, 9999)),
                                                  (OUTSIDE, 13, (OUTSIDE, 9999))])
def test_a_host_sockets_icmp_error_reaches_the_guest_as_icmp(dst: str, code: int, far: tuple[str, int]) -> None:
    """The host socket's error queue (IP_RECVERR) said port/host unreachable: the guest gets ICMP type 3
    quoting its datagram, so its recv() fails at once (ECONNREFUSED) instead of timing out."""
    net = StackNet()
    a = net.guest()
    net.send_ip(a, udp(dst, 9999, b"anyone there?", sport=40123))
    fid = only(net.actions())[1]
    net.stack.udp_error(fid, far, code, net.now)
    err = only(net.frames())
    assert (err[IP].src, err[IP].dst, err.dst) == (dst, GUEST, GUEST_MAC)
    assert (err[ICMP].type, err[ICMP].code) == (3, code)
    quoted = err[IPerror]
    assert (quoted.src, quoted.dst, quoted.proto) == (GUEST, dst, 17)
    assert (quoted[UDPerror].sport, quoted[UDPerror].dport) == (40123, 9999)
    assert net.stack.counters.icmp_errors_sent == 1
    net.stack.udp_error(fid + 1000, far, code, net.now)  # an unknown flow: nothing
    assert net.frames() == [] and net.stack.faults.counts == {}


def test_a_port_without_a_service_at_a_virtual_host_is_refused_at_once() -> None:
    """UDP to the DNS address at a port other than 53: ICMP port unreachable quoting the datagram, no
    host socket; to a multicast or 0/8 address: silently dropped as before."""
    net = StackNet()
    a = net.guest("a")
    net.send_ip(a, udp(DNS_IP, 9999, b"anyone?", sport=4444), dst_mac="52:55:0a:00:02:03")
    net.send_ip(a, udp("0.1.2.3", 9999, b"x"))
    assert net.actions() == []
    err = only(net.frames())
    assert (err[IP].src, err[IP].dst, err[ICMP].type, err[ICMP].code) == (DNS_IP, GUEST, 3, 3)
    assert (err[IPerror].dst, err[UDPerror].sport, err[UDPerror].dport) == (DNS_IP, 4444, 9999)
    assert net.stack.counters.no_route == 2
