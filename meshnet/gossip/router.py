"""The mesh's trio shell: listens and dials on TCP, runs handshakes and connections, and feeds
everything into the pure `Mesh` and `ConnectionMaker` cores.

One task per connection direction (reader, writer); what waits for a neighbour sits in one shared
`GossipOutbox` (merged per channel, bounded), and a writer is woken by a one-slot doorbell.

Subsystems hear about change through two `Watch` values (meshnet.gossip.events): ``views`` (routes
and known peers, published after a recalculation that changed them, bursts coalesced) and
``links`` (published when a neighbour's link comes, goes or is replaced). A heartbeat, or gossip
that changes nothing, publishes nothing. The data plane answers with a `PathVerdict` through
`report_path`, which never calls back into it.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import hashlib
import ipaddress
import logging
import math
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from meshnet.beats import next_beat
from meshnet.config import Config
from meshnet.constants import CONTROL_PORT
from meshnet.errors import RemoteProtocolError
from meshnet.gossip.admission import (
    HELLO_TIMEOUT,
    PendingBudget,
    Refuse,
    admit_authenticated,
)
from meshnet.gossip.channel import Gossiper, Send
from meshnet.gossip.connection_maker import (
    MAX_DISCOVERED_PER_PEER,
    ConnectionMaker,
    Source,
    listen_address,
    select_discovered,
    select_traffic,
)
from meshnet.gossip.events import NO_LINKS, LiveLinks, MeshView, PathVerdict, PeerLink, Watch
from meshnet.gossip.framing import FrameDecoder, FrameEncoder
from meshnet.gossip.handshake import (
    Handshake,
    HandshakeResult,
    HandshakeState,
    PasswordMismatch,
    SelfConnection,
    VersionMismatch,
)
from meshnet.gossip.identity import Identity, format_peer_name
from meshnet.gossip.mesh import Mesh
from meshnet.gossip.messages import Heartbeat, Message
from meshnet.gossip.routes import Routes, shortest_path
from meshnet.gossip.saved_targets import SavedTargets
from meshnet.gossip.throttle import LogThrottle, TokenBuckets

log = logging.getLogger("meshnet.router")

PROTOCOL_FEATURES: dict[str, str | int | bool] = {"gossip": 1}
_SLEEVE_KEY_PERSON = b"meshnet-sleeve"
READ_SIZE = 65536
# Reads before authentication are small: what a stranger makes us buffer stays a few KiB per
# pending connection (a Hello is far smaller; the handshake refuses a larger one unread).
PREAUTH_READ_SIZE = 4096
# How many failed or closed connections `status connections` remembers.
RECENT_FAILURES = 32
#: After publishing a new MeshView, wait this long before looking again: a burst of topology
#: gossip (a peer joining a big mesh) becomes one recalculation and one wake-up per subscriber
#: (data plane, DNS, fastdp, IPAM, punching), at most ten times a second; a lone change is
#: published at once. (While a 100-router lab came up on 2 cores, each router published 140-470
#: views, each one rebuilding the data plane's snapshot among others.)
VIEW_COALESCE = 0.1
#: The connection maker looks again at most this often: every topology change wakes it, and
#: while a 100-router lab came up, discovering and planning on each one (O(peers) a time) was a
#: fifth of each router's CPU. A dial waits this much longer at most.
MAKER_COALESCE = 0.1
# At most one log line per this many seconds about forged gossip (each one is counted).


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    FAILED = "failed"


@dataclass
class ConnectionRecord:
    """What `status connections` shows about one connection or attempt."""

    address: str
    outbound: bool
    state: ConnectionState
    since: float
    peer: Identity | None = None
    encrypted: bool = False
    last_error: str | None = None

    data_path: Mapping[str, Any] | None = None  # filled in by the data plane: state, pmtu, rtt

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "direction": "outbound" if self.outbound else "inbound",
            "state": self.state.value,
            "since": self.since,
            "peer": format_peer_name(self.peer.name) if self.peer else None,
            "nickname": self.peer.nickname if self.peer else None,
            "encrypted": self.encrypted,
            "last_error": self.last_error,
            "data_path": dict(self.data_path) if self.data_path is not None else None,
        }


class _Closed(Exception):
    """The connection ended; the message says why (for logs and status)."""


class _PreauthCut(_Closed):
    """An inbound connection closed before its Hello: no Hello in time, or its slot went to a
    newcomer. Counted and logged rate-limited, not one warning each (anyone can cause these)."""

    def __init__(self, reason: str, counter: str | None) -> None:
        super().__init__(reason)
        self.counter = counter


_CONNECTION_ERRORS = (
    _Closed,
    RemoteProtocolError,
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


@dataclass
class _Live:
    """An established connection's shell-side state."""

    record: ConnectionRecord
    stream: trio.SocketStream
    encoder: FrameEncoder
    doorbell_send: trio.MemorySendChannel[None]
    doorbell_receive: trio.MemoryReceiveChannel[None]
    link: PeerLink
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    last_received: float = 0.0


