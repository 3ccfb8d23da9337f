"""The router's trio shell over real loopback TCP: handshakes, collapse, heartbeats, garbage."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from meshnet.config import Config
from meshnet.gossip.events import PathVerdict, Watch
from meshnet.gossip.handshake import Handshake, PasswordMismatch
from meshnet.gossip.identity import Identity, new_peer_name, new_uid
from meshnet.gossip.router import Router

pytestmark = pytest.mark.trio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_router(
    tmp_path: Path,
    nick: str,
    peers: tuple[str, ...] = (),
    key: bytes | None = None,
    port: int | None = None,
    discovery: bool = True,
    heartbeat_interval: float = 0.2,
    data_path: bool = False,
) -> Router:
    config = Config(
        peers=peers,
        nickname=nick,
        port=port or free_port(),
        state_dir=tmp_path / nick,
        api_socket=tmp_path / nick / "api.sock",
        heartbeat_interval=heartbeat_interval,
        discovery=discovery,
    )
    identity = Identity(new_peer_name(os.urandom), nick, new_uid(os.urandom))
    return Router(config, identity, key, data_path=data_path)


async def wait_until(check: Callable[[], bool], timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.02)


def established(router: Router) -> list[str]:
    return sorted(c["nickname"] for c in router.connections() if c["state"] == "established")


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def test_two_routers_connect_and_share_topology(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    key = b"pw"
    a = make_router(tmp_path, "a", key=key)
    b = make_router(tmp_path, "b", peers=(f"127.0.0.1:{a.config.port}",), key=key)
    await nursery.start(a.serve)
    await nursery.start(b.serve)
    await wait_until(lambda: len(a.peers()) == 2 and len(b.peers()) == 2)
    assert established(a) == ["b"] and established(b) == ["a"]
    assert all(c["encrypted"] for c in a.connections() if c["state"] == "established")
    assert a.status()["encryption"] and a.status()["peers"] == 2


async def test_simultaneous_dials_collapse_to_one_connection(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    pa, pb = free_port(), free_port()
    a = make_router(tmp_path, "a", peers=(f"127.0.0.1:{pb}",), port=pa)
    b = make_router(tmp_path, "b", peers=(f"127.0.0.1:{pa}",), port=pb)
    await nursery.start(a.serve)
    await nursery.start(b.serve)
    await wait_until(lambda: established(a) == ["b"] and established(b) == ["a"])
    await trio.sleep(1.5)  # retries and heartbeats come and go: still exactly one
    assert established(a) == ["b"] and established(b) == ["a"]
    assert a.maker.targets()[0].state.value == "connected"
    assert b.maker.targets()[0].state.value == "connected"


async def test_a_peer_that_dialled_us_first_is_not_dialled_again(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """a's first dial finds b not listening; b then dials a. a's retry must not replace that
    working connection with a duplicate (new keys; DNS and routes saw b gone for a moment)."""
    pa, pb = free_port(), free_port()
    a = make_router(tmp_path, "a", peers=(f"127.0.0.1:{pb}",), port=pa)
    b = make_router(tmp_path, "b", peers=(f"127.0.0.1:{pa}",), port=pb)
    await nursery.start(a.serve)
    await wait_until(lambda: a.counters["dial_failures"] >= 1)
    await nursery.start(b.serve)
    await wait_until(lambda: established(a) == ["b"] and established(b) == ["a"])
    await trio.sleep(2.5)  # a's retry (1 s, jittered) is due long before
    assert a.counters["connections_established"] == 1
    assert a.counters["duplicates_replaced"] + a.counters["duplicates_dropped"] == 0
    assert a.maker.targets()[0].state.value == "connected"


async def test_garbage_is_dropped_and_counted(tmp_path: Path, nursery: trio.Nursery) -> None:
    a = make_router(tmp_path, "a")
    await nursery.start(a.serve)
    for payload in (b"\x00" * 64, b"GET / HTTP/1.0\r\n\r\n", b"MESHNET\x00\xff\xff\xff\xff"):
        stream = await trio.open_tcp_stream("127.0.0.1", a.config.port)
        await stream.send_all(payload)
        with trio.fail_after(5):
            while await stream.receive_some(4096):
                pass  # the router closes on us
        await stream.aclose()
    assert a.counters["protocol_errors"] == 3
    assert a.connections() and not established(a)


async def test_a_silent_peer_is_dropped_after_missed_heartbeats(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    a = make_router(tmp_path, "a")
    await nursery.start(a.serve)
    stream = await trio.open_tcp_stream("127.0.0.1", a.config.port)
    mute = Handshake(
        local=Identity(new_peer_name(os.urandom), "mute", 1),
        features={},
        password=None,
        rng=os.urandom,
    )
    await stream.send_all(mute.initial_bytes())
    while mute.result is None:
        mute.receive_data(await stream.receive_some(4096))
    await wait_until(lambda: established(a) == ["mute"])
    # Say nothing more: after three heartbeat intervals the router gives up on us.
    await wait_until(lambda: not established(a), timeout=a.config.heartbeat_timeout + 2)
    assert a.counters["heartbeat_timeouts"] == 1
    assert [p["nickname"] for p in a.peers()] == ["a"]
    await stream.aclose()


async def guess(port: int, password: bytes) -> bool:
    """One connection to a router with ``password``: True if the handshake succeeded, False if
    refused as a password mismatch or closed before the router said anything."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    guesser = Handshake(
        local=Identity(new_peer_name(os.urandom), "guesser", 1),
        features={},
        password=password,
        rng=os.urandom,
    )
    try:
        await stream.send_all(guesser.initial_bytes())
        with trio.fail_after(5):
            while guesser.result is None:
                data = await stream.receive_some(4096)
                if not data:
                    return False
                try:
                    await stream.send_all(guesser.receive_data(data))
                except PasswordMismatch:
                    await stream.send_all(guesser.unsent_bytes())  # as the router's shell does
                    return False
        return True
    except trio.BrokenResourceError:
        return False
    finally:
        await stream.aclose()


