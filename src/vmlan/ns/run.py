"""The host side of ``vmlan ns``: the user stack and the namespaces' TAPs on one hub, in vmlan's process.

vmlan itself stays in the host's network namespace (its host sockets are the NAT's far side). It forks
one process per namespace (the child for CMD, a helper per ``--attach PID``, :mod:`vmlan.ns.setup`)
before its event loop exists, so the forks copy no loop, thread or epoll instance; signals are blocked
across each fork so that none is taken by a handler the child inherited. Then, on the loop:

1. the ``-netdev user`` stack opens (its hostfwd listeners: a port in use fails here, exit 1);
2. each namespace's TAP descriptor arrives, in order, and becomes ``-netdev tap,fd=N`` (``ns0``,
   ``ns1``, ...) on the stack's hub (:class:`~vmlan.io.tap.TapLink`: a :class:`~vmlan.io.tap.TapPort`
   with vnet headers, offloads CSUM|TSO4|TSO6); once all are there, each is told to go on, and each
   reports when its namespace is ready (with IPv6: the SLAAC address, :mod:`vmlan.ns.setup` step 6);
   only then does CMD run, and only then does vmlan log the namespaces;
3. with CMD, vmlan waits on the child's pidfd: CMD's exit status is vmlan's (128 + N when a signal N
   killed it), and the attached namespaces lose their tap0 with it. SIGINT, SIGTERM and SIGHUP are
   forwarded to CMD (pidfd_send_signal: never to a reused PID). Without CMD, vmlan runs until every
   attached process has exited, or SIGINT/SIGTERM/SIGHUP, and exits 0. An attached process that
   exits takes its namespace away; its TAP leaves the hub then (the stack forgets that guest).
   SIGUSR1 prints ``info network``, ``info usernet`` and the TAPs' offload counters.

Nothing is left behind: the TAPs are not persistent, so they go with vmlan's descriptors; a namespace
goes with its last process; no file is written (smb=: io/smb.py removes its directory and processes).
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
from types import FrameType
from typing import Any

from vmlan.config.cmdline import RunConfig
from vmlan.config.netdev import HubConfig
from vmlan.config.tap import TapNetdev
from vmlan.io.errors import LinkError
from vmlan.io.loop import new_event_loop, write_report
from vmlan.io.runtime import Runtime
from vmlan.io.sockopt import raise_fd_limit
from vmlan.io.tap import TapLink
from vmlan.io.usernet import UserNetPort
from vmlan.ns import setup
from vmlan.ns.config import IFNAME, Namespace, NsConfig

__all__ = ["SIGNALS", "monitor_text", "run_ns"]

log = logging.getLogger("vmlan")

ROUTER6 = "fe80::2"  # the stack's link-local address, the IPv6 default route's gateway

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


def _describe(cfg: NsConfig, ns: Namespace, slaac: str) -> str:
    parts = [f"{IFNAME} {ns.address}/{cfg.prefixlen} mtu {cfg.mtu}, gateway {cfg.gateway}, DNS {cfg.dns}"
             if cfg.ipv4 else f"{IFNAME} mtu {cfg.mtu}"]
    if cfg.ipv6:
        parts.append(f"IPv6 {slaac or 'none yet'}/{cfg.user.net6.prefixlen} via {ROUTER6}, DNS {cfg.user.dns6}")
    return ", ".join(parts) + f", MAC {ns.mac_text}"


def run_ns(cfg: NsConfig) -> int:
    """The whole of ``vmlan ns``; returns its exit status."""
    early: list[int] = []

    def remember(signum: int, frame: FrameType | None) -> None:
        early.append(signum)

    for sig in SIGNALS:
        signal.signal(sig, remember)
    importlib.import_module("pyroute2")  # loaded once here, not in every child

    target_fds: list[int] = []
    for pid in cfg.attach:
        problem = ""
        try:
            fd = os.pidfd_open(pid)
        except OSError as exc:
            problem = str(exc.strerror)
        else:
            target_fds.append(fd)
            try:
                if os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino:
                    # tap0, an address and a default route on vmlan's own network: never
                    problem = "the process is in vmlan's own network namespace"
            except OSError as exc:
                problem = str(exc.strerror)
        if problem:
            for fd in target_fds:
                os.close(fd)
            sys.stderr.write(f"vmlan: ns: --attach {pid}: {problem}\n")
            return 1
    members: list[_Member] = []
    parent = os.getpid()
    uid, gid = os.geteuid(), os.getegid()
    targets = iter(target_fds)
    for ns in cfg.namespaces:
        target_fd = next(targets) if ns.attach is not None else -1
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sys.stdout.flush()
        sys.stderr.flush()
        saved = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, saved)
            sys.stderr.write(f"vmlan: ns: fork: {exc.strerror}\n")
            ours.close()
            theirs.close()
            for m in members:
                m.ctrl.close()
            _kill_and_reap(members)
            for fd in target_fds:
                os.close(fd)
            return 1
        if pid == 0:  # pragma: no cover - the child's life ends in setup's execvp or _exit
            try:
                ours.close()
                for m in members:
                    m.ctrl.close()
                if ns.attach is None:
                    setup.child_main(theirs, cfg, ns, parent, uid, gid)
                else:
                    setup.helper_main(theirs, cfg, ns, target_fd)
            finally:
                os._exit(1)
        signal.pthread_sigmask(signal.SIG_SETMASK, saved)
        theirs.close()
        members.append(_Member(ns, pid, ours, target_fd))
    session = _Session(cfg, members)
    try:
        return session.run(early)
    finally:
        session.close()
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)  # until the process is gone: no default action now


def _kill_and_reap(members: list[_Member]) -> None:
    for m in members:
        with contextlib.suppress(ProcessLookupError, OSError):
            os.kill(m.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(m.pid, 0)


class _Member:
    """One namespace of the run: its setup process (CMD's child, or a helper), control socket, target."""

    __slots__ = ("ctrl", "gone", "ns", "pid", "pidfd", "slaac", "status", "target_fd", "target_gone")

    def __init__(self, ns: Namespace, pid: int, ctrl: socket.socket, target_fd: int) -> None:
        self.ns = ns
        self.pid = pid
        self.ctrl = ctrl
        self.target_fd = target_fd
        self.pidfd = os.pidfd_open(pid)
        self.status: int | None = None
        self.slaac: str | None = None  # set once the namespace reported ready ("" without an address)
        self.gone: asyncio.Future[None] | None = None
        self.target_gone: asyncio.Future[None] | None = None

    def reap(self) -> int | None:
        """The setup process's exit status once it has exited (reaped here, once)."""
        if self.status is None:
            try:
                done, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if done == self.pid:
                self.status = setup.exit_status(status)
        return self.status

    @property
    def what(self) -> str:
        return f"process {self.pid}" if self.ns.attach is None else f"--attach {self.ns.attach}"


class _Session:
    """One run: the loop, the runtime, the namespaces."""

    def __init__(self, cfg: NsConfig, members: list[_Member]) -> None:
        self.cfg = cfg
        self.members = members
        self.cmd = next((m for m in members if m.ns.attach is None), None)
        self.loop = new_event_loop()
        asyncio.set_event_loop(self.loop)
        raise_fd_limit()
        self.runtime = Runtime(RunConfig(netdevs=[cfg.user], hubs={cfg.user.hubid: HubConfig(cfg.user.hubid)},
                                         verbose=cfg.verbose, quiet=cfg.quiet), self.loop)
        self.ready = False
        self.forwarded = False  # a signal was passed on to CMD

    def run(self, early: list[int]) -> int:
        return self.loop.run_until_complete(self._serve(early))

    def _signal_cmd(self, sig: int) -> None:
        self.forwarded = True
        m = self.cmd
        if m is not None and m.status is None:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(m.pidfd, sig)

    def _watch(self, fd: int) -> asyncio.Future[None]:
        """A future done once ``fd`` is readable (the reader is removed then)."""
        fut: asyncio.Future[None] = self.loop.create_future()

        def readable() -> None:
            self.loop.remove_reader(fd)
            if not fut.done():
                fut.set_result(None)

        self.loop.add_reader(fd, readable)
        return fut

    # -- the whole run ---------------------------------------------------------------------------------
    async def _serve(self, early: list[int]) -> int:
        loop = self.loop
        stop = asyncio.Event()
        for m in self.members:
            m.gone = self._watch(m.pidfd)
            if m.target_fd >= 0:
                m.target_gone = self._watch(m.target_fd)

        def on_signal(signum: int) -> None:
            if signum == signal.SIGUSR1:
                write_report(monitor_text(self.runtime))
            elif self.cmd is not None:
                self._signal_cmd(signum)
            else:
                stop.set()

        for sig in SIGNALS:
            loop.add_signal_handler(sig, on_signal, int(sig))
        for caught in early:
            on_signal(caught)
        stopping = loop.create_task(stop.wait())
        try:
            return await self._serve_until_done(stopping)
        finally:
            stopping.cancel()

    async def _serve_until_done(self, stopping: asyncio.Future[Any]) -> int:
        cfg = self.cfg
        try:
            self.runtime.add(cfg.user)
            for m in self.members:
                await self._attach_tap(m, stopping)
            self.ready = True
            for m in self.members:
                setup.send_message(m.ctrl, setup.MSG_GO)
            for m in self.members:
                await self._until_ready(m, stopping)
        except _EndedEarly as ended:
            return ended.status
        except NsError as exc:
            sys.stderr.write(f"vmlan: ns: {exc}\n")
            return 1
        except LinkError as exc:
            sys.stderr.write(f"vmlan: {exc}\n")
            return 1
        for m in self.members:
            if m.slaac is not None:
                how = f"process {m.pid}" if m.ns.attach is None else f"attached to process {m.ns.attach}"
                log.info("ns: %s: %s", how, _describe(cfg, m.ns, m.slaac))
        return await self._until_done(stopping)

    async def _until_done(self, stopping: asyncio.Future[Any]) -> int:
        """CMD's status once it exits; without CMD, 0 once every attached process is gone (or a signal)."""
        attached = [m for m in self.members if m.target_gone is not None]
        while True:
            waits: list[asyncio.Future[Any]] = [m.target_gone for m in attached if m.target_gone is not None]
            if self.cmd is not None:
                assert self.cmd.gone is not None
                waits.append(self.cmd.gone)
            elif not waits:
                return 0
            else:
                waits.append(stopping)
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if self.cmd is not None and self.cmd.gone is not None and self.cmd.gone.done():
                status = self.cmd.reap()
                return status if status is not None else 1
            if stopping.done():
                return 0
            for m in list(attached):
                if m.target_gone is not None and m.target_gone.done():
                    attached.remove(m)
                    log.info("ns: process %d exited", m.ns.attach)
                    with contextlib.suppress(LinkError):
                        self.runtime.remove(m.ns.tap_id)  # its namespace, and so its tap0, is gone

    async def _receive(self, m: _Member, stopping: asyncio.Future[Any]) -> tuple[bytes, str, int | None]:
        """The next message from ``m``'s setup process; kind b"" once it closed its end or exited.
        A signal that ends a run without CMD ends it here too (_EndedEarly(0))."""
        while True:
            try:
                return setup.recv_message(m.ctrl)
            except BlockingIOError:
                pass
            readable = self._watch(m.ctrl.fileno())
            assert m.gone is not None
            waits: list[asyncio.Future[Any]] = [readable, m.gone, stopping]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if readable.done():
                continue
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(m.ctrl.fileno())
            if stopping.done():
                raise _EndedEarly(0)  # --attach only: SIGINT/SIGTERM/SIGHUP while setting up
            try:  # the process is gone; a message it sent just before may still be queued
                return setup.recv_message(m.ctrl)
            except BlockingIOError:
                return b"", "", None

    def _failed(self, m: _Member, text: str) -> NsError:
        return NsError(text if m.ns.attach is None else f"--attach {m.ns.attach}: {text}")

    async def _attach_tap(self, m: _Member, stopping: asyncio.Future[Any]) -> None:
        """Wait for ``m``'s TAP (logging its warnings) and put it on the stack's hub."""
        m.ctrl.setblocking(False)
        while True:
            kind, text, fd = await self._receive(m, stopping)
            if kind == setup.MSG_WARNING:
                log.warning("ns: %s", text)
                continue
            if kind == setup.MSG_ERROR:
                raise self._failed(m, text)
            if kind != setup.MSG_TAP or fd is None:
                raise await self._ended(m, f"before {IFNAME} was ready")
            break
        tap = TapNetdev(id=m.ns.tap_id, hubid=self.cfg.user.hubid, script="", downscript="", fd=fd)
        try:
            link = self.runtime.add(tap)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        assert isinstance(link, TapLink) and link.port is not None

    async def _ended(self, m: _Member, when: str) -> Exception:
        """The setup process closed its end: it is exiting. What that means for the run."""
        assert m.gone is not None
        await m.gone
        status = m.reap()
        if status is not None and status > 128 and self.forwarded and m is self.cmd:
            return _EndedEarly(status)  # our signal, passed on before CMD ran: as if CMD got it
        how = f" (status {status})" if status is not None else ""
        return self._failed(m, f"the namespace setup process ended {when}{how}")

    async def _until_ready(self, m: _Member, stopping: asyncio.Future[Any]) -> None:
        """``m``'s namespace is ready (R; a helper has exited then). CMD's child ending first is left to
        the main wait: its status is the run's."""
        while True:
            kind, text, _fd = await self._receive(m, stopping)
            if kind == setup.MSG_WARNING:
                log.warning("ns: %s", text)
            elif kind == setup.MSG_READY:
                m.slaac = text
                if m is not self.cmd:
                    assert m.gone is not None
                    await m.gone  # a helper exits at once: reap it now, not at the end
                    m.reap()
                return
            elif kind == setup.MSG_ERROR:
                raise self._failed(m, text)
            elif m is self.cmd:
                return
            else:
                raise await self._ended(m, "before its namespace was ready")

    # -- teardown --------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the links (the TAPs disappear with their descriptors), end and reap setup processes that
        are still there (CMD never ran, or has not exited: vmlan is going away), close the loop."""
        if self.cfg.verbose and self.ready:
            write_report(monitor_text(self.runtime))
        self.runtime.close()
        for m in self.members:
            m.ctrl.close()
            if m.reap() is None:
                with contextlib.suppress(ProcessLookupError, OSError):
                    signal.pidfd_send_signal(m.pidfd, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    _, status = os.waitpid(m.pid, 0)
                    m.status = setup.exit_status(status)
            for fd in (m.pidfd, m.target_fd):
                if fd >= 0:
                    with contextlib.suppress(ValueError, OSError):
                        self.loop.remove_reader(fd)
                    os.close(fd)
            m.pidfd = m.target_fd = -1
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()
