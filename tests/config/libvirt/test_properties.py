"""Hypothesis: model -> XML -> model round trips, and "parse or raise our error" over mutated XML."""

from __future__ import annotations

import contextlib
import random
from ipaddress import IPv4Address, IPv4Network, IPv6Address

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.config.libvirt.golden import DATA
from vmlan.config.libvirt import (
    DhcpHost,
    DhcpRange,
    Dns,
    DnsForwarder,
    DnsHost,
    DnsSrv,
    DnsTxt,
    Forward,
    GuestIP,
    Interface,
    Lease,
    LibvirtError,
    Nat,
    Network,
    NetworkIP,
    NotSupportedByVmlanError,
    PortForward,
    PortRange,
    SocketSource,
    parse_interface,
    parse_interfaces,
    parse_network,
    qemu_args,
    tap_fd_resolver,
)
from vmlan.config.libvirt.interface import AUTO_TARGET_PREFIXES, KNOWN_MODELS

# text that survives XML unchanged: no control characters (XML has no way to carry most of them, and
# attribute normalisation turns tab/newline into spaces), no surrogates or non-characters
TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cn")), min_size=1, max_size=12)
WORD = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789_-"), min_size=1, max_size=10)
PORT = st.integers(1, 65535)
UNICAST_MAC = st.binary(min_size=6, max_size=6).map(lambda b: bytes([b[0] & 0xFE]) + b[1:]).map(
    lambda b: ":".join(f"{x:02x}" for x in b))
IPV4 = st.integers(1, 2**32 - 2).map(IPv4Address)
IPV6 = st.integers(1, 2**128 - 1).map(IPv6Address)


@st.composite
def port_ranges(draw: st.DrawFn) -> PortRange:
    start = draw(PORT)
    end = draw(st.none() | st.integers(start, min(65535, start + 50)))
    span = (end or start) - start
    to = draw(st.none() | st.integers(1, 65535 - span))
    return PortRange(start, end, to, draw(st.none() | st.booleans()))


@st.composite
def interfaces(draw: st.DrawFn) -> Interface:
    kind = draw(st.sampled_from(["user", "network", "bridge", "ethernet", "mcast", "server", "client", "udp", "null"]))
    fields: dict[str, object] = {"type": kind, "mac": draw(UNICAST_MAC)}
    if kind == "network":
        fields["network"] = draw(TEXT)
        fields["portgroup"] = draw(st.none() | TEXT)
    elif kind == "bridge":
        fields["bridge"] = draw(TEXT)
    elif kind in ("mcast", "server", "client", "udp"):
        address = draw(st.none() | TEXT) if kind == "server" else draw(TEXT)
        local = (draw(TEXT), draw(PORT)) if kind == "udp" else (None, None)
        fields["socket"] = SocketSource(address, draw(PORT), *local)
    elif kind == "user":
        ips = []
        if draw(st.booleans()):
            ips.append(GuestIP(draw(IPV4), draw(st.sampled_from([0, 4, 16, 24, 27]))))
        if draw(st.booleans()):
            ips.append(GuestIP(draw(IPV6), draw(st.sampled_from([0, 64]))))
        fields["ips"] = tuple(ips)
        fields["port_forwards"] = tuple(draw(st.lists(st.builds(
            PortForward, st.sampled_from(["tcp", "udp"]), st.none() | IPV4 | IPV6, st.none() | TEXT,
            st.lists(port_ranges(), max_size=3).map(tuple)), max_size=2)))
        if draw(st.booleans()):
            fields["backend"] = "passt"
            fields["source_dev"] = draw(st.none() | TEXT)
    if kind == "ethernet":
        fields["script"] = draw(st.none() | TEXT)
        fields["downscript"] = draw(st.none() | TEXT)
    managed = draw(st.none() | st.booleans()) if kind == "ethernet" else draw(st.none() | st.just(True))
    fields["managed"] = managed
    if managed is not False and draw(st.booleans()):  # an unmanaged tap is never named by the daemon
        fields["assigned_target"] = draw(st.sampled_from(AUTO_TARGET_PREFIXES)) + str(draw(st.integers(0, 999)))
    else:
        target = draw(st.none() | TEXT)
        if target is not None and target.startswith(AUTO_TARGET_PREFIXES) and managed is not False:
            target = "x" + target
        fields["target"] = target
    fields["model"] = draw(st.none() | st.sampled_from(KNOWN_MODELS) | WORD.map(lambda w: "nic-" + w))
    fields["link_state"] = draw(st.sampled_from([None, "up", "down"]))
    if kind in ("user", "network", "bridge", "ethernet"):
        fields["mtu"] = draw(st.none() | st.integers(1, 2**32 - 1))
    fields["boot_order"] = draw(st.none() | st.integers(1, 2**32 - 1))
    fields["alias"] = draw(st.none() | WORD.map(lambda w: "ua-" + w))
    return Interface(**fields)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(interfaces())
