"""The DNS forwarder engine: forwarding, retries, anti-spoofing, per-guest caps, the TCP upstream leg,
truncation for UDP guests, local names, errors, TCP framing."""

from __future__ import annotations

import itertools
import struct
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRROPT

from vmlan.engines.dns import (
    HOST_NAME,
    DnsConfig,
    DnsError,
    DnsForwarder,
    Reply,
    SendUpstream,
    TcpDnsFramer,
    read_resolv_conf,
)
from vmlan.wire import SanityError
from vmlan.wire.dns import DnsHeader, DnsMessage, parse_questions
from vmlan.wire.dns import _Names as Names

U1 = ("192.0.2.1", 53)
U2 = ("192.0.2.2", 5353)
GUEST = ("10.0.2.15", 40000)


def ids(start: int = 0x1000) -> Iterator[int]:
    return itertools.count(start)


def forwarder(upstreams: list[tuple[str, int]] | None = None, **kw: object) -> DnsForwarder:
    cfg = DnsConfig(upstreams=[U1, U2] if upstreams is None else upstreams, **kw)  # type: ignore[arg-type]
    return DnsForwarder(cfg, rng=ids().__next__)


def query(name: str = "www.example.com", qtype: str | int = "A", ident: int = 0xBEEF, **kw: object) -> bytes:
    return bytes(DNS(id=ident, rd=1, qd=DNSQR(qname=name, qtype=qtype), **kw))


def answer(ident: int, name: str = "www.example.com", qtype: str | int = "A", **kw: object) -> bytes:
    defaults: dict[str, object] = {
        "an": [DNSRR(rrname=name, type="A", ttl=30, rdata="192.0.2.80")] if qtype == "A" else [],
    }
    return bytes(DNS(id=ident, qr=1, rd=1, ra=1, qd=DNSQR(qname=name, qtype=qtype), **(defaults | kw)))


def only_send(actions: list[object]) -> SendUpstream:
    assert len(actions) == 1 and isinstance(actions[0], SendUpstream)
    return actions[0]


def only_reply(actions: list[object]) -> Reply:
    assert len(actions) == 1 and isinstance(actions[0], Reply)
    return actions[0]


# --------------------------------------------------------------------------- forwarding


def test_forward_and_reply_with_the_guests_id_restored() -> None:
    fwd = forwarder()
    q = query()
    send = only_send(fwd.query(q, GUEST, 0.0))
    assert send.upstream == U1
    assert send.payload[:2] == b"\x10\x00" and send.payload[2:] == q[2:]  # only the ID differs
    assert fwd.pending() == 1 and fwd.get_timer() == 2.0
    resp = answer(0x1000)
    reply = only_reply(fwd.upstream_response(resp, U1, 0.1))
    assert reply.client == GUEST
    assert reply.payload == b"\xbe\xef" + resp[2:]
    assert DNS(reply.payload).an[0].rdata == "192.0.2.80"
    assert fwd.pending() == 0 and fwd.get_timer() is None
    assert fwd.stats.forwarded == 1 and fwd.stats.answered == 1


def test_nxdomain_and_other_upstream_answers_pass_through_unchanged() -> None:
    fwd = forwarder()
    for n, rcode in enumerate((3, 2, 5)):  # NXDOMAIN, SERVFAIL, REFUSED from upstream
        q = query(f"nx{n}.example", ident=n)
        send = only_send(fwd.query(q, GUEST, 0.0))
        resp = bytes(DNS(id=send.payload[0] << 8 | send.payload[1], qr=1, rd=1, ra=1, rcode=rcode, qd=DNS(q).qd))
        reply = only_reply(fwd.upstream_response(resp, U1, 0.0))
        assert reply.payload == n.to_bytes(2, "big") + resp[2:]
        assert DnsHeader.parse(reply.payload).rcode == rcode


def test_case_randomised_questions_match_and_edns_passes_through() -> None:
    fwd = forwarder()
    q = bytes(DNS(id=7, rd=1, qd=DNSQR(qname="WwW.ExAmPlE.cOm", qtype="AAAA"), ar=DNSRROPT(rclass=1232)))
    send = only_send(fwd.query(q, GUEST, 0))
    assert send.payload[2:] == q[2:]  # the OPT record goes upstream untouched
    resp = answer(0x1000, name="www.example.com", qtype="AAAA", ar=DNSRROPT(rclass=4096))
    assert only_reply(fwd.upstream_response(resp, U1, 0)).payload == b"\x00\x07" + resp[2:]


