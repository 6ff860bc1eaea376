"""The systems under test, each wired so that one generator and one sink can be attached.

A setup starts its switch (if any) and returns the file descriptors the generator and the sink inherit:

- ``VdeSetup``: ``vde_switch [-x] -s DIR`` with two ``vde_plug DIR`` processes; the generator writes to
  the first one's stdin, the sink reads the second one's stdout (2-byte framing, pipes of 1 MiB).
- ``VmlanStreamSetup``: ``vmlan run`` with two unix stream servers; generator and sink are the clients.
- ``VmlanDgramSetup``: ``vmlan run`` with two unix datagram links; generator and sink bind the remote
  paths and connect() to vmlan's local ones.
- ``DirectSetup``: no switch at all (socketpair or pipe): the generator's and sink's own ceiling.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.procs import BenchError, Procs, wait_for_path

PIPE_SIZE = 1024 * 1024
VDE_MAX_FRAME = 14 + 1504  # vde_switch's receive buffer (vde-2 datasock.c)


@dataclass
class Wiring:
    gen_fd: int
    gen_kind: str
    sink_fd: int
    sink_kind: str
    sink_wfd: int | None
    parent_fds: list[int] = field(default_factory=list)  # closed once the helpers have inherited them


def _pipe(size: int = PIPE_SIZE) -> tuple[int, int]:
    r, w = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)
    return r, w


class Setup:
    name = "?"
    max_frame = 1 << 20

    def __init__(self, procs: Procs, tmp: Path) -> None:
        self.procs = procs
        self.tmp = tmp
        self.switch_procs: list[subprocess.Popen[bytes]] = []
        self.log = tmp / f"{self.name.replace(' ', '-')}.log"

    def start(self) -> Wiring:
        raise NotImplementedError

    def stop(self) -> None:
        for p in reversed(self.switch_procs):
            self.procs.stop(p)
        self.switch_procs.clear()

    def counters(self) -> str:
        """The switch's own per-port counters, if it can tell (cumulative)."""
        return ""

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class DirectSetup(Setup):
    def __init__(self, procs: Procs, tmp: Path, kind: str) -> None:
        self.kind = kind
        names = {"stream4": "direct unix stream", "stream2": "direct pipe", "dgram": "direct unix dgram"}
        self.name = names[kind]
        if kind == "stream2":
            self.max_frame = 0xFFFF  # the 2-byte length
        super().__init__(procs, tmp)

    def start(self) -> Wiring:
        if self.kind == "stream2":
            r, w = _pipe()
            return Wiring(w, "stream2", r, "stream2", None, [r, w])
        typ = socket.SOCK_DGRAM if self.kind == "dgram" else socket.SOCK_STREAM
        a, b = socket.socketpair(socket.AF_UNIX, typ)
        fa, fb = a.detach(), b.detach()
        return Wiring(fa, self.kind, fb, self.kind, fb, [fa, fb])


class VdeSetup(Setup):
    max_frame = VDE_MAX_FRAME

    def __init__(self, procs: Procs, tmp: Path, mode: str) -> None:
        self.mode = mode
        self.name = f"vde_switch {mode}"
        super().__init__(procs, tmp)

    def start(self) -> Wiring:
        sockdir = self.tmp / "vde"
        argv = ["vde_switch", "-s", str(sockdir)]
        if self.mode == "hub":
            argv.insert(1, "-x")
        with open(self.log, "ab") as log:
            # vde_switch runs a console on stdin and quits on EOF: give it a pipe that stays open.
            sw = self.procs.spawn(argv, stdin=subprocess.PIPE, stdout=log, stderr=log)
            self.switch_procs.append(sw)
            wait_for_path(sockdir / "ctl", 10, sw, "vde_switch")
            gen_r, gen_w = _pipe()
            out_r, out_w = _pipe()
            back_r, back_w = _pipe(65536)
            try:
                plug = ["vde_plug", str(sockdir)]
                a = self.procs.spawn(plug, stdin=gen_r, stdout=subprocess.DEVNULL, stderr=log)
                self.switch_procs.append(a)
                b = self.procs.spawn(plug, stdin=back_r, stdout=out_w, stderr=log)
                self.switch_procs.append(b)
            finally:
                for fd in (gen_r, out_w, back_r):
                    os.close(fd)
        return Wiring(gen_w, "stream2", out_r, "stream2", back_w, [gen_w, out_r, back_w])


