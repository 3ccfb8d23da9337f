"""The control connection's handshake: agree on a version, learn who the peer is, derive keys.

Both sides send a Hello at once, so no side needs an initiator role. Without a password that is
all. With one, the Hellos also carry an ephemeral X25519 key and a SPAKE2 message (the symmetric
variant, so both sides are equal peers), and each side then sends a Confirm: a frame sealed with
its new send key (frame counter 0) over the hash of both Hellos. The keys come from the SPAKE2 key,
the X25519 secret and that hash, so the Confirm proves the peer knows the password and saw the
same Hellos (a downgraded version range or altered features are caught).

Why SPAKE2 (protocol version 2): version 1 keyed the Confirm with the password alone (Argon2id at
a salt fixed for every mesh), so anyone who connected once, even without the password, could test
guesses against the Confirm offline. A SPAKE2 key depends on both sides' secret scalars, and a side
that used a wrong password cannot compute the key for any other password from what it received (a
Diffie-Hellman problem). So a passive capture gives nothing to test, and an active attacker tests
exactly one guess per connection, online (and the router rate-limits failed attempts per source).
No password stretching is needed for that, so there is none: a strong secret is what protects a
mesh (``--password-file`` with 32 random bytes). The X25519 exchange stays, computed by libsodium,
so confidentiality against a passive listener never rests on the pure-Python SPAKE2 alone; both
exchanges are ephemeral, so a later leak of the password does not open past connections.

Wire form of a Hello: ``MAGIC`` (8 bytes), a 4-byte big-endian length, then a msgpack map. The
Hello's format does not depend on the protocol version (that is what it negotiates); unknown keys
are ignored so newer versions can add fields. A peer speaking only an older or newer version is
refused with a message naming both ranges and which side to upgrade.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack
import nacl.bindings
import nacl.exceptions

from meshnet.errors import RemoteProtocolError
from meshnet.gossip.framing import (
    HEADER,
    KEY_SIZE,
    TAG_SIZE,
    FrameDecoder,
    FrameEncoder,
    LocalProtocolError,
    open_frame,
    seal_frame,
    unpack_untrusted,
)
from meshnet.gossip.identity import (
    MAX_NICKNAME_LENGTH,
    MAX_UID,
    Identity,
    Rng,
)
from meshnet.gossip.messages import MAX_PEER_NAME

MAGIC = b"MESHNET\x00"
SUPPORTED_VERSIONS = (2, 2)
"""1 was the password check open to offline guessing (see the module docstring); never again."""
MAX_VERSION = (1 << 32) - 1
MAX_HELLO_SIZE = 4 * 1024
"""A Hello arrives before the peer has proven anything, so what it may make us buffer is small;
ours is a few hundred bytes."""
MAX_FEATURES = 32
MAX_FEATURE_KEY_LENGTH = 64
MAX_FEATURE_STR_LENGTH = 1024
PUBLIC_KEY_SIZE = nacl.bindings.crypto_scalarmult_BYTES
PAKE_MESSAGE_SIZE = 33
"""A SPAKE2_Symmetric message: the side byte ``S`` and an Ed25519 element."""
CONFIRM_COUNTER = 0
FIRST_FRAME_COUNTER = CONFIRM_COUNTER + 1
"""Sealed message frames continue each direction's counter after the Confirm."""

_TRANSCRIPT_SIZE = 32
_CONFIRM_BODY_SIZE = _TRANSCRIPT_SIZE + TAG_SIZE
_KDF_PERSON = b"meshnet-kdf-v2"
_TRANSCRIPT_PERSON = b"meshnet-hello-v1"
_PAKE_ID = b"meshnet control connection v2"
"""SPAKE2's identity for both sides: binds its key to this use of the password."""

if TYPE_CHECKING:
    import spake2  # type: ignore[import-untyped]


def _spake2() -> Any:  # an untyped library
    """The SPAKE2 library, imported on the first handshake with a password: it brings in
    ``cryptography`` (about 11 MiB resident), which a router without a password never needs."""
    import spake2  # lazily: the memory above
    import spake2.ed25519_basic  # type: ignore[import-untyped]  # lazily: as above

    return spake2


