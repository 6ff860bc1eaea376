"""Real QEMU 7.2 guests (TCG) attached to ``vmlan run`` over every QEMU socket-family link.

Each pair of guests pings both ways and fetches a multi-megabyte file from the other's busybox httpd
with a matching checksum, so the whole path (framing, hub, the link's socket options) carries real
TCP traffic. All sockets are on loopback.
"""

from __future__ import annotations

import itertools
import socket
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP
from scapy.layers.l2 import ARP, Ether
from scapy.utils import rdpcap

pytestmark = pytest.mark.guest

_groups = itertools.count(1)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def link(kind: str, ident: str, tmp: Path) -> tuple[str, list[str]]:
    """(vmlan's -netdev, the guest's netdev args) for one guest attached over ``kind``."""
    if kind == "stream":
        path = tmp / f"{ident}.sock"
        return (f"stream,id={ident},server=on,addr.type=unix,addr.path={path}",
                ["stream", "server=off", "addr.type=unix", f"addr.path={path}"])
    if kind == "socket":
        port = free_port()
        return f"socket,id={ident},listen=127.0.0.1:{port}", ["socket", f"connect=127.0.0.1:{port}"]
    if kind == "mcast":
        group, port = f"239.255.77.{next(_groups)}", free_port(socket.SOCK_DGRAM)
        return (f"socket,id={ident},mcast={group}:{port},localaddr=127.0.0.1",
                ["socket", f"mcast={group}:{port}", "localaddr=127.0.0.1"])
    if kind == "streamtcp":
        port = free_port()
        return (f"stream,id={ident},server=on,addr.type=inet,addr.host=127.0.0.1,addr.port={port}",
                ["stream", "server=off", "addr.type=inet", "addr.host=127.0.0.1", f"addr.port={port}"])
    if kind == "udp":
        ours, theirs = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
        return (f"socket,id={ident},udp=127.0.0.1:{theirs},localaddr=127.0.0.1:{ours}",
                ["socket", f"udp=127.0.0.1:{ours}", f"localaddr=127.0.0.1:{theirs}"])
    if kind == "dgraminet":
        ours, theirs = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
        return (f"dgram,id={ident},local.type=inet,local.host=127.0.0.1,local.port={ours},"
                f"remote.type=inet,remote.host=127.0.0.1,remote.port={theirs}",
                ["dgram", "local.type=inet", "local.host=127.0.0.1", f"local.port={theirs}",
                 "remote.type=inet", "remote.host=127.0.0.1", f"remote.port={ours}"])
    if kind == "dgram":
        ours, theirs = tmp / f"{ident}.v.dgram", tmp / f"{ident}.g.dgram"
        return (f"dgram,id={ident},local.type=unix,local.path={ours},remote.type=unix,remote.path={theirs}",
                ["dgram", "local.type=unix", f"local.path={theirs}", "remote.type=unix", f"remote.path={ours}"])
    raise ValueError(kind)


def boot_pair(kind_a, kind_b, make_guest, vmlan_run, tmp_path, extra=()):
    nd_a, guest_a = link(kind_a, "ga", tmp_path)
    nd_b, guest_b = link(kind_b, "gb", tmp_path)
    vm = vmlan_run("-netdev", nd_a, "-netdev", nd_b, *extra)
    a = make_guest("a", guest_a, mac="52:54:00:00:0a:01")
    b = make_guest("b", guest_b, mac="52:54:00:00:0a:02")
    a.wait_ready()
    b.wait_ready()
    a.check("ip addr add 10.0.0.1/24 dev eth0")
    b.check("ip addr add 10.0.0.2/24 dev eth0")
    return vm, a, b


def exchange(a, b, size_kib: int = 4096) -> None:
    a.check("ping -c 3 -W 5 10.0.0.2")
    b.check("ping -c 3 -W 5 10.0.0.1")
    for server, client, addr in ((a, b, "10.0.0.1"), (b, a, "10.0.0.2")):
        server.check(f"dd if=/dev/urandom of=/www/blob bs=1024 count={size_kib} 2>/dev/null && httpd -p 80 -h /www")
        want = server.check("sha256sum /www/blob").split()[0]
        client.check(f"timeout 120 wget -q -O /tmp/blob http://{addr}/blob", timeout=150)
        assert client.check("sha256sum /tmp/blob").split()[0] == want


@pytest.mark.parametrize(
    ("kind_a", "kind_b"),
    [("stream", "stream"), ("socket", "socket"), ("mcast", "mcast"), ("dgram", "dgram"),
     ("stream", "mcast"), ("socket", "dgram"), ("streamtcp", "udp"), ("dgraminet", "stream")],
)
def test_two_guests_ping_and_move_files(kind_a, kind_b, make_guest, vmlan_run, tmp_path):
    vm, a, b = boot_pair(kind_a, kind_b, make_guest, vmlan_run, tmp_path)
    exchange(a, b)
    log = vm.stop()
    if kind_a in ("stream", "socket"):
        assert "peer ga" in log and "connected" in log


def test_two_guests_share_one_listening_netdev(make_guest, vmlan_run, tmp_path):
    """QEMU's listener takes one peer at a time; vmlan's takes any number, each its own port."""
    path = tmp_path / "lan.sock"
    vm = vmlan_run("-netdev", f"stream,id=lan,server=on,addr.type=unix,addr.path={path}")
    guest_nd = ["stream", "server=off", "addr.type=unix", f"addr.path={path}"]
    a = make_guest("a", guest_nd, mac="52:54:00:00:0b:01")
    b = make_guest("b", guest_nd, mac="52:54:00:00:0b:02")
    a.wait_ready()
    b.wait_ready()
    a.check("ip addr add 10.0.0.1/24 dev eth0")
    b.check("ip addr add 10.0.0.2/24 dev eth0")
    exchange(a, b, size_kib=2048)
    log = vm.stop()
    assert "peer lan.1 connected" in log and "peer lan.2 connected" in log


