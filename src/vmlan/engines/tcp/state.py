"""Every state transition of a connection, in one table: ``(state, input) -> (next state, what to do)``.

This is h11's ``_state.py`` idea applied to RFC 9293: whoever wants to know "what happens to a
connection in FIN_WAIT_1 when the guest's FIN arrives" reads one row here, not a dozen ``if``\\ s spread
over the segment code. :class:`~vmlan.engines.tcp.connection.TcpConnection` classifies what happened
(a validated segment, a host call, a timer that ran out of retries) into an :class:`Input`, looks it
up with :func:`lookup` and performs the :class:`Do` steps; it assigns its state nowhere else.

Inputs are *classified* events, not raw flags: validation (checksum, RFC 5961 window checks, the
acceptability test of RFC 9293 3.10.7.4) happens before, in the connection, and a segment that fails
it is dropped and counted without reaching the table. What reaches it is what can change something:
a SYN that repeats the peer's ISN is a different input from one carrying a new ISN, an ACK that
covers our FIN from one that does not (the latter is ordinary data-path work and no input at all).

A pair the table does not list still takes a defined path (:func:`lookup`'s defaults): a segment is
dropped (counted), a host call is misuse (:class:`~vmlan.engines.tcp.events.TcpStateError`), a timer
is ignored (counted). Nothing falls through.

The data path never consults the table: in-order data and ACKs in ESTABLISHED change no state.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final, NamedTuple

__all__ = [
    "CAN_QUEUE",
    "CLOSED",
    "CLOSE_WAIT",
    "CLOSING",
    "ESTABLISHED",
    "FIN_WAIT_1",
    "FIN_WAIT_2",
    "HOST_CALLS",
    "KEEPALIVE",
    "LAST_ACK",
    "LISTEN",
    "RECEIVING",
    "SEGMENTS",
    "SENDING",
    "STATES",
    "SYNCHRONIZED",
    "SYN_RECEIVED",
    "SYN_SENT",
    "TABLE",
    "TIMERS",
    "TIME_WAIT",
    "Do",
    "Input",
    "Transition",
    "lookup",
]

# RFC 9293 state names, underscored. "LISTEN" is the passive open before accept()/refuse(): a SYN is
# held, nothing has been answered yet (vmlan answers only once the host connect() succeeded).
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

STATES: Final = (
    LISTEN,
    SYN_SENT,
    SYN_RECEIVED,
    ESTABLISHED,
    FIN_WAIT_1,
    FIN_WAIT_2,
    CLOSE_WAIT,
    CLOSING,
    LAST_ACK,
    TIME_WAIT,
    CLOSED,
)
# Groups the connection's data path asks about (these are properties of states, not transitions).
SYNCHRONIZED: Final = frozenset(STATES[2:10])
SENDING: Final = frozenset((ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, CLOSING, LAST_ACK))  # may send data or FIN
RECEIVING: Final = frozenset((ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2))  # accept data from the guest
KEEPALIVE: Final = frozenset((ESTABLISHED, CLOSE_WAIT, FIN_WAIT_2))  # idle states no other timer bounds
# Where send() still queues data (before the handshake too: a hostfwd client may write at once).
CAN_QUEUE: Final = frozenset((LISTEN, SYN_SENT, SYN_RECEIVED, ESTABLISHED, CLOSE_WAIT))


class Input(enum.Enum):
    """What happened to a connection, as the table knows it."""

    # Members are singletons compared by identity: hashing them by identity too keeps the table and step
    # lookups in C (Enum's own __hash__ is a Python function: ~12 calls per connection).
    __hash__ = object.__hash__

    # Segments, classified after validation.
    SYN = "SYN"  # a SYN with a new ISN (LISTEN: the guest restarted its connect; SYN_SENT: crossed SYNs)
    SYN_REPEAT = "SYN (retransmitted)"  # a SYN carrying the ISN we already hold
    SYN_NEW = "SYN beyond RCV.NXT"  # in a synchronized state: a new connection on the same ports?
    SYN_ACK = "SYN|ACK"  # acknowledging our SYN (SYN_SENT)
    ACK_OF_SYN = "ACK of our SYN"  # the handshake's third segment (SYN_RECEIVED)
    BAD_ACK = "ACK of nothing sent"  # before synchronization: answered <SEQ=SEG.ACK><CTL=RST>
    ACK_OF_FIN = "ACK of our FIN"
    FIN = "FIN"  # the guest's FIN, in order
    FIN_REPEAT = "FIN (unacceptable)"  # on a segment that failed the acceptability test: a retransmission
    RST = "RST"  # an acceptable RST (exact sequence number, RFC 5961 3.2)
    RST_IN_WINDOW = "RST (in window, not exact)"
    SEGMENT = "other segment"  # anything else, where nothing specific is expected (LISTEN, CLOSED)
    # Host calls.
    ACCEPT = "accept()"
    REFUSE = "refuse()"
    SHUTDOWN = "shutdown()"
    ABORT = "abort()"
    # Timers that ran out.
    SYN_RETRY_LIMIT = "SYN retries exhausted"
    RETRANSMIT_LIMIT = "retransmissions exhausted"
    PERSIST_LIMIT = "zero-window probes unanswered"
    KEEPALIVE_LIMIT = "keepalive probes unanswered"
    TIME_WAIT_END = "TIME_WAIT over"
    FIN_WAIT_2_IDLE = "FIN_WAIT_2 idle limit"


SEGMENTS: Final = frozenset(
    (
        Input.SYN,
        Input.SYN_REPEAT,
        Input.SYN_NEW,
        Input.SYN_ACK,
        Input.ACK_OF_SYN,
        Input.BAD_ACK,
        Input.ACK_OF_FIN,
        Input.FIN,
        Input.FIN_REPEAT,
        Input.RST,
        Input.RST_IN_WINDOW,
        Input.SEGMENT,
    )
)
HOST_CALLS: Final = frozenset((Input.ACCEPT, Input.REFUSE, Input.SHUTDOWN, Input.ABORT))
TIMERS: Final = frozenset(set(Input) - SEGMENTS - HOST_CALLS)


class Do(enum.Enum):
    """The steps of a transition, performed in order after the state changed. Entering CLOSED also
    reports :class:`~vmlan.engines.tcp.events.Closed` with the row's reason and releases the buffers."""

    __hash__ = object.__hash__  # as Input's

    DROP = "count the segment as dropped"
    MISUSE = "raise TcpStateError"
    TAKE_SYN = "record the guest's ISN and SYN options"
    SEND_SYN = "(re)send our SYN or SYN-ACK"
    CROSSED_SYN = "simultaneous open: our SYN is answered by a SYN-ACK"
    SYNACK = "active open complete: take the guest's window, time the handshake"
    ACK_OF_SYN = "passive open complete: take the guest's window"
    ESTABLISH = "report Connected, open the congestion window, start keepalive, send a deferred FIN"
    QUEUE_FIN = "place our FIN after the data queued so far"
    EOF = "take the guest's FIN: report EndOfStream, ACK it"
    WAIT_FIN_2 = "our FIN is acknowledged: stop retransmitting, start the FIN_WAIT_2 idle timer"
    WAIT_TIME = "(re)start TIME_WAIT's timer, stop the others"
    CHALLENGE_ACK = "RFC 5961 challenge ACK"
    RST_REPLY = "RST to a segment for a closed connection (RFC 9293 3.10.7.1)"
    RST_FOR_ACK = "<SEQ=SEG.ACK><CTL=RST>"
    SEND_RST = "RST|ACK from our current sequence number"
    REFUSE_SYN = "RST|ACK answering the held SYN"
    PEER_RESET = "report Reset"


