"""``-netdev``, ``-hub`` and ``-object filter-dump|filter-netem`` options, validated into frozen configs.

``-netdev vde``, ``tap`` and ``bridge`` are validated in :mod:`vmlan.config.vde` and :mod:`vmlan.config.tap`,
vmlan's own ``-netdev vxlan`` in :mod:`vmlan.config.vxlan`,
``-object filter-netem`` in :mod:`vmlan.config.filters`.

Option names, defaults and error wording follow QEMU 7.2 (net/socket.c, net/stream.c, net/dgram.c,
qapi/net.json). vmlan's own additions are few and named here: ``hubid=`` on any netdev (QEMU has it
only on hubport), ``reconnect-ms=`` on ``socket,connect=``, ``max-peers=`` on listening stream netdevs
(QEMU accepts one peer at a time, vmlan up to this many), and ``-hub id=N,mode=hub|switch``.

Both QEMU socket families collapse into two shapes: a *stream* link (``socket,listen=``/``connect=`` and
``stream``) carrying frames with a 4-byte big-endian length, and a *datagram* link (``socket,mcast=``/
``udp=`` and ``dgram``) carrying one frame per datagram.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from vmlan.config.errors import ConfigError
from vmlan.config.filters import NetemConfig, parse_filter_netem
from vmlan.config.qemuopts import (
    check_id,
    flatten,
    parse_bool,
    parse_keyval,
    parse_qemuopts,
    parse_uint,
)
from vmlan.config.tap import BridgeNetdev, TapNetdev, parse_bridge_netdev, parse_tap_netdev
from vmlan.config.usernet import UserNetdev as UserNetdev  # re-exported: one of the NetdevConfig shapes
from vmlan.config.usernet import parse_user_netdev
from vmlan.config.vde import VdeNetdev, parse_vde_netdev
from vmlan.config.vxlan import VxlanNetdev, parse_vxlan_netdev


@dataclass(frozen=True, slots=True)
class InetAddr:
    host: str  # "" means any address (INADDR_ANY) when binding
    port: int
    keepalive: bool = False  # addr.keep-alive=on: SO_KEEPALIVE, so a vanished peer's port goes away

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UnixAddr:
    path: str
    abstract: bool = False

    def __str__(self) -> str:
        return ("@" if self.abstract else "") + self.path


SocketAddress = InetAddr | UnixAddr


MAX_PEERS_DEFAULT = 64
MAX_PEERS_LIMIT = 1 << 20


@dataclass(frozen=True, slots=True)
class StreamNetdev:
    """A length-prefixed stream link; ``server`` listens and accepts up to ``max_peers`` peers at a time."""

    id: str
    hubid: int
    driver: str  # "socket" or "stream": only changes how it is shown
    server: bool
    addr: SocketAddress
    reconnect_ms: int = 0
    max_peers: int = MAX_PEERS_DEFAULT


@dataclass(frozen=True, slots=True)
class DgramNetdev:
    """One frame per datagram, to ``remote`` (unicast or multicast group), from ``local``."""

    id: str
    hubid: int
    driver: str  # "socket" or "dgram"
    remote: SocketAddress | None
    local: SocketAddress | None
    multicast: bool = False
    mcast_if: str | None = None  # socket's localaddr= / dgram's local.host for a multicast remote


NetdevConfig = StreamNetdev | DgramNetdev | UserNetdev | VdeNetdev | TapNetdev | BridgeNetdev | VxlanNetdev


@dataclass(frozen=True, slots=True)
class HubConfig:
    id: int
    mode: str = "hub"  # "hub" floods; "switch" learns source MACs
    aging: int = 300  # seconds a learned MAC stays in a switch's table


@dataclass(frozen=True, slots=True)
class DumpConfig:
    """QEMU's ``-object filter-dump,id=,netdev=,file=[,maxlen=][,queue=all|rx|tx]``."""

    id: str
    netdev: str
    file: str
    maxlen: int = 65536
    queue: str = "all"


MAX_PORT = 65535


def _parse_port(key: str, value: str) -> int:
    if not value.isdigit():
        raise ConfigError(f"Parameter '{key}' expects a port number (got '{value}')")
    return parse_uint(key, value, 0, MAX_PORT)


