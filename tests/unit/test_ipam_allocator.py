"""Allocators of several peers joined by an in-memory gossip network — no sockets, no mocks."""

from __future__ import annotations

import heapq
import itertools
import math
import random
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import msgpack
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from meshnet.errors import RemoteProtocolError, UserError
from meshnet.ipam.allocator import (
    DONATION_INTERVAL,
    REQUEST_TIMEOUT,
    STALE_WRITE_DELAY,
    Address,
    AddressInUse,
    Allocator,
    GossipAction,
    InitMode,
    IpamConfig,
    NeedSpace,
    Reply,
    UnicastAction,
    Waiting,
    _encode_gossip,
)
from meshnet.ipam.consensus import Ballot, Paxos, PaxosEntry
from meshnet.ipam.ring import RingMergeError, Token
from meshnet.ipam.space import Subnet

RANGE = IPv4Network("10.0.0.0/26")
SUBNETS = (None, IPv4Network("10.0.0.16/28"), IPv4Network("10.0.0.48/28"))


class Net:
    """Peers in a full mesh; gossip between two peers is coalesced into one pending payload
    (as ``GossipOutbox`` does), unicasts queue. Partitions drop what crosses them."""

    def __init__(self, configs: list[IpamConfig], seed: int = 0) -> None:
        self.configs = {c.name: c for c in configs}
        self.peers = {c.name: Allocator(c, random.Random(seed + c.name)) for c in configs}
        self.gossip: dict[tuple[int, int], bytes] = {}
        self.unicasts: list[tuple[int, int, bytes]] = []
        self.group: dict[int, int] = dict.fromkeys(self.peers, 0)
        self.dead: set[int] = set()
        self.final: dict[int, Allocator] = {}  # dead peers, as they were when they died
        self.disk: dict[int, bytes] = {}  # each peer's state file, as the shell writes it
        self.now = 0.0

    @property
    def live(self) -> list[int]:
        return [n for n in sorted(self.peers) if n not in self.dead]

    def flush(self, name: int) -> None:
        """What the shell does after every call: persist (see restart, crash), then send."""
        peer = self.peers[name]
        if peer.dirty:
            self.disk[name] = peer.to_state()
        for action in peer.take_actions():
            if isinstance(action, GossipAction):
                for other in self.peers:
                    if other != name:
                        self.put_gossip(name, other, action.payload)
            else:
                assert isinstance(action, UnicastAction)
                self.unicasts.append((name, action.destination, action.payload))

    def put_gossip(self, source: int, target: int, payload: bytes) -> None:
        key = (source, target)
        previous = self.gossip.get(key)
        self.gossip[key] = (
            payload if previous is None else self.peers[source].merge_payloads(previous, payload)
        )

    def reachable(self, a: int, b: int) -> bool:
        return a not in self.dead and b not in self.dead and self.group[a] == self.group[b]

    def deliver_gossip(self, key: tuple[int, int]) -> None:
        payload = self.gossip.pop(key)
        source, target = key
        if not self.reachable(source, target):
            return
        delta = self.peers[target].on_gossip(payload)
        if delta is not None:
            for other in self.peers:
                if other not in (source, target):
                    self.put_gossip(target, other, delta)
        self.flush(target)

    def deliver_unicast(self, i: int) -> None:
        source, target, payload = self.unicasts.pop(i)
        if not self.reachable(source, target):
            return
        self.peers[target].on_unicast(source, payload)
        self.flush(target)

    def anti_entropy(self, source: int, target: int) -> None:
        state = self.peers[source].full_state()
        if state is not None and source != target:
            self.put_gossip(source, target, state)

    def tick(self, dt: float) -> None:
        self.now += dt
        for name in self.live:
            self.peers[name].tick(self.now)
            self.flush(name)

    def settle(self) -> None:
        """Heal, and let gossip, anti-entropy and timers run until nothing moves."""
        self.group = dict.fromkeys(self.peers, 0)
        for _ in range(8):
            for a in self.live:
                for b in self.live:
                    self.anti_entropy(a, b)
            for _ in range(200):
                if self.gossip:
                    self.deliver_gossip(next(iter(self.gossip)))
                elif self.unicasts:
                    self.deliver_unicast(0)
                else:
                    break
            self.tick(6.0)

    def restart(self, name: int) -> None:
        peer = self.peers[name]
        self.flush(name)
        self.peers[name] = Allocator.from_state(
            self.configs[name], peer.to_state(), random.Random(name)
        )
        self.flush(name)

    def kill(self, name: int) -> None:
        """Its connections close: what it had not yet delivered is lost with them."""
        self.dead.add(name)
        self.final[name] = self.peers[name]
        self.gossip = {k: v for k, v in self.gossip.items() if name not in k}
        self.unicasts = [u for u in self.unicasts if name not in u[:2]]


def consensus_configs(
    n: int, observers: int = 0, range_: Subnet = RANGE, default: Subnet | None = None
) -> list[IpamConfig]:
    configs = [
        IpamConfig(
            name=0x10 + i,
            range=range_,
            default_subnet=default,
            mode=InitMode.CONSENSUS,
            consensus_size=n,
        )
        for i in range(n)
    ]
    configs += [
        IpamConfig(name=0x80 + i, range=range_, default_subnet=default, mode=InitMode.OBSERVER)
        for i in range(observers)
    ]
    return configs


def allocate_settled(
    net: Net, name: int, container: str, subnet: IPv4Network | None = None
) -> Address:
    for _ in range(20):
        result = net.peers[name].allocate(container, subnet, net.now)
        net.flush(name)
        if isinstance(result, Address):
            return result
        net.settle()
    raise AssertionError(f"no address for {container}: {result}")


# --- plain scenarios


