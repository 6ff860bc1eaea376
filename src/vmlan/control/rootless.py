"""Rootless networks: a libvirt ``<network>`` as a vmlan switch whose router is the user-mode stack.

What libvirt needs root for (a bridge, dnsmasq, nftables masquerading), this backend does in the
daemon's own process, as an unprivileged user:

- the LAN is a vmlan learning switch (``-hub mode=switch``), one per network;
- its router is the user-mode stack (``-netdev user``) configured from the XML: gateway = the IPv4
  ``<ip address>`` with its netmask or prefix, DHCP from the first ``<range>`` (pool start and size,
  lease time from ``<lease>``; dnsmasq's one hour without it), ``<host mac ip name>`` as static
  leases (and their names in DNS), ``<dns><host>`` entries as static names, ``<forwarder addr>``
  as upstream resolvers (else the host's /etc/resolv.conf), ``<domain name>`` as the DHCP domain,
  ``<mtu size>`` as the MTU (and DHCP option 26);
- the gateway address reaches the host's loopback (QEMU's 10.0.2.2 rule), so a guest reaches a host
  service at the gateway, as on a libvirt bridge;
- guests attach by unix stream sockets: ``vmlan attach`` gives QEMU ``-netdev stream,server=on,
  addr.path=<runtime>/networks/<network>/<target>.sock`` and the daemon connects to it (and redials
  every 250 ms), so QEMU may start before or after, and a restarted daemon finds its guests again.

Forward modes:

- ``nat`` (and a bare ``<forward/>``): guests' TCP, UDP and ping leave through the stack's host
  sockets, so the host's address is their source (a masquerade without nftables);
- ``route`` and ``open``: rootless, they are the same as nat (nothing can route a guest subnet into the
  host's network without privilege); ``net-info``/``info()`` say so;
- isolated (no ``<forward>``): ``restrict=on``: guests reach each other and the gateway's DHCP and DNS
  (its static names only: nothing is forwarded upstream), nothing outside. DHCP gives no router option,
  as libvirt's dnsmasq does on an isolated network.
- an isolated network without ``<ip>`` is a bare switch: no stack at all;
- ``bridge`` (an existing host bridge) needs the privileged backend.

The resolver is the gateway address itself, as with libvirt's dnsmasq: port 53 there is the stack's DNS,
every other port reaches the host's loopback. DHCP announces it (option 6).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING

from vmlan.config.libvirt import Interface, Network, NetworkIP
from vmlan.config.netdev import StreamNetdev, UnixAddr
from vmlan.config.qemuopts import check_id
from vmlan.config.usernet import UserNetdev
from vmlan.control.backends import (
    AttachResult,
    BackendError,
    ForwardRule,
    LeaseRecord,
    NetworkContext,
)
from vmlan.control.stackport import StackPort
from vmlan.engines.dhcp import DhcpConfig
from vmlan.engines.dns import HOST_NAME, DnsConfig, read_resolv_conf
from vmlan.engines.tcp import TcpParams
from vmlan.engines.usernet import HostForward, StackConfig
from vmlan.io.errors import LinkError
from vmlan.io.stream import StreamClient, StreamPort
from vmlan.lan import Hub, Port, Switch
from vmlan.wire.ethernet import mac_to_str

if TYPE_CHECKING:
    from vmlan.control.daemon import DaemonRuntime

log = logging.getLogger("vmlan")

DNSMASQ_LEASE = 3600  # dnsmasq's default lease time, what libvirt's networks get without <lease>
INFINITE_LEASE = 0xFFFFFFFE
RECONNECT_MS = 250
RESOLV_CONF = "/etc/resolv.conf"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_UNIT = {"seconds": 1, "minutes": 60, "hours": 3600}


def socket_dir_name(net: Network) -> str:
    """The network's directory under <runtime>/networks: its name when that is a safe file name."""
    return net.name if _SAFE_NAME.fullmatch(net.name) and net.name not in (".", "..") else str(net.uuid)


