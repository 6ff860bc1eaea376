"""Costs of the privileged backend (root), in a network namespace of its own.

Run with ``python -m benchmarks.privileged`` from the repository root (needs root and nft). Prints the
median time to start and to stop a nat network shaped like libvirt's default (bridge, nftables table,
ip_forward, DHCP and DNS sockets), to attach and to detach one guest TAP, and the DNS and DHCP request
rates its services sustain on the bridge (static DNS answers over UDP, DISCOVER -> OFFER), with the
client in a second namespace on a veth pair, 32 requests in flight.
"""

from __future__ import annotations

import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from netns import Namespaces, sh
from privnet import NetThread, in_netns
from servers import build_dns_query
from vmlan.config.libvirt import DEFAULT_NETWORK_XML, parse_interface, parse_network
from vmlan.control.privileged import PrivilegedBackend

ROUNDS = 10
WINDOW = 32
REQUESTS = 20000


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.1f} ms (min {min(samples) * 1000:.1f})"


def dns_rate(gateway: str) -> float:
    query = build_dns_query("host.vmlan.internal")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.connect((gateway, 53))
        start = time.perf_counter()
        sent = received = 0
        while received < REQUESTS:
            while sent < REQUESTS and sent - received < WINDOW:
                s.send(query)
                sent += 1
            s.recv(2048)
            received += 1
        return REQUESTS / (time.perf_counter() - start)


def discover(mac: bytes, xid: int) -> bytes:
    head = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, bytes(4), bytes(4), bytes(4),
                       bytes(4), mac + bytes(10), b"", b"")
    return head + b"\x63\x82\x53\x63" + bytes((53, 1, 1, 255)) + bytes(60)


def dhcp_rate(device: str, count: int = 5000) -> float:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        s.bind(("0.0.0.0", 68))
        s.settimeout(5)
        msg = discover(b"\x52\x54\x00\xbe\x00\x01", 7)
        start = time.perf_counter()
        sent = received = 0
        while received < count:
            while sent < count and sent - received < WINDOW:
                s.sendto(msg, ("255.255.255.255", 67))
                sent += 1
            s.recv(2048)
            received += 1
        return count / (time.perf_counter() - start)


def main() -> None:
    ns = Namespaces()
    runtime = Path(tempfile.mkdtemp(prefix="vmlan-bench-"))
    try:
        h, c = ns.add("h"), ns.add("c")
        host = NetThread(h, runtime)
        backend = PrivilegedBackend(resolv_conf="/nonexistent")
        net = parse_network(DEFAULT_NETWORK_XML.replace("<bridge name='virbr0'/>",
                                                        "<bridge name='virbr0' stp='off'/>"))
        iface = parse_interface("<interface type='network'><mac address='52:54:00:be:00:01'/>"
                                "<source network='default'/></interface>")
        starts, stops, attaches, detaches = [], [], [], []
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            running = host.run(backend.start(net, host.context()))
            t1 = time.perf_counter()
            target = host.call(running.attach, iface, 1000).target
            t2 = time.perf_counter()
            host.call(running.detach, target)
            t3 = time.perf_counter()
            host.run(running.stop())
            t4 = time.perf_counter()
            starts.append(t1 - t0)
            attaches.append(t2 - t1)
            detaches.append(t3 - t2)
            stops.append(t4 - t3)
        print(f"start (bridge, nft, ip_forward, DHCP+DNS): {ms(starts)}")
        print(f"stop: {ms(stops)}")
        print(f"attach (persistent TAP on the bridge): {ms(attaches)}")
        print(f"detach: {ms(detaches)}")
        running = host.run(backend.start(net, host.context()))
        sh(f"ip -n {h} link add vch type veth peer name vc netns {c}", f"ip -n {h} link set vch master virbr0 up",
           f"ip -n {c} link set vc up", f"ip -n {c} addr add 192.168.122.50/24 dev vc")
        print(f"DNS static answers over UDP: {in_netns(c, lambda: dns_rate('192.168.122.1'), 120):,.0f} queries/s")
        print(f"DHCP DISCOVER -> OFFER (broadcast): {in_netns(c, lambda: dhcp_rate('vc'), 120):,.0f} requests/s")
        host.run(running.stop())
        host.close()
    finally:
        ns.close()


if __name__ == "__main__":
    main()
