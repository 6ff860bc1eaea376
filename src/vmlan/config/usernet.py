"""``-netdev user`` (QEMU's SLIRP user-mode stack), validated into a frozen :class:`UserNetdev`.

Input is the QemuOpts pairs of ``-netdev user,...`` (:func:`vmlan.config.qemuopts.parse_qemuopts`).
Option names, defaults and error wording follow QEMU 7.2's net/slirp.c (``net_slirp_init``,
``slirp_hostfwd``, ``slirp_guestfwd``), qapi/net.json (``NetdevUserOptions``) and libslirp
(``slirp_add_hostxfwd``, ``check_guestfwd``). Where QEMU's message does not name the value, the option and
value are appended in parentheses: ``Host doesn't belong to network (host=10.0.3.2, net=10.0.2.0/24)``.

Addresses: ``net`` is an :class:`ipaddress.IPv4Network`; ``host``, ``dns``, ``dhcp_start`` and static
entries are :class:`ipaddress.IPv4Address`; forwarding rules keep dotted-quad strings (``""`` = any).

QEMU options and defaults
    ``net=ADDR[/MASK]`` (10.0.2.0/24; MASK a prefix length 4..32 or dotted; without a mask QEMU's classful
    guess, e.g. 192.0.2.0 -> /28), legacy ``ip=ADDR`` (= ADDR/24), ``host=`` (net|.2), ``dns=`` (net|.3),
    ``dhcpstart=`` (net|.15), ``restrict=``, ``hostname=``, ``domainname=``, ``dnssearch=`` (repeatable),
    ``hostfwd=[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport`` (repeatable; empty hostaddr = any,
    empty guestaddr = the first DHCP address), ``guestfwd=[tcp]:[server]:port-TARGET`` (repeatable; empty
    server = net|.4 as libslirp), ``ipv4=``, ``ipv6=``, ``ipv6-net=``/``ipv6-prefix=``+``ipv6-prefixlen=``
    (fec0::/64), ``ipv6-host=`` (prefix::2), ``ipv6-dns=`` (prefix::3), ``tftp=DIR``, ``bootfile=``,
    ``tftp-server-name=``, ``smb=DIR``, ``smbserver=`` (net|.4). Addresses in QEMU's own options are read
    like inet_aton() (``10.2`` = 10.0.0.2, hex and octal parts) but without trailing garbage.

vmlan extensions
    ``hubid=N``             hub to join (default 0), as on every vmlan netdev.
    ``dns-server=IP[:PORT]`` upstream resolver, repeatable (port 53; IPv6 as ``[ADDR]:PORT`` or ``ADDR``).
                            None given: the I/O layer reads the
                            host's /etc/resolv.conf nameservers.
    ``dns-static=NAME:IP``  static A record answered by the virtual DNS, repeatable (split at the last ':';
                            NAME is stored lower-case without a trailing dot).
    ``pool=N``              DHCP pool size from dhcpstart (default 16, NB_BOOTP_CLIENTS, cut down to what
                            fits below the broadcast address); addresses that are the host, the DNS, a
                            guestfwd server or a static lease are skipped, not replaced (:attr:`dhcp_pool`).
    ``mtu=N``               576..65520, default 1500, sent as DHCP option 26.
    ``lease-static=MAC=IP`` fixed DHCP lease, repeatable, e.g. ``lease-static=52:54:00:12:34:56=10.0.2.20``
                            (MAC with ':' separators, split at the '='; any address of net that is not the
                            network, broadcast, host, DNS or a guestfwd server).
    ``leases=PATH``         file the DHCP leases are kept in.
    ``host-loopback=on|off`` on (default, as QEMU): the host address reaches the host's 127.0.0.1; off: such
                            traffic is refused (slirp4netns ``--disable-host-loopback``).
    ``guestfwd=...-HOST:PORT`` opens a new TCP connection to HOST:PORT on the host for every guest
                            connection (HOST an IPv4 address or a host name). ``-cmd:COMMAND`` is QEMU's.

Differences from QEMU, each refused with one line rather than ignored
    ``ipv4=off`` together with ``ipv6=off`` (nothing would remain, QEMU says the same).
    guestfwd to a QEMU character device (``-tcp:H:P``, ``-stdio``, ...) and ``hostfwd=unix:...`` refused.
    Stricter than QEMU: a repeated single-valued option, ``net=`` together with ``ip=``, a DNS address
    outside net (QEMU checks that only with restrict=on), host/DNS/DHCP start at the network or broadcast
    address, a non-contiguous dotted mask, trailing junk after a port number, a hostfwd guest address
    outside net, two hostfwd rules on the same host port, malformed dnssearch names (libslirp only warns).
"""

from __future__ import annotations

import logging
import re
import socket
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from vmlan.config.errors import ConfigError
from vmlan.config.qemuopts import check_id, parse_bool, parse_uint
from vmlan.engines.dhcp import DhcpConfig
from vmlan.engines.dns import HOST_NAME, DnsConfig, read_resolv_conf
from vmlan.engines.tcp import TcpParams
from vmlan.engines.usernet.config import GuestForward, HostForward, Limits, StackConfig

