"""The pure forwarding core: frames and datagrams simulated hop by hop through it alone."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.dataplane.sleeve import forwarding as fwd
from meshnet.dataplane.sleeve.header import BROADCAST, MAX_TTL, PASSING, DatagramHeader, Kind
from meshnet.dataplane.sleeve.replay import ReplayWindow
from meshnet.dataplane.sleeve.switch import Decision
from meshnet.gossip.routes import compute_routes
from meshnet.gossip.topology import Connection, PeerEntry

BROADCAST_MAC = b"\xff" * 6
SOME_MAC = b"\x02\x00\x00\x00\x00\x01"


def entries_for(links: set[tuple[int, int]], peers: list[int]) -> dict[int, PeerEntry]:
    adjacent: dict[int, set[int]] = {p: set() for p in peers}
    for a, b in links:
        adjacent[a].add(b)
        adjacent[b].add(a)
    return {
        p: PeerEntry(
            p,
            f"h{p}",
            1,
            2,
            tuple(Connection(q, "10.0.0.1:6783", True, True) for q in sorted(adjacent[p])),
        )
        for p in peers
    }


def neighbour(name: int) -> fwd.Neighbour:
    return fwd.Neighbour(
        name, ("192.0.2.1", 6783), None, None, fwd.Sequences(), ReplayWindow(), 1500, True
    )


def snapshot_of(
    local: int,
    entries: dict[int, PeerEntry],
    fastdp: frozenset[int] = frozenset(),
    fastdp_macs: frozenset[bytes] = frozenset(),
    fastdp_passing: frozenset[int] = frozenset(),
) -> fwd.Snapshot:
    routes = compute_routes(local, entries)
    adjacent = [c.peer for c in entries[local].connections] if local in entries else []
    return fwd.Snapshot(
        local=local,
        routes=routes,
        neighbours={q: neighbour(q) for q in adjacent},
        overlay_mtu=1354,
        fastdp=fastdp,
        fastdp_macs=fastdp_macs,
        fastdp_passing=fastdp_passing,
    )


@st.composite
def meshes(draw: st.DrawFn) -> tuple[list[int], set[tuple[int, int]]]:
    """A connected mesh: a random spanning tree plus random extra links."""
    n = draw(st.integers(1, 9))
    peers = [10 * (i + 1) for i in range(n)]
    links = set()
    for i in range(1, n):
        parent = draw(st.integers(0, i - 1))
        links.add((peers[parent], peers[i]))
    for a, b in draw(st.lists(st.tuples(st.sampled_from(peers), st.sampled_from(peers)))):
        if a != b:
            links.add((min(a, b), max(a, b)))
    return peers, links


@dataclass
class Trace:
    delivered: Counter[int] = field(default_factory=Counter)
    flooded_deliveries: Counter[int] = field(default_factory=Counter)
    drops: Counter[fwd.ForwardDrop] = field(default_factory=Counter)
    longest: int = 0  # most hops a datagram travelled
    sent: int = 0  # datagrams sent, over every hop


def run(
    snaps: dict[int, fwd.Snapshot], origin: int, ops: fwd.Operations, kind: Kind = Kind.FRAMES
) -> Trace:
    """Execute an origin's operations, then every datagram hop by hop through the core only."""
    trace = Trace()
    queue: deque[tuple[int, DatagramHeader, int]] = deque()  # (at, header, hops so far)
    for op in ops:
        if isinstance(op, fwd.Send):
            for target in op.targets:
                header = DatagramHeader(
                    kind, target.flags, MAX_TTL, origin, target.destination, origin, 0
                )
                queue.append((target.neighbour.name, header, 1))
        elif isinstance(op, fwd.Drop):
            trace.drops[op.reason] += 1
        else:
            raise AssertionError(f"{op} from a captured frame")
    while queue:
        at, header, hops = queue.popleft()
        trace.sent += 1
        trace.longest = max(trace.longest, hops)
        assert hops <= MAX_TTL, "a datagram outlived its TTL"
        for op in fwd.received(snaps[at], header):
            if isinstance(op, fwd.Deliver):
                trace.delivered[at] += 1
                if op.flooded:
                    trace.flooded_deliveries[at] += 1
            elif isinstance(op, fwd.Relay):
                assert op.neighbour.name != header.hop, "sent back where it came from"
                assert op.neighbour.name in snaps[at].neighbours
                relayed = header.relayed(at, 0)
                assert relayed is not None
                queue.append((op.neighbour.name, relayed, hops + 1))
            elif isinstance(op, fwd.Drop):
                trace.drops[op.reason] += 1
            else:
                raise AssertionError(f"{op} for a data datagram")
    return trace


