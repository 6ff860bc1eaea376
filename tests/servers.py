"""Loopback servers for the interop tests: HTTP, UDP echo and DNS, each in daemon threads.

Every server binds a 127.0.0.0/8 address only (DnsServer also ``::1``; ``ValueError`` otherwise), port 0
by default (read the chosen one from ``.port``), starts on ``__enter__`` or ``start()``, stops on
``__exit__`` or ``stop()``, and records what it saw (with the client address, for hostfwd and
source-address tests) behind a lock; ``wait_*`` methods block until the records arrive. Standard library
only.

``HttpServer``
    ``GET /blob/<size>/<seed>``: ``size`` deterministic pseudo-random bytes, streamed (sha256:
    ``expected_sha256(size, seed)``; the bytes: ``blob_chunks``). ``GET /whoami``: ``"<ip> <port>\\n"`` of the
    client as the server saw it. ``PUT``/``POST`` any path: the body (Content-Length, chunked, or until EOF
    with neither) is hashed as it streams in and recorded as an :class:`Upload`; the reply body is
    ``"<size> <sha256>\\n"``. HTTP/1.1 keep-alive, one thread per connection, 50 MB each way at full speed.
``UdpEchoServer``
    Sends every datagram back to its source; records :class:`Datagram` (source, size).
``DnsServer``
    Binds 127.0.0.0/8 or ``::1`` (for IPv6 upstreams). Answers A queries from ``records`` (name -> address
    or list of addresses, case-insensitive, trailing dot optional) over UDP and TCP (2-byte length
    framing, several queries per connection) on the same
    port: NOERROR with the addresses, NOERROR with no answer for other types of a known name, NXDOMAIN
    otherwise, FORMERR for a malformed query. ``silent=True`` (settable at any time) records queries but
    answers none, for timeout tests. Records :class:`DnsQuery`. ``build_dns_query`` and
    ``parse_dns_response`` are hand-rolled wire helpers for tests that need no guest.

Fixtures ``http_server``, ``udp_echo_server`` and ``dns_server`` (one fresh server per test) live here
too, as functions ``fixture_<name>``: ``from servers import fixture_http_server  # noqa: F401`` in a test
module makes ``http_server`` available there (tests/ is on sys.path, see tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import random
import re
import selectors
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import pytest

__all__ = [
    "Datagram",
    "DnsQuery",
    "DnsServer",
    "HttpServer",
    "Request",
    "UdpEchoServer",
    "Upload",
    "blob_chunks",
    "build_dns_query",
    "expected_sha256",
    "fixture_dns_server",
    "fixture_http_server",
    "fixture_udp_echo_server",
    "parse_dns_response",
]

BLOB_CHUNK = 1 << 18  # a multiple of 4: the stream equals one randbytes(size) call
IO_CHUNK = 1 << 18
MAX_BLOB = 1 << 34

Address = tuple[str, int]
_T = TypeVar("_T")


def _check_loopback(host: str, ipv6: bool = False) -> None:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        addr = None
    if addr is None or not addr.is_loopback or (addr.version == 6 and not ipv6):
        also = " or ::1" if ipv6 else ""
        raise ValueError(f"test servers bind 127.0.0.0/8 addresses{also} only (got {host!r})")


class _Records:
    """A list of records with a condition variable, for ``wait_*``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: list[Any] = []

    def add(self, item: Any) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def snapshot(self) -> list[Any]:
        with self._cond:
            return list(self._items)

    def clear(self) -> None:
        with self._cond:
            self._items.clear()

    def wait(self, pred: Callable[[list[Any]], _T], timeout: float, what: str) -> _T:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = pred(self._items)
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{what} not seen within {timeout} s (have {len(self._items)} records)")
                self._cond.wait(left)


class _ThreadedServer:
    def __enter__(self: Any) -> Any:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------- HTTP


