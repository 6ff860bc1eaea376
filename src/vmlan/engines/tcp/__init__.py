"""The user stack's TCP endpoint toward guests: a sans-IO engine, one object per connection.

Start with :class:`TcpConnection` (``connection.py``, whose docstring explains the design); the parts
it is made of are ``state.py`` (the transition table), ``rtt.py``, ``recovery.py``, ``reassembly.py``,
``isn.py`` and ``sums.py``. Everything a caller needs is re-exported here.
"""

from __future__ import annotations

from .connection import Emit, TcpConnection
from .events import Closed, Connected, DataReceived, EndOfStream, Event, Reset, TcpStateError
from .isn import EphemeralPorts, IsnGenerator
from .params import MAX_MSS_V4, MAX_MSS_V6, TcpCounters, TcpParams
from .recovery import ALGORITHMS, CongestionControl, NewReno
from .rtt import RttEstimator
from .state import (
    CLOSE_WAIT,
    CLOSED,
    CLOSING,
    ESTABLISHED,
    FIN_WAIT_1,
    FIN_WAIT_2,
    LAST_ACK,
    LISTEN,
    SYN_RECEIVED,
    SYN_SENT,
    TIME_WAIT,
    Do,
    Input,
    Transition,
)

__all__ = [
    "ALGORITHMS",
    "CLOSED",
    "CLOSE_WAIT",
    "CLOSING",
    "ESTABLISHED",
    "FIN_WAIT_1",
    "FIN_WAIT_2",
    "LAST_ACK",
    "LISTEN",
    "MAX_MSS_V4",
    "MAX_MSS_V6",
    "SYN_RECEIVED",
    "SYN_SENT",
    "TIME_WAIT",
    "Closed",
    "CongestionControl",
    "Connected",
    "DataReceived",
    "Do",
    "Emit",
    "EndOfStream",
    "EphemeralPorts",
    "Event",
    "Input",
    "IsnGenerator",
    "NewReno",
    "Reset",
    "RttEstimator",
    "TcpConnection",
    "TcpCounters",
    "TcpParams",
    "TcpStateError",
    "Transition",
]
