"""The fast datapath's pure core: probes, advertisements, liveness and what the kernel holds."""

from __future__ import annotations

import collections
import heapq
import ipaddress
import itertools
import struct
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnet.dataplane.fastdp import core as fastdp
from meshnet.dataplane.fastdp.core import (
    Advertisement,
    Candidate,
    FastState,
    MacOwners,
    PeerProbe,
    Probe,
    ProbeKind,
)
from meshnet.dataplane.kernel import netlink
from meshnet.dataplane.sleeve import forwarder as fw
from meshnet.dataplane.sleeve import vnet as vn
from meshnet.dataplane.sleeve import wire as sw
from meshnet.errors import RemoteProtocolError
from meshnet.gossip.routes import Routes
from tests.unit.test_forwarder import capture, make_forwarder

A, B, C = 0x0A0000000001, 0x0B0000000002, 0x0C0000000003
MAC1, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


# --- probes -------------------------------------------------------------------------------------


def test_probe_mac_is_unicast_locally_administered_and_per_peer() -> None:
    macs = {fastdp.probe_mac(p) for p in (A, B, C)}
    assert len(macs) == 3
    for mac in macs:
        first = int(mac[:2], 16)
        assert first & 1 == 0 and first & 2 == 2


@given(
    kind=st.sampled_from(ProbeKind),
    sender=st.integers(1, 2**48 - 1),
    probe_id=st.integers(0, 2**32 - 1),
    echo=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    size=st.integers(0, 1500),
)
def test_probe_frames_round_trip_at_the_size_asked(
    kind: ProbeKind, sender: int, probe_id: int, echo: tuple[int, int], size: int
) -> None:
    probe = (
        Probe(kind, sender, probe_id, *echo)
        if kind is ProbeKind.ECHO
        else Probe(kind, sender, probe_id)
    )
    frame = fastdp.encode_probe(probe, source=MAC1, destination=MAC2, size=size)
    assert len(frame) == max(size, 42 if kind is ProbeKind.ECHO else 34)
    assert fastdp.decode_probe(frame) == (MAC2, probe)


def test_a_truncated_echo_is_refused() -> None:
    frame = fastdp.encode_probe(
        Probe(ProbeKind.ECHO, A, 7, 3, 100), source=MAC1, destination=MAC2, size=0
    )
    with pytest.raises(RemoteProtocolError):
        fastdp.decode_probe(frame[:-1])


@pytest.mark.parametrize(
    "mangle",
    [
        lambda f: f[:20],  # short
        lambda f: f[:12] + b"\x08\x00" + f[14:],  # another ethertype
        lambda f: f[:14] + b"XXXX" + f[18:],  # no magic
        lambda f: f[:18] + b"\x09" + f[19:],  # unknown kind
        lambda f: f[:20] + b"\x00\x02" + f[22:],  # unknown version
        lambda f: f[:22] + bytes(8) + f[30:],  # sender 0
    ],
)
def test_malformed_probes_are_refused(mangle: Any) -> None:
    frame = fastdp.encode_probe(
        Probe(ProbeKind.PROBE, A, 7), source=MAC1, destination=MAC2, size=64
    )
    with pytest.raises(RemoteProtocolError):
        fastdp.decode_probe(mangle(frame))


# --- advertisements -----------------------------------------------------------------------------


def test_advertisements_round_trip() -> None:
    ad = Advertisement(True, frozenset({MAC1, MAC2}))
    assert fastdp.decode_advertisement(fastdp.encode_advertisement(ad)) == ad
    assert fastdp.decode_advertisement(fastdp.encode_advertisement(Advertisement(False))) == (
        Advertisement(False)
    )
    moved = Advertisement(True, frozenset({MAC1}), port=7001)
    assert fastdp.decode_advertisement(fastdp.encode_advertisement(moved)).port == 7001


def test_an_advertisement_without_a_port_means_the_default() -> None:
    """Peers from before --fastdp-port send none: their VXLAN is on 6784."""
    old = msgpack.packb({"w": True, "m": []})
    assert fastdp.decode_advertisement(old).port == 6784


def test_an_advertisement_says_whether_its_sender_passes_broadcasts_on() -> None:
    """Peers from before PASSING broadcasts do not say: they would deliver one twice, so they
    must not get one (the sleeve's floods then go by destination)."""
    assert Advertisement(True).passing
    assert not fastdp.decode_advertisement(msgpack.packb({"w": True, "m": [], "e": True})).passing
    no = fastdp.encode_advertisement(Advertisement(True, passing=False))
    assert not fastdp.decode_advertisement(no).passing
    with pytest.raises(RemoteProtocolError):
        fastdp.decode_advertisement(msgpack.packb({"w": True, "f": 1}))


