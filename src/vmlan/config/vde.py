"""``-netdev vde`` (Virtual Distributed Ethernet), validated into a frozen :class:`VdeNetdev`.

Input is the QemuOpts pairs of ``-netdev vde,...`` (:func:`vmlan.config.qemuopts.parse_qemuopts`).

QEMU's options (qapi/net.json NetdevVdeOptions, net/vde.c): ``sock=DIR`` (the switch's control
directory; without it libvdeplug tries /var/run/vde.ctl, then /tmp/vde.ctl), ``port=N`` (uint16: the
switch port to ask for, 0 = any), ``group=G`` (group of the client's data socket), ``mode=M`` (its
permissions; QEMU reads numbers with base 0, so write ``mode=0700``; default 0700).

vmlan's additions
    ``server=on``      serve DIR/ctl itself, as ``vde_switch -s DIR`` does, so that ``vde_plug DIR`` and
                       QEMU's ``-netdev vde,sock=DIR`` attach to vmlan's hub; every client is a port.
                       ``mode`` is then the permission of ctl and of the data sockets (default 0600, as
                       vde_switch's), the directory gets vde_switch's derived mode (02700 by default),
                       ``group`` is their group. ``port=`` is meaningless there and refused.
    ``max-peers=N``    (server) how many clients at once, 1..1024; default 32, vde_switch's port count.
                       Clients asking for a port number get it if it is free and at most N.
    ``reconnect-ms=N`` (client) redial the switch every N ms while it is away; without it a switch that
                       cannot be reached at startup is an error and one that goes away leaves the link
                       down (logged).
    ``hubid=N``        the hub to join (default 0), as on every vmlan netdev.
"""

from __future__ import annotations

import grp
from dataclasses import dataclass
from typing import ClassVar

from vmlan.config.errors import ConfigError
from vmlan.config.qemuopts import check_id, collect_netdev_opts, parse_bool, parse_uint

__all__ = ["DEFAULT_CLIENT_MODE", "DEFAULT_MAX_PEERS", "DEFAULT_SERVER_MODE", "VdeNetdev", "parse_vde_netdev"]

DEFAULT_CLIENT_MODE = 0o700  # net/vde.c: vde->has_mode ? vde->mode : 0700
DEFAULT_SERVER_MODE = 0o600  # vde_switch datasock.c: ctl and data sockets -rw-------
DEFAULT_MAX_PEERS = 32  # vde_switch's default number of ports
MAX_PEERS_LIMIT = 1024
SUN_PATH_MAX = 108  # struct sockaddr_un.sun_path; the server's data sockets add "/NNN.FD" (up to 16 more)
_KEYS = frozenset({"type", "id", "hubid", "sock", "port", "group", "mode", "server", "max-peers", "reconnect-ms"})


@dataclass(frozen=True, slots=True)
class VdeNetdev:
    """A validated ``-netdev vde``: a client of a VDE switch at ``sock``, or (``server``) a switch itself."""

    driver: ClassVar[str] = "vde"

    id: str
    hubid: int = 0
    sock: str = ""  # the control directory; "" (client only) = libvdeplug's default switch
    server: bool = False
    port: int = 0  # client: the switch port requested (0 = any)
    group: str | None = None  # as given (a name or a number)
    gid: int | None = None  # ``group`` resolved
    mode: int = DEFAULT_CLIENT_MODE
    max_peers: int = DEFAULT_MAX_PEERS
    reconnect_ms: int = 0

    @property
    def info(self) -> str:
        """What ``info network`` shows after ``type=vde,`` (QEMU: ``sock=%s,fd=%d`` once connected)."""
        if self.server:
            return f"sock={self.sock},server=on"
        return f"sock={self.sock or 'default switch'}" + (f",port={self.port}" if self.port else "")


def _gid(value: str) -> int:
    """libvdeplug: getgrnam(group), else atoi(group); vde_switch refuses an unknown name."""
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        pass
    if value.isdigit():
        return int(value)
    raise ConfigError(f"Parameter 'group': no such group '{value}'")


def parse_vde_netdev(pairs: list[tuple[str, str]]) -> VdeNetdev:
    """Validate the QemuOpts pairs of ``-netdev vde,...``; raises ConfigError with a one-line reason."""
    opts = collect_netdev_opts("vde", pairs, _KEYS)
    ident = check_id(opts["id"], "netdev")
    hubid = parse_uint("hubid", opts.get("hubid", "0"), 0, 2**31 - 1)
    server = parse_bool("server", opts.get("server", "off"))
    sock = opts.get("sock", "")
    if "\0" in sock:
        raise ConfigError("Parameter 'sock' must not contain a NUL character")
    if server and not sock:
        raise ConfigError("Parameter 'sock' is missing (server=on serves the control directory sock=DIR)")
    if len(sock.encode()) + len("/ctl") >= SUN_PATH_MAX:
        raise ConfigError(f"Parameter 'sock' is too long for a unix socket path (got '{sock}')")
    mode_default = DEFAULT_SERVER_MODE if server else DEFAULT_CLIENT_MODE
    mode = parse_uint("mode", opts["mode"], 0, 0o7777) if "mode" in opts else mode_default
    group = opts.get("group")
    if group == "":
        raise ConfigError("Parameter 'group' must name a group (got '')")
    gid = _gid(group) if group is not None else None
    if server:
        for key in ("port", "reconnect-ms"):
            if key in opts:
                raise ConfigError(f"Parameter '{key}' is only valid without server=on")
        max_peers = parse_uint("max-peers", opts.get("max-peers", str(DEFAULT_MAX_PEERS)), 1, MAX_PEERS_LIMIT)
        if len(sock.encode()) + len("/0000.00000") >= SUN_PATH_MAX:
            raise ConfigError(f"Parameter 'sock' is too long for the data socket paths (got '{sock}')")
        return VdeNetdev(ident, hubid, sock, True, 0, group, gid, mode, max_peers)
    if "max-peers" in opts:
        raise ConfigError("Parameter 'max-peers' is only valid with server=on")
    port = parse_uint("port", opts.get("port", "0"), 0, 0xFFFF)
    reconnect = parse_uint("reconnect-ms", opts.get("reconnect-ms", "0"), 0, 2**31 - 1)
    return VdeNetdev(ident, hubid, sock, False, port, group, gid, mode, DEFAULT_MAX_PEERS, reconnect)