def test_lazy_consensus_then_unique_addresses_and_idempotence() -> None:
    net = Net(consensus_configs(3))
    a, b, c = net.live
    assert all(p.full_state() is None for p in net.peers.values())  # nothing until asked
    first = net.peers[a].allocate("x", None, 0.0)
    assert first == NeedSpace(Waiting.CONSENSUS)
    net.flush(a)
    got = {allocate_settled(net, p, f"c{p}") for p in (a, b, c)}
    assert len({g.ip for g in got}) == 3
    # A quorum (2 of 3) decided; a peer it had not heard of yet gets space by donation.
    seed = net.peers[a].ring.seed
    assert set(seed) <= {a, b, c} and len(seed) >= 2
    assert all(net.peers[p].ring.seed == seed for p in (b, c))
    again = allocate_settled(net, a, f"c{a}")
    assert again in got
    assert str(again.interface).endswith("/26")


def test_donation_gives_a_late_peer_space() -> None:
    configs = consensus_configs(2, observers=1)
    net = Net(configs)
    a, _b, obs = net.live
    allocate_settled(net, a, "first")
    net.settle()
    assert net.peers[obs].ring.seeded and not net.peers[obs].owned_ranges()
    result = net.peers[obs].allocate("late", None, net.now)
    assert isinstance(result, NeedSpace) and result.reason is Waiting.DONATION
    net.flush(obs)
    address = allocate_settled(net, obs, "late")
    assert net.peers[obs].ring.owner_of(int(address.ip)) == obs
    assert net.peers[obs].counters.donations_received == 1


def test_others_space_is_written_within_the_stale_delay_and_a_crash_before_loses_nothing() -> None:
    configs = consensus_configs(3, observers=1)
    net = Net(configs)
    a, b, c, late = net.live
    allocate_settled(net, a, "first")
    allocate_settled(net, c, "c's first")  # c holds space of its own
    net.settle()
    # late gets space from a or b while c is cut off.
    net.group[c] = 1
    while not isinstance(address := net.peers[late].allocate("late", None, net.now), Address):
        net.flush(late)
        while net.gossip or net.unicasts:
            if net.gossip:
                net.deliver_gossip(next(iter(net.gossip)))
            else:
                net.deliver_unicast(0)
        net.tick(1.0)
    net.flush(late)
    written = net.disk[c]
    # c hears of it: the space is late's and its donor's, so nothing is written yet.
    net.group[c] = 0
    donor = next(p for p in (a, b) if net.peers[p].counters.donations_given)
    net.anti_entropy(donor, c)
    net.deliver_gossip((donor, c))
    peer = net.peers[c]
    assert peer.ring.owner_of(int(address.ip)) == late
    assert not peer.dirty and net.disk[c] == written
    assert peer.next_wake() <= net.now + STALE_WRITE_DELAY
    # Left running, c writes it at the stale delay.
    peer.tick(net.now + STALE_WRITE_DELAY)
    assert peer.dirty
    # A crash before that restarts c from its older file; gossip brings the donation back.
    net.peers[c] = Allocator.from_state(net.configs[c], written, random.Random(7))
    net.flush(c)
    net.settle()
    again = net.peers[c]
    assert again.ring.owner_of(int(address.ip)) == late
    mine = allocate_settled(net, c, "c's own")
    assert mine.ip != address.ip and again.ring.owner_of(int(mine.ip)) == c


def test_a_consensus_writes_each_peer_only_when_its_own_entry_changes() -> None:
    net = Net(consensus_configs(5))
    writes = dict.fromkeys(net.live, 0)
    flush = net.flush

    def counting(name: int) -> None:
        writes[name] += net.peers[name].dirty
        flush(name)

    merged = dict.fromkeys(net.live, 0)
    deliver = net.deliver_gossip

    def counting_deliveries(key: tuple[int, int]) -> None:
        merged[key[1]] += 1
        deliver(key)

    net.flush = counting  # type: ignore[method-assign]
    net.deliver_gossip = counting_deliveries  # type: ignore[method-assign]
    allocate_settled(net, net.live[0], "x")
    # A promise, an accept and the ring: a few writes each, not one per merged message.
    assert all(1 <= writes[n] <= 4 < merged[n] for n in net.live), (writes, merged)


def test_subnet_allocation_skips_network_and_broadcast() -> None:
    net = Net([IpamConfig(name=1, range=RANGE, mode=InitMode.SEED, seed=(1,))])
    subnet = IPv4Network("10.0.0.16/30")
    got = [allocate_settled(net, 1, f"c{i}", subnet).ip for i in range(2)]
    assert got == [IPv4Address("10.0.0.17"), IPv4Address("10.0.0.18")]
    exhausted = net.peers[1].allocate("c3", subnet, 0.0)
    assert exhausted == NeedSpace(Waiting.EXHAUSTED)
    with pytest.raises(UserError):
        net.peers[1].allocate("c4", IPv4Network("10.1.0.0/24"), 0.0)


def test_release_of_some_addresses_keeps_the_others() -> None:
    net = Net([IpamConfig(name=1, range=RANGE, mode=InitMode.SEED, seed=(1,))])
    peer = net.peers[1]
    first = allocate_settled(net, 1, "c").ip
    second = peer.claim("c", first + 5, net.now).ip
    assert peer.release("c", net.now, [second, first + 99]) == [second]
    assert [a.ip for a in peer.addresses_of("c")] == [first]
    assert peer.release("other", net.now, [first]) == []  # not its address: nothing
    assert peer.release("c", net.now) == [first]
    assert peer.addresses_of("c") == []
    assert allocate_settled(net, 1, "d").ip == first  # free again


