"""The topology store: one versioned entry per peer, listing that peer's connections.

Every peer owns exactly one entry (its own) and only ever bumps its version; everyone else merges.
For one name, entries are totally ordered by ``(version, uid, nickname, connections)``, so merging
keeps the maximum: commutative, associative and idempotent, whatever order gossip arrives in.

A restarted peer starts again at version 1 with a new uid while the mesh may still hold its old
entry at a higher version. Like weaveworks/mesh, the peer that sees a stale view of itself bumps
its own version above it and re-emits its entry, which then wins everywhere.
"""

from __future__ import annotations

import struct
import types
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

import msgpack

from meshnet.errors import RemoteProtocolError
from meshnet.gossip.identity import printable
from meshnet.gossip.payload import decode_items, pack_array
from meshnet.gossip.versions import plausible_version

_T = TypeVar("_T")

MAX_PEER_NAME = (1 << 48) - 1
MAX_UID = (1 << 64) - 1
MAX_VERSION = (1 << 63) - 1
MAX_ENTRIES = 10_000
MAX_CONNECTIONS = 1_000
MAX_NICKNAME = 64
MAX_ADDRESS = 64
#: Bounds a payload before msgpack even allocates (a frame has its own hard maximum too).
MAX_PAYLOAD = 16 << 20


@dataclass(frozen=True, order=True, slots=True)
class Connection:
    """One side's view of a control connection; ``address`` is the remote's ``ip:port``.

    Slotted: a router holds one per connection of every peer (40,000 at 10,000 peers).

    For an outbound connection that is the remote's listening address, which is what peer
    discovery hands to the connection maker. ``punched``: no control connection at all but a
    UDP path punched through NATs (``address`` is where it goes): it carries data, never
    gossip, and is never a dial target.
    """

    peer: int
    address: str
    outbound: bool
    established: bool
    punched: bool = False


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """What a peer says about itself; the only thing topology gossip carries.

    Slotted, like ``Connection``: every peer holds one entry per peer of the mesh, so at 10,000
    peers each byte per entry is 10 kB of every router's memory.
    """

    name: int
    nickname: str
    uid: int
    version: int
    connections: tuple[Connection, ...]
    #: The msgpack encoding, computed once: an entry is relayed to many neighbours many times,
    #: and it is the key under which ``Topology.by_encoding`` recognises the entry.
    packed: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "packed", msgpack.packb(_entry_obj(self), use_bin_type=True))


def beats(a: PeerEntry, b: PeerEntry) -> bool:
    """Whether ``a`` wins over ``b`` (same name): the strict total order that merge maximises."""
    if a.version != b.version:
        return a.version > b.version
    if a.uid != b.uid:
        return a.uid > b.uid
    return (a.nickname, a.connections) > (b.nickname, b.connections)


