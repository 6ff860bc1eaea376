"""The DHCP server of ``-netdev user``, as a sans-IO engine.

QEMU's (libslirp's) server hands each MAC one of 16 addresses from ``dhcpstart`` and never takes it
back; guests rely on getting the same address on every boot (port forwards to "the first DHCP
address" depend on it).  This server keeps that promise and adds what libslirp lacks: a pool of any
size, static leases by MAC, leases that expire and can be saved and restored, RELEASE, DECLINE and
INFORM, NAKs that clients honour, and replies that fit the client's maximum message size.

Address choice for a MAC (RFC 2131 section 4.3.1 order): its static lease; else the address it had
before, active, expired or released; else the address it asks for, if free; else the lowest free
pool address; else, only when nothing else is left, the address whose lease expired longest ago --
so an idle guest's address is taken over only under pressure, never merely because it expired.

Deliberate departures from RFC 2131, all in favour of guests on a one-server virtual LAN:

* INIT-REBOOT and RENEWING/REBINDING requests for a free pool address the server has no record of
  are granted (libslirp does the same: a guest keeps its address across a restart of the host side
  without a leases file); requests for an address that is not ours to give are NAKed rather than
  ignored, because this server is the only one there is.
* Messages whose ``chaddr`` is not the Ethernet source, or that came through a relay (``giaddr`` set),
  are dropped: on this LAN both mean a guest impersonating someone.
* The client identifier (option 61) is ignored; leases are per MAC, as in QEMU.

Time is an argument (seconds, any float clock); pass wall-clock time if the leases are saved and
restored, since their expiry times are kept as given.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vmlan.wire import BytesLike
from vmlan.wire.dhcp import (
    BOOTP_MIN_LEN,
    BOOTREPLY,
    BOOTREQUEST,
    DHCPACK,
    DHCPDECLINE,
    DHCPDISCOVER,
    DHCPINFORM,
    DHCPNAK,
    DHCPOFFER,
    DHCPRELEASE,
    DHCPREQUEST,
    FLAG_BROADCAST,
    OPT_BOOTFILE,
    OPT_DNS,
    OPT_DOMAIN_NAME,
    OPT_DOMAIN_SEARCH,
    OPT_HOSTNAME,
    OPT_LEASE_TIME,
    OPT_MAX_SIZE,
    OPT_MESSAGE,
    OPT_MESSAGE_TYPE,
    OPT_MTU,
    OPT_PARAM_REQ,
    OPT_REBINDING_T2,
    OPT_RENEWAL_T1,
    OPT_REQUESTED_IP,
    OPT_ROUTER,
    OPT_SERVER_ID,
    OPT_SUBNET_MASK,
    OPT_TFTP_SERVER,
    DhcpMessage,
    encode_domain_search,
    option_ipv4,
    option_u16,
    options_wire_len,
)
from vmlan.wire.errors import WireError
from vmlan.wire.ethernet import BROADCAST, mac_from_str, mac_to_str
from vmlan.wire.ipv4 import ipv4_from_str, ipv4_to_str

__all__ = ["DhcpConfig", "DhcpError", "DhcpReply", "DhcpServer", "DhcpStats", "Lease"]

_ZERO4 = bytes(4)
_LIMITED_BROADCAST = b"\xff\xff\xff\xff"
#: RFC 2131 section 2: every client accepts 576-octet datagrams (IP and UDP headers included).
_MIN_DATAGRAM = 576
_IP_UDP_HLEN = 28
#: The NAK's option 56, libslirp's wording.
_NAK_TEXT = b"requested address not available"


class DhcpError(ValueError):
    """A configuration or saved lease the server refuses (one line, fit for the user)."""


def _addr(what: str, text: str) -> bytes:
    try:
        return ipv4_from_str(text)
    except WireError:
        raise DhcpError(f"{what}: malformed IPv4 address {text!r}") from None


def _text_option(what: str, text: str | None) -> bytes | None:
    if text is None:
        return None
    data = text.encode("ascii", "strict") if text.isascii() else None
    if not data or len(data) > 255:
        raise DhcpError(f"{what} must be 1..255 ASCII characters, got {text!r}")
    return data


@dataclass(frozen=True, slots=True, kw_only=True)
class DhcpConfig:
    """What the server hands out.  Defaults are QEMU's ``-netdev user`` (10.0.2.0/24).

    Under ``restrict=on`` pass ``router=None`` and ``dns=()``: options 3 and 6 are then omitted, as
    QEMU does.  ``static_leases`` maps MAC text (``"52:54:00:12:34:56"``) to an address in the
    subnet, inside or outside the pool; a static address is never given to another MAC.
    """

    server_ip: str = "10.0.2.2"
    netmask: str = "255.255.255.0"
    router: str | None = "10.0.2.2"
    dns: Sequence[str] = ("10.0.2.3",)
    pool_start: str = "10.0.2.15"
    pool_size: int = 16
    lease_time: int = 86400
    hostname: str | None = None
    domainname: str | None = None
    dnssearch: Sequence[str] = ()
    mtu: int | None = None
    static_leases: Mapping[str, str] = field(default_factory=dict)
    bootfile: str | None = None
    tftp_server_name: str | None = None
    #: Send T1/T2 (options 58/59: half and 7/8 of the lease).  Off, like QEMU: clients derive them.
    renewal_times: bool = False
    #: How long an address a client DECLINEd (found in use) stays out of the pool.
    decline_hold: float = 600.0
    #: How long an OFFERed address is held for the client before anyone else may get it.
    offer_hold: float = 60.0

    def __post_init__(self) -> None:
        server = _addr("server_ip", self.server_ip)
        mask = int.from_bytes(_addr("netmask", self.netmask), "big")
        if mask == 0 or (~mask & 0xFFFFFFFF) & ((~mask & 0xFFFFFFFF) + 1):
            raise DhcpError(f"netmask {self.netmask} is not a contiguous prefix")
        net = int.from_bytes(server, "big") & mask
        bcast = net | (~mask & 0xFFFFFFFF)

        def inside(what: str, text: str) -> int:
            value = int.from_bytes(_addr(what, text), "big")
            if value & mask != net or value in (net, bcast):
                raise DhcpError(f"{what} {text} is not a host address of {ipv4_to_str(server)}/{self.netmask}")
            return value

        inside("server_ip", self.server_ip)
        if self.router is not None:
            inside("router", self.router)
        if isinstance(self.dns, str) or isinstance(self.dnssearch, str):
            raise DhcpError("dns and dnssearch are lists, not strings")
        for d in self.dns:
            _addr("dns", d)
        start = inside("pool_start", self.pool_start)
        if self.pool_size < 1 or start + self.pool_size - 1 >= bcast:
            raise DhcpError(f"pool of {self.pool_size} from {self.pool_start} does not fit the subnet")
        if not 1 <= self.lease_time <= 0xFFFFFFFE:
            raise DhcpError(f"lease_time {self.lease_time} outside 1..4294967294 s")
        if self.mtu is not None and not 68 <= self.mtu <= 0xFFFF:
            raise DhcpError(f"mtu {self.mtu} outside 68..65535")
        _text_option("hostname", self.hostname)
        _text_option("domainname", self.domainname)
        _text_option("tftp_server_name", self.tftp_server_name)
        if self.bootfile is not None and (not self.bootfile.isascii() or not 0 < len(self.bootfile) < 128):
            raise DhcpError(f"bootfile must be 1..127 ASCII characters, got {self.bootfile!r}")
        try:
            encode_domain_search(self.dnssearch)
        except WireError as exc:
            raise DhcpError(f"dnssearch: {exc.detail}") from None
        taken: dict[int, str] = {}
        for mac_text, ip_text in self.static_leases.items():
            try:
                mac_from_str(mac_text)
            except WireError:
                raise DhcpError(f"static lease: malformed MAC address {mac_text!r}") from None
            ip = inside(f"static lease for {mac_text}", ip_text)
            if ip == int.from_bytes(server, "big") or ip in taken:
                raise DhcpError(f"static lease for {mac_text}: {ip_text} is already used")
            taken[ip] = mac_text
        if not self.decline_hold >= 0 or not self.offer_hold >= 0:
            raise DhcpError("decline_hold and offer_hold must be >= 0")


@dataclass(frozen=True, slots=True)
class Lease:
    """A MAC's address.  ``expires`` <= now means expired or released: the address is remembered for
    the MAC but may be reclaimed when the pool is otherwise full.  ``hostname`` is the client's own
    (its option 12), kept for display."""

    mac: bytes
    ip: bytes
    expires: float
    hostname: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record (addresses as text)."""
        return {
            "mac": mac_to_str(self.mac),
            "ip": ipv4_to_str(self.ip),
            "expires": self.expires,
            "hostname": self.hostname,
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Lease:
        """The inverse of :meth:`to_dict`; a malformed record raises :class:`DhcpError`."""
        try:
            mac = mac_from_str(record["mac"])
            ip = ipv4_from_str(record["ip"])
            expires = float(record["expires"])
            hostname = record.get("hostname")
        except (KeyError, TypeError, ValueError, WireError) as exc:
            raise DhcpError(f"malformed lease record {record!r}: {exc}") from None
        if not math.isfinite(expires) or not (hostname is None or isinstance(hostname, str)):
            raise DhcpError(f"malformed lease record {record!r}")
        return cls(mac, ip, expires, hostname)


@dataclass(frozen=True, slots=True)
class DhcpReply:
    """A message to send from ``server_ip``:67 to ``dst_ip``:68, in a frame to ``dst_mac``.

    ``lease`` is set on an ACK that bound an address (the caller may teach its ARP table that the
    guest at ``lease.mac`` now owns ``lease.ip``)."""

    payload: bytes
    dst_ip: bytes
    dst_mac: bytes
    lease: Lease | None = None


@dataclass(slots=True)
class DhcpStats:
    """Counters; every message the server does not answer is counted in exactly one drop counter."""

    received: int = 0
    offers: int = 0
    acks: int = 0
    naks: int = 0
    informs: int = 0
    releases: int = 0
    declines: int = 0
    malformed: int = 0  # undecodable or carrying impossible values
    ignored: int = 0  # well-formed but not for us: replies, BOOTP, relayed, spoofed chaddr, other server
    exhausted: int = 0  # DISCOVERs left unanswered because no address was free
    options_dropped: int = 0  # options left out to fit the client's maximum message size
    leases_dropped: int = 0  # restored leases that do not fit this configuration
    internal_errors: int = 0  # bugs: never raised out of handle(), counted so tests can insist on 0


class DhcpServer:
    """Sans-IO DHCP server: feed it the UDP payloads guests send to port 67."""

    __slots__ = (
        "_bad",
        "_bcast",
        "_by_ip",
        "_by_mac",
        "_mask",
        "_net",
        "_opts",
        "_pool",
        "_pool_index",
        "_pool_set",
        "_scan_from",
        "_server",
        "_static",
        "_static_ips",
        "cfg",
        "changed",
        "in_use",
        "stats",
    )

    def __init__(
        self,
        cfg: DhcpConfig,
        leases: Iterable[Lease] = (),
        in_use: Callable[[bytes, bytes], bool] | None = None,
    ) -> None:
        """``in_use(ip, mac)``: True when a MAC other than ``mac`` uses ``ip`` without a lease (a guest
        configured statically): such an address is never offered or granted to ``mac``."""
        self.cfg = cfg
        self.in_use = in_use
        self.stats = DhcpStats()
        #: Bumped whenever the lease table changes: save the leases file when it differs from last time.
        self.changed = 0
        self._server = ipv4_from_str(cfg.server_ip)
        self._mask = int.from_bytes(ipv4_from_str(cfg.netmask), "big")
        self._net = int.from_bytes(self._server, "big") & self._mask
        self._bcast = self._net | (~self._mask & 0xFFFFFFFF)
        self._static = {mac_from_str(m): ipv4_from_str(ip) for m, ip in cfg.static_leases.items()}
        self._static_ips = set(self._static.values())
        reserved = {self._server, *self._static_ips, *(ipv4_from_str(d) for d in cfg.dns)}
        if cfg.router is not None:
            reserved.add(ipv4_from_str(cfg.router))
        start = int.from_bytes(ipv4_from_str(cfg.pool_start), "big")
        candidates = (n.to_bytes(4, "big") for n in range(start, start + cfg.pool_size))
        self._pool = [ip for ip in candidates if ip not in reserved]
        self._pool_set = frozenset(self._pool)
        self._pool_index = {addr: i for i, addr in enumerate(self._pool)}
        # Every pool address below this index is bound: new clients scan from here, not from 0.
        self._scan_from = 0
        self._by_mac: dict[bytes, Lease] = {}
        self._by_ip: dict[bytes, bytes] = {}
        self._bad: dict[bytes, float] = {}
        self._opts = self._config_options()
        for lease in leases:
            self._restore(lease)

    # ----------------------------------------------------------------- public

    def leases(self) -> list[Lease]:
        """Every remembered lease, active or not, by address: what to save."""
        return sorted(self._by_mac.values(), key=lambda lease: lease.ip)

    def lease_for(self, mac: bytes) -> Lease | None:
        return self._by_mac.get(mac)

    def holder(self, ip: bytes, now: float) -> bytes | None:
        """The MAC holding an unexpired lease (or a pending offer) on ``ip``, if any."""
        mac = self._by_ip.get(ip)
        if mac is None:
            return None
        lease = self._by_mac.get(mac)
        return mac if lease is not None and lease.expires > now else None

    def handle(self, payload: BytesLike, client_mac: bytes, now: float) -> DhcpReply | None:
        """Process one message from a guest; return the reply to send, if any.  Never raises."""
        self.stats.received += 1
        try:
            return self._handle(payload, client_mac, now)
        except WireError:
            self.stats.malformed += 1
        except Exception:  # a bug must not take the network down; tests assert this stays 0
            self.stats.internal_errors += 1
        return None

    # ----------------------------------------------------------------- dispatch

    def _handle(self, payload: BytesLike, client_mac: bytes, now: float) -> DhcpReply | None:
        msg = DhcpMessage.parse(payload)
        mtype = msg.message_type
        if msg.op != BOOTREQUEST or mtype is None or msg.htype != 1 or msg.chaddr != client_mac or msg.giaddr != _ZERO4:
            self.stats.ignored += 1
            return None
        mac = msg.chaddr
        if mtype == DHCPDISCOVER:
            return self._discover(msg, mac, now)
        if mtype == DHCPREQUEST:
            return self._request(msg, mac, now)
        if mtype == DHCPRELEASE:
            self._release(msg, mac, now)
        elif mtype == DHCPDECLINE:
            self._decline(msg, mac, now)
        elif mtype == DHCPINFORM:
            return self._inform(msg)
        else:
            self.stats.ignored += 1
        return None

    def _discover(self, msg: DhcpMessage, mac: bytes, now: float) -> DhcpReply | None:
        ip = self._allocate(mac, option_ipv4(msg, OPT_REQUESTED_IP), now)
        if ip is None:
            self.stats.exhausted += 1
            return None
        # Hold the offered address for the client (an active lease keeps its longer expiry).
        lease = self._by_mac.get(mac)
        hostname = self._client_hostname(msg) or (lease.hostname if lease else None)
        expires = now + self.cfg.offer_hold
        if lease is not None and lease.ip == ip:
            expires = max(expires, lease.expires)
        if lease != Lease(mac, ip, expires, hostname):
            self._bind(mac, ip, expires, hostname)
        self.stats.offers += 1
        return self._reply(msg, DHCPOFFER, ip, lease_time=True)

    def _request(self, msg: DhcpMessage, mac: bytes, now: float) -> DhcpReply | None:
        # RFC 2131 section 4.3.2 tells the client's state from which fields are filled in.
        server_id = option_ipv4(msg, OPT_SERVER_ID)
        requested = option_ipv4(msg, OPT_REQUESTED_IP)
        if server_id is not None:  # SELECTING: the client picked a server's offer
            if server_id != self._server:
                self.stats.ignored += 1  # it picked someone else's
                return None
            target = requested
        elif requested is not None:  # INIT-REBOOT: a client that remembers its address
            target = requested
        else:  # RENEWING (unicast) or REBINDING (broadcast): ciaddr is the address to extend
            target = msg.ciaddr if msg.ciaddr != _ZERO4 else None
        if target is None:
            self.stats.malformed += 1
            return None
        if not self._grantable(mac, target, now):
            self.stats.naks += 1
            return self._nak(msg)
        previous = self._by_mac.get(mac)
        hostname = self._client_hostname(msg) or (previous.hostname if previous else None)
        lease = self._bind(mac, target, now + self.cfg.lease_time, hostname)
        self.stats.acks += 1
        reply = self._reply(msg, DHCPACK, target, lease_time=True)
        return DhcpReply(reply.payload, reply.dst_ip, reply.dst_mac, lease)

    def _release(self, msg: DhcpMessage, mac: bytes, now: float) -> None:
        server_id = option_ipv4(msg, OPT_SERVER_ID)
        lease = self._by_mac.get(mac)
        if (server_id is not None and server_id != self._server) or lease is None or lease.ip != msg.ciaddr:
            self.stats.ignored += 1
            return
        self.stats.releases += 1
        if lease.expires > now:  # keep the MAC -> address memory, just end the lease
            self._by_mac[mac] = Lease(mac, lease.ip, now, lease.hostname)
            self.changed += 1

    def _decline(self, msg: DhcpMessage, mac: bytes, now: float) -> None:
        server_id = option_ipv4(msg, OPT_SERVER_ID)
        ip = option_ipv4(msg, OPT_REQUESTED_IP)
        lease = self._by_mac.get(mac)
        if (server_id is not None and server_id != self._server) or lease is None or lease.ip != ip:
            self.stats.ignored += 1
            return
        self.stats.declines += 1
        del self._by_mac[mac]
        self._unbind_ip(lease.ip)
        if lease.ip not in self._static_ips:  # a static address is the admin's call
            self._bad[lease.ip] = now + self.cfg.decline_hold
        self.changed += 1

    def _inform(self, msg: DhcpMessage) -> DhcpReply | None:
        if msg.ciaddr == _ZERO4:
            self.stats.malformed += 1
            return None
        self.stats.informs += 1
        return self._reply(msg, DHCPACK, _ZERO4, lease_time=False)

    # ----------------------------------------------------------------- addresses

    def _in_subnet(self, ip: bytes) -> bool:
        value = int.from_bytes(ip, "big")
        return value & self._mask == self._net and value not in (self._net, self._bcast)

    def _is_bad(self, ip: bytes, now: float) -> bool:
        until = self._bad.get(ip)
        if until is None:
            return False
        if until <= now:
            del self._bad[ip]
            return False
        return True

    def _free(self, ip: bytes, now: float, mac: bytes) -> bool:
        return ip in self._pool_set and ip not in self._by_ip and not self._is_bad(ip, now) and not self._taken(ip, mac)

    def _taken(self, ip: bytes, mac: bytes) -> bool:
        return self.in_use is not None and self.in_use(ip, mac)

    def _allocate(self, mac: bytes, requested: bytes | None, now: float) -> bytes | None:
        static = self._static.get(mac)
        if static is not None:
            return static
        lease = self._by_mac.get(mac)
        if (
            lease is not None
            and lease.ip in self._pool_set
            and not self._is_bad(lease.ip, now)
            and not self._taken(lease.ip, mac)
        ):
            return lease.ip
        if requested is not None and self._free(requested, now, mac):
            return requested
        free = self._lowest_free(now, mac)
        if free is not None:
            return free
        # The pool is full of remembered addresses: take over the one whose lease ended longest ago.
        oldest: Lease | None = None
        for other in self._by_mac.values():
            if (
                other.expires <= now
                and other.ip in self._pool_set
                and not self._is_bad(other.ip, now)
                and not self._taken(other.ip, mac)
                and (oldest is None or other.expires < oldest.expires)
            ):
                oldest = other
        return None if oldest is None else oldest.ip

    def _lowest_free(self, now: float, mac: bytes) -> bytes | None:
        pool, by_ip = self._pool, self._by_ip
        i = self._scan_from
        while i < len(pool) and pool[i] in by_ip:
            i += 1
        self._scan_from = i
        for ip in itertools.islice(pool, i, None):
            if ip not in by_ip and not self._is_bad(ip, now) and not self._taken(ip, mac):
                return ip
        return None

    def _unbind_ip(self, ip: bytes) -> None:
        del self._by_ip[ip]
        index = self._pool_index.get(ip)
        if index is not None and index < self._scan_from:
            self._scan_from = index

    def _grantable(self, mac: bytes, ip: bytes, now: float) -> bool:
        static = self._static.get(mac)
        if static is not None:
            return ip == static
        if ip not in self._pool_set or self._is_bad(ip, now) or self._taken(ip, mac):
            return False
        holder = self._by_ip.get(ip)
        return holder is None or holder == mac

    def _bind(self, mac: bytes, ip: bytes, expires: float, hostname: str | None) -> Lease:
        old = self._by_mac.get(mac)
        if old is not None and old.ip != ip:
            self._unbind_ip(old.ip)
        previous_holder = self._by_ip.get(ip)
        if previous_holder is not None and previous_holder != mac:
            del self._by_mac[previous_holder]  # reclaimed from an expired lease
        lease = Lease(mac, ip, expires, hostname)
        self._by_mac[mac] = lease
        self._by_ip[ip] = mac
        self.changed += 1
        return lease

    def _restore(self, lease: Lease) -> None:
        static = self._static.get(lease.mac)
        fits = lease.ip == static if static is not None else lease.ip in self._pool_set
        holder = self._by_ip.get(lease.ip)
        if not fits or lease.mac in self._by_mac or (holder is not None and holder != lease.mac):
            self.stats.leases_dropped += 1
            return
        self._by_mac[lease.mac] = lease
        self._by_ip[lease.ip] = lease.mac

    # ----------------------------------------------------------------- replies

    def _config_options(self) -> dict[int, bytes]:
        cfg = self.cfg
        opts: dict[int, bytes] = {OPT_SUBNET_MASK: ipv4_from_str(cfg.netmask)}
        if cfg.router is not None:
            opts[OPT_ROUTER] = ipv4_from_str(cfg.router)
        if cfg.dns:
            opts[OPT_DNS] = b"".join(ipv4_from_str(d) for d in cfg.dns)
        for code, text in (
            (OPT_HOSTNAME, cfg.hostname),
            (OPT_DOMAIN_NAME, cfg.domainname),
            (OPT_TFTP_SERVER, cfg.tftp_server_name),
            (OPT_BOOTFILE, cfg.bootfile),  # also in the BOOTP file field (iPXE and PXE ROMs read either)
        ):
            data = _text_option(str(code), text)
            if data is not None:
                opts[code] = data
        if cfg.mtu is not None:
            opts[OPT_MTU] = cfg.mtu.to_bytes(2, "big")
        if cfg.dnssearch:
            opts[OPT_DOMAIN_SEARCH] = encode_domain_search(cfg.dnssearch)
        return opts

    @staticmethod
    def _client_hostname(msg: DhcpMessage) -> str | None:
        data = msg.option(OPT_HOSTNAME)
        if not data:
            return None
        return data.decode("ascii", "replace")

    def _budget(self, msg: DhcpMessage) -> int:
        """Octets the reply may take: the client's option 57 (never below 576) minus IP and UDP headers."""
        try:
            size = option_u16(msg, OPT_MAX_SIZE)
        except WireError:
            size = None
        return max(size or _MIN_DATAGRAM, _MIN_DATAGRAM) - _IP_UDP_HLEN

    def _reply(self, msg: DhcpMessage, mtype: int, yiaddr: bytes, *, lease_time: bool) -> DhcpReply:
        cfg = self.cfg
        options: list[tuple[int, bytes]] = [(OPT_MESSAGE_TYPE, bytes((mtype,))), (OPT_SERVER_ID, self._server)]
        if lease_time:
            options.append((OPT_LEASE_TIME, cfg.lease_time.to_bytes(4, "big")))
            if cfg.renewal_times:
                options.append((OPT_RENEWAL_T1, (cfg.lease_time // 2).to_bytes(4, "big")))
                options.append((OPT_REBINDING_T2, (cfg.lease_time * 7 // 8).to_bytes(4, "big")))
        options.append((OPT_SUBNET_MASK, self._opts[OPT_SUBNET_MASK]))
        # RFC 2132 section 9.8: requested options in the client's order, then the others we have.
        wanted = msg.option(OPT_PARAM_REQ) or b""
        order = [c for c in dict.fromkeys(wanted) if c in self._opts and c != OPT_SUBNET_MASK]
        order += [c for c in sorted(self._opts) if c not in order and c != OPT_SUBNET_MASK]
        budget = self._budget(msg)
        size = 236 + 4 + sum(options_wire_len(len(d)) for _, d in options) + 1
        for code in order:
            data = self._opts[code]
            need = options_wire_len(len(data))
            if size + need > budget:
                self.stats.options_dropped += 1
                continue
            options.append((code, data))
            size += need
        reply = DhcpMessage(
            op=BOOTREPLY,
            xid=msg.xid,
            chaddr=msg.chaddr,
            htype=msg.htype,
            flags=msg.flags,
            ciaddr=msg.ciaddr if mtype == DHCPACK else _ZERO4,
            yiaddr=yiaddr,
            siaddr=self._server,
            giaddr=msg.giaddr,
            file=cfg.bootfile.encode("ascii") if cfg.bootfile else b"",
            options=tuple(options),
        )
        payload = reply.build(pad_to=BOOTP_MIN_LEN)
        # RFC 2131 section 4.1, with giaddr always zero here.
        if msg.ciaddr != _ZERO4:
            return DhcpReply(payload, msg.ciaddr, msg.chaddr)
        if msg.flags & FLAG_BROADCAST:
            return DhcpReply(payload, _LIMITED_BROADCAST, BROADCAST)
        return DhcpReply(payload, yiaddr, msg.chaddr)

    def _nak(self, msg: DhcpMessage) -> DhcpReply:
        reply = DhcpMessage(
            op=BOOTREPLY,
            xid=msg.xid,
            chaddr=msg.chaddr,
            htype=msg.htype,
            flags=msg.flags,
            giaddr=msg.giaddr,
            options=(
                (OPT_MESSAGE_TYPE, bytes((DHCPNAK,))),
                (OPT_SERVER_ID, self._server),  # udhcpc ignores a NAK without our server id
                (OPT_MESSAGE, _NAK_TEXT),
            ),
        )
        # RFC 2131 section 4.1: with giaddr zero a NAK is always broadcast.
        return DhcpReply(reply.build(pad_to=BOOTP_MIN_LEN), _LIMITED_BROADCAST, BROADCAST)
