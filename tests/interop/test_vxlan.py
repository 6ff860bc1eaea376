"""``-netdev vxlan`` against the Linux kernel's vxlan driver, in network namespaces the test creates.

    namespace K (kernel VTEP)             namespace H (vmlan run)                  namespace B
    vx0 192.168.77.1/24 --- veth ua ====== veth uh --- -netdev vxlan   hub 0   -netdev tap --- TAP 192.168.77.2/24
        (ip link add ... type vxlan)    10.99.0.1 / 10.99.0.2 (fd00:99::1 / ::2)

The kernel's vx0 and the TAP in B share one Ethernet segment through vmlan's hub. Each test pings both
ways and moves data with a SHA-256 check in both directions (tests/blob.py), then reads vmlan's
counters (SIGUSR1). The veth underlay makes the kernel hand vmlan inner frames with unfinished
checksums and whole TSO segments; the counters show vmlan saw them, and the digests that it finished them.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blob import expected_sha256
from netns import Namespaces, sh, wait_for

TESTS = Path(__file__).resolve().parents[1]
BLOB = str(TESTS / "blob.py")
SNIFF = str(Path(__file__).with_name("vxsniff.py"))
KERNEL_INNER, PEER_INNER = "192.168.77.1", "192.168.77.2"
SIZE = 20_000_000


class Net:
    """The three namespaces and the veth underlay; ``vmlan`` starts vmlan run in H with a TAP into B."""

    def __init__(self, namespaces: Namespaces, tmp_path: Path) -> None:
        self.k, self.h, self.b = namespaces.add("k"), namespaces.add("h"), namespaces.add("b")
        self.tag = namespaces.tag
        self.tmp_path = tmp_path
        sh(f"ip -n {self.k} link add ua type veth peer name uh netns {self.h}",
           f"ip -n {self.k} addr add 10.99.0.1/24 dev ua", f"ip -n {self.h} addr add 10.99.0.2/24 dev uh",
           f"ip -n {self.k} addr add fd00:99::1/64 dev ua nodad", f"ip -n {self.h} addr add fd00:99::2/64 dev uh nodad",
           f"ip -n {self.k} link set ua up", f"ip -n {self.h} link set uh up")
        self.up = tmp_path / "vmlan-ifup"
        self.up.write_text("#!/bin/sh\n" + textwrap.dedent(f"""\
            ip link set "$1" netns {self.b} && ip -n {self.b} link set "$1" mtu 1450 &&
            ip -n {self.b} addr add {PEER_INNER}/24 dev "$1" && ip -n {self.b} link set "$1" up
            """))
        self.up.chmod(0o755)

    def kernel_vxlan(self, name: str, spec: str, inner: str = KERNEL_INNER) -> None:
        sh(f"ip -n {self.k} link add {name} type vxlan {spec}", f"ip -n {self.k} addr add {inner}/24 dev {name}",
           f"ip -n {self.k} link set {name} up")

    def vmlan(self, vmlan_run: Any, vxlan: str) -> Any:
        return vmlan_run("-netdev", vxlan, "-netdev", f"tap,id=t0,ifname=vt{self.tag},script={self.up},downscript=no",
                         netns=self.h)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    namespaces = Namespaces()
    try:
        yield Net(namespaces, tmp_path)
    finally:
        namespaces.close()


def in_ns(netns: str, *argv: str, timeout: float = 300, check: bool = True) -> str:
    proc = subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{argv} in {netns}: {proc.stderr or proc.stdout}"
    return proc.stdout


def ping(netns: str, host: str) -> None:
    assert in_ns(netns, sys.executable, BLOB, "ping", host).strip() == "3 packets received"


def transfer(server_ns: str, client_ns: str, host: str, seed: int, size: int = SIZE) -> None:
    """``size`` bytes from a server in ``server_ns`` to a client in ``client_ns``; the digests must match."""
    proc = subprocess.Popen(["ip", "netns", "exec", server_ns, sys.executable, BLOB, "serve", "8000", str(size),
                             str(seed)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
        got = in_ns(client_ns, sys.executable, BLOB, "fetch", host, "8000").split()
    finally:
        proc.kill()
        proc.wait()
    assert got == [str(size), expected_sha256(size, seed)]


def both_ways(net: Net) -> None:
    ping(net.k, PEER_INNER)
    ping(net.b, KERNEL_INNER)
    transfer(net.b, net.k, PEER_INNER, seed=3)  # vmlan -> kernel
    transfer(net.k, net.b, KERNEL_INNER, seed=4)  # kernel -> vmlan


_COUNTERS = re.compile(
    r"^    vx: .*dropped: short (\d+), long (\d+), no I flag (\d+), other VNI (\d+); unfinished checksums (\d+),"
    r" TCP super-frames (\d+); sent super-frames (\d+) in (\d+) sends"
    r"  rx (\d+) frames (\d+) bytes (\d+) dropped, tx (\d+) frames (\d+) bytes (\d+) dropped$"
)
_NAMES = ("short", "long", "no_i_flag", "other_vni", "csum_partial", "gso", "tx_gso", "tx_gso_sends",
          "rx_frames", "rx_bytes", "rx_dropped",
          "tx_frames", "tx_bytes", "tx_dropped")


def counters(vm: Any) -> dict[str, int]:
    """The vxlan port's counters from a fresh SIGUSR1 dump."""
    before = sum(bool(_COUNTERS.match(line)) for line in vm.lines)
    vm.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: sum(bool(_COUNTERS.match(line)) for line in vm.lines) > before, 20, "the SIGUSR1 dump")
    line = [line for line in vm.lines if _COUNTERS.match(line)][-1]
    match = _COUNTERS.match(line)
    assert match is not None
    return dict(zip(_NAMES, map(int, match.groups()), strict=True))


