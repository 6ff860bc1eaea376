"""The TFTP server of ``-netdev user,tftp=DIR`` (read-only), as a sans-IO engine.

QEMU (libslirp's tftp.c) serves DIR read-only at the gateway, port 69: octet mode only (error 4
otherwise), blksize (capped at 1428) and tsize, at most 20 transfers in all, each answered from port 69
and reclaimable after 5 s without an ACK.  In the libslirp sources read (tftp.c of utmapp/libslirp and
openSUSE/qemu-slirp) every ACK, whatever its block number, sends the *next* block, nothing is ever
retransmitted, the session ends when the last block is sent (not acknowledged), and a WRQ gets no
answer at all.  This engine serves the same files to the same clients and adds what that lacks:
retransmission with backoff, ACKs matched to blocks, the final ACK awaited, RFC 2349's timeout, RFC
7440's windowsize, netascii, a TFTP error for a write request, a port per transfer, caps per guest.

Protocol, server side of a read (RFC 1350, options RFC 2347):

* RRQ with no option we accept: DATA 1 goes at once.  With options (RFC 2348 blksize 8..65464, capped
  at :attr:`TftpConfig.max_blksize`; RFC 2349 tsize, answered with the file size whatever value the
  request carries (it should be 0; atftp 0.8 sends "enable"); RFC 2349 timeout
  1..255 s; RFC 7440 windowsize, capped at :attr:`TftpConfig.max_windowsize` and so that a window is
  at most :attr:`TftpConfig.max_window_bytes`), an OACK lists the accepted ones and DATA 1 waits for
  ACK 0.  Unknown options and invalid values are left out of the OACK (RFC 2347: the client then
  uses the default), never refused with error 8.
* Blocks go out ``windowsize`` at a time.  An ACK for any block of the window in flight slides the
  window to the block after it and sends what is then owed (RFC 7440 section 4: a client ACKs the last
  block it got in order when it sees a gap); an ACK for the block before the window is a duplicate and
  is ignored (RFC 1350's Sorcerer's Apprentice rule: only the server's own timer resends).  The block
  number after 65535 is 0 (the rollover tftp-hpa and atftp expect); ACKs are matched against the
  window in flight, so the wrap is invisible to the engine.
* The timer resends the whole window with exponential backoff (``rto``, doubling to ``max_rto``; the
  client's timeout option replaces ``rto``).  A transfer with no progress (no ACK that slides the
  window) for :attr:`TftpConfig.session_timeout` seconds is dropped.  The transfer ends when the last
  block (shorter than blksize, possibly empty) is acknowledged.
* netascii (``TftpConfig.netascii``, on by default): converted on the fly, LF -> CR LF and
  CR -> CR NUL (RFC 764's NVT rules, which RFC 1350 refers to); tsize is not acknowledged in netascii,
  since the size after conversion is unknown until the file has been read (tftp-hpa does the same).
  libslirp refuses netascii; tftp-hpa's client uses it by default, so serving it costs nothing.
  "mail" and unknown modes get error 4.
* WRQ: error 2, "Access violation" (read-only).

Transfer ports.  RFC 1350 section 4: the server answers a request from a new port of its own (its
transfer identifier), and the client sends its ACKs there.  Every datagram in and out names that port:
:meth:`TftpServer.receive` takes the server-side port the datagram was sent to (:data:`TFTP_PORT`, 69,
for requests), and every output is ``(client, port, payload)``: send ``payload`` to ``client`` *from*
``port``.  The engine picks transfer ports from :attr:`TftpConfig.transfer_ports`; the user stack sends
from them as they are (its ports are virtual), a socket adapter maps each to a socket of its own.
:meth:`TftpServer.take_closed` lists the transfers that ended, so an adapter can close their sockets.
With ``transfer_ports=None`` every transfer answers from port 69, as libslirp does: one transfer per
client address and port, and nothing for the caller to route but port 69.

Clients are opaque hashable keys given by the caller (the stack passes ``(guest, ip, port)``); a client
has at most one transfer: a new request from it replaces the old one (as in libslirp), unless it is the
same request again before any ACK, which is a retransmitted RRQ and is ignored.  The ``guest`` key
counts transfers against :attr:`TftpConfig.max_sessions_per_guest`; :attr:`TftpConfig.max_sessions`
caps them all.  Over a cap, the request gets error 0 "Too many transfers".

Names.  The engine never touches the filesystem: it checks and normalises the requested name and asks
the :class:`FileSource` it was given (:class:`vmlan.io.tftp_files.DirectoryFiles` confines a directory).
Before that, names are refused with error 2 (Access violation, the request is refused by policy, not
missing) when they hold a control character, DEL, a backslash or bytes that are not UTF-8, end with
``/``, hold a ``..`` component, or are longer than :attr:`TftpConfig.max_filename`.  Empty and ``.``
components are dropped and a leading ``/`` is taken relative to the directory (``/pxelinux.0`` is
``DIR/pxelinux.0``), as libslirp and ``tftpd -s`` do: PXE configurations use both spellings.  An empty
name is error 1.

Never raises on guest input: what does not parse gets error 4 (at the request port) or ends the
transfer it was sent to with error 4; errors are never answered; everything is counted in
:class:`TftpStats`.  An ``OSError`` from a :class:`FileHandle` read ends the transfer with error 0.
"""

