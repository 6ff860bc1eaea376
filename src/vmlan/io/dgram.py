"""Datagram links: QEMU's ``-netdev socket,mcast=|udp=`` and ``-netdev dgram``.

Wire format: one raw Ethernet frame per datagram, no header (net/socket.c, net/dgram.c).

Multicast follows QEMU's socket options so QEMU guests and User Mode Linux (``ethN=mcast``) share the
group with us: the receiving socket sets SO_REUSEADDR, binds to the *group* address and port, joins the
group (on ``localaddr`` if given) and keeps IP_MULTICAST_LOOP on, so several processes on one host hear
each other. QEMU also hears its own frames back; a LAN must not (a frame would return to the port it
came from), so we send from a second socket whose (address, port) is unique, and a socket filter
(classic BPF) discards datagrams from it in the kernel, before they take receive-buffer space: under
load the echoes of our own sends would otherwise crowd out the peers' frames.

Unix datagram links use one socket, bound to ``local.path`` and connect()ed to ``remote.path`` as soon
as the peer exists (QEMU binds ``remote.path`` and sends from it). Linux limits a unix datagram
receiver to net.unix.max_dgram_qlen (10) queued datagrams *unless it is connected back to the sender*,
and a connected sender's poll() reports the peer's queue space: so both directions run at full speed
without busy-waiting. While connected, datagrams from any other socket are refused by the kernel; a
peer that restarts is redialled on the first send that finds the old socket gone, or within
PEER_CHECK_INTERVAL when the socket file at ``remote.path`` is replaced.

Hot path: ``add_reader`` plus a ``recv_into`` loop into the receive buffer every link of the thread
shares (:class:`~vmlan.io.stream.RxArea`), at most READS_PER_TURN datagrams or RX_BYTES bytes per event-loop
turn: the rest waits in the kernel for the next turn, so one flooding peer cannot hold up the other
ports. Sends go straight to the socket; when the kernel pushes back, frames wait in a bounded queue
(QUEUE_FRAMES, and the :class:`~vmlan.io.sockopt.LinkBudget`'s per-port byte limit) drained on
writability, and beyond the bound they are dropped and counted. While the peer is absent each frame costs one failed
connect() and is dropped, as QEMU's sendto() would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import socket
import struct
from collections import deque
from collections.abc import Callable

from vmlan.config.netdev import DgramNetdev, InetAddr, SocketAddress, UnixAddr
from vmlan.faults import Faults
from vmlan.io.errors import LinkError
from vmlan.io.sockopt import BUDGET, LINK_BUFFER, LinkBudget, grow_buffers, new_faults
from vmlan.io.stream import NET_BUFSIZE, RX_AREA, RX_BYTES, sockaddr
from vmlan.lan import Port
from vmlan.wire import BytesLike
from vmlan.wire.vnet import Offload

log = logging.getLogger("vmlan")

READS_PER_TURN = 64  # datagrams one port handles per event-loop turn (each is a syscall anyway)
QUEUE_FRAMES = 1024
PEER_CHECK_INTERVAL = 1.0
_PEER_GONE = frozenset({errno.ECONNREFUSED, errno.ENOENT, errno.ENOTCONN})
SO_ATTACH_FILTER = 26
_BPF_INSN = struct.Struct("HBBI")
_SKF_NET_OFF = 0xFFF00000  # -0x100000: BPF offsets relative to the IP header


class OutQueue:
    """A datagram port's output once its socket pushes back: datagrams wait here, bounded by
    QUEUE_FRAMES and the port's share of the :class:`~vmlan.io.sockopt.LinkBudget`, and go out in order
    when the socket is writable; past the bound the caller drops (and counts) them. Holds the port's
    membership of the budget from creation to :meth:`close`. ``send`` puts one datagram on the socket:
    it raises BlockingIOError when the kernel is full again, else handles (and counts) its own errors."""

    __slots__ = ("_armed", "_budget", "_bytes", "_items", "_joined", "_loop", "_send", "sock")

    def __init__(self, loop: asyncio.AbstractEventLoop, budget: LinkBudget, send: Callable[[bytes], None]) -> None:
        self._loop = loop
        self._budget = budget
        self._send = send
        self._items: deque[bytes] = deque()
        self._bytes = 0
        self._armed = False
        self._joined = True
        self.sock: socket.socket | None = None  # the socket drained into, set by the port once open
        budget.join()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, datagram: bytes) -> bool:
        """Queue ``datagram`` (False, not queued, past the bound)."""
        if len(self._items) >= QUEUE_FRAMES or self._bytes + len(datagram) > self._budget.out_limit:
            return False
        self._items.append(datagram)
        self._bytes += len(datagram)
        if not self._armed and self.sock is not None:
            self._armed = True
            self._loop.add_writer(self.sock.fileno(), self._drain)
        return True

    def _drain(self) -> None:
        items, send = self._items, self._send
        while items and self.sock is not None:
            datagram = items[0]
            try:
                send(datagram)
            except (BlockingIOError, InterruptedError):
                return
            items.popleft()
            self._bytes -= len(datagram)
        self._disarm()

    def _disarm(self) -> None:
        if self._armed and self.sock is not None:
            self._loop.remove_writer(self.sock.fileno())
        self._armed = False

    def close(self) -> None:
        """Drop what waits, stop watching the socket (before the port closes it), leave the budget."""
        self._disarm()
        self._items.clear()
        self._bytes = 0
        if self._joined:
            self._joined = False
            self._budget.leave()


def ignore_datagrams_from(sock: socket.socket, source: tuple[str, int]) -> None:
    """Attach a socket filter dropping UDP datagrams from ``source`` (our own multicast echoes).

    A UDP socket's filter sees the datagram from its UDP header on; the IPv4 source address is
    reached through SKF_NET_OFF.
    """
    ip = int.from_bytes(socket.inet_aton(source[0]), "big")
    program = b"".join(
        _BPF_INSN.pack(*insn)
        for insn in (
            (0x28, 0, 0, 0),  # ldh [0]             UDP source port
            (0x15, 0, 3, source[1]),  # jeq #port, next, accept
            (0x20, 0, 0, _SKF_NET_OFF + 12),  # ld [net + 12]  IPv4 source address
            (0x15, 0, 1, ip),  # jeq #ip, drop, accept
            (0x06, 0, 0, 0),  # drop: ret #0
            (0x06, 0, 0, 0xFFFFFFFF),  # accept: ret #-1
        )
    )
    code = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HL", len(program) // _BPF_INSN.size, ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _file_identity(path: str) -> tuple[int, int] | None:
    """Inode numbers are reused at once on tmpfs: the creation time tells a new socket file apart."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_ctime_ns



