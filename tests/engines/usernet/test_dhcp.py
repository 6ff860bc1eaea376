"""DHCP through the stack (services.py, engines/dhcp.py): leases bind addresses to the requesting port."""

from __future__ import annotations

from typing import Any

from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from tests.engines.usernet.stacknet import (
    BCAST_MAC,
    DNS_IP,
    GUEST,
    GUEST2,
    GUEST2_MAC,
    GUEST_MAC,
    HOST,
    HOST_MAC,
    UDHCPC_PRL,
    Port,
    StackNet,
    ip_bytes,
    mac_bytes,
    only,
)


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


def dhcp_reply(net: StackNet, mac: str, kind: int, xid: int) -> tuple[Packet, dict[str, Any]]:
    frame = only(net.frames())
    assert frame.dst in (mac, BCAST_MAC)
    assert (frame[IP].src, frame[UDP].sport, frame[UDP].dport) == (HOST, 67, 68)
    bootp = frame[BOOTP]
    assert bootp.op == 2 and bootp.xid == xid and bootp.chaddr[:6] == mac_bytes(mac)
    opts = dhcp_options(frame)
    assert opts["message-type"] == (kind,)
    assert opts["server_id"] == (HOST,)
    return frame, opts


def dora(net: StackNet, port: Port, mac: str, xid: int) -> tuple[str, dict[str, Any]]:
    net.send(port, dhcp_frame("discover", mac, xid=xid))
    offer, _ = dhcp_reply(net, mac, 2, xid)
    addr = offer[BOOTP].yiaddr
    net.send(port, dhcp_frame("request", mac, xid=xid, requested=addr, server_id=HOST))
    ack, ack_opts = dhcp_reply(net, mac, 5, xid)
    assert ack[BOOTP].yiaddr == addr
    assert net.actions() == []
    return addr, ack_opts


def test_dhcp_discover_offer_request_ack() -> None:
    net = StackNet()
    a = Port("a")
    addr, opts = dora(net, a, GUEST_MAC, 0x1234)
    assert addr == GUEST
    assert opts["subnet_mask"] == ("255.255.255.0",)
    assert opts["router"] == (HOST,)
    assert opts["name_server"] == (DNS_IP,)
    assert [(lease.mac, lease.ip) for lease in net.stack.leases()] == [(mac_bytes(GUEST_MAC), ip_bytes(GUEST))]
    owner = net.stack.guests.lookup(ip_bytes(GUEST))
    assert owner is not None and owner[0].port is a and owner[1] == mac_bytes(GUEST_MAC)


def test_dhcp_renewal_unicast_to_the_server() -> None:
    net = StackNet()
    a = Port("a")
    assert dora(net, a, GUEST_MAC, 1)[0] == GUEST
    renew = (
        Ether(src=GUEST_MAC, dst=HOST_MAC)
        / IP(src=GUEST, dst=HOST)
        / UDP(sport=68, dport=67)
        / BOOTP(chaddr=mac_bytes(GUEST_MAC), xid=9, ciaddr=GUEST)
        / DHCP(options=[("message-type", "request"), ("param_req_list", UDHCPC_PRL), "end"])
    )
    net.send(a, renew)
    ack, _ = dhcp_reply(net, GUEST_MAC, 5, 9)
    assert ack[BOOTP].yiaddr == GUEST and ack[IP].dst in (GUEST, "255.255.255.255")


def test_dhcp_second_guest_gets_the_next_address() -> None:
    """Adapted: the second guest is a second port (a guest is known by its port)."""
    net = StackNet()
    a, b = Port("a"), Port("b")
    assert dora(net, a, GUEST_MAC, 1)[0] == GUEST
    assert dora(net, b, GUEST2_MAC, 2)[0] == GUEST2
    assert dora(net, a, GUEST_MAC, 3)[0] == GUEST  # the first keeps its lease


def test_dhcp_restrict_omits_router_and_dns() -> None:
    net = StackNet("restrict=on")
    addr, opts = dora(net, Port("a"), GUEST_MAC, 7)
    assert addr == GUEST
    assert "router" not in opts and "name_server" not in opts  # options 3 and 6
    assert opts["subnet_mask"] == ("255.255.255.0",)


def test_dhcp_from_a_source_port_other_than_68_is_not_served() -> None:
    net = StackNet()
    a = Port("a")
    frame = dhcp_frame("discover", GUEST_MAC)
    frame[UDP].sport = 6800
    net.send(a, frame)
    assert net.frames() == [] and net.stack.leases() == []


def test_dhcp_for_another_ports_mac_is_refused() -> None:
    """A port cannot take a lease for a MAC another port uses (guests.py)."""
    net = StackNet()
    a, b = Port("a"), Port("b")
    dora(net, a, GUEST_MAC, 1)
    net.send(b, dhcp_frame("discover", GUEST_MAC, xid=2))
    assert net.frames() == []
    assert net.stack.guests.counters.mac_spoofed == 1


def test_dhcp_with_ip_options_is_served() -> None:
    """The 0.0.0.0 source is allowed for UDP to port 67 only: the port must be read after the IP options
    (it was read at offset 20, inside the options, and the DISCOVER refused as a spoofed source)."""
    from scapy.layers.inet import IPOption_Router_Alert

    net = StackNet()
    a = Port("a")
    frame = dhcp_frame("discover", GUEST_MAC)
    frame[IP].options = [IPOption_Router_Alert()]
    del frame[IP].ihl, frame[IP].len, frame[IP].chksum
    net.send(a, Ether(bytes(frame)))
    offer, _ = dhcp_reply(net, GUEST_MAC, 2, 0x1234)
    assert offer[BOOTP].yiaddr == GUEST
    assert net.stack.counters.bad_source == 0


def test_a_zero_source_with_ip_options_is_still_only_for_dhcp() -> None:
    from scapy.layers.inet import IPOption_Router_Alert

    net = StackNet()
    a = Port("a")
    pkt = Ether(src=GUEST_MAC, dst=HOST_MAC) / IP(src="0.0.0.0", dst=HOST, options=[IPOption_Router_Alert()]) / UDP(
        sport=68, dport=9999) / b"x"
    net.send(a, pkt)
    assert net.frames() == [] and net.actions() == []
    assert net.stack.counters.bad_source == 1
