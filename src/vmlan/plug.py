"""``vmlan plug``: vde_plug's stdin/stdout stream on one side, a VDE switch on the other.

    vmlan plug [-g GROUP] [-m MODE] [--port N] [-D DESCR] [-v|-q] [SOCKDIR]

It joins the VDE switch whose control directory is SOCKDIR (a ``vde_switch -s SOCKDIR``, or vmlan's own
``-netdev vde,sock=SOCKDIR,server=on``; without SOCKDIR libvdeplug's default switches, /var/run/vde.ctl
and /tmp/vde.ctl) as a client, exactly as QEMU's ``-netdev vde`` does, and carries the switch's frames
on stdin/stdout with vde_plug's stdio framing, so that pipes join LANs::

    dpipe vde_plug /tmp/sw = vmlan plug /tmp/vmlan-sw
    dpipe vmlan plug /tmp/sw = ssh host vmlan plug /tmp/sw2

Stdio framing (vdeplug4 libvdestream.c): each frame is preceded by its length as a 2-byte big-endian
integer; a length of 0 is skipped. vdeplug4's reader refuses (and loses its place on) anything longer
than VDE_ETHBUFSIZE + 2 = 9236 bytes, so longer frames are dropped on the way out, counted; on the way
in every length up to 65535 is taken. Frames shorter than an Ethernet header are dropped, as vde_plug
and vde_switch drop them.

The options are vde_plug's: ``-g`` the group of the data socket, ``-m`` its mode (octal, default
0700), ``--port`` the switch port to ask for, ``-D`` the description the switch shows (followed by
``user=`` and ``pid=``, as libvdeplug adds them). ``vmlan plug``
ends with status 0 at EOF on stdin or when stdout is closed, 1 when the switch cannot be joined or goes
away (one line on stderr), 2 on a bad option.

Internally it is a two-port hub: a :class:`StdioPort` and a :class:`~vmlan.io.vde.VdeClient`'s port.
stdin and stdout are made non-blocking (their flags are restored at exit) and drained with
``add_reader`` into one reused buffer; output is bounded (4 MiB), beyond which frames are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import struct
import sys
from collections.abc import Callable

from vmlan.config.errors import ConfigError
from vmlan.config.qemuopts import parse_qemuopts
from vmlan.config.vde import VdeNetdev, parse_vde_netdev
from vmlan.io.errors import LinkError
from vmlan.io.loop import new_event_loop
from vmlan.io.vde import VdeClient, description
from vmlan.lan import Hub, Port
from vmlan.wire import BytesLike
from vmlan.wire.vnet import Offload

log = logging.getLogger("vmlan")

STDIO_HEADER = struct.Struct(">H")
VDEPLUG_MAX_FRAME = 9216 + 14 + 4 + 2  # vdeplug4's MAXPACKET: the longest frame its stdio reader takes
RECV_BUFSIZE = 256 * 1024
OUT_LIMIT = 4 * 1024 * 1024
READS_PER_WAKEUP = 16

USAGE = """\
usage: vmlan plug [-g GROUP] [-m MODE] [--port N] [-D DESCR] [-v|-q] [SOCKDIR]

