"""AEGIS-256 for sleeve datagrams, called straight through pynacl's own libsodium binding.

Every datagram is sealed on its own, so a lost datagram costs one TCP segment, not a 64 KiB
super-frame: that is ~47 seals per super-frame. pynacl's public wrappers cost ~2.5 us per call
(argument checks, two allocations, a copy of the result); the same libsodium function called
through the cffi module pynacl itself uses costs ~0.5 us for a 1400-byte datagram (measured
here). AEGIS-256 is libsodium's fastest AEAD on this machine (~7 GB/s on 64 KiB against ~1.5 for
ChaCha20-Poly1305), with a 256-bit key and nonce and a 32-byte tag; ``tests/unit`` checks these
calls against pynacl's public ``crypto_aead_aegis256_*`` so a pynacl change cannot slip by.
"""

from __future__ import annotations

import struct
from typing import Any

import nacl.bindings  # noqa: F401  (imported for sodium_init: it picks the AES-NI code path)
import numpy as np
from nacl._sodium import ffi, lib

KEY_SIZE: int = lib.crypto_aead_aegis256_keybytes()
TAG_SIZE: int = lib.crypto_aead_aegis256_abytes()
NONCE_SIZE: int = lib.crypto_aead_aegis256_npubbytes()

# The nonce is the datagram's 64-bit sequence number, zero-padded: unique per key by design.
_NONCE = struct.Struct(f">Q{NONCE_SIZE - 8}x")
_SEQUENCE = struct.Struct(">Q")
_encrypt = lib.crypto_aead_aegis256_encrypt
_decrypt = lib.crypto_aead_aegis256_decrypt
_from_buffer = ffi.from_buffer
_NULL = ffi.NULL

Buffer = bytes | bytearray | memoryview


def check_key(key: bytes) -> None:
    """libsodium reads KEY_SIZE bytes from the key's address: a shorter one must never reach it."""
    if not isinstance(key, bytes) or len(key) != KEY_SIZE:
        raise ValueError(f"a sleeve key must be {KEY_SIZE} bytes")


def seal(header: bytes, body: Buffer, sequence: int, key: bytes) -> bytearray:
    """``header`` + ``body`` encrypted + tag; the header is authenticated as associated data."""
    check_key(key)
    hlen = len(header)
    blen = len(body)
    out = bytearray(hlen + blen + TAG_SIZE)
    out[:hlen] = header
    target = _from_buffer("unsigned char[]", out)
    source = _from_buffer(body) if blen else _NULL
    _encrypt(target + hlen, _NULL, source, blen, header, hlen, _NULL, _NONCE.pack(sequence), key)
    return out


def open_sealed(datagram: Buffer, header_size: int, sequence: int, key: bytes) -> bytearray | None:
    """The plain body of a datagram sealed by :func:`seal`, or None if it is not authentic."""
    check_key(key)
    size = len(datagram) - header_size - TAG_SIZE
    if size < 0:
        return None
    out = bytearray(size)
    source = _from_buffer(datagram)
    target = _from_buffer("unsigned char[]", out) if size else _NULL
    status = _decrypt(
        target,
        _NULL,
        _NULL,
        source + header_size,
        size + TAG_SIZE,
        source,
        header_size,
        _NONCE.pack(sequence),
        key,
    )
    return out if status == 0 else None


