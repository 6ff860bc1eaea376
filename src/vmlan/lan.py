"""The LAN core: ports, QEMU-style hubs and MAC-learning switches.

A link (io/) owns a Port per connected peer and calls ``lan.input(port, frame, offload)`` for every
frame the peer sends; the LAN calls ``deliver(frame, src, offload)`` on the ports the frame should
reach. Everything here is synchronous and runs on the event loop's thread: a frame crosses the LAN as a
few method calls, with no task, future or queue of its own. ``frame`` is usually a memoryview into the
ingress link's reused receive buffer, valid only during the call: a port that keeps a frame must copy it.

Frame metadata travels with every frame as two arguments rather than an object per frame:

* ``src``, the ingress port. The user-mode stack knows a guest by the port its frames arrive on,
  never by the addresses it chooses (engines/usernet/guests.py).
* ``offload``, a :class:`~vmlan.wire.vnet.Offload` or None: what the sender left undone (a partial
  checksum, a GSO super-frame of up to 64 KiB) or vouched for (checksum already verified). Only links
  that say so (``Port.offload_ok``: a TAP with vnet headers, the user stack) receive such frames as
  they are; every other port gets them cut into wire-sized frames with their checksums completed
  (:mod:`vmlan.wire.gso`), or loses them, counted, when that cannot be done.

A port may carry one filter per direction (``rx_filter``: frames from its peer, ``tx_filter``: frames
toward it), e.g. ``filter-netem``. A filter takes the frame over; it hands it back later through
:meth:`Hub.forward` (rx) or ``Port.deliver(..., filtered=True)`` (tx), or drops it. Pcap dumps see
the frames as they cross the wire: before the rx filter, after the tx filter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from vmlan.engines.switch import MacTable
from vmlan.wire import BytesLike, WireError
from vmlan.wire.gso import software_offload
from vmlan.wire.vnet import Offload

ETH_HLEN = 14
log = logging.getLogger("vmlan")


class FrameSink(Protocol):
    """Anything that records frames (a pcap dump)."""

    def write(self, frame: BytesLike) -> None: ...


class RxFilter(Protocol):
    """Takes over frames from a port's peer; hands the survivors to ``port.lan.forward``."""

    def __call__(self, port: Port, frame: BytesLike, offload: Offload | None) -> None: ...


class TxFilter(Protocol):
    """Takes over frames toward a port; hands the survivors to ``port.deliver(..., filtered=True)``."""

    def __call__(self, port: Port, frame: BytesLike, src: Port, offload: Offload | None) -> None: ...


class PortCounters:
    """What QEMU's ``info network`` would want to show, plus drops."""

    __slots__ = ("rx_bytes", "rx_dropped", "rx_frames", "tx_bytes", "tx_dropped", "tx_errors", "tx_frames")

    def __init__(self) -> None:
        self.rx_frames = 0  # from the peer into the LAN
        self.rx_bytes = 0
        self.rx_dropped = 0  # malformed (runts, oversize) or arriving while the link is down
        self.tx_frames = 0  # from the LAN out to the peer
        self.tx_bytes = 0
        self.tx_dropped = 0  # output queue full, no peer, link down, the send failed, or not segmentable
        self.tx_errors = 0  # of those, frames lost to an internal error (a bug: logged once)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class Port:
    """One attachment point of a LAN. Links subclass it and implement ``transmit``."""

    __slots__ = ("counters", "dump_rx", "dump_tx", "lan", "link_up", "name", "rx_filter", "tx_filter")

    #: True if ``transmit`` takes frames with offload metadata as they are (class attribute).
    offload_ok = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.lan: Hub | None = None
        self.counters = PortCounters()
        self.link_up = True
        self.dump_rx: FrameSink | None = None  # frames the peer sent us
        self.dump_tx: FrameSink | None = None  # frames we send the peer
        self.rx_filter: RxFilter | None = None
        self.tx_filter: TxFilter | None = None

    def deliver(self, frame: BytesLike, src: Port, offload: Offload | None = None, filtered: bool = False) -> None:
        """Called by the LAN: filter, count, record, and hand the frame to the link.

        Never raises: a failing port loses this frame (counted, logged once), and the LAN goes on to
        the next port; the ingress link's parse loop is never unwound half-way (a try block costs
        nothing on CPython 3.11+ until something is raised).
        """
        if self.tx_filter is not None and not filtered:
            self.tx_filter(self, frame, src, offload)
            return
        c = self.counters
        if not self.link_up:
            c.tx_dropped += 1
            return
        if offload is not None and not self.offload_ok:
            self._deliver_software(frame, src, offload)
            return
        try:
            if self.dump_tx is not None:
                self.dump_tx.write(frame)
            sent = self.transmit(frame, src, offload)
        except Exception:
            c.tx_dropped += 1
            c.tx_errors += 1
            if c.tx_errors == 1:
                log.exception("port %s: a frame was dropped by an internal error", self.name)
            return
        if sent:
            c.tx_frames += 1
            c.tx_bytes += len(frame)
        else:
            c.tx_dropped += 1

    def _deliver_software(self, frame: BytesLike, src: Port, offload: Offload) -> None:
        """Do what the sender left to the hardware (segment, checksum), then deliver plain frames."""
        try:
            frames = software_offload(frame, offload)
        except WireError:
            self.counters.tx_dropped += 1
            return
        for piece in frames:
            self.deliver(piece, src, None, True)

    def transmit(self, frame: BytesLike, src: Port, offload: Offload | None) -> bool:
        """Send one frame to the peer, or queue a copy of it; False if it had to be dropped.

        ``offload`` is None unless the port declared ``offload_ok``.
        """
        raise NotImplementedError

    def port_left(self, port: Port) -> None:
        """Another port of this LAN went away (the user stack forgets the guest behind it)."""

    def describe(self) -> str:
        """The info string QEMU's ``info network`` prints after the port's name."""
        return ""


