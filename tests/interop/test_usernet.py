"""Real QEMU guests (TCG) on vmlan's user-mode stack (``-netdev user``).

Every server the guests reach runs on this host's loopback (tests/servers.py) and vmlan is pointed at
the test's own DNS server: no traffic leaves the machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from servers import DnsServer, HttpServer

pytestmark = pytest.mark.guest

UDHCPC = "timeout 30 udhcpc -i eth0 -f -q -n -t 4 -T 2 -O mtu -O search -O hostname -O domain"
LEASE_VARS = "ip mask router dns mtu search domain hostname lease serverid"


def lease_of(guest) -> dict[str, str]:
    out = guest.check(f'. /tmp/udhcpc.env && for v in {LEASE_VARS}; do eval echo "$v=\\$$v"; done')
    return dict(line.split("=", 1) for line in out.splitlines())


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    with HttpServer() as server:
        yield server


@pytest.fixture
def dns_server():
    with DnsServer(records={"test.vmlan.example.": "10.99.0.7"}) as server:
        yield server


def user_lan(vmlan_run, tmp_path, user_opts: str, guests: int = 1, extra=()):
    args = ["-netdev", f"user,id=u0,{user_opts}"]
    paths = []
    for i in range(guests):
        path = tmp_path / f"vm{i}.sock"
        paths.append(path)
        args += ["-netdev", f"stream,id=vm{i},server=on,addr.type=unix,addr.path={path}"]
    vm = vmlan_run(*args, *extra)
    return vm, [["stream", "server=off", "addr.type=unix", f"addr.path={p}"] for p in paths]


def test_dhcp_gives_qemus_addresses_and_the_options_asked_for(make_guest, vmlan_run, tmp_path, dns_server):
    vm, nds = user_lan(
        vmlan_run, tmp_path,
        f"dns-server=127.0.0.1:{dns_server.port},hostname=guesty,domainname=example.org,"
        "dnssearch=a.example,dnssearch=b.example,mtu=9000",
    )
    g = make_guest("g", nds[0])
    g.check(UDHCPC, timeout=60)
    lease = lease_of(g)
    assert lease["ip"] == "10.0.2.15" and lease["mask"] == "24" and lease["router"] == "10.0.2.2"
    assert lease["dns"] == "10.0.2.3" and lease["serverid"] == "10.0.2.2" and lease["lease"] == "86400"
    assert lease["mtu"] == "9000" and lease["search"] == "a.example b.example"
    assert lease["domain"] == "example.org" and lease["hostname"] == "guesty"
    assert "mtu 9000" in g.check("ip link show eth0")
    g.check("ping -c 2 -W 3 10.0.2.2 && ping -c 1 -W 3 10.0.2.3")
    vm.stop()


def test_net_option_moves_every_address(make_guest, vmlan_run, tmp_path, dns_server):
    _vm, nds = user_lan(vmlan_run, tmp_path, f"net=192.168.76.0/24,dns-server=127.0.0.1:{dns_server.port}")
    g = make_guest("g", nds[0])
    g.check(UDHCPC, timeout=60)
    lease = lease_of(g)
    assert (lease["ip"], lease["router"], lease["dns"]) == ("192.168.76.15", "192.168.76.2", "192.168.76.3")
    g.check("ping -c 1 -W 3 192.168.76.2")


def test_dns_forwarding_static_entries_and_nxdomain(make_guest, vmlan_run, tmp_path, dns_server):
    _vm, nds = user_lan(vmlan_run, tmp_path,
                        f"dns-server=127.0.0.1:{dns_server.port},dns-static=static.example:10.1.2.3")
    g = make_guest("g", nds[0])
    g.check(UDHCPC, timeout=60)
    assert "Address: 10.99.0.7" in g.check("nslookup test.vmlan.example")
    assert any(q.name.rstrip(".") == "test.vmlan.example" for q in dns_server.queries())
    assert "Address: 10.1.2.3" in g.check("nslookup static.example")
    assert "Address: 10.0.2.2" in g.check("nslookup host.vmlan.internal")
    status, out = g.run("nslookup missing.example")
    assert status != 0 and "NXDOMAIN" in out


def test_a_silent_resolver_gives_servfail_not_a_hang(make_guest, vmlan_run, tmp_path):
    with DnsServer(silent=True) as silent:
        _vm, nds = user_lan(vmlan_run, tmp_path, f"dns-server=127.0.0.1:{silent.port}")
        g = make_guest("g", nds[0])
        g.check(UDHCPC, timeout=60)
        start = time.monotonic()
        status, out = g.run("nslookup nowhere.example", timeout=60)
        # vmlan answers SERVFAIL after its retries (tests/engines/test_usernet.py); busybox's nslookup
        # takes SERVFAIL as "try the next server" and reports a timeout: either way, no hang.
        assert status != 0 and ("SERVFAIL" in out or "timed out" in out or "can't find" in out), out
        assert time.monotonic() - start < 30
        assert silent.queries(), "the query never reached the upstream"


def test_two_guests_share_one_stack_with_their_own_leases(make_guest, vmlan_run, tmp_path, dns_server):
    _vm, nds = user_lan(vmlan_run, tmp_path, f"dns-server=127.0.0.1:{dns_server.port}", guests=2)
    a = make_guest("a", nds[0], mac="52:54:00:00:0e:01")
    b = make_guest("b", nds[1], mac="52:54:00:00:0e:02")
    a.check(UDHCPC, timeout=60)
    b.check(UDHCPC, timeout=60)
    ips = {lease_of(a)["ip"], lease_of(b)["ip"]}
    assert ips == {"10.0.2.15", "10.0.2.16"}
    other = "10.0.2.16" if lease_of(a)["ip"] == "10.0.2.15" else "10.0.2.15"
    a.check(f"ping -c 2 -W 3 {other}")
    a.check("ping -c 1 -W 3 10.0.2.2")
    b.check("ping -c 1 -W 3 10.0.2.2")
    assert "Address: 10.99.0.7" in b.check("nslookup test.vmlan.example")


def test_leases_survive_a_restart(make_guest, vmlan_run, tmp_path, dns_server):
    leases = tmp_path / "leases.json"
    opts = f"dns-server=127.0.0.1:{dns_server.port},leases={leases}"
    vm, nds = user_lan(vmlan_run, tmp_path, opts)
    first = make_guest("first", nds[0], mac="52:54:00:00:0f:01")
    first.check(UDHCPC, timeout=60)
    second = make_guest("second", nds[0], mac="52:54:00:00:0f:02")
    second.check(UDHCPC, timeout=60)
    assert lease_of(second)["ip"] == "10.0.2.16"
    first.close()
    second.close()
    vm.stop()
    assert "52:54:00:00:0f:02" in leases.read_text()
    _vm2, nds = user_lan(vmlan_run, tmp_path, opts)
    again = make_guest("again", nds[0], mac="52:54:00:00:0f:02")  # boots first this time
    again.check(UDHCPC, timeout=60)
    assert lease_of(again)["ip"] == "10.0.2.16"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


MB50 = 50 * 1024 * 1024


def upload(g, host: str, port: int, path: str, src: str, timeout: int = 300) -> None:
    """PUT a guest file to the test HTTP server. busybox 1.35's ``wget --post-file`` sends an empty body
    (Content-Length: 0, seen on QEMU's own stack too), so the request is written raw through nc, which
    closes its sending half at the end of the file."""
    g.check(f"(printf 'PUT {path} HTTP/1.0\\r\\n\\r\\n'; cat {src}) | timeout {timeout} nc {host} {port} >/dev/null",
            timeout=timeout + 20)


def test_50_mb_each_way_through_the_gateway_address(make_guest, vmlan_run, tmp_path, dns_server, http_server):
    """10.0.2.2 is the host's loopback (QEMU's mapping): the guest downloads from and uploads to the
    test's HTTP server on 127.0.0.1, checksums compared end to end."""
    _vm, nds = user_lan(vmlan_run, tmp_path, f"dns-server=127.0.0.1:{dns_server.port}")
    g = make_guest("g", nds[0])
    g.check(UDHCPC, timeout=60)
    url = f"http://10.0.2.2:{http_server.port}"
    got = g.check(f"timeout 300 wget -q -O - {url}/blob/{MB50}/7 | sha256sum", timeout=320).split()[0]
    assert got == http_server.expected_sha256(MB50, 7)
    g.check("dd if=/dev/urandom of=/tmp/up bs=1048576 count=50 2>/dev/null")
    want = g.check("sha256sum /tmp/up").split()[0]
    upload(g, "10.0.2.2", http_server.port, "/upload", "/tmp/up")
    up = http_server.wait_upload("/upload")
    assert (up.size, up.sha256) == (MB50, want)
    assert up.client[0] == "127.0.0.1"


