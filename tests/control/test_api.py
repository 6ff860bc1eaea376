"""Every API endpoint, once through httpx's ASGI transport (the app in this process, on this test's
loop) and once through the real unix socket of a ``vmlan daemon`` process; malformed requests get a
4xx with a message, never a 500."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from vmlan.control.api import create_app
from vmlan.control.daemon import Daemon

from .conftest import DaemonProcess

LAB = """<network>
  <name>lab</name>
  <forward mode='nat'/>
  <dns><forwarder addr='127.0.0.1'/><host ip='192.168.60.10'><hostname>db</hostname></host></dns>
  <ip address='192.168.60.1' prefix='24'>
    <dhcp><range start='192.168.60.100' end='192.168.60.120'/></dhcp>
  </ip>
</network>"""

ISOLATED = """<network><name>iso</name><ip address='10.9.0.1' netmask='255.255.255.0'>
<dhcp><range start='10.9.0.10' end='10.9.0.20'/></dhcp></ip></network>"""

IFACE = """<interface type='network'><mac address='52:54:00:60:00:01'/><source network='lab'/>
<model type='virtio'/><link state='down'/></interface>"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def exercise(c: httpx.AsyncClient, runtime_dir: Path) -> None:
    r = await c.get("/networks")
    assert r.status_code == 200
    assert [n["name"] for n in r.json()] == ["default"]
    assert r.json()[0]["active"] and r.json()[0]["autostart"] and r.json()[0]["backend"] == "rootless"

    r = await c.post("/networks", json={"xml": LAB, "mode": "rootless"})
    assert r.status_code == 201, r.text
    uuid = r.json()["uuid"]
    assert r.json() == {"name": "lab", "uuid": uuid, "active": False, "autostart": False, "persistent": True,
                        "mode": "rootless", "backend": None, "bridge": "virbr1",
                        "addresses": ["192.168.60.1/24"]}
    r = await c.post("/networks", json={"xml": LAB.replace("<name>lab</name>", "<name>lab</name><uuid>"
                                                           "11111111-2222-3333-4444-555555555555</uuid>")})
    assert r.status_code == 409 and "already exists with uuid" in r.json()["detail"]
    assert (await c.get("/networks/lab")).json()["active"] is False
    r = await c.get("/networks/lab/xml")
    assert f"<uuid>{uuid}</uuid>" in r.json()["xml"] and "<bridge name='virbr1' stp='on' delay='0'/>" in r.json()["xml"]
    r = await c.post("/networks/lab/destroy")
    assert r.status_code == 409
    assert r.json()["detail"] == "Requested operation is not valid: network 'lab' is not active"
    r = await c.get("/networks/lab/leases")
    assert r.status_code == 200 and r.json() == []

    events: list[str] = []

    async def listen() -> None:
        async with c.stream("GET", "/events", params={"limit": 1}) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            async for line in resp.aiter_lines():
                events.append(line)

    listener = asyncio.ensure_future(listen())
    await asyncio.sleep(0.3)
    r = await c.post("/networks/lab/start")
    assert r.status_code == 200 and r.json()["active"] and r.json()["backend"] == "rootless"
    await asyncio.wait_for(listener, 10)
    assert "event: network-started" in events
    assert json.loads(next(e for e in events if e.startswith("data: "))[6:])["network"] == "lab"
    r = await c.post("/networks/lab/start")
    assert r.status_code == 409 and r.json()["detail"] == "Requested operation is not valid: network is already active"

    r = await c.put("/networks/lab/autostart", json={"autostart": True})
    assert r.status_code == 200 and r.json()["autostart"] is True

    status = (await c.get("/networks/lab/status")).json()
    assert status["gateway"] == "192.168.60.1" and status["subnet"] == "192.168.60.0/24"
    assert status["dhcp"] == {"start": "192.168.60.100", "size": 21, "lease_time": 3600}
    assert status["dns"] == "192.168.60.1"  # the gateway, as libvirt's dnsmasq
    assert (await c.get("/networks/lab/mac-table")).json() == []
    usernet = (await c.get("/networks/lab/usernet")).json()
    assert usernet[0]["netdev"] == "lab" and usernet[0]["forwards"] == []

    port = free_port()
    r = await c.post("/networks/lab/forwards", json={"proto": "tcp", "host_addr": "127.0.0.1", "host_port": port,
                                                     "guest_addr": "192.168.60.100", "guest_port": 22})
    assert r.status_code == 201 and r.json()["bound_port"] == port
    r = await c.post("/networks/lab/forwards", json={"proto": "udp", "host_port": 0, "guest_addr": "192.168.60.100",
                                                     "guest_port": 53})
    assert r.status_code == 201 and r.json()["bound_port"] > 0
    udp_port = r.json()["bound_port"]
    r = await c.post("/networks/lab/forwards", json={"proto": "tcp", "host_addr": "127.0.0.1", "host_port": port,
                                                     "guest_addr": "192.168.60.100", "guest_port": 22})
    assert r.status_code == 409 and "already forwarded" in r.json()["detail"]
    r = await c.post("/networks/lab/forwards", json={"proto": "tcp", "host_port": 1, "guest_addr": "10.0.0.1",
                                                     "guest_port": 22})
    assert r.status_code == 409 and "is not a guest address" in r.json()["detail"]
    fwds = (await c.get("/networks/lab/forwards")).json()
    assert {(f["proto"], f["bound_port"]) for f in fwds} == {("tcp", port), ("udp", udp_port)}
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # the rule listens
    r = await c.delete(f"/networks/lab/forwards/tcp/{port}", params={"host_addr": "127.0.0.1"})
    assert r.json() == {"removed": True}
    r = await c.delete(f"/networks/lab/forwards/tcp/{port}", params={"host_addr": "127.0.0.1"})
    assert r.json() == {"removed": False}
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()

    r = await c.post("/networks/lab/dns", json={"name": "Web.Lab.", "ip": "192.168.60.11"})
    assert r.status_code == 201 and r.json()["records"] == {"db": ["192.168.60.10"], "web.lab": ["192.168.60.11"]}
    assert (await c.get("/networks/lab/dns")).json()["records"]["web.lab"] == ["192.168.60.11"]
    assert (await c.post("/networks/lab/dns", json={"name": "x", "ip": "not-an-ip"})).status_code == 400
    assert (await c.delete("/networks/lab/dns/web.lab")).json() == {"removed": 1}
    assert (await c.delete("/networks/lab/dns/web.lab")).json() == {"removed": 0}

    r = await c.post("/domxml-to-native", json={"xml": IFACE})
    sock = runtime_dir / "networks" / "lab" / "v525400600001.sock"
    expected = ["-netdev", f"stream,server=on,addr.type=unix,addr.path={sock},id=hostnet0",
                "-device", "virtio-net-pci,netdev=hostnet0,id=net0,mac=52:54:00:60:00:01"]
    assert r.status_code == 200 and r.json()["argv"] == expected
    assert not (await c.get("/networks/lab/status")).json()["attached"]  # nothing set up
    r = await c.post("/attach", json={"xml": IFACE})
    assert r.status_code == 200 and r.json()["argv"] == expected
    assert r.json()["interfaces"] == [{"index": 0, "type": "network", "mac": "52:54:00:60:00:01", "network": "lab",
                                       "target": "v525400600001"}]
    r = await c.post("/attach", json={"xml": IFACE})
    assert r.status_code == 409 and "already attached" in r.json()["detail"]
    r = await c.put("/networks/lab/attachments/v525400600001/link", json={"up": True})
    assert r.status_code == 200
    r = await c.post("/set_link", json={"name": "v525400600001", "up": False})
    assert r.status_code == 200
    assert (await c.post("/set_link", json={"name": "nosuch", "up": False})).status_code == 404

    r = await c.post("/monitor", json={"command": "info network"})
    assert r.status_code == 200 and "hub 1001 (switch)" in r.json()["output"]
    assert " \\ v525400600001: type=stream,connect to unix:" in r.json()["output"]
    r = await c.post("/monitor", json={"command": "info usernet", "target": "lab"})
    assert r.json()["output"].startswith("Hub 1001 (lab):\n  Protocol[State]    FD  Source Address")
    r = await c.post("/monitor", json={"command": f"hostfwd_add tcp:127.0.0.1:{port}-:22", "target": "lab"})
    assert r.status_code == 200 and r.json()["output"] == ""
    r = await c.post("/monitor", json={"command": f"hostfwd_remove tcp:127.0.0.1:{port}", "target": "lab"})
    assert r.json()["output"] == f"host forwarding rule for tcp:127.0.0.1:{port} removed"
    r = await c.post("/monitor", json={"command": f"hostfwd_remove tcp:127.0.0.1:{port}", "target": "lab"})
    assert r.json()["output"] == f"host forwarding rule for tcp:127.0.0.1:{port} not found"
    r = await c.post("/monitor", json={"command": "hostfwd_add tcp::x-:22", "target": "lab"})
    assert r.status_code == 400 and r.json()["detail"]
    assert (await c.post("/monitor", json={"command": "frobnicate"})).status_code == 400
    hubs = (await c.get("/monitor/network")).json()
    assert [h["id"] for h in hubs] == [1000, 1001] and hubs[1]["kind"] == "switch"

    path = runtime_dir / "extra.sock"
    r = await c.post("/netdevs", json={"opts": f"stream,id=extra,server=on,addr.type=unix,addr.path={path}",
                                       "network": "lab"})
    assert r.status_code == 201 and r.json()["output"].startswith("extra: listening on unix:")
    r = await c.post("/netdevs", json={"opts": f"stream,id=extra,server=on,addr.type=unix,addr.path={path}"})
    assert r.status_code == 409 and r.json()["detail"] == "Duplicate ID 'extra' for netdev"
    assert (await c.post("/netdevs", json={"opts": "bogus,id=x"})).status_code == 400
    assert (await c.delete("/netdevs/extra")).json() == {"removed": True}
    assert (await c.delete("/netdevs/extra")).status_code == 404
    assert (await c.delete("/netdevs/lab")).status_code == 409  # a network's own stack

    stats = (await c.get("/stats")).json()
    assert stats["active"] == 2 and any(p["netdev"] == "lab" for p in stats["ports"])
    assert (await c.get("/version")).json()["uid"] == os.geteuid()

    r = await c.delete("/networks/lab/attachments/v525400600001")
    assert r.json() == {"removed": True}
    assert (await c.delete("/networks/lab/attachments/v525400600001")).status_code == 404

    r = await c.post("/networks/create", json={"xml": ISOLATED})
    assert r.status_code == 201 and r.json()["persistent"] is False and r.json()["active"] is True
    assert (await c.put("/networks/iso/autostart", json={"autostart": True})).status_code == 409
    r = await c.post("/networks/iso/destroy")
    assert r.status_code == 200
    assert (await c.get("/networks/iso")).status_code == 404  # transient: gone

    r = await c.post("/networks/lab/destroy")
    assert r.status_code == 200 and r.json()["active"] is False
    r = await c.delete("/networks/lab")
    assert r.status_code == 200
    r = await c.get("/networks/lab")
    assert r.status_code == 404 and r.json()["detail"] == "Network not found: no network with matching name 'lab'"