def test_a_rename_moves_every_address_to_the_new_key_and_is_persisted() -> None:
    net = Net([IpamConfig(name=1, range=RANGE, mode=InitMode.SEED, seed=(1,))])
    peer = net.peers[1]
    first = allocate_settled(net, 1, "old").ip
    second = peer.claim("old", first + 5, net.now).ip
    kept = allocate_settled(net, 1, "new").ip
    peer.dirty = False
    assert peer.rename("old", "new") == [first, second]
    assert peer.dirty and peer.addresses_of("old") == []
    assert sorted(a.ip for a in peer.addresses_of("new")) == sorted([first, second, kept])
    assert peer.rename("old", "new") == []  # holds nothing: nothing moves
    again = Allocator.from_state(net.configs[1], peer.to_state(), random.Random(1))
    assert {a.ip for a in again.addresses_of("new")} == {first, second, kept}
    assert peer.release("new", net.now, [first]) == [first]  # the new key's to give back


def test_claim_across_peers() -> None:
    net = Net(consensus_configs(2))
    a, b = net.live
    allocate_settled(net, a, "boot")
    net.settle()
    theirs = IPv4Address(net.peers[b].owned_ranges()[0][0] + 3)
    result = net.peers[b].claim("held", theirs, net.now)
    assert isinstance(result, Address)
    # A claims B's used address: asked, refused, then reported.
    assert isinstance(net.peers[a].claim("thief", theirs, net.now), NeedSpace)
    net.flush(a)
    net.settle()
    with pytest.raises(AddressInUse):
        net.peers[a].claim("thief", theirs, net.now)
    # ... and B's free address: donated to A.
    free = IPv4Address(int(theirs) + 1)
    assert isinstance(net.peers[a].claim("ok", free, net.now), NeedSpace)
    net.flush(a)
    net.settle()
    assert net.peers[a].claim("ok", free, net.now) == Address(free, RANGE)
    with pytest.raises(AddressInUse):
        net.peers[a].claim("other", free, net.now)


def test_restart_keeps_addresses_and_reannounces() -> None:
    net = Net(consensus_configs(2))
    a, b = net.live
    got = allocate_settled(net, a, "keep")
    state = net.peers[a].to_state()
    again = Allocator.from_state(net.configs[a], state, random.Random(1))
    assert again.allocate("keep", None, 9.0) == got
    assert any(isinstance(x, GossipAction) for x in again.take_actions())
    with pytest.raises(UserError, match="another peer"):
        Allocator.from_state(net.configs[b], state, random.Random(1))
    with pytest.raises(UserError, match="corrupt"):
        Allocator.from_state(net.configs[a], state[:-3], random.Random(1))


def test_reset_waits_for_the_ack() -> None:
    net = Net(consensus_configs(3))
    a, b, c = net.live
    allocate_settled(net, a, "x")
    net.settle()
    with pytest.raises(UserError, match="detach"):
        net.peers[a].reset(b, net.now)
    net.peers[a].release("x", net.now)
    net.peers[a].reset(b, net.now)
    net.flush(a)
    assert net.peers[a].leaving and not net.peers[a].owned_ranges()
    net.unicasts.clear()  # the hand-over is lost: it is re-sent
    net.gossip.clear()
    net.tick(10.0)
    net.settle()
    assert net.peers[a].handed_over
    assert net.peers[c].ring.owned_ranges(a) == []
    with pytest.raises(UserError, match="reset"):
        net.peers[a].allocate("y", None, net.now)


def test_rmpeer_from_two_peers_gives_one_heir() -> None:
    net = Net(consensus_configs(4))
    a, b, c, d = net.live
    allocate_settled(net, a, "x")
    net.settle()
    net.kill(a)
    heirs = {net.peers[p].rmpeer(a, net.now) for p in (b, c)}
    assert heirs == {b}
    net.flush(b)
    net.flush(c)
    net.settle()
    views = {tuple(net.peers[p].ring.tokens) for p in (b, c, d)}
    assert len(views) == 1
    assert net.peers[d].ring.owned_ranges(a) == []
    with pytest.raises(UserError):
        net.peers[b].rmpeer(b, net.now)


def test_separately_seeded_meshes_refuse_to_merge() -> None:
    one = Net([IpamConfig(name=n, range=RANGE, mode=InitMode.SEED, seed=(1, 2)) for n in (1, 2)])
    two = Net([IpamConfig(name=n, range=RANGE, mode=InitMode.SEED, seed=(3, 4)) for n in (3, 4)])
    allocate_settled(one, 1, "a")
    allocate_settled(two, 3, "b")
    one.settle()
    two.settle()
    p1, p3 = one.peers[1], two.peers[3]
    before = (p1.to_state(), p3.to_state())
    sizes = (len(p1.ring), len(p3.ring))
    for _ in range(3):
        for src, dst in ((p1, p3), (p3, p1)):
            state = src.full_state()
            assert state is not None
            with pytest.raises(RingMergeError, match="seeded separately"):
                dst.on_gossip(state)
    assert (p1.to_state(), p3.to_state()) == before
    assert (len(p1.ring), len(p3.ring)) == sizes  # never grows


def test_garbage_from_peers_is_a_remote_protocol_error() -> None:
    net = Net(consensus_configs(1))
    peer = net.peers[0x10]
    for payload in (
        b"",
        b"\x93\x01\xc0\x91\x01",
        b"\xc1",
        b"\x91\x05",
        b"\x95\x01\x01\x00\x20\xc0",
    ):
        with pytest.raises(RemoteProtocolError):
            peer.on_gossip(payload)
        with pytest.raises(RemoteProtocolError):
            peer.on_unicast(1, payload)


