"""UdpPath: two cores driven against each other through a fake link with an MTU and a latency."""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.dataplane.sleeve.path import PathState, SendHeartbeat, SendProbe, UdpPath

MAX = 1472


class Link:
    """Two UdpPaths ("a" and "b") joined by a lossless link: probes above ``mtu`` vanish.

    ``up[x]`` says whether datagrams sent by x arrive; ``local_mtu[x]`` makes x's kernel refuse
    (EMSGSIZE) anything larger; ``drop_probe`` may lose chosen probes.
    """

    def __init__(
        self,
        *,
        mtu: int = 1400,
        latency: float = 0.01,
        start: float = 1000.0,
        local_mtu: int | None = None,
        **path_options: float,
    ) -> None:
        self.paths = {
            "a": UdpPath(max_payload=MAX, **path_options),  # type: ignore[arg-type]
            "b": UdpPath(max_payload=MAX, **path_options),  # type: ignore[arg-type]
        }
        self.mtu = mtu
        self.latency = latency
        self.now = start
        self.up = {"a": True, "b": True}
        self.local_mtu = {"a": local_mtu or 65535, "b": 65535}
        self.drop_probe: Callable[[str, SendProbe], bool] = lambda sender, probe: False
        self.probes: dict[str, list[SendProbe]] = {"a": [], "b": []}
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    @property
    def a(self) -> UdpPath:
        return self.paths["a"]

    @property
    def b(self) -> UdpPath:
        return self.paths["b"]

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (self.now + delay, next(self._seq), action))

    def _send(self, sender: str, action: SendHeartbeat | SendProbe) -> None:
        other = "b" if sender == "a" else "a"
        receiver = self.paths[other]
        if isinstance(action, SendHeartbeat):
            if self.up[sender]:
                self._later(
                    self.latency,
                    lambda: receiver.on_heartbeat(
                        self.now, action.timestamp_us, action.echo_us, action.hear_you
                    ),
                )
            return
        self.probes[sender].append(action)
        if action.size > self.local_mtu[sender]:
            self.paths[sender].on_send_error_too_big(self.now, action.size)
            return
        if not self.up[sender] or action.size > self.mtu or self.drop_probe(sender, action):
            return

        def answer() -> None:  # the receiving shell acks every probe at once
            if self.up[other]:
                self._later(
                    self.latency,
                    lambda: self.paths[sender].on_probe_ack(self.now, action.probe_id, action.size),
                )

        self._later(self.latency, answer)

    def run_until(self, end: float) -> None:
        for _ in range(1_000_000):
            due = min(self.a.next_wake(), self.b.next_wake())
            if self._events:
                due = min(due, self._events[0][0])
            if due > end:
                self.now = end
                return
            self.now = max(self.now, due)
            while self._events and self._events[0][0] <= self.now:
                heapq.heappop(self._events)[2]()
            for name, path in self.paths.items():
                for action in path.tick(self.now):
                    self._send(name, action)
        raise AssertionError("the paths never go idle: next_wake() does not advance")

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)


def test_established_both_ways_with_the_round_trip_measured() -> None:
    link = Link(latency=0.123)
    assert link.a.state is PathState.UNKNOWN and not link.a.established
    assert link.a.rtt is None and link.a.payload_mtu == 548
    link.run_for(1.0)
    # a says hello, b now hears a and says so at once, a hears that: both up in ~2 latencies.
    assert link.a.established and link.b.established
    link.run_for(10.0)
    for path in link.paths.values():
        assert path.state is PathState.ESTABLISHED
        assert path.rtt == pytest.approx(0.246, abs=1e-5)  # holding time is not counted
        stats = path.statistics()
        assert stats.times_established == 1 and stats.times_lost == 0
        assert stats.heartbeats_received >= 10


