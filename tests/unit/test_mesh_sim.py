"""A whole mesh of ``Mesh`` cores in memory, on a fake clock: convergence, departure, restart.

The simulated network is meshnet.gossip.simulation; ``bench/gossip_scale.py`` drives the same
``Simulation`` at larger sizes.
"""

from __future__ import annotations

import math
import random
from collections import deque

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.errors import RemoteProtocolError
from meshnet.gossip.channel import Send
from meshnet.gossip.mesh import Mesh
from meshnet.gossip.messages import Broadcast, Gossip, Heartbeat, Unicast, encode_message
from meshnet.gossip.simulation import CopyOnWrite, Simulation, converge
from meshnet.gossip.topology import Connection, PeerEntry, encode_entries


def test_hundred_peers_converge_to_one_topology_and_consistent_routes() -> None:
    sim = Simulation(100, seed=7)
    simulated, wall = converge(sim)
    common = sim.assert_consistent()
    total = sim.total()
    print(
        f"\n100 peers: converged after {simulated:.3f} simulated s ({wall:.2f} s wall), "
        f"{total.messages} messages, {total.bytes / 100:.0f} bytes/peer"
    )
    assert all(len(e.connections) >= 1 for e in common.values())
    # Deltas, not the NxN map per change: far below every peer sending everything per edge.
    assert total.bytes / 100 < 200_000

    # Broadcast over the trees reaches everyone exactly once.
    received: list[int] = []

    class Recorder:
        def __init__(self, name: int) -> None:
            self.name = name

        def full_state(self) -> bytes | None:
            return None

        def on_gossip(self, payload: bytes) -> bytes | None:
            return None

        def merge_payloads(self, a: bytes, b: bytes) -> bytes:
            return b

        def on_broadcast(self, source: int, payload: bytes) -> None:
            received.append(self.name)

        def on_unicast(self, source: int, payload: bytes) -> None:
            received.append(self.name)

    for name, mesh in sim.meshes.items():
        mesh.register_channel("test", Recorder(name))
    source = sim.names[3]
    sim._dispatch(source, sim.meshes[source].broadcast("test", b"hello"))
    sim.run()
    assert sorted(received) == sorted(n for n in sim.names if n != source)

    received.clear()
    destination = sim.names[-1]
    sim._dispatch(source, sim.meshes[source].unicast("test", destination, b"hi"))
    sim.run()
    assert received == [destination]


def test_departed_peer_is_pruned_everywhere() -> None:
    sim = Simulation(40, seed=3)
    converge(sim)
    gone = sim.names[5]
    sim.stop(gone)
    sim.run()
    common = sim.assert_consistent()
    assert gone not in common
    assert all(gone not in (c.peer for c in e.connections) for e in common.values())
    assert sum(m.statistics().pruned_peers for m in sim.meshes.values()) >= len(sim.meshes)


@pytest.mark.parametrize("wait", [0.0, 5.0])
def test_restarted_peer_replaces_its_old_entry_everywhere(wait: float) -> None:
    sim = Simulation(40, seed=11)
    converge(sim)
    name = sim.names[8]
    old = sim.meshes[name].topology[name]
    neighbours = sim.stop(name)
    sim.run(until=sim.now + wait)  # 0: reconnect before anyone pruned the old incarnation
    new = sim.start(name)
    assert new.topology[name].uid != old.uid
    sim.connect_all((name, peer) for peer in neighbours)
    sim.run()
    common = sim.assert_consistent()
    assert common[name].uid == new.topology[name].uid
    assert common[name].version > 1


def test_anti_entropy_repairs_a_lost_delta() -> None:
    sim = Simulation(30, seed=5, gossip_interval=10.0)
    sim.connect_all()
    sim.run(until=2.0)
    sim.assert_consistent()
    # A change whose deltas are all lost on the wire...
    a, b = sim.names[0], sim.names[1]
    if (a, b) in sim.links:
        sim.disconnect(a, b)
    else:
        sim.connect(a, b)
    for src in sim.outboxes:
        for dst in sim.names:
            sim.outboxes[src].discard(dst)
    assert sim.common_topology() is None
    # ...is repaired by periodic full-state exchange with random neighbours.
    sim.run(until=sim.now + 200.0)
    sim.assert_consistent()


