"""VDE: the -netdev vde options, the control protocol's codec, vmlan's VDE switch and client, vmlan plug.

Link tests run a Hub with the VDE ports on an event loop thread and talk to it from the test thread
through real unix sockets: raw VDE clients written here (to break the protocol on purpose), vmlan's own
client, and ``python -m vmlan.plug`` as a process. Real vde_switch/vde_plug/QEMU peers are in
tests/interop/test_vde.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmlan.config.errors import ConfigError
from vmlan.config.qemuopts import parse_qemuopts
from vmlan.config.vde import VdeNetdev, parse_vde_netdev
from vmlan.io import vde as vde_io
from vmlan.io.errors import LinkError
from vmlan.io.vde import (
    REQUEST_FIXED,
    SOCKADDR_UN,
    VdeClient,
    VdeRequest,
    VdeServer,
    decode_request,
    decode_sockaddr_un,
    encode_request,
    encode_sockaddr_un,
)
from vmlan.lan import Hub, Port
from vmlan.plug import STDIO_HEADER, VDEPLUG_MAX_FRAME, StdioPort, parse_plug_args
from vmlan.wire.errors import IntegrityError, SanityError, WireError

A, B = bytes([2, 0, 0, 0, 0, 1]), bytes([2, 0, 0, 0, 0, 2])
BCAST = b"\xff" * 6


def eth(dst: bytes, src: bytes, payload: bytes = b"", size: int = 60) -> bytes:
    body = dst + src + b"\x08\x00" + payload
    return body + b"\x00" * max(0, size - len(body))


def vde(text: str) -> VdeNetdev:
    return parse_vde_netdev(parse_qemuopts(text))


def wait_for(cond: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


# -- configuration ----------------------------------------------------------------------------------------
def test_client_options_and_defaults():
    assert vde("vde,id=v,sock=/tmp/sw") == VdeNetdev("v", 0, "/tmp/sw", False, 0, None, None, 0o700)
    nd = vde("vde,id=v,sock=/tmp/sw,port=5,mode=0770,hubid=2,reconnect-ms=250")
    assert (nd.port, nd.mode, nd.hubid, nd.reconnect_ms, nd.server) == (5, 0o770, 2, 250, False)
    assert vde("vde,id=v,mode=448").mode == 0o700  # QEMU reads numbers with base 0: 448 is 0700
    assert vde("vde,id=v").sock == ""  # libvdeplug's default switch
    assert vde("vde,id=v,group=0").gid == 0
    assert vde("vde,id=v,group=root").gid == 0
    assert vde("vde,id=v,sock=/tmp/a,,b").sock == "/tmp/a,b"
    assert VdeNetdev.driver == "vde" and nd.driver == "vde"


def test_server_options_and_defaults():
    nd = vde("vde,id=s,sock=/tmp/sw,server=on")
    assert (nd.server, nd.mode, nd.max_peers, nd.port) == (True, 0o600, 32, 0)
    nd = vde("vde,id=s,sock=/tmp/sw,server=on,mode=0660,max-peers=4,group=root")
    assert (nd.mode, nd.max_peers, nd.gid) == (0o660, 4, 0)
    assert nd.info == "sock=/tmp/sw,server=on"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vde,sock=/tmp/sw", "Parameter 'id' is missing"),
        ("vde,id=1x", "Parameter 'id' expects an identifier (got '1x' for netdev)"),
        ("vde,id=v,bogus=1", "Invalid parameter 'bogus' for netdev type 'vde'"),
        ("vde,id=v,port=1,port=2", "Parameter 'port' given more than once"),
        ("vde,id=v,port=70000", "Parameter 'port' expects a value in 0..65535 (got '70000')"),
        ("vde,id=v,port=x", "Parameter 'port' expects a number (got 'x')"),
        ("vde,id=v,mode=010000", "Parameter 'mode' expects a value in 0..4095 (got '010000')"),
        ("vde,id=v,mode=0789", "Parameter 'mode' expects a number (got '0789')"),
        ("vde,id=v,group=no-such-group-here", "Parameter 'group': no such group 'no-such-group-here'"),
        ("vde,id=v,group=", "Parameter 'group' must name a group (got '')"),
        ("vde,id=v,server=on", "Parameter 'sock' is missing (server=on serves the control directory sock=DIR)"),
        ("vde,id=v,server=maybe,sock=/x", "Parameter 'server' expects 'on' or 'off' (got 'maybe')"),
        ("vde,id=v,server=on,sock=/x,port=3", "Parameter 'port' is only valid without server=on"),
        ("vde,id=v,server=on,sock=/x,reconnect-ms=3", "Parameter 'reconnect-ms' is only valid without server=on"),
        ("vde,id=v,sock=/x,max-peers=3", "Parameter 'max-peers' is only valid with server=on"),
        ("vde,id=v,server=on,sock=/x,max-peers=0", "Parameter 'max-peers' expects a value in 1..1024 (got '0')"),
        ("vde,id=v,sock=/" + "d" * 110, "Parameter 'sock' is too long for a unix socket path"),
        ("vde,id=v,server=on,sock=/" + "d" * 96, "Parameter 'sock' is too long for the data socket paths"),
        ("type=tap,id=v", "Parameter 'type' does not accept value 'tap' (expected 'vde')"),
    ],
)
def test_bad_options_give_one_line(text, message):
    with pytest.raises(ConfigError) as err:
        vde(text)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


# -- the control protocol ---------------------------------------------------------------------------------
# What Debian's vde_plug (vdeplug4 4.0.1) sent to vde_switch 2.3.2, captured with strace: 150 bytes.
VDE_PLUG_REQUEST = (
    b"\xce\xfa\xed\xfe\x03\x00\x00\x00\x00\x00\x00\x00\x01\x00/tmp/vdeprobe/sw/.16312-00000"
    + b"\x00" * (108 - len("/tmp/vdeprobe/sw/.16312-00000"))
    + b"vdeplug: user=root pid=16312"
)
# vde_switch's answer in the same exchange: one raw struct sockaddr_un.
VDE_SWITCH_REPLY = b"\x01\x00/tmp/vdeprobe/sw/001.5" + b"\x00" * (108 - len("/tmp/vdeprobe/sw/001.5"))


def test_golden_request_and_reply():
    assert len(VDE_PLUG_REQUEST) == 150 and len(VDE_SWITCH_REPLY) == 110
    req = decode_request(VDE_PLUG_REQUEST)
    assert req == VdeRequest(0, 0, b"/tmp/vdeprobe/sw/.16312-00000", "vdeplug: user=root pid=16312")
    assert encode_request(req.path, 0, req.description) == VDE_PLUG_REQUEST
    assert decode_sockaddr_un(VDE_SWITCH_REPLY) == b"/tmp/vdeprobe/sw/001.5"
    assert encode_sockaddr_un(b"/tmp/vdeprobe/sw/001.5") == VDE_SWITCH_REPLY


def test_port_travels_in_the_type_field():
    raw = encode_request(b"/x", 5, "")
    assert raw[8:12] == b"\x00\x05\x00\x00"  # REQ_NEW_CONTROL + (5 << 8), host order (little-endian here)
    assert len(raw) == REQUEST_FIXED and decode_request(raw).port == 5
    assert decode_request(encode_request(b"/x", 0, "d" * 200)).description == "d" * 128


@pytest.mark.parametrize(
    ("raw", "error", "message"),
    [
        (b"\xce\xfa", IntegrityError, "[VDE] request of 2 bytes < 12"),
        (b"\x00" * 150, IntegrityError, "[VDE] bad magic 0x00000000 (not a VDE request, or a v0 one)"),
        (VDE_PLUG_REQUEST[:4] + b"\x02\x00\x00\x00" + VDE_PLUG_REQUEST[8:], SanityError,
         "[VDE] request for a version 2 port (only version 3 is supported)"),
        (VDE_PLUG_REQUEST[:100], IntegrityError, "[VDE] v3 request of 100 bytes < 122"),
        (VDE_PLUG_REQUEST[:8] + b"\x07\x00\x00\x00" + VDE_PLUG_REQUEST[12:], SanityError, "[VDE] bad request type 7"),
        (VDE_PLUG_REQUEST[:12] + b"\x02\x00" + VDE_PLUG_REQUEST[14:], SanityError,
         "[VDE] socket address family 2 is not AF_UNIX"),
    ],
)
def test_bad_requests(raw, error, message):
    with pytest.raises(error) as err:
        decode_request(raw)
    assert str(err.value) == message


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_wire_error(raw):
    with contextlib.suppress(WireError):
        decode_request(raw)


@given(
    st.binary(min_size=1, max_size=107).filter(lambda p: b"\0" not in p),
    st.integers(0, 0xFFFF),
    st.text(max_size=40).filter(lambda t: "\0" not in t),
)
def test_request_round_trip(path, port, description):
    req = decode_request(encode_request(path, port, description))
    assert (req.path, req.port, req.description) == (path, port, description)


# -- harness: a hub on an event loop thread -------------------------------------------------------------
class Capture(Port):
    """A port of the hub the test reads: keeps a copy of every frame delivered to it."""

    def __init__(self, name: str = "capture") -> None:
        super().__init__(name)
        self.frames: list[bytes] = []

    def transmit(self, frame, src, offload):
        self.frames.append(bytes(frame))
        return True


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.hub = Hub(0)
        self.capture = Capture()
        self.call(self.hub.attach, self.capture)
        self.closers: list[Callable[[], None]] = []

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        async def wrapper() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(10)

    def run(self, coro: Any, timeout: float = 20) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def server(self, text: str) -> VdeServer:
        srv = VdeServer(vde(text), self.hub, self.loop)
        self.call(srv.start)
        self.closers.append(srv.close)
        return srv

    def client(self, text: str) -> VdeClient:
        cl = VdeClient(vde(text), self.hub, self.loop)
        self.closers.append(cl.close)
        self.run(cl.start())
        return cl

    def inject(self, frame: bytes) -> None:
        """A frame from the capture port's peer into the hub."""
        self.call(self.hub.input, self.capture, frame)

    def stop(self) -> None:
        for close in reversed(self.closers):
            self.call(close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def lt() -> Iterator[LoopThread]:
    running = LoopThread()
    yield running
    running.stop()


class RawClient:
    """A VDE client written out by hand, as libvdeplug does it, so tests can bend each step."""

    def __init__(self, sockdir: Path, tmp: Path, name: str = "c") -> None:
        self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctl.settimeout(5)
        self.ctl.connect(str(sockdir / "ctl"))
        self.data = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.data.settimeout(5)
        self.path = str(tmp / f".{name}-{os.getpid()}")
        self.data.bind(self.path)
        self.switch_path = ""

    def request(self, raw: bytes | None = None, port: int = 0) -> bytes:
        """Send a request; returns the switch's whole answer (b"" if it closed the connection)."""
        self.ctl.sendall(raw if raw is not None else encode_request(self.path.encode(), port, "test client"))
        reply = b""
        while len(reply) < SOCKADDR_UN.size:
            chunk = self.ctl.recv(SOCKADDR_UN.size - len(reply))
            if not chunk:
                break
            reply += chunk
        return reply

    def join(self, port: int = 0) -> str:
        reply = self.request(port=port)
        assert len(reply) == SOCKADDR_UN.size, f"refused: {reply!r}"
        self.switch_path = decode_sockaddr_un(reply).decode()
        self.data.connect(self.switch_path)
        return self.switch_path

    def close(self) -> None:
        self.ctl.close()
        self.data.close()


# -- vmlan as a VDE switch ------------------------------------------------------------------------------
def test_server_handshake_frames_both_ways_and_cleanup(lt, tmp_path):
    sockdir = tmp_path / "sw"
    srv = lt.server(f"vde,id=s,sock={sockdir},server=on")
    assert stat.S_IMODE(os.stat(sockdir).st_mode) == 0o2700  # vde_switch's directory mode for 0600
    assert stat.S_IMODE(os.stat(sockdir / "ctl").st_mode) == 0o600
    c = RawClient(sockdir, tmp_path)
    path = c.join()
    fd = wait_for(lambda: srv.ports and srv.ports[0].data_fd, what="the port")
    assert path == f"{sockdir}/001.{fd}"  # vde_switch's DIR/%03d.%d
    assert stat.S_ISSOCK(os.stat(path).st_mode) and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    port = srv.ports[0]
    assert port.name == "s.1" and port.describe() == "port 1: test client"

    f = eth(BCAST, A, b"from the vde client")
    c.data.send(f)
    wait_for(lambda: lt.capture.frames, what="the frame in the hub")
    assert lt.capture.frames == [f]
    g = eth(A, B, b"to the vde client")
    lt.inject(g)
    assert c.data.recv(65536) == g

    c.data.send(b"\x01" * 13)  # a runt: dropped and counted, as vde_switch drops it
    wait_for(lambda: port.counters.rx_dropped == 1, what="the runt to be counted")
    assert lt.capture.frames == [f] and port.counters.rx_frames == 1

    c.ctl.close()  # control EOF: the port goes, and so does its socket file
    wait_for(lambda: not srv.ports, what="the port to go")
    assert not os.path.exists(path)
    assert port not in lt.hub.ports
    c.data.close()
    lt.call(srv.close)
    assert not sockdir.exists()


def test_two_clients_get_ports_in_order_and_reach_each_other(lt, tmp_path):
    sockdir = tmp_path / "sw"
    srv = lt.server(f"vde,id=s,sock={sockdir},server=on")
    one, two = RawClient(sockdir, tmp_path, "one"), RawClient(sockdir, tmp_path, "two")
    assert os.path.basename(one.join()).startswith("001.")
    assert os.path.basename(two.join()).startswith("002.")
    f = eth(B, A, b"one to two")
    one.data.send(f)
    assert two.data.recv(65536) == f
    assert [p.name for p in srv.ports] == ["s.1", "s.2"]
    one.close()
    wait_for(lambda: len(srv.ports) == 1, what="port 1 to go")
    three = RawClient(sockdir, tmp_path, "three")
    assert os.path.basename(three.join()).startswith("001.")  # the lowest free port, as vde_switch
    for c in (two, three):
        c.close()


def test_requested_ports_and_max_peers(lt, tmp_path):
    sockdir = tmp_path / "sw"
    srv = lt.server(f"vde,id=s,sock={sockdir},server=on,max-peers=3")
    five = RawClient(sockdir, tmp_path, "five")
    assert five.request(port=5) == b""  # only ports 1..3
    three = RawClient(sockdir, tmp_path, "three")
    assert os.path.basename(three.join(port=3)).startswith("003.")
    again = RawClient(sockdir, tmp_path, "again")
    assert again.request(port=3) == b""  # in use
    others = [RawClient(sockdir, tmp_path, f"o{i}") for i in range(3)]
    assert [len(c.request()) for c in others] == [110, 110, 0]  # ports 1 and 2, then none is left
    wait_for(lambda: srv.refused == 3, what="three refusals")
    assert sorted(p.number for p in srv.ports) == [1, 2, 3]
    for c in (five, three, again, *others):
        c.close()


@pytest.mark.parametrize(
    ("mangle", "logged"),
    [
        (lambda raw: b"\x00" * len(raw), "bad magic"),
        (lambda raw: raw[:4] + struct.pack("=I", 2) + raw[8:], "version 2"),
        (lambda raw: raw[:8] + struct.pack("=I", 1) + raw[12:], "management port 0"),
        (lambda raw: raw[:14] + b"relative/path".ljust(108, b"\0") + raw[122:], "is not absolute"),
        (lambda raw: raw[:14] + b"\0abstract".ljust(108, b"\0") + raw[122:], "abstract"),
        (lambda raw: raw[:14] + b"/nonexistent/sock".ljust(108, b"\0") + raw[122:], "No such file"),
        (lambda raw: raw[:14] + b"/etc/passwd".ljust(108, b"\0") + raw[122:], "is not a socket"),
    ],
)
def test_bad_requests_are_refused_by_closing(lt, tmp_path, caplog, mangle, logged):
    sockdir = tmp_path / "sw"
    srv = lt.server(f"vde,id=s,sock={sockdir},server=on")
    c = RawClient(sockdir, tmp_path)
    with caplog.at_level("WARNING", logger="vmlan"):
        assert c.request(mangle(encode_request(c.path.encode(), 0, "x"))) == b""
        wait_for(lambda: srv.refused == 1, what="the refusal")
    assert not srv.ports and os.listdir(sockdir) == ["ctl"]
    assert any(logged in r.getMessage() and "refused a client" in r.getMessage() for r in caplog.records)
    c.close()


def test_request_split_across_segments_and_a_silent_client(lt, tmp_path, monkeypatch):
    monkeypatch.setattr(vde_io, "HANDSHAKE_TIMEOUT", 0.3)
    sockdir = tmp_path / "sw"
    srv = lt.server(f"vde,id=s,sock={sockdir},server=on")
    c = RawClient(sockdir, tmp_path)
    raw = encode_request(c.path.encode(), 0, "slow client")
    for i in range(0, len(raw), 7):
        c.ctl.sendall(raw[i : i + 7])
        time.sleep(0.005)
    assert len(c.ctl.recv(110)) == 110
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.settimeout(5)
    silent.connect(str(sockdir / "ctl"))
    assert silent.recv(10) == b""  # closed by the switch after HANDSHAKE_TIMEOUT
    assert srv.refused == 1 and len(srv.ports) == 1
    silent.close()
    c.close()


def test_client_naming_another_users_socket_is_refused(lt):
    """A client may only have frames sent to a socket of its own (checked with SO_PEERCRED)."""
    if os.geteuid() != 0:
        pytest.fail("this test switches to user nobody: run it as root (CI does)", pytrace=False)
    shared = Path(tempfile.mkdtemp(prefix="vmlan-vde-"))  # pytest's tmp_path is private to root
    try:
        os.chmod(shared, 0o777)
        sockdir = shared / "sw"
        srv = lt.server(f"vde,id=s,sock={sockdir},server=on,mode=0666")
        victim = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        victim.bind(str(shared / "roots.sock"))  # root's socket, which the client names as its own
        script = f"""
import os, socket, sys
sys.path.insert(0, {str(Path(vde_io.__file__).parents[2])!r})
from vmlan.io.vde import encode_request
os.setgid(65534)
os.setuid(65534)
def ask(path):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(5)
    c.connect({str(sockdir / "ctl")!r})
    c.sendall(encode_request(path.encode(), 0, "nobody"))
    return len(c.recv(110))
own = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
own.bind({str(shared / "nobody.sock")!r})
print(ask({str(shared / "roots.sock")!r}), ask({str(shared / "nobody.sock")!r}))
"""
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["0", "110"]
        assert srv.refused == 1
        victim.close()
    finally:
        lt.call(srv.close)
        shutil.rmtree(shared, ignore_errors=True)


def test_stale_ctl_is_replaced_and_a_live_switch_is_not(lt, tmp_path):
    sockdir = tmp_path / "sw"
    sockdir.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sockdir / "ctl"))
    stale.close()  # the file stays, nobody listens: a crashed switch's leftover
    srv = lt.server(f"vde,id=s,sock={sockdir},server=on")
    other = VdeServer(vde(f"vde,id=t,sock={sockdir},server=on"), lt.hub, lt.loop)
    with pytest.raises(LinkError, match=f"^-netdev vde,id=t: another switch is serving {sockdir}$"):
        lt.call(other.start)
    RawClient(sockdir, tmp_path).join()  # the first one still serves
    lt.call(srv.close)
    assert sockdir.exists() and os.listdir(sockdir) == []  # not ours to remove: it existed before
    (tmp_path / "file").write_text("x")
    notdir = VdeServer(vde(f"vde,id=u,sock={tmp_path / 'file'},server=on"), lt.hub, lt.loop)
    with pytest.raises(LinkError, match="exists and is not a directory"):
        lt.call(notdir.start)