class Topology:
    """All peer entries we know, by name, including our own (which only we change)."""

    def __init__(self, *, name: int, nickname: str, uid: int) -> None:
        self._name = name
        self._local = PeerEntry(name, nickname, uid, 1, ())
        self._entries: MutableMapping[int, PeerEntry] = {name: self._local}
        self._view = types.MappingProxyType(self._entries)
        # Most of what gossip brings is an entry we already hold, byte for byte: recognising
        # its encoding spares decoding and validating it again (see decode_entries).
        self._by_encoding = _ByEncoding(self._entries)
        # Whether a peer may have become unreachable since the last prune: only a new name or
        # a connection that an entry stopped listing can do that (connections that only get
        # added keep every path), so most changes spare the O(peers + connections) walk.
        self._prune_wanted = False
        #: Entries dropped by ``merge`` because their version jumped implausibly far.
        self.implausible = 0

    @property
    def name(self) -> int:
        return self._name

    @property
    def local(self) -> PeerEntry:
        return self._local

    @property
    def entries(self) -> Mapping[int, PeerEntry]:
        """A read-only live view (copy it to keep a snapshot)."""
        return self._view

    @property
    def by_encoding(self) -> Mapping[bytes, PeerEntry]:
        """The entries we hold, by their encoding: the ``known`` of ``decode_entries``."""
        return self._by_encoding

    def __len__(self) -> int:
        return len(self._entries)

    def _store(self, entry: PeerEntry) -> None:
        old = self._entries.get(entry.name)
        if old is None or (old.connections != entry.connections and not _still_listed(old, entry)):
            self._prune_wanted = True
        self._entries[entry.name] = entry

    def adopt(self, entries: MutableMapping[int, PeerEntry]) -> None:
        """Hold ``entries`` from now on: a state validated elsewhere that lists our current
        local entry and reaches every peer it holds.

        For simulations: installing a converged 10,000-peer mesh directly, as one copy-on-write
        view of the same immutable entries per peer, instead of gossiping 10^8 entries into 10^4
        dictionaries (see ``meshnet.gossip.simulation.Simulation.install_converged``).
        """
        if entries.get(self._name) is not self._local:
            raise ValueError("an adopted topology must hold our own current entry")
        self._entries = entries
        self._by_encoding = _ByEncoding(entries)
        self._view = types.MappingProxyType(entries)
        self._prune_wanted = False

    def _set_local(self, entry: PeerEntry) -> None:
        self._local = entry
        self._store(entry)

    def set_local_connections(self, connections: Iterable[Connection]) -> PeerEntry | None:
        """Replace our connection list; the bumped entry when it changed, else None."""
        conns = tuple(sorted(connections, key=lambda c: c.peer))
        names = [c.peer for c in conns]
        if self._name in names or len(set(names)) != len(names):
            raise ValueError(f"bad local connections: {names}")
        if conns == self._local.connections:
            return None
        self._set_local(replace(self._local, version=self._local.version + 1, connections=conns))
        return self._local

    def merge(self, entries: Iterable[PeerEntry]) -> list[PeerEntry]:
        """Keep the winning entry per name; return (sorted by name) those that were new to us.

        An entry under our own name that we did not produce and that is not older than ours is a
        stale view of us (a previous incarnation, or a forgery): we bump past it and return our
        own entry so that it is relayed and overrides that view everywhere.

        An entry whose version is implausibly far above the one we hold (``plausible_version``)
        is the sender's protocol error: it is dropped and counted in ``implausible``. So no
        forged entry ever gets near ``MAX_VERSION``, and a peer can always reclaim its own.
        """
        new: dict[int, PeerEntry] = {}
        for entry in entries:
            current = self._entries.get(entry.name)
            if current is entry:
                continue
            if not plausible_version(entry.version, None if current is None else current.version):
                # A forgery (no honest peer relays one: it would have dropped it too). Only this
                # entry is dropped: the rest of the update may be news we need.
                self.implausible += 1
                continue
            if entry.name == self._name:
                if entry.version >= MAX_VERSION:
                    self.implausible += 1  # unreachable through plausible jumps; never bumpable
                    continue
                if entry != self._local and entry.version >= self._local.version:
                    # Within MAX_VERSION_JUMP of ours, so far below MAX_VERSION: we can always
                    # bump past it.
                    self._set_local(replace(self._local, version=entry.version + 1))
                    new[self._name] = self._local
                continue
            if current is None or beats(entry, current):
                self._store(entry)
                new[entry.name] = entry
        return [new[name] for name in sorted(new)]

    def digest(self) -> dict[int, tuple[int, int]]:
        """``{name: (uid, version)}`` — enough to tell which entries a neighbour lacks."""
        return {name: (e.uid, e.version) for name, e in self._entries.items()}

    def prune_unreachable(self) -> list[int]:
        """Forget peers that no chain of listed connections from us reaches; return their names.

        Reachability follows the connections each reached peer *lists itself* (established or
        not, symmetric or not), as weaveworks/mesh's garbage collection does. Accepting either
        direction would keep a departed peer forever: its own last entry still lists us.

        Free when no entry was added and no listed connection dropped since the last call.
        """
        if not self._prune_wanted:
            return []
        self._prune_wanted = False
        seen = {self._name}
        stack = [self._name]
        while stack:
            entry = self._entries.get(stack.pop())
            if entry is None:
                continue
            for conn in entry.connections:
                if conn.peer not in seen:
                    seen.add(conn.peer)
                    stack.append(conn.peer)
        gone = sorted(name for name in self._entries if name not in seen)
        for name in gone:
            del self._entries[name]
        return gone