class Sniffer:
    """vxsniff.py on H's veth: the outer source ports of the datagrams vmlan sends, per inner flow."""

    def __init__(self, netns: str, ifname: str, port: int = 4789) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, SNIFF, ifname, str(port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def result(self) -> dict[str, Any]:
        out, _ = self.proc.communicate("", timeout=60)
        return json.loads(out)  # type: ignore[no-any-return]


def test_unicast_ipv4_with_the_kernel_both_ways(net: Net, vmlan_run: Any) -> None:
    net.kernel_vxlan("vx0", "id 42 remote 10.99.0.2 local 10.99.0.1 dev ua dstport 4789")
    vm = net.vmlan(vmlan_run, "vxlan,id=vx,vni=42,remote=10.99.0.1,local=10.99.0.2")
    vm.wait_log("vxlan vx: vni=42,remote=10.99.0.1,local=10.99.0.2,port=4789, per-flow source ports")
    vm.wait_log("vxlan vx: a Linux peer joins with: ip link add vxlan42 type vxlan id 42 remote 10.99.0.2 dstport 4789")
    sniffer = Sniffer(net.h, "uh")
    both_ways(net)
    seen = sniffer.result()
    c = counters(vm)
    assert c["rx_bytes"] > SIZE and c["tx_bytes"] > SIZE, c
    assert c["short"] == c["long"] == c["no_i_flag"] == c["other_vni"] == 0, c
    # The kernel over a veth leaves the inner checksums to the receiver, and its TSO segments whole.
    assert c["gso"] > 100 and c["csum_partial"] > c["gso"], c
    # One source port per inner flow, from the ephemeral range; the flows spread over several ports.
    flows = seen["flows"]  # "other" holds ARP, whose MAC pairs differ
    assert all(len(ports) == 1 for key, ports in flows.items() if key != "other"), flows
    ports = {p for ports in flows.values() for p in ports}
    assert len([k for k in flows if k.startswith("6:")]) >= 2 and len(ports) >= 3, flows
    assert all(32768 <= p <= 60999 for p in ports), ports
    assert c["tx_gso"] > 100 and c["tx_gso_sends"] >= c["tx_gso"], c  # the TAP's TSO segments: UDP GSO sends


def test_other_vni_no_i_flag_and_runts_are_dropped_and_counted(net: Net, vmlan_run: Any) -> None:
    net.kernel_vxlan("vx0", "id 42 remote 10.99.0.2 local 10.99.0.1 dev ua dstport 4789")
    net.kernel_vxlan("vx1", "id 43 remote 10.99.0.2 local 10.99.0.1 dev ua dstport 4789", inner="192.168.78.1")
    vm = net.vmlan(vmlan_run, "vxlan,id=vx,vni=42,remote=10.99.0.1,local=10.99.0.2")
    ping(net.k, PEER_INNER)
    # vx1's ARP requests for 192.168.78.2 carry VNI 43: vmlan drops every one, and nothing answers.
    out = in_ns(net.k, sys.executable, BLOB, "ping", "192.168.78.2", "1", check=False)
    assert "packets received" not in out
    c = counters(vm)
    assert c["other_vni"] >= 1, c
    # Hand-made datagrams: the I flag clear, shorter than a VXLAN and an Ethernet header.
    script = textwrap.dedent("""\
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("10.99.0.1", 0))
        frame = bytes(6) * 2 + b"\\x88\\xb5" + bytes(46)
        s.sendto(bytes.fromhex("0000000000002a00") + frame, ("10.99.0.2", 4789))
        s.sendto(bytes.fromhex("0800000000002a00") + frame[:13], ("10.99.0.2", 4789))
        s.sendto(b"\\x08", ("10.99.0.2", 4789))
        s.sendto(bytes.fromhex("0800000000002b00") + frame, ("10.99.0.2", 4789))
        """)
    in_ns(net.k, sys.executable, "-c", script)
    wait_for(lambda: (lambda d: d["no_i_flag"] == 1 and d["short"] == 2 and d["other_vni"] >= c["other_vni"] + 1)(
        counters(vm)), 20, "the hand-made datagrams counted")
    after = counters(vm)
    assert after["rx_dropped"] == after["short"] + after["no_i_flag"] + after["other_vni"], after
    ping(net.b, KERNEL_INNER)  # the link still works


def test_multicast_group_with_the_kernel(net: Net, vmlan_run: Any) -> None:
    net.kernel_vxlan("vx0", "id 42 group 239.1.1.1 dev ua local 10.99.0.1 dstport 4789 ttl 1")
    vm = net.vmlan(vmlan_run, "vxlan,id=vx,vni=42,group=239.1.1.1,dev=uh,local=10.99.0.2")
    vm.wait_log("vxlan vx: vni=42,group=239.1.1.1,local=10.99.0.2,dev=uh,port=4789")
    vm.wait_log("a Linux peer joins with: ip link add vxlan42 type vxlan id 42 group 239.1.1.1 dev IFNAME dstport 4789")
    sniffer = Sniffer(net.h, "uh")
    ping(net.b, KERNEL_INNER)
    ping(net.k, PEER_INNER)
    transfer(net.b, net.k, PEER_INNER, seed=5, size=5_000_000)
    transfer(net.k, net.b, KERNEL_INNER, seed=6, size=5_000_000)
    sniffer.result()
    # The kernel learnt vmlan's address from the group's traffic and answers it by unicast.
    fdb = sh(f"bridge -n {net.k} fdb show dev vx0")
    assert "dst 10.99.0.2" in fdb, fdb
    c = counters(vm)
    assert c["rx_bytes"] > 5_000_000 and c["tx_bytes"] > 5_000_000 and c["other_vni"] == 0, c


def test_ipv6_underlay_with_the_kernel(net: Net, vmlan_run: Any) -> None:
    net.kernel_vxlan("vx0", "id 4242 remote fd00:99::2 local fd00:99::1 dev ua dstport 4789")
    vm = net.vmlan(vmlan_run, "vxlan,id=vx,vni=4242,remote=fd00:99::1,local=fd00:99::2,srcport=50000-50999")
    vm.wait_log("vxlan vx: vni=4242,remote=fd00:99::1,local=fd00:99::2,port=4789, per-flow source ports")
    sniffer = Sniffer(net.h, "uh")
    both_ways(net)
    ports = {p for ports in sniffer.result()["flows"].values() for p in ports}
    assert ports and all(50000 <= p <= 50999 for p in ports), ports
    c = counters(vm)
    assert c["rx_bytes"] > SIZE and c["tx_bytes"] > SIZE and c["rx_dropped"] == 0, c
    # The kernel (noudp6zerocsumrx) drops IPv6 datagrams without a checksum: these arrived, so vmlan's had one.
    stats = in_ns(net.k, "cat", "/proc/net/snmp6")
    assert re.search(r"^Udp6InCsumErrors\s+0$", stats, re.M), stats


def test_without_cap_net_raw_frames_leave_from_the_port(net: Net, vmlan_run: Any) -> None:
    """No raw socket: still interoperable, every datagram from source port 4789."""
    net.kernel_vxlan("vx0", "id 42 remote 10.99.0.2 local 10.99.0.1 dev ua dstport 4789")
    log = net.tmp_path / "vmlan-noraw.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(["ip", "netns", "exec", net.h, "setpriv", "--bounding-set", "-net_raw", sys.executable,
                                 "-m", "vmlan", "run", "-netdev", "vxlan,id=vx,vni=42,remote=10.99.0.1,local=10.99.0.2",
                                 "-netdev", f"tap,id=t0,ifname=vt{net.tag},script={net.up},downscript=no"],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for(lambda: "vmlan: ready: " in log.read_text() or proc.poll() is not None, 20, "vmlan ready")
        assert "vxlan vx: vni=42,remote=10.99.0.1,local=10.99.0.2,port=4789, source port 4789 (no CAP_NET_RAW)" in \
            log.read_text(), log.read_text()
        sniffer = Sniffer(net.h, "uh")
        ping(net.k, PEER_INNER)
        transfer(net.b, net.k, PEER_INNER, seed=7, size=2_000_000)
        ports = {p for ports in sniffer.result()["flows"].values() for p in ports}
        assert ports == {4789}, ports
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
    assert "Traceback" not in log.read_text()
