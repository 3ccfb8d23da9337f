"""Frames: round trips in any chunking, and every kind of bad input is a RemoteProtocolError."""

from __future__ import annotations

import itertools
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnet.errors import RemoteProtocolError
from meshnet.gossip.framing import (
    MAX_COUNTER,
    MAX_FRAME_SIZE,
    TAG_SIZE,
    FrameDecoder,
    FrameEncoder,
    LocalProtocolError,
    seal_frame,
)
from meshnet.gossip.messages import (
    MAX_PEER_NAME,
    Broadcast,
    Gossip,
    Heartbeat,
    Message,
    Unicast,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))

channels = st.text(min_size=1, max_size=64)
payloads = st.binary(max_size=300)
peers = st.integers(0, MAX_PEER_NAME)
messages: st.SearchStrategy[Message] = st.one_of(
    st.just(Heartbeat()),
    st.builds(Gossip, channels, payloads),
    st.builds(Broadcast, channels, peers, payloads),
    st.builds(Unicast, channels, peers, peers, payloads),
)
keys = st.one_of(st.none(), st.binary(min_size=32, max_size=32))


def encode_all(key: bytes | None, items: list[Message]) -> list[bytes]:
    encoder = FrameEncoder(key)
    return [encoder.encode(m) for m in items]


def drain(decoder: FrameDecoder) -> list[Message]:
    out = []
    while (message := decoder.next_message()) is not None:
        out.append(message)
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def outcome(decoder: FrameDecoder) -> tuple[list[Message], RemoteProtocolError | None]:
    """Messages until NEED_DATA or an error; any other exception fails the test."""
    got: list[Message] = []
    try:
        while (message := decoder.next_message()) is not None:
            got.append(message)
    except RemoteProtocolError as error:
        return got, error
    return got, None


@given(keys, st.lists(messages, max_size=20), st.lists(st.integers(min_value=0), max_size=30))
def test_round_trip_in_any_chunks(key: bytes | None, items: list[Message], cuts: list[int]) -> None:
    stream = b"".join(encode_all(key, items))
    decoder = FrameDecoder(key)
    got: list[Message] = []
    for chunk in split(stream, cuts):
        decoder.receive_data(chunk)
        got.extend(drain(decoder))
    assert got == items
    assert decoder.buffered == 0
    if key is not None:
        assert decoder.counter == len(items)


@given(keys, st.lists(messages, min_size=1, max_size=5), st.data())
def test_every_truncation_is_need_data(
    key: bytes | None, items: list[Message], data: st.DataObject
) -> None:
    frames = encode_all(key, items)
    stream = b"".join(frames)
    cut = data.draw(st.integers(0, len(stream) - 1))
    decoder = FrameDecoder(key)
    decoder.receive_data(stream[:cut])
    complete, total = 0, 0
    for frame in frames:
        total += len(frame)
        if total > cut:
            break
        complete += 1
    assert drain(decoder) == items[:complete]
    assert decoder.next_message() is None


def test_every_prefix_of_one_frame_is_need_data() -> None:
    for key in (None, KEY):
        frame = FrameEncoder(key).encode(Unicast("ipam", 1, 2, b"x" * 40))
        for cut in range(len(frame)):
            decoder = FrameDecoder(key)
            decoder.receive_data(frame[:cut])
            assert decoder.next_message() is None
            assert decoder.next_message() is None


@pytest.mark.parametrize("key", [None, KEY])
@pytest.mark.parametrize("size", [MAX_FRAME_SIZE + 1, 2**32 - 1, 0])
def test_bad_declared_length_fails_at_once(key: bytes | None, size: int) -> None:
    decoder = FrameDecoder(key)
    decoder.receive_data(struct.pack(">I", size))  # header only: no body buffered first
    with pytest.raises(RemoteProtocolError, match="frame of"):
        decoder.next_message()


def test_sealed_frame_shorter_than_a_tag_fails() -> None:
    decoder = FrameDecoder(KEY)
    decoder.receive_data(struct.pack(">I", TAG_SIZE))
    with pytest.raises(RemoteProtocolError, match="too short"):
        decoder.next_message()


def test_max_size_frame_is_accepted() -> None:
    payload = b"x" * (MAX_FRAME_SIZE - 64)
    frame = FrameEncoder(None).encode(Gossip("c", payload))
    assert len(frame) - 4 <= MAX_FRAME_SIZE
    decoder = FrameDecoder(None)
    decoder.receive_data(frame)
    assert decoder.next_message() == Gossip("c", payload)


