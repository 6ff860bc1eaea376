"""A real QEMU 7.2 guest, run as an unprivileged user, on two privileged networks of the backend's.

The backend's "host" is a namespace of the test's (tests/privnet.py); a second namespace, ``far``,
hangs off it on a veth pair (10.99.0.1 on the host side, 10.99.0.2 there) and runs a tiny HTTP
server that answers every request with the client address it saw. ``far`` has no route to the
guests' subnets, so an answer at all means the host masqueraded the guest.

One guest, two NICs: eth0 on a nat network (the default network's shape: unnamed bridge, so
virbr0, STP on), eth1 on an isolated one (virbr1). QEMU opens both persistent TAPs by name as uid
65534 (``-netdev tap,ifname=vnetN,script=no,downscript=no``): the TAPs' owner is what lets it. Then:

* DHCP on eth0: a lease in the range, the gateway as router and DNS; ``lease-granted`` for its MAC;
* eth0 reaches ``far`` by TCP and ICMP, and ``far`` sees the host's address and a port >= 1024;
* a ``<dns><host>`` name resolves through the gateway;
* DHCP on eth1: no router; a route to ``far`` through the isolated gateway is refused there (the
  server never hears of it), while the isolated gateway itself answers;
* stopping both networks with QEMU still running leaves exactly the interfaces and the nftables ruleset
  there were before (a table ``inet othertest`` of the test's own included), and ip_forward as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from guest import GuestImage
from guest.harness import QEMU, Guest
from netns import Namespaces, sh, wait_for
from privnet import NetThread, events_of, links, ns_run, ruleset, sysctl
from vmlan.config.libvirt import parse_interface, parse_network
from vmlan.control.privileged import PrivilegedBackend

pytestmark = pytest.mark.guest

NOBODY = 65534
UDHCPC = "timeout 40 udhcpc -i {ifname} -f -q -n -t 8 -T 2"
LEASE_VARS = "ip mask router dns"
NAT_MAC, ISO_MAC = "52:54:00:7a:00:01", "52:54:00:7a:00:02"

NAT_XML = """\
<network>
  <name>natnet</name>
  <forward/>
  <dns><host ip='192.168.150.9'><hostname>static.vmlan.test</hostname></host></dns>
  <ip address='192.168.150.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.150.100' end='192.168.150.150'/></dhcp>
  </ip>
</network>
"""
ISO_XML = """\
<network>
  <name>isonet</name>
  <ip address='192.168.160.1' prefix='24'>
    <dhcp><range start='192.168.160.100' end='192.168.160.150'/></dhcp>
  </ip>
</network>
"""

WHOAMI = """\
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{self.client_address[0]} {self.client_address[1]}\\n".encode()
        print("client", self.client_address[0], self.client_address[1], flush=True)
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args): pass
server = http.server.HTTPServer(("10.99.0.2", 8080), H)
print("listening", flush=True)
server.serve_forever()
"""


class Whoami:
    """The far namespace's HTTP server; ``clients`` are the (address, port) it answered."""

    def __init__(self, netns: str) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", WHOAMI],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "listening"
        self.clients: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            if parts[:1] == ["client"]:
                with self._lock:
                    self.clients.append((parts[1], int(parts[2])))

    def seen(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self.clients)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    ns = Namespaces()
    yield ns
    ns.close()


@pytest.fixture
def public_image(guest_image: GuestImage) -> Iterator[GuestImage]:
    """The guest image in a directory an unprivileged QEMU can read (root's home is 0700)."""
    where = Path(tempfile.mkdtemp(prefix="vmlan-guest-"))
    where.chmod(0o755)
    kernel, initrd = where / "vmlinuz", where / "initrd.img"
    shutil.copyfile(guest_image.kernel, kernel)
    shutil.copyfile(guest_image.initrd, initrd)
    for path in (kernel, initrd):
        path.chmod(0o644)
    yield GuestImage(kernel, initrd)
    shutil.rmtree(where, ignore_errors=True)


def unprivileged(guest: Guest, uid: int) -> None:
    """Run the guest's QEMU as ``uid`` (inside its namespace): insert setpriv right before QEMU."""
    at = guest.argv.index(QEMU)
    guest.argv[at:at] = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


def qemu_uid(guest: Guest) -> int:
    """The real uid of the guest's QEMU (setpriv and ``ip netns exec`` exec, so it keeps the PID)."""
    proc = guest._proc
    assert proc is not None
    status = Path(f"/proc/{proc.pid}/status").read_text()
    assert Path(f"/proc/{proc.pid}/exe").resolve().name.startswith("qemu-system")
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))


def lease_of(g: Guest) -> dict[str, str]:
    out = g.check(f'. /tmp/udhcpc.env && for v in {LEASE_VARS}; do eval echo "$v=\\$$v"; done')
    return dict(line.split("=", 1) for line in out.splitlines())