def _pake_errors() -> tuple[type[Exception], ...]:
    """What SPAKE2 raises for a message that is no usable group element (or our own, reflected)."""
    module = _spake2()
    return (module.spake2.SPAKEError, module.ed25519_basic.NotOnCurve, ValueError)


FeatureValue = str | int | bool


class MismatchReason(enum.Enum):
    """Why the password check failed; the daemon counts each kind separately."""

    PEER_HAS_PASSWORD = "peer_has_password"
    PEER_HAS_NO_PASSWORD = "peer_has_no_password"
    DIFFERENT_PASSWORD = "different_password"


class PasswordMismatch(RemoteProtocolError):
    """The two sides do not share the same password (or someone tampered with the handshake)."""

    def __init__(self, message: str, reason: MismatchReason) -> None:
        super().__init__(message)
        self.reason = reason


class VersionMismatch(RemoteProtocolError):
    """The peer speaks no protocol version we do: one side must upgrade meshnet."""


class SelfConnection(RemoteProtocolError):
    """The address we dialled is one of our own: the dialler should never try it again."""


class HandshakeState(enum.Enum):
    AWAIT_HELLO = "await_hello"
    AWAIT_CONFIRM = "await_confirm"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Hello:
    """What a peer says about itself before anything else."""

    versions: tuple[int, int]
    identity: Identity
    features: dict[str, FeatureValue]
    public_key: bytes | None  # present exactly when the peer has a password
    pake: bytes | None = None  # its SPAKE2 message; present with a password since version 2

    def encode(self) -> bytes:
        """The wire form: magic, length, msgpack map."""
        fields: dict[str, Any] = {
            "versions": list(self.versions),
            "name": self.identity.name,
            "nickname": self.identity.nickname,
            "uid": self.identity.uid,
            "features": self.features,
            "encrypted": self.public_key is not None,
        }
        if self.public_key is not None:
            fields["public_key"] = self.public_key
        if self.pake is not None:
            fields["pake"] = self.pake
        body: bytes = msgpack.packb(fields, use_bin_type=True)
        if len(body) > MAX_HELLO_SIZE:
            raise LocalProtocolError(f"hello of {len(body)} bytes exceeds {MAX_HELLO_SIZE}")
        return MAGIC + HEADER.pack(len(body)) + body


@dataclass(frozen=True)
class HandshakeResult:
    """An agreed connection: who the peer is, what it offers, and the keys for the frames."""

    remote: Identity
    features: dict[str, FeatureValue]
    version: int
    send_key: bytes | None
    receive_key: bytes | None
    leftover: bytes = field(repr=False)
    """Bytes that arrived after the handshake; they belong to the frame decoder."""

    def frame_encoder(self) -> FrameEncoder:
        """An encoder continuing after the Confirm (sealed) or plain."""
        return FrameEncoder(self.send_key, start_counter=FIRST_FRAME_COUNTER)

    def frame_decoder(self) -> FrameDecoder:
        """A decoder continuing after the Confirm, already fed with ``leftover``."""
        decoder = FrameDecoder(self.receive_key, start_counter=FIRST_FRAME_COUNTER)
        decoder.receive_data(self.leftover)
        return decoder


