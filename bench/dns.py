"""Queries per second and latency of the DNS server for local names, from a lab container.

Builds a lab of one host with two containers (or uses --lab NAME), then runs a load client in
a container's namespace: UDP A queries for the containers' names, keeping WINDOW queries in
flight, for --seconds each. The server is the host's meshnet router (one trio thread); client
and server share this machine's cores. Upstreams point at a closed port: nothing leaves.
Not a test: the numbers depend on the machine.

    python bench/dns.py [--seconds 5] [--windows 1,8,32,64] [--lab NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import time
import uuid

# This file is named like dnspython's package: keep its directory from shadowing it.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(__file__)]

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402


def client(server: str, names: list[str], window: int, seconds: float) -> dict[str, float]:
    """The load client (runs inside the container's namespace): one UDP socket, pipelined."""
    import dns.message

    templates = [dns.message.make_query(n, "A").to_wire()[2:] for n in names]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((server, 53))
    sock.settimeout(0.5)
    sent: dict[int, float] = {}
    latencies: list[float] = []
    errors = 0
    counter = 0
    clock = time.perf_counter

    def send() -> None:
        nonlocal counter
        qid = counter & 0xFFFF
        counter += 1
        sent[qid] = clock()
        sock.send(struct.pack("!H", qid) + templates[counter % len(templates)])

    start = clock()
    end = start + seconds
    for _ in range(window):
        send()
    lost = 0
    while clock() < end:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            lost += len(sent)
            sent.clear()
            for _ in range(window):
                send()
            continue
        now = clock()
        (qid,) = struct.unpack_from("!H", data)
        t = sent.pop(qid, None)
        if t is None:
            continue
        latencies.append(now - t)
        if data[3] & 0x0F or data[6:8] == b"\x00\x00":  # rcode set, or no answer
            errors += 1
        send()
    elapsed = clock() - start
    latencies.sort()
    n = len(latencies)
    return {
        "answered": n,
        "qps": n / elapsed,
        "p50_ms": latencies[n // 2] * 1000 if n else float("nan"),
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else float("nan"),
        "lost": lost,
        "errors": errors,
    }


def run_client(namespace: str, server: str, names: list[str], window: int, seconds: float) -> dict:
    out = subprocess.run(
        [
            "ip", "netns", "exec", namespace, sys.executable, os.path.abspath(__file__),
            "--client", server, "--names", ",".join(names),
            "--window", str(window), "--seconds", str(seconds),
        ],
        capture_output=True, text=True, timeout=seconds + 60, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"load client failed: {out.stderr.strip()}")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--windows", default="1,8,32,64")
    parser.add_argument("--lab", default=None, help="use this running lab (its first container)")
    parser.add_argument("--client", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--names", default="", help=argparse.SUPPRESS)
    parser.add_argument("--window", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(client(args.client, args.names.split(","), args.window, args.seconds)))
        return 0
    if os.geteuid() != 0:
        print("bench/dns.py needs root (network namespaces)", file=sys.stderr)
        return 2
    from meshnet.lab import dns as lab_dns
    from meshnet.lab import lab as lablib
    from meshnet.lab import topology

    name = args.lab or "bd" + uuid.uuid4().hex[:6]
    if args.lab is None:
        lablib.up(name, topology.builtin("line", 1, 2), dns_upstreams=("127.0.0.1:9",))
    try:
        status = lablib.status(name)
        host = status["hosts"][0]
        dns_status = lab_dns.host_dns(lablib.host_api_socket(host["dir"]))
        if dns_status is None:
            raise RuntimeError(f"the DNS server of {host['name']} is not serving")
        server = dns_status["listen"].split("/")[0]
        names = [f"{c['name']}.{dns_status['domain']}" for c in status["containers"]]
        namespace = status["containers"][0]["namespace"]
        table = Table(title=f"DNS A queries for local names, UDP, {args.seconds:g}s per row")
        for column in ("in flight", "queries/s", "p50 ms", "p99 ms", "lost", "errors"):
            table.add_column(column, justify="right")
        for window in (int(w) for w in args.windows.split(",")):
            r = run_client(namespace, server, names, window, args.seconds)
            table.add_row(
                str(window),
                f"{r['qps']:,.0f}",
                f"{r['p50_ms']:.3f}",
                f"{r['p99_ms']:.3f}",
                str(r["lost"]),
                str(r["errors"]),
            )
        Console().print(table)
    finally:
        if args.lab is None:
            lablib.down(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