def test_timeout_tries_the_next_upstream_then_answers_servfail() -> None:
    fwd = forwarder(attempts=1)
    q = query(ident=0x4242)
    assert only_send(fwd.query(q, GUEST, 10.0)).upstream == U1
    assert fwd.handle_timer(11.9) == []
    retry = only_send(fwd.handle_timer(12.0))
    assert retry.upstream == U2 and retry.payload[2:] == q[2:]
    assert fwd.get_timer() == 14.0
    fail = only_reply(fwd.handle_timer(14.0))
    msg = DnsMessage.parse(fail.payload)
    assert fail.client == GUEST and msg.id == 0x4242
    assert msg.rcode == 2 and msg.flags & 0x8000 and msg.flags & 0x0100  # SERVFAIL, QR, RD kept
    assert [q.name for q in msg.questions] == ["www.example.com"]
    assert fwd.pending() == 0 and fwd.get_timer() is None
    assert fwd.stats.retries == 1 and fwd.stats.servfail == 1


def test_attempts_go_round_the_upstream_list() -> None:
    fwd = forwarder(attempts=2, timeout=1.0)
    sent = [only_send(fwd.query(query(), GUEST, 0)).upstream]
    for t in (1, 2, 3):
        sent.append(only_send(fwd.handle_timer(t)).upstream)
    assert sent == [U1, U2, U1, U2]
    assert DnsHeader.parse(only_reply(fwd.handle_timer(4)).payload).rcode == 2


def test_late_answer_from_an_upstream_already_tried_is_accepted() -> None:
    fwd = forwarder()
    fwd.query(query(), GUEST, 0)
    fwd.handle_timer(2.0)  # now waiting on U2
    reply = only_reply(fwd.upstream_response(answer(0x1000), U1, 2.5))
    assert reply.payload[:2] == b"\xbe\xef"
    assert fwd.handle_timer(100) == []


def test_timers_of_several_queries_fire_in_order() -> None:
    fwd = forwarder(upstreams=[U1], attempts=1, timeout=1.0)
    for n in range(3):
        fwd.query(query(f"q{n}.example", ident=n), GUEST, float(n))
    assert fwd.get_timer() == 1.0
    fails = fwd.handle_timer(2.5)
    assert [DnsHeader.parse(r.payload).id for r in fails if isinstance(r, Reply)] == [0, 1]
    assert fwd.get_timer() == 3.0


# --------------------------------------------------------------------------- anti-spoofing


def test_spoofed_and_mismatched_responses_are_dropped() -> None:
    fwd = forwarder()
    fwd.query(query(), GUEST, 0)
    bad = [
        (answer(0x1000), ("192.0.2.66", 53)),  # unknown server
        (answer(0x1000), (U1[0], 5353)),  # right host, wrong port
        (answer(0x1000), U2),  # a configured server we have not asked yet
        (answer(0x1001), U1),  # wrong ID
        (answer(0x1000, name="www.evil.example"), U1),  # another question
        (answer(0x1000, qtype="AAAA"), U1),  # another type
        (bytes(DNS(id=0x1000, qr=1, qd=DNSQR(qname="www.example.com", qclass="CH"))), U1),  # another class
        (bytes(DNS(id=0x1000, qr=1, qd=[])), U1),  # no question
        (query(ident=0x1000), U1),  # QR clear: a query, not an answer
        (answer(0x1000)[:20], U1),  # truncated question
        (b"\x10", U1),
    ]
    for payload, upstream in bad:
        assert fwd.upstream_response(payload, upstream, 0.1) == []
    assert fwd.stats.spoofed == len(bad) and fwd.pending() == 1
    assert only_reply(fwd.upstream_response(answer(0x1000), U1, 0.2)).payload[:2] == b"\xbe\xef"
    # A second copy of the answer matches nothing any more.
    assert fwd.upstream_response(answer(0x1000), U1, 0.3) == []


