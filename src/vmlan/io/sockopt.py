"""Socket helpers shared by every link: buffer sizing and the link memory budget, accepting under fd
pressure, logging internal errors."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable

from vmlan.faults import Faults

log = logging.getLogger("vmlan")

LINK_BUFFER = 4 * 1024 * 1024  # a grown kernel buffer (the kernel doubles it for its bookkeeping)
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

OUT_TOTAL = 64 * 1024 * 1024  # user-space output queues of all stream ports together
OUT_MAX = 4 * 1024 * 1024  # one port's output queue, while there are few ports
OUT_MIN = 160 * 1024  # one port's output queue however many ports there are: two of the largest frames
GROWN_MAX = 8  # ports whose kernel send buffer may be grown to LINK_BUFFER at a time


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


class LinkBudget:
    """What the links of one process may hold in buffers, shared out among the ports that exist.

    * User-space output queues: each port may queue ``out_limit`` bytes toward its peer, OUT_TOTAL
      divided among the ports (at most OUT_MAX, at least OUT_MIN). Two ports get 4 MiB each, as
      before; 64 ports 1 MiB each; a flood toward hundreds of stuck peers cannot take more than
      OUT_MIN each.
    * Kernel send buffers: a port starts with the system default (net.core.wmem_default, ~208 KB,
      autotuned for TCP) and only a port whose peer keeps reading while we wait on a full buffer
      (a bulk mover) gets LINK_BUFFER, and only GROWN_MAX ports at a time: a stuck peer never
      reads, so it never grows.

    Ports ``join`` when they open and ``leave`` when they close. All of it runs on event-loop
    threads; the few fields are plain ints read on the hot path with one attribute load.
    """

    __slots__ = ("_members", "grown", "grown_max", "out_limit", "total")

    def __init__(self, total: int = OUT_TOTAL, grown_max: int = GROWN_MAX) -> None:
        self.total = total
        self.grown_max = grown_max
        self.grown = 0
        self._members = 0
        self.out_limit = OUT_MAX

    @property
    def members(self) -> int:
        return self._members

    def join(self) -> None:
        self._members += 1
        self._update()

    def leave(self) -> None:
        self._members = max(0, self._members - 1)
        self._update()

    def _update(self) -> None:
        self.out_limit = max(OUT_MIN, min(OUT_MAX, self.total // max(1, self._members)))

    def grow_send_buffer(self, sock: socket.socket) -> bool:
        """Give ``sock`` a LINK_BUFFER send buffer if the budget allows; the caller calls
        :meth:`release_grown` when that socket closes."""
        if self.grown >= self.grown_max:
            return False
        try:
            grow_buffers(sock, snd=LINK_BUFFER)
        except OSError:
            return False
        self.grown += 1
        return True

    def release_grown(self) -> None:
        self.grown = max(0, self.grown - 1)


BUDGET = LinkBudget()


def log_fault(kind: str, text: str) -> None:
    """The I/O layer's report of a new kind of internal error: once per kind, with its traceback."""
    log.error("internal error (%s); later ones of this kind are only counted:\n%s", kind, text.rstrip())


def new_faults() -> Faults:
    return Faults(on_new=log_fault)


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
