"""``vmlan`` command line: ``vmlan run [-netdev ...] [-hub ...] [-object filter-dump,...]``.

Bad configuration: one line on stderr naming the option and the value, exit status 2. A link that
cannot be opened (address in use, nothing listening): one line, exit status 1. Never a traceback.

Signals: SIGINT, SIGTERM and SIGUSR1 are caught before the first socket or file exists, so a signal
sent the moment a socket appears never kills vmlan with the default action. One that arrives before
the event loop exists is remembered and handled as soon as it does; SIGUSR1 during startup prints what
is open so far.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING

from vmlan import __version__
from vmlan.config.cmdline import RunConfig, parse_run_args
from vmlan.config.errors import ConfigError
from vmlan.config.netdev import StreamNetdev, UserNetdev
from vmlan.config.qemu_args import guest_args
from vmlan.config.tap import BridgeNetdev, TapNetdev
from vmlan.config.vde import VdeNetdev
from vmlan.config.vxlan import VxlanNetdev
from vmlan.io.errors import LinkError
from vmlan.io.loop import new_event_loop, write_report
from vmlan.io.sockopt import raise_fd_limit

if TYPE_CHECKING:
    from vmlan.io.runtime import Runtime

log = logging.getLogger("vmlan")

USAGE = """\
usage: vmlan run [options]
       vmlan plug [-g GROUP] [-m MODE] [--port N] [-D DESCR] [SOCKDIR]   (vmlan plug --help)
       vmlan ns [--mtu N] [-netdev user,...] [--] CMD ARGS... | --attach PID   (vmlan ns --help)
       vmlan daemon [options]          libvirt-style networks behind an HTTP+JSON API (see below)
       vmlan [--socket PATH] COMMAND ARGS...   virsh-like commands, a client of the daemon
       vmlan --version

vmlan run: QEMU's network backends as a standalone process.
  -netdev socket,id=ID,listen=[HOST]:PORT | connect=HOST:PORT[,reconnect-ms=MS]
  -netdev socket,id=ID,mcast=GROUP:PORT[,localaddr=ADDR] | udp=HOST:PORT,localaddr=HOST:PORT
  -netdev stream,id=ID,server=on|off,addr.type=inet,addr.host=HOST,addr.port=PORT[,reconnect-ms=MS]
  -netdev stream,id=ID,server=on|off,addr.type=unix,addr.path=PATH
  -netdev dgram,id=ID,remote.type=inet|unix,...[,local.type=inet|unix,...]
  -netdev user,id=ID[,net=...,hostfwd=...]       QEMU's user-mode network (see README)
  -netdev vde,id=ID,sock=DIR[,port=N][,group=G][,mode=0700][,reconnect-ms=MS]   join a VDE switch
  -netdev vde,id=ID,sock=DIR,server=on[,mode=0600][,group=G][,max-peers=32]     be a VDE switch
  -netdev tap,id=ID[,ifname=NAME][,script=PATH|no][,downscript=PATH|no][,vnet_hdr=on|off] | tap,id=ID,fd=N
  -netdev bridge,id=ID[,br=NAME][,helper=PATH]   a TAP on a Linux bridge (ACL /etc/vmlan/bridge.conf)
  -netdev vxlan,id=ID,vni=N,remote=ADDR|group=MCAST[,local=ADDR][,dev=IF][,port=4789][,srcport=LOW-HIGH][,ttl=N]
        a VXLAN tunnel (RFC 7348) to Linux vxlan devices (ip link add ... type vxlan ... dstport 4789)
        every netdev also takes hubid=N (default 0): netdevs on one hub share a LAN;
        listening ones take max-peers=N (default 64): peers served at a time
  -hub id=N[,mode=hub|switch][,aging=SECONDS]   hub N floods (hub) or learns MACs (switch)
  -object filter-dump,id=ID,netdev=ID,file=PATH[,maxlen=65536][,queue=all|rx|tx]
  -object filter-netem,id=ID,netdev=ID[,loss=PCT][,delay=MS][,jitter=MS][,duplicate=PCT][,reorder=PCT]
          [,rate=MBIT][,limit=FRAMES][,queue=all|rx|tx][,seed=N]
  -v, --verbose    log more (twice: debug)
  -q, --quiet      log only warnings and errors
With no -netdev, serves QEMU's default network (-netdev user,id=user0: 10.0.2.0/24, DHCP from
10.0.2.15) on hub 0 behind a unix stream socket, and prints how to attach QEMU to it.
Send SIGUSR1 to print the equivalent of QEMU's 'info network' with per-port counters.

"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        from vmlan.control.commands import USAGE as COMMANDS_USAGE

        sys.stdout.write(USAGE + COMMANDS_USAGE)
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"vmlan {__version__}")
        return 0
    if args[0] == "plug":
        from vmlan.plug import main as plug_main

        return plug_main(args[1:])
    if args[0] == "ns":
        from vmlan.ns import main as ns_main

        return ns_main(args[1:])
    if args[0] == "daemon":
        from vmlan.control.server import main as daemon_main

        return daemon_main(args[1:])
    sock = None
    if args[0].startswith("--socket"):
        name, eq, value = args[0].partition("=")
        if name != "--socket" or (not eq and len(args) < 2):
            sys.stderr.write("vmlan: --socket needs a path\n")
            return 2
        sock, args = (value, args[1:]) if eq else (args[1], args[2:])
        if not args:
            sys.stderr.write("vmlan: --socket PATH must be followed by a command\n")
            return 2
    from vmlan.control.commands import COMMANDS

    if args[0] in COMMANDS:
        from vmlan.control.commands import main as command_main

        return command_main(args[0], args[1:], sock)
    if args[0] != "run":
        sys.stderr.write(f"vmlan: unknown command '{args[0]}' (try 'vmlan --help')\n")
        return 2
    try:
        cfg = parse_run_args(args[1:])
    except ConfigError as exc:
        sys.stderr.write(f"vmlan: {exc}\n")
        return 2
    _setup_logging(cfg)
    return run(cfg)


