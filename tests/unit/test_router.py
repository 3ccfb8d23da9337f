"""The router's trio shell over real loopback TCP: handshakes, collapse, heartbeats, garbage."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nacl.pwhash.argon2id as argon2id
import pytest
import trio

from meshnet.config import Config
from meshnet.gossip.handshake import Handshake, stretch_password
from meshnet.gossip.identity import Identity, new_peer_name, new_uid
from meshnet.gossip.router import Router

pytestmark = pytest.mark.trio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cheap_key(password: bytes) -> bytes:
    return stretch_password(
        password, opslimit=argon2id.OPSLIMIT_MIN, memlimit=argon2id.MEMLIMIT_MIN
    )


def make_router(
    tmp_path: Path,
    nick: str,
    peers: tuple[str, ...] = (),
    key: bytes | None = None,
    port: int | None = None,
    discovery: bool = True,
) -> Router:
    config = Config(
        peers=peers,
        nickname=nick,
        port=port or free_port(),
        state_dir=tmp_path / nick,
        api_socket=tmp_path / nick / "api.sock",
        heartbeat_interval=0.2,
        discovery=discovery,
    )
    identity = Identity(new_peer_name(os.urandom), nick, new_uid(os.urandom))
    return Router(config, identity, key)


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
    key = cheap_key(b"pw")
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
        stretched_key=None,
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
