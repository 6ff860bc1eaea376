"""Socket helpers shared by every link: buffer sizing, accepting under fd pressure."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Callable

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


ACCEPT_PAUSE = 0.5
_OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def accept_pending(
    sock: socket.socket,
    loop: asyncio.AbstractEventLoop,
    reader: Callable[[], None],
    on_connection: Callable[[socket.socket, object], None],
    limit: int = 64,
) -> None:
    """Accept what the listening ``sock`` has queued (at most ``limit`` per wakeup).

    Out of file descriptors, the pending connection stays in the backlog and a level-triggered
    reader would fire again at once, forever: stop listening for ACCEPT_PAUSE seconds instead.
    """
    for _ in range(limit):
        try:
            conn, addr = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in _OUT_OF_FDS and sock.fileno() >= 0:
                fd = sock.fileno()
                loop.remove_reader(fd)
                loop.call_later(ACCEPT_PAUSE, _resume_accept, sock, loop, reader)
            return
        on_connection(conn, addr)


def _resume_accept(sock: socket.socket, loop: asyncio.AbstractEventLoop, reader: Callable[[], None]) -> None:
    if sock.fileno() >= 0:
        loop.add_reader(sock.fileno(), reader)


def raise_fd_limit() -> None:
    """Every guest flow is a host socket: use the whole hard limit on open files, not the soft 1024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
