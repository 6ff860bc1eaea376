"""The DHCP server engine, driven with client messages built by scapy the way busybox udhcpc sends them."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP

from vmlan.engines.dhcp import DhcpConfig, DhcpError, DhcpReply, DhcpServer, Lease
from vmlan.wire.dhcp import (
    DHCPACK,
    DHCPNAK,
    DHCPOFFER,
    OPT_DOMAIN_SEARCH,
    DhcpMessage,
    decode_domain_search,
)

BCAST_IP = b"\xff\xff\xff\xff"
BCAST_MAC = b"\xff" * 6
SERVER = bytes((10, 0, 2, 2))
UDHCPC_PRL = [1, 3, 6, 12, 15, 26, 28, 42]
DAY = 86400


def mac(n: int) -> bytes:
    return bytes((0x52, 0x54, 0x00, 0x12, 0x34, n))


def ip(last: int) -> bytes:
    return bytes((10, 0, 2, last))


def dotted(addr: bytes) -> str:
    return ".".join(map(str, addr))


def client(
    mtype: str,
    hw: bytes,
    *,
    xid: int = 0x1234,
    flags: int = 0,
    ciaddr: bytes = bytes(4),
    requested: bytes | None = None,
    server_id: bytes | None = None,
    max_size: int | None = 576,
    prl: list[int] | None = UDHCPC_PRL,
    hostname: bytes | None = None,
) -> bytes:
    """A client message laid out like udhcpc's: 53, [50], [54], 57, 55, [12], END."""
    opts: list[object] = [("message-type", mtype)]
    if requested is not None:
        opts.append(("requested_addr", dotted(requested)))
    if server_id is not None:
        opts.append(("server_id", dotted(server_id)))
    if max_size is not None:
        opts.append(("max_dhcp_size", max_size))
    if prl is not None:
        opts.append(("param_req_list", prl))
    if hostname is not None:
        opts.append(("hostname", hostname))
    opts.append("end")
    return bytes(BOOTP(chaddr=hw, xid=xid, flags=flags, ciaddr=dotted(ciaddr)) / DHCP(options=opts))


def parsed(reply: DhcpReply | None) -> DhcpMessage:
    assert reply is not None
    return DhcpMessage.parse(reply.payload)


def dora(server: DhcpServer, hw: bytes, now: float = 0.0, **kw: object) -> bytes:
    """DISCOVER, REQUEST the offer; return the address ACKed."""
    offer = parsed(server.handle(client("discover", hw, **kw), hw, now))  # type: ignore[arg-type]
    assert offer.message_type == DHCPOFFER
    ack = parsed(server.handle(client("request", hw, requested=offer.yiaddr, server_id=SERVER), hw, now))
    assert ack.message_type == DHCPACK and ack.yiaddr == offer.yiaddr
    return ack.yiaddr


# --------------------------------------------------------------------------- DORA


def test_dora_with_udhcpcs_default_request() -> None:
    server = DhcpServer(DhcpConfig())
    hw = mac(0x56)
    offer_reply = server.handle(client("discover", hw), hw, 100.0)
    assert offer_reply is not None
    # RFC 2131 section 4.1: no broadcast bit, no ciaddr -> unicast to yiaddr at chaddr.
    assert (offer_reply.dst_ip, offer_reply.dst_mac, offer_reply.lease) == (ip(15), hw, None)
    offer = DhcpMessage.parse(offer_reply.payload)
    assert (offer.op, offer.xid, offer.chaddr, offer.yiaddr, offer.siaddr) == (2, 0x1234, hw, ip(15), SERVER)
    assert offer.ciaddr == bytes(4) and offer.giaddr == bytes(4)
    # What QEMU's defaults put in the OFFER, in this order: 53, 54, 51, 1, then 3 and 6 as requested.
    assert offer.options == (
        (53, b"\x02"),
        (54, SERVER),
        (51, DAY.to_bytes(4, "big")),
        (1, bytes((255, 255, 255, 0))),
        (3, SERVER),
        (6, ip(3)),
    )
    assert len(offer_reply.payload) == 300

    ack_reply = server.handle(client("request", hw, requested=ip(15), server_id=SERVER), hw, 101.0)
    ack = parsed(ack_reply)
    assert ack.message_type == DHCPACK and ack.yiaddr == ip(15) and ack.options[1:] == offer.options[1:]
    assert ack_reply is not None and ack_reply.dst_ip == ip(15) and ack_reply.dst_mac == hw
    assert ack_reply.lease == Lease(hw, ip(15), 101.0 + DAY, None)
    assert server.leases() == [ack_reply.lease]
    assert server.stats.offers == 1 and server.stats.acks == 1


