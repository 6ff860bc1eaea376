"""``-netdev user`` options: QEMU's defaults and messages (net/slirp.c), vmlan's extensions and refusals."""

import contextlib
import ipaddress
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmlan.config.errors import ConfigError
from vmlan.config.qemuopts import parse_qemuopts
from vmlan.config.usernet import (
    GuestFwd,
    HostFwd,
    StaticLease,
    UserNetdev,
    inet_aton,
    parse_user_netdev,
)


def parse(text: str) -> UserNetdev:
    return parse_user_netdev(parse_qemuopts(text))


def a(text: str) -> IPv4Address:
    return IPv4Address(text)


def test_defaults_are_qemus():
    nd = parse("user,id=u")
    assert nd == UserNetdev("u")
    assert (nd.net, nd.host, nd.dns, nd.dhcp_start) == (
        IPv4Network("10.0.2.0/24"),
        a("10.0.2.2"),
        a("10.0.2.3"),
        a("10.0.2.15"),
    )
    assert (nd.hubid, nd.pool, nd.restrict, nd.mtu, nd.host_loopback) == (0, 16, False, 1500, True)
    assert (nd.hostname, nd.domainname, nd.dnssearch, nd.hostfwd, nd.guestfwd) == (None, None, (), (), ())
    assert (nd.dns_servers, nd.dns_static, nd.static_leases, nd.leases_file) == ((), (), (), None)
    assert nd.dhcp_pool == tuple(a(f"10.0.2.{n}") for n in range(15, 31))
    assert nd.info == "net=10.0.2.0,restrict=off"


def test_type_may_be_implied_or_explicit():
    assert parse("type=user,id=u") == parse("user,id=u")


def test_net_moves_host_dns_and_dhcpstart():
    nd = parse("user,id=u,net=192.168.76.0/24")
    assert (nd.net, nd.host, nd.dns, nd.dhcp_start) == (
        IPv4Network("192.168.76.0/24"),
        a("192.168.76.2"),
        a("192.168.76.3"),
        a("192.168.76.15"),
    )
    assert nd.info == "net=192.168.76.0,restrict=off"


DNS_SERVER_EXPECTS = "Parameter 'dns-server' expects IPV4[:PORT] or [IPV6]:PORT or IPV6"


