"""Routes over random topologies: shortest, loop-free hop by hop, broadcast exactly once."""

from __future__ import annotations

import itertools
from collections import Counter, deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.gossip.routes import compute_routes, shortest_path, symmetric_graph, update_graph
from meshnet.gossip.topology import Connection, PeerEntry


@st.composite
def topologies(draw: st.DrawFn) -> dict[int, PeerEntry]:
    """Peers 10, 20, ...; each pair: no link, both sides established, or a half-made link."""
    n = draw(st.integers(1, 9))
    names = [10 * (i + 1) for i in range(n)]
    listed: dict[int, list[Connection]] = {name: [] for name in names}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            kind = draw(st.sampled_from(["none", "none", "up", "up", "one-sided", "pending"]))
            if kind == "none":
                continue
            listed[a].append(Connection(b, "10.0.0.2:6783", True, True))
            if kind == "up":
                listed[b].append(Connection(a, "10.0.0.1:6783", False, True))
            elif kind == "pending":
                listed[b].append(Connection(a, "10.0.0.1:6783", False, False))
    return {
        name: PeerEntry(name, f"h{name}", 1, 2, tuple(sorted(conns, key=lambda c: c.peer)))
        for name, conns in listed.items()
    }


def reference_distances(entries: dict[int, PeerEntry], source: int) -> dict[int, int]:
    def up(a: int, b: int) -> bool:
        return any(c.peer == b and c.established for c in entries[a].connections)

    dist = {source: 0}
    queue = deque([source])
    while queue:
        node = queue.popleft()
        for other in entries:
            if other not in dist and up(node, other) and up(other, node):
                dist[other] = dist[node] + 1
                queue.append(other)
    return dist


@settings(max_examples=150)
@given(topologies())
def test_unicast_routes_are_shortest_and_loop_free(entries: dict[int, PeerEntry]) -> None:
    graph = symmetric_graph(entries)
    routes = {name: compute_routes(name, entries) for name in entries}
    for name, r in routes.items():
        expected = reference_distances(entries, name)
        assert dict(r.distance) == expected
        assert set(r.unicast) == set(expected) - {name}
        for dest, hop in r.unicast.items():
            assert hop in graph[name]
            assert routes[hop].distance[dest] == r.distance[dest] - 1
        # Hop by hop, each peer using its own table, reaches the destination in distance steps.
        for dest, hops in r.distance.items():
            here, steps = name, 0
            while here != dest:
                next_hop = routes[here].next_hop(dest)
                assert next_hop is not None
                here, steps = next_hop, steps + 1
            assert steps == hops
            path = shortest_path(entries, name, dest)
            assert path is not None and len(path) == hops + 1
            assert path[0] == name and path[-1] == dest
            for a, b in itertools.pairwise(path):
                assert routes[a].next_hop(dest) == b
        for dest in set(entries) - set(r.distance):
            assert r.next_hop(dest) is None
            assert shortest_path(entries, name, dest) is None


@settings(max_examples=150)
@given(topologies())
def test_broadcast_reaches_every_reachable_peer_exactly_once(
    entries: dict[int, PeerEntry],
) -> None:
    routes = {name: compute_routes(name, entries) for name in entries}
    for source in entries:
        received: Counter[int] = Counter()
        queue = deque((hop, source) for hop in routes[source].broadcast_hops(source))
        while queue:
            peer, sender = queue.popleft()
            received[peer] += 1
            assert received[peer] == 1, f"{peer} got {source}'s broadcast twice"
            queue.extend(
                (hop, peer) for hop in routes[peer].broadcast_hops(source) if hop != sender
            )
        assert set(received) == set(routes[source].distance) - {source}
        for peer, r in routes.items():
            assert set(r.broadcast.get(source, ())) <= set(symmetric_graph(entries)[peer])


def test_one_sided_and_pending_connections_carry_nothing() -> None:
    def conn(peer: int, established: bool = True) -> Connection:
        return Connection(peer, "10.0.0.9:6783", True, established)

    entries = {
        1: PeerEntry(1, "a", 1, 2, (conn(2), conn(3))),
        2: PeerEntry(2, "b", 1, 2, (conn(1),)),
        3: PeerEntry(3, "c", 1, 2, (conn(1, established=False),)),
        4: PeerEntry(4, "d", 1, 2, (conn(1),)),  # 1 does not list 4
    }
    routes = compute_routes(1, entries)
    assert dict(routes.unicast) == {2: 2}
    assert dict(routes.distance) == {1: 0, 2: 1}
    assert routes.broadcast_hops(1) == (2,)
    assert routes.broadcast_hops(3) == ()
    with pytest.raises(KeyError):
        routes.broadcast[3]
    assert list(routes.broadcast) == [1, 2]
    assert routes == compute_routes(1, dict(entries))


def test_ties_are_broken_by_the_smaller_name_everywhere() -> None:
    """A square 1-2-4-3-1: both 2 and 3 are shortest towards 4; every peer picks 2."""
    links = {1: (2, 3), 2: (1, 4), 3: (1, 4), 4: (2, 3)}
    entries = {
        n: PeerEntry(
            n, f"h{n}", 1, 2, tuple(Connection(p, "10.0.0.9:6783", True, True) for p in ps)
        )
        for n, ps in links.items()
    }
    assert compute_routes(1, entries).next_hop(4) == 2
    assert shortest_path(entries, 1, 4) == [1, 2, 4]
    assert compute_routes(2, entries).broadcast_hops(1) == (4,)
    assert compute_routes(3, entries).broadcast_hops(1) == ()


@settings(max_examples=150)
@given(topologies(), topologies(), st.booleans())
def test_an_updated_graph_is_the_graph_rebuilt(
    before: dict[int, PeerEntry], after: dict[int, PeerEntry], punched: bool
) -> None:
    """Whatever changed between two topologies (peers added, gone, connections made, lost or
    half-made), updating the old graph with the changed names gives the new graph, and routes
    computed from the previous routes are the routes computed afresh."""
    changed = {n for n in {*before, *after} if before.get(n) != after.get(n)}
    old = symmetric_graph(before, punched=punched)
    assert update_graph(old, after, changed, punched=punched) == symmetric_graph(
        after, punched=punched
    )
    assert old == symmetric_graph(before, punched=punched)  # the old graph is left alone
    for local in after:
        previous = compute_routes(local, before, punched=punched)
        fresh = compute_routes(local, after, punched=punched)
        updated = compute_routes(local, after, punched=punched, previous=previous, changed=changed)
        assert updated.unicast == fresh.unicast
        assert updated.distance == fresh.distance
        assert updated.graph == fresh.graph
