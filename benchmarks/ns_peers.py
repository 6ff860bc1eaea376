"""vmlan ns against slirp4netns and pasta: the same namespace, the same clients, one run, side by side.

    python -m benchmarks.ns_peers [--time 5] [--runs 3] [--mtu 1500,65520] [--only vmlan,slirp4netns,pasta]
                                  [--json FILE] [--profile SECONDS]

Run from the repository root, as root (the namespaces and stacks then run as user nobody, as they
would for a rootless user; /dev/net/tun is made 0666 for the run, as Debian's udev has it) or as the
unprivileged user itself. Needs iperf3, slirp4netns and pasta (Debian: iperf3, slirp4netns, passt).

For each stack and MTU a fresh target, ``unshare -rn sleep infinity``, gets its interface from:

    vmlan ns:     vmlan ns --mtu N -netdev user,hostfwd=tcp:127.0.0.1:F-:5201 --attach PID
    slirp4netns:  slirp4netns --configure --mtu=N --api-socket S PID tap0   (add_hostfwd 127.0.0.1:F -> 5201)
    pasta:        pasta --config-net -a 10.0.2.100 -n 24 -g 10.0.2.2 -I tap0 -m N -t 127.0.0.1/F:5201
                        -u none -T none -U none -f -q PID

so all three namespaces have tap0 = 10.0.2.100/24 with the default route via 10.0.2.2, and 10.0.2.2
is the host's loopback (libslirp's default; pasta maps its gateway address to the host). Clients in
the namespace run under ``nsenter -t PID -n``. Figures (each the median of ``--runs``):

* TCP ns->host and host->ns, iperf3 ``-t T`` at each MTU: the namespace's iperf3 -c to an iperf3 -s
  on the host's 127.0.0.1 via 10.0.2.2; host->ns an iperf3 -c on the host to 127.0.0.1:F, forwarded
  to an iperf3 -s in the namespace. pasta splices loopback connections to the namespace's loopback
  (its -t fast path: not through its tap), so its host->ns row is that path.
* the stack's CPU per Gb moved in each of those runs (utime + stime of its process, /proc/PID/stat).
* latency, every process (client, server, the stack) pinned to one core with taskset, at MTU 1500:
  TCP request/response (1 byte each way on one connection), UDP request/response (1-byte datagrams)
  and TCP connections per second (connect, 1 byte each way, close), with the small pinger below
  (``pinger serve-tcp|serve-udp|serve-crr PORT``, ``pinger rr-tcp|rr-udp|crr HOST PORT SECONDS``).

* TCP over IPv6 through vmlan (its fec0::/64; slirp4netns and pasta are left at IPv4 here): the same
  iperf3 runs, ns->host to an iperf3 -s on the host's ::1 via fec0::2, host->ns from [::1]:F6 by
  ``hostfwd=tcp:[::1]:F6-[fec0::5054:ff:fe12:3456]:5201`` (the namespace's SLAAC address), printed
  beside the IPv4 figures with the IPv6/IPv4 ratio (``--no-ipv6`` leaves them out).

``--profile SECONDS``: instead of the comparison, py-spy samples vmlan for SECONDS during an iperf3
ns->host and host->ns run at MTU 1500 and prints the 25 functions with the most samples (self time).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import site
import socket
import stat
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GATEWAY = "10.0.2.2"
GATEWAY6 = "fec0::2"
NS_ADDR6 = "fec0::5054:ff:fe12:3456"  # SLAAC (EUI-64) of vmlan ns's first tap0 MAC, 52:54:00:12:34:56
NS_ADDR = "10.0.2.100"
NS_PORT = 5201
CLK_TCK = os.sysconf("SC_CLK_TCK")
STACKS = ("vmlan", "slirp4netns", "pasta")
VMLAN_SRC = REPO / "src"  # --vmlan-src: the vmlan tree to measure (another worktree's, for before/after)
MODES = ("rr-tcp", "crr", "rr-udp")
#: vmlan under cProfile, switched on and off by SIGUSR2 (each "off" writes the stats to argv[1]).
PROFILED_VMLAN = """
import cProfile, signal, sys
out = sys.argv[1]
prof = cProfile.Profile()
on = []
def toggle(signum, frame):
    if on:
        prof.disable(); on.clear(); prof.dump_stats(out)
    else:
        prof.enable(); on.append(1)
