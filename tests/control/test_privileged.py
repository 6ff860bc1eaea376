"""The privileged backend: rules and service configurations from network XML (pure), then real networks in
namespaces of the test's own (tests/privnet.py): bridge, nftables table, ip_forward, TAPs, and DHCP/DNS
served to a client namespace on a veth (busybox udhcpc, DNS over UDP and TCP). QEMU guests on these
networks are in tests/interop/test_privileged_network.py.
"""

from __future__ import annotations

import socket
import struct
import textwrap
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from netns import Namespaces, sh, wait_for
from privnet import (
    NetThread,
    addresses,
    events_of,
    in_netns,
    links,
    ns_run,
    ruleset,
    store_of,
    sysctl,
)
from servers import DnsServer, build_dns_query, parse_dns_response
from vmlan.config.libvirt import DEFAULT_NETWORK_XML, parse_interface, parse_network
from vmlan.control.backends import AttachResult, LeaseRecord, NetworkContext
from vmlan.control.netservices import DEFAULT_LEASE, INFINITE_LEASE, dhcp_plan, dns_plan, lease_seconds
from vmlan.control.privileged import PrivilegedBackend, PrivilegedError, PrivilegedNetwork
from vmlan.engines.dns import HOST_NAME
from vmlan.io.nft import apply_script, forward_rules, nat_rules, table_name, table_ruleset

UUID = "81ff0d90-c91e-6742-64da-4a736edb9a9b"


def network(body: str, name: str = "t1", bridge: str = "<bridge name='vbt0' stp='off'/>") -> Any:
    return parse_network(f"<network><name>{name}</name><uuid>{UUID}</uuid>{bridge}{body}</network>")


# ---------------------------------------------------------------------------------------------- rules (pure)

DEFAULT_RULESET = """\
table inet vmlan-virbr0 {
\tcomment "vmlan network default"
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname "virbr0" oifname "virbr0" counter accept
\t\toifname "virbr0" ip daddr 192.168.122.0/24 ct state related,established counter accept
\t\toifname "virbr0" counter reject
\t\tiifname "virbr0" ip saddr 192.168.122.0/24 counter accept
\t\tiifname "virbr0" counter reject
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 192.168.122.0/24 ip daddr 224.0.0.0/24 counter return
\t\tip saddr 192.168.122.0/24 ip daddr 255.255.255.255 counter return
\t\tmeta l4proto tcp ip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24 counter masquerade to :1024-65535
\t\tmeta l4proto udp ip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24 counter masquerade to :1024-65535
\t\tip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24 counter masquerade
\t}
}
"""


def test_default_network_ruleset_is_libvirts_nat() -> None:
    net = parse_network(DEFAULT_NETWORK_XML).live()
    assert table_ruleset(net) == DEFAULT_RULESET
    script = apply_script(net)
    assert script is not None
    # a leftover table of the same name is replaced in the same transaction
    assert script == "table inet vmlan-virbr0\ndelete table inet vmlan-virbr0\n" + DEFAULT_RULESET


def test_route_forwards_both_ways_without_masquerade() -> None:
    net = network("<forward mode='route'/><ip address='10.7.0.1' prefix='24'/>")
    assert forward_rules(net) == [
        'iifname "vbt0" oifname "vbt0" counter accept',
        'oifname "vbt0" ip daddr 10.7.0.0/24 counter accept',
        'oifname "vbt0" counter reject',
        'iifname "vbt0" ip saddr 10.7.0.0/24 counter accept',
        'iifname "vbt0" counter reject',
    ]
    assert nat_rules(net) == []
    text = table_ruleset(net)
    assert text is not None and "postrouting" not in text


def test_isolated_network_only_crosses_the_bridge() -> None:
    net = network("<ip address='10.8.0.1' prefix='24'/>")
    assert forward_rules(net) == [
        'iifname "vbt0" oifname "vbt0" counter accept',
        'oifname "vbt0" counter reject',
        'iifname "vbt0" counter reject',
    ]
    assert nat_rules(net) == []


def test_open_network_has_no_table() -> None:
    net = network("<forward mode='open'/><ip address='10.9.0.1' prefix='24'/>")
    assert table_ruleset(net) is None and apply_script(net) is None


