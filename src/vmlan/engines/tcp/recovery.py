"""Congestion control and loss recovery, behind the small :class:`CongestionControl` interface.

The connection owns the sequence space and the retransmission mechanics (what to resend, go-back-N
after a timeout, the RTO itself); an algorithm here owns only ``cwnd`` and decides, from ACKs, duplicate
ACKs and timeouts, how much may be in flight and when a fast retransmission is due. aioquic keeps its
recovery and congestion code apart the same way. ``cwnd`` counts bytes, so a 64 KiB TSO segment costs
what it carries.

:class:`NewReno` is RFC 5681 with RFC 6582's NewReno loss recovery: initial window of 10 segments
(RFC 6928; the connection passes it), slow start growing by every byte acknowledged (RFC 3465 without
the L limit: the guest is one memory copy away), congestion avoidance of about one segment per round
trip, fast retransmit on the third duplicate ACK, partial ACKs retransmitting the next hole
("slow-but-steady": the connection restarts the RTO on each), and after an RTO a one-segment window
with no fast retransmit for the duplicate ACKs the go-back-N retransmission itself causes.

Another algorithm plugs in by implementing the interface and registering in :data:`ALGORITHMS`
(:attr:`TcpParams.congestion_control` names it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

__all__ = ["ALGORITHMS", "CongestionControl", "NewReno"]


class CongestionControl(Protocol):
    """What the connection asks of an algorithm. Sequence numbers are unwrapped ints."""

    #: Bytes that may be in flight (the connection sends ``min(peer window, cwnd)`` past SND.UNA).
    cwnd: int

    def on_established(self, smss: int, initial_window: int, snd_buffer: int) -> None:
        """The handshake completed: ``smss`` is the send MSS, ``initial_window`` in segments."""

    def on_ack(self, acked: int, ack: int, snd_max: int) -> bool:
        """``acked`` new bytes were acknowledged, up to ``ack``. True: retransmit from ``ack`` now (a
        partial ACK during recovery says the next segment was lost too)."""
        ...

    def on_dup_ack(self, una: int, snd_max: int) -> bool:
        """A duplicate ACK (RFC 5681's definition; the connection checks it). True: fast retransmit."""
        ...

    def on_rto(self, una: int, snd_max: int) -> None:
        """The retransmission timer expired; the connection goes back to ``una`` and resends."""


class NewReno:
    """RFC 5681 + RFC 6582. Slots are plain state; see the module docstring for the rules."""

    __slots__ = ("cwnd", "cwnd_cap", "dupacks", "in_recovery", "recover", "smss", "ssthresh")

    def __init__(self, iss: int) -> None:
        self.smss = 536
        self.cwnd = 0
        self.cwnd_cap = 0
        self.ssthresh = 1 << 62
        self.dupacks = 0
        self.recover = iss  # RFC 6582 3.2 step 1: "recover" starts at the initial send sequence number
        self.in_recovery = False

    def on_established(self, smss: int, initial_window: int, snd_buffer: int) -> None:
        self.smss = smss
        self.cwnd = initial_window * smss
        # More than the send buffer can never be in flight; the cap keeps cwnd meaningful when the
        # sender is application-limited (it would otherwise grow without bound on a clean link).
        self.cwnd_cap = max(snd_buffer, 4 * smss) + 4 * smss

    def on_ack(self, acked: int, ack: int, snd_max: int) -> bool:
        smss = self.smss
        if self.in_recovery:
            if ack >= self.recover:  # full ACK (RFC 6582 3.2 step 3): deflate
                self.cwnd = min(self.ssthresh, max(snd_max - ack, smss) + smss)
                self.in_recovery = False
                self.dupacks = 0
                return False
            # Partial ACK: the next hole is lost too. Deflate by what left, re-inflate by one segment.
            self.cwnd = max(self.cwnd - acked + (smss if acked >= smss else 0), smss)
            return True
        self.dupacks = 0
        cwnd = self.cwnd
        if cwnd < self.ssthresh:
            cwnd += acked  # slow start, byte counting
        else:
            cwnd += max(smss * acked // cwnd, 1)  # congestion avoidance: ~1 MSS per RTT
        self.cwnd = cwnd if cwnd < self.cwnd_cap else self.cwnd_cap
        return False

    def on_dup_ack(self, una: int, snd_max: int) -> bool:
        self.dupacks += 1
        smss = self.smss
        if self.in_recovery:
            if self.cwnd < self.cwnd_cap:
                self.cwnd += smss  # inflate: one segment left the network
            return False
        if self.dupacks == 3 and una >= self.recover:  # RFC 6582 3.2 step 2: not within an old recovery
            self.ssthresh = max((snd_max - una) // 2, 2 * smss)
            self.cwnd = self.ssthresh + 3 * smss
            self.recover = snd_max
            self.in_recovery = True
            return True
        return False

    def on_rto(self, una: int, snd_max: int) -> None:
        # RFC 5681 (eq. 4) and 6582 4: halve, restart from one segment; the duplicate ACKs the
        # go-back-N retransmission causes below the old high-water mark start no fast retransmit.
        smss = self.smss
        self.ssthresh = max((snd_max - una) // 2, 2 * smss)
        self.cwnd = smss
        self.recover = snd_max
        self.in_recovery = False
        self.dupacks = 0


#: Congestion control algorithms by name: a factory taking the initial send sequence number.
ALGORITHMS: Final[dict[str, Callable[[int], CongestionControl]]] = {"newreno": NewReno}
