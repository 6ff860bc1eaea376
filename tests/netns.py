"""Network namespaces and a vmlan hub inside one, for the TAP and bridge tests (and benchmarks/tap.py).

``Namespaces`` creates uniquely named namespaces (and deletes them, with every interface in them, at
the end). ``HubThread(netns)`` runs an event loop on a thread that has joined ``netns`` first:
setns(2) moves only the calling thread, and everything that thread does afterwards happens there —
/dev/net/tun creates its TAPs there, pyroute2 talks to that namespace's rtnetlink, and the scripts it
forks start there. Unix sockets bound to paths are reachable from every namespace, so a QEMU guest in
the root namespace still reaches a stream link served from that thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from vmlan.lan import Hub, Port

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(name: str) -> None:
    """Move the calling thread into the named network namespace (``ip netns`` naming)."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def sh(*cmds: str, timeout: float = 30) -> str:
    """Run shell commands (each must succeed); their joint stdout."""
    out = []
    for cmd in cmds:
        proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"`{cmd}` failed ({proc.returncode}): {proc.stderr.strip()}")
        out.append(proc.stdout)
    return "".join(out)


def tag() -> str:
    """A short random tag for interface and namespace names (interface names have 15 bytes)."""
    return secrets.token_hex(3)


class Namespaces:
    """Create namespaces by name; ``close()`` deletes them all (their interfaces go with them)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.tag = tag()

    def add(self, short: str) -> str:
        name = f"vmlt-{short}-{self.tag}"
        sh(f"ip netns add {name}", f"ip -n {name} link set lo up")
        self.names.append(name)
        return name

    def close(self) -> None:
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        self.names.clear()


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Recorder(Port):
    """A hub port that keeps what it is given: (length, offload) of every frame, and the frames too
    when ``keep`` is set. ``offload_ok`` makes it see GSO frames as they are."""

    def __init__(self, name: str = "rec", offload_ok: bool = False, keep: bool = False) -> None:
        super().__init__(name)
        self.offload_ok = offload_ok
        self.keep = keep
        self.sizes: list[tuple[int, Any]] = []
        self.frames: list[bytes] = []

    def transmit(self, frame: Any, src: Port, offload: Any) -> bool:
        self.sizes.append((len(frame), offload))
        if self.keep:
            self.frames.append(bytes(frame))
        return True


class HubThread:
    """A vmlan Hub on an event loop thread living in ``netns`` (or this process's namespace)."""

    def __init__(self, netns: str | None = None, hub: Hub | None = None) -> None:
        self.netns = netns
        self.loop = asyncio.new_event_loop()
        self.hub = hub or Hub(0)
        self.links: list[Any] = []
        ready = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            try:
                if netns:
                    setns(netns)
            except BaseException as exc:
                error.append(exc)
                ready.set()
                return
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True, name=f"hub-{netns}")
        self.thread.start()
        ready.wait(10)
        if error:
            raise error[0]

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 90) -> Any:
        async def wrapper() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    def start(self, link: Any) -> Any:
        """``link.start()`` on the loop (a LinkError propagates); the link is closed at ``close()``."""
        self.call(link.start)
        self.links.append(link)
        return link

    def attach(self, port: Port) -> Port:
        self.call(self.hub.attach, port)
        return port

    def close(self) -> None:
        if self.loop.is_closed():
            return
        for link in reversed(self.links):
            self.call(link.close)
        self.links.clear()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