def test_the_device_is_named_after_its_port() -> None:
    assert fastdp.device_name(6784) == fastdp.DEVICE == "vxlan-6784"
    assert fastdp.device_name(7001) == "vxlan-7001"
    assert fastdp.device_names(7001) == ("vxlan-7001", "vxlan6-7001")


def test_each_pinned_mac_goes_on_the_device_of_its_owners_family() -> None:
    owners = MacOwners()
    owners.update(B, frozenset({MAC1}))
    owners.update(C, frozenset({MAC2}))
    candidates = {B: Candidate("172.31.0.2", up=True), C: Candidate("fd6d::2", up=True)}
    entries = fastdp.kernel_entries(candidates, owners, local=frozenset())
    pb, pc = fastdp.probe_mac(B), fastdp.probe_mac(C)
    assert fastdp.pins(entries) == {(pb, 4), (MAC1, 4), (pc, 6), (MAC2, 6)}
    # A container that moved from an IPv4 neighbour to an IPv6 one changes device, not just
    # owner: the pin is a different (MAC, family) pair, so the old one is removed.
    owners.update(C, frozenset({MAC1, MAC2}))
    moved = fastdp.pins(fastdp.kernel_entries(candidates, owners, local=frozenset()))
    assert (MAC1, 6) in moved and (MAC1, 4) not in moved


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",  # not msgpack
        msgpack.packb([1, 2]),
        msgpack.packb({"m": []}),  # no willingness
        msgpack.packb({"w": 1, "m": []}),
        msgpack.packb({"w": True, "m": "x"}),
        msgpack.packb({"w": True, "m": [b"\x02\x00"]}),  # short MAC
        msgpack.packb({"w": True, "m": [b"\x01\x00\x5e\x00\x00\x01"]}),  # multicast
        msgpack.packb({"w": True, "m": [bytes(6)]}),  # the flood address
        msgpack.packb({"w": True, "m": [b"\x02\x00\x00\x00\x00\x01"] * 70000}),
        msgpack.packb({"w": True, "m": [], "p": 0}),  # no such port
        msgpack.packb({"w": True, "m": [], "p": 70000}),
        msgpack.packb({"w": True, "m": [], "p": True}),
        msgpack.packb({"w": True, "m": [], "p": "6784"}),
    ],
)
def test_malformed_advertisements_are_refused(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        fastdp.decode_advertisement(payload)


def test_willingness_turned_off_encrypted_and_trusted() -> None:
    trusted = [ipaddress.ip_network("172.31.0.0/16")]
    assert fastdp.willing(enabled=True, encrypted=False, address="10.0.0.1", trusted=())
    assert not fastdp.willing(enabled=False, encrypted=False, address="10.0.0.1", trusted=())
    assert not fastdp.willing(enabled=True, encrypted=True, address="10.0.0.1", trusted=trusted)
    assert fastdp.willing(enabled=True, encrypted=True, address="172.31.4.2", trusted=trusted)
    assert not fastdp.willing(enabled=True, encrypted=True, address="bogus", trusted=trusted)


# --- liveness -----------------------------------------------------------------------------------


def test_a_neighbour_is_up_after_its_first_answer_and_down_when_answers_stop() -> None:
    probe = PeerProbe(started=100.0, interval=0.5, down_after=2.0)
    first = probe.tick(100.0)
    assert first is not None and probe.state is FastState.PROBING
    assert probe.tick(100.1) is None  # not due yet
    assert probe.on_ack(100.2, first) and probe.state is FastState.UP
    assert not probe.on_ack(100.2, first)  # an answer counts once
    for step in range(1, 20):  # probes go out every interval, and get no answer
        probe.tick(100.2 + step / 10)
    assert probe.state is FastState.UP
    probe.tick(102.3)
    assert probe.state is FastState.DOWN
    assert probe.statistics().downs == 1


def test_a_neighbour_that_never_answers_goes_down_and_is_retried_slowly() -> None:
    probe = PeerProbe(started=0.0, interval=0.5, down_after=2.0)
    sent = [t / 10 for t in range(0, 200) if probe.tick(t / 10) is not None]
    assert probe.state is FastState.DOWN
    after_down = [t for t in sent if t > 2.0]
    assert all(b - a >= 5.0 - 1e-9 for a, b in itertools.pairwise(after_down))
    late = probe.tick(25.0)
    assert late is not None and probe.on_ack(25.001, late)
    assert probe.state is FastState.UP


def _echo_pair(
    loss: Callable[[str, float], bool] = lambda sender, now: False,
) -> tuple[dict[str, PeerProbe], collections.Counter[str]]:
    """Two trackers that probe each other with ECHO frames for 60 s (10 ms one way), as the
    service drives them: on the beat, and at once when an ECHO finds the receiver not up."""
    probes = {"a": PeerProbe(started=0.0), "b": PeerProbe(started=0.3)}
    sent: collections.Counter[str] = collections.Counter()
    events: list[tuple[float, int, str, int, int, int]] = []  # at, seq, to, id, echo, held
    seq = itertools.count()

    def send(sender: str, probe_id: int, now: float) -> None:
        sent[sender] += 1
        if not loss(sender, now):
            echo_id, held = probes[sender].echo(now)
            to = "b" if sender == "a" else "a"
            heapq.heappush(events, (now + 0.01, next(seq), to, probe_id, echo_id, held))

    now = 0.0
    while now < 60.0:
        due = min(p.next_wake() for p in probes.values())
        if events:
            due = min(due, events[0][0])
        now = max(now + 0.001, due)  # as the service: never again at the same instant
        while events and events[0][0] <= now:
            _, _, to, probe_id, echo_id, held = heapq.heappop(events)
            _, answer = probes[to].on_echo(now, probe_id, echo_id, held)
            if answer:
                send(to, probes[to].answer_now(now), now)
        for name, p in probes.items():
            probe_id = p.tick(now)
            if probe_id is not None:
                send(name, probe_id, now)
    return probes, sent


def test_echo_probes_bring_a_pair_up_at_once_and_keep_it_with_one_frame_each_way() -> None:
    probes, sent = _echo_pair()
    for p in probes.values():
        assert p.state is FastState.UP and p.statistics().ups == 1
        assert p.statistics().rtt_ms == pytest.approx(20.0, abs=0.01)  # holding not counted
    # Once a second for the first 10 s up, then every 2 s: a probe and an ack each way, once
    # a second, would be 120.
    assert 34 <= sent["a"] <= 38 and 34 <= sent["b"] <= 38


def test_a_settled_pair_probes_every_two_seconds_and_survives_a_lost_frame() -> None:
    def loss(sender: str, now: float) -> bool:
        return sender == "a" and 40.0 <= now < 41.9  # one of a's settled beats

    probes, _ = _echo_pair(loss)
    assert probes["a"].current_interval(60.0) == 2.0
    for p in probes.values():
        assert p.state is FastState.UP and p.statistics().downs == 0


def test_echo_probes_go_down_when_one_way_fails_and_come_back() -> None:
    def loss(sender: str, now: float) -> bool:
        return sender == "a" and 20.0 <= now < 30.0

    probes, _ = _echo_pair(loss)
    for p in probes.values():  # both saw it: b heard nothing, a heard no answers
        assert p.statistics().downs == 1 and p.statistics().ups == 2
        assert p.state is FastState.UP
        assert p.current_interval(35.0) == 1.0  # back up at 30: a second's beat again


def test_an_echo_prepared_before_the_probe_it_answers_arrived_holds_it_for_no_time() -> None:
    probe = PeerProbe(started=0.0)
    probe.on_echo(5.0, 42, 0, 0)
    assert probe.echo(4.99) == (42, 0)  # the shell read its clock before an await
    frame = fastdp.encode_probe(
        Probe(ProbeKind.ECHO, A, 1, 42, -5), source=MAC1, destination=MAC2, size=0
    )
    assert fastdp.decode_probe(frame)[1].held_us == 0
    assert probe.echo(5.5) == (42, 500_000)
    assert probe.echo(11.0) == (0, 0)  # older than down_after: nothing to answer


def test_stale_and_unknown_answers_are_ignored() -> None:
    probe = PeerProbe(started=0.0, interval=0.5, down_after=2.0)
    old = probe.tick(0.0)
    assert old is not None
    probe.tick(3.0)  # the first probe is long lost
    assert not probe.on_ack(3.0, old)
    assert not probe.on_ack(3.0, 999)
    assert probe.state is FastState.DOWN


def test_probe_ids_are_random_and_only_the_id_sent_is_an_answer() -> None:
    probe = PeerProbe(started=0.0, interval=0.5, down_after=2.0)
    ids = [probe.tick(t / 2) for t in range(4)]
    assert all(i is not None and 0 < i < 2**32 for i in ids)
    assert len(set(ids)) == 4
    last = ids[-1]
    assert last is not None
    # A forger who saw one id (or counted on from it) answers nothing: ACK or ECHO.
    for guess in {last + 1, last - 1, 1, 2, 0}:
        assert not probe.on_ack(1.6, guess)
        assert probe.on_echo(1.6, 77, guess, 0) == (False, True)
    assert probe.state is FastState.PROBING and probe.statistics().answered == 0
    assert probe.on_echo(1.7, 78, last, 0) == (True, False)
    assert probe.state is FastState.UP


def test_probe_ids_come_from_the_source_given_and_never_repeat_while_outstanding() -> None:
    drawn = iter([7, 7, 7, 9, 11])
    probe = PeerProbe(started=0.0, interval=0.5, down_after=2.0, new_id=lambda: next(drawn))
    assert probe.tick(0.0) == 7
    assert probe.tick(0.5) == 9  # 7 is still waiting for its answer
    assert probe.answer_now(0.6) == 11
    assert probe.on_ack(0.7, 9) and not probe.on_ack(0.7, 8)


def test_random_probe_ids_are_32_bits_and_never_zero() -> None:
    ids = [fastdp.random_probe_id() for _ in range(200)]
    assert all(0 < i < 2**32 for i in ids)
    assert len(set(ids)) == len(ids)  # a repeat in 200 draws: 5 in a million by chance
    assert max(ids) >= 2**31  # all 32 bits used (a miss: 2**-200)


# --- programming --------------------------------------------------------------------------------


def test_candidates_get_probe_entries_and_only_up_ones_get_floods_and_macs() -> None:
    owners = MacOwners()
    owners.update(B, frozenset({MAC1}))
    owners.update(C, frozenset({MAC2}))
    entries = fastdp.kernel_entries(
        {B: Candidate("172.31.0.2", up=True), C: Candidate("172.31.1.2", up=False)},
        owners,
        local=frozenset(),
    )
    pb, pc = fastdp.probe_mac(B), fastdp.probe_mac(C)
    assert entries.remotes == {
        (pb, "172.31.0.2"),
        (fastdp.FLOOD_MAC, "172.31.0.2"),
        (MAC1, "172.31.0.2"),
        (pc, "172.31.1.2"),
    }
    assert entries.pinned == {pb, pc, MAC1}


def test_a_mac_claimed_twice_belongs_to_the_latest_claim_and_local_macs_stay_local() -> None:
    owners = MacOwners()
    owners.update(B, frozenset({MAC1, MAC2}))
    owners.update(C, frozenset({MAC1}))  # the container moved to C
    owners.update(B, frozenset({MAC1, MAC2}))  # B still lists it (its bridge forgets slowly)
    assert owners.owned([B, C], local=frozenset()) == {B: {MAC2}, C: {MAC1}}
    assert owners.owned([B], local=frozenset()) == {B: {MAC1, MAC2}}  # C is not up
    assert owners.owned([B, C], local=frozenset({MAC2})) == {C: {MAC1}}
    owners.forget(C)
    assert owners.owned([B, C], local=frozenset()) == {B: {MAC1, MAC2}}


# --- the sleeve's side: what it no longer sends ----------------------------------------------


class RecordingSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[str, int, int]] = []  # (address, destination, flags)

    def sendto(self, data: Any, addr: Any) -> int:
        header = sw.parse_header(bytes(data))
        self.sent.append((addr[0], header.destination, header.flags))
        return len(data)

    def sendmsg(self, buffers: list[Any], cmsg: Any, flags: int, addr: Any) -> int:
        return self.sendto(b"".join(bytes(b) for b in buffers), addr)