@settings(max_examples=200, deadline=None)
@given(meshes(), st.data())
def test_a_flood_reaches_every_peer_exactly_once_with_any_fastdp_split(
    mesh: tuple[list[int], set[tuple[int, int]]], data: st.DataObject
) -> None:
    peers, links = mesh
    entries = entries_for(links, peers)
    origin = data.draw(st.sampled_from(peers))
    adjacent = sorted(c.peer for c in entries[origin].connections)
    on_vxlan = frozenset(data.draw(st.sets(st.sampled_from(adjacent))) if adjacent else set())
    # Which of them relay PASSING broadcasts: all of them, or some (routers from before it).
    passing = on_vxlan
    if adjacent and data.draw(st.booleans()):
        passing = frozenset(data.draw(st.sets(st.sampled_from(adjacent))))
    snaps = {
        p: snapshot_of(p, entries, on_vxlan, fastdp_passing=passing)
        if p == origin
        else snapshot_of(p, entries)
        for p in peers
    }
    ops = fwd.captured(snaps[origin], Decision.FLOOD, 0, BROADCAST_MAC)
    targets = [t for op in ops if isinstance(op, fwd.Send) for t in op.targets]
    if on_vxlan <= passing:  # down our tree, PASSING through the neighbours VXLAN reached
        assert all(t.flags & BROADCAST and not t.destination for t in targets)
        assert all(bool(t.flags & PASSING) == (t.neighbour.name in on_vxlan) for t in targets)
    else:  # one copy for every other peer, none to or through what VXLAN reached
        assert all(t.flags == 0 and t.destination not in on_vxlan for t in targets)
    trace = run(snaps, origin, ops)
    trace.delivered.update(on_vxlan)  # the kernel's VXLAN delivered these
    assert trace.delivered == Counter({p: 1 for p in peers if p != origin})
    assert not trace.drops
    if on_vxlan <= passing:  # at most one datagram per peer: each tree edge once
        assert trace.sent <= len(peers) - 1


@settings(max_examples=150, deadline=None)
@given(meshes(), st.data())
def test_unicast_reaches_its_owner_exactly_once_along_the_shortest_path(
    mesh: tuple[list[int], set[tuple[int, int]]], data: st.DataObject
) -> None:
    peers, links = mesh
    entries = entries_for(links, peers)
    origin = data.draw(st.sampled_from(peers))
    owner = data.draw(st.sampled_from(peers))
    kind = data.draw(st.sampled_from([Kind.FRAMES, Kind.SEGMENT]))
    snaps = {p: snapshot_of(p, entries) for p in peers}
    if owner == origin:
        return  # the switch drops a frame for a local MAC: the bridge delivered it
    trace = run(snaps, origin, fwd.captured(snaps[origin], Decision.UNICAST, owner, SOME_MAC), kind)
    assert trace.delivered == Counter({owner: 1})
    assert not trace.flooded_deliveries
    assert trace.longest == snaps[origin].routes.distance[owner]
    assert not trace.drops


@settings(max_examples=100, deadline=None)
@given(meshes(), st.data())
def test_a_unicast_for_a_mac_on_vxlan_is_left_to_vxlan(
    mesh: tuple[list[int], set[tuple[int, int]]], data: st.DataObject
) -> None:
    peers, links = mesh
    entries = entries_for(links, peers)
    origin, owner = data.draw(st.sampled_from(peers)), data.draw(st.sampled_from(peers))
    snap = snapshot_of(origin, entries, fastdp_macs=frozenset({SOME_MAC}))
    assert fwd.captured(snap, Decision.UNICAST, owner, SOME_MAC) == (
        fwd.Drop(fwd.ForwardDrop.ON_FASTDP),
    )


