"""Query bytes in, a decision out: authoritative answers for the domain, forwarding for the rest,
FORMERR or silence for malformed queries, and never an exception."""

from __future__ import annotations

import random
import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.dns.answer import (
    MAX_ANSWERS,
    MIN_UDP,
    OUR_PAYLOAD,
    Answer,
    Drop,
    Forward,
    Reply,
    Resolver,
    servfail,
    truncate_for_udp,
)
from meshnet.dns.records import Record, Records

NOW = 1_700_000_000.0
BOTH = pytest.mark.parametrize("fast", [True, False], ids=["fast", "dnspython"])


def make_records() -> Records:
    records = Records(peer=1, now=NOW)
    records.register("web.meshnet.local.", "10.32.0.1", "c1", NOW)
    records.register("web.meshnet.local.", "10.32.0.2", "c2", NOW)
    records.register("web.meshnet.local.", "fd00::2", "c2", NOW)
    records.register("v6only.meshnet.local.", "fd00::9", "c9", NOW)
    records.register("db.eu.meshnet.local.", "10.32.0.3", "c3", NOW)
    records.register("alias.meshnet.local.", "10.32.0.3", "c3", NOW)
    records.register("outside.example.", "10.32.0.4", "c4", NOW)
    return records


def resolver(fast: bool = True, records: Records | None = None) -> Resolver:
    return Resolver(
        make_records() if records is None else records,
        ttl=5,
        reverse_networks=["10.32.0.0/12", "fd00::/64"],
        fast_path=fast,
    )


def make_query(name: str, rdtype: str, payload: int | None) -> dns.message.Message:
    if payload is None:
        return dns.message.make_query(name, rdtype)
    return dns.message.make_query(name, rdtype, use_edns=0, payload=payload)


def ask(res: Resolver, query: dns.message.Message | bytes, seed: int = 0) -> Answer:
    wire = query if isinstance(query, bytes) else query.to_wire()
    return res.answer(wire, random.Random(seed))


def reply_to(
    res: Resolver, query: dns.message.Message | bytes, seed: int = 0
) -> dns.message.Message:
    answer = ask(res, query, seed)
    assert isinstance(answer, Reply), answer
    return dns.message.from_wire(answer.wire)


def rcode_of(answer: Answer) -> int:
    assert isinstance(answer, Reply), answer
    return answer.wire[3] & 0xF


def addresses(response: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in response.answer for rd in rrset]


# --- answers for the domain


@BOTH
@pytest.mark.parametrize(
    ("name", "rdtype", "expected"),
    [
        ("web.meshnet.local.", "A", ["10.32.0.1", "10.32.0.2"]),
        ("web.meshnet.local.", "AAAA", ["fd00::2"]),
        ("WeB.MeshNet.Local.", "A", ["10.32.0.1", "10.32.0.2"]),
        ("db.eu.meshnet.local.", "A", ["10.32.0.3"]),
    ],
)
def test_address_answers(fast: bool, name: str, rdtype: str, expected: list[str]) -> None:
    query = dns.message.make_query(name, rdtype)
    response = reply_to(resolver(fast), query)
    assert response.id == query.id
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.QR and response.flags & dns.flags.AA
    assert response.flags & dns.flags.RD and response.flags & dns.flags.RA
    assert response.question == query.question
    assert str(response.question[0].name) == name  # 0x20 case preserved
    assert sorted(addresses(response)) == expected
    [rrset] = response.answer
    assert rrset.ttl == 5 and rrset.name == query.question[0].name


@BOTH
@pytest.mark.parametrize(
    ("name", "rdtype", "rcode"),
    [
        ("nope.meshnet.local.", "A", dns.rcode.NXDOMAIN),
        ("sub.web.meshnet.local.", "A", dns.rcode.NXDOMAIN),
        ("nope.meshnet.local.", "MX", dns.rcode.NXDOMAIN),
        ("web.meshnet.local.", "MX", dns.rcode.NOERROR),  # NODATA
        ("web.meshnet.local.", "TXT", dns.rcode.NOERROR),
        ("web.meshnet.local.", "CAA", dns.rcode.NOERROR),  # a type above 255
        ("v6only.meshnet.local.", "A", dns.rcode.NOERROR),
        ("db.eu.meshnet.local.", "AAAA", dns.rcode.NOERROR),
        ("eu.meshnet.local.", "A", dns.rcode.NOERROR),  # an empty non-terminal
        ("meshnet.local.", "SOA", dns.rcode.NOERROR),  # the apex exists
        ("meshnet.local.", "A", dns.rcode.NOERROR),
    ],
)
def test_negative_answers(fast: bool, name: str, rdtype: str, rcode: int) -> None:
    response = reply_to(resolver(fast), dns.message.make_query(name, rdtype))
    assert response.rcode() == rcode
    assert response.answer == [] and response.authority == []
    assert response.flags & dns.flags.AA