def test_scapy_sees_the_ack_as_udhcpc_would() -> None:
    cfg = DhcpConfig(
        hostname="guest", domainname="vmlan.test", mtu=1400, dnssearch=["eng.apple.com", "marketing.apple.com"]
    )
    server = DhcpServer(cfg)
    hw = mac(0x56)
    server.handle(client("discover", hw), hw, 0)
    reply = server.handle(client("request", hw, requested=ip(15), server_id=SERVER), hw, 0)
    assert reply is not None
    pkt = BOOTP(reply.payload)
    opts = {o[0]: o[1:] for o in pkt[DHCP].options if isinstance(o, tuple)}
    assert opts["message-type"] == (5,)
    assert opts["server_id"] == ("10.0.2.2",)  # udhcp_get_option32: exactly 4 octets
    assert opts["lease_time"] == (DAY,)
    assert opts["hostname"] == (b"guest",)  # OPTION_STRING: no NUL, no padding
    assert opts["domain"] == (b"vmlan.test",)
    assert opts["interface-mtu"] == (1400,)  # OPTION_U16
    assert opts[119] == (b"\x03eng\x05apple\x03com\x00\x09marketing\xc0\x04",)  # RFC 3397's encoding
    assert reference_dname_dec(opts[119][0]) == ["eng.apple.com.", "marketing.apple.com."]
    # Requested options (12, 15, 26) come in the client's order, the unrequested 119 last.
    codes = [o[0] for o in DhcpMessage.parse(reply.payload).options]
    assert codes == [53, 54, 51, 1, 3, 6, 12, 15, 26, 119]


def reference_dname_dec(data: bytes) -> list[str]:
    """Decode option 119 the way busybox's dname_dec does: follow pointers, a name ends at a zero."""
    out, pos = [], 0
    while pos < len(data):
        labels, p, jumped, hops = [], pos, False, 0
        while data[p]:
            if data[p] & 0xC0 == 0xC0:
                if not jumped:
                    pos = p + 2
                jumped, p, hops = True, ((data[p] & 0x3F) << 8) | data[p + 1], hops + 1
                assert hops < 100
                continue
            labels.append(data[p + 1 : p + 1 + data[p]].decode())
            p += 1 + data[p]
        if not jumped:
            pos = p + 1
        out.append(".".join(labels) + ".")
    return out


def test_broadcast_flag_gets_broadcast_replies() -> None:
    server = DhcpServer(DhcpConfig())
    hw = mac(1)
    reply = server.handle(client("discover", hw, flags=0x8000), hw, 0)
    assert reply is not None and (reply.dst_ip, reply.dst_mac) == (BCAST_IP, BCAST_MAC)
    assert DhcpMessage.parse(reply.payload).flags == 0x8000


def test_same_address_for_a_mac_every_time_and_lowest_free_for_new_ones() -> None:
    server = DhcpServer(DhcpConfig())
    first = [parsed(server.handle(client("discover", mac(n)), mac(n), 0)).yiaddr for n in range(3)]
    again = [parsed(server.handle(client("discover", mac(n)), mac(n), 5)).yiaddr for n in range(3)]
    assert first == again == [ip(15), ip(16), ip(17)]


def test_discover_honours_a_free_requested_address() -> None:
    server = DhcpServer(DhcpConfig())
    assert parsed(server.handle(client("discover", mac(1), requested=ip(20)), mac(1), 0)).yiaddr == ip(20)
    # Taken by mac 1 (held for its offer): mac 2 asking for it gets the lowest free one.
    assert parsed(server.handle(client("discover", mac(2), requested=ip(20)), mac(2), 0)).yiaddr == ip(15)
    # Outside the pool: ignored.
    assert parsed(server.handle(client("discover", mac(3), requested=ip(99)), mac(3), 0)).yiaddr == ip(16)


# --------------------------------------------------------------------------- renew, rebind, reboot


