"""Routes: a cache derived from the topology, never gossiped.

Only connections that both ends list as established count (a half-open or one-sided connection
must not attract traffic). Punched UDP paths (no control connection) count only for the data
plane's routes (``punched=True``): gossip cannot travel them. Every BFS walks neighbours in
sorted order, so every peer that holds the same topology computes the same trees: hop-by-hop
unicast then never loops (each hop is one step closer), and each broadcast tree delivers to every
reachable peer exactly once.
"""

from __future__ import annotations

import types
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from meshnet.gossip.topology import PeerEntry

Graph = Mapping[int, tuple[int, ...]]


def symmetric_graph(
    entries: Mapping[int, PeerEntry], *, punched: bool = False
) -> dict[int, tuple[int, ...]]:
    """Adjacency (sorted) over connections both ends list as established (and, with
    ``punched``, punched paths both ends list)."""
    listed = {
        name: {c.peer for c in e.connections if c.established and (punched or not c.punched)}
        for name, e in entries.items()
    }
    empty: set[int] = set()
    return {
        name: tuple(sorted(p for p in peers if name in listed.get(p, empty)))
        for name, peers in listed.items()
    }


def _listed(entry: PeerEntry, punched: bool) -> set[int]:
    return {c.peer for c in entry.connections if c.established and (punched or not c.punched)}


def update_graph(
    graph: Graph,
    entries: Mapping[int, PeerEntry],
    changed: Iterable[int],
    *,
    punched: bool = False,
) -> dict[int, tuple[int, ...]]:
    """``symmetric_graph(entries)``, given ``graph`` (that of the entries before) and the names
    whose entries changed since (added, replaced or removed).

    One O(N) dictionary copy (``graph`` may be shared with readers, so it is not touched) plus
    O(degree) per changed entry, instead of rebuilding every peer's row: at 10,000 peers that
    is most of a route recomputation. Only the rows of changed peers and of the peers they list
    (before or now) can differ.
    """
    rows = dict(graph)
    touched: set[int] = set()
    for name in changed:
        touched.add(name)
        touched.update(graph.get(name, ()))
        entry = entries.get(name)
        if entry is not None:
            touched.update(c.peer for c in entry.connections)
    listed: dict[int, set[int]] = {}  # each peer's listed set, built once (dense meshes)

    def listed_by(name: int) -> set[int]:
        found = listed.get(name)
        if found is None:
            entry = entries.get(name)
            found = listed[name] = set() if entry is None else _listed(entry, punched)
        return found

    for name in touched:
        if name not in entries:
            rows.pop(name, None)
            continue
        rows[name] = tuple(sorted(p for p in listed_by(name) if name in listed_by(p)))
    return rows


def _bfs(graph: Graph, source: int, stop_after: int | None = None) -> dict[int, int]:
    """Parent of each reached peer (the source is its own parent), in deterministic BFS order.

    With ``stop_after``, stops once that peer has been expanded: by then the parents of all of
    its neighbours are final, which is all a broadcast next-hop lookup needs.
    """
    parent = {source: source}
    queue = deque([source])
    while queue:
        node = queue.popleft()
        for nbr in graph.get(node, ()):
            if nbr not in parent:
                parent[nbr] = node
                queue.append(nbr)
        if node == stop_after:
            break
    return parent


class BroadcastTrees(Mapping[int, tuple[int, ...]]):
    """source → our children in that source's BFS tree, computed on first use and cached.

    All sources at once would cost O(N·E) per topology change; most peers never broadcast.
    The cache only ever gains values that are a function of the frozen graph, so the mapping is
    immutable in meaning and safe to share with reader threads.
    """

    def __init__(self, local: int, graph: Graph, reachable: Mapping[int, int]) -> None:
        self._local = local
        self._graph = graph
        self._reachable = reachable
        self._cache: dict[int, tuple[int, ...]] = {}

    def __getitem__(self, source: int) -> tuple[int, ...]:
        hops = self._cache.get(source)
        if hops is None:
            if source not in self._reachable:
                raise KeyError(source)
            parent = _bfs(self._graph, source, stop_after=self._local)
            local = self._local
            hops = tuple(
                n for n in self._graph.get(local, ()) if n != source and parent[n] == local
            )
            self._cache[source] = hops
        return hops

    def __iter__(self) -> Iterator[int]:
        return iter(self._reachable)

    def __len__(self) -> int:
        return len(self._reachable)

    def __repr__(self) -> str:
        return f"BroadcastTrees(local={self._local}, sources={len(self._reachable)})"


