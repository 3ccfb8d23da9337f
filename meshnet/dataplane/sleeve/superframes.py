"""The bulk path: a TCP super-frame out as GSO sends, and a GRO run back in, without copies.

A super-frame read from the TAP leaves as SEGMENT datagrams (see :mod:`segments`). Plain, each
datagram is gathered by the kernel from three pieces: its own 42 bytes (header and segment
prefix, one row of a table filled by two array operations per super-frame), the shared
virtio-net header and packet headers, and its slice of the payload, all still in the TAP read
buffer; the kernel's copy into the socket is the only one. Sealed, the datagrams are laid out
in one buffer by four array operations and sealed there in place (:class:`run_cipher.RunCipher`).

A GRO run from one hop is checked by its first and last datagram: one GSO send arrives as one
run, and the datagrams between were sent together (the same flow, the same size, sequence
numbers counting up by one; sealed, each one's tag vouches for its header). Its payloads are
then written to the TAP as slices of the receive buffer, the kernel's copy again the only one.

Everything here works on caller-owned fixed buffers and keeps per-shape tables of slices and
call arguments, so a super-frame of a shape seen before costs no per-datagram Python work
beyond the crypto calls. Pure: no I/O.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from meshnet.dataplane.kernel.udp import MAX_SEGMENTS as MAX_GSO_SEGMENTS
from meshnet.dataplane.sleeve import vnet as vn
from meshnet.dataplane.sleeve.header import HEADER_SIZE, TAG_SIZE, Buffer
from meshnet.dataplane.sleeve.replay import ReplayWindow
from meshnet.dataplane.sleeve.run_cipher import RunCipher
from meshnet.dataplane.sleeve.segments import (
    MAX_SEGMENT_HEADERS,
    ROW_SIZE,
    SEGMENT_OVERHEAD,
    SEGMENT_PREFIX,
    SERIAL_MASK,
    sends_for,
)

MAX_SEGMENTS = 1024
"""Most SEGMENT datagrams a super-frame may need here (a 64 KiB one cut at an MSS of 64)."""
_ROW = np.dtype(
    [
        ("head", "V24"),
        ("sequence", ">u8"),
        ("superframe", ">u4"),
        ("index", ">u2"),
        ("count", ">u2"),
        ("header_len", ">u2"),
    ]
)
_SEQUENCE = struct.Struct(">Q")
_SHAPES = 64
"""Shapes (segment size, count, ...) whose slices and call arguments are kept, per table."""


class Layout(NamedTuple):
    """How one super-frame goes out: each GSO send's buffers and byte count, and the
    datagrams' stride."""

    sends: list[tuple[list[Buffer], int]]
    stride: int
    datagrams: int
    size: int
    """Bytes on the wire (UDP payloads), for the counters."""