@pytest.mark.parametrize("key", [None, KEY])
def test_too_large_message_is_our_error(key: bytes | None) -> None:
    with pytest.raises(LocalProtocolError, match="exceeds"):
        FrameEncoder(key).encode(Gossip("c", b"x" * MAX_FRAME_SIZE))


@given(st.lists(messages, min_size=1, max_size=4), st.data())
def test_any_flipped_bit_in_sealed_stream_is_detected(
    items: list[Message], data: st.DataObject
) -> None:
    frames = encode_all(KEY, items)
    stream = bytearray(b"".join(frames))
    bit = data.draw(st.integers(0, len(stream) * 8 - 1))
    stream[bit // 8] ^= 1 << (bit % 8)
    # Which frame holds the flipped bit, and is it in that frame's length header?
    start, index = 0, 0
    while start + len(frames[index]) <= bit // 8:
        start += len(frames[index])
        index += 1
    in_header = bit // 8 - start < 4

    decoder = FrameDecoder(KEY)
    decoder.receive_data(bytes(stream))
    got, error = outcome(decoder)
    assert got == items[:index]
    if error is None:
        # Only a length made larger can leave the decoder waiting; it never yields a message.
        assert in_header
        declared = struct.unpack(">I", stream[start : start + 4])[0]
        assert declared > len(frames[index]) - 4
    else:
        with pytest.raises(RemoteProtocolError):
            decoder.next_message()


def sealed_frames(count: int) -> list[bytes]:
    # Identical messages: only the counter tells the frames apart.
    return encode_all(KEY, [Gossip("c", b"same")] * count)


@pytest.mark.parametrize(
    ("order", "good"),
    [
        ([0, 1, 1, 2], 2),  # replay
        ([0, 2, 1], 1),  # reorder
        ([1, 2], 0),  # first dropped
        ([0, 2], 1),  # middle dropped
        ([0, 1, 2, 0], 3),  # old frame replayed later
    ],
)
def test_replay_reorder_drop_fail_authentication(order: list[int], good: int) -> None:
    frames = sealed_frames(3)
    decoder = FrameDecoder(KEY)
    decoder.receive_data(b"".join(frames[i] for i in order))
    for _ in range(good):
        assert decoder.next_message() == Gossip("c", b"same")
    with pytest.raises(RemoteProtocolError, match="authentication"):
        decoder.next_message()


def test_wrong_key_or_mode_fails() -> None:
    frame = FrameEncoder(KEY).encode(Heartbeat())
    decoder = FrameDecoder(OTHER_KEY)
    decoder.receive_data(frame)
    with pytest.raises(RemoteProtocolError, match="authentication"):
        decoder.next_message()
    # A sealed decoder refuses plain frames (a downgrade) ...
    decoder = FrameDecoder(KEY)
    decoder.receive_data(FrameEncoder(None).encode(Gossip("c", b"x" * 40)))
    with pytest.raises(RemoteProtocolError):
        decoder.next_message()
    # ... and a plain decoder sees sealed frames as garbage.
    decoder = FrameDecoder(None)
    decoder.receive_data(FrameEncoder(KEY).encode(Gossip("c", b"x" * 40)))
    with pytest.raises(RemoteProtocolError):
        decoder.next_message()


def test_start_counter_continues_a_direction() -> None:
    encoder = FrameEncoder(KEY, start_counter=1)
    decoder = FrameDecoder(KEY, start_counter=1)
    decoder.receive_data(encoder.encode(Heartbeat()))
    assert decoder.next_message() == Heartbeat()
    assert encoder.counter == decoder.counter == 2
    late = FrameDecoder(KEY, start_counter=0)
    late.receive_data(FrameEncoder(KEY, start_counter=1).encode(Heartbeat()))
    with pytest.raises(RemoteProtocolError):
        late.next_message()


def test_counter_exhaustion() -> None:
    encoder = FrameEncoder(KEY, start_counter=MAX_COUNTER)
    last = encoder.encode(Heartbeat())
    with pytest.raises(LocalProtocolError, match="exhausted"):
        encoder.encode(Heartbeat())
    decoder = FrameDecoder(KEY, start_counter=MAX_COUNTER)
    decoder.receive_data(last + seal_frame(KEY, 0, msgpack.packb([0])))
    assert decoder.next_message() == Heartbeat()
    with pytest.raises(RemoteProtocolError, match="exhausted"):
        decoder.next_message()


def test_plain_encoding_ignores_counter() -> None:
    assert FrameEncoder(None, start_counter=5).encode(Heartbeat()) == b"\x00\x00\x00\x02\x91\x00"


@pytest.mark.parametrize("key", [b"short", b"x" * 33])
def test_bad_keys_are_refused(key: bytes) -> None:
    with pytest.raises(ValueError):
        FrameEncoder(key)
    with pytest.raises(ValueError):
        FrameDecoder(key)


def frame_with_body(body: bytes, key: bytes | None) -> bytes:
    if key is None:
        return struct.pack(">I", len(body)) + body
    return seal_frame(key, 0, body)


def check_body_is_message_or_protocol_error(body: bytes, key: bytes | None) -> None:
    decoder = FrameDecoder(key)
    decoder.receive_data(frame_with_body(body, key))
    try:
        message = decoder.next_message()
    except RemoteProtocolError:
        return
    assert message is not None


@given(st.binary(min_size=1, max_size=200), st.sampled_from([None, KEY]))
def test_garbage_body_is_protocol_error_or_message(body: bytes, key: bytes | None) -> None:
    check_body_is_message_or_protocol_error(body, key)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=70)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)
