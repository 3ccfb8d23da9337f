"""/report, /metrics, /stream and /events of two real routers on loopback, driven as ASGI."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from meshnet.api import events
from meshnet.api.app import ApiApp
from meshnet.api.metrics import dataplane_metrics, dns_metrics, ipam_metrics
from meshnet.api.report import parse_net_dev
from meshnet.api.stream import FrameError, FrameReader, encode_frame, interval_of
from meshnet.gossip.router import Router
from meshnet.ipam.allocator import InitMode, IpamConfig
from meshnet.ipam.range6 import Ipv6Settings
from tests.unit.test_ipam_service import RANGE, FakeNet, start
from tests.unit.test_router import established, make_router, wait_until


class Exchange:
    """One request to an ASGI app: what it sent back, and a way to hang up."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[bytes, bytes] = {}
        self.chunks: list[bytes] = []
        self.hang_up = trio.Event()
        self.got_chunk = trio.Event()

    async def receive(self) -> MutableMapping[str, Any]:
        if not getattr(self, "_sent_request", False):
            self._sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = dict(message["headers"])
        else:
            self.chunks.append(message.get("body", b""))
            self.got_chunk.set()
            self.got_chunk = trio.Event()

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


def scope(path: str, query: bytes = b"") -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path, "query_string": query}


async def get(app: ApiApp, path: str) -> Exchange:
    exchange = Exchange()
    await app(scope(path), exchange.receive, exchange.send)
    return exchange


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Router, Router]]:
    a = make_router(tmp_path, "alpha")
    b = make_router(tmp_path, "beta", peers=(f"127.0.0.1:{a.config.port}",))
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        await nursery.start(b.serve)
        await wait_until(lambda: established(a) == ["beta"] and established(b) == ["alpha"])
        yield a, b
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_report_has_every_part(pair: tuple[Router, Router]) -> None:
    a, _ = pair
    exchange = await get(ApiApp(a, lambda: None), "/report")
    assert exchange.status == 200
    report = json.loads(exchange.body)
    assert set(report) >= {
        "version",
        "time",
        "router",
        "peers",
        "connections",
        "targets",
        "gossip",
        "dataplane",
        "containers",
        "ipam",
        "dns",
    }
    assert report["router"]["nickname"] == "alpha"
    assert sorted(p["nickname"] for p in report["peers"]) == ["alpha", "beta"]
    assert [c["nickname"] for c in report["connections"]] == ["beta"]
    assert report["gossip"]["channels"]["topology"]["messages_sent"] > 0
    # No data plane, IPAM or DNS here: those parts say so instead of failing.
    assert report["dataplane"] is None and report["containers"] == []
    assert report["ipam"] is None and report["dns"] is None


@pytest.mark.trio
async def test_metrics_parse_and_show_the_mesh(pair: tuple[Router, Router]) -> None:
    a, _ = pair
    app = ApiApp(a, lambda: None)
    first = await get(app, "/metrics")
    assert first.status == 200 and first.headers[b"content-type"].startswith(b"text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(first.body.decode())
        for s in family.samples
    }
    assert samples[("meshnet_peers", ())] == 2
    assert samples[("meshnet_connections", (("state", "established"),))] == 1
    assert samples[("meshnet_encryption_enabled", ())] == 0
    key = ("meshnet_gossip_messages_total", (("channel", "topology"), ("direction", "sent")))
    sent_before = samples[key]
    a.connect("127.0.0.1:1")  # nothing listens there: a failed dial, counted
    await wait_until(lambda: a.counters["dial_failures"] > 0)
    second = await get(app, "/metrics")
    events_after = {
        s.labels["event"]: s.value
        for family in text_string_to_metric_families(second.body.decode())
        if family.name == "meshnet_router_events"
        for s in family.samples
    }
    assert events_after["dial_failures"] >= 1
    assert sent_before >= 1


