"""``-netdev vxlan`` (RFC 7348), vmlan's own netdev: QEMU has none. Validated into a frozen :class:`VxlanNetdev`.

Input is the QemuOpts pairs of ``-netdev vxlan,...``. The option names follow ``ip link add ... type vxlan``
(ip-link(8)) where they exist:

    ``vni=N``              0..16777215, required (ip-link's ``id``)
    ``remote=ADDR``        unicast: the one VXLAN endpoint (VTEP) every frame goes to, IPv4 or IPv6
    ``group=ADDR``         multicast: join this group and send every frame to it; exactly one of remote=, group=
    ``local=ADDR``         the address to send from and to listen on (multicast: the interface's address)
    ``dev=IFNAME``         the interface to use (multicast: the one to join on; unicast: SO_BINDTODEVICE)
    ``port=N``             UDP destination port and the port vmlan listens on; default 4789 (IANA). Linux's
                           default is 8472, so the kernel's side needs ``dstport 4789``.
    ``srcport=LOW-HIGH``   the range outer source ports are drawn from, one per inner flow (ECMP entropy);
                           default the namespace's net.ipv4.ip_local_port_range, as the kernel's
    ``ttl=N``              1..255; default the system's (64) for unicast, 1 for multicast, as the kernel's
    ``hubid=N``            the hub to join (default 0), as on every vmlan netdev
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import ClassVar

from vmlan.config.errors import ConfigError
from vmlan.config.qemuopts import check_id, collect_netdev_opts, parse_uint
from vmlan.wire.vxlan import MAX_VNI, VXLAN_PORT

__all__ = ["VxlanNetdev", "parse_vxlan_netdev"]

_KEYS = frozenset({"type", "id", "hubid", "vni", "remote", "group", "local", "dev", "port", "srcport", "ttl"})
IFNAMSIZ = 16


@dataclass(frozen=True, slots=True)
class VxlanNetdev:
    """A validated ``-netdev vxlan``: frames to ``remote`` (or ``group``) in VXLAN ``vni`` over UDP ``port``."""

    driver: ClassVar[str] = "vxlan"

    id: str
    vni: int
    remote: str  # the unicast endpoint or the multicast group, normalised
    multicast: bool = False
    hubid: int = 0
    local: str | None = None
    dev: str | None = None
    port: int = VXLAN_PORT
    srcport: tuple[int, int] | None = None  # None: the namespace's ephemeral port range, read at start
    ttl: int | None = None  # None: the system's unicast default, 1 for multicast

    @property
    def ipv6(self) -> bool:
        return ":" in self.remote

    @property
    def info(self) -> str:
        """What ``info network`` shows after ``type=vxlan,``."""
        where = f"group={self.remote}" if self.multicast else f"remote={self.remote}"
        extra = "".join(f",{k}={v}" for k, v in (("local", self.local), ("dev", self.dev)) if v)
        return f"vni={self.vni},{where}{extra},port={self.port}"


def _address(key: str, value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        addr = ipaddress.ip_address(value.removeprefix("[").removesuffix("]"))
    except ValueError:
        raise ConfigError(f"Parameter '{key}' expects an IPv4 or IPv6 address (got '{value}')") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
        raise ConfigError(f"Parameter '{key}' does not take a %scope (use dev=) (got '{value}')")
    return addr


def _srcport(value: str) -> tuple[int, int]:
    low, dash, high = value.partition("-")
    if not dash:
        raise ConfigError(f"Parameter 'srcport' expects LOW-HIGH (got '{value}')")
    lo = parse_uint("srcport", low, 1, 65535)
    hi = parse_uint("srcport", high, 1, 65535)
    if lo > hi:
        raise ConfigError(f"Parameter 'srcport' expects LOW <= HIGH (got '{value}')")
    return lo, hi


def parse_vxlan_netdev(pairs: list[tuple[str, str]]) -> VxlanNetdev:
    """Validate the QemuOpts pairs of ``-netdev vxlan,...``; raises ConfigError with a one-line reason."""
    opts = collect_netdev_opts("vxlan", pairs, _KEYS)
    ident = check_id(opts["id"], "netdev")
    hubid = parse_uint("hubid", opts.get("hubid", "0"), 0, 2**31 - 1)
    if "vni" not in opts:
        raise ConfigError("Parameter 'vni' is missing (0..16777215)")
    vni = parse_uint("vni", opts["vni"], 0, MAX_VNI)
    modes = [k for k in ("remote", "group") if k in opts]
    if len(modes) != 1:
        raise ConfigError("exactly one of remote= (unicast) or group= (multicast) is required")
    mode = modes[0]
    addr = _address(mode, opts[mode])
    if mode == "remote" and (addr.is_multicast or addr.is_unspecified):
        raise ConfigError(f"Parameter 'remote' must be a unicast address (got '{opts['remote']}'; "
                          "for multicast use group=)")
    if mode == "group" and not addr.is_multicast:
        raise ConfigError(f"Parameter 'group' must be a multicast address (got '{opts['group']}')")
    local = None
    if "local" in opts:
        local_addr = _address("local", opts["local"])
        if local_addr.version != addr.version:
            raise ConfigError(f"Parameter 'local' must be an IPv{addr.version} address like {mode}= "
                              f"(got '{opts['local']}')")
        if local_addr.is_multicast:
            raise ConfigError(f"Parameter 'local' must be a unicast address (got '{opts['local']}')")
        local = str(local_addr)
    dev = opts.get("dev")
    if dev is not None and (not dev or len(dev.encode()) >= IFNAMSIZ or "/" in dev or dev.strip() != dev):
        raise ConfigError(f"Parameter 'dev' expects an interface name of 1..15 bytes (got '{dev}')")
    if mode == "group" and addr.version == 6 and dev is None:
        raise ConfigError("Parameter 'dev' is missing (an IPv6 group is joined on a named interface)")
    port = parse_uint("port", opts.get("port", str(VXLAN_PORT)), 1, 65535)
    srcport = _srcport(opts["srcport"]) if "srcport" in opts else None
    ttl = parse_uint("ttl", opts["ttl"], 1, 255) if "ttl" in opts else None
    return VxlanNetdev(ident, vni, str(addr), mode == "group", hubid, local, dev, port, srcport, ttl)
