"""What hostile stream peers cost a ``vmlan run``: idle peers, a flood toward stuck peers, a flood that
competes with another guest for the user-mode stack.

Run from the repository root (the vmlan measured is the one on PYTHONPATH):

    python -m benchmarks.hostile_peers [--idle 1350] [--stuck 100] [--flood-mb 16] [--probes 10]

1. **idle**: N peers connect to one listening stream netdev and send nothing; vmlan's resident memory
   (VmRSS) before and after.
2. **stuck**: N peers that never read, and one that sends ``--flood-mb`` MB of 1500-byte broadcast
   frames; once vmlan is idle again, its RSS and the kernel memory held in its sockets' send queues
   (``ss -x -m``: the sum of wmem_alloc) and the send buffer sizes they may grow to.
3. **fairness**: ``-netdev user`` behind a learning switch; peer A floods pings to 10.0.2.2 (answered
   by the user stack, ~10 us of work each), peer B sends ARP requests for 10.0.2.2 and times the
   replies.

Every process is stopped on exit. Memory figures are per run and noisy by a few MB.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.procs import BenchError, Procs

HDR = struct.Struct(">I")
BCAST = b"\xff" * 6
MAC_A, MAC_B = bytes.fromhex("525400000a01"), bytes.fromhex("525400000a02")
IP_A, IP_B, GATEWAY = (socket.inet_aton(ip) for ip in ("10.0.2.15", "10.0.2.16", "10.0.2.2"))


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def arp_request(mac: bytes, ip: bytes, target: bytes) -> bytes:
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip, b"\0" * 6, target)
    return BCAST + mac + b"\x08\x06" + body + b"\0" * 18


def ping(mac: bytes, dst_mac: bytes, ip: bytes, dst: bytes, seq: int) -> bytes:
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x77, seq & 0xFFFF) + b"p" * 18
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0, ip, dst)
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return dst_mac + mac + b"\x08\x00" + hdr + icmp


def framed(frame: bytes) -> bytes:
    return HDR.pack(len(frame)) + frame


def recv_frame(sock: socket.socket) -> bytes:
    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise BenchError("vmlan closed the connection")
            data += chunk
        return data

    return exact(HDR.unpack(exact(4))[0])


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for {pid}")


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_idle(pid: int, quiet: float = 0.5, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    last = cpu_ticks(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = cpu_ticks(pid)
        if now == last:
            return
        last = now
    raise BenchError("vmlan never went idle")


def send_queues(pid: int) -> tuple[int, int, int]:
    """(sockets, bytes queued to send, send buffer sizes) over vmlan's unix sockets (``ss -x -m -p``)."""
    out = subprocess.run(["ss", "-x", "-m", "-p", "-n"], capture_output=True, text=True, check=True).stdout
    count = queued = limit = 0
    block = ""
    for line in [*out.splitlines(), "u_str END"]:
        if line.startswith(("u_str", "u_dgr", "u_seq")):
            if f"pid={pid}," in block:
                m = re.search(r"skmem:\(r\d+,rb\d+,t(\d+),tb(\d+)", block)
                if m:
                    count += 1
                    queued += int(m.group(1))
                    limit += int(m.group(2))
            block = line
        else:
            block += line
    return count, queued, limit


class Vmlan:
    def __init__(self, procs: Procs, tmp: Path, netdevs: list[str], log_name: str) -> None:
        self.log = open(tmp / log_name, "wb")  # noqa: SIM115 - closed in stop()
        argv = [sys.executable, "-m", "vmlan", "run", "-q"]
        for nd in netdevs:
            argv += ["-netdev", nd] if not nd.startswith("-") else nd.split(" ", 1)
        self.procs = procs
        self.proc = procs.spawn(argv, stdout=subprocess.DEVNULL, stderr=self.log)

    def wait_path(self, path: Path) -> None:
        deadline = time.monotonic() + 20
        while not path.exists():
            if self.proc.poll() is not None:
                raise BenchError(f"vmlan exited with {self.proc.returncode} (log: {self.log.name})")
            if time.monotonic() > deadline:
                raise BenchError(f"{path} never appeared")
            time.sleep(0.01)

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        self.procs.stop(self.proc)
        self.log.close()


def listener(path: Path, peers: int) -> str:
    """The listening netdev; max-peers= where this vmlan knows it (older ones accept any number)."""
    probe = subprocess.run([sys.executable, "-c", "import vmlan.config.netdev as n; n.MAX_PEERS_DEFAULT"],
                           capture_output=True)
    extra = f",max-peers={peers + 10}" if probe.returncode == 0 else ""
    return f"stream,id=s,server=on,addr.type=unix,addr.path={path}{extra}"