class SuperframeSender:
    """Lays out super-frames read into ``source`` (virtio-net header, then the frame) as
    SEGMENT datagrams; one per packet thread, as it reuses its tables."""

    def __init__(self, source: bytearray) -> None:
        self._source = memoryview(source)
        self._rows = np.zeros(MAX_SEGMENTS, _ROW)
        self._rows["index"] = np.arange(MAX_SEGMENTS)
        self._row_bytes = self._rows.view(np.uint8).reshape(MAX_SEGMENTS, ROW_SIZE)
        self._counting = np.arange(MAX_SEGMENTS, dtype=np.uint64)
        # Per count: (0..count-1, the rows' sequence and super-frame fields), kept because a
        # field view and slices per super-frame cost more than the arithmetic on them.
        self._fields: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._row_views: list[memoryview] | None = None
        self._head = b""
        self._shape_of_rows = (-1, -1)
        self._plain: dict[tuple[int, int, int], Layout] = {}
        self._sealed: dict[tuple[int, int], tuple[Layout, int]] = {}
        self._out: bytearray | None = None  # the sealed datagrams, made on first use
        self._cipher: RunCipher | None = None

    def layout(
        self,
        plan: vn.SegmentPlan,
        frame_len: int,
        head: bytes,
        first_sequence: int,
        superframe_id: int,
        key: bytes | None,
    ) -> Layout:
        """The datagrams of the super-frame in the source buffer (``frame_len`` bytes after its
        virtio-net header), cut as ``plan`` says; ``head`` is their header's first 24 bytes
        (:func:`header_head`). Valid until the next call. ValueError if it cannot be laid out
        here (more than :data:`MAX_SEGMENTS` segments, or headers over the limit)."""
        header_len, size, count, _ = plan
        if count > MAX_SEGMENTS or header_len > MAX_SEGMENT_HEADERS:
            raise ValueError(f"super-frame of {count} segments, {header_len} header bytes")
        rows = self._rows
        if head != self._head:
            rows["head"] = np.void(head)
            self._head = head
        if (count, header_len) != self._shape_of_rows:
            rows["count"] = count
            rows["header_len"] = header_len
            self._shape_of_rows = (count, header_len)
        fields = self._fields.get(count)
        if fields is None:
            fields = self._fields[count] = (
                self._counting[:count],
                rows["sequence"][:count],
                rows["superframe"][:count],
            )
        counting, sequences, superframes = fields
        np.add(counting, first_sequence, out=sequences)
        superframes.fill(superframe_id & SERIAL_MASK)
        if key is None:
            return self._plain_layout(header_len, size, frame_len, count)
        return self._sealed_layout(header_len, size, frame_len, count, first_sequence, key)

    def _plain_layout(self, header_len: int, size: int, frame_len: int, count: int) -> Layout:
        """Kept per (header length, segment size, count); only the last payload's slice and
        the last send's byte count change with the frame's length."""
        shape = (header_len, size, count)
        layout = self._plain.get(shape)
        if layout is None:
            layout = self._plain[shape] = self._new_plain_layout(header_len, size, count)
            if len(self._plain) > _SHAPES:
                self._plain.clear()
                self._plain[shape] = layout
        start = vn.VNET_HEADER_SIZE + header_len + (count - 1) * size
        end = vn.VNET_HEADER_SIZE + frame_len
        buffers, nbytes = layout.sends[-1]
        nbytes += end - start - len(buffers[-1])
        buffers[-1] = self._source[start:end]
        layout.sends[-1] = (buffers, nbytes)
        overhead = count * (ROW_SIZE + vn.VNET_HEADER_SIZE + header_len)
        return Layout(layout.sends, layout.stride, count, overhead + frame_len - header_len)

    def _new_plain_layout(self, header_len: int, size: int, count: int) -> Layout:
        if self._row_views is None:
            self._row_views = [row.data for row in self._row_bytes]
        rows, source = self._row_views, self._source
        common = source[: vn.VNET_HEADER_SIZE + header_len]
        start = vn.VNET_HEADER_SIZE + header_len
        stride = ROW_SIZE + len(common) + size
        sends = []
        for first, last in sends_for(stride, count):
            buffers: list[Buffer] = []
            for i in range(first, last):
                at = start + i * size
                buffers += (rows[i], common, source[at : at + size])
            sends.append((buffers, sum(len(b) for b in buffers)))
        return Layout(sends, stride, count, 0)

    def _sealed_layout(
        self, header_len: int, size: int, frame_len: int, count: int, sequence: int, key: bytes
    ) -> Layout:
        common_len = vn.VNET_HEADER_SIZE + header_len
        body_at = ROW_SIZE + common_len
        stride = body_at + size + TAG_SIZE
        payload = frame_len - header_len
        last_payload = payload - (count - 1) * size
        if self._out is None or count * stride > len(self._out):
            # Made on first use, grown for a super-frame of more, smaller segments (a buffer
            # the cipher's call arguments point into is never resized: replaced).
            self._out = bytearray(max(count * stride, 96 * 1024))
            self._cipher = RunCipher(self._out, MAX_SEGMENTS, HEADER_SIZE)
            self._sealed.clear()
        assert self._cipher is not None
        out = self._out
        grid = np.frombuffer(out, np.uint8, count=count * stride).reshape(count, stride)
        source = np.frombuffer(self._source, np.uint8)
        grid[:, :ROW_SIZE] = self._row_bytes[:count]
        grid[:, ROW_SIZE:body_at] = source[:common_len]
        start = common_len
        grid[: count - 1, body_at : body_at + size] = source[
            start : start + (count - 1) * size
        ].reshape(count - 1, size)
        last_at = (count - 1) * stride + body_at
        out[last_at : last_at + last_payload] = self._source[
            start + (count - 1) * size : start + payload
        ]
        last_size = body_at + last_payload + TAG_SIZE
        self._cipher.seal(stride, count, last_size, sequence, key)
        total = (count - 1) * stride + last_size
        shape = (stride, count)
        cached = self._sealed.get(shape)
        if cached is None:
            view = memoryview(out)
            sends: list[tuple[list[Buffer], int]] = []
            for first, last in sends_for(stride, count):
                piece = view[first * stride : last * stride]
                sends.append(([piece], len(piece)))
            cached = (Layout(sends, stride, count, 0), sends_for(stride, count)[-1][0] * stride)
            if len(self._sealed) >= _SHAPES:
                self._sealed.clear()
            self._sealed[shape] = cached
        layout, last_send = cached
        layout.sends[-1] = ([memoryview(out)[last_send:total]], total - last_send)
        return Layout(layout.sends, stride, count, total)