@BOTH
def test_any_gives_both_families(fast: bool) -> None:
    response = reply_to(resolver(fast), dns.message.make_query("web.meshnet.local.", "ANY"))
    assert sorted(addresses(response)) == ["10.32.0.1", "10.32.0.2", "fd00::2"]


@BOTH
def test_random_order_covers_both_orders(fast: bool) -> None:
    res = resolver(fast)
    query = dns.message.make_query("web.meshnet.local.", "A")
    orders = {tuple(addresses(reply_to(res, query, seed))) for seed in range(64)}
    assert orders == {("10.32.0.1", "10.32.0.2"), ("10.32.0.2", "10.32.0.1")}


@BOTH
def test_answers_follow_record_changes(fast: bool) -> None:
    records = make_records()
    res = resolver(fast, records)
    query = dns.message.make_query("new.meshnet.local.", "A")
    assert reply_to(res, query).rcode() == dns.rcode.NXDOMAIN
    records.register("new.meshnet.local.", "10.32.0.7", "c7", NOW)
    assert addresses(reply_to(res, query)) == ["10.32.0.7"]
    records.merge([Record("new.meshnet.local.", "10.32.0.8", "c8", 2, 1)])
    records.peer_gone(2)
    assert addresses(reply_to(res, query)) == ["10.32.0.7"]
    records.remove("c7", NOW)
    assert reply_to(res, query).rcode() == dns.rcode.NXDOMAIN


@BOTH
def test_many_addresses_are_capped_to_fit_tcp(fast: bool) -> None:
    records = Records(peer=1, now=NOW)
    for i in range(MAX_ANSWERS + 50):
        records.register("big.meshnet.local.", f"fd00::{i:x}", f"c{i}", NOW)
    answer = ask(resolver(fast, records), dns.message.make_query("big.meshnet.local.", "AAAA"))
    assert isinstance(answer, Reply) and len(answer.wire) < 65_535
    assert len(addresses(dns.message.from_wire(answer.wire))) == MAX_ANSWERS


@BOTH
@pytest.mark.parametrize(
    ("payload", "udp_size"), [(None, MIN_UDP), (4096, OUR_PAYLOAD), (1000, 1000), (100, MIN_UDP)]
)
def test_udp_size_and_edns(fast: bool, payload: int | None, udp_size: int) -> None:
    query = make_query("web.meshnet.local.", "A", payload)
    answer = ask(resolver(fast), query)
    assert isinstance(answer, Reply) and answer.udp_size == udp_size
    response = dns.message.from_wire(answer.wire)
    assert response.edns == (-1 if payload is None else 0)
    if payload is not None:
        assert response.payload == OUR_PAYLOAD


COOKIE = dns.edns.CookieOption(b"\x01" * 8, b"")
NSID = dns.edns.GenericOption(dns.edns.OptionType.NSID, b"")


@pytest.mark.parametrize(
    ("options", "fast"),
    [
        ([COOKIE], True),  # what dig sends by default
        ([dns.edns.CookieOption(b"\x01" * 8, b"\x02" * 16)], True),
        ([NSID], False),
        ([COOKIE, NSID], False),
        ([COOKIE, COOKIE], True),
    ],
)
def test_edns_options(options: list[dns.edns.Option], fast: bool) -> None:
    res = resolver()
    query = dns.message.make_query("web.meshnet.local.", "A", use_edns=0, options=options)
    answer = ask(res, query)
    response = reply_to(res, query)
    assert sorted(addresses(response)) == ["10.32.0.1", "10.32.0.2"]
    assert response.options == ()  # we implement no option, so we echo none
    assert res.statistics().fast == (2 if fast else 0)
    assert answer == ask(resolver(False), query)


