"""Domain <interface> parsing: libvirt 9.0.0's messages (checked against virsh's test and QEMU drivers)."""

from __future__ import annotations

import random
from ipaddress import ip_address

import pytest

from vmlan.config.libvirt import (
    GuestIP,
    Interface,
    LibvirtError,
    NotSupportedByVmlanError,
    PortForward,
    PortRange,
    SocketSource,
    parse_interface,
    parse_interfaces,
)
from vmlan.config.libvirt.mac import format_mac, generate_mac, parse_mac


def one(xml: str, **kwargs: object) -> Interface:
    return parse_interface(xml, **kwargs)  # type: ignore[arg-type]


ERRORS = [
    ("<interface type='mcast'><source address='230.0.0.1'/></interface>",
     "XML error: Missing required attribute 'port' in element 'source'"),
    ("<interface type='mcast'><source port='1'/></interface>",
     "XML error: Missing required attribute 'address' in element 'source'"),
    ("<interface type='mcast'><source address='230.0.0.1' port='abc'/></interface>",
     "XML error: Invalid value for attribute 'port' in element 'source': 'abc'. Expected integer value"),
    ("<interface type='mcast'></interface>", "XML error: interface type='mcast' requires a 'source' element"),
    ("<interface type='server'><source/></interface>",
     "XML error: Missing required attribute 'port' in element 'source'"),
    ("<interface type='udp'><source address='1.2.3.4' port='5'/></interface>",
     "XML error: '<local>' element missing for 'udp' socket interface"),
    ("<interface type='udp'><source address='1.2.3.4' port='5'><local port='6'/></source></interface>",
     "XML error: Missing required attribute 'address' in element 'local'"),
    ("<interface type='udp'><source address='1.2.3.4' port='5'><local address='1.1.1.1'/></source></interface>",
     "XML error: Missing required attribute 'port' in element 'local'"),
    ("<interface type='network'></interface>", "XML error: interface type='network' requires a 'source' element"),
    ("<interface type='network'><source/></interface>",
     "XML error: Missing required attribute 'network' in element 'source'"),
    ("<interface type='bridge'></interface>", "XML error: interface type='bridge' requires a 'source' element"),
    ("<interface type='bridge'><source/></interface>",
     "XML error: Missing required attribute 'bridge' in element 'source'"),
    ("<interface type='bogus'/>", "XML error: Invalid value for attribute 'type' in element 'interface': 'bogus'."),
    ("<interface type='user'><link state='sideways'/></interface>",
     "unsupported configuration: unknown interface link state 'sideways'"),
    ("<interface type='user'><link state='default'/></interface>",
     "unsupported configuration: unknown interface link state 'default'"),
    ("<interface type='user'><mtu size='abc'/></interface>", "XML error: malformed mtu size"),
    ("<interface type='user'><mtu size='-1'/></interface>", "XML error: malformed mtu size"),
    ("<interface type='user'><portForward><range start='1'/></portForward></interface>",
     "XML error: Missing required attribute 'proto' in element 'portForward'"),
    ("<interface type='user'><portForward proto='sctp'/></interface>",
     "XML error: Invalid value for attribute 'proto' in element 'portForward': 'sctp'."),
    ("<interface type='user'><portForward proto='tcp' address='bad'/></interface>",
     "XML error: Invalid address 'bad' in <portForward>"),
    ("<interface type='user'><portForward proto='tcp'><range start='0'/></portForward></interface>",
     "XML error: Invalid value for attribute 'start' in element 'range': Zero is not permitted"),
    ("<interface type='user'><portForward proto='tcp'><range start='5' exclude='maybe'/></portForward></interface>",
     "XML error: Invalid value for attribute 'exclude' in element 'range': 'maybe'."),
    ("<interface type='user'><portForward proto='tcp'><range end='5'/></portForward></interface>",
     "unsupported configuration: The 'range' of a 'portForward' requires 'start' attribute if 'end', 'to', or "
     "'exclude' is specified"),
    ("<interface type='user'><boot order='0'/></interface>",
     "XML error: Invalid value for attribute 'order' in element 'boot': Zero is not permitted"),
    ("<interface type='user'><boot/></interface>", "XML error: Missing required attribute 'order' in element 'boot'"),
    ("<interface type='user'><ip address='bad'/></interface>", "XML error: Invalid address 'bad' in <ip>"),
    ("<interface type='user'><ip/></interface>", "XML error: Missing required address in <ip>"),
    ("<interface type='user'><ip address='10.0.0.0' prefix='33'/></interface>",
     "XML error: Invalid prefix value '33' in <ip>"),
    ("<interface type='user'><ip address='10.0.0.0' prefix='x'/></interface>",
     "XML error: Invalid prefix value 'x' in <ip>"),
    ("<interface type='user'><ip address='10.0.0.0' family='ipv6'/></interface>",
     "XML error: Invalid address '10.0.0.0' in <ip>"),
    ("<interface type='user'><ip address='10.0.0.0' prefix='3'/></interface>",
     "XML error: invalid prefix, must be in range of 4-27"),
    ("<interface type='user'><ip address='fd00::' prefix='48'/></interface>",
     "unsupported configuration: unsupported IPv6 address prefix='48' - must be 64"),
    ("<interface type='user'><ip address='10.0.0.0'/><ip address='10.1.0.0'/></interface>",
     "unsupported configuration: Only one IPv4 address per interface is allowed"),
    ("<interface type='user'><ip address='10.0.0.0' peer='10.0.0.1'/></interface>",
     "unsupported configuration: Invalid attempt to set peer IP for guest"),
    ("<interface type='network'><source network='x'/><ip address='10.0.0.0'/></interface>",
     "unsupported configuration: Invalid attempt to set network interface guest-side IP route and/or address "
     "info, not supported by QEMU"),
    ("<interface type='user'><source><ip address='1.2.3.4'/></source></interface>",
     "unsupported configuration: Invalid attempt to set network interface host-side IP route and/or address info "
     "on interface of type 'user'. This is only supported on interfaces of type 'ethernet'"),
    ("<interface type='mcast'><source address='230.0.0.1' port='5'/><mtu size='1400'/></interface>",
     "unsupported configuration: setting MTU on interface type mcast is not supported yet"),
    ("<interface type='user'><target dev='x' managed='maybe'/></interface>",
     "XML error: Invalid value for attribute 'managed' in element 'target': 'maybe'."),
    ("<interface type='bridge'><source bridge='br0'/><target dev='x' managed='no'/></interface>",
     "unsupported configuration: unmanaged target dev is not supported on interfaces of type 'bridge'"),
    ("<interface type='user'><mac address='5:4:0:0:0:1'/></interface>",
     "XML error: expected unicast mac address, found multicast '5:4:0:0:0:1'"),
    ("<interface type='user'><mac address='11:22:33:44:55:66'/></interface>",
     "XML error: expected unicast mac address, found multicast '11:22:33:44:55:66'"),
    ("<interface type='user'><mac address='52:54:00:00:00:001'/></interface>",
     "XML error: unable to parse mac address '52:54:00:00:00:001'"),
    ("<interface type='user'><mac address='52-54-00-00-00-01'/></interface>",
     "XML error: unable to parse mac address '52-54-00-00-00-01'"),
    ("<interface type='user'><mac address=''/></interface>", "XML error: unable to parse mac address ''"),
    ("<interface type='user'><backend type='foo'/></interface>",
     "XML error: Invalid value for attribute 'type' in element 'backend': 'foo'."),
    ("<interface type='network'><source network='x'/><backend type='passt'/></interface>",
     "internal error: The 'passt' backend can only be used with interface type='user'"),
    ("<interface type='user'><model type='a b'/></interface>",
     "invalid argument: Model name contains invalid characters"),
    ("<interface type='bridge'><source bridge='br0'/><script path='/x'/></interface>",
     "unsupported configuration: scripts are not supported on interfaces of type bridge"),
    ("<interface type='user'><route address='10.0.0.0' prefix='8' gateway='10.0.0.1'/></interface>",
     "unsupported configuration: Invalid attempt to set network interface guest-side IP route, not supported by QEMU"),
    # vmlan's own refusals
    ("<interface type='direct'><source dev='eth0'/></interface>",
     "unsupported configuration: interface type 'direct' is not supported by vmlan"),
    ("<interface type='user'><bandwidth/></interface>",
     "unsupported configuration: <bandwidth> in <interface> is not supported by vmlan"),
    ("<interface type='mcast'><source address='230.0.0.1' port='-5'/></interface>",
     "XML error: Invalid value for attribute 'port' in element 'source': '-5'. Expected a port number 1-65535"),
    ("<interface type='user'><portForward proto='tcp'><range start='70000'/></portForward></interface>",
     "XML error: Invalid value for attribute 'start' in element 'range': '70000'. Expected a port number 1-65535"),
    ("<interface type='user'><portForward proto='tcp'><range start='10' end='5'/></portForward></interface>",
     "XML error: Invalid value for attribute 'end' in element 'range': '5'. Below start '10'"),
    ("<interface type='user'><portForward proto='tcp'><range start='65530' end='65535' to='65531'/></portForward>"
     "</interface>",
     "XML error: Invalid value for attribute 'to' in element 'range': '65531'. Ports 65530-65535 would be forwarded "
     "beyond 65535"),
    ("<interface type='network'><source network='n'/><portForward proto='tcp'/></interface>",
     "unsupported configuration: <portForward> is only supported on interfaces of type 'user', not 'network'"),
    ("<interface type='ethernet'><source><ip address='1.2.3.4'/></source></interface>",
     "unsupported configuration: host-side <ip>/<route> in <source> is not supported by vmlan"),
]


