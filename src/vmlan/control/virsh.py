"""virsh's output, byte for byte: tables (tools/vsh-table.c), net-info rows, messages.

A table: each cell printed as " " + cell, every column but the last padded to its widest cell + 2;
a header row, then a line of dashes (each column's width + 3), then the rows. Non-printable
characters in a cell are shown as ``\\xNN`` (vshTableSafeEncode). virsh follows every command's
output with an empty line (vshCommandRun), which :func:`command_output` adds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence


def _safe(cell: str) -> str:
    if cell.isprintable():
        return cell
    return "".join(ch if ch.isprintable() else "".join(f"\\x{b:02x}" for b in ch.encode()) for ch in cell)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = [[_safe(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        out = []
        for i, cell in enumerate(row):
            out.append(" " + cell)
            if i < len(row) - 1:
                out.append(" " * (widths[i] - len(cell) + 2))
        return "".join(out) + "\n"

    text = line(cells[0]) + "-" * sum(w + 3 for w in widths) + "\n"
    return text + "".join(line(row) for row in cells[1:])


def yes_no(value: bool) -> str:
    return "yes" if value else "no"


def net_list(networks: Sequence[dict[str, object]]) -> str:
    rows = [[str(n["name"]), "active" if n["active"] else "inactive", yes_no(bool(n["autostart"])),
             yes_no(bool(n["persistent"]))] for n in sorted(networks, key=lambda n: str(n["name"]))]
    return table(["Name", "State", "Autostart", "Persistent"], rows)


def net_info(n: dict[str, object]) -> str:
    rows = [("Name:", str(n["name"])), ("UUID:", str(n["uuid"])), ("Active:", yes_no(bool(n["active"]))),
            ("Persistent:", yes_no(bool(n["persistent"]))), ("Autostart:", yes_no(bool(n["autostart"])))]
    if n.get("bridge"):
        rows.append(("Bridge:", str(n["bridge"])))
    return "".join(f"{label:<15s} {value}\n" for label, value in rows)


def expiry(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def dhcp_leases(leases: Sequence[dict[str, object]]) -> str:
    rows = []
    for lease in sorted(leases, key=lambda item: str(item["mac"])):
        rows.append([expiry(float(str(lease["expiry_time"]))), str(lease["mac"]), str(lease["protocol"]),
                     f"{lease['ip']}/{lease['prefix']}", str(lease.get("hostname") or "-"),
                     str(lease.get("client_id") or "-")])
    return table(["Expiry Time", "MAC address", "Protocol", "IP address", "Hostname", "Client ID or DUID"], rows)


def command_output(text: str) -> str:
    """What virsh prints for a command whose own output is ``text`` (the empty line after it)."""
    return text + "\n"
