"""The host side of ``vmlan ns``: the user stack and the namespace's TAP on one hub, in vmlan's process.

vmlan itself stays in the host's network namespace (its host sockets are the NAT's far side). It forks
the child (or the ``--attach`` helper, :mod:`vmlan.ns.setup`) before its event loop exists, so the
fork copies no loop, thread or epoll instance; signals are blocked across the fork so that none is
taken by a handler the child inherited. Then, on the loop:

1. the ``-netdev user`` stack opens (its hostfwd listeners: a port in use fails here, exit 1);
2. the TAP descriptor arrives from the child; it becomes ``-netdev tap,fd=N`` on the stack's hub
   (:class:`~vmlan.io.tap.TapLink`: a :class:`~vmlan.io.tap.TapPort` with vnet headers, offloads
   CSUM|TSO4|TSO6), and only then is the child told to run CMD;
3. vmlan waits on the child's pidfd: CMD's exit status is vmlan's (128 + N when a signal N killed
   it). SIGINT, SIGTERM and SIGHUP are forwarded to CMD (pidfd_send_signal: never to a reused PID);
   SIGUSR1 prints ``info network``, ``info usernet`` and the TAP's offload counters.

With ``--attach PID`` the helper exits once it has passed the TAP; vmlan runs until PID exits (its
pidfd) or SIGINT/SIGTERM/SIGHUP, and exits 0. Nothing is left behind: the TAP is not persistent, so
it goes with vmlan's descriptor; the namespace goes with its last process; no file is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from vmlan.config.cmdline import RunConfig
from vmlan.config.netdev import HubConfig
from vmlan.config.tap import TapNetdev
from vmlan.io.errors import LinkError
from vmlan.io.loop import new_event_loop
from vmlan.io.runtime import Runtime
from vmlan.io.sockopt import raise_fd_limit
from vmlan.io.tap import TapLink
from vmlan.io.usernet import UserNetPort
from vmlan.ns import setup
from vmlan.ns.config import IFNAME, NsConfig

__all__ = ["SIGNALS", "monitor_text", "run_ns"]

log = logging.getLogger("vmlan")

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SIGNALS = (*FORWARDED, signal.SIGUSR1)


class NsError(Exception):
    """vmlan ns cannot go on; the message is one line (exit status 1)."""


class _EndedEarly(Exception):
    """A signal ended the run before the namespace was ready: no message, this exit status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def monitor_text(runtime: Runtime) -> str:
    """``info network``, ``info usernet``, then the TAP's offload counters (what GSO handed over)."""
    from vmlan.control.monitor import info_network, info_usernet

    parts = [info_network(runtime)]
    for link in runtime.netdevs:
        if isinstance(link, UserNetPort):
            parts.append(info_usernet(link, link.cfg.hubid))
    for link in runtime.netdevs:
        if isinstance(link, TapLink) and link.port is not None:
            p = link.port
            parts.append(f"{link.cfg.id} ({p.ifname}): rx_gso={p.rx_gso} gso_max={p.gso_max} gso_size={p.gso_size} "
                         f"rx_csum_partial={p.rx_csum_partial} tx_gso={p.tx_gso} rx_bad_header={p.rx_bad_header}")
    return "\n".join(parts)


def run_ns(cfg: NsConfig) -> int:
    """The whole of ``vmlan ns``; returns its exit status."""
    early: list[int] = []

    def remember(signum: int, frame: FrameType | None) -> None:
        early.append(signum)

    for sig in SIGNALS:
        signal.signal(sig, remember)
    importlib.import_module("pyroute2")  # loaded once here, not in every child

    target_fd = -1
    if cfg.attach is not None:
        try:
            target_fd = os.pidfd_open(cfg.attach)
            shared = os.stat(f"/proc/{cfg.attach}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
        except OSError as exc:
            sys.stderr.write(f"vmlan: ns: --attach {cfg.attach}: {exc.strerror}\n")
            return 1
        if shared:  # tap0, an address and a default route on vmlan's own network: never
            os.close(target_fd)
            sys.stderr.write(f"vmlan: ns: --attach {cfg.attach}: the process is in vmlan's own network namespace\n")
            return 1
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parent = os.getpid()
    uid, gid = os.geteuid(), os.getegid()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        pid = os.fork()
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_SETMASK, saved)
        sys.stderr.write(f"vmlan: ns: fork: {exc.strerror}\n")
        return 1
    if pid == 0:  # pragma: no cover - the child's life ends in setup's execvp or _exit
        try:
            ours.close()
            if cfg.attach is None:
                setup.child_main(theirs, cfg, parent, uid, gid)
            else:
                setup.helper_main(theirs, cfg, target_fd)
        finally:
            os._exit(1)
    signal.pthread_sigmask(signal.SIG_SETMASK, saved)
    theirs.close()
    session = _Session(cfg, pid, ours, target_fd)
    try:
        return session.run(early)
    finally:
        session.close()
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)  # until the process is gone: no default action now