signal.signal(signal.SIGUSR2, toggle)
sys.argv = ["vmlan", *sys.argv[2:]]
from vmlan.cli import main
raise SystemExit(main())
"""
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]


class BenchError(RuntimeError):
    pass


# -- small helpers ---------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _world_usable(path: str) -> bool:
    real = Path(os.path.realpath(path))
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in real.parents) and bool(os.stat(real).st_mode & stat.S_IROTH)


def unprivileged_python() -> tuple[str, str]:
    """(interpreter, PYTHONPATH) with which user nobody can run vmlan from this tree."""
    src = str(VMLAN_SRC)
    if _world_usable(sys.executable) and _world_usable(sysconfig.get_paths()["stdlib"]):
        return sys.executable, src
    packages = [p for p in site.getsitepackages() if _world_usable(p)]
    if os.path.exists("/usr/bin/python3") and packages:
        return "/usr/bin/python3", os.pathsep.join([src, *packages])
    raise BenchError(f"user nobody cannot run {sys.executable} and there is no /usr/bin/python3")


# -- the pinger (runs as its own process: python -m benchmarks.ns_peers pinger ...) ------------------------
def pinger(argv: list[str]) -> int:
    mode = argv[0]
    if mode.startswith("serve-"):
        port = int(argv[1])
        if mode == "serve-udp":
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind(("127.0.0.1", port))
            print("ready", flush=True)
            while True:
                data, src = u.recvfrom(2048)
                u.sendto(data, src)
        srv = socket.create_server(("127.0.0.1", port), backlog=256)
        print("ready", flush=True)
        while True:
            conn, _ = srv.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if mode == "serve-crr":
                if conn.recv(1):
                    conn.sendall(b"x")
                conn.close()
                continue
            while data := conn.recv(1):
                conn.sendall(data)
            conn.close()
    host, port, seconds = argv[1], int(argv[2]), float(argv[3])
    if len(argv) > 4:  # a fixed number of transactions, after a warm-up and a go line on stdin
        return _pinger_counted(mode, host, port, int(argv[4]))
    count = 0
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    if mode == "probe":  # until the path works (a fresh stack may need a moment), at most `seconds`
        while time.perf_counter() < end:
            try:
                with socket.create_connection((host, port), timeout=0.3) as c:
                    c.sendall(b"x")
                    if c.recv(1) == b"x":
                        print(json.dumps({"ok": True}))
                        return 0
            except OSError:
                time.sleep(0.05)
        return 1
    if mode == "rr-tcp":
        c = socket.create_connection((host, port), timeout=5)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            for _ in range(100):
                c.sendall(b"x")
                if not c.recv(1):
                    raise SystemExit("connection closed")
            count += 100
            if time.perf_counter() >= end:
                break
        c.close()
    elif mode == "rr-udp":
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(2)
        u.connect((host, port))
        while True:
            for _ in range(100):
                u.send(b"x")
                u.recv(16)
            count += 100
            if time.perf_counter() >= end:
                break
    elif mode == "crr":
        while time.perf_counter() < end:
            with socket.create_connection((host, port), timeout=5) as c:
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                c.sendall(b"x")
                c.recv(1)
            count += 1
    else:
        raise SystemExit(f"unknown pinger mode {mode}")
    elapsed = time.perf_counter() - start
    print(json.dumps({"count": count, "seconds": elapsed, "per_s": count / elapsed, "us": elapsed / count * 1e6}))
    return 0


def _pinger_counted(mode: str, host: str, port: int, total: int) -> int:
    """``pinger MODE HOST PORT 0 COUNT``: set up (the connection or flow, and a few warm-up transactions),
    print ``ready``, wait for a line on stdin, do exactly COUNT transactions, print the JSON figures. What
    the stack does per transaction is then what a tracer attached between ``ready`` and the end saw."""
    c: socket.socket | None = None
    if mode == "rr-tcp":
        c = socket.create_connection((host, port), timeout=5)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    elif mode == "rr-udp":
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.settimeout(2)
        c.connect((host, port))

    def one() -> None:
        if c is None:  # crr
            with socket.create_connection((host, port), timeout=5) as conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.sendall(b"x")
                conn.recv(1)
        else:
            c.send(b"x")
            if not c.recv(16):
                raise SystemExit("connection closed")

    if mode not in ("rr-tcp", "rr-udp", "crr"):
        raise SystemExit(f"unknown pinger mode {mode}")
    for _ in range(20):
        one()
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    for _ in range(total):
        one()
    elapsed = time.perf_counter() - start
    if c is not None:
        c.close()
    print(json.dumps({"count": total, "seconds": elapsed, "per_s": total / elapsed, "us": elapsed / total * 1e6}))
    return 0


# -- processes -------------------------------------------------------------------------------------------
@dataclass
class Run:
    """Every process of the benchmark; stopped in reverse order at the end, whatever happens."""

    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    unprivileged: list[str] = field(default_factory=list)

    def spawn(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        try:
            proc = subprocess.Popen(list(argv), **kw)
        except FileNotFoundError as exc:
            raise BenchError(f"cannot run {argv[0]}: {exc.strerror}") from None
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def pinger_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.ns_peers", "pinger", *args]


def pinger_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))


class Namespace:
    """``unshare -rn sleep infinity`` (as nobody when we are root) and commands run inside it."""

    def __init__(self, run: Run) -> None:
        self.run = run
        ours = os.stat("/proc/self/ns/net").st_ino
        self.proc = run.spawn([*run.unprivileged, "unshare", "-rn", "sleep", "infinity"])
        pid = self.proc.pid
        wait_until(lambda: os.stat(f"/proc/{pid}/ns/net").st_ino != ours
                   and os.readlink(f"/proc/{pid}/exe").endswith("sleep"), 10, "the target namespace")
        self.pid = pid

    def enter(self) -> list[str]:
        if os.geteuid() == 0:
            return ["nsenter", "-t", str(self.pid), "-n"]
        return ["nsenter", "-t", str(self.pid), "-U", "-n", "--preserve-credentials"]


class Stack:
    """One user-mode stack serving a Namespace: its process, and the host port forwarded to NS_PORT."""

    def __init__(self, kind: str, run: Run, ns: Namespace, mtu: int, tmp: Path, profile_to: Path | None = None) -> None:
        self.kind = kind
        self.fwd = free_port()
        self.fwd6 = free_port()
        pid = str(ns.pid)
        if kind == "vmlan":
            python, path = unprivileged_python() if run.unprivileged else (sys.executable, str(VMLAN_SRC))
            env = dict(os.environ, PYTHONPATH=path)
            entry = ["-m", "vmlan"] if profile_to is None else ["-c", PROFILED_VMLAN, str(profile_to)]
            self.proc = run.spawn([*run.unprivileged, python, *entry, "ns", "-v", "--mtu", str(mtu), "-netdev",
                                   f"user,hostfwd=tcp:127.0.0.1:{self.fwd}-:{NS_PORT},"
                                   f"hostfwd=tcp:[::1]:{self.fwd6}-[{NS_ADDR6}]:{NS_PORT}", "--attach", pid],
                                  env=env, stderr=subprocess.PIPE, text=True, cwd="/")
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                if "ns: attached to process" in line:
                    break
            else:
                raise BenchError(f"vmlan ns did not attach (status {self.proc.wait()})")
            self._drain(self.proc.stderr)
        elif kind == "slirp4netns":
            api = tmp / f"slirp-{ns.pid}.sock"
            r, w = os.pipe()
            self.proc = run.spawn([*run.unprivileged, "slirp4netns", "--configure", f"--mtu={mtu}",
                                   f"--api-socket={api}", f"--ready-fd={w}", pid, "tap0"], pass_fds=(w,),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            os.close(w)
            ready = os.read(r, 1)
            os.close(r)
            if ready != b"1":
                raise BenchError(f"slirp4netns did not start (status {self.proc.wait()})")
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(api))
                s.sendall(json.dumps({"execute": "add_hostfwd", "arguments": {
                    "proto": "tcp", "host_addr": "127.0.0.1", "host_port": self.fwd, "guest_port": NS_PORT}}).encode())
                s.shutdown(socket.SHUT_WR)
                answer = s.recv(4096)
            if b'"return"' not in answer:
                raise BenchError(f"slirp4netns add_hostfwd: {answer!r}")
        elif kind == "pasta":
            self.proc = run.spawn([*run.unprivileged, "pasta", "--config-net", "-a", NS_ADDR, "-n", "24", "-g", GATEWAY,
                                   "-I", "tap0", "-m", str(mtu), "-t", f"127.0.0.1/{self.fwd}:{NS_PORT}", "-u", "none",
                                   "-T", "none", "-U", "none", "-f", "-q", pid],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            raise BenchError(f"unknown stack {kind}")
        self.pid = self.proc.pid

    @staticmethod
    def _drain(stream: Any) -> None:
        """Keep reading vmlan's stderr (the -v counters at exit) so it never blocks on a full pipe."""
        import threading

        lines: list[str] = []
        thread = threading.Thread(target=lambda: lines.extend(stream), daemon=True)
        thread.start()

    def pin(self, cpu: int) -> None:
        subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(self.pid)], check=True, capture_output=True)


