"""VDE links: vmlan as a client of a VDE switch (QEMU's ``-netdev vde``) and as a VDE switch itself.

The protocol (vde-2 src/vde_switch/datasock.c, vdeplug4 libvdeplug4/libvdeplug_vde.c, QEMU net/vde.c):

1. The client connects a unix *stream* socket to ``DIR/ctl`` (DIR is the switch's control directory).
2. It binds a unix *datagram* socket of its own, ``DIR/.PPPPP-NNNNN`` (pid, counter), sets its group and
   mode, and sends one ``struct request_v3`` (packed, host byte order) on the control stream::

        0                   1                   2                   3
        0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
       +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
       |                     magic = 0xfeedface                        |
       +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
       |                         version = 3                           |
       +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
       |              port (0 = any)                   | type (0 = NEW_CONTROL, 1 = NEW_PORT0)
       +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
       | sun_family = AF_UNIX (u16)    |  sun_path[108], NUL-padded    :
       +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               :
       :            the client's data socket path (110 bytes in all)   :
       +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
       |  description, up to 128 bytes, no NUL ("QEMU user=me pid=42")  :
       +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

   (``type`` is one u32: REQ_NEW_CONTROL + (port << 8).)
3. The switch creates a datagram socket, connects it to the client's path, binds it to
   ``DIR/NNN.FD`` (port number, that socket's fd) and answers with one raw ``struct sockaddr_un``
   (110 bytes) on the control stream. The client connects its datagram socket there and unlinks its
   own path (vdeplug4).
4. From then on, each datagram is one Ethernet frame, no header, in both directions. Nothing more
   is said on the control stream; its EOF (either side) ends the port. vde_plug quits as soon as the
   control stream becomes readable.

The switch validates what a client says before acting on it: the request's magic, version, type,
port and path; the path must be an absolute socket path owned by the user at the other end of the
control stream (SO_PEERCRED), so that no client can make vmlan send the LAN's frames to somebody
else's socket. Handshakes are capped in number, size and time.

Hot path as in io/dgram.py: ``add_reader`` and a draining ``recv_into`` into one reused buffer; sends
go straight to the socket, and when the kernel pushes back frames wait in a bounded queue drained on
writability, beyond which they are dropped and counted. Both ends of a VDE data pair are connected to
each other, so neither direction is held to net.unix.max_dgram_qlen.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import pwd
import socket
import stat
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from vmlan.config.vde import VdeNetdev
from vmlan.io.errors import LinkError
from vmlan.io.sockopt import LINK_BUFFER, accept_pending, grow_buffers
from vmlan.io.stream import NET_BUFSIZE
from vmlan.lan import Hub, Port
from vmlan.wire import BytesLike
from vmlan.wire.errors import IntegrityError, SanityError
from vmlan.wire.vnet import Offload

log = logging.getLogger("vmlan")

# -- the control protocol (pure) ------------------------------------------------------------------------
SWITCH_MAGIC = 0xFEEDFACE
VDE_VERSION = 3
REQ_NEW_CONTROL = 0
REQ_NEW_PORT0 = 1  # vde_switch's management port 0: vmlan has no management console
REQUEST_HEAD = struct.Struct("=III")  # magic, version, type (host byte order, packed)
SOCKADDR_UN = struct.Struct("=H108s")  # sun_family, sun_path
REQUEST_FIXED = REQUEST_HEAD.size + SOCKADDR_UN.size  # 122: a request without its description
MAX_DESCR = 128
REQBUFLEN = 256  # vde_switch reads at most this much of a request
ETH_HLEN = 14


@dataclass(frozen=True, slots=True)
class VdeRequest:
    """A decoded ``struct request_v3``."""

    kind: int  # REQ_NEW_CONTROL or REQ_NEW_PORT0
    port: int  # requested port, 0 = any
    path: bytes  # the client's data socket (sun_path up to its first NUL; abstract names start with NUL)
    description: str


def encode_sockaddr_un(path: bytes) -> bytes:
    if len(path) >= 108:
        raise SanityError("VDE", f"socket path of {len(path)} bytes does not fit sun_path[108]")
    return SOCKADDR_UN.pack(socket.AF_UNIX, path)


def decode_sockaddr_un(buf: BytesLike, offset: int = 0) -> bytes:
    """The sun_path of a raw ``struct sockaddr_un`` (up to its first NUL, or the abstract name)."""
    if len(buf) - offset < SOCKADDR_UN.size:
        raise IntegrityError("VDE", f"sockaddr_un of {len(buf) - offset} bytes < {SOCKADDR_UN.size}")
    family, raw = SOCKADDR_UN.unpack_from(buf, offset)
    if family != socket.AF_UNIX:
        raise SanityError("VDE", f"socket address family {family} is not AF_UNIX")
    path = bytes(raw)
    if path[:1] == b"\0":  # an abstract name (or none at all): its length is not on the wire
        return path.rstrip(b"\0") if path.strip(b"\0") else b""
    return path.split(b"\0", 1)[0]


def encode_request(path: bytes, port: int = 0, description: str = "", kind: int = REQ_NEW_CONTROL) -> bytes:
    """A request_v3 as libvdeplug sends it: the description's bytes without a NUL, cut to 128."""
    if not 0 <= port <= 0xFFFFFF:
        raise SanityError("VDE", f"port {port} does not fit the request's type field")
    descr = description.encode("utf-8", "replace")[:MAX_DESCR]
    return REQUEST_HEAD.pack(SWITCH_MAGIC, VDE_VERSION, kind + (port << 8)) + encode_sockaddr_un(path) + descr


