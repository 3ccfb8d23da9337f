"""A whole mesh of ``Mesh`` cores in memory, on a fake clock, for tests and scale benchmarks.

Each directed link has a ``GossipOutbox`` (pending gossip merged) and a latency; a flush event
delivers everything pending on the link, round-tripped through msgpack so that the byte counts
are honest. Pure: no sockets and no real clock, so 1,000 peers fit in one process.

10,000 peers do not, if each gossips its way to its own full topology (10^8 entries). So
``install_converged`` can install the converged state directly: every peer holds a
copy-on-write view of one shared set of immutable entries, and what later changes are written
to that peer's own layer, by the real ``Mesh`` code, from real gossip.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TypeVar

import msgpack

from meshnet.constants import CONTROL_PORT
from meshnet.gossip.channel import GossipOutbox, Send
from meshnet.gossip.mesh import Mesh
from meshnet.gossip.messages import Gossip, decode_message, encode_message
from meshnet.gossip.routes import compute_routes
from meshnet.gossip.topology import PeerEntry

K = TypeVar("K")
V = TypeVar("V")


class CopyOnWrite(MutableMapping[K, V]):
    """A private writable view of a mapping shared by many simulated peers: what one writes or
    deletes stays in its own layer, the shared ``base`` never changes."""

    def __init__(self, base: Mapping[K, V]) -> None:
        self.base = base
        self.own: dict[K, V] = {}
        self.gone: set[K] = set()  # keys of ``base`` deleted here (never also in ``own``)

    def __getitem__(self, key: K) -> V:
        if key in self.own:
            return self.own[key]
        if key in self.gone:
            raise KeyError(key)
        return self.base[key]

    def __contains__(self, key: object) -> bool:
        return key in self.own or (key in self.base and key not in self.gone)

    def __setitem__(self, key: K, value: V) -> None:
        self.own[key] = value
        self.gone.discard(key)

    def __delitem__(self, key: K) -> None:
        if key not in self:
            raise KeyError(key)
        self.own.pop(key, None)
        if key in self.base:
            self.gone.add(key)

    def __iter__(self) -> Iterator[K]:
        yield from self.own
        for key in self.base:
            if key not in self.own and key not in self.gone:
                yield key

    def __len__(self) -> int:
        return len(self.base) - len(self.gone) + sum(1 for k in self.own if k not in self.base)

    def changed(self) -> set[K]:
        """Keys whose value here may differ from ``base``'s."""
        return {*self.own, *self.gone}


def random_graph(n: int, degree: float, rng: random.Random) -> list[tuple[int, int]]:
    """A connected graph on 0..n-1: a random tree plus random extra edges up to ~degree."""
    edges: set[tuple[int, int]] = set()
    for i in range(1, n):
        j = rng.randrange(i)
        edges.add((j, i))
    target = max(n - 1, round(n * degree / 2))
    while len(edges) < target and len(edges) < n * (n - 1) // 2:
        a, b = sorted(rng.sample(range(n), 2))
        edges.add((a, b))
    return sorted(edges)


def flat_graph(n: int, cap: int, rng: random.Random) -> list[tuple[int, int]]:
    """The graph a flat network (every peer reaches every other) gets from discovery under
    ``--discovery-limit cap``: peers join in turn, and each dials the peers that joined before
    it, fewest connections first (ties in random order), while it has fewer than ``cap``.
    Those it dials accept beyond their own cap."""
    edges: set[tuple[int, int]] = set()
    degree = [0] * n
    for i in range(1, n):
        ranked = sorted(range(i), key=lambda j: (degree[j], rng.random()))
        for j in ranked[:cap]:
            edges.add((j, i))
            degree[i] += 1
            degree[j] += 1
    return sorted(edges)


@dataclass
class Counts:
    messages: int = 0
    bytes: int = 0


