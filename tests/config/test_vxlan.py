"""``-netdev vxlan``: what is accepted, the defaults, and a one-line error naming the option and value."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vmlan.config.errors import ConfigError
from vmlan.config.netdev import parse_netdev
from vmlan.config.qemu_args import guest_netdev
from vmlan.config.vxlan import VxlanNetdev


def test_unicast_defaults() -> None:
    nd = parse_netdev("vxlan,id=vx,vni=42,remote=10.99.0.1")
    assert nd == VxlanNetdev("vx", 42, "10.99.0.1")
    assert isinstance(nd, VxlanNetdev)
    assert nd.port == 4789 and nd.srcport is None and nd.ttl is None and not nd.multicast and not nd.ipv6
    assert nd.info == "vni=42,remote=10.99.0.1,port=4789"
    assert nd.driver == "vxlan"


def test_every_option() -> None:
    nd = parse_netdev("type=vxlan,id=vx,vni=0xffffff,remote=FD00::0001,local=fd00::2,dev=veth0,port=8472,"
                      "srcport=40000-40100,ttl=3,hubid=2")
    assert nd == VxlanNetdev("vx", 0xFFFFFF, "fd00::1", False, 2, "fd00::2", "veth0", 8472, (40000, 40100), 3)
    assert isinstance(nd, VxlanNetdev) and nd.ipv6
    assert parse_netdev("vxlan,id=v,vni=0,remote=[fd00::1]") == VxlanNetdev("v", 0, "fd00::1")


def test_multicast() -> None:
    nd = parse_netdev("vxlan,id=m,vni=7,group=239.1.1.1,dev=veth1,local=10.0.0.1")
    assert nd == VxlanNetdev("m", 7, "239.1.1.1", True, 0, "10.0.0.1", "veth1")
    assert isinstance(nd, VxlanNetdev)
    assert nd.info == "vni=7,group=239.1.1.1,local=10.0.0.1,dev=veth1,port=4789"
    assert parse_netdev("vxlan,id=m,vni=7,group=ff05::42,dev=eth0") == VxlanNetdev("m", 7, "ff05::42", True, dev="eth0")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vxlan,vni=1,remote=10.0.0.1", "Parameter 'id' is missing"),
        ("vxlan,id=v,remote=10.0.0.1", "Parameter 'vni' is missing (0..16777215)"),
        ("vxlan,id=v,vni=16777216,remote=10.0.0.1", "Parameter 'vni' expects a value in 0..16777215 (got '16777216')"),
        ("vxlan,id=v,vni=x,remote=10.0.0.1", "Parameter 'vni' expects a number (got 'x')"),
        ("vxlan,id=v,vni=1", "exactly one of remote= (unicast) or group= (multicast) is required"),
        ("vxlan,id=v,vni=1,remote=10.0.0.1,group=239.1.1.1",
         "exactly one of remote= (unicast) or group= (multicast) is required"),
        ("vxlan,id=v,vni=1,remote=host.example",
         "Parameter 'remote' expects an IPv4 or IPv6 address (got 'host.example')"),
        ("vxlan,id=v,vni=1,remote=239.1.1.1", "Parameter 'remote' must be a unicast address (got '239.1.1.1'"),
        ("vxlan,id=v,vni=1,remote=0.0.0.0", "Parameter 'remote' must be a unicast address (got '0.0.0.0'"),
        ("vxlan,id=v,vni=1,remote=fe80::1%eth0", "Parameter 'remote' does not take a %scope (use dev=)"),
        ("vxlan,id=v,vni=1,group=10.0.0.1", "Parameter 'group' must be a multicast address (got '10.0.0.1')"),
        ("vxlan,id=v,vni=1,group=ff05::1", "Parameter 'dev' is missing (an IPv6 group is joined on a named interface)"),
        ("vxlan,id=v,vni=1,remote=10.0.0.1,local=fd00::1",
         "Parameter 'local' must be an IPv4 address like remote= (got 'fd00::1')"),
        ("vxlan,id=v,vni=1,group=239.1.1.1,local=239.1.1.2", "Parameter 'local' must be a unicast address"),
        ("vxlan,id=v,vni=1,remote=10.0.0.1,port=0", "Parameter 'port' expects a value in 1..65535 (got '0')"),
        ("vxlan,id=v,vni=1,remote=10.0.0.1,srcport=5000", "Parameter 'srcport' expects LOW-HIGH (got '5000')"),
        ("vxlan,id=v,vni=1,remote=10.0.0.1,srcport=6000-5000",
         "Parameter 'srcport' expects LOW <= HIGH (got '6000-5000')"),
        ("vxlan,id=v,vni=1,remote=10.0.0.1,srcport=0-10", "Parameter 'srcport' expects a value in 1..65535 (got '0')"),
        ("vxlan,id=v,vni=1,remote=10.0.0.1,ttl=0", "Parameter 'ttl' expects a value in 1..255 (got '0')"),
        ("vxlan,id=v,vni=1,remote=10.0.0.1,dev=a-name-of-16-byte", "Parameter 'dev' expects an interface name"),
        ("vxlan,id=v,vni=1,remote=10.0.0.1,dstport=4789", "Invalid parameter 'dstport' for netdev type 'vxlan'"),
        ("vxlan,id=v,vni=1,vni=2,remote=10.0.0.1", "Parameter 'vni' given more than once"),
        ("vxlan,id=1x,vni=1,remote=10.0.0.1", "netdev"),
    ],
)
def test_bad_options(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_netdev(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_no_qemu_side() -> None:
    with pytest.raises(ValueError, match="QEMU has no vxlan netdev"):
        guest_netdev(parse_netdev("vxlan,id=v,vni=1,remote=10.0.0.1"))


def test_command_line_error_is_one_line_and_status_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "vmlan", "run", "-netdev", "vxlan,id=v,vni=99999999,remote=10.0.0.1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "vmlan: -netdev vxlan,id=v,vni=99999999,remote=10.0.0.1: "
        "Parameter 'vni' expects a value in 0..16777215 (got '99999999')"
    ]
