"""The daemon's core: defined and running networks, guests' interfaces, the monitor, events.

:class:`Daemon` is what the API calls. Every method runs on the event loop's thread and is quick; each
change is committed to the state store (SQLite, WAL, synchronous=FULL) before it returns, so what the
API acknowledged survives a ``kill -9``. Errors are :class:`DaemonError` with an HTTP status and
libvirt's message ("Network not found: no network with matching name 'x'", "Requested operation is
not valid: network 'x' is not active", ...).

Start-up (:meth:`Daemon.open`): the state is opened; on the very first start the default network
(libvirt's ``default.xml``) is defined and marked autostart, as libvirt's packages ship it; then every
network that was running when the daemon last stopped in this same boot (a crash or a restart: its
guests may still run) and every autostart network is started, and the guests that were attached in
this boot are connected again, keeping their addresses (leases are fed back to the DHCP server).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shlex
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from vmlan.config.cmdline import RunConfig
from vmlan.config.errors import ConfigError
from vmlan.config.libvirt import (
    DEFAULT_MODEL,
    DEFAULT_NETWORK_XML,
    Interface,
    LibvirtError,
    Network,
    parse_interfaces,
    parse_network,
    qemu_args,
)
from vmlan.config.netdev import parse_netdev
from vmlan.config.usernet import UserNetdev, parse_hostfwd_rule
from vmlan.control.backends import (
    AttachResult,
    BackendError,
    DnsRecords,
    Forwarding,
    ForwardRule,
    LeaseRecord,
    LinkControl,
    Monitor,
    NetworkBackend,
    NetworkContext,
    Restorable,
    RunningNetwork,
)
from vmlan.control.paths import boot_id, private_dir
from vmlan.control.rootless import RootlessBackend, RootlessNetwork
from vmlan.control.state import AttachmentRow, ForwardRow, NetworkRow, StateStore
from vmlan.io.errors import LinkError
from vmlan.io.runtime import Runtime
from vmlan.io.usernet import UserNetPort
from vmlan.lan import Hub, Port, make_lan

log = logging.getLogger("vmlan")

MODES = ("auto", "rootless", "privileged")
EVENT_QUEUE = 1024


class DaemonError(Exception):
    """An error for the API: ``status`` (400, 404, 409, ...) and libvirt's one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def not_found(name: str) -> DaemonError:
    return DaemonError(404, f"Network not found: no network with matching name '{name}'")


def not_active(name: str) -> DaemonError:
    return DaemonError(409, f"Requested operation is not valid: network '{name}' is not active")


class DaemonRuntime(Runtime):
    """The links registry, plus what a daemon needs that ``vmlan run`` does not: hubs made and
    removed while it runs, and links built outside the registry (the networks' stacks)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(RunConfig(), loop)

    def free_hubid(self) -> int:
        hubid = 1000
        while hubid in self.hubs or any(link.cfg.hubid == hubid for link in self.links.values()):
            hubid += 1
        return hubid

    def add_hub(self, hubid: int, mode: str = "switch", aging: float = 300.0) -> Hub:
        if hubid in self.hubs:
            raise LinkError(f"hub {hubid} already exists")
        hub = make_lan(hubid, mode, aging)
        self.hubs[hubid] = hub
        self.hubs = dict(sorted(self.hubs.items()))
        self._configured_hubs.add(hubid)
        return hub

    def remove_hub(self, hubid: int) -> None:
        for ident in [i for i, link in self.links.items() if link.cfg.hubid == hubid]:
            self.remove(ident)
        self._configured_hubs.discard(hubid)
        self.hubs.pop(hubid, None)

    def add_link(self, link: UserNetPort) -> None:
        """Register a user-mode stack built by the caller and put it on its hub."""
        ident = link.cfg.id
        if ident in self.links:
            link.close()
            raise LinkError(f"Duplicate ID '{ident}' for netdev")
        hub = self.hubs.get(link.cfg.hubid)
        if hub is None:
            hub = self.add_hub(link.cfg.hubid, "hub")
        hub.attach(link)
        self.links[ident] = link
        self._new_ports(ident, link.ports)


@dataclass
class Defined:
    """One network known to the daemon."""

    net: Network  # as net-dumpxml shows it (bridge name and MAC filled in)
    row: NetworkRow

    @property
    def name(self) -> str:
        return self.net.name


class Subscriber:
    """An event stream's queue; a reader too slow to keep up loses the oldest events (counted)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, dict[str, object]]] = asyncio.Queue(EVENT_QUEUE)
        self.lost = 0

    def put(self, kind: str, data: dict[str, object]) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.lost += 1
        self.queue.put_nowait((kind, data))


