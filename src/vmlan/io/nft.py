"""The firewall of a privileged network: one nftables table of vmlan's own per network, nothing else.

libvirt puts every network's rules into shared chains, and before its nftables backend it inserted
them into iptables' own FORWARD/POSTROUTING chains, where they clash with Docker's, ufw's and
firewalld's: its users' most common complaint. vmlan never reads, changes or deletes anything it did
not create: each network gets ``table inet vmlan-<bridge>``, written whole in one ``nft -f -``
transaction (which first deletes a leftover table of the same name, so a daemon that died cannot leave
a stale copy behind) and deleted whole when the network stops. Nothing else in the ruleset moves.

The rules are libvirt's (src/network/network_nftables.c, libvirt >= 10.4), per ``<ip>`` of the network,
matching the bridge by name:

``forward`` chain (filter hook, priority filter), in this order
    traffic across the bridge (guest to guest, also seen here under br_netfilter) is accepted; traffic
    out of the bridge toward the subnet is accepted only when it belongs to a connection a guest started
    (nat) or always (route), and anything else into the bridge is rejected; traffic from the bridge is
    accepted from the subnet's own addresses (out of any interface, or only ``<forward dev>``) and
    anything else from the bridge (a spoofed source) is rejected.
``postrouting`` chain (nat hook, priority srcnat), nat only
    link-local multicast 224.0.0.0/24 and 255.255.255.255 are never masqueraded; TCP and UDP from the
    subnet to anywhere outside it are masqueraded to source ports ``<nat><port>`` (1024-65535: no guest
    gets a privileged source port that NFS-style checks trust), then every other protocol. With
    ``<nat><address start end>`` the source address is that range (SNAT) instead of the egress
    interface's. IPv6 subnets are routed, or masqueraded when ``<nat ipv6='yes'>``.

isolated (no ``<forward>``) gets the forward chain without the accept rules: guests reach each other
and the host's own addresses (DHCP, DNS), nothing beyond. ``open`` gets no table at all.

Rejects are libvirt's (an ICMP error, so a guest's connect fails at once rather than timing out). A
table of vmlan's own cannot override another table's verdict: a drop anywhere wins, so a host whose
FORWARD policy is DROP (Docker sets that) still blocks forwarding for vmlan's networks, as for
libvirt's.

Why ``nft`` is run as a program: the nftables kernel API is netlink messages carrying expression
bytecode; the only complete encoder is libnftables, whose Python binding (python3-nftables) ships with
nftables itself and is not on PyPI, so it cannot be installed into vmlan's environment, and pyroute2's
nftables support does not cover NAT statements. ``nft -f -`` gives the same single atomic transaction.
It runs in the calling thread's network namespace.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network

from vmlan.config.libvirt import Network
from vmlan.config.libvirt.network import NAT_PORTS

__all__ = [
    "FAMILY",
    "NftError",
    "apply_script",
    "delete_script",
    "find_nft",
    "forward_rules",
    "nat_rules",
    "run_nft",
    "table_name",
    "table_ruleset",
]

FAMILY = "inet"
TABLE_PREFIX = "vmlan-"
NFT_TIMEOUT = 30.0
LINK_LOCAL_MULTICAST_V4 = "224.0.0.0/24"
LINK_LOCAL_MULTICAST_V6 = "ff02::/16"
LIMITED_BROADCAST = "255.255.255.255"
_IDENT = re.compile(r"[A-Za-z0-9_.-]+")
_SBIN = ("/usr/sbin/nft", "/sbin/nft")

Subnet = IPv4Network | IPv6Network


class NftError(Exception):
    """nft refused a ruleset or could not run (one line: nft's own complaint)."""


def find_nft() -> str | None:
    """The nft program: on PATH, else in /usr/sbin or /sbin (often off a user's PATH)."""
    found = shutil.which("nft")
    if found:
        return found
    return next((p for p in _SBIN if os.access(p, os.X_OK)), None)


def table_name(bridge: str) -> str:
    """``vmlan-<bridge>``; a bridge name nft cannot spell as an identifier is written in hex."""
    if _IDENT.fullmatch(bridge):
        return TABLE_PREFIX + bridge
    return TABLE_PREFIX + "x" + bridge.encode("utf-8", "surrogateescape").hex()


def _quoted(name: str) -> str:
    if '"' in name or "\\" in name or not name.isprintable():
        raise NftError(f"interface name {name!r} cannot be written in an nftables rule")
    return f'"{name}"'


def _subnets(net: Network) -> list[Subnet]:
    out: list[Subnet] = []
    for ip in net.ips:
        try:
            out.append(ip.network)
        except ValueError:
            raise NftError(f"Invalid prefix or netmask for '{net.bridge}'") from None
    return out


def _fam(subnet: Subnet) -> str:
    return "ip" if subnet.version == 4 else "ip6"


def _routed(net: Network, subnet: Subnet) -> bool:
    """Whether a subnet's replies come back by routing (all of route, IPv6 of nat without ipv6='yes')."""
    fwd = net.forward
    if fwd is None:
        return False
    if fwd.mode == "route":
        return True
    return fwd.mode == "nat" and subnet.version == 6 and not (fwd.nat is not None and fwd.nat.ipv6)


def forward_rules(net: Network) -> list[str]:
    """The forward chain's rules (libvirt's guest_cross, guest_input, guest_output, in that order)."""
    if net.bridge is None:
        raise NftError(f"network '{net.name}' has no bridge name yet")
    br = _quoted(net.bridge)
    fwd = net.forward
    dev = _quoted(fwd.dev) if fwd is not None and fwd.dev else None
    forwarding = fwd is not None and fwd.mode in ("nat", "route")
    rules = [f"iifname {br} oifname {br} counter accept"]
    subnets = _subnets(net) if forwarding else []
    for subnet in subnets:
        src = f" iifname {dev}" if dev else ""
        state = "" if _routed(net, subnet) else " ct state related,established"
        rules.append(f"oifname {br} {_fam(subnet)} daddr {subnet}{src}{state} counter accept")
    rules.append(f"oifname {br} counter reject")
    for subnet in subnets:
        out = f" oifname {dev}" if dev else ""
        rules.append(f"iifname {br} {_fam(subnet)} saddr {subnet}{out} counter accept")
    rules.append(f"iifname {br} counter reject")
    return rules


def nat_rules(net: Network) -> list[str]:
    """The postrouting chain's rules of a nat network (empty for any other mode)."""
    fwd = net.forward
    if fwd is None or fwd.mode != "nat":
        return []
    nat = fwd.nat
    out = f" oifname {_quoted(fwd.dev)}" if fwd.dev else ""
    start, end = NAT_PORTS
    if nat is not None and nat.port_start is not None:
        start = nat.port_start
        end = nat.port_end if nat.port_end is not None else start
    ports = f":{start}" if start == end else f":{start}-{end}"
    rules: list[str] = []
    for subnet in _subnets(net):
        if _routed(net, subnet):
            continue
        fam = _fam(subnet)
        match = f"{fam} saddr {subnet}"
        multicast = LINK_LOCAL_MULTICAST_V4 if subnet.version == 4 else LINK_LOCAL_MULTICAST_V6
        rules.append(f"{match} {fam} daddr {multicast}{out} counter return")
        if subnet.version == 4:
            rules.append(f"{match} {fam} daddr {LIMITED_BROADCAST}{out} counter return")
        snat = None
        if subnet.version == 4 and nat is not None and nat.address_start is not None:
            snat = str(nat.address_start)
            if nat.address_end is not None and nat.address_end != nat.address_start:
                snat += f"-{nat.address_end}"
        for proto in ("tcp", "udp", None):
            head = f"meta l4proto {proto} " if proto else ""
            if snat is not None:
                action = f"snat ip to {snat}" + (ports if proto else "")
            else:
                action = "masquerade" + (f" to {ports}" if proto else "")
            rules.append(f"{head}{match} {fam} daddr != {subnet}{out} counter {action}")
    return rules


def _comment(net: Network) -> str:
    safe = "".join(c if c.isalnum() or c in "_.:-" else "_" for c in net.name)[:128]
    return f'"vmlan network {safe}"'


def _chain(name: str, head: str, rules: Iterable[str]) -> list[str]:
    return [f"\tchain {name} {{", f"\t\t{head}", *(f"\t\t{r}" for r in rules), "\t}"]


def table_ruleset(net: Network) -> str | None:
    """The whole ``table inet vmlan-<bridge> { ... }`` of a network, or None when it needs none (open)."""
    if net.forward is not None and net.forward.mode == "open":
        return None
    if net.forward is not None and net.forward.mode == "bridge":
        return None  # a host bridge: the host's own firewall applies, as in libvirt
    if net.bridge is None:
        raise NftError(f"network '{net.name}' has no bridge name yet")
    lines = [f"table {FAMILY} {table_name(net.bridge)} {{", f"\tcomment {_comment(net)}"]
    lines += _chain("forward", "type filter hook forward priority filter; policy accept;", forward_rules(net))
    nat = nat_rules(net)
    if nat:
        lines += _chain("postrouting", "type nat hook postrouting priority srcnat; policy accept;", nat)
    lines.append("}")
    return "\n".join(lines) + "\n"


def apply_script(net: Network) -> str | None:
    """An ``nft -f`` script that replaces the network's table (a leftover one included) atomically."""
    body = table_ruleset(net)
    if body is None:
        return None
    assert net.bridge is not None
    return delete_script(table_name(net.bridge)) + body


def delete_script(table: str) -> str:
    """Delete ``table`` whether or not it exists (declaring it first makes the delete always valid)."""
    return f"table {FAMILY} {table}\ndelete table {FAMILY} {table}\n"


async def run_nft(script: str, *, nft: str | None = None, timeout: float = NFT_TIMEOUT) -> None:
    """Feed ``script`` to ``nft -f -``; raise NftError with nft's complaint if it refuses."""
    program = nft or find_nft()
    if program is None:
        raise NftError("nft not found (apt-get install nftables)")
    try:
        proc = await asyncio.create_subprocess_exec(
            program, "-f", "-", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise NftError(f"cannot run {program}: {exc.strerror or exc}") from None
    try:
        _, err = await asyncio.wait_for(proc.communicate(script.encode()), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise NftError(f"{program} -f - did not finish within {timeout:g} s") from None
    if proc.returncode != 0:
        text = err.decode("utf-8", "replace").strip().splitlines()
        said = next((line.strip() for line in text if line.strip().startswith("Error")), text[0] if text else "")
        raise NftError(f"nft -f - failed (status {proc.returncode}): {said or 'no message'}")

