"""The trio shell around the IPAM ``Allocator``: persistence, gossip, timers and waiting.

The allocator is pure; this shell drives it exactly as its module docstring asks. After every
call into it (a user's operation, a message, a timer) the shell

1. writes ``to_state()`` atomically (tmp file, fsync, rename, fsync of the directory) if it is
   ``dirty`` — synchronously, before anything else can run. The state is small (the ring and
   this peer's allocations), and doing it inline means no task can ever send, or serve as
   anti-entropy, a ring change that a ``kill -9`` could still undo;
2. hands ``take_actions()`` to the router (gossip to every neighbour, unicasts hop by hop);
3. wakes every operation waiting for space (``NeedSpace``) so it tries again.

The service is the ``ipam`` channel's ``Gossiper``: it wraps the allocator's. Messages from
peers are merged at once but acted upon in batches (``BATCH_DELAY``): the state is persisted
once, then the replies and the merged relay of everything new go out. During a 100-peer
consensus every message changes the Paxos state, and persisting (an fsync) per message was most
of a router's time. Persist-before-send still holds for what this peer owns: no change of its
own space or Paxos entry leaves it, as a relay, a reply or anti-entropy (``full_state`` persists
first), before it is on disk. What it learned of other peers' space and entries is written at
the next write or within ``STALE_WRITE_DELAY`` (their owners hold it on disk already), so a
100-peer consensus is no longer an fsync per batch on every peer.

With IPv6 on it runs a second allocator, for the IPv6 ring (``range6``), on the ``ipam6``
channel with its own state file. That ring needs no agreement of its own: it is divided among
the IPv4 ring's seed, by the peers that divided the IPv4 ring (after the consensus decided, or
with ``--ipalloc-init seed=``), at the same moment; every other peer adopts it from gossip, with
the same lost-state checks. A restored IPv4 ring without an IPv6 state file (a state directory
from a version without IPv6: no IPv6 ring was ever held here) divides it too.
"""

from __future__ import annotations

import collections
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Interface,
    IPv6Network,
)
from pathlib import Path
from typing import Any, Protocol, TypeVar, overload

import trio

from meshnet.config import Config
from meshnet.constants import ALLOCATE_TIMEOUT
from meshnet.errors import RemoteProtocolError, UserError
from meshnet.gossip.channel import Gossiper
from meshnet.gossip.events import MeshView, Watch
from meshnet.gossip.identity import format_peer_name, parse_peer_name
from meshnet.gossip.throttle import LogThrottle
from meshnet.ipam.allocator import (
    IPAM_CHANNEL,
    Address,
    Allocator,
    GossipAction,
    InitMode,
    Interface,
    IPAddress,
    IpamConfig,
    NeedSpace,
    UnicastAction,
    Waiting,
    inside,
)
from meshnet.ipam.range6 import DERIVED_RANGES6, IPAM6_CHANNEL, Ipv6Settings, config6
from meshnet.ipam.ring import RingMergeError
from meshnet.statefile import write_atomically

log = logging.getLogger("meshnet.ipam")

T = TypeVar("T")

STATE_FILE = "ipam.state"
STATE_FILE6 = "ipam6.state"
#: IPv6 ring gossip that arrived before this peer had an IPv6 ring (its IPv4 ring came later),
#: replayed when it does: a new peer would else wait for anti-entropy.
EARLY6_KEPT = 8
#: How long ``reset`` waits for the peer taking our ranges to acknowledge them.
HANDOVER_TIMEOUT = 30.0
#: How long peers' messages gather before the state is persisted once and they are acted upon
#: (a consensus round trip per hop grows by this much; a 100-peer consensus fsyncs far less).
BATCH_DELAY = 0.02


class IpamTransport(Protocol):
    """What the service needs of the router (``meshnet.gossip.router.Router``)."""

    def register_channel(self, name: str, gossiper: Gossiper) -> None: ...

    def gossip(self, channel: str, delta: bytes) -> None: ...

    def unicast(self, channel: str, destination: int, payload: bytes) -> bool: ...

    def reachable(self, peer: int) -> bool: ...

    def routable(self, peer: int) -> bool:
        """Whether ``unicast`` to ``peer`` would go out now."""
        ...

    def nick(self, name: int) -> str: ...

    def known_peers(self) -> list[int]: ...

    @property
    def views(self) -> Watch[MeshView]:
        """Published when routes, known peers or neighbours change (never on a heartbeat)."""
        ...


