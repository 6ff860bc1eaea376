"""RFC 6298 retransmission timer: SRTT/RTTVAR/RTO from one timed segment per round trip.

Kept apart from congestion control (aioquic's split): the estimator says *when* to give up waiting,
the congestion controller *how much* may be in flight. Karn's algorithm is the caller's half of the
contract: any retransmission calls :meth:`RttEstimator.discard`, so an ACK that might acknowledge
the retransmission rather than the original never becomes a sample.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CLOCK_G", "RttEstimator"]

#: RFC 6298's clock granularity G. Our times are floats; call it 1 ms.
CLOCK_G: Final = 0.001
_SYN_RTO_FLOOR: Final = 3.0  # RFC 6298 5.7


class RttEstimator:
    """SRTT, RTTVAR and RTO (seconds), plus the one segment being timed (``timed_seq``, ``timed_at``).

    ``timed_seq`` is the unwrapped sequence number whose acknowledgment ends the measurement (the end
    of the timed segment); None when nothing is timed. The connection reads these two slots on its
    hot path instead of calling a method.
    """

    __slots__ = ("rto", "rto_initial", "rto_max", "rto_min", "rttvar", "srtt", "timed_at", "timed_seq")

    def __init__(self, rto_initial: float, rto_min: float, rto_max: float) -> None:
        self.rto_initial = rto_initial
        self.rto_min = rto_min
        self.rto_max = rto_max
        self.rto = rto_initial
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.timed_seq: int | None = None
        self.timed_at = 0.0

    def start(self, end_seq: int, now: float) -> None:
        """Time the segment ending at ``end_seq`` unless one is already timed (one per round trip)."""
        if self.timed_seq is None:
            self.timed_seq = end_seq
            self.timed_at = now

    def discard(self) -> None:
        """Karn: a retransmission happened; the timed segment's ACK would be ambiguous."""
        self.timed_seq = None

    def on_ack(self, ack: int, now: float) -> None:
        """``ack`` (unwrapped) arrived: if it covers the timed segment, take the sample."""
        seq = self.timed_seq
        if seq is not None and ack >= seq:
            self.timed_seq = None
            self.sample(now - self.timed_at)

    def sample(self, r: float) -> None:
        """RFC 6298 2.2 (first measurement) and 2.3 (later ones), then 2.4's bounds."""
        if r < 0:
            return
        srtt = self.srtt
        if srtt is None:
            srtt = r
            self.rttvar = r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(srtt - r)
            srtt = 0.875 * srtt + 0.125 * r
        self.srtt = srtt
        rto = srtt + max(CLOCK_G, 4 * self.rttvar)
        self.rto = self.rto_max if rto > self.rto_max else self.rto_min if rto < self.rto_min else rto

    def backoff(self) -> None:
        """RFC 6298 5.5: the timer expired; double the RTO (up to the maximum) and stop timing."""
        self.timed_seq = None
        self.rto = min(self.rto * 2, self.rto_max)

    def on_established(self, syn_retransmitted: bool) -> None:
        """The handshake completed without a sample: RFC 6298 5.7 if a SYN was retransmitted (at least
        3 s), otherwise back to the initial RTO (the handshake's backoff was not a measurement)."""
        if self.srtt is None:
            self.rto = min(max(self.rto, _SYN_RTO_FLOOR), self.rto_max) if syn_retransmitted else self.rto_initial
