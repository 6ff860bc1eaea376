"""``-netdev tap`` and ``-netdev bridge``, validated into frozen :class:`TapNetdev` / :class:`BridgeNetdev`.

Input is the QemuOpts pairs of the option (:func:`vmlan.config.qemuopts.parse_qemuopts`). Option
names, defaults and wording follow QEMU 7.2 (qapi/net.json NetdevTapOptions/NetdevBridgeOptions,
net/tap.c, net/tap-linux.c).

``-netdev tap,id=ID[,ifname=NAME][,script=PATH|no][,downscript=PATH|no][,fd=N][,vnet_hdr=on|off]``
    ``ifname`` is the interface to create or attach to (a persistent one, or a kernel template such as
    ``vm%d``); default ``tap%d``. ``script``/``downscript`` run with the interface name as their only
    argument after the interface is opened / before it is closed; ``no`` or empty disables them.
    Defaults: /etc/vmlan-ifup and /etc/vmlan-ifdown, run *only if they exist* (QEMU fails when its
    default /etc/qemu-ifup is missing; nobody ships vmlan's, so a plain ``-netdev tap,id=t0`` would
    always fail). A script named explicitly must exist. ``fd=N`` uses an inherited TAP descriptor and
    excludes ifname/script/downscript/vnet_hdr, as QEMU does. ``vnet_hdr`` unset means "use virtio-net
    headers (and with them the kernel's checksum and segmentation offloads) when the kernel offers
    them", ``on`` requires them, ``off`` never uses them; with ``fd=`` the descriptor's own flag decides.

``-netdev bridge,id=ID[,br=NAME][,helper=PATH]``
    Attach to the Linux bridge ``br`` (default br0). Without ``helper`` vmlan creates the TAP itself
    (root or CAP_NET_ADMIN), after checking /etc/vmlan/bridge.conf (QEMU's bridge.conf syntax). With
    ``helper`` it runs that program as QEMU runs qemu-bridge-helper (``--use-vnet --fd=N --br=BR``; a
    helper containing spaces or tabs is run with ``sh -c``) and takes the TAP descriptor it passes back;
    the helper applies its own ACL.

Both take vmlan's ``hubid=N`` (default 0). QEMU's other tap options (sndbuf, queues, fds, vhost,
vhostfd(s), vhostforce, poll-us, helper on tap, br on tap) are refused with a message, never ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vmlan.config.errors import ConfigError
from vmlan.config.qemuopts import check_id, collect_netdev_opts, parse_bool, parse_uint

__all__ = [
    "DEFAULT_BRIDGE",
    "DEFAULT_DOWNSCRIPT",
    "DEFAULT_SCRIPT",
    "IFNAMSIZ",
    "BridgeNetdev",
    "TapNetdev",
    "check_ifname",
    "parse_bridge_netdev",
    "parse_tap_netdev",
]

DEFAULT_SCRIPT = "/etc/vmlan-ifup"
DEFAULT_DOWNSCRIPT = "/etc/vmlan-ifdown"
DEFAULT_BRIDGE = "br0"  # QEMU's DEFAULT_BRIDGE_INTERFACE
IFNAMSIZ = 16  # include/uapi/linux/if.h: names are at most 15 bytes

_TAP_KEYS = frozenset({"type", "id", "hubid", "ifname", "script", "downscript", "fd", "vnet_hdr"})
_BRIDGE_KEYS = frozenset({"type", "id", "hubid", "br", "helper"})
_QEMU_ONLY = frozenset(
    {"sndbuf", "queues", "fds", "vhost", "vhostfd", "vhostfds", "vhostforce", "poll-us", "helper", "br"}
)


@dataclass(frozen=True, slots=True)
class TapNetdev:
    """A validated ``-netdev tap``.

    ``script``/``downscript`` are paths, or "" when disabled; ``*_required`` is False for the defaults,
    which run only if they exist. ``vnet_hdr`` None means "if the kernel offers it".
    """

    driver: ClassVar[str] = "tap"

    id: str
    hubid: int = 0
    ifname: str = ""
    script: str = DEFAULT_SCRIPT
    script_required: bool = False
    downscript: str = DEFAULT_DOWNSCRIPT
    downscript_required: bool = False
    fd: int | None = None
    vnet_hdr: bool | None = None

    @property
    def info(self) -> str:
        """QEMU's info string before the interface exists (``ifname=%s,script=%s,downscript=%s`` / ``fd=%d``)."""
        if self.fd is not None:
            return f"fd={self.fd}"
        return f"ifname={self.ifname or 'tap%d'},script={self.script or 'no'},downscript={self.downscript or 'no'}"


