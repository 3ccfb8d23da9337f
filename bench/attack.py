"""What a hostile underlay costs a router: legitimate traffic and memory during each attack.

Builds 2-host lab meshes (one container per host) and attaches an attacker namespace to h1 by a
veth of its own (172.31.254.0/24, routed to h1's underlay address, so the attacker sits one hop
from h1 like a stranger on its network). Every row runs single-stream iperf3 TCP and ping
(-i 0.05) between the two legitimate containers for --seconds while the attack runs, and reads
h1's router RSS (/proc/PID/status VmRSS) before and at the end of the window, and the drop,
refusal and error counters of h1's `/status` and `/status/dataplane` (the deltas; "-" when the
router counts nothing of the kind). The attacks (issue 17), all at h1's underlay address:

  vxlan      VXLAN frames (VNI 6784) at UDP 6784: broadcast ARP and unicast frames to h1's
             container MAC; "reached" counts those tcpdump saw inside h1's container
  sleeve     well-formed unsealed SEGMENT datagrams at UDP 6783, each from a new made-up
             origin, claiming h2 as their hop: once from the attacker's own address, once
             spoofing h2's underlay address (what nothing but a password prevents)
  handshake  TCP connections to 6783 that run meshnet's own client handshake with a wrong
             password (garbage after the magic, if the handshake's API cannot be driven), close,
             and start over, many in parallel
  preauth    200 idle sockets and a slow-drip client (1 byte/s) from one address and one idle
             socket from each of 50 more, reopened whenever the router closes them; a third,
             legitimate router then launches on its own link to h1 and the row says whether and
             when h1 shows it established ("join"); the baseline row shows the same undisturbed

Labs: "fastdp" (no password), "sleeve" (no password, --no-fastdp) and "encrypted" (a password,
fastdp allowed); only those the chosen attacks need are built. Attacks by a password holder
(forged gossip, the DNS store, IPAM donations) need a peer of the mesh and are not in this
bench: tests/net covers them. UDP floods are paced to --rate datagrams/s in total (the machine
must stay able to measure the router, not drown itself). Every lab, namespace and process is
removed whatever happens. Needs root, iperf3, ping and tcpdump. Not a test: figures depend on
the machine; compare a row with its lab's baseline.

    python bench/attack.py [--seconds 8] [--only vxlan,sleeve,handshake,preauth] [--rate 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import ipaddress
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from meshnet.api.client import ApiClient
from meshnet.constants import CONTROL_PORT, FASTDP_PORT
from meshnet.dataplane.fastdp.core import VNI
from meshnet.dataplane.kernel import netlink
from meshnet.dataplane.sleeve import vnet as vn
from meshnet.dataplane.sleeve import wire
from meshnet.gossip import handshake as hs
from meshnet.gossip.framing import KEY_SIZE
from meshnet.gossip.identity import Identity, parse_peer_name
from meshnet.lab import lab as lablib
from meshnet.lab import topology

PASSWORD = "bench attack password"
ATTACK_NET = ipaddress.IPv4Network("172.31.254.0/24")  # attacker <-> h1
JOIN_NET = ipaddress.IPv4Network("172.31.253.0/24")  # the legitimate joiner <-> h1
FAKE_MAC = bytes.fromhex("02bad0000001")  # the attacker's frames' source, for tcpdump
FAKE_IP = "192.0.2.66"  # TEST-NET-1: outside the overlay, as a stranger's frames would be
IDLE_SOCKETS, SOURCES = 200, 50
JOIN_TIMEOUT = 10.0
COUNTER_WORDS = re.compile(
    r"drop|refus|reject|mismatch|timeout|limit|error|unknown|evict|expire|budget|filter|"
    r"denied|throttl|spoof|bad_|invalid|overflow|stranger"
)


# --- the attacker's side: workers run inside the attacker namespace -----------------------------


class _Stop:
    """Set by SIGTERM: the parent ends a worker when its window is over."""

    def __init__(self) -> None:
        self.stopped = False
        signal.signal(signal.SIGTERM, self._set)

    def _set(self, *_: Any) -> None:
        self.stopped = True


def _ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def _ipv4(src: str, dst: str, protocol: int, payload: bytes) -> bytes:
    head = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        0,
        0x4000,
        64,
        protocol,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return head[:10] + struct.pack("!H", _ipv4_checksum(head)) + head[12:] + payload


def vxlan_frames(container_mac: str, container_ip: str) -> list[bytes]:
    """VXLAN datagrams: a broadcast ARP who-has for the container, and a unicast UDP frame to it."""
    vxlan = struct.pack("!B3xI", 0x08, VNI << 8)
    arp = struct.pack(
        "!HHBBH6s4s6s4s",
        1,
        0x0800,
        6,
        4,
        1,
        FAKE_MAC,
        socket.inet_aton(FAKE_IP),
        bytes(6),
        socket.inet_aton(container_ip),
    )
    udp = struct.pack("!HHHH", 9, 9, 8 + 32, 0) + bytes(32)
    mac = bytes.fromhex(container_mac.replace(":", ""))
    return [
        vxlan + b"\xff" * 6 + FAKE_MAC + b"\x08\x06" + arp,
        vxlan + mac + FAKE_MAC + b"\x08\x00" + _ipv4(FAKE_IP, container_ip, 17, udp),
    ]


def sleeve_segment() -> bytes:
    """The first SEGMENT body of a 2-segment TCP super-frame: it leaves a super-frame pending."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1, 1, 5 << 4, 0x18, 65535, 0, 0)
    payload = bytes(1000)
    frame = FAKE_MAC + FAKE_MAC + b"\x08\x00" + _ipv4(FAKE_IP, FAKE_IP, 6, tcp + payload)
    header = vn.VnetHeader(
        flags=vn.VNET_F_NEEDS_CSUM,
        gso_type=vn.GSO_TCPV4,
        hdr_len=54,
        gso_size=500,
        csum_start=34,
        csum_offset=vn.TCP_CSUM_OFFSET,
    )
    return wire.segment_bodies(1, header, frame)[0]