def test_udp_nat_both_ways_and_a_udp_port_forward(make_guest, vmlan_run, tmp_path, dns_server):
    fwd_port = free_port(socket.SOCK_DGRAM)
    _vm, nds = user_lan(vmlan_run, tmp_path,
                        f"dns-server=127.0.0.1:{dns_server.port},hostfwd=udp:127.0.0.1:{fwd_port}-:7")
    g = make_guest("g", nds[0])
    g.check(UDHCPC, timeout=60)
    # Guest -> host: a query to the host's DNS server port through 10.0.2.2, and its answer back.
    out = g.check(f"nslookup test.vmlan.example 10.0.2.2:{dns_server.port}")
    assert "Address: 10.99.0.7" in out
    assert any(q.client[0] == "127.0.0.1" for q in dns_server.queries())
    # Host -> guest: a datagram through the forward to the guest's echo server, and its echo back.
    g.check("(udpecho 7 >/dev/null 2>&1 &)")
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(1)
    reply = src = None
    for i in range(20):
        client.sendto(b"echo %d" % i, ("127.0.0.1", fwd_port))
        try:
            reply, src = client.recvfrom(512)
            break
        except TimeoutError:
            continue
    assert reply is not None and reply.startswith(b"echo "), "no echo from the guest through the UDP forward"
    assert src == ("127.0.0.1", fwd_port)