def attach_target(mac: str) -> str:
    """The target (netdev id and socket name) of a guest interface: from its MAC, so that
    domxml-to-native can say what attach will do."""
    return "v" + mac.replace(":", "").lower()


def _ipv4(net: Network) -> NetworkIP | None:
    for ip in net.ips:
        if ip.address.version == 4:
            return ip
    return None


@dataclass(frozen=True)
class Plan:
    """A network's stack configuration, derived from its XML alone (no I/O)."""

    subnet: IPv4Network
    gateway: IPv4Address
    dns: IPv4Address
    pool_start: IPv4Address
    pool_size: int
    lease_time: int
    static_leases: dict[str, str]
    static_names: dict[str, list[str]]
    upstreams: tuple[tuple[str, int], ...]  # () = the host's resolv.conf
    restrict: bool
    mtu: int
    domain: str | None


def plan(net: Network) -> Plan | None:
    """The stack's addresses for ``net``; None for a network without IPv4 (a bare switch)."""
    ip = _ipv4(net)
    if ip is None:
        if net.forward is not None:
            raise BackendError(f"network '{net.name}': {net.mode} needs an IPv4 <ip> rootless")
        return None
    subnet = ip.network
    assert isinstance(subnet, IPv4Network) and isinstance(ip.address, IPv4Address)
    if subnet.prefixlen > 29:
        raise BackendError(f"network '{net.name}': the subnet {subnet} is too small for a rootless network "
                           "(/29 at most)")
    gateway = ip.address
    if gateway in (subnet.network_address, subnet.broadcast_address):
        raise BackendError(f"network '{net.name}': {gateway} is not a host address of {subnet}")
    static_leases: dict[str, str] = {}
    static_names: dict[str, list[str]] = {}
    taken: set[IPv4Address] = {gateway}
    for host in ip.hosts:
        if isinstance(host.ip, IPv4Address):
            taken.add(host.ip)
            if host.mac is not None:
                static_leases[host.mac.lower()] = str(host.ip)
            if host.name is not None:
                static_names.setdefault(host.name.lower(), []).append(str(host.ip))
                if net.domain:
                    static_names.setdefault(f"{host.name}.{net.domain}".lower(), []).append(str(host.ip))
    ranges: list[tuple[int, int]] = []
    lease_time = DNSMASQ_LEASE
    for r in ip.ranges:
        if isinstance(r.start, IPv4Address) and isinstance(r.end, IPv4Address):
            ranges.append((int(r.start), int(r.end)))
    if ip.ranges and ip.ranges[0].lease is not None:
        lease = ip.ranges[0].lease
        lease_time = INFINITE_LEASE if lease.expiry == 0 else min(INFINITE_LEASE, lease.expiry * _UNIT[lease.unit])
    dns = gateway  # as libvirt's dnsmasq, the resolver is the gateway itself
    if ranges:
        pool_start, pool_size = IPv4Address(ranges[0][0]), ranges[0][1] - ranges[0][0] + 1
    else:  # static hosts only: a pool of one reserved address, never given
        pool_start, pool_size = (min(taken - {gateway}) if taken - {gateway} else gateway), 1
    for h in net.dns.hosts:
        if isinstance(h.ip, IPv4Address):
            for name in h.hostnames:
                static_names.setdefault(name.lower().rstrip("."), []).append(str(h.ip))
    upstreams = tuple((str(f.addr), 53) for f in net.dns.forwarders if f.addr is not None and f.domain is None)
    return Plan(
        subnet=subnet,
        gateway=gateway,
        dns=dns,
        pool_start=pool_start,
        pool_size=pool_size,
        lease_time=lease_time,
        static_leases=static_leases,
        static_names=static_names,
        upstreams=upstreams,
        restrict=net.forward is None,
        mtu=net.mtu or 1500,
        domain=net.domain,
    )


