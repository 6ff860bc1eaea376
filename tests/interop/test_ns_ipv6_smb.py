"""``vmlan ns`` as an IPv6 peer of the user stack, several namespaces on one stack, and smb=, with real
peers: the kernel's IPv6 (SLAAC from the stack's router advertisement, NDP, ICMPv6), Debian's
``dhclient -6 -S`` (isc-dhcp-client) for stateless DHCPv6, glibc's resolver, busybox ``ping6``,
``smbclient`` against the smbd that smb=DIR starts, and the test's servers on the host's ``::1``.

Runs go through tests/interop/test_ns.py's machinery (as root and as nobody, with its teardown checks:
no process, namespace, interface or file of the run is left).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servers import _HEADER, QTYPE_AAAA, DnsServer, HttpServer, _decode_name, _HTTPServer, expected_sha256
from tests.interop import test_ns as base
from tests.interop.test_ns import (
    Who,
    _in_target,
    _netns_holders,
    _who,
    assert_clean,
    cmd,
    spawn_target,
    vmlan_dir_exists,
)

# test_ns.py's fixtures, used here by name
tun_for_everyone, vmlan_ns, who = base.tun_for_everyone, base.vmlan_ns, base.who

NS0, NS1, NS2 = "fec0::5054:ff:fe12:3456", "fec0::5054:ff:fe12:3457", "fec0::5054:ff:fe12:3458"
MB = 10**6


# -- IPv6 servers on the host's ::1 ------------------------------------------------------------------------
class _HTTP6Server(_HTTPServer):
    address_family = socket.AF_INET6


class Http6Server(HttpServer):
    """tests/servers.py's HTTP server on ``::1``."""

    def __init__(self) -> None:
        super().__init__("127.0.0.1")
        self.host = "::1"

    def url(self, path: str = "/") -> str:
        return f"http://[{self.host}]:{self.port}{path}"

    def start(self) -> None:
        import threading

        self._httpd = _HTTP6Server(self, (self.host, self.port))
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()


class Dns6Server(DnsServer):
    """tests/servers.py's DNS server, answering AAAA queries from ``aaaa`` too."""

    def __init__(self, aaaa: dict[str, str]) -> None:
        super().__init__("::1")
        self.aaaa = {name.lower().rstrip(".") + ".": socket.inet_pton(socket.AF_INET6, a) for name, a in aaaa.items()}

    def answer(self, msg: bytes, transport: str, client: tuple[str, int]) -> bytes | None:
        with contextlib.suppress(ValueError, struct.error):
            qid, flags, qd, _, _, _ = _HEADER.unpack_from(msg)
            name, offset = _decode_name(msg, _HEADER.size)
            qtype = struct.unpack_from("!H", msg, offset)[0]
            if qd == 1 and not flags & 0x8000 and qtype == QTYPE_AAAA and name in self.aaaa:
                super().answer(msg, transport, client)  # recorded like every query
                head = _HEADER.pack(qid, 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080, 1, 1, 0, 0)
                record = b"\xc0\x0c" + struct.pack("!HHIH", QTYPE_AAAA, 1, self.ttl, 16) + self.aaaa[name]
                return head + msg[_HEADER.size : offset + 4] + record
        return super().answer(msg, transport, client)


