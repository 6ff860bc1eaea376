"""vmlan's user-mode stack against QEMU's own -netdev user (libslirp), through the same real guest.

One QEMU/TCG guest (the test image, tools/build_guest.py) downloads and uploads a file through the
gateway address 10.0.2.2 to an HTTP server on this host's loopback, first on QEMU's -netdev user, then
attached by a unix stream socket to `vmlan run -netdev user`. Prints MB/s for each and the ratio.
Under TCG the guest itself is the bottleneck more often than either stack: read the figures as "does
vmlan keep up with slirp on the same guest", not as a stack's ceiling (benchmarks/tcp_engine.py
measures the TCP engine alone).

Run: python -m benchmarks.usernet_guest [--mb 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from guest import build_guest
from guest.harness import Guest
from servers import HttpServer

UDHCPC = "timeout 30 udhcpc -i eth0 -f -q -n -t 4 -T 2"


def measure(guest: Guest, http: HttpServer, size: int, rounds: int) -> tuple[float, float]:
    """Median MB/s of (download, upload) over ``rounds`` transfers of ``size`` bytes."""
    guest.check(UDHCPC, timeout=60)
    guest.check(f"dd if=/dev/urandom of=/tmp/up bs=1048576 count={size // 1048576} 2>/dev/null")
    down, up = [], []
    for i in range(rounds):
        start = time.monotonic()
        guest.check(f"timeout 600 wget -q -O /dev/null http://10.0.2.2:{http.port}/blob/{size}/{i}", timeout=620)
        down.append(size / (time.monotonic() - start) / 1e6)
        start = time.monotonic()
        guest.check(f"(printf 'PUT /up{i} HTTP/1.0\\r\\n\\r\\n'; cat /tmp/up) | timeout 600 nc 10.0.2.2 {http.port}"
                    " >/dev/null", timeout=620)
        http.wait_upload(f"/up{i}")
        up.append(size / (time.monotonic() - start) / 1e6)
    return statistics.median(down), statistics.median(up)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50, help="transfer size in MiB (default 50)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.mb * 1048576
    image = build_guest()
    results: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="vmlan-bench-") as tmp, HttpServer() as http:
        work = Path(tmp)
        with Guest("slirp", ["user"], "52:54:00:12:34:56", work, image) as guest:
            guest.wait_ready()
            results["QEMU -netdev user (libslirp)"] = measure(guest, http, size, args.rounds)
        sock = work / "vm.sock"
        vmlan = subprocess.Popen(
            [sys.executable, "-m", "vmlan", "run", "-q", "-netdev", "user,id=u0,dns-server=127.0.0.1:53",
             "-netdev", f"stream,id=vm,server=on,addr.type=unix,addr.path={sock}"],
        )
        try:
            deadline = time.monotonic() + 20
            while not sock.exists():
                if time.monotonic() > deadline or vmlan.poll() is not None:
                    raise SystemExit("vmlan did not start")
                time.sleep(0.05)
            netdev = ["stream", "server=off", "addr.type=unix", f"addr.path={sock}"]
            with Guest("vmlan", netdev, "52:54:00:12:34:56", work, image) as guest:
                guest.wait_ready()
                results["vmlan -netdev user"] = measure(guest, http, size, args.rounds)
        finally:
            vmlan.send_signal(signal.SIGTERM)
            vmlan.wait(10)
    print(f"\n{args.mb} MiB through 10.0.2.2 to a loopback HTTP server, one TCG guest, median of {args.rounds}")
    print(f"{'stack':<32} {'download, host->guest':>22} {'upload, guest->host':>20}")
    for name, (down, up) in results.items():
        print(f"{name:<32} {down:>17.1f} MB/s {up:>15.1f} MB/s")
    (sd, su), (vd, vu) = results.values()
    print(f"{'ratio vmlan/slirp':<32} {vd / sd:>21.2f}x {vu / su:>19.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
