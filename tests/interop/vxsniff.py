"""Watch the VXLAN datagrams leaving a namespace's interface toward a port (``ip netns exec NS python vxsniff.py
IFACE PORT``): prints "ready" once listening, and at EOF on stdin one JSON line: the outer UDP source
ports seen per inner flow (IPv4 protocol and ports, "other" for the rest).
The test's namespaces have no tcpdump; an AF_PACKET socket is enough.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import sys

ETH_P_ALL = 0x0003


def main(ifname: str, port: int) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, 0))
    print("ready", flush=True)
    flows: dict[str, list[int]] = {}
    while True:
        ready, _, _ = select.select([sock, sys.stdin], [], [])
        if sys.stdin in ready and not sys.stdin.readline():
            break
        if sock not in ready:
            continue
        frame, addr = sock.recvfrom(65536)
        if addr[2] != socket.PACKET_OUTGOING:
            continue
        ethertype = frame[12:14]
        if ethertype == b"\x08\x00":
            l4 = 14 + (frame[14] & 15) * 4
            proto = frame[23]
        elif ethertype == b"\x86\xdd":
            l4, proto = 54, frame[20]
        else:
            continue
        if proto != 17 or len(frame) < l4 + 8 + 8 + 14:
            continue
        sport, dport = struct.unpack_from("!HH", frame, l4)
        if dport != port:
            continue
        inner = frame[l4 + 16 :]
        key = "other"
        if inner[12:14] == b"\x08\x00" and len(inner) >= 38:
            ihl = (inner[14] & 15) * 4
            key = f"{inner[23]}:{struct.unpack_from('!HH', inner, 14 + ihl)}" if inner[23] in (6, 17) else "icmp"
        flows.setdefault(key, [])
        if sport not in flows[key]:
            flows[key].append(sport)
    print(json.dumps({"flows": flows}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
