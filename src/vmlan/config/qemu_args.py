"""The QEMU options that attach a guest to one of vmlan's netdevs: the mirror image of its config."""

from __future__ import annotations

from vmlan.config.netdev import InetAddr, NetdevConfig, SocketAddress, StreamNetdev, UnixAddr, UserNetdev
from vmlan.config.tap import BridgeNetdev, TapNetdev
from vmlan.config.vde import VdeNetdev
from vmlan.config.vxlan import VxlanNetdev


def escape(value: str) -> str:
    """QemuOpts and keyval both read ',,' as a literal comma."""
    return value.replace(",", ",,")


def _keyval_addr(prefix: str, addr: SocketAddress, connect: bool = True) -> str:
    if isinstance(addr, UnixAddr):
        extra = f",{prefix}.abstract=on" if addr.abstract else ""
        return f"{prefix}.type=unix,{prefix}.path={escape(addr.path)}{extra}"
    host = addr.host or ("127.0.0.1" if connect else "0.0.0.0")
    return f"{prefix}.type=inet,{prefix}.host={host},{prefix}.port={addr.port}"


def _hostport(addr: InetAddr) -> str:
    return f"{addr.host or '127.0.0.1'}:{addr.port}"


def guest_netdev(nd: NetdevConfig, netdev_id: str = "n0") -> str:
    """The ``-netdev`` argument a QEMU guest uses to reach ``nd``."""
    if isinstance(nd, StreamNetdev):
        if nd.driver == "socket":
            if nd.server:
                assert isinstance(nd.addr, InetAddr)
                return f"socket,id={netdev_id},connect={_hostport(nd.addr)}"
            assert isinstance(nd.addr, InetAddr)
            return f"socket,id={netdev_id},listen={_hostport(nd.addr)}"
        server = "off" if nd.server else "on"
        return f"stream,id={netdev_id},server={server},{_keyval_addr('addr', nd.addr, connect=nd.server)}"
    if isinstance(nd, UserNetdev):
        raise ValueError("a user-mode stack is not a link: attach guests to another netdev on its hub")
    if isinstance(nd, VdeNetdev):
        if not nd.server:
            raise ValueError("a VDE client is not a link guests attach to: attach them to its switch")
        return f"vde,id={netdev_id},sock={escape(nd.sock)}"
    if isinstance(nd, TapNetdev | BridgeNetdev):
        raise ValueError("a TAP is a host interface, not a link guests attach to")
    if isinstance(nd, VxlanNetdev):
        raise ValueError("a VXLAN link is a tunnel to other hosts (QEMU has no vxlan netdev): attach guests to "
                         "another netdev on its hub")
    if nd.multicast:
        assert isinstance(nd.remote, InetAddr)
        if nd.driver == "socket":
            local = f",localaddr={nd.mcast_if}" if nd.mcast_if else ""
            return f"socket,id={netdev_id},mcast={nd.remote.host}:{nd.remote.port}{local}"
        local = f",local.type=inet,local.host={nd.mcast_if},local.port=0" if nd.mcast_if else ""
        return f"dgram,id={netdev_id},remote.type=inet,remote.host={nd.remote.host},remote.port={nd.remote.port}{local}"
    assert nd.local is not None and nd.remote is not None
    if nd.driver == "socket":
        assert isinstance(nd.local, InetAddr) and isinstance(nd.remote, InetAddr)
        return f"socket,id={netdev_id},udp={_hostport(nd.local)},localaddr={_hostport(nd.remote)}"
    return f"dgram,id={netdev_id},{_keyval_addr('local', nd.remote)},{_keyval_addr('remote', nd.local)}"


def guest_args(nd: NetdevConfig, mac: str = "52:54:00:12:34:56", model: str = "virtio-net-pci") -> list[str]:
    return ["-netdev", guest_netdev(nd), "-device", f"{model},netdev=n0,mac={mac}"]