class _ByEncoding(Mapping[bytes, PeerEntry]):
    """The entries of a topology by their encoding, found by the peer name the encoding starts
    with: no second dictionary (at 10,000 peers, 300 kB and a write per merged entry)."""

    def __init__(self, entries: Mapping[int, PeerEntry]) -> None:
        self._entries = entries

    def __getitem__(self, encoding: bytes) -> PeerEntry:
        entry: PeerEntry | None = self.get(encoding)
        if entry is None:
            raise KeyError(encoding)
        return entry

    def get(self, encoding: bytes, default: Any = None) -> Any:
        name = _name_of(encoding)
        entry = None if name is None else self._entries.get(name)
        return entry if entry is not None and entry.packed == encoding else default

    def __iter__(self) -> Iterator[bytes]:
        return (entry.packed for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


#: msgpack's unsigned integer formats after a 5-element array header: (first byte, length).
_UINT_FORMATS = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}


_ARRAY5_UINT64 = struct.Struct(">BBQ")  # how 48-bit peer names start every entry we encode


def _name_of(encoding: bytes) -> int | None:
    """The peer name an entry's encoding starts with (None: not one of ours to look up; the
    caller compares the whole encoding anyway)."""
    if len(encoding) >= _ARRAY5_UINT64.size:
        array, uint, name = _ARRAY5_UINT64.unpack_from(encoding)
        if array == 0x95 and uint == 0xCF:
            return name  # type: ignore[no-any-return]
    if len(encoding) < 2 or encoding[0] != 0x95:
        return None
    first = encoding[1]
    if first < 0x80:
        return first
    size = _UINT_FORMATS.get(first)
    if size is None or len(encoding) < 2 + size:
        return None
    return int.from_bytes(encoding[2 : 2 + size], "big")


def _still_listed(old: PeerEntry, new: PeerEntry) -> bool:
    """Whether ``new`` lists every peer ``old`` listed (so no path through it was lost)."""
    listed = {c.peer for c in new.connections}
    return all(c.peer in listed for c in old.connections)


def merge_entry_sets(a: Iterable[PeerEntry], b: Iterable[PeerEntry]) -> list[PeerEntry]:
    """The per-name maximum of two entry sets, sorted by name (to coalesce pending deltas)."""
    best: dict[int, PeerEntry] = {}
    for entry in (*a, *b):
        current = best.get(entry.name)
        if current is None or beats(entry, current):
            best[entry.name] = entry
    return [best[name] for name in sorted(best)]


# --- wire form: [[name, nickname, uid, version, [[peer, address, outbound, established]...]]...]
# (a punched connection has a fifth element, True)


def _entry_obj(e: PeerEntry) -> list[Any]:
    conns = [
        [c.peer, c.address, c.outbound, c.established, *((True,) if c.punched else ())]
        for c in e.connections
    ]
    return [e.name, e.nickname, e.uid, e.version, conns]


def encode_entries(entries: Iterable[PeerEntry]) -> bytes:
    """A msgpack array of entries, assembled from each entry's cached encoding."""
    return pack_array([e.packed for e in entries])


def _fail(what: str, value: Any) -> RemoteProtocolError:
    return RemoteProtocolError(f"bad topology {what}: {value!r:.80}")


