"""The overlay switch: decisions one by one, then whole meshes forwarding frames by hand."""

from __future__ import annotations

import dataclasses
import gc
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.dataplane.sleeve.switch import Decision, MacEntry, Switch
from meshnet.gossip.routes import Routes, compute_routes
from meshnet.gossip.topology import Connection, PeerEntry

LOCAL, P2, P3 = 0x0A, 0x0B, 0x0C
BROADCAST = b"\xff" * 6
IPV6_MULTICAST = bytes.fromhex("333300000001")


def mac(n: int) -> bytes:
    return bytes([0x02, 0, 0, 0, n >> 8, n & 0xFF])


A, B, C, D = mac(1), mac(2), mac(3), mac(4)


# --- one switch --------------------------------------------------------------------------------


def test_from_local_learns_and_decides() -> None:
    sw = Switch(LOCAL)
    assert sw.from_local(A, BROADCAST, 0.0) == (Decision.FLOOD, 0)
    assert sw.from_local(A, IPV6_MULTICAST, 0.0) == (Decision.FLOOD, 0)
    assert sw.from_local(A, B, 0.0) == (Decision.FLOOD, 0)  # unknown unicast
    assert sw.from_peer(P2, B, A, 1.0) == (Decision.DELIVER, 0)
    assert sw.from_local(A, B, 2.0) == (Decision.UNICAST, P2)
    sw.from_local(C, BROADCAST, 2.0)
    assert sw.from_local(A, C, 3.0) == (Decision.DROP, 0)  # the bridge already delivered it
    stats = sw.statistics()
    assert (stats.learned, stats.moved, stats.entries) == (3, 0, 3)
    assert (stats.flooded, stats.unicast, stats.delivered) == (4, 1, 1)
    assert stats.dropped["local"] == 1
    assert sw.lookup(A, 3.0) == LOCAL and sw.lookup(B, 3.0) == P2 and sw.lookup(D, 3.0) is None


def test_from_peer_flooded_frames() -> None:
    sw = Switch(LOCAL)
    sw.from_local(A, BROADCAST, 0.0)
    sw.from_peer(P3, C, BROADCAST, 0.0, True)
    assert sw.from_peer(P2, B, BROADCAST, 1.0, True) == (Decision.FLOOD, 0)
    assert sw.from_peer(P2, B, D, 1.0, True) == (Decision.FLOOD, 0)  # unknown: deliver + onwards
    assert sw.from_peer(P2, B, C, 1.0, True) == (Decision.FLOOD, 0)  # its owner is elsewhere
    assert sw.from_peer(P2, B, A, 1.0, True) == (Decision.DELIVER, 0)  # found its owner: here


def test_from_peer_unicast_frames_are_delivered_or_dropped_never_redirected() -> None:
    sw = Switch(LOCAL)
    sw.from_local(A, BROADCAST, 0.0)
    sw.from_peer(P3, C, BROADCAST, 0.0, True)
    assert sw.from_peer(P2, B, A, 1.0) == (Decision.DELIVER, 0)
    assert sw.from_peer(P2, B, D, 1.0) == (Decision.DELIVER, 0)  # P2 thinks D is here
    assert sw.from_peer(P2, B, BROADCAST, 1.0) == (Decision.DELIVER, 0)  # addressed to us alone
    # C lives at P3 but P2 sent it to us: P2's view is stale; and P3 sent us its own MAC.
    assert sw.from_peer(P2, B, C, 1.0) == (Decision.DROP, 0)
    assert sw.from_peer(P3, D, C, 1.0) == (Decision.DROP, 0)
    assert sw.statistics().dropped["moved"] == 2


def test_a_frame_of_ours_coming_back_is_dropped_and_not_learned() -> None:
    sw = Switch(LOCAL)
    sw.from_local(A, BROADCAST, 0.0)
    assert sw.from_peer(LOCAL, A, BROADCAST, 1.0, True) == (Decision.DROP, 0)
    assert sw.from_peer(LOCAL, D, B, 1.0) == (Decision.DROP, 0)
    assert sw.lookup(A, 1.0) == LOCAL and sw.lookup(D, 1.0) is None
    assert sw.statistics().dropped["loop"] == 2
    assert sw.statistics().moved == 0


