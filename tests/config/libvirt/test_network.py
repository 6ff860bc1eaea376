"""<network> parsing: libvirt 9.0.0's messages (checked against virsh's test driver and the network driver)."""

from __future__ import annotations

import dataclasses
import random
import uuid
from ipaddress import ip_address, ip_network

import pytest

from vmlan.config.libvirt import (
    DEFAULT_NETWORK_XML,
    DhcpRange,
    Forward,
    LibvirtError,
    Nat,
    Network,
    default_network_live_xml,
    parse_network,
)

U = uuid.UUID("81ff0d90-c91e-6742-64da-4a736edb9a9b")
IP24 = "<ip address='10.0.0.1' prefix='24'/>"


def net(body: str, name: str = "n") -> Network:
    return parse_network(f"<network><name>{name}</name><uuid>{U}</uuid>{body}</network>")


ERRORS = [
    ("<forward/>", "XML error: nat forwarding requested, but no IP address provided for network 'n'"),
    ("<forward mode='route'/>", "XML error: route forwarding requested, but no IP address provided for network 'n'"),
    ("<forward mode='bogus'/>", "unsupported configuration: unknown forwarding type 'bogus'"),
    ("<forward mode='bridge'/><bridge name='br0' stp='off'/>",
     "XML error: bridge delay/stp/zone options only allowed in route, nat, and isolated mode, not in bridge "
     "(network 'n')"),
    ("<bridge stp='on' delay='x'/>", "XML error: Invalid delay value in network 'n'"),
    ("<mac address='01:00:5e:00:00:01'/>",
     "XML error: Invalid multicast bridge mac address '01:00:5e:00:00:01' in network 'n'"),
    ("<mac address='zz'/>", "XML error: Invalid bridge mac address 'zz' in network 'n'"),
    ("<mtu size='x'/>", "XML error: Invalid mtu size 'x' in network 'n'"),
    ("<mtu size='9000'/><forward mode='bridge'/><bridge name='br0'/>",
     "XML error: mtu size only allowed in open, route, nat, and isolated mode, not in bridge (network 'n')"),
    ("<domain localOnly='maybe'/>", "XML error: Invalid value for attribute 'localOnly' in element 'domain': 'maybe'."),
    ("<dns enable='no'><host ip='1.2.3.4'><hostname>a</hostname></host></dns>",
     "XML error: Extra data in disabled network 'n'"),
    ("<dns enable='maybe'/>", "XML error: Invalid value for attribute 'enable' in element 'dns': 'maybe'."),
    ("<dns><forwarder/></dns>", "XML error: Invalid forwarder element, must contain at least one of addr or domain"),
    ("<dns><forwarder addr='bad'/></dns>", "XML error: Invalid forwarder IP address 'bad' in network 'n'"),
    ("<dns><host><hostname>a</hostname></host></dns>", "Missing IP address in network 'n' DNS HOST record"),
    ("<dns><host ip='1.2.3.4'/></dns>", "Missing hostname in network 'n' DNS HOST record"),
    ("<dns><host ip='x'><hostname>a</hostname></host></dns>", "Invalid IP address in network 'n' DNS HOST record"),
    ("<dns><txt name='a b' value='x'/></dns>", "prohibited character in DNS TXT record name 'a b' of network n"),
    ("<dns><txt name='ab'/></dns>", "missing required value attribute in DNS TXT record named 'ab' of network n"),
    ("<dns><txt value='ab'/></dns>", "missing required name attribute in DNS TXT record of network n"),
    ("<dns><srv service='name'/></dns>",
     "missing required protocol attribute in DNS SRV record 'name' of network 'n'"),
    ("<dns><srv protocol='tcp'/></dns>", "missing required service attribute in DNS SRV record of network 'n'"),
    ("<dns><srv service='na.me' protocol='tcp'/></dns>",
     "invalid character in service attribute 'na.me' in DNS SRV record of network 'n'"),
    ("<dns><srv service='name' protocol='tcp' port='5'/></dns>",
     "DNS SRV port attribute not permitted without target for service 'name' in network 'n'"),
    ("<dns><srv service='name' protocol='tcp' target='x' port='0'/></dns>",
     "invalid DNS SRV port attribute for service 'name' in network 'n'"),
    ("<dns><srv service='name' protocol='tcp' target='x' priority='65536'/></dns>",
     "Invalid DNS SRV priority attribute for service 'name' in network 'n'"),
    ("<ip address='192.168.1.1' netmask='255.255.255.0'><dhcp><range start='192.168.1.200' end='192.168.1.100'/>"
     "</dhcp></ip>", "internal error: range 192.168.1.200 - 192.168.1.100 is reversed"),
    ("<ip address='192.168.1.1' netmask='255.255.255.0'><dhcp><range start='192.168.2.2' end='192.168.2.100'/>"
     "</dhcp></ip>", "internal error: range 192.168.2.2 - 192.168.2.100 is not entirely within network 192.168.1.1/24"),
    ("<ip address='192.168.1.1' netmask='255.255.255.0'><dhcp><range start='192.168.1.0' end='192.168.1.100'/>"
     "</dhcp></ip>",
     "internal error: start of range 192.168.1.0 - 192.168.1.100 in network 192.168.1.1/24 is the network address"),
    ("<ip address='192.168.1.1' netmask='255.255.255.0'><dhcp><range start='192.168.1.2'/></dhcp></ip>",
     "XML error: Missing 'end' attribute in dhcp range for network 'n'"),
    ("<ip address='192.168.1.1' netmask='255.255.255.0'><dhcp><range start='bad' end='192.168.1.5'/></dhcp></ip>",
     "Cannot parse socket address 'bad': Name or service not known"),
    ("<ip address='10.0.0.1' prefix='8'><dhcp><range start='10.0.0.2' end='10.2.0.5'/></dhcp></ip>",
     "internal error: range 10.0.0.2 - 10.2.0.5 is too large (> 65535)"),
    ("<ip address='fd00::1' family='ipv6' prefix='64'><dhcp><range start='fd00::ff' end='fd00::10'/></dhcp></ip>",
     "internal error: range fd00::ff - fd00::10 start larger than end"),
    ("<ip address='192.168.1.1' netmask='255.255.255.0'><dhcp><range start='fd00::1' end='fd00::5'/></dhcp></ip>",
     "internal error: mismatch of address family in range fd00::1 - fd00::5 for network 192.168.1.1"),
    ("<ip address='192.168.1.1' prefix='24'><dhcp><host mac='01:00:00:00:00:01' ip='192.168.1.5'/></dhcp></ip>",
     "XML error: expected unicast mac address, found multicast '01:00:00:00:00:01' in network 'n'"),
    ("<ip address='192.168.1.1' prefix='24'><dhcp><host ip='192.168.1.5'/></dhcp></ip>",
     "XML error: Static host definition in IPv4 network 'n' must have mac or name attribute"),
    ("<ip address='192.168.1.1' prefix='24'><dhcp><host mac='00:16:3e:77:e2:ed'/></dhcp></ip>",
     "XML error: Missing IP address in static host definition for network 'n'"),
    ("<ip address='192.168.1.1' prefix='24'><dhcp><host name='-x' ip='192.168.1.5'/></dhcp></ip>",
     "XML error: Cannot use host name '-x' in network 'n'"),
    ("<ip address='192.168.1.1' prefix='24'><dhcp><host id='0:1:z' name='x' ip='192.168.1.5'/></dhcp></ip>",
     "XML error: Invalid character 'z' in id '0:1:z' of network 'n'"),
    ("<ip address='192.168.1.1' prefix='24' netmask='255.255.255.0'/>",
     "unsupported configuration: Network 'n' IP address cannot have both a prefix and a netmask"),
    ("<ip address='192.168.1.1' prefix='40'/>", "unsupported configuration: Invalid IPv4 prefix '40' in network 'n'"),
    ("<ip address='192.168.1.1' family='ipv6'/>",
     "unsupported configuration: Family 'ipv6' specified for non-IPv6 address '192.168.1.1' in network 'n'"),
    ("<ip address='fd00::1' prefix='64'/>",
     "unsupported configuration: no family specified for non-IPv4 address 'fd00::1' in network 'n'"),
    ("<ip address='fd00::1' family='ipv6' prefix='64'><tftp root='/x'/></ip>",
     "unsupported configuration: Unsupported <tftp> element in an IPv6 element in network 'n'"),
    ("<ip address='fd00::1' family='ipv6' prefix='64'><dhcp><host mac='00:16:3e:77:e2:ed' ip='fd00::5'/></dhcp></ip>",
     "XML error: Invalid to specify MAC address '00:16:3e:77:e2:ed' in network 'n' IPv6 static host definition"),
    ("<ip address='192.168.1.1' family='ipv5'/>", "XML error: Unrecognized family 'ipv5' in network 'n'"),
    ("<ip netmask='255.255.255.0'/>", "XML error: Missing required address attribute in network 'n'"),
    ("<ip address='192.168.1.1' netmask='fd00::'/>",
     "unsupported configuration: Invalid netmask 'fd00::' for address '192.168.1.1' in network 'n' (both must be "
     "IPv4)"),
    ("<ip address='192.168.1.1' prefix='24'><dhcp><range start='192.168.1.2' end='192.168.1.9'><lease expiry='1'/>"
     "</range></dhcp></ip>", "unsupported configuration: The minimum lease time should be greater than 2 minutes"),
    (f"<forward mode='nat'><nat><port start='500'/></nat></forward>{IP24}",
     "Missing or invalid 'end' attribute in <port> in <nat> in <forward> in network n"),
    (f"<forward mode='nat'><nat><address start='1.2.3.4'/></nat></forward>{IP24}",
     "XML error: missing 'end' attribute in <address> element in <nat> in <forward> in network n"),
    (f"<forward mode='nat'><nat><address start='1.2.3.10' end='1.2.3.4'/></nat></forward>{IP24}",
     "internal error: range 1.2.3.10 - 1.2.3.4 is reversed"),
    (f"<forward mode='nat'><nat><address start='1.2.3.4' end='fd00::1'/></nat></forward>{IP24}",
     "XML error: Bad ipv4 end address 'fd00::1' in <nat> in <forward> in network 'n'"),
    (f"<forward mode='route'><nat/></forward>{IP24}",
     "XML error: The <nat> element can only be used when <forward> 'mode' is 'nat' in network n"),
    (f"<forward mode='nat'><nat/><nat/></forward>{IP24}",
     "XML error: Only one <nat> element is allowed in <forward> of network n"),
    (f"<forward mode='open' dev='eth0'/>{IP24}",
     "XML error: forward dev not allowed for network 'n' with forward mode='open'"),
    (f"<forward mode='nat' dev='eth0'><interface dev='eth1'/></forward>{IP24}",
     "XML error: <forward dev='eth0'> must match first <interface dev='eth1'/> in network n"),
    (f"<forward mode='nat'><interface dev='eth0'/><interface dev='eth1'/></forward>{IP24}",
     "XML error: multiple forwarding interfaces specified for network 'n', only one is supported"),
    ("<bridge name='br0' macTableManager='x'/>", "XML error: Invalid macTableManager setting 'x' in network 'n'"),
    ("<uuid>not-a-uuid</uuid>", None),  # the document's own <uuid> comes first; see test_uuid
    # the network driver's networkValidate
    ("<forward mode='bridge'/><bridge name='br0'/>" + IP24,
     "unsupported configuration: Unsupported <ip> element in network n with forward mode='bridge'"),
    ("<forward mode='bridge'/><bridge name='br0'/><mac address='52:54:00:00:00:01'/>",
     "unsupported configuration: Unsupported <mac> element in network n with forward mode='bridge'"),
    ("<forward mode='bridge'/><bridge name='br0'/><domain name='x'/>",
     "unsupported configuration: Unsupported <domain> element in network n with forward mode='bridge'"),
    ("<ip address='1.2.3.4' prefix='24'><dhcp><range start='1.2.3.5' end='1.2.3.6'/></dhcp></ip>"
     "<ip address='1.2.4.4' prefix='24'><dhcp><range start='1.2.4.5' end='1.2.4.6'/></dhcp></ip>",
     "unsupported configuration: Multiple IPv4 dhcp sections found -- dhcp is supported only for a single IPv4 "
     "address on each network"),
    # vmlan's own refusals
    ("<forward mode='vepa'/>", "unsupported configuration: forward mode 'vepa' is not supported by vmlan"),
    ("<forward mode='bridge'/>",
     "unsupported configuration: forward mode 'bridge' needs the host bridge's name in <bridge name=...> "
     "(network 'n')"),
    ("<route address='10.1.0.0' prefix='16' gateway='10.0.0.2'/>" + IP24,
     "unsupported configuration: <route> in <network> is not supported by vmlan"),
    ("<ip address='192.168.1.1' netmask='255.0.255.0'/>", "XML error: Invalid netmask '255.0.255.0' in network 'n'"),
]


