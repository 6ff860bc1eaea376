"""The DNS server of ``-netdev user`` (10.0.2.3), as a sans-IO forwarder.

QEMU NATs the guest's queries to the host's first resolver.  This engine forwards instead, so it
can do what NAT cannot: try the next upstream when one does not answer, answer SERVFAIL when none
does (a guest never waits out its own resolver timeouts), refuse answers that do not match a
question it asked (anti-spoofing: right upstream, right ID, right question), and answer some names
itself:

* ``static``: configured names -> IPv4 addresses;
* ``host_names``: the name of the host as the guest sees it.  One documented name,
  :data:`HOST_NAME` = ``host.vmlan.internal`` (the ``.internal`` TLD is reserved for private use;
  Docker and Podman use ``host.docker.internal`` and ``host.containers.internal`` alike), answers
  the host address 10.0.2.2, which reaches the host's loopback.

A static name answers A queries with its addresses (TTL :attr:`DnsConfig.ttl`) and every other type
with NODATA (NOERROR, no answers), so a guest asking AAAA first does not conclude the name is missing.
Everything else is forwarded with the query ID replaced by one of the engine's own (unpredictable,
never two pending alike) and the answer comes back with the guest's ID restored and nothing else
changed: NXDOMAIN, SERVFAIL, truncation and EDNS all pass through (unless the answer is too long for
the guest: see Transports below).

Retries follow resolv.conf semantics: each try waits ``timeout`` seconds; ``attempts`` rounds over
the upstream list, starting with the first; a late answer from any server already tried (over the
transport it was asked on) is accepted.  Upstreams are ``(host, port)`` as the caller will send to
them; the caller must report answers with the same tuple (:class:`vmlan.io.dns.DnsUpstreams` does).

Caps: at most ``max_pending`` queries are waiting upstream, and at most ``max_pending_per_guest`` of
them for one guest (the ``guest`` key given to :meth:`DnsForwarder.query`), so a guest flooding
unanswerable names gets SERVFAIL at once for its excess while the others' lookups go on.

Transports.  A guest's UDP query goes upstream by UDP.  With :attr:`DnsConfig.tcp_upstream` (set it
when the I/O layer carries ``SendUpstream(tcp=True)``, as ``DnsUpstreams`` does):

* an upstream UDP answer with TC set makes the forwarder ask the same upstream again over TCP
  (RFC 7766 section 5) and relay the TCP answer; the try's timer starts again, and later tries of
  that query stay on TCP;
* a guest's TCP query goes upstream over TCP at once: guests use TCP after a truncated answer, so a
  UDP leg would only be truncated again (libslirp, which NATs TCP/53 to the host's resolver, gives
  the same result).

An answer longer than a UDP guest can take (512 octets, or the size its EDNS OPT record gives) is
not sent as is: the guest gets the upstream's own truncated UDP answer when one was seen and fits,
else the header and question with TC set, and retries over TCP.  When every TCP try fails, a
truncated UDP answer already received is relayed instead of SERVFAIL: it is what the guest would
have got without TCP.  Without ``tcp_upstream`` everything goes by UDP and truncated answers pass
through, as in QEMU.  Each :class:`Reply` that ends a forwarded query names its upstream ID, so the
I/O layer can close what it opened for it (:meth:`vmlan.io.dns.DnsUpstreams.forget`).

Queries are refused (FORMERR) before any name is decoded unless they ask exactly one question,
and when they carry more than a few records (a query has at most an OPT and a TSIG): the decoder's
work stays bounded whatever a guest sends (see :mod:`vmlan.wire.dns`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from vmlan.wire import BytesLike
from vmlan.wire.dns import (
    CLASS_ANY,
    CLASS_IN,
    DNS_HLEN,
    FLAG_AA,
    FLAG_QR,
    FLAG_RA,
    FLAG_RD,
    FLAG_TC,
    OPCODE_QUERY,
    RCODE_FORMERR,
    RCODE_NOTIMP,
    RCODE_SERVFAIL,
    TYPE_A,
    TYPE_ANY,
    TYPE_OPT,
    DnsHeader,
    DnsMessage,
    DnsQuestion,
    DnsRecord,
    name_key,
    parse_questions,
)
from vmlan.wire.errors import SanityError, WireError

__all__ = [
    "HOST_NAME",
    "Action",
    "DnsConfig",
    "DnsError",
    "DnsForwarder",
    "DnsStats",
    "Reply",
    "SendUpstream",
    "TcpDnsFramer",
    "read_resolv_conf",
]

#: The one name the engine answers for the host (see the module docstring).
HOST_NAME = "host.vmlan.internal"

#: RFC 1035 section 4.2.1: UDP answers without EDNS are at most 512 octets.
_UDP_PLAIN = 512
#: Our EDNS UDP payload size (the 2020 DNS flag day value: no fragmentation on common paths).
_EDNS_SIZE = 1232
_TCP_MAX = 0xFFFF
#: A query may carry an OPT record, a TSIG or SIG(0), a cookie inside OPT: more records than this
#: is not a query a resolver sends, and is refused before it is decoded.
_MAX_QUERY_RECORDS = 4
# An OPT pseudo-record (RFC 6891 section 6.1.2) with our UDP size, for replies we build: root
# owner, TYPE 41, CLASS = UDP payload size, TTL = extended RCODE/version/flags (all 0), no RDATA.
_OPT_RR = b"\x00" + struct.pack("!HHIH", TYPE_OPT, _EDNS_SIZE, 0, 0)

Upstream: TypeAlias = tuple[str, int]


class DnsError(ValueError):
    """A configuration the forwarder refuses (one line, fit for the user)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsConfig:
    """Upstreams, names answered locally, and retry policy.

    ``static`` maps names (any case, trailing dot optional) to IPv4 addresses; ``host_names`` does
    the same for the host's own name(s) and is kept apart so the defaults survive a user's static
    table.  Both are merged at start-up, static entries winning.
    """

    upstreams: Sequence[Upstream] = ()
    static: Mapping[str, Sequence[str]] = field(default_factory=dict)
    host_names: Mapping[str, str] = field(default_factory=lambda: {HOST_NAME: "10.0.2.2"})
    timeout: float = 2.0
    attempts: int = 2
    max_pending: int = 1024
    max_pending_per_guest: int = 64
    ttl: int = 60
    #: The I/O layer can send ``SendUpstream(tcp=True)`` (see the module docstring).
    tcp_upstream: bool = False

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise DnsError(f"timeout {self.timeout} must be > 0")
        if self.attempts < 1:
            raise DnsError(f"attempts {self.attempts} must be >= 1")
        if not 1 <= self.max_pending <= 0x8000:
            raise DnsError(f"max_pending {self.max_pending} outside 1..32768 (half the ID space)")
        if not 1 <= self.max_pending_per_guest <= 0x8000:
            raise DnsError(f"max_pending_per_guest {self.max_pending_per_guest} outside 1..32768")
        if not 0 <= self.ttl <= 0x7FFFFFFF:
            raise DnsError(f"ttl {self.ttl} outside 0..2147483647")
        for host, port in self.upstreams:
            if not isinstance(host, str) or not host or not 0 < port <= 0xFFFF:
                raise DnsError(f"upstream {(host, port)!r} must be (host, port)")
        self.answers()  # validates names and addresses

    def answers(self) -> dict[str, tuple[bytes, ...]]:
        """Normalised name -> packed IPv4 addresses, for every name answered locally."""
        table: dict[str, tuple[bytes, ...]] = {}
        entries = [(n, [a]) for n, a in self.host_names.items()]
        entries += [(n, list(addrs)) for n, addrs in self.static.items() if not isinstance(addrs, str)]
        for name, addrs in self.static.items():
            if isinstance(addrs, str):
                raise DnsError(f"static {name!r}: give a list of addresses, not a string")
        for name, addrs in entries:
            try:
                key = name_key(name)
            except WireError as exc:
                raise DnsError(f"static name {name!r}: {exc.detail}") from None
            try:
                packed = tuple(ipaddress.IPv4Address(a).packed for a in addrs)
            except ValueError:
                raise DnsError(f"static {name!r}: malformed IPv4 address in {addrs!r}") from None
            if key == "." or not packed:
                raise DnsError(f"static {name!r}: needs a name and at least one address")
            table[key] = packed
        return table


