"""The router core: topology gossip, routes and subsystem channels, with no I/O.

The daemon's trio shell feeds it connection events, received messages and the time, and carries
out the ``Send`` actions it returns (through a ``GossipOutbox``, which merges pending gossip).

Topology travels as deltas: a change sends only the changed entries, and a peer relays only what
was new to it. A new neighbour gets the full entry set. Every ``gossip_interval``, ``fanout``
random neighbours get a digest of ``{name: (uid, version)}``, answered with just the entries
missing on either side (anti-entropy, which repairs anything lost).

Work that costs O(peers + connections) is batched rather than done per message: routes are
recomputed on first use after a change, and unreachable peers are pruned ``batch_delay`` after a
change (which also gives an entry that arrived before the entry linking it to us time to connect).
"""

from __future__ import annotations

import math
import random
import types
from collections import OrderedDict
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field, replace

from meshnet.gossip.channel import Gossiper, GossipOutbox, Send
from meshnet.gossip.messages import Broadcast, Gossip, Heartbeat, Message, Unicast
from meshnet.gossip.routes import Routes, compute_routes
from meshnet.gossip.topology import (
    Connection,
    PeerEntry,
    Topology,
    beats,
    decode_digest,
    decode_entries,
    encode_digest,
    encode_entries,
    lacks_any,
    merge_encoded_entries,
    merge_entry_sets,
    newer_than,
)

__all__ = [
    "TOPOLOGY_CHANNEL",
    "TOPOLOGY_DIGEST_CHANNEL",
    "ChannelStatistics",
    "Mesh",
    "MeshStatistics",
    "Send",
]

TOPOLOGY_CHANNEL = "topology"
TOPOLOGY_DIGEST_CHANNEL = "topology-digest"
_RESERVED = (TOPOLOGY_CHANNEL, TOPOLOGY_DIGEST_CHANNEL)
_RECENT_PAYLOADS = 1024
#: How long anti-entropy leaves a channel's unchanged full state unsent on a connection.
FULL_STATE_REFRESH = 300.0


@dataclass(frozen=True)
class ChannelStatistics:
    """Payload traffic of one channel (framing and encryption overhead are the shell's)."""

    messages_sent: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    bytes_received: int = 0


@dataclass(frozen=True)
class MeshStatistics:
    """What the API and the TUI show about the mesh core."""

    peers: int
    connections: int
    topology_version: int
    channels: Mapping[str, ChannelStatistics]
    unicast_drops: int
    unknown_channel_messages: int
    stray_messages: int
    route_recomputations: int
    pruned_peers: int
    anti_entropy_rounds: int
    #: Unicasts dropped because their claimed source could not have sent them our way.
    spoofed_unicasts: int = 0
    #: Broadcasts dropped for the same reason (not relayed, not delivered).
    spoofed_broadcasts: int = 0
    #: Topology entries dropped because their version jumped implausibly far (forgeries).
    implausible_versions: int = 0
    #: Anti-entropy's channel states left unsent: the connection carried the same bytes lately.
    states_unchanged: int = 0


@dataclass
class _Counters:
    sent: dict[str, list[int]] = field(default_factory=dict)
    received: dict[str, list[int]] = field(default_factory=dict)
    unicast_drops: int = 0
    unknown_channel: int = 0
    stray: int = 0
    recomputations: int = 0
    pruned: int = 0
    anti_entropy: int = 0
    states_unchanged: int = 0  # anti-entropy's channel states not sent again (see below)
    spoofed: int = 0
    spoofed_broadcasts: int = 0

    @staticmethod
    def tally(table: dict[str, list[int]], channel: str, messages: int, size: int) -> None:
        row = table.setdefault(channel, [0, 0])
        row[0] += messages
        row[1] += messages * size


