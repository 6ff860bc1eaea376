"""Helpers for the interop tests that put real guests (and hostile peers) on vmlan's user stack.

``user_lan`` starts ``vmlan run`` with a user stack and listening stream netdevs for the guests;
``monitor`` takes one SIGUSR1 snapshot (info network + info usernet) and parses what the tests look at:
each guest's row (port, MACs with their addresses, TCP/UDP/ICMP counts), the stack's nonzero counters
and any internal-error line. ``proc_status`` reads a process's memory and descriptor counts from /proc.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

UDHCPC = "timeout 30 udhcpc -i eth0 -f -q -n -t 4 -T 2 -O mtu -O search -O hostname -O domain"
MB = 1024 * 1024
T = TypeVar("T")


def user_lan(vmlan_run: Callable[..., Any], tmp_path: Path, user_opts: str, guests: int = 1,
             extra: Sequence[str] = (), netns: str | None = None) -> tuple[Any, list[list[str]]]:
    """vmlan with ``-netdev user,id=u0,<user_opts>`` and one listening unix stream netdev per guest
    (``vm0``, ``vm1``...); returns the process and each guest's ``make_guest`` netdev arguments."""
    args = ["-netdev", f"user,id=u0,{user_opts}"]
    paths = []
    for i in range(guests):
        path = tmp_path / f"vm{i}.sock"
        paths.append(path)
        args += ["-netdev", f"stream,id=vm{i},server=on,addr.type=unix,addr.path={path}"]
    vm = vmlan_run(*args, *extra, netns=netns)
    return vm, [["stream", "server=off", "addr.type=unix", f"addr.path={p}"] for p in paths]


def wait_until(pred: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``pred`` until it returns something true; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout:g} s (last: {value!r})")
        time.sleep(interval)


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------- the monitor


@dataclass
class GuestRow:
    """One guest (port) of ``info usernet``: its MACs with their addresses ('-' for none), flow counts."""

    port: str
    macs: dict[str, str] = field(default_factory=dict)
    tcp: int = 0
    udp: int = 0
    icmp: int = 0


@dataclass
class Snapshot:
    text: str
    guests: dict[str, GuestRow]
    counters: dict[str, int]
    internal_errors: list[str]

    def guest(self, port: str) -> GuestRow:
        assert port in self.guests, f"no guest row for port {port}:\n{self.text}"
        return self.guests[port]

    def counter(self, name: str) -> int:
        return self.counters.get(name, 0)

    def port(self, name: str) -> PortLine:
        """The counters of a hub port from info network (``u0``, ``vm0.1``, ...)."""
        for line in self.text.splitlines():
            m = _PORT_RE.match(line)
            if m and m.group(1) == name:
                return PortLine(*(int(v) for v in m.groups()[1:]))
        raise AssertionError(f"no port {name} in info network:\n{self.text}")


@dataclass(frozen=True)
class PortLine:
    rx_frames: int
    rx_bytes: int
    rx_dropped: int
    tx_frames: int
    tx_bytes: int
    tx_dropped: int


_PORT_RE = re.compile(
    r"^    (\S+): .* rx (\d+) frames (\d+) bytes (\d+) dropped, tx (\d+) frames (\d+) bytes (\d+) dropped$"
)


def _is_hub0(line: str) -> bool:
    return line == "hub 0" or line.startswith("hub 0 (")


def monitor(vm: Any, timeout: float = 30) -> Snapshot:
    """SIGUSR1 twice: the first dump is complete once the second one's first line arrives."""
    first = sum(_is_hub0(line) for line in vm.lines)
    vm.proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: sum(_is_hub0(line) for line in vm.lines) > first or vm.proc.poll() is not None,
               timeout, "the SIGUSR1 dump")
    vm.proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: sum(_is_hub0(line) for line in vm.lines) > first + 1 or vm.proc.poll() is not None,
               timeout, "the second SIGUSR1 dump")
    assert vm.proc.poll() is None, "vmlan exited:\n" + "\n".join(vm.lines[-50:])
    lines = list(vm.lines)
    starts = [i for i, line in enumerate(lines) if _is_hub0(line)]
    block = lines[starts[first] : starts[first + 1]]
    return parse_snapshot(block)


def parse_snapshot(block: list[str]) -> Snapshot:
    guests: dict[str, GuestRow] = {}
    counters: dict[str, int] = {}
    errors: list[str] = []
    in_guests = False
    current: GuestRow | None = None
    for line in block:
        stripped = line.strip()
        if "internal errors:" in line:
            errors.append(stripped)
        if stripped.startswith("Guest (port)"):
            in_guests = True
            continue
        if stripped.startswith("counters:"):
            in_guests = False
            for item in stripped.removeprefix("counters:").split(","):
                key, _, value = item.strip().partition("=")
                counters[key] = int(value)
            continue
        if not in_guests:
            continue
        fields = stripped.split()
        if len(fields) == 6 and fields[3].isdigit():
            current = guests[fields[0]] = GuestRow(fields[0], {fields[1]: fields[2]}, int(fields[3]),
                                                   int(fields[4]), int(fields[5]))
        elif len(fields) == 2 and current is not None and line.startswith("   "):
            current.macs[fields[0]] = fields[1]
        elif len(fields) == 1 and current is not None and ":" in fields[0]:
            continue  # one of the MAC's IPv6 addresses
        else:
            in_guests = False
    return Snapshot("\n".join(block), guests, counters, errors)


# ------------------------------------------------------------------------------------------- /proc


@dataclass(frozen=True)
class ProcStatus:
    rss_kb: int
    hwm_kb: int  # peak RSS so far
    fds: int

    def __str__(self) -> str:
        return f"RSS {self.rss_kb / 1024:.1f} MiB (peak {self.hwm_kb / 1024:.1f} MiB), {self.fds} fds"


def proc_status(pid: int) -> ProcStatus:
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return ProcStatus(values["VmRSS"], values["VmHWM"], len(os.listdir(f"/proc/{pid}/fd")))


# ------------------------------------------------------------------------------------------- pcap


def read_pcap(path: Path) -> list[Any]:
    """The frames of a filter-dump file so far (a frame being written at the end is left out)."""
    from scapy.layers.l2 import Ether
    from scapy.utils import RawPcapReader

    frames = []
    try:
        with RawPcapReader(str(path)) as reader:
            for data, _meta in reader:
                frames.append(Ether(data))
    except (EOFError, OSError, ValueError):
        pass  # header not there yet, or a truncated last record
    except Exception as exc:  # scapy raises Scapy_Exception for a short header
        if "No data could be read" not in str(exc):
            raise
    return frames