# --- the hand-written path and dnspython agree

names = st.sampled_from(
    [
        "web.meshnet.local.",
        "WEB.meshnet.LOCAL.",
        "v6only.meshnet.local.",
        "nope.meshnet.local.",
        "eu.meshnet.local.",
        "db.eu.meshnet.local.",
        "meshnet.local.",
        "x.y.z.meshnet.local.",
        "ameshnet.local.",
        "example.com.",
    ]
)
rdtypes = st.sampled_from(["A", "AAAA", "MX", "TXT", "SRV", "CAA", "NS", "SOA", "ANY", "PTR"])


@given(names, rdtypes, st.sampled_from([None, 512, 1232, 4096]), st.integers(0, 2**32))
@settings(max_examples=300)
def test_fast_path_agrees_with_dnspython(
    name: str, rdtype: str, payload: int | None, seed: int
) -> None:
    query = make_query(name, rdtype, payload)
    fast = ask(resolver(True), query, seed)
    slow = ask(resolver(False), query, seed)
    if isinstance(slow, Reply):
        assert isinstance(fast, Reply)
        assert fast.wire == slow.wire  # the same bytes, answers in the same order
        assert fast.udp_size == slow.udp_size
    else:
        assert type(fast) is type(slow)


def test_fast_path_is_taken_for_plain_queries() -> None:
    res = resolver()
    for rdtype in ("A", "AAAA", "MX"):
        ask(res, dns.message.make_query("web.meshnet.local.", rdtype))
        ask(res, dns.message.make_query("web.meshnet.local.", rdtype, use_edns=0))
    stats = res.statistics()
    assert stats.fast == stats.queries == 6


@BOTH
@pytest.mark.parametrize(
    ("name", "rdtype"),
    [
        ("db.eu.meshnet.local.", "AAAA"),  # IPv4 only
        ("v6only.meshnet.local.", "A"),  # IPv6 only
        ("WEB.meshnet.local.", "MX"),  # both, another type
    ],
)
def test_the_other_family_only_is_nodata_not_nxdomain(fast: bool, name: str, rdtype: str) -> None:
    """NOERROR with no records at all: a resolver must not conclude the name is gone (RFC
    8020), and a dual-stack client then simply uses the family there is. No SOA either: we send
    none with any NODATA, so clients do not cache the absence beyond the moment."""
    response = reply_to(resolver(fast), dns.message.make_query(name, rdtype, use_edns=0))
    assert response.rcode() == dns.rcode.NOERROR and response.flags & dns.flags.AA
    assert (response.answer, response.authority) == ([], [])


@BOTH
def test_a_dual_stack_name_answers_each_family_in_its_own_type(fast: bool) -> None:
    res = resolver(fast)
    six = reply_to(res, dns.message.make_query("web.meshnet.local.", "AAAA"))
    assert [rrset.rdtype for rrset in six.answer] == [dns.rdatatype.AAAA]
    four = reply_to(res, dns.message.make_query("web.meshnet.local.", "A"))
    assert [rrset.rdtype for rrset in four.answer] == [dns.rdatatype.A]
    both = reply_to(res, dns.message.make_query("web.meshnet.local.", "ANY"))
    assert sorted(addresses(both)) == ["10.32.0.1", "10.32.0.2", "fd00::2"]


# --- reverse lookups


@BOTH
@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.32.0.3", ["alias.meshnet.local.", "db.eu.meshnet.local."]),
        ("10.32.0.1", ["web.meshnet.local."]),
        ("fd00::9", ["v6only.meshnet.local."]),
        ("10.32.0.4", ["outside.example."]),
    ],
)
def test_ptr_for_overlay_addresses(fast: bool, address: str, expected: list[str]) -> None:
    name = dns.reversename.from_address(address)
    response = reply_to(resolver(fast), dns.message.make_query(name, "PTR"))
    assert response.rcode() == dns.rcode.NOERROR and response.flags & dns.flags.AA
    assert sorted(addresses(response)) == expected


