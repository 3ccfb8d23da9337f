"""The ring CRDT alone: division, donation, hand-over, rmpeer, merge rules and the wire form."""

from __future__ import annotations

import contextlib
import itertools
from ipaddress import IPv6Address

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from meshnet.errors import RemoteProtocolError
from meshnet.ipam.ring import (
    Ring,
    RingMergeError,
    RingUpdate,
    Token,
    decode_update,
    encode_update,
    merge_updates,
)

LO, HI = 1000, 1256  # 256 addresses
A, B, C, D = 0xA, 0xB, 0xC, 0xD


def ring(name: int, seed: tuple[int, ...] = (A, B, C)) -> Ring:
    r = Ring(LO, HI, name=name)
    r.claim_initial(seed)
    return r


def wire(update: RingUpdate) -> RingUpdate:
    return decode_update(encode_update(update))


def test_initial_division_is_deterministic_and_tiles_the_range() -> None:
    a, b = ring(A), ring(B, (C, B, A, A))
    assert a.tokens == b.tokens
    assert a.seed == (A, B, C)
    assert [t.start for t in a.tokens] == [1000, 1085, 1170]
    sizes = {p: sum(e - s for s, e in a.owned_ranges(p)) for p in (A, B, C)}
    assert sizes == {A: 85, B: 85, C: 86}
    assert a.owner_of(999) is None and a.owner_of(1256) is None
    assert a.owner_of(1084) == A and a.owner_of(1085) == B
    assert a.claim_initial((A, B, C)) == []
    with pytest.raises(ValueError):
        a.claim_initial((A, B))


def test_donation_reaches_the_recipient_with_its_end() -> None:
    a, b, c = ring(A), ring(B), ring(C)
    delta = a.donate(1040, 1060, C)
    assert a.owned_ranges(A) == [(1000, 1040), (1060, 1085)]
    # Only the delta, relayed by B, which learns what is new to it.
    relayed = b.merge(wire(a.update(delta)))
    assert c.merge(wire(b.update(relayed)))
    assert c.owned_ranges(C) == [(1040, 1060), (1170, 1256)]
    assert b.tokens == a.tokens == c.tokens


def test_donating_what_is_not_ours_is_refused() -> None:
    a = ring(A)
    with pytest.raises(ValueError):
        a.donate(1080, 1090, B)
    with pytest.raises(ValueError):
        a.donate(1000, 1010, A)


def test_merge_keeps_the_newest_and_is_idempotent() -> None:
    a, b = ring(A), ring(B)
    first = a.donate(1000, 1010, B)
    second = a.donate(1010, 1020, B)
    assert b.merge(a.update(second))
    assert b.owned_ranges(B) == [(1010, 1020), (1085, 1170)]
    assert [t.start for t in b.merge(a.update(first))] == [1000]  # still news
    assert b.merge(a.update(first)) == []
    assert b.merge(a.update()) == []
    assert b.owned_ranges(B) == [(1000, 1020), (1085, 1170)]


def test_two_owners_at_one_version_is_refused_and_changes_nothing() -> None:
    a, c = ring(A), ring(C)
    c.merge(a.update(a.donate(1000, 1001, B)))  # version 3 at 1000 now
    before = c.tokens
    bad = RingUpdate(LO, HI, a.seed, (Token(1000, 1001, C, 3, 1),), False)
    with pytest.raises(RingMergeError, match="two owners"):
        c.merge(bad)
    assert c.tokens == before


def test_a_peer_changing_our_token_is_bumped_past_and_reasserted() -> None:
    a, b = ring(A), ring(B)
    forged = RingUpdate(LO, HI, a.seed, (Token(1000, 1085, D, 5, 85),), False)
    assert b.merge(forged) == [forged.tokens[0]]  # a bystander believes it...
    assert a.merge(forged) == []  # ...the owner does not,
    assert a.owned_ranges(A) == [(1000, 1085)]
    (mine,) = a.take_reassertions()
    assert (mine.owner, mine.version, mine.end) == (A, 6, 1085)
    assert a.take_reassertions() == []
    assert b.merge(a.update([mine])) == [mine]  # and gets its range back everywhere
    assert b.owned_ranges(A) == [(1000, 1085)]


