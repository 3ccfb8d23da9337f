"""Topology merge is a semilattice (commutative, associative, idempotent); decoding only ever
raises RemoteProtocolError."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.errors import RemoteProtocolError
from meshnet.gossip.topology import (
    MAX_PEER_NAME,
    MAX_VERSION,
    Connection,
    PeerEntry,
    Topology,
    beats,
    decode_digest,
    decode_entries,
    encode_digest,
    encode_entries,
    lacks_any,
    merge_encoded_entries,
    merge_entry_sets,
    newer_than,
)
from meshnet.gossip.versions import MAX_VERSION_JUMP, PLAUSIBLE_VERSION, plausible_version

LOCAL = 1
NAMES = [1, 2, 3, 4, 5, 6]
ADDRESSES = ["10.0.0.1:6783", "10.0.0.2:6783", "[fd00::1]:6783"]


@st.composite
def entries(draw: st.DrawFn, name: int | None = None) -> PeerEntry:
    name = draw(st.sampled_from(NAMES)) if name is None else name
    peers = draw(st.sets(st.sampled_from([n for n in NAMES if n != name]), max_size=4))
    conns = tuple(
        Connection(
            p,
            draw(st.sampled_from(ADDRESSES)),
            draw(st.booleans()),
            draw(st.booleans()),
            draw(st.booleans()),
        )
        for p in sorted(peers)
    )
    return PeerEntry(
        name,
        draw(st.sampled_from(["a", "b"])),
        draw(st.integers(1, 3)),
        draw(st.integers(1, 6)),
        conns,
    )


batches = st.lists(entries(), max_size=8)


def fresh() -> Topology:
    topo = Topology(name=LOCAL, nickname="local", uid=2)
    topo.set_local_connections([Connection(2, "10.0.0.2:6783", True, True)])
    return topo


def state_after(*steps: list[PeerEntry]) -> dict[int, PeerEntry]:
    topo = fresh()
    for step in steps:
        topo.merge(step)
    return dict(topo.entries)


@settings(max_examples=60)
@given(batches, batches)
def test_merge_is_commutative(a: list[PeerEntry], b: list[PeerEntry]) -> None:
    assert state_after(a, b) == state_after(b, a)


@settings(max_examples=60)
@given(batches, batches, batches)
def test_merge_is_associative(a: list[PeerEntry], b: list[PeerEntry], c: list[PeerEntry]) -> None:
    assert state_after(a, b, c) == state_after(a + b, c) == state_after(a, b + c)
    assert state_after(a + b + c) == state_after(a, b, c)


@settings(max_examples=60)
@given(batches, st.randoms(use_true_random=False))
def test_order_within_a_batch_does_not_matter(a: list[PeerEntry], rnd: Any) -> None:
    shuffled = list(a)
    rnd.shuffle(shuffled)
    assert state_after(a) == state_after(shuffled)


@settings(max_examples=60)
@given(batches, batches)
def test_merge_is_idempotent_and_returns_exactly_the_news(
    a: list[PeerEntry], b: list[PeerEntry]
) -> None:
    topo = fresh()
    topo.merge(a)
    before = dict(topo.entries)
    news = topo.merge(b)
    after = dict(topo.entries)
    assert {e.name: e for e in news} == {n: e for n, e in after.items() if before.get(n) != e}
    assert [e.name for e in news] == sorted(e.name for e in news)
    assert topo.merge(b) == []
    assert topo.merge(a) == []
    assert dict(topo.entries) == after


@settings(max_examples=60)
@given(batches, batches)
def test_relaying_only_the_news_gets_a_follower_to_the_same_state(
    a: list[PeerEntry], b: list[PeerEntry]
) -> None:
    """What a peer relays (its merge result) suffices for a neighbour that saw what it saw."""
    leader = Topology(name=7, nickname="leader", uid=1)
    follower = Topology(name=8, nickname="follower", uid=1)
    for batch in (a, b):
        follower.merge(leader.merge(batch))
    for name, entry in leader.entries.items():
        if name != 7:  # the leader's own entry never changed, so never needed relaying
            assert follower.entries[name] == entry


@given(batches)
def test_a_stale_view_of_ourselves_is_bumped_past(batch: list[PeerEntry]) -> None:
    topo = fresh()
    mine = topo.local
    news = topo.merge(batch)
    stale = [e for e in batch if e.name == LOCAL and e != mine and e.version >= mine.version]
    if stale:
        assert topo.local.version > max(e.version for e in stale)
        assert topo.local in news
        assert all(beats(topo.local, e) for e in stale)
    else:
        assert topo.local == mine
    assert topo.local.uid == mine.uid
    assert topo.local.connections == mine.connections


def test_a_restarted_peer_wins_over_its_previous_incarnation() -> None:
    old = Topology(name=5, nickname="h5", uid=100)
    for version in range(57):
        old.set_local_connections([Connection(2, "10.0.0.2:6783", True, version % 2 == 0)])
    other = Topology(name=2, nickname="h2", uid=7)
    other.merge([old.local])
    assert other.entries[5].version == 58

    new = Topology(name=5, nickname="h5", uid=1)  # smaller uid, and version 1
    new.set_local_connections([Connection(2, "10.0.0.2:6783", True, True)])
    assert other.merge([new.local]) == []  # loses: its version is older
    news = new.merge([other.entries[5]])  # the stale view reaches the restarted peer
    assert news == [new.local] and new.local.version == 59
    assert other.merge(news) == [new.local]
    assert other.entries[5].uid == 1


@settings(max_examples=60)
@given(batches, batches)
def test_merge_entry_sets_and_its_encoded_twin_agree(
    a: list[PeerEntry], b: list[PeerEntry]
) -> None:
    merged = merge_entry_sets(a, b)
    assert len({e.name for e in merged}) == len(merged)
    assert merged == merge_entry_sets(b, a)
    dedup_a, dedup_b = merge_entry_sets(a, []), merge_entry_sets(b, [])
    coalesced = merge_encoded_entries(encode_entries(dedup_a), encode_entries(dedup_b))
    assert decode_entries(coalesced) == merged
    # Applying the coalesced delta equals applying both.
    assert state_after(merged) == state_after(a, b)


@settings(max_examples=60)
@given(st.lists(entries(), max_size=6, unique_by=lambda e: e.name))
def test_encoding_round_trips(batch: list[PeerEntry]) -> None:
    data = encode_entries(batch)
    assert decode_entries(data) == batch
    assert decode_entries(data, {e.packed: e for e in batch}) == batch
    assert msgpack.unpackb(data) == msgpack.unpackb(msgpack.packb(msgpack.unpackb(data)))


def test_encoding_of_many_entries_uses_the_long_array_headers() -> None:
    many = [PeerEntry(n, "x", 1, 1, ()) for n in range(1, 70_000, 4)]
    assert decode_entries(encode_entries(many[:20])) == many[:20]
    with pytest.raises(RemoteProtocolError):
        decode_entries(encode_entries(many))  # more than MAX_ENTRIES


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=70)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=30,
)


def decodes_or_rejects(data: bytes) -> None:
    try:
        result = decode_entries(data)
    except RemoteProtocolError:
        return
    assert all(isinstance(e, PeerEntry) for e in result)


@given(st.binary(max_size=200))
def test_decode_rejects_random_bytes_with_remote_protocol_error_only(data: bytes) -> None:
    decodes_or_rejects(data)


@settings(max_examples=150)
@given(msgpack_values)
def test_decode_rejects_wrong_shapes_with_remote_protocol_error_only(value: Any) -> None:
    decodes_or_rejects(msgpack.packb(value, use_bin_type=True))
    decodes_or_rejects(msgpack.packb([value], use_bin_type=True))
    decodes_or_rejects(msgpack.packb([[1, "n", 1, 1, [value]]], use_bin_type=True))


@given(st.lists(entries(), min_size=1, max_size=4), st.data())
def test_decode_rejects_corrupted_encodings(batch: list[PeerEntry], data: st.DataObject) -> None:
    encoded = bytearray(encode_entries(batch))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(encoded) - 1))
        encoded[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    decodes_or_rejects(bytes(encoded))
    decodes_or_rejects(bytes(encoded[:cut]))


@pytest.mark.parametrize(
    "obj",
    [
        [[1, "n", 1, 1, []], [1, "n", 1, 2, []]],  # a peer twice
        [[1, "n", 1, 0, []]],  # version 0
        [[1 << 48, "n", 1, 1, []]],  # name out of range
        [[1, "", 1, 1, []]],  # empty nickname
        [[1, "n", 1, 1, [[1, "10.0.0.1:1", True, True]]]],  # connection to itself
        [[1, "n", 1, 1, [[3, "10.0.0.1:1", True, True], [2, "10.0.0.1:1", True, True]]]],
        [[1, "n", 1, 1, [[2, "10.0.0.1", True, True]]]],  # no port
        [[1, "n", 1, 1, [[2, "10.0.0.1:99999", True, True]]]],
        [[1, "n", 1, 1, [[2, "10.0.0.1:1", 1, True]]]],  # int for bool
        [[True, "n", 1, 1, []]],  # bool for int
        [[1, "n", 1.0, 1, []]],
        {"1": 2},
    ],
)
def test_decode_rejects_specific_mistakes(obj: Any) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_entries(msgpack.packb(obj, use_bin_type=True))


def test_decode_rejects_trailing_bytes_and_non_bytes() -> None:
    good = encode_entries([PeerEntry(1, "n", 1, 1, ())])
    with pytest.raises(RemoteProtocolError):
        decode_entries(good + b"\x00")
    with pytest.raises(RemoteProtocolError):
        decode_entries(bytearray(good))  # type: ignore[arg-type]


def test_set_local_connections_bumps_only_on_change() -> None:
    topo = Topology(name=1, nickname="a", uid=9)
    conn = Connection(2, "10.0.0.2:6783", True, True)
    first = topo.set_local_connections([conn])
    assert first is not None and first.version == 2
    assert topo.set_local_connections([conn]) is None
    with pytest.raises(ValueError):
        topo.set_local_connections([Connection(1, "10.0.0.1:6783", True, True)])


def test_prune_follows_the_connections_each_reached_peer_lists() -> None:
    def c(peer: int) -> Connection:
        return Connection(peer, "10.0.0.9:6783", True, True)

    topo = Topology(name=1, nickname="a", uid=9)
    topo.set_local_connections([c(2)])
    topo.merge(
        [
            PeerEntry(2, "b", 1, 3, (c(1), c(3))),
            PeerEntry(3, "c", 1, 3, (c(2),)),
            # 4 left: its own stale entry still lists 2, but nobody reachable lists 4.
            PeerEntry(4, "d", 1, 3, (c(2),)),
            PeerEntry(5, "e", 1, 3, (c(6),)),  # an island
            PeerEntry(6, "f", 1, 3, (c(5),)),
        ]
    )
    assert topo.prune_unreachable() == [4, 5, 6]
    assert sorted(topo.entries) == [1, 2, 3]
    assert sorted(e.name for e in topo.by_encoding.values()) == [1, 2, 3]
    assert topo.prune_unreachable() == []


@given(st.lists(entries(), max_size=6, unique_by=lambda e: e.name), st.booleans())
def test_digests_round_trip_and_tell_what_is_missing(batch: list[PeerEntry], reply: bool) -> None:
    topo = fresh()
    topo.merge(batch)
    digest = topo.digest()
    assert decode_digest(encode_digest(digest, reply=reply)) == (reply, digest)
    assert newer_than(topo.entries, digest) == []
    assert not lacks_any(topo.entries, digest)
    empty = Topology(name=99, nickname="new", uid=1)
    assert [e.name for e in newer_than(topo.entries, empty.digest())] == sorted(topo.entries)
    assert lacks_any(empty.entries, digest)


@given(msgpack_values)
def test_decode_digest_rejects_garbage_with_remote_protocol_error_only(value: Any) -> None:
    for data in (
        msgpack.packb(value),
        msgpack.packb([False, [value]]),
        msgpack.packb([True, value]),
    ):
        with contextlib.suppress(RemoteProtocolError):
            decode_digest(data)


def test_nicknames_from_the_wire_are_made_printable() -> None:
    hostile = "\x1b]0;pwned\x07evil\nINFO fake line\u202e" + "x" * 100
    data = msgpack.packb([[5, hostile, 1, 1, []]])
    (entry,) = decode_entries(data)
    assert entry.nickname.isprintable() and len(entry.nickname) == 64
    assert entry.nickname.startswith("\ufffd]0;pwned\ufffdevil\ufffdINFO fake line\ufffdxx")
    (plain,) = decode_entries(msgpack.packb([[5, "host-1.example", 1, 1, []]]))
    assert plain.nickname == "host-1.example"


# --- forged versions (issue 17 point 6)


def test_plausible_versions_allow_first_sightings_and_bounded_jumps() -> None:
    assert plausible_version(PLAUSIBLE_VERSION, None)
    assert plausible_version(PLAUSIBLE_VERSION, 1)  # a restarted peer sees its old self
    assert not plausible_version(PLAUSIBLE_VERSION + 1, None)
    assert plausible_version(PLAUSIBLE_VERSION + 5 + MAX_VERSION_JUMP, PLAUSIBLE_VERSION + 5)
    assert not plausible_version(PLAUSIBLE_VERSION + 6 + MAX_VERSION_JUMP, PLAUSIBLE_VERSION + 5)
    assert not plausible_version(MAX_VERSION, 7)


def test_a_forged_entry_at_the_maximum_version_is_dropped_and_counted() -> None:
    topo = fresh()
    real = PeerEntry(2, "h2", 5, 3, (Connection(LOCAL, "10.0.0.1:6783", False, True),))
    assert topo.merge([real]) == [real]
    forged = PeerEntry(2, "h2", 5, MAX_VERSION, ())
    other = PeerEntry(3, "h3", 9, 1, ())
    assert topo.merge([forged, other]) == [other]  # the rest of the update still counts
    assert topo.entries[2] == real
    assert topo.implausible == 1
    # The owner goes on bumping its real entry, which keeps winning.
    newer = replace(real, version=4)
    assert topo.merge([newer]) == [newer]


def test_our_own_entry_forged_at_the_maximum_cannot_stop_us_reclaiming_it() -> None:
    topo = fresh()
    mine = topo.local
    assert topo.merge([replace(mine, version=MAX_VERSION, connections=())]) == []
    assert topo.local == mine and topo.implausible == 1
    # A plausible forgery is bumped past, and so is the next, however many follow.
    version = PLAUSIBLE_VERSION
    for _ in range(3):
        news = topo.merge([replace(mine, version=version, connections=())])
        assert news == [topo.local] and topo.local.version == version + 1
        assert topo.local.connections == mine.connections
        version = topo.local.version + MAX_VERSION_JUMP
    assert not topo.merge([replace(mine, version=version + 1, connections=())])


@given(
    st.lists(st.tuples(st.sampled_from([LOCAL, 2, 3]), st.integers(1, MAX_VERSION)), max_size=12)
)
def test_no_sequence_of_updates_moves_an_entry_further_than_the_bound(
    updates: list[tuple[int, int]],
) -> None:
    """Whatever arrives, every held version stays within reach of its owner's bumps."""
    topo = fresh()
    for name, version in updates:
        before = topo.entries.get(name)
        held = None if before is None else before.version
        topo.merge([PeerEntry(name, "x", 1, version, ())])
        after = topo.entries.get(name)
        if after is not None and after is not before:
            assert after.version <= max(PLAUSIBLE_VERSION, (held or 0) + MAX_VERSION_JUMP) + 1
    assert all(e.version < MAX_VERSION for e in topo.entries.values())