class Simulation:
    """An event loop over ``(time, seq, event)``; links deliver after their latency."""

    def __init__(
        self,
        n: int,
        *,
        seed: int = 1,
        degree: float = 4.0,
        flat_cap: int | None = None,
        gossip_interval: float = math.inf,
        latency: tuple[float, float] = (0.005, 0.015),
        wire: bool = True,
    ) -> None:
        self.rng = random.Random(seed)
        self.gossip_interval = gossip_interval
        self.latency_range = latency
        self.wire = wire
        self.now = 0.0
        self.last_activity = 0.0
        self.names = sorted(self.rng.sample(range(1, 1 << 48), n))
        self.address = {
            name: f"10.{i >> 8 & 255}.{i & 255}.1:{CONTROL_PORT}"
            for i, name in enumerate(self.names)
        }
        self.inbound_ports = 0
        self.installed: dict[int, CopyOnWrite[int, PeerEntry]] = {}
        self.meshes: dict[int, Mesh] = {}
        self.outboxes: dict[int, GossipOutbox] = {}
        for name in self.names:
            self.start(name)
        self.links: set[tuple[int, int]] = set()
        self.latency: dict[tuple[int, int], float] = {}
        self.heap: list[tuple[float, int, str, int, int]] = []
        self.seq = 0
        self.flush_scheduled: set[tuple[int, int]] = set()
        self.tick_scheduled: dict[int, float] = {}
        self.sent: defaultdict[int, Counts] = defaultdict(Counts)
        graph = (
            random_graph(n, degree, self.rng)
            if flat_cap is None
            else flat_graph(n, flat_cap, self.rng)
        )
        self.edges = [(self.names[a], self.names[b]) for a, b in graph]

    def start(self, name: int) -> Mesh:
        """A (new or restarted) peer process: a fresh uid, no connections yet."""
        if name not in self.address:
            self.names.append(name)
            self.address[name] = (
                f"10.200.{len(self.names) >> 8 & 255}.{len(self.names) & 255}:{CONTROL_PORT}"
            )
        mesh = Mesh(
            name=name,
            nickname=f"h{self.names.index(name)}",
            uid=self.rng.getrandbits(64),
            rng=random.Random(self.rng.getrandbits(32)),
            gossip_interval=self.gossip_interval,
        )
        self.meshes[name] = mesh
        self.installed.pop(name, None)
        self.outboxes[name] = mesh.new_outbox()
        return mesh

    # --- topology changes

    def connect(self, a: int, b: int, *, gossip: bool = True) -> None:
        """``a`` dialled ``b``: both handshakes completed now. ``gossip`` False: what the two
        cores send about it is dropped (``install_converged`` delivers the outcome instead)."""
        self.links.update({(a, b), (b, a)})
        lat = self.rng.uniform(*self.latency_range)
        self.latency[a, b] = self.latency[b, a] = lat
        ip_a = self.address[a].rpartition(":")[0]
        # Each inbound connection comes from its own ephemeral port, as on a real host.
        self.inbound_ports += 1
        inbound = f"{ip_a}:{32768 + self.inbound_ports % 28000}"
        up_a = self.meshes[a].connection_up(b, address=self.address[b], outbound=True, now=self.now)
        up_b = self.meshes[b].connection_up(a, address=inbound, outbound=False, now=self.now)
        self._dispatch(a, up_a if gossip else [])
        self._dispatch(b, up_b if gossip else [])

    def install_converged(self) -> None:
        """Connect every edge and install the converged topology directly, without gossip.

        Gossiping 10,000 peers' state to each other is 10^8 entry merges; instead every peer
        adopts a copy-on-write view of the same final entries (the ones the peers produced
        themselves while connecting). What any peer learns afterwards is gossiped as usual.
        """
        for a, b in self.edges:
            self.connect(a, b, gossip=False)
        base = {name: mesh.topology[name] for name, mesh in self.meshes.items()}
        for name, mesh in self.meshes.items():
            view: CopyOnWrite[int, PeerEntry] = CopyOnWrite(base)
            mesh.adopt_topology(view)
            self.installed[name] = view

    def connect_all(self, edges: Iterable[tuple[int, int]] | None = None) -> None:
        for a, b in self.edges if edges is None else edges:
            self.connect(a, b)

    def set_established(self, a: int, b: int, *, established: bool) -> None:
        """``a`` found its data path to ``b`` proven (or lost); the control connection stays."""
        self._dispatch(a, self.meshes[a].set_established(b, established, self.now))

    def disconnect(self, a: int, b: int) -> None:
        self.links.difference_update({(a, b), (b, a)})
        for x, y in ((a, b), (b, a)):
            if x in self.meshes:
                self.outboxes[x].discard(y)
                self._dispatch(x, self.meshes[x].connection_down(y, self.now))

    def stop(self, name: int) -> list[int]:
        """The peer vanishes: its neighbours see their connections drop."""
        neighbours = sorted(self.meshes[name].neighbours)
        del self.meshes[name]
        self.installed.pop(name, None)
        for peer in neighbours:
            self.disconnect(peer, name)
        return neighbours

    # --- the loop

    def _push(self, at: float, kind: str, a: int, b: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, a, b))

    def _dispatch(self, src: int, sends: list[Send]) -> None:
        for peer in self.outboxes[src].put_all(sends):
            if (src, peer) not in self.flush_scheduled:
                self.flush_scheduled.add((src, peer))
                self._push(self.now + self.latency[src, peer], "flush", src, peer)
        self._wake(src)

    def _wake(self, name: int) -> None:
        mesh = self.meshes.get(name)
        if mesh is None:
            return
        due = mesh.next_wake()
        if due < self.tick_scheduled.get(name, math.inf):
            self.tick_scheduled[name] = due
            self._push(due, "tick", name)

    def _deliver(self, src: int, dst: int) -> None:
        self.flush_scheduled.discard((src, dst))
        messages = self.outboxes[src].take(dst) if src in self.outboxes else []
        if (src, dst) not in self.links or dst not in self.meshes:
            return
        for message in messages:
            if self.wire:
                frame = msgpack.packb(encode_message(message), use_bin_type=True)
                counts = self.sent[src]
                counts.messages += 1
                counts.bytes += len(frame)
                message = decode_message(msgpack.unpackb(frame, raw=False))
            else:
                self.sent[src].messages += 1
                self.sent[src].bytes += len(message.payload) if isinstance(message, Gossip) else 0
            self.last_activity = self.now
            self._dispatch(dst, self.meshes[dst].receive(src, message, self.now))

    def run(self, until: float = math.inf, max_events: int = 10_000_000) -> int:
        """Process events in time order; returns how many were processed."""
        done = 0
        while self.heap and done < max_events:
            at, _, kind, a, b = self.heap[0]
            if at > until:
                break
            heapq.heappop(self.heap)
            self.now = max(self.now, at)
            done += 1
            if kind == "flush":
                self._deliver(a, b)
            elif self.tick_scheduled.get(a) == at and a in self.meshes:
                del self.tick_scheduled[a]
                self._dispatch(a, self.meshes[a].tick(self.now))
        if until != math.inf:
            self.now = max(self.now, until)
        return done

    # --- observations

    def reset_counts(self) -> None:
        self.sent = defaultdict(Counts)

    def total(self) -> Counts:
        return Counts(
            sum(c.messages for c in self.sent.values()), sum(c.bytes for c in self.sent.values())
        )

    def common_topology(self) -> dict[int, PeerEntry] | None:
        """The topology every live peer holds, if they all hold the same one."""
        if self.installed and set(self.installed) == set(self.meshes):
            return self._common_installed()
        views = [dict(m.topology) for m in self.meshes.values()]
        first = views[0]
        return first if all(v == first for v in views) else None

    def _common_installed(self) -> dict[int, PeerEntry] | None:
        """``common_topology`` for installed views, comparing only what differs from the shared
        base (O(changes) per peer rather than O(peers))."""
        views = list(self.installed.values())
        first = views[0]
        first_changed = first.changed()
        for view in views[1:]:
            for key in first_changed | view.changed():
                if view.get(key) != first.get(key):
                    return None
        return dict(first)

    def assert_consistent(
        self, broadcast_sources: int = 5, route_sample: int | None = None
    ) -> dict[int, PeerEntry]:
        """Every peer holds the same topology, and (all, or ``route_sample`` random) peers'
        routes are what that topology gives."""
        common = self.common_topology()
        assert common is not None, "topology did not converge"
        assert set(common) == set(self.meshes)
        sources = self.rng.sample(sorted(self.meshes), min(broadcast_sources, len(self.meshes)))
        checked = sorted(self.meshes)
        if route_sample is not None and route_sample < len(checked):
            checked = self.rng.sample(checked, route_sample)
        for name in checked:
            mesh = self.meshes[name]
            expected = compute_routes(name, common)
            routes = mesh.routes
            assert routes.unicast == expected.unicast
            assert routes.distance == expected.distance
            assert len(routes.distance) == len(self.meshes)
            for source in sources:
                assert routes.broadcast[source] == expected.broadcast[source]
        return common


def converge(sim: Simulation) -> tuple[float, float]:
    started = time.perf_counter()
    sim.connect_all()
    sim.run()
    return sim.last_activity, time.perf_counter() - started