def _sleeve_key(control_key: bytes | None) -> bytes | None:
    if control_key is None:
        return None
    return hashlib.blake2b(key=control_key, person=_SLEEVE_KEY_PERSON, digest_size=32).digest()


class Router:
    def __init__(
        self,
        config: Config,
        identity: Identity,
        password: bytes | None,
        *,
        rng: random.Random | None = None,
        data_path: bool = False,
        saved_targets: SavedTargets | None = None,
        save_targets: Callable[[SavedTargets], None] | None = None,
    ) -> None:
        """``data_path``: connections count as established only once the data plane proves
        the UDP path both ways (`set_data_path`); without it, as soon as the handshake is done.
        ``saved_targets``: what `connect`/`forget` said before a restart (dialled along with
        the launch peers); ``save_targets`` keeps each change of it."""
        self._saved = saved_targets or SavedTargets()
        self._save_targets = save_targets
        self.config = config
        self.identity = identity
        self._password = password
        # Inbound handshakes with a password cost their source address a token; see throttle.
        self._auth_buckets = TokenBuckets()
        self._auth_logs = LogThrottle()
        self._rng = rng or random.Random()
        self.started = time.time()
        self.mesh = Mesh(
            name=identity.name,
            nickname=identity.nickname,
            uid=identity.uid,
            rng=self._rng,
            gossip_interval=config.gossip_interval,
        )
        self.outbox = self.mesh.new_outbox()
        self.maker = ConnectionMaker(self._rng, discovery=config.discovery)
        self._discovery_refused = 0  # advertised targets left out now (select_discovered)
        self._discovered_at = -1  # the mesh's topology_changes when discovery last looked
        self._discovery_warned = -math.inf
        self._live: dict[int, _Live] = {}
        self._attempts: list[ConnectionRecord] = []  # connecting or handshaking
        # Inbound connections not yet authenticated: their own budget, not --conn-limit's.
        self._pending = PendingBudget()
        self._pending_scopes: dict[int, trio.CancelScope] = {}  # ticket -> its handshake
        self._log_limits = LogThrottle()  # one warning per kind every 10 s
        # The latest failure per (address, direction), oldest first, bounded.
        self.recent_failures: collections.OrderedDict[tuple[str, bool], ConnectionRecord] = (
            collections.OrderedDict()
        )
        self.counters: collections.Counter[str] = collections.Counter()
        # Bytes on the wire of established control connections (frames, encryption and
        # heartbeats included): what the mesh's gossip costs, beyond the channels' payloads.
        self.control_bytes = {"sent": 0, "received": 0}
        self._wake_maker = trio.Event()
        self._wake_ticker = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._data_path = data_path
        self.links: Watch[LiveLinks] = Watch(NO_LINKS)
        self.views: Watch[MeshView] = Watch(self._view(self.mesh.routes))
        self._view_signature = self._signature(self.mesh.routes)
        self._maybe_changed = trio.Event()
        self._features = {**PROTOCOL_FEATURES, "sleeve_port": config.port}

    # --- public face (API) ---------------------------------------------------------------------

    @property
    def encrypted(self) -> bool:
        return self._password is not None

    def nick(self, name: int) -> str:
        entry = self.mesh.topology.get(name)
        return entry.nickname if entry else format_peer_name(name)

    def reachable(self, peer: int) -> bool:
        """Whether ``peer`` is alive as far as we can tell: a route to it exists, or it is a
        neighbour at all (its data path may not be proven yet: still alive, for `rmpeer`)."""
        return (
            peer == self.identity.name
            or peer in self.mesh.neighbours
            or self.mesh.routes.next_hop(peer) is not None
        )

    def known_peers(self) -> list[int]:
        """Every peer the topology knows of, ourselves included."""
        return sorted(self.mesh.topology)

    def connect(self, address: str) -> bool:
        added = self.maker.add(address, Source.CONNECT, trio.current_time())
        self._wake_maker.set()
        self._remember(self._saved.connected([address]))
        return added

    def replace_targets(self, addresses: Sequence[str]) -> list[str]:
        """`connect --replace`: the user's targets become ``addresses``; returns those dropped
        (targets learned from other peers stay: gossip would bring them back anyway)."""
        current = [t.address for t in self.maker.targets() if t.source.given]
        dropped = [a for a in current if a not in addresses]
        for address in dropped:
            self.maker.forget(address)
        self._discovered_at = -1  # those still advertised come back as discovered
        now = trio.current_time()
        for address in addresses:
            self.maker.add(address, Source.CONNECT, now)
        self._wake_maker.set()
        self._remember(self._saved.replaced(current, addresses))
        return dropped

    def forget(self, address: str) -> bool:
        given = any(t.address == address and t.source.given for t in self.maker.targets())
        forgotten = self.maker.forget(address)
        self._discovered_at = -1  # still advertised: discovery takes it back
        if given:  # one gossip brought is not the user's to keep forgotten
            self._remember(self._saved.forgot([address]))
        return forgotten

    def want_direct(self, peers: Iterable[int]) -> None:
        """``peers``: those we exchange traffic with (the data plane says). Each that is not
        a neighbour is dialled where gossip says it listens, beyond ``--discovery-limit``
        (within ``--conn-limit``): their traffic then goes direct, by fastdp or the sleeve,
        rather than relayed (see ``connection_maker``)."""
        strangers = set(peers) - self._live.keys() - {self.identity.name}
        listening = self.mesh.listening_addresses(strangers) if strangers else {}
        if self.maker.set_traffic(select_traffic(listening, self.config.port), trio.current_time()):
            self._wake_maker.set()

    def routes_changed(self) -> None:
        """The kernel's routes changed (the daemon follows its notifications): addresses that
        had no route are dialled again now."""
        self.counters["route_changes"] += 1
        if self.maker.routes_changed(trio.current_time()):
            self._wake_maker.set()

    def _remember(self, saved: SavedTargets) -> None:
        """Keep what the user said about targets for the next start (a failed write is
        logged: the running router has them anyway)."""
        if saved == self._saved:
            return
        self._saved = saved
        if self._save_targets is not None:
            try:
                self._save_targets(saved)
            except OSError as e:
                log.warning("targets not saved for the next start: %s", e)

    def connection_records(self) -> list[ConnectionRecord]:
        live = [c.record for c in self._live.values()]
        return live + list(self._attempts)

    def status(self) -> dict[str, Any]:
        states = collections.Counter(r.state.value for r in self.connection_records())
        return {
            "name": format_peer_name(self.identity.name),
            "nickname": self.identity.nickname,
            "uid": self.identity.uid,
            "port": self.config.port,
            # VXLAN's port, where a data plane may use fastdp (status dataplane: whether it does)
            "fastdp_port": (
                self.config.vxlan_port if self._data_path and self.config.fastdp else None
            ),
            "encryption": self.encrypted,
            "peers": len(self.mesh.topology),
            "connections": dict(states),
            "targets": [t.address for t in self.maker.targets()],
            "conn_limit": self.config.conn_limit,
            "discovery_limit": self.config.discovery_limit,
            "discovery": self.config.discovery,
            "discovery_refused": self._discovery_refused,
            "uptime": time.time() - self.started,
            "counters": dict(self.counters),
            "control_bytes": dict(self.control_bytes),
        }

    def peers(self) -> list[dict[str, Any]]:
        routes = self.mesh.data_routes
        topology = self.mesh.topology
        out = []
        for name, entry in sorted(topology.items()):
            path = shortest_path(topology, self.identity.name, name, punched=True)
            out.append(
                {
                    "name": format_peer_name(name),
                    "nickname": entry.nickname,
                    "uid": entry.uid,
                    "version": entry.version,
                    "local": name == self.identity.name,
                    "reachable": path is not None,
                    "next_hop": _opt_name(routes.next_hop(name)),
                    "via": [self.nick(p) for p in path[1:-1]] if path else [],
                    "hops": len(path) - 1 if path else None,
                    "connections": [
                        {
                            "peer": format_peer_name(c.peer),
                            "nickname": self.nick(c.peer),
                            "address": c.address,
                            "outbound": c.outbound,
                            "established": c.established,
                            "punched": c.punched,
                        }
                        for c in entry.connections
                    ],
                }
            )
        return out

    def connections(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.connection_records()] + [
            r.as_dict() for r in self.recent_failures.values()
        ]

    def targets(self) -> list[dict[str, Any]]:
        now = trio.current_time()
        return [
            {
                "address": t.address,
                "source": t.source.value,
                "state": t.state.value,
                "attempts": t.attempts,
                "last_error": t.last_error,
                "retry_in": max(0.0, t.next_attempt - now) if t.next_attempt else None,
                "peer": _opt_name(t.peer),
            }
            for t in self.maker.targets()
        ]

    # --- gossip channels for subsystems (IPAM, DNS, data plane) --------------------------------

    def register_channel(self, name: str, gossiper: Gossiper) -> None:
        self.mesh.register_channel(name, gossiper)

    def gossip(self, channel: str, delta: bytes) -> None:
        """A local change: the delta goes to every neighbour now (merged if one is pending)."""
        self._dispatch(self.mesh.gossip(channel, delta, trio.current_time()))

    def broadcast(self, channel: str, payload: bytes) -> None:
        self._dispatch(self.mesh.broadcast(channel, payload))

    def routable(self, peer: int) -> bool:
        """Whether ``unicast`` to ``peer`` goes out now: a route exists. A neighbour whose data
        path is not proven yet is ``reachable`` but has none: a unicast to it is dropped."""
        return peer == self.identity.name or self.mesh.routes.next_hop(peer) is not None

    def unicast(self, channel: str, destination: int, payload: bytes) -> bool:
        """Send to one peer, hop by hop; False if it is unreachable now (not ``routable``)."""
        if not self.routable(destination):
            return False
        self._dispatch(self.mesh.unicast(channel, destination, payload))
        return True

    # --- the data plane's view -----------------------------------------------------------------

    def peer_links(self) -> Mapping[int, PeerLink]:
        return self.links.current.links

    def report_path(self, verdict: PathVerdict) -> None:
        """The data plane's verdict on a neighbour's UDP path, and what status should show.

        Never calls back: a changed verdict reaches subscribers as a newer `MeshView`, later,
        from the router's own task.
        """
        live = self._live.get(verdict.peer)
        if live is None:
            return
        live.record.data_path = verdict.info
        if self._data_path:
            now = trio.current_time()
            self._dispatch(self.mesh.set_established(verdict.peer, verdict.established, now))
            self._maybe_changed.set()

    def report_punched(self, peer: int, address: str | None) -> None:
        """The data plane proved a UDP path punched to ``peer`` (at ``address``), or lost it
        (None): listed in our topology entry, so that every peer's data routes use it."""
        self._dispatch(self.mesh.set_punched(peer, address, trio.current_time()))
        self._maybe_changed.set()

    def _publish_links(self) -> None:
        self.links.publish(LiveLinks.of({peer: live.link for peer, live in self._live.items()}))

    def _view(self, routes: Routes) -> MeshView:
        return MeshView(
            routes=routes,
            peers=frozenset(self.mesh.topology),
            neighbours=frozenset(self.mesh.neighbours),
            data_routes=self.mesh.data_routes,
        )

    def _signature(self, routes: Routes) -> tuple[object, ...]:
        """What subscribers act on: next hops, distances, the graph (broadcast trees follow
        it), the known peers and the neighbours. Equal signatures: nothing to publish."""
        data_routes = self.mesh.data_routes
        return (  # the routes' own graphs: never changed once made, so no copies
            dict(routes.unicast),
            dict(routes.distance),
            routes.graph,
            frozenset(self.mesh.topology),
            frozenset(self.mesh.neighbours),
            dict(data_routes.unicast),
            data_routes.graph,
        )

    async def _publish_views(self) -> None:
        """Publish a `MeshView` after each recalculation that changed something.

        The mesh recomputes routes only after its topology changed (a merge that brought news, a
        connection or verdict change, a prune); the routes object is then a new one. Anything
        else, heartbeats included, leaves it as it was and publishes nothing.
        """
        routes = self.views.current.routes
        while True:
            await self._maybe_changed.wait()
            self._maybe_changed = trio.Event()
            if self.mesh.routes is routes:
                continue
            routes = self.mesh.routes
            signature = self._signature(routes)
            if signature != self._view_signature:
                self._view_signature = signature
                self.views.publish(self._view(routes))
                self.counters["views_published"] += 1
            await trio.sleep(VIEW_COALESCE)

    # --- the service ---------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        now = trio.current_time()
        for peer in self._saved.resumed(self.config.peers):
            launched = peer in self.config.peers
            if not launched:
                log.info("dialling %s again: added by `meshnet connect` before a restart", peer)
            self.maker.add(peer, Source.LAUNCH if launched else Source.CONNECT, now)
        for peer in sorted(self._saved.forgotten & set(self.config.peers)):
            log.info("not dialling %s: dropped by `meshnet forget` before a restart", peer)
        listeners = await trio.open_tcp_listeners(self.config.port)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(trio.serve_listeners, self._accept, listeners)
            nursery.start_soon(self._make_connections)
            nursery.start_soon(self._tick)
            nursery.start_soon(self._publish_views)
            log.info(
                "peer %s (%s) listening on TCP %d, %s",
                format_peer_name(self.identity.name),
                self.identity.nickname,
                self.config.port,
                "encrypted" if self._password else "unencrypted",
            )
            task_status.started()

    async def _make_connections(self) -> None:
        assert self._nursery is not None
        while True:
            now = trio.current_time()
            self._discover(now)
            # Inbound connections still in the handshake are not counted: strangers holding
            # sockets open must never stop us dialling the peers we were told to reach.
            dialling = sum(1 for a in self._attempts if a.outbound)
            busy = len(self._live) + dialling
            dial, wake = self.maker.plan(
                set(self._live),
                max(0, self.config.conn_limit - busy),
                now,
                discovery_slots=max(0, self.config.discovery_limit - busy),
            )
            unroutable = False
            for address in dial:
                reason = no_route(address)
                if reason is None:
                    self._nursery.start_soon(self._dial, address)
                else:  # fails as the dial would, without a socket, a task and a wake-up
                    unroutable = True
                    self.counters["dial_unroutable"] += 1
                    record = ConnectionRecord(address, True, ConnectionState.FAILED, time.time())
                    self._dial_failed(record, reason, unroutable=True)
            if unroutable:
                continue  # plan again: those targets now wait for their next attempt
            self._wake_maker = trio.Event()
            with trio.move_on_at(wake):
                await self._wake_maker.wait()
            await trio.sleep(MAKER_COALESCE)

    def _discover(self, now: float) -> None:
        if self.mesh.topology_changes == self._discovered_at:
            return  # nobody advertises anything new
        self._discovered_at = self.mesh.topology_changes
        discovery = select_discovered(self.mesh.advertised_addresses(), self.config.port)
        self.maker.set_discovered(set(discovery.addresses), now, self.mesh.listening_load())
        if discovery.refused > self._discovery_refused and now - self._discovery_warned >= 60:
            self._discovery_warned = now
            log.warning(
                "%s: %d advertised connections not dialled (another port than %d, or beyond "
                "%d per peer)",
                self.identity.nickname,
                discovery.refused,
                self.config.port,
                MAX_DISCOVERED_PER_PEER,
            )
        self._discovery_refused = discovery.refused

    async def _tick(self) -> None:
        while True:
            self._dispatch(self.mesh.tick(trio.current_time()))
            self._wake_maker.set()  # the topology may have told us of new peers
            self._maybe_changed.set()  # a prune may have changed it
            wake = self.mesh.next_wake()
            self._wake_ticker = trio.Event()
            with trio.move_on_at(wake if math.isfinite(wake) else trio.current_time() + 60):
                await self._wake_ticker.wait()

    async def _dial(self, address: str) -> None:
        record = ConnectionRecord(address, True, ConnectionState.CONNECTING, time.time())
        self._attempts.append(record)
        host, _, port = address.rpartition(":")
        try:
            with trio.fail_after(self.config.handshake_timeout):
                stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
        except (OSError, trio.TooSlowError) as e:
            self._attempts.remove(record)
            self._dial_failed(record, _describe(e))
            self._wake_maker.set()
            return
        await self._run_connection(stream, record)

    def _dial_failed(
        self, record: ConnectionRecord, reason: str, *, unroutable: bool = False
    ) -> None:
        self.counters["dial_failures"] += 1
        self.maker.attempt_failed(
            record.address, reason, trio.current_time(), unroutable=unroutable
        )
        self._fail(record, reason, level=logging.DEBUG)

    async def _accept(self, stream: trio.SocketStream) -> None:
        try:
            host, port = stream.socket.getpeername()[:2]
        except OSError:
            await stream.aclose()
            return
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if not self._may_try_password(address):  # before any budget is taken
            await stream.aclose()
            return
        decision = self._pending.offer(host, trio.current_time())
        if isinstance(decision, Refuse):
            self._preauth_cut(address, decision.reason.value, decision.reason.value)
            await stream.aclose()
            return
        if decision.evict is not None and decision.why is not None:
            self._preauth_cut(address, f"evicted for a newer: {decision.why.value}", None)
            self.counters[decision.why.value] += 1
            evicted = self._pending_scopes.pop(decision.evict, None)
            if evicted is not None:
                evicted.cancel()
        record = ConnectionRecord(address, False, ConnectionState.HANDSHAKING, time.time())
        self._attempts.append(record)
        await self._run_connection(stream, record, decision.ticket)

    def _may_try_password(self, address: str) -> bool:
        """Whether an inbound connection may start a handshake: with a password, one token of
        its source address's bucket (given back once it proves the password), so failed guesses
        are rate-limited per source and cost nothing once its bucket is empty."""
        if self._password is None:
            return True
        source = address.rpartition(":")[0]
        if self._auth_buckets.take(source, trio.current_time()):
            return True
        self.counters["auth_rate_limited"] += 1
        suppressed = self._auth_logs.allow(source, trio.current_time())
        if suppressed is not None:
            log.warning(
                "refusing connection from %s: too many failed password handshakes from %s"
                " (%d more failures and refusals from it not logged)",
                address,
                source,
                suppressed,
            )
        return False

    def _auth_failure_level(self, record: ConnectionRecord) -> int:
        """The level for a failure line about an inbound handshake: WARNING at most once per
        source every 10 s (saying how many were not logged), DEBUG otherwise."""
        if record.outbound:
            return logging.WARNING
        source = record.address.rpartition(":")[0]
        suppressed = self._auth_logs.allow(source, trio.current_time())
        if suppressed is None:
            return logging.DEBUG
        if suppressed:
            log.warning("%d failures and refusals from %s not logged", suppressed, source)
        return logging.WARNING

    def _preauth_cut(self, address: str, reason: str, counter: str | None) -> None:
        """Count a connection closed before authentication; log rate-limited."""
        if counter is not None:
            self.counters[counter] += 1
        suppressed = self._log_limits.allow("preauth", trio.current_time())
        if suppressed is not None:
            stats = self._pending.statistics()
            log.warning(
                "closed %d unauthenticated connection(s) lately, the latest from %s: %s"
                " (%d pending from %d addresses)",
                suppressed + 1,
                address,
                reason,
                stats.pending,
                stats.sources,
            )

    async def _run_connection(
        self, stream: trio.SocketStream, record: ConnectionRecord, ticket: int | None = None
    ) -> None:
        """Handshake, then run the connection until it ends; always leaves a clean state.

        ``ticket``: an inbound connection's place in the pending budget, given back once it
        authenticated or ended.
        """
        live: _Live | None = None
        try:
            record.state = ConnectionState.HANDSHAKING
            result = await self._handshake(stream, record, ticket)
            self._release_pending(ticket)
            if self._password is not None and not record.outbound:
                source = record.address.rpartition(":")[0]
                self._auth_buckets.give_back(source, trio.current_time())
            live = self._establish(stream, record, result)
            if live is None:
                return
            await self._serve_established(live, result.frame_decoder())
        except _PreauthCut as e:
            self._preauth_cut(record.address, str(e), e.counter)
        except _Closed as e:
            self._end(record, live, str(e))
        except SelfConnection:
            if record.outbound:
                self.maker.is_ourselves(record.address)
            self._end(record, live, "connected to ourselves", level=logging.DEBUG)
        except PasswordMismatch as e:
            self.counters[f"password_mismatch_{e.reason.value}"] += 1
            self.counters["auth_failures"] += 1
            self._end(record, live, f"refused: {e}", self._auth_failure_level(record))
        except VersionMismatch as e:
            self.counters["version_mismatch"] += 1
            self._end(record, live, f"refused: {e}", self._auth_failure_level(record))
        except RemoteProtocolError as e:
            self.counters["protocol_errors"] += 1
            self._end(record, live, f"protocol error: {e}")
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
            self._end(record, live, _describe(e))
        except trio.TooSlowError:
            self.counters["handshake_timeouts"] += 1
            self._end(record, live, "handshake timed out")
        except Exception as e:  # a bug must cost one connection, never the daemon
            self.counters["internal_errors"] += 1
            log.exception("internal error on connection %s", record.address)
            self._end(record, live, f"internal error: {type(e).__name__}")
        finally:
            self._release_pending(ticket)
            if record in self._attempts:
                self._attempts.remove(record)
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def _release_pending(self, ticket: int | None) -> None:
        if ticket is not None:
            self._pending.release(ticket)
            self._pending_scopes.pop(ticket, None)

    async def _handshake(
        self, stream: trio.SocketStream, record: ConnectionRecord, ticket: int | None
    ) -> HandshakeResult:
        """Run the handshake; an inbound one (``ticket``) must deliver its whole Hello within
        HELLO_TIMEOUT of accept and can be evicted until then. All of it within
        ``handshake_timeout``."""
        handshake = Handshake(
            local=self.identity,
            features=self._features,
            password=self._password,
            rng=os.urandom,
        )
        with trio.CancelScope() as evictable:
            if ticket is not None:
                self._pending_scopes[ticket] = evictable
            with trio.fail_after(self.config.handshake_timeout):
                with trio.move_on_after(HELLO_TIMEOUT if ticket is not None else math.inf) as hello:
                    await stream.send_all(handshake.initial_bytes())
                    while handshake.state is HandshakeState.AWAIT_HELLO:
                        await self._handshake_step(stream, handshake)
                if hello.cancelled_caught:
                    raise _PreauthCut(f"no hello within {HELLO_TIMEOUT:g} s", "hello_timeouts")
                if ticket is not None:
                    self._pending.hello_received(ticket)
                while handshake.result is None:
                    await self._handshake_step(stream, handshake)
                return handshake.result
        raise _PreauthCut("evicted for a newer connection", None)  # counted when evicted

    @staticmethod
    async def _handshake_step(stream: trio.SocketStream, handshake: Handshake) -> None:
        data = await stream.receive_some(PREAUTH_READ_SIZE)
        if not data:
            raise _Closed("closed by the peer during the handshake")
        try:
            reply = handshake.receive_data(data)
        except PasswordMismatch:
            # Our Confirm (if owed) lets the peer see the same clear failure.
            await _send_best_effort(stream, handshake.unsent_bytes())
            raise
        if reply:
            await stream.send_all(reply)

    def _establish(
        self, stream: trio.SocketStream, record: ConnectionRecord, result: HandshakeResult
    ) -> _Live | None:
        """Admit a handshaken connection, or drop it as a duplicate; None when dropped."""
        peer = result.remote.name
        record.peer = result.remote
        record.encrypted = result.send_key is not None
        existing = self._live.get(peer)
        if not admit_authenticated(
            outbound=record.outbound,
            live=len(self._live),
            conn_limit=self.config.conn_limit,
            replaces=existing is not None,
            configured=self._is_configured(peer, stream, _listen_port(result)),
        ):
            self.counters["refused_conn_limit"] += 1
            if self._log_limits.allow("conn_limit", trio.current_time()) is not None:
                log.warning(
                    "refusing connection from %s (%s): connection limit %d reached",
                    result.remote.nickname,
                    record.address,
                    self.config.conn_limit,
                )
            return None
        if existing is not None:
            if existing.record.outbound == record.outbound or self._keep_new(record.outbound, peer):
                # Same direction means the old one is a stale leftover of a restart; otherwise
                # both sides keep the connection dialled by the peer with the lower name.
                self.counters["duplicates_replaced"] += 1
                existing.cancel_scope.cancel()
                self._drop_live(peer, "replaced by a newer connection", failure=False)
            else:
                self.counters["duplicates_dropped"] += 1
                log.debug("dropping duplicate connection with %s", result.remote.nickname)
                if record.outbound:
                    self.maker.attempt_succeeded(record.address, peer)
                return None
        if record in self._attempts:
            self._attempts.remove(record)
        record.state = ConnectionState.ESTABLISHED
        record.since = time.time()
        record.last_error = None
        self.recent_failures.pop((record.address, record.outbound), None)
        doorbell_send, doorbell_receive = trio.open_memory_channel[None](1)
        sleeve_port = _listen_port(result)
        link = PeerLink(
            name=peer,
            nickname=result.remote.nickname,
            ip=str(stream.socket.getpeername()[0]),
            port=sleeve_port,
            send_key=_sleeve_key(result.send_key),
            receive_key=_sleeve_key(result.receive_key),
        )
        live = _Live(
            record,
            stream,
            result.frame_encoder(),
            doorbell_send,
            doorbell_receive,
            link,
            last_received=trio.current_time(),
        )
        self._live[peer] = live
        if record.outbound:
            self.maker.attempt_succeeded(record.address, peer)
        else:  # a peer's TCP and sleeve ports are the one config.port
            self.maker.reached_by(listen_address(link.ip, link.port), peer)
        self.counters["connections_established"] += 1
        log.info(
            "connection %s %s (%s, %s) established%s",
            "to" if record.outbound else "from",
            result.remote.nickname,
            format_peer_name(peer),
            record.address,
            ", encrypted" if record.encrypted else "",
        )
        self._dispatch(
            self.mesh.connection_up(
                peer,
                address=record.address,
                outbound=record.outbound,
                now=trio.current_time(),
                established=not self._data_path,
            )
        )
        self._wake_ticker.set()
        self._maybe_changed.set()
        self._publish_links()
        return live

    def _is_configured(self, peer: int, stream: trio.SocketStream, port: int) -> bool:
        """Whether ``peer`` is one we were told to connect to (launch or `connect`), known by
        its name from an earlier connection or by the address it listens at (``port``)."""
        try:
            ip = str(stream.socket.getpeername()[0])
        except OSError:
            return False
        listens = listen_address(ip, port)
        return any(
            t.source.given and (t.peer == peer or t.address == listens)
            for t in self.maker.targets()
        )

    def _keep_new(self, new_outbound: bool, peer: int) -> bool:
        # The connection to keep is the one dialled by the lower-named peer.
        dialled_by_us = new_outbound
        return dialled_by_us == (self.identity.name < peer)

    async def _serve_established(self, live: _Live, decoder: FrameDecoder) -> None:
        """Read, write and watch until one of them ends the connection; raise why."""
        ended: list[BaseException] = []

        async def until_error(loop: Callable[[], Awaitable[None]]) -> None:
            try:
                await loop()
                ended.append(_Closed("closed by the peer"))
            except _CONNECTION_ERRORS as e:
                ended.append(e)
            nursery.cancel_scope.cancel()

        with live.cancel_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(until_error, lambda: self._write_loop(live))
                nursery.start_soon(until_error, lambda: self._watchdog(live))
                nursery.start_soon(until_error, lambda: self._read_loop(live, decoder))
        if ended:
            raise ended[0]
        raise _Closed("replaced by a newer connection")

    async def _read_loop(self, live: _Live, decoder: FrameDecoder) -> None:
        peer = live.record.peer
        assert peer is not None
        while True:
            data = await live.stream.receive_some(READ_SIZE)
            if not data:
                return
            self.control_bytes["received"] += len(data)
            live.last_received = trio.current_time()
            decoder.receive_data(data)
            news = False
            while (message := decoder.next_message()) is not None:
                self.counters["messages_received"] += 1
                if isinstance(message, Heartbeat):
                    continue  # proves the connection alive (last_received), changes nothing
                news = True
                self._dispatch(self.mesh.receive(peer.name, message, trio.current_time()))
                if self.mesh.last_rejection is not None:
                    self._log_forgery(peer.nickname)
            if news:
                self._wake_ticker.set()  # a merge may have scheduled a prune
                self._maybe_changed.set()

    def _log_forgery(self, nickname: str) -> None:
        """A neighbour sent a forgery the mesh dropped (counted there): one line per 10 s."""
        what, self.mesh.last_rejection = self.mesh.last_rejection, None
        self.counters["forgeries_dropped"] += 1
        if self._log_limits.allow("forgery", trio.current_time()) is not None:
            log.warning(
                "dropped a forgery from %s: %s (%d so far)",
                nickname,
                what,
                self.counters["forgeries_dropped"],
            )

    async def _write_loop(self, live: _Live) -> None:
        peer = live.record.peer
        assert peer is not None
        while True:
            # On the shared beat, not each connection's own clock: an idle router's heartbeats
            # to all its neighbours go out in one wake-up (at most an interval after the last
            # send, as before).
            with trio.move_on_at(next_beat(trio.current_time(), self.config.heartbeat_interval)):
                await live.doorbell_receive.receive()
            messages: list[Message] = self.outbox.take(peer.name) or [Heartbeat()]
            data = b"".join(live.encoder.encode(m) for m in messages)
            self.counters["messages_sent"] += len(messages)
            self.control_bytes["sent"] += len(data)
            await live.stream.send_all(data)

    async def _watchdog(self, live: _Live) -> None:
        while True:
            idle = trio.current_time() - live.last_received
            if idle >= self.config.heartbeat_timeout:
                self.counters["heartbeat_timeouts"] += 1
                raise _Closed(f"no heartbeat for {idle:.0f}s")
            await trio.sleep(self.config.heartbeat_timeout - idle)

    def _dispatch(self, sends: list[Send]) -> None:
        for peer in self.outbox.put_all(sends):
            live = self._live.get(peer)
            if live is None:
                self.outbox.discard(peer)
                continue
            with contextlib.suppress(trio.WouldBlock):  # already rung
                live.doorbell_send.send_nowait(None)

    def _drop_live(self, peer: int, reason: str, *, failure: bool = True) -> None:
        live = self._live.pop(peer, None)
        if live is None:
            return
        self.counters["connections_terminated"] += 1  # Weave's weave_connection_terminations
        self.outbox.discard(peer)
        live.record.state = ConnectionState.FAILED
        live.record.last_error = reason
        if failure:
            self._remember_failure(live.record)
        nickname = live.record.peer.nickname if live.record.peer else "?"
        log.log(
            logging.INFO if failure else logging.DEBUG,
            "connection with %s (%s) closed: %s",
            nickname,
            live.record.address,
            reason,
        )
        self._dispatch(self.mesh.connection_down(peer, trio.current_time()))
        self._wake_maker.set()
        self._wake_ticker.set()
        self._maybe_changed.set()
        self._publish_links()

    def _end(
        self,
        record: ConnectionRecord,
        live: _Live | None,
        reason: str,
        level: int = logging.WARNING,
    ) -> None:
        if (
            live is not None
            and record.peer is not None
            and self._live.get(record.peer.name) is live
        ):
            self._drop_live(record.peer.name, reason)
            return
        if live is not None:
            return  # already replaced and recorded
        if record.outbound:
            self.maker.attempt_failed(record.address, reason, trio.current_time())
            self._wake_maker.set()
        self._fail(record, reason, level)

    def _remember_failure(self, record: ConnectionRecord) -> None:
        key = (record.address, record.outbound)
        self.recent_failures.pop(key, None)
        self.recent_failures[key] = record
        while len(self.recent_failures) > RECENT_FAILURES:
            self.recent_failures.popitem(last=False)

    def _fail(self, record: ConnectionRecord, reason: str, level: int = logging.WARNING) -> None:
        record.state = ConnectionState.FAILED
        record.last_error = reason
        self._remember_failure(record)
        who = f"{record.peer.nickname} ({record.address})" if record.peer else record.address
        log.log(
            level, "connection %s %s failed: %s", "to" if record.outbound else "from", who, reason
        )