def test_a_live_peers_space_given_to_us_unasked_is_refused() -> None:
    """A forger gives A's token to B: B must not believe it, or A and B re-assert forever."""
    a, b = ring(A), ring(B)
    gift = Token(1000, 1085, B, 5, 85)
    inside = Token(1050, 1085, B, 2, 35)  # a new token cut out of A's range
    forged = RingUpdate(LO, HI, a.seed, (gift,), False)
    assert b.merge(forged, gifts_from=()) == []
    assert b.merge(RingUpdate(LO, HI, a.seed, (inside,), False), gifts_from=()) == []
    assert b.unasked_gifts == 2 and b.owned_ranges(B) == [(1085, 1170)]
    # Asked for (an open donation request to A), or from a peer that left: taken.
    assert b.merge(forged, gifts_from={A}) == [gift]
    c = ring(C)
    gone = RingUpdate(LO, HI, a.seed, (gift,), False, departed=frozenset({A}))
    assert ring(B).merge(gone, gifts_from=()) == [gift]
    assert c.merge(gone, gifts_from=()) == [gift]  # not ours: no gift involved


def test_an_rmpeer_of_us_while_we_are_alive_is_still_refused() -> None:
    a = ring(A)
    forged = RingUpdate(
        LO, HI, a.seed, (Token(1000, 1085, B, 5, 85),), False, departed=frozenset({A})
    )
    with pytest.raises(RingMergeError, match="changed our token"):
        a.merge(forged)
    assert a.owned_ranges(A) == [(1000, 1085)] and a.take_reassertions() == []


def test_a_token_at_an_implausible_version_is_dropped_and_counted() -> None:
    a, b = ring(A), ring(B)
    top = (1 << 63) - 1
    forged = RingUpdate(
        LO, HI, a.seed, (Token(1000, 1085, B, top, 85), Token(1170, 1256, C, 2, 80)), False
    )
    assert b.merge(forged) == [forged.tokens[1]]  # the plausible rest applies
    assert b.owned_ranges(A) == [(1000, 1085)] and b.implausible == 1
    assert a.merge(forged) == [forged.tokens[1]]
    assert a.take_reassertions() == [] and a.implausible == 1


@settings(max_examples=50)
@given(
    st.lists(
        st.tuples(st.sampled_from([1000, 1085, 1170]), st.integers(1, (1 << 63) - 1)),
        max_size=10,
    )
)
def test_no_forged_tokens_take_an_owners_range_for_good(forged: list[tuple[int, int]]) -> None:
    """A forger sends B tokens under any owner and version; A sees what B relays."""
    a, b = ring(A), ring(B)
    for start, version in forged:
        end = {1000: 1085, 1085: 1170, 1170: 1256}[start]
        token = Token(start, end, D, version, 0)
        relayed = []
        with contextlib.suppress(RingMergeError):  # the forger's own error: nothing applied
            relayed = b.merge(RingUpdate(LO, HI, b.seed, (token,), False))
        if relayed:
            a.merge(b.update(relayed))
        back = a.take_reassertions()
        if back:
            b.merge(a.update(back))
        assert all(t.version < (1 << 63) - 1 for t in a.tokens + b.tokens)
        assert b.owned_ranges(A) == a.owned_ranges(A) == [(1000, 1085)]


def test_a_token_inside_our_range_is_split_off_by_us_and_stays_ours_everywhere() -> None:
    """A forger puts a token inside A's range; B takes it in good faith and relays it: A
    neither closes the connection to B nor loses the space, and B's view follows A's."""
    a, b = ring(A), ring(B)
    forged = RingUpdate(LO, HI, a.seed, (Token(1050, 1085, D, 7, 35),), False)
    relayed = b.merge(forged)
    assert b.owner_of(1060) == D
    assert a.merge(b.update(relayed)) == []  # no error: B did nothing wrong
    assert a.owned_ranges(A) == [(1000, 1085)] and len(a) == 4
    back = a.take_reassertions()
    assert [(t.start, t.end, t.owner) for t in back] == [(1000, 1050, A), (1050, 1085, A)]
    assert back[1].version == 8
    b.merge(a.update(back))
    assert b.owned_ranges(A) == [(1000, 1085)] and b.owner_of(1060) == A


