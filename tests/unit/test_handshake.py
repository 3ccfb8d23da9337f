"""The handshake, tested as h11 tests its connections: two cores joined by plain bytes."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnet.errors import RemoteProtocolError
from meshnet.gossip.framing import LocalProtocolError
from meshnet.gossip.handshake import (
    MAGIC,
    MAX_HELLO_SIZE,
    FeatureValue,
    Handshake,
    HandshakeResult,
    HandshakeState,
    MismatchReason,
    PasswordMismatch,
    VersionMismatch,
)
from meshnet.gossip.identity import Identity
from meshnet.gossip.messages import Gossip, Heartbeat

ALICE = Identity(0x0A0000000001, "alice", 111)
BOB = Identity(0x0A0000000002, "bob", 222)
KEY_1 = b"correct horse battery staple"  # passwords; KEY_ for the old names' sake
KEY_2 = b"correct horse battery stapler"


def rng(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def handshake(
    local: Identity = ALICE,
    key: bytes | None = None,
    *,
    seed: int = 0,
    versions: tuple[int, int] = (2, 2),
    features: dict[str, FeatureValue] | None = None,
) -> Handshake:
    return Handshake(
        local=local,
        features=features or {},
        password=key,
        rng=rng(seed),
        versions=versions,
    )


Transform = Callable[[bytes], bytes]


@dataclass
class Side:
    core: Handshake
    sent: bytearray
    delivered: int = 0  # bytes of the other side's stream given to this core
    error: RemoteProtocolError | None = None


@dataclass
class Pair:
    """Two handshakes exchanging bytes until neither can make progress.

    ``a_to_b`` may rewrite A's whole outgoing stream (it must keep prefixes stable), to tamper.
    ``chunk`` limits how many bytes one delivery carries.
    """

    a: Handshake
    b: Handshake
    a_to_b: Transform = field(default=lambda data: data)
    chunk: int = 1 << 30

    def run(self) -> tuple[Side, Side]:
        a = Side(self.a, bytearray(self.a.initial_bytes()))
        b = Side(self.b, bytearray(self.b.initial_bytes()))
        progress = True
        while progress:
            progress = False
            for me, peer, transform in ((b, a, self.a_to_b), (a, b, lambda d: d)):
                if me.error is not None or me.core.result is not None:
                    continue
                stream = transform(bytes(peer.sent))
                new = stream[me.delivered : me.delivered + self.chunk]
                if not new:
                    continue
                me.delivered += len(new)
                progress = True
                try:
                    me.sent += me.core.receive_data(new)
                except RemoteProtocolError as error:
                    me.error = error
                    me.sent += me.core.unsent_bytes()  # what a shell sends before closing
        return a, b


def connect(a: Handshake, b: Handshake, chunk: int = 1 << 30) -> tuple[Side, Side]:
    return Pair(a, b, chunk=chunk).run()


def results(a: Side, b: Side) -> tuple[HandshakeResult, HandshakeResult]:
    assert a.error is None, a.error
    assert b.error is None, b.error
    assert a.core.result is not None
    assert b.core.result is not None
    return a.core.result, b.core.result


@pytest.mark.parametrize("chunk", [1, 7, 1 << 30])
def test_no_password_on_both_sides(chunk: int) -> None:
    a, b = connect(
        handshake(ALICE, features={"fastdp": True, "mtu": 1376}),
        handshake(BOB, features={"role": "edge"}),
        chunk=chunk,
    )
    ra, rb = results(a, b)
    assert ra.remote == BOB and rb.remote == ALICE
    assert ra.features == {"role": "edge"}
    assert rb.features == {"fastdp": True, "mtu": 1376}
    assert ra.version == rb.version == 2
    assert ra.send_key is ra.receive_key is rb.send_key is rb.receive_key is None
    assert ra.leftover == rb.leftover == b""
    assert a.core.state is HandshakeState.DONE


@pytest.mark.parametrize("chunk", [1, 5, 1 << 30])
def test_same_password_gives_crosswise_keys(chunk: int) -> None:
    a, b = connect(handshake(ALICE, KEY_1, seed=1), handshake(BOB, KEY_1, seed=2), chunk=chunk)
    ra, rb = results(a, b)
    assert ra.send_key is not None and ra.receive_key is not None
    assert ra.send_key == rb.receive_key
    assert ra.receive_key == rb.send_key
    assert ra.send_key != ra.receive_key
    assert len(ra.send_key) == 32
    assert ra.remote == BOB and rb.remote == ALICE


def test_keys_are_fresh_per_connection() -> None:
    first, _ = results(*connect(handshake(ALICE, KEY_1, seed=1), handshake(BOB, KEY_1, seed=2)))
    second, _ = results(*connect(handshake(ALICE, KEY_1, seed=3), handshake(BOB, KEY_1, seed=4)))
    assert first.send_key != second.send_key


def test_frames_flow_after_handshake_with_leftover() -> None:
    """The Confirm is frame 0; message frames continue at 1, and early frames are not lost."""
    alice, bob = handshake(ALICE, KEY_1, seed=1), handshake(BOB, KEY_1, seed=2)
    bob_confirm = bob.receive_data(alice.initial_bytes())
    alice_confirm = alice.receive_data(bob.initial_bytes() + bob_confirm)
    assert alice.result is not None
    alice_encoder = alice.result.frame_encoder()
    early = alice_encoder.encode(Gossip("topology", b"hi"))
    assert bob.receive_data(alice_confirm + early) == b""
    assert bob.result is not None
    assert bob.result.leftover == early
    bob_decoder = bob.result.frame_decoder()
    assert bob_decoder.next_message() == Gossip("topology", b"hi")
    bob_decoder.receive_data(alice_encoder.encode(Heartbeat()))
    assert bob_decoder.next_message() == Heartbeat()
    # And the other direction.
    alice_decoder = alice.result.frame_decoder()
    alice_decoder.receive_data(bob.result.frame_encoder().encode(Heartbeat()))
    assert alice_decoder.next_message() == Heartbeat()


def test_plain_leftover_goes_to_decoder() -> None:
    alice, bob = handshake(ALICE), handshake(BOB)
    bob.receive_data(alice.initial_bytes())
    assert alice.receive_data(bob.initial_bytes()) == b""
    assert alice.result is not None and bob.result is not None
    frame = bob.result.frame_encoder().encode(Heartbeat())
    alice2 = handshake(ALICE)
    alice2.receive_data(bob.initial_bytes() + frame)
    assert alice2.result is not None
    assert alice2.result.frame_decoder().next_message() == Heartbeat()


def test_different_passwords_fail_on_both_sides() -> None:
    a, b = connect(handshake(ALICE, KEY_1, seed=1), handshake(BOB, KEY_2, seed=2))
    for side in (a, b):
        assert isinstance(side.error, PasswordMismatch)
        assert side.error.reason is MismatchReason.DIFFERENT_PASSWORD
        assert "different password" in str(side.error)
        assert side.core.result is None


def test_one_sided_password_fails_on_both_sides_with_reason() -> None:
    a, b = connect(handshake(ALICE, KEY_1), handshake(BOB, None))
    assert isinstance(a.error, PasswordMismatch)
    assert a.error.reason is MismatchReason.PEER_HAS_NO_PASSWORD
    assert str(a.error) == "we use a password but peer 0a:00:00:00:00:02(bob) does not"
    assert isinstance(b.error, PasswordMismatch)
    assert b.error.reason is MismatchReason.PEER_HAS_PASSWORD
    assert str(b.error) == "peer 0a:00:00:00:00:01(alice) uses encryption but we have no password"


version_ranges = st.tuples(st.integers(1, 6), st.integers(0, 3)).map(lambda t: (t[0], t[0] + t[1]))


@given(version_ranges, version_ranges, st.booleans())
def test_version_negotiation(ours: tuple[int, int], theirs: tuple[int, int], sealed: bool) -> None:
    key = KEY_1 if sealed else None
    a, b = connect(
        handshake(ALICE, key, seed=1, versions=ours), handshake(BOB, key, seed=2, versions=theirs)
    )
    best = min(ours[1], theirs[1])
    if best >= max(ours[0], theirs[0]):
        ra, rb = results(a, b)
        assert ra.version == rb.version == best
    else:
        assert a.error is not None and b.error is not None
        assert isinstance(a.error, VersionMismatch) and isinstance(b.error, VersionMismatch)
        # The side whose range is lower must upgrade.
        a_upgrades = ours[1] < theirs[0]
        a_says, b_says = ("this router", "the peer") if a_upgrades else ("the peer", "this router")
        assert str(a.error) == (
            f"no common protocol version: we speak {ours[0]}..{ours[1]},"
            f" peer speaks {theirs[0]}..{theirs[1]}: upgrade meshnet on {a_says}"
        )
        assert str(b.error) == (
            f"no common protocol version: we speak {theirs[0]}..{theirs[1]},"
            f" peer speaks {ours[0]}..{ours[1]}: upgrade meshnet on {b_says}"
        )


@pytest.mark.parametrize("key", [None, KEY_1])
def test_connecting_to_ourselves_is_refused(key: bytes | None) -> None:
    other_start = Identity(ALICE.name, "alice", 999)
    a, b = connect(handshake(ALICE, key, seed=1), handshake(other_start, key, seed=2))
    for side in (a, b):
        assert side.error is not None
        assert str(side.error) == "connected to ourselves"


@pytest.mark.parametrize("key", [None, KEY_1])
def test_every_truncation_of_a_hello_is_need_data(key: bytes | None) -> None:
    hello = handshake(BOB, key, seed=2, features={"x": "y"}).initial_bytes()
    for cut in range(len(hello)):
        core = handshake(ALICE, key, seed=1)
        assert core.receive_data(hello[:cut]) == b""
        assert core.result is None
        assert core.state is HandshakeState.AWAIT_HELLO
    # and one more byte finishes it
    core = handshake(ALICE, key, seed=1)
    out = core.receive_data(hello)
    assert (out != b"") == (key is not None)


def test_every_truncation_of_a_confirm_is_need_data() -> None:
    alice, bob = handshake(ALICE, KEY_1, seed=1), handshake(BOB, KEY_1, seed=2)
    confirm = bob.receive_data(alice.initial_bytes())
    alice.receive_data(bob.initial_bytes())
    for byte in confirm[:-1]:
        assert alice.receive_data(bytes([byte])) == b""
        assert alice.state is HandshakeState.AWAIT_CONFIRM
    alice.receive_data(confirm[-1:])
    assert alice.state is HandshakeState.DONE


def flip(index: int, mask: int) -> Transform:
    def transform(data: bytes) -> bytes:
        if index >= len(data):
            return data
        return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]

    return transform


def test_every_tampered_byte_with_password_is_a_protocol_error() -> None:
    """No tampered byte crashes either side or lets the receiving side come up."""
    alice_hello_size = len(handshake(ALICE, KEY_1, seed=1).initial_bytes())
    for mask in (0x01, 0x80, 0xFF):
        for index in range(alice_hello_size + 4 + 48):
            a, b = Pair(
                handshake(ALICE, KEY_1, seed=1), handshake(BOB, KEY_1, seed=2), flip(index, mask)
            ).run()
            assert b.core.result is None, (index, mask)
            if index < alice_hello_size:
                assert a.core.result is None, (index, mask)
            else:
                # Only the Confirm was hit: Alice saw an honest Bob; Bob detects the damage.
                assert isinstance(b.error, RemoteProtocolError)
            if index >= alice_hello_size + 4:  # in the sealed part of the Confirm
                assert isinstance(b.error, PasswordMismatch)
                assert b.error.reason is MismatchReason.DIFFERENT_PASSWORD


def test_tampered_features_are_caught_by_the_transcript() -> None:
    alice = handshake(ALICE, KEY_1, seed=1, features={"mode": "fast"})
    hello = alice.initial_bytes()
    where = hello.index(b"fast")
    a, b = Pair(alice, handshake(BOB, KEY_1, seed=2), flip(where, 0x20)).run()
    assert a.error is not None and b.error is not None
    assert "altered in transit" in str(a.error)
    assert "altered in transit" in str(b.error)


@given(st.integers(0, 300), st.integers(1, 255), st.booleans())
def test_tampering_without_password_never_crashes(index: int, mask: int, sealed: bool) -> None:
    key = KEY_1 if sealed else None
    Pair(handshake(ALICE, key, seed=1), handshake(BOB, key, seed=2), flip(index, mask)).run()


def hello_from_fields(fields: Any) -> bytes:
    body: bytes = msgpack.packb(fields)
    return MAGIC + struct.pack(">I", len(body)) + body


def good_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "versions": [2, 2],
        "name": BOB.name,
        "nickname": "bob",
        "uid": 5,
        "features": {},
        "encrypted": False,
    }
    fields.update(overrides)
    return fields


def test_hand_built_hello_is_accepted_and_unknown_keys_ignored() -> None:
    core = handshake(ALICE)
    core.receive_data(hello_from_fields(good_fields(future_field=[1, 2, 3])))
    assert core.result is not None
    assert core.result.remote == Identity(BOB.name, "bob", 5)


@pytest.mark.parametrize(
    "fields",
    [
        good_fields(name=2**48),
        good_fields(name=-1),
        good_fields(name="bob"),
        good_fields(name=True),
        good_fields(name=2**64 - 1),
        good_fields(uid=-5),
        good_fields(uid=False),
        good_fields(uid=1.5),
        good_fields(nickname="x" * 65),
        good_fields(nickname=""),
        good_fields(nickname="bob\nERROR fake log line"),
        good_fields(nickname=b"bob"),
        good_fields(versions=[1]),
        good_fields(versions=[2, 1]),
        good_fields(versions=[0, 1]),
        good_fields(versions=[1, 2**32]),
        good_fields(versions="1"),
        good_fields(features=[]),
        good_fields(features={"k": [1]}),
        good_fields(features={"k": None}),
        good_fields(features={"k": 1.5}),
        good_fields(features={"": 1}),
        good_fields(features={"k" * 65: 1}),
        good_fields(features={"k": "v" * 1025}),
        good_fields(features={f"k{i}": i for i in range(33)}),
        good_fields(encrypted=1),
        good_fields(encrypted=True),
        good_fields(encrypted=True, public_key=b"x" * 31),
        good_fields(encrypted=True, public_key="x" * 32),
        good_fields(encrypted=True, public_key=b"x" * 32, pake=b"S" + bytes(31)),
        good_fields(encrypted=True, public_key=b"x" * 32, pake=b"A" + bytes(32)),
        good_fields(encrypted=True, public_key=b"x" * 32, pake="S" * 33),
        {k: v for k, v in good_fields().items() if k != "name"},
        [1, 2, 3],
        "hello",
    ],
)
@pytest.mark.parametrize("key", [None, KEY_1])
def test_malformed_hello_fields(fields: Any, key: bytes | None) -> None:
    core = handshake(ALICE, key)
    with pytest.raises(RemoteProtocolError):
        core.receive_data(hello_from_fields(fields))
    assert core.state is HandshakeState.FAILED


def sealed_fields(core: Handshake, **overrides: Any) -> dict[str, Any]:
    """Bob's Hello fields with a password, its keys taken from ``core``'s Hello."""
    hello = msgpack.unpackb(core.initial_bytes()[len(MAGIC) + 4 :])
    keys = {"public_key": hello["public_key"], "pake": hello["pake"]}
    return good_fields(encrypted=True, **{**keys, **overrides})


def test_password_but_no_pake_message_is_refused() -> None:
    fields = sealed_fields(handshake(BOB, KEY_1, seed=2))
    del fields["pake"]
    with pytest.raises(RemoteProtocolError, match="no pake message"):
        handshake(ALICE, KEY_1).receive_data(hello_from_fields(fields))


@pytest.mark.parametrize("public_key", [bytes(32), b"\x01" + bytes(31)])
def test_low_order_public_key_is_refused(public_key: bytes) -> None:
    core = handshake(ALICE, KEY_1)
    fields = sealed_fields(handshake(BOB, KEY_1, seed=2), public_key=public_key)
    with pytest.raises(RemoteProtocolError, match="unusable X25519 key"):
        core.receive_data(hello_from_fields(fields))


@pytest.mark.parametrize("pake", [b"S" + b"\xff" * 32, b"S" + bytes(32), b"S\x01" + bytes(31)])
def test_unusable_pake_message_is_refused(pake: bytes) -> None:
    core = handshake(ALICE, KEY_1)
    fields = sealed_fields(handshake(BOB, KEY_1, seed=2), pake=pake)
    with pytest.raises(RemoteProtocolError, match="unusable SPAKE2 message"):
        core.receive_data(hello_from_fields(fields))


def test_echoed_hello_is_refused() -> None:
    core = handshake(ALICE, KEY_1)
    with pytest.raises(RemoteProtocolError, match="ourselves"):
        core.receive_data(core.initial_bytes())


def test_echoed_pake_message_is_refused() -> None:
    """Our own SPAKE2 message reflected (with another X25519 key) never makes a key."""
    core = handshake(ALICE, KEY_1)
    fields = sealed_fields(handshake(BOB, KEY_1, seed=2), pake=sealed_fields(core)["pake"])
    with pytest.raises(RemoteProtocolError, match="echoed"):
        core.receive_data(hello_from_fields(fields))


def test_a_version_1_peer_is_told_to_upgrade() -> None:
    """A Hello as protocol 1 sent it (a password, no SPAKE2 message) is refused for its version,
    before anything about its keys."""
    fields = sealed_fields(handshake(BOB, KEY_1, seed=2), versions=[1, 1])
    del fields["pake"]
    core = handshake(ALICE, KEY_1)
    with pytest.raises(VersionMismatch, match=r"peer speaks 1\.\.1: upgrade meshnet on the peer"):
        core.receive_data(hello_from_fields(fields))


@pytest.mark.parametrize("first", [b"G", b"GET / HTTP/1.1\r\n", b"MESHNET\x01", b"\x00"])
def test_wrong_magic_is_not_a_meshnet_peer(first: bytes) -> None:
    core = handshake(ALICE)
    with pytest.raises(RemoteProtocolError, match="not a meshnet peer"):
        core.receive_data(first)


@pytest.mark.parametrize("size", [0, MAX_HELLO_SIZE + 1, 2**32 - 1])
def test_bad_hello_length_fails_before_the_body(size: int) -> None:
    core = handshake(ALICE)
    with pytest.raises(RemoteProtocolError, match="malformed hello"):
        core.receive_data(MAGIC + struct.pack(">I", size))


@given(st.binary(max_size=200), st.sampled_from([None, KEY_1]))
def test_garbage_hello_body_is_protocol_error_or_hello(body: bytes, key: bytes | None) -> None:
    core = handshake(ALICE, key)
    try:
        core.receive_data(MAGIC + struct.pack(">I", len(body)) + body)
    except RemoteProtocolError:
        return


hello_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=6,
)


@given(
    st.dictionaries(
        st.sampled_from(
            ["versions", "name", "nickname", "uid", "features", "encrypted", "public_key", "pake"]
        ),
        hello_values | st.binary(min_size=32, max_size=33),
    ),
    st.sampled_from([None, KEY_1]),
)
def test_wrong_shaped_hello_is_protocol_error(fields: dict[str, Any], key: bytes | None) -> None:
    core = handshake(ALICE, key)
    try:
        core.receive_data(hello_from_fields({**good_fields(), **fields}))
    except RemoteProtocolError:
        return


def test_failed_handshake_stays_failed() -> None:
    core = handshake(ALICE, KEY_1)
    with pytest.raises(PasswordMismatch) as first:
        core.receive_data(handshake(BOB, None).initial_bytes())
    with pytest.raises(PasswordMismatch) as again:
        core.receive_data(b"more")
    assert again.value.reason is first.value.reason


def test_bytes_after_done_belong_to_the_decoder() -> None:
    core = handshake(ALICE)
    core.receive_data(handshake(BOB).initial_bytes())
    with pytest.raises(LocalProtocolError):
        core.receive_data(b"\x00")


def test_local_features_are_validated() -> None:
    with pytest.raises(ValueError):
        handshake(ALICE, features={"k": [1]})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        handshake(ALICE, features={f"k{i}": i for i in range(33)})


def test_empty_password_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        handshake(ALICE, b"")


def test_confirm_owed_to_the_peer_survives_a_failure() -> None:
    """Peer's Hello and a bad Confirm in one read: we fail, but our Confirm is still available."""
    alice, bob = handshake(ALICE, KEY_1, seed=1), handshake(BOB, KEY_2, seed=2)
    bob_confirm = bob.receive_data(alice.initial_bytes())
    with pytest.raises(PasswordMismatch):
        alice.receive_data(bob.initial_bytes() + bob_confirm)
    owed = alice.unsent_bytes()
    assert len(owed) == 4 + 32 + 16
    with pytest.raises(PasswordMismatch) as info:
        bob.receive_data(owed)
    assert info.value.reason is MismatchReason.DIFFERENT_PASSWORD


def test_a_router_without_a_password_never_loads_spake2() -> None:
    """SPAKE2 brings in ``cryptography`` (~11 MiB resident): only the first handshake with a
    password pays for it."""
    code = (
        "import sys, os\n"
        "from meshnet import daemon\n"
        "from meshnet.gossip.handshake import Handshake\n"
        "from meshnet.gossip.identity import Identity\n"
        "Handshake(local=Identity(2, 'a', 1), features={}, password=None, rng=os.urandom)\n"
        "print('spake2' in sys.modules, 'cryptography' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
