"""Interfaces -> QEMU arguments, as libvirt 9.0.0's QEMU driver builds them (src/qemu/qemu_command.c
qemuBuildHostNetProps, qemuBuildNicDevProps, qemuBuildInterfaceCommandLine), in the QemuOpts form of
its golden files (tests/qemuxml2argvdata/net-*.args) rather than the JSON form newer QEMUs get.

For interface N (0-based, in document order) libvirt emits::

    -netdev TYPE,OPTIONS,id=hostnetN
    -device MODEL,netdev=hostnetN,id=netN,mac=MAC[,bootindex=B]

with a ``ua-`` alias replacing ``netN`` (and ``hostnetN`` becoming ``host`` + alias). Per type:
server ``socket,listen=ADDR:PORT`` (``:PORT`` without an address), client ``socket,connect=``, mcast
``socket,mcast=``, udp ``socket,udp=R:rp,localaddr=L:lp``, user ``user`` plus ``net=A/P`` and
``ipv6-prefix=``/``ipv6-prefixlen=`` from ``<ip>``. network, bridge and ethernet get ``tap,fd=N`` in
libvirt (it opens the tap itself); vmlan attaches them to its own links instead, so their ``-netdev``
value comes from a :data:`Resolver`. The default resolver raises :class:`NeedsNetworkError`;
:func:`tap_fd_resolver` reproduces libvirt's own ``tap,fd=N`` for comparisons with its golden files.

vmlan additions and choices
    ``<portForward>`` on user becomes ``hostfwd=PROTO:[ADDR]:HOSTPORT-:GUESTPORT``, one per forwarded
    port after excluded ranges are taken out (at most :data:`MAX_HOSTFWD` per interface; IPv6 addresses,
    ``dev=`` and "every port" are refused: QEMU's hostfwd cannot say them). ``<mtu>`` on user becomes
    vmlan's ``mtu=`` option. Default model: rtl8139, libvirt 9.0.0's for x86 when QEMU has it
    (qemuDomainDefaultNetModel); ``default_model`` changes it. virtio models map to virtio-net-pci
    (-transitional / -non-transitional); ``<mtu>`` on a virtio NIC adds ``host_mtu=``. ``<link
    state='down'>`` is not an argument: libvirt applies it with QMP set_link after start, and so will
    the daemon. type null gets a ``-device`` without ``netdev=`` (a NIC with nothing behind it; libvirt's
    QEMU driver has no code path for null). No ``bus=``/``addr=``: PCI placement is left to QEMU.
"""

from __future__ import annotations

import itertools
import shlex
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from vmlan.config.libvirt.errors import NeedsNetworkError, NotSupportedByVmlanError
from vmlan.config.libvirt.interface import Interface, PortForward

DEFAULT_MODEL: Final = "rtl8139"
MAX_HOSTFWD: Final = 1024

_VIRTIO_DEVICES = {
    "virtio": "virtio-net-pci",
    "virtio-transitional": "virtio-net-pci-transitional",
    "virtio-non-transitional": "virtio-net-pci-non-transitional",
}

def escape(value: str) -> str:
    """QemuOpts reads ',,' as a literal comma (as vmlan.config.qemu_args.escape; kept here so this pure
    package does not import the netdev layer)."""
    return value.replace(",", ",,")


Resolver = Callable[[Interface, int], str]
"""``resolver(interface, index)`` -> the ``-netdev`` value (without ``id=``) for network/bridge/ethernet."""


def no_network_resolver(net: Interface, index: int) -> str:
    """The default: refuse, since only a running daemon knows which link such an interface joins."""
    what = {"network": f" (network '{net.network}')", "bridge": f" (bridge '{net.bridge}')"}.get(net.type, "")
    raise NeedsNetworkError(
        f"interface {index} of type '{net.type}'{what} needs a running network: no resolver attaches it"
    )


def tap_fd_resolver(first_fd: int = 3) -> Resolver:
    """libvirt's own answer, ``tap,fd=N`` with N counting up from ``first_fd`` (its test files use 3)."""
    fds = itertools.count(first_fd)

    def resolve(net: Interface, index: int) -> str:
        return f"tap,fd={next(fds)}"

    return resolve


def device_ids(net: Interface, index: int) -> tuple[str, str]:
    """(netdev id, device id): hostnetN/netN, or host<alias>/<alias> for a user alias."""
    alias = net.alias or f"net{index}"
    return f"host{alias}", alias


