import socket
import struct
import time

from .conftest import eth, free_port, recv_framed, send_framed

A, B = bytes([2, 0, 0, 0, 0, 1]), bytes([2, 0, 0, 0, 0, 2])
BCAST = b"\xff" * 6


def mcast_member(group, port):
    """A QEMU-style mcast socket on loopback: bound to the group, joined on 127.0.0.1, loop on."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((group, port))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                 struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("127.0.0.1")))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    s.settimeout(5)
    return s


def stream_peer(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    s.settimeout(5)
    return s


def test_mcast_both_ways_without_hearing_our_own_frames(lan, tmp_path):
    group, port = "239.255.43.21", free_port(socket.SOCK_DGRAM)
    path = tmp_path / "s.sock"
    running = lan(
        "-netdev", f"socket,id=m,mcast={group}:{port},localaddr=127.0.0.1",
        "-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}",
    )
    member = mcast_member(group, port)
    peer = stream_peer(path)
    out = eth(BCAST, A, b"from the stream peer")
    send_framed(peer, out)
    data, _ = member.recvfrom(65536)
    assert data == out
    back = eth(A, B, b"from the group")
    member.sendto(back, (group, port))
    # The member hears its own datagram too (as QEMU does); vmlan must forward it exactly once and
    # must not re-inject the frame it sent itself.
    assert recv_framed(peer) == back
    peer.settimeout(0.5)
    try:
        extra = recv_framed(peer)
    except TimeoutError:
        extra = None
    assert extra is None, "a frame came back twice (own multicast echo not suppressed)"
    m = running.netdev("m")
    assert m.counters.rx_frames == 1 and m.counters.tx_frames == 1


def test_udp_pair(lan, tmp_path):
    mine, theirs = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    path = tmp_path / "s.sock"
    lan(
        "-netdev", f"socket,id=u,udp=127.0.0.1:{theirs},localaddr=127.0.0.1:{mine}",
        "-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}",
    )
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", theirs))
    other.settimeout(5)
    peer = stream_peer(path)
    f = eth(BCAST, A, b"udp out")
    send_framed(peer, f)
    assert other.recvfrom(65536)[0] == f
    g = eth(A, B, b"udp in")
    other.sendto(g, ("127.0.0.1", mine))
    assert recv_framed(peer) == g


def test_dgram_unix_pair_and_cleanup(lan, tmp_path):
    ours, theirs, path = tmp_path / "v.dgram", tmp_path / "g.dgram", tmp_path / "s.sock"
    running = lan(
        "-netdev", f"dgram,id=d,local.type=unix,local.path={ours},remote.type=unix,remote.path={theirs}",
        "-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}",
    )
    peer = stream_peer(path)
    f = eth(BCAST, A, b"before the other side exists")
    send_framed(peer, f)  # nobody bound at `theirs` yet: dropped and counted, not fatal
    deadline = time.monotonic() + 5
    while running.netdev("d").counters.tx_dropped < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.netdev("d").counters.tx_dropped == 1
    other = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    other.bind(str(theirs))
    other.settimeout(5)
    send_framed(peer, f)
    assert other.recv(65536) == f
    g = eth(A, B, b"in")
    other.sendto(g, str(ours))
    assert recv_framed(peer) == g
    running.stop()
    assert not ours.exists()


def test_unix_dgram_peer_that_reads_late_loses_nothing_up_to_the_queue_bound(lan, tmp_path):
    """A unix datagram receiver queues only max_dgram_qlen (10) datagrams: vmlan must wait for it,
    not drop, up to its own bounded queue, and drop (counted) beyond that."""
    ours, theirs, path = tmp_path / "v.dgram", tmp_path / "g.dgram", tmp_path / "s.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    other.bind(str(theirs))
    running = lan(
        "-netdev", f"dgram,id=d,local.type=unix,local.path={ours},remote.type=unix,remote.path={theirs}",
        "-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}",
    )
    peer = stream_peer(path)
    frames = [eth(BCAST, A, i.to_bytes(4, "big")) for i in range(500)]
    for f in frames:
        send_framed(peer, f)
    port = running.netdev("d")
    deadline = time.monotonic() + 5
    while port.counters.tx_frames < 500 and time.monotonic() < deadline:
        time.sleep(0.01)
    other.settimeout(5)
    assert [other.recv(65536) for _ in frames] == frames
    assert port.counters.tx_dropped == 0
    # Now a receiver that never reads: the queue fills to its bound, the rest are dropped and counted.
    for i in range(3000):
        send_framed(peer, eth(BCAST, A, i.to_bytes(4, "big")))
    deadline = time.monotonic() + 5
    while port.counters.tx_frames + port.counters.tx_dropped < 3500 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert port.counters.tx_dropped > 0
    assert len(port._out) <= 1024


def test_socket_filter_drops_only_the_named_source_in_the_kernel():
    from vmlan.io.dgram import ignore_datagrams_from

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ours.bind(("127.0.0.1", 0))
    theirs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    theirs.bind(("127.0.0.1", 0))
    ignore_datagrams_from(rx, ours.getsockname())
    for i in range(5):
        ours.sendto(b"own %d" % i, rx.getsockname())
        theirs.sendto(b"peer %d" % i, rx.getsockname())
    rx.settimeout(0.5)
    got = []
    try:
        while True:
            got.append(rx.recvfrom(100))
    except TimeoutError:
        pass
    assert [data for data, _ in got] == [b"peer %d" % i for i in range(5)]
    assert all(src == theirs.getsockname() for _, src in got)


def test_unix_dgram_peer_restarting_on_the_same_path_is_heard_again(lan, tmp_path):
    ours, theirs, path = tmp_path / "v.dgram", tmp_path / "g.dgram", tmp_path / "s.sock"
    first = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    first.bind(str(theirs))
    lan(
        "-netdev", f"dgram,id=d,local.type=unix,local.path={ours},remote.type=unix,remote.path={theirs}",
        "-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}",
    )
    peer = stream_peer(path)
    f = eth(A, B, b"hello")
    first.sendto(f, str(ours))
    assert recv_framed(peer) == f
    first.close()
    theirs.unlink()  # the guest restarts: QEMU unlinks and binds its path again
    second = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    second.bind(str(theirs))
    g = eth(A, B, b"i am back")
    deadline = time.monotonic() + 5
    while True:  # the restarted peer talks first; vmlan must notice the new socket on its own
        try:
            second.sendto(g, str(ours))
            break
        except PermissionError:
            assert time.monotonic() < deadline, "vmlan never reconnected to the restarted peer"
            time.sleep(0.1)
    assert recv_framed(peer) == g
    out = eth(BCAST, A, b"to the new peer")
    send_framed(peer, out)
    second.settimeout(5)
    assert second.recv(65536) == out


def test_an_internal_error_behind_the_lan_costs_one_datagram_and_is_counted(lan, tmp_path, caplog):
    import logging

    mine, theirs = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    path = tmp_path / "s.sock"
    running = lan(
        "-netdev", f"socket,id=u,udp=127.0.0.1:{theirs},localaddr=127.0.0.1:{mine}",
        "-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}",
    )
    peer = stream_peer(path)
    port = running.netdev("u")

    def broken_filter(src, frame, offload):
        if bytes(frame[14:17]) == b"bad":
            raise RuntimeError("a bug in a filter")
        src.lan.forward(src, frame, offload)

    port.rx_filter = broken_filter
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with caplog.at_level(logging.INFO, logger="vmlan"):
        for payload in (b"ok1", b"bad", b"bad", b"ok2"):
            other.sendto(eth(A, B, payload), ("127.0.0.1", mine))
        assert recv_framed(peer) == eth(A, B, b"ok1")
        assert recv_framed(peer) == eth(A, B, b"ok2")
    assert running.runtime.faults.count("dgram rx") == 2 and port.counters.rx_dropped == 2
    assert caplog.text.count("internal error (dgram rx)") == 1 and "RuntimeError: a bug in a filter" in caplog.text
