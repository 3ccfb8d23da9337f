"""SEGMENT bodies: a TCP super-frame from the TAP cut into one datagram per kernel segment.

A SEGMENT body is: u32 super-frame id, u16 index, u16 count, u16 header length L, the 10-byte
original virtio-net header, L bytes of original headers, then the segment's payload. The cuts are
the kernel's own segment boundaries (see :mod:`meshnet.dataplane.sleeve.vnet`); equal-sized
datagrams let the shell send them all in one UDP GSO call and receive them in one GRO read.
:mod:`meshnet.dataplane.sleeve.reassembly` puts them back together.
"""

from __future__ import annotations

import struct

import numpy as np

from meshnet.dataplane.sleeve import seal as aead
from meshnet.dataplane.sleeve import vnet as vn
from meshnet.dataplane.sleeve.header import (
    HEADER_SIZE,
    MAX_DATAGRAM,
    TAG_SIZE,
    Buffer,
    DatagramHeader,
    DatagramRun,
    header_head,
)
from meshnet.errors import RemoteProtocolError

SEGMENT_PREFIX = struct.Struct(">IHHH")
"""Super-frame id, index, count, header length L."""
SEGMENT_PREFIX_SIZE = SEGMENT_PREFIX.size
SEGMENT_OVERHEAD = SEGMENT_PREFIX_SIZE + vn.VNET_HEADER_SIZE
"""Bytes a SEGMENT body spends besides the L header bytes and the payload."""
UNDERLAY_HEADERS = 48
"""IPv6 + UDP: the most an underlay packet spends on headers (IPv4 leaves 20 bytes of slack)."""
ENCAPSULATION_OVERHEAD = UNDERLAY_HEADERS + HEADER_SIZE + TAG_SIZE + SEGMENT_OVERHEAD + 14
"""Underlay bytes a container frame costs on the sleeve beyond its IP packet: the overlay MTU is
the underlay's minus this (the Ethernet header travels inside every segment)."""
MAX_SEGMENT_HEADERS = 512
"""Largest header length L a segment may declare (Ethernet + IPv6 with options + TCP fits)."""
SERIAL_MASK = 0xFFFFFFFF
"""Super-frame ids are 32-bit serial numbers (RFC 1982): the sender just counts."""
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def max_segment_payload(max_datagram: int, header_len: int, sealed: bool) -> int:
    """The largest gso_size whose SEGMENT datagrams fit in ``max_datagram`` bytes."""
    return max_datagram - HEADER_SIZE - (TAG_SIZE if sealed else 0) - SEGMENT_OVERHEAD - header_len


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
    :func:`~meshnet.dataplane.sleeve.vnet.plan_tcp_segments`, if the caller made it already."""
    header_len, size, count, _ = plan or vn.plan_tcp_segments(vnet, frame)
    if count > 0xFFFF or header_len > MAX_SEGMENT_HEADERS:
        raise RemoteProtocolError(f"super-frame of {count} segments, {header_len} header bytes")
    body_size = SEGMENT_OVERHEAD + header_len + size
    if body_size > MAX_DATAGRAM - HEADER_SIZE - TAG_SIZE:
        raise ValueError(f"segments of {size} bytes do not fit a datagram")
    head = header_head(header, key is not None, count)
    sequences = np.arange(header.sequence, header.sequence + count, dtype=np.uint64)
    last = count - 1
    last_payload = len(frame) - header_len - last * size
    payload_at = SEGMENT_OVERHEAD + header_len
    # The plain bodies, one row each; when not sealing, rows of whole datagrams.
    offset = 0 if key is not None else HEADER_SIZE
    rows = np.empty((count, offset + body_size), np.uint8)
    bodies = rows[:, offset:]
    bodies[:, 0:4] = np.frombuffer(_U32.pack(superframe_id & SERIAL_MASK), np.uint8)
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


def segment_bodies(superframe_id: int, vnet: vn.VnetHeader, frame: bytes) -> list[bytes]:
    """One SEGMENT body per kernel segment of a TCP super-frame read from the TAP.

    All but the last are the same size, as UDP GSO requires. ``superframe_id`` is taken modulo
    2**32, so the sender can just count. RemoteProtocolError if ``frame`` is not a TCP
    super-frame we can cut (it came from a container).
    """
    header_len, size, count, _ = vn.plan_tcp_segments(vnet, frame)
    if count > 0xFFFF or header_len > MAX_SEGMENT_HEADERS:
        raise RemoteProtocolError(f"super-frame of {count} segments, {header_len} header bytes")
    superframe_id &= SERIAL_MASK
    common = vn.pack_vnet(vnet) + frame[:header_len]
    view = memoryview(frame)
    pack = SEGMENT_PREFIX.pack
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