def test_reverse_names_we_cannot_answer() -> None:
    res = resolver()
    unknown_overlay = dns.reversename.from_address("10.32.9.9")
    response = reply_to(res, dns.message.make_query(unknown_overlay, "PTR"))
    assert response.rcode() == dns.rcode.NXDOMAIN and response.flags & dns.flags.AA
    known = dns.reversename.from_address("10.32.0.1")
    assert reply_to(res, dns.message.make_query(known, "TXT")).answer == []
    for name in ("8.8.8.8.in-addr.arpa.", "32.10.in-addr.arpa.", "x.1.in-addr.arpa."):
        assert isinstance(ask(res, dns.message.make_query(name, "PTR")), Forward)
    outside = dns.reversename.from_address("2001:db8::1")
    assert isinstance(ask(res, dns.message.make_query(outside, "PTR")), Forward)


def test_ip6_arpa_names_of_the_server_networks_are_ours_as_they_come_and_go() -> None:
    """The server's networks (``set_reverse_networks``, as the service sets them when it starts
    or stops listening on an address) decide which unknown reverse names are NXDOMAIN here."""
    res = Resolver(make_records(), ttl=5)
    unknown = dns.reversename.from_address("fd00::77")
    known = dns.reversename.from_address("fd00::9")
    assert isinstance(ask(res, dns.message.make_query(unknown, "PTR")), Forward)
    assert addresses(reply_to(res, dns.message.make_query(known, "PTR"))) == [
        "v6only.meshnet.local."
    ]
    res.set_reverse_networks(["10.32.0.0/12", "fd00::/64"])
    response = reply_to(res, dns.message.make_query(unknown, "PTR"))
    assert response.rcode() == dns.rcode.NXDOMAIN and response.flags & dns.flags.AA
    partial = dns.name.from_text("0.0.d.f.ip6.arpa.")  # not a whole address: not ours
    assert isinstance(ask(res, dns.message.make_query(partial, "PTR")), Forward)
    res.set_reverse_networks(["10.32.0.0/12"])
    assert isinstance(ask(res, dns.message.make_query(unknown, "PTR")), Forward)


# --- forwarding


@BOTH
@pytest.mark.parametrize(
    "name", ["example.com.", "ameshnet.local.", "local.", "outside.example.", "."]
)
def test_names_outside_the_domain_are_forwarded(fast: bool, name: str) -> None:
    query = dns.message.make_query(name, "A", use_edns=0, payload=4096)
    answer = ask(resolver(fast), query)
    assert isinstance(answer, Forward)
    assert answer.query == query and answer.udp_size == OUR_PAYLOAD


@pytest.mark.parametrize(
    ("name", "rdtype", "rdclass"),
    [
        ("version.bind.", "TXT", "CH"),
        ("example.com.", "AXFR", "IN"),
        ("example.com.", "IXFR", "IN"),
        ("meshnet.local.", "AXFR", "IN"),
    ],
)
def test_refused(name: str, rdtype: str, rdclass: str) -> None:
    res = resolver()
    answer = ask(res, dns.message.make_query(name, rdtype, rdclass))
    assert rcode_of(answer) == dns.rcode.REFUSED
    assert res.statistics().refused == 1


# --- malformed and unwanted queries

WEB_A = dns.message.make_query("web.meshnet.local.", "A", use_edns=0).to_wire()


def header(qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0, flags: int = 0x0100) -> bytes:
    return struct.pack("!HHHHHH", 0x1234, flags, qd, an, ns, ar)


QTAIL = struct.pack("!HH", 1, 1)
QNAME = b"\x03web\x07meshnet\x05local\x00"
FORMERR_QUERIES = {
    "empty question section": header(qd=0),
    "two questions": header(qd=2) + QNAME + QTAIL + QNAME + QTAIL,
    "huge question count": header(qd=0xFFFF) + QNAME + QTAIL,
    "huge answer count": header(an=0xFFFF) + QNAME + QTAIL,
    "huge additional count": header(ar=0xFFFF) + QNAME + QTAIL,
    "pointer loop": header() + b"\xc0\x0c" + QTAIL,
    "forward pointer": header() + b"\xc0\x20" + QTAIL + b"\x00" * 20,
    "two-pointer loop": header() + b"\x01a\xc0\x0f\xc0\x0c" + QTAIL,
    "extended label type": header() + b"\x41" + b"a" * 65 + b"\x00" + QTAIL,
    "name over 255 bytes": header()
    + b"\x3f"
    + b"a" * 63
    + (b"\x3fb" + b"b" * 62) * 4
    + b"\x00"
    + QTAIL,
    "trailing junk": WEB_A + b"junk",
    "no question tail": header() + QNAME,
    "CH class in our domain": header() + QNAME + struct.pack("!HH", 1, 3),
    "ANY class in our domain": header() + QNAME + struct.pack("!HH", 1, 255),
    "HS class in our domain": header() + QNAME + struct.pack("!HH", 1, 4),
    "OPT as question type": header() + QNAME + struct.pack("!HH", 41, 1),
    "TSIG as question type": header() + QNAME + struct.pack("!HH", 250, 1),
    "two OPT records": header(ar=2) + QNAME + QTAIL + (b"\x00\x00\x29\x04\xd0" + b"\x00" * 6) * 2,
    "OPT with a bad option": header(ar=1)
    + QNAME
    + QTAIL
    + b"\x00\x00\x29\x04\xd0"
    + b"\x00" * 4
    + b"\x00\x05"
    + b"\x00\x0a\x00\x09\x01",
}