@pytest.mark.parametrize(
    ("value", "net"),
    [
        ("10.0.2.0/24", "10.0.2.0/24"),
        ("10.0.2.0/255.255.255.0", "10.0.2.0/24"),
        ("10.0.2.99/24", "10.0.2.0/24"),  # host bits are cleared, as QEMU's net &= mask
        ("172.20.0.0/16", "172.20.0.0/16"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.2/24", "10.0.0.0/24"),  # inet_aton's short form: 10.2 = 10.0.0.2
        ("0x0a.0.2.0/24", "10.0.2.0/24"),
        # no mask: QEMU's classful guess in net_slirp_init()
        ("10.0.2.0", "10.0.0.0/8"),
        ("172.16.5.0", "172.16.0.0/12"),
        ("130.1.0.0", "130.1.0.0/16"),
        ("192.168.7.0", "192.168.0.0/16"),
        ("198.18.9.0", "198.18.0.0/15"),
        ("224.1.2.0", "224.1.2.0/24"),
        ("192.0.2.16,dhcpstart=192.0.2.20", "192.0.2.16/28"),  # QEMU's default .31 would be the broadcast
    ],
)
def test_net_syntax(value, net):
    assert parse(f"user,id=u,net={value}").net == IPv4Network(net)


def test_legacy_ip_is_net_slash_24():
    nd = parse("user,id=u,ip=10.1.2.0")
    assert nd.net == IPv4Network("10.1.2.0/24") and nd.host == a("10.1.2.2")


def test_explicit_addresses_and_small_net():
    nd = parse("user,id=u,net=10.9.0.0/16,host=10.9.1.1,dns=10.9.1.53,dhcpstart=10.9.2.100")
    assert (nd.host, nd.dns, nd.dhcp_start) == (a("10.9.1.1"), a("10.9.1.53"), a("10.9.2.100"))
    # /27: the default pool of 16 from .15 fits (.15..30, broadcast .31)
    assert parse("user,id=u,net=10.0.2.0/27").pool == 16
    # /28: .15 is the broadcast address: refused; from .4 the pool is cut to what fits below .15
    nd = parse("user,id=u,net=10.0.2.0/28,dhcpstart=10.0.2.4")
    assert nd.pool == 11 and nd.dhcp_pool[-1] == a("10.0.2.14")


def test_flags_and_strings():
    nd = parse(
        "user,id=u,hubid=3,restrict=yes,hostname=guest1,domainname=lab.example,"
        "dnssearch=mgmt.example.org,dnssearch=Example.org.,mtu=9000,leases=/tmp/l.json,host-loopback=off"
    )
    assert (nd.hubid, nd.restrict, nd.hostname, nd.domainname) == (3, True, "guest1", "lab.example")
    assert nd.dnssearch == ("mgmt.example.org", "Example.org")
    assert (nd.mtu, nd.leases_file, nd.host_loopback) == (9000, "/tmp/l.json", False)
    assert nd.info == "net=10.0.2.0,restrict=on"
    assert parse("user,id=u,restrict").restrict is True  # a bare flag means on
    assert parse("user,id=u,restrict=n").restrict is False
    assert parse("user,id=u,hostname=").hostname is None  # libslirp sends no option 12 for ""


def test_ipv4_ipv6_switches():
    """QEMU's net_init_slirp(): both by default; ipv6=on alone turns IPv4 off, ipv4=on alone IPv6."""
    v4_only = UserNetdev("u", ipv6=False)
    assert parse("user,id=u") == UserNetdev("u") and UserNetdev("u").ipv4 and UserNetdev("u").ipv6
    assert parse("user,id=u,ipv6=off") == v4_only
    assert parse("user,id=u,ipv4=on,ipv6=off") == v4_only
    assert parse("user,id=u,ipv4=on") == v4_only
    assert parse("user,id=u,ipv6=on") == UserNetdev("u", ipv4=False)
    assert parse("user,id=u,ipv4=on,ipv6=on") == UserNetdev("u")
    assert parse("user,id=u,ipv4=off") == UserNetdev("u", ipv4=False)


def test_ipv6_addresses_default_to_the_prefix_and_follow_it():
    nd = parse("user,id=u,ipv6-net=fd00:1:2:3::/64")
    assert (str(nd.net6), str(nd.host6), str(nd.dns6)) == ("fd00:1:2:3::/64", "fd00:1:2:3::2", "fd00:1:2:3::3")
    nd = parse("user,id=u,ipv6-prefix=fd00::,ipv6-prefixlen=48,ipv6-host=fd00::9,ipv6-dns=fd00::53")
    assert (str(nd.net6), str(nd.host6), str(nd.dns6)) == ("fd00::/48", "fd00::9", "fd00::53")
    assert parse("user,id=u").net6 == ipaddress.IPv6Network("fec0::/64")


@pytest.mark.parametrize(
    ("rule", "fwd"),
    [
        ("tcp::5555-:22", HostFwd("tcp", "", 5555, None, 22)),
        ("::5555-:22", HostFwd("tcp", "", 5555, None, 22)),
        ("udp:127.0.0.1:6000-10.0.2.20:53", HostFwd("udp", "127.0.0.1", 6000, "10.0.2.20", 53)),
        ("tcp:127.0.0.1:0-:80", HostFwd("tcp", "127.0.0.1", 0, None, 80)),
        ("tcp::0x50-:0x50", HostFwd("tcp", "", 80, None, 80)),  # qemu_strtoi base 0
        ("tcp:127.1:8080-10.0.2.15:8080", HostFwd("tcp", "127.0.0.1", 8080, "10.0.2.15", 8080)),
    ],
)
def test_hostfwd_valid(rule, fwd):
    nd = parse(f"user,id=u,hostfwd={rule}")
    assert nd.hostfwd == (fwd,)
    assert nd.hostfwd[0].rule == rule
    expected_guest = a(fwd.guest_addr) if fwd.guest_addr else a("10.0.2.15")
    assert nd.hostfwd_guest(nd.hostfwd[0]) == expected_guest


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ("5555", "No : separators"),
        ("sctp::5555-:22", "Bad protocol name"),
        ("tcp:5555-22", "Missing : separator"),
        ("tcp:1.2.3.256:5555-:22", "Bad host address"),
        ("tcp::5555", "Bad host port separator"),
        ("tcp::-:22", "Bad host port"),
        ("tcp::65536-:22", "Bad host port"),
        ("tcp::80x-:22", "Bad host port"),  # QEMU accepts trailing junk here; vmlan does not
        ("tcp::5555-22", "Missing guest address"),
        ("tcp::5555-10.0.2.x:22", "Bad guest address"),
        ("tcp::5555-:0", "Bad guest port"),
        ("tcp::5555-:", "Bad guest port"),
        ("tcp::5555-:65536", "Bad guest port"),
        ("tcp::5555-10.0.3.15:22", "Bad guest address: 10.0.3.15 is not a guest address of net 10.0.2.0/24"),
        ("tcp::5555-10.0.2.2:22", "Bad guest address: 10.0.2.2 is not a guest address of net 10.0.2.0/24"),
        ("unix:/tmp/s-:22", "unix: host sockets are not supported yet by vmlan (planned)"),
    ],
)
def test_hostfwd_invalid(rule, reason):
    with pytest.raises(ConfigError) as info:
        parse(f"user,id=u,hostfwd={rule}")
    assert str(info.value) == f"Invalid host forwarding rule '{rule}' ({reason})"


