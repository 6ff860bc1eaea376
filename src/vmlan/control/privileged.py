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
   leases restored from ``ctx.leases`` and every change persisted there; ``lease-granted`` and
   ``lease-expired`` events through ``ctx.events``.

A failure at any step undoes the steps before it and raises :class:`PrivilegedError` (one line).
:meth:`PrivilegedNetwork.stop` removes everything in reverse: services, TAPs, firewall table,
forwarding, bridge. ``<forward mode='bridge'>`` networks use a bridge of the host's
(``<bridge name>``, which must exist): only the guests' TAPs are vmlan's there.

Guests (:meth:`PrivilegedNetwork.attach`): a persistent TAP ``vnetN`` per interface, owned by the
guest's user so an unprivileged QEMU opens it by name. N comes from a counter of the backend that
only goes up, skipping names in use (libvirt's virNetDevGenerateName); an interface's own
``<target dev>`` is used as given. The TAP's MAC is the guest's with the first byte 0xFE; its MTU is
the interface's ``<mtu>``, else the bridge's.

Surviving the daemon (libvirt leaves its networks up when libvirtd restarts): a started network
leaves a note in ``<runtime_dir>/privileged/<bridge>.json`` (a tmpfs: gone at reboot, like the
bridge) with the network's name, UUID, the boot ID and the sysctl values it found. When the daemon
dies, or lets go with :meth:`PrivilegedNetwork.release`, bridge, TAPs, rules and forwarding stay and
the guests keep their wires; a later :meth:`PrivilegedBackend.start` of the same network in the same
boot adopts the bridge the note names instead of refusing a name in use, replaces the table, and
serves DHCP and DNS again; :meth:`PrivilegedNetwork.restore` takes each guest's TAP back. A bridge
without such a note is someone else's and is never touched.

Everything runs on the daemon's event loop thread, in that thread's network namespace (tests run a
backend on a thread inside a namespace of their own). rtnetlink work goes to short helper threads
started from it, since pyroute2's synchronous API cannot run on a thread with a running loop:
:meth:`attach`, :meth:`detach`, :meth:`restore` and :meth:`set_link` block the loop for those few
milliseconds (the contract makes them synchronous); :meth:`PrivilegedBackend.start` and
:meth:`PrivilegedNetwork.stop` await them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import ipaddress
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv6Interface
from pathlib import Path
from typing import TYPE_CHECKING

from vmlan.config.libvirt import Interface, Network
from vmlan.config.libvirt.interface import AUTO_TARGET_PREFIXES
from vmlan.config.libvirt.mac import format_mac
from vmlan.control.backends import AttachResult, BackendError, LeaseRecord, NetworkContext
from vmlan.control.netservices import DhcpPlan, DnsPlan, ServiceConfigError, dhcp_plan, dns_plan
from vmlan.engines.dhcp import DhcpError, DhcpServer, Lease
from vmlan.engines.dns import DnsError, DnsForwarder
from vmlan.io import hostnet
from vmlan.io.bridge_services import BridgeServices
from vmlan.io.hostnet import BridgeSpec, HostNetError, LinkInfo
from vmlan.io.nft import NftError, apply_script, delete_script, find_nft, run_nft, table_name
from vmlan.io.tap import TUN_DEVICE
from vmlan.wire.errors import WireError
from vmlan.wire.ethernet import mac_from_str, mac_to_str
from vmlan.wire.ipv4 import ipv4_from_str, ipv4_to_str

log = logging.getLogger("vmlan")

__all__ = ["PrivilegedBackend", "PrivilegedError", "PrivilegedNetwork", "Tap"]

RESOLV_CONF = "/etc/resolv.conf"
TAP_PREFIX = "vnet"
MAX_TAP_TRIES = 1024  # names skipped before giving up
CAP_NET_ADMIN = 12
IPV4_FORWARD = "ipv4/ip_forward"
IPV6_FORWARD = "ipv6/conf/all/forwarding"
NOTE_DIR = "privileged"
_VNET = re.compile(rf"{TAP_PREFIX}(\d+)")


class PrivilegedError(BackendError):
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
    """Who needs a forwarding sysctl: switched on by the first user, put back after the last."""

    def __init__(self) -> None:
        self._users: dict[str, int] = {}
        self._saved: dict[str, str] = {}

    def acquire(self, key: str, found: str | None = None) -> bool:
        """Count a user of ``key``; True if this call switched it on. ``found``: the value an earlier
        daemon found before it switched it on (from its note), to put back in the end."""
        count = self._users.get(key, 0)
        self._users[key] = count + 1
        if found is not None and found != "1":
            self._saved.setdefault(key, found)
        if count:
            return False
        current = hostnet.read_sysctl(key)
        if current == "1":
            return False
        hostnet.write_sysctl(key, "1")
        self._saved[key] = current
        return True

    def release(self, key: str, restore: bool = True) -> None:
        """One user less; the last one puts the old value back (unless ``restore`` is False: the
        network stays up without the daemon, and its note remembers the old value)."""
        count = self._users.get(key, 0)
        if count > 1:
            self._users[key] = count - 1
            return
        self._users.pop(key, None)
        saved = self._saved.pop(key, None)
        if restore and saved is not None and hostnet.read_sysctl(key) == "1":
            hostnet.write_sysctl(key, saved)

    def saved(self, key: str) -> str | None:
        return self._saved.get(key)

    def restore_unused(self, key: str, value: str) -> None:
        """Put ``value`` back unless some network of this backend still needs the sysctl."""
        if not self._users.get(key) and value != "1" and hostnet.read_sysctl(key) == "1":
            hostnet.write_sysctl(key, value)


@dataclass(frozen=True, slots=True)
class Tap:
    name: str
    mac: str
    owner_uid: int
    mtu: int | None


@dataclass(slots=True)
class _Undo:
    """What a started (or half-started) network has to take down."""

    bridge: str | None = None
    table: str | None = None
    forwarding: list[str] = field(default_factory=list)
    services: BridgeServices | None = None
    note: Path | None = None
    found: dict[str, str] = field(default_factory=dict)  # sysctl values an earlier daemon found (its note)


class PrivilegedBackend:
    """The ``privileged`` backend: Linux bridges, TAPs and nftables (needs root or CAP_NET_ADMIN)."""

    mode = "privileged"

    def __init__(self, *, nft: str | None = None, resolv_conf: str = RESOLV_CONF) -> None:
        self.nft = nft
        self.resolv_conf = resolv_conf
        self.next_tap = 0
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
        """Bring the network up, or adopt it (see the module docstring). Raises PrivilegedError, having
        undone everything."""
        if net.name in self.networks:
            raise PrivilegedError("the network is already active")
        if not net.has_host_bridge:
            return await self._start_host_bridge(net, ctx)
        note: dict[str, object] | None = None
        try:
            in_use = await hostnet.in_thread(hostnet.link_names)
            live = net
            if net.bridge is None or "%d" in net.bridge or net.mac is None:
                live = net.live(in_use - {net.bridge} if net.bridge else in_use)
            assert live.bridge is not None
            if live.bridge in in_use:
                note = await self._adoptable(live, ctx)
                if note is None:
                    raise PrivilegedError(f"bridge name '{live.bridge}' already in use.")
            dhcp = dhcp_plan(live)
            dns = dns_plan(live, self._resolv_text())
        except (ServiceConfigError, BackendError) as exc:
            raise PrivilegedError(str(exc)) from None
        except Exception as exc:  # the libvirt layer's InternalError for virbr%d exhaustion, say
            raise PrivilegedError(str(exc)) from None
        for what in (dhcp.ignored if dhcp else ()) + (dns.ignored if dns else ()):
            log.warning("network %s: %s is not supported by vmlan's DHCP/DNS and is ignored", net.name, what)
        undo = _Undo()
        running = PrivilegedNetwork(self, live, ctx, undo, dns)
        try:
            await self._bring_up(running, undo, dhcp, dns, note)
        except BaseException as exc:
            await running._teardown()
            if isinstance(exc, PrivilegedError):
                raise
            if isinstance(exc, OSError):
                raise PrivilegedError(exc.strerror or str(exc)) from None
            if isinstance(exc, (NftError, DhcpError)):
                raise PrivilegedError(str(exc)) from None
            raise
        self.networks[live.name] = running
        log.info("network %s: %s bridge %s (%s)", live.name, "adopted" if note else "started on", live.bridge,
                 live.mode)
        return running

    async def _start_host_bridge(self, net: Network, ctx: NetworkContext) -> PrivilegedNetwork:
        """``<forward mode='bridge'>``: guests' TAPs go on a bridge of the host's; nothing else is set up
        (libvirt too leaves addresses, DHCP and firewall to the host there)."""
        assert net.bridge is not None  # the parser insists on a name for this mode
        info = await hostnet.in_thread(functools.partial(hostnet.link_info, net.bridge))
        if info is None or info.kind != "bridge":
            what = "does not exist" if info is None else f"is not a bridge (link kind {info.kind or 'none'})"
            raise PrivilegedError(f"host bridge {net.bridge} {what}")
        running = PrivilegedNetwork(self, net, ctx, _Undo(), None)
        self.networks[net.name] = running
        log.info("network %s: guests join the host's bridge %s", net.name, net.bridge)
        return running

    async def _adoptable(self, net: Network, ctx: NetworkContext) -> dict[str, object] | None:
        """The note of an earlier vmlan that left this network's bridge up in this boot, or None."""
        assert net.bridge is not None
        note = _read_note(_note_path(ctx, net.bridge))
        if note is None or not ctx.boot_id or note.get("boot_id") != ctx.boot_id:
            return None
        if note.get("network") != net.name or note.get("uuid") != str(net.uuid):
            return None
        info = await hostnet.in_thread(functools.partial(hostnet.link_info, net.bridge))
        if info is None or info.kind != "bridge" or info.index != note.get("ifindex"):
            return None
        return note

    async def _bring_up(self, running: PrivilegedNetwork, undo: _Undo, dhcp: DhcpPlan | None,
                        dns: DnsPlan | None, note: dict[str, object] | None) -> None:
        net = running.net
        assert net.bridge is not None
        addresses: list[IPv4Interface | IPv6Interface] = [
            ipaddress.ip_interface(f"{ip.address}/{ip.prefixlen}") for ip in net.ips]
        has_v6 = any(a.version == 6 for a in addresses)
        spec = BridgeSpec(net.bridge, stp=net.stp, delay=net.delay, mtu=net.mtu, mac=net.mac,
                          addresses=tuple(addresses), ipv6=has_v6 or net.ipv6)
        found = note.get("sysctls", {}) if note is not None else {}
        assert isinstance(found, dict)
        if note is None:
            index = await hostnet.in_thread(functools.partial(hostnet.create_bridge, spec))
            undo.bridge = net.bridge
            undo.note = _note_path(running.ctx, net.bridge)
        else:
            # all of it is ours: should adopting fail, the teardown takes it away rather than leave it orphaned
            undo.bridge, undo.note = net.bridge, _note_path(running.ctx, net.bridge)
            undo.table = table_name(net.bridge)
            undo.found = {str(k): str(v) for k, v in found.items()}
            ports = await hostnet.in_thread(functools.partial(hostnet.bridge_ports, net.bridge))
            running._orphans = {p.name: p for p in ports if p.kind == "tun"}
            names = await hostnet.in_thread(hostnet.link_names)
            used = [int(m.group(1)) for m in map(_VNET.fullmatch, names) if m]
            self.next_tap = max([self.next_tap, *(n + 1 for n in used)])
            index = await hostnet.in_thread(functools.partial(hostnet.adopt_bridge, spec))
        script = apply_script(net)
        if script is not None:
            undo.table = table_name(net.bridge)
            await run_nft(script, nft=self.nft)
        if net.forward is not None and net.forward.mode in ("nat", "route", "open"):
            for key in [IPV4_FORWARD] + ([IPV6_FORWARD] if has_v6 else []):
                undo.forwarding.append(key)
                try:
                    if self._forwarding.acquire(key, found.get(key)):
                        log.info("network %s: enabled %s", net.name, key.replace("/", "."))
                except OSError as exc:
                    raise PrivilegedError(f"cannot enable IP forwarding ({key}): {exc.strerror or exc}") from None
        running._write_note(index)
        server = None
        if dhcp is not None:
            server = DhcpServer(dhcp.config, running._restored_leases(), in_use=dhcp.in_use)
            if server.stats.leases_dropped:
                log.info("network %s: %d saved leases no longer fit and were dropped", net.name,
                         server.stats.leases_dropped)
        forwarder = DnsForwarder(dns.config) if dns is not None else None
        if server is not None or forwarder is not None:
            services = BridgeServices(
                running.ctx.loop, net.bridge, dhcp=server, dns=forwarder,
                dns_listen=dns.listen if dns is not None else (),
                on_lease=running._on_lease, on_leases_changed=running._on_leases_changed,
            )
            undo.services = services
            services.start()
            running.services = services
        running._leases_started()

    def _resolv_text(self) -> str:
        try:
            with open(self.resolv_conf) as fh:
                return fh.read(1024 * 1024)
        except OSError:
            return ""

    def _next_tap_name(self) -> str:
        name = f"{TAP_PREFIX}{self.next_tap}"
        self.next_tap += 1
        return name


def _note_path(ctx: NetworkContext, bridge: str) -> Path:
    return Path(ctx.runtime_dir) / NOTE_DIR / f"{bridge}.json"


def _read_note(path: Path) -> dict[str, object] | None:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class PrivilegedNetwork:
    """A started privileged network (the contract's RunningNetwork, with LinkControl, Restorable and
    DnsRecords)."""

    mode = "privileged"

    def __init__(self, backend: PrivilegedBackend, net: Network, ctx: NetworkContext, undo: _Undo,
                 dns: DnsPlan | None) -> None:
        self.backend = backend
        self.net = net
        self.ctx = ctx
        self.name = net.name
        self.bridge: str | None = net.bridge
        self.taps: dict[str, Tap] = {}
        self.services: BridgeServices | None = None
        self.extra_names: dict[str, list[str]] = {}
        self._dns_plan = dns
        self._undo = undo
        self._orphans: dict[str, LinkInfo] = {}  # TAPs on an adopted bridge not restored yet
        self._known: dict[str, LeaseRecord] = {}  # the leases as last persisted, by MAC text
        self._granted: set[str] = set()  # MACs that were ACKed an address (not merely offered one)
        self._expired: set[str] = set()
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._stopped = False

    # ------------------------------------------------------------------ guests

    def attach(self, iface: Interface, owner_uid: int) -> AttachResult:
        """Create the guest's TAP on the bridge; raises PrivilegedError."""
        self._check_active()
        if iface.type not in ("network", "bridge"):
            raise PrivilegedError(f"interface type '{iface.type}' cannot be attached to network '{self.name}'")
        bridge = self.bridge
        assert bridge is not None
        mac = format_mac(b"\xfe" + iface.mac_bytes[1:])
        chosen = iface.target if iface.target and not iface.target.startswith(AUTO_TARGET_PREFIXES) else None
        last: HostNetError | None = None
        for _ in range(1 if chosen else MAX_TAP_TRIES):
            name = chosen or self.backend._next_tap_name()
            try:
                hostnet.off_loop(functools.partial(hostnet.create_tap, name, owner_uid=owner_uid, mac=mac,
                                                   bridge=bridge, mtu=iface.mtu, up=iface.link_up))
            except HostNetError as exc:
                if exc.errno == errno.EBUSY and not chosen:
                    last = exc
                    continue  # the name is in use: libvirt skips it too
                raise PrivilegedError(f"network '{self.name}': {exc.strerror or exc}") from None
            self.taps[name] = Tap(name, mac, owner_uid, iface.mtu)
            log.info("network %s: %s for %s (owner uid %d)", self.name, name, iface.mac, owner_uid)
            return AttachResult(netdev=tap_netdev(name), target=name)
        raise PrivilegedError(f"network '{self.name}': no free {TAP_PREFIX}N name: "
                              f"{last.strerror if last else 'all in use'}")

    def preview(self, iface: Interface) -> str:
        """The ``-netdev`` value :meth:`attach` would return now (domxml-to-native); nothing is set up."""
        chosen = iface.target if iface.target and not iface.target.startswith(AUTO_TARGET_PREFIXES) else None
        return tap_netdev(chosen or f"{TAP_PREFIX}{self.backend.next_tap}")

    def restore(self, iface: Interface, owner_uid: int, result: AttachResult) -> None:
        """Take back a TAP an earlier daemon made for this guest (it is still on the adopted bridge)."""
        self._check_active()
        name = result.target
        if name in self.taps:
            return
        found = self._orphans.pop(name, None)
        if found is None:
            raise PrivilegedError(f"network '{self.name}': {name} is no longer on bridge {self.bridge}")
        self.taps[name] = Tap(name, found.mac, owner_uid, iface.mtu)

    def detach(self, target: str) -> None:
        """Delete the TAP ``target`` (attached by this network); a TAP already gone is fine."""
        if target not in self.taps:
            raise PrivilegedError(f"no interface '{target}' is attached to network '{self.name}'")
        try:
            hostnet.off_loop(functools.partial(hostnet.delete_link, target))
        except HostNetError as exc:
            raise PrivilegedError(f"network '{self.name}': {exc.strerror or exc}") from None
        del self.taps[target]

    def set_link(self, target: str, up: bool) -> None:
        """The host side of ``<link state>``: the TAP up or down (the guest's side is QEMU's set_link)."""
        tap = self.taps.get(target)
        if tap is None:
            raise PrivilegedError(f"no interface '{target}' is attached to network '{self.name}'")
        try:
            hostnet.off_loop(functools.partial(hostnet.set_link_up, target, up))
        except HostNetError as exc:
            raise PrivilegedError(f"network '{self.name}': {exc.strerror or exc}") from None
        self.ctx.events("link-up" if up else "link-down", {"network": self.name, "target": target, "mac": tap.mac})

    def _check_active(self) -> None:
        if self._stopped:
            raise PrivilegedError(f"network '{self.name}' is not active")

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
        self._known = {r.mac: r for r in records}
        self._granted = {mac_to_str(lease.mac) for lease in out}
        return out

    def _leases_started(self) -> None:
        """After the DHCP server took the saved leases: save what it kept (and forget what it dropped)."""
        self._known_sync(initial=True)

    def _server(self) -> DhcpServer | None:
        return self.services.dhcp if self.services is not None else None

    def _current(self) -> dict[str, LeaseRecord]:
        """Every lease the server remembers that was granted (not just offered), by MAC."""
        server = self._server()
        if server is None:
            return {}
        out: dict[str, LeaseRecord] = {}
        for lease in server.leases():
            mac = mac_to_str(lease.mac)
            if mac in self._granted:
                out[mac] = LeaseRecord(mac=mac, ip=ipv4_to_str(lease.ip), hostname=lease.hostname,
                                       expires=lease.expires)
        return out

    def _known_sync(self, initial: bool = False) -> None:
        current = self._current()
        self._granted &= set(current)  # MACs whose address went to another: forgotten (bounded by the pool)
        changed = [r for mac, r in current.items() if self._known.get(mac) != r]
        gone = [mac for mac in self._known if mac not in current]
        if changed or gone:
            try:
                self.ctx.leases.persist_many(self.name, changed, gone)
            except Exception as exc:
                log.warning("network %s: leases could not be saved: %s", self.name, exc)
                return
        self._known = current
        if initial:
            now = time.time()
            self._expired = {mac for mac, r in current.items() if r.expires <= now}
        self._arm_expiry()

    def _on_lease(self, lease: Lease) -> None:
        mac = mac_to_str(lease.mac)
        self._granted.add(mac)
        self._expired.discard(mac)
        self.ctx.events("lease-granted", {"network": self.name, "mac": mac, "ip": ipv4_to_str(lease.ip),
                                          "hostname": lease.hostname, "expires": lease.expires})

    def _on_leases_changed(self) -> None:
        if not self._stopped:
            self._known_sync()

    def _arm_expiry(self) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        pending = [r.expires for mac, r in self._known.items() if mac not in self._expired]
        if pending and not self._stopped:
            delay = max(0.0, min(pending) - time.time()) + 0.01
            self._expiry_timer = self.ctx.loop.call_later(delay, self._expiry_due)

    def _expiry_due(self) -> None:
        self._expiry_timer = None
        now = time.time()
        for mac, r in self._known.items():
            if mac not in self._expired and r.expires <= now:
                self._expired.add(mac)
                self.ctx.events("lease-expired", {"network": self.name, "mac": mac, "ip": r.ip})
        self._arm_expiry()

    def leases(self) -> list[LeaseRecord]:
        """The leases in force (granted and not yet expired or released), by MAC."""
        now = time.time()
        return [r for _, r in sorted(self._current().items()) if r.expires > now]

    # ------------------------------------------------------------------ DNS names (DnsRecords)

    def dns_records(self) -> dict[str, list[str]]:
        table: dict[str, list[str]] = {}
        plan = self._dns_plan
        if plan is not None:
            for name, addrs in plan.config.static.items():
                table.setdefault(name, []).extend(addrs)
        for name, addrs in self.extra_names.items():
            entry = table.setdefault(name, [])
            entry.extend(a for a in addrs if a not in entry)
        return dict(sorted(table.items()))

    def set_dns_records(self, added: dict[str, list[str]]) -> None:
        plan = self._dns_plan
        services = self.services
        if plan is None or services is None or services.dns is None:
            raise PrivilegedError(f"network '{self.name}' serves no DNS")
        extra = {k: list(v) for k, v in added.items()}
        for name, addrs in extra.items():
            for addr in addrs:
                try:
                    IPv4Address(addr)
                except ValueError:
                    raise PrivilegedError(f"DNS record {name}: '{addr}' is not an IPv4 address") from None
        old = self.extra_names
        self.extra_names = extra
        try:
            config = dataclasses.replace(plan.config, static=self.dns_records())
        except DnsError as exc:
            self.extra_names = old
            raise PrivilegedError(f"network '{self.name}': {exc}") from None
        services.set_dns(DnsForwarder(config))

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
            "nftables_table": f"inet {self._undo.table}" if self._undo.table else None,
            "ip_forward_enabled_by_vmlan": [k for k in self._undo.forwarding if fwd.saved(k) is not None],
            "attached": sorted(self.taps),
            "taps": {t.name: {"mac": t.mac, "owner_uid": t.owner_uid} for t in self.taps.values()},
            "leases": len(self.leases()),
            "active": not self._stopped,
        }
        if self.services is not None:
            out["services"] = self.services.counters()
        return out

    # ------------------------------------------------------------------ adoption note

    def _write_note(self, ifindex: int) -> None:
        path = self._undo.note
        if path is None or not self.ctx.boot_id:
            return
        fwd = self.backend._forwarding
        sysctls = {k: v for k in self._undo.forwarding if (v := fwd.saved(k)) is not None}
        note = {"network": self.name, "uuid": str(self.net.uuid), "boot_id": self.ctx.boot_id,
                "bridge": self.bridge, "ifindex": ifindex, "table": self._undo.table, "sysctls": sysctls}
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w") as fh:
                json.dump(note, fh)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("network %s: cannot write %s (a restarted daemon will not adopt the bridge): %s",
                        self.name, path, exc.strerror or exc)

    # ------------------------------------------------------------------ stop

    async def stop(self) -> None:
        """Remove the services, TAPs, firewall table, forwarding and bridge. Raises PrivilegedError after
        doing all it could when some step failed."""
        if self._stopped:
            return
        self._close_services()
        problems = await self._teardown()
        log.info("network %s: stopped", self.name)
        if problems:
            raise PrivilegedError(f"network '{self.name}': " + "; ".join(problems))

    async def release(self) -> None:
        """Let go of the network without taking it down (the daemon is restarting): close vmlan's
        sockets and timers; bridge, TAPs, rules and forwarding stay for the next daemon to adopt."""
        if self._stopped:
            return
        self._close_services()
        for key in self._undo.forwarding:
            self.backend._forwarding.release(key, restore=False)
        self._undo.forwarding.clear()
        log.info("network %s: released (bridge %s stays up)", self.name, self.bridge)

    def _close_services(self) -> None:
        if not self._stopped and self.services is not None:
            self._known_sync()
        self._stopped = True
        self.backend.networks.pop(self.name, None)
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        if self._undo.services is not None:
            self._undo.services.close()
            self._undo.services = None
        self.services = None

    async def _teardown(self) -> list[str]:
        undo = self._undo
        problems: list[str] = []
        self._close_services()
        for name in [*self.taps, *self._orphans]:
            try:
                await hostnet.in_thread(functools.partial(hostnet.delete_link, name))
            except HostNetError as exc:
                problems.append(exc.strerror or str(exc))
        self.taps.clear()
        self._orphans.clear()
        if undo.table is not None:
            try:
                await run_nft(delete_script(undo.table), nft=self.backend.nft)
                undo.table = None
            except NftError as exc:
                problems.append(str(exc))
        for key in reversed(undo.forwarding):
            with contextlib.suppress(OSError):
                self.backend._forwarding.release(key)
        for key, value in undo.found.items():
            if key not in undo.forwarding:  # adopting failed before it took over: put it back all the same
                with contextlib.suppress(OSError):
                    self.backend._forwarding.restore_unused(key, value)
        undo.forwarding.clear()
        undo.found.clear()
        if undo.bridge is not None:
            try:
                await hostnet.in_thread(functools.partial(hostnet.delete_link, undo.bridge))
                undo.bridge = None
            except HostNetError as exc:
                problems.append(exc.strerror or str(exc))
        if undo.note is not None:
            with contextlib.suppress(OSError):
                undo.note.unlink()
        return problems


def tap_netdev(name: str) -> str:
    """The ``-netdev`` value (without ``id=``) that opens the persistent TAP ``name``."""
    return f"tap,ifname={name},script=no,downscript=no"


if TYPE_CHECKING:  # the daemon's protocols, checked by mypy
    from vmlan.control.backends import DnsRecords, LinkControl, NetworkBackend, Restorable, RunningNetwork

    def _conforms(backend: PrivilegedBackend, running: PrivilegedNetwork
                  ) -> tuple[NetworkBackend, RunningNetwork, LinkControl, Restorable, DnsRecords]:
        return backend, running, running, running, running
