"""``info network`` and ``info usernet`` as JSON: the same facts as control/monitor.py's text."""

from __future__ import annotations

import socket
from typing import Any

from vmlan.io.runtime import Runtime
from vmlan.io.usernet import UserNetPort
from vmlan.wire.ethernet import mac_to_str


def network_json(runtime: Runtime) -> list[dict[str, Any]]:
    hubs: list[dict[str, Any]] = []
    for hub in runtime.hubs.values():
        netdevs = []
        for nd in runtime.netdevs:
            if nd.cfg.hubid != hub.id:
                continue
            netdevs.append({
                "id": nd.cfg.id,
                "type": nd.cfg.driver,
                "info": nd.describe(),
                "ports": [{"name": p.name, "info": p.describe(), "link_up": p.link_up, **p.counters.as_dict()}
                          for p in nd.ports],
            })
        hubs.append({"id": hub.id, "kind": hub.kind, "netdevs": netdevs})
    return hubs


def usernet_json(ident: str, port: UserNetPort, hubid: int) -> dict[str, Any]:
    from vmlan.engines.usernet import PingFlow, TcpFlow, UdpFlow

    stack = port.stack
    now = port.loop_time()
    forwards = [{"proto": rule.proto, "fd": fd, "host_addr": rule.host_addr or "*", "host_port": bound,
                 "guest_addr": socket.inet_ntoa(rule.guest_addr), "guest_port": rule.guest_port}
                for rule, fd, bound in port.forward_fds()]
    tcp: list[dict[str, Any]] = []
    udp: list[dict[str, Any]] = []
    icmp: list[dict[str, Any]] = []
    for flow in stack.flows:
        if isinstance(flow, TcpFlow):
            conn = flow.conn
            tcp.append({"state": str(conn.state), "fd": port.fd_of(flow.fid),
                        "guest_addr": socket.inet_ntoa(flow.guest_ip),
                        "guest_port": flow.key[1], "dest_addr": socket.inet_ntoa(flow.far), "dest_port": flow.key[3],
                        "recvq": conn.unconsumed, "sendq": conn.bytes_unacked})
        elif isinstance(flow, UdpFlow):
            dst, dport = flow.last_dst
            left = max(0, int(flow.deadline - now)) if flow.deadline != float("inf") else 0
            udp.append({"expires_in": left, "fd": port.fd_of(flow.fid),
                        "guest_addr": socket.inet_ntoa(flow.guest_ip),
                        "guest_port": flow.guest_port, "dest_addr": dst, "dest_port": dport})
        elif isinstance(flow, PingFlow):
            left = max(0, int(flow.deadline - now)) if flow.deadline != float("inf") else 0
            icmp.append({"expires_in": left, "fd": port.fd_of(flow.fid),
                         "guest_addr": socket.inet_ntoa(flow.guest_ip),
                         "dest_addr": flow.dst})
    guests = []
    for guest in stack.guests.by_port.values():
        guests.append({"port": guest.name, "macs": sorted(mac_to_str(m) for m in guest.macs),
                       "addresses": {mac_to_str(m): socket.inet_ntoa(ip) for m, ip in guest.ip_of.items()},
                       "tcp": guest.tcp, "udp": guest.udp, "icmp": guest.pings})
    return {
        "netdev": ident,
        "hub": hubid,
        "forwards": forwards,
        "tcp": tcp,
        "udp": udp,
        "icmp": icmp,
        "guests": guests,
        "counters": {**stack.counters.as_dict(), **stack.guests.counters.as_dict()},
        "faults": dict(stack.faults.counts),
    }
