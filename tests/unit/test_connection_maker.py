"""The connection maker's plan: who to dial, when, and how backoff grows."""

from __future__ import annotations

import random

import pytest

from meshnet.errors import UserError
from meshnet.gossip.connection_maker import (
    MAX_DELAY,
    MAX_DISCOVERED,
    MAX_DISCOVERED_DELAY,
    MAX_DISCOVERED_PER_PEER,
    UNROUTABLE_SWEEP,
    ConnectionMaker,
    Source,
    TargetState,
    listen_address,
    normalize_address,
    select_discovered,
    select_traffic,
)


def maker(discovery: bool = True) -> ConnectionMaker:
    return ConnectionMaker(random.Random(1), discovery=discovery)


def test_new_targets_are_dialled_at_once_and_not_twice() -> None:
    m = maker()
    m.add("10.0.0.2:6783", Source.LAUNCH, now=0)
    assert m.plan(set(), 10, now=0)[0] == ["10.0.0.2:6783"]
    assert m.plan(set(), 10, now=0)[0] == []  # still connecting


@pytest.mark.parametrize(
    ("source", "cap"),
    [
        (Source.LAUNCH, MAX_DELAY),
        (Source.CONNECT, MAX_DELAY),
        (Source.DISCOVERED, MAX_DISCOVERED_DELAY),
        (Source.TRAFFIC, MAX_DISCOVERED_DELAY),  # learned from gossip too
    ],
)
def test_failures_back_off_exponentially_with_jitter_up_to_a_cap(
    source: Source, cap: float
) -> None:
    """A discovered target backs off further: an idle router must not keep dialling every
    advertised peer it cannot reach once a minute."""
    m = maker()
    m.add("a:1", source, now=0)
    now, delays = 0.0, []
    for _ in range(30):
        dial, _ = m.plan(set(), 10, now)
        assert dial == ["a:1"]
        m.attempt_failed("a:1", "connection refused", now)
        retry_at = m.targets()[0].next_attempt
        assert retry_at is not None
        delays.append(retry_at - now)
        assert m.plan(set(), 10, now)[0] == []  # not before its time
        _, wake = m.plan(set(), 10, now)
        assert wake == pytest.approx(min(retry_at, now + MAX_DISCOVERED_DELAY))
        now = retry_at
    assert 0.8 <= delays[0] <= 1.2
    assert delays[3] > delays[1] > delays[0]
    assert max(delays) <= cap * 1.2 and delays[-1] >= cap * 0.8
    # A discovered target (likely out of reach: another network) reaches its cap in 6 dials.
    reaching_cap = next(i for i, d in enumerate(delays) if d >= cap * 0.8)
    assert reaching_cap <= 6 if not source.given else reaching_cap >= 8
    assert m.targets()[0].last_error == "connection refused"


def test_free_slots_limit_dials() -> None:
    m = maker()
    for i in range(5):
        m.add(f"10.0.0.{i}:6783", Source.LAUNCH, now=0)
    assert len(m.plan(set(), 2, now=0)[0]) == 2
    assert len(m.plan(set(), 0, now=0)[0]) == 0
    assert len(m.plan(set(), 10, now=0)[0]) == 3


def test_a_lost_connection_is_dialled_again_and_a_connected_peer_is_not() -> None:
    m = maker()
    m.add("b:1", Source.LAUNCH, now=0)
    m.plan(set(), 10, now=0)
    m.attempt_succeeded("b:1", peer=42)
    assert m.plan({42}, 10, now=1)[0] == []
    assert m.targets()[0].state is TargetState.CONNECTED
    dial, wake = m.plan(set(), 10, now=2)  # peer 42 went away
    assert dial == [] and wake <= 3
    assert m.plan(set(), 10, now=wake)[0] == ["b:1"]