def test_nat_with_device_address_range_ports_and_ipv6() -> None:
    net = network(
        "<forward mode='nat' dev='eth9'><nat><address start='198.51.100.10' end='198.51.100.12'/>"
        "<port start='20000' end='30000'/></nat></forward>"
        "<ip address='10.10.0.1' prefix='24'/><ip family='ipv6' address='fd10::1' prefix='64'/>"
    )
    assert forward_rules(net) == [
        'iifname "vbt0" oifname "vbt0" counter accept',
        'oifname "vbt0" ip daddr 10.10.0.0/24 iifname "eth9" ct state related,established counter accept',
        'oifname "vbt0" ip6 daddr fd10::/64 iifname "eth9" counter accept',  # IPv6 of nat is routed
        'oifname "vbt0" counter reject',
        'iifname "vbt0" ip saddr 10.10.0.0/24 oifname "eth9" counter accept',
        'iifname "vbt0" ip6 saddr fd10::/64 oifname "eth9" counter accept',
        'iifname "vbt0" counter reject',
    ]
    src = 'ip saddr 10.10.0.0/24'
    assert nat_rules(net) == [
        f'{src} ip daddr 224.0.0.0/24 oifname "eth9" counter return',
        f'{src} ip daddr 255.255.255.255 oifname "eth9" counter return',
        f'meta l4proto tcp {src} ip daddr != 10.10.0.0/24 oifname "eth9" counter snat ip to '
        "198.51.100.10-198.51.100.12:20000-30000",
        f'meta l4proto udp {src} ip daddr != 10.10.0.0/24 oifname "eth9" counter snat ip to '
        "198.51.100.10-198.51.100.12:20000-30000",
        f'{src} ip daddr != 10.10.0.0/24 oifname "eth9" counter snat ip to 198.51.100.10-198.51.100.12',
    ]
    v6 = network("<forward mode='nat'><nat ipv6='yes'/></forward><ip family='ipv6' address='fd11::1' prefix='64'/>")
    assert nat_rules(v6) == [
        "ip6 saddr fd11::/64 ip6 daddr ff02::/16 counter return",
        "meta l4proto tcp ip6 saddr fd11::/64 ip6 daddr != fd11::/64 counter masquerade to :1024-65535",
        "meta l4proto udp ip6 saddr fd11::/64 ip6 daddr != fd11::/64 counter masquerade to :1024-65535",
        "ip6 saddr fd11::/64 ip6 daddr != fd11::/64 counter masquerade",
    ]


def test_table_names() -> None:
    assert table_name("virbr0") == "vmlan-virbr0"
    assert table_name("br@x") == "vmlan-x" + b"br@x".hex()


# ------------------------------------------------------------------------------------ services (pure)


def test_dhcp_plan_of_the_default_network() -> None:
    plan = dhcp_plan(parse_network(DEFAULT_NETWORK_XML).live())
    assert plan is not None
    cfg = plan.config
    assert (cfg.server_ip, cfg.netmask, cfg.router, tuple(cfg.dns)) == (
        "192.168.122.1", "255.255.255.0", "192.168.122.1", ("192.168.122.1",))
    assert (cfg.pool_start, cfg.pool_size, cfg.lease_time) == ("192.168.122.2", 253, DEFAULT_LEASE)
    assert plan.in_use is None and plan.ignored == ()


def test_dhcp_plan_options_hosts_and_isolation() -> None:
    net = network(
        "<mtu size='1400'/><domain name='lab.example'/><dns enable='no'/>"
        "<ip address='10.20.0.1' prefix='24'><dhcp>"
        "<range start='10.20.0.10' end='10.20.0.19'><lease expiry='2' unit='hours'/></range>"
        "<range start='10.20.0.30' end='10.20.0.39'/>"
        "<host mac='52:54:00:AA:bb:01' name='web' ip='10.20.0.5'/><host id='0:1:2' name='idhost' ip='10.20.0.6'/>"
        "<bootp file='pxelinux.0' server='10.20.0.2'/></dhcp></ip>"
    )
    plan = dhcp_plan(net)
    assert plan is not None
    cfg = plan.config
    assert cfg.router is None  # isolated: no default route for the guests (libvirt's dhcp-option=3)
    assert tuple(cfg.dns) == ()  # <dns enable='no'>
    assert (cfg.mtu, cfg.domainname, cfg.bootfile, cfg.tftp_server_name) == (1400, "lab.example", "pxelinux.0",
                                                                            "10.20.0.2")
    assert cfg.lease_time == 7200
    assert dict(cfg.static_leases) == {"52:54:00:aa:bb:01": "10.20.0.5"}
    assert (cfg.pool_start, cfg.pool_size) == ("10.20.0.10", 30)
    assert plan.in_use is not None
    assert not plan.in_use(IPv4Address("10.20.0.15").packed, b"")
    assert plan.in_use(IPv4Address("10.20.0.25").packed, b"")  # between the ranges: never offered
    assert not plan.in_use(IPv4Address("10.20.0.39").packed, b"")
    assert any("client id" in what for what in plan.ignored)
    assert any("lease times" in what for what in plan.ignored)
    assert dhcp_plan(network("<ip address='10.21.0.1' prefix='24'/>")) is None


def test_lease_seconds() -> None:
    from vmlan.config.libvirt import Lease

    assert lease_seconds(None) == 3600
    assert lease_seconds(Lease(0)) == INFINITE_LEASE
    assert lease_seconds(Lease(90, "seconds")) == 90
    assert lease_seconds(Lease(5, "minutes")) == 300