@pytest.mark.parametrize(("xml", "message"), ERRORS)
def test_error_messages(xml: str, message: str) -> None:
    with pytest.raises(LibvirtError) as err:
        one(xml)
    assert str(err.value) == message


def test_missing_type_is_user_and_mac_is_generated_from_the_rng() -> None:
    net = one("<interface/>", rng=random.Random(7))
    assert net.type == "user" and net.mac_generated
    assert net.mac == format_mac(generate_mac(random.Random(7)))
    assert net.mac.startswith("52:54:00:")
    assert net == Interface("user", net.mac)  # mac_generated is not part of equality


def test_mac_is_canonical_lower_case_and_trailing_blank_is_accepted() -> None:
    assert one("<interface><mac address='4:54:0:AB:cd:1 junk'/></interface>").mac == "04:54:00:ab:cd:01"
    assert parse_mac("52:54:00:00:00:01:") is None
    assert parse_mac("52:54:00:00:00") is None
    assert parse_mac("0x:54:00:00:00:01") is None


def test_auto_target_names_are_dropped_on_define_and_kept_as_assigned_when_live() -> None:
    for name in ("vnet7", "vif3.0", "macvtap0", "macvlan2"):
        xml = f"<interface type='network'><source network='default'/><target dev='{name}'/></interface>"
        assert one(xml).target is None and one(xml).assigned_target is None
        live = one(xml, live=True)
        assert live.target is None and live.assigned_target == name
        assert f"<target dev='{name}'/>" in live.to_xml()
        assert "<target" not in live.to_xml(inactive=True)
    own = one("<interface type='network'><source network='default'/><target dev='tap-a'/></interface>")
    assert own.target == "tap-a"
    unmanaged = one("<interface type='ethernet'><target dev='vnet9' managed='no'/></interface>")
    assert unmanaged.target == "vnet9" and "<target dev='vnet9' managed='no'/>" in unmanaged.to_xml(inactive=True)


