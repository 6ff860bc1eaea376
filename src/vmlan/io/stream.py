"""Stream links: QEMU's ``-netdev socket,listen=|connect=`` and ``-netdev stream``.

Wire format (net/socket.c, net/stream.c): each frame is preceded by its length as a 4-byte big-endian
integer that does not count itself; no handshake, no padding, no checksum. A length above
NET_BUFSIZE (65536 + 4096) makes QEMU log "oversized packet received, connection terminated." and
close: so do we. vde_plug's stdio stream is the same with a 2-byte length (``header`` below).

Receive: every stream port of a thread reads into one shared buffer (:class:`RxArea`: loop callbacks
run one at a time, and a frame handed to the LAN is valid only during the call), so an idle peer costs
no buffer at all. When a turn ends in the middle of a frame, only those pending bytes are copied into a
buffer of the port's own, sized to them. Frames go to the LAN as memoryview slices; no Task/Future per
frame.

Fairness: per event-loop turn a port handles at most RX_FRAMES frames, reads at most RX_BYTES bytes, and
stops once its frames have taken RX_TIME seconds (what a frame costs depends on where it goes: ~0.3 us
between two stream ports, 10-50 us into the user stack); the rest stays in the kernel, or in the port's
pending bytes, for the next turn. So one guest's flood delays the other ports' frames by one turn's
worth (~2-4 ms), not by a whole socket buffer's (seconds). A frame count alone cannot do it: 64 frames
a turn, enough for a slow consumer, halved the hub's 64-byte throughput. Reads are sized to what the
port handled in a turn lately, so a turn cut short rarely leaves whole frames behind to copy.

Transmit: output is appended to one bytearray per connection and flushed once per loop iteration, so a
burst of frames costs one ``send`` syscall. The queue is bounded by the process-wide
:class:`~vmlan.io.sockopt.LinkBudget` (smaller per port as ports multiply): a slow or stuck peer loses
whole frames (counted), never blocks the LAN, never grows memory, and frames never interleave. Kernel
send buffers start at the system default and grow only for peers that keep reading a bulk flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import struct
import threading
from collections.abc import Callable
from time import perf_counter

from vmlan.config.netdev import InetAddr, SocketAddress, StreamNetdev, UnixAddr
from vmlan.faults import Faults
from vmlan.io.errors import LinkError
from vmlan.io.sockopt import BUDGET, LinkBudget, accept_pending, new_faults
from vmlan.lan import Hub, Port
from vmlan.wire import BytesLike
from vmlan.wire.vnet import Offload

log = logging.getLogger("vmlan")

NET_BUFSIZE = 4096 + 65536  # QEMU's largest frame on a stream link
QEMU_HEADER = struct.Struct(">I")
RX_FRAMES = 1024  # frames one port handles per event-loop turn
RX_BYTES = 1024 * 1024  # bytes one port reads per turn (one frame more, to finish a frame begun)
RX_TIME = 0.002  # seconds one port's frames may take per turn
RX_CHECK = 32  # frames between two looks at the clock...
RX_CHECK_BYTES = 64 * 1024  # ...or fewer, so that no more than this many bytes pass between two looks
RX_AREA_SIZE = RX_BYTES + 2 * (NET_BUFSIZE + 8)  # a turn's reads plus a pending partial frame
_FIRST_ESTIMATE = 1024  # bytes per frame (header included) assumed before a port has seen any


class RxArea(threading.local):
    """The receive buffer shared by every link served on this thread (one event loop per thread).

    ``busy`` guards the sharing: a turn that finds it set (a callback nested inside another, which
    an event loop never does) reads into a buffer of its own instead.
    """

    def __init__(self) -> None:
        self.buf = bytearray(RX_AREA_SIZE)
        self.view = memoryview(self.buf)
        self.busy = False


RX_AREA = RxArea()


def os_reason(exc: OSError) -> str:
    """The plain OS wording ("Connection refused"), not asyncio's decorated message."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


def format_addr(addr: SocketAddress) -> str:
    if isinstance(addr, UnixAddr):
        return f"unix:{addr}"
    return f"tcp:{addr.host or '0.0.0.0'}:{addr.port}"


