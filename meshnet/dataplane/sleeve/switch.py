"""The overlay's Ethernet switch: where each frame goes, learned from where frames come from.

All hosts' containers share one virtual Ethernet. Each peer's switch learns a frame's source MAC
at the frame's *origin* peer (ourselves for frames from the local bridge) and sends frames to a
known destination straight to the peer that owns it; everything else is flooded. The caller turns
``(UNICAST, peer)`` into ``routes.next_hop(peer)`` and FLOOD into ``routes.broadcast_hops(origin)``
(see :mod:`meshnet.dataplane.sleeve.forwarding`);
the per-source broadcast trees give every peer each flood exactly once, so the switch itself
never needs to suppress duplicates.

Policies (tested in ``tests/unit/test_switch.py``):

- **The last frame wins.** A MAC lives where its latest frame came from, like a hardware switch.
  A MAC seen at a new origin *moves* (counted), in both directions: a container that migrated
  must be reachable at once, and a frame from the local bridge is authoritative (the bridge never
  hands back frames we wrote into the TAP: no hairpin, and port isolation keeps VXLAN frames off
  the TAP). Two containers sharing a MAC therefore show up as a climbing ``moved`` counter.
- **Loops are dropped, not learned.** A peer's frame carrying *our* name as its origin has come
  back to us: DROP ("loop"), and its source is not learned (it would move a local MAC away).
- **Known local destination.** From the bridge: DROP ("local"), the bridge already delivered it.
  From a peer: DELIVER.
- **Unknown unicast is flooded** by its origin. A peer that owns the destination delivers it
  (DELIVER: the flood has found its owner); any other peer delivers it and lets the caller forward
  it down the origin's tree (FLOOD).
- **A unicast datagram for a MAC that lives elsewhere** (learned at a third peer, or back at
  its origin) is dropped ("moved"): the origin's view is stale. It is not re-sent to the new
  owner: that would need a "redirected" mark on the wire so two stale views could not bounce a
  frame between them, and a container that moves announces itself (the attach sends a
  gratuitous ARP, a broadcast every switch learns from), so the next frame goes right.
- **Entries expire** ``mac_ttl`` after their last refresh. Lookups ignore stale entries, so
  correctness does not depend on how often :meth:`Switch.expire` runs; it only frees memory. An
  entry is rewritten only when it moves or is older than ``mac_ttl / 4``, so the per-frame cost is
  a dict lookup and two comparisons; an active MAC therefore never expires, an idle one goes
  between ``3/4 mac_ttl`` and ``mac_ttl`` after its last frame.
- **The table is capped** at ``max_entries`` (``MAX_MACS``): source MACs are what others send
  (a peer's containers, or a peer itself), so learning one more beyond the cap evicts the entry
  refreshed longest ago (counted as ``evicted``). Refreshing moves an entry to the end of the
  dict, so its first key is always the oldest: eviction costs O(1). A frame is still forwarded
  when the table is full; at worst replies to an evicted MAC are flooded until it is seen again.
  (Local containers cannot spray source MACs: the bridge drops a frame whose source is not its
  port's MAC, see ``meshnet.dataplane.kernel.nftables``.)

Runs per packet in the data plane's threads: MACs are the 6 raw bytes, each entry one immutable
tuple, so a lookup is one ``dict.get`` and needs no lock. Every change of the table, and every
walk over it (:meth:`Switch.expire`, :meth:`Switch.forget_peer`, :meth:`Switch.entries`, from
the trio thread), holds ``_lock``: copying the items allocates, a garbage collection in the
middle may hand the GIL to a packet thread that moves an entry, and the walk then failed with
"dictionary keys changed during iteration" — which stopped a router of a 100-router lab. Writes
are rare per frame (a move, or a refresh every ``mac_ttl / 4``), so the lock costs nothing.
"""

from __future__ import annotations

import enum
import hashlib
import threading
from dataclasses import dataclass

#: MAC entries one switch holds at most (a few hundred bytes each: about 2 MB when full).
MAX_MACS = 8192
#: How often, at most, the time we last sent a peer a unicast frame is rewritten (seconds).
SENT_REFRESH = 1.0


def derived_mac(purpose: bytes, peer: int) -> str:
    """A MAC of this peer's for `purpose`: the same at every start, unicast, locally
    administered, and unlike any other peer's or purpose's."""
    octets = bytearray(hashlib.sha256(purpose + peer.to_bytes(8, "big")).digest()[:6])
    octets[0] = (octets[0] & 0xFC) | 0x02
    return bytes(octets).hex(":")


