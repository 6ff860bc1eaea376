"""The user-mode stack (QEMU's ``-netdev user``) as a sans-IO engine, driven in memory.

Guests are played by scapy-built frames (padded to Ethernet's 60-byte minimum, as a real NIC pads
them); the host by direct calls to the engine's ``udp_*``/``tcp_*``/``dns_*``/``ping_*`` methods; time
by a fake clock that only moves through ``get_timer()``/``handle_timer()``. Every frame the stack
emits is cross-checked with scapy (:func:`check_frame`): IPv4 header checksum and the UDP/TCP/ICMP
checksum recomputed by scapy must equal the emitted ones, and the Ethernet source must be the virtual
host the packet comes from (52:55:0a:00:02:03 for the resolver, 52:55:0a:00:02:02 for everything else).
"""

from __future__ import annotations

import dataclasses
import random
import types
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP, defragment, in4_chksum
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw
from scapy.utils import checksum

import vmlan.engines.dns as dns_engine
from vmlan.config.qemuopts import parse_qemuopts
from vmlan.config.usernet import parse_user_netdev
from vmlan.engines.usernet import (
    DnsSend,
    PingClose,
    PingSend,
    StackConfig,
    TcpClose,
    TcpConnect,
    TcpRelay,
    TcpResume,
    TcpShutdown,
    TcpWrite,
    UdpClose,
    UdpFwdReply,
    UdpSend,
    UserStack,
)
from vmlan.io.usernet import stack_config

HOST = "10.0.2.2"
DNS_IP = "10.0.2.3"
GUEST = "10.0.2.15"
GUEST2 = "10.0.2.16"
HOST_MAC = "52:55:0a:00:02:02"
DNS_MAC = "52:55:0a:00:02:03"
GUEST_MAC = "52:54:00:12:34:56"
GUEST2_MAC = "52:54:00:12:34:57"
BCAST_MAC = "ff:ff:ff:ff:ff:ff"
UPSTREAM = ("127.0.0.1", 5353)
OUTSIDE = "192.0.2.1"  # TEST-NET-1: never contacted, the engine only asks the I/O layer to
UDHCPC_PRL = [1, 3, 6, 12, 15, 26, 28, 42]

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def ip_bytes(addr: str) -> bytes:
    return bytes(int(x) for x in addr.split("."))


def build_config(options: str = "", **changes: Any) -> StackConfig:
    text = "user,id=u0,dns-server=127.0.0.1:5353" + ("," + options if options else "")
    cfg = stack_config(parse_user_netdev(parse_qemuopts(text)), resolv_conf="/nonexistent")
    return dataclasses.replace(cfg, **changes) if changes else cfg


# -- checking what the stack emits ---------------------------------------------------------------------


def check_frame(raw: bytes) -> Ether:
    """Decode one emitted frame with scapy and verify it; returns the scapy packet."""
    assert len(raw) >= 14, raw.hex()
    pkt = Ether(raw)
    if pkt.type == ETH_P_ARP:
        arp = pkt[ARP]
        assert (arp.hwtype, arp.ptype, arp.hwlen, arp.plen) == (1, ETH_P_IP, 6, 4)
        assert arp.op in (1, 2)
        expect = DNS_MAC if arp.psrc == DNS_IP else HOST_MAC
        if arp.op == 1:  # the stack asks only as the gateway, to everybody
            assert (pkt.src, pkt.dst, arp.hwsrc, arp.psrc) == (HOST_MAC, BCAST_MAC, HOST_MAC, HOST)
        else:
            assert pkt.src == expect and arp.hwsrc == pkt.src
            assert pkt.dst == arp.hwdst
        return pkt
    assert pkt.type == ETH_P_IP, f"unexpected ethertype {pkt.type:#06x}"
    ip = pkt[IP]
    assert ip.version == 4 and ip.ihl >= 5
    assert ip.frag == 0 and not ip.flags.MF
    assert ip.ttl > 0
    assert len(raw) >= 14 + ip.len
    datagram = raw[14 : 14 + ip.len]
    hlen = ip.ihl * 4
    header = bytearray(datagram[:hlen])
    header[10:12] = b"\0\0"
    assert checksum(bytes(header)) == ip.chksum, "IPv4 header checksum"
    assert pkt.src == (DNS_MAC if ip.src == DNS_IP else HOST_MAC), f"source MAC {pkt.src} for {ip.src}"
    l4 = bytearray(datagram[hlen:])
    offset = {1: 2, 6: 16, 17: 6}.get(ip.proto)
    assert offset is not None, f"unexpected protocol {ip.proto}"
    assert len(l4) >= offset + 2
    stored = int.from_bytes(l4[offset : offset + 2], "big")
    l4[offset : offset + 2] = b"\0\0"
    if ip.proto == 1:
        expect_sum = checksum(bytes(l4))
    else:
        expect_sum = in4_chksum(ip.proto, IP(src=ip.src, dst=ip.dst), bytes(l4))
        if ip.proto == 17:
            assert int.from_bytes(l4[4:6], "big") == len(l4), "UDP length"
            expect_sum = expect_sum or 0xFFFF  # RFC 768: a computed 0 is sent as all ones
    assert stored == expect_sum, f"{ip.proto=} checksum {stored:#06x}, scapy says {expect_sum:#06x}"
    return pkt


def l4_payload(pkt: Packet) -> bytes:
    """The bytes after the UDP/TCP/ICMP header, whatever scapy decoded them as."""
    layer = pkt[UDP] if UDP in pkt else pkt[TCP] if TCP in pkt else pkt[ICMP]
    return bytes(layer.payload)


# -- the harness ---------------------------------------------------------------------------------------


class Net:
    """One stack, a fake clock, and helpers to play the guests."""

    def __init__(self, options: str = "", *, cfg: StackConfig | None = None, **changes: Any) -> None:
        self.cfg = cfg if cfg is not None else build_config(options, **changes)
        self.stack = UserStack(self.cfg)
        self.now = 0.0

    def send_raw(self, frame: bytes | Packet) -> None:
        data = bytes(frame)
        self.stack.receive_frame(data.ljust(60, b"\0"), self.now)

    def send(self, pkt: Packet, *, src_mac: str = GUEST_MAC, dst_mac: str = HOST_MAC) -> None:
        self.send_raw(Ether(src=src_mac, dst=dst_mac) / pkt)

    def frames(self) -> list[Ether]:
        return [check_frame(raw) for raw in self.stack.frames_to_send()]

    def actions(self) -> list[Any]:
        out = []
        while (action := self.stack.next_action()) is not None:
            out.append(action)
        return out

    def advance(self, seconds: float) -> None:
        """Move the clock forward, firing every timer due on the way at its own deadline."""
        until = self.now + seconds
        for _ in range(100_000):
            deadline = self.stack.get_timer()
            if deadline is None or deadline > until:
                break
            self.now = max(self.now, deadline)
            self.stack.handle_timer(self.now)
        else:
            raise AssertionError("the timers never settle")
        self.now = until

    def learn(self, ip: str = GUEST, mac: str = GUEST_MAC) -> None:
        """Let the stack learn a guest's MAC the way it would: the guest ARPs for the gateway."""
        self.send_raw(arp_request(HOST, psrc=ip, hwsrc=mac))
        assert len(self.frames()) == 1


def arp_request(pdst: str, *, psrc: str = GUEST, hwsrc: str = GUEST_MAC) -> Packet:
    return Ether(src=hwsrc, dst=BCAST_MAC) / ARP(op=1, hwsrc=hwsrc, psrc=psrc, hwdst="00:00:00:00:00:00", pdst=pdst)