def test_a_client_that_never_reads_loses_frames_counted_and_bounded(lt, tmp_path):
    sockdir = tmp_path / "sw"
    srv = lt.server(f"vde,id=s,sock={sockdir},server=on")
    c = RawClient(sockdir, tmp_path)
    c.join()
    port = wait_for(lambda: srv.ports and srv.ports[0], what="the port")
    frame = eth(A, B, b"x", 1500)

    def flood() -> None:
        for _ in range(20000):
            lt.hub.input(lt.capture, frame)

    lt.call(flood)
    assert port.counters.tx_dropped > 0
    assert len(port._queue) <= vde_io.QUEUE_FRAMES
    assert port.counters.tx_frames + port.counters.tx_dropped == 20000
    got = 0
    c.data.settimeout(0.5)
    try:
        while True:
            assert c.data.recv(65536) == frame
            got += 1
    except TimeoutError:
        pass
    assert got == port.counters.tx_frames  # everything counted as sent did arrive, in one piece
    c.close()


# -- vmlan as a VDE client --------------------------------------------------------------------------------
class FakeSwitch:
    """A listening ctl socket the test answers by hand, to see what vmlan's client sends and does."""

    def __init__(self, sockdir: Path) -> None:
        sockdir.mkdir()
        self.dir = sockdir
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(sockdir / "ctl"))
        self.listener.listen(4)
        self.listener.settimeout(10)
        self.seen: dict[str, Any] = {}
        self.data = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.data_path = str(sockdir / "007.3")
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        self.conn = conn
        raw = conn.recv(256)
        req = decode_request(raw)
        path = req.path.decode()
        st_ = os.stat(path)
        self.seen = {"raw": raw, "req": req, "mode": stat.S_IMODE(st_.st_mode), "gid": st_.st_gid}
        self.data.connect(path)
        self.data.bind(self.data_path)
        conn.sendall(encode_sockaddr_un(self.data_path.encode()))