def keep_largest(kept: list[bytes], payload: bytes, limit: int) -> None:
    """Append `payload`; beyond `limit`, drop the smallest (kept in arrival order). The largest
    is the neighbour's full ring, sent once when the connection came up: anti-entropy sends it
    again over that connection only once it changed, so the deltas after it must not push it
    out (the ring merges in any order)."""
    kept.append(payload)
    if len(kept) > limit:
        kept.remove(min(kept, key=len))


def parse_init(text: str, launch_peers: int) -> tuple[InitMode, int, tuple[int, ...]]:
    """``--ipalloc-init``: ``consensus[=N]``, ``seed=NAME,...`` or ``observer``.

    Returns (mode, consensus size, seed). Without ``=N`` the consensus is over the launch
    peers and this one, as Weave does.
    """
    text = text.strip()
    kind, _, value = text.partition("=")
    if kind in ("", "consensus"):
        if not value:
            return InitMode.CONSENSUS, launch_peers + 1, ()
        try:
            size = int(value)
        except ValueError:
            size = 0
        if not 1 <= size <= 1024:
            raise UserError(f"bad --ipalloc-init {text!r}: consensus=N needs N from 1 to 1024")
        return InitMode.CONSENSUS, size, ()
    if kind == "seed":
        names = [n for n in value.split(",") if n]
        if not names:
            raise UserError("bad --ipalloc-init: seed=NAME,... needs peer names (aa:bb:cc:...)")
        seed = tuple(sorted({parse_peer_name(n.strip()) for n in names}))
        return InitMode.SEED, 1, seed
    if kind == "observer" and not value:
        return InitMode.OBSERVER, 1, ()
    raise UserError(
        f"bad --ipalloc-init {text!r}: expected consensus[=N], seed=NAME,... or observer"
    )