@settings(max_examples=60, deadline=None)
@given(
    mtu=st.integers(548, MAX + 200),
    latency=st.floats(0.0005, 0.3),
)
def test_path_mtu_converges_exactly(mtu: int, latency: float) -> None:
    link = Link(mtu=mtu, latency=latency)
    link.run_for(60.0)
    expected = min(mtu, MAX)
    for name, path in link.paths.items():
        assert path.established
        assert path.payload_mtu == expected
        assert not path.searching
        sizes = [p.size for p in link.probes[name]]
        assert sizes[0] == MAX  # try the whole thing first
        assert all(548 < s <= MAX for s in sizes)
        # One probe when max passes; else a binary search, each failing size tried 3 times.
        distinct = len(set(sizes))
        assert distinct == 1 if mtu >= MAX else distinct <= 12
        assert len(sizes) <= 3 * distinct


def test_converges_in_a_few_round_trips() -> None:
    link = Link(mtu=1500, latency=0.02)
    link.run_for(0.2)
    assert link.a.payload_mtu == link.b.payload_mtu == MAX
    assert link.a.statistics().probes_sent == 1


def test_a_lost_probe_is_retried_before_the_size_is_given_up() -> None:
    link = Link(mtu=1200)
    lost: set[int] = set()

    def every_first_attempt(sender: str, probe: SendProbe) -> bool:
        key = hash((sender, probe.size))
        if key in lost:
            return False
        lost.add(key)
        return True

    link.drop_probe = every_first_attempt
    link.run_for(60.0)
    assert link.a.payload_mtu == link.b.payload_mtu == 1200
    assert link.a.statistics().probes_timed_out > 0


def test_link_loss_is_noticed_within_dead_after_and_recovers() -> None:
    link = Link(mtu=1300, latency=0.01)
    link.run_for(20.0)
    assert link.a.established and link.a.payload_mtu == 1300
    cut = link.now
    link.up["a"] = link.up["b"] = False
    link.run_until(cut + 5.0 - 1.0 - 0.01)  # the last heartbeat heard may be a whole interval old
    assert link.a.established and link.b.established
    link.run_until(cut + 5.0 + 0.02)
    for path in link.paths.values():
        assert path.state is PathState.LOST and not path.established
        assert path.payload_mtu == 548  # after a loss nothing is known about the path
        assert not path.searching
    link.run_for(30.0)
    assert link.a.state is PathState.LOST
    link.up["a"] = link.up["b"] = True
    back = link.now
    link.run_for(3.0)
    for path in link.paths.values():
        assert path.established
        assert path.payload_mtu == 1300
        assert path.statistics().times_established == 2
        assert path.statistics().times_lost == 1
    assert link.now - back <= 3.0


def test_one_way_udp_never_establishes() -> None:
    link = Link()
    link.up["a"] = False  # b hears nothing from a; a hears b, who keeps saying it hears nothing
    link.run_for(30.0)
    for path in link.paths.values():
        assert path.state is PathState.UNKNOWN
        assert path.statistics().probes_sent == 0  # no probing a path that is not up
    assert link.a.statistics().heartbeats_received > 20
    assert link.b.statistics().heartbeats_received == 0


def test_one_way_loss_after_establishment_loses_both_sides() -> None:
    link = Link()
    link.run_for(10.0)
    assert link.a.established and link.b.established
    link.up["a"] = False
    cut = link.now
    link.run_for(5.0 + 0.1)
    # b stops hearing a; b's next heartbeat (sent at once) tells a, which still hears b.
    assert link.b.state is PathState.LOST
    assert link.a.state is PathState.LOST
    assert link.a.statistics().heartbeats_received > link.b.statistics().heartbeats_received
    assert link.now - cut < 5.2


def _vouched_for(link: Link, seconds: float, *, answered: bool = True) -> None:
    """Run with fastdp's probes (another path to the same neighbour) answered every second."""
    end = link.now + seconds
    while link.now < end:
        link.run_until(min(end, link.now + 1.0))
        if answered:
            for path in link.paths.values():
                path.vouch(link.now)


def test_a_vouched_path_heartbeats_rarely_and_stays_established() -> None:
    link = Link()
    link.run_for(5.0)
    assert link.a.established and link.b.established
    for path in link.paths.values():
        path.relax(True)
    sent = link.a.statistics().heartbeats_sent
    _vouched_for(link, 100.0)
    assert link.a.established and link.b.established
    assert link.a.statistics().times_lost == 0
    assert 9 <= link.a.statistics().heartbeats_sent - sent <= 11  # one per 10 s, not 100


