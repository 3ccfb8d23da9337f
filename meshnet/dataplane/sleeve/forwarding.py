"""The sleeve's forwarding decision: what to do with a captured frame or a received datagram.

One pure function per direction, like weave's ``handleCapturedPacket`` returning a ``FlowOp``:

- :func:`captured`: a frame the bridge handed to our TAP, as the switch classified it ->
  :class:`Send` (new datagrams to these neighbours) or :class:`Drop`.
- :func:`received`: the checked header of a datagram from a neighbour -> :class:`Control`, or
  :class:`Deliver` (into our bridge, through the switch) and/or :class:`Relay` (pass it on to a
  neighbour, re-sealed, with :meth:`DatagramHeader.relayed`), or :class:`Drop`.

The packet thread (:mod:`meshnet.dataplane.sleeve.forwarder`) only executes the operations. The
rules, property-tested on random topologies in ``tests/unit/test_forwarding.py``:

- **Unicast** goes to ``routes.next_hop(destination)``, hop by hop; each hop is one step closer
  on every peer's identical BFS, so it arrives once and never goes back where it came from (a
  datagram whose next hop is its previous one means two views disagree: dropped, "loop").
- **Floods** from our bridge go down our broadcast tree; every peer relays a broadcast datagram
  down the *origin's* tree (never to the hop it came from) and delivers it, so each peer
  delivers each flood exactly once.
- **fastdp** (the kernel's VXLAN) already carried a flood to the fastdp neighbours and a unicast
  to a MAC pinned on the VXLAN port: the sleeve drops the unicast ("on_fastdp") and sends the
  flood down our tree all the same, but to a fastdp neighbour flagged PASSING: it relays the
  flood down our tree without delivering it again. That costs one datagram per peer reached.
  A fastdp neighbour that never said it understands PASSING (a router from before it) gets
  no flood down a tree, which would deliver there twice: then every peer but the fastdp
  neighbours gets its own copy addressed to it, relayed hop by hop (one datagram per hop of
  every path, several times the tree's).
- **TTL** leaves the origin at :data:`MAX_TTL` and a relay sends ``ttl - 1``; what would leave
  with 0 is dropped ("ttl"), so a transient loop between disagreeing peers dies out.
- A datagram carrying our own name as its origin has come back to us: dropped ("loop").
- **Origins are checked**: a data datagram must claim an origin the routes know
  ("unknown_origin") and come from the neighbour the routes bring that origin's datagrams to
  us through: for unicast the previous hop on the origin's path to the destination, for a
  flood our parent in the origin's tree ("wrong_hop"). A neighbour (even one holding the
  password) cannot make us keep state for origins that do not exist, or speak for peers whose
  traffic would never pass through it. Two exceptions keep a route change from dropping
  traffic while views disagree (one router moves onto a new path before the other knows of it):
  a neighbour's *own* datagrams (origin and hop the same, which its key or endpoint vouches
  for) pass whatever our routes say, and for :data:`ROUTE_GRACE` seconds after our routes
  changed, so do datagrams the replaced routes (``recent_routes``) would have let through.

Speed: the answers are precomputed when a :class:`Snapshot` is built (per destination) or on
first use (per broadcast origin and incoming hop), so a decision is a dict lookup or two, and the
thread takes it once per frame, per super-frame or per GRO run, not per datagram of a run. The
operations returned are shared tuples: never mutate them.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from meshnet.dataplane.sleeve.header import (
    BROADCAST,
    MAX_TTL,
    PASSING,
    SEALED,
    DatagramHeader,
    Kind,
    pack_head,
)
from meshnet.dataplane.sleeve.replay import ReplayWindow
from meshnet.dataplane.sleeve.switch import Decision
from meshnet.gossip.routes import Routes

#: How long the routes a change replaced still vouch for where an origin's datagrams come
#: from: longer than the change takes to reach the routers at both ends of a path, which
#: may go on sending the old way until it does.
ROUTE_GRACE = 2.0

__all__ = [
    "MAX_TTL",
    "Control",
    "Deliver",
    "Drop",
    "ForwardDrop",
    "Neighbour",
    "Operation",
    "Relay",
    "Send",
    "Sequences",
    "Snapshot",
    "Target",
    "captured",
    "may_move_path",
    "received",
    "sent_by",
]


class Sequences:
    """A neighbour's datagram sequence numbers, handed out in blocks across threads.

    A super-frame's datagrams take consecutive numbers in one call, so they can be sealed in
    one pass; the lock is taken once per block, not per datagram.
    """

    def __init__(self, start: int = 1) -> None:
        self._next = start
        self._lock = threading.Lock()

    def take(self, count: int = 1) -> int:
        with self._lock:
            first = self._next
            self._next += count
            return first


@dataclass(frozen=True)
class Neighbour:
    name: int
    address: tuple[str, int]
    send_key: bytes | None
    receive_key: bytes | None
    sequences: Sequences  # shared by both loops and the control plane
    window: ReplayWindow  # used by the receive thread only
    max_datagram: int  # largest UDP payload the path is known to carry (0: unknown yet)
    established: bool


class ForwardDrop(enum.Enum):
    """Why the forwarding decision dropped a frame or datagram (counted by value)."""

    UNREACHABLE = "unreachable"  # no route to the destination peer
    NO_PATH = "no_path"  # the next hop has no UDP path (not a neighbour of the data plane)
    TTL = "ttl"  # its hops are used up
    ON_FASTDP = "on_fastdp"  # the kernel's VXLAN carried it already
    LOOP = "loop"  # it came back to its origin, or would go back where it came from
    UNKNOWN_ORIGIN = "unknown_origin"  # the routes know no such origin peer
    WRONG_HOP = "wrong_hop"  # its origin's datagrams never reach us through that neighbour
    STRANGER = "stranger"  # without a password: not from a neighbour's UDP endpoint


class Target(NamedTuple):
    """Where a captured frame goes: to ``neighbour``, addressed to peer ``destination`` (0 and
    BROADCAST in ``flags`` for a flood down our tree)."""

    neighbour: Neighbour
    destination: int
    flags: int


@dataclass(frozen=True, slots=True)
class Send:
    """Send a captured frame in new datagrams, one copy per target."""

    targets: tuple[Target, ...]


@dataclass(frozen=True, slots=True)
class Deliver:
    """Write the datagram's frames into our bridge (each through the switch). ``flooded``: it
    came down the origin's broadcast tree."""

    flooded: bool


