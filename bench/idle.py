"""What an idle mesh costs: CPU seconds per router per minute, and memory, in lab meshes.

Builds each lab in turn with the lab library (by default a 2-host line, a 2-host full mesh and a
30-host ring, one container per host), lets it settle (fastdp probes answered, IPAM agreed),
then reads every router's CPU time (utime+stime of the process and its waited-for children, from
/proc/PID/stat) at the start and end of a window in which nothing happens, and its VmRSS at the
end. Every lab is torn down, whatever happens. Not a test: the numbers depend on the machine and
on whatever else runs on it.

Run it with the venv of the code to measure (each lab's routers run ``sys.executable -m meshnet``):

    python bench/idle.py [--seconds 60] [--settle 10] [--labs line:2,full:2,ring:30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any

from cputime import router_pid, usage
from rich.console import Console
from rich.table import Table

from meshnet.lab import lab as lablib
from meshnet.lab import topology


@dataclass(frozen=True)
class Result:
    lab: str
    routers: int
    cpu_per_minute: list[float]
    rss_mib: list[float]


def router_pids(status: dict[str, Any]) -> dict[str, int]:
    """Each host's router process, found through its API socket."""
    return {h["name"]: router_pid(h["api_socket"]) for h in status["hosts"]}


def measure(shape: str, hosts: int, seconds: float, settle: float, console: Console) -> Result:
    name = "bi" + uuid.uuid4().hex[:6]
    label = f"{shape} x{hosts}"
    console.print(f"[dim]{label}: building lab {name}[/]")
    try:
        lablib.up(name, topology.builtin(shape, hosts, 1))
        pids = router_pids(lablib.status(name))
        if len(pids) != hosts:
            raise RuntimeError(f"found {len(pids)} routers of {hosts}")
        console.print(f"[dim]{label}: settling {settle:.0f} s, then measuring {seconds:.0f} s[/]")
        time.sleep(settle)
        before = {h: usage(p) for h, p in pids.items()}
        started = time.monotonic()
        time.sleep(seconds)
        after = {h: usage(p) for h, p in pids.items()}
        elapsed = time.monotonic() - started
    finally:
        if (lablib.lab_root() / name).exists():
            lablib.down(name)
    return Result(
        label,
        hosts,
        [(after[h].cpu - before[h].cpu) * 60 / elapsed for h in pids],
        [after[h].rss_kib / 1024 for h in pids],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60, help="measuring window per lab")
    parser.add_argument("--settle", type=float, default=10, help="wait after the lab is up")
    parser.add_argument(
        "--labs", default="line:2,full:2,ring:30", help="SHAPE:HOSTS,... (lab topologies)"
    )
    args = parser.parse_args()
    lablib.require_root()
    console = Console(width=max(Console().width, 120))
    results = []
    for item in args.labs.split(","):
        shape, _, hosts = item.partition(":")
        results.append(measure(shape, int(hosts or 2), args.seconds, args.settle, console))
    table = Table(title=f"Idle routers ({args.seconds:.0f} s window, {os.cpu_count()} cores)")
    for column in (
        "lab",
        "routers",
        "CPU-s/min median",
        "CPU-s/min max",
        "% core median",
        "% core max",
        "RSS MiB median",
        "RSS MiB max",
    ):
        table.add_column(column, justify="left" if column == "lab" else "right")
    for r in results:
        cpu_median, cpu_max = statistics.median(r.cpu_per_minute), max(r.cpu_per_minute)
        table.add_row(
            r.lab,
            str(r.routers),
            f"{cpu_median:.3f}",
            f"{cpu_max:.3f}",
            f"{cpu_median / 60 * 100:.2f}",
            f"{cpu_max / 60 * 100:.2f}",
            f"{statistics.median(r.rss_mib):.1f}",
            f"{max(r.rss_mib):.1f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