class _VmlanSetup(Setup):
    def __init__(self, procs: Procs, tmp: Path, mode: str, profile: Path | None = None) -> None:
        self.mode = mode
        self.profile = profile
        super().__init__(procs, tmp)
        self.dir = tmp / self.name.replace(" ", "-")
        self.dir.mkdir()

    def _spawn(self, netdevs: list[str]) -> subprocess.Popen[bytes]:
        argv = [sys.executable]
        if self.profile is not None:
            argv += ["-m", "cProfile", "-o", str(self.profile)]
        argv += ["-m", "vmlan", "run", "-q"]
        if self.mode == "switch":
            argv += ["-hub", "id=0,mode=switch"]
        for nd in netdevs:
            argv += ["-netdev", nd]
        with open(self.log, "ab") as log:
            p = self.procs.spawn(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.switch_procs.append(p)
        return p

    @property
    def pid(self) -> int:
        return self.switch_procs[0].pid

    def counters(self) -> str:
        """SIGUSR1 makes vmlan print its ports' counters (``info network``) to stderr: our log file."""
        try:
            before = self.log.stat().st_size
            os.kill(self.pid, signal.SIGUSR1)
        except (OSError, IndexError):
            return ""
        deadline = time.monotonic() + 2
        size = before
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.log.stat().st_size
            if now > before and now == size:
                break
            size = now
        with open(self.log, "rb") as f:
            f.seek(before)
            return f.read().decode(errors="replace").rstrip()

    def stop_for_profile(self) -> None:
        """SIGINT: vmlan shuts down cleanly, so cProfile writes its file."""
        for p in list(self.switch_procs):
            self.procs.stop(p, signal.SIGINT, timeout=20)
        self.switch_procs.clear()


class VmlanStreamSetup(_VmlanSetup):
    def __init__(self, procs: Procs, tmp: Path, mode: str, profile: Path | None = None) -> None:
        self.name = f"vmlan stream {mode}"
        super().__init__(procs, tmp, mode, profile)

    def start(self) -> Wiring:
        paths = {role: self.dir / f"{role}.sock" for role in ("gen", "sink")}
        p = self._spawn(
            [f"stream,id={role},server=on,addr.type=unix,addr.path={path}" for role, path in paths.items()]
        )
        fds = {}
        for role, path in paths.items():
            wait_for_path(path, 20, p, "vmlan")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(path))
            except OSError as exc:
                s.close()
                raise BenchError(f"cannot connect to vmlan at {path}: {exc.strerror}") from None
            fds[role] = s.detach()
        return Wiring(fds["gen"], "stream4", fds["sink"], "stream4", fds["sink"], list(fds.values()))


class VmlanDgramSetup(_VmlanSetup):
    """Generator and sink are unix datagram peers as VDE's are with vde_switch: one socket each, bound
    to the path vmlan sends to and connect()ed to vmlan's local path (vmlan connects back), so neither
    direction is held to net.unix.max_dgram_qlen. A QEMU ``-netdev dgram`` peer binds but does not
    connect; vmlan then waits on its queue of 10, which only this setup's sink direction would show."""

    def __init__(self, procs: Procs, tmp: Path, mode: str, profile: Path | None = None) -> None:
        self.name = f"vmlan dgram {mode}"
        super().__init__(procs, tmp, mode, profile)
        self._held: list[socket.socket] = []

    def start(self) -> Wiring:
        socks: dict[str, socket.socket] = {}
        local = {role: self.dir / f"vmlan-{role}.dgram" for role in ("gen", "sink")}
        try:
            netdevs = []
            for role in ("gen", "sink"):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                socks[role] = s
                own = self.dir / f"{role}.dgram"
                s.bind(str(own))
                netdevs.append(
                    f"dgram,id={role},local.type=unix,local.path={local[role]},remote.type=unix,remote.path={own}"
                )
            p = self._spawn(netdevs)
            for role, s in socks.items():
                wait_for_path(local[role], 20, p, "vmlan")
                s.connect(str(local[role]))
        except BaseException:
            for s in socks.values():
                s.close()
            raise
        # The generator never reads: vmlan floods the sink's hello frame to it, and a dup of its socket
        # stays open until the setup stops.
        self._held.append(socks["gen"].dup())
        gen = socks["gen"].detach()
        sink = socks["sink"].detach()
        hello = os.dup(sink)
        return Wiring(gen, "dgram", sink, "dgram", hello, [gen, sink, hello])

    def stop(self) -> None:
        super().stop()
        for s in self._held:
            s.close()
        self._held.clear()
