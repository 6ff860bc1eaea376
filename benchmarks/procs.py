"""Child processes of a benchmark run: started in their own session, always stopped again.

Every child is started with ``start_new_session`` (a Ctrl-C in the terminal reaches only the
orchestrator, which then stops its children in order) and with PR_SET_PDEATHSIG=SIGTERM, so that even
a killed orchestrator leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    pass


def _die_with_parent() -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Procs:
    """Registry of the children of this run; ``stop_all`` ends them (newest first)."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def spawn(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        kw.setdefault("env", env)
        try:
            p = subprocess.Popen(list(argv), start_new_session=True, preexec_fn=_die_with_parent, **kw)
        except FileNotFoundError as exc:
            raise BenchError(f"cannot run {argv[0]}: {exc.strerror}") from None
        self.children.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 5.0) -> int | None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in (p.stdin, p.stdout, p.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        if p in self.children:
            self.children.remove(p)
        return p.returncode

    def stop_all(self) -> None:
        for p in reversed(list(self.children)):
            self.stop(p)


class Child:
    """A helper process driven with one JSON object per line on stdin/stdout."""

    def __init__(self, procs: Procs, name: str, argv: Sequence[str], pass_fds: Sequence[int] = ()) -> None:
        self.name = name
        self.procs = procs
        self.proc = procs.spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=tuple(pass_fds))
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in: IO[bytes] = self.proc.stdin
        self._out: IO[bytes] = self.proc.stdout

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        try:
            self._in.write(json.dumps(request).encode() + b"\n")
            self._in.flush()
        except BrokenPipeError:
            raise BenchError(f"{self.name} exited (status {self.proc.poll()})") from None
        ready, _, _ = select.select([self._out], [], [], timeout)
        if not ready:
            raise BenchError(f"{self.name} did not answer {request.get('cmd')} within {timeout:.0f} s")
        line = self._out.readline()
        if not line:
            raise BenchError(f"{self.name} exited (status {self.proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise BenchError(f"{self.name}: {answer['error']}")
        return answer

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._in.close()  # EOF on stdin: the helper exits by itself
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(2)
        self.procs.stop(self.proc)


def traffic_child(procs: Procs, role: str, kind: str, fd: int, wfd: int | None = None) -> Child:
    argv = [sys.executable, "-m", "benchmarks.traffic", role, "--fd", str(fd), "--kind", kind]
    fds = [fd]
    if wfd is not None:
        argv += ["--wfd", str(wfd)]
        if wfd != fd:
            fds.append(wfd)
    return Child(procs, f"traffic {role}", argv, fds)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def busy_cpu_seconds() -> float:
    """CPU time spent by the whole machine so far (all cores, everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def wait_for_path(path: Path, timeout: float, proc: subprocess.Popen[bytes] | None, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} before creating {path}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not create {path} within {timeout:.0f} s")
        time.sleep(0.02)