def only(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


# -- 1. ARP --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("unicast", [False, True], ids=["broadcast", "unicast"])
@pytest.mark.parametrize(("target", "mac"), [(HOST, HOST_MAC), (DNS_IP, DNS_MAC)])
def test_arp_who_has_virtual_host_is_answered(target: str, mac: str, unicast: bool) -> None:
    assert mac_bytes(mac) == b"\x52\x55" + ip_bytes(target)  # libslirp's 52:55:<IPv4>
    net = Net()
    request = arp_request(target)
    if unicast:  # Linux re-checks a stale neighbour with a unicast request
        request.dst = mac
    net.send_raw(request)
    reply = only(net.frames())
    assert reply.dst == GUEST_MAC and reply.src == mac
    arp = reply[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == (2, mac, target, GUEST_MAC, GUEST)
    assert net.actions() == []
    assert net.stack.counters.arp_replies == 1


@pytest.mark.parametrize("target", [GUEST2, GUEST, "10.0.2.1", "10.0.2.4", OUTSIDE])
def test_arp_for_other_addresses_is_not_answered(target: str) -> None:
    net = Net()
    net.send_raw(arp_request(target))
    assert net.frames() == []
    assert net.stack.counters.arp_replies == 0


def test_arp_teaches_guest_macs() -> None:
    net = Net("hostfwd=udp::5555-:55")
    net.send_raw(arp_request(GUEST2, psrc=GUEST, hwsrc=GUEST_MAC))  # not answered, but learned
    # the answer between the guests is unicast: a hub floods it to the stack too, which ignores it
    net.send_raw(Ether(src=GUEST2_MAC, dst=GUEST_MAC) / ARP(op=2, hwsrc=GUEST2_MAC, psrc=GUEST2,
                                                               hwdst=GUEST_MAC, pdst=GUEST))
    assert ip_bytes(GUEST2) not in net.stack.guest_macs
    net.send_raw(arp_request("10.0.2.77", psrc=GUEST2, hwsrc=GUEST2_MAC))  # a broadcast one is learned
    assert net.frames() == []
    assert net.stack.guest_macs[ip_bytes(GUEST)] == mac_bytes(GUEST_MAC)
    assert net.stack.guest_macs[ip_bytes(GUEST2)] == mac_bytes(GUEST2_MAC)
    # and it is used: a datagram for the guest goes straight to its MAC, no ARP request first
    net.stack.hostfwd_udp(net.cfg.hostfwd[0], ("127.0.0.1", 41000), b"x", net.now)
    frame = only(net.frames())
    assert frame.type == ETH_P_IP and frame.dst == GUEST_MAC


def test_arp_does_not_learn_the_virtual_hosts_or_outside_addresses() -> None:
    net = Net()
    for spa in (HOST, DNS_IP, OUTSIDE, "0.0.0.0"):
        net.send_raw(arp_request(DNS_IP, psrc=spa, hwsrc=GUEST2_MAC))
    assert net.stack.guest_macs == {}


# -- 2. DHCP -------------------------------------------------------------------------------------------


def dhcp_frame(mtype: str, mac: str, *, xid: int = 0x1234, requested: str | None = None,
               server_id: str | None = None) -> Packet:
    """A client message laid out like busybox udhcpc's: 53, [50], [54], 57, 55, END."""
    opts: list[Any] = [("message-type", mtype)]
    if requested is not None:
        opts.append(("requested_addr", requested))
    if server_id is not None:
        opts.append(("server_id", server_id))
    opts += [("max_dhcp_size", 576), ("param_req_list", UDHCPC_PRL), "end"]
    return (
        Ether(src=mac, dst=BCAST_MAC)
        / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67)
        / BOOTP(chaddr=mac_bytes(mac), xid=xid)
        / DHCP(options=opts)
    )


def dhcp_options(pkt: Packet) -> dict[str, Any]:
    return {opt[0]: opt[1:] for opt in pkt[DHCP].options if isinstance(opt, tuple)}


def dhcp_reply(net: Net, mac: str, kind: int, xid: int) -> tuple[Packet, dict[str, Any]]:
    frame = only(net.frames())
    assert frame.dst in (mac, BCAST_MAC)
    assert (frame[IP].src, frame[UDP].sport, frame[UDP].dport) == (HOST, 67, 68)
    bootp = frame[BOOTP]
    assert bootp.op == 2 and bootp.xid == xid and bootp.chaddr[:6] == mac_bytes(mac)
    opts = dhcp_options(frame)
    assert opts["message-type"] == (kind,)
    assert opts["server_id"] == (HOST,)
    return frame, opts


def dora(net: Net, mac: str, xid: int) -> tuple[str, dict[str, Any]]:
    net.send_raw(dhcp_frame("discover", mac, xid=xid))
    offer, _ = dhcp_reply(net, mac, 2, xid)
    addr = offer[BOOTP].yiaddr
    net.send_raw(dhcp_frame("request", mac, xid=xid, requested=addr, server_id=HOST))
    ack, ack_opts = dhcp_reply(net, mac, 5, xid)
    assert ack[BOOTP].yiaddr == addr
    assert net.actions() == []
    return addr, ack_opts


def test_dhcp_discover_offer_request_ack() -> None:
    net = Net()
    addr, opts = dora(net, GUEST_MAC, 0x1234)
    assert addr == GUEST
    assert opts["subnet_mask"] == ("255.255.255.0",)
    assert opts["router"] == (HOST,)
    assert opts["name_server"] == (DNS_IP,)
    assert [(lease.mac, lease.ip) for lease in net.stack.leases()] == [(mac_bytes(GUEST_MAC), ip_bytes(GUEST))]


def test_dhcp_renewal_unicast_to_the_server() -> None:
    net = Net()
    assert dora(net, GUEST_MAC, 1)[0] == GUEST
    renew = (
        Ether(src=GUEST_MAC, dst=HOST_MAC)
        / IP(src=GUEST, dst=HOST)
        / UDP(sport=68, dport=67)
        / BOOTP(chaddr=mac_bytes(GUEST_MAC), xid=9, ciaddr=GUEST)
        / DHCP(options=[("message-type", "request"), ("param_req_list", UDHCPC_PRL), "end"])
    )
    net.send_raw(renew)
    ack, _ = dhcp_reply(net, GUEST_MAC, 5, 9)
    assert ack[BOOTP].yiaddr == GUEST and ack[IP].dst in (GUEST, "255.255.255.255")


def test_dhcp_second_guest_gets_the_next_address() -> None:
    net = Net()
    assert dora(net, GUEST_MAC, 1)[0] == GUEST
    assert dora(net, GUEST2_MAC, 2)[0] == GUEST2
    assert dora(net, GUEST_MAC, 3)[0] == GUEST  # the first keeps its lease


def test_dhcp_restrict_omits_router_and_dns() -> None:
    net = Net("restrict=on")
    addr, opts = dora(net, GUEST_MAC, 7)
    assert addr == GUEST
    assert "router" not in opts and "name_server" not in opts  # options 3 and 6
    assert opts["subnet_mask"] == ("255.255.255.0",)


# -- 3. ICMP echo --------------------------------------------------------------------------------------


def echo(dst: str, *, ident: int = 0x4D2, seq: int = 7, data: bytes = b"vmlan-ping-0123456789") -> Packet:
    return IP(src=GUEST, dst=dst) / ICMP(type=8, code=0, id=ident, seq=seq) / Raw(data)


@pytest.mark.parametrize("restrict", ["off", "on"])
@pytest.mark.parametrize(("target", "mac"), [(HOST, HOST_MAC), (DNS_IP, DNS_MAC)])
def test_ping_virtual_hosts_answered_locally(target: str, mac: str, restrict: str) -> None:
    net = Net(f"restrict={restrict}")
    net.send(echo(target, ident=0x4D2, seq=7, data=b"abcdefgh" * 7), dst_mac=mac)
    reply = only(net.frames())
    assert reply.src == mac and reply.dst == GUEST_MAC
    assert (reply[IP].src, reply[IP].dst) == (target, GUEST)
    icmp = reply[ICMP]
    assert (icmp.type, icmp.code, icmp.id, icmp.seq) == (0, 0, 0x4D2, 7)
    assert l4_payload(reply) == b"abcdefgh" * 7
    assert net.actions() == []


def test_ping_outside_goes_through_the_host() -> None:
    net = Net()
    net.send(echo(OUTSIDE, ident=0x99, seq=1, data=b"payload!"))
    assert net.frames() == []
    send = only(net.actions())
    assert isinstance(send, PingSend)
    assert (send.flow.dst, send.flow.ident, send.seq, send.data) == (OUTSIDE, 0x99, 1, b"payload!")
    net.now += 0.01
    net.stack.ping_reply(send.flow, 1, b"payload!", net.now)
    reply = only(net.frames())
    assert (reply[IP].src, reply[IP].dst, reply.dst) == (OUTSIDE, GUEST, GUEST_MAC)
    assert (reply[ICMP].type, reply[ICMP].code, reply[ICMP].id, reply[ICMP].seq) == (0, 0, 0x99, 1)
    assert l4_payload(reply) == b"payload!"
    # the same echo id reuses the flow; idle for icmp_timeout, it is closed and later replies dropped
    net.send(echo(OUTSIDE, ident=0x99, seq=2, data=b"again"))
    assert only(net.actions()).flow is send.flow
    net.advance(net.cfg.icmp_timeout - 1)
    assert net.actions() == []
    net.advance(2)
    assert [type(a) for a in net.actions()] == [PingClose]
    net.stack.ping_reply(send.flow, 2, b"again", net.now)
    assert net.frames() == []


def test_ping_outside_dropped_under_restrict() -> None:
    net = Net("restrict=on")
    net.send(echo(OUTSIDE))
    assert net.frames() == [] and net.actions() == []
    assert net.stack.counters.dropped_restrict == 1



def test_ping_every_flow_is_closed_when_the_id_moves_to_another_destination() -> None:
    net = Net()
    opened, closed = [], []
    for dst in (OUTSIDE, "192.0.2.2", "192.0.2.3"):
        net.send(echo(dst, ident=0x77))
        actions = net.actions()
        opened.append(only([a for a in actions if isinstance(a, PingSend)]).flow)
        closed += [a.flow for a in actions if isinstance(a, PingClose)]  # the old flow, at once
    assert len({id(flow) for flow in opened}) == 3
    net.advance(net.cfg.icmp_timeout + 1)
    closed += [a.flow for a in net.actions() if isinstance(a, PingClose)]
    assert sorted(map(id, closed)) == sorted(map(id, opened))


def test_ping_with_bad_checksum_is_dropped() -> None:
    net = Net()
    pkt = IP(bytes(echo(HOST)))
    pkt[ICMP].chksum ^= 0x5555
    net.send(pkt)
    assert net.frames() == [] and net.actions() == []


# -- 4. DNS --------------------------------------------------------------------------------------------


def dns_query(qid: int, name: str = "example.com", qtype: str = "A", sport: int = 33333) -> Packet:
    return IP(src=GUEST, dst=DNS_IP) / UDP(sport=sport, dport=53) / DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype=qtype))


