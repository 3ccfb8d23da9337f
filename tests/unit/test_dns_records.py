"""The DNS record store: merge is a semilattice, tombstones expire, owners re-assert, departed
peers are hidden and come back, and a peer's payload only ever raises RemoteProtocolError."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.dns.records import (
    MAX_ADDRESS_TEXT,
    MAX_CONTAINER,
    MAX_NAME,
    MAX_PER_ORIGIN,
    MAX_RECORDS,
    Record,
    Records,
    beats,
    decode_records,
    encode_records,
    merge_encoded_records,
    normalize_address,
    normalize_name,
)
from meshnet.errors import RemoteProtocolError, UserError
from meshnet.gossip.channel import Gossiper
from meshnet.gossip.framing import MAX_FRAME_SIZE
from meshnet.gossip.versions import MAX_VERSION_JUMP, PLAUSIBLE_VERSION

TTL = 600.0
NOW = 1_700_000_000.0
OBSERVER = 1
ORIGINS = [2, 3, 4]
NAMES = ["a.meshnet.local.", "b.meshnet.local."]
ADDRESSES = ["10.32.0.1", "10.32.0.2", "fd00::1", "fd12:3456:789a:1::a"]
CONTAINERS = ["c1", "c2"]


@st.composite
def records(draw: st.DrawFn, origins: list[int] = ORIGINS) -> Record:
    return Record(
        name=draw(st.sampled_from(NAMES)),
        address=draw(st.sampled_from(ADDRESSES)),
        container=draw(st.sampled_from(CONTAINERS)),
        origin=draw(st.sampled_from(origins)),
        version=draw(st.integers(1, 4)),
        tombstone=draw(st.sampled_from([None, None, NOW - 10, NOW - 5])),
    )


def payload_of(batch: list[Record]) -> bytes:
    """A well-formed payload: one record per key (the per-key winner of ``batch``)."""
    best: dict[Any, Record] = {}
    for r in batch:
        if r.key not in best or beats(r, best[r.key]):
            best[r.key] = r
    return encode_records(best[k] for k in sorted(best))


payloads = st.lists(records(), max_size=8).map(payload_of)


def observer(now: float = NOW) -> Records:
    return Records(peer=OBSERVER, now=now, tombstone_ttl=TTL)


def state_after(*parts: bytes) -> list[Record]:
    store = observer()
    for part in parts:
        store.on_gossip(part)
    return store.records()


def test_implements_gossiper() -> None:
    store: Gossiper = observer()
    assert store.full_state() is None


# --- merge is a semilattice


@given(payloads, payloads)
def test_merge_is_commutative(a: bytes, b: bytes) -> None:
    assert state_after(a, b) == state_after(b, a)


@given(payloads, payloads, payloads)
def test_merge_is_associative(a: bytes, b: bytes, c: bytes) -> None:
    left = merge_encoded_records(merge_encoded_records(a, b), c)
    right = merge_encoded_records(a, merge_encoded_records(b, c))
    assert state_after(left) == state_after(right) == state_after(a, b, c)


@given(payloads)
def test_merge_is_idempotent(a: bytes) -> None:
    store = observer()
    store.on_gossip(a)
    before = store.records()
    assert store.on_gossip(a) is None
    assert store.records() == before


@given(payloads, payloads)
def test_merge_payloads_equals_applying_both(a: bytes, b: bytes) -> None:
    store = observer()
    assert decode_records(store.merge_payloads(a, b)) == state_after(a, b)


@given(payloads, payloads)
def test_on_gossip_returns_exactly_the_news(a: bytes, b: bytes) -> None:
    """Applying the returned delta to a copy of the old state gives the new state."""
    store, copy = observer(), observer()
    store.on_gossip(a)
    copy.on_gossip(a)
    delta = store.on_gossip(b)
    if delta is None:
        assert store.records() == copy.records()
        return
    assert copy.on_gossip(delta) is not None
    assert copy.records() == store.records()
    assert {r.key for r in decode_records(delta)} <= {r.key for r in decode_records(b)}


@given(payloads)
def test_full_state_round_trips(a: bytes) -> None:
    store = observer()
    store.on_gossip(a)
    state = store.full_state()
    if state is None:
        assert len(store) == 0
        return
    assert decode_records(state) == store.records()
    assert observer().on_gossip(state) is not None
    assert store.on_gossip(state) is None


@given(
    st.lists(
        st.tuples(
            st.sampled_from([1, 2, 3]),
            st.sampled_from(["register", "remove"]),
            st.sampled_from(NAMES),
            st.sampled_from(ADDRESSES),
            st.sampled_from(CONTAINERS),
            st.lists(st.sampled_from([1, 2, 3]), max_size=3),
        ),
        max_size=20,
    )
)
@settings(max_examples=200)
def test_peers_converge_whatever_reaches_whom(ops: list[Any]) -> None:
    """Local changes whose deltas reach arbitrary peers; one round of full states converges."""
    peers = {n: Records(peer=n, now=NOW, tombstone_ttl=TTL) for n in (1, 2, 3)}
    for step, (origin, op, name, address, container, receivers) in enumerate(ops):
        now = NOW + step
        if op == "register":
            delta = peers[origin].register(name, address, container, now)
        else:
            delta = peers[origin].remove(container, now, name=name)
        for n in receivers:
            if delta is not None and n != origin:
                peers[n].on_gossip(delta)
    for _ in range(2):
        for a in peers.values():
            for b in peers.values():
                state = a.full_state()
                if state is not None and a is not b:
                    b.on_gossip(state)
    states = [p.records() for p in peers.values()]
    assert states[0] == states[1] == states[2]
    assert peers[1].visible() == peers[2].visible() == peers[3].visible()


# --- local changes


def test_register_and_remove_emit_deltas() -> None:
    store = Records(peer=7, now=NOW)
    delta = store.register("Web.Meshnet.Local", "10.32.0.5", "abc", NOW)
    assert delta is not None
    [record] = decode_records(delta)
    assert record == Record("web.meshnet.local.", "10.32.0.5", "abc", 7, 1)
    assert store.register("web.meshnet.local.", "10.32.0.5", "abc", NOW) is None
    assert store.addresses("WEB.meshnet.local") == ["10.32.0.5"]

    removal = store.remove("abc", NOW + 1)
    assert removal is not None
    [tomb] = decode_records(removal)
    assert tomb.key == record.key and tomb.version == 2 and tomb.tombstone == NOW + 1
    assert store.addresses("web.meshnet.local.") == []
    assert store.remove("abc", NOW + 2) is None

    again = store.register("web.meshnet.local.", "10.32.0.5", "abc", NOW + 3)
    assert again is not None and decode_records(again)[0].version == 3


def test_remove_by_name_or_address_only() -> None:
    store = Records(peer=7, now=NOW)
    store.register("a.meshnet.local.", "10.32.0.1", "c", NOW)
    store.register("b.meshnet.local.", "10.32.0.1", "c", NOW)
    store.register("a.meshnet.local.", "10.32.0.2", "c", NOW)
    delta = store.remove("c", NOW, name="a.meshnet.local")
    assert delta is not None and len(decode_records(delta)) == 2
    assert store.addresses("b.meshnet.local.") == ["10.32.0.1"]
    store.register("a.meshnet.local.", "10.32.0.1", "c", NOW)
    delta = store.remove("c", NOW, address="10.32.0.1")
    assert delta is not None and len(decode_records(delta)) == 2
    assert store.visible() == frozenset()


@pytest.mark.parametrize(
    ("name", "address", "container"),
    [
        ("", "10.0.0.1", "c"),
        ("bad..name", "10.0.0.1", "c"),
        ("-lead.meshnet.local", "10.0.0.1", "c"),
        ("a" * 64 + ".local", "10.0.0.1", "c"),
        ("a." * 130, "10.0.0.1", "c"),
        ("sp ace.local", "10.0.0.1", "c"),
        ("ok.local", "10.0.0.256", "c"),
        ("ok.local", "not-an-ip", "c"),
        ("ok.local", "10.0.0.1", ""),
        ("ok.local", "10.0.0.1", "x" * (MAX_CONTAINER + 1)),
        ("ok.local", "10.0.0.1", "tab\there"),
        ("ok.local", "fe80::1%eth0", "c"),  # a zone: one host's interface
        ("ok.local", "fd00::1%2", "c"),
        ("ok.local", "::ffff:10.0.0.1", "c"),  # IPv4-mapped: the IPv4 address is the record
        ("ok.local", "fd00::1::2", "c"),
        ("ok.local", "fd00::/64", "c"),
    ],
)
def test_register_rejects_bad_input_as_user_error(name: str, address: str, container: str) -> None:
    with pytest.raises(UserError):
        Records(peer=7, now=NOW).register(name, address, container, NOW)


def test_normalizers() -> None:
    assert normalize_name("Foo_1.Meshnet.LOCAL") == "foo_1.meshnet.local."
    assert normalize_address("FD00:0::1") == "fd00::1"
    assert len(normalize_name("a." * 127)) == MAX_NAME


def test_lookups() -> None:
    store = Records(peer=7, now=NOW)
    store.register("web.meshnet.local.", "10.32.0.2", "c1", NOW)
    store.register("web.meshnet.local.", "10.32.0.1", "c2", NOW)
    store.register("alias.meshnet.local.", "10.32.0.1", "c2", NOW)
    store.register("db.eu.meshnet.local.", "fd00::1", "c3", NOW)
    assert store.addresses("web.meshnet.local.") == ["10.32.0.1", "10.32.0.2"]
    assert store.names("10.32.0.1") == ["alias.meshnet.local.", "web.meshnet.local."]
    assert store.names("fd00:0::1") == ["db.eu.meshnet.local."]
    assert store.names("garbage") == [] and store.addresses("bad..name") == []
    assert store.exists("eu.meshnet.local.")  # an empty non-terminal
    assert store.exists("meshnet.local.")
    assert not store.exists("nope.meshnet.local.")
    assert [len(v) for v in store.entries_by_peer().values()] == [4]
    stats = store.statistics()
    assert (stats.live, stats.tombstones, stats.hidden) == (4, 0, 0)


def test_a_dual_stack_container_has_a_record_per_address_removed_together() -> None:
    store = Records(peer=7, now=NOW)
    other = Records(peer=8, now=NOW)
    for address in ("10.32.0.5", "FD00:0:0::5"):
        delta = store.register("web.meshnet.local.", address, "c1", NOW)
        assert delta is not None
        other.on_gossip(delta)
    assert other.addresses("web.meshnet.local.") == ["10.32.0.5", "fd00::5"]
    assert other.names("fd00::5") == ["web.meshnet.local."]
    # The IPv6 record alone (detach of one address) ...
    delta = store.remove("c1", NOW + 1, address="fd00:0::5")
    assert delta is not None and [r.address for r in decode_records(delta)] == ["fd00::5"]
    other.on_gossip(delta)
    assert other.addresses("web.meshnet.local.") == ["10.32.0.5"] and other.names("fd00::5") == []
    # ... or the container's records of both families at once.
    store.register("web.meshnet.local.", "fd00::5", "c1", NOW + 2)
    both = store.remove("c1", NOW + 3)
    assert both is not None
    assert sorted(r.address for r in decode_records(both)) == ["10.32.0.5", "fd00::5"]


def test_ipv6_records_travel_in_the_wire_form_older_peers_decode() -> None:
    """IPv6 addresses are canonical text in the same six-field entry as IPv4 ones: what every
    earlier version decodes (and relays) already; a new form would cut them off the mesh."""
    store = Records(peer=7, now=NOW)
    delta = store.register("web.meshnet.local.", "fd00::5", "c1", NOW)
    assert delta is not None
    assert msgpack.unpackb(delta) == [[7, "c1", "web.meshnet.local.", "fd00::5", 1, None]]
    longest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    assert len(longest) == MAX_ADDRESS_TEXT
    delta = store.register("big.meshnet.local.", longest.upper(), "c1", NOW)
    assert delta is not None and decode_records(delta)[0].address == longest


def test_generation_moves_on_visible_changes() -> None:
    store = Records(peer=7, now=NOW)
    g0 = store.generation
    store.register("web.meshnet.local.", "10.32.0.2", "c1", NOW)
    g1 = store.generation
    assert g1 > g0
    store.register("web.meshnet.local.", "10.32.0.2", "c1", NOW)
    assert store.generation == g1
    store.peer_gone(9)
    assert store.generation > g1


def names(origin: int, count: int, start: int = 0) -> list[Record]:
    return [
        Record(f"n{i}.meshnet.local.", "10.32.0.1", "c", origin, 1)
        for i in range(start, start + count)
    ]


def test_one_origin_fills_only_its_quota_and_local_names_always_fit() -> None:
    store = Records(peer=OBSERVER, now=NOW, tombstone_ttl=TTL)
    store.merge(names(2, MAX_PER_ORIGIN + 10))
    assert len(store) == MAX_PER_ORIGIN
    assert store.statistics().overflow == 10
    for n in range(2, 2 + (MAX_RECORDS - MAX_PER_ORIGIN) // MAX_PER_ORIGIN + 3):
        store.merge(names(n, MAX_PER_ORIGIN))  # many origins: the others' share fills up
    assert len(store) == MAX_RECORDS - MAX_PER_ORIGIN
    # Our own names still fit, up to our own quota, whatever the others hold.
    for i in range(MAX_PER_ORIGIN):
        assert store.register(f"own{i}.meshnet.local", "10.32.0.9", "c", NOW) is not None
    assert store.addresses("own0.meshnet.local") == ["10.32.0.9"]
    with pytest.raises(UserError):
        store.register("one.more.local", "10.0.0.1", "c", NOW)
    assert len(store) == MAX_RECORDS


def test_a_departed_origins_records_are_purged_after_the_ttl_and_on_rmpeer() -> None:
    store = Records(peer=OBSERVER, now=NOW, tombstone_ttl=TTL, departed_ttl=TTL)
    store.merge(names(2, 5) + names(3, 5))
    store.peer_gone(2)
    store.expire(NOW + TTL - 1)
    assert len(store) == 10 and store.statistics().hidden == 5  # kept in case it returns
    store.expire(NOW + TTL)
    assert len(store) == 5 and store.statistics().purged == 5
    # A neighbour's late copy is purged again at the next expire, never answered.
    store.merge(names(2, 5))
    assert store.addresses("n0.meshnet.local") == ["10.32.0.1"]  # origin 3's
    assert store.statistics().hidden == 5
    store.expire(NOW + TTL + 10)
    assert len(store) == 5
    # rmpeer: at once.
    assert store.forget_peer(3) == 5
    assert len(store) == 0 and store.full_state() is None
    store.merge(names(3, 2))
    assert store.statistics().live == 0
    store.expire(NOW + TTL + 20)
    assert len(store) == 0
    # The marks go too, once the records are long gone; a returning peer is answered again.
    store.expire(NOW + 4 * TTL)
    assert store.hidden_peers == frozenset()
    store.merge(names(3, 1))
    assert store.addresses("n0.meshnet.local") == ["10.32.0.1"]
    with pytest.raises(ValueError):
        store.forget_peer(OBSERVER)


def test_worst_case_full_state_fits_a_control_frame() -> None:
    long_name = ("a" * 63 + ".") * 3 + "b" * (MAX_NAME - 3 * 64 - 1) + "."
    assert len(normalize_name(long_name)) == MAX_NAME
    records = [
        Record(
            long_name,
            f"ffff:ffff:ffff:ffff:ffff:ffff:{i >> 16:x}:{i & 0xFFFF:x}",
            f"{i:0{MAX_CONTAINER}d}",
            (1 << 48) - 1,
            (1 << 63) - 1,
            NOW,
        )
        for i in range(MAX_RECORDS)
    ]
    assert len(encode_records(records)) < MAX_FRAME_SIZE - 1024


# --- tombstones expire


def test_tombstones_expire_after_the_ttl() -> None:
    store = Records(peer=7, now=NOW, tombstone_ttl=TTL)
    store.register("web.meshnet.local.", "10.32.0.2", "c1", NOW)
    store.remove("c1", NOW + 10)
    assert store.expire(NOW + 10 + TTL - 1) == 0
    assert len(store) == 1
    assert store.expire(NOW + 10 + TTL) == 1
    assert len(store) == 0 and store.full_state() is None
    assert store.statistics().expired == 1


def test_a_late_expired_tombstone_removes_but_is_not_kept() -> None:
    live = Record("web.meshnet.local.", "10.32.0.2", "c1", 2, 1)
    dead = Record("web.meshnet.local.", "10.32.0.2", "c1", 2, 2, NOW - TTL - 1)
    store = observer()
    store.merge([live])
    assert store.merge([dead]) == [dead]  # news: relayed so others drop it too
    assert len(store) == 0
    assert store.merge([dead]) == []  # nothing held, nothing new


def test_tombstones_of_hidden_peers_expire_too() -> None:
    store = observer()
    store.merge([Record("web.meshnet.local.", "10.32.0.2", "c1", 2, 2, NOW)])
    store.peer_gone(2)
    assert store.expire(NOW + TTL) == 1


# --- the owner re-asserts its own records


def test_owner_bumps_past_a_stale_view_of_a_live_record() -> None:
    owner, other = Records(peer=2, now=NOW), observer()
    delta = owner.register("web.meshnet.local.", "10.32.0.2", "c1", NOW)
    assert delta is not None
    other.on_gossip(delta)
    # A previous incarnation of the owner had removed it at a higher version.
    stale = Record("web.meshnet.local.", "10.32.0.2", "c1", 2, 5, NOW - 1)
    other.merge([stale])
    assert other.addresses("web.meshnet.local.") == []
    news = owner.on_gossip(encode_records([stale]))
    assert news is not None
    [mine] = decode_records(news)
    assert mine.version == 6 and mine.live
    assert owner.take_reassertions() == news
    assert owner.take_reassertions() is None
    other.on_gossip(news)
    assert other.addresses("web.meshnet.local.") == ["10.32.0.2"]
    assert owner.statistics().reassertions == 1


def test_owner_tombstones_a_record_it_no_longer_holds() -> None:
    """Removed and expired at the owner; a peer that was away brings the live record back."""
    owner, away = Records(peer=2, now=NOW, tombstone_ttl=TTL), observer()
    delta = owner.register("web.meshnet.local.", "10.32.0.2", "c1", NOW)
    assert delta is not None
    away.on_gossip(delta)
    owner.remove("c1", NOW + 1)
    owner.expire(NOW + 1 + TTL)
    assert len(owner) == 0
    news = owner.on_gossip(delta)
    assert news is not None
    [tomb] = decode_records(news)
    assert tomb.version == 3 and tomb.tombstone == NOW + 1 + TTL
    away.on_gossip(news)
    assert away.visible() == frozenset()


def test_an_owner_that_lost_its_file_takes_its_records_back_within_the_window() -> None:
    """A corrupt state file: what the mesh holds of ours comes back as ours, not tombstoned;
    after the window, the usual rule (a record we do not hold was removed) applies again."""
    before = Records(peer=2, now=NOW, tombstone_ttl=TTL)
    web = before.register("web.meshnet.local.", "10.32.0.2", "c1", NOW)
    db = before.register("db.meshnet.local.", "10.32.0.3", "c2", NOW)
    assert web is not None and db is not None
    restarted = Records(peer=2, now=NOW + 5, tombstone_ttl=TTL)
    restarted.recover(until=NOW + 5 + TTL)
    assert restarted.on_gossip(web) is not None
    assert restarted.take_reassertions() is None  # nothing to tell the mesh: it is right
    assert restarted.addresses("web.meshnet.local") == ["10.32.0.2"]
    assert restarted.statistics().recovered == 1
    assert [r.name for r in restarted.own_records()] == ["web.meshnet.local."]  # persisted
    later = restarted.register("new.meshnet.local.", "10.32.0.4", "c3", NOW + 6)
    [taken] = decode_records(web)
    assert later is not None and decode_records(later)[0].version > taken.version
    restarted.expire(NOW + 5 + TTL)
    news = restarted.on_gossip(db)
    assert news is not None and decode_records(news)[0].tombstone is not None


def test_owner_ignores_older_versions_and_agreeing_tombstones() -> None:
    owner = Records(peer=2, now=NOW)
    owner.register("web.meshnet.local.", "10.32.0.2", "c1", NOW)
    owner.remove("c1", NOW)
    owner.register("web.meshnet.local.", "10.32.0.2", "c1", NOW)
    old = Record("web.meshnet.local.", "10.32.0.2", "c1", 2, 1)
    assert owner.on_gossip(encode_records([old])) is None
    gone = Record("other.meshnet.local.", "10.32.0.2", "c1", 2, 9, NOW)
    assert owner.on_gossip(encode_records([gone])) is None
    assert owner.take_reassertions() is None


def test_a_forged_record_at_the_maximum_version_is_dropped_and_its_owner_keeps_it() -> None:
    owner = Records(peer=2, now=NOW)
    owner.register("web.meshnet.local.", "10.32.0.2", "c1", NOW)
    other = Records(peer=3, now=NOW)
    other.on_gossip(owner.full_state() or b"")
    forged = Record("web.meshnet.local.", "10.32.0.2", "c1", 2, (1 << 63) - 1, NOW)
    new_key = Record("evil.meshnet.local.", "10.32.0.9", "c1", 2, (1 << 63) - 1)
    for store in (owner, other):
        assert store.on_gossip(encode_records([forged, new_key])) is None
        assert store.addresses("web.meshnet.local") == ["10.32.0.2"]
        assert store.addresses("evil.meshnet.local") == []
        assert store.statistics().implausible == 2
    # A plausible forgery (a tombstone) spreads, but the owner bumps past it and wins back.
    version = owner.own_records()[0].version
    tomb = Record("web.meshnet.local.", "10.32.0.2", "c1", 2, version + MAX_VERSION_JUMP, NOW)
    assert other.on_gossip(encode_records([tomb])) is not None
    assert other.addresses("web.meshnet.local") == []
    back = owner.on_gossip(encode_records([tomb]))
    assert back is not None and other.on_gossip(back) is not None
    assert other.addresses("web.meshnet.local") == ["10.32.0.2"]


@given(st.lists(st.tuples(st.sampled_from([2, 3]), st.integers(1, (1 << 63) - 1)), max_size=10))
def test_no_update_moves_a_record_beyond_its_owners_reach(updates: list[tuple[int, int]]) -> None:
    store = Records(peer=2, now=NOW)
    store.register("web.meshnet.local.", "10.32.0.2", "c1", NOW)
    for origin, version in updates:
        before = {r.key: r.version for r in store.records()}
        top = max((v for (o, *_), v in before.items() if o == origin), default=0)
        store.merge([Record("web.meshnet.local.", "10.32.0.2", "c1", origin, version)])
        for r in store.records():
            if before.get(r.key) != r.version:
                assert r.version <= max(PLAUSIBLE_VERSION, top + MAX_VERSION_JUMP) + 1
    assert all(r.version < (1 << 63) - 1 for r in store.records())


def test_restore_then_reassert() -> None:
    before = Records(peer=2, now=NOW)
    before.register("web.meshnet.local.", "10.32.0.2", "c1", NOW)
    before.remove("c1", NOW)
    before.register("db.meshnet.local.", "10.32.0.3", "c2", NOW)
    saved = before.own_records()
    after = Records(peer=2, now=NOW + 5)
    after.restore(saved)
    assert after.records() == saved
    delta = after.register("x.meshnet.local.", "10.32.0.4", "c3", NOW + 5)
    assert delta is not None and decode_records(delta)[0].version == 4
    with pytest.raises(ValueError):
        after.restore([Record("y.meshnet.local.", "10.32.0.4", "c3", 3, 1)])


# --- departed peers


def test_peer_gone_hides_and_return_restores() -> None:
    store = observer()
    store.merge(
        [
            Record("web.meshnet.local.", "10.32.0.2", "c1", 2, 1),
            Record("web.meshnet.local.", "10.32.0.3", "c1", 3, 1),
        ]
    )
    assert store.peer_gone(2)
    assert not store.peer_gone(2)
    assert store.addresses("web.meshnet.local.") == ["10.32.0.3"]
    assert store.names("10.32.0.2") == []
    assert list(store.entries_by_peer()) == [3]
    assert store.statistics().hidden == 1 and store.hidden_peers == {2}
    state = store.full_state()
    assert state is not None and len(decode_records(state)) == 2  # still gossiped
    # Changes from a hidden peer are still merged, just not answered.
    store.merge([Record("new.meshnet.local.", "10.32.0.9", "c9", 2, 1)])
    assert store.addresses("new.meshnet.local.") == []
    assert store.peer_returned(2)
    assert not store.peer_returned(2)
    assert store.addresses("web.meshnet.local.") == ["10.32.0.2", "10.32.0.3"]
    assert store.addresses("new.meshnet.local.") == ["10.32.0.9"]


def test_we_never_hide_ourselves() -> None:
    store = Records(peer=2, now=NOW)
    store.register("web.meshnet.local.", "10.32.0.2", "c1", NOW)
    assert not store.peer_gone(2)
    assert store.addresses("web.meshnet.local.") == ["10.32.0.2"]


# --- untrusted payloads

GOOD = ["a.meshnet.local.", "10.32.0.1"]


@pytest.mark.parametrize(
    "obj",
    [
        None,
        {},
        [None],
        [[2, "c", *GOOD, 1]],  # too short
        [[2, "c", *GOOD, 1, None, 0]],  # too long
        [[-1, "c", *GOOD, 1, None]],
        [[1 << 48, "c", *GOOD, 1, None]],
        [[True, "c", *GOOD, 1, None]],
        [[2, "", *GOOD, 1, None]],
        [[2, b"c", *GOOD, 1, None]],
        [[2, "c", "A.meshnet.local.", "10.32.0.1", 1, None]],  # not canonical
        [[2, "c", "a.meshnet.local", "10.32.0.1", 1, None]],
        [[2, "c", "a..local.", "10.32.0.1", 1, None]],
        [[2, "c", "a.meshnet.local.", "010.32.0.1", 1, None]],
        [[2, "c", "a.meshnet.local.", "FD00::1", 1, None]],
        [[2, "c", "a.meshnet.local.", "fd00:0::1", 1, None]],
        [[2, "c", "a.meshnet.local.", "fd00::1%eth0", 1, None]],  # canonical, but a zone
        [[2, "c", "a.meshnet.local.", "::ffff:a00:1", 1, None]],  # Python 3.11's mapped text
        [[2, "c", "a.meshnet.local.", "::ffff:10.0.0.1", 1, None]],  # and 3.13's
        [[2, "c", "a.meshnet.local.", bytes(16), 1, None]],  # addresses are text
        [[2, "c", *GOOD, 0, None]],
        [[2, "c", *GOOD, 1 << 63, None]],
        [[2, "c", *GOOD, 1.0, None]],
        [[2, "c", *GOOD, 1, math.nan]],
        [[2, "c", *GOOD, 1, math.inf]],
        [[2, "c", *GOOD, 1, -1.0]],
        [[2, "c", *GOOD, 1, "yesterday"]],
        [[2, "c", *GOOD, 1, None], [2, "c", *GOOD, 2, None]],  # a key twice
    ],
)
def test_malformed_payloads_are_remote_protocol_errors(obj: Any) -> None:
    with pytest.raises(RemoteProtocolError):
        observer().on_gossip(msgpack.packb(obj))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\x91",  # truncated
        b"\x90\x00",  # trailing bytes
        b"\xdd\xff\xff\xff\xff",  # a huge array header
        b"\xdb\xff\xff\xff\xff",  # a huge string header
        b"\x91" * 100_000,  # deep nesting
        b"\x90" + b"\x00" * (5 << 20),  # oversized
    ],
)
def test_garbage_bytes_are_remote_protocol_errors(data: bytes) -> None:
    store = observer()
    for receive in (store.on_gossip, lambda p: store.on_broadcast(2, p)):
        with pytest.raises(RemoteProtocolError):
            receive(data)


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_remote_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        observer().on_gossip(data)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(),
    lambda children: st.lists(children, max_size=6),
    max_leaves=30,
)


@given(st.lists(msgpack_values, max_size=4))
def test_random_structures_raise_only_remote_protocol_errors(obj: Any) -> None:
    with contextlib.suppress(RemoteProtocolError):
        observer().on_unicast(2, msgpack.packb(obj))


@given(payloads, st.integers(0, 1000), st.integers(0, 255))
def test_corrupted_payloads_raise_only_remote_protocol_errors(
    payload: bytes, where: int, value: int
) -> None:
    data = bytearray(payload)
    if data:
        data[where % len(data)] = value
    with contextlib.suppress(RemoteProtocolError):
        observer().on_gossip(bytes(data))
