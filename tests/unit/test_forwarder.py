"""The packet loops' per-frame decisions, with a fake TAP and socket (no threads, no kernel)."""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Any

import pytest

from meshnet.dataplane.kernel import lanes
from meshnet.dataplane.sleeve import forwarder as fw
from meshnet.dataplane.sleeve import vnet as vn
from meshnet.dataplane.sleeve import wire as sw
from meshnet.dataplane.sleeve.switch import Switch
from meshnet.gossip.identity import format_peer_name
from meshnet.gossip.routes import Routes
from tests.unit.test_vnet import build_superframe

LOCAL, PEER = 0x0A0000000001, 0x0B0000000002


class FakeSocket:
    """Records what a send would put on the wire, as (datagram kind, datagram count)."""

    def __init__(self) -> None:
        self.sent: list[tuple[sw.Kind, int]] = []

    def sendto(self, data: Any, addr: Any) -> int:
        self.sent.append((sw.Kind(bytes(data)[1]), 1))
        return len(data)

    def sendmsg(self, buffers: list[Any], cmsg: Any, flags: int, addr: Any) -> int:
        data = b"".join(bytes(b) for b in buffers)
        stride = int.from_bytes(cmsg[0][2], "little") if cmsg else len(data)
        self.sent.append((sw.Kind(data[1]), -(-len(data) // stride)))
        return len(data)


def capture(f: fw.Forwarder, data: bytes) -> None:
    """``data`` (virtio-net header and frame) as if just read from the TAP."""
    f._tap_buffer[: len(data)] = data
    f.captured(len(data))


def receive(f: fw.Forwarder, data: bytes | memoryview, stride: int, addr: Any) -> None:
    """``data`` as if just received from ``addr``, in datagrams of ``stride`` bytes."""
    f._udp_buffer[: len(data)] = data
    f.received(len(data), stride, addr)


def forwarder() -> tuple[fw.Forwarder, FakeSocket]:
    snapshot = fw.Snapshot(
        local=LOCAL,
        routes=Routes(
            local=LOCAL,
            unicast={PEER: PEER},
            broadcast={},
            distance={LOCAL: 0, PEER: 1},
            graph={LOCAL: (PEER,), PEER: (LOCAL,)},
        ),
        neighbours={
            PEER: fw.Neighbour(
                PEER, ("192.0.2.2", 6783), None, None, fw.Sequences(), sw.ReplayWindow(), 1500, True
            )
        },
        overlay_mtu=1354,
    )
    sock = FakeSocket()
    return make_forwarder(snapshot, sock), sock


def make_forwarder(snapshot: fw.Snapshot, sock: Any) -> fw.Forwarder:
    """A forwarder whose loops never run: tests call its per-frame steps directly."""
    return fw.Forwarder(
        tap=None,  # type: ignore[arg-type]
        sock=sock,
        switch=Switch(snapshot.local),
        snapshot=snapshot,
        on_control=lambda *a: None,
        on_too_big=lambda *a: None,
    )


def test_small_frames_go_out_before_a_later_superframe_without_waiting_for_an_idle_tap() -> None:
    f, sock = forwarder()
    v, frame, _ = build_superframe(4, os.urandom(1200 * 8), 1200)
    f._switch.from_peer(PEER, frame[0:6], frame[6:12], time.monotonic())  # the MAC is there
    small = frame[:14] + bytes(50)  # e.g. an ACK or a ping of the same flow
    capture(f, vn.VNET_NONE + small)
    assert sock.sent == []  # batched: more small frames may follow
    capture(f, vn.pack_vnet(v) + frame)
    assert sock.sent == [(sw.Kind.FRAMES, 1), (sw.Kind.SEGMENT, 8)]


FAR = 0x0C0000000003


def relaying_snapshot() -> fw.Snapshot:
    """LOCAL between PEER and FAR, neighbours of it that are not of each other."""
    return fw.Snapshot(
        local=LOCAL,
        routes=Routes(
            local=LOCAL,
            unicast={PEER: PEER, FAR: FAR},
            broadcast={},
            distance={LOCAL: 0, PEER: 1, FAR: 1},
            graph={LOCAL: (PEER, FAR), PEER: (LOCAL,), FAR: (LOCAL,)},
        ),
        neighbours={
            p: fw.Neighbour(
                p, (ip, 6783), None, None, fw.Sequences(), sw.ReplayWindow(), 1500, True
            )
            for p, ip in ((PEER, "192.0.2.2"), (FAR, "192.0.2.3"))
        },
        overlay_mtu=1354,
    )


def test_a_relayed_datagram_keeps_its_origin_and_body_with_one_hop_less() -> None:
    far, snapshot = FAR, relaying_snapshot()
    sent: list[bytes] = []

    class Recording(FakeSocket):
        def sendto(self, data: Any, addr: Any) -> int:
            sent.append(bytes(data))
            return len(data)

    f = make_forwarder(snapshot, Recording())
    body = (64).to_bytes(2, "big") + vn.VNET_NONE + bytes(64)
    header = sw.DatagramHeader(sw.Kind.FRAMES, 0, 7, PEER, far, PEER, 1)
    datagram = memoryview(bytes(sw.encode_datagram(header, body, None)))
    receive(f, datagram, len(datagram), ("192.0.2.2", 6783))
    assert len(sent) == 1
    relayed = sw.parse_header(sent[0])
    assert relayed == header._replace(ttl=6, hop=LOCAL, sequence=1)
    assert sent[0][sw.HEADER_SIZE :] == body
    assert f.statistics()["relayed"] == {
        format_peer_name(far): {"datagrams": 1, "bytes": len(sent[0])}
    }
    # With one hop left, it is not relayed but counted.
    last = memoryview(bytes(sw.encode_datagram(header._replace(ttl=1, sequence=2), body, None)))
    receive(f, last, len(last), ("192.0.2.2", 6783))
    assert len(sent) == 1 and f.statistics()["dropped"] == {"ttl": 1}


class GrowingCounter(collections.Counter[str]):
    """A packet thread's drop counter that gains a reason whenever Python code iterates it, as
    the real thread may between two steps of another thread's loop."""

    def items(self) -> Any:
        for reason, n in super().items():  # live: the insertion below breaks the iteration
            self[f"new-{len(self)}"] = 1
            yield reason, n


def test_statistics_never_iterate_a_packet_threads_live_counters() -> None:
    f, _ = forwarder()
    f._rx.drops = GrowingCounter({"replayed": 2})
    f._tx.drops["runt"] = 1
    assert f.statistics()["dropped"] == {"replayed": 2, "runt": 1}


def segments_from(origin: int, sid: int = 1) -> list[bytes]:
    v, frame, _ = build_superframe(4, os.urandom(1200 * 4), 1200)
    return [
        bytes(
            sw.encode_datagram(
                sw.DatagramHeader(sw.Kind.SEGMENT, 0, 7, origin, LOCAL, PEER, i), b, None
            )
        )
        for i, b in enumerate(sw.segment_bodies(sid, v, frame), 1)
    ]


def test_datagrams_from_a_host_no_neighbour_is_on_are_dropped_unread() -> None:
    f, _ = forwarder()
    for datagram in segments_from(PEER):
        receive(f, memoryview(datagram), len(datagram), ("192.0.2.9", 6783))
    assert f.statistics()["dropped"] == {"stranger": 4}
    assert len(f._reassemblers) == 0


def test_without_a_password_only_a_heartbeat_comes_from_another_port_of_the_neighbour() -> None:
    heard: list[tuple[sw.DatagramHeader, Any]] = []
    f, _ = forwarder()
    f._on_control = lambda header, body, addr: heard.append((header, addr))
    moved = ("192.0.2.2", 40000)  # the neighbour's NAT maps its port here now
    for datagram in segments_from(PEER):
        receive(f, memoryview(datagram), len(datagram), moved)
    assert f.statistics()["dropped"] == {"unknown_sender": 4}
    assert len(f._reassemblers) == 0
    beat = sw.DatagramHeader(sw.Kind.HEARTBEAT, 0, 1, PEER, LOCAL, PEER, 9)
    datagram = bytes(sw.encode_datagram(beat, sw.encode_heartbeat(5, 0, False), None))
    receive(f, datagram, len(datagram), moved)
    assert heard == [(beat, moved)]  # the control plane decides whether the path follows


def test_with_a_password_a_forged_heartbeat_from_another_port_reaches_nobody() -> None:
    key = bytes(range(32))
    heard: list[Any] = []
    f, _ = keyed_forwarder(key)
    f._on_control = lambda *a: heard.append(a)
    beat = sw.DatagramHeader(sw.Kind.HEARTBEAT, 0, 1, PEER, LOCAL, PEER, 9)
    forged = bytes(sw.encode_datagram(beat, sw.encode_heartbeat(5, 0, False), bytes(32)))
    receive(f, forged, len(forged), ("192.0.2.2", 40000))
    assert heard == [] and f.statistics()["dropped"] == {"bad_tag": 1}
    real = bytes(sw.encode_datagram(beat, sw.encode_heartbeat(5, 0, False), key))
    receive(f, real, len(real), ("192.0.2.2", 40000))
    assert len(heard) == 1


def test_made_up_origins_leave_no_reassembler() -> None:
    f, _ = forwarder()
    for origin in range(1000, 1100):
        for datagram in segments_from(origin)[:1]:
            receive(f, memoryview(datagram), len(datagram), ("192.0.2.2", 6783))
    assert f.statistics()["dropped"] == {"unknown_origin": 100}
    assert len(f._reassemblers) == 0


class RecordingTap:
    """Records each frame the forwarder hands the kernel, gathered as the kernel would."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def write_parts(self, parts: list[Any]) -> int:
        self.frames.append(b"".join(bytes(p) for p in parts))
        return len(self.frames[-1])


def superframe_datagrams(key: bytes | None, first_sequence: int = 1) -> tuple[bytes, list[bytes]]:
    """A super-frame PEER sends us, and its SEGMENT datagrams as the sender lays them out."""
    v, frame, _ = build_superframe(4, os.urandom(1302 * 20 + 17), 1302)
    header = sw.DatagramHeader(sw.Kind.SEGMENT, 0, sw.MAX_TTL, PEER, LOCAL, PEER, first_sequence)
    datagrams = sw.encode_datagrams(header, sw.segment_bodies(3, v, frame), key)
    return vn.pack_vnet(v) + frame, [bytes(d) for d in datagrams]


def keyed_forwarder(key: bytes | None) -> tuple[fw.Forwarder, RecordingTap]:
    f, _ = forwarder()
    neighbour = f._snapshot.neighbours[PEER]
    snapshot = fw.Snapshot(
        local=LOCAL,
        routes=f._snapshot.routes,
        neighbours={
            PEER: fw.Neighbour(
                PEER, neighbour.address, key, key, fw.Sequences(), sw.ReplayWindow(), 1500, True
            )
        },
        overlay_mtu=1354,
    )
    f.update(snapshot)
    tap = RecordingTap()
    f._tap = tap  # type: ignore[assignment]
    return f, tap


@pytest.mark.parametrize("key", [None, bytes(range(32))])
def test_a_whole_run_reaches_the_tap_as_the_superframe(key: bytes | None) -> None:
    f, tap = keyed_forwarder(key)
    whole, datagrams = superframe_datagrams(key)
    receive(f, b"".join(datagrams), len(datagrams[0]), ("192.0.2.2", 6783))
    assert tap.frames == [whole]
    assert f.statistics()["superframes"]["received"] == 1
    receive(f, b"".join(datagrams), len(datagrams[0]), ("192.0.2.2", 6783))  # again
    assert tap.frames == [whole]  # a replay when sealed, late when plain: never delivered twice
    assert f.statistics()["dropped"] == ({"replayed": 21} if key else {"late": 21})


@pytest.mark.parametrize("key", [None, bytes(range(32))])
def test_a_superframe_in_two_runs_is_reassembled_whole(key: bytes | None) -> None:
    f, tap = keyed_forwarder(key)
    whole, datagrams = superframe_datagrams(key)
    addr = ("192.0.2.2", 6783)
    receive(f, b"".join(datagrams[:12]), len(datagrams[0]), addr)
    assert tap.frames == []
    f._udp_buffer[:] = bytes(len(f._udp_buffer))  # the buffer is reused: nothing may point in
    receive(f, b"".join(datagrams[12:]), len(datagrams[0]), addr)
    assert tap.frames == [whole]


@pytest.mark.parametrize("key", [None, bytes(range(32))])
def test_a_lost_datagram_costs_only_its_segment(key: bytes | None) -> None:
    f, tap = keyed_forwarder(key)
    whole, datagrams = superframe_datagrams(key)
    addr = ("192.0.2.2", 6783)
    receive(f, b"".join(datagrams[:7]), len(datagrams[0]), addr)
    receive(f, b"".join(datagrams[8:]), len(datagrams[0]), addr)
    f._flush_reassembly(time.monotonic() + 1, idle=True)
    assert len(tap.frames) == 2  # the runs before and after the lost segment
    headers = vn.VNET_HEADER_SIZE + vn.tcp_header_length(whole[vn.VNET_HEADER_SIZE :])
    assert sum(len(frame) - headers for frame in tap.frames) == len(whole) - headers - 1302


def test_the_sleeve_never_carries_a_fastdp_probe() -> None:
    """A probe flooded to the sleeve before its MAC is pinned on VXLAN would, answered, prove a
    VXLAN path that does not work (through a NAT: seconds of loss after a start)."""
    f, sock = forwarder()
    probe = b"\xff" * 6 + bytes.fromhex("020000000001") + b"\x88\xb5MNFP" + bytes(42)
    capture(f, vn.VNET_NONE + probe)
    f.flush()
    assert sock.sent == [] and f.statistics()["dropped"] == {"fastdp_probe": 1}


def test_a_containers_frame_of_the_probe_ethertype_is_carried() -> None:
    """IEEE 802's local experimental ethertype is anyone's: only fastdp's own probes stay off
    the sleeve (a container's broadcasts of it were lost while fastdp was coming up)."""
    f, sock = forwarder()
    remote = bytes.fromhex("020000000002")
    f._switch.from_peer(PEER, remote, remote, time.monotonic())  # its MAC is behind PEER
    frame = remote + bytes.fromhex("020000000001") + b"\x88\xb5spray" + bytes(41)
    capture(f, vn.VNET_NONE + frame)
    f.flush()
    assert len(sock.sent) == 1 and f.statistics()["dropped"] == {}


def test_only_tcp_starts_loading_the_bulk_path() -> None:
    """numpy (the bulk path) is imported ahead of bulk traffic, not for an idle mesh's chatter."""
    macs = bytes(12)
    ipv4 = bytearray(macs + b"\x08\x00" + bytes(60))
    ipv4[14] = 0x45
    ipv4[23] = 6  # TCP
    ipv6 = bytearray(macs + b"\x86\xdd" + bytes(60))
    ipv6[14] = 0x60
    ipv6[20] = 6
    assert fw._carries_tcp(bytes(ipv4)) and fw._carries_tcp(memoryview(ipv6))
    ipv4[23], ipv6[20] = 1, 58  # ICMP, ICMPv6 (a ping, Neighbor Discovery)
    assert not fw._carries_tcp(bytes(ipv4)) and not fw._carries_tcp(bytes(ipv6))
    arp = macs + b"\x08\x06" + bytes(46)
    assert not fw._carries_tcp(arp) and not fw._carries_tcp(b"\x00" * 20)


class DatagramSocket(FakeSocket):
    """Records each datagram a send puts on the wire, cut as UDP GSO would."""

    def __init__(self) -> None:
        super().__init__()
        self.datagrams: list[bytes] = []

    def sendto(self, data: Any, addr: Any) -> int:
        self.datagrams.append(bytes(data))
        return len(data)

    def sendmsg(self, buffers: list[Any], cmsg: Any, flags: int, addr: Any) -> int:
        data = b"".join(bytes(b) for b in buffers)
        stride = int.from_bytes(cmsg[0][2], "little") if cmsg else len(data)
        self.datagrams += [data[at : at + stride] for at in range(0, len(data), stride)]
        return len(data)


def sent_datagrams(key: bytes | None, superframe: bytes, *, bulk: bool) -> list[bytes]:
    f, _ = keyed_forwarder(key)
    f._sock = sock = DatagramSocket()  # type: ignore[assignment]
    f._superframe_ids = iter([3])
    if not bulk:  # as while the bulk path is still being imported
        f._bulk_ready, f._bulk_loading = False, threading.Thread()
    frame = superframe[vn.VNET_HEADER_SIZE :]
    f._switch.from_peer(PEER, frame[0:6], frame[6:12], time.monotonic())
    capture(f, superframe)
    return sock.datagrams


@pytest.mark.parametrize("key", [None, bytes(range(32))])
def test_superframes_go_out_the_same_while_the_bulk_path_loads(key: bytes | None) -> None:
    """The packet thread never waits for numpy's import (it stalled ~150 ms under load): the
    general path sends the very datagrams the bulk path would, and a receiver whose bulk path
    is not loaded yet reassembles them whole."""
    whole, datagrams = superframe_datagrams(key)
    general = sent_datagrams(key, whole, bulk=False)
    assert len(general) == 21 and general == sent_datagrams(key, whole, bulk=True)
    f, tap = keyed_forwarder(key)
    f._bulk_ready, f._bulk_loading = False, threading.Thread()
    receive(f, b"".join(datagrams), len(datagrams[0]), ("192.0.2.2", 6783))
    assert tap.frames == [whole] and f.statistics()["superframes"]["received"] == 0


def test_express_frames_leave_by_the_express_socket_in_datagrams_its_lane_takes() -> None:
    """Frames read from the TAP's express queue are batched apart from the others and sent
    from the express socket (whose datagrams are marked), no datagram larger than what the
    receiver's express lane takes; the rest leave by the bulk socket as before."""
    f, bulk = forwarder()
    sizes: list[int] = []

    class Express(FakeSocket):
        def sendto(self, data: Any, addr: Any) -> int:
            sizes.append(len(data))
            return super().sendto(data, addr)

    express = Express()
    f._express_sock = express  # type: ignore[assignment]
    _, frame, _ = build_superframe(4, os.urandom(1200), 1200)
    f._switch.from_peer(PEER, frame[0:6], frame[6:12], time.monotonic())
    ping = vn.VNET_NONE + frame[:14] + bytes(84)
    f._tap_buffer[: len(ping)] = ping
    for _ in range(12):
        f.captured(len(ping), express=True)
    capture(f, vn.VNET_NONE + frame[:14] + bytes(84))  # the same frame from the bulk queue
    f.flush()
    assert bulk.sent == [(sw.Kind.FRAMES, 1)]
    large = vn.VNET_NONE + frame[:14] + bytes(1000)  # too large for the lane: bulk after all
    f._tap_buffer[: len(large)] = large
    f.captured(len(large), express=True)
    f.flush()
    assert bulk.sent == [(sw.Kind.FRAMES, 1)] * 2
    assert len(sizes) > 1 and all(size <= lanes.EXPRESS_DATAGRAM for size in sizes)
    assert sum(kind == sw.Kind.FRAMES for kind, _ in express.sent) == len(sizes)
    assert f.statistics()["sent"][format_peer_name(PEER)]["datagrams"] == len(sizes) + 2


def test_a_datagram_relayed_keeps_to_the_lane_it_came_by() -> None:
    """Received in the express lane (a ping through a relay), it leaves by the express socket
    (marked); received in the bulk lane, by the bulk one."""
    far, snapshot = FAR, relaying_snapshot()
    bulk, express = FakeSocket(), FakeSocket()
    f = make_forwarder(snapshot, bulk)
    f._express_sock = express  # type: ignore[assignment]
    body = (64).to_bytes(2, "big") + vn.VNET_NONE + bytes(64)
    for sequence, came_express in ((1, True), (2, False)):
        header = sw.DatagramHeader(sw.Kind.FRAMES, 0, 7, PEER, far, PEER, sequence)
        datagram = bytes(sw.encode_datagram(header, body, None))
        f._relay_express = came_express
        receive(f, datagram, len(datagram), ("192.0.2.2", 6783))
    assert express.sent == [(sw.Kind.FRAMES, 1)] and bulk.sent == [(sw.Kind.FRAMES, 1)]
    assert f.statistics()["express_lanes"]["sent"] == 1