def test_client_request_names_mode_group_and_unlinks_its_socket(lt, tmp_path):
    fake = FakeSwitch(tmp_path / "sw")
    nogroup = 65534
    cl = lt.client(f"vde,id=c,sock={fake.dir},port=7,mode=0750,group={nogroup}")
    fake.thread.join(5)
    req = fake.seen["req"]
    name = os.path.basename(req.path.decode())
    assert os.path.dirname(req.path.decode()) == str(fake.dir)
    assert name.startswith(f".{os.getpid():05d}-") and len(name) == len(".00000-00000")  # libvdeplug's .%05d-%05d
    assert (fake.seen["mode"], fake.seen["gid"], req.port) == (0o750, nogroup, 7)
    assert req.description.startswith("vmlan:c user=") and f"pid={os.getpid()}" in req.description
    assert len(fake.seen["raw"]) == REQUEST_FIXED + len(req.description.encode())  # no NUL sent
    assert not os.path.exists(req.path)  # unlinked once connected, as vdeplug4 does
    assert cl.port is not None and cl.port.number == 7
    assert stat.S_IMODE(os.stat(fake.data_path).st_mode) == 0o750  # libvdeplug chmods the switch's too
    f = eth(BCAST, A, b"from the switch")
    fake.data.send(f)
    wait_for(lambda: lt.capture.frames, what="the frame")
    assert lt.capture.frames == [f]
    g = eth(A, B, b"to the switch")
    lt.inject(g)
    fake.data.settimeout(5)
    assert fake.data.recv(65536) == g
    fake.conn.close()  # the switch goes away: the port goes down, logged
    wait_for(lambda: cl.port is None, what="the port to go down")
    assert cl.describe() == f"sock={fake.dir}, not connected"