def test_upstream_ids_are_never_reused_while_pending() -> None:
    repeats = iter([5, 5, 5, 6, 5, 6, 7])
    fwd = DnsForwarder(DnsConfig(upstreams=[U1]), rng=repeats.__next__)
    got = [only_send(fwd.query(query(f"n{n}.example", ident=1), GUEST, 0)).payload[:2] for n in range(3)]
    assert got == [b"\x00\x05", b"\x00\x06", b"\x00\x07"]


def test_random_ids_stay_unique_under_load() -> None:
    fwd = DnsForwarder(DnsConfig(upstreams=[U1], max_pending=2000, max_pending_per_guest=2000))
    seen = set()
    for n in range(2000):
        send = only_send(fwd.query(query(f"n{n}.example", ident=n & 0xFFFF), GUEST, 0))
        seen.add(send.payload[:2])
    assert len(seen) == 2000


def test_guest_retransmission_is_not_forwarded_twice() -> None:
    fwd = forwarder()
    only_send(fwd.query(query(), GUEST, 0))
    assert fwd.query(query(), GUEST, 1.0) == []
    assert fwd.stats.duplicates == 1
    # Another guest (or another ID) asking the same thing is a separate query.
    only_send(fwd.query(query(), ("10.0.2.16", 1234), 1.0))
    only_send(fwd.query(query(ident=1), GUEST, 1.0))
    assert fwd.pending() == 3


def test_full_pending_table_answers_servfail() -> None:
    fwd = forwarder(max_pending=2)
    for n in range(2):
        only_send(fwd.query(query(f"n{n}.example"), GUEST, 0))
    reply = only_reply(fwd.query(query("n2.example", ident=9), GUEST, 0))
    assert DnsHeader.parse(reply.payload).rcode == 2 and DnsHeader.parse(reply.payload).id == 9


def test_replies_that_end_a_forwarded_query_name_its_upstream_id() -> None:
    fwd = forwarder(attempts=1, static={"x.lan": ["10.0.0.1"]})
    fwd.query(query(ident=1), GUEST, 0)
    assert only_reply(fwd.upstream_response(answer(0x1000), U1, 0)).upstream_id == 0x1000
    fwd.query(query(ident=2), GUEST, 0)
    fwd.handle_timer(2.0)
    assert only_reply(fwd.handle_timer(4.0)).upstream_id == 0x1001  # the SERVFAIL too
    assert only_reply(fwd.query(query("x.lan"), GUEST, 0)).upstream_id is None  # never went upstream


# --------------------------------------------------------------------------- per-guest caps


def test_one_guest_flooding_leaves_the_others_lookups_alone() -> None:
    fwd = forwarder(max_pending_per_guest=8)
    flood = [fwd.query(query(f"n{n}.slow.example", ident=n), ("10.0.2.15", 1000 + n), 0, guest="A") for n in range(20)]
    assert all(isinstance(a[0], SendUpstream) for a in flood[:8])
    for n, actions in enumerate(flood[8:], 8):  # refused at once, not queued behind the flood
        head = DnsHeader.parse(only_reply(actions).payload)
        assert (head.id, head.rcode) == (n, 2)
    assert fwd.pending("A") == 8 and fwd.stats.guest_limited == 12 and fwd.stats.servfail == 12
    other = ("10.0.2.16", 5000)
    send = only_send(fwd.query(query("www.example.com", ident=77), other, 0.5, guest="B"))
    reply = only_reply(fwd.upstream_response(answer(int.from_bytes(send.payload[:2], "big")), U1, 0.6))
    assert reply.client == other and DNS(reply.payload).an[0].rdata == "192.0.2.80"
    # As A's queries end (answered here, or timed out), A may ask again.
    first = only_send(flood[0])
    fwd.upstream_response(answer(int.from_bytes(first.payload[:2], "big"), name="n0.slow.example"), U1, 0.7)
    assert fwd.pending("A") == 7
    only_send(fwd.query(query("again.example", ident=99), GUEST, 0.8, guest="A"))
    for t in (2.0, 4.0, 6.0, 8.0, 10.0):  # four tries of 2 s each, the last started at 0.8
        fwd.handle_timer(t)
    assert fwd.pending() == 0 and fwd.pending("A") == 0 and fwd._per_guest == {}


