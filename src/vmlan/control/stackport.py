"""The user-mode stack as the router of a daemon network: :class:`UserNetPort` plus what the daemon
needs at run time and io/usernet.py does not offer yet.

This module is a stand-in. What it adds, and the API asked of io/usernet.py's owner for it:

- ``add_hostfwd(rule) -> bound port`` / ``remove_hostfwd(proto, host_addr, host_port) -> bool``:
  QEMU's monitor ``hostfwd_add``/``hostfwd_remove`` on a running stack. A removed rule keeps its index
  (the engine names a forward by index) with its socket closed, so no new client reaches it; sessions
  already open finish.
- ``set_dns_static(table)``: the resolver's static names replaced while it runs.
- ``on_leases``: called synchronously whenever the DHCP server's lease table changed, before the frame
  that carries the answer (an ACK) leaves for the guest: the daemon commits the lease first. It hooks
  the frames the stack sends (``rx_filter`` of its port, a public hook of lan.Port) and compares the
  server's change counter; one integer comparison per frame.
- ``on_guest_left``: a port of the hub went away (``port_left``).

When io/usernet.py grows these, the subclass shrinks to the two callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

from vmlan.config.usernet import UserNetdev
from vmlan.engines.dns import DnsConfig
from vmlan.engines.usernet import HostForward, StackConfig
from vmlan.io.errors import LinkError
from vmlan.io.usernet import UserNetPort
from vmlan.lan import Port
from vmlan.wire import BytesLike
from vmlan.wire.vnet import Offload

log = logging.getLogger("vmlan")


class StackPort(UserNetPort):
    """A :class:`UserNetPort` with run-time forwards, run-time DNS names and lease/guest callbacks."""

    def __init__(self, user: UserNetdev, loop: asyncio.AbstractEventLoop, stack_cfg: StackConfig) -> None:
        super().__init__(user, loop, stack_cfg)
        self.on_leases: Callable[[], None] | None = None
        self.on_guest_left: Callable[[Port], None] | None = None
        self._live = [True] * len(stack_cfg.hostfwd)  # per rule index: False once removed
        dhcp = self.stack.dhcp
        self._dhcp_server = dhcp.server if dhcp is not None else None
        self._lease_version = self._dhcp_server.changed if self._dhcp_server is not None else 0
        self.rx_filter = self._outgoing

    # -- hooks -----------------------------------------------------------------------------------------
    def _outgoing(self, port: Port, frame: BytesLike, offload: Offload | None) -> None:
        """Every frame the stack sends passes here (the rx filter of its own port)."""
        server = self._dhcp_server
        if server is not None and server.changed != self._lease_version:
            self._lease_version = server.changed
            if self.on_leases is not None:
                try:
                    self.on_leases()
                except Exception:
                    log.exception("%s: saving leases failed", self.label)
        lan = self.lan
        if lan is not None:
            lan.forward(self, frame, offload)

    def check_leases(self) -> None:
        """Report a lease change not followed by any frame (a RELEASE, an expiry pass)."""
        server = self._dhcp_server
        if server is not None and server.changed != self._lease_version:
            self._lease_version = server.changed
            if self.on_leases is not None:
                self.on_leases()

    def port_left(self, port: Port) -> None:
        super().port_left(port)
        self.check_leases()
        if self.on_guest_left is not None:
            self.on_guest_left(port)

    # -- forwards --------------------------------------------------------------------------------------
    def live_forwards(self) -> list[tuple[HostForward, int]]:
        """(rule, bound port) of every rule not removed."""
        out = []
        for rule, sock, live in zip(self.stack.cfg.hostfwd, self._fwd_socks, self._live, strict=False):
            if live:
                out.append((rule, sock.getsockname()[1]))
        return out

    def forward_fds(self) -> list[tuple[HostForward, int, int]]:
        out = []
        for rule, sock, live in zip(self.stack.cfg.hostfwd, self._fwd_socks, self._live, strict=False):
            if live:
                out.append((rule, sock.fileno(), sock.getsockname()[1]))
        return out

    def add_hostfwd(self, rule: HostForward) -> int:
        """Listen for ``rule`` now; the bound port (the kernel's choice for host_port 0). LinkError when
        the host address or port cannot be had, or another live rule has it."""
        anys = ("", "0.0.0.0")
        for other, _bound in self.live_forwards():
            same_addr = rule.host_addr == other.host_addr or rule.host_addr in anys or other.host_addr in anys
            if rule.host_port and other.proto == rule.proto and other.host_port == rule.host_port and same_addr:
                raise LinkError(f"host forwarding rule for {rule.proto}:{rule.host_addr}:{rule.host_port} "
                                "already exists")
        kind = socket.SOCK_STREAM if rule.proto == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(socket.AF_INET, kind)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((rule.host_addr or "0.0.0.0", rule.host_port))
            if kind == socket.SOCK_STREAM:
                sock.listen(64)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise LinkError(f"could not set up host forwarding rule '{rule.proto}:{rule.host_addr}:"
                            f"{rule.host_port}': {exc.strerror}") from None
        core = self.stack.core
        index = len(core.cfg.hostfwd)
        core.cfg = _replace_hostfwd(core.cfg, (*core.cfg.hostfwd, rule))
        self._fwd_socks.append(sock)
        self._live.append(True)
        if kind == socket.SOCK_STREAM:
            self._loop.add_reader(sock.fileno(), self._on_fwd_accept, index, sock)
        else:
            self._loop.add_reader(sock.fileno(), self._on_fwd_datagram, index, sock)
        bound: int = sock.getsockname()[1]
        log.info("%s: forwarding %s %s:%d -> guest %s:%d", self.label, rule.proto, rule.host_addr or "*", bound,
                 socket.inet_ntoa(rule.guest_addr), rule.guest_port)
        return bound

    def remove_hostfwd(self, proto: str, host_addr: str, host_port: int) -> bool:
        """Stop a rule (matched as QEMU's hostfwd_remove: protocol, host address, host port or the
        port it was bound to). False when no live rule matches."""
        anys = ("", "0.0.0.0")
        for index, (rule, sock, live) in enumerate(zip(self.stack.cfg.hostfwd, self._fwd_socks, self._live,
                                                       strict=False)):
            if not live or rule.proto != proto:
                continue
            if not (rule.host_addr == host_addr or (rule.host_addr in anys and host_addr in anys)):
                continue
            if host_port not in (rule.host_port, sock.getsockname()[1]):
                continue
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock.fileno())
            sock.close()
            self._live[index] = False
            return True
        return False

    # -- DNS -------------------------------------------------------------------------------------------
    def set_dns_static(self, static: dict[str, list[str]]) -> None:
        """Replace the names the stack's resolver answers itself (host names stay)."""
        dns = self.stack.dns
        if dns is None:
            raise LinkError(f"{self.label}: this network has no DNS service")
        resolver = dns.resolver
        cfg = resolver.cfg
        new = DnsConfig(upstreams=cfg.upstreams, static=static, host_names=cfg.host_names, timeout=cfg.timeout,
                        attempts=cfg.attempts, max_pending=cfg.max_pending,
                        max_pending_per_guest=cfg.max_pending_per_guest, ttl=cfg.ttl, tcp_upstream=cfg.tcp_upstream)
        resolver._answers = new.answers()  # stand-in: DnsForwarder has no public setter yet
        resolver.cfg = new


def _replace_hostfwd(cfg: StackConfig, hostfwd: tuple[HostForward, ...]) -> StackConfig:
    import dataclasses

    return dataclasses.replace(cfg, hostfwd=hostfwd)
