"""Gossip channels: how a subsystem (IPAM, DNS, ...) plugs its mergeable state into the mesh.

A subsystem implements ``Gossiper``; the mesh moves its payloads. What is waiting to go to a
neighbour lives in a ``GossipOutbox``: per neighbour and channel at most ONE pending gossip
payload, into which later deltas are merged (weaveworks/mesh ``gossipSender``) — so a slow link
holds one merged state and never a growing backlog.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from meshnet.gossip.messages import Broadcast, Gossip, Message, Unicast


class Gossiper(Protocol):
    """A subsystem's replicated state, as seen by the mesh. Payloads are opaque bytes here."""

    def full_state(self) -> bytes | None:
        """Everything we know, for a new neighbour and anti-entropy; None if nothing yet."""
        ...

    def on_gossip(self, payload: bytes) -> bytes | None:
        """Merge a neighbour's payload; return only what was new to us (to relay), else None.

        Raises RemoteProtocolError on a malformed payload.
        """
        ...

    def merge_payloads(self, a: bytes, b: bytes) -> bytes:
        """One payload equivalent to applying ``a`` then ``b``, to coalesce pending sends.

        Only ever called with payloads this peer produced itself (its deltas and full states).
        """
        ...

    def on_broadcast(self, source: int, payload: bytes) -> None:
        """A payload ``source`` sent to every peer."""
        ...

    def on_unicast(self, source: int, payload: bytes) -> None:
        """A payload ``source`` sent to us alone."""
        ...


class UnicastChannel:
    """A ``Gossiper`` for a subsystem that only ever sends unicasts (per-peer messages, no
    replicated state): the methods it never needs. It implements ``on_unicast`` and
    ``on_broadcast`` (a broadcast on such a channel is a peer's mistake: count it)."""

    def full_state(self) -> bytes | None:
        return None

    def on_gossip(self, payload: bytes) -> bytes | None:
        return None

    def merge_payloads(self, a: bytes, b: bytes) -> bytes:
        return b


class Watched:
    """A ``Gossiper`` that calls ``taken()`` after each payload it takes from the mesh, so that a
    subsystem's housekeeping waits for news instead of polling for it."""

    def __init__(self, inner: Gossiper, taken: Callable[[], None]) -> None:
        self._inner = inner
        self._taken = taken

    def full_state(self) -> bytes | None:
        return self._inner.full_state()

    def on_gossip(self, payload: bytes) -> bytes | None:
        try:
            return self._inner.on_gossip(payload)
        finally:
            self._taken()

    def merge_payloads(self, a: bytes, b: bytes) -> bytes:
        return self._inner.merge_payloads(a, b)

    def on_broadcast(self, source: int, payload: bytes) -> None:
        try:
            self._inner.on_broadcast(source, payload)
        finally:
            self._taken()

    def on_unicast(self, source: int, payload: bytes) -> None:
        try:
            self._inner.on_unicast(source, payload)
        finally:
            self._taken()


@dataclass(frozen=True)
class Send:
    """An action: hand ``message`` to the connection to neighbour ``peer``."""

    peer: int
    message: Message


@dataclass
class _Pending:
    gossip: dict[str, bytes] = field(default_factory=dict)
    others: list[Broadcast | Unicast] = field(default_factory=list)


class GossipOutbox:
    """What waits to be written to each neighbour, with gossip merged per channel.

    Broadcasts and unicasts cannot be merged, so they queue, bounded: beyond ``max_queued`` per
    neighbour they are dropped and counted (their senders' protocols cope with loss).
    """

    def __init__(
        self, merge: Callable[[str, bytes, bytes], bytes], *, max_queued: int = 1024
    ) -> None:
        self._merge = merge
        self._max_queued = max_queued
        self._pending: dict[int, _Pending] = {}
        self.dropped = 0
        self.merged = 0

    def put(self, send: Send) -> None:
        pending = self._pending.setdefault(send.peer, _Pending())
        message = send.message
        if isinstance(message, Gossip):
            previous = pending.gossip.get(message.channel)
            if previous is None:
                pending.gossip[message.channel] = message.payload
            else:
                pending.gossip[message.channel] = self._merge(
                    message.channel, previous, message.payload
                )
                self.merged += 1
        elif isinstance(message, Broadcast | Unicast):
            if len(pending.others) >= self._max_queued:
                self.dropped += 1
            else:
                pending.others.append(message)
        # Heartbeats are the connection's own business: nothing to hold back.

    def put_all(self, sends: Iterable[Send]) -> set[int]:
        """Enqueue; return the neighbours that now have something waiting."""
        peers = set()
        for send in sends:
            self.put(send)
            peers.add(send.peer)
        return peers

    def has_pending(self, peer: int) -> bool:
        return peer in self._pending

    def take(self, peer: int) -> list[Message]:
        """Everything waiting for ``peer``, gossip first; leaves nothing behind."""
        pending = self._pending.pop(peer, None)
        if pending is None:
            return []
        taken: list[Message] = [Gossip(ch, payload) for ch, payload in pending.gossip.items()]
        taken.extend(pending.others)
        return taken

    def discard(self, peer: int) -> None:
        """The connection went away: what waited for it is moot (the next one gets full state)."""
        self._pending.pop(peer, None)