def _forwarder(
    fast: frozenset[int], pinned: frozenset[bytes] = frozenset()
) -> tuple[fw.Forwarder, RecordingSocket]:
    """A is us; B is a neighbour, C is reached through B."""

    def neighbour(peer: int, ip: str) -> fw.Neighbour:
        return fw.Neighbour(
            peer, (ip, 6783), None, None, fw.Sequences(), sw.ReplayWindow(), 1500, True
        )

    snapshot = fw.Snapshot(
        local=A,
        routes=Routes(
            local=A,
            unicast={B: B, C: B},
            broadcast={A: (B,)},
            distance={A: 0, B: 1, C: 2},
            graph={A: (B,), B: (A, C), C: (B,)},
        ),
        neighbours={B: neighbour(B, "172.31.0.2")},
        overlay_mtu=1354,
        fastdp=fast,
        fastdp_macs=pinned,
    )
    sock = RecordingSocket()
    return make_forwarder(snapshot, sock), sock


BROADCAST_FRAME = b"\xff" * 6 + bytes.fromhex("020000000001") + b"\x08\x06" + bytes(28)


def test_without_fastdp_a_broadcast_goes_down_our_tree() -> None:
    f, sock = _forwarder(frozenset())
    capture(f, vn.VNET_NONE + BROADCAST_FRAME)
    f.flush()
    assert sock.sent == [("172.31.0.2", 0, sw.BROADCAST)]


