"""IPv6 on the user stack (QEMU's fec0::/64): router advertisements, neighbour discovery, stateless
DHCPv6, ICMPv6, and TCP/UDP NAT over IPv6, driven in memory with scapy frames as the guest."""

from __future__ import annotations

from typing import Any

from scapy.layers.dhcp6 import DUID_LL, DHCP6_InfoRequest, DHCP6_Reply, DHCP6OptClientId
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    in6_chksum,
)
from scapy.layers.l2 import Ether

from tests.engines.usernet.stacknet import Port, StackNet, kinds, only
from vmlan.engines.usernet import actions as A

MAC = "52:54:00:12:34:56"
MAC_B = "52:54:00:12:34:57"
ROUTER_MAC = "52:56:00:00:00:02"
LL = "fe80::5054:ff:fe12:3456"
G6 = "fec0::5054:ff:fe12:3456"
HOST6, DNS6 = "fec0::2", "fec0::3"
ALL_NODES_MAC = "33:33:00:00:00:01"


def frames6(net: StackNet) -> list[Ether]:
    """Every frame emitted, each IPv6 one checked: ICMPv6/UDP/TCP checksums recomputed by scapy."""
    out = []
    for raw, _off in net.stack.take_frames():
        pkt = Ether(raw)
        if IPv6 in pkt:
            ip = pkt[IPv6]
            assert ip.plen == len(raw) - 54
            payload = bytearray(raw[54:])
            field = {58: 2, 17: 6, 6: 16}[ip.nh]
            stored = int.from_bytes(payload[field : field + 2], "big")
            payload[field : field + 2] = b"\0\0"
            expect = in6_chksum(ip.nh, ip, bytes(payload))
            assert stored == (expect or 0xFFFF if ip.nh == 17 else expect), (ip.summary(), stored, expect)
        out.append(pkt)
    return out


def send6(net: StackNet, port: Port, pkt: Any, dst_mac: str = ROUTER_MAC, src_mac: str = MAC) -> None:
    net.send(port, Ether(src=src_mac, dst=dst_mac) / pkt)


def test_a_router_solicitation_gets_the_prefix_mtu_and_resolver() -> None:
    net = StackNet()
    a = Port("a")
    send6(net, a, IPv6(src=LL, dst="ff02::2", hlim=255) / ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=MAC),
          dst_mac="33:33:00:00:00:02")
    ra = only(frames6(net))
    assert (ra.src, ra.dst) == (ROUTER_MAC, ALL_NODES_MAC)
    assert (ra[IPv6].src, ra[IPv6].dst, ra[IPv6].hlim) == ("fe80::2", "ff02::1", 255)
    adv = ra[ICMPv6ND_RA]
    assert adv.O == 1 and adv.M == 0 and adv.routerlifetime == 1800
    prefix = ra[ICMPv6NDOptPrefixInfo]
    assert (prefix.prefix, prefix.prefixlen, prefix.L, prefix.A) == ("fec0::", 64, 1, 1)
    assert ra[ICMPv6NDOptMTU].mtu == 1500
    assert ra[ICMPv6NDOptRDNSS].dns == [DNS6]
    assert ra[ICMPv6NDOptSrcLLAddr].lladdr == ROUTER_MAC


def test_neighbour_solicitations_for_the_virtual_hosts_are_answered() -> None:
    net = StackNet()
    a = Port("a")
    send6(net, a, IPv6(src=LL, dst="ff02::1:ff00:2", hlim=255) / ICMPv6ND_NS(tgt=HOST6)
          / ICMPv6NDOptSrcLLAddr(lladdr=MAC), dst_mac="33:33:ff:00:00:02")
    na = only(frames6(net))
    assert (na.dst, na[IPv6].src, na[IPv6].dst) == (MAC, HOST6, LL)
    assert (na[ICMPv6ND_NA].tgt, na[ICMPv6ND_NA].R, na[ICMPv6ND_NA].S) == (HOST6, 1, 1)
    # duplicate address detection from :: for the resolver's address: defended to all nodes
    send6(net, a, IPv6(src="::", dst="ff02::1:ff00:3", hlim=255) / ICMPv6ND_NS(tgt=DNS6),
          dst_mac="33:33:ff:00:00:03")
    na = only(frames6(net))
    assert (na.dst, na[IPv6].dst, na[ICMPv6ND_NA].S) == (ALL_NODES_MAC, "ff02::1", 0)
    # a solicitation that did not come from the link (hop limit not 255) is ignored
    send6(net, a, IPv6(src=LL, dst="ff02::1:ff00:2", hlim=64) / ICMPv6ND_NS(tgt=HOST6))
    assert frames6(net) == []


def test_ping6_to_the_router_is_answered_and_beyond_goes_through_a_host_socket() -> None:
    net = StackNet()
    a = Port("a")
    send6(net, a, IPv6(src=G6, dst=HOST6) / ICMPv6EchoRequest(id=7, seq=1, data=b"ping6"))
    reply = only(frames6(net))
    assert reply[ICMPv6EchoReply].data == b"ping6" and reply[IPv6].dst == G6 and reply.dst == MAC
    send6(net, a, IPv6(src=G6, dst="2001:db8::1") / ICMPv6EchoRequest(id=8, seq=2, data=b"out"))
    ping = only(net.actions())
    assert ping[0] == A.PING_SEND and ping[2:6] == (6, "2001:db8::1", 8, 2)
    net.stack.ping_reply(ping[1], 2, b"out", net.now)
    back = only(frames6(net))
    assert (back[IPv6].src, back[ICMPv6EchoReply].seq) == ("2001:db8::1", 2)


