"""Stream links against hostile peers: what an idle, a stuck, a flooding or a swarming peer may cost."""

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time

from vmlan.io.sockopt import BUDGET, LINK_BUFFER
from vmlan.lan import Port

from .conftest import HDR, eth, free_port, recv_exact, recv_framed, send_framed, unix_client, wait_for

A, B, C = (bytes([2, 0, 0, 0, 0, n]) for n in (1, 2, 3))
BCAST = b"\xff" * 6


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_idle_peers_cost_no_receive_buffer(lan, tmp_path):
    """Each peer used to allocate (and zero) a 331 KB receive buffer on accept: 300 idle peers were
    ~100 MB. Now they share one buffer per thread and own nothing until a read ends mid-frame."""
    path = tmp_path / "s.sock"
    running = lan("-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path},max-peers=400")
    a, b = unix_client(path), unix_client(path)
    wait_for(lambda: len(running.netdev("s").ports) == 2)
    f = eth(BCAST, A, size=1500)
    send_framed(a, f)  # the shared area is allocated by now
    assert recv_framed(b) == f
    before = rss_bytes()
    peers = [unix_client(path) for _ in range(300)]
    wait_for(lambda: len(running.netdev("s").ports) == 302)
    grown = rss_bytes() - before
    assert grown < 15 * 2**20, f"300 idle peers took {grown / 2**20:.1f} MiB"
    assert all(port.pending_bytes == 0 for port in running.netdev("s").ports)
    send_framed(peers[-1], f)  # and they all still work
    assert recv_framed(a) == f and recv_framed(peers[0]) == f


def test_a_read_that_ends_mid_frame_keeps_only_the_pending_bytes(lan, tmp_path):
    path = tmp_path / "s.sock"
    running = lan("-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}")
    a, b = unix_client(path), unix_client(path)
    wait_for(lambda: len(running.netdev("s").ports) == 2)
    port_a = running.netdev("s").ports[0]
    first, second = eth(BCAST, A, b"1", size=5000), eth(BCAST, A, b"2", size=700)
    wire = HDR.pack(len(first)) + first + HDR.pack(len(second)) + second
    a.sendall(wire[:3000])
    wait_for(lambda: port_a.pending_bytes == 3000, what="3000 pending bytes")
    a.sendall(wire[3000:5006])  # the first frame and two bytes of the next header
    assert recv_framed(b) == first
    wait_for(lambda: port_a.pending_bytes == 2, what="2 pending bytes")
    a.sendall(wire[5006:])
    assert recv_framed(b) == second
    wait_for(lambda: port_a.pending_bytes == 0, what="nothing pending")


