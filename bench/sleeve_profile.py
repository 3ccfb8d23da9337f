"""Where the sleeve's routers spend their time: py-spy on both daemons during an iperf3 run.

Brings up the lab of bench/throughput.py's `sleeve` case (two hosts in a line, one container
each, no fastdp; sealed with --password), sends single-stream iperf3 TCP from h1's container to
h2's, and meanwhile samples both router daemons with `py-spy record` (all threads, idle samples
left out; --native adds C frames, --gil keeps only samples holding the GIL). Writes, per router,
py-spy's raw collapsed stacks (for flamegraph.pl or inferno) and the same as a speedscope profile
with one profile per thread (open it at speedscope.app), then prints the top functions by own
samples per router. The lab is torn down whatever happens, Ctrl-C included.

Needs root, iperf3 and py-spy (the dev extras). Run it with the venv of the code to measure (the
routers run ``sys.executable -m meshnet``):

    python bench/sleeve_profile.py [--seconds 10] [--password P] [--native] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cputime import Snapshot, router_pid
from rich.console import Console
from rich.table import Table
from throughput import in_ns

from meshnet.lab import lab as lablib
from meshnet.lab import topology

ROLES = {"h1": "sending router", "h2": "receiving router"}

# py-spy's frames: "function (file:line)", or without a line for native frames and threads.
FRAME = re.compile(r"^(?P<name>.*) \((?P<where>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Profile:
    """One router's collapsed stacks: (frames from the thread down to the leaf, samples)."""

    stacks: list[tuple[tuple[str, ...], int]]

    @classmethod
    def load(cls, path: Path) -> Profile:
        stacks = []
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks.append((tuple(stack.split(";")), int(count)))
        return cls(stacks)

    @property
    def samples(self) -> int:
        return sum(n for _, n in self.stacks)

    def top(self, n: int) -> list[tuple[str, int, int]]:
        """The n functions with the most own samples: (function, own, total), line numbers
        dropped so that a function counts once; total counts a stack once per function."""
        own: Counter[str] = Counter()
        total: Counter[str] = Counter()
        for frames, count in self.stacks:
            functions = [function_of(f) for f in frames if not f.startswith("thread (")]
            if not functions:
                continue
            own[functions[-1]] += count
            for function in set(functions):
                total[function] += count
        return [(f, c, total[f]) for f, c in own.most_common(n)]

    def threads(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for frames, count in self.stacks:
            counts[frames[0] if frames[0].startswith("thread (") else "?"] += count
        return counts

    def speedscope(self, name: str) -> dict[str, object]:
        """The stacks as a speedscope file: one sampled profile per thread."""
        frames: dict[str, int] = {}
        shared: list[dict[str, object]] = []
        by_thread: dict[str, tuple[list[list[int]], list[int]]] = {}
        for stack, count in self.stacks:
            thread, rest = (stack[0], stack[1:]) if stack[0].startswith("thread (") else ("", stack)
            indices = []
            for frame in rest:
                if frame not in frames:
                    frames[frame] = len(shared)
                    m = FRAME.match(frame)
                    entry: dict[str, object] = {"name": m["name"] if m else frame}
                    if m and m["where"]:
                        entry["file"] = m["where"]
                    if m and m["line"]:
                        entry["line"] = int(m["line"])
                    shared.append(entry)
                indices.append(frames[frame])
            samples, weights = by_thread.setdefault(thread, ([], []))
            samples.append(indices)
            weights.append(count)
        return {
            "$schema": "https://www.speedscope.app/file-format-schema.json",
            "name": name,
            "exporter": "bench/sleeve_profile.py (from py-spy raw)",
            "shared": {"frames": shared},
            "profiles": [
                {
                    "type": "sampled",
                    "name": f"{name} {thread}".strip(),
                    "unit": "none",
                    "startValue": 0,
                    "endValue": sum(weights),
                    "samples": samples,
                    "weights": weights,
                }
                for thread, (samples, weights) in sorted(by_thread.items())
            ],
        }


def function_of(frame: str) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    return f"{m['name']} ({m['where']})" if m["where"] else m["name"]


def wait_for_ping(namespace: str, target: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (
        subprocess.run(in_ns(namespace, "ping", "-c1", "-W1", target), capture_output=True)
    ).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no connectivity from {namespace} to {target}")


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def profile(args: argparse.Namespace, out: Path, console: Console) -> dict[str, Path]:
    """Run the lab, iperf3 and py-spy; returns each router's raw stacks file."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    lab = f"p{uuid.uuid4().hex[:8]}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        console.print(f"[dim]lab {lab}: up ({'sealed' if args.password else 'plain'} sleeve)[/]")
        lablib.up(lab, topology.builtin("line", 2, 1), password=args.password, fastdp=False)
        state = lablib.status(lab)
        pids = {h["name"]: router_pid(h["api_socket"]) for h in state["hosts"]}
        c = {c["name"]: c for c in state["containers"]}
        client, server = c["h1-c1"]["namespace"], c["h2-c1"]["namespace"]
        target = c["h2-c1"]["addresses"][0].split("/")[0]
        wait_for_ping(client, target)
        procs.append(
            subprocess.Popen(
                in_ns(server, "iperf3", "-s", "-1"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        time.sleep(0.5)
        with open(out / "iperf3.json", "wb") as iperf_log:
            # iperf3 runs a second longer than the sampling, which starts once TCP has ramped up.
            iperf = subprocess.Popen(
                in_ns(client, "iperf3", "-c", target, "-t", str(args.seconds + 1), "-J"),
                stdout=iperf_log,
                stderr=subprocess.DEVNULL,
            )
        procs.append(iperf)
        time.sleep(0.5)
        raw = {name: out / f"{name}.raw.txt" for name in pids}
        spies = {}
        before = Snapshot.take(pids)
        for name, pid in pids.items():
            command = [py_spy, "record", "--pid", str(pid), "--format", "raw"]
            command += ["--output", str(raw[name]), "--duration", str(args.seconds)]
            command += ["--rate", str(args.rate), "--threads"]
            command += ["--native"] if args.native else []
            command += ["--nonblocking"] if args.nonblocking else []
            command += ["--gil"] if args.gil else []
            with open(out / f"{name}.py-spy.log", "wb") as log:
                spies[name] = subprocess.Popen(command, stdout=log, stderr=log)
            procs.append(spies[name])
        for spy in spies.values():
            spy.wait(timeout=args.seconds + 60)
        cpu = Snapshot.take(pids) - before
        iperf.wait(timeout=args.seconds + 30)
        for name, spy in spies.items():
            if spy.returncode != 0 or not raw[name].exists():
                log_text = (out / f"{name}.py-spy.log").read_text().strip()
                raise RuntimeError(f"py-spy on {name} failed: {log_text[-500:]}")
        try:
            end = json.loads((out / "iperf3.json").read_text())["end"]["sum_sent"]
            gbits = f"{end['bits_per_second'] / 1e9:.2f} Gbit/s"
        except (ValueError, KeyError):
            gbits = "iperf3 failed (see iperf3.json)"
        console.print(f"iperf3 h1-c1 -> h2-c1 while sampled: {gbits}")
        for name, pid in pids.items():
            used = cpu.processes[name]
            console.print(
                f"  {name} ({ROLES.get(name, 'router')}, PID {pid}): {used.user:.2f} s user, "
                f"{used.system:.2f} s system CPU in {args.seconds} s of sampling"
            )
        return raw
    finally:
        for proc in reversed(procs):
            stop(proc)
        if (lablib.lab_root() / lab).exists():
            console.print(f"[dim]lab {lab}: down[/]")
            lablib.down(lab)


def report(name: str, raw: Path, top: int, rate: int, gil: bool, console: Console) -> None:
    prof = Profile.load(raw)
    speedscope = raw.with_name(f"{name}.speedscope.json")
    speedscope.write_text(json.dumps(prof.speedscope(f"{name} ({ROLES.get(name, 'router')})")))
    total = prof.samples or 1
    threads = ", ".join(f"{t} {n / total:.0%}" for t, n in prof.threads().most_common())
    table = Table(
        title=f"{name}, {ROLES.get(name, 'router')}: top {top} functions by own samples",
        caption=f"{prof.samples} {'GIL-holding' if gil else 'non-idle'} samples at {rate} Hz "
        f"(~{prof.samples / rate:.1f} s of thread time"
        f"{'' if gil else '; waiting for the GIL counts as busy'}); threads: {threads}",
    )
    table.add_column("own %", justify="right")
    table.add_column("total %", justify="right")
    table.add_column("function (file)", overflow="fold")
    for function, own, inclusive in prof.top(top):
        table.add_row(f"{own / total:.1%}", f"{inclusive / total:.1%}", function)
    console.print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="sampling time")
    parser.add_argument("--password", default=None, help="seal the sleeve with this password")
    parser.add_argument("--native", action="store_true", help="py-spy --native: C frames too")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument(
        "--nonblocking",
        action="store_true",
        help="py-spy --nonblocking: do not pause the routers per sample (less perturbation, "
        "occasionally garbled stacks)",
    )
    parser.add_argument(
        "--gil",
        action="store_true",
        help="py-spy --gil: only samples holding the GIL (Python work, not waiting for it)",
    )
    parser.add_argument("--top", type=int, default=25, help="functions listed per router")
    parser.add_argument("--out", type=Path, default=None, help="default ./profile-TIMESTAMP")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/sleeve_profile.py needs root (network namespaces)", file=sys.stderr)
        return 2
    out: Path = args.out or Path(f"profile-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 120)  # a file or a pipe: keep function names whole
    raw = profile(args, out, console)
    for name, path in raw.items():
        report(name, path, args.top, args.rate, args.gil, console)
    console.print(
        f"files in {out}/: per router NAME.raw.txt (py-spy collapsed stacks: flamegraph.pl, "
        "inferno), NAME.speedscope.json (speedscope.app, one profile per thread), "
        "NAME.py-spy.log; iperf3.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