def _listen_port(result: HandshakeResult) -> int:
    """Where the peer listens: its sleeve port, which is its TCP port too."""
    port = result.features.get("sleeve_port")
    if type(port) is not int or not 0 < port < 65536:
        return CONTROL_PORT
    return port


def _opt_name(name: int | None) -> str | None:
    return format_peer_name(name) if name is not None else None


def no_route(address: str) -> str | None:
    """Why the kernel has no route to a numeric ``address`` ("host:port", "[v6]:port"), or None.

    Connecting a UDP socket sends nothing: it only looks the route up. A router learns every
    address its peers advertise and dials them with backoff; on an underlay where many of them
    lead nowhere (other sites' private networks, a lab's point-to-point links), the retries of
    those dials were the largest idle cost of a young router in a sparse 100-host lab. Other
    errors, and names to resolve, are left to the real dial."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, int(port)))
        except OSError as e:
            if e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return _describe(e)
    return None


def _describe(e: BaseException) -> str:
    if isinstance(e, trio.TooSlowError):
        return "timed out"
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno).lower()
    # trio's open_tcp_stream wraps the per-address errors ("all attempts ... failed").
    cause = e.__cause__
    if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        return _describe(cause.exceptions[-1])
    if cause is not None:
        return _describe(cause)
    return str(e) or type(e).__name__


async def _send_best_effort(stream: trio.SocketStream, data: bytes) -> None:
    if not data:
        return
    with (
        trio.move_on_after(1),
        contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError),
    ):
        await stream.send_all(data)
