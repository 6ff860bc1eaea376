"""The user-mode stack's asyncio adapter: a hub port whose far side is the host's sockets.

engines/usernet decides everything; this module performs what it asks (actions.py: tuples naming flows
by id) and reports what the sockets did. ``self._tcp``/``_udp``/``_pings`` map flow ids to sockets: the
engine never holds a socket. Every host socket is driven by ``add_reader``/``add_writer`` callbacks (no
Task per packet or per connection). Backpressure runs both ways: a host socket is read only while the
guest connection has send space (the engine answers None and later asks for TCP_RESUME), straight into
the connection's send buffer (``recv_into``: one copy kernel -> engine, one into the frame), and guest data
the host socket cannot take yet stays counted against the guest's TCP window until written.

Errors: a host socket's failure is reported to the engine (RST or ICMP to the guest); anything
unexpected is counted per kind in the stack's ``faults`` and logged once per kind with its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from typing import Any

from vmlan.config.usernet import UserNetdev, stack_config
from vmlan.engines.dhcp import Lease
from vmlan.engines.usernet import HostForward, StackConfig, UserStack
from vmlan.engines.usernet import actions as A
from vmlan.engines.usernet.tcpnat import READ_CHUNK
from vmlan.io.dns import DnsUpstreams
from vmlan.io.errors import LinkError
from vmlan.io.smb import SmbError, SmbServer
from vmlan.io.sockopt import accept_pending
from vmlan.io.tftp_files import DirectoryFiles
from vmlan.lan import Port
from vmlan.wire import BytesLike, WireError
from vmlan.wire.checksum import internet_checksum
from vmlan.wire.gso import software_offload
from vmlan.wire.vnet import GSO_ECN, GSO_UDP, GSO_UDP_L4, Offload

log = logging.getLogger("vmlan")

UDP_BUFSIZE = 65536
CONNECT_TIMEOUT = 30.0
LINGER_TIMEOUT = 30.0  # how long a closed connection may take to write the guest's last bytes to the host
LEASES_SAVE_DELAY = 1.0
DRAIN_LIMIT = 64  # datagrams read from one socket per wakeup
# A host TCP read offers READ_FIRST bytes, doubled after every read that fills its offer (up to the engine's
# READ_CHUNK): the connection's send buffer is sized by the room a read is lent, and a 1-byte answer
# offered 256 KiB would cost a zero-filled 512 KiB buffer, allocated and released per request.
READ_FIRST = 16 * 1024
ACCEPT_LIMIT = 16  # hostfwd connections accepted per wakeup
IP_RECVERR = 11  # <linux/in.h>; the socket module does not export it
SO_EE_ORIGIN_ICMP = 2
IPV6_RECVERR = 25  # <linux/in6.h>
SO_EE_ORIGIN_ICMP6 = 3
_EE = struct.Struct("=IBBBBII")
_LINGER_ABORT = struct.pack("ii", 1, 0)
# Host sockets are created non-blocking (Python then sets no FIONBIO after socket(): one system call less).
_STREAM_NONBLOCK = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_DGRAM_NONBLOCK = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
# sendto() errors that mean the datagram cannot go anywhere: ICMP destination unreachable codes (RFC 1812)
_UNREACH_CODE = {errno.ENETUNREACH: 0, errno.EHOSTUNREACH: 1, errno.EACCES: 13, errno.EPERM: 13}
_UNREACH_CODE6 = {errno.ENETUNREACH: 0, errno.EHOSTUNREACH: 3, errno.EACCES: 1, errno.EPERM: 1}  # RFC 4443 3.1


class _HostTcp:
    """The host side of one relayed TCP connection."""

    __slots__ = ("chunk", "connecting", "ended", "failed", "fid", "first", "out", "proc", "reading", "shut_pending",
                 "sock", "timer", "writing")

    def __init__(self, fid: int, sock: socket.socket) -> None:
        self.fid = fid
        self.sock = sock
        self.chunk = READ_FIRST
        self.first = True  # no read yet: the first one also looks for the host's EOF (_on_tcp_readable)
        self.ended = False  # that look found it
        self.failed = False  # that look found the connection reset (reported after the data)
        self.out = bytearray()
        self.reading = False
        self.writing = False
        self.connecting = False
        self.shut_pending = False
        self.timer: asyncio.TimerHandle | None = None
        self.proc: subprocess.Popen[bytes] | None = None


class UserNetPort(Port):
    """``-netdev user``: one port on its hub, the whole user-mode stack behind it."""

    __slots__ = (
        "_dispatch",
        "_dns",
        "_fwd_socks",
        "_leases_saved",
        "_leases_timer",
        "_lingering",
        "_loop",
        "_pings",
        "_pumping",
        "_raw_flows",
        "_raw_icmp",
        "_raw_icmp_failed",
        "_raw_ident",
        "_resolving",
        "_smb",
        "_tcp",
        "_tftp_files",
        "_timer",
        "_timer_at",
        "_udp",
        "_udp_buf",
        "_udp_view",
        "cfg",
        "label",
        "leases_path",
        "ping_dropped",
        "stack",
    )

    #: The stack takes frames with offload metadata: TCP super-segments and vouched-for checksums.
    offload_ok = True

    def __init__(self, user: UserNetdev, loop: asyncio.AbstractEventLoop, stack_cfg: StackConfig | None = None) -> None:
        super().__init__(user.id)
        self.cfg = user
        self._loop = loop
        self.label = f"user {user.id}"
        self.leases_path = user.leases_file
        leases = _load_leases(self.leases_path, loop.time()) if self.leases_path else []
        cfg = stack_cfg if stack_cfg is not None else stack_config(user)
        self._tftp_files: DirectoryFiles | None = None
        if cfg.tftp_dir is not None:
            try:
                self._tftp_files = DirectoryFiles(cfg.tftp_dir)
            except OSError as exc:
                raise LinkError(f"-netdev user,id={user.id}: tftp={cfg.tftp_dir}: {exc.strerror or exc}") from None
        self._smb: SmbServer | None = SmbServer(cfg.smb_dir, loop=loop) if cfg.smb_dir is not None else None
        self.stack = UserStack(cfg, leases, port_tso=lambda port: bool(getattr(port, "offload_ok", False)),
                               tftp_files=self._tftp_files)
        self.stack.faults.on_new = self._log_fault
        self._leases_saved = self.stack.dhcp.server.changed if self.stack.dhcp is not None else 0
        self._pumping = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._tcp: dict[int, _HostTcp] = {}
        self._udp: dict[int, socket.socket] = {}
        self._pings: dict[int, socket.socket | int] = {}  # a ping socket, or our identifier on the raw one
        self._raw_icmp: socket.socket | None = None
        self._raw_icmp_failed = False
        self._raw_flows: dict[tuple[str, int], int] = {}  # (dst, our identifier on the raw socket) -> fid
        self._raw_ident = int.from_bytes(os.urandom(2), "big")
        self._lingering: set[_HostTcp] = set()
        self._resolving: set[asyncio.Task[None]] = set()  # guestfwd names being resolved
        self._fwd_socks: dict[int, socket.socket] = {}
        self._leases_timer: asyncio.TimerHandle | None = None
        self._udp_buf = bytearray(UDP_BUFSIZE)
        self._udp_view = memoryview(self._udp_buf)
        dns = cfg.dns_config
        lifetime = dns.timeout * dns.attempts * max(1, len(dns.upstreams)) + 1 if dns is not None else 10.0
        self._dns = DnsUpstreams(loop, self._on_dns_answer, lifetime=lifetime)
        self.ping_dropped = 0
        self._dispatch: dict[int, Callable[..., None]] = {
            A.TCP_CONNECT: self._tcp_connect,
            A.TCP_WRITE: self._tcp_write,
            A.TCP_SHUTDOWN: self._tcp_shutdown,
            A.TCP_CLOSE: self._tcp_close,
            A.TCP_RESUME: self._tcp_resume,
            A.UDP_SEND: self._udp_send,
            A.UDP_CLOSE: self._udp_close,
            A.UDP_FWD_REPLY: self._udp_fwd_reply,
            A.DNS_SEND: self._dns_send,
            A.DNS_FORGET: self._dns.forget,
            A.PING_SEND: self._ping_send,
            A.PING_CLOSE: self._ping_close,
        }

    @property
    def ports(self) -> list[Port]:
        return [self]

    def describe(self) -> str:
        c = self.stack.cfg
        return f"net={c.net.network_address},restrict={'on' if c.restrict else 'off'}"

    def _log_fault(self, kind: str, text: str) -> None:
        log.error("%s: internal error (%s), counted; later ones of this kind are only counted:\n%s", self.label,
                  kind, text.rstrip())

    def _fault(self, kind: str, exc: BaseException) -> None:
        self.stack.faults.record(kind, exc)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            if self._smb is not None:
                try:
                    self._smb.start()
                except LinkError as exc:
                    raise LinkError(f"-netdev user,id={self.name}: {exc}") from None
            for index, rule in list(self.stack.hostfwd.items()):
                self._listen(index, rule)
        except LinkError:
            self.close()
            raise

    def _listen(self, index: int, rule: HostForward) -> int:
        """Open the host socket of rule ``index``; returns the bound port (a rule may ask for port 0)."""
        kind = socket.SOCK_STREAM if rule.proto == "tcp" else socket.SOCK_DGRAM
        v6 = ":" in rule.host_addr or len(rule.guest_addr) == 16
        sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, kind)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if v6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((rule.host_addr or ("::" if v6 else "0.0.0.0"), rule.host_port))
            if kind == socket.SOCK_STREAM:
                sock.listen(64)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise LinkError(
                f"-netdev user,id={self.name}: could not set up host forwarding rule "
                f"'{rule.proto}:{rule.host_addr}:{rule.host_port}': {exc.strerror}"
            ) from None
        self._fwd_socks[index] = sock
        if kind == socket.SOCK_STREAM:
            self._loop.add_reader(sock.fileno(), self._on_fwd_accept, index, sock)
        else:
            self._loop.add_reader(sock.fileno(), self._on_fwd_datagram, index, sock)
        port: int = sock.getsockname()[1]
        guest = socket.inet_ntop(socket.AF_INET6 if len(rule.guest_addr) == 16 else socket.AF_INET, rule.guest_addr)
        log.info("%s: forwarding %s %s:%d -> guest %s:%d", self.label, rule.proto, rule.host_addr or "*", port,
                 guest, rule.guest_port)
        return port

    def add_hostfwd(self, rule: HostForward) -> int:
        """QEMU's ``hostfwd_add``: listen for the rule now; returns the bound host port. A rule on a host
        port another rule of this stack holds is refused with QEMU's message (LinkError)."""
        for other_id, other in self.stack.hostfwd.items():
            sock = self._fwd_socks.get(other_id)
            bound = sock.getsockname()[1] if sock is not None else other.host_port
            same_addr = rule.host_addr == other.host_addr or "" in (rule.host_addr, other.host_addr)
            if rule.host_port and rule.proto == other.proto and rule.host_port == bound and same_addr:
                raise LinkError(f"could not set up host forwarding rule '{rule.proto}:{rule.host_addr}:"
                                f"{rule.host_port}': the port is already forwarded")
        index = self.stack.add_hostfwd(rule)
        try:
            return self._listen(index, rule)
        except LinkError:
            self.stack.remove_hostfwd(index)
            raise

    def remove_hostfwd(self, proto: str, host_addr: str, host_port: int) -> bool:
        """QEMU's ``hostfwd_remove``: True if a rule matched ("host forwarding rule for ... removed")."""
        for index, rule in list(self.stack.hostfwd.items()):
            sock = self._fwd_socks.get(index)
            bound = sock.getsockname()[1] if sock is not None else rule.host_port
            if rule.proto == proto and (rule.host_addr or "") == host_addr and host_port in (rule.host_port, bound):
                if sock is not None:
                    del self._fwd_socks[index]
                    with contextlib.suppress(ValueError, OSError):
                        self._loop.remove_reader(sock.fileno())
                    sock.close()
                self.stack.remove_hostfwd(index)
                self._pump()
                return True
        return False

    def close(self) -> None:
        if self._smb is not None:
            self._smb.close()
        if self._tftp_files is not None:
            self._tftp_files.close()
        for sock in self._fwd_socks.values():
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._fwd_socks.clear()
        for task in self._resolving:
            task.cancel()
        self._resolving.clear()
        for host in list(self._tcp.values()):
            self._close_socket(host)
        self._tcp.clear()
        for host in list(self._lingering):
            self._close_socket(host)
        for fid in list(self._udp):
            self._udp_close(fid)
        for fid in list(self._pings):
            self._ping_close(fid)
        if self._raw_icmp is not None:
            self._loop.remove_reader(self._raw_icmp.fileno())
            self._raw_icmp.close()
            self._raw_icmp = None
        self._dns.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._leases_timer is not None:
            self._leases_timer.cancel()
            self._save_leases()
        if self.lan is not None:
            self.lan.detach(self)

    # -- the hub side ------------------------------------------------------------------------------------
    def transmit(self, frame: BytesLike, src: Port, offload: Offload | None) -> bool:
        now = self._loop.time()
        if offload is not None and (offload.gso_type & ~GSO_ECN) in (GSO_UDP, GSO_UDP_L4):  # .gso, without a call
            try:
                pieces: list[bytes] = software_offload(frame, offload)
            except WireError:
                return False
            for piece in pieces:
                self.stack.receive_frame(piece, src, None, now)
        else:
            self.stack.receive_frame(frame, src, offload, now)
        self._pump()
        return True

    def port_left(self, port: Port) -> None:
        self.stack.port_left(port, self._loop.time())
        self._pump()

    def _pump(self) -> None:
        """Carry out what the engine asked for, hand its frames to the hub, re-arm its timer."""
        if self._pumping:
            return
        self._pumping = True
        stack = self.stack
        # The engine's outboxes are read here directly rather than through take_actions()/take_frames(), and
        # its timer is asked for only when the flow table's lower bound is earlier than the armed one: two
        # to four calls fewer per frame, at the pump's ~6 runs per connection.
        core = stack.core
        try:
            while True:
                actions = core.actions
                if actions:
                    core.actions = []
                    dispatch = self._dispatch
                    for action in actions:
                        try:
                            dispatch[action[0]](*action[1:])
                        except Exception as exc:  # e.g. EMFILE from socket(): this action is lost, the stack goes on
                            self._fault(f"io {A.NAMES.get(action[0], action[0])}", exc)
                frames = core.frames
                if frames:
                    core.frames = []
                    lan = self.lan
                    if lan is not None:
                        for frame, offload in frames:
                            lan.input(self, frame, offload)
                elif not actions:
                    break
            flows = core.flows
            deadline = flows.next_deadline() if flows.low < self._timer_at else None
            if deadline is not None and deadline < self._timer_at:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer_at = deadline
                # uvloop rounds to whole milliseconds and may fire early: the engine would find
                # nothing due and the loop would spin until the deadline.
                self._timer = self._loop.call_at(math.ceil(deadline * 1000) / 1000 + 0.0005, self._on_timer)
            dhcp = stack.dhcp
            if dhcp is not None and self.leases_path and dhcp.server.changed != self._leases_saved \
                    and not self._leases_timer:
                self._leases_timer = self._loop.call_later(LEASES_SAVE_DELAY, self._save_leases)
        finally:
            self._pumping = False

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self.stack.handle_timer(self._loop.time())
        self._pump()

    # -- TCP ---------------------------------------------------------------------------------------------------
    def _tcp_connect(self, fid: int, family: int, target: tuple[str, int] | str | A.Service) -> None:
        if isinstance(target, A.Service):
            self._connect_smb(fid)
            return
        if isinstance(target, str):
            self._spawn_guestfwd(fid, target)
            return
        try:
            af = socket.AF_INET if family == 4 else socket.AF_INET6
            sock = socket.socket(af, _STREAM_NONBLOCK)
        except OSError as exc:  # out of file descriptors: the guest gets a RST, not a hang
            self.stack.tcp_failed(fid, exc.errno or errno.EMFILE, self._loop.time())
            return
        host = _HostTcp(fid, sock)
        self._tcp[fid] = host
        try:
            socket.inet_pton(af, target[0])  # not sock.family: that property costs four Python calls
        except OSError:  # a guestfwd host name: resolved off the loop, the connect timeout covering both
            host.connecting = True
            host.timer = self._loop.call_later(CONNECT_TIMEOUT, self._on_connect_timeout, host)
            self._resolving.add(self._loop.create_task(self._resolve_and_connect(host, target)))
            return
        self._connect(host, target)

    async def _resolve_and_connect(self, host: _HostTcp, target: tuple[str, int]) -> None:
        """A guestfwd to a host name: getaddrinfo in the loop's executor (a slow resolver must not stall
        every guest), then the connect as for an address; the guest's connect fails if the name does not
        resolve or the flow went away meanwhile."""
        task = asyncio.current_task()
        try:
            infos = await self._loop.getaddrinfo(target[0], target[1], family=host.sock.family,
                                                 type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            infos = []
        finally:
            if task is not None:
                self._resolving.discard(task)
        if self._tcp.get(host.fid) is not host or not host.connecting:
            return  # closed, or timed out, while resolving
        if not infos:
            host.connecting = False
            self._connect_failed(host, errno.EHOSTUNREACH)
        else:
            address = infos[0][4]
            self._connect(host, (str(address[0]), int(address[1])))
        self._pump()

    def _connect(self, host: _HostTcp, target: tuple[str, int]) -> None:
        sock = host.sock
        try:
            err = sock.connect_ex(target)
        except OSError as exc:
            err = exc.errno or errno.EHOSTUNREACH
        if err in (0, errno.EINPROGRESS):
            # The reader is registered now, with the writer that reports the connect: one poll handle for
            # the socket's whole life (uvloop closes a handle left with no callback and re-creates it
            # at the next add_reader: 7 more system calls per connection).
            host.connecting = True
            host.reading = True
            fd = sock.fileno()
            self._loop.add_reader(fd, self._on_tcp_readable, host)
            self._loop.add_writer(fd, self._on_connect_done, host)
            if host.timer is None:
                host.timer = self._loop.call_later(CONNECT_TIMEOUT, self._on_connect_timeout, host)
        else:
            host.connecting = False
            self._connect_failed(host, err)

    def _connect_smb(self, fid: int) -> None:
        """smb=DIR: this connection gets an smbd of its own, over a loopback TCP pair (io/smb.py)."""
        smb = self._smb
        if smb is None:
            self.stack.tcp_failed(fid, errno.ECONNREFUSED, self._loop.time())
            return
        try:
            sock = smb.connect()
        except SmbError as exc:
            log.info("%s: smb: %s", self.label, exc)
            self.stack.tcp_failed(fid, exc.errno, self._loop.time())
            return
        host = _HostTcp(fid, sock)
        self._tcp[fid] = host
        self.stack.tcp_connected(fid, self._loop.time())
        self._start_reading(host)

    def _spawn_guestfwd(self, fid: int, command: str) -> None:
        """guestfwd=...-cmd:COMMAND: the command's stdin/stdout is the connection (as QEMU's cmd:)."""
        try:
            ours, theirs = socket.socketpair()
        except OSError as exc:
            self.stack.tcp_failed(fid, exc.errno or errno.EMFILE, self._loop.time())
            return
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=theirs.fileno(), stdout=theirs.fileno(),
                                    close_fds=True)
        except OSError:
            ours.close()
            theirs.close()
            self.stack.tcp_failed(fid, errno.ECONNREFUSED, self._loop.time())
            return
        theirs.close()
        ours.setblocking(False)
        host = _HostTcp(fid, ours)
        host.proc = proc
        self._tcp[fid] = host
        self.stack.tcp_connected(fid, self._loop.time())
        self._start_reading(host)

    def _on_connect_done(self, host: _HostTcp) -> None:
        self._loop.remove_writer(host.sock.fileno())
        host.connecting = False
        if host.timer is not None:
            host.timer.cancel()
            host.timer = None
        err = host.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._connect_failed(host, err)
        else:
            # try/except, not contextlib.suppress (three Python calls): these run once per connection.
            try:  # noqa: SIM105
                host.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            self.stack.tcp_connected(host.fid, self._loop.time())
            if self._tcp.get(host.fid) is host:
                self._start_reading(host)
                if host.out:
                    self._arm_writer(host)
        self._pump()

    def _on_connect_timeout(self, host: _HostTcp) -> None:
        if host.connecting:
            self._loop.remove_writer(host.sock.fileno())
            host.connecting = False
            host.timer = None
            self._connect_failed(host, errno.ETIMEDOUT)
            self._pump()

    def _connect_failed(self, host: _HostTcp, err: int) -> None:
        self._tcp.pop(host.fid, None)
        self._close_socket(host)
        self.stack.tcp_failed(host.fid, err, self._loop.time())

    def _start_reading(self, host: _HostTcp) -> None:
        if not host.reading and not host.connecting and host.sock.fileno() >= 0:
            host.reading = True
            self._loop.add_reader(host.sock.fileno(), self._on_tcp_readable, host)

    def _stop_reading(self, host: _HostTcp) -> None:
        if host.reading:
            host.reading = False
            try:  # noqa: SIM105 (per connection: no contextlib.suppress)
                self._loop.remove_reader(host.sock.fileno())
            except (ValueError, OSError):
                pass

    def _on_tcp_readable(self, host: _HostTcp) -> None:
        if host.connecting:  # readable before the writer ran: the connect's outcome (an error, or data) first
            self._on_connect_done(host)
            return
        now = self._loop.time()
        chunk = host.chunk
        try:
            if host.first:
                # A host that answers and closes (HTTP/1.0, a health check) has usually sent its FIN with
                # the answer: one more recv after a short first read finds it, and the FIN goes out with
                # the data. Only the first read looks (an RR connection would pay a recv per answer).
                host.first = False
                n = self.stack.tcp_fill(host.fid, self._first_reader(host), now, chunk, lambda: host.ended)
            else:
                n = self.stack.tcp_fill(host.fid, host.sock.recv_into, now, chunk)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._stop_reading(host)
            self.stack.tcp_reset(host.fid, now)
            self._pump()
            return
        except Exception as exc:
            self._stop_reading(host)
            self._fault("io tcp read", exc)
            self.stack.tcp_reset(host.fid, now)
            self._pump()
            return
        if host.failed:
            self._stop_reading(host)
            self.stack.tcp_reset(host.fid, now)
        elif not n or host.ended:
            self._stop_reading(host)  # EOF (the engine sends FIN) or no room until TCP_RESUME
        elif n == chunk and chunk < READ_CHUNK:
            host.chunk = chunk * 2
        self._pump()

    @staticmethod
    def _first_reader(host: _HostTcp) -> Callable[[memoryview], int]:
        """``recv_into`` that, after a short read, reads once more: 0 then is the host's EOF (``ended``)."""
        recv_into = host.sock.recv_into

        def read(view: memoryview) -> int:
            n = recv_into(view)
            if 0 < n < len(view):
                try:
                    with view[n:] as rest:
                        m = recv_into(rest)
                except (BlockingIOError, InterruptedError):
                    return n
                except OSError:
                    host.failed = True  # reset after the data: the data goes first, then the RST
                    return n
                if m == 0:
                    host.ended = True
                return n + m
            return n

        return read

    def _tcp_resume(self, fid: int) -> None:
        host = self._tcp.get(fid)
        if host is not None:
            self._start_reading(host)

    def _tcp_write(self, fid: int, data: bytearray) -> None:
        host = self._tcp.get(fid)
        if host is None:
            return
        if host.out or host.connecting:
            host.out += data
            return
        try:
            sent = host.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.stack.tcp_reset(fid, self._loop.time())
            return
        if sent:
            self.stack.tcp_written(fid, sent, self._loop.time())
        if sent < len(data):
            host.out += memoryview(data)[sent:]
            self._arm_writer(host)

    def _arm_writer(self, host: _HostTcp) -> None:
        if not host.writing:
            host.writing = True
            self._loop.add_writer(host.sock.fileno(), self._on_tcp_writable, host)

    def _on_tcp_writable(self, host: _HostTcp) -> None:
        try:
            sent = host.sock.send(host.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._loop.remove_writer(host.sock.fileno())
            host.writing = False
            self.stack.tcp_reset(host.fid, self._loop.time())
            self._pump()
            return
        del host.out[:sent]
        if not host.out:
            self._loop.remove_writer(host.sock.fileno())
            host.writing = False
            if host.shut_pending:
                with contextlib.suppress(OSError):
                    host.sock.shutdown(socket.SHUT_WR)
        self.stack.tcp_written(host.fid, sent, self._loop.time())
        self._pump()

    def _tcp_shutdown(self, fid: int) -> None:
        host = self._tcp.get(fid)
        if host is None:
            return
        if host.out or host.connecting:
            host.shut_pending = True
            return
        try:  # noqa: SIM105 (per connection: no contextlib.suppress)
            host.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _tcp_close(self, fid: int, abortive: bool) -> None:
        host = self._tcp.pop(fid, None)
        if host is None:
            return
        if abortive:
            # The guest reset the connection: so does the host side (the peer sees ECONNRESET).
            with contextlib.suppress(OSError):
                host.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
            self._close_socket(host)
            return
        if host.out and not host.connecting and host.sock.fileno() >= 0:
            # The guest saw these bytes acknowledged: write them out before closing (bounded in time).
            self._stop_reading(host)
            self._lingering.add(host)
            if host.writing:
                self._loop.remove_writer(host.sock.fileno())
            host.writing = True
            self._loop.add_writer(host.sock.fileno(), self._on_linger_writable, host)
            host.timer = self._loop.call_later(LINGER_TIMEOUT, self._close_socket, host)
            return
        self._close_socket(host)

    def _on_linger_writable(self, host: _HostTcp) -> None:
        try:
            sent = host.sock.send(host.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_socket(host)
            return
        del host.out[:sent]
        if not host.out:
            with contextlib.suppress(OSError):
                host.sock.shutdown(socket.SHUT_WR)
            self._close_socket(host)

    def _close_socket(self, host: _HostTcp) -> None:
        self._lingering.discard(host)
        fd = host.sock.fileno()
        if fd >= 0:
            if host.reading:
                self._loop.remove_reader(fd)
            if host.writing or host.connecting:
                self._loop.remove_writer(fd)
        host.reading = host.writing = host.connecting = False
        if host.timer is not None:
            host.timer.cancel()
            host.timer = None
        host.sock.close()
        if host.proc is not None:
            with contextlib.suppress(OSError):
                host.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                host.proc.wait(0)  # reap it if it already exited; a SIGCHLD-free reap happens at the next close

    def _on_fwd_accept(self, index: int, sock: socket.socket) -> None:
        accept_pending(sock, self._loop, lambda: self._on_fwd_accept(index, sock),
                       lambda conn, client: self._fwd_accepted(index, conn, client), limit=ACCEPT_LIMIT)
        self._pump()

    def _fwd_accepted(self, index: int, conn: socket.socket, client: Any) -> None:
        conn.setblocking(False)
        fid = self.stack.hostfwd_tcp(index, (client[0], client[1]), self._loop.time())
        if fid is None:
            conn.close()  # a cap said no: the client sees the connection closed at once
            return
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        host = _HostTcp(fid, conn)
        self._tcp[fid] = host
        self._start_reading(host)
        log.info("%s: hostfwd connection from %s:%d", self.label, client[0], client[1])

    # -- UDP -----------------------------------------------------------------------------------------------
    def _udp_send(self, fid: int, family: int, dst: tuple[str, int], data: bytes) -> None:
        sock = self._udp.get(fid)
        if sock is None:
            sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, _DGRAM_NONBLOCK)
            with contextlib.suppress(OSError):
                if family == 4:
                    sock.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
                else:
                    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            self._udp[fid] = sock
            self._loop.add_reader(sock.fileno(), self._on_udp_readable, fid, sock)
        try:
            sock.sendto(data, dst)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._udp_errors(fid, sock)  # a pending ICMP error surfaced here: reported from the error queue
            try:
                sock.sendto(data, dst)
            except OSError as exc:
                # The host cannot send it at all (no route, an unreachable or prohibit route): tell the
                # guest by ICMP, as libslirp does, instead of losing the datagram silently.
                code = (_UNREACH_CODE if family == 4 else _UNREACH_CODE6).get(exc.errno or 0)
                if code is not None:
                    self.stack.udp_error(fid, dst, code, self._loop.time())

    def _on_udp_readable(self, fid: int, sock: socket.socket) -> None:
        now = self._loop.time()
        buf, view, stack = self._udp_buf, self._udp_view, self.stack
        for _ in range(DRAIN_LIMIT):
            try:
                n, src = sock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._udp_errors(fid, sock)
                continue
            stack.udp_received(fid, view[:n], src, now)
        self._pump()

    def _udp_errors(self, fid: int, sock: socket.socket) -> None:
        """ICMP errors queued on a flow's socket (IP_RECVERR): unreachables go back to the guest."""
        now = self._loop.time()
        for _ in range(DRAIN_LIMIT):
            try:
                _data, ancdata, _flags, addr = sock.recvmsg(64, 512, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            for level, kind, cdata in ancdata:
                if len(cdata) < _EE.size:
                    continue
                _errno, origin, icmp_type, code, _pad, _info, _d = _EE.unpack_from(cdata)
                if not isinstance(addr, tuple):
                    continue
                unreachable4 = level == socket.SOL_IP and kind == IP_RECVERR and origin == SO_EE_ORIGIN_ICMP
                unreachable6 = level == socket.IPPROTO_IPV6 and kind == IPV6_RECVERR and origin == SO_EE_ORIGIN_ICMP6
                # destination unreachable (ICMP type 3, ICMPv6 type 1): the code goes to the guest as it is
                if (unreachable4 and icmp_type == 3) or (unreachable6 and icmp_type == 1):
                    self.stack.udp_error(fid, (addr[0], addr[1]), code, now)

    def _udp_close(self, fid: int) -> None:
        sock = self._udp.pop(fid, None)
        if sock is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock.fileno())
            sock.close()

    def _on_fwd_datagram(self, index: int, sock: socket.socket) -> None:
        now = self._loop.time()
        buf, view = self._udp_buf, self._udp_view
        for _ in range(DRAIN_LIMIT):
            try:
                n, client = sock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            self.stack.hostfwd_udp(index, (client[0], client[1]), view[:n], now)
        self._pump()

    def _udp_fwd_reply(self, index: int, client: tuple[str, int], data: bytes) -> None:
        sock = self._fwd_socks.get(index)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.sendto(data, client)

    # -- DNS upstream ----------------------------------------------------------------------------------------
    def _dns_send(self, upstream: tuple[str, int], payload: bytes, tcp: bool) -> None:
        self._dns.send(upstream, payload, tcp)

    def _on_dns_answer(self, payload: bytes, upstream: tuple[str, int], tcp: bool) -> None:
        self.stack.dns_answer(payload, upstream, tcp, self._loop.time())
        self._pump()

    # -- ICMP echo -------------------------------------------------------------------------------------------
    def _ping_send(self, fid: int, family: int, dst: str, ident: int, seq: int, data: bytes) -> None:
        """An echo request toward the host's network: an unprivileged ping socket (allowed by
        net.ipv4.ping_group_range), else one shared raw socket (CAP_NET_RAW), else dropped and counted.

        On the raw socket every flow gets an identifier of its own (what the kernel does for ping
        sockets): two guests pinging one host with the same identifier must each get their own replies."""
        handle = self._pings.get(fid)
        if family == 6:
            self._ping6_send(fid, dst, ident, seq, data, handle)
            return
        if handle is None:
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
            except OSError:
                if self._raw_icmp_socket() is None:
                    self.ping_dropped += 1
                    return
                handle = self._new_raw_ident(dst)
                self._raw_flows[(dst, handle)] = fid
            else:
                sock.setblocking(False)
                handle = sock
                self._loop.add_reader(sock.fileno(), self._on_ping_readable, fid, sock)
            self._pings[fid] = handle
        packet = bytearray(bytes([8, 0, 0, 0]) + ident.to_bytes(2, "big") + seq.to_bytes(2, "big") + data)
        if isinstance(handle, int):
            raw = self._raw_icmp
            if raw is None:
                return
            packet[4:6] = handle.to_bytes(2, "big")
            packet[2:4] = internet_checksum(packet).to_bytes(2, "big")  # the kernel fills it only for ping sockets
            with contextlib.suppress(OSError):
                raw.sendto(packet, (dst, 0))
        else:
            with contextlib.suppress(OSError):
                handle.sendto(packet, (dst, 0))

    def _ping6_send(self, fid: int, dst: str, ident: int, seq: int, data: bytes,
                    handle: socket.socket | int | None) -> None:
        """ICMPv6 echo through an unprivileged IPv6 ping socket (the same ping_group_range); no raw
        fallback: without one the request is dropped and counted."""
        if handle is None:
            try:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6)
            except OSError:
                self.ping_dropped += 1
                return
            sock.setblocking(False)
            handle = sock
            self._pings[fid] = sock
            self._loop.add_reader(sock.fileno(), self._on_ping_readable, fid, sock)
        if isinstance(handle, socket.socket):
            packet = bytes([128, 0, 0, 0]) + ident.to_bytes(2, "big") + seq.to_bytes(2, "big") + data
            with contextlib.suppress(OSError):
                handle.sendto(packet, (dst, 0))

    def _new_raw_ident(self, dst: str) -> int:
        for _ in range(0x10000):
            self._raw_ident = (self._raw_ident + 1) & 0xFFFF
            if (dst, self._raw_ident) not in self._raw_flows:
                break
        return self._raw_ident

    def _raw_icmp_socket(self) -> socket.socket | None:
        if self._raw_icmp is None and not self._raw_icmp_failed:
            try:
                self._raw_icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            except OSError:
                self._raw_icmp_failed = True
                log.info("%s: neither ping sockets (net.ipv4.ping_group_range) nor raw sockets are allowed: "
                         "guests' pings beyond the stack are dropped", self.label)
                return None
            self._raw_icmp.setblocking(False)
            self._loop.add_reader(self._raw_icmp.fileno(), self._on_raw_icmp_readable)
        return self._raw_icmp

    def _on_raw_icmp_readable(self) -> None:
        """A raw ICMP socket hears every ICMP message to the host (IP header included): keep the echo
        replies that answer our flows."""
        raw = self._raw_icmp
        if raw is None:
            return
        now = self._loop.time()
        buf, view = self._udp_buf, self._udp_view
        for _ in range(DRAIN_LIMIT):
            try:
                n, src = raw.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            hlen = (buf[0] & 0x0F) * 4 if n else 0
            if n < hlen + 8 or buf[hlen] != 0:
                continue
            ident = int.from_bytes(buf[hlen + 4 : hlen + 6], "big")
            fid = self._raw_flows.get((src[0], ident))
            if fid is not None:
                seq = int.from_bytes(buf[hlen + 6 : hlen + 8], "big")
                self.stack.ping_reply(fid, seq, bytes(view[hlen + 8 : n]), now)
        self._pump()

    def _on_ping_readable(self, fid: int, sock: socket.socket) -> None:
        """A ping socket delivers the ICMP message alone; the kernel rewrote the id, ours is the flow's."""
        now = self._loop.time()
        buf, view = self._udp_buf, self._udp_view
        for _ in range(DRAIN_LIMIT):
            try:
                n, _src = sock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            if n >= 8 and buf[0] in (0, 129):  # echo reply, ICMP or ICMPv6
                self.stack.ping_reply(fid, int.from_bytes(buf[6:8], "big"), bytes(view[8:n]), now)
        self._pump()

    def _ping_close(self, fid: int) -> None:
        handle = self._pings.pop(fid, None)
        if isinstance(handle, int):
            for key, owner in list(self._raw_flows.items()):
                if owner == fid:
                    del self._raw_flows[key]
        elif isinstance(handle, socket.socket):
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(handle.fileno())
            handle.close()

    # -- monitor -------------------------------------------------------------------------------------------
    def loop_time(self) -> float:
        return self._loop.time()

    def forward_fds(self) -> list[tuple[HostForward, int, int]]:
        """(rule, fd, bound port) of every hostfwd listener."""
        out = []
        for index, sock in self._fwd_socks.items():
            rule = self.stack.hostfwd.get(index)
            if rule is not None:
                out.append((rule, sock.fileno(), sock.getsockname()[1]))
        return out

    def fd_of(self, fid: int) -> int:
        host = self._tcp.get(fid)
        if host is not None:
            return host.sock.fileno()
        sock = self._udp.get(fid) or self._pings.get(fid)
        return sock.fileno() if isinstance(sock, socket.socket) else -1

    # -- leases ------------------------------------------------------------------------------------------------
    def _save_leases(self) -> None:
        self._leases_timer = None
        dhcp = self.stack.dhcp
        if not self.leases_path or dhcp is None:
            return
        self._leases_saved = dhcp.server.changed
        # Expiry times are the loop's monotonic clock inside vmlan, wall-clock time in the file.
        offset = time.time() - self._loop.time()
        data = []
        for lease in self.stack.leases():
            record = lease.to_dict()
            record["expires"] = lease.expires + offset
            data.append(record)
        tmp = f"{self.leases_path}.tmp"
        try:
            with open(tmp, "w") as fh:
                json.dump({"leases": data}, fh, indent=1)
            os.replace(tmp, self.leases_path)
        except OSError as exc:
            log.warning("%s: cannot save leases to %s: %s", self.label, self.leases_path, exc.strerror)


def _load_leases(path: str, now: float) -> list[Lease]:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("cannot read leases file %s (%s): starting empty", path, exc)
        return []
    offset = now - time.time()
    leases = []
    for item in data.get("leases", []) if isinstance(data, dict) else []:
        try:
            lease = Lease.from_dict(item)
        except ValueError as exc:
            log.warning("leases file %s: %s (skipped)", path, exc)
            continue
        leases.append(Lease(lease.mac, lease.ip, lease.expires + offset, lease.hostname))
    return leases


__all__ = ["UserNetPort", "stack_config"]