MALFORMED: list[tuple[str, str, object]] = [
    ("POST", "/networks", "not json"),
    ("POST", "/networks", {}),
    ("POST", "/networks", {"xml": 5}),
    ("POST", "/networks", {"xml": "<network>"}),
    ("POST", "/networks", {"xml": "<network><name>a/b</name></network>"}),
    ("POST", "/networks", {"xml": "<!DOCTYPE x [<!ENTITY a 'b'>]><network><name>&a;</name></network>"}),
    ("POST", "/networks", {"xml": "<network><name>x</name></network>", "mode": "turbo"}),
    ("POST", "/networks", {"xml": "<domain/>"}),
    ("POST", "/attach", {"xml": "<interface type='network'/>"}),
    ("POST", "/attach", {"xml": "<interface type='network'><source network='nope'/></interface>"}),
    ("POST", "/attach", {"xml": "<domain><devices/></domain>"}),
    ("POST", "/domxml-to-native", '{"xml": "\\udcff"}'),  # a lone surrogate, escaped in valid JSON
    ("POST", "/domxml-to-native", {"xml": "<interface type='direct'/>", "format": "qemu-argv"}),
    ("POST", "/domxml-to-native", {"xml": "<interface/>", "format": "xen"}),
    ("PUT", "/networks/default/autostart", {"autostart": "maybe"}),
    ("POST", "/networks/default/forwards", {"proto": "sctp", "host_port": 1, "guest_addr": "x", "guest_port": 1}),
    ("POST", "/networks/default/forwards", {"host_port": 70000, "guest_addr": "1.2.3.4", "guest_port": 1}),
    ("DELETE", "/networks/default/forwards/tcp/0", None),
    ("POST", "/monitor", {"command": "hostfwd_add 'unterminated"}),
    ("POST", "/monitor", {"command": ""}),
    ("POST", "/monitor", {"command": "info usernet", "target": "nosuch"}),
    ("GET", "/networks/nosuch/leases", None),
    ("GET", "/networks/default/leases?mac=" + "x" * 100, None),
    ("POST", "/netdevs", {"opts": "user,id=u,net=300.0.0.0/8"}),
    ("POST", "/set_link", {"name": "", "up": True}),
    ("GET", "/events?limit=0", None),
]


