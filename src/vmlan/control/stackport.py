"""The user-mode stack as the router of a daemon network: :class:`UserNetPort` plus the daemon's hooks.

- ``on_leases``: called synchronously whenever the DHCP server's lease table changed, before the frame
  that carries the answer (an ACK) leaves for the guest: the daemon commits the lease first
  (``DhcpService.on_change`` in the engine). ``check_leases`` covers changes no guest message caused.
- ``on_guest_left``: a port of the hub went away (``port_left``).
- ``set_dns_static(table)``: the resolver's static names replaced while it runs.
- ``live_forwards()``: (rule, bound port) of every host forward, for the daemon's tables.

Runtime forwards are UserNetPort's own ``add_hostfwd``/``remove_hostfwd`` (QEMU's hostfwd_add/remove).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from vmlan.config.usernet import UserNetdev
from vmlan.engines.dns import DnsError
from vmlan.engines.usernet import HostForward, StackConfig
from vmlan.io.errors import LinkError
from vmlan.io.usernet import UserNetPort
from vmlan.lan import Port

log = logging.getLogger("vmlan")


class StackPort(UserNetPort):
    """A :class:`UserNetPort` with lease/guest callbacks and run-time DNS names."""

    def __init__(self, user: UserNetdev, loop: asyncio.AbstractEventLoop, stack_cfg: StackConfig) -> None:
        super().__init__(user, loop, stack_cfg)
        self.on_leases: Callable[[], None] | None = None
        self.on_guest_left: Callable[[Port], None] | None = None
        dhcp = self.stack.dhcp
        self._lease_version = dhcp.server.changed if dhcp is not None else 0
        if dhcp is not None:
            dhcp.on_change = self._leases_changed

    def _leases_changed(self) -> None:
        dhcp = self.stack.dhcp
        if dhcp is not None:
            self._lease_version = dhcp.server.changed
        if self.on_leases is not None:
            try:
                self.on_leases()
            except Exception:
                log.exception("%s: saving leases failed", self.label)

    def check_leases(self) -> None:
        """Report a lease change no guest message caused (an expiry pass, a guest that left)."""
        dhcp = self.stack.dhcp
        if dhcp is not None and dhcp.server.changed != self._lease_version:
            self._leases_changed()

    def port_left(self, port: Port) -> None:
        super().port_left(port)
        self.check_leases()
        if self.on_guest_left is not None:
            self.on_guest_left(port)

    def live_forwards(self) -> list[tuple[HostForward, int]]:
        """(rule, bound port) of every host forward."""
        return [(rule, bound) for rule, _fd, bound in self.forward_fds()]

    def set_dns_static(self, static: dict[str, list[str]]) -> None:
        """Replace the names the stack's resolver answers itself (host names stay)."""
        dns = self.stack.dns
        if dns is None:
            raise LinkError(f"{self.label}: this network has no DNS service")
        try:
            dns.resolver.set_static(static)
        except DnsError as exc:
            raise LinkError(f"{self.label}: {exc}") from None