class Transition(NamedTuple):
    next: str
    actions: tuple[Do, ...] = ()
    reason: str | None = None  # the Closed reason, when ``next`` is CLOSED


def _build() -> dict[tuple[str, Input], Transition]:
    table: dict[tuple[str, Input], Transition] = {}

    def row(states: str | Iterable[str], inputs: Input | Iterable[Input], t: Transition | None = None) -> None:
        for state in (states,) if isinstance(states, str) else states:
            for inp in (inputs,) if isinstance(inputs, Input) else inputs:
                key = (state, inp)
                assert key not in table, f"duplicate row {key}"
                table[key] = t if t is not None else Transition(state)  # None: stay, nothing to do

    syns = (Input.SYN, Input.SYN_REPEAT, Input.SYN_NEW)

    # Before we answered: silent until accept()/refuse(), except for what cancels the open.
    row(LISTEN, Input.SYN, Transition(LISTEN, (Do.TAKE_SYN,)))  # a new incarnation: answer that one
    row(LISTEN, Input.SYN_REPEAT)  # its answer still waits for the host connect
    row(LISTEN, Input.RST, Transition(CLOSED, (Do.PEER_RESET,), "reset"))
    row(LISTEN, Input.SEGMENT, Transition(LISTEN, (Do.DROP,)))
    row(LISTEN, Input.ACCEPT, Transition(SYN_RECEIVED, (Do.SEND_SYN,)))
    row(LISTEN, Input.REFUSE, Transition(CLOSED, (Do.REFUSE_SYN,), "refused"))
    row(LISTEN, Input.ABORT, Transition(CLOSED, (Do.REFUSE_SYN,), "aborted"))
    row(LISTEN, Input.SHUTDOWN, Transition(LISTEN, (Do.QUEUE_FIN,)))  # the FIN follows the handshake

    # Active open (hostfwd dials the guest).
    row(SYN_SENT, Input.SYN, Transition(SYN_RECEIVED, (Do.TAKE_SYN, Do.CROSSED_SYN)))  # RFC 9293 figure 7
    row(SYN_SENT, Input.SYN_ACK, Transition(ESTABLISHED, (Do.TAKE_SYN, Do.SYNACK, Do.ESTABLISH)))
    row(SYN_SENT, Input.BAD_ACK, Transition(SYN_SENT, (Do.RST_FOR_ACK,)))
    row(SYN_SENT, Input.RST, Transition(CLOSED, (Do.PEER_RESET,), "refused"))
    row(SYN_SENT, Input.SEGMENT, Transition(SYN_SENT, (Do.DROP,)))
    row(SYN_SENT, Input.SHUTDOWN, Transition(SYN_SENT, (Do.QUEUE_FIN,)))
    row(SYN_SENT, Input.ACCEPT, Transition(SYN_SENT, (Do.MISUSE,)))  # nothing to accept: we opened it
    row(SYN_SENT, (Input.ABORT, Input.REFUSE), Transition(CLOSED, (), "aborted"))  # nothing to reset yet
    row(SYN_SENT, Input.SYN_RETRY_LIMIT, Transition(CLOSED, (), "syn timeout"))

    row(SYN_RECEIVED, Input.SYN_REPEAT, Transition(SYN_RECEIVED, (Do.SEND_SYN,)))  # our SYN-ACK was lost
    row(SYN_RECEIVED, (Input.SYN, Input.SYN_NEW), Transition(SYN_RECEIVED, (Do.CHALLENGE_ACK,)))
    row(SYN_RECEIVED, Input.ACK_OF_SYN, Transition(ESTABLISHED, (Do.ACK_OF_SYN, Do.ESTABLISH)))
    row(SYN_RECEIVED, Input.BAD_ACK, Transition(SYN_RECEIVED, (Do.RST_FOR_ACK,)))
    row(SYN_RECEIVED, Input.SHUTDOWN, Transition(SYN_RECEIVED, (Do.QUEUE_FIN,)))
    row(SYN_RECEIVED, Input.SYN_RETRY_LIMIT, Transition(CLOSED, (Do.SEND_RST,), "syn timeout"))

    # What every synchronized state shares: RST and SYN handling (RFC 5961), abort, a repeated FIN.
    for state in SYNCHRONIZED:
        if state != TIME_WAIT:
            row(state, Input.RST, Transition(CLOSED, (Do.PEER_RESET,), "reset"))
            row(state, (Input.ABORT, Input.REFUSE), Transition(CLOSED, (Do.SEND_RST,), "aborted"))
        if state not in (SYN_RECEIVED, TIME_WAIT):
            row(state, syns, Transition(state, (Do.CHALLENGE_ACK,)))
        row(state, Input.RST_IN_WINDOW, Transition(state, (Do.CHALLENGE_ACK,)))
        if state != TIME_WAIT:
            row(state, Input.FIN_REPEAT)  # the ACK every unacceptable segment gets is enough
        row(state, Input.ACCEPT, Transition(state, (Do.MISUSE,)))  # accepted already

    # Data transfer and closing (RFC 9293 figure 5).
    row(ESTABLISHED, Input.FIN, Transition(CLOSE_WAIT, (Do.EOF,)))
    row(ESTABLISHED, Input.SHUTDOWN, Transition(FIN_WAIT_1, (Do.QUEUE_FIN,)))
    row(FIN_WAIT_1, Input.FIN, Transition(CLOSING, (Do.EOF,)))  # simultaneous close
    row(FIN_WAIT_1, Input.ACK_OF_FIN, Transition(FIN_WAIT_2, (Do.WAIT_FIN_2,)))
    row(FIN_WAIT_2, Input.FIN, Transition(TIME_WAIT, (Do.EOF, Do.WAIT_TIME)))
    row(CLOSE_WAIT, Input.SHUTDOWN, Transition(LAST_ACK, (Do.QUEUE_FIN,)))
    row(CLOSING, Input.ACK_OF_FIN, Transition(TIME_WAIT, (Do.WAIT_TIME,)))
    row(LAST_ACK, Input.ACK_OF_FIN, Transition(CLOSED, (), "closed"))
    row((FIN_WAIT_1, FIN_WAIT_2, CLOSING, LAST_ACK, TIME_WAIT), Input.SHUTDOWN)  # idempotent

    row(TIME_WAIT, (Input.SYN, Input.SYN_REPEAT), Transition(TIME_WAIT, (Do.CHALLENGE_ACK,)))
    row(TIME_WAIT, Input.SYN_NEW, Transition(CLOSED, (), "reused"))  # so the guest's next SYN opens it
    row(TIME_WAIT, Input.RST, Transition(CLOSED, (), "closed"))  # both FINs were exchanged: not a reset
    row(TIME_WAIT, (Input.ABORT, Input.REFUSE), Transition(CLOSED, (), "aborted"))
    row(TIME_WAIT, Input.FIN_REPEAT, Transition(TIME_WAIT, (Do.WAIT_TIME,)))  # our last ACK was lost
    row(TIME_WAIT, Input.TIME_WAIT_END, Transition(CLOSED, (), "closed"))

    # Timers that give up: the guest learns it from a RST (if it is still there to hear it).
    for state in SENDING:
        row(state, Input.RETRANSMIT_LIMIT, Transition(CLOSED, (Do.SEND_RST,), "timeout"))
        row(state, Input.PERSIST_LIMIT, Transition(CLOSED, (Do.SEND_RST,), "persist timeout"))
    for state in KEEPALIVE:
        row(state, Input.KEEPALIVE_LIMIT, Transition(CLOSED, (Do.SEND_RST,), "keepalive timeout"))
    row(FIN_WAIT_2, Input.FIN_WAIT_2_IDLE, Transition(CLOSED, (Do.SEND_RST,), "fin_wait_2 timeout"))

    # After the end: segments get a RST (RFC 9293 3.10.7.1), RSTs nothing, host calls are harmless.
    row(CLOSED, Input.SEGMENT, Transition(CLOSED, (Do.DROP, Do.RST_REPLY)))
    row(CLOSED, Input.RST, Transition(CLOSED, (Do.DROP,)))
    row(CLOSED, (Input.ACCEPT, Input.REFUSE, Input.SHUTDOWN, Input.ABORT))

    for (state, inp), t in table.items():
        assert (t.next == CLOSED) == (t.reason is not None) or state == CLOSED, (state, inp)
    return table


TABLE: Final[Mapping[tuple[str, Input], Transition]] = MappingProxyType(_build())

_DROP: Final = {state: Transition(state, (Do.DROP,)) for state in STATES}
_MISUSE: Final = {state: Transition(state, (Do.MISUSE,)) for state in STATES}
_IGNORE: Final = {state: Transition(state) for state in STATES}


def lookup(state: str, inp: Input) -> tuple[Transition, bool]:
    """The row for ``(state, inp)`` and True, or the default path and False: a segment is dropped, a host
    call is misuse, a timer is ignored (the caller counts the unlisted pair)."""
    t = TABLE.get((state, inp))
    if t is not None:
        return t, True
    if inp in SEGMENTS:
        return _DROP[state], False
    if inp in HOST_CALLS:
        return _MISUSE[state], False
    return _IGNORE[state], False
