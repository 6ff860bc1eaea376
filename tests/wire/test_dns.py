"""RFC 1035 DNS messages and names: golden bytes, scapy both ways, round trips, pointer loops, and
bounded work (section counts checked first, steps per name capped, each octet walked at most twice)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRRMX, DNSRROPT, DNSRRSOA

import vmlan.wire.dns as dns_wire
from vmlan.wire import IntegrityError, SanityError, WireError
from vmlan.wire.dns import (
    CLASS_IN,
    FLAG_QR,
    FLAG_RA,
    FLAG_RD,
    MAX_NAME_STEPS,
    RCODE_NXDOMAIN,
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    TYPE_MX,
    TYPE_OPT,
    TYPE_SOA,
    DnsHeader,
    DnsMessage,
    DnsQuestion,
    DnsRecord,
    decode_name,
    encode_name,
    labels_to_name,
    make_flags,
    name_key,
    name_to_labels,
    parse_questions,
)

from .strategies import mutated, only_wire_errors

# The query `dig +noedns example.com A` sends (ID 0xabcd, RD), as in test_udp.
QUERY = bytes.fromhex("abcd01000001000000000000076578616d706c6503636f6d0000010001")


def test_parse_golden_query() -> None:
    msg = DnsMessage.parse(QUERY)
    assert msg == DnsMessage(id=0xABCD, flags=FLAG_RD, questions=(DnsQuestion(name="example.com", qtype=TYPE_A),))
    assert msg.build() == QUERY
    assert msg.header == DnsHeader(id=0xABCD, flags=0x0100, qdcount=1)


def test_rfc1035_section_4_1_4_compression_example() -> None:
    # F.ISI.ARPA at offset 20, FOO.F.ISI.ARPA pointing at it, ARPA pointing into it, and the root.
    table: dict[tuple[bytes, ...], int] = {}
    prefix = bytes(20)
    first = encode_name("F.ISI.ARPA", table, 20)
    second = encode_name("FOO.F.ISI.ARPA", table, 20 + len(first))
    third = encode_name("ARPA", table, 20 + len(first) + len(second))
    assert first == b"\x01F\x03ISI\x04ARPA\x00"
    assert second == b"\x03FOO\xc0\x14"  # pointer to offset 20
    assert third == b"\xc0\x1a"  # pointer to offset 26, the ARPA label inside the first name
    assert encode_name(".", table, 99) == b"\x00"
    buf = prefix + first + second + third
    assert decode_name(buf, 20) == ("F.ISI.ARPA", 32)
    assert decode_name(buf, 32) == ("FOO.F.ISI.ARPA", 38)
    assert decode_name(buf, 38) == ("ARPA", 40)


def test_names_text_form_escapes_and_keys() -> None:
    assert name_to_labels("www.Example.com.") == (b"www", b"Example", b"com")
    assert name_to_labels(".") == name_to_labels("") == ()
    assert labels_to_name([b"a.b", b"c\\d", b"sp ace", b"\xff"]) == "a\\.b.c\\\\d.sp\\032ace.\\255"
    assert name_to_labels("a\\.b.c\\\\d.sp\\032ace.\\255") == (b"a.b", b"c\\d", b"sp ace", b"\xff")
    assert name_key("WWW.Example.COM.") == name_key("www.example.com") == "www.example.com"
    assert name_key("\\097bc") == "abc"
    assert name_key(".") == "."


@pytest.mark.parametrize(
    "bad",
    ["a..b", ".a", "a" * 64 + ".com", ".".join(["a" * 63] * 4), "caf\u00e9.com", "a\\", "a\\256", "a\\1"],
)
def test_names_that_cannot_be_encoded_raise_sanity_error(bad: str) -> None:
    with pytest.raises(SanityError):
        name_to_labels(bad)


def test_longest_name_fits_and_one_more_octet_does_not() -> None:
    longest = ".".join(["a" * 63] * 3 + ["a" * 61])  # 3*64 + 62 + 1 = 255 octets
    assert len(encode_name(longest)) == 255
    with pytest.raises(SanityError):
        name_to_labels(longest + "a")


@pytest.mark.parametrize(
    ("buf", "offset", "message"),
    [
        (b"\xc0\x00", 0, "does not point backwards"),  # pointer to itself
        (b"\x00\xc0\x02", 1, "does not point backwards"),  # pointer forward
        (b"\x01a\xc0\x00", 0, "does not point backwards"),  # back to the start of the same name: a loop
        (b"\xc0\x02\xc0\x00", 2, "does not point backwards"),  # two pointers pointing at each other
        (b"\x03ab", 0, "runs past the end"),
        (b"\x01a", 0, "runs past the end"),
        (b"\xc0", 0, "cut short"),
        (b"\x40a\x00", 0, "label type 0x40"),
        (b"\x80a\x00", 0, "label type 0x80"),
        ((b"\x3f" + b"a" * 63) * 4 + b"\x00", 0, "longer than 255"),
    ],
)
def test_malformed_names_raise_integrity_error(buf: bytes, offset: int, message: str) -> None:
    with pytest.raises(IntegrityError, match=message):
        decode_name(buf, offset)


def pointer_chain(pointers: int) -> bytes:
    """The name "a" at 0, then ``pointers`` pointers, each to the one before: decode from the last."""
    buf = bytearray(b"\x01a\x00")
    for i in range(pointers):
        buf += (0xC000 | (len(buf) - 2 if i else 0)).to_bytes(2, "big")
    return bytes(buf)


def test_long_backward_pointer_chain_terminates_up_to_the_step_limit() -> None:
    # Every pointer jumps further back, the last one reaches a real name: legal, if silly, while the
    # pointers, the label and the root take at most MAX_NAME_STEPS steps.
    assert MAX_NAME_STEPS == 255
    buf = pointer_chain(253)
    assert decode_name(buf, len(buf) - 2) == ("a", len(buf))
    buf = pointer_chain(254)
    with pytest.raises(IntegrityError, match="more than 255 steps"):
        decode_name(buf, len(buf) - 2)


def test_what_a_pointer_leads_to_must_lie_before_what_pointed() -> None:
    # The name at 8 points at 2, where a 10-octet label covers the pointer itself: the old
    # backward-only rule read it; now a pointed-to part must end before the part that pointed.
    buf = b"\x00\x00\x0a" + b"abcde" + b"\xc0\x02" + b"xyz" + b"\x00"
    with pytest.raises(IntegrityError, match="runs past the end"):
        decode_name(buf, 8)
    # The same label reached from a name after it is fine.
    assert decode_name(buf + b"\xc0\x02", len(buf)) == ("abcde\\192\\002xyz", len(buf) + 2)
    # Two pointers: the second part must end before the first part starts (here it runs into it).
    nested = b"\x01a\x01b\x00" + b"\x01c\xc0\x00" + b"\xc0\x05"
    assert decode_name(nested, 9) == ("c.a.b", 11)
    with pytest.raises(IntegrityError, match="runs past the end"):
        decode_name(b"\x03a\xc0\x00\x00", 2)  # the label at 0 covers the pointer at 2 that led to it


def test_header_flag_accessors() -> None:
    flags = make_flags(qr=True, opcode=2, rcode=RCODE_NXDOMAIN, bits=FLAG_RD | FLAG_RA)
    head = DnsHeader(id=1, flags=flags)
    assert (head.qr, head.opcode, head.rcode) == (True, 2, 3)
    assert flags == 0x8000 | 0x1000 | 0x0100 | 0x0080 | 3
    with pytest.raises(SanityError):
        DnsHeader(id=0x10000)
    with pytest.raises(IntegrityError):
        DnsHeader.parse(b"\0" * 11)


def test_a_record_with_wrong_rdata_length_is_insane() -> None:
    with pytest.raises(SanityError):
        DnsRecord(name="x", rtype=TYPE_A, rdata=b"\1\2\3")
    wire = bytearray(DnsMessage(id=1, answers=(DnsRecord.a("x", b"\1\2\3\4", 5),)).build())
    wire[-6:-4] = b"\x00\x03"  # RDLENGTH 3 ...
    with pytest.raises(SanityError):
        DnsMessage.parse(bytes(wire[:-1]))  # ... and three octets of RDATA


def test_counts_larger_than_the_message_are_integrity_errors() -> None:
    wire = bytearray(QUERY)
    wire[7] = 1  # ANCOUNT 1, no answer present
    with pytest.raises(IntegrityError):
        DnsMessage.parse(bytes(wire))
    # parse_questions stops before the answers, so it does not care.
    _, questions, end = parse_questions(bytes(wire))
    assert questions[0].name == "example.com" and end == len(QUERY)


@contextmanager
def counting_steps() -> Iterator[list[dns_wire._Names]]:
    """Every name reader the codec creates meanwhile, for their ``steps``."""
    readers: list[dns_wire._Names] = []
    original = dns_wire._Names

    class Counting(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kw: object) -> None:
            super().__init__(*args, **kw)
            readers.append(self)

    with mock.patch.object(dns_wire, "_Names", Counting):
        yield readers


def test_counts_are_checked_against_the_length_before_any_name_is_read() -> None:
    header = struct.pack("!HHHHHH", 1, 0, 0xFFFF, 0, 0, 0)
    body = b"\xc0\x0c" * 100  # would be a pointer loop, if anything read it
    with counting_steps() as readers:
        with pytest.raises(IntegrityError, match="QDCOUNT 65535 need at least 327687 octets"):
            parse_questions(header + body)
        with pytest.raises(IntegrityError, match="section counts need"):
            DnsMessage.parse(header + body)
        many_records = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 10) + QUERY[12:] + bytes(50)
        with pytest.raises(IntegrityError, match="need at least 127 octets, message has 79"):
            DnsMessage.parse(many_records)  # 1 question (>= 5) and 10 records (>= 11 each)
        with pytest.raises(SanityError, match="2 questions"):
            parse_questions(struct.pack("!HHHHHH", 1, 0, 2, 0, 0, 0) + body, expect=1)
    assert sum(r.steps for r in readers) == 0
    # Exactly at the minimum: 2 root questions and 1 root record with no RDATA fit in 12 + 10 + 11.
    tight = struct.pack("!HHHHHH", 1, 0, 2, 1, 0, 0) + b"\x00\x00\x01\x00\x01" * 2 + b"\x00" + bytes(10)
    assert len(DnsMessage.parse(tight).questions) == 2


def chained_questions(size: int) -> bytes:
    """Questions whose names each point at the one before, in chains of up to 250 steps: legal,
    and for a decoder without a suffix cache quadratic (the old one took 20 ms for 8 KB)."""
    body = bytearray(b"\x00\x00\x01\x00\x01")
    starts, depth = [12], 1
    while 12 + len(body) + 6 <= size:
        here = 12 + len(body)
        if depth >= 250 or starts[-1] > 0x3FFF:
            body += b"\x00\x00\x01\x00\x01"
            depth = 1
        else:
            body += struct.pack("!H", 0xC000 | starts[-1]) + b"\x00\x01\x00\x01"
            depth += 1
        starts.append(here)
    return struct.pack("!HHHHHH", 1, 0, len(starts), 0, 0, 0) + bytes(body)


def long_suffixes(size: int = 0xFFFF) -> bytes:
    """Below 16 KiB questions of 126 escaped one-octet labels; then questions pointing at every one
    of those labels in turn: thousands of names of up to 500 characters from two-octet pointers."""
    body = bytearray()
    targets = []
    count = 0
    while 12 + len(body) + 260 < 0x3FFF:
        for _ in range(126):
            targets.append(12 + len(body))
            body += b"\x01\xff"
        body += b"\x00\x00\x01\x00\x01"
        count += 1
    while 12 + len(body) + 6 <= size:
        body += struct.pack("!H", 0xC000 | targets[count % len(targets)]) + b"\x00\x01\x00\x01"
        count += 1
    return struct.pack("!HHHHHH", 1, 0, count, 0, 0, 0) + bytes(body)


@pytest.mark.parametrize("message", [chained_questions(8000), chained_questions(0xFFFF), long_suffixes()])
def test_each_octet_is_walked_at_most_twice(message: bytes) -> None:
    with counting_steps() as readers:
        msg = DnsMessage.parse(message)
    assert len(msg.questions) == DnsHeader.parse(message).qdcount > 1000
    assert sum(r.steps for r in readers) <= 2 * len(message)
    with counting_steps() as readers:
        assert parse_questions(message)[1] == msg.questions
    assert sum(r.steps for r in readers) <= 2 * len(message)
    # Every name decodes the same one at a time (no cache, each walk bounded by MAX_NAME_STEPS).
    for q, start in zip(msg.questions[:300], _question_starts(message), strict=False):
        assert decode_name(message, start)[0] == q.name


def _question_starts(message: bytes) -> Iterator[int]:
    pos = 12
    for _ in range(DnsHeader.parse(message).qdcount):
        yield pos
        pos = decode_name(message, pos)[1] + 4


# --------------------------------------------------------------------------- scapy, both ways


def _scapy_response() -> bytes:
    return bytes(
        DNS(
            id=0x4242,
            qr=1,
            rd=1,
            ra=1,
            qd=DNSQR(qname="www.example.com", qtype="A"),
            an=[
                DNSRR(rrname="www.example.com", type="CNAME", ttl=300, rdata="web.example.com"),
                DNSRR(rrname="web.example.com", type="A", ttl=60, rdata="192.0.2.7"),
            ],
            ns=[
                DNSRRSOA(
                    rrname="example.com",
                    ttl=900,
                    mname="ns.example.com",
                    rname="hostmaster.example.com",
                    serial=2024010101,
                    refresh=7200,
                    retry=3600,
                    expire=1209600,
                    minimum=300,
                )
            ],
            ar=[
                DNSRRMX(rrname="example.com", ttl=77, preference=10, exchange="mail.example.com"),
                DNSRROPT(rclass=1232),
            ],
        )
    )


def test_scapy_built_compressed_response_parses() -> None:
    wire = _scapy_response()
    assert b"\xc0" in wire[30:]  # scapy compressed something: the pointer paths are exercised
    msg = DnsMessage.parse(wire)
    assert msg.id == 0x4242 and msg.flags == FLAG_QR | FLAG_RD | FLAG_RA
    assert msg.questions == (DnsQuestion(name="www.example.com", qtype=TYPE_A),)
    cname, a = msg.answers
    assert (cname.name, cname.rtype, cname.ttl) == ("www.example.com", TYPE_CNAME, 300)
    assert cname.rdata == encode_name("web.example.com")  # expanded: no pointer left
    assert a == DnsRecord.a("web.example.com", bytes((192, 0, 2, 7)), 60)
    (soa,) = msg.authorities
    assert soa.rtype == TYPE_SOA
    assert soa.rdata == (
        encode_name("ns.example.com")
        + encode_name("hostmaster.example.com")
        + (2024010101).to_bytes(4, "big")
        + (7200).to_bytes(4, "big")
        + (3600).to_bytes(4, "big")
        + (1209600).to_bytes(4, "big")
        + (300).to_bytes(4, "big")
    )
    mx, opt = msg.additionals
    assert (mx.rtype, mx.rdata) == (TYPE_MX, b"\x00\x0a" + encode_name("mail.example.com"))
    assert (opt.name, opt.rtype, opt.rclass) == (".", TYPE_OPT, 1232)


def test_reencoded_response_reads_the_same_in_scapy() -> None:
    ours = DnsMessage.parse(_scapy_response()).build()
    theirs = DNS(ours)
    assert theirs.id == 0x4242 and theirs.ancount == 2 and theirs.nscount == 1 and theirs.arcount == 2
    assert theirs.an[0].rdata == b"web.example.com."
    assert theirs.an[1].rdata == "192.0.2.7"
    assert theirs.ns[0].mname == b"ns.example.com." and theirs.ns[0].minimum == 300
    assert theirs.ar[0].exchange == b"mail.example.com."
    # Parsing our encoding gives the same message again.
    assert DnsMessage.parse(ours) == DnsMessage.parse(_scapy_response())


def test_our_answer_reads_in_scapy() -> None:
    msg = DnsMessage(
        id=7,
        flags=make_flags(qr=True, bits=FLAG_RD | FLAG_RA),
        questions=(DnsQuestion(name="host.vmlan.internal", qtype=TYPE_A),),
        answers=(
            DnsRecord.a("host.vmlan.internal", bytes((10, 0, 2, 2)), 60),
            DnsRecord(name="host.vmlan.internal", rtype=TYPE_AAAA, ttl=60, rdata=bytes(15) + b"\1"),
        ),
    )
    wire = msg.build()
    assert wire[12 + 21 + 4 :][:2] == b"\xc0\x0c"  # the answer's owner name points at the question
    parsed = DNS(wire)
    assert parsed.qd[0].qname == b"host.vmlan.internal."
    assert parsed.an[0].rdata == "10.0.2.2" and parsed.an[0].ttl == 60
    assert parsed.an[1].rdata == "::1"
    assert len(msg.build(compress=False)) == len(wire) + 2 * (21 - 2)


# --------------------------------------------------------------------------- hypothesis

labels = st.binary(min_size=1, max_size=63)
label_lists = st.lists(labels, max_size=6).filter(lambda ls: sum(len(x) + 1 for x in ls) + 1 <= 255)
names = label_lists.map(labels_to_name)


@given(label_lists)
def test_name_text_and_wire_round_trip(ls: list[bytes]) -> None:
    text = labels_to_name(ls)
    assert name_to_labels(text) == tuple(ls)
    wire = encode_name(text)
    assert decode_name(wire, 0) == (text, len(wire))


@given(st.lists(label_lists, min_size=1, max_size=6))
def test_compressed_name_sequences_round_trip(many: list[list[bytes]]) -> None:
    table: dict[tuple[bytes, ...], int] = {}
    buf = bytearray()
    starts = []
    for ls in many:
        starts.append(len(buf))
        buf += encode_name(ls, table, len(buf))
    assert len(buf) <= sum(len(encode_name(ls)) for ls in many)
    for ls, start in zip(many, starts, strict=True):
        assert decode_name(buf, start)[0] == labels_to_name(ls)


_RDATA = {
    TYPE_A: st.binary(min_size=4, max_size=4),
    TYPE_AAAA: st.binary(min_size=16, max_size=16),
    TYPE_CNAME: names.map(encode_name),
    TYPE_MX: st.tuples(st.binary(min_size=2, max_size=2), names).map(lambda t: t[0] + encode_name(t[1])),
}


@st.composite
def records(draw: st.DrawFn) -> DnsRecord:
    rtype = draw(st.sampled_from([TYPE_A, TYPE_AAAA, TYPE_CNAME, TYPE_MX, 16, 99]))
    return DnsRecord(
        name=draw(names),
        rtype=rtype,
        rclass=CLASS_IN,
        ttl=draw(st.integers(0, 0xFFFFFFFF)),
        rdata=draw(_RDATA.get(rtype, st.binary(max_size=40))),
    )


messages = st.builds(
    DnsMessage,
    id=st.integers(0, 0xFFFF),
    flags=st.integers(0, 0xFFFF),
    questions=st.lists(
        st.builds(DnsQuestion, name=names, qtype=st.integers(0, 0xFFFF), qclass=st.integers(0, 0xFFFF)),
        max_size=2,
    ).map(tuple),
    answers=st.lists(records(), max_size=3).map(tuple),
    authorities=st.lists(records(), max_size=2).map(tuple),
    additionals=st.lists(records(), max_size=2).map(tuple),
)


@settings(max_examples=200, deadline=None)
@given(messages, st.booleans())
def test_messages_round_trip(msg: DnsMessage, compress: bool) -> None:
    assert DnsMessage.parse(msg.build(compress=compress)) == msg


ldh_names = st.lists(st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True), min_size=1, max_size=4).map(".".join)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 0xFFFF),
    st.lists(st.tuples(ldh_names, st.integers(1, 0xFFFF)), min_size=1, max_size=3),
    st.lists(st.tuples(ldh_names, st.binary(min_size=4, max_size=4), st.integers(0, 0x7FFFFFFF)), max_size=4),
)
def test_scapy_reads_our_messages(
    ident: int, questions: list[tuple[str, int]], answers: list[tuple[str, bytes, int]]
) -> None:
    msg = DnsMessage(
        id=ident,
        flags=FLAG_QR,
        questions=tuple(DnsQuestion(name=n, qtype=t) for n, t in questions),
        answers=tuple(DnsRecord.a(n, a, ttl) for n, a, ttl in answers),
    )
    theirs = DNS(msg.build())
    assert theirs.id == ident and theirs.qr == 1
    assert [(q.qname, q.qtype) for q in theirs.qd] == [((n + ".").encode(), t) for n, t in questions]
    assert [(rr.rrname, rr.rdata, rr.ttl) for rr in theirs.an] == [
        ((n + ".").encode(), ".".join(map(str, a)), ttl) for n, a, ttl in answers
    ]


# --------------------------------------------------------------------------- fuzzing

VALID = [QUERY, _scapy_response(), DnsMessage.parse(_scapy_response()).build()]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80) | mutated(st.sampled_from(VALID)))
def test_parsers_raise_only_wire_errors(data: bytes) -> None:
    only_wire_errors(lambda: DnsMessage.parse(data))
    only_wire_errors(lambda: parse_questions(data))
    only_wire_errors(lambda: decode_name(data, 0))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from([b"\xc0", b"\x00", b"\x01a", b"\x3f", b"\x40", b"\x80"]) | st.binary(max_size=3), max_size=40
    )
)
def test_pointer_soup_never_hangs_or_escapes(parts: list[bytes]) -> None:
    # Dense pointers and label bytes: every start either decodes or raises a WireError, and fast.
    buf = b"".join(parts)
    for start in range(len(buf)):
        try:
            name, after = decode_name(buf, start)
        except WireError:
            continue
        assert start < after <= len(buf)
        assert len(encode_name(name)) <= 255


@st.composite
def compressed_soup(draw: st.DrawFn) -> bytes:
    """Labels, roots, pointers to random earlier offsets and junk octets: names galore, some broken."""
    buf = bytearray()
    for _ in range(draw(st.integers(0, 60))):
        kind = draw(st.integers(0, 9))
        if kind < 4:
            buf += b"\x01" + draw(st.sampled_from([b"a", b"b", b"\xff", b"."]))
        elif kind < 7 and buf:
            buf += (0xC000 | draw(st.integers(0, len(buf) - 1))).to_bytes(2, "big")
        elif kind < 9:
            buf += b"\x00"
        else:
            buf += draw(st.binary(max_size=3))
    return bytes(buf)


def test_names_built_from_cached_suffixes_keep_the_length_and_step_limits() -> None:
    chain = pointer_chain(250)  # 252 steps from its last pointer
    longer = chain + b"".join((0xC000 | (len(chain) + 2 * i - 2)).to_bytes(2, "big") for i in range(4))
    # From the chain's end: 252 steps, fine; four more pointers: 256, one too many.
    names = dns_wire._Names(longer, cache=True)
    assert names.read(len(chain) - 2, len(longer))[0] == "a"
    with pytest.raises(IntegrityError, match="more than 255 steps"):
        names.read(len(longer) - 2, len(longer))
    # A 252-octet name read once: a 3-octet label in front of it makes 255 octets, 4 make 256.
    long_name = encode_name(".".join(["a" * 62] * 3 + ["a" * 61]))
    assert len(long_name) == 252
    for label, ok in ((b"\x02bb", True), (b"\x03bbb", False)):
        buf = long_name + label + b"\xc0\x00"
        names = dns_wire._Names(buf, cache=True)
        first = names.read(0, len(buf))[0]
        start = len(long_name)
        if ok:
            assert names.read(start, len(buf))[0] == "bb." + first == decode_name(buf, start)[0]
            continue
        with pytest.raises(IntegrityError, match="longer than 255"):
            names.read(start, len(buf))
        with pytest.raises(IntegrityError, match="longer than 255"):
            decode_name(buf, start)


@settings(max_examples=300, deadline=None)
@given(compressed_soup())
def test_cached_and_uncached_decoding_agree(buf: bytes) -> None:
    # One reader with a cache decoding every offset in turn (as a message decodes name after name)
    # gives, name by name, what a fresh reader gives: the same text and wire form, or a WireError.
    shared = dns_wire._Names(buf, cache=True)
    for start in range(len(buf)):
        try:
            alone: object = dns_wire._Names(buf, cache=False).read(start, len(buf), wire_form=True)
        except WireError:
            alone = WireError
        try:
            cached: object = shared.read(start, len(buf))
        except WireError:
            cached = WireError
        assert cached == alone, start
        if alone is not WireError:
            text, wire, _ = alone  # type: ignore[misc]
            assert encode_name(text) == wire


@settings(max_examples=300, deadline=None)
@given(st.tuples(st.integers(0, 40), st.integers(0, 8), st.integers(0, 8)), compressed_soup())
def test_any_message_parses_or_raises_within_the_work_bound(counts: tuple[int, int, int], body: bytes) -> None:
    qd, an, ar = counts
    message = struct.pack("!HHHHHH", 1, 0, qd, an, 0, ar) + body
    with counting_steps() as readers:
        only_wire_errors(lambda: DnsMessage.parse(message))
        only_wire_errors(lambda: parse_questions(message))
        only_wire_errors(lambda: parse_questions(message, expect=1))
    # Three parses, each walking an octet at most twice (names of one octet: the root).
    assert sum(r.steps for r in readers) <= 3 * 2 * len(message)


def test_every_truncation_raises_only_wire_errors() -> None:
    for data in VALID:
        for cut in range(len(data)):
            with pytest.raises(WireError):
                DnsMessage.parse(data[:cut])