def decode_request(buf: BytesLike) -> VdeRequest:
    """Check and decode a client's request (what arrived on the control stream, at most REQBUFLEN)."""
    if len(buf) < REQUEST_HEAD.size:
        raise IntegrityError("VDE", f"request of {len(buf)} bytes < {REQUEST_HEAD.size}")
    magic, version, kind_port = REQUEST_HEAD.unpack_from(buf, 0)
    if magic != SWITCH_MAGIC:
        raise IntegrityError("VDE", f"bad magic 0x{magic:08x} (not a VDE request, or a v0 one)")
    if version != VDE_VERSION:
        raise SanityError("VDE", f"request for a version {version} port (only version 3 is supported)")
    if len(buf) < REQUEST_FIXED:
        raise IntegrityError("VDE", f"v3 request of {len(buf)} bytes < {REQUEST_FIXED}")
    kind, port = kind_port & 0xFF, kind_port >> 8
    if kind not in (REQ_NEW_CONTROL, REQ_NEW_PORT0):
        raise SanityError("VDE", f"bad request type {kind}")
    path = decode_sockaddr_un(buf, REQUEST_HEAD.size)
    raw = bytes(buf[REQUEST_FIXED : REQUEST_FIXED + MAX_DESCR]).split(b"\0", 1)[0]
    return VdeRequest(kind, port, path, raw.decode("utf-8", "replace"))


# -- one connected client/switch pair --------------------------------------------------------------------
READS_PER_WAKEUP = 64
QUEUE_FRAMES = 1024
QUEUE_BYTES = 4 * 1024 * 1024
HANDSHAKE_TIMEOUT = 10.0
_PEER_GONE = frozenset({errno.ECONNREFUSED, errno.ENOTCONN, errno.ECONNRESET, errno.EPIPE})


