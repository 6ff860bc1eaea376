"""One TCP endpoint toward the guest, as a sans-IO engine: the heart of vmlan's ``-netdev user``.

The user-mode stack terminates each guest TCP connection here and relays the byte stream to a host
socket, as libslirp does. This module is the guest-facing half only. It never reads a clock and never
touches a socket: time is an argument, output is returned (:meth:`TcpConnection.segments_to_send`),
what happened is reported as events (:meth:`TcpConnection.next_event`) and the next deadline as
:meth:`TcpConnection.get_timer` (the model is aioquic's ``QuicConnection`` and h11). The I/O layer owns
the host socket and wraps our segments in IPv4 and Ethernet.

What it implements, and why it is shaped this way:

* RFC 9293 state machine, both opens. A passive open (:meth:`TcpConnection.from_syn`) stays silent
  until :meth:`~TcpConnection.accept` or :meth:`~TcpConnection.refuse`: vmlan answers the guest only
  once the host ``connect()`` has finished, so a refused host port is a refused guest connect (libslirp
  does the same). Its state until then is ``"LISTEN"`` (a SYN is queued, nothing has been answered).
* Options: MSS (ours is :attr:`TcpParams.mss`; the peer's is honoured, 536 when absent) and window
  scaling (RFC 7323; used only when both SYNs carry it). Timestamps and SACK are not offered, so a
  conforming guest never sends them; if it does anyway they are ignored. Without SACK a loss costs one
  round trip to repair, which on a virtual link is microseconds.
* Sending: segments of ``min(peer MSS, our MSS)`` (up to 65495 bytes, GSO-sized), limited by the
  peer's scaled window and a NewReno congestion window (RFC 5681/6582: initial window 10 segments,
  RFC 6928; slow start grows by every byte acknowledged, RFC 3465 without the L limit, because the
  guest is one memory copy away; "slow-but-steady" timer restarts on partial ACKs; after an RTO,
  go-back-N from SND.UNA with a one-segment window). No Nagle: we are a relay, the host side already
  decided what to push. RTO per RFC 6298 (Karn's algorithm, exponential backoff, one timed segment per round trip),
  fast retransmit on the third duplicate ACK, zero-window probing with a persist timer, and sender
  silly-window avoidance (RFC 9293 3.8.6.2.1) with the persist timer as the override timeout.
* Receiving: in-order data is coalesced into one :class:`DataReceived` per :meth:`~TcpConnection.next_event`
  call; out-of-order data is kept (non-overlapping blocks, bounded by the advertised window) until the
  gap fills. ACK for every second segment or after :attr:`TcpParams.delayed_ack` (40 ms), at once for
  out-of-order data, gap fills, FINs and window probes. The window is the free space of
  :attr:`TcpParams.rcv_buffer` (bytes accepted but not yet :meth:`~TcpConnection.consume`\\ d by the host
  side). The furthest right edge ever offered never moves left (the field itself rounds down by less
  than one scale unit, which RFC 7323 2.4 allows), and it opens in steps of at least
  ``min(buffer/2, MSS)`` (receiver silly-window avoidance, RFC 9293 3.8.6.2.2).
* Robustness: the guest is untrusted (libslirp's CVEs came from guest input). Every segment either
  takes a defined RFC 9293 3.10.7 path or is dropped and counted; :meth:`~TcpConnection.receive_segment`
  never raises. RST and SYN are validated as in RFC 5961 (exact sequence match resets, in-window gets a
  challenge ACK; ACKs outside ``[SND.UNA - MAX.SND.WND, SND.MAX]`` are discarded). A guest MSS below 64
  is raised to 64 (the "SACK panic" class of CPU exhaustion). Memory per connection is bounded by the
  two buffers plus less than one window-scale unit (out-of-order data lies inside the window).
* Three details from real stacks, each found necessary by the tests: segments without data carry
  ``min(SND.MAX, SND.UNA + SND.WND)`` as their sequence number (Linux's ``tcp_acceptable_seq``), not a
  go-back-N ``SND.NXT`` the guest would find too old; the ACK field of an old duplicate segment is still
  processed (BSD), so two ends retransmitting to each other cannot deadlock; zero-window probes are
  ``SND.UNA - 1`` without data (Linux), and a window smaller than one scale unit is announced as one
  unit rather than as zero (Linux rounds up too), or a small buffer under a large shift would read as
  closed forever.
* Contract with the caller: after any input call :meth:`~TcpConnection.segments_to_send` first, then
  :meth:`~TcpConnection.get_timer` (retransmission timers are armed when their segment is produced).
* No leaks: every state ends in :class:`Closed` within bounded time -- retransmission and SYN retry
  limits, unanswered zero-window probes, keepalive (ESTABLISHED/CLOSE_WAIT/FIN_WAIT_2), a FIN_WAIT_2
  idle timeout and a short TIME_WAIT. The one exception is ``"LISTEN"``: the caller's host ``connect()``
  timeout bounds it (the engine cannot know how long a host connect may take).

Performance: this is the hot path of the user stack, so the data path avoids per-segment objects.
Sequence numbers are kept unwrapped (plain growing ints; only the wire is modulo 2**32, converted
with one subtraction and mask per segment). The send buffer is one ``bytearray`` whose acknowledged
prefix is deleted (O(1) amortised in CPython); outgoing payloads are memoryview slices of it, copied
exactly once into the segment. Each header is one ``struct.pack`` whose checksum was computed before
packing, from the fields' arithmetic sum plus :func:`~vmlan.wire.checksum.ones_complement_sum` of the
payload (numpy-backed for big segments).
"""

from __future__ import annotations

import bisect
import struct
from collections import deque
from dataclasses import dataclass
from typing import Final, TypeAlias

from vmlan.wire.checksum import internet_checksum, ones_complement_sum, pseudo_header_sum_v4
from vmlan.wire.errors import SanityError, WireError
from vmlan.wire.tcp import ACK, FIN, PSH, RST, SYN, TCP_HLEN, TcpHeader, TcpOptions

__all__ = [
    "CLOSED",
    "CLOSE_WAIT",
    "CLOSING",
    "ESTABLISHED",
    "FIN_WAIT_1",
    "FIN_WAIT_2",
    "LAST_ACK",
    "LISTEN",
    "SYN_RECEIVED",
    "SYN_SENT",
    "TIME_WAIT",
    "Closed",
    "Connected",
    "DataReceived",
    "EndOfStream",
    "Event",
    "Reset",
    "TcpConnection",
    "TcpCounters",
    "TcpParams",
    "TcpStateError",
]

# RFC 9293 state names, underscored. "LISTEN" is the passive open before accept()/refuse().
LISTEN: Final = "LISTEN"
SYN_SENT: Final = "SYN_SENT"
SYN_RECEIVED: Final = "SYN_RECEIVED"
ESTABLISHED: Final = "ESTABLISHED"
FIN_WAIT_1: Final = "FIN_WAIT_1"
FIN_WAIT_2: Final = "FIN_WAIT_2"
CLOSE_WAIT: Final = "CLOSE_WAIT"
CLOSING: Final = "CLOSING"
LAST_ACK: Final = "LAST_ACK"
TIME_WAIT: Final = "TIME_WAIT"
CLOSED: Final = "CLOSED"

# States that may (re)transmit data or a FIN, and states that accept data from the guest.
_SENDING = frozenset((ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, CLOSING, LAST_ACK))
_RECEIVING = frozenset((ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2))
# Where keepalive runs: the states no other timer bounds while the connection is idle.
_KEEPALIVE = frozenset((ESTABLISHED, CLOSE_WAIT, FIN_WAIT_2))
# Where send() still queues data (before the handshake too: a hostfwd client may write at once).
_CAN_QUEUE = frozenset((LISTEN, SYN_SENT, SYN_RECEIVED, ESTABLISHED, CLOSE_WAIT))

