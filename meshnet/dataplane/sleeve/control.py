"""The bodies of the sleeve's control datagrams: path heartbeats and path-MTU probes.

HEARTBEAT  u64 timestamp (us), u64 echoed timestamp (0 = none), u8 flags (1 = I hear you)
PROBE      u32 probe id, padding up to the probed body size
PROBE_ACK  u32 probe id, u16 probe body size received
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from meshnet.dataplane.sleeve.header import HEADER_SIZE, MAX_DATAGRAM, DatagramDrop, DatagramError

HEARTBEAT_I_HEAR_YOU = 1
_HEARTBEAT = struct.Struct(">QQB")
_PROBE = struct.Struct(">I")
_PROBE_ACK = struct.Struct(">IH")


class PathHeartbeat(NamedTuple):
    """Proves the UDP path both ways and measures its round trip (a tuple: cheap, unpackable)."""

    timestamp_us: int
    """The sender's clock."""
    echo_us: int
    """The timestamp of the last heartbeat heard from the receiver; 0 if none."""
    hear_you: bool
    """The sender receives our datagrams."""


def encode_heartbeat(timestamp_us: int, echo_us: int, hear_you: bool) -> bytes:
    try:
        return _HEARTBEAT.pack(timestamp_us, echo_us, HEARTBEAT_I_HEAR_YOU if hear_you else 0)
    except struct.error as error:
        raise ValueError(f"heartbeat out of range: {error}") from None


def decode_heartbeat(body: bytes) -> PathHeartbeat:
    if len(body) != _HEARTBEAT.size:
        raise DatagramError(DatagramDrop.BAD_BODY, f"HEARTBEAT body of {len(body)} bytes")
    timestamp, echo, flags = _HEARTBEAT.unpack(body)
    if flags & ~HEARTBEAT_I_HEAR_YOU:
        raise DatagramError(DatagramDrop.BAD_BODY, f"HEARTBEAT flags {flags:#x}")
    return PathHeartbeat(timestamp, echo, bool(flags))


def encode_probe(probe_id: int, size: int) -> bytes:
    """A PROBE body padded to ``size`` bytes.

    Probe sizes count body bytes: the datagram adds :data:`HEADER_SIZE`, plus :data:`TAG_SIZE`
    when sealed (:func:`max_frames_body` converts a datagram size).
    """
    if not _PROBE.size <= size <= MAX_DATAGRAM - HEADER_SIZE:
        raise ValueError(f"cannot probe with a {size}-byte body")
    return _PROBE.pack(probe_id) + bytes(size - _PROBE.size)


def decode_probe(body: bytes) -> int:
    """The probe id; the receiver answers with a PROBE_ACK carrying ``len(body)``."""
    if len(body) < _PROBE.size:
        raise DatagramError(DatagramDrop.BAD_BODY, f"PROBE body of {len(body)} bytes")
    probe_id: int = _PROBE.unpack_from(body)[0]
    return probe_id


def encode_probe_ack(probe_id: int, size: int) -> bytes:
    """The answer to a PROBE whose body was ``size`` bytes."""
    return _PROBE_ACK.pack(probe_id, size)


def decode_probe_ack(body: bytes) -> tuple[int, int]:
    """(probe id, probe body size the peer received)."""
    if len(body) != _PROBE_ACK.size:
        raise DatagramError(DatagramDrop.BAD_BODY, f"PROBE_ACK body of {len(body)} bytes")
    probe_id, size = _PROBE_ACK.unpack(body)
    return probe_id, size