class Hub:
    """QEMU's hub (net/hub.c): every frame goes to every other port."""

    kind = "hub"

    def __init__(self, lan_id: int) -> None:
        self.id = lan_id
        self.ports: tuple[Port, ...] = ()

    def attach(self, port: Port) -> None:
        port.lan = self
        self.ports = (*self.ports, port)

    def detach(self, port: Port) -> None:
        if port not in self.ports:
            return
        self.ports = tuple(p for p in self.ports if p is not port)
        port.lan = None
        for other in self.ports:
            try:
                other.port_left(port)
            except Exception:
                log.exception("port %s: failed to forget port %s", other.name, port.name)

    def input(self, src: Port, frame: BytesLike, offload: Offload | None = None) -> None:
        """A frame arrived from ``src``'s peer."""
        c = src.counters
        size = len(frame)
        if size < ETH_HLEN or not src.link_up:
            c.rx_dropped += 1
            return
        c.rx_frames += 1
        c.rx_bytes += size
        if src.dump_rx is not None:
            src.dump_rx.write(frame)
        if src.rx_filter is not None:
            src.rx_filter(src, frame, offload)
            return
        for port in self.ports:
            if port is not src:
                port.deliver(frame, src, offload)

    def forward(self, src: Port, frame: BytesLike, offload: Offload | None = None) -> None:
        """Forward a frame already counted by :meth:`input` (a filter letting it through later)."""
        if src.lan is not self:
            return  # the port left while its filter held the frame
        for port in self.ports:
            if port is not src:
                port.deliver(frame, src, offload)


class Switch(Hub):
    """A learning switch: unicast goes only where the destination was last seen.

    Broadcast, multicast and unknown destinations flood; nothing is ever sent back out the ingress port.
    """

    kind = "switch"

    def __init__(self, lan_id: int, aging: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(lan_id)
        self.table: MacTable[Port] = MacTable(aging)
        self.clock = clock
        self.filtered = 0  # unicast frames whose destination lives behind the ingress port

    def detach(self, port: Port) -> None:
        self.table.forget_port(port)
        super().detach(port)

    def input(self, src: Port, frame: BytesLike, offload: Offload | None = None) -> None:
        # The ingress accounting repeats Hub.input's on purpose: a shared method would add a call to
        # every frame (~10% of the hub's per-frame cost, measured with benchmarks/).
        c = src.counters
        size = len(frame)
        if size < ETH_HLEN or not src.link_up:
            c.rx_dropped += 1
            return
        c.rx_frames += 1
        c.rx_bytes += size
        if src.dump_rx is not None:
            src.dump_rx.write(frame)
        if src.rx_filter is not None:
            src.rx_filter(src, frame, offload)
            return
        self.forward(src, frame, offload)

    def forward(self, src: Port, frame: BytesLike, offload: Offload | None = None) -> None:
        if src.lan is not self:
            return
        now = self.clock()
        if not frame[6] & 1:
            self.table.learn(bytes(frame[6:12]), src, now)
        if not frame[0] & 1:
            out = self.table.lookup(bytes(frame[0:6]), now)
            if out is not None:
                if out is src:
                    self.filtered += 1
                else:
                    out.deliver(frame, src, offload)
                return
        for port in self.ports:
            if port is not src:
                port.deliver(frame, src, offload)


def make_lan(lan_id: int, mode: str = "hub", aging: float = 300.0) -> Hub:
    return Switch(lan_id, aging) if mode == "switch" else Hub(lan_id)