def dns_answer(qid: int, name: str = "example.com", addr: str = "192.0.2.80") -> bytes:
    return bytes(DNS(id=qid, qr=1, rd=1, ra=1, qd=DNSQR(qname=name, qtype="A"),
                     an=DNSRR(rrname=name, type="A", ttl=300, rdata=addr)))


def dns_to_guest(net: Net, sport: int = 33333) -> Packet:
    frame = only(net.frames())
    assert frame.src == DNS_MAC and frame.dst == GUEST_MAC
    assert (frame[IP].src, frame[UDP].sport, frame[IP].dst, frame[UDP].dport) == (DNS_IP, 53, GUEST, sport)
    return frame


@pytest.fixture
def fixed_dns_ids(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the forwarder's upstream IDs predictable (0x5151, 0x5152, ...)."""
    ids: list[int] = []

    def randbits(_bits: int) -> int:
        ids.append(0x5151 + len(ids))
        return ids[-1]

    monkeypatch.setattr(dns_engine, "secrets", types.SimpleNamespace(randbits=randbits))
    return ids


def test_dns_query_forwarded_with_new_id_and_answer_restored(fixed_dns_ids: list[int]) -> None:
    net = Net()
    query = dns_query(0xABCD)
    net.send(query, dst_mac=DNS_MAC)
    assert net.frames() == []
    send = only(net.actions())
    assert isinstance(send, DnsSend)
    assert send.upstream == UPSTREAM
    assert int.from_bytes(send.data[:2], "big") == fixed_dns_ids[0] != 0xABCD
    assert send.data[2:] == bytes(query[DNS])[2:]
    # the answer under the guest's ID matches nothing pending: dropped
    net.stack.dns_response(UPSTREAM, dns_answer(0xABCD), net.now)
    assert net.frames() == []
    net.stack.dns_response(("127.0.0.1", 53), dns_answer(fixed_dns_ids[0]), net.now)  # wrong server
    assert net.frames() == []
    answer = dns_answer(fixed_dns_ids[0])
    net.stack.dns_response(UPSTREAM, answer, net.now)
    frame = dns_to_guest(net)
    assert frame[DNS].id == 0xABCD
    assert l4_payload(frame)[2:] == answer[2:]
    assert frame[DNS].an[0].rdata == "192.0.2.80"
    net.stack.dns_response(UPSTREAM, answer, net.now)  # a duplicate answer: nothing pending any more
    assert net.frames() == [] and net.actions() == []


@pytest.mark.parametrize("guest_retransmits", [False, True])
def test_dns_servfail_after_retries(guest_retransmits: bool) -> None:
    net = Net()
    dns_cfg = net.cfg.dns_config
    assert dns_cfg is not None
    tries = dns_cfg.attempts * len(dns_cfg.upstreams)
    give_up = dns_cfg.timeout * tries
    query = dns_query(0x0BAD, name="slow.example")
    net.send(query, dst_mac=DNS_MAC)
    sends = net.actions()
    while net.now < give_up - 0.5:
        net.advance(0.5)
        if guest_retransmits:
            net.send(query, dst_mac=DNS_MAC)  # the guest's own resolver retries meanwhile
        sends += net.actions()
        assert net.frames() == [], f"answered too early, at {net.now}"
    assert len(sends) == tries and all(isinstance(s, DnsSend) and s.upstream == UPSTREAM for s in sends)
    assert all(s.data[2:] == bytes(query[DNS])[2:] for s in sends)
    net.advance(1.0)
    frame = dns_to_guest(net)
    reply = frame[DNS]
    assert (reply.id, reply.qr, reply.rcode, reply.ancount) == (0x0BAD, 1, 2, 0)  # SERVFAIL
    assert reply.qd[0].qname == b"slow.example."
    assert net.actions() == []
    net.advance(30)
    assert net.frames() == [] and net.actions() == []  # exactly one SERVFAIL, no late retries
    assert net.stack.get_timer() is None


def test_dns_static_answered_without_upstream() -> None:
    net = Net("dns-static=foo.test:192.0.2.9,dns-static=foo.test:192.0.2.10")
    net.send(dns_query(0x1111, name="FOO.test"), dst_mac=DNS_MAC)
    assert net.actions() == []
    reply = dns_to_guest(net)[DNS]
    assert (reply.id, reply.qr, reply.rcode, reply.ancount) == (0x1111, 1, 0, 2)
    assert sorted(rr.rdata for rr in reply.an) == ["192.0.2.10", "192.0.2.9"]
    # the host's own name
    net.send(dns_query(0x2222, name="host.vmlan.internal"), dst_mac=DNS_MAC)
    assert net.actions() == []
    assert dns_to_guest(net)[DNS].an[0].rdata == HOST


def test_dns_query_dropped_under_restrict() -> None:
    net = Net("restrict=on")
    net.send(dns_query(0x3333), dst_mac=DNS_MAC)
    assert net.frames() == [] and net.actions() == []


# -- 5. UDP NAT ----------------------------------------------------------------------------------------


def udp(dst: str, dport: int, data: bytes, *, sport: int = 40001, src: str = GUEST) -> Packet:
    return IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(data)


def test_udp_to_host_address_reaches_host_loopback() -> None:
    net = Net()
    net.send(udp(HOST, 9999, b"hello"))
    assert net.frames() == []
    send = only(net.actions())
    assert isinstance(send, UdpSend)
    assert (send.dst, send.data) == (("127.0.0.1", 9999), b"hello")
    net.stack.udp_received(send.flow, b"world", ("127.0.0.1", 9999), net.now)
    frame = only(net.frames())
    assert frame.dst == GUEST_MAC
    assert (frame[IP].src, frame[UDP].sport, frame[IP].dst, frame[UDP].dport) == (HOST, 9999, GUEST, 40001)
    assert l4_payload(frame) == b"world"


def test_udp_to_outside_keeps_the_address_and_mapping_is_endpoint_independent() -> None:
    net = Net()
    net.send(udp(OUTSIDE, 7, b"one"))
    first = only(net.actions())
    assert (first.dst, first.data) == ((OUTSIDE, 7), b"one")
    net.send(udp("198.51.100.20", 3478, b"two"))  # same source port, another destination
    second = only(net.actions())
    assert second.flow is first.flow and second.dst == ("198.51.100.20", 3478)
    net.stack.udp_received(first.flow, b"back", (OUTSIDE, 7), net.now)
    frame = only(net.frames())
    assert (frame[IP].src, frame[UDP].sport, frame[UDP].dport) == (OUTSIDE, 7, 40001)
    assert l4_payload(frame) == b"back"
    assert net.stack.counters.udp_flows == 1


def test_udp_padding_and_bad_checksum() -> None:
    net = Net()
    net.send(udp(OUTSIDE, 7, b"x"))  # 43 bytes, padded to 60 by the harness: the padding is not data
    assert only(net.actions()).data == b"x"
    pkt = IP(bytes(udp(OUTSIDE, 7, b"corrupt", sport=40002)))
    pkt[UDP].chksum ^= 0x0F0F
    net.send(pkt)
    assert net.actions() == []
    assert net.stack.counters.bad_ipv4 == 1
    nocsum = IP(bytes(udp(OUTSIDE, 7, b"no checksum", sport=40003)))
    nocsum[UDP].chksum = 0  # RFC 768: none computed; accepted
    net.send(nocsum)
    assert only(net.actions()).data == b"no checksum"



def test_udp_datagram_larger_than_the_mtu_reaches_the_guest_fragmented() -> None:
    net = Net()
    net.send(udp(OUTSIDE, 7, b"x"))
    flow = only(net.actions()).flow
    data = random.Random(3).randbytes(4000)
    net.stack.udp_received(flow, data, (OUTSIDE, 7), net.now)
    frames = net.stack.frames_to_send()
    assert frames and all(len(f) <= 14 + net.cfg.mtu for f in frames), [len(f) for f in frames]
    whole = defragment([Ether(f)[IP] for f in frames])
    assert len(whole) == 1 and bytes(whole[0][UDP].payload) == data


@pytest.mark.parametrize(("dst", "dport", "timeout"), [(HOST, 9999, 240.0), (OUTSIDE, 53, 10.0)])
def test_udp_flow_expires_after_idle_timeout(dst: str, dport: int, timeout: float) -> None:
    net = Net()
    net.send(udp(dst, dport, b"a"))
    flow = only(net.actions()).flow
    net.advance(timeout * 0.6)
    net.send(udp(dst, dport, b"b"))  # guest traffic refreshes the flow
    assert only(net.actions()).flow is flow
    net.advance(timeout * 0.6)
    net.stack.udp_received(flow, b"c", (dst if dst != HOST else "127.0.0.1", dport), net.now)  # so does host's
    assert len(net.frames()) == 1
    net.advance(timeout - 0.1)
    assert net.actions() == []
    net.advance(0.2)
    close = only(net.actions())
    assert isinstance(close, UdpClose) and close.flow is flow
    net.stack.udp_received(flow, b"late", ("127.0.0.1", dport), net.now)
    assert net.frames() == []
    net.send(udp(dst, dport, b"new"))
    again = only(net.actions())
    assert isinstance(again, UdpSend) and again.flow is not flow


def test_udp_flow_cap_per_guest() -> None:
    net = Net(max_udp_flows_per_guest=2)
    net.send(udp(OUTSIDE, 9, b"1", sport=1001))
    net.send(udp(OUTSIDE, 9, b"2", sport=1002))
    assert len(net.actions()) == 2
    net.send(udp(OUTSIDE, 9, b"3", sport=1003))
    assert net.actions() == []
    assert net.stack.counters.udp_dropped_cap == 1
    net.send(udp(OUTSIDE, 9, b"1 again", sport=1001))  # existing flows keep working
    assert only(net.actions()).data == b"1 again"
    net.send(udp(OUTSIDE, 9, b"other guest", sport=1003, src=GUEST2), src_mac=GUEST2_MAC)  # per guest
    assert only(net.actions()).data == b"other guest"
    net.advance(net.cfg.udp_timeout + 1)
    assert sum(isinstance(a, UdpClose) for a in net.actions()) == 3
    net.send(udp(OUTSIDE, 9, b"3 later", sport=1003))
    assert only(net.actions()).data == b"3 later"


def test_udp_dropped_under_restrict() -> None:
    net = Net("restrict=on")
    net.send(udp(HOST, 9999, b"x"))
    net.send(udp(OUTSIDE, 9999, b"x"))
    assert net.actions() == [] and net.frames() == []
    assert net.stack.counters.dropped_restrict == 2


def test_udp_host_loopback_off_drops_traffic_to_the_host_address() -> None:
    net = Net("host-loopback=off")
    net.send(udp(HOST, 9999, b"x"))
    assert net.actions() == [] and net.frames() == []
    net.send(udp(OUTSIDE, 9999, b"y"))
    assert only(net.actions()).dst == (OUTSIDE, 9999)
    g = GuestTcp(net, HOST, 8080)
    g.syn()
    assert only(g.mine(net.frames())).flags == "RA"
    assert net.actions() == []


@pytest.mark.parametrize("dst", ["127.0.0.1", "224.0.0.251", "255.255.255.255", "10.0.2.255", GUEST2, DNS_IP])
def test_udp_to_unroutable_destinations_is_dropped(dst: str) -> None:
    net = Net()
    net.send(udp(dst, 5353, b"x"))
    assert net.actions() == []



@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_this_network_address_does_not_reach_the_host_when_loopback_is_off(proto: str) -> None:
    net = Net("host-loopback=off")
    if proto == "udp":
        net.send(udp("0.0.0.0", 9999, b"x"))
    else:
        net.send(IP(src=GUEST, dst="0.0.0.0") / TCP(sport=45000, dport=9999, flags="S", seq=1))
    assert net.actions() == []


# -- 6. TCP --------------------------------------------------------------------------------------------


class GuestTcp:
    """The guest's end of one TCP connection, written by hand with scapy."""

    def __init__(self, net: Net, dst: str, dport: int, *, sport: int = 45000, src: str = GUEST,
                 src_mac: str = GUEST_MAC, isn: int = 1000, mss: int | None = 1460, wscale: int | None = 7,
                 window: int = 64240) -> None:
        self.net = net
        self.dst, self.dport, self.sport, self.src, self.src_mac = dst, dport, sport, src, src_mac
        self.isn = isn
        self.mss, self.wscale, self.window = mss, wscale, window
        self.seq = isn  # next sequence number to send
        self.rcv_nxt = 0  # next byte expected from the stack
        self.dst_mac = DNS_MAC if dst == DNS_IP else HOST_MAC
        self.received: dict[int, bytes] = {}

    def send(self, flags: str, payload: bytes = b"", *, seq: int | None = None, ack: int | None = None,
             window: int | None = None, options: list[Any] | None = None) -> None:
        tcp = TCP(sport=self.sport, dport=self.dport, flags=flags,
                  seq=(self.seq if seq is None else seq) & 0xFFFFFFFF,
                  ack=(self.rcv_nxt if ack is None else ack) & 0xFFFFFFFF,
                  window=self.window if window is None else window, options=options or [])
        pkt = IP(src=self.src, dst=self.dst, flags="DF") / tcp
        if payload:
            pkt = pkt / Raw(payload)
        self.net.send(pkt, src_mac=self.src_mac, dst_mac=self.dst_mac)
        if seq is None:
            self.seq += len(payload) + (1 if "S" in flags else 0) + (1 if "F" in flags else 0)

    def syn(self) -> None:
        options: list[Any] = []
        if self.mss is not None:
            options.append(("MSS", self.mss))
        if self.wscale is not None:
            options.append(("WScale", self.wscale))
        self.send("S", ack=0, options=options)

    def mine(self, frames: Iterable[Ether]) -> list[TCP]:
        """The segments in ``frames`` that belong to this connection."""
        out = []
        for frame in frames:
            if TCP in frame and frame[IP].dst == self.src and frame[TCP].dport == self.sport:
                assert frame.dst == self.src_mac
                assert frame[IP].src == self.dst and frame[TCP].sport == self.dport
                out.append(frame[TCP])
        return out

    def take_synack(self, frames: Iterable[Ether]) -> TCP:
        synack = only(self.mine(frames))
        assert synack.flags == "SA"
        assert synack.ack == (self.isn + 1) & 0xFFFFFFFF
        self.rcv_nxt = (synack.seq + 1) & 0xFFFFFFFF
        return synack

    def absorb(self, segments: Iterable[TCP]) -> None:
        for seg in segments:
            data = bytes(seg.payload)
            if data:
                self.received[seg.seq] = data

    def reassemble(self, base: int) -> bytes:
        """The contiguous bytes received from sequence number ``base``; moves rcv_nxt past them."""
        out = bytearray()
        pos = base
        while pos in self.received:
            chunk = self.received[pos]
            out += chunk
            pos = (pos + len(chunk)) & 0xFFFFFFFF
        self.rcv_nxt = pos
        return bytes(out)


def open_relay(net: Net, dport: int = 8080, **kw: Any) -> tuple[GuestTcp, TcpRelay]:
    """Guest connects to the host address: SYN, host connect() succeeds, SYN-ACK, ACK."""
    g = GuestTcp(net, HOST, dport, **kw)
    g.syn()
    assert net.frames() == []
    connect = only(net.actions())
    assert isinstance(connect, TcpConnect)
    net.now += 0.001
    net.stack.tcp_connected(connect.relay, net.now)
    g.take_synack(net.frames())
    g.send("A")
    assert net.frames() == [] and net.actions() == []
    return g, connect.relay


def mss_option(seg: TCP) -> int | None:
    return dict((k, v) for k, v in seg.options if isinstance(k, str)).get("MSS")


@pytest.mark.parametrize(("options", "mss"), [("", 1460), ("mtu=1400", 1360), ("mtu=9000", 8960)])
def test_tcp_syn_waits_for_host_connect_then_synack(options: str, mss: int) -> None:
    net = Net(options)
    g = GuestTcp(net, HOST, 8080, mss=65000)
    g.syn()
    connect = only(net.actions())
    assert isinstance(connect, TcpConnect) and connect.target == ("127.0.0.1", 8080)
    assert net.frames() == []  # no SYN-ACK before the host connect() finished
    net.advance(1.0)
    g.send("S", seq=g.isn, ack=0, options=[("MSS", 65000), ("WScale", 7)])  # the guest retransmits its SYN
    assert net.frames() == [] and net.actions() == []
    net.stack.tcp_connected(connect.relay, net.now)
    synack = g.take_synack(net.frames())
    assert mss_option(synack) == mss
    assert any(k == "WScale" for k, _ in synack.options)
    assert net.stack.counters.tcp_flows == 1


def test_tcp_relay_both_directions_and_close() -> None:
    net = Net()
    g, relay = open_relay(net)
    # guest -> host
    g.send("PA", b"hello, host")
    write = only(net.actions())
    assert isinstance(write, TcpWrite) and write.relay is relay and write.data == b"hello, host"
    net.stack.tcp_written(relay, len(write.data), net.now)
    net.advance(0.2)  # the delayed ACK
    acks = g.mine(net.frames())
    assert acks and acks[-1].ack == g.seq
    # host -> guest: more than the initial window, acknowledged as it arrives
    blob = random.Random(1).randbytes(100_000)
    assert net.stack.tcp_data(relay, blob, net.now) == len(blob)
    base = g.rcv_nxt
    got = b""
    for _ in range(200):
        segments = g.mine(net.frames())
        for seg in segments:
            assert len(seg.payload) <= 1460 and "A" in seg.flags and seg.ack == g.seq
        g.absorb(segments)
        got = g.reassemble(base)
        if len(got) >= len(blob):
            break
        if segments:
            g.send("A")
        else:
            net.advance(0.25)
    assert got == blob
    g.send("A")
    assert net.actions() == []
    # guest closes its side: the host socket is shut down for writing
    g.send("FA")
    assert [type(a) for a in net.actions()] == [TcpShutdown]
    net.advance(0.2)
    assert any(seg.ack == g.seq for seg in g.mine(net.frames()))  # the FIN is acknowledged
    # host EOF: FIN to the guest
    net.stack.tcp_eof(relay, net.now)
    fin = only(g.mine(net.frames()))
    assert "F" in fin.flags and fin.seq == g.rcv_nxt
    g.rcv_nxt = (g.rcv_nxt + 1) & 0xFFFFFFFF
    g.send("A")
    assert [type(a) for a in net.actions()] == [TcpClose]
    assert net.stack.tcp == {}


def test_tcp_written_reopens_the_window() -> None:
    net = Net(cfg=dataclasses.replace(build_config(), tcp=dataclasses.replace(build_config().tcp, rcv_buffer=4096)))
    g = GuestTcp(net, HOST, 8080, wscale=None)  # no scaling: the window field is bytes
    g.syn()
    relay = only(net.actions()).relay
    net.stack.tcp_connected(relay, net.now)
    synack = g.take_synack(net.frames())
    assert synack.window == 4096
    assert not any(k == "WScale" for k, _ in synack.options)
    g.send("A")
    data = random.Random(2).randbytes(4096)
    for off in range(0, 4096, 1024):
        g.send("PA", data[off : off + 1024])
    writes = net.actions()
    assert all(isinstance(w, TcpWrite) for w in writes) and b"".join(w.data for w in writes) == data
    net.advance(0.2)
    last = g.mine(net.frames())[-1]
    assert (last.ack, last.window) == (g.seq, 0)  # all taken, none written to the host yet
    g.send("PA", b"more")  # beyond the zero window: not accepted
    assert net.actions() == []
    net.advance(0.2)
    assert all(seg.ack == g.seq - 4 for seg in g.mine(net.frames()))
    g.seq -= 4
    net.stack.tcp_written(relay, 4096, net.now)
    update = g.mine(net.frames())
    assert update and update[-1].window == 4096 and update[-1].ack == g.seq
    g.send("PA", b"more")
    assert only(net.actions()).data == b"more"


def test_tcp_data_backpressure_resumes_when_the_guest_acks() -> None:
    cfg = build_config()
    net = Net(cfg=dataclasses.replace(cfg, tcp=dataclasses.replace(cfg.tcp, snd_buffer=4096)))
    g, relay = open_relay(net)
    assert net.stack.tcp_data(relay, b"z" * 10_000, net.now) == 4096
    assert net.stack.tcp_send_space(relay) == 0
    segs = g.mine(net.frames())
    g.absorb(segs)
    assert g.reassemble(g.rcv_nxt) == b"z" * 4096
    assert net.actions() == []
    g.send("A")
    resume = only(net.actions())
    assert isinstance(resume, TcpResume) and resume.relay is relay
    assert net.stack.tcp_send_space(relay) == 4096


@pytest.mark.parametrize("refused", [True, False])
def test_tcp_connect_failure_resets_the_guest(refused: bool) -> None:
    net = Net()
    g = GuestTcp(net, HOST, 8080, isn=0xFFFFFFFF)  # the ACK wraps
    g.syn()
    relay = only(net.actions()).relay
    net.stack.tcp_failed(relay, refused=refused, now=net.now)
    rst = only(g.mine(net.frames()))
    assert rst.flags == "RA" and rst.ack == 0
    assert net.stack.tcp == {}
    assert all(not isinstance(a, TcpConnect) for a in net.actions())
    net.stack.tcp_connected(relay, net.now)  # too late: nothing
    assert net.frames() == []


def test_tcp_guest_gives_up_before_host_connect() -> None:
    net = Net()
    g = GuestTcp(net, HOST, 8080)
    g.syn()
    relay = only(net.actions()).relay
    g.send("R", ack=0)
    assert [type(a) for a in net.actions()] == [TcpClose]
    assert net.stack.tcp == {}
    net.stack.tcp_connected(relay, net.now)
    assert net.frames() == []


def test_tcp_unanswered_synack_times_out() -> None:
    net = Net()
    g = GuestTcp(net, HOST, 8080)
    g.syn()
    relay = only(net.actions()).relay
    net.stack.tcp_connected(relay, net.now)
    first = g.take_synack(net.frames())
    net.advance(net.cfg.tcp.rto_initial + 0.01)
    again = g.take_synack(net.frames())  # retransmitted, same ISN
    assert again.seq == first.seq
    net.advance(600)
    later = g.mine(net.frames())
    assert [str(seg.flags) for seg in later] == ["SA"] * (net.cfg.tcp.syn_retries - 1) + ["RA"]
    assert all(seg.seq == first.seq for seg in later[:-1])
    assert [type(a) for a in net.actions()] == [TcpClose]
    assert net.stack.tcp == {} and net.stack.get_timer() is None


def test_tcp_guest_reset_closes_the_host_side() -> None:
    net = Net()
    g, relay = open_relay(net)
    g.send("RA")
    close = only(net.actions())
    assert isinstance(close, TcpClose) and close.relay is relay
    assert net.frames() == [] and net.stack.tcp == {}
    assert net.stack.tcp_data(relay, b"late", net.now) == 4  # swallowed, nothing sent
    assert net.frames() == []


def test_tcp_host_error_resets_the_guest() -> None:
    net = Net()
    g, relay = open_relay(net)
    net.stack.tcp_error(relay, net.now)
    rst = only(g.mine(net.frames()))
    assert "R" in rst.flags and rst.seq == g.rcv_nxt
    assert [type(a) for a in net.actions()] == [TcpClose]
    g.send("PA", b"anyone?")
    assert only(g.mine(net.frames())).flags == "R"  # nothing left of it


@pytest.mark.parametrize("dst", [HOST, OUTSIDE])
def test_tcp_syn_under_restrict_gets_rst(dst: str) -> None:
    net = Net("restrict=on")
    g = GuestTcp(net, dst, 8080, isn=5000)
    g.syn()
    rst = only(g.mine(net.frames()))
    assert rst.flags == "RA" and rst.seq == 0 and rst.ack == 5001
    assert net.actions() == [] and net.stack.tcp == {}
    assert net.stack.counters.dropped_restrict == 1


@pytest.mark.parametrize(
    ("flags", "payload", "rst_flags", "rst_seq", "rst_ack"),
    [
        ("A", b"", "R", 7777, 0),
        ("PA", b"data", "R", 7777, 0),
        ("F", b"", "RA", 0, 5001),
        ("", b"abc", "RA", 0, 5003),
        ("SA", b"", "R", 7777, 0),
    ],
)
def test_tcp_segment_for_no_connection_gets_rst(flags: str, payload: bytes, rst_flags: str, rst_seq: int,
                                                 rst_ack: int) -> None:
    net = Net()
    g = GuestTcp(net, HOST, 8080)
    g.send(flags, payload, seq=5000, ack=7777)
    rst = only(g.mine(net.frames()))
    assert (str(rst.flags), rst.seq, rst.ack) == (rst_flags, rst_seq, rst_ack)
    assert net.actions() == [] and net.stack.tcp == {}
    g.send("R", seq=5000, ack=0)  # and a RST for nothing gets nothing
    assert net.frames() == []


def test_tcp_bad_checksum_syn_is_dropped() -> None:
    net = Net()
    pkt = IP(bytes(IP(src=GUEST, dst=HOST) / TCP(sport=45000, dport=8080, flags="S", seq=1)))
    pkt[TCP].chksum ^= 0x1234
    net.send(pkt)
    assert net.frames() == [] and net.actions() == []
    assert net.stack.tcp == {}
    assert net.stack.counters.bad_ipv4 == 1


def test_tcp_cap_per_guest() -> None:
    net = Net(max_tcp_per_guest=2)
    for port in (1, 2):
        GuestTcp(net, HOST, 8080, sport=40000 + port).syn()
    assert [type(a) for a in net.actions()] == [TcpConnect, TcpConnect]
    g3 = GuestTcp(net, HOST, 8080, sport=40003)
    g3.syn()
    assert net.actions() == []
    assert only(g3.mine(net.frames())).flags == "RA"
    assert net.stack.counters.tcp_refused_cap == 1
    other = GuestTcp(net, HOST, 8080, src=GUEST2, src_mac=GUEST2_MAC)
    other.syn()
    assert [type(a) for a in net.actions()] == [TcpConnect]


def dns_tcp(qid: int, name: str = "example.com") -> bytes:
    msg = bytes(DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype="A")))
    return len(msg).to_bytes(2, "big") + msg


