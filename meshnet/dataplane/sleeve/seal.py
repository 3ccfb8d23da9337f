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


def seal_run(
    out: bytearray,
    stride: int,
    head: bytes,
    bodies: Buffer,
    body_size: int,
    count: int,
    sequence: int,
    key: bytes,
) -> None:
    """Seal ``count`` bodies lying back to back in ``bodies``, every ``body_size`` bytes (the
    last one takes what is left), into ``out`` every ``stride`` bytes: header (``head`` + the
    64-bit sequence) then ciphertext and tag. A super-frame's datagrams, ready for one GSO send,
    with no per-datagram allocation."""
    check_key(key)
    hlen = len(head) + 8
    last_size = len(bodies) - (count - 1) * body_size
    if (
        count < 1
        or not 0 <= last_size <= body_size
        or hlen + body_size + TAG_SIZE > stride
        or len(out) < (count - 1) * stride + hlen + last_size + TAG_SIZE
    ):
        raise ValueError("the sealed datagrams do not fit the buffer")
    target = _from_buffer("unsigned char[]", out, require_writable=True)
    source = _from_buffer(bodies)
    pack_sequence = _SEQUENCE.pack
    pack_nonce = _NONCE.pack
    for i in range(count):
        header = head + pack_sequence(sequence + i)
        at = i * stride
        out[at : at + hlen] = header
        size = body_size if i < count - 1 else last_size
        _encrypt(
            target + at + hlen,
            _NULL,
            source + i * body_size,
            size,
            header,
            hlen,
            _NULL,
            pack_nonce(sequence + i),
            key,
        )


def open_run(
    data: Buffer, stride: int, header_size: int, sequences: list[int], out: bytearray, key: bytes
) -> list[int]:
    """Open the sealed datagrams lying in ``data`` every ``stride`` bytes (the last may be
    shorter), datagram i with nonce ``sequences[i]``, its body into ``out`` at
    ``i * (stride - header_size - TAG_SIZE)``. Returns the indexes of those not authentic (their
    part of ``out`` is garbage). One pair of buffer pointers for the whole run."""
    check_key(key)
    count = len(sequences)
    body_stride = stride - header_size - TAG_SIZE
    last_size = len(data) - (count - 1) * stride - header_size  # ciphertext and tag
    if (
        count < 1
        or body_stride < 0
        or not TAG_SIZE <= last_size <= stride - header_size
        or len(out) < (count - 1) * body_stride + last_size - TAG_SIZE
    ):
        raise ValueError("the datagrams or their bodies lie outside the buffers")
    source = _from_buffer(data)
    target = _from_buffer("unsigned char[]", out, require_writable=True) if len(out) else _NULL
    pack_nonce = _NONCE.pack
    size = stride - header_size
    failed = []
    for i, sequence in enumerate(sequences):
        at = source + i * stride
        if i == count - 1:
            size = last_size
        if _decrypt(
            target + i * body_stride if len(out) else _NULL,
            _NULL,
            _NULL,
            at + header_size,
            size,
            at,
            header_size,
            pack_nonce(sequence),
            key,
        ):
            failed.append(i)
    return failed


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
