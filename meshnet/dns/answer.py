"""From a query's bytes to a decision: a reply to send, a query to forward upstream, or nothing.

The server shell reads a datagram (or a TCP message), calls ``Resolver.answer`` and acts on what
comes back; it owns the sockets, the upstream servers and their timeouts. Nothing here raises on
bad input: every byte comes from a container we do not control.

* Names in our domain (and reverse names of addresses we hold) are answered authoritatively.
* Other names are forwarded: ``Forward`` carries the parsed query for the upstream client.
* Malformed queries get FORMERR when their header is readable, otherwise nothing; responses (QR
  set) are never answered, so two servers cannot bounce packets at each other.

Answers are built with dnspython, except on the hot path: a plain question of an ordinary type
for a name in our domain, with at most an OPT record (carrying at most a cookie). That one is
parsed and answered by hand with ``struct``: about 2.5 us instead of about 100 us through
dnspython, which is what makes 10,000 queries per second on one core reachable end to end.
Tests check that both paths give byte-identical answers.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

from meshnet.dns.records import Records, normalize_address, normalize_name

#: UDP payload we advertise in EDNS and never exceed (DNS flag day 2020: no IP fragmentation).
OUR_PAYLOAD = 1232
#: Plain DNS over UDP (RFC 1035 §4.2.1).
MIN_UDP = 512
#: At most this many addresses (or names) in one answer, so that even a name held by very many
#: containers fits a TCP message (65,535 bytes); the random order picks which ones.
MAX_ANSWERS = 256

_QR = 0x8000
_OPCODE_MASK = 0x7800
_AA = 0x0400
_TC = 0x0200
_RD = 0x0100
_RA = 0x0080
_HEADER = struct.Struct("!HHHHHH")
_QTAIL = struct.Struct("!HH")
_RR_TAIL = struct.Struct("!HHIH")
_OPT_HEAD = struct.Struct("!HHIH")  # after the root name: type, payload size, ttl, rdlength
_OPTION = struct.Struct("!HH")
_OPTION_COOKIE = 10
_TYPE_A = 1
_TYPE_AAAA = 28
_TYPE_OPT = 41
_CLASS_IN = 1
_NOERROR = 0
_NXDOMAIN = 3
#: Owner name of every answer record: a compression pointer to the question's name.
_POINTER_TO_QNAME = b"\xc0\x0c"

_IN_ADDR = dns.name.from_text("in-addr.arpa.")
_IP6 = dns.name.from_text("ip6.arpa.")
_TRANSFERS = frozenset({dns.rdatatype.AXFR, dns.rdatatype.IXFR})


@dataclass(frozen=True)
class Reply:
    """Send ``wire`` back. Over UDP, first ``truncate_for_udp(wire, udp_size)``."""

    wire: bytes
    udp_size: int = MIN_UDP


@dataclass(frozen=True)
class Forward:
    """Not our name: ask the upstream servers ``query`` and relay their answer.

    On timeout or failure, reply ``servfail(query_wire)``. Over UDP, the relayed answer goes
    through ``truncate_for_udp(wire, udp_size)`` too.
    """

    query: dns.message.Message
    udp_size: int = MIN_UDP


@dataclass(frozen=True)
class Drop:
    """Send nothing (a response, or fewer bytes than a DNS header)."""

    reason: str


Answer = Reply | Forward | Drop


@dataclass(frozen=True)
class ResolverStatistics:
    queries: int
    answered: int
    nxdomain: int
    forwarded: int
    formerr: int
    refused: int
    dropped: int
    #: Of ``answered`` and ``nxdomain``, how many took the hand-written path.
    fast: int


@dataclass
class _Counters:
    queries: int = 0
    answered: int = 0
    nxdomain: int = 0
    forwarded: int = 0
    formerr: int = 0
    refused: int = 0
    dropped: int = 0
    fast: int = 0


@dataclass(frozen=True)
class _WireIndex:
    """The domain's names by their lowercase wire form, with packed addresses per family."""

    generation: int
    v4: Mapping[bytes, tuple[bytes, ...]] = field(default_factory=dict)
    v6: Mapping[bytes, tuple[bytes, ...]] = field(default_factory=dict)
    existing: frozenset[bytes] = frozenset()


def _wire_name(fqdn: str) -> bytes:
    labels = fqdn[:-1].split(".") if fqdn != "." else []
    return b"".join(bytes([len(label)]) + label.encode("ascii") for label in labels) + b"\x00"