@dataclass(frozen=True, slots=True)
class SendUpstream:
    """Send ``payload`` to ``upstream``: by UDP, or when ``tcp`` as one length-prefixed message over TCP.

    Its first two octets are the query's upstream ID; report the answer to
    :meth:`DnsForwarder.upstream_response` with the same ``upstream`` and ``tcp``.
    """

    upstream: Upstream
    payload: bytes
    tcp: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``payload`` to the guest endpoint ``client`` (as it was given to :meth:`DnsForwarder.query`).

    ``upstream_id`` is set when the reply ends a forwarded query (its answer, or the SERVFAIL or
    truncated answer it ended with): the forwarder will accept nothing more for that ID, so the
    I/O layer may close the sockets it opened for it.
    """

    client: Hashable
    payload: bytes
    upstream_id: int | None = None


Action: TypeAlias = SendUpstream | Reply


@dataclass(slots=True)
class DnsStats:
    """Counters; an upstream datagram that matches no pending query counts as ``spoofed``."""

    queries: int = 0
    static_answers: int = 0
    forwarded: int = 0  # queries sent upstream (first tries)
    retries: int = 0
    answered: int = 0  # upstream answers relayed to a guest (truncated ones too)
    servfail: int = 0  # SERVFAILs we made: timeouts, no upstreams, table full, guest over its cap
    guest_limited: int = 0  # of which: the guest had max_pending_per_guest queries waiting
    tcp_forwarded: int = 0  # tries sent over TCP: guests' TCP queries, TC retries, their timeouts' retries
    tcp_retries: int = 0  # truncated UDP answers asked again over TCP
    truncated: int = 0  # answers too long for a UDP guest, replaced by a truncated one
    truncated_ignored: int = 0  # TC answers by UDP for a query already asked over TCP
    formerr: int = 0
    notimp: int = 0
    duplicates: int = 0  # guest retransmissions of a query already pending
    dropped: int = 0  # queries too broken to answer at all
    spoofed: int = 0  # upstream messages matching nothing pending
    internal_errors: int = 0


class _Pending:
    __slots__ = (
        "client",
        "deadline",
        "dedup",
        "edns",
        "guest",
        "guest_head",
        "key",
        "limit",
        "question",
        "rest",
        "tcp",
        "tried",
        "tried_tcp",
        "tries",
        "truncated",
        "upstream_id",
    )

    def __init__(
        self,
        upstream_id: int,
        client: Hashable,
        guest: Hashable,
        guest_head: bytes,
        question: bytes,
        rest: bytes,
        key: tuple[str, int, int],
        dedup: tuple[Hashable, int, tuple[str, int, int]],
        deadline: float,
        limit: int,
        edns: bool,
        tcp: bool,
    ) -> None:
        self.upstream_id = upstream_id
        self.client = client
        self.guest = guest  # the per-guest accounting key
        self.guest_head = guest_head  # the guest's ID and flags words
        self.question = question  # the question section as the guest sent it
        self.rest = rest  # the query after its ID: what goes upstream behind our ID
        self.key = key
        self.dedup = dedup
        self.deadline = deadline
        self.limit = limit  # the longest answer the guest can take (65535 over TCP)
        self.edns = edns  # the guest sent an OPT record: replies we build carry one
        self.tcp = tcp  # the current try goes over TCP
        self.tries = 1
        self.tried: set[Upstream] = set()  # asked over UDP
        self.tried_tcp: set[Upstream] = set()
        self.truncated: bytes | None = None  # an upstream's TC answer by UDP, behind our ID


class DnsForwarder:
    """Answers guests' queries locally or through upstream resolvers; see the module docstring."""

    __slots__ = ("_answers", "_by_dedup", "_pending", "_per_guest", "_rng", "_total_tries", "cfg", "stats")

    def __init__(self, cfg: DnsConfig, *, rng: Callable[[], int] | None = None) -> None:
        """``rng`` returns upstream query IDs (0..65535); the default draws them from ``secrets``."""
        self.cfg = cfg
        self.stats = DnsStats()
        self._answers = cfg.answers()
        self._rng = rng if rng is not None else (lambda: secrets.randbits(16))
        self._total_tries = cfg.attempts * len(cfg.upstreams)
        # Keyed by upstream ID; deadlines are set to now + timeout with a non-decreasing clock, so
        # moving an entry to the end on each (re)send keeps the dict in deadline order.
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._by_dedup: dict[tuple[Hashable, int, tuple[str, int, int]], int] = {}
        self._per_guest: dict[Hashable, int] = {}

    # ----------------------------------------------------------------- entry points

    def query(
        self, payload: BytesLike, client: Hashable, now: float, *, tcp: bool = False, guest: Hashable | None = None
    ) -> list[Action]:
        """A query from the guest endpoint ``client``; ``tcp`` if it came over TCP (no 512-octet limit).

        ``guest`` is the key the per-guest cap counts under (the guest's address, say); without
        one, ``client`` itself is the key.
        """
        self.stats.queries += 1
        try:
            return self._query(bytes(payload), client, now, tcp, client if guest is None else guest)
        except Exception:
            self.stats.internal_errors += 1
            return []

    def upstream_response(
        self, payload: BytesLike, upstream: Upstream, now: float, *, tcp: bool = False
    ) -> list[Action]:
        """A message from ``upstream`` (over TCP if ``tcp``); relayed to its guest if it answers a
        pending query, else dropped and counted."""
        try:
            return self._response(bytes(payload), upstream, now, tcp)
        except Exception:
            self.stats.internal_errors += 1
            return []

    def handle_timer(self, now: float) -> list[Action]:
        """Retry or give up on every query whose try has timed out."""
        actions: list[Action] = []
        while self._pending:
            p = next(iter(self._pending.values()))
            if p.deadline > now:
                break
            if p.tries >= self._total_tries:
                self._forget(p)
                if p.truncated is not None:  # every TCP try failed: what UDP gave is better than nothing
                    actions.append(self._relay(p, p.truncated))
                    continue
                self.stats.servfail += 1
                actions.append(Reply(p.client, self._error(p.guest_head, p.question, RCODE_SERVFAIL), p.upstream_id))
                continue
            upstream = self.cfg.upstreams[p.tries % len(self.cfg.upstreams)]
            p.tries += 1
            self.stats.retries += 1
            actions.append(self._send(p, upstream, now))
        return actions

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` next has work, or None."""
        if not self._pending:
            return None
        return next(iter(self._pending.values())).deadline

    def set_static(self, static: Mapping[str, Sequence[str]]) -> None:
        """Replace the names answered locally while running (the host names stay); raises DnsError for a
        bad table, leaving the old one in place."""
        cfg = dataclasses.replace(self.cfg, static=dict(static))
        self._answers = cfg.answers()
        self.cfg = cfg

    def pending(self, guest: Hashable | None = None) -> int:
        """Queries waiting upstream: all of them, or those counted under ``guest``."""
        if guest is None:
            return len(self._pending)
        return self._per_guest.get(guest, 0)

    # ----------------------------------------------------------------- queries

    def _query(self, payload: bytes, client: Hashable, now: float, tcp: bool, guest: Hashable) -> list[Action]:
        if len(payload) < DNS_HLEN:
            self.stats.dropped += 1
            return []
        head = DnsHeader.parse(payload)
        if head.qr:  # a response sent to a server: never answer those (reflection loops)
            self.stats.dropped += 1
            return []
        guest_head = payload[:4]
        if head.opcode != OPCODE_QUERY:
            self.stats.notimp += 1
            return [Reply(client, self._error(guest_head, b"", RCODE_NOTIMP))]
        try:
            header, questions, end = parse_questions(payload, expect=1)
            edns = self._edns_size(payload, header)
        except WireError:
            self.stats.formerr += 1
            return [Reply(client, self._error(guest_head, b"", RCODE_FORMERR))]
        question = questions[0]
        qbytes = payload[DNS_HLEN:end]
        key = (question.name.lower(), question.qtype, question.qclass)
        local = self._answers.get(key[0])
        if local is not None and question.qclass in (CLASS_IN, CLASS_ANY):
            self.stats.static_answers += 1
            return [Reply(client, self._static_answer(header, question, local, edns, tcp))]
        if not self.cfg.upstreams:
            self.stats.servfail += 1
            return [Reply(client, self._error(guest_head, qbytes, RCODE_SERVFAIL))]
        dedup = (client, header.id, key)
        if dedup in self._by_dedup:
            self.stats.duplicates += 1  # the guest retransmitted; our own retries are already running
            return []
        waiting = self._per_guest.get(guest, 0)
        if len(self._pending) >= self.cfg.max_pending or waiting >= self.cfg.max_pending_per_guest:
            self.stats.servfail += 1
            if waiting >= self.cfg.max_pending_per_guest:
                self.stats.guest_limited += 1
            return [Reply(client, self._error(guest_head, qbytes, RCODE_SERVFAIL))]
        limit = _TCP_MAX if tcp else _UDP_PLAIN if edns is None else max(_UDP_PLAIN, edns)
        upstream_id = self._new_id()
        p = _Pending(
            upstream_id,
            client,
            guest,
            guest_head,
            qbytes,
            payload[2:],
            key,
            dedup,
            now,
            limit,
            edns is not None,
            tcp and self.cfg.tcp_upstream,
        )
        self._pending[upstream_id] = p
        self._by_dedup[dedup] = upstream_id
        self._per_guest[guest] = waiting + 1
        self.stats.forwarded += 1
        return [self._send(p, self.cfg.upstreams[0], now)]

    # ----------------------------------------------------------------- helpers

    def _new_id(self) -> int:
        while True:
            candidate = self._rng() & 0xFFFF
            if candidate not in self._pending:
                return candidate

    def _send(self, p: _Pending, upstream: Upstream, now: float) -> SendUpstream:
        """(Re)send ``p`` to ``upstream`` over its current transport and restart its try's timer."""
        if p.tcp:
            p.tried_tcp.add(upstream)
            self.stats.tcp_forwarded += 1
        else:
            p.tried.add(upstream)
        p.deadline = now + self.cfg.timeout
        self._pending.move_to_end(p.upstream_id)
        return SendUpstream(upstream, p.upstream_id.to_bytes(2, "big") + p.rest, p.tcp)

    def _forget(self, p: _Pending) -> None:
        del self._pending[p.upstream_id]
        self._by_dedup.pop(p.dedup, None)
        left = self._per_guest[p.guest] - 1
        if left:
            self._per_guest[p.guest] = left
        else:
            del self._per_guest[p.guest]

    @staticmethod
    def _error(guest_head: bytes, question: bytes, rcode: int) -> bytes:
        """A header-only (plus question) error reply: the guest's ID, opcode and RD kept."""
        ident = int.from_bytes(guest_head[:2], "big")
        flags = int.from_bytes(guest_head[2:4], "big")
        flags = FLAG_QR | (flags & (0x7800 | FLAG_RD)) | FLAG_RA | rcode
        head = DnsHeader(id=ident, flags=flags, qdcount=1 if question else 0)
        return head.to_bytes() + question

    @staticmethod
    def _edns_size(payload: bytes, header: DnsHeader) -> int | None:
        """The requester's EDNS UDP size if the query carries an OPT record, else None."""
        records = header.ancount + header.nscount + header.arcount
        if not records:
            return None
        if records > _MAX_QUERY_RECORDS:
            raise SanityError("DNS", f"a query with {records} records (at most {_MAX_QUERY_RECORDS})")
        msg = DnsMessage.parse(payload)
        for rr in msg.additionals:
            if rr.rtype == TYPE_OPT:
                return rr.rclass
        return None

    def _static_answer(
        self, header: DnsHeader, question: DnsQuestion, addrs: tuple[bytes, ...], edns: int | None, tcp: bool
    ) -> bytes:
        flags = FLAG_QR | FLAG_AA | FLAG_RA | (header.flags & FLAG_RD)
        answers: tuple[DnsRecord, ...] = ()
        if question.qtype in (TYPE_A, TYPE_ANY):
            answers = tuple(DnsRecord.a(question.name, a, self.cfg.ttl) for a in addrs)
        extra = () if edns is None else (DnsRecord(name=".", rtype=TYPE_OPT, rclass=_EDNS_SIZE),)
        if tcp:
            limit = _TCP_MAX
        elif edns is None:
            limit = _UDP_PLAIN
        else:
            limit = max(_UDP_PLAIN, min(edns, _EDNS_SIZE))
        while True:
            msg = DnsMessage(id=header.id, flags=flags, questions=(question,), answers=answers, additionals=extra)
            wire = msg.build()
            if len(wire) <= limit or not answers:
                return wire
            answers = answers[: len(answers) // 2]  # RFC 2181 section 9: set TC, send what fits
            flags |= FLAG_TC

    # ----------------------------------------------------------------- responses

    def _response(self, payload: bytes, upstream: Upstream, now: float, tcp: bool) -> list[Action]:
        if len(payload) < DNS_HLEN:
            self.stats.spoofed += 1
            return []
        p = self._pending.get(int.from_bytes(payload[:2], "big"))
        if p is None or upstream not in (p.tried_tcp if tcp else p.tried) or not payload[2] & 0x80:
            self.stats.spoofed += 1
            return []
        try:
            _, questions, _ = parse_questions(payload, expect=1)
        except WireError:
            self.stats.spoofed += 1
            return []
        question = questions[0]
        if (question.qtype, question.qclass) != p.key[1:] or question.name.lower() != p.key[0]:
            self.stats.spoofed += 1
            return []
        if not tcp and payload[2] & (FLAG_TC >> 8) and self.cfg.tcp_upstream:
            if p.tcp:
                self.stats.truncated_ignored += 1  # already asking over TCP: wait for that answer
                return []
            p.tcp = True
            p.truncated = payload
            self.stats.tcp_retries += 1
            return [self._send(p, upstream, now)]
        self._forget(p)
        return [self._relay(p, payload)]

    def _relay(self, p: _Pending, payload: bytes) -> Reply:
        """The upstream answer ``payload`` (still behind our ID) for ``p``'s guest, cut to its limit."""
        self.stats.answered += 1
        if len(payload) <= p.limit:
            return Reply(p.client, p.guest_head[:2] + payload[2:], p.upstream_id)
        self.stats.truncated += 1
        if p.truncated is not None and len(p.truncated) <= p.limit:
            return Reply(p.client, p.guest_head[:2] + p.truncated[2:], p.upstream_id)
        # The upstream's flags and RCODE with TC set, the guest's question, our OPT if it sent one.
        head = DnsHeader(
            id=int.from_bytes(p.guest_head[:2], "big"),
            flags=int.from_bytes(payload[2:4], "big") | FLAG_TC,
            qdcount=1,
            arcount=int(p.edns),
        )
        return Reply(p.client, head.to_bytes() + p.question + (_OPT_RR if p.edns else b""), p.upstream_id)


class TcpDnsFramer:
    """DNS over TCP (RFC 1035 section 4.2.2): each message preceded by a 2-octet big-endian length.

    Feed it whatever the stream delivers; it returns the complete messages, in order, and keeps the
    rest.  Zero-length messages are returned as ``b""`` (the engine drops them).
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: BytesLike) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 2:
            size = (buf[pos] << 8) | buf[pos + 1]
            if len(buf) - pos - 2 < size:
                break
            out.append(bytes(buf[pos + 2 : pos + 2 + size]))
            pos += 2 + size
        if pos:
            del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        """Octets held back waiting for the rest of a message."""
        return len(self._buf)

    @staticmethod
    def frame(message: BytesLike) -> bytes:
        if len(message) > _TCP_MAX:
            raise SanityError("DNS", f"message of {len(message)} octets does not fit a TCP length prefix")
        return len(message).to_bytes(2, "big") + bytes(message)


def read_resolv_conf(text: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf, in order, duplicates and junk left out.

    Loopback resolvers stay as they are: the systemd-resolved stub (127.0.0.53) and a local dnsmasq
    are reachable from the host, which is where the forwarder's sockets live.  IPv6 addresses come
    in their compressed form (so duplicates spelt differently go), link-local ones with their
    ``%zone``; :class:`vmlan.io.dns.DnsUpstreams` sends to either family.
    """
    out: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        host, sep, zone = fields[1].partition("%")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        if sep and (ip.version == 4 or not zone):  # a zone only qualifies an IPv6 address
            continue
        addr = f"{ip}%{zone}" if sep else str(ip)
        if addr not in out:
            out.append(addr)
    return out