async def test_failed_password_guesses_are_rate_limited_per_source(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    a = make_router(tmp_path, "a", key=b"right")
    await nursery.start(a.serve)
    assert [await guess(a.config.port, b"wrong") for _ in range(8)] == [False] * 8
    # The burst, then refused before any handshake work.
    await wait_until(lambda: a.counters["auth_failures"] == 5)
    assert a.counters["auth_rate_limited"] == 3
    assert a.counters["password_mismatch_different_password"] == 5
    # The same source with the right password is refused too until a token comes back.
    assert not await guess(a.config.port, b"right")
    assert a.counters["auth_rate_limited"] == 4


async def test_successful_handshakes_cost_no_tokens(tmp_path: Path, nursery: trio.Nursery) -> None:
    a = make_router(tmp_path, "a", key=b"right")
    await nursery.start(a.serve)
    for _ in range(8):
        assert await guess(a.config.port, b"right")
    assert a.counters["auth_rate_limited"] == 0 and a.counters["auth_failures"] == 0


class Recorder:
    """A channel that keeps what it was sent; its state is a set of strings (merge = union)."""

    def __init__(self) -> None:
        self.items: set[str] = set()
        self.broadcasts: list[tuple[int, bytes]] = []
        self.unicasts: list[tuple[int, bytes]] = []

    def full_state(self) -> bytes | None:
        return "\n".join(sorted(self.items)).encode() if self.items else None

    def on_gossip(self, payload: bytes) -> bytes | None:
        new = set(payload.decode().split("\n")) - self.items
        self.items |= new
        return "\n".join(sorted(new)).encode() if new else None

    def merge_payloads(self, a: bytes, b: bytes) -> bytes:
        return "\n".join(sorted(set(a.decode().split("\n")) | set(b.decode().split("\n")))).encode()

    def on_broadcast(self, source: int, payload: bytes) -> None:
        self.broadcasts.append((source, payload))

    def on_unicast(self, source: int, payload: bytes) -> None:
        self.unicasts.append((source, payload))


async def test_channels_gossip_broadcast_and_unicast_across_a_relay(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    a = make_router(tmp_path, "a", discovery=False)
    b = make_router(tmp_path, "b", peers=(f"127.0.0.1:{a.config.port}",), discovery=False)
    c = make_router(tmp_path, "c", peers=(f"127.0.0.1:{b.config.port}",), discovery=False)
    recorders = {r.identity.nickname: Recorder() for r in (a, b, c)}
    for r in (a, b, c):
        r.register_channel("test", recorders[r.identity.nickname])
        await nursery.start(r.serve)
    await wait_until(lambda: all(len(r.peers()) == 3 for r in (a, b, c)))
    assert established(a) == ["b"]  # a and c only meet through b

    recorders["a"].items.add("x")
    a.gossip("test", b"x")
    await wait_until(lambda: recorders["c"].items == {"x"})
    a.broadcast("test", b"hello all")
    await wait_until(lambda: all(r.broadcasts for name, r in recorders.items() if name != "a"))
    assert recorders["c"].broadcasts == [(a.identity.name, b"hello all")]
    assert a.unicast("test", c.identity.name, b"just c")
    await wait_until(lambda: bool(recorders["c"].unicasts))
    assert recorders["c"].unicasts == [(a.identity.name, b"just c")]
    assert recorders["b"].unicasts == []
    assert not a.unicast("test", 12345, b"nobody")


class Wakes:
    """Counts how often a subscriber of a `Watch` is woken (each newer value it receives)."""

    def __init__(self) -> None:
        self.count = 0

    async def follow(self, watch: Watch[Any]) -> None:
        version = watch.version
        while True:
            version, _ = await watch.wait_newer(version)
            self.count += 1


async def test_an_idle_router_wakes_no_subscriber_on_heartbeats(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    a = make_router(tmp_path, "a", heartbeat_interval=0.05)
    b = make_router(tmp_path, "b", peers=(f"127.0.0.1:{a.config.port}",), heartbeat_interval=0.05)
    await nursery.start(a.serve)
    await nursery.start(b.serve)
    await wait_until(lambda: b.identity.name in a.views.current.reachable)
    await wait_until(lambda: a.identity.name in b.views.current.reachable)
    await trio.sleep(1.5)  # the batched prune after the last change comes and goes
    wakes = {name: Wakes() for name in ("a views", "a links", "b views", "b links")}
    for router, nick in ((a, "a"), (b, "b")):
        nursery.start_soon(wakes[f"{nick} views"].follow, router.views)
        nursery.start_soon(wakes[f"{nick} links"].follow, router.links)
    versions = [w.version for r in (a, b) for w in (r.views, r.links)]
    received = a.counters["messages_received"]

    await trio.sleep(1.5)

    assert a.counters["messages_received"] - received >= 10  # heartbeats did flow
    assert [w.version for r in (a, b) for w in (r.views, r.links)] == versions
    assert {name: w.count for name, w in wakes.items()} == dict.fromkeys(wakes, 0)


async def test_links_and_views_are_published_when_a_neighbour_comes_and_goes(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    a = make_router(tmp_path, "a")
    views, links = Wakes(), Wakes()
    nursery.start_soon(views.follow, a.views)
    nursery.start_soon(links.follow, a.links)
    await nursery.start(a.serve)
    b = make_router(tmp_path, "b", peers=(f"127.0.0.1:{a.config.port}",))
    async with trio.open_nursery() as inner:
        await inner.start(b.serve)
        await wait_until(lambda: b.identity.name in a.views.current.reachable)
        assert set(a.links.current.links) == {b.identity.name}
        link = a.links.current.links[b.identity.name]
        assert link.nickname == "b" and link.port == b.config.port
        assert a.views.current.neighbours == {b.identity.name}
        await trio.testing.wait_all_tasks_blocked()  # the subscribers ran
        assert links.count == 1 and views.count >= 1
        came = views.count
        inner.cancel_scope.cancel()
    await wait_until(lambda: not a.links.current.links)
    await wait_until(lambda: b.identity.name not in a.views.current.reachable)
    await trio.testing.wait_all_tasks_blocked()
    assert links.count == 2 and views.count > came
    assert a.peer_links() == {}


async def test_path_verdicts_publish_a_view_only_when_they_change_the_routes(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    a = make_router(tmp_path, "a", data_path=True)
    b = make_router(tmp_path, "b", peers=(f"127.0.0.1:{a.config.port}",), data_path=True)
    await nursery.start(a.serve)
    await nursery.start(b.serve)
    await wait_until(lambda: bool(a.links.current.links) and bool(b.links.current.links))
    await wait_until(lambda: a.views.current.neighbours == {b.identity.name})
    assert b.identity.name not in a.views.current.reachable  # the data path is not proven yet

    a.report_path(PathVerdict(b.identity.name, True, {"state": "established"}))
    b.report_path(PathVerdict(a.identity.name, True, {"state": "established"}))
    await wait_until(lambda: b.identity.name in a.views.current.reachable)
    await trio.sleep(1.5)  # the other side's entry, the batched prune
    version = a.views.version
    for n in range(5):  # status-only news (an RTT) changes no route
        a.report_path(PathVerdict(b.identity.name, True, {"state": "established", "rtt": n}))
    await trio.sleep(0.5)
    assert a.views.version == version
    record = next(c for c in a.connections() if c["state"] == "established")
    assert record["data_path"] == {"state": "established", "rtt": 4}

    a.report_path(PathVerdict(b.identity.name, False, {"state": "dead"}))
    await wait_until(lambda: b.identity.name not in a.views.current.reachable)
    assert a.views.version > version