def _malformed(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed hello: {what}")


def _int_field(fields: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = fields.get(key)
    if type(value) is not int or not low <= value <= high:
        raise _malformed(f"bad {key} {value!r:.40}")
    return value


def _check_features(features: Any) -> dict[str, FeatureValue]:
    """Features are a small flat map, so a peer cannot make us hold or log much."""
    if not isinstance(features, dict) or len(features) > MAX_FEATURES:
        raise _malformed(f"features must be a map of at most {MAX_FEATURES} entries")
    for key, value in features.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_FEATURE_KEY_LENGTH:
            raise _malformed(f"bad feature name {key!r:.40}")
        if type(value) is str:
            if len(value) > MAX_FEATURE_STR_LENGTH:
                raise _malformed(f"feature {key} value too long")
        elif type(value) is int:
            if not -(1 << 63) <= value <= (1 << 64) - 1:
                raise _malformed(f"feature {key} value out of range")
        elif type(value) is not bool:
            raise _malformed(f"feature {key} has a {type(value).__name__} value")
    return dict(features)


def decode_hello(body: bytes) -> Hello:
    """Validate a Hello's msgpack map (without magic and length); RemoteProtocolError if bad."""
    fields = unpack_untrusted(body, max_container_len=2 * MAX_FEATURES)
    if not isinstance(fields, dict):
        raise _malformed(f"expected a map, got {type(fields).__name__}")
    versions = fields.get("versions")
    if (
        not isinstance(versions, list)
        or len(versions) != 2
        or any(type(v) is not int or not 1 <= v <= MAX_VERSION for v in versions)
        or versions[0] > versions[1]
    ):
        raise _malformed(f"bad version range {versions!r:.40}")
    name = _int_field(fields, "name", 0, MAX_PEER_NAME)
    uid = _int_field(fields, "uid", 0, MAX_UID)
    nickname = fields.get("nickname")
    if (
        not isinstance(nickname, str)
        or not 0 < len(nickname) <= MAX_NICKNAME_LENGTH
        or not nickname.isprintable()  # it goes into every log line about this peer
    ):
        raise _malformed(f"nickname must be 1..{MAX_NICKNAME_LENGTH} printable characters")
    features = _check_features(fields.get("features"))
    encrypted = fields.get("encrypted")
    if type(encrypted) is not bool:
        raise _malformed("encrypted must be a bool")
    public_key = None
    pake = None
    if encrypted:
        public_key = fields.get("public_key")
        if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_SIZE:
            raise _malformed(f"public_key must be {PUBLIC_KEY_SIZE} bytes")
        # Optional here: a version 1 Hello has none, and must reach the version check.
        pake = fields.get("pake")
        if pake is not None and (
            not isinstance(pake, bytes) or len(pake) != PAKE_MESSAGE_SIZE or pake[:1] != b"S"
        ):
            raise _malformed(f"pake must be a {PAKE_MESSAGE_SIZE}-byte symmetric SPAKE2 message")
    return Hello(
        versions=(versions[0], versions[1]),
        identity=Identity(name, nickname, uid),
        features=features,
        public_key=public_key,
        pake=pake,
    )


def negotiate_version(ours: tuple[int, int], theirs: tuple[int, int]) -> int:
    """The highest version both speak; VersionMismatch saying who must upgrade otherwise."""
    best = min(ours[1], theirs[1])
    if best < max(ours[0], theirs[0]):
        who = "the peer" if theirs[1] < ours[0] else "this router"
        raise VersionMismatch(
            f"no common protocol version: we speak {ours[0]}..{ours[1]},"
            f" peer speaks {theirs[0]}..{theirs[1]}: upgrade meshnet on {who}"
        )
    return best


def derive_keys(
    pake_key: bytes,
    shared: bytes,
    public_keys: tuple[bytes, bytes],
    names: tuple[int, int],
    version: int,
) -> tuple[bytes, bytes]:
    """Keys for (lower public key → higher, higher → lower); both sides compute the same pair.

    Inputs are sorted so neither side needs a role. The SPAKE2 key is BLAKE2b's MAC key: without
    it (so without the password and this connection's SPAKE2 secrets) the keys cannot be
    computed, even with the X25519 secret. The Hellos are bound by the Confirm, not here, so a
    tampered Hello is told apart from a different password.
    """
    low, high = sorted(public_keys)
    material = (
        shared
        + low
        + high
        + b"".join(n.to_bytes(6, "big") for n in sorted(names))
        + version.to_bytes(4, "big")
    )
    digest = hashlib.blake2b(
        material, digest_size=2 * KEY_SIZE, key=pake_key, person=_KDF_PERSON
    ).digest()
    return digest[:KEY_SIZE], digest[KEY_SIZE:]


def transcript_hash(hello_a: bytes, hello_b: bytes) -> bytes:
    """A hash of both Hellos as sent; sorted so both sides agree. Each Hello is self-delimiting
    (magic + length), so the concatenation is unambiguous."""
    first, second = sorted((hello_a, hello_b))
    return hashlib.blake2b(
        first + second, digest_size=_TRANSCRIPT_SIZE, person=_TRANSCRIPT_PERSON
    ).digest()


class Handshake:
    """One side of the handshake, sans-IO: bytes in, bytes out, ``result`` when done.

    Send ``initial_bytes()`` at once, then feed every received chunk to ``receive_data`` and send
    what it returns. After an error the object stays failed and raises the same error again.
    """

    def __init__(
        self,
        *,
        local: Identity,
        features: Mapping[str, FeatureValue],
        password: bytes | None,
        rng: Rng,
        versions: tuple[int, int] = SUPPORTED_VERSIONS,
    ) -> None:
        if password is not None and not password:
            raise ValueError("the password is empty; use None to run without encryption")
        if not 1 <= versions[0] <= versions[1] <= MAX_VERSION:
            raise ValueError(f"bad version range {versions!r}")
        self._local = local
        self._versions = versions
        self._secret: bytes | None = None
        self._pake: spake2.SPAKE2_Symmetric | None = None
        public_key: bytes | None = None
        pake_message: bytes | None = None
        if password is not None:
            self._secret = rng(nacl.bindings.crypto_scalarmult_SCALARBYTES)
            if len(self._secret) != nacl.bindings.crypto_scalarmult_SCALARBYTES:
                raise ValueError("rng returned the wrong number of bytes")
            public_key = nacl.bindings.crypto_scalarmult_base(self._secret)
            self._pake = _spake2().SPAKE2_Symmetric(password, idSymmetric=_PAKE_ID, entropy_f=rng)
            pake_message = self._pake.start()
        hello = Hello(versions, local, dict(features), public_key, pake_message)
        # Validate our own features by the rules we apply to the peer's, so we never send a
        # Hello the peer must refuse.
        try:
            _check_features(hello.features)
        except RemoteProtocolError as error:
            raise ValueError(str(error).replace("malformed hello: ", "")) from None
        self._hello = hello
        self._hello_bytes = hello.encode()
        self._buffer = bytearray()
        self._state = HandshakeState.AWAIT_HELLO
        self._error: RemoteProtocolError | None = None
        self._peer: Hello | None = None
        self._peer_hello_bytes = b""
        self._version = 0
        self._keys: tuple[bytes, bytes] | None = None  # (send, receive)
        self._unsent = b""
        self.result: HandshakeResult | None = None

    @property
    def state(self) -> HandshakeState:
        return self._state

    def initial_bytes(self) -> bytes:
        """Our Hello, to send as soon as the connection opens."""
        return self._hello_bytes

    def receive_data(self, data: bytes) -> bytes:
        """Take bytes from the peer; returns bytes to send now (the Confirm, once) or b"".

        If this raises, ``unsent_bytes()`` holds what this call still owed the peer.
        """
        if self._error is not None:
            raise self._error
        if self._state is HandshakeState.DONE:
            raise LocalProtocolError("handshake finished; feed further bytes to the frame decoder")
        self._buffer += data
        out = bytearray()
        try:
            self._advance(out)
        except RemoteProtocolError as error:
            self._state = HandshakeState.FAILED
            self._error = error
            self._unsent = bytes(out)
            self._buffer = bytearray()
            self._secret = None
            self._pake = None
            raise
        return bytes(out)

    def unsent_bytes(self) -> bytes:
        """After ``receive_data`` raised: our Confirm, if that call produced one before failing.

        The peer's Hello and a bad Confirm can arrive in one read; sending our Confirm anyway
        (best effort, before closing) lets the peer log the same clear failure, e.g. a password
        mismatch, instead of a bare disconnect.
        """
        return self._unsent

    def _advance(self, out: bytearray) -> None:
        if self._state is HandshakeState.AWAIT_HELLO:
            out += self._receive_hello()
        if self._state is HandshakeState.AWAIT_CONFIRM:
            self._receive_confirm()

    def _receive_hello(self) -> bytes:
        prefix = bytes(self._buffer[: len(MAGIC)])
        if not MAGIC.startswith(prefix):
            raise RemoteProtocolError("not a meshnet peer (bad magic)")
        start = len(MAGIC) + HEADER.size
        if len(self._buffer) < start:
            return b""
        (size,) = HEADER.unpack(self._buffer[len(MAGIC) : start])
        if not 0 < size <= MAX_HELLO_SIZE:
            raise _malformed(f"declared size {size} not in 1..{MAX_HELLO_SIZE}")
        if len(self._buffer) < start + size:
            return b""
        self._peer_hello_bytes = bytes(self._buffer[: start + size])
        del self._buffer[: start + size]
        peer = decode_hello(self._peer_hello_bytes[start:])
        self._peer = peer
        self._version = negotiate_version(self._versions, peer.versions)
        if peer.identity.name == self._local.name:
            raise SelfConnection("connected to ourselves")
        if peer.public_key is not None and self._secret is None:
            raise PasswordMismatch(
                f"peer {peer.identity} uses encryption but we have no password",
                MismatchReason.PEER_HAS_PASSWORD,
            )
        if peer.public_key is None and self._secret is not None:
            raise PasswordMismatch(
                f"we use a password but peer {peer.identity} does not",
                MismatchReason.PEER_HAS_NO_PASSWORD,
            )
        if peer.public_key is None or self._secret is None or self._pake is None:
            self._finish()
            return b""
        if peer.pake is None:
            raise _malformed("a password but no pake message")
        return self._start_confirm(peer, peer.public_key, peer.pake, self._secret, self._pake)

    def _start_confirm(
        self,
        peer: Hello,
        peer_public: bytes,
        peer_pake: bytes,
        secret: bytes,
        pake: spake2.SPAKE2_Symmetric,
    ) -> bytes:
        ours = self._hello.public_key
        assert ours is not None
        if peer_public == ours or peer_pake == self._hello.pake:
            raise RemoteProtocolError("peer echoed our ephemeral key")
        try:
            shared = nacl.bindings.crypto_scalarmult(secret, peer_public)
        except nacl.exceptions.CryptoError:
            # libsodium refuses low-order points, which would make the secret predictable.
            raise RemoteProtocolError(f"peer {peer.identity} sent an unusable X25519 key") from None
        try:
            pake_key: bytes = pake.finish(peer_pake)
        except _pake_errors():
            raise RemoteProtocolError(
                f"peer {peer.identity} sent an unusable SPAKE2 message"
            ) from None
        forward, backward = derive_keys(
            pake_key,
            shared,
            (ours, peer_public),
            (self._local.name, peer.identity.name),
            self._version,
        )
        self._keys = (forward, backward) if ours < peer_public else (backward, forward)
        self._state = HandshakeState.AWAIT_CONFIRM
        transcript = transcript_hash(self._hello_bytes, self._peer_hello_bytes)
        return seal_frame(self._keys[0], CONFIRM_COUNTER, transcript)

    def _receive_confirm(self) -> None:
        assert self._keys is not None and self._peer is not None
        if len(self._buffer) < HEADER.size:
            return
        (size,) = HEADER.unpack(self._buffer[: HEADER.size])
        if size != _CONFIRM_BODY_SIZE:
            raise RemoteProtocolError(
                f"confirm frame of {size} bytes from peer {self._peer.identity},"
                f" expected {_CONFIRM_BODY_SIZE}"
            )
        end = HEADER.size + size
        if len(self._buffer) < end:
            return
        header = bytes(self._buffer[: HEADER.size])
        sealed = bytes(self._buffer[HEADER.size : end])
        del self._buffer[:end]
        try:
            transcript = open_frame(self._keys[1], CONFIRM_COUNTER, header, sealed)
        except RemoteProtocolError:
            raise PasswordMismatch(
                f"peer {self._peer.identity} failed the password check:"
                " different password (or tampering)",
                MismatchReason.DIFFERENT_PASSWORD,
            ) from None
        expected = transcript_hash(self._hello_bytes, self._peer_hello_bytes)
        if not hmac.compare_digest(transcript, expected):
            raise RemoteProtocolError(
                f"peer {self._peer.identity} saw different hellos than we did: altered in transit"
            )
        self._finish()

    def _finish(self) -> None:
        assert self._peer is not None
        send_key, receive_key = self._keys if self._keys is not None else (None, None)
        self.result = HandshakeResult(
            remote=self._peer.identity,
            features=self._peer.features,
            version=self._version,
            send_key=send_key,
            receive_key=receive_key,
            leftover=bytes(self._buffer),
        )
        self._buffer = bytearray()
        self._secret = None  # forward secrecy: the ephemeral secrets are not needed any more
        self._pake = None
        self._state = HandshakeState.DONE