def test_hostfwd_repeats_make_a_list_and_conflicts_are_refused():
    nd = parse("user,id=u,hostfwd=tcp::2222-:22,hostfwd=udp::2222-:53,hostfwd=tcp:127.0.0.1:0-:80,hostfwd=::0-:81")
    assert [f.rule for f in nd.hostfwd] == ["tcp::2222-:22", "udp::2222-:53", "tcp:127.0.0.1:0-:80", "::0-:81"]
    both = parse("user,id=u,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.2:2222-:23")
    assert len(both.hostfwd) == 2
    with pytest.raises(ConfigError) as info:
        parse("user,id=u,hostfwd=tcp::2222-:22,hostfwd=tcp:127.0.0.1:2222-:23")
    assert str(info.value) == (
        "Could not set up host forwarding rule 'tcp:127.0.0.1:2222-:23' "
        "(tcp port 2222 is already forwarded by 'tcp::2222-:22')"
    )


@pytest.mark.parametrize(
    ("rule", "fwd"),
    [
        ("tcp:10.0.2.100:1234-cmd:netcat 10.10.1.1 4321", GuestFwd("10.0.2.100", 1234, "netcat 10.10.1.1 4321")),
        (":10.0.2.100:1234-127.0.0.1:4321", GuestFwd("10.0.2.100", 1234, ("127.0.0.1", 4321))),
        ("tcp::80-localhost:8080", GuestFwd("10.0.2.4", 80, ("localhost", 8080))),  # server: libslirp's net|.4
        ("tcp::443-web.internal.example:443", GuestFwd("10.0.2.4", 443, ("web.internal.example", 443))),
        ("tcp:10.0.2.5:53-cmd:nc 1.1.1.1 53", GuestFwd("10.0.2.5", 53, "nc 1.1.1.1 53")),
    ],
)
def test_guestfwd_valid(rule, fwd):
    nd = parse(f"user,id=u,guestfwd={rule}")
    assert nd.guestfwd == (fwd,)
    assert nd.guestfwd[0].rule == rule


