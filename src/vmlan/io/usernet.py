"""The user-mode stack's asyncio adapter: a hub port whose far side is the host's sockets.

engines/usernet.py decides everything; this module only performs what it asks (``next_action()``) and
reports what the sockets did. Every host socket is driven by ``add_reader``/``add_writer`` callbacks
(no Task per packet or per connection). Backpressure runs both ways: a host socket is read only while the
guest connection has send space (the engine says when to resume), and guest data the host socket cannot
take yet stays counted against the guest's TCP window until it has been written.
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
import subprocess
import time
from collections.abc import Callable
from typing import Any

from vmlan.config.usernet import UserNetdev
from vmlan.engines.dhcp import DhcpConfig, Lease
from vmlan.engines.dns import HOST_NAME, DnsConfig, read_resolv_conf
from vmlan.engines.tcp import TcpParams
from vmlan.engines.usernet import (
    DnsSend,
    GuestForward,
    HostForward,
    PingClose,
    PingFlow,
    PingSend,
    StackConfig,
    TcpClose,
    TcpConnect,
    TcpRelay,
    TcpResume,
    TcpShutdown,
    TcpWrite,
    UdpClose,
    UdpFlow,
    UdpFwdReply,
    UdpSend,
    UserStack,
)
from vmlan.io.errors import LinkError
from vmlan.io.sockopt import accept_pending
from vmlan.lan import Port
from vmlan.wire import BytesLike
from vmlan.wire.checksum import internet_checksum
from vmlan.wire.vnet import Offload

log = logging.getLogger("vmlan")

READ_CHUNK = 256 * 1024
UDP_BUFSIZE = 65536
CONNECT_TIMEOUT = 30.0
LINGER_TIMEOUT = 30.0  # how long a closed relay may take to write the guest's last bytes to the host
RAW_PING = "raw"  # PingFlow.handle of a flow served by the shared raw ICMP socket
LEASES_SAVE_DELAY = 1.0


RESOLV_CONF = "/etc/resolv.conf"


def stack_config(user: UserNetdev, resolv_conf: str = RESOLV_CONF) -> StackConfig:
    """Turn ``-netdev user`` options into the engines' configurations (reading the host's resolvers)."""
    host, dns = str(user.host), str(user.dns)
    dhcp = DhcpConfig(
        server_ip=host,
        netmask=str(user.net.netmask),
        router=None if user.restrict else host,
        dns=() if user.restrict else (dns,),
        pool_start=str(user.dhcp_start),
        pool_size=user.pool,
        hostname=user.hostname,
        domainname=user.domainname,
        dnssearch=tuple(user.dnssearch),
        mtu=user.mtu,
        static_leases={lease.mac: str(lease.addr) for lease in user.static_leases},
    )
    upstreams = list(user.dns_servers)
    if not upstreams:
        try:
            with open(resolv_conf) as fh:
                upstreams = [(server, 53) for server in read_resolv_conf(fh.read())]
        except OSError:
            upstreams = []
        if not upstreams:
            log.warning("-netdev user,id=%s: no nameserver in %s: guests' DNS queries will fail", user.id,
                        resolv_conf)
    static: dict[str, list[str]] = {}
    for name, addr in user.dns_static:
        static.setdefault(name, []).append(str(addr))
    dns_cfg = DnsConfig(upstreams=tuple(upstreams), static=static, host_names={HOST_NAME: host})
    hostfwd = tuple(
        HostForward(f.proto, f.host_addr, f.host_port, user.hostfwd_guest(f).packed, f.guest_port) for f in user.hostfwd
    )
    guestfwd = tuple(GuestForward(socket.inet_aton(g.server), g.port, g.target) for g in user.guestfwd)
    return StackConfig(
        net=user.net,
        host=user.host,
        dns=user.dns,
        restrict=user.restrict,
        host_loopback=user.host_loopback,
        mtu=user.mtu,
        dhcp=dhcp,
        dns_config=dns_cfg,
        hostfwd=hostfwd,
        guestfwd=guestfwd,
        tcp=TcpParams(mss=user.mtu - 40),
    )


class _HostTcp:
    """The host side of one relayed TCP connection."""

    __slots__ = ("connecting", "out", "proc", "reading", "shut_pending", "sock", "timer", "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
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
        "_dns_sock",
        "_fwd_socks",
        "_leases_saved",
        "_leases_timer",
        "_lingering",
        "_loop",
        "_out_frames",
        "_pumping",
        "_raw_flows",
        "_raw_icmp",
        "_raw_icmp_failed",
        "_timer",
        "_timer_at",
        "_udp_buf",
        "cfg",
        "internal_errors",
        "label",
        "leases_path",
        "ping_dropped",
        "stack",
    )

    def __init__(
        self,
        user: UserNetdev,
        loop: asyncio.AbstractEventLoop,
        stack_cfg: StackConfig | None = None,
    ) -> None:
        super().__init__(user.id)
        self.cfg = user
        self._loop = loop
        self.leases_path = user.leases_file
        leases = _load_leases(self.leases_path, loop.time()) if self.leases_path else []
        cfg = stack_cfg if stack_cfg is not None else stack_config(user)
        self.stack = UserStack(cfg, leases, isn_seed=int.from_bytes(os.urandom(4), "big"))
        self._leases_saved = self.stack.dhcp.changed if self.stack.dhcp is not None else 0
        self._out_frames: list[bytes] = []
        self._pumping = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._dns_sock: socket.socket | None = None
        self._fwd_socks: list[tuple[HostForward, socket.socket]] = []
        self._leases_timer: asyncio.TimerHandle | None = None
        self._udp_buf = bytearray(UDP_BUFSIZE)
        self._raw_icmp: socket.socket | None = None
        self._raw_icmp_failed = False
        self._raw_flows: dict[tuple[str, int], PingFlow] = {}
        self._lingering: set[_HostTcp] = set()
        self.ping_dropped = 0
        self.internal_errors = 0
        self.label = f"user {user.id}"

    @property
    def ports(self) -> list[Port]:
        return [self]

    def describe(self) -> str:
        c = self.stack.cfg
        return f"net={c.net.network_address},restrict={'on' if c.restrict else 'off'}"

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        for rule in self.stack.cfg.hostfwd:
            kind = socket.SOCK_STREAM if rule.proto == "tcp" else socket.SOCK_DGRAM
            sock = socket.socket(socket.AF_INET, kind)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((rule.host_addr or "0.0.0.0", rule.host_port))
                if kind == socket.SOCK_STREAM:
                    sock.listen(64)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                self.close()
                raise LinkError(
                    f"-netdev user,id={self.name}: could not set up host forwarding rule "
                    f"'{rule.proto}:{rule.host_addr}:{rule.host_port}': {exc.strerror}"
                ) from None
            self._fwd_socks.append((rule, sock))
            if kind == socket.SOCK_STREAM:
                self._loop.add_reader(sock.fileno(), self._on_fwd_accept, rule, sock)
            else:
                self._loop.add_reader(sock.fileno(), self._on_fwd_datagram, rule, sock)
            log.info("%s: forwarding %s %s:%d -> guest %s:%d", self.label, rule.proto, rule.host_addr or "*",
                     rule.host_port, socket.inet_ntoa(rule.guest_addr), rule.guest_port)

    def close(self) -> None:
        for rule, sock in self._fwd_socks:
            del rule
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._fwd_socks.clear()
        for relay in list(self.stack.tcp.values()):
            self._close_host(relay)
        for host in list(self._lingering):
            self._close_socket(host)
        for flow in list(self.stack.udp_flows.values()):
            self._close_udp(flow)
        for ping in list(self.stack.pings.values()):
            self._close_ping(ping)
        if self._raw_icmp is not None:
            self._loop.remove_reader(self._raw_icmp.fileno())
            self._raw_icmp.close()
            self._raw_icmp = None
        if self._dns_sock is not None:
            self._loop.remove_reader(self._dns_sock.fileno())
            self._dns_sock.close()
            self._dns_sock = None
        if self._timer is not None:
            self._timer.cancel()
        if self._leases_timer is not None:
            self._leases_timer.cancel()
            self._save_leases()
        if self.lan is not None:
            self.lan.detach(self)

    # -- the hub side ------------------------------------------------------------------------------------
    def transmit(self, frame: BytesLike, src: Port, offload: Offload | None) -> bool:
        try:
            self.stack.receive_frame(frame, self._loop.time())
        except Exception:  # an engine bug must cost one frame, never the port
            self._internal_error("a frame from the hub failed")
            return False
        finally:
            self._pump()
        return True

    def _flush_frames(self) -> None:
        frames, self._out_frames = self._out_frames, []
        lan = self.lan
        if lan is None:
            return
        for frame in frames:
            lan.input(self, frame)

    def _pump(self) -> None:
        """Carry out what the engine asked for, hand its frames to the hub, re-arm its timer."""
        if self._pumping:
            return
        self._pumping = True
        try:
            stack = self.stack
            while True:
                action = stack.next_action()
                if action is None:
                    break
                try:
                    self._do(action)
                except Exception:  # e.g. EMFILE from socket(): this action is lost, the stack goes on
                    self._internal_error("a host socket operation failed")
            frames = stack.frames_to_send()
            if frames:
                if not self._out_frames:
                    self._loop.call_soon(self._flush_frames)
                self._out_frames.extend(frames)
            deadline = stack.get_timer()
            if deadline is not None and deadline < self._timer_at:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer_at = deadline
                # uvloop rounds to whole milliseconds and may fire early: the engine would find
                # nothing due and the loop would spin until the deadline.
                self._timer = self._loop.call_at(math.ceil(deadline * 1000) / 1000 + 0.0005, self._on_timer)
            dhcp = stack.dhcp
            if dhcp is not None and self.leases_path and dhcp.changed != self._leases_saved and not self._leases_timer:
                self._leases_timer = self._loop.call_later(LEASES_SAVE_DELAY, self._save_leases)
        finally:
            self._pumping = False

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        try:
            self.stack.handle_timer(self._loop.time())
        except Exception:
            self._internal_error("a timer failed")
        self._pump()  # re-arms the timer whatever happened

    def _internal_error(self, what: str) -> None:
        """A bug or an exhausted resource: counted, logged once with its traceback, never fatal."""
        self.internal_errors += 1
        if self.internal_errors == 1:
            log.exception("%s: %s", self.label, what)

    def _do(self, action: Any) -> None:
        if isinstance(action, TcpWrite):
            self._tcp_write(action.relay, action.data)
        elif isinstance(action, UdpSend):
            self._udp_send(action.flow, action.dst, action.data)
        elif isinstance(action, TcpResume):
            self._start_reading(action.relay)
        elif isinstance(action, TcpConnect):
            self._tcp_connect(action.relay, action.target)
        elif isinstance(action, TcpShutdown):
            self._tcp_shutdown(action.relay)
        elif isinstance(action, TcpClose):
            self._close_host(action.relay)
        elif isinstance(action, UdpClose):
            self._close_udp(action.flow)
        elif isinstance(action, UdpFwdReply):
            for rule, sock in self._fwd_socks:
                if rule is action.rule:
                    with contextlib.suppress(OSError):
                        sock.sendto(action.data, action.client)
        elif isinstance(action, DnsSend):
            self._dns_send(action.upstream, action.data)
        elif isinstance(action, PingSend):
            self._ping_send(action.flow, action.seq, action.data)
        elif isinstance(action, PingClose):
            self._close_ping(action.flow)

    # -- UDP -----------------------------------------------------------------------------------------------
    def _udp_send(self, flow: UdpFlow, dst: tuple[str, int], data: bytes) -> None:
        sock = flow.handle
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            flow.handle = sock
            self._loop.add_reader(sock.fileno(), self._on_udp_readable, flow)
        assert isinstance(sock, socket.socket)
        with contextlib.suppress(OSError):
            sock.sendto(data, dst)

    def _drain(self, sock: socket.socket, deliver: Callable[[memoryview, Any], None]) -> None:
        """Read every datagram waiting on ``sock`` (up to a bound per wakeup) into the shared buffer and
        hand each to ``deliver``, which must copy what it keeps; then run the engine's actions once."""
        view = memoryview(self._udp_buf)
        for _ in range(64):
            try:
                n, src = sock.recvfrom_into(self._udp_buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # an ICMP error queued on the socket: nothing to deliver
            try:
                deliver(view[:n], src)
            except Exception:
                self._internal_error("a datagram from the host failed")
        self._pump()

    def _on_udp_readable(self, flow: UdpFlow) -> None:
        sock = flow.handle
        if isinstance(sock, socket.socket):
            now = self._loop.time()
            self._drain(sock, lambda data, src: self.stack.udp_received(flow, data, src, now))

    def _close_udp(self, flow: UdpFlow) -> None:
        sock = flow.handle
        if isinstance(sock, socket.socket):
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock.fileno())
            sock.close()
        flow.handle = None

    def _on_fwd_datagram(self, rule: HostForward, sock: socket.socket) -> None:
        now = self._loop.time()
        self._drain(sock, lambda data, client: self.stack.hostfwd_udp(rule, client, data, now))

    # -- DNS upstream ----------------------------------------------------------------------------------------
    def _dns_send(self, upstream: tuple[str, int], data: bytes) -> None:
        if self._dns_sock is None:
            self._dns_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._dns_sock.setblocking(False)
            self._loop.add_reader(self._dns_sock.fileno(), self._on_dns_readable)
        with contextlib.suppress(OSError):
            self._dns_sock.sendto(data, upstream)

    def _on_dns_readable(self) -> None:
        if self._dns_sock is not None:
            now = self._loop.time()
            self._drain(self._dns_sock, lambda data, src: self.stack.dns_response(src, bytes(data), now))

    # -- ICMP echo -------------------------------------------------------------------------------------------
    def _ping_send(self, flow: PingFlow, seq: int, data: bytes) -> None:
        """An echo request toward the host's network: an unprivileged ping socket (allowed by
        net.ipv4.ping_group_range), else one shared raw socket (CAP_NET_RAW), else dropped and counted."""
        packet = bytearray(bytes([8, 0, 0, 0]) + flow.ident.to_bytes(2, "big") + seq.to_bytes(2, "big") + data)
        sock = flow.handle
        if sock is None:
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
            except OSError:
                sock = self._raw_icmp_socket()
                if sock is None:
                    self.ping_dropped += 1
                    return
                flow.handle = RAW_PING
                self._raw_flows[(flow.dst, flow.ident)] = flow
            else:
                sock.setblocking(False)
                flow.handle = sock
                self._loop.add_reader(sock.fileno(), self._on_ping_readable, flow)
        elif flow.handle is RAW_PING:
            sock = self._raw_icmp
        if sock is None or not isinstance(sock, socket.socket):
            return
        if flow.handle is RAW_PING:  # the kernel fills in the checksum only for ping sockets
            packet[2:4] = internet_checksum(packet).to_bytes(2, "big")
        with contextlib.suppress(OSError):
            sock.sendto(packet, (flow.dst, 0))

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
        if self._raw_icmp is not None:
            self._drain(self._raw_icmp, self._raw_icmp_message)

    def _raw_icmp_message(self, data: memoryview, src: Any) -> None:
        """A raw ICMP socket hears every ICMP message to the host (IP header included): keep the echo
        replies that answer our flows."""
        hlen = (data[0] & 0x0F) * 4 if data else 0
        if len(data) < hlen + 8 or data[hlen] != 0:
            return
        flow = self._raw_flows.get((src[0], int.from_bytes(data[hlen + 4 : hlen + 6], "big")))
        if flow is not None:
            seq = int.from_bytes(data[hlen + 6 : hlen + 8], "big")
            self.stack.ping_reply(flow, seq, bytes(data[hlen + 8 :]), self._loop.time())

    def _on_ping_readable(self, flow: PingFlow) -> None:
        sock = flow.handle
        if isinstance(sock, socket.socket):
            self._drain(sock, lambda data, _src: self._ping_socket_message(flow, data))

    def _ping_socket_message(self, flow: PingFlow, data: memoryview) -> None:
        """A ping socket delivers the ICMP message alone; the kernel rewrote the id, ours is the flow's."""
        if len(data) >= 8 and data[0] == 0:
            self.stack.ping_reply(flow, int.from_bytes(data[6:8], "big"), bytes(data[8:]), self._loop.time())

    def _close_ping(self, flow: PingFlow) -> None:
        if flow.handle is RAW_PING:
            if self._raw_flows.get((flow.dst, flow.ident)) is flow:
                del self._raw_flows[(flow.dst, flow.ident)]
            flow.handle = None
            return
        sock = flow.handle
        if isinstance(sock, socket.socket):
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock.fileno())
            sock.close()
        flow.handle = None

    # -- TCP ---------------------------------------------------------------------------------------------------
    def _tcp_connect(self, relay: TcpRelay, target: tuple[str, int] | str) -> None:
        if isinstance(target, str):
            self._spawn_guestfwd(relay, target)
            return
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:  # out of file descriptors: the guest gets a RST, not a hang
            self._connect_failed(relay, exc.errno or errno.EMFILE)
            return
        sock.setblocking(False)
        host = _HostTcp(sock)
        relay.handle = host
        err = sock.connect_ex(target)
        if err in (0, errno.EINPROGRESS):
            host.connecting = True
            self._loop.add_writer(sock.fileno(), self._on_connect_done, relay)
            host.timer = self._loop.call_later(CONNECT_TIMEOUT, self._on_connect_timeout, relay)
        else:
            self._connect_failed(relay, err)

    def _spawn_guestfwd(self, relay: TcpRelay, command: str) -> None:
        """guestfwd=...-cmd:COMMAND: the command's stdin/stdout is the connection (as QEMU's cmd:)."""
        try:
            ours, theirs = socket.socketpair()
        except OSError as exc:
            self._connect_failed(relay, exc.errno or errno.EMFILE)
            return
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=theirs, stdout=theirs, close_fds=True)
        except OSError:
            ours.close()
            theirs.close()
            self._connect_failed(relay, errno.ENOENT)
            return
        theirs.close()
        ours.setblocking(False)
        host = _HostTcp(ours)
        host.proc = proc
        relay.handle = host
        self.stack.tcp_connected(relay, self._loop.time())
        self._start_reading(relay)
        self._pump()

    def _on_connect_done(self, relay: TcpRelay) -> None:
        host = relay.handle
        assert isinstance(host, _HostTcp)
        self._loop.remove_writer(host.sock.fileno())
        host.connecting = False
        if host.timer is not None:
            host.timer.cancel()
            host.timer = None
        err = host.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._connect_failed(relay, err)
            return
        with contextlib.suppress(OSError):
            host.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stack.tcp_connected(relay, self._loop.time())
        self._start_reading(relay)
        if host.out:
            self._arm_writer(relay, host)
        self._pump()

    def _on_connect_timeout(self, relay: TcpRelay) -> None:
        host = relay.handle
        if isinstance(host, _HostTcp) and host.connecting:
            self._loop.remove_writer(host.sock.fileno())
            host.connecting = False
            host.timer = None
            self._connect_failed(relay, errno.ETIMEDOUT)

    def _connect_failed(self, relay: TcpRelay, err: int) -> None:
        self.stack.tcp_failed(relay, err == errno.ECONNREFUSED, self._loop.time())
        self._close_host(relay)
        self._pump()

    def _start_reading(self, relay: TcpRelay) -> None:
        host = relay.handle
        if isinstance(host, _HostTcp) and not host.reading and not host.connecting and host.sock.fileno() >= 0:
            host.reading = True
            self._loop.add_reader(host.sock.fileno(), self._on_tcp_readable, relay)

    def _stop_reading(self, host: _HostTcp) -> None:
        if host.reading:
            host.reading = False
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(host.sock.fileno())

    def _on_tcp_readable(self, relay: TcpRelay) -> None:
        host = relay.handle
        if not isinstance(host, _HostTcp):
            return
        stack = self.stack
        space = stack.tcp_send_space(relay)
        if space <= 0:
            self._stop_reading(host)
            return
        try:
            data = host.sock.recv(min(space, READ_CHUNK))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._stop_reading(host)
            stack.tcp_error(relay, self._loop.time())
            self._pump()
            return
        now = self._loop.time()
        if not data:
            self._stop_reading(host)
            stack.tcp_eof(relay, now)
        else:
            stack.tcp_data(relay, data, now)
            if relay.read_paused:
                self._stop_reading(host)
        self._pump()

    def _tcp_write(self, relay: TcpRelay, data: bytes) -> None:
        host = relay.handle
        if not isinstance(host, _HostTcp):
            return
        if host.out or host.connecting:
            host.out += data
            return
        try:
            sent = host.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.stack.tcp_error(relay, self._loop.time())
            return
        if sent:
            self.stack.tcp_written(relay, sent, self._loop.time())
        if sent < len(data):
            host.out += data[sent:]
            self._arm_writer(relay, host)

    def _arm_writer(self, relay: TcpRelay, host: _HostTcp) -> None:
        if not host.writing:
            host.writing = True
            self._loop.add_writer(host.sock.fileno(), self._on_tcp_writable, relay)

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

    def _on_tcp_writable(self, relay: TcpRelay) -> None:
        host = relay.handle
        if not isinstance(host, _HostTcp):
            return
        try:
            sent = host.sock.send(host.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._loop.remove_writer(host.sock.fileno())
            host.writing = False
            self.stack.tcp_error(relay, self._loop.time())
            self._pump()
            return
        del host.out[:sent]
        if not host.out:
            self._loop.remove_writer(host.sock.fileno())
            host.writing = False
            if host.shut_pending:
                with contextlib.suppress(OSError):
                    host.sock.shutdown(socket.SHUT_WR)
        self.stack.tcp_written(relay, sent, self._loop.time())
        self._pump()

    def _tcp_shutdown(self, relay: TcpRelay) -> None:
        host = relay.handle
        if not isinstance(host, _HostTcp):
            return
        if host.out or host.connecting:
            host.shut_pending = True
            return
        with contextlib.suppress(OSError):
            host.sock.shutdown(socket.SHUT_WR)

    def _close_host(self, relay: TcpRelay) -> None:
        host = relay.handle
        if not isinstance(host, _HostTcp):
            return
        relay.handle = None
        if host.out and not host.connecting and host.sock.fileno() >= 0:
            # The guest saw these bytes acknowledged: write them out before closing (bounded in time).
            self._stop_reading(host)
            self._lingering.add(host)
            host.writing = True  # (re)register: the relay's writer callback is replaced by the lingering one
            self._loop.add_writer(host.sock.fileno(), self._on_linger_writable, host)
            host.timer = self._loop.call_later(LINGER_TIMEOUT, self._close_socket, host)
            return
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

    def _on_fwd_accept(self, rule: HostForward, sock: socket.socket) -> None:
        accept_pending(sock, self._loop, lambda: self._on_fwd_accept(rule, sock),
                       lambda conn, client: self._fwd_accepted(rule, conn, client), limit=16)
        self._pump()

    def _fwd_accepted(self, rule: HostForward, conn: socket.socket, client: Any) -> None:
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        relay = self.stack.hostfwd_connect(rule, client, self._loop.time())
        if relay is None:
            conn.close()
            return
        relay.handle = _HostTcp(conn)
        self._start_reading(relay)
        log.info("%s: hostfwd %s:%d connection from %s:%d", self.label, rule.host_addr or "*", rule.host_port,
                 client[0], client[1])

    # -- monitor -------------------------------------------------------------------------------------------
    def loop_time(self) -> float:
        return self._loop.time()

    def forward_fds(self) -> list[tuple[HostForward, int]]:
        return [(rule, sock.fileno()) for rule, sock in self._fwd_socks]

    def fd_of(self, owner: TcpRelay | UdpFlow | PingFlow) -> int:
        handle = owner.handle
        if isinstance(handle, _HostTcp):
            return handle.sock.fileno()
        if isinstance(handle, socket.socket):
            return handle.fileno()
        return -1

    def tcp_queues(self, relay: TcpRelay) -> tuple[int, int]:
        """(bytes from the guest not yet written to the host, bytes for the guest it has not acknowledged)."""
        return relay.conn.unconsumed, relay.conn.bytes_unacked

    # -- leases ------------------------------------------------------------------------------------------------
    def _save_leases(self) -> None:
        self._leases_timer = None
        if not self.leases_path or self.stack.dhcp is None:
            return
        self._leases_saved = self.stack.dhcp.changed
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