async def malformed(c: httpx.AsyncClient) -> None:
    for method, url, body in MALFORMED:
        if isinstance(body, str):
            r = await c.request(method, url, content=body.encode(), headers={"content-type": "application/json"})
        else:
            r = await c.request(method, url, json=body)
        assert 400 <= r.status_code < 500, (method, url, body, r.status_code, r.text)
        detail = r.json()["detail"]
        assert isinstance(detail, str) and detail and "\n" not in detail, (url, detail)


def in_process(tmp_path: Path, body: Callable[[httpx.AsyncClient, Path], Awaitable[None]]) -> None:
    async def main() -> None:
        daemon = Daemon(tmp_path / "state", tmp_path / "run", asyncio.get_running_loop(), auto_mode="rootless")
        await daemon.open()
        try:
            transport = httpx.ASGITransport(app=create_app(daemon))
            async with httpx.AsyncClient(transport=transport, base_url="http://vmlan") as client:
                await body(client, tmp_path / "run")
        finally:
            await daemon.close()

    asyncio.run(main())


def over_socket(d: DaemonProcess, body: Callable[[httpx.AsyncClient, Path], Awaitable[None]]) -> None:
    async def main() -> None:
        transport = httpx.AsyncHTTPTransport(uds=str(d.socket))
        async with httpx.AsyncClient(transport=transport, base_url="http://vmlan", timeout=30) as client:
            await body(client, d.run_dir)

    asyncio.run(main())


def test_every_endpoint_asgi(tmp_path: Path) -> None:
    in_process(tmp_path, exercise)


def test_every_endpoint_unix_socket(daemon_proc: DaemonProcess) -> None:
    over_socket(daemon_proc, exercise)
    assert daemon_proc.stop() == 0
    assert "Traceback" not in daemon_proc.log.read_text()


def test_malformed_requests_get_4xx_asgi(tmp_path: Path) -> None:
    in_process(tmp_path, lambda c, _p: malformed(c))


def test_malformed_requests_get_4xx_unix_socket(daemon_proc: DaemonProcess) -> None:
    over_socket(daemon_proc, lambda c, _p: malformed(c))
