"""Bounded IPv4 and IPv6 reassembly (RFC 791 section 3.2, RFC 815; RFC 8200 section 4.5), as a sans-IO engine.

libslirp reassembles what its guest fragments over IPv4 (``ping -s 4000``, an 8 KB UDP datagram at MTU
1500), and so does this, over IPv6 too (libslirp drops IPv6 fragments): :meth:`Reassembler.feed` takes
each IPv4 fragment with the time, :meth:`Reassembler.feed6` each IPv6 datagram carrying a Fragment
header, and both return the whole datagram once its last hole is filled. One engine holds both
families' datagrams under one set of caps (a guest's share is the same whichever family it fragments
in). It never reads a clock: :meth:`~Reassembler.get_timer` says when
:meth:`~Reassembler.handle_timer` has datagrams to expire.

Every guest is hostile, so every rule below is about what a sender can make us hold or believe.

Keys and accounts
    An IPv4 datagram is keyed by ``(owner, src, dst, proto, ident)``: RFC 791's four fields plus the
    ``owner``, an opaque hashable naming the guest's account (the stack passes the guest of the port the
    frame came in on). An IPv6 datagram is keyed by ``(owner, src, dst, ident)`` with RFC 8200's 32-bit
    identification (the key's length and the addresses' keep the families apart). Fragments of two
    guests never meet, whatever addresses they forge.

Memory
    What a datagram holds is charged at its payload bytes plus :data:`FRAGMENT_OVERHEAD` per fragment
    plus :data:`DATAGRAM_OVERHEAD` (the Python objects behind them: without this, 8-byte fragments would
    cost ten times what they are charged). Caps per owner (datagrams, bytes) and global (datagrams,
    bytes) hold after every call. A new datagram past an owner's count cap, or a fragment past its byte
    cap, evicts that owner's oldest incomplete datagram (which may be the one just fed), counted in
    ``evicted``. Past a global cap the owner holding the most (bytes, or datagrams for the count cap)
    pays with its oldest datagram, the feeding owner on a tie. So an owner's datagrams are evicted
    only for its own fragments or when it holds more than anyone else: a guest cannot push out the
    datagrams of a guest with a smaller share, which is what a flooding guest always holds more than.

Time
    A datagram lives ``timeout`` seconds (Linux's ``ipfrag_time``, 30 s) from its first fragment; later
    fragments do not extend it (Linux's rule too: RFC 791's TTL-driven timer would let a trickle keep
    a datagram alive forever). All datagrams share one lifetime, so creation order is expiry order and
    one ordered dict is the whole timer structure: it holds exactly the live datagrams. An expired
    datagram whose first fragment had arrived is reported by :meth:`~Reassembler.handle_timer` so
    the caller may send ICMP Time Exceeded, code 1 (RFC 792; RFC 1122 3.3.2 says SHOULD), or ICMPv6
    Time Exceeded, code 1 (RFC 8200 4.5, RFC 4443 3.3).

Fragment rules (Linux's ``ip_frag_queue``/``inet_frag_queue_insert`` unless said otherwise)
    * Overlaps drop the whole datagram (``overlaps``). Linux does so for IPv4 since 2018 (the
      FragmentSmack fixes), carrying over RFC 5722's rule for IPv6: when fragments overlap, the bytes a
      receiver reassembles depend on its first-wins or last-wins policy, so a sender can show a filter
      one datagram and the destination another (Ptacek and Newsham's evasions, RFC 1858's overlapping
      attack that rewrites TCP flags, teardrop's negative lengths). No honest sender overlaps:
      retransmitted duplicates are identical, and so are the duplicates a network makes.
    * An identical duplicate (same offset, same length, same bytes, same MF) is ignored (counted in
      ``duplicates``). Linux ignores any fragment lying inside what it holds, without comparing bytes;
      we drop the datagram when the bytes differ, which is an overlap with other content.
    * A fragment with MF set must carry a non-zero multiple of 8 bytes (RFC 791: offsets count 8-byte
      units, so only the last fragment may end elsewhere); Linux trims the excess instead, we refuse the
      fragment (``malformed``). A zero-length fragment is refused too (Linux drops its datagram).
    * The last fragment (MF clear) fixes the datagram's length; one that ends before data already held,
      a second last fragment with another end, or a fragment past the known end drops the datagram
      (``malformed``), as in Linux.
    * A datagram whose header plus payload would pass 65535 bytes is dropped (``oversize``): the ping of
      death. Fragments are checked as they come, with the first fragment's header length once it has
      arrived and the 20-byte minimum before.
    * Tiny fragments (RFC 1858 section 3.1): the first fragment of a fragmented datagram has MF set, so
      by the rule above it carries at least 8 bytes of transport header (ports, and ICMP's type, code,
      checksum and id). Nothing here filters on transport headers before reassembly and the caller sees
      only whole datagrams, so the attack (a first fragment too short for a filter to see the TCP
      flags) has nothing to evade; its overlapping variant is refused above.
    * ECN (RFC 3168 section 5.3), as Linux's ``ip_frag_ecn_table``: if any fragment carries CE, the
      datagram does; a mix of Not-ECT with ECT or CE drops it (``malformed``).

IPv6 (RFC 8200 section 4.5, Linux's ``ipv6_frag_rcv``), on top of the rules above
    * The unfragmentable part is the header chain before the Fragment header (hop-by-hop, destination
      and routing headers); the first fragment's is kept, and charged, for the reassembled datagram.
    * An atomic fragment (offset 0, M clear, RFC 6946) is a whole datagram: it is returned at once with
      its Fragment header removed and never meets the table (``atomic``), so a forged atomic fragment
      cannot disturb a datagram being reassembled under the same identification.
    * The first fragment must hold the whole header chain through the upper-layer header (RFC 7112,
      RFC 8200: "should be discarded"): extension headers whole, then 20 bytes of TCP or 8 of UDP or
      ICMPv6 (Linux's ``ipv6_frag_thdr_truncated``); else it is refused (``incomplete_chain``), as is a
      chain that holds a second Fragment header. This is what makes a filter on the first fragment
      meaningful; here it keeps the reassembled datagram parseable by whoever reads it next.
    * The 8-byte rule is RFC 8200's (a fragment with M set whose length is not a multiple of 8 is
      discarded; the optional ICMPv6 Parameter Problem is not sent): ``malformed``. The 65535 limit is
      on the reassembled Payload Length, the unfragmentable extension headers included (``oversize``).

The reassembled IPv4 datagram is the first fragment's header (its options included, as Linux keeps them)
with the total length set, flags and fragment offset cleared, the checksum recomputed, then the payload.
The reassembled IPv6 datagram is the first fragment's unfragmentable part with the Payload Length set
and the Next Header of its last header taken from the Fragment header, then the payload (RFC 8200 4.5).
"""