def _paced_flood(
    sock: socket.socket, target: tuple[str, int], next_datagram: Callable[[], bytes], rate: float
) -> dict[str, int]:
    """Send until SIGTERM at no more than ``rate`` datagrams/s (bursts of 64)."""
    stop = _Stop()
    sent = errors = 0
    started = time.monotonic()
    while not stop.stopped:
        allowed = int((time.monotonic() - started) * rate) + 64 - sent
        if allowed <= 0:
            time.sleep(0.001)
            continue
        for _ in range(min(allowed, 256)):
            try:
                sock.sendto(next_datagram(), target)
                sent += 1
            except OSError:  # ENOBUFS and friends: the attacker's own queue is full
                errors += 1
                sent += 1  # paced as sent, or the loop would spin on the error
    return {"sent": sent - errors, "send_errors": errors}


def worker_vxlan(spec: dict[str, Any]) -> dict[str, int]:
    frames = vxlan_frames(spec["container_mac"], spec["container_ip"])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    count = iter(range(1 << 62))
    return _paced_flood(
        sock,
        (spec["target"], FASTDP_PORT),
        lambda: frames[next(count) & 1],
        spec["rate"],
    )


def worker_sleeve(spec: dict[str, Any]) -> dict[str, int]:
    body = sleeve_segment()
    destination, hop = parse_peer_name(spec["h1"]), parse_peer_name(spec["h2"])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((spec["source"], 0))
    origins = iter(range(0x0200_0000_0000, 1 << 48))  # locally administered, made up
    sequence = iter(range(1 << 62))

    def datagram() -> bytes:
        header = wire.DatagramHeader(
            wire.Kind.SEGMENT, 0, wire.MAX_TTL, next(origins), destination, hop, next(sequence)
        )
        return bytes(wire.encode_datagram(header, body, None))

    return _paced_flood(sock, (spec["target"], CONTROL_PORT), datagram, spec["rate"])