def stack_config(p: Plan, forwards: list[HostForward], extra_names: dict[str, list[str]],
                 resolv_conf: str = RESOLV_CONF) -> StackConfig:
    """The user stack's configuration for a plan, with run-time forwards and DNS names."""
    host = str(p.gateway)
    dhcp = DhcpConfig(
        server_ip=host,
        netmask=str(p.subnet.netmask),
        router=None if p.restrict else host,
        dns=(str(p.dns),),
        pool_start=str(p.pool_start),
        pool_size=p.pool_size,
        lease_time=p.lease_time,
        domainname=p.domain,
        mtu=p.mtu,
        static_leases=p.static_leases,
    )
    upstreams = list(p.upstreams)
    if not upstreams:
        try:
            with open(resolv_conf) as fh:
                upstreams = [(server, 53) for server in read_resolv_conf(fh.read())]
        except OSError:
            upstreams = []
    static = {name: list(addrs) for name, addrs in p.static_names.items()}
    for name, addrs in extra_names.items():
        static.setdefault(name, []).extend(a for a in addrs if a not in static.get(name, []))
    dns_cfg = DnsConfig(upstreams=tuple(upstreams), static=static, host_names={HOST_NAME: host}, tcp_upstream=True)
    return StackConfig(
        net=p.subnet,
        host=p.gateway,
        dns=p.dns,
        restrict=p.restrict,
        restrict_local_dns=True,
        mtu=p.mtu,
        dhcp=dhcp,
        dns_config=dns_cfg,
        hostfwd=tuple(forwards),
        tcp=TcpParams(mss=p.mtu - 40),
    )


class RootlessBackend:
    mode = "rootless"

    def available(self) -> bool:
        return True

    async def start(self, net: Network, ctx: NetworkContext) -> RootlessNetwork:
        if not net.has_host_bridge:
            raise BackendError(f"network '{net.name}': forward mode 'bridge' needs the privileged backend")
        running = RootlessNetwork(net, ctx)
        running.start()
        return running


