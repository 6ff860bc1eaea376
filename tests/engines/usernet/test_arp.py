"""ARP (neighbours.py): the virtual hosts answer for themselves; a guest's ARP binds only what its port may
use (the neighbour table is the identity table, guests.py)."""

from __future__ import annotations

import pytest
from scapy.layers.l2 import ARP, Ether

from tests.engines.usernet.stacknet import (
    BCAST_MAC,
    DNS_IP,
    DNS_MAC,
    ETH_P_IP,
    GUEST,
    GUEST2,
    GUEST2_MAC,
    GUEST_MAC,
    HOST,
    HOST_MAC,
    OUTSIDE,
    StackNet,
    arp_request,
    ip_bytes,
    mac_bytes,
    only,
)


@pytest.mark.parametrize("unicast", [False, True], ids=["broadcast", "unicast"])
@pytest.mark.parametrize(("target", "mac"), [(HOST, HOST_MAC), (DNS_IP, DNS_MAC)])
def test_arp_who_has_virtual_host_is_answered(target: str, mac: str, unicast: bool) -> None:
    assert mac_bytes(mac) == b"\x52\x55" + ip_bytes(target)  # libslirp's 52:55:<IPv4>
    net = StackNet()
    a = net.guest()
    request = arp_request(target)
    if unicast:  # Linux re-checks a stale neighbour with a unicast request
        request.dst = mac
    net.send(a.port, request)
    reply = only(net.frames())
    assert reply.dst == GUEST_MAC and reply.src == mac
    arp = reply[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == (2, mac, target, GUEST_MAC, GUEST)
    assert net.actions() == []
    assert net.stack.counters.arp_replies == 1


@pytest.mark.parametrize("target", [GUEST2, GUEST, "10.0.2.1", "10.0.2.4", OUTSIDE])
def test_arp_for_other_addresses_is_not_answered(target: str) -> None:
    net = StackNet()
    a = net.guest()
    net.send(a.port, arp_request(target))
    assert net.frames() == []
    assert net.stack.counters.arp_replies == 0


def test_a_guestfwd_server_answers_arp_with_its_own_mac() -> None:
    net = StackNet("guestfwd=tcp:10.0.2.100:80-cmd:cat")
    a = net.guest()
    net.send(a.port, arp_request("10.0.2.100"))
    reply = only(net.frames())
    assert reply.src == "52:55:0a:00:02:64" and reply[ARP].psrc == "10.0.2.100"


def test_arp_binds_guest_addresses_to_their_port() -> None:
    """Adapted: the old stack learned IP->MAC from any ARP it saw; here a broadcast ARP binds the sender's
    address to its MAC and port (a claim, guests.py), and a unicast between guests, flooded to the stack,
    is not even looked at."""
    net = StackNet("hostfwd=udp::5555-:55")
    a, b = net.guest("a"), net.guest("b", GUEST2_MAC, GUEST2)
    net.send(a.port, arp_request(GUEST2, psrc=GUEST, hwsrc=GUEST_MAC))  # not answered, but bound
    net.send(b.port, Ether(src=GUEST2_MAC, dst=GUEST_MAC) / ARP(op=2, hwsrc=GUEST2_MAC, psrc=GUEST2,
                                                               hwdst=GUEST_MAC, pdst=GUEST))
    assert net.stack.guests.lookup(ip_bytes(GUEST2)) is None
    assert net.stack.counters.not_for_us == 1
    net.send(b.port, arp_request("10.0.2.77", psrc=GUEST2, hwsrc=GUEST2_MAC))  # a broadcast one binds
    assert net.frames() == []
    owner_a, owner_b = net.stack.guests.lookup(ip_bytes(GUEST)), net.stack.guests.lookup(ip_bytes(GUEST2))
    assert owner_a is not None and owner_a[0].port is a.port and owner_a[1] == mac_bytes(GUEST_MAC)
    assert owner_b is not None and owner_b[0].port is b.port and owner_b[1] == mac_bytes(GUEST2_MAC)
    # and it is used: a datagram for the guest goes straight to its MAC, no ARP request first
    net.stack.hostfwd_udp(0, ("127.0.0.1", 41000), b"x", net.now)
    frame = only(net.frames())
    assert frame.type == ETH_P_IP and frame.dst == GUEST_MAC


def test_arp_does_not_bind_the_virtual_hosts_or_outside_addresses() -> None:
    net = StackNet()
    b = net.guest("b", GUEST2_MAC, GUEST2)
    for spa in (HOST, DNS_IP, OUTSIDE, "10.0.2.255", "10.0.2.0"):
        net.send(b.port, arp_request(DNS_IP, psrc=spa, hwsrc=GUEST2_MAC))
    assert net.frames() == []  # spoofed senders get no answer either
    assert net.stack.counters.bad_source == 5
    net.send(b.port, arp_request(DNS_IP, psrc="0.0.0.0", hwsrc=GUEST2_MAC))  # an RFC 5227 probe: answered
    assert only(net.frames())[ARP].psrc == DNS_IP
    assert net.stack.guests.ip_owner == {}


def test_arp_from_another_ports_address_is_refused() -> None:
    net = StackNet()
    a, b = net.guest("a", dhcp=True), net.guest("b", GUEST2_MAC, GUEST2)
    net.send(b.port, arp_request(HOST, psrc=a.ip, hwsrc=GUEST2_MAC))
    assert net.frames() == []
    owner = net.stack.guests.lookup(ip_bytes(a.ip))
    assert owner is not None and owner[0].port is a.port


@pytest.mark.parametrize("cut", [14, 20, 41])
def test_truncated_arp_is_counted(cut: int) -> None:
    net = StackNet()
    a = net.guest()
    net.stack.receive_frame(bytes(arp_request(HOST))[:cut], a.port, None, net.now)  # not padded: a runt
    assert net.frames() == []
    assert net.stack.counters.arp_bad == 1


def test_arp_request_for_a_broadcast_ethernet_with_bad_fields_is_dropped() -> None:
    net = StackNet()
    a = net.guest()
    net.send(a.port, Ether(src=GUEST_MAC, dst=BCAST_MAC) / ARP(op=3, hwsrc=GUEST_MAC, psrc=GUEST, pdst=HOST))
    net.send(a.port, Ether(src=GUEST_MAC, dst=BCAST_MAC) / ARP(ptype=0x86DD, hwsrc=GUEST_MAC, psrc=GUEST, pdst=HOST))
    assert net.frames() == []
    assert net.stack.counters.arp_bad == 2