class SegmentRun(NamedTuple):
    """Consecutive segments of one super-frame, received in one run and checked."""

    superframe: int
    first_index: int
    total: int
    """Segments in the whole super-frame."""
    segments: int
    """Segments in this run."""
    parts: list[Buffer]
    """The virtio-net header, the packet headers, then each segment's payload in order (views
    into the receive buffer): a whole super-frame as one writev hands it to the TAP."""

    @property
    def vnet(self) -> Buffer:
        return self.parts[0]

    @property
    def headers(self) -> Buffer:
        return self.parts[1]

    @property
    def payloads(self) -> list[Buffer]:
        return self.parts[2:]


class RunCheck(NamedTuple):
    """What :meth:`RunReader.read` found.

    ``run``: the run as one super-frame's consecutive segments. Otherwise, when ``opened``
    (sealed datagrams are opened in place, so they cannot be read again), ``bodies`` are those
    that were authentic and new, to take one by one, and ``rejected``/``replayed`` count the
    others; when not, nothing was touched: take the datagrams one by one from the start.
    """

    run: SegmentRun | None
    opened: bool
    bodies: list[Buffer]
    rejected: int
    replayed: int


class RunReader:
    """Checks GRO runs of SEGMENT datagrams received into ``buffer`` (at its start), opening
    sealed ones in place; one per receiving thread."""

    def __init__(self, buffer: bytearray) -> None:
        self._buffer = buffer
        self._view = memoryview(buffer)
        self._cipher = RunCipher(buffer, MAX_GSO_SEGMENTS * 2, HEADER_SIZE)
        self._max_datagrams = self._cipher.max_datagrams
        self._parts: dict[tuple[int, int, int], list[Buffer]] = {}
        self._last_shape = (1, 1, 0, 0)  # the last run read: (stride, count, bytes, tag)

    def read(
        self, nbytes: int, stride: int, key: bytes | None, window: ReplayWindow | None
    ) -> RunCheck:
        """The run of ``nbytes`` at the buffer's start, in datagrams of ``stride`` bytes, all
        from one hop whose first 24 header bytes the caller checked on the first datagram."""
        view, buffer = self._view, self._buffer
        count = -(-nbytes // stride)
        last_at = (count - 1) * stride
        last_len = nbytes - last_at
        tag = 0 if key is None else TAG_SIZE
        self._last_shape = (stride, count, last_len, tag)
        if (
            count > self._max_datagrams
            or last_len < HEADER_SIZE + SEGMENT_OVERHEAD + tag
            or buffer[last_at : last_at + 24] != buffer[:24]
        ):
            return _NOT_A_RUN
        first_sequence = _SEQUENCE.unpack_from(view, 24)[0]
        if _SEQUENCE.unpack_from(view, last_at + 24)[0] != first_sequence + count - 1:
            return _NOT_A_RUN
        if key is not None:
            assert window is not None
            failed = self._cipher.open(stride, count, last_len, first_sequence, key)
            if failed or not window.accept_run(first_sequence, count):
                return self._one_by_one(stride, count, last_len, first_sequence, failed, window)
        run = self._segments(stride, count, last_len, tag)
        if run is None and key is not None:
            return RunCheck(None, True, self._bodies(stride, count, last_len, tag), 0, 0)
        return RunCheck(run, key is not None, [], 0, 0)

    def _segments(self, stride: int, count: int, last_len: int, tag: int) -> SegmentRun | None:
        view, buffer = self._view, self._buffer
        last_at = (count - 1) * stride
        sid, index, total, header_len = SEGMENT_PREFIX.unpack_from(buffer, HEADER_SIZE)
        start = HEADER_SIZE + SEGMENT_OVERHEAD + header_len
        size = stride - start - tag
        last_size = last_len - start - tag
        if (
            header_len > MAX_SEGMENT_HEADERS
            or size <= 0
            or last_size <= 0
            or last_size > size
            or index + count > total
            or (last_size < size and index + count < total)
            or SEGMENT_PREFIX.unpack_from(buffer, last_at + HEADER_SIZE)
            != (sid, index + count - 1, total, header_len)
            or buffer[last_at + ROW_SIZE : last_at + start] != buffer[ROW_SIZE:start]
        ):
            return None
        shape = (stride, count, start)
        parts = self._parts.get(shape)
        if parts is None:
            common = ROW_SIZE + vn.VNET_HEADER_SIZE
            parts = [view[ROW_SIZE:common], view[common:start]]
            parts += [view[at + start : at + stride - tag] for at in range(0, last_at, stride)]
            parts.append(view[:0])
            if len(self._parts) >= _SHAPES:
                self._parts.clear()
            self._parts[shape] = parts
        parts[-1] = view[last_at + start : last_at + last_len - tag]
        return SegmentRun(sid, index, total, count, parts)

    def bodies(self) -> list[Buffer]:
        """The SEGMENT bodies of the run last read (views: copy what is kept)."""
        return self._bodies(*self._last_shape)

    def open_one(self, offset: int, size: int, sequence: int, key: bytes) -> bool:
        """Open one sealed datagram in the buffer in place (False: not authentic)."""
        return self._cipher.open_one(offset, size, sequence, key)

    def _bodies(self, stride: int, count: int, last_len: int, tag: int) -> list[Buffer]:
        view = self._view
        return [
            view[at + HEADER_SIZE : at + (stride if i < count - 1 else last_len) - tag]
            for i, at in enumerate(range(0, count * stride, stride))
        ]

    def _one_by_one(
        self,
        stride: int,
        count: int,
        last_len: int,
        first_sequence: int,
        failed: list[int],
        window: ReplayWindow,
    ) -> RunCheck:
        """Some datagram failed its tag, or the run is not all newer than the window: each
        one is taken or refused on its own, as :func:`header.decode_datagram` would."""
        bad = set(failed)
        bodies = self._bodies(stride, count, last_len, TAG_SIZE)
        kept: list[Buffer] = []
        replayed = 0
        for i, body in enumerate(bodies):
            if i in bad:
                continue
            if window.check_and_update(first_sequence + i):
                kept.append(body)
            else:
                replayed += 1
        return RunCheck(None, True, kept, len(bad), replayed)


_NOT_A_RUN = RunCheck(None, False, [], 0, 0)