_M32: Final = 0xFFFFFFFF
_HALF: Final = 0x80000000
_WRAP: Final = 1 << 32
_HDR = struct.Struct("!HHIIBBHHH")
_IPPROTO_TCP: Final = 6
_DEFAULT_MSS: Final = 536  # RFC 9293 3.7.1: the MSS to assume when the SYN carries none
_MIN_MSS: Final = 64  # floor for a guest's MSS (a tiny MSS turns a transfer into a CPU sink)
_MAX_MSS: Final = 65495  # 65535 - 20 (IPv4) - 20 (TCP): the largest payload an IPv4 datagram holds
_MAX_WSCALE: Final = 14  # RFC 7323 2.3
_CLOCK_G: Final = 0.001  # RFC 6298's clock granularity G: our times are floats, call it 1 ms
_OOO_MAX_BLOCKS: Final = 4096  # out-of-order blocks kept; bounds the list a hostile guest can grow
_MAX_DUP_ACKS_OUT: Final = 8  # duplicate ACKs emitted per segments_to_send() call


class TcpStateError(RuntimeError):
    """The caller used the API in a state that forbids it (send() after shutdown(), accept() twice)."""


@dataclass(frozen=True, slots=True)
class TcpParams:
    """Tunables of one connection. Times are seconds.

    ``time_wait`` is 1 s instead of RFC 9293's 2 MSL (minutes): TIME_WAIT protects a *host's* port
    reuse from old duplicates wandering the Internet. Here the "network" is a virtual link with
    microseconds of delay and no path to duplicate segments for longer than a guest RTO, and the
    4-tuple's owner is the guest, which picks its ports; what is left of TIME_WAIT's job is to ACK a
    retransmitted FIN if our last ACK was lost, and one second covers several guest retransmissions.

    ``fin_wait_2_timeout`` closes a half-closed connection (we sent our FIN, the guest acknowledged it
    but keeps its side open) after that many seconds *without any segment from the guest*. Linux's
    ``tcp_fin_timeout`` is 60 s but applies only to orphaned sockets; we cannot tell a host peer that
    shut down writing but still reads from one that is gone, so ours is an idle timer (a long
    half-closed download keeps running) and longer than a guest's worst RTO backoff (Linux: 120 s),
    so a guest recovering from loss is not cut off. ``None`` disables it.

    ``keepalive_idle``: after that many seconds of guest silence in ESTABLISHED, CLOSE_WAIT or
    FIN_WAIT_2 we send a keepalive probe every ``keepalive_interval`` seconds and reset the connection
    after ``keepalive_probes`` unanswered ones (Linux's defaults: 7200/75/9). A guest that crashed or
    rebooted answers with nothing or with a RST, so dead connections are reclaimed even if the host
    side is idle too. ``None`` disables keepalive.
    """

    mss: int = 1460
    wscale: int = 7
    rcv_buffer: int = 1 << 20
    snd_buffer: int = 1 << 20
    rto_initial: float = 1.0
    rto_min: float = 0.2
    rto_max: float = 60.0
    max_retransmits: int = 12
    syn_retries: int = 6
    time_wait: float = 1.0
    fin_wait_2_timeout: float | None = 300.0
    delayed_ack: float = 0.04
    keepalive_idle: float | None = 7200.0
    keepalive_interval: float = 75.0
    keepalive_probes: int = 9
    initial_window: int = 10

    def __post_init__(self) -> None:
        if not _MIN_MSS <= self.mss <= _MAX_MSS:
            raise ValueError(f"mss {self.mss} outside {_MIN_MSS}..{_MAX_MSS}")
        if not 0 <= self.wscale <= _MAX_WSCALE:
            raise ValueError(f"wscale {self.wscale} outside 0..{_MAX_WSCALE}")
        if self.rcv_buffer < 1 or self.snd_buffer < 1:
            raise ValueError("buffers must be at least 1 byte")
        if not 0 < self.rto_min <= self.rto_initial <= self.rto_max:
            raise ValueError("need 0 < rto_min <= rto_initial <= rto_max")
        if self.max_retransmits < 1 or self.syn_retries < 0 or self.keepalive_probes < 1:
            raise ValueError("retry limits must be positive")
        if self.time_wait < 0 or not 0 < self.delayed_ack <= 0.5 or self.keepalive_interval <= 0:
            raise ValueError("bad time_wait, delayed_ack or keepalive_interval")
        if self.initial_window < 1:
            raise ValueError("initial_window must be at least 1 segment")


# -- events -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """The three-way handshake completed (either direction)."""


@dataclass(frozen=True, slots=True)
class DataReceived:
    """In-order bytes from the guest. Call :meth:`TcpConnection.consume` once the host took them."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The guest sent FIN: no more data will come (the other direction keeps working)."""


@dataclass(frozen=True, slots=True)
class Reset:
    """The guest reset the connection (a :class:`Closed` follows)."""


@dataclass(frozen=True, slots=True)
class Closed:
    """Terminal: the connection is gone and may be forgotten. ``reason`` is one of the strings below.

    ``"closed"`` (orderly, both FINs), ``"reset"`` (guest RST), ``"refused"`` (:meth:`TcpConnection.refuse`
    or the guest refused our active open), ``"aborted"`` (:meth:`TcpConnection.abort`), ``"timeout"``
    (retransmission limit), ``"syn timeout"``, ``"persist timeout"`` (zero-window probes unanswered),
    ``"keepalive timeout"``, ``"fin_wait_2 timeout"``, ``"reused"`` (the guest opened a new connection
    on the same ports during TIME_WAIT).
    """

    reason: str


Event: TypeAlias = Connected | DataReceived | EndOfStream | Reset | Closed


class TcpCounters:
    """Per-connection counters (plain ints; :meth:`as_dict` for reporting)."""

    __slots__ = (
        "bad_checksum",
        "bytes_in",
        "bytes_out",
        "challenge_acks",
        "dropped",
        "dup_acks",
        "duplicates",
        "fast_retransmits",
        "keepalives",
        "malformed",
        "ooo_dropped",
        "ooo_segments",
        "out_of_window",
        "retransmits",
        "segments_in",
        "segments_out",
        "timeouts",
        "window_probes",
    )

    def __init__(self) -> None:
        self.segments_in = 0  # every segment handed to receive_segment()
        self.segments_out = 0
        self.bytes_in = 0  # guest payload bytes accepted in order
        self.bytes_out = 0  # payload bytes sent, retransmissions included
        self.retransmits = 0  # segments sent again (RTO, fast retransmit, go-back-N)
        self.fast_retransmits = 0
        self.timeouts = 0  # RTO expirations that retransmitted (the one that gives up is not counted)
        self.dup_acks = 0  # duplicate ACKs received
        self.bad_checksum = 0
        self.malformed = 0  # too short, bad data offset, wrong ports, bad SYN options
        self.out_of_window = 0  # beyond our window, or acknowledging what we never sent
        self.duplicates = 0  # left of our window or already held: retransmissions, keepalives, probes
        self.ooo_segments = 0  # segments kept for later because of a gap
        self.ooo_dropped = 0  # out-of-order data dropped because the block list was full
        self.challenge_acks = 0  # RFC 5961 challenge ACKs sent
        self.window_probes = 0  # zero-window probes sent
        self.keepalives = 0  # keepalive probes sent
        self.dropped = 0  # segments that are valid but unexpected in this state

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


def _first(block: tuple[int, bytes]) -> int:
    return block[0]


