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

``--stacks``: instead, through the user stacks, vmlan's against QEMU's own, side by side. One TCG guest
(the test image, tools/build_guest.py) fetches a 100 MB file from 10.0.2.2 with busybox's tftp client
(``tftp -g -b BLKSIZE``: RFC 2348 blksize, no windowsize, so one block per round trip), writing to
/dev/null, first on ``-netdev user,tftp=DIR`` (libslirp), then attached by a unix stream socket to
``vmlan run -netdev user,tftp=DIR``, then (``65464`` only) to vmlan with ``mtu=65520`` so that a block
is one frame instead of 45 fragments. MB/s is the median of ``--rounds`` fetches timed from the host
(the console's own round trip, measured with ``true``, is subtracted); one more fetch per stack, into
``sha256sum``, checks the bytes. ``granted`` is the blksize the server answers: libslirp caps it at
1428 (TFTP_BLOCKSIZE_MAX in its tftp.h), vmlan grants up to 65464. ``vmlan CPU`` is the vmlan
process's CPU seconds per wall second during the timed fetches. Under TCG the guest's own per-packet
cost is large: read the figures as what a guest gets from each stack, not as a server's ceiling.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.guest import GuestImage, build_guest
from tests.guest.harness import Guest
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


# -- through the stacks, from a guest --------------------------------------------------------------------------
STACK_BLKSIZES = (1468, 65464)
LIBSLIRP_MAX_BLKSIZE = 1428
GUEST_MAC = "52:54:00:12:34:56"
UDHCPC = "timeout 60 udhcpc -i eth0 -f -q -n -t 6 -T 3 -O mtu"


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure_guest(guest: Guest, size: int, blksizes: tuple[int, ...], rounds: int, digest: str,
                   vmlan_pid: int | None) -> dict[int, tuple[float, float | None]]:
    """blksize -> (median MB/s, vmlan CPU share or None) for one booted guest."""
    guest.check(UDHCPC, timeout=90)
    out = guest.check(f"timeout 900 tftp -g -r file -l - -b {blksizes[0]} 10.0.2.2 | sha256sum",
                      timeout=960)
    if out.split()[0] != digest:
        raise SystemExit(f"benchmarks.tftp: {guest.name}: the file arrived damaged ({out.strip()})")
    overhead = []
    for _ in range(5):
        start = time.monotonic()
        guest.check("true")
        overhead.append(time.monotonic() - start)
    console = min(overhead)
    results: dict[int, tuple[float, float | None]] = {}
    for blksize in blksizes:
        rates, cpu_share = [], []
        for _ in range(rounds):
            cpu0 = _cpu_seconds(vmlan_pid) if vmlan_pid else 0.0
            start = time.monotonic()
            guest.check(f"timeout 900 tftp -g -r file -l /dev/null -b {blksize} 10.0.2.2", timeout=960)
            elapsed = max(time.monotonic() - start - console, 1e-6)
            rates.append(size / MB / elapsed)
            if vmlan_pid:
                cpu_share.append((_cpu_seconds(vmlan_pid) - cpu0) / elapsed)
        results[blksize] = (statistics.median(rates), statistics.median(cpu_share) if cpu_share else None)
        print(f"  {guest.name}: blksize {blksize}: " + ", ".join(f"{r:.1f}" for r in rates) + " MB/s", flush=True)
    return results


def _vmlan_guest(work: Path, root: Path, user_opts: str, name: str, image: GuestImage, size: int,
                 blksizes: tuple[int, ...], rounds: int, digest: str) -> dict[int, tuple[float, float | None]]:
    sock = work / f"{name}.sock"
    vmlan = subprocess.Popen(
        [sys.executable, "-m", "vmlan", "run", "-q", "-netdev", f"user,id=u0,tftp={root}{user_opts}",
         "-netdev", f"stream,id=vm,server=on,addr.type=unix,addr.path={sock}"],
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if time.monotonic() > deadline or vmlan.poll() is not None:
                raise SystemExit("benchmarks.tftp: vmlan did not start")
            time.sleep(0.05)
        netdev = ["stream", "server=off", "addr.type=unix", f"addr.path={sock}"]
        with Guest(name, netdev, GUEST_MAC, work, image) as guest:
            guest.wait_ready(300)
            return _measure_guest(guest, size, blksizes, rounds, digest, vmlan.pid)
    finally:
        vmlan.send_signal(signal.SIGTERM)
        vmlan.wait(15)


def stacks_main(size: int, rounds: int) -> int:
    image = build_guest()
    shm = Path("/dev/shm")
    rows: list[tuple[str, int, int, float, float | None]] = []  # stack, asked, granted, MB/s, vmlan CPU
    with tempfile.TemporaryDirectory(prefix="vmlan-tftp-", dir=shm if shm.is_dir() else None) as tmp:
        work = Path(tmp)
        root = work / "tftp"
        root.mkdir()
        digest = hashlib.sha256()
        with (root / "file").open("wb") as f:
            for _ in range(size // MB):
                block = os.urandom(MB)
                digest.update(block)
                f.write(block)
        sha = digest.hexdigest()
        print(f"TFTP read of a {size // MB} MB file by busybox tftp in a TCG guest, median of {rounds}", flush=True)
        with Guest("slirp", ["user", f"tftp={root}"], GUEST_MAC, work, image) as guest:
            guest.wait_ready(300)
            slirp = _measure_guest(guest, size, STACK_BLKSIZES, rounds, sha, None)
        vm = _vmlan_guest(work, root, "", "vmlan", image, size, STACK_BLKSIZES, rounds, sha)
        jumbo = _vmlan_guest(work, root, ",mtu=65520", "vmlan-jumbo", image, size, (65464,), rounds, sha)
    for blksize in STACK_BLKSIZES:
        rows.append(("QEMU -netdev user (libslirp)", blksize, min(blksize, LIBSLIRP_MAX_BLKSIZE), slirp[blksize][0],
                     None))
        rate, cpu = vm[blksize]
        rows.append(("vmlan -netdev user", blksize, blksize, rate, cpu))
    rate, cpu = jumbo[65464]
    rows.append(("vmlan -netdev user,mtu=65520", 65464, 65464, rate, cpu))
    print(f"\n{'stack':<30} {'blksize':>7} {'granted':>7} {'MB/s':>7} {'vs QEMU':>8} {'vmlan CPU':>10}")
    for stack, asked, granted, rate, cpu in rows:
        ratio = rate / slirp[asked][0]
        print(f"{stack:<30} {asked:>7} {granted:>7} {rate:>7.1f} {ratio:>7.2f}x "
              f"{'' if cpu is None else f'{cpu:.2f}':>10}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 MB, one run per case")
    parser.add_argument("--size-mb", type=int, default=None, help="file size in MB (default 100, --quick 20)")
    parser.add_argument("--stacks", action="store_true",
                        help="a guest's fetch through vmlan's user stack vs QEMU's own, instead of the engine alone")
    parser.add_argument("--rounds", type=int, default=None, help="timed fetches per case (default 3, --quick 1)")
    args = parser.parse_args(argv)
    size = (args.size_mb or (20 if args.quick else 100)) * MB
    runs = args.rounds or (1 if args.quick else 3)
    if args.stacks:
        return stacks_main(size, runs)
    if shutil.which("atftp") is None:
        print("benchmarks.tftp: atftp not found (apt-get install atftp)", file=sys.stderr)
        return 2
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