def test_dns_plan_names_forwarders_and_resolv_conf() -> None:
    net = network(
        "<forward/><domain name='lab.example'/>"
        "<dns><forwarder addr='192.0.2.53'/><forwarder domain='corp.example' addr='192.0.2.54'/>"
        "<host ip='10.30.0.7'><hostname>db</hostname><hostname>db.other.example</hostname></host>"
        "<host ip='fd30::7'><hostname>v6only</hostname></host></dns>"
        "<ip address='10.30.0.1' prefix='24'><dhcp><range start='10.30.0.10' end='10.30.0.20'/>"
        "<host mac='52:54:00:00:00:01' name='web' ip='10.30.0.5'/></dhcp></ip>"
    )
    plan = dns_plan(net, "nameserver 203.0.113.1\n")
    assert plan is not None
    cfg = plan.config
    assert tuple(cfg.upstreams) == (("192.0.2.53", 53),)  # the domain forwarder is not an upstream
    assert {k: list(v) for k, v in cfg.static.items()} == {
        "db": ["10.30.0.7"], "db.lab.example": ["10.30.0.7"], "db.other.example": ["10.30.0.7"],
        "web": ["10.30.0.5"], "web.lab.example": ["10.30.0.5"],
    }
    assert dict(cfg.host_names) == {HOST_NAME: "10.30.0.1"}
    assert plan.listen == ("10.30.0.1",)
    assert any("corp.example" in w for w in plan.ignored) and any("v6only" in w for w in plan.ignored)
    plain = dns_plan(network("<ip address='10.31.0.1' prefix='24'/>"), "nameserver 203.0.113.1\nnameserver ::1\n")
    assert plain is not None and tuple(plain.config.upstreams) == (("203.0.113.1", 53), ("::1", 53))
    assert dns_plan(network("<dns enable='no'/><ip address='10.32.0.1' prefix='24'/>"), "") is None


# ------------------------------------------------------------------------ real networks in namespaces


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    ns = Namespaces()
    yield ns
    ns.close()


@pytest.fixture
def host(namespaces: Namespaces, tmp_path: Path) -> Iterator[NetThread]:
    """The backend's "host": an event loop thread inside a namespace of the test's."""
    thread = NetThread(namespaces.add("h"), tmp_path / "run")
    yield thread
    thread.close()


@pytest.fixture
def backend() -> PrivilegedBackend:
    b = PrivilegedBackend(resolv_conf="/nonexistent/resolv.conf")
    assert b.available(), b.unavailable_reason()
    return b


def start(host: NetThread, backend: PrivilegedBackend, net: Any, ctx: NetworkContext | None = None
          ) -> tuple[PrivilegedNetwork, NetworkContext]:
    ctx = ctx or host.context()
    return host.run(backend.start(net, ctx)), ctx


def guest_iface(mac: str, target: str | None = None) -> Any:
    dev = f"<target dev='{target}'/>" if target else ""
    return parse_interface(f"<interface type='network'><mac address='{mac}'/><source network='t1'/>{dev}"
                           "<model type='virtio'/></interface>")


def test_available_needs_nft(backend: PrivilegedBackend) -> None:
    assert backend.mode == "privileged"
    missing = PrivilegedBackend(nft="/nonexistent/nft")
    assert not missing.available() and "nft" in (missing.unavailable_reason() or "")


def test_nat_network_up_and_down_leaves_nothing(host: NetThread, backend: PrivilegedBackend) -> None:
    ns = host.netns
    assert ns is not None
    ns_run(ns, "nft", "add", "table", "inet", "othertest")
    ns_run(ns, "nft", "add", "chain", "inet", "othertest", "keepme", "{ type filter hook forward priority 0; }")
    ns_run(ns, "nft", "add", "rule", "inet", "othertest", "keepme", "ip saddr 10.255.0.0/16 counter accept")
    before_rules, before_links = ruleset(ns), set(links(ns))
    assert sysctl(ns, "ipv4/ip_forward") == "0"
    net = parse_network(DEFAULT_NETWORK_XML.replace("<forward/>", "<forward/><mtu size='1400'/>"
                                                    "<mac address='52:54:00:0a:0b:0c'/>"))
    running, _ = start(host, backend, net)
    assert (running.name, running.mode, running.bridge) == ("default", "privileged", "virbr0")
    br = links(ns)["virbr0"]
    assert br["linkinfo"]["info_kind"] == "bridge"
    assert (br["mtu"], br["address"]) == (1400, "52:54:00:0a:0b:0c")
    assert br["linkinfo"]["info_data"]["stp_state"] == 1  # the default: stp on
    assert "UP" in br["flags"]
    assert addresses(ns, "virbr0") == ["192.168.122.1/24"]
    assert sysctl(ns, "ipv6/conf/virbr0/disable_ipv6") == "1"  # no IPv6 on this network
    during = ruleset(ns)
    assert "table inet othertest" in during and "table inet vmlan-virbr0" in during
    assert "masquerade to :1024-65535" in during
    assert sysctl(ns, "ipv4/ip_forward") == "1"
    info = running.info()
    assert info["nftables_table"] == "inet vmlan-virbr0"
    assert info["ip_forward_enabled_by_vmlan"] == ["ipv4/ip_forward"]
    host.call(running.attach, guest_iface("52:54:00:12:34:01"), 1000)
    host.run(running.stop())
    assert ruleset(ns) == before_rules  # othertest untouched, ours gone
    assert set(links(ns)) == before_links  # no bridge, no TAP
    assert sysctl(ns, "ipv4/ip_forward") == "0"
    assert backend.networks == {}
    host.run(running.stop())  # stopping twice is harmless