def iface(mac: str, network: str) -> object:
    return parse_interface(f"<interface type='network'><mac address='{mac}'/><source network='{network}'/>"
                           "<model type='virtio'/></interface>")


def test_unprivileged_guest_on_nat_and_isolated_networks(tmp_path: Path, namespaces: Namespaces,
                                                        public_image: GuestImage) -> None:
    assert shutil.which(QEMU) and shutil.which("setpriv"), "needs qemu-system-x86 and util-linux"
    h, far = namespaces.add("h"), namespaces.add("far")
    sh(f"ip -n {h} link add vfar type veth peer name vfar netns {far}",
       f"ip -n {h} addr add 10.99.0.1/24 dev vfar", f"ip -n {h} link set vfar up",
       f"ip -n {far} addr add 10.99.0.2/24 dev vfar", f"ip -n {far} link set vfar up")
    ns_run(h, "nft", "add", "table", "inet", "othertest")
    ns_run(h, "nft", "add", "chain", "inet", "othertest", "keepme", "{ type filter hook input priority 10; }")
    before_links, before_rules = set(links(h)), ruleset(h)
    assert sysctl(h, "ipv4/ip_forward") == "0"
    server = Whoami(far)
    host = NetThread(h, tmp_path / "run")
    guest: Guest | None = None
    try:
        backend = PrivilegedBackend(resolv_conf=os.devnull)
        ctx = host.context()
        nat = host.run(backend.start(parse_network(NAT_XML), ctx))
        iso = host.run(backend.start(parse_network(ISO_XML), ctx))
        assert (nat.bridge, iso.bridge) == ("virbr0", "virbr1")
        a0 = host.call(nat.attach, iface(NAT_MAC, "natnet"), NOBODY)
        a1 = host.call(iso.attach, iface(ISO_MAC, "isonet"), NOBODY)
        assert (a0.target, a1.target) == ("vnet0", "vnet1")
        guest = Guest("g", a0.netdev, NAT_MAC, tmp_path, public_image, extra_qemu_args=[
            "-netdev", f"{a1.netdev},id=n1", "-device", f"virtio-net-pci,netdev=n1,mac={ISO_MAC},romfile="],
            netns=h)
        unprivileged(guest, NOBODY)
        guest.start()
        guest.wait_ready(timeout=120)
        assert qemu_uid(guest) == NOBODY
        # the nat network: DHCP, NAT by TCP and ICMP, DNS through the gateway
        guest.check(UDHCPC.format(ifname="eth0"), timeout=60)
        lease = lease_of(guest)
        assert IPv4Address("192.168.150.100") <= IPv4Address(lease["ip"]) <= IPv4Address("192.168.150.150")
        assert (lease["mask"], lease["router"], lease["dns"]) == ("24", "192.168.150.1", "192.168.150.1")
        assert [(e["mac"], e["ip"]) for e in events_of(ctx).of_kind("lease-granted")] == [(NAT_MAC, lease["ip"])]
        seen = guest.check("timeout 20 wget -q -O - http://10.99.0.2:8080/", timeout=30).split()
        assert seen[0] == "10.99.0.1" and 1024 <= int(seen[1]) <= 65535  # masqueraded, unprivileged source port
        assert server.seen() == [(seen[0], int(seen[1]))]
        guest.check("ping -c 2 -W 5 10.99.0.2", timeout=30)
        assert "Address: 192.168.150.9" in guest.check("nslookup static.vmlan.test 192.168.150.1", timeout=30)
        # the isolated network: no router; the far side cannot be reached through it, the gateway can
        guest.check("ip link set eth1 up")
        guest.check(UDHCPC.format(ifname="eth1"), timeout=60)
        iso_lease = lease_of(guest)
        assert IPv4Address("192.168.160.100") <= IPv4Address(iso_lease["ip"]) <= IPv4Address("192.168.160.150")
        assert (iso_lease["router"], iso_lease["dns"]) == ("", "192.168.160.1")
        guest.check("ip route replace 10.99.0.0/24 via 192.168.160.1 dev eth1")
        status, out = guest.run("timeout 10 wget -q -O - http://10.99.0.2:8080/", timeout=30)
        assert status != 0 and "Connection refused" in out, out  # rejected at once by the isolated rules
        guest.check("ping -c 1 -W 5 192.168.160.1", timeout=30)
        assert len(server.seen()) == 1  # never heard of the second try
        rules = ruleset(h)
        assert rules.count("table inet vmlan-virbr") == 2 and "table inet othertest" in rules
        assert sysctl(h, "ipv4/ip_forward") == "1"
        # net-destroy, with QEMU still holding both TAPs
        host.run(nat.stop())
        host.run(iso.stop())
        wait_for(lambda: set(links(h)) == before_links, timeout=10, what="the bridges and TAPs to go")
        assert ruleset(h) == before_rules
        assert sysctl(h, "ipv4/ip_forward") == "0"
    finally:
        if guest is not None:
            guest.close()
        host.close()
        server.close()
