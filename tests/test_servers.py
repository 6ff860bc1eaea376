"""Self-tests of the loopback servers in tests/servers.py, with plain sockets (and scapy for DNS)."""

from __future__ import annotations

import hashlib
import http.client
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from scapy.layers.dns import DNS, DNSQR

from servers import (
    DnsServer,
    HttpServer,
    UdpEchoServer,
    blob_chunks,
    build_dns_query,
    expected_sha256,
    fixture_dns_server,  # noqa: F401 (fixture dns_server)
    fixture_http_server,  # noqa: F401 (fixture http_server)
    fixture_udp_echo_server,  # noqa: F401 (fixture udp_echo_server)
    parse_dns_response,
)

MB = 1 << 20


def _get(server: HttpServer, path: str, source: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(
        server.host, server.port, timeout=30, source_address=(source, 0) if source else None
    )
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------------ HTTP


def test_blob_is_deterministic_and_matches_its_sha256(http_server):
    status, body = _get(http_server, "/blob/100000/7")
    assert status == 200 and len(body) == 100000
    assert hashlib.sha256(body).hexdigest() == expected_sha256(100000, 7) == expected_sha256(100000, "7")
    assert body == b"".join(blob_chunks(100000, 7))
    assert _get(http_server, "/blob/100000/8")[1] != body
    assert _get(http_server, "/blob/0/1") == (200, b"")
    assert hashlib.sha256(b"".join(blob_chunks(5, "x", chunk=4))).hexdigest() == expected_sha256(5, "x")


def test_head_404_and_whoami(http_server):
    conn = http.client.HTTPConnection(http_server.host, http_server.port, timeout=10)
    conn.request("HEAD", "/blob/1234/1")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Length") == "1234" and resp.read() == b""
    conn.request("GET", "/nothing")  # same keep-alive connection
    resp = conn.getresponse()
    assert resp.status == 404 and resp.read() == b"not found\n"
    local = conn.sock.getsockname()
    conn.request("GET", "/whoami")
    assert conn.getresponse().read() == f"{local[0]} {local[1]}\n".encode()
    conn.close()
    assert [(r.method, r.path, r.status) for r in http_server.requests()] == [
        ("HEAD", "/blob/1234/1", 200),
        ("GET", "/nothing", 404),
        ("GET", "/whoami", 200),
    ]


def test_client_source_address_is_recorded():
    with HttpServer(host="127.0.0.1") as server:
        status, body = _get(server, "/whoami", source="127.0.0.2")
        assert status == 200 and body.startswith(b"127.0.0.2 ")
        assert server.wait_request("/whoami").client[0] == "127.0.0.2"
        assert server.clients() == {"127.0.0.2"}


def test_50mb_download_streams_at_speed(http_server):
    size = 50 * MB
    expected = expected_sha256(size, "big")
    sock = socket.create_connection(http_server.address, timeout=30)
    start = time.monotonic()
    sock.sendall(f"GET /blob/{size}/big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    digest = hashlib.sha256()
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(65536)
    head, _, rest = head.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {size}".encode() in head
    digest.update(rest)
    got = len(rest)
    while data := sock.recv(1 << 20):
        digest.update(data)
        got += len(data)
    elapsed = time.monotonic() - start
    sock.close()
    assert got == size and digest.hexdigest() == expected
    assert elapsed < 10, f"50 MB took {elapsed:.1f} s"


def test_50mb_put_upload_is_hashed_as_it_streams(http_server):
    size = 50 * MB
    conn = http.client.HTTPConnection(http_server.host, http_server.port, timeout=60)
    start = time.monotonic()
    conn.putrequest("PUT", "/up/big.bin")
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    for part in blob_chunks(size, 3):
        conn.send(part)
    resp = conn.getresponse()
    body = resp.read()
    elapsed = time.monotonic() - start
    local = conn.sock.getsockname()
    conn.close()
    assert resp.status == 200 and body == f"{size} {expected_sha256(size, 3)}\n".encode()
    (upload,) = http_server.uploads("/up/big.bin")
    assert (upload.method, upload.size, upload.sha256, upload.complete) == ("PUT", size, expected_sha256(size, 3), True)
    assert upload.client == (local[0], local[1])
    assert elapsed < 10, f"50 MB took {elapsed:.1f} s"


def test_post_chunked_and_unframed_uploads(http_server):
    conn = http.client.HTTPConnection(http_server.host, http_server.port, timeout=10)
    conn.request("POST", "/chunked", body=iter([b"hello ", b"", b"world"]), encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == f"11 {hashlib.sha256(b'hello world').hexdigest()}\n".encode()
    conn.close()
    # no Content-Length and no chunking: the body ends when the client shuts down its side
    sock = socket.create_connection(http_server.address, timeout=10)
    sock.sendall(b"PUT /eof HTTP/1.0\r\n\r\n" + b"x" * 100000)
    sock.shutdown(socket.SHUT_WR)
    reply = b""
    while data := sock.recv(65536):
        reply += data
    sock.close()
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(
        f"100000 {hashlib.sha256(b'x' * 100000).hexdigest()}\n".encode()
    )
    assert [u.size for u in http_server.uploads()] == [11, 100000]


def test_truncated_upload_is_recorded_incomplete(http_server):
    sock = socket.create_connection(http_server.address, timeout=10)
    sock.sendall(b"PUT /cut HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"y" * 400)
    sock.close()
    upload = http_server.wait_upload("/cut", timeout=10)
    assert (upload.size, upload.complete) == (400, False)


def test_many_concurrent_connections(http_server):
    def fetch(i: int) -> bool:
        status, body = _get(http_server, f"/blob/{MB}/{i}")
        return status == 200 and hashlib.sha256(body).hexdigest() == expected_sha256(MB, i)

    with ThreadPoolExecutor(64) as pool:
        assert all(pool.map(fetch, range(64)))
    # and connections held open at the same time
    socks = [socket.create_connection(http_server.address, timeout=10) for _ in range(100)]
    for sock in socks:
        sock.sendall(b"GET /blob/10/1 HTTP/1.1\r\nHost: x\r\n\r\n")
    for sock in socks:
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.close()


def test_stop_closes_keepalive_connections_and_loopback_only():
    server = HttpServer()
    server.start()
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    conn.request("GET", "/blob/1/1")
    conn.getresponse().read()
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < 3
    assert conn.sock.recv(1) == b""  # the server side was shut down
    conn.close()
    for cls in (HttpServer, UdpEchoServer, DnsServer):
        with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
            cls(host="0.0.0.0")


# ------------------------------------------------------------------------------------------------ UDP


def test_udp_echo_and_sources(udp_echo_server):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.3", 0))
    for sock in (a, b):
        sock.settimeout(5)
    a.sendto(b"ping", udp_echo_server.address)
    assert a.recvfrom(65536) == (b"ping", udp_echo_server.address)
    big = bytes(range(256)) * 234  # 59904 bytes
    b.sendto(big, udp_echo_server.address)
    assert b.recv(65536) == big
    a.sendto(b"", udp_echo_server.address)
    assert a.recv(10) == b""
    records = udp_echo_server.wait_datagrams(3)
    assert [(d.source, d.size) for d in records] == [
        (a.getsockname(), 4),
        (b.getsockname(), len(big)),
        (a.getsockname(), 0),
    ]
    assert udp_echo_server.sources() == {a.getsockname(), b.getsockname()}
    a.close()
    b.close()


def test_udp_echo_burst():
    with UdpEchoServer(host="127.0.0.2") as server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.settimeout(5)
        for i in range(2000):
            sock.sendto(struct.pack("!I", i) + b"z" * 1000, server.address)
        got = {struct.unpack("!I", sock.recv(2000)[:4])[0] for _ in range(2000)}
        assert got == set(range(2000))
        sock.close()


# ------------------------------------------------------------------------------------------------ DNS


def _udp_ask(server: DnsServer, payload: bytes, timeout: float = 5) -> bytes:
    sock = socket.socket(server.family, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    try:
        sock.sendto(payload, server.address)
        return sock.recv(65536)
    finally:
        sock.close()


def test_dns_a_record_over_udp_parsed_by_scapy(dns_server):
    reply = DNS(_udp_ask(dns_server, bytes(DNS(id=0x4242, rd=1, qd=DNSQR(qname="test.vmlan.example", qtype="A")))))
    assert (reply.id, reply.qr, reply.aa, reply.rd, reply.ra, reply.rcode) == (0x4242, 1, 1, 1, 1, 0)
    assert reply.qd[0].qname == b"test.vmlan.example."
    assert reply.ancount == 1 and reply.an[0].type == 1 and reply.an[0].rdata == "10.99.0.7"
    assert reply.an[0].ttl == 60
    (query,) = dns_server.wait_queries(1)
    assert (query.name, query.qtype, query.qid, query.transport) == ("test.vmlan.example.", 1, 0x4242, "udp")


def test_dns_nxdomain_nodata_case_and_several_addresses():
    with DnsServer(records={"multi.example": ["10.0.0.1", "10.0.0.2"], "Test.Vmlan.Example.": "10.99.0.7"}) as server:
        reply = DNS(_udp_ask(server, build_dns_query("nope.example", qid=7)))
        assert (reply.id, reply.rcode, reply.ancount) == (7, 3, 0)
        reply = DNS(_udp_ask(server, build_dns_query("test.vmlan.example", qtype=28)))  # AAAA: NODATA
        assert (reply.rcode, reply.ancount) == (0, 0)
        qid, rcode, addrs = parse_dns_response(_udp_ask(server, build_dns_query("TEST.vmlan.EXAMPLE.")))
        assert (qid, rcode, addrs) == (0x1234, 0, ["10.99.0.7"])
        reply = DNS(_udp_ask(server, build_dns_query("multi.example")))
        assert sorted(reply.an[i].rdata for i in range(reply.ancount)) == ["10.0.0.1", "10.0.0.2"]
        assert [q.name for q in server.queries()] == [
            "nope.example.",
            "test.vmlan.example.",
            "test.vmlan.example.",
            "multi.example.",
        ]


def test_dns_on_ipv6_loopback_over_udp_and_tcp():
    """DnsServer also binds ::1 (an IPv6 upstream for dns-server=[::1]:PORT); the other servers do not."""
    with DnsServer(host="::1") as server:
        qid, rcode, addrs = parse_dns_response(_udp_ask(server, build_dns_query("test.vmlan.example", qid=5)))
        assert (qid, rcode, addrs) == (5, 0, ["10.99.0.7"])
        with socket.create_connection(server.address, timeout=5) as sock:
            q = build_dns_query("test.vmlan.example", qid=6)
            sock.sendall(struct.pack("!H", len(q)) + q)
            reply = sock.recv(4096)
        assert parse_dns_response(reply[2:])[:2] == (6, 0)
        assert [(q.transport, q.client[0]) for q in server.wait_queries(2)] == [("udp", "::1"), ("tcp", "::1")]
    for cls in (HttpServer, UdpEchoServer):
        with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
            cls(host="::1")
    with pytest.raises(ValueError, match=r"::1"):
        DnsServer(host="::")


def test_dns_over_tcp_with_length_framing(dns_server):
    sock = socket.create_connection(dns_server.address, timeout=5)
    q1 = build_dns_query("test.vmlan.example", qid=1)
    q2 = build_dns_query("other.example", qid=2)
    # both queries in one write, the second one split across two writes
    sock.sendall(struct.pack("!H", len(q1)) + q1 + struct.pack("!H", len(q2)) + q2[:5])
    time.sleep(0.05)
    sock.sendall(q2[5:])
    replies = []
    buf = b""
    while len(replies) < 2:
        buf += sock.recv(4096)
        while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
            n = struct.unpack("!H", buf[:2])[0]
            replies.append(DNS(buf[2 : 2 + n]))
            buf = buf[2 + n :]
    sock.close()
    assert (replies[0].id, replies[0].rcode, replies[0].an[0].rdata) == (1, 0, "10.99.0.7")
    assert (replies[1].id, replies[1].rcode) == (2, 3)
    assert [q.transport for q in dns_server.wait_queries(2)] == ["tcp", "tcp"]


def test_dns_silent_records_but_never_answers():
    with DnsServer(silent=True) as server:
        with pytest.raises(TimeoutError):
            _udp_ask(server, build_dns_query("test.vmlan.example"), timeout=0.5)
        sock = socket.create_connection(server.address, timeout=0.5)
        q = build_dns_query("test.vmlan.example", qid=9)
        sock.sendall(struct.pack("!H", len(q)) + q)
        with pytest.raises(TimeoutError):
            sock.recv(10)
        sock.close()
        assert [(q.qid, q.transport) for q in server.wait_queries(2)] == [(0x1234, "udp"), (9, "tcp")]
        server.silent = False
        assert parse_dns_response(_udp_ask(server, build_dns_query("test.vmlan.example")))[2] == ["10.99.0.7"]


def test_dns_malformed_queries_get_formerr_and_the_server_survives(dns_server):
    assert dns_server.answer(b"\x00\x01", "udp", ("127.0.0.1", 1)) is None  # too short: dropped
    bad = struct.pack("!HHHHHH", 5, 0x0100, 1, 0, 0, 0) + b"\x05abc"  # label runs past the end
    reply = DNS(_udp_ask(dns_server, bad))
    assert (reply.id, reply.rcode) == (5, 1)
    loop = struct.pack("!HHHHHH", 6, 0, 1, 0, 0, 0) + b"\xc0\x0c" + b"\x00\x01\x00\x01"  # pointer to itself
    assert DNS(_udp_ask(dns_server, loop)).rcode == 1
    assert dns_server.malformed == 3
    assert parse_dns_response(_udp_ask(dns_server, build_dns_query("test.vmlan.example")))[1:] == (0, ["10.99.0.7"])


def test_dns_many_parallel_clients(dns_server):
    errors: list[str] = []

    def ask(i: int) -> None:
        qid, rcode, addrs = parse_dns_response(_udp_ask(dns_server, build_dns_query("test.vmlan.example", qid=i)))
        if (qid, rcode, addrs) != (i, 0, ["10.99.0.7"]):
            errors.append(f"{i}: {qid} {rcode} {addrs}")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(dns_server.queries()) == 50