def client_handshake() -> Any | None:
    """meshnet's own Handshake as a client with a wrong password, built from whatever the
    constructor asks for today; None when it asks for something this bench does not know."""
    known: dict[str, Any] = {
        "local": Identity(int.from_bytes(os.urandom(6)), "stranger", int.from_bytes(os.urandom(7))),
        "features": {},
        "rng": os.urandom,
        "stretched_key": os.urandom(KEY_SIZE),  # a wrong password's key looks like this
        "password": b"not the password",
    }
    kwargs = {}
    for name, parameter in inspect.signature(hs.Handshake).parameters.items():
        if name in known:
            kwargs[name] = known[name]
        elif parameter.default is inspect.Parameter.empty:
            return None
    try:
        return hs.Handshake(**kwargs)
    except (TypeError, ValueError):
        return None


async def _one_handshake(target: str, stats: Counter[str]) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(target, CONTROL_PORT), 3)
    except (OSError, TimeoutError):
        stats["connect_failed"] += 1
        await asyncio.sleep(0.05)
        return
    stats["attempts"] += 1
    handshake = client_handshake()
    stats["real_handshake" if handshake is not None else "garbage_hello"] += 1
    try:
        writer.write(
            handshake.initial_bytes() if handshake is not None else hs.MAGIC + os.urandom(64)
        )
        failed = False
        while True:
            data = await asyncio.wait_for(reader.read(65536), 3)
            if not data:
                stats["closed_by_router"] += 1
                break
            if handshake is None or failed:
                continue
            try:
                reply = handshake.receive_data(data)
            except Exception:  # the router's answer refutes our guess: say so, read the close
                reply, failed = handshake.unsent_bytes(), True
                stats["refused"] += 1
            if reply:
                writer.write(reply)
            if handshake.result is not None:
                stats["accepted"] += 1  # a wrong password must never get here
                break
    except (OSError, TimeoutError):
        stats["timeouts"] += 1
    finally:
        writer.close()
        with suppress(OSError):
            await writer.wait_closed()


def worker_handshake(spec: dict[str, Any]) -> dict[str, int]:
    async def main() -> Counter[str]:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        stats: Counter[str] = Counter()

        async def loop() -> None:
            while not stop.is_set():
                await _one_handshake(spec["target"], stats)

        tasks = [asyncio.create_task(loop()) for _ in range(spec["parallel"])]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return stats

    return dict(asyncio.run(main()))


def worker_preauth(spec: dict[str, Any]) -> dict[str, int]:
    """Hold sockets open before any handshake; reopen each one the router closes."""

    async def main() -> Counter[str]:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        stats: Counter[str] = Counter()

        async def hold(source: str, drip: bool) -> None:
            while not stop.is_set():
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(
                            spec["target"], CONTROL_PORT, local_addr=(source, 0)
                        ),
                        3,
                    )
                except (OSError, TimeoutError):
                    stats["connect_failed"] += 1
                    await asyncio.sleep(0.2)
                    continue
                stats["connections"] += 1
                stats["open"] += 1
                try:
                    for byte in hs.MAGIC * 100 if drip else ():
                        writer.write(bytes([byte]))
                        if await _closed_within(reader, 1.0):
                            break
                    else:
                        await reader.read()  # until the router closes it (or we stop)
                    stats["closed_by_router"] += 1
                except OSError:
                    stats["closed_by_router"] += 1
                finally:
                    stats["open"] -= 1
                    writer.close()
                await asyncio.sleep(0.1)

        sources = spec["sources"]
        tasks = [asyncio.create_task(hold(sources[0], False)) for _ in range(IDLE_SOCKETS)]
        tasks.append(asyncio.create_task(hold(sources[0], True)))
        tasks += [asyncio.create_task(hold(s, False)) for s in sources[1 : SOURCES + 1]]
        await stop.wait()
        open_at_end = stats["open"]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stats["open"] = open_at_end
        return stats

    return dict(asyncio.run(main()))


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(65536), seconds) == b""
    except TimeoutError:
        return False


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, int]]] = {
    "vxlan": worker_vxlan,
    "sleeve": worker_sleeve,
    "handshake": worker_handshake,
    "preauth": worker_preauth,
}