def test_without_a_guest_key_each_client_is_its_own_guest() -> None:
    fwd = forwarder(max_pending_per_guest=1)
    only_send(fwd.query(query(ident=1), GUEST, 0))
    assert DnsHeader.parse(only_reply(fwd.query(query("b.example", ident=2), GUEST, 0)).payload).rcode == 2
    only_send(fwd.query(query("b.example", ident=2), ("10.0.2.15", 40001), 0))


# --------------------------------------------------------------------------- TCP upstream leg


def big_answer(ident: int, count: int = 60, name: str = "www.example.com", **kw: object) -> bytes:
    records = [DNSRR(rrname=name, type="A", ttl=30, rdata=f"192.0.2.{n + 1}") for n in range(count)]
    return bytes(DNS(id=ident, qr=1, rd=1, ra=1, qd=DNSQR(qname=name, qtype="A"), an=records, **kw))


def tc_answer(ident: int, name: str = "www.example.com") -> bytes:
    return bytes(DNS(id=ident, qr=1, rd=1, ra=1, tc=1, qd=DNSQR(qname=name, qtype="A")))


def test_a_truncated_answer_is_asked_again_over_tcp_and_the_full_answer_relayed() -> None:
    fwd = forwarder(tcp_upstream=True)
    q = bytes(DNS(id=0xBEEF, rd=1, qd=DNSQR(qname="www.example.com"), ar=DNSRROPT(rclass=4096)))
    udp = only_send(fwd.query(q, GUEST, 0))
    assert udp.tcp is False and udp.upstream == U1
    retry = only_send(fwd.upstream_response(tc_answer(0x1000), U1, 0.5))
    assert retry == SendUpstream(U1, udp.payload, True)  # the same query, to the same upstream, by TCP
    assert fwd.get_timer() == 2.5  # the TCP try has a timeout of its own
    full = big_answer(0x1000, ar=DNSRROPT(rclass=4096))
    assert len(full) > 512
    reply = only_reply(fwd.upstream_response(full, U1, 0.7, tcp=True))
    assert reply.payload == b"\xbe\xef" + full[2:] and reply.upstream_id == 0x1000
    assert fwd.stats.tcp_retries == 1 and fwd.stats.tcp_forwarded == 1 and fwd.stats.truncated == 0
    assert fwd.pending() == 0


def test_without_tcp_upstream_truncated_answers_pass_through_as_before() -> None:
    fwd = forwarder()
    only_send(fwd.query(query(), GUEST, 0))
    reply = only_reply(fwd.upstream_response(tc_answer(0x1000), U1, 0.1))
    assert reply.payload == b"\xbe\xef" + tc_answer(0x1000)[2:]
    # A guest's TCP query goes upstream by UDP, as the old stack can only send that.
    assert only_send(fwd.query(query(ident=5), GUEST, 0, tcp=True)).tcp is False


def test_a_guests_tcp_query_goes_upstream_over_tcp_directly() -> None:
    fwd = forwarder(tcp_upstream=True)
    send = only_send(fwd.query(query(), GUEST, 0, tcp=True))
    assert send.tcp is True and send.upstream == U1
    full = big_answer(0x1000, count=90)
    assert fwd.upstream_response(full, U1, 0.1) == []  # by UDP: it was asked over TCP only
    reply = only_reply(fwd.upstream_response(full, U1, 0.2, tcp=True))
    assert reply.payload == b"\xbe\xef" + full[2:]  # no size limit over TCP


def test_tcp_tries_time_out_go_round_the_upstreams_and_end_in_the_truncated_answer() -> None:
    fwd = forwarder(tcp_upstream=True, attempts=1, timeout=1.0)
    only_send(fwd.query(query(), GUEST, 0))
    assert only_send(fwd.upstream_response(tc_answer(0x1000), U1, 0.5)).tcp is True
    assert fwd.handle_timer(1.4) == []
    retry = only_send(fwd.handle_timer(1.5))
    assert (retry.upstream, retry.tcp) == (U2, True)  # later tries stay on TCP
    end = only_reply(fwd.handle_timer(2.5))
    msg = DNS(end.payload)
    assert msg.id == 0xBEEF and msg.tc == 1 and msg.rcode == 0  # what UDP gave, not SERVFAIL
    assert end.upstream_id == 0x1000 and fwd.pending() == 0 and fwd.stats.servfail == 0