def test_a_forged_token_and_a_forged_split_in_one_update_are_both_won_back() -> None:
    """Both bumps of A's first token in one merge: the higher version must be the one kept."""
    a, b = ring(A), ring(B)
    forged = RingUpdate(
        LO, HI, a.seed, (Token(1000, 1001, D, 1 << 30, 0), Token(1050, 1051, D, 5, 0)), False
    )
    a.merge(b.update(b.merge(forged)))
    back = a.take_reassertions()
    assert [t.start for t in back] == [1000, 1050] and back[0].version > 1 << 30
    b.merge(a.update(back))
    assert a.owned_ranges(A) == b.owned_ranges(A) == [(1000, 1085)]


def test_separately_seeded_rings_refuse_to_merge_and_never_grow() -> None:
    one, two = ring(A, (A, B)), ring(C, (C, D))
    one.donate(1000, 1050, B)
    before_one, before_two = encode_update(one.update()), encode_update(two.update())
    for _ in range(3):
        with pytest.raises(RingMergeError, match="seeded separately"):
            one.merge(wire(two.update()))
        with pytest.raises(RingMergeError, match="seeded separately"):
            two.merge(wire(one.update()))
    assert encode_update(one.update()) == before_one
    assert encode_update(two.update()) == before_two


def test_other_range_is_refused() -> None:
    a = ring(A)
    other = Ring(LO, HI + 1, name=B)
    other.claim_initial((A, B, C))
    with pytest.raises(RingMergeError, match="range mismatch"):
        a.merge(other.update())


def test_adopting_a_ring_where_we_changed_our_tokens_means_lost_state() -> None:
    a = ring(A)
    a.set_free(1000, 10)
    fresh = Ring(LO, HI, name=A)
    with pytest.raises(RingMergeError, match="state was lost"):
        fresh.merge(a.update())
    assert not fresh.seeded
    assert fresh.merge(a.update(), accept_own=True)  # a hand-over we expect
    # A peer without a ring ignores deltas: it adopts only a whole ring.
    assert Ring(LO, HI, name=D).merge(a.update(a.tokens[:1])) == []


def test_transfer_all_hands_everything_over() -> None:
    a, b = ring(A), ring(B)
    delta = a.transfer_all(B)
    assert a.owned_ranges(A) == []
    b.merge(a.update(delta))
    assert b.owned_ranges(B) == [(1000, 1170)]


def test_rmpeer_on_two_peers_gives_one_owner() -> None:
    b, c, d = ring(B, (A, B, C, D)), ring(C, (A, B, C, D)), ring(D, (A, B, C, D))
    heir_b, delta_b = b.reclaim(A, B)
    heir_c, delta_c = c.reclaim(A, C)
    assert heir_b == heir_c == B  # the next owner after A by name, whoever runs it
    assert delta_b == delta_c
    assert d.merge(wire(b.update(delta_b)))
    assert d.merge(wire(c.update(delta_c))) == []
    assert b.merge(c.update(delta_c)) == []
    assert d.owned_ranges(B) == [(1000, 1128)]
    assert Ring.heir_of(D, [A, B, C, D]) == A  # cyclic
    assert b.reclaim(A, B) == (None, [])
    with pytest.raises(ValueError):
        b.reclaim(B, B)
    assert d.departed == {A}


def test_departed_peers_never_inherit_and_the_last_owner_cannot_be_reclaimed() -> None:
    a, b, c = ring(A), ring(B), ring(C)
    for r in (b, c):
        r.merge(a.update(a.transfer_all(B)))  # A resets onto B
    assert c.departed == {A}
    heir, _ = c.reclaim(B, C)  # B dies: C, the only other owner, inherits (not A)
    assert heir == C
    with pytest.raises(ValueError, match="no peer left"):
        c.reclaim(C, B)  # C owns everything; A and B are gone: nobody may inherit


def test_merge_updates_is_the_union_of_newest() -> None:
    a = ring(A)
    first = a.update(a.donate(1000, 1010, B))
    second = a.update(a.donate(1010, 1020, C))
    union = merge_updates(first, second)
    b = ring(B)
    b.merge(union)
    assert b.owned_ranges(B)[0] == (1000, 1010)
    assert b.owned_ranges(C)[0] == (1010, 1020)


@given(st.binary(max_size=200))
def test_garbage_is_a_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_update(data)


