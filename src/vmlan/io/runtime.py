"""Builds the LANs, links and captures of one ``vmlan run`` and tears them down again."""

from __future__ import annotations

import asyncio
import logging
import os
import stat

from vmlan.config.cmdline import RunConfig
from vmlan.config.netdev import DgramNetdev, StreamNetdev, UnixAddr, UserNetdev
from vmlan.io.dgram import DgramPort
from vmlan.io.errors import LinkError
from vmlan.io.pcap import PcapDump
from vmlan.io.stream import StreamClient, StreamServer
from vmlan.io.usernet import UserNetPort
from vmlan.lan import Hub, Port, make_lan

log = logging.getLogger("vmlan")


class Runtime:
    def __init__(self, cfg: RunConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.loop = loop
        self.hubs: dict[int, Hub] = {
            hub.id: make_lan(hub.id, hub.mode, hub.aging) for hub in sorted(cfg.hubs.values(), key=lambda h: h.id)
        }
        self.netdevs: list[StreamServer | StreamClient | DgramPort | UserNetPort] = []
        self.dumps: list[PcapDump] = []

    async def start(self) -> None:
        """Open every link; a LinkError aborts the start (the caller closes what was opened)."""
        dumps_by_netdev: dict[str, list[tuple[PcapDump, str]]] = {}
        for dc in self.cfg.dumps:
            try:
                dump = PcapDump(dc.file, self.loop, dc.maxlen)
            except OSError as exc:
                raise LinkError(f"-object filter-dump,id={dc.id}: cannot open {dc.file}: {exc.strerror}") from None
            self.dumps.append(dump)
            dumps_by_netdev.setdefault(dc.netdev, []).append((dump, dc.queue))
        for nd_cfg in self.cfg.netdevs:
            hub = self.hubs[nd_cfg.hubid]
            hooks = dumps_by_netdev.get(nd_cfg.id, [])

            def attach_dumps(port: Port, hooks: list[tuple[PcapDump, str]] = hooks) -> None:
                for dump, queue in hooks:
                    if queue in ("all", "rx"):
                        port.dump_rx = dump
                    if queue in ("all", "tx"):
                        port.dump_tx = dump

            if isinstance(nd_cfg, StreamNetdev):
                try:
                    _ensure_parent(nd_cfg)
                    if self.cfg.is_default and isinstance(nd_cfg.addr, UnixAddr):
                        check_private_dir(os.path.dirname(nd_cfg.addr.path))
                except OSError as exc:
                    raise LinkError(
                        f"-netdev {nd_cfg.driver},id={nd_cfg.id}: cannot create the socket's directory: "
                        f"{exc.strerror or exc}"
                    ) from None
                if nd_cfg.server:
                    server = StreamServer(nd_cfg, hub, self.loop)
                    server.on_port = attach_dumps
                    self.netdevs.append(server)
                    server.start()
                else:
                    client = StreamClient(nd_cfg, hub, self.loop)
                    client.on_port = attach_dumps
                    self.netdevs.append(client)
                    await client.start()
            elif isinstance(nd_cfg, UserNetdev):
                user = UserNetPort(nd_cfg, self.loop)
                attach_dumps(user)
                self.netdevs.append(user)
                user.start()
                hub.attach(user)
            else:
                assert isinstance(nd_cfg, DgramNetdev)
                port = DgramPort(nd_cfg, self.loop)
                attach_dumps(port)
                self.netdevs.append(port)
                port.start()
                hub.attach(port)

    def close(self) -> None:
        for nd in reversed(self.netdevs):
            nd.close()
        self.netdevs.clear()
        for dump in self.dumps:
            dump.close()
        self.dumps.clear()


def _ensure_parent(cfg: StreamNetdev) -> None:
    """The default socket lives in a private directory that may not exist yet."""
    if cfg.server and isinstance(cfg.addr, UnixAddr) and not cfg.addr.abstract:
        parent = os.path.dirname(cfg.addr.path)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)


def check_private_dir(path: str) -> None:
    """The default socket directory may sit in /tmp: it must be a real directory of ours that nobody
    else can write to, or another user could put their own socket where QEMU will connect."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise LinkError(f"{path} is not a private directory of this user: refusing to serve from it")