def test_with_fastdp_a_broadcast_goes_only_to_the_peers_vxlan_does_not_reach() -> None:
    f, sock = _forwarder(frozenset({B}))
    capture(f, vn.VNET_NONE + BROADCAST_FRAME)
    f.flush()
    # C, through B, addressed to C: B relays it without delivering a second copy.
    assert sock.sent == [("172.31.0.2", C, 0)]


OWNER_MAC = bytes.fromhex("02000000000b")


def _unicast_to_b(pinned: frozenset[bytes]) -> tuple[fw.Forwarder, RecordingSocket]:
    f, sock = _forwarder(frozenset({B}), pinned)
    f._switch.from_peer(B, OWNER_MAC, b"\xff" * 6, time.monotonic())
    frame = OWNER_MAC + bytes.fromhex("020000000001") + b"\x08\x00" + bytes(40)
    capture(f, vn.VNET_NONE + frame)
    f.flush()
    return f, sock


def test_unicast_for_a_mac_pinned_on_vxlan_is_left_to_vxlan() -> None:
    f, sock = _unicast_to_b(frozenset({OWNER_MAC}))
    assert sock.sent == []
    assert f.statistics()["dropped"] == {"on_fastdp": 1}


def test_unicast_for_a_fastdp_peer_mac_not_yet_pinned_still_goes_over_the_sleeve() -> None:
    # The bridge learned the MAC on the TAP while the sleeve carried it, so it sent the frame
    # there alone: dropping it would lose it until the MAC is pinned on VXLAN.
    f, sock = _unicast_to_b(frozenset())
    assert sock.sent == [("172.31.0.2", B, 0)]
    assert f.statistics()["dropped"] == {}