def test_assigned_target_is_written_until_inactive() -> None:
    net = one("<interface type='bridge'><source bridge='br0'/></interface>").with_assigned_target("vnet0")
    assert "<target dev='vnet0'/>" in net.to_xml()
    assert "<target" not in net.to_xml(inactive=True)


def test_aliases_other_than_user_aliases_are_dropped_on_define() -> None:
    assert one("<interface><alias name='ua-x_1'/></interface>").alias == "ua-x_1"
    assert one("<interface><alias name='net0'/></interface>").alias is None
    assert one("<interface><alias name='ua-bad.char'/></interface>").alias is None
    assert one("<interface><alias name='net0'/></interface>", live=True).alias == "net0"


def test_models_are_matched_case_insensitively() -> None:
    assert one("<interface><model type='VirtIO'/></interface>").model == "virtio"
    assert one("<interface><model type='am79c973'/></interface>").model == "Am79C973"
    assert one("<interface><model type='my_nic-2'/></interface>").model == "my_nic-2"
    assert one("<interface><model type=''/></interface>").model is None  # virXPathString: empty is absent
    assert one("<interface><model type='e1000'/><model type='virtio'/></interface>").model == "e1000"


def test_link_mtu_boot_and_sources() -> None:
    net = one("<interface type='udp'><source address='10.0.0.1' port='11115'><local address='10.0.0.2' port='11116'/>"
              "</source><link state='down'/><boot order='3'/></interface>")
    assert net.socket == SocketSource("10.0.0.1", 11115, "10.0.0.2", 11116)
    assert not net.link_up and net.boot_order == 3
    assert one("<interface><link state='up'/></interface>").link_up
    assert one("<interface><mtu size='0'/></interface>").mtu is None
    assert one("<interface><mtu size='1400'/></interface>").mtu == 1400
    assert one("<interface type='server'><source port='5558'/></interface>").socket == SocketSource(None, 5558)
    assert one("<interface type='server'><source address='' port='5'/></interface>").socket == SocketSource("", 5)


