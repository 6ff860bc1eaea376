"""libvirt's XML for guest interfaces and virtual networks, pure: parsed safely, validated with libvirt
9.0.0's rules and messages, written back in libvirt's canonical form, and turned into QEMU arguments.

- :func:`parse_interfaces` / :func:`parse_interface`: domain ``<interface>`` XML -> :class:`Interface`
- :func:`parse_network`: ``<network>`` XML -> :class:`Network` (``DEFAULT_NETWORK_XML`` is libvirt's own)
- :func:`qemu_args`: interfaces -> ``-netdev``/``-device`` arguments (:func:`format_args` for .args files)

Every error is a :class:`LibvirtError` (a :class:`vmlan.config.errors.ConfigError`) with a one-line message.
"""

from vmlan.config.libvirt.errors import (
    InternalError,
    InvalidArgError,
    LibvirtError,
    NeedsNetworkError,
    NotSupportedByVmlanError,
    UnsupportedConfigError,
    XMLDetailError,
    XMLError,
    XMLSyntaxError,
)
from vmlan.config.libvirt.interface import (
    GuestIP,
    Interface,
    PortForward,
    PortRange,
    SocketSource,
    interface_from_element,
    interfaces_to_xml,
    parse_interface,
    parse_interfaces,
)
from vmlan.config.libvirt.mac import format_mac, generate_mac, parse_mac
from vmlan.config.libvirt.network import (
    DEFAULT_NETWORK_XML,
    DhcpHost,
    DhcpRange,
    Dns,
    DnsForwarder,
    DnsHost,
    DnsSrv,
    DnsTxt,
    Forward,
    Lease,
    Nat,
    Network,
    NetworkIP,
    default_network_live_xml,
    parse_network,
)
from vmlan.config.libvirt.qemu import (
    DEFAULT_MODEL,
    Resolver,
    format_args,
    no_network_resolver,
    parse_args,
    qemu_args,
    tap_fd_resolver,
)

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_NETWORK_XML",
    "DhcpHost",
    "DhcpRange",
    "Dns",
    "DnsForwarder",
    "DnsHost",
    "DnsSrv",
    "DnsTxt",
    "Forward",
    "GuestIP",
    "Interface",
    "InternalError",
    "InvalidArgError",
    "Lease",
    "LibvirtError",
    "Nat",
    "NeedsNetworkError",
    "Network",
    "NetworkIP",
    "NotSupportedByVmlanError",
    "PortForward",
    "PortRange",
    "Resolver",
    "SocketSource",
    "UnsupportedConfigError",
    "XMLDetailError",
    "XMLError",
    "XMLSyntaxError",
    "default_network_live_xml",
    "format_args",
    "format_mac",
    "generate_mac",
    "interface_from_element",
    "interfaces_to_xml",
    "no_network_resolver",
    "parse_args",
    "parse_interface",
    "parse_interfaces",
    "parse_mac",
    "parse_network",
    "qemu_args",
    "tap_fd_resolver",
]
