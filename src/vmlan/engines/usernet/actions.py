"""What the stack asks the I/O layer to do: small tuples whose first item is one of these kinds.

Actions name flows by id (an int from the flow table), never by object: the I/O layer keeps its own
``id -> socket`` map, and an action for a flow the stack has since forgotten is harmless. Tuples, not
objects, because a guest->host TCP segment produces one on the hot path.

=================  ===========================================================================
kind               items after the kind
=================  ===========================================================================
TCP_CONNECT        fid, family (4|6), target: (host, port), a shell command (guestfwd cmd:) or a Service
TCP_WRITE          fid, data (a bytearray the I/O layer may keep); report with ``tcp_written``
TCP_SHUTDOWN       fid: the guest sent FIN (shut the host socket's write side once written)
TCP_CLOSE          fid, abortive (True: the guest reset: close with SO_LINGER 0, the host peer gets RST)
TCP_RESUME         fid: the guest made room: read the host socket again
UDP_SEND           fid, family, (host, port), data: from the flow's socket (created on first use)
UDP_CLOSE          fid
UDP_FWD_REPLY      rule index, client (host, port), data: from a UDP hostfwd rule's socket
DNS_SEND           upstream (host, port), payload, tcp (bool)
DNS_FORGET         upstream query id: the query is over (answered or given up), close its socket
PING_SEND          fid, family, destination host, ident, seq, data
PING_CLOSE         fid
=================  ===========================================================================
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple, TypeAlias


class Service(NamedTuple):
    """A TCP_CONNECT target that is one of the host's helpers rather than an address (``smb``)."""

    name: str

TCP_CONNECT: Final = 1
TCP_WRITE: Final = 2
TCP_SHUTDOWN: Final = 3
TCP_CLOSE: Final = 4
TCP_RESUME: Final = 5
UDP_SEND: Final = 6
UDP_CLOSE: Final = 7
UDP_FWD_REPLY: Final = 8
DNS_SEND: Final = 9
PING_SEND: Final = 10
PING_CLOSE: Final = 11
DNS_FORGET: Final = 12

NAMES: Final = {
    TCP_CONNECT: "TCP_CONNECT",
    TCP_WRITE: "TCP_WRITE",
    TCP_SHUTDOWN: "TCP_SHUTDOWN",
    TCP_CLOSE: "TCP_CLOSE",
    TCP_RESUME: "TCP_RESUME",
    UDP_SEND: "UDP_SEND",
    UDP_CLOSE: "UDP_CLOSE",
    UDP_FWD_REPLY: "UDP_FWD_REPLY",
    DNS_SEND: "DNS_SEND",
    PING_SEND: "PING_SEND",
    PING_CLOSE: "PING_CLOSE",
    DNS_FORGET: "DNS_FORGET",
}

Action: TypeAlias = tuple[Any, ...]
