"""``info usernet`` as text: IPv6 flows and addresses print as IPv6 (flows hold 16-byte addresses), each
guest's IPv6 addresses follow its MAC's row, and the parser the interop tests use still reads the rows."""

from __future__ import annotations

from typing import Any

from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether

from tests.engines.usernet.stacknet import GUEST, GUEST_MAC, Port, StackNet, udp
from tests.interop.guestnet import parse_snapshot
from vmlan.control.monitor import info_usernet

G6 = "fec0::5054:ff:fe12:3456"


class FakeStackPort:
    """What info_usernet reads of a UserNetPort."""

    name = "u0"

    def __init__(self, net: StackNet) -> None:
        self.stack = net.stack
        self.now = net.now

    def loop_time(self) -> float:
        return self.now

    def forward_fds(self) -> list[Any]:
        return []

    def fd_of(self, fid: int) -> int:
        return 10 + fid


def test_ipv6_flows_and_addresses_render_and_parse() -> None:
    net = StackNet()
    a = Port("a")
    net.send(a, Ether(src=GUEST_MAC, dst="52:55:0a:00:02:02") / udp("192.0.2.1", 9, b"v4"))
    for pkt in (IPv6(src=G6, dst="2001:db8::53") / UDP(sport=5000, dport=9999) / b"q",
                IPv6(src=G6, dst="fec0::2") / TCP(sport=40000, dport=8080, flags="S", seq=1),
                IPv6(src=G6, dst="2001:db8::1") / ICMPv6EchoRequest(id=7, seq=1)):
        net.send(a, Ether(src=GUEST_MAC, dst="52:56:00:00:00:02") / pkt)
    net.actions()
    text = info_usernet(FakeStackPort(net), 0)  # type: ignore[arg-type]
    lines = text.splitlines()
    assert any(line.split()[:2] == ["UDP[240", "sec]"] and G6 in line and "2001:db8::53" in line for line in lines)
    assert any(line.lstrip().startswith("TCP[") and G6 in line and "fec0::2" in line for line in lines), text
    assert any(line.lstrip().startswith("ICMP[") and G6 in line for line in lines), text
    assert any(line.split() == [G6] for line in lines), text
    snap = parse_snapshot(lines)
    row = snap.guest("a")
    assert row.macs == {GUEST_MAC: GUEST} and (row.tcp, row.udp, row.icmp) == (1, 2, 1), text
