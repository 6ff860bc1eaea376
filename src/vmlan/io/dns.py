"""The upstream side of the DNS forwarder (:mod:`vmlan.engines.dns`): a socket per query.

The engine decides what goes where (``SendUpstream(upstream, payload, tcp)``); this module moves
the bytes and reports what comes back through one callback, ``on_answer(payload, upstream, tcp)``,
with ``upstream`` the very tuple it was sent to, which the engine matches answers against.

* Every query gets its own socket, of the upstream's address family (IPv4, or IPv6 with an
  optional ``%zone`` for link-local resolvers), so IPv6-only hosts resolve too.
* UDP (RFC 5452 section 9.2): a fresh socket per query, connect()ed to the upstream.  Connecting
  binds it to an ephemeral port Linux picks at random, and the kernel then drops datagrams from
  anyone but the upstream: a spoofer must guess the port as well as the 16-bit ID.  A retry of the
  same query (same upstream, same ID) goes out on the same socket, so a late answer to the first
  try still arrives.
* TCP (RFC 7766): a non-blocking connection per query, the query framed with its 2-octet length
  (:class:`~vmlan.engines.dns.TcpDnsFramer`), closed after the first message back.  A retry to the
  same upstream opens a new connection (the old one is stuck somewhere).

A socket closes when its answer arrives (the first message whose ID and QR bit say it is one;
the engine checks the rest), when :meth:`DnsUpstreams.forget` says the engine is done with the ID
(every :class:`~vmlan.engines.dns.Reply` that ends a forwarded query names it), or ``lifetime``
seconds after its last send, whichever comes first; connect and I/O timeouts are that lifetime.
At most ``max_udp`` and ``max_tcp`` are open: beyond that the oldest is closed to make room (the
engine has most likely given up on it).  Everything runs from ``add_reader``/``add_writer``
callbacks and one loop timer (no Task per query); errors are counted, never raised into the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from vmlan.engines.dns import TcpDnsFramer

__all__ = ["DnsUpstreamStats", "DnsUpstreams", "resolve_upstream"]

log = logging.getLogger(__name__)

Upstream: TypeAlias = tuple[str, int]
OnAnswer: TypeAlias = Callable[[bytes, Upstream, bool], None]

_BUFSIZE = 0x10000
_UDP_DRAIN = 8  # datagrams read per wakeup: only the upstream can send to a connected socket
_MAX_ADDRS = 256  # resolved upstream addresses kept (the configured few, in practice)


def resolve_upstream(upstream: Upstream) -> tuple[int, Any]:
    """``(family, sockaddr)`` of an upstream given as a numeric address literal and a port.

    IPv6 literals may carry a zone (``fe80::1%eth0``), which becomes the sockaddr's scope ID.
    Raises ``OSError`` (``socket.gaierror``) for anything that is not a literal: no name lookups
    here, they would block the loop.
    """
    host, port = upstream
    infos = socket.getaddrinfo(
        host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
    )
    family, _, _, _, sockaddr = infos[0]
    return int(family), sockaddr


@dataclass(slots=True)
class DnsUpstreamStats:
    """Counters of :class:`DnsUpstreams`."""

    udp_queries: int = 0  # UDP sockets opened
    udp_resent: int = 0  # retries sent on a query's existing socket
    tcp_queries: int = 0  # TCP connections started
    answers: int = 0  # messages handed to on_answer
    bad_upstream: int = 0  # upstreams that are not numeric address literals
    socket_errors: int = 0  # socket(), connect() or send() failed, or no ID: the query is not sent
    recv_errors: int = 0  # ICMP errors (port unreachable ...) and resets: the socket is closed
    tcp_eof: int = 0  # an upstream closed before answering
    expired: int = 0  # closed by the lifetime: no answer in time
    evicted: int = 0  # closed to stay within max_udp/max_tcp
    internal_errors: int = 0  # on_answer (the engine) or a socket callback raised


class _Query:
    __slots__ = ("connecting", "deadline", "fd", "framer", "ident", "key", "out", "sock", "tcp", "upstream")

    def __init__(self, key: tuple[Upstream, int, bool], sock: socket.socket, deadline: float) -> None:
        self.key = key
        self.upstream, self.ident, self.tcp = key
        self.sock: socket.socket | None = sock
        self.fd = sock.fileno()
        self.deadline = deadline
        self.out = b""  # TCP: the framed query, until written
        self.connecting = False
        self.framer: TcpDnsFramer | None = None


class DnsUpstreams:
    """Sends the forwarder's upstream queries and reports their answers; see the module docstring."""

    __slots__ = (
        "_addrs",
        "_buf",
        "_by_id",
        "_closed",
        "_loop",
        "_on_answer",
        "_tcp",
        "_timer",
        "_udp",
        "lifetime",
        "max_tcp",
        "max_udp",
        "stats",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_answer: OnAnswer,
        *,
        lifetime: float = 10.0,
        max_udp: int = 1024,
        max_tcp: int = 128,
    ) -> None:
        """``lifetime``: how long a query's socket waits for its answer; the engine stops accepting
        answers after ``timeout * attempts * len(upstreams)``, so more than that is wasted."""
        if not lifetime > 0 or max_udp < 1 or max_tcp < 1:
            raise ValueError(f"lifetime {lifetime}, max_udp {max_udp}, max_tcp {max_tcp}: must be positive")
        self._loop = loop
        self._on_answer = on_answer
        self.lifetime = lifetime
        self.max_udp = max_udp
        self.max_tcp = max_tcp
        self.stats = DnsUpstreamStats()
        self._buf = bytearray(_BUFSIZE)
        # Deadlines are loop.time() + lifetime, so each dict is in deadline order when an entry
        # moves to the end whenever its deadline is pushed back.
        self._udp: OrderedDict[tuple[Upstream, int, bool], _Query] = OrderedDict()
        self._tcp: OrderedDict[tuple[Upstream, int, bool], _Query] = OrderedDict()
        self._by_id: dict[int, list[_Query]] = {}
        self._addrs: dict[Upstream, tuple[int, Any]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    # ------------------------------------------------------------------ API

    def send(self, upstream: Upstream, payload: bytes, tcp: bool) -> None:
        """Send the query ``payload`` (its first two octets its ID) to ``upstream``, by TCP if ``tcp``."""
        if self._closed:
            return
        if len(payload) < 2 or (tcp and len(payload) > 0xFFFF):
            self.stats.socket_errors += 1
            return
        key = (upstream, int.from_bytes(payload[:2], "big"), tcp)
        table = self._tcp if tcp else self._udp
        old = table.get(key)
        if old is not None:
            if not tcp and old.sock is not None:
                try:
                    old.sock.send(payload)
                except OSError:
                    self.stats.socket_errors += 1
                    self._close(old)
                    return
                self.stats.udp_resent += 1
                old.deadline = self._loop.time() + self.lifetime
                table.move_to_end(key)
                return
            self._close(old)
        addr = self._resolve(upstream)
        if addr is None:
            return
        family, sockaddr = addr
        while len(table) >= (self.max_tcp if tcp else self.max_udp):
            self.stats.evicted += 1
            self._close(next(iter(table.values())))
        kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
        try:
            sock = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError:
            self.stats.socket_errors += 1
            return
        query = _Query(key, sock, self._loop.time() + self.lifetime)
        try:
            if tcp:
                err = sock.connect_ex(sockaddr)
                if err not in (0, errno.EINPROGRESS):
                    raise OSError(err, errno.errorcode.get(err, str(err)))
                query.out = TcpDnsFramer.frame(payload)
                query.connecting = True
                query.framer = TcpDnsFramer()
            else:
                sock.connect(sockaddr)  # binds a random ephemeral port; only the upstream can answer
                sock.send(payload)
        except OSError:
            self.stats.socket_errors += 1
            sock.close()
            return
        table[key] = query
        self._by_id.setdefault(key[1], []).append(query)
        if tcp:
            self.stats.tcp_queries += 1
            self._loop.add_writer(query.fd, self._guarded, self._on_tcp_writable, query)
        else:
            self.stats.udp_queries += 1
            self._loop.add_reader(query.fd, self._guarded, self._on_udp_readable, query)
        if self._timer is None:
            self._timer = self._loop.call_at(query.deadline, self._on_timer)

    def forget(self, query_id: int) -> None:
        """The engine is done with ``query_id``: close every socket opened for it."""
        for query in self._by_id.get(query_id, [])[:]:
            self._close(query)

    def close(self) -> None:
        """Close every socket; later sends are ignored."""
        self._closed = True
        for table in (self._udp, self._tcp):
            for query in list(table.values()):
                self._close(query)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def open_sockets(self) -> tuple[int, int]:
        """(UDP, TCP) sockets open now."""
        return len(self._udp), len(self._tcp)

    # ------------------------------------------------------------------ internals

    def _resolve(self, upstream: Upstream) -> tuple[int, Any] | None:
        addr = self._addrs.get(upstream)
        if addr is not None:
            return addr
        try:
            addr = resolve_upstream(upstream)
        except (OSError, TypeError, ValueError, UnicodeError):
            self.stats.bad_upstream += 1
            log.warning("DNS upstream %r is not a numeric address: query dropped", upstream)
            return None
        if len(self._addrs) >= _MAX_ADDRS:
            self._addrs.clear()
        self._addrs[upstream] = addr
        return addr

    def _close(self, query: _Query) -> None:
        sock = query.sock
        if sock is None:
            return
        query.sock = None
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(query.fd)
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_writer(query.fd)
        sock.close()
        table = self._tcp if query.tcp else self._udp
        if table.get(query.key) is query:
            del table[query.key]
        same = self._by_id.get(query.ident)
        if same is not None:
            with contextlib.suppress(ValueError):
                same.remove(query)
            if not same:
                del self._by_id[query.ident]

    def _guarded(self, handler: Callable[[_Query], None], query: _Query) -> None:
        """Run a socket callback; a bug in it costs that query (counted), never the loop."""
        try:
            handler(query)
        except Exception:
            self.stats.internal_errors += 1
            log.exception("DNS upstream socket for %r failed", query.upstream)
            self._close(query)

    def _deliver(self, payload: bytes, query: _Query) -> None:
        self.stats.answers += 1
        try:
            self._on_answer(payload, query.upstream, query.tcp)
        except Exception:
            self.stats.internal_errors += 1
            log.exception("DNS answer from %r could not be handled", query.upstream)

    def _is_answer(self, payload: bytes | memoryview, query: _Query) -> bool:
        return len(payload) >= 3 and (payload[0] << 8 | payload[1]) == query.ident and bool(payload[2] & 0x80)

    def _on_udp_readable(self, query: _Query) -> None:
        view = memoryview(self._buf)
        for _ in range(_UDP_DRAIN):
            sock = query.sock
            if sock is None:
                return
            try:
                n = sock.recv_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP port or host unreachable: nothing will answer on this socket
                self.stats.recv_errors += 1
                self._close(query)
                return
            payload = bytes(view[:n])
            if self._is_answer(payload, query):
                self._close(query)  # before delivering: the engine may send again at once
            self._deliver(payload, query)

    def _on_tcp_writable(self, query: _Query) -> None:
        sock = query.sock
        if sock is None:
            return
        if query.connecting:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.stats.socket_errors += 1
                self._close(query)
                return
            query.connecting = False
        try:
            sent = sock.send(query.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.stats.socket_errors += 1
            self._close(query)
            return
        query.out = query.out[sent:]
        if not query.out:
            self._loop.remove_writer(query.fd)
            self._loop.add_reader(query.fd, self._guarded, self._on_tcp_readable, query)

    def _on_tcp_readable(self, query: _Query) -> None:
        sock = query.sock
        if sock is None or query.framer is None:
            return
        try:
            n = sock.recv_into(self._buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.stats.recv_errors += 1
            self._close(query)
            return
        if n == 0:
            self.stats.tcp_eof += 1
            self._close(query)
            return
        messages = query.framer.feed(memoryview(self._buf)[:n])
        if messages:  # one query per connection: the first message back is its answer, or nothing is
            self._close(query)
            self._deliver(messages[0], query)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._loop.time()
        nxt = float("inf")
        for table in (self._udp, self._tcp):
            while table:
                query = next(iter(table.values()))
                if query.deadline > now:
                    nxt = min(nxt, query.deadline)
                    break
                self.stats.expired += 1
                self._close(query)
        if nxt != float("inf") and not self._closed:
            self._timer = self._loop.call_at(nxt, self._on_timer)