def test_one_new_connection_costs_far_less_than_the_full_map() -> None:
    sim = Simulation(100, seed=2)
    converge(sim)
    full = len(
        msgpack.packb(encode_message(Gossip("topology", b"x")), use_bin_type=True)  # framing only
    )
    sizes = [len(e.packed) for e in sim.meshes[sim.names[0]].topology.values()]
    full += sum(sizes)
    sim.reset_counts()
    a, b = next((a, b) for a in sim.names for b in sim.names if a < b and (a, b) not in sim.links)
    sim.connect(a, b)
    sim.run()
    sim.assert_consistent()
    per_peer = sim.total().bytes / len(sim.meshes)
    print(f"\none change: {per_peer:.0f} bytes/peer (the full map is {full} bytes)")
    assert per_peer < full


class MaxRegister:
    """A toy subsystem: a map of keys to numbers where the larger number wins."""

    def __init__(self) -> None:
        self.state: dict[str, int] = {}

    def set(self, key: str, value: int) -> bytes:
        self.state[key] = max(self.state.get(key, value), value)
        return msgpack.packb({key: self.state[key]})

    def full_state(self) -> bytes | None:
        return msgpack.packb(self.state) if self.state else None

    def on_gossip(self, payload: bytes) -> bytes | None:
        news = {k: v for k, v in msgpack.unpackb(payload).items() if self.state.get(k, -1) < v}
        self.state.update(news)
        return msgpack.packb(news) if news else None

    def merge_payloads(self, a: bytes, b: bytes) -> bytes:
        merged = msgpack.unpackb(a)
        for k, v in msgpack.unpackb(b).items():
            merged[k] = max(merged.get(k, v), v)
        return msgpack.packb(merged)

    def on_broadcast(self, source: int, payload: bytes) -> None:
        pass

    def on_unicast(self, source: int, payload: bytes) -> None:
        pass


def test_subsystem_channels_converge_and_late_joiners_get_full_state() -> None:
    sim = Simulation(20, seed=4)
    registers = {}
    for name, mesh in sim.meshes.items():
        registers[name] = MaxRegister()
        mesh.register_channel("kv", registers[name])
    converge(sim)
    writer = sim.names[0]
    for i in range(5):
        sim._dispatch(
            writer, sim.meshes[writer].gossip("kv", registers[writer].set(f"k{i}", i), sim.now)
        )
    sim._dispatch(writer, sim.meshes[writer].gossip("kv", registers[writer].set("k0", 9), sim.now))
    sim.run()
    assert all(r.state == {"k0": 9, "k1": 1, "k2": 2, "k3": 3, "k4": 4} for r in registers.values())
    assert sum(o.merged for o in sim.outboxes.values()) > 0  # back-to-back deltas coalesced
    stats = sim.meshes[sim.names[1]].statistics()
    assert stats.channels["kv"].messages_received >= 1
    assert stats.peers == 20 and stats.connections == len(sim.meshes[sim.names[1]].neighbours)

    # A peer that was never there gets everything from its first neighbour.
    late = sim.start(1)
    registers[1] = MaxRegister()
    late.register_channel("kv", registers[1])
    sim.connect(1, sim.names[2])
    sim.run()
    assert registers[1].state == registers[writer].state
    sim.assert_consistent()


def pair() -> tuple[Mesh, Mesh]:
    a = Mesh(name=10, nickname="a", uid=1, rng=random.Random(1))
    b = Mesh(name=20, nickname="b", uid=2, rng=random.Random(2))
    a.connection_up(20, address="10.0.0.2:6783", outbound=True, now=0.0)
    b.connection_up(10, address="10.0.0.1:40000", outbound=False, now=0.0)
    return a, b


