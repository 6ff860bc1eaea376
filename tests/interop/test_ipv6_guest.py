"""Real QEMU guests (TCG) speaking IPv6 to vmlan's user stack, with QEMU's own ``-netdev user`` (libslirp
4.7, Debian 12) as the reference: the same guest, the same commands, the same assertions, except where a
documented difference says otherwise (``QEMU_DIFFERENCES`` below, and the README's IPv6 section).

Every server a guest reaches runs in a network namespace the test creates (a "site"): HTTP on ``[::1]``
and ``127.0.0.1``, DNS on ``[::1]:53``. Whichever stack serves the guest runs in that namespace too:
``qemu-system-x86_64 -netdev user`` under ``ip netns exec`` (which also puts the site's resolv.conf,
``nameserver ::1``, over /etc/resolv.conf: libslirp sends what the guest asks ``fec0::3`` to the host's
first IPv6 resolver), or ``vmlan run`` with ``dns-server=[::1]:53`` and the guest attached over a unix
socket. Nothing leaves the machine and the host's own resolver is never asked.

The guest's IPv6 state is read from /proc (tests/guest/harness.py): SLAAC is the guest kernel's own, from
the router advertisement that answers its router solicitation.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from guest.harness import (
    SCOPE_LINK,
    SCOPE_SITE,
    Guest,
    MakeGuest,
    parse_if_inet6,
    parse_ipv6_route,
    parse_snmp6,
    slaac_address,
)
from netns import Namespaces, setns, sh
from servers import DnsServer, HttpServer, _decode_name, _HTTPServer
from tests.interop.guestnet import UDHCPC, user_lan

PREFIX = "fec0::/64"
HOST6, DNS6, ROUTER_LL = "fec0::2", "fec0::3", "fe80::2"
MAC = "52:54:00:12:34:56"
BACKENDS = ["qemu", "vmlan"]
NAME6, ADDR6 = "v6.vmlan.example", "2001:db8::6"  # documentation prefix: an answer, never a destination
NAME_BOTH, ADDR_BOTH4, ADDR_BOTH6 = "both.vmlan.example", "10.99.0.7", "2001:db8::7"
BLOB = 3_000_000
# What QEMU 7.2 with libslirp 4.7 does differently, each checked by a test below:
QEMU_DIFFERENCES = {
    "hostfwd": "QEMU's hostfwd= is IPv4 only ('Bad host address' for [::1]); vmlan forwards into IPv6",
    "ping-beyond": "libslirp 4.7 answers ICMPv6 echo for its own addresses only; vmlan relays the rest",
    "several-guests": "QEMU's -netdev user serves one guest; vmlan's stack serves every guest of the hub",
    "ra-mtu": "libslirp's RA has no MTU option (the guest keeps its link MTU); vmlan sends mtu=",
}

T = TypeVar("T")
VmlanRun = Callable[..., Any]


# ------------------------------------------------------------------------------------------- servers


class _Http6Server(_HTTPServer):
    address_family = socket.AF_INET6


class Http6Server(HttpServer):
    """tests/servers.py's HttpServer on an IPv6 address: ``::1``, or an address of a namespace the test
    created (servers.py binds 127.0.0.0/8 only)."""

    def __init__(self, host: str = "::1", port: int = 0) -> None:
        super().__init__("127.0.0.1", port)
        self.host = host

    def url(self, path: str = "/") -> str:
        return f"http://[{self.host}]:{self.port}{path}"

    def start(self) -> None:
        self._httpd = _Http6Server(self, (self.host, self.port))
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"http6-{self.port}", daemon=True)
        self._thread.start()


class Dns6Server(DnsServer):
    """tests/servers.py's DnsServer, also answering AAAA queries from ``records6`` (a name there that is
    not in ``records`` exists with no A record)."""

    def __init__(self, host: str, port: int, records: Mapping[str, str | Sequence[str]],
                 records6: Mapping[str, Sequence[str]]) -> None:
        names: dict[str, str | Sequence[str]] = {name: [] for name in records6}
        names.update(records)
        super().__init__(host, port, records=names)
        self.records6 = {_fqdn(name): [socket.inet_pton(socket.AF_INET6, a) for a in addrs]
                         for name, addrs in records6.items()}

    def answer(self, msg: bytes, transport: str, client: tuple[str, int]) -> bytes | None:
        reply = super().answer(msg, transport, client)
        if reply is None or len(reply) < 12:
            return reply
        qid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", reply)
        if qd != 1 or flags & 0x000F:
            return reply
        name, offset = _decode_name(reply, 12)
        qtype, _qclass = struct.unpack_from("!HH", reply, offset)
        addrs = self.records6.get(name)
        if not addrs or qtype not in (28, 255):
            return reply
        # RFC 3596: TYPE 28, RDLENGTH 16; the owner name points at the question (offset 12).
        rrs = b"".join(struct.pack("!HHHIH", 0xC00C, 28, 1, self.ttl, 16) + a for a in addrs)
        return struct.pack("!HHHHHH", qid, flags, 1, an + len(addrs), ns, ar) + reply[12:] + rrs

    def queries_for(self, name: str, qtype: int) -> list[Any]:
        return [q for q in self.queries() if q.name == _fqdn(name) and q.qtype == qtype]


def _fqdn(name: str) -> str:
    name = name.lower()
    return name if name.endswith(".") else name + "."


def in_netns(netns: str, fn: Callable[[], T], timeout: float = 60) -> T:
    """``fn()`` on a thread that joined ``netns`` first (setns(2) moves only the calling thread); the
    sockets it creates live there, whichever thread uses them later."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            setns(netns)
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, name=f"in-{netns}", daemon=True)
    thread.start()
    thread.join(timeout)
    if error:
        raise error[0]
    if not result:
        raise AssertionError(f"{fn!r} in {netns} did not finish within {timeout:g} s")
    return result[0]


