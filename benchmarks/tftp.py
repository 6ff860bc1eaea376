"""TFTP read throughput of vmlan's engine: a 100 MB file fetched by atftp over loopback, MB/s.

Run with ``python -m benchmarks.tftp`` from the repository root (``--quick``: 20 MB, one run each).
The server is :class:`vmlan.engines.tftp.TftpServer` with :class:`vmlan.io.tftp_files.DirectoryFiles`
behind the thin real-socket adapter of the client tests (``tests/io/test_tftp_clients.py``: one socket
per transfer, a selector loop on a thread of this process); the client is Debian's atftp 0.8 in its
own process, writing to /dev/null.  Per case: blksize 1468 (the largest block that fits a 1500-byte
MTU) and 65464 (RFC 2348's largest), windowsize 1 (lockstep, RFC 1350) and 8 (RFC 7440; the engine's
128 KiB window cap makes it 2 at 65464).  Best of 3 runs.  ``server CPU`` is the adapter thread's
CPU time per wall second (1.0 = one core); the client's is not counted.

Then the engine alone (no sockets, the file in memory): DATA packets per second with the ACK for each
fed straight back, the per-packet cost every adapter pays on top of its sockets.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.io.test_tftp_clients import UdpTftpServer

from vmlan.engines.tftp import TftpServer
from vmlan.io.tftp_files import DirectoryFiles
from vmlan.wire.tftp import TFTP_PORT, TftpRequest, encode_ack

MB = 1024 * 1024
CASES = [(1468, 1), (1468, 8), (65464, 1), (65464, 8)]


class _Timed(UdpTftpServer):
    """The adapter, also measuring its own thread's CPU time."""

    cpu = 0.0

    def _run(self) -> None:
        start = time.thread_time()
        try:
            super()._run()
        finally:
            self.cpu = time.thread_time() - start


def fetch(root: Path, size: int, blksize: int, windowsize: int) -> tuple[float, float, int]:
    """(seconds, server CPU seconds, retransmissions) for one atftp fetch of ``root/file``."""
    files = DirectoryFiles(root)
    server = _Timed(TftpServer(files))
    with server:
        cmd = ["atftp", "--option", f"blksize {blksize}", "--option", "tsize"]
        if windowsize > 1:
            cmd += ["--option", f"windowsize {windowsize}"]
        cmd += ["--get", "-r", "file", "-l", "/dev/null", "127.0.0.1", str(server.port)]
        start = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"atftp failed: {result.stdout}{result.stderr}")
        deadline = time.monotonic() + 10
        while server.engine.active() and time.monotonic() < deadline:
            time.sleep(0.005)
        stats = server.engine.stats
        if stats.completed != 1 or stats.data_bytes < size:
            raise SystemExit(f"transfer incomplete: {stats}")
    files.close()
    return elapsed, server.cpu, stats.retransmits


class _MemoryFile:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, offset: int, n: int) -> bytes:
        return self.data[offset : offset + n]

    def close(self) -> None:
        pass


class _MemoryFiles:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def open(self, name: str) -> _MemoryFile:
        return _MemoryFile(self.data)


def engine_rate(data: bytes, blksize: int) -> float:
    """DATA packets per second through the engine alone, lockstep, ACK fed back at once."""
    best = float("inf")
    for _ in range(3):
        server = TftpServer(_MemoryFiles(data))
        client = ("10.0.2.15", 1024)
        req = TftpRequest(1, b"file", b"octet", ((b"blksize", str(blksize).encode()),)).to_bytes()
        out = server.receive(client, TFTP_PORT, req, 0.0)
        port = out[0][1]
        start = time.perf_counter()
        out = server.receive(client, port, encode_ack(0), 0.0)
        block = 1
        packets = 0
        while out:
            packets += len(out)
            out = server.receive(client, port, encode_ack(block & 0xFFFF), 0.0)
            block += 1
        best = min(best, time.perf_counter() - start)
    return packets / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 MB, one run per case")
    parser.add_argument("--size-mb", type=int, default=None, help="file size in MB (default 100, --quick 20)")
    args = parser.parse_args(argv)
    if shutil.which("atftp") is None:
        print("benchmarks.tftp: atftp not found (apt-get install atftp)", file=sys.stderr)
        return 2
    size = (args.size_mb or (20 if args.quick else 100)) * MB
    runs = 1 if args.quick else 3
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="vmlan-tftp-", dir=shm if shm.is_dir() else None) as tmp:
        root = Path(tmp)
        with (root / "file").open("wb") as f:
            for _ in range(size // MB):
                f.write(os.urandom(MB))
        print(f"TFTP read of a {size // MB} MB file (tmpfs) by atftp over 127.0.0.1, best of {runs}")
        print(f"{'blksize':>8} {'window':>7} {'MB/s':>8} {'s':>7} {'server CPU':>11} {'retx':>5}")
        for blksize, windowsize in CASES:
            results = [fetch(root, size, blksize, windowsize) for _ in range(runs)]
            elapsed, cpu, retx = min(results)
            granted = max(1, min(windowsize, 128 * 1024 // blksize))
            print(f"{blksize:>8} {granted:>7} {size / MB / elapsed:>8.1f} {elapsed:>7.2f} {cpu / elapsed:>11.2f}"
                  f" {retx:>5}")
    data = os.urandom(16 * MB)
    print("\nengine alone (in memory, lockstep):")
    for blksize in (512, 1468, 65464):
        rate = engine_rate(data, blksize)
        print(f"  blksize {blksize:>5}: {rate:>9.0f} DATA/s  {1e6 / rate:5.1f} us/packet  "
              f"{rate * blksize / MB:7.1f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
