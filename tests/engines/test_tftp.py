"""The TFTP server engine, driven in memory on a fake clock: whole transfers through a simulated client
over a lossy, reordering, duplicating link (0, 511, 512, 513 bytes, 20 MB, the block-number wrap past
32 MB), every blksize and windowsize, netascii, option negotiation, retransmission and backoff, the
Sorcerer's Apprentice rule, refused names and writes, caps, transfer ports, and hostile input."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Hashable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmlan.engines.tftp import Datagram, TftpConfig, TftpConfigError, TftpServer
from vmlan.wire.tftp import (
    ERR_ACCESS,
    ERR_ILLEGAL_OP,
    ERR_NOT_FOUND,
    ERR_UNDEFINED,
    ERR_UNKNOWN_TID,
    OP_RRQ,
    OP_WRQ,
    TFTP_PORT,
    TftpData,
    TftpError,
    TftpOack,
    TftpRequest,
    encode_ack,
    encode_error,
    parse,
)

C1 = ("guest1", "10.0.2.15", 40000)
C2 = ("guest1", "10.0.2.15", 40001)
C3 = ("guest2", "10.0.2.16", 40000)


# -- an in-memory FileSource ------------------------------------------------------------------------------------
class MemoryHandle:
    def __init__(self, files: MemoryFiles, data: bytes) -> None:
        self.files = files
        self.data = data
        self.size = len(data)
        self.closed = False

    def read(self, offset: int, n: int) -> bytes:
        assert not self.closed
        assert offset >= 0 and n >= 0
        if self.files.fail_reads_at is not None and offset >= self.files.fail_reads_at:
            raise OSError(5, "Input/output error")
        self.files.reads += 1
        return self.data[offset : offset + n]

    def close(self) -> None:
        assert not self.closed, "closed twice"
        self.closed = True


class MemoryFiles:
    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files = files or {}
        self.opened: list[str] = []
        self.handles: list[MemoryHandle] = []
        self.fail_reads_at: int | None = None
        self.reads = 0
        self.refuse: dict[str, int] = {}

    def open(self, name: str) -> MemoryHandle | int:
        self.opened.append(name)
        if name in self.refuse:
            return self.refuse[name]
        if name not in self.files:
            return ERR_NOT_FOUND
        handle = MemoryHandle(self, self.files[name])
        self.handles.append(handle)
        return handle

    def all_closed(self) -> bool:
        return all(h.closed for h in self.handles)


def content(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def rrq(name: bytes | str, *options: tuple[str, str], mode: bytes = b"octet") -> bytes:
    raw = name.encode() if isinstance(name, str) else name
    return TftpRequest(OP_RRQ, raw, mode, tuple((k.encode(), v.encode()) for k, v in options)).to_bytes()


def error_of(out: list[Datagram]) -> tuple[int, bytes]:
    assert len(out) == 1, out
    packet = parse(out[0][2])
    assert isinstance(packet, TftpError), packet
    return packet.code, packet.message


# -- a simulated client and network ---------------------------------------------------------------------------
@dataclass
class SimClient:
    """An RFC 1350/2347/7440 reader: adopts the first server port it hears from, ACKs each window, ACKs
    the last in-order block on a gap or its own timeout, re-ACKs repeated blocks (like old clients,
    which provokes the Sorcerer's Apprentice if the server resends on duplicate ACKs)."""

    key: Hashable
    name: str
    options: tuple[tuple[str, str], ...] = ()
    mode: bytes = b"octet"
    rto: float = 0.7
    tries: int = 40
    blksize: int = 512
    windowsize: int = 1
    server_port: int | None = None
    received: int = 0  # absolute blocks received in order
    in_window: int = 0
    data: bytearray = field(default_factory=bytearray)
    done: bool = False
    error: TftpError | None = None
    oack: dict[bytes, bytes] | None = None
    last_sent: bytes = b""
    deadline: float = 0.0
    left: int = 0
    wire_blocks_seen: set[int] = field(default_factory=set)
    foreign_ports: int = 0

    def start(self, now: float) -> list[tuple[int, bytes]]:
        self.last_sent = rrq(self.name, *self.options, mode=self.mode)
        self.left = self.tries
        self.deadline = now + self.rto
        return [(TFTP_PORT, self.last_sent)]

    def timer(self) -> float | None:
        return None if self.done or self.error else self.deadline

    def on_timer(self, now: float) -> list[tuple[int, bytes]]:
        self.left -= 1
        if self.left <= 0:
            self.error = TftpError(-1, b"client gave up")
            return []
        self.deadline = now + self.rto
        self.in_window = 0
        return [(self.server_port or TFTP_PORT, self.last_sent)]

    def _ack(self, block: int, now: float) -> list[tuple[int, bytes]]:
        self.last_sent = encode_ack(block & 0xFFFF)
        self.deadline = now + self.rto
        self.left = self.tries
        assert self.server_port is not None
        return [(self.server_port, self.last_sent)]

    def receive(self, port: int, payload: bytes, now: float) -> list[tuple[int, bytes]]:
        if self.server_port is None:
            self.server_port = port
        elif port != self.server_port:  # RFC 1350 section 4: answer, do not disturb the transfer
            self.foreign_ports += 1
            return [(port, encode_error(ERR_UNKNOWN_TID, b"Unknown transfer ID"))]
        packet = parse(payload)
        if isinstance(packet, TftpError):
            if not self.done:
                self.error = packet
            return []
        if isinstance(packet, TftpOack):
            assert self.options, "OACK without options"
            if self.received:
                return []  # a late copy (the link duplicates, the server retransmits): the data has begun
            self.oack = {k: v for k, v in packet.options}
            asked = {k.encode(): v.encode() for k, v in self.options}
            for name in self.oack:
                assert name in asked, f"OACK has {name!r}, not asked for"
            if b"blksize" in self.oack:
                self.blksize = int(self.oack[b"blksize"])
                assert 8 <= self.blksize <= int(asked[b"blksize"])
            if b"windowsize" in self.oack:
                self.windowsize = int(self.oack[b"windowsize"])
                assert 1 <= self.windowsize <= int(asked[b"windowsize"])
            return self._ack(0, now)
        assert isinstance(packet, TftpData), packet
        self.wire_blocks_seen.add(packet.block)
        expected = (self.received + 1) & 0xFFFF
        if self.done:
            # dallying: the final block again means our final ACK was lost
            return self._ack(self.received, now) if packet.block == self.received & 0xFFFF else []
        if packet.block != expected or len(packet.data) > self.blksize:
            self.in_window = 0
            return self._ack(self.received, now)  # a gap, a repeat, or garbage: say where we are
        self.data += packet.data
        self.received += 1
        self.in_window += 1
        if len(packet.data) < self.blksize:
            self.done = True
            return self._ack(self.received, now)
        if self.in_window >= self.windowsize:
            self.in_window = 0
            return self._ack(self.received, now)
        self.deadline = now + self.rto
        self.left = self.tries
        return []

    def text(self) -> bytes:
        if self.mode.lower() != b"netascii":
            return bytes(self.data)
        return bytes(self.data).replace(b"\r\n", b"\n").replace(b"\r\0", b"\r")


class SimNet:
    """Clients and the server joined by a link that loses, duplicates and delays (so reorders) datagrams."""

    def __init__(self, server: TftpServer, *, seed: int = 0, loss: float = 0.0, dup: float = 0.0,
                 delay: float = 0.001, jitter: float = 0.0) -> None:
        self.server = server
        self.rng = random.Random(seed)
        self.loss, self.dup, self.delay, self.jitter = loss, dup, delay, jitter
        self.events: list[tuple[float, int, str, Hashable, int, bytes]] = []
        self.seq = itertools.count()
        self.clients: dict[Hashable, SimClient] = {}
        self.now = 0.0
        self.sent_by_server: list[tuple[float, Hashable, int, bytes]] = []

    def _post(self, to: str, client: Hashable, port: int, payload: bytes) -> None:
        copies = 0 if self.rng.random() < self.loss else 1
        if copies and self.rng.random() < self.dup:
            copies = 2
        for _ in range(copies):
            when = self.now + self.delay + self.rng.random() * self.jitter
            heapq.heappush(self.events, (when, next(self.seq), to, client, port, payload))

    def _from_server(self, out: list[Datagram]) -> None:
        for client, port, payload in out:
            self.sent_by_server.append((self.now, client, port, payload))
            self._post("client", client, port, payload)

    def _from_client(self, client: SimClient, out: list[tuple[int, bytes]]) -> None:
        for port, payload in out:
            self._post("server", client.key, port, payload)

    def add(self, client: SimClient) -> SimClient:
        self.clients[client.key] = client
        self._from_client(client, client.start(self.now))
        return client

    def run(self, limit: float = 100_000.0) -> None:
        server = self.server
        while True:
            times = [(self.events[0][0], 0)] if self.events else []
            st = server.get_timer()
            if st is not None:
                times.append((st, 1))
            ct = [(t, 2) for c in self.clients.values() if (t := c.timer()) is not None and not c.done]
            times += ct
            if not times:
                return
            when, kind = min(times)
            assert when < limit, "the simulation did not end"
            self.now = max(self.now, when)
            if kind == 0:
                _, _, to, key, port, payload = heapq.heappop(self.events)
                if to == "server":
                    self._from_server(server.receive(key, port, payload, self.now, guest=key[0]))  # type: ignore[index]
                else:
                    client = self.clients[key]
                    self._from_client(client, client.receive(port, payload, self.now))
            elif kind == 1:
                self._from_server(server.handle_timer(self.now))
            else:
                for c in self.clients.values():
                    t = c.timer()
                    if t is not None and t <= self.now and not c.done:
                        self._from_client(c, c.on_timer(self.now))


def transfer(data: bytes, *, options: tuple[tuple[str, str], ...] = (), mode: bytes = b"octet",
             cfg: TftpConfig | None = None, seed: int = 0, loss: float = 0.0, dup: float = 0.0,
             jitter: float = 0.0) -> tuple[SimClient, TftpServer, MemoryFiles, SimNet]:
    files = MemoryFiles({"boot/file.bin": data})
    server = TftpServer(files, cfg, rng=random.Random(seed))
    net = SimNet(server, seed=seed, loss=loss, dup=dup, jitter=jitter)
    client = net.add(SimClient(C1, "boot/file.bin", options=options, mode=mode))
    net.run()
    return client, server, files, net


def check_done(client: SimClient, server: TftpServer, files: MemoryFiles, data: bytes) -> None:
    assert client.error is None, client.error
    assert client.done
    assert client.text() == data
    assert server.stats.completed == 1
    assert server.active() == 0 and server.get_timer() is None
    assert files.all_closed()


BLKSIZES = [8, 512, 1428, 1468, 65464]
WINDOWS = [1, 4, 16]
SMALL = [0, 1, 7, 8, 9, 511, 512, 513, 1023, 1024, 1025, 5000]


@pytest.mark.parametrize("size", SMALL)
@pytest.mark.parametrize("blksize", BLKSIZES)
@pytest.mark.parametrize("windowsize", WINDOWS)
def test_small_files_exact_packets(size: int, blksize: int, windowsize: int) -> None:
    data = content(size)
    options = (("blksize", str(blksize)), ("windowsize", str(windowsize)), ("tsize", "0"))
    client, server, files, _ = transfer(data, options=options)
    check_done(client, server, files, data)
    granted = min(windowsize, 128 * 1024 // blksize)  # a window is at most max_window_bytes
    assert client.oack == {b"blksize": str(blksize).encode(), b"windowsize": str(granted).encode(),
                           b"tsize": str(size).encode()}
    blocks = size // blksize + 1  # a file that fills its last block ends with an empty one
    assert server.stats.data_packets == blocks
    assert server.stats.retransmits == 0 and server.stats.duplicate_acks == 0
    assert server.stats.data_bytes == size


@pytest.mark.parametrize("size", [0, 511, 512, 513])
def test_plain_rfc1350_no_options(size: int) -> None:
    data = content(size)
    client, server, files, net = transfer(data)
    check_done(client, server, files, data)
    assert client.oack is None and server.stats.oacks == 0
    first = net.sent_by_server[0]
    assert parse(first[3]) == TftpData(1, data[:512])  # DATA 1 answers the RRQ itself


@pytest.mark.parametrize("size", [0, 511, 512, 513, 100_000])
@pytest.mark.parametrize(("blksize", "windowsize"), [(512, 1), (512, 8), (1468, 1), (1468, 16), (65464, 2), (8, 4)])
@pytest.mark.parametrize("seed", [1, 2])
def test_lossy_reordering_link(size: int, blksize: int, windowsize: int, seed: int) -> None:
    data = content(size, seed)
    options = (("blksize", str(blksize)), ("windowsize", str(windowsize)))
    client, server, files, _ = transfer(data, options=options, seed=seed, loss=0.1, dup=0.1, jitter=0.01)
    check_done(client, server, files, data)
    assert client.foreign_ports == 0


@pytest.mark.parametrize(("blksize", "windowsize"), [(512, 1), (512, 8), (1468, 1), (1468, 16), (65464, 1), (65464, 2)])
def test_20_mb(blksize: int, windowsize: int) -> None:
    data = content(20 * 1024 * 1024)
    client, server, files, _ = transfer(data, options=(("blksize", str(blksize)), ("windowsize", str(windowsize))))
    check_done(client, server, files, data)
    assert server.stats.retransmits == 0


@pytest.mark.parametrize("windowsize", [1, 16])
def test_block_number_wraps_past_32_mb(windowsize: int) -> None:
    """65535 blocks of 512 bytes are 32 MB - 512: a longer file takes block numbers round to 0."""
    size = 65536 * 512 + 1000
    data = content(size)
    options = (("windowsize", str(windowsize)),) if windowsize > 1 else ()
    client, server, files, _ = transfer(data, options=options)
    check_done(client, server, files, data)
    assert client.received == 65538 and 0 in client.wire_blocks_seen
    assert server.stats.data_packets == 65538


def test_block_wrap_under_loss() -> None:
    data = content(8 * 65536 + 5)  # blksize 8: the wrap, quickly
    client, server, files, _ = transfer(data, options=(("blksize", "8"), ("windowsize", "8")),
                                          loss=0.03, dup=0.03, jitter=0.005, seed=3)
    check_done(client, server, files, data)
    assert client.received == 65537 and server.stats.retransmits > 0


# -- netascii ---------------------------------------------------------------------------------------------------
NETASCII_TEXT = b"line one\nline two\r\nbare CR\rend\n" * 97 + b"\r" * 600 + b"\n" * 600 + b"tail"


@pytest.mark.parametrize("blksize", [8, 9, 512, 1468])
def test_netascii_converts_on_the_fly(blksize: int) -> None:
    client, server, files, _ = transfer(NETASCII_TEXT, mode=b"NetASCII",
                                          options=(("blksize", str(blksize)), ("tsize", "0")))
    check_done(client, server, files, NETASCII_TEXT)
    wire = bytes(client.data)
    assert wire == NETASCII_TEXT.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
    assert client.oack == {b"blksize": str(blksize).encode()}  # no tsize: the converted size is unknown


def test_netascii_lossy() -> None:
    client, server, files, _ = transfer(NETASCII_TEXT, mode=b"netascii", options=(("windowsize", "4"),),
                                          loss=0.2, jitter=0.01, seed=7)
    check_done(client, server, files, NETASCII_TEXT)


def test_netascii_can_be_refused_and_other_modes_are() -> None:
    server = TftpServer(MemoryFiles({"f": b"x"}), TftpConfig(netascii=False))
    assert error_of(server.receive(C1, TFTP_PORT, rrq("f", mode=b"netascii"), 0.0)) == (
        ERR_ILLEGAL_OP, b"Unsupported transfer mode")
    for mode in (b"mail", b"binary", b""):
        assert error_of(server.receive(C1, TFTP_PORT, rrq("f", mode=mode), 0.0))[0] == ERR_ILLEGAL_OP
    assert server.stats.mode_refused == 4 and server.active() == 0


# -- option negotiation -----------------------------------------------------------------------------------------
def oack_for(*options: tuple[str, str], cfg: TftpConfig | None = None, size: int = 5000) -> dict[bytes, bytes] | None:
    server = TftpServer(MemoryFiles({"f": content(size)}), cfg)
    out = server.receive(C1, TFTP_PORT, rrq("f", *options), 0.0)
    packet = parse(out[0][2])
    if isinstance(packet, TftpData):
        return None
    assert isinstance(packet, TftpOack), packet
    return dict(packet.options)


def test_negotiation() -> None:
    assert oack_for(("blksize", "1428")) == {b"blksize": b"1428"}
    assert oack_for(("blksize", "70000")) == {b"blksize": b"65464"}  # the largest we grant
    assert oack_for(("blksize", "1468"), cfg=TftpConfig(max_blksize=1428)) == {b"blksize": b"1428"}
    assert oack_for(("blksize", "8")) == {b"blksize": b"8"}
    assert oack_for(("blksize", "7")) is None  # invalid: left out; no other option, so no OACK at all
    assert oack_for(("blksize", "-1")) is None
    assert oack_for(("blksize", "12a")) is None
    assert oack_for(("blksize", "1" * 30)) is None
    assert oack_for(("tsize", "0")) == {b"tsize": b"5000"}
    assert oack_for(("tsize", "enable")) == {b"tsize": b"5000"}  # atftp 0.8's `--option "tsize enable"`
    assert oack_for(("timeout", "3")) == {b"timeout": b"3"}
    assert oack_for(("timeout", "0")) is None and oack_for(("timeout", "256")) is None
    assert oack_for(("windowsize", "8")) == {b"windowsize": b"8"}
    assert oack_for(("windowsize", "1000")) == {b"windowsize": b"64"}  # max_windowsize
    assert oack_for(("windowsize", "0")) is None
    assert oack_for(("multicast", ""), ("rollover", "0"), ("utimeout", "1000")) is None  # unknown: ignored
    # window bytes: 128 KiB / 65464 = 2 blocks, whichever order blksize and windowsize come in
    assert oack_for(("windowsize", "64"), ("blksize", "65464")) == {b"windowsize": b"2", b"blksize": b"65464"}
    assert oack_for(("blksize", "65464"), ("windowsize", "64")) == {b"blksize": b"65464", b"windowsize": b"2"}
    cfg = TftpConfig(max_window_bytes=1000)
    assert oack_for(("blksize", "65464"), ("windowsize", "64"), cfg=cfg) == {b"blksize": b"65464", b"windowsize": b"1"}


def test_negotiation_order_case_and_repeats() -> None:
    server = TftpServer(MemoryFiles({"f": b"abc"}))
    out = server.receive(C1, TFTP_PORT, rrq("f", ("TSize", "0"), ("x", "1"), ("BLKSIZE", "9"), ("blksize", "700"),
                                            ("WindowSize", "3")), 0.0)
    assert parse(out[0][2]) == TftpOack(((b"tsize", b"3"), (b"blksize", b"9"), (b"windowsize", b"3")))


def test_timeout_option_sets_the_retransmission_timer() -> None:
    server = TftpServer(MemoryFiles({"f": content(2000)}))
    out = server.receive(C1, TFTP_PORT, rrq("f", ("timeout", "5")), 10.0)
    assert server.get_timer() == 15.0
    port = out[0][1]
    server.receive(C1, port, encode_ack(0), 11.0)
    assert server.get_timer() == 16.0


# -- retransmission, backoff, timeouts, duplicate ACKs --------------------------------------------------------
def test_backoff_then_give_up() -> None:
    files = MemoryFiles({"f": content(2000)})
    server = TftpServer(files, TftpConfig(rto=1.0, max_rto=8.0, session_timeout=30.0))
    first = server.receive(C1, TFTP_PORT, rrq("f"), 0.0)
    sends = [0.0]
    while (t := server.get_timer()) is not None:
        out = server.handle_timer(t)
        if out:
            assert out == first  # the same DATA 1, from the same port
            sends.append(t)
    assert sends == [0.0, 1.0, 3.0, 7.0, 15.0, 23.0]  # 1, 2, 4, 8, 8; nothing at 30: given up
    assert server.stats.timed_out == 1 and server.stats.retransmits == 5
    assert files.all_closed() and server.take_closed() == [(C1, first[0][1])]


def test_early_timer_call_does_nothing() -> None:
    server = TftpServer(MemoryFiles({"f": content(2000)}))
    server.receive(C1, TFTP_PORT, rrq("f"), 0.0)
    assert server.handle_timer(0.5) == []
    assert server.get_timer() == 1.0


def test_duplicate_ack_is_not_answered() -> None:
    """Sorcerer's Apprentice (RFC 1350 section 4, RFC 1123 4.2.3.1): a duplicate ACK never resends."""
    data = content(3000)
    server = TftpServer(MemoryFiles({"f": data}))
    port = server.receive(C1, TFTP_PORT, rrq("f"), 0.0)[0][1]
    out = server.receive(C1, port, encode_ack(1), 0.1)
    assert [parse(p) for _, _, p in out] == [TftpData(2, data[512:1024])]
    assert server.receive(C1, port, encode_ack(1), 0.2) == []  # the duplicate
    assert server.receive(C1, port, encode_ack(1), 0.3) == []
    assert server.stats.duplicate_acks == 2
    assert server.receive(C1, port, encode_ack(7), 0.3) == []  # never sent
    assert server.stats.old_acks == 1
    assert [parse(p) for _, _, p in server.receive(C1, port, encode_ack(2), 0.4)] == [TftpData(3, data[1024:1536])]


def test_ack_inside_the_window_restarts_it_there() -> None:
    """RFC 7440: an ACK for a block inside the window in flight means the client lost the next one."""
    data = content(512 * 20)
    server = TftpServer(MemoryFiles({"f": data}))
    port = server.receive(C1, TFTP_PORT, rrq("f", ("windowsize", "4")), 0.0)[0][1]
    blocks = lambda out: [parse(p).block for _, _, p in out]  # type: ignore[union-attr]  # noqa: E731
    assert blocks(server.receive(C1, port, encode_ack(0), 0.0)) == [1, 2, 3, 4]
    assert blocks(server.receive(C1, port, encode_ack(2), 0.1)) == [3, 4, 5, 6]
    assert blocks(server.receive(C1, port, encode_ack(6), 0.2)) == [7, 8, 9, 10]
    assert blocks(server.receive(C1, port, encode_ack(4), 0.2)) == []  # from before the window: old
    assert blocks(server.handle_timer(1.2)) == [7, 8, 9, 10]  # the timer resends the whole window


def test_retransmitted_request_is_ignored_until_the_transfer_moves() -> None:
    files = MemoryFiles({"f": content(2000), "g": b"g"})
    server = TftpServer(files)
    port = server.receive(C1, TFTP_PORT, rrq("f"), 0.0)[0][1]
    assert server.receive(C1, TFTP_PORT, rrq("f"), 0.5) == []  # a retransmitted RRQ
    assert server.stats.duplicate_requests == 1 and files.opened == ["f"]
    server.receive(C1, port, encode_ack(1), 0.6)
    out = server.receive(C1, TFTP_PORT, rrq("f"), 0.7)  # after progress: a new transfer of the same file
    assert server.stats.replaced == 1 and out[0][1] != port and server.active() == 1
    out = server.receive(C1, TFTP_PORT, rrq("g"), 0.8)  # another request from the same client port
    assert parse(out[0][2]) == TftpData(1, b"g") and server.stats.replaced == 2 and server.active() == 1
    assert sum(not h.closed for h in files.handles) == 1


def test_final_ack_ends_and_lost_final_ack_is_recovered_by_timer() -> None:
    server = TftpServer(MemoryFiles({"f": b"short"}))
    port = server.receive(C1, TFTP_PORT, rrq("f"), 0.0)[0][1]
    assert [parse(p) for _, _, p in server.handle_timer(1.0)] == [TftpData(1, b"short")]
    assert server.receive(C1, port, encode_ack(1), 1.1) == []
    assert server.stats.completed == 1 and server.take_closed() == [(C1, port)] and not server.has_port(port)
    assert error_of(server.receive(C1, port, encode_ack(1), 1.2)) == (ERR_UNKNOWN_TID, b"Unknown transfer ID")


# -- refusals -------------------------------------------------------------------------------------------------
def test_write_requests_are_refused() -> None:
    files = MemoryFiles({"f": b"x"})
    server = TftpServer(files)
    raw = TftpRequest(OP_WRQ, b"f", b"octet").to_bytes()
    out = server.receive(C1, TFTP_PORT, raw, 0.0)
    assert out[0][:2] == (C1, TFTP_PORT)
    assert error_of(out) == (ERR_ACCESS, b"Access violation: read-only server")
    assert files.opened == [] and server.active() == 0 and server.stats.write_refused == 1


@pytest.mark.parametrize(
    ("name", "code", "message"),
    [
        (b"../etc/passwd", ERR_ACCESS, b"Access violation: '..' in the file name"),
        (b"boot/../../etc/passwd", ERR_ACCESS, b"Access violation: '..' in the file name"),
        (b"boot/..", ERR_ACCESS, b"Access violation: '..' in the file name"),
        (b"..", ERR_ACCESS, b"Access violation: '..' in the file name"),
        (b"/../x", ERR_ACCESS, b"Access violation: '..' in the file name"),
        (b"boot\\..\\..\\x", ERR_ACCESS, b"Access violation: control character or backslash in the file name"),
        (b"a\nb", ERR_ACCESS, b"Access violation: control character or backslash in the file name"),
        (b"a\x1bb", ERR_ACCESS, b"Access violation: control character or backslash in the file name"),
        (b"a\x7fb", ERR_ACCESS, b"Access violation: control character or backslash in the file name"),
        (b"\xff\xfe", ERR_ACCESS, b"Access violation: file name is not UTF-8"),
        (b"x" * 513, ERR_ACCESS, b"Access violation: file name too long"),
        (b"boot/", ERR_ACCESS, b"Access violation: not a file"),
        (b"/", ERR_ACCESS, b"Access violation: not a file"),
        (b".", ERR_ACCESS, b"Access violation: not a file"),
        (b"", ERR_NOT_FOUND, b"File not found"),
    ],
)
def test_names_refused_before_the_file_source(name: bytes, code: int, message: bytes) -> None:
    files = MemoryFiles({"etc/passwd": b"root", "x": b"x"})
    server = TftpServer(files)
    assert error_of(server.receive(C1, TFTP_PORT, rrq(name), 0.0)) == (code, message)
    assert files.opened == [] and server.stats.name_refused == 1


@pytest.mark.parametrize(
    ("name", "seen"),
    [
        ("/etc/passwd", "etc/passwd"),  # a leading slash is relative to DIR, as in libslirp and tftpd -s
        ("//etc///passwd", "etc/passwd"),
        ("./etc/./passwd", "etc/passwd"),
        ("pxelinux.cfg/01-52-54-00-12-34-56", "pxelinux.cfg/01-52-54-00-12-34-56"),
        ("Fichier été.txt", "Fichier été.txt"),
    ],
)
def test_names_normalised(name: str, seen: str) -> None:
    files = MemoryFiles()
    server = TftpServer(files)
    assert error_of(server.receive(C1, TFTP_PORT, rrq(name), 0.0)) == (ERR_NOT_FOUND, b"File not found")
    assert files.opened == [seen]


def test_file_source_refusals_pass_through() -> None:
    files = MemoryFiles()
    files.refuse = {"secret": ERR_ACCESS, "weird": 77, "broken": ERR_UNDEFINED}
    server = TftpServer(files)
    assert error_of(server.receive(C1, TFTP_PORT, rrq("secret"), 0.0)) == (ERR_ACCESS, b"Access violation")
    assert error_of(server.receive(C1, TFTP_PORT, rrq("weird"), 0.0)) == (ERR_ACCESS, b"Access violation")
    assert error_of(server.receive(C1, TFTP_PORT, rrq("broken"), 0.0)) == (ERR_UNDEFINED, b"Cannot open the file")
    assert server.stats.open_refused == 3 and server.active() == 0


def test_read_error_ends_the_transfer() -> None:
    files = MemoryFiles({"f": content(5000)})
    files.fail_reads_at = 1024
    server = TftpServer(files)
    port = server.receive(C1, TFTP_PORT, rrq("f"), 0.0)[0][1]
    server.receive(C1, port, encode_ack(1), 0.1)
    assert error_of(server.receive(C1, port, encode_ack(2), 0.2)) == (ERR_UNDEFINED, b"Read error")
    assert server.stats.read_errors == 1 and server.active() == 0 and files.all_closed()
    files.fail_reads_at = 0
    assert error_of(server.receive(C2, TFTP_PORT, rrq("f"), 0.3)) == (ERR_UNDEFINED, b"Read error")
    assert files.all_closed()


def test_caps_per_guest_and_global() -> None:
    files = MemoryFiles({"f": content(5000)})
    server = TftpServer(files, TftpConfig(max_sessions=10, max_sessions_per_guest=8))
    for i in range(8):
        assert parse(server.receive(("g1", i), TFTP_PORT, rrq("f"), 0.0, guest="g1")[0][2]) == TftpData(
            1, files.files["f"][:512])
    assert error_of(server.receive(("g1", 8), TFTP_PORT, rrq("f"), 0.0, guest="g1")) == (
        ERR_UNDEFINED, b"Too many transfers, try again later")
    assert server.active("g1") == 8 and server.stats.over_capacity == 1
    for i in range(2):
        assert len(server.receive(("g2", i), TFTP_PORT, rrq("f"), 0.0, guest="g2")) == 1
    assert error_of(server.receive(("g3", 0), TFTP_PORT, rrq("f"), 0.0, guest="g3"))[0] == ERR_UNDEFINED
    assert server.active() == 10 and len(files.handles) == 10  # a refused request opens nothing
    server.receive(("g2", 0), server._by_client[("g2", 0)].port, encode_error(0, b"bye"), 0.1)
    assert server.stats.aborted == 1 and server.active("g2") == 1
    assert len(server.receive(("g3", 0), TFTP_PORT, rrq("f"), 0.2, guest="g3")) == 1
    server.close()
    assert server.active() == 0 and files.all_closed() and server.get_timer() is None


# -- transfer ports ---------------------------------------------------------------------------------------------
def test_each_transfer_gets_its_own_port() -> None:
    server = TftpServer(MemoryFiles({"f": content(5000)}), TftpConfig(transfer_ports=(50000, 50063), max_sessions=64))
    ports = [server.receive(("c", i), TFTP_PORT, rrq("f"), 0.0)[0][1] for i in range(64)]
    assert sorted(ports) == list(range(50000, 50064))
    assert all(server.has_port(p) for p in ports) and not server.has_port(TFTP_PORT)
    server.receive(("c", 5), ports[5], encode_error(0, b""), 0.0)
    assert server.receive(("c", 99), TFTP_PORT, rrq("f"), 0.0)[0][1] == ports[5]  # the only free one


def test_foreign_client_at_a_transfer_port() -> None:
    data = content(3000)
    server = TftpServer(MemoryFiles({"f": data}))
    port = server.receive(C1, TFTP_PORT, rrq("f"), 0.0)[0][1]
    out = server.receive(C3, port, encode_ack(1), 0.1)  # someone else's ACK: refused, transfer untouched
    assert out[0][:2] == (C3, port) and error_of(out) == (ERR_UNKNOWN_TID, b"Unknown transfer ID")
    assert server.receive(C3, port, encode_error(1, b"x"), 0.1) == []  # errors are never answered
    assert server.receive(C3, 12345, encode_ack(1), 0.1)[0][2][:4] == b"\x00\x05\x00\x05"
    assert server.stats.unknown_tid == 2 and server.active() == 1
    assert [parse(p) for _, _, p in server.receive(C1, port, encode_ack(1), 0.2)] == [TftpData(2, data[512:1024])]


def test_answers_from_port_69_like_libslirp() -> None:
    cfg = TftpConfig(transfer_ports=None)
    data = content(512 * 70 + 3)
    client, server, files, net = transfer(data, cfg=cfg, options=(("windowsize", "4"),), loss=0.1, jitter=0.005)
    check_done(client, server, files, data)
    assert {port for _, _, port, _ in net.sent_by_server} == {TFTP_PORT}
    assert client.server_port == TFTP_PORT


def test_libslirp_mode_sessions_by_client() -> None:
    server = TftpServer(MemoryFiles({"f": content(3000)}), TftpConfig(transfer_ports=None))
    assert server.receive(C1, TFTP_PORT, rrq("f"), 0.0)[0][1] == TFTP_PORT
    server.receive(C2, TFTP_PORT, rrq("f"), 0.0)
    assert server.active() == 2
    assert parse(server.receive(C1, TFTP_PORT, encode_ack(1), 0.1)[0][2]).block == 2  # type: ignore[union-attr]
    assert error_of(server.receive(C1, TFTP_PORT, b"\x00\x03\x00\x01xx", 0.1))[0] == ERR_ILLEGAL_OP
    assert server.active() == 1  # garbage inside a transfer ends it
    assert error_of(server.receive(C1, 50000, encode_ack(1), 0.1))[0] == ERR_UNKNOWN_TID


def test_simulated_clients_in_parallel() -> None:
    files = MemoryFiles({f"f{i}": content(20_000 + i * 777, i) for i in range(12)})
    server = TftpServer(files, TftpConfig(max_sessions_per_guest=8))
    net = SimNet(server, seed=5, loss=0.1, jitter=0.01)
    clients = [net.add(SimClient((f"g{i % 3}", i), f"f{i}", options=(("windowsize", str(1 + i % 5)),)))
               for i in range(12)]
    net.run()
    for i, c in enumerate(clients):
        assert c.error is None and c.text() == files.files[f"f{i}"]
    assert server.stats.completed == 12 and files.all_closed()


# -- hostile input ----------------------------------------------------------------------------------------------
def test_garbage_at_the_request_port() -> None:
    server = TftpServer(MemoryFiles({"f": b"x"}))
    for raw in (b"", b"\x00", b"\x00\x03\x00\x01", b"\x00\x06", b"\x00\x09", b"\x00\x01f", b"\x00\x01f\x00"):
        assert error_of(server.receive(C1, TFTP_PORT, raw, 0.0))[0] == ERR_ILLEGAL_OP
    assert server.receive(C1, TFTP_PORT, encode_ack(1), 0.0) == []  # no transfer: dropped
    assert server.receive(C1, TFTP_PORT, encode_error(0, b""), 0.0) == []
    assert server.stats.malformed == 7 and server.stats.stray == 2 and server.active() == 0


def test_garbage_inside_a_transfer_ends_it() -> None:
    files = MemoryFiles({"f": content(3000)})
    server = TftpServer(files)
    port = server.receive(C1, TFTP_PORT, rrq("f"), 0.0)[0][1]
    assert error_of(server.receive(C1, port, rrq("f"), 0.1)) == (ERR_ILLEGAL_OP, b"Illegal TFTP operation")
    assert server.active() == 0 and files.all_closed()


def test_memoryview_payloads_are_not_kept() -> None:
    server = TftpServer(MemoryFiles({"f": content(3000)}))
    buf = bytearray(rrq("f"))
    server.receive(C1, TFTP_PORT, memoryview(buf), 0.0)
    buf[:] = bytes(len(buf))
    assert server.receive(C1, TFTP_PORT, rrq("f"), 0.5) == []  # still recognised as the same request


client_keys = st.sampled_from([C1, C2, C3])
ports = st.sampled_from([TFTP_PORT, 49152, 49153, 50000])
payloads = st.one_of(
    st.binary(max_size=40),
    st.builds(lambda name, opts, mode: rrq(name, *opts, mode=mode),
              st.sampled_from(["f", "g", "../f", "/f", ""]),
              st.lists(st.tuples(st.sampled_from(["blksize", "tsize", "windowsize", "timeout", "x"]),
                                 st.sampled_from(["0", "8", "512", "65464", "99999", "a", ""])), max_size=3),
              st.sampled_from([b"octet", b"netascii", b"mail"])),
    st.builds(encode_ack, st.integers(0, 0xFFFF)),
    st.builds(encode_error, st.integers(0, 8), st.just(b"e")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(client_keys, ports, payloads, st.floats(0, 5)), max_size=40),
       st.sampled_from([(49152, 49153), None]))
def test_never_raises_and_stays_consistent(steps: list[tuple[Hashable, int, bytes, float]],
                                           tports: tuple[int, int] | None) -> None:
    files = MemoryFiles({"f": content(3000), "g": b""})
    server = TftpServer(files, TftpConfig(transfer_ports=tports, max_sessions=2, max_sessions_per_guest=1),
                        rng=random.Random(0))
    now = 0.0
    for client, port, payload, dt in steps:
        now += dt
        for to, _, out in server.receive(client, port, payload, now, guest=client[0]):  # type: ignore[index]
            assert to == client or port != TFTP_PORT
            parse(out)
        timer = server.get_timer()
        if timer is not None and timer <= now:
            for _, _, out in server.handle_timer(now):
                parse(out)
        assert server.active() <= 2
        assert sum(not h.closed for h in files.handles) == server.active()
    server.close()
    assert files.all_closed()


def test_config_errors() -> None:
    for kw, message in [
        ({"max_blksize": 7}, "max_blksize 7 is not in 8..65464"),
        ({"max_windowsize": 0}, "max_windowsize 0 is not in 1..65535"),
        ({"rto": 0.0}, "rto 0.0 must be > 0 and <= max_rto 4.0"),
        ({"session_timeout": 0}, "session_timeout 0 must be > 0"),
        ({"max_sessions": 0}, "max_sessions and max_sessions_per_guest must be >= 1"),
        ({"transfer_ports": (60, 70)}, "transfer_ports 60-70 must be within 1-65535 and leave out 69"),
        ({"transfer_ports": (50000, 50001)}, "transfer_ports 50000-50001 hold fewer than max_sessions 64"),
    ]:
        with pytest.raises(TftpConfigError) as info:
            TftpConfig(**kw)  # type: ignore[arg-type]
        assert str(info.value) == message


def test_idle_server() -> None:
    server = TftpServer(MemoryFiles())
    assert server.get_timer() is None and server.handle_timer(100.0) == [] and server.take_closed() == []
