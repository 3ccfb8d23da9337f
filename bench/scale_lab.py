"""A real lab of N hosts (default 100): how long it takes to come up, what idle routers cost,
and how fast the mesh heals.

Builds a lab with the lab library on a seeded random sparse topology (a random tree plus random
links up to the average degree), written as a topology file first so that the same lab can be
built again (`meshnet lab up --topology FILE`); one container per host. Then measures, in order:

- lab up: `lab up` itself (namespaces, links, routers started, containers attached, DNS);
- converged: until every router has every peer, each with a route (from the start of `up`);
  and how often, by then, a router's fastdp path to a neighbour went down (false alarms of an
  overloaded machine, each of which moves routes for the whole mesh);
- ping by name: until h1's container pings the container of the host farthest from h1 (in
  links) by its DNS name (from the start of `up`);
- idle: over --idle-seconds, each router's CPU seconds per minute (its waited-for children
  included), its RSS at the end, and the bytes it sent on its control connections per minute
  (gossip, heartbeats, framing: the router's `control_bytes`); right after the ping, when the
  youngest routers still retry the addresses they just discovered and write what they learned,
  and again --settle-seconds later;
- reroute: a link on h1's current path to that container is taken down (`lab link A B down`),
  one whose loss keeps the graph connected: until h1's container pings it by name again;
- heal: the link back up: until h1's router sees the two ends connected again;
- kill -9: the router of a host on that path is killed and restarted (`start_router`): until it
  is ready, and until every router again has every peer with a route and the restarted
  router's entry at the version it gives itself, with all its neighbours connected.

With ``--containers 0`` the lab has no containers: nothing needs IPAM, nothing is pinged, and
the reroute is timed until h1's router routes around the cut link.

The lab is always torn down (also on Ctrl-C or SIGTERM). Not a test: the numbers depend on the
machine and on whatever else runs on it. Run with the venv of the code to measure, as root:

    python bench/scale_lab.py [--hosts 100] [--degree 4] [--seed 1] [--idle-seconds 60]
                              [--settle-seconds 120] [--containers 1] [--topology-out PATH]
                              [--up-only]
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cputime import Usage, machine_time, router_pid, usage
from rich.console import Console
from rich.table import Table

from meshnet.api.client import ApiClient
from meshnet.errors import UserError
from meshnet.lab import lab as lablib
from meshnet.lab import topology

POLL_WORKERS = 8  # routers asked at once when checking the whole mesh
DEADLINE = 240.0  # seconds any one condition may take before the bench gives up on it


@dataclass
class Rows:
    """The table's rows, in the order they were measured."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, what: str, value: str, note: str = "") -> None:
        self.rows.append((what, value, note))
        print(f"{what}: {value} {note}", file=sys.stderr, flush=True)  # shown if a later step fails


def wait_for(what: str, condition: Callable[[], bool], deadline: float = DEADLINE) -> float:
    """Seconds until `condition()` holds (checked again and again; a router that does not
    answer counts as not yet); fails after `deadline`."""
    started = time.monotonic()
    while not _holds(condition):
        if time.monotonic() - started > deadline:
            raise RuntimeError(f"{what}: not within {deadline:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - started


def _holds(condition: Callable[[], bool]) -> bool:
    try:
        return condition()
    except UserError:
        return False


def ask(host: dict[str, Any], path: str) -> Any:
    return ApiClient(Path(host["api_socket"]), timeout=10).get(path)


def ask_all(hosts: list[dict[str, Any]], path: str) -> dict[str, Any]:
    """Every router's answer (None where it does not answer)."""

    def one(host: dict[str, Any]) -> Any:
        try:
            return ask(host, path)
        except UserError:
            return None

    with ThreadPoolExecutor(POLL_WORKERS) as pool:
        return dict(zip((h["name"] for h in hosts), pool.map(one, hosts), strict=True))


def every_route(hosts: list[dict[str, Any]]) -> Callable[[], bool]:
    """Every router knows every peer and has a route to each."""

    def check() -> bool:
        for peers in ask_all(hosts, "/status/peers").values():
            if peers is None or len(peers) != len(hosts):
                return False
            if not all(p["local"] or (p["reachable"] and p["next_hop"]) for p in peers):
                return False
        return True

    return check


def pings(namespace: str, name: str) -> bool:
    """One ping by DNS name from a container (its resolv.conf points at its router)."""
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, "ping", "-c", "1", "-W", "1", name],
        capture_output=True,
    )
    return done.returncode == 0


