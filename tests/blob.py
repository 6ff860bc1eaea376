"""A bulk TCP sender and receiver to run inside network namespaces (``ip netns exec NS python blob.py``).

    python blob.py serve PORT SIZE SEED     HTTP/1.0 server: every GET gets SIZE bytes of pseudo-random data
    python blob.py fetch HOST PORT          GET /, print "<bytes> <sha256>" of the body
    python blob.py sink PORT                accept one connection, print "<bytes> <sha256>" of what it sent
    python blob.py ping HOST [COUNT]        ICMP echo over a raw socket (the host has no ping(8)); exit 1 if
                                            any of COUNT (3) requests goes unanswered within 5 s

``serve`` prints "listening" once it listens. The data is a 1 MiB block from random.Random(SEED)
repeated (each repeat's first 8 bytes replaced by its index, so that no two MiB are alike); the test
computes the expected digest with :func:`expected_sha256`. Busybox wget in a guest can fetch it too.
"""

from __future__ import annotations

import hashlib
import random
import socket
import sys

BLOCK = 1 << 20


def blocks(size: int, seed: int):  # type: ignore[no-untyped-def]
    base = bytearray(random.Random(seed).randbytes(BLOCK))
    sent, index = 0, 0
    while sent < size:
        base[0:8] = index.to_bytes(8, "big")
        chunk = bytes(base[: min(BLOCK, size - sent)])
        yield chunk
        sent += len(chunk)
        index += 1


def expected_sha256(size: int, seed: int) -> str:
    h = hashlib.sha256()
    for chunk in blocks(size, seed):
        h.update(chunk)
    return h.hexdigest()


def serve(port: int, size: int, seed: int) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(8)
    print("listening", flush=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 65536:
                data = conn.recv(4096)
                if not data:
                    break
                request += data
            conn.sendall(f"HTTP/1.0 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
            for chunk in blocks(size, seed):
                conn.sendall(chunk)


def fetch(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=60) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(65536)
            if not data:
                raise SystemExit("EOF in the response header")
            head += data
        _, _, body = head.partition(b"\r\n\r\n")
        h = hashlib.sha256(body)
        total = len(body)
        while data := conn.recv(1 << 20):
            h.update(data)
            total += len(data)
    print(total, h.hexdigest())


def sink(port: int) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(1)
    print("listening", flush=True)
    conn, _ = srv.accept()
    h = hashlib.sha256()
    total = 0
    with conn:
        while data := conn.recv(1 << 20):
            h.update(data)
            total += len(data)
    print(total, h.hexdigest(), flush=True)


def ping(host: str, count: int = 3) -> None:
    import os
    import struct
    import time

    from vmlan.wire.checksum import internet_checksum

    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    for seq in range(1, count + 1):
        body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"vmlan-ping" * 5
        body = body[:2] + struct.pack("!H", internet_checksum(body)) + body[4:]
        sock.sendto(body, (host, 0))
        deadline = time.monotonic() + 5
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, (src, _) = sock.recvfrom(65536)
            except TimeoutError:
                raise SystemExit(f"no answer from {host} to echo {seq}") from None
            ihl = (data[0] & 15) * 4
            kind, _, _, rid, rseq = struct.unpack_from("!BBHHH", data, ihl)
            if src == host and kind == 0 and rid == ident and rseq == seq:
                break
    print(f"{count} packets received")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "serve":
        serve(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "fetch":
        fetch(sys.argv[2], int(sys.argv[3]))
    elif cmd == "ping":
        ping(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 3)
    elif cmd == "sink":
        sink(int(sys.argv[2]))
    else:
        raise SystemExit(__doc__)
