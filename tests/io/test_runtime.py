"""The links registry: netdevs and filter-dumps added and removed while the loop runs."""

import asyncio
import logging
import socket

import pytest
from scapy.utils import rdpcap

from vmlan.config.netdev import parse_netdev, parse_object
from vmlan.io.errors import LinkError
from vmlan.io.runtime import DuplicateId, NotFound
from vmlan.io.stream import StreamServer
from vmlan.lan import Port

from .conftest import RunningLan, eth, free_port, recv_framed, send_framed, unix_client, wait_for

A, B, C = (bytes([2, 0, 0, 0, 0, n]) for n in (1, 2, 3))
BCAST = b"\xff" * 6


class Watcher(Port):
    """A port that records which ports left its hub."""

    __slots__ = ("left",)

    def __init__(self):
        super().__init__("watcher")
        self.left = []

    def transmit(self, frame, src, offload):
        return True

    def port_left(self, port):
        self.left.append(port.name)


def stream_server(ident, path, extra=""):
    return parse_netdev(f"stream,id={ident},server=on,addr.type=unix,addr.path={path}{extra}")


def test_a_netdev_added_while_running_joins_its_hub_and_leaves_it_cleanly(lan, tmp_path):
    first, second = tmp_path / "a.sock", tmp_path / "b.sock"
    running = lan("-netdev", f"stream,id=a,server=on,addr.type=unix,addr.path={first}")
    watcher = Watcher()
    running.call(running.runtime.hubs[0].attach, watcher)
    link = running.call(running.runtime.add, stream_server("b", second))
    assert isinstance(link, StreamServer) and running.runtime.links["b"] is link
    pa, pb = unix_client(first), unix_client(second)
    wait_for(lambda: len(running.netdev("a").ports) == 1 and len(link.ports) == 1)
    f = eth(BCAST, A, b"across the new link")
    send_framed(pa, f)
    assert recv_framed(pb) == f
    running.call(running.runtime.remove, "b")
    assert not second.exists()
    assert pb.recv(10) == b""  # its peers are closed
    assert "b" not in running.runtime.links and watcher.left == ["b.1"]
    assert sorted(p.name for p in running.runtime.hubs[0].ports) == ["a.1", "watcher"]
    # The same id and path can be used again.
    again = running.call(running.runtime.add, stream_server("b", second))
    pb = unix_client(second)
    wait_for(lambda: len(again.ports) == 1)
    send_framed(pa, f)
    assert recv_framed(pb) == f


def test_duplicate_and_unknown_ids_get_qemus_messages(lan, tmp_path):
    path = tmp_path / "a.sock"
    running = lan("-netdev", f"stream,id=a,server=on,addr.type=unix,addr.path={path}")
    with pytest.raises(DuplicateId, match=r"^Duplicate ID 'a' for netdev$"):
        running.call(running.runtime.add, stream_server("a", tmp_path / "other.sock"))
    assert not (tmp_path / "other.sock").exists()
    with pytest.raises(NotFound, match=r"^Device 'nope' not found$"):
        running.call(running.runtime.remove, "nope")
    with pytest.raises(NotFound, match=r"^Device 'nope' not found$"):
        running.call(running.runtime.add_filter_dump, parse_object(f"filter-dump,id=d,netdev=nope,file={tmp_path}/x"))
    with pytest.raises(NotFound, match=r"^object 'd' not found$"):
        running.call(running.runtime.remove_filter_dump, "d")
    running.call(running.runtime.add_filter_dump, parse_object(f"filter-dump,id=d,netdev=a,file={tmp_path}/x"))
    with pytest.raises(DuplicateId, match="attempt to add duplicate property 'd' to object"):
        running.call(running.runtime.add_filter_dump, parse_object(f"filter-dump,id=d,netdev=a,file={tmp_path}/y"))
    assert path.exists() and list(running.runtime.links) == ["a"]


def test_a_netdev_that_cannot_open_leaves_nothing_registered(lan, tmp_path):
    path = tmp_path / "a.sock"
    running = lan("-netdev", f"stream,id=a,server=on,addr.type=unix,addr.path={path}")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(LinkError, match="Address already in use"):
            running.call(running.runtime.add, parse_netdev(f"socket,id=b,listen=127.0.0.1:{port},hubid=9"))
    assert list(running.runtime.links) == ["a"] and 9 not in running.runtime.hubs


def test_hubs_are_made_on_demand_and_go_with_their_last_netdev(lan, tmp_path):
    running = lan("-netdev", f"stream,id=a,server=on,addr.type=unix,addr.path={tmp_path}/a.sock",
                  "-hub", "id=7,mode=switch")
    runtime = running.runtime
    running.call(runtime.add, stream_server("x", tmp_path / "x.sock", ",hubid=5"))
    running.call(runtime.add, stream_server("y", tmp_path / "y.sock", ",hubid=5"))
    running.call(runtime.add, stream_server("z", tmp_path / "z.sock", ",hubid=7"))
    assert list(runtime.hubs) == [0, 5, 7] and runtime.hubs[5].kind == "hub" and runtime.hubs[7].kind == "switch"
    px, py = unix_client(tmp_path / "x.sock"), unix_client(tmp_path / "y.sock")
    wait_for(lambda: len(runtime.hubs[5].ports) == 2)
    f = eth(BCAST, B, b"hub five")
    send_framed(px, f)
    assert recv_framed(py) == f
    running.call(runtime.remove, "x")
    assert 5 in runtime.hubs
    running.call(runtime.remove, "y")
    assert 5 not in runtime.hubs
    running.call(runtime.remove, "z")
    assert 7 in runtime.hubs  # named by -hub: it stays


