"""Traffic generator and sink, each run as its own process: ``python -m benchmarks.traffic gen|sink``.

Both are given an inherited file descriptor and a framing ``kind``:

- ``stream4``: QEMU's stream framing (4-byte big-endian length), on a unix stream socket;
- ``stream2``: vde_plug's stdio framing (2-byte big-endian length), on a pipe or socket;
- ``dgram``: one frame per datagram, on a connected unix datagram socket.

They are driven by the orchestrator with one JSON object per line on stdin, and answer with one JSON
object per line on stdout (requests and answers strictly alternate).

Frames (``size`` bytes, no FCS): dst 02:00:00:00:00:02 (the sink), src 02:00:00:00:00:01 (the
generator), ethertype 0x88b5 (local experimental), then ``VMLB``, the trial id (u32) and the sequence
number (u32), both little-endian, zero padding. The sink announces its MAC with one broadcast frame
(``hello``) so that learning switches know where it lives.

The per-frame cost of both is kept far below the switch's: the generator pre-builds a batch of K frames
once and only patches the sequence numbers' upper bytes per batch with strided slice assignments (C
speed), writing a whole batch (stream) or one frame (datagram) per system call. The sink checks a whole
received run of fixed-size records at once (strided slices + array comparison) and only falls back to
a per-frame parse when something is unusual (loss, reordering, duplicates, stale frames).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import stat
import struct
import sys
import threading
import time
from array import array
from typing import Any

GEN_MAC = bytes.fromhex("020000000001")
SINK_MAC = bytes.fromhex("020000000002")
BROADCAST = b"\xff" * 6
ETHERTYPE = b"\x88\xb5"
MAGIC = b"VMLB"
TRIAL_OFF = 18  # offset of the trial id in the frame
SEQ_OFF = 22  # offset of the sequence number in the frame
MIN_SIZE = 26
HEADERS = {"stream4": struct.Struct(">I"), "stream2": struct.Struct(">H"), "dgram": None}
LE = sys.byteorder == "little"
# The sink sleeps in a blocking read and uses little CPU; a higher priority makes the scheduler run it as
# soon as frames arrive, so that a switch's bounded output queue is not overrun just because the sink
# was waiting for a core (2-vCPU machines). Needs root (or CAP_SYS_NICE); ignored otherwise.
SINK_NICE = -10


def header_len(kind: str) -> int:
    h = HEADERS[kind]
    return 0 if h is None else h.size


def batch_frames(size: int) -> int:
    """Frames per pre-built batch: a power of two <= 256 (the low sequence byte is pre-built)."""
    if size <= 4096:
        return 256
    if size <= 16384:
        return 64
    return 16


def build_frame(size: int, trial: int, seq: int, dst: bytes = SINK_MAC, src: bytes = GEN_MAC) -> bytes:
    head = dst + src + ETHERTYPE + MAGIC + struct.pack("<II", trial, seq)
    return head + bytes(size - len(head))


def hello_frame() -> bytes:
    head = BROADCAST + SINK_MAC + ETHERTYPE + b"HELO"
    return head + bytes(60 - len(head))


def _is_socket(fd: int) -> bool:
    return stat.S_ISSOCK(os.fstat(fd).st_mode)


# -- generator ---------------------------------------------------------------------------------------------
class Batch:
    """K records (header + frame) in one buffer; ``set_base`` rewrites the sequence numbers' high bytes."""

    def __init__(self, kind: str, size: int, trial: int) -> None:
        if size < MIN_SIZE:
            raise ValueError(f"frame size {size} < {MIN_SIZE}")
        self.kind = kind
        self.size = size
        self.hlen = header_len(kind)
        self.rlen = self.hlen + size
        self.k = batch_frames(size)
        h = HEADERS[kind]
        hdr = h.pack(size) if h is not None else b""
        self.buf = bytearray(b"".join(hdr + build_frame(size, trial, i) for i in range(self.k)))
        self.view = memoryview(self.buf)
        self.frames = [self.view[i * self.rlen : (i + 1) * self.rlen] for i in range(self.k)]
        self._low = [bytes(range(j * self.k, (j + 1) * self.k)) for j in range(256 // self.k)]
        self.base = 0

    def set_base(self, base: int) -> None:
        """Sequence numbers of this batch become base .. base+K-1 (base is a multiple of K)."""
        k, r, o = self.k, self.rlen, self.hlen + SEQ_OFF
        buf = self.buf
        buf[o::r] = self._low[(base & 0xFF) // k]
        buf[o + 1 :: r] = bytes(((base >> 8) & 0xFF,)) * k
        buf[o + 2 :: r] = bytes(((base >> 16) & 0xFF,)) * k
        buf[o + 3 :: r] = bytes(((base >> 24) & 0xFF,)) * k
        self.base = base


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


class Generator:
    def __init__(self, fd: int, kind: str) -> None:
        self.fd = fd
        self.kind = kind
        os.set_blocking(fd, True)

    def run(self, trial: int, size: int, duration: float, rate: float) -> dict[str, float]:
        batch = Batch(self.kind, size, trial)
        batch.set_base(0)
        if rate <= 0:
            return self._blast(batch, duration)
        return self._paced(batch, duration, rate)

    def _send(self, batch: Batch, first: int, count: int) -> None:
        if batch.hlen:
            _write_all(self.fd, batch.view[first * batch.rlen : (first + count) * batch.rlen])
        else:
            write, fd = os.write, self.fd
            for f in batch.frames[first : first + count]:
                write(fd, f)

    def _blast(self, batch: Batch, duration: float) -> dict[str, float]:
        k = batch.k
        clock = time.perf_counter
        t0 = clock()
        t_end = t0 + duration
        sent = 0
        while True:
            self._send(batch, 0, k)
            sent += k
            batch.set_base(sent)
            if clock() >= t_end:
                break
        return {"sent": sent, "elapsed": clock() - t0}

    def _paced(self, batch: Batch, duration: float, rate: float) -> dict[str, float]:
        """Send round(rate*duration) frames on schedule; bursts are what is due since the last send."""
        k = batch.k
        total = max(1, round(rate * duration))
        clock = time.perf_counter
        sleep = time.sleep
        sent = 0
        pos = 0
        t0 = clock()
        while sent < total:
            due = min(int((clock() - t0) * rate) + 1, total) - sent
            if due <= 0:
                sleep(max(0.00005, min(0.0005, (sent + 1) / rate - (clock() - t0))))
                continue
            n = min(due, k - pos)
            self._send(batch, pos, n)
            sent += n
            pos += n
            if pos == k:
                pos = 0
                batch.set_base(sent)
        return {"sent": sent, "elapsed": clock() - t0}


# -- sink --------------------------------------------------------------------------------------------------
class Sink:
    def __init__(self, fd: int, kind: str, wfd: int | None) -> None:
        self.fd = fd
        self.kind = kind
        self.wfd = wfd
        self.hdr = HEADERS[kind]
        self.hlen = header_len(kind)
        os.set_blocking(fd, True)
        self.sock = socket.socket(fileno=os.dup(fd)) if _is_socket(fd) else None
        if self.sock is not None:
            self.sock.setblocking(True)
        self.buf = bytearray(4 * 1024 * 1024 + 70000)
        self.view = memoryview(self.buf)
        self.start = self.end = 0
        self.lock = threading.Lock()
        self.data_open = True
        self.reset(0, 64)

    def reset(self, trial: int, size: int) -> None:
        self.trial = trial
        self.trial_b = struct.pack("<I", trial)
        self.size = size
        self.rlen = self.hlen + size
        self.rhdr = self.hdr.pack(size) if self.hdr is not None else b""
        self.rx = 0
        self.rx_bytes = 0
        self.expected = 0
        self.reordered = 0
        self.dups = 0
        self.stale = 0
        self.first = 0.0
        self.first_rx = 0
        self.last = 0.0
        self.seen = bytearray(1 << 20)

    # -- accounting -----------------------------------------------------------------------------------
    def _grow(self, upto: int) -> None:
        n = len(self.seen)
        while n <= upto:
            n *= 2
        self.seen.extend(bytes(n - len(self.seen)))

    def _bulk(self, a: int, k: int) -> bool:
        """k records of the trial's size from buf[a]? Count them and return True; False if any record
        has another length or trial (the caller parses those one by one).

        C-speed strided slices check the headers and extract the sequence numbers; the common case (all
        in order, none missing) costs no Python work per frame, and gaps cost only a loop over integers.
        """
        buf, r = self.buf, self.rlen
        b = a + k * r
        for j in range(self.hlen):
            if buf[a + j : b : r] != self.rhdr[j : j + 1] * k:
                return False
        o = a + self.hlen
        tb = self.trial_b
        for j in range(4):
            if buf[o + TRIAL_OFF + j : b : r] != tb[j : j + 1] * k:
                return False
        seqb = bytearray(4 * k)
        for j in range(4):
            seqb[j::4] = buf[o + SEQ_OFF + j : b : r]
        seqs = array("I")
        seqs.frombytes(seqb)
        if not LE:
            seqs.byteswap()
        exp = self.expected
        self.rx_bytes += k * self.size
        if seqs == array("I", range(exp, exp + k)):
            if exp + k >= len(self.seen):
                self._grow(exp + k)
            self.seen[exp : exp + k] = b"\x01" * k
            self.expected = exp + k
            self.rx += k
            return True
        top = max(seqs)
        if top >= len(self.seen):
            self._grow(top)
        seen = self.seen
        if seqs[0] >= exp and all(x < y for x, y in itertools.pairwise(seqs)):
            for x in seqs:  # in order, with gaps: frames were lost
                seen[x] = 1
            self.expected = top + 1
            self.rx += k
            return True
        for x in seqs:
            if x >= exp:
                exp = x + 1
            elif seen[x]:
                self.dups += 1
                self.rx_bytes -= self.size
                continue
            else:
                self.reordered += 1
            seen[x] = 1
            self.rx += 1
        self.expected = exp
        return True

    def _one(self, frame: memoryview) -> None:
        """Per-frame slow path."""
        if len(frame) < MIN_SIZE or frame[14:18] != MAGIC:
            self.stale += 1
            return
        trial, seq = struct.unpack_from("<II", frame, TRIAL_OFF)
        if trial != self.trial:
            self.stale += 1
            return
        if seq >= len(self.seen):
            self._grow(seq)
        if seq >= self.expected:
            self.expected = seq + 1
        elif self.seen[seq]:
            self.dups += 1
            return
        else:
            self.reordered += 1
        self.seen[seq] = 1
        self.rx += 1
        self.rx_bytes += len(frame)

    def _count_first(self, now: float) -> None:
        if self.rx and not self.first:
            self.first = now
            self.first_rx = self.rx  # the rate is measured from the end of the first read on
        if self.rx:
            self.last = now

    # -- stream ---------------------------------------------------------------------------------------
    def _parse_stream(self) -> None:
        buf, view = self.buf, self.view
        a, end = self.start, self.end
        hlen, r = self.hlen, self.rlen
        unpack_from = self.hdr.unpack_from
        slow = 0  # records to parse one by one before trying the bulk check again (grows on failures)
        step = 16
        while True:
            if not slow:
                k = (end - a) // r
                if k and self._bulk(a, k):
                    a += k * r
                    step = 16
                    continue
                slow = step
                step *= 2
            if end - a < hlen:
                break
            n = unpack_from(buf, a)[0]
            if end - a - hlen < n:
                break
            if n:
                self._one(view[a + hlen : a + hlen + n])
            a += hlen + n
            slow -= 1
        if a == end:
            a = end = 0
        elif len(buf) - end < 70000:
            buf[0 : end - a] = buf[a:end]
            a, end = 0, end - a
        self.start, self.end = a, end

    def _read_stream(self) -> None:
        """Blocking reads: each returns whatever has arrived (one wake-up, many frames)."""
        lock, view, buf = self.lock, self.view, self.buf
        clock = time.perf_counter
        if self.sock is not None:
            recv_into = self.sock.recv_into
        else:
            fd = self.fd

            def recv_into(b: memoryview) -> int:
                return os.readv(fd, [b])

        while True:
            try:
                n = recv_into(view[self.end : len(buf)])
            except InterruptedError:
                continue
            if n == 0:
                return
            with lock:
                self.end += n
                self._parse_stream()
                self._count_first(clock())

    # -- datagrams ------------------------------------------------------------------------------------
    def _read_dgram(self) -> None:
        """One blocking receive, then drain what else is queued without blocking; check them together."""
        assert self.sock is not None
        recv_into = self.sock.recv_into
        view, lock = self.view, self.lock
        clock = time.perf_counter
        dontwait = socket.MSG_DONTWAIT
        while True:
            slot = size = self.size
            limit = min(len(self.buf) - size, 256 * size)
            try:
                n = recv_into(view[0:slot])
            except InterruptedError:
                continue
            lens = [n]
            pos = slot
            while pos < limit:
                try:
                    n = recv_into(view[pos : pos + slot], slot, dontwait)
                except (BlockingIOError, InterruptedError):
                    break
                lens.append(n)
                pos += slot
            with lock:
                if size != self.size:
                    continue  # a reset for another frame size raced with this batch
                k = len(lens)
                if k < 8 or not (lens.count(size) == k and self._bulk(0, k)):
                    for i, n in enumerate(lens):
                        self._one(view[i * slot : i * slot + n])
                self._count_first(clock())

    # -- control --------------------------------------------------------------------------------------
    def serve(self) -> None:
        """Frames are read by this thread with blocking calls (no select, no exception per wake-up);
        commands are served by a second thread."""
        ctl = threading.Thread(target=self._control, daemon=True)
        ctl.start()
        try:
            if self.kind == "dgram":
                self._read_dgram()
            else:
                self._read_stream()
        except OSError:
            pass
        self.data_open = False
        ctl.join()

    def _control(self) -> None:
        for line in sys.stdin:
            cmd = json.loads(line)
            op = cmd["cmd"]
            if op == "start":
                with self.lock:
                    self.reset(int(cmd["trial"]), int(cmd["size"]))
                self._reply({"ok": True})
            elif op == "hello":
                self._reply(self._hello())
            elif op == "stats":
                since = time.perf_counter()
                while True:
                    now = time.perf_counter()
                    if (
                        self.rx >= cmd["expect"]
                        or now - max(self.last, since) >= cmd.get("quiet", 0.5)
                        or now - since >= cmd.get("timeout", 30.0)
                        or not self.data_open
                    ):
                        break
                    time.sleep(0.01)
                with self.lock:
                    self._reply(self._stats())
            else:
                self._reply({"error": f"unknown command {op}"})
        os._exit(0)  # stdin closed: the orchestrator is done with us

    def _hello(self) -> dict[str, Any]:
        if self.wfd is None:
            return {"ok": True}
        frame = hello_frame()
        if self.hdr is not None:
            frame = self.hdr.pack(len(frame)) + frame
        try:
            os.write(self.wfd, frame)
        except OSError as exc:
            return {"ok": False, "why": str(exc)}
        return {"ok": True}

    def _stats(self) -> dict[str, Any]:
        return {
            "rx": self.rx,
            "rx_bytes": self.rx_bytes,
            "span": max(self.last - self.first, 0.0),
            "span_rx": self.rx - self.first_rx,
            "reordered": self.reordered,
            "dups": self.dups,
            "stale": self.stale,
        }

    @staticmethod
    def _reply(obj: object) -> None:
        os.write(1, json.dumps(obj).encode() + b"\n")


def _serve_generator(gen: Generator) -> None:
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            return
        try:
            res: dict[str, object] = dict(
                gen.run(
                    int(cmd["trial"]), int(cmd["size"]), float(cmd["duration"]), float(cmd.get("rate", 0))
                )
            )
        except OSError as exc:
            res = {"error": f"{exc.strerror or exc}"}
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.traffic")
    p.add_argument("role", choices=["gen", "sink"])
    p.add_argument("--fd", type=int, required=True, help="inherited fd carrying the frames")
    p.add_argument("--wfd", type=int, help="sink: inherited fd on which to send the hello frame")
    p.add_argument("--kind", choices=sorted(HEADERS), required=True)
    args = p.parse_args(argv)
    try:
        if args.role == "gen":
            _serve_generator(Generator(args.fd, args.kind))
        else:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, 0, SINK_NICE)
            Sink(args.fd, args.kind, args.wfd if args.wfd is not None else None).serve()
    except (KeyboardInterrupt, BrokenPipeError):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
