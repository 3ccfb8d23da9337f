"""One peer's allocator: the ring, its own allocations and the consensus, driven by events.

Pure like the rest of meshnet's cores: the shell calls ``allocate``/``claim``/``release``/
``reset``/``rmpeer``/``tick`` with ``now``, feeds it gossip and unicasts (it is the ``Gossiper``
of the ``ipam`` channel), and after every call

1. writes ``to_state()`` atomically if ``dirty`` — BEFORE sending anything, because peers act on
   what we send (a donation we announced and then forgot would give one range two owners).
   What gossip told us only of other peers' space is theirs to keep: it is written with the
   next write, or at a timer (``_learned``);
2. sends what ``take_actions()`` returns (``GossipAction`` to every neighbour through
   ``Mesh.gossip``, ``UnicastAction`` through ``Mesh.unicast``);
3. retries allocations that returned ``NeedSpace`` when a message arrived or at ``next_wake()``.

Nothing is allocated before the ring exists. How it comes to exist depends on the mode:
``SEED`` peers divide the range among the configured names at once (deterministic, so every
peer computes the same ring); ``CONSENSUS`` peers agree on the peer set with Paxos over gossip
(``consensus.py``), started lazily by the first allocation anywhere; ``OBSERVER`` peers never
take part and wait for the ring, then get space by donation like any later peer.

The same class manages an IPv6 ring (``config.range`` an ``IPv6Network``): addresses and counts
are Python ints either way. An IPv6 allocator is a ``FOLLOW`` one: it never runs a consensus of
its own; the shell seeds it (``follow``) with the IPv4 ring's seed once that exists, so one
agreement divides both rings among the same peers.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_interface,
)
from typing import Any

import msgpack

from meshnet.errors import RemoteProtocolError, UserError
from meshnet.ipam.consensus import Paxos, PaxosEntry, entries_from_obj, entries_obj
from meshnet.ipam.ring import (
    MAX_PEER_NAME,
    MAX_SEED,
    MAX_TOKENS,
    WIDE_BYTES,
    Ring,
    RingUpdate,
    Token,
    merge_updates,
    update_from_obj,
    update_obj,
    wide,
    wide_int,
)
from meshnet.ipam.space import Space, Subnet, usable

IPAddress = IPv4Address | IPv6Address
Interface = IPv4Interface | IPv6Interface

IPAM_CHANNEL = "ipam"
DEFAULT_RANGE = IPv4Network("10.32.0.0/12")
#: Seconds to wait for a donor's answer before asking another.
REQUEST_TIMEOUT = 5.0
#: Seconds between re-sends of a hand-over until it is acknowledged.
HANDOVER_RESEND = 5.0
#: Free counts are gossiped at most this long after they change (not on every allocation).
FREE_REPORT_DELAY = 1.0
#: A peer gets at most one range donation from us per this many seconds: even a peer whose
#: requests pass every check cannot drain us faster (each donation is half a free run).
DONATION_INTERVAL = 5.0
#: Seconds at most before what gossip told us of other peers' space reaches the state file.
STALE_WRITE_DELAY = 10.0
#: Requesting peers remembered for that limit (they must be reachable, so few in practice).
MAX_DONATION_TIMES = 4096
#: A donor we asked may still give (its reply lost, or our request timed out or died with a
#: restart, while the gift reaches us by gossip) for this long; kept across restarts.
GIFT_MEMORY = 600.0
MAX_ASKED = 64
MAX_CONTAINER_ID = 256
MAX_ALLOCATIONS = 1 << 20
MAX_PAYLOAD = 16 << 20


class InitMode(enum.Enum):
    CONSENSUS = "consensus"
    SEED = "seed"
    OBSERVER = "observer"
    FOLLOW = "follow"  # seeded by the shell with another ring's seed (the IPv6 ring)


class AddressInUse(UserError):
    """A claimed address is held by another container (here or on another peer)."""


@dataclass(frozen=True)
class IpamConfig:
    """``--ipalloc-range``, ``--ipalloc-default-subnet`` and ``--ipalloc-init``."""

    name: int
    range: Subnet = DEFAULT_RANGE
    default_subnet: Subnet | None = None
    mode: InitMode = InitMode.CONSENSUS
    consensus_size: int = 1
    seed: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.name <= MAX_PEER_NAME:
            raise UserError(f"bad peer name {self.name!r}")
        if self.range.num_addresses < 2:
            raise UserError(f"allocation range {self.range} is too small")
        if self.default_subnet is not None and not inside(self.default_subnet, self.range):
            raise UserError(f"default subnet {self.default_subnet} is not inside {self.range}")
        if self.mode is InitMode.SEED:
            if not self.seed or len(self.seed) > MAX_SEED:
                raise UserError("--ipalloc-init seed needs between 1 and 1024 peer names")
            if len(set(self.seed)) > self.range.num_addresses:
                raise UserError("more seed peers than addresses")
        if self.mode is InitMode.CONSENSUS and not 1 <= self.consensus_size <= MAX_SEED:
            raise UserError(f"bad consensus size {self.consensus_size}")

    @property
    def subnet(self) -> Subnet:
        return self.default_subnet or self.range

    @property
    def focus(self) -> tuple[int, int] | None:
        """What the initial division divides among all peers first (``Ring.claim_initial``):
        an IPv6 ring's default subnet. (IPv4 rings keep their plain division, which peers
        running older versions compute too.)"""
        if self.range.version != 6 or self.default_subnet is None:
            return None
        lo = int(self.default_subnet.network_address)
        return lo, lo + self.default_subnet.num_addresses

    def address(self, value: int) -> IPAddress:
        """An int of this range's family as an address."""
        return IPv4Address(value) if self.range.version == 4 else IPv6Address(value)


