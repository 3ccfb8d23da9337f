"""The DNS record store: every container name on every host, replicated by gossip.

A record says "``origin`` maps ``name`` to ``address`` for ``container``"; the address is IPv4 or
IPv6 (a dual-stack container has one record per address), in its canonical text on the wire too,
as peers have always decoded it (A and AAAA are the resolver's split). Only its origin ever
changes it, always bumping its version; a removal is a tombstone (a record with the time it was
removed), so that the removal travels like any other change. Merging keeps, per key
``(origin, container, name, address)``, the record that wins the total order
``(version, tombstoned, tombstone time)``: commutative, associative and idempotent, whatever
order gossip arrives in.

Tombstones are dropped ``tombstone_ttl`` seconds after their origin made them. Their time is the
origin's wall clock and travels with them, so every peer forgets a removal at about the same
moment; an already-expired tombstone that arrives late is applied but not kept. A live copy of a
removed record that outlives its tombstone somewhere (a peer that was away) cannot come back for
good: the origin is the authority on its own records, and a peer that receives a version of one
of its records that is not the one it holds (a previous incarnation's, or one it has forgotten)
bumps past it and re-asserts its own (weaveworks/mesh does the same for peer entries).

Records of a peer that left the mesh are hidden, not forgotten: if it comes back they are
answered again at once, without waiting for it to re-send them. Not for ever, though: once it
has been gone ``departed_ttl`` seconds (10 minutes, like Weave's tombstones) its records are
purged, and at once on ``rmpeer`` (``forget_peer``); if it returns it re-sends them.

The store is bounded by what others send: each origin holds at most ``MAX_PER_ORIGIN`` records
(live, tombstoned and hidden alike), and other origins together at most ``MAX_RECORDS -
MAX_PER_ORIGIN``, so one origin cannot fill the table and our own names always fit. Records
beyond a quota are dropped and counted (``overflow``); a peer that sends them is not cut off.

Time is passed in (``now``: wall-clock seconds, as ``time.time()``, because tombstone times are
compared across hosts). The ``Gossiper`` methods take no time: they use the latest ``now`` the
shell gave (``expire(now)`` advances it, and the shell calls it every few seconds).
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import types
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from meshnet.errors import RemoteProtocolError, UserError
from meshnet.gossip.payload import decode_items, pack_array
from meshnet.gossip.versions import plausible_version

MAX_PEER_NAME = (1 << 48) - 1
MAX_VERSION = (1 << 63) - 1
#: A name in presentation form with its trailing dot (RFC 1035: 255 octets on the wire).
MAX_NAME = 254
MAX_CONTAINER = 128
MAX_ADDRESS_TEXT = 39
#: Records held (live, tombstoned and hidden alike). Bounded so that a full state fits in one
#: control frame (``meshnet.gossip.framing.MAX_FRAME_SIZE``, 4 MiB) even with maximal fields
#: (at most 454 bytes each): 8192 of other origins and our own quota.
MAX_RECORDS = 9216
#: Records held per origin, ours included: a thousand containers' names on one host (and the
#: tombstones of names removed in the last ``tombstone_ttl``).
MAX_PER_ORIGIN = 1024
MAX_PAYLOAD = 4 << 20
#: Tombstone times are wall-clock seconds; anything outside this range is not a time.
MAX_TIME = float(1 << 40)

Key = tuple[int, str, str, str]

_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


@dataclass(frozen=True)
class Record:
    """One name → address mapping as its origin last stated it.

    ``tombstone``: when the origin removed it (wall-clock seconds); None while it is live.
    """

    name: str
    address: str
    container: str
    origin: int
    version: int
    tombstone: float | None = None

    @property
    def key(self) -> Key:
        return (self.origin, self.container, self.name, self.address)

    @property
    def live(self) -> bool:
        return self.tombstone is None

    @functools.cached_property
    def packed(self) -> bytes:
        """The msgpack encoding, cached: full states repeat the same records again and again."""
        return msgpack.packb(_record_obj(self), use_bin_type=True)  # type: ignore[no-any-return]


def _rank(r: Record) -> tuple[int, bool, float]:
    return (r.version, r.tombstone is not None, -1.0 if r.tombstone is None else r.tombstone)


def beats(a: Record, b: Record) -> bool:
    """Whether ``a`` wins over ``b`` (same key): the strict total order that merge maximises."""
    return _rank(a) > _rank(b)


def normalize_name(name: str) -> str:
    """The canonical form of a host name: lowercase, with its trailing dot; ValueError if bad.

    Labels are letters, digits, ``-`` and ``_`` (container names often carry underscores).
    """
    if not isinstance(name, str):
        raise ValueError(f"not a DNS name: {name!r:.80}")
    fqdn = name.lower() if name.endswith(".") else name.lower() + "."
    if not 2 <= len(fqdn) <= MAX_NAME or not fqdn.isascii():
        raise ValueError(f"bad DNS name {name!r:.80}")
    for label in fqdn[:-1].split("."):
        if not _LABEL.fullmatch(label):
            raise ValueError(f"bad DNS name {name!r:.80}")
    return fqdn


def normalize_address(address: str) -> str:
    """The canonical text of an IPv4 or IPv6 address; ValueError if it is not one.

    IPv6 is in RFC 5952 form (``fd00::1``), so one address has one key whatever text named
    it. A zone (``fe80::1%eth0``) is refused: it names an interface of one host, means nothing
    to another, and an AAAA record cannot carry it. So is an IPv4-mapped address
    (``::ffff:10.32.0.1``): it is the IPv4 address, and Python versions disagree on its text.
    """
    if not isinstance(address, str) or len(address) > 64:
        raise ValueError(f"not an IP address: {address!r:.80}")
    if "%" in address:
        raise ValueError(f"an IPv6 zone has no meaning in DNS: {address!r:.80}")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"not an IP address: {address!r:.80}") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        raise ValueError(
            f"an IPv4-mapped address: give {ip.ipv4_mapped} instead of {address!r:.80}"
        )
    return str(ip)


def _check_container(container: str) -> str:
    if (
        not isinstance(container, str)
        or not 0 < len(container) <= MAX_CONTAINER
        or not container.isascii()
        or not container.isprintable()
    ):
        raise ValueError(f"bad container id {container!r:.80}")
    return container


@dataclass(frozen=True)
class RecordsStatistics:
    """What ``meshnet status dns`` shows about the store."""

    live: int
    tombstones: int
    hidden: int
    hidden_peers: tuple[int, ...]
    reassertions: int
    expired: int
    #: Records dropped because the store or their origin's quota was full.
    overflow: int
    #: Our own records taken back from the mesh after our state file was lost (``recover``).
    recovered: int = 0
    #: Records of departed peers forgotten (``departed_ttl`` after they left, or ``rmpeer``).
    purged: int = 0
    #: Records dropped because their version jumped implausibly far (forgeries).
    implausible: int = 0


class Records:
    """This peer's view of every record; ``peer`` is the local peer (the only origin it speaks for).

    Implements ``meshnet.gossip.channel.Gossiper``. Local changes (``register``, ``remove``)
    return a delta for the shell to gossip at once (``Mesh.gossip``).
    """

    def __init__(
        self,
        *,
        peer: int,
        now: float,
        tombstone_ttl: float = 600.0,
        departed_ttl: float = 600.0,
    ) -> None:
        if not 0 <= peer <= MAX_PEER_NAME:
            raise ValueError(f"bad peer name {peer!r}")
        if not tombstone_ttl > 0:
            raise ValueError(f"bad tombstone TTL {tombstone_ttl!r}")
        if not departed_ttl > 0:
            raise ValueError(f"bad departed TTL {departed_ttl!r}")
        self._peer = peer
        self._ttl = float(tombstone_ttl)
        self._departed_ttl = float(departed_ttl)
        self._now = float(now)
        self._records: dict[Key, Record] = {}
        # What we hold, by encoding: most of a neighbour's full state is records we already
        # hold byte for byte, which need no decoding and validating again (decode_records).
        self._by_encoding: dict[bytes, Record] = {}
        self._hidden: dict[int, float] = {}  # origin -> when it was seen gone
        self._per_origin: dict[int, int] = {}  # records held per origin
        self._counter = 0  # the highest version of our own records we have seen
        self._reasserted: dict[Key, Record] = {}
        self._reassertions = 0
        self._expired = 0
        self._overflow = 0
        self._recover_until = -math.inf
        self._recovered = 0
        self._purged = 0
        self._implausible = 0
        # The highest version held per origin: what a record of it we do not hold yet is
        # judged against (an origin numbers all its records from one counter).
        self._origin_top: dict[int, int] = {}
        self._generation = 0
        self._index: NameIndex | None = None
        self._full: bytes | None = None

    # --- reading

    @property
    def peer(self) -> int:
        return self._peer

    @property
    def tombstone_ttl(self) -> float:
        return self._ttl

    @property
    def generation(self) -> int:
        """Bumped whenever what lookups answer may have changed (lets callers cache answers)."""
        return self._generation

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> list[Record]:
        """Everything held (live, tombstoned and hidden), sorted by key."""
        return [self._records[k] for k in sorted(self._records)]

    def visible(self) -> frozenset[Record]:
        """The live records of peers that are not gone: what lookups answer from."""
        return frozenset(
            r for r in self._records.values() if r.live and r.origin not in self._hidden
        )

    def own_records(self) -> list[Record]:
        """Our own records, tombstones included: what to persist (and ``restore`` on start)."""
        return [r for r in self.records() if r.origin == self._peer]

    def addresses(self, name: str) -> list[str]:
        """Every address of ``name`` (any case, trailing dot optional), sorted; [] if unknown."""
        try:
            fqdn = normalize_name(name)
        except ValueError:
            return []
        return list(self._lookup().by_name.get(fqdn, ()))

    def names(self, address: str) -> list[str]:
        """Every name of ``address``, sorted (for PTR); [] if unknown."""
        try:
            canonical = normalize_address(address)
        except ValueError:
            return []
        return list(self._lookup().by_address.get(canonical, ()))

    def exists(self, name: str) -> bool:
        """Whether ``name`` has records, or names below it do (an empty non-terminal).

        The difference between NXDOMAIN and NOERROR-without-answer (RFC 8020).
        """
        try:
            fqdn = normalize_name(name)
        except ValueError:
            return False
        return fqdn in self._lookup().existing

    def entries_by_peer(self) -> dict[int, list[Record]]:
        """Visible records per origin, each list sorted by key."""
        found: dict[int, list[Record]] = {}
        for key in sorted(self._records):
            r = self._records[key]
            if r.live and r.origin not in self._hidden:
                found.setdefault(r.origin, []).append(r)
        return found

    @property
    def implausible(self) -> int:
        """Records dropped because their version jumped implausibly far (forgeries)."""
        return self._implausible

    @property
    def hidden_peers(self) -> frozenset[int]:
        return frozenset(self._hidden)

    def statistics(self) -> RecordsStatistics:
        live = sum(1 for r in self._records.values() if r.live)
        hidden = sum(1 for r in self._records.values() if r.live and r.origin in self._hidden)
        return RecordsStatistics(
            live=live - hidden,
            tombstones=len(self._records) - live,
            hidden=hidden,
            hidden_peers=tuple(sorted(self._hidden)),
            reassertions=self._reassertions,
            expired=self._expired,
            overflow=self._overflow,
            recovered=self._recovered,
            purged=self._purged,
            implausible=self._implausible,
        )

    # --- local changes

    def register(self, name: str, address: str, container: str, now: float) -> bytes | None:
        """Map ``name`` to ``address`` for ``container``; the delta to gossip, None if known.

        UserError on a bad name, address or container id, or when the store is full.
        """
        try:
            key = (
                self._peer,
                _check_container(container),
                normalize_name(name),
                normalize_address(address),
            )
        except ValueError as exc:
            raise UserError(str(exc)) from None
        self._advance(now)
        current = self._records.get(key)
        if current is not None and current.live:
            return None
        if current is None and self._per_origin.get(self._peer, 0) >= MAX_PER_ORIGIN:
            raise UserError(f"too many DNS records on this host (at most {MAX_PER_ORIGIN})")
        record = Record(key[2], key[3], key[1], self._peer, self._next_version())
        self._store(record)
        return encode_records([record])

    def remove(
        self,
        container: str,
        now: float,
        *,
        name: str | None = None,
        address: str | None = None,
    ) -> bytes | None:
        """Remove our records of ``container`` (only those of ``name`` / ``address`` if given).

        The delta (tombstones) to gossip, None if nothing matched.
        """
        try:
            fqdn = None if name is None else normalize_name(name)
            canonical = None if address is None else normalize_address(address)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        self._advance(now)
        removed = []
        for key in sorted(self._records):
            r = self._records[key]
            if (
                r.origin == self._peer
                and r.live
                and r.container == container
                and fqdn in (None, r.name)
                and canonical in (None, r.address)
            ):
                removed.append(replace(r, version=self._next_version(), tombstone=self._now))
                self._store(removed[-1])
        return encode_records(removed) if removed else None

    def restore(self, records: Iterable[Record]) -> None:
        """Reload our own persisted records on start, before joining the mesh.

        Anything the mesh still holds under our name that is not here gets tombstoned when it
        arrives (re-assertion), so persist after every local change.
        """
        for r in records:
            if r.origin != self._peer:
                raise ValueError(f"not our record: {r!r}")
            current = self._records.get(r.key)
            if current is None or beats(r, current):
                self._store(r)
            self._counter = max(self._counter, r.version)

    def recover(self, until: float) -> None:
        """Our persisted records are lost (an unreadable state file): until ``until``, a live
        record of ours that the mesh still holds is taken back as ours instead of being
        tombstoned as forgotten, so a damaged file costs no names mesh-wide. Bounded by the
        tombstone TTL in practice: anything older could be a removal the mesh has forgotten."""
        self._recover_until = until

    def expire(self, now: float) -> int:
        """Forget tombstones older than the TTL, and the records of peers gone for longer than
        ``departed_ttl``; how many tombstones were dropped."""
        self._advance(now)
        old = [k for k, r in self._records.items() if self._expired_tombstone(r)]
        for key in old:
            self._drop(key)
            self._reasserted.pop(key, None)
        if old:
            self._expired += len(old)
            self._changed()
        now = self._now
        departed = {p for p, since in self._hidden.items() if since + self._departed_ttl <= now}
        if departed:
            self._purge(departed)
        # The marks of departed peers outlive their records by another departed_ttl, so that a
        # neighbour's late copy of them is purged again rather than answered.
        for p, since in list(self._hidden.items()):
            if p not in self._per_origin and since + 2 * self._departed_ttl <= now:
                del self._hidden[p]
        held = {r.origin for r in self._records.values()}
        for origin in [o for o in self._origin_top if o not in held]:
            del self._origin_top[origin]
        return len(old)

    def peer_gone(self, peer: int) -> bool:
        """``peer`` left the mesh: hide its records, kept in case it returns (for
        ``departed_ttl``); whether it changed."""
        if peer == self._peer or peer in self._hidden:
            return False
        self._hidden[peer] = self._now
        self._changed()
        return True

    def peer_returned(self, peer: int) -> bool:
        """``peer`` is back: answer its records again. Whether it changed."""
        if peer not in self._hidden:
            return False
        del self._hidden[peer]
        self._changed()
        return True

    def forget_peer(self, peer: int) -> int:
        """``peer`` is gone for good (``rmpeer``): purge its records now; how many went.

        It stays hidden as if gone for ``departed_ttl`` already, so a neighbour's copy of its
        records is purged at the next ``expire`` instead of being answered.
        """
        if peer == self._peer:
            raise ValueError("cannot forget our own records")
        self._hidden[peer] = min(self._hidden.get(peer, self._now), self._now - self._departed_ttl)
        before = self._purged
        self._purge({peer})
        self._changed()
        return self._purged - before

    def _purge(self, origins: set[int]) -> None:
        gone = [k for k, r in self._records.items() if r.origin in origins]
        for key in gone:
            self._drop(key)
        if gone:
            self._purged += len(gone)
            self._changed()

    def take_reassertions(self) -> bytes | None:
        """Our records re-asserted since the last call, as a delta, or None.

        They are also part of what ``on_gossip`` returns (relayed to every neighbour but the
        sender); gossiping them to all neighbours reaches the sender of the stale view at once.
        """
        if not self._reasserted:
            return None
        records = [self._reasserted[k] for k in sorted(self._reasserted)]
        self._reasserted.clear()
        return encode_records(records)

    # --- Gossiper

    def full_state(self) -> bytes | None:
        if not self._records:
            return None
        if self._full is None:
            self._full = encode_records(self.records())
        return self._full

    def on_gossip(self, payload: bytes) -> bytes | None:
        if self._full is not None and payload == self._full:
            return None  # converged neighbours send byte-identical full states
        new = self.merge(decode_records(payload, self._by_encoding))
        return encode_records(new) if new else None

    def merge_payloads(self, a: bytes, b: bytes) -> bytes:
        return merge_encoded_records(a, b)

    def on_broadcast(self, source: int, payload: bytes) -> None:
        self.merge(decode_records(payload, self._by_encoding))

    def on_unicast(self, source: int, payload: bytes) -> None:
        self.merge(decode_records(payload, self._by_encoding))

    # --- merging

    def merge(self, records: Iterable[Record]) -> list[Record]:
        """Keep the winner per key; return (sorted by key) the records that were new to us.

        Our own records are never taken from others: a version of one that differs from ours
        and is not older is a stale view of us, which we bump past and re-assert (also kept
        for ``take_reassertions``). A record whose version jumps implausibly far above what we
        hold (``plausible_version``) is a forgery: dropped and counted, so that no record gets
        where its origin could not bump past it. A record with a new key beyond ``MAX_RECORDS``
        is dropped and counted: the store does not grow without bound, and the mesh keeps working.
        """
        batch = list(records)
        new: dict[Key, Record] = {}
        for r in batch:
            current = self._records.get(r.key)
            if r.origin == self._peer:
                held: int | None = self._counter
            elif current is not None:
                held = current.version
            else:
                held = self._origin_top.get(r.origin)
            if not plausible_version(r.version, held):
                # A forgery (an honest peer drops it too, so never relays it): a record of ours
                # or of another peer pushed to where its origin could not bump past it.
                self._implausible += 1
                continue
            if r.origin == self._peer:
                mine = self._reassert(r)
                if mine is not None:
                    new[r.key] = mine
                continue
            if current is not None and not beats(r, current):
                continue
            if current is None and not self._room_for(r.origin):
                self._overflow += 1
                continue
            if self._expired_tombstone(r):
                # Applied (it removes what we held) but not kept: it is past its time.
                if current is not None:
                    self._drop(r.key)
                    self._changed()
                    new[r.key] = r
                continue
            self._store(r)
            new[r.key] = r
        return [new[k] for k in sorted(new)]

    def _reassert(self, theirs: Record) -> Record | None:
        ours = self._records.get(theirs.key)
        if ours == theirs or (ours is not None and beats(ours, theirs)):
            return None
        if ours is None and theirs.tombstone is not None:
            return None  # they agree it is gone; we need not remember it
        if ours is None and self._now < self._recover_until:
            self._counter = max(self._counter, theirs.version)
            self._store(theirs)
            self._recovered += 1
            return theirs
        if theirs.version >= MAX_VERSION:  # unreachable through plausible jumps
            self._implausible += 1
            return None
        self._counter = max(self._counter, theirs.version)
        if ours is None:
            # Removed here long ago (or by a previous incarnation): say so, with a new time.
            mine = replace(theirs, version=self._next_version(), tombstone=self._now)
        else:
            mine = replace(ours, version=self._next_version())
        self._store(mine)
        self._reasserted[mine.key] = mine
        self._reassertions += 1
        return mine

    # --- internals

    def _advance(self, now: float) -> None:
        if not math.isfinite(now):
            raise ValueError(f"bad time {now!r}")
        self._now = max(self._now, float(now))

    def _next_version(self) -> int:
        self._counter += 1
        return self._counter

    def _expired_tombstone(self, r: Record) -> bool:
        return r.tombstone is not None and r.tombstone + self._ttl <= self._now

    def _room_for(self, origin: int) -> bool:
        """Whether a new record of another origin fits its quota and the others' share."""
        others = len(self._records) - self._per_origin.get(self._peer, 0)
        return (
            self._per_origin.get(origin, 0) < MAX_PER_ORIGIN
            and others < MAX_RECORDS - MAX_PER_ORIGIN
        )

    def _store(self, r: Record) -> None:
        old = self._records.get(r.key)
        if old is not None:
            self._by_encoding.pop(old.packed, None)
        else:
            self._per_origin[r.origin] = self._per_origin.get(r.origin, 0) + 1
        self._records[r.key] = r
        self._by_encoding[r.packed] = r
        if r.origin == self._peer:
            self._counter = max(self._counter, r.version)
        self._origin_top[r.origin] = max(self._origin_top.get(r.origin, 0), r.version)
        self._changed()

    def _drop(self, key: Key) -> None:
        r = self._records.pop(key)
        self._by_encoding.pop(r.packed, None)
        left = self._per_origin[r.origin] - 1
        if left:
            self._per_origin[r.origin] = left
        else:
            del self._per_origin[r.origin]

    def _changed(self) -> None:
        self._generation += 1
        self._index = None
        self._full = None

    def index(self) -> NameIndex:
        """The lookup index of the visible records (an immutable snapshot)."""
        return self._lookup()

    def _lookup(self) -> NameIndex:
        if self._index is None:
            self._index = NameIndex.build(self._records.values(), self._hidden)
        return self._index


