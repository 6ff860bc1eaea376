"""``-object filter-netem`` on a port: the netem engine (engines/netem.py) wired to the LAN's filter hooks.

One :class:`NetemFilter` serves one port (a listening netdev's runtime makes one per accepted peer),
with one engine per configured direction: ``rx`` holds the frames the port's peer sends into the LAN
and hands them on with ``lan.forward``; ``tx`` holds the frames toward the peer and hands them on with
``port.deliver(..., filtered=True)``. A direction that ``queue=`` leaves out gets no hook at all, so it
costs nothing.

Hot path: no Task, Future or Queue per frame. The hook offers the frame and, when the engine says a
frame is due already (no delay configured, a reordered frame), hands it on in the same call; everything
else waits for one TimerHandle per filter, re-armed only when a deadline earlier than the armed one
appears. Frames are copied only if they may outlive the call (the ingress buffer is reused): when the
direction can hold frames (delay, jitter or rate), or during a re-entrant call. A frame never leaves
before its deadline by the loop's clock; it may leave later by the loop's timer granularity (about a
millisecond: epoll's timeout, uvloop's clock), so ``rate=`` paces in bursts of at most that much.

GSO super-frames (``offload`` with a gso type) are cut into their wire frames before the emulator sees
them, so ``loss=`` and ``rate=`` apply per frame on the wire, not per 64 KiB burst (Linux netem treats
a GSO skb as one packet; vmlan differs on purpose). Checksum-only offload passes through untouched.

Seeds: with ``seed=N`` each direction of each port draws from its own ``random.Random`` seeded with
``"N:<port name>:rx"`` (or ``:tx``), so runs repeat exactly and two peers of one netdev differ.
"""

from __future__ import annotations

import asyncio
import math
import random
from typing import TypeAlias

from vmlan.config.filters import NetemConfig
from vmlan.engines.netem import Netem, NetemParams
from vmlan.lan import Port
from vmlan.wire import BytesLike, WireError
from vmlan.wire.gso import software_offload
from vmlan.wire.vnet import GSO_NONE, Offload

RxItem: TypeAlias = tuple[BytesLike, Offload | None]
TxItem: TypeAlias = tuple[BytesLike, Port, Offload | None]
EARLY_TIMER_WAIT = 0.001  # seconds: uvloop's timer and clock granularity


def netem_params(cfg: NetemConfig) -> NetemParams:
    """The user's units (percent, ms, Mbit/s) in the engine's (probabilities, seconds, bits/s)."""
    return NetemParams(
        loss=cfg.loss / 100,
        duplicate=cfg.duplicate / 100,
        reorder=cfg.reorder / 100,
        delay=cfg.delay / 1000,
        jitter=cfg.jitter / 1000,
        rate=cfg.rate * 1e6,
        limit=cfg.limit,
    )


def _wire_frames(frame: BytesLike, offload: Offload) -> list[bytes] | None:
    """A GSO super-frame's wire frames; None if it is not one, or cannot be cut (the ports will judge it)."""
    if offload.gso == GSO_NONE:
        return None
    try:
        return software_offload(frame, offload)
    except WireError:
        return None


