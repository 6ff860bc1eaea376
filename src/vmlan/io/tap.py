"""TAP links: QEMU's ``-netdev tap`` (net/tap.c, net/tap-linux.c) and the TAP port the bridge link uses.

Opening (Linux drivers/net/tun.c): ``/dev/net/tun``, TUNGETFEATURES, then TUNSETIFF with
IFF_TAP | IFF_NO_PI (| IFF_VNET_HDR when used) and the name (``tap%d`` by default: the kernel picks
the number); the descriptor is made non-blocking and its send buffer unlimited (TUNSETSNDBUF INT_MAX,
as QEMU). A descriptor passed with ``fd=`` is checked with TUNGETIFF: it must be a TAP without packet
information; its IFF_VNET_HDR flag says whether frames carry the header.

With virtio-net headers (TUNSETVNETHDRSZ 10) vmlan also asks for TUNSETOFFLOAD(CSUM | TSO4 | TSO6):
the interface then advertises checksum offload and TSO, so the kernel hands vmlan TCP segments of up
to 64 KiB whose checksum is only the pseudo-header sum, whatever the MTU, and takes such segments
back. Every read and write on the descriptor is then a 10-byte ``struct virtio_net_hdr``
(:mod:`vmlan.wire.vnet`) followed by one frame. A header that says nothing (no NEEDS_CSUM, no GSO;
DATA_VALID alone is only a hint and is dropped) gives ``offload=None``, so the common small frame
costs no object; headers that do say something are parsed and validated once per distinct header
(per flow, in practice) and the :class:`~vmlan.wire.vnet.Offload` is reused. The LAN cuts such frames
up for ports that cannot take them (:mod:`vmlan.wire.gso`); a TAP port with headers takes them as
they are (``offload_ok``) and writes their header back to its kernel.

Hot path as in io/dgram.py: ``add_reader`` and a draining loop of ``readinto`` into one reused buffer
(one frame per read, at most READS_PER_WAKEUP frames or READ_BYTES_PER_WAKEUP bytes per turn, so that
one busy TAP cannot hold the loop: a super-frame costs about 0.1 ms for each port it must be cut for,
and 16 of them cut for ten stream ports are ~16 ms); writes are one ``writev`` of header and
frame. When the kernel pushes back, frames wait in a bounded queue drained on writability; beyond the
bound they are dropped and counted.

Scripts (``script=``/``downscript=``) are run as QEMU runs them: ``execv(script, [script, ifname])``,
the TAP descriptor kept open in the child and every other descriptor above 2 closed; a status other
than 0 from the up script fails the start with ``network script PATH failed with status N`` (N is
the exit status; QEMU prints the raw wait status, 256 for exit 1). The down script runs before the
descriptor is closed, so the interface still exists for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import io
import logging
import os
import struct
import subprocess
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from vmlan.config.tap import IFNAMSIZ, TapNetdev
from vmlan.io.errors import LinkError
from vmlan.lan import Hub, Port
from vmlan.wire import BytesLike, WireError
from vmlan.wire.vnet import PLAIN_HEADER, VNET_HLEN, Offload

log = logging.getLogger("vmlan")

__all__ = [
    "OFFLOADS",
    "TUN_DEVICE",
    "ScriptError",
    "TapDevice",
    "TapLink",
    "TapPort",
    "offload_names",
    "open_tap",
    "probe_tap",
    "run_script",
    "set_offloads",
    "tun_features",
]

TUN_DEVICE = "/dev/net/tun"

# include/uapi/linux/if_tun.h
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_PERSIST = 0x0800
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
#: What vmlan asks for with vnet headers: partial checksums and TCP segmentation both ways.
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6


def _ioc(direction: int, nr: int, size: int = 4) -> int:
    return (direction << 30) | (size << 16) | (ord("T") << 8) | nr


TUNSETIFF = _ioc(1, 202)
TUNGETFEATURES = _ioc(2, 207)
TUNSETOFFLOAD = _ioc(1, 208)
TUNGETIFF = _ioc(2, 210)
TUNSETSNDBUF = _ioc(1, 212)
TUNGETVNETHDRSZ = _ioc(2, 215)
TUNSETVNETHDRSZ = _ioc(1, 216)

_IFREQ = struct.Struct("16sH22x")  # struct ifreq: ifr_name, ifr_flags (a union of 24 bytes)
_INT = struct.Struct("i")
_UINT = struct.Struct("I")
INT_MAX = 2**31 - 1

#: Largest frame a TAP hands over: a 64 KiB GSO segment plus headers (QEMU's NET_BUFSIZE).
TAP_BUFSIZE = 4096 + 65536
READS_PER_WAKEUP = 64
#: Bytes read per turn: 16 GSO super-frames, each cut for every port without offloads (~0.1 ms a port).
READ_BYTES_PER_WAKEUP = 1024 * 1024
QUEUE_FRAMES = 1024
QUEUE_BYTES = 4 * 1024 * 1024
HEADER_CACHE = 256  # distinct non-trivial vnet headers remembered (one per flow and segment size, typically)
SCRIPT_TIMEOUT = 60.0  # seconds a network script may take before the link gives up on it
_DEVICE_GONE = frozenset({errno.EBADFD, errno.ENXIO, errno.ENODEV, errno.EBADF})


# -- opening ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TapDevice:
    """An open TAP descriptor: its interface name and whether frames carry a virtio-net header."""

    fd: int
    ifname: str
    vnet_hdr: bool


def _reason(exc: OSError) -> str:
    return exc.strerror or os.strerror(exc.errno or 0) or str(exc)


def _ifreq_name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def tun_features(fd: int) -> int:
    """TUNGETFEATURES: the IFF_* flags this kernel's TUNSETIFF accepts (0 if it cannot say)."""
    try:
        buf = bytearray(_UINT.size)
        fcntl.ioctl(fd, TUNGETFEATURES, buf)
        return int(_UINT.unpack(buf)[0])
    except OSError:
        return 0