def test_client_and_server_of_vmlan_join_hubs_and_reconnect(lt, tmp_path):
    sockdir = tmp_path / "sw"
    other = LoopThread()  # the switch lives in another "process": its own loop and hub
    try:
        srv = other.server(f"vde,id=s,sock={sockdir},server=on")
        gone: list[str] = []
        cl = VdeClient(vde(f"vde,id=c,sock={sockdir},reconnect-ms=50"), lt.hub, lt.loop)
        cl.on_gone = gone.append
        lt.closers.append(cl.close)
        lt.run(cl.start())
        wait_for(lambda: srv.ports, what="the client's port on the switch")
        f = eth(BCAST, A, b"across")
        lt.inject(f)
        wait_for(lambda: other.capture.frames, what="the frame on the switch's hub")
        other.inject(eth(A, B, b"back"))
        wait_for(lambda: lt.capture.frames, what="the frame back")
        other.call(srv.close)
        wait_for(lambda: gone, what="the client to see the switch go")
        assert cl.port is None
        srv2 = other.server(f"vde,id=s,sock={sockdir},server=on")
        wait_for(lambda: cl.port is not None and srv2.ports, what="the client to rejoin")
        other.inject(eth(A, B, b"after the restart"))
        wait_for(lambda: len(lt.capture.frames) == 2, what="a frame after the restart")
    finally:
        lt.call(cl.close)
        other.stop()


