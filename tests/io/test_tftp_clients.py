"""vmlan's TFTP engine against real clients: Debian's tftp-hpa (``tftp``) and atftp fetch files from the
engine served on real UDP sockets on 127.0.0.1 (a thin adapter: one socket standing in for port 69, and
a socket of its own for each transfer, as RFC 1350 wants), checksums compared, options negotiated,
refusals seen as the clients report them.

tftp-hpa 5.2's client sends no RFC 2347 option at all (so it always gets 512-byte lockstep, the RFC
1350 protocol, and its default mode is netascii); atftp 0.8 sends blksize, tsize, timeout and windowsize
(``--option``).  Both roll block numbers over to 0 after 65535, which the >32 MB file crosses at 512.
"""

from __future__ import annotations

import hashlib
import os
import selectors
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from vmlan.engines.tftp import Datagram, TftpConfig, TftpServer
from vmlan.io.tftp_files import DirectoryFiles
from vmlan.wire.tftp import OP_OACK, TFTP_PORT, TftpOack, parse

HOST = "127.0.0.1"
MB = 1024 * 1024
SIZES = {"empty": 0, "f511": 511, "f512": 512, "f513": 513, "f20m": 20 * MB, "f33m": 65536 * 512 + 777}


class UdpTftpServer:
    """The engine on real sockets, on a thread of its own: ``with UdpTftpServer(engine) as s: ... s.port``.

    The engine names the server-side port of every datagram (69 for requests, a transfer's port
    otherwise); this maps 69 to one socket on an ephemeral port and each transfer port to a socket of
    its own, opened when the engine first sends from it and closed when the transfer ends."""

    def __init__(self, engine: TftpServer, host: str = HOST) -> None:
        self.engine = engine
        self.host = host
        self.listen = self._socket()
        self.port: int = self.listen.getsockname()[1]
        self.sockets: dict[int, socket.socket] = {TFTP_PORT: self.listen}
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listen, selectors.EVENT_READ, TFTP_PORT)
        self._wake_r, self._wake_w = socket.socketpair()
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self.oacks: list[dict[bytes, bytes]] = []
        self.transfer_sockets = 0  # sockets opened for transfers
        self.send_errors = 0
        self.error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="tftp-server", daemon=True)

    def _socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MB)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MB)
        sock.bind((self.host, 0))
        sock.setblocking(False)
        return sock

    def __enter__(self) -> UdpTftpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._wake_w.send(b"x")
        self._thread.join(10)
        for sock in self.sockets.values():
            sock.close()
        self._wake_r.close()
        self._wake_w.close()
        self.sel.close()
        self.engine.close()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # surfaced by __exit__
            self.error = exc

    def _loop(self) -> None:
        engine, clock = self.engine, time.monotonic
        buf = bytearray(65536)
        view = memoryview(buf)
        while not self._stop:
            timer = engine.get_timer()
            timeout = None if timer is None else max(0.0, timer - clock())
            for key, _ in self.sel.select(timeout):
                if key.data is None:
                    return
                sock, port = key.fileobj, key.data
                assert isinstance(sock, socket.socket)
                while True:  # drain: one wakeup, every datagram waiting
                    try:
                        n, addr = sock.recvfrom_into(buf)
                    except BlockingIOError:
                        break
                    except OSError:
                        continue
                    self._send(engine.receive(addr, port, view[:n], clock(), guest=addr[0]))
            timer = engine.get_timer()
            if timer is not None and timer <= clock():
                self._send(engine.handle_timer(clock()))
            for _, port in engine.take_closed():
                if port != TFTP_PORT and not engine.has_port(port):  # the port may already serve another
                    done = self.sockets.pop(port, None)
                    if done is not None:
                        self.sel.unregister(done)
                        done.close()

    def _send(self, out: list[Datagram]) -> None:
        for client, port, payload in out:
            sock = self.sockets.get(port)
            if sock is None:
                sock = self.sockets[port] = self._socket()
                self.sel.register(sock, selectors.EVENT_READ, port)
                self.transfer_sockets += 1
            if payload[1] == OP_OACK:
                packet = parse(payload)
                assert isinstance(packet, TftpOack)
                self.oacks.append(dict(packet.options))
            try:
                sock.sendto(payload, cast("tuple[str, int]", client))
            except OSError:
                self.send_errors += 1


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MB):
            h.update(chunk)
    return h.hexdigest()