def test_taps_are_vnetN_persistent_owned_and_monotonic(host: NetThread, backend: PrivilegedBackend) -> None:
    ns = host.netns
    assert ns is not None
    running, _ = start(host, backend, network("<forward/><mtu size='1450'/><ip address='10.40.0.1' prefix='24'/>"))
    assert running.preview(guest_iface("52:54:00:12:34:01")) == "tap,ifname=vnet0,script=no,downscript=no"
    first = host.call(running.attach, guest_iface("52:54:00:12:34:01"), 1000)
    assert (first.netdev, first.target) == ("tap,ifname=vnet0,script=no,downscript=no", "vnet0")
    second = host.call(running.attach, guest_iface("52:54:00:12:34:02"), 1001)
    assert second.target == "vnet1"
    all_links = links(ns)
    for name, mac, uid in (("vnet0", "fe:54:00:12:34:01", 1000), ("vnet1", "fe:54:00:12:34:02", 1001)):
        link = all_links[name]
        tun = link["linkinfo"]["info_data"]
        assert (tun["type"], tun["pi"], tun["persist"]) == ("tap", False, True)
        assert ns_run(ns, "cat", f"/sys/class/net/{name}/owner").stdout.strip() == str(uid)
        assert (link["address"], link["mtu"], link["master"]) == (mac, 1450, "vbt0")
        assert "UP" in link["flags"]
    host.call(running.detach, "vnet0")
    assert "vnet0" not in links(ns)
    sh(f"ip -n {ns} tuntap add dev vnet2 mode tap")  # someone else's: skipped, never reused
    third = host.call(running.attach, guest_iface("52:54:00:12:34:03"), 1000)
    assert third.target == "vnet3"  # the counter only goes up: vnet0 is free again but not taken
    assert links(ns)["vnet2"].get("master") is None
    own = host.call(running.attach, guest_iface("52:54:00:12:34:04", target="mytap0"), 1000)
    assert own.target == "mytap0"
    with pytest.raises(PrivilegedError, match="mytap0: Device or resource busy"):
        host.call(running.attach, guest_iface("52:54:00:12:34:05", target="mytap0"), 1000)
    with pytest.raises(PrivilegedError, match="no interface 'vnet9' is attached to network 't1'"):
        host.call(running.detach, "vnet9")
    assert sorted(running.info()["taps"]) == ["mytap0", "vnet1", "vnet3"]  # type: ignore[call-overload]
    host.run(running.stop())
    left = set(links(ns))
    assert {"vbt0", "vnet1", "vnet3", "mytap0"}.isdisjoint(left) and "vnet2" in left


UDHCPC_SCRIPT = """\
#!/bin/sh
case "$1" in
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    {{ echo "ip=$ip"; echo "router=$router"; echo "dns=$dns"; echo "mtu=$mtu"; echo "lease=$lease";
       echo "domain=$domain"; }} > {out}
    ;;
esac
exit 0
"""


def client_ns(namespaces: Namespaces, host_ns: str, bridge: str, name: str = "c") -> str:
    client = namespaces.add(name)
    sh(f"ip -n {host_ns} link add v{name}h type veth peer name v{name} netns {client}",
       f"ip -n {host_ns} link set v{name}h master {bridge} up", f"ip -n {client} link set v{name} up")
    return client


def udhcpc(client: str, tmp_path: Path, ifname: str = "vc") -> dict[str, str]:
    out = tmp_path / f"lease-{client}"
    script = tmp_path / f"udhcpc-{client}.sh"
    script.write_text(UDHCPC_SCRIPT.format(out=out))
    script.chmod(0o755)
    ns_run(client, "busybox", "udhcpc", "-i", ifname, "-f", "-q", "-n", "-t", "6", "-T", "2", "-O", "mtu",
           "-O", "domain", "-s", str(script), timeout=60)
    return dict(line.split("=", 1) for line in out.read_text().splitlines())


def dns_udp(client: str, server: str, name: str) -> tuple[int, int, list[str]]:
    def query() -> tuple[int, int, list[str]]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(10)
            s.sendto(build_dns_query(name, qid=0x4242), (server, 53))
            return parse_dns_response(s.recv(4096))

    return in_netns(client, query)


def dns_tcp(client: str, server: str, names: list[str]) -> list[tuple[int, int, list[str]]]:
    def query() -> list[tuple[int, int, list[str]]]:
        with socket.create_connection((server, 53), timeout=10) as s:
            for i, name in enumerate(names):  # pipelined on one connection
                msg = build_dns_query(name, qid=i + 1)
                s.sendall(struct.pack("!H", len(msg)) + msg)
            out: list[tuple[int, int, list[str]]] = []
            buf = b""
            while len(out) < len(names):
                chunk = s.recv(4096)
                assert chunk, "server closed the connection"
                buf += chunk
                while len(buf) >= 2 and len(buf) >= 2 + struct.unpack_from("!H", buf)[0]:
                    size = struct.unpack_from("!H", buf)[0]
                    out.append(parse_dns_response(buf[2:2 + size]))
                    buf = buf[2 + size:]
            return out

    return in_netns(client, query)