def fetch(url: str, timeout: float = 60) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        data: bytes = reply.read()
        return data


# ------------------------------------------------------------------------------------------- the site


@dataclass
class Site:
    netns: str
    http6: Http6Server  # [::1]
    http4: HttpServer  # 127.0.0.1
    dns: Dns6Server  # [::1]:53, UDP and TCP


@contextlib.contextmanager
def resolv_conf(netns: str, text: str) -> Iterator[None]:
    """/etc/netns/NAME/resolv.conf, which ``ip netns exec NAME`` mounts over /etc/resolv.conf."""
    top = Path("/etc/netns")
    made_top = not top.exists()
    path = top / netns
    path.mkdir(parents=True, exist_ok=True)
    (path / "resolv.conf").write_text(text)
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if made_top:
            with contextlib.suppress(OSError):
                top.rmdir()


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    spaces = Namespaces()
    try:
        yield spaces
    finally:
        spaces.close()


@pytest.fixture
def site(namespaces: Namespaces) -> Iterator[Site]:
    netns = namespaces.add("v6")
    records = {NAME_BOTH: ADDR_BOTH4}
    records6 = {NAME6: [ADDR6], NAME_BOTH: [ADDR_BOTH6]}
    with resolv_conf(netns, "nameserver ::1\n"):
        http6 = in_netns(netns, lambda: _started(Http6Server("::1")))
        http4 = in_netns(netns, lambda: _started(HttpServer("127.0.0.1")))
        dns = in_netns(netns, lambda: _started(Dns6Server("::1", 53, records, records6)))
        try:
            yield Site(netns, http6, http4, dns)
        finally:
            for server in (dns, http4, http6):
                server.stop()


S = TypeVar("S", bound="HttpServer | DnsServer")


def _started(server: S) -> S:
    server.start()
    return server


def boot(backend: str, make_guest: MakeGuest, vmlan_run: VmlanRun, tmp_path: Path, netns: str, opts: str = "",
         mac: str = MAC) -> Guest:
    """The guest on QEMU's ``-netdev user[,opts]`` or on vmlan's ``-netdev user,dns-server=[::1]:53[,opts]``,
    the stack in ``netns`` either way; waits for the guest's shell."""
    if backend == "qemu":
        g = make_guest("g", ",".join(["user", *filter(None, [opts])]), mac=mac, netns=netns)
    else:
        _vm, nds = user_lan(vmlan_run, tmp_path, ",".join(filter(None, ["dns-server=[::1]:53", opts])),
                            netns=netns)
        g = make_guest("g", nds[0], mac=mac)
    g.wait_ready(timeout=180)
    return g