class Decision(enum.Enum):
    DELIVER = "deliver"  # into the local bridge only
    UNICAST = "unicast"  # from the bridge: to the peer returned with it
    FLOOD = "flood"  # everywhere: from a peer, deliver locally AND forward down the origin's tree
    DROP = "drop"


class SwitchDrop(enum.Enum):
    LOCAL = "local"  # from the bridge, for a local MAC: the bridge already delivered it
    LOOP = "loop"  # a peer handed us a frame whose origin is ourselves
    MOVED = "moved"  # a unicast datagram for a MAC that lives at another peer
    BAD_SOURCE = "bad_source"  # a multicast source MAC: invalid, never learned


@dataclass(frozen=True)
class MacEntry:
    mac: str  # "02:42:0a:20:00:01"
    peer: int
    age: float  # seconds since the entry was last refreshed (refreshes are every mac_ttl / 4)


@dataclass(frozen=True)
class SwitchStatistics:
    entries: int
    learned: int
    moved: int
    expired: int
    forgotten: int
    evicted: int  # learned beyond the cap: the oldest entry went
    flooded: int
    unicast: int
    delivered: int
    dropped: dict[str, int]  # by SwitchDrop value; a plain dict so dataclasses.asdict works


def format_mac(mac: bytes) -> str:
    return mac.hex(":")


_FLOOD = (Decision.FLOOD, 0)
_DELIVER = (Decision.DELIVER, 0)
_DROP = (Decision.DROP, 0)