def test_interface_round_trip(net: Interface) -> None:
    xml = net.to_xml()
    assert parse_interface(xml, live=True) == net
    assert parse_interface(net.to_xml(inactive=True)) == net.with_assigned_target(None)
    try:
        argv = qemu_args([net], resolver=tap_fd_resolver())
    except NotSupportedByVmlanError as exc:  # portForwards hostfwd cannot express
        assert net.port_forwards and "portForward" in str(exc)
        return
    assert argv[-2] == "-device" and f"mac={net.mac}" in argv[-1]


@st.composite
def ipv4_blocks(draw: st.DrawFn) -> NetworkIP:
    prefix = draw(st.integers(8, 30))
    subnet = IPv4Network((draw(st.integers(1, 223)) << 24 | draw(st.integers(0, 2**24 - 1)), prefix), strict=False)
    hosts = int(subnet.num_addresses) - 2
    address = subnet.network_address + draw(st.integers(1, hosts))
    form = draw(st.sampled_from(["prefix", "netmask"]))
    ranges: tuple[DhcpRange, ...] = ()
    dhcp_hosts: tuple[DhcpHost, ...] = ()
    if draw(st.booleans()):
        lo = draw(st.integers(1, hosts))
        hi = draw(st.integers(lo, min(hosts, (lo | 0xFFFF))))
        start, end = subnet.network_address + lo, subnet.network_address + hi
        if int(start) >> 16 != int(end) >> 16:
            end = IPv4Address(int(start) | 0xFFFF) if int(start) | 0xFFFF < int(subnet.broadcast_address) else start
        lease = draw(st.none() | st.builds(Lease, st.just(0)) | st.builds(Lease, st.integers(2, 10**6),
                                                                             st.just("hours")))
        ranges = (DhcpRange(start, end, lease),)
        dhcp_hosts = tuple(draw(st.lists(st.builds(
            DhcpHost, UNICAST_MAC, st.none(), WORD.map(lambda w: "h" + w),
            st.integers(1, hosts).map(lambda n: subnet.network_address + n)), max_size=2)))
    return NetworkIP(
        address=address,
        netmask=subnet.netmask if form == "netmask" else None,
        prefix=prefix if form == "prefix" else 0,
        local_ptr=draw(st.none() | st.booleans()),
        tftp_root=draw(st.none() | TEXT),
        ranges=ranges,
        hosts=dhcp_hosts,
        bootp_file=draw(st.none() | TEXT) if ranges else None,
    )