# --- the lab side ---------------------------------------------------------------------------------


def sh(*args: str, check: bool = True) -> str:
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def in_ns(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *args]


@dataclass(frozen=True)
class Lab:
    kind: str  # fastdp, sleeve, encrypted
    name: str
    path: str  # the data path containers use, for the table
    h1: dict[str, Any]
    h2: dict[str, Any]
    c1: dict[str, Any]
    c2: dict[str, Any]
    attacker: str  # namespace
    attacker_sources: list[str]
    h1_pid: int

    @property
    def api(self) -> ApiClient:
        return ApiClient(lablib.host_api_socket(self.h1["dir"]), timeout=5)

    def ip(self, entry: dict[str, Any]) -> str:
        return str(entry["addresses"][0]).split("/")[0]


@dataclass
class Row:
    attack: str
    lab: Lab
    loss: float | None
    gbits: float | None
    rss_before: float
    rss_after: float
    sent: str
    counters: str
    note: str = ""
    baseline: float | None = field(default=None)


def router_pid(namespace: str) -> int:
    """The `meshnet launch` daemon of a namespace."""
    for pid in netlink.namespace_pids(namespace):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"meshnet" in argv and b"launch" in argv:
            return pid
    raise RuntimeError(f"no router in {namespace}")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def udp_receive_drops(pid: int) -> int:
    """UDP datagrams h1's kernel dropped for a full socket buffer (the router fell behind)."""
    lines = [line.split() for line in Path(f"/proc/{pid}/net/snmp").read_text().splitlines()]
    udp = [fields for fields in lines if fields[0] == "Udp:"]
    return int(dict(zip(udp[0], udp[1], strict=True)).get("RcvbufErrors", 0))


def counters(lab: Lab) -> dict[str, float]:
    """Every numeric leaf of h1's status and data plane status, by dotted path."""
    out: dict[str, float] = {}

    def walk(obj: Any, path: str) -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(obj, int | float) and not isinstance(obj, bool):
            out[path] = obj

    for route in ("/status", "/status/dataplane"):
        with suppress(Exception):  # a router too busy to answer: no counters, not no row
            walk(lab.api.get(route), route.removeprefix("/status").strip("/") or "router")
    return out


def counter_deltas(before: dict[str, float], after: dict[str, float]) -> str:
    """The drop/refusal/error counters that moved, largest first; "-" when none did."""
    moved = [
        (after[k] - before.get(k, 0), k)
        for k in after
        if COUNTER_WORDS.search(k.rsplit(".", 1)[-1]) and after[k] != before.get(k, 0)
    ]
    moved.sort(reverse=True)
    return ", ".join(f"{k.rsplit('.', 1)[-1]} +{d:.0f}" for d, k in moved[:3]) or "-"


def _wait_for_fastdp(lab_name: str) -> bool:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        paths = [
            p["kind"]
            for h in lablib.status(lab_name)["hosts"]
            for p in ApiClient(lablib.host_api_socket(h["dir"]))
            .get("/status/dataplane")["paths"]
            .values()
        ]
        if paths and all(kind == "fastdp" for kind in paths):
            return True
        time.sleep(0.2)
    return False


