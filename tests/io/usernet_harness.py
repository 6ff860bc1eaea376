"""A UserNetPort on a hub with a test port standing in for the guest, on a real asyncio loop.

The guest is played by scapy-built frames handed to the hub (``IoNet.send``); what the stack sends it is
collected by :class:`GuestPort` and cross-checked like every emitted frame (tests/engines/usernet/
stacknet.check_frame). The host side is real sockets on loopback, or inside a network namespace the test
creates (:func:`run_in_netns`: a thread of this process moved into a new namespace, its asyncio loop
with it, so every socket the stack opens lives there).
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import subprocess
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from tests.engines.usernet.stacknet import BCAST_MAC, GUEST_MAC, HOST, Guest, GuestTcp, check_frame, mac_bytes
from vmlan.config.qemuopts import parse_qemuopts
from vmlan.config.usernet import parse_user_netdev, stack_config
from vmlan.io.usernet import UserNetPort
from vmlan.lan import Hub, Port
from vmlan.wire import BytesLike
from vmlan.wire.vnet import Offload

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
TIMEOUT = 5.0


class GuestPort(Port):
    """The guest's attachment: keeps every frame the hub delivers (already cut to wire size)."""

    def __init__(self, name: str = "guest") -> None:
        super().__init__(name)
        self.received: list[bytes] = []

    def transmit(self, frame: BytesLike, src: Port, offload: Offload | None) -> bool:
        if not isinstance(src, GuestPort):  # what other guests send, flooded by the hub, is not the stack's
            self.received.append(bytes(frame))
        return True


class IoNet:
    def __init__(self, options: str = "", **changes: Any) -> None:
        """``options`` for ``-netdev user`` (dns-server defaults to 127.0.0.1:9, discard); ``changes``
        replace fields of the StackConfig built from them (``tcp=TcpParams(...)``)."""
        self.loop = asyncio.get_running_loop()
        if "dns-server=" not in options:
            options = "dns-server=127.0.0.1:9" + ("," + options if options else "")
        user = parse_user_netdev(parse_qemuopts("user,id=u0," + options))
        cfg = stack_config(user, resolv_conf="/nonexistent")
        self.user = UserNetPort(user, self.loop, dataclasses.replace(cfg, **changes) if changes else cfg)
        self.stack = self.user.stack
        self.hub = Hub(0)
        self.guest_port = GuestPort()
        self.hub.attach(self.user)
        self.hub.attach(self.guest_port)
        self.user.start()
        self.seen: list[Ether] = []  # every frame the guest got, checked, in order
        self._taken = 0

    def guest(self, mac: str = GUEST_MAC, ip: str = "10.0.2.15") -> Guest:
        return Guest(self.guest_port, mac, ip)  # type: ignore[arg-type]

    def send(self, port: Any, pkt: Packet | bytes) -> None:
        raw = bytes(pkt)
        self.hub.input(port, raw.ljust(60, b"\0"))

    def _collect(self) -> None:
        received = self.guest_port.received
        while self._taken < len(received):
            self.seen.append(check_frame(received[self._taken]))
            self._taken += 1

    async def until(self, cond: Callable[[], T | None], timeout: float = TIMEOUT, what: str = "condition") -> T:
        """Wait (on the running loop) until ``cond()`` is true; returns its value."""
        deadline = self.loop.time() + timeout
        while True:
            self._collect()
            value = cond()
            if value:
                return value
            if self.loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.002)

    async def frame(self, pred: Callable[[Ether], bool], what: str = "a frame") -> Ether:
        """The first frame from now on that matches ``pred`` (frames before it are skipped)."""
        start = len(self.seen)

        def find() -> Ether | None:
            for f in self.seen[start:]:
                if pred(f):
                    return f
            return None

        return await self.until(find, what=what)

    async def segments(self, t: GuestTcp, pred: Callable[[Any], bool], what: str = "a segment") -> list[Any]:
        """Wait for a segment of connection ``t`` matching ``pred``; returns all of t's segments up to it."""
        start = len(self.seen)

        def find() -> list[Any] | None:
            mine = t.mine(self.seen[start:])
            for i, seg in enumerate(mine):
                if pred(seg):
                    return mine[: i + 1]
            return None

        return await self.until(find, what=what)

    async def dhcp(self, mac: str = GUEST_MAC) -> str:
        chaddr = mac_bytes(mac) + b"\0" * 10

        def message(mtype: str, extra: list[Any]) -> Packet:
            return (Ether(src=mac, dst=BCAST_MAC) / IP(src="0.0.0.0", dst="255.255.255.255")
                    / UDP(sport=68, dport=67) / BOOTP(chaddr=chaddr, xid=5)
                    / DHCP(options=[("message-type", mtype), *extra, "end"]))

        self.send(self.guest_port, message("discover", []))
        offer = await self.frame(lambda f: f.haslayer(BOOTP), "DHCPOFFER")
        addr = offer[BOOTP].yiaddr
        self.send(self.guest_port, message("request", [("server_id", HOST), ("requested_addr", addr)]))
        await self.frame(lambda f: f.haslayer(DHCP) and ("message-type", 5) in f[DHCP].options, "DHCPACK")
        return str(addr)

    def close(self) -> None:
        self.user.close()


async def with_net(options: str, body: Callable[[IoNet], Awaitable[T]], **changes: Any) -> T:
    net = IoNet(options, **changes)
    try:
        return await body(net)
    finally:
        net.close()
        assert net.stack.faults.counts == {}, net.stack.faults.first


def run(options: str, body: Callable[[IoNet], Awaitable[T]], **changes: Any) -> T:
    return asyncio.run(with_net(options, body, **changes))


def run_in_netns(setup: list[str], options: str, body: Callable[[IoNet], Awaitable[T]]) -> T:
    """Run ``body`` on a loop in a thread moved into a new network namespace (gone when the thread
    ends), after the ``ip`` commands in ``setup`` have configured it."""
    result: list[Any] = []

    def thread() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
            for cmd in ["ip link set lo up", *setup]:
                subprocess.run(cmd.split(), check=True, capture_output=True, timeout=10)
            result.append(("ok", asyncio.run(with_net(options, body))))
        except BaseException as exc:  # handed to the test's thread
            result.append(("error", exc))

    t = threading.Thread(target=thread)
    t.start()
    t.join(60)
    assert result, "the namespace thread did not finish"
    kind, value = result[0]
    if kind == "error":
        raise value
    return value  # type: ignore[no-any-return]
