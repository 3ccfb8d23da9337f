"""The router's change events: a `Watch` keeps only the newest value, bounded by design."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meshnet.gossip.events import LiveLinks, PeerLink, Watch


@pytest.mark.trio
async def test_a_subscriber_gets_the_current_value_then_only_newer_ones() -> None:
    watch = Watch("a")
    seen: list[str] = []

    async def follow() -> None:
        async for value in watch.subscribe():
            seen.append(value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        await trio.testing.wait_all_tasks_blocked()
        assert seen == ["a"] and watch.statistics().waiting == 1
        watch.publish("b")
        await trio.testing.wait_all_tasks_blocked()
        assert seen == ["a", "b"]
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_busy_subscriber_gets_the_newest_value_not_a_backlog() -> None:
    watch = Watch(0)
    for n in range(1, 1001):
        watch.publish(n)
    assert await watch.wait_newer(0) == (1000, 1000)
    assert watch.statistics().version == 1000


@pytest.mark.trio
async def test_waiting_for_a_newer_version_blocks_until_one_is_published() -> None:
    watch = Watch("x")
    with trio.move_on_after(0.1) as scope:
        await watch.wait_newer(watch.version)
    assert scope.cancelled_caught
    async with trio.open_nursery() as nursery:
        got: list[tuple[int, str]] = []

        async def wait() -> None:
            got.append(await watch.wait_newer(0))

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        watch.publish("y")
    assert got == [(1, "y")] and watch.statistics().waiting == 0


def test_live_links_are_a_read_only_copy() -> None:
    source = {1: PeerLink(1, "h1", "10.0.0.1", 6783, None, None)}
    live = LiveLinks.of(source)
    source.clear()
    assert set(live.links) == {1}
    with pytest.raises(TypeError):
        live.links[2] = live.links[1]  # type: ignore[index]