def test_bad_and_unexpected_input_is_rejected_or_counted() -> None:
    a, _ = pair()
    with pytest.raises(RemoteProtocolError):
        a.receive(20, Gossip("topology", b"\xc1"), 0.0)
    with pytest.raises(RemoteProtocolError):
        a.receive(20, Gossip("topology", msgpack.packb([[20, "b", 2, "1", []]])), 0.0)
    assert a.receive(20, Gossip("dns-v9", b"whatever"), 0.0) == []
    assert a.receive(20, Broadcast("dns-v9", 20, b"x"), 0.0) == []
    assert a.receive(99, Gossip("topology", b"\xc1"), 0.0) == []  # not (or no longer) a neighbour
    assert a.receive(20, Heartbeat(), 0.0) == []
    a.register_channel("kv", MaxRegister())
    assert a.unicast("kv", 12345, b"x") == []
    stats = a.statistics()
    assert stats.unknown_channel_messages == 2
    assert stats.stray_messages == 1
    assert stats.unicast_drops == 1
    with pytest.raises(ValueError):
        a.register_channel("topology", MaxRegister())
    with pytest.raises(ValueError):
        a.register_channel("kv", MaxRegister())
    with pytest.raises(ValueError):
        a.gossip("unregistered", b"x", 0.0)


def test_neighbours_of_neighbours_are_discovered_by_their_listening_address() -> None:
    a, b = pair()
    c = Mesh(name=30, nickname="c", uid=3, rng=random.Random(3))
    b.connection_up(30, address="10.0.0.3:6783", outbound=True, now=0.0)
    c.connection_up(20, address="10.0.0.2:41000", outbound=False, now=0.0)
    a.receive(20, Gossip("topology", encode_entries(list(b.topology.values()))), 0.0)
    assert a.discovered_addresses() == {"10.0.0.3:6783"}
    assert b.discovered_addresses() == set()
    a.connection_up(30, address="10.0.0.3:6783", outbound=True, now=1.0)
    assert a.discovered_addresses() == set()


def test_tick_prunes_in_batches_and_gossips_to_a_few_neighbours() -> None:
    hub = Mesh(name=1, nickname="hub", uid=1, rng=random.Random(1), fanout=2, gossip_interval=30)
    assert hub.next_wake() == math.inf
    for peer in range(2, 7):
        hub.connection_up(peer, address=f"10.0.0.{peer}:6783", outbound=True, now=0.0)
    assert hub.next_wake() == 1.0  # the prune batch
    assert hub.tick(0.5) == []
    assert hub.tick(1.0) == []
    due = hub.next_wake()
    assert 24.0 <= due <= 36.0
    sends = hub.tick(due)
    assert len({s.peer for s in sends}) == 2
    assert hub.statistics().anti_entropy_rounds == 1
    hub.connection_down(6, now=due)
    assert hub.next_wake() == due + 1.0


def test_anti_entropy_sends_a_channel_state_again_only_once_it_changed_or_is_old() -> None:
    hub = Mesh(name=1, nickname="hub", uid=1, rng=random.Random(1), fanout=1, gossip_interval=30)
    register = MaxRegister()
    hub.register_channel("reg", register)
    register.set("x", 1)
    first = hub.connection_up(2, address="10.0.0.2:6783", outbound=True, now=0.0)
    assert [s.message.channel for s in first if isinstance(s.message, Gossip)].count("reg") == 1

    def states_sent_at(now: float) -> int:
        sends = hub.tick(now)
        assert any(s.message.channel == "topology-digest" for s in sends)  # always a digest
        return sum(s.message.channel == "reg" for s in sends if isinstance(s.message, Gossip))

    assert states_sent_at(40.0) == 0  # the connection carried these very bytes already
    assert hub.statistics().states_unchanged == 1
    register.set("x", 2)
    assert states_sent_at(80.0) == 1  # changed since: sent (a delta may have been set aside)
    assert states_sent_at(120.0) == 0
    assert states_sent_at(400.0) == 1  # FULL_STATE_REFRESH later: sent again all the same
    hub.connection_down(2, now=401.0)
    again = hub.connection_up(2, address="10.0.0.2:6783", outbound=True, now=402.0)
    assert [s.message.channel for s in again if isinstance(s.message, Gossip)].count("reg") == 1
    assert states_sent_at(440.0) == 0


