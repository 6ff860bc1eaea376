"""What one user-mode stack is told at start: addresses, services, forwards and limits.

Frozen dataclasses built by the I/O layer from ``-netdev user`` options (io/usernet.stack_config);
nothing here reads a file or a socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from vmlan.engines.dhcp import DhcpConfig
from vmlan.engines.dns import DnsConfig
from vmlan.engines.tcp import TcpParams

__all__ = ["GuestForward", "HostForward", "Limits", "StackConfig"]


@dataclass(frozen=True, slots=True)
class HostForward:
    """``hostfwd``: the I/O layer listens on (host_addr, host_port) and hands clients to the stack."""

    proto: str  # "tcp" or "udp"
    host_addr: str
    host_port: int
    guest_addr: bytes  # resolved: the first DHCP address when the rule named none
    guest_port: int


@dataclass(frozen=True, slots=True)
class GuestForward:
    """``guestfwd``: guest connections to (addr, port) go to a host address (or command) instead."""

    addr: bytes
    port: int
    target: tuple[str, int] | str  # (host, port) or a shell command


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps per guest (a guest is a port of the hub) and for the stack as a whole.

    A guest is known by the port its frames arrive on; every account below is kept per port, so a
    guest forging other source addresses or MACs only spends its own share. The stack-wide caps bound
    what many guests together can take (file descriptors above all: every flow is a host socket).
    """

    macs_per_port: int = 4  # MACs one port may use (a VM has one; a nested bridge a few)
    tcp_per_guest: int = 256
    tcp_connecting_per_guest: int = 64  # SYNs waiting for a host connect()
    udp_per_guest: int = 256
    pings_per_guest: int = 32
    cmd_per_guest: int = 4  # concurrent guestfwd cmd: processes
    fwd_clients: int = 256  # concurrent clients per hostfwd rule (TCP connections or UDP sessions)
    max_flows: int = 8192  # TCP + UDP + ping flows of all guests together
    max_connecting: int = 512
    max_cmd: int = 32
    mem_budget: int = 256 << 20  # bytes buffered by TCP connections of all guests (tcp_mem-like)
    frag_datagrams_per_guest: int = 16
    frag_bytes_per_guest: int = 256 << 10
    addrs6_per_mac: int = 8  # IPv6 addresses one MAC may use (link-local, SLAAC, temporary ones)
    tftp_per_guest: int = 8  # concurrent TFTP transfers


_DEFAULT_NET = IPv4Network("10.0.2.0/24")
_DEFAULT_HOST = IPv4Address("10.0.2.2")
_DEFAULT_DNS = IPv4Address("10.0.2.3")
_DEFAULT_NET6 = IPv6Network("fec0::/64")
_DEFAULT_HOST6 = IPv6Address("fec0::2")
_DEFAULT_DNS6 = IPv6Address("fec0::3")


@dataclass(frozen=True)
class StackConfig:
    net: IPv4Network = _DEFAULT_NET
    host: IPv4Address = _DEFAULT_HOST
    dns: IPv4Address = _DEFAULT_DNS
    ipv4: bool = True
    ipv6: bool = False  # the engine's default; -netdev user turns it on, as QEMU does
    net6: IPv6Network = _DEFAULT_NET6
    host6: IPv6Address = _DEFAULT_HOST6
    dns6: IPv6Address = _DEFAULT_DNS6
    restrict: bool = False
    restrict_local_dns: bool = False  # under restrict, the DNS address still answers its static names
    host_loopback: bool = True
    mtu: int = 1500
    dhcp: DhcpConfig | None = None
    dns_config: DnsConfig | None = None
    hostfwd: tuple[HostForward, ...] = ()
    guestfwd: tuple[GuestForward, ...] = ()
    udp_timeout: float = 240.0  # libslirp's SO_EXPIRE
    udp_dns_timeout: float = 10.0  # flows to port 53 die fast, as in libslirp
    icmp_timeout: float = 30.0
    tftp_dir: str | None = None  # tftp=DIR: served read-only at the gateway, UDP port 69
    smb_dir: str | None = None  # smb=DIR: an smbd per guest connection to smbserver:445/139
    smbserver: IPv4Address | None = None
    limits: Limits = field(default_factory=Limits)
    tcp: TcpParams = field(default_factory=TcpParams)