@pytest.mark.parametrize(("body", "message"), [e for e in ERRORS if e[1] is not None])
def test_error_messages(body: str, message: str) -> None:
    with pytest.raises(LibvirtError) as err:
        net(body)
    assert str(err.value) == message


def test_name_and_uuid() -> None:
    with pytest.raises(LibvirtError, match=r"^missing name information$"):
        parse_network("<network><uuid>" + str(U) + "</uuid></network>")
    with pytest.raises(LibvirtError, match=r"^missing name information$"):
        parse_network("<network><name></name></network>")
    with pytest.raises(LibvirtError, match=r"^invalid char in name: /$"):
        parse_network("<network><name>a/b</name></network>")
    with pytest.raises(LibvirtError, match=r"^internal error: malformed uuid element$"):
        parse_network("<network><name>a</name><uuid>not-a-uuid</uuid></network>")
    assert parse_network(f"<network><name>a</name><uuid> {U.hex.upper()} </uuid></network>").uuid == U
    assert parse_network("<network><name>a</name><uuid>81-ff-0d90 c91e67 4264da4a736edb9a9b</uuid></network>").uuid == U
    fixed = uuid.UUID(int=5)
    assert parse_network("<network><name>a</name></network>", uuid_factory=lambda: fixed).uuid == fixed
    assert parse_network("<network><name>a</name></network>").uuid != parse_network(
        "<network><name>a</name></network>").uuid


