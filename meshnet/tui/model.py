"""What the TUI shows, computed from a sequence of report snapshots — no Textual in here.

Snapshots carry counters (bytes sent to each peer so far, ...); the model turns the differences
between successive snapshots into rates and keeps a short history of them for sparklines. It also
turns each snapshot into rows for the tables, and the differences into events for the log.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshnet.api import events
from meshnet.constants import CONTAINER_IFNAME

HISTORY = 40
SPARK = "▁▂▃▄▅▆▇█"
MAX_EVENTS = 500
PEER_COLUMNS = ("nickname", "address", "state", "path", "RTT", "encrypted", "name")


@dataclass(frozen=True)
class PeerRow:
    name: str
    nickname: str
    address: str
    state: str
    path: str
    rtt: str
    encrypted: str
    local: bool = False

    def cells(self) -> tuple[str, ...]:
        """In PEER_COLUMNS order: the peer's name last, so 80 columns show what matters."""
        return (
            self.nickname,
            self.address,
            self.state,
            self.path,
            self.rtt,
            self.encrypted,
            self.name,
        )


@dataclass
class Flow:
    """One peer's or container's traffic: the latest counters and the rates between them."""

    key: str
    kind: str  # "peer" | "container"
    label: str
    tx_bytes: int = 0
    rx_bytes: int = 0
    tx_rate: float = 0.0
    rx_rate: float = 0.0
    tx_history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    rx_history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    seen: float = 0.0


@dataclass(frozen=True)
class Summary:
    name: str = ""
    nickname: str = ""
    peers: int = 0
    connections: int = 0
    encryption: bool = False
    version: str = ""
    nat: str | None = None  # the NAT in front of us as neighbours see it (None: not known)


class Model:
    """Feed snapshots in order with `update`; read `peers`, `flows`, `ipam`, `dns`, `events`."""

    def __init__(self, history: int = HISTORY) -> None:
        self.history = history
        self.summary = Summary()
        self.peers: list[PeerRow] = []
        self.flows: dict[str, Flow] = {}
        self.ipam: dict[str, Any] | None = None
        self.dns: dict[str, Any] | None = None
        self.events: deque[events.Event] = deque(maxlen=MAX_EVENTS)
        self.last: dict[str, Any] | None = None

    def update(self, snapshot: dict[str, Any]) -> list[events.Event]:
        """Take the next snapshot; returns the events it brought."""
        new_events = events.diff(self.last, snapshot)
        self.events.extend(new_events)
        router = snapshot.get("router", {})
        self.summary = Summary(
            name=router.get("name", ""),
            nickname=router.get("nickname", ""),
            peers=router.get("peers", 0),
            connections=router.get("connections", {}).get("established", 0),
            encryption=bool(router.get("encryption")),
            version=str(snapshot.get("version", "")),
            nat=((snapshot.get("dataplane") or {}).get("punch") or {}).get("nat"),
        )
        self.peers = peer_rows(snapshot)
        self._update_flows(snapshot)
        self.ipam = snapshot.get("ipam")
        self.dns = snapshot.get("dns")
        self.last = snapshot
        return new_events

    def reset_rates(self) -> None:
        """After a reconnect the daemon may be a new process: counters restart from zero."""
        self.last = None
        self.flows.clear()

    def _update_flows(self, snapshot: dict[str, Any]) -> None:
        now = float(snapshot.get("time", 0.0))
        before = float(self.last.get("time", 0.0)) if self.last is not None else None
        elapsed = now - before if before is not None else 0.0
        current = dict(flow_counters(snapshot))
        for key, (kind, label, tx, rx) in current.items():
            flow = self.flows.get(key)
            if flow is None:
                flow = Flow(key, kind, label, tx, rx)
                flow.tx_history = deque(maxlen=self.history)
                flow.rx_history = deque(maxlen=self.history)
                self.flows[key] = flow
            elif elapsed > 0:
                flow.tx_rate = rate(flow.tx_bytes, tx, elapsed)
                flow.rx_rate = rate(flow.rx_bytes, rx, elapsed)
                flow.tx_history.append(flow.tx_rate)
                flow.rx_history.append(flow.rx_rate)
            flow.label, flow.tx_bytes, flow.rx_bytes, flow.seen = label, tx, rx, now
        for key in [k for k in self.flows if k not in current]:
            del self.flows[key]

    def flow_rows(self) -> list[Flow]:
        return sorted(self.flows.values(), key=lambda f: (f.kind != "peer", f.label))


def rate(before: int, after: int, elapsed: float) -> float:
    """Bytes per second; a counter that went backwards (a restart) counts from zero."""
    delta = after - before if after >= before else after
    return delta / elapsed


def flow_counters(snapshot: dict[str, Any]) -> Iterable[tuple[str, tuple[str, str, int, int]]]:
    """(key, (kind, label, tx bytes, rx bytes)) for every peer and container with counters."""
    dataplane = snapshot.get("dataplane") or {}
    forwarding = dataplane.get("forwarding") or {}
    sent = forwarding.get("sent", {})
    received = forwarding.get("received", {})
    nicknames = {p["name"]: p["nickname"] for p in snapshot.get("peers", [])}
    for peer in sorted({*sent, *received}):
        tx = int(sent.get(peer, {}).get("bytes", 0))
        rx = int(received.get(peer, {}).get("bytes", 0))
        yield f"peer:{peer}", ("peer", nicknames.get(peer, peer), tx, rx)
    vxlan = (dataplane.get("fastdp") or {}).get("traffic")
    if vxlan:  # the kernel counts per device, not per peer
        yield "fastdp", ("peer", "fastdp (all peers)", vxlan["tx_bytes"], vxlan["rx_bytes"])
    for c in snapshot.get("containers", []):
        if "tx_bytes" not in c:
            continue
        label = (
            c["namespace"]
            if c.get("ifname") in (None, CONTAINER_IFNAME)
            else (f"{c['namespace']}/{c['ifname']}")
        )
        key = f"container:{c['namespace']}/{c.get('ifname')}"
        yield key, ("container", label, int(c["tx_bytes"]), int(c["rx_bytes"]))


