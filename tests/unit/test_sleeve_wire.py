"""Sleeve datagrams: sealing, replay, batching, and super-frames cut and put back together."""

from __future__ import annotations

import contextlib
import os
import random
import struct

import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.dataplane.sleeve import seal as aead
from meshnet.dataplane.sleeve import vnet as vn
from meshnet.dataplane.sleeve import wire as sw
from meshnet.dataplane.sleeve.run_cipher import RunCipher
from meshnet.errors import RemoteProtocolError
from tests.unit.test_vnet import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    Layout,
    build_superframe,
    check_rebuilt,
    superframes,
    wire_packets,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
A, B, C = 0x02AABBCC0001, 0x02AABBCC0002, 0x02AABBCC0003

peers = st.integers(0, sw.MAX_PEER)
headers = st.builds(
    sw.DatagramHeader,
    kind=st.sampled_from(sw.Kind),
    flags=st.sampled_from([0, sw.SEALED]),
    ttl=st.integers(1, 255),
    origin=peers,
    destination=peers,
    hop=peers,
    sequence=st.integers(0, sw.MAX_SEQUENCE),
)


def keys(key: bytes | None) -> tuple[object, object]:
    """(key_for, window_for) for a receiver that shares ``key`` with every hop sender."""
    window = sw.ReplayWindow()
    return (lambda hop: key), (lambda hop: window if key is not None else None)


def decode(data: bytes, key: bytes | None) -> tuple[sw.DatagramHeader, bytes]:
    key_for, window_for = keys(key)
    return sw.decode_datagram(data, key_for, window_for)  # type: ignore[arg-type]


def reason(data: bytes, key: bytes | None) -> sw.DatagramDrop:
    with pytest.raises(sw.DatagramError) as info:
        decode(data, key)
    return info.value.reason


# --- datagrams ---------------------------------------------------------------------------------


@given(headers, st.binary(max_size=2000), st.sampled_from([None, KEY]))
def test_datagram_round_trip(header: sw.DatagramHeader, body: bytes, key: bytes | None) -> None:
    data = sw.encode_datagram(header, body, key)
    assert len(data) == sw.HEADER_SIZE + len(body) + (sw.TAG_SIZE if key else 0)
    decoded, plain = decode(data, key)
    assert plain == body
    expected_flags = (header.flags & ~sw.SEALED) | (sw.SEALED if key else 0)
    assert decoded == sw.DatagramHeader(
        header.kind,
        expected_flags,
        header.ttl,
        header.origin,
        header.destination,
        header.hop,
        header.sequence,
    )
    assert decoded.sealed == (key is not None)


def test_header_layout_is_big_endian() -> None:
    header = sw.DatagramHeader(sw.Kind.SEGMENT, 0, 7, A, B, C, 0x0102030405060708)
    data = sw.encode_datagram(header, b"", None)
    assert data == (
        bytes([1, 1, 0, 7])
        + A.to_bytes(6, "big")
        + B.to_bytes(6, "big")
        + C.to_bytes(6, "big")
        + b"\0\0"
        + bytes(range(1, 9))
    )


def sealed_sample() -> bytes:
    header = sw.DatagramHeader(sw.Kind.FRAMES, sw.BROADCAST, 5, A, 0, C, 42)
    return sw.encode_datagram(header, b"0123456789" * 2, KEY)


def test_every_flipped_bit_of_a_sealed_datagram_is_rejected() -> None:
    data = sealed_sample()
    decode(data, KEY)
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(RemoteProtocolError):
            decode(bytes(flipped), KEY)


def test_truncated_datagrams_are_rejected() -> None:
    data = sealed_sample()
    for n in range(len(data)):
        with pytest.raises(RemoteProtocolError):
            decode(data[:n], KEY)
    plain = sw.encode_datagram(sw.DatagramHeader(sw.Kind.FRAMES, 0, 5, A, B, C, 1), b"x", None)
    for n in range(sw.HEADER_SIZE):
        assert reason(plain[:n], None) is sw.DatagramDrop.SHORT