def test_shipped_default_network() -> None:
    default = parse_network(DEFAULT_NETWORK_XML, uuid_factory=lambda: U)
    assert default.name == "default" and default.bridge == "virbr0" and default.stp and default.delay == 0
    assert default.forward == Forward("nat") and default.mode == "nat"
    (ip,) = default.ips
    assert ip.network == ip_network("192.168.122.0/24")
    assert ip.ranges == (DhcpRange(ip_address("192.168.122.2"), ip_address("192.168.122.254")),)
    assert default.mac is None
    live = default_network_live_xml(U, "52:54:00:0a:0b:0c")
    assert live == f"""<network>
  <name>default</name>
  <uuid>{U}</uuid>
  <forward mode='nat'>
    <nat>
      <port start='1024' end='65535'/>
    </nat>
  </forward>
  <bridge name='virbr0' stp='on' delay='0'/>
  <mac address='52:54:00:0a:0b:0c'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
    </dhcp>
  </ip>
</network>
"""
    assert parse_network(live).to_xml() == live


def test_live_picks_the_first_free_bridge_and_a_mac() -> None:
    n = net("<forward/>" + IP24)
    assert n.bridge is None and "<bridge stp='on' delay='0'/>" in n.to_xml()
    live = n.live({"virbr0", "virbr2"}, rng=random.Random(1))
    assert live.bridge == "virbr1" and live.mac is not None and live.mac.startswith("52:54:00:")
    assert live.forward == Forward("nat", nat=Nat(port_start=1024, port_end=65535))
    assert net("<bridge name='lab%d'/>").live({"lab0"}).bridge == "lab1"
    with pytest.raises(LibvirtError, match=r"^internal error: bridge name 'br5' already in use\.$"):
        net("<bridge name='br5'/>").live({"br5"})
    with pytest.raises(LibvirtError, match="Bridge generation exceeded max id 256"):
        net("").live({f"virbr{i}" for i in range(257)})
    kept = net(f"<forward mode='nat'><nat><port start='2000' end='3000'/></nat></forward>{IP24}").live()
    assert kept.forward is not None and kept.forward.nat == Nat(port_start=2000, port_end=3000)
    bridged = net("<forward mode='bridge'/><bridge name='br0'/>")
    assert bridged.live() is bridged