class IpamService:
    """IPAM for the daemon. Construct (which loads the persisted state), then ``serve``."""

    def __init__(
        self,
        config: IpamConfig,
        transport: IpamTransport,
        state_dir: Path,
        *,
        ipv6: Ipv6Settings | None = None,
        rng: random.Random | None = None,
        nickname: str = "",
        allocate_timeout: float = ALLOCATE_TIMEOUT,
    ) -> None:
        self.config = config
        self.ipv6 = ipv6
        self._transport = transport
        self._path = state_dir / STATE_FILE
        self._path6 = state_dir / STATE_FILE6
        self._nickname = nickname or format_peer_name(config.name)
        self._timeout = allocate_timeout
        self._wake = trio.Event()
        self._forgotten = False  # the state files are gone for good (reset): write none
        self._batch = trio.Event()  # set: peers' messages merged, not yet acted upon
        #: What those messages brought that is new, per channel, to relay after persisting.
        self._relays: dict[str, bytes] = {}
        self._refused: dict[str, int] = {}  # what a refused ring merge said, and how often
        #: Allocations and claims waiting for space (consensus, a donation): Weave's
        #: weave_ipam_pending_allocates and _claims.
        self.pending: collections.Counter[str] = collections.Counter(allocate=0, claim=0)
        self._forgery_log = LogThrottle()  # one line per 10 s
        self._rng = rng or random.Random()
        self.allocator = self._load(self._rng)
        self.allocator.reachable = transport.reachable
        self.allocator.routable = transport.routable
        #: The IPv6 ring's allocator: None until the IPv4 ring exists (or with IPv6 off).
        self.allocator6: Allocator | None = None
        self._early6: list[bytes] = []
        self._start6(restored=self.allocator.ring.seeded)
        transport.register_channel(IPAM_CHANNEL, self)
        if ipv6 is not None:
            transport.register_channel(IPAM6_CHANNEL, Ipam6Channel(self))

    def _load(self, rng: random.Random) -> Allocator:
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            return Allocator(self.config, rng)
        except OSError as e:
            raise UserError(f"cannot read IPAM state {self._path}: {e.strerror}") from None
        allocator = Allocator.from_state(self.config, data, rng)
        status = allocator.status()
        log.info(
            "%s: IPAM state restored: %d addresses in use here, ring %s",
            self._nickname,
            status.allocated_here,
            status.consensus,
        )
        return allocator

    def _start6(self, *, restored: bool = False) -> None:
        """The IPv6 allocator, once the IPv4 ring (and so its seed) exists; see the module
        docstring for who divides the IPv6 ring and who waits for it."""
        if self.ipv6 is None or self.allocator6 is not None or not self.allocator.ring.seeded:
            return
        seed = self.allocator.ring.seed
        config = config6(self.ipv6, self.config.name, seed)
        try:
            data: bytes | None = self._path6.read_bytes()
        except FileNotFoundError:
            data = None
        except OSError as e:
            raise UserError(f"cannot read IPAM state {self._path6}: {e.strerror}") from None
        now = _now()
        if data is not None:
            allocator6 = Allocator.from_state(config, data, self._rng)
        else:
            allocator6 = Allocator(config, self._rng)
            allocator6.dirty = True  # the file says from now on: this peer has an IPv6 ring
            if restored or self.allocator.divided_here:
                allocator6.follow(seed, now)
            heir = self.allocator.handover_to
            if heir is not None:  # reset before the ring existed: the IPv6 share goes too
                allocator6.reset(heir, now, force=True)
        allocator6.reachable = self._transport.reachable
        allocator6.routable = self._transport.routable
        self.allocator6 = allocator6
        log.info("%s: IPv6 ring range %s", self._nickname, config.range)
        early, self._early6 = self._early6, []
        for payload in early:
            try:
                allocator6.on_gossip(payload)
            except RemoteProtocolError as e:
                self._note_refused(f"IPv6: {e}")

    def keep_early6(self, payload: bytes) -> None:
        """IPv6 ring gossip before this peer has an IPv6 ring: replayed when it does."""
        if self.ipv6 is not None:
            keep_largest(self._early6, payload, EARLY6_KEPT)

    def _allocators(self) -> list[Allocator]:
        return [self.allocator] if self.allocator6 is None else [self.allocator, self.allocator6]

    # --- the service task

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Timers: consensus retries, unanswered requests, hand-over re-sends, free reports."""
        self._after()  # a restored peer re-announces what it holds
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_mesh)
            nursery.start_soon(self._act_on_batches)
            task_status.started()
            await self._run_timers()

    async def _follow_mesh(self) -> None:
        version = self._transport.views.version
        while True:
            version, _ = await self._transport.views.wait_newer(version)
            self._mesh_changed()

    async def _run_timers(self) -> None:
        while True:
            event = self._wake
            wake = self._next_wake()
            deadline = wake if math.isfinite(wake) else trio.current_time() + 60
            with trio.move_on_at(deadline):
                await event.wait()
            now = trio.current_time()
            if now >= self._next_wake():
                for allocator in self._allocators():
                    if now >= allocator.next_wake():
                        allocator.tick(now)
                self._after()
                if self._next_wake() <= now:
                    await trio.sleep(0.05)  # never spin on a timer the core did not move

    def _next_wake(self) -> float:
        return min(a.next_wake() for a in self._allocators())

    def _mesh_changed(self) -> None:
        """A peer may have become reachable: waiters try again (a donor is asked only then)."""
        self._wake.set()
        self._wake = trio.Event()

    def _persist(self) -> bool:
        """Write each dirty ring's state; whether any was."""
        if self._forgotten:  # nothing is kept any more: nothing is left to write
            for forgotten in self._allocators():
                forgotten.dirty = False
            return False
        wrote = False
        for allocator, path in ((self.allocator, self._path), (self.allocator6, self._path6)):
            if allocator is not None and allocator.dirty:
                wrote = True
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomically(path, allocator.to_state())
        return wrote

    def _after(self, *, wake: bool = True) -> None:
        """Persist, then send, then wake the waiters — after every call into the allocator.

        ``wake`` False (a waiter's own attempt): wake the others only if something changed,
        or two waiters would wake each other forever.
        """
        self._start6()
        sends = [(IPAM_CHANNEL, self.allocator.take_actions())]
        if self.allocator6 is not None:
            sends.append((IPAM6_CHANNEL, self.allocator6.take_actions()))
        wake = self._persist() or wake
        relays, self._relays = self._relays, {}
        for channel, delta in relays.items():
            self._transport.gossip(channel, delta)
        actions = [(channel, action) for channel, some in sends for action in some]
        for channel, action in actions:
            if isinstance(action, GossipAction):
                self._transport.gossip(channel, action.payload)
            elif isinstance(action, UnicastAction) and not self._transport.unicast(
                channel, action.destination, action.payload
            ):
                log.debug(
                    "%s: IPAM message to %s dropped: unreachable",
                    self._nickname,
                    self._transport.nick(action.destination),
                )
        if wake or actions or relays:
            self._wake.set()
            self._wake = trio.Event()

    def _after_message(self) -> None:
        """A peer's message was merged: act on it with the others of its batch."""
        self._batch.set()

    async def _act_on_batches(self) -> None:
        while True:
            await self._batch.wait()
            await trio.sleep(BATCH_DELAY)
            self._batch = trio.Event()
            self._after()

    async def _until(
        self, operation: str, what: str, attempt: Callable[[float], T | NeedSpace]
    ) -> T:
        """``attempt`` until it gives an answer (an address); meanwhile the operation counts
        as pending."""
        deadline = trio.current_time() + self._timeout
        waiting = False
        try:
            while True:
                now = trio.current_time()
                try:
                    result = attempt(now)
                finally:
                    self._after(wake=False)
                if not isinstance(result, NeedSpace):
                    return result
                if now >= deadline:
                    raise UserError(self._timeout_message(what, result))
                if not waiting:
                    waiting = True
                    self.pending[operation] += 1
                event = self._wake  # set by the next message, timer or change
                with trio.move_on_at(deadline):
                    await event.wait()
        finally:
            if waiting:
                self.pending[operation] -= 1

    def _timeout_message(self, what: str, need: NeedSpace) -> str:
        if need.reason is Waiting.CONSENSUS:
            if self.config.mode is InitMode.CONSENSUS:
                size = self.config.consensus_size
                why = (
                    f"no quorum ({size // 2 + 1} of {size} initial peers, "
                    f"--ipalloc-init consensus={size}) agreed on the IPAM ring yet: "
                    "are enough peers running and connected?"
                )
            elif self.config.mode is InitMode.OBSERVER:
                why = "this observer has not yet heard of the IPAM ring from any peer"
            else:
                why = "the IPAM ring is not known yet"
            return f"cannot {what} within {self._timeout:.0f}s: {why}"
        if need.reason is Waiting.DONATION:
            donor = self._transport.nick(need.donor) if need.donor is not None else "?"
            return (
                f"cannot {what} within {self._timeout:.0f}s: no free space here, and peer "
                f"{donor} did not donate any in time"
            )
        return f"cannot {what}: no peer reports free addresses in that subnet (exhausted)"

    # --- the public face (API, DNS, docker integration)

    async def allocate(self, container_id: str, subnet: IPv4Network | None = None) -> IPv4Interface:
        """The container's IPv4 address in ``subnet`` (the default subnet if None); idempotent."""
        where = subnet or self.config.subnet
        address = await self._until(
            "allocate",
            f"allocate an address in {where}",
            lambda now: self.allocator.allocate(container_id, subnet, now),
        )
        assert isinstance(address.interface, IPv4Interface)
        return address.interface

    async def allocate6(
        self, container_id: str, subnet: IPv6Network | None = None
    ) -> IPv6Interface:
        """The container's IPv6 address in ``subnet`` (the default /64 if None); idempotent.

        Before the IPv4 ring exists this starts its consensus: it divides both rings."""
        self._check_ipv6()
        where = subnet or "the default IPv6 subnet"
        address = await self._until(
            "allocate",
            f"allocate an address in {where}",
            lambda now: self._on_ring6(now, lambda a: a.allocate(container_id, subnet, now)),
        )
        assert isinstance(address.interface, IPv6Interface)
        return address.interface

    def _check_ipv6(self) -> None:
        if self.ipv6 is None:
            raise UserError("IPv6 is off on this peer (launched with --no-ipv6)")

    async def ring6(self) -> IpamConfig:
        """The IPv6 ring's settings (its range and default subnet), once the ring exists: what
        Docker's IPv6 pools are carved from. Waits for it as an allocation does (and starts
        the IPv4 ring's consensus, whose seed divides it, if nothing has yet)."""
        self._check_ipv6()
        return await self._until(
            "allocate",
            "know the IPv6 range",
            lambda now: self._on_ring6(now, lambda allocator: allocator.config),
        )

    def _on_ring6(self, now: float, attempt: Callable[[Allocator], T | NeedSpace]) -> T | NeedSpace:
        if self.allocator6 is None:
            self.allocator.start_ring(now)  # the IPv4 ring's seed divides the IPv6 ring
            return NeedSpace(Waiting.CONSENSUS)
        return attempt(self.allocator6)

    @overload
    async def claim(self, container_id: str, address: IPv4Interface) -> IPv4Interface: ...

    @overload
    async def claim(self, container_id: str, address: IPv6Interface) -> IPv6Interface: ...

    async def claim(self, container_id: str, address: Interface) -> Interface:
        """Give the container exactly ``address``; AddressInUse if another container holds it.

        The prefix length is kept when the address's network lies inside the allocation range;
        otherwise (e.g. ``ip:ADDR`` without one) the default subnet's applies.
        """
        net = address.network
        if isinstance(address, IPv6Interface):
            self._check_ipv6()

            def attempt(now: float) -> Address | NeedSpace:
                def claim6(allocator: Allocator) -> Address | NeedSpace:
                    inner = inside(net, allocator.config.range) and net.prefixlen < 128
                    return allocator.claim(container_id, address.ip, now, net if inner else None)

                return self._on_ring6(now, claim6)
        else:
            subnet = net if inside(net, self.config.range) and net.prefixlen < 32 else None

            def attempt(now: float) -> Address | NeedSpace:
                return self.allocator.claim(container_id, address.ip, now, subnet)

        result = await self._until("claim", f"claim {address.ip}", attempt)
        return result.interface

    async def release(
        self, container_id: str, only: Sequence[IPAddress] | None = None
    ) -> list[IPAddress]:
        """Free every address the container holds (both families), or those of ``only`` (none:
        nothing happens)."""
        released: list[IPAddress] = []
        try:
            for allocator in self._allocators():
                version = allocator.config.range.version
                mine = None if only is None else [a for a in only if a.version == version]
                released += allocator.release(container_id, trio.current_time(), mine)
        finally:
            self._after()
        return released

    def rename(self, container_id: str, to: str) -> list[IPAddress]:
        """Give every address the container holds (both families) to the key ``to``: the same
        container under a new key."""
        moved: list[IPAddress] = []
        try:
            for allocator in self._allocators():
                moved += allocator.rename(container_id, to)
        finally:
            self._after()
        return moved

    def addresses_of(self, container_id: str) -> list[Interface]:
        """What the container holds here: its IPv4 addresses, then its IPv6 ones."""
        return [a.interface for x in self._allocators() for a in x.addresses_of(container_id)]

    def holders(self, prefix: str = "") -> dict[str, list[str]]:
        """Who holds addresses here (ids starting with ``prefix``) and which: what a runtime's
        garbage collection compares with the attachments it still knows (CNI ``GC``)."""
        out: dict[str, list[str]] = {}
        for allocator in self._allocators():
            for address, holder in allocator.space.allocations():
                if holder.startswith(prefix):
                    out.setdefault(holder, []).append(str(allocator.config.address(address)))
        return out

    def in_range(self, address: IPAddress) -> bool:
        """Whether IPAM hands ``address`` out (an IPv6 range derived from the seed is not known
        before the IPv4 ring exists: then any ULA address might be, and a claim tells)."""
        if isinstance(address, IPv4Address):
            return address in self.config.range
        if self.ipv6 is None:
            return False
        if self.allocator6 is not None:
            return address in self.allocator6.config.range
        if self.ipv6.range is not None:
            return address in self.ipv6.range
        return address in DERIVED_RANGES6

    @property
    def default_subnet6(self) -> IPv6Network | None:
        """The default IPv6 subnet, once known (None: IPv6 off, or no ring yet)."""
        if self.allocator6 is None:
            return None
        subnet = self.allocator6.config.subnet
        assert isinstance(subnet, IPv6Network)
        return subnet

    async def reset(self, *, force: bool = False) -> dict[str, Any]:
        """Hand every range (both rings) to a live peer and wait for its acknowledgement
        (``meshnet reset``).

        Weave's reset sent its ranges and stopped at once: a lost message lost the space. Here
        the hand-over is re-sent until acknowledged, and the caller learns whether it was.
        Addresses this peer holds for itself (ids ``SERVICE:<our peer name>``, like the DNS
        server's) go with it; containers' addresses refuse the reset unless ``force``.
        """
        own = ":" + format_peer_name(self.config.name)
        allocators = self._allocators()
        holders = {h for a in allocators for _, h in a.space.allocations()}
        containers = [h for h in holders if not h.endswith(own)]
        if containers and not force and not self.allocator.leaving:
            in_use = sum(len(a.space.addresses(h)) for a in allocators for h in containers)
            raise UserError(
                f"{in_use} addresses are still in use by containers here: detach them first "
                "(or --force to forget them)"
            )
        heir = self._choose_heir()
        owned = self._owned(self.allocator)
        owned6 = 0 if self.allocator6 is None else self._owned(self.allocator6)
        if heir is None:
            if owned or owned6:
                raise UserError(
                    "no other peer is reachable to take this peer's ranges over: connect one "
                    "first (or use `meshnet rmpeer` on another peer once this one is gone)"
                )
            return {"handed_to": None, "addresses": 0, "acknowledged": True}
        try:
            now = trio.current_time()
            for allocator in allocators:
                for holder in holders - set(containers):
                    allocator.release(holder, now)
                allocator.reset(heir, now, force=force)
        finally:
            self._after()
        log.info(
            "%s: handing %d addresses (and %d IPv6 ones) over to %s",
            self._nickname,
            owned,
            owned6,
            self._transport.nick(heir),
        )
        with trio.move_on_after(HANDOVER_TIMEOUT):
            while not all(a.handed_over for a in self._allocators()):
                event = self._wake
                await event.wait()
        acknowledged = all(a.handed_over for a in self._allocators())
        if acknowledged:
            log.info(
                "%s: %s acknowledged the hand-over", self._nickname, self._transport.nick(heir)
            )
        result: dict[str, Any] = {
            "handed_to": format_peer_name(heir),
            "nickname": self._transport.nick(heir),
            "addresses": owned,
            "acknowledged": acknowledged,
        }
        if self.allocator6 is not None:
            result["addresses6"] = owned6
        return result

    @staticmethod
    def _owned(allocator: Allocator) -> int:
        return sum(e - s for s, e in allocator.owned_ranges())

    def forget_state(self) -> None:
        """After an acknowledged reset: a relaunch starts as a new, empty peer (and no batch of
        messages acted upon later writes the state back)."""
        self._forgotten = True
        self._path.unlink(missing_ok=True)
        self._path6.unlink(missing_ok=True)

    def _choose_heir(self) -> int | None:
        """The reachable peer owning the most space (it has the most to give back later)."""
        me = self.config.name
        sizes: dict[int, int] = {}
        for share in self.allocator.status().peers:
            if share.peer != me and self._transport.reachable(share.peer):
                sizes[share.peer] = share.size
        if sizes:
            return max(sorted(sizes), key=lambda p: sizes[p])
        others = [p for p in self._transport.known_peers() if p != me]
        live = [p for p in sorted(others) if self._transport.reachable(p)]
        return live[0] if live else None

    def rmpeer(self, peer: int) -> dict[str, Any]:
        """Reclaim a dead peer's ranges (both rings); refused while it is reachable."""
        if peer != self.config.name and self._transport.reachable(peer):
            raise UserError(
                f"peer {self._transport.nick(peer)} ({format_peer_name(peer)}) is reachable: "
                "rmpeer is only for peers gone for good (run `meshnet reset` on it instead)"
            )
        before = [
            sum(s.size for s in a.status().peers if s.peer == peer) for a in self._allocators()
        ]
        heirs: list[int | None] = []
        try:
            for allocator in self._allocators():
                if allocator is self.allocator6 and not allocator.ring.seeded:
                    heirs.append(None)  # no IPv6 ring here yet: nothing of it to reclaim
                    continue
                heirs.append(allocator.rmpeer(peer, trio.current_time()))
        finally:
            self._after()
        heir = next((h for h in heirs if h is not None), None)
        if heir is not None:
            log.info(
                "%s: reclaimed %d addresses of %s for %s",
                self._nickname,
                before[0],
                format_peer_name(peer),
                self._transport.nick(heir),
            )
        result: dict[str, Any] = {
            "peer": format_peer_name(peer),
            "heir": format_peer_name(heir) if heir is not None else None,
            "addresses": before[0] if heirs[0] is not None else 0,
        }
        if len(heirs) == 2:
            result["addresses6"] = before[1] if heirs[1] is not None else 0
        return result

    def resolve_peer(self, text: str) -> int:
        """A peer named by its MAC-style name or by its nickname (if that is unambiguous)."""
        if text.count(":") == 5:
            return parse_peer_name(text)
        candidates = {p.peer for p in self.allocator.status().peers}
        candidates.update(self._transport.known_peers())
        matches = [p for p in sorted(candidates) if self._transport.nick(p) == text]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise UserError(f"no peer named {text!r} (give its name, like aa:bb:cc:dd:ee:ff)")
        raise UserError(f"several peers are nicknamed {text!r}: give the peer name instead")

    def status(self) -> dict[str, Any]:
        """What ``meshnet status ipam`` shows: the IPv4 ring, and under ``ipv6`` the IPv6 one
        (None with IPv6 off)."""
        status = self.allocator.status()
        return {
            "name": format_peer_name(self.config.name),
            **self._ring_status(self.allocator),
            "consensus_size": self.config.consensus_size
            if self.config.mode is InitMode.CONSENSUS
            else None,
            "pending": dict(self.pending),
            "refused_merges": dict(self._refused),
            "leaving": status.leaving,
            "handed_over": status.handed_over,
            "ipv6": self._status6(),
        }

    def _status6(self) -> dict[str, Any] | None:
        if self.ipv6 is None:
            return None
        if self.allocator6 is None:
            # Not divided yet: it will be, by the IPv4 ring's seed.
            configured = self.ipv6.range
            return {
                "range": str(configured) if configured else None,
                "default_subnet": None,
                "consensus": "idle",
                "seed": [],
                "peers": [],
                "allocated_here": 0,
            }
        return self._ring_status(self.allocator6)

    def _ring_status(self, allocator: Allocator) -> dict[str, Any]:
        status = allocator.status()
        total = status.range.num_addresses
        peers = []
        for share in status.peers:
            here = share.peer == self.config.name
            used = len(allocator.space) if here else share.size - share.free
            peers.append(
                {
                    "name": format_peer_name(share.peer),
                    "nickname": self._transport.nick(share.peer),
                    "local": here,
                    "ranges": [f"{lo}-{hi}" for lo, hi in share.ranges],
                    "size": share.size,
                    "in_use": used,
                    "free": share.size - used if here else share.free,
                    "share": share.size / total,
                    "reachable": here or self._transport.reachable(share.peer),
                }
            )
        return {
            "range": str(status.range),
            "default_subnet": str(status.default_subnet),
            "mode": status.mode.value,
            "consensus": status.consensus,
            "seed": [format_peer_name(p) for p in status.seed],
            "peers": peers,
            "allocated_here": status.allocated_here,
            "counters": asdict(allocator.counters),
            "forgeries": {
                "implausible_tokens": allocator.ring.implausible,
                "unasked_gifts": allocator.ring.unasked_gifts,
                "reasserted_tokens": allocator.ring.reassertions,
            },
        }

    # --- Gossiper (the ``ipam`` channel; ``Ipam6Channel`` is the ``ipam6`` one)

    def full_state(self) -> bytes | None:
        self._persist()
        return self.allocator.full_state()

    def on_gossip(self, payload: bytes) -> bytes | None:
        self.gossip_into(self.allocator, payload, IPAM_CHANNEL, "")
        return None

    def gossip_into(self, allocator: Allocator, payload: bytes, channel: str, family: str) -> None:
        """A ring's gossip into its allocator: refusals counted and logged, forgeries logged,
        what is new relayed (to every neighbour, the sender too: it merges nothing) with the
        rest of the batch, once persisted."""
        ring = allocator.ring
        forged = ring.implausible + ring.unasked_gifts
        try:
            allocator.advance(trio.current_time())
            delta = allocator.on_gossip(payload)
            if delta is not None:
                pending = self._relays.get(channel)
                self._relays[channel] = (
                    delta if pending is None else allocator.merge_payloads(pending, delta)
                )
        except RingMergeError as e:
            # Raised on: the router drops the connection and logs it too. Two rings seeded
            # differently must never merge (weaveworks/weave #2809, #3427).
            self._note_refused(family + str(e))
            raise
        finally:
            self._after_message()
            if ring.implausible + ring.unasked_gifts != forged:
                self._log_forgery(allocator, family)

    def _note_refused(self, reason: str) -> None:
        self._refused[reason] = self._refused.get(reason, 0) + 1
        if self._refused[reason] == 1 or self._refused[reason] % 100 == 0:
            log.warning(
                "%s: refusing to merge a peer's IPAM ring: %s (a mesh seeded differently? "
                "its addresses could collide with ours; `meshnet reset` one side to join)",
                self._nickname,
                reason,
            )

    def _log_forgery(self, allocator: Allocator, family: str) -> None:
        """Forged ring tokens were dropped (counted in the ring): one line per 10 s."""
        if self._forgery_log.allow("ring" + family, trio.current_time()) is None:
            return
        ring = allocator.ring
        log.warning(
            "%s: dropped forged %sIPAM ring tokens: %d at implausible versions, %d giving us a "
            "live peer's space unasked (so far)",
            self._nickname,
            family,
            ring.implausible,
            ring.unasked_gifts,
        )

    def merge_payloads(self, a: bytes, b: bytes) -> bytes:
        return self.allocator.merge_payloads(a, b)

    def on_broadcast(self, source: int, payload: bytes) -> None:
        """IPAM uses no broadcasts."""

    def on_unicast(self, source: int, payload: bytes) -> None:
        self.unicast_into(self.allocator, source, payload)

    def unicast_into(self, allocator: Allocator, source: int, payload: bytes) -> None:
        try:
            allocator.advance(trio.current_time())
            allocator.on_unicast(source, payload)
        finally:
            self._after_message()


