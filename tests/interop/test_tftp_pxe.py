"""Network boot of the test guest over TFTP: QEMU's NIC ROM (iPXE) with ``-boot n`` and no ``-kernel``,
on vmlan's user stack (``vmlan run -netdev user,tftp=DIR,bootfile=boot.ipxe``, the guest attached by a
unix stream socket) and, as the reference, on QEMU's own ``-netdev user,tftp=DIR,bootfile=boot.ipxe``.

What a user would do: DIR holds the kernel, the initramfs and an iPXE script; ``bootfile=`` names the
script. iPXE's DHCP gets the BOOTP file field (and option 67) with siaddr = the gateway, fetches
``tftp://10.0.2.2/boot.ipxe``, sees ``#!ipxe`` and runs it; the script's ``kernel`` and ``initrd``
names are relative URIs, so they come from the same server by TFTP too::

    #!ipxe
    kernel vmlinuz console=ttyS0 quiet panic=-1 vmlan_boot=pxe
    initrd initrd.img
    boot

The same assertions on both stacks: the guest reaches the harness's ready marker (iPXE prints nothing on
the serial console: only the kernel does), runs on the kernel command line of the script, leases
10.0.2.15 by DHCP with siaddr and the boot file of the stack, pings the gateway, fetches the initramfs
again by busybox tftp and gets its checksum; and the capture of the guest's link (``filter-dump``) shows
iPXE's DHCP and its three TFTP read requests (blksize and tsize asked for), each transfer ending with an
acknowledged short block.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from guest import GuestImage
from guest.harness import KERNEL_APPEND, NETDEV_ID, QEMU, Guest, netdev_option
from vmlan.wire.tftp import OP_ACK, OP_DATA, OP_OACK, OP_RRQ, TftpOack, TftpRequest, option_map

pytestmark = pytest.mark.guest

BOOTFILE = "boot.ipxe"
SCRIPT = f"""#!ipxe
kernel vmlinuz {KERNEL_APPEND} vmlan_boot=pxe
initrd initrd.img
boot
"""
UDHCPC = "timeout 60 udhcpc -i eth0 -f -q -n -t 6 -T 3"
LEASE_VARS = "ip mask router dns serverid siaddr boot_file"
BOOT_TIMEOUT = 420  # iPXE in TCG fetches ~16 MB at one block per round trip; the machine may be loaded
MAC = "52:54:00:12:34:77"


class PxeGuest(Guest):
    """The harness's guest booted from the network: the NIC keeps QEMU's default option ROM (iPXE,
    Debian's ipxe-qemu), ``-boot n``, and no ``-kernel``/``-initrd``/``-append``. Everything else
    (console, commands, close) is the harness's."""

    def __init__(self, name: str, netdev_args: Sequence[str] | str, mac: str, workdir: Path, image: GuestImage,
                 extra_qemu_args: Sequence[str] = ()) -> None:
        super().__init__(name, netdev_args, mac, workdir, image)
        qemu = [
            QEMU, "-name", name,
            "-accel", "tcg", "-cpu", "max", "-m", "256",
            "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
            "-serial", "stdio", "-no-reboot", "-boot", "n",
            "-netdev", netdev_option(netdev_args),
            "-device", f"virtio-net-pci,netdev={NETDEV_ID},mac={self.mac}",
            *extra_qemu_args,
        ]  # fmt: skip
        self.argv = ["setpriv", "--pdeathsig", "TERM", "--", *qemu] if shutil.which("setpriv") else qemu


@dataclass(frozen=True)
class BootTree:
    root: Path
    initrd_sha256: str
    kernel_release: str
    sizes: dict[str, int]


@pytest.fixture
def boot_tree(guest_image: GuestImage, tmp_path: Path) -> BootTree:
    root = tmp_path / "tftp"
    root.mkdir()
    shutil.copyfile(guest_image.kernel, root / "vmlinuz")
    shutil.copyfile(guest_image.initrd, root / "initrd.img")
    (root / BOOTFILE).write_text(SCRIPT)
    manifest = json.loads((Path(guest_image.kernel).parent / "manifest.json").read_text())
    return BootTree(root, hashlib.sha256((root / "initrd.img").read_bytes()).hexdigest(), manifest["kernel_release"],
                    {p.name: p.stat().st_size for p in root.iterdir()})


# -- the capture -----------------------------------------------------------------------------------------------
@dataclass
class Transfer:
    """A TFTP read seen on the wire: the request, the block size in force, the file's end."""

    name: str
    options: dict[bytes, bytes]
    client_port: int
    blksize: int = 512
    size: int | None = None  # bytes up to the short block that ends the file
    last_block: int | None = None
    last_acked: bool = False
    start: float = 0.0  # capture time of the request
    end: float = 0.0  # and of the last frame of the transfer


@dataclass
class Capture:
    dhcp_replies: list[Any]  # scapy BOOTP of every DHCP reply to the guest
    transfers: list[Transfer]


def read_capture(path: Path) -> Capture:
    """DHCP replies and TFTP reads in a filter-dump file. Both stacks answer every transfer from port
    69, so the client's port names the transfer. Frames are sorted on raw bytes (a PXE boot is ~11k
    frames, nearly all DATA); only DHCP replies are dissected, by scapy."""
    from scapy.layers.dhcp import BOOTP
    from scapy.layers.l2 import Ether
    from scapy.utils import RawPcapReader

    replies: list[Any] = []
    transfers: list[Transfer] = []
    by_port: dict[int, Transfer] = {}
    with RawPcapReader(str(path)) as reader:
        for raw, meta in reader:
            frame = bytes(raw)
            when = meta.sec + meta.usec / 1e6
            if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
                continue
            udp = 14 + (frame[14] & 0x0F) * 4
            sport, dport = struct.unpack_from("!HH", frame, udp)
            payload = frame[udp + 8 :]
            if (sport, dport) == (67, 68):
                replies.append(Ether(frame)[BOOTP])
                continue
            if 69 not in (sport, dport) or len(payload) < 4:
                continue
            op, block = struct.unpack_from("!HH", payload)
            if dport == 69 and op == OP_RRQ:
                req = TftpRequest.parse(payload)
                new = Transfer(req.filename.decode(), option_map(req.options), sport, start=when)
                by_port[sport] = new
                transfers.append(new)
                continue
            found = by_port.get(dport if sport == 69 else sport)
            if found is None:
                continue
            t = found
            t.end = when
            if op == OP_OACK:
                t.blksize = int(option_map(TftpOack.parse(payload).options).get(b"blksize", b"512"))
            elif op == OP_DATA and len(payload) - 4 < t.blksize:
                t.last_block = block
                t.size = (block - 1) * t.blksize + len(payload) - 4  # no file here reaches block 65535
            elif op == OP_ACK and dport == 69 and t.last_block is not None and block == t.last_block:
                t.last_acked = True
    return Capture(replies, transfers)


# -- the test --------------------------------------------------------------------------------------------------
def lease_of(guest: Guest) -> dict[str, str]:
    out = guest.check(f'. /tmp/udhcpc.env && for v in {LEASE_VARS}; do eval echo "$v=\\$$v"; done')
    return dict(line.split("=", 1) for line in out.splitlines())


def start_on_vmlan(vmlan_run: Callable[..., Any], tmp_path: Path, tree: BootTree, pcap: Path) -> tuple[Any, list[str]]:
    sock = tmp_path / "vm0.sock"
    vm = vmlan_run("-netdev", f"user,id=u0,tftp={tree.root},bootfile={BOOTFILE}",
                   "-netdev", f"stream,id=vm0,server=on,addr.type=unix,addr.path={sock}",
                   "-object", f"filter-dump,id=d0,netdev=vm0,file={pcap},maxlen=1600")
    return vm, ["stream", "server=off", "addr.type=unix", f"addr.path={sock}"]


@pytest.mark.parametrize("stack", ["vmlan", "qemu"])
def test_ipxe_boots_the_test_guest_over_tftp(stack: str, guest_image: GuestImage, boot_tree: BootTree,
                                            vmlan_run: Callable[..., Any], tmp_path: Path) -> None:
    pcap = tmp_path / "guest.pcap"
    vm = None
    if stack == "vmlan":
        vm, netdev = start_on_vmlan(vmlan_run, tmp_path, boot_tree, pcap)
        extra: list[str] = []
    else:
        netdev = ["user", f"tftp={boot_tree.root}", f"bootfile={BOOTFILE}"]
        extra = ["-object", f"filter-dump,id=d0,netdev={NETDEV_ID},file={pcap},maxlen=1600"]
    with PxeGuest(f"pxe-{stack}", netdev, MAC, tmp_path, guest_image, extra) as g:
        g.wait_ready(timeout=BOOT_TIMEOUT)
        print(f"{stack}: network boot to the ready marker in {g.boot_seconds:.1f} s")
        cmdline = g.check("cat /proc/cmdline").strip()
        assert cmdline.startswith(f"{KERNEL_APPEND} vmlan_boot=pxe"), cmdline
        assert g.check("uname -r").strip() == boot_tree.kernel_release
        g.check(UDHCPC, timeout=90)
        lease = lease_of(g)
        assert lease == {"ip": "10.0.2.15", "mask": "24", "router": "10.0.2.2", "dns": "10.0.2.3",
                         "serverid": "10.0.2.2", "siaddr": "10.0.2.2", "boot_file": BOOTFILE}, lease
        g.check("ping -c 2 -W 5 10.0.2.2", timeout=60)
        g.check("timeout 120 tftp -g -r initrd.img -l /tmp/initrd.img -b 1428 10.0.2.2", timeout=150)
        assert g.check("sha256sum /tmp/initrd.img").split()[0] == boot_tree.initrd_sha256
    if vm is not None:
        vm.stop()
    cap = read_capture(pcap)
    # iPXE's DHCP: the reply names the script in the BOOTP file field, with the gateway as siaddr
    assert cap.dhcp_replies, "no DHCP reply to the guest in the capture"
    for reply in cap.dhcp_replies:
        assert reply.siaddr == "10.0.2.2" and reply.file.rstrip(b"\0") == BOOTFILE.encode(), reply.summary()
    for t in cap.transfers:
        print(f"{stack}: {t.name} {t.size} bytes, blksize {t.blksize}, {t.end - t.start:.2f} s")
    names = [t.name for t in cap.transfers]
    assert names[:3] == [BOOTFILE, "vmlinuz", "initrd.img"] and names[3:] == ["initrd.img"], names
    for t in cap.transfers:
        assert t.last_acked, f"{t.name}: the last block was never acknowledged ({t})"
        assert t.size == boot_tree.sizes[t.name], t
    for t in cap.transfers[:3]:  # iPXE asks for blksize and tsize
        assert b"blksize" in t.options and b"tsize" in t.options, t
        assert t.blksize > 512, t