def inside(net: Subnet, outer: Subnet) -> bool:
    """``net.subnet_of(outer)``, false (not TypeError) across families."""
    return (
        net.version == outer.version
        and int(outer.network_address) <= int(net.network_address)
        and int(net.broadcast_address) <= int(outer.broadcast_address)
    )


@dataclass(frozen=True)
class Address:
    """An allocated address and the subnet the container's interface is configured with."""

    ip: IPAddress
    subnet: Subnet

    @property
    def interface(self) -> Interface:
        return ip_interface(f"{self.ip}/{self.subnet.prefixlen}")


class Waiting(enum.Enum):
    CONSENSUS = "consensus"  # the ring does not exist yet
    DONATION = "donation"  # asked ``donor`` for space
    EXHAUSTED = "exhausted"  # nobody reports free space in that subnet


@dataclass(frozen=True)
class NeedSpace:
    """Not now: call again after the next message or ``next_wake()``."""

    reason: Waiting
    donor: int | None = None


@dataclass(frozen=True)
class GossipAction:
    """``Mesh.gossip(IPAM_CHANNEL, payload, now)``."""

    payload: bytes


@dataclass(frozen=True)
class UnicastAction:
    """``Mesh.unicast(IPAM_CHANNEL, destination, payload)``."""

    destination: int
    payload: bytes


Action = GossipAction | UnicastAction


class Reply(enum.IntEnum):
    GRANTED = 0
    NOTHING = 1
    IN_USE = 2
    NOT_OWNER = 3


class _Msg(enum.IntEnum):
    DONATE_REQUEST = 1  # [1, request id, subnet address, prefix length, address | nil]
    DONATE_REPLY = 2  # [2, request id, Reply, ring update | nil]
    HANDOVER = 3  # [3, ring update]
    HANDOVER_ACK = 4  # [4]


@dataclass
class _Request:
    request_id: int
    donor: int
    subnet: Subnet
    address: int | None
    container: str | None
    deadline: float


@dataclass(frozen=True)
class PeerShare:
    peer: int
    ranges: tuple[tuple[IPAddress, IPAddress], ...]  # inclusive
    size: int
    free: int  # as last reported by the peer


@dataclass(frozen=True)
class IpamStatus:
    range: Subnet
    default_subnet: Subnet
    mode: InitMode
    consensus: str  # "idle" (no allocation yet), "deciding", "ready"
    seed: tuple[int, ...]
    peers: tuple[PeerShare, ...]
    allocated_here: int
    leaving: bool
    handed_over: bool


@dataclass
class _Counters:
    donations_given: int = 0
    #: Range donation requests refused: from a peer we cannot reach (a forged source), from a
    #: peer the ring shows with free space of its own, or too soon after the last one.
    donations_refused: int = 0
    donations_received: int = 0
    requests_sent: int = 0
    requests_timed_out: int = 0
    reclaims: int = 0


def _container(container_id: str) -> str:
    if type(container_id) is not str or not 0 < len(container_id) <= MAX_CONTAINER_ID:
        raise UserError(f"bad container id {container_id!r:.80}")
    return container_id


