"""Who may hold a handshake slot: the budget of inbound connections not yet authenticated.

Anyone who can reach TCP 6783 can open connections and say nothing. Counting those against
``--conn-limit`` let eight idle sockets keep every legitimate peer out, and made our own dials
wait for strangers. So connections still in the handshake get their own small budget with a cap
per source address, and ``--conn-limit`` counts only connections that authenticated.

When a source, or the whole budget, is full, the newcomer takes the place of the oldest
connection that has not even sent its Hello yet: a real peer sends its Hello at once (one round
trip), so the connection that has waited longest is the likeliest junk. Connections past their
Hello are never evicted (a password holder's handshake in progress stays safe); if every slot
is past its Hello, the newcomer is refused.

Pure: the shell passes ``now`` and closes what the decisions name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

MAX_PENDING = 32
"""Inbound connections in the handshake at once. A peer needs one slot for a round trip or two;
32 is room for a whole mesh restarting at once while bounding what strangers can hold."""

MAX_PENDING_PER_SOURCE = 4
"""Of those, from one source address: a peer re-dialling, or a few peers behind one NAT, fit;
one address cannot take the whole budget."""

HELLO_TIMEOUT = 2.0
"""Seconds from accept until the peer's whole Hello has arrived. A peer sends it at once, so
this only has to cover a round trip and a busy moment; an idle or one-byte-a-second client is
cut here instead of at the (longer) handshake deadline."""


class Refusal(enum.Enum):
    """Why a pending connection was refused or evicted; the value names its counter."""

    SOURCE_FULL = "preauth_source_full"
    BUDGET_FULL = "preauth_budget_full"


@dataclass(frozen=True)
class Admit:
    """Take the connection as pending ``ticket``; first close ``evict``, if any, to make room."""

    ticket: int
    evict: int | None = None
    why: Refusal | None = None  # why ``evict`` lost its place


@dataclass(frozen=True)
class Refuse:
    """Close the connection at once."""

    reason: Refusal


@dataclass
class _Pending:
    source: str
    since: float
    hello: bool = False  # its Hello has fully arrived


@dataclass(frozen=True)
class PendingStatistics:
    pending: int
    sources: int
    awaiting_hello: int


class PendingBudget:
    """The pending inbound connections, keyed by ticket; at most ``max_pending`` of them and
    at most ``max_per_source`` per source address, so its size is bounded whatever others do."""

    def __init__(
        self, max_pending: int = MAX_PENDING, max_per_source: int = MAX_PENDING_PER_SOURCE
    ) -> None:
        if not 1 <= max_per_source <= max_pending:
            raise ValueError("need 1 <= max_per_source <= max_pending")
        self.max_pending = max_pending
        self.max_per_source = max_per_source
        self._pending: dict[int, _Pending] = {}  # in order of arrival (dicts keep it)
        self._per_source: dict[str, int] = {}
        self._next_ticket = 0

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, ticket: object) -> bool:
        return ticket in self._pending

    def offer(self, source: str, now: float) -> Admit | Refuse:
        """A connection from ``source`` was accepted: may it start the handshake?"""
        evict: int | None = None
        why: Refusal | None = None
        if self._per_source.get(source, 0) >= self.max_per_source:
            evict, why = self._oldest_without_hello(source), Refusal.SOURCE_FULL
            if evict is None:
                return Refuse(Refusal.SOURCE_FULL)
        elif len(self._pending) >= self.max_pending:
            evict, why = self._oldest_without_hello(None), Refusal.BUDGET_FULL
            if evict is None:
                return Refuse(Refusal.BUDGET_FULL)
        if evict is not None:
            self.release(evict)
        ticket = self._next_ticket
        self._next_ticket += 1
        self._pending[ticket] = _Pending(source, now)
        self._per_source[source] = self._per_source.get(source, 0) + 1
        return Admit(ticket, evict, why)

    def hello_received(self, ticket: int) -> None:
        """The peer's Hello has arrived: from now on only the handshake deadline applies, and
        the connection is no longer the first to give way."""
        pending = self._pending.get(ticket)
        if pending is not None:
            pending.hello = True

    def release(self, ticket: int) -> None:
        """The connection authenticated, failed or was closed; unknown tickets are ignored (an
        evicted connection releases its ticket again when its task ends)."""
        pending = self._pending.pop(ticket, None)
        if pending is None:
            return
        left = self._per_source[pending.source] - 1
        if left:
            self._per_source[pending.source] = left
        else:
            del self._per_source[pending.source]

    def _oldest_without_hello(self, source: str | None) -> int | None:
        for ticket, pending in self._pending.items():
            if not pending.hello and (source is None or pending.source == source):
                return ticket
        return None

    def statistics(self) -> PendingStatistics:
        return PendingStatistics(
            pending=len(self._pending),
            sources=len(self._per_source),
            awaiting_hello=sum(not p.hello for p in self._pending.values()),
        )


def admit_authenticated(
    *, outbound: bool, live: int, conn_limit: int, replaces: bool, configured: bool
) -> bool:
    """Whether a connection that just authenticated may join the ``live`` ones.

    ``--conn-limit`` bounds authenticated connections. Our own dials were planned within it, so
    they always fit; an inbound one fits below the limit, or when it replaces a connection with
    the same peer (the count does not grow), or when the peer is one we were told to connect to
    (``configured``: refusing it would only make us dial it ourselves).
    """
    return outbound or replaces or configured or live < conn_limit
