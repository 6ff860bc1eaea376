"""Socket buffer sizing shared by every link."""

from __future__ import annotations

import socket

LINK_BUFFER = 4 * 1024 * 1024
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33


def grow_buffers(sock: socket.socket, *, rcv: int = 0, snd: int = 0) -> None:
    """Bigger kernel buffers absorb bursts between two event-loop turns.

    The plain options are capped by net.core.rmem_max/wmem_max; the FORCE variants are not, but need
    CAP_NET_ADMIN, so we try them first and fall back quietly.
    """
    for size, forced, plain in ((rcv, SO_RCVBUFFORCE, socket.SO_RCVBUF), (snd, SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        if not size:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, size)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)