def _setup_logging(cfg: RunConfig) -> None:
    level = logging.WARNING if cfg.quiet else logging.DEBUG if cfg.verbose > 1 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("vmlan: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


def run(cfg: RunConfig) -> int:
    # First of all, before the event loop (its self-pipe) or any link exists: no signal may find its
    # default action in place once a socket of ours is visible. Until the running loop takes over
    # (uvloop hears signals only while it runs), a signal is only remembered.
    early: list[int] = []

    def remember(signum: int, frame: FrameType | None) -> None:
        early.append(signum)

    for sig in SIGNALS:
        signal.signal(sig, remember)

    from vmlan.io.runtime import Runtime

    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    runtime = Runtime(cfg, loop)
    raise_fd_limit()
    try:
        return loop.run_until_complete(_serve(cfg, runtime, early))
    finally:
        runtime.close()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()  # restores the default actions: keep catching until the process is gone
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


async def _serve(cfg: RunConfig, runtime: Runtime, early: list[int]) -> int:
    """The whole life of ``vmlan run`` in one loop run, so no signal falls between two runs."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if signum == signal.SIGUSR1:
            write_report(_monitor_text(runtime))
        else:
            stop.set()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal, int(sig))
    for caught in early:
        on_signal(caught)
    if stop.is_set():
        return 0
    starting = loop.create_task(runtime.start())
    stopping = loop.create_task(stop.wait())
    await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # SIGINT/SIGTERM while still connecting
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        return 0
    exc = starting.exception()
    if isinstance(exc, LinkError):
        stopping.cancel()
        sys.stderr.write(f"vmlan: {exc}\n")
        return 1
    if exc is not None:
        stopping.cancel()
        raise exc
    _print_attach_hints(cfg)
    log.info("ready: %d netdev(s) on %d hub(s)", len(runtime.links), len(runtime.hubs))
    await stopping
    log.info("shutting down")
    return 0


def _monitor_text(runtime: Runtime) -> str:
    """What SIGUSR1 prints: info network, then info usernet for every user-mode stack."""
    from vmlan.control.monitor import info_network, info_usernet
    from vmlan.io.usernet import UserNetPort

    parts = [info_network(runtime)]
    for nd in runtime.netdevs:
        if isinstance(nd, UserNetPort):
            parts.append(info_usernet(nd, nd.cfg.hubid))
    faults = runtime.faults.as_dict()
    if faults:
        parts.append("internal errors: " + ", ".join(f"{kind} x{entry['count']}" for kind, entry in faults.items()))
    return "\n".join(parts)


def _kernel_vxlan_hint(nd: VxlanNetdev) -> str:
    """The ``ip link`` command that makes a kernel vxlan device meeting ``nd`` (Linux defaults to port 8472)."""
    # A group is joined on the peer's own interface, whose name only the peer knows.
    where = f"group {nd.remote} dev IFNAME" if nd.multicast else f"remote {nd.local or 'ADDRESS-OF-THIS-HOST'}"
    return f"ip link add vxlan{nd.vni} type vxlan id {nd.vni} {where} dstport {nd.port}"


def _print_attach_hints(cfg: RunConfig) -> None:
    """Tell the user the exact QEMU options that attach a guest to each netdev."""
    if cfg.quiet:
        return
    index = 0
    for nd in cfg.netdevs:
        if isinstance(nd, UserNetdev):
            log.info("user %s: user-mode network %s (gateway %s, DNS %s, DHCP from %s) on hub %d", nd.id, nd.net,
                     nd.host, nd.dns, nd.dhcp_start, nd.hubid)
            continue
        if isinstance(nd, VxlanNetdev):
            log.info("vxlan %s: a Linux peer joins with: %s", nd.id, _kernel_vxlan_hint(nd))
            continue
        if isinstance(nd, TapNetdev | BridgeNetdev) or (isinstance(nd, VdeNetdev) and not nd.server):
            continue  # a host interface, a tunnel or somebody else's switch: guests do not attach to vmlan there
        mac = f"52:54:00:12:34:{0x56 + index:02x}"
        index += 1
        opts = " ".join(guest_args(nd, mac))
        log.info("attach a QEMU guest to %s with: %s", nd.id, opts)
    if cfg.is_default:
        link = next(nd for nd in cfg.netdevs if isinstance(nd, StreamNetdev))
        sys.stdout.write(
            "vmlan is serving hub 0 with a user-mode network (10.0.2.0/24: DHCP from 10.0.2.15, gateway and\n"
            "host 10.0.2.2, DNS 10.0.2.3). Start a VM on it with, for example:\n"
            f"  qemu-system-x86_64 -m 512 ... {' '.join(guest_args(link))}\n"
        )
        sys.stdout.flush()
