"""Fixtures for the daemon's tests: a real ``vmlan daemon`` process on private directories, and
``vmlan`` CLI runs pointed at it. Nothing touches /var/lib/vmlan or /run/vmlan."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


class DaemonProcess:
    def __init__(self, base: Path, *extra: str) -> None:
        self.base = base
        self.state = base / "state"
        self.run_dir = base / "run"
        self.socket = self.run_dir / "vmlan.sock"
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self.log = base / "daemon.log"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "VMLAN_SOCKET": str(self.socket)}

    def start(self, timeout: float = 30.0) -> DaemonProcess:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vmlan", "daemon", "--state-dir", str(self.state), "--runtime-dir",
                 str(self.run_dir), "--auto-mode", "rootless", *self.extra],
                stdout=log, stderr=log, text=True, start_new_session=True)
        deadline = time.monotonic() + timeout
        while "ready on" not in self.log.read_text()[offset:]:
            if self.proc.poll() is not None:
                raise AssertionError(f"vmlan daemon exited {self.proc.returncode}:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"vmlan daemon not ready after {timeout} s:\n{self.log.read_text()}")
            time.sleep(0.05)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("vmlan daemon did not stop on SIGTERM") from None

    def vmlan(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "vmlan", *args], env=self.env, capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"vmlan {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result


@pytest.fixture
def daemon_proc(tmp_path: Path) -> Iterator[DaemonProcess]:
    started: list[DaemonProcess] = []

    def make() -> DaemonProcess:
        d = DaemonProcess(tmp_path)
        started.append(d)
        return d

    d = make()
    d.start()
    yield d
    for p in started:
        if p.proc is not None and p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()