__all__ = [
    "GuestFwd",
    "HostFwd",
    "StaticLease",
    "UserNetdev",
    "inet_aton",
    "parse_hostfwd_remove",
    "parse_hostfwd_rule",
    "parse_user_netdev",
    "stack_config",
]

log = logging.getLogger("vmlan")

NB_BOOTP_CLIENTS = 16  # libslirp's DHCP pool size
MTU_MIN, MTU_MAX, MTU_DEFAULT = 576, 65520, 1500
DEFAULT_NET = IPv4Network("10.0.2.0/24")
DEFAULT_NET6 = IPv6Network("fec0::/64")
_DEFAULT_HOST6, _DEFAULT_DNS6 = IPv6Address("fec0::2"), IPv6Address("fec0::3")
_DEFAULT_HOST, _DEFAULT_DNS, _DEFAULT_DHCP = IPv4Address("10.0.2.2"), IPv4Address("10.0.2.3"), IPv4Address("10.0.2.15")


@dataclass(frozen=True, slots=True)
class HostFwd:
    """``hostfwd=``: a host socket whose connections/datagrams go to a guest port."""

    proto: str  # "tcp" or "udp"
    host_addr: str  # "" = any (INADDR_ANY), else a dotted quad
    host_port: int  # 0 = the kernel picks one
    guest_addr: str | None  # None = the first DHCP address (UserNetdev.dhcp_start)
    guest_port: int
    rule: str = field(default="", compare=False)  # the text as given, for messages


@dataclass(frozen=True, slots=True)
class GuestFwd:
    """``guestfwd=``: guest TCP connections to server:port go to a command or a host TCP address."""

    server: str  # virtual address inside net (default net|.4)
    port: int
    target: str | tuple[str, int]  # str: command line (cmd:); tuple: (host, port) to connect to
    rule: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class StaticLease:
    mac: str  # lower-case, ':'-separated
    addr: IPv4Address


@dataclass(frozen=True, slots=True)
class UserNetdev:
    """A validated ``-netdev user``: every default applied, every address inside ``net``."""

    id: str
    hubid: int = 0
    net: IPv4Network = DEFAULT_NET
    host: IPv4Address = _DEFAULT_HOST
    dns: IPv4Address = _DEFAULT_DNS
    dhcp_start: IPv4Address = _DEFAULT_DHCP
    pool: int = NB_BOOTP_CLIENTS
    tftp: str | None = None  # tftp=DIR
    bootfile: str | None = None
    tftp_server_name: str | None = None
    smb: str | None = None  # smb=DIR
    smbserver: IPv4Address | None = None  # default net|.4
    ipv4: bool = True
    ipv6: bool = True
    net6: IPv6Network = DEFAULT_NET6
    host6: IPv6Address = _DEFAULT_HOST6
    dns6: IPv6Address = _DEFAULT_DNS6
    restrict: bool = False
    hostname: str | None = None  # DHCP option 12
    domainname: str | None = None  # DHCP option 15
    dnssearch: tuple[str, ...] = ()  # DHCP option 119, in the order given
    hostfwd: tuple[HostFwd, ...] = ()
    guestfwd: tuple[GuestFwd, ...] = ()
    dns_servers: tuple[tuple[str, int], ...] = ()  # () = the host's resolv.conf (read by the I/O layer)
    dns_static: tuple[tuple[str, IPv4Address], ...] = ()
    mtu: int = MTU_DEFAULT
    static_leases: tuple[StaticLease, ...] = ()
    leases_file: str | None = None
    host_loopback: bool = True
    limits: Limits = field(default_factory=Limits)

    @property
    def driver(self) -> str:
        """The netdev type, as ``info network`` shows it."""
        return "user"

    @property
    def info(self) -> str:
        """QEMU's ``info network`` string for this netdev."""
        return f"net={self.net.network_address},restrict={'on' if self.restrict else 'off'}"

    @property
    def dhcp_pool(self) -> tuple[IPv4Address, ...]:
        """The dynamic addresses, in order: ``pool`` from dhcp_start minus reserved and static ones."""
        taken = {self.host, self.dns, *(IPv4Address(g.server) for g in self.guestfwd)}
        taken.update(lease.addr for lease in self.static_leases)
        first = int(self.dhcp_start)
        return tuple(a for a in map(IPv4Address, range(first, first + self.pool)) if a not in taken)

    def hostfwd_guest(self, fwd: HostFwd) -> IPv4Address | IPv6Address:
        """The guest address a forwarding rule targets (an empty guestaddr means the first DHCP address)."""
        if fwd.guest_addr is None:
            return self.dhcp_start
        return IPv6Address(fwd.guest_addr) if ":" in fwd.guest_addr else IPv4Address(fwd.guest_addr)