def test_renewing_and_rebinding_extend_the_lease() -> None:
    server = DhcpServer(DhcpConfig())
    hw = mac(1)
    addr = dora(server, hw, 0)
    before = server.changed
    # RENEWING at T1: unicast, ciaddr set, no 50/54.  Reply unicast to ciaddr.
    renew = server.handle(client("request", hw, ciaddr=addr), hw, DAY / 2)
    ack = parsed(renew)
    assert ack.message_type == DHCPACK and ack.yiaddr == addr and ack.ciaddr == addr
    assert renew is not None and (renew.dst_ip, renew.dst_mac) == (addr, hw)
    assert server.lease_for(hw) == Lease(hw, addr, DAY / 2 + DAY, None)
    assert server.changed > before
    # REBINDING at T2: the same message broadcast; the server cannot tell and need not.
    rebind = server.handle(client("request", hw, ciaddr=addr, xid=99), hw, DAY * 7 / 8)
    assert parsed(rebind).message_type == DHCPACK and parsed(rebind).xid == 99
    lease = server.lease_for(hw)
    assert lease is not None and lease.expires == DAY * 7 / 8 + DAY


def test_init_reboot_keeps_the_address_even_without_a_record() -> None:
    # After the host side restarted without a leases file, a rebooting guest asks for its old address.
    server = DhcpServer(DhcpConfig())
    hw = mac(1)
    reply = server.handle(client("request", hw, requested=ip(20)), hw, 0)
    assert parsed(reply).message_type == DHCPACK and parsed(reply).yiaddr == ip(20)
    assert server.lease_for(hw) == Lease(hw, ip(20), DAY, None)
    # ... and a renewal of an unknown but free address works the same way.
    other = mac(2)
    assert parsed(server.handle(client("request", other, ciaddr=ip(21)), other, 0)).message_type == DHCPACK


# --------------------------------------------------------------------------- NAK and ignore


def assert_nak(reply: DhcpReply | None) -> None:
    msg = parsed(reply)
    assert msg.message_type == DHCPNAK
    assert reply is not None and (reply.dst_ip, reply.dst_mac) == (BCAST_IP, BCAST_MAC)  # RFC 2131 4.1
    assert msg.yiaddr == bytes(4) and msg.siaddr == bytes(4)
    assert msg.option(54) == SERVER  # udhcpc drops a NAK whose server id is not the one it talks to
    assert msg.option(56) == b"requested address not available"
    assert msg.option(51) is None


def test_nak_cases() -> None:
    cfg = DhcpConfig(static_leases={"52:54:00:12:34:09": "10.0.2.100"})
    server = DhcpServer(cfg)
    a, b = mac(1), mac(2)
    addr_a = dora(server, a)
    # INIT-REBOOT with an address from another network (the guest moved).
    assert_nak(server.handle(client("request", b, requested=bytes((192, 168, 1, 50))), b, 1))
    # INIT-REBOOT asking for another guest's address.
    assert_nak(server.handle(client("request", b, requested=addr_a), b, 1))
    # SELECTING our server id but an address that is not ours to give (in the subnet, outside the pool).
    assert_nak(server.handle(client("request", b, requested=ip(99), server_id=SERVER), b, 1))
    # RENEWING an address that belongs to someone else.
    assert_nak(server.handle(client("request", b, ciaddr=addr_a), b, 1))
    # The static client asking for a pool address instead of its own.
    assert_nak(server.handle(client("request", mac(9), requested=ip(16)), mac(9), 1))
    # A static address asked for by anyone else.
    assert_nak(server.handle(client("request", b, requested=ip(100)), b, 1))
    assert server.stats.naks == 6
    assert server.lease_for(a) is not None and server.lease_for(b) is None  # nothing was disturbed


def test_request_for_another_server_is_ignored() -> None:
    server = DhcpServer(DhcpConfig())
    hw = mac(1)
    server.handle(client("discover", hw), hw, 0)
    assert server.handle(client("request", hw, requested=ip(15), server_id=bytes((10, 0, 2, 9))), hw, 0) is None
    assert server.stats.ignored == 1 and server.stats.naks == 0


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p[:0] + b"\x02" + p[1:],  # a BOOTREPLY sent to the server
        lambda p: p[:24] + bytes((10, 0, 2, 1)) + p[28:],  # relayed (giaddr set)
        lambda p: p[:1] + b"\x06" + p[2:],  # htype IEEE 802
    ],
)
def test_messages_not_for_us_are_ignored(mutate: object) -> None:
    server = DhcpServer(DhcpConfig())
    payload = mutate(client("discover", mac(1)))  # type: ignore[operator]
    assert server.handle(payload, mac(1), 0) is None
    assert server.stats.ignored == 1 and server.stats.malformed == 0