def test_tcp_dns_over_tcp(fixed_dns_ids: list[int]) -> None:
    net = Net("dns-static=foo.test:192.0.2.9")
    g = GuestTcp(net, DNS_IP, 53)
    g.syn()
    assert net.actions() == []  # served by the stack: no host connect
    synack = g.take_synack(net.frames())
    assert synack.sport == 53
    g.send("A")
    query = dns_tcp(0x4321)
    g.send("PA", query[:5])  # the length prefix and the message split across segments
    assert net.actions() == []
    g.send("PA", query[5:])
    send = only(net.actions())
    assert isinstance(send, DnsSend) and send.upstream == UPSTREAM
    assert int.from_bytes(send.data[:2], "big") == fixed_dns_ids[0]
    assert send.data[2:] == query[4:]
    answer = dns_answer(fixed_dns_ids[0])
    net.stack.dns_response(UPSTREAM, answer, net.now)
    segs = g.mine(net.frames())
    g.absorb(segs)
    stream = g.reassemble(g.rcv_nxt)
    assert stream == len(answer).to_bytes(2, "big") + b"\x43\x21" + answer[2:]
    assert DNS(stream[2:]).id == 0x4321
    # a static name, answered at once on the same connection
    g.send("PA", dns_tcp(0x7777, "foo.test"))
    assert net.actions() == []
    g.absorb(g.mine(net.frames()))
    stream = g.reassemble(g.rcv_nxt)
    reply = DNS(stream[2:])
    assert int.from_bytes(stream[:2], "big") == len(stream) - 2
    assert (reply.id, reply.an[0].rdata) == (0x7777, "192.0.2.9")
    # the guest closes: the stack closes too, with nothing for the host to do
    g.send("FA")
    fin = [s for s in g.mine(net.frames()) if "F" in s.flags]
    assert fin and net.actions() == []