def test_multicast_source_is_dropped() -> None:
    sw = Switch(LOCAL)
    assert sw.from_local(BROADCAST, A, 0.0) == (Decision.DROP, 0)
    assert sw.from_peer(P2, IPV6_MULTICAST, A, 0.0, True) == (Decision.DROP, 0)
    assert sw.statistics().dropped["bad_source"] == 2
    assert sw.entries(0.0) == []


def test_the_last_frame_wins_both_ways() -> None:
    """A container migrating is reachable at once; a duplicate MAC shows as flapping."""
    sw = Switch(LOCAL)
    sw.from_local(A, BROADCAST, 0.0)
    sw.from_peer(P2, A, BROADCAST, 1.0, True)  # A moved to P2 (its gratuitous ARP)
    assert sw.lookup(A, 1.0) == P2
    assert sw.from_local(B, A, 1.5) == (Decision.UNICAST, P2)
    sw.from_peer(P3, A, B, 2.0)  # and on to P3
    assert sw.from_local(B, A, 2.5) == (Decision.UNICAST, P3)
    sw.from_local(A, B, 3.0)  # and back home
    assert sw.from_local(B, A, 3.5) == (Decision.DROP, 0)
    assert sw.statistics().moved == 3


def test_entries_refresh_cheaply_and_expire() -> None:
    sw = Switch(LOCAL, mac_ttl=100.0)
    sw.from_local(A, BROADCAST, 0.0)
    sw.from_peer(P2, B, BROADCAST, 0.0, True)
    sw.from_local(A, BROADCAST, 20.0)  # fresh (< ttl/4): not rewritten
    assert sw.entries(20.0) == [
        MacEntry("02:00:00:00:00:01", LOCAL, 20.0),
        MacEntry("02:00:00:00:00:02", P2, 20.0),
    ]
    sw.from_local(A, BROADCAST, 30.0)  # older than ttl/4: refreshed
    assert sw.entries(30.0)[0].age == 0.0
    # An active MAC (a frame at least every 3/4 ttl) never expires; an idle one does.
    for t in range(40, 400, 70):
        sw.from_local(A, BROADCAST, float(t))
        assert sw.lookup(A, float(t)) == LOCAL
    assert sw.lookup(B, 100.0) == P2
    assert sw.lookup(B, 100.5) is None  # stale entries are ignored before expire() runs
    assert sw.from_local(A, B, 100.5) == (Decision.FLOOD, 0)
    assert [e.mac for e in sw.entries(390.0)] == ["02:00:00:00:00:01"]
    assert sw.expire(390.0) == 1
    assert sw.expire(390.0) == 0
    assert sw.statistics().expired == 1 and sw.statistics().entries == 1
    # Learned again after expiry: new, not a move.
    sw.from_peer(P3, B, BROADCAST, 391.0, True)
    assert sw.statistics().moved == 0 and sw.statistics().learned == 3


def test_forget_peer() -> None:
    sw = Switch(LOCAL)
    sw.from_peer(P2, A, BROADCAST, 0.0, True)
    sw.from_peer(P2, B, BROADCAST, 0.0, True)
    sw.from_peer(P3, C, BROADCAST, 0.0, True)
    assert sw.peers() == {P2, P3}
    assert sw.forget_peer(P2) == 2
    assert sw.forget_peer(P2) == 0
    assert {e.peer for e in sw.entries()} == sw.peers() == {P3}
    assert sw.from_local(D, A, 1.0) == (Decision.FLOOD, 0)
    assert sw.statistics().forgotten == 2