def test_guestfwd_commas_and_default_server_follow_net():
    nd = parse("user,id=u,net=192.168.76.0/24,guestfwd=tcp::9-cmd:printf a,,b")
    assert nd.guestfwd == (GuestFwd("192.168.76.4", 9, "printf a,b"),)


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ("tcp", "No : separators"),
        ("udp:10.0.2.100:1234-cmd:x", "Bad protocol name"),
        ("tcp:10.0.2.100", "Missing : separator"),
        ("tcp:10.0.2.x:1234-cmd:x", "Bad server address"),
        ("tcp:10.0.2.100:1234", "Missing - separator"),
        ("tcp:10.0.2.100:0-cmd:x", "Bad port"),
        ("tcp:10.0.2.100:0x10-cmd:x", "Bad port"),  # strtol base 10 here
        ("tcp:10.0.2.100:70000-cmd:x", "Bad port"),
        ("tcp:10.0.2.100:1234-cmd:", "empty command"),
        ("tcp:10.0.2.100:1234-127.0.0.1:0", "Bad target port"),
        ("tcp:10.0.2.100:1234-127.0.0.300:80", "Bad target address"),
        (
            "tcp:10.0.2.100:1234-tcp:10.10.1.1:4321",
            "character device 'tcp:10.10.1.1:4321' is not supported by vmlan: use -cmd:COMMAND or -HOST:PORT",
        ),
        (
            "tcp:10.0.2.100:1234-stdio",
            "character device 'stdio' is not supported by vmlan: use -cmd:COMMAND or -HOST:PORT",
        ),
        (
            "tcp:10.0.2.100:1234-unix:/tmp/sock",
            "character device 'unix:/tmp/sock' is not supported by vmlan: use -cmd:COMMAND or -HOST:PORT",
        ),
    ],
)
def test_guestfwd_invalid(rule, reason):
    with pytest.raises(ConfigError) as info:
        parse(f"user,id=u,guestfwd={rule}")
    assert str(info.value) == f"Invalid guest forwarding rule '{rule}' ({reason})"


@pytest.mark.parametrize(
    ("rules", "reason"),
    [
        (["tcp:10.0.3.1:80-cmd:x"], "server 10.0.3.1 is not in net 10.0.2.0/24"),
        (["tcp:10.0.2.2:80-cmd:x"], "server 10.0.2.2 is the host, DNS, network or broadcast address"),
        (["tcp:10.0.2.3:80-cmd:x"], "server 10.0.2.3 is the host, DNS, network or broadcast address"),
        (["tcp::80-cmd:x", "tcp:10.0.2.4:80-cmd:y"], "10.0.2.4:80 is already forwarded"),
    ],
)
def test_guestfwd_conflicts(rules, reason):
    text = "user,id=u," + ",".join(f"guestfwd={r}" for r in rules)
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert str(info.value) == f"Conflicting/invalid host:port in guest forwarding rule '{rules[-1]}' ({reason})"


def test_vmlan_extensions():
    nd = parse(
        "user,id=u,dns-server=1.1.1.1,dns-server=127.0.0.53:5353,"
        "dns-static=Test.Vmlan.Example.:10.99.0.7,dns-static=db:10.0.2.40,"
        "lease-static=52:54:00:12:34:56=10.0.2.20,lease-static=52:54:00:AB:CD:EF=10.0.2.200,pool=8"
    )
    assert nd.dns_servers == (("1.1.1.1", 53), ("127.0.0.53", 5353))
    assert nd.dns_static == (("test.vmlan.example", a("10.99.0.7")), ("db", a("10.0.2.40")))
    assert nd.static_leases == (
        StaticLease("52:54:00:12:34:56", a("10.0.2.20")),
        StaticLease("52:54:00:ab:cd:ef", a("10.0.2.200")),
    )
    assert nd.pool == 8
    assert nd.dhcp_pool == tuple(a(f"10.0.2.{n}") for n in range(15, 23) if n != 20)


