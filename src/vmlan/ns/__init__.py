"""``vmlan ns``: commands in network namespaces of their own, on vmlan's user-mode stack.

    vmlan ns [--mtu N] [-netdev user,...] [-v|-q] [--attach PID]... [--] CMD ARGS...
    vmlan ns [--mtu N] [-netdev user,...] [-v|-q] --attach PID [--attach PID]...

What slirp4netns (``--configure``) and pasta (``--config-net``) do, as one command: CMD runs in a new
network namespace (and a new user namespace when vmlan is not root) whose only interface besides
``lo`` is ``tap0``, attached to a ``-netdev user`` stack in vmlan's own process. IPv4 is set up
without DHCP: 10.0.2.100/24, default route via 10.0.2.2. IPv6 is the kernel's own: tap0 takes its
address (fec0::5054:ff:fe12:3456, SLAAC from the MAC 52:54:00:12:34:56) and its default route (fe80::2)
from the stack's router advertisement; CMD starts once that address is usable. /etc/resolv.conf (in a
mount namespace of its own; the host's file is untouched) names 10.0.2.3 and fec0::3. ``hostfwd=``
forwards into it keep the client's source address. The exit status is CMD's.

``--attach PID`` (repeatable) gives existing processes' network namespaces a ``tap0`` each, on the same
stack: each on its own hub port, with its own MAC and addresses (10.0.2.101, fec0::5054:ff:fe12:3457,
...), in the order given after CMD's. Namespaces on one stack reach each other directly (the hub).
With CMD, vmlan runs as long as CMD; without, until every attached process has exited.

Pieces: :mod:`vmlan.ns.config` (options, addresses, resolv.conf), :mod:`vmlan.ns.setup` (what runs
inside a namespace: unshare/setns, the TAP, rtnetlink, sysctls, the bind mount), :mod:`vmlan.ns.run`
(vmlan's side: the hub, the setup processes, signals, exit status).
"""

from __future__ import annotations

import logging
import sys

from vmlan.config.errors import ConfigError
from vmlan.ns.config import NsConfig, parse_ns_args

__all__ = ["USAGE", "NsConfig", "main", "parse_ns_args"]

USAGE = """\
usage: vmlan ns [--mtu N] [-netdev user,...] [-v|-q] [--attach PID]... [--] CMD ARGS...
       vmlan ns [--mtu N] [-netdev user,...] [-v|-q] --attach PID [--attach PID]...

Runs CMD in a new network namespace (and user namespace, when not root) whose tap0 is attached to a
vmlan user-mode stack (-netdev user: QEMU's defaults when not given; hostfwd= forwards into the
namespace and keeps the client's address). tap0 gets 10.0.2.100/24 (net + 100), the default route via
10.0.2.2 (the host's loopback), and /etc/resolv.conf names 10.0.2.3, the stack's DNS forwarder. With
IPv6 (on unless ipv6=off) the kernel autoconfigures tap0 from the stack's router advertisement:
fec0::5054:ff:fe12:3456/64 (from the MAC 52:54:00:12:34:56), default route via fe80::2, and fec0::3
(fec0::2 is the host's ::1) is in resolv.conf; CMD starts once that address is usable.
The exit status is CMD's (128 + N if signal N killed it); SIGINT, SIGTERM and SIGHUP are passed on
to CMD; SIGUSR1 prints info network and info usernet.
  --mtu N          the MTU of tap0 and of the stack (576..65520, default 1500)
  -netdev user,... the stack's options, as vmlan run takes them (id= may be left out)
  --attach PID     give the network namespace of process PID a tap0 on the same stack (repeatable;
                   after CMD's, namespace i gets net + 100 + i, MAC 52:54:00:12:34:56 + i); without
                   CMD, run until every attached process exits
  -v, --verbose    log the setup, and print the counters at exit (twice: debug)
  -q, --quiet      log only errors
"""


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    try:
        cfg = parse_ns_args(argv)
    except ConfigError as exc:
        sys.stderr.write(f"vmlan: {exc}\n")
        return 2
    _setup_logging(cfg)
    from vmlan.ns.run import run_ns

    return run_ns(cfg)


def _setup_logging(cfg: NsConfig) -> None:
    """CMD shares vmlan's stderr: by default vmlan says only what went wrong."""
    level = logging.ERROR if cfg.quiet else logging.DEBUG if cfg.verbose > 1 else logging.INFO if cfg.verbose \
        else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("vmlan: %(message)s"))
    log = logging.getLogger("vmlan")
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