def open_tap(ifname: str = "", vnet_hdr: bool | None = None) -> TapDevice:
    """Create (or attach to a persistent) TAP interface, as QEMU's tap_open.

    ``vnet_hdr``: None = use the header if the kernel offers it, True = require it, False = never.
    Raises OSError with QEMU's wording in ``strerror`` (the caller prefixes the netdev).
    """
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(exc.errno, f"could not open {TUN_DEVICE}: {_reason(exc)}") from None
    try:
        features = tun_features(fd)
        flags = IFF_TAP | IFF_NO_PI
        use_vnet = False
        if vnet_hdr is not False:
            use_vnet = bool(features & IFF_VNET_HDR)
            if vnet_hdr and not use_vnet:
                raise OSError(
                    errno.EOPNOTSUPP, "vnet_hdr=1 requested, but no kernel support for IFF_VNET_HDR available"
                )
            if use_vnet:
                flags |= IFF_VNET_HDR
        name = ifname or "tap%d"
        req = bytearray(_IFREQ.pack(name.encode("utf-8", "surrogateescape")[: IFNAMSIZ - 1], flags))
        try:
            fcntl.ioctl(fd, TUNSETIFF, req)
        except OSError as exc:
            where = f"{TUN_DEVICE} ({name})" if ifname else TUN_DEVICE
            raise OSError(exc.errno, f"could not configure {where}: {_reason(exc)}") from None
        actual = _ifreq_name(_IFREQ.unpack(req)[0])
        _prepare(fd, use_vnet)
    except BaseException:
        os.close(fd)
        raise
    return TapDevice(fd, actual, use_vnet)


def probe_tap(fd: int) -> TapDevice:
    """Check an inherited descriptor (``fd=``): a TAP without packet information. Raises OSError."""
    try:
        os.fstat(fd)
    except OSError as exc:
        raise OSError(exc.errno, f"fd={fd}: {_reason(exc)}") from None
    req = bytearray(_IFREQ.size)
    try:
        fcntl.ioctl(fd, TUNGETIFF, req)
    except OSError as exc:
        raise OSError(exc.errno, f"fd={fd} is not an attached TUN/TAP descriptor (TUNGETIFF: {_reason(exc)})") from None
    raw_name, flags = _IFREQ.unpack(req)
    if not flags & IFF_TAP:
        raise OSError(errno.EINVAL, f"fd={fd} is a TUN (layer 3) device, not a TAP")
    if not flags & IFF_NO_PI:
        raise OSError(errno.EINVAL, f"fd={fd} was opened without IFF_NO_PI (packet information headers)")
    vnet = bool(flags & IFF_VNET_HDR)
    _prepare(fd, vnet)
    return TapDevice(fd, _ifreq_name(raw_name), vnet)


