"""VDE against real peers: Debian's vde_switch 2.3.2 and vde_plug (vdeplug4 4.0.1), QEMU 7.2's
``-netdev vde``, dpipe.

vmlan runs in this process: a Hub with the VDE ports (and a test port that records what it is given)
on an event loop thread. Each test checks both directions, and what the other side saw where it can
tell (vde_switch's console lists the ports and their descriptions).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vmlan.config.netdev import StreamNetdev, parse_netdev
from vmlan.config.qemuopts import parse_qemuopts
from vmlan.config.vde import parse_vde_netdev
from vmlan.io.stream import StreamServer
from vmlan.io.vde import VdeClient, VdeServer
from vmlan.lan import Hub, Port
from vmlan.plug import STDIO_HEADER

GEN, OTHER = bytes([2, 0, 0, 0, 0x0E, 1]), bytes([2, 0, 0, 0, 0x0E, 2])
BCAST = b"\xff" * 6


def eth(dst: bytes, src: bytes, payload: bytes, size: int = 60) -> bytes:
    body = dst + src + b"\x88\xb5" + payload
    return body + b"\x00" * max(0, size - len(body))


def framed(frame: bytes) -> bytes:
    return STDIO_HEADER.pack(len(frame)) + frame


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: apt-get install vde2 (vde_switch, vde_plug, dpipe)",
                    pytrace=False)


class Recorder(Port):
    def __init__(self) -> None:
        super().__init__("test")
        self.frames: list[bytes] = []

    def transmit(self, frame: Any, src: Port, offload: Any) -> bool:
        self.frames.append(bytes(frame))
        return True


class Vmlan:
    """vmlan's hub on a loop thread: netdevs started in order, closed at the end."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.hub = Hub(0)
        self.test = Recorder()
        self.call(self.hub.attach, self.test)
        self.netdevs: list[Any] = []

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        async def wrapper() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(20)

    def vde(self, text: str) -> Any:
        cfg = parse_vde_netdev(parse_qemuopts(text))
        if cfg.server:
            nd: Any = VdeServer(cfg, self.hub, self.loop)
            self.call(nd.start)
        else:
            nd = VdeClient(cfg, self.hub, self.loop)
            asyncio.run_coroutine_threadsafe(nd.start(), self.loop).result(20)
        self.netdevs.append(nd)
        return nd

    def stream_server(self, path: Path) -> StreamServer:
        cfg = parse_netdev(f"stream,id=st,server=on,addr.type=unix,addr.path={path}")
        assert isinstance(cfg, StreamNetdev)
        nd = StreamServer(cfg, self.hub, self.loop)
        self.call(nd.start)
        self.netdevs.append(nd)
        return nd

    def inject(self, frame: bytes) -> None:
        self.call(self.hub.input, self.test, frame)

    def close(self) -> None:
        for nd in reversed(self.netdevs):
            self.call(nd.close)
        self.netdevs.clear()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def vmlan() -> Iterator[Vmlan]:
    v = Vmlan()
    yield v
    v.close()


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        kw.setdefault("stdin", subprocess.PIPE)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen(argv, **kw)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            for f in (p.stdin, p.stdout, p.stderr):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()


@pytest.fixture
def procs() -> Iterator[Procs]:
    ps = Procs()
    yield ps
    ps.close()