def test_unicast_peers_are_those_we_sent_unicast_frames_to_not_every_peer_heard() -> None:
    sw = Switch(LOCAL, mac_ttl=300.0)
    sw.from_peer(P2, B, BROADCAST, 0.0, True)  # an ARP request: every switch learns B
    sw.from_peer(P3, C, BROADCAST, 0.0, True)
    sw.from_local(A, BROADCAST, 1.0)
    assert sw.unicast_peers(since=0.0) == set()  # heard both, sent neither a unicast
    assert sw.from_local(A, B, 10.0) == (Decision.UNICAST, P2)
    assert sw.unicast_peers(since=5.0) == {P2}
    sw.from_local(A, B, 10.5)  # within SENT_REFRESH: not rewritten
    assert sw.unicast_peers(since=10.2) == set()
    sw.from_local(A, B, 11.0)
    assert sw.unicast_peers(since=10.2) == {P2}
    assert sw.forget_peer(P2) == 1
    assert sw.unicast_peers(since=0.0) == set()
    sw.from_peer(P3, C, A, 20.0)
    sw.from_local(A, C, 20.0)
    sw.expire(20.0 + 301.0)
    assert sw.unicast_peers(since=0.0) == set()  # swept with the MACs


def test_statistics_are_a_frozen_snapshot_that_asdict_takes() -> None:
    sw = Switch(LOCAL)
    sw.from_local(A, BROADCAST, 0.0)
    stats = sw.statistics()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.learned = 0  # type: ignore[misc]
    as_dict = dataclasses.asdict(stats)
    assert as_dict["learned"] == 1
    assert as_dict["dropped"] == {"local": 0, "loop": 0, "moved": 0, "bad_source": 0}
    sw.from_local(A, BROADCAST, 1.0)
    assert stats.flooded == 1  # a snapshot: later frames do not change it
    assert sw.entries()[0].age == 0.0  # without `now`: ages from the latest time seen


# --- whole meshes ------------------------------------------------------------------------------


@dataclass
class Outcome:
    delivered: Counter[int]  # peer -> copies written into its TAP
    datagrams: int
    decision: Decision


class Mesh:
    """Peers with a Switch and Routes each; forwarding done by hand like the sleeve does it.

    Floods go down the origin's broadcast tree and stop where the switch does not say FLOOD;
    unicast datagrams travel hop by hop along next hops, and only their destination asks its
    switch (which delivers or drops).
    """

    def __init__(self, links: set[tuple[int, int]], peers: list[int]) -> None:
        neighbours: dict[int, set[int]] = {p: set() for p in peers}
        for a, b in links:
            neighbours[a].add(b)
            neighbours[b].add(a)
        entries = {
            p: PeerEntry(
                p,
                f"h{p}",
                1,
                2,
                tuple(Connection(q, "10.0.0.1:6783", True, True) for q in sorted(neighbours[p])),
            )
            for p in peers
        }
        self.peers = peers
        self.routes: dict[int, Routes] = {p: compute_routes(p, entries) for p in peers}
        self.switches = {p: Switch(p) for p in peers}
        self.where: dict[bytes, int] = {}  # the truth: which host each container is on

    def send(self, src: bytes, dst: bytes, now: float) -> Outcome:
        origin = self.where[src]
        decision, target = self.switches[origin].from_local(src, dst, now)
        delivered: Counter[int] = Counter()
        # (at, flooded, destination peer, hops so far)
        queue: deque[tuple[int, bool, int, int]] = deque()
        if decision is Decision.FLOOD:
            queue.extend((hop, True, 0, 1) for hop in self.routes[origin].broadcast_hops(origin))
        elif decision is Decision.UNICAST:
            assert target != origin
            queue.append((origin, False, target, 0))
        datagrams = 0
        while queue:
            at, flooded, destination, hops = queue.popleft()
            assert hops <= 2 * len(self.peers), "a frame is looping"
            if flooded:
                datagrams += 1
                verdict, _ = self.switches[at].from_peer(origin, src, dst, now, True)
                if verdict in (Decision.DELIVER, Decision.FLOOD):
                    delivered[at] += 1
                if verdict is Decision.FLOOD:
                    queue.extend(
                        (hop, True, 0, hops + 1) for hop in self.routes[at].broadcast_hops(origin)
                    )
                continue
            if at != destination:
                hop = self.routes[at].next_hop(destination)
                assert hop is not None
                datagrams += 1
                queue.append((hop, False, destination, hops + 1))
                continue
            verdict, _ = self.switches[at].from_peer(origin, src, dst, now, False)
            assert verdict in (Decision.DELIVER, Decision.DROP)
            if verdict is Decision.DELIVER:
                delivered[at] += 1
        assert max(delivered.values(), default=0) <= 1, f"delivered twice: {delivered}"
        assert origin not in delivered
        return Outcome(delivered, datagrams, decision)

    def views_are_true(self, mac_: bytes, now: float) -> bool:
        """No switch holds a stale location for ``mac_`` (unknown is fine)."""
        return all(
            sw.lookup(mac_, now) in (None, self.where[mac_]) for sw in self.switches.values()
        )