@st.composite
def networks(draw: st.DrawFn) -> Network:
    mode = draw(st.sampled_from(["isolated", "nat", "route", "open", "bridge"]))
    name = draw(TEXT.filter(lambda t: "/" not in t and t.strip() == t))
    if mode == "bridge":
        return Network(name, draw(st.uuids()), Forward("bridge"), bridge=draw(TEXT))
    ips = [draw(ipv4_blocks())]
    if draw(st.booleans()):
        ips.append(NetworkIP(draw(IPV6), prefix=draw(st.sampled_from([0, 64, 112])), family="ipv6"))
    if mode == "isolated" and draw(st.booleans()):
        ips = []
    forward = None
    if mode != "isolated":
        dev = None if mode == "open" else draw(st.none() | WORD)
        nat = None
        if mode == "nat" and draw(st.booleans()):
            lo = draw(st.integers(0, 65535))
            hi = draw(st.integers(max(lo, 1), 65535))
            nat = Nat(port_start=lo, port_end=hi, ipv6=draw(st.none() | st.booleans()))
        forward = Forward(mode, dev, nat)
    dns = Dns(
        enable=draw(st.none() | st.just(True)),
        forward_plain_names=draw(st.none() | st.booleans()),
        forwarders=tuple(draw(st.lists(st.builds(DnsForwarder, st.none() | WORD, IPV4), max_size=2))),
        txts=tuple(draw(st.lists(st.builds(DnsTxt, WORD, TEXT), max_size=2))),
        srvs=tuple(draw(st.lists(st.builds(DnsSrv, WORD, st.sampled_from(["tcp", "udp"]), st.none() | WORD,
                                           st.just("target"), st.none() | PORT, st.none() | PORT), max_size=2))),
        hosts=tuple(draw(st.lists(st.builds(DnsHost, IPV4, st.lists(TEXT.filter(str.strip), min_size=1,
                                                                    max_size=2).map(tuple)), max_size=2))),
    )
    domain = draw(st.none() | WORD)
    return Network(
        name, draw(st.uuids()), forward,
        bridge=draw(st.none() | WORD),
        stp=draw(st.booleans()),
        delay=draw(st.integers(0, 10**6)),
        zone=draw(st.none() | WORD),
        mac_table_manager=draw(st.sampled_from([None, "kernel", "libvirt"])),
        ipv6=draw(st.booleans()),
        mac=draw(st.none() | UNICAST_MAC),
        mtu=draw(st.none() | st.integers(1, 65535)),
        domain=domain,
        domain_local_only=None if domain is None else draw(st.none() | st.booleans()),
        dns=dns,
        ips=tuple(ips),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks())
def test_network_round_trip(net: Network) -> None:
    assert parse_network(net.to_xml()) == net
    live = net.live(rng=random.Random(0))
    assert parse_network(live.to_xml()) == live


def _seeds() -> list[str]:
    return [p.read_text() for p in sorted(DATA.glob("*.xml")) if p.stat().st_size < 4000]


SEEDS = _seeds()


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A golden input with a few random edits: bytes deleted, duplicated, replaced by XML-ish pieces."""
    doc = draw(st.sampled_from(SEEDS))
    pieces = st.sampled_from(["<", ">", "/>", "'", '"', "&", "&amp;", "=", " ", "0", "-1", "65536", "::", "ff:",
                              "<ip address='1'/>", "<source/>", "</interface>", "<!--", "]]>", "\x00", "\ud800",
                              "type='user'", "port='0'", "prefix='99'", "<dhcp>", "mode='nat'"])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(doc)))
        action = draw(st.sampled_from(["delete", "insert", "dup"]))
        if action == "delete":
            doc = doc[:at] + doc[at + draw(st.integers(1, 12)):]
        elif action == "insert":
            doc = doc[:at] + draw(pieces) + doc[at:]
        else:
            n = draw(st.integers(1, 40))
            doc = doc[:at] + doc[at:at + n] + doc[at:]
    return doc


@settings(max_examples=1500, deadline=None)
@given(mutated(), st.booleans())
def test_parse_or_raise_our_error(doc: str, as_bytes: bool) -> None:
    data: str | bytes = doc.encode("utf-8", "surrogatepass") if as_bytes else doc
    for parse in (parse_interfaces, parse_network):
        try:
            result = parse(data)
        except LibvirtError as exc:
            assert "\n" not in str(exc) and str(exc)
            continue
        if isinstance(result, Network):
            assert parse_network(result.to_xml()) == result
        else:
            for net in result:
                assert parse_interface(net.to_xml(), live=True) == net
                try:
                    qemu_args([net], resolver=tap_fd_resolver())
                except LibvirtError as exc:
                    assert "\n" not in str(exc)


@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    for parse in (parse_interfaces, parse_network):
        with contextlib.suppress(LibvirtError):
            parse(data)


def test_seeds_cover_both_kinds() -> None:
    assert any("<network" in s for s in SEEDS) and any("<interface" in s for s in SEEDS)