@pytest.mark.trio
async def test_control_bytes_count_what_went_over_the_wire(pair: tuple[Router, Router]) -> None:
    """Wire bytes of the control connection: at least the channels' payloads (frames and
    heartbeats come on top), and what one side sent is what the other received."""
    a, b = pair
    app = ApiApp(a, lambda: None)
    await wait_until(lambda: a.control_bytes["sent"] > 0 and b.control_bytes["received"] > 0)
    samples = scrape((await get(app, "/metrics")).body)
    sent = samples[("meshnet_control_bytes_total", (("direction", "sent"),))]
    payload = sum(c.bytes_sent for c in a.mesh.statistics().channels.values())
    assert sent >= payload > 0
    assert a.status()["control_bytes"]["sent"] >= sent
    await wait_until(lambda: b.control_bytes["received"] == a.control_bytes["sent"])


def scrape(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


@pytest.mark.trio
async def test_a_connection_that_ends_is_counted_as_a_termination(tmp_path: Path) -> None:
    """Weave's weave_connection_terminations_total: ours moves when a peer goes away."""
    a = make_router(tmp_path, "alpha")
    app = ApiApp(a, lambda: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        async with trio.open_nursery() as inner:
            b = make_router(tmp_path, "beta", peers=(f"127.0.0.1:{a.config.port}",))
            await inner.start(b.serve)
            await wait_until(lambda: established(a) == ["beta"])
            before = scrape((await get(app, "/metrics")).body)
            assert before[("meshnet_connection_terminations_total", ())] == 0
            inner.cancel_scope.cancel()  # beta stops: its connection ends
        await wait_until(lambda: established(a) == [])
        after = scrape((await get(app, "/metrics")).body)
        assert after[("meshnet_connection_terminations_total", ())] == 1
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_stream_sends_snapshots_until_the_client_hangs_up(
    pair: tuple[Router, Router],
) -> None:
    a, _ = pair
    app = ApiApp(a, lambda: None)
    exchange = Exchange()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                app, scope("/stream", b"interval=0.1"), exchange.receive, exchange.send
            )
            while len(exchange.chunks) < 3:
                await exchange.got_chunk.wait()
            exchange.hang_up.set()  # the handler must notice and return
    reader = FrameReader()
    reader.feed(exchange.body)
    snapshots = reader.frames()
    assert len(snapshots) >= 3
    assert all(s["router"]["nickname"] == "alpha" for s in snapshots)
    assert snapshots[0]["time"] < snapshots[-1]["time"]


@pytest.mark.trio
async def test_events_report_a_peer_that_goes(tmp_path: Path) -> None:
    a = make_router(tmp_path, "alpha")
    b = make_router(tmp_path, "beta", peers=(f"127.0.0.1:{a.config.port}",))
    app = ApiApp(a, lambda: None)
    exchange = Exchange()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.serve)
            async with trio.open_nursery() as inner:
                await inner.start(b.serve)
                await wait_until(lambda: established(a) == ["beta"])
                nursery.start_soon(
                    app, scope("/events", b"interval=0.1"), exchange.receive, exchange.send
                )
                await exchange.got_chunk.wait()  # the hello line
                inner.cancel_scope.cancel()  # beta stops
            while b"connection_down" not in exchange.body:
                await exchange.got_chunk.wait()
            exchange.hang_up.set()
            nursery.cancel_scope.cancel()
    lines = [json.loads(line) for line in exchange.body.splitlines()]
    assert lines[0]["kind"] == "hello"
    down = [e for e in lines if e["kind"] == "connection_down"]
    assert down and "beta" in down[0]["text"]


def test_frames_survive_any_split() -> None:
    frames = [{"n": i, "blob": b"x" * i, "text": "é"} for i in range(5)]
    data = b"".join(encode_frame(f) for f in frames)
    for step in (1, 3, 7, len(data)):
        reader = FrameReader()
        out = []
        for i in range(0, len(data), step):
            reader.feed(data[i : i + step])
            out.extend(reader.frames())
        assert out == frames


def test_bad_frames_are_refused() -> None:
    reader = FrameReader(max_frame=100)
    reader.feed(b"\x00\x00\x10\x00")
    with pytest.raises(FrameError, match="4096 bytes"):
        reader.frames()
    reader = FrameReader()
    reader.feed(b"\x00\x00\x00\x01\xc1")  # 0xc1 is never valid msgpack
    with pytest.raises(FrameError):
        reader.frames()
    assert msgpack.unpackb(encode_frame([1])[4:]) == [1]


