"""Hole punching's pure core (issue 19, point 2) and the punched edges in the mesh's routes.

The punching itself, through real nftables NATs, is tests/net/test_nat.py's."""

from __future__ import annotations

import random

import pytest

from meshnet.cli.status import punch_summary
from meshnet.dataplane.punch import core
from meshnet.dataplane.punch.core import NatKind, Offer, Punching, Seen
from meshnet.errors import RemoteProtocolError
from meshnet.gossip.mesh import Mesh
from meshnet.gossip.topology import Connection, PeerEntry, decode_entries, encode_entries

LOW, HIGH, RELAY = 0x0A0000000001, 0x0A0000000002, 0x0A0000000003


def punching(name: int, nat_ip: str, *, encrypted: bool = True) -> Punching:
    p = Punching(local=name, local_port=6783, encrypted=encrypted, rng=random.Random(name))
    p.seen_by(RELAY, (nat_ip, 40000 + name % 7))  # a port the NAT picked towards RELAY
    return p


def test_messages_round_trip_and_malformed_ones_are_refused() -> None:
    offer = Offer(7, (("198.18.0.2", 6783), ("fd00::2", 6783)), bytes(32))
    assert core.decode(core.encode(offer)) == offer
    assert core.decode(core.encode(Seen(("198.18.1.2", 1234)))) == Seen(("198.18.1.2", 1234))
    for bad in (
        b"\xc1",
        core.encode(Seen(("198.18.1.2", 1))).replace(b"seen", b"what"),
        core.encode(Offer(7, (("127.0.0.1", 6783),), None)),  # loopback: not a host's address
        core.encode(Offer(7, (("198.18.0.2", 6783),) * 5, None)),  # too many candidates
        core.encode(Offer(7, (("198.18.0.2", 6783),), b"short")),
        core.encode(Offer(7, (("198.18.0.2", 6783),), None)).replace(b"6783", b"0"),
        bytes(2000),
    ):
        with pytest.raises(RemoteProtocolError):
            core.decode(bad)


def test_candidates_are_what_neighbours_see_then_our_port_and_the_nat_kind_follows() -> None:
    p = Punching(local=LOW, local_port=6783, encrypted=False, local_ips=frozenset({"10.0.0.5"}))
    assert p.nat_kind() is None and p.can_punch() is not None
    p.seen_by(RELAY, ("10.0.0.5", 6783))
    assert p.nat_kind() == NatKind.NONE
    p.seen_by(RELAY, ("198.18.0.2", 6783))
    assert p.nat_kind() == NatKind.PRESERVING
    p.seen_by(RELAY, ("198.18.0.2", 41000))  # a collision made the NAT pick another port
    assert p.nat_kind() == NatKind.CHANGING and p.can_punch() is None
    assert p.candidates() == (("198.18.0.2", 41000), ("198.18.0.2", 6783))
    p.seen_by(RELAY + 1, ("198.18.0.2", 52000))  # another port towards another neighbour
    assert p.nat_kind() == NatKind.SYMMETRIC and "symmetric" in str(p.can_punch())
    assert p.offers(0.0, {HIGH + 1}) == []
    p.neighbours_are({RELAY})
    assert p.nat_kind() == NatKind.CHANGING


def test_offer_and_answer_give_both_sides_the_same_keys_one_per_direction() -> None:
    low, high = punching(LOW, "198.18.0.2"), punching(HIGH, "198.18.1.2")
    assert high.offers(0.0, {LOW}) == []  # the lower name offers
    [(to, offer)] = low.offers(0.0, {HIGH})
    assert to == HIGH and offer.public_key is not None
    assert offer.candidates == (("198.18.0.2", 40000 + LOW % 7), ("198.18.0.2", 6783))
    answered = high.on_offer(LOW, core.decode(core.encode(offer)), 0.1)
    assert answered is not None
    answer, theirs = answered
    assert theirs is not None and theirs.punching and theirs.keys is not None
    ours = low.on_answer(HIGH, core.decode(core.encode(answer)), 0.2)
    assert ours is not None and ours.keys is not None
    assert ours.keys[0] == theirs.keys[1] and ours.keys[1] == theirs.keys[0]
    assert ours.keys[0] != ours.keys[1]
    assert low.on_answer(HIGH, answer, 0.3) is None  # a repeat
    assert low.counters["answer_repeated"] == 1
    low.established(HIGH)
    assert low.status(1.0, {HIGH: "n2"})["peers"]["n2"]["state"] == "punched"
    assert low.expired(100.0) == []  # up: never expires


def test_an_encrypted_mesh_refuses_offers_without_a_key_and_unexpected_answers() -> None:
    low, high = punching(LOW, "198.18.0.2", encrypted=False), punching(HIGH, "198.18.1.2")
    [(_, offer)] = low.offers(0.0, {HIGH})
    assert high.on_offer(LOW, offer, 0.0) is None
    assert high.counters["offer_without_key"] == 1
    stray = Offer(99, (("198.18.1.2", 6783),), bytes(32), answer=True)
    assert low.on_answer(HIGH, stray, 0.0) is None
    assert low.counters["answer_unexpected"] == 1