@dataclass(frozen=True, slots=True)
class BridgeNetdev:
    """A validated ``-netdev bridge``; ``helper`` "" means vmlan sets the TAP up itself."""

    driver: ClassVar[str] = "bridge"

    id: str
    hubid: int = 0
    br: str = DEFAULT_BRIDGE
    helper: str = ""

    @property
    def info(self) -> str:
        return f"helper={self.helper or 'builtin'},br={self.br}"


def check_ifname(key: str, value: str) -> str:
    """Linux's dev_valid_name: 1..15 bytes, not ``.``/``..``, no '/', ':' or white space."""
    raw = value.encode("utf-8", "surrogateescape")
    if (
        not raw
        or len(raw) >= IFNAMSIZ
        or value in (".", "..")
        or any(c in value for c in "/:\0")
        or any(c.isspace() for c in value)
    ):
        raise ConfigError(
            f"Parameter '{key}' expects a network interface name (1 to {IFNAMSIZ - 1} bytes, no '/', ':' "
            f"or spaces; got '{value}')"
        )
    return value


def _script(key: str, opts: dict[str, str], default: str) -> tuple[str, bool]:
    """(path or "" for none, whether it must exist)."""
    if key not in opts:
        return default, False
    value = opts[key]
    if value in ("", "no"):
        return "", False
    if "\0" in value:
        raise ConfigError(f"Parameter '{key}' must not contain a NUL character")
    return value, True


def parse_tap_netdev(pairs: list[tuple[str, str]]) -> TapNetdev:
    """Validate the QemuOpts pairs of ``-netdev tap,...``; raises ConfigError with a one-line reason."""
    opts = collect_netdev_opts("tap", pairs, _TAP_KEYS, _QEMU_ONLY)
    ident = check_id(opts["id"], "netdev")
    hubid = parse_uint("hubid", opts.get("hubid", "0"), 0, 2**31 - 1)
    if "fd" in opts:
        if any(k in opts for k in ("ifname", "script", "downscript", "vnet_hdr")):
            # QEMU's words (net/tap.c), options vmlan refuses anyway included.
            raise ConfigError(
                "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, fds=, and vhostfds= are invalid with fd="
            )
        value = opts["fd"]
        if not value.isdigit():
            raise ConfigError(f"Parameter 'fd' expects a file descriptor number (got '{value}')")
        fd = parse_uint("fd", value, 0, 2**31 - 1)
        return TapNetdev(ident, hubid, "", "", False, "", False, fd, None)
    ifname = check_ifname("ifname", opts["ifname"]) if "ifname" in opts else ""
    if ifname.count("%") > 1 or ("%" in ifname and "%d" not in ifname):
        raise ConfigError(f"Parameter 'ifname' may hold one '%d' template and no other '%' (got '{ifname}')")
    script, script_required = _script("script", opts, DEFAULT_SCRIPT)
    downscript, downscript_required = _script("downscript", opts, DEFAULT_DOWNSCRIPT)
    vnet_hdr = parse_bool("vnet_hdr", opts["vnet_hdr"]) if "vnet_hdr" in opts else None
    return TapNetdev(ident, hubid, ifname, script, script_required, downscript, downscript_required, None, vnet_hdr)


def parse_bridge_netdev(pairs: list[tuple[str, str]]) -> BridgeNetdev:
    """Validate the QemuOpts pairs of ``-netdev bridge,...``; raises ConfigError with a one-line reason."""
    opts = collect_netdev_opts("bridge", pairs, _BRIDGE_KEYS, _QEMU_ONLY)
    ident = check_id(opts["id"], "netdev")
    hubid = parse_uint("hubid", opts.get("hubid", "0"), 0, 2**31 - 1)
    br = check_ifname("br", opts.get("br", DEFAULT_BRIDGE))
    helper = opts.get("helper", "")
    if "helper" in opts and not helper.strip():
        raise ConfigError("Parameter 'helper' must name a program (got '')")
    if "\0" in helper:
        raise ConfigError("Parameter 'helper' must not contain a NUL character")
    return BridgeNetdev(ident, hubid, br, helper)
