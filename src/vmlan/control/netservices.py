"""What a libvirt ``<network>`` asks of its DHCP and DNS servers, as configurations of vmlan's engines.

libvirt writes a dnsmasq configuration (src/network/bridge_driver.c networkDnsmasqConfContents); vmlan
runs its own engines (:mod:`vmlan.engines.dhcp`, :mod:`vmlan.engines.dns`) and builds their
configurations here, pure, so either backend can serve a network the same way.

DHCP (the one IPv4 ``<ip>`` with a ``<dhcp>``)
    server and gateway = the ``<ip address>``; no router option on an isolated network (libvirt's
    ``dhcp-option=3``: its guests must not get a default route); DNS option = the gateway unless
    ``<dns enable='no'>``; option 15 = ``<domain name>``, option 26 = ``<mtu>``; ``<host mac ip>`` =
    static leases; ``<bootp file server>`` = the boot file and option 66 (the engine always sends its
    own address as ``siaddr``). The lease time is the first range's ``<lease>``, else dnsmasq's
    default of one hour; ``expiry='0'`` (infinite) is the longest finite lease, 4294967294 s.
    Several ranges: the engine's pool is one run of addresses, so it spans them all and the addresses
    between ranges are reported as in use (:attr:`DhcpPlan.in_use`) and never offered.
DNS (unless ``<dns enable='no'>``)
    upstreams = the ``<forwarder addr>`` entries without a domain, else the host's resolv.conf;
    local names = ``<dns><host>`` (IPv4) and ``<dhcp><host name ip>``, each also under ``<domain
    name>`` when it has no dot (dnsmasq's expand-hosts, which libvirt turns on with a domain), and
    ``host.vmlan.internal`` = the gateway.

What the engines cannot do is left out and listed in :attr:`DhcpPlan.ignored` / :attr:`DnsPlan.ignored`
(the backend logs it once): per-domain forwarders, ``localOnly`` and ``forwardPlainNames='no'``,
TXT and SRV records, IPv6 host records, per-host names and lease times, client-ID hosts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from vmlan.config.libvirt import Network, NetworkIP, parse_mac
from vmlan.config.libvirt.mac import format_mac
from vmlan.config.libvirt.network import Lease
from vmlan.engines.dhcp import DhcpConfig, DhcpError
from vmlan.engines.dns import HOST_NAME, DnsConfig, DnsError, read_resolv_conf

__all__ = ["DEFAULT_LEASE", "MAX_POOL", "DhcpPlan", "DnsPlan", "ServiceConfigError", "dhcp_plan", "dns_plan",
           "lease_seconds"]

DEFAULT_LEASE = 3600  # dnsmasq's default lease time
INFINITE_LEASE = 0xFFFFFFFE  # the engine's longest (0xFFFFFFFF is "infinite" on the wire, which it refuses)
MAX_POOL = 65536  # addresses the pool may span (libvirt refuses ranges larger than 65535 addresses)
_UNIT = {"seconds": 1, "minutes": 60, "hours": 3600}


class ServiceConfigError(ValueError):
    """A network whose DHCP or DNS the engines refuse (one line; the caller names the network)."""


def lease_seconds(lease: Lease | None) -> int:
    if lease is None:
        return DEFAULT_LEASE
    if lease.expiry == 0:
        return INFINITE_LEASE
    return max(1, min(INFINITE_LEASE, lease.expiry * _UNIT.get(lease.unit, 60)))


@dataclass(frozen=True)
class DhcpPlan:
    config: DhcpConfig
    ip: NetworkIP
    #: ``in_use(ip, mac)`` for the engine: addresses of the pool that lie between ranges (None: one range).
    in_use: Callable[[bytes, bytes], bool] | None = None
    ignored: tuple[str, ...] = ()


@dataclass(frozen=True)
class DnsPlan:
    config: DnsConfig
    listen: tuple[str, ...]  # addresses of the bridge to serve DNS on
    ignored: tuple[str, ...] = ()


def _dhcp_ip(net: Network) -> NetworkIP | None:
    return next((ip for ip in net.ips if ip.address.version == 4 and ip.has_dhcp), None)


def dhcp_plan(net: Network) -> DhcpPlan | None:
    """The DHCP server's configuration, or None when the network has no IPv4 ``<dhcp>``."""
    ip = _dhcp_ip(net)
    if ip is None:
        return None
    subnet = ip.network
    assert isinstance(subnet, IPv4Network)
    ignored: list[str] = []
    first_host, last_host = int(subnet.network_address) + 1, int(subnet.broadcast_address) - 1
    ranges = [(max(int(r.start), first_host), min(int(r.end), last_host)) for r in ip.ranges]
    ranges = [(a, b) for a, b in ranges if a <= b]
    in_use: Callable[[bytes, bytes], bool] | None = None
    if ranges:
        low, high = min(a for a, _ in ranges), max(b for _, b in ranges)
        if high - low + 1 > MAX_POOL:
            ignored.append(f"DHCP ranges after the first (together they span more than {MAX_POOL} addresses)")
            ranges = ranges[:1]
            low, high = ranges[0]
        if len(ranges) > 1:
            spans = tuple(ranges)

            def outside(addr: bytes, _mac: bytes) -> bool:
                value = int.from_bytes(addr, "big")
                return not any(a <= value <= b for a, b in spans)

            in_use = outside
        pool_start, pool_size = str(IPv4Address(low)), high - low + 1
    else:  # hosts only: a pool of the gateway's next address that the gateway itself takes out
        pool_start, pool_size = str(IPv4Address(first_host)), 1
        in_use = _everything
    static: dict[str, str] = {}
    for host in ip.hosts:
        if host.id is not None and host.mac is None:
            ignored.append(f"DHCP host with client id {host.id} (leases are per MAC)")
            continue
        if host.lease is not None:
            ignored.append(f"lease time of DHCP host {host.mac or host.name}")
        if host.mac is None or host.ip is None:
            continue
        raw = parse_mac(host.mac)
        if raw is None:
            raise ServiceConfigError(f"DHCP: invalid host MAC '{host.mac}'")
        static[format_mac(raw)] = str(host.ip)
    first = ip.ranges[0].lease if ip.ranges else None
    if len({r.lease for r in ip.ranges}) > 1:
        ignored.append("lease times of DHCP ranges after the first")
    forwarding = net.forward is not None
    gateway = str(ip.address)
    dns_on = net.dns.enable is not False
    try:
        config = DhcpConfig(
            server_ip=gateway,
            netmask=str(subnet.netmask),
            router=gateway if forwarding else None,
            dns=(gateway,) if dns_on else (),
            pool_start=pool_start,
            pool_size=pool_size,
            lease_time=lease_seconds(first),
            domainname=net.domain,
            mtu=net.mtu if net.mtu is not None and 68 <= net.mtu <= 0xFFFF else None,
            static_leases=static,
            bootfile=ip.bootp_file,
            tftp_server_name=str(ip.bootp_server) if ip.bootp_server is not None else None,
        )
    except DhcpError as exc:
        raise ServiceConfigError(f"DHCP: {exc}") from None
    return DhcpPlan(config, ip, in_use, tuple(ignored))


