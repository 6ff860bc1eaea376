"""The virsh-like commands of ``vmlan``: clients of the daemon's API over its unix socket.

Output and messages are virsh's (see virsh.py); an error is one line on stderr, ``error: <message>``,
and exit status 1, as virsh; a usage error exit status 2 (``vmlan: ...``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmlan.control import virsh
from vmlan.control.client import Client, ClientError, seg
from vmlan.control.paths import socket_path

USAGE = """\
vmlan daemon [--state-dir DIR] [--runtime-dir DIR] [--socket PATH] [--auto-mode auto|rootless]
                                                 run the daemon (networks, API on a unix socket)
virsh-like commands (a client of the daemon; --socket PATH or $VMLAN_SOCKET picks another daemon):
  net-list [--all|--inactive] [--name|--uuid]    net-info NETWORK          net-dumpxml NETWORK
  net-define FILE [--mode=auto|rootless|privileged]   net-create FILE [--mode=...]
  net-start NETWORK   net-destroy NETWORK   net-undefine NETWORK   net-autostart NETWORK [--disable]
  net-dhcp-leases NETWORK [--mac MAC]
  attach FILE                  set up a domain's (or one <interface>'s) interfaces, print QEMU's arguments
  detach NETWORK TARGET        undo one attached interface
  domxml-to-native qemu-argv FILE                the arguments alone, nothing set up