def test_a_tcp_guest_whose_tcp_tries_all_time_out_gets_servfail() -> None:
    fwd = forwarder(tcp_upstream=True, attempts=1, timeout=1.0)
    assert only_send(fwd.query(query(), GUEST, 0, tcp=True)).tcp is True
    assert only_send(fwd.handle_timer(1.0)).tcp is True
    fail = only_reply(fwd.handle_timer(2.0))
    assert DnsHeader.parse(fail.payload).rcode == 2 and fwd.stats.tcp_forwarded == 2


def test_spoofed_and_mismatched_tcp_answers_are_refused() -> None:
    fwd = forwarder(tcp_upstream=True)
    only_send(fwd.query(query(), GUEST, 0))
    full = big_answer(0x1000)
    assert fwd.upstream_response(full, U1, 0.1, tcp=True) == []  # no TCP leg yet
    only_send(fwd.upstream_response(tc_answer(0x1000), U1, 0.2))
    bad = [
        (full, U2),  # a configured server not asked over TCP
        (full, ("192.0.2.66", 53)),
        (big_answer(0x1001), U1),  # wrong ID
        (big_answer(0x1000, name="www.evil.example"), U1),  # another question
        (bytes(DNS(id=0x1000, qr=1, qd=[DNSQR(qname="www.example.com"), DNSQR(qname="x.example")])), U1),
        (query(ident=0x1000), U1),  # QR clear
        (full[:11], U1),
    ]
    for payload, upstream in bad:
        assert fwd.upstream_response(payload, upstream, 0.3, tcp=True) == []
    assert fwd.stats.spoofed == 1 + len(bad)
    # Another truncated answer by UDP while the TCP try runs changes nothing; the real answer gets through.
    assert fwd.upstream_response(tc_answer(0x1000), U1, 0.4) == []
    assert fwd.stats.truncated_ignored == 1
    assert only_reply(fwd.upstream_response(full, U1, 0.5, tcp=True)).payload[:2] == b"\xbe\xef"


def test_a_late_complete_udp_answer_still_wins_over_a_running_tcp_try() -> None:
    fwd = forwarder(tcp_upstream=True)
    only_send(fwd.query(query(), GUEST, 0))
    only_send(fwd.handle_timer(2.0))  # now asking U2 by UDP
    only_send(fwd.upstream_response(tc_answer(0x1000), U2, 2.1))  # U2 truncates: TCP to U2
    reply = only_reply(fwd.upstream_response(answer(0x1000), U1, 2.2))  # U1's late, complete answer
    assert DNS(reply.payload).an[0].rdata == "192.0.2.80" and fwd.pending() == 0


# --------------------------------------------------------------------------- answers too long for UDP guests


def test_a_full_answer_too_long_for_a_udp_guest_is_replaced_by_the_truncated_one() -> None:
    fwd = forwarder(tcp_upstream=True)
    only_send(fwd.query(query(), GUEST, 0))  # no EDNS: 512 octets
    only_send(fwd.upstream_response(tc_answer(0x1000), U1, 0.1))
    reply = only_reply(fwd.upstream_response(big_answer(0x1000), U1, 0.2, tcp=True))
    assert reply.payload == b"\xbe\xef" + tc_answer(0x1000)[2:]  # the upstream's own truncated answer
    assert fwd.stats.truncated == 1