def _load_privileged() -> NetworkBackend | None:
    import importlib

    try:
        privileged = importlib.import_module("vmlan.control.privileged")
    except ImportError:
        return None
    backend: NetworkBackend = privileged.PrivilegedBackend()
    return backend


class Daemon:
    """See the module docstring. ``auto_mode`` is what ``--mode=auto`` resolves to when the privileged
    backend is not available (and, if "rootless", always: ``vmlan daemon --auto-mode rootless``)."""

    def __init__(self, state_dir: Path, runtime_dir: Path, loop: asyncio.AbstractEventLoop, *,
                 auto_mode: str = "auto", backends: dict[str, NetworkBackend] | None = None) -> None:
        self.state_dir = state_dir
        self.runtime_dir = runtime_dir
        self.loop = loop
        self.auto_mode = auto_mode
        self.boot = boot_id()
        self.uid = os.geteuid()
        self.store: StateStore | None = None
        self.runtime = DaemonRuntime(loop)
        if backends is None:
            backends = {"rootless": RootlessBackend()}
            privileged = _load_privileged()
            if privileged is not None:
                backends["privileged"] = privileged
        self.backends = backends
        self.defined: dict[str, Defined] = {}
        self.running: dict[str, RunningNetwork] = {}
        self.subscribers: set[Subscriber] = set()
        self.started_at = time.time()

    # -- lifecycle -------------------------------------------------------------------------------------
    @property
    def state(self) -> StateStore:
        assert self.store is not None, "daemon not opened"
        return self.store

    async def open(self) -> None:
        private_dir(self.state_dir)
        private_dir(self.runtime_dir)
        self.store = StateStore(self.state_dir / "vmlan.db")
        if self.state.meta("initialized") is None:
            net = parse_network(DEFAULT_NETWORK_XML)
            self._define(net, "auto", persistent=True, autostart=True)
            self.state.set_meta("initialized", str(int(time.time())))
        for row in self.state.networks():
            try:
                net = parse_network(row.xml)
            except LibvirtError as exc:
                log.error("network %s: stored definition no longer valid (%s): skipped", row.name, exc)
                continue
            self.defined[row.name] = Defined(net, row)
        for d in list(self.defined.values()):
            was_running = d.row.active_boot is not None and d.row.active_boot == self.boot
            if not d.row.persistent and not was_running:
                self.state.delete_network(d.name)  # a transient network of an earlier boot
                del self.defined[d.name]
                continue
            if was_running or d.row.autostart:
                try:
                    await self.start(d.name)
                except DaemonError as exc:
                    log.error("network %s: cannot start: %s", d.name, exc.message)
                    self.state.set_active(d.name, None, None)
        self._restore_attachments()

    def _restore_attachments(self) -> None:
        for row in self.state.attachments():
            running = self.running.get(row.network)
            if row.boot != self.boot or running is None or not isinstance(running, Restorable):
                self.state.remove_attachment(row.target)
                continue
            iface = Interface(type="network", mac=row.mac, network=row.network, model=row.model,
                              link_state=None if row.link_up else "down")
            try:
                running.restore(iface, row.owner_uid, AttachResult(row.netdev, row.target))
            except BackendError as exc:
                log.error("network %s: cannot reconnect %s: %s", row.network, row.target, exc)
                self.state.remove_attachment(row.target)

    async def close(self) -> None:
        """The daemon is going away; the networks' state stays for a restart. A network that can live
        without the daemon (privileged: a kernel bridge, TAPs and rules) is released, as libvirt leaves its
        networks up across a libvirtd restart, and the next start in this boot adopts it; an in-process one
        (rootless) stops."""
        for name in list(self.running):
            running = self.running.pop(name)
            try:
                release = getattr(running, "release", None)
                if release is not None:
                    await release()
                else:
                    await running.stop()
            except Exception:
                log.exception("network %s: stopping failed", name)
        self.runtime.close()
        if self.store is not None:
            self.store.close()
            self.store = None

    # -- events ----------------------------------------------------------------------------------------
    def emit(self, kind: str, data: dict[str, object]) -> None:
        event = {"time": time.time(), **data}
        for sub in list(self.subscribers):
            sub.put(kind, event)

    def subscribe(self) -> Subscriber:
        sub = Subscriber()
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    # -- definitions -----------------------------------------------------------------------------------
    def get(self, name: str) -> Defined:
        d = self.defined.get(name)
        if d is None:
            raise not_found(name)
        return d

    def _bridges_in_use(self, except_name: str) -> set[str]:
        """Bridge names a new definition must not take: other definitions' and the host's interfaces
        (libvirt's virbr0 or docker0 may exist already)."""
        names = {d.net.bridge for d in self.defined.values() if d.name != except_name and d.net.bridge}
        try:
            from vmlan.io import hostnet

            names |= hostnet.off_loop(hostnet.link_names)
        except Exception:  # no netlink here (a sandbox): the definitions' own names still count
            log.debug("cannot list the host's interfaces", exc_info=True)
        return names

    def _define(self, net: Network, mode: str, *, persistent: bool, autostart: bool | None = None) -> Defined:
        if mode not in MODES:
            raise DaemonError(400, f"invalid argument: unknown mode '{mode}' (auto, rootless or privileged)")
        for other in self.defined.values():
            if other.name == net.name and other.net.uuid != net.uuid:
                raise DaemonError(409, f"operation failed: network '{net.name}' already exists with uuid "
                                       f"{other.net.uuid}")
            if other.name != net.name and other.net.uuid == net.uuid:
                raise DaemonError(409, f"operation failed: network '{other.name}' is already defined with uuid "
                                       f"{net.uuid}")
        old = self.defined.get(net.name)
        if old is not None and old.net.bridge and (net.bridge is None or "%d" in (net.bridge or "")):
            net = dataclasses.replace(net, bridge=old.net.bridge)
        if old is not None and old.net.mac and net.mac is None:
            net = dataclasses.replace(net, mac=old.net.mac)
        try:
            live = net.live(self._bridges_in_use(net.name))
        except LibvirtError as exc:
            raise DaemonError(400, str(exc)) from None
        row = NetworkRow(
            name=live.name,
            uuid=str(live.uuid),
            xml=live.to_xml(),
            autostart=(old.row.autostart if old is not None else False) if autostart is None else autostart,
            mode=mode,
            persistent=persistent or (old is not None and old.row.persistent),
            active_boot=old.row.active_boot if old is not None else None,
            backend=old.row.backend if old is not None else None,
        )
        self.state.put_network(row)
        d = Defined(live, row)
        self.defined[live.name] = d
        return d

    def define(self, xml: str, mode: str = "auto", docname: str = "(network_definition)") -> Defined:
        net = _parse_network(xml, docname)
        d = self._define(net, mode, persistent=True)
        log.info("network %s defined", d.name)
        return d

    async def create(self, xml: str, mode: str = "auto", docname: str = "(network_definition)") -> Defined:
        """net-create: a transient network, started at once (gone when destroyed)."""
        net = _parse_network(xml, docname)
        if net.name in self.defined:
            raise DaemonError(409, f"operation failed: network '{net.name}' already exists")
        d = self._define(net, mode, persistent=False)
        try:
            await self.start(d.name)
        except DaemonError:
            self.state.delete_network(d.name)
            del self.defined[d.name]
            raise
        return d

    def undefine(self, name: str) -> None:
        d = self.get(name)
        if name in self.running:  # libvirt: an active network stays, transient
            row = dataclasses.replace(d.row, persistent=False, autostart=False)
            self.state.put_network(row)
            d.row = row
        else:
            self.state.delete_network(name)
            del self.defined[name]
        log.info("network %s undefined", name)

    def set_autostart(self, name: str, autostart: bool) -> None:
        d = self.get(name)
        if not d.row.persistent:
            raise DaemonError(409, "Requested operation is not valid: cannot set autostart for transient network")
        self.state.set_autostart(name, autostart)
        d.row = dataclasses.replace(d.row, autostart=autostart)

    def backend_for(self, d: Defined) -> NetworkBackend:
        mode = d.row.mode
        if mode == "auto":
            privileged = self.backends.get("privileged")
            if self.auto_mode != "rootless" and privileged is not None and privileged.available():
                return privileged
            mode = "rootless"
        backend = self.backends.get(mode)
        if backend is None or not backend.available():
            raise DaemonError(409, f"unsupported configuration: the {mode} backend is not available here")
        return backend

    async def start(self, name: str) -> RunningNetwork:
        d = self.get(name)
        if name in self.running:
            raise DaemonError(409, "Requested operation is not valid: network is already active")
        backend = self.backend_for(d)
        ctx = NetworkContext(loop=self.loop, runtime=self.runtime, state_dir=self.state_dir, leases=self.state,
                             events=self.emit, runtime_dir=self.runtime_dir, boot_id=self.boot)
        try:
            running = await backend.start(d.net, ctx)
        except (BackendError, LinkError, ConfigError) as exc:
            raise DaemonError(409, f"internal error: network '{name}': {exc}") from None
        except OSError as exc:
            raise DaemonError(409, f"internal error: network '{name}': {exc.strerror or exc}") from None
        self.running[name] = running
        self.state.set_active(name, self.boot, running.mode)
        d.row = dataclasses.replace(d.row, active_boot=self.boot, backend=running.mode)
        self.emit("network-started", {"network": name, "mode": running.mode})
        log.info("network %s started (%s)", name, running.mode)
        return running

    async def destroy(self, name: str) -> None:
        d = self.get(name)
        running = self.running.pop(name, None)
        if running is None:
            raise not_active(name)
        try:
            await running.stop()
        finally:
            self.state.remove_attachments(name)
            if d.row.persistent:
                self.state.set_active(name, None, None)
                d.row = dataclasses.replace(d.row, active_boot=None, backend=None)
            else:
                self.state.delete_network(name)
                del self.defined[name]
            self.emit("network-stopped", {"network": name})
        log.info("network %s destroyed", name)

    def dumpxml(self, name: str, inactive: bool = False) -> str:
        return self.get(name).net.to_xml()

    def running_net(self, name: str) -> RunningNetwork:
        self.get(name)
        running = self.running.get(name)
        if running is None:
            raise not_active(name)
        return running

    def leases(self, name: str, mac: str | None = None) -> list[LeaseRecord]:
        """Active leases (as net-dhcp-leases: unexpired ones), sorted by MAC."""
        d = self.get(name)
        running = self.running.get(name)
        records = running.leases() if running is not None else self.state.load(d.name)
        now = time.time()
        out = [r for r in records if r.expires > now and (mac is None or r.mac == mac.lower())]
        return sorted(out, key=lambda r: r.mac)

    def prefix_of(self, name: str, ip: str) -> int:
        for nip in self.get(name).net.ips:
            try:
                if ip_in(ip, nip.network):
                    return nip.prefixlen
            except ValueError:
                continue
        return 24 if ":" not in ip else 64

    # -- guests ----------------------------------------------------------------------------------------
    def _network_for(self, iface: Interface) -> tuple[str, RunningNetwork] | None:
        if iface.type == "network":
            assert iface.network is not None
            return iface.network, self.running_net(iface.network)
        if iface.type == "bridge":
            for name, running in self.running.items():
                if running.bridge is not None and running.bridge == iface.bridge:
                    return name, running
        return None

    def attach(self, xml: str, owner_uid: int,
               docname: str = "(domain_definition)") -> tuple[list[str], list[dict[str, Any]]]:
        """Set up every interface of ``xml`` (a domain or one <interface>); the QEMU argv and what was done.
        All or nothing: a failing interface undoes the ones before it."""
        ifaces = _parse_interfaces(xml, docname)
        if not ifaces:
            raise DaemonError(400, "XML error: no <interface> to attach")
        done: list[tuple[str, RunningNetwork, str]] = []
        netdevs: dict[int, str] = {}
        report: list[dict[str, Any]] = []
        try:
            for index, iface in enumerate(ifaces):
                found = self._network_for(iface)
                entry: dict[str, Any] = {"index": index, "type": iface.type, "mac": iface.mac,
                                         "network": None, "target": None}
                if found is not None:
                    name, running = found
                    try:
                        result = running.attach(iface, owner_uid)
                    except BackendError as exc:
                        raise DaemonError(409, f"internal error: {exc}") from None
                    done.append((name, running, result.target))
                    netdevs[index] = result.netdev
                    self.state.add_attachment(AttachmentRow(
                        target=result.target, network=name, mac=iface.mac, model=iface.model,
                        link_up=iface.link_up, owner_uid=owner_uid, netdev=result.netdev, boot=self.boot))
                    entry.update(network=name, target=result.target)
                elif iface.type in ("bridge", "ethernet"):
                    netdevs[index] = _host_netdev(iface)
                report.append(entry)
            argv = qemu_args(ifaces, lambda iface, index: netdevs[index], DEFAULT_MODEL)
        except BaseException:
            for _name, running, target in reversed(done):
                with contextlib.suppress(Exception):
                    running.detach(target)
                self.state.remove_attachment(target)
            raise
        for entry in report:
            if entry["target"] is not None:
                self.emit("guest-attached", {"network": entry["network"], "target": entry["target"],
                                             "mac": entry["mac"]})
        return argv, report

    def detach(self, name: str, target: str) -> None:
        running = self.running_net(name)
        try:
            running.detach(target)
        except BackendError as exc:
            raise DaemonError(404, str(exc)) from None
        self.state.remove_attachment(target)

    def domxml_to_native(self, xml: str, docname: str = "(domain_definition)") -> list[str]:
        """The QEMU arguments of the interfaces, nothing set up (virsh domxml-to-native qemu-argv)."""
        ifaces = _parse_interfaces(xml, docname)
        fds = iter(range(3, 1 << 20))

        def resolve(iface: Interface, index: int) -> str:
            found = self._network_for(iface)
            if found is not None:
                _name, running = found
                preview = getattr(running, "preview", None)
                if callable(preview):
                    return str(preview(iface))
                return f"tap,fd={next(fds)}"  # what libvirt itself prints
            return _host_netdev(iface)

        try:
            return qemu_args(ifaces, resolve, DEFAULT_MODEL)
        except LibvirtError as exc:
            raise DaemonError(400, str(exc)) from None

    def set_link(self, name: str, up: bool) -> tuple[str, str]:
        """QEMU's set_link NAME on|off: NAME is an attachment target (or a netdev/port of the runtime)."""
        for net_name, running in self.running.items():
            if isinstance(running, LinkControl):
                try:
                    running.set_link(name, up)
                except BackendError:
                    continue
                self.state.set_attachment_link(name, up)
                return net_name, name
        for link in self.runtime.links.values():
            for port in link.ports:
                if port.name == name or link.cfg.id == name:
                    port.link_up = up
                    self.emit("link-up" if up else "link-down", {"network": None, "target": name})
                    return "", name
        raise DaemonError(404, f"Device '{name}' not found")

    # -- forwards, DNS ---------------------------------------------------------------------------------
    def _forwarding(self, name: str) -> Forwarding:
        running = self.running_net(name)
        if not isinstance(running, Forwarding):
            raise DaemonError(409, f"unsupported configuration: network '{name}' has no port forwards")
        return running

    def forwards(self, name: str) -> list[ForwardRule]:
        return self._forwarding(name).forwards()

    def add_forward(self, name: str, rule: ForwardRule) -> ForwardRule:
        fwd = self._forwarding(name)
        if rule.proto not in ("tcp", "udp"):
            raise DaemonError(400, f"invalid argument: protocol '{rule.proto}' (tcp or udp)")
        try:
            added = fwd.add_forward(rule)
        except BackendError as exc:
            raise DaemonError(409, str(exc)) from None
        self.state.add_forward(name, ForwardRow(added.proto, added.host_addr, added.host_port, added.guest_addr,
                                                added.guest_port))
        return added

    def remove_forward(self, name: str, proto: str, host_addr: str, host_port: int) -> bool:
        fwd = self._forwarding(name)
        removed = fwd.remove_forward(proto, host_addr, host_port)
        stored = self.state.remove_forward(name, proto, host_addr, host_port)
        if not stored and host_addr in ("", "0.0.0.0"):
            stored = self.state.remove_forward(name, proto, "0.0.0.0" if host_addr == "" else "", host_port)
        return removed or stored

    def _dns(self, name: str) -> DnsRecords:
        running = self.running_net(name)
        if not isinstance(running, DnsRecords):
            raise DaemonError(409, f"unsupported configuration: network '{name}' has no DNS records")
        return running

    def dns_records(self, name: str) -> dict[str, list[str]]:
        return self._dns(name).dns_records()

    def _added_names(self, name: str) -> dict[str, list[str]]:
        table: dict[str, list[str]] = {}
        for rec_name, ip in self.state.dns_records(name):
            table.setdefault(rec_name, []).append(ip)
        return table

    def add_dns_record(self, name: str, host: str, ip: str) -> None:
        dns = self._dns(name)
        host = _dns_name(host)
        _check_ipv4(ip)
        table = self._added_names(name)
        if ip in table.get(host, []):
            return
        table.setdefault(host, []).append(ip)
        try:
            dns.set_dns_records(table)
        except BackendError as exc:
            raise DaemonError(409, str(exc)) from None
        self.state.add_dns_record(name, host, ip)

    def remove_dns_record(self, name: str, host: str, ip: str | None) -> int:
        dns = self._dns(name)
        host = _dns_name(host)
        n = self.state.remove_dns_record(name, host, ip)
        if n:
            try:
                dns.set_dns_records(self._added_names(name))
            except BackendError as exc:
                raise DaemonError(409, str(exc)) from None
        return n

    # -- the monitor -----------------------------------------------------------------------------------
    def stack_port(self, target: str | None) -> list[tuple[str, UserNetPort, int]]:
        """The user-mode stacks a monitor command means: a network's, a netdev's, or all."""
        out: list[tuple[str, UserNetPort, int]] = []
        if target is not None and target in self.defined:
            running = self.running_net(target)
            if isinstance(running, RootlessNetwork) and running.stack is not None:
                out.append((running.stack_id, running.stack, running.hubid))
                return out
            raise DaemonError(409, f"unsupported configuration: network '{target}' has no user-mode stack")
        for ident, link in self.runtime.links.items():
            if isinstance(link, UserNetPort) and (target is None or ident == target):
                out.append((ident, link, link.cfg.hubid))
        if target is not None and not out:
            raise DaemonError(404, f"Device '{target}' not found")
        return out

    def info_usernet_json(self, target: str | None) -> list[dict[str, Any]]:
        from vmlan.control.monitor_json import usernet_json

        return [usernet_json(ident, port, hubid) for ident, port, hubid in self.stack_port(target)]

    def info_network_json(self) -> list[dict[str, Any]]:
        from vmlan.control.monitor_json import network_json

        return network_json(self.runtime)

    def monitor(self, command: str, target: str | None = None) -> str:
        """One HMP-style command: info network, info usernet, hostfwd_add, hostfwd_remove, netdev_add,
        netdev_del, set_link. Returns its text output (errors: DaemonError with QEMU's wording)."""
        from vmlan.control.monitor import info_network, info_usernet

        try:
            words = shlex.split(command)
        except ValueError as exc:
            raise DaemonError(400, f"invalid command: {exc}") from None
        if not words:
            raise DaemonError(400, "empty command")
        cmd, args = words[0], words[1:]
        if cmd == "info" and args == ["network"]:
            return info_network(self.runtime)
        if cmd == "info" and args == ["usernet"]:
            return "\n".join(info_usernet(port, hubid) for _i, port, hubid in self.stack_port(target))
        if cmd == "hostfwd_add":
            if len(args) == 2:
                target, rule_text = args
            elif len(args) == 1:
                rule_text = args[0]
            else:
                raise DaemonError(400, "usage: hostfwd_add [netdev_id] "
                                       "[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport")
            name = self._forward_network(target)
            rule = self.parse_hostfwd(name, rule_text)
            self.add_forward(name, rule)
            return ""
        if cmd == "hostfwd_remove":
            if len(args) == 2:
                target, rule_text = args
            elif len(args) == 1:
                rule_text = args[0]
            else:
                raise DaemonError(400, "usage: hostfwd_remove [netdev_id] [tcp|udp]:[hostaddr]:hostport")
            name = self._forward_network(target)
            proto, host_addr, host_port = parse_hostfwd_key(rule_text)
            removed = self.remove_forward(name, proto, host_addr, host_port)
            return f"host forwarding rule for {rule_text} {'removed' if removed else 'not found'}"
        if cmd == "netdev_add" and len(args) == 1:
            return self.netdev_add(args[0], target)
        if cmd == "netdev_del" and len(args) == 1:
            self.netdev_del(args[0])
            return ""
        if cmd == "set_link" and len(args) == 2 and args[1] in ("on", "off"):
            self.set_link(args[0], args[1] == "on")
            return ""
        raise DaemonError(400, f"unknown command: '{command}'")

    def _forward_network(self, target: str | None) -> str:
        if target is not None:
            if target in self.defined:
                return target
            for name, running in self.running.items():
                if isinstance(running, RootlessNetwork) and running.stack_id == target:
                    return name
            raise DaemonError(404, f"Device '{target}' not found")
        candidates = [n for n, r in self.running.items() if isinstance(r, Forwarding)]
        if len(candidates) != 1:
            raise DaemonError(400, "more than one network is running: name the network or netdev")
        return candidates[0]

    def parse_hostfwd(self, name: str, rule_text: str) -> ForwardRule:
        """A QEMU hostfwd rule, checked with the network's addresses (QEMU's messages)."""
        running = self.running_net(name)
        if not isinstance(running, RootlessNetwork) or running.plan is None:
            raise DaemonError(409, f"unsupported configuration: network '{name}' has no user-mode stack")
        p = running.plan
        first = self.leases(name)
        # An empty guest address means the first guest's: its lease, else the start of the pool.
        start = IPv4Address(first[0].ip) if first else p.pool_start
        user = UserNetdev(id="probe", net=p.subnet, host=p.gateway, dns=p.dns, dhcp_start=start)
        try:
            fwd = parse_hostfwd_rule(rule_text, user)
        except ConfigError as exc:
            raise DaemonError(400, str(exc)) from None
        return ForwardRule(fwd.proto, fwd.host_addr, fwd.host_port, socket.inet_ntoa(fwd.guest_addr), fwd.guest_port)

    def netdev_add(self, opts: str, network: str | None = None) -> str:
        """QEMU's netdev_add with QemuOpts text; ``network`` puts it on that network's hub."""
        hubid: int | None = None
        if network is not None:
            running = self.running_net(network)
            if not isinstance(running, RootlessNetwork):
                raise DaemonError(409, f"unsupported configuration: network '{network}' has no vmlan hub")
            hubid = running.hubid
            if "hubid=" not in opts:
                opts = f"{opts},hubid={hubid}"
        try:
            nd = parse_netdev(opts)
        except ConfigError as exc:
            raise DaemonError(400, str(exc)) from None
        try:
            link = self.runtime.add(nd)
        except LinkError as exc:
            raise DaemonError(409, str(exc)) from None
        return f"{nd.id}: {link.describe()}"

    def netdev_del(self, ident: str) -> None:
        owned = {t for r in self.running.values() if isinstance(r, RootlessNetwork) for t in r.attached}
        owned |= {r.stack_id for r in self.running.values() if isinstance(r, RootlessNetwork) and r.stack_id}
        if ident in owned:
            raise DaemonError(409, f"Device '{ident}' belongs to a network: use net-destroy or detach")
        try:
            self.runtime.remove(ident)
        except LinkError as exc:
            raise DaemonError(404, str(exc)) from None

    def mac_table(self, name: str) -> list[dict[str, object]]:
        running = self.running_net(name)
        if isinstance(running, Monitor):
            return running.mac_table()
        return []

    def stats(self) -> dict[str, Any]:
        ports: list[dict[str, Any]] = []
        for ident, link in self.runtime.links.items():
            for port in link.ports:
                ports.append({"netdev": ident, "port": port.name, "hub": link.cfg.hubid, "link_up": port.link_up,
                              **port.counters.as_dict()})
        return {"uptime": round(time.time() - self.started_at, 3), "networks": len(self.defined),
                "active": len(self.running), "ports": ports, "faults": dict(self.runtime.faults.as_dict())}