@pytest.mark.parametrize("outcome", ["answer", "timeout"])
def test_tcp_dns_guest_half_close_still_gets_the_answer(outcome: str, fixed_dns_ids: list[int]) -> None:
    net = Net()
    g = GuestTcp(net, DNS_IP, 53)
    g.syn()
    g.take_synack(net.frames())
    g.send("A")
    g.send("FPA", dns_tcp(0x4321))
    assert isinstance(only(net.actions()), DnsSend)
    g.absorb(g.mine(net.frames()))
    if outcome == "answer":
        net.stack.dns_response(UPSTREAM, dns_answer(fixed_dns_ids[0]), net.now)
    else:
        net.advance(30)
    g.absorb(g.mine(net.frames()))
    stream = g.reassemble(g.rcv_nxt)
    assert len(stream) > 2 and DNS(stream[2:]).id == 0x4321


def test_tcp_to_dns_address_other_port_gets_rst() -> None:
    net = Net()
    g = GuestTcp(net, DNS_IP, 80)
    g.syn()
    rst = only(g.mine(net.frames()))
    assert rst.flags == "RA" and net.actions() == []


# -- 7. hostfwd ----------------------------------------------------------------------------------------


def test_hostfwd_tcp_arps_for_an_unknown_guest_then_dials_it() -> None:
    net = Net("hostfwd=tcp::2222-:22")
    rule = only(list(net.cfg.hostfwd))
    assert (rule.proto, rule.host_port, rule.guest_addr, rule.guest_port) == ("tcp", 2222, ip_bytes(GUEST), 22)
    relay = net.stack.hostfwd_connect(rule, ("127.0.0.1", 40000), net.now)
    assert relay is not None
    request = only(net.frames())
    assert request.type == ETH_P_ARP and request.dst == BCAST_MAC
    arp = request[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc, arp.pdst) == (1, HOST_MAC, HOST, GUEST)
    # the guest answers; the SYN goes out when it is retransmitted
    net.send_raw(Ether(src=GUEST_MAC, dst=HOST_MAC) / ARP(op=2, hwsrc=GUEST_MAC, psrc=GUEST, hwdst=HOST_MAC,
                                                         pdst=HOST))
    net.advance(net.cfg.tcp.rto_initial + 0.01)
    syn = only(net.frames())
    assert (syn[IP].src, syn[IP].dst, syn[TCP].dport, str(syn[TCP].flags)) == (HOST, GUEST, 22, "S")