message_like = st.one_of(
    msgpack_values,
    st.tuples(st.integers(-2, 6), st.lists(msgpack_values, max_size=5)).map(
        lambda t: [t[0], *t[1]]
    ),
)


@given(message_like, st.sampled_from([None, KEY]))
def test_wrong_shaped_message_is_protocol_error_or_message(obj: Any, key: bytes | None) -> None:
    check_body_is_message_or_protocol_error(msgpack.packb(obj), key)


@pytest.mark.parametrize(
    "body",
    [
        msgpack.packb({}),
        msgpack.packb([]),
        msgpack.packb([0, 1]),
        msgpack.packb([True]),
        msgpack.packb([9]),
        msgpack.packb([1, "", b""]),
        msgpack.packb([1, "x" * 65, b""]),
        msgpack.packb([1, "c", "not bytes"]),
        msgpack.packb([2, "c", -1, b""]),
        msgpack.packb([3, "c", 1, 2**48, b""]),
        msgpack.packb({1: 2}),
        msgpack.packb([0]) + b"\x00",  # trailing bytes
        b"\xc1",  # never-used msgpack byte
        b"\x92\x01",  # truncated array
        b"\xc4\xff",  # bin claiming more than there is
        b"\xdd\xff\xff\xff\xff",  # array claiming 4 billion items
        b"\x91" * 100_000,  # nesting bomb
        b"\xd4\x01\x00",  # ext type
        b"\x93\x01\xa3\xff\xfe\xfd\xc4\x00",  # invalid UTF-8 channel
    ],
)
@pytest.mark.parametrize("key", [None, KEY])
def test_malformed_bodies(body: bytes, key: bytes | None) -> None:
    decoder = FrameDecoder(key)
    decoder.receive_data(frame_with_body(body, key))
    with pytest.raises(RemoteProtocolError):
        decoder.next_message()


def test_decoder_stays_broken() -> None:
    decoder = FrameDecoder(KEY)
    decoder.receive_data(FrameEncoder(OTHER_KEY).encode(Heartbeat()))
    with pytest.raises(RemoteProtocolError) as first:
        decoder.next_message()
    decoder.receive_data(FrameEncoder(KEY).encode(Heartbeat()))
    with pytest.raises(RemoteProtocolError) as again:
        decoder.next_message()
    assert str(again.value) == str(first.value)


def test_many_small_frames_in_one_read() -> None:
    items: list[Message] = [Gossip("c", bytes([i % 256]) * 10) for i in range(20_000)]
    for key in (None, KEY):
        decoder = FrameDecoder(key)
        decoder.receive_data(b"".join(encode_all(key, items)))
        assert drain(decoder) == items


def test_same_message_gives_different_ciphertexts() -> None:
    a, b = sealed_frames(2)
    assert a[:4] == b[:4]
    assert a[4:] != b[4:]
