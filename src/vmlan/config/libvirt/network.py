"""``<network>`` XML (``virsh net-define`` input), validated into a frozen :class:`Network` and written
back in ``virsh net-dumpxml`` form (libvirt 9.0.0: src/conf/network_conf.c virNetworkDefParseXML /
virNetworkDefFormatBuf, src/util/virsocketaddr.c virSocketAddrGetRange, and the checks the network
driver adds when a network is defined, src/network/bridge_driver.c networkValidate).

Forward modes: nat (also a bare ``<forward/>``), route, open, bridge (onto the host bridge named by
``<bridge name>``), and isolated (no ``<forward>``, or ``mode='none'``). private, vepa, passthrough and
hostdev (macvtap and SR-IOV) are refused as not supported by vmlan; so are static ``<route>``s,
``<portgroup>``, ``<virtualport>``, ``<bandwidth>``, ``<vlan>``, ``<port>``, forward device pools
(``<interface>`` other than the one ``dev=`` names, ``<pf>``, ``<address>``) and ``<forward><driver>``.
Elements libvirt does not know are ignored, as libvirt ignores them.

Messages are libvirt's, including its prefixes ("XML error: ", "internal error: " for address ranges).
Addresses are read strictly (Python's ipaddress; libvirt's getaddrinfo also takes inet_aton shorthand
such as ``10.1``), and a non-contiguous netmask is refused as an invalid netmask.

Defaults: ``<bridge>`` has stp on and delay 0; its name may be absent (``None``) until
:meth:`Network.live` picks the first free ``virbr%d`` (or fills a ``%d`` template) as the network
driver does at define time, together with a generated bridge MAC and, for nat, the explicit
``<nat><port start='1024' end='65535'/>`` range the masquerade rules use. A missing ``<uuid>`` is
generated at parse time, as libvirt does.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import uuid as uuidlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Final

from lxml import etree

from vmlan.config.libvirt.errors import (
    InternalError,
    NotSupportedByVmlanError,
    UnsupportedConfigError,
    XMLDetailError,
    XMLError,
)
from vmlan.config.libvirt.mac import RandomBytes, format_mac, generate_mac, is_multicast, parse_mac
from vmlan.config.libvirt.xmlio import (
    Writer,
    child,
    children,
    parse_document,
    parse_int,
    prop,
    prop_enum,
    prop_tristate,
    text_of,
    yes_no,
)

IPAddress = IPv4Address | IPv6Address

DEFAULT_NETWORK_XML: Final = """\
<network>
  <name>default</name>
  <bridge name='virbr0'/>
  <forward/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
    </dhcp>
  </ip>
</network>
"""
"""libvirt's shipped default network (src/network/default.xml.in), byte for byte."""

FORWARD_MODES: Final = ("none", "nat", "route", "open", "bridge", "private", "vepa", "passthrough", "hostdev")
SUPPORTED_MODES: Final = ("nat", "route", "open", "bridge")
LEASE_UNITS: Final = ("seconds", "minutes", "hours")
NAT_PORTS: Final = (1024, 65535)
MAX_BRIDGE_ID: Final = 256  # bridge_driver.c MAX_BRIDGE_ID
DNS_RECORD_LENGTH_SRV: Final = 512 - 30