@settings(max_examples=150, deadline=None)
@given(meshes(), meshes(), st.data())
def test_ttl_ends_every_datagram_even_when_views_disagree(
    mesh: tuple[list[int], set[tuple[int, int]]],
    other: tuple[list[int], set[tuple[int, int]]],
    data: st.DataObject,
) -> None:
    """Each peer routes by one of two unrelated topologies of the same peers (a change half
    gossiped): datagrams may be lost or delivered twice, but none lives beyond MAX_TTL hops,
    and none is ever handed back to the peer it came from."""
    peers, links = mesh
    other_links = {
        (a, b) for a, b in other[1] if a in peers and b in peers
    }  # same names, other links
    views = [entries_for(links, peers), entries_for(other_links | links, peers)]
    snaps = {p: snapshot_of(p, views[data.draw(st.integers(0, 1))]) for p in peers}
    origin = data.draw(st.sampled_from(peers))
    owner = data.draw(st.sampled_from(peers))
    for decision in (Decision.FLOOD, Decision.UNICAST):
        trace = run(snaps, origin, fwd.captured(snaps[origin], decision, owner, SOME_MAC))
        assert trace.longest <= MAX_TTL


def test_a_loop_between_peers_is_cut_by_the_origin_check() -> None:
    """Three peers that each route D through the next (made-up, inconsistent views): no one
    sends the datagram back where it came from, and the first peer whose view does not bring
    the origin's datagrams through the sender drops it ("wrong_hop") rather than letting it
    circle until its TTL ends (the TTL still bounds what the check lets through)."""
    o, a, b, c, d = 1, 2, 3, 4, 5
    peers = [o, a, b, c, d]
    ring = {(a, b), (b, c), (a, c), (o, a)}
    views = {
        o: entries_for(ring | {(a, d)}, peers),
        a: entries_for(ring | {(b, d)}, peers),
        b: entries_for(ring | {(c, d)}, peers),
        c: entries_for(ring | {(a, d)}, peers),
    }
    snaps = {p: snapshot_of(p, views[p]) for p in views}
    assert [snaps[p].routes.next_hop(d) for p in (o, a, b, c)] == [a, b, c, a]
    trace = run(snaps, o, fwd.captured(snaps[o], Decision.UNICAST, d, SOME_MAC))
    assert (trace.longest, trace.drops) == (2, Counter({fwd.ForwardDrop.WRONG_HOP: 1}))
    assert not trace.delivered
    # From a, b takes a's own datagram (a neighbour's own pass), and c cuts the loop.
    trace = run(snaps, a, fwd.captured(snaps[a], Decision.UNICAST, d, SOME_MAC))
    assert (trace.longest, trace.drops) == (2, Counter({fwd.ForwardDrop.WRONG_HOP: 1}))


def two_peers() -> dict[int, fwd.Snapshot]:
    entries = entries_for({(1, 2)}, [1, 2])
    return {p: snapshot_of(p, entries) for p in (1, 2)}


def header(**changes: int) -> DatagramHeader:
    fields = {
        "kind": Kind.FRAMES,
        "flags": 0,
        "ttl": MAX_TTL,
        "origin": 2,
        "destination": 1,
        "hop": 2,
        "sequence": 5,
    }
    fields.update(changes)
    return DatagramHeader(**fields)  # type: ignore[arg-type]


def test_received_operations() -> None:
    snap = two_peers()[1]
    assert fwd.received(snap, header()) == (fwd.Deliver(flooded=False),)
    for kind in (Kind.HEARTBEAT, Kind.PROBE, Kind.PROBE_ACK):
        assert fwd.received(snap, header(kind=kind)) == (fwd.Control(),)
    assert fwd.received(snap, header(origin=1)) == (fwd.Drop(fwd.ForwardDrop.LOOP),)
    assert fwd.received(snap, header(destination=9)) == (fwd.Drop(fwd.ForwardDrop.UNREACHABLE),)
    assert fwd.received(snap, header(destination=2)) == (fwd.Drop(fwd.ForwardDrop.LOOP),)
    flood = header(flags=BROADCAST, destination=0)
    assert fwd.received(snap, flood) == (fwd.Deliver(flooded=True),)


def test_ttl_one_is_delivered_but_never_relayed() -> None:
    entries = entries_for({(1, 2), (2, 3)}, [1, 2, 3])
    snap = snapshot_of(2, entries)
    last = header(ttl=1, origin=1, hop=1, destination=3)
    assert fwd.received(snap, last) == (fwd.Drop(fwd.ForwardDrop.TTL),)
    assert fwd.received(snap, last._replace(ttl=2)) == (fwd.Relay(snap.neighbours[3]),)
    flood = last._replace(flags=BROADCAST, destination=0)
    assert fwd.received(snap, flood) == (
        fwd.Deliver(flooded=True),
        fwd.Drop(fwd.ForwardDrop.TTL),
    )
    assert fwd.received(snap, flood._replace(ttl=2)) == (
        fwd.Deliver(flooded=True),
        fwd.Relay(snap.neighbours[3]),
    )
    assert last._replace(ttl=2).relayed(2, 9) == last._replace(hop=2, sequence=9)