def sockaddr(addr: SocketAddress) -> tuple[int, str | bytes | tuple[str, int]]:
    """(address family, the address as the socket module takes it); abstract unix names start NUL."""
    if isinstance(addr, UnixAddr):
        path = ("\0" + addr.path).encode() if addr.abstract else addr.path
        return socket.AF_UNIX, path
    return socket.AF_INET, (addr.host or "0.0.0.0", addr.port)


class StreamPort(Port):
    """One connected peer of a stream link."""

    __slots__ = (
        "_budget",
        "_cap",
        "_closed",
        "_estimate",
        "_faults",
        "_flush_pending",
        "_grown",
        "_header",
        "_loop",
        "_max_frame",
        "_on_close",
        "_out",
        "_pending",
        "_resume_pending",
        "_sock",
        "_writer_armed",
        "fd",
        "peer",
    )

    def __init__(
        self,
        name: str,
        sock: socket.socket,
        peer: str,
        loop: asyncio.AbstractEventLoop,
        on_close: Callable[[StreamPort, str], None],
        header: struct.Struct = QEMU_HEADER,
        max_frame: int = NET_BUFSIZE,
        keepalive: bool = False,
        faults: Faults | None = None,
        budget: LinkBudget = BUDGET,
    ) -> None:
        super().__init__(name)
        if max_frame > NET_BUFSIZE:
            raise ValueError(f"max_frame {max_frame} does not fit the receive area")
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self._loop = loop
        self._on_close = on_close
        self._header = header
        self._max_frame = max_frame
        self._faults = faults if faults is not None else new_faults()
        self._budget = budget
        self._pending: bytes | None = None  # bytes received but not yet handled (usually part of a frame)
        self._estimate = _FIRST_ESTIMATE
        self._cap = RX_FRAMES
        self._resume_pending = False
        self._out = bytearray()
        self._flush_pending = False
        self._writer_armed = False
        self._grown = False
        self._closed = False
        budget.join()

    def start(self) -> None:
        self._loop.add_reader(self.fd, self._on_readable)

    def describe(self) -> str:
        return self.peer

    @property
    def pending_bytes(self) -> int:
        """Bytes this port holds between turns (a partial frame): the only receive memory it owns."""
        return len(self._pending) if self._pending is not None else 0

    # -- receive ---------------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        if not self._resume_pending:  # else the scheduled turn comes first
            self._turn()

    def _resume(self) -> None:
        self._resume_pending = False
        if not self._closed:
            self._turn()

    def _turn(self) -> None:
        area = RX_AREA
        if area.busy:
            self._faults.record("stream rx area in use")
            buf = bytearray(RX_AREA_SIZE)
            self._receive(buf, memoryview(buf))
            return
        area.busy = True
        try:
            self._receive(area.buf, area.view)
        finally:
            area.busy = False

    def _receive(self, buf: bytearray, view: memoryview) -> None:
        """One turn: handle the pending bytes, read what the budget allows, keep what is left over.

        The budget: RX_FRAMES frames, RX_BYTES bytes read, and RX_TIME seconds of handling, the clock
        looked at every RX_CHECK frames or RX_CHECK_BYTES bytes (its cost is then lost in the noise
        even at 64-byte frames).
        Each read is sized to what the port handled in a turn lately (``_cap`` frames of ``_estimate``
        bytes), so a turn cut short by the clock leaves little behind to copy.
        """
        sock = self._sock
        unpack_from = self._header.unpack_from
        hlen = self._header.size
        max_frame = self._max_frame
        pending = self._pending
        start = end = 0
        if pending is not None:
            end = len(pending)
            buf[:end] = pending
            self._pending = None
        had = end
        handled = 0
        every = max(1, min(RX_CHECK, RX_CHECK_BYTES // self._estimate))  # frames between looks at the clock
        chunk = every  # frames left before the next look
        unread = RX_BYTES  # bytes left in this turn's budget
        read_size = self._cap * self._estimate
        deadline = perf_counter() + RX_TIME
        cut = drained = False
        while True:
            need = hlen
            while end - start >= hlen:
                size = unpack_from(buf, start)[0]
                if size > max_frame:
                    self.close("oversized packet received, connection terminated.")
                    return
                stop = start + hlen + size
                if stop > end:
                    need = stop - end
                    break
                if size:
                    lan = self.lan
                    if lan is not None:
                        try:
                            lan.input(self, view[start + hlen : stop])
                        except Exception:  # a bug behind the LAN costs this frame, never the link
                            self.counters.rx_dropped += 1
                            self._faults.record("stream rx")
                    if self._closed:
                        return
                start = stop
                chunk -= 1  # zero-length frames cost a turn's work too
                if not chunk:
                    break
            else:
                need -= end - start
            if not chunk:
                handled += every
                chunk = every
                if handled >= RX_FRAMES or perf_counter() > deadline:
                    cut = True
                    break
                continue
            if drained or unread <= 0:
                break
            want = max(min(read_size, unread), need)
            if start == end:
                start = end = 0
            elif len(buf) - end < want:
                buf[: end - start] = buf[start:end]
                start, end = 0, end - start
            try:
                n = sock.recv_into(view[end:], want)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.close(f"read error: {exc.strerror or exc}")
                return
            if n == 0:
                self.close("connection closed by peer")
                return
            end += n
            unread -= n
            drained = n < want
        handled += every - chunk
        if handled:
            used = had + (RX_BYTES - unread) - (end - start)
            self._estimate = max(hlen, min(used // handled, hlen + max_frame))
            self._cap = max(every, handled) if cut else min(RX_FRAMES, 2 * self._cap)
        if start == end:
            return
        left = bytes(view[start:end])
        self._pending = left
        # Whole frames left behind (the budget ran out) may have nothing behind them in the kernel to
        # wake us: come back next turn.
        if (cut and not self._resume_pending and len(left) >= hlen
                and hlen + unpack_from(left, 0)[0] <= len(left)):
            self._resume_pending = True
            self._loop.call_soon(self._resume)

    # -- transmit --------------------------------------------------------------------------------------
    def transmit(self, frame: BytesLike, src: Port, offload: Offload | None) -> bool:
        out = self._out
        if self._closed or len(out) > self._budget.out_limit:
            return False
        out += self._header.pack(len(frame))
        out += frame
        if not self._flush_pending and not self._writer_armed:
            self._flush_pending = True
            self._loop.call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_pending = False
        if self._closed or self._writer_armed or not self._out:
            return
        self._write_some()
        if self._out and not self._closed:
            self._writer_armed = True
            self._loop.add_writer(self.fd, self._on_writable)

    def _on_writable(self) -> None:
        # The peer read from a full send buffer: it moves bulk traffic, so it may have a big buffer
        # (the default one signals writable only once drained to a quarter, and bursts would pile
        # into our output queue). A stuck peer never gets here.
        if not self._grown:
            self._grown = self._budget.grow_send_buffer(self._sock)
        self._write_some()
        if not self._out and not self._closed:
            self._writer_armed = False
            self._loop.remove_writer(self.fd)

    def _write_some(self) -> None:
        out = self._out
        try:
            sent = self._sock.send(out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(f"write error: {exc.strerror or exc}")
            return
        del out[:sent]

    # -- teardown --------------------------------------------------------------------------------------
    def close(self, reason: str = "closed") -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self.fd)
        if self._writer_armed:
            self._loop.remove_writer(self.fd)
        self._sock.close()
        self._out = bytearray()
        self._pending = None
        self._budget.leave()
        if self._grown:
            self._budget.release_grown()
        if self.lan is not None:
            self.lan.detach(self)
        self._on_close(self, reason)


def _keepalive(cfg: StreamNetdev) -> bool:
    return isinstance(cfg.addr, InetAddr) and cfg.addr.keepalive


UNIX_PATH_MAX = 107  # sun_path holds 108 bytes, NUL included


def _listen_socket(addr: SocketAddress, what: str) -> socket.socket:
    """A listening socket. A unix socket is bound under a temporary name next to its path and renamed
    into place once it listens: its path never exists without accepting, so a guest that connects
    the moment the path appears is never refused."""
    family, sa = sockaddr(addr)
    sock = socket.socket(family, socket.SOCK_STREAM)
    staged: str | None = None
    try:
        if isinstance(addr, UnixAddr):
            if not addr.abstract:
                _unlink_stale_socket(addr.path, what)
                head, tail = os.path.split(addr.path)
                candidate = os.path.join(head, f".{tail}.{os.getpid()}")
                if len(os.fsencode(candidate)) <= UNIX_PATH_MAX:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(candidate)
                    staged = candidate
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(staged if staged is not None else sa)
        sock.listen(16)
        if staged is not None:
            assert isinstance(addr, UnixAddr)
            os.rename(staged, addr.path)
            staged = None
        sock.setblocking(False)
    except (OSError, LinkError) as exc:
        sock.close()
        if staged is not None:
            with contextlib.suppress(OSError):
                os.unlink(staged)
        if isinstance(exc, LinkError):
            raise
        raise LinkError(f"{what}: cannot listen on {format_addr(addr)}: {exc.strerror or exc}") from None
    return sock


def _unlink_stale_socket(path: str, what: str) -> None:
    """QEMU unlinks the path before binding; refuse to remove anything that is not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise LinkError(f"{what}: {path} exists and is not a socket")
    os.unlink(path)


class StreamServer:
    """A listening stream netdev: every accepted peer becomes a port of its own on the LAN.

    At most ``cfg.max_peers`` peers at a time: a connection beyond that is accepted and closed at once
    (so the backlog never fills with them), counted in ``refused``, and logged once per stretch of
    time the link is full.
    """

    def __init__(
        self, cfg: StreamNetdev, lan: Hub, loop: asyncio.AbstractEventLoop, faults: Faults | None = None
    ) -> None:
        self.cfg = cfg
        self.lan = lan
        self.loop = loop
        self.faults = faults if faults is not None else new_faults()
        self.ports: list[StreamPort] = []
        self.on_port: Callable[[StreamPort], None] | None = None  # lets the runner attach dumps
        self.refused = 0
        self._refusing = 0  # connections refused since the link became full (0: not refusing)
        self._sock: socket.socket | None = None
        self._counter = 0
        self.label = f"{cfg.driver} {cfg.id}"

    def start(self) -> None:
        self._sock = _listen_socket(self.cfg.addr, f"-netdev {self.cfg.driver},id={self.cfg.id}")
        self.loop.add_reader(self._sock.fileno(), self._on_accept)
        log.info("%s: listening on %s", self.label, format_addr(self.cfg.addr))

    def describe(self) -> str:
        text = f"listening on {format_addr(self.cfg.addr)}, {len(self.ports)} peer(s)"
        if self.refused:
            text += f", {self.refused} refused (max-peers={self.cfg.max_peers})"
        return text

    def _on_accept(self) -> None:
        if self._sock is not None:
            accept_pending(self._sock, self.loop, self._on_accept, self._accepted)

    def _accepted(self, conn: socket.socket, raddr: object) -> None:
        if len(self.ports) >= self.cfg.max_peers:
            conn.close()
            self.refused += 1
            if not self._refusing:
                log.warning("%s: %d peers connected (max-peers=%d): refusing new connections", self.label,
                            len(self.ports), self.cfg.max_peers)
            self._refusing += 1
            return
        try:
            self._add_peer(conn, raddr)
        except Exception:
            conn.close()
            self.faults.record("stream accept")

    def _add_peer(self, conn: socket.socket, raddr: object) -> None:
        self._counter += 1
        if isinstance(raddr, tuple):
            host, rport = raddr[0], raddr[1]
            peer = f"socket: connection from {host}:{rport}" if self.cfg.driver == "socket" else f"tcp:{host}:{rport}"
        else:
            peer = f"unix:{self.cfg.addr}"
        port = StreamPort(f"{self.cfg.id}.{self._counter}", conn, peer, self.loop, self._port_closed,
                          keepalive=_keepalive(self.cfg), faults=self.faults)
        self.ports.append(port)
        try:
            if self.on_port is not None:
                self.on_port(port)
            self.lan.attach(port)
            port.start()
        except BaseException:
            port.close("internal error")
            raise
        log.info("%s: peer %s connected (%s)", self.label, port.name, peer)

    def _port_closed(self, port: StreamPort, reason: str) -> None:
        if port in self.ports:
            self.ports.remove(port)
        log.info("%s: peer %s left (%s)", self.label, port.name, reason)
        if self._refusing and len(self.ports) < self.cfg.max_peers and self._sock is not None:
            log.info("%s: accepting peers again (%d connection(s) refused while full)", self.label, self._refusing)
            self._refusing = 0

    def close(self) -> None:
        if self._sock is not None:
            self.loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
            addr = self.cfg.addr
            if isinstance(addr, UnixAddr) and not addr.abstract:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(addr.path)
        for port in list(self.ports):
            port.close("shutting down")


class StreamClient:
    """A connecting stream netdev: one port; with reconnect-ms it redials whenever the peer goes.

    :meth:`start` only begins the first connection attempt; :meth:`wait_started` waits for its outcome
    and raises LinkError if it failed without reconnect-ms (a startup error). Nobody waiting, such a
    failure is logged instead (``report_failure``), and the link stays, not connected, until removed.
    """

    def __init__(
        self, cfg: StreamNetdev, lan: Hub, loop: asyncio.AbstractEventLoop, faults: Faults | None = None
    ) -> None:
        self.cfg = cfg
        self.lan = lan
        self.loop = loop
        self.faults = faults if faults is not None else new_faults()
        self.port: StreamPort | None = None
        self.on_port: Callable[[StreamPort], None] | None = None
        self.label = f"{cfg.driver} {cfg.id}"
        self.report_failure = True  # log a failed first attempt (False: the caller of wait_started reports it)
        self.error: LinkError | None = None
        self._started = asyncio.Event()
        self._retry: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def ports(self) -> list[StreamPort]:
        return [self.port] if self.port is not None else []

    def describe(self) -> str:
        state = "connected" if self.port is not None else "not connected"
        return f"connect to {format_addr(self.cfg.addr)}, {state}"

    def start(self) -> None:
        self._connecting = self.loop.create_task(self._first_attempt())

    async def wait_started(self) -> None:
        """Wait for the first attempt; LinkError if it failed and no reconnect-ms will try again."""
        await self._started.wait()
        if self.error is not None:
            raise self.error

    async def _first_attempt(self) -> None:
        try:
            await self._connect()
        except OSError as exc:
            reason = f"connect to {format_addr(self.cfg.addr)} failed: {os_reason(exc)}"
            if not self.cfg.reconnect_ms:
                self.error = LinkError(f"-netdev {self.cfg.driver},id={self.cfg.id}: {reason}")
                if self.report_failure:
                    log.warning("%s: %s", self.label, reason)
            else:
                log.warning("%s: %s; retrying every %d ms", self.label, reason, self.cfg.reconnect_ms)
                self._schedule_retry()
        finally:
            self._connecting = None
            self._started.set()

    async def _connect(self) -> None:
        family, sa = sockaddr(self.cfg.addr)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(self.loop.sock_connect(sock, sa), timeout=10)
        except TimeoutError:
            sock.close()
            raise OSError(errno.ETIMEDOUT, "connection timed out") from None
        except BaseException:
            sock.close()
            raise
        if self._closing:
            sock.close()
            return
        peer = f"socket: connect to {self.cfg.addr}" if self.cfg.driver == "socket" else format_addr(self.cfg.addr)
        port = StreamPort(self.cfg.id, sock, peer, self.loop, self._port_closed, keepalive=_keepalive(self.cfg),
                          faults=self.faults)
        self.port = port
        try:
            if self.on_port is not None:
                self.on_port(port)
            self.lan.attach(port)
            port.start()
        except Exception:
            port.close("internal error")
            self.faults.record("stream connect")
            raise OSError(errno.EIO, "internal error") from None
        log.info("%s: connected to %s", self.label, format_addr(self.cfg.addr))

    def _schedule_retry(self) -> None:
        if self._closing or self._retry is not None:
            return
        self._retry = self.loop.call_later(self.cfg.reconnect_ms / 1000, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._connecting = self.loop.create_task(self._retry_task())

    async def _retry_task(self) -> None:
        try:
            await self._connect()
        except OSError:
            self._schedule_retry()
        finally:
            self._connecting = None

    def _port_closed(self, port: StreamPort, reason: str) -> None:
        self.port = None
        log.info("%s: peer left (%s)", self.label, reason)
        if self.cfg.reconnect_ms and not self._closing:
            self._schedule_retry()

    def close(self) -> None:
        self._closing = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self.port is not None:
            self.port.close("shutting down")
        self._started.set()
