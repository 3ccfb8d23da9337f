"""CPU time of a lab's router daemons and of the whole machine, read from /proc.

Shared by bench/throughput.py (CPU seconds per Gbit beside each row), bench/sleeve_profile.py
(which routers to sample), and bench/idle.py and bench/scale_lab.py (idle routers' CPU and RSS).
A router is found through its API socket: the kernel tells who is listening on a unix socket
(SO_PEERCRED), which names the daemon itself and not one of the short-lived helpers it forks,
whatever their command lines say.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuTime:
    """User and system CPU seconds (or any quantity split the same way, e.g. per Gbit)."""

    user: float
    system: float

    def __sub__(self, other: CpuTime) -> CpuTime:
        return CpuTime(self.user - other.user, self.system - other.system)

    def per(self, amount: float) -> CpuTime:
        return CpuTime(self.user / amount, self.system / amount)

    def __str__(self) -> str:
        return f"{self.user:.3f}/{self.system:.3f}"


def process_time(pid: int) -> CpuTime:
    """utime and stime of a process: /proc/PID/stat sums them over all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        # The command may hold spaces and parentheses: fields start after the last ')'.
        fields = f.read().rsplit(")", 1)[1].split()
    # proc(5): utime and stime are fields 14 and 15; fields[0] here is field 3 (state).
    return CpuTime(int(fields[11]) / TICKS, int(fields[12]) / TICKS)


@dataclass(frozen=True)
class Usage:
    """What a process has cost so far: CPU seconds (its waited-for children's too) and RSS."""

    cpu: float
    rss_kib: int


def usage(pid: int) -> Usage:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return Usage((utime + stime + cutime + cstime) / TICKS, rss)


def machine_time() -> CpuTime:
    """All CPUs together, from /proc/stat's `cpu` line.

    User counts nice time too (guest time is already inside user); system counts irq and
    softirq, where most of the kernel's packet work is accounted.
    """
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu "):
                user, nice, system, _idle, _iowait, irq, softirq = (
                    int(x) for x in line.split()[1:8]
                )
                return CpuTime((user + nice) / TICKS, (system + irq + softirq) / TICKS)
    raise RuntimeError("/proc/stat has no cpu line")


def router_pid(api_socket: str | Path) -> int:
    """The PID of the daemon listening on a router's API socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(api_socket))
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", creds)[0]
    return pid


@dataclass(frozen=True)
class Snapshot:
    """CPU time so far of some processes (by label) and of the machine, read at one moment."""

    processes: dict[str, CpuTime]
    machine: CpuTime

    @classmethod
    def take(cls, pids: dict[str, int]) -> Snapshot:
        return cls({label: process_time(pid) for label, pid in pids.items()}, machine_time())

    def __sub__(self, other: Snapshot) -> Snapshot:
        return Snapshot(
            {k: v - other.processes[k] for k, v in self.processes.items()},
            self.machine - other.machine,
        )