from __future__ import annotations

import contextlib
import random
import struct
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from vmlan.wire import BytesLike, WireError
from vmlan.wire.tftp import (
    BLKSIZE_MAX,
    BLKSIZE_MIN,
    DEFAULT_BLKSIZE,
    ERR_ACCESS,
    ERR_ILLEGAL_OP,
    ERR_NOT_FOUND,
    ERR_UNDEFINED,
    ERR_UNKNOWN_TID,
    OP_ERROR,
    OP_RRQ,
    OP_WRQ,
    TFTP_PORT,
    TftpRequest,
    ack_block,
    encode_error,
    encode_oack,
)

__all__ = [
    "Datagram",
    "FileHandle",
    "FileSource",
    "TftpConfig",
    "TftpConfigError",
    "TftpServer",
    "TftpStats",
]

#: An output: send ``payload`` to ``client`` from the server-side ``port``.
Datagram: TypeAlias = tuple[Hashable, int, bytes]

_DATA_HEAD = struct.Struct("!HH")
_OP_DATA = 3
_MAX_OPTION_DIGITS = 10

#: What each FileSource error code tells the client.
_MESSAGES = {
    ERR_NOT_FOUND: b"File not found",
    ERR_ACCESS: b"Access violation",
    ERR_UNDEFINED: b"Cannot open the file",
}


class FileHandle(Protocol):
    """An open file: its size when it was opened, reads at an offset, close."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` (fewer only at the end of the file); may raise OSError."""
        ...

    def close(self) -> None: ...


class FileSource(Protocol):
    def open(self, name: str) -> FileHandle | int:
        """Open ``name`` (relative, ``/``-separated, no empty, ``.`` or ``..`` components) for reading,
        or return the TFTP error code to send: :data:`~vmlan.wire.tftp.ERR_NOT_FOUND`,
        :data:`~vmlan.wire.tftp.ERR_ACCESS` or :data:`~vmlan.wire.tftp.ERR_UNDEFINED` (anything else
        is sent as ERR_ACCESS)."""
        ...


class TftpConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class TftpConfig:
    #: Largest blksize granted (RFC 2348 allows 65464; libslirp grants at most 1428).
    max_blksize: int = BLKSIZE_MAX
    #: Largest windowsize granted (RFC 7440).
    max_windowsize: int = 64
    #: A window is never more bytes than this (it is held for retransmission, and must fit the
    #: receiver's socket buffer: Linux's default is 208 KiB).
    max_window_bytes: int = 128 * 1024
    #: First retransmission timeout, seconds (a client's RFC 2349 timeout option replaces it).
    rto: float = 1.0
    #: Backoff stops doubling here: a virtual LAN loses datagrams to full queues, not to congestion
    #: that waiting longer would relieve, so the tries are spent evenly until ``session_timeout``.
    max_rto: float = 4.0
    #: A transfer with no progress for this long is dropped.
    session_timeout: float = 30.0
    max_sessions: int = 64
    max_sessions_per_guest: int = 8
    #: Server-side transfer ports (inclusive range), or None to answer every transfer from port 69.
    transfer_ports: tuple[int, int] | None = (49152, 65535)
    netascii: bool = True
    max_filename: int = 512

    def __post_init__(self) -> None:
        if not BLKSIZE_MIN <= self.max_blksize <= BLKSIZE_MAX:
            raise TftpConfigError(f"max_blksize {self.max_blksize} is not in {BLKSIZE_MIN}..{BLKSIZE_MAX}")
        if not 1 <= self.max_windowsize <= 0xFFFF:
            raise TftpConfigError(f"max_windowsize {self.max_windowsize} is not in 1..65535")
        if self.max_window_bytes < 1:
            raise TftpConfigError(f"max_window_bytes {self.max_window_bytes} < 1")
        if not 0 < self.rto <= self.max_rto:
            raise TftpConfigError(f"rto {self.rto} must be > 0 and <= max_rto {self.max_rto}")
        if self.session_timeout <= 0:
            raise TftpConfigError(f"session_timeout {self.session_timeout} must be > 0")
        if self.max_sessions < 1 or self.max_sessions_per_guest < 1:
            raise TftpConfigError("max_sessions and max_sessions_per_guest must be >= 1")
        if self.transfer_ports is not None:
            lo, hi = self.transfer_ports
            if not 1 <= lo <= hi <= 0xFFFF or lo <= TFTP_PORT <= hi:
                raise TftpConfigError(f"transfer_ports {lo}-{hi} must be within 1-65535 and leave out 69")
            if hi - lo + 1 < self.max_sessions:
                raise TftpConfigError(f"transfer_ports {lo}-{hi} hold fewer than max_sessions {self.max_sessions}")
        if self.max_filename < 1:
            raise TftpConfigError(f"max_filename {self.max_filename} < 1")