class VdePort(Port):
    """One VDE data pair (a connected unix datagram socket) and the control stream that keeps it alive."""

    __slots__ = (
        "_buf",
        "_closed",
        "_ctl",
        "_data",
        "_loop",
        "_on_close",
        "_queue",
        "_queued_bytes",
        "_unlink",
        "_view",
        "_writer_armed",
        "data_fd",
        "number",
        "peer",
    )

    def __init__(
        self,
        name: str,
        data: socket.socket,
        ctl: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_close: Callable[[VdePort, str], None],
        peer: str = "",
        number: int = 0,
        unlink: tuple[str, ...] = (),
    ) -> None:
        super().__init__(name)
        data.setblocking(False)
        ctl.setblocking(False)
        grow_buffers(data, rcv=LINK_BUFFER, snd=LINK_BUFFER)  # unsent datagrams count against sndbuf
        self._data = data
        self._ctl = ctl
        self.data_fd = data.fileno()
        self._loop = loop
        self._on_close = on_close
        self.peer = peer
        self.number = number  # the switch port this pair is (from DIR/NNN.FD)
        self._unlink = unlink  # socket files of ours to remove when the pair goes
        self._buf = bytearray(NET_BUFSIZE + 1)  # one more byte: a datagram that fills it was too big
        self._view = memoryview(self._buf)
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._writer_armed = False
        self._closed = False

    def start(self) -> None:
        self._loop.add_reader(self.data_fd, self._on_data)
        self._loop.add_reader(self._ctl.fileno(), self._on_ctl)

    def describe(self) -> str:
        return self.peer

    @property
    def closed(self) -> bool:
        return self._closed

    # -- receive ---------------------------------------------------------------------------------------
    def _on_data(self) -> None:
        sock = self._data
        buf = self._buf
        view = self._view
        limit = NET_BUFSIZE
        for _ in range(READS_PER_WAKEUP):
            try:
                n = sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _PEER_GONE:
                    self.close(f"data socket: {exc.strerror}")
                    return
                self.counters.rx_dropped += 1
                return
            if n > limit:
                self.counters.rx_dropped += 1
                continue
            lan = self.lan
            if lan is not None:
                lan.input(self, view[:n])  # runts (< 14 bytes, as vde_switch) are dropped and counted there
            if self._closed:
                return

    def _on_ctl(self) -> None:
        """Nothing is said on the control stream after the handshake: only its EOF means something."""
        try:
            data = self._ctl.recv(REQBUFLEN)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(f"control connection: {exc.strerror or exc}")
            return
        if not data:
            self.close("control connection closed")

    # -- transmit --------------------------------------------------------------------------------------
    def transmit(self, frame: BytesLike, src: Port, offload: Offload | None) -> bool:
        if self._closed:
            return False
        if self._queue:
            return self._enqueue(frame)
        try:
            self._data.send(frame)
        except (BlockingIOError, InterruptedError):
            return self._enqueue(frame)
        except OSError as exc:
            self._send_failed(exc)
            return False
        return True

    def _send_failed(self, exc: OSError) -> None:
        if exc.errno in _PEER_GONE:
            # Not synchronously: the LAN may be iterating its ports, and the ingress port's parse loop
            # must not find the LAN changed under it.
            self._loop.call_soon(self.close, "the other end's data socket is gone")

    def _enqueue(self, frame: BytesLike) -> bool:
        if len(self._queue) >= QUEUE_FRAMES or self._queued_bytes + len(frame) > QUEUE_BYTES:
            return False
        self._queue.append(bytes(frame))
        self._queued_bytes += len(frame)
        if not self._writer_armed:
            self._writer_armed = True
            self._loop.add_writer(self.data_fd, self._drain)
        return True

    def _drain(self) -> None:
        sock = self._data
        queue = self._queue
        while queue and not self._closed:
            frame = queue[0]
            try:
                sock.send(frame)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                queue.popleft()
                self._queued_bytes -= len(frame)
                self.counters.tx_dropped += 1
                if exc.errno in _PEER_GONE:
                    self.close("the other end's data socket is gone")
                    return
                continue
            queue.popleft()
            self._queued_bytes -= len(frame)
        if self._writer_armed and not self._closed:
            self._loop.remove_writer(self.data_fd)
        self._writer_armed = False

    # -- teardown --------------------------------------------------------------------------------------
    def close(self, reason: str = "closed") -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._queued_bytes = 0
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self.data_fd)
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._ctl.fileno())
        if self._writer_armed:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(self.data_fd)
            self._writer_armed = False
        self._data.close()
        self._ctl.close()
        for path in self._unlink:
            with contextlib.suppress(OSError):
                os.unlink(path)
        if self.lan is not None:
            self.lan.detach(self)
        self._on_close(self, reason)