@BOTH
@pytest.mark.parametrize("wire", list(FORMERR_QUERIES.values()), ids=list(FORMERR_QUERIES))
def test_malformed_queries_get_formerr(fast: bool, wire: bytes) -> None:
    res = resolver(fast)
    answer = ask(res, wire)
    assert rcode_of(answer) == dns.rcode.FORMERR
    assert isinstance(answer, Reply) and answer.wire[:2] == wire[:2]
    dns.message.from_wire(answer.wire)  # a well-formed message
    assert res.statistics().formerr == 1


@BOTH
def test_every_truncation_gets_formerr_or_is_dropped(fast: bool) -> None:
    res = resolver(fast)
    for size in range(len(WEB_A)):
        answer = ask(res, WEB_A[:size])
        if size < 12:
            assert isinstance(answer, Drop)
        else:
            assert rcode_of(answer) == dns.rcode.FORMERR, size


def test_responses_and_runts_are_dropped() -> None:
    res = resolver()
    response = dns.message.make_response(dns.message.make_query("web.meshnet.local.", "A"))
    assert isinstance(ask(res, response), Drop)
    assert isinstance(ask(res, b""), Drop)
    assert isinstance(ask(res, b"\x00" * 11), Drop)
    assert res.statistics().dropped == 3


@pytest.mark.parametrize("opcode", [dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.STATUS])
def test_other_opcodes_get_notimp(opcode: dns.opcode.Opcode) -> None:
    query = dns.message.make_query("web.meshnet.local.", "A")
    query.set_opcode(opcode)
    assert rcode_of(ask(resolver(), query)) == dns.rcode.NOTIMP


def test_unknown_edns_version_gets_badvers() -> None:
    query = dns.message.make_query("web.meshnet.local.", "A", use_edns=1)
    response = reply_to(resolver(), query)
    assert response.rcode() == dns.rcode.BADVERS


@given(st.binary(max_size=600))
@settings(max_examples=2000)
def test_random_bytes_never_raise(wire: bytes) -> None:
    answer = resolver().answer(wire, random.Random(0))
    assert isinstance(answer, Reply | Forward | Drop)
    if isinstance(answer, Reply):
        dns.message.from_wire(answer.wire)


@given(
    st.sampled_from(
        [WEB_A, dns.message.make_query("nope.meshnet.local.", "AAAA").to_wire(), QNAME]
    ),
    st.lists(st.tuples(st.integers(0, 100), st.integers(0, 255)), min_size=1, max_size=4),
    st.booleans(),
)
@settings(max_examples=2000)
def test_mutated_queries_never_raise(base: bytes, edits: list[tuple[int, int]], fast: bool) -> None:
    wire = bytearray(base if base != QNAME else header() + QNAME + QTAIL)
    for where, value in edits:
        wire[where % len(wire)] = value
    answer = resolver(fast).answer(bytes(wire), random.Random(0))
    assert isinstance(answer, Reply | Forward | Drop)
    if isinstance(answer, Reply):
        assert answer.wire[:2] == bytes(wire[:2])
        dns.message.from_wire(answer.wire)


# --- helpers for the shell


