"""Prometheus metrics, read from the live state at scrape time.

Nothing here counts anything: the router, the data plane, IPAM and DNS already keep their
statistics, and a collector turns them into metric families when Prometheus asks. So a metric
can never drift from what `meshnet status` shows, and no code path has to remember to bump one.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_network
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshnet.api.report import gossip_statistics

if TYPE_CHECKING:
    from meshnet.api.report import Sources

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_DIRECTIONS = ("sent", "received", "relayed")
_CONNECTION_STATES = ("connecting", "handshaking", "established", "failed")


class MeshnetCollector(Collector):
    """Every meshnet metric, from ``sources`` (the API app: router, data plane, IPAM, DNS)."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        router = self.sources.router
        status = router.status()
        yield from router_metrics(status, router.connections(), gossip_statistics(router))
        dataplane = self.sources.dataplane
        if dataplane is not None and dataplane.forwarder is not None:
            yield from dataplane_metrics(dataplane.status(), ourselves=status["name"])
        ipam = getattr(self.sources, "ipam", None)
        if ipam is not None:
            yield from ipam_metrics(ipam.status())
        dns = getattr(self.sources, "dns", None)
        if dns is not None:
            yield from dns_metrics(dns.status())


def router_metrics(
    status: dict[str, Any], connections: list[dict[str, Any]], gossip: dict[str, Any]
) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "meshnet_router_info", "This router's identity.", labels=["name", "nickname"]
    )
    info.add_metric([status["name"], status["nickname"]], 1)
    yield info
    yield GaugeMetricFamily(
        "meshnet_peers", "Peers in the topology, ourselves included.", value=status["peers"]
    )
    yield GaugeMetricFamily(
        "meshnet_encryption_enabled",
        "1 if control and data traffic are encrypted (a password is set).",
        value=1 if status["encryption"] else 0,
    )
    states = GaugeMetricFamily(
        "meshnet_connections", "Connections by state (failed: recent failures).", labels=["state"]
    )
    counts = dict.fromkeys(_CONNECTION_STATES, 0)
    for c in connections:
        counts[c["state"]] = counts.get(c["state"], 0) + 1
    for state, n in sorted(counts.items()):
        states.add_metric([state], n)
    yield states
    rtt = GaugeMetricFamily(
        "meshnet_peer_rtt_seconds", "Round-trip time of the UDP path.", labels=["peer", "nickname"]
    )
    for c in connections:
        path = c.get("data_path") or {}
        if c["state"] == "established" and path.get("rtt_ms") is not None:
            rtt.add_metric([c["peer"], c["nickname"]], path["rtt_ms"] / 1000)
    yield rtt
    fastdp = GaugeMetricFamily(
        "meshnet_peer_fastdp",
        "1 if this peer's traffic to a neighbour goes over kernel VXLAN, 0 over the sleeve.",
        labels=["peer", "nickname"],
    )
    for c in connections:
        path = c.get("data_path") or {}
        if c["state"] == "established" and "kind" in path:
            fastdp.add_metric([c["peer"], c["nickname"]], int(path["kind"] == "fastdp"))
    yield fastdp
    yield CounterMetricFamily(
        "meshnet_connection_terminations",
        "Established connections that ended (failed, timed out, replaced or closed).",
        value=status.get("counters", {}).get("connections_terminated", 0),
    )
    events = CounterMetricFamily(
        "meshnet_router_events", "Router events (dials failed, handshakes, ...).", labels=["event"]
    )
    for event, n in sorted(status.get("counters", {}).items()):
        events.add_metric([event], n)
    yield events
    wire = CounterMetricFamily(
        "meshnet_control_bytes",
        "Bytes on established control connections (gossip, heartbeats, framing, encryption).",
        labels=["direction"],
    )
    for direction, n in sorted(status.get("control_bytes", {}).items()):
        wire.add_metric([direction], n)
    yield wire
    messages = CounterMetricFamily(
        "meshnet_gossip_messages", "Gossip messages per channel.", labels=["channel", "direction"]
    )
    size = CounterMetricFamily(
        "meshnet_gossip_bytes", "Gossip payload bytes per channel.", labels=["channel", "direction"]
    )
    for channel, c in sorted(gossip.get("channels", {}).items()):
        messages.add_metric([channel, "sent"], c["messages_sent"])
        messages.add_metric([channel, "received"], c["messages_received"])
        size.add_metric([channel, "sent"], c["bytes_sent"])
        size.add_metric([channel, "received"], c["bytes_received"])
    yield messages
    yield size