_SINGLE_KEYS = frozenset({"type", "id", "hubid", "net", "ip", "host", "dns", "dhcpstart", "ipv4", "ipv6", "restrict"})
_SINGLE_KEYS |= {"hostname", "domainname", "pool", "mtu", "leases", "host-loopback"}
# vmlan's limits: option -> (Limits field, lowest, highest, multiplier)
_LIMIT_KEYS = {
    "guest-macs": ("macs_per_port", 1, 1024, 1),
    "guest-tcp": ("tcp_per_guest", 1, 65536, 1),
    "guest-udp": ("udp_per_guest", 1, 65536, 1),
    "guest-pings": ("pings_per_guest", 1, 65536, 1),
    "hostfwd-clients": ("fwd_clients", 1, 65536, 1),
    "max-flows": ("max_flows", 1, 1 << 20, 1),
    "tcp-mem": ("mem_budget", 1, 1 << 20, 1 << 20),
}
_SINGLE_KEYS |= set(_LIMIT_KEYS)
_LIST_KEYS = frozenset({"dnssearch", "hostfwd", "guestfwd", "dns-server", "dns-static", "lease-static"})
_SINGLE_KEYS |= {"ipv6-net", "ipv6-prefix", "ipv6-prefixlen", "ipv6-host", "ipv6-dns"}
_SINGLE_KEYS |= {"tftp", "tftp-server-name", "bootfile", "smb", "smbserver"}
_PLANNED_KEYS: frozenset[str] = frozenset()