# -- measurements ----------------------------------------------------------------------------------------
def iperf_server(run: Run, prefix: Sequence[str], bind: str, port: int) -> subprocess.Popen[str]:
    server = run.spawn([*prefix, "iperf3", "-s", "-1", "--forceflush", "-B", bind, "-p", str(port)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert server.stdout is not None
    for line in server.stdout:
        if "Server listening" in line:
            return server
    raise BenchError(f"iperf3 -s did not start (status {server.wait()})")


def iperf(run: Run, ns: Namespace, stack: Stack, reverse: bool, seconds: int, v6: bool = False) -> dict[str, float]:
    """One iperf3 run: Gb/s received and the stack's CPU seconds per Gb."""
    if reverse:
        server = iperf_server(run, ns.enter(), "::" if v6 else "0.0.0.0", NS_PORT)
        client = ["iperf3", "-c", "::1" if v6 else "127.0.0.1", "-p", str(stack.fwd6 if v6 else stack.fwd),
                  "-t", str(seconds), "-J"]
    else:
        port = free_port()
        server = iperf_server(run, [], "::1" if v6 else "127.0.0.1", port)
        client = [*ns.enter(), "iperf3", "-c", GATEWAY6 if v6 else GATEWAY, "-p", str(port), "-t", str(seconds), "-J"]
    try:
        cpu0 = cpu_seconds(stack.pid)
        out = subprocess.run(client, capture_output=True, text=True, timeout=seconds + 60)
        cpu = cpu_seconds(stack.pid) - cpu0
    finally:
        run.stop(server)
    if out.returncode:
        raise BenchError(f"iperf3 ({stack.kind}) failed: {out.stdout[-400:]} {out.stderr[-400:]}")
    end = json.loads(out.stdout)["end"]["sum_received"]
    gbits = end["bytes"] * 8 / 1e9
    return {"gbps": end["bits_per_second"] / 1e9, "cpu_per_gb": cpu / gbits if gbits else float("nan")}


def pinned_server(run: Run, mode: str, port: int) -> subprocess.Popen[str]:
    """The host side of a pinned ``mode`` on core 0, once it says it is ready."""
    serve = {"rr-tcp": "serve-tcp", "rr-udp": "serve-udp", "crr": "serve-crr"}[mode]
    server = run.spawn(["taskset", "-c", "0", *pinger_argv(serve, str(port))], stdout=subprocess.PIPE, text=True,
                       env=pinger_env())
    assert server.stdout is not None
    if server.stdout.readline().strip() != "ready":
        run.stop(server)
        raise BenchError("the pinger server did not start")
    return server


def pinned(run: Run, ns: Namespace, stack: Stack, mode: str, seconds: float) -> float:
    """A pinned latency or rate figure: us per round trip (rr-*), connections per second (crr)."""
    port = free_port()
    server = pinned_server(run, mode, port)
    try:
        out = subprocess.run([*ns.enter(), "taskset", "-c", "0", *pinger_argv(mode, GATEWAY, str(port), str(seconds))],
                             capture_output=True, text=True, timeout=seconds + 60, env=pinger_env())
    finally:
        run.stop(server)
    if out.returncode:
        raise BenchError(f"pinger {mode} ({stack.kind}) failed: {out.stderr[-400:]}")
    result = json.loads(out.stdout)
    return float(result["per_s"] if mode == "crr" else result["us"])


def wait_ipv6(ns: Namespace) -> None:
    """Until the namespace's SLAAC address from vmlan's router advertisement is usable (DAD done)."""
    def usable() -> bool:
        out = subprocess.run([*ns.enter(), "ip", "-6", "-o", "addr", "show", "dev", "tap0"], capture_output=True,
                             text=True)
        return any(NS_ADDR6 in line and "tentative" not in line for line in out.stdout.splitlines())
    wait_until(usable, 20, f"the namespace's IPv6 address {NS_ADDR6}")


def probe(run: Run, ns: Namespace) -> None:
    """Wait until a TCP exchange through the gateway works (the stack is up, ARP done)."""
    port = free_port()
    server = run.spawn(pinger_argv("serve-tcp", str(port)), stdout=subprocess.PIPE, text=True, env=pinger_env())
    try:
        assert server.stdout is not None
        server.stdout.readline()
        out = subprocess.run([*ns.enter(), *pinger_argv("probe", GATEWAY, str(port), "20")], capture_output=True,
                             text=True, timeout=60, env=pinger_env())
        if out.returncode:
            raise BenchError(f"no TCP through the gateway: {out.stderr[-300:]}")
    finally:
        run.stop(server)


@contextlib.contextmanager
def serving(kind: str, run: Run, mtu: int, tmp: Path, profile_to: Path | None = None
            ) -> Iterator[tuple[Namespace, Stack]]:
    ns = Namespace(run)
    stack = Stack(kind, run, ns, mtu, tmp, profile_to)
    try:
        probe(run, ns)
        yield ns, stack
    finally:
        run.stop(stack.proc)
        run.stop(ns.proc)


def counted(run: Run, ns: Namespace, stack: Stack, mode: str, count: int,
            start: Callable[[], Callable[[], None]]) -> float:
    """Exactly ``count`` transactions of ``mode`` (after the pinger's set-up and warm-up), with
    ``start()`` called just before them and what it returns just after: a tracer sees the transactions
    alone. Returns the pinger's figure (us per round trip, or connections/s for crr) under the tracer."""
    port = free_port()
    server = pinned_server(run, mode, port)
    try:
        client = run.spawn([*ns.enter(), "taskset", "-c", "0", *pinger_argv(mode, GATEWAY, str(port), "0", str(count))],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=pinger_env())
        assert client.stdin is not None and client.stdout is not None
        if client.stdout.readline().strip() != "ready":
            raise BenchError(f"pinger {mode} ({stack.kind}) did not get ready (status {client.wait()})")
        stop = start()
        try:
            client.stdin.write("go\n")
            client.stdin.flush()
            line = client.stdout.readline()
            client.wait(60)
        finally:
            stop()
        run.procs.remove(client)
    finally:
        run.stop(server)
    if not line:
        raise BenchError(f"pinger {mode} ({stack.kind}) failed (status {client.returncode})")
    result = json.loads(line)
    return float(result["per_s"] if mode == "crr" else result["us"])


_PERF_ROW = re.compile(r"^\s+([a-z_0-9]+)\s+(\d+)\s+(\d+)\s+[\d.]+")
_STRACE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(\d+)?\s*([a-z_0-9]+)$")


def syscall_tracer(run: Run, pid: int, out: Path) -> Callable[[], Callable[[], None]]:
    """``perf trace -s`` (else ``strace -c -f``) on every thread of ``pid``: the returned start() attaches
    it, the stop() it returns detaches it; the summary lands in ``out`` (parse it with syscall_counts)."""
    perf = shutil.which("perf")

    def start() -> Callable[[], None]:
        if perf is not None:
            argv = [perf, "trace", "-s", "-p", str(pid), "-o", str(out)]
        else:
            argv = ["strace", "-c", "-f", "-p", str(pid), "-o", str(out)]
        tracer = run.spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)  # attached (perf opens its events, strace seizes every thread)

        def stop() -> None:
            time.sleep(0.2)
            run.stop(tracer, signal.SIGINT)

        return stop

    return start


def syscall_counts(out: Path) -> dict[str, tuple[int, int]]:
    """{syscall: (calls, errors)} summed over threads, from a perf trace -s or strace -c summary."""
    counts: dict[str, tuple[int, int]] = {}
    for line in out.read_text().splitlines():
        m = _PERF_ROW.match(line)
        if m:
            name, calls, errors = m.group(1), int(m.group(2)), int(m.group(3))
        else:
            m = _STRACE_ROW.match(line)
            if not m or m.group(3) == "total":
                continue
            name, calls, errors = m.group(3), int(m.group(1)), int(m.group(2) or 0)
        c, e = counts.get(name, (0, 0))
        counts[name] = (c + calls, e + errors)
    return counts


def syscalls(run: Run, args: argparse.Namespace, tmp: Path) -> None:
    """--syscalls N: system calls of each stack per transaction, N transactions per mode."""
    table: dict[str, dict[str, dict[str, tuple[int, int]]]] = {}
    for kind in [k for k in args.only.split(",") if k]:
        with serving(kind, run, args.mtu[0], tmp) as (ns, stack):
            stack.pin(0)
            for mode in args.modes:
                out = tmp / f"sys-{kind}-{mode}.txt"
                figure = counted(run, ns, stack, mode, args.syscalls, syscall_tracer(run, stack.pid, out))
                table.setdefault(mode, {})[kind] = syscall_counts(out)
                if args.verbose:
                    print(f"  {kind} {mode}: {figure:.1f} under the tracer", flush=True)
    n = args.syscalls
    for mode, per_kind in table.items():
        kinds = list(per_kind)
        print(f"\n== {mode}: system calls per transaction ({n} transactions; errors in parentheses)")
        print(f"{'syscall':<22}" + "".join(f" {k:>18}" for k in kinds))
        names = sorted({name for c in per_kind.values() for name in c},
                       key=lambda nm: -max(c.get(nm, (0, 0))[0] for c in per_kind.values()))
        for name in names:
            cells = []
            for k in kinds:
                calls, errors = per_kind[k].get(name, (0, 0))
                cell = f"{calls / n:.2f}" + (f" ({errors / n:.2f})" if errors else "")
                cells.append(f" {cell if calls else '-':>18}")
            if max(per_kind[k].get(name, (0, 0))[0] for k in kinds) / n >= 0.005:
                print(f"{name:<22}" + "".join(cells))
        print(f"{'total':<22}" + "".join(f" {sum(c for c, _ in per_kind[k].values()) / n:>18.2f}" for k in kinds))


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in ns (schedstat: exact, unlike the clock ticks of stat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def cpu(run: Run, args: argparse.Namespace, tmp: Path) -> None:
    """--cpu N: each stack's own CPU time per transaction (and the figure), N transactions per mode."""
    rows: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for kind in [k for k in args.only.split(",") if k]:
        with serving(kind, run, args.mtu[0], tmp) as (ns, stack):
            stack.pin(0)
            for mode in args.modes:
                for _ in range(args.runs):
                    box: list[int] = []

                    def start(box: list[int] = box, pid: int = stack.pid) -> Callable[[], None]:
                        box.append(cpu_ns(pid))
                        return lambda: box.append(cpu_ns(pid))

                    figure = counted(run, ns, stack, mode, args.cpu, start)
                    used = (box[1] - box[0]) / 1e3 / args.cpu
                    rows.setdefault(mode, {}).setdefault(kind, []).append((used, figure))
                    if args.verbose:
                        print(f"  {kind} {mode}: {used:.1f} us CPU per transaction, figure {figure:.1f}", flush=True)
    kinds = rows[args.modes[0]]
    print(f"\n{'median of ' + str(args.runs):<12} " + "".join(f" {k + ' CPU us':>18} {k:>14}" for k in kinds))
    for mode, per_kind in rows.items():
        cells = []
        for values in per_kind.values():
            cells.append(f" {statistics.median(v[0] for v in values):>18.1f} "
                         f"{statistics.median(v[1] for v in values):>14.1f}")
        print(f"{mode:<12} " + "".join(cells))
    print("(CPU us: the stack's own CPU time per transaction; the figure: us per round trip, crr conn/s)")


def _profile_switch(pid: int, out: Path) -> Callable[[], Callable[[], None]]:
    """start()/stop() for counted(): SIGUSR2 turns PROFILED_VMLAN's profiler on, then off (stats written)."""

    def start() -> Callable[[], None]:
        os.kill(pid, signal.SIGUSR2)

        def stop() -> None:
            os.kill(pid, signal.SIGUSR2)
            wait_until(lambda: out.exists() and out.stat().st_size > 0, 10, "the profile")
            time.sleep(0.3)

        return stop

    return start


def calls(run: Run, args: argparse.Namespace, tmp: Path) -> None:
    """--calls N: vmlan under cProfile for N transactions per mode: Python calls per transaction."""
    import pstats

    for mode in args.modes:
        out = tmp / f"prof-{mode}.pstats"
        with serving("vmlan", run, args.mtu[0], tmp, profile_to=out) as (ns, stack):
            stack.pin(0)

            figure = counted(run, ns, stack, mode, args.calls, _profile_switch(stack.pid, out))
        st = pstats.Stats(str(out))
        n = args.calls
        total_calls = sum(v[1] for v in st.stats.values())  # type: ignore[attr-defined]
        total_time = sum(v[2] for v in st.stats.values())  # type: ignore[attr-defined]
        print(f"\n== vmlan {mode}: {total_calls / n:.1f} Python function calls and {total_time / n * 1e6:.1f} us "
              f"(profiled) per transaction ({figure:.1f} under the profiler); by calls per transaction:")
        rows = sorted(st.stats.items(), key=lambda kv: -kv[1][1])  # type: ignore[attr-defined]
        for (path, line, name), (_cc, nc, tt, _ct, _callers) in rows[:args.top]:
            where = re.sub(r"^.*/(?:src/)?(vmlan/)", r"\1", path)
            print(f"  {nc / n:7.2f} calls {tt / n * 1e6:7.2f} us  {where}:{line}({name})")


def measure(kind: str, run: Run, args: argparse.Namespace, tmp: Path) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {}
    for mtu in args.mtu:
        if args.latency_only and mtu != args.mtu[0]:
            continue
        with serving(kind, run, mtu, tmp) as (ns, stack):
            families = (False, True) if kind == "vmlan" and args.ipv6 else (False,)
            if True in families and not args.latency_only:
                wait_ipv6(ns)
            for v6 in families:
                for reverse in (() if args.latency_only else (False, True)):
                    name = f"{'host->ns' if reverse else 'ns->host'} {mtu}"
                    tcp, cpu = ("tcp6", "cpu6") if v6 else ("tcp", "cpu")
                    for _ in range(args.runs):
                        r = iperf(run, ns, stack, reverse, args.time, v6)
                        figures.setdefault(f"{tcp} {name}", []).append(r["gbps"])
                        figures.setdefault(f"{cpu} {name}", []).append(r["cpu_per_gb"])
                        if args.verbose:
                            print(f"  {kind} {tcp} {name}: {r['gbps']:.2f} Gb/s, {r['cpu_per_gb']:.2f} CPU s/Gb",
                                  flush=True)
            if mtu == args.mtu[0] and args.modes:
                stack.pin(0)
                for mode in args.modes:
                    for _ in range(args.runs):
                        value = pinned(run, ns, stack, mode, args.rr_time)
                        figures.setdefault(mode, []).append(value)
                        if args.verbose:
                            print(f"  {kind} {mode}: {value:.1f}", flush=True)
    return figures


ROWS = [
    ("tcp ns->host {m}", "TCP ns->host, MTU {m}", "Gb/s", "{:.2f}"),
    ("tcp host->ns {m}", "TCP host->ns, MTU {m}", "Gb/s", "{:.2f}"),
    ("rr-tcp", "TCP 1-byte request/response, pinned", "us", "{:.1f}"),
    ("crr", "TCP connections/s, pinned", "conn/s", "{:,.0f}"),
    ("rr-udp", "UDP 1-byte request/response, pinned", "us", "{:.1f}"),
    ("cpu ns->host {m}", "stack CPU per Gb, ns->host, MTU {m}", "CPU s/Gb", "{:.2f}"),
    ("cpu host->ns {m}", "stack CPU per Gb, host->ns, MTU {m}", "CPU s/Gb", "{:.2f}"),
]


def report(results: dict[str, dict[str, list[float]]], mtus: list[int]) -> None:
    kinds = [k for k in STACKS if k in results]
    head = f"{'figure (median)':<42} {'unit':>8}" + "".join(f" {k:>12}" for k in kinds)
    if "vmlan" in results and "slirp4netns" in results:
        head += f" {'vmlan/slirp':>12}"
    print(head)
    for key_t, label_t, unit, fmt in ROWS:
        for m in (mtus if "{m}" in key_t else [mtus[0]]):
            key, label = key_t.format(m=m), label_t.format(m=m)
            values = {k: statistics.median(results[k][key]) for k in kinds if key in results[k]}
            if not values:
                continue
            line = f"{label:<42} {unit:>8}" + "".join(
                f" {fmt.format(values[k]) if k in values else '-':>12}" for k in kinds)
            if "vmlan" in values and "slirp4netns" in values and values["slirp4netns"]:
                line += f" {values['vmlan'] / values['slirp4netns']:>12.2f}"
            print(line)
    print("(us: lower is better; conn/s and Gb/s: higher; CPU s/Gb: lower. pasta's host->ns is its loopback splice.)")
    v6_rows = [(k4.format(m=m), k6.format(m=m), label.format(m=m), unit) for m in mtus for k4, k6, label, unit in (
        ("tcp ns->host {m}", "tcp6 ns->host {m}", "TCP ns->host, MTU {m}", "Gb/s"),
        ("tcp host->ns {m}", "tcp6 host->ns {m}", "TCP host->ns, MTU {m}", "Gb/s"),
        ("cpu ns->host {m}", "cpu6 ns->host {m}", "stack CPU per Gb, ns->host, MTU {m}", "CPU s/Gb"),
        ("cpu host->ns {m}", "cpu6 host->ns {m}", "stack CPU per Gb, host->ns, MTU {m}", "CPU s/Gb"))]
    vm = results.get("vmlan", {})
    if any(k6 in vm and k4 in vm for k4, k6, _, _ in v6_rows):
        print(f"\n{'vmlan, IPv6 beside IPv4 (median)':<42} {'unit':>8} {'IPv4':>12} {'IPv6':>12} {'IPv6/IPv4':>12}")
        for k4, k6, label, unit in v6_rows:
            if k4 in vm and k6 in vm:
                a, b = statistics.median(vm[k4]), statistics.median(vm[k6])
                print(f"{label:<42} {unit:>8} {a:>12.2f} {b:>12.2f} {b / a if a else float('nan'):>12.2f}")


# -- profiling -------------------------------------------------------------------------------------------
def profile(run: Run, args: argparse.Namespace, tmp: Path) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.path.exists(spy):
        raise BenchError("py-spy not found (pip install py-spy)")
    for work in ("ns->host", "host->ns", "rr-tcp", "crr"):
        with serving("vmlan", run, args.mtu[0], tmp) as (ns, stack):
            raw = tmp / f"spy-{work.replace('>', '')}.txt"
            sampler = run.spawn([spy, "record", "--format", "raw", "-o", str(raw), "-r", "500", "-d",
                                 str(args.profile), "-p", str(stack.pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if work in ("rr-tcp", "crr"):
                stack.pin(0)
                value = pinned(run, ns, stack, work, args.profile + 1)
                figure = f"{value:.1f} us per round trip" if work == "rr-tcp" else f"{value:,.0f} connections/s"
            else:
                r = iperf(run, ns, stack, work == "host->ns", args.profile + 1)
                figure = f"{r['gbps']:.2f} Gb/s, {r['cpu_per_gb']:.2f} CPU s/Gb"
            sampler.wait(args.profile + 30)
            run.procs.remove(sampler)
        print(f"\n== vmlan, {work}, MTU {args.mtu[0]}: {figure} (under py-spy); self samples by function:")
        own: dict[str, int] = {}
        inclusive: dict[str, int] = {}
        total = 0
        for line in raw.read_text().splitlines():
            stack_text, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = [re.sub(r" \((?:/[^)]*/)?(?:src/)?([^)]*)\)", r" (\1)", f) for f in stack_text.split(";")]
            own[frames[-1]] = own.get(frames[-1], 0) + count
            for name in {re.sub(r":\d+\)$", ")", f) for f in frames}:
                inclusive[name] = inclusive.get(name, 0) + count
        for leaf, count in sorted(own.items(), key=lambda kv: -kv[1])[:20]:
            print(f"  {100 * count / max(total, 1):5.1f}%  {leaf}")
        print("  inclusive (the function and what it calls):")
        for name, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[:20]:
            print(f"  {100 * count / max(total, 1):5.1f}%  {name}")


# -- main ------------------------------------------------------------------------------------------------
def main() -> int:
    global VMLAN_SRC
    if len(sys.argv) > 1 and sys.argv[1] == "pinger":
        return pinger(sys.argv[2:])
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--time", type=int, default=5, help="seconds per iperf3 run")
    parser.add_argument("--rr-time", type=float, default=2.0, help="seconds per latency/connection-rate run")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (the median is reported)")
    parser.add_argument("--mtu", default="1500,65520", help="MTUs for the throughput figures (first: latency)")
    parser.add_argument("--only", default=",".join(STACKS), help="stacks to measure, comma-separated")
    parser.add_argument("--json", help="save every run's figures here")
    parser.add_argument("--profile", type=int, default=0, metavar="SECONDS", help="profile vmlan instead")
    parser.add_argument("--latency-only", action="store_true", help="only the pinned rows (no iperf3)")
    parser.add_argument("--modes", default=",".join(MODES), help="pinned figures to measure, comma-separated")
    parser.add_argument("--syscalls", type=int, default=0, metavar="N",
                        help="instead: system calls of each stack per transaction, over N transactions per mode")
    parser.add_argument("--calls", type=int, default=0, metavar="N",
                        help="instead: vmlan's Python calls per transaction (cProfile), over N per mode")
    parser.add_argument("--cpu", type=int, default=0, metavar="N",
                        help="instead: each stack's CPU time per transaction, over N transactions per mode")
    parser.add_argument("--top", type=int, default=30, help="functions listed by --calls")
    parser.add_argument("--vmlan-src", default=str(VMLAN_SRC), help="the vmlan source tree to run (for before/after)")
    parser.add_argument("--ipv6", action=argparse.BooleanOptionalAction, default=True,
                        help="vmlan's iperf3 figures over IPv6 too, beside IPv4")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every run")
    args = parser.parse_args()
    VMLAN_SRC = Path(args.vmlan_src).resolve()
    args.modes = [m for m in args.modes.split(",") if m]
    if set(args.modes) - set(MODES):
        parser.error(f"--modes: one or more of {', '.join(MODES)}")
    args.mtu = [int(m) for m in args.mtu.split(",")]
    kinds = [k for k in args.only.split(",") if k]
    for tool in ("iperf3", "nsenter", "taskset", "unshare", *(t for t in ("slirp4netns", "pasta") if t in kinds)):
        if shutil.which(tool) is None:
            raise SystemExit(f"ns_peers: {tool} not found (Debian: iperf3, slirp4netns, passt, util-linux)")
    run = Run()
    tun_mode = None
    if os.geteuid() == 0:
        run.unprivileged = NOBODY
        tun_mode = stat.S_IMODE(os.stat("/dev/net/tun").st_mode)
        os.chmod("/dev/net/tun", 0o666)
    tmp = Path(tempfile.mkdtemp(prefix="vmlan-ns-peers-"))
    os.chmod(tmp, 0o777)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        print(f"load before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
        if args.profile:
            profile(run, args, tmp)
            return 0
        if args.syscalls:
            syscalls(run, args, tmp)
            return 0
        if args.cpu:
            cpu(run, args, tmp)
            return 0
        if args.calls:
            calls(run, args, tmp)
            return 0
        results = {}
        for kind in kinds:
            print(f"measuring {kind} ...", flush=True)
            results[kind] = measure(kind, run, args, tmp)
        print(f"load after: {Path('/proc/loadavg').read_text().strip()}\n")
        report(results, args.mtu)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    except BenchError as exc:
        print(f"ns_peers: {exc}", file=sys.stderr)
        return 1
    finally:
        run.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
        if tun_mode is not None and tun_mode != 0o666:
            os.chmod("/dev/net/tun", tun_mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