def line(n: int) -> set[tuple[int, int]]:
    return {(i, i + 1) for i in range(1, n)}


def ring(n: int) -> set[tuple[int, int]]:
    return line(n) | {(n, 1)}


def star(n: int) -> set[tuple[int, int]]:
    return {(1, i) for i in range(2, n + 1)}


def random_connected(n: int, rng: random.Random, extra: int) -> set[tuple[int, int]]:
    links = {(rng.randrange(1, i), i) for i in range(2, n + 1)}  # a random spanning tree
    for _ in range(extra):
        a, b = rng.sample(range(1, n + 1), 2)
        links.add((min(a, b), max(a, b)))
    return links


TOPOLOGIES = {
    "line": line(6),
    "ring": ring(6),
    "star": star(6),
    "random": random_connected(6, random.Random(7), 4),
}


def populate(mesh: Mesh, per_peer: int = 2) -> dict[int, list[bytes]]:
    hosted = {p: [mac(p * 16 + i) for i in range(per_peer)] for p in mesh.peers}
    for p, macs in hosted.items():
        for m in macs:
            mesh.where[m] = p
    return hosted


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_arp_then_replies_then_unicast(name: str) -> None:
    peers = list(range(1, 7))
    mesh = Mesh(TOPOLOGIES[name], peers)
    hosted = populate(mesh)
    asker = hosted[1][0]
    for target_peer in peers[1:]:
        target = hosted[target_peer][0]
        # ARP who-has: every other peer gets it exactly once, and learns the asker at 1.
        arp = mesh.send(asker, BROADCAST, 1.0)
        assert arp.decision is Decision.FLOOD
        assert arp.delivered == Counter({p: 1 for p in peers[1:]})
        assert arp.datagrams == len(peers) - 1  # a tree: one datagram per peer, no more
        # The reply is unicast straight back, along the shortest path.
        reply = mesh.send(target, asker, 1.1)
        assert reply.decision is Decision.UNICAST
        assert reply.delivered == Counter({1: 1})
        assert reply.datagrams == mesh.routes[target_peer].distance[1]
        # And now the asker knows the target too.
        data = mesh.send(asker, target, 1.2)
        assert data.decision is Decision.UNICAST
        assert data.delivered == Counter({target_peer: 1})
    # Same host: the bridge handled it; the switch sends nothing.
    mesh.send(hosted[1][1], BROADCAST, 2.0)
    assert mesh.send(asker, hosted[1][1], 2.1).datagrams == 0


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_unknown_unicast_floods_once_and_reaches_its_owner(name: str) -> None:
    peers = list(range(1, 7))
    mesh = Mesh(TOPOLOGIES[name], peers)
    hosted = populate(mesh)
    owner = hosted[4][0]
    mesh.send(owner, BROADCAST, 0.0)  # everybody knows 4's container, except 1 after forgetting
    mesh.switches[1].forget_peer(4)
    out = mesh.send(hosted[1][0], owner, 1.0)
    assert out.decision is Decision.FLOOD
    assert out.delivered[4] == 1
    assert out.datagrams <= len(peers) - 1
    # A MAC nobody has reaches every other peer exactly once.
    nobody = mac(0xEEE)
    out = mesh.send(hosted[1][0], nobody, 1.0)
    assert out.delivered == Counter({p: 1 for p in peers[1:]})