def ping6(g: Guest, target: str, count: int = 2, size: int = 56) -> str:
    out = g.check(f"ping6 -c {count} -s {size} -W 5 {target}", timeout=60)
    assert f"{count} packets received" in out, out
    return out


# ------------------------------------------------------------------------------------------- the checks


@pytest.mark.guest
@pytest.mark.parametrize("backend", BACKENDS)
def test_slaac_ping_http_dns_and_ipv4_in_one_boot(backend: str, make_guest: MakeGuest, vmlan_run: VmlanRun,
                                                   tmp_path: Path, site: Site) -> None:
    g = boot(backend, make_guest, vmlan_run, tmp_path, site.netns)
    ready = time.monotonic()

    # SLAAC from the RA that answers the guest's solicitation: the kernel's EUI-64 address in fec0::/64
    # (Linux puts fec0::/10 at scope site), tentative until DAD is over, then preferred.
    addr = g.wait_ipv6_address(PREFIX)
    took = time.monotonic() - ready
    assert (addr.address, addr.prefixlen, addr.scope) == (slaac_address(PREFIX, MAC), 64, SCOPE_SITE), addr
    route = g.wait_ipv6_default_route()
    assert route.next_hop == ROUTER_LL and route.destination.prefixlen == 0, route
    link_local = [a for a in g.ipv6_addresses() if a.scope == SCOPE_LINK]
    assert [a.address for a in link_local] == [slaac_address("fe80::/64", MAC)], link_local
    counters = g.snmp6()
    assert counters["Icmp6InRouterAdvertisements"] >= 1 and counters["Icmp6OutRouterSolicits"] >= 1, counters
    print(f"{backend}: SLAAC address {took:.1f} s after the shell, after "
          f"{counters['Icmp6OutRouterSolicits']} solicitation(s), {counters['Icmp6InRouterAdvertisements']} RA(s)")
    # Neither stack's default advertises a smaller MTU than the link's (QEMU's RA has no MTU option).
    assert g.check("cat /proc/sys/net/ipv6/conf/eth0/mtu").strip() == "1500"

    # The virtual hosts answer ping: ipv6-host, ipv6-dns and the router's link-local address.
    for target in (HOST6, DNS6, f"{ROUTER_LL}%eth0"):
        ping6(g, target)

    # TCP: fec0::2 is the host's ::1, as 10.0.2.2 is its 127.0.0.1.
    url = f"http://[{HOST6}]:{site.http6.port}/blob/{BLOB}/6"
    got = g.check(f"timeout 120 wget -q -O - {url} | sha256sum", timeout=150).split()[0]
    assert got == site.http6.expected_sha256(BLOB, 6)
    assert site.http6.wait_request(f"/blob/{BLOB}/6").client[0] == "::1"

    # DNS over IPv6 at fec0::3, answered by the site's server (QEMU: through the host's IPv6 resolver
    # from resolv.conf; vmlan: dns-server=[::1]:53), AAAA and NXDOMAIN.
    out = g.check(f"nslookup -type=AAAA {NAME6} {DNS6}", timeout=60)
    assert f"Address: {ADDR6}" in out, out
    assert site.dns.queries_for(NAME6, 28), site.dns.queries()
    status, out = g.run(f"nslookup -type=AAAA missing.vmlan.example {DNS6}", timeout=60)
    assert status != 0 and "NXDOMAIN" in out, out
    # UDP NAT over IPv6: a query to fec0::2 port 53 is a datagram to the host's [::1]:53.
    out = g.check(f"nslookup -type=AAAA {NAME_BOTH} [{HOST6}]:53", timeout=60)
    assert f"Address: {ADDR_BOTH6}" in out, out

    # A closed port of the host: refused at once (RST), not a timeout.
    start = time.monotonic()
    status, out = g.run(f"timeout 30 wget -q -O - http://[{HOST6}]:9/", timeout=60)
    assert status != 0 and time.monotonic() - start < 20, out

    # IPv4 in the same boot: both stacks are dual stack by default.
    g.check(UDHCPC, timeout=90)
    lease = g.check(". /tmp/udhcpc.env && echo $ip $router")
    assert lease.split() == ["10.0.2.15", "10.0.2.2"], lease
    g.check("ping -c 2 -W 5 10.0.2.2")
    url4 = f"http://10.0.2.2:{site.http4.port}/blob/{BLOB}/4"
    got = g.check(f"timeout 120 wget -q -O - {url4} | sha256sum", timeout=150).split()[0]
    assert got == site.http4.expected_sha256(BLOB, 4)
    # ... and IPv6 still there afterwards.
    assert any(a.address == addr.address and a.usable for a in g.ipv6_addresses())
    ping6(g, HOST6, count=1)