def test_one_guests_ipv6_address_cannot_be_used_by_another() -> None:
    net = StackNet()
    a, b = Port("a"), Port("b")
    send6(net, a, IPv6(src=G6, dst=HOST6) / ICMPv6EchoRequest(id=1))
    frames6(net)
    send6(net, b, IPv6(src=G6, dst=HOST6) / ICMPv6EchoRequest(id=1), src_mac=MAC_B)
    assert frames6(net) == []
    assert net.stack.guests.counters.source_spoofed == 1
    owner = net.stack.guests.lookup(_pton(G6))
    assert owner is not None and owner[0].port is a


def _pton(text: str) -> bytes:
    import socket

    return socket.inet_pton(socket.AF_INET6, text)


def test_stateless_dhcpv6_gives_the_resolver_and_search_list() -> None:
    net = StackNet("dnssearch=lab.example")
    a = Port("a")
    request = (IPv6(src=LL, dst="ff02::1:2") / UDP(sport=546, dport=547) / DHCP6_InfoRequest(trid=0x123)
               / DHCP6OptClientId(duid=DUID_LL(lladdr=MAC)))
    send6(net, a, request, dst_mac="33:33:00:01:00:02")
    reply = only(frames6(net))
    assert (reply[IPv6].src, reply[IPv6].dst, reply[UDP].sport, reply[UDP].dport) == ("fe80::2", LL, 547, 546)
    msg = reply[DHCP6_Reply]
    assert msg.trid == 0x123
    raw = bytes(msg)
    assert _pton(DNS6) in raw and b"\x03lab\x07example\x00" in raw and bytes(DUID_LL(lladdr=MAC)) in raw


def test_tcp_to_the_ipv6_host_address_reaches_the_hosts_loopback() -> None:
    net = StackNet()
    a = Port("a")
    send6(net, a, IPv6(src=G6, dst=HOST6) / TCP(sport=40000, dport=8080, flags="S", seq=100,
                                                 options=[("MSS", 1440)]))
    connect = only(net.actions())
    assert connect[0] == A.TCP_CONNECT and connect[2:] == (6, ("::1", 8080))
    net.stack.tcp_connected(connect[1], net.now)
    synack = only(frames6(net))
    assert synack[TCP].flags == "SA" and synack[IPv6].src == HOST6 and synack[TCP].ack == 101
    mss = dict((k, v) for k, v in synack[TCP].options if isinstance(k, str))["MSS"]
    assert mss == 1500 - 60
    send6(net, a, IPv6(src=G6, dst=HOST6) / TCP(sport=40000, dport=8080, flags="PA", seq=101,
                                                 ack=synack[TCP].seq + 1) / b"hello over v6")
    write = [x for x in net.actions() if x[0] == A.TCP_WRITE]
    assert bytes(only(write)[2]) == b"hello over v6"


def test_udp_nat_over_ipv6_and_a_port_unreachable_back() -> None:
    net = StackNet()
    a = Port("a")
    send6(net, a, IPv6(src=G6, dst="2001:db8::53") / UDP(sport=5000, dport=9999) / b"q")
    send = only(net.actions())
    assert send[0] == A.UDP_SEND and send[2:] == (6, ("2001:db8::53", 9999), b"q")
    net.stack.udp_received(send[1], b"answer", ("2001:db8::53", 9999), net.now)
    got = only(frames6(net))
    assert (got[IPv6].src, bytes(got[UDP].payload)) == ("2001:db8::53", b"answer")
    net.stack.udp_error(send[1], ("2001:db8::53", 9999), 4, net.now)
    err = only(frames6(net))
    assert (err[ICMPv6DestUnreach].type, err[ICMPv6DestUnreach].code) == (1, 4)


def test_dns_over_ipv6_at_the_resolver_address() -> None:
    net = StackNet()
    a = Port("a")
    send6(net, a, IPv6(src=G6, dst=DNS6) / UDP(sport=3333, dport=53) / DNS(id=9, qd=DNSQR(qname="example.org",
                                                                                          qtype="AAAA")),
          dst_mac="52:56:00:00:00:03")
    up = [x for x in net.actions() if x[0] == A.DNS_SEND]
    upstream, payload = only(up)[1], only(up)[2]
    answer = bytearray(bytes(DNS(id=0, qr=1, qd=DNSQR(qname="example.org", qtype="AAAA"))))
    answer[0:2] = payload[0:2]
    net.stack.dns_answer(bytes(answer), upstream, False, net.now)
    reply = only(frames6(net))
    assert (reply[IPv6].src, reply[UDP].sport, reply[DNS].id) == (DNS6, 53, 9)


def test_restrict_keeps_ipv6_guests_in_too() -> None:
    net = StackNet("restrict=on")
    a = Port("a")
    send6(net, a, IPv6(src=G6, dst="2001:db8::53") / UDP(sport=5000, dport=9999) / b"q")
    send6(net, a, IPv6(src=G6, dst="2001:db8::1") / ICMPv6EchoRequest())
    assert net.actions() == [] and net.stack.counters.restricted == 2


def test_ipv6_off_ignores_ipv6_and_ipv4_off_ignores_ipv4() -> None:
    net = StackNet("ipv6=off")
    send6(net, Port("a"), IPv6(src=G6, dst=HOST6) / ICMPv6EchoRequest())
    assert frames6(net) == []
    net = StackNet("ipv6=on")  # QEMU: ipv6=on alone turns IPv4 off
    a = Port("a")
    send6(net, a, IPv6(src=G6, dst=HOST6) / ICMPv6EchoRequest())
    assert len(frames6(net)) == 1
    assert not net.stack.cfg.ipv4 and kinds(net.actions()) == []