class VdeSwitch:
    """A real ``vde_switch -x -s DIR``; its console (stdin/stdout) answers ``port/allprint``."""

    def __init__(self, procs: Procs, sockdir: Path) -> None:
        need("vde_switch")
        self.dir = sockdir
        self.proc = procs.start(["vde_switch", "-x", "-s", str(sockdir)], stderr=subprocess.DEVNULL)
        wait_for(lambda: (sockdir / "ctl").exists() or self.proc.poll() is not None, what="vde_switch's ctl")
        assert self.proc.poll() is None, "vde_switch exited"
        self.ports()  # vde_switch binds ctl before it listens: its console answers once it is ready

    def ports(self) -> str:
        """The switch's own list of ports, endpoints, descriptions and counters."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"port/allprint\n")
        self.proc.stdin.flush()
        lines = []
        while True:
            line = self.proc.stdout.readline().decode()
            assert line, "vde_switch closed its console"
            if line.startswith("1000 "):
                return "".join(lines)
            lines.append(line)


def plug_peer(procs: Procs, sockdir: Path, *args: str) -> subprocess.Popen[bytes]:
    need("vde_plug")
    return procs.start(["vde_plug", *args, str(sockdir)], stderr=subprocess.DEVNULL)


def send(p: subprocess.Popen[bytes], frame: bytes) -> None:
    assert p.stdin is not None
    p.stdin.write(framed(frame))
    p.stdin.flush()


def receive(p: subprocess.Popen[bytes], timeout: float = 10.0) -> bytes:
    """One frame from a vde_plug's stdout (2-byte big-endian length framing)."""
    assert p.stdout is not None
    fd = p.stdout.fileno()
    deadline = time.monotonic() + timeout

    def read_exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            if not ready:
                raise AssertionError(f"no frame from pid {p.pid} within {timeout} s (got {data!r})")
            chunk = os.read(fd, n - len(data))
            if not chunk:
                raise AssertionError(f"EOF from pid {p.pid} (exit status {p.poll()})")
            data += chunk
        return data

    (size,) = STDIO_HEADER.unpack(read_exact(2))
    return read_exact(size)


def test_vmlan_joins_a_real_vde_switch_as_a_client(vmlan, procs, tmp_path):
    """vde_plug <-> vde_switch <-> vmlan's -netdev vde client <-> vmlan's hub, both ways."""
    sw = VdeSwitch(procs, tmp_path / "sw")
    client = vmlan.vde(f"vde,id=c,sock={sw.dir},port=3")
    peer = plug_peer(procs, sw.dir)
    wait_for(lambda: "vdeplug:" in sw.ports(), what="vde_plug's port")
    listing = sw.ports()
    assert "Port 0003" in listing and f"vmlan:c user=root pid={os.getpid()}" in listing  # what the switch recorded
    out = eth(BCAST, GEN, b"vde_plug -> vde_switch -> vmlan")
    send(peer, out)
    wait_for(lambda: vmlan.test.frames, what="the frame in vmlan's hub")
    assert vmlan.test.frames == [out]
    back = eth(GEN, OTHER, b"vmlan -> vde_switch -> vde_plug")
    vmlan.inject(back)
    assert receive(peer) == back
    assert client.port.counters.rx_frames == 1 and client.port.counters.tx_frames == 1
    sw.proc.terminate()  # the switch goes away: the link goes down, vmlan goes on
    sw.proc.wait(5)
    wait_for(lambda: client.port is None, what="the link to go down")


def test_vde_plugs_on_vmlans_switch(vmlan, procs, tmp_path):
    """vde_plug DIR against vmlan's server=on switch: two plugs reach each other and vmlan's hub."""
    sockdir = tmp_path / "vmlan-sw"
    srv = vmlan.vde(f"vde,id=s,sock={sockdir},server=on")
    a = plug_peer(procs, sockdir, "-D", "plug a")
    b = plug_peer(procs, sockdir, "-D", "plug b")
    wait_for(lambda: len(srv.ports) == 2, what="two ports")
    assert {p.describe().split(" user=")[0][len("port N: "):] for p in srv.ports} == {"plug a", "plug b"}
    assert sorted(p.number for p in srv.ports) == [1, 2]
    ab = eth(OTHER, GEN, b"a -> b through vmlan")
    send(a, ab)
    assert receive(b) == ab
    ba = eth(GEN, OTHER, b"b -> a through vmlan")
    send(b, ba)
    assert receive(a) == ba
    wait_for(lambda: len(vmlan.test.frames) == 2, what="both frames on the hub")
    runt = b"\x01" * 12
    send(a, runt)  # vde_plug passes it; vmlan's switch drops it and counts it, as vde_switch does
    port_a = next(p for p in srv.ports if ": plug a user=" in p.describe())
    wait_for(lambda: port_a.counters.rx_dropped == 1, what="the runt")
    data_path = next(f for f in os.listdir(sockdir) if f.startswith(f"{port_a.number:03d}."))
    assert a.stdin is not None
    a.stdin.close()  # vde_plug quits at EOF, its control stream closes: the port and its file go
    a.wait(5)
    wait_for(lambda: len(srv.ports) == 1, what="plug a's port to go")
    assert data_path not in os.listdir(sockdir)
    vmlan.call(srv.close)
    assert b.wait(5) == 0  # the control stream's EOF ends vde_plug
    assert not sockdir.exists()