def test_drop_reasons() -> None:
    data = sealed_sample()
    assert reason(data, None) is sw.DatagramDrop.NO_KEY
    assert reason(data, OTHER_KEY) is sw.DatagramDrop.BAD_TAG
    plain = sw.encode_datagram(sw.DatagramHeader(sw.Kind.FRAMES, 0, 5, A, B, C, 1), b"x", None)
    assert reason(plain, KEY) is sw.DatagramDrop.NOT_SEALED
    assert reason(b"\x02" + plain[1:], None) is sw.DatagramDrop.BAD_VERSION
    assert reason(plain[:1] + b"\x05" + plain[2:], None) is sw.DatagramDrop.BAD_KIND
    assert reason(plain[:2] + b"\x08" + plain[3:], None) is sw.DatagramDrop.BAD_HEADER
    assert reason(plain[:2] + b"\x04" + plain[3:], None) is sw.DatagramDrop.BAD_HEADER  # passing
    assert reason(plain[:2] + b"\x02" + plain[3:], None) is sw.DatagramDrop.BAD_HEADER  # bcast+dst
    assert reason(plain[:3] + b"\x00" + plain[4:], None) is sw.DatagramDrop.TTL_EXPIRED
    assert reason(plain[:22] + b"\x00\x01" + plain[24:], None) is sw.DatagramDrop.BAD_HEADER


def test_sealed_without_a_window_is_refused() -> None:
    with pytest.raises(sw.DatagramError) as info:
        sw.decode_datagram(sealed_sample(), lambda hop: KEY, lambda hop: None)
    assert info.value.reason is sw.DatagramDrop.NO_KEY


def test_replayed_datagram_is_rejected_and_forgery_does_not_move_the_window() -> None:
    window = sw.ReplayWindow()

    def receive(data: bytes) -> tuple[sw.DatagramHeader, bytes]:
        return sw.decode_datagram(data, lambda hop: KEY, lambda hop: window)

    def datagram(seq: int, key: bytes = KEY) -> bytes:
        return sw.encode_datagram(sw.DatagramHeader(sw.Kind.FRAMES, 0, 1, A, B, C, seq), b"f", key)

    receive(datagram(5))
    with pytest.raises(sw.DatagramError) as info:
        receive(datagram(5))
    assert info.value.reason is sw.DatagramDrop.REPLAYED
    # A forgery with a far-ahead sequence fails the tag and leaves the window alone.
    with pytest.raises(sw.DatagramError):
        receive(datagram(10_000, OTHER_KEY))
    assert window.highest == 5
    receive(datagram(10_000))
    receive(datagram(9500))  # inside the window, not seen: the reordered one is fine
    with pytest.raises(sw.DatagramError):
        receive(datagram(9500))


@given(st.binary(max_size=120), st.sampled_from([None, KEY]))
def test_garbage_datagrams_raise_remote_protocol_error_only(data: bytes, key: bytes | None) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode(data, key)


def test_encode_refuses_what_cannot_be_sent() -> None:
    ok = sw.DatagramHeader(sw.Kind.FRAMES, 0, 1, A, B, C, 1)
    for bad in [
        sw.DatagramHeader(sw.Kind.FRAMES, 0, 1, 1 << 48, B, C, 1),
        sw.DatagramHeader(sw.Kind.FRAMES, 0, 0, A, B, C, 1),
        sw.DatagramHeader(sw.Kind.FRAMES, sw.BROADCAST, 1, A, B, C, 1),
        sw.DatagramHeader(sw.Kind.FRAMES, 0, 1, A, B, C, 1 << 64),
    ]:
        with pytest.raises(ValueError):
            sw.encode_datagram(bad, b"", None)
    with pytest.raises(ValueError):
        sw.encode_datagram(ok, bytes(sw.MAX_DATAGRAM), None)
    with pytest.raises(ValueError):
        sw.encode_datagram(ok, b"", b"short key")


def test_encode_datagrams_counts_sequences() -> None:
    header = sw.DatagramHeader(sw.Kind.SEGMENT, 0, 3, A, B, C, 100)
    datagrams = sw.encode_datagrams(header, [b"a", b"b", b"c"], KEY)
    key_for, window_for = keys(KEY)
    decoded = [sw.decode_datagram(d, key_for, window_for) for d in datagrams]  # type: ignore[arg-type]
    assert [(h.sequence, body) for h, body in decoded] == [(100, b"a"), (101, b"b"), (102, b"c")]


