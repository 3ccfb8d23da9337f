"""The IPAM ring: which peer owns which addresses of the allocation range.

The range ``[start, end)`` is cut by tokens; a token owns ``[token.start, token.end)``. Only a
token's owner changes it, always bumping its version, and merging keeps the newest version per
token. Tokens are never deleted: an owner gives part of its range away by splitting a token
(shrinking its ``end``, which bumps its version) and handing the new token over.

Every token carries its own ``end`` as of its version, so any set of tokens describes itself: a
peer that learns "this token is now yours" learns exactly where it ends, whichever path the
gossip took and whatever was lost on the way. (A first design sent each changed token with its
successor instead; the property tests found that this is not transitive and let a recipient
overestimate its range.) In a view, a token's extent is also clipped at the next known token,
because a stale version of a token may still show its end from before a split.

What a peer believes it owns is therefore exact: its own tokens it made itself (persisted before
they are sent) or received with their ends. Two peers never both believe they own an address.

A ring carries its *seed*: the sorted peer names it was first divided among. Rings with
different seeds describe different address spaces; merging them would interleave two
divisions of the same range (weaveworks/weave #2809, #3427: duplicates, and token lists that
grew without bound). Such a merge raises ``RingMergeError`` and changes nothing, as does every
other inconsistent update (see ``Ring.merge``).
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from meshnet.errors import RemoteProtocolError
from meshnet.gossip.versions import plausible_version

MAX_PEER_NAME = (1 << 48) - 1
MAX_VERSION = (1 << 63) - 1
#: An IPv6 ring's range reaches 2**128; an IPv4 ring's stays below 2**32 (see ``Ring.v6``).
MAX_ADDRESS = 1 << 128
#: msgpack ints stop at 64 bits: larger addresses and counts (IPv6) travel as 16 big-endian
#: bytes, smaller ones as ints, so an IPv4 ring's wire form and state files are unchanged.
WIDE_BYTES = 16
#: Tokens are only ever added (a donation adds at most two); this bounds a ring on the wire.
MAX_TOKENS = 1 << 16
#: The most peers an initial division (and so a seed) may list.
MAX_SEED = 1024
#: The most departed peers a ring remembers (one per reset or rmpeer, ever).
MAX_DEPARTED = 1 << 14
MAX_PAYLOAD = 8 << 20


class RingMergeError(RemoteProtocolError):
    """A peer's ring update contradicts ours (other seed, other range, a forged or lost change).

    Nothing of the update was applied.
    """


@dataclass(frozen=True, order=True)
class Token:
    """``owner`` holds ``[start, end)``; ``free`` is what it last reported free there."""

    start: int
    end: int
    owner: int
    version: int
    free: int


@dataclass(frozen=True)
class RingUpdate:
    """A set of tokens as gossiped, with the seed and the peers known to have departed.

    ``full``: the sender's whole ring, the only kind a peer without a ring adopts.
    """

    start: int
    end: int
    seed: tuple[int, ...]
    tokens: tuple[Token, ...]
    full: bool
    departed: frozenset[int] = frozenset()


def _fmt(address: int) -> str:
    if address >= 1 << 32:
        return str(ipaddress.IPv6Address(address))
    return ".".join(str((address >> s) & 0xFF) for s in (24, 16, 8, 0))


def divide(lo: int, hi: int, n: int) -> list[int]:
    """``n + 1`` bounds cutting ``[lo, hi)`` into ``n`` near-equal pieces (some may be empty)."""
    size = hi - lo
    return [lo + i * size // n for i in range(n)] + [hi]


class Ring:
    """One peer's view of the ring; ``name`` is the local peer (the only owner it speaks for)."""

    def __init__(self, start: int, end: int, *, name: int) -> None:
        if not 0 <= start < end <= MAX_ADDRESS:
            raise ValueError(f"bad ring range [{start}, {end})")
        if not 0 <= name <= MAX_PEER_NAME:
            raise ValueError(f"bad peer name {name!r}")
        self.start = start
        self.end = end
        self.name = name
        self._seed: tuple[int, ...] = ()
        self._tokens: dict[int, Token] = {}
        self._starts: list[int] = []
        # Grow-only: peers that handed everything over (reset) or were reclaimed (rmpeer).
        # They never inherit space again.
        self._departed: set[int] = set()
        #: Tokens dropped by ``merge`` because their version jumped implausibly far.
        self.implausible = 0
        #: Tokens dropped by ``merge`` that gave us a live peer's space unasked.
        self.unasked_gifts = 0
        #: Our tokens bumped past someone else's version of them.
        self.reassertions = 0
        # Our tokens bumped past someone else's version of them, not yet gossiped.
        self._reasserted: dict[int, Token] = {}

    # --- reading

    @property
    def seed(self) -> tuple[int, ...]:
        return self._seed

    @property
    def departed(self) -> frozenset[int]:
        return frozenset(self._departed)

    @property
    def seeded(self) -> bool:
        return bool(self._seed)

    @property
    def tokens(self) -> list[Token]:
        return [self._tokens[s] for s in self._starts]

    def __len__(self) -> int:
        return len(self._starts)

    def extent(self, token: Token) -> tuple[int, int]:
        """``[start, end)`` of a token of this ring, clipped at the next token this view knows."""
        i = bisect.bisect_right(self._starts, token.start)
        following = self._starts[i] if i < len(self._starts) else self.end
        return token.start, min(token.end, following)

    def extents(self) -> list[tuple[Token, int, int]]:
        if not self._starts:
            return []
        following = [*self._starts[1:], self.end]
        return [
            (self._tokens[s], s, min(self._tokens[s].end, f))
            for s, f in zip(self._starts, following, strict=True)
        ]

    def _containing(self, address: int) -> Token | None:
        i = bisect.bisect_right(self._starts, address) - 1
        if i < 0:
            return None
        token = self._tokens[self._starts[i]]
        return token if address < self.extent(token)[1] else None

    def owner_of(self, address: int) -> int | None:
        """Who owns ``address`` in this view; None if unknown (no ring yet, or out of range)."""
        if not self.start <= address < self.end:
            return None
        token = self._containing(address)
        return None if token is None else token.owner

    def owned_ranges(self, peer: int) -> list[tuple[int, int]]:
        """``peer``'s ranges in this view, adjacent ones joined, ascending."""
        ranges: list[tuple[int, int]] = []
        for token, start, end in self.extents():
            if token.owner != peer:
                continue
            if ranges and ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], end)
            else:
                ranges.append((start, end))
        return ranges

    def owners(self) -> set[int]:
        return {t.owner for t in self._tokens.values()}

    # --- local changes (each returns the tokens it changed, to gossip)

    def _put(self, token: Token) -> None:
        if token.start not in self._tokens:
            bisect.insort(self._starts, token.start)
        self._tokens[token.start] = token

    def claim_initial(
        self, peers: Iterable[int], focus: tuple[int, int] | None = None
    ) -> list[Token]:
        """Divide the range among ``peers`` (the seed): the same answer on every peer.

        Deterministic on purpose (no clock, no randomness): every peer that agreed on the same
        peer set computes byte-identical tokens, which then merge as no-ops.

        ``focus`` (the default subnet, inside the range): that part is divided among all the
        peers too, and so is what lies before and after it, so that every seed peer owns a
        piece of the subnet it allocates from first (an IPv6 /48 divided plainly would give
        its first /64 to one peer, and every other peer would need a donation first). Every
        peer must pass the same ``focus``.
        """
        seed = tuple(sorted(set(peers)))
        if not seed or len(seed) > MAX_SEED or len(seed) > self.end - self.start:
            raise ValueError(f"cannot divide the range among {len(seed)} peers")
        if any(not 0 <= p <= MAX_PEER_NAME for p in seed):
            raise ValueError("bad peer name in seed")
        if focus is not None and not self.start <= focus[0] < focus[1] <= self.end:
            raise ValueError("the focus of a division must lie inside the range")
        if self._seed:
            if self._seed != seed:
                raise ValueError("the ring is already seeded with other peers")
            return []
        n = len(seed)
        parts = (
            [(self.start, self.end)]
            if focus is None
            else [
                (self.start, focus[0]),
                focus,
                (focus[1], self.end),
            ]
        )
        self._seed = seed
        for lo, hi in parts:
            bounds = divide(lo, hi, n)
            for i, peer in enumerate(seed):
                if bounds[i] < bounds[i + 1]:
                    size = bounds[i + 1] - bounds[i]
                    self._put(Token(bounds[i], bounds[i + 1], peer, 1, size))
        return self.tokens

    def _check_ours(self, lo: int, hi: int) -> None:
        if not self._seed:
            raise ValueError("the ring is not seeded yet")
        if not self.start <= lo < hi <= self.end:
            raise ValueError(f"range [{lo}, {hi}) is not inside the ring")
        for start, end in self.owned_ranges(self.name):
            if start <= lo and hi <= end:
                return
        raise ValueError(f"range {_fmt(lo)}-{_fmt(hi - 1)} is not ours to give")

    def _split(self, at: int, changed: set[int]) -> None:
        if at >= self.end or at in self._tokens:
            return
        container = self._containing(at)
        if container is None:
            return  # ``at`` is where our token ends (nothing known after it): no split needed
        end = self.extent(container)[1]
        # Its end moves: a new version, so that the newest version always has the true end.
        # Free counts are advisory (the allocator refreshes them): just keep them in bounds.
        free = container.free
        self._put(
            replace(
                container,
                end=at,
                version=container.version + 1,
                free=min(free, at - container.start),
            )
        )
        self._put(Token(at, end, container.owner, 1, min(free, end - at)))
        changed.update((container.start, at))

    def donate(self, lo: int, hi: int, to_peer: int) -> list[Token]:
        """Give ``[lo, hi)`` (ours, and free: the caller checks) to ``to_peer``."""
        if to_peer == self.name or not 0 <= to_peer <= MAX_PEER_NAME:
            raise ValueError(f"cannot donate to {to_peer!r}")
        self._check_ours(lo, hi)
        changed: set[int] = set()
        self._split(hi, changed)
        self._split(lo, changed)
        i = bisect.bisect_left(self._starts, lo)
        while i < len(self._starts) and self._starts[i] < hi:
            token = self._tokens[self._starts[i]]
            self._put(
                replace(
                    token, owner=to_peer, version=token.version + 1, free=token.end - token.start
                )
            )
            changed.add(token.start)
            i += 1
        return [self._tokens[s] for s in sorted(changed)]

    def transfer_all(self, to_peer: int) -> list[Token]:
        """Hand every token of ours to ``to_peer`` (``meshnet reset``)."""
        if to_peer == self.name or not 0 <= to_peer <= MAX_PEER_NAME:
            raise ValueError(f"cannot hand over to {to_peer!r}")
        changed = []
        for token in self.tokens:
            if token.owner == self.name:
                changed.append(replace(token, owner=to_peer, version=token.version + 1))
                self._put(changed[-1])
        self._departed.add(self.name)
        return changed

    @staticmethod
    def heir_of(dead: int, candidates: Iterable[int]) -> int | None:
        """The next candidate after ``dead`` by name, cyclically."""
        others = sorted(set(candidates) - {dead})
        if not others:
            return None
        i = bisect.bisect_right(others, dead)
        return others[i % len(others)]

    def reclaim(self, dead: int, by_peer: int) -> tuple[int | None, list[Token]]:
        """``rmpeer``: move every token of ``dead`` to its heir; ``(heir, tokens to gossip)``.

        The heir is ``heir_of(dead, owners)`` (or, if the dead peer owned everything, of the
        seed) — NOT ``by_peer`` — and the new version is the
        dead token's version + 1, so two peers that run this for the same dead peer (with the
        same view of it) produce identical tokens, which merge as no-ops: never two owners.
        ``by_peer`` only has to be someone else than the dead peer.
        """
        if dead == by_peer:
            raise ValueError("a peer cannot reclaim its own space")
        victims = [t for t in self.tokens if t.owner == dead]
        if not victims:
            return None, []
        # Only candidates every peer agrees on: the owners, else the seed — never ``by_peer``,
        # which two runners would pick differently — and never a peer known to be gone.
        gone = self._departed | {dead}
        heir = self.heir_of(dead, self.owners() - gone) or self.heir_of(
            dead, set(self._seed) - gone
        )
        if heir is None:
            raise ValueError(
                "no peer left to inherit the space: every owner and seed peer is gone "
                "(bring one of them back; picking ourselves could make two owners)"
            )
        changed = []
        for token in victims:
            # The dead peer's containers are gone with it: all of it is free.
            free = token.end - token.start
            changed.append(replace(token, owner=heir, version=token.version + 1, free=free))
            self._put(changed[-1])
        self._departed.add(dead)
        return heir, changed

    def set_free(self, start: int, free: int) -> Token | None:
        """Report a new free count for our token at ``start``; the new token, or None."""
        token = self._tokens[start]
        if token.owner != self.name:
            raise ValueError("not our token")
        if not 0 <= free <= token.end - token.start:
            raise ValueError(f"free count {free} out of bounds")
        if token.free == free:
            return None
        token = replace(token, version=token.version + 1, free=free)
        self._put(token)
        return token

    # --- gossip

    def update(self, tokens: Sequence[Token] | None = None) -> RingUpdate:
        """The whole ring (``tokens`` None), or some of its tokens, ready to encode."""
        departed = frozenset(self._departed)
        if tokens is None:
            return RingUpdate(self.start, self.end, self._seed, tuple(self.tokens), True, departed)
        return RingUpdate(self.start, self.end, self._seed, tuple(tokens), False, departed)

    def merge(
        self,
        update: RingUpdate,
        *,
        accept_own: bool = False,
        gifts_from: Collection[int] | None = None,
    ) -> list[Token]:
        """Apply a peer's update; return the tokens that were new to us (to relay).

        Raises RingMergeError, applying nothing, when the update

        * describes another range, or a ring seeded among other peers;
        * has a token at the same version as ours but with another end, owner or free count;
        * changes a token we own while saying that we departed (an ``rmpeer`` of us while we
          were alive). Without that, a higher version of a token we own is a forgery (or a
          previous incarnation's): we bump past it and re-assert ours (``take_reassertions``),
          so that no peer can take our range by gossip;
        * would make us adopt, without any state of our own, a ring that says we changed our
          own tokens (we lost our state: using that space could duplicate addresses) — unless
          ``accept_own`` (a hand-over or donation we are expecting).

        A peer without a ring adopts only a full ring; deltas wait for the full state.

        A new token inside a range we own is a forgery (only we split our ranges), but the
        neighbour that relays it may be honest: we split there ourselves, both pieces ours, the
        new one above the forgery's version, and re-assert them (``take_reassertions``). A
        token's ``end`` may overlap ours legitimately: an old version from before a split.

        A token whose version jumps implausibly far above the one we hold (``plausible_version``)
        is dropped and counted in ``implausible``: so no forged token gets where its owner could
        not bump past it. The rest of the update applies (tokens describe themselves).

        With ``gifts_from`` (None: any gift is taken), a token that makes us the owner of space a
        live peer owns (a gift) is taken only from a peer we asked (``gifts_from``: our open
        donation requests; or ``accept_own``, the donor's or leaver's own message), or when its
        owner departed (``reset``, ``rmpeer``).
        Otherwise it is dropped and counted in ``unasked_gifts``: a forger could else make two
        live peers each believe a range is theirs, and both would re-assert it forever.
        """
        if (update.start, update.end) != (self.start, self.end):
            raise RingMergeError(
                f"ring range mismatch: ours is {_fmt(self.start)}-{_fmt(self.end - 1)}, "
                f"the peer's is {_fmt(update.start)}-{_fmt(update.end - 1)}"
            )
        if not update.seed:
            if update.tokens or update.departed:
                raise RingMergeError("ring update with tokens but no seed")
            return []
        if self._seed and update.seed != self._seed:
            raise RingMergeError(
                f"ring seeded among {len(update.seed)} other peers ({_seed_text(update.seed)}) "
                f"cannot merge with ours ({_seed_text(self._seed)}): two meshes were seeded "
                "separately; reset the peers of one of them"
            )
        adopting = not self._seed
        if adopting:
            if not update.full:
                return []
            for token in update.tokens:
                if token.owner == self.name and token.version > 1 and not accept_own:
                    raise RingMergeError(
                        f"the mesh says we changed our token at {_fmt(token.start)}, but we hold "
                        "no ring: our IPAM state was lost; restore it, or rmpeer this peer first"
                    )
        new: list[Token] = []
        # Ours bumped in this update, by start: a later token may bump the same one again.
        reasserted: dict[int, Token] = {}

        def reassert(token: Token) -> None:
            held = reasserted.get(token.start)
            if held is None or token.version > held.version:
                reasserted[token.start] = token

        for token in update.tokens:
            ours = self._tokens.get(token.start)
            if not plausible_version(token.version, None if ours is None else ours.version):
                self.implausible += 1
                continue
            if ours is not None and token.version < ours.version:
                continue
            giver = ours if ours is not None else self._containing(token.start)
            if (
                gifts_from is not None
                and token.owner == self.name
                and giver is not None
                and giver.owner != self.name
                and not accept_own
                and giver.owner not in gifts_from
                and giver.owner not in self._departed
                and giver.owner not in update.departed
            ):
                self.unasked_gifts += 1
                continue
            if ours is not None and token.version == ours.version:
                if token != ours:
                    raise RingMergeError(
                        f"token {_fmt(token.start)} version {token.version} differs: owner "
                        f"{token.owner:012x} vs {ours.owner:012x} (two owners at one version)"
                    )
                continue
            if ours is not None and ours.owner == self.name and self.name not in update.departed:
                if token.version < MAX_VERSION:  # unreachable through plausible jumps
                    reassert(replace(ours, version=token.version + 1))
                continue
            if ours is not None and ours.owner == self.name:
                raise RingMergeError(
                    f"a peer changed our token at {_fmt(token.start)} (version "
                    f"{ours.version} -> {token.version}, owner {token.owner:012x}): "
                    "were we removed with rmpeer while alive, or restarted without state?"
                )
            if ours is None:
                container = self._containing(token.start)
                if container is not None and container.owner == self.name:
                    # Only we split our ranges: a forgery, relayed in good faith. Split there
                    # ourselves, above its version, so every view ends up with the space ours.
                    if token.version < MAX_VERSION:  # unreachable through plausible jumps
                        base = reasserted.get(container.start, container)
                        for piece in self._reclaim_split(base, token):
                            reassert(piece)
                    continue
            new.append(token)
        added = {t.start for t in (*new, *reasserted.values()) if t.start not in self._tokens}
        if len(self._starts) + len(added) > MAX_TOKENS:
            raise RingMergeError("ring update would exceed the token limit")
        if len(self._departed | update.departed) > MAX_DEPARTED:
            raise RingMergeError("ring update would exceed the departed-peer limit")
        self._seed = update.seed
        self._departed |= update.departed
        for token in new:
            self._put(token)
        for token in reasserted.values():
            self._put(token)
            self._reasserted[token.start] = token
            self.reassertions += 1
        return new

    def _reclaim_split(self, container: Token, forged: Token) -> list[Token]:
        """Our token ``container`` cut at ``forged.start`` (a split we did not make): both
        pieces ours, the new one at a version above the forgery's."""
        at, end = forged.start, self.extent(container)[1]
        free = container.free
        return [
            replace(
                container,
                end=at,
                version=container.version + 1,
                free=min(free, at - container.start),
            ),
            Token(at, end, self.name, forged.version + 1, min(free, end - at)),
        ]

    def take_reassertions(self) -> list[Token]:
        """Our tokens bumped past others' versions since the last call: gossip them to all."""
        tokens = [self._reasserted[s] for s in sorted(self._reasserted)]
        self._reasserted.clear()
        return tokens