class _Session:
    """One run: the loop, the runtime, the child and its control socket."""

    def __init__(self, cfg: NsConfig, pid: int, ctrl: socket.socket, target_fd: int) -> None:
        self.cfg = cfg
        self.pid = pid
        self.ctrl = ctrl
        self.target_fd = target_fd
        self.child_fd = os.pidfd_open(pid)
        self.child_status: int | None = None
        self.loop = new_event_loop()
        asyncio.set_event_loop(self.loop)
        raise_fd_limit()
        self.runtime = Runtime(RunConfig(netdevs=[cfg.user], hubs={cfg.user.hubid: HubConfig(cfg.user.hubid)},
                                         verbose=cfg.verbose, quiet=cfg.quiet), self.loop)
        self.ready = False
        self.forwarded = False  # a signal was passed on to the child

    def run(self, early: list[int]) -> int:
        return self.loop.run_until_complete(self._serve(early))

    # -- the child -------------------------------------------------------------------------------------
    def _reap(self) -> int | None:
        """The child's exit status once it has exited (reaped here, once)."""
        if self.child_status is None:
            try:
                done, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if done == self.pid:
                self.child_status = setup.exit_status(status)
        return self.child_status

    def _signal_child(self, sig: int) -> None:
        self.forwarded = True
        if self.child_status is None:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self.child_fd, sig)

    def _watch(self, fd: int, fut: asyncio.Future[None]) -> Callable[[], None]:
        def readable() -> None:
            self.loop.remove_reader(fd)
            if not fut.done():
                fut.set_result(None)

        self.loop.add_reader(fd, readable)
        return readable

    # -- the whole run ---------------------------------------------------------------------------------
    async def _serve(self, early: list[int]) -> int:
        loop = self.loop
        cfg = self.cfg
        stop = asyncio.Event()
        child_gone: asyncio.Future[None] = loop.create_future()
        self._watch(self.child_fd, child_gone)
        target_gone: asyncio.Future[None] = loop.create_future()
        if cfg.attach is not None:
            self._watch(self.target_fd, target_gone)

        def on_signal(signum: int) -> None:
            if signum == signal.SIGUSR1:
                sys.stderr.write(monitor_text(self.runtime) + "\n")
                sys.stderr.flush()
            elif cfg.attach is None:
                self._signal_child(signum)
            else:
                stop.set()

        for sig in SIGNALS:
            loop.add_signal_handler(sig, on_signal, int(sig))
        for caught in early:
            on_signal(caught)
        try:
            self.runtime.add(cfg.user)
            await self._attach_tap(child_gone, stop)
        except _EndedEarly as ended:
            return ended.status
        except NsError as exc:
            sys.stderr.write(f"vmlan: ns: {exc}\n")
            return 1
        except LinkError as exc:
            sys.stderr.write(f"vmlan: {exc}\n")
            return 1
        self.ready = True
        if cfg.attach is None:
            setup.send_message(self.ctrl, setup.MSG_GO)
            log.info("ns: process %d: %s %s/%d mtu %d, gateway %s, DNS %s", self.pid, IFNAME, cfg.address,
                     cfg.prefixlen, cfg.mtu, cfg.gateway, cfg.dns)
            await child_gone
            status = self._reap()
            return status if status is not None else 1
        log.info("ns: attached to process %d: %s %s/%d mtu %d, gateway %s, DNS %s", cfg.attach, IFNAME, cfg.address,
                 cfg.prefixlen, cfg.mtu, cfg.gateway, cfg.dns)
        await child_gone  # the helper exits once the TAP is passed: reap it now, not at the end
        self._reap()
        stopping = loop.create_task(stop.wait())
        waits: list[asyncio.Future[Any]] = [target_gone, stopping]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if target_gone.done():
            log.info("ns: process %d exited", cfg.attach)
        return 0

    async def _attach_tap(self, child_gone: asyncio.Future[None], stop: asyncio.Event) -> None:
        """Wait for the child's TAP (logging its warnings) and put it on the stack's hub."""
        loop = self.loop
        self.ctrl.setblocking(False)
        stopping = loop.create_task(stop.wait())
        try:
            while True:
                message: asyncio.Future[None] = loop.create_future()
                self._watch(self.ctrl.fileno(), message)
                waits: list[asyncio.Future[Any]] = [message, child_gone, stopping]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if not message.done():
                    with contextlib.suppress(ValueError, OSError):
                        loop.remove_reader(self.ctrl.fileno())
                    if stopping.done():
                        raise _EndedEarly(0)  # --attach: SIGINT/SIGTERM/SIGHUP while setting up
                    # the child is gone; a message it sent just before may still be queued
                try:
                    kind, text, fd = setup.recv_message(self.ctrl)
                except BlockingIOError:
                    kind, text, fd = b"", "", None
                if kind == setup.MSG_WARNING:
                    log.warning("ns: %s", text)
                    continue
                if kind == setup.MSG_ERROR:
                    raise NsError(text)
                if kind != setup.MSG_TAP or fd is None:
                    await child_gone  # it closed its end: it is exiting
                    status = self._reap()
                    if status is not None and status > 128 and self.forwarded:
                        raise _EndedEarly(status)  # our signal, passed on before CMD ran: as if CMD got it
                    how = f" (status {status})" if status is not None else ""
                    raise NsError(f"the namespace setup process ended before {IFNAME} was ready{how}")
                break
        finally:
            stopping.cancel()
        tap = TapNetdev(id=self.cfg.tap_id, hubid=self.cfg.user.hubid, script="", downscript="", fd=fd)
        try:
            link = self.runtime.add(tap)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        assert isinstance(link, TapLink) and link.port is not None

    # -- teardown --------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the links (the TAP disappears with its descriptor), end and reap a child that is still
        there (it never ran CMD, or CMD has not exited: vmlan is going away), close the loop."""
        if self.cfg.verbose and self.ready:
            sys.stderr.write(monitor_text(self.runtime) + "\n")
            sys.stderr.flush()
        self.runtime.close()
        self.ctrl.close()
        if self._reap() is None:
            self._signal_child(signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                _, status = os.waitpid(self.pid, 0)
                self.child_status = setup.exit_status(status)
        for fd in (self.child_fd, self.target_fd):
            if fd >= 0:
                with contextlib.suppress(ValueError, OSError):
                    self.loop.remove_reader(fd)
                os.close(fd)
        self.child_fd = self.target_fd = -1
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()