def test_only_a_broadcast_from_its_origin_may_be_passing() -> None:
    passing = sw.BROADCAST | sw.PASSING
    own = sw.encode_datagram(sw.DatagramHeader(sw.Kind.FRAMES, passing, 5, A, 0, A, 1), b"x", None)
    header, _ = decode(own, None)
    assert header.flags == passing
    spoken_for = bytearray(own)
    spoken_for[16:22] = C.to_bytes(6, "big")  # a neighbour passing on another's broadcast
    assert reason(bytes(spoken_for), None) is sw.DatagramDrop.BAD_HEADER
    with pytest.raises(ValueError):  # nor can we send one
        sw.encode_datagram(sw.DatagramHeader(sw.Kind.FRAMES, passing, 5, A, 0, C, 1), b"x", None)
    # Relayed, it is an ordinary broadcast again: the next peer delivers it.
    assert header.relayed(B, 2) == sw.DatagramHeader(sw.Kind.FRAMES, sw.BROADCAST, 4, A, 0, B, 2)


def test_relayed_decrements_ttl() -> None:
    header = sw.DatagramHeader(sw.Kind.FRAMES, sw.SEALED, 2, A, B, A, 9)
    relayed = header.relayed(C, 77)
    assert relayed == sw.DatagramHeader(sw.Kind.FRAMES, sw.SEALED, 1, A, B, C, 77)
    assert relayed.relayed(B, 1) is None


# --- replay window -----------------------------------------------------------------------------


def test_window_accepts_reorder_within_its_size_and_rejects_older() -> None:
    window = sw.ReplayWindow()
    top = sw.REPLAY_WINDOW + 2000
    assert window.check_and_update(top)
    assert window.check_and_update(top - sw.REPLAY_WINDOW + 1)
    assert not window.check_and_update(top - sw.REPLAY_WINDOW)
    assert not window.check_and_update(0)
    assert not window.check_and_update(top)
    assert window.check_and_update(top - 1)
    assert window.check_and_update(1 << 63)  # a huge jump is cheap
    assert not window.check_and_update(2001)


@given(st.lists(st.integers(0, 3000), max_size=300))
def test_window_matches_a_model(sequences: list[int]) -> None:
    window = sw.ReplayWindow()
    seen: set[int] = set()
    for seq in sequences:
        expected = seq not in seen and (not seen or seq > max(seen) - sw.REPLAY_WINDOW)
        assert window.would_accept(seq) == expected
        assert window.check_and_update(seq) == expected
        if expected:
            seen.add(seq)


# --- batching ----------------------------------------------------------------------------------

frames = st.lists(
    st.tuples(st.binary(min_size=10, max_size=10), st.integers(14, 1500)), max_size=40
)


@given(frames, st.integers(1600, 9000))
def test_batcher_never_exceeds_its_max_and_split_inverts_it(
    items: list[tuple[bytes, int]], max_body: int
) -> None:
    batcher = sw.FrameBatcher(max_body)
    sent = [(v, os.urandom(n)) for v, n in items]
    bodies = []
    for v, frame in sent:
        full = batcher.add(v + frame)
        if full is not None:
            bodies.append(full)
    assert batcher.pending == len(sent) - sum(len(sw.split_frames(b)) for b in bodies)
    last = batcher.take()
    if last is not None:
        bodies.append(last)
    assert batcher.take() is None and batcher.pending == 0
    assert all(len(b) <= max_body for b in bodies)
    assert [pair for b in bodies for pair in sw.split_frames(b)] == sent


