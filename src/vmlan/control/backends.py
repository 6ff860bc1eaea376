"""The contract between the daemon core and the backends that run networks (/work/team/daemon-interface.md).

A defined network (:class:`vmlan.config.libvirt.Network`) is started by one backend, chosen per network
when it is defined (``net-define --mode=auto|rootless|privileged``; auto: privileged when available,
else rootless):

- :class:`vmlan.control.rootless.RootlessBackend`: a vmlan switch whose router is the user-mode stack;
  guests attach by unix stream sockets. Needs no privilege at all.
- ``vmlan.control.privileged.PrivilegedBackend``: a Linux bridge, vnetN taps and nftables, as libvirt.

The daemon gives a backend a :class:`NetworkContext`; the backend returns a :class:`RunningNetwork`.
Everything runs on the daemon's one event loop; no method may block on the network. Errors a user
caused (a bad rule, a name in use) are :class:`BackendError` with a one-line message; the API turns
them into 4xx answers.

Optional capabilities (checked with ``isinstance`` on the running network; the rootless backend has
them all, a privileged one may add any): :class:`Forwarding` (port forwards at run time),
:class:`DnsRecords` (static names), :class:`LinkControl` (set_link on one attachment),
:class:`Restorable` (re-attach guests after a daemon restart in the same boot), :class:`Monitor`
(QEMU-style monitor text and the MAC table).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from vmlan.config.libvirt import Interface, Network

if TYPE_CHECKING:
    from vmlan.io.runtime import Runtime

__all__ = [
    "AttachResult",
    "BackendError",
    "DnsRecords",
    "EventSink",
    "ForwardRule",
    "Forwarding",
    "LeaseRecord",
    "LeaseStore",
    "LinkControl",
    "Monitor",
    "NetworkBackend",
    "NetworkContext",
    "Restorable",
    "RunningNetwork",
]


class BackendError(Exception):
    """Something a backend refuses or cannot do, in one line (shown to the user after "error: ")."""


@dataclass(frozen=True)
class LeaseRecord:
    """A DHCP lease as the daemon keeps it: ``expires`` is wall-clock seconds (time.time())."""

    mac: str
    ip: str
    hostname: str | None
    expires: float
    client_id: str | None = None


class LeaseStore(Protocol):
    """Where leases survive the daemon (SQLite, committed before the call returns)."""

    def persist(self, network: str, lease: LeaseRecord) -> None: ...

    def persist_many(self, network: str, leases: list[LeaseRecord], gone: list[str]) -> None: ...

    def load(self, network: str) -> list[LeaseRecord]: ...


EventSink = Callable[[str, dict[str, object]], None]
"""``events(kind, data)``: kinds ``guest-connected``, ``guest-left``, ``lease-granted``, ``lease-expired``,
``link-up``, ``link-down``, ``network-started``, ``network-stopped``; ``data`` is JSON-able and always
has ``network``."""


@dataclass
class NetworkContext:
    """What the daemon gives a backend when it starts a network."""

    loop: asyncio.AbstractEventLoop
    runtime: Runtime  # the links registry: runtime.add(netdev_cfg), runtime.remove(id)
    state_dir: Path  # per-daemon state directory (files)
    leases: LeaseStore
    events: EventSink
    runtime_dir: Path = field(default=Path("/run/vmlan"))  # sockets go here (tmpfs: gone at reboot)
    boot_id: str = ""  # the kernel's boot id, for state that only means something in the same boot


@dataclass(frozen=True)
class AttachResult:
    """One guest interface set up. ``netdev`` is the ``-netdev`` value WITHOUT ``id=`` (e.g.
    ``tap,ifname=vnet0,script=no,downscript=no`` or ``stream,server=on,addr.type=unix,addr.path=...``);
    ``target`` the assigned target name (vnet0) or socket id, for detach and ``<target dev>``."""

    netdev: str
    target: str


@dataclass(frozen=True)
class ForwardRule:
    """A host port forwarded into the network (QEMU's hostfwd): ``host_addr`` "" is any address,
    ``host_port`` 0 lets the kernel choose (``bound_port`` then says which), ``guest_addr`` a guest's IPv4."""

    proto: str  # "tcp" | "udp"
    host_addr: str
    host_port: int
    guest_addr: str
    guest_port: int
    bound_port: int = 0


class RunningNetwork(Protocol):
    name: str
    mode: str  # "rootless" or "privileged"
    bridge: str | None  # the Linux bridge (privileged) or None

    def attach(self, iface: Interface, owner_uid: int) -> AttachResult: ...

    def detach(self, target: str) -> None: ...

    def leases(self) -> list[LeaseRecord]: ...

    def info(self) -> dict[str, object]: ...  # JSON-able status (counters, ports)

    async def stop(self) -> None: ...  # everything removed


class NetworkBackend(Protocol):
    mode: str

    def available(self) -> bool: ...  # privileged: root/CAP_NET_ADMIN and nft present

    async def start(self, net: Network, ctx: NetworkContext) -> RunningNetwork: ...


@runtime_checkable
class Forwarding(Protocol):
    def forwards(self) -> list[ForwardRule]: ...

    def add_forward(self, rule: ForwardRule) -> ForwardRule: ...  # returns it with bound_port set

    def remove_forward(self, proto: str, host_addr: str, host_port: int) -> bool: ...


@runtime_checkable
class DnsRecords(Protocol):
    def dns_records(self) -> dict[str, list[str]]: ...  # name -> IPv4 addresses (from the XML and added)

    def set_dns_records(self, added: dict[str, list[str]]) -> None: ...  # the run-time additions, whole


@runtime_checkable
class LinkControl(Protocol):
    def set_link(self, target: str, up: bool) -> None: ...  # BackendError if there is no such target


@runtime_checkable
class Restorable(Protocol):
    def restore(self, iface: Interface, owner_uid: int, result: AttachResult) -> None: ...


@runtime_checkable
class Monitor(Protocol):
    def monitor_text(self, command: str) -> str: ...  # "info usernet" as QEMU prints it

    def mac_table(self) -> list[dict[str, object]]: ...
