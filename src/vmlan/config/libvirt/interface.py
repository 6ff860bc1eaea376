"""Domain ``<interface>`` XML: parsed and validated into a frozen :class:`Interface`, written back as
libvirt 9.0.0 writes it (src/conf/domain_conf.c virDomainNetDefParseXML / virDomainNetDefFormat,
domain_validate.c virDomainNetDefValidate, qemu_validate.c qemuValidateDomainDeviceDefNetwork).

Types: user, network, bridge, ethernet, mcast, server, client, udp, null. libvirt's other types
(vhostuser, direct, hostdev, vdpa, internal, vds) are refused in one line; an unknown type gets
libvirt's own "Invalid value for attribute 'type'" message. A missing ``type`` means user, as in libvirt.

What is checked where libvirt checks it, with its wording
    source per type (network needs ``network=``, bridge ``bridge=``, mcast/client/udp ``address`` and
    ``port``, server ``port``, udp a ``<local address port>``), unicast MAC, ``<target managed='no'>``
    only on ethernet, ``<link state='up|down'>``, ``<mtu size>``, ``<boot order>`` (non-zero, unique in a
    domain), ``<alias name='ua-...'>`` (unique), ``<model type>`` characters, ``<ip>`` (user only: one
    IPv4 with prefix 4..27, one IPv6 with prefix 64, no peer), ``<portForward>`` ranges.

Checked earlier than libvirt does (at parse rather than at guest start), same wording
    scripts only on ethernet ("scripts are not supported on interfaces of type %s", from
    qemuBuildHostNetProps), the QEMU driver's ``<ip>``/``<mtu>`` rules.

vmlan's choices where libvirt is looser or does something vmlan cannot
    socket and portForward ports must be 1..65535 (libvirt takes any int). ``<portForward>`` is accepted
    on type user with or without ``<backend type='passt'/>`` (vmlan's own stack forwards the ports;
    libvirt 9.0.0 honours it only with passt) and refused on other types. ``<mtu>`` is accepted on user
    (vmlan's stack, like passt, can do it). ``<bandwidth>``, ``<vlan>``, ``<virtualport>``,
    ``<filterref>``, ``<teaming>``, ``<port>``, ``<tune>``, ``<coalesce>``, ``<guest>``,
    ``<backenddomain>`` and host-side ``<source><ip|route>`` are refused ("... is not supported by
    vmlan"). ``<address>``, ``<driver>``, ``<rom>`` and ``<acpi>`` (device placement and tuning) and
    ``<backend>``'s tap/vhost/logFile are ignored and not written back; so are elements libvirt itself
    does not know. A missing ``<model>`` stays absent (libvirt's QEMU driver writes its default, rtl8139,
    into the definition; here the default is applied when building QEMU arguments).

Target names and aliases (``live``)
    A definition (``live=False``, libvirt's VIR_DOMAIN_DEF_PARSE_INACTIVE) drops target names that
    start vnet, vif, macvtap or macvlan (unless ``managed='no'``): the daemon assigns vnetN when the
    guest starts and keeps it in :attr:`Interface.assigned_target`. Aliases other than ``ua-`` user
    aliases are dropped the same way. A live (status) document keeps both, an auto-style target name
    landing in ``assigned_target``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from lxml import etree

from vmlan.config.libvirt.errors import (
    InternalError,
    InvalidArgError,
    NotSupportedByVmlanError,
    UnsupportedConfigError,
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
    prop_int,
    prop_tristate,
    required_prop,
    xpath_attr,
    yes_no,
)

SUPPORTED_TYPES = ("user", "network", "bridge", "ethernet", "mcast", "server", "client", "udp", "null")
LIBVIRT_TYPES = (
    "user", "ethernet", "vhostuser", "server", "client", "mcast", "network", "bridge",
    "internal", "direct", "hostdev", "udp", "vdpa", "null", "vds",
)
SOCKET_TYPES = ("server", "client", "mcast", "udp")

# virDomainNetModel: matched case-insensitively, written in this spelling
KNOWN_MODELS = (
    "netfront", "rtl8139", "virtio", "e1000", "e1000e", "virtio-transitional", "virtio-non-transitional",
    "usb-net", "spapr-vlan", "lan9118", "scm91c111", "vlance", "vmxnet", "vmxnet2", "vmxnet3",
    "Am79C970A", "Am79C973", "82540EM", "82545EM", "82543GC",
)
VIRTIO_MODELS = ("virtio", "virtio-transitional", "virtio-non-transitional")
_MODEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_ALIAS_CHARS = _MODEL_CHARS

# VIR_NET_GENERATED_{VNET,MACVTAP,MACVLAN}_PREFIX, and libxl's "vif"
AUTO_TARGET_PREFIXES = ("vnet", "vif", "macvtap", "macvlan")
USER_ALIAS_PREFIX = "ua-"

_REFUSED_CHILDREN = (
    "bandwidth", "vlan", "virtualport", "filterref", "teaming", "port", "tune", "coalesce", "guest",
    "backenddomain",
)
_MTU_TYPES = ("network", "bridge", "ethernet", "user")

IPAddress = IPv4Address | IPv6Address


@dataclass(frozen=True, slots=True)
class GuestIP:
    """``<ip address prefix>`` on a user interface: the guest side of QEMU's (or vmlan's) user stack."""

    address: IPAddress
    prefix: int = 0  # 0: not given

    @property
    def family(self) -> str:
        return "ipv4" if self.address.version == 4 else "ipv6"


@dataclass(frozen=True, slots=True)
class PortRange:
    """``<range start [end] [to] [exclude]>``: host ports start..end go to guest ports to.. (passt's sense)."""

    start: int
    end: int | None = None
    to: int | None = None
    exclude: bool | None = None

    def host_ports(self) -> range:
        return range(self.start, (self.end or self.start) + 1)

    def guest_port(self, host_port: int) -> int:
        return host_port if self.to is None else self.to + (host_port - self.start)


@dataclass(frozen=True, slots=True)
class PortForward:
    """``<portForward proto [address] [dev]>``: no ranges means every port."""

    proto: str  # "tcp" | "udp"
    address: IPAddress | None = None
    dev: str | None = None
    ranges: tuple[PortRange, ...] = ()


@dataclass(frozen=True, slots=True)
class SocketSource:
    """``<source address port>`` of mcast/server/client/udp; udp adds ``<local address port>``."""

    address: str | None  # None only for server (listen on every address)
    port: int
    local_address: str | None = None
    local_port: int | None = None


@dataclass(frozen=True, slots=True)
class Interface:
    """One guest NIC. ``mac`` is canonical lower case; ``mac_generated`` is not part of equality."""

    type: str
    mac: str
    network: str | None = None
    portgroup: str | None = None
    bridge: str | None = None
    socket: SocketSource | None = None
    source_dev: str | None = None  # user with the passt backend: host interface for routes
    ips: tuple[GuestIP, ...] = ()
    port_forwards: tuple[PortForward, ...] = ()
    script: str | None = None
    downscript: str | None = None
    target: str | None = None  # a target dev name the user chose
    managed: bool | None = None  # <target managed>
    assigned_target: str | None = None  # vnetN, given by the daemon when the guest starts
    model: str | None = None
    backend: str | None = None  # "passt" or None
    link_state: str | None = None  # "up" | "down" | None (default: up)
    mtu: int | None = None
    boot_order: int | None = None
    alias: str | None = None
    mac_generated: bool = field(default=False, compare=False)

    @property
    def mac_bytes(self) -> bytes:
        return bytes.fromhex(self.mac.replace(":", ""))

    @property
    def link_up(self) -> bool:
        return self.link_state != "down"

    @property
    def is_virtio(self) -> bool:
        return self.model in VIRTIO_MODELS

    def with_assigned_target(self, name: str | None) -> Interface:
        return dataclasses.replace(self, assigned_target=name)

    def to_xml(self, *, inactive: bool = False) -> str:
        """libvirt's ``dumpxml`` form (``inactive``: ``dumpxml --inactive``, without the assigned target)."""
        w = Writer()
        self.write(w, inactive=inactive)
        return w.result()

    def write(self, w: Writer, *, inactive: bool = False) -> None:
        w.open("interface", ("type", self.type))
        w.empty("mac", ("address", self.mac))
        if self.type == "network":
            w.empty("source", ("network", self.network), ("portgroup", self.portgroup))
        elif self.type == "bridge":
            w.empty("source", ("bridge", self.bridge))
        elif self.type in SOCKET_TYPES:
            sock = self.socket
            assert sock is not None
            if self.type == "udp":
                w.open("source", ("address", sock.address), ("port", sock.port))
                w.empty("local", ("address", sock.local_address), ("port", sock.local_port))
                w.close("source")
            else:
                w.empty("source", ("address", sock.address), ("port", sock.port))
        elif self.type == "user" and self.backend == "passt" and self.source_dev is not None:
            w.empty("source", ("dev", self.source_dev))
        for ip in self.ips:
            w.empty("ip", ("address", str(ip.address)), ("family", ip.family), ("prefix", ip.prefix or None))
        for pf in self.port_forwards:
            attrs = (("proto", pf.proto), ("address", None if pf.address is None else str(pf.address)),
                     ("dev", pf.dev))
            if not pf.ranges:
                w.empty("portForward", *attrs)
                continue
            w.open("portForward", *attrs)
            for r in pf.ranges:
                w.empty("range", ("start", r.start), ("end", r.end), ("to", r.to),
                        ("exclude", None if r.exclude is None else yes_no(r.exclude)))
            w.close("portForward")
        if self.script is not None:
            w.empty("script", ("path", self.script))
        if self.downscript is not None:
            w.empty("downscript", ("path", self.downscript))
        dev = self.target if inactive else (self.assigned_target or self.target)
        w.empty("target", ("dev", dev), ("managed", None if self.managed is None else yes_no(self.managed)),
                always=False)
        if self.model is not None:
            w.empty("model", ("type", self.model))
        if self.backend is not None:
            w.empty("backend", ("type", self.backend))
        if self.link_state is not None:
            w.empty("link", ("state", self.link_state))
        if self.mtu is not None:
            w.empty("mtu", ("size", self.mtu))
        if self.boot_order is not None:
            w.empty("boot", ("order", self.boot_order))
        if self.alias is not None:
            w.empty("alias", ("name", self.alias))
        w.close("interface")


def interfaces_to_xml(interfaces: Iterable[Interface], *, inactive: bool = False) -> str:
    """Several interfaces one after another, as they appear under ``<devices>``."""
    return "".join(i.to_xml(inactive=inactive) for i in interfaces)


def parse_interface(text: str | bytes, *, rng: RandomBytes | None = None, live: bool = False,
                    docname: str = "(domain_definition)") -> Interface:
    """One ``<interface>`` document (``virsh attach-device``'s input)."""
    root = parse_document(text, docname, "interface")
    return _check_domain([interface_from_element(root, rng=rng, live=live)])[0]


def parse_interfaces(text: str | bytes, *, rng: RandomBytes | None = None, live: bool = False,
                     docname: str = "(domain_definition)") -> tuple[Interface, ...]:
    """Every interface of a ``<domain>`` document (under ``<devices>``), or of a bare ``<interface>``."""
    root = parse_document(text, docname, ("domain", "interface"))
    if root.tag == "interface":
        nodes = [root]
    else:
        devices = child(root, "devices")
        nodes = [] if devices is None else children(devices, "interface")
    return tuple(_check_domain([interface_from_element(n, rng=rng, live=live) for n in nodes]))


def _check_domain(nets: list[Interface]) -> list[Interface]:
    """Domain-wide checks libvirt makes across devices (here: across the interfaces)."""
    aliases: set[str] = set()
    orders: set[int] = set()
    for net in nets:
        if net.alias is not None:
            if net.alias in aliases:
                raise UnsupportedConfigError(f"non unique alias detected: {net.alias}")
            aliases.add(net.alias)
        if net.boot_order is not None:
            if net.boot_order in orders:
                raise UnsupportedConfigError(f"boot order '{net.boot_order}' used for more than one device")
            orders.add(net.boot_order)
    return nets


def _parse_socket_port(node: etree._Element) -> int:
    port = prop_int(node, "port", required=True)
    assert port is not None
    if not 1 <= port <= 65535:
        raise XMLError(
            f"Invalid value for attribute 'port' in element '{node.tag}': '{prop(node, 'port')}'. "
            "Expected a port number 1-65535"
        )
    return port


def _parse_ip(node: etree._Element) -> tuple[GuestIP, str | None]:
    """virDomainNetIPParseXML; returns the address and the peer text (QEMU refuses a peer)."""
    address = prop(node, "address")
    if address is None:
        raise XMLError("Missing required address in <ip>")
    family = prop(node, "family")
    want = 4 if family == "ipv4" else 6 if family == "ipv6" else None
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        addr = None
    if addr is None or (want is not None and addr.version != want):
        raise XMLError(f"Invalid address '{address}' in <ip>")
    prefix_text = prop(node, "prefix")
    prefix = 0
    if prefix_text is not None:
        value = parse_int(prefix_text)
        if value is None or value < 0 or value > (32 if addr.version == 4 else 128):
            raise XMLError(f"Invalid prefix value '{prefix_text}' in <ip>")
        prefix = value
    return GuestIP(addr, prefix), prop(node, "peer")


def _parse_port_forward(node: etree._Element) -> PortForward:
    proto = prop_enum(node, "proto", ("tcp", "udp"), required=True)
    assert proto is not None
    address_text = prop(node, "address")
    address: IPAddress | None = None
    if address_text is not None:
        try:
            address = ipaddress.ip_address(address_text)
        except ValueError:
            raise XMLError(f"Invalid address '{address_text}' in <portForward>") from None
    ranges: list[PortRange] = []
    for rnode in children(node, "range"):
        start = prop_int(rnode, "start", nonzero=True, unsigned=True)
        end = prop_int(rnode, "end", nonzero=True, unsigned=True)
        to = prop_int(rnode, "to", nonzero=True, unsigned=True)
        exclude = prop_tristate(rnode, "exclude")
        if start is None:
            if end is not None or to is not None or exclude is not None:
                raise UnsupportedConfigError(
                    "The 'range' of a 'portForward' requires 'start' attribute if 'end', 'to', or 'exclude' "
                    "is specified"
                )
            continue  # libvirt keeps an empty <range/> but never writes it back
        for name, value in (("start", start), ("end", end), ("to", to)):
            if value is not None and value > 65535:
                raise XMLError(
                    f"Invalid value for attribute '{name}' in element 'range': '{value}'. "
                    "Expected a port number 1-65535"
                )
        if end is not None and end < start:
            raise XMLError(f"Invalid value for attribute 'end' in element 'range': '{end}'. Below start '{start}'")
        if to is not None and end is not None and to + (end - start) > 65535:
            raise XMLError(
                f"Invalid value for attribute 'to' in element 'range': '{to}'. "
                f"Ports {start}-{end} would be forwarded beyond 65535"
            )
        ranges.append(PortRange(start, end, to, exclude))
    return PortForward(proto, address, prop(node, "dev"), tuple(ranges))


def _canonical_model(model: str) -> str:
    for known in KNOWN_MODELS:
        if known.lower() == model.lower():
            return known
    if not set(model) <= _MODEL_CHARS:
        raise InvalidArgError("Model name contains invalid characters")
    return model


def interface_from_element(node: etree._Element, *, rng: RandomBytes | None = None,
                           live: bool = False) -> Interface:
    """Validate one ``<interface>`` element (already parsed safely) into an :class:`Interface`."""
    net_type = prop(node, "type")
    if net_type is None:
        net_type = "user"
    elif net_type not in LIBVIRT_TYPES:
        raise XMLError(f"Invalid value for attribute 'type' in element 'interface': '{net_type}'.")
    if net_type not in SUPPORTED_TYPES:
        raise NotSupportedByVmlanError(f"interface type '{net_type}' is not supported by vmlan")

    model_text = xpath_attr(node, ("model",), "type")
    model = None if model_text is None else _canonical_model(model_text)

    source = child(node, "source")
    host_side = source is not None and (child(source, "ip") is not None or child(source, "route") is not None)
    if source is not None:
        for ipnode in children(source, "ip"):
            _parse_ip(ipnode)

    def require_source() -> etree._Element:
        if source is None:
            raise XMLError(f"interface type='{net_type}' requires a 'source' element")
        return source

    network = portgroup = bridge = source_dev = None
    sock: SocketSource | None = None
    if net_type == "network":
        src = require_source()
        network = required_prop(src, "network")
        portgroup = prop(src, "portgroup")
    elif net_type == "bridge":
        bridge = required_prop(require_source(), "bridge")
    elif net_type in SOCKET_TYPES:
        src = require_source()
        address = prop(src, "address") if net_type == "server" else required_prop(src, "address")
        port = _parse_socket_port(src)
        local_address = local_port = None
        if net_type == "udp":
            local = child(src, "local")
            if local is None:
                raise XMLError("'<local>' element missing for 'udp' socket interface")
            local_address = required_prop(local, "address")
            local_port = _parse_socket_port(local)
        sock = SocketSource(address, port, local_address, local_port)
    elif net_type == "user":
        source_dev = prop(source, "dev")

    for name in _REFUSED_CHILDREN:
        if child(node, name) is not None:
            raise NotSupportedByVmlanError(f"<{name}> in <interface> is not supported by vmlan")

    target_node = child(node, "target")
    target = prop(target_node, "dev")
    managed = prop_tristate(target_node, "managed")

    link_text = xpath_attr(node, ("link",), "state")
    script = xpath_attr(node, ("script",), "path")
    downscript = xpath_attr(node, ("downscript",), "path")

    mac_node = child(node, "mac")
    mac_text = prop(mac_node, "address")
    if mac_text is not None:
        mac_raw = parse_mac(mac_text)
        if mac_raw is None:
            raise XMLError(f"unable to parse mac address '{mac_text}'")
        if is_multicast(mac_raw):
            raise XMLError(f"expected unicast mac address, found multicast '{mac_text}'")
        prop_enum(mac_node, "type", ("generated", "static"))
        prop_tristate(mac_node, "check")
    else:
        mac_raw = generate_mac(rng)

    alias = xpath_attr(node, ("alias",), "name")
    if alias is not None and not live and not (
        alias.startswith(USER_ALIAS_PREFIX) and set(alias) <= _ALIAS_CHARS
    ):
        alias = None
    boot_node = child(node, "boot")
    boot_order = None if boot_node is None else prop_int(boot_node, "order", required=True, nonzero=True,
                                                         unsigned=True)

    ips: list[GuestIP] = []
    peers: list[str] = []
    for ipnode in children(node, "ip"):
        ip, peer = _parse_ip(ipnode)
        ips.append(ip)
        if peer is not None:
            peers.append(peer)
    routes = children(node, "route")

    forwards = tuple(_parse_port_forward(pf) for pf in children(node, "portForward"))

    assigned_target = None
    if target is not None and managed is not False and target.startswith(AUTO_TARGET_PREFIXES):
        if live:
            assigned_target = target
        target = None

    backend_node = child(node, "backend")
    backend = prop_enum(backend_node, "type", ("passt",))

    link_state = None
    if link_text is not None:
        if link_text not in ("up", "down"):
            raise UnsupportedConfigError(f"unknown interface link state '{link_text}'")
        link_state = link_text

    mtu_text = xpath_attr(node, ("mtu",), "size")
    mtu = None
    if mtu_text is not None:
        value = parse_int(mtu_text)
        if value is None or value < 0 or value > 0xFFFFFFFF:
            raise XMLError("malformed mtu size")
        mtu = value or None

    # virDomainNetDefValidate
    if host_side:
        if net_type != "ethernet":
            raise UnsupportedConfigError(
                "Invalid attempt to set network interface host-side IP route and/or address info on interface "
                f"of type '{net_type}'. This is only supported on interfaces of type 'ethernet'"
            )
        raise NotSupportedByVmlanError("host-side <ip>/<route> in <source> is not supported by vmlan")
    if managed is False and net_type != "ethernet":
        raise UnsupportedConfigError(f"unmanaged target dev is not supported on interfaces of type '{net_type}'")
    if backend == "passt" and net_type != "user":
        raise InternalError("The 'passt' backend can only be used with interface type='user'")

    # the QEMU driver's rules (qemuValidateDomainDeviceDefNetwork, qemuBuildHostNetProps)
    if net_type == "user":
        if routes:
            raise UnsupportedConfigError(
                "Invalid attempt to set network interface guest-side IP route, not supported by QEMU"
            )
        if peers:
            raise UnsupportedConfigError("Invalid attempt to set peer IP for guest")
        seen: set[int] = set()
        for ip in ips:
            if ip.address.version in seen:
                raise UnsupportedConfigError(
                    f"Only one IPv{ip.address.version} address per interface is allowed"
                )
            seen.add(ip.address.version)
            if ip.address.version == 4 and ip.prefix and not 4 <= ip.prefix <= 27:
                raise XMLError("invalid prefix, must be in range of 4-27")
            if ip.address.version == 6 and ip.prefix and ip.prefix != 64:
                raise UnsupportedConfigError(f"unsupported IPv6 address prefix='{ip.prefix}' - must be 64")
    elif ips or routes:
        raise UnsupportedConfigError(
            "Invalid attempt to set network interface guest-side IP route and/or address info, "
            "not supported by QEMU"
        )
    if mtu is not None and net_type not in _MTU_TYPES:
        raise UnsupportedConfigError(f"setting MTU on interface type {net_type} is not supported yet")
    if script is not None and net_type != "ethernet":
        raise UnsupportedConfigError(f"scripts are not supported on interfaces of type {net_type}")
    if forwards and net_type != "user":
        raise NotSupportedByVmlanError(
            f"<portForward> is only supported on interfaces of type 'user', not '{net_type}'"
        )

    return Interface(
        type=net_type,
        mac=format_mac(mac_raw),
        network=network,
        portgroup=portgroup,
        bridge=bridge,
        socket=sock,
        source_dev=source_dev if backend == "passt" else None,
        ips=tuple(ips),
        port_forwards=forwards,
        script=script,
        downscript=downscript,
        target=target,
        managed=managed,
        assigned_target=assigned_target,
        model=model,
        backend=backend,
        link_state=link_state,
        mtu=mtu,
        boot_order=boot_order,
        alias=alias,
        mac_generated=mac_text is None,
    )