@pytest.mark.parametrize(("client", "seen_from"), [("127.0.0.1", HOST), ("198.51.100.7", "198.51.100.7")])
def test_hostfwd_tcp_relays_a_client(client: str, seen_from: str) -> None:
    net = Net("hostfwd=tcp::2222-:22")
    rule = net.cfg.hostfwd[0]
    net.learn()
    relay = net.stack.hostfwd_connect(rule, (client, 40000), net.now)
    assert relay is not None
    syn = only(net.frames())
    assert syn.dst == GUEST_MAC and syn.src == HOST_MAC
    assert (syn[IP].src, syn[IP].dst, syn[TCP].dport, str(syn[TCP].flags)) == (seen_from, GUEST, 22, "S")
    assert mss_option(syn[TCP]) == 1460
    # the guest's sshd accepts
    g = GuestTcp(net, seen_from, syn[TCP].sport, sport=22, isn=90000)
    g.dst_mac = HOST_MAC
    g.rcv_nxt = syn[TCP].seq + 1
    g.send("SA", ack=g.rcv_nxt, options=[("MSS", 1460)], seq=g.isn)
    g.seq = g.isn + 1
    ack = only(g.mine(net.frames()))
    assert str(ack.flags) == "A" and ack.ack == g.seq
    assert net.actions() == []  # no TcpConnect for a forward: the host side is already connected
    g.send("PA", b"SSH-2.0-guest\r\n")
    write = only(net.actions())
    assert isinstance(write, TcpWrite) and write.relay is relay and write.data == b"SSH-2.0-guest\r\n"
    net.stack.tcp_data(relay, b"SSH-2.0-client\r\n", net.now)
    g.absorb(g.mine(net.frames()))
    assert g.reassemble(g.rcv_nxt) == b"SSH-2.0-client\r\n"


