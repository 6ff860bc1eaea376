"""Text renderings of the monitor's ``info`` commands (QEMU HMP equivalents)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from vmlan.lan import Port

if TYPE_CHECKING:
    from vmlan.io.runtime import Runtime


def info_network(runtime: Runtime) -> str:
    """Like QEMU's ``info network``: each hub, then its ports with their peers and counters."""
    lines: list[str] = []
    for hub in runtime.hubs.values():
        lines.append(f"hub {hub.id}" + (" (switch)" if hub.kind == "switch" else ""))
        for nd in runtime.netdevs:
            if nd.cfg.hubid != hub.id:
                continue
            lines.append(f" \\ {nd.cfg.id}: type={nd.cfg.driver},{nd.describe()}")
            lines.extend(_port_lines(nd.ports))
    return "\n".join(lines)


def _port_lines(ports: Iterable[Port]) -> list[str]:
    out = []
    for port in ports:
        c = port.counters
        out.append(
            f"    {port.name}: {port.describe()}  rx {c.rx_frames} frames {c.rx_bytes} bytes {c.rx_dropped} dropped,"
            f" tx {c.tx_frames} frames {c.tx_bytes} bytes {c.tx_dropped} dropped"
        )
    return out