def test_an_oversized_udp_answer_becomes_header_question_and_tc() -> None:
    fwd = forwarder()
    q = bytes(DNS(id=0xBEEF, rd=1, qd=DNSQR(qname="www.example.com"), ar=DNSRROPT(rclass=600)))
    only_send(fwd.query(q, GUEST, 0))
    full = big_answer(0x1000, count=60, aa=1)  # an upstream that ignored the guest's 600 octets
    reply = only_reply(fwd.upstream_response(full, U1, 0.1))
    msg = DnsMessage.parse(reply.payload)
    assert len(reply.payload) <= 600 and msg.id == 0xBEEF
    assert msg.flags == 0x8000 | 0x0400 | 0x0200 | 0x0100 | 0x0080  # QR AA TC RD RA, as the upstream's plus TC
    assert [q.name for q in msg.questions] == ["www.example.com"] and msg.answers == ()
    assert [(rr.rtype, rr.rclass) for rr in msg.additionals] == [(41, 1232)]  # an OPT: the guest used EDNS
    assert DNS(reply.payload).tc == 1
    # The guest's own EDNS size is its limit: the same answer for a guest announcing 4096 goes through.
    q4096 = bytes(DNS(id=1, rd=1, qd=DNSQR(qname="www.example.com"), ar=DNSRROPT(rclass=4096)))
    send = only_send(fwd.query(q4096, GUEST, 1))
    full = big_answer(int.from_bytes(send.payload[:2], "big"), count=60)
    assert only_reply(fwd.upstream_response(full, U1, 1.1)).payload[2:] == full[2:]


# --------------------------------------------------------------------------- local names


def test_static_a_records_case_insensitive_with_optional_trailing_dot() -> None:
    fwd = forwarder(static={"Build.Lan.": ["10.9.0.1", "10.9.0.2"]}, ttl=77)
    reply = only_reply(fwd.query(query("bUILD.lan", ident=3), GUEST, 0))
    msg = DNS(reply.payload)
    assert msg.id == 3 and msg.qr == 1 and msg.aa == 1 and msg.rd == 1 and msg.ra == 1 and msg.rcode == 0
    assert msg.qd[0].qname == b"bUILD.lan."  # the question comes back as asked
    assert [(rr.rrname, rr.rdata, rr.ttl) for rr in msg.an] == [
        (b"bUILD.lan.", "10.9.0.1", 77),
        (b"bUILD.lan.", "10.9.0.2", 77),
    ]
    assert fwd.stats.static_answers == 1 and fwd.stats.forwarded == 0


@pytest.mark.parametrize("qtype", ["AAAA", "MX", "TXT", "HTTPS"])
def test_other_types_of_a_static_name_get_nodata(qtype: str) -> None:
    fwd = forwarder(static={"build.lan": ["10.9.0.1"]})
    msg = DNS(only_reply(fwd.query(query("build.lan", qtype=qtype), GUEST, 0)).payload)
    assert msg.rcode == 0 and msg.ancount == 0 and msg.qdcount == 1 and msg.aa == 1


def test_the_host_name() -> None:
    fwd = forwarder()
    msg = DNS(only_reply(fwd.query(query(HOST_NAME), GUEST, 0)).payload)
    assert HOST_NAME == "host.vmlan.internal"
    assert [rr.rdata for rr in msg.an] == ["10.0.2.2"]
    # A static entry of the same name wins; other classes of the name go upstream.
    fwd = forwarder(static={HOST_NAME: ["192.168.1.1"]})
    assert DNS(only_reply(fwd.query(query(HOST_NAME), GUEST, 0)).payload).an[0].rdata == "192.168.1.1"
    chaos = bytes(DNS(id=1, qd=DNSQR(qname=HOST_NAME, qtype="TXT", qclass="CH")))
    only_send(fwd.query(chaos, GUEST, 0))


def test_static_answers_carry_opt_when_asked_with_edns_and_truncate_to_fit() -> None:
    many = [f"10.9.{n // 250}.{n % 250 + 1}" for n in range(40)]  # 40 answers: ~ 680 octets
    fwd = forwarder(static={"many.lan": many})
    plain = only_reply(fwd.query(query("many.lan"), GUEST, 0)).payload
    msg = DNS(plain)
    assert len(plain) <= 512 and msg.tc == 1 and 0 < msg.ancount < 40
    edns_q = bytes(DNS(id=1, rd=1, qd=DNSQR(qname="many.lan"), ar=DNSRROPT(rclass=4096)))
    edns = DNS(only_reply(fwd.query(edns_q, GUEST, 0)).payload)
    assert edns.tc == 0 and edns.ancount == 40 and edns.arcount == 1 and edns.ar[0].type == 41
    tcp = DNS(only_reply(fwd.query(query("many.lan"), GUEST, 0, tcp=True)).payload)
    assert tcp.tc == 0 and tcp.ancount == 40


