"""How topology gossip scales: convergence, bytes, routes and memory for 100..10,000 peers.

Drives the in-memory ``Simulation`` of tests/unit/test_mesh_sim.py (every message round-tripped
through msgpack; link latencies 5-15 ms; random connected graph of average degree ~4, seeded).
Anti-entropy is off, so the numbers are the deltas alone.

- Initial convergence: all peers connect at t=0 and gossip until quiet. Up to ``--gossip-upto``
  peers only: beyond, gossiping every peer's entry to every peer is 10^8 entry merges in one
  process, so the converged state is INSTALLED directly (every peer adopts a copy-on-write view
  of the same final entries; the row says "installed") and only the change below is gossiped.
- One change: a new connection between two peers not yet connected, gossiped by the real cores
  until quiet: simulated time, messages, bytes per peer (msgpack frames; framing and encryption
  are the shell's).
- Routes ms/peer/change: mean wall time of one peer's route recomputation after that change
  (a sample of peers whose routes were current before it).
- Topology / routes MB/peer: what ONE peer holds after decoding the full state a new neighbour
  receives into a fresh ``Topology`` and computing its routes (every object reachable, once).
- Full map / digest KB: what one anti-entropy exchange would carry, full map versus digest.

    .venv/bin/python bench/gossip_scale.py [--peers 100,1000,10000] [--seed 1] [--degree 4]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time

from rich.console import Console
from rich.table import Table

from meshnet.gossip.routes import compute_routes
from meshnet.gossip.simulation import Simulation
from meshnet.gossip.topology import Topology, decode_entries, encode_digest, encode_entries

ROUTE_SAMPLE = 20


def deep_size(*roots: object) -> int:
    """Bytes of every object reachable from ``roots`` through containers and slots, each
    counted once (``sys.getsizeof``: with GC headers, without the allocator's rounding).

    Deterministic, unlike tracemalloc, which misses objects taken from free lists."""
    seen: set[int] = set()
    total = 0
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, tuple | list | set | frozenset):
            stack.extend(obj)
        elif hasattr(type(obj), "__slots__"):
            stack.extend(getattr(obj, slot) for slot in type(obj).__slots__)
    return total


def state_per_peer(sim: Simulation) -> tuple[float, float]:
    """MB of (topology, routes) of one peer that got the full state from a new neighbour."""
    some = sim.meshes[sim.names[0]]
    local = some.topology[some.name]
    payload = encode_entries([some.topology[n] for n in sorted(some.topology)])
    topology = Topology(name=local.name, nickname=local.nickname, uid=local.uid)
    topology.set_local_connections(local.connections)
    topology.merge(decode_entries(payload, topology.by_encoding))
    held = deep_size(topology._entries)
    routes = compute_routes(local.name, topology.entries)
    assert len(routes.distance) == len(sim.meshes)
    with_routes = deep_size(
        topology._entries,
        routes.graph,
        dict(routes.unicast),  # the proxies' dicts (same sizes: built by insertions only)
        dict(routes.distance),
    )
    return held / 1e6, (with_routes - held) / 1e6


def measure(
    n: int, seed: int, gossip_upto: int, degree: float, flat_cap: int | None = None
) -> dict[str, str]:
    sim = Simulation(n, seed=seed, degree=degree, flat_cap=flat_cap)
    if len(sim.edges) == n * (n - 1) // 2:
        sim.edges.pop()  # a full mesh but for one link, which the change below makes
    gossiped = n <= gossip_upto
    started = time.perf_counter()
    if gossiped:
        sim.connect_all()
    else:
        sim.install_converged()
    sim.run()
    wall = time.perf_counter() - started
    simulated = sim.last_activity
    initial = sim.total()
    sim.assert_consistent(broadcast_sources=2, route_sample=None if gossiped else ROUTE_SAMPLE)
    topology_mb, routes_mb = state_per_peer(sim)

    # One change after convergence: a new connection between two peers not yet connected.
    sampled = sim.rng.sample(sim.names, ROUTE_SAMPLE)
    for name in sampled:
        _ = sim.meshes[name].routes  # current before the change
    sim.reset_counts()
    a, b = next(
        (a, b) for a in sim.names for b in sim.names[::-1] if a != b and (a, b) not in sim.links
    )
    t0 = sim.now
    started = time.perf_counter()
    sim.connect(a, b)
    sim.run()
    change_wall = time.perf_counter() - started
    change = sim.total()
    route_times = []
    for name in sampled:
        started = time.perf_counter()
        _ = sim.meshes[name].routes
        route_times.append(time.perf_counter() - started)
    sim.assert_consistent(broadcast_sources=1, route_sample=None if gossiped else ROUTE_SAMPLE)
    some = sim.meshes[sim.names[0]]
    digest = len(
        encode_digest({n: (e.uid, e.version) for n, e in some.topology.items()}, reply=False)
    )
    full_map = len(encode_entries(some.topology.values()))
    return {
        "peers": str(n),
        "links": str(len(sim.links) // 2),
        "degree": f"{len(sim.links) / n:.1f}",
        "max degree": str(max(collections.Counter(a for a, _ in sim.links).values())),
        "converge (sim s)": f"{simulated:.3f}" if gossiped else "installed",
        "converge (wall s)": f"{wall:.1f}",
        "KB/peer initial": f"{initial.bytes / n / 1024:.1f}" if gossiped else "installed",
        "change (sim s)": f"{sim.last_activity - t0:.3f}",
        "change msgs": str(change.messages),
        "bytes/peer change": f"{change.bytes / n:.0f}",
        "change wall s": f"{change_wall:.2f}",
        "routes ms/peer/change": f"{statistics.mean(route_times) * 1000:.1f}",
        "topology MB/peer": f"{topology_mb:.2f}",
        "routes MB/peer": f"{routes_mb:.2f}",
        "full map KB": f"{full_map / 1024:.1f}",
        "digest KB": f"{digest / 1024:.1f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="100,1000,10000", help="comma-separated sizes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--gossip-upto",
        type=int,
        default=2000,
        help="largest size whose initial convergence is gossiped (beyond: installed)",
    )
    parser.add_argument(
        "--degree",
        type=float,
        default=4.0,
        help="average connections per peer (flat networks: up to --conn-limit, 100)",
    )
    parser.add_argument(
        "--flat-cap",
        type=int,
        default=None,
        help="instead of --degree: a flat network's graph as discovery makes it under "
        "--discovery-limit FLAT_CAP (peers joining in turn)",
    )
    args = parser.parse_args()
    console = Console(width=200)
    rows = []
    started = time.perf_counter()
    for n in (int(x) for x in args.peers.split(",")):
        with console.status(f"simulating {n} peers..."):
            rows.append(measure(n, args.seed, args.gossip_upto, args.degree, args.flat_cap))
    shape = (
        f"average degree ~{args.degree:g}"
        if args.flat_cap is None
        else f"flat network, --discovery-limit {args.flat_cap}"
    )
    table = Table(title=f"topology gossip, simulated mesh ({shape})")
    for column in rows[0]:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
    console.print(f"total wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