def peer_rows(snapshot: dict[str, Any]) -> list[PeerRow]:
    router = snapshot.get("router", {})
    connections = {
        c["peer"]: c
        for c in snapshot.get("connections", [])
        if c.get("peer") and c.get("state") != "failed"
    }
    paths = (snapshot.get("dataplane") or {}).get("paths", {})
    rows = []
    for p in snapshot.get("peers", []):
        name = p["name"]
        conn = connections.get(name)
        data_path = (conn or {}).get("data_path") or {}
        if p.get("local"):
            state, path, address = "self", "-", ""
        else:
            # The host only: an inbound connection's port is the peer's ephemeral one. IPv6
            # without its brackets, which the table would take for markup.
            address = conn["address"].rsplit(":", 1)[0].strip("[]") if conn else ""
            state = conn["state"] if conn else ("unreachable" if not p.get("reachable") else "-")
            path = describe_path(p, paths.get(name))
        # The data plane's path is live; the connection's copy changes only with the path state.
        rtt = (paths.get(name) or {}).get("rtt_ms", data_path.get("rtt_ms"))
        encrypted = conn.get("encrypted") if conn else None
        if encrypted is None:
            encrypted = router.get("encryption") if p.get("reachable") else None
        rows.append(
            PeerRow(
                name=name,
                nickname=p["nickname"],
                address=address,
                state=state,
                path=path,
                rtt=f"{rtt:.2f} ms" if isinstance(rtt, int | float) else "",
                encrypted="" if encrypted is None else ("yes" if encrypted else "no"),
                local=bool(p.get("local")),
            )
        )
    return sorted(rows, key=lambda r: (not r.local, r.nickname))


@dataclass(frozen=True)
class TopologyNode:
    """A peer in the tree of routes from this host: its children are reached through it."""

    nickname: str
    detail: str
    children: tuple[TopologyNode, ...] = ()


def route_tree(snapshot: dict[str, Any]) -> tuple[TopologyNode | None, list[str]]:
    """The shortest-path tree from this host (each peer under its last hop), and the
    nicknames of unreachable peers. A peer's detail lists its links in the topology."""
    peers = snapshot.get("peers", [])
    nick = {p["name"]: p["nickname"] for p in peers}
    rows = {r.name: r for r in peer_rows(snapshot)}
    children: dict[str, list[str]] = {}
    root = None
    unreachable = []
    for p in sorted(peers, key=lambda p: p["nickname"]):
        if p.get("local"):
            root = p["nickname"]
        elif not p.get("reachable"):
            unreachable.append(p["nickname"])
        else:
            parent = p["via"][-1] if p.get("via") else None
            children.setdefault(parent or "", []).append(p["nickname"])
    if root is None:
        return None, unreachable
    by_nick = {p["nickname"]: p for p in peers}

    def detail(nickname: str) -> str:
        p = by_nick[nickname]
        links = sorted(
            nick.get(c["peer"], c["nickname"]) for c in p.get("connections", []) if c["established"]
        )
        row = rows.get(p["name"])
        parts = [] if row is None or row.local else [row.path, row.rtt]
        parts.append("links: " + (" ".join(links) or "none"))
        return " · ".join(x for x in parts if x)

    def node(nickname: str, depth: int) -> TopologyNode:
        kids = children.get(nickname, []) if depth < len(peers) else []  # no cycles, ever
        return TopologyNode(nickname, detail(nickname), tuple(node(k, depth + 1) for k in kids))

    top = TopologyNode(root, detail(root), tuple(node(k, 1) for k in children.get("", [])))
    return top, unreachable


def describe_path(peer: dict[str, Any], path: dict[str, Any] | None) -> str:
    """sleeve / fastdp / relayed via X / unreachable."""
    if not peer.get("reachable"):
        return "unreachable"
    via = peer.get("via") or []
    if via:
        return "relayed via " + ", ".join(via)
    if path is None:
        return "direct"
    state = path.get("state", "")
    kind = path.get("kind", "sleeve") + (", punched" if path.get("punched") else "")
    return kind if state == "established" else f"{kind} ({state})"


def sparkline(values: Sequence[float], width: int) -> str:
    """The last ``width`` values as block characters, scaled to their own maximum."""
    tail = list(values)[-width:] if width > 0 else []
    top = max(tail, default=0.0)
    if top <= 0:
        return SPARK[0] * len(tail)
    last = len(SPARK) - 1
    return "".join(SPARK[min(last, round(v / top * last))] for v in tail)


def format_rate(bytes_per_second: float) -> str:
    """Bits per second, as network people count them."""
    bits = bytes_per_second * 8
    for unit in ("bit/s", "kbit/s", "Mbit/s", "Gbit/s"):
        if bits < 1000:
            return f"{bits:.0f} {unit}" if unit == "bit/s" else f"{bits:.1f} {unit}"
        bits /= 1000
    return f"{bits:.1f} Tbit/s"


def format_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def matches(cells: Iterable[str], text: str) -> bool:
    """The filter: every word of ``text`` appears in some cell (case-insensitive)."""
    words = text.lower().split()
    haystack = " ".join(cells).lower()
    return all(w in haystack for w in words)