def connect(path: Path, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        out.append(s)
    return out


def wait_fds(vm: Vmlan, at_least: int) -> None:
    deadline = time.monotonic() + 60
    while vm.fds() < at_least:
        if time.monotonic() > deadline:
            raise BenchError(f"vmlan has {vm.fds()} fds, expected {at_least}")
        time.sleep(0.05)


def idle(procs: Procs, tmp: Path, n: int) -> None:
    path = tmp / "idle.sock"
    vm = Vmlan(procs, tmp, [listener(path, n)], "idle.log")
    try:
        vm.wait_path(path)
        wait_idle(vm.proc.pid, 0.3)
        base_fds, before = vm.fds(), rss(vm.proc.pid)
        peers = connect(path, n)
        wait_fds(vm, base_fds + n)
        wait_idle(vm.proc.pid, 0.3)
        after = rss(vm.proc.pid)
        print(f"idle: {n} peers: vmlan RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB "
              f"({(after - before) / n / 1024:.1f} KiB per peer)")
        for s in peers:
            s.close()
    finally:
        vm.stop()


def stuck(procs: Procs, tmp: Path, n: int, flood_mb: int) -> None:
    path = tmp / "stuck.sock"
    vm = Vmlan(procs, tmp, [listener(path, n)], "stuck.log")
    try:
        vm.wait_path(path)
        base_fds = vm.fds()
        peers = connect(path, n + 1)
        wait_fds(vm, base_fds + n + 1)
        wait_idle(vm.proc.pid, 0.3)
        before = rss(vm.proc.pid)
        frame = BCAST + MAC_A + b"\x88\xb5" + b"f" * (1500 - 14)
        blob = framed(frame) * 256
        sent = 0
        while sent < flood_mb * 2**20:
            peers[0].sendall(blob)
            sent += len(blob)
        wait_idle(vm.proc.pid)
        after = rss(vm.proc.pid)
        count, queued, limit = send_queues(vm.proc.pid)
        print(f"stuck: {n} peers that never read, {sent / 2**20:.0f} MiB flooded: vmlan RSS "
              f"{before / 2**20:.1f} -> {after / 2**20:.1f} MiB; kernel send queues {queued / 2**20:.1f} MiB "
              f"over {count} sockets (send buffers may hold {limit / 2**20:.1f} MiB)")
        for s in peers:
            s.close()
    finally:
        vm.stop()


def fairness(procs: Procs, tmp: Path, probes: int) -> None:
    path = tmp / "fair.sock"
    vm = Vmlan(procs, tmp, ["user,id=u", f"stream,id=s,server=on,addr.type=unix,addr.path={path}",
                            "-hub id=0,mode=switch"], "fair.log")
    try:
        vm.wait_path(path)
        a, b = connect(path, 2)
        a.settimeout(5)
        b.settimeout(5)
        a.sendall(framed(arp_request(MAC_A, IP_A, GATEWAY)))
        reply = recv_frame(a)
        gw_mac = reply[6:12]
        flood = b"".join(framed(ping(MAC_A, gw_mac, IP_A, GATEWAY, i)) for i in range(4096))
        stop = threading.Event()

        def flooder() -> None:
            try:
                while not stop.is_set():
                    a.sendall(flood)
            except OSError:
                pass

        thread = threading.Thread(target=flooder, daemon=True)
        thread.start()
        time.sleep(1.0)  # let the flood fill every buffer on the way
        delays = []
        for _ in range(probes):
            t0 = time.perf_counter()
            b.sendall(framed(arp_request(MAC_B, IP_B, GATEWAY)))
            while True:
                try:
                    got = recv_frame(b)
                except TimeoutError:
                    delays.append(float("inf"))
                    break
                if got[12:14] == b"\x08\x06" and got[20:22] == b"\x00\x02":
                    delays.append(time.perf_counter() - t0)
                    break
            time.sleep(0.05)
        stop.set()
        a.shutdown(socket.SHUT_RDWR)
        thread.join(5)
        ms = sorted(d * 1000 for d in delays)
        print(f"fairness: ARP round trip to the user stack while another peer floods it with pings: "
              f"median {statistics.median(ms):.1f} ms, max {ms[-1]:.1f} ms over {len(ms)} probes")
    finally:
        vm.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=1350, help="idle peers (default 1350)")
    parser.add_argument("--stuck", type=int, default=100, help="peers that never read (default 100)")
    parser.add_argument("--flood-mb", type=int, default=16, help="MiB flooded toward them (default 16)")
    parser.add_argument("--probes", type=int, default=10, help="ARP probes in the fairness run (default 10)")
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    procs = Procs()
    try:
        with tempfile.TemporaryDirectory(prefix="vmlan-hostile-") as tmp:
            if args.idle:
                idle(procs, Path(tmp), args.idle)
            if args.stuck:
                stuck(procs, Path(tmp), args.stuck, args.flood_mb)
            if args.probes:
                fairness(procs, Path(tmp), args.probes)
    except BenchError as exc:
        print(f"hostile_peers: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
