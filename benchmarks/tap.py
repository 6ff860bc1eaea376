"""iperf3 between two network namespaces through vmlan's TAP links, and through a kernel veth pair.

    python -m benchmarks.tap [--time 10] [--parallel 1] [--reverse] [--via-run] [--json FILE]

Run as root from the repository root. Three rows, each a fresh set of namespaces::

    veth:               A --veth-- B                                        (the kernel's ceiling)
    vmlan tap vnet:     A --tap-- vmlan hub (in namespace H) --tap-- B      (vnet headers, CSUM/TSO4/TSO6)
    vmlan tap plain:    A --tap-- vmlan hub --tap-- B                       (vnet_hdr=off: 1514-byte frames)

iperf3 -c runs in A against iperf3 -s in B (MTU 1500 everywhere). vmlan runs as its own process in H:
by default a small server built from vmlan's parts (a hub and two :class:`~vmlan.io.tap.TapLink`, whose
up scripts move each TAP into A or B), or with ``--via-run`` ``vmlan run -netdev tap,... -netdev tap,...``
itself (once the runtime knows ``-netdev tap``). Reported: Gb/s received, the frames vmlan moved per
second (both ports' rx, counted by vmlan), their mean size, and vmlan's CPU in shares of one core.
``python -m benchmarks.tap serve A B [--vnet-hdr off]`` is that server alone (it prints its counters as
one JSON line when SIGTERM stops it).
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

ADDR_A, ADDR_B = "10.90.0.1", "10.90.0.2"


def sh(cmd: str) -> str:
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60)
    if proc.returncode:
        raise SystemExit(f"`{cmd}` failed: {proc.stderr.strip()}")
    return proc.stdout


def up_script(tmp: Path, name: str, netns: str, addr: str) -> str:
    path = tmp / f"up-{name}"
    path.write_text(f'#!/bin/sh\nip link set "$1" netns {netns} && ip -n {netns} addr add {addr}/24 dev "$1" '
                    f'&& ip -n {netns} link set "$1" up\n')
    path.chmod(0o755)
    return str(path)


def serve(ns_a: str, ns_b: str, vnet: str) -> int:
    """The hub with two TAPs into ``ns_a`` and ``ns_b``; what ``vmlan run`` with two -netdev tap runs."""
    from vmlan.config.qemuopts import parse_qemuopts
    from vmlan.config.tap import parse_tap_netdev
    from vmlan.io.loop import new_event_loop
    from vmlan.io.tap import TapLink
    from vmlan.lan import Hub

    tmp = Path(tempfile.mkdtemp(prefix="vmlan-bench-tap-"))
    loop = new_event_loop()
    hub = Hub(0)
    opt = "" if vnet == "auto" else f",vnet_hdr={vnet}"
    links = []
    for name, ns, addr in (("a", ns_a, ADDR_A), ("b", ns_b, ADDR_B)):
        cfg = parse_tap_netdev(parse_qemuopts(f"tap,id={name},script={up_script(tmp, name, ns, addr)},downscript=no"
                                              f"{opt}"))
        link = TapLink(cfg, hub, loop)
        link.start()
        links.append(link)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    print("ready", flush=True)
    loop.run_forever()
    counters = {link.cfg.id: {**link.port.counters.as_dict(), "rx_gso": link.port.rx_gso, "tx_gso": link.port.tx_gso}
                for link in links if link.port is not None}
    for link in links:
        link.close()
    print(json.dumps(counters), flush=True)
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def iperf(ns_a: str, ns_b: str, seconds: int, parallel: int, reverse: bool) -> float:
    server = subprocess.Popen(["ip", "netns", "exec", ns_b, "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if "5201" in sh(f"ip netns exec {ns_b} ss -ltn"):
                break
            time.sleep(0.05)
        argv = ["ip", "netns", "exec", ns_a, "iperf3", "-c", ADDR_B, "-t", str(seconds), "-P", str(parallel), "-J"]
        out = subprocess.run([*argv, *(["-R"] if reverse else [])], capture_output=True, text=True,
                             timeout=seconds + 60)
        if out.returncode:
            raise SystemExit(f"iperf3 failed: {out.stdout[-500:]} {out.stderr[-500:]}")
        return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        server.kill()
        server.wait()


def run_case(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    ns_a, ns_b, ns_h = f"vmlb-a-{tag}", f"vmlb-b-{tag}", f"vmlb-h-{tag}"
    names = [ns_a, ns_b] + ([ns_h] if kind != "veth" else [])
    for ns in names:
        sh(f"ip netns add {ns} && ip -n {ns} link set lo up")
    proc: subprocess.Popen[str] | None = None
    try:
        if kind == "veth":
            sh(f"ip link add va{tag} netns {ns_a} type veth peer name vb{tag} netns {ns_b}")
            sh(f"ip -n {ns_a} addr add {ADDR_A}/24 dev va{tag} && ip -n {ns_a} link set va{tag} up")
            sh(f"ip -n {ns_b} addr add {ADDR_B}/24 dev vb{tag} && ip -n {ns_b} link set vb{tag} up")
        else:
            vnet = "auto" if kind == "vnet" else "off"
            if args.via_run:
                tmp = Path(tempfile.mkdtemp(prefix="vmlan-bench-tap-"))
                opt = "" if vnet == "auto" else ",vnet_hdr=off"
                argv = [sys.executable, "-m", "vmlan", "run", "-q",
                        "-netdev", f"tap,id=a,script={up_script(tmp, 'a', ns_a, ADDR_A)},downscript=no{opt}",
                        "-netdev", f"tap,id=b,script={up_script(tmp, 'b', ns_b, ADDR_B)},downscript=no{opt}"]
            else:
                argv = [sys.executable, "-m", "benchmarks.tap", "serve", ns_a, ns_b, "--vnet-hdr", vnet]
            proc = subprocess.Popen(["ip", "netns", "exec", ns_h, *argv], stdout=subprocess.PIPE, text=True)
            if not args.via_run:
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    raise SystemExit("the vmlan server did not start")
            deadline = time.monotonic() + 20
            while "10.90.0.1" not in sh(f"ip -n {ns_a} -o addr show") or "10.90.0.2" not in sh(
                    f"ip -n {ns_b} -o addr show"):
                if time.monotonic() > deadline:
                    raise SystemExit("the TAPs never came up")
                time.sleep(0.05)
        cpu0, t0 = (cpu_seconds(proc.pid) if proc and not args.via_run else 0.0), time.monotonic()
        gbps = iperf(ns_a, ns_b, args.time, args.parallel, args.reverse)
        elapsed = time.monotonic() - t0
        row: dict[str, Any] = {"case": kind, "gbps": gbps}
        if proc is not None:
            if not args.via_run:
                row["cpu"] = (cpu_seconds(proc.pid) - cpu0) / elapsed
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
            if not args.via_run and out.strip():
                counters = json.loads(out.strip().splitlines()[-1])
                frames = sum(c["rx_frames"] for c in counters.values())
                data = sum(c["rx_bytes"] for c in counters.values())
                row.update(frames_per_s=frames / elapsed, mean_frame=data / max(frames, 1), counters=counters)
            proc = None
        return row
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        p = argparse.ArgumentParser(prog="benchmarks.tap serve")
        p.add_argument("serve")
        p.add_argument("ns_a")
        p.add_argument("ns_b")
        p.add_argument("--vnet-hdr", choices=("auto", "on", "off"), default="auto")
        a = p.parse_args()
        return serve(a.ns_a, a.ns_b, a.vnet_hdr)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", type=int, default=10, help="seconds per iperf3 run")
    parser.add_argument("--parallel", type=int, default=1, help="iperf3 -P streams")
    parser.add_argument("--reverse", action="store_true", help="iperf3 -R (B sends to A)")
    parser.add_argument("--via-run", action="store_true", help="run `vmlan run` instead of the built-in server")
    parser.add_argument("--only", choices=("veth", "vnet", "plain"), action="append")
    parser.add_argument("--json", help="save the rows here")
    args = parser.parse_args()
    rows = [run_case(kind, args) for kind in (args.only or ["veth", "vnet", "plain"])]
    print(f"{'case':<18} {'Gb/s':>7} {'frames/s':>10} {'mean frame':>11} {'vmlan CPU':>10}")
    label = {"veth": "veth (kernel)", "vnet": "vmlan tap vnet", "plain": "vmlan tap plain"}
    for row in rows:
        fps = f"{row['frames_per_s']:,.0f}" if "frames_per_s" in row else "-"
        mean = f"{row['mean_frame']:,.0f} B" if "mean_frame" in row else "-"
        cpu = f"{row['cpu']:.2f}" if "cpu" in row else "-"
        print(f"{label[row['case']]:<18} {row['gbps']:>7.2f} {fps:>10} {mean:>11} {cpu:>10}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
