"""``vmlan ns`` options, validated into a frozen :class:`NsConfig`.

    vmlan ns [--mtu N] [-netdev user,...] [-v|-q] [--] CMD ARGS...
    vmlan ns [--mtu N] [-netdev user,...] [-v|-q] --attach PID

The namespace's addresses follow slirp4netns ``--configure``: the interface gets ``net``'s address
.100 (10.0.2.100/24 by default), the default route goes via the stack's host address (10.0.2.2) and
the resolver is the stack's DNS (10.0.2.3). .100 rather than QEMU's first DHCP address (.15): it is
what slirp4netns users (rootlesskit, podman, scripts) already expect, and it lies outside the DHCP
pool, so it never collides with a lease. A network too small to hold .100 falls back to ``dhcpstart``.
A hostfwd rule without a guest address targets the namespace's address (QEMU's default, the first
DHCP address, would name nobody here).

The namespace is the stack's only guest, so per-guest caps (``guest-tcp=``, ``guest-udp=``) not
given default to the stack-wide ones (``max-flows=``; SYNs waiting for a host connect: the stack's 512).

``--mtu`` sets the interface's MTU and the stack's (its MSS is MTU - 40); default 1500 as slirp4netns,
or the ``mtu=`` of ``-netdev user``. Giving both with different values is an error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from ipaddress import IPv4Address

from vmlan.config.errors import ConfigError
from vmlan.config.qemuopts import parse_qemuopts, parse_uint
from vmlan.config.usernet import MTU_MAX, MTU_MIN, UserNetdev, parse_user_netdev

__all__ = ["IFNAME", "NS_ADDRESS_OFFSET", "NsConfig", "host_search_list", "namespace_address", "parse_ns_args",
           "resolv_conf_text"]

IFNAME = "tap0"
NS_ADDRESS_OFFSET = 100  # slirp4netns: the interface gets the network's address + 100
DEFAULT_USER_ID = "user0"
TAP_ID = "ns0"
PID_MAX = 4194304  # PID_MAX_LIMIT on 64-bit Linux
# -netdev user option, its per-guest Limits field, the stack-wide field it defaults to under vmlan ns
_ONE_GUEST = (("guest-tcp", "tcp_per_guest", "max_flows"), ("guest-udp", "udp_per_guest", "max_flows"),
              ("guest-tcp", "tcp_connecting_per_guest", "max_connecting"))


@dataclass(frozen=True, slots=True)
class NsConfig:
    """A validated ``vmlan ns`` command line."""

    user: UserNetdev  # hostfwd rules resolved to ``address``, ``mtu`` in force
    address: IPv4Address
    command: tuple[str, ...] = ()  # empty with ``attach``
    attach: int | None = None
    verbose: int = 0
    quiet: bool = False

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
    def tap_id(self) -> str:
        """The netdev id of the namespace's TAP in ``info network`` (never the user netdev's)."""
        return TAP_ID if self.user.id != TAP_ID else TAP_ID + "a"


def namespace_address(user: UserNetdev) -> IPv4Address:
    """net + 100 when that is a usable address of net that is none of the stack's own; else dhcpstart."""
    net = user.net
    candidate = net.network_address + NS_ADDRESS_OFFSET
    taken = {user.host, user.dns, net.network_address, net.broadcast_address}
    taken.update(IPv4Address(g.server) for g in user.guestfwd)
    if candidate in net and candidate not in taken:
        return candidate
    return user.dhcp_start


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
        return parse_user_netdev(pairs), {k for k, _ in pairs}
    except ConfigError as exc:
        raise ConfigError(f"-netdev {text}: {exc}") from None


def _one_guest_limits(user: UserNetdev, given: set[str]) -> UserNetdev:
    """The namespace is the stack's only guest: per-guest caps not given default to the stack-wide ones
    (a guest's share exists to be fair to other guests; a namespace of many programs, or one opening
    hundreds of connections a second, would otherwise meet caps meant for a VM among several)."""
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
    attach_text: str | None = None
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
            attach_text, i = _value(argv, i, "--attach")
        elif arg.startswith("-") and arg != "-":
            raise ConfigError(f"ns: unrecognized option '{arg}'")
        else:
            command = tuple(argv[i:])
            break
    attach = None if attach_text is None else parse_uint("--attach", attach_text, 1, PID_MAX)
    if attach is not None and command:
        raise ConfigError("ns: --attach PID and a command exclude each other")
    if attach is None and not command:
        raise ConfigError("ns: a command (after --) or --attach PID is required")
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
    address = namespace_address(user)
    hostfwd = tuple(f if f.guest_addr is not None else dataclasses.replace(f, guest_addr=str(address))
                    for f in user.hostfwd)
    user = dataclasses.replace(user, hostfwd=hostfwd)
    return NsConfig(user=user, address=address, command=command, attach=attach, verbose=verbose, quiet=quiet)


def resolv_conf_text(cfg: NsConfig, host_resolv_conf: str = "") -> str:
    """The namespace's /etc/resolv.conf: the stack's DNS; the search list of ``dnssearch=`` (or
    ``domainname=``), else the host's, so short names resolve as they do on the host."""
    user = cfg.user
    search = list(user.dnssearch) or ([user.domainname] if user.domainname else [])
    if not search:
        search = host_search_list(host_resolv_conf)
    lines = ["# vmlan ns: the user-mode stack's DNS forwarder", f"nameserver {cfg.dns}"]
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
