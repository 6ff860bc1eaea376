"""The namespace side of ``vmlan ns``: what the child (or an ``--attach`` helper) does before CMD runs.

Both are ``fork()``\\ s of vmlan, single-threaded, and never return into vmlan's code: they end in
``execvp(CMD)`` or ``_exit``.

The child (``vmlan ns -- CMD``)
    1. ``unshare(CLONE_NEWNET | CLONE_NEWNS)``, plus CLONE_NEWUSER when not root. Unprivileged, it
       maps itself as ``unshare -r`` does: ``setgroups`` "deny", ``uid_map`` "0 UID 1", ``gid_map``
       "0 GID 1" (a single-uid map of oneself needs no newuidmap). PR_SET_PDEATHSIG(SIGKILL) only
       after that (changing credentials clears it), then a check that vmlan is still its parent.
    2. Opens ``/dev/net/tun`` there: ``tap0`` with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, then
       TUNSETOFFLOAD(CSUM | TSO4 | TSO6), so the kernel hands over 64 KiB TCP segments.
    3. Over rtnetlink (pyroute2, in this process, so in this namespace): ``lo`` up; ``tap0``'s MAC
       (:attr:`~vmlan.ns.config.Namespace.mac`), MTU, IPv4 address; with IPv6 on, tap0's IPv6 settings
       (below); ``tap0`` up; the IPv4 default route via the gateway.
    4. /etc/resolv.conf: mounts become slaves of the host's (nothing mounted here propagates back), a
       small tmpfs is mounted on a scratch directory, resolv.conf written into it and bind-mounted
       over the file /etc/resolv.conf resolves to, and the tmpfs detached again: no file is written
       anywhere, the host's is untouched, and the scratch directory shows its own contents again.
    5. Sends the TAP descriptor to vmlan (SCM_RIGHTS), closes its own copy, and waits for vmlan's
       "go" (the TAP is on the hub).
    6. With IPv6 on, waits (at most :data:`IPV6_WAIT` seconds) until the kernel has autoconfigured
       tap0 from the stack's router advertisement: an address of the prefix that may be used and a
       default route. Then it tells vmlan the address and runs CMD, so CMD's first packet, IPv4 or IPv6,
       finds a working network.
The helper (``--attach PID``)
    Joins PID's network namespace (first the user namespace that owns it, when that is not ours and
    we are not root: ioctl NS_GET_USERNS on the namespace), then steps 2, 3, 5 and 6, and exits. The
    target's mount namespace is not vmlan's to change: no resolv.conf there.

IPv6 is the kernel's own: vmlan sets no IPv6 address or route. Before tap0 comes up it makes sure of
what SLAAC needs (``disable_ipv6`` 0, ``accept_ra`` 1, ``autoconf`` 1, ``addr_gen_mode`` 0, i.e.
EUI-64 from the MAC, so the address is the one :mod:`vmlan.ns.config` predicts) and turns duplicate
address detection off (``accept_dad`` 0). There is nothing to detect: the LAN behind tap0 is vmlan's
hub, every MAC on it is one vmlan assigned (distinct, so are their EUI-64 addresses) and the stack's
own addresses (fe80::2, fec0::2, fec0::3) are not EUI-64 ones. What DAD costs is real: 2 to 4 s before
CMD could start (the random delay and one-second probe, twice: the link-local address before the
router solicitation, then the SLAAC address). Optimistic DAD (RFC 4429), tried first, starts CMD after
about a second but leaves a window: while every address of a namespace is still optimistic the
kernel sends no neighbour solicitation (it has no source it may use), so the first packets to another
namespace on the hub waited or were lost (measured: a ``ping6 -c 2`` between two attached namespaces
got one reply). Without DAD the addresses are usable as soon as they exist.

Messages to vmlan, one per datagram on a SOCK_SEQPACKET socketpair: ``T`` + interface name with the
descriptor, ``W`` + a warning, ``E`` + the reason setup failed, ``R`` + the SLAAC address (empty
without one) when the namespace is ready. vmlan answers ``G``. The child's end is close-on-exec: vmlan
reads EOF once CMD runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import importlib
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import Any, NoReturn

from vmlan.io.tap import OFFLOADS, offload_names, open_tap, set_offloads
from vmlan.ns.config import IFNAME, Namespace, NsConfig, resolv_conf_text

__all__ = [
    "IPV6_SYSCTLS",
    "IPV6_WAIT",
    "MSG_ERROR",
    "MSG_GO",
    "MSG_READY",
    "MSG_TAP",
    "MSG_WARNING",
    "SetupError",
    "bind_resolv_conf",
    "child_main",
    "configure_interfaces",
    "enter_new_namespaces",
    "exec_command",
    "exit_status",
    "helper_main",
    "id_map_writes",
    "join_namespaces_of",
    "open_ns_tap",
    "recv_message",
    "send_message",
    "set_ipv6_sysctls",
    "usable_ipv6",
    "wait_for_ipv6",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 1 << 19
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1), <linux/nsfs.h>
RESOLV_CONF = "/etc/resolv.conf"
SCRATCH_DIRS = ("/tmp", "/run", "/mnt")
IPV6_CONF = "/proc/sys/net/ipv6/conf"
# What SLAAC from the stack's RA needs, set on tap0 before it comes up (see the module docstring).
IPV6_SYSCTLS = (("disable_ipv6", "0"), ("accept_ra", "1"), ("autoconf", "1"), ("addr_gen_mode", "0"),
                ("accept_dad", "0"))
IPV6_WAIT = 5.0  # seconds for the SLAAC address and the default route; usually about one
IFA_F_OPTIMISTIC, IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x04, 0x08, 0x40
RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x100, 0x400

MSG_TAP, MSG_WARNING, MSG_ERROR, MSG_GO, MSG_READY = b"T", b"W", b"E", b"G", b"R"
MSG_MAX = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)


class SetupError(Exception):
    """A step of the namespace setup failed; the message is one line."""


def _fail(what: str) -> NoReturn:
    err = ctypes.get_errno()
    raise SetupError(f"{what}: {os.strerror(err)}")


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


# -- system calls ----------------------------------------------------------------------------------------
def unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        _fail("unshare")


def setns(fd: int, nstype: int, what: str) -> None:
    if _libc.setns(fd, nstype) != 0:
        _fail(f"cannot join {what}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if _libc.mount(_bytes(source), _bytes(target), _bytes(fstype), flags, _bytes(data)) != 0:
        _fail(f"mount {target}")


def umount(target: str, flags: int = 0) -> None:
    if _libc.umount2(_bytes(target), flags) != 0:
        _fail(f"umount {target}")


def set_parent_death_signal(sig: int) -> None:
    if _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        _fail("prctl(PR_SET_PDEATHSIG)")


# -- namespaces ------------------------------------------------------------------------------------------
def id_map_writes(uid: int, gid: int) -> list[tuple[str, str]]:
    """The /proc/PID files an unprivileged process writes to map itself as root, in order (setgroups must
    be denied before an unprivileged gid_map is accepted)."""
    return [("setgroups", "deny"), ("uid_map", f"0 {uid} 1\n"), ("gid_map", f"0 {gid} 1\n")]


def write_id_maps(uid: int, gid: int, pid: int | str = "self") -> None:
    for name, text in id_map_writes(uid, gid):
        path = f"/proc/{pid}/{name}"
        try:
            with open(path, "w") as fh:
                fh.write(text)
        except OSError as exc:
            raise SetupError(f"cannot write {path}: {exc.strerror}") from None


def enter_new_namespaces(uid: int, gid: int) -> None:
    """New network and mount namespaces; a user namespace too (mapping ``uid``/``gid`` to root) unless root."""
    flags = CLONE_NEWNET | CLONE_NEWNS
    if uid != 0:
        flags |= CLONE_NEWUSER
    try:
        unshare(flags)
    except SetupError as exc:
        hint = " (are unprivileged user namespaces disabled? see kernel.unprivileged_userns_clone)" if uid else ""
        raise SetupError(f"{exc}{hint}") from None
    if uid != 0:
        write_id_maps(uid, gid)


def join_namespaces_of(pid: int, pidfd: int) -> None:
    """Join the network namespace of ``pid`` (and the user namespace owning it, if we need its rights).

    The namespace files are opened first and ``pidfd`` checked afterwards, so a PID reused in between
    is noticed rather than joined.
    """
    what = f"the network namespace of process {pid}"
    try:
        netfd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SetupError(f"cannot open {what}: {exc.strerror}") from None
    try:
        try:
            signal.pidfd_send_signal(pidfd, 0)
        except OSError as exc:
            raise SetupError(f"process {pid}: {exc.strerror}") from None
        if os.geteuid() != 0:
            try:
                userfd = fcntl.ioctl(netfd, NS_GET_USERNS)
            except OSError as exc:
                raise SetupError(f"cannot find the owner of {what}: {exc.strerror}") from None
            try:
                if os.fstat(userfd).st_ino != os.stat("/proc/self/ns/user").st_ino:
                    setns(userfd, CLONE_NEWUSER, f"the user namespace of process {pid}")
            finally:
                os.close(userfd)
        setns(netfd, CLONE_NEWNET, what)
    finally:
        os.close(netfd)


# -- the interface ---------------------------------------------------------------------------------------
def open_ns_tap(ifname: str = IFNAME, unprivileged: bool = False) -> tuple[int, int]:
    """Create ``ifname`` in this namespace with virtio-net headers and TSO: (fd, offloads in force).
    ``unprivileged``: vmlan is not root (in here it may look like root: its own user namespace's)."""
    try:
        dev = open_tap(ifname, vnet_hdr=True)
    except OSError as exc:
        hint = ""
        if exc.errno == errno.EACCES and unprivileged:
            hint = " (an unprivileged user needs it mode 0666, as Debian's udev rules make it)"
        raise SetupError((exc.strerror or str(exc)) + hint) from None
    return dev.fd, set_offloads(dev.fd, OFFLOADS)


def _netlink_reason(exc: Exception) -> str:
    code = int(getattr(exc, "code", 0) or getattr(exc, "errno", 0) or 0)
    return os.strerror(code) if code else str(exc)


def configure_interfaces(ifname: str, address: IPv4Address | None, prefixlen: int, gateway: IPv4Address, mtu: int,
                         mac: bytes | None = None, ipv6: bool = False) -> list[str]:
    """lo up; ``ifname``: MAC, MTU, IPv4 address (none when ``address`` is None), with ``ipv6`` the IPv6
    settings of :func:`set_ipv6_sysctls`, up; the IPv4 default route via ``gateway`` (rtnetlink of this
    namespace). Returns warnings (IPv6 settings the kernel refused)."""
    iproute: Any = importlib.import_module("pyroute2").IPRoute  # untyped; loaded by vmlan before the fork
    warnings: list[str] = []
    with iproute() as ipr:
        steps: list[tuple[str, Callable[[], object]]] = [
            ("cannot bring up lo", lambda: ipr.link("set", index=_index(ipr, "lo"), state="up"))]
        if mac is not None:
            steps.append((f"cannot set the MAC of {ifname} to {mac.hex(':')}",
                          lambda: ipr.link("set", index=_index(ipr, ifname), address=mac.hex(":"))))
        steps.append((f"cannot set the MTU of {ifname} to {mtu}",
                      lambda: ipr.link("set", index=_index(ipr, ifname), mtu=mtu)))
        if address is not None:
            steps.append((f"cannot add {address}/{prefixlen} to {ifname}",
                          lambda: ipr.addr("add", index=_index(ipr, ifname), address=str(address),
                                           prefixlen=prefixlen)))
        if ipv6:
            steps.append(("", lambda: warnings.extend(set_ipv6_sysctls(ifname))))
        steps.append((f"cannot bring up {ifname}", lambda: ipr.link("set", index=_index(ipr, ifname), state="up")))
        if address is not None:
            steps.append((f"cannot add the default route via {gateway}",
                          lambda: ipr.route("add", dst="0.0.0.0/0", gateway=str(gateway), oif=_index(ipr, ifname))))
        for message, step in steps:
            try:
                step()
            except SetupError:
                raise
            except Exception as exc:  # pyroute2's NetlinkError
                raise SetupError(f"{message}: {_netlink_reason(exc)}") from None
    return warnings


def set_ipv6_sysctls(ifname: str, conf: str = IPV6_CONF) -> list[str]:
    """Write :data:`IPV6_SYSCTLS` for ``ifname`` (this namespace's: /proc/sys/net is the reader's).
    A setting the kernel refuses is a warning, not a failure: IPv6 then runs on the kernel's defaults."""
    warnings = []
    for name, value in IPV6_SYSCTLS:
        path = os.path.join(conf, ifname, name)
        try:
            with open(path, "w") as fh:
                fh.write(value)
        except OSError as exc:
            warnings.append(f"cannot set net.ipv6.conf.{ifname}.{name}={value}: {exc.strerror}")
            if name == "disable_ipv6":
                break  # no IPv6 on this kernel or interface: the rest would fail the same way
    return warnings


def usable_ipv6(addrs: Sequence[Any], routes: Sequence[Any], index: int, prefix: IPv6Network) -> IPv6Address | None:
    """The address SLAAC gave interface ``index`` in ``prefix``, once it may be used (DAD passed, or
    optimistic) and a default route through the interface exists; else None. ``addrs``/``routes``:
    pyroute2's RTM_NEWADDR/RTM_NEWROUTE messages of a dump."""
    if not any(r["dst_len"] == 0 and r.get("RTA_OIF") == index and r.get("RTA_GATEWAY") for r in routes):
        return None
    for msg in addrs:
        if msg["index"] != index or msg["prefixlen"] != prefix.prefixlen:
            continue
        flags = msg.get("IFA_FLAGS") or msg["flags"]
        if flags & IFA_F_DADFAILED or (flags & IFA_F_TENTATIVE and not flags & IFA_F_OPTIMISTIC):
            continue
        text = msg.get("IFA_ADDRESS")
        if text:
            addr = IPv6Address(text)
            if addr in prefix:
                return addr
    return None


def wait_for_ipv6(ifname: str, prefix: IPv6Network, timeout: float = IPV6_WAIT) -> IPv6Address | None:
    """Wait until :func:`usable_ipv6` holds for ``ifname`` (woken by rtnetlink's address and route
    notifications, never polling); None after ``timeout`` seconds."""
    iproute: Any = importlib.import_module("pyroute2").IPRoute
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as events, \
            iproute() as ipr:
        events.bind((0, RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE))  # before the first look: nothing is missed
        events.setblocking(False)
        index = _index(ipr, ifname)
        while True:
            found = usable_ipv6(ipr.get_addr(family=socket.AF_INET6, index=index),
                                ipr.get_routes(family=socket.AF_INET6), index, prefix)
            left = deadline - time.monotonic()
            if found is not None or left <= 0:
                return found
            if select.select([events], [], [], left)[0]:
                with contextlib.suppress(BlockingIOError):
                    while events.recv(65536):  # drain: one look covers every notification so far
                        pass


def _index(ipr: Any, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise SetupError(f"interface {ifname} not found")
    return int(found[0])


# -- resolv.conf -----------------------------------------------------------------------------------------
def bind_resolv_conf(text: str, target: str = RESOLV_CONF, scratch_dirs: Sequence[str] = SCRATCH_DIRS) -> None:
    """Show ``text`` as ``target`` in this mount namespace (which must be new), writing nothing to disk.

    The target is resolved first (it is often a symlink), and mounted on through its /proc/self/fd
    link, so the scratch tmpfs can never hide it.
    """
    mount(None, "/", None, MS_REC | MS_SLAVE)
    try:
        tfd = os.open(target, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        raise SetupError(f"cannot bind-mount over {target}: {exc.strerror}") from None
    try:
        scratch = next((d for d in scratch_dirs if os.path.isdir(d) and not os.path.islink(d)), None)
        if scratch is None:
            raise SetupError(f"cannot bind-mount over {target}: none of {', '.join(scratch_dirs)} is a directory")
        mount("vmlan-ns", scratch, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=0755")
        try:
            source = os.path.join(scratch, "resolv.conf")
            fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
            mount(source, f"/proc/self/fd/{tfd}", None, MS_BIND)
        finally:
            umount(scratch, MNT_DETACH)
    finally:
        os.close(tfd)


# -- messages --------------------------------------------------------------------------------------------
def send_message(sock: socket.socket, kind: bytes, text: str = "", fd: int | None = None) -> None:
    payload = kind + text.encode("utf-8", "replace")[: MSG_MAX - 1]
    if fd is None:
        sock.sendall(payload)
    else:
        socket.send_fds(sock, [payload], [fd])


def recv_message(sock: socket.socket) -> tuple[bytes, str, int | None]:
    """One message: (kind, text, descriptor or None); kind b"" at EOF. Raises BlockingIOError when there
    is none yet (non-blocking socket). Descriptors that come with any other message are closed."""
    data, fds, flags, _addr = socket.recv_fds(sock, MSG_MAX, 2)
    kind, text = data[:1], data[1:].decode("utf-8", "replace")
    fd: int | None = None
    if kind == MSG_TAP and len(fds) == 1 and not flags & socket.MSG_CTRUNC:
        fd = fds[0]
    else:
        for extra in fds:
            os.close(extra)
        if kind == MSG_TAP:
            return MSG_ERROR, "the TAP descriptor did not arrive", None
    return kind, text, fd


# -- process entry points --------------------------------------------------------------------------------
CHILD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGQUIT)


def _default_signals() -> None:
    """Default actions for what vmlan catches (it forwards those signals to us), then unblock them."""
    for sig in CHILD_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def exit_status(wait_status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + the signal that killed the process."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def exec_command(command: Sequence[str]) -> NoReturn:
    """execvp(CMD) with Python's ignored signals restored (as subprocess does); on failure a shell's
    status: 127 for a command not found, 126 for one that cannot be run."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(command[0], list(command))
    except OSError as exc:
        sys.stderr.write(f"vmlan: ns: {command[0]}: {exc.strerror}\n")
        sys.stderr.flush()
        os._exit(127 if exc.errno == errno.ENOENT else 126)


def _setup_interface(sock: socket.socket, cfg: NsConfig, ns: Namespace, unprivileged: bool) -> int:
    fd, offloads = open_ns_tap(IFNAME, unprivileged)
    if offloads != OFFLOADS:
        send_message(sock, MSG_WARNING, f"{IFNAME}: the kernel accepts only offloads {offload_names(offloads)}: "
                                        "TCP comes in MTU-sized frames")
    warnings = configure_interfaces(IFNAME, ns.address if cfg.ipv4 else None, cfg.prefixlen, cfg.gateway, cfg.mtu,
                                    ns.mac, cfg.ipv6)
    for text in warnings:
        send_message(sock, MSG_WARNING, text)
    return fd


def _await_go_and_ipv6(sock: socket.socket, cfg: NsConfig) -> None:
    """vmlan's "go" (the TAP is on the hub), then, with IPv6, the SLAAC address; tell vmlan (``R``)."""
    if sock.recv(16) != MSG_GO:
        os._exit(1)  # vmlan gave up (its message says why) or is gone
    found = ""
    if cfg.ipv6:
        addr = wait_for_ipv6(IFNAME, cfg.user.net6)
        if addr is None:
            send_message(sock, MSG_WARNING, f"{IFNAME}: no IPv6 address from the stack's router advertisement "
                                            f"within {IPV6_WAIT:g} s: going on without waiting")
        else:
            found = str(addr)
    send_message(sock, MSG_READY, found)


def _report(sock: socket.socket, text: str) -> NoReturn:
    with contextlib.suppress(OSError):
        send_message(sock, MSG_ERROR, text)
    os._exit(1)


def child_main(sock: socket.socket, cfg: NsConfig, ns: Namespace, parent: int, uid: int, gid: int) -> NoReturn:
    """The forked child of ``vmlan ns -- CMD``; see the module docstring. Never returns."""
    try:
        _default_signals()
        try:
            with open(RESOLV_CONF) as fh:
                host_resolv = fh.read()
        except OSError:
            host_resolv = ""
        enter_new_namespaces(uid, gid)
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)  # vmlan died before the death signal was armed
        fd = _setup_interface(sock, cfg, ns, uid != 0)
        try:
            bind_resolv_conf(resolv_conf_text(cfg, host_resolv))
        except SetupError as exc:
            send_message(sock, MSG_WARNING, f"{exc}: CMD sees the host's resolver configuration")
        send_message(sock, MSG_TAP, IFNAME, fd)
        os.close(fd)
        _await_go_and_ipv6(sock, cfg)
        exec_command(cfg.command)
    except SetupError as exc:
        _report(sock, str(exc))
    except BaseException as exc:  # never unwind into vmlan's own code in a forked child
        _report(sock, f"internal error: {exc!r}")


def helper_main(sock: socket.socket, cfg: NsConfig, ns: Namespace, pidfd: int) -> NoReturn:
    """A forked helper of ``vmlan ns --attach PID``; see the module docstring. Never returns."""
    try:
        _default_signals()
        assert ns.attach is not None
        unprivileged = os.geteuid() != 0
        join_namespaces_of(ns.attach, pidfd)
        fd = _setup_interface(sock, cfg, ns, unprivileged)
        send_message(sock, MSG_TAP, IFNAME, fd)
        os.close(fd)
        _await_go_and_ipv6(sock, cfg)
        os._exit(0)
    except SetupError as exc:
        _report(sock, str(exc))
    except BaseException as exc:
        _report(sock, f"internal error: {exc!r}")