class NetemFilter:
    """Loss, delay, jitter, duplication, reordering and rate on one port, per ``NetemConfig``."""

    def __init__(self, cfg: NetemConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.loop = loop
        self.params = netem_params(cfg)
        self.port: Port | None = None
        self.rx: Netem[RxItem] | None = None
        self.tx: Netem[TxItem] | None = None
        self._hold = self.params.holds
        self._rx_hook = self._on_rx  # bound once: detach() recognises its own hooks by identity
        self._tx_hook = self._on_tx
        self._rx_busy = False
        self._tx_busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._closed = False

    # -- setup -----------------------------------------------------------------------------------------
    def attach(self, port: Port) -> None:
        """Take over the configured directions of ``port``; a filter serves one port, once."""
        if self.port is not None or self._closed:
            raise RuntimeError(f"filter-netem {self.cfg.id}: already attached")
        if (self.cfg.rx and port.rx_filter is not None) or (self.cfg.tx and port.tx_filter is not None):
            raise RuntimeError(f"filter-netem {self.cfg.id}: port {port.name} already has a filter")
        self.port = port
        if self.cfg.rx:
            self.rx = Netem(self.params, self._rng(port, "rx"))
            port.rx_filter = self._rx_hook
        if self.cfg.tx:
            self.tx = Netem(self.params, self._rng(port, "tx"))
            port.tx_filter = self._tx_hook

    def _rng(self, port: Port, direction: str) -> random.Random:
        if self.cfg.seed is None:
            return random.Random()
        return random.Random(f"{self.cfg.seed}:{port.name}:{direction}")

    def detach(self) -> None:
        """Stop taking new frames; those already queued still leave on time (they exist)."""
        port = self.port
        if port is None:
            return
        if port.rx_filter is self._rx_hook:
            port.rx_filter = None
        if port.tx_filter is self._tx_hook:
            port.tx_filter = None

    def close(self) -> None:
        """Detach, drop what is queued (counted as ``flushed``) and cancel the timer."""
        self.detach()
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for engine in (self.rx, self.tx):
            if engine is not None:
                engine.clear()

    # -- the hooks -------------------------------------------------------------------------------------
    def _on_rx(self, port: Port, frame: BytesLike, offload: Offload | None) -> None:
        engine = self.rx
        assert engine is not None
        now = self.loop.time() if self._hold else 0.0  # without a hold, time does not matter
        pieces = _wire_frames(frame, offload) if offload is not None else None
        if pieces is None:
            engine.offer((bytes(frame) if self._hold or self._rx_busy else frame, offload), now, len(frame))
        else:
            for piece in pieces:
                engine.offer((piece, None), now, len(piece))
        if not self._hold:
            self._flush_rx(now)  # nothing waits: no timer (a re-entrant call's frame is the outer loop's)
            return
        deadline = engine.get_timer()
        if deadline is None:
            return
        if deadline <= now:
            self._flush_rx(now)
            self._schedule()
        elif self._timer is None or deadline < self._timer_at:
            self._arm(deadline)

    def _on_tx(self, port: Port, frame: BytesLike, src: Port, offload: Offload | None) -> None:
        engine = self.tx
        assert engine is not None
        now = self.loop.time() if self._hold else 0.0  # without a hold, time does not matter
        pieces = _wire_frames(frame, offload) if offload is not None else None
        if pieces is None:
            engine.offer((bytes(frame) if self._hold or self._tx_busy else frame, src, offload), now, len(frame))
        else:
            for piece in pieces:
                engine.offer((piece, src, None), now, len(piece))
        if not self._hold:
            self._flush_tx(now)  # nothing waits: no timer (a re-entrant call's frame is the outer loop's)
            return
        deadline = engine.get_timer()
        if deadline is None:
            return
        if deadline <= now:
            self._flush_tx(now)
            self._schedule()
        elif self._timer is None or deadline < self._timer_at:
            self._arm(deadline)

    # -- handing frames on -----------------------------------------------------------------------------
    # A frame handed on may come straight back into this filter (a user stack answering at once): the
    # busy flag makes that inner call queue its frame (copied) for the outer loop, so order is kept.
    def _flush_rx(self, now: float) -> int:
        engine, port = self.rx, self.port
        if self._rx_busy or engine is None or port is None:
            return 0
        self._rx_busy = True
        done = 0
        try:
            while items := engine.due(now):
                done += len(items)
                for frame, offload in items:
                    lan = port.lan
                    if lan is not None:  # the port left the LAN: its frames have nowhere to go
                        lan.forward(port, frame, offload)
                if self._hold:
                    now = max(now, self.loop.time())  # frames a re-entrant call queued meanwhile
        finally:
            self._rx_busy = False
        return done

    def _flush_tx(self, now: float) -> int:
        engine, port = self.tx, self.port
        if self._tx_busy or engine is None or port is None:
            return 0
        self._tx_busy = True
        done = 0
        try:
            while items := engine.due(now):
                done += len(items)
                for frame, src, offload in items:
                    port.deliver(frame, src, offload, True)  # even if src has left: the frame exists
                if self._hold:
                    now = max(now, self.loop.time())
        finally:
            self._tx_busy = False
        return done

    # -- the timer -------------------------------------------------------------------------------------
    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _schedule(self, not_before: float = -math.inf) -> None:
        """Keep the timer at or before the earliest deadline of both directions (but not before
        ``not_before``); none when both are empty."""
        deadline: float | None = None
        for engine in (self.rx, self.tx):
            if engine is not None:
                t = engine.get_timer()
                if t is not None and (deadline is None or t < deadline):
                    deadline = t
        if deadline is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        elif self._timer is None or deadline < self._timer_at:
            self._arm(max(deadline, not_before))

    def _on_timer(self) -> None:
        self._timer = None
        now = self.loop.time()
        done = 0
        try:
            done = self._flush_rx(now) + self._flush_tx(now)
        finally:
            if not self._closed:
                # A timer that came early (uvloop rounds to whole milliseconds and its clock ticks in them)
                # waits a tick more instead of spinning through call_soon until the clock moves.
                self._schedule(-math.inf if done else now + EARLY_TIMER_WAIT)

    # -- reporting -------------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, dict[str, int]]:
        """Per configured direction: the engine's counters plus what is queued now (frames, bytes)."""
        out: dict[str, dict[str, int]] = {}
        for name, engine in (("rx", self.rx), ("tx", self.tx)):
            if engine is not None:
                counts = engine.counters.as_dict()
                counts["queued"] = len(engine)
                counts["queued_bytes"] = engine.queued_bytes
                out[name] = counts
        return out

    def describe(self) -> str:
        """One line for ``info network``: ``netem ID: rx offered 10 passed 9 lost 1 ...; tx ...``."""
        parts = []
        for name, counts in self.as_dict().items():
            parts.append(name + " " + " ".join(f"{key} {value}" for key, value in counts.items()))
        return f"netem {self.cfg.id}: " + ("; ".join(parts) if parts else "not attached")