class Resolver:
    """Answers queries from ``records`` for ``domain``; forwards the rest.

    ``reverse_networks``: the overlay ranges (e.g. the IPAM allocation range), whose reverse
    names we answer with NXDOMAIN when no record holds the address, instead of asking upstream
    servers that cannot know them.
    """

    def __init__(
        self,
        records: Records,
        domain: str = "meshnet.local.",
        ttl: int = 1,
        *,
        reverse_networks: Iterable[str] = (),
        fast_path: bool = True,
    ) -> None:
        if not 0 <= ttl <= 0x7FFFFFFF:
            raise ValueError(f"bad DNS TTL {ttl!r}")
        self._records = records
        self._domain_text = normalize_name(domain)
        self._domain = dns.name.from_text(self._domain_text)
        self._domain_wire = _wire_name(self._domain_text)
        self._ttl = ttl
        self._reverse = tuple(ipaddress.ip_network(n) for n in reverse_networks)
        self._fast_path = fast_path
        self._index = _WireIndex(generation=-1)
        self._counters = _Counters()

    @property
    def domain(self) -> str:
        return self._domain_text

    def set_reverse_networks(self, networks: Iterable[str]) -> None:
        """The server got (or lost) an address: its network's reverse names are ours too."""
        self._reverse = tuple(ipaddress.ip_network(n) for n in networks)

    @property
    def ttl(self) -> int:
        return self._ttl

    def statistics(self) -> ResolverStatistics:
        c = self._counters
        return ResolverStatistics(
            c.queries, c.answered, c.nxdomain, c.forwarded, c.formerr, c.refused, c.dropped, c.fast
        )

    def answer(self, query_wire: bytes, rng: random.Random) -> Answer:
        """Decide what to do with one query; never raises on bad input."""
        self._counters.queries += 1
        if len(query_wire) < _HEADER.size:
            self._counters.dropped += 1
            return Drop("shorter than a DNS header")
        if query_wire[2] & 0x80:
            self._counters.dropped += 1
            return Drop("a response, not a query")
        if self._fast_path:
            fast = self._fast_answer(query_wire, rng)
            if fast is not None:
                self._counters.fast += 1
                return fast
        return self._slow_answer(query_wire, rng)

    # --- the hot path: hand-parsed, hand-built; None means "let dnspython decide"

    def _fast_answer(self, wire: bytes, rng: random.Random) -> Reply | None:
        ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(wire)
        if flags & _OPCODE_MASK or qdcount != 1 or ancount or nscount or arcount > 1:
            return None
        end = len(wire)
        pos = 12
        starts = []
        while True:
            if pos >= end:
                return None
            length = wire[pos]
            if length == 0:
                pos += 1
                break
            if length > 63:  # a compression pointer or an obsolete label type
                return None
            starts.append(pos)
            pos += 1 + length
        qname_end = pos
        if qname_end - 12 > 255 or pos + 4 > end:
            return None
        qtype, qclass = _QTAIL.unpack_from(wire, pos)
        pos += 4
        if qclass != _CLASS_IN or qtype == 0 or qtype == _TYPE_OPT or 128 <= qtype <= 255:
            return None
        question_end = pos
        udp_size = MIN_UDP
        if arcount:
            if pos + 11 > end or wire[pos] != 0:
                return None
            rtype, payload, ttl, rdlength = _OPT_HEAD.unpack_from(wire, pos + 1)
            if rtype != _TYPE_OPT or ttl & 0xFFFF0000 or pos + 11 + rdlength != end:
                return None  # not one OPT, or an extended rcode or EDNS version set
            if rdlength and not _only_cookies(wire, pos + 11, end):
                return None
            udp_size = max(MIN_UDP, min(payload, OUR_PAYLOAD))
        elif pos != end:
            return None
        qname = wire[12:qname_end].lower()
        suffix = qname_end - len(self._domain_wire)
        if not qname.endswith(self._domain_wire) or (suffix != 12 and suffix not in starts):
            return None  # outside our domain
        index = self._wire_index()
        if qtype == _TYPE_A:
            addresses = index.v4.get(qname, ())
        elif qtype == _TYPE_AAAA:
            addresses = index.v6.get(qname, ())
        else:
            addresses = ()
        if addresses or qname in index.existing:
            rcode = _NOERROR
            self._counters.answered += 1
        else:
            rcode = _NXDOMAIN
            self._counters.nxdomain += 1
        if len(addresses) > 1:
            shuffled = list(addresses)
            rng.shuffle(shuffled)
            addresses = tuple(shuffled[:MAX_ANSWERS])
        out_flags = _QR | _AA | (flags & _RD) | _RA | rcode
        parts = [
            _HEADER.pack(ident, out_flags, 1, len(addresses), 0, arcount),
            wire[12:question_end],
        ]
        for packed in addresses:
            parts.append(_POINTER_TO_QNAME)
            parts.append(_RR_TAIL.pack(qtype, _CLASS_IN, self._ttl, len(packed)))
            parts.append(packed)
        if arcount:
            parts.append(b"\x00" + _OPT_HEAD.pack(_TYPE_OPT, OUR_PAYLOAD, 0, 0))
        return Reply(b"".join(parts), udp_size)

    def _wire_index(self) -> _WireIndex:
        generation = self._records.generation
        if self._index.generation == generation:
            return self._index
        names = self._records.index()
        v4: dict[bytes, tuple[bytes, ...]] = {}
        v6: dict[bytes, tuple[bytes, ...]] = {}
        existing = {self._domain_wire}
        for name in names.existing:
            if self._in_domain_text(name):
                existing.add(_wire_name(name))
        for name, addresses in names.by_name.items():
            if not self._in_domain_text(name):
                continue
            ips = [ipaddress.ip_address(a) for a in addresses]
            wire = _wire_name(name)
            four = tuple(ip.packed for ip in ips if ip.version == 4)
            six = tuple(ip.packed for ip in ips if ip.version == 6)
            if four:
                v4[wire] = four
            if six:
                v6[wire] = six
        self._index = _WireIndex(generation, v4, v6, frozenset(existing))
        return self._index

    def _in_domain_text(self, name: str) -> bool:
        return name == self._domain_text or name.endswith("." + self._domain_text)

    # --- everything else, with dnspython

    def _slow_answer(self, wire: bytes, rng: random.Random) -> Answer:
        if wire[2] & (_OPCODE_MASK >> 8):
            # NOTIFY, UPDATE, ...: not for us, whatever the rest says (RFC 1035 §4.1.1).
            return Reply(_header_only(wire, dns.rcode.NOTIMP))
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # dnspython raises many types on bad input; all mean FORMERR
            return self._formerr(wire)
        udp_size = MIN_UDP if query.edns < 0 else max(MIN_UDP, min(query.payload, OUR_PAYLOAD))
        if len(query.question) != 1:
            return self._formerr(wire)
        if query.edns > 0:
            return self._reply(query, dns.rcode.BADVERS, udp_size, authoritative=False)
        question = query.question[0]
        qname, qtype, qclass = question.name, question.rdtype, question.rdclass
        in_domain = qname.is_subdomain(self._domain)
        if in_domain and qclass != dns.rdataclass.IN:
            return self._formerr(wire)
        if qtype in _TRANSFERS:
            return self._reply(query, dns.rcode.REFUSED, udp_size, authoritative=False)
        if qtype != dns.rdatatype.ANY and dns.rdatatype.is_metatype(qtype):
            return self._formerr(wire)
        if in_domain:
            return self._answer_name(query, rng, udp_size)
        if qclass != dns.rdataclass.IN:
            return self._reply(query, dns.rcode.REFUSED, udp_size, authoritative=False)
        if qname.is_subdomain(_IN_ADDR) or qname.is_subdomain(_IP6):
            reverse = self._answer_reverse(query, rng, udp_size)
            if reverse is not None:
                return reverse
        self._counters.forwarded += 1
        return Forward(query, udp_size)

    def _answer_name(self, query: dns.message.Message, rng: random.Random, udp_size: int) -> Reply:
        question = query.question[0]
        fqdn = question.name.to_text().lower()
        addresses = self._records.addresses(fqdn)
        response = self._response(query, authoritative=True)
        rdtypes = {
            dns.rdatatype.A: [dns.rdatatype.A],
            dns.rdatatype.AAAA: [dns.rdatatype.AAAA],
            dns.rdatatype.ANY: [dns.rdatatype.A, dns.rdatatype.AAAA],
        }.get(question.rdtype, [])
        for rdtype in rdtypes:
            version = 4 if rdtype == dns.rdatatype.A else 6
            chosen = [a for a in addresses if ipaddress.ip_address(a).version == version]
            rng.shuffle(chosen)
            if chosen:
                rrset = dns.rrset.RRset(question.name, dns.rdataclass.IN, rdtype)
                rrset.update_ttl(self._ttl)
                for address in chosen[:MAX_ANSWERS]:
                    rrset.add(dns.rdata.from_text(dns.rdataclass.IN, rdtype, address))
                response.answer.append(rrset)
        exists = fqdn == self._domain_text or self._records.exists(fqdn)
        if exists:
            self._counters.answered += 1
        else:
            self._counters.nxdomain += 1
            response.set_rcode(dns.rcode.NXDOMAIN)
        return Reply(_to_wire(response), udp_size)

    def _answer_reverse(
        self, query: dns.message.Message, rng: random.Random, udp_size: int
    ) -> Reply | None:
        """PTR for an address we hold; NXDOMAIN in our reverse networks; else None (forward)."""
        question = query.question[0]
        try:
            address = normalize_address(dns.reversename.to_address(question.name))
        except Exception:  # partial or malformed reverse names: not ours to answer
            return None
        names = self._records.names(address)
        if not names:
            ip = ipaddress.ip_address(address)
            if not any(ip in network for network in self._reverse):
                return None
        response = self._response(query, authoritative=True)
        if names and question.rdtype in (dns.rdatatype.PTR, dns.rdatatype.ANY):
            rng.shuffle(names)
            rrset = dns.rrset.RRset(question.name, dns.rdataclass.IN, dns.rdatatype.PTR)
            rrset.update_ttl(self._ttl)
            for name in names[:MAX_ANSWERS]:
                rrset.add(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.PTR, name))
            response.answer.append(rrset)
        if names:
            self._counters.answered += 1
        else:
            self._counters.nxdomain += 1
            response.set_rcode(dns.rcode.NXDOMAIN)
        return Reply(_to_wire(response), udp_size)

    def _response(self, query: dns.message.Message, *, authoritative: bool) -> dns.message.Message:
        response = dns.message.make_response(
            query, recursion_available=True, our_payload=OUR_PAYLOAD, pad=0
        )
        if authoritative:
            response.flags |= dns.flags.AA
        return response

    def _reply(
        self,
        query: dns.message.Message,
        rcode: dns.rcode.Rcode,
        udp_size: int,
        *,
        authoritative: bool,
    ) -> Reply:
        if rcode == dns.rcode.REFUSED:
            self._counters.refused += 1
        response = self._response(query, authoritative=authoritative)
        response.set_rcode(rcode)
        return Reply(_to_wire(response), udp_size)

    def _formerr(self, wire: bytes) -> Reply:
        self._counters.formerr += 1
        return Reply(_header_only(wire, dns.rcode.FORMERR))