class Ipam6Channel:
    """The ``ipam6`` channel's ``Gossiper``: the IPv6 ring's messages into the service's IPv6
    allocator. Before that exists (no IPv4 ring yet) gossip is kept for it, unicasts dropped
    (nobody asks a peer without a ring for space; a lost reply is retried)."""

    def __init__(self, service: IpamService) -> None:
        self._service = service

    def full_state(self) -> bytes | None:
        allocator = self._service.allocator6
        if allocator is None:
            return None
        self._service.full_state()  # persisted first
        return allocator.full_state()

    def on_gossip(self, payload: bytes) -> bytes | None:
        allocator = self._service.allocator6
        if allocator is None:
            self._service.keep_early6(payload)
        else:
            self._service.gossip_into(allocator, payload, IPAM6_CHANNEL, "IPv6: ")
        return None

    def merge_payloads(self, a: bytes, b: bytes) -> bytes:
        allocator = self._service.allocator6
        return b if allocator is None else allocator.merge_payloads(a, b)

    def on_broadcast(self, source: int, payload: bytes) -> None:
        """IPAM uses no broadcasts."""

    def on_unicast(self, source: int, payload: bytes) -> None:
        allocator = self._service.allocator6
        if allocator is not None:
            self._service.unicast_into(allocator, source, payload)


def _now() -> float:
    """trio's clock, or 0 outside trio (a service built before the run starts)."""
    try:
        return trio.current_time()
    except RuntimeError:
        return 0.0


def ipam_config(config: Config, name: int) -> IpamConfig:
    """The allocator's settings from the daemon's; UserError (one line) if they are bad."""
    mode, size, seed = parse_init(config.ipalloc_init, len(config.peers))
    return IpamConfig(
        name=name,
        range=config.ipalloc_range,
        default_subnet=config.ipalloc_default_subnet,
        mode=mode,
        consensus_size=size,
        seed=seed,
    )


def ipv6_settings(config: Config) -> Ipv6Settings | None:
    """The IPv6 ring's settings (None: ``--no-ipv6``); UserError (one line) if they are bad."""
    if not config.ipv6:
        return None
    return Ipv6Settings(config.ipalloc_range6, config.ipalloc_default_subnet6)