def dataplane_metrics(status: dict[str, Any], ourselves: str = "") -> Iterator[Metric]:
    """``ourselves``: this peer's name, whose MACs are local (not flows to another host)."""
    forwarding = status["forwarding"]
    nicknames = {peer: p.get("nickname", peer) for peer, p in status.get("paths", {}).items()}
    labels = ["peer", "nickname", "direction", "path"]
    datagrams = CounterMetricFamily(
        "meshnet_dataplane_datagrams", "Sleeve datagrams per peer and direction.", labels=labels
    )
    size = CounterMetricFamily(
        "meshnet_dataplane_bytes", "Sleeve bytes per peer and direction.", labels=labels
    )
    for direction in _DIRECTIONS:
        for peer, row in sorted(forwarding.get(direction, {}).items()):
            key = [peer, nicknames.get(peer, peer), direction, "sleeve"]
            datagrams.add_metric(key, row["datagrams"])
            size.add_metric(key, row["bytes"])
    yield datagrams
    yield size
    drops = CounterMetricFamily(
        "meshnet_dataplane_drops", "Frames or datagrams dropped, by reason.", labels=["reason"]
    )
    for reason, n in sorted(forwarding.get("dropped", {}).items()):
        drops.add_metric([reason], n)
    yield drops
    paths = GaugeMetricFamily(
        "meshnet_dataplane_paths", "UDP paths to neighbours, by state.", labels=["state"]
    )
    by_state: dict[str, int] = {}
    for p in status.get("paths", {}).values():
        by_state[p["state"]] = by_state.get(p["state"], 0) + 1
    for state, n in sorted(by_state.items()):
        paths.add_metric([state], n)
    yield paths
    yield GaugeMetricFamily(
        "meshnet_dataplane_paths_behind_nat",
        "UDP paths that follow a neighbour's NAT to another port than it advertised.",
        value=sum(1 for p in status.get("paths", {}).values() if p.get("nat_moved")),
    )
    yield CounterMetricFamily(
        "meshnet_dataplane_nat_moves",
        "Times a UDP path followed a neighbour's heartbeats to another address or port.",
        value=status.get("counters", {}).get("udp_endpoint_moved", 0),
    )
    punch = status.get("punch") or {}
    yield CounterMetricFamily(
        "meshnet_punch_attempts",
        "Attempts to punch a direct UDP path through NATs to a peer without a connection.",
        value=punch.get("counters", {}).get("attempts", 0),
    )
    yield CounterMetricFamily(
        "meshnet_punch_successes",
        "Punched paths established (heartbeats both ways).",
        value=punch.get("counters", {}).get("successes", 0),
    )
    yield GaugeMetricFamily(
        "meshnet_dataplane_paths_punched",
        "Established UDP paths punched through NATs.",
        value=sum(
            1
            for p in status.get("paths", {}).values()
            if p.get("punched") and p["state"] == "established"
        ),
    )
    superframes = CounterMetricFamily(
        "meshnet_dataplane_superframes",
        "TCP super-frames sent whole in one GSO send or received whole in one GRO run.",
        labels=["direction"],
    )
    for direction, n in sorted(forwarding.get("superframes", {}).items()):
        superframes.add_metric([direction], n)
    yield superframes
    fastdp_filter = (status.get("fastdp") or {}).get("filter") or {}
    yield CounterMetricFamily(
        "meshnet_fastdp_foreign_dropped",
        "VXLAN datagrams dropped because they came from no peer that fastdp uses.",
        value=fastdp_filter.get("foreign_dropped") or 0,
    )
    yield GaugeMetricFamily(
        "meshnet_dataplane_macs",
        "MAC addresses the switch has learned.",
        value=len(status.get("macs", [])),
    )
    # Weave's weave_flows counts its kernel datapath's flows; our forwarding is by destination
    # MAC, so a flow here is a remote MAC the kernel (VXLAN) or the sleeve's switch sends to.
    flows = GaugeMetricFamily(
        "meshnet_flows",
        "Remote MACs forwarded to: VXLAN forwarding entries (fastdp), MACs learned (sleeve).",
        labels=["path"],
    )
    entries = (status.get("fastdp") or {}).get("entries") or {}
    flows.add_metric(["fastdp"], entries.get("remotes", 0))
    flows.add_metric(
        ["sleeve"], sum(1 for m in status.get("macs", []) if m.get("peer") != ourselves)
    )
    yield flows


