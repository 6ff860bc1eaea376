"""Interfaces -> QEMU argv, in the shape of libvirt's tests/qemuxml2argvdata/net-*.args."""

from __future__ import annotations

import re

import pytest

from vmlan.config.libvirt import (
    Interface,
    LibvirtError,
    NeedsNetworkError,
    format_args,
    parse_args,
    parse_interface,
    parse_interfaces,
    qemu_args,
    tap_fd_resolver,
)
from vmlan.config.libvirt.qemu import MAX_HOSTFWD, shell_quote
from vmlan.config.qemuopts import parse_qemuopts


def args(xml: str, **kwargs: object) -> list[str]:
    return qemu_args([parse_interface(xml)], **kwargs)  # type: ignore[arg-type]


def test_libvirt_net_user_and_sockets() -> None:
    mac = "<mac address='00:11:22:33:44:55'/>"
    assert args(f"<interface type='user'>{mac}<model type='rtl8139'/></interface>") == [
        "-netdev", "user,id=hostnet0", "-device", "rtl8139,netdev=hostnet0,id=net0,mac=00:11:22:33:44:55"]
    assert args(f"<interface type='mcast'>{mac}<source address='192.0.0.1' port='5558'/></interface>")[1] == \
        "socket,mcast=192.0.0.1:5558,id=hostnet0"
    assert args(f"<interface type='server'>{mac}<source address='192.168.0.1' port='5558'/></interface>")[1] == \
        "socket,listen=192.168.0.1:5558,id=hostnet0"
    assert args(f"<interface type='client'>{mac}<source address='192.168.0.1' port='5558'/></interface>")[1] == \
        "socket,connect=192.168.0.1:5558,id=hostnet0"
    assert args(f"<interface type='udp'>{mac}<source address='192.168.10.1' port='5555'><local address="
                "'192.168.10.1' port='5556'/></source></interface>")[1] == \
        "socket,udp=192.168.10.1:5555,localaddr=192.168.10.1:5556,id=hostnet0"


def test_ids_count_by_position_and_user_aliases_replace_them() -> None:
    nets = parse_interfaces("<domain><devices><interface/><interface><alias name='ua-b'/></interface><interface/>"
                            "</devices></domain>")
    argv = qemu_args(nets)
    assert [a.split(",id=")[-1].split(",")[0] for a in argv[1::2]] == [
        "hostnet0", "net0", "hostua-b", "ua-b", "hostnet2", "net2"]


def test_default_resolver_needs_a_network() -> None:
    with pytest.raises(NeedsNetworkError) as err:
        args("<interface type='network'><source network='default'/></interface>")
    assert str(err.value) == ("interface 0 of type 'network' (network 'default') needs a running network: "
                              "no resolver attaches it")
    with pytest.raises(NeedsNetworkError, match="type 'bridge' \\(bridge 'br0'\\)"):
        args("<interface type='bridge'><source bridge='br0'/></interface>")
    with pytest.raises(NeedsNetworkError, match="type 'ethernet' needs"):
        args("<interface type='ethernet'/>")


def test_pluggable_resolver() -> None:
    seen: list[tuple[str, int]] = []

    def resolver(net: Interface, index: int) -> str:
        seen.append((net.network or "", index))
        return f"stream,server=off,addr.type=unix,addr.path=/run/vmlan/{net.network}.sock"

    nets = parse_interfaces("<domain><devices><interface type='user'/><interface type='network'><source "
                            "network='lab'/></interface></devices></domain>")
    argv = qemu_args(nets, resolver=resolver)
    assert argv[5] == "stream,server=off,addr.type=unix,addr.path=/run/vmlan/lab.sock,id=hostnet1"
    assert seen == [("lab", 1)]
    assert qemu_args(nets * 2, resolver=tap_fd_resolver(10))[5::8] == ["tap,fd=10,id=hostnet1", "tap,fd=11,id=hostnet3"]


