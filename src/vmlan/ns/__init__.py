"""``vmlan ns``: a command in a network namespace of its own, on vmlan's user-mode stack.

    vmlan ns [--mtu N] [-netdev user,...] [-v|-q] [--] CMD ARGS...
    vmlan ns [--mtu N] [-netdev user,...] [-v|-q] --attach PID

What slirp4netns (``--configure``) and pasta (``--config-net``) do, as one command: CMD runs in a new
network namespace (and a new user namespace when vmlan is not root) whose only interface besides
``lo`` is ``tap0``, attached to a ``-netdev user`` stack in vmlan's own process. The namespace is set
up without DHCP: 10.0.2.100/24, default route via 10.0.2.2, /etc/resolv.conf naming 10.0.2.3 (in a
mount namespace of its own; the host's file is untouched). ``hostfwd=`` forwards into it keep the
client's source address. The exit status is CMD's. ``--attach PID`` gives an existing process's
network namespace the same ``tap0`` and runs until that process exits.

Pieces: :mod:`vmlan.ns.config` (options, addresses, resolv.conf), :mod:`vmlan.ns.setup` (what runs
inside the namespace: unshare/setns, the TAP, rtnetlink, the bind mount), :mod:`vmlan.ns.run` (vmlan's
side: the hub, the child, signals, exit status).
"""

from __future__ import annotations

import logging
import sys

from vmlan.config.errors import ConfigError
from vmlan.ns.config import NsConfig, parse_ns_args

__all__ = ["USAGE", "NsConfig", "main", "parse_ns_args"]

USAGE = """\
usage: vmlan ns [--mtu N] [-netdev user,...] [-v|-q] [--] CMD ARGS...
       vmlan ns [--mtu N] [-netdev user,...] [-v|-q] --attach PID

Runs CMD in a new network namespace (and user namespace, when not root) whose tap0 is attached to a
vmlan user-mode stack (-netdev user: QEMU's defaults when not given; hostfwd= forwards into the
namespace and keeps the client's address). tap0 gets 10.0.2.100/24 (net + 100), the default route via
10.0.2.2 (the host's loopback) and /etc/resolv.conf names 10.0.2.3, the stack's DNS forwarder.
The exit status is CMD's (128 + N if signal N killed it); SIGINT, SIGTERM and SIGHUP are passed on
to CMD; SIGUSR1 prints info network and info usernet.
  --mtu N          the MTU of tap0 and of the stack (576..65520, default 1500)
  -netdev user,... the stack's options, as vmlan run takes them (id= may be left out)
  --attach PID     give the network namespace of process PID a tap0 instead; run until PID exits
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
