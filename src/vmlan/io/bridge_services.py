"""DHCP and DNS for the guests on a Linux bridge: vmlan's engines behind ordinary UDP and TCP sockets.

libvirt starts a dnsmasq per network; vmlan serves the bridge from its own process with the sans-IO
engines of the user stack (:class:`~vmlan.engines.dhcp.DhcpServer`,
:class:`~vmlan.engines.dns.DnsForwarder` with :class:`~vmlan.io.dns.DnsUpstreams`). Every socket is
bound to the bridge (SO_BINDTODEVICE), so a network's servers hear only its own guests and several
networks can each have a server on port 67:

* DHCP: one UDP socket on 0.0.0.0:67. The Ethernet source is not visible on a UDP socket, so the
  client's hardware address is the message's ``chaddr`` (dnsmasq reads it the same way). A reply to a
  client that has an address (``ciaddr``) goes to it by unicast; every other reply is broadcast to
  255.255.255.255:68 on the bridge: a client without an address cannot answer the ARP a unicast
  would need, and dnsmasq without raw sockets or ARP-table injection broadcasts the same way.
* DNS: a UDP socket and a TCP listener on port 53 of each of the bridge's addresses. TCP connections
  are capped (``max_tcp``), closed after ``tcp_idle`` seconds without a query, and when a slow reader
  lets more than ``TCP_OUT_MAX`` bytes of answers pile up.

Everything runs from ``add_reader``/``add_writer`` callbacks, draining each socket into one reused
buffer, and one timer for the DNS engine; a datagram that cannot be sent at once is dropped and
counted. What guests send is the engines' to validate; this layer drops only what it cannot even
attribute (a DHCP message too short to hold a ``chaddr``), counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import socket
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass
from ipaddress import ip_address
from typing import Any

from vmlan.engines.dhcp import DhcpServer, Lease
from vmlan.engines.dns import DnsForwarder, Reply, SendUpstream, TcpDnsFramer
from vmlan.io.dns import DnsUpstreams

log = logging.getLogger("vmlan")

__all__ = ["BridgeServices", "ServiceStats"]

DHCP_SERVER_PORT = 67
DHCP_CLIENT_PORT = 68
DNS_PORT = 53
_BUFSIZE = 0x10000
_DRAIN = 32  # datagrams per wakeup
_CHADDR = slice(28, 34)
_BOOTP_MIN = 236
TCP_OUT_MAX = 128 * 1024
_LIMITED_BROADCAST = "255.255.255.255"


@dataclass(slots=True)
class ServiceStats:
    dhcp_received: int = 0
    dhcp_sent: int = 0
    dhcp_broadcast: int = 0
    dhcp_short: int = 0  # too short or not Ethernet: no chaddr to attribute it to
    dns_udp_received: int = 0
    dns_tcp_connections: int = 0
    dns_tcp_refused: int = 0  # beyond max_tcp
    dns_tcp_idle_closed: int = 0
    dns_tcp_overflow: int = 0  # closed: a client that does not read its answers
    send_errors: int = 0
    internal_errors: int = 0


class _TcpClient:
    __slots__ = ("addr", "deadline", "fd", "framer", "key", "out", "sock")

    def __init__(self, sock: socket.socket, addr: Any, key: Hashable, deadline: float) -> None:
        self.sock: socket.socket | None = sock
        self.fd = sock.fileno()
        self.addr = addr
        self.key = key
        self.framer = TcpDnsFramer()
        self.out = bytearray()
        self.deadline = deadline


def _bound_socket(family: int, kind: int, device: str, addr: tuple[Any, ...]) -> socket.socket:
    sock = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_DGRAM and family == socket.AF_INET:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind(addr)
        if kind == socket.SOCK_STREAM:
            sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


class BridgeServices:
    """The DHCP and DNS servers of one bridge; see the module docstring."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        bridge: str,
        *,
        dhcp: DhcpServer | None = None,
        dns: DnsForwarder | None = None,
        dns_listen: Sequence[str] = (),
        on_lease: Callable[[Lease], None] | None = None,
        on_leases_changed: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        max_tcp: int = 64,
        tcp_idle: float = 10.0,
    ) -> None:
        """``clock``: the DHCP engine's time (wall clock, since leases are saved with their expiry)."""
        self.loop = loop
        self.bridge = bridge
        self.dhcp = dhcp
        self.dns = dns
        self.dns_listen = tuple(dns_listen)
        self.on_lease = on_lease
        self.on_leases_changed = on_leases_changed
        self.clock = clock
        self.max_tcp = max_tcp
        self.tcp_idle = tcp_idle
        self.stats = ServiceStats()
        self._buf = bytearray(_BUFSIZE)
        self._dhcp_sock: socket.socket | None = None
        self._udp: list[socket.socket] = []
        self._listeners: list[socket.socket] = []
        self._clients: dict[Hashable, _TcpClient] = {}
        self._ids = itertools.count()
        self._dhcp_changed = dhcp.changed if dhcp is not None else 0
        self._dns_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._upstreams: DnsUpstreams | None = None
        self._closed = False
        if dns is not None:
            cfg = dns.cfg
            lifetime = cfg.timeout * cfg.attempts * max(1, len(cfg.upstreams)) + 1
            self._upstreams = DnsUpstreams(loop, self._on_answer, lifetime=lifetime)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind every socket (on the loop's thread). Raises OSError naming the port; nothing stays open."""
        try:
            if self.dhcp is not None:
                self._dhcp_sock = self._open(socket.AF_INET, socket.SOCK_DGRAM, "0.0.0.0", DHCP_SERVER_PORT, "DHCP")
                self.loop.add_reader(self._dhcp_sock.fileno(), self._guard, self._on_dhcp)
            if self.dns is not None:
                for index, addr in enumerate(self.dns_listen):
                    family = socket.AF_INET if ip_address(addr).version == 4 else socket.AF_INET6
                    udp = self._open(family, socket.SOCK_DGRAM, addr, DNS_PORT, "DNS")
                    self._udp.append(udp)
                    self.loop.add_reader(udp.fileno(), self._guard, self._on_dns_udp, index)
                    tcp = self._open(family, socket.SOCK_STREAM, addr, DNS_PORT, "DNS")
                    self._listeners.append(tcp)
                    self.loop.add_reader(tcp.fileno(), self._guard, self._on_accept, tcp)
        except BaseException:
            self.close()
            raise

    def _open(self, family: int, kind: int, addr: str, port: int, what: str) -> socket.socket:
        proto = "udp" if kind == socket.SOCK_DGRAM else "tcp"
        try:
            return _bound_socket(family, kind, self.bridge, (addr, port))
        except OSError as exc:
            where = f"[{addr}]" if ":" in addr else addr
            raise OSError(exc.errno, f"{what} on {self.bridge}: cannot bind {proto} {where}:{port}: "
                                     f"{exc.strerror or exc}") from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        socks = [*self._udp, *self._listeners, *(c.sock for c in self._clients.values() if c.sock is not None)]
        if self._dhcp_sock is not None:
            socks.append(self._dhcp_sock)
        for sock in socks:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(sock.fileno())
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_writer(sock.fileno())
            sock.close()
        self._udp.clear()
        self._listeners.clear()
        self._clients.clear()
        self._dhcp_sock = None
        for timer in (self._dns_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._dns_timer = self._idle_timer = None
        if self._upstreams is not None:
            self._upstreams.close()

    def set_dns(self, dns: DnsForwarder) -> None:
        """Answer with ``dns`` from now on (new local names, say). Queries the old forwarder had
        waiting upstream are forgotten: their answers count as spoofed, and the guests ask again."""
        if self.dns is None:
            raise ValueError("this bridge serves no DNS")
        self.dns = dns
        if self._dns_timer is not None:
            self._dns_timer.cancel()
            self._dns_timer = None

    def counters(self) -> dict[str, object]:
        """Every counter: this layer's, the engines' and the upstream side's (JSON-able)."""
        out: dict[str, object] = {"sockets": asdict(self.stats)}
        if self.dhcp is not None:
            out["dhcp"] = asdict(self.dhcp.stats)
        if self.dns is not None:
            out["dns"] = asdict(self.dns.stats)
        if self._upstreams is not None:
            out["dns_upstreams"] = asdict(self._upstreams.stats)
        out["dns_tcp_open"] = len(self._clients)
        return out

    def _guard(self, handler: Callable[..., None], *args: Any) -> None:
        try:
            handler(*args)
        except Exception:
            self.stats.internal_errors += 1
            log.exception("%s: DHCP/DNS service failed", self.bridge)

    # ------------------------------------------------------------------ DHCP

    def _on_dhcp(self) -> None:
        sock = self._dhcp_sock
        dhcp = self.dhcp
        if sock is None or dhcp is None:
            return
        view = memoryview(self._buf)
        for _ in range(_DRAIN):
            try:
                n, _src = sock.recvfrom_into(self._buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.stats.send_errors += 1  # an ICMP error for an earlier reply
                continue
            self.stats.dhcp_received += 1
            data = view[:n]
            if n < _BOOTP_MIN or data[1] != 1 or data[2] != 6:
                self.stats.dhcp_short += 1
                continue
            reply = dhcp.handle(data, bytes(data[_CHADDR]), self.clock())
            if reply is not None:
                ciaddr = bytes(data[12:16])
                if ciaddr != b"\0\0\0\0" and reply.dst_ip == ciaddr:
                    dst = socket.inet_ntoa(ciaddr)
                else:
                    dst = _LIMITED_BROADCAST
                    self.stats.dhcp_broadcast += 1
                try:
                    sock.sendto(reply.payload, (dst, DHCP_CLIENT_PORT))
                    self.stats.dhcp_sent += 1
                except OSError:
                    self.stats.send_errors += 1
                if reply.lease is not None and self.on_lease is not None:
                    self.on_lease(reply.lease)
            if dhcp.changed != self._dhcp_changed:
                self._dhcp_changed = dhcp.changed
                if self.on_leases_changed is not None:
                    self.on_leases_changed()

    # ------------------------------------------------------------------ DNS

    def _on_dns_udp(self, index: int) -> None:
        dns = self.dns
        if dns is None or index >= len(self._udp):
            return
        sock = self._udp[index]
        view = memoryview(self._buf)
        for _ in range(_DRAIN):
            try:
                n, src = sock.recvfrom_into(self._buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            self.stats.dns_udp_received += 1
            self._run(dns.query(view[:n], ("u", index, src), self.loop.time(), guest=src[0]))

    def _on_accept(self, listener: socket.socket) -> None:
        for _ in range(_DRAIN):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.stats.dns_tcp_refused += 1
                return
            if len(self._clients) >= self.max_tcp:
                self.stats.dns_tcp_refused += 1
                sock.close()
                continue
            sock.setblocking(False)
            key = ("t", next(self._ids))
            client = _TcpClient(sock, addr, key, self.loop.time() + self.tcp_idle)
            self._clients[key] = client
            self.stats.dns_tcp_connections += 1
            self.loop.add_reader(client.fd, self._guard, self._on_tcp_readable, client)
            if self._idle_timer is None:
                self._idle_timer = self.loop.call_at(client.deadline, self._on_idle)

    def _on_tcp_readable(self, client: _TcpClient) -> None:
        sock, dns = client.sock, self.dns
        if sock is None or dns is None:
            return
        try:
            n = sock.recv_into(self._buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop_client(client)
            return
        if n == 0:
            self._drop_client(client)
            return
        client.deadline = self.loop.time() + self.tcp_idle
        now = self.loop.time()
        for message in client.framer.feed(memoryview(self._buf)[:n]):
            self._run(dns.query(message, client.key, now, tcp=True, guest=client.addr[0]))

    def _tcp_send(self, client: _TcpClient, payload: bytes) -> None:
        sock = client.sock
        if sock is None:
            return
        framed = TcpDnsFramer.frame(payload)
        if client.out:
            client.out += framed
        else:
            try:
                sent = sock.send(framed)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._drop_client(client)
                return
            if sent < len(framed):
                client.out += framed[sent:]
                self.loop.add_writer(client.fd, self._guard, self._on_tcp_writable, client)
        if len(client.out) > TCP_OUT_MAX:
            self.stats.dns_tcp_overflow += 1
            self._drop_client(client)

    def _on_tcp_writable(self, client: _TcpClient) -> None:
        sock = client.sock
        if sock is None:
            return
        try:
            sent = sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop_client(client)
            return
        del client.out[:sent]
        if not client.out:
            self.loop.remove_writer(client.fd)

    def _drop_client(self, client: _TcpClient) -> None:
        sock = client.sock
        if sock is None:
            return
        client.sock = None
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(client.fd)
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_writer(client.fd)
        sock.close()
        self._clients.pop(client.key, None)

    def _on_idle(self) -> None:
        self._idle_timer = None
        now = self.loop.time()
        nxt = None
        for client in list(self._clients.values()):
            if client.deadline <= now:
                self.stats.dns_tcp_idle_closed += 1
                self._drop_client(client)
            elif nxt is None or client.deadline < nxt:
                nxt = client.deadline
        if nxt is not None and not self._closed:
            self._idle_timer = self.loop.call_at(nxt, self._on_idle)

    def _on_answer(self, payload: bytes, upstream: tuple[str, int], tcp: bool) -> None:
        if self.dns is not None:
            self._run(self.dns.upstream_response(payload, upstream, self.loop.time(), tcp=tcp))

    def _on_dns_timer(self) -> None:
        self._dns_timer = None
        if self.dns is not None:
            self._run(self.dns.handle_timer(self.loop.time()))

    def _run(self, actions: Iterable[SendUpstream | Reply]) -> None:
        upstreams = self._upstreams
        for action in actions:
            if isinstance(action, SendUpstream):
                if upstreams is not None:
                    upstreams.send(action.upstream, action.payload, action.tcp)
                continue
            if action.upstream_id is not None and upstreams is not None:
                upstreams.forget(action.upstream_id)
            self._reply(action.client, action.payload)
        self._arm_dns_timer()

    def _reply(self, client: Hashable, payload: bytes) -> None:
        if not isinstance(client, tuple):
            return
        if client[0] == "u":
            _, index, addr = client
            if index < len(self._udp):
                try:
                    self._udp[index].sendto(payload, addr)
                except OSError:
                    self.stats.send_errors += 1
            return
        tcp = self._clients.get(client)
        if tcp is not None:
            self._tcp_send(tcp, payload)

    def _arm_dns_timer(self) -> None:
        if self.dns is None or self._closed:
            return
        when = self.dns.get_timer()
        timer = self._dns_timer
        if timer is not None and (when is None or timer.when() != when):
            timer.cancel()
            self._dns_timer = timer = None
        if when is not None and timer is None:
            self._dns_timer = self.loop.call_at(when, self._on_dns_timer)