def test_dhcp_pool_skips_reserved_addresses():
    nd = parse("user,id=u,dhcpstart=10.0.2.2,host=10.0.2.5,dns=10.0.2.6,guestfwd=tcp::1-cmd:x,pool=8")
    assert nd.dhcp_pool == tuple(a(f"10.0.2.{n}") for n in (2, 3, 7, 8, 9))
    assert nd.guestfwd[0].server == "10.0.2.4"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # structure
        ("user", "Parameter 'id' is missing"),
        ("user,id=9u", "Parameter 'id' expects an identifier (got '9u' for netdev)"),
        ("user,id=u,foo=1", "Invalid parameter 'foo'"),
        ("user,id=u,vlan=1", "Invalid parameter 'vlan'"),
        ("user,id=u,net=10.0.2.0/24,net=10.0.3.0/24", "Parameter 'net' given more than once"),
        ("user,id=u,hubid=-1", "Parameter 'hubid' expects a value in 0..2147483647 (got '-1')"),
        # ipv4 / ipv6
        ("user,id=u,ipv4=off,ipv6=off", "IPv4 and IPv6 disabled"),
        ("user,id=u,ipv4=off,net=10.0.2.0/24", "IPv4 disabled but netmask/host/dns provided"),
        ("user,id=u,ipv6=off,ipv6-host=fec0::5", "IPv6 disabled but prefix/host6/dns6 provided"),
        ("user,id=u,ipv6-net=fec0::/64,ipv6-prefix=fec0::", "Parameters 'ipv6-net' and 'ipv6-prefix'/'ipv6-prefixlen'"),
        ("user,id=u,ipv6-prefix=nope", "Failed to parse IPv6 prefix (got 'nope')"),
        ("user,id=u,ipv6-prefixlen=127", "Invalid IPv6 prefix provided (IPv6 prefix length must be between 0 and 126"),
        ("user,id=u,ipv6-host=fd00::1", "IPv6 Host doesn't belong to network (ipv6-host=fd00::1, ipv6-net=fec0::/64)"),
        ("user,id=u,ipv6-dns=x", "Failed to parse IPv6 DNS (ipv6-dns=x)"),
        ("user,id=u,ipv6-dns=fec0::2", "IPv6 DNS must be different from IPv6 host"),
        ("user,id=u,ipv4=maybe", "Parameter 'ipv4' expects 'on' or 'off' (got 'maybe')"),
        # net= (net_slirp_init)
        ("user,id=u,net=", "Failed to parse netmask (net=)"),
        ("user,id=u,net=10.0.2.x/24", "Failed to parse netmask (net=10.0.2.x/24)"),
        ("user,id=u,net=10.0.2.0/24x", "Failed to parse netmask (trailing chars) (net=10.0.2.0/24x)"),
        ("user,id=u,net=10.0.2.0/3", "Invalid netmask provided (must be in range 4-32) (net=10.0.2.0/3)"),
        ("user,id=u,net=10.0.2.0/33", "Invalid netmask provided (must be in range 4-32) (net=10.0.2.0/33)"),
        ("user,id=u,net=10.0.2.0/", "Invalid netmask provided (must be in range 4-32) (net=10.0.2.0/)"),
        (
            "user,id=u,net=10.0.2.0/255.0.255.0",
            "Failed to parse netmask (not a contiguous mask) (net=10.0.2.0/255.0.255.0)",
        ),
        ("user,id=u,ip=10.0.2.x", "Failed to parse netmask (ip=10.0.2.x/24)"),
        ("user,id=u,ip=10.0.2.0,net=10.0.2.0/24", "Parameters 'net' and 'ip' cannot both be given"),
        # host=
        ("user,id=u,host=", "Failed to parse host (host=)"),
        ("user,id=u,host=10.0.2.two", "Failed to parse host (host=10.0.2.two)"),
        ("user,id=u,host=10.0.3.2", "Host doesn't belong to network (host=10.0.3.2, net=10.0.2.0/24)"),
        (
            "user,id=u,net=192.168.76.0/24,host=10.0.2.2",
            "Host doesn't belong to network (host=10.0.2.2, net=192.168.76.0/24)",
        ),
        ("user,id=u,host=10.0.2.255", "Parameter 'host' cannot be the broadcast address of net 10.0.2.0/24"),
        ("user,id=u,host=10.0.2.0", "Parameter 'host' cannot be the network address of net 10.0.2.0/24"),
        # dns=
        ("user,id=u,dns=dns", "Failed to parse DNS (dns=dns)"),
        ("user,id=u,dns=8.8.8.8", "DNS doesn't belong to network (dns=8.8.8.8, net=10.0.2.0/24)"),
        ("user,id=u,dns=10.0.2.2", "DNS must be different from host (dns=10.0.2.2, host=10.0.2.2)"),
        ("user,id=u,host=10.0.2.3", "DNS must be different from host (dns=10.0.2.3, host=10.0.2.3)"),
        # dhcpstart=
        ("user,id=u,dhcpstart=x", "Failed to parse DHCP start address (dhcpstart=x)"),
        ("user,id=u,dhcpstart=10.0.3.15", "DHCP doesn't belong to network (dhcpstart=10.0.3.15, net=10.0.2.0/24)"),
        (
            "user,id=u,dhcpstart=10.0.2.3",
            "DHCP must be different from host and DNS (dhcpstart=10.0.2.3, host=10.0.2.2, dns=10.0.2.3)",
        ),
        (
            "user,id=u,dhcpstart=10.0.2.2",
            "DHCP must be different from host and DNS (dhcpstart=10.0.2.2, host=10.0.2.2, dns=10.0.2.3)",
        ),
        ("user,id=u,net=10.0.2.0/28", "Parameter 'dhcpstart' cannot be the broadcast address of net 10.0.2.0/28"),
        ("user,id=u,net=192.0.2.16", "Parameter 'dhcpstart' cannot be the broadcast address of net 192.0.2.16/28"),
        # pool=
        ("user,id=u,pool=0", "Parameter 'pool' expects a value in 1..2147483647 (got '0')"),
        (
            "user,id=u,pool=241",
            "Parameter 'pool' expects a value in 1..240 (got '241'): the pool from 10.0.2.15 must end below "
            "the broadcast address 10.0.2.255",
        ),
        # strings
        ("user,id=u,domainname=", "'domainname' parameter cannot be empty"),
        ("user,id=u,domainname=" + "d" * 256, "'domainname' parameter cannot exceed 255 bytes (domainname= has 256)"),
        ("user,id=u,hostname=" + "h" * 256, "'vhostname' parameter cannot exceed 255 bytes (hostname= has 256)"),
        ("user,id=u,dnssearch=", "Parameter 'dnssearch' expects a domain name (got '')"),
        ("user,id=u,dnssearch=a..b", "Parameter 'dnssearch' expects a domain name (got 'a..b')"),
        ("user,id=u,dnssearch=" + "x" * 64 + ".org", "Parameter 'dnssearch' expects a domain name"),
        ("user,id=u,restrict=maybe", "Parameter 'restrict' expects 'on' or 'off' (got 'maybe')"),
        ("user,id=u,host-loopback=2", "Parameter 'host-loopback' expects 'on' or 'off' (got '2')"),
        ("user,id=u,mtu=575", "Parameter 'mtu' expects a value in 576..65520 (got '575')"),
        ("user,id=u,mtu=65521", "Parameter 'mtu' expects a value in 576..65520 (got '65521')"),
        ("user,id=u,mtu=big", "Parameter 'mtu' expects a number (got 'big')"),
        ("user,id=u,leases=", "Parameter 'leases' expects a file name (got '')"),
        # dns-server= / dns-static=
        ("user,id=u,dns-server=resolver", f"{DNS_SERVER_EXPECTS} (got 'resolver')"),
        ("user,id=u,dns-server=1.1.1.1:0", f"{DNS_SERVER_EXPECTS} (got '1.1.1.1:0')"),
        ("user,id=u,dns-server=1.1.1.1:", f"{DNS_SERVER_EXPECTS} (got '1.1.1.1:')"),
        ("user,id=u,dns-server=[::1", f"{DNS_SERVER_EXPECTS} (got '[::1')"),
        ("user,id=u,dns-static=name", "Parameter 'dns-static' expects NAME:IPV4 (got 'name')"),
        ("user,id=u,dns-static=name:10.0.2", "Parameter 'dns-static' expects NAME:IPV4 (got 'name:10.0.2')"),
        ("user,id=u,dns-static=bad name:10.0.2.9", "Parameter 'dns-static' expects a domain name (got 'bad name')"),
        # lease-static=
        (
            "user,id=u,lease-static=52:54:00:12:34:56",
            "Parameter 'lease-static' expects MAC=IPV4, e.g. 52:54:00:12:34:56=10.0.2.20 (got '52:54:00:12:34:56')",
        ),
        (
            "user,id=u,lease-static=52-54-00-12-34-56=10.0.2.20",
            "Parameter 'lease-static' expects MAC=IPV4",
        ),
        (
            "user,id=u,lease-static=52:54:00:12:34:56=10.0.2",
            "Parameter 'lease-static' expects MAC=IPV4 (got '52:54:00:12:34:56=10.0.2')",
        ),
        (
            "user,id=u,lease-static=11:22:33:44:55:66=10.0.2.20",
            "Parameter 'lease-static' MAC 11:22:33:44:55:66 is a multicast address",
        ),
        (
            "user,id=u,lease-static=52:54:00:12:34:56=10.0.3.20",
            "Parameter 'lease-static' address 10.0.3.20 is not a guest address of net 10.0.2.0/24",
        ),
        (
            "user,id=u,lease-static=52:54:00:12:34:56=10.0.2.2",
            "Parameter 'lease-static' address 10.0.2.2 is not a guest address of net 10.0.2.0/24",
        ),
        (
            "user,id=u,guestfwd=tcp::1-cmd:x,lease-static=52:54:00:12:34:56=10.0.2.4",
            "Parameter 'lease-static' address 10.0.2.4 is not a guest address of net 10.0.2.0/24",
        ),
        (
            "user,id=u,lease-static=52:54:00:12:34:56=10.0.2.20,lease-static=52:54:00:12:34:56=10.0.2.21",
            "Parameter 'lease-static' gives MAC 52:54:00:12:34:56 more than one address",
        ),
        (
            "user,id=u,lease-static=52:54:00:12:34:56=10.0.2.20,lease-static=52:54:00:12:34:57=10.0.2.20",
            "Parameter 'lease-static' gives 10.0.2.20 to both 52:54:00:12:34:56 and 52:54:00:12:34:57",
        ),
    ],
)
def test_errors_name_the_option_and_value(text, message):
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_tftp_bootfile_and_smb_options():
    cfg = parse("user,id=u,tftp=/srv/tftp,bootfile=pxelinux.0,tftp-server-name=boot.example,smb=/srv/share")
    assert (cfg.tftp, cfg.bootfile, cfg.tftp_server_name, cfg.smb) == (
        "/srv/tftp", "pxelinux.0", "boot.example", "/srv/share")
    assert cfg.smbserver == a("10.0.2.4")
    assert parse("user,id=u,smb=/s,smbserver=10.0.2.9").smbserver == a("10.0.2.9")
    assert parse("user,id=u").smbserver is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("user,id=u,smbserver=10.0.2.9", "Parameter 'smbserver' needs smb=DIR"),
        ("user,id=u,smb=/s,smbserver=10.0.3.9", "Parameter 'smbserver' must be a free address of net"),
        ("user,id=u,smb=/s,smbserver=10.0.2.2", "Parameter 'smbserver' must be a free address of net"),
        ("user,id=u,smb=/s,smbserver=x", "Failed to parse SMB address (smbserver=x)"),
        ("user,id=u,bootfile=" + "b" * 128, "Parameter 'bootfile' expects 1..127 ASCII characters"),
        ("user,id=u,tftp-server-name=" + "n" * 256, "'tftp-server-name' parameter cannot exceed 255 bytes"),
    ],
)
def test_tftp_and_smb_errors(text, message):
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.2.15", "10.0.2.15"),
        ("10.2", "10.0.0.2"),
        ("127.1", "127.0.0.1"),
        ("10.1.515", "10.1.2.3"),
        ("167772687", "10.0.2.15"),
        ("0x7f.0.0.01", "127.0.0.1"),
        ("012.0.2.017", "10.0.2.15"),
        ("255.255.255.255", "255.255.255.255"),
    ],
)
def test_inet_aton_forms(text, expected):
    assert inet_aton(text) == a(expected)


