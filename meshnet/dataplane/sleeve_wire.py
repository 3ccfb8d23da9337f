"""The sleeve's datagrams on UDP 6783: header, sealing, replay window, batching, segments.

Every datagram crosses one hop, between two peers that hold a key pair for that hop (or none,
without a password). The 32-byte header is authenticated as the AEAD's associated data, and its
64-bit sequence number is the nonce, so a datagram cannot be altered, re-addressed or replayed:
:func:`decode_datagram` checks the tag, and only then the per-direction replay window. Keys are
fresh per control connection, so a (key, sequence) pair never repeats as long as each sender
counts up from 0 per key.

Bodies by kind::

    FRAMES     repeated {u16 length, 10-byte virtio-net header, Ethernet frame}
    SEGMENT    u32 super-frame id, u16 index, u16 count, u16 header length L,
               10-byte original virtio-net header, L bytes original headers, segment payload
    HEARTBEAT  u64 timestamp (us), u64 echoed timestamp (0 = none), u8 flags (1 = I hear you)
    PROBE      u32 probe id, padding up to the probed body size
    PROBE_ACK  u32 probe id, u16 probe body size received

A TCP super-frame from the TAP travels as SEGMENT datagrams cut at the kernel's own segment
boundaries (see :mod:`meshnet.dataplane.vnet`); equal-sized datagrams let the shell send them
all in one UDP GSO call. The :class:`Reassembler` at the origin's far end gives back the exact
super-frame, or, when some datagrams were lost, valid smaller ones carrying what did arrive, so
a lost datagram costs TCP one segment, not 64 KiB.

Pure and sans-IO: ``now`` and keys are parameters; everything runs in the packet threads, so the
per-datagram path avoids logging and needless objects. Malformed or unauthentic input raises
:class:`DatagramError` with a machine-readable :class:`DropReason` for the drop counters.
"""

from __future__ import annotations

import enum
import functools
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from meshnet.dataplane import seal as aead
from meshnet.dataplane import vnet as vn
from meshnet.errors import RemoteProtocolError

VERSION = 1
HEADER_SIZE = 32
TAG_SIZE = aead.TAG_SIZE
KEY_SIZE = aead.KEY_SIZE
MAX_DATAGRAM = 65507
"""Largest UDP payload over IPv4."""
MAX_PEER = (1 << 48) - 1
MAX_SEQUENCE = (1 << 64) - 1
MAX_TTL = 255

SEALED = 1
BROADCAST = 2
_KNOWN_FLAGS = SEALED | BROADCAST

FRAME_OVERHEAD = 2 + vn.VNET_HEADER_SIZE
"""Bytes a FRAMES body spends per frame besides the frame itself."""
SEGMENT_PREFIX_SIZE = 10
SEGMENT_OVERHEAD = SEGMENT_PREFIX_SIZE + vn.VNET_HEADER_SIZE
"""Bytes a SEGMENT body spends besides the L header bytes and the payload."""
UNDERLAY_HEADERS = 48
"""IPv6 + UDP: the most an underlay packet spends on headers (IPv4 leaves 20 bytes of slack)."""
ENCAPSULATION_OVERHEAD = UNDERLAY_HEADERS + HEADER_SIZE + TAG_SIZE + SEGMENT_OVERHEAD + 14
"""Underlay bytes a container frame costs on the sleeve beyond its IP packet: the overlay MTU is
the underlay's minus this (the Ethernet header travels inside every segment)."""
MAX_SEGMENT_HEADERS = 512
"""Largest header length L a segment may declare (Ethernet + IPv6 with options + TCP fits)."""
REPLAY_WINDOW = 1024
HEARTBEAT_I_HEAR_YOU = 1

