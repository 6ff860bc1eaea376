"""What a connection reports to its caller (:meth:`TcpConnection.next_event`), and its one local error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

__all__ = ["Closed", "Connected", "DataReceived", "EndOfStream", "Event", "Reset", "TcpStateError"]


class TcpStateError(RuntimeError):
    """The caller used the API in a state that forbids it (send() after shutdown(), accept() twice)."""


@dataclass(frozen=True, slots=True)
class Connected:
    """The three-way handshake completed (either direction)."""


@dataclass(frozen=True, slots=True)
class DataReceived:
    """In-order bytes from the guest. Call :meth:`TcpConnection.consume` once the host took them.

    Only callers that never use :meth:`TcpConnection.take_data` get these."""

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