@given(
    st.lists(
        st.tuples(
            st.integers(LO, HI - 10),
            st.integers(1, 10),
            st.integers(0, (1 << 48) - 1),
            st.integers(1, 1 << 40),
            st.integers(0, 1),
        ),
        max_size=20,
        unique_by=lambda t: t[0],
    ),
    st.booleans(),
)
def test_wire_roundtrip(rows: list[tuple[int, int, int, int, int]], full: bool) -> None:
    tokens = tuple(Token(s, s + n, o, v, f) for s, n, o, v, f in sorted(rows))
    if full and (not tokens or tokens[0].start != LO):
        full = False
    update = RingUpdate(LO, HI, (A, B), tokens, full, frozenset({C}))
    assert wire(update) == update


def test_malformed_updates_are_refused() -> None:
    good = [LO, HI, [A, B], True, [[LO, 1100, A, 1, 0], [1100, HI, B, 1, 0]], [C]]
    decode_update(msgpack.packb(good))
    bad = [
        [LO, HI, [B, A], True, good[4]],  # seed unsorted
        [LO, HI, [A, B], True, [[1100, HI, B, 1, 0], [LO, 1100, A, 1, 0]]],  # token order
        [LO, HI, [A, B], True, [[1100, HI, B, 1, 0]]],  # full without first token
        [LO, HI, [], False, [[LO, HI, A, 1, 0]]],  # tokens without seed
        [LO, HI, [A, B], False, [[LO, HI, A, 0, 0]]],  # version 0
        [LO, HI, [A, B], False, [[HI, HI + 1, A, 1, 0]]],  # outside the range
        [LO, HI, [A, B], False, [[LO, HI + 1, A, 1, 0]]],  # end outside the range
        [LO, HI, [A, B], False, [[LO, LO, A, 1, 0]]],  # empty token
        [LO, HI, [A, B], False, [[LO, LO + 5, A, 1, 6]]],  # free beyond the token
        [LO, HI, [A, B], False, [[LO, HI, 1 << 48, 1, 0]]],  # owner too big
        [LO, HI, [A, B], False, [[LO, HI, A, 1]]],  # short token
    ]
    bad = [[*obj, []] for obj in bad]
    bad += [[*good[:5], [C, B]], [*good[:5], [1 << 48]], good[:5]]  # departed: order, range, none
    for obj in bad:
        with pytest.raises(RingMergeError):
            decode_update(msgpack.packb(obj))


# --- IPv6: addresses and counts beyond 64 bits


LO6 = int(IPv6Address("fd12:3456:789a::"))
HI6 = LO6 + (1 << 80)  # a /48
FOCUS6 = (LO6, LO6 + (1 << 64))  # its first /64


def test_an_ipv4_ring_keeps_its_wire_form_of_plain_ints() -> None:
    obj = msgpack.unpackb(encode_update(ring(A).update()))
    assert obj[:2] == [LO, HI] and all(type(v) is int for t in obj[4] for v in t)


@given(
    st.lists(
        st.tuples(
            st.integers(LO6, HI6 - (1 << 70)),
            st.integers(1, 1 << 70),
            st.integers(0, (1 << 48) - 1),
            st.integers(1, 1 << 40),
            st.integers(0, 1 << 70),
        ),
        max_size=20,
        unique_by=lambda t: t[0],
    ),
)
def test_wire_roundtrip_of_an_ipv6_ring(rows: list[tuple[int, int, int, int, int]]) -> None:
    tokens = tuple(Token(s, s + n, o, v, min(f, n)) for s, n, o, v, f in sorted(rows))
    update = RingUpdate(LO6, HI6, (A, B), tokens, False, frozenset({C}))
    assert wire(update) == update


def test_wide_values_have_one_encoding_only() -> None:
    small = (5).to_bytes(16, "big")  # fits an int: must travel as one
    obj = [LO, HI, [A], False, [[LO, HI, A, 1, small]], []]
    with pytest.raises(RingMergeError, match="free count"):
        decode_update(msgpack.packb(obj, use_bin_type=True))
    with pytest.raises(RingMergeError):  # 17 bytes: not a 128-bit value
        decode_update(msgpack.packb([b"\xff" * 17, HI, [], False, [], []], use_bin_type=True))


def test_a_focused_division_gives_every_peer_a_share_of_the_default_subnet() -> None:
    a = Ring(LO6, HI6, name=A)
    b = Ring(LO6, HI6, name=B)
    assert a.claim_initial((A, B, C), FOCUS6) == b.claim_initial((C, B, A), FOCUS6)
    for peer in (A, B, C):
        in_focus = [(s, e) for s, e in a.owned_ranges(peer) if FOCUS6[0] <= s < FOCUS6[1]]
        assert sum(e - s for s, e in in_focus) >= (1 << 64) // 3
    total = sum(e - s for _, s, e in a.extents())
    assert total == HI6 - LO6  # the division tiles the whole /48
    assert sum(t.free for t in a.tokens) == HI6 - LO6
    with pytest.raises(ValueError, match="focus"):
        Ring(LO6, HI6, name=C).claim_initial((A,), (LO6 - 1, LO6 + 5))