# -- helpers shared by both sides ------------------------------------------------------------------------
def reason(exc: BaseException) -> str:
    """The OS's words for an OSError ("No such file or directory"), else the message."""
    if isinstance(exc, OSError) and exc.errno and not exc.strerror:
        return os.strerror(exc.errno)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


class VdeRefused(ConnectionError):
    """The other side broke the protocol or turned us down (message says how)."""


_MAGIC_BYTES = struct.pack("=I", SWITCH_MAGIC)


def _incomplete(buf: bytearray) -> bool:
    """True while ``buf`` is the start of a plausible request that still lacks its fixed part."""
    if len(buf) >= REQUEST_FIXED or _MAGIC_BYTES[: len(buf)] != buf[:4]:
        return False
    return len(buf) < 8 or struct.unpack_from("=I", buf, 4)[0] == VDE_VERSION


def _printable(text: str) -> str:
    """A client's description goes into logs: no control characters."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _peer_uid(conn: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a unix stream socket."""
    pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return pid, uid


def _dir_mode(mode: int) -> int:
    """vde_switch derives its directory's mode from the socket mode: setgid plus x wherever r or w is."""
    out = 0o2000
    for rw, x in ((0o600, 0o100), (0o060, 0o010), (0o006, 0o001)):
        if mode & rw:
            out |= (mode & rw) | x
    return out


def _login() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return "??"


# -- vmlan as a VDE switch -------------------------------------------------------------------------------
class _Handshake:
    """A control connection that has not yet sent its request."""

    __slots__ = ("buf", "conn", "fd", "pid", "timer", "uid")

    def __init__(self, conn: socket.socket, pid: int, uid: int) -> None:
        self.conn = conn
        self.fd = conn.fileno()
        self.pid = pid
        self.uid = uid
        self.buf = bytearray()
        self.timer: asyncio.TimerHandle | None = None