def test_a_target_that_dialled_us_is_not_dialled_while_connected() -> None:
    m = maker()
    m.add("10.0.0.2:6783", Source.LAUNCH, now=0)
    assert m.plan(set(), 10, now=0)[0] == ["10.0.0.2:6783"]
    m.attempt_failed("10.0.0.2:6783", "refused", now=0)  # it was not up yet
    m.reached_by(listen_address("::ffff:10.0.0.2", 6783), peer=42)  # then it dialled us
    assert m.plan({42}, 10, now=100)[0] == []
    assert m.targets()[0].state is TargetState.CONNECTED
    _, wake = m.plan(set(), 10, now=101)  # that connection went away: dial again
    assert m.plan(set(), 10, now=wake)[0] == ["10.0.0.2:6783"]


def test_a_dial_in_flight_is_left_to_the_tie_break() -> None:
    m = maker()
    m.add("10.0.0.2:6783", Source.LAUNCH, now=0)
    m.plan(set(), 10, now=0)
    m.reached_by("10.0.0.2:6783", peer=42)
    assert m.targets()[0].state is TargetState.CONNECTING


def test_listen_addresses_are_spelled_as_targets() -> None:
    assert listen_address("10.0.0.2", 6783) == normalize_address("10.0.0.2")
    assert listen_address("::ffff:10.0.0.2", 7000) == "10.0.0.2:7000"
    assert listen_address("fd00::0002", 6783) == normalize_address("[fd00::2]")


def test_discovered_targets_follow_gossip_and_respect_no_discovery() -> None:
    m = maker()
    m.set_discovered({"c:1", "d:1"}, now=0)
    assert {t.address for t in m.targets()} == {"c:1", "d:1"}
    m.add("d:1", Source.CONNECT, now=0)  # named by the user: kept when gossip forgets it
    m.set_discovered(set(), now=1)
    assert [(t.address, t.source) for t in m.targets()] == [("d:1", Source.CONNECT)]
    off = maker(discovery=False)
    off.set_discovered({"c:1"}, now=0)
    assert off.targets() == []


def test_a_failing_discovered_target_backs_off_although_gossip_keeps_naming_it() -> None:
    m = maker()
    m.set_discovered({"far:1"}, now=0)
    assert m.plan(set(), 10, now=0)[0] == ["far:1"]
    m.attempt_failed("far:1", "network is unreachable", now=0)
    for step in range(1, 50):
        now = step * 0.01
        m.set_discovered({"far:1"}, now=now)
        assert m.plan(set(), 10, now=now)[0] == []


def test_unroutable_discovered_targets_wait_for_a_route_change_or_one_shared_sweep() -> None:
    """Hundreds of addresses a router has no route to cost one wake-up per sweep, not one
    each on its own backoff; a change of routes makes them due at once."""
    m = maker()
    far = {f"10.9.{i}.1:6783" for i in range(50)}
    m.set_discovered(far | {"10.0.0.2:6783"}, now=0)
    m.add("10.8.0.1:6783", Source.LAUNCH, now=0)
    dial, _ = m.plan(set(), 100, now=0)
    assert len(dial) == 52
    for i, address in enumerate(sorted(far)):
        m.attempt_failed(address, "network is unreachable", now=i * 0.01, unroutable=True)
    # The first retries keep their own backoff (1, 3, 9, 27 s) ...
    first = {t.next_attempt for t in m.targets() if t.address in far}
    assert len(first) == len(far) and all(r is not None and r < 2 for r in first)
    for address in sorted(far):
        for _ in range(4):
            m.attempt_failed(address, "network is unreachable", now=0.5, unroutable=True)
    # ... then they wait together.
    m.attempt_failed("10.0.0.2:6783", "connection refused", now=0.5)  # routable
    m.attempt_failed("10.8.0.1:6783", "network is unreachable", now=0.5, unroutable=True)
    retries = {t.address: t.next_attempt for t in m.targets()}
    sweep = {retries[a] for a in far}
    assert len(sweep) == 1 and 0.5 < sweep.pop() <= 0.5 + UNROUTABLE_SWEEP
    assert retries["10.8.0.1:6783"] is not None and retries["10.8.0.1:6783"] < 2  # its backoff
    assert retries["10.0.0.2:6783"] is not None and retries["10.0.0.2:6783"] < 5

    assert m.routes_changed(now=1.0)
    dial, _ = m.plan(set(), 100, now=1.0)
    assert set(dial) == far | {"10.8.0.1:6783"}  # not the one that failed with a route
    for address in dial:
        m.attempt_failed(address, "network is unreachable", now=1.0, unroutable=True)
    assert not set(m.plan(set(), 100, now=2.0)[0]) & far  # parked again at once
    # A connected or still-connecting target is not touched, and nothing unroutable: False.
    m2 = maker()
    m2.add("10.0.0.3:6783", Source.LAUNCH, now=0)
    m2.plan(set(), 10, now=0)
    assert not m2.routes_changed(now=1.0)