@dataclass(frozen=True, slots=True)
class Relay:
    """Pass the received datagram on to ``neighbour``, re-sealed for that pair, with the header
    :meth:`DatagramHeader.relayed` gives."""

    neighbour: Neighbour


@dataclass(frozen=True, slots=True)
class Control:
    """A control datagram (heartbeat, probe) for the control plane."""


@dataclass(frozen=True, slots=True)
class Drop:
    reason: ForwardDrop


Operation = Send | Deliver | Relay | Control | Drop
Operations = tuple[Operation, ...]

NOTHING: Operations = ()
DELIVER: Operations = (Deliver(flooded=False),)
CONTROL: Operations = (Control(),)
_UNREACHABLE: Operations = (Drop(ForwardDrop.UNREACHABLE),)
_NO_PATH: Operations = (Drop(ForwardDrop.NO_PATH),)
_TTL: Operations = (Drop(ForwardDrop.TTL),)
_ON_FASTDP: Operations = (Drop(ForwardDrop.ON_FASTDP),)
_LOOP: Operations = (Drop(ForwardDrop.LOOP),)
_UNKNOWN_ORIGIN: Operations = (Drop(ForwardDrop.UNKNOWN_ORIGIN),)
_WRONG_HOP: Operations = (Drop(ForwardDrop.WRONG_HOP),)


