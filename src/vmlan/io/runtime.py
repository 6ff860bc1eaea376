"""The links registry of one ``vmlan run``: hubs, netdevs and captures, added and removed while it runs.

Startup goes through the same :meth:`Runtime.add` and :meth:`Runtime.add_filter_dump` a daemon's
``netdev_add`` / ``object-add`` will use, so a link behaves the same whether it came from the command
line or later. Everything here runs on the event loop's thread.

* A hub exists as soon as ``-hub`` names it or a netdev joins it; a hub made on demand for a netdev
  goes away with its last netdev.
* ``remove(id)`` closes the link's sockets, detaches its ports from their hub (the hub's other ports
  hear ``port_left``), removes the unix socket files it created, and deletes the filter-dumps of that
  netdev, as QEMU's ``netdev_del`` unparents the netdev's filters.
* Errors use QEMU's wording: "Duplicate ID 'x' for netdev", "Device 'x' not found",
  "object 'x' not found".
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Sequence

from vmlan.config.cmdline import RunConfig, default_socket_dir
from vmlan.config.filters import NetemConfig
from vmlan.config.netdev import DgramNetdev, DumpConfig, NetdevConfig, StreamNetdev, UnixAddr, UserNetdev
from vmlan.config.tap import BridgeNetdev, TapNetdev
from vmlan.config.vde import VdeNetdev
from vmlan.config.vxlan import VxlanNetdev
from vmlan.io.bridge import BridgeLink
from vmlan.io.dgram import DgramPort
from vmlan.io.errors import LinkError
from vmlan.io.netem import NetemFilter
from vmlan.io.pcap import DumpTee, PcapDump
from vmlan.io.sockopt import new_faults
from vmlan.io.stream import StreamClient, StreamServer
from vmlan.io.tap import TapLink
from vmlan.io.usernet import UserNetPort
from vmlan.io.vde import VdeClient, VdeServer
from vmlan.io.vxlan import VxlanPort
from vmlan.lan import FrameSink, Hub, Port, make_lan

log = logging.getLogger("vmlan")

Link = StreamServer | StreamClient | DgramPort | UserNetPort | VdeServer | VdeClient | TapLink | BridgeLink | VxlanPort


class DuplicateId(LinkError):
    """An id that is already in use (QEMU: "Duplicate ID '%s' for netdev")."""


class NotFound(LinkError):
    """No netdev or object with that id (QEMU: "Device '%s' not found")."""


class Runtime:
    """The hubs, links and captures of one process; see the module docstring."""

    def __init__(self, cfg: RunConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.loop = loop
        self.faults = new_faults()
        self.hubs: dict[int, Hub] = {
            hub.id: make_lan(hub.id, hub.mode, hub.aging) for hub in sorted(cfg.hubs.values(), key=lambda h: h.id)
        }
        self._configured_hubs = set(self.hubs)
        self.links: dict[str, Link] = {}
        self.dumps: dict[str, PcapDump] = {}
        self._dump_cfgs: dict[str, DumpConfig] = {}
        self._netem_cfgs: list[NetemConfig] = list(cfg.netems)
        self.netems: list[NetemFilter] = []  # one per port and netem object (a peer that left keeps its until close)

    @property
    def netdevs(self) -> list[Link]:
        return list(self.links.values())

    def link(self, ident: str) -> Link:
        try:
            return self.links[ident]
        except KeyError:
            raise NotFound(f"Device '{ident}' not found") from None

    async def start(self) -> None:
        """Open what the command line names; a LinkError aborts the start (the caller closes what was
        opened). A connecting netdev counts as open once its first attempt succeeded (or, with
        reconnect-ms, once it has been tried)."""
        clients: list[StreamClient | VdeClient] = []
        for nd in self.cfg.netdevs:
            link = self._add(nd, report_failure=False)
            if isinstance(link, StreamClient | VdeClient):
                clients.append(link)
        for dc in self.cfg.dumps:
            self.add_filter_dump(dc)
        for client in clients:
            await client.wait_started()

    # -- netdevs ---------------------------------------------------------------------------------------
    def add(self, nd: NetdevConfig) -> Link:
        """Open one netdev and put it on its hub (made if need be). A connecting stream netdev only
        begins connecting: ``await link.wait_started()`` for the outcome, or its failure is logged."""
        return self._add(nd, report_failure=True)

    def _add(self, nd: NetdevConfig, report_failure: bool) -> Link:
        if nd.id in self.links:
            raise DuplicateId(f"Duplicate ID '{nd.id}' for netdev")
        hub = self._hub(nd.hubid)
        try:
            link = self._open(nd, hub, report_failure)
        except BaseException:
            self._drop_hub_if_unused(nd.hubid)
            raise
        return link

    def _open(self, nd: NetdevConfig, hub: Hub, report_failure: bool) -> Link:
        link: Link
        if isinstance(nd, StreamNetdev):
            _prepare_socket_dir(nd)
            if nd.server:
                server = StreamServer(nd, hub, self.loop, self.faults)
                server.on_port = lambda port, ident=nd.id: self._new_ports(ident, [port])
                server.start()
                link = server
            else:
                client = StreamClient(nd, hub, self.loop, self.faults)
                client.on_port = lambda port, ident=nd.id: self._new_ports(ident, [port])
                client.report_failure = report_failure
                client.start()
                link = client
        elif isinstance(nd, VdeNetdev):
            if nd.server:
                vde_server = VdeServer(nd, hub, self.loop)
                vde_server.on_port = lambda port, ident=nd.id: self._new_ports(ident, [port])
                vde_server.start()
                link = vde_server
            else:
                vde_client = VdeClient(nd, hub, self.loop)
                vde_client.on_port = lambda port, ident=nd.id: self._new_ports(ident, [port])
                vde_client.report_failure = report_failure
                vde_client.begin()
                link = vde_client
        elif isinstance(nd, TapNetdev | BridgeNetdev):
            host_link = TapLink(nd, hub, self.loop) if isinstance(nd, TapNetdev) else BridgeLink(nd, hub, self.loop)
            host_link.on_port = lambda port, ident=nd.id: self._new_ports(ident, [port])
            host_link.start()  # raises LinkError (a failed script, a refused bridge), having cleaned up
            link = host_link
        elif isinstance(nd, UserNetdev):
            user = UserNetPort(nd, self.loop)
            user.start()  # closes itself if it fails
            hub.attach(user)
            link = user
        elif isinstance(nd, VxlanNetdev):
            vxlan = VxlanPort(nd, self.loop, self.faults)
            vxlan.start()  # closes itself if it fails
            hub.attach(vxlan)
            link = vxlan
        else:
            assert isinstance(nd, DgramNetdev)
            port = DgramPort(nd, self.loop, self.faults)
            port.start()  # closes itself if it fails
            hub.attach(port)
            link = port
        self.links[nd.id] = link
        self._new_ports(nd.id, link.ports)
        return link

    def remove(self, ident: str) -> None:
        """Close a netdev and take it off its hub; its filter-dumps go with it."""
        link = self.link(ident)
        del self.links[ident]
        try:
            link.close()
        finally:
            if isinstance(link, Port) and link.lan is not None:
                link.lan.detach(link)
            for dump_id in [i for i, dc in self._dump_cfgs.items() if dc.netdev == ident]:
                self._drop_dump(dump_id)
            self._drop_hub_if_unused(link.cfg.hubid)
        log.info("netdev %s removed", ident)

    def _hub(self, hubid: int) -> Hub:
        hub = self.hubs.get(hubid)
        if hub is None:
            hub = make_lan(hubid)
            self.hubs[hubid] = hub
            self.hubs = dict(sorted(self.hubs.items()))
        return hub

    def _drop_hub_if_unused(self, hubid: int) -> None:
        hub = self.hubs.get(hubid)
        if hub is None or hubid in self._configured_hubs or hub.ports:
            return
        if any(link.cfg.hubid == hubid for link in self.links.values()):
            return
        del self.hubs[hubid]

    # -- captures --------------------------------------------------------------------------------------
    def add_filter_dump(self, dc: DumpConfig) -> PcapDump:
        """Start capturing a netdev's frames (``-object filter-dump``), on its current and future ports."""
        if dc.id in self.dumps:
            raise DuplicateId(f"attempt to add duplicate property '{dc.id}' to object")
        if dc.netdev not in self.links:
            raise NotFound(f"Device '{dc.netdev}' not found")
        try:
            dump = PcapDump(dc.file, self.loop, dc.maxlen)
        except OSError as exc:
            raise LinkError(f"-object filter-dump,id={dc.id}: cannot open {dc.file}: {exc.strerror}") from None
        self.dumps[dc.id] = dump
        self._dump_cfgs[dc.id] = dc
        self._apply_dumps(dc.netdev, self.links[dc.netdev].ports)
        return dump

    def remove_filter_dump(self, ident: str) -> None:
        """Stop a capture and close its file (complete up to the last frame)."""
        if ident not in self.dumps:
            raise NotFound(f"object '{ident}' not found")
        netdev = self._dump_cfgs[ident].netdev
        self._drop_dump(ident)
        link = self.links.get(netdev)
        if link is not None:
            self._apply_dumps(netdev, link.ports)

    def _drop_dump(self, ident: str) -> None:
        del self._dump_cfgs[ident]
        self.dumps.pop(ident).close()

    def _new_ports(self, netdev: str, ports: Sequence[Port]) -> None:
        """A netdev's port appeared (at start, or a peer connected): captures and emulators join it."""
        self._apply_dumps(netdev, ports)
        if self.netems:  # forget the emulators of peers that left
            gone = [n for n in self.netems if n.port is None or n.port.lan is None]
            for netem in gone:
                netem.close()
            self.netems = [n for n in self.netems if n not in gone]
        for nc in self._netem_cfgs:
            if nc.netdev != netdev:
                continue
            for port in ports:
                netem = NetemFilter(nc, self.loop)
                netem.attach(port)
                self.netems.append(netem)

    def _apply_dumps(self, netdev: str, ports: Sequence[Port]) -> None:
        """Point the ports' rx/tx sinks at the netdev's dumps (one sink per direction, a tee for more)."""
        rx: list[PcapDump] = []
        tx: list[PcapDump] = []
        for ident, dc in self._dump_cfgs.items():
            if dc.netdev != netdev:
                continue
            if dc.queue in ("all", "rx"):
                rx.append(self.dumps[ident])
            if dc.queue in ("all", "tx"):
                tx.append(self.dumps[ident])
        rx_sink, tx_sink = _sink(rx), _sink(tx)
        for port in ports:
            port.dump_rx = rx_sink
            port.dump_tx = tx_sink

    def close(self) -> None:
        for link in reversed(list(self.links.values())):
            try:
                link.close()
            except Exception:
                self.faults.record("close")
        self.links.clear()
        for netem in self.netems:
            netem.close()
        self.netems.clear()
        for dump in self.dumps.values():
            dump.close()
        self.dumps.clear()
        self._dump_cfgs.clear()


def _sink(dumps: list[PcapDump]) -> FrameSink | None:
    if not dumps:
        return None
    return dumps[0] if len(dumps) == 1 else DumpTee(dumps)


def _prepare_socket_dir(nd: StreamNetdev) -> None:
    """A listening unix socket's directory is made if missing (the default one is private: 0700); a
    socket in the default directory is served only if that directory is private."""
    if not nd.server or not isinstance(nd.addr, UnixAddr) or nd.addr.abstract:
        return
    parent = os.path.dirname(nd.addr.path)
    try:
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)
        if parent and os.path.abspath(parent) == os.path.abspath(default_socket_dir()):
            check_private_dir(parent)
    except OSError as exc:
        raise LinkError(
            f"-netdev {nd.driver},id={nd.id}: cannot create the socket's directory: {exc.strerror or exc}"
        ) from None


def check_private_dir(path: str) -> None:
    """The default socket directory may sit in /tmp: it must be a real directory of ours that nobody
    else can write to, or another user could put their own socket where QEMU will connect."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise LinkError(f"{path} is not a private directory of this user: refusing to serve from it")