def test_hostfwd_tcp_client_data_and_eof_before_the_guest_answers() -> None:
    net = Net("hostfwd=tcp::2222-:22")
    net.learn()
    relay = net.stack.hostfwd_connect(net.cfg.hostfwd[0], ("127.0.0.1", 40000), net.now)
    assert relay is not None
    syn = only(net.frames())[TCP]
    assert net.stack.tcp_data(relay, b"early bytes", net.now) == 11
    net.stack.tcp_eof(relay, net.now)
    assert net.frames() == []  # nothing but the SYN before the handshake
    g = GuestTcp(net, HOST, syn.sport, sport=22, isn=777)
    g.rcv_nxt = syn.seq + 1
    g.send("SA", options=[("MSS", 1460)])
    segs = g.mine(net.frames())
    net.advance(0.1)
    segs += g.mine(net.frames())
    g.absorb(segs)
    assert g.reassemble(g.rcv_nxt) == b"early bytes"
    fins = [seg for seg in segs if "F" in seg.flags]
    assert fins and all(fin.seq + len(fin.payload) == g.rcv_nxt for fin in fins)  # the FIN follows the data


def test_hostfwd_tcp_refused_by_guest() -> None:
    net = Net("hostfwd=tcp::2222-:22")
    net.learn()
    relay = net.stack.hostfwd_connect(net.cfg.hostfwd[0], ("127.0.0.1", 40000), net.now)
    assert relay is not None
    syn = only(net.frames())[TCP]
    net.send(IP(src=GUEST, dst=HOST) / TCP(sport=22, dport=syn.sport, flags="RA", seq=0, ack=syn.seq + 1))
    assert [type(a) for a in net.actions()] == [TcpClose]
    assert net.stack.tcp == {}


@pytest.mark.parametrize(("client", "seen_from"), [("127.0.0.1", HOST), ("198.51.100.7", "198.51.100.7")])
def test_hostfwd_udp_both_ways(client: str, seen_from: str) -> None:
    net = Net("hostfwd=udp::5555-:55")
    rule = net.cfg.hostfwd[0]
    assert rule.proto == "udp"
    net.learn()
    net.stack.hostfwd_udp(rule, (client, 41000), b"question", net.now)
    frame = only(net.frames())
    assert frame.dst == GUEST_MAC
    assert (frame[IP].src, frame[UDP].sport, frame[IP].dst, frame[UDP].dport) == (seen_from, 41000, GUEST, 55)
    assert l4_payload(frame) == b"question"
    net.send(udp(seen_from, 41000, b"answer", sport=55))
    reply = only(net.actions())
    assert isinstance(reply, UdpFwdReply)
    assert (reply.rule, reply.client, reply.data) == (rule, (client, 41000), b"answer")
    assert net.stack.udp_flows == {}
    # the session expires when idle; the guest's next datagram is then ordinary NAT
    net.advance(net.cfg.udp_timeout + 1)
    net.send(udp(seen_from, 41000, b"late", sport=55))
    assert isinstance(only(net.actions()), UdpSend)



def test_hostfwd_closing_does_not_lift_the_guest_tcp_cap() -> None:
    net = Net("hostfwd=tcp::2222-:22", max_tcp_per_guest=1)
    net.learn()
    GuestTcp(net, HOST, 8080, sport=45001).syn()
    assert [type(a) for a in net.actions()] == [TcpConnect]
    relay = net.stack.hostfwd_connect(net.cfg.hostfwd[0], ("127.0.0.1", 40000), net.now)
    assert relay is not None
    net.frames()
    net.stack.tcp_error(relay, net.now)  # the client went away before the guest answered
    net.actions()
    g2 = GuestTcp(net, HOST, 8080, sport=45002)
    g2.syn()
    assert net.actions() == []  # still at the cap: one guest connection is open
    assert only(g2.mine(net.frames())).flags == "RA"


# -- 8. robustness -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pkt",
    [
        echo(HOST),
        udp(OUTSIDE, 7, b"x"),
        dns_query(1),
        IP(src=GUEST, dst=HOST) / TCP(sport=45000, dport=8080, flags="S"),
    ],
    ids=["icmp", "udp", "dns", "tcp"],
)
def test_frames_for_another_guest_mac_are_ignored(pkt: Packet) -> None:
    net = Net()
    net.send(pkt, dst_mac=GUEST2_MAC)
    assert net.frames() == [] and net.actions() == []
    assert net.stack.counters.not_for_us == 1
    assert net.stack.guest_macs == {}


def test_ip_fragments_and_unknown_protocols_are_dropped() -> None:
    net = Net()
    net.send(IP(src=GUEST, dst=OUTSIDE, flags="MF", id=5) / UDP(sport=1, dport=2) / Raw(b"a" * 32))
    net.send(IP(src=GUEST, dst=OUTSIDE, proto=47) / Raw(b"gre!"))
    assert net.frames() == [] and net.actions() == []
    assert net.stack.counters.fragments == 1


