"""Agreeing, once, on which peers divide the range: single-decree Paxos carried by gossip.

Like weave's ``ipam/paxos``, every node's Paxos state is one entry that only that node changes
(``promise`` and ``accepted`` only grow), and gossip merges entries by keeping each node's
greatest. Messages of textbook Paxos become facts in that shared state:

* a proposer raises its own ``promise`` to a fresh ballot (prepare);
* an acceptor that sees a higher ballot anywhere promises it (raises its own ``promise``);
* a proposer that sees a quorum of entries promising its ballot picks the value of the highest
  ballot any of them accepted — or, if none did, the sorted names of every participant it knows —
  and accepts it itself (accept);
* an acceptor that sees a value accepted at exactly its promised ballot accepts it too;
* a value accepted by a quorum at one ballot is chosen; every peer sees that in the state.

Safety is Paxos's: a quorum is ``consensus_size // 2 + 1`` and two quorums intersect as long as
no more than ``consensus_size`` peers take part (``--ipalloc-init consensus=N`` must count them
all). No clock or randomness inside except what the caller passes in for retries.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from meshnet.errors import RemoteProtocolError
from meshnet.ipam.ring import MAX_PEER_NAME, MAX_SEED, MAX_VERSION

#: Seconds before a proposer that got no decision tries again (times 1..2, at random), counted
#: from the latest news of the consensus (``Paxos.postpone``).
RETRY_INTERVAL = 5.0


@dataclass(frozen=True, order=True)
class Ballot:
    round: int
    proposer: int


NO_BALLOT = Ballot(0, 0)


@dataclass(frozen=True)
class PaxosEntry:
    """A node's Paxos state; ``value`` is what it accepted at ``accepted`` (empty if nothing)."""

    node: int
    promise: Ballot
    accepted: Ballot
    value: tuple[int, ...]

    @property
    def key(self) -> tuple[Ballot, Ballot]:
        return self.promise, self.accepted


class Paxos:
    """One node's view of the consensus; ``participant`` False for observers (never vote)."""

    def __init__(self, name: int, quorum: int, *, participant: bool) -> None:
        if quorum < 1:
            raise ValueError("quorum must be at least 1")
        self.name = name
        self.quorum = quorum
        self.participant = participant
        self._entries: dict[int, PaxosEntry] = {}
        self._ballot: Ballot | None = None
        self._retry_at: float | None = None

    @property
    def entries(self) -> Mapping[int, PaxosEntry]:
        return self._entries

    @property
    def started(self) -> bool:
        return bool(self._entries)

    @property
    def retry_at(self) -> float | None:
        return self._retry_at

    def propose(self, now: float, rng: random.Random) -> PaxosEntry | None:
        """Start (or restart) a round with a ballot above any seen; our new entry, or None."""
        if not self.participant or self.decision() is not None:
            return None
        top = max(
            (max(e.promise.round, e.accepted.round) for e in self._entries.values()), default=0
        )
        if top >= MAX_VERSION:
            return None
        self._ballot = Ballot(top + 1, self.name)
        self._retry_at = now + RETRY_INTERVAL * (1 + rng.random())
        mine = self._entries.get(self.name, PaxosEntry(self.name, NO_BALLOT, NO_BALLOT, ()))
        self._entries[self.name] = replace(mine, promise=self._ballot)
        self.step()
        return self._entries[self.name]

    def postpone(self, now: float, rng: random.Random) -> None:
        """Others' entries moved: a round is under way, so our retry waits for it to go quiet.

        Without this, every proposer retried on its own clock: with 100 proposers a higher
        ballot came every ~75 ms on average, sooner than one round crosses a sparse mesh of
        busy routers, and no round ever finished (a 100-router lab never agreed). Entries only
        grow, so a round without new proposals goes quiet, and then someone retries.
        """
        if self._retry_at is not None:
            self._retry_at = max(self._retry_at, now + RETRY_INTERVAL * (1 + rng.random()))

    def due(self, now: float) -> bool:
        return self._retry_at is not None and now >= self._retry_at and self.decision() is None

    def check(self, entries: Iterable[PaxosEntry]) -> None:
        """Raise RemoteProtocolError if merging ``entries`` would be inconsistent; change nothing.

        Two states of one node with the same ballots but different values, or two different
        values accepted at the same ballot, cannot come from honest nodes.
        """
        accepted: dict[Ballot, tuple[int, ...]] = {
            e.accepted: e.value for e in self._entries.values() if e.accepted != NO_BALLOT
        }
        for entry in entries:
            ours = self._entries.get(entry.node)
            if ours is not None and ours.key == entry.key and ours.value != entry.value:
                raise RemoteProtocolError(f"paxos entry of {entry.node:012x} conflicts with ours")
            if entry.accepted != NO_BALLOT:
                value = accepted.setdefault(entry.accepted, entry.value)
                if value != entry.value:
                    raise RemoteProtocolError("two values accepted at one paxos ballot")

    def merge(self, entries: Iterable[PaxosEntry]) -> list[PaxosEntry]:
        """Keep each node's greatest entry; return those that were new (call ``check`` first)."""
        new = []
        for entry in entries:
            ours = self._entries.get(entry.node)
            if ours is None or entry.key > ours.key:
                self._entries[entry.node] = entry
                new.append(entry)
        return new

    def step(self) -> PaxosEntry | None:
        """Act on what we know, as acceptor and proposer; our entry if it changed."""
        if not self.participant or not self._entries:
            return None
        mine = self._entries.get(self.name, PaxosEntry(self.name, NO_BALLOT, NO_BALLOT, ()))
        new = mine
        top = max(e.promise for e in self._entries.values())
        if top > new.promise:
            new = replace(new, promise=top)
        if new.promise != NO_BALLOT and new.accepted != new.promise:
            for entry in self._entries.values():
                if entry.accepted == new.promise:
                    new = replace(new, accepted=entry.accepted, value=entry.value)
                    break
        ballot = self._ballot
        if ballot is not None and new.promise == ballot and new.accepted != ballot:
            others = [e for n, e in self._entries.items() if n != self.name]
            promised = [e for e in (*others, new) if e.promise == ballot]
            if len(promised) >= self.quorum:
                best = max(promised, key=lambda e: e.accepted)
                if best.accepted != NO_BALLOT:
                    value = best.value
                else:
                    value = tuple(sorted({*self._entries, self.name}))[:MAX_SEED]
                new = replace(new, accepted=ballot, value=value)
        if new == mine and self.name in self._entries:
            return None
        self._entries[self.name] = new
        return new

    def decision(self) -> tuple[int, ...] | None:
        """The chosen peer set, once a quorum accepted one value at one ballot.

        Only participants judge that: an observer's quorum setting means nothing (with its
        default it would take one acceptor's value for a decision — the state-machine test
        found exactly that). Observers wait for the ring itself.
        """
        if not self.participant:
            return None
        counts = Counter(e.accepted for e in self._entries.values() if e.accepted != NO_BALLOT)
        for ballot, count in counts.items():
            if count >= self.quorum:
                return next(e.value for e in self._entries.values() if e.accepted == ballot)
        return None

    def clear(self) -> None:
        """The ring exists: the consensus is over."""
        self._entries.clear()
        self._ballot = None
        self._retry_at = None