def run(cmd: list[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          check=False)


def hpa_get(port: int, name: str, local: Path, mode: str = "binary") -> str:
    """What tftp-hpa printed: it exits 0 even after an error packet, which it reports on stdout."""
    result = run(["tftp", "-m", mode, HOST, str(port), "-c", "get", name, str(local)])
    assert result.returncode == 0, result
    return (result.stdout + result.stderr).strip()


def atftp_get(port: int, name: str, local: Path, *options: str) -> subprocess.CompletedProcess[str]:
    args = [a for opt in options for a in ("--option", opt)]
    return run(["atftp", *args, "--get", "-r", name, "-l", str(local), HOST, str(port)])


@pytest.fixture(scope="module")
def clients() -> None:
    missing = [c for c in ("tftp", "atftp") if shutil.which(c) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: apt-get install tftp-hpa atftp", pytrace=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("tftp")
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    for name, size in SIZES.items():
        with (root / name).open("wb") as f:
            left, seed = size, name.encode()
            while left:  # distinct content per file and per MB, quickly
                block = hashlib.sha512(seed + left.to_bytes(8, "big")).digest() * (MB // 64)
                f.write(block[:left])
                left -= min(left, len(block))
    (root / "text.txt").write_bytes(b"first line\nsecond\r\nbare\rCR\n" * 5000 + b"no newline at the end")
    (base / "outside.txt").write_bytes(b"the host's secret\n")
    (root / "escape").symlink_to("../outside.txt")
    (root / "abs").symlink_to(base / "outside.txt")
    (root / "sub" / "up").symlink_to("../f511")  # stays inside: served
    (root / "sub" / "deep-escape").symlink_to("../../outside.txt")
    os.mkfifo(root / "fifo")
    return root


@pytest.fixture
def server(tree: Path, clients: None) -> Iterator[UdpTftpServer]:
    files = DirectoryFiles(tree)
    with UdpTftpServer(TftpServer(files)) as s:
        yield s
    files.close()


def assert_each_block_once(s: UdpTftpServer, blocks: int) -> None:
    """Every block went out, and nothing more than the timer's retransmissions (none on a quiet
    machine): a server answering duplicate ACKs would send more (Sorcerer's Apprentice)."""
    stats = s.engine.stats
    assert stats.data_packets - stats.retransmits <= blocks <= stats.data_packets
    assert stats.duplicate_acks <= stats.retransmits


def wait_idle(s: UdpTftpServer) -> None:
    deadline = time.monotonic() + 10
    while s.engine.active() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert s.engine.active() == 0


# -- tftp-hpa -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SIZES))
def test_tftp_hpa_octet(server: UdpTftpServer, tree: Path, tmp_path: Path, name: str) -> None:
    local = tmp_path / "got"
    assert hpa_get(server.port, name, local) == ""
    assert sha256(local) == sha256(tree / name)
    wait_idle(server)
    stats = server.engine.stats
    assert stats.completed == 1 and stats.oacks == 0
    assert_each_block_once(server, SIZES[name] // 512 + 1)
    assert server.transfer_sockets == 1  # answered from a port of its own, not the request port


def test_tftp_hpa_netascii(server: UdpTftpServer, tree: Path, tmp_path: Path) -> None:
    local = tmp_path / "got.txt"
    assert hpa_get(server.port, "text.txt", local, mode="ascii") == ""
    assert local.read_bytes() == (tree / "text.txt").read_bytes()  # CR LF -> LF and CR NUL -> CR again


def test_tftp_hpa_leading_slash_and_inner_symlink(server: UdpTftpServer, tree: Path, tmp_path: Path) -> None:
    for name, real in (("/f513", "f513"), ("sub/up", "f511"), ("//sub/./up", "f511")):
        local = tmp_path / "got"
        assert hpa_get(server.port, name, local) == ""
        assert local.read_bytes() == (tree / real).read_bytes()


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("missing", "Error code 1: File not found"),
        ("../outside.txt", "Error code 2: Access violation: '..' in the file name"),
        ("sub/../../outside.txt", "Error code 2: Access violation: '..' in the file name"),
        ("escape", "Error code 2: Access violation"),
        ("abs", "Error code 2: Access violation"),
        ("sub/deep-escape", "Error code 2: Access violation"),
        ("fifo", "Error code 2: Access violation"),
        ("sub", "Error code 2: Access violation"),
        ("f511/x", "Error code 1: File not found"),
    ],
)
def test_tftp_hpa_refusals(server: UdpTftpServer, tmp_path: Path, name: str, error: str) -> None:
    local = tmp_path / "got"
    assert hpa_get(server.port, name, local) == error
    assert not local.exists() or local.read_bytes() == b""
    assert server.engine.active() == 0 and server.transfer_sockets == 0  # refused from the request port


def test_tftp_hpa_put_refused(server: UdpTftpServer, tree: Path, tmp_path: Path) -> None:
    local = tmp_path / "upload"
    local.write_bytes(b"data")
    result = run(["tftp", "-m", "binary", HOST, str(server.port), "-c", "put", str(local), "newfile"])
    assert (result.stdout + result.stderr).strip() == "Error code 2: Access violation: read-only server"
    assert not (tree / "newfile").exists() and server.engine.stats.write_refused == 1


# -- atftp ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["empty", "f511", "f512", "f513"])
@pytest.mark.parametrize("blksize", [None, 8, 512, 1428, 1468, 65464])
@pytest.mark.parametrize("windowsize", [None, 4])
def test_atftp_small_files_with_options(server: UdpTftpServer, tree: Path, tmp_path: Path, name: str,
                                        blksize: int | None, windowsize: int | None) -> None:
    options = ["tsize"]
    if blksize is not None:
        options.append(f"blksize {blksize}")
    if windowsize is not None:
        options.append(f"windowsize {windowsize}")
    local = tmp_path / "got"
    result = atftp_get(server.port, name, local, *options)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sha256(local) == sha256(tree / name)
    expected = {b"tsize": str(SIZES[name]).encode()}
    if blksize is not None:
        expected[b"blksize"] = str(blksize).encode()
    if windowsize is not None:
        expected[b"windowsize"] = str(min(windowsize, 128 * 1024 // (blksize or 512))).encode()
    assert server.oacks == [expected]
    wait_idle(server)
    assert server.engine.stats.completed == 1
    assert_each_block_once(server, SIZES[name] // (blksize or 512) + 1)


@pytest.mark.parametrize(("blksize", "windowsize"), [(512, None), (1468, None), (1468, 16), (65464, None), (65464, 2)])
def test_atftp_20_mb(server: UdpTftpServer, tree: Path, tmp_path: Path, blksize: int, windowsize: int | None) -> None:
    options = [f"blksize {blksize}", "tsize"] + ([f"windowsize {windowsize}"] if windowsize else [])
    local = tmp_path / "got"
    result = atftp_get(server.port, "f20m", local, *options)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sha256(local) == sha256(tree / "f20m")
    wait_idle(server)
    assert server.engine.stats.completed == 1
    assert_each_block_once(server, SIZES["f20m"] // blksize + 1)


@pytest.mark.parametrize("windowsize", [None, 8])
def test_atftp_block_number_wrap(server: UdpTftpServer, tree: Path, tmp_path: Path, windowsize: int | None) -> None:
    """blksize 512 and a file over 32 MB: block 65535 is followed by block 0."""
    local = tmp_path / "got"
    options = ["tsize"] + ([f"windowsize {windowsize}"] if windowsize else [])
    result = atftp_get(server.port, "f33m", local, *options)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sha256(local) == sha256(tree / "f33m")
    wait_idle(server)
    assert server.engine.stats.completed == 1
    assert_each_block_once(server, 65538)


def test_atftp_netascii(server: UdpTftpServer, tree: Path, tmp_path: Path) -> None:
    local = tmp_path / "got.txt"
    result = atftp_get(server.port, "text.txt", local, "mode netascii", "tsize", "blksize 1000")
    assert result.returncode == 0, result.stdout + result.stderr
    assert local.read_bytes() == (tree / "text.txt").read_bytes()
    assert server.oacks == [{b"blksize": b"1000"}]  # no tsize in netascii


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("missing", "<File not found>"),
        ("../outside.txt", "<Access violation: '..' in the file name>"),
        ("escape", "<Access violation>"),
        ("abs", "<Access violation>"),
    ],
)
def test_atftp_refusals(server: UdpTftpServer, tmp_path: Path, name: str, error: str) -> None:
    result = atftp_get(server.port, name, tmp_path / "got", "tsize")
    assert result.returncode != 0
    assert f"tftp: error received from server {error}" in result.stdout + result.stderr


def test_atftp_put_refused(server: UdpTftpServer, tree: Path, tmp_path: Path) -> None:
    local = tmp_path / "upload"
    local.write_bytes(b"data")
    result = run(["atftp", "--put", "-l", str(local), "-r", "newfile", HOST, str(server.port)])
    assert result.returncode != 0
    assert "<Access violation: read-only server>" in result.stdout + result.stderr
    assert not (tree / "newfile").exists()


# -- both at once, and libslirp's single-port mode ----------------------------------------------------------------
def test_parallel_clients(server: UdpTftpServer, tree: Path, tmp_path: Path) -> None:
    procs: list[tuple[str, subprocess.Popen[Any]]] = []
    for i, name in enumerate(["f20m", "f513", "f20m", "text.txt"]):
        local = tmp_path / f"got{i}"
        if i % 2:
            cmd = ["tftp", "-m", "binary", HOST, str(server.port), "-c", "get", name, str(local)]
        else:
            cmd = ["atftp", "--option", "blksize 1468", "--option", "windowsize 8", "--get", "-r", name,
                   "-l", str(local), HOST, str(server.port)]
        procs.append((name, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    for i, (name, proc) in enumerate(procs):
        proc.communicate(timeout=180)
        assert sha256(tmp_path / f"got{i}") == sha256(tree / name)
    wait_idle(server)
    assert server.engine.stats.completed == 4 and server.transfer_sockets == 4


def test_single_port_mode(tree: Path, tmp_path: Path, clients: None) -> None:
    """``transfer_ports=None``: every answer from the request port, as libslirp does; both clients accept it."""
    files = DirectoryFiles(tree)
    with UdpTftpServer(TftpServer(files, TftpConfig(transfer_ports=None))) as s:
        assert hpa_get(s.port, "f513", tmp_path / "a") == ""
        result = atftp_get(s.port, "f20m", tmp_path / "b", "blksize 1468", "windowsize 4", "tsize")
        assert result.returncode == 0, result.stdout + result.stderr
        wait_idle(s)
        assert s.transfer_sockets == 0 and s.engine.stats.completed == 2
    files.close()
    assert (tmp_path / "a").read_bytes() == (tree / "f513").read_bytes()
    assert sha256(tmp_path / "b") == sha256(tree / "f20m")