def _only_cookies(wire: bytes, pos: int, end: int) -> bool:
    """Whether the EDNS options in ``wire[pos:end]`` are well-formed cookies and nothing else.

    dig sends a client cookie by default. We do not implement cookies, and a server that does
    not simply ignores them (RFC 7873 §5.2.2); other options are left to dnspython to check.
    """
    while pos < end:
        if pos + 4 > end:
            return False
        code, length = _OPTION.unpack_from(wire, pos)
        pos += 4 + length
        if code != _OPTION_COOKIE or not (length == 8 or 16 <= length <= 40) or pos > end:
            return False
    return True


def _to_wire(message: dns.message.Message) -> bytes:
    """Rendered whatever its size (truncation for UDP is ``truncate_for_udp``'s business), in
    the order we chose: dnspython would otherwise shuffle with its own global random."""
    wire: bytes = message.to_wire(max_size=65_535, want_shuffle=False)
    return wire


def _header_only(wire: bytes, rcode: int) -> bytes:
    """A reply with no sections, from a query's header alone (when the rest is unreadable)."""
    ident, flags = struct.unpack_from("!HH", wire)
    out_flags = _QR | (flags & (_OPCODE_MASK | _RD)) | _RA | (rcode & 0xF)
    return _HEADER.pack(ident, out_flags, 0, 0, 0, 0)