def test_chaddr_must_be_the_ethernet_source() -> None:
    server = DhcpServer(DhcpConfig())
    assert server.handle(client("discover", mac(1)), mac(2), 0) is None
    assert server.stats.ignored == 1 and not server.leases()


def test_plain_bootp_is_ignored() -> None:
    server = DhcpServer(DhcpConfig())
    bootp = bytes(BOOTP(chaddr=mac(1), xid=1)) + bytes(64)
    assert server.handle(bootp, mac(1), 0) is None
    assert server.stats.malformed + server.stats.ignored == 1


# --------------------------------------------------------------------------- release, decline, inform


def test_release_then_discover_gets_the_same_address() -> None:
    server = DhcpServer(DhcpConfig())
    a, b = mac(1), mac(2)
    addr = dora(server, a, 0)
    assert server.handle(client("release", a, ciaddr=addr, server_id=SERVER, max_size=None, prl=None), a, 10) is None
    lease = server.lease_for(a)
    assert lease is not None and lease.expires == 10 and server.stats.releases == 1
    # Another guest does not get the released address while others are free ...
    assert dora(server, b, 20) == ip(16)
    # ... and the first guest gets its address back.
    assert dora(server, a, 30) == addr


def test_release_of_an_address_not_leased_to_the_mac_is_ignored() -> None:
    server = DhcpServer(DhcpConfig())
    a, b = mac(1), mac(2)
    addr = dora(server, a, 0)
    server.handle(client("release", b, ciaddr=addr, server_id=SERVER), b, 1)
    lease = server.lease_for(a)
    assert lease is not None and lease.expires == DAY and server.stats.ignored == 1


def test_decline_takes_the_address_out_of_the_pool_for_a_while() -> None:
    server = DhcpServer(DhcpConfig(decline_hold=600))
    a, b = mac(1), mac(2)
    addr = dora(server, a, 0)
    assert server.handle(client("decline", a, requested=addr, server_id=SERVER), a, 5) is None
    assert server.lease_for(a) is None and server.stats.declines == 1
    assert dora(server, a, 6) == ip(16)  # not the declined one
    assert dora(server, b, 7) == ip(17)
    assert dora(server, mac(3), 700) == addr  # back after decline_hold


def test_inform_gets_configuration_without_an_address_or_lease() -> None:
    server = DhcpServer(DhcpConfig(domainname="vmlan.test"))
    hw = mac(1)
    reply = server.handle(client("inform", hw, ciaddr=bytes((10, 0, 2, 77))), hw, 0)
    msg = parsed(reply)
    assert msg.message_type == DHCPACK and msg.yiaddr == bytes(4) and msg.ciaddr == bytes((10, 0, 2, 77))
    assert msg.option(51) is None and msg.option(15) == b"vmlan.test" and msg.option(54) == SERVER
    assert reply is not None and (reply.dst_ip, reply.dst_mac) == (bytes((10, 0, 2, 77)), hw)
    assert not server.leases()


# --------------------------------------------------------------------------- pool, static, restrict


def test_pool_exhaustion_then_reclaiming_only_when_full() -> None:
    server = DhcpServer(DhcpConfig(pool_size=2, lease_time=100))
    assert dora(server, mac(1), 0) == ip(15)
    assert dora(server, mac(2), 0) == ip(16)
    assert server.handle(client("discover", mac(3)), mac(3), 50) is None
    assert server.stats.exhausted == 1
    # mac 1's lease expires at 100, mac 2 renews: now mac 3 may take mac 1's address.
    server.handle(client("request", mac(2), ciaddr=ip(16)), mac(2), 90)
    assert dora(server, mac(3), 150) == ip(15)
    assert server.lease_for(mac(1)) is None
    # mac 1 comes back: nothing is free and nothing has expired.
    assert server.handle(client("discover", mac(1)), mac(1), 160) is None
    assert server.stats.exhausted == 2


