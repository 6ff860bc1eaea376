"""The contract between the daemon core and its network backends (/work/team/daemon-interface.md).

Owned by the daemon core. This copy holds exactly the contract's types so that the privileged backend
(:mod:`vmlan.control.privileged`) can be written and tested before the daemon exists; the daemon's
version of this module replaces it.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from vmlan.config.libvirt import Interface, Network
from vmlan.io.runtime import Runtime

__all__ = ["AttachResult", "LeaseRecord", "LeaseStore", "NetworkBackend", "NetworkContext", "RunningNetwork"]


@dataclass(frozen=True)
class LeaseRecord:
    mac: str
    ip: str
    hostname: str | None
    expires: float  # wall-clock seconds
    client_id: str | None = None


class LeaseStore(Protocol):
    def persist(self, network: str, record: LeaseRecord) -> None: ...
    def load(self, network: str) -> list[LeaseRecord]: ...


class NetworkContext(Protocol):
    """What the daemon gives a backend (read-only members: any object with these attributes will do)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def runtime(self) -> Runtime: ...  # the links registry: runtime.add(netdev_cfg), runtime.remove(id)
    @property
    def state_dir(self) -> pathlib.Path: ...  # per-daemon state directory (sockets, files)
    @property
    def leases(self) -> LeaseStore: ...
    @property
    def events(self) -> Callable[[str, dict[str, object]], None]: ...  # ("lease-granted", {...}) ...


@dataclass(frozen=True)
class AttachResult:
    netdev: str  # the -netdev value without id=
    target: str  # the assigned target name (vnet0) or socket id


class RunningNetwork(Protocol):
    name: str
    mode: str  # "rootless" or "privileged"
    bridge: str | None

    def attach(self, iface: Interface, owner_uid: int) -> AttachResult: ...
    def detach(self, target: str) -> None: ...
    def leases(self) -> list[LeaseRecord]: ...
    def info(self) -> dict[str, object]: ...
    async def stop(self) -> None: ...


class NetworkBackend(Protocol):
    mode: str

    def available(self) -> bool: ...
    async def start(self, net: Network, ctx: NetworkContext) -> RunningNetwork: ...