from __future__ import annotations

import dataclasses
import struct
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Hashable
from typing import NamedTuple

from vmlan.wire import BytesLike
from vmlan.wire.ipv4 import IPV4_HLEN, IPV4_MAX_LEN, Ipv4Header

__all__ = [
    "DATAGRAM_OVERHEAD",
    "FRAGMENT_OVERHEAD",
    "REASSEMBLY_TIMEOUT",
    "Ipv4Reassembler",
    "Reassembler",
    "ReassemblyCounters",
    "TimedOut",
]

#: Linux's ``net.ipv4.ipfrag_time``: seconds from a datagram's first fragment to its expiry.
REASSEMBLY_TIMEOUT = 30.0
#: Bytes charged per held fragment on top of its payload (its list slots, bytes object and bookkeeping).
FRAGMENT_OVERHEAD = 64
#: Bytes charged per incomplete datagram (its object, key and dict entries).
DATAGRAM_OVERHEAD = 256

_MIN_BYTES = 1024  # least byte cap: room for a datagram and a fragment (evictions always find one)
_KEEP = 0  # outcomes of _insert
_DROP = 1
_IPV6_HLEN = 40
_IPV6_MAX_PAYLOAD = 65535
_FRAG6 = struct.Struct("!BBHI")  # next header, reserved, offset << 3 | res | M, identification
_U16 = struct.Struct("!H")
#: Extension headers that may precede a Fragment header (RFC 8200 4.1: hop-by-hop, destination, routing).
_UNFRAGMENTABLE = frozenset((0, 43, 60))
#: Extension headers that may follow it in the first fragment, each ``(length + 1) * 8`` bytes long.
_EXTENSIONS = frozenset((0, 43, 60, 135, 139, 140, 253, 254))
_AH = 51  # its length counts 4-byte units, minus 2 (RFC 4302 2.2)
_NO_NEXT = 59
#: Bytes of an upper-layer header the first fragment must hold (Linux's ipv6_frag_thdr_truncated).
_UPPER_LEN = {6: 20, 17: 8, 58: 8}
_MAX_CHAIN = 8  # extension headers walked before giving up (each way)

