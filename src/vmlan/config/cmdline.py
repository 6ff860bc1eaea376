"""``vmlan run`` arguments, in QEMU's single-dash style: ``-netdev``, ``-object``, ``-hub``.

The result is a validated RunConfig; nothing here opens a socket.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from vmlan.config.errors import ConfigError
from vmlan.config.filters import NetemConfig
from vmlan.config.netdev import (
    DumpConfig,
    HubConfig,
    NetdevConfig,
    StreamNetdev,
    UnixAddr,
    UserNetdev,
    parse_hub,
    parse_netdev,
    parse_object,
)
from vmlan.config.qemuopts import parse_qemuopts
from vmlan.config.usernet import parse_user_netdev


@dataclass
class RunConfig:
    netdevs: list[NetdevConfig] = field(default_factory=list)
    hubs: dict[int, HubConfig] = field(default_factory=dict)
    dumps: list[DumpConfig] = field(default_factory=list)
    netems: list[NetemConfig] = field(default_factory=list)
    verbose: int = 0
    quiet: bool = False
    is_default: bool = False


class OptionError(ConfigError):
    """A ConfigError that knows which command-line option it came from."""

    def __init__(self, option: str, text: str, message: str) -> None:
        super().__init__(f"{option} {text}: {message}" if text else f"{option}: {message}")


def default_socket_dir() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "vmlan")
    return f"/tmp/vmlan-{os.getuid()}"


def default_netdev() -> StreamNetdev:
    """The socket ``vmlan run`` serves hub 0 on when no -netdev is given."""
    return StreamNetdev("lan0", 0, "stream", True, UnixAddr(os.path.join(default_socket_dir(), "lan0.sock")))


def default_user_netdev() -> UserNetdev:
    """QEMU's default network, ``-netdev user,id=user0`` with QEMU's defaults (10.0.2.0/24), on hub 0."""
    return parse_user_netdev(parse_qemuopts("user,id=user0"))


def default_netdevs() -> list[NetdevConfig]:
    """What ``vmlan run`` serves with no -netdev: what a QEMU guest gets by default (a user-mode
    network), on hub 0, behind one unix stream socket that any number of guests attach to."""
    return [default_user_netdev(), default_netdev()]


_WITH_VALUE = {"-netdev", "-object", "-hub"}


def parse_run_args(argv: list[str]) -> RunConfig:
    cfg = RunConfig()
    i = 0
    while i < len(argv):
        arg = argv[i]
        opt = "-" + arg.lstrip("-") if arg.startswith("--") and arg.lstrip("-") in {"netdev", "object", "hub"} else arg
        if opt in ("-v", "--verbose"):
            cfg.verbose += 1
            i += 1
            continue
        if opt in ("-q", "--quiet"):
            cfg.quiet = True
            i += 1
            continue
        if opt not in _WITH_VALUE:
            raise ConfigError(f"run: unrecognized option '{arg}'")
        if i + 1 >= len(argv):
            raise ConfigError(f"{opt}: requires an argument")
        text = argv[i + 1]
        i += 2
        try:
            if opt == "-netdev":
                cfg.netdevs.append(parse_netdev(text))
            elif opt == "-hub":
                hub = parse_hub(text)
                if hub.id in cfg.hubs:
                    raise ConfigError(f"Duplicate ID '{hub.id}' for hub")
                cfg.hubs[hub.id] = hub
            else:
                obj = parse_object(text)
                if isinstance(obj, NetemConfig):
                    cfg.netems.append(obj)
                else:
                    cfg.dumps.append(obj)
        except OptionError:
            raise
        except ConfigError as exc:
            raise OptionError(opt, text, str(exc)) from None
    if not cfg.netdevs:
        cfg.netdevs.extend(default_netdevs())
        cfg.is_default = True
    seen: set[str] = set()
    for nd in cfg.netdevs:
        if nd.id in seen:
            raise ConfigError(f"-netdev id={nd.id}: Duplicate ID '{nd.id}' for netdev")
        seen.add(nd.id)
    dump_ids: set[str] = set()
    for dump in cfg.dumps:
        if dump.id in dump_ids:
            raise ConfigError(f"-object id={dump.id}: attempt to add duplicate property '{dump.id}' to object")
        dump_ids.add(dump.id)
        if dump.netdev not in seen:
            raise ConfigError(f"-object filter-dump,id={dump.id}: Device '{dump.netdev}' not found (netdev=)")
    netem_slots: set[tuple[str, str]] = set()
    for nc in cfg.netems:
        if nc.id in dump_ids:
            raise ConfigError(f"-object id={nc.id}: attempt to add duplicate property '{nc.id}' to object")
        dump_ids.add(nc.id)
        if nc.netdev not in seen:
            raise ConfigError(f"-object filter-netem,id={nc.id}: Device '{nc.netdev}' not found (netdev=)")
        for direction in ("rx", "tx"):
            if getattr(nc, direction):
                if (nc.netdev, direction) in netem_slots:
                    raise ConfigError(f"-object filter-netem,id={nc.id}: netdev '{nc.netdev}' already has "
                                      f"a filter-netem on {direction}")
                netem_slots.add((nc.netdev, direction))
    for nd in cfg.netdevs:
        cfg.hubs.setdefault(nd.hubid, HubConfig(nd.hubid))
    return cfg