def test_bridge_defaults_and_stp() -> None:
    assert net("<bridge name='b' stp='bogus'/>").stp  # anything but 'off' is on, as in libvirt
    assert not net("<bridge stp='off' delay='3'/>").stp
    assert net("<bridge stp='off' delay='3'/>").delay == 3
    assert net("<forward mode='none'/>").forward is None
    assert net("<forward mode='none'/>").mode == "isolated"


def test_prefix_from_netmask_or_class() -> None:
    assert net("<ip address='10.1.2.3'/>").ips[0].prefixlen == 8
    assert net("<ip address='172.16.0.1'/>").ips[0].prefixlen == 16
    assert net("<ip address='192.0.2.1'/>").ips[0].prefixlen == 24
    assert net("<ip address='224.0.0.1'/>").ips[0].prefixlen == -1
    assert net("<ip family='ipv6' address='fd00::1'/>").ips[0].prefixlen == 64
    with pytest.raises(LibvirtError, match=r"bad prefix -1 for network 224\.0\.0\.1"):
        net("<ip address='224.0.0.1'><dhcp><range start='224.0.0.2' end='224.0.0.3'/></dhcp></ip>")


def test_dhcp_host_mac_keeps_its_spelling_and_bootp_needs_a_file() -> None:
    n = net("<ip address='192.168.1.1' prefix='24'><dhcp><host mac='00:16:3E:77:E2:ED' ip='192.168.1.5'/>"
            "<bootp server='192.168.1.1'/></dhcp></ip>")
    assert n.ips[0].hosts[0].mac == "00:16:3E:77:E2:ED" and n.ips[0].bootp_file is None
    assert "<host mac='00:16:3E:77:E2:ED' ip='192.168.1.5'/>" in n.to_xml()


def test_replace_keeps_frozen_semantics() -> None:
    n = net(IP24)
    with pytest.raises(dataclasses.FrozenInstanceError):
        n.name = "x"  # type: ignore[misc]