def _everything(_addr: bytes, _mac: bytes) -> bool:
    return True


def dns_plan(net: Network, resolv_conf: str = "") -> DnsPlan | None:
    """The DNS forwarder's configuration, or None when DNS is off or the network has no address.

    ``resolv_conf``: the host's /etc/resolv.conf text, for upstreams when no ``<forwarder addr>`` is given.
    """
    dns = net.dns
    if dns.enable is False or not net.ips:
        return None
    ignored: list[str] = []
    upstreams: list[tuple[str, int]] = []
    for fwd in dns.forwarders:
        if fwd.domain is not None:
            ignored.append(f"DNS forwarder for domain {fwd.domain}")
        elif fwd.addr is not None:
            upstreams.append((str(fwd.addr), 53))
    if not upstreams:
        upstreams = [(server, 53) for server in read_resolv_conf(resolv_conf)]
    if net.domain_local_only:
        ignored.append(f"localOnly of domain {net.domain}")
    if dns.forward_plain_names is False:
        ignored.append("forwardPlainNames='no'")
    if dns.txts or dns.srvs:
        ignored.append("DNS TXT and SRV records")
    static: dict[str, list[str]] = {}

    def add(name: str, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        if addr.version != 4:
            ignored.append(f"IPv6 DNS host record {name}")
            return
        names = [name]
        if net.domain and "." not in name.rstrip("."):
            names.append(f"{name}.{net.domain}")
        for each in names:
            entry = static.setdefault(each.lower(), [])
            if str(addr) not in entry:
                entry.append(str(addr))

    for host in dns.hosts:
        for name in host.hostnames:
            add(name, host.ip)
    for ip in net.ips:
        for dhcp_host in ip.hosts:
            if dhcp_host.name and dhcp_host.ip is not None:
                add(dhcp_host.name, dhcp_host.ip)
    listen = tuple(str(ip.address) for ip in net.ips)
    gateway = next((str(ip.address) for ip in net.ips if ip.address.version == 4), None)
    try:
        config = DnsConfig(
            upstreams=tuple(upstreams),
            static=static,
            host_names={HOST_NAME: gateway} if gateway else {},
            tcp_upstream=True,
        )
    except DnsError as exc:
        raise ServiceConfigError(f"DNS: {exc}") from None
    return DnsPlan(config, listen, tuple(dict.fromkeys(ignored)))

