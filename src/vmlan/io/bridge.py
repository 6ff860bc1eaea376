"""Bridge links: QEMU's ``-netdev bridge`` (net/tap.c net_init_bridge, qemu-bridge-helper.c).

Without ``helper=`` vmlan does what qemu-bridge-helper does, itself (it needs root or CAP_NET_ADMIN):

1. check the bridge against the ACL file, /etc/vmlan/bridge.conf (below);
2. create a TAP ``tap%d`` (with vnet headers if the kernel offers them, as ``--use-vnet``);
3. give it the bridge's MTU, and a MAC whose first byte is 0xFE (the kernel's random address otherwise):
   Linux gives a bridge the lowest MAC of its ports, and a high one keeps the bridge's address stable;
4. enslave it to the bridge and bring it up.

All of it over rtnetlink with pyroute2, no ``ip`` commands. The TAP is not persistent: it disappears
when vmlan closes its descriptor (at close, or when vmlan dies). With ``helper=PATH`` vmlan runs that
program as QEMU runs qemu-bridge-helper (``PATH --use-vnet --fd=N --br=BR``; with ``sh -c`` when PATH
contains spaces or tabs, adding ``--br=`` only if PATH does not already) and takes the descriptor it
sends back over the socket pair (SCM_RIGHTS); the helper enforces its own ACL.

The ACL file has qemu-bridge-helper's syntax. One rule per line; leading white space is skipped;
empty lines and lines starting with '#' are comments; the command and its argument are separated by
white space and the argument's surrounding white space is dropped::

    allow br0        # only at the start of a line is '#' a comment: this rule names "br0        # ..."
    allow all
    deny br1
    deny all
    include /etc/vmlan/more.conf

A bridge is allowed if some ``allow`` rule matches it (its name or ``all``) and no ``deny`` rule does,
in any file and in any order: a matching deny always wins, and nothing is allowed by default. As in
QEMU, an ``include`` whose file does not exist is skipped. Unlike QEMU, a relative include is read
from the including file's directory (not from the working directory), an invalid line anywhere is
an error (QEMU ignores the rest of an included file), and includes nest at most 8 deep (QEMU recurses
without end on a loop).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass

from vmlan.config.tap import BridgeNetdev
from vmlan.io.errors import LinkError
from vmlan.io.tap import (
    SCRIPT_TIMEOUT,
    TapDevice,
    TapPort,
    offload_names,
    open_tap,
    probe_tap,
    set_offloads,
)
from vmlan.lan import Hub

log = logging.getLogger("vmlan")

__all__ = [
    "DEFAULT_ACL",
    "AclError",
    "AclRule",
    "BridgeLink",
    "acl_allows",
    "attach_to_bridge",
    "read_acl",
    "run_bridge_helper",
]

DEFAULT_ACL = "/etc/vmlan/bridge.conf"
MAX_INCLUDE_DEPTH = 8
MAX_ACL_BYTES = 1024 * 1024


class AclError(Exception):
    """The ACL file cannot be read or holds a line qemu-bridge-helper would refuse (one line)."""


@dataclass(frozen=True, slots=True)
class AclRule:
    allow: bool
    bridge: str  # "" = all
    source: str  # "file:line", for messages


def read_acl(path: str, _depth: int = 0, _seen: tuple[str, ...] = ()) -> list[AclRule]:
    """Every rule of ``path`` and of the files it includes, in order. Raises AclError."""
    real = os.path.realpath(path)
    if real in _seen or _depth > MAX_INCLUDE_DEPTH:
        raise AclError(f"{path}: include nesting deeper than {MAX_INCLUDE_DEPTH} (or an include loop)")
    with open(path, "rb") as f:
        data = f.read(MAX_ACL_BYTES + 1)
    if len(data) > MAX_ACL_BYTES:
        raise AclError(f"{path}: larger than {MAX_ACL_BYTES} bytes")
    rules: list[AclRule] = []
    for number, raw in enumerate(data.decode("utf-8", "surrogateescape").splitlines(), 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) < 2:
            raise AclError(f"{path}:{number}: Invalid config line: {raw.strip()}")
        cmd, arg = parts[0], parts[1].strip()
        where = f"{path}:{number}"
        if cmd in ("allow", "deny"):
            rules.append(AclRule(cmd == "allow", "" if arg == "all" else arg, where))
        elif cmd == "include":
            target = arg if os.path.isabs(arg) else os.path.join(os.path.dirname(path), arg)
            try:
                rules.extend(read_acl(target, _depth + 1, (*_seen, real)))
            except FileNotFoundError:
                log.debug("%s: included file %s does not exist: skipped (as QEMU)", where, target)
            except OSError as exc:
                raise AclError(f"{where}: cannot read included {target}: {exc.strerror or exc}") from None
        else:
            raise AclError(f"{where}: Unknown command `{cmd}'")
    return rules


def acl_allows(rules: list[AclRule], bridge: str) -> bool:
    """qemu-bridge-helper's policy: some allow matches and no deny does."""
    allowed = denied = False
    for rule in rules:
        if rule.bridge in ("", bridge):
            if rule.allow:
                allowed = True
            else:
                denied = True
    return allowed and not denied


