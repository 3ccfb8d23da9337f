"""The sleeve datagram: its 32-byte header, sealing and opening, one or a run at a time.

Every datagram crosses one hop, between two peers that hold a key pair for that hop (or none,
without a password). The header is authenticated as the AEAD's associated data, and its 64-bit
sequence number is the nonce, so a datagram cannot be altered, re-addressed or replayed:
:func:`decode_datagram` checks the tag, and only then the per-direction replay window. Keys are
fresh per control connection, so a (key, sequence) pair never repeats as long as each sender
counts up from 0 per key.

Pure and sans-IO: keys and windows are parameters; everything runs in the packet threads, so
the per-datagram path avoids logging and needless objects. Malformed or unauthentic input raises
:class:`DatagramError` with a machine-readable :class:`DatagramDrop` for the drop counters.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable
from typing import NamedTuple

from meshnet.dataplane.sleeve import seal as aead
from meshnet.dataplane.sleeve.replay import ReplayWindow
from meshnet.errors import RemoteProtocolError

VERSION = 1
HEADER_SIZE = 32
TAG_SIZE = aead.TAG_SIZE
KEY_SIZE = aead.KEY_SIZE
MAX_DATAGRAM = 65507
"""Largest UDP payload over IPv4."""
MAX_PEER = (1 << 48) - 1
MAX_SEQUENCE = (1 << 64) - 1
MAX_TTL = 32
"""The TTL a datagram leaves its origin with: routes are loop-free, so this only bounds the
damage of a transient loop between peers with different views (and the mesh's diameter)."""

SEALED = 1
BROADCAST = 2
PASSING = 4
"""On a broadcast its origin sends to a fastdp neighbour: the kernel's VXLAN delivered the frames
there already, so that neighbour only relays them down the origin's tree (and clears the flag)."""
_KNOWN_FLAGS = SEALED | BROADCAST | PASSING
_ADDRESSING = BROADCAST | PASSING  # flags that constrain the addresses (:func:`_malformed`)

_HEADER = struct.Struct(">BBBBHIHIHIHQ")
_HEAD = struct.Struct(">BBBBHIHIHIH")
_U64 = struct.Struct(">Q")


class Kind(enum.IntEnum):
    FRAMES = 0
    SEGMENT = 1
    HEARTBEAT = 2
    PROBE = 3
    PROBE_ACK = 4


_KINDS = tuple(Kind)

Buffer = bytes | bytearray | memoryview


class DatagramDrop(enum.Enum):
    """Why a received datagram was dropped; the shell counts drops per reason."""

    SHORT = "short"
    BAD_VERSION = "bad_version"
    BAD_KIND = "bad_kind"
    BAD_HEADER = "bad_header"
    TTL_EXPIRED = "ttl_expired"
    NO_KEY = "no_key"
    NOT_SEALED = "not_sealed"
    BAD_TAG = "bad_tag"
    REPLAYED = "replayed"
    BAD_BODY = "bad_body"
    INCONSISTENT = "inconsistent"


class DatagramError(RemoteProtocolError):
    """A datagram to drop and count under ``reason``."""

    def __init__(self, reason: DatagramDrop, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason


class DatagramHeader(NamedTuple):
    """The 32-byte header; ``hop`` and ``sequence`` change at every hop, the rest not.

    A NamedTuple rather than a dataclass: one is built per received datagram, and a tuple
    costs less than half as much to make.
    """

    kind: Kind
    flags: int
    """SEALED | BROADCAST | PASSING; SEALED is set by the key given to :func:`encode_datagram`."""
    ttl: int
    """Hops left: a relay sends ``ttl - 1`` and drops what would leave with 0."""
    origin: int
    """The peer whose container sent the frames."""
    destination: int
    """The peer they are for; 0 when BROADCAST."""
    hop: int
    """The peer that sent this datagram (it picks the pair key and replay window)."""
    sequence: int
    """Per hop-sender to receiver direction and key: the AEAD nonce, never reused."""

    @property
    def sealed(self) -> bool:
        return bool(self.flags & SEALED)

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & BROADCAST)

    def relayed(self, hop: int, sequence: int) -> DatagramHeader | None:
        """This header as a relay sends it on, or None when its hops are used up."""
        if self.ttl <= 1:
            return None
        return DatagramHeader(
            self.kind,
            self.flags & ~PASSING,  # only the origin's own neighbour had the frames already
            self.ttl - 1,
            self.origin,
            self.destination,
            hop,
            sequence,
        )


def _pack_header(h: DatagramHeader, flags: int, sequence: int) -> bytes:
    if h.ttl == 0 or (flags & _ADDRESSING and _malformed(flags, h.origin, h.destination, h.hop)):
        raise ValueError(f"invalid datagram header {h!r}")
    try:
        return _HEADER.pack(
            VERSION,
            h.kind,
            flags,
            h.ttl,
            h.origin >> 32,
            h.origin & 0xFFFFFFFF,
            h.destination >> 32,
            h.destination & 0xFFFFFFFF,
            h.hop >> 32,
            h.hop & 0xFFFFFFFF,
            0,
            sequence,
        )
    except struct.error as error:  # a peer name beyond 48 bits, a flag beyond 8, ...
        raise ValueError(f"datagram header out of range: {error}") from None


def pack_head(kind: Kind, flags: int, ttl: int, origin: int, destination: int, hop: int) -> bytes:
    """The first 24 header bytes (all but the sequence), unchecked: for tables of the heads a
    peer expects, built from names it knows."""
    return _HEAD.pack(
        VERSION,
        kind,
        flags,
        ttl,
        origin >> 32,
        origin & 0xFFFFFFFF,
        destination >> 32,
        destination & 0xFFFFFFFF,
        hop >> 32,
        hop & 0xFFFFFFFF,
        0,
    )


def header_head(header: DatagramHeader, sealed: bool, count: int) -> bytes:
    """The first 24 header bytes, which all ``count`` datagrams of one call share (all but the
    sequence); ValueError if the header does not fit or the sequences would pass 64 bits."""
    flags = (header.flags & ~SEALED) | (SEALED if sealed else 0)
    if header.sequence + count - 1 > MAX_SEQUENCE:
        raise ValueError(f"sequence {header.sequence} + {count} passes 64 bits")
    return _pack_header(header, flags, header.sequence)[:24]


def encode_datagram(header: DatagramHeader, body: Buffer, key: bytes | None) -> bytes | bytearray:
    """The datagram carrying ``body``: sealed with ``key`` (and flagged SEALED) when given.

    The SEALED flag of ``header`` is ignored: the key decides. Never seal two datagrams with
    the same key and sequence; ValueError for a header that does not fit or a body too large.
    """
    return encode_datagrams(header, (body,), key)[0]


def encode_datagrams(
    header: DatagramHeader, bodies: Iterable[Buffer], key: bytes | None
) -> list[bytes | bytearray]:
    """One datagram per body, with sequence numbers ``header.sequence``, +1, +2, ...

    The per-super-frame path: it builds no header objects per datagram.
    """
    bodies = list(bodies)
    head = header_head(header, key is not None, len(bodies))
    limit = MAX_DATAGRAM - HEADER_SIZE - (TAG_SIZE if key is not None else 0)
    sequence = header.sequence
    out: list[bytes | bytearray] = []
    for body in bodies:
        if len(body) > limit:
            raise ValueError(f"datagram of {len(body) + MAX_DATAGRAM - limit} bytes is too large")
        out.append(encode_with_head(head, sequence, body, key))
        sequence += 1
    return out


def encode_with_head(
    head: bytes, sequence: int, body: Buffer, key: bytes | None
) -> bytes | bytearray:
    """The datagram of ``body`` behind ``head`` (:func:`header_head`, or :func:`pack_head` with
    SEALED set as ``key`` says) and ``sequence``, sealed with ``key`` when given. Unchecked:
    the per-frame path's, with heads built once from names the router knows."""
    raw = head + _U64.pack(sequence)
    return b"".join((raw, body)) if key is None else aead.seal(raw, body, sequence, key)


def decode_datagram(
    data: Buffer,
    key_for: Callable[[int], bytes | None],
    window_for: Callable[[int], ReplayWindow | None],
    header: DatagramHeader | None = None,
) -> tuple[DatagramHeader, Buffer]:
    """The header and plain body of a received datagram; DatagramError to drop it.

    ``header``: what :func:`parse_header` already gave for ``data`` (not parsed again).

    The body of a plain datagram is a view into ``data``: no copy.

    ``key_for(hop)`` is the key the hop sender seals with towards us, or None when that pair
    does not encrypt; ``window_for(hop)`` its replay window (replace the window whenever the
    key changes, as sequences restart). This function checks the window and updates it itself,
    and only after the tag authenticated, so a forgery can neither burn a sequence number nor
    slide the window; the caller must not touch it. Unsealed datagrams get no replay check:
    without a key anyone on the path could forge them anyway.
    """
    n = len(data)
    if header is None:
        header = parse_header(data)
    flags, hop, seq = header.flags, header.hop, header.sequence
    key = key_for(hop)
    if flags & SEALED:
        window = window_for(hop) if key is not None else None
        if key is None or window is None:
            raise DatagramError(DatagramDrop.NO_KEY, f"sealed, no key or window for {hop:012x}")
        if n < HEADER_SIZE + TAG_SIZE:
            raise DatagramError(DatagramDrop.SHORT, f"sealed datagram of {n} bytes")
        if not window.would_accept(seq):
            raise DatagramError(DatagramDrop.REPLAYED, f"sequence {seq} from {hop:012x}")
        opened = aead.open_sealed(data, HEADER_SIZE, seq, key)
        if opened is None:
            raise DatagramError(DatagramDrop.BAD_TAG, f"from {hop:012x}")
        window.check_and_update(seq)
        body: Buffer = opened
    else:
        if key is not None:
            raise DatagramError(DatagramDrop.NOT_SEALED, f"plain from {hop:012x}")
        body = memoryview(data)[HEADER_SIZE:]
    return header, body


def parse_header(data: Buffer) -> DatagramHeader:
    """The header of a datagram, checked for everything but authenticity (the body's job)."""
    n = len(data)
    if n < HEADER_SIZE:
        raise DatagramError(DatagramDrop.SHORT, f"datagram of {n} bytes")
    (version, kind, flags, ttl, oh, ol, dh, dl, hh, hl, reserved, seq) = _HEADER.unpack_from(data)
    if version != VERSION:
        raise DatagramError(DatagramDrop.BAD_VERSION, f"version {version}")
    if kind >= len(_KINDS):
        raise DatagramError(DatagramDrop.BAD_KIND, f"kind {kind}")
    origin, destination, hop = oh << 32 | ol, dh << 32 | dl, hh << 32 | hl
    if (
        flags & ~_KNOWN_FLAGS
        or reserved
        or (flags & _ADDRESSING and _malformed(flags, origin, destination, hop))
    ):
        raise DatagramError(DatagramDrop.BAD_HEADER, f"flags {flags:#x}, reserved {reserved:#x}")
    if ttl == 0:
        raise DatagramError(DatagramDrop.TTL_EXPIRED, "ttl 0")
    return DatagramHeader(_KINDS[kind], flags, ttl, origin, destination, hop, seq)


def _malformed(flags: int, origin: int, destination: int, hop: int) -> bool:
    """A broadcast has no destination; only a broadcast, and only from its origin, passes."""
    if flags & BROADCAST:
        return bool(destination) or bool(flags & PASSING and origin != hop)
    return bool(flags & PASSING)
