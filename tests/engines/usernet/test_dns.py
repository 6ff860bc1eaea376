"""The virtual resolver at 10.0.2.3 (services.py, engines/dns.py) over UDP and TCP, through the stack."""

from __future__ import annotations

import types

import pytest
from scapy.layers.dns import DNS
from scapy.layers.inet import IP, UDP
from scapy.packet import Packet

import vmlan.engines.dns as dns_engine
from tests.engines.usernet.stacknet import (
    DNS_IP,
    DNS_MAC,
    GUEST,
    GUEST2,
    GUEST2_MAC,
    GUEST_MAC,
    HOST,
    UPSTREAM,
    Guest,
    GuestTcp,
    StackNet,
    dns_answer,
    dns_query,
    dns_tcp,
    kinds,
    l4_payload,
    only,
)
from vmlan.engines.usernet import actions as A


def dns_to_guest(net: StackNet, g: Guest | None = None, sport: int = 33333) -> Packet:
    frame = only(net.frames())
    ip, mac = (g.ip, g.mac) if g is not None else (GUEST, GUEST_MAC)
    assert frame.src == DNS_MAC and frame.dst == mac
    assert (frame[IP].src, frame[UDP].sport, frame[IP].dst, frame[UDP].dport) == (DNS_IP, 53, ip, sport)
    return frame