def test_a_route_through_a_peer_without_a_udp_path_is_dropped_as_no_path() -> None:
    entries = entries_for({(1, 2), (2, 3)}, [1, 2, 3])
    routes = compute_routes(1, entries)
    snap = fwd.Snapshot(local=1, routes=routes, neighbours={}, overlay_mtu=1354)
    no_path = (fwd.Drop(fwd.ForwardDrop.NO_PATH),)
    assert fwd.captured(snap, Decision.UNICAST, 3, SOME_MAC) == no_path
    assert fwd.captured(snap, Decision.FLOOD, 0, BROADCAST_MAC) == no_path
    assert fwd.captured(snap, Decision.UNICAST, 9, SOME_MAC) == (
        fwd.Drop(fwd.ForwardDrop.UNREACHABLE),
    )
    assert fwd.captured(snap, Decision.DROP, 0, SOME_MAC) == ()


def test_answers_are_computed_once_per_snapshot() -> None:
    """The per-frame cost is a lookup: the same operations object comes back every time."""
    entries = entries_for({(1, 2), (2, 3)}, [1, 2, 3])
    snap = snapshot_of(2, entries)
    relay = header(origin=1, hop=1, destination=3)
    assert fwd.received(snap, relay) is fwd.received(snap, relay._replace(sequence=6))
    flood = relay._replace(flags=BROADCAST, destination=0)
    assert fwd.received(snap, flood) is fwd.received(snap, flood._replace(sequence=7))
    unicast = fwd.captured(snap, Decision.UNICAST, 3, SOME_MAC)
    assert unicast is fwd.captured(snap, Decision.UNICAST, 3, SOME_MAC)


def test_a_broadcast_from_below_us_in_the_origins_tree_is_dropped() -> None:
    """Our view says that hop is below us in the origin's tree (views disagree, or a neighbour
    speaks for an origin whose floods never come through it): neither delivered nor relayed."""
    entries = entries_for({(1, 2), (2, 3)}, [1, 2, 3])
    snap = snapshot_of(2, entries)
    assert snap.routes.broadcast_hops(1) == (3,)
    odd = header(flags=BROADCAST, destination=0, origin=1, hop=3)
    assert fwd.received(snap, odd) == (fwd.Drop(fwd.ForwardDrop.WRONG_HOP),)


def test_made_up_origins_are_dropped_and_leave_no_state() -> None:
    snap = two_peers()[1]
    unknown = (fwd.Drop(fwd.ForwardDrop.UNKNOWN_ORIGIN),)
    for origin in range(100, 1100):
        assert fwd.received(snap, header(origin=origin)) == unknown
        assert fwd.received(snap, header(origin=origin, flags=BROADCAST, destination=0)) == unknown
    assert snap._broadcast == {}
    entries = entries_for({(1, 2), (2, 3)}, [1, 2, 3])
    relay = snapshot_of(2, entries)
    assert fwd.received(relay, header(origin=77, hop=1, destination=3)) == unknown


def test_a_neighbour_cannot_speak_for_an_origin_whose_traffic_never_passes_through_it() -> None:
    """1 - 2 - 3, and 2 - 4: at 2, datagrams from 1 come through 1, never through 4."""
    entries = entries_for({(1, 2), (2, 3), (2, 4)}, [1, 2, 3, 4])
    snap = snapshot_of(2, entries)
    wrong = (fwd.Drop(fwd.ForwardDrop.WRONG_HOP),)
    assert fwd.received(snap, header(origin=1, hop=4, destination=2)) == wrong  # for us
    assert fwd.received(snap, header(origin=1, hop=4, destination=3)) == wrong  # to relay
    assert fwd.received(snap, header(origin=1, hop=1, destination=3)) == (
        fwd.Relay(snap.neighbours[3]),
    )
    assert fwd.received(snap, header(origin=1, hop=1, destination=2)) == fwd.DELIVER


