"""Frames on the TCP control connection: a 4-byte big-endian length, then a body.

The body is the msgpack of one message, in plain mode as is, in sealed mode as ChaCha20-Poly1305
(IETF, RFC 8439) ciphertext. Sealed frames use a per-direction 64-bit counter as the nonce, never
transmitted: both ends count frames, so a replayed, reordered, dropped or forged frame fails to
authenticate. A counter is safe here (and XChaCha's random 192-bit nonces would buy nothing)
because every connection gets fresh keys from an ephemeral X25519 exchange, one per direction, so
a (key, nonce) pair is never reused. The length header is the associated data, so it cannot be
changed either.

Sans-IO in the style of h11: the decoder only stores the bytes it is given and hands out messages
one at a time; the encoder returns bytes. The owner of the socket moves them.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import nacl.bindings
import nacl.exceptions

from meshnet.errors import MeshnetError, RemoteProtocolError
from meshnet.gossip.messages import Message, decode_message, encode_message

MAX_FRAME_SIZE = 4 * 1024 * 1024
"""Largest body (plaintext or ciphertext) a frame may declare; larger is refused unread."""

HEADER = struct.Struct(">I")
KEY_SIZE = nacl.bindings.crypto_aead_chacha20poly1305_ietf_KEYBYTES
TAG_SIZE = nacl.bindings.crypto_aead_chacha20poly1305_ietf_ABYTES
MAX_COUNTER = (1 << 64) - 1
_NONCE_PREFIX = bytes(4)  # 96-bit IETF nonce = 4 zero bytes + the 64-bit counter


class LocalProtocolError(MeshnetError):
    """We were asked to send something the protocol cannot carry (too large, counter used up).

    Our fault, not the peer's: the caller should close the connection (and, for size, fix the
    sender), not blame the peer.
    """


def _nonce(counter: int) -> bytes:
    return _NONCE_PREFIX + counter.to_bytes(8, "big")


def _check_key(key: bytes | None) -> None:
    if key is not None and (not isinstance(key, bytes) or len(key) != KEY_SIZE):
        raise ValueError(f"a frame key must be {KEY_SIZE} bytes")


def _check_counter(counter: int) -> None:
    if type(counter) is not int or not 0 <= counter <= MAX_COUNTER + 1:
        raise ValueError(f"frame counter out of range: {counter!r}")


def seal_frame(key: bytes, counter: int, plaintext: bytes) -> bytes:
    """A whole sealed frame (header + ciphertext) for frame number ``counter`` of a direction."""
    if counter > MAX_COUNTER:
        raise LocalProtocolError("send frame counter exhausted; reconnect to get fresh keys")
    size = len(plaintext) + TAG_SIZE
    if size > MAX_FRAME_SIZE:
        raise LocalProtocolError(f"frame of {size} bytes exceeds the {MAX_FRAME_SIZE} byte limit")
    header = HEADER.pack(size)
    return header + nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
        plaintext, header, _nonce(counter), key
    )


def open_frame(key: bytes, counter: int, header: bytes, ciphertext: bytes) -> bytes:
    """The plaintext of a sealed frame; RemoteProtocolError if it does not authenticate."""
    if counter > MAX_COUNTER:
        raise RemoteProtocolError("receive frame counter exhausted; peer should have reconnected")
    try:
        plaintext: bytes = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
            ciphertext, header, _nonce(counter), key
        )
    except nacl.exceptions.CryptoError:
        raise RemoteProtocolError(
            f"frame {counter} failed authentication (tampered, replayed, reordered or wrong key)"
        ) from None
    return plaintext


def unpack_untrusted(data: bytes, *, max_container_len: int) -> Any:
    """msgpack-decode bytes from a peer with hard limits; any failure is a RemoteProtocolError.

    Limits keep a small frame from claiming a huge array; ext types are refused outright.
    """
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_bin_len=len(data),
            max_str_len=len(data),
            max_array_len=max_container_len,
            max_map_len=max_container_len,
            max_ext_len=0,
        )
    except (msgpack.UnpackException, ValueError, TypeError, OverflowError) as error:
        # ValueError covers msgpack's ExtraData/FormatError/StackError and bad UTF-8.
        raise RemoteProtocolError(f"malformed msgpack: {error}") from None


def encode_frame_body(message: Message) -> bytes:
    """The plain body of a frame carrying ``message``."""
    body: bytes = msgpack.packb(encode_message(message), use_bin_type=True)
    return body


def decode_frame_body(body: bytes) -> Message:
    """The message in a plain body; RemoteProtocolError if it is not one."""
    # A message is a short flat array; 16 leaves room for new kinds without allowing bombs.
    return decode_message(unpack_untrusted(body, max_container_len=16))


class FrameEncoder:
    """Turns messages into frames for one direction of one connection."""

    def __init__(self, send_key: bytes | None, *, start_counter: int = 0) -> None:
        """``send_key`` None means plain frames; ``start_counter`` skips frames already sent
        under this key (the handshake's Confirm is frame 0)."""
        _check_key(send_key)
        _check_counter(start_counter)
        self._key = send_key
        self._counter = start_counter

    @property
    def sealed(self) -> bool:
        return self._key is not None

    @property
    def counter(self) -> int:
        """The number the next sealed frame will use."""
        return self._counter

    def encode(self, message: Message) -> bytes:
        """The bytes of one frame; LocalProtocolError if it is too large or keys are used up."""
        body = encode_frame_body(message)
        if self._key is None:
            if len(body) > MAX_FRAME_SIZE:
                raise LocalProtocolError(
                    f"frame of {len(body)} bytes exceeds the {MAX_FRAME_SIZE} byte limit"
                )
            return HEADER.pack(len(body)) + body
        frame = seal_frame(self._key, self._counter, body)
        self._counter += 1
        return frame


class FrameDecoder:
    """Turns received bytes into messages for one direction of one connection.

    After the first error it stays broken and raises again: a byte stream that lost sync or
    failed authentication cannot be trusted from there on.
    """

    def __init__(self, receive_key: bytes | None, *, start_counter: int = 0) -> None:
        _check_key(receive_key)
        _check_counter(start_counter)
        self._key = receive_key
        self._counter = start_counter
        self._buffer = bytearray()
        self._offset = 0
        self._error: RemoteProtocolError | None = None

    @property
    def sealed(self) -> bool:
        return self._key is not None

    @property
    def counter(self) -> int:
        """The number the next sealed frame must carry."""
        return self._counter

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into messages."""
        return len(self._buffer) - self._offset

    def receive_data(self, data: bytes) -> None:
        """Store bytes from the peer; nothing is parsed until ``next_message``."""
        if self._error is None:
            self._buffer += data

    def next_message(self) -> Message | None:
        """The next complete message, or None if more bytes are needed."""
        if self._error is not None:
            raise self._error
        try:
            return self._next_message()
        except RemoteProtocolError as error:
            self._error = error
            self._buffer = bytearray()
            self._offset = 0
            raise

    def _next_message(self) -> Message | None:
        start = self._offset
        if len(self._buffer) - start < HEADER.size:
            return None
        header = bytes(self._buffer[start : start + HEADER.size])
        (size,) = HEADER.unpack(header)
        smallest = 1 + (TAG_SIZE if self._key is not None else 0)
        if size > MAX_FRAME_SIZE:
            raise RemoteProtocolError(
                f"frame of {size} bytes exceeds the {MAX_FRAME_SIZE} byte limit"
            )
        if size < smallest:
            raise RemoteProtocolError(f"frame of {size} bytes is too short to hold a message")
        end = start + HEADER.size + size
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[start + HEADER.size : end])
        self._consume(end)
        if self._key is not None:
            body = open_frame(self._key, self._counter, header, body)
            self._counter += 1
        return decode_frame_body(body)

    def _consume(self, end: int) -> None:
        # Advance an offset instead of deleting the prefix each time, so a burst of small frames
        # in one big read costs linear time; compact once the dead prefix dominates.
        self._offset = end
        if self._offset == len(self._buffer):
            self._buffer.clear()
            self._offset = 0
        elif self._offset > 65536 and self._offset * 2 > len(self._buffer):
            del self._buffer[: self._offset]
            self._offset = 0