def test_batcher_fills_datagrams_exactly() -> None:
    max_body = sw.max_frames_body(1500, sealed=True)
    batcher = sw.FrameBatcher(max_body)
    frame = bytes(max_body // 2 - sw.FRAME_OVERHEAD)
    assert batcher.add(bytes(10) + frame) is None
    assert batcher.add(bytes(10) + frame) is None
    full = batcher.add(bytes(10) + frame)
    assert full is not None and len(full) == max_body - max_body % 2
    datagram = sw.encode_datagram(sw.DatagramHeader(sw.Kind.FRAMES, 0, 1, A, B, C, 0), full, KEY)
    assert len(datagram) <= 1500
    with pytest.raises(ValueError):
        batcher.add(bytes(10 + batcher.max_frame + 1))


@given(st.binary(max_size=200))
def test_split_frames_garbage_raises_remote_protocol_error_only(body: bytes) -> None:
    try:
        pairs = sw.split_frames(body)
    except RemoteProtocolError:
        return
    assert sum(sw.FRAME_OVERHEAD + len(f) for _, f in pairs) == len(body)


def test_split_frames_rejects_truncation() -> None:
    body = struct.pack(">H", 60) + bytes(10) + bytes(60)
    sw.split_frames(body)
    for n in range(len(body)):
        with pytest.raises(sw.DatagramError):
            sw.split_frames(body[:n])


# --- segments and reassembly -------------------------------------------------------------------


def cut(sf: tuple[vn.VnetHeader, bytes, Layout], sid: int = 1) -> list[bytes]:
    v, frame, _ = sf
    return sw.segment_bodies(sid, v, frame)


@settings(max_examples=60)
@given(superframes(), st.randoms(use_true_random=False))
def test_reassembler_returns_the_exact_superframe_in_any_order(
    sf: tuple[vn.VnetHeader, bytes, Layout], rnd: random.Random
) -> None:
    v, frame, _ = sf
    bodies = cut(sf)
    rnd.shuffle(bodies)
    reassembler = sw.Reassembler()
    out = []
    for body in bodies:
        out += reassembler.add(body, 0.0)
    assert out == [(vn.pack_vnet(v), frame)]
    assert reassembler.pending() == 0
    assert reassembler.statistics().completed == 1


@pytest.mark.parametrize("version", [4, 6])
def test_largest_superframes_round_trip_whole_and_in_part(version: int) -> None:
    tcp_options = bytes(12)
    room = 0xFFFF - 20 - len(tcp_options) - (20 if version == 4 else 0)
    sf = build_superframe(version, os.urandom(room), 1448, tcp_options=tcp_options)
    v, frame, layout = sf
    assert len(frame) == (vn.MAX_SUPERFRAME_SIZE if version == 6 else 14 + 0xFFFF)
    bodies = cut(sf, sid=0xFFFFFFFF)
    whole = sw.Reassembler()
    assert [out for body in reversed(bodies) for out in whole.add(body, 0)] == [
        (vn.pack_vnet(v), frame)
    ]
    part = sw.Reassembler()
    kept = [i for i in range(len(bodies)) if i % 3]
    out = [o for i in kept for o in part.add(bodies[i], 0)] + part.flush_all()
    original_wire = wire_packets(vn.pack_vnet(v), frame, layout)
    got = []
    for vnet_raw, rebuilt in out:
        check_rebuilt(vnet_raw, rebuilt, layout)
        got += wire_packets(vnet_raw, rebuilt, layout)
    assert got == [original_wire[i] for i in kept]


def test_superframes_too_long_for_ip_lengths_are_refused() -> None:
    v, frame, _ = build_superframe(4, os.urandom(0xFFFF - 40), 1448)
    with pytest.raises(RemoteProtocolError):
        sw.segment_bodies(1, v, frame + b"x")
    # Two segments of 65500 bytes: fine for IPv6 lengths, too long for IPv4's.
    big = vn.VnetHeader(v.flags, v.gso_type, v.hdr_len, 65500, v.csum_start, v.csum_offset)
    forged = struct.pack(">IHHH", 1, 0, 2, 54) + vn.pack_vnet(big) + frame[:54] + bytes(65500)
    with pytest.raises(sw.DatagramError) as info:
        sw.Reassembler().add(forged, 0)
    assert info.value.reason is sw.DatagramDrop.BAD_BODY
    with pytest.raises(RemoteProtocolError):
        vn.rebuild(v, frame[:54], 0, [frame[54:], b"x"], True, 2)


def test_segment_bodies_are_equal_sized_and_fit_max_segment_payload() -> None:
    v, frame, layout = build_superframe(4, os.urandom(60000), 1400)
    bodies = sw.segment_bodies(9, v, frame)
    assert len(bodies) == 43
    assert {len(b) for b in bodies[:-1]} == {sw.SEGMENT_OVERHEAD + layout.header_len + 1400}
    max_datagram = 1400 + layout.header_len + sw.SEGMENT_OVERHEAD + sw.HEADER_SIZE + sw.TAG_SIZE
    assert sw.max_segment_payload(max_datagram, layout.header_len, sealed=True) == 1400
    header = sw.DatagramHeader(sw.Kind.SEGMENT, 0, 4, A, B, A, 0)
    assert len(sw.encode_datagrams(header, bodies, KEY)[0]) == max_datagram


@settings(max_examples=150)
@given(superframes(max_segments=25), st.data())
def test_any_subset_flushes_to_valid_frames_carrying_exactly_what_arrived(
    sf: tuple[vn.VnetHeader, bytes, Layout], data: st.DataObject
) -> None:
    v, frame, layout = sf
    bodies = cut(sf)
    count = len(bodies)
    received = sorted(data.draw(st.sets(st.integers(0, count - 1), min_size=1)))
    order = data.draw(st.permutations(received))
    reassembler = sw.Reassembler()
    out = []
    for i in order:
        out += reassembler.add(bodies[i], 1.0)
    out += reassembler.flush(2.0, older_than=1.5)
    if len(received) == count:
        assert out == [(vn.pack_vnet(v), frame)]
        return
    assert reassembler.pending() == 0
    original_wire = wire_packets(vn.pack_vnet(v), frame, layout)
    got_wire = []
    for vnet_raw, rebuilt in out:
        check_rebuilt(vnet_raw, rebuilt, layout)
        got_wire += wire_packets(vnet_raw, rebuilt, layout)
    assert got_wire == [original_wire[i] for i in received]
    # Sequence numbers and lengths cover exactly the payload bytes that arrived.
    (seq0,) = struct.unpack_from(">I", frame, layout.tcp + 4)
    covered = []
    for _, rebuilt in out:
        (seq,) = struct.unpack_from(">I", rebuilt, layout.tcp + 4)
        covered.append(((seq - seq0) & 0xFFFFFFFF, rebuilt[layout.header_len :]))
    payload = frame[layout.header_len :]
    expected = [(i * v.gso_size, payload[i * v.gso_size : (i + 1) * v.gso_size]) for i in received]
    assert b"".join(p for _, p in sorted(covered)) == b"".join(p for _, p in expected)
    assert sorted(covered) == covered  # runs come out in sequence order
    for offset, chunk in covered:
        assert any(offset <= o and o + len(p) <= offset + len(chunk) for o, p in expected)
    stats = reassembler.statistics()
    assert (stats.flushed, stats.runs) == (1, len(out))
    assert stats.segments_lost == count - len(received)


def test_duplicates_and_late_segments_are_ignored() -> None:
    sf = build_superframe(6, os.urandom(5000), 1000)
    bodies = cut(sf)
    reassembler = sw.Reassembler()
    assert reassembler.add(bodies[0], 0) == []
    assert reassembler.add(bodies[0], 0) == []
    out = []
    for body in bodies[1:]:
        out += reassembler.add(body, 0)
    assert len(out) == 1
    assert reassembler.add(bodies[2], 0) == []  # after completion: late
    stats = reassembler.statistics()
    assert (stats.duplicates, stats.late, stats.completed) == (1, 1, 1)


def test_a_newer_completed_superframe_flushes_the_older_partial_first() -> None:
    oldest = cut(build_superframe(4, os.urandom(2000), 1000, seq=0), sid=9)
    old = cut(build_superframe(4, os.urandom(5000), 1000, seq=2000), sid=10)
    new_sf = build_superframe(4, os.urandom(3000), 1000, seq=7000)
    new = cut(new_sf, sid=11)
    reassembler = sw.Reassembler()
    reassembler.add(old[0], 0)
    reassembler.add(old[1], 0)
    reassembler.add(oldest[1], 0)
    reassembler.add(old[3], 0)
    out = []
    for body in new:
        out += reassembler.add(body, 0)
    # oldest's [1], old's runs [0, 1] and [3], then the new one whole: in sequence order
    assert len(out) == 4
    assert out[3] == (vn.pack_vnet(new_sf[0]), new_sf[1])
    assert [struct.unpack_from(">I", f, 38)[0] for _, f in out] == [1000, 2000, 5000, 7000]
    assert vn.parse_vnet(out[1][0]).gso_type == vn.GSO_TCPV4
    assert vn.parse_vnet(out[2][0]).gso_type == vn.GSO_NONE
    assert reassembler.add(old[2], 0) == []  # too late now
    assert reassembler.pending() == 0


def test_memory_is_bounded_by_evicting_the_oldest() -> None:
    reassembler = sw.Reassembler(max_partial=4)
    out = []
    for sid in range(10):
        bodies = cut(build_superframe(4, os.urandom(3000), 1000), sid=sid)
        out += reassembler.add(bodies[0], float(sid))
        assert reassembler.pending() <= 4
    assert len(out) == 6  # each evicted super-frame yields its one received segment
    assert reassembler.oldest == 6.0


def test_flush_takes_only_stale_superframes() -> None:
    reassembler = sw.Reassembler()
    a = cut(build_superframe(4, os.urandom(3000), 1000), sid=1)
    b = cut(build_superframe(4, os.urandom(3000), 1000), sid=2)
    reassembler.add(a[0], 1.0)
    reassembler.add(b[0], 5.0)
    assert reassembler.flush(5.0, older_than=1.0) == []
    assert len(reassembler.flush(5.0, older_than=4.0)) == 1
    assert reassembler.pending() == 1
    assert len(reassembler.flush_all()) == 1


def test_inconsistent_segments_drop_the_superframe() -> None:
    bodies = cut(build_superframe(4, os.urandom(5000), 1000), sid=3)
    reassembler = sw.Reassembler()
    reassembler.add(bodies[0], 0)
    bad_count = bodies[1][:6] + struct.pack(">H", 6) + bodies[1][8:]
    with pytest.raises(sw.DatagramError) as info:
        reassembler.add(bad_count, 0)
    assert info.value.reason is sw.DatagramDrop.INCONSISTENT
    assert reassembler.pending() == 0
    reassembler.add(bodies[0], 0)
    with pytest.raises(sw.DatagramError):
        reassembler.add(bodies[1][:-1], 0)  # a middle segment shorter than gso_size
    assert reassembler.statistics().inconsistent == 2


def test_single_segment_superframe_passes_straight_through() -> None:
    v, frame, _ = build_superframe(4, os.urandom(500), 1000, tcp_flags=ACK | FIN | PSH | CWR | ECE)
    (body,) = sw.segment_bodies(1, v, frame)
    assert sw.Reassembler().add(body, 0) == [(vn.pack_vnet(v), frame)]


def test_ids_wrap_and_restarts_are_recognised() -> None:
    reassembler = sw.Reassembler()
    for sid in [0xFFFFFFFE, 0xFFFFFFFF, 0, 1]:
        bodies = cut(build_superframe(4, os.urandom(2000), 1000), sid=sid)
        assert len(reassembler.add(bodies[0], 0) + reassembler.add(bodies[1], 0)) == 1
    restarted = cut(build_superframe(4, os.urandom(2000), 1000), sid=0x80000000)
    assert len(reassembler.add(restarted[0], 0) + reassembler.add(restarted[1], 0)) == 1
    assert reassembler.statistics().late == 0


@given(st.binary(max_size=200))
def test_reassembler_garbage_raises_remote_protocol_error_only(body: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        sw.Reassembler().add(body, 0)


@given(superframes(max_segments=4), st.integers(0, 200), st.integers(0, 255))
def test_reassembler_corrupted_segments_raise_remote_protocol_error_only(
    sf: tuple[vn.VnetHeader, bytes, Layout], position: int, value: int
) -> None:
    reassembler = sw.Reassembler()
    for body in cut(sf):
        corrupted = bytearray(body)
        corrupted[position % len(body)] = value
        try:
            for _, rebuilt in reassembler.add(bytes(corrupted), 0) + reassembler.flush_all():
                assert len(rebuilt) >= vn.MIN_TCP_HEADERS
        except RemoteProtocolError:
            pass


# --- control bodies ----------------------------------------------------------------------------


def test_control_bodies_round_trip() -> None:
    heartbeat = sw.decode_heartbeat(sw.encode_heartbeat(123456, 654321, True))
    assert heartbeat == (123456, 654321, True) and heartbeat.hear_you
    assert sw.decode_probe(sw.encode_probe(77, 1400)) == 77
    assert len(sw.encode_probe(77, 1400)) == 1400
    assert sw.decode_probe_ack(sw.encode_probe_ack(77, 1400)) == (77, 1400)
    for bad, decoder in [
        (b"\0" * 16, sw.decode_heartbeat),
        (b"\0" * 16 + b"\x02", sw.decode_heartbeat),
        (b"\0\0", sw.decode_probe),
        (b"\0" * 7, sw.decode_probe_ack),
    ]:
        with pytest.raises(sw.DatagramError):
            decoder(bad)


def test_flag_constants_match_the_spec() -> None:
    assert (sw.SEALED, sw.BROADCAST) == (1, 2)
    assert [k.value for k in sw.Kind] == [0, 1, 2, 3, 4]
    assert sw.HEADER_SIZE == 32 and sw.TAG_SIZE == 32 and sw.SEGMENT_OVERHEAD == 20
    assert FIN | PSH | ACK | ECE | CWR == 0xD9


# --- the AEAD binding ----------------------------------------------------------------------------


@settings(max_examples=50)
@given(st.binary(max_size=2000), st.binary(min_size=32, max_size=32), st.integers(0, 2**64 - 1))
def test_seal_matches_pynacl_public_aegis256(body: bytes, key: bytes, sequence: int) -> None:
    header = bytes(range(24)) + sequence.to_bytes(8, "big")  # as datagram headers end
    nonce = sequence.to_bytes(8, "big") + bytes(24)
    sealed = aead.seal(header, body, sequence, key)
    expected = nacl.bindings.crypto_aead_aegis256_encrypt(body, header, nonce, key)
    assert bytes(sealed) == header + expected
    assert aead.open_sealed(memoryview(sealed), 32, sequence, key) == body
    if sequence < 2**63:  # a run's sequences must not pass 64 bits
        # In place, as the bulk path seals: three datagrams of this body, one buffer.
        stride = len(sealed) + 5
        buffer = bytearray(3 * stride)
        for i in range(3):
            buffer[i * stride : i * stride + 32] = header[:24] + (sequence + i).to_bytes(8, "big")
            buffer[i * stride + 32 : i * stride + 32 + len(body)] = body
        RunCipher(buffer, 4, 32).seal(stride, 3, len(sealed), sequence, key)
        assert buffer[2 * stride : 2 * stride + len(sealed)] == aead.seal(
            header[:24] + (sequence + 2).to_bytes(8, "big"), body, sequence + 2, key
        )
        assert RunCipher(buffer, 4, 32).open(stride, 3, len(sealed), sequence, key) == []
        assert buffer[32 : 32 + len(body)] == body


def test_open_refuses_any_changed_byte_and_wrong_keys() -> None:
    key = bytes(range(32))
    sealed = bytes(aead.seal(b"h" * 32, b"body" * 100, 7, key))
    assert aead.open_sealed(sealed, 32, 7, key) == b"body" * 100
    assert aead.open_sealed(sealed, 32, 8, key) is None
    assert aead.open_sealed(sealed, 32, 7, bytes(32)) is None
    assert aead.open_sealed(sealed[:40], 32, 7, key) is None
    for i in range(0, len(sealed), 37):
        forged = bytearray(sealed)
        forged[i] ^= 1
        assert aead.open_sealed(forged, 32, 7, key) is None
    for bad in (b"short", key + b"x", "k" * 32):
        with pytest.raises(ValueError):
            aead.seal(b"", b"", 0, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):  # the buffer is a tag short
        RunCipher(bytearray(32 + 10 + 31), 4, 32).seal(100, 1, 32 + 10 + 32, 0, key)
    with pytest.raises(ValueError):  # more datagrams than nonces
        RunCipher(bytearray(1000), 4, 32).seal(100, 5, 100, 0, key)


# --- consecutive segments at once ---------------------------------------------------------------


def plain_bodies(sid: int = 5, segments: int = 12, gso: int = 1200) -> tuple[bytes, list[bytes]]:
    v, frame, _ = build_superframe(4, os.urandom(gso * (segments - 1) + gso // 2), gso)
    return vn.pack_vnet(v) + frame, sw.segment_bodies(sid, v, frame)


def test_consecutive_segments_reassemble_whole_in_any_split() -> None:
    whole, bodies = plain_bodies()
    for cut_at in (1, 5, 11):
        reassembler = sw.Reassembler()
        got = reassembler.add_uniform(bodies[cut_at:], 0.0) + reassembler.add_uniform(
            bodies[:cut_at], 0.0
        )
        assert [bytes(vnet) + bytes(frame) for vnet, frame in got] == [whole]
        assert reassembler.statistics().completed == 1


def test_consecutive_segments_count_duplicates_and_late_segments() -> None:
    whole, bodies = plain_bodies()
    reassembler = sw.Reassembler()
    assert reassembler.add_uniform(bodies[:6], 0.0) == []
    assert reassembler.add_uniform(bodies[3:9], 0.0) == []  # 3 duplicates
    got = reassembler.add_uniform(bodies[9:], 0.0)
    assert [bytes(v) + bytes(f) for v, f in got] == [whole]
    assert reassembler.add_uniform(bodies[:4], 0.0) == []  # late: already delivered
    stats = reassembler.statistics()
    assert (stats.duplicates, stats.completed) == (3, 1) and stats.late >= 1


def test_consecutive_segments_ending_in_a_short_middle_segment_are_refused() -> None:
    _, bodies = plain_bodies(segments=4)
    reassembler = sw.Reassembler()
    with pytest.raises(sw.DatagramError):
        reassembler.add_uniform([bodies[0], bodies[1][:-10]], 0.0)
    assert reassembler.pending() == 0 and reassembler.statistics().inconsistent == 1


def test_a_superframe_that_came_whole_flushes_older_ones_and_refuses_late_copies() -> None:
    _, bodies = plain_bodies(sid=5)
    reassembler = sw.Reassembler()
    assert reassembler.add_uniform(bodies[:3], 0.0) == []  # super-frame 5 waits for the rest
    flushed = reassembler.complete(6)  # 6 came whole: 5 will not complete
    assert flushed is not None and len(flushed) == 1 and reassembler.pending() == 0
    assert reassembler.complete(6) is None  # a copy of 6 is late
    assert reassembler.complete(6 + 5000) == []  # far ahead is just newer
    assert reassembler.complete(6) == []  # far behind: the origin restarted


def test_replay_window_records_a_run_once() -> None:
    window = sw.ReplayWindow()
    assert window.accept_run(10, 5)
    assert window.highest == 14
    assert [window.would_accept(s) for s in range(9, 16)] == [True] + [False] * 5 + [True]
    assert not window.accept_run(14, 3)  # overlaps: nothing recorded
    assert window.would_accept(15) and window.would_accept(16)
    last = 10_000 + sw.REPLAY_WINDOW + 999
    assert window.accept_run(10_000, sw.REPLAY_WINDOW + 1000)
    oldest_in_window = last - sw.REPLAY_WINDOW + 1
    assert not window.would_accept(last) and not window.would_accept(oldest_in_window)
    assert window.would_accept(last + 1)


def test_replay_window_takes_a_run_overtaken_by_later_datagrams_once() -> None:
    """A super-frame's datagrams still queued in the bulk lane when a later express datagram
    (a ping) was taken: the run is older than the highest, within the window, and new."""
    window = sw.ReplayWindow()
    base = 100_000
    assert window.accept_run(base, 45)
    ping = base + 1100
    assert window.check_and_update(ping)  # sent after the next 20 super-frames
    assert window.accept_run(base + 45, 45)  # the next super-frame: overtaken, taken
    assert window.highest == ping
    assert not window.accept_run(base + 45, 45)  # a replay of it: nothing recorded
    assert not window.accept_run(base + 80, 20)  # overlaps it
    assert not window.accept_run(ping - 10, 20)  # holds the highest, seen
    assert window.highest == ping and window.would_accept(ping - 10)
    assert not window.accept_run(ping - sw.REPLAY_WINDOW, 5)  # begins below the window
    assert window.accept_run(ping - sw.REPLAY_WINDOW + 1, 5)  # the window's oldest
    assert window.would_accept(base + 90)