def test_no_upstreams_answers_servfail_at_once_but_still_serves_local_names() -> None:
    fwd = forwarder(upstreams=[])
    fail = DnsMessage.parse(only_reply(fwd.query(query(), GUEST, 0)).payload)
    assert fail.rcode == 2 and fail.id == 0xBEEF and fail.questions[0].name == "www.example.com"
    assert DNS(only_reply(fwd.query(query(HOST_NAME), GUEST, 0)).payload).ancount == 1
    assert fwd.get_timer() is None


# --------------------------------------------------------------------------- malformed queries


def test_formerr_when_the_header_is_readable() -> None:
    fwd = forwarder()
    cases = [
        query()[:20],  # question cut short
        bytes(DNS(id=0xBEEF, rd=1, qd=[])),  # no question
        bytes(DNS(id=0xBEEF, rd=1, qd=[DNSQR(qname="a.example"), DNSQR(qname="b.example")])),
        query()[:12] + b"\xc0\x0c\x00\x01\x00\x01",  # a pointer loop as the question name
    ]
    for q in cases:
        reply = only_reply(fwd.query(q, GUEST, 0))
        head = DnsHeader.parse(reply.payload)
        assert (head.id, head.qr, head.rcode, head.qdcount, head.ancount) == (0xBEEF, True, 1, 0, 0)
        assert head.flags & 0x0100  # RD echoed
    assert fwd.stats.formerr == len(cases) and fwd.pending() == 0


def test_queries_with_more_records_than_a_query_carries_get_formerr() -> None:
    fwd = forwarder()
    opt = DNSRROPT(rclass=1232)
    ok = bytes(DNS(id=1, rd=1, qd=DNSQR(qname="a.example"), ar=[opt, DNSRR(rrname="k", type="TXT")]))
    only_send(fwd.query(ok, GUEST, 0))
    many = bytes(DNS(id=2, rd=1, qd=DNSQR(qname="a.example"), ar=[DNSRR(rrname="k", type="TXT")] * 5))
    assert DnsHeader.parse(only_reply(fwd.query(many, GUEST, 0)).payload).rcode == 1


def hostile_query() -> bytes:
    """64 KiB: QDCOUNT 65535 and every two octets after the first question a pointer to the two
    before, so each question's name, type and class are chains of backward pointers: the query that
    stalled the old decoder for seconds (each question re-walked every pointer before it)."""
    buf = bytearray(struct.pack("!HHHHHH", 0x4242, 0x0100, 0xFFFF, 0, 0, 0)) + b"\x00\x00\x01\x00\x01"
    while len(buf) + 2 <= 0xFFFF:
        target = len(buf) - 2 if len(buf) > 17 else 12
        buf += struct.pack("!H", 0xC000 | min(target, 0x3FFF))
    return bytes(buf)


def test_the_hostile_64k_query_is_refused_without_reading_a_name(monkeypatch: pytest.MonkeyPatch) -> None:
    readers: list[Names] = []

    class Counting(Names):
        def __init__(self, *args: object, **kw: object) -> None:
            super().__init__(*args, **kw)  # type: ignore[arg-type]
            readers.append(self)

    monkeypatch.setattr("vmlan.wire.dns._Names", Counting)
    fwd = forwarder()
    payload = hostile_query()
    assert len(payload) == 0xFFFF
    start = time.perf_counter()
    reply = only_reply(fwd.query(payload, GUEST, 0))
    elapsed = time.perf_counter() - start
    head = DnsHeader.parse(reply.payload)
    assert (head.id, head.rcode) == (0x4242, 1) and fwd.stats.formerr == 1
    assert sum(r.steps for r in readers) == 0  # QDCOUNT != 1 is refused before any decoding
    assert elapsed < 0.05  # the old decoder took 8-14 s; this is a generous bound for a loaded machine


def test_unreadable_headers_and_responses_are_dropped_silently() -> None:
    fwd = forwarder()
    assert fwd.query(b"\x12\x34\x01", GUEST, 0) == []
    assert fwd.query(answer(5), GUEST, 0) == []  # QR set: never answer an answer
    assert fwd.stats.dropped == 2


def test_other_opcodes_get_notimp() -> None:
    fwd = forwarder()
    status = bytes(DNS(id=9, opcode=2, qd=[]))
    head = DnsHeader.parse(only_reply(fwd.query(status, GUEST, 0)).payload)
    assert (head.id, head.opcode, head.rcode) == (9, 2, 4)