Key = tuple[Hashable, ...]
"""``(owner, src, dst, proto, ident)`` for IPv4, ``(owner, src, dst, ident)`` for IPv6."""


class ReassemblyCounters:
    """What the reassembler did (plain ints; :meth:`as_dict` for reporting)."""

    __slots__ = (
        "atomic",
        "duplicates",
        "evicted",
        "fragments",
        "incomplete_chain",
        "malformed",
        "overlaps",
        "oversize",
        "reassembled",
        "timeouts",
    )

    def __init__(self) -> None:
        self.fragments = 0  # fragments fed (datagrams that were not fragments are not counted)
        self.reassembled = 0  # whole datagrams returned
        self.duplicates = 0  # identical fragments ignored
        self.timeouts = 0  # datagrams expired incomplete
        self.overlaps = 0  # datagrams dropped because two of their fragments overlapped
        self.evicted = 0  # datagrams dropped to keep a cap
        self.oversize = 0  # datagrams (or their first fragment) dropped for passing 65535 bytes
        self.malformed = 0  # fragments refused, or datagrams dropped, for inconsistent lengths or ECN
        self.atomic = 0  # IPv6 atomic fragments (offset 0, M clear) passed on whole
        self.incomplete_chain = 0  # IPv6 first fragments refused without the whole header chain (RFC 7112)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class TimedOut(NamedTuple):
    """An expired datagram whose first fragment had arrived: what Time Exceeded (code 1) quotes."""

    owner: Hashable
    #: IPv4: the first fragment's header (as received) and the first 8 bytes of its payload (RFC 792).
    #: IPv6: the first fragment's headers through its Fragment header (as received) and its payload;
    #: the caller cuts it to what an ICMPv6 error may carry (RFC 4443 2.4 c). ``quote[0] >> 4`` tells.
    quote: bytes


class _Datagram:
    __slots__ = ("charge", "datas", "deadline", "ecn", "ends", "first", "key", "limit", "max_end", "received", "starts",
                 "total")

    def __init__(self, key: Key, deadline: float, limit: int) -> None:
        self.key = key
        self.limit = limit  # the largest payload end allowed (known exactly once the first fragment is in)
        self.deadline = deadline
        self.starts: list[int] = []  # fragment offsets in bytes, sorted; no two fragments overlap
        self.ends: list[int] = []
        self.datas: list[bytes] = []
        self.total = -1  # payload length, once the last fragment has arrived
        self.max_end = 0
        self.received = 0  # payload bytes held; with no overlaps, == total means no hole is left
        # What the fragment at offset 0 brought: its IPv4 header, or its IPv6 headers through the Fragment
        # header (as received).
        self.first: Ipv4Header | bytes | None = None
        self.ecn = 0  # OR of 1 << (ECN field) over the fragments held
        self.charge = DATAGRAM_OVERHEAD


class _Owner:
    __slots__ = ("charge", "datagrams")

    def __init__(self) -> None:
        self.datagrams: OrderedDict[Key, _Datagram] = OrderedDict()
        self.charge = 0