def _neighbour_notification(kind: int, family: int) -> bytes:
    body = struct.pack("=BxxxiHBB", family, 3, 0x02, 0, 0)  # ndmsg: family, ifindex, state...
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_only_bridge_forwarding_table_notifications_make_the_macs_be_read_again() -> None:
    learned = _neighbour_notification(28, 7)  # RTM_NEWNEIGH, AF_BRIDGE
    aged_out = _neighbour_notification(29, 7)  # RTM_DELNEIGH
    arp = _neighbour_notification(28, 2)  # AF_INET: an ARP entry, not the bridge
    assert netlink.fdb_changed(learned) and netlink.fdb_changed(aged_out)
    assert not netlink.fdb_changed(arp)
    assert netlink.fdb_changed(arp + learned)  # a batch: any bridge change counts
    # On a port whose entries are not local MACs (VXLAN, the TAP): not news for the scan.
    assert not netlink.fdb_changed(learned, ignored={3})
    assert netlink.fdb_changed(learned, ignored={4})
    assert not netlink.fdb_changed(b"") and not netlink.fdb_changed(b"\0" * 20)


def test_link_notifications_are_new_and_deleted_links() -> None:
    new, deleted = _neighbour_notification(16, 0), _neighbour_notification(17, 0)
    assert netlink.links_changed(new) and netlink.links_changed(deleted)
    assert netlink.links_changed(_neighbour_notification(28, 7) + deleted)
    assert not netlink.links_changed(_neighbour_notification(28, 7))
    assert not netlink.links_changed(b"") and not netlink.links_changed(b"\0" * 20)


def route_notification(kind: int, table: int) -> bytes:
    body = struct.pack("=BBBBBBBBI", 2, 24, 0, 0, table, 3, 0, 1, 0)  # rtmsg: ..., table, ...
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_route_notifications_count_unless_only_our_own_addresses_changed() -> None:
    added, removed = route_notification(24, 254), route_notification(25, 254)  # main table
    local = route_notification(24, 255)  # an address of ours: the local table
    assert netlink.routes_changed(added) and netlink.routes_changed(removed)
    assert netlink.routes_changed(route_notification(24, 100))  # policy routing's tables
    assert not netlink.routes_changed(local)
    assert netlink.routes_changed(local + added)
    assert not netlink.routes_changed(_neighbour_notification(28, 2))
    assert not netlink.routes_changed(b"") and not netlink.routes_changed(b"\0" * 20)