def blob_chunks(size: int, seed: int | str, chunk: int = BLOB_CHUNK) -> Iterator[bytes]:
    """The bytes of ``/blob/<size>/<seed>``, in chunks (deterministic: Mersenne Twister seeded by str(seed))."""
    rng = random.Random(f"vmlan-blob:{seed}")
    left = size
    while left > 0:
        n = min(chunk, left)
        yield rng.randbytes(n)
        left -= n


@functools.lru_cache(maxsize=256)
def expected_sha256(size: int, seed: int | str) -> str:
    """Hex sha256 of ``/blob/<size>/<seed>``."""
    digest = hashlib.sha256()
    for part in blob_chunks(size, str(seed)):
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    client: Address
    status: int


@dataclass(frozen=True, slots=True)
class Upload:
    method: str  # "PUT" or "POST"
    path: str
    size: int
    sha256: str
    client: Address
    complete: bool  # False: the connection ended before the announced body did


_BLOB_RE = re.compile(r"/blob/([0-9]+)/([A-Za-z0-9._-]+)")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _client(self) -> Address:
        host, port = self.client_address[:2]
        return (str(host), int(port))

    def _note(self, status: int) -> None:
        self.server.owner._requests.add(Request(self.command, self.path, self._client(), status))

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self._note(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _get(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/whoami":
            host, port = self._client()
            self._reply(200, f"{host} {port}\n".encode())
            return
        m = _BLOB_RE.fullmatch(path)
        if not m or int(m.group(1)) > MAX_BLOB:
            self._reply(404, b"not found\n")
            return
        size, seed = int(m.group(1)), m.group(2)
        self._note(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command == "HEAD":
            return
        for part in blob_chunks(size, seed):
            self.wfile.write(part)

    do_GET = _get
    do_HEAD = _get

    def _read_body(self, digest: Any) -> tuple[int, bool]:
        """Stream the request body into ``digest``; returns (bytes, complete)."""
        rfile = self.rfile
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            total = 0
            while True:
                line = rfile.readline(1024)
                if not line:
                    return total, False
                try:
                    n = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    return total, False
                if n == 0:
                    while rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return total, True
                while n:
                    data = rfile.read(min(n, IO_CHUNK))
                    if not data:
                        return total, False
                    digest.update(data)
                    total += len(data)
                    n -= len(data)
                rfile.readline(1024)  # CRLF after the chunk
        length_header = self.headers.get("Content-Length")
        if length_header is not None:
            left = int(length_header)
            total = 0
            while left:
                data = rfile.read(min(left, IO_CHUNK))
                if not data:
                    return total, False
                digest.update(data)
                total += len(data)
                left -= len(data)
            return total, True
        self.close_connection = True  # no framing: the body ends at EOF
        total = 0
        while data := rfile.read1(IO_CHUNK):
            digest.update(data)
            total += len(data)
        return total, True

    def _upload(self) -> None:
        digest = hashlib.sha256()
        size, complete = self._read_body(digest)
        upload = Upload(self.command, self.path, size, digest.hexdigest(), self._client(), complete)
        self.server.owner._uploads.add(upload)
        if not complete:
            self.close_connection = True
            return
        self._reply(200, f"{size} {upload.sha256}\n".encode())

    do_PUT = _upload
    do_POST = _upload


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, owner: HttpServer, address: Address) -> None:
        self.owner = owner
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call getfqdn(), a reverse DNS lookup; not wanted here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        self.owner.errors.append(repr(exc))


class HttpServer(_ThreadedServer):
    """See the module docstring. ``url(path)`` builds URLs; ``uploads()``/``requests()`` return records."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        _check_loopback(host)
        self.host = host
        self.port = port
        self.errors: list[str] = []  # exceptions from handler threads (a client that went away, ...)
        self._requests = _Records()
        self._uploads = _Records()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    expected_sha256 = staticmethod(expected_sha256)
    blob_chunks = staticmethod(blob_chunks)

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def blob_path(self, size: int, seed: int | str) -> str:
        return f"/blob/{size}/{seed}"

    def start(self) -> None:
        self._httpd = _HTTPServer(self, (self.host, self.port))
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"http-{self.port}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.close_connections()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._httpd = None

    def requests(self) -> list[Request]:
        return self._requests.snapshot()

    def uploads(self, path: str | None = None) -> list[Upload]:
        return [u for u in self._uploads.snapshot() if path is None or u.path == path]

    def clients(self) -> set[str]:
        """Client IP addresses seen, by requests and uploads."""
        return {r.client[0] for r in self.requests()} | {u.client[0] for u in self.uploads()}

    def wait_upload(self, path: str, timeout: float = 30.0) -> Upload:
        """The first upload to ``path`` (waits for it)."""
        found: list[Upload] = self._uploads.wait(
            lambda items: [u for u in items if u.path == path], timeout, f"upload to {path}"
        )
        return found[0]

    def wait_request(self, path: str, timeout: float = 30.0) -> Request:
        found: list[Request] = self._requests.wait(
            lambda items: [r for r in items if r.path == path], timeout, f"request for {path}"
        )
        return found[0]


# ---------------------------------------------------------------------------------------------------- UDP


@dataclass(frozen=True, slots=True)
class Datagram:
    source: Address
    size: int


class _SelectorThread:
    """One thread running a selector, with a wake-up socketpair to stop it at once."""

    def __init__(self, name: str) -> None:
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            for key, _ in self.sel.select(0.5):
                if key.data is None:
                    return
                key.data(key.fileobj)

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)
        self.sel.close()
        self._wake_r.close()
        self._wake_w.close()


class UdpEchoServer(_ThreadedServer):
    """Echoes each datagram to its source; ``datagrams()``/``sources()`` tell what arrived."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        _check_loopback(host)
        self.host = host
        self.port = port
        self._records = _Records()
        self._sock: socket.socket | None = None
        self._loop: _SelectorThread | None = None

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.bind((self.host, self.port))
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._loop = _SelectorThread(f"udp-echo-{self.port}")
        self._loop.sel.register(sock, selectors.EVENT_READ, self._readable)
        self._loop.start()

    def _readable(self, sock: Any) -> None:
        for _ in range(64):
            try:
                data, src = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error from an earlier send; go on
                continue
            source = (str(src[0]), int(src[1]))
            self._records.add(Datagram(source, len(data)))
            with contextlib.suppress(OSError):
                sock.sendto(data, src)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
            self._loop = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def datagrams(self) -> list[Datagram]:
        return self._records.snapshot()

    def sources(self) -> set[Address]:
        return {d.source for d in self.datagrams()}

    def wait_datagrams(self, count: int, timeout: float = 10.0) -> list[Datagram]:
        return self._records.wait(
            lambda items: list(items) if len(items) >= count else [], timeout, f"{count} datagrams"
        )


# ---------------------------------------------------------------------------------------------------- DNS

QTYPE_A, QTYPE_AAAA = 1, 28
CLASS_IN = 1
RCODE_NOERROR, RCODE_FORMERR, RCODE_NXDOMAIN, RCODE_NOTIMP = 0, 1, 3, 4
_HEADER = struct.Struct("!HHHHHH")  # RFC 1035 4.1.1: id, flags, qd, an, ns, ar


@dataclass(frozen=True, slots=True)
class DnsQuery:
    name: str  # lower-case, with the trailing dot
    qtype: int
    qid: int
    transport: str  # "udp" or "tcp"
    client: Address


def _normalize(name: str) -> str:
    name = name.lower()
    return name if name.endswith(".") else name + "."


def _encode_name(name: str) -> bytes:
    out = bytearray()
    for label in _normalize(name).rstrip(".").split("."):
        if label:
            raw = label.encode("ascii")
            if len(raw) > 63:
                raise ValueError(f"DNS label too long: {label!r}")
            out += bytes([len(raw)]) + raw
    return bytes(out + b"\x00")


def _decode_name(msg: bytes, offset: int) -> tuple[str, int]:
    """RFC 1035 4.1.4 names, with compression; returns (name with trailing dot, offset after it)."""
    labels: list[str] = []
    end = -1
    jumps = 0
    while True:
        if offset >= len(msg):
            raise ValueError("name runs past the message")
        n = msg[offset]
        if n & 0xC0 == 0xC0:
            if offset + 1 >= len(msg) or jumps > 16:
                raise ValueError("bad compression pointer")
            if end < 0:
                end = offset + 2
            offset = ((n & 0x3F) << 8) | msg[offset + 1]
            jumps += 1
            continue
        if n & 0xC0:
            raise ValueError("bad label type")
        offset += 1
        if n == 0:
            break
        if offset + n > len(msg):
            raise ValueError("label runs past the message")
        labels.append(msg[offset : offset + n].decode("ascii", "replace"))
        offset += n
    return ".".join(labels).lower() + ".", (end if end >= 0 else offset)


def build_dns_query(name: str, qtype: int = QTYPE_A, qid: int = 0x1234, rd: bool = True) -> bytes:
    """One standard query (RFC 1035 4.1), as a resolver sends it over UDP."""
    flags = 0x0100 if rd else 0
    return _HEADER.pack(qid, flags, 1, 0, 0, 0) + _encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)


def parse_dns_response(msg: bytes) -> tuple[int, int, list[str]]:
    """(id, rcode, A addresses in the answer section) of a response."""
    qid, flags, qd, an, _, _ = _HEADER.unpack_from(msg)
    offset = _HEADER.size
    for _ in range(qd):
        _, offset = _decode_name(msg, offset)
        offset += 4
    addrs = []
    for _ in range(an):
        _, offset = _decode_name(msg, offset)
        rtype, _, _, rdlen = struct.unpack_from("!HHIH", msg, offset)
        offset += 10
        if rtype == QTYPE_A and rdlen == 4:
            addrs.append(socket.inet_ntoa(msg[offset : offset + 4]))
        offset += rdlen
    return qid, flags & 0x000F, addrs


class DnsServer(_ThreadedServer):
    """See the module docstring; ``port`` serves both UDP and TCP."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        records: Mapping[str, str | Sequence[str]] | None = None,
        silent: bool = False,
        ttl: int = 60,
    ) -> None:
        _check_loopback(host, ipv6=True)
        self.host = host
        self.port = port
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if records is None:
            records = {"test.vmlan.example.": "10.99.0.7"}
        self.records: dict[str, list[str]] = {}
        for name, value in records.items():
            self.add_record(name, value)
        self.silent = silent
        self.ttl = ttl
        self.malformed = 0
        self._queries = _Records()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._loop: _SelectorThread | None = None
        self._tcp_conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    def add_record(self, name: str, value: str | Sequence[str]) -> None:
        addrs = [value] if isinstance(value, str) else list(value)
        for addr in addrs:
            socket.inet_aton(addr)
        self.records[_normalize(name)] = addrs

    def start(self) -> None:
        for _ in range(20):
            udp = socket.socket(self.family, socket.SOCK_DGRAM)
            udp.bind((self.host, self.port))
            port = udp.getsockname()[1]
            tcp = socket.socket(self.family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, port))
            except OSError:
                udp.close()
                tcp.close()
                if self.port:
                    raise
                continue
            break
        else:
            raise OSError("no port free for both UDP and TCP")
        tcp.listen(64)
        udp.setblocking(False)
        tcp.setblocking(False)
        self.port = port
        self._udp, self._tcp = udp, tcp
        self._loop = _SelectorThread(f"dns-{port}")
        self._loop.sel.register(udp, selectors.EVENT_READ, self._udp_readable)
        self._loop.sel.register(tcp, selectors.EVENT_READ, self._accept)
        self._loop.start()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
            self._loop = None
        for sock in (self._udp, self._tcp):
            if sock is not None:
                sock.close()
        self._udp = self._tcp = None
        with self._lock:
            conns = list(self._tcp_conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def queries(self) -> list[DnsQuery]:
        return self._queries.snapshot()

    def wait_queries(self, count: int = 1, timeout: float = 10.0) -> list[DnsQuery]:
        return self._queries.wait(lambda items: list(items) if len(items) >= count else [], timeout, f"{count} queries")

    def answer(self, msg: bytes, transport: str, client: Address) -> bytes | None:
        """The response to one query message (None: no answer at all)."""
        if len(msg) < _HEADER.size:
            self.malformed += 1
            return None
        qid, flags, qd, _, _, _ = _HEADER.unpack_from(msg)
        if flags & 0x8000:
            return None  # a response, not a query
        opcode = (flags >> 11) & 0xF
        reply_flags = 0x8000 | (opcode << 11) | 0x0400 | (flags & 0x0100) | 0x0080  # QR AA RD(copied) RA
        try:
            if qd != 1:
                raise ValueError("QDCOUNT != 1")
            name, offset = _decode_name(msg, _HEADER.size)
            if offset + 4 > len(msg):
                raise ValueError("question runs past the message")
            qtype, qclass = struct.unpack_from("!HH", msg, offset)
        except ValueError:
            self.malformed += 1
            return None if self.silent else _HEADER.pack(qid, reply_flags | RCODE_FORMERR, 0, 0, 0, 0)
        self._queries.add(DnsQuery(name, qtype, qid, transport, client))
        if self.silent:
            return None
        question = msg[_HEADER.size : offset + 4]
        if opcode != 0:
            return _HEADER.pack(qid, reply_flags | RCODE_NOTIMP, 1, 0, 0, 0) + question
        addrs = self.records.get(name)
        if addrs is None:
            return _HEADER.pack(qid, reply_flags | RCODE_NXDOMAIN, 1, 0, 0, 0) + question
        answers = b""
        count = 0
        if qtype in (QTYPE_A, 255) and qclass in (CLASS_IN, 255):
            for addr in addrs:
                # name = pointer to the question (offset 12), RFC 1035 4.1.3
                answers += struct.pack("!HHHIH", 0xC00C, QTYPE_A, CLASS_IN, self.ttl, 4) + socket.inet_aton(addr)
                count += 1
        return _HEADER.pack(qid, reply_flags | RCODE_NOERROR, 1, count, 0, 0) + question + answers

    def _udp_readable(self, sock: Any) -> None:
        for _ in range(64):
            try:
                msg, src = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            reply = self.answer(msg, "udp", (str(src[0]), int(src[1])))
            if reply is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(reply, src)

    def _accept(self, sock: Any) -> None:
        try:
            conn, src = sock.accept()
        except (BlockingIOError, InterruptedError, OSError):
            return
        conn.setblocking(True)
        conn.settimeout(30)
        with self._lock:
            self._tcp_conns.add(conn)
        threading.Thread(
            target=self._serve_tcp, args=(conn, (str(src[0]), int(src[1]))), name=f"dns-tcp-{src[1]}", daemon=True
        ).start()

    def _serve_tcp(self, conn: socket.socket, client: Address) -> None:
        try:
            buf = b""
            while True:
                while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                    n = int.from_bytes(buf[:2], "big")
                    msg, buf = buf[2 : 2 + n], buf[2 + n :]
                    reply = self.answer(msg, "tcp", client)
                    if reply is not None:
                        conn.sendall(len(reply).to_bytes(2, "big") + reply)
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
        except OSError:
            return
        finally:
            with self._lock:
                self._tcp_conns.discard(conn)
            conn.close()


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(name="http_server")
def fixture_http_server() -> Iterator[HttpServer]:
    with HttpServer() as server:
        yield server


@pytest.fixture(name="udp_echo_server")
def fixture_udp_echo_server() -> Iterator[UdpEchoServer]:
    with UdpEchoServer() as server:
        yield server


@pytest.fixture(name="dns_server")
def fixture_dns_server() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server