@pytest.mark.guest
@pytest.mark.parametrize("backend", BACKENDS)
def test_ipv6_off_sends_no_router_advertisement(backend: str, make_guest: MakeGuest, vmlan_run: VmlanRun,
                                                tmp_path: Path, site: Site) -> None:
    """``ipv6=off``: the guest solicits a router (twice, 4 s apart) and nobody answers; IPv4 works."""
    g = boot(backend, make_guest, vmlan_run, tmp_path, site.netns, "ipv6=off")

    def solicited_twice() -> dict[str, int] | None:
        counters = g.snmp6()
        return counters if counters["Icmp6OutRouterSolicits"] >= 2 else None

    counters = g.wait_until(solicited_twice, 90, "the guest's second router solicitation")
    assert counters is not None
    assert counters["Icmp6InRouterAdvertisements"] == 0, counters
    assert [a for a in g.ipv6_addresses() if a.scope != SCOPE_LINK] == []
    assert not [r for r in g.ipv6_routes() if r.is_default and r.device == "eth0"]
    g.check(UDHCPC, timeout=90)
    g.check("ping -c 1 -W 5 10.0.2.2")
    status, out = g.run(f"ping6 -c 1 -W 3 {ROUTER_LL}%eth0", timeout=30)
    assert status != 0, out
    assert g.snmp6()["Icmp6InRouterAdvertisements"] == 0


@pytest.mark.guest
def test_the_router_advertisement_mtu_shows_in_the_guest(make_guest: MakeGuest, vmlan_run: VmlanRun,
                                                         tmp_path: Path, site: Site) -> None:
    """vmlan's RA carries ``mtu=`` (RFC 4861 4.6.4), which Linux takes as eth0's IPv6 MTU (the link MTU
    stays 1500 until DHCP's option 26 changes it). QEMU's RA has no MTU option (QEMU_DIFFERENCES)."""
    g = boot("vmlan", make_guest, vmlan_run, tmp_path, site.netns, "mtu=1400")
    g.wait_ipv6_address(PREFIX)
    assert g.check("cat /proc/sys/net/ipv6/conf/eth0/mtu").strip() == "1400"
    assert "mtu 1500" in g.check("ip link show eth0")
    ping6(g, HOST6, count=1, size=1400 - 40 - 8)  # exactly the MTU, each way
    url = f"http://[{HOST6}]:{site.http6.port}/blob/{BLOB}/14"
    got = g.check(f"timeout 120 wget -q -O - {url} | sha256sum", timeout=150).split()[0]
    assert got == site.http6.expected_sha256(BLOB, 14)


@pytest.mark.guest
def test_two_guests_on_one_stack_ping6_each_other(make_guest: MakeGuest, vmlan_run: VmlanRun, tmp_path: Path,
                                                 site: Site) -> None:
    """Each guest's SLAAC address is read from its own console; they reach each other through the hub and
    both reach the stack (QEMU's -netdev user serves one guest: QEMU_DIFFERENCES)."""
    _vm, nds = user_lan(vmlan_run, tmp_path, "dns-server=[::1]:53", guests=2, netns=site.netns)
    a = make_guest("a", nds[0], mac="52:54:00:00:6e:01")
    b = make_guest("b", nds[1], mac="52:54:00:00:6e:02")
    a.wait_ready(timeout=180)
    b.wait_ready(timeout=180)
    addr_a = a.wait_ipv6_address(PREFIX).address
    addr_b = b.wait_ipv6_address(PREFIX).address
    assert addr_a != addr_b
    ping6(a, addr_b)
    ping6(b, addr_a)
    for g in (a, b):
        ping6(g, HOST6, count=1)
        assert f"Address: {ADDR6}" in g.check(f"nslookup -type=AAAA {NAME6} {DNS6}", timeout=60)