class RootlessNetwork:
    """One running rootless network; see the module docstring."""

    mode = "rootless"
    bridge: str | None = None

    def __init__(self, net: Network, ctx: NetworkContext) -> None:
        self.net = net
        self.name = net.name
        self.ctx = ctx
        self.plan = plan(net)
        self.hub: Hub | None = None
        self.hubid = -1
        self.stack: StackPort | None = None
        self.stack_id = ""
        self.socket_dir = ctx.runtime_dir / "networks" / socket_dir_name(net)
        self.attached: dict[str, Interface] = {}  # target -> interface
        self.paths: dict[str, Path] = {}
        self.extra_names: dict[str, list[str]] = {}
        self._known: dict[str, LeaseRecord] = {}
        self._expired: set[str] = set()
        self._expiry_timer: asyncio.TimerHandle | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        from vmlan.control.daemon import DaemonRuntime

        runtime = self.ctx.runtime
        assert isinstance(runtime, DaemonRuntime)
        self.socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.hubid = runtime.free_hubid()
        self.hub = runtime.add_hub(self.hubid, "switch")
        try:
            if self.plan is not None:
                self._start_stack(runtime)
        except BaseException:
            runtime.remove_hub(self.hubid)
            raise

    def _start_stack(self, runtime: DaemonRuntime) -> None:
        p = self.plan
        assert p is not None
        state = self.ctx.leases
        forwards: list[HostForward] = []
        from vmlan.control.state import StateStore

        if isinstance(state, StateStore):
            for row in state.forwards(self.name):
                forwards.append(HostForward(row.proto, row.host_addr, row.host_port,
                                            IPv4Address(row.guest_addr).packed, row.guest_port))
            for name, ip in state.dns_records(self.name):
                self.extra_names.setdefault(name, []).append(ip)
        cfg = stack_config(p, forwards, self.extra_names)
        self.stack_id = self.name if _valid_id(self.name) else f"network{self.hubid}"
        saved = state.load(self.name)
        leases_file = self.socket_dir / ".leases.json"
        with open(leases_file, "w") as fh:
            json.dump({"leases": [{"mac": r.mac, "ip": r.ip, "expires": r.expires, "hostname": r.hostname}
                                  for r in saved]}, fh)
        user = UserNetdev(id=self.stack_id, hubid=self.hubid, net=p.subnet, host=p.gateway, dns=p.dns,
                          dhcp_start=p.pool_start, pool=p.pool_size, restrict=p.restrict, mtu=p.mtu,
                          leases_file=str(leases_file))
        try:
            port = StackPort(user, self.ctx.loop, cfg)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(leases_file)
        port.leases_path = None  # the daemon keeps leases in its database, committed as they change
        port.on_leases = self._leases_changed
        port.on_guest_left = self._guest_left
        try:
            port.start()
        except LinkError as exc:
            raise BackendError(str(exc)) from None
        runtime.add_link(port)
        self.stack = port
        current = {r.mac: r for r in self.leases()}
        gone = [r.mac for r in saved if r.mac not in current]
        self.ctx.leases.persist_many(self.name, list(current.values()), gone)
        self._known = current
        now = time.time()
        self._expired = {mac for mac, r in current.items() if r.expires <= now}
        self._arm_expiry()

    async def stop(self) -> None:
        from vmlan.control.daemon import DaemonRuntime

        runtime = self.ctx.runtime
        assert isinstance(runtime, DaemonRuntime)
        for target in list(self.attached):
            self.detach(target)
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        if self.stack is not None:
            self._leases_changed()
            with contextlib.suppress(LinkError):
                runtime.remove(self.stack_id)
            self.stack = None
        runtime.remove_hub(self.hubid)
        with contextlib.suppress(OSError):
            self.socket_dir.rmdir()

    # -- guests ----------------------------------------------------------------------------------------
    def socket_for(self, iface: Interface) -> tuple[str, Path]:
        target = attach_target(iface.mac)
        return target, self.socket_dir / f"{target}.sock"

    def preview(self, iface: Interface) -> str:
        """The -netdev value attach would return (domxml-to-native), nothing set up."""
        _target, path = self.socket_for(iface)
        return netdev_value(path)

    def attach(self, iface: Interface, owner_uid: int) -> AttachResult:
        target, path = self.socket_for(iface)
        if target in self.attached:
            raise BackendError(f"an interface with MAC {iface.mac} is already attached to network '{self.name}'")
        result = AttachResult(netdev_value(path), target)
        self._connect(iface, owner_uid, target, path)
        return result

    def restore(self, iface: Interface, owner_uid: int, result: AttachResult) -> None:
        target, path = self.socket_for(iface)
        if target in self.attached:
            return
        self._connect(iface, owner_uid, target, path)

    def _connect(self, iface: Interface, owner_uid: int, target: str, path: Path) -> None:
        from vmlan.control.daemon import DaemonRuntime

        runtime = self.ctx.runtime
        assert isinstance(runtime, DaemonRuntime)
        if owner_uid != os.geteuid() and os.geteuid() == 0:
            with contextlib.suppress(OSError):
                os.chown(self.socket_dir, owner_uid, -1)  # QEMU, run by the owner, creates the socket
        nd = StreamNetdev(id=target, hubid=self.hubid, driver="stream", server=False, addr=UnixAddr(str(path)),
                          reconnect_ms=RECONNECT_MS)
        try:
            link = runtime.add(nd)
        except LinkError as exc:
            raise BackendError(str(exc)) from None
        assert isinstance(link, StreamClient)
        previous = link.on_port

        def on_port(port: StreamPort) -> None:
            if previous is not None:
                previous(port)
            current = self.attached.get(target, iface)
            port.link_up = current.link_up
            self.ctx.events("guest-connected", {"network": self.name, "target": target, "mac": iface.mac,
                                                "link": "up" if port.link_up else "down"})

        link.on_port = on_port
        self.attached[target] = iface
        self.paths[target] = path

    def detach(self, target: str) -> None:
        if target not in self.attached:
            raise BackendError(f"no interface '{target}' is attached to network '{self.name}'")
        del self.attached[target]
        path = self.paths.pop(target)
        with contextlib.suppress(LinkError):
            self.ctx.runtime.remove(target)
        with contextlib.suppress(OSError):
            path.unlink()

    def set_link(self, target: str, up: bool) -> None:
        iface = self.attached.get(target)
        if iface is None:
            raise BackendError(f"no interface '{target}' is attached to network '{self.name}'")
        self.attached[target] = _with_link(iface, up)
        link = self.ctx.runtime.links.get(target)
        for port in link.ports if link is not None else []:
            port.link_up = up
        self.ctx.events("link-up" if up else "link-down", {"network": self.name, "target": target, "mac": iface.mac})

    def _guest_left(self, port: Port) -> None:
        target = port.name
        iface = self.attached.get(target)
        if iface is not None:
            self.ctx.events("guest-left", {"network": self.name, "target": target, "mac": iface.mac})

    # -- leases ----------------------------------------------------------------------------------------
    def leases(self) -> list[LeaseRecord]:
        if self.stack is None:
            return []
        offset = time.time() - self.ctx.loop.time()
        return [LeaseRecord(mac_to_str(lease.mac), socket.inet_ntoa(lease.ip), lease.hostname,
                            lease.expires + offset) for lease in self.stack.stack.leases()]

    def _leases_changed(self) -> None:
        current = {r.mac: r for r in self.leases()}
        changed = [r for mac, r in current.items() if self._known.get(mac) != r]
        gone = [mac for mac in self._known if mac not in current]
        if not changed and not gone:
            return
        self.ctx.leases.persist_many(self.name, changed, gone)
        now = time.time()
        for r in changed:
            old = self._known.get(r.mac)
            if r.expires - now > 61 and (old is None or old.expires < r.expires):
                self._expired.discard(r.mac)
                self.ctx.events("lease-granted", {"network": self.name, "mac": r.mac, "ip": r.ip,
                                                  "hostname": r.hostname, "expires": r.expires})
        self._known = current
        self._arm_expiry()

    def _arm_expiry(self) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        now = time.time()
        pending = [r.expires for mac, r in self._known.items() if mac not in self._expired]
        if pending:
            delay = max(0.0, min(pending) - now) + 0.01
            self._expiry_timer = self.ctx.loop.call_later(delay, self._expiry_due)

    def _expiry_due(self) -> None:
        self._expiry_timer = None
        now = time.time()
        for mac, r in self._known.items():
            if mac not in self._expired and r.expires <= now:
                self._expired.add(mac)
                self.ctx.events("lease-expired", {"network": self.name, "mac": mac, "ip": r.ip})
        self._arm_expiry()

    # -- forwards and DNS (optional capabilities) ------------------------------------------------------
    def _stack(self) -> StackPort:
        if self.stack is None:
            raise BackendError(f"network '{self.name}' has no user-mode stack (no IPv4 <ip>)")
        return self.stack

    def forwards(self) -> list[ForwardRule]:
        if self.stack is None:
            return []
        return [ForwardRule(rule.proto, rule.host_addr, rule.host_port, socket.inet_ntoa(rule.guest_addr),
                            rule.guest_port, bound) for rule, bound in self.stack.live_forwards()]

    def add_forward(self, rule: ForwardRule) -> ForwardRule:
        stack = self._stack()
        p = self.plan
        assert p is not None
        try:
            guest = IPv4Address(rule.guest_addr)
        except ValueError:
            raise BackendError(f"guest address '{rule.guest_addr}' is not an IPv4 address") from None
        if guest not in p.subnet or guest in (p.gateway, p.dns, p.subnet.network_address,
                                              p.subnet.broadcast_address):
            raise BackendError(f"guest address {guest} is not a guest address of {p.subnet}")
        try:
            bound = stack.add_hostfwd(HostForward(rule.proto, rule.host_addr, rule.host_port, guest.packed,
                                                  rule.guest_port))
        except LinkError as exc:
            raise BackendError(str(exc)) from None
        return ForwardRule(rule.proto, rule.host_addr, rule.host_port, str(guest), rule.guest_port, bound)

    def remove_forward(self, proto: str, host_addr: str, host_port: int) -> bool:
        return self._stack().remove_hostfwd(proto, host_addr, host_port)

    def dns_records(self) -> dict[str, list[str]]:
        table: dict[str, list[str]] = {}
        if self.plan is not None:
            for name, addrs in self.plan.static_names.items():
                table.setdefault(name, []).extend(addrs)
        for name, addrs in self.extra_names.items():
            table.setdefault(name, []).extend(a for a in addrs if a not in table.get(name, []))
        return dict(sorted(table.items()))

    def set_dns_records(self, added: dict[str, list[str]]) -> None:
        stack = self._stack()
        self.extra_names = {k: list(v) for k, v in added.items()}
        try:
            stack.set_dns_static(self.dns_records())
        except LinkError as exc:
            raise BackendError(str(exc)) from None

    # -- monitor ---------------------------------------------------------------------------------------
    def monitor_text(self, command: str) -> str:
        from vmlan.control.monitor import info_usernet

        if command == "info usernet":
            stack = self._stack()
            return info_usernet(stack, self.hubid)
        raise BackendError(f"unknown monitor command '{command}'")

    def mac_table(self) -> list[dict[str, object]]:
        hub = self.hub
        if not isinstance(hub, Switch):
            return []
        now = hub.clock()
        out: list[dict[str, object]] = []
        for mac, port, seen in hub.table.entries():
            out.append({"mac": mac_to_str(mac), "port": port.name, "age": round(max(0.0, now - seen), 3)})
        return sorted(out, key=lambda e: str(e["mac"]))

    def info(self) -> dict[str, object]:
        ports: list[dict[str, object]] = []
        hub = self.hub
        for port in hub.ports if hub is not None else ():
            target = port.name
            iface = self.attached.get(target)
            ports.append({"name": port.name, "mac": iface.mac if iface is not None else None,
                          "link_up": port.link_up, "counters": port.counters.as_dict()})
        out: dict[str, object] = {
            "name": self.name,
            "mode": self.mode,
            "forward": self.net.mode,
            "nat": "rootless (host sockets)" if self.net.mode in ("nat", "route", "open") else None,
            "hub": self.hubid,
            "socket_dir": str(self.socket_dir),
            "attached": sorted(self.attached),
            "ports": ports,
        }
        p = self.plan
        if p is not None:
            out.update({"subnet": str(p.subnet), "gateway": str(p.gateway), "dns": str(p.dns),
                        "dhcp": {"start": str(p.pool_start), "size": p.pool_size, "lease_time": p.lease_time}})
        if self.stack is not None:
            stack = self.stack.stack
            out["stack"] = stack.counters.as_dict()
            if stack.dhcp is not None:
                from dataclasses import asdict

                out["dhcp_stats"] = asdict(stack.dhcp.server.stats)
        return out


def netdev_value(path: Path) -> str:
    return f"stream,server=on,addr.type=unix,addr.path={str(path).replace(',', ',,')}"


def _with_link(iface: Interface, up: bool) -> Interface:
    import dataclasses

    return dataclasses.replace(iface, link_state=None if up else "down")


def _valid_id(name: str) -> bool:
    try:
        check_id(name, "netdev")
    except Exception:
        return False
    return True


__all__ = ["Plan", "RootlessBackend", "RootlessNetwork", "attach_target", "plan", "stack_config"]