def ip_in(ip: str, network: Any) -> bool:
    import ipaddress

    return ipaddress.ip_address(ip) in network


def _parse_network(xml: str, docname: str) -> Network:
    try:
        return parse_network(xml, docname=docname)
    except LibvirtError as exc:
        raise DaemonError(400, str(exc)) from None


def _parse_interfaces(xml: str, docname: str) -> tuple[Interface, ...]:
    try:
        return parse_interfaces(xml, docname=docname)
    except LibvirtError as exc:
        raise DaemonError(400, str(exc)) from None


def _host_netdev(iface: Interface) -> str:
    """bridge (not a network of this daemon) and ethernet: QEMU opens the host interface itself."""
    if iface.type == "bridge":
        return f"bridge,br={(iface.bridge or '').replace(',', ',,')}"
    parts = ["tap"]
    if iface.target:
        parts.append(f"ifname={iface.target.replace(',', ',,')}")
    parts.append(f"script={(iface.script or 'no').replace(',', ',,')}")
    parts.append(f"downscript={(iface.downscript or 'no').replace(',', ',,')}")
    return ",".join(parts)


def parse_hostfwd_key(text: str) -> tuple[str, str, int]:
    """``[tcp|udp]:[hostaddr]:hostport`` (hostfwd_remove's argument)."""
    parts = text.split(":")
    if len(parts) == 2:
        parts = ["tcp", *parts]
    if len(parts) != 3 or parts[0] not in ("", "tcp", "udp"):
        raise DaemonError(400, f"invalid format: '{text}' (expected [tcp|udp]:[hostaddr]:hostport)")
    proto = parts[0] or "tcp"
    addr = parts[1]
    if addr:
        _check_ipv4(addr)
    if not parts[2].isdigit() or not 0 < int(parts[2]) < 65536:
        raise DaemonError(400, f"invalid format: bad host port in '{text}'")
    return proto, addr, int(parts[2])


def _check_ipv4(ip: str) -> None:
    try:
        socket.inet_pton(socket.AF_INET, ip)
    except OSError:
        raise DaemonError(400, f"invalid argument: '{ip}' is not an IPv4 address") from None


def _dns_name(name: str) -> str:
    import re

    value = name.rstrip(".").lower()
    if not value or len(value) > 253 or not all(re.fullmatch(r"[a-z0-9_-]{1,63}", p) for p in value.split(".")):
        raise DaemonError(400, f"invalid argument: '{name}' is not a DNS name")
    return value


Hook = Callable[[Port], None]
