"""Two real QEMU guests on a rootless NAT network of ``vmlan daemon``, attached with ``vmlan attach``'s
output as printed; then the daemon is killed (-9) and restarted: definitions and leases intact, the
daemon reconnects to the guests, and a guest renewing keeps its address."""

from __future__ import annotations

import ipaddress
import re
import shlex
from pathlib import Path

import pytest

from guest.harness import Guest
from servers import HttpServer

from .conftest import DaemonProcess

pytestmark = pytest.mark.guest

LAB = """\
<network>
  <name>lab</name>
  <forward mode='nat'/>
  <dns>
    <forwarder addr='127.0.0.1'/>
    <host ip='192.168.77.10'><hostname>db.lab</hostname></host>
  </dns>
  <ip address='192.168.77.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.77.100' end='192.168.77.150'/>
    </dhcp>
  </ip>
</network>
"""

GUEST = """\
<domain type='kvm'>
  <name>{name}</name>
  <devices>
    <interface type='network'>
      <mac address='{mac}'/>
      <source network='lab'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
"""

UDHCPC = "timeout 30 udhcpc -i eth0 -f -q -n -t 4 -T 2"


def attached_guest(name: str, argv_text: str, mac: str, tmp_path: Path, image: object) -> Guest:
    """A harness guest whose network is exactly ``vmlan attach``'s output (the harness's own -netdev and
    -device pair replaced). ``-global virtio-net-pci.romfile=``: this machine has no iPXE ROMs."""
    g = Guest(name, "socket,listen=:1", mac, tmp_path, image,  # type: ignore[arg-type]
              extra_qemu_args=["-global", "virtio-net-pci.romfile="])
    argv = list(g.argv)
    i = argv.index("-netdev")
    del argv[i:i + 4]  # -netdev X -device Y
    argv[i:i] = shlex.split(argv_text)
    g.argv = argv
    return g


def lease_ip(guest: Guest) -> str:
    out = guest.check(". /tmp/udhcpc.env && echo ip=$ip")
    m = re.search(r"ip=(\S+)", out)
    assert m, out
    return m.group(1)


def test_two_guests_on_a_rootless_nat_network_survive_a_daemon_kill(daemon_proc: DaemonProcess, tmp_path: Path,
                                                                    guest_image: object) -> None:
    d = daemon_proc
    (tmp_path / "lab.xml").write_text(LAB)
    assert d.vmlan("net-define", str(tmp_path / "lab.xml")).stdout == f"Network lab defined from {tmp_path}/lab.xml\n\n"
    assert d.vmlan("net-start", "lab").stdout == "Network lab started\n\n"
    assert d.vmlan("net-autostart", "lab").stdout == "Network lab marked as autostarted\n\n"
    macs = {"ga": "52:54:00:77:00:01", "gb": "52:54:00:77:00:02"}
    guests: dict[str, Guest] = {}
    with HttpServer() as http:
        try:
            for name, mac in macs.items():
                xml = tmp_path / f"{name}.xml"
                xml.write_text(GUEST.format(name=name, mac=mac))
                argv_text = d.vmlan("attach", str(xml)).stdout.strip()
                assert argv_text.endswith(f"-device virtio-net-pci,netdev=hostnet0,id=net0,mac={mac}")
                assert "id=hostnet0" in argv_text
                guests[name] = attached_guest(name, argv_text, mac, tmp_path, guest_image)
                guests[name].start()
            ips = {}
            for name, g in guests.items():
                g.check(UDHCPC, timeout=90)
                ips[name] = lease_ip(g)
                assert ipaddress.ip_address(ips[name]) in ipaddress.ip_network("192.168.77.96/27")
                assert 100 <= int(ips[name].rsplit(".", 1)[1]) <= 150
            assert ips["ga"] != ips["gb"]
            guests["ga"].check(f"ping -c 2 -W 3 {ips['gb']}")
            guests["gb"].check(f"ping -c 2 -W 3 {ips['ga']}")
            body = guests["ga"].check(f"wget -q -O - http://192.168.77.1:{http.port}/blob/1000/x | wc -c")
            assert body.strip() == "1000"
            assert "192.168.77.10" in guests["gb"].check("nslookup db.lab")

            leases = d.vmlan("net-dhcp-leases", "lab").stdout
            lines = leases.splitlines()
            assert lines[0].split() == ["Expiry", "Time", "MAC", "address", "Protocol", "IP", "address", "Hostname",
                                        "Client", "ID", "or", "DUID"]
            rows = [line.split() for line in lines[2:] if line.strip()]
            assert [(r[2], r[4]) for r in rows] == [(macs["ga"], f"{ips['ga']}/24"), (macs["gb"], f"{ips['gb']}/24")]

            d.kill9()
            d.start()
            assert " lab       active   yes         yes" in d.vmlan("net-list", "--all").stdout
            after = [line.split() for line in d.vmlan("net-dhcp-leases", "lab").stdout.splitlines()[2:] if line.strip()]
            assert [(r[2], r[4]) for r in after] == [(r[2], r[4]) for r in rows]
            # the daemon redials each guest's socket; a renewing guest keeps its address
            for name, g in guests.items():
                g.check(f"timeout 60 udhcpc -i eth0 -f -q -n -t 8 -T 2 -r {ips[name]}", timeout=90)
                assert lease_ip(g) == ips[name]
            guests["ga"].check(f"ping -c 2 -W 3 {ips['gb']}")
        finally:
            for g in guests.values():
                g.close()
    assert d.stop() == 0
