"""vmlan's VDE switch versus vde_switch, each with the same two vde_plug peers: frames/s and no-loss rate.

    python -m benchmarks.vde [--quick] [--sizes 64,1500] [--mode hub|switch] [--via-run] [--json FILE] [-v]

Both rows are wired identically; only the switch differs::

    vde_switch:  gen -pipe-> vde_plug -dgram-> vde_switch [-x]                -dgram-> vde_plug -pipe-> sink
    vmlan vde:   gen -pipe-> vde_plug -dgram-> vmlan -netdev vde,server=on    -dgram-> vde_plug -pipe-> sink

The trials, the generator and the sink are benchmarks/bench.py's (max-rate trials, then the paced
search for the highest rate with < 0.1 % loss). vmlan runs as its own process: by default a small
server built here from vmlan's own parts (a hub and a :class:`~vmlan.io.vde.VdeServer` on vmlan's
event loop, exactly what ``vmlan run -netdev vde,...,server=on`` runs), or with ``--via-run`` the
``vmlan run`` command itself, once it knows ``-netdev vde``. ``python -m benchmarks.vde serve DIR`` is
that server on its own (SIGUSR1 prints its ports' counters, SIGTERM stops it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from benchmarks.bench import Runner, fmt_rate, fmt_size, ratio, table
from benchmarks.bench import parse_args as bench_args
from benchmarks.procs import BenchError, Procs, wait_for_path
from benchmarks.setups import VDE_MAX_FRAME, Setup, VdeSetup, Wiring, _pipe, _VmlanSetup


class VmlanVdeSetup(_VmlanSetup):
    """vmlan's VDE switch with two vde_plug peers, wired as VdeSetup wires vde_switch."""

    max_frame = VDE_MAX_FRAME  # same sizes as the vde_switch row (vde_plug itself takes up to 9234)

    def __init__(self, procs: Procs, tmp: Path, mode: str, via_run: bool = False) -> None:
        self.name = f"vmlan vde {mode}"
        self.via_run = via_run
        super().__init__(procs, tmp, mode)

    def start(self) -> Wiring:
        sockdir = self.dir / "sw"
        if self.via_run:
            p = self._spawn([f"vde,id=sw,sock={sockdir},server=on"])
        else:
            argv = [sys.executable, "-m", "benchmarks.vde", "serve", str(sockdir), "--mode", self.mode]
            with open(self.log, "ab") as log:
                p = self.procs.spawn(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            self.switch_procs.append(p)
        wait_for_path(sockdir / "ctl", 20, p, "vmlan")
        gen_r, gen_w = _pipe()
        out_r, out_w = _pipe()
        back_r, back_w = _pipe(65536)
        try:
            with open(self.log, "ab") as log:
                plug = ["vde_plug", str(sockdir)]
                a = self.procs.spawn(plug, stdin=gen_r, stdout=subprocess.DEVNULL, stderr=log)
                self.switch_procs.append(a)
                b = self.procs.spawn(plug, stdin=back_r, stdout=out_w, stderr=log)
                self.switch_procs.append(b)
        finally:
            for fd in (gen_r, out_w, back_r):
                os.close(fd)
        return Wiring(gen_w, "stream2", out_r, "stream2", back_w, [gen_w, out_r, back_w])


def serve(sockdir: str, mode: str) -> int:
    """What ``vmlan run -netdev vde,id=sw,sock=DIR,server=on [-hub id=0,mode=switch]`` runs."""
    from vmlan.config.qemuopts import parse_qemuopts
    from vmlan.config.vde import parse_vde_netdev
    from vmlan.control.monitor import _port_lines
    from vmlan.io.loop import new_event_loop
    from vmlan.io.vde import VdeServer
    from vmlan.lan import make_lan

    loop = new_event_loop()
    hub = make_lan(0, mode)
    server = VdeServer(parse_vde_netdev(parse_qemuopts(f"vde,id=sw,sock={sockdir},server=on")), hub, loop)
    stop: asyncio.Future[None] = loop.create_future()

    def stopping() -> None:
        if not stop.done():
            stop.set_result(None)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping)
    loop.add_signal_handler(signal.SIGUSR1,
                            lambda: sys.stderr.write("\n".join(["hub 0", *_port_lines(server.ports)]) + "\n"))
    server.start()
    try:
        loop.run_until_complete(stop)
    finally:
        server.close()
        loop.close()
    return 0


def report(runner: Runner, names: list[str]) -> None:
    a = runner.args
    rows = runner.results["rows"]
    vde, ours = (rows.get(n, {}) for n in names)
    out = [["case", names[0], names[1], "ratio"]]
    for size in a.sizes:
        for metric in ("max", "no-loss"):
            cells = [f"{fmt_size(size)} {'max fwd' if metric == 'max' else 'no-loss (<0.1%)'}"]
            vals: list[float | None] = []
            for r in (vde, ours):
                c = r.get(size)
                if c is None:
                    vals.append(None)
                    cells.append("-")
                elif metric == "max":
                    vals.append(c["max"]["rx_rate"])
                    cells.append(f"{fmt_rate(c['max']['rx_rate'], size)}, loss {c['max']['loss'] * 100:.2f}%")
                else:
                    vals.append(c["no_loss"]["rate"])
                    cells.append(fmt_rate(c["no_loss"]["rate"], size) if c["no_loss"]["rate"] else "none found")
            cells.append(ratio(vals[1], vals[0]))
            out.append(cells)
    print(f"\n== two vde_plug peers through one {a.mode}: vmlan's VDE switch vs vde_switch "
          f"({'quick' if a.quick else 'full'} run) ==")
    print(table(out))
    cpu = [["CPU share at max rate (of one core)", *(fmt_size(s) for s in a.sizes)]]
    for name in names:
        by_size = rows.get(name, {})
        cpu.append([name, *("switch+plugs {switch:.0%} gen {gen:.0%} sink {sink:.0%} other {other:.0%}".format(
            **by_size[s]["max"]["cpu"]) if s in by_size else "-" for s in a.sizes)])
    print()
    print(table(cpu))


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["serve"]:
        p = argparse.ArgumentParser(prog="python -m benchmarks.vde serve")
        p.add_argument("sockdir")
        p.add_argument("--mode", choices=["hub", "switch"], default="hub")
        sa = p.parse_args(args_in[1:])
        return serve(sa.sockdir, sa.mode)
    via_run = "--via-run" in args_in
    args_in = [a for a in args_in if a != "--via-run"]
    if not any(a == "--sizes" or a.startswith("--sizes=") for a in args_in):
        args_in = [*args_in, "--sizes", "64,1500"]
    args = bench_args(args_in)
    for tool in ("vde_switch", "vde_plug"):
        if shutil.which(tool) is None:
            print(f"benchmarks.vde: {tool} not found (Debian package vde2)", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    runner = Runner(args)
    status = 0
    setups: list[Setup] = [VdeSetup(runner.procs, runner.tmp, args.mode),
                           VmlanVdeSetup(runner.procs, runner.tmp, args.mode, via_run)]
    try:
        for setup in setups:
            runner.row(setup)
        report(runner, [s.name for s in setups])
    except KeyboardInterrupt:
        print("\nbenchmarks.vde: interrupted", file=sys.stderr)
        status = 130
    except BenchError as exc:
        print(f"benchmarks.vde: {exc}", file=sys.stderr)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        runner.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": runner.results["rows"], "via_run": via_run}, f, indent=1, default=str)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