# ------------------------------------------------------------------------------------------- beyond the stack


@dataclass
class Beyond:
    """Namespace A (the stack) and B (a "remote" host) on a veth pair with IPv6 addresses of their own;
    A allows ping sockets."""

    ns_a: str
    addr_a: str
    ns_b: str
    addr_b: str


@pytest.fixture
def beyond(namespaces: Namespaces) -> Iterator[Beyond]:
    ns_a, ns_b = namespaces.add("a6"), namespaces.add("b6")
    addr_a, addr_b = "fd00:6::1", "fd00:6::2"
    va, vb = f"va6{namespaces.tag}", f"vb6{namespaces.tag}"
    sh(f"ip link add {va} netns {ns_a} type veth peer name {vb} netns {ns_b}",
       f"ip -n {ns_a} -6 addr add {addr_a}/64 dev {va} nodad", f"ip -n {ns_b} -6 addr add {addr_b}/64 dev {vb} nodad",
       f"ip -n {ns_a} link set {va} up", f"ip -n {ns_b} link set {vb} up",
       # Unprivileged ping sockets in A (the sysctl is per namespace and covers ICMPv6 too): how vmlan
       # relays a guest's ping6 beyond the stack (it has no raw-socket fallback for IPv6).
       f"ip netns exec {ns_a} sysctl -qw net.ipv4.ping_group_range='0 2147483647'")
    with resolv_conf(ns_a, "nameserver ::1\n"):
        yield Beyond(ns_a, addr_a, ns_b, addr_b)


@pytest.mark.guest
@pytest.mark.parametrize("backend", BACKENDS)
def test_tcp_and_ping_to_an_ipv6_host_beyond_the_stack(backend: str, make_guest: MakeGuest, vmlan_run: VmlanRun,
                                                       tmp_path: Path, beyond: Beyond) -> None:
    """NAT of TCP over the host's IPv6 sockets to a non-loopback address (the server sees the host's own
    address), and ping6 beyond the stack: vmlan relays it (ping or raw socket); libslirp 4.7 does not."""
    server = in_netns(beyond.ns_b, lambda: _started(Http6Server(beyond.addr_b)))
    try:
        g = boot(backend, make_guest, vmlan_run, tmp_path, beyond.ns_a)
        g.wait_ipv6_address(PREFIX)
        g.wait_ipv6_default_route()
        out = g.check(f"timeout 60 wget -q -O - http://[{beyond.addr_b}]:{server.port}/whoami", timeout=90)
        assert out.split()[0] == beyond.addr_a, out
        url = f"http://[{beyond.addr_b}]:{server.port}/blob/{BLOB}/9"
        got = g.check(f"timeout 120 wget -q -O - {url} | sha256sum", timeout=150).split()[0]
        assert got == server.expected_sha256(BLOB, 9)
        if backend == "vmlan":
            out = ping6(g, beyond.addr_b, count=3)
            assert f"from {beyond.addr_b}" in out, out
        else:
            status, out = g.run(f"ping6 -c 2 -W 3 {beyond.addr_b}", timeout=60)
            assert status != 0, (f"QEMU's stack now relays ICMPv6 echo beyond itself: update QEMU_DIFFERENCES "
                                 f"['ping-beyond'] and the README\n{out}")
    finally:
        server.stop()


