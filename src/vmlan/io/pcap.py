"""Pcap capture of a port, as QEMU's ``-object filter-dump`` writes it.

Records are buffered and written at most every FLUSH_INTERVAL seconds (or when the buffer is large),
so a capture costs no syscall per frame; the file is complete once the dump is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from vmlan.wire import BytesLike
from vmlan.wire.pcap import build_global_header, build_record

log = logging.getLogger("vmlan")

FLUSH_INTERVAL = 0.25
FLUSH_BYTES = 256 * 1024


class PcapDump:
    def __init__(self, path: str, loop: asyncio.AbstractEventLoop | None, maxlen: int = 65536) -> None:
        self.path = path
        self.maxlen = maxlen
        self._loop = loop
        self._file = open(path, "wb")  # noqa: SIM115 - lives as long as the dump
        self._file.write(build_global_header(maxlen))
        self._file.flush()
        self._buf = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self.frames = 0
        self.failed = False

    def write(self, frame: BytesLike) -> None:
        if self.failed:
            return
        # pcap's 32-bit seconds: a clock outside 1970..2038 is clamped, not a reason to lose the frame.
        ts = min(max(time.time(), 0.0), float(2**31 - 1))
        self._buf += build_record(frame, ts, self.maxlen)
        self.frames += 1
        if len(self._buf) >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None and self._loop is not None:
            self._timer = self._loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._buf and not self._file.closed and not self.failed:
            try:
                self._file.write(self._buf)
                self._file.flush()
            except OSError as exc:  # disk full, file system gone: stop capturing, keep forwarding
                self.failed = True
                log.warning("filter-dump %s: %s; capture stopped", self.path, exc.strerror or exc)
            self._buf.clear()

    def close(self) -> None:
        self.flush()
        with contextlib.suppress(OSError):
            self._file.close()


class DumpTee:
    """Several dumps on one direction of a port (a port has one sink per direction)."""

    __slots__ = ("dumps",)

    def __init__(self, dumps: list[PcapDump]) -> None:
        self.dumps = dumps

    def write(self, frame: BytesLike) -> None:
        for dump in self.dumps:
            dump.write(frame)