QEMU monitor equivalents:
  monitor [NETWORK|NETDEV] 'COMMAND'             info network | info usernet | hostfwd_add ... |
                                                 hostfwd_remove ... | netdev_add ... | netdev_del ID |
                                                 set_link NAME on|off
  hostfwd_add [NETWORK|NETDEV] [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport
  hostfwd_remove [NETWORK|NETDEV] [tcp|udp]:[hostaddr]:hostport
  netdev_add OPTS [--network NETWORK]   netdev_del ID   set_link NAME on|off
gvisor-tap-vsock/passt-style tools:
  net-forwards NETWORK        net-expose NETWORK [tcp|udp]:[hostaddr]:hostport:guestaddr:guestport
  net-unexpose NETWORK [tcp|udp]:[hostaddr]:hostport
  net-dns NETWORK             net-dns-add NETWORK NAME IP       net-dns-remove NETWORK NAME [IP]
  net-mac-table NETWORK       net-status NETWORK                stats
  events [--limit N]          server-sent events as lines: KIND JSON
web dashboard:
  dashboard [--listen 127.0.0.1:8470]   the daemon's page on a loopback port; prints its URL with a token
"""


class UsageError(Exception):
    pass


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise ClientError(f"Failed to open file '{path}': {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ClientError(f"Failed to read file '{path}': not UTF-8 text") from None


def _flags(args: list[str], known: dict[str, bool]) -> tuple[list[str], dict[str, str | bool]]:
    """Split ``--flag``/``--opt=value``/``--opt value`` (known maps name -> takes a value)."""
    pos: list[str] = []
    opts: dict[str, str | bool] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--") and len(a) > 2:
            name, eq, value = a[2:].partition("=")
            if name not in known:
                raise UsageError(f"command does not support option --{name}")
            if known[name]:
                if not eq:
                    i += 1
                    if i >= len(args):
                        raise UsageError(f"option --{name} needs a value")
                    value = args[i]
                opts[name] = value
            else:
                opts[name] = True
        else:
            pos.append(a)
        i += 1
    return pos, opts


def _one(pos: list[str], what: str = "NETWORK") -> str:
    if len(pos) != 1:
        raise UsageError(f"expects one {what}")
    return pos[0]


def _fwd_key(text: str) -> tuple[str, str, int]:
    parts = text.split(":")
    if len(parts) == 2:
        parts = ["tcp", *parts]
    if len(parts) != 3 or parts[0] not in ("tcp", "udp") or not parts[2].isdigit():
        raise UsageError(f"expects [tcp|udp]:[hostaddr]:hostport (got '{text}')")
    return parts[0], parts[1], int(parts[2])


def run_command(cmd: str, args: list[str], client: Client, out: Callable[[str], object]) -> None:
    """Run one command; raises ClientError (the daemon's error) or UsageError."""
    if cmd == "net-list":
        pos, opts = _flags(args, {"all": False, "inactive": False, "name": False, "uuid": False,
                                  "persistent": False, "transient": False, "autostart": False,
                                  "no-autostart": False})
        if pos:
            raise UsageError("takes no arguments")
        nets = client.request("GET", "/networks")
        if opts.get("inactive"):
            nets = [n for n in nets if not n["active"]]
        elif not opts.get("all"):
            nets = [n for n in nets if n["active"]]
        for flag, key, want in (("persistent", "persistent", True), ("transient", "persistent", False),
                                ("autostart", "autostart", True), ("no-autostart", "autostart", False)):
            if opts.get(flag):
                nets = [n for n in nets if bool(n[key]) == want]
        if opts.get("name") or opts.get("uuid"):
            text = "".join(f"{n['uuid'] if opts.get('uuid') else n['name']}\n" for n in nets)
            out(virsh.command_output(text))
        else:
            out(virsh.command_output(virsh.net_list(nets)))
    elif cmd in ("net-define", "net-create"):
        pos, opts = _flags(args, {"mode": True, "file": True})
        path = str(opts.get("file") or _one(pos, "FILE"))
        xml = _read(path)
        url = "/networks" if cmd == "net-define" else "/networks/create"
        net = client.request("POST", url, {"xml": xml, "mode": opts.get("mode", "auto"), "file": path})
        verb = "defined" if cmd == "net-define" else "created"
        out(virsh.command_output(f"Network {net['name']} {verb} from {path}\n"))
    elif cmd == "net-start":
        name = _one(_flags(args, {})[0])
        client.request("POST", f"/networks/{seg(name)}/start")
        out(virsh.command_output(f"Network {name} started\n"))
    elif cmd == "net-destroy":
        name = _one(_flags(args, {})[0])
        client.request("POST", f"/networks/{seg(name)}/destroy")
        out(virsh.command_output(f"Network {name} destroyed\n"))
    elif cmd == "net-undefine":
        name = _one(_flags(args, {})[0])
        client.request("DELETE", f"/networks/{seg(name)}")
        out(virsh.command_output(f"Network {name} has been undefined\n"))
    elif cmd == "net-autostart":
        pos, opts = _flags(args, {"disable": False})
        name = _one(pos)
        client.request("PUT", f"/networks/{seg(name)}/autostart", {"autostart": not opts.get("disable")})
        verb = "unmarked" if opts.get("disable") else "marked"
        out(virsh.command_output(f"Network {name} {verb} as autostarted\n"))
    elif cmd == "net-info":
        name = _one(_flags(args, {})[0])
        out(virsh.command_output(virsh.net_info(client.request("GET", f"/networks/{seg(name)}"))))
    elif cmd == "net-dumpxml":
        pos, opts = _flags(args, {"inactive": False})
        name = _one(pos)
        doc = client.request("GET", f"/networks/{seg(name)}/xml", query={"inactive": bool(opts.get("inactive"))})
        out(virsh.command_output(doc["xml"]))
    elif cmd == "net-dhcp-leases":
        pos, opts = _flags(args, {"mac": True})
        name = _one(pos)
        leases = client.request("GET", f"/networks/{seg(name)}/leases", query={"mac": opts.get("mac")})
        out(virsh.command_output(virsh.dhcp_leases(leases)))
    elif cmd == "attach":
        path = _one(_flags(args, {})[0], "FILE")
        result = client.request("POST", "/attach", {"xml": _read(path)})
        out(" ".join(_shell(a) for a in result["argv"]) + "\n")
    elif cmd == "detach":
        pos = _flags(args, {})[0]
        if len(pos) != 2:
            raise UsageError("expects NETWORK TARGET")
        client.request("DELETE", f"/networks/{seg(pos[0])}/attachments/{seg(pos[1])}")
        out(virsh.command_output(f"Interface {pos[1]} detached from network {pos[0]}\n"))
    elif cmd == "domxml-to-native":
        pos = _flags(args, {})[0]
        if len(pos) != 2 or pos[0] != "qemu-argv":
            raise UsageError("expects qemu-argv FILE")
        out(native(pos[1], client))
    elif cmd == "monitor":
        if len(args) == 1:
            target, command = None, args[0]
        elif len(args) == 2:
            target, command = args
        else:
            raise UsageError("expects [NETWORK|NETDEV] 'COMMAND'")
        text = client.request("POST", "/monitor", {"command": command, "target": target})["output"]
        if text:
            out(text if text.endswith("\n") else text + "\n")
    elif cmd in ("hostfwd_add", "hostfwd_remove"):
        if len(args) not in (1, 2):
            raise UsageError("expects [NETWORK|NETDEV] RULE")
        target = args[0] if len(args) == 2 else None
        text = client.request("POST", "/monitor", {"command": f"{cmd} {_quote(args[-1])}", "target": target})["output"]
        if text:
            out(text + "\n")
    elif cmd == "netdev_add":
        pos, opts = _flags(args, {"network": True})
        result = client.request("POST", "/netdevs", {"opts": _one(pos, "OPTS"), "network": opts.get("network")})
        out(result["output"] + "\n")
    elif cmd == "netdev_del":
        client.request("DELETE", f"/netdevs/{seg(_one(args, 'ID'))}")
    elif cmd == "set_link":
        if len(args) != 2 or args[1] not in ("on", "off"):
            raise UsageError("expects NAME on|off")
        client.request("POST", "/set_link", {"name": args[0], "up": args[1] == "on"})
    elif cmd == "net-forwards":
        name = _one(args)
        rows = [[f["proto"], f["host_addr"] or "*", str(f["bound_port"] or f["host_port"]), f["guest_addr"],
                 str(f["guest_port"])] for f in client.request("GET", f"/networks/{seg(name)}/forwards")]
        out(virsh.command_output(virsh.table(["Protocol", "Host address", "Host port", "Guest address",
                                              "Guest port"], rows)))
    elif cmd == "net-expose":
        if len(args) != 2:
            raise UsageError("expects NETWORK [tcp|udp]:[hostaddr]:hostport:guestaddr:guestport")
        parts = args[1].split(":")
        if len(parts) == 4:
            parts = ["tcp", *parts]
        if len(parts) != 5 or parts[0] not in ("tcp", "udp") or not parts[2].isdigit() or not parts[4].isdigit():
            raise UsageError(f"expects [tcp|udp]:[hostaddr]:hostport:guestaddr:guestport (got '{args[1]}')")
        added = client.request("POST", f"/networks/{seg(args[0])}/forwards", {
            "proto": parts[0], "host_addr": parts[1], "host_port": int(parts[2]), "guest_addr": parts[3],
            "guest_port": int(parts[4])})
        out(f"{added['proto']} {added['host_addr'] or '*'}:{added['bound_port']} -> "
            f"{added['guest_addr']}:{added['guest_port']}\n")
    elif cmd == "net-unexpose":
        if len(args) != 2:
            raise UsageError("expects NETWORK [tcp|udp]:[hostaddr]:hostport")
        proto, addr, port = _fwd_key(args[1])
        result = client.request("DELETE", f"/networks/{seg(args[0])}/forwards/{proto}/{port}",
                                query={"host_addr": addr})
        if not result["removed"]:
            raise ClientError(f"no forward {args[1]} on network '{args[0]}'")
    elif cmd == "net-dns":
        name = _one(args)
        records = client.request("GET", f"/networks/{seg(name)}/dns")["records"]
        rows = [[host, ip] for host, ips in records.items() for ip in ips]
        out(virsh.command_output(virsh.table(["Name", "Address"], rows)))
    elif cmd == "net-dns-add":
        if len(args) != 3:
            raise UsageError("expects NETWORK NAME IP")
        client.request("POST", f"/networks/{seg(args[0])}/dns", {"name": args[1], "ip": args[2]})
    elif cmd == "net-dns-remove":
        if len(args) not in (2, 3):
            raise UsageError("expects NETWORK NAME [IP]")
        result = client.request("DELETE", f"/networks/{seg(args[0])}/dns/{seg(args[1])}",
                                query={"ip": args[2] if len(args) == 3 else None})
        if not result["removed"]:
            raise ClientError(f"no DNS record '{args[1]}' added to network '{args[0]}'")
    elif cmd == "net-mac-table":
        name = _one(args)
        entries = client.request("GET", f"/networks/{seg(name)}/mac-table")
        rows = [[e["mac"], e["port"], f"{e['age']:.0f}"] for e in entries]
        out(virsh.command_output(virsh.table(["MAC address", "Port", "Age"], rows)))
    elif cmd in ("net-status", "stats"):
        import json

        data = client.request("GET", f"/networks/{seg(_one(args))}/status" if cmd == "net-status" else "/stats")
        out(json.dumps(data, indent=2, sort_keys=True) + "\n")
    elif cmd == "events":
        import json

        _pos, opts = _flags(args, {"limit": True})
        limit = int(str(opts["limit"])) if "limit" in opts else None
        for kind, data in client.events(limit):
            out(f"{kind} {json.dumps(data, sort_keys=True)}\n")
            sys.stdout.flush()
    elif cmd == "dashboard":
        from vmlan.control.dashboard import proxy

        pos, opts = _flags(args, {"listen": True})
        if pos:
            raise UsageError("takes no arguments")
        try:
            proxy.parse_listen(str(opts.get("listen", proxy.DEFAULT_LISTEN)))
        except proxy.ListenError as exc:
            raise UsageError(str(exc)) from None
        client.request("GET", "/version")  # the daemon is there and answers, else one line and exit 1
        try:
            proxy.run(str(opts.get("listen", proxy.DEFAULT_LISTEN)), client.path, out)
        except proxy.ProxyError as exc:
            raise ClientError(str(exc)) from None
    else:
        raise UsageError(f"unknown command '{cmd}'")


def native(path: str, client: Client | None) -> str:
    """domxml-to-native qemu-argv: local when no interface needs a network, else the daemon's answer."""
    from vmlan.config.libvirt import LibvirtError, NeedsNetworkError, parse_interfaces, qemu_args

    xml = _read(path)
    try:
        argv = qemu_args(parse_interfaces(xml, docname=path))
    except NeedsNetworkError:
        if client is None:
            raise
        argv = client.request("POST", "/domxml-to-native", {"xml": xml})["argv"]
    except LibvirtError as exc:
        raise ClientError(str(exc)) from None
    return " ".join(_shell(a) for a in argv) + "\n"


def _shell(arg: str) -> str:
    from vmlan.config.libvirt.qemu import shell_quote

    return shell_quote(arg)


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


COMMANDS = frozenset({
    "net-list", "net-define", "net-create", "net-start", "net-destroy", "net-undefine", "net-autostart",
    "net-info", "net-dumpxml", "net-dhcp-leases", "attach", "detach", "domxml-to-native", "monitor",
    "hostfwd_add", "hostfwd_remove", "netdev_add", "netdev_del", "set_link", "net-forwards", "net-expose",
    "net-unexpose", "net-dns", "net-dns-add", "net-dns-remove", "net-mac-table", "net-status", "stats", "events",
    "dashboard",
})


def main(cmd: str, args: list[str], sock: str | None = None) -> int:
    client = Client(Path(sock) if sock else socket_path())
    try:
        run_command(cmd, args, client, sys.stdout.write)
    except UsageError as exc:
        sys.stderr.write(f"vmlan {cmd}: {exc} (try 'vmlan --help')\n")
        return 2
    except ClientError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return 1
    except BrokenPipeError:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    sys.stdout.flush()
    return 0


__all__ = ["COMMANDS", "USAGE", "main", "native", "run_command"]
_Any = Any
