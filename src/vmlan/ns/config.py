"""``vmlan ns`` options, validated into a frozen :class:`NsConfig`.

    vmlan ns [--mtu N] [-netdev user,...] [-v|-q] [--attach PID]... [--] CMD ARGS...
    vmlan ns [--mtu N] [-netdev user,...] [-v|-q] --attach PID [--attach PID]...

Every namespace on the stack is a :class:`Namespace`: CMD's first (when there is a command), then one
per ``--attach PID`` in the order given. Namespace *i* gets its own hub port (netdev ``ns<i>``), its own
``tap0`` MAC and its own IPv4 address:

* IPv4 follows slirp4netns ``--configure``: ``net``'s address .100 + *i* (10.0.2.100/24 for the first),
  the default route via the stack's host address (10.0.2.2), the resolver the stack's DNS (10.0.2.3).
  .100 rather than QEMU's first DHCP address (.15): it is what slirp4netns users (rootlesskit, podman,
  scripts) already expect, and it lies outside the DHCP pool, so it never collides with a lease. A
  network too small to hold them continues from ``dhcpstart``.
* The MAC is QEMU's default NIC address 52:54:00:12:34:56 + *i*, so the namespace's IPv6 address is
  known in advance: the kernel autoconfigures it (SLAAC, EUI-64) from the stack's router advertisement,
  fec0::5054:ff:fe12:3456 for the first. vmlan configures no IPv6 address itself; the prefix must be a
  /64 for SLAAC.

A hostfwd rule without a guest address targets the first namespace's IPv4 address (QEMU's default, the
first DHCP address, would name nobody here); an IPv6 rule names its guest (``[ADDR]:PORT``), e.g.
:attr:`Namespace.slaac`.

Per-guest caps (``guest-tcp=``, ``guest-udp=``) not given default to the stack-wide ones (``max-flows=``;
SYNs waiting for a host connect: the stack's 512): a namespace is one machine's worth of programs, not
one VM among many, and the stack-wide caps still bound them all together.

``--mtu`` sets the interfaces' MTU and the stack's (its MSS is MTU - 40); default 1500 as slirp4netns,
or the ``mtu=`` of ``-netdev user``. Giving both with different values is an error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from vmlan.config.errors import ConfigError
from vmlan.config.qemuopts import parse_qemuopts, parse_uint
from vmlan.config.usernet import MTU_MAX, MTU_MIN, UserNetdev, parse_user_netdev

__all__ = ["FIRST_MAC", "IFNAME", "MAX_NAMESPACES", "NS_ADDRESS_OFFSET", "Namespace", "NsConfig", "eui64_address",
           "host_search_list", "namespace_address", "namespace_addresses", "parse_ns_args", "resolv_conf_text"]

IFNAME = "tap0"
NS_ADDRESS_OFFSET = 100  # slirp4netns: the interface gets the network's address + 100
FIRST_MAC = bytes.fromhex("525400123456")  # QEMU's default NIC MAC; namespace i gets + i
MAX_NAMESPACES = 64  # --attach given more often is a mistake, not a plan
DEFAULT_USER_ID = "user0"
TAP_ID = "ns"
PID_MAX = 4194304  # PID_MAX_LIMIT on 64-bit Linux
# -netdev user option, its per-guest Limits field, the stack-wide field it defaults to under vmlan ns
_ONE_GUEST = (("guest-tcp", "tcp_per_guest", "max_flows"), ("guest-udp", "udp_per_guest", "max_flows"),
              ("guest-tcp", "tcp_connecting_per_guest", "max_connecting"))


def eui64_address(prefix: IPv6Address, mac: bytes) -> IPv6Address:
    """RFC 4291 appendix A: the modified EUI-64 interface identifier of ``mac`` in the /64 ``prefix``,
    the address the kernel's SLAAC gives an interface with that MAC (addr_gen_mode eui64)."""
    iid = bytes((mac[0] ^ 0x02,)) + mac[1:3] + b"\xff\xfe" + mac[3:6]
    return IPv6Address(prefix.packed[:8] + iid)


@dataclass(frozen=True, slots=True)
class Namespace:
    """One network namespace on the stack: CMD's (``attach`` None) or that of process ``attach``."""

    index: int
    address: IPv4Address
    mac: bytes
    tap_id: str
    attach: int | None = None
    slaac: IPv6Address | None = None  # the address SLAAC will give tap0 (None with ipv6=off)

    @property
    def mac_text(self) -> str:
        return self.mac.hex(":")


