"""Throughput and latency between two containers on two hosts, against kernel baselines.

Runs single-stream iperf3 TCP (and ping under load) between two namespaces for:
  routed veth        container - host - host - container, plain kernel routing (the reference)
  kernel vxlan       a bridge + VXLAN device per host, static FDB (by hand, no meshnet)
  fastdp             a meshnet lab of two hosts, on its kernel VXLAN path
  sleeve             the same lab with --no-fastdp (the userspace data plane)
  sleeve encrypted   the same with a password
  sleeve 1% loss     the same with 1% loss injected on the underlay link
  sleeve behind NAT  the sleeve with the sending host behind a NAT (nftables masquerade), reaching
                     the other through it and the lab's internet router
  ..., IPv6 underlay fastdp, the sleeve and the encrypted sleeve with the routers reaching each
                     other over an IPv6-only link (VXLAN and UDP over IPv6: 20 header bytes more)
  minimal forwarder  the sleeve's kernel topology with bench/minimal_forwarder.py for routers:
                     the least a Python forwarder does (two threads, or one loop in turns)
and prints one table with each figure as a ratio of routed veth measured in the same run (and
fastdp's also against kernel vxlan).

Beside each row: CPU seconds spent per Gbit transferred (which is also cores kept busy per Gbit/s),
user/system, of each router daemon (h1 sends, h2 receives; "-" where no router runs) and of the
whole machine (all CPUs, /proc/stat: iperf3, the kernel's packet work and the routers together),
read from /proc just before and just after the iperf3 run. A regression shows where it comes from:
the sender or the receiver, Python (user) or the kernel (system).

Needs root, iperf3 and ping. Not a test: numbers depend on the machine; compare ratios.

    python bench/throughput.py [--seconds 5] [--only sleeve,vxlan] [--rounds 3] [--compare REV]

``--compare main~3`` adds each meshnet row again with the routers of that revision, measured
in the same run: the before-and-after table of a change.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cputime import CpuTime, Snapshot, router_pid
from rich.console import Console
from rich.table import Table

from meshnet.dataplane.sleeve.wire import ENCAPSULATION_OVERHEAD
from meshnet.lab import lab as lablib
from meshnet.lab import topology


@dataclass
class Result:
    name: str
    gbits: float
    retransmits: int
    ping_ms: float | None
    note: str = ""
    # CPU seconds per Gbit transferred during the iperf3 run (None: no router, or no figure)
    h1: CpuTime | None = None
    h2: CpuTime | None = None
    machine: CpuTime | None = None


def sh(*args: str, check: bool = True) -> str:
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def in_ns(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *args]


def measure(
    client_ns: str,
    server_ns: str,
    server_ip: str,
    seconds: int,
    name: str,
    routers: dict[str, int] | None = None,
) -> Result:
    """iperf3 from client_ns to server_ns, ping under load, and the CPU time of the machine and
    of `routers` (label -> PID: "h1" the sender's, "h2" the receiver's) during the run."""
    server = subprocess.Popen(
        in_ns(server_ns, "iperf3", "-s", "-1"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(0.5)
        ping = subprocess.Popen(
            in_ns(client_ns, "ping", "-q", "-i", "0.05", "-w", str(seconds), server_ip),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        before = Snapshot.take(routers or {})
        out = subprocess.run(
            in_ns(client_ns, "iperf3", "-c", server_ip, "-t", str(seconds), "-J"),
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=False,
        )
        cpu = Snapshot.take(routers or {}) - before
        ping_out, _ = ping.communicate(timeout=seconds + 10)
    finally:
        server.kill()
        server.wait()
    try:
        data = json.loads(out.stdout)
        end = data["end"]["sum_sent"]
        gbits, retransmits = end["bits_per_second"] / 1e9, int(end.get("retransmits", 0))
        transferred = end["bytes"] * 8 / 1e9  # Gbit: the same as gbits x iperf3's seconds
    except (ValueError, KeyError):
        return Result(name, 0.0, 0, None, note=(out.stderr or out.stdout).strip()[:60])
    m = re.search(r"= [\d.]+/([\d.]+)/", ping_out)
    per_gbit = {k: v.per(transferred) for k, v in cpu.processes.items()} if transferred else {}
    return Result(
        name,
        gbits,
        retransmits,
        float(m.group(1)) if m else None,
        h1=per_gbit.get("h1"),
        h2=per_gbit.get("h2"),
        machine=cpu.machine.per(transferred) if transferred else None,
    )


@contextmanager
def namespaces(*names: str) -> Iterator[None]:
    try:
        for name in names:
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        yield
    finally:
        for name in names:
            sh("ip", "netns", "del", name, check=False)


def routed_veth(seconds: int) -> Result:
    p = f"mnb{uuid.uuid4().hex[:4]}"
    c1, h1, h2, c2 = (f"{p}-{x}" for x in ("c1", "h1", "h2", "c2"))
    with namespaces(c1, h1, h2, c2):
        # c1:eth0 <-> h1:eth1 ; h1:up <-> h2:up ; h2:down <-> c2:eth0
        sh(
            "ip",
            "-n",
            c1,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth1",
            "netns",
            h1,
        )
        sh("ip", "-n", h1, "link", "add", "u0", "type", "veth", "peer", "name", "u0", "netns", h2)
        sh("ip", "-n", h2, "link", "add", "d0", "type", "veth", "peer", "name", "eth0", "netns", c2)
        for ns, dev, addr in (
            (c1, "eth0", "10.201.1.2/24"),
            (h1, "eth1", "10.201.1.1/24"),
            (h1, "u0", "10.201.2.1/24"),
            (h2, "u0", "10.201.2.2/24"),
            (h2, "d0", "10.201.3.1/24"),
            (c2, "eth0", "10.201.3.2/24"),
        ):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", c1, "route", "add", "default", "via", "10.201.1.1")
        sh("ip", "-n", c2, "route", "add", "default", "via", "10.201.3.1")
        sh("ip", "-n", h1, "route", "add", "10.201.3.0/24", "via", "10.201.2.2")
        sh("ip", "-n", h2, "route", "add", "10.201.1.0/24", "via", "10.201.2.1")
        for ns in (h1, h2):
            sh(*in_ns(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"))
        return measure(c1, c2, "10.201.3.2", seconds, "routed veth")


def container_port(host: str, cont: str, mtu: str, address: str) -> None:
    """A veth from ``host``'s bridge br0 (port vc) to ``cont``'s eth0 at ``address``/24."""
    sh("ip", "-n", host, "link", "add", "vc", "mtu", mtu, "type", "veth", "peer", "name", "eth0")
    sh("ip", "-n", host, "link", "set", "eth0", "netns", cont)
    sh("ip", "-n", host, "link", "set", "vc", "master", "br0", "up")
    sh("ip", "-n", cont, "link", "set", "eth0", "mtu", mtu)
    sh("ip", "-n", cont, "addr", "add", f"{address}/24", "dev", "eth0")
    sh("ip", "-n", cont, "link", "set", "eth0", "up")


def kernel_vxlan(seconds: int, mtu: int = 1450, name: str = "kernel vxlan") -> Result:
    p = f"mnb{uuid.uuid4().hex[:4]}"
    c1, h1, h2, c2 = (f"{p}-{x}" for x in ("c1", "h1", "h2", "c2"))
    with namespaces(c1, h1, h2, c2):
        sh("ip", "-n", h1, "link", "add", "u0", "type", "veth", "peer", "name", "u0", "netns", h2)
        macs = {}
        for host, cont, under, remote, caddr in (
            (h1, c1, "172.30.0.1", "172.30.0.2", "10.202.0.1"),
            (h2, c2, "172.30.0.2", "172.30.0.1", "10.202.0.2"),
        ):
            sh("ip", "-n", host, "addr", "add", f"{under}/24", "dev", "u0")
            sh("ip", "-n", host, "link", "set", "u0", "up")
            sh("ip", "-n", host, "link", "add", "br0", "type", "bridge")
            sh(
                "ip",
                "-n",
                host,
                "link",
                "add",
                "vx0",
                "mtu",
                str(mtu),
                "type",
                "vxlan",
                "id",
                "42",
                "dstport",
                "6784",
                "local",
                under,
                "nolearning",
            )
            container_port(host, cont, str(mtu), caddr)
            sh("ip", "-n", host, "link", "set", "vx0", "master", "br0")
            sh("ip", "-n", host, "link", "set", "vx0", "up")
            sh("ip", "-n", host, "link", "set", "br0", "up")
            macs[cont] = json.loads(sh("ip", "-n", cont, "-j", "link", "show", "eth0"))[0][
                "address"
            ]
            sh(
                "bridge",
                "-n",
                host,
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dev",
                "vx0",
                "dst",
                remote,
            )
        sh("bridge", "-n", h1, "fdb", "append", macs[c2], "dev", "vx0", "dst", "172.30.0.2")
        sh("bridge", "-n", h2, "fdb", "append", macs[c1], "dev", "vx0", "dst", "172.30.0.1")
        return measure(c1, c2, "10.202.0.2", seconds, name)


def sleeve(
    seconds: int,
    *,
    password: str | None = None,
    loss: float = 0.0,
    name: str = "sleeve",
    fastdp: bool = False,
    nat: str | None = None,
    underlay: str = "ipv4",
) -> Result:
    """Two hosts, a container each; h1's sends to h2's. With ``nat``, h1 sits behind a NAT of
    that kind and reaches h2 through it and the lab's internet router (two forwarding hops
    more than the direct link of the other rows). ``underlay``: the link's family (the
    routers reach each other over IPv6 with "ipv6"; the containers stay IPv4)."""
    lab = f"b{uuid.uuid4().hex[:8]}"
    plan = topology.builtin("line", 2, 1, underlay)
    if nat is not None:
        plan = topology.validate(
            topology.Topology(
                hosts=(
                    topology.HostSpec("h1", ("h1-c1",), nat),
                    topology.HostSpec("h2", ("h2-c1",)),
                ),
                links=(),
            )
        )
    lablib.up(lab, plan, password=password, fastdp=fastdp)
    try:
        state = lablib.status(lab)
        if fastdp and not _wait_for_fastdp(state):
            return Result(name, 0.0, 0, None, note="fastdp never came up")
        if loss:
            lablib.set_link(lab, "h1", "h2", "loss", str(loss))
        c = {c["name"]: c for c in state["containers"]}
        # h1-c1 sends to h2-c1: h1's router is the sending one.
        routers = {h["name"]: router_pid(h["api_socket"]) for h in state["hosts"]}
        target = c["h2-c1"]["addresses"][0].split("/")[0]
        deadline = time.monotonic() + 20
        while (
            subprocess.run(
                in_ns(c["h1-c1"]["namespace"], "ping", "-c1", "-W1", target), capture_output=True
            ).returncode
            != 0
        ):
            if time.monotonic() > deadline:
                return Result(name, 0.0, 0, None, note="no connectivity")
        return measure(
            c["h1-c1"]["namespace"], c["h2-c1"]["namespace"], target, seconds, name, routers
        )
    finally:
        lablib.down(lab)


def _wait_for_fastdp(state: dict[str, Any]) -> bool:
    from meshnet.api.client import ApiClient

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        paths = [
            p["kind"]
            for h in state["hosts"]
            for p in ApiClient(lablib.host_api_socket(h["dir"]))
            .get("/status/dataplane")["paths"]
            .values()
        ]
        if paths and all(kind == "fastdp" for kind in paths):
            return True
        time.sleep(0.2)
    return False


def minimal_forwarders(seconds: int, *, one_loop: bool = False) -> Result:
    """The sleeve's kernel topology with bench/minimal_forwarder.py in place of the routers:
    what the least a Python forwarder does moves here, measured beside the sleeve."""
    p = f"mnb{uuid.uuid4().hex[:4]}"
    c1, h1, h2, c2 = (f"{p}-{x}" for x in ("c1", "h1", "h2", "c2"))
    mtu = str(1500 - ENCAPSULATION_OVERHEAD)
    program = os.path.join(os.path.dirname(os.path.abspath(__file__)), "minimal_forwarder.py")
    forwarders: dict[str, subprocess.Popen[str]] = {}
    with namespaces(c1, h1, h2, c2):
        sh("ip", "-n", h1, "link", "add", "u0", "type", "veth", "peer", "name", "u0", "netns", h2)
        try:
            for label, host, cont, under, remote, caddr in (
                ("h1", h1, c1, "172.31.0.1", "172.31.0.2", "10.203.0.1"),
                ("h2", h2, c2, "172.31.0.2", "172.31.0.1", "10.203.0.2"),
            ):
                sh("ip", "-n", host, "addr", "add", f"{under}/24", "dev", "u0")
                sh("ip", "-n", host, "link", "set", "u0", "up")
                sh("ip", "-n", host, "link", "add", "br0", "type", "bridge")
                sh("ip", "-n", host, "link", "set", "br0", "up")
                container_port(host, cont, mtu, caddr)
                args = [sys.executable, program, "mtap", under, remote]
                forwarder = subprocess.Popen(
                    in_ns(host, *args, *(["--one-loop"] if one_loop else [])),
                    stdout=subprocess.PIPE,
                    text=True,
                )
                forwarders[label] = forwarder
                assert forwarder.stdout is not None
                if forwarder.stdout.readline().strip() != "ready":
                    return Result("minimal forwarder", 0.0, 0, None, note="did not start")
                sh("ip", "-n", host, "link", "set", "mtap", "mtu", mtu, "master", "br0", "up")
            name = "minimal forwarder" + (", one loop" if one_loop else "")
            pids = {label: f.pid for label, f in forwarders.items()}
            return measure(c1, c2, "10.203.0.2", seconds, name, pids)
        finally:
            for forwarder in forwarders.values():
                forwarder.kill()
                forwarder.wait()


CASES: dict[str, Callable[[int], Result]] = {
    "veth": routed_veth,
    "vxlan": kernel_vxlan,
    # The same bridge at meshnet's overlay MTU (which leaves room for the sleeve): fastdp
    # against this one shows what the daemon adds to the path, apart from the MTU.
    "vxlan-overlay-mtu": lambda s: kernel_vxlan(
        s, 1500 - ENCAPSULATION_OVERHEAD, f"kernel vxlan, MTU {1500 - ENCAPSULATION_OVERHEAD}"
    ),
    "fastdp": lambda s: sleeve(s, fastdp=True, name="fastdp"),
    "sleeve": sleeve,
    "encrypted": lambda s: sleeve(s, password="bench password", name="sleeve encrypted"),
    "loss": lambda s: sleeve(s, loss=1.0, name="sleeve 1% loss"),
    "nat": lambda s: sleeve(s, nat="masquerade", name="sleeve behind NAT"),
    "fastdp-ipv6": lambda s: sleeve(s, fastdp=True, underlay="ipv6", name="fastdp, IPv6 underlay"),
    "sleeve-ipv6": lambda s: sleeve(s, underlay="ipv6", name="sleeve, IPv6 underlay"),
    "encrypted-ipv6": lambda s: sleeve(
        s, password="bench password", underlay="ipv6", name="sleeve encrypted, IPv6 underlay"
    ),
    # What the least a Python forwarder does moves here: the sleeve's kernel work, no more.
    "minimal": minimal_forwarders,
    "minimal-one-loop": lambda s: minimal_forwarders(s, one_loop=True),
}


ROUTER_CASES = (
    "fastdp",
    "sleeve",
    "encrypted",
    "loss",
    "nat",
    "fastdp-ipv6",
    "sleeve-ipv6",
    "encrypted-ipv6",
)


@contextmanager
def revision_tree(revision: str | None) -> Iterator[str | None]:
    """A checkout of ``revision`` for the routers to run from (removed afterwards)."""
    if revision is None:
        yield None
        return
    path = f"/tmp/meshnet-bench-{uuid.uuid4().hex[:8]}"
    sh("git", "worktree", "add", "--detach", path, revision)
    try:
        yield path
    finally:
        sh("git", "worktree", "remove", "--force", path, check=False)


def run_case(case: str, seconds: int, tree: str | None, revision: str | None) -> Result:
    """One case; with ``tree``, its routers import meshnet from there: the lab passes the
    environment and working directory on to ``python -m meshnet launch``, whose first import
    path is the working directory."""
    if tree is None:
        return CASES[case](seconds)
    saved = os.environ.get("PYTHONPATH"), os.getcwd()
    os.environ["PYTHONPATH"] = tree
    os.chdir(tree)
    try:
        result = CASES[case](seconds)
    finally:
        os.chdir(saved[1])
        if saved[0] is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved[0]
    result.name += f" @{revision}"
    return result


def median_result(runs: list[Result]) -> Result:
    """One case's runs as one row: the median of each figure (notes of every run kept)."""
    pings = [r.ping_ms for r in runs if r.ping_ms is not None]
    return Result(
        runs[0].name,
        statistics.median(r.gbits for r in runs),
        int(statistics.median(r.retransmits for r in runs)),
        statistics.median(pings) if pings else None,
        "; ".join(sorted({r.note for r in runs if r.note})),
        h1=median_cpu([r.h1 for r in runs]),
        h2=median_cpu([r.h2 for r in runs]),
        machine=median_cpu([r.machine for r in runs]),
    )


