"""Sealing and opening whole runs of sleeve datagrams in place: the bulk path's crypto.

Apart from :mod:`seal` (one datagram at a time, for every router) because it lays out a run's
nonces with numpy, and only a router that moves bulk traffic through the sleeve should pay for
numpy's memory (see :mod:`meshnet.dataplane.sleeve.forwarder`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from nacl._sodium import ffi

from meshnet.dataplane.sleeve.seal import (
    KEY_SIZE,
    NONCE_SIZE,
    NULL,
    TAG_SIZE,
    InPlaceOpener,
    check_key,
    decrypt,
    encrypt,
    from_buffer,
)


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
        self._base = from_buffer("unsigned char[]", buffer, require_writable=True)
        self._header_size = header_size
        self._one = InPlaceOpener(buffer, header_size)
        self._nonces = np.zeros((max_datagrams, NONCE_SIZE), np.uint8)
        self._nonce_sequences = self._nonces[:, :8].view(">u8")[:, 0]
        self._counting = np.arange(max_datagrams, dtype=np.uint64)
        self._nonce_base = from_buffer("unsigned char[]", self._nonces, require_writable=True)
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
            encrypt(*args)
        encrypt(*self._last(stride, count, last_size, _encrypt_args))

    def open(
        self, stride: int, count: int, last_size: int, first_sequence: int, key: bytes
    ) -> list[int]:
        """Open the sealed datagrams at the buffer's start in place (datagram i's body then
        lies after its header); returns the indexes of those not authentic."""
        self._prepare(stride, count, last_size, first_sequence, key)
        calls = self._opening.get((stride, count))
        if calls is None:
            calls = self._calls(self._opening, stride, count, _decrypt_args)
        failed = [i for i, args in enumerate(calls) if decrypt(*args)]
        if decrypt(*self._last(stride, count, last_size, _decrypt_args)):
            failed.append(count - 1)
        return failed

    def open_one(self, offset: int, size: int, sequence: int, key: bytes) -> bool:
        """Open the one datagram of ``size`` bytes at ``offset`` in place; False: not authentic."""
        return self._one.open(offset, size, sequence, key)

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
    return (at + hlen, NULL, at + hlen, size, at, hlen, NULL, nonce, key)


def _decrypt_args(at: Any, hlen: int, size: int, nonce: Any, key: Any) -> tuple[Any, ...]:
    return (at + hlen, NULL, NULL, at + hlen, size + TAG_SIZE, at, hlen, nonce, key)
