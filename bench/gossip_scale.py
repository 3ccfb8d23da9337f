"""How topology gossip scales: convergence time and bytes for 100..1000 simulated peers.

Drives the in-memory ``Simulation`` of tests/unit/test_mesh_sim.py (every message round-tripped
through msgpack; link latencies 5-15 ms; random connected graph of average degree ~4, seeded).
All peers connect at t=0; anti-entropy is off, so the numbers are the deltas alone. The last two
columns compare what one anti-entropy exchange would carry: the full map versus a digest.

    /work/venv/bin/python bench/gossip_scale.py [--peers 100,300,1000] [--seed 1]
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from meshnet.gossip.simulation import Simulation
from meshnet.gossip.topology import encode_digest, encode_entries


def measure(n: int, seed: int) -> dict[str, str]:
    sim = Simulation(n, seed=seed)
    started = time.perf_counter()
    sim.connect_all()
    sim.run()
    wall = time.perf_counter() - started
    simulated = sim.last_activity
    sim.assert_consistent(broadcast_sources=2)
    initial = sim.total()
    merged = sum(o.merged for o in sim.outboxes.values())
    recomputes = sum(m.statistics().route_recomputations for m in sim.meshes.values())

    # One change after convergence: a new connection between two peers not yet connected.
    sim.reset_counts()
    a, b = next((a, b) for a in sim.names for b in sim.names[::-1] if (a, b) not in sim.links)
    t0 = sim.now
    started = time.perf_counter()
    sim.connect(a, b)
    sim.run()
    change_wall = time.perf_counter() - started
    sim.assert_consistent(broadcast_sources=1)
    change = sim.total()
    some = sim.meshes[sim.names[0]]
    digest = len(encode_digest(some._topology.digest(), reply=False))
    full_map = len(encode_entries(some.topology.values()))
    return {
        "peers": str(n),
        "links": str(len(sim.links) // 2),
        "converge (sim s)": f"{simulated:.3f}",
        "converge (wall s)": f"{wall:.1f}",
        "messages": str(initial.messages),
        "merged sends": str(merged),
        "KB/peer initial": f"{initial.bytes / n / 1024:.1f}",
        "route recomputes": str(recomputes),
        "change (sim s)": f"{sim.last_activity - t0:.3f}",
        "change msgs": str(change.messages),
        "bytes/peer change": f"{change.bytes / n:.0f}",
        "change wall s": f"{change_wall:.2f}",
        "full map KB": f"{full_map / 1024:.1f}",
        "digest KB": f"{digest / 1024:.1f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="100,300,1000", help="comma-separated sizes")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    console = Console(width=200)
    rows = []
    for n in (int(x) for x in args.peers.split(",")):
        with console.status(f"simulating {n} peers..."):
            rows.append(measure(n, args.seed))
    table = Table(title="topology gossip, simulated mesh (average degree ~4)")
    for column in rows[0]:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row.values())
    console.print(table)


if __name__ == "__main__":
    main()
