"""Host interfaces of a privileged network: its Linux bridge, the guests' persistent TAPs, sysctls.

Everything goes over rtnetlink with pyroute2 (no ``ip`` or ``brctl`` commands) and the TUN ioctls,
and happens in the calling thread's network namespace (setns(2) moves one thread; the helper threads
below are started from the caller's thread, so they live in the same namespace).

pyroute2's synchronous API runs an asyncio loop of its own, which cannot run on a thread whose loop
is already running (vmlan's): :func:`off_loop` runs such work on a short-lived thread and waits for it
(a few milliseconds; :mod:`vmlan.io.bridge` does the same), :func:`in_thread` awaits it instead.

The bridge (libvirt's networkStartNetworkVirtual, src/network/bridge_driver.c): created with STP and
forward delay as the XML says (the delay is set before STP is switched on, because the kernel refuses
a delay below 2 s while STP runs and raises it to 2 s itself when STP starts), the XML's MTU, the
XML's MAC set on the bridge itself (libvirt adds a dummy ``virbr0-nic`` TAP with that MAC to pin the
bridge's address; setting the address directly does the same on any kernel since 3.14), the
network's addresses (IPv4 with its broadcast address; IPv6 without duplicate address detection, so
the services can bind them at once), then link up. IPv6 is switched off on a bridge whose network
has no IPv6 (libvirt's networkSetIPv6Sysctls), and router advertisements are ignored on one that has.

:func:`adopt_bridge` configures a bridge that already exists the same way (a restarted daemon taking
back its own bridge, whose addresses and ports stay as they are).

A guest's TAP (libvirt's virNetDevTapCreateInBridgePort): created exclusively (IFF_TUN_EXCL: an
existing interface of that name, TAP or not, is never reused), made persistent (TUNSETPERSIST) and
owned by the guest's user (TUNSETOWNER), so an unprivileged QEMU opens it by name
(``-netdev tap,ifname=vnet0,script=no,downscript=no``) without any privilege; then its MAC (the
guest's with the first byte 0xFE: Linux gives a bridge the lowest MAC of its ports, and a high one
never becomes the bridge's), its MTU, enslaved to the bridge, up.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv6Interface
from typing import Any, TypeVar

from vmlan.config.tap import IFNAMSIZ
from vmlan.io.tap import IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, TUN_DEVICE, TUNSETIFF

__all__ = [
    "BridgeSpec",
    "HostNetError",
    "LinkInfo",
    "adopt_bridge",
    "bridge_ports",
    "create_bridge",
    "create_tap",
    "delete_link",
    "in_thread",
    "link_info",
    "link_names",
    "off_loop",
    "read_sysctl",
    "set_link_up",
    "write_sysctl",
]

T = TypeVar("T")

IFF_TUN_EXCL = 0x8000
TUNSETPERSIST = (1 << 30) | (4 << 16) | (ord("T") << 8) | 203
TUNSETOWNER = (1 << 30) | (4 << 16) | (ord("T") << 8) | 204
_IFREQ = struct.Struct("16sH22x")
IFA_F_NODAD = 0x02
SYSCTL = "/proc/sys/net"


class HostNetError(OSError):
    """An interface could not be created or configured; ``strerror`` says which step and why."""


def _fail(exc: BaseException, what: str) -> HostNetError:
    code = int(getattr(exc, "code", 0) or getattr(exc, "errno", 0) or 0)
    reason = os.strerror(code) if code else str(exc)
    return HostNetError(code or errno.EIO, f"{what}: {reason}")


# -- running pyroute2 away from the event loop -----------------------------------------------------------
def off_loop(fn: Callable[[], T]) -> T:
    """``fn()``, on a helper thread when this thread runs an asyncio loop (pyroute2's sync API needs that)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def work() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    worker = threading.Thread(target=work, name="vmlan-rtnetlink")
    worker.start()
    worker.join()
    if error:
        raise error[0]
    return result[0]


async def in_thread(fn: Callable[[], T]) -> T:
    """``fn()`` on a helper thread started from this one (same network namespace), awaited."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def done(value: T | None, exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(value)  # type: ignore[arg-type]

    def work() -> None:
        try:
            value = fn()
        except BaseException as exc:
            loop.call_soon_threadsafe(done, None, exc)
            return
        loop.call_soon_threadsafe(done, value, None)

    threading.Thread(target=work, name="vmlan-rtnetlink").start()
    return await future


def _ipr() -> Any:
    from pyroute2 import IPRoute  # type: ignore[import-untyped]

    return IPRoute()


# -- links -----------------------------------------------------------------------------------------------
def link_names() -> set[str]:
    """Names of every interface in this namespace."""
    with _ipr() as ipr:
        return {str(link.get("IFLA_IFNAME")) for link in ipr.get_links()}


@dataclass(frozen=True, slots=True)
class LinkInfo:
    index: int
    name: str
    kind: str | None
    mtu: int
    mac: str
    master: int | None
    up: bool


def link_info(name: str) -> LinkInfo | None:
    """What rtnetlink says about ``name``, or None if there is no such interface."""
    with _ipr() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        link = ipr.get_links(found[0])[0]
        master = link.get("IFLA_MASTER")
        return LinkInfo(
            index=int(found[0]),
            name=name,
            kind=link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")),
            mtu=int(link.get("IFLA_MTU") or 0),
            mac=str(link.get("IFLA_ADDRESS") or ""),
            master=int(master) if master else None,
            up=bool(int(link["flags"]) & 1),
        )


def delete_link(name: str) -> bool:
    """Delete the interface ``name``; False if it did not exist."""
    with _ipr() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return False
        try:
            ipr.link("del", index=found[0])
        except Exception as exc:
            if int(getattr(exc, "code", 0) or 0) == errno.ENODEV:
                return False
            raise _fail(exc, f"failed to delete interface '{name}'") from None
    return True


@dataclass(frozen=True, slots=True)
class BridgeSpec:
    """A bridge to create: ``addresses`` are interfaces such as ``IPv4Interface("192.168.122.1/24")``."""

    name: str
    stp: bool = True
    delay: int = 0  # seconds
    mtu: int | None = None
    mac: str | None = None
    addresses: Sequence[IPv4Interface | IPv6Interface] = ()
    ipv6: bool = False  # guests may use IPv6 (the network has IPv6 addresses or ipv6='yes')


def adopt_bridge(spec: BridgeSpec) -> int:
    """Configure an existing bridge (one vmlan made before it was restarted) as ``spec`` says; its ifindex.

    Addresses it already has are kept; its ports are left alone.
    """
    with _ipr() as ipr:
        found = ipr.link_lookup(ifname=spec.name)
        if not found:
            raise HostNetError(errno.ENODEV, f"bridge {spec.name} does not exist")
        index = int(found[0])
        _configure_bridge(ipr, index, spec, existing=True)
    return index


def bridge_ports(bridge: str) -> list[LinkInfo]:
    """The interfaces enslaved to ``bridge``."""
    with _ipr() as ipr:
        found = ipr.link_lookup(ifname=bridge)
        if not found:
            return []
        index = int(found[0])
        names = [str(link.get("IFLA_IFNAME")) for link in ipr.get_links() if link.get("IFLA_MASTER") == index]
    return [info for info in (link_info(name) for name in names) if info is not None]


def set_link_up(name: str, up: bool) -> None:
    """Bring ``name`` up or down."""
    with _ipr() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise HostNetError(errno.ENODEV, f"interface {name} does not exist")
        try:
            ipr.link("set", index=found[0], state="up" if up else "down")
        except Exception as exc:
            raise _fail(exc, f"Unable to bring {'up' if up else 'down'} {name}") from None


def create_bridge(spec: BridgeSpec) -> int:
    """Create, configure and bring up the bridge; its ifindex. On failure nothing is left behind."""
    if len(spec.name.encode()) >= IFNAMSIZ:
        raise HostNetError(errno.EINVAL, f"bridge name '{spec.name}' is longer than {IFNAMSIZ - 1} bytes")
    with _ipr() as ipr:
        try:
            ipr.link("add", ifname=spec.name, kind="bridge")
        except Exception as exc:
            raise _fail(exc, f"Unable to create bridge {spec.name}") from None
        try:
            index = int(ipr.link_lookup(ifname=spec.name)[0])
            _configure_bridge(ipr, index, spec)
        except BaseException:
            with contextlib.suppress(Exception):
                ipr.link("del", ifname=spec.name)
            raise
    return index


def _configure_bridge(ipr: Any, index: int, spec: BridgeSpec, existing: bool = False) -> None:
    name = spec.name
    # USER_HZ centiseconds; the delay goes first (see the module docstring)
    steps: list[tuple[str, dict[str, object]]] = [
        (f"Unable to set forward delay of bridge {name}", {"kind": "bridge", "br_forward_delay": spec.delay * 100}),
        (f"Unable to set STP on bridge {name}", {"kind": "bridge", "br_stp_state": int(spec.stp)}),
    ]
    if spec.mtu:
        steps.append((f"Unable to set MTU {spec.mtu} on bridge {name}", {"mtu": spec.mtu}))
    if spec.mac:
        steps.append((f"Unable to set MAC address {spec.mac} on bridge {name}", {"address": spec.mac}))
    for what, attrs in steps:
        try:
            ipr.link("set", index=index, **attrs)
        except Exception as exc:
            if existing and "br_forward_delay" in attrs and int(getattr(exc, "code", 0) or 0) == errno.ERANGE:
                continue  # STP already runs: the kernel keeps the delay at 2 s or more, as it did when we made it
            raise _fail(exc, what) from None
    _bridge_ipv6_sysctls(name, spec.ipv6)
    for addr in spec.addresses:
        extra: dict[str, object] = {}
        if addr.version == 4:
            extra["broadcast"] = str(addr.network.broadcast_address)
        else:
            extra["flags"] = IFA_F_NODAD
        try:
            ipr.addr("add", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen, **extra)
        except Exception as exc:
            if existing and int(getattr(exc, "code", 0) or 0) == errno.EEXIST:
                continue
            raise _fail(exc, f"Unable to add address {addr} to bridge {name}") from None
    try:
        ipr.link("set", index=index, state="up")
    except Exception as exc:
        raise _fail(exc, f"Unable to bring up bridge {name}") from None


def _bridge_ipv6_sysctls(name: str, ipv6: bool) -> None:
    base = f"ipv6/conf/{name}"
    if not os.path.isdir(f"{SYSCTL}/{base}"):
        return  # IPv6 disabled in this kernel
    settings = {"disable_ipv6": "0", "accept_ra": "0", "autoconf": "0"} if ipv6 else {"disable_ipv6": "1"}
    for key, value in settings.items():
        try:
            write_sysctl(f"{base}/{key}", value)
        except OSError as exc:
            raise _fail(exc, f"cannot set {key} on bridge {name}") from None


# -- TAPs ------------------------------------------------------------------------------------------------
def create_tap(name: str, *, owner_uid: int | None, mac: str, bridge: str, mtu: int | None = None,
               up: bool = True) -> None:
    """Create the persistent TAP ``name`` for a guest and put it on ``bridge``.

    Raises HostNetError; errno EBUSY when an interface of that name exists already (try the next
    name). ``mtu`` None: the bridge's. On failure nothing is left behind.
    """
    raw = name.encode("utf-8", "surrogateescape")
    if not raw or len(raw) >= IFNAMSIZ or "%" in name:
        raise HostNetError(errno.EINVAL, f"invalid TAP name '{name}'")
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise HostNetError(exc.errno or errno.EIO, f"could not open {TUN_DEVICE}: {exc.strerror}") from None
    try:
        req = bytearray(_IFREQ.pack(raw, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_TUN_EXCL))
        try:
            fcntl.ioctl(fd, TUNSETIFF, req)
        except OSError as exc:
            raise HostNetError(exc.errno or errno.EIO, f"Unable to create tap device {name}: {exc.strerror}") from None
        try:
            if owner_uid is not None and owner_uid >= 0:
                fcntl.ioctl(fd, TUNSETOWNER, owner_uid)
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
        except OSError as exc:
            raise HostNetError(exc.errno or errno.EIO, f"Unable to set up tap device {name}: {exc.strerror}") from None
    finally:
        os.close(fd)  # a TAP that did not become persistent goes with this descriptor
    try:
        _tap_on_bridge(name, mac, bridge, mtu, up)
    except BaseException:
        with contextlib.suppress(Exception):
            delete_link(name)
        raise


def _tap_on_bridge(name: str, mac: str, bridge: str, mtu: int | None, up: bool) -> None:
    with _ipr() as ipr:
        found = ipr.link_lookup(ifname=bridge)
        if not found:
            raise HostNetError(errno.ENODEV, f"bridge {bridge} does not exist")
        br_index = int(found[0])
        if mtu is None:
            mtu = int(ipr.get_links(br_index)[0].get("IFLA_MTU"))
        tap = ipr.link_lookup(ifname=name)
        if not tap:
            raise HostNetError(errno.ENODEV, f"tap device {name} vanished")
        index = int(tap[0])
        steps: list[tuple[str, dict[str, object]]] = [
            (f"Unable to set MAC address {mac} on {name}", {"address": mac}),
            (f"Unable to set MTU {mtu} on {name}", {"mtu": mtu}),
            (f"Unable to add bridge {bridge} port {name}", {"master": br_index}),
        ]
        if up:
            steps.append((f"Unable to bring up {name}", {"state": "up"}))
        for what, attrs in steps:
            try:
                ipr.link("set", index=index, **attrs)
            except Exception as exc:
                raise _fail(exc, what) from None


# -- sysctls ---------------------------------------------------------------------------------------------
def read_sysctl(key: str) -> str:
    """``/proc/sys/net/<key>`` of the calling thread's network namespace (e.g. ``ipv4/ip_forward``)."""
    with open(f"{SYSCTL}/{key}") as fh:
        return fh.read().strip()


def write_sysctl(key: str, value: str) -> None:
    with open(f"{SYSCTL}/{key}", "w") as fh:
        fh.write(value)
