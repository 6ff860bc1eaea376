"""restrict=on (libslirp's "restricted"): the guests reach nothing beyond the stack, but host forwards and
guest forwards still work, and DHCP and pings to the virtual hosts are still answered. The refusals of
each protocol are tested beside it (test_udp.py, test_tcp.py, test_icmp.py, test_dns.py, test_dhcp.py)."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP, UDP

from tests.engines.usernet.stacknet import GUEST, HOST, GuestTcp, StackNet, kinds, l4_payload, only, udp
from vmlan.engines.usernet import actions as A


def test_host_forwards_still_work_under_restrict() -> None:
    net = StackNet("restrict=on,hostfwd=tcp::2222-:22,hostfwd=udp::5555-:55")
    a = net.guest(dhcp=True)
    fid = net.stack.hostfwd_tcp(0, ("127.0.0.1", 40000), net.now)
    assert fid is not None
    syn = only(net.frames())
    t = GuestTcp(net, a, HOST, syn[TCP].sport, sport=22, isn=10)
    t.rcv_nxt = syn[TCP].seq + 1
    t.send("SA", options=[("MSS", 1460)])
    t.send("PA", b"banner")
    assert (A.TCP_WRITE, fid, bytearray(b"banner")) in net.actions()
    net.stack.hostfwd_udp(1, ("127.0.0.1", 41000), b"question", net.now)
    assert l4_payload(next(f for f in net.frames() if UDP in f)) == b"question"
    net.send_ip(a, udp(HOST, 41000, b"answer", sport=55))
    assert net.actions() == [(A.UDP_FWD_REPLY, 1, ("127.0.0.1", 41000), b"answer")]
    assert net.stack.counters.restricted == 0


def test_guest_forwards_still_work_under_restrict() -> None:
    net = StackNet("restrict=on,guestfwd=tcp:10.0.2.100:80-127.0.0.1:8080")
    a = net.guest()
    GuestTcp(net, a, "10.0.2.100", 80).syn()
    assert only(net.actions())[2:] == (4, ("127.0.0.1", 8080))


def test_restrict_refuses_everything_else() -> None:
    net = StackNet("restrict=on")
    a = net.guest()
    net.send_ip(a, udp(HOST, 9, b"x"))
    net.send_ip(a, IP(src=GUEST, dst="192.0.2.1") / TCP(sport=1, dport=80, flags="S"))
    assert net.actions() == []
    assert [str(f[TCP].flags) for f in net.frames()] == ["RA"]
    assert net.stack.counters.restricted == 2
    assert kinds(net.actions()) == []