@pytest.mark.parametrize(
    "text", ["", "1.2.3.4.5", "256.0.0.1", "1.2.3.256", "1.16777216", "08.1.1.1", "0x", "1.2.3.4 ", "a.b.c.d", "1..2"]
)
def test_inet_aton_rejects(text):
    assert inet_aton(text) is None


_KEYS = [
    "hubid", "net", "ip", "host", "dns", "dhcpstart", "ipv4", "ipv6", "restrict", "hostname", "domainname",
    "dnssearch", "hostfwd", "guestfwd", "dns-server", "dns-static", "pool", "mtu", "lease-static", "leases",
    "host-loopback", "tftp", "bogus",
]  # fmt: skip
_VALUE_ALPHABET = "0123456789abcdefx.:/-=, tcpudpmn" + "\u00e9\u00b2"
_PLAUSIBLE = [
    "10.0.2.0/24", "192.168.76.0/24", "10.0.0.0/8", "10.0.2.0/28", "10.0.2.20", "10.0.2.4", "192.168.76.9", "on",
    "off", "tcp::2222-:22", "udp:127.0.0.1:0-10.0.2.30:53", "tcp::80-cmd:x", "tcp:10.0.2.9:80-127.0.0.1:8080",
    "8", "200", "1500", "52:54:00:12:34:56=10.0.2.20", "x.example:10.0.2.9", "1.1.1.1:53", "example.org", "/tmp/l",
]  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_KEYS),
            st.one_of(st.sampled_from(_PLAUSIBLE), st.text(_VALUE_ALPHABET, max_size=30)),
        ),
        max_size=6,
    )
)
def test_parse_or_raise_config_error(items):
    text = "user,id=u," + ",".join(f"{k}={v}" for k, v in items)
    try:
        nd = parse(text)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert nd.host in nd.net and nd.dns in nd.net and nd.dhcp_start in nd.net
    assert len({nd.host, nd.dns, nd.dhcp_start}) == 3
    assert all(addr in nd.net for addr in nd.dhcp_pool)
    assert int(nd.dhcp_start) + nd.pool <= int(nd.net.broadcast_address)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_text_parses_or_raises_config_error(text):
    with contextlib.suppress(ConfigError):
        parse("user," + text)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["", "tcp", "udp"]),
    st.sampled_from(["", "127.0.0.1", "127.0.0.2"]),
    st.integers(0, 65535),
    st.sampled_from(["", "10.0.2.15", "10.0.2.99"]),
    st.integers(1, 65535),
)
def test_hostfwd_roundtrip(proto, host, host_port, guest, guest_port):
    rule = f"{proto}:{host}:{host_port}-{guest}:{guest_port}"
    (fwd,) = parse(f"user,id=u,hostfwd={rule}").hostfwd
    assert fwd == HostFwd(proto or "tcp", host, host_port, guest or None, guest_port)