def _prepare(fd: int, vnet_hdr: bool) -> None:
    """Non-blocking, unlimited send buffer (QEMU's default), header size 10 (another program may have
    changed it on a persistent TAP), no offloads until asked for."""
    os.set_blocking(fd, False)
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, TUNSETSNDBUF, _INT.pack(INT_MAX))
    if vnet_hdr:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, _INT.pack(VNET_HLEN))
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, TUNSETOFFLOAD, 0)


def set_offloads(fd: int, offloads: int = OFFLOADS) -> int:
    """TUNSETOFFLOAD: what the kernel may hand over unfinished. Returns the bits in force (0 if refused).

    Only meaningful with vnet headers (the metadata has nowhere to go otherwise). Without TSO the
    kernel still accepts TSO frames written to it; the bits describe only what we accept.
    """
    for bits in (offloads, offloads & TUN_F_CSUM):
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, bits)
            return bits
        except OSError:
            continue
    return 0


def offload_names(bits: int) -> str:
    names = [n for b, n in ((TUN_F_CSUM, "csum"), (TUN_F_TSO4, "tso4"), (TUN_F_TSO6, "tso6"),
                            (TUN_F_TSO_ECN, "tso_ecn"), (TUN_F_UFO, "ufo")) if bits & b]
    return "+".join(names) or "none"


# -- scripts ---------------------------------------------------------------------------------------------
class ScriptError(Exception):
    """A network script failed; the message is one line."""


