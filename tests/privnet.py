"""Helpers for the privileged-network tests: the daemon's NetworkContext with an in-memory lease store
and an event recorder, a backend's event loop on a thread inside a namespace of the test's, and snapshots of what
a network leaves on the host (interfaces, the nftables ruleset, sysctls).

The backend runs exactly as under the daemon (on an event loop thread), only that thread joined a
network namespace the test created first: its bridge, TAPs, nftables table and ip_forward all live
there, and everything goes when the namespace is deleted, whatever happens to the test.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar, cast

from netns import HubThread, setns
from vmlan.control.backends import LeaseRecord, NetworkContext

T = TypeVar("T")


class MemoryLeases:
    """The daemon's LeaseStore, in memory: the last record persisted per (network, MAC)."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, LeaseRecord]] = {}
        self.calls = 0

    def persist(self, network: str, lease: LeaseRecord) -> None:
        self.persist_many(network, [lease], [])

    def persist_many(self, network: str, leases: list[LeaseRecord], gone: list[str]) -> None:
        table = self.records.setdefault(network, {})
        for mac in gone:
            table.pop(mac, None)
        for lease in leases:
            table[lease.mac] = lease
        self.calls += 1

    def load(self, network: str) -> list[LeaseRecord]:
        return list(self.records.get(network, {}).values())


class Events:
    """The daemon's event sink: remembers every (kind, data)."""

    def __init__(self) -> None:
        self.emitted: list[tuple[str, dict[str, object]]] = []
        self._lock = threading.Lock()

    def __call__(self, kind: str, data: dict[str, object]) -> None:
        with self._lock:
            self.emitted.append((kind, data))

    def of_kind(self, kind: str) -> list[dict[str, object]]:
        with self._lock:
            return [d for k, d in self.emitted if k == kind]


def make_context(loop: asyncio.AbstractEventLoop, runtime_dir: Path, leases: MemoryLeases | None = None,
                 boot_id: str = "test-boot") -> NetworkContext:
    """The daemon's NetworkContext for a backend under test (no links registry: the privileged backend
    does not use one)."""
    return NetworkContext(loop=loop, runtime=cast(Any, None), state_dir=runtime_dir,
                          leases=leases if leases is not None else MemoryLeases(), events=Events(),
                          runtime_dir=runtime_dir, boot_id=boot_id)


def events_of(ctx: NetworkContext) -> Events:
    assert isinstance(ctx.events, Events)
    return ctx.events


def store_of(ctx: NetworkContext) -> MemoryLeases:
    assert isinstance(ctx.leases, MemoryLeases)
    return ctx.leases


class NetThread(HubThread):
    """An event loop on a thread inside ``netns``: ``run(coro)`` and ``call(fn)`` execute on it.

    ``runtime_dir`` is the daemon's runtime directory for the contexts it makes (the backend keeps its
    notes for a restarted daemon there)."""

    def __init__(self, netns: str, runtime_dir: Path) -> None:
        super().__init__(netns)
        self.runtime_dir = runtime_dir

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def context(self, leases: MemoryLeases | None = None, boot_id: str = "test-boot") -> NetworkContext:
        return make_context(self.loop, self.runtime_dir, leases, boot_id)


def in_netns(netns: str, fn: Callable[[], T], timeout: float = 30) -> T:
    """``fn()`` on a fresh thread that joined ``netns`` (sockets it opens live there)."""
    result: list[T] = []
    error: list[BaseException] = []

    def work() -> None:
        try:
            setns(netns)
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"{fn!r} in {netns} did not finish within {timeout} s")
    if error:
        raise error[0]
    return result[0]


def ns_run(netns: str, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} in {netns} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}")
    return proc


def links(netns: str) -> dict[str, dict[str, Any]]:
    """``ip -d -j link`` of the namespace, by interface name."""
    out = ns_run(netns, "ip", "-d", "-j", "link", "show").stdout
    return {link["ifname"]: link for link in json.loads(out)}


def addresses(netns: str, ifname: str) -> list[str]:
    out = json.loads(ns_run(netns, "ip", "-j", "addr", "show", "dev", ifname).stdout)
    return [f"{a['local']}/{a['prefixlen']}" for a in out[0]["addr_info"] if a["family"] in ("inet", "inet6")
            and not a["local"].startswith("fe80:")]


def ruleset(netns: str) -> str:
    return ns_run(netns, "nft", "list", "ruleset").stdout


def sysctl(netns: str, key: str) -> str:
    return ns_run(netns, "cat", f"/proc/sys/net/{key}").stdout.strip()