def median_cpu(figures: list[CpuTime | None]) -> CpuTime | None:
    """User and system medians, each on its own, of the runs that have the figure."""
    known = [f for f in figures if f is not None]
    if not known:
        return None
    return CpuTime(
        statistics.median(f.user for f in known), statistics.median(f.system for f in known)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument(
        "--only", default=",".join(CASES), help="comma-separated: " + ",".join(CASES)
    )
    parser.add_argument(
        "--compare",
        metavar="REV",
        help="also run every meshnet case with the routers of this git revision (a temporary "
        "worktree), in the same rounds: before and after a change, from one run",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every case this many times, interleaved, and show medians (this machine's "
        "figures vary by 20%% from run to run)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/throughput.py needs root (network namespaces)", file=sys.stderr)
        return 2
    wanted = [c.strip() for c in args.only.split(",") if c.strip()]
    if "veth" not in wanted:
        wanted.insert(0, "veth")  # every ratio is against this run's routed veth
    with revision_tree(args.compare) as old:
        cases = [(case, None) for case in wanted]
        if old is not None:
            cases += [(case, old) for case in wanted if case in ROUTER_CASES]
        rounds = [
            [run_case(case, args.seconds, tree, args.compare) for case, tree in cases]
            for _ in range(max(1, args.rounds))
        ]
    results = [median_result([r[i] for r in rounds]) for i in range(len(cases))]
    base = results[0].gbits or 1.0
    vxlan = next((r for r in results if r.name == "kernel vxlan"), None)
    title = f"single-stream iperf3 TCP, {args.seconds}s, ping under load"
    if args.rounds > 1:
        title += f", median of {args.rounds} interleaved rounds"
    table = Table(
        title=title,
        caption="s/Gbit: CPU seconds per Gbit transferred (= cores busy per Gbit/s), "
        "user/system; h1 = sending router, h2 = receiving router, all CPUs = the machine "
        "(system includes irq and softirq)",
    )
    columns: dict[str, list[str]] = {
        "path": [r.name for r in results],
        "Gbit/s": [f"{r.gbits:.2f}" for r in results],
        "x routed veth": [f"{r.gbits / base:.3f}" for r in results],
        "x kernel vxlan": [
            f"{r.gbits / vxlan.gbits:.3f}" if vxlan and vxlan.gbits and r is not results[0] else ""
            for r in results
        ],
        "retr": [str(r.retransmits) for r in results],
        "ping ms": [f"{r.ping_ms:.2f}" if r.ping_ms is not None else "-" for r in results],
        "h1 usr/sys s/Gbit": [str(r.h1) if r.h1 else "-" for r in results],
        "h2 usr/sys s/Gbit": [str(r.h2) if r.h2 else "-" for r in results],
        "all CPUs usr/sys s/Gbit": [str(r.machine) if r.machine else "-" for r in results],
        "note": [r.note for r in results],
    }
    columns = {k: v for k, v in columns.items() if any(v)}  # no empty vxlan or note column
    for column in columns:
        table.add_column(column, justify="left" if column in ("path", "note") else "right")
    for row in zip(*columns.values(), strict=True):
        table.add_row(*row)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 140)  # a file or a pipe: keep each row on one line
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
