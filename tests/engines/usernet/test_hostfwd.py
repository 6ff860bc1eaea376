"""Host forwards (hostfwd=): the I/O layer accepts host clients and the stack dials the guest from the
client's address (loopback clients appear as the gateway); UDP forwards keep a session per client."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from tests.engines.usernet.stacknet import (
    BCAST_MAC,
    ETH_P_ARP,
    GUEST,
    GUEST2,
    GUEST2_MAC,
    GUEST_MAC,
    HOST,
    HOST_MAC,
    GuestTcp,
    StackNet,
    arp_request,
    ip_bytes,
    kinds,
    l4_payload,
    mss_option,
    only,
    reader_of,
    udp,
)
from vmlan.engines.usernet import actions as A


def test_hostfwd_tcp_arps_for_an_unknown_guest_then_dials_it() -> None:
    net = StackNet("hostfwd=tcp::2222-:22")
    rule = only(list(net.cfg.hostfwd))
    assert (rule.proto, rule.host_port, rule.guest_addr, rule.guest_port) == ("tcp", 2222, ip_bytes(GUEST), 22)
    fid = net.stack.hostfwd_tcp(0, ("127.0.0.1", 40000), net.now)
    assert fid is not None
    request = only(net.frames())
    assert request.type == ETH_P_ARP and request.dst == BCAST_MAC
    arp = request[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc, arp.pdst) == (1, HOST_MAC, HOST, GUEST)
    # the guest answers; the SYN goes out when it is retransmitted
    a = net.guest()
    net.send(a.port, Ether(src=GUEST_MAC, dst=HOST_MAC) / ARP(op=2, hwsrc=GUEST_MAC, psrc=GUEST, hwdst=HOST_MAC,
                                                             pdst=HOST))
    net.advance(net.cfg.tcp.rto_initial + 0.01)
    syn = only(net.frames())
    assert (syn[IP].src, syn[IP].dst, syn[TCP].dport, str(syn[TCP].flags)) == (HOST, GUEST, 22, "S")
    assert syn.dst == GUEST_MAC
    # the guest's answer adopts the flow: it now counts against the guest's share
    g = GuestTcp(net, a, HOST, syn[TCP].sport, sport=22, isn=5)
    g.rcv_nxt = syn[TCP].seq + 1
    g.send("SA", options=[("MSS", 1460)])
    assert net.stack.guests.by_port[a.port].tcp == 1
    assert fid in net.stack.guests.by_port[a.port].flows


@pytest.mark.parametrize(("client", "seen_from"), [("127.0.0.1", HOST), ("198.51.100.7", "198.51.100.7")])
def test_hostfwd_tcp_relays_a_client(client: str, seen_from: str) -> None:
    net = StackNet("hostfwd=tcp::2222-:22")
    a = net.guest(dhcp=True)
    fid = net.stack.hostfwd_tcp(0, (client, 40000), net.now)
    assert fid is not None
    syn = only(net.frames())
    assert syn.dst == GUEST_MAC and syn.src == HOST_MAC
    assert (syn[IP].src, syn[IP].dst, syn[TCP].dport, str(syn[TCP].flags)) == (seen_from, GUEST, 22, "S")
    assert mss_option(syn[TCP]) == 1460
    # the guest's sshd accepts
    g = GuestTcp(net, a, seen_from, syn[TCP].sport, sport=22, isn=90000)
    g.dst_mac = HOST_MAC
    g.rcv_nxt = syn[TCP].seq + 1
    g.send("SA", ack=g.rcv_nxt, options=[("MSS", 1460)], seq=g.isn)
    g.seq = g.isn + 1
    ack = only(g.mine(net.frames()))
    assert str(ack.flags) == "A" and ack.ack == g.seq
    assert net.actions() == []  # no TCP_CONNECT for a forward: the host side is already connected
    g.send("PA", b"SSH-2.0-guest\r\n")
    assert net.actions() == [(A.TCP_WRITE, fid, bytearray(b"SSH-2.0-guest\r\n"))]
    net.stack.tcp_fill(fid, reader_of(b"SSH-2.0-client\r\n"), net.now)
    g.absorb(g.mine(net.frames()))
    assert g.reassemble(g.rcv_nxt) == b"SSH-2.0-client\r\n"


def test_hostfwd_source_ports_are_unique_ephemeral_ports() -> None:
    """RFC 6056 algorithm 4 (engines/tcp/isn.py): a keyed start per destination, then the next free port."""
    net = StackNet("hostfwd=tcp::2222-:22")
    net.guest(dhcp=True)
    sports = set()
    for n in range(20):
        assert net.stack.hostfwd_tcp(0, ("127.0.0.1", 40000 + n), net.now) is not None
        sports.add(only(net.frames())[TCP].sport)
    assert len(sports) == 20 and all(49152 <= p <= 65535 for p in sports)


def test_hostfwd_tcp_client_data_and_eof_before_the_guest_answers() -> None:
    net = StackNet("hostfwd=tcp::2222-:22")
    a = net.guest(dhcp=True)
    fid = net.stack.hostfwd_tcp(0, ("127.0.0.1", 40000), net.now)
    assert fid is not None
    syn = only(net.frames())[TCP]
    assert net.stack.tcp_send(fid, b"early bytes", net.now) == 11
    net.stack.tcp_eof(fid, net.now)
    assert net.frames() == []  # nothing but the SYN before the handshake
    g = GuestTcp(net, a, HOST, syn.sport, sport=22, isn=777)
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
    net = StackNet("hostfwd=tcp::2222-:22")
    a = net.guest(dhcp=True)
    fid = net.stack.hostfwd_tcp(0, ("127.0.0.1", 40000), net.now)
    assert fid is not None
    syn = only(net.frames())[TCP]
    net.send_ip(a, IP(src=GUEST, dst=HOST) / TCP(sport=22, dport=syn.sport, flags="RA", seq=0, ack=syn.seq + 1))
    assert kinds(net.actions()) == ["TCP_CLOSE"]
    assert net.stack.tcp.by_key == {} and net.stack.tcp.fwd_count == {0: 0}


@pytest.mark.parametrize(("client", "seen_from"), [("127.0.0.1", HOST), ("198.51.100.7", "198.51.100.7")])
def test_hostfwd_udp_both_ways(client: str, seen_from: str) -> None:
    net = StackNet("hostfwd=udp::5555-:55")
    rule = net.cfg.hostfwd[0]
    assert rule.proto == "udp"
    a = net.guest(dhcp=True)
    net.stack.hostfwd_udp(0, (client, 41000), b"question", net.now)
    frame = only(net.frames())
    assert frame.dst == GUEST_MAC
    assert (frame[IP].src, frame[UDP].sport, frame[IP].dst, frame[UDP].dport) == (seen_from, 41000, GUEST, 55)
    assert l4_payload(frame) == b"question"
    net.send_ip(a, udp(seen_from, 41000, b"answer", sport=55))
    assert net.actions() == [(A.UDP_FWD_REPLY, 0, (client, 41000), b"answer")]
    assert net.stack.udp.flows_by_src == {}
    # the session expires when idle; the guest's next datagram is then ordinary NAT
    net.advance(net.cfg.udp_timeout + 1)
    net.send_ip(a, udp(seen_from, 41000, b"late", sport=55))
    assert kinds(net.actions()) == ["UDP_SEND"]


def test_hostfwd_udp_to_a_silent_guest_asks_arp() -> None:
    net = StackNet("hostfwd=udp::5555-:55")
    net.stack.hostfwd_udp(0, ("127.0.0.1", 41000), b"question", net.now)
    request = only(net.frames())
    assert request.type == ETH_P_ARP and request[ARP].pdst == GUEST
    assert net.stack.counters.unresolved == 1


def test_hostfwd_tcp_clients_are_capped_per_rule() -> None:
    net = StackNet("hostfwd=tcp::2222-:22,hostfwd=tcp::2223-:23,hostfwd-clients=3")
    net.guest(dhcp=True)
    fids = [net.stack.hostfwd_tcp(0, ("127.0.0.1", 40000 + n), net.now) for n in range(5)]
    assert [f is not None for f in fids] == [True, True, True, False, False]
    assert net.stack.counters.tcp_refused_cap == 2
    assert net.stack.hostfwd_tcp(1, ("127.0.0.1", 41000), net.now) is not None  # another rule: its own cap
    first = fids[0]
    assert first is not None
    net.stack.tcp_reset(first, net.now)  # one client leaves: room for one more
    assert net.stack.hostfwd_tcp(0, ("127.0.0.1", 42000), net.now) is not None
    assert net.stack.hostfwd_tcp(0, ("127.0.0.1", 42001), net.now) is None


def test_hostfwd_udp_sessions_are_capped_per_rule_oldest_first() -> None:
    net = StackNet("hostfwd=udp::5555-:55,hostfwd-clients=2")
    a = net.guest(dhcp=True)
    for n, cport in enumerate((41000, 41001, 41002)):
        net.now += 1
        net.stack.hostfwd_udp(0, ("198.51.100.7", cport), b"q%d" % n, net.now)
    assert len(net.frames()) == 3  # every datagram is delivered
    assert len(net.stack.udp.sessions) == 2 and net.stack.udp.fwd_count == {0: 2}
    net.send_ip(a, udp("198.51.100.7", 41000, b"to the evicted", sport=55))
    assert kinds(net.actions()) == ["UDP_SEND"]  # its session made room: plain NAT now
    net.send_ip(a, udp("198.51.100.7", 41002, b"to the newest", sport=55))
    assert net.actions() == [(A.UDP_FWD_REPLY, 0, ("198.51.100.7", 41002), b"to the newest")]


def test_hostfwd_closing_does_not_lift_the_guest_tcp_cap() -> None:
    """Adapted: a forward to a known guest counts against its guest-tcp share (the old stack did not
    count it); closing it gives back exactly its own share."""
    net = StackNet("hostfwd=tcp::2222-:22,guest-tcp=2")
    a = net.guest(dhcp=True)
    GuestTcp(net, a, HOST, 8080, sport=45001).syn()
    assert kinds(net.actions()) == ["TCP_CONNECT"]
    fid = net.stack.hostfwd_tcp(0, ("127.0.0.1", 40000), net.now)
    assert fid is not None
    net.frames()
    assert net.stack.hostfwd_tcp(0, ("127.0.0.1", 40001), net.now) is None  # the guest is at its cap
    net.stack.tcp_reset(fid, net.now)  # the client went away before the guest answered
    net.actions()
    net.frames()
    GuestTcp(net, a, HOST, 8080, sport=45002).syn()
    assert kinds(net.actions()) == ["TCP_CONNECT"]
    g3 = GuestTcp(net, a, HOST, 8080, sport=45003)
    g3.syn()
    assert net.actions() == []  # still at the cap: two guest connections are open
    assert only(g3.mine(net.frames())).flags == "RA"


def test_a_forgers_arp_does_not_redirect_a_forward() -> None:
    net = StackNet("hostfwd=udp::5555-:55")
    net.guest("a", dhcp=True)
    b = net.guest("b", GUEST2_MAC, GUEST2)
    net.send(b.port, arp_request(HOST, psrc=GUEST, hwsrc=GUEST2_MAC))
    net.frames()
    net.stack.hostfwd_udp(0, ("127.0.0.1", 41000), b"for a", net.now)
    assert only(net.frames()).dst == GUEST_MAC