class RunCipher:
    """Seal or open, in place, datagrams lying every ``stride`` bytes in one fixed buffer.

    The packet loops' bulk path: a super-frame's datagrams are sealed (or a GRO run's opened)
    with one libsodium call each and nothing allocated. The argument tuples of those calls depend
    only on the run's shape, so they are made once per shape and kept; the key is copied into a
    fixed C buffer and the nonces into a fixed table before each run. Datagram i's nonce is
    ``first_sequence + i``: opening a datagram whose header says otherwise fails its tag, as the
    header (sequence included) is the associated data.
    """

    MAX_SHAPES = 64

    def __init__(self, buffer: bytearray, max_datagrams: int, header_size: int) -> None:
        self._buffer = buffer  # fixed size: the C pointers below point into it
        self._base = _from_buffer("unsigned char[]", buffer, require_writable=True)
        self._header_size = header_size
        self._nonces = np.zeros((max_datagrams, NONCE_SIZE), np.uint8)
        self._nonce_sequences = self._nonces[:, :8].view(">u8")[:, 0]
        self._counting = np.arange(max_datagrams, dtype=np.uint64)
        self._nonce_base = _from_buffer("unsigned char[]", self._nonces, require_writable=True)
        self._key = ffi.new("unsigned char[]", KEY_SIZE)
        self._sealing: dict[tuple[int, int], list[tuple[Any, ...]]] = {}
        self._opening: dict[tuple[int, int], list[tuple[Any, ...]]] = {}

    @property
    def max_datagrams(self) -> int:
        return len(self._nonces)

    def seal(
        self, stride: int, count: int, last_size: int, first_sequence: int, key: bytes
    ) -> None:
        """Seal ``count`` datagrams of ``stride`` bytes (the last ``last_size``) at the buffer's
        start: each is its header (the associated data), then its plain body, then room for
        the tag, which the body becomes ciphertext before."""
        self._prepare(stride, count, last_size, first_sequence, key)
        calls = self._sealing.get((stride, count))
        if calls is None:
            calls = self._calls(self._sealing, stride, count, _encrypt_args)
        for args in calls:
            _encrypt(*args)
        _encrypt(*self._last(stride, count, last_size, _encrypt_args))

    def open(
        self, stride: int, count: int, last_size: int, first_sequence: int, key: bytes
    ) -> list[int]:
        """Open the sealed datagrams at the buffer's start in place (datagram i's body then
        lies after its header); returns the indexes of those not authentic."""
        self._prepare(stride, count, last_size, first_sequence, key)
        calls = self._opening.get((stride, count))
        if calls is None:
            calls = self._calls(self._opening, stride, count, _decrypt_args)
        failed = [i for i, args in enumerate(calls) if _decrypt(*args)]
        if _decrypt(*self._last(stride, count, last_size, _decrypt_args)):
            failed.append(count - 1)
        return failed

    def open_one(self, offset: int, size: int, sequence: int, key: bytes) -> bool:
        """Open the one datagram of ``size`` bytes at ``offset`` in place; False: not authentic."""
        check_key(key)
        hlen = self._header_size
        if offset < 0 or not hlen + TAG_SIZE <= size <= len(self._buffer) - offset:
            return False
        at = self._base + offset
        body = at + hlen
        nonce = _NONCE.pack(sequence)
        return not _decrypt(body, _NULL, _NULL, body, size - hlen, at, hlen, nonce, key)

    def _prepare(
        self, stride: int, count: int, last_size: int, first_sequence: int, key: bytes
    ) -> None:
        check_key(key)
        if not 1 <= count <= len(self._nonces):
            raise ValueError(f"a run of {count} datagrams does not fit the nonce table")
        if not self._header_size + TAG_SIZE <= last_size <= stride or (
            count - 1
        ) * stride + last_size > len(self._buffer):
            raise ValueError("the datagrams do not fit the buffer")
        self._nonce_sequences[:count] = self._counting[:count] + np.uint64(first_sequence)
        ffi.memmove(self._key, key, KEY_SIZE)

    def _calls(
        self,
        cache: dict[tuple[int, int], list[tuple[Any, ...]]],
        stride: int,
        count: int,
        make: Any,
    ) -> list[tuple[Any, ...]]:
        """The calls for all datagrams but the last (whose size varies): made once per shape."""
        if len(cache) >= self.MAX_SHAPES:
            cache.clear()
        size = stride - self._header_size - TAG_SIZE
        calls = [
            make(self._base + i * stride, self._header_size, size, self._nonce(i), self._key)
            for i in range(count - 1)
        ]
        cache[(stride, count)] = calls
        return calls

    def _last(self, stride: int, count: int, last_size: int, make: Any) -> tuple[Any, ...]:
        at = self._base + (count - 1) * stride
        size = last_size - self._header_size - TAG_SIZE
        last: tuple[Any, ...] = make(at, self._header_size, size, self._nonce(count - 1), self._key)
        return last

    def _nonce(self, i: int) -> Any:
        return self._nonce_base + i * NONCE_SIZE


def _encrypt_args(at: Any, hlen: int, size: int, nonce: Any, key: Any) -> tuple[Any, ...]:
    return (at + hlen, _NULL, at + hlen, size, at, hlen, _NULL, nonce, key)


def _decrypt_args(at: Any, hlen: int, size: int, nonce: Any, key: Any) -> tuple[Any, ...]:
    return (at + hlen, _NULL, _NULL, at + hlen, size + TAG_SIZE, at, hlen, nonce, key)