@settings(max_examples=60)
@given(st.lists(entries(), min_size=1, max_size=6, unique_by=lambda e: e.name))
def test_held_entries_are_recognised_by_their_encoding_and_others_are_not(
    batch: list[PeerEntry],
) -> None:
    """``by_encoding`` finds an entry by the name its encoding starts with, then compares the
    whole encoding: only the very bytes of an entry we hold are recognised."""
    topo = Topology(name=MAX_PEER_NAME, nickname="us", uid=1)
    topo.merge(batch)
    known = topo.by_encoding
    for entry in topo.entries.values():
        assert known.get(entry.packed) is entry
        assert known[entry.packed] is entry
        assert known.get(entry.packed[:-1]) is None
        other = replace(entry, version=entry.version + 1)
        assert known.get(other.packed) is None
        assert other.packed not in known
    assert sorted(known) == sorted(e.packed for e in topo.entries.values())
    assert len(known) == len(topo.entries)
    assert known.get(b"") is None and known.get(b"\x95\xcf") is None


@pytest.mark.parametrize("name", [0, 127, 128, 255, 256, 65535, 65536, 1 << 32, MAX_PEER_NAME - 1])
def test_entries_are_recognised_by_encoding_whatever_the_width_of_their_name(name: int) -> None:
    topo = Topology(name=MAX_PEER_NAME, nickname="us", uid=1)
    entry = PeerEntry(name, "n", 7, 3, (Connection(MAX_PEER_NAME, "10.0.0.1:6783", True, True),))
    topo.merge([entry])
    assert topo.by_encoding.get(entry.packed) is entry
    assert decode_entries(encode_entries([entry]), topo.by_encoding)[0] is entry