def test_vouching_ended_heartbeats_at_once_and_a_gone_path_is_lost_in_time() -> None:
    link = Link()
    link.run_for(5.0)
    for path in link.paths.values():
        path.relax(True)
    _vouched_for(link, 30.0)
    # fastdp stops being answered: the link is cut. Three silent seconds later fastdp is down
    # and the paths are on their own again.
    link.up["a"] = link.up["b"] = False
    cut = link.now
    _vouched_for(link, 3.0, answered=False)
    sent = link.a.statistics().heartbeats_sent
    for path in link.paths.values():
        path.relax(False)
    assert any(isinstance(action, SendHeartbeat) for action in link.a.tick(link.now))
    assert link.a.statistics().heartbeats_sent == sent + 1
    link.run_until(cut + 5.0 - 0.05)
    assert link.a.established  # what fastdp last proved still counts ...
    link.run_until(cut + 5.05)
    assert link.a.state is PathState.LOST and link.b.state is PathState.LOST  # ... no longer


def test_vouching_cannot_stand_in_for_the_first_heartbeat() -> None:
    link = Link()
    link.up["a"] = link.up["b"] = False
    for path in link.paths.values():
        path.relax(True)
    _vouched_for(link, 10.0)
    assert link.a.state is PathState.UNKNOWN and link.b.state is PathState.UNKNOWN


def test_emsgsize_caps_the_search_at_the_local_mtu() -> None:
    link = Link(mtu=1400, local_mtu=1000)
    link.run_for(30.0)
    assert link.a.payload_mtu == 1000  # refused by our own kernel
    assert link.b.payload_mtu == 1400  # the other way round nothing stops it
    assert link.a.statistics().too_big_errors >= 1


def test_emsgsize_on_data_lowers_the_mtu_and_searches_again_at_once() -> None:
    link = Link(mtu=1400)
    link.run_for(30.0)
    assert link.a.payload_mtu == 1400
    link.local_mtu["a"] = 1100  # say, the route moved to a smaller interface
    link.a.on_send_error_too_big(link.now, 1250)  # a data datagram of 1250 was refused
    assert link.a.payload_mtu == 548 and link.a.searching
    assert link.a.next_wake() == link.now
    link.run_for(2.0)
    assert link.a.payload_mtu == 1100
    assert link.b.payload_mtu == 1400


def test_emsgsize_above_the_mtu_in_use_changes_nothing_in_use() -> None:
    link = Link(mtu=1000)
    link.run_for(30.0)
    link.a.on_send_error_too_big(link.now, 1200)
    assert link.a.payload_mtu == 1000 and not link.a.searching


def test_periodic_reprobe_finds_a_larger_mtu() -> None:
    link = Link(mtu=1000, reprobe_interval=60.0)
    link.run_for(30.0)
    assert link.a.payload_mtu == 1000
    link.mtu = 1350
    link.run_for(20.0)
    assert link.a.payload_mtu == 1000  # not yet due
    link.run_for(30.0)
    assert link.a.payload_mtu == link.b.payload_mtu == 1350


def test_stray_and_mismatched_acks_are_ignored() -> None:
    link = Link(mtu=1000)
    link.run_for(30.0)
    before = link.a.payload_mtu
    link.a.on_probe_ack(link.now, 999_999, 1400)
    link.a.on_probe_ack(link.now, link.probes["a"][-1].probe_id, 1470)
    assert link.a.payload_mtu == before
    assert link.a.statistics().stray_acks == 2


def test_statistics_are_a_frozen_snapshot() -> None:
    link = Link()
    link.run_for(5.0)
    stats = link.a.statistics()
    assert stats.state is PathState.ESTABLISHED and stats.payload_mtu == 1400
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.payload_mtu = 1  # type: ignore[misc]
    assert dataclasses.asdict(stats)["payload_mtu"] == 1400


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        UdpPath(max_payload=500)
    with pytest.raises(ValueError):
        UdpPath(max_payload=MAX, heartbeat_interval=5.0, dead_after=5.0)
