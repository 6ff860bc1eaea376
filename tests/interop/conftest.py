"""``vmlan_run``: a real ``vmlan run`` process for interop tests, stopped (and checked) at teardown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


class VmlanProcess:
    def __init__(self, args: list[str], workdir: Path, netns: str | None = None) -> None:
        self.args = args
        self.log_path = workdir / f"vmlan-{os.getpid()}-{time.monotonic_ns()}.log"
        cmd = [sys.executable, "-m", "vmlan", "run", *args]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with open(self.log_path, "w") as log:
            for line in self.proc.stderr:
                log.write(line)
                log.flush()
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_log(self, text: str, count: int = 1, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(text in line for line in self.lines) < count:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"vmlan never logged {text!r} x{count}; log:\n" + "\n".join(self.lines))
                self._cond.wait(min(left, 0.2))

    def stop(self) -> str:
        """SIGTERM; vmlan must exit 0 without a traceback. Returns the whole log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("vmlan did not stop on SIGTERM") from None
        self._reader.join(5)
        text = "\n".join(self.lines)
        assert "Traceback" not in text, text
        assert self.proc.returncode == 0, f"vmlan exited {self.proc.returncode}:\n{text}"
        return text


@pytest.fixture
def vmlan_run(tmp_path: Path) -> Iterator:
    started: list[VmlanProcess] = []

    def start(*args: str, netns: str | None = None) -> VmlanProcess:
        proc = VmlanProcess(list(args), tmp_path, netns)
        started.append(proc)
        proc.wait_log("vmlan: ready: ")
        return proc

    yield start
    for proc in started:
        if proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGTERM)
            try:
                proc.proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.proc.kill()