def fix_checksums(frame: bytearray) -> None:
    """Make the IPv4 header and UDP/TCP/ICMP checksums of a (mutated) frame valid again, where it parses."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return
    ihl = (frame[14] & 0x0F) * 4
    total = int.from_bytes(frame[16:18], "big")
    if ihl < 20 or len(frame) < 14 + ihl:
        return
    frame[24:26] = b"\0\0"
    frame[24:26] = checksum(bytes(frame[14 : 14 + ihl])).to_bytes(2, "big")
    proto = frame[23]
    seg_start, seg_end = 14 + ihl, min(14 + total, len(frame))
    offset = {1: 2, 6: 16, 17: 6}.get(proto)
    if offset is None or seg_end - seg_start < offset + 2:
        return
    at = seg_start + offset
    frame[at : at + 2] = b"\0\0"
    seg = bytes(frame[seg_start:seg_end])
    if proto == 1:
        value = checksum(seg)
    else:
        src = ".".join(map(str, frame[26:30]))
        dst = ".".join(map(str, frame[30:34]))
        value = in4_chksum(proto, IP(src=src, dst=dst), seg)
    frame[at : at + 2] = value.to_bytes(2, "big")


def _corpus() -> list[bytes]:
    eth = Ether(src=GUEST_MAC, dst=HOST_MAC)
    pkts = [
        arp_request(HOST),
        dhcp_frame("discover", GUEST_MAC),
        dhcp_frame("request", GUEST_MAC, requested=GUEST, server_id=HOST),
        eth / echo(HOST),
        eth / echo(OUTSIDE),
        Ether(src=GUEST_MAC, dst=DNS_MAC) / dns_query(0x1234),
        Ether(src=GUEST_MAC, dst=DNS_MAC) / IP(src=GUEST, dst=DNS_IP) / TCP(sport=45100, dport=53, flags="S"),
        eth / udp(HOST, 9999, b"hello"),
        eth / udp(OUTSIDE, 53, b"\x12\x34" + b"\0" * 10),
        eth / IP(src=GUEST, dst=HOST) / TCP(sport=45000, dport=8080, flags="S", seq=1000,
                                            options=[("MSS", 1460), ("WScale", 7), ("SAckOK", b""),
                                                     ("Timestamp", (1, 0))]),
        eth / IP(src=GUEST, dst=HOST, options=[]) / TCP(sport=45000, dport=8080, flags="PA", seq=1001) / b"data",
        eth / IP(src=GUEST, dst=HOST) / TCP(sport=45000, dport=8080, flags="FA", seq=1001),
        eth / IP(src=GUEST, dst=GUEST2) / UDP(sport=55, dport=41000) / b"fwd answer",
    ]
    return [bytes(p) for p in pkts]


CORPUS = _corpus()
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fuzz_net() -> tuple[Net, GuestTcp, TcpRelay]:
    """A stack with state to trip over: learned MACs, an open relay, a pending DNS query, a UDP flow."""
    net = Net("hostfwd=udp::5555-:55,hostfwd=tcp::2222-:22")
    g, relay = open_relay(net)
    net.send(dns_query(0x55), dst_mac=DNS_MAC)
    net.send(udp(OUTSIDE, 9, b"x"))
    net.stack.hostfwd_udp(net.cfg.hostfwd[0], ("127.0.0.1", 41000), b"q", net.now)
    net.actions()
    net.frames()
    return net, g, relay


def drive_host_side(net: Net) -> None:
    """Act on whatever the stack asked, as a friendly host would, then let time pass; check every frame."""
    for _ in range(3):
        for action in net.actions():
            if isinstance(action, TcpConnect):
                net.stack.tcp_connected(action.relay, net.now)
            elif isinstance(action, TcpWrite):
                net.stack.tcp_written(action.relay, len(action.data), net.now)
            elif isinstance(action, UdpSend):
                net.stack.udp_received(action.flow, b"r", action.dst, net.now)
            elif isinstance(action, PingSend):
                net.stack.ping_reply(action.flow, action.seq, action.data, net.now)
        net.frames()
        net.advance(0.5)
    net.frames()


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    net, _, _ = fuzz_net()
    net.stack.receive_frame(data, net.now)
    net.stack.receive_frame(memoryview(data), net.now)
    drive_host_side(net)


@FUZZ
@given(
    dst_mac=st.sampled_from([HOST_MAC, DNS_MAC, BCAST_MAC]),
    ethertype=st.sampled_from([b"\x08\x00", b"\x08\x06"]),
    body=st.binary(max_size=200),
)
def test_fuzz_random_payloads_behind_a_valid_ethernet_header(dst_mac: str, ethertype: bytes, body: bytes) -> None:
    net, _, _ = fuzz_net()
    frame = bytearray(mac_bytes(dst_mac) + mac_bytes(GUEST_MAC) + ethertype + body)
    net.stack.receive_frame(bytes(frame), net.now)
    fix_checksums(frame)
    net.stack.receive_frame(bytes(frame), net.now)
    drive_host_side(net)


@FUZZ
@given(
    index=st.integers(0, len(CORPUS) - 1),
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 400)),
    extra=st.binary(max_size=16),
    fix=st.booleans(),
)
def test_fuzz_mutated_valid_frames(index: int, flips: list[tuple[int, int]], cut: int | None, extra: bytes,
                                   fix: bool) -> None:
    net, _, _ = fuzz_net()
    frame = bytearray(CORPUS[index])
    for pos, xor in flips:
        frame[pos % len(frame)] ^= xor
    if cut is not None:
        del frame[cut:]
    frame += extra
    if fix:
        fix_checksums(frame)
    net.stack.receive_frame(bytes(frame), net.now)
    drive_host_side(net)


_TCP_FLAGS = st.sampled_from(["A", "PA", "FA", "R", "RA", "S", "SA", "F", "", "FPAU", "SF", "SR"])


@FUZZ
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("seg"), _TCP_FLAGS, st.integers(-70000, 70000), st.integers(-70000, 70000),
                      st.integers(0, 0xFFFF), st.integers(0, 3000)),
            st.tuples(st.just("host"), st.sampled_from(["data", "eof", "error", "written"]), st.integers(0, 5000)),
            st.tuples(st.just("time"), st.floats(0, 400)),
        ),
        max_size=12,
    )
)
def test_fuzz_tcp_conversation(steps: list[tuple[Any, ...]]) -> None:
    """Random but checksummed segments and host events on an open connection: never raises, every frame
    stays valid, every connection (a new incarnation opened by a stray SYN too) is closed exactly once, and
    a silent guest leaves nothing behind."""
    net, g, relay = fuzz_net()
    relays: dict[int, TcpRelay] = {id(relay): relay}
    closes: dict[int, int] = {}

    def settle() -> None:
        net.frames()
        for action in net.actions():
            if isinstance(action, TcpConnect):
                relays[id(action.relay)] = action.relay
                net.stack.tcp_connected(action.relay, net.now)
            elif isinstance(action, TcpClose):
                closes[id(action.relay)] = closes.get(id(action.relay), 0) + 1
        net.frames()

    for step in steps:
        if step[0] == "seg":
            _, flags, dseq, dack, window, plen = step
            g.send(flags, b"p" * plen, seq=g.seq + dseq, ack=g.rcv_nxt + dack, window=window)
        elif step[0] == "host":
            _, what, n = step
            if what == "data" and net.stack.tcp_send_space(relay):
                net.stack.tcp_data(relay, b"d" * n, net.now)
            elif what == "eof":
                net.stack.tcp_eof(relay, net.now)
            elif what == "error":
                net.stack.tcp_error(relay, net.now)
            elif what == "written" and net.stack.tcp.get(relay.guest_key) is relay:
                net.stack.tcp_written(relay, min(n, relay.conn.unconsumed), net.now)
        else:
            net.advance(step[1])
        settle()
        assert all(count == 1 for count in closes.values())
        assert (net.stack.tcp.get(relay.guest_key) is relay) == (id(relay) not in closes)
    for _ in range(3):
        net.advance(3000)  # a silent guest: SYN-ACK retries, keepalive, FIN_WAIT_2 and TIME_WAIT all end
        settle()
    assert net.stack.tcp == {}
    assert closes == dict.fromkeys(relays, 1)


def test_the_timer_heap_stays_small_during_a_long_transfer() -> None:
    """Each segment re-arms the connection's timers; the stack's heap must not keep an entry per call
    (it once did: two per segment, half of them due two hours later with keepalive)."""
    net = Net()
    g, relay = open_relay(net)
    for _ in range(2000):
        net.now += 0.0005
        g.send("A", b"x" * 1000)
        for action in net.actions():
            if isinstance(action, TcpWrite):
                net.stack.tcp_written(relay, len(action.data), net.now)
        net.frames()
    assert len(net.stack._timers) < 20
    net.advance(10)
    assert len(net.stack._timers) < 20


def test_sources_outside_the_guest_network_are_dropped_before_any_flow() -> None:
    """Per-guest caps are keyed by source address: spoofed sources must not get flows at all."""
    net = Net()
    for i in range(50):
        net.send(IP(src=f"198.51.100.{i}", dst=HOST) / UDP(sport=4000, dport=9999) / Raw(b"x"))
    assert net.actions() == [] and net.stack.udp_flows == {}
    assert net.stack.counters.bad_source == 50
    net.send(IP(src=GUEST, dst=HOST) / UDP(sport=4000, dport=9999) / Raw(b"x"))
    assert isinstance(only(net.actions()), UdpSend)


def test_pings_per_guest_are_capped() -> None:
    net = Net()
    for ident in range(100):
        net.send(echo(OUTSIDE, ident=ident))
    sends = [a for a in net.actions() if isinstance(a, PingSend)]
    assert len(sends) == net.cfg.max_pings_per_guest
    assert net.stack.counters.ping_dropped_cap == 100 - net.cfg.max_pings_per_guest