class TcpConnection:
    """One TCP connection with the guest. Not thread-safe; every method is cheap and non-blocking.

    Driving it: after any input (:meth:`receive_segment`, :meth:`send`, :meth:`consume`,
    :meth:`shutdown`, :meth:`abort`, :meth:`accept`, :meth:`refuse`, :meth:`handle_timer`) the caller
    transmits :meth:`segments_to_send`, drains :meth:`next_event` and re-arms its timer from
    :meth:`get_timer`. Sequence numbers inside are unwrapped integers (``iss`` plus bytes sent), so
    comparisons are plain ``<``; only the wire is modulo 2**32.
    """

    __slots__ = (
        "_ack_now",
        "_buf_seq",
        "_csum_base",
        "_ctl",
        "_cwnd",
        "_cwnd_cap",
        "_dupacks",
        "_dupacks_out",
        "_events",
        "_fast_rexmit",
        "_fin_seq",
        "_force_send",
        "_in_recovery",
        "_irs",
        "_iss",
        "_ka_probes",
        "_lport",
        "_max_snd_wnd",
        "_max_wnd",
        "_ooo",
        "_ooo_fin",
        "_persist_backoff",
        "_probe_pending",
        "_probes_unanswered",
        "_psum_in",
        "_rcv_adv",
        "_rcv_nxt",
        "_rcv_unconsumed",
        "_rcv_wscale",
        "_recover",
        "_retries",
        "_rport",
        "_rto",
        "_rtt_seq",
        "_rtt_time",
        "_rttvar",
        "_rx_data",
        "_segs_unacked",
        "_smss",
        "_snd_max",
        "_snd_nxt",
        "_snd_una",
        "_snd_wl1",
        "_snd_wl2",
        "_snd_wnd",
        "_snd_wscale",
        "_sndbuf",
        "_srtt",
        "_ssthresh",
        "_sws_thresh",
        "_syn_data",
        "_syn_pending",
        "_syn_retransmitted",
        "_t_close",
        "_t_delack",
        "_t_ka",
        "_t_persist",
        "_t_rto",
        "_wscale_ok",
        "counters",
        "local",
        "params",
        "remote",
        "state",
    )

    def __init__(
        self, local: tuple[bytes, int], remote: tuple[bytes, int], params: TcpParams, now: float, isn: int
    ) -> None:
        """Use :meth:`from_syn` or :meth:`connect`."""
        if len(local[0]) != 4 or len(remote[0]) != 4:
            raise ValueError("local and remote need 4-byte IPv4 addresses")
        if not (0 < local[1] <= 0xFFFF and 0 < remote[1] <= 0xFFFF):
            raise ValueError(f"ports must be 1..65535, got {local[1]} and {remote[1]}")
        self.local = (bytes(local[0]), local[1])
        self.remote = (bytes(remote[0]), remote[1])
        self.params = params
        self.state: str = LISTEN  # the constructors set the real one
        self.counters = TcpCounters()
        self._lport = local[1]
        self._rport = remote[1]
        # Checksums: constant parts of the pseudo-header (length is added per segment) and, for output,
        # the ports too, so a data header's checksum is a handful of additions.
        self._psum_in = pseudo_header_sum_v4(self.remote[0], self.local[0], _IPPROTO_TCP, 0)
        self._csum_base = pseudo_header_sum_v4(self.local[0], self.remote[0], _IPPROTO_TCP, 0) + self._lport
        self._csum_base += self._rport
        self._events: deque[Event] = deque()
        self._rx_data = bytearray()
        self._ctl: list[bytes] = []
        # send side
        iss = isn & _M32
        self._iss = iss
        self._snd_una = iss
        self._snd_nxt = iss
        self._snd_max = iss
        self._sndbuf = bytearray()
        self._buf_seq = iss + 1  # sequence number of _sndbuf[0]
        self._fin_seq: int | None = None  # sequence number of our FIN once shutdown() queued it
        self._snd_wnd = 0
        self._snd_wl1 = 0
        self._snd_wl2 = 0
        self._max_snd_wnd = 0
        self._snd_wscale = 0
        self._smss = min(_DEFAULT_MSS, params.mss)
        self._cwnd = 0
        self._cwnd_cap = 0
        self._ssthresh = 1 << 62
        self._dupacks = 0
        self._recover = iss
        self._in_recovery = False
        self._fast_rexmit = False
        self._force_send = False
        self._probe_pending = False
        self._probes_unanswered = 0
        self._persist_backoff = 0
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._rto = params.rto_initial
        self._rtt_seq: int | None = None
        self._rtt_time = 0.0
        self._retries = 0
        self._syn_pending = False
        self._syn_retransmitted = False
        self._wscale_ok = False
        # receive side
        self._irs = 0
        self._rcv_nxt = 0
        self._rcv_adv = 0  # right edge of the window we advertised (never moves left)
        self._rcv_wscale = 0
        self._max_wnd = 0xFFFF  # largest window the header can express (grows with scaling)
        self._rcv_unconsumed = 0
        self._sws_thresh = max(1, min(params.rcv_buffer // 2, params.mss))
        self._ooo: list[tuple[int, bytes]] = []  # sorted, non-overlapping (start, data)
        self._ooo_fin: int | None = None
        self._syn_data = 0
        self._segs_unacked = 0
        self._ack_now = False
        self._dupacks_out = 0
        self._ka_probes = 0
        # timers (absolute times or None)
        self._t_rto: float | None = None
        self._t_persist: float | None = None
        self._t_delack: float | None = None
        self._t_close: float | None = None  # TIME_WAIT end or FIN_WAIT_2 idle limit
        self._t_ka: float | None = None

    # -- opening --------------------------------------------------------------------------------------------
    @classmethod
    def from_syn(
        cls,
        local: tuple[bytes, int],
        remote: tuple[bytes, int],
        syn: TcpHeader | bytes | bytearray | memoryview,
        params: TcpParams,
        now: float,
        isn: int,
    ) -> TcpConnection:
        """Passive open from the guest's SYN; sends nothing until :meth:`accept`/:meth:`refuse`.

        ``syn`` is the raw segment (header and payload; its checksum is verified here) or a
        :class:`~vmlan.wire.tcp.TcpHeader` the caller already parsed and verified. A segment that is not
        a valid bare SYN for these addresses raises :class:`~vmlan.wire.errors.WireError` (the caller's
        malformed-packet path). Data carried by the SYN is not acknowledged: the guest sends it again.
        """
        conn = cls(local, remote, params, now, isn)
        if isinstance(syn, TcpHeader):
            header = syn
        else:
            header, start, end = TcpHeader.parse(syn, src_addr=conn.remote[0], dst_addr=conn.local[0])
            conn._syn_data = end - start
        if header.flags & (SYN | ACK | RST | FIN) != SYN:
            raise SanityError("TCP", f"passive open needs a bare SYN, got flags {header.flags:#04x}")
        if header.sport != conn._rport or header.dport != conn._lport:
            raise SanityError("TCP", f"SYN for ports {header.sport}->{header.dport}, not {remote[1]}->{local[1]}")
        conn.state = LISTEN
        conn._take_syn(header.seq, header.options)
        # The SYN-ACK's window is not scaled (RFC 7323 2.2): what the guest sees until it has our ACK.
        conn._snd_wnd = header.window
        conn._max_snd_wnd = header.window
        return conn

    @classmethod
    def connect(
        cls, local: tuple[bytes, int], remote: tuple[bytes, int], params: TcpParams, now: float, isn: int
    ) -> TcpConnection:
        """Active open toward the guest (QEMU's hostfwd: a host client connected, we dial the guest)."""
        conn = cls(local, remote, params, now, isn)
        conn.state = SYN_SENT
        conn._syn_pending = True
        return conn

    def _take_syn(self, seq: int, options: TcpOptions) -> None:
        """Record the guest's SYN: its ISN and the options it offered."""
        self._irs = seq
        self._rcv_nxt = seq + 1
        mss = options.mss if options.mss is not None else _DEFAULT_MSS
        self._smss = min(max(mss, _MIN_MSS), self.params.mss)
        if options.wscale is not None:
            self._wscale_ok = True
            self._snd_wscale = min(options.wscale, _MAX_WSCALE)
        else:
            self._wscale_ok = False
            self._snd_wscale = 0

    def accept(self, now: float) -> None:
        """The host side is connected: answer the guest's SYN with our SYN-ACK."""
        if self.state == CLOSED:
            return  # the guest gave up (RST) while the host connect was pending
        if self.state != LISTEN:
            raise TcpStateError(f"accept() in state {self.state}")
        self.state = SYN_RECEIVED
        if self._wscale_ok:
            self._rcv_wscale = self.params.wscale
        self._syn_pending = True

    def refuse(self, now: float) -> None:
        """The host refused: RST|ACK to the guest's SYN (its ``connect()`` fails with ECONNREFUSED)."""
        if self.state == CLOSED:
            return
        if self.state != LISTEN:
            self.abort(now)
            return
        self._queue_rst(0, self._rcv_nxt + self._syn_data, RST | ACK)
        self._finish("refused")

    # -- host-side operations -------------------------------------------------------------------------------
    def send_space(self) -> int:
        """How many bytes :meth:`send` would accept now."""
        if self.state not in _CAN_QUEUE or self._fin_seq is not None:
            return 0
        return max(0, self.params.snd_buffer - len(self._sndbuf))

    def send(self, data: bytes | bytearray | memoryview, now: float) -> int:
        """Queue host bytes for the guest; returns how many were taken (at most :meth:`send_space`).

        Returns 0 once the connection is closed or reset (the events say why). Raises
        :class:`TcpStateError` after :meth:`shutdown`: the caller promised no more data.
        """
        if self._fin_seq is not None:
            raise TcpStateError("send() after shutdown()")
        if self.state not in _CAN_QUEUE:
            return 0
        n = min(len(data), self.params.snd_buffer - len(self._sndbuf))
        if n <= 0:
            return 0
        if n == len(data):
            self._sndbuf += data
        else:
            with memoryview(data) as view:
                self._sndbuf += view[:n]
        return n

    def shutdown(self, now: float) -> None:
        """Host EOF: send FIN after everything queued. Idempotent; receiving continues (half-close)."""
        if self._fin_seq is not None or self.state in (CLOSED, TIME_WAIT):
            return
        self._fin_seq = self._buf_seq + len(self._sndbuf)
        if self.state == ESTABLISHED:
            self.state = FIN_WAIT_1
        elif self.state == CLOSE_WAIT:
            self.state = LAST_ACK
        # LISTEN / SYN_SENT / SYN_RECEIVED: the FIN goes out once the handshake completes.

    def abort(self, now: float) -> None:
        """Host error: reset the guest's connection now (no-op once closed)."""
        state = self.state
        if state == CLOSED:
            return
        if state == LISTEN:
            self._queue_rst(0, self._rcv_nxt + self._syn_data, RST | ACK)
        elif state != SYN_SENT and state != TIME_WAIT:
            self._queue_rst(self._ack_seq(), self._rcv_nxt, RST | ACK)
        self._finish("aborted")

    def consume(self, n: int) -> None:
        """The host side took ``n`` received bytes: reopen the window by that much.

        A window update is sent at once only when it matters (the window at least doubles and grows by
        ``min(buffer/2, MSS)``, Linux's rule); otherwise the new window rides on the next ACK.
        """
        if n < 0 or n > self._rcv_unconsumed:
            raise ValueError(f"consume({n}) but only {self._rcv_unconsumed} bytes are unconsumed")
        self._rcv_unconsumed -= n
        if self.state in _RECEIVING:
            cur = self._rcv_adv - self._rcv_nxt
            free = self.params.rcv_buffer - self._rcv_unconsumed
            if free - cur >= self._sws_thresh and free >= 2 * cur and cur < self._max_wnd:
                self._ack_now = True

    # -- events and timers ----------------------------------------------------------------------------------
    def next_event(self) -> Event | None:
        """The next event, or None. :class:`Closed` is the last one a connection ever returns."""
        if self._events:
            return self._events.popleft()
        if self._rx_data:
            data = bytes(self._rx_data)
            self._rx_data.clear()
            return DataReceived(data)
        return None

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (absolute time), or None.

        Ask after :meth:`segments_to_send`: the retransmission timer of a segment is armed when that
        segment is produced (a SYN due again after :meth:`handle_timer` has no timer until it is sent).
        """
        t = self._t_rto
        for x in (self._t_persist, self._t_delack, self._t_close, self._t_ka):
            if x is not None and (t is None or x < t):
                t = x
        return t

    def handle_timer(self, now: float) -> None:
        """Run every timer that is due at ``now`` (calling it early or twice is harmless)."""
        if self._t_close is not None and now >= self._t_close:
            self._t_close = None
            if self.state == TIME_WAIT:
                self._finish("closed")
                return
            if self.state == FIN_WAIT_2:
                self._queue_rst(self._ack_seq(), self._rcv_nxt, RST | ACK)
                self._finish("fin_wait_2 timeout")
                return
        if self._t_rto is not None and now >= self._t_rto:
            self._t_rto = None
            self._on_rto()
            if self.state == CLOSED:
                return
        if self._t_persist is not None and now >= self._t_persist:
            self._t_persist = None
            self._on_persist()
            if self.state == CLOSED:
                return
        if self._t_delack is not None and now >= self._t_delack:
            self._t_delack = None
            self._ack_now = True
        if self._t_ka is not None and now >= self._t_ka:
            self._t_ka = None
            self._on_keepalive(now)

    def _on_rto(self) -> None:
        p = self.params
        if self.state == SYN_SENT or self.state == SYN_RECEIVED:
            self._retries += 1
            if self._retries > p.syn_retries:
                if self.state == SYN_RECEIVED:
                    self._queue_rst(self._ack_seq(), self._rcv_nxt, RST | ACK)
                self._finish("syn timeout")
                return
            self._syn_pending = True
            self._syn_retransmitted = True
        elif self.state in _SENDING and self._snd_una < self._snd_max:
            self._retries += 1
            if self._retries > p.max_retransmits:
                self._queue_rst(self._ack_seq(), self._rcv_nxt, RST | ACK)
                self._finish("timeout")
                return
            # RFC 5681 (eq. 4) and 6582: halve, restart from one segment, no fast retransmit for the
            # duplicate ACKs our go-back-N retransmission will cause below the old high-water mark.
            self._ssthresh = max((self._snd_max - self._snd_una) // 2, 2 * self._smss)
            self._cwnd = self._smss
            self._recover = self._snd_max
            self._in_recovery = False
            self._dupacks = 0
            self._snd_nxt = self._snd_una
            self._force_send = True  # even into a closed window: the retransmission is the probe
        else:
            return
        self.counters.timeouts += 1
        self._rtt_seq = None  # Karn
        self._rto = min(self._rto * 2, p.rto_max)

    def _persist_interval(self) -> float:
        return min(max(self._rto, self.params.rto_min) * (1 << min(self._persist_backoff, 16)), self.params.rto_max)

    def _on_persist(self) -> None:
        if self.state not in _SENDING or self._buf_seq + len(self._sndbuf) <= self._snd_nxt:
            return
        if self._snd_wnd == 0:
            self._probes_unanswered += 1
            if self._probes_unanswered > self.params.max_retransmits:
                self._queue_rst(self._ack_seq(), self._rcv_nxt, RST | ACK)
                self._finish("persist timeout")
                return
            self._probe_pending = True
        else:
            self._force_send = True  # the sender-SWS override timeout
        self._persist_backoff += 1

    def _on_keepalive(self, now: float) -> None:
        p = self.params
        if p.keepalive_idle is None or self.state == TIME_WAIT:
            return
        if self.state not in _KEEPALIVE or self._snd_una < self._snd_max or self._t_persist is not None:
            # Retransmissions or probes are already testing the guest, with their own limits (and
            # FIN_WAIT_1/CLOSING/LAST_ACK have a FIN in flight): look again one idle period later.
            self._t_ka = now + p.keepalive_idle
            return
        if self._ka_probes >= p.keepalive_probes:
            self._queue_rst(self._ack_seq(), self._rcv_nxt, RST | ACK)
            self._finish("keepalive timeout")
            return
        self._ka_probes += 1
        self.counters.keepalives += 1
        # seq = SND.UNA - 1: outside the guest's window, so it must answer with an ACK (RFC 9293 3.8.4).
        self._ctl.append(self._segment(self._snd_una - 1, ACK, None))
        self._t_ka = now + p.keepalive_interval

    # -- closing helpers ------------------------------------------------------------------------------------
    def _queue_rst(self, seq: int, ack: int, flags: int) -> None:
        self._ctl.append(self._segment(seq, flags, None, ack=ack, window=0))

    def _finish(self, reason: str) -> None:
        """Enter CLOSED and report it (after any data already accepted, which the guest saw ACKed)."""
        if self.state == CLOSED:
            return
        self._flush_rx()
        self.state = CLOSED
        self._events.append(Closed(reason))
        self._t_rto = self._t_persist = self._t_delack = self._t_close = self._t_ka = None
        self._syn_pending = self._fast_rexmit = self._force_send = self._probe_pending = False
        self._ack_now = False
        self._dupacks_out = 0
        self._sndbuf = bytearray()
        self._ooo.clear()

    def _flush_rx(self) -> None:
        """Queue pending in-order data as an event so that a following event keeps the stream order."""
        if self._rx_data:
            self._events.append(DataReceived(bytes(self._rx_data)))
            self._rx_data.clear()

    def _reset_by_guest(self) -> None:
        if self.state == TIME_WAIT:
            self._finish("closed")
            return
        self._flush_rx()
        self._events.append(Reset())
        self._finish("refused" if self.state == SYN_SENT else "reset")

    def _established(self, now: float) -> None:
        """Handshake done (either direction): switch to scaled windows, report, start keepalive."""
        self.state = ESTABLISHED
        p = self.params
        if self._wscale_ok:
            self._rcv_wscale = p.wscale
        else:
            self._rcv_wscale = 0
            self._snd_wscale = 0
        self._max_wnd = 0xFFFF << self._rcv_wscale
        self._cwnd = p.initial_window * self._smss
        self._cwnd_cap = max(p.snd_buffer, 4 * self._smss) + 4 * self._smss
        self._retries = 0
        if self._syn_retransmitted and self._srtt is None:
            self._rto = min(max(self._rto, 3.0), p.rto_max)  # RFC 6298 5.7
        elif self._srtt is None:
            self._rto = p.rto_initial
        self._events.append(Connected())
        if p.keepalive_idle is not None:
            self._t_ka = now + p.keepalive_idle
        if self._fin_seq is not None:
            self.state = FIN_WAIT_1

    # -- input ----------------------------------------------------------------------------------------------
    def receive_segment(self, segment: bytes | bytearray | memoryview, now: float) -> None:
        """Process one raw TCP segment (header and payload) from the guest.

        The caller verified the IPv4 header and bounded the segment by its Total Length; the TCP checksum
        is verified here. Anything malformed or unexpected is dropped and counted (or answered as RFC 9293
        3.10.7 says); this never raises.
        """
        c = self.counters
        c.segments_in += 1
        n = len(segment)
        if n < TCP_HLEN:
            c.malformed += 1
            return
        if internet_checksum(segment, self._psum_in + n):
            c.bad_checksum += 1
            return
        sport, dport, wseq, wack, doff, flags, window, _csum, _urg = _HDR.unpack_from(segment, 0)
        hlen = (doff >> 4) << 2
        if hlen < TCP_HLEN or hlen > n or sport != self._rport or dport != self._lport:
            c.malformed += 1
            return
        state = self.state
        if state == ESTABLISHED and flags & (SYN | RST | FIN | ACK) == ACK and wseq == self._rcv_nxt & _M32:
            # Header prediction (Van Jacobson): in-order data or a pure ACK, the bulk of every transfer.
            plen = n - hlen
            if plen <= self._rcv_adv - self._rcv_nxt:
                if self._t_ka is not None and self.params.keepalive_idle is not None:
                    self._t_ka = now + self.params.keepalive_idle
                    self._ka_probes = 0
                if not self._on_ack(flags, self._rcv_nxt, wack, window, plen, now):
                    return
                if plen:
                    with memoryview(segment) as view:
                        self._in_order(view[hlen:], now)
                return
        if state == CLOSED:
            if not flags & RST:
                # RFC 9293 3.10.7.1: a segment for a closed connection gets a RST.
                plen = n - hlen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
                if flags & ACK:
                    self._queue_rst(wack, 0, RST)
                else:
                    self._queue_rst(0, wseq + plen, RST | ACK)
            c.dropped += 1
            return
        if flags & SYN and flags & (RST | FIN):
            c.malformed += 1
            return
        if state == LISTEN:
            self._input_listen(segment, hlen, flags, wseq)
        elif state == SYN_SENT:
            self._input_syn_sent(segment, hlen, flags, wseq, wack, window, now)
        else:
            self._input_synchronized(segment, hlen, flags, wseq, wack, window, now)

    def _input_listen(self, segment: bytes | bytearray | memoryview, hlen: int, flags: int, wseq: int) -> None:
        c = self.counters
        if flags & RST:
            if wseq == self._rcv_nxt & _M32:
                self._reset_by_guest()  # the guest gave up before we answered: the caller drops the connect
            else:
                c.out_of_window += 1
            return
        if flags & SYN and not flags & ACK:
            if wseq != self._irs:
                # A new incarnation (the guest restarted its connect with another ISN): answer that one.
                options = self._parse_options(segment, hlen)
                if options is None:
                    return
                self._take_syn(wseq, options)
            return  # a retransmitted SYN: the answer still waits for the host connect
        c.dropped += 1  # nothing else is meaningful before we answered; stay silent until accept()

    def _parse_options(self, segment: bytes | bytearray | memoryview, hlen: int) -> TcpOptions | None:
        if hlen == TCP_HLEN:
            return TcpOptions()
        try:
            return TcpOptions.parse(segment, TCP_HLEN, hlen)
        except WireError:
            self.counters.malformed += 1
            return None

    def _input_syn_sent(
        self,
        segment: bytes | bytearray | memoryview,
        hlen: int,
        flags: int,
        wseq: int,
        wack: int,
        window: int,
        now: float,
    ) -> None:
        c = self.counters
        iss = self._iss
        if flags & ACK and wack != (iss + 1) & _M32:
            c.out_of_window += 1
            if not flags & RST:
                self._queue_rst(wack, 0, RST)  # <SEQ=SEG.ACK><CTL=RST>
            return
        if flags & RST:
            if flags & ACK:
                self._reset_by_guest()  # the guest refused our connection
            else:
                c.out_of_window += 1
            return
        if not flags & SYN:
            c.dropped += 1
            return
        options = self._parse_options(segment, hlen)
        if options is None:
            return
        self._take_syn(wseq, options)
        if not flags & ACK:
            # Simultaneous open (RFC 9293 figure 7): answer with SYN-ACK, as SYN_RECEIVED does.
            self.state = SYN_RECEIVED
            if self._wscale_ok:
                self._rcv_wscale = self.params.wscale
            self._snd_nxt = self._snd_una = iss
            self._syn_pending = True
            return
        self._snd_una = self._snd_nxt = iss + 1
        self._snd_max = max(self._snd_max, iss + 1)
        if self._rtt_seq is not None:
            self._rtt_sample(now - self._rtt_time)
            self._rtt_seq = None
        self._t_rto = None
        self._snd_wnd = window  # never scaled in a SYN (RFC 7323 2.2)
        self._max_snd_wnd = window
        self._snd_wl1 = wseq
        self._snd_wl2 = iss + 1
        self._established(now)
        self._rcv_adv = self._rcv_nxt  # the window of our SYN counted from RCV.NXT; recomputed at once
        self._ack_now = True

    def _input_synchronized(
        self,
        segment: bytes | bytearray | memoryview,
        hlen: int,
        flags: int,
        wseq: int,
        wack: int,
        window: int,
        now: float,
    ) -> None:
        c = self.counters
        state = self.state
        rcv_nxt = self._rcv_nxt
        d = (wseq - rcv_nxt) & _M32
        if d & _HALF:
            d -= _WRAP
        wnd = self._rcv_adv - rcv_nxt
        if flags & RST:
            # RFC 5961 3.2: only an exact match resets; elsewhere in the window, a challenge ACK.
            if d == 0:
                self._reset_by_guest()
            elif 0 < d < max(wnd, 1):
                c.challenge_acks += 1
                self._ack_now = True
            else:
                c.out_of_window += 1
            return
        if flags & SYN:
            if state == SYN_RECEIVED and wseq == self._irs:
                self._syn_pending = True  # our SYN-ACK was lost: send it again
                return
            if state == TIME_WAIT and d > 0:
                # A new connection on the same ports; finish now so the guest's next SYN opens it.
                self._finish("reused")
                return
            c.challenge_acks += 1  # RFC 5961 4.2
            self._ack_now = True
            return
        plen = len(segment) - hlen
        seglen = plen + (1 if flags & FIN else 0)
        acceptable = d == 0 or (d + seglen > 0 and d < wnd) if seglen else (d == 0 or 0 <= d < wnd)
        if not acceptable:
            if d < 0:
                c.duplicates += 1  # left of the window: a retransmission, a keepalive or a window probe
            else:
                c.out_of_window += 1
            if state == TIME_WAIT and flags & FIN and self._t_close is not None:
                self._t_close = now + self.params.time_wait  # retransmitted FIN: restart 2MSL
            self._ack_now = True
            if d < 0 and flags & ACK and state != SYN_RECEIVED:
                # An old duplicate: RFC 9293 drops it whole, but its ACK field is the guest's current
                # view, so keep processing it as BSD does ("keep on processing for RST or ACK").
                # Otherwise two ends retransmitting old data to each other never learn each other's
                # progress. RFC 5961's ACK bounds still apply in _on_ack.
                self._on_ack(flags, rcv_nxt + d, wack, window, -1, now)
            return
        if not flags & ACK:
            c.dropped += 1
            return
        # The guest is alive: restart the idle timers.
        if self._t_ka is not None and self.params.keepalive_idle is not None:
            self._t_ka = now + self.params.keepalive_idle
        self._ka_probes = 0
        if state == FIN_WAIT_2 and self.params.fin_wait_2_timeout is not None:
            self._t_close = now + self.params.fin_wait_2_timeout
        if state == SYN_RECEIVED:
            a = self._snd_una + (((wack - self._snd_una) + _HALF) & _M32) - _HALF
            if not self._snd_una < a <= self._snd_max:
                c.out_of_window += 1
                self._queue_rst(wack, 0, RST)  # <SEQ=SEG.ACK><CTL=RST>
                return
            self._snd_wnd = window << self._snd_wscale
            self._max_snd_wnd = max(self._max_snd_wnd, self._snd_wnd)
            self._snd_wl1 = rcv_nxt + d
            self._snd_wl2 = a
            self._established(now)
        if not self._on_ack(flags, rcv_nxt + d, wack, window, plen, now):
            return
        state = self.state
        if state in (CLOSED, TIME_WAIT):
            return
        fin_at = self._rcv_nxt + d + plen  # absolute sequence number of a FIN in this segment
        if plen and state in _RECEIVING:
            with memoryview(segment) as view:
                payload = view[hlen:]
                if d < 0:
                    c.duplicates += 1
                    payload = payload[-d:]
                    d = 0
                room = wnd - d
                if len(payload) > room:
                    payload = payload[: max(room, 0)]
                    self._ack_now = True  # data beyond the window (a zero-window probe): tell it our window
                if payload:
                    if d == 0:
                        self._in_order(payload, now)
                    else:
                        self._out_of_order(rcv_nxt + d, payload)
                del payload
        elif plen:
            c.dropped += 1  # data after the guest's FIN
        if flags & FIN and state in _RECEIVING and fin_at <= self._rcv_adv and fin_at >= self._rcv_nxt:
            if fin_at == self._rcv_nxt:
                self._accept_fin(now)
            else:
                self._ooo_fin = fin_at
                self._ack_now = True

    def _on_ack(self, flags: int, seq: int, wack: int, window: int, plen: int, now: float) -> bool:
        """Process SEG.ACK and SEG.WND (RFC 9293 3.10.7.4 fifth step); False: drop the rest of the segment.

        ``seq`` is the segment's unwrapped sequence number; ``plen`` its payload length, -1 for an old
        duplicate (whose ACK is used but which never counts as a duplicate ACK)."""
        una = self._snd_una
        a = una + (((wack - una) + _HALF) & _M32) - _HALF
        if a > self._snd_max:
            self.counters.out_of_window += 1
            self._ack_now = True  # acknowledges something never sent: ACK and drop
            return False
        if a < una - max(self._max_snd_wnd, 0xFFFF):
            self.counters.challenge_acks += 1  # RFC 5961 5.2: too old to be real
            self._ack_now = True
            return False
        self._probes_unanswered = 0
        wnd = window << self._snd_wscale
        old_wnd = self._snd_wnd
        if self._snd_wl1 < seq or (self._snd_wl1 == seq and self._snd_wl2 <= a):
            self._snd_wnd = wnd
            self._snd_wl1 = seq
            self._snd_wl2 = a
            if wnd > self._max_snd_wnd:
                self._max_snd_wnd = wnd
            if wnd and self._t_persist is not None:
                self._t_persist = None
                self._persist_backoff = 0
        if a > una:
            self._new_ack(a, now)
            if self._snd_wnd == 0 and self._snd_nxt > self._snd_una:
                # The guest closed its window on data in flight: what it did not take is unsent again;
                # the persist timer now tests the window instead of the RTO.
                self._snd_nxt = self._snd_una
                self._t_rto = None
                self._rtt_seq = None
        elif (
            a == una
            and plen == 0
            and not flags & (SYN | FIN)
            and wnd == old_wnd
            and wnd
            and self._snd_max > una
            and self.state in _SENDING
        ):
            self._dup_ack()
        elif self._snd_wnd == 0 and self._snd_nxt > self._snd_una:
            self._snd_nxt = self._snd_una
            self._t_rto = None
            self._rtt_seq = None
        if self._snd_wnd == 0:
            self._arm_persist(now)
        return self.state != CLOSED

    def _arm_persist(self, now: float) -> None:
        """Start the persist timer if data waits, nothing is in flight and no other timer tests the guest."""
        if (
            self._t_persist is None
            and self._t_rto is None
            and self._snd_nxt == self._snd_una
            and self._buf_seq + len(self._sndbuf) > self._snd_nxt
            and self.state in _SENDING
        ):
            self._t_persist = now + self._persist_interval()

    def _new_ack(self, a: int, now: float) -> None:
        una = self._snd_una
        acked = a - una
        data_end = self._buf_seq + len(self._sndbuf)
        if a > self._buf_seq:
            k = min(a, data_end) - self._buf_seq
            if k > 0:
                del self._sndbuf[:k]
                self._buf_seq += k
        self._snd_una = a
        if self._snd_nxt < a:
            self._snd_nxt = a
        self._retries = 0
        if self._rtt_seq is not None and a >= self._rtt_seq:
            self._rtt_sample(now - self._rtt_time)
            self._rtt_seq = None
        smss = self._smss
        if self._in_recovery:
            if a >= self._recover:  # full ACK (RFC 6582 3.2 step 3)
                self._cwnd = min(self._ssthresh, max(self._snd_max - a, smss) + smss)
                self._in_recovery = False
                self._dupacks = 0
            else:  # partial ACK: the next hole is lost too
                self._fast_rexmit = True
                self._cwnd = max(self._cwnd - acked + (smss if acked >= smss else 0), smss)
        else:
            self._dupacks = 0
            cwnd = self._cwnd
            if cwnd < self._ssthresh:
                cwnd += acked  # slow start, byte counting
            else:
                cwnd += max(smss * acked // cwnd, 1)  # congestion avoidance: ~1 MSS per RTT
            self._cwnd = cwnd if cwnd < self._cwnd_cap else self._cwnd_cap
        self._t_rto = None if a >= self._snd_max else now + self._rto
        fin = self._fin_seq
        if fin is not None and a > fin:
            state = self.state
            if state == FIN_WAIT_1:
                self.state = FIN_WAIT_2
                self._t_rto = None
                if self.params.fin_wait_2_timeout is not None:
                    self._t_close = now + self.params.fin_wait_2_timeout
            elif state == CLOSING:
                self._enter_time_wait(now)
            elif state == LAST_ACK:
                self._finish("closed")

    def _dup_ack(self) -> None:
        self.counters.dup_acks += 1
        self._dupacks += 1
        smss = self._smss
        if self._in_recovery:
            if self._cwnd < self._cwnd_cap:
                self._cwnd += smss  # inflate: one segment left the network
        elif self._dupacks == 3 and self._snd_una >= self._recover:
            flight = self._snd_max - self._snd_una
            self._ssthresh = max(flight // 2, 2 * smss)
            self._cwnd = self._ssthresh + 3 * smss
            self._recover = self._snd_max
            self._in_recovery = True
            self._fast_rexmit = True
            self._rtt_seq = None
            self.counters.fast_retransmits += 1

    def _rtt_sample(self, r: float) -> None:
        """RFC 6298 2.2/2.3."""
        if r < 0:
            return
        if self._srtt is None:
            self._srtt = r
            self._rttvar = r / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - r)
            self._srtt = 0.875 * self._srtt + 0.125 * r
        p = self.params
        self._rto = min(max(self._srtt + max(_CLOCK_G, 4 * self._rttvar), p.rto_min), p.rto_max)

    def _in_order(self, payload: memoryview, now: float) -> None:
        """Data starting exactly at RCV.NXT (already trimmed to the window)."""
        n = len(payload)
        self._rx_data += payload
        self._rcv_nxt += n
        self._rcv_unconsumed += n
        self.counters.bytes_in += n
        if self._ooo:
            self._ooo_drain()
            self._ack_now = True  # RFC 5681 4.2: ACK at once when a segment fills (part of) a gap
        elif self._ooo_fin is not None:
            self._ack_now = True
        if self._ooo_fin is not None and self._ooo_fin == self._rcv_nxt:
            self._accept_fin(now)
            return
        self._segs_unacked += 1
        if self._segs_unacked >= 2:
            self._ack_now = True
        elif self._t_delack is None:
            self._t_delack = now + self.params.delayed_ack

    def _out_of_order(self, start: int, data: memoryview) -> None:
        """Keep the parts of ``data`` (at absolute ``start``) not already held; duplicate-ACK it at once."""
        c = self.counters
        self._dupacks_out += 1
        ooo = self._ooo
        end = start + len(data)
        i = bisect.bisect_right(ooo, start, key=_first)
        if i:
            ps, pd = ooo[i - 1]
            pe = ps + len(pd)
            if pe >= end:
                c.duplicates += 1
                return
            if pe > start:
                data = data[pe - start :]
                start = pe
        pieces: list[tuple[int, bytes]] = []
        while start < end:
            if i < len(ooo) and ooo[i][0] < end:
                ns, nd = ooo[i]
                if ns > start:
                    pieces.append((start, bytes(data[: ns - start])))
                ne = ns + len(nd)
                if ne >= end:
                    break
                data = data[ne - start :]
                start = ne
                i += 1
            else:
                pieces.append((start, bytes(data)))
                break
        if not pieces:
            c.duplicates += 1
            return
        if len(ooo) + len(pieces) > _OOO_MAX_BLOCKS:
            c.ooo_dropped += 1
            return
        c.ooo_segments += 1
        for piece in pieces:
            bisect.insort(ooo, piece, key=_first)

    def _ooo_drain(self) -> None:
        ooo = self._ooo
        nxt = start_nxt = self._rcv_nxt
        rx = self._rx_data
        k = 0
        for s, data in ooo:
            if s > nxt:
                break
            k += 1
            e = s + len(data)
            if e > nxt:
                if s == nxt:
                    rx += data
                else:
                    with memoryview(data) as view:
                        rx += view[nxt - s :]
                nxt = e
        del ooo[:k]
        n = nxt - start_nxt
        self._rcv_nxt = nxt
        self._rcv_unconsumed += n
        self.counters.bytes_in += n

    def _accept_fin(self, now: float) -> None:
        self._rcv_nxt += 1
        self._ooo.clear()
        self._ooo_fin = None
        self._ack_now = True
        self._flush_rx()
        self._events.append(EndOfStream())
        state = self.state
        if state == ESTABLISHED:
            self.state = CLOSE_WAIT
        elif state == FIN_WAIT_1:
            self.state = CLOSING
        elif state == FIN_WAIT_2:
            self._enter_time_wait(now)

    def _enter_time_wait(self, now: float) -> None:
        self.state = TIME_WAIT
        self._t_rto = self._t_persist = self._t_ka = None
        self._t_close = now + self.params.time_wait

    # -- output ---------------------------------------------------------------------------------------------
    def _window(self) -> int:
        """The window field for our next segment; advances the right edge by SWS rules, never backwards.

        The field is rounded down to our scale, so the edge the guest sees can sit up to 2**shift - 1
        bytes left of the furthest one we offered (RFC 7323 2.4); we keep accepting up to the furthest
        (``_rcv_adv``). Rounding up instead would let a guest trickling 1-byte segments move our edge
        ever further past the buffer."""
        rcv_nxt = self._rcv_nxt
        cur = self._rcv_adv - rcv_nxt
        free = self.params.rcv_buffer - self._rcv_unconsumed
        if free - cur >= self._sws_thresh:
            cur = free if free < self._max_wnd else self._max_wnd
            self._rcv_adv = rcv_nxt + cur
        if cur <= 0:
            return 0
        field = cur >> self._rcv_wscale
        if field == 0 and free > 0:
            # Open space smaller than one unit of our scale would read as a zero window, and the guest
            # would probe it forever (a 700-byte buffer under shift 14). Offer one unit instead, as Linux
            # rounds up: the overshoot is below 2**shift and happens only while the buffer has room.
            field = 1
            self._rcv_adv = rcv_nxt + (1 << self._rcv_wscale)
        return field

    def _segment(
        self,
        seq: int,
        flags: int,
        payload: memoryview | None,
        *,
        ack: int | None = None,
        window: int | None = None,
        options: bytes = b"",
    ) -> bytes:
        """One complete segment toward the guest, checksum included (one struct.pack)."""
        seq &= _M32
        if ack is None:
            ack = self._rcv_nxt if flags & ACK else 0
        ack &= _M32
        if window is None:
            window = self._window()
        plen = len(payload) if payload is not None else 0
        hlen = TCP_HLEN + len(options)
        s = (
            self._csum_base
            + hlen
            + plen
            + (seq >> 16)
            + (seq & 0xFFFF)
            + (ack >> 16)
            + (ack & 0xFFFF)
            + ((hlen << 10) | flags)
            + window
        )
        if options:
            s += ones_complement_sum(options)
        if plen:
            assert payload is not None
            s += ones_complement_sum(payload)
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        header = _HDR.pack(self._lport, self._rport, seq, ack, hlen << 2, flags, window, ~s & 0xFFFF, 0)
        c = self.counters
        c.segments_out += 1
        if options:
            header += options
        if plen:
            c.bytes_out += plen
            return header + payload  # type: ignore[operator]  # bytes + memoryview concatenates
        return header

    def _ack_seq(self) -> int:
        """The sequence number for a segment without data: SND.MAX unless the guest's window retracted
        below it (Linux's tcp_acceptable_seq). After a go-back-N retransmission SND.NXT lies behind what
        the guest already holds, and a receiver drops an ACK whose sequence number is that old."""
        edge = self._snd_una + self._snd_wnd
        return self._snd_max if self._snd_max <= edge else max(edge, self._snd_una)

    def _syn_options(self) -> bytes:
        wscale = self.params.wscale if (self.state == SYN_SENT or self._wscale_ok) else None
        return TcpOptions(mss=self.params.mss, wscale=wscale).to_bytes()

    def segments_to_send(self, now: float) -> list[bytes]:
        """Every segment due now toward the guest: control, data (window and cwnd permitting), ACKs."""
        out = self._ctl
        self._ctl = []
        state = self.state
        if state in (CLOSED, LISTEN):
            return out
        if self._syn_pending:
            self._syn_pending = False
            if self._snd_max > self._iss:
                self.counters.retransmits += 1
                self._rtt_seq = None
            elif self._rtt_seq is None:
                self._rtt_seq = self._iss + 1
                self._rtt_time = now
            if state == SYN_SENT:
                window = min(self.params.rcv_buffer, 0xFFFF)
                out.append(self._segment(self._iss, SYN, None, window=window, options=self._syn_options()))
            else:
                window = min(self.params.rcv_buffer, 0xFFFF)
                self._rcv_adv = self._rcv_nxt + window
                self._ack_now = False
                out.append(self._segment(self._iss, SYN | ACK, None, window=window, options=self._syn_options()))
            self._snd_nxt = self._snd_max = self._iss + 1
            if self._t_rto is None:
                self._t_rto = now + self._rto
            return out
        acked = False
        if state in _SENDING:
            acked = self._send_data(out, now)
        if self._dupacks_out:
            ack = self._segment(self._ack_seq(), ACK, None)
            k = min(self._dupacks_out, _MAX_DUP_ACKS_OUT)
            out.extend([ack] * k)
            self.counters.segments_out += k - 1
            acked = True
        elif self._ack_now and not acked and state != SYN_SENT:
            out.append(self._segment(self._ack_seq(), ACK, None))
            acked = True
        if acked:
            self._ack_now = False
            self._dupacks_out = 0
            self._segs_unacked = 0
            self._t_delack = None
        return out

    def _send_data(self, out: list[bytes], now: float) -> bool:
        """Append data/FIN segments (retransmissions first). True if one of them was new data: its ACK
        field surely reaches the guest's ACK processing, whereas a retransmission of something the guest
        already holds is dropped whole, so it cannot stand in for a pending ACK."""
        c = self.counters
        sent = False
        fresh = False
        base = self._buf_seq
        buf = self._sndbuf
        buf_end = base + len(buf)
        fin = self._fin_seq
        smss = self._smss
        if self._fast_rexmit:
            self._fast_rexmit = False
            self._rtt_seq = None  # the ACK that covers a timed segment would also cover this one (Karn)
            una = self._snd_una
            if una < self._snd_max:
                n = min(buf_end - una, smss)
                flags = ACK
                if n > 0:
                    if fin is not None and una + n == fin and fin < self._snd_max:
                        flags |= FIN
                    with memoryview(buf) as view:
                        out.append(self._segment(una, flags, view[una - base : una - base + n]))
                elif fin is not None and una == fin:
                    out.append(self._segment(una, ACK | FIN, None))
                c.retransmits += 1
                sent = True
                if self._t_rto is None:
                    self._t_rto = now + self._rto
        if self._probe_pending:
            # Zero-window probe, Linux style: SND.UNA - 1 and no data is outside any window, so the
            # guest must answer with an ACK that carries its current window (RFC 9293 3.8.6.1).
            self._probe_pending = False
            c.window_probes += 1
            out.append(self._segment(self._snd_una - 1, ACK, None))
        nxt = self._snd_nxt
        snd_max = self._snd_max
        wnd = self._snd_wnd
        cwnd = self._cwnd
        limit = self._snd_una + (wnd if wnd < cwnd else cwnd)
        force = self._force_send
        self._force_send = False
        if nxt < buf_end and (nxt < limit or force):
            if force and nxt >= limit:
                limit = nxt + smss
            half_wnd = self._max_snd_wnd >> 1
            with memoryview(buf) as view:
                while nxt < buf_end:
                    left = buf_end - nxt
                    n = limit - nxt
                    if n > smss:
                        n = smss
                    if n > left:
                        n = left
                    if n <= 0:
                        break
                    if n < smss and n < left and n < half_wnd and not force:
                        break  # sender silly-window avoidance: wait for more window (persist overrides)
                    force = False
                    off = nxt - base
                    end = nxt + n
                    flags = ACK if end != buf_end else ACK | PSH if fin is None else ACK | PSH | FIN
                    if nxt < snd_max:
                        c.retransmits += 1
                        self._rtt_seq = None
                    else:
                        fresh = True
                        if self._rtt_seq is None:
                            self._rtt_seq = end
                            self._rtt_time = now
                    out.append(self._segment(nxt, flags, view[off : off + n]))
                    nxt = end + 1 if flags & FIN else end
                    if nxt > snd_max:
                        snd_max = nxt
                    sent = True
        if fin is not None and nxt == fin and buf_end == fin:
            # A bare FIN (no window needed: it takes no buffer space at the receiver).
            if nxt < snd_max:
                c.retransmits += 1
            else:
                fresh = True
            out.append(self._segment(nxt, ACK | FIN, None))
            nxt += 1
            if nxt > snd_max:
                snd_max = nxt
            sent = True
        self._snd_nxt = nxt
        self._snd_max = snd_max
        if sent and self._t_rto is None and self._snd_una < nxt:
            self._t_rto = now + self._rto
        if nxt < buf_end and nxt == self._snd_una:
            self._arm_persist(now)
        return fresh

    # -- introspection --------------------------------------------------------------------------------------
    @property
    def bytes_acked(self) -> int:
        """Data bytes the guest has acknowledged."""
        return self._buf_seq - self._iss - 1

    @property
    def bytes_unacked(self) -> int:
        """Data bytes queued by :meth:`send` that the guest has not acknowledged (sent or not)."""
        return len(self._sndbuf)

    @property
    def unconsumed(self) -> int:
        """Received bytes not yet :meth:`consume`\\ d (they occupy the receive buffer)."""
        return self._rcv_unconsumed

    def __repr__(self) -> str:
        la, lp = self.local
        ra, rp = self.remote
        return (
            f"<TcpConnection {'.'.join(map(str, la))}:{lp} <-> {'.'.join(map(str, ra))}:{rp} {self.state}"
            f" una={self._snd_una - self._iss} nxt={self._snd_nxt - self._iss} cwnd={self._cwnd}"
            f" wnd={self._snd_wnd} rto={self._rto:.3f}>"
        )
