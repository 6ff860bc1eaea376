"""Privileged virtual networks, as libvirt's network driver runs them: a Linux bridge with the guests'
TAPs on it, vmlan's own DHCP and DNS on the bridge, and nftables rules in vmlan's own table.

Starting a network (libvirt's networkStartNetworkVirtual order):

1. the bridge (:func:`vmlan.io.hostnet.create_bridge`): the ``<bridge name>`` (or the first free
   ``virbr%d``, picked by :meth:`Network.live` against the host's interfaces), STP and delay, MTU, MAC,
   the ``<ip>`` addresses, up;
2. the firewall (:mod:`vmlan.io.nft`): ``table inet vmlan-<bridge>`` for nat, route and isolated
   networks, none for open;
3. ``net.ipv4.ip_forward`` (and IPv6 ``forwarding`` when the network has IPv6) switched on for nat,
   route and open; the previous value is remembered and put back when the last network that needed
   it stops, unless something else changed it meanwhile;
4. DHCP and DNS (:mod:`vmlan.io.bridge_services`, configured by :mod:`vmlan.control.netservices`),
   leases restored from ``ctx.leases`` and every change persisted there, ``lease-granted`` events
   through ``ctx.events``.

A failure at any step undoes the steps before it and raises :class:`PrivilegedError` (one line).
:meth:`PrivilegedNetwork.stop` removes everything in reverse: services, TAPs, firewall table,
forwarding, bridge.

Guests (:meth:`PrivilegedNetwork.attach`): a persistent TAP ``vnetN`` per interface, owned by the
guest's user so an unprivileged QEMU opens it by name. N comes from a counter of the backend that
only goes up, skipping names in use (libvirt's virNetDevGenerateName); an interface's own
``<target dev>`` is used as given. The TAP's MAC is the guest's with the first byte 0xFE; its MTU is
the interface's ``<mtu>``, else the bridge's.

Everything runs on the daemon's event loop thread, in that thread's network namespace (tests run a
backend on a thread inside a namespace of their own). rtnetlink work goes to short helper threads
started from it, since pyroute2's synchronous API cannot run on a thread with a running loop:
:meth:`attach` and :meth:`detach` block the loop for those few milliseconds (the contract makes them
synchronous), :meth:`PrivilegedBackend.start` and :meth:`PrivilegedNetwork.stop` await them.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv6Interface
from typing import TYPE_CHECKING

from vmlan.config.libvirt import Interface, Network
from vmlan.config.libvirt.interface import AUTO_TARGET_PREFIXES
from vmlan.config.libvirt.mac import format_mac
from vmlan.control.backends import AttachResult, LeaseRecord, NetworkContext
from vmlan.control.netservices import DhcpPlan, DnsPlan, ServiceConfigError, dhcp_plan, dns_plan
from vmlan.engines.dhcp import DhcpError, DhcpServer, Lease
from vmlan.engines.dns import DnsForwarder
from vmlan.io import hostnet
from vmlan.io.bridge_services import BridgeServices
from vmlan.io.errors import LinkError
from vmlan.io.hostnet import BridgeSpec, HostNetError
from vmlan.io.nft import NftError, apply_script, delete_script, find_nft, run_nft, table_name
from vmlan.io.tap import TUN_DEVICE
from vmlan.wire.errors import WireError
from vmlan.wire.ethernet import mac_from_str, mac_to_str
from vmlan.wire.ipv4 import ipv4_from_str, ipv4_to_str

log = logging.getLogger("vmlan")

__all__ = ["PrivilegedBackend", "PrivilegedError", "PrivilegedNetwork", "Tap"]

RESOLV_CONF = "/etc/resolv.conf"
TAP_PREFIX = "vnet"
MAX_TAP_TRIES = 1024  # names skipped before giving up (libvirt: as many as its id space)
CAP_NET_ADMIN = 12
IPV4_FORWARD = "ipv4/ip_forward"
IPV6_FORWARD = "ipv6/conf/all/forwarding"


class PrivilegedError(LinkError):
    """A privileged network or guest interface could not be set up or removed (one line)."""


def _has_net_admin() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return False


class _Forwarding:
    """Who needs ``ip_forward``: switched on by the first user, put back after the last."""

    def __init__(self) -> None:
        self._users: dict[str, int] = {}
        self._saved: dict[str, str] = {}

    def acquire(self, key: str) -> bool:
        """Count a user of ``key``; True if this call switched it on."""
        count = self._users.get(key, 0)
        self._users[key] = count + 1
        if count:
            return False
        current = hostnet.read_sysctl(key)
        if current == "1":
            return False
        hostnet.write_sysctl(key, "1")
        self._saved[key] = current
        return True

    def release(self, key: str) -> None:
        count = self._users.get(key, 0)
        if count <= 1:
            self._users.pop(key, None)
            saved = self._saved.pop(key, None)
            if saved is not None and hostnet.read_sysctl(key) == "1":
                hostnet.write_sysctl(key, saved)
        else:
            self._users[key] = count - 1

    def changed(self, key: str) -> bool:
        return key in self._saved


@dataclass(frozen=True, slots=True)
class Tap:
    name: str
    mac: str
    owner_uid: int
    mtu: int | None


@dataclass(slots=True)
class _Undo:
    """What a started (or half-started) network has to take down, in the order it was set up."""

    bridge: str | None = None
    table: str | None = None
    forwarding: list[str] = field(default_factory=list)
    services: BridgeServices | None = None


class PrivilegedBackend:
    """The ``privileged`` backend: Linux bridges, TAPs and nftables (needs root or CAP_NET_ADMIN)."""

    mode = "privileged"

    def __init__(self, *, nft: str | None = None, resolv_conf: str = RESOLV_CONF) -> None:
        self.nft = nft
        self.resolv_conf = resolv_conf
        self._tap_ids = itertools.count()
        self._forwarding = _Forwarding()
        self.networks: dict[str, PrivilegedNetwork] = {}

    # ------------------------------------------------------------------ availability

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run here, or None when it can."""
        if not _has_net_admin():
            return "needs root or CAP_NET_ADMIN"
        nft = self.nft or find_nft()
        if nft is None or not os.access(nft, os.X_OK):
            return f"{nft or 'nft'} not found (apt-get install nftables)"
        if not os.access(TUN_DEVICE, os.R_OK | os.W_OK):
            return f"{TUN_DEVICE} is not accessible"
        return None

    def available(self) -> bool:
        return self.unavailable_reason() is None

    # ------------------------------------------------------------------ start

    async def start(self, net: Network, ctx: NetworkContext) -> PrivilegedNetwork:
        """Bring the network up (see the module docstring). Raises PrivilegedError, having undone everything."""
        if not net.has_host_bridge:
            raise PrivilegedError(f"network '{net.name}': forward mode 'bridge' uses the host's bridge "
                                  f"{net.bridge}: nothing to start")
        if net.name in self.networks:
            raise PrivilegedError(f"network '{net.name}' is already active")
        try:
            in_use = await hostnet.in_thread(hostnet.link_names)
            live = net.live(in_use) if net.bridge is None or "%d" in net.bridge or net.mac is None else net
            if live.bridge in in_use:
                raise PrivilegedError(f"bridge name '{live.bridge}' already in use.")
            dhcp = dhcp_plan(live)
            dns = dns_plan(live, self._resolv_text())
        except (ServiceConfigError, LinkError) as exc:
            raise PrivilegedError(str(exc)) from None
        except Exception as exc:  # the libvirt layer's InternalError for virbr%d exhaustion, say
            raise PrivilegedError(f"network '{net.name}': {exc}") from None
        assert live.bridge is not None
        for what in (dhcp.ignored if dhcp else ()) + (dns.ignored if dns else ()):
            log.warning("network %s: %s is not supported by vmlan's DHCP/DNS and is ignored", net.name, what)
        undo = _Undo()
        running = PrivilegedNetwork(self, live, ctx, undo)
        try:
            await self._bring_up(running, undo, dhcp, dns)
        except BaseException as exc:
            await running._teardown()
            if isinstance(exc, PrivilegedError):
                raise
            if isinstance(exc, OSError):
                raise PrivilegedError(f"network '{net.name}': {exc.strerror or exc}") from None
            if isinstance(exc, (NftError, DhcpError)):
                raise PrivilegedError(f"network '{net.name}': {exc}") from None
            raise
        self.networks[live.name] = running
        log.info("network %s: started on bridge %s (%s)", live.name, live.bridge, live.mode)
        return running

    async def _bring_up(self, running: PrivilegedNetwork, undo: _Undo, dhcp: DhcpPlan | None,
                        dns: DnsPlan | None) -> None:
        net = running.net
        assert net.bridge is not None
        addresses: list[IPv4Interface | IPv6Interface] = []
        for ip in net.ips:
            prefix = ip.prefixlen
            addresses.append(ipaddress.ip_interface(f"{ip.address}/{prefix}"))
        has_v6 = any(a.version == 6 for a in addresses)
        spec = BridgeSpec(net.bridge, stp=net.stp, delay=net.delay, mtu=net.mtu, mac=net.mac,
                          addresses=tuple(addresses), ipv6=has_v6 or net.ipv6)
        undo.bridge = net.bridge
        try:
            await hostnet.in_thread(functools.partial(hostnet.create_bridge, spec))
        except HostNetError:
            undo.bridge = None  # create_bridge leaves nothing behind (and must not delete someone else's)
            raise
        script = apply_script(net)
        if script is not None:
            undo.table = table_name(net.bridge)
            await run_nft(script, nft=self.nft)
        if net.forward is not None and net.forward.mode in ("nat", "route", "open"):
            keys = [IPV4_FORWARD] + ([IPV6_FORWARD] if has_v6 else [])
            for key in keys:
                undo.forwarding.append(key)
                try:
                    if self._forwarding.acquire(key):
                        log.info("network %s: enabled %s", net.name, key.replace("/", "."))
                except OSError as exc:
                    raise PrivilegedError(f"network '{net.name}': cannot enable IP forwarding "
                                          f"({key}): {exc.strerror or exc}") from None
        server = None
        if dhcp is not None:
            leases = running._restored_leases()
            server = DhcpServer(dhcp.config, leases, in_use=dhcp.in_use)
            if server.stats.leases_dropped:
                log.info("network %s: %d saved leases no longer fit and were dropped", net.name,
                         server.stats.leases_dropped)
            running._granted = {lease.mac: lease for lease in server.leases()}
        forwarder = DnsForwarder(dns.config) if dns is not None else None
        if server is None and forwarder is None:
            return
        services = BridgeServices(
            running.ctx.loop, net.bridge, dhcp=server, dns=forwarder,
            dns_listen=dns.listen if dns is not None else (),
            on_lease=running._on_lease, on_leases_changed=running._on_leases_changed,
        )
        undo.services = services
        services.start()
        running.services = services

    def _resolv_text(self) -> str:
        try:
            with open(self.resolv_conf) as fh:
                return fh.read(1024 * 1024)
        except OSError:
            return ""

    def _next_tap_name(self) -> str:
        return f"{TAP_PREFIX}{next(self._tap_ids)}"