@settings(max_examples=400, deadline=None)
@given(
    st.binary(max_size=60)
    | st.tuples(
        st.sampled_from([query(), query(HOST_NAME), answer(0x1000)]), st.binary(max_size=8), st.integers(0, 60)
    ).map(lambda t: t[0][: t[2]] + t[1] + t[0][t[2] + len(t[1]) :])
)
def test_garbage_never_raises(data: bytes) -> None:
    fwd = forwarder(static={"x.lan": ["10.0.0.1"]}, tcp_upstream=True)
    fwd.query(query(), GUEST, 0)
    fwd.query(query(ident=2), GUEST, 0, tcp=True)
    actions = fwd.query(data, GUEST, 0) + fwd.query(data, GUEST, 0, tcp=True, guest="g")
    actions += fwd.upstream_response(data, U1, 0) + fwd.upstream_response(data, U1, 0, tcp=True)
    actions += fwd.handle_timer(10) + fwd.handle_timer(20)
    for action in actions:
        if isinstance(action, Reply):
            parse_questions(action.payload)  # everything we answer is a well-formed message
    assert fwd.stats.internal_errors == 0
    assert fwd.pending() == sum(fwd._per_guest.values())


# --------------------------------------------------------------------------- TCP framing


def test_tcp_framing_split_at_every_byte_boundary() -> None:
    messages = [query(), query(HOST_NAME, ident=2), b"", answer(3)]
    stream = b"".join(TcpDnsFramer.frame(m) for m in messages)
    assert stream[:2] == len(messages[0]).to_bytes(2, "big")
    for cut in range(len(stream) + 1):
        framer = TcpDnsFramer()
        got = framer.feed(stream[:cut]) + framer.feed(stream[cut:])
        assert got == messages and framer.buffered == 0
    for a, b in itertools.combinations(range(1, len(stream)), 2):
        framer = TcpDnsFramer()
        assert framer.feed(stream[:a]) + framer.feed(stream[a:b]) + framer.feed(stream[b:]) == messages


def test_tcp_framing_byte_by_byte_and_limits() -> None:
    framer = TcpDnsFramer()
    out = []
    stream = TcpDnsFramer.frame(query()) * 3
    for i in range(len(stream)):
        out += framer.feed(stream[i : i + 1])
        assert framer.buffered == (i + 1) % (len(stream) // 3)
    assert out == [query()] * 3
    assert len(TcpDnsFramer.frame(bytes(0xFFFF))) == 0x10001
    with pytest.raises(SanityError):
        TcpDnsFramer.frame(bytes(0x10000))


# --------------------------------------------------------------------------- configuration


def test_read_resolv_conf() -> None:
    text = """
# Generated by NetworkManager
search lan example.com
nameserver 127.0.0.53
nameserver   192.168.1.1   # trailing comment
;nameserver 10.0.0.1
nameserver fe80::1%eth0
nameserver 2001:db8::53
nameserver not-an-address
nameserver 192.168.1.1
options edns0 trust-ad
nameserver
nameserver 2001:DB8:0::0053
nameserver ::1
nameserver 10.0.0.1%eth0
nameserver fe80::2%
"""
    assert read_resolv_conf(text) == ["127.0.0.53", "192.168.1.1", "fe80::1%eth0", "2001:db8::53", "::1"]
    assert read_resolv_conf("") == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": 0},
        {"attempts": 0},
        {"max_pending": 0},
        {"max_pending": 40000},
        {"max_pending_per_guest": 0},
        {"max_pending_per_guest": 40000},
        {"ttl": -1},
        {"upstreams": [("", 53)]},
        {"upstreams": [("1.1.1.1", 0)]},
        {"static": {"a..b": ["10.0.0.1"]}},
        {"static": {"x.lan": ["10.0.0"]}},
        {"static": {"x.lan": "10.0.0.1"}},
        {"static": {"x.lan": []}},
        {"host_names": {"host.lan": "::1"}},
    ],
)
def test_bad_configurations(kwargs: dict[str, object]) -> None:
    with pytest.raises(DnsError):
        DnsConfig(**kwargs)  # type: ignore[arg-type]