def test_a_neighbours_own_datagrams_pass_before_our_routes_list_the_link() -> None:
    """1 - 2 - 3, and 1 and 3 just made a direct path (punched): 3 lists it and sends directly
    before our routes (at 1) know of it. Its own datagrams arrive and are relayed; another's
    sent through it are not."""
    entries = entries_for({(1, 2), (2, 3), (1, 4)}, [1, 2, 3, 4])
    routes = compute_routes(1, entries)
    neighbours = {q: neighbour(q) for q in (2, 3, 4)}
    snap = fwd.Snapshot(local=1, routes=routes, neighbours=neighbours, overlay_mtu=1354)
    assert routes.next_hop(3) == 2
    assert fwd.received(snap, header(origin=3, hop=3, destination=1)) == fwd.DELIVER
    assert fwd.received(snap, header(origin=3, hop=3, destination=4)) == (fwd.Relay(neighbours[4]),)
    wrong = (fwd.Drop(fwd.ForwardDrop.WRONG_HOP),)
    assert fwd.received(snap, header(origin=2, hop=3, destination=1)) == wrong
    assert fwd.received(snap, header(origin=2, hop=3, destination=4)) == wrong


def test_the_replaced_routes_vouch_for_their_hops_until_the_data_plane_drops_them() -> None:
    """1 - 2 - 3 becomes a triangle: at 1, datagrams from 3 (and from 3 to relay to 4) now
    come through 3, but 3 may not know yet and still send them through 2. The routes the
    change replaced let them in; a snapshot without them (the grace over) does not."""
    peers = [1, 2, 3, 4]
    before = compute_routes(1, entries_for({(1, 2), (2, 3), (1, 4)}, peers))
    after = compute_routes(1, entries_for({(1, 2), (2, 3), (1, 3), (1, 4)}, peers))
    neighbours = {q: neighbour(q) for q in (2, 3, 4)}
    snap = fwd.Snapshot(1, after, neighbours, 1354, recent_routes=before)
    over = fwd.Snapshot(1, after, neighbours, 1354)
    wrong = (fwd.Drop(fwd.ForwardDrop.WRONG_HOP),)
    assert fwd.received(snap, header(origin=3, hop=4, destination=1)) == wrong  # never its way
    for destination, accepted in ((1, fwd.DELIVER), (4, (fwd.Relay(neighbours[4]),))):
        old_way = header(origin=3, hop=2, destination=destination)
        assert fwd.received(snap, old_way) == accepted
        assert fwd.received(over, old_way) == wrong
        new_way = header(origin=3, hop=3, destination=destination)
        assert fwd.received(snap, new_way) == fwd.received(over, new_way) == accepted


@settings(max_examples=150, deadline=None)
@given(meshes(), st.data())
def test_only_the_hop_on_the_origins_path_is_accepted(
    mesh: tuple[list[int], set[tuple[int, int]]], data: st.DataObject
) -> None:
    """Every peer accepts a datagram from exactly the neighbour that really hands it on along
    the origin's route (unicast) or tree (broadcast), and from no other neighbour: but for a
    unicast from its origin itself, which a neighbour always may send us."""
    peers, links = mesh
    entries = entries_for(links, peers)
    snaps = {p: snapshot_of(p, entries) for p in peers}
    origin = data.draw(st.sampled_from(peers))
    owner = data.draw(st.sampled_from(peers))
    flood = data.draw(st.booleans())
    edges: set[tuple[int, int]] = set()  # (hop, at) the real datagram took
    queue = deque([origin])
    while queue:  # replay the route or tree hop by hop, from each peer's own view
        at = queue.popleft()
        hops = snaps[at].routes.broadcast_hops(origin) if flood else ()
        if not flood and at != owner:
            hops = (snaps[at].routes.next_hop(owner),)  # type: ignore[assignment]
        for hop in hops:
            edges.add((at, hop))
            queue.append(hop)
    for at in peers:
        for hop in snaps[at].neighbours:
            h = header(
                origin=origin,
                hop=hop,
                destination=0 if flood else owner,
                flags=BROADCAST if flood else 0,
            )
            accepted = not any(isinstance(op, fwd.Drop) for op in fwd.received(snaps[at], h))
            if at == origin or (not flood and at == owner == hop):
                continue  # "loop" rules
            own = (  # relayed on, unless our route to the owner goes back to it
                not flood
                and hop == origin != owner
                and (at == owner or snaps[at].routes.next_hop(owner) != hop)
            )
            assert accepted == ((hop, at) in edges or own), (at, hop, edges)