@dataclass(slots=True)
class TftpStats:
    requests: int = 0  # RRQs that parsed
    transfers: int = 0  # transfers started
    completed: int = 0  # last block acknowledged
    timed_out: int = 0
    aborted: int = 0  # the client sent an ERROR
    replaced: int = 0  # a new request from the same client ended its transfer
    read_errors: int = 0
    duplicate_requests: int = 0
    write_refused: int = 0
    mode_refused: int = 0
    name_refused: int = 0  # the engine's own checks
    open_refused: int = 0  # the FileSource said not found / access violation
    over_capacity: int = 0
    malformed: int = 0  # did not parse, or an opcode that has no business there
    unknown_tid: int = 0
    stray: int = 0  # ACKs and ERRORs at port 69 for no transfer
    duplicate_acks: int = 0
    old_acks: int = 0  # ACKs for blocks before the window, or never sent
    oacks: int = 0
    data_packets: int = 0  # DATA sent, retransmissions included
    data_bytes: int = 0
    retransmits: int = 0  # DATA/OACK packets sent again
    errors_sent: int = 0


class _Session:
    __slots__ = ("acked", "base_rto", "blksize", "client", "deadline", "final", "fresh", "guest", "handle", "netascii",
                 "pending", "port", "progress_at", "request", "rto", "sent", "src_off", "windowsize")

    def __init__(self, client: Hashable, port: int, guest: Hashable, handle: FileHandle, request: bytes) -> None:
        self.client = client
        self.port = port
        self.guest = guest
        self.handle = handle
        self.request = request
        self.blksize = DEFAULT_BLKSIZE
        self.windowsize = 1
        self.netascii = False
        self.base_rto = self.rto = 1.0
        #: Absolute number of the last acknowledged block (0 = the OACK, or nothing yet; -1 = OACK owed).
        self.acked = 0
        #: The packets in flight: absolute blocks acked+1, acked+2, ...
        self.sent: list[bytes] = []
        #: Absolute number of the last block once it has been read, else -1.
        self.final = -1
        #: No ACK has moved the window yet (a repeat of the request is then a retransmission).
        self.fresh = True
        self.src_off = 0
        self.pending = bytearray()  # netascii converted but not yet sent
        self.deadline = 0.0
        self.progress_at = 0.0