def test_servfail() -> None:
    query = dns.message.make_query("example.com.", "A", use_edns=0)
    response = dns.message.from_wire(servfail(query.to_wire()))
    assert response.id == query.id and response.rcode() == dns.rcode.SERVFAIL
    assert response.question == query.question and response.flags & dns.flags.RA
    garbage = dns.message.from_wire(servfail(b"\xab\xcd" + b"\xff" * 20))
    assert garbage.id == 0xABCD and garbage.rcode() == dns.rcode.SERVFAIL
    with pytest.raises(ValueError):
        servfail(b"\x00")


def big_response() -> tuple[dns.message.Message, bytes]:
    records = Records(peer=1, now=NOW)
    for i in range(60):
        records.register("big.meshnet.local.", f"fd00::{i:x}", f"c{i}", NOW)
    query = dns.message.make_query("big.meshnet.local.", "AAAA", use_edns=0, payload=4096)
    answer = ask(resolver(True, records), query)
    assert isinstance(answer, Reply) and len(answer.wire) > OUR_PAYLOAD
    return query, answer.wire


def test_truncate_for_udp() -> None:
    query, wire = big_response()
    assert truncate_for_udp(wire, 65_535) == wire
    small = truncate_for_udp(wire, OUR_PAYLOAD)
    assert len(small) <= OUR_PAYLOAD
    response = dns.message.from_wire(small)
    assert response.flags & dns.flags.TC and response.flags & dns.flags.AA
    assert response.id == query.id and response.question == query.question
    assert response.answer == [] and response.edns == 0
    plain = ask(resolver(), dns.message.make_query("web.meshnet.local.", "A"))
    assert isinstance(plain, Reply) and truncate_for_udp(plain.wire) == plain.wire


@BOTH
def test_a_large_answer_to_a_small_edns_payload_is_rendered_whole(fast: bool) -> None:
    """The UDP limit is applied by truncate_for_udp; over TCP the whole answer goes."""
    records = Records(peer=1, now=NOW)
    for i in range(100):
        records.register("big.meshnet.local.", f"fd00::{i:x}", f"c{i}", NOW)
    query = dns.message.make_query("big.meshnet.local.", "AAAA", use_edns=0, payload=1232)
    answer = ask(resolver(fast, records), query)
    assert isinstance(answer, Reply) and len(answer.wire) > answer.udp_size == 1232
    assert len(addresses(dns.message.from_wire(answer.wire))) == 100


def test_truncate_an_unreadable_response() -> None:
    junk = b"\x12\x34\x81\x80" + b"\xff" * 600
    small = truncate_for_udp(junk, MIN_UDP)
    assert len(small) == 12 and small[:2] == b"\x12\x34"
    assert dns.message.from_wire(small).flags & dns.flags.TC


def test_statistics() -> None:
    res = resolver()
    ask(res, dns.message.make_query("web.meshnet.local.", "A"))
    ask(res, dns.message.make_query("nope.meshnet.local.", "A"))
    ask(res, dns.message.make_query("example.com.", "A"))
    ask(res, b"\x00" * 12)
    stats = res.statistics()
    assert (stats.queries, stats.answered, stats.nxdomain, stats.forwarded, stats.formerr) == (
        4,
        1,
        1,
        1,
        1,
    )


def test_bad_configuration() -> None:
    with pytest.raises(ValueError):
        Resolver(make_records(), ttl=-1)
    with pytest.raises(ValueError):
        Resolver(make_records(), domain="bad..domain")
    assert Resolver(make_records(), domain="Mesh.Example").domain == "mesh.example."


@given(
    st.sampled_from(
        [
            WEB_A,
            dns.message.make_query("web.meshnet.local.", "AAAA").to_wire(),
            dns.message.make_query("nope.meshnet.local.", "MX").to_wire(),
            dns.message.make_query("web.meshnet.local.", "A", use_edns=0).to_wire(),
            dns.message.make_query("web.meshnet.local.", "A", options=[COOKIE]).to_wire(),
        ]
    ),
    st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), min_size=1, max_size=3),
)
@settings(max_examples=3000)
def test_both_paths_decide_alike_on_mutated_queries(
    base: bytes, edits: list[tuple[int, int]]
) -> None:
    wire = bytearray(base)
    for where, value in edits:
        wire[where % len(wire)] = value
    fast = resolver(True).answer(bytes(wire), random.Random(7))
    slow = resolver(False).answer(bytes(wire), random.Random(7))
    assert type(fast) is type(slow)
    if isinstance(fast, Reply) and isinstance(slow, Reply):
        assert fast == slow