def test_stuck_peers_keep_default_kernel_buffers_and_a_bounded_queue(lan, tmp_path):
    """A flood toward peers that never read used to take 4 MiB (8 MiB as the kernel counts) of forced
    send buffer per peer plus a 4 MiB queue. Now a stuck peer keeps the default buffer; only a peer
    that reads a bulk flow gets the big one."""
    path = tmp_path / "s.sock"
    running = lan("-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}")
    flooder, reader = unix_client(path), unix_client(path)
    _stuck = [unix_client(path) for _ in range(6)]  # kept open, never read
    wait_for(lambda: len(running.netdev("s").ports) == 8)
    ports = running.netdev("s").ports
    reader_port, stuck_ports = ports[1], ports[2:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        default = probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    frame = eth(BCAST, A, size=60000)
    burst = 4 * default // len(frame) + 2  # more than a default kernel buffer holds
    for _ in range(burst):
        send_framed(flooder, frame)
    wait_for(lambda: reader_port._writer_armed, what="the reader's buffer full")
    reader.settimeout(10)
    for _ in range(burst):  # the reader drains its backlog: it moves bulk traffic
        assert recv_framed(reader) == frame
    assert reader_port.counters.tx_dropped == 0
    assert reader_port._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= LINK_BUFFER
    limit = BUDGET.out_limit
    for _ in range((limit + 4 * default) // len(frame) + 10):  # more than a stuck peer's buffer and queue
        send_framed(flooder, frame)
    wait_for(lambda: all(p.counters.tx_dropped > 0 for p in stuck_ports), what="stuck peers dropping")
    for port in stuck_ports:
        assert port._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == default
        assert len(port._out) <= limit + len(frame) + 4


def test_max_peers_refuses_the_rest_at_once_and_logs_once(lan, tmp_path, caplog):
    port = free_port()
    running = lan("-netdev", f"socket,id=l,listen=127.0.0.1:{port},max-peers=2")
    server = running.netdev("l")
    with caplog.at_level(logging.INFO, logger="vmlan"):
        kept = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        wait_for(lambda: len(server.ports) == 2)
        refused = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
        for s in refused:  # accepted and closed at once: EOF (or a reset), never a hang in the backlog
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(10) == b""
        wait_for(lambda: server.refused == 5)
        assert len(server.ports) == 2
        assert caplog.text.count("refusing new connections") == 1
        assert "max-peers=2" in caplog.text
        assert "5 refused (max-peers=2)" in server.describe()
        kept[0].close()
        wait_for(lambda: len(server.ports) == 1)
        assert "accepting peers again (5 connection(s) refused while full)" in caplog.text
        again = socket.create_connection(("127.0.0.1", port), timeout=5)
        wait_for(lambda: len(server.ports) == 2)
    f = eth(BCAST, A)
    send_framed(again, f)
    assert recv_framed(kept[1]) == f
    assert server.refused == 5


class SlowConsumer(Port):
    """A port whose every frame costs ~50 us of the loop's time, like a frame into the user stack."""

    __slots__ = ("cost", "flood", "probes", "seen")

    def __init__(self, cost=50e-6):
        super().__init__("slow")
        self.cost = cost
        self.flood = 0
        self.probes = {}
        self.seen = threading.Condition()

    def transmit(self, frame, src, offload):
        end = time.perf_counter() + self.cost
        while time.perf_counter() < end:
            pass
        if bytes(frame[6:12]) == B:
            with self.seen:
                self.probes[bytes(frame[14:18])] = time.monotonic()
                self.seen.notify_all()
        else:
            self.flood += 1
        return True


# The two peers, in a process of their own as real peers are: sharing pytest's interpreter, a thread
# sending a probe waited for the GIL behind the LAN's loop thread (busy in SlowConsumer) for up to 2 s,
# and that wait was counted as the LAN's. Commands on stdin: flood, probe N, stop. time.monotonic() is
# CLOCK_MONOTONIC on Linux: one clock for both processes.
PEERS = r"""
import socket, struct, sys, threading, time
hdr = struct.Struct(">I")
path, a, b = sys.argv[1], bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3])
def framed(src, payload=b""):
    body = b"\xff" * 6 + src + b"\x08\x00" + payload
    body += b"\x00" * max(0, 64 - len(body))
    return hdr.pack(len(body)) + body
flooder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
flooder.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 2**20)  # a deep backlog behind the flood
flooder.connect(path)
other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
other.connect(path)
blob = framed(a) * 16384
stop = threading.Event()
def flood():
    try:
        while not stop.is_set():
            flooder.sendall(blob)
    except OSError:
        pass
thread = threading.Thread(target=flood, daemon=True)
print("connected", flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "flood":
        thread.start()
    elif cmd[0] == "probe":
        tag = int(cmd[1]).to_bytes(4, "big")
        sent = time.monotonic()
        other.sendall(framed(b, tag + b"probe"))
        print(f"sent {sent!r}", flush=True)
    elif cmd[0] == "stop":
        stop.set()
        flooder.shutdown(socket.SHUT_RDWR)
        thread.join(10)
        break
"""


def test_a_flooding_peer_does_not_hold_up_another_ports_frames(lan, tmp_path):
    """One peer floods 64-byte frames at a hub whose other port is slow (50 us a frame). Draining a
    whole socket buffer per wakeup (~5 MB, ~75 000 frames) used to hold the loop for seconds; with a
    per-turn budget another peer's frame is through within a few milliseconds."""
    path = tmp_path / "s.sock"
    running = lan("-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}")
    peers = subprocess.Popen([sys.executable, "-c", PEERS, str(path), A.hex(), B.hex()], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    delays = []
    try:
        assert peers.stdout.readline() == "connected\n"
        wait_for(lambda: len(running.netdev("s").ports) == 2)
        slow = SlowConsumer()
        running.call(running.runtime.hubs[0].attach, slow)

        def command(text):
            peers.stdin.write(text + "\n")
            peers.stdin.flush()

        command("flood")
        wait_for(lambda: slow.flood > 2000, what="the flood under way")
        for i in range(10):
            command(f"probe {i}")
            answer = peers.stdout.readline().split()
            assert answer[0] == "sent", answer
            tag = i.to_bytes(4, "big")
            with slow.seen:
                assert slow.seen.wait_for(lambda tag=tag: tag in slow.probes, timeout=30), "probe lost"
            delays.append(slow.probes[tag] - float(answer[1]))
        flooded = slow.flood
        wait_for(lambda: slow.flood > flooded + 1000, what="the flood still flowing")
        command("stop")
    finally:
        peers.stdin.close()
        try:
            peers.wait(20)
        finally:
            peers.kill()
    delays.sort()
    # Expected: one turn of the flooder (2 ms of work, checked every 32 frames: ~3.6 ms) per probe.
    assert delays[-1] < 0.1, f"probe delays (s): {delays}"
    assert delays[len(delays) // 2] < 0.05, f"probe delays (s): {delays}"


def test_an_internal_error_behind_the_lan_costs_one_frame_and_is_logged_once(lan, tmp_path, caplog):
    path = tmp_path / "s.sock"
    running = lan("-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}")
    a, b = unix_client(path), unix_client(path)
    wait_for(lambda: len(running.netdev("s").ports) == 2)
    port_a = running.netdev("s").ports[0]

    def broken_filter(port, frame, offload):
        if bytes(frame[14:17]) == b"bad":
            raise RuntimeError("a bug in a filter")
        port.lan.forward(port, frame, offload)

    port_a.rx_filter = broken_filter
    frames = [eth(BCAST, A, b"ok1"), eth(BCAST, A, b"bad"), eth(BCAST, A, b"ok2")]
    with caplog.at_level(logging.INFO, logger="vmlan"):
        a.sendall(b"".join(HDR.pack(len(f)) + f for f in frames))  # one read: the frame after the bad one
        assert recv_framed(b) == frames[0]
        assert recv_framed(b) == frames[2]
        send_framed(a, frames[1])
        send_framed(a, frames[2])
        assert recv_framed(b) == frames[2]
    faults = running.runtime.faults
    assert faults.count("stream rx") == 2
    assert port_a.counters.rx_dropped == 2
    assert caplog.text.count("internal error (stream rx)") == 1
    assert "RuntimeError: a bug in a filter" in caplog.text and "Traceback" in caplog.text
    assert "RuntimeError: a bug in a filter" in faults.as_dict()["stream rx"]["first"]


def test_a_closed_peer_mid_frame_leaves_nothing_behind(lan, tmp_path):
    path = tmp_path / "s.sock"
    running = lan("-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}")
    a, b = unix_client(path), unix_client(path)
    wait_for(lambda: len(running.netdev("s").ports) == 2)
    members = BUDGET.members
    a.sendall(HDR.pack(1000) + b"x" * 10)
    a.close()
    wait_for(lambda: len(running.netdev("s").ports) == 1)
    assert BUDGET.members == members - 1
    f = eth(BCAST, B)
    c = unix_client(path)
    wait_for(lambda: len(running.netdev("s").ports) == 2)
    send_framed(b, f)
    assert recv_exact(c, 4 + len(f))[4:] == f