def _hostfwds(pf: PortForward, index: int) -> list[str]:
    if not pf.ranges:
        raise NotSupportedByVmlanError(
            f"interface {index}: <portForward proto='{pf.proto}'> without <range> (every port) cannot be "
            "a hostfwd rule"
        )
    if pf.dev is not None:
        raise NotSupportedByVmlanError(f"interface {index}: <portForward dev='{pf.dev}'> is not supported by vmlan")
    if pf.address is not None and pf.address.version != 4:
        raise NotSupportedByVmlanError(
            f"interface {index}: <portForward address='{pf.address}'> is IPv6; vmlan's hostfwd is IPv4 only"
        )
    excluded: set[int] = set()
    for r in pf.ranges:
        if r.exclude:
            excluded.update(r.host_ports())
    host = "" if pf.address is None else str(pf.address)
    rules: list[str] = []
    seen: set[int] = set()
    for r in pf.ranges:
        if r.exclude:
            continue
        for port in r.host_ports():
            if port in excluded or port in seen:
                continue
            seen.add(port)
            if len(rules) >= MAX_HOSTFWD:
                raise NotSupportedByVmlanError(
                    f"interface {index}: <portForward> forwards more than {MAX_HOSTFWD} ports"
                )
            rules.append(f"hostfwd={pf.proto}:{host}:{port}-:{r.guest_port(port)}")
    return rules


def netdev_value(net: Interface, index: int, resolver: Resolver = no_network_resolver) -> str | None:
    """The ``-netdev`` argument for ``net`` (None for type null, which has no backend)."""
    netdev_id, _ = device_ids(net, index)
    sock = net.socket
    if net.type in ("network", "bridge", "ethernet"):
        body = resolver(net, index)
    elif net.type == "server":
        assert sock is not None
        body = f"socket,listen={escape(sock.address or '')}:{sock.port}"
    elif net.type == "client":
        assert sock is not None and sock.address is not None
        body = f"socket,connect={escape(sock.address)}:{sock.port}"
    elif net.type == "mcast":
        assert sock is not None and sock.address is not None
        body = f"socket,mcast={escape(sock.address)}:{sock.port}"
    elif net.type == "udp":
        assert sock is not None and sock.address is not None and sock.local_address is not None
        body = (f"socket,udp={escape(sock.address)}:{sock.port},"
                f"localaddr={escape(sock.local_address)}:{sock.local_port}")
    elif net.type == "user":
        parts = ["user"]
        for ip in net.ips:
            if ip.address.version == 4:
                parts.append(f"net={ip.address}/{ip.prefix}" if ip.prefix else f"net={ip.address}")
            else:
                parts.append(f"ipv6-prefix={ip.address}")
                if ip.prefix:
                    parts.append(f"ipv6-prefixlen={ip.prefix}")
        if net.mtu is not None:
            parts.append(f"mtu={net.mtu}")
        for pf in net.port_forwards:
            parts.extend(_hostfwds(pf, index))
        body = ",".join(parts)
    else:
        assert net.type == "null", net.type
        return None
    return f"{body},id={netdev_id}"


def device_value(net: Interface, index: int, default_model: str = DEFAULT_MODEL) -> str:
    """The ``-device`` argument for ``net``'s NIC."""
    netdev_id, dev_id = device_ids(net, index)
    model = net.model or default_model
    parts = [_VIRTIO_DEVICES.get(model, model)]
    if model in _VIRTIO_DEVICES and net.mtu is not None:
        parts.append(f"host_mtu={net.mtu}")
    if net.type != "null":
        parts.append(f"netdev={netdev_id}")
    parts += [f"id={dev_id}", f"mac={net.mac}"]
    if net.boot_order is not None:
        parts.append(f"bootindex={net.boot_order}")
    return ",".join(parts)


def qemu_args(interfaces: Iterable[Interface], resolver: Resolver = no_network_resolver,
              default_model: str = DEFAULT_MODEL) -> list[str]:
    """The argv fragment for every interface, in order (``-netdev V -device V`` pairs)."""
    argv: list[str] = []
    for index, net in enumerate(interfaces):
        netdev = netdev_value(net, index, resolver)
        if netdev is not None:
            argv += ["-netdev", netdev]
        argv += ["-device", device_value(net, index, default_model)]
    return argv


_SHELL_SPECIAL = frozenset("\r\t\n !\"#$&'()*;<>?[\\]^`{|}~")


def shell_quote(arg: str) -> str:
    """virBufferEscapeShell: quote only when a shell metacharacter is present."""
    if not arg:
        return "''"
    if not set(arg) & _SHELL_SPECIAL:
        return arg
    return "'" + arg.replace("'", "'\\''") + "'"


def format_args(argv: Sequence[str]) -> str:
    """libvirt's .args layout: each option with its value on one line, `` \\`` continuing all but the last."""
    lines: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i].startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            lines.append(f"{shell_quote(argv[i])} {shell_quote(argv[i + 1])}")
            i += 2
        else:
            lines.append(shell_quote(argv[i]))
            i += 1
    return "".join(line + (" \\\n" if n < len(lines) - 1 else "\n") for n, line in enumerate(lines))


def parse_args(text: str) -> list[str]:
    """The inverse of :func:`format_args` (shell words, continuations joined)."""
    return shlex.split(text.replace("\\\n", ""))  # a shell drops backslash-newline before splitting