class Mesh:
    """One peer's view of the mesh; every input is an explicit event with the current time."""

    def __init__(
        self,
        *,
        name: int,
        nickname: str,
        uid: int,
        rng: random.Random,
        gossip_interval: float = 30.0,
        fanout: int = 3,
        batch_delay: float = 1.0,
    ) -> None:
        self._name = name
        self._rng = rng
        self._interval = gossip_interval
        self._fanout = fanout
        self._batch_delay = batch_delay
        self._topology = Topology(name=name, nickname=nickname, uid=uid)
        self._neighbours: dict[int, Connection] = {}
        # UDP paths punched through NATs to peers we have no control connection with (listed
        # in our entry so that every peer's data routes include them; gossip never uses them).
        self._punched: dict[int, Connection] = {}
        self._channels: dict[str, Gossiper] = {}
        self._routes: Routes | None = None
        # The routes last computed, and the names whose entries changed since (None: unknown),
        # so that the next computation updates their graph instead of rebuilding it.
        self._routes_before: Routes | None = None
        self._changed_since_routes: set[int] | None = set()
        #: Counts every change of the topology: what was derived from it at another count is
        #: stale (discovered targets, say).
        self.topology_changes = 0
        self._data_routes: Routes | None = None
        self._next_gossip: float | None = None
        # Per neighbour and channel, the full state we last sent it on this connection (its
        # hash) and when: anti-entropy does not send the same bytes again over a connection that
        # loses nothing, except every FULL_STATE_REFRESH (a receiver may have set one aside).
        self._states_sent: dict[int, dict[str, tuple[int, float]]] = {}
        self._prune_due: float | None = None
        self._counters = _Counters()
        # The entries behind topology payloads we produced lately, so that coalescing pending
        # sends (merge_gossip) need not decode our own bytes again. Bounded; a miss only costs
        # a decode.
        self._recent_payloads: OrderedDict[bytes, list[PeerEntry]] = OrderedDict()
        # Per claimed unicast source, the neighbours its unicasts may arrive from; valid for
        # one routes snapshot (at most one row per reachable peer).
        self._arrivals: dict[int, frozenset[int]] = {}
        self._arrivals_routes: Routes | None = None
        #: What the latest dropped forgery was, for the shell's (rate-limited) log line.
        self.last_rejection: str | None = None

    # --- read side

    @property
    def name(self) -> int:
        return self._name

    @property
    def topology(self) -> Mapping[int, PeerEntry]:
        """Read-only live view of every known peer entry, ours included."""
        return self._topology.entries

    @property
    def neighbours(self) -> Mapping[int, Connection]:
        return types.MappingProxyType(self._neighbours)

    @property
    def routes(self) -> Routes:
        """The current snapshot; recomputed on first use after a topology change."""
        if self._routes is None:
            changed = self._changed_since_routes
            self._routes = compute_routes(
                self._name,
                self._topology.entries,
                previous=None if changed is None else self._routes_before,
                changed=changed or (),
            )
            self._routes_before = self._routes
            self._changed_since_routes = set()
            self._counters.recomputations += 1
        return self._routes

    @property
    def data_routes(self) -> Routes:
        """The data plane's routes: over punched paths too (the same object as ``routes``
        while no peer lists one)."""
        if self._data_routes is None:
            entries = self._topology.entries
            if any(c.punched for e in entries.values() for c in e.connections):
                self._data_routes = compute_routes(self._name, entries, punched=True)
                self._counters.recomputations += 1
            else:
                self._data_routes = self.routes
        return self._data_routes

    @property
    def punched(self) -> Mapping[int, Connection]:
        return types.MappingProxyType(self._punched)

    def discovered_addresses(self) -> set[str]:
        """Listening addresses of peers we are not connected to, from others' outbound links."""
        return {a for found in self.advertised_addresses().values() for a in found}

    def advertised_addresses(self) -> dict[int, set[str]]:
        """``discovered_addresses`` by the peer that advertises them (to be capped per peer:
        ``meshnet.gossip.connection_maker.select_discovered``)."""
        found: dict[int, set[str]] = {}
        for name, entry in self._topology.entries.items():
            if name == self._name:
                continue
            for conn in entry.connections:
                if conn.outbound and conn.peer != self._name and conn.peer not in self._neighbours:
                    found.setdefault(name, set()).add(conn.address)
        return found

    def listening_load(self) -> dict[str, int]:
        """Address a peer was dialled at -> how many connections that peer's entry lists
        (discovery dials the least connected first)."""
        entries = self._topology.entries
        load: dict[str, int] = {}
        for entry in entries.values():
            for conn in entry.connections:
                if conn.outbound and conn.peer != self._name:
                    target = entries.get(conn.peer)
                    load[conn.address] = len(target.connections) if target is not None else 0
        return load

    def listening_addresses(self, peers: Iterable[int]) -> dict[int, dict[str, int]]:
        """Where each of ``peers`` listens, as other peers dialled it: address -> how many
        entries list a connection dialled there (to be chosen from: ``select_traffic``)."""
        wanted = set(peers)
        found: dict[int, dict[str, int]] = {}
        for name, entry in self._topology.entries.items():
            if name == self._name:
                continue
            for conn in entry.connections:
                if conn.outbound and conn.peer in wanted:
                    counts = found.setdefault(conn.peer, {})
                    counts[conn.address] = counts.get(conn.address, 0) + 1
        return found

    def statistics(self) -> MeshStatistics:
        c = self._counters
        channels = {}
        for channel in sorted({*c.sent, *c.received}):
            sent = c.sent.get(channel, [0, 0])
            received = c.received.get(channel, [0, 0])
            channels[channel] = ChannelStatistics(sent[0], sent[1], received[0], received[1])
        return MeshStatistics(
            peers=len(self._topology),
            connections=len(self._neighbours),
            topology_version=self._topology.local.version,
            channels=types.MappingProxyType(channels),
            unicast_drops=c.unicast_drops,
            unknown_channel_messages=c.unknown_channel,
            stray_messages=c.stray,
            route_recomputations=c.recomputations,
            pruned_peers=c.pruned,
            anti_entropy_rounds=c.anti_entropy,
            spoofed_unicasts=c.spoofed,
            spoofed_broadcasts=c.spoofed_broadcasts,
            implausible_versions=self._topology.implausible,
            states_unchanged=c.states_unchanged,
        )

    def next_wake(self) -> float:
        """When ``tick`` next has work (``inf``: not until some other event)."""
        due = [t for t in (self._next_gossip, self._prune_due) if t is not None]
        return min(due, default=math.inf)

    def adopt_topology(self, entries: MutableMapping[int, PeerEntry]) -> None:
        """Hold a converged topology validated elsewhere (see ``Topology.adopt``): how a
        simulation installs 10,000 peers' state without gossiping it."""
        self._topology.adopt(entries)
        self._forget_routes(None)

    # --- channels

    def register_channel(self, name: str, gossiper: Gossiper) -> None:
        if name in _RESERVED or name in self._channels:
            raise ValueError(f"gossip channel {name!r} is reserved or already registered")
        if not name or len(name) > 64:
            raise ValueError(f"bad gossip channel name {name!r}")
        self._channels[name] = gossiper

    def merge_gossip(self, channel: str, a: bytes, b: bytes) -> bytes:
        """Coalesce two pending payloads of ours (what a ``GossipOutbox`` needs)."""
        if channel == TOPOLOGY_CHANNEL:
            ea, eb = self._recent_payloads.get(a), self._recent_payloads.get(b)
            if ea is None or eb is None:
                return merge_encoded_entries(a, b)
            return self._encode_topology(merge_entry_sets(ea, eb))
        if channel == TOPOLOGY_DIGEST_CHANNEL:
            return b  # a digest is a snapshot: the later one says it all
        gossiper = self._channels.get(channel)
        return b if gossiper is None else gossiper.merge_payloads(a, b)

    def new_outbox(self, *, max_queued: int = 1024) -> GossipOutbox:
        return GossipOutbox(self.merge_gossip, max_queued=max_queued)

    # --- events

    def connection_up(
        self, peer: int, *, address: str, outbound: bool, now: float, established: bool = True
    ) -> list[Send]:
        """A handshake completed: announce it, and give the new neighbour everything we know.

        ``established`` False: the control connection is up but the data path is not proven yet
        (routes avoid it until ``set_established``).
        """
        if peer == self._name:
            raise ValueError("a connection to ourselves")
        self._neighbours[peer] = Connection(peer, address, outbound, established)
        self._states_sent.pop(peer, None)
        sends: list[Send] = []
        entry = self._topology.set_local_connections(self._local_connections())
        if entry is not None:
            self._topology_changed(now, [self._name])
            others = [p for p in self._neighbours if p != peer]
            sends += self._emit(others, Gossip(TOPOLOGY_CHANNEL, self._encode_topology([entry])))
        sends += self._full_state_to([peer], now)
        if self._next_gossip is None:
            self._next_gossip = now + self._jittered_interval()
        return sends

    def set_established(self, peer: int, established: bool, now: float) -> list[Send]:
        """The data path to a neighbour was proven (or lost): announce the change."""
        conn = self._neighbours.get(peer)
        if conn is None or conn.established == established:
            return []
        self._neighbours[peer] = replace(conn, established=established)
        entry = self._topology.set_local_connections(self._local_connections())
        if entry is None:
            return []
        self._topology_changed(now, [self._name])
        return self._emit(
            list(self._neighbours), Gossip(TOPOLOGY_CHANNEL, self._encode_topology([entry]))
        )

    def set_punched(self, peer: int, address: str | None, now: float) -> list[Send]:
        """A punched UDP path to ``peer`` is proven (``address``: where it goes) or gone
        (None): announce it; routes over it are the data plane's only."""
        if peer == self._name:
            raise ValueError("a punched path to ourselves")
        if address is None:
            changed = self._punched.pop(peer, None) is not None
        else:
            conn = Connection(peer, address, outbound=False, established=True, punched=True)
            changed = self._punched.get(peer) != conn
            self._punched[peer] = conn
        entry = self._topology.set_local_connections(self._local_connections())
        if not changed or entry is None:
            return []
        self._topology_changed(now, [self._name])
        return self._emit(
            list(self._neighbours), Gossip(TOPOLOGY_CHANNEL, self._encode_topology([entry]))
        )

    def _local_connections(self) -> list[Connection]:
        """What our entry lists: control connections, and punched paths to other peers."""
        punched = [c for p, c in self._punched.items() if p not in self._neighbours]
        return [*self._neighbours.values(), *punched]

    def connection_down(self, peer: int, now: float) -> list[Send]:
        if self._neighbours.pop(peer, None) is None:
            return []
        self._states_sent.pop(peer, None)
        entry = self._topology.set_local_connections(self._local_connections())
        if entry is None:
            return []
        self._topology_changed(now, [self._name])
        return self._emit(
            list(self._neighbours), Gossip(TOPOLOGY_CHANNEL, self._encode_topology([entry]))
        )

    def receive(self, from_peer: int, message: Message, now: float) -> list[Send]:
        """Handle a neighbour's message; RemoteProtocolError if its payload is malformed."""
        if from_peer not in self._neighbours:
            self._counters.stray += 1  # raced with connection_down: nothing to do
            return []
        match message:
            case Heartbeat():
                return []
            case Gossip(channel, payload):
                self._counters.tally(self._counters.received, channel, 1, len(payload))
                if channel == TOPOLOGY_CHANNEL:
                    return self._receive_topology(from_peer, payload, now)
                if channel == TOPOLOGY_DIGEST_CHANNEL:
                    return self._receive_digest(from_peer, payload)
                gossiper = self._channels.get(channel)
                if gossiper is None:
                    self._counters.unknown_channel += 1
                    return []
                delta = gossiper.on_gossip(payload)
                if delta is None:
                    return []
                others = [p for p in self._neighbours if p != from_peer]
                return self._emit(others, Gossip(channel, delta))
            case Broadcast(channel, source, payload):
                self._counters.tally(self._counters.received, channel, 1, len(payload))
                if source == self._name:
                    self._counters.stray += 1
                    return []
                if self._spoofed("broadcast", channel, source, from_peer):
                    self._counters.spoofed_broadcasts += 1
                    return []
                hops = [p for p in self.routes.broadcast_hops(source) if p != from_peer]
                sends = self._emit(hops, message)
                gossiper = self._channels.get(channel)
                if gossiper is None:
                    self._counters.unknown_channel += 1  # still forwarded: others may know it
                else:
                    gossiper.on_broadcast(source, payload)
                return sends
            case Unicast(channel, source, destination, payload):
                self._counters.tally(self._counters.received, channel, 1, len(payload))
                if self._spoofed("unicast", channel, source, from_peer):
                    self._counters.spoofed += 1
                    return []
                if destination != self._name:
                    return self._forward_unicast(message)
                gossiper = self._channels.get(channel)
                if gossiper is None:
                    self._counters.unknown_channel += 1
                else:
                    gossiper.on_unicast(source, payload)
                return []
        raise TypeError(f"not a message: {message!r}")

    def tick(self, now: float) -> list[Send]:
        """Batched pruning and periodic anti-entropy, when due."""
        if self._prune_due is not None and now >= self._prune_due:
            self._prune_due = None
            gone = self._topology.prune_unreachable()
            if gone:
                self._counters.pruned += len(gone)
                self._forget_routes(gone)
        sends: list[Send] = []
        if self._next_gossip is not None and now >= self._next_gossip:
            self._next_gossip = now + self._jittered_interval()
            if self._neighbours:
                count = min(self._fanout, len(self._neighbours))
                targets = self._rng.sample(sorted(self._neighbours), count)
                self._counters.anti_entropy += 1
                sends += self._full_state_to(targets, now, digest=True)
        return sends

    # --- local subsystems

    def gossip(self, channel: str, delta: bytes, now: float) -> list[Send]:
        """A local change of a subsystem's state: the delta goes to every neighbour at once."""
        self._check_channel(channel)
        return self._emit(list(self._neighbours), Gossip(channel, delta))

    def broadcast(self, channel: str, payload: bytes) -> list[Send]:
        self._check_channel(channel)
        message = Broadcast(channel, self._name, payload)
        return self._emit(list(self.routes.broadcast_hops(self._name)), message)

    def unicast(self, channel: str, destination: int, payload: bytes) -> list[Send]:
        """Hop by hop along the routes; [] (and counted) if ``destination`` is unreachable."""
        gossiper = self._check_channel(channel)
        if destination == self._name:
            gossiper.on_unicast(self._name, payload)
            return []
        return self._forward_unicast(Unicast(channel, self._name, destination, payload))

    # --- internals

    def _check_channel(self, channel: str) -> Gossiper:
        gossiper = self._channels.get(channel)
        if gossiper is None:
            raise ValueError(f"gossip channel {channel!r} is not registered")
        return gossiper

    def _spoofed(self, kind: str, channel: str, source: int, from_peer: int) -> bool:
        """Whether a message claiming ``source`` cannot have come from ``from_peer`` (noted in
        ``last_rejection``)."""
        if self._may_arrive_from(source, from_peer):
            return False
        self.last_rejection = (
            f"{kind} on {channel!r} claiming source {source:012x} "
            f"arrived from neighbour {from_peer:012x}"
        )
        return True

    def _may_arrive_from(self, source: int, neighbour: int) -> bool:
        """Whether a unicast or broadcast from ``source`` can reach us through ``neighbour``.

        The neighbour is authenticated by its connection; the source it claims is only a field.
        Either the neighbour is the source, or the source is a peer the routes reach and the
        neighbour is one hop closer to it than we are (on a shortest path from the source to us,
        which is where hop-by-hop forwarding brings it). Anything else is a forgery, such as an
        IPAM donation request in the name of a peer that does not exist.
        """
        if source == neighbour:
            return True
        if source == self._name:
            return False
        routes = self.routes
        if source not in routes.distance:
            return False
        if self._arrivals_routes is not routes:
            self._arrivals_routes = routes
            self._arrivals = {}
        hops = self._arrivals.get(source)
        if hops is None:
            graph = routes.graph  # the same graph; rebuilding it per source was O(N·E)
            distance = {source: 0}
            queue = [source]
            for node in queue:  # BFS from the source (the list grows as we go)
                for nbr in graph.get(node, ()):
                    if nbr not in distance:
                        distance[nbr] = distance[node] + 1
                        queue.append(nbr)
            ours = distance.get(self._name)
            hops = frozenset(
                n for n in graph.get(self._name, ()) if ours is not None and distance[n] == ours - 1
            )
            self._arrivals[source] = hops
        return neighbour in hops

    def _forward_unicast(self, message: Unicast) -> list[Send]:
        hop = self.routes.next_hop(message.destination)
        if hop is None or hop not in self._neighbours:
            self._counters.unicast_drops += 1
            return []
        return self._emit([hop], message)

    def _emit(self, peers: list[int], message: Gossip | Broadcast | Unicast) -> list[Send]:
        if peers:
            self._counters.tally(
                self._counters.sent, message.channel, len(peers), len(message.payload)
            )
        return [Send(peer, message) for peer in peers]

    def _full_state_to(self, peers: list[int], now: float, *, digest: bool = False) -> list[Send]:
        """Everything we know; for anti-entropy, the topology only as a digest, and of each
        channel's state only what this connection has not carried lately.

        A digest costs ~20 bytes per peer instead of a whole entry; the neighbour answers with
        the entries we lack and, if it lacks some of ours, with its own digest (a reply, which
        is never answered with another digest). A channel's full state (IPAM's ring, DNS's
        records: tens of KB in a mesh of 100) is sent again only once it changed since it last
        went over the connection, or FULL_STATE_REFRESH later: the connection loses nothing, so
        the neighbour holds it already (and was sent every change since, as a delta).
        """
        if digest:
            payload = encode_digest(self._topology.digest(), reply=False)
            sends = self._emit(peers, Gossip(TOPOLOGY_DIGEST_CHANNEL, payload))
        else:
            entries = [self._topology.entries[n] for n in sorted(self._topology.entries)]
            sends = self._emit(peers, Gossip(TOPOLOGY_CHANNEL, self._encode_topology(entries)))
        for channel, gossiper in self._channels.items():
            state = gossiper.full_state()
            if state is None:
                continue
            fingerprint = hash(state)
            due = []
            for peer in peers:
                sent = self._states_sent.setdefault(peer, {})
                last = sent.get(channel)
                if last is None or last[0] != fingerprint or now - last[1] >= FULL_STATE_REFRESH:
                    sent[channel] = (fingerprint, now)
                    due.append(peer)
                else:
                    self._counters.states_unchanged += 1
            sends += self._emit(due, Gossip(channel, state))
        return sends

    def _encode_topology(self, entries: list[PeerEntry]) -> bytes:
        payload = encode_entries(entries)
        self._recent_payloads[payload] = entries
        if len(self._recent_payloads) > _RECENT_PAYLOADS:
            self._recent_payloads.popitem(last=False)
        return payload

    def _jittered_interval(self) -> float:
        # Jitter keeps peers that started together from gossiping in lockstep.
        return self._interval * self._rng.uniform(0.8, 1.2)

    def _topology_changed(self, now: float, names: Iterable[int] | None = None) -> None:
        """The entries of ``names`` (None: of unknown peers) changed: prune later."""
        self._forget_routes(names)
        if self._prune_due is None:
            self._prune_due = now + self._batch_delay

    def _forget_routes(self, names: Iterable[int] | None) -> None:
        """The entries of ``names`` changed (added, replaced or removed; None: unknown
        ones): routes are stale."""
        self.topology_changes += 1
        self._routes = None
        self._data_routes = None
        changed = self._changed_since_routes
        if names is None:
            self._changed_since_routes = None  # the next routes are rebuilt
        elif changed is not None:
            changed.update(names)
            if len(changed) > len(self._topology) // 4:
                self._changed_since_routes = None  # rebuilding is as cheap by now

    def _receive_digest(self, from_peer: int, payload: bytes) -> list[Send]:
        reply, digest = decode_digest(payload)
        entries = self._topology.entries
        sends: list[Send] = []
        theirs_missing = newer_than(entries, digest)
        if theirs_missing:
            message = Gossip(TOPOLOGY_CHANNEL, self._encode_topology(theirs_missing))
            sends += self._emit([from_peer], message)
        if not reply and lacks_any(entries, digest):
            mine = encode_digest(self._topology.digest(), reply=True)
            sends += self._emit([from_peer], Gossip(TOPOLOGY_DIGEST_CHANNEL, mine))
        return sends

    def _receive_topology(self, from_peer: int, payload: bytes, now: float) -> list[Send]:
        received = decode_entries(payload, self._topology.by_encoding)
        implausible = self._topology.implausible
        new = self._topology.merge(received)
        if self._topology.implausible != implausible:
            self.last_rejection = (
                f"{self._topology.implausible - implausible} topology entries from neighbour "
                f"{from_peer:012x} with an implausible version jump"
            )
        sends: list[Send] = []
        back: list[PeerEntry] = [e for e in new if e.name == self._name]
        if new:
            self._topology_changed(now, (e.name for e in new))
            others = [p for p in self._neighbours if p != from_peer]
            sends += self._emit(others, Gossip(TOPOLOGY_CHANNEL, self._encode_topology(new)))
        # A different incarnation that lost here would otherwise sit in the sender's view
        # forever (we do not relay losers): tell the sender what beat it, so the conflict
        # travels on until the restarted peer itself sees it and bumps past it.
        entries = self._topology.entries
        for entry in received:
            ours = entries.get(entry.name)
            if (
                entry.name != self._name
                and ours is not None
                and ours.uid != entry.uid
                and beats(ours, entry)
            ):
                back.append(ours)
        if back:
            back.sort(key=lambda e: e.name)
            sends += self._emit([from_peer], Gossip(TOPOLOGY_CHANNEL, self._encode_topology(back)))
        return sends