def test_client_errors_at_startup(lt, tmp_path):
    with pytest.raises(LinkError, match=r"^-netdev vde,id=c: Could not open vde: No such file or directory$"):
        lt.client(f"vde,id=c,sock={tmp_path / 'none'}")
    sockdir = tmp_path / "sw"
    lt.server(f"vde,id=s,sock={sockdir},server=on,max-peers=1")
    lt.client(f"vde,id=c1,sock={sockdir}")
    with pytest.raises(LinkError, match="the switch closed the control connection without a port"):
        lt.client(f"vde,id=c2,sock={sockdir}")
    assert sorted(os.listdir(sockdir))[0].startswith("001.") and len(os.listdir(sockdir)) == 2  # no leftovers


# -- vmlan plug: the stdio stream -----------------------------------------------------------------------
def framed(*frames: bytes) -> bytes:
    return b"".join(STDIO_HEADER.pack(len(f)) + f for f in frames)


def test_stdio_port_framing_split_anywhere_zero_length_and_oversize(lt):
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    closed: list[tuple[str, bool]] = []
    port = StdioPort("stdio", in_r, out_w, lt.loop, lambda p, why, eof: closed.append((why, eof)))
    lt.call(lt.hub.attach, port)
    lt.call(port.start)
    frames = [eth(BCAST, A, bytes([i]) * i) for i in range(1, 40)]
    stream = framed(frames[0]) + b"\x00\x00" + framed(*frames[1:])  # a zero length is skipped
    for i in range(0, len(stream), 5):  # split at every fifth byte, headers included
        os.write(in_w, stream[i : i + 5])
    wait_for(lambda: len(lt.capture.frames) == len(frames), what="every frame")
    assert lt.capture.frames == frames
    big = eth(A, B, b"", VDEPLUG_MAX_FRAME + 1)
    ok = eth(A, B, b"", VDEPLUG_MAX_FRAME)
    lt.inject(big)  # vde_plug's reader would lose its place: dropped, counted
    lt.inject(ok)
    got = b""
    while len(got) < 2 + len(ok):
        got += os.read(out_r, 65536)
    assert got == framed(ok) and port.counters.tx_dropped == 1
    os.close(in_w)
    wait_for(lambda: closed, what="EOF on stdin")
    assert closed == [("end of stdin", True)]
    assert os.get_blocking(in_r) and os.get_blocking(out_w)  # the fds' flags are restored
    for fd in (in_r, out_r, out_w):
        os.close(fd)