def test_an_observer_never_decides_from_one_acceptor() -> None:
    """Regression (found by the state machine): an observer's default quorum of 1 took a value
    that a single acceptor had accepted for the decision, and seeded a second ring."""
    proposer = Paxos(1, 2, participant=True)
    observer = Paxos(9, 1, participant=False)
    entry = proposer.propose(0.0, random.Random(0))
    assert entry is not None
    forced = PaxosEntry(1, entry.promise, entry.promise, (1, 2))
    observer.check([forced])
    observer.merge([forced])
    assert observer.decision() is None


def _consensus_on_a_slow_line(peers: int, hop_delay: float, limit: float) -> float | None:
    """Every peer of a line proposes at once; entries cross one hop in ``hop_delay`` (busy
    routers). The simulated time at which every peer knows the decision, None past ``limit``."""
    rng = random.Random(7)
    nodes = [Paxos(n, peers // 2 + 1, participant=True) for n in range(1, peers + 1)]
    queue: list[tuple[float, int, int, list[PaxosEntry]]] = []  # (at, seq, to, entries)
    seq = itertools.count()

    def send(index: int, entries: list[PaxosEntry], now: float) -> None:
        for other in (index - 1, index + 1):
            if 0 <= other < peers:
                heapq.heappush(queue, (now + hop_delay, next(seq), other, entries))

    for i, node in enumerate(nodes):
        entry = node.propose(0.0, rng)
        assert entry is not None
        send(i, [entry], 0.0)
    now = 0.0
    while now < limit:
        if all(n.decision() is not None for n in nodes):
            return now
        retry = min((n.retry_at for n in nodes if n.due(math.inf)), default=math.inf)
        if queue and queue[0][0] <= retry:
            now, _, to, entries = heapq.heappop(queue)
            node = nodes[to]
            node.check(entries)
            new = node.merge(entries)
            if new:
                node.postpone(now, rng)
            mine = node.step()
            out = new + ([mine] if mine is not None else [])
            if out:
                send(to, out, now)
        elif retry < math.inf:
            now = retry
            for i, node in enumerate(nodes):
                if node.due(now):
                    entry = node.propose(now, rng)
                    if entry is not None:
                        send(i, [entry], now)
        else:
            return None
    return None


def test_many_proposers_on_a_slow_mesh_still_decide() -> None:
    """Regression: a 100-router lab never agreed. Each of its proposers retried on its own
    clock, so a higher ballot came sooner than any round could cross the mesh. A proposer now
    waits for the consensus to go quiet before it retries."""
    decided = _consensus_on_a_slow_line(20, hop_delay=0.4, limit=120.0)
    assert decided is not None


# --- the state machine


NAMES = (0x10, 0x11, 0x12, 0x80)  # three in the consensus, one observer


class Mesh(RuleBasedStateMachine):
    """Allocate, claim, release, restart, reset, rmpeer; gossip delayed, lost, partitioned.

    After every step: no address is held by two containers, nobody holds an address outside
    what it believes it owns, and no two peers believe they own one address. When the mesh
    settles every view is the same and the owned ranges add up to the whole range.
    """

    RANGE: Subnet = RANGE
    DEFAULT: Subnet | None = None
    SUBNETS: tuple[Subnet | None, ...] = SUBNETS

    def __init__(self) -> None:
        super().__init__()
        self.net = Net(consensus_configs(3, 1, self.RANGE, self.DEFAULT))
        self.retired: set[int] = set()
        self.rmpeered: set[int] = set()

    @initialize(start=st.sampled_from(["fresh", "ring", "busy"]))
    def start(self, start: str) -> None:
        """Half of the runs skip the consensus, so that the budget goes to what follows it."""
        if start != "fresh":
            allocate_settled(self.net, NAMES[0], f"c{NAMES[0]:x}-0")
        if start == "busy":
            for name in NAMES[1:]:
                for k in range(3):
                    subnet = self.SUBNETS[k]
                    self.net.peers[name].allocate(f"c{name:x}-{k}", subnet, self.net.now)
                    self.net.flush(name)
            self.net.settle()

    def active(self) -> list[int]:
        return [n for n in self.net.live if n not in self.retired]

    def address_at(self, offset: int) -> IPv4Address | IPv6Address:
        return self.RANGE.network_address + offset

    @rule(i=st.integers(0, 3), k=st.integers(0, 9), which=st.integers(0, 2))
    def allocate(self, i: int, k: int, which: int) -> None:
        name, subnet = NAMES[i], self.SUBNETS[which]
        if name not in self.active() or self.net.peers[name].leaving:
            return
        container = f"c{name:x}-{k}"
        result = self.net.peers[name].allocate(container, subnet, self.net.now)
        self.net.flush(name)
        event(f"allocate: {result if isinstance(result, NeedSpace) else 'address'}")
        if isinstance(result, Address):
            again = self.net.peers[name].allocate(container, subnet, self.net.now)
            assert again == result  # idempotent

    @rule(i=st.integers(0, 3), k=st.integers(0, 9), offset=st.integers(1, 62))
    def claim(self, i: int, k: int, offset: int) -> None:
        name = NAMES[i]
        if name not in self.active() or self.net.peers[name].leaving:
            return
        address = self.address_at(offset)
        try:
            result = self.net.peers[name].claim(f"c{name:x}-{k}", address, self.net.now)
            event(f"claim: {result if isinstance(result, NeedSpace) else 'address'}")
        except AddressInUse:
            event("claim: in use")
        self.net.flush(name)

    @rule(i=st.integers(0, 3), k=st.integers(0, 9))
    def release(self, i: int, k: int) -> None:
        name = NAMES[i]
        if name in self.active():
            self.net.peers[name].release(f"c{name:x}-{k}", self.net.now)
            self.net.flush(name)

    @precondition(lambda self: self.net.gossip)
    @rule(data=st.data())
    def deliver_gossip(self, data: st.DataObject) -> None:
        keys = sorted(self.net.gossip)
        self.net.deliver_gossip(data.draw(st.sampled_from(keys)))

    @precondition(lambda self: self.net.unicasts)
    @rule(data=st.data(), drop=st.booleans())
    def deliver_unicast(self, data: st.DataObject, drop: bool) -> None:
        i = data.draw(st.integers(0, len(self.net.unicasts) - 1))
        if drop:
            self.net.unicasts.pop(i)
        else:
            self.net.deliver_unicast(i)

    @precondition(lambda self: self.net.gossip)
    @rule(data=st.data())
    def drop_gossip(self, data: st.DataObject) -> None:
        del self.net.gossip[data.draw(st.sampled_from(sorted(self.net.gossip)))]

    @rule(a=st.integers(0, 3), b=st.integers(0, 3))
    def anti_entropy(self, a: int, b: int) -> None:
        self.net.anti_entropy(NAMES[a], NAMES[b])

    @rule(dt=st.sampled_from([0.5, 2.0, 6.0]))
    def tick(self, dt: float) -> None:
        self.net.tick(dt)

    @rule(groups=st.lists(st.integers(0, 1), min_size=4, max_size=4))
    def partition(self, groups: list[int]) -> None:
        self.net.group = dict(zip(NAMES, groups, strict=True))

    @rule()
    def deliver_all(self) -> None:
        for _ in range(100):
            if self.net.gossip:
                self.net.deliver_gossip(next(iter(self.net.gossip)))
            elif self.net.unicasts:
                self.net.deliver_unicast(0)

    @rule()
    def settle(self) -> None:
        self.net.settle()
        self.check_settled()

    @rule(i=st.integers(0, 3))
    def restart(self, i: int) -> None:
        if NAMES[i] in self.net.live:
            self.net.restart(NAMES[i])

    @rule(i=st.integers(0, 3), j=st.integers(0, 3))
    def reset(self, i: int, j: int) -> None:
        name, to = NAMES[i], NAMES[j]
        active = self.active()
        if name == to or name not in active or to not in active or len(active) < 3:
            return
        peer = self.net.peers[name]
        if peer.leaving or self.net.peers[to].leaving or not self.net.peers[to].ring.seeded:
            return
        peer.reset(to, self.net.now, force=True)  # its containers are gone
        self.net.flush(name)
        self.retired.add(name)
        event("reset")

    @rule(i=st.integers(0, 3))
    def kill(self, i: int) -> None:
        name = NAMES[i]
        if name in self.active() and len(self.active()) > 2:
            self.net.kill(name)

    def _up_to_date(self, runner: int) -> bool:
        """rmpeer's precondition (the shell's job): the runner has the newest of every token
        that a live peer knows. (What a dead peer did and never told anyone died with it: no
        live peer can act on it.)"""
        tokens = [t for n in self.net.live for t in self.net.peers[n].ring.tokens]
        newest: dict[int, Token] = {}
        for token in tokens:
            if token.start not in newest or token.version > newest[token.start].version:
                newest[token.start] = token
        mine = {t.start: t for t in self.net.peers[runner].ring.tokens}
        return mine == newest

    @rule(d=st.integers(0, 3), r=st.integers(0, 3), twice=st.booleans())
    def rmpeer(self, d: int, r: int, twice: bool) -> None:
        dead, runner = NAMES[d], NAMES[r]
        if dead not in self.net.dead or runner not in self.net.live:
            return
        if not self.net.peers[runner].ring.seeded or not self._up_to_date(runner):
            return
        runners = [runner]
        if twice:
            runners += [n for n in self.net.live if n != runner and self._up_to_date(n)][:1]
        try:
            heirs = {self.net.peers[n].rmpeer(dead, self.net.now) for n in runners}
        except UserError as error:
            assert "no peer left" in str(error)
            event("rmpeer refused: no heir")
            return
        assert len(heirs) == 1
        for n in runners:
            self.net.flush(n)
        self.rmpeered.add(dead)
        event(f"rmpeer by {len(runners)}")

    @invariant()
    def no_address_twice_and_no_range_twice(self) -> None:
        holders: dict[int, str] = {}
        owned: list[tuple[int, int, int]] = []
        for name in self.net.live:
            peer = self.net.peers[name]
            mine = peer.owned_ranges()
            owned += [(s, e, name) for s, e in mine]
            for address, container in peer.space.allocations():
                assert address not in holders, (address, container, holders[address])
                holders[address] = container
                assert any(s <= address < e for s, e in mine), (name, address, mine)
        owned.sort()
        for (_, end, p), (start, _, q) in itertools.pairwise(owned):
            assert end <= start, f"{p:x} and {q:x} both own {start}..{end}"

    def check_settled(self) -> None:
        live = [self.net.peers[n] for n in self.net.live]
        seeded = [p for p in live if p.ring.seeded]
        if not seeded:
            return
        assert len(seeded) == len(live)
        views = {tuple(p.ring.tokens) for p in live}
        assert len(views) == 1, "views differ after settling"
        ring = live[0].ring
        total = sum(e - s for t, s, e in ring.extents())
        assert total == ring.end - ring.start  # tokens tile the range: nothing lost
        for name in self.net.live:
            for s, e in ring.owned_ranges(name):
                assert any(s >= a and e <= b for a, b in self.net.peers[name].owned_ranges())
        for name in self.retired:
            if self.net.peers[name].handed_over:
                assert ring.owned_ranges(name) == []

    def teardown(self) -> None:
        donations = sum(p.counters.donations_received for p in self.net.peers.values())
        event(f"donations received: {min(donations, 3)}")
        self.net.settle()
        self.check_settled()
        # Every dead peer's space goes to someone alive — unless no owner or seed peer is left
        # to inherit it (then rmpeer refuses rather than risk two owners).
        refused = False
        for _ in range(4):
            for dead in sorted(self.net.dead):
                runner = next((n for n in self.net.live if self._up_to_date(n)), None)
                if runner is not None and self.net.peers[runner].ring.seeded:
                    try:
                        self.net.peers[runner].rmpeer(dead, self.net.now)
                    except UserError:
                        refused = True
                    self.net.flush(runner)
                self.net.settle()
        self.check_settled()
        event(f"teardown: rmpeer refused={refused}")
        ring = self.net.peers[self.net.live[0]].ring
        if ring.seeded and not refused:
            owners = {t.owner for t in ring.tokens}
            assert owners <= set(self.active()), (owners, self.active())


Mesh.TestCase.settings = settings(
    max_examples=400,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestMesh = Mesh.TestCase

RANGE6 = IPv6Network("fd12:3456:789a::/48")
DEFAULT6 = IPv6Network("fd12:3456:789a::/64")


class Mesh6(Mesh):
    """The same machine over an IPv6 /48: counts and addresses far beyond 64 bits (16-byte
    wire form), the initial division focused on the default /64, a /124 that runs out (so
    donations happen), and claims in two /64s."""

    RANGE = RANGE6
    DEFAULT = DEFAULT6
    SUBNETS = (
        None,
        IPv6Network("fd12:3456:789a:0:8000::/124"),
        IPv6Network("fd12:3456:789a:ffff::/64"),
    )

    def address_at(self, offset: int) -> IPv4Address | IPv6Address:
        base = DEFAULT6 if offset % 2 else self.SUBNETS[2]
        assert base is not None
        return base.network_address + offset


Mesh6.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestMesh6 = Mesh6.TestCase


# --- hostile requests (issue 17 point 5)


def donation_request(request_id: int, subnet: IPv4Network = RANGE) -> bytes:
    return msgpack.packb([1, request_id, int(subnet.network_address), subnet.prefixlen, None])


def seeded_donor() -> tuple[Net, Allocator, int]:
    net = Net(consensus_configs(2, observers=1))
    a, _b, obs = net.live
    allocate_settled(net, a, "first")
    net.settle()
    return net, net.peers[a], obs


def replies(net: Net, donor: Allocator) -> list[int]:
    """The reply codes the donor sends, in order."""
    codes = []
    for action in donor.take_actions():
        if isinstance(action, UnicastAction):
            codes.append(msgpack.unpackb(action.payload)[2])
    return codes


def test_no_donation_to_a_peer_nobody_can_reach() -> None:
    net, donor, obs = seeded_donor()
    donor.reachable = lambda peer: peer in net.peers
    before = donor.owned_ranges()
    for fake in range(0x1000, 0x1000 + 50):
        donor.on_unicast(fake, donation_request(fake))
    assert set(replies(net, donor)) == {Reply.NOTHING}
    assert donor.owned_ranges() == before
    assert donor.counters.donations_refused == 50 and donor.counters.donations_given == 0
    donor.on_unicast(obs, donation_request(1))  # a real peer still gets its share
    assert replies(net, donor) == [Reply.GRANTED]


def test_no_donation_to_a_peer_with_free_space_and_at_most_one_per_interval() -> None:
    net, donor, obs = seeded_donor()
    donor.advance(net.now)
    donor.on_unicast(obs, donation_request(1))
    assert replies(net, donor) == [Reply.GRANTED]
    net.flush(donor.name)  # nothing left: replies() took the actions
    # The donor's ring now shows the requester with the free space just given.
    donor.on_unicast(obs, donation_request(2))
    assert replies(net, donor) == [Reply.NOTHING]
    # A requester that reports no free space still waits out the interval.
    (token,) = [t for t in donor.ring.tokens if t.owner == obs]
    full = Token(token.start, token.end, obs, token.version + 1, 0)
    donor.ring.merge(donor.ring.update([full]))
    donor.on_unicast(obs, donation_request(3))
    assert replies(net, donor) == [Reply.NOTHING]
    donor.advance(net.now + DONATION_INTERVAL)
    donor.on_unicast(obs, donation_request(4))
    assert replies(net, donor) == [Reply.GRANTED]
    assert donor.counters.donations_refused == 2


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 60), min_size=1, max_size=40))
def test_requests_never_get_more_than_one_donation_per_interval(times: list[float]) -> None:
    net, donor, obs = seeded_donor()
    granted = []
    for i, at in enumerate(sorted(times)):
        for token in [t for t in donor.ring.tokens if t.owner == obs and t.free]:
            donor.ring.merge(
                donor.ring.update([Token(token.start, token.end, obs, token.version + 1, 0)])
            )
        donor.advance(net.now + at)
        donor.on_unicast(obs, donation_request(i))
        if replies(net, donor) == [Reply.GRANTED]:
            granted.append(at)
    assert all(b - a >= DONATION_INTERVAL for a, b in itertools.pairwise(granted))


