"""A guest is the port its frames arrive on: it cannot use another guest's MAC or address, nor dodge
its caps by forging sources (guests.py)."""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from tests.engines.usernet.stacknet import BCAST_MAC, HOST, HOST_MAC, Port, StackNet
from vmlan.engines.usernet import actions as A

MAC_A = "52:54:00:12:34:56"
MAC_B = "52:54:00:12:34:57"


def ping(mac: str, src: str, dst: str = HOST, ident: int = 7) -> Ether:
    return Ether(src=mac, dst=HOST_MAC) / IP(src=src, dst=dst) / ICMP(id=ident, seq=1) / b"identity"


def test_leases_bind_addresses_to_the_port_and_mac() -> None:
    net = StackNet()
    a, b = Port("a"), Port("b")
    assert net.dhcp(a, MAC_A) == "10.0.2.15"
    assert net.dhcp(b, MAC_B) == "10.0.2.16"
    owner_a = net.stack.guests.lookup(bytes((10, 0, 2, 15)))
    assert owner_a is not None and owner_a[0].port is a


def test_a_guest_using_another_guests_address_or_mac_is_dropped_and_counted() -> None:
    net = StackNet()
    a, b = Port("a"), Port("b")
    net.dhcp(a, MAC_A)
    net.dhcp(b, MAC_B)
    net.send(b, ping(MAC_B, "10.0.2.15"))  # B uses A's address
    assert net.frames() == []
    net.send(b, ping(MAC_A, "10.0.2.15"))  # B uses A's MAC and address
    assert net.frames() == []
    counters = net.stack.guests.counters
    assert counters.source_spoofed == 1 and counters.mac_spoofed == 1
    net.send(a, ping(MAC_A, "10.0.2.15"))  # A itself is still served
    (reply,) = net.frames()
    assert reply[IP].dst == "10.0.2.15" and reply.dst == MAC_A


def test_a_hostfwd_keeps_reaching_its_guest_when_another_forges_its_address() -> None:
    """The old stack re-learned IP->MAC from every frame: a forger took over A's forward."""
    net = StackNet("hostfwd=tcp:127.0.0.1:0-:22")
    a, b = Port("a"), Port("b")
    net.dhcp(a, MAC_A)
    net.dhcp(b, MAC_B)
    net.send(b, Ether(src=MAC_B, dst=BCAST_MAC) / ARP(op=2, hwsrc=MAC_B, psrc="10.0.2.15", pdst=HOST))
    net.send(b, ping(MAC_B, "10.0.2.15"))
    net.frames()
    fid = net.stack.hostfwd_tcp(0, ("127.0.0.1", 5555), net.now)
    assert fid is not None
    (syn,) = net.frames()
    assert syn.dst == MAC_A and syn[IP].dst == "10.0.2.15" and syn[TCP].flags == "S"


def test_a_statically_configured_guest_claims_a_free_address_but_not_a_leased_one() -> None:
    net = StackNet()
    a, b = Port("a"), Port("b")
    net.dhcp(a, MAC_A)
    net.send(b, ping(MAC_B, "10.0.2.50"))
    assert [f[IP].dst for f in net.frames()] == ["10.0.2.50"]
    net.send(b, ping(MAC_B, "10.0.2.15"))  # A's lease
    assert net.frames() == []
    # DHCP does not hand out the claimed address.
    c = Port("c")
    assert net.dhcp(c, "52:54:00:12:34:58") == "10.0.2.16"


def test_forged_sources_from_one_mac_stay_under_one_guests_caps() -> None:
    """One MAC sending SYNs from 10.0.2.4..254 got 64,256 host connects where the cap was 256."""
    net = StackNet("guest-tcp=8")
    a = Port("a")
    connects = 0
    for host in range(4, 255):
        src = f"10.0.2.{host}"
        for sport in (40000, 40001):
            net.send(a, Ether(src=MAC_A, dst=HOST_MAC) / IP(src=src, dst="192.0.2.1")
                     / TCP(sport=sport, dport=80, flags="S", seq=1))
            connects += sum(1 for x in net.actions() if x[0] == A.TCP_CONNECT)
        net.frames()
    assert connects <= 8
    guest = net.stack.guests.by_port[a]
    assert guest.tcp <= 8


def test_random_macs_from_one_port_cannot_drain_the_pool() -> None:
    net = StackNet("guest-macs=4")
    a = Port("a")
    leased = 0
    for n in range(16):
        mac = f"52:54:00:00:00:{n:02x}"
        try:
            net.dhcp(a, mac)
            leased += 1
        except AssertionError:
            pass
    assert leased == 4
    assert net.stack.guests.counters.mac_cap >= 12
    b = Port("b")
    assert net.dhcp(b, MAC_B) == "10.0.2.19"


def test_a_guest_leaving_releases_its_identity_and_closes_its_flows() -> None:
    net = StackNet()
    a = Port("a")
    net.dhcp(a, MAC_A)
    net.send(a, Ether(src=MAC_A, dst=HOST_MAC) / IP(src="10.0.2.15", dst="192.0.2.1") / UDP(sport=1, dport=2) / b"x")
    (send,) = net.actions()
    assert send[0] == A.UDP_SEND
    net.stack.port_left(a, net.now)
    assert net.actions() == [(A.UDP_CLOSE, send[1])]
    assert net.stack.guests.lookup(bytes((10, 0, 2, 15))) is None
    # The same guest on a new port gets its lease back.
    assert net.dhcp(Port("a2"), MAC_A) == "10.0.2.15"


def test_virtual_host_macs_and_multicast_sources_are_refused() -> None:
    net = StackNet()
    a = Port("a")
    net.send(a, ping(HOST_MAC, "10.0.2.15"))
    net.send(a, ping("01:00:5e:00:00:01", "10.0.2.15"))
    assert net.frames() == []
    assert net.stack.guests.counters.mac_spoofed == 2


def test_arp_with_a_sender_mac_other_than_the_frames_is_dropped() -> None:
    net = StackNet()
    a = Port("a")
    net.send(a, Ether(src=MAC_A, dst=BCAST_MAC) / ARP(op=1, hwsrc=MAC_B, psrc="10.0.2.15", pdst=HOST))
    assert net.frames() == []
    assert net.stack.counters.arp_bad == 1
