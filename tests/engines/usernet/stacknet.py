"""Drive a :class:`~vmlan.engines.usernet.UserStack` in memory: scapy frames in, decoded frames and
actions out, a fake clock that only moves when a test says so. Ports are plain objects (the stack only
needs them hashable), one per guest, as the hub would pass them."""

from __future__ import annotations

import dataclasses
from typing import Any

from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from vmlan.config.qemuopts import parse_qemuopts
from vmlan.config.usernet import parse_user_netdev, stack_config
from vmlan.engines.usernet import StackConfig, UserStack

HOST = "10.0.2.2"
DNS_IP = "10.0.2.3"
HOST_MAC = "52:55:0a:00:02:02"
DNS_MAC = "52:55:0a:00:02:03"
BCAST_MAC = "ff:ff:ff:ff:ff:ff"


def build_config(options: str = "", **changes: Any) -> StackConfig:
    text = "user,id=u0,dns-server=127.0.0.1:5353" + ("," + options if options else "")
    cfg = stack_config(parse_user_netdev(parse_qemuopts(text)), resolv_conf="/nonexistent")
    return dataclasses.replace(cfg, **changes) if changes else cfg


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


class Port:
    """A stand-in for a hub port (the stack keys guests by it)."""

    def __init__(self, name: str, offload_ok: bool = False) -> None:
        self.name = name
        self.offload_ok = offload_ok

    def __repr__(self) -> str:
        return f"<Port {self.name}>"


class StackNet:
    def __init__(self, options: str = "", *, cfg: StackConfig | None = None, **changes: Any) -> None:
        self.cfg = cfg if cfg is not None else build_config(options, **changes)
        self.stack = UserStack(self.cfg, secret=b"k" * 16, port_tso=lambda p: bool(getattr(p, "offload_ok", False)))
        self.now = 100.0

    def send(self, port: Port, pkt: Packet | bytes) -> None:
        raw = bytes(pkt)
        if len(raw) < 60:
            raw += b"\0" * (60 - len(raw))  # a real NIC pads to Ethernet's minimum
        self.stack.receive_frame(raw, port, None, self.now)

    def frames(self) -> list[Ether]:
        return [Ether(f) for f, _off in self.stack.take_frames()]

    def actions(self) -> list[tuple[Any, ...]]:
        return self.stack.take_actions()

    def advance(self, seconds: float) -> None:
        """Move the clock, running every timer that comes due on the way (in order)."""
        end = self.now + seconds
        while True:
            deadline = self.stack.get_timer()
            if deadline is None or deadline > end:
                break
            self.now = max(self.now, deadline)
            self.stack.handle_timer(self.now)
        self.now = end

    def dhcp(self, port: Port, mac: str, xid: int = 0x1234) -> str:
        """A full DISCOVER/OFFER/REQUEST/ACK from ``mac`` on ``port``; returns the leased address."""
        chaddr = mac_bytes(mac) + b"\0" * 10

        def message(mtype: str, extra: list[Any]) -> Packet:
            return (Ether(src=mac, dst=BCAST_MAC) / IP(src="0.0.0.0", dst="255.255.255.255")
                    / UDP(sport=68, dport=67) / BOOTP(chaddr=chaddr, xid=xid)
                    / DHCP(options=[("message-type", mtype), *extra, "end"]))

        self.send(port, message("discover", []))
        offers = [f for f in self.frames() if f.haslayer(BOOTP)]
        assert offers, "no DHCPOFFER"
        addr = offers[-1][BOOTP].yiaddr
        self.send(port, message("request", [("server_id", HOST), ("requested_addr", addr)]))
        acks = [f for f in self.frames() if f.haslayer(DHCP) and ("message-type", 5) in f[DHCP].options]
        assert acks, "no DHCPACK"
        return str(acks[-1][BOOTP].yiaddr)
