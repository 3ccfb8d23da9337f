"""The bulk path's layouts, checked against the reference encoders and decoders."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.dataplane.sleeve import vnet as vn
from meshnet.dataplane.sleeve import wire as sw
from meshnet.dataplane.sleeve.header import header_head
from meshnet.dataplane.sleeve.segments import MAX_GSO_BYTES, segments_per_send
from meshnet.dataplane.sleeve.superframes import RunCheck, RunReader, SuperframeSender
from tests.unit.test_vnet import build_superframe

KEY = bytes(range(32))
HEADER = sw.DatagramHeader(sw.Kind.SEGMENT, 0, sw.MAX_TTL, 0xA1, 0xB2, 0xA1, 1000)


def lay_out(
    payload: int, mss: int, key: bytes | None, sid: int = 7, sender: SuperframeSender | None = None
) -> tuple[list[bytes], list[bytes], int]:
    """(datagrams as the kernel would cut the sends, the reference datagrams, stride)."""
    v, frame, _ = build_superframe(4, os.urandom(payload), mss)
    source = bytearray(70000)
    data = vn.pack_vnet(v) + frame
    sender = sender or SuperframeSender(source)
    sender._source.obj[: len(data)] = data  # type: ignore[union-attr]
    plan = vn.plan_tcp_segments(v, frame)
    head = header_head(HEADER, key is not None, plan.segments)
    layout = sender.layout(plan, len(frame), head, HEADER.sequence, sid, key)
    datagrams = []
    for buffers, nbytes in layout.sends:
        blob = b"".join(bytes(b) for b in buffers)
        assert len(blob) == nbytes <= MAX_GSO_BYTES
        datagrams += [blob[i : i + layout.stride] for i in range(0, len(blob), layout.stride)]
    reference = [
        bytes(d) for d in sw.encode_datagrams(HEADER, sw.segment_bodies(sid, v, frame), key)
    ]
    assert layout.datagrams == len(reference)
    assert layout.size == sum(map(len, reference))
    return datagrams, reference, layout.stride


@settings(max_examples=60, deadline=None)
@given(
    payload=st.integers(1, 60000),
    mss=st.sampled_from([64, 536, 1288, 1302, 1400]),
    sealed=st.booleans(),
)
def test_the_layout_is_what_the_reference_encoder_sends(
    payload: int, mss: int, sealed: bool
) -> None:
    datagrams, reference, _ = lay_out(payload, mss, KEY if sealed else None)
    assert datagrams == reference


def test_a_reused_sender_lays_out_each_length_afresh() -> None:
    sender = SuperframeSender(bytearray(70000))
    for payload in (13020, 13000, 1302 * 9 + 1, 13020, 500):
        for key in (None, KEY):
            datagrams, reference, _ = lay_out(payload, 1302, key, sender=sender)
            assert datagrams == reference


def test_a_full_superframe_at_the_overlay_mtu_is_one_gso_send_when_capped() -> None:
    mtu = 1354
    cap = segments_per_send(mtu)
    mss = mtu - 52
    v, frame, _ = build_superframe(4, os.urandom(mss * cap), mss)
    sender = SuperframeSender(bytearray(70000))
    sender._source.obj[: 10 + len(frame)] = vn.pack_vnet(v) + frame  # type: ignore[union-attr]
    plan = vn.plan_tcp_segments(v, frame)
    layout = sender.layout(plan, len(frame), header_head(HEADER, True, cap), 1, 1, KEY)
    assert plan.segments == cap and len(layout.sends) == 1


def received(
    datagrams: list[bytes], key: bytes | None, window: sw.ReplayWindow | None
) -> tuple[RunCheck, RunReader]:
    buffer = bytearray(70000)
    blob = b"".join(datagrams)
    buffer[: len(blob)] = blob
    reader = RunReader(buffer)
    return reader.read(len(blob), len(datagrams[0]), key, window), reader


@settings(max_examples=40, deadline=None)
@given(payload=st.integers(1302 + 1, 1302 * 45), sealed=st.booleans())
def test_a_whole_run_reads_back_as_the_superframe(payload: int, sealed: bool) -> None:
    key = KEY if sealed else None
    v, frame, _ = build_superframe(4, os.urandom(payload), 1302)
    datagrams = reference_datagrams(v, frame, key)
    check, _ = received(datagrams, key, sw.ReplayWindow() if key else None)
    run = check.run
    assert run is not None and run.first_index == 0 and run.total == len(datagrams)
    assert bytes(run.vnet) == vn.pack_vnet(v)
    assert bytes(run.headers) + b"".join(bytes(p) for p in run.payloads) == frame


def reference_datagrams(
    v: vn.VnetHeader,
    frame: bytes,
    key: bytes | None,
    header: sw.DatagramHeader = HEADER,
    sid: int = 9,
) -> list[bytes]:
    return [bytes(d) for d in sw.encode_datagrams(header, sw.segment_bodies(sid, v, frame), key)]


def test_a_forged_or_replayed_datagram_in_a_sealed_run_costs_only_itself() -> None:
    v, frame, _ = build_superframe(4, os.urandom(1302 * 6), 1302)
    datagrams = reference_datagrams(v, frame, KEY)
    forged = bytearray(datagrams[2])
    forged[-1] ^= 1
    window = sw.ReplayWindow()
    check, _ = received([*datagrams[:2], bytes(forged), *datagrams[3:]], KEY, window)
    assert check.run is None and check.opened and check.rejected == 1
    assert len(check.bodies) == 5
    check, _ = received(datagrams, KEY, window)  # all seen before but the forged one
    assert check.opened and check.replayed == 5 and len(check.bodies) == 1


def test_runs_that_are_not_one_superframe_are_left_untouched() -> None:
    v, frame, _ = build_superframe(4, os.urandom(1302 * 4), 1302)
    one = reference_datagrams(v, frame, None)
    other = reference_datagrams(v, frame, None, HEADER._replace(sequence=1002), sid=10)
    check, _ = received([*one[:2], *other[2:]], None, None)
    assert check.run is None and not check.opened


def test_a_run_whose_last_datagram_is_of_another_superframe_is_not_one() -> None:
    v, frame, _ = build_superframe(4, os.urandom(1302 * 4), 1302)
    one = reference_datagrams(v, frame, None)
    other = reference_datagrams(v, frame, None, sid=10)  # the same sequences, another id
    check, _ = received([*one[:3], other[3]], None, None)
    assert check.run is None and not check.opened