def _closed_port6() -> socket.socket:
    """A TCP socket bound on ::1 and not listening: its port is closed for as long as it is held."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.bind(("::1", 0))
    return sock


# -- the namespace's IPv6 as the kernel makes it -------------------------------------------------------------
SLAAC = """
    import json, subprocess, time
    def sh(*a):
        return subprocess.run(a, capture_output=True, text=True, check=True).stdout
    def settle(pred, what):
        deadline = time.monotonic() + 20
        while not pred():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)
    at_start = sh("ip", "-6", "-o", "addr", "show", "dev", "tap0")
    settle(lambda: "tentative" not in sh("ip", "-6", "-o", "addr", "show", "dev", "tap0"), "DAD")
    addrs = sh("ip", "-6", "-o", "addr", "show", "dev", "tap0")
    routes = sh("ip", "-6", "route", "show", "dev", "tap0")
    mtu6 = lambda: int(open("/proc/sys/net/ipv6/conf/tap0/mtu").read())
    first_mtu = mtu6()
    # A link MTU above the stack's: the kernel takes the link's, until the next RA says the stack's.
    sh("ip", "link", "set", "tap0", "down")
    sh("ip", "link", "set", "tap0", "mtu", "9000")
    raised = mtu6()
    sh("ip", "link", "set", "tap0", "up")
    settle(lambda: mtu6() == 1500, "the RA's MTU")
    conf = {n: open(f"/proc/sys/net/ipv6/conf/tap0/{n}").read().strip()
            for n in ("accept_dad", "accept_ra", "autoconf", "disable_ipv6", "forwarding")}
    print(json.dumps({"at_start": at_start, "addrs": addrs, "routes": routes, "first_mtu": first_mtu,
                      "raised": raised, "conf": conf, "resolv": open("/etc/resolv.conf").read()}), flush=True)
    """


def test_slaac_address_default_route_and_mtu_come_from_the_stacks_ra(who: Who, vmlan_ns: Any) -> None:
    before = vmlan_dir_exists(who)
    run = vmlan_ns(who, "-v", *cmd(who, SLAAC))
    probe = run.probe()
    result = json.loads(run.wait_line(r'^\{"at_start"', timeout=60).string)
    assert run.finish() == 0, run.stderr
    assert probe["mac"] == "52:54:00:12:34:56"
    # CMD started with the SLAAC and link-local addresses usable: no DAD on tap0, nothing tentative
    start = [line for line in result["at_start"].splitlines() if NS0 in line]
    assert len(start) == 1 and "tentative" not in result["at_start"] and "optimistic" not in result["at_start"], \
        result["at_start"]
    (slaac,) = [line for line in result["addrs"].splitlines() if "fec0::" in line]
    m = re.search(rf"inet6 {re.escape(NS0)}/64 scope site dynamic mngtmpaddr .*valid_lft (\d+)sec "
                  r"preferred_lft (\d+)sec", slaac)
    assert m is not None, slaac  # dynamic: from the RA's prefix (valid 86400 s, preferred 14400 s)
    assert 86000 < int(m.group(1)) <= 86400 and 14000 < int(m.group(2)) <= 14400
    assert re.search(r"inet6 fe80::5054:ff:fe12:3456/64 scope link", result["addrs"])
    assert len(result["addrs"].splitlines()) == 2  # nothing static from vmlan
    assert re.search(r"^default via fe80::2 proto ra metric \d+ expires \d+sec hoplimit 64 pref medium$",
                     result["routes"], re.M), result["routes"]
    assert re.search(r"^fec0::/64 proto kernel metric 256 expires \d+sec pref medium$", result["routes"], re.M)
    assert (result["first_mtu"], result["raised"]) == (1500, 9000)  # then 1500 again: from the RA
    assert result["conf"] == {"accept_dad": "0", "accept_ra": "1", "autoconf": "1", "disable_ipv6": "0",
                              "forwarding": "0"}
    assert result["resolv"].splitlines()[1:3] == ["nameserver 10.0.2.3", "nameserver fec0::3"]
    assert re.search(rf"ns: process \d+: tap0 10\.0\.2\.100/24 mtu 1500, gateway 10\.0\.2\.2, DNS 10\.0\.2\.3, "
                     rf"IPv6 {re.escape(NS0)}/64 via fe80::2, DNS fec0::3, MAC 52:54:00:12:34:56", run.stderr)
    assert_clean(run, probe, before)


def test_with_ipv6_off_the_namespace_gets_no_ipv6_config(vmlan_ns: Any, tun_for_everyone: None) -> None:
    who = _who("nobody")
    run = vmlan_ns(who, "-netdev", "user,ipv6=off", *cmd(who, """
        import json, subprocess
        print(json.dumps({"addrs": subprocess.run(["ip", "-6", "-o", "addr", "show", "scope", "global"],
                                                  capture_output=True, text=True).stdout,
                          "resolv": open("/etc/resolv.conf").read()}), flush=True)
        """))
    probe = run.probe()
    result = json.loads(run.wait_line(r'^\{"addrs"').string)
    assert run.finish() == 0, run.stderr
    assert result == {"addrs": "", "resolv": "# vmlan ns: the user-mode stack's DNS forwarder\nnameserver 10.0.2.3\n"}
    assert_clean(run, probe, vmlan_dir_exists(who))


DHCLIENT = """
    import json, os, subprocess, sys, time
    work = sys.argv[1]
    hook = os.path.join(work, "hook.sh")
    with open(hook, "w") as fh:
        fh.write('#!/bin/sh\\necho "$reason|$new_dhcp6_name_servers|$new_dhcp6_domain_search" >> %s/seen\\n' % work)
    os.chmod(hook, 0o755)
    proc = subprocess.Popen(["dhclient", "-6", "-S", "-d", "-v", "-sf", hook, "-lf", f"{work}/leases",
                             "-pf", f"{work}/pid", "tap0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 30
    seen = ""
    while time.monotonic() < deadline and "fec0::" not in seen:
        time.sleep(0.05)
        if os.path.exists(f"{work}/seen"):
            seen = open(f"{work}/seen").read()
    proc.terminate()
    err = proc.communicate(timeout=30)[1]
    print(json.dumps({"seen": seen, "log": err}), flush=True)
    """


def test_stateless_dhcpv6_gives_debians_dhclient_the_dns_server_and_search_list(who: Who, vmlan_ns: Any) -> None:
    before = vmlan_dir_exists(who)
    work = tempfile.mkdtemp(prefix="vmlan-ns-dhc-")
    os.chown(work, who.uid, who.gid)
    try:
        run = vmlan_ns(who, "-netdev", "user,dnssearch=a.vmlan.example,dnssearch=b.vmlan.example",
                       *cmd(who, DHCLIENT, work))
        probe = run.probe()
        result = json.loads(run.wait_line(r'^\{"seen"', timeout=60).string)
        assert run.finish() == 0, run.stderr
    finally:
        shutil.rmtree(work)
    informed = [line for line in result["seen"].splitlines() if "fec0::" in line]
    # dhclient-script hears a stateless Reply as RENEW6 (dhc6.c: start_informed -> "RENEW6")
    assert informed and informed[0].split("|") == ["RENEW6", "fec0::3", "a.vmlan.example. b.vmlan.example."], result
    assert "XMT: Info-Request on tap0" in result["log"], result["log"]
    assert "RCV: Reply message on tap0 from fe80::2." in result["log"], result["log"]
    assert_clean(run, probe, before)


def test_an_aaaa_name_resolves_through_fec0_3_from_an_upstream_on_the_hosts_ipv6_loopback(
        who: Who, vmlan_ns: Any) -> None:
    """ipv4=off: resolv.conf names only fec0::3; glibc asks it, the stack asks [::1]:PORT."""
    before = vmlan_dir_exists(who)
    with Dns6Server({"six.vmlan.example": "2001:db8::77"}) as dns:
        run = vmlan_ns(who, "-netdev", f"user,ipv4=off,dns-server=[::1]:{dns.port}", *cmd(who, """
            import json, socket
            addrs = sorted({a[4][0] for a in socket.getaddrinfo("six.vmlan.example", 80, socket.AF_INET6)})
            v4 = [l for l in open("/proc/net/route").read().splitlines()[1:]]
            print(json.dumps({"aaaa": addrs, "resolv": open("/etc/resolv.conf").read(), "v4routes": v4}), flush=True)
            """))
        probe = run.probe()
        result = json.loads(run.wait_line(r'^\{"aaaa"').string)
        assert run.finish() == 0, run.stderr
        queries = [q for q in dns.queries() if q.qtype == QTYPE_AAAA]
    assert result == {"aaaa": ["2001:db8::77"], "v4routes": [],
                      "resolv": "# vmlan ns: the user-mode stack's DNS forwarder\nnameserver fec0::3\n"}
    assert queries and {(q.name, q.client[0]) for q in queries} == {("six.vmlan.example.", "::1")}
    assert_clean(run, probe, before)


DOWNLOAD6 = """
    import hashlib, json, sys, urllib.request
    port, size = int(sys.argv[1]), int(sys.argv[2])
    digest = hashlib.sha256()
    with urllib.request.urlopen(f"http://[fec0::2]:{port}/blob/{size}/v6", timeout=120) as resp:
        while chunk := resp.read(1 << 20):
            digest.update(chunk)
    whoami = urllib.request.urlopen(f"http://[fec0::2]:{port}/whoami", timeout=30).read().decode().split()[0]
    print(json.dumps({"sha": digest.hexdigest(), "whoami": whoami}), flush=True)
    """


def test_50_mb_over_ipv6_from_the_hosts_loopback_via_fec0_2(who: Who, vmlan_ns: Any) -> None:
    before = vmlan_dir_exists(who)
    with Http6Server() as http:
        run = vmlan_ns(who, *cmd(who, DOWNLOAD6, str(http.port), str(50 * MB)))
        probe = run.probe()
        result = json.loads(run.wait_line(r'^\{"sha"', timeout=180).string)
        assert run.finish() == 0, run.stderr
    assert result == {"sha": expected_sha256(50 * MB, "v6"), "whoami": "::1"}
    assert_clean(run, probe, before)


def test_hostfwd_over_ipv6_from_the_hosts_loopback_into_the_namespace(who: Who, vmlan_ns: Any) -> None:
    before = vmlan_dir_exists(who)
    with socket.socket(socket.AF_INET6) as free:  # not -v with port 0: info usernet at exit has no IPv6 (monitor.py)
        free.bind(("::1", 0))
        port = free.getsockname()[1]
    run = vmlan_ns(who, "-netdev", f"user,hostfwd=tcp:[::1]:{port}-[{NS0}]:80", *cmd(who, """
        import socket
        srv = socket.create_server(("::", 80), family=socket.AF_INET6)
        print("listening", flush=True)
        conn, peer = srv.accept()
        data = conn.recv(100)
        conn.sendall(f"{peer[0]} {peer[1]} ".encode() + data)
        conn.close()
        print("client", peer[0], flush=True)
        """))
    probe = run.probe()
    run.wait_line("^listening$")
    with socket.create_connection(("::1", port), timeout=10) as client:
        client.sendall(b"over-v6")
        client.shutdown(socket.SHUT_WR)
        reply = client.makefile("rb").read().decode().split()
    assert reply[0] == "fec0::2" and reply[2] == "over-v6"  # a loopback client comes from the gateway
    assert run.wait_line(r"^client ").string == "client fec0::2"
    assert run.finish() == 0, run.stderr
    assert_clean(run, probe, before)


ERRORS = """
    import errno, json, socket, sys, time
    port = int(sys.argv[1])
    t0 = time.monotonic()
    try:
        socket.create_connection(("fec0::2", port), timeout=10)
        tcp = "connected"
    except OSError as exc:
        tcp = errno.errorcode.get(exc.errno or 0, str(exc))
    tcp_took = time.monotonic() - t0
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u.settimeout(10)
    u.connect(("fec0::2", port))
    u.send(b"anyone?")
    t0 = time.monotonic()
    try:
        u.recv(100)
        udp = "answered"
    except OSError as exc:
        udp = errno.errorcode.get(exc.errno or 0, str(exc))
    udp_took = time.monotonic() - t0
    ping = __import__("subprocess").run(["busybox", "ping6", "-c", "1", "-W", "5", "fec0::2"],
                                        capture_output=True, text=True).stdout
    print(json.dumps({"tcp": tcp, "tcp_took": tcp_took, "udp": udp, "udp_took": udp_took, "ping": ping}), flush=True)
    """


def test_a_closed_port_on_fec0_2_is_refused_at_once_tcp_by_rst_udp_by_icmpv6(who: Who, vmlan_ns: Any) -> None:
    """TCP: the host's RST becomes the stack's RST. UDP: the host's ICMPv6 port unreachable comes back
    to the namespace as ICMPv6 (type 1, code 4), and the kernel there fails recv() with ECONNREFUSED."""
    before = vmlan_dir_exists(who)
    closed = _closed_port6()
    udp_closed = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        port = closed.getsockname()[1]
        with contextlib.suppress(OSError):
            udp_closed.bind(("::1", port))  # keep the UDP port too from being somebody's during the test
        udp_closed.close()
        run = vmlan_ns(who, *cmd(who, ERRORS, str(port)))
        probe = run.probe()
        result = json.loads(run.wait_line(r'^\{"tcp"', timeout=60).string)
        assert run.finish() == 0, run.stderr
    finally:
        closed.close()
    assert (result["tcp"], result["udp"]) == ("ECONNREFUSED", "ECONNREFUSED"), result
    assert result["tcp_took"] < 2 and result["udp_took"] < 2
    assert "1 packets received" in result["ping"], result["ping"]
    assert_clean(run, probe, before)


# -- several namespaces on one stack -------------------------------------------------------------------------
@pytest.fixture
def targets(who: Who) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [spawn_target(who), spawn_target(who)]
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _ping6(pid: int, addr: str) -> subprocess.CompletedProcess[str]:
    return _in_target(pid, "busybox", "ping6", "-c", "2", "-W", "5", addr)


PINGS = """
    import json, subprocess, sys
    def ping(cmd, addr):
        out = subprocess.run(["busybox", cmd, "-c", "2", "-W", "5", addr], capture_output=True, text=True).stdout
        return "2 packets received" in out
    print(json.dumps({a: ping("ping6" if ":" in a else "ping", a) for a in sys.argv[1:]}), flush=True)
    import signal
    signal.pause()
    """


def test_namespaces_on_one_stack_ping6_each_other_and_the_gateway(who: Who, vmlan_ns: Any,
                                                                    targets: list[subprocess.Popen[bytes]]) -> None:
    """CMD's namespace and two attached ones: each its own port, MAC and addresses (.100, .101, .102;
    the SLAAC address of each MAC); they reach each other over the hub, IPv6 and IPv4."""
    before = vmlan_dir_exists(who)
    a, b = targets
    run = vmlan_ns(who, "-v", "--attach", str(a.pid), "--attach", str(b.pid),
                   *cmd(who, PINGS, NS1, NS2, "fec0::2", "10.0.2.101", "10.0.2.102"))
    probe = run.probe()
    result = json.loads(run.wait_line(r'^\{"fec0', timeout=60).string)
    assert result == {NS1: True, NS2: True, "fec0::2": True, "10.0.2.101": True, "10.0.2.102": True}
    for pid, v4, v6, mac in ((a.pid, "10.0.2.101", NS1, "52:54:00:12:34:57"),
                             (b.pid, "10.0.2.102", NS2, "52:54:00:12:34:58")):
        run.wait_line(rf"ns: attached to process {pid}: tap0 {re.escape(v4)}/24 .* IPv6 {re.escape(v6)}/64 via "
                      rf"fe80::2, DNS fec0::3, MAC {mac}$", "err")
        addrs = _in_target(pid, "ip", "-6", "-o", "addr", "show", "dev", "tap0").stdout
        assert f"inet6 {v6}/64 scope site dynamic" in addrs, addrs
        assert "default via fe80::2 dev tap0 proto ra" in _in_target(pid, "ip", "-6", "route").stdout
    assert "2 packets received" in _ping6(a.pid, NS0).stdout  # into CMD's namespace
    assert "2 packets received" in _ping6(a.pid, NS2).stdout
    assert "2 packets received" in _ping6(b.pid, "fec0::2").stdout
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 128 + signal.SIGTERM, run.stderr
    # the attached processes go on, without tap0
    assert a.poll() is None and b.poll() is None
    assert _in_target(a.pid, "ip", "link", "show", "tap0").returncode != 0
    assert_clean(run, probe, before)


def test_attach_only_runs_until_every_attached_process_has_exited(who: Who, vmlan_ns: Any,
                                                                  targets: list[subprocess.Popen[bytes]]) -> None:
    before = vmlan_dir_exists(who)
    a, b = targets
    run = vmlan_ns(who, "-v", "--attach", str(a.pid), "--attach", str(b.pid))
    run.wait_line(rf"ns: attached to process {b.pid}: tap0 10\.0\.2\.101/24", "err")
    got = _ping6(b.pid, NS0)
    assert "2 packets received" in got.stdout, (got.stdout, _in_target(b.pid, "ip", "-6", "neigh").stdout,
                                                _in_target(a.pid, "ip", "-6", "neigh").stdout,
                                                _in_target(a.pid, "ip", "-6", "addr").stdout,
                                                _in_target(b.pid, "ip", "-6", "addr").stdout)
    nets = [os.stat(f"/proc/{p.pid}/ns/net").st_ino for p in (a, b)]
    a.kill()
    a.wait()
    run.wait_line(rf"ns: process {a.pid} exited", "err")
    assert run.proc.poll() is None  # b is still there: so is vmlan, and b's network
    assert "2 packets received" in _ping6(b.pid, "fec0::2").stdout
    b.kill()
    b.wait()
    assert run.finish() == 0, run.stderr
    assert not set(nets) & set(_netns_holders())
    assert_clean(run, None, before)


# -- smb=DIR -------------------------------------------------------------------------------------------------
def _smb_processes(marker: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as fh:
                line = fh.read().replace(b"\0", b" ").decode(errors="replace")
                if marker in line:
                    found.append(f"{entry}: {line}")
    return found


def test_smbclient_in_two_namespaces_lists_the_share_and_fetches_a_file(
        who: Who, vmlan_ns: Any, targets: list[subprocess.Popen[bytes]]) -> None:
    """``smbclient //10.0.2.4/qemu -N`` from each of two attached namespaces; after vmlan exits no smbd
    and no directory of its (TMPDIR/vmlan-smb.*) is left."""
    before = vmlan_dir_exists(who)
    share = Path(tempfile.mkdtemp(prefix="vmlan-ns-share-"))
    scratch = Path(tempfile.mkdtemp(prefix="vmlan-ns-tmp-"))  # vmlan's TMPDIR
    local = Path(tempfile.mkdtemp(prefix="vmlan-ns-got-"))
    blob = os.urandom(3 * MB + 123)
    try:
        share.chmod(0o755)
        (share / "blob.bin").write_bytes(blob)
        (share / "hello.txt").write_text("hello from the host\n")
        os.chown(scratch, who.uid, who.gid)
        a, b = targets
        run = vmlan_ns(who, "-v", "-netdev", f"user,smb={share}", "--attach", str(a.pid), "--attach", str(b.pid),
                       env={"TMPDIR": str(scratch)})
        run.wait_line(rf"ns: attached to process {b.pid}: ", "err")
        for n, pid in enumerate((a.pid, b.pid)):
            got = local / f"blob{n}.bin"
            out = _in_target(pid, "env", f"HOME={local}", "smbclient", "//10.0.2.4/qemu", "-N", "-c",
                             f"ls; get blob.bin {got}")
            assert out.returncode == 0, out.stdout + out.stderr
            listing = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ")}
            assert {"blob.bin", "hello.txt"} <= listing, out.stdout
            assert hashlib.sha256(got.read_bytes()).hexdigest() == hashlib.sha256(blob).hexdigest()
        (workdir,) = os.listdir(scratch)
        assert workdir.startswith("vmlan-smb.")
        for proc in (a, b):
            proc.kill()
            proc.wait()
        assert run.finish() == 0, run.stderr
        assert os.listdir(scratch) == [], "smb= left its directory"
        assert _smb_processes(str(scratch)) == [], "smb= left samba processes"
        assert_clean(run, None, before)
    finally:
        for path in (share, scratch, local):
            shutil.rmtree(path, ignore_errors=True)


def test_smbclient_from_cmds_namespace(vmlan_ns: Any, tun_for_everyone: None) -> None:
    who = _who("nobody")
    share = Path(tempfile.mkdtemp(prefix="vmlan-ns-share-"))
    scratch = Path(tempfile.mkdtemp(prefix="vmlan-ns-tmp-"))
    try:
        share.chmod(0o755)
        (share / "note.txt").write_text("x" * 100000)
        os.chown(scratch, who.uid, who.gid)
        run = vmlan_ns(who, "-netdev", f"user,smb={share}", *cmd(who, """
            import hashlib, json, os, subprocess, sys
            got = os.path.join(sys.argv[1], "got.txt")
            out = subprocess.run(["smbclient", "//10.0.2.4/qemu", "-N", "-c", f"ls; get note.txt {got}"],
                                 capture_output=True, text=True, env=dict(os.environ, HOME=sys.argv[1]))
            sha = hashlib.sha256(open(got, "rb").read()).hexdigest()
            os.unlink(got)
            print(json.dumps({"status": out.returncode, "ls": "note.txt" in out.stdout, "sha": sha}), flush=True)
            """, str(scratch)), env={"TMPDIR": str(scratch)})
        probe = run.probe()
        result = json.loads(run.wait_line(r'^\{"status"', timeout=60).string)
        assert run.finish() == 0, run.stderr
        assert result == {"status": 0, "ls": True, "sha": hashlib.sha256(b"x" * 100000).hexdigest()}
        assert os.listdir(scratch) == [] and _smb_processes(str(scratch)) == []
        assert_clean(run, probe, vmlan_dir_exists(who))
    finally:
        shutil.rmtree(share, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