def plug(*args: str, **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "vmlan.plug", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def read_framed(stream: Any, count: int = 1) -> list[bytes]:
    out = []
    for _ in range(count):
        (size,) = STDIO_HEADER.unpack(stream.read(2))
        out.append(stream.read(size))
    return out


def test_plug_process_joins_a_switch_and_ends_cleanly(lt, tmp_path):
    sockdir = tmp_path / "sw"
    srv = lt.server(f"vde,id=s,sock={sockdir},server=on")
    p = plug("-D", "test plug", str(sockdir))
    try:
        port = wait_for(lambda: srv.ports and srv.ports[0], timeout=20, what="the plug's port")
        assert port.describe().startswith("port 1: test plug user=")
        f = eth(BCAST, A, b"through the plug")
        p.stdin.write(framed(f))
        p.stdin.flush()
        wait_for(lambda: lt.capture.frames, what="the frame from stdin")
        assert lt.capture.frames == [f]
        g = eth(A, B, b"out of the plug")
        lt.inject(g)
        assert read_framed(p.stdout) == [g]
        p.stdin.close()  # EOF: status 0, the port and the plug's socket files go
        assert p.wait(10) == 0
        assert p.stderr.read() == b""
        wait_for(lambda: not srv.ports, what="the port to go")
        assert os.listdir(sockdir) == ["ctl"]
    finally:
        p.kill()
        p.wait()


def test_plug_exits_1_when_the_switch_goes_and_2_on_a_bad_option(lt, tmp_path):
    sockdir = tmp_path / "sw"
    srv = lt.server(f"vde,id=s,sock={sockdir},server=on")
    p = plug(str(sockdir))
    try:
        wait_for(lambda: srv.ports, timeout=20, what="the plug's port")
        lt.call(srv.close)
        assert p.wait(10) == 1
        err = p.stderr.read().decode()
        assert err == f"vmlan plug: the switch at {sockdir} went away (control connection closed)\n"
    finally:
        p.kill()
        p.wait()
    out = subprocess.run([sys.executable, "-m", "vmlan.plug", str(tmp_path / "none")], capture_output=True,
                         text=True, timeout=20)
    expected = f"vmlan plug: cannot join {tmp_path / 'none'}: No such file or directory\n"
    assert (out.returncode, out.stderr) == (1, expected)
    out = subprocess.run([sys.executable, "-m", "vmlan.plug", "-m", "9", "x"], capture_output=True, text=True,
                         timeout=20)
    assert (out.returncode, out.stderr) == (2, "vmlan plug: option '-m' expects an octal mode (got '9')\n")


def test_plug_arguments():
    cfg, descr, verbosity = parse_plug_args(["-m", "660", "--port=3", "-g", "0", "-D", "mine", "-v", "/tmp/a,b"])
    assert (cfg.sock, cfg.mode, cfg.port, cfg.gid, verbosity) == ("/tmp/a,b", 0o660, 3, 0, 1)
    assert descr.startswith(f"mine user={pwd.getpwuid(os.getuid()).pw_name} pid={os.getpid()}")
    cfg, descr, _ = parse_plug_args([])
    assert cfg.sock == "" and cfg.mode == 0o700 and descr.startswith("vmlan plug: user=")
    for argv, message in ((["--bogus"], "unrecognized option '--bogus'"), (["a", "b"], "one switch directory only"),
                          (["-g"], "option '-g' requires an argument")):
        with pytest.raises(ConfigError, match=message):
            parse_plug_args(argv)