_INET_PART = re.compile(r"0[xX][0-9A-Fa-f]+|0[0-7]*|[1-9][0-9]*")
_MAC_RE = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")
_LABEL_RE = re.compile(r"[A-Za-z0-9_-]{1,63}")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_PORT_RE = re.compile(r"[0-9]{1,5}")
# chardev backends that would otherwise read as a host name in guestfwd=...-NAME:PORT
_CHARDEV_NAMES = frozenset({"tcp", "udp", "telnet", "tn3270", "websocket", "unix", "file", "pipe", "mon"})


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def inet_aton(text: str) -> IPv4Address | None:
    """glibc's inet_aton() without its tolerance of trailing text: 1 to 4 parts, each decimal, 0-octal or
    0x-hex; the last part fills the remaining bytes (``10.2`` = 10.0.0.2). None if it does not parse."""
    parts = text.split(".")
    if len(parts) > 4:
        return None
    values = []
    for part in parts:
        if not _INET_PART.fullmatch(part):
            return None
        values.append(int(part, 16) if part[:2] in ("0x", "0X") else int(part, 8) if part[0] == "0" else int(part))
    *head, last = values
    if any(v > 0xFF for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = last
    for shift, value in enumerate(reversed(head), start=4 - len(head)):
        number |= value << (8 * shift)
    return IPv4Address(number)


def _strtol(text: str, base: int) -> int | None:
    """A whole-string integer as strtol() reads one (sign allowed; base 0: 0x hex, 0 octal)."""
    m = re.fullmatch(r"([+-]?)(0[xX][0-9A-Fa-f]+|0[0-7]*|[1-9][0-9]*)" if base == 0 else r"([+-]?)([0-9]+)", text)
    if not m:
        return None
    digits = m.group(2)
    if base == 0:
        number = int(digits, 16) if digits[:2] in ("0x", "0X") else int(digits, 8) if digits[0] == "0" else int(digits)
    else:
        number = int(digits, 10)
    return -number if m.group(1) == "-" else number


def _prefix_of(mask: IPv4Address) -> int | None:
    bits = int(mask)
    inverted = ~bits & 0xFFFFFFFF
    if inverted & (inverted + 1):
        return None  # not contiguous
    return 32 - inverted.bit_length()


def _classful_prefix(addr: int) -> int:
    """net_slirp_init()'s guess when net= has no mask (its comments name the classes differently)."""
    if not addr & 0x80000000:
        return 8
    if addr & 0xFFF00000 == 0xAC100000:
        return 12
    if addr & 0xC0000000 == 0x80000000:
        return 16
    if addr & 0xFFFF0000 == 0xC0A80000:
        return 16
    if addr & 0xFFFF0000 == 0xC6120000:
        return 15
    if addr & 0xE0000000 == 0xE0000000:
        return 24
    return 28


def _parse_net(key: str, value: str) -> IPv4Network:
    ctx = f"({key}={value})"
    addr_text, slash, mask_text = value.partition("/")
    addr = inet_aton(addr_text)
    if addr is None:
        raise ConfigError(f"Failed to parse netmask {ctx}")
    if not slash:
        prefix = _classful_prefix(int(addr))
    else:
        shift = _strtol(mask_text, 10) if mask_text else 0
        if shift is None:
            mask = inet_aton(mask_text)
            if mask is None:
                raise ConfigError(f"Failed to parse netmask (trailing chars) {ctx}")
            found = _prefix_of(mask)
            if found is None:
                raise ConfigError(f"Failed to parse netmask (not a contiguous mask) {ctx}")
            shift = found
        if not 4 <= shift <= 32:
            raise ConfigError(f"Invalid netmask provided (must be in range 4-32) {ctx}")
        prefix = shift
    return IPv4Network((int(addr), prefix), strict=False)


def _check_not_edge(key: str, addr: IPv4Address, net: IPv4Network) -> None:
    if net.prefixlen < 31 and addr in (net.network_address, net.broadcast_address):
        which = "network" if addr == net.network_address else "broadcast"
        raise ConfigError(f"Parameter '{key}' cannot be the {which} address of net {net} (got '{addr}')")


def _parse_port_rule(text: str, base: int) -> int | None:
    return _strtol(text, base) if text else None


def _parse_hostfwd(rule: str, net: IPv4Network, reserved: set[IPv4Address],
                   net6: IPv6Network | None = None) -> HostFwd:
    def fail(reason: str) -> ConfigError:
        return ConfigError(f"Invalid host forwarding rule '{rule}' ({reason})")

    proto, sep, rest = rule.partition(":")
    if not sep:
        raise fail("No : separators")
    if proto == "unix":
        raise fail("unix: host sockets are not supported yet by vmlan (planned)")
    if proto not in ("", "tcp", "udp"):
        raise fail("Bad protocol name")
    v6 = rest.startswith("[")
    if v6:  # vmlan: [IPV6]:port, as in a URL (QEMU's hostfwd is IPv4 only)
        host_text, bracket, rest = rest[1:].partition("]")
        sep = ":" if bracket and rest.startswith(":") else ""
        rest = rest[1:]
    else:
        host_text, sep, rest = rest.partition(":")
    if not sep:
        raise fail("Missing : separator")
    host_addr = ""
    if v6:
        try:
            host_addr = str(IPv6Address(host_text)) if host_text else "::"
        except ValueError:
            raise fail("Bad host address") from None
    elif host_text:
        parsed = inet_aton(host_text)
        if parsed is None:
            raise fail("Bad host address")
        host_addr = str(parsed)
    port_text, sep, rest = rest.partition("-")
    if not sep:
        raise fail("Bad host port separator")
    host_port = _parse_port_rule(port_text, 0)
    if host_port is None or not 0 <= host_port <= 65535:
        raise fail("Bad host port")
    if rest.startswith("["):
        guest_text, bracket, port_text = rest[1:].partition("]")
        if not bracket or not port_text.startswith(":"):
            raise fail("Missing guest address")
        port_text = port_text[1:]
        try:
            guest6 = IPv6Address(guest_text)
        except ValueError:
            raise fail("Bad guest address") from None
        if net6 is None or guest6 not in net6:
            raise fail(f"Bad guest address: {guest6} is not in the IPv6 prefix {net6}")
        guest_port6 = _parse_port_rule(port_text, 0)
        if guest_port6 is None or not 1 <= guest_port6 <= 65535:
            raise fail("Bad guest port")
        return HostFwd(proto or "tcp", host_addr, host_port, str(guest6), guest_port6, rule)
    if v6:
        raise fail("An IPv6 host address needs an IPv6 guest address ([ADDR]:PORT)")
    guest_text, sep, port_text = rest.partition(":")
    if not sep:
        raise fail("Missing guest address")
    guest_addr: str | None = None
    if guest_text:
        parsed = inet_aton(guest_text)
        if parsed is None:
            raise fail("Bad guest address")
        if parsed not in net or parsed in reserved:
            raise fail(f"Bad guest address: {parsed} is not a guest address of net {net}")
        guest_addr = str(parsed)
    guest_port = _parse_port_rule(port_text, 0)
    if guest_port is None or not 1 <= guest_port <= 65535:
        raise fail("Bad guest port")
    return HostFwd(proto or "tcp", host_addr, host_port, guest_addr, guest_port, rule)


def parse_hostfwd_rule(rule: str, user: UserNetdev) -> HostForward:
    """A runtime ``hostfwd_add`` rule for the stack ``user`` (QEMU's syntax and messages), resolved: an
    empty guest address is the first DHCP address."""
    reserved = {user.host, user.dns}
    if user.net.prefixlen < 31:
        reserved |= {user.net.network_address, user.net.broadcast_address}
    fwd = _parse_hostfwd(rule, user.net, reserved, user.net6 if user.ipv6 else None)
    return HostForward(fwd.proto, fwd.host_addr, fwd.host_port, user.hostfwd_guest(fwd).packed, fwd.guest_port)


def parse_hostfwd_remove(text: str) -> tuple[str, str, int]:
    """``hostfwd_remove``'s ``[tcp|udp]:[hostaddr]:hostport`` -> (proto, host address or "", port)."""
    proto, sep, rest = text.partition(":")
    if not sep or proto not in ("", "tcp", "udp"):
        raise ConfigError(f"Invalid format: '{text}' (expected [tcp|udp]:[hostaddr]:hostport)")
    host_text, sep, port_text = rest.partition(":")
    if not sep or not _PORT_RE.fullmatch(port_text) or int(port_text) > 65535:
        raise ConfigError(f"Invalid format: '{text}' (expected [tcp|udp]:[hostaddr]:hostport)")
    host = ""
    if host_text:
        parsed = inet_aton(host_text)
        if parsed is None:
            raise ConfigError(f"Invalid format: '{text}' (bad host address)")
        host = str(parsed)
    return proto or "tcp", host, int(port_text)


def _parse_guestfwd(rule: str) -> tuple[IPv4Address | None, int, str | tuple[str, int]]:
    def fail(reason: str) -> ConfigError:
        return ConfigError(f"Invalid guest forwarding rule '{rule}' ({reason})")

    proto, sep, rest = rule.partition(":")
    if not sep:
        raise fail("No : separators")
    if proto not in ("", "tcp"):
        raise fail("Bad protocol name")
    server_text, sep, rest = rest.partition(":")
    if not sep:
        raise fail("Missing : separator")
    server = None
    if server_text:
        server = inet_aton(server_text)
        if server is None:
            raise fail("Bad server address")
    port_text, sep, target = rest.partition("-")
    if not sep:
        raise fail("Missing - separator")
    port = _parse_port_rule(port_text, 10)
    if port is None or not 1 <= port <= 65535:
        raise fail("Bad port")
    if target.startswith("cmd:"):
        if not target[4:].strip():
            raise fail("empty command")
        return server, port, target[4:]
    host, sep, target_port = target.rpartition(":")
    if sep and _HOSTNAME_RE.fullmatch(host) and host.lower() not in _CHARDEV_NAMES and _PORT_RE.fullmatch(target_port):
        number = int(target_port)
        if not 1 <= number <= 65535:
            raise fail("Bad target port")
        if re.fullmatch(r"[0-9.]+", host):
            parsed = inet_aton(host)
            if parsed is None:
                raise fail("Bad target address")
            host = str(parsed)
        return server, port, (host, number)
    raise fail(f"character device '{target}' is not supported by vmlan: use -cmd:COMMAND or -HOST:PORT")


def _domain_name(key: str, value: str) -> str:
    """A DNS name as dnssearch/dns-static take it: labels of 1..63 letters, digits, '-' or '_', at most
    253 bytes, one optional trailing dot. Returned without the trailing dot."""
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in name.split(".")):
        raise ConfigError(f"Parameter '{key}' expects a domain name (got '{value}')")
    return name