@dataclass(frozen=True, slots=True)
class NsConfig:
    """A validated ``vmlan ns`` command line."""

    user: UserNetdev  # hostfwd rules resolved to the first namespace's address, ``mtu`` in force
    namespaces: tuple[Namespace, ...]
    command: tuple[str, ...] = ()  # empty: attach only
    verbose: int = 0
    quiet: bool = False

    @property
    def attach(self) -> tuple[int, ...]:
        """The PIDs of ``--attach``, in order."""
        return tuple(ns.attach for ns in self.namespaces if ns.attach is not None)

    @property
    def address(self) -> IPv4Address:
        """The first namespace's IPv4 address (CMD's when there is a command)."""
        return self.namespaces[0].address

    @property
    def tap_id(self) -> str:
        return self.namespaces[0].tap_id

    @property
    def mtu(self) -> int:
        return self.user.mtu

    @property
    def prefixlen(self) -> int:
        return self.user.net.prefixlen

    @property
    def gateway(self) -> IPv4Address:
        return self.user.host

    @property
    def dns(self) -> IPv4Address:
        return self.user.dns

    @property
    def ipv4(self) -> bool:
        return self.user.ipv4

    @property
    def ipv6(self) -> bool:
        return self.user.ipv6


def namespace_addresses(user: UserNetdev, count: int) -> list[IPv4Address]:
    """net + 100, + 101, ... while they are usable addresses of net that are none of the stack's own;
    then dhcpstart onwards. Raises ConfigError when the network cannot hold ``count`` of them."""
    net = user.net
    taken = {user.host, user.dns, net.network_address, net.broadcast_address}
    taken.update(IPv4Address(g.server) for g in user.guestfwd)
    if user.smbserver is not None:
        taken.add(user.smbserver)
    found: list[IPv4Address] = []
    for start in (net.network_address + NS_ADDRESS_OFFSET, user.dhcp_start):
        candidate = start
        while candidate in net and len(found) < count:
            if candidate not in taken and candidate not in found:
                found.append(candidate)
            elif start != user.dhcp_start and not found:
                break  # slirp4netns's .100 is taken: QEMU's first DHCP address, as before
            candidate += 1
        if len(found) == count:
            return found
    raise ConfigError(f"ns: net={net} has no room for {count} namespaces")


def namespace_address(user: UserNetdev) -> IPv4Address:
    """The first namespace's address: net + 100 when usable, else dhcpstart."""
    return namespace_addresses(user, 1)[0]


def _parse_user(text: str) -> tuple[UserNetdev, set[str]]:
    """The netdev and the option names it was given."""
    try:
        pairs = parse_qemuopts(text)
    except ConfigError as exc:
        raise ConfigError(f"-netdev {text}: {exc}") from None
    kind = next((v for k, v in pairs if k == "type"), "")
    if kind != "user":
        raise ConfigError(f"-netdev {text}: vmlan ns takes only -netdev user (got type '{kind or 'none'}')")
    if not any(k == "id" for k, _ in pairs):
        pairs.append(("id", DEFAULT_USER_ID))
    try:
        user = parse_user_netdev(pairs)
    except ConfigError as exc:
        raise ConfigError(f"-netdev {text}: {exc}") from None
    if user.ipv6 and user.net6.prefixlen != 64:
        raise ConfigError(f"-netdev {text}: vmlan ns configures IPv6 by SLAAC, which needs a /64 prefix "
                          f"(got {user.net6}; or ipv6=off)")
    return user, {k for k, _ in pairs}


def _one_guest_limits(user: UserNetdev, given: set[str]) -> UserNetdev:
    """Per-guest caps not given default to the stack-wide ones (a guest's share exists to be fair to
    other VMs; a namespace of many programs, or one opening hundreds of connections a second, would
    otherwise meet caps meant for a VM among several)."""
    limits = user.limits
    raised = {field: getattr(limits, whole) for option, field, whole in _ONE_GUEST if option not in given}
    return dataclasses.replace(user, limits=dataclasses.replace(limits, **raised))


def _value(argv: list[str], i: int, name: str) -> tuple[str, int]:
    """The value of option ``argv[i]`` (``--opt=V`` or ``--opt V``) and the index after it."""
    arg = argv[i]
    if "=" in arg and arg.startswith("--"):
        return arg.split("=", 1)[1], i + 1
    if i + 1 >= len(argv):
        raise ConfigError(f"{name}: requires an argument")
    return argv[i + 1], i + 2