def pump(meshes: dict[int, Mesh], pending: list[tuple[int, Send]]) -> None:
    """Deliver every send (and what it causes) at once, in order."""
    queue = deque(pending)
    while queue:
        src, send = queue.popleft()
        if send.peer in meshes and src in meshes[send.peer].neighbours:
            for out in meshes[send.peer].receive(src, send.message, 0.0):
                queue.append((send.peer, out))


def link(meshes: dict[int, Mesh], a: int, b: int) -> list[tuple[int, Send]]:
    sends = [(a, s) for s in meshes[a].connection_up(b, address="10.0.0.1:1", outbound=True, now=0)]
    sends += [
        (b, s) for s in meshes[b].connection_up(a, address="10.0.0.2:2", outbound=False, now=0)
    ]
    return sends


def test_a_far_peer_holding_a_stale_incarnation_pushes_it_back_until_it_is_bumped_past() -> None:
    """P - Q - R. Q already forgot P's old self, R still holds it at a higher version."""
    P, Q, R = 1, 2, 3
    meshes = {n: Mesh(name=n, nickname=f"h{n}", uid=n, rng=random.Random(n)) for n in (P, Q, R)}
    pump(meshes, link(meshes, Q, R))
    stale = PeerEntry(P, "h1", 999, 50, (Connection(R, "10.0.0.3:6783", True, False),))
    meshes[R].receive(Q, Gossip("topology", encode_entries([stale])), 0.0)  # long ago
    meshes[P] = Mesh(name=P, nickname="h1", uid=7, rng=random.Random(7))
    pump(meshes, link(meshes, P, Q))
    for mesh in meshes.values():
        entry = mesh.topology[P]
        assert (entry.uid, entry.version) == (7, 51), mesh.name


def test_a_digest_exchange_repairs_both_sides() -> None:
    a, b = pair()
    meshes = {10: a, 20: b}
    # Each learns of a new neighbour, and all the deltas about it are lost.
    for mesh, other in ((a, 30), (b, 40)):
        mesh.connection_up(other, address="10.0.0.9:6783", outbound=True, now=0.0)
        back = Connection(mesh.name, "10.0.0.8:6783", False, True)
        entry = PeerEntry(other, f"h{other}", 1, 2, (back,))
        mesh.receive(other, Gossip("topology", encode_entries([entry])), 0.0)
        mesh.tick(5.0)  # the prune batch keeps it: it is linked to us
    assert dict(a.topology) != dict(b.topology)
    pump(meshes, [(10, s) for s in a.tick(a.next_wake())])  # one anti-entropy round
    assert dict(a.topology) == dict(b.topology)
    assert set(a.topology) == {10, 20, 30, 40}
    assert a.statistics().channels["topology-digest"].messages_sent >= 1
    assert b.statistics().channels["topology-digest"].messages_sent == 1  # its reply


class Inbox(MaxRegister):
    """Records the unicasts and broadcasts delivered to it."""

    def __init__(self) -> None:
        super().__init__()
        self.delivered: list[tuple[int, bytes]] = []

    def on_unicast(self, source: int, payload: bytes) -> None:
        self.delivered.append((source, payload))

    def on_broadcast(self, source: int, payload: bytes) -> None:
        self.delivered.append((source, payload))


A, B, C, D, E = 10, 20, 30, 40, 50


def spoofing_mesh() -> dict[int, Mesh]:
    """B - A - C - D, and E hangs off A, all connected and converged."""
    meshes = {
        n: Mesh(name=n, nickname=f"h{n}", uid=n, rng=random.Random(n)) for n in (A, B, C, D, E)
    }
    for x, y in ((A, B), (A, C), (C, D), (A, E)):
        pump(meshes, link(meshes, x, y))
    return meshes