_SRV_SERVICE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+/*")
_SRV_PROTOCOL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-+/")
_DHCP_ID_CHARS = frozenset("0123456789abcdefABCDEF:")
_REFUSED_CHILDREN = ("route", "portgroup", "virtualport", "bandwidth", "vlan", "port")


@dataclass(frozen=True, slots=True)
class Lease:
    """``<lease expiry unit>``: expiry 0 means infinite (and has no unit)."""

    expiry: int
    unit: str = "minutes"


@dataclass(frozen=True, slots=True)
class DhcpRange:
    start: IPAddress
    end: IPAddress
    lease: Lease | None = None


@dataclass(frozen=True, slots=True)
class DhcpHost:
    """``<host mac|id name ip>``; ``mac`` keeps the spelling it was given (libvirt writes it back so)."""

    mac: str | None = None
    id: str | None = None
    name: str | None = None
    ip: IPAddress | None = None
    lease: Lease | None = None


@dataclass(frozen=True, slots=True)
class NetworkIP:
    """``<ip address netmask|prefix family localPtr>`` with its ``<tftp>`` and ``<dhcp>``."""

    address: IPAddress
    netmask: IPv4Address | None = None
    prefix: int = 0  # 0: not given
    family: str | None = None  # as written: None, "ipv4" or "ipv6"
    local_ptr: bool | None = None
    tftp_root: str | None = None
    ranges: tuple[DhcpRange, ...] = ()
    hosts: tuple[DhcpHost, ...] = ()
    bootp_file: str | None = None
    bootp_server: IPAddress | None = None

    @property
    def prefixlen(self) -> int:
        """virSocketAddrGetIPPrefix: prefix, else the netmask's bits, else the classful/64 default (-1: none)."""
        if self.prefix > 0:
            return self.prefix
        if self.netmask is not None:
            return IPv4Network(f"0.0.0.0/{self.netmask}").prefixlen
        if self.address.version == 6:
            return 0 if int(self.address) == 0 else 64
        value = int(self.address)
        if value == 0:
            return 0
        octet = value >> 24
        if octet & 0x80 == 0:
            return 8
        if octet & 0xC0 == 0x80:
            return 16
        if octet & 0xE0 == 0xC0:
            return 24
        return -1

    @property
    def network(self) -> IPv4Network | IPv6Network:
        """The subnet (raises ValueError for a class D/E address with neither prefix nor netmask)."""
        if self.prefixlen < 0:
            raise ValueError(f"no prefix for {self.address}")
        return ipaddress.ip_network(f"{self.address}/{self.prefixlen}", strict=False)

    @property
    def has_dhcp(self) -> bool:
        return bool(self.ranges or self.hosts)


@dataclass(frozen=True, slots=True)
class DnsForwarder:
    domain: str | None = None
    addr: IPAddress | None = None


@dataclass(frozen=True, slots=True)
class DnsHost:
    ip: IPAddress
    hostnames: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DnsTxt:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class DnsSrv:
    service: str
    protocol: str
    domain: str | None = None
    target: str | None = None
    port: int | None = None
    priority: int | None = None
    weight: int | None = None


@dataclass(frozen=True, slots=True)
class Dns:
    enable: bool | None = None
    forward_plain_names: bool | None = None
    forwarders: tuple[DnsForwarder, ...] = ()
    txts: tuple[DnsTxt, ...] = ()
    srvs: tuple[DnsSrv, ...] = ()
    hosts: tuple[DnsHost, ...] = ()


@dataclass(frozen=True, slots=True)
class Nat:
    """``<nat>``: the SNAT address range and the source port range for masquerading."""

    address_start: IPv4Address | None = None
    address_end: IPv4Address | None = None
    port_start: int | None = None
    port_end: int | None = None
    ipv6: bool | None = None


@dataclass(frozen=True, slots=True)
class Forward:
    mode: str  # nat | route | open | bridge
    dev: str | None = None
    nat: Nat | None = None


@dataclass(frozen=True, slots=True)
class Network:
    """A virtual network. ``forward`` None is an isolated network; ``bridge`` None: not named yet."""

    name: str
    uuid: uuidlib.UUID
    forward: Forward | None = None
    bridge: str | None = None
    stp: bool = True
    delay: int = 0
    zone: str | None = None  # firewalld zone of the bridge
    mac_table_manager: str | None = None  # "kernel" | "libvirt"
    ipv6: bool = False  # <network ipv6='yes'>: guest-to-guest IPv6 without a host address
    mac: str | None = None
    mtu: int | None = None
    domain: str | None = None
    domain_local_only: bool | None = None
    dns: Dns = field(default_factory=Dns)
    ips: tuple[NetworkIP, ...] = ()

    @property
    def mode(self) -> str:
        """The forward mode, "isolated" for none."""
        return "isolated" if self.forward is None else self.forward.mode

    @property
    def has_host_bridge(self) -> bool:
        """True for the modes libvirt creates (and owns) a bridge for: nat, route, open, isolated."""
        return self.forward is None or self.forward.mode != "bridge"

    def live(self, bridges_in_use: Collection[str] = (), rng: RandomBytes | None = None) -> Network:
        """What the network driver fills in when it defines the network (and ``net-dumpxml`` then shows).

        For the modes with a libvirt-made bridge: the first ``virbr%d`` (or the ``%d`` template) not in
        ``bridges_in_use``, a generated MAC when none is given, and for nat an explicit source port range
        1024-65535. A bridge name given without a template must not be in use by another network.
        """
        if not self.has_host_bridge:
            return self
        bridge = self.bridge
        if bridge is None or "%d" in bridge:
            template = bridge if bridge is not None and bridge.count("%") == 1 else "virbr%d"
            for n in range(MAX_BRIDGE_ID + 1):
                candidate = template.replace("%d", str(n))
                if candidate not in bridges_in_use:
                    bridge = candidate
                    break
            else:
                raise InternalError(f"Bridge generation exceeded max id {MAX_BRIDGE_ID}")
        elif bridge in bridges_in_use:
            raise InternalError(f"bridge name '{bridge}' already in use.")
        mac = self.mac if self.mac is not None else format_mac(generate_mac(rng))
        forward = self.forward
        if forward is not None and forward.mode == "nat":
            nat = forward.nat or Nat()
            if nat.port_start is None:
                nat = dataclasses.replace(nat, port_start=NAT_PORTS[0], port_end=NAT_PORTS[1])
            forward = dataclasses.replace(forward, nat=nat)
        return dataclasses.replace(self, bridge=bridge, mac=mac, forward=forward)

    def to_xml(self) -> str:
        """``virsh net-dumpxml`` form (virNetworkDefFormatBuf)."""
        w = Writer()
        w.open("network", ("ipv6", "yes" if self.ipv6 else None))
        w.text("name", self.name)
        w.text("uuid", str(self.uuid))
        fwd = self.forward
        if fwd is not None:
            nat = fwd.nat
            nat_attrs = nat is not None and (
                nat.address_start is not None or nat.port_start is not None or nat.ipv6 is not None
            )
            attrs = (("dev", fwd.dev), ("mode", fwd.mode))
            if fwd.dev is None and not nat_attrs:
                w.empty("forward", *attrs)
            else:
                w.open("forward", *attrs)
                if nat is not None and nat_attrs:
                    _write_nat(w, nat)
                if fwd.dev is not None:
                    w.empty("interface", ("dev", fwd.dev))
                w.close("forward")
        if self.has_host_bridge:
            w.empty("bridge", ("name", self.bridge), ("zone", self.zone), ("stp", "on" if self.stp else "off"),
                    ("delay", self.delay), ("macTableManager", self.mac_table_manager))
        elif self.bridge is not None or self.mac_table_manager is not None:
            w.empty("bridge", ("name", self.bridge), ("zone", self.zone), ("macTableManager", self.mac_table_manager))
        if self.mtu is not None:
            w.empty("mtu", ("size", self.mtu))
        if self.mac is not None:
            w.empty("mac", ("address", self.mac))
        if self.domain is not None:
            local = None if self.domain_local_only is None else yes_no(self.domain_local_only)
            w.empty("domain", ("name", self.domain), ("localOnly", local))
        _write_dns(w, self.dns)
        for ip in self.ips:
            _write_ip(w, ip)
        w.close("network")
        return w.result()


def _write_nat(w: Writer, nat: Nat) -> None:
    ipv6 = None if nat.ipv6 is None else yes_no(nat.ipv6)
    if nat.address_start is None and nat.port_start is None:
        w.empty("nat", ("ipv6", ipv6))
        return
    w.open("nat", ("ipv6", ipv6))
    if nat.address_start is not None:
        w.empty("address", ("start", str(nat.address_start)), ("end", str(nat.address_end)))
    if nat.port_start is not None:
        w.empty("port", ("start", nat.port_start), ("end", nat.port_end))
    w.close("nat")


def _write_dns(w: Writer, dns: Dns) -> None:
    enable = None if dns.enable is None else yes_no(dns.enable)
    plain = None if dns.forward_plain_names is None else yes_no(dns.forward_plain_names)
    if not (dns.forwarders or dns.hosts or dns.srvs or dns.txts):
        if enable is not None or plain is not None:
            w.empty("dns", ("enable", enable), ("forwardPlainNames", plain))
        return
    w.open("dns", ("enable", enable), ("forwardPlainNames", plain))
    for f in dns.forwarders:
        w.empty("forwarder", ("domain", f.domain), ("addr", None if f.addr is None else str(f.addr)))
    for t in dns.txts:
        w.empty("txt", ("name", t.name), ("value", t.value))
    for s in dns.srvs:
        w.empty("srv", ("service", s.service), ("protocol", s.protocol), ("domain", s.domain), ("target", s.target),
                ("port", s.port or None), ("priority", s.priority or None), ("weight", s.weight or None))
    for h in dns.hosts:
        w.open("host", ("ip", str(h.ip)))
        for name in h.hostnames:
            w.text("hostname", name)
        w.close("host")
    w.close("dns")


def _write_lease_holder(w: Writer, tag: str, attrs: tuple[tuple[str, str | None], ...], lease: Lease | None) -> None:
    if lease is None:
        w.empty(tag, *attrs)
        return
    w.open(tag, *attrs)
    if lease.expiry == 0:
        w.empty("lease", ("expiry", 0))
    else:
        w.empty("lease", ("expiry", lease.expiry), ("unit", lease.unit))
    w.close(tag)


def _write_ip(w: Writer, ip: NetworkIP) -> None:
    w.open("ip", ("family", ip.family), ("address", str(ip.address)),
           ("netmask", None if ip.netmask is None else str(ip.netmask)), ("prefix", ip.prefix or None),
           ("localPtr", None if ip.local_ptr is None else yes_no(ip.local_ptr)))
    if ip.tftp_root is not None:
        w.empty("tftp", ("root", ip.tftp_root))
    if ip.ranges or ip.hosts:
        w.open("dhcp")
        for r in ip.ranges:
            _write_lease_holder(w, "range", (("start", str(r.start)), ("end", str(r.end))), r.lease)
        for h in ip.hosts:
            _write_lease_holder(w, "host", (("mac", h.mac), ("id", h.id), ("name", h.name),
                                            ("ip", None if h.ip is None else str(h.ip))), h.lease)
        if ip.bootp_file is not None:
            w.empty("bootp", ("file", ip.bootp_file),
                    ("server", None if ip.bootp_server is None else str(ip.bootp_server)))
        w.close("dhcp")
    w.close("ip")


def default_network_live_xml(uuid: uuidlib.UUID, mac: str) -> str:
    """``net-dumpxml default`` of the shipped default network once defined, for the given uuid and MAC."""
    net = parse_network(DEFAULT_NETWORK_XML, uuid_factory=lambda: uuid)
    return dataclasses.replace(net.live(), mac=mac).to_xml()


# --- parsing -------------------------------------------------------------------------------------------


def _socket_addr(text: str, *, family: int | None = None) -> IPAddress | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if family is not None and addr.version != family:
        return None
    return addr


def _socket_addr_or_fail(text: str) -> IPAddress:
    """virSocketAddrParse's own error when the caller adds none."""
    addr = _socket_addr(text)
    if addr is None:
        raise XMLDetailError(f"Cannot parse socket address '{text}': Name or service not known")
    return addr


def _uuid(text: str) -> uuidlib.UUID | None:
    """virUUIDParse: 32 hex digits, '-' or ' ' allowed between pairs, surrounding blanks."""
    body = text.strip()
    digits: list[str] = []
    i = 0
    while len(digits) < 16:
        if i >= len(body):
            return None
        if body[i] in "- ":
            i += 1
            continue
        pair = body[i:i + 2]
        if len(pair) < 2 or not all(c in "0123456789abcdefABCDEF" for c in pair):
            return None
        digits.append(pair)
        i += 2
    if body[i:].strip():
        return None
    return uuidlib.UUID("".join(digits))


def _check_range(start: IPAddress, end: IPAddress, ip: NetworkIP | None) -> None:
    """virSocketAddrGetRange with the network check."""
    if start.version != end.version:
        raise InternalError(f"mismatch of address family in range {start} - {end}")
    if ip is not None:
        net_text = str(ip.address)
        if start.version != ip.address.version:
            raise InternalError(f"mismatch of address family in range {start} - {end} for network {net_text}")
        prefix = ip.prefixlen
        if prefix < 0:
            raise InternalError(f"bad prefix {prefix} for network {net_text} when  checking range {start} - {end}")
        network = ip.network
        if start not in network or end not in network:
            raise InternalError(f"range {start} - {end} is not entirely within network {net_text}/{prefix}")
        if isinstance(network, IPv4Network):
            if start == network.network_address:
                raise InternalError(
                    f"start of range {start} - {end} in network {net_text}/{prefix} is the network address"
                )
            if end == network.broadcast_address:
                raise InternalError(
                    f"end of range {start} - {end} in network {net_text}/{prefix} is the broadcast address"
                )
    if int(start) >> 16 != int(end) >> 16:  # "everything except the last two bytes" must agree
        raise InternalError(f"range {start} - {end} is too large (> 65535)")
    if int(end) < int(start):
        if start.version == 4:
            raise InternalError(f"range {start} - {end} is reversed")
        raise InternalError(f"range {start} - {end} start larger than end")


def _parse_lease(node: etree._Element) -> Lease | None:
    text = prop(node, "expiry")
    if text is None:
        return None
    expiry = parse_int(text)
    if expiry is None or expiry < 0:
        raise XMLError(
            f"Invalid value for attribute 'expiry' in element 'lease': '{text}'. Expected non-negative integer value"
        )
    unit = prop_enum(node, "unit", LEASE_UNITS) or "minutes"
    if expiry > 0 and ((unit == "seconds" and expiry < 120) or (unit == "minutes" and expiry < 2)):
        raise UnsupportedConfigError("The minimum lease time should be greater than 2 minutes")
    return Lease(expiry, unit if expiry else "minutes")


def _lease_of(node: etree._Element) -> Lease | None:
    lease: Lease | None = None
    for sub in children(node, "lease"):
        lease = _parse_lease(sub) or lease  # libvirt keeps the last one that has an expiry
    return lease


def _parse_dhcp_host(name: str, ip: NetworkIP, node: etree._Element) -> DhcpHost:
    mac = prop(node, "mac")
    if mac is not None:
        if ip.address.version == 6:
            raise XMLError(f"Invalid to specify MAC address '{mac}' in network '{name}' IPv6 static host definition")
        raw = parse_mac(mac)
        if raw is None:
            raise XMLError(f"Cannot parse MAC address '{mac}' in network '{name}'")
        if is_multicast(raw):
            raise XMLError(f"expected unicast mac address, found multicast '{mac}' in network '{name}'")
    host_id = prop(node, "id")
    if host_id is not None:
        for ch in host_id:
            if ch not in _DHCP_ID_CHARS:
                raise XMLError(f"Invalid character '{ch}' in id '{host_id}' of network '{name}'")
    host_name = prop(node, "name")
    if host_name is not None and not (host_name[:1].isascii() and host_name[:1].isalnum()):
        raise XMLError(f"Cannot use host name '{host_name}' in network '{name}'")
    ip_text = prop(node, "ip")
    host_ip = None
    if ip_text is not None:
        host_ip = _socket_addr(ip_text)
        if host_ip is None:
            raise XMLError(f"Invalid IP address in static host definition for network '{name}'")
    if ip.address.version == 6:
        if not (host_id or host_name):
            raise XMLError(f"Static host definition in IPv6 network '{name}' must have id or name attribute")
    elif not (mac or host_name):
        raise XMLError(f"Static host definition in IPv4 network '{name}' must have mac or name attribute")
    if ip_text is None:
        raise XMLError(f"Missing IP address in static host definition for network '{name}'")
    return DhcpHost(mac, host_id, host_name, host_ip, _lease_of(node))


def _parse_ip(name: str, node: etree._Element) -> NetworkIP:
    family = prop(node, "family") or None
    address_text = prop(node, "address") or None
    if address_text is None:
        raise XMLError(f"Missing required address attribute in network '{name}'")
    address = _socket_addr(address_text)
    if address is None:
        raise XMLError(f"Invalid address '{address_text}' in network '{name}'")
    netmask_text = prop(node, "netmask") or None
    netmask_addr = None
    if netmask_text is not None:
        netmask_addr = _socket_addr(netmask_text)
        if netmask_addr is None:
            raise XMLError(f"Invalid netmask '{netmask_text}' in network '{name}'")
    prefix_text = prop(node, "prefix")
    prefix = 0
    if prefix_text is not None:
        value = parse_int(prefix_text)
        if value is None or value < 0:
            raise XMLError(
                f"Invalid value for attribute 'prefix' in element 'ip': '{prefix_text}'. "
                "Expected non-negative integer value"
            )
        prefix = value
    local_ptr = prop_tristate(node, "localPtr")
    netmask: IPv4Address | None = None
    if family is None or family == "ipv4":
        if address.version != 4:
            raise UnsupportedConfigError(
                f"{'no' if family is None else 'ipv4'} family specified for non-IPv4 address '{address_text}' "
                f"in network '{name}'"
            )
        if netmask_addr is not None:
            if not isinstance(netmask_addr, IPv4Address):
                raise UnsupportedConfigError(
                    f"Invalid netmask '{netmask_text}' for address '{address_text}' in network '{name}' "
                    "(both must be IPv4)"
                )
            if prefix > 0:
                raise UnsupportedConfigError(f"Network '{name}' IP address cannot have both a prefix and a netmask")
            bits = int(netmask_addr)
            if bits and (bits | (bits - 1)) & 0xFFFFFFFF != 0xFFFFFFFF:
                raise XMLError(f"Invalid netmask '{netmask_text}' in network '{name}'")
            netmask = netmask_addr
        elif prefix > 32:
            raise UnsupportedConfigError(f"Invalid IPv4 prefix '{prefix}' in network '{name}'")
    elif family == "ipv6":
        if address.version != 6:
            raise UnsupportedConfigError(
                f"Family 'ipv6' specified for non-IPv6 address '{address_text}' in network '{name}'"
            )
        if netmask_text is not None:
            raise UnsupportedConfigError(f"netmask not allowed for IPv6 address '{address_text}' in network '{name}'")
        if prefix > 128:
            raise UnsupportedConfigError(f"Invalid IPv6 prefix '{prefix}' in network '{name}'")
    else:
        raise XMLError(f"Unrecognized family '{family}' in network '{name}'")

    ip = NetworkIP(address, netmask, prefix, family, local_ptr)
    ranges: list[DhcpRange] = []
    hosts: list[DhcpHost] = []
    bootp_file: str | None = None
    bootp_server: IPAddress | None = None
    dhcp = child(node, "dhcp")
    if dhcp is not None:
        for sub in dhcp:
            if sub.tag == "range":
                start_text = prop(sub, "start")
                if start_text is None:
                    raise XMLError(f"Missing 'start' attribute in dhcp range for network '{name}'")
                start = _socket_addr_or_fail(start_text)
                end_text = prop(sub, "end")
                if end_text is None:
                    raise XMLError(f"Missing 'end' attribute in dhcp range for network '{name}'")
                end = _socket_addr_or_fail(end_text)
                _check_range(start, end, ip)
                ranges.append(DhcpRange(start, end, _lease_of(sub)))
            elif sub.tag == "host":
                hosts.append(_parse_dhcp_host(name, ip, sub))
            elif sub.tag == "bootp" and address.version == 4:
                file = prop(sub, "file")
                if file is None:
                    continue
                server_text = prop(sub, "server")
                bootp_server = None if server_text is None else _socket_addr_or_fail(server_text)
                bootp_file = file
    if not (ranges or hosts):  # libvirt writes <dhcp> (and so <bootp>) only around a range or a host
        bootp_file = bootp_server = None
    tftp_root = None
    tftp = child(node, "tftp")
    if tftp is not None:
        if address.version != 4:
            raise UnsupportedConfigError(f"Unsupported <tftp> element in an IPv6 element in network '{name}'")
        tftp_root = prop(tftp, "root") or None
    return dataclasses.replace(ip, tftp_root=tftp_root, ranges=tuple(ranges), hosts=tuple(hosts),
                               bootp_file=bootp_file, bootp_server=bootp_server)


def _parse_srv(name: str, node: etree._Element) -> DnsSrv:
    service = prop(node, "service")
    if service is None:
        raise XMLDetailError(f"missing required service attribute in DNS SRV record of network '{name}'")
    if len(service.encode()) > DNS_RECORD_LENGTH_SRV:
        raise XMLDetailError(
            f"service attribute '{service}' in network '{name}' is too long, limit is {DNS_RECORD_LENGTH_SRV} bytes"
        )
    if not set(service) <= _SRV_SERVICE_CHARS:
        raise XMLDetailError(
            f"invalid character in service attribute '{service}' in DNS SRV record of network '{name}'"
        )
    protocol = prop(node, "protocol")
    if protocol is None:
        raise XMLDetailError(f"missing required protocol attribute in DNS SRV record '{service}' of network '{name}'")
    if not set(protocol) <= _SRV_PROTOCOL_CHARS:
        raise XMLDetailError(
            f"invalid character in protocol attribute '{protocol}' in DNS SRV record of network '{name}'"
        )
    domain = prop(node, "domain")
    target = prop(node, "target")
    values: dict[str, int | None] = {}
    for attr, low, text in (("port", 1, "invalid"), ("priority", 0, "Invalid"), ("weight", 0, "invalid")):
        raw = prop(node, attr) or None
        if raw is None:
            values[attr] = None
            continue
        if target is None:
            raise XMLDetailError(
                f"DNS SRV {attr} attribute not permitted without target for service '{service}' in network '{name}'"
            )
        number = parse_int(raw)
        if number is None or not low <= number <= 65535:
            raise XMLDetailError(f"{text} DNS SRV {attr} attribute for service '{service}' in network '{name}'")
        values[attr] = number
    return DnsSrv(service, protocol, domain, target, values["port"], values["priority"], values["weight"])


def _parse_dns(name: str, node: etree._Element) -> Dns:
    enable = prop_tristate(node, "enable")
    plain = prop_tristate(node, "forwardPlainNames")
    forwarders: list[DnsForwarder] = []
    for f in children(node, "forwarder"):
        addr_text = prop(f, "addr")
        addr = None
        if addr_text is not None:
            addr = _socket_addr(addr_text)
            if addr is None:
                raise XMLError(f"Invalid forwarder IP address '{addr_text}' in network '{name}'")
        domain = prop(f, "domain")
        if addr_text is None and domain is None:
            raise XMLError("Invalid forwarder element, must contain at least one of addr or domain")
        forwarders.append(DnsForwarder(domain, addr))
    hosts: list[DnsHost] = []
    for h in children(node, "host"):
        ip_text = prop(h, "ip")
        if ip_text is None:
            raise XMLDetailError(f"Missing IP address in network '{name}' DNS HOST record")
        host_ip = _socket_addr(ip_text)
        if host_ip is None:
            raise XMLDetailError(f"Invalid IP address in network '{name}' DNS HOST record")
        names = tuple(text_of(n) for n in children(h, "hostname") if len(n) or n.text)
        if not names:
            raise XMLDetailError(f"Missing hostname in network '{name}' DNS HOST record")
        hosts.append(DnsHost(host_ip, names))
    srvs = [_parse_srv(name, s) for s in children(node, "srv")]
    txts: list[DnsTxt] = []
    for t in children(node, "txt"):
        txt_name = prop(t, "name")
        if txt_name is None:
            raise XMLDetailError(f"missing required name attribute in DNS TXT record of network {name}")
        if " " in txt_name or "," in txt_name:
            raise XMLDetailError(f"prohibited character in DNS TXT record name '{txt_name}' of network {name}")
        value = prop(t, "value")
        if value is None:
            raise XMLDetailError(
                f"missing required value attribute in DNS TXT record named '{txt_name}' of network {name}"
            )
        txts.append(DnsTxt(txt_name, value))
    if enable is False and (forwarders or hosts or srvs or txts):
        raise XMLError(f"Extra data in disabled network '{name}'")
    return Dns(enable, plain, tuple(forwarders), tuple(txts), tuple(srvs), tuple(hosts))


def _parse_nat(name: str, mode: str, node: etree._Element) -> Nat:
    if mode != "nat":
        raise XMLError(f"The <nat> element can only be used when <forward> 'mode' is 'nat' in network {name}")
    ipv6 = prop_tristate(node, "ipv6")
    addrs = children(node, "address")
    if len(addrs) > 1:
        raise XMLError(f"Only one <address> element is allowed in <nat> in <forward> in network {name}")
    start = end = None
    if addrs:
        start_text = prop(addrs[0], "start")
        if start_text is None:
            raise XMLError(f"missing 'start' attribute in <address> element in <nat> in <forward> in network {name}")
        end_text = prop(addrs[0], "end")
        if end_text is None:
            raise XMLError(f"missing 'end' attribute in <address> element in <nat> in <forward> in network {name}")
        start_addr = _socket_addr(start_text, family=4)
        if not isinstance(start_addr, IPv4Address):
            raise XMLError(f"Bad ipv4 start address '{start_text}' in <nat> in <forward> in network '{name}'")
        end_addr = _socket_addr(end_text, family=4)
        if not isinstance(end_addr, IPv4Address):
            raise XMLError(f"Bad ipv4 end address '{end_text}' in <nat> in <forward> in network '{name}'")
        _check_range(start_addr, end_addr, None)
        start, end = start_addr, end_addr
    ports = children(node, "port")
    if len(ports) > 1:
        raise XMLError(f"Only one <port> element is allowed in <nat> in <forward> in network {name}")
    port_start = port_end = None
    if ports:
        ps = parse_int(prop(ports[0], "start") or "")
        if ps is None or not 0 <= ps <= 65535:
            raise XMLDetailError(
                f"Missing or invalid 'start' attribute in <port> in <nat> in <forward> in network {name}"
            )
        pe = parse_int(prop(ports[0], "end") or "")
        if pe is None or not ps <= pe <= 65535:
            raise XMLDetailError(
                f"Missing or invalid 'end' attribute in <port> in <nat> in <forward> in network {name}"
            )
        if ps or pe:  # 0-0 is libvirt's "not set"
            port_start, port_end = ps, pe
    return Nat(start, end, port_start, port_end, ipv6)


def _parse_forward(name: str, node: etree._Element) -> Forward | None:
    mode = prop(node, "mode") or "nat"
    if mode not in FORWARD_MODES:
        raise UnsupportedConfigError(f"unknown forwarding type '{mode}'")
    if mode not in SUPPORTED_MODES and mode != "none":
        raise NotSupportedByVmlanError(f"forward mode '{mode}' is not supported by vmlan")
    if child(node, "driver") is not None:
        raise NotSupportedByVmlanError("<driver> in <forward> is not supported by vmlan")
    nats = children(node, "nat")
    if len(nats) > 1:
        raise XMLError(f"Only one <nat> element is allowed in <forward> of network {name}")
    nat = _parse_nat(name, mode, nats[0]) if nats else None
    if nat == Nat():  # an empty <nat/> is no <nat> (libvirt formats nothing for it)
        nat = None
    dev = prop(node, "dev")
    if dev is not None and (child(node, "address") is not None or child(node, "pf") is not None):
        raise XMLError(
            "the <forward> 'dev' attribute cannot be used when <address> or <pf> sub-elements are present in network "
            f"{name}"
        )
    ifaces: list[str] = []
    for iface in children(node, "interface"):
        iface_dev = prop(iface, "dev")
        if iface_dev is None:
            raise XMLError(f"Missing required dev attribute in <forward> <interface> element of network {name}")
        if not ifaces and dev is not None:
            if iface_dev != dev:
                raise XMLError(
                    f"<forward dev='{dev}'> must match first <interface dev='{iface_dev}'/> in network {name}"
                )
        elif iface_dev in ifaces or iface_dev == dev:
            raise XMLError(f"interface '{iface_dev}' can only be listed once in network {name}")
        ifaces.append(iface_dev)
    if dev is None and ifaces:
        dev = ifaces[0]
    pool = len(set(ifaces) | ({dev} if dev else set()))
    if child(node, "address") is not None or child(node, "pf") is not None:
        raise NotSupportedByVmlanError("<address> and <pf> device pools in <forward> are not supported by vmlan")
    if mode in ("nat", "route", "open") and pool > 1:
        raise XMLError(f"multiple forwarding interfaces specified for network '{name}', only one is supported")
    if mode == "bridge" and pool:
        raise NotSupportedByVmlanError("forward mode 'bridge' with a device pool (macvtap) is not supported by vmlan")
    if mode == "none":
        return None
    return Forward(mode, dev, nat)


def parse_network(text: str | bytes, *, uuid_factory: Callable[[], uuidlib.UUID] = uuidlib.uuid4,
                  docname: str = "(network_definition)") -> Network:
    """Parse and validate ``<network>`` XML as ``virsh net-define`` does."""
    root = parse_document(text, docname, "network")
    return network_from_element(root, uuid_factory=uuid_factory)


def network_from_element(root: etree._Element, *,
                         uuid_factory: Callable[[], uuidlib.UUID] = uuidlib.uuid4) -> Network:
    name_node = child(root, "name")
    name = text_of(name_node) if name_node is not None else ""
    if not name:
        raise XMLDetailError("missing name information")
    for bad in ("/", "\n"):
        if bad in name:
            raise XMLDetailError(f"invalid char in name: {bad}")

    uuid_node = child(root, "uuid")
    uuid_text = text_of(uuid_node) if uuid_node is not None else ""
    if uuid_text:
        parsed = _uuid(uuid_text)
        if parsed is None:
            raise InternalError("malformed uuid element")
        net_uuid = parsed
    else:
        net_uuid = uuid_factory()

    ipv6_text = prop(root, "ipv6")
    if ipv6_text is not None and ipv6_text not in ("yes", "no"):
        raise XMLError(f"Invalid ipv6 setting '{ipv6_text}' in network '{name}'")

    domain_node = child(root, "domain")
    domain = prop(domain_node, "name")
    # libvirt formats localOnly only inside <domain name=...>: without a name it is dropped, so here too
    local_only = prop_tristate(domain_node, "localOnly")
    if domain is None:
        local_only = None

    for tag in _REFUSED_CHILDREN:
        if child(root, tag) is not None:
            raise NotSupportedByVmlanError(f"<{tag}> in <network> is not supported by vmlan")

    bridge_node = child(root, "bridge")
    bridge = prop(bridge_node, "name") or None
    stp_text = prop(bridge_node, "stp") or None
    delay_text = prop(bridge_node, "delay") or None
    delay = 0
    if delay_text is not None:
        value = parse_int(delay_text)
        if value is None or value < 0:
            raise XMLError(f"Invalid delay value in network '{name}'")
        delay = value
    zone = prop(bridge_node, "zone") or None
    mac_table_manager = prop(bridge_node, "macTableManager") or None
    if mac_table_manager is not None and mac_table_manager not in ("kernel", "libvirt"):
        raise XMLError(f"Invalid macTableManager setting '{mac_table_manager}' in network '{name}'")

    mac = None
    mac_text = None
    mac_node = child(root, "mac")
    if mac_node is not None:
        mac_text = prop(mac_node, "address") or None
    if mac_text is not None:
        raw = parse_mac(mac_text)
        if raw is None:
            raise XMLError(f"Invalid bridge mac address '{mac_text}' in network '{name}'")
        if is_multicast(raw):
            raise XMLError(f"Invalid multicast bridge mac address '{mac_text}' in network '{name}'")
        mac = format_mac(raw)

    mtu = None
    mtu_node = child(root, "mtu")
    mtu_text = prop(mtu_node, "size") or None
    if mtu_text is not None:
        value = parse_int(mtu_text)
        if value is None or not 0 <= value <= 0xFFFFFFFF:
            raise XMLError(f"Invalid mtu size '{mtu_text}' in network '{name}'")
        mtu = value or None

    dns_node = child(root, "dns")
    dns = _parse_dns(name, dns_node) if dns_node is not None else Dns()
    ips = tuple(_parse_ip(name, n) for n in children(root, "ip"))

    forward_node = child(root, "forward")
    forward = _parse_forward(name, forward_node) if forward_node is not None else None
    mode = "none" if forward is None else forward.mode

    if mode in ("nat", "route", "open"):
        if not ips:
            raise XMLError(f"{mode} forwarding requested, but no IP address provided for network '{name}'")
        if mode == "open" and forward is not None and forward.dev is not None:
            raise XMLError(f"forward dev not allowed for network '{name}' with forward mode='{mode}'")
    elif mode == "bridge" and (delay or stp_text is not None or zone is not None):
        raise XMLError(
            "bridge delay/stp/zone options only allowed in route, nat, and isolated mode, not in bridge "
            f"(network '{name}')"
        )
    if mtu is not None and mode == "bridge":
        raise XMLError(
            f"mtu size only allowed in open, route, nat, and isolated mode, not in {mode} (network '{name}')"
        )

    # the network driver's networkValidate
    if mode == "bridge":
        for what, present in (("mac", mac is not None), ("ip", bool(ips)),
                              ("dns", bool(dns.txts or dns.hosts or dns.srvs)), ("domain", domain is not None)):
            if present:
                raise UnsupportedConfigError(
                    f"Unsupported <{what}> element in network {name} with forward mode='{mode}'"
                )
        if bridge is None:
            raise NotSupportedByVmlanError(
                f"forward mode 'bridge' needs the host bridge's name in <bridge name=...> (network '{name}')"
            )
    for version in (4, 6):
        if sum(1 for ip in ips if ip.address.version == version and ip.has_dhcp) > 1:
            raise UnsupportedConfigError(
                f"Multiple IPv{version} dhcp sections found -- dhcp is supported only for a single IPv{version} "
                "address on each network"
            )

    return Network(
        name=name,
        uuid=net_uuid,
        forward=forward,
        bridge=bridge,
        stp=stp_text != "off",
        delay=delay,
        zone=zone,
        mac_table_manager=mac_table_manager,
        ipv6=ipv6_text == "yes",
        mac=mac,
        mtu=mtu,
        domain=domain,
        domain_local_only=local_only,
        dns=dns,
        ips=ips,
    )
