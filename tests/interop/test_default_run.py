"""``vmlan run`` with no options is QEMU's default network: a real guest attached with the options vmlan
prints gets 10.0.2.15 by DHCP and reaches the host at 10.0.2.2 (the test's loopback HTTP server)."""

from __future__ import annotations

import pytest

from servers import HttpServer

pytestmark = pytest.mark.guest

UDHCPC = "timeout 30 udhcpc -i eth0 -f -q -n -t 4 -T 2"
LEASE_VARS = "ip mask router dns serverid"


def test_vmlan_run_alone_serves_a_user_mode_network(make_guest, vmlan_run, tmp_path, monkeypatch):
    runtime_dir = tmp_path / "xdg"
    runtime_dir.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime_dir))  # vmlan's default socket lives here
    sock = runtime_dir / "vmlan" / "lan0.sock"
    with HttpServer() as http:
        vm = vmlan_run()
        hint = next(line for line in vm.lines if "attach a QEMU guest to lan0 with: " in line)
        netdev_opt, netdev, device_opt, device = hint.split("with: ", 1)[1].split()
        assert (netdev_opt, device_opt) == ("-netdev", "-device")
        assert netdev == f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}"
        mac = dict(kv.split("=", 1) for kv in device.split(",")[1:])["mac"]
        g = make_guest("g", [part for part in netdev.split(",") if not part.startswith("id=")], mac=mac)
        g.check(UDHCPC, timeout=60)
        out = g.check(f'. /tmp/udhcpc.env && for v in {LEASE_VARS}; do eval echo "$v=\\$$v"; done')
        lease = dict(line.split("=", 1) for line in out.splitlines())
        assert lease == {"ip": "10.0.2.15", "mask": "24", "router": "10.0.2.2", "dns": "10.0.2.3",
                         "serverid": "10.0.2.2"}
        size = 2_000_000
        got = g.check(f"timeout 60 wget -q -O - http://10.0.2.2:{http.port}/blob/{size}/5 | sha256sum", timeout=90)
        assert got.split()[0] == http.expected_sha256(size, 5)
        assert any(req.path == f"/blob/{size}/5" for req in http.requests())
        g.close()
        log = vm.stop()
    assert "user user0: user-mode network 10.0.2.0/24" in log
    assert not sock.exists()