class Switch:
    """MAC learning and the forwarding decision for one peer; pure: ``now`` is passed in."""

    def __init__(self, local: int, *, mac_ttl: float = 300.0, max_entries: int = MAX_MACS) -> None:
        if mac_ttl <= 0:
            raise ValueError("mac_ttl must be positive")
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._max = max_entries
        self._local = local
        self._ttl = mac_ttl
        self._refresh = mac_ttl / 4
        self._table: dict[bytes, tuple[int, float]] = {}  # mac -> (peer, last refresh)
        self._lock = threading.Lock()  # held to change or walk the table (module docstring)
        self._clock = 0.0  # the latest `now` seen when writing: ages for entries() without now
        self._learned = 0
        self._moved = 0
        self._expired = 0
        self._forgotten = 0
        self._evicted = 0
        self._flooded = 0
        self._unicast = 0
        self._delivered = 0
        self._dropped = dict.fromkeys(SwitchDrop, 0)
        # peer -> when we last sent it a unicast frame (rewritten at most every SENT_REFRESH):
        # the peers we exchange traffic with, which the router dials (`unicast_peers`).
        self._sent_to: dict[int, float] = {}

    @property
    def local(self) -> int:
        return self._local

    @property
    def mac_ttl(self) -> float:
        return self._ttl

    def from_local(self, src: bytes, dst: bytes, now: float) -> tuple[Decision, int]:
        """A frame the bridge handed to our TAP: ``(UNICAST, owner)``, FLOOD or DROP."""
        if src[0] & 1:
            self._dropped[SwitchDrop.BAD_SOURCE] += 1
            return _DROP
        entry = self._table.get(src)
        if entry is None or entry[0] != self._local or now - entry[1] > self._refresh:
            self._learn(src, self._local, entry, now)
        if dst[0] & 1:  # broadcast or multicast
            self._flooded += 1
            return _FLOOD
        entry = self._table.get(dst)
        if entry is None or now - entry[1] > self._ttl:
            self._flooded += 1
            return _FLOOD
        peer = entry[0]
        if peer == self._local:
            self._dropped[SwitchDrop.LOCAL] += 1
            return _DROP
        self._unicast += 1
        if now - self._sent_to.get(peer, -SENT_REFRESH) >= SENT_REFRESH:
            with self._lock:
                self._sent_to[peer] = now
        return (Decision.UNICAST, peer)

    def from_peer(
        self,
        origin: int,
        src: bytes,
        dst: bytes,
        now: float,
        flooded: bool = False,
    ) -> tuple[Decision, int]:
        """A frame from the mesh that ``origin`` captured.

        ``flooded``: it came down ``origin``'s broadcast tree (FLOOD means: deliver, and forward
        down that tree). Otherwise it was addressed to us: DELIVER or DROP, never UNICAST (see
        the module docstring on MACs that moved).
        """
        if origin == self._local:
            self._dropped[SwitchDrop.LOOP] += 1
            return _DROP
        if src[0] & 1:
            self._dropped[SwitchDrop.BAD_SOURCE] += 1
            return _DROP
        entry = self._table.get(src)
        if entry is None or entry[0] != origin or now - entry[1] > self._refresh:
            self._learn(src, origin, entry, now)
        if dst[0] & 1:
            if flooded:
                self._flooded += 1
                return _FLOOD
            self._delivered += 1  # addressed to us alone: nothing to forward
            return _DELIVER
        entry = self._table.get(dst)
        if entry is None or now - entry[1] > self._ttl:
            if flooded:
                self._flooded += 1
                return _FLOOD
            self._delivered += 1  # the origin thinks it is here; the bridge knows its ports
            return _DELIVER
        peer = entry[0]
        if peer == self._local:
            self._delivered += 1
            return _DELIVER
        if flooded:
            self._flooded += 1  # its owner is further down (or off) the tree: keep flooding
            return _FLOOD
        self._dropped[SwitchDrop.MOVED] += 1  # the origin's view is stale
        return _DROP

    def _learn(self, mac: bytes, peer: int, old: tuple[int, float] | None, now: float) -> None:
        if old is None or now - old[1] > self._ttl:
            self._learned += 1
        elif old[0] != peer:
            self._moved += 1
        with self._lock:
            if old is not None:
                self._table.pop(mac, None)  # re-inserted last: the dict stays in refresh order
            self._table[mac] = (peer, now)
            if len(self._table) > self._max:
                self._table.pop(next(iter(self._table)))
                self._evicted += 1
        if now > self._clock:
            self._clock = now

    def lookup(self, mac: bytes, now: float) -> int | None:
        """The peer that owns ``mac`` (ours for a local one), or None if unknown or stale."""
        entry = self._table.get(mac)
        if entry is None or now - entry[1] > self._ttl:
            return None
        return entry[0]

    def unicast_peers(self, since: float) -> set[int]:
        """The peers we sent a unicast frame to at ``since`` or later (give or take
        ``SENT_REFRESH``): those we exchange traffic with. A broadcast teaches every switch
        its sender's MAC, so learned MACs would name every peer with a container."""
        with self._lock:
            return {peer for peer, sent in self._sent_to.items() if sent >= since}

    def expire(self, now: float) -> int:
        """Drop entries not refreshed within ``mac_ttl``; how many went."""
        if now > self._clock:
            self._clock = now
        with self._lock:
            stale = [mac for mac, (_, seen) in self._table.items() if now - seen > self._ttl]
            for mac in stale:
                del self._table[mac]
            for peer in [p for p, sent in self._sent_to.items() if now - sent > self._ttl]:
                del self._sent_to[peer]
        self._expired += len(stale)
        return len(stale)

    def forget_peer(self, peer: int) -> int:
        """``peer`` left the mesh: its MACs go (they will be learned again wherever they appear)."""
        with self._lock:
            gone = [mac for mac, (owner, _) in self._table.items() if owner == peer]
            for mac in gone:
                del self._table[mac]
            self._sent_to.pop(peer, None)
        self._forgotten += len(gone)
        return len(gone)

    def peers(self) -> set[int]:
        """The peers that own an entry (expired ones too, until swept): one pass, no entries
        made (the data plane asks after every change of the mesh's view)."""
        with self._lock:
            return {owner for owner, _ in self._table.values()}

    def entries(self, now: float | None = None) -> list[MacEntry]:
        """Live entries for status, sorted by MAC; ages from ``now`` or the latest time seen."""
        clock = self._clock if now is None else now
        with self._lock:
            items = list(self._table.items())
        return [
            MacEntry(format_mac(mac), peer, max(0.0, clock - seen))
            for mac, (peer, seen) in sorted(items)
            if clock - seen <= self._ttl
        ]

    def statistics(self) -> SwitchStatistics:
        return SwitchStatistics(
            entries=len(self._table),
            learned=self._learned,
            moved=self._moved,
            expired=self._expired,
            forgotten=self._forgotten,
            evicted=self._evicted,
            flooded=self._flooded,
            unicast=self._unicast,
            delivered=self._delivered,
            dropped={reason.value: n for reason, n in self._dropped.items()},
        )