class Reassembler:
    """Reassembles IPv4 and IPv6 fragments per owner within fixed bounds; see the module docstring.

    Not thread-safe. Every call is O(fragments of the datagram touched) except evictions under global
    pressure, which look over the owners holding datagrams once per eviction.
    """

    __slots__ = (
        "_charge",
        "_clock",
        "_datagrams",
        "_owners",
        "counters",
        "max_bytes",
        "max_bytes_per_owner",
        "max_datagrams",
        "max_datagrams_per_owner",
        "timeout",
    )

    def __init__(
        self,
        *,
        timeout: float = REASSEMBLY_TIMEOUT,
        max_datagrams_per_owner: int = 16,
        max_bytes_per_owner: int = 256 * 1024,
        max_datagrams: int = 1024,
        max_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        """Caps as described in the module docstring; ``max_bytes`` defaults to Linux's ipfrag_high_thresh."""
        for name, value, least in (
            ("max_datagrams_per_owner", max_datagrams_per_owner, 1),
            ("max_bytes_per_owner", max_bytes_per_owner, _MIN_BYTES),
            ("max_datagrams", max_datagrams, 1),
            ("max_bytes", max_bytes, _MIN_BYTES),
        ):
            if value < least:
                raise ValueError(f"{name} must be at least {least}, got {value}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = timeout
        self.max_datagrams_per_owner = max_datagrams_per_owner
        self.max_bytes_per_owner = max_bytes_per_owner
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.counters = ReassemblyCounters()
        # Every incomplete datagram, oldest first: creation order is deadline order (one lifetime, and
        # deadlines come from a clock that is never allowed to go back).
        self._datagrams: OrderedDict[Key, _Datagram] = OrderedDict()
        self._owners: dict[Hashable, _Owner] = {}
        self._charge = 0
        self._clock = float("-inf")

    # ----------------------------------------------------------------- entry points

    def feed(self, owner: Hashable, header: Ipv4Header, payload: BytesLike, now: float) -> bytes | None:
        """One IPv4 datagram from ``owner``: its header (as :meth:`Ipv4Header.parse` returned it) and payload.

        Returns the whole IPv4 datagram (header and payload) when ``header`` completes one, or is not a
        fragment at all (then it is returned rebuilt, flags kept); None while holes remain or when the
        fragment was dropped (see the counters). ``header.total_length`` must agree with
        ``len(payload)`` (as it does after parse). ``payload`` is copied: it may be a view into a buffer
        the caller reuses. Never raises for any header and payload.
        """
        c = self.counters
        if not header.is_fragment:
            if header.total_length != header.header_len + len(payload):
                c.malformed += 1
                return None
            return header.build_header(len(payload)) + bytes(payload)
        c.fragments += 1
        hlen = header.header_len
        if header.total_length != hlen + len(payload):
            c.malformed += 1
            return None
        key = (owner, header.src, header.dst, header.proto, header.ident)
        dg = self._fragment(owner, key, header.frag_offset << 3, payload, header.mf, header.tos & 3, header,
                            IPV4_MAX_LEN - hlen, IPV4_MAX_LEN - IPV4_HLEN, 0, now)
        if dg is None:
            return None
        first = dg.first
        assert isinstance(first, Ipv4Header)  # no hole left, so the fragment at offset 0 is held
        tos = first.tos | 3 if dg.ecn & 8 else first.tos
        head = dataclasses.replace(first, flags=0, frag_offset=0, tos=tos).build_header(dg.total)
        return head + b"".join(dg.datas)

    def feed6(self, owner: Hashable, packet: BytesLike, now: float) -> bytes | None:
        """One IPv6 datagram from ``owner`` (its fixed header on; ``len(packet)`` is what the Payload
        Length says, as the caller checked): the Fragment header is found behind the hop-by-hop,
        destination and routing headers.

        Returns the whole IPv6 datagram, without Fragment header, when ``packet`` completes one or is an
        atomic fragment; ``packet`` itself (as bytes) when it holds no Fragment header; None while holes
        remain or when the fragment was refused (see the counters). ``packet`` is copied. Never raises.
        """
        c = self.counters
        n = len(packet)
        if n < _IPV6_HLEN or packet[0] >> 4 != 6 or _U16.unpack_from(packet, 4)[0] != n - _IPV6_HLEN:
            c.malformed += 1
            return None
        nh_at, nh, off = 6, packet[6], _IPV6_HLEN
        for _ in range(_MAX_CHAIN):
            if nh not in _UNFRAGMENTABLE or off + 8 > n:
                break
            nh_at, nh, off = off, packet[off], off + (packet[off + 1] + 1) * 8
        if nh != 44:
            return bytes(packet)  # not a fragment (or one the caller will refuse as it refuses the chain)
        if off + 8 > n:
            c.fragments += 1
            c.malformed += 1
            return None
        upper, _res, offset_m, ident = _FRAG6.unpack_from(packet, off)
        offset = offset_m & 0xFFF8
        more = bool(offset_m & 1)
        data = memoryview(packet)[off + 8 :]
        atomic = offset == 0 and not more
        if not atomic:
            c.fragments += 1
        if offset == 0 and not _chain_complete(upper, data):
            c.incomplete_chain += 1
            return None
        if atomic:  # RFC 6946: whole already, and kept out of the table
            c.atomic += 1
            whole = bytearray(packet[:off])
            whole += data
            whole[nh_at] = upper
            _U16.pack_into(whole, 4, len(whole) - _IPV6_HLEN)
            return bytes(whole)
        ext = off - _IPV6_HLEN  # unfragmentable extension headers: count toward the 65535 of Payload Length
        key = (owner, bytes(packet[8:24]), bytes(packet[24:40]), ident)
        first = bytes(packet[: off + 8]) if offset == 0 else None
        dg = self._fragment(owner, key, offset, data, more, (packet[1] >> 4) & 3, first,
                            _IPV6_MAX_PAYLOAD - ext, _IPV6_MAX_PAYLOAD, off + 8 if first else 0, now)
        if dg is None:
            return None
        prefix = dg.first
        assert isinstance(prefix, bytes)
        head = bytearray(prefix[:-8])
        at, pos = 6, _IPV6_HLEN  # the Next Header field that named the Fragment header: the chain's last
        while pos < len(head):
            at, pos = pos, pos + (head[pos + 1] + 1) * 8
        head[at] = prefix[-8]
        if dg.ecn & 8:
            head[1] |= 0x30  # CE
        _U16.pack_into(head, 4, len(head) - _IPV6_HLEN + dg.total)
        return bytes(head) + b"".join(dg.datas)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` next has a datagram to expire, or None when nothing is held."""
        if not self._datagrams:
            return None
        return next(iter(self._datagrams.values())).deadline

    def handle_timer(self, now: float) -> list[TimedOut]:
        """Drop every datagram whose time is up; return those whose first fragment had arrived."""
        expired: list[TimedOut] = []
        datagrams = self._datagrams
        while datagrams:
            dg = next(iter(datagrams.values()))
            if dg.deadline > now:
                break
            self.counters.timeouts += 1
            first = dg.first
            if isinstance(first, Ipv4Header):
                expired.append(TimedOut(dg.key[0], first.to_bytes() + dg.datas[0][:8]))
            elif first is not None:
                expired.append(TimedOut(dg.key[0], first + dg.datas[0]))
            self._drop(dg)
        return expired

    def forget_owner(self, owner: Hashable) -> None:
        """Drop everything ``owner`` holds (its guest left); not counted anywhere."""
        account = self._owners.get(owner)
        if account is not None:
            for dg in list(account.datagrams.values()):
                self._drop(dg)

    @property
    def datagrams_held(self) -> int:
        return len(self._datagrams)

    @property
    def bytes_held(self) -> int:
        """The charge of everything held (payload plus overheads; see the module docstring)."""
        return self._charge

    def owner_usage(self, owner: Hashable) -> tuple[int, int]:
        """(incomplete datagrams, bytes charged) that ``owner`` holds."""
        account = self._owners.get(owner)
        return (0, 0) if account is None else (len(account.datagrams), account.charge)

    # ----------------------------------------------------------------- internals

    def _fragment(self, owner: Hashable, key: Key, offset: int, payload: BytesLike, more: bool, ecn: int,
                  first: Ipv4Header | bytes | None, first_limit: int, any_limit: int, first_charge: int,
                  now: float) -> _Datagram | None:
        """The family-free part of a fragment: ``offset`` in bytes, ``ecn`` its 2-bit field, ``first``
        what to keep if it is the first fragment (charged ``first_charge`` more), and the largest payload
        end allowed once the first fragment is known (``first_limit``, from its headers) and before
        (``any_limit``). Returns the complete datagram, already out of the table."""
        c = self.counters
        self._clock = max(self._clock, now)
        size = len(payload)
        end = offset + size
        if size == 0 or (more and size & 7):
            c.malformed += 1
            return None
        dg = self._datagrams.get(key)
        limit = first_limit if offset == 0 else any_limit if dg is None else dg.limit
        if end > limit or (offset == 0 and dg is not None and max(dg.max_end, dg.total) > limit):
            c.oversize += 1
            if dg is not None:
                self._drop(dg)
            return None
        if dg is None:
            dg = self._create(owner, key, any_limit)
        if self._insert(dg, bytes(payload), offset, end, more, ecn) == _DROP:
            return None
        if offset == 0:
            dg.first = first
            dg.limit = first_limit
            self._charge_to(dg, first_charge)
        if dg.received == dg.total:
            return self._complete(dg)
        self._enforce_byte_caps(owner)
        return None

    def _create(self, owner: Hashable, key: Key, limit: int) -> _Datagram:
        account = self._owners.get(owner)
        if account is None:
            account = self._owners[owner] = _Owner()
        while len(account.datagrams) >= self.max_datagrams_per_owner:
            self._evict(next(iter(account.datagrams.values())))
        while len(self._datagrams) >= self.max_datagrams:
            self._evict_heaviest(owner, by_bytes=False)
        while self._charge + DATAGRAM_OVERHEAD > self.max_bytes:
            self._evict_heaviest(owner, by_bytes=True)
        dg = _Datagram(key, self._clock + self.timeout, limit)
        self._owners[owner] = account  # an eviction above may have removed the (then empty) account
        account.datagrams[key] = dg
        account.charge += DATAGRAM_OVERHEAD
        self._datagrams[key] = dg
        self._charge += DATAGRAM_OVERHEAD
        return dg

    def _insert(self, dg: _Datagram, data: bytes, offset: int, end: int, more: bool, ecn: int) -> int:
        c = self.counters
        starts, ends = dg.starts, dg.ends
        i = bisect_left(starts, offset)
        if i < len(starts) and starts[i] == offset and ends[i] == end and dg.datas[i] == data:
            if more == (end != dg.total):
                c.duplicates += 1
                return _DROP  # nothing to do; the datagram stays
            c.malformed += 1  # the same bytes once with MF and once without
            self._drop(dg)
            return _DROP
        if (i > 0 and ends[i - 1] > offset) or (i < len(starts) and starts[i] < end):
            c.overlaps += 1
            self._drop(dg)
            return _DROP
        if (not more and (end < dg.max_end or (dg.total >= 0 and end != dg.total))) or (
            more and dg.total >= 0 and end > dg.total
        ):
            c.malformed += 1
            self._drop(dg)
            return _DROP
        if not more:
            dg.total = end
        starts.insert(i, offset)
        ends.insert(i, end)
        dg.datas.insert(i, data)
        dg.received += len(data)
        dg.max_end = max(dg.max_end, end)
        dg.ecn |= 1 << ecn
        self._charge_to(dg, len(data) + FRAGMENT_OVERHEAD)
        return _KEEP

    def _charge_to(self, dg: _Datagram, charge: int) -> None:
        dg.charge += charge
        self._owners[dg.key[0]].charge += charge
        self._charge += charge

    def _complete(self, dg: _Datagram) -> _Datagram | None:
        self._drop(dg)
        ecn = dg.ecn
        if ecn & 1 and ecn != 1:  # Not-ECT mixed with ECT or CE (RFC 3168 5.3)
            self.counters.malformed += 1
            return None
        self.counters.reassembled += 1
        return dg

    def _enforce_byte_caps(self, owner: Hashable) -> None:
        account = self._owners.get(owner)
        while account is not None and account.charge > self.max_bytes_per_owner:
            self._evict(next(iter(account.datagrams.values())))
            account = self._owners.get(owner)
        while self._charge > self.max_bytes:
            self._evict_heaviest(owner, by_bytes=True)

    def _evict_heaviest(self, prefer: Hashable, *, by_bytes: bool) -> None:
        def weight(item: tuple[Hashable, _Owner]) -> tuple[int, bool]:
            who, account = item
            return (account.charge if by_bytes else len(account.datagrams), who == prefer)

        # Only called while something is held; the feeder's fresh account may be empty, so skip those.
        _, account = max(((w, a) for w, a in self._owners.items() if a.datagrams), key=weight)
        self._evict(next(iter(account.datagrams.values())))

    def _evict(self, dg: _Datagram) -> None:
        self.counters.evicted += 1
        self._drop(dg)

    def _drop(self, dg: _Datagram) -> None:
        key = dg.key
        if self._datagrams.pop(key, None) is None:
            return
        owner = key[0]
        account = self._owners[owner]
        del account.datagrams[key]
        account.charge -= dg.charge
        self._charge -= dg.charge
        if not account.datagrams:
            del self._owners[owner]


#: The name from before IPv6 joined; the same engine.
Ipv4Reassembler = Reassembler


def _chain_complete(nh: int, data: BytesLike) -> bool:
    """Whether a first fragment's payload ``data``, starting with header ``nh``, holds every extension
    header whole and then the upper-layer header's first bytes (RFC 7112 section 5)."""
    off = 0
    n = len(data)
    for _ in range(_MAX_CHAIN):
        if nh in _EXTENSIONS or nh == _AH:
            if off + 8 > n:
                return False
            length = (data[off + 1] + 2) * 4 if nh == _AH else (data[off + 1] + 1) * 8
            nh, off = data[off], off + length
            continue
        if nh == 44:
            return False  # a second Fragment header
        return nh == _NO_NEXT or off + _UPPER_LEN.get(nh, 0) <= n
    return False