Joins the VDE switch at SOCKDIR (vde_switch -s SOCKDIR, or vmlan's -netdev vde,sock=SOCKDIR,server=on)
and carries its frames on stdin/stdout with vde_plug's framing (2-byte big-endian length per frame):
  dpipe vde_plug /tmp/sw = vmlan plug /tmp/vmlan-sw
  dpipe vmlan plug /tmp/sw = ssh host vmlan plug /tmp/sw2
  -g, --group GROUP   group of the data socket
  -m, --mod MODE      mode of the data socket, octal (default 0700)
  --port N            ask the switch for port N (default: any)
  -D, --descr DESCR   the description the switch shows for this port (user= and pid= are added)
  -v, --verbose       log connections on stderr; -q, --quiet: only errors
"""


class StdioPort(Port):
    """The stdio stream: frames with a 2-byte big-endian length, read from ``rfd``, written to ``wfd``."""

    __slots__ = ("_closed", "_end", "_flush_pending", "_loop", "_on_close", "_out", "_rbuf", "_rfd",
                 "_rview", "_saved_flags", "_start", "_wfd", "_writer_armed")

    def __init__(self, name: str, rfd: int, wfd: int, loop: asyncio.AbstractEventLoop,
                 on_close: Callable[[StdioPort, str, bool], None]) -> None:
        super().__init__(name)
        self._rfd = rfd
        self._wfd = wfd
        self._loop = loop
        self._on_close = on_close
        self._rbuf = bytearray(RECV_BUFSIZE)
        self._rview = memoryview(self._rbuf)
        self._start = 0
        self._end = 0
        self._out = bytearray()
        self._flush_pending = False
        self._writer_armed = False
        self._closed = False
        self._saved_flags: dict[int, int] = {}

    def describe(self) -> str:
        return "stdin/stdout"

    def open(self) -> None:
        """Make both fds non-blocking (restored at close); frames for stdout can be taken from now on."""
        for fd in {self._rfd, self._wfd}:
            if fd not in self._saved_flags:
                flags = fcntl.fcntl(fd, fcntl.F_GETFL)
                self._saved_flags[fd] = flags
                fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)

    def start(self) -> None:
        """Start reading stdin."""
        self.open()
        try:
            self._loop.add_reader(self._rfd, self._on_readable)
        except PermissionError:  # epoll refuses regular files
            self._restore_flags()
            raise OSError("stdin must be a pipe, a socket or a terminal") from None

    # -- stdin -> LAN ------------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        buf = self._rbuf
        view = self._rview
        unpack_from = STDIO_HEADER.unpack_from
        start, end = self._start, self._end
        for _ in range(READS_PER_WAKEUP):
            room = RECV_BUFSIZE - end
            try:
                n = os.readv(self._rfd, [view[end:]])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.close(f"read error on stdin: {exc.strerror or exc}", eof=False)
                return
            if n == 0:
                self.close("end of stdin", eof=True)
                return
            end += n
            while end - start >= 2:
                size = unpack_from(buf, start)[0]
                if end - start - 2 < size:
                    break
                start += 2
                if size:
                    lan = self.lan
                    if lan is not None:
                        lan.input(self, view[start : start + size])
                    start += size
                    if self._closed:
                        return
            if start == end:
                start = end = 0
            elif RECV_BUFSIZE - end < 0xFFFF + 2:
                pending = end - start
                buf[0:pending] = buf[start:end]
                start, end = 0, pending
            if n < room:
                break
        self._start, self._end = start, end

    # -- LAN -> stdout -----------------------------------------------------------------------------------
    def transmit(self, frame: BytesLike, src: Port, offload: Offload | None) -> bool:
        out = self._out
        if self._closed or len(frame) > VDEPLUG_MAX_FRAME or len(out) > OUT_LIMIT:
            return False
        out += STDIO_HEADER.pack(len(frame))
        out += frame
        if not self._flush_pending and not self._writer_armed:
            self._flush_pending = True
            self._loop.call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_pending = False
        if self._closed or self._writer_armed or not self._out:
            return
        self._write_some()
        if self._out and not self._closed:
            self._writer_armed = True
            self._loop.add_writer(self._wfd, self._on_writable)

    def _on_writable(self) -> None:
        self._write_some()
        if not self._out and not self._closed:
            self._writer_armed = False
            self._loop.remove_writer(self._wfd)

    def _write_some(self) -> None:
        out = self._out
        try:
            sent = os.write(self._wfd, out)
        except (BlockingIOError, InterruptedError):
            return
        except BrokenPipeError:
            self.close("stdout closed", eof=True)
            return
        except OSError as exc:
            self.close(f"write error on stdout: {exc.strerror or exc}", eof=False)
            return
        del out[:sent]

    # -- teardown --------------------------------------------------------------------------------------
    def _restore_flags(self) -> None:
        for fd, flags in self._saved_flags.items():
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        self._saved_flags.clear()

    def close(self, reason: str = "closed", eof: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._rfd)
        if self._writer_armed:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(self._wfd)
            self._writer_armed = False
        if self._out:
            # What is already framed goes out if stdout takes it now; a reader that stalls loses it.
            with contextlib.suppress(OSError):
                os.write(self._wfd, self._out)
            self._out.clear()
        self._restore_flags()
        if self.lan is not None:
            self.lan.detach(self)
        self._on_close(self, reason, eof)


def parse_plug_args(argv: list[str]) -> tuple[VdeNetdev, str, int]:
    """(the client config, the description, verbosity: -1 quiet, 0 default, 1 verbose)."""
    pairs: list[tuple[str, str]] = [("type", "vde"), ("id", "plug")]
    descr = ""
    verbosity = 0
    sockdir: str | None = None
    with_value = {"-g": "group", "--group": "group", "-m": "mode", "--mod": "mode", "--mode": "mode",
                  "--port": "port", "-D": "descr", "--descr": "descr"}
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if key in with_value:
            if eq:
                value = inline
                i += 1
            elif i + 1 < len(argv):
                value = argv[i + 1]
                i += 2
            else:
                raise ConfigError(f"option '{arg}' requires an argument")
            name = with_value[key]
            if name == "descr":
                descr = value
            elif name == "mode":
                try:
                    mode = int(value, 8)  # vde_plug: sscanf("%o")
                except ValueError:
                    raise ConfigError(f"option '{key}' expects an octal mode (got '{value}')") from None
                pairs.append(("mode", f"0{mode:o}"))
            else:
                pairs.append((name, value))
            continue
        if arg in ("-v", "--verbose"):
            verbosity = 1
        elif arg in ("-q", "--quiet"):
            verbosity = -1
        elif arg.startswith("-") and arg != "-":
            raise ConfigError(f"unrecognized option '{arg}'")
        elif sockdir is None:
            sockdir = arg
        else:
            raise ConfigError(f"one switch directory only (got '{sockdir}' and '{arg}')")
        i += 1
    if sockdir:
        pairs.append(("sock", sockdir))
    try:
        cfg = parse_vde_netdev(parse_qemuopts(",".join(f"{k}={v.replace(',', ',,')}" for k, v in pairs)))
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("Parameter 'mode'", "option '-m'")) from None
    return cfg, description(descr or "vmlan plug:"), verbosity


def _setup_logging(verbosity: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("vmlan plug: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO if verbosity > 0 else logging.ERROR if verbosity < 0 else logging.WARNING)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    """``vmlan plug``; returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    try:
        cfg, descr, verbosity = parse_plug_args(args)
    except ConfigError as exc:
        sys.stderr.write(f"vmlan plug: {exc}\n")
        return 2
    _setup_logging(verbosity)
    return run_plug(cfg, descr)


def run_plug(cfg: VdeNetdev, descr: str, rfd: int = 0, wfd: int = 1) -> int:
    loop = new_event_loop()
    hub = Hub(0)
    client = VdeClient(cfg, hub, loop, descr)
    status: list[int] = []
    done = loop.create_future()
    where = cfg.sock or "the default switch"

    def finish(code: int, message: str = "") -> None:
        if not done.done():
            if message:
                sys.stderr.write(f"vmlan plug: {message}\n")
            status.append(code)
            done.set_result(None)

    def stdio_closed(_port: StdioPort, reason: str, eof: bool) -> None:
        if not done.done():
            log.info("%s", reason)
        finish(0 if eof else 1, "" if eof else reason)

    stdio = StdioPort("stdio", rfd, wfd, loop, stdio_closed)
    client.on_gone = lambda why: finish(1, f"the switch at {where} went away ({why})")
    try:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, finish, 0)
        # stdout is on the hub before the switch answers: frames that arrive as soon as the port
        # exists are written out, not lost. stdin is read once the switch can take its frames.
        stdio.open()
        hub.attach(stdio)
        try:
            loop.run_until_complete(client.start())
        except LinkError as exc:
            why = str(exc).removeprefix(f"-netdev vde,id={cfg.id}: Could not open vde: ")
            sys.stderr.write(f"vmlan plug: cannot join {where}: {why}\n")
            return 1
        try:
            stdio.start()
        except OSError as exc:
            sys.stderr.write(f"vmlan plug: {exc}\n")
            return 1
        loop.run_until_complete(done)
        return status[0]
    finally:
        client.close()
        stdio.close("shutting down")
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


if __name__ == "__main__":
    raise SystemExit(main())