_HEADER = struct.Struct(">BBBBHIHIHIHQ")
_SEGMENT = struct.Struct(">IHHH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HEARTBEAT = struct.Struct(">QQB")
_PROBE = struct.Struct(">I")
_PROBE_ACK = struct.Struct(">IH")
_SERIAL_MASK = 0xFFFFFFFF
_SERIAL_HALF = 1 << 31
_RESTART_GAP = 1024
"""A super-frame id this far behind the newest finished one means the origin restarted."""


class Kind(enum.IntEnum):
    FRAMES = 0
    SEGMENT = 1
    HEARTBEAT = 2
    PROBE = 3
    PROBE_ACK = 4


_KINDS = tuple(Kind)

Buffer = bytes | bytearray | memoryview


class DropReason(enum.Enum):
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

    def __init__(self, reason: DropReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason


class DatagramHeader(NamedTuple):
    """The 32-byte header; ``hop`` and ``sequence`` change at every hop, the rest not.

    A NamedTuple rather than a dataclass: one is built per received datagram, and a tuple
    costs less than half as much to make.
    """

    kind: Kind
    flags: int
    """SEALED | BROADCAST; SEALED is set by the key given to :func:`encode_datagram`."""
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
            self.flags,
            self.ttl - 1,
            self.origin,
            self.destination,
            hop,
            sequence,
        )


def _pack_header(h: DatagramHeader, flags: int, sequence: int) -> bytes:
    if h.ttl == 0 or (flags & BROADCAST and h.destination):
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
    head = _header_head(header, key is not None, len(bodies))
    limit = MAX_DATAGRAM - HEADER_SIZE - (TAG_SIZE if key is not None else 0)
    sequence = header.sequence
    pack_sequence = _U64.pack
    out: list[bytes | bytearray] = []
    for body in bodies:
        if len(body) > limit:
            raise ValueError(f"datagram of {len(body) + MAX_DATAGRAM - limit} bytes is too large")
        raw = head + pack_sequence(sequence)
        out.append(b"".join((raw, body)) if key is None else aead.seal(raw, body, sequence, key))
        sequence += 1
    return out


class DatagramRun(NamedTuple):
    """Datagrams back to back in one buffer, every ``stride`` bytes (the last may be shorter):
    what one UDP GSO send takes and one GRO receive gives."""

    data: memoryview
    stride: int

    @property
    def datagram_count(self) -> int:
        return -(-len(self.data) // self.stride)

    def datagrams(self) -> list[Buffer]:
        data, stride = self.data, self.stride
        return [data[i : i + stride] for i in range(0, len(data), stride)]


def encode_superframe(
    header: DatagramHeader,
    superframe_id: int,
    vnet: vn.VnetHeader,
    frame: Buffer,
    key: bytes | None,
    plan: vn.SegmentPlan | None = None,
) -> DatagramRun:
    """The SEGMENT datagrams of a TCP super-frame, built as one array: what
    :func:`segment_bodies` then :func:`encode_datagrams` give, without a Python step per
    datagram when plain (and one seal call per datagram when sealed). ``plan``: the frame's
    :func:`~meshnet.dataplane.vnet.plan_tcp_segments`, if the caller made it already."""
    header_len, size, count, _ = plan or vn.plan_tcp_segments(vnet, frame)
    if count > 0xFFFF or header_len > MAX_SEGMENT_HEADERS:
        raise RemoteProtocolError(f"super-frame of {count} segments, {header_len} header bytes")
    body_size = SEGMENT_OVERHEAD + header_len + size
    if body_size > MAX_DATAGRAM - HEADER_SIZE - TAG_SIZE:
        raise ValueError(f"segments of {size} bytes do not fit a datagram")
    head = _header_head(header, key is not None, count)
    sequences = np.arange(header.sequence, header.sequence + count, dtype=np.uint64)
    last = count - 1
    last_payload = len(frame) - header_len - last * size
    payload_at = SEGMENT_OVERHEAD + header_len
    # The plain bodies, one row each; when not sealing, rows of whole datagrams.
    offset = 0 if key is not None else HEADER_SIZE
    rows = np.empty((count, offset + body_size), np.uint8)
    bodies = rows[:, offset:]
    bodies[:, 0:4] = np.frombuffer(_U32.pack(superframe_id & _SERIAL_MASK), np.uint8)
    bodies[:, 4:6] = np.arange(count, dtype=">u2").view(np.uint8).reshape(count, 2)
    common = b"".join(
        (_U16.pack(count), _U16.pack(header_len), vn.pack_vnet(vnet), frame[:header_len])
    )
    bodies[:, 6:payload_at] = np.frombuffer(common, np.uint8)
    payload = np.frombuffer(frame, np.uint8)
    bodies[:last, payload_at:] = payload[header_len : header_len + last * size].reshape(last, size)
    bodies[last, payload_at : payload_at + last_payload] = payload[header_len + last * size :]
    if key is None:
        rows[:, :24] = np.frombuffer(head, np.uint8)
        rows[:, 24:32] = sequences.astype(">u8").view(np.uint8).reshape(count, 8)
        stride = HEADER_SIZE + body_size
        total = last * stride + HEADER_SIZE + payload_at + last_payload
        return DatagramRun(rows.reshape(-1).data[:total], stride)
    stride = HEADER_SIZE + body_size + TAG_SIZE
    out = bytearray(last * stride + HEADER_SIZE + payload_at + last_payload + TAG_SIZE)
    plain = rows.reshape(-1).data[: last * body_size + payload_at + last_payload]
    aead.seal_run(out, stride, head, plain, body_size, count, header.sequence, key)
    return DatagramRun(memoryview(out), stride)


def uniform_segments(run: DatagramRun, offset: int = HEADER_SIZE) -> bool:
    """Whether every datagram of ``run`` repeats the first one's header (but the sequence) and
    segment prefix (but the index, which counts up by one): then checking the first datagram
    checks them all, and their bodies can go to :meth:`Reassembler.add_uniform`. One array
    comparison per field instead of a Python step per datagram; False means "look at each".

    With ``offset`` 0 the run holds bodies alone (opened sealed datagrams): prefixes only.
    """
    data, stride = run
    full = len(data) // stride
    tail = len(data) - full * stride
    if full < 1 or stride < offset + SEGMENT_OVERHEAD or full + (tail > 0) < 2:
        return False
    same_to = offset + SEGMENT_OVERHEAD + _U16.unpack_from(data, offset + 8)[0]
    if same_to > stride or (tail and same_to > tail):
        return False
    grid = np.frombuffer(data, np.uint8, count=full * stride).reshape(full, stride)
    first = grid[0]
    sid, index0 = slice(offset, offset + 4), _U16.unpack_from(data, offset + 4)[0]
    rest = slice(offset + 6, same_to)
    indexes = grid[:, offset + 4].astype(np.int64) << 8 | grid[:, offset + 5]
    head = slice(0, 24 if offset else 0)
    if not (
        (grid[:, head] == first[head]).all()
        and (grid[:, sid] == first[sid]).all()
        and (grid[:, rest] == first[rest]).all()
        and (indexes == np.arange(index0, index0 + full)).all()
    ):
        return False
    if tail:
        last = data[full * stride :]
        return (
            last[head] == data[head]
            and last[sid] == data[sid]
            and last[rest] == data[rest]
            and _U16.unpack_from(last, offset + 4)[0] == index0 + full
        )
    return True


def same_heads(run: DatagramRun) -> bool:
    """Whether every datagram of ``run`` has the first one's header but for the sequence: one
    hop, origin, destination, kind and flags (so one key and one replay window)."""
    data, stride = run
    full = len(data) // stride
    tail = len(data) - full * stride
    if full < 1 or stride < HEADER_SIZE or 0 < tail < HEADER_SIZE:
        return False
    grid = np.frombuffer(data, np.uint8, count=full * stride).reshape(full, stride)
    return bool((grid[:, :24] == grid[0, :24]).all()) and (
        not tail or data[full * stride : full * stride + 24] == data[:24]
    )


def open_run(
    run: DatagramRun, key: bytes, window: ReplayWindow
) -> tuple[DatagramRun, list[int], list[DropReason]]:
    """Open the sealed datagrams of ``run`` (one hop's, sharing one key and window: see
    :func:`same_heads`) into one buffer of plain bodies, datagram i's at
    ``i * (stride - HEADER_SIZE - TAG_SIZE)``, with the checks of :func:`decode_datagram` (the
    header is the associated data: a changed one fails its tag). Returns the bodies, the
    indexes of the datagrams opened, and why each other one was dropped."""
    data, stride = run
    count = run.datagram_count
    body_stride = stride - HEADER_SIZE - TAG_SIZE
    if len(data) - (count - 1) * stride < HEADER_SIZE + TAG_SIZE:
        return DatagramRun(memoryview(b""), max(body_stride, 1)), [], [DropReason.SHORT] * count
    sequences = [_U64.unpack_from(data, at + 24)[0] for at in range(0, len(data), stride)]
    out = bytearray(len(data) - count * (HEADER_SIZE + TAG_SIZE))
    failed = aead.open_run(data, stride, HEADER_SIZE, sequences, out, key)
    first = sequences[0]
    if (
        not failed
        and sequences == list(range(first, first + count))
        and window.accept_run(first, count)
    ):
        return DatagramRun(memoryview(out), body_stride), list(range(count)), []
    # The general case: each datagram on its own, as decode_datagram would take it.
    opened: list[int] = []
    drops: list[DropReason] = []
    bad = set(failed)
    for i, sequence in enumerate(sequences):
        if not window.would_accept(sequence):
            drops.append(DropReason.REPLAYED)
        elif i in bad:
            drops.append(DropReason.BAD_TAG)
        else:
            window.check_and_update(sequence)
            opened.append(i)
    return DatagramRun(memoryview(out), body_stride), opened, drops


def _header_head(header: DatagramHeader, sealed: bool, count: int) -> bytes:
    """The first 24 header bytes, which all ``count`` datagrams of one call share (all but the
    sequence); ValueError if the header does not fit or the sequences would pass 64 bits."""
    flags = (header.flags & ~SEALED) | (SEALED if sealed else 0)
    if header.sequence + count - 1 > MAX_SEQUENCE:
        raise ValueError(f"sequence {header.sequence} + {count} passes 64 bits")
    return _pack_header(header, flags, header.sequence)[:24]


class ReplayWindow:
    """The sequence numbers already accepted from one hop sender under one key.

    Accepts each number at most once, in any order within the last :data:`REPLAY_WINDOW`
    numbers below the highest seen, and rejects anything older (RFC 6479's idea, with a Python
    int as the bitmap). Only :func:`decode_datagram` should update it, after the tag checked
    out; otherwise a forged datagram could burn a sequence number or slide the window.
    """

    __slots__ = ("_bits", "_highest")

    def __init__(self) -> None:
        self._highest = -1
        self._bits = 0  # bit i set: highest - i was accepted

    @property
    def highest(self) -> int | None:
        return None if self._highest < 0 else self._highest

    def would_accept(self, seq: int) -> bool:
        """Whether ``seq`` is new, without recording it (a cheap pre-check before crypto)."""
        if seq > self._highest:
            return True
        offset = self._highest - seq
        return offset < REPLAY_WINDOW and not (self._bits >> offset) & 1

    def accept_run(self, first: int, count: int) -> bool:
        """Record ``first`` .. ``first + count - 1`` at once if all are newer than anything
        seen (a super-frame's datagrams, in order); False, recording nothing, otherwise."""
        if first <= self._highest or count < 1:
            return False
        last = first + count - 1
        shift = last - self._highest
        run = (1 << min(count, REPLAY_WINDOW)) - 1
        if shift >= REPLAY_WINDOW:
            self._bits = run
        else:
            self._bits = ((self._bits << shift) | run) & ((1 << REPLAY_WINDOW) - 1)
        self._highest = last
        return True

    def check_and_update(self, seq: int) -> bool:
        """Record ``seq`` if it is new; False for a replay or one too old to tell."""
        highest = self._highest
        if seq > highest:
            shift = seq - highest
            if shift >= REPLAY_WINDOW:
                self._bits = 1
            else:
                self._bits = ((self._bits << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self._highest = seq
            return True
        offset = highest - seq
        if offset >= REPLAY_WINDOW:
            return False
        bit = 1 << offset
        if self._bits & bit:
            return False
        self._bits |= bit
        return True


def decode_datagram(
    data: Buffer,
    key_for: Callable[[int], bytes | None],
    window_for: Callable[[int], ReplayWindow | None],
) -> tuple[DatagramHeader, Buffer]:
    """The header and plain body of a received datagram; DatagramError to drop it.

    The body of a plain datagram is a view into ``data``: no copy.

    ``key_for(hop)`` is the key the hop sender seals with towards us, or None when that pair
    does not encrypt; ``window_for(hop)`` its replay window (replace the window whenever the
    key changes, as sequences restart). This function checks the window and updates it itself,
    and only after the tag authenticated, so a forgery can neither burn a sequence number nor
    slide the window; the caller must not touch it. Unsealed datagrams get no replay check:
    without a key anyone on the path could forge them anyway.
    """
    n = len(data)
    header = parse_header(data)
    flags, hop, seq = header.flags, header.hop, header.sequence
    key = key_for(hop)
    if flags & SEALED:
        window = window_for(hop) if key is not None else None
        if key is None or window is None:
            raise DatagramError(DropReason.NO_KEY, f"sealed, no key or window for {hop:012x}")
        if n < HEADER_SIZE + TAG_SIZE:
            raise DatagramError(DropReason.SHORT, f"sealed datagram of {n} bytes")
        if not window.would_accept(seq):
            raise DatagramError(DropReason.REPLAYED, f"sequence {seq} from {hop:012x}")
        opened = aead.open_sealed(data, HEADER_SIZE, seq, key)
        if opened is None:
            raise DatagramError(DropReason.BAD_TAG, f"from {hop:012x}")
        window.check_and_update(seq)
        body: Buffer = opened
    else:
        if key is not None:
            raise DatagramError(DropReason.NOT_SEALED, f"plain from {hop:012x}")
        body = memoryview(data)[HEADER_SIZE:]
    return header, body


def parse_header(data: Buffer) -> DatagramHeader:
    """The header of a datagram, checked for everything but authenticity (the body's job)."""
    n = len(data)
    if n < HEADER_SIZE:
        raise DatagramError(DropReason.SHORT, f"datagram of {n} bytes")
    (version, kind, flags, ttl, oh, ol, dh, dl, hh, hl, reserved, seq) = _HEADER.unpack_from(data)
    if version != VERSION:
        raise DatagramError(DropReason.BAD_VERSION, f"version {version}")
    if kind >= len(_KINDS):
        raise DatagramError(DropReason.BAD_KIND, f"kind {kind}")
    destination = dh << 32 | dl
    if flags & ~_KNOWN_FLAGS or reserved or (flags & BROADCAST and destination):
        raise DatagramError(DropReason.BAD_HEADER, f"flags {flags:#x}, reserved {reserved:#x}")
    if ttl == 0:
        raise DatagramError(DropReason.TTL_EXPIRED, "ttl 0")
    return DatagramHeader(_KINDS[kind], flags, ttl, oh << 32 | ol, destination, hh << 32 | hl, seq)


def max_segment_payload(max_datagram: int, header_len: int, sealed: bool) -> int:
    """The largest gso_size whose SEGMENT datagrams fit in ``max_datagram`` bytes."""
    return max_datagram - HEADER_SIZE - (TAG_SIZE if sealed else 0) - SEGMENT_OVERHEAD - header_len


def max_frames_body(max_datagram: int, sealed: bool) -> int:
    """The largest FRAMES (or any) body that fits in ``max_datagram`` bytes."""
    return max_datagram - HEADER_SIZE - (TAG_SIZE if sealed else 0)


class FrameBatcher:
    """Small frames for one next hop, packed into FRAMES bodies of at most ``max_body`` bytes.

    Batching several frames per datagram saves a syscall and a seal per frame (FACTS.md: +15-20%
    at saturation). The shell adds what the TAP gives and takes the rest when the TAP has no
    more, so a frame never waits for company. Size ``max_body`` with :func:`max_frames_body`.
    """

    __slots__ = ("_count", "_parts", "_size", "max_body")

    def __init__(self, max_body: int) -> None:
        if not FRAME_OVERHEAD + vn.ETH_HEADER_SIZE <= max_body <= MAX_DATAGRAM - HEADER_SIZE:
            raise ValueError(f"a FRAMES body of {max_body} bytes cannot be sent")
        self.max_body = max_body
        self._parts: list[Buffer] = []
        self._size = 0
        self._count = 0

    @property
    def max_frame(self) -> int:
        """The largest frame :meth:`add` accepts; larger ones need ICMP too-big or segmenting."""
        return min(self.max_body - FRAME_OVERHEAD, 0xFFFF)

    @property
    def pending(self) -> int:
        """Frames added and not yet returned in a body."""
        return self._count

    def add(self, vnet: Buffer, frame: Buffer) -> bytes | None:
        """Queue a frame; returns the full body it did not fit into, to send first, if any.

        ValueError for a frame over :attr:`max_frame`: check before, it is the caller's to
        answer (with :func:`meshnet.dataplane.vnet.icmp_too_big`).
        """
        n = len(frame)
        if len(vnet) != vn.VNET_HEADER_SIZE or n < vn.ETH_HEADER_SIZE or n > self.max_frame:
            raise ValueError(f"cannot batch a {n}-byte frame (max {self.max_frame})")
        out = None
        entry = FRAME_OVERHEAD + n
        if self._size + entry > self.max_body:
            out = self.take()
        self._parts += (_U16.pack(n), vnet, frame)
        self._size += entry
        self._count += 1
        return out

    def take(self) -> bytes | None:
        """The body of everything queued, or None when nothing is."""
        if not self._parts:
            return None
        body = b"".join(self._parts)
        self._parts = []
        self._size = 0
        self._count = 0
        return body


def split_frames(body: Buffer) -> list[tuple[Buffer, Buffer]]:
    """The (virtio-net header, Ethernet frame) pairs of a FRAMES body."""
    n = len(body)
    if n == 0:
        raise DatagramError(DropReason.BAD_BODY, "FRAMES body without frames")
    out = []
    pos = 0
    while pos < n:
        start = pos + FRAME_OVERHEAD
        if start > n:
            raise DatagramError(DropReason.BAD_BODY, "truncated frame entry")
        length = body[pos] << 8 | body[pos + 1]
        end = start + length
        if length < vn.ETH_HEADER_SIZE or end > n:
            raise DatagramError(DropReason.BAD_BODY, f"frame length {length} at {pos}")
        out.append((body[pos + 2 : start], body[start:end]))
        pos = end
    return out


def segment_bodies(superframe_id: int, vnet: vn.VnetHeader, frame: bytes) -> list[bytes]:
    """One SEGMENT body per kernel segment of a TCP super-frame read from the TAP.

    All but the last are the same size, as UDP GSO requires. ``superframe_id`` is taken modulo
    2**32, so the sender can just count. RemoteProtocolError if ``frame`` is not a TCP
    super-frame we can cut (it came from a container).
    """
    header_len, size, count, _ = vn.plan_tcp_segments(vnet, frame)
    if count > 0xFFFF or header_len > MAX_SEGMENT_HEADERS:
        raise RemoteProtocolError(f"super-frame of {count} segments, {header_len} header bytes")
    superframe_id &= _SERIAL_MASK
    common = vn.pack_vnet(vnet) + frame[:header_len]
    view = memoryview(frame)
    pack = _SEGMENT.pack
    return [
        b"".join(
            (
                pack(superframe_id, i, count, header_len),
                common,
                view[header_len + i * size : header_len + (i + 1) * size],
            )
        )
        for i in range(count)
    ]


def _newer(a: int, b: int) -> bool:
    """Whether super-frame id ``a`` is after ``b`` (RFC 1982 serial numbers: ids wrap)."""
    return a != b and (a - b) & _SERIAL_MASK < _SERIAL_HALF


def _serial_cmp(a: int, b: int) -> int:
    return 0 if a == b else (1 if _newer(a, b) else -1)


_serial_key = functools.cmp_to_key(_serial_cmp)


@dataclass(frozen=True, slots=True)
class ReassemblerStatistics:
    completed: int
    """Super-frames delivered whole."""
    flushed: int
    """Partial super-frames delivered as rebuilt runs."""
    runs: int
    """Frames rebuilt from partial super-frames."""
    segments_lost: int
    """Segments never received of the flushed super-frames."""
    duplicates: int
    late: int
    """Segments of super-frames already delivered or flushed."""
    inconsistent: int


class _Partial:
    __slots__ = ("count", "first_seen", "headers", "payloads", "received", "vnet", "vnet_raw")

    def __init__(
        self, count: int, first_seen: float, headers: bytes, vnet: vn.VnetHeader, raw: bytes
    ) -> None:
        self.count = count
        self.first_seen = first_seen
        self.headers = headers
        self.vnet = vnet
        self.vnet_raw = raw
        self.payloads: list[memoryview | None] = [None] * count
        self.received = 0


class Reassembler:
    """Super-frames from one origin peer, put back together from SEGMENT bodies.

    Returns (virtio-net header, frame) pairs to write to the TAP: the original super-frame,
    byte for byte, once all its segments arrived. A super-frame that will not complete (a newer
    one completed, it went stale, or too many are pending) is flushed as valid smaller frames
    made of what did arrive. At most ``max_partial`` super-frames are held.

    The origin should start its ids at a random value: ids far behind the last delivered are
    taken as a restart of the origin; slightly behind, as late segments and dropped.
    """

    def __init__(self, *, max_partial: int = 4) -> None:
        if max_partial < 1:
            raise ValueError("max_partial must be at least 1")
        self._max_partial = max_partial
        self._partials: dict[int, _Partial] = {}
        self._floor: int | None = None  # newest id delivered or flushed; older ids are late
        self._completed = 0
        self._flushed = 0
        self._run_count = 0
        self._lost = 0
        self._duplicates = 0
        self._late = 0
        self._inconsistent = 0

    @property
    def oldest(self) -> float | None:
        """When the oldest pending super-frame's first segment arrived (None: none pending)."""
        return min((p.first_seen for p in self._partials.values()), default=None)

    def pending(self) -> int:
        """Super-frames waiting for segments; while any do, call :meth:`flush` soon."""
        return len(self._partials)

    def statistics(self) -> ReassemblerStatistics:
        return ReassemblerStatistics(
            self._completed,
            self._flushed,
            self._run_count,
            self._lost,
            self._duplicates,
            self._late,
            self._inconsistent,
        )

    def add(self, body: Buffer, now: float) -> list[tuple[Buffer, Buffer]]:
        """Take one SEGMENT body; returns the frames now ready (often none)."""
        n = len(body)
        if n < SEGMENT_OVERHEAD:
            raise DatagramError(DropReason.BAD_BODY, f"SEGMENT body of {n} bytes")
        sid, index, count, header_len = _SEGMENT.unpack_from(body)
        start = SEGMENT_OVERHEAD + header_len
        if (
            index >= count
            or header_len < vn.MIN_TCP_HEADERS
            or header_len > MAX_SEGMENT_HEADERS
            or n <= start
        ):
            raise DatagramError(
                DropReason.BAD_BODY, f"segment {index}/{count}, L={header_len}, {n} bytes"
            )
        out: list[tuple[Buffer, Buffer]] = []
        floor = self._floor
        if floor is not None and not _newer(sid, floor):
            if (floor - sid) & _SERIAL_MASK <= _RESTART_GAP:
                self._late += 1
                return out
            out = self._finalize(None)  # the origin restarted: deliver what is held, forget
            self._floor = None
        partial = self._partials.get(sid)
        if partial is None:
            partial = self._start(sid, body, count, header_len, now)
            if partial is None:  # a super-frame of one segment: nothing to wait for
                self._completed += 1
                out += self._finalize(sid)
                out.append((body[SEGMENT_PREFIX_SIZE:SEGMENT_OVERHEAD], body[SEGMENT_OVERHEAD:]))
                return out
        elif (
            count != partial.count
            or body[SEGMENT_PREFIX_SIZE:SEGMENT_OVERHEAD] != partial.vnet_raw
            or body[SEGMENT_OVERHEAD:start] != partial.headers
        ):
            self._drop(sid)
            raise DatagramError(DropReason.INCONSISTENT, f"segment {index} of super-frame {sid}")
        size = n - start
        gso_size = partial.vnet.gso_size
        if size != gso_size if index < count - 1 else size > gso_size:
            self._drop(sid)
            raise DatagramError(DropReason.INCONSISTENT, f"segment {index} of {size} bytes")
        payloads = partial.payloads
        if payloads[index] is not None:
            self._duplicates += 1
            return out
        payloads[index] = memoryview(body)[start:]
        partial.received += 1
        return out + self._progress(sid, partial)

    def add_uniform(self, bodies: list[Buffer], now: float) -> list[tuple[Buffer, Buffer]]:
        """Take the SEGMENT bodies of consecutive segments whose prefixes are known to agree
        but for the index (:func:`uniform_segments`): the first is checked as by :meth:`add`,
        the rest only for size."""
        out = self.add(bodies[0], now)
        sid, index0, count, header_len = _SEGMENT.unpack_from(bodies[0])
        partial = self._partials.get(sid)
        if partial is None or index0 + len(bodies) > count:  # done, late or refused: slowly
            for body in bodies[1:]:
                out += self.add(body, now)
            return out
        start = SEGMENT_OVERHEAD + header_len
        gso_size = partial.vnet.gso_size
        last = bodies[-1]
        last_size = len(last) - start
        last_index = index0 + len(bodies) - 1
        # The first body's size was checked by add(), and the middle ones are as long.
        if last_size != gso_size if last_index < count - 1 else last_size > gso_size:
            self._drop(sid)
            raise DatagramError(DropReason.INCONSISTENT, f"segments of super-frame {sid}")
        payloads = partial.payloads
        received = partial.received
        for index in range(index0 + 1, last_index + 1):
            if payloads[index] is None:
                payloads[index] = memoryview(bodies[index - index0])[start:]
                received += 1
            else:
                self._duplicates += 1
        partial.received = received
        return out + self._progress(sid, partial)

    def _progress(self, sid: int, partial: _Partial) -> list[tuple[Buffer, Buffer]]:
        """After storing segments: the whole super-frame once complete (after anything older),
        else room made when too many are pending."""
        if partial.received == partial.count:
            del self._partials[sid]
            self._completed += 1
            whole = b"".join((partial.headers, *partial.payloads))  # type: ignore[arg-type]
            return [*self._finalize(sid), (partial.vnet_raw, whole)]
        if len(self._partials) > self._max_partial:
            return self._finalize(min(self._partials, key=_serial_key))
        return []

    def flush(self, now: float, older_than: float) -> list[tuple[Buffer, Buffer]]:
        """Deliver, as rebuilt runs, every pending super-frame whose first segment arrived
        before the time ``older_than`` (and any older id still pending).

        ``older_than`` is a time like ``now``, not an age: ``flush(now, now - 0.005)``. A
        super-frame arriving at ``now`` is never stale, whatever ``older_than`` says.
        """
        cutoff = min(older_than, now)
        stale = [sid for sid, p in self._partials.items() if p.first_seen < cutoff]
        if not stale:
            return []
        return self._finalize(max(stale, key=_serial_key))

    def flush_all(self) -> list[tuple[Buffer, Buffer]]:
        """Deliver everything pending (the origin went away, or shutdown)."""
        return self._finalize(None)

    def _start(
        self, sid: int, body: Buffer, count: int, header_len: int, now: float
    ) -> _Partial | None:
        raw = bytes(body[SEGMENT_PREFIX_SIZE:SEGMENT_OVERHEAD])
        headers = bytes(body[SEGMENT_OVERHEAD : SEGMENT_OVERHEAD + header_len])
        vnet = vn.parse_vnet(raw)
        size = vnet.gso_size
        try:
            plan = vn.plan_tcp_segments(vnet, headers + bytes(1))
        except RemoteProtocolError as error:
            raise DatagramError(DropReason.BAD_BODY, f"super-frame {sid}: {error}") from None
        if plan.header_len != header_len or header_len + (count - 1) * size >= plan.max_size:
            raise DatagramError(
                DropReason.BAD_BODY, f"super-frame {sid}: L={header_len}, {count}x{size}"
            )
        if count == 1:
            if len(body) - SEGMENT_OVERHEAD - header_len > size:
                raise DatagramError(DropReason.INCONSISTENT, f"super-frame {sid} oversized")
            return None
        partial = _Partial(count, now, headers, vnet, raw)
        self._partials[sid] = partial
        return partial

    def _drop(self, sid: int) -> None:
        self._partials.pop(sid, None)
        self._inconsistent += 1

    def _finalize(self, upto: int | None) -> list[tuple[Buffer, Buffer]]:
        """Flush every pending super-frame not newer than ``upto`` (all for None), oldest first;
        ``upto`` becomes the newest id handled."""
        out: list[tuple[Buffer, Buffer]] = []
        if self._partials:
            ids = sorted(
                (s for s in self._partials if upto is None or not _newer(s, upto)),
                key=_serial_key,
            )
            for sid in ids:
                out += self._runs(self._partials.pop(sid))
        if upto is not None and (self._floor is None or _newer(upto, self._floor)):
            self._floor = upto
        return out

    def _runs(self, partial: _Partial) -> list[tuple[Buffer, Buffer]]:
        out: list[tuple[Buffer, Buffer]] = []
        payloads = partial.payloads
        count = partial.count
        i = 0
        while i < count:
            if payloads[i] is None:
                i += 1
                continue
            j = i + 1
            while j < count and payloads[j] is not None:
                j += 1
            run: list[memoryview] = payloads[i:j]  # type: ignore[assignment]
            out.append(vn.rebuild(partial.vnet, partial.headers, i, run, j == count, count))
            i = j
        self._flushed += 1
        self._run_count += len(out)
        self._lost += count - partial.received
        return out


class Heartbeat(NamedTuple):
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


def decode_heartbeat(body: bytes) -> Heartbeat:
    if len(body) != _HEARTBEAT.size:
        raise DatagramError(DropReason.BAD_BODY, f"HEARTBEAT body of {len(body)} bytes")
    timestamp, echo, flags = _HEARTBEAT.unpack(body)
    if flags & ~HEARTBEAT_I_HEAR_YOU:
        raise DatagramError(DropReason.BAD_BODY, f"HEARTBEAT flags {flags:#x}")
    return Heartbeat(timestamp, echo, bool(flags))


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
        raise DatagramError(DropReason.BAD_BODY, f"PROBE body of {len(body)} bytes")
    probe_id: int = _PROBE.unpack_from(body)[0]
    return probe_id


def encode_probe_ack(probe_id: int, size: int) -> bytes:
    """The answer to a PROBE whose body was ``size`` bytes."""
    return _PROBE_ACK.pack(probe_id, size)


def decode_probe_ack(body: bytes) -> tuple[int, int]:
    """(probe id, probe body size the peer received)."""
    if len(body) != _PROBE_ACK.size:
        raise DatagramError(DropReason.BAD_BODY, f"PROBE_ACK body of {len(body)} bytes")
    probe_id, size = _PROBE_ACK.unpack(body)
    return probe_id, size