def _sockaddr(addr: SocketAddress) -> str | bytes | tuple[str, int]:
    return sockaddr(addr)[1]


class DgramPort(Port):
    """A datagram netdev is a single port."""

    __slots__ = (
        "_connect_to",
        "_faults",
        "_loop",
        "_out",
        "_peer_check",
        "_peer_inode",
        "_remote",
        "_rsock",
        "_send_errors",
        "_ssock",
        "cfg",
        "info",
    )

    def __init__(
        self,
        cfg: DgramNetdev,
        loop: asyncio.AbstractEventLoop,
        faults: Faults | None = None,
        budget: LinkBudget = BUDGET,
    ) -> None:
        super().__init__(cfg.id)
        self.cfg = cfg
        self._loop = loop
        self._faults = faults if faults is not None else new_faults()
        self._rsock: socket.socket | None = None
        self._ssock: socket.socket | None = None
        self._remote = _sockaddr(cfg.remote) if cfg.remote is not None else None
        self._send_errors = 0
        self._out = OutQueue(loop, budget, self._send_queued)
        self._connect_to: str | bytes | None = None  # unix peer to (re)connect to
        self._peer_inode: tuple[int, int] | None = None  # (inode, ctime) of the socket we connected to
        self._peer_check: asyncio.TimerHandle | None = None
        self.info = ""

    @property
    def ports(self) -> list[Port]:
        return [self]

    @property
    def label(self) -> str:
        return f"{self.cfg.driver} {self.cfg.id}"

    def describe(self) -> str:
        return self.info

    def start(self) -> None:
        what = f"-netdev {self.cfg.driver},id={self.cfg.id}"
        try:
            if self.cfg.multicast:
                self._open_multicast()
            else:
                self._open_unicast()
        except OSError as exc:
            self.close()
            raise LinkError(f"{what}: {exc.strerror or exc}") from None
        assert self._rsock is not None
        self._out.sock = self._ssock
        self._loop.add_reader(self._rsock.fileno(), self._on_readable)
        log.info("%s: %s", self.label, self.info)

    def _open_multicast(self) -> None:
        group = self.cfg.remote
        assert isinstance(group, InetAddr)
        iface = self.cfg.mcast_if or "0.0.0.0"
        rs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._rsock = rs
        rs.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        rs.bind((group.host, group.port))
        mreq = struct.pack("4s4s", socket.inet_aton(group.host), socket.inet_aton(iface))
        rs.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        rs.setblocking(False)
        ss = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._ssock = ss
        ss.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        if self.cfg.mcast_if:
            ss.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(self.cfg.mcast_if))
            ss.bind((self.cfg.mcast_if, 0))
        ss.connect((group.host, group.port))  # fixes the source address we will recognise as ours
        ss.setblocking(False)
        ignore_datagrams_from(rs, ss.getsockname())
        grow_buffers(rs, rcv=LINK_BUFFER)
        self._remote = None
        if self.cfg.driver == "socket":
            self.info = f"socket: mcast={group.host}:{group.port}"
        else:
            self.info = f"mcast={group.host}:{group.port}"

    def _open_unicast(self) -> None:
        local, remote = self.cfg.local, self.cfg.remote
        assert local is not None and remote is not None
        if isinstance(local, UnixAddr):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._rsock = sock
            if not local.abstract:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(local.path)  # as QEMU does before binding
            sock.bind(_sockaddr(local))
            sock.setblocking(False)
            grow_buffers(sock, rcv=LINK_BUFFER, snd=LINK_BUFFER)  # unsent datagrams count against sndbuf
            self.info = f"unix={local}:{remote}"
            assert isinstance(remote, UnixAddr)
            self._ssock = sock
            path = _sockaddr(remote)
            assert isinstance(path, (str, bytes))
            self._connect_to = path
            self._remote = None
            self._try_connect()
            if not remote.abstract:
                self._peer_check = self._loop.call_later(PEER_CHECK_INTERVAL, self._check_peer)
            return
        else:
            assert isinstance(local, InetAddr) and isinstance(remote, InetAddr)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._rsock = sock
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(_sockaddr(local))
            grow_buffers(sock, rcv=LINK_BUFFER)
            if self.cfg.driver == "socket":
                self.info = f"socket: udp={remote.host}:{remote.port}"
            else:
                self.info = f"udp={local.host or '0.0.0.0'}:{local.port}/{remote.host}:{remote.port}"
        sock.setblocking(False)
        self._ssock = sock

    def _on_readable(self) -> None:
        area = RX_AREA
        if area.busy:
            self._faults.record("dgram rx area in use")
            buf = bytearray(NET_BUFSIZE + 1)
            self._receive(memoryview(buf))
            return
        area.busy = True
        try:
            self._receive(area.view)
        finally:
            area.busy = False

    def _receive(self, view: memoryview) -> None:
        sock = self._rsock
        if sock is None:
            return
        limit = NET_BUFSIZE
        unread = RX_BYTES
        # recv_into, not recvfrom_into: no address tuple per datagram. Our own multicast echoes never
        # get here: the socket filter drops them in the kernel.
        for _ in range(READS_PER_TURN):
            try:
                n = sock.recv_into(view, limit + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counters.rx_dropped += 1  # ICMP errors surface here on unconnected UDP sockets
                continue
            if n > limit:
                self.counters.rx_dropped += 1
                continue
            lan = self.lan
            if lan is not None:
                try:
                    lan.input(self, view[:n])
                except Exception:  # a bug behind the LAN costs this frame, never the link
                    self.counters.rx_dropped += 1
                    self._faults.record("dgram rx")
            if self._rsock is None:
                return  # closed by what the frame caused
            unread -= n
            if unread <= 0:
                return

    def _try_connect(self) -> bool:
        """Connect to the peer's path (it may not exist yet, or may be a new socket after a restart)."""
        if self._ssock is None or self._connect_to is None:
            return False
        try:
            self._ssock.connect(self._connect_to)
        except OSError:
            return False
        if isinstance(self._connect_to, str):
            self._peer_inode = _file_identity(self._connect_to)
        return True

    def _check_peer(self) -> None:
        """Reconnect when the peer's socket file was replaced (it restarted) while we sent nothing."""
        path = self._connect_to
        if not isinstance(path, str):
            return
        identity = _file_identity(path)
        if identity is not None and identity != self._peer_inode:
            self._try_connect()
        self._peer_check = self._loop.call_later(PEER_CHECK_INTERVAL, self._check_peer)

    def transmit(self, frame: BytesLike, src: Port, offload: Offload | None) -> bool:
        sock = self._ssock
        if sock is None:
            return False
        if self._out:
            return self._out.put(bytes(frame))
        try:  # _send_now, inline: this is the per-frame path
            if self._remote is None:
                sock.send(frame)
            else:
                sock.sendto(frame, self._remote)
        except (BlockingIOError, InterruptedError):
            return self._out.put(bytes(frame))
        except OSError as exc:
            return self._send_failed(exc, frame)
        return True

    def _send_now(self, sock: socket.socket, frame: BytesLike) -> None:
        if self._remote is None:
            sock.send(frame)
        else:
            sock.sendto(frame, self._remote)

    def _send_queued(self, frame: bytes) -> None:
        assert self._ssock is not None
        try:
            self._send_now(self._ssock, frame)
        except (BlockingIOError, InterruptedError):
            raise
        except OSError as exc:
            if not self._send_failed(exc, frame):
                self.counters.tx_dropped += 1

    def _send_failed(self, exc: OSError, frame: BytesLike) -> bool:
        """A send error other than a full buffer; True if the frame went out after all."""
        peer_gone = self._connect_to is not None and exc.errno in _PEER_GONE and self._ssock is not None
        if peer_gone and self._try_connect():  # the peer appeared, or restarted with a new socket
            assert self._ssock is not None
            try:
                self._ssock.send(frame)
                return True
            except (BlockingIOError, InterruptedError):
                return self._out.put(bytes(frame))
            except OSError as again:
                exc = again
        self._send_errors += 1
        if self._send_errors == 1 or self._send_errors % 10000 == 0:
            log.debug("%s: send failed (%s), %d so far", self.label, exc.strerror or exc, self._send_errors)
        return False

    def close(self) -> None:
        if self._peer_check is not None:
            self._peer_check.cancel()
            self._peer_check = None
        self._out.close()
        for sock in {self._rsock, self._ssock}:
            if sock is None:
                continue
            if sock is self._rsock:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(sock.fileno())
            sock.close()
        self._rsock = self._ssock = None
        if self.lan is not None:
            self.lan.detach(self)
        local = self.cfg.local
        if isinstance(local, UnixAddr) and not local.abstract:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(local.path)