def test_a_forged_change_of_our_token_is_reasserted_and_wins_back_everywhere() -> None:
    net, donor, _obs = seeded_donor()
    others = [n for n in net.live if n != donor.name]
    token = next(t for t in donor.ring.tokens if t.owner == donor.name)
    forged = Token(token.start, token.end, 0xDEAD, token.version + 100, 0)
    payload = _encode_gossip(donor.ring.update([forged]), [])
    for name in others:  # bystanders believe it
        net.peers[name].on_gossip(payload)
    assert all(net.peers[n].ring.owner_of(token.start) == 0xDEAD for n in others)
    assert donor.on_gossip(payload) is None
    net.flush(donor.name)  # the owner gossips its token, bumped past the forgery, to everyone
    net.settle()
    assert all(p.ring.owner_of(token.start) == donor.name for p in net.peers.values())
    # A forgery at the maximum version is dropped by everyone.
    top = Token(token.start, token.end, 0xDEAD, (1 << 63) - 1, 0)
    for name in net.live:
        assert net.peers[name].on_gossip(_encode_gossip(donor.ring.update([top]), [])) is None
        assert net.peers[name].ring.owner_of(token.start) == donor.name


@pytest.mark.parametrize("lost_by", ["restart", "timeout"])
def test_a_gift_whose_reply_was_lost_is_taken_from_gossip_after_the_request_ended(
    lost_by: str,
) -> None:
    """The donor's reply is lost, and our request ended first (a restart lost it, or it timed
    out): the gift still reaches us by gossip, from a donor we asked. Dropped as unasked, that
    space was ours in every view but our own, forever (found by TestMesh)."""
    net = Net(consensus_configs(3, observers=1))
    allocate_settled(net, NAMES[0], "c10-0")
    for name in NAMES[1:]:
        for k in range(3):
            net.peers[name].allocate(f"c{name:x}-{k}", SUBNETS[k], net.now)
            net.flush(name)
    net.settle()
    asker = NAMES[0]
    address = RANGE.network_address + 57
    owner = net.peers[asker].ring.owner_of(int(address))
    assert owner not in (None, asker)
    assert isinstance(net.peers[asker].claim("c10-x", address, net.now), NeedSpace)
    net.flush(asker)
    if lost_by == "restart":
        net.restart(asker)
    [(_, donor, _)] = net.unicasts
    assert donor == owner
    net.deliver_unicast(0)  # the donor gives...
    net.unicasts = [u for u in net.unicasts if u[1] != asker]  # ...and its reply is lost
    if lost_by == "timeout":
        net.tick(REQUEST_TIMEOUT + 1)
    net.settle()
    views = {tuple(net.peers[n].ring.tokens) for n in net.live}
    assert len(views) == 1
    assert net.peers[asker].ring.owner_of(int(address)) == asker


