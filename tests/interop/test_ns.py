"""``vmlan ns`` as a process, with real peers, as root and as an unprivileged user (nobody).

Every run is checked at its end: CMD's status is vmlan's, nothing is written to the runtime directory,
no process of the run is left (each run carries a token in its environment, and /proc is searched
for it), the namespace is gone, and no interface with tap0's MAC exists in any network namespace the
test can see. Peers: the test's HTTP, UDP echo and DNS servers on loopback (tests/servers.py),
iperf3, and a client in another network namespace (a veth pair to the host) for hostfwd.

Unprivileged runs go through ``setpriv --reuid=nobody``; /dev/net/tun is made 0666 for them as
Debian's udev rule makes it (and put back afterwards). nobody needs a Python it may execute: this
one if its files are world-readable, else the system's /usr/bin/python3 (the same minor version)
with this venv's site-packages on PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import site
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from netns import sh, tag, wait_for
from servers import DnsServer, HttpServer, UdpEchoServer, expected_sha256

SRC = str(Path(__file__).resolve().parents[2] / "src")
TESTS = str(Path(__file__).resolve().parents[1])
TUN = "/dev/net/tun"
USERS = ("root", "nobody")

# Runs inside the namespace before CMD: one JSON line (pid, network namespace, tap0's MAC and MTU),
# then exec CMD, so the teardown checks know what to look for.
PROBE = textwrap.dedent("""\
    import fcntl, json, os, socket, struct, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    req = struct.pack("16s16x", b"tap0")
    mac = fcntl.ioctl(s, 0x8927, req)[18:24].hex(":")
    mtu = struct.unpack_from("i", fcntl.ioctl(s, 0x8921, req), 16)[0]
    print(json.dumps({"probe": {"pid": os.getpid(), "net": os.stat("/proc/self/ns/net").st_ino, "mac": mac,
                                "mtu": mtu, "uid": os.getuid()}}), flush=True)
    os.execvp(sys.argv[1], sys.argv[1:])
    """)


# -- who runs vmlan --------------------------------------------------------------------------------------
def _world_usable(path: str) -> bool:
    """Can a user with no relation to the files read (or run) ``path``? Every directory above it must
    be searchable by others."""
    real = Path(os.path.realpath(path))
    for parent in real.parents:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
    return bool(os.stat(real).st_mode & stat.S_IROTH)


def _python_for_nobody() -> tuple[str, list[str]]:
    """(interpreter, extra PYTHONPATH entries) that nobody can use to run vmlan."""
    if _world_usable(sys.executable) and _world_usable(sysconfig.get_paths()["stdlib"]):
        return sys.executable, []
    system = "/usr/bin/python3"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if os.path.exists(system):
        out = subprocess.run([system, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30)
        packages = [p for p in site.getsitepackages() if _world_usable(p)]
        if out.stdout.strip() == version and packages:
            return system, packages
    pytest.fail(f"no Python {version} that user nobody may run (this one is {sys.executable})", pytrace=False)


@dataclass
class Who:
    name: str
    uid: int
    gid: int
    python: str
    prefix: list[str]
    pythonpath: list[str]

    def env(self, runtime_dir: str, token: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XDG_"))}
        env.update(PYTHONPATH=os.pathsep.join([SRC, TESTS, *self.pythonpath]), XDG_RUNTIME_DIR=runtime_dir,
                   VMLAN_NS_TEST=token, PYTHONDONTWRITEBYTECODE="1")
        return env


@pytest.fixture(scope="module")
def tun_for_everyone() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.fail("these tests switch to user nobody and create namespaces: run them as root (CI does)",
                    pytrace=False)
    mode = stat.S_IMODE(os.stat(TUN).st_mode)
    if mode != 0o666:
        os.chmod(TUN, 0o666)
    yield
    if mode != 0o666:
        os.chmod(TUN, mode)


@pytest.fixture(params=USERS)
def who(request: pytest.FixtureRequest, tun_for_everyone: None) -> Who:
    return _who(request.param)


def _who(name: str) -> Who:
    if name == "root":
        return Who("root", 0, 0, sys.executable, [], [])
    python, extra = _python_for_nobody()
    return Who("nobody", 65534, 65534, python, ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                                "--"], extra)


# -- a run of vmlan ns -----------------------------------------------------------------------------------
@dataclass
class NsRun:
    who: Who
    proc: subprocess.Popen[str]
    runtime_dir: str
    token: str
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    readers: list[threading.Thread] = field(default_factory=list)

    def _read(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            with self.cond:
                lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_line(self, pattern: str, stream: str = "out", timeout: float = 30) -> re.Match[str]:
        lines = self.out if stream == "out" else self.err
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in lines:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not any(r.is_alive() for r in self.readers)):
                    raise AssertionError(f"no line matching {pattern!r} on std{stream}:\nstdout:\n"
                                         + "\n".join(self.out) + "\nstderr:\n" + "\n".join(self.err))
                self.cond.wait(min(left, 0.5))

    def probe(self) -> dict[str, Any]:
        line = self.wait_line(r'^\{"probe"').string
        result: dict[str, Any] = json.loads(line)["probe"]
        return result

    def finish(self, timeout: float = 120) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("vmlan ns did not end:\n" + "\n".join(self.err)) from None
        for reader in self.readers:
            reader.join(10)
        text = "\n".join(self.err)
        assert "Traceback" not in text, text
        return code

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)


@pytest.fixture
def vmlan_ns() -> Iterator[Any]:
    runs: list[NsRun] = []

    def start(who: Who, *args: str, env: dict[str, str] | None = None) -> NsRun:
        runtime_dir = tempfile.mkdtemp(prefix="vmlan-ns-rt-")
        os.chown(runtime_dir, who.uid, who.gid)
        token = secrets.token_hex(8)
        argv = [*who.prefix, who.python, "-m", "vmlan", "ns", *args]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**who.env(runtime_dir, token), **(env or {})}, cwd="/")
        run = NsRun(who, proc, runtime_dir, token)
        for stream, lines in ((proc.stdout, run.out), (proc.stderr, run.err)):
            reader = threading.Thread(target=run._read, args=(stream, lines), daemon=True)
            reader.start()
            run.readers.append(reader)
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        shutil.rmtree(run.runtime_dir, ignore_errors=True)


def cmd(who: Who, script: str, *args: str) -> list[str]:
    """``-- PROBE python -c script args``: CMD as a Python script, run with an interpreter ``who`` may run."""
    return ["--", who.python, "-c", PROBE, who.python, "-c", textwrap.dedent(script), *args]


# -- teardown checks -------------------------------------------------------------------------------------
def _netns_holders() -> dict[int, int]:
    """network namespace inode -> a PID in it, for every process the test can see."""
    found: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                found.setdefault(os.stat(f"/proc/{entry}/ns/net").st_ino, int(entry))
    return found


def _processes_with(token: str) -> list[int]:
    found = []
    needle = f"VMLAN_NS_TEST={token}".encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    found.append(int(entry))
    return found


def _interfaces_with_mac(mac: str) -> list[str]:
    """Interfaces with this MAC in any network namespace visible here (processes' and named ones)."""
    paths = [f"/proc/{pid}/ns/net" for pid in _netns_holders().values()]
    if os.path.isdir("/run/netns"):
        paths += [f"/run/netns/{name}" for name in os.listdir("/run/netns")]
    hits = []
    for path in paths:
        out = subprocess.run(["nsenter", f"--net={path}", "ip", "-o", "link"], capture_output=True, text=True,
                             timeout=30)
        hits += [f"{path}: {line}" for line in out.stdout.splitlines() if mac in line.lower()]
    return hits


def assert_clean(run: NsRun, probe: dict[str, Any] | None, vmlan_files_before: bool) -> None:
    """After vmlan ns exited: no process of the run, no namespace, no tap0, no files."""
    assert run.proc.returncode is not None
    assert _processes_with(run.token) == [], "processes of the run are left"
    assert os.listdir(run.runtime_dir) == [], "files left in the runtime directory"
    assert os.path.exists(f"/tmp/vmlan-{run.who.uid}") == vmlan_files_before
    if probe is not None:
        assert not os.path.exists(f"/proc/{probe['pid']}") or (
            os.stat(f"/proc/{probe['pid']}/ns/net").st_ino != probe["net"]), "CMD is left"
        assert probe["net"] not in _netns_holders(), "the namespace is left"
        assert _interfaces_with_mac(probe["mac"]) == []


def vmlan_dir_exists(who: Who) -> bool:
    return os.path.exists(f"/tmp/vmlan-{who.uid}")


# -- the tests -------------------------------------------------------------------------------------------
def test_http_udp_and_dns_from_inside_through_the_gateway(who: Who, vmlan_ns: Any) -> None:
    """urllib to the host's loopback via 10.0.2.2 (1 MB, checksummed), a UDP exchange with an echo
    server, and a name resolved through /etc/resolv.conf -> 10.0.2.3 -> the test's DNS server."""
    with open("/etc/resolv.conf", "rb") as fh:
        host_resolv = fh.read()
    before = vmlan_dir_exists(who)
    with HttpServer() as http, UdpEchoServer() as udp, DnsServer() as dns:
        run = vmlan_ns(who, "-netdev", f"user,dns-server=127.0.0.1:{dns.port}", *cmd(who, """
            import hashlib, json, socket, sys, urllib.request
            http, udp = int(sys.argv[1]), int(sys.argv[2])
            body = urllib.request.urlopen(f"http://10.0.2.2:{http}/blob/1000000/ns", timeout=30).read()
            whoami = urllib.request.urlopen(f"http://10.0.2.2:{http}/whoami", timeout=30).read().decode().split()
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(10)
            echoed = []
            for size in (1, 100, 1400, 8000):
                s.sendto(bytes([size % 251]) * size, ("10.0.2.2", udp))
                data, src = s.recvfrom(65536)
                echoed.append([len(data), data == bytes([size % 251]) * size, src[0]])
            addrs = sorted({a[4][0] for a in socket.getaddrinfo("test.vmlan.example", 80, socket.AF_INET)})
            print(json.dumps({"sha": hashlib.sha256(body).hexdigest(), "whoami": whoami[0], "udp": echoed,
                              "dns": addrs, "resolv": open("/etc/resolv.conf").read()}), flush=True)
            """, str(http.port), str(udp.port)))
        probe = run.probe()
        result = json.loads(run.wait_line(r'^\{"sha"').string)
        assert run.finish() == 0, run.stderr
    assert probe["uid"] == 0 and probe["mtu"] == 1500
    assert result == {"sha": expected_sha256(1000000, "ns"), "whoami": "127.0.0.1",
                      "udp": [[1, True, "10.0.2.2"], [100, True, "10.0.2.2"], [1400, True, "10.0.2.2"],
                              [8000, True, "10.0.2.2"]],
                      "dns": ["10.99.0.7"], "resolv": result["resolv"]}
    assert result["resolv"].splitlines()[1] == "nameserver 10.0.2.3"
    assert {d.source[0] for d in udp.datagrams()} == {"127.0.0.1"}
    with open("/etc/resolv.conf", "rb") as fh:
        assert fh.read() == host_resolv
    assert run.stderr == ""  # quiet by default: CMD's stderr is the user's
    assert_clean(run, probe, before)


def _iperf3_server() -> tuple[subprocess.Popen[str], int]:
    """A one-off iperf3 server on 127.0.0.1 (a free port found by binding it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["iperf3", "-s", "-1", "--forceflush", "-B", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert server.stdout is not None
    for line in server.stdout:
        if "Server listening" in line:
            return server, port
    raise AssertionError(f"iperf3 -s did not start (status {server.wait()})")


@pytest.mark.parametrize("reverse", [False, True], ids=["ns-to-host", "host-to-ns"])
def test_iperf3_to_the_hosts_loopback(who: Who, vmlan_ns: Any, reverse: bool) -> None:
    before = vmlan_dir_exists(who)
    server, port = _iperf3_server()
    try:
        extra = ["-R"] if reverse else []
        run = vmlan_ns(who, "--", "iperf3", "-c", "10.0.2.2", "-p", str(port), "-t", "2", "-J", *extra)
        code = run.finish()
        assert code == 0, run.stderr + "\n".join(run.out)
        report = json.loads("\n".join(run.out))
        rate = report["end"]["sum_received"]["bits_per_second"]
        print(f"iperf3 {'host->ns' if reverse else 'ns->host'} as {who.name}: {rate / 1e9:.2f} Gb/s")
        assert rate > 100e6
    finally:
        server.kill()
        server.wait()
    assert_clean(run, None, before)


@pytest.fixture
def client_namespace() -> Iterator[tuple[str, str, str]]:
    """A namespace joined to the host by a veth pair: (name, host-side address, client address)."""
    t = tag()
    name, host_if, ns_if = f"vmlt-c-{t}", f"vh{t}", f"vc{t}"
    octet = int(t[:2], 16)
    host_addr, client_addr = f"10.123.{octet}.1", f"10.123.{octet}.2"
    sh(f"ip netns add {name}", f"ip link add {host_if} type veth peer name {ns_if} netns {name}",
       f"ip addr add {host_addr}/30 dev {host_if}", f"ip link set {host_if} up",
       f"ip -n {name} addr add {client_addr}/30 dev {ns_if}", f"ip -n {name} link set {ns_if} up",
       f"ip -n {name} link set lo up")
    yield name, host_addr, client_addr
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def test_hostfwd_into_the_namespace_keeps_the_clients_address(who: Who, vmlan_ns: Any,
                                                               client_namespace: tuple[str, str, str]) -> None:
    client_ns, host_addr, client_addr = client_namespace
    before = vmlan_dir_exists(who)
    run = vmlan_ns(who, "-v", "-netdev", f"user,hostfwd=tcp:{host_addr}:0-:80", *cmd(who, """
        import socket
        srv = socket.create_server(("0.0.0.0", 80))
        print("listening", flush=True)
        conn, peer = srv.accept()
        conn.sendall(f"{peer[0]} {peer[1]}\\n".encode())
        conn.close()
        print("client", peer[0], flush=True)
        """))
    port = int(run.wait_line(rf"forwarding tcp {re.escape(host_addr)}:(\d+) -> guest 10\.0\.2\.100:80", "err")
               .group(1))
    probe = run.probe()
    run.wait_line("^listening$")
    fetch = subprocess.run(["ip", "netns", "exec", client_ns, sys.executable, "-c",
                            "import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 10);"
                            " print(s.makefile().readline().strip())", host_addr, str(port)],
                           capture_output=True, text=True, timeout=30)
    assert fetch.returncode == 0, fetch.stderr
    assert fetch.stdout.split()[0] == client_addr  # the address; the stack picks its own source port
    assert run.wait_line(r"^client ").string == f"client {client_addr}"
    assert run.finish() == 0, run.stderr
    assert_clean(run, probe, before)


@pytest.mark.parametrize(("script", "status"), [
    ("import sys; sys.exit(0)", 0),
    ("import sys; sys.exit(3)", 3),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 128 + signal.SIGKILL),
])
def test_the_exit_status_is_cmds(who: Who, vmlan_ns: Any, script: str, status: int) -> None:
    before = vmlan_dir_exists(who)
    run = vmlan_ns(who, *cmd(who, script))
    probe = run.probe()
    assert run.finish() == status, run.stderr
    assert run.stderr == ""
    assert_clean(run, probe, before)


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 7),
                                             (signal.SIGHUP, 128 + signal.SIGHUP)])
def test_signals_to_vmlan_reach_cmd(who: Who, vmlan_ns: Any, sig: int, status: int) -> None:
    """SIGTERM and SIGHUP kill CMD (default actions); CMD's handler for SIGINT exits 7."""
    before = vmlan_dir_exists(who)
    run = vmlan_ns(who, *cmd(who, """
        import signal, sys
        signal.signal(signal.SIGINT, lambda *a: sys.exit(7))
        print("ready", flush=True)
        while True:
            signal.pause()
        """))
    probe = run.probe()
    run.wait_line("^ready$")
    run.proc.send_signal(sig)
    assert run.finish() == status, run.stderr
    assert_clean(run, probe, before)


def test_a_command_that_does_not_exist_is_127_with_one_line(vmlan_ns: Any, tun_for_everyone: None) -> None:
    who = _who("nobody")
    run = vmlan_ns(who, "--", "/nonexistent/vmlan-cmd", "x")
    assert run.finish() == 127
    assert run.stderr == "vmlan: ns: /nonexistent/vmlan-cmd: No such file or directory"
    assert_clean(run, None, vmlan_dir_exists(who))


def test_a_hostfwd_port_in_use_fails_before_cmd_runs(who: Who, vmlan_ns: Any, tmp_path: Path) -> None:
    before = vmlan_dir_exists(who)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        marker = Path(tempfile.mkdtemp(prefix="vmlan-ns-m-")) / "ran"
        os.chown(marker.parent, who.uid, who.gid)
        run = vmlan_ns(who, "-netdev", f"user,hostfwd=tcp:127.0.0.1:{port}-:80", "--", "touch", str(marker))
        assert run.finish() == 1
    assert run.stderr == (f"vmlan: -netdev user,id=user0: could not set up host forwarding rule "
                          f"'tcp:127.0.0.1:{port}': Address already in use")
    assert not marker.exists()
    shutil.rmtree(marker.parent)
    assert_clean(run, None, before)


def spawn_target(who: Who) -> subprocess.Popen[bytes]:
    """A process in a network namespace of its own (``unshare -rn`` as nobody, ``unshare -n`` as root)."""
    argv = ["unshare", "-n", "sleep", "infinity"] if who.name == "root" else [*who.prefix, "unshare", "-rn", "sleep",
                                                                               "infinity"]
    proc = subprocess.Popen(argv)
    ours = os.stat("/proc/self/ns/net").st_ino
    wait_for(lambda: os.stat(f"/proc/{proc.pid}/ns/net").st_ino != ours and
             os.readlink(f"/proc/{proc.pid}/exe").endswith("sleep"), what="the target's namespace")
    return proc


@pytest.fixture
def target(who: Who) -> Iterator[subprocess.Popen[bytes]]:
    proc = spawn_target(who)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _in_target(pid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", "-t", str(pid), "-n", *argv], capture_output=True, text=True, timeout=60)


def test_attach_gives_a_running_process_tap0_until_it_exits(who: Who, vmlan_ns: Any,
                                                            target: subprocess.Popen[bytes]) -> None:
    before = vmlan_dir_exists(who)
    with HttpServer() as http:
        run = vmlan_ns(who, "-v", "--mtu", "65520", "--attach", str(target.pid))
        run.wait_line(rf"ns: attached to process {target.pid}: tap0 10\.0\.2\.100/24 mtu 65520", "err")
        link = _in_target(target.pid, "ip", "-o", "link", "show", "tap0")
        assert "mtu 65520" in link.stdout and "UP" in link.stdout, link.stderr
        mac = re.search(r"link/ether ([0-9a-f:]{17})", link.stdout)
        assert mac is not None
        assert "default via 10.0.2.2 dev tap0" in _in_target(target.pid, "ip", "route").stdout
        got = _in_target(target.pid, sys.executable, "-c", "import sys, urllib.request; print(urllib.request.urlopen("
                         "sys.argv[1], timeout=30).read().decode().split()[0])", f"http://10.0.2.2:{http.port}/whoami")
        assert got.stdout.strip() == "127.0.0.1", got.stderr
        run.proc.send_signal(signal.SIGUSR1)
        run.wait_line(r"^ns0 \(tap0\): rx_gso=\d+ gso_max=\d+", "err")
        net = os.stat(f"/proc/{target.pid}/ns/net").st_ino
        target.kill()
        target.wait()
        assert run.finish() == 0, run.stderr
    run.wait_line(rf"ns: process {target.pid} exited", "err")
    assert net not in _netns_holders()
    assert_clean(run, {"pid": target.pid, "net": net, "mac": mac.group(1)}, before)


def test_sigterm_ends_an_attach_and_takes_tap0_away(who: Who, vmlan_ns: Any, target: subprocess.Popen[bytes]) -> None:
    before = vmlan_dir_exists(who)
    run = vmlan_ns(who, "-v", "--attach", str(target.pid))
    run.wait_line(rf"ns: attached to process {target.pid}", "err")
    assert _in_target(target.pid, "ip", "-o", "link", "show", "tap0").returncode == 0
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 0, run.stderr
    assert target.poll() is None  # the process goes on, without the interface
    gone = _in_target(target.pid, "ip", "-o", "link", "show", "tap0")
    assert gone.returncode != 0 and "does not exist" in gone.stderr
    assert_clean(run, None, before)


def test_attach_to_a_process_that_does_not_exist(vmlan_ns: Any, tun_for_everyone: None) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    run = vmlan_ns(_who("nobody"), "--attach", str(proc.pid))
    assert run.finish() == 1
    assert run.stderr == f"vmlan: ns: --attach {proc.pid}: No such process"


GB = 10**9
UPLOAD = """
    import hashlib, json, sys, http.client
    sys.path.insert(0, sys.argv[3])
    from servers import blob_chunks
    port, size = int(sys.argv[1]), int(sys.argv[2])
    conn = http.client.HTTPConnection("10.0.2.2", port, timeout=120)
    conn.request("GET", f"/blob/{size}/down")
    resp = conn.getresponse()
    digest = hashlib.sha256()
    while chunk := resp.read(1 << 20):
        digest.update(chunk)
    conn.request("PUT", "/up", body=blob_chunks(size, "up"), headers={"Content-Length": str(size)})
    reply = conn.getresponse().read().decode().split()
    print(json.dumps({"down": digest.hexdigest(), "up": reply}), flush=True)
    """


def test_gso_64k_segments_and_1_gb_each_way_keep_their_checksums(vmlan_ns: Any, tun_for_everyone: None) -> None:
    """The kernel hands vmlan 64 KiB TCP segments (TapPort's rx_gso/gso_max, printed by -v at exit),
    vmlan hands the kernel super-segments back (tx_gso), and 1 GB each way arrives intact."""
    who = _who("nobody")
    before = vmlan_dir_exists(who)
    with HttpServer() as http:
        run = vmlan_ns(who, "-v", *cmd(who, UPLOAD, str(http.port), str(GB), TESTS))
        probe = run.probe()
        result = json.loads(run.wait_line(r'^\{"down"', timeout=300).string)
        assert run.finish(300) == 0, run.stderr
        upload = http.wait_upload("/up")
    assert result == {"down": expected_sha256(GB, "down"), "up": [str(GB), expected_sha256(GB, "up")]}
    assert (upload.size, upload.sha256, upload.client[0]) == (GB, expected_sha256(GB, "up"), "127.0.0.1")
    m = run.wait_line(r"^ns0 \(tap0\): rx_gso=(\d+) gso_max=(\d+) gso_size=(\d+) rx_csum_partial=\d+ tx_gso=(\d+)",
                      "err")
    rx_gso, gso_max, gso_size, tx_gso = map(int, m.groups())
    print(f"rx_gso={rx_gso} gso_max={gso_max} gso_size={gso_size} tx_gso={tx_gso}")
    assert gso_max > 60000 and gso_size == 1460 and rx_gso > GB // 65536 // 4 and tx_gso > 0
    assert_clean(run, probe, before)


@pytest.mark.parametrize("moment", [None, r"^vmlan: tap ns0: ", r"^vmlan: ns: process \d+: "],
                         ids=["at-once", "tap-attached", "cmd-started"])
def test_a_sigterm_at_any_moment_of_startup_leaves_nothing_behind(vmlan_ns: Any, tun_for_everyone: None,
                                                                   moment: str | None) -> None:
    """At once it may find vmlan before its handlers (killed, no child yet) or the child setting up
    (passed on: the child dies of it); later, CMD dies of it. Always SIGTERM's status, nothing left."""
    who = _who("nobody")
    run = vmlan_ns(who, "-v", "--", "sleep", "infinity")
    if moment is not None:
        run.wait_line(moment, "err")
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() in (-signal.SIGTERM, 128 + signal.SIGTERM), run.stderr
    assert "vmlan: ns:" not in run.stderr.replace("vmlan: ns: process", ""), run.stderr
    assert_clean(run, None, vmlan_dir_exists(who))


def test_a_tun_device_nobody_may_open_is_one_line_and_status_1(vmlan_ns: Any, tun_for_everyone: None) -> None:
    who = _who("nobody")
    os.chmod(TUN, 0o600)
    try:
        run = vmlan_ns(who, "--", "true")
        assert run.finish() == 1
    finally:
        os.chmod(TUN, 0o666)
    assert run.stderr == ("vmlan: ns: could not open /dev/net/tun: Permission denied (an unprivileged user needs it "
                          "mode 0666, as Debian's udev rules make it)")
    assert_clean(run, None, vmlan_dir_exists(who))


def test_attach_refuses_a_process_on_vmlans_own_network(vmlan_ns: Any, tun_for_everyone: None) -> None:
    """As root, tap0 and a default route would land on the host's own network: refused."""
    run = vmlan_ns(_who("root"), "--attach", str(os.getpid()))
    assert run.finish() == 1
    assert run.stderr == f"vmlan: ns: --attach {os.getpid()}: the process is in vmlan's own network namespace"
    assert "tap0" not in sh("ip -o link")
