"""Which peers to dial, and when: a reconciler between wanted targets and actual connections.

Pure: the shell reports attempts and connections, then asks `plan(now)` what to dial and how long
to sleep. Retries back off exponentially (x1.5, with jitter, capped) so a dead peer costs little
and a mesh of restarting peers does not dial in lock-step. A discovered address the kernel has no
route to gets four quick retries; then it waits for the routes to change, or for the maker's sweep
of all such addresses every five minutes, not for a clock of its own.

Discovered targets are what other peers *say* they are connected to, so `select_discovered`
bounds them before the maker sees them: an IP address (never a name to resolve) at the mesh's
own port, at most `MAX_DISCOVERED_PER_PEER` from each advertising peer and `MAX_DISCOVERED` in
all. Otherwise one peer advertising made-up connections would have every router dial whatever
hosts and ports it chose. A legitimate peer advertises only the peers it dialled that we are
not connected to; with many such peers, each of them is advertised by others too, and every
connection we make takes one off the list, so discovery still converges.

In a flat network (every host reaches every other) discovery would dial every peer, and each
change of the topology would then cost every peer the square of its degree in gossip. So
discovered targets are dialled only while we have fewer than ``--discovery-limit`` connections
(8), fewest-connected peers first; a mesh of up to 9 hosts is still a full mesh.
The peers we exchange traffic with are dialled beyond that (``Source.TRAFFIC``, within
``--conn-limit``), at the address gossip says they listen at (`select_traffic`): their traffic
goes direct, by fastdp or the sleeve, as in a full mesh, rather than relayed. Such a connection
lasts as long as it lives; once it ends it is dialled again only if the traffic goes on.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meshnet.beats import next_beat
from meshnet.constants import CONTROL_PORT
from meshnet.errors import UserError

INITIAL_DELAY = 1.0
MAX_DELAY = 60.0
#: A discovered target backs off further: gossip names every peer's peers, and those a host
#: cannot reach (another network, a NAT) would otherwise each cost a dial a minute, forever.
MAX_DISCOVERED_DELAY = 300.0
BACKOFF = 1.5
#: ... and gets there sooner (1, 3, 9, 27, 81, 243 s: 6 dials in its first 6 minutes, not 14):
#: in a sparse mesh of 100 most advertised addresses are out of reach, and their dials were
#: most of an idle router's work for the first quarter of an hour.
DISCOVERED_BACKOFF = 3.0
#: A discovered target the kernel has no route to waits for the routes to change (the shell
#: calls `routes_changed`), and meanwhile for one sweep of all such targets at once every this
#: many seconds (in case a change went unnoticed). Retrying each on its own backoff was still
#: one wake-up per address: in a sparse lab of 100, a young router's main idle cost.
UNROUTABLE_SWEEP = 300.0
#: ... once its backoff has reached this many seconds: its first four retries, within ~40 s of
#: learning it, keep their own clock, as before. (Parking from the first failure measured 100-host
#: `lab up`s of 233-249 s against 165-236 s without it: within the day's noise, not ruled out.)
UNROUTABLE_PARK_DELAY = 81.0
#: Discovered targets taken from one advertising peer, and from all of them.
MAX_DISCOVERED_PER_PEER = 16
MAX_DISCOVERED = 256


class Source(enum.Enum):
    LAUNCH = "launch"  # given to `meshnet launch`
    CONNECT = "connect"  # added later with `meshnet connect`
    DISCOVERED = "discovered"  # learned from other peers' connections
    TRAFFIC = "traffic"  # a peer we exchange traffic with, where gossip says it listens

    @property
    def given(self) -> bool:
        """Named by the user (kept when gossip forgets it), not learned from the mesh."""
        return self in (Source.LAUNCH, Source.CONNECT)


class TargetState(enum.Enum):
    WAITING = "waiting"  # due to be dialled at next_attempt
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RETRYING = "retrying"  # the last attempt failed; backing off


@dataclass(frozen=True)
class TargetView:
    address: str
    source: Source
    state: TargetState
    attempts: int
    last_error: str | None
    next_attempt: float | None
    peer: int | None


def normalize_address(text: str, default_port: int = CONTROL_PORT) -> str:
    """'10.0.0.1' -> '10.0.0.1:6783'; '[fe80::1]:7000' stays; bad text is a UserError."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise UserError(f"bad peer address {text!r}")
        host = text[1:close]
        rest = text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise UserError(f"bad peer address {text!r}")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(port_text, text)
    if not host:
        raise UserError(f"bad peer address {text!r}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        # A host name: kept as given; it is resolved when dialled.
        if not all(part.isalnum() or "-" in part for part in host.split(".")):
            raise UserError(f"bad peer address {text!r}") from None
        return f"{host}:{port}"
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def listen_address(ip: str, port: int) -> str:
    """Where a peer connected from ``ip`` listens, spelled as targets are (an IPv4 peer reaching
    a dual-stack socket shows up as ::ffff:a.b.c.d)."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return normalize_address(f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}")


@dataclass(frozen=True)
class Discovery:
    addresses: frozenset[str]
    refused: int  # advertised addresses left out: another port, not an IP, or beyond a cap


def select_discovered(advertised: Mapping[int, Iterable[str]], port: int) -> Discovery:
    """The targets worth dialling among what each peer advertises (see the module docstring).

    Deterministic: each peer's addresses in sorted order, and the overall cap filled a turn
    per peer (in the order of their names), so no peer can crowd out the others.
    """
    per_peer: list[list[str]] = []
    refused = 0
    for peer in sorted(advertised):
        wanted = sorted(set(advertised[peer]))
        ok = [a for a in wanted if _dialable(a, port)]
        refused += len(wanted) - len(ok)
        if len(ok) > MAX_DISCOVERED_PER_PEER:
            refused += len(ok) - MAX_DISCOVERED_PER_PEER
            ok = ok[:MAX_DISCOVERED_PER_PEER]
        per_peer.append(ok)
    chosen: set[str] = set()
    offered = len({a for ok in per_peer for a in ok})
    for turn in range(MAX_DISCOVERED_PER_PEER):
        for ok in per_peer:
            if turn < len(ok) and len(chosen) < MAX_DISCOVERED:
                chosen.add(ok[turn])
    return Discovery(frozenset(chosen), refused + offered - len(chosen))


def select_traffic(listening: Mapping[int, Mapping[str, int]], port: int) -> set[str]:
    """Where to dial each peer we exchange traffic with: of the addresses other peers'
    connections to it were dialled at (with how many list each), the most listed one that is
    an IP address at the mesh's own port (ties: the lowest). One per peer: a peer that lists
    made-up connections to it adds no dials."""
    chosen = set()
    for counts in listening.values():
        ok = [(-n, a) for a, n in counts.items() if _dialable(a, port)]
        if ok:
            chosen.add(min(ok)[1])
    return chosen


@functools.lru_cache(maxsize=4096)
def _dialable(address: str, port: int) -> bool:
    """An IP address (not multicast, unspecified or broadcast) at ``port``, spelled as we
    spell targets.

    Cached: discovery runs on every topology change, and while a 100-router mesh came up,
    parsing every advertised address each time was a fifth of each router's CPU."""
    host, _, port_text = address.rpartition(":")
    if port_text != str(port):
        return False
    try:
        ip = ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return False
    if ip.is_multicast or ip.is_unspecified or ip == ipaddress.IPv4Address("255.255.255.255"):
        return False
    return listen_address(str(ip), port) == address


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UserError(f"bad port in peer address {whole!r}")
    return int(text)


@dataclass
class _Target:
    source: Source
    state: TargetState = TargetState.WAITING
    attempts: int = 0
    delay: float = INITIAL_DELAY
    next_attempt: float = 0.0
    last_error: str | None = None
    peer: int | None = None
    unroutable: bool = False  # the last attempt found no route: due again when routes change
    # The order discovered targets are dialled in: fewest connections first, then at random.
    load: int = 0
    rank: float = 0.0


class ConnectionMaker:
    def __init__(self, rng: random.Random, *, discovery: bool = True) -> None:
        self._rng = rng
        self._discovery = discovery
        self._targets: dict[str, _Target] = {}
        self._ourselves: set[str] = set()
        # Each maker sweeps on its own phase: routers that share a clock (a lab) do not all
        # look their routes up at the same instant.
        self._sweep_phase = rng.uniform(0, UNROUTABLE_SWEEP)

    def add(self, address: str, source: Source, now: float) -> bool:
        """Want a connection to `address`; False if it was already wanted."""
        existing = self._targets.get(address)
        if existing is not None:
            if (source.given and not existing.source.given) or existing.source is Source.DISCOVERED:
                # The user named it: kept even if gossip forgets it; traffic: beyond the cap.
                existing.source = source
            if existing.state is TargetState.RETRYING:
                existing.next_attempt = now  # asked again: try now
            return False
        self._targets[address] = _Target(source=source, next_attempt=now, rank=self._rng.random())
        return True

    def forget(self, address: str) -> bool:
        return self._targets.pop(address, None) is not None

    def set_discovered(
        self, addresses: set[str], now: float, load: Mapping[str, int] | None = None
    ) -> None:
        """Reconcile discovered targets with what gossip currently says exists; ``load``: how
        many connections the peer at each address has (dialled fewest first)."""
        self._reconcile(Source.DISCOVERED, addresses, now)
        for address, target in self._targets.items():
            target.load = load.get(address, 0) if load else 0

    def set_traffic(self, addresses: set[str], now: float) -> bool:
        """Reconcile traffic targets with where the peers we exchange traffic with listen;
        True if one is new."""
        return self._reconcile(Source.TRAFFIC, addresses, now)

    def _reconcile(self, source: Source, addresses: set[str], now: float) -> bool:
        if not self._discovery:
            return False
        added = False
        for address in addresses - self._ourselves:
            target = self._targets.get(address)
            if target is None or (source is Source.TRAFFIC and target.source is Source.DISCOVERED):
                added = True
                self.add(address, source, now)
        # A dial in flight is left to finish; a traffic target stays while it is connected
        # (its peer is not a stranger any more), so status says why that connection exists.
        keep = {TargetState.CONNECTING}
        if source is Source.TRAFFIC:
            keep.add(TargetState.CONNECTED)
        for address, target in list(self._targets.items()):
            if target.source is source and address not in addresses and target.state not in keep:
                del self._targets[address]
        return added

    def plan(
        self,
        connected_peers: set[int],
        free_slots: int,
        now: float,
        *,
        discovery_slots: int | None = None,
    ) -> tuple[list[str], float]:
        """Addresses to dial now, and when to look again.

        ``free_slots`` bounds every dial (``--conn-limit``); ``discovery_slots`` (default: the
        same) bounds dials to discovered targets (``--discovery-limit``), which go to the peers
        with the fewest connections first, in a random order of this maker's own among equals:
        otherwise the first peers of a flat network, dialled by everyone who came after, would
        become hubs (degree ~ cap x ln N in the simulation), and every change of theirs costs
        the mesh in proportion. A target due but out of slots does not wake the maker: a
        connection that ends, or a new target, does.
        """
        dial: list[str] = []
        discovered = 0
        if discovery_slots is None:
            discovery_slots = free_slots
        next_wake = now + MAX_DISCOVERED_DELAY
        for address, target in sorted(
            self._targets.items(),
            key=lambda item: (
                item[1].source is Source.DISCOVERED,
                item[1].load,
                item[1].rank,
                item[0],
            ),
        ):
            if target.state is TargetState.CONNECTED:
                if target.peer in connected_peers:
                    continue
                if target.source is Source.TRAFFIC:
                    # Made for traffic that may have stopped: the data plane's next report
                    # (every 10 s) brings it back if the traffic goes on.
                    del self._targets[address]
                    continue
                # Its connection went away: dial again soon, from a fresh backoff.
                target.state, target.delay, target.next_attempt = (
                    TargetState.WAITING,
                    INITIAL_DELAY,
                    now + self._jitter(INITIAL_DELAY) / 2,
                )
            if target.state is TargetState.CONNECTING:
                continue
            if target.peer is not None and target.peer in connected_peers:
                target.state = TargetState.CONNECTED  # reached through the other side's dial
                continue
            if target.next_attempt > now:
                next_wake = min(next_wake, max(target.next_attempt, now + 0.1))
                continue
            is_discovered = target.source is Source.DISCOVERED
            if len(dial) >= free_slots or (is_discovered and discovered >= discovery_slots):
                continue
            target.state = TargetState.CONNECTING
            target.attempts += 1
            discovered += is_discovered
            dial.append(address)
        return dial, next_wake

    def attempt_failed(
        self, address: str, error: str, now: float, *, unroutable: bool = False
    ) -> None:
        """A dial failed; ``unroutable``: the kernel has no route to the address."""
        target = self._targets.get(address)
        if target is None:
            return
        target.state = TargetState.RETRYING
        target.last_error = error
        target.unroutable = unroutable
        target.next_attempt = now + self._jitter(target.delay)
        if unroutable and not target.source.given and target.delay >= UNROUTABLE_PARK_DELAY:
            phase = self._sweep_phase
            target.next_attempt = next_beat(now - phase, UNROUTABLE_SWEEP) + phase
        if not target.source.given:
            target.delay = min(target.delay * DISCOVERED_BACKOFF, MAX_DISCOVERED_DELAY)
        else:
            target.delay = min(target.delay * BACKOFF, MAX_DELAY)

    def routes_changed(self, now: float) -> bool:
        """The kernel's routes changed: every target that had no route is due now. True if
        there was one."""
        due = False
        for target in self._targets.values():
            if target.unroutable and target.state is TargetState.RETRYING:
                target.next_attempt = min(target.next_attempt, now)
                due = True
        return due

    def attempt_succeeded(self, address: str, peer: int) -> None:
        target = self._targets.get(address)
        if target is None:
            return
        target.state = TargetState.CONNECTED
        target.peer = peer
        target.delay = INITIAL_DELAY
        target.last_error = None
        target.unroutable = False

    def reached_by(self, address: str, peer: int) -> None:
        """``peer``, listening at ``address``, dialled us: a target there is that peer, so it is
        not dialled while that connection lasts. Dialling it anyway would make a duplicate
        that the tie-break may keep, replacing a working connection (new keys, a moment in
        which the peer looks gone)."""
        target = self._targets.get(address)
        if target is None or target.state is TargetState.CONNECTING:
            return
        target.state = TargetState.CONNECTED
        target.peer = peer
        target.delay = INITIAL_DELAY

    def is_ourselves(self, address: str) -> None:
        """The address leads back to us: never dial it again."""
        self._ourselves.add(address)
        self._targets.pop(address, None)

    def _jitter(self, delay: float) -> float:
        return delay * self._rng.uniform(0.8, 1.2)

    def targets(self) -> list[TargetView]:
        return [
            TargetView(
                address=address,
                source=t.source,
                state=t.state,
                attempts=t.attempts,
                last_error=t.last_error,
                next_attempt=t.next_attempt if t.state is TargetState.RETRYING else None,
                peer=t.peer,
            )
            for address, t in sorted(self._targets.items())
        ]