def test_a_unicast_is_accepted_only_from_where_its_claimed_source_can_send_it() -> None:
    """B - A - C - D, and E hangs off A: E forges unicasts for A in others' names."""
    meshes = spoofing_mesh()
    inbox = Inbox()
    meshes[A].register_channel("ipam", inbox)
    forged = [
        Unicast("ipam", 99, A, b"nobody"),  # a peer that does not exist
        Unicast("ipam", D, A, b"far"),  # D is reached through C, not E
        Unicast("ipam", B, A, b"other"),  # a neighbour's own messages come from it
        Unicast("ipam", A, A, b"us"),  # nor do we send ourselves anything through others
    ]
    for message in forged:
        assert meshes[A].receive(E, message, 0.0) == []
    assert inbox.delivered == []
    assert meshes[A].statistics().spoofed_unicasts == len(forged)
    assert meshes[A].last_rejection is not None
    # Relayed forgeries are dropped too (E asks A to forward to C in D's name).
    assert meshes[A].receive(E, Unicast("ipam", D, C, b"relay"), 0.0) == []
    # The real ones arrive.
    assert meshes[A].receive(E, Unicast("ipam", E, A, b"e"), 0.0) == []
    assert meshes[A].receive(C, Unicast("ipam", D, A, b"d"), 0.0) == []
    assert inbox.delivered == [(E, b"e"), (D, b"d")]
    assert meshes[A].statistics().spoofed_unicasts == len(forged) + 1


def test_a_broadcast_is_relayed_and_delivered_only_from_where_its_source_can_send_it() -> None:
    """B - A - C - D, and E hangs off A: E floods broadcasts in others' names."""
    meshes = spoofing_mesh()
    inbox = Inbox()
    meshes[A].register_channel("kv", inbox)
    for source in (99, D, B):  # nobody; reached through C; a neighbour of its own
        assert meshes[A].receive(E, Broadcast("kv", source, b"forged"), 0.0) == []
    assert inbox.delivered == [] and meshes[A].statistics().spoofed_broadcasts == 3
    relayed = meshes[A].receive(C, Broadcast("kv", D, b"real"), 0.0)
    assert inbox.delivered == [(D, b"real")] and {s.peer for s in relayed} == {B, E}


def test_hop_by_hop_unicasts_always_pass_the_source_check() -> None:
    sim = Simulation(30, seed=7)
    inboxes = {}
    for name, mesh in sim.meshes.items():
        inboxes[name] = Inbox()
        mesh.register_channel("kv", inboxes[name])
    converge(sim)
    for src in sim.names[:6]:
        for dst in sim.names:
            if dst != src:
                sim._dispatch(src, sim.meshes[src].unicast("kv", dst, b"%d" % src))
    sim.run()
    for dst in sim.names:
        assert sorted(s for s, _ in inboxes[dst].delivered) == sorted(
            s for s in sim.names[:6] if s != dst
        )
    assert all(m.statistics().spoofed_unicasts == 0 for m in sim.meshes.values())


def test_a_forged_topology_entry_at_the_maximum_version_does_not_cut_its_peer_off() -> None:
    """A - B - C with an attacker E on A: E sends B's entry at the maximum version."""
    A, B, C, E = 1, 2, 3, 5
    meshes = {n: Mesh(name=n, nickname=f"h{n}", uid=n, rng=random.Random(n)) for n in (A, B, C, E)}
    for x, y in ((A, B), (B, C), (A, E)):
        pump(meshes, link(meshes, x, y))
    real = meshes[A].topology[B]
    forged = PeerEntry(B, "h2", 666, (1 << 63) - 1, ())
    sends = meshes[A].receive(E, Gossip("topology", encode_entries([forged])), 0.0)
    pump(meshes, [(A, s) for s in sends])
    assert meshes[A].topology[B] == real
    assert meshes[A].statistics().implausible_versions == 1
    assert meshes[A].routes.next_hop(C) == B
    # A plausible forgery gets through, but B bumps past it and wins everywhere again.
    plausible = PeerEntry(B, "h2", 666, real.version + 1000, ())
    sends = meshes[A].receive(E, Gossip("topology", encode_entries([plausible])), 0.0)
    pump(meshes, [(A, s) for s in sends])
    for name in (A, C):
        entry = meshes[name].topology[B]
        assert entry.uid == B and entry.version == real.version + 1001, name
    assert meshes[A].routes.next_hop(C) == B


