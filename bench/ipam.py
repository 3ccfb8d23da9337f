"""IPAM allocation latency: local allocations versus ones that need a donation.

Ten allocators (the pure core, seeded among all ten) joined by an in-memory network that
delivers gossip and unicasts at once, every payload as the bytes the wire would carry. Each
allocation is timed in wall-clock time from the first ``allocate`` call until it returns an
address, including every message the donation takes and the ``to_state()`` the shell must write
before sending (serialising only; the atomic file write is timed separately, per call).

* balanced: 10,000 allocations spread round-robin over the ten peers: all local;
* skewed: one peer allocates all 10,000, so once its own share is gone every allocation first
  asks another peer (chosen by free space) for a range.

    .venv/bin/python bench/ipam.py [--addresses 10000] [--peers 10] [--range 10.32.0.0/18]

An IPv6 ``--range`` (``fd12:3456:789a::/48``) runs the IPv6 ring as the daemon does: addresses in
its first /64, which the initial division cuts among all the peers first.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections import deque
from ipaddress import IPv6Network, ip_network
from pathlib import Path

from rich.console import Console
from rich.table import Table

from meshnet.ipam.allocator import (
    Address,
    Allocator,
    GossipAction,
    InitMode,
    IpamConfig,
    NeedSpace,
    UnicastAction,
)
from meshnet.ipam.range6 import first_subnet6
from meshnet.ipam.service import write_atomically
from meshnet.ipam.space import Subnet


class Net:
    def __init__(self, peers: int, range_: Subnet, seed: int) -> None:
        names = tuple(range(1, peers + 1))
        default = first_subnet6(range_) if isinstance(range_, IPv6Network) else None
        self.peers = {
            n: Allocator(
                IpamConfig(
                    name=n, range=range_, default_subnet=default, mode=InitMode.SEED, seed=names
                ),
                random.Random(seed + n),
            )
            for n in names
        }
        self.queue: deque[tuple[str, int, int, bytes]] = deque()
        self.messages = 0
        self.state_bytes = 0
        self.serialise: list[float] = []
        self.now = 0.0

    def flush(self, name: int) -> None:
        peer = self.peers[name]
        if peer.dirty:
            started = time.perf_counter()
            self.state_bytes = len(peer.to_state())  # what the shell writes, before sending
            self.serialise.append(time.perf_counter() - started)
        for action in peer.take_actions():
            if isinstance(action, GossipAction):
                for other in self.peers:
                    if other != name:
                        self.queue.append(("gossip", name, other, action.payload))
            elif isinstance(action, UnicastAction):
                self.queue.append(("unicast", name, action.destination, action.payload))

    def drain(self) -> None:
        while self.queue:
            kind, source, target, payload = self.queue.popleft()
            self.messages += 1
            peer = self.peers[target]
            if kind == "gossip":
                peer.on_gossip(payload)
            else:
                peer.on_unicast(source, payload)
            self.flush(target)

    def allocate(self, name: int, container: str) -> tuple[float, bool]:
        """Seconds until the container has an address; whether it needed a donation."""
        peer = self.peers[name]
        started = time.perf_counter()
        waited = False
        while True:
            self.now += 0.001
            result = peer.allocate(container, None, self.now)
            self.flush(name)
            if isinstance(result, Address):
                return time.perf_counter() - started, waited
            assert isinstance(result, NeedSpace)
            waited = True
            if not self.queue:  # nothing in flight: let the timers run (free-count reports)
                self.now += 6.0
                for n, p in self.peers.items():
                    p.tick(self.now)
                    self.flush(n)
            self.drain()


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def run(
    scenario: str, peers: int, addresses: int, range_: Subnet, seed: int
) -> list[dict[str, str]]:
    net = Net(peers, range_, seed)
    net.peers[1].allocate("warm-up", None, 0.0)  # seeds the ring (deterministic, everywhere)
    net.flush(1)
    net.drain()
    local: list[float] = []
    donated: list[float] = []
    started = time.perf_counter()
    for i in range(addresses):
        name = 1 if scenario == "skewed" else 1 + i % peers
        seconds, waited = net.allocate(name, f"c{i}")
        (donated if waited else local).append(seconds)
    wall = time.perf_counter() - started
    held = [a for p in net.peers.values() for a, _ in p.space.allocations()]
    assert len(held) == len(set(held)) == addresses + 1, "duplicate or lost address"
    rows = []
    for kind, samples in (("local", local), ("needs donation", donated)):
        if not samples:
            continue
        rows.append(
            {
                "scenario": scenario,
                "allocation": kind,
                "count": str(len(samples)),
                "p50 µs": f"{percentile(samples, 50) * 1e6:.0f}",
                "p99 µs": f"{percentile(samples, 99) * 1e6:.0f}",
                "max µs": f"{max(samples) * 1e6:.0f}",
                "mean µs": f"{statistics.fmean(samples) * 1e6:.0f}",
                "messages": str(net.messages),
                "state KB": f"{net.state_bytes / 1024:.0f}",
                "to_state p50 µs": f"{percentile(net.serialise, 50) * 1e6:.0f}",
                "total s": f"{wall:.1f}",
            }
        )
    return rows


def atomic_write_row(state_bytes: int) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ipam.state"
        data = b"x" * state_bytes
        samples = []
        for _ in range(200):
            started = time.perf_counter()
            write_atomically(path, data)
            samples.append(time.perf_counter() - started)
    return {
        "state KB": f"{state_bytes / 1024:.0f}",
        "p50 µs": f"{percentile(samples, 50) * 1e6:.0f}",
        "p99 µs": f"{percentile(samples, 99) * 1e6:.0f}",
        "where": tempfile.gettempdir(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addresses", type=int, default=10_000)
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--range", default="10.32.0.0/18", help="the allocation range")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    range_ = ip_network(args.range)
    console = Console(width=200)
    rows = []
    for scenario in ("balanced", "skewed"):
        with console.status(f"{scenario}: {args.addresses} allocations over {args.peers} peers"):
            rows += run(scenario, args.peers, args.addresses, range_, args.seed)
    table = Table(
        title=f"IPAM allocation latency, {args.peers} peers, {args.addresses} addresses "
        f"from {range_} (pure core, in-memory network, wall clock)"
    )
    for column in rows[0]:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
    sizes = sorted({int(float(r["state KB"]) * 1024) for r in rows})
    writes = Table(title="the shell's atomic state write (tmp + fsync + rename + dir fsync)")
    writes_rows = [atomic_write_row(max(1, s)) for s in sizes]
    for column in writes_rows[0]:
        writes.add_column(column, justify="right")
    for row in writes_rows:
        writes.add_row(*row.values())
    console.print(writes)


if __name__ == "__main__":
    main()
