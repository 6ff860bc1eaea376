"""vmlan's hub versus Debian's vde_switch: frames/s, loss and no-loss rate through one hub.

Run from the repository root: ``python -m benchmarks [--quick] [--only vmlan|vde] [--sizes 64,1500,65536]
[--mode hub|switch] [--json FILE] [--profile]``. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.procs import BenchError, Procs, busy_cpu_seconds, cpu_seconds, traffic_child
from benchmarks.setups import DirectSetup, Setup, VdeSetup, VmlanDgramSetup, VmlanStreamSetup

LOSS_LIMIT = 0.001  # "no loss": below 0.1 %
RATE_SLACK = 0.97  # a paced trial must actually offer (and deliver) this share of the target rate


@dataclass
class Timing:
    blast: float  # seconds per max-rate trial
    repeats: int  # max-rate trials per case (the median is reported)
    paced: float  # seconds per paced trial
    steps: int  # paced trials in the no-loss search
    quiet: float  # the sink's "no more frames coming" delay
    warmup: float
    profile: float


FULL = Timing(blast=2.0, repeats=3, paced=1.0, steps=7, quiet=0.5, warmup=0.3, profile=6.0)
QUICK = Timing(blast=0.5, repeats=1, paced=0.3, steps=4, quiet=0.25, warmup=0.15, profile=2.0)


# -- one generator + sink pair on one setup ---------------------------------------------------------------
class Rig:
    """A started setup with its generator and sink; runs trials."""

    def __init__(self, setup: Setup, procs: Procs, timing: Timing) -> None:
        self.setup = setup
        self.procs = procs
        self.timing = timing
        self.trial_id = 0
        w = setup.start()
        try:
            self.gen = traffic_child(procs, "gen", w.gen_kind, w.gen_fd)
            self.sink = traffic_child(procs, "sink", w.sink_kind, w.sink_fd, w.sink_wfd)
        finally:
            for fd in w.parent_fds:
                os.close(fd)

    def close(self) -> None:
        for child in (self.gen, self.sink):
            child.close()
        self.setup.stop()

    def hello(self) -> None:
        self.sink.call({"cmd": "hello"})
        time.sleep(0.05)

    def trial(self, size: int, duration: float, rate: float = 0.0) -> dict[str, Any]:
        """One trial: rate 0 = as fast as possible. Returns counts, rates and CPU use."""
        self.trial_id += 1
        t = self.trial_id
        self.sink.call({"cmd": "start", "trial": t, "size": size})
        pids = {"gen": self.gen.pid, "sink": self.sink.pid}
        for i, p in enumerate(self.setup.switch_procs):
            pids[f"switch{i}"] = p.pid
        cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
        busy0 = busy_cpu_seconds()
        w0 = time.perf_counter()
        g = self.gen.call(
            {"cmd": "run", "trial": t, "size": size, "duration": duration, "rate": rate},
            timeout=duration * 4 + 30,
        )
        wall = time.perf_counter() - w0  # CPU shares are taken over the generator's run only
        cpu = {k: (cpu_seconds(pid) - cpu0[k]) / wall for k, pid in pids.items()}
        other = max(0.0, (busy_cpu_seconds() - busy0) / wall - sum(cpu.values()))
        s = self.sink.call(
            {"cmd": "stats", "expect": g["sent"], "quiet": self.timing.quiet, "timeout": 30}, timeout=60
        )
        sent, rx = g["sent"], s["rx"]
        span = s["span"]
        rx_rate = s["span_rx"] / span if span > 0.05 and s["span_rx"] > 0 else rx / max(g["elapsed"], 1e-9)
        return {
            "size": size,
            "target_rate": rate,
            "sent": sent,
            "offered_rate": sent / max(g["elapsed"], 1e-9),
            "rx": rx,
            "rx_rate": rx_rate,
            "loss": (sent - rx) / sent if sent else 0.0,
            "reordered": s["reordered"],
            "dups": s["dups"],
            "stale": s["stale"],
            "cpu": {
                "gen": cpu["gen"],
                "sink": cpu["sink"],
                "switch": sum(v for k, v in cpu.items() if k.startswith("switch")),
                "other": other,
            },
        }

    def warm(self, size: int) -> None:
        self.hello()
        res = self.trial(size, self.timing.warmup)
        if res["rx"] == 0:
            raise BenchError(
                f"{self.setup.name}: no frame of {size} B reached the sink\n{self.setup.log_tail()}"
            )

    def max_rate(self, size: int, repeats: int = 0) -> dict[str, Any]:
        runs = [self.trial(size, self.timing.blast) for _ in range(repeats or self.timing.repeats)]
        runs.sort(key=lambda r: r["rx_rate"])
        best = dict(runs[len(runs) // 2])
        best["runs"] = [{"rx_rate": r["rx_rate"], "loss": r["loss"]} for r in runs]
        return best

    def no_loss_rate(self, size: int, hint: float, log: Callable[[str], None]) -> dict[str, Any]:
        """Binary search on paced trials for the highest rate offered and delivered with < 0.1 % loss."""
        lo, hi = 0.0, float("inf")
        rate = hint * 0.9
        trials = []
        best: dict[str, Any] | None = None
        for _ in range(self.timing.steps):
            res = self.trial(size, self.timing.paced, rate)
            ok = (
                res["loss"] < LOSS_LIMIT
                and res["offered_rate"] >= RATE_SLACK * rate
                and res["rx_rate"] >= RATE_SLACK * rate
            )
            res["pass"] = ok
            trials.append(res)
            log(
                f"    paced {fmt_rate(rate, size)}: offered {fmt_rate(res['offered_rate'], size)}, "
                f"received {fmt_rate(res['rx_rate'], size)}, loss {res['loss'] * 100:.3f}% -> "
                f"{'ok' if ok else 'fail'}"
            )
            if ok:
                lo = rate
                best = res
            else:
                hi = rate
            # above every rate tried so far: climb by 30 % steps until a trial fails, then bisect
            rate = lo * 1.3 if hi == float("inf") else (lo + hi) / 2
        return {"rate": lo, "trial": best, "search": trials}


# -- formatting -------------------------------------------------------------------------------------------
def fmt_rate(fps: float, size: int) -> str:
    if size >= 16384:
        return f"{fps * size * 8 / 1e9:.2f} Gb/s"
    return f"{fps / 1000:.1f}k fps"


def fmt_size(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 16384 and size % 1024 == 0 else f"{size} B"


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}x"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- the run ----------------------------------------------------------------------------------------------
class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.timing = QUICK if args.quick else FULL
        self.procs = Procs()
        self.tmp = Path(tempfile.mkdtemp(prefix="vmlan-bench-"))
        self.results: dict[str, Any] = {"ceiling": {}, "rows": {}}
        self.verbose = args.verbose

    def log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def vlog(self, msg: str) -> None:
        if self.verbose:
            self.log(msg)

    @contextmanager
    def rig(self, setup: Setup) -> Iterator[Rig]:
        rig = None
        try:
            rig = Rig(setup, self.procs, self.timing)
            yield rig
        except BenchError:
            tail = setup.log_tail()
            if tail:
                self.log(f"--- {setup.log.name} ---\n{tail}")
            raise
        finally:
            if rig is not None:
                rig.close()
            else:
                setup.stop()

    def close(self) -> None:
        self.procs.stop_all()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- measurements ---------------------------------------------------------------------------------
    def ceilings(self, kinds: list[str]) -> None:
        for kind in kinds:
            setup = DirectSetup(self.procs, self.tmp, kind)
            self.log(f"ceiling: generator -> sink over {setup.name}")
            with self.rig(setup) as rig:
                out = self.results["ceiling"].setdefault(setup.name, {})
                for size in self.args.sizes:
                    if size > setup.max_frame:
                        continue
                    rig.warm(size)
                    res = rig.max_rate(size, repeats=1)
                    out[size] = res
                    self.log(
                        f"  {fmt_size(size)}: {fmt_rate(res['rx_rate'], size)} "
                        f"(gen CPU {res['cpu']['gen']:.0%}, sink CPU {res['cpu']['sink']:.0%})"
                    )

    def settle(self) -> None:
        """--wait-idle: wait (bounded) until other processes use less than half a core."""
        limit = self.args.wait_idle
        if limit <= 0:
            return
        deadline = time.monotonic() + limit
        while True:
            ours = [p.pid for p in self.procs.children]
            c0, b0, t0 = sum(cpu_seconds(p) for p in ours), busy_cpu_seconds(), time.monotonic()
            time.sleep(0.5)
            load = (busy_cpu_seconds() - b0 - (sum(cpu_seconds(p) for p in ours) - c0)) / (
                time.monotonic() - t0
            )
            if load < 0.5 or time.monotonic() >= deadline:
                if load >= 0.5:
                    self.log(f"  (other processes still use {load:.1f} cores; going on)")
                return
            self.vlog(f"  waiting: other processes use {load:.1f} cores")
            time.sleep(1.0)

    def row(self, setup: Setup) -> None:
        self.log(f"{setup.name}:")
        out = self.results["rows"].setdefault(setup.name, {})
        with self.rig(setup) as rig:
            for size in self.args.sizes:
                if size > setup.max_frame:
                    self.log(f"  {fmt_size(size)}: skipped (largest frame {setup.max_frame} B)")
                    continue
                self.settle()
                rig.warm(size)
                mx = rig.max_rate(size)
                c = mx["cpu"]
                self.log(
                    f"  {fmt_size(size)} max: received {fmt_rate(mx['rx_rate'], size)} "
                    f"(offered {fmt_rate(mx['offered_rate'], size)}), loss {mx['loss'] * 100:.2f}%; "
                    f"CPU switch {c['switch']:.0%} gen {c['gen']:.0%} sink {c['sink']:.0%} "
                    f"other processes {c['other']:.0%}"
                )
                counters = setup.counters()
                if counters:
                    mx["switch_counters"] = counters
                    self.vlog("    counters after the max-rate trials:\n" + counters)
                nl = rig.no_loss_rate(size, mx["rx_rate"], self.vlog)
                self.log(f"  {fmt_size(size)} no-loss: {fmt_rate(nl['rate'], size)}")
                out[size] = {"max": mx, "no_loss": nl}

    def profile(self) -> None:
        size = 64
        for cls in (VmlanStreamSetup, VmlanDgramSetup):
            prof = self.tmp / f"{cls.__name__}.prof"
            setup = cls(self.procs, self.tmp, self.args.mode, profile=prof)
            self.log(
                f"profiling {setup.name}, {size} B frames, {self.timing.profile:.0f} s as fast as possible"
            )
            with self.rig(setup) as rig:
                rig.warm(size)
                res = rig.trial(size, self.timing.profile)
                rig.gen.close()
                rig.sink.close()
                setup.stop_for_profile()
            if not prof.exists():
                raise BenchError(f"{setup.name}: cProfile wrote no {prof.name}\n{setup.log_tail()}")
            stream = io.StringIO()
            stats = pstats.Stats(str(prof), stream=stream)
            stats.strip_dirs().sort_stats("tottime").print_stats(15)
            text = stream.getvalue()
            text = text[text.find("   ncalls") :] if "   ncalls" in text else text
            frames = res["rx"]
            total = getattr(stats, "total_tt", 0.0)
            print(
                f"\n== cProfile of {setup.name}, {size} B: {frames} frames received, "
                f"{fmt_rate(res['rx_rate'], size)} under the profiler, loss {res['loss'] * 100:.2f}%; "
                f"{total:.2f} s of wall time profiled =="
            )
            print(
                "(cProfile times are wall-clock: they include waiting in system calls and, for cli.py run, "
                "the event loop idling in epoll)"
            )
            print(text.rstrip())
            self.results.setdefault("profile", {})[setup.name] = {"trial": res, "top": text}

    # -- report ---------------------------------------------------------------------------------------
    def report(self) -> None:
        a = self.args
        rows = self.results["rows"]
        vde = rows.get(f"vde_switch {a.mode}", {})
        vst = rows.get(f"vmlan stream {a.mode}", {})
        vdg = rows.get(f"vmlan dgram {a.mode}", {})
        head = ["case", f"vde_switch {a.mode}", "vmlan stream", "ratio", "vmlan dgram", "ratio"]
        out = [head]
        notes: list[str] = []
        for size in a.sizes:
            for metric in ("max", "no-loss"):
                cells = [f"{fmt_size(size)} {'max fwd' if metric == 'max' else 'no-loss (<0.1%)'}"]
                vals: list[float | None] = []
                for r in (vde, vst, vdg):
                    c = r.get(size)
                    if c is None:
                        vals.append(None)
                        cells.append("-")
                        continue
                    if metric == "max":
                        m = c["max"]
                        vals.append(m["rx_rate"])
                        cells.append(f"{fmt_rate(m['rx_rate'], size)}, loss {m['loss'] * 100:.2f}%")
                    else:
                        vals.append(c["no_loss"]["rate"])
                        nl = c["no_loss"]["rate"]
                        cells.append(fmt_rate(nl, size) if nl else "none found")
                cells.insert(3, ratio(vals[1], vals[0]))
                cells.append(ratio(vals[2], vals[0]))
                out.append(cells)
        print(
            f"\n== forwarding between two peers through one {a.mode}: vmlan vs vde_switch "
            f"({'quick' if a.quick else 'full'} run) =="
        )
        print(table(out))
        for name, by_size in rows.items():
            for size, c in by_size.items():
                trials = [c["max"], *c["no_loss"]["search"]]
                reordered = sum(t["reordered"] for t in trials)
                dups = sum(t["dups"] for t in trials)
                if reordered or dups:
                    notes.append(f"{name} {fmt_size(size)}: {reordered} frames reordered, {dups} duplicated")
        for n in notes:
            print(f"note: {n}")
        if self.results["ceiling"]:
            ch = [["generator -> sink directly (ceiling)", *(fmt_size(s) for s in a.sizes)]]
            for name, by_size in self.results["ceiling"].items():
                ch.append(
                    [name, *(fmt_rate(by_size[s]["rx_rate"], s) if s in by_size else "-" for s in a.sizes)]
                )
            print()
            print(table(ch))
        cpu = [["CPU share at max rate (of one core)", *(fmt_size(s) for s in a.sizes)]]
        for name, by_size in rows.items():
            cpu.append(
                [
                    name,
                    *(
                        "switch {switch:.0%} gen {gen:.0%} sink {sink:.0%} other {other:.0%}".format(
                            **by_size[s]["max"]["cpu"]
                        )
                        if s in by_size
                        else "-"
                        for s in a.sizes
                    ),
                ]
            )
        if len(cpu) > 1:
            print()
            print(table(cpu))

    def run(self) -> None:
        a = self.args
        self.results["meta"] = {
            "argv": sys.argv[1:],
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "mode": a.mode,
            "quick": a.quick,
            "timing": self.timing.__dict__,
            "vmlan_loop": _vmlan_loop(),
        }
        if a.profile:
            self.profile()
            return
        kinds = []
        if a.only in (None, "vde"):
            kinds.append("stream2")
        if a.only in (None, "vmlan"):
            kinds += ["stream4", "dgram"]
        if not a.no_ceiling:
            self.ceilings(kinds)
        if a.only in (None, "vde"):
            self.row(VdeSetup(self.procs, self.tmp, a.mode))
        if a.only in (None, "vmlan"):
            self.row(VmlanStreamSetup(self.procs, self.tmp, a.mode))
            self.row(VmlanDgramSetup(self.procs, self.tmp, a.mode))
        self.report()


def _vmlan_loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short trials: a smoke run of well under a minute")
    p.add_argument("--only", choices=["vmlan", "vde"], help="measure only one of the two")
    p.add_argument("--sizes", default="64,1500,65536", help="frame sizes in bytes, comma-separated")
    p.add_argument(
        "--mode",
        choices=["hub", "switch"],
        default="hub",
        help="hub: vde_switch -x / vmlan's hub; switch: learning switches",
    )
    p.add_argument("--json", metavar="FILE", help="save every trial's results as JSON")
    p.add_argument(
        "--profile",
        action="store_true",
        help="instead: run vmlan under cProfile at 64 B and print the top 15 functions by tottime",
    )
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each case wait up to SECONDS for other processes to use < 0.5 core (noisy machines)",
    )
    p.add_argument("--no-ceiling", action="store_true", help="skip measuring the generator/sink ceiling")
    p.add_argument("-v", "--verbose", action="store_true", help="show every paced trial of the search")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s]
    except ValueError:
        p.error(f"--sizes: not a list of integers: {args.sizes}")
    if not args.sizes or any(s < 60 or s > 65536 for s in args.sizes):
        p.error("--sizes: each size must be between 60 and 65536")
    return args


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.only != "vmlan" and not args.profile and shutil.which("vde_switch") is None:
        print("benchmarks: vde_switch not found (Debian package vde2); use --only vmlan", file=sys.stderr)
        return 2
    probe = subprocess.run([sys.executable, "-c", "import vmlan.io.runtime"], capture_output=True, text=True)
    if args.only != "vde" and probe.returncode != 0:
        print(
            f"benchmarks: cannot import vmlan with {sys.executable}:\n{probe.stderr.strip()}", file=sys.stderr
        )
        return 2
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored (&)
    runner = Runner(args)
    status = 0
    try:
        runner.run()
    except KeyboardInterrupt:
        print("\nbenchmarks: interrupted", file=sys.stderr)
        status = 130
    except BenchError as exc:
        print(f"benchmarks: {exc}", file=sys.stderr)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        runner.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.json and runner.results.get("meta"):
        with open(args.json, "w") as f:
            json.dump(runner.results, f, indent=1, default=str)
        print(f"results saved to {args.json}", file=sys.stderr)
    return status
