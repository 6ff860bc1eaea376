"""Tunables and counters of one TCP connection, and the protocol constants they are checked against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .recovery import ALGORITHMS

__all__ = [
    "DEFAULT_MSS",
    "MAX_MSS_V4",
    "MAX_MSS_V6",
    "MAX_WSCALE",
    "MIN_MSS",
    "TcpCounters",
    "TcpParams",
]

DEFAULT_MSS: Final = 536  # RFC 9293 3.7.1: the MSS to assume when the SYN carries none
MIN_MSS: Final = 64  # floor for a guest's MSS (a tiny MSS turns a transfer into a CPU sink)
MAX_MSS_V4: Final = 65495  # 65535 - 20 (IPv4) - 20 (TCP): the largest payload an IPv4 datagram holds
MAX_MSS_V6: Final = 65475  # 65535 - 40 (IPv6) - 20 (TCP): the same 65535-byte MTU ceiling as IPv4
MAX_WSCALE: Final = 14  # RFC 7323 2.3


@dataclass(frozen=True, slots=True)
class TcpParams:
    """Tunables of one connection. Times are seconds.

    ``mss`` is what we announce and the largest segment we send. The caller clamps it to the link (MTU
    - 40 for IPv4, MTU - 60 for IPv6); the engine clamps it again to the largest the family can carry
    (:data:`MAX_MSS_V4`, :data:`MAX_MSS_V6`), so one ``TcpParams`` serves both families.

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

    ``congestion_control`` names the algorithm in :data:`vmlan.engines.tcp.recovery.ALGORITHMS`.
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
    congestion_control: str = "newreno"

    def __post_init__(self) -> None:
        if not MIN_MSS <= self.mss <= MAX_MSS_V4:
            raise ValueError(f"mss {self.mss} outside {MIN_MSS}..{MAX_MSS_V4}")
        if not 0 <= self.wscale <= MAX_WSCALE:
            raise ValueError(f"wscale {self.wscale} outside 0..{MAX_WSCALE}")
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
        if self.congestion_control not in ALGORITHMS:
            raise ValueError(f"congestion_control {self.congestion_control!r}: one of {', '.join(sorted(ALGORITHMS))}")


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
        "unlisted",
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
        self.unlisted = 0  # (state, input) pairs the transition table does not list (took the default path)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}
