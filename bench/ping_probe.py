"""Where a ping's time goes on the sleeve under load: queue depths sampled during an iperf3 run.

Brings up the lab of bench/throughput.py's `sleeve` case (two hosts in a line, one container
each, no fastdp; sealed with --password), runs single-stream iperf3 TCP from h1's container to
h2's with `ping -i 0.05` beside it, and meanwhile samples every few milliseconds, from /proc:
  - each router's UDP socket: bytes waiting in its send and receive buffers, and its drops,
  - each router's TAP: frames dropped as its queue (the kernel's ring, txqueuelen long) was full,
and prints each as mean and 90th percentile, beside every ping's RTT, TCP's retransmits and the
sending socket's state half-way (`ss -tin`: cwnd, unacked segments, BBR's estimates). Little's
law turns bytes into time at the measured rate: what TCP has in flight (unacked x mss) and the
sampled queues do not hold waits in a TAP's queue (the kernel keeps no count of it) or a router.

Needs root, iperf3 and ping. Not a test:

    python bench/ping_probe.py [--seconds 5] [--password P] [--bitrate 1G] [--txqueuelen N]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from cputime import router_pid
from throughput import in_ns

from meshnet.constants import SLEEVE_TAP
from meshnet.lab import lab as lablib
from meshnet.lab import topology

SLEEVE_PORT = 6783


def udp_queues(pid: int) -> tuple[int, int, int] | None:
    """(send queue, receive queue, drops) of the router's UDP sockets on the sleeve port, summed
    (two with the express lanes: the bulk one holds what waits)."""
    found = None
    for table in ("udp6", "udp"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == SLEEVE_PORT:
                tx, rx = (int(x, 16) for x in fields[4].split(":"))
                last = found or (0, 0, 0)
                found = (last[0] + tx, last[1] + rx, last[2] + int(fields[-1]))
    return found


def tap_drops(pid: int) -> int:
    """Frames the kernel could not queue to the router's TAP (its tx_dropped)."""
    for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]:
        name, _, counters = line.partition(":")
        if name.strip() == SLEEVE_TAP:
            return int(counters.split()[11])
    return 0


def summary(values: list[int]) -> str:
    if not values:
        return "-"
    q90 = sorted(values)[int(len(values) * 0.9)]
    return f"mean {statistics.fmean(values) / 1e3:8.0f} kB   p90 {q90 / 1e3:8.0f} kB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--password")
    parser.add_argument("--txqueuelen", type=int, help="set both TAPs' queue length first")
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--bitrate", help="iperf3's -b (e.g. 1G): a load the routers keep up with")
    args = parser.parse_args()
    lab = f"pp{uuid.uuid4().hex[:6]}"
    plan = topology.builtin("line", 2, 1, "ipv4")
    lablib.up(lab, plan, password=args.password, fastdp=False)
    started: list[subprocess.Popen[str]] = []  # killed at the end, whatever happens
    try:
        state = lablib.status(lab)
        hosts = {h["name"]: h for h in state["hosts"]}
        pids = {name: router_pid(h["api_socket"]) for name, h in hosts.items()}
        c = {c["name"]: c for c in state["containers"]}
        client, server = c["h1-c1"]["namespace"], c["h2-c1"]["namespace"]
        target = c["h2-c1"]["addresses"][0].split("/")[0]
        if args.txqueuelen is not None:
            for h in hosts.values():
                link = ["ip", "link", "set", SLEEVE_TAP, "txqueuelen", str(args.txqueuelen)]
                subprocess.run(in_ns(h["namespace"], *link), check=True)
        for h in hosts.values():
            print(
                h["name"],
                subprocess.run(
                    in_ns(h["namespace"], "ip", "-s", "-d", "link", "show", SLEEVE_TAP),
                    capture_output=True,
                    text=True,
                ).stdout.split("\n")[0],
            )
        deadline = time.monotonic() + 20
        while subprocess.run(
            in_ns(client, "ping", "-c1", "-W1", target), capture_output=True
        ).returncode:
            if time.monotonic() > deadline:
                print("no connectivity", file=sys.stderr)
                return 1
        iperf_server = subprocess.Popen(
            in_ns(server, "iperf3", "-s", "-1"), stdout=subprocess.DEVNULL, text=True
        )
        started.append(iperf_server)
        time.sleep(0.5)
        ping = subprocess.Popen(
            in_ns(client, "ping", "-i", "0.05", "-w", str(args.seconds), target),
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(ping)
        iperf = subprocess.Popen(
            [
                *in_ns(client, "iperf3", "-c", target, "-t", str(args.seconds), "-J"),
                *(["-b", args.bitrate] if args.bitrate else []),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(iperf)
        samples: dict[str, list[int]] = {k: [] for k in ("h1 snd", "h1 rcv", "h2 snd", "h2 rcv")}
        first_drops = {name: (udp_queues(pid), tap_drops(pid)) for name, pid in pids.items()}
        stop = threading.Event()

        def sample() -> None:
            time.sleep(1.0)  # past slow start
            while not stop.is_set():
                for name, pid in pids.items():
                    q = udp_queues(pid)
                    if q is not None:
                        samples[f"{name} snd"].append(q[0])
                        samples[f"{name} rcv"].append(q[1])
                time.sleep(args.interval)

        sampler = threading.Thread(target=sample)
        sampler.start()
        time.sleep(args.seconds / 2)
        tcp_info = subprocess.run(
            in_ns(client, "ss", "-tin", "dst", target), capture_output=True, text=True
        ).stdout
        out, _ = iperf.communicate(timeout=args.seconds + 30)
        stop.set()
        sampler.join()
        ping_out, _ = ping.communicate(timeout=args.seconds + 10)
        iperf_server.wait(timeout=10)
        end = json.loads(out)["end"]["sum_sent"]
        rate = end["bits_per_second"] / 8  # bytes/s
        rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", ping_out)]
        print("  pings:", " ".join(f"{x:.1f}" for x in rtts))
        print(
            f"{end['bits_per_second'] / 1e9:.2f} Gbit/s, {end.get('retransmits', 0)} retransmits, "
            f"ping mean {statistics.fmean(rtts):.2f} ms median {statistics.median(rtts):.2f} "
            f"max {max(rtts):.2f} ({len(rtts)} pings)"
        )
        for key, values in samples.items():
            ms = statistics.fmean(values) / rate * 1e3 if values else 0
            print(f"  {key:7s} {summary(values)}   = {ms:5.2f} ms at this rate")
        print("  mid-run TCP state of the sender:", " ".join(tcp_info.split()[-60:]))
        for name, pid in pids.items():
            q0, t0 = first_drops[name]
            q1, t1 = udp_queues(pid), tap_drops(pid)
            udp = (q1[2] - q0[2]) if q0 and q1 else "?"
            print(f"  {name}: UDP receive drops {udp}, TAP queue drops {t1 - t0}")
    finally:
        for process in started:
            process.kill()
            process.wait()
        lablib.down(lab)
    return 0


if __name__ == "__main__":
    sys.exit(main())