class VdeServer:
    """``-netdev vde,sock=DIR,server=on``: DIR/ctl served as vde_switch serves it; each client a port."""

    def __init__(self, cfg: VdeNetdev, lan: Hub, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.lan = lan
        self.loop = loop
        self.ports: list[VdePort] = []
        self.on_port: Callable[[VdePort], None] | None = None  # lets the runner attach dumps
        self.label = f"vde {cfg.id}"
        self.refused = 0  # control connections turned away (bad request, no free port, ...)
        self.dir = ""
        self.ctl_path = ""
        self._sock: socket.socket | None = None
        self._made_dir = False
        self._pending: dict[int, _Handshake] = {}
        self._taken: set[int] = set()
        self._what = f"-netdev vde,id={cfg.id}"

    def describe(self) -> str:
        return f"sock={self.dir or self.cfg.sock},server=on, {len(self.ports)} peer(s)"

    def start(self) -> None:
        try:
            self._open()
        except OSError as exc:
            self.close()
            raise LinkError(f"{self._what}: cannot serve {self.cfg.sock}: {reason(exc)}") from None
        assert self._sock is not None
        self.loop.add_reader(self._sock.fileno(), self._on_accept)
        log.info("%s: serving %s (attach with: vde_plug %s, or QEMU -netdev vde,sock=%s)", self.label,
                 self.dir, self.dir, self.dir)

    def _open(self) -> None:
        cfg = self.cfg
        gid = -1 if cfg.gid is None else cfg.gid
        try:
            os.mkdir(cfg.sock, 0o700)
            self._made_dir = True
        except FileExistsError:
            pass
        self.dir = os.path.realpath(cfg.sock)
        if not os.path.isdir(self.dir):
            raise LinkError(f"{self._what}: {cfg.sock} exists and is not a directory")
        if self._made_dir:
            # vde_switch chmods even a directory it did not create; vmlan leaves those alone.
            os.chown(self.dir, -1, gid)
            os.chmod(self.dir, _dir_mode(cfg.mode))
        self.ctl_path = os.path.join(self.dir, "ctl")
        self._remove_stale_ctl()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = sock
        # Published only once it listens (vde_switch binds ctl first: a client that sees the file
        # early is refused): bound under a temporary name, then renamed into place.
        staging = os.path.join(self.dir, f".ctl-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        sock.bind(staging)
        try:
            os.chmod(staging, cfg.mode)
            os.chown(staging, -1, gid)
            sock.listen(15)
            sock.setblocking(False)
            os.rename(staging, self.ctl_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(staging)
            raise

    def _remove_stale_ctl(self) -> None:
        """A live switch keeps its ctl; a dead one's socket file is removed (as vde_switch's still_used)."""
        try:
            st = os.lstat(self.ctl_path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise LinkError(f"{self._what}: {self.ctl_path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.ctl_path)
        except OSError:
            os.unlink(self.ctl_path)
            return
        finally:
            probe.close()
        raise LinkError(f"{self._what}: another switch is serving {self.dir}")

    # -- handshakes ------------------------------------------------------------------------------------
    def _on_accept(self) -> None:
        if self._sock is not None:
            accept_pending(self._sock, self.loop, self._on_accept, self._accepted)

    def _accepted(self, conn: socket.socket, _addr: object) -> None:
        if len(self._pending) >= self.cfg.max_peers + 8:
            self.refused += 1
            conn.close()
            return
        conn.setblocking(False)
        try:
            pid, uid = _peer_uid(conn)
        except OSError:
            conn.close()
            return
        hs = _Handshake(conn, pid, uid)
        self._pending[hs.fd] = hs
        hs.timer = self.loop.call_later(HANDSHAKE_TIMEOUT, self._refuse, hs, "no request within 10 s")
        self.loop.add_reader(hs.fd, self._on_request, hs)

    def _drop_pending(self, hs: _Handshake) -> None:
        self._pending.pop(hs.fd, None)
        if hs.timer is not None:
            hs.timer.cancel()
            hs.timer = None
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(hs.fd)

    def _refuse(self, hs: _Handshake, why: str) -> None:
        """vde_switch's answer to a bad request: close the control connection."""
        self._drop_pending(hs)
        hs.conn.close()
        self.refused += 1
        log.warning("%s: refused a client (pid %d): %s", self.label, hs.pid, why)

    def _on_request(self, hs: _Handshake) -> None:
        try:
            data = hs.conn.recv(REQBUFLEN - len(hs.buf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._refuse(hs, f"control connection: {reason(exc)}")
            return
        if not data:
            self._drop_pending(hs)
            hs.conn.close()
            log.debug("%s: a client (pid %d) left before its request", self.label, hs.pid)
            return
        hs.buf += data
        if _incomplete(hs.buf):
            return  # the rest of the request is on its way
        self._drop_pending(hs)
        try:
            req = decode_request(hs.buf)
            port = self._setup(hs, req)
        except (IntegrityError, SanityError, VdeRefused) as exc:
            hs.conn.close()
            self.refused += 1
            log.warning("%s: refused a client (pid %d): %s", self.label, hs.pid, exc)
            return
        except OSError as exc:
            hs.conn.close()
            self.refused += 1
            log.warning("%s: refused a client (pid %d): %s", self.label, hs.pid, reason(exc))
            return
        self.ports.append(port)
        if self.on_port is not None:
            self.on_port(port)
        self.lan.attach(port)
        port.start()
        log.info("%s: peer %s connected (%s)", self.label, port.name, port.peer)

    def _pick_port(self, wanted: int) -> int:
        limit = self.cfg.max_peers
        if wanted:
            if wanted > limit:
                raise VdeRefused(f"port {wanted} requested, this switch has ports 1..{limit}")
            if wanted in self._taken:
                raise VdeRefused(f"port {wanted} requested, and it is in use")
            return wanted
        for number in range(1, limit + 1):
            if number not in self._taken:
                return number
        raise VdeRefused(f"all {limit} ports are in use (max-peers={limit})")

    def _check_client_path(self, hs: _Handshake, path: bytes) -> str:
        if not path or path[:1] == b"\0":
            raise VdeRefused("an unnamed or abstract data socket (vmlan needs a socket file)")
        if not path.startswith(b"/"):
            raise VdeRefused(f"data socket path {path!r} is not absolute")
        text = os.fsdecode(path)
        try:
            st = os.lstat(text)
        except OSError as exc:
            raise VdeRefused(f"data socket {text}: {reason(exc)}") from None
        if not stat.S_ISSOCK(st.st_mode):
            raise VdeRefused(f"{text} is not a socket")
        if hs.uid != 0 and st.st_uid != hs.uid:
            raise VdeRefused(f"{text} belongs to uid {st.st_uid}, not to the client (uid {hs.uid})")
        return text

    def _setup(self, hs: _Handshake, req: VdeRequest) -> VdePort:
        """Everything vde_switch's new_port_v1_v3 does, in its order; raises on refusal."""
        if req.kind != REQ_NEW_CONTROL:
            raise VdeRefused("a request for the management port 0 (vmlan has no management console)")
        number = self._pick_port(req.port)
        client_path = self._check_client_path(hs, req.path)
        data = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ours = ""
        try:
            data.setblocking(False)
            try:
                data.connect(client_path)
            except OSError as exc:
                raise VdeRefused(f"cannot connect to the client's data socket {client_path}: {reason(exc)}") from None
            ours = os.path.join(self.dir, f"{number:03d}.{data.fileno()}")
            self._remove_stale_data(ours)
            data.bind(ours)
            cfg = self.cfg
            gid = -1 if cfg.gid is None else cfg.gid
            if os.geteuid() == 0:
                # As vde_switch run by root: the client's user owns its data socket (it chmods it).
                os.chmod(ours, cfg.mode & 0o700)
                os.chown(ours, os.lstat(client_path).st_uid, gid)
            else:
                os.chmod(ours, cfg.mode)
                if gid != -1:
                    os.chown(ours, -1, gid)
            reply = encode_sockaddr_un(os.fsencode(ours))
            if hs.conn.send(reply) != len(reply):
                raise VdeRefused("the reply did not fit the control connection")
        except BaseException:
            data.close()
            if ours:
                with contextlib.suppress(OSError):
                    os.unlink(ours)
            raise
        self._taken.add(number)
        descr = _printable(req.description)
        return VdePort(f"{self.cfg.id}.{number}", data, hs.conn, self.loop, self._port_closed,
                       peer=f"port {number}: {descr}" if descr else f"port {number}", number=number, unlink=(ours,))

    def _remove_stale_data(self, path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise VdeRefused(f"{path} exists and is not a socket")
        os.unlink(path)

    def _port_closed(self, port: VdePort, why: str) -> None:
        if port in self.ports:
            self.ports.remove(port)
        self._taken.discard(port.number)
        log.info("%s: peer %s left (%s)", self.label, port.name, why)

    def close(self) -> None:
        for port in list(self.ports):
            port.close("shutting down")
        for hs in list(self._pending.values()):
            self._drop_pending(hs)
            hs.conn.close()
        if self._sock is not None:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):
                os.unlink(self.ctl_path)
        if self._made_dir:
            self._made_dir = False
            try:
                os.rmdir(self.dir)
            except OSError as exc:
                # Only what vmlan made is removed; a client's own leftover socket keeps the directory.
                log.info("%s: left %s in place (%s)", self.label, self.dir, reason(exc))


# -- vmlan as a VDE client (QEMU's -netdev vde) ----------------------------------------------------------
FALLBACK_SWITCHES = ("/var/run/vde.ctl", "/tmp/vde.ctl")  # libvdeplug_vde.c, when no sock= is given
FALLBACK_DIRS = ("/var/run", "/var/tmp", "/tmp")  # where the data socket goes if DIR refuses it
CONNECT_TIMEOUT = 10.0
_sockno = itertools.count()


def description(tag: str) -> str:
    """What libvdeplug sends: ``<tag> user=<login> pid=<pid>[ SSH=<client address>]`` (vdeplug4 4.0.1
    writes pid= in lower case); the switch shows it for the port."""
    text = f"{tag} user={_login()} pid={os.getpid()}"
    ssh = os.environ.get("SSH_CLIENT", "")
    if ssh:
        text += f" SSH={ssh.split(' ', 1)[0]}"
    return text


def _bind_data_socket(sock: socket.socket, directory: str) -> str:
    """libvdeplug's names: DIR/.PID-NNNNN, or a fallback directory's vde.PID-NNNNN; loops on EADDRINUSE."""
    pid = os.getpid()
    first: OSError | None = None
    for where, prefix in ((directory, "."), *((d, "vde.") for d in FALLBACK_DIRS)):
        while True:
            path = os.path.join(where, f"{prefix}{pid:05d}-{next(_sockno):05d}")
            try:
                sock.bind(path)
                return path
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue
                first = first or exc
                break
    assert first is not None
    raise first


def _set_data_socket_access(path: str, ctl_path: str, gid: int | None, mode: int) -> int:
    """Group and mode of our data socket as libvdeplug sets them; returns the mode used."""
    if gid is not None:
        os.chown(path, -1, gid)
    elif mode & 0o077 == 0:
        # No permission granted on purpose: if the switch runs as another (non-root) user, it needs one.
        with contextlib.suppress(OSError):
            st = os.stat(ctl_path)
            if st.st_uid not in (0, os.geteuid()):
                try:
                    os.chown(path, -1, st.st_gid)
                    mode |= 0o070
                except OSError:
                    mode |= 0o077
    os.chmod(path, mode)
    return mode


async def open_vde(
    loop: asyncio.AbstractEventLoop,
    sock_dir: str,
    port: int = 0,
    gid: int | None = None,
    mode: int = 0o700,
    descr: str = "vmlan",
    timeout: float = CONNECT_TIMEOUT,
) -> tuple[socket.socket, socket.socket, str, str]:
    """Join a VDE switch: (data socket, control socket, the switch's directory, its data socket path).

    Raises OSError (VdeRefused for protocol trouble) with a one-line message.
    """
    candidates = [sock_dir] if sock_dir else list(FALLBACK_SWITCHES)
    ctl: socket.socket | None = None
    directory = ""
    last: OSError = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
    for cand in candidates:
        real = os.path.realpath(cand)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(s, os.path.join(real, "ctl")), timeout)
        except TimeoutError:
            s.close()
            last = TimeoutError(errno.ETIMEDOUT, "the switch did not accept the connection in time")
            continue
        except OSError as exc:
            s.close()
            last = exc
            continue
        ctl, directory = s, real
        break
    if ctl is None:
        raise last
    data = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    own = ""
    try:
        own = _bind_data_socket(data, directory)
        used_mode = _set_data_socket_access(own, os.path.join(directory, "ctl"), gid, mode)
        await loop.sock_sendall(ctl, encode_request(os.fsencode(own), port, descr))
        reply = bytearray()
        async with asyncio.timeout(timeout):
            while len(reply) < SOCKADDR_UN.size:
                chunk = await loop.sock_recv(ctl, SOCKADDR_UN.size - len(reply))
                if not chunk:
                    raise VdeRefused("the switch closed the control connection without a port "
                                     "(port in use, no free port, or the request refused)")
                reply += chunk
        try:
            theirs = os.fsdecode(decode_sockaddr_un(reply))
        except (IntegrityError, SanityError) as exc:
            raise VdeRefused(f"the switch's answer is not a socket address: {exc}") from None
        if not theirs.startswith("/"):
            raise VdeRefused(f"the switch answered with an unusable data socket path {theirs!r}")
        data.setblocking(False)
        data.connect(theirs)
        with contextlib.suppress(OSError):
            os.chmod(theirs, used_mode)  # libvdeplug does it too (succeeds only on our own switch)
    except TimeoutError:
        data.close()
        ctl.close()
        raise TimeoutError(errno.ETIMEDOUT, "the switch did not answer the request in time") from None
    except BaseException:
        data.close()
        ctl.close()
        raise
    finally:
        if own:
            with contextlib.suppress(OSError):
                os.unlink(own)  # the switch's socket is connected to ours; the name is no longer needed
    return data, ctl, directory, theirs


def _port_number(path: str) -> int:
    """3 from ".../003.7" (vde_switch's data socket names); 0 if the name is of another shape."""
    head = os.path.basename(path).split(".", 1)[0]
    return int(head) if head.isdigit() else 0


class VdeClient:
    """``-netdev vde,sock=DIR``: one port on a VDE switch; with reconnect-ms it redials when the switch goes."""

    def __init__(self, cfg: VdeNetdev, lan: Hub, loop: asyncio.AbstractEventLoop, descr: str = "") -> None:
        self.cfg = cfg
        self.lan = lan
        self.loop = loop
        self.port: VdePort | None = None
        self.on_port: Callable[[VdePort], None] | None = None
        self.on_gone: Callable[[str], None] | None = None  # the switch went away (vmlan plug exits)
        self.label = f"vde {cfg.id}"
        self.descr = descr or description(f"vmlan:{cfg.id}")
        self._retry: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._first: asyncio.Task[None] | None = None
        self._closing = False
        self.report_failure = True
        self.error: LinkError | None = None

    @property
    def ports(self) -> list[VdePort]:
        return [self.port] if self.port is not None else []

    def describe(self) -> str:
        where = self.cfg.sock or "default switch"
        if self.port is None:
            return f"sock={where}, not connected"
        return f"sock={where},fd={self.port.data_fd}, port {self.port.number}"

    def begin(self) -> None:
        """Start the first attempt without waiting (the runtime's registry): :meth:`wait_started` gives
        its outcome, or a failure is logged when nobody waits (``report_failure``)."""
        self._first = self.loop.create_task(self._first_attempt())

    async def _first_attempt(self) -> None:
        try:
            await self.start()
        except LinkError as exc:
            self.error = exc
            if self.report_failure:
                log.warning("%s: %s", self.label, exc)

    async def wait_started(self) -> None:
        if self._first is not None:
            await self._first
        if self.error is not None:
            raise self.error

    async def start(self) -> None:
        """Connect once; without reconnect-ms a switch that cannot be joined is a startup error."""
        try:
            await self._connect()
        except OSError as exc:
            if not self.cfg.reconnect_ms:
                raise LinkError(f"-netdev vde,id={self.cfg.id}: Could not open vde: {reason(exc)}") from None
            log.warning("%s: cannot join %s (%s); retrying every %d ms", self.label,
                        self.cfg.sock or "the default switch", reason(exc), self.cfg.reconnect_ms)
            self._schedule_retry()

    async def _connect(self) -> None:
        cfg = self.cfg
        data, ctl, directory, theirs = await open_vde(self.loop, cfg.sock, cfg.port, cfg.gid, cfg.mode, self.descr)
        if self._closing:
            data.close()
            ctl.close()
            return
        number = _port_number(theirs)
        port = VdePort(cfg.id, data, ctl, self.loop, self._port_closed,
                       peer=f"sock={directory},fd={data.fileno()} (switch port {number})", number=number)
        self.port = port
        if self.on_port is not None:
            self.on_port(port)
        self.lan.attach(port)
        port.start()
        log.info("%s: joined the switch at %s as port %d", self.label, directory, number)

    def _schedule_retry(self) -> None:
        if not self._closing:
            self._retry = self.loop.call_later(self.cfg.reconnect_ms / 1000, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._connecting = self.loop.create_task(self._retry_task())

    async def _retry_task(self) -> None:
        try:
            await self._connect()
        except OSError:
            self._schedule_retry()

    def _port_closed(self, port: VdePort, why: str) -> None:
        self.port = None
        if self._closing:
            return
        if self.on_gone is not None:  # the owner reports it (vmlan plug exits)
            self.on_gone(why)
        elif self.cfg.reconnect_ms:
            log.warning("%s: the switch went away (%s); redialling every %d ms", self.label, why,
                        self.cfg.reconnect_ms)
        else:
            log.warning("%s: the switch went away (%s); the link is down", self.label, why)
        if self.cfg.reconnect_ms:
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