@dataclass(frozen=True)
class Snapshot:
    """What the packet threads forward by: replaced by reference, never changed in place.

    Building one precomputes every per-destination answer; per-origin broadcast answers are
    memoised on first use (a function of the frozen fields, so sharing it is safe).
    """

    local: int
    routes: Routes
    neighbours: Mapping[int, Neighbour]
    overlay_mtu: int
    # Neighbours our own frames reach over the kernel's VXLAN, and the MACs the bridge sends to
    # the VXLAN port: the sleeve must not send what VXLAN carries (see fastdp/service.py).
    fastdp: frozenset[int] = frozenset()
    fastdp_macs: frozenset[bytes] = frozenset()
    # Of those, the ones that relay a PASSING broadcast (they said so when advertising fastdp).
    fastdp_passing: frozenset[int] = frozenset()
    # The routes these replaced, for ROUTE_GRACE after the change (the data plane's to drop).
    recent_routes: Routes | None = None
    _flood: Operations = field(init=False, repr=False, compare=False)
    _to_owner: Mapping[int, Operations] = field(init=False, repr=False, compare=False)
    _relay: Mapping[int, Operations] = field(init=False, repr=False, compare=False)
    _broadcast: dict[tuple[int, int, bool, bool], Operations] = field(
        init=False, repr=False, compare=False
    )
    _deliver: Mapping[int, int] = field(init=False, repr=False, compare=False)
    _delivered_before: Mapping[int, int] = field(init=False, repr=False, compare=False)
    _neighbour_ips: frozenset[str] = field(init=False, repr=False, compare=False)
    _arrivals: Mapping[bytes, tuple[Neighbour, int]] = field(init=False, repr=False, compare=False)
    _heads: dict[tuple[Kind, int, int, bool], bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        to_owner: dict[int, Operations] = {}
        relay: dict[int, Operations] = {}
        for peer, hop in self.routes.unicast.items():
            if peer == self.local:
                continue
            neighbour = self.neighbours.get(hop)
            to_owner[peer] = (
                (Send((Target(neighbour, peer, 0),)),) if neighbour is not None else _NO_PATH
            )
            relay[peer] = (Relay(neighbour),) if neighbour is not None else _NO_PATH
        object.__setattr__(self, "_to_owner", to_owner)
        object.__setattr__(self, "_relay", relay)
        object.__setattr__(self, "_flood", self._flood_operations())
        object.__setattr__(self, "_broadcast", {})
        # Every known origin's datagrams for us come through one neighbour: precomputed, as
        # delivering is the bulk case.
        object.__setattr__(self, "_deliver", _entries_to_us(self.routes))
        recent = self.recent_routes
        object.__setattr__(self, "_delivered_before", _entries_to_us(recent) if recent else {})
        object.__setattr__(self, "_arrivals", _arrivals(self))
        object.__setattr__(self, "_heads", {})
        ips = frozenset(n.address[0] for n in self.neighbours.values())
        object.__setattr__(self, "_neighbour_ips", ips)

    def _flood_operations(self) -> Operations:
        """A frame from the bridge that goes everywhere: down our broadcast tree.

        VXLAN already reached the fastdp neighbours: they get it PASSING, to relay on (or
        nothing, when nobody is below them in the tree). Unless one of them would not know
        PASSING: then every other peer gets its own copy, relayed by destination.
        """
        if self.fastdp <= self.fastdp_passing:
            passers = self.routes.passers_on(self.local) if self.fastdp else frozenset()
            wanted = [
                (hop, 0, BROADCAST | PASSING if hop in self.fastdp else BROADCAST)
                for hop in self.routes.broadcast_hops(self.local)
                if hop not in self.fastdp or hop in passers
            ]
        else:
            wanted = [
                (hop, peer, 0)
                for peer, hop in self.routes.unicast.items()
                if peer != self.local and peer not in self.fastdp
            ]
        targets = tuple(
            Target(self.neighbours[hop], destination, flags)
            for hop, destination, flags in wanted
            if hop in self.neighbours
        )
        missing = len(wanted) - len(targets)
        sends: Operations = (Send(targets),) if targets else NOTHING
        return sends + _NO_PATH * missing

    def broadcast_operations(
        self, origin: int, came_from: int, ttl_left: bool, passing: bool = False
    ) -> Operations:
        """A broadcast datagram ``origin`` flooded, received from ``came_from``: deliver it
        (unless ``passing``: VXLAN did), and relay it down the origin's tree but back (unless
        its TTL is used up)."""
        key = (origin, came_from, ttl_left, passing)
        ops = self._broadcast.get(key)
        if ops is None:
            # Checked before memoising: the keys stay within known origins and neighbours.
            parent = self.routes.flood_parent(origin)
            if parent is None:
                return _UNKNOWN_ORIGIN
            if parent != came_from:
                self._broadcast[key] = _WRONG_HOP
                return _WRONG_HOP
            ops = NOTHING if passing else (Deliver(flooded=True),)
            for hop in self.routes.broadcast_hops(origin):
                if hop == came_from:
                    continue
                neighbour = self.neighbours.get(hop)
                if not ttl_left:
                    ops += _TTL
                elif neighbour is None:
                    ops += _NO_PATH
                else:
                    ops += (Relay(neighbour),)
            self._broadcast[key] = ops  # one rx thread writes; a race only recomputes
        return ops

    def from_stranger(self, address: tuple[str, int]) -> bool:
        """Whether a datagram from this UDP source comes from no neighbour's host: dropped
        before any parsing. Which port may send what is the forwarder's check (:func:`sent_by`,
        and heartbeats, which may move a neighbour's path to the port its NAT now uses)."""
        return address[0] not in self._neighbour_ips

    def arrival(self, head: bytes) -> tuple[Neighbour, int] | None:
        """(the neighbour, the origin) when a datagram's first 24 header bytes say it is data
        for us that the routes bring through that neighbour: the bulk case, decided by one
        lookup (:func:`received` would answer DELIVER). ``head`` with its TTL byte zeroed (any
        TTL left will do); None: decide with :func:`received`."""
        return self._arrivals.get(head)

    def head_for(self, kind: Kind, destination: int, flags: int, sealed: bool) -> bytes:
        """The first 24 header bytes of a datagram we originate (memoised)."""
        key = (kind, destination, flags, sealed)
        head = self._heads.get(key)
        if head is None:
            flags = (flags & ~SEALED) | (SEALED if sealed else 0)
            head = pack_head(kind, flags, MAX_TTL, self.local, destination, self.local)
            self._heads[key] = head  # one tx thread writes; a race only recomputes
        return head

    def key_for(self, hop: int) -> bytes | None:
        neighbour = self.neighbours.get(hop)
        return neighbour.receive_key if neighbour else None

    def window_for(self, hop: int) -> ReplayWindow | None:
        neighbour = self.neighbours.get(hop)
        return neighbour.window if neighbour else None


def sent_by(neighbour: Neighbour | None, address: tuple[str, int]) -> bool:
    """Whether a datagram from UDP source ``address`` may be ``neighbour``'s (claimed as its
    hop): from its host; and without a password (nothing else vouches for it), from the very
    endpoint its path uses. With one, the seal vouches, and a NAT may have moved the port."""
    if neighbour is None or neighbour.address[0] != address[0]:
        return False
    return neighbour.receive_key is not None or neighbour.address[1] == address[1]


def may_move_path(neighbour: Neighbour | None, header: DatagramHeader, address: Any) -> bool:
    """Whether a datagram that is not :func:`sent_by` its claimed hop may still go to the
    control plane: a heartbeat from the neighbour's host at another port, which is how a NAT
    in front of the neighbour shows that it maps the neighbour's port elsewhere now. (Without
    a password that is all that may move a path: another host never can.)"""
    return (
        header.kind is Kind.HEARTBEAT
        and neighbour is not None
        and neighbour.address[0] == address[0]
    )


def captured(snap: Snapshot, decision: Decision, owner: int, destination_mac: bytes) -> Operations:
    """A frame from our bridge, as :meth:`Switch.from_local` decided (``(decision, owner)``).

    The switch keeps the MAC table (state); this turns its answer into sends by routes,
    neighbours and the fastdp split.
    """
    if decision is Decision.FLOOD:
        return snap._flood
    if decision is not Decision.UNICAST:
        return NOTHING  # the switch dropped it and counted why
    if destination_mac in snap.fastdp_macs:
        return _ON_FASTDP  # flooded by the bridge to the VXLAN port too: VXLAN carried it
    return snap._to_owner.get(owner, _UNREACHABLE)


def received(snap: Snapshot, header: DatagramHeader) -> Operations:
    """A datagram from neighbour ``header.hop`` whose header (and tag) checked out."""
    kind = header.kind
    if kind is not Kind.SEGMENT and kind is not Kind.FRAMES:
        return CONTROL
    if header.origin == snap.local:
        return _LOOP
    flags = header.flags
    if flags & BROADCAST:
        return snap.broadcast_operations(
            header.origin, header.hop, header.ttl > 1, bool(flags & PASSING)
        )
    destination = header.destination
    origin, hop = header.origin, header.hop
    if destination == snap.local:
        entry = snap._deliver.get(origin)
        if entry == hop or origin == hop or snap._delivered_before.get(origin) == hop:
            return DELIVER
        return _WRONG_HOP if entry is not None else _UNKNOWN_ORIGIN
    ops = snap._relay.get(destination, _UNREACHABLE)
    relay = ops[0]
    if isinstance(relay, Relay):
        if header.ttl <= 1:
            return _TTL
        if relay.neighbour.name == hop:
            return _LOOP
        if snap.routes.entry_hop(origin, destination) != hop and origin != hop:
            recent = snap.recent_routes
            if recent is None or recent.entry_hop(origin, destination) != hop:
                return _WRONG_HOP if origin in snap.routes.distance else _UNKNOWN_ORIGIN
    return ops


def _arrivals(snap: Snapshot) -> Mapping[bytes, tuple[Neighbour, int]]:
    """The TTL-less heads of the data datagrams for us, by where the routes bring them from."""
    out: dict[bytes, tuple[Neighbour, int]] = {}
    for origin, hop in snap._deliver.items():
        neighbour = snap.neighbours.get(hop)
        if neighbour is None or origin == snap.local:
            continue
        flags = SEALED if neighbour.receive_key else 0
        for kind in (Kind.FRAMES, Kind.SEGMENT):
            out[pack_head(kind, flags, 0, origin, snap.local, hop)] = (neighbour, origin)
    return out


def _entries_to_us(routes: Routes) -> Mapping[int, int]:
    """origin → the neighbour its unicasts for us arrive through."""
    return {
        origin: hop
        for origin in routes.distance
        if (hop := routes.entry_hop(origin, routes.local)) is not None
    }