class TftpServer:
    """Read-only TFTP: ``receive`` datagrams, send what it returns, drive ``get_timer``/``handle_timer``."""

    __slots__ = ("_by_client", "_by_port", "_closed", "_cursor", "_per_guest", "_timer", "_timer_dirty",
                 "cfg", "files", "stats")

    def __init__(self, files: FileSource, cfg: TftpConfig | None = None, *, rng: random.Random | None = None) -> None:
        """``rng`` picks where the search for free transfer ports starts (tests pass a seeded one)."""
        self.files = files
        self.cfg = cfg = cfg if cfg is not None else TftpConfig()
        self.stats = TftpStats()
        self._by_client: dict[Hashable, _Session] = {}
        self._by_port: dict[int, _Session] = {}
        self._per_guest: dict[Hashable, int] = {}
        self._closed: list[tuple[Hashable, int]] = []
        self._timer: float | None = None
        self._timer_dirty = False
        lo, hi = cfg.transfer_ports or (0, 0)
        self._cursor = (rng or random.SystemRandom()).randint(lo, hi)

    # -- inputs ---------------------------------------------------------------------------------------------
    def receive(
        self, client: Hashable, port: int, payload: BytesLike, now: float, guest: Hashable = None
    ) -> list[Datagram]:
        """A datagram from ``client`` to the server-side ``port`` (69 for requests, or a transfer's port).

        ``guest`` is the key per-guest caps count by (None: the client itself).  ``payload`` is only
        read during the call.  Returns the datagrams to send, in order."""
        out: list[Datagram] = []
        if self.cfg.transfer_ports is None or port != TFTP_PORT:
            session = self._by_client.get(client) if port == TFTP_PORT else self._by_port.get(port)
            if session is not None and session.client == client and session.port == port:
                block = ack_block(payload)
                if block is not None:
                    self._ack(session, block, now, out)
                    return out
                if len(payload) >= 2 and payload[0] == 0 and payload[1] == OP_ERROR:
                    self.stats.aborted += 1
                    self._close(session)
                    return out
                if port != TFTP_PORT or not self._is_request(payload):
                    self.stats.malformed += 1
                    self._error(out, client, port, ERR_ILLEGAL_OP, b"Illegal TFTP operation")
                    self._close(session)
                    return out
            elif port != TFTP_PORT:
                if not (len(payload) >= 2 and payload[0] == 0 and payload[1] == OP_ERROR):
                    self.stats.unknown_tid += 1
                    self._error(out, client, port, ERR_UNKNOWN_TID, b"Unknown transfer ID")
                return out
        # The request port: requests start transfers, everything else is refused or dropped.
        if len(payload) >= 2 and payload[0] == 0 and payload[1] in (OP_RRQ, OP_WRQ):
            if payload[1] == OP_WRQ:
                self.stats.write_refused += 1
                self._error(out, client, port, ERR_ACCESS, b"Access violation: read-only server")
            else:
                self._request(client, port, payload, now, client if guest is None else guest, out)
        elif ack_block(payload) is not None or (len(payload) >= 2 and payload[0] == 0 and payload[1] == OP_ERROR):
            self.stats.stray += 1
        else:
            self.stats.malformed += 1
            self._error(out, client, port, ERR_ILLEGAL_OP, b"Illegal TFTP operation")
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is next due (None: no transfer)."""
        if self._timer_dirty:
            self._timer = min((s.deadline for s in self._by_client.values()), default=None)
            self._timer_dirty = False
        return self._timer

    def handle_timer(self, now: float) -> list[Datagram]:
        out: list[Datagram] = []
        cfg = self.cfg
        for s in [s for s in self._by_client.values() if s.deadline <= now]:
            if now - s.progress_at >= cfg.session_timeout:
                self.stats.timed_out += 1
                self._close(s)
                continue
            self.stats.retransmits += len(s.sent)
            self._transmit(s, out)
            s.rto = min(s.rto * 2, max(cfg.max_rto, s.base_rto))
            self._arm(s, now)
        return out

    def take_closed(self) -> list[tuple[Hashable, int]]:
        """``(client, port)`` of every transfer that ended since the last call."""
        closed, self._closed = self._closed, []
        return closed

    def active(self, guest: Hashable = None) -> int:
        """Transfers in progress, all of them or one guest's."""
        return len(self._by_client) if guest is None else self._per_guest.get(guest, 0)

    def has_port(self, port: int) -> bool:
        """Whether a transfer is using server-side ``port`` (for a caller routing datagrams to it)."""
        return port in self._by_port

    def close(self) -> None:
        """End every transfer (nothing is sent) and close their files."""
        for s in list(self._by_client.values()):
            self._close(s)

    # -- requests -------------------------------------------------------------------------------------------
    @staticmethod
    def _is_request(payload: BytesLike) -> bool:
        return len(payload) >= 2 and payload[0] == 0 and payload[1] in (OP_RRQ, OP_WRQ)

    def _request(self, client: Hashable, port: int, payload: BytesLike, now: float, guest: Hashable,
                 out: list[Datagram]) -> None:
        stats, cfg = self.stats, self.cfg
        try:
            req = TftpRequest.parse(payload)
        except WireError:
            stats.malformed += 1
            self._error(out, client, port, ERR_ILLEGAL_OP, b"Illegal TFTP operation: malformed request")
            return
        stats.requests += 1
        raw = bytes(payload)
        old = self._by_client.get(client)
        if old is not None:
            if old.request == raw and old.fresh:
                stats.duplicate_requests += 1  # a retransmitted RRQ: our own timer answers it
                return
            stats.replaced += 1
            self._close(old)
        mode = req.mode.lower()
        if mode != b"octet" and not (mode == b"netascii" and cfg.netascii):
            stats.mode_refused += 1
            self._error(out, client, port, ERR_ILLEGAL_OP, b"Unsupported transfer mode")
            return
        name = self._check_name(req.filename)
        if isinstance(name, tuple):
            stats.name_refused += 1
            self._error(out, client, port, *name)
            return
        if len(self._by_client) >= cfg.max_sessions or self._per_guest.get(guest, 0) >= cfg.max_sessions_per_guest:
            stats.over_capacity += 1
            self._error(out, client, port, ERR_UNDEFINED, b"Too many transfers, try again later")
            return
        handle = self.files.open(name)
        if isinstance(handle, int):
            stats.open_refused += 1
            code = handle if handle in _MESSAGES else ERR_ACCESS
            self._error(out, client, port, code, _MESSAGES[code])
            return
        tport = self._new_port() if cfg.transfer_ports is not None else port
        s = _Session(client, tport, guest, handle, raw)
        s.netascii = mode == b"netascii"
        s.base_rto = s.rto = cfg.rto
        acked = self._negotiate(s, req)
        self._by_client[client] = s
        if cfg.transfer_ports is not None:
            self._by_port[tport] = s
        self._per_guest[guest] = self._per_guest.get(guest, 0) + 1
        stats.transfers += 1
        s.progress_at = now
        if acked:
            stats.oacks += 1
            s.acked = -1
            s.sent.append(encode_oack(acked))
        elif not self._fill(s):
            self._read_failed(s, out)
            return
        self._transmit(s, out)
        self._arm(s, now)

    def _check_name(self, filename: bytes) -> str | tuple[int, bytes]:
        """The name as the FileSource gets it, or the TFTP error (code, message) that refuses it."""
        if not filename:
            return ERR_NOT_FOUND, b"File not found"
        if len(filename) > self.cfg.max_filename:
            return ERR_ACCESS, b"Access violation: file name too long"
        if any(b < 0x20 or b == 0x7F or b == 0x5C for b in filename):
            return ERR_ACCESS, b"Access violation: control character or backslash in the file name"
        try:
            text = filename.decode("utf-8")
        except UnicodeDecodeError:
            return ERR_ACCESS, b"Access violation: file name is not UTF-8"
        parts = [p for p in text.split("/") if p and p != "."]
        if ".." in parts:
            return ERR_ACCESS, b"Access violation: '..' in the file name"
        if not parts or filename.endswith(b"/"):
            return ERR_ACCESS, b"Access violation: not a file"
        return "/".join(parts)

    def _negotiate(self, s: _Session, req: TftpRequest) -> list[tuple[bytes, bytes]]:
        """Apply the options we accept (RFC 2347 order kept); return the OACK's list."""
        cfg = self.cfg
        acked: list[tuple[bytes, bytes]] = []
        seen: set[bytes] = set()
        window_at = -1
        window_asked = 0
        for raw_name, raw_value in req.options:
            name = raw_name.lower()
            if name in seen:
                continue
            seen.add(name)
            if name == b"tsize":
                # RFC 2349: an RRQ carries 0 here; the value means nothing in a read, and atftp 0.8's
                # documented `--option "tsize enable"` sends "enable" (libslirp's atoi() takes it too).
                if not s.netascii:
                    acked.append((b"tsize", str(s.handle.size).encode()))
                continue
            value = _option_int(raw_value)
            if value is None:
                continue
            if name == b"blksize":
                if value >= BLKSIZE_MIN:
                    s.blksize = min(value, cfg.max_blksize)
                    acked.append((b"blksize", str(s.blksize).encode()))
            elif name == b"timeout":
                if 1 <= value <= 255:
                    s.base_rto = s.rto = float(value)
                    acked.append((b"timeout", str(value).encode()))
            elif name == b"windowsize" and 1 <= value <= 0xFFFF:
                window_at = len(acked)
                window_asked = value
        if window_at >= 0:  # after the loop: the byte cap depends on blksize, in whatever order it came
            s.windowsize = max(1, min(window_asked, cfg.max_windowsize, cfg.max_window_bytes // s.blksize))
            acked.insert(window_at, (b"windowsize", str(s.windowsize).encode()))
        return acked

    def _new_port(self) -> int:
        lo, hi = self.cfg.transfer_ports or (0, 0)
        port = self._cursor
        while port in self._by_port:
            port = lo if port >= hi else port + 1
        self._cursor = lo if port >= hi else port + 1
        return port

    # -- transfers ------------------------------------------------------------------------------------------
    def _ack(self, s: _Session, block: int, now: float, out: list[Datagram]) -> None:
        lo = s.acked + 1
        n = lo + ((block - lo) & 0xFFFF)
        if n >= lo + len(s.sent):
            if block == s.acked & 0xFFFF:
                self.stats.duplicate_acks += 1
            else:
                self.stats.old_acks += 1
            return
        del s.sent[: n - s.acked]
        s.acked = n
        s.fresh = False
        s.progress_at = now
        s.rto = s.base_rto
        if n == s.final:
            self.stats.completed += 1
            self._close(s)
            return
        if s.final < 0 and not self._fill(s):
            self._read_failed(s, out)
            return
        self._transmit(s, out)
        self._arm(s, now)

    def _fill(self, s: _Session) -> bool:
        """Read blocks until the window is full or the last block is in it; False on a read error."""
        want = s.windowsize - len(s.sent)
        blksize = s.blksize
        size = s.handle.size
        try:
            while want > 0 and s.final < 0:
                if s.netascii:
                    data = self._netascii_block(s)
                else:
                    n = min(blksize, size - s.src_off)
                    data = s.handle.read(s.src_off, n)[:n] if n > 0 else b""
                    s.src_off += len(data)
                absolute = s.acked + 1 + len(s.sent)
                s.sent.append(_DATA_HEAD.pack(_OP_DATA, absolute & 0xFFFF) + data)
                if len(data) < blksize:
                    s.final = absolute
                want -= 1
        except OSError:
            return False
        return True

    @staticmethod
    def _netascii_block(s: _Session) -> bytes:
        pending, blksize, size = s.pending, s.blksize, s.handle.size
        while len(pending) < blksize and s.src_off < size:
            n = min(blksize, size - s.src_off)
            chunk = s.handle.read(s.src_off, n)[:n]
            if not chunk:
                break  # the file shrank: end here
            s.src_off += len(chunk)
            # RFC 764: CR is sent as CR NUL, end of line as CR LF (CR first, or LF's CR gets a NUL too).
            pending += chunk.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
        data = bytes(pending[:blksize])
        del pending[:blksize]
        if len(data) < blksize:
            s.src_off = size  # a short read ends the file even if it grew
        return data

    def _transmit(self, s: _Session, out: list[Datagram]) -> None:
        client, port, stats = s.client, s.port, self.stats
        for packet in s.sent:
            out.append((client, port, packet))
            if packet[1] == _OP_DATA:
                stats.data_packets += 1
                stats.data_bytes += len(packet) - 4

    def _arm(self, s: _Session, now: float) -> None:
        s.deadline = min(now + s.rto, s.progress_at + self.cfg.session_timeout)
        self._timer_dirty = True

    def _read_failed(self, s: _Session, out: list[Datagram]) -> None:
        self.stats.read_errors += 1
        self._error(out, s.client, s.port, ERR_UNDEFINED, b"Read error")
        self._close(s)

    def _error(self, out: list[Datagram], client: Hashable, port: int, code: int, message: bytes) -> None:
        self.stats.errors_sent += 1
        out.append((client, port, encode_error(code, message)))

    def _close(self, s: _Session) -> None:
        if self._by_client.get(s.client) is s:
            del self._by_client[s.client]
        if self._by_port.get(s.port) is s:
            del self._by_port[s.port]
        left = self._per_guest.get(s.guest, 0) - 1
        if left > 0:
            self._per_guest[s.guest] = left
        else:
            self._per_guest.pop(s.guest, None)
        self._closed.append((s.client, s.port))
        self._timer_dirty = True
        s.sent = []
        with contextlib.suppress(OSError):
            s.handle.close()


def _option_int(value: bytes) -> int | None:
    """An RFC 2347 option value as a decimal integer, or None (ignored) when it is not one."""
    if not value or len(value) > _MAX_OPTION_DIGITS or not value.isdigit():
        return None
    return int(value)