def test_expired_address_is_not_given_away_while_others_are_free() -> None:
    server = DhcpServer(DhcpConfig(pool_size=3, lease_time=100))
    dora(server, mac(1), 0)
    assert dora(server, mac(2), 1000) == ip(16)  # ip(15) expired long ago but stays mac 1's
    assert dora(server, mac(1), 2000) == ip(15)


def test_static_lease_inside_and_outside_the_pool() -> None:
    cfg = DhcpConfig(static_leases={"52:54:00:12:34:01": "10.0.2.15", "52:54:00:12:34:02": "10.0.2.200"})
    server = DhcpServer(cfg)
    assert dora(server, mac(3), 0) == ip(16)  # 10.0.2.15 is reserved even though it is in the pool
    assert dora(server, mac(2), 0) == ip(200)
    assert dora(server, mac(1), 0) == ip(15)
    # The static client gets its address even asking for another one.
    assert parsed(server.handle(client("discover", mac(1), requested=ip(20)), mac(1), 1)).yiaddr == ip(15)


def test_restrict_omits_router_and_dns() -> None:
    server = DhcpServer(DhcpConfig(router=None, dns=()))
    codes = [code for code, _ in parsed(server.handle(client("discover", mac(1)), mac(1), 0)).options]
    assert codes == [53, 54, 51, 1]


def test_several_dns_servers_and_renewal_times() -> None:
    server = DhcpServer(DhcpConfig(dns=("10.0.2.3", "1.1.1.1"), renewal_times=True, lease_time=1000))
    offer = parsed(server.handle(client("discover", mac(1)), mac(1), 0))
    assert offer.option(6) == ip(3) + bytes((1, 1, 1, 1))
    assert offer.option(58) == (500).to_bytes(4, "big") and offer.option(59) == (875).to_bytes(4, "big")


# --------------------------------------------------------------------------- message size


def test_options_that_do_not_fit_the_clients_maximum_are_left_out() -> None:
    search = [f"{'d' * 60}{i}.example.org" for i in range(5)]  # ~ 300 octets of option 119
    server = DhcpServer(DhcpConfig(dnssearch=search, hostname="guest"))
    small = server.handle(client("discover", mac(1)), mac(1), 0)  # 57 = 576
    assert small is not None and len(small.payload) <= 576 - 28
    msg = DhcpMessage.parse(small.payload)
    assert msg.option(OPT_DOMAIN_SEARCH) is None and msg.option(12) == b"guest"
    assert server.stats.options_dropped == 1
    big = server.handle(client("discover", mac(1), max_size=1500), mac(1), 0)
    assert big is not None and 576 - 28 < len(big.payload) <= 1500 - 28
    assert decode_domain_search(DhcpMessage.parse(big.payload).option(OPT_DOMAIN_SEARCH) or b"") == search
    # No option 57 at all: RFC 2131's 576 again; a silly 57 below 576 is raised to it.
    for size in (None, 300):
        reply = server.handle(client("discover", mac(1), max_size=size), mac(1), 0)
        assert reply is not None and len(reply.payload) <= 548


# --------------------------------------------------------------------------- persistence


def test_leases_survive_a_restart_through_json() -> None:
    cfg = DhcpConfig()
    server = DhcpServer(cfg)
    addrs = {n: dora(server, mac(n), 1000.0 + n, hostname=f"g{n}".encode()) for n in range(1, 5)}
    server.handle(client("release", mac(2), ciaddr=addrs[2], server_id=SERVER), mac(2), 2000)
    saved = json.dumps([lease.to_dict() for lease in server.leases()])
    assert json.loads(saved)[0] == {
        "mac": "52:54:00:12:34:01",
        "ip": "10.0.2.15",
        "expires": 1001.0 + DAY,
        "hostname": "g1",
    }

    restored = DhcpServer(cfg, [Lease.from_dict(d) for d in json.loads(saved)])
    assert restored.leases() == server.leases()
    # Each guest gets its address again, in reverse order, a new guest the next free one.
    for n in range(4, 0, -1):
        assert dora(restored, mac(n), 3000) == addrs[n]
    assert dora(restored, mac(9), 3000) == ip(19)