def test_vmlan_plug_through_dpipe_between_vde_switch_and_vmlan(vmlan, procs, tmp_path):
    """vde_plug A <-> vde_switch <-> [dpipe: vde_plug = vmlan plug] <-> vmlan's switch <-> vde_plug B."""
    need("dpipe")
    sw = VdeSwitch(procs, tmp_path / "sw")
    ours = tmp_path / "vmlan-sw"
    srv = vmlan.vde(f"vde,id=s,sock={ours},server=on")
    pipe = procs.start(["dpipe", "vde_plug", str(sw.dir), "=", sys.executable, "-m", "vmlan.plug", "-D", "dpipe",
                        str(ours)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    a = plug_peer(procs, sw.dir)
    b = plug_peer(procs, ours)
    wait_for(lambda: len(srv.ports) == 2, timeout=20, what="vmlan plug and vde_plug B on vmlan's switch")
    wait_for(lambda: sw.ports().count("vdeplug:") == 2, what="vde_plug A and dpipe's vde_plug on vde_switch")
    for sender, receiver, text in ((a, b, b"A -> B"), (b, a, b"B -> A")):
        for size in (60, 1514):
            frame = eth(BCAST, GEN if sender is a else OTHER, text, size)
            send(sender, frame)
            assert receive(receiver) == frame
    assert sum(": dpipe user=" in p.describe() for p in srv.ports) == 1
    sw.proc.terminate()  # vde_switch goes: dpipe's vde_plug quits, vmlan plug sees EOF and leaves
    sw.proc.wait(5)
    wait_for(lambda: len(srv.ports) == 1, timeout=20, what="vmlan plug's port to go")
    pipe.wait(10)


@pytest.mark.guest
def test_qemu_vde_guest_on_vmlans_switch_talks_to_a_stream_guest(vmlan, make_guest, tmp_path):
    """QEMU 7.2 ``-netdev vde,sock=DIR`` (through Debian's libvdeplug) on vmlan's switch; the other
    guest is on a stream socket of the same hub. Ping both ways, a 2 MiB file each way."""
    sockdir = tmp_path / "vmlan-sw"
    srv = vmlan.vde(f"vde,id=s,sock={sockdir},server=on")
    stream = tmp_path / "b.sock"
    vmlan.stream_server(stream)
    a = make_guest("a", ["vde", f"sock={sockdir}"], mac="52:54:00:00:0e:01")
    b = make_guest("b", ["stream", "server=off", "addr.type=unix", f"addr.path={stream}"], mac="52:54:00:00:0e:02")
    wait_for(lambda: srv.ports, timeout=30, what="QEMU's VDE port")
    assert srv.ports[0].describe().startswith("port 1: QEMU user=")
    a.wait_ready()
    b.wait_ready()
    a.check("ip addr add 10.0.0.1/24 dev eth0")
    b.check("ip addr add 10.0.0.2/24 dev eth0")
    a.check("ping -c 3 -W 5 10.0.0.2")
    b.check("ping -c 3 -W 5 10.0.0.1")
    for server, client, addr in ((a, b, "10.0.0.1"), (b, a, "10.0.0.2")):
        server.check("dd if=/dev/urandom of=/www/blob bs=1024 count=2048 2>/dev/null && httpd -p 80 -h /www")
        want = server.check("sha256sum /www/blob").split()[0]
        client.check(f"timeout 120 wget -q -O /tmp/blob http://{addr}/blob", timeout=150)
        assert client.check("sha256sum /tmp/blob").split()[0] == want
    port = srv.ports[0]
    assert port.counters.rx_frames > 1000 and port.counters.tx_frames > 1000
    a.close()  # QEMU exits: its control stream closes, the port and its socket file go
    wait_for(lambda: not srv.ports, timeout=20, what="QEMU's port to go")
    assert os.listdir(sockdir) == ["ctl"]


def exchange(a: Any, b: Any, kib: int = 2048) -> None:
    a.check("ip addr add 10.0.0.1/24 dev eth0")
    b.check("ip addr add 10.0.0.2/24 dev eth0")
    a.check("ping -c 3 -W 5 10.0.0.2")
    b.check("ping -c 3 -W 5 10.0.0.1")
    for server, client, addr in ((a, b, "10.0.0.1"), (b, a, "10.0.0.2")):
        server.check(f"dd if=/dev/urandom of=/www/blob bs=1024 count={kib} 2>/dev/null && httpd -p 80 -h /www")
        want = server.check("sha256sum /www/blob").split()[0]
        client.check(f"timeout 120 wget -q -O /tmp/blob http://{addr}/blob", timeout=150)
        assert client.check("sha256sum /tmp/blob").split()[0] == want


@pytest.mark.guest
def test_qemu_on_vde_switch_reaches_a_vmlan_guest_through_vmlans_vde_client(vmlan, procs, make_guest, tmp_path):
    """guest A -netdev vde -> vde_switch <- vmlan -netdev vde (client) -> hub <- stream -> guest B."""
    sw = VdeSwitch(procs, tmp_path / "sw")
    client = vmlan.vde(f"vde,id=c,sock={sw.dir}")
    stream = tmp_path / "b.sock"
    vmlan.stream_server(stream)
    a = make_guest("a", ["vde", f"sock={sw.dir}"], mac="52:54:00:00:0e:11")
    b = make_guest("b", ["stream", "server=off", "addr.type=unix", f"addr.path={stream}"], mac="52:54:00:00:0e:12")
    a.wait_ready()
    b.wait_ready()
    exchange(a, b)
    assert client.port.counters.rx_frames > 1000 and client.port.counters.tx_frames > 1000
    assert "QEMU user=" in sw.ports()


@pytest.mark.guest
def test_two_qemu_vde_guests_joined_by_dpipe_and_vmlan_plug(vmlan, procs, make_guest, tmp_path):
    """guest A -> vde_switch <- [dpipe vde_plug = vmlan plug] -> vmlan's VDE switch <- guest B."""
    need("dpipe")
    sw = VdeSwitch(procs, tmp_path / "sw")
    ours = tmp_path / "vmlan-sw"
    srv = vmlan.vde(f"vde,id=s,sock={ours},server=on")
    procs.start(["dpipe", "vde_plug", str(sw.dir), "=", sys.executable, "-m", "vmlan.plug", str(ours)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    wait_for(lambda: srv.ports, timeout=20, what="vmlan plug on vmlan's switch")
    a = make_guest("a", ["vde", f"sock={sw.dir}"], mac="52:54:00:00:0e:21")
    b = make_guest("b", ["vde", f"sock={ours}"], mac="52:54:00:00:0e:22")
    a.wait_ready()
    b.wait_ready()
    exchange(a, b)
    plug_port = next(p for p in srv.ports if ": vmlan plug: user=" in p.describe())
    assert plug_port.counters.rx_frames > 1000 and plug_port.counters.tx_frames > 1000


def test_vmlan_run_serves_vde_and_vmlan_plug_is_a_subcommand(vmlan_run, procs, tmp_path):
    """``vmlan run -netdev vde,...,server=on`` with vde_plug and ``vmlan plug`` peers; SIGTERM cleans up."""
    sockdir = tmp_path / "sw"
    vm = vmlan_run("-netdev", f"vde,id=s,sock={sockdir},server=on")
    a = plug_peer(procs, sockdir)
    b = procs.start([sys.executable, "-m", "vmlan", "plug", str(sockdir)])
    vm.wait_log("peer s.2 connected")
    f = eth(BCAST, GEN, b"vde_plug -> vmlan run -> vmlan plug")
    send(a, f)
    assert receive(b) == f
    g = eth(GEN, OTHER, b"vmlan plug -> vmlan run -> vde_plug")
    send(b, g)
    assert receive(a) == g
    log = vm.stop()
    assert "attach a QEMU guest to s with: -netdev vde,id=n0,sock=" in log
    assert not sockdir.exists()
    assert b.wait(10) == 1  # the switch went away
