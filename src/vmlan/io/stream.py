"""Stream links: QEMU's ``-netdev socket,listen=|connect=`` and ``-netdev stream``.

Wire format (net/socket.c, net/stream.c): each frame is preceded by its length as a 4-byte big-endian
integer that does not count itself; no handshake, no padding, no checksum. A length above
NET_BUFSIZE (65536 + 4096) makes QEMU log "oversized packet received, connection terminated." and
close: so do we. vde_plug's stdio stream is the same with a 2-byte length (``header`` below).

Hot path: one reused receive buffer per connection, drained with ``recv_into`` on readiness (no
Task/Future per frame); frames are handed to the LAN as memoryview slices of that buffer. Output is
appended to one bytearray per connection and flushed once per loop iteration, so a burst of frames
costs one ``send`` syscall. The output buffer is bounded: a slow or stuck peer loses whole frames
(counted), never blocks the LAN, never grows memory, and frames never interleave.
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
from collections.abc import Callable

from vmlan.config.netdev import InetAddr, SocketAddress, StreamNetdev, UnixAddr
from vmlan.io.errors import LinkError
from vmlan.io.sockopt import LINK_BUFFER, accept_pending, grow_buffers
from vmlan.lan import Hub, Port
from vmlan.wire import BytesLike
from vmlan.wire.vnet import Offload

log = logging.getLogger("vmlan")

NET_BUFSIZE = 4096 + 65536  # QEMU's largest frame on a stream link
QEMU_HEADER = struct.Struct(">I")
RECV_BUFSIZE = 256 * 1024 + NET_BUFSIZE
OUT_LIMIT = 4 * 1024 * 1024  # bytes queued toward one peer before new frames are dropped
READS_PER_WAKEUP = 16


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
        "_closed",
        "_end",
        "_flush_pending",
        "_header",
        "_loop",
        "_max_frame",
        "_on_close",
        "_out",
        "_rbuf",
        "_rview",
        "_sock",
        "_start",
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
    ) -> None:
        super().__init__(name)
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The default ~208 KB send buffer signals writable only after draining to a quarter: bursts
        # would pile into our output queue and overflow it.
        grow_buffers(sock, snd=LINK_BUFFER)
        if keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self._loop = loop
        self._on_close = on_close
        self._header = header
        self._max_frame = max_frame
        self._rbuf = bytearray(RECV_BUFSIZE)
        self._rview = memoryview(self._rbuf)
        self._start = 0
        self._end = 0
        self._out = bytearray()
        self._flush_pending = False
        self._writer_armed = False
        self._closed = False

    def start(self) -> None:
        self._loop.add_reader(self.fd, self._on_readable)

    def describe(self) -> str:
        return self.peer

    # -- receive ---------------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        buf = self._rbuf
        view = self._rview
        sock = self._sock
        unpack_from = self._header.unpack_from
        hlen = self._header.size
        max_frame = self._max_frame
        start, end = self._start, self._end
        for _ in range(READS_PER_WAKEUP):
            room = RECV_BUFSIZE - end
            try:
                n = sock.recv_into(view[end:])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.close(f"read error: {exc.strerror or exc}")
                return
            if n == 0:
                self.close("connection closed by peer")
                return
            end += n
            while end - start >= hlen:
                size = unpack_from(buf, start)[0]
                if size > max_frame:
                    self.close("oversized packet received, connection terminated.")
                    return
                if end - start - hlen < size:
                    break
                start += hlen
                if size == 0:
                    continue
                lan = self.lan
                if lan is not None:
                    lan.input(self, view[start : start + size])
                start += size
                if self._closed:
                    return
            if start == end:
                start = end = 0
            elif RECV_BUFSIZE - end < max_frame + hlen:
                pending = end - start
                buf[0:pending] = buf[start:end]
                start, end = 0, pending
            if n < room:
                break
        self._start, self._end = start, end

    # -- transmit --------------------------------------------------------------------------------------
    def transmit(self, frame: BytesLike, src: Port, offload: Offload | None) -> bool:
        out = self._out
        if self._closed or len(out) > OUT_LIMIT:
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
        self._out.clear()
        if self.lan is not None:
            self.lan.detach(self)
        self._on_close(self, reason)


def _keepalive(cfg: StreamNetdev) -> bool:
    return isinstance(cfg.addr, InetAddr) and cfg.addr.keepalive


def _listen_socket(addr: SocketAddress, what: str) -> socket.socket:
    family, sa = sockaddr(addr)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if isinstance(addr, UnixAddr):
            if not addr.abstract:
                _unlink_stale_socket(addr.path, what)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sa)
        sock.listen(16)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
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
    """A listening stream netdev: every accepted peer becomes a port of its own on the LAN."""

    def __init__(self, cfg: StreamNetdev, lan: Hub, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.lan = lan
        self.loop = loop
        self.ports: list[StreamPort] = []
        self.on_port: Callable[[StreamPort], None] | None = None  # lets the runner attach dumps
        self._sock: socket.socket | None = None
        self._counter = 0
        self.label = f"{cfg.driver} {cfg.id}"

    def start(self) -> None:
        self._sock = _listen_socket(self.cfg.addr, f"-netdev {self.cfg.driver},id={self.cfg.id}")
        self.loop.add_reader(self._sock.fileno(), self._on_accept)
        log.info("%s: listening on %s", self.label, format_addr(self.cfg.addr))

    def describe(self) -> str:
        return f"listening on {format_addr(self.cfg.addr)}, {len(self.ports)} peer(s)"

    def _on_accept(self) -> None:
        if self._sock is not None:
            accept_pending(self._sock, self.loop, self._on_accept, self._accepted)

    def _accepted(self, conn: socket.socket, raddr: object) -> None:
        self._counter += 1
        if isinstance(raddr, tuple):
            host, rport = raddr[0], raddr[1]
            peer = f"socket: connection from {host}:{rport}" if self.cfg.driver == "socket" else f"tcp:{host}:{rport}"
        else:
            peer = f"unix:{self.cfg.addr}"
        port = StreamPort(f"{self.cfg.id}.{self._counter}", conn, peer, self.loop, self._port_closed,
                          keepalive=_keepalive(self.cfg))
        self.ports.append(port)
        if self.on_port is not None:
            self.on_port(port)
        self.lan.attach(port)
        port.start()
        log.info("%s: peer %s connected (%s)", self.label, port.name, peer)

    def _port_closed(self, port: StreamPort, reason: str) -> None:
        if port in self.ports:
            self.ports.remove(port)
        log.info("%s: peer %s left (%s)", self.label, port.name, reason)

    def close(self) -> None:
        for port in list(self.ports):
            port.close("shutting down")
        if self._sock is not None:
            self.loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
            addr = self.cfg.addr
            if isinstance(addr, UnixAddr) and not addr.abstract:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(addr.path)


class StreamClient:
    """A connecting stream netdev: one port; with reconnect-ms it redials whenever the peer goes."""

    def __init__(self, cfg: StreamNetdev, lan: Hub, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.lan = lan
        self.loop = loop
        self.port: StreamPort | None = None
        self.on_port: Callable[[StreamPort], None] | None = None
        self.label = f"{cfg.driver} {cfg.id}"
        self._retry: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def ports(self) -> list[StreamPort]:
        return [self.port] if self.port is not None else []

    def describe(self) -> str:
        state = "connected" if self.port is not None else "not connected"
        return f"connect to {format_addr(self.cfg.addr)}, {state}"

    async def start(self) -> None:
        """Connect once; without reconnect-ms a refused connection is a startup error."""
        try:
            await self._connect()
        except OSError as exc:
            if not self.cfg.reconnect_ms:
                raise LinkError(
                    f"-netdev {self.cfg.driver},id={self.cfg.id}: connect to {format_addr(self.cfg.addr)} failed: "
                    f"{os_reason(exc)}"
                ) from None
            log.warning("%s: connect to %s failed (%s); retrying every %d ms", self.label,
                        format_addr(self.cfg.addr), os_reason(exc), self.cfg.reconnect_ms)
            self._schedule_retry()

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
        port = StreamPort(self.cfg.id, sock, peer, self.loop, self._port_closed, keepalive=_keepalive(self.cfg))
        self.port = port
        if self.on_port is not None:
            self.on_port(port)
        self.lan.attach(port)
        port.start()
        log.info("%s: connected to %s", self.label, format_addr(self.cfg.addr))

    def _schedule_retry(self) -> None:
        if self._closing:
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

    def _port_closed(self, port: StreamPort, reason: str) -> None:
        self.port = None
        log.info("%s: peer left (%s)", self.label, reason)
        if self.cfg.reconnect_ms and not self._closing:
            self._schedule_retry()

    def close(self) -> None:
        self._closing = True
        if self._retry is not None:
            self._retry.cancel()
        if self._connecting is not None:
            self._connecting.cancel()
        if self.port is not None:
            self.port.close("shutting down")