def _seed_text(seed: tuple[int, ...]) -> str:
    shown = ", ".join(f"{p:012x}" for p in seed[:3])
    return shown + (", ..." if len(seed) > 3 else "")


def merge_updates(a: RingUpdate, b: RingUpdate) -> RingUpdate:
    """The union of two updates WE produced (newest per token): coalesces pending sends.

    Tokens describe themselves, so any union of them is a valid update.
    """
    best: dict[int, Token] = {t.start: t for t in a.tokens}
    for token in b.tokens:
        current = best.get(token.start)
        if current is None or token.version > current.version:
            best[token.start] = token
    seed = b.seed or a.seed
    tokens = tuple(best[s] for s in sorted(best))
    return RingUpdate(b.start, b.end, seed, tokens, a.full or b.full, a.departed | b.departed)


# --- wire form: [start, end, [seed...], full, [[start, end, owner, version, free]...],
#                [departed...]]


def wide(value: int) -> int | bytes:
    """An address or count for msgpack: an int below 2**64, else 16 big-endian bytes."""
    return value if value < 1 << 64 else value.to_bytes(WIDE_BYTES, "big")


def update_obj(update: RingUpdate) -> list[Any]:
    tokens = [[wide(t.start), wide(t.end), t.owner, t.version, wide(t.free)] for t in update.tokens]
    departed = sorted(update.departed)
    return [wide(update.start), wide(update.end), list(update.seed), update.full, tokens, departed]


