"""The messages peers exchange over an established control connection.

A message travels as one frame whose body is a msgpack array ``[kind, ...fields]``. Decoding
validates every field's type, so a peer's malformed message is a RemoteProtocolError here and never
a TypeError deep inside a subsystem.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from meshnet.errors import RemoteProtocolError

MAX_PEER_NAME = (1 << 48) - 1


class Kind(enum.IntEnum):
    HEARTBEAT = 0
    GOSSIP = 1
    BROADCAST = 2
    UNICAST = 3


@dataclass(frozen=True)
class Heartbeat:
    """Keeps an idle connection proven alive."""


@dataclass(frozen=True)
class Gossip:
    """Mergeable state of a channel, for the neighbour only (it relays what was new to it)."""

    channel: str
    payload: bytes


@dataclass(frozen=True)
class Broadcast:
    """A payload for every peer, forwarded along the source's broadcast tree."""

    channel: str
    source: int
    payload: bytes


@dataclass(frozen=True)
class Unicast:
    """A payload for one peer, forwarded hop by hop along the unicast routes."""

    channel: str
    source: int
    destination: int
    payload: bytes


Message = Heartbeat | Gossip | Broadcast | Unicast


def encode_message(message: Message) -> list[Any]:
    """The msgpack-ready form of a message."""
    match message:
        case Heartbeat():
            return [Kind.HEARTBEAT]
        case Gossip(channel, payload):
            return [Kind.GOSSIP, channel, payload]
        case Broadcast(channel, source, payload):
            return [Kind.BROADCAST, channel, source, payload]
        case Unicast(channel, source, destination, payload):
            return [Kind.UNICAST, channel, source, destination, payload]
    raise TypeError(f"not a message: {message!r}")


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 64:
        raise RemoteProtocolError(f"bad {what}: {value!r:.80}")
    return value


def _bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise RemoteProtocolError(f"bad {what}: expected bytes, got {type(value).__name__}")
    return value


def _peer(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_PEER_NAME:
        raise RemoteProtocolError(f"bad {what}: {value!r:.80}")
    return value


def decode_message(obj: Any) -> Message:
    """Validate and build a message from its msgpack form; RemoteProtocolError if malformed."""
    if not isinstance(obj, list | tuple) or not obj or type(obj[0]) is not int:
        raise RemoteProtocolError(f"malformed message: {obj!r:.80}")
    try:
        kind = Kind(obj[0])
    except ValueError:
        raise RemoteProtocolError(f"unknown message kind {obj[0]}") from None
    arity = {Kind.HEARTBEAT: 1, Kind.GOSSIP: 3, Kind.BROADCAST: 4, Kind.UNICAST: 5}[kind]
    if len(obj) != arity:
        raise RemoteProtocolError(f"{kind.name.lower()} message with {len(obj)} fields")
    match kind:
        case Kind.HEARTBEAT:
            return Heartbeat()
        case Kind.GOSSIP:
            return Gossip(_str(obj[1], "channel"), _bytes(obj[2], "payload"))
        case Kind.BROADCAST:
            return Broadcast(
                _str(obj[1], "channel"), _peer(obj[2], "source"), _bytes(obj[3], "payload")
            )
        case Kind.UNICAST:
            return Unicast(
                _str(obj[1], "channel"),
                _peer(obj[2], "source"),
                _peer(obj[3], "destination"),
                _bytes(obj[4], "payload"),
            )
    raise AssertionError(kind)