@settings(max_examples=60)
@given(st.lists(entries(), min_size=1, max_size=6, unique_by=lambda e: e.name))
def test_a_decoded_entry_keeps_the_encoding_it_came_in(batch: list[PeerEntry]) -> None:
    for original, decoded in zip(batch, decode_entries(encode_entries(batch)), strict=True):
        assert decoded == original
        assert decoded.packed == original.packed
        assert replace(decoded, version=decoded.version + 1).packed != decoded.packed


def test_an_entry_whose_nickname_was_cleaned_is_encoded_again() -> None:
    conns = (Connection(2, "10.0.0.2:6783", True, True),)
    dirty = msgpack.packb([[1, "h\x1b[2J1", 5, 3, [[2, "10.0.0.2:6783", True, True]]]])
    (entry,) = decode_entries(dirty)
    assert entry.nickname != "h\x1b[2J1"
    assert entry.packed == PeerEntry(1, entry.nickname, 5, 3, conns).packed
    assert decode_entries(encode_entries([entry])) == [entry]


def test_a_valid_but_unusual_encoding_is_relayed_as_it_came() -> None:
    """Another implementation may pack integers wider than needed: still valid, kept verbatim
    (and recognised again by those very bytes)."""
    wide = b"\x91\x95\xcf" + (1).to_bytes(8, "big") + b"\xa2h1\x05\x03\x90"
    (entry,) = decode_entries(wide)
    assert entry == PeerEntry(1, "h1", 5, 3, ())
    assert entry.packed == wide[1:]
    topo = Topology(name=MAX_PEER_NAME, nickname="us", uid=1)
    topo.merge([entry])
    assert decode_entries(wide, topo.by_encoding)[0] is entry