@pytest.mark.guest
def test_hostfwd_over_ipv6_into_the_guest(make_guest: MakeGuest, vmlan_run: VmlanRun, tmp_path: Path,
                                          beyond: Beyond) -> None:
    """``hostfwd=tcp:[HOSTADDR]:PORT-[GUESTADDR]:PORT`` into the guest's SLAAC address: a client in
    namespace B appears to the guest as itself, one on the stack's own ::1 as fec0::2."""
    guest6 = slaac_address(PREFIX, MAC)
    port = 8080
    path = tmp_path / "vm.sock"
    vmlan_run("-netdev", f"user,id=u0,dns-server=[::1]:53,hostfwd=tcp:[{beyond.addr_a}]:{port}-[{guest6}]:80,"
              f"hostfwd=tcp:[::1]:{port}-[{guest6}]:80",
              "-netdev", f"stream,id=vm,server=on,addr.type=unix,addr.path={path}", netns=beyond.ns_a)
    g = make_guest("g", ["stream", "server=off", "addr.type=unix", f"addr.path={path}"], mac=MAC)
    g.wait_ready(timeout=180)
    assert g.wait_ipv6_address(PREFIX).address == guest6
    g.check("echo hello over ipv6 > /www/index.html && (httpd -f -vv -p 80 -h /www 2>/tmp/httpd.log &)")
    g.wait_until(lambda: ":0050 " in g.check("cat /proc/net/tcp6"), 30, "httpd listening on [::]:80")
    for ns, url in ((beyond.ns_b, f"http://[{beyond.addr_a}]:{port}/index.html"),
                    (beyond.ns_a, f"http://[::1]:{port}/index.html")):
        assert in_netns(ns, functools.partial(fetch, url)) == b"hello over ipv6\n"
    log = g.check("cat /tmp/httpd.log")
    assert beyond.addr_b in log, log  # the client in namespace B, as itself
    assert HOST6 in log, log  # a loopback client appears as ipv6-host (a guest drops ::1 sources)


def test_qemu_refuses_an_ipv6_hostfwd() -> None:
    """The other side of QEMU_DIFFERENCES['hostfwd']: QEMU 7.2 parses hostfwd= addresses with inet_aton."""
    proc = subprocess.run(["qemu-system-x86_64", "-M", "none", "-nodefaults", "-display", "none", "-netdev",
                           f"user,id=n0,hostfwd=tcp:[::1]:8080-[{slaac_address(PREFIX, MAC)}]:80"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Invalid host forwarding rule" in proc.stderr, proc.stderr
    assert "Bad host address" in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------------------- the /proc parsers

_IF_INET6 = """\
fec0000000000000505400fffe123456 02 40 40 00     eth0
fe80000000000000505400fffe123456 02 40 20 80     eth0
fec0000000000000505400fffe123457 02 40 40 48     eth0
00000000000000000000000000000001 01 80 10 80       lo
"""
_IPV6_ROUTE = """\
fec00000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 \
00000100 00000002 00000000 004c0001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000002 \
00000400 00000001 00000000 00450003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 \
ffffffff 00000001 00000000 00200200       lo
"""


def test_proc_parsers_read_what_a_guest_kernel_writes() -> None:
    addrs = parse_if_inet6(_IF_INET6)
    assert [(a.address, a.prefixlen, a.scope, a.usable) for a in addrs] == [
        ("fec0::5054:ff:fe12:3456", 64, SCOPE_SITE, True),
        ("fe80::5054:ff:fe12:3456", 64, SCOPE_LINK, True),
        ("fec0::5054:ff:fe12:3457", 64, SCOPE_SITE, False),  # tentative + dadfailed
        ("::1", 128, 0x10, True),
    ]
    assert addrs[2].tentative and not addrs[0].tentative
    routes = parse_ipv6_route(_IPV6_ROUTE)
    assert [str(r.destination) for r in routes] == ["fec0::/64", "::/0", "::/0"]
    default = [r for r in routes if r.is_default]
    assert [(r.next_hop, r.device, r.metric) for r in default] == [("fe80::2", "eth0", 1024)]
    assert parse_snmp6("Icmp6InRouterAdvertisements      \t1\nIcmp6OutRouterSolicits 3\nbogus\n") == {
        "Icmp6InRouterAdvertisements": 1, "Icmp6OutRouterSolicits": 3}
    assert slaac_address(PREFIX, MAC) == "fec0::5054:ff:fe12:3456"
    assert slaac_address("fe80::/64", "02:00:00:00:00:01") == "fe80::ff:fe00:1"
    with pytest.raises(ValueError):
        slaac_address("fec0::/48", MAC)