def test_an_ipv6_donation_and_merge_across_the_wire() -> None:
    a, c = Ring(LO6, HI6, name=A), Ring(LO6, HI6, name=C)
    a.claim_initial((A, B, C), FOCUS6)
    c.merge(wire(a.update()))
    lo = a.owned_ranges(A)[0][0]
    delta = a.donate(lo + (1 << 60), lo + (1 << 61), C)
    assert c.merge(wire(a.update(delta)))
    assert (lo + (1 << 60), lo + (1 << 61)) in c.owned_ranges(C)
    assert a.owner_of(lo + (1 << 60)) == C == c.owner_of(lo + (1 << 61) - 1)


# --- many rings, deltas lost, duplicated and reordered


NAMES = (0x11, 0x22, 0x33, 0x44)


class RingGossip(RuleBasedStateMachine):
    """Peers change only their own tokens; deltas travel (or not) in any order.

    After every step no two peers believe they own one address; once full states are
    exchanged every view is identical and the owned ranges add up to the whole range.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rings = {n: Ring(LO, HI, name=n) for n in NAMES}
        for r in self.rings.values():
            r.claim_initial(NAMES[:3])
        self.inbox: list[tuple[int, RingUpdate]] = []

    def _send(self, source: int, tokens: list[Token]) -> None:
        if tokens:
            update = wire(self.rings[source].update(tokens))
            self.inbox += [(n, update) for n in NAMES if n != source]

    @rule(peer=st.sampled_from(NAMES), to=st.sampled_from(NAMES), data=st.data())
    def donate(self, peer: int, to: int, data: st.DataObject) -> None:
        r = self.rings[peer]
        ranges = r.owned_ranges(peer)
        if peer == to or not ranges:
            return
        start, end = data.draw(st.sampled_from(ranges))
        lo = data.draw(st.integers(start, end - 1))
        hi = data.draw(st.integers(lo + 1, end))
        self._send(peer, r.donate(lo, hi, to))

    @rule(peer=st.sampled_from(NAMES), to=st.sampled_from(NAMES))
    def transfer_all(self, peer: int, to: int) -> None:
        if peer != to:
            self._send(peer, self.rings[peer].transfer_all(to))

    @rule(peer=st.sampled_from(NAMES), free=st.integers(0, 3))
    def report_free(self, peer: int, free: int) -> None:
        r = self.rings[peer]
        mine = [t for t in r.tokens if t.owner == peer]
        if mine:
            token = r.set_free(mine[0].start, min(free, mine[0].end - mine[0].start))
            if token is not None:
                self._send(peer, [token])

    @precondition(lambda self: self.inbox)
    @rule(data=st.data(), keep=st.booleans())
    def deliver(self, data: st.DataObject, keep: bool) -> None:
        i = data.draw(st.integers(0, len(self.inbox) - 1))
        target, update = self.inbox[i] if keep else self.inbox.pop(i)
        new = self.rings[target].merge(update)
        self._send(target, new)  # relay only what was new

    @precondition(lambda self: self.inbox)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        self.inbox.pop(data.draw(st.integers(0, len(self.inbox) - 1)))

    @invariant()
    def nobody_shares_an_address(self) -> None:
        seen: list[tuple[int, int]] = []
        for name, r in self.rings.items():
            seen += r.owned_ranges(name)
        seen.sort()
        for (_, end), (start, _) in itertools.pairwise(seen):
            assert end <= start, seen

    def teardown(self) -> None:
        for _ in range(2):
            for source in NAMES:
                for target in NAMES:
                    if source != target:
                        self.rings[target].merge(wire(self.rings[source].update()))
        views = [r.tokens for r in self.rings.values()]
        assert all(v == views[0] for v in views)
        total = sum(e - s for n in NAMES for s, e in self.rings[n].owned_ranges(n))
        assert total == HI - LO


RingGossip.TestCase.settings = settings(
    max_examples=400,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRingGossip = RingGossip.TestCase