def _link_to_h1(h1_ns: str, other: str, h1_if: str, net: ipaddress.IPv4Network) -> None:
    """A veth from namespace `other` (eth0, .2) to h1 (`h1_if`, .1), routed to the underlay."""
    sh("ip", "netns", "add", other)
    sh("ip", "-n", other, "link", "set", "lo", "up")
    sh(
        "ip",
        "-n",
        h1_ns,
        "link",
        "add",
        h1_if,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        other,
    )
    sh("ip", "-n", h1_ns, "addr", "add", f"{net[1]}/{net.prefixlen}", "dev", h1_if)
    sh("ip", "-n", h1_ns, "link", "set", h1_if, "up")
    sh("ip", "-n", other, "addr", "add", f"{net[2]}/{net.prefixlen}", "dev", "eth0")
    sh("ip", "-n", other, "link", "set", "eth0", "up")
    sh(
        "ip",
        "-n",
        other,
        "route",
        "add",
        str(topology.UNDERLAY_RANGE),
        "via",
        str(net[1]),
        "src",
        str(net[2]),
    )


@contextmanager
def mesh_lab(kind: str, console: Console) -> Iterator[Lab]:
    name = f"ba{uuid.uuid4().hex[:6]}"
    attacker = lablib.namespace_prefix(name) + "atk"
    console.print(f"[dim]{kind}: building lab {name}[/]")
    try:
        lablib.up(
            name,
            topology.builtin("full", 2, 1),
            password=PASSWORD if kind == "encrypted" else None,
            fastdp=kind != "sleeve",
        )
        if kind == "fastdp" and not _wait_for_fastdp(name):
            raise RuntimeError("fastdp never came up")
        state = lablib.status(name)
        hosts = {h["name"]: h for h in state["hosts"]}
        conts = {c["host"]: c for c in state["containers"]}
        used = [
            ipaddress.ip_interface(a).network for link in state["links"] for a in link["addresses"]
        ]
        if any(n.overlaps(ATTACK_NET) or n.overlaps(JOIN_NET) for n in used):
            raise RuntimeError("the lab's underlay uses the attacker's subnet")
        _link_to_h1(hosts["h1"]["namespace"], attacker, "atk", ATTACK_NET)
        sources = [str(ATTACK_NET[2])] + [str(ATTACK_NET[10 + i]) for i in range(SOURCES)]
        for source in sources[1:]:
            sh(
                "ip",
                "-n",
                attacker,
                "addr",
                "add",
                f"{source}/{ATTACK_NET.prefixlen}",
                "dev",
                "eth0",
            )
        # h2's underlay address too, unrouted: only the spoofing sleeve flood sends from it.
        h2_address = hosts["h2"]["addresses"][0]
        sh("ip", "-n", attacker, "addr", "add", f"{h2_address}/32", "dev", "eth0")
        lab = Lab(
            kind,
            name,
            {"fastdp": "fastdp", "sleeve": "sleeve", "encrypted": "sleeve, password"}[kind],
            hosts["h1"],
            hosts["h2"],
            conts["h1"],
            conts["h2"],
            attacker,
            sources,
            router_pid(hosts["h1"]["namespace"]),
        )
        _wait_for_ping(lab)
        yield lab
    finally:
        sh("ip", "netns", "del", attacker, check=False)
        if (lablib.lab_root() / name).exists():
            lablib.down(name)


def _wait_for_ping(lab: Lab) -> None:
    deadline = time.monotonic() + 20
    while subprocess.run(
        in_ns(lab.c1["namespace"], "ping", "-c1", "-W1", lab.ip(lab.c2)), capture_output=True
    ).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{lab.kind}: no connectivity between the containers")