def test_a_symmetric_nat_answers_why_and_the_offerer_backs_off() -> None:
    low, high = punching(LOW, "198.18.0.2"), punching(HIGH, "198.18.1.2")
    high.seen_by(RELAY + 1, ("198.18.1.2", 50001))  # two neighbours, two ports: symmetric
    [(_, offer)] = low.offers(0.0, {HIGH})
    answered = high.on_offer(LOW, offer, 0.0)
    assert answered is not None and answered[1] is None and answered[0].candidates == ()
    assert core.decode(core.encode(answered[0])) == answered[0]
    assert low.on_answer(HIGH, answered[0], 0.1) is None
    record = low.status(0.2, {})["peers"][f"{HIGH:012x}"]
    assert record["state"] == "relayed" and "symmetric" in record["reason"]
    assert low.offers(5.0, {HIGH}) == []  # backing off
    assert 0 < record["retry_in"] <= core.RETRY_AFTER * 1.2


def test_an_answer_from_a_peer_that_does_not_know_its_address_yet_is_retried_soon() -> None:
    low = punching(LOW, "198.18.0.2")
    high = Punching(local=HIGH, local_port=6783, encrypted=True)  # no neighbour told it yet
    [(_, offer)] = low.offers(0.0, {HIGH})
    answered = high.on_offer(LOW, offer, 0.0)
    assert answered is not None and answered[0].unpunchable == core.UNKNOWN
    assert low.on_answer(HIGH, answered[0], 0.1) is None
    assert low.records[HIGH].failures == 0
    assert low.offers(0.1 + core.RETRY_SOON * 1.2, {HIGH})


def test_failed_attempts_back_off_exponentially_up_to_a_cap() -> None:
    low = punching(LOW, "198.18.0.2")
    now, delays = 0.0, []
    for _ in range(12):
        assert low.offers(now, {HIGH})
        assert low.expired(now + core.ATTEMPT_TIMEOUT + 1) == [HIGH]
        now += core.ATTEMPT_TIMEOUT + 1
        retry = low.records[HIGH].next_try
        delays.append(retry - now)
        now = retry
    assert delays[1] > 1.5 * delays[0] * 0.8 / 1.2
    assert max(delays) <= core.MAX_RETRY_AFTER * 1.2
    assert low.counters["attempts"] == 12 and low.counters["failures"] == 12


def test_attempts_and_records_are_capped() -> None:
    low = punching(1, "198.18.0.2")
    offers = low.offers(0.0, range(2, 2 + core.MAX_ATTEMPTS * 2))
    assert len(offers) == core.MAX_ATTEMPTS == len(low.attempts)
    for peer in range(2, 2 + core.MAX_TRACKED * 2):
        low.failed(peer, 0.0, "test")  # unknown peers: nothing to fail
        low._record(peer)
    assert len(low.records) <= core.MAX_TRACKED


def test_punched_connections_survive_the_wire_and_count_for_data_routes_only() -> None:
    entry = PeerEntry(
        LOW, "n1", 1, 3,
        (Connection(HIGH, "198.18.1.2:6783", False, True, punched=True),
         Connection(RELAY, "198.18.2.2:6783", True, True)),
    )  # fmt: skip
    assert decode_entries(encode_entries([entry])) == [entry]
    meshes = {n: Mesh(name=n, nickname=f"h{n}", uid=n, rng=random.Random(n)) for n in (1, 2, 3)}
    for a, b in ((1, 3), (2, 3)):
        meshes[a].connection_up(b, address="198.18.2.2:6783", outbound=True, now=0)
        meshes[b].connection_up(a, address="198.18.0.2:6783", outbound=False, now=0)
    for mesh in meshes.values():
        mesh._topology.merge([m.topology[m.name] for m in meshes.values()])
        mesh._topology_changed(0)
    assert meshes[1].data_routes is meshes[1].routes  # nobody lists a punched path
    meshes[1].set_punched(2, "198.18.1.2:6783", 0)
    meshes[2].set_punched(1, "198.18.0.2:6783", 0)
    for mesh in meshes.values():
        mesh._topology.merge([m.topology[m.name] for m in meshes.values()])
        mesh._topology_changed(0)
    for mesh in meshes.values():
        assert mesh.routes.distance.get(1 if mesh.name != 1 else 2) == (1 if mesh.name == 3 else 2)
    assert meshes[1].data_routes.next_hop(2) == 2 and meshes[1].routes.next_hop(2) == 3
    assert meshes[3].data_routes.entry_hop(1, 2) is None  # no longer through the relay
    assert meshes[1].discovered_addresses() == set()  # never a dial target
    meshes[1].set_punched(2, None, 0)
    assert meshes[1].data_routes.next_hop(2) == 3


def test_status_dataplane_says_what_the_nat_is_and_why_a_peer_is_relayed() -> None:
    low = punching(LOW, "198.18.0.2")
    low.offers(0.0, {HIGH})
    low.failed(HIGH, 10.0, "no heartbeat got through (their NAT or ours filters it)")
    text = punch_summary(low.status(11.0, {HIGH: "n2"}))
    assert "NAT: port-changing, seen as 198.18.0.2:40000, 198.18.0.2:6783" in text
    assert "n2: relayed: no heartbeat got through" in text and "again in" in text
    assert punch_summary({"nat": "none", "candidates": [], "peers": {}}) == ""


def test_a_router_not_behind_a_nat_never_offers() -> None:
    """Whoever can reach it dials it: a peer it has no connection to cannot reach it."""
    p = Punching(local=LOW, local_port=6783, encrypted=False, local_ips=frozenset({"10.0.0.5"}))
    p.seen_by(RELAY, ("10.0.0.5", 6783))
    assert p.offers(0.0, {HIGH}) == []