def test_filter_dumps_come_and_go_and_go_with_their_netdev(lan, tmp_path):
    path = tmp_path / "a.sock"
    running = lan("-netdev", f"stream,id=a,server=on,addr.type=unix,addr.path={path}")
    runtime = running.runtime
    a, b = unix_client(path), unix_client(path)
    wait_for(lambda: len(running.netdev("a").ports) == 2)
    send_framed(a, eth(BCAST, A, b"before any dump"))
    recv_framed(b)
    all_dump, rx_dump = tmp_path / "all.pcap", tmp_path / "rx.pcap"
    running.call(runtime.add_filter_dump, parse_object(f"filter-dump,id=all,netdev=a,file={all_dump}"))
    running.call(runtime.add_filter_dump, parse_object(f"filter-dump,id=rx,netdev=a,file={rx_dump},queue=rx"))
    c = unix_client(path)  # a port made after the dumps were added is captured too
    wait_for(lambda: len(running.netdev("a").ports) == 3)
    f = eth(BCAST, A, b"captured")
    send_framed(a, f)
    assert recv_framed(b) == f and recv_framed(c) == f
    running.call(runtime.remove_filter_dump, "rx")
    assert [bytes(p) for p in rdpcap(str(rx_dump))] == [f]  # complete once removed
    g = eth(BCAST, C, b"after rx went")
    send_framed(c, g)
    assert recv_framed(a) == g and recv_framed(b) == g
    running.call(runtime.remove, "a")  # QEMU's netdev_del deletes the netdev's filters
    assert runtime.dumps == {}
    # "all" saw f leave a (rx) and reach b and c (tx), then g from c (rx) and to a and b (tx).
    assert [bytes(p) for p in rdpcap(str(all_dump))] == [f, f, f, g, g, g]
    assert [bytes(p) for p in rdpcap(str(rx_dump))] == [f]


def test_a_dgram_netdev_added_and_removed_removes_its_socket_file(lan, tmp_path):
    path, ours, theirs = tmp_path / "a.sock", tmp_path / "v.dgram", tmp_path / "g.dgram"
    running = lan("-netdev", f"stream,id=a,server=on,addr.type=unix,addr.path={path}")
    other = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    other.bind(str(theirs))
    other.settimeout(5)
    nd = parse_netdev(f"dgram,id=d,local.type=unix,local.path={ours},remote.type=unix,remote.path={theirs}")
    running.call(running.runtime.add, nd)
    peer = unix_client(path)
    wait_for(lambda: len(running.netdev("a").ports) == 1)
    f = eth(BCAST, A, b"to the dgram peer")
    send_framed(peer, f)
    assert other.recv(65536) == f
    running.call(running.runtime.remove, "d")
    assert not ours.exists()
    assert [p.name for p in running.runtime.hubs[0].ports] == ["a.1"]


def test_a_client_added_at_run_time_reports_a_refused_connect_and_stays(lan, tmp_path, caplog):
    running = lan("-netdev", f"stream,id=a,server=on,addr.type=unix,addr.path={tmp_path}/a.sock")
    port = free_port()
    with caplog.at_level(logging.INFO, logger="vmlan"):
        client = running.call(running.runtime.add, parse_netdev(f"socket,id=c,connect=127.0.0.1:{port}"))

        async def outcome():
            with pytest.raises(LinkError, match=f"connect to tcp:127.0.0.1:{port} failed: Connection refused"):
                await client.wait_started()

        asyncio.run_coroutine_threadsafe(outcome(), running.loop).result(10)
    assert "connect to tcp:127.0.0.1:" in caplog.text and "Connection refused" in caplog.text
    assert running.runtime.links["c"] is client and client.describe().endswith("not connected")
    running.call(running.runtime.remove, "c")


def test_a_failed_start_closes_what_was_opened(tmp_path):
    first = tmp_path / "a.sock"
    running = RunningLan([
        "-netdev", f"stream,id=a,server=on,addr.type=unix,addr.path={first}",
        "-netdev", f"socket,id=c,connect=127.0.0.1:{free_port()}",
    ])
    try:
        with pytest.raises(LinkError, match="-netdev socket,id=c: connect to"):
            running.start()
        assert first.exists()
    finally:
        running.stop()
    assert not first.exists()


def test_info_network_lists_the_internal_errors_by_kind(lan, tmp_path):
    from vmlan.cli import _monitor_text

    running = lan("-netdev", f"stream,id=a,server=on,addr.type=unix,addr.path={tmp_path}/a.sock")
    assert "internal errors" not in running.call(_monitor_text, running.runtime)
    for _ in range(3):
        running.runtime.faults.record("stream rx", ValueError("x"))
    running.runtime.faults.record("dgram rx", ValueError("y"))
    text = running.call(_monitor_text, running.runtime)
    assert text.splitlines()[-1] == "internal errors: stream rx x3, dgram rx x1"
