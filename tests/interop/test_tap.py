"""Real QEMU 7.2 guests (TCG, on a stream socket: no offloads) and network namespaces through vmlan's
TAP and bridge links.

vmlan's hub runs in this process on a thread inside a namespace of the test's (tests/netns.py); the
guest attaches to a unix stream socket served by that hub. The far side is a namespace behind the TAP
(an up script moves the TAP there and gives it an address) or two namespaces on a Linux bridge.
The GSO test sends ~100 MB from the namespace to the guest: the kernel hands vmlan 64 KiB TCP
segments with partial checksums (counted at the TAP port, with their gso_size), the hub cuts them
into 1514-byte frames for the guest (the largest frame the guest's port was given is recorded), and
the guest's digest of what it received matches.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blob import expected_sha256
from netns import HubThread, Namespaces, sh, tag
from vmlan.config.netdev import StreamNetdev, parse_netdev
from vmlan.config.qemuopts import parse_qemuopts
from vmlan.config.tap import parse_bridge_netdev, parse_tap_netdev
from vmlan.io.bridge import BridgeLink
from vmlan.io.stream import StreamPort, StreamServer
from vmlan.io.tap import TapLink

pytestmark = pytest.mark.guest

BLOB = str(Path(__file__).resolve().parents[1] / "blob.py")


class MaxLen:
    """A FrameSink for a port's dump_tx: the number and the largest of the frames it was given."""

    def __init__(self) -> None:
        self.frames = 0
        self.largest = 0

    def write(self, frame: Any) -> None:
        self.frames += 1
        if len(frame) > self.largest:
            self.largest = len(frame)


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    ns = Namespaces()
    yield ns
    ns.close()


@pytest.fixture
def hub(namespaces: Namespaces) -> Iterator[HubThread]:
    h = HubThread(namespaces.add("h"))
    yield h
    h.close()


def in_ns(netns: str, *argv: str, timeout: float = 300) -> str:
    proc = subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv} in {netns}: {proc.stderr or proc.stdout}"
    return proc.stdout


def guest_link(hub: HubThread, tmp_path: Path) -> tuple[list[str], MaxLen]:
    """A stream server on the hub for the guest: (the guest's netdev args, the guest port's frame sizes)."""
    path = tmp_path / "vm.sock"
    cfg = parse_netdev(f"stream,id=vm,server=on,addr.type=unix,addr.path={path}")
    assert isinstance(cfg, StreamNetdev)
    server = StreamServer(cfg, hub.hub, hub.loop)
    sizes = MaxLen()

    def on_port(port: StreamPort) -> None:
        port.dump_tx = sizes

    server.on_port = on_port
    hub.start(server)
    return ["stream", "server=off", "addr.type=unix", f"addr.path={path}"], sizes