def _ipv4(key: str, value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        if value == "localhost":
            return "127.0.0.1"
        raise ConfigError(f"Parameter '{key}' expects an IPv4 address (got '{value}')") from None


def parse_host_port(key: str, value: str) -> InetAddr:
    """QEMU's ``host:port`` (split at the first ':'; an empty host means any; IPv4 only)."""
    host, colon, port = value.partition(":")
    if not colon:
        raise ConfigError(f"host address '{value}' doesn't contain ':' separating host from port ({key}=)")
    if host:
        host = _ipv4(key, host)
    return InetAddr(host, _parse_port(key, port))


def _unknown(driver: str, keys: list[str]) -> None:
    if keys:
        raise ConfigError(f"Invalid parameter '{keys[0]}' for netdev type '{driver}'")


def _netdev_id(opts: dict[str, str]) -> str:
    if "id" not in opts:
        raise ConfigError("Parameter 'id' is missing")
    return check_id(opts["id"], "netdev")


def _hubid(opts: dict[str, str]) -> int:
    return parse_uint("hubid", opts.get("hubid", "0"), 0, 2**31 - 1)


_SOCKET_KEYS = frozenset(
    {"type", "id", "hubid", "listen", "connect", "mcast", "udp", "localaddr", "fd", "reconnect-ms", "max-peers"}
)


def _socket_netdev(pairs: list[tuple[str, str]]) -> NetdevConfig:
    opts: dict[str, str] = {}
    for key, value in pairs:
        if key in opts:
            raise ConfigError(f"Parameter '{key}' given more than once")
        opts[key] = value
    _unknown("socket", [k for k in opts if k not in _SOCKET_KEYS])
    ident = _netdev_id(opts)
    hubid = _hubid(opts)
    if "fd" in opts:
        raise ConfigError(f"Parameter 'fd' is not supported by vmlan (got '{opts['fd']}'): use listen= or connect=")
    modes = [k for k in ("listen", "connect", "mcast", "udp") if k in opts]
    if len(modes) != 1:
        raise ConfigError("exactly one of listen=, connect=, mcast= or udp= is required")
    mode = modes[0]
    if "localaddr" in opts and mode not in ("mcast", "udp"):
        raise ConfigError("localaddr= is only valid with mcast= or udp=")
    if "reconnect-ms" in opts and mode != "connect":
        raise ConfigError("reconnect-ms= is only valid with connect=")
    if "max-peers" in opts and mode != "listen":
        raise ConfigError("max-peers= is only valid with listen=")
    addr = parse_host_port(mode, opts[mode])
    if mode == "listen":
        return StreamNetdev(ident, hubid, "socket", True, addr, max_peers=_max_peers(opts.get("max-peers")))
    if mode == "connect":
        if not addr.host:
            addr = InetAddr("127.0.0.1", addr.port)
        reconnect = parse_uint("reconnect-ms", opts.get("reconnect-ms", "0"), 0, 2**31 - 1)
        return StreamNetdev(ident, hubid, "socket", False, addr, reconnect)
    if mode == "mcast":
        if not addr.host or not ipaddress.IPv4Address(addr.host).is_multicast:
            raise ConfigError(f"specified mcast address {addr.host or '0.0.0.0'} is not for multicast (mcast=)")
        mcast_if = _ipv4("localaddr", opts["localaddr"]) if "localaddr" in opts else None
        return DgramNetdev(ident, hubid, "socket", addr, None, True, mcast_if)
    if "localaddr" not in opts:
        raise ConfigError("localaddr= is mandatory with udp=")
    if not addr.host:
        raise ConfigError(f"udp= needs a remote host (got '{opts['udp']}')")
    local = parse_host_port("localaddr", opts["localaddr"])
    return DgramNetdev(ident, hubid, "socket", addr, local)


def _socket_address(prefix: str, tree: Any, flat: dict[str, str]) -> SocketAddress:
    """QAPI SocketAddress from keyval: inet (host, port) or unix (path, abstract)."""
    if not isinstance(tree, dict):
        raise ConfigError(f"Parameter '{prefix}' expects an address ({prefix}.type=inet|unix)")
    kind = tree.get("type")
    if kind is None:
        raise ConfigError(f"Parameter '{prefix}.type' is missing")
    allowed: set[str]
    if kind == "inet":
        allowed = {"type", "host", "port", "numeric", "ipv4", "ipv6", "to", "keep-alive", "mptcp"}
    elif kind == "unix":
        allowed = {"type", "path", "abstract", "tight"}
    elif kind == "fd":
        raise ConfigError(f"Parameter '{prefix}.type' value 'fd' is not supported by vmlan")
    else:
        raise ConfigError(f"Parameter '{prefix}.type' does not accept value '{kind}'")
    for key in tree:
        if key not in allowed:
            raise ConfigError(f"Invalid parameter '{prefix}.{key}'")
    # QEMU options vmlan does not implement are refused, never silently ignored.
    refused = [key for key, value in (("to", None), ("mptcp", True), ("tight", False))
               if key in tree and (value is None or parse_bool(f"{prefix}.{key}", tree[key]) is value)]
    if refused:
        key = refused[0]
        raise ConfigError(f"Parameter '{prefix}.{key}' is not supported by vmlan (got '{tree[key]}')")
    if kind == "inet":
        for key in ("host", "port"):
            if key not in tree:
                raise ConfigError(f"Parameter '{prefix}.{key}' is missing")
        if tree.get("ipv6") is not None and parse_bool(f"{prefix}.ipv6", tree["ipv6"]):
            raise ConfigError(f"Parameter '{prefix}.ipv6' is not supported yet (got '{tree['ipv6']}')")
        host = tree["host"]
        keepalive = parse_bool(f"{prefix}.keep-alive", tree.get("keep-alive", "off"))
        return InetAddr(
            _ipv4(f"{prefix}.host", host) if host else "", _parse_port(f"{prefix}.port", tree["port"]), keepalive
        )
    if "path" not in tree or not tree["path"]:
        raise ConfigError(f"Parameter '{prefix}.path' is missing")
    abstract = parse_bool(f"{prefix}.abstract", tree.get("abstract", "off"))
    return UnixAddr(tree["path"], abstract)


def _max_peers(value: object) -> int:
    if value is None:
        return MAX_PEERS_DEFAULT
    if not isinstance(value, str):
        raise ConfigError("Parameter 'max-peers' expects a number")
    return parse_uint("max-peers", value, 1, MAX_PEERS_LIMIT)


def _stream_netdev(tree: dict[str, Any]) -> StreamNetdev:
    flat = flatten(tree)
    known = {"type", "id", "hubid", "addr", "server", "reconnect", "reconnect-ms", "max-peers"}
    _unknown("stream", [k for k in tree if k not in known])
    ident = _netdev_id(flat)
    hubid = _hubid(flat)
    if "addr" not in tree:
        raise ConfigError("Parameter 'addr' is missing")
    addr = _socket_address("addr", tree["addr"], flat)
    server = parse_bool("server", tree.get("server", "off"))
    reconnect_ms = 0
    if "reconnect" in tree:
        reconnect_ms = 1000 * parse_uint("reconnect", tree["reconnect"], 0, 2**31 // 1000)
    if "reconnect-ms" in tree:
        reconnect_ms = parse_uint("reconnect-ms", tree["reconnect-ms"], 0, 2**31 - 1)
    if server and reconnect_ms:
        raise ConfigError("'reconnect' option is incompatible with socket in server mode")
    if "max-peers" in tree and not server:
        raise ConfigError("max-peers= is only valid with server=on")
    if not server and isinstance(addr, InetAddr) and not addr.host:
        addr = InetAddr("127.0.0.1", addr.port)
    return StreamNetdev(ident, hubid, "stream", server, addr, reconnect_ms, _max_peers(tree.get("max-peers")))


def _dgram_netdev(tree: dict[str, Any]) -> DgramNetdev:
    flat = flatten(tree)
    _unknown("dgram", [k for k in tree if k not in {"type", "id", "hubid", "local", "remote"}])
    ident = _netdev_id(flat)
    hubid = _hubid(flat)
    remote = _socket_address("remote", tree["remote"], flat) if "remote" in tree else None
    local = _socket_address("local", tree["local"], flat) if "local" in tree else None
    if remote is None:
        raise ConfigError("dgram requires remote= parameter (vmlan has no fd= to pair with local= alone)")
    if isinstance(remote, InetAddr) and remote.host and ipaddress.IPv4Address(remote.host).is_multicast:
        if local is not None and not isinstance(local, InetAddr):
            raise ConfigError("multicast only support inet type (local.type=unix given)")
        mcast_if = local.host if isinstance(local, InetAddr) and local.host else None
        return DgramNetdev(ident, hubid, "dgram", remote, None, True, mcast_if)
    if local is None:
        raise ConfigError("dgram requires local= parameter")
    if type(local) is not type(remote):
        raise ConfigError("local and remote addresses of a dgram netdev must be of the same type")
    if isinstance(remote, InetAddr) and not remote.host:
        raise ConfigError("Parameter 'remote.host' must name a host")
    return DgramNetdev(ident, hubid, "dgram", remote, local)


def parse_netdev(text: str) -> NetdevConfig:
    """Parse one ``-netdev`` argument; raises ConfigError with a one-line reason."""
    head = text.split(",", 1)[0]
    if text.lstrip().startswith("{"):
        tree = parse_keyval(text)
        head = str(tree.get("type", ""))
    if head.startswith("type="):
        head = head[5:]
    if head in ("stream", "dgram"):
        tree = parse_keyval(text)
        return _stream_netdev(tree) if head == "stream" else _dgram_netdev(tree)
    if head == "socket":
        return _socket_netdev(parse_qemuopts(text))
    if head == "user":
        return parse_user_netdev(parse_qemuopts(text))
    if head == "vde":
        return parse_vde_netdev(parse_qemuopts(text))
    if head == "tap":
        return parse_tap_netdev(parse_qemuopts(text))
    if head == "bridge":
        return parse_bridge_netdev(parse_qemuopts(text))
    if head == "vxlan":
        return parse_vxlan_netdev(parse_qemuopts(text))
    if head in ("l2tpv3", "vhost-user", "vhost-vdpa", "hubport"):
        raise ConfigError(f"netdev type '{head}' is not available in this version of vmlan")
    if not head:
        raise ConfigError("Parameter 'type' is missing")
    raise ConfigError(f"Parameter 'type' does not accept value '{head}'")


def parse_hub(text: str) -> HubConfig:
    """``-hub id=N[,mode=hub|switch][,aging=SECONDS]``."""
    opts = dict(parse_qemuopts(text, implied_key="id"))
    for key in opts:
        if key not in ("id", "mode", "aging"):
            raise ConfigError(f"Invalid parameter '{key}' for -hub")
    if "id" not in opts:
        raise ConfigError("Parameter 'id' is missing")
    hub_id = parse_uint("id", opts["id"], 0, 2**31 - 1)
    mode = opts.get("mode", "hub")
    if mode not in ("hub", "switch"):
        raise ConfigError(f"Parameter 'mode' does not accept value '{mode}' (hub or switch)")
    aging = parse_uint("aging", opts.get("aging", "300"), 1, 86400 * 365)
    return HubConfig(hub_id, mode, aging)


def parse_object(text: str) -> DumpConfig | NetemConfig:
    """``-object filter-dump,...`` or ``-object filter-netem,...``."""
    pairs = parse_qemuopts(text, implied_key="qom-type")
    opts = dict(pairs)
    kind = opts.get("qom-type")
    if kind is None:
        raise ConfigError("Parameter 'qom-type' is missing")
    if kind == "filter-netem":
        return parse_filter_netem(pairs)
    if kind != "filter-dump":
        raise ConfigError(
            f"Parameter 'qom-type' does not accept value '{kind}' (vmlan knows filter-dump, filter-netem)"
        )
    for key in opts:
        if key not in ("qom-type", "id", "netdev", "file", "maxlen", "queue", "status", "position", "insert"):
            raise ConfigError(f"Property 'filter-dump.{key}' not found")
    for key in ("id", "netdev", "file"):
        if key not in opts:
            raise ConfigError(f"Parameter '{key}' is missing")
    ident = check_id(opts["id"], "object")
    maxlen = parse_uint("maxlen", opts.get("maxlen", "65536"), 1, 2**31 - 1)
    queue = opts.get("queue", "all")
    if queue not in ("all", "rx", "tx"):
        raise ConfigError(f"Parameter 'queue' does not accept value '{queue}'")
    return DumpConfig(ident, opts["netdev"], opts["file"], maxlen, queue)
