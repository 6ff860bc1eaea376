"""Drive a QEMU/TCG Linux guest (see tools/build_guest.py) over its serial console.

    with Guest("g1", ["socket", "listen=127.0.0.1:4000"], "52:54:00:12:34:01", tmp_path, image) as g:
        g.wait_ready()
        g.check("ip addr add 10.0.0.1/24 dev eth0")
        status, output = g.run("ping -c 1 -W 2 10.0.0.2")

The guest's NIC is ``-device virtio-net-pci,netdev=n0`` on ``-netdev <netdev_args>,id=n0``.
``netdev_args`` is the netdev type followed by its options, as a list (``["stream", "server=off",
"addr.type=unix", "addr.path=/tmp/x.sock"]``) or as one comma-joined string (``"socket,listen=:4000"``);
the harness adds ``id=n0`` itself.

Each command runs in a subshell of the guest's interactive shell with stdin from /dev/null and stderr
merged into stdout; it is sent base64-encoded (so quoting and syntax errors cannot desynchronise the
console) between unique begin/end marker lines. State does not carry over between commands (``cd``,
variables), but files and background processes do. The whole console transcript is written to
``workdir/<name>.console.log`` (commands are noted there as ``### run N: ...`` lines) and QEMU's own
stderr to ``workdir/<name>.qemu.log``.

IPv6 state is read from /proc, because busybox's ``ip`` misreports some of it (every RA route "expires
0sec"): ``g.ipv6_addresses()`` (/proc/net/if_inet6), ``g.ipv6_routes()`` (/proc/net/ipv6_route),
``g.snmp6()`` (/proc/net/snmp6 counters such as ``Icmp6InRouterAdvertisements``), and the waits
``g.wait_ipv6_address("fec0::/64")`` (an address of the prefix that finished duplicate address detection)
and ``g.wait_ipv6_default_route()``. ``slaac_address(prefix, mac)`` is the EUI-64 address a Linux guest
forms from a router advertisement (RFC 4291 appendix A).
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import itertools
import os
import re
import secrets
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, TypeVar

from . import GuestImage

QEMU = "qemu-system-x86_64"
READY_MARKER = "VMLAN-GUEST-READY"
NETDEV_ID = "n0"
KERNEL_APPEND = "console=ttyS0 quiet panic=-1"
# The tty's canonical line buffer holds 4095 characters: longer commands go over in chunks.
_MAX_LINE = 3000
_TAIL_LINES = 40
_KEEP_CHARS = 256 * 1024  # console text kept in memory once consumed (for failure tails)
_PANIC_RE = re.compile(r"Kernel panic - not syncing[^\r\n]*")


class GuestError(AssertionError):
    """A guest did not boot, died, timed out or a checked command failed (message has the details)."""


class GuestTimeout(GuestError):
    pass


_T = TypeVar("_T")

# /proc/net/if_inet6's flags column is the low byte of the address's IFA_F_* flags (linux/if_addr.h).
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40
IFA_F_PERMANENT = 0x80
# The scope column (net/ipv6/addrconf_core.c, IPV6_ADDR_*): what `ip` prints as global/host/link/site.
SCOPE_GLOBAL, SCOPE_HOST, SCOPE_LINK, SCOPE_SITE = 0x00, 0x10, 0x20, 0x40
# /proc/net/ipv6_route flags (linux/ipv6_route.h, linux/route.h).
RTF_UP, RTF_GATEWAY, RTF_DEFAULT, RTF_ADDRCONF, RTF_REJECT = 0x1, 0x2, 0x10000, 0x40000, 0x200


@dataclass(frozen=True)
class Inet6Address:
    """One line of /proc/net/if_inet6."""

    address: str  # compressed text form
    prefixlen: int
    scope: int  # SCOPE_*
    flags: int  # IFA_F_* (low byte)
    device: str

    @property
    def tentative(self) -> bool:
        return bool(self.flags & IFA_F_TENTATIVE)

    @property
    def usable(self) -> bool:
        """Duplicate address detection is over and succeeded, and the address is still preferred."""
        return not self.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED | IFA_F_DEPRECATED)


@dataclass(frozen=True)
class Ipv6Route:
    """One line of /proc/net/ipv6_route (the main and local tables together)."""

    destination: IPv6Network
    next_hop: str  # "::" for an on-link route
    metric: int
    flags: int  # RTF_*
    device: str

    @property
    def is_default(self) -> bool:
        """A usable default route (not the reject route for ::/0 on lo that every kernel has)."""
        return self.destination.prefixlen == 0 and self.flags & RTF_UP != 0 and not self.flags & RTF_REJECT


def _hex_ipv6(text: str) -> str:
    return str(IPv6Address(bytes.fromhex(text)))


def parse_if_inet6(text: str) -> list[Inet6Address]:
    """/proc/net/if_inet6: ``address(32 hex) ifindex prefixlen scope flags device``, numbers in hex."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 6 or len(fields[0]) != 32:
            continue
        out.append(Inet6Address(_hex_ipv6(fields[0]), int(fields[2], 16), int(fields[3], 16), int(fields[4], 16),
                                fields[5]))
    return out