@dataclass(frozen=True)
class Routes:
    """An immutable snapshot: replaced by reference when the topology changes."""

    local: int
    unicast: Mapping[int, int]
    """destination → the neighbour to hand it to (absent: unreachable; never the local peer)."""
    broadcast: Mapping[int, tuple[int, ...]]
    """source → the neighbours we forward that source's broadcasts to."""
    distance: Mapping[int, int]
    """hops to every reachable peer (0 for ourselves)."""
    graph: Graph = field(default_factory=dict)
    """The symmetric graph the routes came from (what :meth:`entry_hop` replays)."""
    _entries: dict[int, Mapping[int, int]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def next_hop(self, destination: int) -> int | None:
        return self.unicast.get(destination)

    def broadcast_hops(self, source: int) -> tuple[int, ...]:
        return self.broadcast.get(source, ())

    def passers_on(self, source: int) -> frozenset[int]:
        """The peers with children in ``source``'s broadcast tree: those that relay its
        broadcasts on (one BFS; every peer's :meth:`broadcast_hops` agree with it)."""
        if source not in self.distance:
            return frozenset()
        return frozenset(p for n, p in _bfs(self.graph, source).items() if n != source)

    def entry_hop(self, origin: int, destination: int) -> int | None:
        """The neighbour a datagram from ``origin`` to ``destination`` reaches us from, by these
        routes: ``origin`` itself when adjacent; None when its path does not pass through us
        (an unknown origin or destination, or we are the origin).

        Computed once per destination (one BFS), on first use; the answers are a function of
        the frozen graph, so sharing them with reader threads is safe.
        """
        entries = self._entries.get(destination)
        if entries is None:
            if destination not in self.distance:
                return None
            entries = self._entries[destination] = _entries_towards(
                self.graph, destination, self.local
            )
        return entries.get(origin)

    def flood_parent(self, source: int) -> int | None:
        """The neighbour ``source``'s broadcasts reach us from: our parent in its BFS tree
        (None: ``source`` is unknown, unreachable, or us)."""
        if source == self.local or source not in self.distance:
            return None
        return _bfs(self.graph, source, stop_after=self.local).get(self.local)


def compute_routes(
    local: int,
    entries: Mapping[int, PeerEntry],
    *,
    punched: bool = False,
    previous: Routes | None = None,
    changed: Iterable[int] = (),
) -> Routes:
    """Unicast next hops by BFS from us; broadcast trees by BFS from each source (lazily).
    ``punched``: the data plane's routes, over punched paths too.

    With ``previous`` (routes of the same kind from the entries before ``changed`` changed),
    the graph is updated rather than rebuilt (``update_graph``): then only the BFS from us is
    O(peers + connections), never anything per source.
    """
    if previous is None:
        graph = symmetric_graph(entries, punched=punched)
    else:
        graph = update_graph(previous.graph, entries, changed, punched=punched)
    graph.setdefault(local, ())
    distance = {local: 0}
    first_hop: dict[int, int] = {}
    queue = deque([local])
    while queue:
        node = queue.popleft()
        hop = first_hop.get(node)
        for nbr in graph.get(node, ()):
            if nbr not in distance:
                distance[nbr] = distance[node] + 1
                first_hop[nbr] = nbr if hop is None else hop
                queue.append(nbr)
    frozen_distance = types.MappingProxyType(distance)
    return Routes(
        local=local,
        unicast=types.MappingProxyType(first_hop),
        broadcast=BroadcastTrees(local, graph, frozen_distance),
        distance=frozen_distance,
        graph=graph,
    )


def _entries_towards(graph: Graph, destination: int, local: int) -> Mapping[int, int]:
    """origin → the neighbour of ``local`` a unicast from origin to ``destination`` comes
    through, for every origin whose hop-by-hop path passes through ``local``.

    Each peer's next hop is its smallest neighbour one step closer to ``destination`` (what its
    own BFS picks, see :func:`shortest_path`), so these next hops form a tree towards
    ``destination``; an origin's entry is inherited from its next hop, nearest first.
    """
    parent = _bfs(graph, destination)
    closer = {destination: 0}
    for node in parent:  # BFS order: nearest first
        if node != destination:
            closer[node] = closer[parent[node]] + 1
    entries: dict[int, int] = {}
    for node in parent:
        if node in (destination, local):
            continue
        step = closer[node] - 1
        nxt = next(n for n in graph[node] if closer.get(n) == step)
        if nxt == local:
            entries[node] = node
        elif nxt in entries:
            entries[node] = entries[nxt]
    return types.MappingProxyType(entries)


def shortest_path(
    entries: Mapping[int, PeerEntry], src: int, dst: int, *, punched: bool = False
) -> list[int] | None:
    """``[src, ..., dst]``: the path unicast actually takes hop by hop (status: "h4 via h2, h3").

    BFS over sorted neighbours makes each peer's first hop towards ``dst`` its smallest
    neighbour that is one step closer to ``dst``; so one BFS from ``dst`` replays every hop.
    """
    graph = symmetric_graph(entries, punched=punched)
    parent = _bfs(graph, dst)
    if src not in parent:
        return None
    closer = {dst: 0}
    for node in parent:  # BFS order: a node's parent is always listed before it
        if node != dst:
            closer[node] = closer[parent[node]] + 1
    path = [src]
    while path[-1] != dst:
        here = closer[path[-1]]
        path.append(next(n for n in graph[path[-1]] if closer.get(n) == here - 1))
    return path