def ipam_metrics(status: dict[str, Any]) -> Iterator[Metric]:
    """Per ring, labelled ``family`` (ipv4, ipv6): IPAM's status has the IPv4 ring at the top
    and the IPv6 one under ``ipv6`` (None with IPv6 off: no ipv6 samples). An IPv6 ring's
    sizes (a /48 holds 2^80 addresses) are floats here, as every Prometheus value is."""
    rings = [("ipv4", status)]
    if status.get("ipv6") is not None:
        rings.append(("ipv6", status["ipv6"]))
    addresses = GaugeMetricFamily(
        "meshnet_ipam_addresses",
        "Addresses of the allocation range: in use and free here, and owned by unreachable peers.",
        labels=["family", "state"],
    )
    unreachable_peers = GaugeMetricFamily(
        "meshnet_ipam_unreachable_peers",
        "Peers that own part of the range but cannot be reached (rmpeer reclaims a dead one's).",
        labels=["family"],
    )
    range_addresses = GaugeMetricFamily(
        "meshnet_ipam_range_addresses", "Addresses in the allocation range.", labels=["family"]
    )
    unreachable_percentage = GaugeMetricFamily(
        "meshnet_ipam_unreachable_percentage",
        "Percentage of the range owned by unreachable peers (as Weave's, 0-100).",
        labels=["family"],
    )
    owned = GaugeMetricFamily(
        "meshnet_ipam_owned_addresses",
        "Addresses of the range each peer owns.",
        labels=["family", "peer", "nickname"],
    )
    for family, ring in rings:
        # .get throughout: IPAM's status is its own and may grow or change; a metric then reads 0.
        peers = ring.get("peers", [])
        local = [p for p in peers if p.get("local")]
        unreachable = [p for p in peers if not p.get("reachable", True)]
        lost = sum(p.get("size", 0) for p in unreachable)
        addresses.add_metric([family, "in_use"], float(sum(p.get("in_use", 0) for p in local)))
        addresses.add_metric([family, "free"], float(sum(p.get("free", 0) for p in local)))
        addresses.add_metric([family, "unreachable"], float(lost))
        unreachable_peers.add_metric([family], len(unreachable))
        # The whole range (Weave's weave_max_ips); before the ring exists, what peers own is 0.
        total = ip_network(ring["range"]).num_addresses if ring.get("range") else 0
        range_addresses.add_metric([family], float(total))
        unreachable_percentage.add_metric([family], 100 * lost / total if total else 0)
        for p in peers:
            labels = [family, p.get("name", ""), p.get("nickname", "")]
            owned.add_metric(labels, float(p.get("size", 0)))
    yield addresses
    yield unreachable_peers
    yield range_addresses
    yield unreachable_percentage
    # Waiting operations are the service's, whichever ring they wait for.
    pending = GaugeMetricFamily(
        "meshnet_ipam_pending",
        "Allocations and claims waiting for address space (consensus or a donation).",
        labels=["operation"],
    )
    for operation, n in sorted(status.get("pending", {}).items()):
        pending.add_metric([operation], n)
    yield pending
    yield owned


def dns_metrics(status: dict[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "meshnet_dns_entries",
        "DNS records known, from every peer.",
        value=sum(len(e.get("records", [])) for e in status.get("entries", [])),
    )
    yield GaugeMetricFamily(
        "meshnet_dns_local_entries",
        "DNS records of this peer's containers (what Weave's weave_dns_entries counts).",
        value=sum(len(e.get("records", [])) for e in status.get("entries", []) if e.get("local")),
    )
    server = status.get("server")
    queries = CounterMetricFamily(
        "meshnet_dns_queries", "DNS queries received, by transport.", labels=["transport"]
    )
    outcomes = CounterMetricFamily(
        "meshnet_dns_outcomes", "What became of DNS queries.", labels=["outcome"]
    )
    if server:
        queries.add_metric(["udp"], server.get("udp_queries", 0))
        queries.add_metric(["tcp"], server.get("tcp_queries", 0))
        for key, n in sorted(server.items()):
            if key not in ("udp_queries", "tcp_queries", "tcp_connections") and isinstance(n, int):
                outcomes.add_metric([key], n)
    yield queries
    yield outcomes


def registry_for(sources: Sources) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MeshnetCollector(sources))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
