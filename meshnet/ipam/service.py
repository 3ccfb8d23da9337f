"""The trio shell around the IPAM ``Allocator``: persistence, gossip, timers and waiting.

The allocator is pure; this shell drives it exactly as its module docstring asks. After every
call into it (a user's operation, a message, a timer) the shell

1. writes ``to_state()`` atomically (tmp file, fsync, rename, fsync of the directory) if it is
   ``dirty`` — synchronously, before anything else can run. The state is small (the ring and
   this peer's allocations), and doing it inline means no task can ever send, or serve as
   anti-entropy, a ring change that a ``kill -9`` could still undo;
2. hands ``take_actions()`` to the router (gossip to every neighbour, unicasts hop by hop);
3. wakes every operation waiting for space (``NeedSpace``) so it tries again.

The service is the ``ipam`` channel's ``Gossiper``: it wraps the allocator's, so that what a
message changed is persisted and acted upon at once.
"""

from __future__ import annotations

import collections
import logging
import math
import random
from collections.abc import Callable
from dataclasses import asdict
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, Protocol

import trio

from meshnet.config import Config
from meshnet.constants import ALLOCATE_TIMEOUT
from meshnet.errors import UserError
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
    IpamConfig,
    NeedSpace,
    UnicastAction,
    Waiting,
)
from meshnet.ipam.ring import RingMergeError
from meshnet.statefile import write_atomically

log = logging.getLogger("meshnet.ipam")

STATE_FILE = "ipam.state"
#: How long ``reset`` waits for the peer taking our ranges to acknowledge them.
HANDOVER_TIMEOUT = 30.0
#: At most one log line per this many seconds about forged ring tokens (each one is counted).