def check_acl(path: str, bridge: str) -> None:
    """Raise AclError unless ``path`` allows ``bridge``."""
    try:
        rules = read_acl(path)
    except OSError as exc:
        raise AclError(f"failed to parse default acl file `{path}': {exc.strerror or exc}") from None
    if not acl_allows(rules, bridge):
        raise AclError(f"bridge '{bridge}': access denied by acl file {path}")


# -- rtnetlink -------------------------------------------------------------------------------------------
def _netlink_errno(exc: Exception) -> tuple[int, str]:
    code = int(getattr(exc, "code", 0) or getattr(exc, "errno", 0) or 0)
    return code, os.strerror(code) if code else str(exc)


def attach_to_bridge(ifname: str, bridge: str) -> tuple[int, str]:
    """Give ``ifname`` the bridge's MTU and a 0xFE MAC, enslave it, bring it up: (mtu, mac).

    Raises OSError with qemu-bridge-helper's wording. pyroute2's synchronous API runs an asyncio loop
    of its own, which cannot run on a thread whose loop is running (vmlan's): on such a thread the
    work goes to a short-lived thread of its own (started from this one, so in the same network
    namespace), and this one waits for it: a few milliseconds, once per bridge link.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _attach_to_bridge(ifname, bridge)
    result: list[tuple[int, str]] = []
    error: list[BaseException] = []

    def work() -> None:
        try:
            result.append(_attach_to_bridge(ifname, bridge))
        except BaseException as exc:
            error.append(exc)

    worker = threading.Thread(target=work, name=f"rtnetlink-{ifname}")
    worker.start()
    worker.join()
    if error:
        raise error[0]
    return result[0]


def _attach_to_bridge(ifname: str, bridge: str) -> tuple[int, str]:
    from pyroute2 import IPRoute  # type: ignore[import-untyped]  # only bridge links need it

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=bridge)
        if not found:
            raise OSError(errno.ENODEV, f"failed to get mtu of bridge `{bridge}': {os.strerror(errno.ENODEV)}")
        br_index = found[0]
        br_link = ipr.get_links(br_index)[0]
        kind = br_link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))
        if kind != "bridge":
            raise OSError(errno.EINVAL, f"`{bridge}' is not a bridge (link kind {kind or 'none'})")
        mtu = int(br_link.get("IFLA_MTU"))
        tap = ipr.link_lookup(ifname=ifname)
        if not tap:
            raise OSError(errno.ENODEV, f"device `{ifname}' vanished: {os.strerror(errno.ENODEV)}")
        index = tap[0]
        mac = str(ipr.get_links(index)[0].get("IFLA_ADDRESS") or "")
        rest = mac[2:] if len(mac) == 17 else ":" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))
        mac = "fe" + rest
        steps: list[tuple[str, dict[str, object]]] = [
            (f"failed to set mtu of device `{ifname}' to {mtu}", {"mtu": mtu}),
            (f"failed to set MAC address of device `{ifname}'", {"address": mac}),
            (f"failed to add interface `{ifname}' to bridge `{bridge}'", {"master": br_index}),
            (f"failed to bring up interface `{ifname}'", {"state": "up"}),
        ]
        for message, attrs in steps:
            try:
                ipr.link("set", index=index, **attrs)
            except Exception as exc:  # pyroute2's NetlinkError (an OSError subclass in some versions)
                code, reason = _netlink_errno(exc)
                raise OSError(code or errno.EIO, f"{message}: {reason}") from None
    return mtu, mac


# -- qemu-bridge-helper ----------------------------------------------------------------------------------
def run_bridge_helper(helper: str, bridge: str, timeout: float = SCRIPT_TIMEOUT) -> int:
    """Run a bridge helper as QEMU does and return the TAP descriptor it sends. Raises OSError.

    The helper's own complaint (its last line on stderr) ends the message.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours:
        fd_arg = f"--fd={theirs.fileno()}"
        if " " in helper or "\t" in helper:
            command = f"{helper} --use-vnet {fd_arg}" + ("" if "--br=" in helper else f" --br={bridge}")
            argv, executable = ["sh", "-c", command], "/bin/sh"
        else:
            argv, executable = [helper, "--use-vnet", fd_arg, f"--br={bridge}"], helper
        try:
            proc = subprocess.Popen(argv, executable=executable, close_fds=True, pass_fds=(theirs.fileno(),),
                                    stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as exc:
            theirs.close()
            raise OSError(exc.errno, f"could not launch bridge helper {helper}: {exc.strerror or exc}") from None
        theirs.close()
        received: list[int] = []
        failure = ""
        ours.settimeout(timeout)
        try:
            _, received, _, _ = socket.recv_fds(ours, 1, 1, socket.MSG_CMSG_CLOEXEC)
        except TimeoutError:
            failure = f"bridge helper {helper} sent no descriptor within {timeout:g} s"
            proc.kill()
        except OSError as exc:
            failure = f"failed to recv file descriptor: {exc.strerror or exc}"
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        said = next((line.strip() for line in reversed(err.decode("utf-8", "replace").splitlines()) if line.strip()),
                    "")
        status = proc.returncode
        if not failure and not received:
            failure = "failed to recv file descriptor"
        if not failure and status != 0:
            failure = "bridge helper failed" + (f" with status {status}" if status > 0 else f" (signal {-status})")
        if failure:
            for fd in received:
                os.close(fd)
            raise OSError(errno.EIO, failure + (f": {said}" if said else ""))
        return received[0]


# -- the netdev ------------------------------------------------------------------------------------------
class BridgeLink:
    """``-netdev bridge``: a TAP on a Linux bridge, as one TapPort on the netdev's hub."""

    def __init__(self, cfg: BridgeNetdev, lan: Hub, loop: asyncio.AbstractEventLoop, acl: str = DEFAULT_ACL) -> None:
        self.cfg = cfg
        self.lan = lan
        self.loop = loop
        self.acl = acl
        self.port: TapPort | None = None
        self.on_port: Callable[[TapPort], None] | None = None
        self.label = f"bridge {cfg.id}"
        self.offloads = 0
        self.mtu = 0
        self.mac = ""

    @property
    def ports(self) -> list[TapPort]:
        return [self.port] if self.port is not None else []

    def describe(self) -> str:
        head = self.cfg.info
        port = self.port
        if port is None:
            return head + ",closed"
        vnet = f",vnet_hdr=on,offload={offload_names(self.offloads)}" if port.vnet_hdr else ",vnet_hdr=off"
        return f"{head},ifname={port.ifname}{vnet}"

    def start(self) -> None:
        """ACL, TAP, bridge port; or the helper. Raises LinkError (the TAP is gone again then)."""
        cfg = self.cfg
        what = f"-netdev bridge,id={cfg.id}"
        dev: TapDevice
        if cfg.helper:
            try:
                fd = run_bridge_helper(cfg.helper, cfg.br)
            except OSError as exc:
                raise LinkError(f"{what}: {exc.strerror or exc}") from None
            try:
                dev = probe_tap(fd)
            except OSError as exc:
                os.close(fd)
                raise LinkError(f"{what}: the helper's descriptor: {exc.strerror or exc}") from None
        else:
            try:
                check_acl(self.acl, cfg.br)
            except AclError as exc:
                raise LinkError(f"{what}: {exc}") from None
            try:
                dev = open_tap("", None)
            except OSError as exc:
                raise LinkError(f"{what}: {exc.strerror or exc}") from None
            try:
                self.mtu, self.mac = attach_to_bridge(dev.ifname, cfg.br)
            except OSError as exc:
                os.close(dev.fd)  # not persistent: the interface goes with its descriptor
                raise LinkError(f"{what}: {exc.strerror or exc}") from None
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
        if self.port is not None:
            self.port.close("shutting down")
            self.port = None