def test_interval_is_bounded() -> None:
    assert interval_of(scope("/stream")) == 1.0
    assert interval_of(scope("/stream", b"interval=0.5")) == 0.5
    assert interval_of(scope("/stream", b"interval=0")) == 0.25
    assert interval_of(scope("/stream", b"interval=nan")) == 1.0
    assert interval_of(scope("/stream", b"interval=soon")) == 1.0


def test_subsystem_metrics_from_status() -> None:
    dataplane = {
        "paths": {
            "aa:00:00:00:00:01": {"nickname": "h2", "state": "established", "nat_moved": True}
        },
        "forwarding": {
            "sent": {"aa:00:00:00:00:01": {"datagrams": 3, "bytes": 300}},
            "received": {},
            "relayed": {"aa:00:00:00:00:02": {"datagrams": 1, "bytes": 50}},
            "dropped": {"no_route": 2},
            "superframes": {"sent": 7, "received": 5},
        },
        "macs": [{"peer": "us"}, {"peer": "aa:00:00:00:00:01"}, {"peer": "aa:00:00:00:00:01"}],
        "counters": {"udp_endpoint_moved": 2},
        "fastdp": {"entries": {"remotes": 4, "pinned": 1}},
    }
    ipam = {
        "peers": [
            {
                "name": "a",
                "nickname": "h1",
                "local": True,
                "size": 10,
                "in_use": 3,
                "free": 7,
                "reachable": True,
            },
            {
                "name": "b",
                "nickname": "h2",
                "local": False,
                "size": 6,
                "in_use": 1,
                "free": 5,
                "reachable": False,
            },
            {"name": "c", "nickname": "h3", "local": False, "size": 4, "reachable": True},
        ],
        "pending": {"allocate": 2, "claim": 1},
        "range": "10.32.0.0/27",
    }
    dns = {
        "entries": [{"local": True, "records": [{}, {}]}, {"local": False, "records": [{}]}],
        "server": {"udp_queries": 4, "tcp_queries": 1, "replies": 5},
    }
    samples = {}
    for family in [
        *dataplane_metrics(dataplane, ourselves="us"),
        *ipam_metrics(ipam),
        *dns_metrics(dns),
    ]:
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    sent = (
        ("direction", "sent"),
        ("nickname", "h2"),
        ("path", "sleeve"),
        ("peer", "aa:00:00:00:00:01"),
    )
    assert samples[("meshnet_dataplane_bytes_total", sent)] == 300
    assert samples[("meshnet_dataplane_drops_total", (("reason", "no_route"),))] == 2
    assert samples[("meshnet_dataplane_macs", ())] == 3
    assert samples[("meshnet_flows", (("path", "fastdp"),))] == 4
    assert samples[("meshnet_flows", (("path", "sleeve"),))] == 2  # ours are not flows
    assert samples[("meshnet_dataplane_paths_behind_nat", ())] == 1
    assert samples[("meshnet_dataplane_nat_moves_total", ())] == 2
    assert samples[("meshnet_dataplane_superframes_total", (("direction", "sent"),))] == 7
    v4 = ("family", "ipv4")
    assert samples[("meshnet_ipam_addresses", (v4, ("state", "in_use")))] == 3
    assert samples[("meshnet_ipam_addresses", (v4, ("state", "unreachable")))] == 6
    assert samples[("meshnet_ipam_unreachable_peers", (v4,))] == 1
    assert samples[("meshnet_ipam_range_addresses", (v4,))] == 32
    assert samples[("meshnet_ipam_unreachable_percentage", (v4,))] == 100 * 6 / 32
    assert ("meshnet_ipam_range_addresses", (("family", "ipv6"),)) not in samples  # IPv6 off
    assert samples[("meshnet_ipam_pending", (("operation", "allocate"),))] == 2
    assert samples[("meshnet_ipam_pending", (("operation", "claim"),))] == 1
    assert samples[("meshnet_dns_entries", ())] == 3
    assert samples[("meshnet_dns_local_entries", ())] == 2
    assert samples[("meshnet_dns_queries_total", (("transport", "udp"),))] == 4
    assert samples[("meshnet_dns_outcomes_total", (("outcome", "replies"),))] == 5