class IpamTransport(Protocol):
    """What the service needs of the router (``meshnet.gossip.router.Router``)."""

    def register_channel(self, name: str, gossiper: Gossiper) -> None: ...

    def gossip(self, channel: str, delta: bytes) -> None: ...

    def unicast(self, channel: str, destination: int, payload: bytes) -> bool: ...

    def reachable(self, peer: int) -> bool: ...

    def nick(self, name: int) -> str: ...

    def known_peers(self) -> list[int]: ...

    @property
    def views(self) -> Watch[MeshView]:
        """Published when routes, known peers or neighbours change (never on a heartbeat)."""
        ...


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
        rng: random.Random | None = None,
        nickname: str = "",
        allocate_timeout: float = ALLOCATE_TIMEOUT,
    ) -> None:
        self.config = config
        self._transport = transport
        self._path = state_dir / STATE_FILE
        self._nickname = nickname or format_peer_name(config.name)
        self._timeout = allocate_timeout
        self._wake = trio.Event()
        self._refused: dict[str, int] = {}  # what a refused ring merge said, and how often
        #: Allocations and claims waiting for space (consensus, a donation): Weave's
        #: weave_ipam_pending_allocates and _claims.
        self.pending: collections.Counter[str] = collections.Counter(allocate=0, claim=0)
        self._forgery_log = LogThrottle()  # one line per 10 s
        rng = rng or random.Random()
        self.allocator = self._load(rng)
        self.allocator.reachable = transport.reachable
        transport.register_channel(IPAM_CHANNEL, self)

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

    # --- the service task

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Timers: consensus retries, unanswered requests, hand-over re-sends, free reports."""
        self._after()  # a restored peer re-announces what it holds
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_mesh)
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
            wake = self.allocator.next_wake()
            deadline = wake if math.isfinite(wake) else trio.current_time() + 60
            with trio.move_on_at(deadline):
                await event.wait()
            now = trio.current_time()
            if now >= self.allocator.next_wake():
                self.allocator.tick(now)
                self._after()
                if self.allocator.next_wake() <= now:
                    await trio.sleep(0.05)  # never spin on a timer the core did not move

    def _mesh_changed(self) -> None:
        """A peer may have become reachable: waiters try again (a donor is asked only then)."""
        self._wake.set()
        self._wake = trio.Event()

    def _after(self, *, wake: bool = True) -> None:
        """Persist, then send, then wake the waiters — after every call into the allocator.

        ``wake`` False (a waiter's own attempt): wake the others only if something changed,
        or two waiters would wake each other forever.
        """
        actions = self.allocator.take_actions()
        if self.allocator.dirty:
            wake = True
            self._path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self._path, self.allocator.to_state())
        for action in actions:
            if isinstance(action, GossipAction):
                self._transport.gossip(IPAM_CHANNEL, action.payload)
            elif isinstance(action, UnicastAction) and not self._transport.unicast(
                IPAM_CHANNEL, action.destination, action.payload
            ):
                log.debug(
                    "%s: IPAM message to %s dropped: unreachable",
                    self._nickname,
                    self._transport.nick(action.destination),
                )
        if wake or actions:
            self._wake.set()
            self._wake = trio.Event()

    async def _until(
        self, operation: str, what: str, attempt: Callable[[float], Address | NeedSpace]
    ) -> Address:
        """``attempt`` until it gives an address; meanwhile the operation counts as pending."""
        deadline = trio.current_time() + self._timeout
        waiting = False
        try:
            while True:
                now = trio.current_time()
                try:
                    result = attempt(now)
                finally:
                    self._after(wake=False)
                if isinstance(result, Address):
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
        """The container's address in ``subnet`` (the default subnet if None); idempotent."""
        where = subnet or self.config.subnet
        address = await self._until(
            "allocate",
            f"allocate an address in {where}",
            lambda now: self.allocator.allocate(container_id, subnet, now),
        )
        return address.interface

    async def claim(self, container_id: str, address: IPv4Interface) -> IPv4Interface:
        """Give the container exactly ``address``; AddressInUse if another container holds it.

        The prefix length is kept when the address's network lies inside the allocation range;
        otherwise (e.g. ``ip:ADDR`` without one) the default subnet's applies.
        """
        net = address.network
        subnet = net if net.subnet_of(self.config.range) and net.prefixlen < 32 else None
        result = await self._until(
            "claim",
            f"claim {address.ip}",
            lambda now: self.allocator.claim(container_id, address.ip, now, subnet),
        )
        return result.interface

    async def release(
        self, container_id: str, only: list[IPv4Address] | None = None
    ) -> list[IPv4Address]:
        """Free every address the container holds, or those of ``only`` (none: nothing
        happens)."""
        try:
            return self.allocator.release(container_id, trio.current_time(), only)
        finally:
            self._after()

    def addresses_of(self, container_id: str) -> list[IPv4Interface]:
        return [a.interface for a in self.allocator.addresses_of(container_id)]

    def holders(self, prefix: str = "") -> dict[str, list[str]]:
        """Who holds addresses here (ids starting with ``prefix``) and which: what a runtime's
        garbage collection compares with the attachments it still knows (CNI ``GC``)."""
        out: dict[str, list[str]] = {}
        for address, holder in self.allocator.space.allocations():
            if holder.startswith(prefix):
                out.setdefault(holder, []).append(str(IPv4Address(address)))
        return out

    def in_range(self, address: IPv4Address) -> bool:
        return address in self.config.range

    async def reset(self, *, force: bool = False) -> dict[str, Any]:
        """Hand every range to a live peer and wait for its acknowledgement (``meshnet reset``).

        Weave's reset sent its ranges and stopped at once: a lost message lost the space. Here
        the hand-over is re-sent until acknowledged, and the caller learns whether it was.
        Addresses this peer holds for itself (ids ``SERVICE:<our peer name>``, like the DNS
        server's) go with it; containers' addresses refuse the reset unless ``force``.
        """
        own = ":" + format_peer_name(self.config.name)
        holders = {holder for _, holder in self.allocator.space.allocations()}
        containers = [h for h in holders if not h.endswith(own)]
        if containers and not force and not self.allocator.leaving:
            in_use = sum(len(self.allocator.space.addresses(h)) for h in containers)
            raise UserError(
                f"{in_use} addresses are still in use by containers here: detach them first "
                "(or --force to forget them)"
            )
        heir = self._choose_heir()
        owned = sum(e - s for s, e in self.allocator.owned_ranges())
        if heir is None:
            if owned:
                raise UserError(
                    "no other peer is reachable to take this peer's ranges over: connect one "
                    "first (or use `meshnet rmpeer` on another peer once this one is gone)"
                )
            return {"handed_to": None, "addresses": 0, "acknowledged": True}
        try:
            for holder in holders - set(containers):
                self.allocator.release(holder, trio.current_time())
            self.allocator.reset(heir, trio.current_time(), force=force)
        finally:
            self._after()
        log.info(
            "%s: handing %d addresses over to %s",
            self._nickname,
            owned,
            self._transport.nick(heir),
        )
        with trio.move_on_after(HANDOVER_TIMEOUT):
            while not self.allocator.handed_over:
                event = self._wake
                await event.wait()
        acknowledged = self.allocator.handed_over
        if acknowledged:
            log.info(
                "%s: %s acknowledged the hand-over", self._nickname, self._transport.nick(heir)
            )
        return {
            "handed_to": format_peer_name(heir),
            "nickname": self._transport.nick(heir),
            "addresses": owned,
            "acknowledged": acknowledged,
        }

    def forget_state(self) -> None:
        """After an acknowledged reset: a relaunch starts as a new, empty peer."""
        self._path.unlink(missing_ok=True)

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
        """Reclaim a dead peer's ranges; refused while it is reachable."""
        if peer != self.config.name and self._transport.reachable(peer):
            raise UserError(
                f"peer {self._transport.nick(peer)} ({format_peer_name(peer)}) is reachable: "
                "rmpeer is only for peers gone for good (run `meshnet reset` on it instead)"
            )
        before = sum(
            s.size for s in self.allocator.status().peers if s.peer == peer
        )  # what it owned
        try:
            heir = self.allocator.rmpeer(peer, trio.current_time())
        finally:
            self._after()
        if heir is not None:
            log.info(
                "%s: reclaimed %d addresses of %s for %s",
                self._nickname,
                before,
                format_peer_name(peer),
                self._transport.nick(heir),
            )
        return {
            "peer": format_peer_name(peer),
            "heir": format_peer_name(heir) if heir is not None else None,
            "addresses": before if heir is not None else 0,
        }

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
        """What ``meshnet status ipam`` shows."""
        status = self.allocator.status()
        total = status.range.num_addresses
        peers = []
        for share in status.peers:
            here = share.peer == self.config.name
            used = len(self.allocator.space) if here else share.size - share.free
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
            "name": format_peer_name(self.config.name),
            "range": str(status.range),
            "default_subnet": str(status.default_subnet),
            "mode": status.mode.value,
            "consensus": status.consensus,
            "consensus_size": self.config.consensus_size
            if self.config.mode is InitMode.CONSENSUS
            else None,
            "seed": [format_peer_name(p) for p in status.seed],
            "peers": peers,
            "allocated_here": status.allocated_here,
            "leaving": status.leaving,
            "handed_over": status.handed_over,
            "pending": dict(self.pending),
            "refused_merges": dict(self._refused),
            "counters": asdict(self.allocator.counters),
            "forgeries": {
                "implausible_tokens": self.allocator.ring.implausible,
                "unasked_gifts": self.allocator.ring.unasked_gifts,
                "reasserted_tokens": self.allocator.ring.reassertions,
            },
        }

    # --- Gossiper (the ``ipam`` channel)

    def full_state(self) -> bytes | None:
        return self.allocator.full_state()

    def on_gossip(self, payload: bytes) -> bytes | None:
        ring = self.allocator.ring
        forged = ring.implausible + ring.unasked_gifts
        try:
            return self.allocator.on_gossip(payload)
        except RingMergeError as e:
            # Raised on: the router drops the connection and logs it too. Two rings seeded
            # differently must never merge (weaveworks/weave #2809, #3427).
            reason = str(e)
            self._refused[reason] = self._refused.get(reason, 0) + 1
            if self._refused[reason] == 1 or self._refused[reason] % 100 == 0:
                log.warning(
                    "%s: refusing to merge a peer's IPAM ring: %s (a mesh seeded differently? "
                    "its addresses could collide with ours; `meshnet reset` one side to join)",
                    self._nickname,
                    reason,
                )
            raise
        finally:
            self._after()
            if ring.implausible + ring.unasked_gifts != forged:
                self._log_forgery()

    def _log_forgery(self) -> None:
        """Forged ring tokens were dropped (counted in the ring): one line per 10 s."""
        if self._forgery_log.allow("ring", trio.current_time()) is None:
            return
        ring = self.allocator.ring
        log.warning(
            "%s: dropped forged IPAM ring tokens: %d at implausible versions, %d giving us a "
            "live peer's space unasked (so far)",
            self._nickname,
            ring.implausible,
            ring.unasked_gifts,
        )

    def merge_payloads(self, a: bytes, b: bytes) -> bytes:
        return self.allocator.merge_payloads(a, b)

    def on_broadcast(self, source: int, payload: bytes) -> None:
        """IPAM uses no broadcasts."""

    def on_unicast(self, source: int, payload: bytes) -> None:
        try:
            self.allocator.advance(trio.current_time())
            self.allocator.on_unicast(source, payload)
        finally:
            self._after()


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