def test_traffic_follows_a_mac_that_moved() -> None:
    peers = list(range(1, 7))
    mesh = Mesh(line(6), peers)
    hosted = populate(mesh)
    roamer, friend = hosted[3][0], hosted[1][0]
    mesh.send(roamer, BROADCAST, 0.0)
    mesh.send(friend, BROADCAST, 0.0)
    assert mesh.send(friend, roamer, 1.0).delivered == Counter({3: 1})
    # The container migrates to 6 and announces itself: everyone follows at once.
    mesh.where[roamer] = 6
    mesh.send(roamer, BROADCAST, 2.0)
    assert mesh.switches[3].lookup(roamer, 2.0) == 6
    out = mesh.send(friend, roamer, 3.0)
    assert (out.decision, out.delivered) == (Decision.UNICAST, Counter({6: 1}))
    assert mesh.send(roamer, friend, 3.5).delivered == Counter({1: 1})
    # It moves again, to 5, silently but for one frame to a container on 6: 1 still thinks it
    # is at 6, and 6 drops what 1 sends it (no redirect) ...
    mesh.send(hosted[6][0], BROADCAST, 3.8)
    mesh.where[roamer] = 5
    assert mesh.send(roamer, hosted[6][0], 4.0).delivered == Counter({6: 1})
    assert mesh.switches[1].lookup(roamer, 4.0) == 6
    out = mesh.send(friend, roamer, 5.0)
    assert out.delivered == Counter()
    assert mesh.switches[6].statistics().dropped["moved"] == 1
    # ... until it announces itself (the attach's gratuitous ARP): then 1 follows at once.
    mesh.send(roamer, BROADCAST, 5.5)
    out = mesh.send(friend, roamer, 6.0)
    assert (out.decision, out.delivered) == (Decision.UNICAST, Counter({5: 1}))


def test_stale_views_on_two_peers_never_bounce_a_frame() -> None:
    mesh = Mesh(line(4), [1, 2, 3, 4])
    hosted = populate(mesh, 1)
    ghost = mac(0xABC)
    # Made-up stale views: 1 thinks ghost is at 3, 3 thinks 4, 4 thinks 3.
    mesh.switches[1].from_peer(3, ghost, BROADCAST, 0.0, True)
    mesh.switches[3].from_peer(4, ghost, BROADCAST, 0.0, True)
    mesh.switches[4].from_peer(3, ghost, BROADCAST, 0.0, True)
    mesh.where[ghost] = 2
    out = mesh.send(hosted[1][0], ghost, 1.0)
    assert out.delivered == Counter()  # lost at 3: no switch passes it on
    assert mesh.switches[3].statistics().dropped["moved"] == 1
    assert out.datagrams == 2  # 1 -> 2 -> 3, and no further


def test_a_departed_peer_is_forgotten_and_its_macs_expire() -> None:
    peers = list(range(1, 7))
    mesh = Mesh(ring(6), peers)
    hosted = populate(mesh)
    for macs in hosted.values():
        mesh.send(macs[0], BROADCAST, 0.0)
    assert mesh.send(hosted[1][0], hosted[4][0], 1.0).decision is Decision.UNICAST
    assert mesh.switches[1].forget_peer(4) == 1
    assert mesh.send(hosted[1][0], hosted[4][0], 2.0).decision is Decision.FLOOD
    # Nothing heard for mac_ttl: flooded again, and expire() clears the table.
    late = 2.0 + 300.5
    assert mesh.send(hosted[2][0], hosted[5][0], late).decision is Decision.FLOOD
    assert mesh.switches[2].expire(late) == len(peers) - 1  # all but its sender, just refreshed
    assert {e.peer for e in mesh.switches[2].entries(late)} == {2}


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[set[tuple[int, int]], int, list[tuple[str, int, int]]]:
    n = draw(st.integers(2, 8))
    links = random_connected(n, random.Random(draw(st.integers(0, 2**32))), draw(st.integers(0, n)))
    ops = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["arp", "unicast", "unicast", "unknown", "move", "wait"]),
                st.integers(0, 3 * n - 1),
                st.integers(0, 3 * n - 1),
            ),
            min_size=1,
            max_size=40,
        )
    )
    return links, n, ops