def serve_blob(netns: str, port: int, size: int, seed: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, BLOB, "serve", str(port), str(size),
                             str(seed)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
    return proc


def test_guest_and_namespace_through_a_tap_with_gso(tmp_path, namespaces, hub, make_guest):
    far = namespaces.add("n")
    up = tmp_path / "vmlan-ifup"
    up.write_text("#!/bin/sh\n" + textwrap.dedent(f"""\
        ip link set "$1" netns {far} && ip -n {far} addr add 10.80.0.1/24 dev "$1" && ip -n {far} link set "$1" up
        """))
    up.chmod(0o755)
    tap = hub.start(TapLink(parse_tap_netdev(parse_qemuopts(f"tap,id=t0,ifname=gt{tag()},script={up},downscript=no")),
                            hub.hub, hub.loop))
    port = tap.port
    assert port.vnet_hdr and port.offload_ok
    guest_args, to_guest = guest_link(hub, tmp_path)
    g = make_guest("g", guest_args, mac="52:54:00:00:1a:01")
    g.check("ip addr add 10.80.0.2/24 dev eth0")
    g.check("ping -c 3 -W 5 10.80.0.1")
    assert in_ns(far, sys.executable, BLOB, "ping", "10.80.0.2").strip() == "3 packets received"
    # guest -> namespace: busybox httpd in the guest, the namespace fetches.
    g.check("dd if=/dev/urandom of=/www/blob bs=1024 count=4096 2>/dev/null && httpd -p 80 -h /www")
    want = g.check("sha256sum /www/blob").split()[0]
    out = subprocess.run(["ip", "netns", "exec", far, sys.executable, "-c",
                          "import hashlib,urllib.request,sys;"
                          "print(hashlib.sha256(urllib.request.urlopen(sys.argv[1],timeout=60).read()).hexdigest())",
                          "http://10.80.0.2/blob"], capture_output=True, text=True, timeout=180)
    assert out.stdout.strip() == want, out.stderr
    # namespace -> guest, ~100 MB: the GSO direction.
    size, seed = 100_000_000, 11
    rx_gso_before = hub.call(lambda: port.rx_gso)
    server = serve_blob(far, 8000, size, seed)
    try:
        got = g.check("timeout 600 wget -q -O - http://10.80.0.1:8000/ | sha256sum", timeout=650).split()[0]
    finally:
        server.kill()
        server.wait()
    assert got == expected_sha256(size, seed)
    rx_gso, gso_max, gso_size, partial = hub.call(lambda: (port.rx_gso, port.gso_max, port.gso_size,
                                                           port.rx_csum_partial))
    assert rx_gso - rx_gso_before > 100, rx_gso  # 64 KiB segments from the kernel at MTU 1500
    assert gso_max > 1514 and gso_size in (1448, 1460), (gso_max, gso_size)
    assert partial >= rx_gso  # every one of them with its checksum left to us
    assert to_guest.largest <= 1514 and to_guest.frames > size // 1514, (to_guest.largest, to_guest.frames)


def test_guest_and_two_namespaces_on_a_linux_bridge(tmp_path, namespaces, hub, make_guest):
    hns = hub.netns
    assert hns is not None
    n1, n2 = namespaces.add("n1"), namespaces.add("n2")
    br = f"vbr{namespaces.tag}"
    sh(f"ip -n {hns} link add {br} type bridge", f"ip -n {hns} link set {br} up")
    for i, ns in ((1, n1), (2, n2)):
        sh(f"ip -n {hns} link add v{i}{namespaces.tag} type veth peer name eth0 netns {ns}",
           f"ip -n {hns} link set v{i}{namespaces.tag} master {br} up",
           f"ip -n {ns} addr add 10.81.0.1{i}/24 dev eth0", f"ip -n {ns} link set eth0 up")
    conf = tmp_path / "bridge.conf"
    conf.write_text(f"allow {br}\n")
    link = hub.start(BridgeLink(parse_bridge_netdev(parse_qemuopts(f"bridge,id=b0,br={br}")), hub.hub, hub.loop,
                                acl=str(conf)))
    assert link.mac.startswith("fe:")
    guest_args, _ = guest_link(hub, tmp_path)
    g = make_guest("g", guest_args, mac="52:54:00:00:1b:01")
    g.check("ip addr add 10.81.0.2/24 dev eth0")
    g.check("ping -c 2 -W 5 10.81.0.11 && ping -c 2 -W 5 10.81.0.12")
    for ns in (n1, n2):
        assert in_ns(ns, sys.executable, BLOB, "ping", "10.81.0.2").strip() == "3 packets received"
    size, seed = 20_000_000, 5
    server = serve_blob(n2, 8000, size, seed)
    try:
        got = g.check("timeout 300 wget -q -O - http://10.81.0.12:8000/ | sha256sum", timeout=330).split()[0]
    finally:
        server.kill()
        server.wait()
    assert got == expected_sha256(size, seed)
    ifname = link.port.ifname
    hub.call(link.close)
    assert subprocess.run(["ip", "-n", hns, "link", "show", ifname], capture_output=True).returncode != 0