class _IpamCollector(Collector):
    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status

    def collect(self) -> Any:
        yield from ipam_metrics(self.status)


@pytest.mark.trio
async def test_the_ipv6_ring_is_in_the_metrics_beside_the_ipv4_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A real IPAM service's status, through the Prometheus text format and back: each ring
    under its own ``family`` label, the IPv6 /48's 2^80 addresses included."""
    net = FakeNet()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.pump)
        config = IpamConfig(name=1, range=RANGE, mode=InitMode.CONSENSUS, consensus_size=1)
        service = await start(nursery, net, tmp_path, 1, config, ipv6=Ipv6Settings())
        await service.allocate("c1")
        await service.allocate6("c1")
        await service.allocate6("c2")
        status = service.status()
        nursery.cancel_scope.cancel()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_IpamCollector(status))
    samples = scrape(generate_latest(registry))
    v4, v6 = ("family", "ipv4"), ("family", "ipv6")
    assert samples[("meshnet_ipam_addresses", (v4, ("state", "in_use")))] == 1
    assert samples[("meshnet_ipam_addresses", (v6, ("state", "in_use")))] == 2
    assert samples[("meshnet_ipam_range_addresses", (v4,))] == RANGE.num_addresses
    assert samples[("meshnet_ipam_range_addresses", (v6,))] == 2.0**80  # the derived ULA /48
    free6 = samples[("meshnet_ipam_addresses", (v6, ("state", "free")))]
    assert free6 == float(status["ipv6"]["peers"][0]["free"]) and free6 > 2.0**79
    assert samples[("meshnet_ipam_unreachable_peers", (v6,))] == 0
    assert samples[("meshnet_ipam_unreachable_percentage", (v6,))] == 0
    owner = ("nickname", "p1"), ("peer", status["name"])
    assert samples[("meshnet_ipam_owned_addresses", (v6, *owner))] == 2.0**80


def test_net_dev_is_parsed() -> None:
    text = (
        "Inter-|   Receive                            |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets\n"
        "    lo:  393109    3485    0    0    0     0          0         0   393100    3485"
        "    0    0    0     0       0          0\n"
        "vethwe1: 10 1 0 0 0 0 0 0 20 2 0 0 0 0 0 0\n"
        "broken: x\n"
    )
    assert parse_net_dev(text) == {"lo": (393109, 393100), "vethwe1": (10, 20)}


def test_events_from_report_differences() -> None:
    def report(peers: list[tuple[str, bool, list[str]]], conns: list[str]) -> dict[str, Any]:
        return {
            "time": 1.0,
            "peers": [
                {"name": n, "nickname": n.upper(), "reachable": r, "via": via}
                for n, r, via in peers
            ],
            "connections": [
                {"peer": c, "nickname": c.upper(), "address": "x", "state": "established"}
                for c in conns
            ],
        }

    before = report([("a", True, []), ("b", True, ["A"])], ["a"])
    after = report([("a", True, []), ("c", True, []), ("b", False, [])], ["c"])
    kinds = [(e["kind"], e.get("peer")) for e in events.diff(before, after)]
    assert ("peer_joined", "c") in kinds
    assert ("peer_unreachable", "b") in kinds
    assert ("connection_up", "c") in kinds and ("connection_down", "a") in kinds
    assert events.diff(None, after) == []
    assert events.diff(after, after) == []


def test_a_snapshot_with_an_ipv6_ring_size_still_encodes() -> None:
    """An IPv6 ring's sizes are past msgpack's integers: they travel as floats (the TUI's
    stream failed on the first snapshot of a dual-stack router without this)."""
    snapshot = {"ipam": {"ipv6": {"size": 1 << 80, "in_use": [2, True]}}, "n": -(1 << 63)}
    frame = encode_frame(snapshot)
    assert msgpack.unpackb(frame[4:]) == {
        "ipam": {"ipv6": {"size": float(1 << 80), "in_use": [2, True]}},
        "n": -(1 << 63),
    }