@settings(max_examples=120, deadline=None)
@given(scenarios())
def test_random_meshes_deliver_at_most_once_and_correctly_when_views_are_true(
    scenario: tuple[set[tuple[int, int]], int, list[tuple[str, int, int]]],
) -> None:
    links, n, ops = scenario
    peers = list(range(1, n + 1))
    mesh = Mesh(links, peers)
    hosted = populate(mesh, 3)
    macs = [m for p in peers for m in hosted[p]]
    now = 0.0
    for kind, i, j in ops:
        now += 1.0
        src, dst = macs[i], macs[j]
        origin = mesh.where[src]
        if kind == "wait":
            now += 250.0
            for sw in mesh.switches.values():
                sw.expire(now)
        elif kind == "move":  # a silent migration: views may go stale
            mesh.where[src] = peers[j % n]
        elif kind == "arp":
            out = mesh.send(src, BROADCAST, now)
            assert out.delivered == Counter({p: 1 for p in peers if p != origin})
        elif kind == "unknown":
            out = mesh.send(src, mac(0xFFF), now)
            assert out.delivered == Counter({p: 1 for p in peers if p != origin})
        else:
            true = mesh.views_are_true(dst, now)
            known = mesh.switches[origin].lookup(dst, now) is not None
            out = mesh.send(src, dst, now)
            owner = mesh.where[dst]
            if true and owner != origin:
                assert out.delivered[owner] == 1
                if known:
                    assert out.delivered == Counter({owner: 1})
            if true and owner == origin and known:
                assert out.datagrams == 0


# --- a capped table ------------------------------------------------------------------------------


def test_the_table_is_capped_and_evicts_the_entry_refreshed_longest_ago() -> None:
    sw = Switch(LOCAL, mac_ttl=100.0, max_entries=3)
    sw.from_local(A, BROADCAST, 0.0)
    sw.from_peer(P2, B, BROADCAST, 1.0, flooded=True)
    sw.from_peer(P2, C, BROADCAST, 2.0, flooded=True)
    sw.from_local(A, BROADCAST, 30.0)  # refreshed (older than ttl / 4): now the newest
    sw.from_peer(P3, D, BROADCAST, 31.0, flooded=True)
    assert [e.mac for e in sw.entries()] == ["02:00:00:00:00:01", "02:00:00:00:00:03",
                                             "02:00:00:00:00:04"]  # fmt: skip
    assert sw.lookup(B, 31.0) is None
    assert sw.statistics().evicted == 1 and sw.statistics().entries == 3


def test_a_flood_of_source_macs_stays_within_the_cap_and_frames_still_go() -> None:
    sw = Switch(LOCAL, max_entries=64)
    for n in range(10_000):
        assert sw.from_peer(P2, mac(n + 16), BROADCAST, 1.0, flooded=True)[0] is Decision.FLOOD
    assert sw.statistics().entries == 64
    assert sw.statistics().evicted == 10_000 - 64
    sw.from_local(A, BROADCAST, 2.0)  # a local container is still learned
    assert sw.lookup(A, 2.0) == LOCAL


_yielding = threading.Event()


class _Yielding:
    """A reference cycle whose finalizer gives the GIL away (as objects in a router may) and
    leaves the next such cycle behind, so that a collection inside any allocation yields."""

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        if _yielding.is_set():
            _Yielding()
        time.sleep(0.0001)


def test_walks_over_the_table_survive_a_packet_thread_moving_entries() -> None:
    """Regression: `entries()` from the trio thread failed with "dictionary keys changed during
    iteration" while a packet thread moved a MAC, and stopped a router of a 100-router lab."""
    switch = Switch(1, mac_ttl=1e9, max_entries=512)
    macs = [i.to_bytes(6, "big") for i in range(2, 600)]
    stop = threading.Event()

    def packets() -> None:
        peer = 2
        while not stop.is_set():
            peer = 5 - peer  # every frame moves its MAC to the other peer
            for mac in macs:
                switch.from_peer(peer, mac, b"\xff" * 6, 0.0)

    thresholds = gc.get_threshold()
    gc.set_threshold(1, 1, 1)
    thread = threading.Thread(target=packets)
    thread.start()
    _yielding.set()
    try:
        _Yielding()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            assert len(switch.entries()) <= 512
            switch.forget_peer(99)
            switch.expire(0.0)
    finally:
        _yielding.clear()
        stop.set()
        thread.join()
        gc.set_threshold(*thresholds)