def parse_ns_args(argv: list[str]) -> NsConfig:
    """Parse the arguments after ``vmlan ns``; raises ConfigError with a one-line reason.

    Options come first; ``--`` or the first argument that is not an option starts the command.
    """
    mtu_text: str | None = None
    netdev_text: str | None = None
    attach: list[int] = []
    verbose = 0
    quiet = False
    command: tuple[str, ...] = ()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            command = tuple(argv[i + 1 :])
            break
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg
        if name in ("-v", "--verbose"):
            verbose += 1
            i += 1
        elif name == "-vv":
            verbose += 2
            i += 1
        elif name in ("-q", "--quiet"):
            quiet = True
            i += 1
        elif name == "--mtu":
            mtu_text, i = _value(argv, i, "--mtu")
        elif name in ("-netdev", "--netdev"):
            if netdev_text is not None:
                raise ConfigError("-netdev: vmlan ns takes one -netdev user")
            netdev_text, i = _value(argv, i, "-netdev")
        elif name == "--attach":
            text, i = _value(argv, i, "--attach")
            pid = parse_uint("--attach", text, 1, PID_MAX)
            if pid in attach:
                raise ConfigError(f"--attach {pid}: given twice")
            attach.append(pid)
        elif arg.startswith("-") and arg != "-":
            raise ConfigError(f"ns: unrecognized option '{arg}'")
        else:
            command = tuple(argv[i:])
            break
    if not attach and not command:
        raise ConfigError("ns: a command (after --) or --attach PID is required")
    owners: list[int | None] = [None] if command else []
    owners += attach
    if len(owners) > MAX_NAMESPACES:
        raise ConfigError(f"ns: at most {MAX_NAMESPACES} namespaces on one stack (got {len(owners)})")
    user, given = _parse_user(netdev_text if netdev_text is not None else "user")
    user = _one_guest_limits(user, given)
    if mtu_text is not None:
        try:
            mtu = parse_uint("mtu", mtu_text, MTU_MIN, MTU_MAX)
        except ConfigError as exc:
            raise ConfigError(f"--mtu {mtu_text}: {exc}") from None
        if netdev_text is not None and "mtu=" in netdev_text and user.mtu != mtu:
            raise ConfigError(f"--mtu {mtu_text}: the -netdev user says mtu={user.mtu}")
        user = dataclasses.replace(user, mtu=mtu)
    addresses = namespace_addresses(user, len(owners))
    taps = {TAP_ID + str(n) for n in range(len(owners))}
    suffix = "a" if user.id in taps else ""  # never the user netdev's own id
    first_mac = int.from_bytes(FIRST_MAC, "big")
    namespaces = []
    for n, (owner, address) in enumerate(zip(owners, addresses, strict=True)):
        mac = (first_mac + n).to_bytes(6, "big")
        slaac = eui64_address(user.net6.network_address, mac) if user.ipv6 else None
        namespaces.append(Namespace(n, address, mac, f"{TAP_ID}{n}{suffix}", owner, slaac))
    hostfwd = tuple(f if f.guest_addr is not None else dataclasses.replace(f, guest_addr=str(addresses[0]))
                    for f in user.hostfwd)
    user = dataclasses.replace(user, hostfwd=hostfwd)
    return NsConfig(user=user, namespaces=tuple(namespaces), command=command, verbose=verbose, quiet=quiet)


def resolv_conf_text(cfg: NsConfig, host_resolv_conf: str = "") -> str:
    """The namespace's /etc/resolv.conf: the stack's DNS (IPv4, and ipv6-dns when IPv6 is on); the search
    list of ``dnssearch=`` (or ``domainname=``), else the host's, so short names resolve as they do on
    the host."""
    user = cfg.user
    search = list(user.dnssearch) or ([user.domainname] if user.domainname else [])
    if not search:
        search = host_search_list(host_resolv_conf)
    lines = ["# vmlan ns: the user-mode stack's DNS forwarder"]
    if user.ipv4:
        lines.append(f"nameserver {user.dns}")
    if user.ipv6:
        lines.append(f"nameserver {user.dns6}")
    if search:
        lines.append("search " + " ".join(search))
    return "\n".join(lines) + "\n"


def host_search_list(text: str) -> list[str]:
    """The search list of a resolv.conf: its last ``search`` or ``domain`` line wins, as in glibc."""
    found: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] in ("search", "domain"):
            found = fields[1:] if fields[0] == "search" else fields[1:2]
    return found