def test_dhcp_and_dns_served_on_the_bridge(host: NetThread, backend: PrivilegedBackend, namespaces: Namespaces,
                                          tmp_path: Path) -> None:
    ns = host.netns
    assert ns is not None
    upstream = DnsServer("127.0.0.1", 53, records={"far.example": "198.51.100.80"})
    host.call(upstream.start)  # bound in the host namespace, where the forwarder's sockets go
    try:
        net = network(textwrap.dedent("""\
            <forward/><mtu size='1400'/><domain name='lab.example'/>
            <dns><forwarder addr='127.0.0.1'/><host ip='10.50.0.9'><hostname>db</hostname></host></dns>
            <ip address='10.50.0.1' prefix='24'><dhcp><range start='10.50.0.100' end='10.50.0.120'>
              <lease expiry='10' unit='minutes'/></range>
              <host mac='52:54:00:00:50:05' name='web' ip='10.50.0.5'/></dhcp></ip>"""))
        running, ctx = start(host, backend, net)
        client = client_ns(namespaces, ns, "vbt0")
        lease = udhcpc(client, tmp_path)
        assert IPv4Address("10.50.0.100") <= IPv4Address(lease["ip"]) <= IPv4Address("10.50.0.120")
        assert (lease["router"], lease["dns"], lease["mtu"], lease["lease"], lease["domain"]) == (
            "10.50.0.1", "10.50.0.1", "1400", "600", "lab.example")
        mac = links(client)["vc"]["address"]
        granted = events_of(ctx).of_kind("lease-granted")
        assert [(e["network"], e["mac"], e["ip"]) for e in granted] == [("t1", mac, lease["ip"])]
        assert [(r.mac, r.ip) for r in running.leases()] == [(mac, lease["ip"])]
        assert store_of(ctx).records["t1"][mac].ip == lease["ip"]
        # DNS: static names (with the domain), the host, a forwarded name; over UDP and TCP
        assert dns_udp(client, "10.50.0.1", "db") == (0x4242, 0, ["10.50.0.9"])
        assert dns_udp(client, "10.50.0.1", "web.lab.example")[2] == ["10.50.0.5"]
        assert dns_udp(client, "10.50.0.1", HOST_NAME)[2] == ["10.50.0.1"]
        assert dns_udp(client, "10.50.0.1", "far.example") == (0x4242, 0, ["198.51.100.80"])
        assert dns_udp(client, "10.50.0.1", "nowhere.example")[1] == 3  # NXDOMAIN passed through
        assert dns_tcp(client, "10.50.0.1", ["db.lab.example", "far.example"]) == [
            (1, 0, ["10.50.0.9"]), (2, 0, ["198.51.100.80"])]
        counters = running.info()["services"]
        assert isinstance(counters, dict)
        assert counters["dhcp"]["acks"] == 1 and counters["dns"]["forwarded"] >= 2
        assert counters["dhcp"]["internal_errors"] == counters["dns"]["internal_errors"] == 0
        host.run(running.stop())
        # restarted with the same store: the lease is back before the client asks, and it keeps its address
        again, ctx2 = start(host, backend, net, host.context(store_of(ctx)))
        assert [(r.mac, r.ip) for r in again.leases()] == [(mac, lease["ip"])]
        sh(f"ip -n {ns} link set vch master vbt0 up")
        ns_run(client, "ip", "-4", "addr", "flush", "dev", "vc")
        assert udhcpc(client, tmp_path)["ip"] == lease["ip"]
        assert [e["ip"] for e in events_of(ctx2).of_kind("lease-granted")] == [lease["ip"]]
        host.run(again.stop())
    finally:
        host.call(upstream.stop)


def test_isolated_network_gives_no_route(host: NetThread, backend: PrivilegedBackend, namespaces: Namespaces,
                                        tmp_path: Path) -> None:
    ns = host.netns
    assert ns is not None
    net = network("<ip address='10.60.0.1' prefix='24'><dhcp><range start='10.60.0.10' end='10.60.0.20'/>"
                  "</dhcp></ip>")
    running, _ = start(host, backend, net)
    rules = ruleset(ns)
    assert "postrouting" not in rules and 'oifname "vbt0" counter packets 0 bytes 0 reject' in rules
    assert running.info()["ip_forward_enabled_by_vmlan"] == [] and sysctl(ns, "ipv4/ip_forward") == "0"
    client = client_ns(namespaces, ns, "vbt0")
    lease = udhcpc(client, tmp_path)
    assert lease["router"] == "" and lease["dns"] == "10.60.0.1"
    assert dns_udp(client, "10.60.0.1", HOST_NAME)[2] == ["10.60.0.1"]
    host.run(running.stop())


def test_failed_start_undoes_everything(host: NetThread) -> None:
    ns = host.netns
    assert ns is not None
    before_links, before_rules = set(links(ns)), ruleset(ns)

    def nothing_left() -> bool:
        return set(links(ns)) == before_links and ruleset(ns) == before_rules and sysctl(ns, "ipv4/ip_forward") == "0"

    net = network("<forward/><ip address='10.70.0.1' prefix='24'><dhcp><range start='10.70.0.10' "
                  "end='10.70.0.20'/></dhcp></ip>")
    broken = PrivilegedBackend(nft="/bin/false")
    with pytest.raises(PrivilegedError, match=r"^nft -f - failed \(status 1\)"):
        start(host, broken, net)
    assert nothing_left() and broken.networks == {}
    backend = PrivilegedBackend()
    # port 67 taken by a socket that allows no sharing: the DHCP server cannot bind, all else is undone
    blocker = host.call(_udp_blocker)
    try:
        with pytest.raises(PrivilegedError, match=r"DHCP on vbt0: cannot bind udp 0.0.0.0:67: Address already in use"):
            start(host, backend, net)
        assert nothing_left() and backend.networks == {}
    finally:
        host.call(blocker.close)
    sh(f"ip -n {ns} link add vbt0 type veth peer name vbt0p")
    with pytest.raises(PrivilegedError, match=r"bridge name 'vbt0' already in use"):
        start(host, backend, net)
    assert links(ns)["vbt0"]["linkinfo"]["info_kind"] == "veth"  # someone else's: left alone
    sh(f"ip -n {ns} link del vbt0")
    running, _ = start(host, backend, net)
    with pytest.raises(PrivilegedError, match="already active"):
        start(host, backend, net)
    host.run(running.stop())
    assert nothing_left()