class Allocator:
    """IPAM for one peer. See the module docstring for how a shell drives it."""

    def __init__(self, config: IpamConfig, rng: random.Random) -> None:
        self.config = config
        self._rng = rng
        lo = int(config.range.network_address)
        self.ring = Ring(lo, lo + config.range.num_addresses, name=config.name)
        self.space = Space()
        self.paxos = Paxos(
            config.name,
            config.consensus_size // 2 + 1,
            participant=config.mode is InitMode.CONSENSUS,
        )
        self.counters = _Counters()
        self.dirty = False
        # Since when the state file lacks what only others own (None: it lacks nothing).
        self._stale_since: float | None = None
        self._actions: list[Action] = []
        self._requests: dict[tuple[Subnet, int | None], _Request] = {}
        # Donors asked lately -> until when their gift by gossip is taken (inf: restored from
        # the state file, for GIFT_MEMORY from the first tick). Without this, a gift whose
        # reply was lost after our request ended was dropped as unasked: that space was then
        # ours in every view but our own, forever (found by TestMesh).
        self._asked: dict[int, float] = {}
        self._next_request = 1
        self._tried: dict[Subnet, set[int]] = {}
        # Donors not to ask for a range before then. A donor gives a peer at most one range
        # per DONATION_INTERVAL (``_may_donate_range``) and refuses sooner requests with the
        # same NOTHING as "no space"; a second subnet asked for at once was refused, and its
        # waiter then slept until an unrelated message woke it (often past its timeout). The
        # interval counts from the donor's answer, which it sent after noting its time: a
        # request sent after it ends reaches the donor after the donor's interval ends too.
        self._ask_after: dict[int, float] = {}
        #: The ring was divided here (a decision, ``--ipalloc-init seed``, ``follow``), not
        #: adopted from a peer: the shell seeds the IPv6 ring here too only then.
        self.divided_here = False
        self._refused: dict[tuple[str, int], str] = {}
        self._handover_to: int | None = None
        self._handover_acked = False
        self._handover_resend: float | None = None
        self._free_due: float | None = None
        self._now = 0.0
        self._donated_at: dict[int, float] = {}
        # The shell's view of the mesh. ``reachable``: the peer is alive (a neighbour whose
        # data path is not proven yet counts); we donate only to such a peer. ``routable``: a
        # unicast gets there now (a route exists); a donor is asked only then. A request sent
        # before the route was up (a lab's first allocations) was dropped, yet counted as
        # asked until it timed out 5 s later.
        self.reachable: Callable[[int], bool] = lambda peer: True
        self.routable: Callable[[int], bool] = lambda peer: True

    @property
    def name(self) -> int:
        return self.config.name

    @property
    def leaving(self) -> bool:
        return self._handover_to is not None and not self._handover_acked

    @property
    def handover_to(self) -> int | None:
        """The peer ``reset`` hands (or handed) our ranges to."""
        return self._handover_to

    @property
    def handed_over(self) -> bool:
        """``reset`` finished: the peer that took our ranges acknowledged them."""
        return self._handover_to is not None and self._handover_acked

    def owned_ranges(self) -> list[tuple[int, int]]:
        return self.ring.owned_ranges(self.name)

    def advance(self, now: float) -> None:
        """The time, for messages (the ``Gossiper`` methods take none)."""
        self._now = max(self._now, now)

    def take_actions(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    # --- the user's operations

    def allocate(self, container_id: str, subnet: Subnet | None, now: float) -> Address | NeedSpace:
        """The container's address in ``subnet`` (default subnet if None); idempotent."""
        self._now = now
        container = _container(container_id)
        self._check_active()
        net = self._subnet(subnet)
        lo, hi = usable(net)
        for address in self.space.addresses(container):
            if lo <= address < hi:
                return Address(self.config.address(address), net)
        if not self._ensure_ring(now):
            return NeedSpace(Waiting.CONSENSUS)
        address_ = self.space.allocate(container, self.owned_ranges(), net)
        if address_ is not None:
            self._changed(now)
            return Address(self.config.address(address_), net)
        return self._ask(net, None, None, now)

    def claim(
        self,
        container_id: str,
        address: IPAddress,
        now: float,
        subnet: Subnet | None = None,
    ) -> Address | NeedSpace:
        """Give ``address`` to the container; AddressInUse if another container holds it.

        If another peer owns it, that peer is asked to donate it (refused, later, if one of its
        containers holds it: the next call raises AddressInUse).
        """
        self._now = now
        container = _container(container_id)
        self._check_active()
        a = int(address)
        if subnet is None:
            subnet = self.config.subnet if address in self.config.subnet else self.config.range
        net = self._subnet(subnet)
        lo, hi = usable(net)
        if not lo <= a < hi:
            raise UserError(f"{address} is not a usable address of {net}")
        refusal = self._refused.pop((container, a), None)
        if refusal is not None:
            raise AddressInUse(refusal)
        holder = self.space.holder(a)
        if holder == container:
            return Address(address, net)
        if holder is not None:
            raise AddressInUse(f"{address} is held by container {holder}")
        if not self._ensure_ring(now):
            return NeedSpace(Waiting.CONSENSUS)
        if self.ring.owner_of(a) == self.name:
            self.space.take(container, a)
            self._changed(now)
            return Address(address, net)
        return self._ask(net, a, container, now)

    def release(
        self, container_id: str, now: float, only: Iterable[IPAddress] | None = None
    ) -> list[IPAddress]:
        """Free every address the container holds, or those of ``only`` (none: nothing
        happens)."""
        self._now = now
        chosen = None if only is None else {int(a) for a in only}
        released = self.space.release(_container(container_id), chosen)
        if released:
            self._changed(now)
        return [self.config.address(a) for a in released]

    def rename(self, container_id: str, to: str) -> list[IPAddress]:
        """Give what the container holds to ``to`` (a new key for the same container)."""
        moved = self.space.rename(_container(container_id), _container(to))
        if moved:
            self.dirty = True  # nothing freed or taken: only the state file changes
        return [self.config.address(a) for a in moved]

    def addresses_of(self, container_id: str) -> list[Address]:
        out = []
        for a in self.space.addresses(container_id):
            ip = self.config.address(a)
            net = self.config.subnet if ip in self.config.subnet else self.config.range
            out.append(Address(ip, net))
        return out

    def reset(self, to_peer: int, now: float, *, force: bool = False) -> None:
        """Hand every range to ``to_peer`` (``meshnet reset``); ``handed_over`` once it acks.

        Refused while containers hold addresses here, unless ``force`` (they are forgotten).
        """
        self._now = now
        if to_peer == self.name or not 0 <= to_peer <= MAX_PEER_NAME:
            raise UserError("hand the ranges to another peer")
        if self._handover_to is not None:
            if self._handover_to != to_peer:
                raise UserError(f"already handing over to {to_peer:012x}")
            return
        if len(self.space) and not force:
            raise UserError(f"{len(self.space)} addresses are still in use here: detach first")
        self.space.clear()
        self._requests.clear()
        self._handover_to = to_peer
        self._handover_acked = True  # unless there is something to hand over
        self.paxos.participant = False
        self.dirty = True
        self._continue_handover(now)

    def rmpeer(self, dead: int, now: float) -> int | None:
        """Reclaim a dead peer's ranges (the shell refuses while it is reachable).

        The ranges go to ``Ring.heir_of(dead)``, whoever runs this: two peers doing it for the
        same dead peer produce the same update. Returns the heir (None: it owned nothing).
        """
        self._now = now
        if dead == self.name:
            raise UserError("a peer cannot rmpeer itself: use reset")
        if not self.ring.seeded:
            raise UserError("there is no ring yet: nothing to reclaim")
        try:
            heir, tokens = self.ring.reclaim(dead, self.name)
        except ValueError as error:
            raise UserError(str(error)) from None
        if tokens:
            self.counters.reclaims += 1
            self.dirty = True
            self._gossip(tokens)
            if heir == self.name:
                self._changed(now)
        return heir

    def start_ring(self, now: float) -> bool:
        """Whether the ring exists; if not, start what makes it exist (a ``FOLLOW`` ring
        waits for ``follow``, or for a peer's ring)."""
        self._now = now
        return self._ensure_ring(now)

    def follow(self, seed: tuple[int, ...], now: float) -> None:
        """Divide a ``FOLLOW`` ring among ``seed``: the peers another ring was divided among
        (here, not adopted: see ``divided_here``). No-op once seeded."""
        if self.config.mode is not InitMode.FOLLOW:
            raise ValueError("only a following ring is seeded from outside")
        self._now = now
        if self.ring.seeded:
            return
        self.ring.claim_initial(seed, self.config.focus)
        self.divided_here = True
        self.dirty = True
        self._gossip(None)
        self._after_ring_change(now)

    def tick(self, now: float) -> None:
        """Timers: consensus retries, unanswered requests, hand-over re-sends, free reports."""
        self._now = now
        if not self.ring.seeded and self.paxos.due(now):
            self._propose(now)
        for donor, until in list(self._asked.items()):
            if until == math.inf:
                self._asked[donor] = now + GIFT_MEMORY
            elif now >= until:
                del self._asked[donor]
        for key, request in list(self._requests.items()):
            if now >= request.deadline:
                del self._requests[key]
                self.counters.requests_timed_out += 1
                if request.address is None:
                    self._tried.setdefault(request.subnet, set()).add(request.donor)
        for donor, after in list(self._ask_after.items()):
            if now >= after:
                del self._ask_after[donor]  # the waiters ask it again: the shell wakes them
        if self._handover_resend is not None and now >= self._handover_resend:
            self._send_handover(now)
        if self._free_due is not None and now >= self._free_due:
            self._free_due = None
            tokens = self._refresh_free()
            if tokens:
                self._gossip(tokens)
        if self._stale_since is not None and now >= self._stale_since + STALE_WRITE_DELAY:
            self.dirty = True

    def _learned(self) -> None:
        """Gossip told us only what other peers own (their Paxos entries, their tokens): each
        owner wrote it before sending it, and a crash that loses our copy only makes us a peer
        that was away, which gossip catches up. So it waits for the next write, at most
        ``STALE_WRITE_DELAY``: a 100-peer consensus or a mesh's donations merged one batch at a
        time were an fsync each, on every peer."""
        if self._stale_since is None:
            self._stale_since = self._now

    def next_wake(self) -> float:
        due = [self.paxos.retry_at, self._handover_resend, self._free_due]
        if self._stale_since is not None:
            due.append(self._stale_since + STALE_WRITE_DELAY)
        due += [r.deadline for r in self._requests.values()]
        due += self._ask_after.values()
        due += [self._now if until == math.inf else until for until in self._asked.values()]
        return min((t for t in due if t is not None), default=float("inf"))

    # --- status

    def status(self) -> IpamStatus:
        if self.ring.seeded:
            consensus = "ready"
        elif self.paxos.started:
            consensus = "deciding"
        else:
            consensus = "idle"
        shares: dict[int, list[tuple[int, int, int]]] = {}
        for token, start, end in self.ring.extents():
            shares.setdefault(token.owner, []).append((start, end, token.free))
        peers = []
        for peer in sorted(shares):
            ranges = self.ring.owned_ranges(peer)
            peers.append(
                PeerShare(
                    peer,
                    tuple((self.config.address(s), self.config.address(e - 1)) for s, e in ranges),
                    sum(e - s for s, e, _ in shares[peer]),
                    sum(f for _, _, f in shares[peer]),
                )
            )
        return IpamStatus(
            self.config.range,
            self.config.subnet,
            self.config.mode,
            consensus,
            self.ring.seed,
            tuple(peers),
            len(self.space),
            self.leaving,
            self.handed_over,
        )

    # --- Gossiper

    def full_state(self) -> bytes | None:
        if self.ring.seeded:
            return _encode_gossip(self.ring.update(), [])
        if self.paxos.started:
            return _encode_gossip(None, self.paxos.entries.values())
        return None

    def on_gossip(self, payload: bytes) -> bytes | None:
        update, entries = _decode_gossip(payload)
        if self.ring.seeded or self.config.mode is InitMode.FOLLOW:
            entries = []  # the consensus is over here
        else:
            self.paxos.check(entries)
        was_seeded = self.ring.seeded
        donors = {r.donor for r in self._requests.values()} | self._asked.keys()
        new_tokens = [] if update is None else self.ring.merge(update, gifts_from=donors)
        reasserted = self.ring.take_reassertions()
        if reasserted:
            # Someone else's version of our tokens: ours, bumped past it, to every neighbour
            # (the sender included), persisted first like every ring change.
            self.dirty = True
            self._gossip(reasserted)
        new_entries: list[PaxosEntry] = []
        if not self.ring.seeded:
            new_entries = self.paxos.merge(entries)
            if new_entries:
                self.paxos.postpone(self._now, self._rng)
                self._learned()  # our own entry, if it changes, is written first (_after_paxos)
                self._after_paxos()
        elif new_tokens and (not was_seeded or any(t.owner == self.name for t in new_tokens)):
            self.dirty = True  # the ring, or space given to us
            if not was_seeded:
                self.paxos.clear()
            self._after_ring_change(self._now)
        elif new_tokens:
            self._learned()  # other peers' space: ours is as it was
            if self._handover_to is not None:
                self._continue_handover(self._now)
        if not new_tokens and not new_entries:
            return None
        relay: RingUpdate | None = None
        if new_tokens:
            relay = self.ring.update() if not was_seeded else self.ring.update(new_tokens)
        return _encode_gossip(relay, new_entries)

    def merge_payloads(self, a: bytes, b: bytes) -> bytes:
        ua, ea = _decode_gossip(a)
        ub, eb = _decode_gossip(b)
        update = merge_updates(ua, ub) if ua is not None and ub is not None else ua or ub
        best: dict[int, PaxosEntry] = {}
        for entry in (*ea, *eb):
            current = best.get(entry.node)
            if current is None or entry.key > current.key:
                best[entry.node] = entry
        return _encode_gossip(update, best.values())

    def on_broadcast(self, source: int, payload: bytes) -> None:
        """IPAM uses no broadcasts."""

    def on_unicast(self, source: int, payload: bytes) -> None:
        obj = _unpack(payload, "ipam message")
        if type(obj) is not list or not obj or type(obj[0]) is not int:
            raise RemoteProtocolError(f"bad ipam message: {obj!r:.80}")
        kind = obj[0]
        if kind == _Msg.DONATE_REQUEST and len(obj) == 5:
            request_id, subnet, address = _request_fields(obj, self.config.range)
            self._on_donate_request(source, request_id, subnet, address)
        elif kind == _Msg.DONATE_REPLY and len(obj) == 4:
            if type(obj[1]) is not int or type(obj[2]) is not int or obj[2] not in set(Reply):
                raise RemoteProtocolError(f"bad donation reply: {obj!r:.80}")
            update = None if obj[3] is None else update_from_obj(obj[3])
            self._on_donate_reply(source, obj[1], Reply(obj[2]), update)
        elif kind == _Msg.HANDOVER and len(obj) == 2:
            self.ring.merge(update_from_obj(obj[1]), accept_own=True)
            self.dirty = True
            self.paxos.clear()
            self._after_ring_change(self._now)
            self._actions.append(UnicastAction(source, _pack([_Msg.HANDOVER_ACK])))
        elif kind == _Msg.HANDOVER_ACK and len(obj) == 1:
            if source == self._handover_to and not self._handover_acked:
                self._handover_acked = True
                self._handover_resend = None
                self.dirty = True
        else:
            raise RemoteProtocolError(f"bad ipam message: {obj!r:.80}")

    # --- persistence

    def to_state(self) -> bytes:
        """Everything that must survive a restart; the shell writes it atomically."""
        self.dirty = False
        self._stale_since = None
        ring = update_obj(self.ring.update()) if self.ring.seeded else None
        entries = entries_obj(self.paxos.entries.values())
        allocations = [[wide(a), c] for a, c in self.space.allocations()]
        return _pack(
            [
                1,
                self.name,
                wide(self.ring.start),
                wide(self.ring.end),
                ring,
                entries,
                allocations,
                self._handover_to,
                self._handover_acked,
                sorted(self._asked),
            ]
        )

    @classmethod
    def from_state(cls, config: IpamConfig, data: bytes, rng: random.Random) -> Allocator:
        """Restore a peer from ``to_state()``; UserError if the file is corrupt or not ours.

        The restored peer re-announces its ring at once (a ``GossipAction``).
        """
        self = cls(config, rng)
        try:
            obj = _unpack(data, "ipam state", max_str=MAX_CONTAINER_ID * 4)
            if type(obj) is not list or len(obj) not in (9, 10) or obj[0] != 1:
                raise RemoteProtocolError("unknown layout")
            _, name, start, end, ring, entries, allocations, handover_to, acked = obj[:9]
            asked = obj[9] if len(obj) == 10 else []  # older files had no asked donors
            if type(asked) is not list or len(asked) > MAX_ASKED:
                raise RemoteProtocolError("bad asked donors")
            for donor in asked:
                if type(donor) is not int or not 0 <= donor <= MAX_PEER_NAME:
                    raise RemoteProtocolError("bad asked donor")
                self._asked[donor] = math.inf
            start = wide_int(start, 0, 1 << 128, "state range start")
            end = wide_int(end, 0, 1 << 128, "state range end")
            if (name, start, end) != (config.name, self.ring.start, self.ring.end):
                raise UserError(
                    "the IPAM state belongs to another peer name or allocation range: "
                    "reset this peer or restore its settings"
                )
            if ring is not None:
                self.ring.merge(update_from_obj(ring), accept_own=True)
            paxos_entries = entries_from_obj(entries)
            self.paxos.check(paxos_entries)
            self.paxos.merge(paxos_entries)
            if type(allocations) is not list or len(allocations) > MAX_ALLOCATIONS:
                raise RemoteProtocolError("bad allocations")
            owned = self.owned_ranges()
            for row in allocations:
                if type(row) is not list or len(row) != 2:
                    raise RemoteProtocolError(f"bad allocation {row!r:.80}")
                address = wide_int(row[0], 0, (1 << 128) - 1, "allocation")
                if not any(s <= address < e for s, e in owned):
                    raise RemoteProtocolError("an allocation outside our ranges")
                self.space.take(_container(row[1]), address)
            if handover_to is not None:
                if type(handover_to) is not int or type(acked) is not bool:
                    raise RemoteProtocolError("bad hand-over")
                self._handover_to, self._handover_acked = handover_to, acked
                self.paxos.participant = False
        except UserError:
            raise
        except (RemoteProtocolError, ValueError) as error:
            raise UserError(f"corrupt IPAM state: {error}") from None
        if self.ring.seeded:
            self._gossip(None)
        elif self.paxos.started:
            self._actions.append(GossipAction(self.full_state() or b""))
        if self.leaving:
            self._handover_resend = 0.0  # re-sent at the first tick
        return self

    # --- internals

    def _check_active(self) -> None:
        if self._handover_to is not None:
            raise UserError("this peer has handed its ranges over (reset): it allocates no more")

    def _subnet(self, subnet: Subnet | None) -> Subnet:
        net = self.config.subnet if subnet is None else subnet
        if not inside(net, self.config.range):
            raise UserError(f"subnet {net} is not inside the allocation range {self.config.range}")
        return net

    def _changed(self, now: float) -> None:
        self.dirty = True
        if self._free_due is None:
            self._free_due = now + FREE_REPORT_DELAY

    def _gossip(self, tokens: list[Token] | None, entries: Iterable[PaxosEntry] = ()) -> None:
        update = self.ring.update(tokens) if self.ring.seeded else None
        self._actions.append(GossipAction(_encode_gossip(update, entries)))

    def _ensure_ring(self, now: float) -> bool:
        """Whether the ring exists; if not, start what makes it exist (lazily)."""
        if self.ring.seeded:
            return True
        if self.config.mode is InitMode.SEED:
            self.ring.claim_initial(self.config.seed, self.config.focus)
            self.divided_here = True
            self.dirty = True
            self._gossip(None)
            self._after_ring_change(now)
        elif self.config.mode is InitMode.CONSENSUS and (
            self.name not in self.paxos.entries or self.paxos.due(now)
        ):
            self._propose(now)
        return self.ring.seeded

    def _propose(self, now: float) -> None:
        entry = self.paxos.propose(now, self._rng)
        if entry is not None:
            self.dirty = True
            self._actions.append(GossipAction(_encode_gossip(None, [entry])))
            self._check_decision()

    def _after_paxos(self) -> None:
        entry = self.paxos.step()
        if entry is not None:
            self.dirty = True
            self._actions.append(GossipAction(_encode_gossip(None, [entry])))
        self._check_decision()

    def _check_decision(self) -> None:
        value = self.paxos.decision()
        if value is None or self.ring.seeded:
            return
        self.ring.claim_initial(value, self.config.focus)
        self.divided_here = True
        self.paxos.clear()
        self.dirty = True
        self._gossip(None)
        self._after_ring_change(self._now)

    def _after_ring_change(self, now: float) -> None:
        if self._handover_to is not None:
            self._continue_handover(now)
        elif self.owned_ranges():
            self._changed(now)

    def _continue_handover(self, now: float) -> None:
        if self._handover_to is None or not self.ring.seeded or not self.owned_ranges():
            return
        self._refresh_free()
        tokens = self.ring.transfer_all(self._handover_to)
        self._handover_acked = False
        self.dirty = True
        self._gossip(tokens)
        self._send_handover(now)

    def _send_handover(self, now: float) -> None:
        if self._handover_to is None or self._handover_acked:
            self._handover_resend = None
            return
        message = [_Msg.HANDOVER, update_obj(self.ring.update())]
        self._actions.append(UnicastAction(self._handover_to, _pack(message)))
        self._handover_resend = now + HANDOVER_RESEND

    def _refresh_free(self) -> list[Token]:
        changed = []
        for token, start, end in self.ring.extents():
            if token.owner == self.name:
                free = (end - start) - self.space.used_between(start, end)
                new = self.ring.set_free(start, free)
                if new is not None:
                    changed.append(new)
        if changed:
            self.dirty = True
        return changed

    def _donors(
        self, subnet: Subnet, reached: Callable[[int], bool] | None = None
    ) -> dict[int, int]:
        """Peers we can ask now (``routable``, unless ``reached`` says otherwise) reporting
        free space in ``subnet``, and how much."""
        lo, hi = usable(subnet)
        reached = reached or self.routable
        weights: dict[int, int] = {}
        for token, start, end in self.ring.extents():
            if token.owner == self.name or token.free == 0 or not reached(token.owner):
                continue
            overlap = min(end, hi) - max(start, lo)
            if overlap > 0:
                weights[token.owner] = weights.get(token.owner, 0) + min(token.free, overlap)
        return weights

    def _waiting_for(self, peer: int) -> bool:
        """Whether ``peer``'s donation interval for us is still running (see ``_ask_after``)."""
        return self._ask_after.get(peer, -math.inf) > self._now

    def _choose_donor(self, subnet: Subnet) -> int | None:
        """A donor to ask now, not tried for ``subnet`` yet, chosen with probability ∝ the
        free space it reports there."""
        tried = self._tried.get(subnet, set())
        weights = {
            peer: weight
            for peer, weight in self._donors(subnet).items()
            if peer not in tried and not self._waiting_for(peer)
        }
        if not weights:
            return None
        peers = sorted(weights)
        return self._rng.choices(peers, weights=[weights[p] for p in peers])[0]

    def _next_donor(self, subnet: Subnet) -> int | None:
        """The donor with free space in ``subnet`` whose interval for us ends first."""
        waiting = [p for p in self._donors(subnet) if self._waiting_for(p)]
        return min(waiting, key=lambda p: (self._ask_after[p], p), default=None)

    def _ask(
        self, subnet: Subnet, address: int | None, container: str | None, now: float
    ) -> NeedSpace:
        key = (subnet, address)
        request = self._requests.get(key)
        if request is not None:
            return NeedSpace(Waiting.DONATION, request.donor)
        if address is None:
            donor = self._choose_donor(subnet)
            if donor is None and self._tried.pop(subnet, set()):
                # Every donor we may ask now was tried (it timed out: one that refused waits
                # out its interval, ``_ask_after``): a new round, at once. Nothing else would
                # wake the waiter (no timer, maybe no message for minutes).
                donor = self._choose_donor(subnet)
        else:
            donor = self.ring.owner_of(address)
        if donor is not None and not self.routable(donor):
            return NeedSpace(Waiting.DONATION, donor)  # asked once a route to it is up
        if donor is None:
            later = None if address is not None else self._next_donor(subnet)
            if later is not None:
                return NeedSpace(Waiting.DONATION, later)  # asked when its interval ends
            if address is None:
                # Alive with free space, but no route to it yet: asked once there is one.
                alive = self._donors(subnet, self.reachable)
                if alive:
                    return NeedSpace(Waiting.DONATION, min(alive))
            return NeedSpace(Waiting.EXHAUSTED)
        if address is None:
            # The donor gives only to a peer the ring shows without free space: report ours now
            # (gossip reaches it before this request, which follows on the same paths).
            self._free_due = None
            refreshed = self._refresh_free()
            if refreshed:
                self._gossip(refreshed)
        request_id = self._next_request
        self._next_request += 1
        self._requests[key] = _Request(
            request_id, donor, subnet, address, container, now + REQUEST_TIMEOUT
        )
        self._asked.pop(donor, None)
        self._asked[donor] = now + GIFT_MEMORY
        while len(self._asked) > MAX_ASKED:
            del self._asked[next(iter(self._asked))]  # the one asked longest ago
        self.counters.requests_sent += 1
        net = int(subnet.network_address)
        message = [
            _Msg.DONATE_REQUEST,
            request_id,
            wide(net),
            subnet.prefixlen,
            None if address is None else wide(address),
        ]
        self._actions.append(UnicastAction(donor, _pack(message)))
        return NeedSpace(Waiting.DONATION, donor)

    def _on_donate_request(
        self, source: int, request_id: int, subnet: Subnet, address: int | None
    ) -> None:
        status, tokens = self._donate(source, subnet, address)
        update = None if not tokens else update_obj(self.ring.update(tokens))
        message = [_Msg.DONATE_REPLY, request_id, status, update]
        self._actions.append(UnicastAction(source, _pack(message)))

    def _donate(
        self, to_peer: int, subnet: Subnet, address: int | None
    ) -> tuple[Reply, list[Token]]:
        if not self.ring.seeded or self._handover_to is not None or to_peer == self.name:
            return Reply.NOTHING, []
        if not self.reachable(to_peer):
            # The mesh checks a unicast's source; this is the IPAM's own guard: space given to
            # a peer nobody can reach would be lost until someone runs rmpeer.
            self.counters.donations_refused += 1
            return Reply.NOTHING, []
        if address is not None:
            if self.ring.owner_of(address) != self.name:
                return Reply.NOT_OWNER, []
            if self.space.holder(address) is not None:
                return Reply.IN_USE, []
            lo, hi = address, address + 1
        else:
            if not self._may_donate_range(to_peer, subnet):
                self.counters.donations_refused += 1
                return Reply.NOTHING, []
            run = self.space.largest_free_run(self.owned_ranges(), subnet)
            if run is None:
                return Reply.NOTHING, []
            # Half of the largest free run: the donor keeps room to grow (as weave does).
            start, end = run
            lo, hi = end - max(1, (end - start) // 2), end
        donated = self.ring.donate(lo, hi, to_peer)
        if address is None:
            self._donated_at[to_peer] = self._now
        refreshed = self._refresh_free()
        self.counters.donations_given += 1
        self.dirty = True
        tokens = merge_updates(self.ring.update(donated), self.ring.update(refreshed)).tokens
        self._gossip(list(tokens))
        return Reply.GRANTED, list(tokens)

    def _may_donate_range(self, to_peer: int, subnet: Subnet) -> bool:
        """Whether ``to_peer`` may have part of our range in ``subnet`` now.

        Only a peer without free space of its own in the subnet (as the ring shows it: tokens
        wholly inside the subnet, whose free counts it reports before asking), and at most once
        per ``DONATION_INTERVAL``: so no stream of requests drains us.
        """
        lo, hi = usable(subnet)
        for token, start, end in self.ring.extents():
            if token.owner == to_peer and lo <= start and end <= hi and token.free > 0:
                return False
        last = self._donated_at.get(to_peer)
        if last is not None and self._now - last < DONATION_INTERVAL:
            return False
        if len(self._donated_at) >= MAX_DONATION_TIMES:
            old = [p for p, t in self._donated_at.items() if self._now - t >= DONATION_INTERVAL]
            for peer in old:
                del self._donated_at[peer]
            if len(self._donated_at) >= MAX_DONATION_TIMES:
                return False
        return True

    def _on_donate_reply(
        self, source: int, request_id: int, status: Reply, update: RingUpdate | None
    ) -> None:
        if update is not None and self.ring.seeded and self.ring.merge(update, accept_own=True):
            self.dirty = True
            self._after_ring_change(self._now)
        for key, request in list(self._requests.items()):
            if request.request_id == request_id and request.donor == source:
                del self._requests[key]
                if request.address is None and status in (Reply.GRANTED, Reply.NOTHING):
                    self._ask_after[source] = self._now + DONATION_INTERVAL
                if status is Reply.GRANTED:
                    self.counters.donations_received += 1
                elif status is Reply.NOTHING and request.address is None:
                    self._tried.setdefault(request.subnet, set()).add(source)
                elif status is Reply.IN_USE and request.container is not None:
                    assert request.address is not None
                    self._refused[(request.container, request.address)] = (
                        f"{self.config.address(request.address)} is held by a container "
                        f"on peer {source:012x}"
                    )
                break


# --- wire helpers


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack(data: bytes, what: str, *, max_str: int = 0) -> Any:
    if type(data) is not bytes or len(data) > MAX_PAYLOAD:
        raise RemoteProtocolError(f"{what} is not bytes or is too large")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            max_array_len=max(MAX_TOKENS, MAX_ALLOCATIONS if max_str else 0),
            max_map_len=0,
            max_str_len=max_str,
            max_bin_len=WIDE_BYTES,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types
        raise RemoteProtocolError(f"undecodable {what}: {exc!r:.80}") from None


def _encode_gossip(update: RingUpdate | None, entries: Iterable[PaxosEntry]) -> bytes:
    ring = None if update is None else update_obj(update)
    return _pack([1, ring, entries_obj(entries)])


def _decode_gossip(payload: bytes) -> tuple[RingUpdate | None, list[PaxosEntry]]:
    obj = _unpack(payload, "ipam gossip")
    if type(obj) is not list or len(obj) != 3 or obj[0] != 1:
        raise RemoteProtocolError(f"bad ipam gossip: {obj!r:.80}")
    update = None if obj[1] is None else update_from_obj(obj[1])
    return update, entries_from_obj(obj[2])


def _request_fields(obj: list[Any], range_: Subnet) -> tuple[int, Subnet, int | None]:
    _, request_id, net_, prefix, address_ = obj
    if type(request_id) is not int or not 0 <= request_id < 1 << 63:
        raise RemoteProtocolError("bad donation request id")
    bits = range_.max_prefixlen
    net = wide_int(net_, 0, (1 << bits) - 1, "donation subnet")
    if type(prefix) is not int or not 0 <= prefix <= bits:
        raise RemoteProtocolError("bad donation subnet")
    try:
        subnet: Subnet = IPv4Network((net, prefix)) if bits == 32 else IPv6Network((net, prefix))
    except ValueError:
        raise RemoteProtocolError("bad donation subnet") from None
    if not inside(subnet, range_):
        raise RemoteProtocolError(f"donation subnet {subnet} outside {range_}")
    if address_ is None:
        return request_id, subnet, None
    address = wide_int(address_, 0, (1 << bits) - 1, "donation address")
    lo = int(subnet.network_address)
    if not lo <= address < lo + subnet.num_addresses:
        raise RemoteProtocolError("bad donation address")
    return request_id, subnet, address
