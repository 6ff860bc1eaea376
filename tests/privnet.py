"""Helpers for the privileged-network tests: a stand-in for the daemon's NetworkContext, an in-memory
lease store, a backend's event loop on a thread inside a namespace of the test's, and snapshots of what
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from netns import HubThread, setns
from vmlan.control.backends import LeaseRecord, LeaseStore

T = TypeVar("T")


class MemoryLeases:
    """The daemon's LeaseStore, in memory: the last record persisted per (network, MAC)."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, LeaseRecord]] = {}
        self.persisted: list[tuple[str, LeaseRecord]] = []

    def persist(self, network: str, record: LeaseRecord) -> None:
        self.records.setdefault(network, {})[record.mac] = record
        self.persisted.append((network, record))

    def load(self, network: str) -> list[LeaseRecord]:
        return list(self.records.get(network, {}).values())


@dataclass
class FakeContext:
    """The contract's NetworkContext (its fields, typed as the contract types them) plus what a test
    looks at: ``store`` (the leases persisted) and ``emitted`` (the events)."""

    loop: asyncio.AbstractEventLoop
    runtime: Any = None
    state_dir: Path = Path("/nonexistent")
    leases: LeaseStore = field(default_factory=MemoryLeases)
    events: Callable[[str, dict[str, object]], None] = field(init=False)
    emitted: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.events = self._record

    def _record(self, kind: str, data: dict[str, object]) -> None:
        with self.lock:
            self.emitted.append((kind, data))

    @property
    def store(self) -> MemoryLeases:
        assert isinstance(self.leases, MemoryLeases)
        return self.leases

    def of_kind(self, kind: str) -> list[dict[str, object]]:
        with self.lock:
            return [d for k, d in self.emitted if k == kind]


class NetThread(HubThread):
    """An event loop on a thread inside ``netns``: ``run(coro)`` and ``call(fn)`` execute on it."""

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def context(self) -> FakeContext:
        return FakeContext(self.loop)


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