@pytest.fixture
def two_namespaces() -> Iterator[tuple[str, str, str, str]]:
    """Two network namespaces joined by a veth pair: (ns_a, addr_a, ns_b, addr_b). vmlan runs in A, a
    client in B, so a forwarded connection comes from a real, non-loopback address."""
    tag = f"{os.getpid() % 10000}{time.monotonic_ns() % 1000}"
    ns_a, ns_b = f"vmlan-a{tag}", f"vmlan-b{tag}"
    addr_a, addr_b = "10.213.0.1", "10.213.0.2"
    cmds = [
        f"ip netns add {ns_a}", f"ip netns add {ns_b}",
        f"ip link add va{tag} netns {ns_a} type veth peer name vb{tag} netns {ns_b}",
        f"ip -n {ns_a} addr add {addr_a}/30 dev va{tag}", f"ip -n {ns_b} addr add {addr_b}/30 dev vb{tag}",
        f"ip -n {ns_a} link set va{tag} up", f"ip -n {ns_b} link set vb{tag} up",
        f"ip -n {ns_a} link set lo up", f"ip -n {ns_b} link set lo up",
    ]
    try:
        for cmd in cmds:
            subprocess.run(cmd.split(), check=True, capture_output=True, timeout=20)
        yield ns_a, addr_a, ns_b, addr_b
    finally:
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def test_hostfwd_tcp_shows_the_guest_the_clients_real_address(make_guest, vmlan_run, tmp_path, two_namespaces):
    ns_a, addr_a, ns_b, addr_b = two_namespaces
    port = 8080
    path = tmp_path / "vm.sock"
    vmlan_run("-netdev", f"user,id=u0,dns-server=127.0.0.1:53,hostfwd=tcp:{addr_a}:{port}-:80,"
              f"hostfwd=tcp:127.0.0.1:{port}-:80",
              "-netdev", f"stream,id=vm,server=on,addr.type=unix,addr.path={path}", netns=ns_a)
    g = make_guest("g", ["stream", "server=off", "addr.type=unix", f"addr.path={path}"])
    g.check(UDHCPC, timeout=60)
    g.check("echo hello from the guest > /www/index.html && (httpd -f -vv -p 80 -h /www 2>/tmp/httpd.log &)")
    fetch = "import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1],timeout=30).read().decode())"
    for ns, url in ((ns_b, f"http://{addr_a}:{port}/index.html"), (ns_a, f"http://127.0.0.1:{port}/index.html")):
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", fetch, url],
                             capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "hello from the guest", out.stderr
    log = g.check("cat /tmp/httpd.log")
    assert addr_b in log, log  # the client in namespace B, as itself
    assert "10.0.2.2" in log, log  # a loopback client appears as the host address (a guest drops 127/8)


def test_restrict_refuses_outbound_but_forwards_still_work(make_guest, vmlan_run, tmp_path, http_server):
    port = free_port()
    _vm, nds = user_lan(vmlan_run, tmp_path, f"restrict=on,hostfwd=tcp:127.0.0.1:{port}-:80")
    g = make_guest("g", nds[0])
    g.check(UDHCPC, timeout=60)
    lease = lease_of(g)
    assert lease["ip"] == "10.0.2.15" and lease["router"] == "" and lease["dns"] == ""
    g.check("ip route add default via 10.0.2.2")
    start = time.monotonic()
    status, out = g.run(f"timeout 20 wget -q -O - http://10.0.2.2:{http_server.port}/whoami", timeout=40)
    assert status != 0 and time.monotonic() - start < 15, out  # refused at once (RST), not a timeout
    assert http_server.requests() == []
    g.check("echo restricted > /www/index.html && httpd -p 80 -h /www")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    assert data.endswith(b"restricted\n")


