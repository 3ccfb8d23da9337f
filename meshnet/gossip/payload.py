"""A gossip payload: a msgpack array of items, each encoded once and validated once.

Topology and DNS both gossip arrays of items whose encodings they keep: `pack_array` joins those
cached encodings under an array header instead of encoding every item again, and `decode_items`
takes an item seen before from ``known`` by its raw bytes instead of decoding and validating it
again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import msgpack

from meshnet.errors import RemoteProtocolError

T = TypeVar("T")


def pack_array(parts: list[bytes]) -> bytes:
    """The msgpack array of items already encoded (``parts``), as msgpack itself would write it."""
    n = len(parts)
    if n < 16:
        header = bytes([0x90 | n])
    elif n < 1 << 16:
        header = b"\xdc" + n.to_bytes(2, "big")
    else:
        header = b"\xdd" + n.to_bytes(4, "big")
    return header + b"".join(parts)


def decode_items(
    data: bytes,
    decode_one: Callable[[Any, bytes], T],
    *,
    what: str,
    max_size: int,
    max_count: int,
    limits: Mapping[str, int],
    known: Mapping[bytes, T] | None = None,
) -> list[T]:
    """The items of a peer's payload; RemoteProtocolError (naming ``what``) if anything is off.

    ``decode_one`` gets each item's unpacked form and its encoding (which an item may keep as
    its own instead of encoding itself again)."""
    if type(data) is not bytes or len(data) > max_size:
        raise RemoteProtocolError(f"{what} payload is not bytes or is too large")
    items: list[T] = []
    try:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(data), 1), **limits)
        unpacker.feed(data)
        count = unpacker.read_array_header()
        if count > max_count:
            raise RemoteProtocolError(f"{what} payload with {count} items (at most {max_count})")
        for _ in range(count):
            start = unpacker.tell()
            unpacker.skip()
            raw = data[start : unpacker.tell()]
            item = None if known is None else known.get(raw)
            if item is None:
                item = decode_one(msgpack.unpackb(raw, raw=False, **limits), raw)
            items.append(item)
        if unpacker.tell() != len(data):
            raise RemoteProtocolError(f"trailing bytes after {what} payload")
    except RemoteProtocolError:
        raise
    except Exception as exc:  # msgpack raises many types (ValueError, FormatError, StackError...)
        raise RemoteProtocolError(f"undecodable {what} payload: {exc!r:.80}") from None
    return items
