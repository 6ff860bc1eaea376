"""iperf3 across a VXLAN: the kernel's vxlan on both ends, then the kernel's on one end and vmlan's on the other.

    python -m benchmarks.vxlan [--time 5] [--parallel 1] [--json FILE]

Run as root from the repository root. Each row is a fresh set of namespaces, MTU 1500 underlay (veth)::

    kernel:  K vx0 192.168.77.1 --veth-- vx0 192.168.77.2 in H                          (vxlan to vxlan)
    vmlan:   K vx0 192.168.77.1 --veth-- vmlan run -netdev vxlan -netdev tap in H -- TAP 192.168.77.2 in B

iperf3 -c runs in K against iperf3 -s on 192.168.77.2, forward (K sends) and reverse (-R). Printed: Gb/s
received, vmlan's over the kernel's, and vmlan's CPU in shares of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.tap import cpu_seconds, sh

KERNEL_INNER, PEER_INNER = "192.168.77.1", "192.168.77.2"


def iperf(client_ns: str, server_ns: str, seconds: int, parallel: int, reverse: bool) -> float:
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if "5201" in sh(f"ip netns exec {server_ns} ss -ltn"):
                break
            time.sleep(0.05)
        argv = ["ip", "netns", "exec", client_ns, "iperf3", "-c", PEER_INNER, "-t", str(seconds), "-P", str(parallel),
                "-J", *(["-R"] if reverse else [])]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        if out.returncode:
            raise SystemExit(f"iperf3 failed: {out.stdout[-500:]} {out.stderr[-500:]}")
        return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        server.kill()
        server.wait()


def run_case(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    k, h, b = f"vmlx-k-{tag}", f"vmlx-h-{tag}", f"vmlx-b-{tag}"
    names = [k, h] + ([b] if kind == "vmlan" else [])
    for ns in names:
        sh(f"ip netns add {ns} && ip -n {ns} link set lo up")
    proc: subprocess.Popen[str] | None = None
    try:
        sh(f"ip -n {k} link add ua type veth peer name uh netns {h}")
        sh(f"ip -n {k} addr add 10.99.0.1/24 dev ua && ip -n {k} link set ua up")
        sh(f"ip -n {h} addr add 10.99.0.2/24 dev uh && ip -n {h} link set uh up")
        sh(f"ip -n {k} link add vx0 type vxlan id 42 remote 10.99.0.2 local 10.99.0.1 dev ua dstport 4789")
        sh(f"ip -n {k} addr add {KERNEL_INNER}/24 dev vx0 && ip -n {k} link set vx0 up")
        server_ns = h
        if kind == "kernel":
            sh(f"ip -n {h} link add vx0 type vxlan id 42 remote 10.99.0.1 local 10.99.0.2 dev uh dstport 4789")
            sh(f"ip -n {h} addr add {PEER_INNER}/24 dev vx0 && ip -n {h} link set vx0 up")
        else:
            server_ns = b
            tmp = Path(tempfile.mkdtemp(prefix="vmlan-bench-vxlan-"))
            up = tmp / "up"
            up.write_text(f'#!/bin/sh\nip link set "$1" netns {b} && ip -n {b} link set "$1" mtu 1450 && '
                          f'ip -n {b} addr add {PEER_INNER}/24 dev "$1" && ip -n {b} link set "$1" up\n')
            up.chmod(0o755)
            argv = [sys.executable, "-m", "vmlan", "run", "-q",
                    "-netdev", "vxlan,id=vx,vni=42,remote=10.99.0.1,local=10.99.0.2",
                    "-netdev", f"tap,id=t0,script={up},downscript=no"]
            proc = subprocess.Popen(["ip", "netns", "exec", h, *argv], text=True)
            deadline = time.monotonic() + 20
            while PEER_INNER not in sh(f"ip -n {b} -o addr show"):
                if time.monotonic() > deadline:
                    raise SystemExit("the TAP never came up")
                time.sleep(0.05)
        row: dict[str, Any] = {"case": kind}
        for direction, reverse in (("forward", False), ("reverse", True)):
            cpu0, t0 = (cpu_seconds(proc.pid) if proc else 0.0), time.monotonic()
            row[direction] = iperf(k, server_ns, args.time, args.parallel, reverse)
            if proc is not None:
                row[f"{direction}_cpu"] = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        return row
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--time", type=int, default=5, help="seconds per iperf3 run")
    parser.add_argument("--parallel", type=int, default=1, help="iperf3 -P streams")
    parser.add_argument("--json", help="save the rows here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespaces)")
    kernel, vmlan = run_case("kernel", args), run_case("vmlan", args)
    print(f"{'direction':<28} {'kernel Gb/s':>11} {'vmlan Gb/s':>10} {'ratio':>6} {'vmlan CPU':>9}")
    for direction, what in (("forward", "kernel vxlan -> peer"), ("reverse", "peer -> kernel vxlan")):
        ratio = vmlan[direction] / kernel[direction] if kernel[direction] else 0.0
        print(f"{what:<28} {kernel[direction]:>11.2f} {vmlan[direction]:>10.2f} {ratio:>6.3f}"
              f" {vmlan[direction + '_cpu']:>9.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps([kernel, vmlan], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