def run_script(path: str, ifname: str, keep_fd: int, *, required: bool = True,
               timeout: float = SCRIPT_TIMEOUT) -> bool:
    """Run a network script as QEMU's launch_script; True if it ran, False if skipped (a default that
    does not exist). A script that cannot be started, times out or ends with a status other than 0
    raises :class:`ScriptError` with a one-line reason."""
    if not required and not os.path.lexists(path):
        log.debug("network script %s does not exist: not run", path)
        return False
    argv0 = path
    executable = path if "/" in path else os.path.join(".", path)  # execv, not execvp: no PATH search
    try:
        proc = subprocess.run([argv0, ifname], executable=executable, close_fds=True,
                              pass_fds=(keep_fd,) if keep_fd >= 0 else (), timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ScriptError(f"network script {path} did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise ScriptError(f"could not launch network script {path}: {_reason(exc)}") from None
    if proc.returncode < 0:
        raise ScriptError(f"network script {path} was killed by signal {-proc.returncode}")
    if proc.returncode != 0:
        raise ScriptError(f"network script {path} failed with status {proc.returncode}")
    return True


# -- the port --------------------------------------------------------------------------------------------
class TapPort(Port):
    """One open TAP descriptor on a LAN: ``TapPort(name, fd, loop, vnet_hdr=True)``.

    The port owns ``fd`` (it closes it). ``vnet_hdr`` must say how the descriptor was opened
    (IFF_VNET_HDR and a header size of 10); offloads are the opener's business (:func:`set_offloads`).
    With headers the port takes offloaded frames as they are (``offload_ok``).
    """

    __slots__ = (
        "_bufs",
        "_closed",
        "_fd",
        "_file",
        "_headers",
        "_loop",
        "_on_close",
        "_queue",
        "_queued_bytes",
        "_reading",
        "_view",
        "_write_errors",
        "_writer_armed",
        "gso_max",
        "gso_size",
        "ifname",
        "offload_ok",
        "rx_bad_header",
        "rx_csum_partial",
        "rx_gso",
        "tx_gso",
        "vnet_hdr",
    )

    def __init__(
        self,
        name: str,
        fd: int,
        loop: asyncio.AbstractEventLoop,
        vnet_hdr: bool = True,
        ifname: str = "",
        on_close: Callable[[TapPort, str], None] | None = None,
    ) -> None:
        super().__init__(name)
        os.set_blocking(fd, False)
        self._fd = fd
        self._file = io.FileIO(fd, "rb", closefd=False)  # readinto() returns None on EAGAIN: no exception per turn
        self._loop = loop
        self._on_close = on_close
        self.vnet_hdr = vnet_hdr
        self.offload_ok = vnet_hdr
        self.ifname = ifname
        # One byte more than the largest frame: a read that fills it was truncated by the kernel.
        self._bufs = bytearray(TAP_BUFSIZE + (VNET_HLEN if vnet_hdr else 0) + 1)
        self._view = memoryview(self._bufs)
        self._headers: dict[bytes, Offload] = {}
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._writer_armed = False
        self._reading = False
        self._closed = False
        self._write_errors = 0
        self.rx_gso = 0  # GSO super-frames the kernel handed over
        self.rx_csum_partial = 0  # frames (GSO or not) whose checksum was left to us
        self.rx_bad_header = 0  # frames dropped for a vnet header no sender may write
        self.gso_max = 0  # the longest GSO frame seen (bytes, without the vnet header)
        self.gso_size = 0  # the gso_size of the last GSO frame
        self.tx_gso = 0  # GSO super-frames written to the kernel as they are

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        if not self._closed and not self._reading:
            self._reading = True
            self._loop.add_reader(self._fd, self._on_readable)

    def describe(self) -> str:
        return f"ifname={self.ifname}" + (",vnet_hdr=on" if self.vnet_hdr else ",vnet_hdr=off")

    # -- receive ---------------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        readinto = self._file.readinto
        buf = self._bufs
        view = self._view
        limit = len(buf) - 1
        vnet = self.vnet_hdr
        counters = self.counters
        headers = self._headers
        budget = READ_BYTES_PER_WAKEUP
        for _ in range(READS_PER_WAKEUP):
            if budget <= 0:
                return
            try:
                n = readinto(buf)
            except OSError as exc:
                self._read_failed(exc)
                return
            if n is None:
                return
            budget -= n
            if n > limit or n == 0:
                counters.rx_dropped += 1  # truncated (a frame above 64 KiB + headers), or nothing
                continue
            offload: Offload | None = None
            if vnet:
                if n < VNET_HLEN:
                    counters.rx_dropped += 1
                    continue
                if buf[0] & 0xFD or buf[1]:  # a flag but DATA_VALID, or a GSO type: parse (and check) it
                    key = bytes(view[:VNET_HLEN])
                    offload = headers.get(key)
                    if offload is None or offload.gso_type:
                        offload = self._offload(key, n - VNET_HLEN)
                        if offload is None:
                            continue
                    else:  # a known checksum-only header (every small TCP frame): _offload's work, inline
                        self.rx_csum_partial += 1  # parsed flags beyond DATA_VALID can only be NEEDS_CSUM
                frame = view[VNET_HLEN:n]
            else:
                frame = view[:n]
            lan = self.lan
            if lan is not None:
                lan.input(self, frame, offload)
            if self._closed:
                return

    def _offload(self, key: bytes, length: int) -> Offload | None:
        offload = self._headers.get(key)
        if offload is None:
            try:
                offload = Offload.parse(key)
            except WireError:
                self.rx_bad_header += 1
                self.counters.rx_dropped += 1
                return None
            if len(self._headers) >= HEADER_CACHE:
                self._headers.clear()
            self._headers[key] = offload
        if offload.gso_type:
            self.rx_gso += 1
            self.gso_size = offload.gso_size
            if length > self.gso_max:
                self.gso_max = length
        if offload.flags & 1:
            self.rx_csum_partial += 1
        return offload

    def _read_failed(self, exc: OSError) -> None:
        if exc.errno in _DEVICE_GONE:
            self.close(f"the TAP interface is gone ({_reason(exc)})")
        elif exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return
        else:
            self.counters.rx_dropped += 1
            log.debug("port %s: read error: %s", self.name, _reason(exc))

    # -- transmit --------------------------------------------------------------------------------------
    def transmit(self, frame: BytesLike, src: Port, offload: Offload | None) -> bool:
        if self._closed:
            return False
        if self._queue:
            return self._enqueue(frame, offload)
        try:
            if self.vnet_hdr:
                if offload is None:
                    os.writev(self._fd, (PLAIN_HEADER, frame))
                else:
                    os.writev(self._fd, (offload.to_bytes(), frame))
                    if offload.gso_type:
                        self.tx_gso += 1
            else:
                os.write(self._fd, frame)
        except (BlockingIOError, InterruptedError):
            return self._enqueue(frame, offload)
        except OSError as exc:
            return self._write_failed(exc)
        return True

    def _write_failed(self, exc: OSError) -> bool:
        """EINVAL: the kernel refused the frame or its header (counted); the device gone: close."""
        if exc.errno in _DEVICE_GONE:
            self._loop.call_soon(self.close, f"the TAP interface is gone ({_reason(exc)})")
            return False
        self._write_errors += 1
        if self._write_errors == 1 or self._write_errors % 10000 == 0:
            log.debug("port %s: write failed (%s), %d so far", self.name, _reason(exc), self._write_errors)
        return False

    def _enqueue(self, frame: BytesLike, offload: Offload | None) -> bool:
        size = len(frame) + (VNET_HLEN if self.vnet_hdr else 0)
        if len(self._queue) >= QUEUE_FRAMES or self._queued_bytes + size > QUEUE_BYTES:
            return False
        if self.vnet_hdr:
            self._queue.append((PLAIN_HEADER if offload is None else offload.to_bytes()) + bytes(frame))
        else:
            self._queue.append(bytes(frame))
        self._queued_bytes += size
        if not self._writer_armed:
            self._writer_armed = True
            self._loop.add_writer(self._fd, self._drain)
        return True

    def _drain(self) -> None:
        queue = self._queue
        while queue and not self._closed:
            item = queue[0]
            try:
                os.write(self._fd, item)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                queue.popleft()
                self._queued_bytes -= len(item)
                self.counters.tx_dropped += 1
                self._write_failed(exc)
                continue
            queue.popleft()
            self._queued_bytes -= len(item)
        if self._writer_armed and not self._closed:
            self._loop.remove_writer(self._fd)
        self._writer_armed = False

    # -- teardown --------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop reading and writing; the descriptor stays open (a down script may still need it)."""
        if self._reading:
            self._reading = False
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._fd)
        if self._writer_armed:
            self._writer_armed = False
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(self._fd)
        self._queue.clear()
        self._queued_bytes = 0

    def close(self, reason: str = "closed") -> None:
        if self._closed:
            return
        self.stop()
        self._closed = True
        self._file.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        if self.lan is not None:
            self.lan.detach(self)
        if self._on_close is not None:
            self._on_close(self, reason)


# -- the netdev ------------------------------------------------------------------------------------------
class TapLink:
    """``-netdev tap``: one TapPort on the netdev's hub, with QEMU's scripts around it."""

    def __init__(self, cfg: TapNetdev, lan: Hub, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.lan = lan
        self.loop = loop
        self.port: TapPort | None = None
        self.on_port: Callable[[TapPort], None] | None = None  # lets the runner attach dumps
        self.label = f"tap {cfg.id}"
        self.offloads = 0
        self._downscript = ""

    @property
    def ports(self) -> list[TapPort]:
        return [self.port] if self.port is not None else []

    def describe(self) -> str:
        port = self.port
        if port is None:
            return self.cfg.info + ",closed"
        if self.cfg.fd is not None:
            head = f"fd={self.cfg.fd}"
        else:
            head = f"ifname={port.ifname},script={self.cfg.script or 'no'},downscript={self.cfg.downscript or 'no'}"
        vnet = f",vnet_hdr=on,offload={offload_names(self.offloads)}" if port.vnet_hdr else ",vnet_hdr=off"
        return head + vnet

    def start(self) -> None:
        """Open the TAP (or check ``fd=``), run the up script, join the hub. Raises LinkError."""
        cfg = self.cfg
        what = f"-netdev tap,id={cfg.id}"
        try:
            dev = probe_tap(cfg.fd) if cfg.fd is not None else open_tap(cfg.ifname, cfg.vnet_hdr)
        except OSError as exc:
            raise LinkError(f"{what}: {_reason(exc)}") from None
        if cfg.fd is None and cfg.script:
            try:
                run_script(cfg.script, dev.ifname, dev.fd, required=cfg.script_required)
            except ScriptError as exc:
                os.close(dev.fd)
                raise LinkError(f"{what}: {exc}") from None
        if cfg.fd is None and cfg.downscript:
            self._downscript = cfg.downscript
        self.offloads = set_offloads(dev.fd) if dev.vnet_hdr else 0
        port = TapPort(cfg.id, dev.fd, self.loop, dev.vnet_hdr, dev.ifname, self._port_closed)
        self.port = port
        if self.on_port is not None:
            self.on_port(port)
        self.lan.attach(port)
        port.start()
        log.info("%s: %s", self.label, self.describe())

    def _port_closed(self, port: TapPort, reason: str) -> None:
        if port is self.port:
            self.port = None
        if reason != "shutting down":
            log.warning("%s: %s", self.label, reason)

    def close(self) -> None:
        port = self.port
        if port is None:
            return
        port.stop()
        if self._downscript:
            try:
                run_script(self._downscript, port.ifname, port.fd, required=self.cfg.downscript_required)
            except ScriptError as exc:
                log.warning("%s: %s", self.label, exc)
        port.close("shutting down")