@dataclass(frozen=True)
class NameIndex:
    """The visible records, indexed for lookups; rebuilt (lazily) after every change."""

    by_name: Mapping[str, tuple[str, ...]]
    by_address: Mapping[str, tuple[str, ...]]
    existing: frozenset[str]

    @classmethod
    def build(cls, records: Iterable[Record], hidden: Container[int]) -> NameIndex:
        by_name: dict[str, set[str]] = {}
        by_address: dict[str, set[str]] = {}
        for r in records:
            if r.live and r.origin not in hidden:
                by_name.setdefault(r.name, set()).add(r.address)
                by_address.setdefault(r.address, set()).add(r.name)
        existing = set()
        for name in by_name:
            while name and name not in existing:
                existing.add(name)
                name = name.partition(".")[2]
        return cls(
            types.MappingProxyType({n: tuple(sorted(a)) for n, a in by_name.items()}),
            types.MappingProxyType({a: tuple(sorted(n)) for a, n in by_address.items()}),
            frozenset(existing),
        )


# --- wire form: [[origin, container, name, address, version, tombstone-or-nil]...], by key


def _record_obj(r: Record) -> list[Any]:
    return [r.origin, r.container, r.name, r.address, r.version, r.tombstone]


def encode_records(records: Iterable[Record]) -> bytes:
    """A msgpack array of records, assembled from each record's cached encoding."""
    return pack_array([r.packed for r in records])


