import logging
import socket
import time

import pytest

from vmlan.io.errors import LinkError
from vmlan.io.sockopt import BUDGET
from vmlan.io.stream import NET_BUFSIZE

from .conftest import HDR, RunningLan, eth, free_port, recv_framed, send_framed

A, B, C = (bytes([2, 0, 0, 0, 0, n]) for n in (1, 2, 3))
BCAST = b"\xff" * 6


def unix_client(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    s.settimeout(5)
    return s


def wait_for(predicate, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached")


def test_frames_cross_a_unix_stream_hub_split_at_any_byte(lan, tmp_path):
    path = tmp_path / "s.sock"
    running = lan("-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}")
    a, b = unix_client(path), unix_client(path)
    wait_for(lambda: len(running.netdev("s").ports) == 2)
    frames = [eth(BCAST, A, bytes([i]) * i, size=60 + i) for i in range(40)]
    wire = b"".join(HDR.pack(len(f)) + f for f in frames)
    for i in range(0, len(wire), 7):  # 7-byte writes: headers and frames straddle reads
        a.sendall(wire[i : i + 7])
    assert [recv_framed(b) for _ in frames] == frames


def test_zero_length_frames_are_skipped_and_runts_counted(lan, tmp_path):
    path = tmp_path / "s.sock"
    running = lan("-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}")
    a, b = unix_client(path), unix_client(path)
    wait_for(lambda: len(running.netdev("s").ports) == 2)
    a.sendall(HDR.pack(0))
    send_framed(a, b"\x01" * 10)
    good = eth(BCAST, A)
    send_framed(a, good)
    assert recv_framed(b) == good
    port_a = running.netdev("s").ports[0]
    assert port_a.counters.rx_dropped == 1 and port_a.counters.rx_frames == 1


def test_oversized_frame_closes_only_that_connection(lan, tmp_path, caplog):
    path = tmp_path / "s.sock"
    running = lan("-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}")
    a, b, c = unix_client(path), unix_client(path), unix_client(path)
    wait_for(lambda: len(running.netdev("s").ports) == 3)
    with caplog.at_level(logging.INFO, logger="vmlan"):
        a.sendall(HDR.pack(NET_BUFSIZE + 1))
        assert a.recv(10) == b""  # closed by vmlan
        wait_for(lambda: len(running.netdev("s").ports) == 2)
    assert "oversized packet received, connection terminated." in caplog.text
    big = eth(BCAST, B, size=NET_BUFSIZE)  # the largest legal frame still crosses
    send_framed(b, big)
    assert recv_framed(c) == big


def test_stuck_peer_loses_frames_but_never_blocks_the_hub(lan, tmp_path):
    path = tmp_path / "s.sock"
    running = lan("-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}")
    a, _stuck, c = unix_client(path), unix_client(path), unix_client(path)
    wait_for(lambda: len(running.netdev("s").ports) == 3)
    stuck_port = running.netdev("s").ports[1]
    frame = eth(BCAST, A, size=60000)
    total = 300  # 18 MB: more than the stuck peer's socket buffers plus vmlan's output limit
    received = 0
    for _ in range(total):
        send_framed(a, frame)
        while True:  # keep the healthy peer drained so only the stuck one backs up
            c.settimeout(0.001)
            try:
                recv_framed_nonblock = recv_framed(c)
            except (TimeoutError, BlockingIOError):
                break
            assert recv_framed_nonblock == frame
            received += 1
    c.settimeout(5)
    while received < total:
        assert recv_framed(c) == frame
        received += 1
    assert stuck_port.counters.tx_dropped > 0
    assert len(stuck_port._out) <= BUDGET.out_limit + len(frame) + 4


def test_socket_listen_accepts_many_peers_on_tcp(lan):
    port = free_port()
    running = lan("-netdev", f"socket,id=l,listen=127.0.0.1:{port}")
    peers = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
    wait_for(lambda: len(running.netdev("l").ports) == 4)
    assert running.netdev("l").ports[0].describe().startswith("socket: connection from 127.0.0.1:")
    f = eth(BCAST, A)
    send_framed(peers[0], f)
    assert [recv_framed(p) for p in peers[1:]] == [f, f, f]


def test_connect_without_listener_is_a_clear_error():
    port = free_port()
    running = RunningLan(["-netdev", f"socket,id=c,connect=127.0.0.1:{port}"])
    try:
        expected = rf"-netdev socket,id=c: connect to tcp:127\.0\.0\.1:{port} failed: Connection refused"
        with pytest.raises(LinkError, match=expected):
            running.start()
    finally:
        running.stop()


def test_connect_with_reconnect_finds_a_late_listener_and_redials(lan):
    port = free_port()
    running = lan(
        "-netdev", f"stream,id=c,addr.type=inet,addr.host=127.0.0.1,addr.port={port},reconnect-ms=100",
        "-netdev", f"socket,id=l,listen=127.0.0.1:{free_port()}",
    )
    server = socket.create_server(("127.0.0.1", port))
    server.settimeout(5)
    conn, _ = server.accept()
    conn.settimeout(5)
    wait_for(lambda: running.netdev("c").port is not None)
    conn.close()
    conn, _ = server.accept()  # vmlan dials again after the peer left
    conn.settimeout(5)
    wait_for(lambda: running.netdev("c").port is not None)
    l_addr = running.netdev("l").cfg.addr
    other = socket.create_connection(("127.0.0.1", l_addr.port), timeout=5)
    wait_for(lambda: len(running.netdev("l").ports) == 1)
    f = eth(BCAST, C)
    send_framed(other, f)
    assert recv_framed(conn) == f
    server.close()


def test_unix_socket_removed_on_close(tmp_path):
    path = tmp_path / "s.sock"
    running = RunningLan(["-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}"]).start()
    assert path.exists()
    running.stop()
    assert not path.exists()


def test_refuses_to_replace_a_file_that_is_not_a_socket(tmp_path):
    path = tmp_path / "precious.txt"
    path.write_text("keep me")
    running = RunningLan(["-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}"])
    try:
        with pytest.raises(LinkError, match="exists and is not a socket"):
            running.start()
    finally:
        running.stop()
    assert path.read_text() == "keep me"


def test_hubs_in_one_process_are_separate_lans(lan, tmp_path):
    p1, p2, q1 = tmp_path / "p1.sock", tmp_path / "p2.sock", tmp_path / "q1.sock"
    running = lan(
        "-netdev", f"stream,id=p1,server=on,addr.type=unix,addr.path={p1}",
        "-netdev", f"stream,id=p2,server=on,addr.type=unix,addr.path={p2}",
        "-netdev", f"stream,id=q1,server=on,addr.type=unix,addr.path={q1},hubid=7",
        "-hub", "id=7,mode=switch",
    )
    a, b, other = unix_client(p1), unix_client(p2), unix_client(q1)
    wait_for(lambda: all(len(running.netdev(n).ports) == 1 for n in ("p1", "p2", "q1")))
    assert running.runtime.hubs[7].kind == "switch" and running.runtime.hubs[0].kind == "hub"
    f = eth(BCAST, A, b"hub zero only")
    send_framed(a, f)
    assert recv_framed(b) == f
    other.settimeout(0.3)
    with pytest.raises(TimeoutError):
        recv_framed(other)
    assert running.netdev("q1").ports[0].counters.tx_frames == 0


def test_a_unix_socket_path_appears_only_once_it_listens(tmp_path, monkeypatch):
    """Bound under a temporary name and renamed once listening: a guest that connects the moment the
    path exists is never refused (bind-then-listen left a window where it was), and no temporary
    name is left behind."""
    from vmlan.io import stream

    path = tmp_path / "s.sock"
    seen_at_listen = []

    class Watched(socket.socket):
        def listen(self, *args):
            seen_at_listen.append(path.exists())
            return super().listen(*args)

    monkeypatch.setattr(stream.socket, "socket", Watched)
    running = RunningLan(["-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}"])
    try:
        running.start()
        assert seen_at_listen == [False]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sock"]
        peer = unix_client(path)
        wait_for(lambda: len(running.netdev("s").ports) == 1)
        peer.close()
    finally:
        running.stop()
    assert not path.exists()