def test_pcap_of_a_port_opens_in_tshark_and_scapy(make_guest, vmlan_run, tmp_path):
    pcap = tmp_path / "a.pcap"
    vm, a, _b = boot_pair("stream", "socket", make_guest, vmlan_run, tmp_path,
                         extra=("-object", f"filter-dump,id=d0,netdev=ga,file={pcap}"))
    a.check("ping -c 3 -W 5 10.0.0.2")
    vm.stop()
    packets = rdpcap(str(pcap))
    arps = [p for p in packets if ARP in p]
    echoes = [p for p in packets if ICMP in p]
    assert any(p[ARP].op == 1 and p[ARP].pdst == "10.0.0.2" for p in arps)
    assert any(p[ARP].op == 2 and p[ARP].psrc == "10.0.0.2" for p in arps)
    assert sum(p[ICMP].type == 8 for p in echoes) == 3 and sum(p[ICMP].type == 0 for p in echoes) == 3
    out = subprocess.run(["tshark", "-r", str(pcap), "-Y", "icmp || arp", "-T", "fields", "-e", "frame.protocols"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    protocols = out.stdout.split()
    assert sum("icmp" in p for p in protocols) == 6 and any(p.endswith(":arp") for p in protocols)


@pytest.mark.parametrize("mode", ["switch", "hub"])
def test_switch_keeps_unicast_away_from_a_third_guest(mode, make_guest, vmlan_run, tmp_path):
    """Read from the third guest's pcap: with a switch, A<->B unicast never reaches it; with a hub
    (the control case, proving the check can fail) it does."""
    args = ["-hub", f"id=0,mode={mode}"]
    guests_nd = []
    for i in (1, 2, 3):
        nd, guest_nd = link("stream", f"g{i}", tmp_path)
        args += ["-netdev", nd]
        guests_nd.append(guest_nd)
    pcap = tmp_path / "g3.pcap"
    args += ["-object", f"filter-dump,id=d3,netdev=g3,file={pcap}"]
    vm = vmlan_run(*args)
    macs = [f"52:54:00:00:0c:0{i}" for i in (1, 2, 3)]
    guests = [make_guest(f"g{i + 1}", guests_nd[i], mac=macs[i]) for i in range(3)]
    for i, g in enumerate(guests):
        g.wait_ready()
        g.check(f"ip addr add 10.0.0.{i + 1}/24 dev eth0")
    a, b, _ = guests
    a.check("ping -c 5 -W 5 10.0.0.2")
    b.check("dd if=/dev/urandom of=/www/blob bs=1024 count=1024 2>/dev/null && httpd -p 80 -h /www")
    a.check("timeout 60 wget -q -O /tmp/blob http://10.0.0.2/blob", timeout=90)
    vm.stop()
    frames = [Ether(bytes(p)) for p in rdpcap(str(pcap))]
    to_a_or_b = [f for f in frames if f.dst in macs[:2]]
    assert any(f.dst == "ff:ff:ff:ff:ff:ff" and ARP in f for f in frames), "capture saw no broadcast at all"
    if mode == "switch":
        assert to_a_or_b == [], f"{len(to_a_or_b)} unicast frames between A and B reached the third guest"
    else:
        assert len(to_a_or_b) > 100


def test_qemu_mcast_guest_and_vmlan_port_exchange_frames(make_guest, vmlan_run, tmp_path):
    """A QEMU guest on ``-netdev socket,mcast=`` and vmlan's mcast port on the same group talk both
    ways: the test, attached to vmlan by a stream socket, asks the guest for its MAC (ARP) and gets
    the answer back."""
    nd, guest_nd = link("mcast", "m", tmp_path)
    path = tmp_path / "test.sock"
    vmlan_run("-netdev", nd, "-netdev", f"stream,id=t,server=on,addr.type=unix,addr.path={path}")
    g = make_guest("g", guest_nd, mac="52:54:00:00:0d:01")
    g.wait_ready()
    g.check("ip addr add 10.0.0.1/24 dev eth0")
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    peer.connect(str(path))
    peer.settimeout(2)
    me = "02:00:00:00:0d:99"
    request = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=me) / ARP(op=1, hwsrc=me, psrc="10.0.0.9", pdst="10.0.0.1"))
    reply = None
    buf = b""
    for _ in range(10):
        peer.sendall(len(request).to_bytes(4, "big") + request)
        try:
            while reply is None:
                buf += peer.recv(65536)
                while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                    size = int.from_bytes(buf[:4], "big")
                    frame = Ether(buf[4 : 4 + size])
                    buf = buf[4 + size :]
                    if ARP in frame and frame[ARP].op == 2 and frame[ARP].psrc == "10.0.0.1":
                        reply = frame
        except TimeoutError:
            continue
        break
    assert reply is not None, "no ARP reply from the guest on the multicast group"
    assert reply.src == "52:54:00:00:0d:01" and reply.dst == me
    # And the guest learned our address from the request that reached it through the group.
    assert "10.0.0.9" in g.check("ip neigh show dev eth0")