def test_our_own_address_is_never_dialled_again() -> None:
    m = maker()
    m.set_discovered({"self:1"}, now=0)
    m.plan(set(), 10, now=0)
    m.is_ourselves("self:1")
    m.set_discovered({"self:1"}, now=1)
    assert m.targets() == []


def test_forget() -> None:
    m = maker()
    m.add("e:1", Source.CONNECT, now=0)
    assert m.forget("e:1") and not m.forget("e:1")
    assert m.targets() == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1", "10.0.0.1:6783"),
        ("10.0.0.1:7000", "10.0.0.1:7000"),
        ("[fe80::1]:7000", "[fe80::1]:7000"),
        ("fe80::1", "[fe80::1]:6783"),
        ("host-1.example", "host-1.example:6783"),
    ],
)
def test_normalize_address(text: str, expected: str) -> None:
    assert normalize_address(text) == expected


@pytest.mark.parametrize("text", ["10.0.0.1:0", "10.0.0.1:x", "[fe80::1", "", "a..b", "h:99999"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(UserError):
        normalize_address(text)


# --- what other peers advertise -----------------------------------------------------------------


def fake(n: int, port: int = 6783) -> str:
    return f"10.{n >> 16 & 0xFF}.{n >> 8 & 0xFF}.{n & 0xFF}:{port}"


def test_one_peer_advertising_many_connections_gets_its_quota_only() -> None:
    honest = {2: {"10.9.0.1:6783", "10.9.0.2:6783"}}
    liar = {3: {fake(n) for n in range(999)}}
    found = select_discovered({**honest, **liar}, 6783)
    assert honest[2] <= found.addresses
    assert len(found.addresses) == 2 + MAX_DISCOVERED_PER_PEER
    assert found.refused == 999 - MAX_DISCOVERED_PER_PEER
    assert select_discovered({**honest, **liar}, 6783) == found  # deterministic


def test_only_ip_addresses_at_the_mesh_port_are_dialled() -> None:
    advertised = {
        2: {
            "10.0.0.1:6783",
            "[fd00::1]:6783",
            "10.0.0.2:22",
            "[fd00::2]:7000",
            "example.com:6783",
            "224.0.0.1:6783",
            "0.0.0.0:6783",
            "255.255.255.255:6783",
            "[::ffff:10.0.0.3]:6783",  # not spelled as targets are
        }
    }
    found = select_discovered(advertised, 6783)
    assert found.addresses == {"10.0.0.1:6783", "[fd00::1]:6783"}
    assert found.refused == 7
    assert select_discovered({2: {"10.0.0.1:7000"}}, 7000).addresses == {"10.0.0.1:7000"}


def test_many_advertising_peers_share_the_overall_cap_in_turns() -> None:
    advertised = {peer: {fake(peer * 100 + i) for i in range(10)} for peer in range(1, 101)}
    found = select_discovered(advertised, 6783)
    assert len(found.addresses) == MAX_DISCOVERED
    assert found.refused == 1000 - MAX_DISCOVERED
    # Every peer got its first turns before anyone got a later one.
    assert all(len(advertised[peer] & found.addresses) >= 2 for peer in advertised)


# --- flat networks: --discovery-limit and traffic targets ---------------------------------------


def test_discovered_dials_stop_at_the_discovery_slots_but_given_and_traffic_ones_do_not() -> None:
    m = maker()
    m.set_discovered({f"10.0.0.{i}:6783" for i in range(2, 12)}, now=0)
    m.add("10.0.1.1:6783", Source.LAUNCH, now=0)
    assert m.set_traffic({"10.0.2.1:6783"}, now=0)
    dial, wake = m.plan(set(), 100, now=0, discovery_slots=2)
    assert {"10.0.1.1:6783", "10.0.2.1:6783"} <= set(dial)
    assert len([a for a in dial if a.startswith("10.0.0.")]) == 2
    assert wake == MAX_DISCOVERED_DELAY  # the eight left waiting wake nothing on their own
    assert m.plan(set(), 100, now=1, discovery_slots=0)[0] == []
    # A connection that ends frees a slot (the router wakes the maker then): one more dial.
    dial, _ = m.plan(set(), 100, now=2, discovery_slots=1)
    assert len(dial) == 1 and dial[0].startswith("10.0.0.")


def test_each_maker_dials_discovered_targets_in_its_own_order() -> None:
    addresses = {f"10.0.0.{i}:6783" for i in range(2, 102)}
    firsts = set()
    for seed in range(8):
        m = ConnectionMaker(random.Random(seed))
        m.set_discovered(addresses, now=0)
        firsts.add(tuple(m.plan(set(), 100, now=0, discovery_slots=4)[0]))
    # A flat network whose routers all dialled the lowest addresses would make a few hubs.
    assert len(firsts) == 8


def test_traffic_targets_follow_the_traffic_and_outrank_discovery() -> None:
    m = maker()
    m.set_discovered({"10.0.0.2:6783", "10.0.0.3:6783"}, now=0)
    assert m.set_traffic({"10.0.0.3:6783"}, now=0)  # a discovered target becomes wanted
    assert not m.set_traffic({"10.0.0.3:6783"}, now=1)  # nothing new
    sources = {t.address: t.source for t in m.targets()}
    assert sources == {"10.0.0.2:6783": Source.DISCOVERED, "10.0.0.3:6783": Source.TRAFFIC}
    assert m.plan(set(), 100, now=1, discovery_slots=0)[0] == ["10.0.0.3:6783"]
    m.set_discovered(set(), now=2)  # gossip forgets it: traffic still wants it
    assert [t.address for t in m.targets()] == ["10.0.0.3:6783"]
    m.attempt_succeeded("10.0.0.3:6783", peer=3)
    m.set_traffic(set(), now=3)  # a neighbour now: no longer wanted, but kept while connected
    assert [t.state for t in m.targets()] == [TargetState.CONNECTED]
    m.plan(set(), 100, now=4)  # the connection ended: the next report says if still wanted
    assert m.targets() == []
    m.add("10.0.0.4:6783", Source.CONNECT, now=3)
    m.set_traffic({"10.0.0.4:6783"}, now=3)  # the user's target stays the user's
    assert [t.source for t in m.targets()] == [Source.CONNECT]
    off = maker(discovery=False)
    assert not off.set_traffic({"10.0.0.3:6783"}, now=0)
    assert off.targets() == []


def test_a_traffic_target_is_where_most_peers_dialled_it_and_at_the_mesh_port() -> None:
    listening = {
        1: {"10.0.0.2:6783": 3, "10.0.0.9:6783": 1},
        2: {"10.0.0.5:6783": 1, "10.0.0.4:6783": 1},  # a tie: the lowest
        3: {"10.0.0.7:7000": 5, "example.com:6783": 2},  # nothing dialable
    }
    assert select_traffic(listening, 6783) == {"10.0.0.2:6783", "10.0.0.4:6783"}


def test_discovery_dials_the_least_connected_peers_first() -> None:
    """Else the first hosts of a flat network, dialled by all who came after, become hubs."""
    m = maker()
    load = {f"10.0.0.{i}:6783": 40 - i for i in range(2, 12)}  # .11 has the fewest
    m.set_discovered(set(load), now=0, load=load)
    assert m.plan(set(), 100, now=0, discovery_slots=3)[0] == [
        "10.0.0.11:6783",
        "10.0.0.10:6783",
        "10.0.0.9:6783",
    ]