# --- IPv6: the following ring, huge spaces, the state file


def follow_configs(names: tuple[int, ...]) -> list[IpamConfig]:
    return [
        IpamConfig(name=n, range=RANGE6, default_subnet=DEFAULT6, mode=InitMode.FOLLOW)
        for n in names
    ]


def test_a_following_ring_waits_for_its_seed_then_allocates_without_donations() -> None:
    net = Net(follow_configs((1, 2, 3)))
    assert net.peers[1].allocate("x", None, 0.0) == NeedSpace(Waiting.CONSENSUS)
    for name in (1, 2, 3):
        net.peers[name].follow((1, 2, 3), 0.0)
        net.flush(name)
    got = [net.peers[n].allocate(f"c{n}", None, 0.0) for n in (1, 2, 3)]
    assert all(isinstance(a, Address) for a in got), got  # each owns part of the /64
    assert len({a.ip for a in got if isinstance(a, Address)}) == 3
    assert all(a.ip in DEFAULT6 and str(a.interface).endswith("/64") for a in got)  # type: ignore[union-attr]
    assert DEFAULT6.network_address not in {a.ip for a in got}  # type: ignore[union-attr]
    net.settle()
    assert sum(p.counters.requests_sent for p in net.peers.values()) == 0


def test_a_following_ring_ignores_consensus_entries() -> None:
    (config,) = follow_configs((1,))
    peer = Allocator(config, random.Random(1))
    ballot = Ballot(1, 9)
    entries = [PaxosEntry(n, ballot, ballot, (9,)) for n in (7, 8, 9)]  # a forged decision
    peer.on_gossip(_encode_gossip(None, entries))
    assert not peer.ring.seeded and not peer.paxos.entries