def test_device_options() -> None:
    argv = args("<interface><mac address='52:54:00:00:00:01'/><model type='virtio'/><boot order='2'/>"
                "<mtu size='1400'/></interface>")
    assert argv == ["-netdev", "user,mtu=1400,id=hostnet0",
                    "-device", "virtio-net-pci,host_mtu=1400,netdev=hostnet0,id=net0,mac=52:54:00:00:00:01,bootindex=2"]
    assert args("<interface><model type='virtio-non-transitional'/></interface>")[3].startswith(
        "virtio-net-pci-non-transitional,netdev=")
    assert args("<interface><model type='e1000e'/></interface>", default_model="virtio")[3].startswith("e1000e,")
    assert args("<interface/>", default_model="virtio")[3].startswith("virtio-net-pci,")
    assert args("<interface><mac address='52:54:00:00:00:01'/><link state='down'/></interface>")[3] == \
        "rtl8139,netdev=hostnet0,id=net0,mac=52:54:00:00:00:01"


def test_null_is_a_nic_with_no_backend() -> None:
    assert args("<interface type='null'><mac address='52:54:00:22:c9:42'/></interface>") == [
        "-device", "rtl8139,id=net0,mac=52:54:00:22:c9:42"]


def test_user_ip_and_hostfwd_parse_as_vmlan_user_options() -> None:
    argv = args("""<interface type='user'><ip address='10.0.3.0' prefix='24'/>
      <portForward proto='tcp' address='127.0.0.1'>
        <range start='8000' end='8010' to='80'/><range start='8002' end='8008' exclude='yes'/>
        <range start='8001'/><range start='9000' to='9999'/>
      </portForward></interface>""")
    pairs = parse_qemuopts(argv[1])
    fwds = [v for k, v in pairs if k == "hostfwd"]
    assert fwds == ["tcp:127.0.0.1:8000-:80", "tcp:127.0.0.1:8001-:81", "tcp:127.0.0.1:8009-:89",
                    "tcp:127.0.0.1:8010-:90", "tcp:127.0.0.1:9000-:9999"]
    assert ("net", "10.0.3.0/24") in pairs and pairs[0] == ("type", "user")
    from vmlan.config.usernet import parse_user_netdev

    user = parse_user_netdev([(k, v) for k, v in pairs if k != "type"])
    assert [(f.host_port, f.guest_port) for f in user.hostfwd] == [(8000, 80), (8001, 81), (8009, 89), (8010, 90),
                                                                   (9000, 9999)]


@pytest.mark.parametrize(("forward", "message"), [
    ("<portForward proto='tcp'/>", "without <range> (every port) cannot be a hostfwd rule"),
    ("<portForward proto='tcp' dev='eth0'><range start='1'/></portForward>", "dev='eth0'> is not supported"),
    ("<portForward proto='tcp' address='::1'><range start='1'/></portForward>", "is IPv6"),
    ("<portForward proto='udp'><range start='1' end='2000'/></portForward>", f"more than {MAX_HOSTFWD} ports"),
])
def test_hostfwd_refusals(forward: str, message: str) -> None:
    with pytest.raises(LibvirtError, match=re.escape(message)):
        args(f"<interface type='user'>{forward}</interface>")


def test_commas_in_values_are_doubled() -> None:
    assert args("<interface type='client'><source address='a,b' port='1'/></interface>")[1] == \
        "socket,connect=a,,b:1,id=hostnet0"


def test_args_file_format_round_trips() -> None:
    argv = ["-netdev", "user,id=hostnet0", "-device", "e1000,netdev=hostnet0", "-name", "it's a test", "-S"]
    text = format_args(argv)
    assert text == ("-netdev user,id=hostnet0 \\\n-device e1000,netdev=hostnet0 \\\n"
                    "-name 'it'\\''s a test' \\\n-S\n")
    assert parse_args(text) == argv
    assert shell_quote("") == "''" and shell_quote("a=b,c") == "a=b,c"