def path_to(host: dict[str, Any], target: str) -> list[str]:
    """The hosts (nicknames) on a router's current route to `target`, both ends included."""
    for peer in ask(host, "/status/peers"):
        if peer["nickname"] == target:
            return [host["name"], *peer["via"], target]
    raise RuntimeError(f"{host['name']} does not know {target}")


def connected(spec: topology.Topology, without: frozenset[str]) -> bool:
    rest = topology.Topology(spec.hosts, tuple(x for x in spec.links if x.key != without))
    return len(topology.hops_from(rest, spec.hosts[0].name)) == len(spec.hosts)


def sample_idle(hosts: list[dict[str, Any]], pids: dict[str, int]) -> dict[str, tuple[Usage, int]]:
    sent = {
        name: status["control_bytes"]["sent"] for name, status in ask_all(hosts, "/status").items()
    }
    return {name: (usage(pid), sent[name]) for name, pid in pids.items()}


def idle_rows(
    rows: Rows,
    hosts: list[dict[str, Any]],
    pids: dict[str, int],
    seconds: float,
    suffix: str,
    when: str,
) -> None:
    """Over ``seconds`` of nothing asked of the lab: each router's CPU seconds per minute, its
    RSS at the end and its control bytes sent per minute, as median / max rows."""
    before = sample_idle(hosts, pids)
    window = time.monotonic()
    time.sleep(seconds)
    after = sample_idle(hosts, pids)
    minutes = (time.monotonic() - window) / 60
    cpu = [(after[h][0].cpu - before[h][0].cpu) / minutes for h in pids]
    rss = [after[h][0].rss_kib / 1024 for h in pids]
    sent = [(after[h][1] - before[h][1]) / minutes / 1024 for h in pids]
    rows.add(
        f"idle CPU per router{suffix}",
        f"{statistics.median(cpu):.2f} / {max(cpu):.2f} s/min",
        f"median / max ({os.cpu_count()} cores), {when}",
    )
    rows.add(
        f"RSS per router{suffix}",
        f"{statistics.median(rss):.1f} / {max(rss):.1f} MiB",
        "median / max",
    )
    rows.add(
        f"control bytes sent per router{suffix}",
        f"{statistics.median(sent):.1f} / {max(sent):.1f} KiB/min",
        "median / max, idle (gossip, heartbeats, framing)",
    )


# What `lab up` reports, by the first word of its progress lines: the phase each belongs to.
PHASES = {
    "host": "namespaces and links",
    "link": "namespaces and links",
    "container": "namespaces and links",
    "router": "routers started and ready",
    "attached": "containers attached",
    "DNS": "resolv.conf written",
    "containers": "resolv.conf written",
    "routers": "routers find each other",
}


@dataclass
class Phases:
    """When each phase of `lab up` ended (its last progress line; the next phase's first line
    ends it too), and the machine's CPU seconds by then: where the time of an `up` goes."""

    started: float = field(default_factory=time.monotonic)
    cpu_at_start: float = field(default_factory=lambda: _machine_cpu())
    ends: dict[str, tuple[float, float]] = field(default_factory=dict)
    current: str | None = None

    def progress(self, line: str) -> None:
        phase = PHASES.get(line.split(" ", 1)[0], self.current)
        if phase != self.current and self.current is not None:
            self.ends[self.current] = (time.monotonic(), _machine_cpu())
        self.current = phase

    def finish(self, rows: Rows) -> None:
        if self.current is not None:
            self.ends[self.current] = (time.monotonic(), _machine_cpu())
        at, cpu = self.started, self.cpu_at_start
        for phase, (end, end_cpu) in self.ends.items():
            rows.add(f"  {phase}", f"{end - at:.1f} s", f"machine CPU {end_cpu - cpu:.0f} s")
            at, cpu = end, end_cpu


