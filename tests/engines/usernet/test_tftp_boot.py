"""tftp=DIR, bootfile= and tftp-server-name= on the stack: DHCP points a PXE ROM at the gateway, which
serves DIR over TFTP (port 69) to the guest that asks, confined to DIR."""

from __future__ import annotations

from pathlib import Path

from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.tftp import TFTP, TFTP_ACK, TFTP_DATA, TFTP_ERROR, TFTP_RRQ

from tests.engines.usernet.stacknet import GUEST, GUEST_MAC, HOST, StackNet, build_config, only
from vmlan.engines.usernet import UserStack
from vmlan.io.tftp_files import DirectoryFiles


def tftp_net(tmp_path: Path, options: str = "") -> StackNet:
    (tmp_path / "boot.ipxe").write_bytes(b"#!ipxe\nboot\n")
    (tmp_path / "big").write_bytes(bytes(range(256)) * 8)  # 2048 bytes: 4 blocks and an empty last one
    net = StackNet(cfg=build_config(f"tftp={tmp_path},bootfile=boot.ipxe,tftp-server-name=10.0.2.2{options}"))
    net.stack = UserStack(net.cfg, secret=b"k" * 16, tftp_files=DirectoryFiles(str(tmp_path)))
    return net


def test_dhcp_names_the_bootfile_and_the_server(tmp_path: Path) -> None:
    net = tftp_net(tmp_path)
    g = net.guest(dhcp=False)
    chaddr = bytes.fromhex(GUEST_MAC.replace(":", "")) + b"\0" * 10
    net.send(g.port, Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
             / UDP(sport=68, dport=67) / BOOTP(chaddr=chaddr, xid=5)
             / DHCP(options=[("message-type", "discover"), ("param_req_list", [1, 3, 66, 67]), "end"]))
    offer = only([f for f in net.frames() if f.haslayer(BOOTP)])
    assert offer[BOOTP].siaddr == HOST and offer[BOOTP].file.rstrip(b"\0") == b"boot.ipxe"
    opts = dict(o for o in offer[DHCP].options if isinstance(o, tuple))
    assert opts["tftp_server_name"] == b"10.0.2.2" and opts["boot-file-name"] == b"boot.ipxe"


def tftp_of(frame: Ether) -> TFTP:
    return TFTP(bytes(frame[UDP].payload))  # scapy dissects TFTP only toward port 69


def test_a_guest_fetches_a_file_over_tftp_from_the_gateway(tmp_path: Path) -> None:
    net = tftp_net(tmp_path)
    g = net.guest()
    net.send_ip(g, IP(src=GUEST, dst=HOST) / UDP(sport=2000, dport=69) / TFTP() / TFTP_RRQ(filename=b"big",
                                                                                           mode=b"octet"))
    got = b""
    for block in range(1, 6):
        data = only(net.frames())
        assert (data[IP].src, data[UDP].sport, data[UDP].dport) == (HOST, 69, 2000)
        msg = tftp_of(data)
        assert msg[TFTP_DATA].block == block
        got += bytes(msg[TFTP_DATA].payload)
        net.send_ip(g, IP(src=GUEST, dst=HOST) / UDP(sport=2000, dport=69) / TFTP() / TFTP_ACK(block=block))
    assert got == bytes(range(256)) * 8
    assert net.frames() == []


def test_a_path_out_of_the_directory_and_a_write_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret").write_text("outside")
    (root / "escape").symlink_to(tmp_path / "secret")
    net = tftp_net(root)
    g = net.guest()
    for sport, name in enumerate((b"../secret", b"big/../../secret", b"escape"), start=2001):
        net.send_ip(g, IP(src=GUEST, dst=HOST) / UDP(sport=sport, dport=69) / TFTP()
                    / TFTP_RRQ(filename=name, mode=b"octet"))
        assert tftp_of(only(net.frames()))[TFTP_ERROR].errorcode in (1, 2)
    net.send_ip(g, IP(src=GUEST, dst=HOST) / UDP(sport=2009, dport=69) / (b"\x00\x02" + b"x\0octet\0"))
    assert tftp_of(only(net.frames()))[TFTP_ERROR].errorcode == 2
