"""Text renderings of the monitor's ``info`` commands (QEMU HMP equivalents)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING

from vmlan.lan import Port

if TYPE_CHECKING:
    from vmlan.engines.usernet import UserStack
    from vmlan.io.runtime import Runtime
    from vmlan.io.usernet import UserNetPort


def info_network(runtime: Runtime) -> str:
    """Like QEMU's ``info network``: each hub, then its ports with their peers and counters."""
    lines: list[str] = []
    for hub in runtime.hubs.values():
        lines.append(f"hub {hub.id}" + (" (switch)" if hub.kind == "switch" else ""))
        for nd in runtime.netdevs:
            if nd.cfg.hubid != hub.id:
                continue
            lines.append(f" \\ {nd.cfg.id}: type={nd.cfg.driver},{nd.describe()}")
            lines.extend(_port_lines(nd.ports, runtime))
    return "\n".join(lines)


def _port_lines(ports: Iterable[Port], runtime: Runtime) -> list[str]:
    out = []
    for port in ports:
        c = port.counters
        out.append(
            f"    {port.name}: {port.describe()}  rx {c.rx_frames} frames {c.rx_bytes} bytes {c.rx_dropped} dropped,"
            f" tx {c.tx_frames} frames {c.tx_bytes} bytes {c.tx_dropped} dropped"
        )
        out.extend(f"      {netem.describe()}" for netem in runtime.netems if netem.port is port)
    return out


def _ip(packed: bytes) -> str:
    """An IPv4 or IPv6 address as text (flows and rules hold them packed, 4 or 16 bytes)."""
    return str(ipaddress.ip_address(packed))


def info_usernet(port: UserNetPort, hubid: int) -> str:
    """Like QEMU's ``info usernet``: one row per host forward, TCP connection, UDP flow and ping flow.

    Columns and widths are libslirp's (slirp_connection_info); "Source" is the guest side of a
    connection, "Dest." the far side, and a host forward shows its listening address as the source.
    """
    from vmlan.engines.usernet import PingFlow, TcpFlow, UdpFlow

    stack = port.stack
    now = port.loop_time()
    rows = [f"Hub {hubid} ({port.name}):",
            "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ"]

    def row(kind: str, fd: int, src: str, sport: int, dst: str, dport: int, recvq: int = 0, sendq: int = 0) -> None:
        rows.append(f"  {kind:<19s} {fd:3d} {src:>15s} {sport:5d} {dst:>15s} {dport:5d} {recvq:5d} {sendq:5d}")

    for rule, fd, bound in port.forward_fds():
        row(f"{rule.proto.upper()}[HOST_FORWARD]", fd, rule.host_addr or "*", bound,
            _ip(rule.guest_addr), rule.guest_port)
    for flow in stack.flows:
        if isinstance(flow, TcpFlow):
            conn = flow.conn
            row(f"TCP[{conn.state}]", port.fd_of(flow.fid), _ip(flow.guest_ip), flow.key[1],
                _ip(flow.far), flow.key[3], conn.unconsumed, conn.bytes_unacked)
        elif isinstance(flow, UdpFlow):
            dst, dport = flow.last_dst
            left = max(0, int(flow.deadline - now)) if flow.deadline != float("inf") else 0
            row(f"UDP[{left} sec]", port.fd_of(flow.fid), _ip(flow.guest_ip), flow.guest_port, dst, dport)
        elif isinstance(flow, PingFlow):
            left = max(0, int(flow.deadline - now)) if flow.deadline != float("inf") else 0
            row(f"ICMP[{left} sec]", port.fd_of(flow.fid), _ip(flow.guest_ip), 0, flow.dst, 0)
    rows.extend(guest_lines(stack))
    return "\n".join(rows)


def guest_lines(stack: UserStack) -> list[str]:
    """vmlan's addition to ``info usernet``: each guest (a port of the hub) with what it holds, then
    the stack's drop counters that are not zero."""
    from vmlan.wire.ethernet import mac_to_str

    out = ["  Guest (port)         MAC                Address           TCP   UDP  ICMP"]
    for guest in stack.guests.by_port.values():
        macs = sorted(guest.macs) or [b""]
        for i, mac in enumerate(macs):
            ip = guest.ip_of.get(mac)
            name = guest.name if i == 0 else ""
            addr = _ip(ip) if ip else "-"
            counts = f"{guest.tcp:5d} {guest.udp:5d} {guest.pings:5d}" if i == 0 else ""
            out.append(f"  {name:<20s} {mac_to_str(mac) if mac else '-':<18s} {addr:<15s} {counts}")
            out.extend(f"  {'':<20s} {'':<18s} {_ip(ip6)}" for ip6 in guest.ip6_of.get(mac, ()))
    drops = {**stack.counters.as_dict(), **stack.guests.counters.as_dict()}
    shown = ", ".join(f"{k}={v}" for k, v in drops.items() if v and k not in ("frames_in", "tcp_flows", "udp_flows"))
    if shown:
        out.append(f"  counters: {shown}")
    if stack.faults.total:
        out.append("  internal errors: " + ", ".join(f"{k} x{n}" for k, n in stack.faults.counts.items()))
    return out