def test_ipv6_state_survives_a_restart_with_addresses_beyond_64_bits() -> None:
    net = Net(follow_configs((1, 2)))
    for name in (1, 2):
        net.peers[name].follow((1, 2), 0.0)
        net.flush(name)
    first = net.peers[1].allocate("a", None, 0.0)
    claimed = net.peers[1].claim("b", DEFAULT6.network_address + 7, 0.0)
    assert isinstance(first, Address) and isinstance(claimed, Address)
    net.restart(1)
    assert net.peers[1].addresses_of("a") == [first]
    assert net.peers[1].addresses_of("b") == [claimed]
    assert net.peers[1].ring.seed == (1, 2) and net.peers[1].divided_here is False


def test_an_ipv6_donation_request_travels_in_the_wide_form() -> None:
    net = Net(follow_configs((1, 2)))
    for name in (1, 2):
        net.peers[name].follow((1, 2), 0.0)
        net.flush(name)
    other = next(s for s, _ in net.peers[2].owned_ranges() if IPv6Address(s) in DEFAULT6) + 3
    result = net.peers[1].claim("x", IPv6Address(other), 0.0)
    assert result == NeedSpace(Waiting.DONATION, 2)
    net.flush(1)
    assert allocate_claimed(net, 1, "x", IPv6Address(other)).ip == IPv6Address(other)


def allocate_claimed(net: Net, name: int, container: str, address: IPv6Address) -> Address:
    for _ in range(5):
        net.settle()
        result = net.peers[name].claim(container, address, net.now)
        net.flush(name)
        if isinstance(result, Address):
            return result
    raise AssertionError(result)


# --- more subnets than the default one, each needing a donation from the same peer


def deliver_pending(net: Net) -> None:
    """Every message in flight, with no time passing."""
    while net.gossip or net.unicasts:
        if net.gossip:
            net.deliver_gossip(next(iter(net.gossip)))
        else:
            net.deliver_unicast(0)