# --- wire form: [[node, promise round, promise proposer, accepted round, accepted proposer,
#                  [value...]]...]


def entries_obj(entries: Iterable[PaxosEntry]) -> list[Any]:
    return [
        [
            e.node,
            e.promise.round,
            e.promise.proposer,
            e.accepted.round,
            e.accepted.proposer,
            list(e.value),
        ]
        for e in sorted(entries, key=lambda e: e.node)
    ]


def _fail(what: str, value: Any) -> RemoteProtocolError:
    return RemoteProtocolError(f"bad paxos {what}: {value!r:.80}")


def _int(value: Any, low: int, high: int, what: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _fail(what, value)
    return value


def _ballot(round_: Any, proposer: Any) -> Ballot:
    ballot = Ballot(
        _int(round_, 0, MAX_VERSION, "ballot round"),
        _int(proposer, 0, MAX_PEER_NAME, "ballot proposer"),
    )
    if ballot.round == 0 and ballot != NO_BALLOT:
        raise _fail("ballot", ballot)
    return ballot


def entries_from_obj(obj: Any, max_entries: int = MAX_SEED) -> list[PaxosEntry]:
    """Validate decoded entries; RemoteProtocolError if anything is off."""
    if type(obj) is not list or len(obj) > max_entries:
        raise _fail("entry list", type(obj))
    entries = []
    for row in obj:
        if type(row) is not list or len(row) != 6:
            raise _fail("entry", row)
        node = _int(row[0], 0, MAX_PEER_NAME, "node")
        promise, accepted = _ballot(row[1], row[2]), _ballot(row[3], row[4])
        value_ = row[5]
        if type(value_) is not list or len(value_) > MAX_SEED:
            raise _fail("value", value_)
        value = tuple(_int(p, 0, MAX_PEER_NAME, "value peer") for p in value_)
        if list(value) != sorted(set(value)) or accepted > promise:
            raise _fail("entry", row)
        if (accepted == NO_BALLOT) != (not value):
            raise _fail("accepted value", row)
        entries.append(PaxosEntry(node, promise, accepted, value))
    if len({e.node for e in entries}) != len(entries):
        raise RemoteProtocolError("paxos payload lists a node twice")
    return entries
