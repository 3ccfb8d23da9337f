"""What the router tells its subsystems, and what the data plane tells it back: immutable values.

The router publishes two values, each through a `Watch`: the `MeshView` (routes and which peers
are known) whenever a recalculation changed it, and `LiveLinks` (each neighbour's UDP endpoint
and sleeve keys) whenever a link comes, goes or is replaced. Heartbeats and gossip that changes
nothing publish nothing, so an idle mesh wakes nobody (weaveworks/mesh's ``routes.go`` likewise
calls ``OnChange`` only after a real change).

A `Watch` holds only the newest value: a subscriber that was busy gets the latest one and skips
what it missed, never a backlog — bounded by design, like mesh's merged gossip senders or tokio's
``watch`` channel. The data plane's answer, a `PathVerdict`, goes to one typed entry point on the
router (`Router.report_path`), which never calls back: the only way back is a newer value.
"""

from __future__ import annotations

import types
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import trio

from meshnet.gossip.routes import Routes

T = TypeVar("T")


@dataclass(frozen=True)
class WatchStatistics:
    version: int
    """How many values were published after the first (0: still the initial one)."""
    waiting: int
    """Subscribers waiting for a newer value right now."""


class Watch(Generic[T]):
    """The latest value with a version; subscribers wait for a newer version than theirs."""

    def __init__(self, initial: T) -> None:
        self._value = initial
        self._version = 0
        self._newer = trio.Event()
        self._waiting = 0

    @property
    def current(self) -> T:
        return self._value

    @property
    def version(self) -> int:
        return self._version

    def publish(self, value: T) -> None:
        """Replace the value and wake every waiting subscriber (synchronous, never blocks)."""
        self._value = value
        self._version += 1
        self._newer.set()
        self._newer = trio.Event()

    async def wait_newer(self, version: int) -> tuple[int, T]:
        """The newest (version, value) once the version is above ``version``."""
        while self._version <= version:
            self._waiting += 1
            try:
                await self._newer.wait()
            finally:
                self._waiting -= 1
        return self._version, self._value

    async def subscribe(self) -> AsyncIterator[T]:
        """The current value at once, then each newer one (intermediate ones may be skipped)."""
        version = self._version
        yield self._value
        while True:
            version, value = await self.wait_newer(version)
            yield value

    def statistics(self) -> WatchStatistics:
        return WatchStatistics(version=self._version, waiting=self._waiting)


@dataclass(frozen=True)
class PeerLink:
    """What the data plane needs to reach a neighbour: its UDP endpoint and the pair's keys."""

    name: int
    nickname: str
    ip: str
    port: int
    send_key: bytes | None  # sleeve keys, derived from (never equal to) the control keys
    receive_key: bytes | None


@dataclass(frozen=True)
class LiveLinks:
    """Every neighbour with an established control connection. A replaced connection is a new
    `PeerLink` (new keys, maybe a new endpoint), so ``is`` tells a subscriber what changed."""

    links: Mapping[int, PeerLink]

    @staticmethod
    def of(links: Mapping[int, PeerLink]) -> LiveLinks:
        return LiveLinks(types.MappingProxyType(dict(links)))


NO_LINKS = LiveLinks.of({})


@dataclass(frozen=True)
class MeshView:
    """The routes, the peers the topology knows (ourselves included) and our neighbours (a
    control connection is up, its data path maybe not yet proven), after a recalculation that
    changed any of them."""

    routes: Routes
    peers: frozenset[int]
    neighbours: frozenset[int]
    data_routes: Routes  # over punched paths too: what the sleeve forwards by

    @property
    def reachable(self) -> Mapping[int, int]:
        """Reachable peer → hops."""
        return self.routes.distance


@dataclass(frozen=True)
class PathVerdict:
    """The data plane's verdict on a neighbour's UDP path: whether it is proven both ways, and
    what status should show about it (state, PMTU, RTT, fastdp)."""

    peer: int
    established: bool
    info: Mapping[str, Any]
