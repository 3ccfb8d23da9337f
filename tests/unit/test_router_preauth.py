"""The router's pre-auth budget over real loopback TCP: Hello deadline, eviction of idle
sockets, dials never starved, and --conn-limit counting authenticated connections only."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from meshnet.gossip.admission import HELLO_TIMEOUT, MAX_PENDING_PER_SOURCE
from meshnet.gossip.handshake import MAGIC
from meshnet.gossip.router import Router
from tests.unit.test_router import established, make_router, wait_until

pytestmark = pytest.mark.trio


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


def limited(router: Router, conn_limit: int) -> Router:
    router.config = dataclasses.replace(router.config, conn_limit=conn_limit)
    return router


async def closed_after(stream: trio.SocketStream, drip: bytes = b"") -> float:
    """Seconds until the router closes ``stream``, sending ``drip`` a byte every 0.5 s."""
    start = trio.current_time()
    with trio.fail_after(10):
        for i in range(10**6):
            with trio.move_on_after(0.5):
                while await stream.receive_some(4096):
                    pass  # the router's Hello
                return trio.current_time() - start
            if drip:
                try:
                    await stream.send_all(drip[i % len(drip) : i % len(drip) + 1])
                except trio.BrokenResourceError:
                    return trio.current_time() - start
    raise AssertionError("unreachable")


async def test_a_slow_drip_is_cut_at_the_hello_deadline(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    a = make_router(tmp_path, "a")
    await nursery.start(a.serve)
    stream = await trio.open_tcp_stream("127.0.0.1", a.config.port)
    elapsed = await closed_after(stream, drip=MAGIC + b"\x00\x00\x00\x40")
    assert HELLO_TIMEOUT - 0.1 <= elapsed < HELLO_TIMEOUT + 1.5
    assert a.counters["hello_timeouts"] == 1
    await wait_until(lambda: not a._attempts and not len(a._pending))


async def test_idle_sockets_neither_keep_a_peer_out_nor_stop_our_dials(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    b = make_router(tmp_path, "b")
    c = make_router(tmp_path, "c")
    await nursery.start(b.serve)
    a = limited(make_router(tmp_path, "a"), 2)
    await nursery.start(a.serve)
    idle = []
    try:
        for _ in range(20):
            idle.append(socket.create_connection(("127.0.0.1", a.config.port)))
        await wait_until(lambda: a.counters["preauth_source_full"] >= 10)
        # Our dial to a configured peer is not counted against idle inbound sockets...
        a.connect(f"127.0.0.1:{b.config.port}")
        await wait_until(lambda: established(a) == ["b"], timeout=5)
        # ...and a peer dialling in (from the same address as the junk) takes an idle one's place.
        c.connect(f"127.0.0.1:{a.config.port}")
        await nursery.start(c.serve)
        await wait_until(lambda: established(a) == ["b", "c"], timeout=5)
        assert len(a._pending) <= MAX_PENDING_PER_SOURCE
    finally:
        for s in idle:
            s.close()


async def test_conn_limit_refuses_an_authenticated_stranger_but_not_a_configured_peer(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    b = make_router(tmp_path, "b")
    await nursery.start(b.serve)
    a = limited(make_router(tmp_path, "a", peers=(f"127.0.0.1:{b.config.port}",)), 1)
    await nursery.start(a.serve)
    await wait_until(lambda: established(a) == ["b"])
    # c dials a, which is full and did not ask for c: refused after the handshake.
    c = make_router(tmp_path, "c", peers=(f"127.0.0.1:{a.config.port}",))
    await nursery.start(c.serve)
    await wait_until(lambda: a.counters["refused_conn_limit"] >= 1)
    assert established(a) == ["b"]
    # d is one a was told to connect to: admitted beyond the limit when it dials in.
    d = make_router(tmp_path, "d", peers=(f"127.0.0.1:{a.config.port}",))
    a.connect(f"127.0.0.1:{d.config.port}")
    await nursery.start(d.serve)
    await wait_until(lambda: "d" in established(a), timeout=5)
