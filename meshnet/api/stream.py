"""Streaming endpoints: `/stream` (msgpack snapshots for the TUI) and `/events` (JSON lines).

A snapshot is the whole report (meshnet.api.report), sent every ``interval`` seconds as a frame:
4-byte big-endian length, then msgpack. Clients compute rates from successive snapshots; the
daemon keeps no history for them. Both streams end when the client goes away or the daemon stops.
"""

from __future__ import annotations

import json
import math
import struct
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from meshnet.api import events, report

if TYPE_CHECKING:
    from meshnet.api.asgi import Receive, Scope, Send
    from meshnet.api.report import Sources

CONTENT_TYPE = "application/vnd.meshnet.snapshots+msgpack"
MAX_FRAME = 16 * 1024 * 1024
DEFAULT_INTERVAL = 1.0
MIN_INTERVAL = 0.25  # each snapshot walks the bridge ports over netlink
_LENGTH = struct.Struct(">I")


class FrameError(Exception):
    """The stream is not a sequence of snapshot frames (or a frame is absurdly large)."""


def encode_frame(value: Any) -> bytes:
    try:
        body: bytes = msgpack.packb(value, use_bin_type=True)
    except OverflowError:  # an IPv6 ring's sizes (2^80 and more) are past msgpack's integers
        body = msgpack.packb(_within_msgpack(value), use_bin_type=True)
    return _LENGTH.pack(len(body)) + body


def _within_msgpack(value: Any) -> Any:
    """``value`` with every integer msgpack cannot hold as a float: snapshots are for display."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(1 << 63) <= value < (1 << 64) else float(value)
    if isinstance(value, dict):
        return {k: _within_msgpack(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_within_msgpack(v) for v in value]
    return value


class FrameReader:
    """Bytes in, snapshots out: ``feed`` stores, ``frames`` returns the complete ones."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def frames(self) -> list[Any]:
        out = []
        while len(self._buffer) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(self._buffer)
            if size > self._max:
                raise FrameError(f"snapshot frame of {size} bytes (at most {self._max})")
            end = _LENGTH.size + size
            if len(self._buffer) < end:
                break
            try:
                out.append(msgpack.unpackb(bytes(self._buffer[_LENGTH.size : end]), raw=False))
            except (ValueError, msgpack.UnpackException) as e:
                raise FrameError(f"bad snapshot frame: {e}") from None
            del self._buffer[:end]
        return out


def interval_of(scope: Scope) -> float:
    """``?interval=SECONDS`` (default 1 s, at least 0.25 s)."""
    query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
    try:
        value = float(query.get("interval", [DEFAULT_INTERVAL])[0])
    except ValueError:
        return DEFAULT_INTERVAL
    if not math.isfinite(value):
        return DEFAULT_INTERVAL
    return max(MIN_INTERVAL, value)


async def _stream(
    receive: Receive,
    send: Send,
    content_type: str,
    produce: Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]],
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", content_type.encode()), (b"cache-control", b"no-store")],
        }
    )

    async def chunk(data: bytes) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": True})

    async with trio.open_nursery() as nursery:

        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(until_disconnect)
        await produce(chunk)
        nursery.cancel_scope.cancel()


async def snapshots(sources: Sources, scope: Scope, receive: Receive, send: Send) -> None:
    interval = interval_of(scope)

    async def produce(chunk: Callable[[bytes], Awaitable[None]]) -> None:
        while True:
            await chunk(encode_frame(await report.collect(sources)))
            await trio.sleep(interval)

    await _stream(receive, send, CONTENT_TYPE, produce)


async def event_lines(sources: Sources, scope: Scope, receive: Receive, send: Send) -> None:
    """Changes as JSON lines; first a ``hello`` line, so a client knows it is subscribed."""
    interval = interval_of(scope)

    async def produce(chunk: Callable[[bytes], Awaitable[None]]) -> None:
        before = await report.collect(sources)
        await chunk(_line({"time": before["time"], "kind": "hello", "text": "subscribed"}))
        while True:
            await trio.sleep(interval)
            after = await report.collect(sources)
            lines = b"".join(_line(e) for e in events.diff(before, after))
            if lines:
                await chunk(lines)
            before = after

    await _stream(receive, send, "application/x-ndjson", produce)


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode() + b"\n"