class PrivilegedNetwork:
    """A started privileged network (the contract's RunningNetwork)."""

    mode = "privileged"

    def __init__(self, backend: PrivilegedBackend, net: Network, ctx: NetworkContext, undo: _Undo) -> None:
        self.backend = backend
        self.net = net
        self.ctx = ctx
        self.name = net.name
        self.bridge: str | None = net.bridge
        self.taps: dict[str, Tap] = {}
        self.services: BridgeServices | None = None
        self._undo = undo
        self._granted: dict[bytes, Lease] = {}
        self._persisted: dict[bytes, Lease] = {}
        self._stopped = False

    # ------------------------------------------------------------------ guests

    def attach(self, iface: Interface, owner_uid: int) -> AttachResult:
        """Create the guest's TAP on the bridge; raises PrivilegedError."""
        if self._stopped:
            raise PrivilegedError(f"network '{self.name}' is not active")
        if iface.type not in ("network", "bridge"):
            raise PrivilegedError(f"interface type '{iface.type}' cannot be attached to network '{self.name}'")
        bridge = self.bridge
        assert bridge is not None
        mac = format_mac(b"\xfe" + iface.mac_bytes[1:])
        chosen = iface.target if iface.target and not iface.target.startswith(AUTO_TARGET_PREFIXES) else None
        tries = 1 if chosen else MAX_TAP_TRIES
        last: HostNetError | None = None
        for _ in range(tries):
            name = chosen or self.backend._next_tap_name()
            try:
                hostnet.off_loop(functools.partial(hostnet.create_tap, name, owner_uid=owner_uid, mac=mac,
                                                   bridge=bridge, mtu=iface.mtu, up=iface.link_up))
            except HostNetError as exc:
                if exc.errno == errno.EBUSY and not chosen:
                    last = exc
                    continue  # the name is in use: libvirt skips it too
                raise PrivilegedError(f"network '{self.name}': {exc.strerror or exc}") from None
            tap = Tap(name, mac, owner_uid, iface.mtu)
            self.taps[name] = tap
            log.info("network %s: %s for %s (owner uid %d)", self.name, name, iface.mac, owner_uid)
            return AttachResult(netdev=f"tap,ifname={name},script=no,downscript=no", target=name)
        raise PrivilegedError(f"network '{self.name}': no free {TAP_PREFIX}N name: "
                              f"{last.strerror if last else 'all in use'}")

    def detach(self, target: str) -> None:
        """Delete the TAP ``target`` (attached by this network); a TAP already gone is fine."""
        if target not in self.taps:
            raise PrivilegedError(f"network '{self.name}' has no interface '{target}'")
        try:
            hostnet.off_loop(functools.partial(hostnet.delete_link, target))
        except HostNetError as exc:
            raise PrivilegedError(f"network '{self.name}': {exc.strerror or exc}") from None
        del self.taps[target]

    # ------------------------------------------------------------------ leases

    def _restored_leases(self) -> list[Lease]:
        out: list[Lease] = []
        try:
            records = self.ctx.leases.load(self.name)
        except Exception as exc:
            log.warning("network %s: saved leases could not be read: %s", self.name, exc)
            return out
        for record in records:
            try:
                lease = Lease(mac_from_str(record.mac), ipv4_from_str(record.ip), float(record.expires),
                              record.hostname)
            except (WireError, TypeError, ValueError):
                log.warning("network %s: saved lease %r is malformed: skipped", self.name, record)
                continue
            out.append(lease)
            self._persisted[lease.mac] = lease
        return out

    @staticmethod
    def _record(lease: Lease) -> LeaseRecord:
        return LeaseRecord(mac=mac_to_str(lease.mac), ip=ipv4_to_str(lease.ip), hostname=lease.hostname,
                           expires=lease.expires)

    def _on_lease(self, lease: Lease) -> None:
        self._granted[lease.mac] = lease
        record = self._record(lease)
        self.ctx.events("lease-granted", {"network": self.name, "bridge": self.bridge, "mac": record.mac,
                                          "ip": record.ip, "hostname": record.hostname, "expires": record.expires})

    def _on_leases_changed(self) -> None:
        services = self.services
        server = services.dhcp if services is not None else None
        if server is None:
            return
        for mac, lease in list(self._granted.items()):
            now_lease = server.lease_for(mac)
            if now_lease is None:  # declined: remembered as over
                self._granted.pop(mac)
                self._persist(Lease(lease.mac, lease.ip, min(lease.expires, time.time()), lease.hostname))
            elif now_lease != lease:
                self._granted[mac] = now_lease
        for lease in self._granted.values():
            self._persist(lease)

    def _persist(self, lease: Lease) -> None:
        if self._persisted.get(lease.mac) == lease:
            return
        try:
            self.ctx.leases.persist(self.name, self._record(lease))
        except Exception as exc:
            log.warning("network %s: lease of %s could not be saved: %s", self.name, mac_to_str(lease.mac), exc)
            return
        self._persisted[lease.mac] = lease

    def leases(self) -> list[LeaseRecord]:
        """The leases in force (granted by an ACK and not yet expired or released), by MAC."""
        now = time.time()
        return [self._record(lease) for mac, lease in sorted(self._granted.items()) if lease.expires > now]

    # ------------------------------------------------------------------ status

    def info(self) -> dict[str, object]:
        net = self.net
        fwd = self.backend._forwarding
        out: dict[str, object] = {
            "name": self.name,
            "mode": self.mode,
            "forward": net.mode,
            "bridge": self.bridge,
            "mac": net.mac,
            "mtu": net.mtu,
            "addresses": [f"{ip.address}/{ip.prefixlen}" for ip in net.ips],
            "nftables_table": self._undo.table and f"inet {self._undo.table}",
            "ip_forward_enabled_by_vmlan": [k for k in self._undo.forwarding if fwd.changed(k)],
            "taps": {t.name: {"mac": t.mac, "owner_uid": t.owner_uid} for t in self.taps.values()},
            "leases": len(self.leases()),
            "active": not self._stopped,
        }
        if self.services is not None:
            out["services"] = self.services.counters()
        return out

    # ------------------------------------------------------------------ stop

    async def stop(self) -> None:
        """Remove the services, TAPs, firewall table, forwarding and bridge. Raises PrivilegedError after
        doing all it could when some step failed."""
        if self._stopped:
            return
        self._stopped = True
        self.backend.networks.pop(self.name, None)
        problems = await self._teardown()
        log.info("network %s: stopped", self.name)
        if problems:
            raise PrivilegedError(f"network '{self.name}': " + "; ".join(problems))

    async def _teardown(self) -> list[str]:
        undo = self._undo
        problems: list[str] = []
        self._stopped = True
        if undo.services is not None:
            undo.services.close()
            undo.services = None
        self.services = None
        for name in list(self.taps):
            try:
                await hostnet.in_thread(functools.partial(hostnet.delete_link, name))
            except HostNetError as exc:
                problems.append(exc.strerror or str(exc))
            self.taps.pop(name, None)
        if undo.table is not None:
            try:
                await run_nft(delete_script(undo.table), nft=self.backend.nft)
                undo.table = None
            except NftError as exc:
                problems.append(str(exc))
        for key in reversed(undo.forwarding):
            with contextlib.suppress(OSError):
                self.backend._forwarding.release(key)
        undo.forwarding.clear()
        if undo.bridge is not None:
            try:
                await hostnet.in_thread(functools.partial(hostnet.delete_link, undo.bridge))
                undo.bridge = None
            except HostNetError as exc:
                problems.append(exc.strerror or str(exc))
        return problems



if TYPE_CHECKING:  # the daemon's protocols, checked by mypy
    from vmlan.control.backends import NetworkBackend, RunningNetwork

    def _conforms(backend: PrivilegedBackend, running: PrivilegedNetwork) -> tuple[NetworkBackend, RunningNetwork]:
        return backend, running