def servfail(query_wire: bytes) -> bytes:
    """SERVFAIL for a query we could not get answered (upstream down or timed out).

    ValueError if ``query_wire`` is shorter than a DNS header (there is nobody to answer).
    """
    if len(query_wire) < _HEADER.size:
        raise ValueError("shorter than a DNS header")
    try:
        query = dns.message.from_wire(query_wire)
        response = dns.message.make_response(
            query, recursion_available=True, our_payload=OUR_PAYLOAD, pad=0
        )
        response.set_rcode(dns.rcode.SERVFAIL)
        return _to_wire(response)
    except Exception:
        return _header_only(query_wire, dns.rcode.SERVFAIL)


def truncate_for_udp(response_wire: bytes, max_size: int = MIN_UDP) -> bytes:
    """``response_wire`` if it fits in ``max_size`` bytes; else the same reply, emptied, with TC.

    The client then asks again over TCP (RFC 7766). The question and the EDNS record stay; the
    answer, authority and additional sections go. ``max_size``: ``Reply.udp_size`` or
    ``Forward.udp_size``. Works on any response, also an unreadable one from upstream.
    """
    if len(response_wire) <= max_size:
        return response_wire
    if len(response_wire) < _HEADER.size:
        raise ValueError("shorter than a DNS header")
    try:
        message = dns.message.from_wire(response_wire)
        message.answer = []
        message.authority = []
        message.additional = []
        message.flags |= dns.flags.TC
        wire: bytes = message.to_wire(max_size=max(max_size, MIN_UDP))
        if len(wire) <= max_size:
            return wire
    except Exception:
        pass
    ident, flags = struct.unpack_from("!HH", response_wire)
    return _HEADER.pack(ident, flags | _TC, 0, 0, 0, 0)