def _fail(what: str, value: Any) -> RemoteProtocolError:
    return RemoteProtocolError(f"bad DNS record {what}: {value!r:.80}")


def _int(value: Any, low: int, high: int, what: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _fail(what, value)
    return value


def _canonical(value: Any, normalize: Callable[[str], str], what: str) -> str:
    if type(value) is not str:
        raise _fail(what, value)
    try:
        canonical = normalize(value)
    except ValueError:
        raise _fail(what, value) from None
    if canonical != value:
        raise _fail(what, value)
    return value


def _decode_record(obj: Any) -> Record:
    if type(obj) is not list or len(obj) != 6:
        raise _fail("entry", obj)
    origin, container, name, address, version, tombstone = obj
    if type(container) is not str:
        raise _fail("container id", container)
    try:
        _check_container(container)
    except ValueError:
        raise _fail("container id", container) from None
    if tombstone is not None:
        if type(tombstone) not in (float, int) or not 0 <= tombstone < MAX_TIME:
            raise _fail("tombstone time", tombstone)  # also NaN, which fails both comparisons
        tombstone = float(tombstone)
    return Record(
        _canonical(name, normalize_name, "name"),
        _canonical(address, normalize_address, "address"),
        container,
        _int(origin, 0, MAX_PEER_NAME, "origin"),
        _int(version, 1, MAX_VERSION, "version"),
        tombstone,
    )


_LIMITS: dict[str, int] = {
    "max_array_len": 2 * MAX_RECORDS,  # merged pending payloads may hold more
    "max_map_len": 0,
    "max_str_len": max(MAX_NAME, MAX_CONTAINER, MAX_ADDRESS_TEXT),
    "max_bin_len": 0,
    "max_ext_len": 0,
}


def decode_records(data: bytes, known: Mapping[bytes, Record] | None = None) -> list[Record]:
    """Validate and build records from a peer's payload; RemoteProtocolError if anything is off.

    A record whose encoding is a key of ``known`` (records already validated, as
    ``Records`` holds them) is taken from there without decoding it again.
    """
    records = decode_items(
        data,
        lambda obj, _encoding: _decode_record(obj),
        what="DNS",
        max_size=MAX_PAYLOAD,
        max_count=_LIMITS["max_array_len"],
        limits=_LIMITS,
        known=known,
    )
    if len({x.key for x in records}) != len(records):
        raise RemoteProtocolError("DNS payload lists a record twice")
    return records


def merge_encoded_records(a: bytes, b: bytes) -> bytes:
    """The per-key winners of two payloads WE encoded (so not validated again), sorted by key.

    Works on the raw msgpack lists, ordered exactly as ``beats`` orders records.
    """

    def rank(obj: list[Any]) -> tuple[int, bool, float]:
        return (obj[4], obj[5] is not None, -1.0 if obj[5] is None else obj[5])

    best: dict[tuple[int, str, str, str], list[Any]] = {}
    for obj in (*msgpack.unpackb(a), *msgpack.unpackb(b)):
        key = (obj[0], obj[1], obj[2], obj[3])
        current = best.get(key)
        if current is None or rank(obj) > rank(current):
            best[key] = obj
    return msgpack.packb([best[k] for k in sorted(best)], use_bin_type=True)  # type: ignore[no-any-return]