def guest_checks(g, http_server: HttpServer, fwd_port: int) -> None:
    """The same expectations of QEMU's user networking and of vmlan's."""
    g.check(UDHCPC, timeout=60)
    lease = lease_of(g)
    assert (lease["ip"], lease["mask"], lease["router"], lease["dns"]) == ("10.0.2.15", "24", "10.0.2.2", "10.0.2.3")
    g.check("ping -c 2 -W 3 10.0.2.2")
    url = f"http://10.0.2.2:{http_server.port}"
    got = g.check(f"timeout 60 wget -q -O - {url}/blob/3000000/3 | sha256sum", timeout=90).split()[0]
    assert got == http_server.expected_sha256(3000000, 3)
    g.check("dd if=/dev/urandom of=/tmp/up bs=1000 count=2000 2>/dev/null")
    want = g.check("sha256sum /tmp/up").split()[0]
    upload(g, "10.0.2.2", http_server.port, "/up", "/tmp/up", timeout=60)
    assert http_server.wait_upload("/up").sha256 == want
    g.check("echo fwd > /www/index.html && httpd -p 80 -h /www")
    with socket.create_connection(("127.0.0.1", fwd_port), timeout=30) as conn:
        conn.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    assert data.endswith(b"fwd\n")
    assert g.run(f"timeout 10 wget -q -O - http://10.0.2.2:{free_port()}/")[0] != 0  # refused


@pytest.mark.parametrize("backend", ["qemu", "vmlan"])
def test_differential_same_guest_checks_pass_on_qemu_user_and_on_vmlan(
    backend, make_guest, vmlan_run, tmp_path, dns_server, http_server
):
    fwd_port = free_port()
    if backend == "qemu":
        g = make_guest("g", ["user", f"hostfwd=tcp:127.0.0.1:{fwd_port}-:80"])
    else:
        _vm, nds = user_lan(vmlan_run, tmp_path,
                            f"dns-server=127.0.0.1:{dns_server.port},hostfwd=tcp:127.0.0.1:{fwd_port}-:80")
        g = make_guest("g", nds[0])
    guest_checks(g, http_server, fwd_port)


def test_guestfwd_to_a_host_address_and_to_a_command(make_guest, vmlan_run, tmp_path, dns_server, http_server):
    _vm, nds = user_lan(
        vmlan_run, tmp_path,
        f"dns-server=127.0.0.1:{dns_server.port},guestfwd=tcp:10.0.2.100:80-127.0.0.1:{http_server.port},"
        "guestfwd=tcp:10.0.2.101:7-cmd:tr a-z A-Z",
    )
    g = make_guest("g", nds[0])
    g.check(UDHCPC, timeout=60)
    assert g.check("timeout 30 wget -q -O - http://10.0.2.100/whoami").startswith("127.0.0.1 ")
    assert g.check("echo hello through a command | timeout 30 nc 10.0.2.101 7") == "HELLO THROUGH A COMMAND\n"


def test_ping_beyond_the_stack_and_info_usernet(make_guest, vmlan_run, tmp_path, two_namespaces):
    """The guest pings an address outside the stack (in the client namespace): vmlan sends the echo from
    the host through a ping socket, or a raw socket where ping sockets are not allowed."""
    ns_a, addr_a, _ns_b, addr_b = two_namespaces
    path = tmp_path / "vm.sock"
    vm = vmlan_run("-netdev", f"user,id=u0,dns-server=127.0.0.1:53,hostfwd=tcp:{addr_a}:8080-:80",
                   "-netdev", f"stream,id=vm,server=on,addr.type=unix,addr.path={path}", netns=ns_a)
    g = make_guest("g", ["stream", "server=off", "addr.type=unix", f"addr.path={path}"])
    g.check(UDHCPC, timeout=60)
    out = g.check(f"ping -c 3 -W 5 {addr_b}")
    assert "3 packets received" in out and f"from {addr_b}" in out
    vm.proc.send_signal(signal.SIGUSR1)
    vm.wait_log("Protocol[State]")
    vm.wait_log("ICMP[")
    lines = "\n".join(vm.lines)
    assert "Hub 0 (u0):" in lines
    assert "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ" in lines
    forward = next(line for line in vm.lines if "TCP[HOST_FORWARD]" in line)
    assert forward.split()[2:6] == [addr_a, "8080", "10.0.2.15", "80"]
    icmp = next(line for line in vm.lines if line.lstrip().startswith("ICMP["))
    assert "10.0.2.15" in icmp and addr_b in icmp