def test_user_ip_and_port_forwards() -> None:
    net = one("""<interface type='user'>
      <ip family='ipv4' address='172.17.2.0' prefix='24'/><ip address='2001:db8::' prefix='64'/>
      <portForward proto='tcp' address='127.0.0.1'><range start='2222' to='22'/><range/></portForward>
      <portForward proto='udp'/></interface>""")
    assert net.ips == (GuestIP(ip_address("172.17.2.0"), 24), GuestIP(ip_address("2001:db8::"), 64))
    assert net.port_forwards == (
        PortForward("tcp", ip_address("127.0.0.1"), None, (PortRange(2222, to=22),)),
        PortForward("udp"),
    )
    assert "<portForward proto='udp'/>" in net.to_xml()


def test_passt_backend_keeps_source_dev() -> None:
    net = one("<interface type='user'><source dev='eth0'/><backend type='passt'/></interface>")
    assert net.source_dev == "eth0" and net.backend == "passt"
    assert "<source dev='eth0'/>" in net.to_xml()
    assert one("<interface type='user'><source dev='eth0'/></interface>").source_dev is None


def test_placement_elements_are_ignored() -> None:
    net = one("<interface><address type='pci' slot='0x03'/><driver name='vhost'/><rom bar='off'/></interface>")
    assert "<address" not in net.to_xml() and "<driver" not in net.to_xml()


def test_domain_documents() -> None:
    doc = """<domain type='kvm'><name>g</name><devices>
      <interface type='user'><alias name='ua-a'/><boot order='1'/></interface>
      <disk type='file'><boot order='2'/></disk>
      <interface type='mcast'><source address='230.0.0.1' port='5558'/><boot order='3'/></interface>
    </devices></domain>"""
    nets = parse_interfaces(doc)
    assert [n.type for n in nets] == ["user", "mcast"]
    assert parse_interfaces("<domain><name>g</name></domain>") == ()
    with pytest.raises(LibvirtError, match="non unique alias detected: ua-a"):
        parse_interfaces("<domain><devices><interface><alias name='ua-a'/></interface>"
                         "<interface><alias name='ua-a'/></interface></devices></domain>")


@pytest.mark.parametrize("kind", ["vhostuser", "internal", "direct", "hostdev", "vdpa", "vds"])
def test_other_libvirt_types_are_refused_by_name(kind: str) -> None:
    with pytest.raises(NotSupportedByVmlanError, match=f"^unsupported configuration: interface type '{kind}' is not"):
        one(f"<interface type='{kind}'/>")