def test_restored_leases_that_do_not_fit_the_configuration_are_dropped() -> None:
    leases = [
        Lease(mac(1), ip(15), 10, None),
        Lease(mac(2), ip(15), 10, None),  # duplicate address
        Lease(mac(3), ip(99), 10, None),  # outside the pool
        Lease(mac(4), ip(16), 10, None),  # static MAC with another address
        Lease(mac(5), ip(17), 10, "x"),
    ]
    server = DhcpServer(DhcpConfig(static_leases={"52:54:00:12:34:04": "10.0.2.50"}), leases)
    assert [lease.mac for lease in server.leases()] == [mac(1), mac(5)]
    assert server.stats.leases_dropped == 3


@pytest.mark.parametrize(
    "record",
    [
        {},
        {"mac": "52:54:00:12:34:01", "ip": "10.0.2.300", "expires": 1},
        {"mac": "zz", "ip": "10.0.2.3", "expires": 1},
        {"mac": "52:54:00:12:34:01", "ip": "10.0.2.3", "expires": "soon"},
        {"mac": "52:54:00:12:34:01", "ip": "10.0.2.3", "expires": float("nan")},
        {"mac": "52:54:00:12:34:01", "ip": "10.0.2.3", "expires": 1, "hostname": 5},
    ],
)
def test_malformed_lease_records(record: dict[str, object]) -> None:
    with pytest.raises(DhcpError):
        Lease.from_dict(record)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "kwargs",
    [
        {"server_ip": "10.0.2"},
        {"netmask": "255.0.255.0"},
        {"router": "192.168.0.1"},
        {"pool_start": "10.0.3.15"},
        {"pool_size": 250},
        {"pool_size": 0},
        {"lease_time": 0},
        {"mtu": 67},
        {"hostname": ""},
        {"hostname": "h\u00e9"},
        {"dns": "10.0.2.3"},
        {"dnssearch": ["a..b"]},
        {"static_leases": {"52:54:00:12:34:01": "10.0.2.2"}},
        {"static_leases": {"52:54:00:12:34:01": "10.0.2.20", "52:54:00:12:34:02": "10.0.2.20"}},
        {"static_leases": {"nope": "10.0.2.20"}},
        {"bootfile": "x" * 128},
    ],
)
def test_bad_configurations(kwargs: dict[str, object]) -> None:
    with pytest.raises(DhcpError):
        DhcpConfig(**kwargs)  # type: ignore[arg-type]


def test_large_pool_in_a_wider_subnet() -> None:
    cfg = DhcpConfig(
        server_ip="10.0.0.2",
        netmask="255.255.0.0",
        router="10.0.0.2",
        pool_start="10.0.1.0",
        dns=("10.0.0.3",),
        pool_size=1000,
    )
    server = DhcpServer(cfg)
    for n in range(300):
        hw = bytes((2, 0, 0, 0, n >> 8, n & 0xFF))
        reply = server.handle(client("discover", hw), hw, 0)
        assert parsed(reply).yiaddr == bytes((10, 0, 1 + n // 256, n % 256))


# --------------------------------------------------------------------------- robustness


def _valid_messages() -> list[bytes]:
    return [
        client("discover", mac(1)),
        client("request", mac(1), requested=ip(15), server_id=SERVER),
        client("request", mac(1), ciaddr=ip(15)),
        client("release", mac(1), ciaddr=ip(15), server_id=SERVER),
        client("decline", mac(1), requested=ip(15), server_id=SERVER),
        client("inform", mac(1), ciaddr=ip(15)),
    ]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_valid_messages()),
            st.lists(st.tuples(st.integers(0, 299), st.integers(0, 255)), max_size=4),
            st.integers(0, 320),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_mutated_messages_never_raise(cases: list[tuple[bytes, list[tuple[int, int]], int]]) -> None:
    server = DhcpServer(DhcpConfig(pool_size=4, dnssearch=["a.example", "b.example"]))
    for i, (base, edits, cut) in enumerate(cases):
        data = bytearray(base)
        for pos, value in edits:
            if pos < len(data):
                data[pos] = value
        reply = server.handle(bytes(data[:cut]), mac(1), float(i))
        if reply is not None:
            msg = DhcpMessage.parse(reply.payload)  # whatever we send decodes
            assert msg.op == 2 and len(reply.payload) <= 548
    assert server.stats.internal_errors == 0
    assert server.stats.received == len(cases)