def measure_traffic(lab: Lab, seconds: int) -> tuple[float | None, float | None, str]:
    """Ping loss (%) and single-stream iperf3 Gbit/s between the containers, at once, and a
    note when iperf3 could not finish (0 Gbit/s then: its connection stalled)."""
    target = lab.ip(lab.c2)
    server = subprocess.Popen(
        in_ns(lab.c2["namespace"], "iperf3", "-s", "-1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    note = ""
    try:
        time.sleep(0.3)
        ping = subprocess.Popen(
            in_ns(lab.c1["namespace"], "ping", "-q", "-i", "0.05", "-w", str(seconds), target),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        client = subprocess.Popen(
            in_ns(
                lab.c1["namespace"],
                *("iperf3", "-c", target, "-t", str(seconds), "-J", "--connect-timeout", "3000"),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, _ = client.communicate(timeout=seconds + 10)
        except subprocess.TimeoutExpired:
            client.kill()
            out, _ = client.communicate()
            out, note = "", "iperf3 stalled"
        ping_out, _ = ping.communicate(timeout=seconds + 10)
    finally:
        server.kill()
        server.wait()
    m = re.search(r"([\d.]+)% packet loss", ping_out)
    loss = float(m.group(1)) if m else None
    gbits: float | None = 0.0 if note else None
    try:
        gbits = json.loads(out)["end"]["sum_sent"]["bits_per_second"] / 1e9
    except (ValueError, KeyError):
        with suppress(ValueError, KeyError):
            note = "iperf3: " + str(json.loads(out)["error"]).removeprefix("error - ")[:40]
            gbits = 0.0  # it could not even connect
    return loss, gbits, note


@contextmanager
def attack_workers(lab: Lab, kind: str, specs: list[dict[str, Any]]) -> Iterator[Counter[str]]:
    """Worker processes in the attacker namespace for the block; their totals land in the
    yielded Counter once the block ends (SIGTERM, then their JSON on stdout)."""
    procs = [
        subprocess.Popen(
            in_ns(lab.attacker, sys.executable, __file__, "--worker", kind, json.dumps(spec)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for spec in specs
    ]
    totals: Counter[str] = Counter()
    try:
        time.sleep(1.0)  # the attack under way before the measurement starts
        yield totals
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=15)
                totals.update(json.loads(out or "{}"))
                if proc.returncode and err.strip():
                    totals[f"worker failed: {err.strip().splitlines()[-1][:60]}"] += 1
            except (subprocess.TimeoutExpired, ValueError):
                proc.kill()
                proc.wait()
                totals["worker lost"] += 1


@contextmanager
def capture_count(namespace: str, ifname: str) -> Iterator[list[int]]:
    """How many frames from the attacker's MAC tcpdump sees on a container's interface."""
    mac = ":".join(f"{b:02x}" for b in FAKE_MAC)
    proc = subprocess.Popen(
        in_ns(
            namespace, "tcpdump", "-i", ifname, "-nn", "-p", "-w", "/dev/null", "ether", "src", mac
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    result: list[int] = []
    try:
        time.sleep(1.0)  # tcpdump's filter in place
        yield result
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=5)
            m = re.search(r"(\d+) packets? captured", err)
            result.append(int(m.group(1)) if m else -1)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            result.append(-1)


def join_third_router(lab: Lab) -> str:
    """Launch a legitimate router on its own link to h1; how long until h1 shows it
    established, or "no" after JOIN_TIMEOUT."""
    namespace = lablib.namespace_prefix(lab.name) + "join"
    with tempfile.TemporaryDirectory(prefix="meshnet-bench-join-") as directory:
        try:
            _link_to_h1(lab.h1["namespace"], namespace, "join", JOIN_NET)
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("MESHNET_")},
                **lablib.host_environment({"name": "joiner", "dir": directory}),
            }
            if lab.kind == "encrypted":
                env["MESHNET_PASSWORD"] = PASSWORD
            launch = [sys.executable, "-m", "meshnet", "launch", "--nickname", "joiner"]
            if lab.kind == "sleeve":
                launch.append("--no-fastdp")
            launch.append(str(JOIN_NET[1]))
            started = subprocess.run(
                in_ns(namespace, *launch), env=env, capture_output=True, text=True, timeout=60
            )
            if started.returncode:
                return f"joiner failed: {started.stderr.strip()[:40]}"
            t0 = time.monotonic()
            while time.monotonic() - t0 < JOIN_TIMEOUT:
                with suppress(Exception):
                    if any(
                        c["nickname"] == "joiner" and c["state"] == "established"
                        for c in lab.api.get("/status/connections")
                    ):
                        return f"{time.monotonic() - t0:.1f} s"
                time.sleep(0.1)
            return f"no ({JOIN_TIMEOUT:.0f} s)"
        finally:
            pids = (
                netlink.namespace_pids(namespace)
                if Path(netlink.NETNS_DIR / namespace).exists()
                else []
            )
            for pid in pids:
                with suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            sh("ip", "netns", "del", namespace, check=False)
            sh("ip", "-n", lab.h1["namespace"], "link", "del", "join", check=False)


def run_row(
    lab: Lab,
    attack: str,
    seconds: int,
    worker: str | None,
    specs: list[dict[str, Any]],
    *,
    capture: bool = False,
    join: bool = False,
) -> Row:
    rss_before, before = rss_mib(lab.h1_pid), counters(lab)
    udp_drops = udp_receive_drops(lab.h1_pid)
    notes: list[str] = []
    with (
        capture_count(lab.c1["namespace"], lab.c1["interface"])
        if capture
        else _nothing() as reached,
        attack_workers(lab, worker, specs) if worker else _nothing() as totals,
    ):
        loss, gbits, traffic_note = measure_traffic(lab, seconds)
        if traffic_note:
            notes.append(traffic_note)
        if join:
            notes.append(f"join {join_third_router(lab)}")
        rss_after = rss_mib(lab.h1_pid) if Path(f"/proc/{lab.h1_pid}").exists() else float("nan")
        after = counters(lab)
        udp_drops = udp_receive_drops(lab.h1_pid) - udp_drops
        if udp_drops:
            notes.append(f"h1 UDP rcvbuf drops {udp_drops}")
        if worker == "preauth":
            with suppress(Exception):
                held = lab.api.get("/status")["connections"]
                notes.append("h1 connections " + ", ".join(f"{k} {v}" for k, v in held.items()))
    if not Path(f"/proc/{lab.h1_pid}").exists():
        notes.append("h1's ROUTER DIED")
    if reached is not None:
        notes.insert(0, f"reached c1 {reached[0]}")
    sent = "-"
    if totals is not None:
        sent = (
            f"{totals.pop('sent', 0) or totals.pop('attempts', 0) or totals.pop('connections', 0)}"
        )
        extra = {k: v for k, v in totals.items() if v and k not in ("send_errors",)}
        notes += [f"{k} {v}" for k, v in sorted(extra.items())]
    return Row(
        attack,
        lab,
        loss,
        gbits,
        rss_before,
        rss_after,
        sent,
        counter_deltas(before, after),
        "; ".join(notes),
    )


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def vxlan_specs(lab: Lab, rate: float, workers: int) -> list[dict[str, Any]]:
    return [
        {
            "target": lab.h1["addresses"][0],
            "container_mac": lab.c1["mac"],
            "container_ip": lab.ip(lab.c1),
            "rate": rate / workers,
        }
    ] * workers


def sleeve_specs(lab: Lab, rate: float, workers: int, *, spoof: bool) -> list[dict[str, Any]]:
    return [
        {
            "target": lab.h1["addresses"][0],
            "source": lab.h2["addresses"][0] if spoof else lab.attacker_sources[0],
            "h1": lab.h1["router"]["name"],
            "h2": lab.h2["router"]["name"],
            "rate": rate / workers,
        }
    ] * workers


# What each attack runs in which lab: (lab, row label, worker, specs, capture, join).
Plan = tuple[str, str, str, Callable[[Lab, float, int], list[dict[str, Any]]], bool, bool]
PLANS: dict[str, list[Plan]] = {
    "vxlan": [
        ("fastdp", "vxlan spray", "vxlan", vxlan_specs, True, False),
        ("encrypted", "vxlan spray", "vxlan", vxlan_specs, True, False),
    ],
    "sleeve": [
        (
            "sleeve",
            "sleeve flood, stranger's address",
            "sleeve",
            lambda lab, r, w: sleeve_specs(lab, r, w, spoof=False),
            False,
            False,
        ),
        (
            "sleeve",
            "sleeve flood, h2's address spoofed",
            "sleeve",
            lambda lab, r, w: sleeve_specs(lab, r, w, spoof=True),
            False,
            False,
        ),
    ],
    "handshake": [
        (
            "encrypted",
            "handshake storm, wrong password",
            "handshake",
            lambda lab, r, w: [{"target": lab.h1["addresses"][0], "parallel": 32}],
            False,
            False,
        ),
    ],
    "preauth": [
        (
            "encrypted",
            "pre-auth socket flood",
            "preauth",
            lambda lab, r, w: [{"target": lab.h1["addresses"][0], "sources": lab.attacker_sources}],
            False,
            True,
        ),
    ],
}
LAB_ORDER = ("fastdp", "sleeve", "encrypted")


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":  # inside the attacker namespace
        print(json.dumps(WORKERS[sys.argv[2]](json.loads(sys.argv[3]))), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8, help="measuring window per row")
    parser.add_argument(
        "--only", default=",".join(PLANS), help="comma-separated: " + ",".join(PLANS)
    )
    parser.add_argument("--rate", type=float, default=20000, help="UDP floods: datagrams/s in all")
    parser.add_argument("--workers", type=int, default=1, help="UDP floods: sender processes")
    args = parser.parse_args()
    lablib.require_root()
    wanted = [a.strip() for a in args.only.split(",") if a.strip()]
    unknown = [a for a in wanted if a not in PLANS]
    if unknown:
        parser.error(f"unknown attack {', '.join(unknown)}: use {', '.join(PLANS)}")
    console = Console(width=max(Console().width, 200))
    rows: list[Row] = []
    for kind in LAB_ORDER:
        plans = [p for a in wanted for p in PLANS[a] if p[0] == kind]
        if not plans:
            continue
        # The pre-auth row joins a third router: so does the baseline, for comparison.
        baseline_join = any(p[5] for p in plans)
        with mesh_lab(kind, console) as lab:
            console.print(f"[dim]{kind}: baseline[/]")
            base = run_row(lab, "baseline, no attack", args.seconds, None, [], join=baseline_join)
            rows.append(base)
            for _, label, worker, specs, capture, join in plans:
                console.print(f"[dim]{kind}: {label}[/]")
                row = run_row(
                    lab,
                    label,
                    args.seconds,
                    worker,
                    specs(lab, args.rate, max(1, args.workers)),
                    capture=capture,
                    join=join,
                )
                row.baseline = base.gbits
                rows.append(row)
    table = Table(
        title=f"Attacks on h1 ({args.seconds} s each; UDP floods paced to {args.rate:.0f}/s; "
        f"{os.cpu_count()} cores)"
    )
    numeric = ("ping loss %", "iperf3 Gbit/s", "x baseline", "h1 RSS MiB before -> after", "sent")
    for column in ("attack", "data path", *numeric, "h1 drop/refusal counters, delta", "note"):
        table.add_column(column, justify="right" if column in numeric else "left", overflow="fold")
    for r in rows:
        table.add_row(
            r.attack,
            r.lab.path,
            f"{r.loss:.1f}" if r.loss is not None else "-",
            f"{r.gbits:.2f}" if r.gbits is not None else "-",
            f"{r.gbits / r.baseline:.2f}" if r.gbits is not None and r.baseline else "",
            f"{r.rss_before:.1f} -> {r.rss_after:.1f}",
            r.sent,
            r.counters,
            r.note,
        )
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