def _strict_ipv4(key: str, text: str, value: str, expects: str) -> IPv4Address:
    try:
        return IPv4Address(text)
    except ValueError:
        raise ConfigError(f"Parameter '{key}' expects {expects} (got '{value}')") from None


def _collect(pairs: list[tuple[str, str]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    single: dict[str, str] = {}
    lists: dict[str, list[str]] = {key: [] for key in _LIST_KEYS}
    for key, value in pairs:
        if key in _PLANNED_KEYS:
            raise ConfigError(f"Parameter '{key}' is not supported yet by vmlan (planned)")
        if key in _LIST_KEYS:
            lists[key].append(value)
        elif key in _SINGLE_KEYS:
            if key in single:
                raise ConfigError(f"Parameter '{key}' given more than once")
            single[key] = value
        else:
            raise ConfigError(f"Invalid parameter '{key}'")
    return single, lists


def _ip_versions(opts: dict[str, str]) -> tuple[bool, bool]:
    """QEMU's net_init_slirp(): both on by default; ``ipv6=on`` alone turns IPv4 off and ``ipv4=on``
    alone turns IPv6 off; then net_slirp_init()'s checks, in its order and wording."""
    v4_given = parse_bool("ipv4", opts["ipv4"]) if "ipv4" in opts else None
    v6_given = parse_bool("ipv6", opts["ipv6"]) if "ipv6" in opts else None
    ipv4 = not ((v6_given and v4_given is None) or v4_given is False)
    ipv6 = not ((v4_given and v6_given is None) or v6_given is False)
    if not ipv4 and any(k in opts for k in ("net", "ip", "host", "dns")):
        raise ConfigError("IPv4 disabled but netmask/host/dns provided")
    if not ipv6 and any(k in opts for k in ("ipv6-net", "ipv6-prefix", "ipv6-prefixlen", "ipv6-host", "ipv6-dns")):
        raise ConfigError("IPv6 disabled but prefix/host6/dns6 provided")
    if not ipv4 and not ipv6:
        raise ConfigError("IPv4 and IPv6 disabled")
    return ipv4, ipv6


def _parse_ipv6(opts: dict[str, str]) -> tuple[IPv6Network, IPv6Address, IPv6Address]:
    """ipv6-net=ADDR/LEN (QEMU's legacy spelling) or ipv6-prefix= and ipv6-prefixlen= (QAPI's),
    ipv6-host= (prefix|2) and ipv6-dns= (prefix|3), with net_slirp_init()'s messages."""
    if "ipv6-net" in opts and ("ipv6-prefix" in opts or "ipv6-prefixlen" in opts):
        raise ConfigError("Parameters 'ipv6-net' and 'ipv6-prefix'/'ipv6-prefixlen' cannot both be given")
    prefix_text, length_text = opts.get("ipv6-prefix", "fec0::"), opts.get("ipv6-prefixlen", "64")
    if "ipv6-net" in opts:
        prefix_text, slash, length_text = opts["ipv6-net"].partition("/")
        if not slash:
            length_text = "64"
    try:
        prefix = IPv6Address(prefix_text)
    except ValueError:
        raise ConfigError(f"Failed to parse IPv6 prefix (got '{prefix_text}')") from None
    if not length_text.isdigit() or not 0 <= int(length_text) <= 126:
        raise ConfigError(f"Invalid IPv6 prefix provided (IPv6 prefix length must be between 0 and 126; "
                          f"got '{length_text}')")
    net6 = IPv6Network(f"{prefix}/{length_text}", strict=False)
    base = int(net6.network_address)

    def address(key: str, what: str, default: int) -> IPv6Address:
        if key not in opts:
            return IPv6Address(base | default)
        try:
            addr = IPv6Address(opts[key])
        except ValueError:
            raise ConfigError(f"Failed to parse IPv6 {what} ({key}={opts[key]})") from None
        if addr not in net6:
            raise ConfigError(f"IPv6 {what.capitalize()} doesn't belong to network ({key}={addr}, ipv6-net={net6})")
        return addr

    host6 = address("ipv6-host", "host", 2)
    dns6 = address("ipv6-dns", "DNS", 3)
    if dns6 == host6:
        raise ConfigError(f"IPv6 DNS must be different from IPv6 host (ipv6-dns={dns6}, ipv6-host={host6})")
    return net6, host6, dns6


def parse_user_netdev(pairs: list[tuple[str, str]]) -> UserNetdev:
    """Validate the QemuOpts pairs of ``-netdev user,...``; raises ConfigError with a one-line reason."""
    opts, lists = _collect(pairs)
    if opts.get("type", "user") != "user":
        raise ConfigError(f"Parameter 'type' does not accept value '{opts['type']}' (expected 'user')")
    if "id" not in opts:
        raise ConfigError("Parameter 'id' is missing")
    ident = check_id(opts["id"], "netdev")
    hubid = parse_uint("hubid", opts.get("hubid", "0"), 0, 2**31 - 1)
    ipv4, ipv6 = _ip_versions(opts)
    net6, host6, dns6 = _parse_ipv6(opts)

    # net= / ip=, then host, dns and dhcpstart in net_slirp_init()'s order and wording
    if "net" in opts and "ip" in opts:
        raise ConfigError(
            f"Parameters 'net' and 'ip' cannot both be given (ip= is the legacy net=ADDR/24; "
            f"got net={opts['net']}, ip={opts['ip']})"
        )
    net = DEFAULT_NET
    if "net" in opts:
        net = _parse_net("net", opts["net"])
    elif "ip" in opts:
        net = _parse_net("ip", opts["ip"] + "/24")
    base, hostmask = int(net.network_address), int(net.hostmask)
    host = IPv4Address(base | (0x0202 & hostmask))
    dns = IPv4Address(base | (0x0203 & hostmask))
    dhcp = IPv4Address(base | (0x020F & hostmask))
    where = f"net={net}"

    if "host" in opts:
        parsed = inet_aton(opts["host"])
        if parsed is None:
            raise ConfigError(f"Failed to parse host (host={opts['host']})")
        host = parsed
    if host not in net:
        raise ConfigError(f"Host doesn't belong to network (host={host}, {where})")
    _check_not_edge("host", host, net)

    if "dns" in opts:
        parsed = inet_aton(opts["dns"])
        if parsed is None:
            raise ConfigError(f"Failed to parse DNS (dns={opts['dns']})")
        dns = parsed
    if dns not in net:
        raise ConfigError(f"DNS doesn't belong to network (dns={dns}, {where})")
    if dns == host:
        raise ConfigError(f"DNS must be different from host (dns={dns}, host={host})")
    _check_not_edge("dns", dns, net)

    if "dhcpstart" in opts:
        parsed = inet_aton(opts["dhcpstart"])
        if parsed is None:
            raise ConfigError(f"Failed to parse DHCP start address (dhcpstart={opts['dhcpstart']})")
        dhcp = parsed
    if dhcp not in net:
        raise ConfigError(f"DHCP doesn't belong to network (dhcpstart={dhcp}, {where})")
    if dhcp in (host, dns):
        raise ConfigError(f"DHCP must be different from host and DNS (dhcpstart={dhcp}, host={host}, dns={dns})")
    _check_not_edge("dhcpstart", dhcp, net)

    room = int(net.broadcast_address) - int(dhcp)  # the pool ends below the broadcast address
    if "pool" in opts:
        pool = parse_uint("pool", opts["pool"], 1, 2**31 - 1)
        if pool > room:
            raise ConfigError(
                f"Parameter 'pool' expects a value in 1..{room} (got '{opts['pool']}'): "
                f"the pool from {dhcp} must end below the broadcast address {net.broadcast_address}"
            )
    else:
        pool = min(NB_BOOTP_CLIENTS, room)

    domainname = opts.get("domainname")
    if domainname is not None:
        if not domainname:
            raise ConfigError("'domainname' parameter cannot be empty")
        if _nbytes(domainname) > 255:
            raise ConfigError(f"'domainname' parameter cannot exceed 255 bytes (domainname= has {_nbytes(domainname)})")
    hostname = opts.get("hostname") or None
    if hostname is not None and _nbytes(hostname) > 255:
        raise ConfigError(f"'vhostname' parameter cannot exceed 255 bytes (hostname= has {_nbytes(hostname)})")
    dnssearch = tuple(_domain_name("dnssearch", name) for name in lists["dnssearch"])

    restrict = parse_bool("restrict", opts.get("restrict", "off"))
    host_loopback = parse_bool("host-loopback", opts.get("host-loopback", "on"))
    mtu = parse_uint("mtu", opts.get("mtu", str(MTU_DEFAULT)), MTU_MIN, MTU_MAX)
    leases_file = opts.get("leases")
    if leases_file is not None and not leases_file:
        raise ConfigError("Parameter 'leases' expects a file name (got '')")

    reserved = {host, dns}
    if net.prefixlen < 31:
        reserved |= {net.network_address, net.broadcast_address}

    guestfwds: list[GuestFwd] = []
    for rule in lists["guestfwd"]:
        server, port, target = _parse_guestfwd(rule)
        if server is None:
            server = IPv4Address(base | (0x0204 & hostmask))  # libslirp check_guestfwd()
        conflict = ""
        if server not in net:
            conflict = f"server {server} is not in net {net}"
        elif server in reserved:
            conflict = f"server {server} is the host, DNS, network or broadcast address"
        elif any(g.server == str(server) and g.port == port for g in guestfwds):
            conflict = f"{server}:{port} is already forwarded"
        if conflict:
            raise ConfigError(f"Conflicting/invalid host:port in guest forwarding rule '{rule}' ({conflict})")
        guestfwds.append(GuestFwd(str(server), port, target, rule))

    hostfwds: list[HostFwd] = []
    for rule in lists["hostfwd"]:
        fwd = _parse_hostfwd(rule, net, reserved, net6 if ipv6 else None)
        for other in hostfwds:
            anys = ("", "0.0.0.0")
            same_addr = fwd.host_addr == other.host_addr or fwd.host_addr in anys or other.host_addr in anys
            if fwd.host_port and fwd.proto == other.proto and fwd.host_port == other.host_port and same_addr:
                raise ConfigError(
                    f"Could not set up host forwarding rule '{rule}' "
                    f"({fwd.proto} port {fwd.host_port} is already forwarded by '{other.rule}')"
                )
        hostfwds.append(fwd)

    dns_servers: list[tuple[str, int]] = []
    for value in lists["dns-server"]:
        expects = "IPV4[:PORT] or [IPV6]:PORT or IPV6"
        if value.startswith("["):  # [IPV6]:PORT, as in a URL
            addr_text, bracket, rest = value[1:].partition("]")
            colon, port_text = rest[:1], rest[1:]
            if not bracket or (rest and colon != ":"):
                raise ConfigError(f"Parameter 'dns-server' expects {expects} (got '{value}')")
        elif value.count(":") > 1:
            addr_text, colon, port_text = value, "", ""
        else:
            addr_text, colon, port_text = value.partition(":")
        try:
            addr = ip_address(addr_text.split("%", 1)[0])
        except ValueError:
            raise ConfigError(f"Parameter 'dns-server' expects {expects} (got '{value}')") from None
        port = 53
        if colon:
            if not _PORT_RE.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
                raise ConfigError(f"Parameter 'dns-server' expects {expects} (got '{value}')")
            port = int(port_text)
        zone = "%" + addr_text.split("%", 1)[1] if "%" in addr_text else ""
        dns_servers.append((str(addr) + zone, port))

    dns_static: list[tuple[str, IPv4Address]] = []
    for value in lists["dns-static"]:
        name, colon, addr_text = value.rpartition(":")
        if not colon:
            raise ConfigError(f"Parameter 'dns-static' expects NAME:IPV4 (got '{value}')")
        addr = _strict_ipv4("dns-static", addr_text, value, "NAME:IPV4")
        dns_static.append((_domain_name("dns-static", name).lower(), addr))

    leases: list[StaticLease] = []
    fwd_servers = {IPv4Address(g.server) for g in guestfwds}
    for value in lists["lease-static"]:
        mac, eq, addr_text = value.partition("=")
        if not eq or not _MAC_RE.fullmatch(mac):
            raise ConfigError(
                f"Parameter 'lease-static' expects MAC=IPV4, e.g. 52:54:00:12:34:56=10.0.2.20 (got '{value}')"
            )
        mac = mac.lower()
        if int(mac[:2], 16) & 1:
            raise ConfigError(f"Parameter 'lease-static' MAC {mac} is a multicast address (got '{value}')")
        addr = _strict_ipv4("lease-static", addr_text, value, "MAC=IPV4")
        if addr not in net or addr in reserved or addr in fwd_servers:
            raise ConfigError(
                f"Parameter 'lease-static' address {addr} is not a guest address of net {net} (got '{value}')"
            )
        for lease in leases:
            if lease.mac == mac:
                raise ConfigError(f"Parameter 'lease-static' gives MAC {mac} more than one address (got '{value}')")
            if lease.addr == addr:
                raise ConfigError(f"Parameter 'lease-static' gives {addr} to both {lease.mac} and {mac}")
        leases.append(StaticLease(mac, addr))

    tftp = opts.get("tftp") or None
    bootfile = opts.get("bootfile") or None
    tftp_server_name = opts.get("tftp-server-name") or None
    if tftp_server_name is not None and _nbytes(tftp_server_name) > 255:
        raise ConfigError(f"'tftp-server-name' parameter cannot exceed 255 bytes (tftp-server-name= has "
                          f"{_nbytes(tftp_server_name)})")
    if bootfile is not None and (not bootfile.isascii() or len(bootfile) > 127):
        raise ConfigError(f"Parameter 'bootfile' expects 1..127 ASCII characters, the BOOTP file field "
                          f"(got '{bootfile}')")
    smb = opts.get("smb") or None
    smbserver: IPv4Address | None = None
    if smb is not None:
        smbserver = IPv4Address(base | (0x0204 & hostmask))
        if "smbserver" in opts:
            parsed = inet_aton(opts["smbserver"])
            if parsed is None:
                raise ConfigError(f"Failed to parse SMB address (smbserver={opts['smbserver']})")
            smbserver = parsed
        if smbserver not in net or smbserver in reserved:
            raise ConfigError(f"Parameter 'smbserver' must be a free address of net {net} (got {smbserver})")
    elif "smbserver" in opts:
        raise ConfigError("Parameter 'smbserver' needs smb=DIR")

    limit_values = {
        field_name: parse_uint(key, opts[key], low, high) * scale
        for key, (field_name, low, high, scale) in _LIMIT_KEYS.items()
        if key in opts
    }
    return UserNetdev(
        id=ident,
        hubid=hubid,
        net=net,
        host=host,
        dns=dns,
        dhcp_start=dhcp,
        pool=pool,
        restrict=restrict,
        hostname=hostname,
        domainname=domainname,
        dnssearch=dnssearch,
        hostfwd=tuple(hostfwds),
        guestfwd=tuple(guestfwds),
        dns_servers=tuple(dns_servers),
        dns_static=tuple(dns_static),
        mtu=mtu,
        static_leases=tuple(leases),
        leases_file=leases_file,
        host_loopback=host_loopback,
        limits=Limits(**limit_values),
        ipv4=ipv4,
        ipv6=ipv6,
        net6=net6,
        host6=host6,
        dns6=dns6,
        tftp=tftp,
        bootfile=bootfile,
        tftp_server_name=tftp_server_name,
        smb=smb,
        smbserver=smbserver,
    )


RESOLV_CONF = "/etc/resolv.conf"


def stack_config(user: UserNetdev, resolv_conf: str = RESOLV_CONF) -> StackConfig:
    """Turn ``-netdev user`` options into the engines' configurations (reading the host's resolvers)."""
    host, dns = str(user.host), str(user.dns)
    dhcp = DhcpConfig(
        server_ip=host,
        netmask=str(user.net.netmask),
        router=None if user.restrict else host,
        dns=() if user.restrict else (dns,),
        pool_start=str(user.dhcp_start),
        pool_size=user.pool,
        hostname=user.hostname,
        domainname=user.domainname,
        dnssearch=tuple(user.dnssearch),
        mtu=user.mtu,
        static_leases={lease.mac: str(lease.addr) for lease in user.static_leases},
        bootfile=user.bootfile,
        tftp_server_name=user.tftp_server_name,
    )
    upstreams = list(user.dns_servers)
    if not upstreams:
        try:
            with open(resolv_conf) as fh:
                upstreams = [(server, 53) for server in read_resolv_conf(fh.read())]
        except OSError:
            upstreams = []
        if not upstreams:
            log.warning("-netdev user,id=%s: no nameserver in %s: guests' DNS queries will fail", user.id,
                        resolv_conf)
    static: dict[str, list[str]] = {}
    for name, addr in user.dns_static:
        static.setdefault(name, []).append(str(addr))
    dns_cfg = DnsConfig(upstreams=tuple(upstreams), static=static, host_names={HOST_NAME: host}, tcp_upstream=True)
    hostfwd = tuple(
        HostForward(f.proto, f.host_addr, f.host_port, user.hostfwd_guest(f).packed, f.guest_port) for f in user.hostfwd
    )
    guestfwd = tuple(GuestForward(socket.inet_aton(g.server), g.port, g.target) for g in user.guestfwd)
    return StackConfig(
        net=user.net,
        host=user.host,
        dns=user.dns,
        ipv4=user.ipv4,
        ipv6=user.ipv6,
        net6=user.net6,
        host6=user.host6,
        dns6=user.dns6,
        tftp_dir=user.tftp,
        smb_dir=user.smb,
        smbserver=user.smbserver,
        restrict=user.restrict,
        host_loopback=user.host_loopback,
        mtu=user.mtu,
        dhcp=dhcp,
        dns_config=dns_cfg,
        hostfwd=hostfwd,
        guestfwd=guestfwd,
        limits=user.limits,
        tcp=TcpParams(mss=user.mtu - 40),
    )