@pytest.fixture
def fixed_dns_ids(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the forwarder's upstream IDs predictable (0x5151, 0x5152, ...)."""
    ids: list[int] = []

    def randbits(_bits: int) -> int:
        ids.append(0x5151 + len(ids))
        return ids[-1]

    monkeypatch.setattr(dns_engine, "secrets", types.SimpleNamespace(randbits=randbits))
    return ids


def test_dns_query_forwarded_with_new_id_and_answer_restored(fixed_dns_ids: list[int]) -> None:
    net = StackNet()
    a = net.guest()
    query = dns_query(0xABCD)
    net.send_ip(a, query)
    assert net.frames() == []
    send = only(net.actions())
    assert send[0] == A.DNS_SEND
    _kind, upstream, payload, tcp = send
    assert upstream == UPSTREAM and tcp is False
    assert int.from_bytes(payload[:2], "big") == fixed_dns_ids[0] != 0xABCD
    assert payload[2:] == bytes(query[DNS])[2:]
    # the answer under the guest's ID matches nothing pending: dropped
    net.stack.dns_answer(dns_answer(0xABCD), UPSTREAM, False, net.now)
    assert net.frames() == []
    net.stack.dns_answer(dns_answer(fixed_dns_ids[0]), ("127.0.0.1", 53), False, net.now)  # wrong server
    assert net.frames() == []
    answer = dns_answer(fixed_dns_ids[0])
    net.stack.dns_answer(answer, UPSTREAM, False, net.now)
    frame = dns_to_guest(net)
    assert frame[DNS].id == 0xABCD
    assert l4_payload(frame)[2:] == answer[2:]
    assert frame[DNS].an[0].rdata == "192.0.2.80"
    assert net.actions() == [(A.DNS_FORGET, fixed_dns_ids[0])]  # the query's upstream socket may close
    net.stack.dns_answer(answer, UPSTREAM, False, net.now)  # a duplicate answer: nothing pending any more
    assert net.frames() == [] and net.actions() == []


@pytest.mark.parametrize("guest_retransmits", [False, True])
def test_dns_servfail_after_retries(guest_retransmits: bool) -> None:
    net = StackNet()
    a = net.guest()
    dns_cfg = net.cfg.dns_config
    assert dns_cfg is not None
    tries = dns_cfg.attempts * len(dns_cfg.upstreams)
    give_up = net.now + dns_cfg.timeout * tries
    query = dns_query(0x0BAD, name="slow.example")
    net.send_ip(a, query)
    sends = net.actions()
    while net.now < give_up - 0.5:
        net.advance(0.5)
        if guest_retransmits:
            net.send_ip(a, query)  # the guest's own resolver retries meanwhile
        sends += net.actions()
        assert net.frames() == [], f"answered too early, at {net.now}"
    assert len(sends) == tries and all(s[0] == A.DNS_SEND and s[1] == UPSTREAM for s in sends)
    assert all(s[2][2:] == bytes(query[DNS])[2:] for s in sends)
    net.advance(1.0)
    frame = dns_to_guest(net)
    reply = frame[DNS]
    assert (reply.id, reply.qr, reply.rcode, reply.ancount) == (0x0BAD, 1, 2, 0)  # SERVFAIL
    assert reply.qd[0].qname == b"slow.example."
    assert kinds(net.actions()) == ["DNS_FORGET"]
    net.advance(30)
    assert net.frames() == [] and net.actions() == []  # exactly one SERVFAIL, no late retries
    assert net.stack.dns is not None and net.stack.dns.timer.deadline == float("inf")


def test_dns_static_answered_without_upstream() -> None:
    net = StackNet("dns-static=foo.test:192.0.2.9,dns-static=foo.test:192.0.2.10")
    a = net.guest()
    net.send_ip(a, dns_query(0x1111, name="FOO.test"))
    assert net.actions() == []
    reply = dns_to_guest(net)[DNS]
    assert (reply.id, reply.qr, reply.rcode, reply.ancount) == (0x1111, 1, 0, 2)
    assert sorted(rr.rdata for rr in reply.an) == ["192.0.2.10", "192.0.2.9"]
    # the host's own name
    net.send_ip(a, dns_query(0x2222, name="host.vmlan.internal"))
    assert net.actions() == []
    assert dns_to_guest(net)[DNS].an[0].rdata == HOST


def test_dns_query_dropped_under_restrict() -> None:
    net = StackNet("restrict=on")
    a = net.guest()
    net.send_ip(a, dns_query(0x3333))
    assert net.frames() == [] and net.actions() == []
    assert net.stack.counters.restricted == 1


def test_dns_over_udp_to_another_address_is_plain_nat() -> None:
    net = StackNet()
    a = net.guest()
    pkt = IP(src=GUEST, dst="192.0.2.53") / UDP(sport=33333, dport=53) / bytes(dns_query(0x4444)[DNS])
    net.send_ip(a, pkt)
    send = only(net.actions())
    assert send[0] == A.UDP_SEND and send[3] == ("192.0.2.53", 53)


def test_a_second_guest_is_answered_while_the_first_floods_past_its_cap(fixed_dns_ids: list[int]) -> None:
    """Per-guest accounting is by port (guests.py): guest A flooding the resolver gets SERVFAIL beyond its
    share of pending queries, and guest B's lookups are forwarded and answered all the same."""
    net = StackNet()
    a = net.guest("a")
    b = net.guest("b", GUEST2_MAC, GUEST2)
    dns_cfg = net.cfg.dns_config
    assert dns_cfg is not None
    cap = dns_cfg.max_pending_per_guest
    for qid in range(cap + 50):
        net.send_ip(a, dns_query(qid, name=f"n{qid}.example", sport=20000 + qid))
    forwarded = [x for x in net.actions() if x[0] == A.DNS_SEND]
    assert len(forwarded) == cap
    servfails = [f[DNS] for f in net.frames()]
    assert len(servfails) == 50 and all(r.rcode == 2 and r.qr == 1 for r in servfails)
    net.send_ip(b, dns_query(0xBBBB, src=GUEST2))
    send = only(net.actions())
    assert send[0] == A.DNS_SEND
    net.stack.dns_answer(dns_answer(int.from_bytes(send[2][:2], "big")), UPSTREAM, False, net.now)
    reply = dns_to_guest(net, b)[DNS]
    assert reply.id == 0xBBBB and reply.rcode == 0 and reply.an[0].rdata == "192.0.2.80"


# -- DNS over TCP --------------------------------------------------------------------------------------


def test_dns_over_tcp(fixed_dns_ids: list[int]) -> None:
    net = StackNet("dns-static=foo.test:192.0.2.9")
    a = net.guest()
    g = GuestTcp(net, a, DNS_IP, 53)
    g.syn()
    assert net.actions() == []  # served by the stack: no host connect
    synack = g.take_synack(net.frames())
    assert synack.sport == 53
    g.send("A")
    query = dns_tcp(0x4321)
    g.send("PA", query[:5])  # the length prefix and the message split across segments
    assert net.actions() == []
    g.send("PA", query[5:])
    send = only(net.actions())
    assert send[0] == A.DNS_SEND and send[1] == UPSTREAM and send[3] is True  # TCP upstream for a TCP query
    assert int.from_bytes(send[2][:2], "big") == fixed_dns_ids[0]
    assert send[2][2:] == query[4:]
    answer = dns_answer(fixed_dns_ids[0])
    net.stack.dns_answer(answer, UPSTREAM, True, net.now)
    segs = g.mine(net.frames())
    g.absorb(segs)
    stream = g.reassemble(g.rcv_nxt)
    assert stream == len(answer).to_bytes(2, "big") + b"\x43\x21" + answer[2:]
    assert DNS(stream[2:]).id == 0x4321
    assert kinds(net.actions()) == ["DNS_FORGET"]
    # a static name, answered at once on the same connection
    g.send("PA", dns_tcp(0x7777, "foo.test"))
    assert net.actions() == []
    g.absorb(g.mine(net.frames()))
    stream = g.reassemble(g.rcv_nxt)
    reply = DNS(stream[2:])
    assert int.from_bytes(stream[:2], "big") == len(stream) - 2
    assert (reply.id, reply.an[0].rdata) == (0x7777, "192.0.2.9")
    # the guest closes: the stack closes too, with nothing for the host to do
    g.send("FA")
    fin = [s for s in g.mine(net.frames()) if "F" in s.flags]
    assert fin and net.actions() == []
    g.rcv_nxt += 1
    g.send("A")
    assert net.stack.tcp.by_key == {} and net.actions() == []


@pytest.mark.parametrize("outcome", ["answer", "timeout"])
def test_dns_over_tcp_guest_half_close_still_gets_the_answer(outcome: str, fixed_dns_ids: list[int]) -> None:
    net = StackNet()
    a = net.guest()
    g = GuestTcp(net, a, DNS_IP, 53)
    g.syn()
    g.take_synack(net.frames())
    g.send("A")
    g.send("FPA", dns_tcp(0x4321))
    assert kinds(net.actions()) == ["DNS_SEND"]
    g.absorb(g.mine(net.frames()))
    if outcome == "answer":
        net.stack.dns_answer(dns_answer(fixed_dns_ids[0]), UPSTREAM, True, net.now)
    else:
        net.advance(30)
    segs = g.mine(net.frames())
    g.absorb(segs)
    stream = g.reassemble(g.rcv_nxt)
    assert len(stream) > 2 and DNS(stream[2:]).id == 0x4321
    assert any("F" in s.flags for s in segs)  # the stack's FIN follows the answer


def test_tcp_to_dns_address_other_port_gets_rst() -> None:
    net = StackNet()
    a = net.guest()
    g = GuestTcp(net, a, DNS_IP, 80)
    g.syn()
    rst = only(g.mine(net.frames()))
    assert rst.flags == "RA" and net.actions() == []


def test_dns_over_tcp_under_restrict_gets_rst() -> None:
    net = StackNet("restrict=on")
    a = net.guest()
    g = GuestTcp(net, a, DNS_IP, 53)
    g.syn()
    assert only(g.mine(net.frames())).flags == "RA" and net.actions() == []


def test_dns_from_a_source_the_guest_does_not_own_is_dropped() -> None:
    net = StackNet()
    a = net.guest("a", dhcp=True)
    b = net.guest("b", GUEST2_MAC, GUEST2)
    net.send_ip(b, dns_query(0x5555, src=a.ip))
    assert net.frames() == [] and net.actions() == []
    assert net.stack.counters.bad_source == 1