def _int(value: Any, low: int, high: int, what: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _fail(what, value)
    return value


def _address(value: Any) -> str:
    if type(value) is not str or len(value) > MAX_ADDRESS:
        raise _fail("address", value)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _fail("address", value)
    return value


def _intern(shared: dict[Any, Any], value: _T) -> _T:
    """The first object equal to ``value`` seen in this payload."""
    return shared.setdefault(value, value)  # type: ignore[no-any-return]


def _decode_entry(obj: Any, encoding: bytes, shared: dict[Any, Any]) -> PeerEntry:
    """One validated entry (``obj``, unpacked from ``encoding``); ``shared`` interns the names
    and addresses of one payload.

    A full state lists every peer's name about five times (its own entry, and the entries of
    the peers connected to it) and each listening address about twice: interning them keeps
    one object each, which is most of a 10,000-peer topology's memory otherwise.
    """
    if type(obj) is not list or len(obj) != 5:
        raise _fail("entry", obj)
    name_, nickname, uid, version, conns_ = obj
    name = _intern(shared, _int(name_, 0, MAX_PEER_NAME, "peer name"))
    if type(nickname) is not str or not nickname:  # a long one is cut (the decoder bounds it)
        raise _fail("nickname", nickname)
    if type(conns_) is not list or len(conns_) > MAX_CONNECTIONS:
        raise _fail("connection list", conns_)
    conns = []
    previous = -1
    for c in conns_:
        if type(c) is not list or len(c) not in (4, 5) or (len(c) == 5 and c[4] is not True):
            raise _fail("connection", c)
        peer = _intern(shared, _int(c[0], 0, MAX_PEER_NAME, "connection peer"))
        if peer <= previous or peer == name:
            raise _fail("connection order", conns_)
        previous = peer
        if type(c[2]) is not bool or type(c[3]) is not bool:
            raise _fail("connection flags", c)
        address = _intern(shared, _address(c[1]))
        conns.append(_connection(peer, address, c[2], c[3], len(c) == 5))
    values = (
        name,
        printable(nickname, MAX_NICKNAME),  # printed by every peer: see ``printable``
        _int(uid, 0, MAX_UID, "uid"),
        _int(version, 1, MAX_VERSION, "version"),
        tuple(conns),
    )
    if values[1] != nickname:
        return PeerEntry(*values)  # its encoding is no longer the one it came in
    # The entry it came in as, byte for byte: keep that encoding rather than packing the entry
    # again (a sixth of gossip's CPU). Relaying it verbatim is safe: it is what we validated.
    return _entry_encoded_as(encoding, *values)


# Validated values become instances through the slot descriptors' setters: three times faster
# than a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field), which counts
# when a router decodes every version of every peer's entry. Field order is checked at import.
_NEW = object.__new__
_SET_PEER, _SET_ADDRESS, _SET_OUTBOUND, _SET_ESTABLISHED, _SET_PUNCHED = (
    getattr(Connection, f.name).__set__ for f in fields(Connection)
)
_SET_NAME, _SET_NICKNAME, _SET_UID, _SET_VERSION, _SET_CONNECTIONS, _SET_PACKED = (
    getattr(PeerEntry, f.name).__set__ for f in fields(PeerEntry)
)
assert [f.name for f in fields(Connection)] == [
    "peer",
    "address",
    "outbound",
    "established",
    "punched",
]
assert [f.name for f in fields(PeerEntry)][-1] == "packed"


def _connection(
    peer: int, address: str, outbound: bool, established: bool, punched: bool
) -> Connection:
    conn: Connection = _NEW(Connection)
    _SET_PEER(conn, peer)
    _SET_ADDRESS(conn, address)
    _SET_OUTBOUND(conn, outbound)
    _SET_ESTABLISHED(conn, established)
    _SET_PUNCHED(conn, punched)
    return conn


def _entry_encoded_as(
    encoding: bytes, name: int, nickname: str, uid: int, version: int, conns: tuple[Connection, ...]
) -> PeerEntry:
    entry: PeerEntry = _NEW(PeerEntry)
    _SET_NAME(entry, name)
    _SET_NICKNAME(entry, nickname)
    _SET_UID(entry, uid)
    _SET_VERSION(entry, version)
    _SET_CONNECTIONS(entry, conns)
    _SET_PACKED(entry, encoding)
    return entry


_LIMITS: dict[str, int] = {
    "max_array_len": max(MAX_ENTRIES, MAX_CONNECTIONS),
    "max_map_len": 0,
    "max_str_len": max(MAX_NICKNAME, MAX_ADDRESS) * 4,
    "max_bin_len": 0,
    "max_ext_len": 0,
}


def decode_entries(data: bytes, known: Mapping[bytes, PeerEntry] | None = None) -> list[PeerEntry]:
    """Validate and build entries from a peer's payload; RemoteProtocolError if anything is off.

    An entry whose encoding is a key of ``known`` (entries already validated, e.g.
    ``Topology.by_encoding``) is taken from there without decoding it again.
    """
    shared: dict[Any, Any] = {}  # ints and strs: never equal to one another
    entrys = decode_items(
        data,
        lambda obj, encoding: _decode_entry(obj, encoding, shared),
        what="topology",
        max_size=MAX_PAYLOAD,
        max_count=MAX_ENTRIES,
        limits=_LIMITS,
        known=known,
    )
    if len({x.name for x in entrys}) != len(entrys):
        raise RemoteProtocolError("topology payload lists a peer twice")
    return entrys


def merge_encoded_entries(a: bytes, b: bytes) -> bytes:
    """``merge_entry_sets`` on two payloads WE encoded (so unvalidated): coalesces pending sends.

    Works on the raw msgpack lists, ordered exactly as ``beats`` orders entries.
    """
    best: dict[int, list[Any]] = {}
    for obj in (*msgpack.unpackb(a), *msgpack.unpackb(b)):
        current = best.get(obj[0])
        if current is None or (obj[3], obj[2], obj[1], obj[4]) > (
            current[3],
            current[2],
            current[1],
            current[4],
        ):
            best[obj[0]] = obj
    return msgpack.packb([best[name] for name in sorted(best)], use_bin_type=True)  # type: ignore[no-any-return]


# --- digests for anti-entropy: [reply, [[name, uid, version]...]]

Digest = Mapping[int, tuple[int, int]]


def encode_digest(digest: Digest, *, reply: bool) -> bytes:
    """A digest, flagged as a reply so that replies never provoke further replies."""
    rows = [[name, uid, version] for name, (uid, version) in sorted(digest.items())]
    return msgpack.packb([reply, rows], use_bin_type=True)  # type: ignore[no-any-return]


def decode_digest(data: bytes) -> tuple[bool, dict[int, tuple[int, int]]]:
    """Validate a peer's digest; RemoteProtocolError if anything is off."""
    if type(data) is not bytes or len(data) > MAX_PAYLOAD:
        raise RemoteProtocolError("topology digest is not bytes or is too large")
    try:
        obj = msgpack.unpackb(data, raw=False, **_LIMITS)
    except Exception as exc:
        raise RemoteProtocolError(f"undecodable topology digest: {exc!r:.80}") from None
    if type(obj) is not list or len(obj) != 2 or type(obj[0]) is not bool:
        raise _fail("digest", obj)
    reply, rows = obj
    if type(rows) is not list or len(rows) > MAX_ENTRIES:
        raise _fail("digest rows", rows)
    digest: dict[int, tuple[int, int]] = {}
    for row in rows:
        if type(row) is not list or len(row) != 3:
            raise _fail("digest row", row)
        name = _int(row[0], 0, MAX_PEER_NAME, "peer name")
        digest[name] = (_int(row[1], 0, MAX_UID, "uid"), _int(row[2], 1, MAX_VERSION, "version"))
    if len(digest) != len(rows):
        raise RemoteProtocolError("topology digest lists a peer twice")
    return reply, digest


def newer_than(entries: Mapping[int, PeerEntry], digest: Digest) -> list[PeerEntry]:
    """Our entries that the digest's owner lacks or holds in an older (version, uid)."""
    found = []
    for name in sorted(entries):
        entry = entries[name]
        theirs = digest.get(name)
        if theirs is None or (entry.version, entry.uid) > (theirs[1], theirs[0]):
            found.append(entry)
    return found


def lacks_any(entries: Mapping[int, PeerEntry], digest: Digest) -> bool:
    """Whether the digest's owner holds an entry we lack or hold in an older (version, uid)."""
    for name, (uid, version) in digest.items():
        ours = entries.get(name)
        if ours is None or (version, uid) > (ours.version, ours.uid):
            return True
    return False