def parse_ipv6_route(text: str) -> list[Ipv6Route]:
    """/proc/net/ipv6_route: ``dest plen src plen next_hop metric refcnt use flags device``, in hex."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 10 or len(fields[0]) != 32:
            continue
        dest = IPv6Network((IPv6Address(bytes.fromhex(fields[0])), int(fields[1], 16)))
        out.append(Ipv6Route(dest, _hex_ipv6(fields[4]), int(fields[5], 16), int(fields[8], 16), fields[9]))
    return out


def parse_snmp6(text: str) -> dict[str, int]:
    """/proc/net/snmp6: one ``Name value`` pair per line."""
    out = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].isdigit():
            out[fields[0]] = int(fields[1])
    return out


def slaac_address(prefix: str, mac: str) -> str:
    """The address SLAAC forms from a /64 ``prefix`` and a MAC with Linux's default addr_gen_mode
    (modified EUI-64, RFC 4291 appendix A: the universal/local bit flipped, ff:fe in the middle)."""
    net = IPv6Network(prefix)
    if net.prefixlen != 64:
        raise ValueError(f"SLAAC needs a /64 prefix, not {prefix}")
    octets = bytes.fromhex(_check_mac(mac).replace(":", ""))
    iid = bytes([octets[0] ^ 0x02]) + octets[1:3] + b"\xff\xfe" + octets[3:]
    return str(IPv6Address(net.network_address.packed[:8] + iid))


MakeGuest = Callable[..., "Guest"]
"""The ``make_guest`` fixture: ``(name, netdev_args, mac=None, **Guest_kwargs) -> Guest`` (started)."""


def netdev_option(netdev_args: Sequence[str] | str) -> str:
    """``["socket", "listen=:1"]`` or ``"socket,listen=:1"`` -> ``"socket,id=n0,listen=:1"``."""
    parts = netdev_args.split(",") if isinstance(netdev_args, str) else [str(a) for a in netdev_args]
    if not parts or not parts[0] or "=" in parts[0]:
        raise ValueError(
            f"netdev_args must start with the netdev type (socket, stream, ...): {netdev_args!r}"
        )
    if any(p.startswith("id=") for p in parts[1:]):
        raise ValueError(f"netdev_args must not set id= (the harness uses id={NETDEV_ID}): {netdev_args!r}")
    return ",".join([parts[0], f"id={NETDEV_ID}", *parts[1:]])


def _check_mac(mac: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", mac):
        raise ValueError(f"bad MAC address {mac!r}")
    if int(mac[:2], 16) & 1:
        raise ValueError(f"MAC {mac} is a multicast address (low bit of the first octet set)")
    return mac.lower()


class Guest:
    """One QEMU guest; a context manager (enter starts QEMU, exit powers it off)."""

    def __init__(
        self,
        name: str,
        netdev_args: Sequence[str] | str,
        mac: str,
        workdir: Path,
        image: GuestImage,
        extra_qemu_args: Sequence[str] = (),
        netns: str | None = None,
        *,
        kernel_args: Sequence[str] = (),
        memory_mb: int = 256,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"guest name {name!r} must be usable as a file name")
        self.name = name
        self.mac = _check_mac(mac)
        self.workdir = Path(workdir)
        self.image = image
        self.netns = netns
        self.console_log = self.workdir / f"{name}.console.log"
        self.qemu_log = self.workdir / f"{name}.qemu.log"
        append = " ".join([KERNEL_APPEND, *kernel_args])
        qemu = [
            QEMU, "-name", name,
            "-accel", "tcg", "-cpu", "max", "-m", str(memory_mb),
            "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
            "-serial", "stdio", "-no-reboot",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", append,
            "-netdev", netdev_option(netdev_args),
            "-device", f"virtio-net-pci,netdev={NETDEV_ID},mac={self.mac},romfile=",
            *extra_qemu_args,
        ]  # fmt: skip
        self.argv = ["ip", "netns", "exec", netns, *qemu] if netns else qemu
        if shutil.which("setpriv"):
            # QEMU gets SIGTERM when the thread that started it ends, so a killed test run leaves no
            # guests behind (start guests from the thread that lives as long as they do).
            self.argv = ["setpriv", "--pdeathsig", "TERM", "--", *self.argv]
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._cond = threading.Condition()
        self._text = ""  # console text not yet discarded
        self._base = 0  # absolute offset of self._text[0] in the transcript
        self._scan = 0  # absolute offset where the next search for a marker starts
        self._eof = False
        self._ready = False
        self._closed = False
        self._log: BinaryIO | None = None
        self._token = secrets.token_hex(3)
        self._counter = itertools.count(1)
        self._started = 0.0
        self.boot_seconds: float | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Guest:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError(f"guest {self.name} already started")
        for tool in (QEMU, "ip") if self.netns else (QEMU,):
            if shutil.which(tool) is None:
                raise GuestError(
                    f"guest {self.name}: {tool} not found: the interop tests need it "
                    "(apt-get install qemu-system-x86 iproute2)"
                )
        self.workdir.mkdir(parents=True, exist_ok=True)
        for path in (self.image.kernel, self.image.initrd):
            if not Path(path).is_file():
                raise GuestError(f"guest {self.name}: image file {path} is missing (rebuild the guest image)")
        log = open(self.console_log, "wb")  # noqa: SIM115 - closed by the reader thread
        self._log = log
        with open(self.qemu_log, "wb") as qemu_log:
            qemu_log.write(("$ " + shlex.join(self.argv) + "\n").encode())
            qemu_log.flush()
            self._started = time.monotonic()
            try:
                self._proc = subprocess.Popen(
                    self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=qemu_log
                )
            except OSError as exc:
                log.close()
                raise GuestError(f"guest {self.name}: cannot start {self.argv[0]}: {exc}") from None
        self._reader = threading.Thread(target=self._read_loop, name=f"guest-{self.name}", daemon=True)
        self._reader.start()

    def close(self, timeout: float = 15.0) -> None:
        """Power the guest off (``poweroff -f``); kill QEMU if it has not exited after ``timeout``."""
        if self._closed or self._proc is None:
            self._closed = True
            return
        self._closed = True
        proc = self._proc
        if proc.poll() is None:
            if self._ready:
                self._note("close: poweroff -f")
                self._send("\x03\npoweroff -f\n")
            else:
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._note(f"close: QEMU still running after {timeout:.0f} s, killing it")
                proc.kill()
                proc.wait(10)
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if self._reader is not None:
            self._reader.join(10)

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    # ------------------------------------------------------------------ console

    def _read_loop(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        log = self._log
        assert log is not None
        try:
            while True:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    data = b""
                if data:
                    log.write(data)
                    log.flush()
                text = decoder.decode(data, final=not data)
                with self._cond:
                    self._text += text
                    if not data:
                        self._eof = True
                    self._cond.notify_all()
                if not data:
                    break
        finally:
            log.close()

    def _note(self, what: str) -> None:
        """Annotate the console log (not the parsed transcript) with what the harness did."""
        log = self._log
        if log is not None and not log.closed:
            try:
                log.write(f"\n### {what}\n".encode())
                log.flush()
            except ValueError:  # closed by the reader meanwhile
                pass

    def _send(self, text: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(text.encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # QEMU is gone: the wait that follows reports it

    def _wait_for(self, pattern: re.Pattern[str], timeout: float, what: str) -> re.Match[str]:
        """Wait until ``pattern`` matches the console text after the scan position; consume it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = pattern.search(self._text, self._scan - self._base)
                if m is not None:
                    self._scan = self._base + m.end()
                    self._trim()
                    return m
                panic = _PANIC_RE.search(self._text, max(0, self._scan - self._base - 200))
                if panic is not None:
                    raise GuestError(
                        self._describe(f"kernel panic while waiting for {what}: {panic.group()}")
                    )
                if self._eof:
                    raise GuestError(self._describe(f"QEMU exited while waiting for {what}"))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GuestTimeout(self._describe(f"timed out after {timeout:g} s waiting for {what}"))
                self._cond.wait(remaining)

    def _trim(self) -> None:
        consumed = self._scan - self._base
        if consumed > 2 * _KEEP_CHARS:
            cut = consumed - _KEEP_CHARS
            self._text = self._text[cut:]
            self._base += cut

    def console_tail(self, lines: int = _TAIL_LINES) -> str:
        with self._cond:
            text = self._text[-64 * 1024 :]
        return "\n".join(text.replace("\r\n", "\n").split("\n")[-lines:])

    def _describe(self, problem: str) -> str:
        if self._eof and self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)  # its console closed: it is exiting
        rc = self.returncode
        parts = [f"guest {self.name}: {problem}"]
        if rc is not None:
            parts.append(f"QEMU exit status: {rc}")
        try:
            qemu_err = self.qemu_log.read_text(errors="replace").strip().splitlines()[1:][-15:]
        except OSError:
            qemu_err = []
        if qemu_err:
            parts.append("--- QEMU stderr (" + str(self.qemu_log) + ") ---\n" + "\n".join(qemu_err))
        parts.append(f"--- last console lines ({self.console_log}) ---\n{self.console_tail()}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ API

    def wait_ready(self, timeout: float = 90) -> None:
        """Wait for /init's ready marker (the shell on ttyS0 is then accepting commands)."""
        __tracebackhide__ = True
        if self._ready:
            return
        if self._proc is None:
            raise RuntimeError(f"guest {self.name} not started (use it as a context manager)")
        self._wait_for(re.compile(rf"(?m)^{READY_MARKER}\r?$"), timeout, "the boot to finish")
        self._ready = True
        self.boot_seconds = time.monotonic() - self._started

    def run(self, cmd: str, timeout: float = 60) -> tuple[int, str]:
        """Run a shell command in the guest; return (exit status, stdout+stderr with \\n line ends).

        On timeout the command is interrupted (^C) and GuestTimeout (an AssertionError) is raised.
        """
        if not self._ready:
            self.wait_ready()
        if self._closed:
            raise RuntimeError(f"guest {self.name} is closed")
        n = next(self._counter)
        tag = f"{self._token}-{n}"
        # The markers as printed ("VMLAN-B-tag") never appear literally in the command line sent.
        begin, end = f"VMLAN-B-{tag}", f"VMLAN-E-{tag}"
        encoded = base64.b64encode(cmd.encode()).decode()
        lines = []
        if len(encoded) <= _MAX_LINE:
            source = f"echo {encoded} | base64 -d"
        else:
            path = f"/tmp/.vmlan-cmd-{tag}"
            for i in range(0, len(encoded), _MAX_LINE):
                lines.append(f"printf %s {encoded[i : i + _MAX_LINE]} >>{path}\n")
            source = f"base64 -d {path}; rm -f {path}"
        lines.append(
            f"printf '%s-%s\\n' VMLAN-B {tag}; "
            f'(eval "$({source})") </dev/null 2>&1; '
            f"printf '%s-%s %s\\n' VMLAN-E {tag} $?\n"
        )
        self._note(f"run {n}: {cmd if len(cmd) <= 500 else cmd[:500] + f'... ({len(cmd)} chars)'}")
        self._send("".join(lines))
        pattern = re.compile(rf"{re.escape(begin)}\r?\n(.*?){re.escape(end)} (\d+)\r?\n", re.S)
        try:
            m = self._wait_for(pattern, timeout, f"command {cmd!r}")
        except GuestTimeout:
            self._note(f"run {n}: timed out, sending ^C")
            self._send("\x03")
            raise
        return int(m.group(2)), m.group(1).replace("\r\n", "\n")

    def check(self, cmd: str, timeout: float = 60) -> str:
        """Run a command; return its output, or raise GuestError if its exit status is not 0."""
        __tracebackhide__ = True
        status, output = self.run(cmd, timeout)
        if status != 0:
            raise GuestError(
                self._describe(f"command {cmd!r} failed with exit status {status}\n--- output ---\n{output}")
            )
        return output

    # ------------------------------------------------------------------ IPv6 state (from /proc)

    def wait_until(self, probe: Callable[[], _T], timeout: float, what: str, interval: float = 0.25) -> _T:
        """Call ``probe`` (which may run guest commands) until it returns something true; return that.
        GuestTimeout (with the console tail) after ``timeout`` seconds."""
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise GuestTimeout(self._describe(f"timed out after {timeout:g} s waiting for {what} "
                                                  f"(last: {value!r})"))
            time.sleep(interval)

    def ipv6_addresses(self, device: str | None = "eth0") -> list[Inet6Address]:
        """The guest's IPv6 addresses (of ``device``, or all with None)."""
        addrs = parse_if_inet6(self.check("cat /proc/net/if_inet6"))
        return [a for a in addrs if device is None or a.device == device]

    def ipv6_routes(self) -> list[Ipv6Route]:
        return parse_ipv6_route(self.check("cat /proc/net/ipv6_route"))

    def snmp6(self) -> dict[str, int]:
        """The guest kernel's IPv6/ICMPv6 counters (``Icmp6OutRouterSolicits``, ``Icmp6InEchoReplies``...)."""
        return parse_snmp6(self.check("cat /proc/net/snmp6"))

    def wait_ipv6_address(self, network: str = "fec0::/64", device: str = "eth0",
                          timeout: float = 90.0) -> Inet6Address:
        """Wait until ``device`` has an address in ``network`` that passed duplicate address detection
        (tentative -> preferred) and return it; a SLAAC address needs a router advertisement first."""
        __tracebackhide__ = True
        net = IPv6Network(network)

        def probe() -> Inet6Address | None:
            return next((a for a in self.ipv6_addresses(device) if IPv6Address(a.address) in net and a.usable), None)

        found = self.wait_until(probe, timeout, f"a preferred IPv6 address in {net} on {device}")
        assert found is not None
        return found

    def wait_ipv6_default_route(self, device: str = "eth0", timeout: float = 90.0) -> Ipv6Route:
        """Wait for a default route on ``device`` (from a router advertisement: via the router's
        link-local address) and return it."""
        __tracebackhide__ = True

        def probe() -> Ipv6Route | None:
            return next((r for r in self.ipv6_routes() if r.is_default and r.device == device), None)

        found = self.wait_until(probe, timeout, f"an IPv6 default route on {device}")
        assert found is not None
        return found


def wait_tcp_listening(port: int, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
    """Wait until something listens on an IPv4 TCP port of this network namespace (read from
    /proc/net/tcp, so that no probe connection takes a one-peer listener's only slot)."""
    want = f"{_hex_ipv4(host)}:{port:04X}"
    any_addr = f"00000000:{port:04X}"
    deadline = time.monotonic() + timeout
    while True:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[1] in (want, any_addr):
                    return
        if time.monotonic() > deadline:
            raise GuestError(f"nothing listens on {host}:{port} after {timeout:g} s")
        time.sleep(0.05)


def _hex_ipv4(host: str) -> str:
    octets = [int(o) for o in host.split(".")]
    return "".join(f"{o:02X}" for o in reversed(octets))