def two_followers_and_two_of_peer_1s_subnets() -> tuple[Net, IPv6Network, IPv6Network]:
    """Peers 1 and 2 dividing RANGE6; the two /64s after the default one are wholly peer 1's."""
    net = Net(follow_configs((1, 2)))
    for name in (1, 2):
        net.peers[name].follow((1, 2), 0.0)
        net.flush(name)
    deliver_pending(net)
    first, second = list(RANGE6.subnets(new_prefix=64))[1:3]
    for subnet in (first, second):
        lo = int(subnet.network_address)
        assert net.peers[2].ring.owned_ranges(1)[0][0] <= lo
        assert net.peers[2].ring.owner_of(lo) == net.peers[2].ring.owner_of(lo + (1 << 64) - 1)
        assert net.peers[2].ring.owner_of(lo) == 1
    return net, first, second


def allocate_now(net: Net, name: int, container: str, subnet: IPv6Network) -> Address | NeedSpace:
    result = net.peers[name].allocate(container, subnet, net.now)
    net.flush(name)
    deliver_pending(net)
    return result


def test_a_second_subnet_from_the_same_donor_is_asked_for_when_its_interval_ends() -> None:
    """A donor gives a peer one range per DONATION_INTERVAL and refuses sooner requests; the
    asker waits that out with a timer of its own (it used to ask at once, be refused, and
    wait for an unrelated message: a second subnet timed out in about half the lab runs)."""
    net, first, second = two_followers_and_two_of_peer_1s_subnets()
    asker, donor = net.peers[2], net.peers[1]
    assert allocate_now(net, 2, "a", first) == NeedSpace(Waiting.DONATION, 1)
    assert isinstance(allocate_now(net, 2, "a", first), Address)
    granted_at = net.now
    assert allocate_now(net, 2, "b", second) == NeedSpace(Waiting.DONATION, 1)
    assert asker.counters.requests_sent == 1  # not asked yet: it would refuse
    net.tick(DONATION_INTERVAL / 2)  # (free counts reported meanwhile)
    assert allocate_now(net, 2, "b", second) == NeedSpace(Waiting.DONATION, 1)
    assert asker.counters.requests_sent == 1
    assert asker.next_wake() == granted_at + DONATION_INTERVAL  # the shell wakes it then
    net.tick(DONATION_INTERVAL / 2)
    assert allocate_now(net, 2, "b", second) == NeedSpace(Waiting.DONATION, 1)  # asked now
    got = allocate_now(net, 2, "b", second)
    assert isinstance(got, Address) and got.ip in second
    assert asker.ring.owner_of(int(got.ip)) == 2
    assert (donor.counters.donations_given, donor.counters.donations_refused) == (2, 0)


def test_a_refused_range_request_is_asked_again_when_the_donors_interval_ends() -> None:
    """A restarted asker forgot when it was last given a range: the donor refuses, and the
    asker retries on its own timer, not when some message happens to wake it."""
    net, first, second = two_followers_and_two_of_peer_1s_subnets()
    allocate_now(net, 2, "a", first)
    assert isinstance(allocate_now(net, 2, "a", first), Address)
    net.restart(2)
    net.tick(0.0)  # the restored peer's first tick
    asker, donor = net.peers[2], net.peers[1]
    assert allocate_now(net, 2, "b", second) == NeedSpace(Waiting.DONATION, 1)
    assert donor.counters.donations_refused == 1  # too soon after the first
    refused_at = net.now
    net.tick(DONATION_INTERVAL / 2)  # (free counts reported meanwhile)
    assert allocate_now(net, 2, "b", second) == NeedSpace(Waiting.DONATION, 1)
    assert asker.counters.requests_sent == 1
    assert asker.next_wake() == refused_at + DONATION_INTERVAL  # the shell wakes it then
    net.tick(DONATION_INTERVAL / 2)
    allocate_now(net, 2, "b", second)
    got = allocate_now(net, 2, "b", second)
    assert isinstance(got, Address) and got.ip in second
    assert donor.counters.donations_refused == 1 and asker.counters.requests_sent == 2


def test_the_only_donor_is_asked_again_once_its_request_timed_out() -> None:
    """A request lost on the way (or its reply) times out and marks its donor tried; with
    nobody else to ask, the next attempt starts a new round at once. It reported the subnet
    exhausted, with no timer left to wake the waiter (the lab's "did not donate any in time")."""
    net, first, _ = two_followers_and_two_of_peer_1s_subnets()
    asker = net.peers[2]
    assert asker.allocate("a", first, net.now) == NeedSpace(Waiting.DONATION, 1)
    net.flush(2)
    net.unicasts.clear()  # lost
    net.tick(REQUEST_TIMEOUT)
    assert asker.counters.requests_timed_out == 1
    assert allocate_now(net, 2, "a", first) == NeedSpace(Waiting.DONATION, 1)
    assert asker.counters.requests_sent == 2
    got = allocate_now(net, 2, "a", first)
    assert isinstance(got, Address) and got.ip in first


def test_a_donor_without_a_route_is_not_asked_until_it_has_one() -> None:
    """Alive (a neighbour) but not routable: a request would be dropped, so none is sent."""
    net, first, _ = two_followers_and_two_of_peer_1s_subnets()
    asker = net.peers[2]
    asker.routable = lambda peer: peer != 1
    assert allocate_now(net, 2, "a", first) == NeedSpace(Waiting.DONATION, 1)
    assert asker.counters.requests_sent == 0 and asker.next_wake() > net.now
    asker.routable = lambda peer: True  # the shell wakes the waiter: the routes changed
    assert allocate_now(net, 2, "a", first) == NeedSpace(Waiting.DONATION, 1)
    assert asker.counters.requests_sent == 1
    got = allocate_now(net, 2, "a", first)
    assert isinstance(got, Address) and got.ip in first
