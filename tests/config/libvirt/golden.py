"""How the golden files under data/ are produced from their inputs (shared by the tests and by
``python -m tests.config.libvirt.golden --update``, which rewrites the outputs for review).

    NAME.xml          an <interface> or <domain>  -> NAME.out.xml (dumpxml form) and NAME.args (QEMU argv)
    net-NAME.xml      a <network>                 -> net-NAME.out.xml (net-dumpxml) and net-NAME.live.xml
                                                     (after Network.live(), as the network driver defines it)
    *-invalid.xml     either kind                 -> *-invalid.err (the one-line error)

Generated values are fixed: the MAC generator is random.Random(NAME), a missing UUID is
UUID(int=1), and the bridges virbr0 and virbr1 count as taken by other networks for live().
"""

from __future__ import annotations

import random
import sys
import uuid
from pathlib import Path

from vmlan.config.libvirt import (
    LibvirtError,
    format_args,
    interfaces_to_xml,
    parse_interfaces,
    parse_network,
    qemu_args,
    tap_fd_resolver,
)

DATA = Path(__file__).parent / "data"
FIXED_UUID = uuid.UUID(int=1)
BRIDGES_IN_USE = ("virbr0", "virbr1")
OWN_BRIDGE = {"net-default": ()}  # the default network owns virbr0 itself


def inputs() -> list[Path]:
    return sorted(p for p in DATA.glob("*.xml") if not p.name.endswith((".out.xml", ".live.xml")))


def render(src: Path) -> dict[str, str]:
    """Output file name -> expected content for one input file."""
    name = src.name.removesuffix(".xml")
    text = src.read_bytes()
    is_net = name.startswith("net-")
    rng = random.Random(name)
    try:
        if is_net:
            net = parse_network(text, uuid_factory=lambda: FIXED_UUID)
            outputs = {
                f"{name}.out.xml": net.to_xml(),
                f"{name}.live.xml": net.live(OWN_BRIDGE.get(name, BRIDGES_IN_USE), rng=rng).to_xml(),
            }
        else:
            nets = parse_interfaces(text, rng=rng)
            outputs = {
                f"{name}.out.xml": interfaces_to_xml(nets),
                f"{name}.args": format_args(qemu_args(nets, resolver=tap_fd_resolver(3))),
            }
    except LibvirtError as exc:
        return {f"{name}.err": f"{exc}\n"}
    return outputs


def main() -> None:
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python -m tests.config.libvirt.golden --update")
    for src in inputs():
        for out, content in render(src).items():
            (DATA / out).write_text(content)
            print(out)


if __name__ == "__main__":
    main()