def _fail(what: str, value: Any) -> RingMergeError:
    return RingMergeError(f"bad ring {what}: {value!r:.80}")


def _int(value: Any, low: int, high: int, what: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _fail(what, value)
    return value


def wide_int(value: Any, low: int, high: int, what: str) -> int:
    """``wide``'s inverse, bounds checked; 16 bytes only for values of 2**64 and more."""
    if type(value) is bytes and len(value) == WIDE_BYTES:
        number = int.from_bytes(value, "big")
        if number < 1 << 64:
            raise _fail(what, value)  # one encoding per value: equal tokens compare equal
        value = number
    return _int(value, low, high, what)


def update_from_obj(obj: Any) -> RingUpdate:
    """Validate a decoded ring update; RingMergeError (a RemoteProtocolError) if anything is off."""
    if type(obj) is not list or len(obj) != 6:
        raise _fail("update", obj)
    start = wide_int(obj[0], 0, MAX_ADDRESS - 1, "range start")
    end = wide_int(obj[1], start + 1, MAX_ADDRESS, "range end")
    seed_, full, tokens_ = obj[2], obj[3], obj[4]
    if type(seed_) is not list or len(seed_) > MAX_SEED or type(full) is not bool:
        raise _fail("seed", seed_)
    seed = tuple(_int(p, 0, MAX_PEER_NAME, "seed peer") for p in seed_)
    if list(seed) != sorted(set(seed)):
        raise _fail("seed order", seed_)
    if type(tokens_) is not list or len(tokens_) > MAX_TOKENS:
        raise _fail("token list", type(tokens_))
    if tokens_ and not seed:
        raise _fail("tokens without a seed", len(tokens_))
    tokens = []
    previous = -1
    for t in tokens_:
        if type(t) is not list or len(t) != 5:
            raise _fail("token", t)
        token_start = wide_int(t[0], start, end - 1, "token start")
        if token_start <= previous:
            raise _fail("token order", token_start)
        previous = token_start
        token_end = wide_int(t[1], token_start + 1, end, "token end")
        tokens.append(
            Token(
                token_start,
                token_end,
                _int(t[2], 0, MAX_PEER_NAME, "token owner"),
                _int(t[3], 1, MAX_VERSION, "token version"),
                wide_int(t[4], 0, token_end - token_start, "free count"),
            )
        )
    if full and seed and (not tokens or tokens[0].start != start):
        raise _fail("full ring without a first token", len(tokens))
    departed_ = obj[5]
    if type(departed_) is not list or len(departed_) > MAX_DEPARTED:
        raise _fail("departed list", type(departed_))
    departed = [_int(p, 0, MAX_PEER_NAME, "departed peer") for p in departed_]
    if departed != sorted(set(departed)):
        raise _fail("departed order", departed_)
    return RingUpdate(start, end, seed, tuple(tokens), full, frozenset(departed))


LIMITS: dict[str, int] = {
    "max_array_len": MAX_TOKENS,
    "max_map_len": 0,
    "max_str_len": 0,
    "max_bin_len": WIDE_BYTES,
    "max_ext_len": 0,
}


def encode_update(update: RingUpdate) -> bytes:
    return msgpack.packb(update_obj(update), use_bin_type=True)  # type: ignore[no-any-return]


def decode_update(data: bytes) -> RingUpdate:
    """Bytes from a peer to a validated update; RingMergeError if malformed or oversized."""
    if type(data) is not bytes or len(data) > MAX_PAYLOAD:
        raise RingMergeError("ring payload is not bytes or is too large")
    try:
        obj = msgpack.unpackb(data, raw=False, **LIMITS)
    except Exception as exc:  # msgpack raises many types
        raise RingMergeError(f"undecodable ring payload: {exc!r:.80}") from None
    return update_from_obj(obj)