def _udp_blocker() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 67))
    return sock


def test_ip_forward_restored_after_the_last_network(host: NetThread, backend: PrivilegedBackend) -> None:
    ns = host.netns
    assert ns is not None
    a, _ = start(host, backend, network("<forward/><ip address='10.80.0.1' prefix='24'/>", name="a",
                                        bridge="<bridge name='vba'/>"))
    b, _ = start(host, backend, network("<forward mode='route'/><ip address='10.81.0.1' prefix='24'/>", name="b",
                                        bridge="<bridge name='vbb'/>"))
    assert sysctl(ns, "ipv4/ip_forward") == "1"
    host.run(a.stop())
    assert sysctl(ns, "ipv4/ip_forward") == "1"  # b still routes
    host.run(b.stop())
    assert sysctl(ns, "ipv4/ip_forward") == "0"
    ns_run(ns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
    c, _ = start(host, backend, network("<forward/><ip address='10.82.0.1' prefix='24'/>", name="c",
                                        bridge="<bridge name='vbc'/>"))
    assert c.info()["ip_forward_enabled_by_vmlan"] == []
    host.run(c.stop())
    assert sysctl(ns, "ipv4/ip_forward") == "1"  # it was on before: left on


def test_unnamed_bridge_gets_the_first_free_virbr(host: NetThread, backend: PrivilegedBackend) -> None:
    ns = host.netns
    assert ns is not None
    sh(f"ip -n {ns} link add virbr0 type veth peer name virbr0p")
    running, _ = start(host, backend, network("<forward/><ip address='10.90.0.1' prefix='24'/>", bridge=""))
    assert running.bridge == "virbr1" and links(ns)["virbr1"]["linkinfo"]["info_kind"] == "bridge"
    host.run(running.stop())


def test_saved_leases_that_do_not_fit_are_dropped(host: NetThread, backend: PrivilegedBackend) -> None:
    ctx = host.context()
    store_of(ctx).persist("t1", LeaseRecord("52:54:00:00:00:01", "10.91.0.50", None, 2e9))
    store_of(ctx).persist("t1", LeaseRecord("52:54:00:00:00:02", "10.91.0.200", "old", 2e9))  # outside the range
    store_of(ctx).persist("t1", LeaseRecord("junk", "10.91.0.51", None, 2e9))
    net = network("<forward/><ip address='10.91.0.1' prefix='24'><dhcp><range start='10.91.0.10' "
                  "end='10.91.0.99'/></dhcp></ip>")
    running, _ = start(host, backend, net, ctx)
    assert [(r.mac, r.ip) for r in running.leases()] == [("52:54:00:00:00:01", "10.91.0.50")]
    host.run(running.stop())


def static_client(namespaces: Namespaces, host_ns: str, bridge: str, address: str) -> str:
    client = client_ns(namespaces, host_ns, bridge)
    ns_run(client, "ip", "addr", "add", address, "dev", "vc")
    return client


def test_a_restarted_daemon_adopts_its_bridge_and_taps(host: NetThread, backend: PrivilegedBackend,
                                                       namespaces: Namespaces) -> None:
    ns = host.netns
    assert ns is not None
    before_links, before_rules = set(links(ns)), ruleset(ns)
    net = network("<forward/><ip address='10.95.0.1' prefix='24'><dhcp><range start='10.95.0.10' "
                  "end='10.95.0.20'/></dhcp></ip>", bridge="<bridge name='vbt0'/>")  # STP on: delay 2 s now
    first, ctx = start(host, backend, net)
    a0 = host.call(first.attach, guest_iface("52:54:00:95:00:01"), 1000)
    host.call(first.attach, guest_iface("52:54:00:95:00:02"), 1000)
    index = links(ns)["vbt0"]["ifindex"]
    note = host.runtime_dir / "privileged" / "vbt0.json"
    assert note.exists()
    host.run(first.release())  # the daemon goes away; the network stays
    up = set(links(ns))
    assert {"vbt0", "vnet0", "vnet1"} <= up and "vmlan-vbt0" in ruleset(ns) and sysctl(ns, "ipv4/ip_forward") == "1"
    # another boot's note, or none, is not ours: the name is simply in use
    stranger = PrivilegedBackend()
    with pytest.raises(PrivilegedError, match="bridge name 'vbt0' already in use"):
        start(host, stranger, net, host.context(boot_id="another-boot"))
    # the next daemon (a new backend) adopts bridge, table and TAPs
    later = PrivilegedBackend()
    second, _ = start(host, later, net, host.context(store_of(ctx)))
    assert links(ns)["vbt0"]["ifindex"] == index
    host.call(second.restore, guest_iface("52:54:00:95:00:01"), 1000, AttachResult(a0.netdev, a0.target))
    with pytest.raises(PrivilegedError, match="vnet7 is no longer on bridge vbt0"):
        host.call(second.restore, guest_iface("52:54:00:95:00:07"), 1000,
                  AttachResult("tap,ifname=vnet7,script=no,downscript=no", "vnet7"))
    assert host.call(second.attach, guest_iface("52:54:00:95:00:03"), 1000).target == "vnet2"
    assert sorted(second.taps) == ["vnet0", "vnet2"]
    client = static_client(namespaces, ns, "vbt0", "10.95.0.50/24")
    wait_for(lambda: links(ns)["vch"]["linkinfo"]["info_slave_data"]["state"] == "forwarding", timeout=15,
             what="STP to let the client's port forward")
    assert dns_udp(client, "10.95.0.1", HOST_NAME)[2] == ["10.95.0.1"]  # the services are back
    host.run(second.stop())
    assert set(links(ns)) - {"vch"} == before_links  # vnet1, never restored, went too
    assert ruleset(ns) == before_rules and sysctl(ns, "ipv4/ip_forward") == "0" and not note.exists()


def test_link_control_and_run_time_dns_names(host: NetThread, backend: PrivilegedBackend,
                                            namespaces: Namespaces) -> None:
    ns = host.netns
    assert ns is not None
    net = network("<forward/><dns><host ip='10.96.0.9'><hostname>db</hostname></host></dns>"
                  "<ip address='10.96.0.1' prefix='24'/>")
    running, ctx = start(host, backend, net)
    tap = host.call(running.attach, guest_iface("52:54:00:96:00:01"), 1000).target
    host.call(running.set_link, tap, False)
    assert "UP" not in links(ns)[tap]["flags"]
    host.call(running.set_link, tap, True)
    assert "UP" in links(ns)[tap]["flags"]
    assert [(e["target"], e["mac"]) for e in events_of(ctx).of_kind("link-down")] == [(tap, "fe:54:00:96:00:01")]
    assert len(events_of(ctx).of_kind("link-up")) == 1
    with pytest.raises(PrivilegedError, match="no interface 'vnet9'"):
        host.call(running.set_link, "vnet9", True)
    client = static_client(namespaces, ns, "vbt0", "10.96.0.50/24")
    assert dns_udp(client, "10.96.0.1", "added.test")[1] == 2  # SERVFAIL: no upstreams, not a local name
    host.call(running.set_dns_records, {"added.test": ["10.96.0.77"]})
    assert host.call(running.dns_records) == {"added.test": ["10.96.0.77"], "db": ["10.96.0.9"]}
    assert dns_udp(client, "10.96.0.1", "added.test")[2] == ["10.96.0.77"]
    assert dns_udp(client, "10.96.0.1", "db")[2] == ["10.96.0.9"]
    with pytest.raises(PrivilegedError, match="'nope' is not an IPv4 address"):
        host.call(running.set_dns_records, {"bad.test": ["nope"]})
    host.run(running.stop())


def test_leases_expire_with_an_event_and_are_saved(host: NetThread, backend: PrivilegedBackend,
                                                  namespaces: Namespaces, tmp_path: Path) -> None:
    import dataclasses

    from vmlan.config.libvirt import DhcpRange, Lease

    ns = host.netns
    assert ns is not None
    net = network("<forward/><ip address='10.97.0.1' prefix='24'><dhcp><range start='10.97.0.10' "
                  "end='10.97.0.20'/></dhcp></ip>")
    ip = net.ips[0]
    short = dataclasses.replace(ip, ranges=(DhcpRange(ip.ranges[0].start, ip.ranges[0].end, Lease(3, "seconds")),))
    running, ctx = start(host, backend, dataclasses.replace(net, ips=(short,)))
    client = client_ns(namespaces, ns, "vbt0")
    lease = udhcpc(client, tmp_path)
    assert lease["lease"] == "3"
    mac = links(client)["vc"]["address"]
    assert store_of(ctx).records["t1"][mac].ip == lease["ip"]
    wait_for(lambda: events_of(ctx).of_kind("lease-expired"), timeout=10, what="lease-expired")
    assert events_of(ctx).of_kind("lease-expired") == [{"network": "t1", "mac": mac, "ip": lease["ip"]}]
    assert host.call(running.leases) == []
    host.run(running.stop())
    assert store_of(ctx).records["t1"][mac].ip == lease["ip"]  # remembered: the MAC gets it again


def test_ipv6_addresses_forwarding_and_dns(host: NetThread, backend: PrivilegedBackend,
                                          namespaces: Namespaces) -> None:
    ns = host.netns
    assert ns is not None
    assert sysctl(ns, "ipv6/conf/all/forwarding") == "0"
    net = network("<forward mode='route'/><dns><host ip='10.98.0.9'><hostname>db</hostname></host></dns>"
                  "<ip address='10.98.0.1' prefix='24'/><ip family='ipv6' address='fd98::1' prefix='64'/>")
    running, _ = start(host, backend, net)
    assert addresses(ns, "vbt0") == ["10.98.0.1/24", "fd98::1/64"]
    assert (sysctl(ns, "ipv6/conf/vbt0/disable_ipv6"), sysctl(ns, "ipv6/conf/vbt0/accept_ra")) == ("0", "0")
    assert sysctl(ns, "ipv6/conf/all/forwarding") == "1"
    assert 'oifname "vbt0" ip6 daddr fd98::/64 counter' in ruleset(ns)
    client = client_ns(namespaces, ns, "vbt0")
    ns_run(client, "ip", "addr", "add", "fd98::50/64", "dev", "vc", "nodad")

    def query() -> tuple[int, int, list[str]]:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.settimeout(10)
            s.sendto(build_dns_query("db"), ("fd98::1", 53))
            return parse_dns_response(s.recv(4096))

    assert in_netns(client, query)[2] == ["10.98.0.9"]
    host.run(running.stop())
    assert sysctl(ns, "ipv6/conf/all/forwarding") == "0"


def test_forward_mode_bridge_puts_taps_on_the_hosts_bridge(host: NetThread, backend: PrivilegedBackend) -> None:
    ns = host.netns
    assert ns is not None
    net = parse_network("<network><name>t1</name><forward mode='bridge'/><bridge name='br0'/></network>")
    with pytest.raises(PrivilegedError, match="host bridge br0 does not exist"):
        start(host, backend, net)
    sh(f"ip -n {ns} link add br0 type bridge", f"ip -n {ns} link set br0 up")
    before_rules = ruleset(ns)
    running, _ = start(host, backend, net)
    assert running.bridge == "br0" and ruleset(ns) == before_rules and running.info()["nftables_table"] is None
    tap = host.call(running.attach, guest_iface("52:54:00:b0:00:01"), 1000).target
    assert links(ns)[tap]["master"] == "br0"
    host.run(running.stop())
    assert tap not in links(ns) and links(ns)["br0"]["linkinfo"]["info_kind"] == "bridge"  # the host's stays


def test_services_take_garbage_floods_and_idle_clients(host: NetThread) -> None:
    """BridgeServices alone, bound to the namespace's loopback: what guests send never takes it down."""
    import random

    from vmlan.engines.dhcp import DhcpConfig, DhcpServer
    from vmlan.engines.dns import DnsConfig, DnsForwarder
    from vmlan.io.bridge_services import BridgeServices

    ns = host.netns
    assert ns is not None
    ns_run(ns, "ip", "addr", "add", "127.0.0.53/8", "dev", "lo")
    dhcp = DhcpServer(DhcpConfig(server_ip="127.0.0.1", netmask="255.0.0.0", router=None, dns=(),
                                 pool_start="127.0.0.100", pool_size=10))
    dns = DnsForwarder(DnsConfig(static={"a.test": ["192.0.2.1"]}, host_names={}))
    services = BridgeServices(host.loop, "lo", dhcp=dhcp, dns=dns, dns_listen=["127.0.0.53"], max_tcp=2,
                              tcp_idle=0.3)
    host.call(services.start)
    rng = random.Random(7)

    def flood() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(2000):
                junk = rng.randbytes(rng.randrange(0, 1500))
                if i % 3 == 0 and len(junk) > 240:  # something DHCP-shaped: op, htype, hlen right
                    junk = b"\x01\x01\x06" + junk[3:]
                s.sendto(junk, ("127.0.0.1", 67) if i % 2 else ("127.0.0.53", 53))

    in_netns(ns, flood)

    def tcp_clients() -> tuple[bytes, bytes]:
        first = socket.create_connection(("127.0.0.53", 53), timeout=5)
        second = socket.create_connection(("127.0.0.53", 53), timeout=5)
        third = socket.create_connection(("127.0.0.53", 53), timeout=5)
        try:
            refused = third.recv(10)  # closed at once: over max_tcp
            idle = first.recv(10)  # closed after tcp_idle without a query
            return refused, idle
        finally:
            for s in (first, second, third):
                s.close()

    assert in_netns(ns, tcp_clients) == (b"", b"")
    assert dns_udp(ns, "127.0.0.53", "a.test")[2] == ["192.0.2.1"]
    counters = host.call(services.counters)
    assert counters["sockets"]["internal_errors"] == 0
    assert counters["sockets"]["dns_tcp_refused"] == 1 and counters["sockets"]["dns_tcp_idle_closed"] >= 1
    assert counters["dhcp"]["internal_errors"] == 0 and counters["dns"]["internal_errors"] == 0
    assert counters["sockets"]["dhcp_received"] > 0 and counters["sockets"]["dns_udp_received"] > 0
    host.call(services.close)


def test_a_failed_adoption_takes_everything_away(host: NetThread, backend: PrivilegedBackend) -> None:
    ns = host.netns
    assert ns is not None
    before_links, before_rules = set(links(ns)), ruleset(ns)
    net = network("<forward/><ip address='10.94.0.1' prefix='24'><dhcp><range start='10.94.0.10' "
                  "end='10.94.0.20'/></dhcp></ip>")
    first, ctx = start(host, backend, net)
    host.call(first.attach, guest_iface("52:54:00:94:00:01"), 1000)
    host.run(first.release())
    blocker = host.call(_udp_blocker)  # the next daemon cannot serve DHCP: it gives up the network
    try:
        with pytest.raises(PrivilegedError, match=r"cannot bind udp 0\.0\.0\.0:67"):
            start(host, PrivilegedBackend(), net, host.context(store_of(ctx)))
    finally:
        host.call(blocker.close)
    assert set(links(ns)) == before_links and ruleset(ns) == before_rules  # bridge, TAP, table: gone
    assert sysctl(ns, "ipv4/ip_forward") == "0"  # as the first daemon found it
    assert not (host.runtime_dir / "privileged" / "vbt0.json").exists()