def test_an_installed_converged_state_is_what_gossip_converges_to() -> None:
    """``install_converged`` (how the bench reaches 10,000 peers) installs the very state that
    gossip reaches, and later changes gossip through the installed views as usual."""
    gossiped = Simulation(60, seed=9)
    converge(gossiped)
    installed = Simulation(60, seed=9)
    installed.install_converged()
    installed.run()
    assert installed.total().messages == 0
    assert installed.assert_consistent() == gossiped.assert_consistent()

    for sim in (gossiped, installed):
        a, b = next((a, b) for a in sim.names for b in sim.names[::-1] if (a, b) not in sim.links)
        sim.connect(a, b)
        sim.run()
        x, y = sorted(sim.links)[7]
        sim.disconnect(x, y)
        sim.run()
        sim.stop(sim.names[5])
        sim.run()
    after = installed.assert_consistent()
    assert after == gossiped.assert_consistent()
    assert sim.names[5] not in after


def test_routes_follow_every_change_incrementally() -> None:
    """Routes computed between changes are the previous routes updated (not rebuilt): after
    connections come, go, half-open and peers leave, they still equal fresh computations."""
    sim = Simulation(40, seed=12)
    converge(sim)
    sim.assert_consistent()  # every peer's routes are current: the next ones are updates
    rng = random.Random(3)
    before = sum(m.statistics().route_recomputations for m in sim.meshes.values())
    for step in range(12):
        live = sorted(sim.meshes)
        if step % 3 == 0:
            a, b = rng.sample(live, 2)
            if (a, b) not in sim.links:
                sim.connect(a, b)
        elif step % 3 == 1:
            a, b = rng.choice(sorted(link for link in sim.links if link[0] in sim.meshes))
            sim.set_established(a, b, established=False)
        else:
            a, b = rng.choice(sorted(link for link in sim.links if link[0] in sim.meshes))
            sim.disconnect(a, b)
        sim.run()
        if step == 6:
            sim.stop(live[0])
            sim.run(until=sim.now + 2.0)  # pruned
        sim.assert_consistent()
    assert sum(m.statistics().route_recomputations for m in sim.meshes.values()) > before


def test_a_prune_walks_only_when_a_path_may_have_been_lost() -> None:
    sim = Simulation(30, seed=4)
    converge(sim)
    sim.run(until=sim.now + 2.0)
    a, b = next((a, b) for a in sim.names for b in sim.names[::-1] if (a, b) not in sim.links)
    sim.connect(a, b)
    sim.run(until=sim.now + 2.0)
    # Only connections were added: nothing can have become unreachable, nothing to walk.
    assert not any(m._topology._prune_wanted for m in sim.meshes.values())
    gone = sim.names[3]
    sim.stop(gone)
    sim.run(until=sim.now + 2.0)
    assert all(gone not in m.topology for m in sim.meshes.values())


@settings(max_examples=100)
@given(
    st.dictionaries(st.integers(0, 9), st.integers()),
    st.lists(st.tuples(st.booleans(), st.integers(0, 12), st.integers()), max_size=30),
)
def test_a_copy_on_write_view_behaves_like_a_private_copy(
    base: dict[int, int], operations: list[tuple[bool, int, int]]
) -> None:
    shared = dict(base)
    view: CopyOnWrite[int, int] = CopyOnWrite(shared)
    model = dict(base)
    for write, key, value in operations:
        if write:
            view[key] = model[key] = value
        elif key in model:
            del view[key], model[key]
        else:
            with pytest.raises(KeyError):
                del view[key]
        assert dict(view) == model
        assert len(view) == len(model)
        assert all((k in view) == (k in model) for k in range(13))
        assert {k for k in range(13) if view.get(k) != base.get(k)} <= view.changed()
    assert shared == base