def fastdp_downs(hosts: list[dict[str, Any]]) -> int:
    """How often a router's fastdp path to a neighbour went down, summed over every router (in
    a lab that only comes up, each one a false alarm: an overloaded router answered late)."""
    answers = ask_all(hosts, "/status/dataplane").values()
    return sum(
        peer.get("downs", 0)
        for status in answers
        if status is not None
        for peer in status["fastdp"]["peers"].values()
    )


def _machine_cpu() -> float:
    used = machine_time()
    return used.user + used.system


def run(args: argparse.Namespace, name: str, spec: topology.Topology, rows: Rows) -> None:
    console = Console(stderr=True)
    step = console.print
    started = time.monotonic()
    phases = Phases()
    lablib.up(name, spec, progress=phases.progress)
    rows.add("lab up", f"{time.monotonic() - started:.1f} s", f"{len(spec.hosts)} hosts")
    phases.finish(rows)
    state = lablib.status(name)
    hosts = state["hosts"]
    by_name = {h["name"]: h for h in hosts}
    step("[dim]waiting for every route[/]")
    wait_for("every router has every peer and a route", every_route(hosts))
    rows.add("every peer and a route", f"{time.monotonic() - started:.1f} s", "since up began")
    downs = fastdp_downs(hosts)
    rows.add(
        "fastdp paths that went down",
        f"{downs} of {2 * len(spec.links)}",
        "while coming up, all routers (each one moved traffic and routes: news for everyone)",
    )

    hops = topology.hops_from(spec, "h1")
    far = max(hops, key=lambda h: (hops[h], -int(h[1:])))
    source = next((c for c in state["containers"] if c["host"] == "h1"), None)
    target = next((c["name"] for c in state["containers"] if c["host"] == far), None)
    if source is not None and target is not None:
        step(f"[dim]pinging {target} ({hops[far]} links away) from {source['name']}[/]")
        wait_for("ping by name", lambda: pings(source["namespace"], target))
        rows.add(
            f"h1 pings {target} by name",
            f"{time.monotonic() - started:.1f} s",
            f"since up began; {hops[far]} links away",
        )
    else:
        rows.add("h1 pings the farthest container", "n/a", "--containers 0")
    if args.up_only:
        return

    pids = {h["name"]: router_pid(h["api_socket"]) for h in hosts}
    step(f"[dim]idle for {args.idle_seconds:.0f} s[/]")
    idle_rows(rows, hosts, pids, args.idle_seconds, "", "the first minute after the ping")
    if args.settle_seconds > 0:
        step(f"[dim]{args.settle_seconds:.0f} s more, then idle for {args.idle_seconds:.0f} s[/]")
        time.sleep(args.settle_seconds)
        later = f"{args.settle_seconds:.0f} s later"
        idle_rows(rows, hosts, pids, args.idle_seconds, ", settled", later)

    path = path_to(by_name["h1"], far)
    cut = None
    for i in sorted(range(len(path) - 1), key=lambda i: abs(i - (len(path) - 2) / 2)):
        if connected(spec, frozenset(path[i : i + 2])):
            cut = (path[i], path[i + 1])
            break
    if cut is None:
        rows.add("reroute", "n/a", f"every link of {'-'.join(path)} is a bridge")
    else:
        a, b = cut
        step(f"[dim]cutting {a}-{b} on {'-'.join(path)}[/]")
        lablib.set_link(name, a, b, "down")
        if source is not None and target is not None:
            seconds = wait_for("reroute", lambda: pings(source["namespace"], target))
            until = "until h1's ping passes"
        else:

            def around() -> bool:
                hops = path_to(by_name["h1"], far)
                return all({x, y} != {a, b} for x, y in itertools.pairwise(hops))

            seconds = wait_for("reroute", around)
            until = f"until h1's route to {far} avoids it"
        rows.add(f"reroute after cutting {a}-{b}", f"{seconds:.1f} s", until)
        lablib.set_link(name, a, b, "up")

        def joined() -> bool:
            for peer in ask(by_name["h1"], "/status/peers"):
                if peer["nickname"] == a:
                    return any(c["nickname"] == b and c["established"] for c in peer["connections"])
            return False

        seconds = wait_for("heal", joined)
        rows.add(f"heal after restoring {a}-{b}", f"{seconds:.1f} s", f"until h1 sees {a}-{b}")

    victim = path[len(path) // 2] if len(path) > 2 else far
    degree = sum(victim in link.key for link in spec.links)
    step(f"[dim]kill -9 of {victim}'s router, and a restart[/]")
    killed = time.monotonic()
    os.kill(pids[victim], signal.SIGKILL)
    wait_for(
        "router gone", lambda: not Path(f"/proc/{pids[victim]}").exists() or _zombie(pids[victim])
    )
    lablib.start_router(name, victim)
    ready = time.monotonic() - killed
    victim_host = by_name[victim]

    def settled() -> bool:
        own = {p["nickname"]: p for p in ask(victim_host, "/status/peers")}[victim]
        if sum(c["established"] for c in own["connections"]) < degree:
            return False
        if not every_route(hosts)():
            return False
        for peers in ask_all(hosts, "/status/peers").values():
            entry = {p["nickname"]: p for p in peers or []}.get(victim)
            if entry is None or entry["version"] != own["version"]:
                return False
        return True

    wait_for("reconverge after kill -9", settled)
    rows.add(
        f"kill -9 of {victim}'s router, restart",
        f"{ready:.1f} / {time.monotonic() - killed:.1f} s",
        "ready / every router agrees again (since the kill)",
    )


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally`: the lab comes down


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--degree", type=float, default=4, help="average links per host")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--topology-out", type=Path, default=None, help="where to write the topology file"
    )
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=120,
        help="then wait this long and measure idle again, once the mesh has settled (0: not)",
    )
    parser.add_argument(
        "--up-only", action="store_true", help="stop after the ping: no idle, reroute or kill"
    )
    parser.add_argument(
        "--containers", type=int, default=1, help="per host (0: no IPAM, DNS or ping measured)"
    )
    args = parser.parse_args()
    lablib.require_root()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    spec = topology.random_sparse(args.hosts, args.degree, args.seed, args.containers)
    out = args.topology_out or Path(
        f"/tmp/scale-lab-{args.hosts}-d{args.degree:g}-s{args.seed}.toml"
    )
    out.write_text(topology.to_toml(spec))
    spec = topology.load_file(out, None)  # the lab is what the file says
    name = "sl" + uuid.uuid4().hex[:6]
    rows = Rows()
    failure = None
    try:
        run(args, name, spec, rows)
    except (RuntimeError, UserError) as e:
        failure = str(e)
    finally:
        if (lablib.lab_root() / name).exists():
            started = time.monotonic()
            lablib.down(name)
            rows.add("lab down", f"{time.monotonic() - started:.1f} s")
    farthest = max(topology.hops_from(spec, "h1").values())
    table = Table(
        title=f"Lab of {len(spec.hosts)} hosts, {len(spec.links)} links "
        f"(average degree {2 * len(spec.links) / len(spec.hosts):.1f}, seed {args.seed}, "
        f"{farthest} links from h1 to the farthest host; {out})"
    )
    for column in ("measure", "value", "note"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for row in rows.rows:
        table.add_row(*row)
    Console(width=max(Console().width, 120)).print(table)
    if failure is not None:
        logs = lablib.failed_logs_dir(name)
        kept = f" (router logs in {logs})" if logs.exists() else ""
        print(f"scale_lab: stopped early: {failure}{kept}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
