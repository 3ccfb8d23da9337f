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

import nacl.bindings  # noqa: F401  (imported for sodium_init: it picks the AES-NI code path)
from nacl._sodium import ffi, lib

KEY_SIZE: int = lib.crypto_aead_aegis256_keybytes()
TAG_SIZE: int = lib.crypto_aead_aegis256_abytes()
NONCE_SIZE: int = lib.crypto_aead_aegis256_npubbytes()

# The nonce is the datagram's 64-bit sequence number, zero-padded: unique per key by design.
NONCE = struct.Struct(f">Q{NONCE_SIZE - 8}x")
encrypt = lib.crypto_aead_aegis256_encrypt
decrypt = lib.crypto_aead_aegis256_decrypt
from_buffer = ffi.from_buffer
NULL = ffi.NULL

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
    target = from_buffer("unsigned char[]", out)
    source = from_buffer(body) if blen else NULL
    encrypt(target + hlen, NULL, source, blen, header, hlen, NULL, NONCE.pack(sequence), key)
    return out


def open_sealed(datagram: Buffer, header_size: int, sequence: int, key: bytes) -> bytearray | None:
    """The plain body of a datagram sealed by :func:`seal`, or None if it is not authentic."""
    check_key(key)
    size = len(datagram) - header_size - TAG_SIZE
    if size < 0:
        return None
    out = bytearray(size)
    source = from_buffer(datagram)
    target = from_buffer("unsigned char[]", out) if size else NULL
    status = decrypt(
        target,
        NULL,
        NULL,
        source + header_size,
        size + TAG_SIZE,
        source,
        header_size,
        NONCE.pack(sequence),
        key,
    )
    return out if status == 0 else None


class InPlaceOpener:
    """Opens single sealed datagrams where they lie in one fixed receive buffer (each body then
    follows its header), allocating nothing: the small-frame receive path."""

    def __init__(self, buffer: bytearray, header_size: int) -> None:
        self._size = len(buffer)  # fixed: the C pointer below points into it
        self._base = from_buffer("unsigned char[]", buffer, require_writable=True)
        self._header_size = header_size

    def open(self, offset: int, size: int, sequence: int, key: bytes) -> bool:
        """Open the datagram of ``size`` bytes at ``offset``; False: not authentic."""
        check_key(key)
        hlen = self._header_size
        if offset < 0 or not hlen + TAG_SIZE <= size <= self._size - offset:
            return False
        at = self._base + offset
        body = at + hlen
        return not decrypt(body, NULL, NULL, body, size - hlen, at, hlen, NONCE.pack(sequence), key)
