"""One TCP endpoint toward the guest, as a sans-IO engine: the heart of vmlan's ``-netdev user``.

The user-mode stack terminates each guest TCP connection here and relays the byte stream to a host
socket, as libslirp does. This is the guest-facing half only. It never reads a clock and never
touches a socket: time is an argument, output goes through a callback (:meth:`TcpConnection.transmit`),
what happened is reported as events (:meth:`TcpConnection.next_event`) and the next deadline as
:meth:`TcpConnection.get_timer` (the model is aioquic's ``QuicConnection`` and h11). The I/O layer owns
the host socket and wraps our segments in IP and Ethernet. Addresses are opaque (4 bytes for IPv4, 16
for IPv6); the only family-specific facts, the pseudo-header sums and the largest MSS, come from the
constructor.

Where things are (the package ``vmlan.engines.tcp``):

* ``state.py`` -- every state transition, as a table ``(state, input) -> (next state, steps)``. This
  module classifies segments, host calls and timers into those inputs and performs the steps; it
  assigns ``_state`` in one method (:meth:`TcpConnection._fire`) and nowhere else.
* ``rtt.py`` -- the RFC 6298 estimator; ``recovery.py`` -- congestion control and loss recovery
  (NewReno) behind a small interface; ``reassembly.py`` -- the out-of-order store; ``isn.py`` -- RFC
  6528 ISNs and RFC 6056 ephemeral ports; ``sums.py`` -- checksum sums shaped for this hot path;
  ``params.py``/``events.py`` -- tunables, counters, events.

What it implements, and why it is shaped this way:

* RFC 9293 state machine, both opens. A passive open (:meth:`TcpConnection.from_syn`) stays silent
  until :meth:`~TcpConnection.accept` or :meth:`~TcpConnection.refuse`: vmlan answers the guest only
  once the host ``connect()`` has finished, so a refused host port is a refused guest connect (libslirp
  does the same). Its state until then is ``"LISTEN"`` (a SYN is held, nothing has been answered).
* Options: MSS (ours is :attr:`TcpParams.mss`, clamped to the family's largest; the peer's is honoured,
  536 when absent) and window scaling (RFC 7323; used only when both SYNs carry it). Timestamps and SACK
  are not offered, so a conforming guest never sends them; if it does anyway they are ignored. Without
  SACK a loss costs one round trip to repair, which on a virtual link is microseconds.
* Sending: segments of ``min(peer MSS, our MSS)``, or with :meth:`~TcpConnection.set_tso` TSO segments
  of several of them for an offload-capable peer, limited by the peer's scaled window and the
  congestion window (``recovery.py``). No Nagle: we are a relay, the host side already decided what to
  push. RTO per RFC 6298 (``rtt.py``, one timed segment per round trip), fast retransmit on the third
  duplicate ACK, zero-window probing with a persist timer, and sender silly-window avoidance (RFC 9293
  3.8.6.2.1) with the persist timer as the override timeout.
* Receiving: in-order data is appended to one buffer, handed over by :meth:`~TcpConnection.take_data`
  (no copy) or as :class:`DataReceived` events; out-of-order data is kept (``reassembly.py``, bounded by
  the advertised window) until the gap fills. Segments larger than our MSS (GRO super-segments from a
  kernel) are accepted when they fit the window. ACK for every second segment (a super-segment counts
  as two) or after :attr:`TcpParams.delayed_ack` (40 ms), at once for out-of-order data, gap fills,
  FINs and window probes. The window is the free space of the receive buffer (bytes accepted but not
  yet :meth:`~TcpConnection.consume`\\ d by the host side), whose size the caller may lower or raise at
  any time (:meth:`~TcpConnection.set_buffer_limits`). The furthest right edge ever offered never
  moves left (the field itself rounds down by less than one scale unit, which RFC 7323 2.4 allows),
  and it opens in steps of at least ``min(buffer/2, MSS)`` (receiver silly-window avoidance, RFC 9293
  3.8.6.2.2).
* Robustness: the guest is untrusted (libslirp's CVEs came from guest input). Every segment either
  takes a defined RFC 9293 3.10.7 path or is dropped and counted; :meth:`~TcpConnection.receive_segment`
  never raises. RST and SYN are validated as in RFC 5961 (exact sequence match resets, in-window gets a
  challenge ACK; ACKs outside ``[SND.UNA - MAX.SND.WND, SND.MAX]`` are discarded). A guest MSS below 64
  is raised to 64 (the "SACK panic" class of CPU exhaustion). Memory per connection is bounded by the
  two buffers plus less than one window-scale unit (out-of-order data lies inside the window);
  :attr:`~TcpConnection.buffered` says how much is held now. A SYN that cannot be a connection (port 0,
  wrong flags, bad checksum) raises :class:`~vmlan.wire.errors.WireError` from the constructors.
* Three details from real stacks, each found necessary by the tests: segments without data carry
  ``min(SND.MAX, SND.UNA + SND.WND)`` as their sequence number (Linux's ``tcp_acceptable_seq``), not a
  go-back-N ``SND.NXT`` the guest would find too old; the ACK field of an old duplicate segment is still
  processed (BSD), so two ends retransmitting to each other cannot deadlock; zero-window probes are
  ``SND.UNA - 1`` without data (Linux), and a window smaller than one scale unit is announced as one
  unit rather than as zero (Linux rounds up too), or a small buffer under a large shift would read as
  closed forever.
* Contract with the caller: after any input call, :meth:`~TcpConnection.transmit` (or
  :meth:`~TcpConnection.segments_to_send`) first, then :meth:`~TcpConnection.take_data` and
  :meth:`~TcpConnection.next_event`, then :meth:`~TcpConnection.get_timer` (retransmission timers are
  armed when their segment is produced).
* No leaks: every state ends in :class:`Closed` within bounded time -- retransmission and SYN retry
  limits, unanswered zero-window probes, keepalive (ESTABLISHED/CLOSE_WAIT/FIN_WAIT_2), a FIN_WAIT_2
  idle timeout and a short TIME_WAIT. The one exception is ``"LISTEN"``: the caller's host ``connect()``
  timeout bounds it (the engine cannot know how long a host connect may take).

Performance: this is the hot path of the user stack. Sequence numbers are kept unwrapped (plain
growing ints; only the wire is modulo 2**32, converted with one subtraction and mask per segment).
Header prediction (Van Jacobson) takes in-order data and pure ACKs in ESTABLISHED on a short path, and
in-order data that acknowledges nothing new (guest->host bulk) makes no further call. The send buffer
is one fixed-length ``bytearray`` in which an ACK only moves an index (``_reserve`` explains why not
``del buf[:k]``); :meth:`~TcpConnection.fill_from` lets the host socket ``recv_into`` it directly,
and :meth:`~TcpConnection.transmit` hands out memoryview slices of it, so host bytes are copied once
on their way to the guest (by the caller, into the frame). Each header is one ``struct.pack`` whose
checksum was computed before packing, from the fields' arithmetic sum plus the payload's sum; the
payload sums of one burst come from one numpy call (``sums.py``). Received data is copied once, from
the caller's frame into the receive buffer, which :meth:`~TcpConnection.take_data` hands over whole.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import deque
from collections.abc import Callable
from typing import Final, NamedTuple

from vmlan.wire._common import BytesLike
from vmlan.wire.checksum import pseudo_header_sum_v4, pseudo_header_sum_v6
from vmlan.wire.errors import IntegrityError, SanityError, WireError
from vmlan.wire.tcp import ACK, FIN, PSH, RST, SYN, TCP_HLEN, TcpHeader, TcpOptions, option_fields

from . import sums as _sums
from .events import Closed, Connected, DataReceived, EndOfStream, Event, Reset, TcpStateError
from .isn import IsnGenerator
from .params import DEFAULT_MSS, MAX_MSS_V4, MAX_MSS_V6, MAX_WSCALE, MIN_MSS, TcpCounters, TcpParams
from .reassembly import DUPLICATE, KEPT, ReassemblyQueue
from .recovery import ALGORITHMS, CongestionControl
from .rtt import RttEstimator
from .state import (
    CAN_QUEUE,
    CLOSED,
    ESTABLISHED,
    FIN_WAIT_2,
    KEEPALIVE,
    LISTEN,
    RECEIVING,
    SENDING,
    SYN_RECEIVED,
    SYN_SENT,
    TABLE,
    TIME_WAIT,
    Do,
    Input,
    Transition,
    lookup,
)
from .sums import piece_sums, sum16

__all__ = ["Emit", "TcpConnection"]

#: ``emit(header, payload)``: one segment toward the guest. ``header`` is the complete TCP header
#: (final checksum included); ``payload`` is ``b""`` or a memoryview valid only during the call.
Emit = Callable[[bytes, bytes | memoryview], object]

_M32: Final = 0xFFFFFFFF
_HALF: Final = 0x80000000
_WRAP: Final = 1 << 32
_IPPROTO_TCP: Final = 6
# What the input path reads: ports as one 32-bit word, seq, ack, data offset, flags, window.
_HDR_IN = struct.Struct("!IIIBBH")
# What the output path writes: ports as one word, seq, ack, data offset | flags, window, checksum, urgent.
_HDR_OUT = struct.Struct("!IIIHHHH")
# A SYN's fixed header, as wire.tcp reads it: ports, seq, ack, data offset, flags, window, checksum, urgent.
_FIXED = struct.Struct("!HHIIBBHHH")
_OOO_MAX_BLOCKS: Final = 4096  # out-of-order blocks kept; bounds the list a hostile guest can grow
_MAX_DUP_ACKS_OUT: Final = 8  # duplicate ACKs emitted per transmit() call
_KEEP_SNDBUF: Final = 1 << 16  # a send buffer larger than this is released whenever it empties
_DEFAULT_ISN = IsnGenerator()  # for callers that pass no ISN


class _Seg(NamedTuple):
    """The facts of a segment a transition step needs (slow path only)."""

    seq: int
    ack: int
    flags: int = 0
    window: int = 0
    seglen: int = 0  # payload plus SYN and FIN
    options: TcpOptions | None = None


_NO_SEG: Final = _Seg(0, 0)


def _format_addr(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


class TcpConnection:
    """One TCP connection with the guest. Not thread-safe; every method is cheap and non-blocking.

    Driving it: after any input (:meth:`receive_segment`, :meth:`send`, :meth:`fill_from`,
    :meth:`consume`, :meth:`shutdown`, :meth:`abort`, :meth:`accept`, :meth:`refuse`,
    :meth:`handle_timer`, :meth:`set_buffer_limits`) the caller calls :meth:`transmit`, takes the data
    (:meth:`take_data`) and drains :meth:`next_event`, and re-arms its timer from :meth:`get_timer`.
    Sequence numbers inside are unwrapped integers (``iss`` plus bytes sent), so comparisons are plain
    ``<``; only the wire is modulo 2**32.

    ``on_transition``, when set, is called as ``on_transition(old_state, input, new_state)`` for every
    transition the state table performs (tracing and tests; None by default).
    """

    __slots__ = (
        "_ack_now",
        "_buf_seq",
        "_cc",
        "_csum_base",
        "_ctl",
        "_delack",
        "_dupacks_out",
        "_events",
        "_fast_rexmit",
        "_fin_seq",
        "_force_send",
        "_irs",
        "_iss",
        "_ka_idle",
        "_ka_probes",
        "_max_mss",
        "_max_snd_wnd",
        "_max_wnd",
        "_mss",
        "_ooo",
        "_ooo_fin",
        "_partial",
        "_persist_backoff",
        "_ports_in",
        "_ports_out",
        "_probe_pending",
        "_probes_unanswered",
        "_psum_in",
        "_psum_out",
        "_rcv_adv",
        "_rcv_limit",
        "_rcv_nxt",
        "_rcv_unconsumed",
        "_rcv_wscale",
        "_retries",
        "_rtt",
        "_rx",
        "_segs_unacked",
        "_smss",
        "_snd_hi",
        "_snd_limit",
        "_snd_lo",
        "_snd_max",
        "_snd_nxt",
        "_snd_una",
        "_snd_wl1",
        "_snd_wl2",
        "_snd_wnd",
        "_snd_wscale",
        "_sndbuf",
        "_state",
        "_sws_thresh",
        "_syn_data",
        "_syn_pending",
        "_syn_retransmitted",
        "_t_close",
        "_t_delack",
        "_t_ka",
        "_t_persist",
        "_t_rto",
        "_take_mode",
        "_tso",
        "_tso_request",
        "_wscale_ok",
        "counters",
        "local",
        "on_transition",
        "params",
        "remote",
    )

    def __init__(
        self,
        local: tuple[bytes, int],
        remote: tuple[bytes, int],
        params: TcpParams,
        now: float,
        isn: int | None = None,
        *,
        psum_in: int | None = None,
        psum_out: int | None = None,
        initial_state: str = LISTEN,
    ) -> None:
        """Use :meth:`from_syn` or :meth:`connect`. Raises :class:`~vmlan.wire.errors.SanityError` for
        addresses that are not two IPv4 or two IPv6 addresses, and for port 0."""
        laddr, lport = local
        raddr, rport = remote
        if len(laddr) not in (4, 16) or len(raddr) != len(laddr):
            raise SanityError("TCP", f"addresses of {len(laddr)} and {len(raddr)} bytes: need two of 4 or of 16")
        if not (0 < lport <= 0xFFFF and 0 < rport <= 0xFFFF):
            raise SanityError("TCP", f"port {rport} -> {lport}: ports must be 1..65535")
        self.local = (bytes(laddr), lport)
        self.remote = (bytes(raddr), rport)
        self.params = params
        self.counters = TcpCounters()
        self.on_transition: Callable[[str, Input, str], object] | None = None
        self._state = initial_state
        v6 = len(laddr) == 16
        self._max_mss = MAX_MSS_V6 if v6 else MAX_MSS_V4
        # Conditional expressions, not min()/max() (a call each): this constructor runs once per connection.
        mss = params.mss if params.mss < self._max_mss else self._max_mss
        self._mss = mss  # what we announce and accept per segment (nominally)
        if psum_in is None or psum_out is None:
            # Both directions sum the same words in another order (one's complement addition commutes).
            psum = (pseudo_header_sum_v6 if v6 else pseudo_header_sum_v4)(raddr, laddr, _IPPROTO_TCP, 0)
            if psum_in is None:
                psum_in = psum
            if psum_out is None:
                psum_out = psum
        # Checksums: constant parts of the pseudo-header (the length is added per segment) and, for output,
        # the ports too, so a data header's checksum is a handful of additions.
        self._psum_in = psum_in
        self._psum_out = psum_out
        self._partial = False
        self._csum_base = psum_out + lport + rport
        self._ports_in = (rport << 16) | lport
        self._ports_out = (lport << 16) | rport
        self._events: deque[Event] = deque()
        self._rx = bytearray()  # in-order data not yet handed over
        self._take_mode = False  # take_data() was used: next_event() reports no DataReceived
        self._ctl: list[bytes] = []  # headers queued outside transmit() (RSTs, keepalive probes)
        self._delack = params.delayed_ack
        self._ka_idle = params.keepalive_idle if params.keepalive_idle is not None else 0.0
        self._rcv_limit = params.rcv_buffer
        self._snd_limit = params.snd_buffer
        # send side
        if isn is None:
            isn = _DEFAULT_ISN.isn(laddr, lport, raddr, rport, now)
        iss = isn & _M32
        self._iss = iss
        self._snd_una = iss
        self._snd_nxt = iss
        self._snd_max = iss
        # The send buffer: queued bytes are _sndbuf[_snd_lo:_snd_hi], the first of them is sequence number
        # _buf_seq. The bytearray keeps its length (its capacity): see _reserve().
        self._sndbuf = bytearray()
        self._snd_lo = 0
        self._snd_hi = 0
        self._buf_seq = iss + 1
        self._fin_seq: int | None = None  # sequence number of our FIN once shutdown() placed it
        self._snd_wnd = 0
        self._snd_wl1 = 0
        self._snd_wl2 = 0
        self._max_snd_wnd = 0
        self._snd_wscale = 0
        self._smss = DEFAULT_MSS if mss > DEFAULT_MSS else mss
        self._tso_request = 0
        self._tso = 0  # largest TSO payload (a multiple of _smss), 0 = off
        self._cc: CongestionControl = ALGORITHMS[params.congestion_control](iss)
        self._rtt = RttEstimator(params.rto_initial, params.rto_min, params.rto_max)
        self._fast_rexmit = False
        self._force_send = False
        self._probe_pending = False
        self._probes_unanswered = 0
        self._persist_backoff = 0
        self._retries = 0
        self._syn_pending = initial_state == SYN_SENT
        self._syn_retransmitted = False
        self._wscale_ok = False
        # receive side
        self._irs = 0
        self._rcv_nxt = 0
        self._rcv_adv = 0  # right edge of the window we advertised (never moves left)
        self._rcv_wscale = 0
        self._max_wnd = 0xFFFF  # largest window the header can express (grows with scaling)
        self._rcv_unconsumed = 0
        thresh = self._rcv_limit // 2
        if thresh > mss:
            thresh = mss
        self._sws_thresh = thresh if thresh > 1 else 1
        self._ooo = ReassemblyQueue(_OOO_MAX_BLOCKS)
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
        isn: int | None = None,
        *,
        psum_in: int | None = None,
        psum_out: int | None = None,
        verified: bool = False,
    ) -> TcpConnection:
        """Passive open from the guest's SYN; sends nothing until :meth:`accept`/:meth:`refuse`.

        ``syn`` is the raw segment (header and payload; its checksum is verified here unless
        ``verified``) or a :class:`~vmlan.wire.tcp.TcpHeader` the caller already parsed and verified.
        Anything that is not a valid bare SYN for these addresses and ports raises
        :class:`~vmlan.wire.errors.WireError` (the caller's malformed-packet path), never another
        exception. Data carried by the SYN is not acknowledged: the guest sends it again. ``isn``
        defaults to an RFC 6528 ISN from a per-process key; ``psum_in``/``psum_out`` (pseudo-header sums
        without the length, of segments from and to the guest) default to the ones of the addresses.
        """
        conn = cls(local, remote, params, now, isn, psum_in=psum_in, psum_out=psum_out)
        if isinstance(syn, TcpHeader):
            sport, dport, seq, flags, window = syn.sport, syn.dport, syn.seq, syn.flags, syn.window
            mss, wscale = syn.options.mss, syn.options.wscale
        else:
            n = len(syn)
            if not verified and n >= TCP_HLEN and (sum16(syn) + conn._psum_in + n) % 0xFFFF:
                raise IntegrityError("TCP", "bad checksum on the SYN")
            # TcpHeader.parse's checks, without its two frozen dataclasses (half of this method's time);
            # anything unusual goes through it, for its exact error.
            if n < TCP_HLEN:
                TcpHeader.parse(syn)
            sport, dport, seq, _ack, doff, flags, window, _csum, _urg = _FIXED.unpack_from(syn)
            hlen = (doff >> 4) * 4
            if hlen < TCP_HLEN or hlen > n or not sport or not dport or (flags & SYN and flags & (FIN | RST)):
                TcpHeader.parse(syn)
                raise IntegrityError("TCP", "malformed SYN")  # not reached: parse() raised
            mss, wscale = option_fields(syn, TCP_HLEN, hlen)[:2] if hlen > TCP_HLEN else (None, None)
            conn._syn_data = n - hlen
        if flags & (SYN | ACK | RST | FIN) != SYN:
            raise SanityError("TCP", f"passive open needs a bare SYN, got flags {flags:#04x}")
        if sport != remote[1] or dport != local[1]:
            raise SanityError("TCP", f"SYN for ports {sport}->{dport}, not {remote[1]}->{local[1]}")
        conn._take_syn(seq, mss, wscale)
        # The SYN-ACK's window is not scaled (RFC 7323 2.2): what the guest sees until it has our ACK.
        conn._snd_wnd = window
        conn._max_snd_wnd = window
        return conn

    @classmethod
    def connect(
        cls,
        local: tuple[bytes, int],
        remote: tuple[bytes, int],
        params: TcpParams,
        now: float,
        isn: int | None = None,
        *,
        psum_in: int | None = None,
        psum_out: int | None = None,
    ) -> TcpConnection:
        """Active open toward the guest (QEMU's hostfwd: a host client connected, we dial the guest)."""
        return cls(local, remote, params, now, isn, psum_in=psum_in, psum_out=psum_out, initial_state=SYN_SENT)

    def _take_syn(self, seq: int, mss: int | None, wscale: int | None) -> None:
        """Record the guest's SYN: its ISN and the options it offered (MSS and window scale, None if absent)."""
        self._irs = seq
        self._rcv_nxt = seq + 1
        if mss is None:
            mss = DEFAULT_MSS
        if mss < MIN_MSS:
            mss = MIN_MSS
        self._smss = mss if mss < self._mss else self._mss
        if wscale is not None:
            self._wscale_ok = True
            self._snd_wscale = wscale if wscale < MAX_WSCALE else MAX_WSCALE
        else:
            self._wscale_ok = False
            self._snd_wscale = 0
        self._update_tso()

    # -- the state table ------------------------------------------------------------------------------------
    def _fire(self, inp: Input, now: float, seg: _Seg = _NO_SEG) -> None:
        """Look ``inp`` up in the state table, change state, perform the row's steps. The only writer of
        ``_state`` after construction."""
        old = self._state
        t = _ROWS.get((old, inp))
        if t is None:  # not in the table: lookup() gives the default path
            t, _listed = lookup(old, inp)
            self.counters.unlisted += 1
        actions = t.actions
        if actions and actions[0] is Do.MISUSE:
            raise TcpStateError(f"{inp.value} in state {old}")
        new = t.next
        self._state = new
        hook = self.on_transition
        if hook is not None:
            hook(old, inp, new)
        for do in actions:
            _STEPS[do](self, now, seg)
        if new == CLOSED and old != CLOSED:
            self._close(t.reason or "closed")

    def _do_drop(self, now: float, seg: _Seg) -> None:
        self.counters.dropped += 1

    def _do_take_syn(self, now: float, seg: _Seg) -> None:
        assert seg.options is not None
        self._take_syn(seg.seq, seg.options.mss, seg.options.wscale)

    def _do_send_syn(self, now: float, seg: _Seg) -> None:
        if self._wscale_ok:
            self._rcv_wscale = self.params.wscale
        self._syn_pending = True

    def _do_crossed_syn(self, now: float, seg: _Seg) -> None:
        # Simultaneous open (RFC 9293 figure 7): answer with a SYN-ACK, as SYN_RECEIVED does.
        if self._wscale_ok:
            self._rcv_wscale = self.params.wscale
        self._snd_nxt = self._snd_una = self._iss
        self._syn_pending = True

    def _do_synack(self, now: float, seg: _Seg) -> None:
        iss = self._iss
        self._snd_una = self._snd_nxt = iss + 1
        self._snd_max = max(self._snd_max, iss + 1)
        self._rtt.on_ack(iss + 1, now)
        self._t_rto = None
        self._snd_wnd = seg.window  # never scaled in a SYN (RFC 7323 2.2)
        self._max_snd_wnd = seg.window
        self._snd_wl1 = seg.seq
        self._snd_wl2 = iss + 1
        self._rcv_adv = self._rcv_nxt  # the window of our SYN counted from RCV.NXT; recomputed at once
        self._ack_now = True

    def _do_ack_of_syn(self, now: float, seg: _Seg) -> None:
        self._snd_wnd = seg.window << self._snd_wscale
        self._max_snd_wnd = max(self._max_snd_wnd, self._snd_wnd)
        self._snd_wl1 = seg.seq
        self._snd_wl2 = seg.ack

    def _do_establish(self, now: float, seg: _Seg) -> None:
        """Handshake done (either direction): switch to scaled windows, report, start keepalive."""
        p = self.params
        if self._wscale_ok:
            self._rcv_wscale = p.wscale
        else:
            self._rcv_wscale = 0
            self._snd_wscale = 0
        self._max_wnd = 0xFFFF << self._rcv_wscale
        self._cc.on_established(self._smss, p.initial_window, p.snd_buffer)
        self._retries = 0
        self._rtt.on_established(self._syn_retransmitted)
        self._events.append(Connected())
        if p.keepalive_idle is not None:
            self._t_ka = now + p.keepalive_idle
        self._update_tso()
        if self._fin_seq is not None:
            self._fire(Input.SHUTDOWN, now)  # the host shut down before the handshake: FIN_WAIT_1 now

    def _do_queue_fin(self, now: float, seg: _Seg) -> None:
        if self._fin_seq is None:
            self._fin_seq = self._buf_seq + self._snd_hi - self._snd_lo

    def _do_eof(self, now: float, seg: _Seg) -> None:
        self._rcv_nxt += 1
        self._ooo.clear()
        self._ooo_fin = None
        self._ack_now = True
        self._events.append(EndOfStream())

    def _do_wait_fin_2(self, now: float, seg: _Seg) -> None:
        self._t_rto = None
        if self.params.fin_wait_2_timeout is not None:
            self._t_close = now + self.params.fin_wait_2_timeout

    def _do_wait_time(self, now: float, seg: _Seg) -> None:
        self._t_rto = self._t_persist = self._t_ka = None
        self._t_close = now + self.params.time_wait

    def _do_challenge_ack(self, now: float, seg: _Seg) -> None:
        self.counters.challenge_acks += 1  # RFC 5961 3.2 and 4.2
        self._ack_now = True

    def _do_rst_reply(self, now: float, seg: _Seg) -> None:
        if seg.flags & ACK:
            self._queue_rst(seg.ack, 0, RST)
        else:
            self._queue_rst(0, seg.seq + seg.seglen, RST | ACK)

    def _do_rst_for_ack(self, now: float, seg: _Seg) -> None:
        self._queue_rst(seg.ack, 0, RST)  # <SEQ=SEG.ACK><CTL=RST>

    def _do_send_rst(self, now: float, seg: _Seg) -> None:
        self._queue_rst(self._ack_seq(), self._rcv_nxt, RST | ACK)

    def _do_refuse_syn(self, now: float, seg: _Seg) -> None:
        self._queue_rst(0, self._rcv_nxt + self._syn_data, RST | ACK)

    def _do_peer_reset(self, now: float, seg: _Seg) -> None:
        self._events.append(Reset())

    def _close(self, reason: str) -> None:
        """Entering CLOSED: report it (after any data already accepted, which the guest saw ACKed) and
        let go of everything but that data and the RST that may still be queued."""
        self._events.append(Closed(reason))
        self._t_rto = self._t_persist = self._t_delack = self._t_close = self._t_ka = None
        self._syn_pending = self._fast_rexmit = self._force_send = self._probe_pending = False
        self._ack_now = False
        self._dupacks_out = 0
        self._sndbuf = bytearray()
        self._snd_lo = self._snd_hi = 0
        self._ooo.clear()

    # -- host-side operations -------------------------------------------------------------------------------
    def accept(self, now: float) -> None:
        """The host side is connected: answer the guest's SYN with our SYN-ACK (a no-op once closed)."""
        self._fire(Input.ACCEPT, now)

    def refuse(self, now: float) -> None:
        """The host refused: RST|ACK to the guest's SYN (its ``connect()`` fails with ECONNREFUSED).
        After the handshake this is :meth:`abort`."""
        self._fire(Input.REFUSE, now)

    def shutdown(self, now: float) -> None:
        """Host EOF: send FIN after everything queued. Idempotent; receiving continues (half-close)."""
        self._fire(Input.SHUTDOWN, now)

    def abort(self, now: float) -> None:
        """Host error: reset the guest's connection now (no-op once closed)."""
        self._fire(Input.ABORT, now)

    def send_space(self) -> int:
        """How many bytes :meth:`send` (or :meth:`fill_from`) would accept now."""
        if self._state not in CAN_QUEUE or self._fin_seq is not None:
            return 0
        n = self._snd_limit - self._snd_hi + self._snd_lo
        return n if n > 0 else 0

    def send(self, data: BytesLike, now: float) -> int:
        """Queue host bytes for the guest (copied); returns how many were taken (at most :meth:`send_space`).

        Returns 0 once the connection is closed or reset (the events say why). Raises
        :class:`TcpStateError` after :meth:`shutdown`: the caller promised no more data.
        """
        if self._fin_seq is not None:
            raise TcpStateError("send() after shutdown()")
        if self._state not in CAN_QUEUE:
            return 0
        n = min(len(data), self._snd_limit - self._snd_hi + self._snd_lo)
        if n <= 0:
            return 0
        self._reserve(n)
        hi = self._snd_hi
        if n == len(data):
            self._sndbuf[hi : hi + n] = data
        else:
            with memoryview(data) as view:
                self._sndbuf[hi : hi + n] = view[:n]
        self._snd_hi = hi + n
        return n

    def _reserve(self, n: int) -> None:
        """Make room for ``n`` more bytes after ``_snd_hi``.

        The buffer is a bytearray of fixed length whose live part moves right as data is acknowledged
        (an index moves, nothing is copied) and is moved back to the front only when it reaches the
        end -- a copy of at most half the capacity, from a region that cannot overlap its destination.
        Deleting the acknowledged prefix instead (``del buf[:k]``) looks O(1) but is not: CPython
        reallocates and copies a bytearray that shrinks below half its allocation, and again when one
        whose start has moved grows, which for a sender refilled after every ACK cost ~1 us per ACK.
        A fixed length also spares :meth:`fill_from` zero-filling the room it lends to ``recv_into``.
        The capacity grows geometrically up to about twice the send limit; above 64 KiB the buffer is
        released whenever it empties, so an idle connection keeps no big allocation."""
        buf = self._sndbuf
        lo = self._snd_lo
        hi = self._snd_hi
        cap = len(buf)
        if hi + n <= cap:
            return
        live = hi - lo
        if live + n <= cap >> 1:
            # lo > cap - n - live >= cap / 2 >= live: [lo, hi) and [0, live) are disjoint.
            with memoryview(buf) as view:
                buf[:live] = view[lo:hi]
        else:
            new = bytearray(max(2 * (live + n), 1 << 14))
            with memoryview(buf) as view:
                new[:live] = view[lo:hi]
            self._sndbuf = new
        self._snd_lo = 0
        self._snd_hi = live

    def fill_from(self, reader: Callable[[memoryview], int], limit: int, now: float) -> int:
        """Host bytes for the guest without an intermediate copy: ``reader`` writes them into the send buffer.

        The buffer grows by ``min(limit, send_space())`` bytes; ``reader`` gets a writable memoryview of
        exactly that region (the I/O layer passes ``sock.recv_into``) and returns how many bytes it
        wrote. Those are kept, the rest is trimmed, and the count is returned -- 0 is the reader's
        (EOF is the caller's business), or there was no room, in which case ``reader`` is not called at
        all. The view is released before this returns; an exception from ``reader`` propagates and
        nothing is kept. ``reader`` must not call back into this connection. Raises
        :class:`TcpStateError` after :meth:`shutdown`, like :meth:`send`.
        """
        if self._fin_seq is not None:
            raise TcpStateError("fill_from() after shutdown()")
        if self._state not in CAN_QUEUE:  # send_space(), inlined (_fin_seq is None here)
            return 0
        space = self._snd_limit - self._snd_hi + self._snd_lo
        n = limit if limit < space else space
        if n <= 0:
            return 0
        hi = self._snd_hi
        if hi + n > len(self._sndbuf):  # _reserve()'s no-op case, without the call
            self._reserve(n)
            hi = self._snd_hi
        with memoryview(self._sndbuf) as whole, whole[hi : hi + n] as region:
            got = reader(region)
        if not 0 <= got <= n:
            raise ValueError(f"reader returned {got!r} for a {n}-byte buffer")
        self._snd_hi = hi + got  # what the reader did not fill was never part of the data
        return got

    def consume(self, n: int) -> None:
        """The host side took ``n`` received bytes: reopen the window by that much.

        A window update is sent at once only when it matters (the window at least doubles and grows by
        ``min(buffer/2, MSS)``, Linux's rule); otherwise the new window rides on the next ACK.
        """
        unconsumed = self._rcv_unconsumed
        if n < 0 or n > unconsumed:
            raise ValueError(f"consume({n}) but only {unconsumed} bytes are unconsumed")
        unconsumed -= n
        self._rcv_unconsumed = unconsumed
        if self._state in RECEIVING:  # _maybe_window_update(), inlined: this runs once per segment
            cur = self._rcv_adv - self._rcv_nxt
            free = self._rcv_limit - unconsumed
            if free - cur >= self._sws_thresh and free >= 2 * cur and cur < self._max_wnd:
                self._ack_now = True

    def _maybe_window_update(self) -> None:
        cur = self._rcv_adv - self._rcv_nxt
        free = self._rcv_limit - self._rcv_unconsumed
        if free - cur >= self._sws_thresh and free >= 2 * cur and cur < self._max_wnd:
            self._ack_now = True

    def set_buffer_limits(self, rcv: int, snd: int) -> None:
        """Memory budget: hold at most ``rcv`` received and ``snd`` unacknowledged bytes from now on.

        Either may be lowered or raised at any time, up to the :class:`TcpParams` sizes (larger values
        are clamped). A lower receive limit never retracts the window already offered (RFC 9293 3.8.6):
        the window shrinks as the guest fills it and reopens only within the new limit. A lower send
        limit shows in :meth:`send_space`; data already queued stays queued.
        """
        if rcv < 0 or snd < 0:
            raise ValueError(f"buffer limits must not be negative, got {rcv} and {snd}")
        p = self.params
        self._rcv_limit = rcv if rcv < p.rcv_buffer else p.rcv_buffer
        self._snd_limit = snd if snd < p.snd_buffer else p.snd_buffer
        self._sws_thresh = max(1, min(self._rcv_limit // 2, self._mss))
        if self._state in RECEIVING:
            self._maybe_window_update()

    def set_tso(self, max_bytes: int) -> None:
        """Let data segments carry up to ``max_bytes`` of payload (rounded down to a multiple of
        :attr:`send_mss`) for a peer that segments them itself (TSO/GSO); 0 turns it off. Each is still
        limited by the peer's window and the congestion window; the caller passes :attr:`send_mss` as
        ``gso_size``."""
        if not 0 <= max_bytes <= 0xFFFF:
            raise ValueError(f"TSO size {max_bytes} outside 0..65535")
        self._tso_request = max_bytes
        self._update_tso()

    def set_partial_checksum(self, on: bool) -> None:
        """Data segments carry only the folded pseudo-header sum (length included) in their checksum
        field, for a peer that finishes checksums itself (virtio-net's NEEDS_CSUM: it sums from the TCP
        header to the end, that field included). The caller marks those frames so (csum_start = the TCP
        header, csum_offset = 16); segments without data keep a complete checksum. Saves summing every
        payload toward a TAP with offloads (64 KiB TSO segments: ~5 us each)."""
        self._partial = on

    @property
    def partial_checksum(self) -> bool:
        return self._partial

    def _update_tso(self) -> None:
        smss = self._smss
        size = self._tso_request if self._tso_request < self._max_mss else self._max_mss
        self._tso = size - size % smss if size >= 2 * smss else 0

    # -- events and timers ----------------------------------------------------------------------------------
    def take_data(self) -> bytearray | None:
        """The in-order bytes received since the last call (None if none), handed over without a copy.

        The caller owns the returned buffer; the bytes still count against the receive window until
        :meth:`consume`\\ d. Once this has been called, :meth:`next_event` reports no
        :class:`DataReceived`: call this before draining the events, so data comes before the
        :class:`EndOfStream` or :class:`Closed` that follows it."""
        self._take_mode = True
        rx = self._rx
        if not rx:
            return None
        self._rx = bytearray()
        return rx

    def next_event(self) -> Event | None:
        """The next event, or None. :class:`Closed` is the last one a connection ever returns.

        In-order data not taken with :meth:`take_data` comes as one :class:`DataReceived` (ordered after
        :class:`Connected` and before any other event, which is the stream's order: no data is accepted
        before the handshake or after the guest's FIN)."""
        events = self._events
        rx = self._rx
        if rx and not self._take_mode and not (events and type(events[0]) is Connected):
            data = bytes(rx)
            rx.clear()
            return DataReceived(data)
        if events:
            return events.popleft()
        return None

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (absolute time), or None.

        Ask after :meth:`transmit`: the retransmission timer of a segment is armed when that segment is
        produced (a SYN due again after :meth:`handle_timer` has no timer until it is sent).
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
            self._fire(Input.TIME_WAIT_END if self._state == TIME_WAIT else Input.FIN_WAIT_2_IDLE, now)
            if self._state == CLOSED:
                return
        if self._t_rto is not None and now >= self._t_rto:
            self._t_rto = None
            self._on_rto(now)
            if self._state == CLOSED:
                return
        if self._t_persist is not None and now >= self._t_persist:
            self._t_persist = None
            self._on_persist(now)
            if self._state == CLOSED:
                return
        if self._t_delack is not None and now >= self._t_delack:
            self._t_delack = None
            self._ack_now = True
        if self._t_ka is not None and now >= self._t_ka:
            self._t_ka = None
            self._on_keepalive(now)

    def _on_rto(self, now: float) -> None:
        p = self.params
        state = self._state
        if state in (SYN_SENT, SYN_RECEIVED):
            self._retries += 1
            if self._retries > p.syn_retries:
                self._fire(Input.SYN_RETRY_LIMIT, now)
                return
            self._syn_pending = True
            self._syn_retransmitted = True
        elif state in SENDING and self._snd_una < self._snd_max:
            self._retries += 1
            if self._retries > p.max_retransmits:
                self._fire(Input.RETRANSMIT_LIMIT, now)
                return
            self._cc.on_rto(self._snd_una, self._snd_max)
            self._snd_nxt = self._snd_una  # go-back-N
            self._force_send = True  # even into a closed window: the retransmission is the probe
        else:
            return
        self.counters.timeouts += 1
        self._rtt.backoff()

    def _persist_interval(self) -> float:
        p = self.params
        return min(max(self._rtt.rto, p.rto_min) * (1 << min(self._persist_backoff, 16)), p.rto_max)

    def _on_persist(self, now: float) -> None:
        if self._state not in SENDING or self._buf_seq + self._snd_hi - self._snd_lo <= self._snd_nxt:
            return
        if self._snd_wnd == 0:
            self._probes_unanswered += 1
            if self._probes_unanswered > self.params.max_retransmits:
                self._fire(Input.PERSIST_LIMIT, now)
                return
            self._probe_pending = True
        else:
            self._force_send = True  # the sender-SWS override timeout
        self._persist_backoff += 1

    def _on_keepalive(self, now: float) -> None:
        p = self.params
        state = self._state
        if p.keepalive_idle is None or state == TIME_WAIT:
            return
        if state not in KEEPALIVE or self._snd_una < self._snd_max or self._t_persist is not None:
            # Retransmissions or probes are already testing the guest, with their own limits (and
            # FIN_WAIT_1/CLOSING/LAST_ACK have a FIN in flight): look again one idle period later.
            self._t_ka = now + p.keepalive_idle
            return
        if self._ka_probes >= p.keepalive_probes:
            self._fire(Input.KEEPALIVE_LIMIT, now)
            return
        self._ka_probes += 1
        self.counters.keepalives += 1
        # seq = SND.UNA - 1: outside the guest's window, so it must answer with an ACK (RFC 9293 3.8.4).
        self._ctl.append(self._header(self._snd_una - 1, ACK, self._window()))
        self.counters.segments_out += 1
        self._t_ka = now + p.keepalive_interval

    # -- input ----------------------------------------------------------------------------------------------
    def receive_segment(self, segment: BytesLike, now: float, verified: bool = False) -> None:
        """Process one raw TCP segment (header and payload) from the guest.

        The caller verified the IP header and bounded the segment by its length field. The TCP checksum
        is verified here unless ``verified`` (a TAP's vnet header said DATA_VALID, or the checksum is
        only partial under NEEDS_CSUM). Segments larger than our MSS (GRO) are fine when they fit the
        window. Anything malformed or unexpected is dropped and counted (or answered as RFC 9293 3.10.7
        says); this never raises.
        """
        c = self.counters
        c.segments_in += 1
        n = len(segment)
        if n < TCP_HLEN:
            c.malformed += 1
            return
        if not verified:
            reduce = _sums._add_reduce
            if reduce is not None and n >= _sums.NUMPY_MIN_BYTES and not n & 3:
                # sum16() inlined for the usual case (numpy loaded, whole words): one call less per segment.
                s = int(reduce(_sums._frombuffer(segment, _sums._U4, n >> 2))) << 8
                if (s + self._psum_in + n) % 0xFFFF:
                    c.bad_checksum += 1
                    return
            elif (sum16(segment) + self._psum_in + n) % 0xFFFF:
                c.bad_checksum += 1
                return
        ports, wseq, wack, doff, flags, window = _HDR_IN.unpack_from(segment)
        hlen = (doff >> 2) & 0x3C
        if ports != self._ports_in or hlen < TCP_HLEN or hlen > n:
            c.malformed += 1
            return
        if flags & 0x17 == ACK and self._state == ESTABLISHED and wseq == self._rcv_nxt & _M32:
            # Header prediction (Van Jacobson): in-order data or a pure ACK, the bulk of every transfer.
            rcv_nxt = self._rcv_nxt
            plen = n - hlen
            if plen <= self._rcv_adv - rcv_nxt:
                if self._t_ka is not None:
                    self._t_ka = now + self._ka_idle
                    self._ka_probes = 0
                una = self._snd_una
                snd_wnd = self._snd_wnd
                if plen and wack == una & _M32 and snd_wnd and window << self._snd_wscale == snd_wnd:
                    # Guest->host bulk: nothing new acknowledged, same window (what _on_ack would conclude;
                    # _probes_unanswered is 0 already: probes count only while the window is zero).
                    if self._snd_wl1 <= rcv_nxt:
                        self._snd_wl1 = rcv_nxt
                        self._snd_wl2 = una
                        if self._t_persist is not None:
                            self._t_persist = None
                            self._persist_backoff = 0
                elif not self._on_ack(flags, rcv_nxt, wack, window, plen, now):
                    return
                if plen:
                    # A memoryview slice is free; slicing bytes would copy the payload once more.
                    self._rx += segment[hlen:] if type(segment) is memoryview else memoryview(segment)[hlen:]
                    self._rcv_nxt = rcv_nxt + plen
                    self._rcv_unconsumed += plen
                    c.bytes_in += plen
                    if self._ooo.nbytes or self._ooo_fin is not None:
                        self._gap_filled(plen, now)
                    else:
                        segs = self._segs_unacked + (2 if plen > self._mss else 1)
                        self._segs_unacked = segs
                        if segs >= 2:
                            self._ack_now = True
                        elif self._t_delack is None:
                            self._t_delack = now + self._delack
                return
        state = self._state
        if state == CLOSED:
            seglen = n - hlen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
            self._fire(Input.RST if flags & RST else Input.SEGMENT, now, _Seg(wseq, wack, flags, window, seglen))
            return
        if flags & SYN and flags & (RST | FIN):
            c.malformed += 1
            return
        if state == LISTEN:
            self._input_listen(segment, hlen, flags, wseq, now)
        elif state == SYN_SENT:
            self._input_syn_sent(segment, hlen, flags, wseq, wack, window, now)
        else:
            self._input_synchronized(segment, hlen, flags, wseq, wack, window, now)

    def _input_listen(self, segment: BytesLike, hlen: int, flags: int, wseq: int, now: float) -> None:
        if flags & RST:
            if wseq == self._rcv_nxt & _M32:
                self._fire(Input.RST, now)  # the guest gave up before we answered: the caller drops the connect
            else:
                self.counters.out_of_window += 1
            return
        if flags & SYN and not flags & ACK:
            if wseq == self._irs:
                self._fire(Input.SYN_REPEAT, now)
                return
            options = self._parse_options(segment, hlen)
            if options is not None:
                self._fire(Input.SYN, now, _Seg(wseq, 0, flags, options=options))
            return
        self._fire(Input.SEGMENT, now)  # nothing else is meaningful before we answered

    def _parse_options(self, segment: BytesLike, hlen: int) -> TcpOptions | None:
        if hlen == TCP_HLEN:
            return TcpOptions()
        try:
            return TcpOptions.parse(segment, TCP_HLEN, hlen)
        except WireError:
            self.counters.malformed += 1
            return None

    def _input_syn_sent(
        self, segment: BytesLike, hlen: int, flags: int, wseq: int, wack: int, window: int, now: float
    ) -> None:
        c = self.counters
        if flags & ACK and wack != (self._iss + 1) & _M32:
            c.out_of_window += 1
            if not flags & RST:
                self._fire(Input.BAD_ACK, now, _Seg(wseq, wack, flags))
            return
        if flags & RST:
            if flags & ACK:
                self._fire(Input.RST, now)  # the guest refused our connection
            else:
                c.out_of_window += 1
            return
        if not flags & SYN:
            self._fire(Input.SEGMENT, now)
            return
        options = self._parse_options(segment, hlen)
        if options is not None:
            seg = _Seg(wseq, wack, flags, window, options=options)
            self._fire(Input.SYN_ACK if flags & ACK else Input.SYN, now, seg)

    def _input_synchronized(
        self, segment: BytesLike, hlen: int, flags: int, wseq: int, wack: int, window: int, now: float
    ) -> None:
        c = self.counters
        state = self._state
        rcv_nxt = self._rcv_nxt
        d = (wseq - rcv_nxt) & _M32
        if d & _HALF:
            d -= _WRAP
        wnd = self._rcv_adv - rcv_nxt
        if flags & RST:
            # RFC 5961 3.2: only an exact match resets; elsewhere in the window, a challenge ACK.
            if d == 0:
                self._fire(Input.RST, now)
            elif 0 < d < max(wnd, 1):
                self._fire(Input.RST_IN_WINDOW, now)
            else:
                c.out_of_window += 1
            return
        if flags & SYN:
            inp = Input.SYN_REPEAT if wseq == self._irs else Input.SYN_NEW if d > 0 else Input.SYN
            self._fire(inp, now)
            return
        plen = len(segment) - hlen
        seglen = plen + (1 if flags & FIN else 0)
        acceptable = d == 0 or (d + seglen > 0 and d < wnd) if seglen else (d == 0 or 0 <= d < wnd)
        if not acceptable:
            if d < 0:
                c.duplicates += 1  # left of the window: a retransmission, a keepalive or a window probe
            else:
                c.out_of_window += 1
            if flags & FIN:
                self._fire(Input.FIN_REPEAT, now)
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
        if self._t_ka is not None:
            self._t_ka = now + self._ka_idle
        self._ka_probes = 0
        if state == FIN_WAIT_2 and self.params.fin_wait_2_timeout is not None:
            self._t_close = now + self.params.fin_wait_2_timeout
        if state == SYN_RECEIVED:
            una = self._snd_una
            a = una + (((wack - una) + _HALF) & _M32) - _HALF
            if not una < a <= self._snd_max:
                c.out_of_window += 1
                self._fire(Input.BAD_ACK, now, _Seg(wseq, wack, flags))
                return
            self._fire(Input.ACK_OF_SYN, now, _Seg(rcv_nxt + d, a, flags, window))
        if not self._on_ack(flags, rcv_nxt + d, wack, window, plen, now):
            return
        state = self._state
        if state in (CLOSED, TIME_WAIT):
            return
        fin_at = rcv_nxt + d + plen  # absolute sequence number of a FIN in this segment
        if plen and state in RECEIVING:
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
                payload.release()
        elif plen:
            c.dropped += 1  # data after the guest's FIN
        if flags & FIN and self._state in RECEIVING and self._rcv_nxt <= fin_at <= self._rcv_adv:
            if fin_at == self._rcv_nxt:
                self._fire(Input.FIN, now)
            else:
                self._ooo_fin = fin_at
                self._ack_now = True

    def _in_order(self, payload: memoryview, now: float) -> None:
        """Data starting exactly at RCV.NXT (already trimmed to the window), off the fast path."""
        n = len(payload)
        self._rx += payload
        self._rcv_nxt += n
        self._rcv_unconsumed += n
        self.counters.bytes_in += n
        if self._ooo.nbytes or self._ooo_fin is not None:
            self._gap_filled(n, now)
            return
        segs = self._segs_unacked + (2 if n > self._mss else 1)
        self._segs_unacked = segs
        if segs >= 2:
            self._ack_now = True
        elif self._t_delack is None:
            self._t_delack = now + self._delack

    def _gap_filled(self, n: int, now: float) -> None:
        """In-order data arrived while out-of-order data or a FIN waits: take what now continues."""
        if self._ooo:
            nxt0 = self._rcv_nxt
            nxt = self._ooo.drain(nxt0, self._rx)
            k = nxt - nxt0
            self._rcv_nxt = nxt
            self._rcv_unconsumed += k
            self.counters.bytes_in += k
        self._ack_now = True  # RFC 5681 4.2: ACK at once when a segment fills (part of) a gap
        if self._ooo_fin is not None and self._ooo_fin == self._rcv_nxt:
            self._fire(Input.FIN, now)
            return
        self._segs_unacked += 2 if n > self._mss else 1

    def _out_of_order(self, start: int, data: memoryview) -> None:
        """Keep the parts of ``data`` (at absolute ``start``) not already held; duplicate-ACK it at once."""
        c = self.counters
        self._dupacks_out += 1
        result = self._ooo.add(start, data)
        if result == KEPT:
            c.ooo_segments += 1
        elif result == DUPLICATE:
            c.duplicates += 1
        else:
            c.ooo_dropped += 1

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
        if a < una - (self._max_snd_wnd if self._max_snd_wnd > 0xFFFF else 0xFFFF):
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
                self._rtt.discard()
        elif (
            a == una
            and plen == 0
            and not flags & (SYN | FIN)
            and wnd == old_wnd
            and wnd
            and self._snd_max > una
            and self._state in SENDING
        ):
            self.counters.dup_acks += 1
            if self._cc.on_dup_ack(una, self._snd_max):
                self._fast_rexmit = True
                self._rtt.discard()  # the ACK that covers a timed segment would also cover this one (Karn)
                self.counters.fast_retransmits += 1
        elif self._snd_wnd == 0 and self._snd_nxt > self._snd_una:
            self._snd_nxt = self._snd_una
            self._t_rto = None
            self._rtt.discard()
        if self._snd_wnd == 0:
            self._arm_persist(now)
        return self._state != CLOSED

    def _arm_persist(self, now: float) -> None:
        """Start the persist timer if data waits, nothing is in flight and no other timer tests the guest."""
        if (
            self._t_persist is None
            and self._t_rto is None
            and self._snd_nxt == self._snd_una
            and self._buf_seq + self._snd_hi - self._snd_lo > self._snd_nxt
            and self._state in SENDING
        ):
            self._t_persist = now + self._persist_interval()

    def _new_ack(self, a: int, now: float) -> None:
        una = self._snd_una
        buf_seq = self._buf_seq
        if a > buf_seq:
            lo = self._snd_lo
            hi = self._snd_hi
            k = a - buf_seq
            if k > hi - lo:
                k = hi - lo
            if k > 0:
                self._buf_seq = buf_seq + k
                lo += k
                if lo == hi:  # all acknowledged: start over at the front, let a big buffer go
                    self._snd_lo = self._snd_hi = 0
                    if len(self._sndbuf) > _KEEP_SNDBUF:
                        self._sndbuf = bytearray()
                else:
                    self._snd_lo = lo
        self._snd_una = a
        if self._snd_nxt < a:
            self._snd_nxt = a
        self._retries = 0
        rtt = self._rtt
        if rtt.timed_seq is not None and a >= rtt.timed_seq:
            rtt.on_ack(a, now)
        snd_max = self._snd_max
        if self._cc.on_ack(a - una, a, snd_max):
            self._fast_rexmit = True  # a partial ACK: the next hole is lost too
        self._t_rto = None if a >= snd_max else now + rtt.rto
        fin = self._fin_seq
        if fin is not None and una <= fin < a:
            self._fire(Input.ACK_OF_FIN, now)

    # -- output ---------------------------------------------------------------------------------------------
    def _window(self) -> int:
        """The window field for our next segment; advances the right edge by SWS rules, never backwards.

        The field is rounded down to our scale, so the edge the guest sees can sit up to 2**shift - 1
        bytes left of the furthest one we offered (RFC 7323 2.4); we keep accepting up to the furthest
        (``_rcv_adv``). Rounding up instead would let a guest trickling 1-byte segments move our edge
        ever further past the buffer."""
        rcv_nxt = self._rcv_nxt
        cur = self._rcv_adv - rcv_nxt
        free = self._rcv_limit - self._rcv_unconsumed
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

    def _header(self, seq: int, flags: int, window: int, ack: int | None = None, options: bytes = b"") -> bytes:
        """A header without payload toward the guest, checksum included (one struct.pack). Not counted."""
        seq &= _M32
        if ack is None:
            ack = self._rcv_nxt if flags & ACK else 0
        ack &= _M32
        hlen = TCP_HLEN + len(options)
        offset_flags = (hlen << 10) | flags
        s = self._csum_base + hlen + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16) + (ack & 0xFFFF) + offset_flags + window
        if options:
            s += sum16(options)
        header = _HDR_OUT.pack(self._ports_out, seq, ack, offset_flags, window, -s % 0xFFFF, 0)
        return header + options if options else header

    def _queue_rst(self, seq: int, ack: int, flags: int) -> None:
        self._ctl.append(self._header(seq, flags, 0, ack))
        self.counters.segments_out += 1

    def _ack_seq(self) -> int:
        """The sequence number for a segment without data: SND.MAX unless the guest's window retracted
        below it (Linux's tcp_acceptable_seq). After a go-back-N retransmission SND.NXT lies behind what
        the guest already holds, and a receiver drops an ACK whose sequence number is that old."""
        edge = self._snd_una + self._snd_wnd
        return self._snd_max if self._snd_max <= edge else max(edge, self._snd_una)

    def segments_to_send(self, now: float) -> list[bytes]:
        """Every segment due now toward the guest, each as one ``bytes`` (:meth:`transmit`, joined)."""
        out: list[bytes] = []
        append = out.append

        def emit(header: bytes, payload: bytes | memoryview) -> None:
            append(header + payload if payload else header)

        self.transmit(now, emit)
        return out

    def transmit(self, now: float, emit: Emit) -> int:
        """Call ``emit(header, payload)`` once per segment due now, in order: control, data, ACKs.

        ``header`` is the complete TCP header with its final checksum; ``payload`` is ``b""`` or a
        memoryview into the send buffer that is valid *only during the call* (it is released right
        after: copy it, typically by joining the frame, and keep no export of it); ``emit`` must not call
        back into this connection (a refill could move the data under the view). Returns the number of
        segments emitted. If ``emit`` raises, the segments before it count as sent and the exception
        propagates (the rest goes out on the next call or by retransmission).
        """
        count = 0
        ctl = self._ctl
        if ctl:
            self._ctl = []
            for header in ctl:
                emit(header, b"")
            count = len(ctl)
        state = self._state
        if self._syn_pending:
            if state in (CLOSED, LISTEN):
                return count
            self._send_syn(now, emit, state)
            return count + 1
        fresh = False
        win = -1
        if (
            self._snd_nxt < self._buf_seq + self._snd_hi - self._snd_lo
            or self._fin_seq == self._snd_nxt
            or self._fast_rexmit
            or self._probe_pending
            or self._force_send
        ) and state in SENDING:
            k, fresh, win = self._send_data(now, emit)
            count += k
        elif state in (CLOSED, LISTEN):
            return count
        dupacks = self._dupacks_out
        if dupacks or (self._ack_now and not fresh and state != SYN_SENT):
            header = self._ack_header(win)
            self._ack_now = False
            self._dupacks_out = 0
            self._segs_unacked = 0
            self._t_delack = None
            if dupacks > 1:
                k = dupacks if dupacks < _MAX_DUP_ACKS_OUT else _MAX_DUP_ACKS_OUT
                self.counters.segments_out += k
                for _ in range(k):
                    emit(header, b"")
                return count + k
            self.counters.segments_out += 1
            emit(header, b"")
            return count + 1
        if fresh:  # _clear_ack_state(), inlined: after every data segment
            self._ack_now = False
            self._dupacks_out = 0
            self._segs_unacked = 0
            self._t_delack = None
        return count

    def _ack_header(self, win: int) -> bytes:
        """A pure ACK: ``_header(_ack_seq(), ACK, win)`` in one call (``win`` < 0: compute it)."""
        rcv_nxt = self._rcv_nxt
        if win < 0:  # _window(), inlined
            cur = self._rcv_adv - rcv_nxt
            free = self._rcv_limit - self._rcv_unconsumed
            if free - cur >= self._sws_thresh:
                cur = free if free < self._max_wnd else self._max_wnd
                self._rcv_adv = rcv_nxt + cur
            if cur <= 0:
                win = 0
            else:
                win = cur >> self._rcv_wscale
                if win == 0 and free > 0:
                    win = 1
                    self._rcv_adv = rcv_nxt + (1 << self._rcv_wscale)
        una = self._snd_una
        seq = self._snd_max
        edge = una + self._snd_wnd
        if seq > edge:
            seq = edge if edge > una else una
        seq &= _M32
        ack = rcv_nxt & _M32
        s = self._csum_base + 0x5010 + 20 + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16) + (ack & 0xFFFF) + win
        return _HDR_OUT.pack(self._ports_out, seq, ack, 0x5010, win, -s % 0xFFFF, 0)

    def _clear_ack_state(self) -> None:
        self._ack_now = False
        self._dupacks_out = 0
        self._segs_unacked = 0
        self._t_delack = None

    def _send_syn(self, now: float, emit: Emit, state: str) -> None:
        self._syn_pending = False
        rtt = self._rtt
        if self._snd_max > self._iss:
            self.counters.retransmits += 1
            rtt.discard()
        else:
            rtt.start(self._iss + 1, now)
        window = self._rcv_limit if self._rcv_limit < 0xFFFF else 0xFFFF  # never scaled in a SYN (RFC 7323 2.2)
        wscale = self.params.wscale if (state == SYN_SENT or self._wscale_ok) else None
        options = _syn_options(self._mss, wscale)
        if state == SYN_SENT:
            header = self._header(self._iss, SYN, window, options=options)
        else:
            self._rcv_adv = self._rcv_nxt + window
            self._ack_now = False
            header = self._header(self._iss, SYN | ACK, window, options=options)
        self._snd_nxt = self._snd_max = self._iss + 1
        if self._t_rto is None:
            self._t_rto = now + rtt.rto
        self.counters.segments_out += 1
        emit(header, b"")

    def _send_data(self, now: float, emit: Emit) -> tuple[int, bool, int]:
        """Emit data/FIN segments (retransmissions first); returns (segments, fresh, window field or -1).

        ``fresh`` is True if one of them was new data: its ACK field surely reaches the guest's ACK
        processing, whereas a retransmission of something the guest already holds is dropped whole, so
        it cannot stand in for a pending ACK."""
        c = self.counters
        count = 0
        sent = fresh = False
        win = -1
        base = self._buf_seq
        buf_end = base + self._snd_hi - self._snd_lo
        fin = self._fin_seq
        smss = self._smss
        rtt = self._rtt
        if self._fast_rexmit:
            self._fast_rexmit = False
            rtt.discard()
            una = self._snd_una
            if una < self._snd_max:
                n = min(buf_end - una, smss)
                win = self._window()
                if n > 0:
                    flags = ACK
                    if fin is not None and una + n == fin and fin < self._snd_max:
                        flags |= FIN
                    self._emit_run(emit, una, [n], win, flags, now)  # counts the retransmission
                    count += 1
                elif fin is not None and una == fin:
                    c.retransmits += 1
                    c.segments_out += 1
                    emit(self._header(una, ACK | FIN, win), b"")
                    count += 1
                sent = True
                if self._t_rto is None:
                    self._t_rto = now + rtt.rto
        if self._probe_pending:
            # Zero-window probe, Linux style: SND.UNA - 1 and no data is outside any window, so the
            # guest must answer with an ACK that carries its current window (RFC 9293 3.8.6.1).
            self._probe_pending = False
            c.window_probes += 1
            if win < 0:
                win = self._window()
            c.segments_out += 1
            emit(self._header(self._snd_una - 1, ACK, win), b"")
            count += 1
        nxt = self._snd_nxt
        wnd = self._snd_wnd
        cwnd = self._cc.cwnd
        limit = self._snd_una + (wnd if wnd < cwnd else cwnd)
        force = self._force_send
        self._force_send = False
        if nxt < buf_end and (nxt < limit or force):
            if force and nxt >= limit:
                limit = nxt + smss
            seg_max = self._tso or smss
            half_wnd = self._max_snd_wnd >> 1
            sizes: list[int] = []
            start = nxt
            while nxt < buf_end:
                left = buf_end - nxt
                n = limit - nxt
                if n > seg_max:
                    n = seg_max
                if n > left:
                    n = left
                if n <= 0:
                    break
                if n < smss and n < left and n < half_wnd and not force:
                    break  # sender silly-window avoidance: wait for more window (persist overrides)
                if n > smss and n < left:
                    n -= n % smss  # a TSO segment is whole MSS pieces; a short rest follows the SWS rule
                force = False
                sizes.append(n)
                nxt += n
            if sizes:
                if win < 0:
                    win = self._window()
                flags = ACK | PSH if fin is None else ACK | PSH | FIN
                nxt, fresh = self._emit_run(emit, start, sizes, win, flags if nxt == buf_end else ACK, now)
                count += len(sizes)
                sent = True
        if fin is not None and nxt == fin and buf_end == fin:
            # A bare FIN (no window needed: it takes no buffer space at the receiver).
            if nxt < self._snd_max:
                c.retransmits += 1
            else:
                fresh = True
            if win < 0:
                win = self._window()
            c.segments_out += 1
            emit(self._header(nxt, ACK | FIN, win), b"")
            count += 1
            nxt += 1
            if nxt > self._snd_max:
                self._snd_max = nxt
            sent = True
        self._snd_nxt = nxt
        if sent and self._t_rto is None and self._snd_una < nxt:
            self._t_rto = now + rtt.rto
        if nxt < buf_end and nxt == self._snd_una:
            self._arm_persist(now)
        return count, fresh, win

    def _emit_run(
        self, emit: Emit, start: int, sizes: list[int], win: int, last_flags: int, now: float
    ) -> tuple[int, bool]:
        """Emit consecutive data segments from ``start`` (unwrapped) of the given payload sizes; the last
        gets ``last_flags``, the others ACK. Updates SND.NXT/SND.MAX, the counters, the RTO and RTT
        timing for every segment actually emitted, also when ``emit`` raises. Returns the sequence
        number after the run and whether any of it was new data."""
        base = self._buf_seq
        buf = self._sndbuf
        k = len(sizes)
        first = sizes[0]
        same = k
        while sizes[same - 1] != first:
            same -= 1
        off = self._snd_lo + start - base
        partial = self._partial
        if partial:
            sums = [0] * k
        else:
            sums = piece_sums(buf, off, first, same)
            if same < k:
                o = off + first * same
                for n in sizes[same:]:
                    sums += piece_sums(buf, o, n, 1)
                    o += n
        psum_out = self._psum_out
        ack = self._rcv_nxt & _M32
        pack = _HDR_OUT.pack
        ports = self._ports_out
        fixed = self._csum_base + TCP_HLEN + (ack >> 16) + (ack & 0xFFFF) + (TCP_HLEN << 10) + win
        snd_max = self._snd_max
        rtt = self._rtt
        c = self.counters
        seq = start
        fresh = False
        i = 0
        try:
            with memoryview(buf) as view:
                for n in sizes:
                    i += 1
                    flags = ACK if i < k else last_flags
                    end = seq + n
                    if seq < snd_max:
                        c.retransmits += 1
                        rtt.timed_seq = None  # Karn
                    else:
                        fresh = True
                        if rtt.timed_seq is None:
                            rtt.timed_seq = end
                            rtt.timed_at = now
                    w = seq & _M32
                    if partial:  # the folded pseudo-header sum, not complemented (NEEDS_CSUM)
                        s = psum_out + TCP_HLEN + n
                        csum = s % 0xFFFF or 0xFFFF
                    else:
                        s = fixed + n + flags + (w >> 16) + (w & 0xFFFF) + sums[i - 1]
                        csum = -s % 0xFFFF
                    header = pack(ports, w, ack, (TCP_HLEN << 10) | flags, win, csum, 0)
                    payload = view[off : off + n]
                    try:
                        emit(header, payload)
                    finally:
                        payload.release()
                    c.segments_out += 1
                    c.bytes_out += n
                    off += n
                    seq = end + 1 if flags & FIN else end
                    if seq > snd_max:
                        snd_max = seq
        finally:
            self._snd_max = snd_max
            if seq > self._snd_nxt:  # a fast retransmission (below SND.NXT) leaves it alone
                self._snd_nxt = seq
            if seq > start and self._t_rto is None:
                self._t_rto = now + rtt.rto  # what went out before an exception is timed too
        return seq, fresh

    # -- introspection --------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """The RFC 9293 state name (``"LISTEN"`` until accept()/refuse() for a passive open)."""
        return self._state

    @property
    def send_mss(self) -> int:
        """The send MSS (SMSS): the payload of a non-TSO data segment, and the ``gso_size`` for TSO ones."""
        return self._smss

    @property
    def bytes_acked(self) -> int:
        """Data bytes the guest has acknowledged."""
        return self._buf_seq - self._iss - 1

    @property
    def bytes_unacked(self) -> int:
        """Data bytes queued (:meth:`send`, :meth:`fill_from`) that the guest has not acknowledged (sent or not)."""
        return self._snd_hi - self._snd_lo

    @property
    def unconsumed(self) -> int:
        """Received bytes not yet :meth:`consume`\\ d (they occupy the receive buffer)."""
        return self._rcv_unconsumed

    @property
    def buffered(self) -> int:
        """Bytes this connection holds: send buffer, received but unconsumed, out-of-order."""
        return self._snd_hi - self._snd_lo + self._rcv_unconsumed + self._ooo.nbytes

    def __repr__(self) -> str:
        la, lp = self.local
        ra, rp = self.remote
        return (
            f"<TcpConnection {_format_addr(la)}:{lp} <-> {_format_addr(ra)}:{rp} {self._state}"
            f" una={self._snd_una - self._iss} nxt={self._snd_nxt - self._iss} cwnd={self._cc.cwnd}"
            f" wnd={self._snd_wnd} rto={self._rtt.rto:.3f}>"
        )


_SYN_OPTIONS: dict[tuple[int, int | None], bytes] = {}


def _syn_options(mss: int, wscale: int | None) -> bytes:
    """Our SYN's options, encoded once per (MSS, window scale): both come from the parameters, so a few
    keys at most (building the TcpOptions was a third of the SYN-ACK's cost)."""
    key = (mss, wscale)
    raw = _SYN_OPTIONS.get(key)
    if raw is None:
        raw = TcpOptions(mss=mss, wscale=wscale).to_bytes()
        if len(_SYN_OPTIONS) >= 64:
            _SYN_OPTIONS.clear()
        _SYN_OPTIONS[key] = raw
    return raw


# state.TABLE as a plain dict: _fire() reads it directly, without lookup() and the mapping proxy around it.
_ROWS: Final[dict[tuple[str, Input], Transition]] = dict(TABLE)

_Step = Callable[[TcpConnection, float, _Seg], None]
_STEPS: Final[dict[Do, _Step]] = {
    Do.DROP: TcpConnection._do_drop,
    Do.TAKE_SYN: TcpConnection._do_take_syn,
    Do.SEND_SYN: TcpConnection._do_send_syn,
    Do.CROSSED_SYN: TcpConnection._do_crossed_syn,
    Do.SYNACK: TcpConnection._do_synack,
    Do.ACK_OF_SYN: TcpConnection._do_ack_of_syn,
    Do.ESTABLISH: TcpConnection._do_establish,
    Do.QUEUE_FIN: TcpConnection._do_queue_fin,
    Do.EOF: TcpConnection._do_eof,
    Do.WAIT_FIN_2: TcpConnection._do_wait_fin_2,
    Do.WAIT_TIME: TcpConnection._do_wait_time,
    Do.CHALLENGE_ACK: TcpConnection._do_challenge_ack,
    Do.RST_REPLY: TcpConnection._do_rst_reply,
    Do.RST_FOR_ACK: TcpConnection._do_rst_for_ack,
    Do.SEND_RST: TcpConnection._do_send_rst,
    Do.REFUSE_SYN: TcpConnection._do_refuse_syn,
    Do.PEER_RESET: TcpConnection._do_peer_reset,
}
assert set(_STEPS) == set(Do) - {Do.MISUSE}, "every step of the table has an implementation"
