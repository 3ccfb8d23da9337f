"""SEGMENT bodies: a TCP super-frame from the TAP cut into one datagram per kernel segment.

A SEGMENT body is: u32 super-frame id, u16 index, u16 count, u16 header length L, the 10-byte
original virtio-net header, L bytes of original headers, then the segment's payload. The cuts are
the kernel's own segment boundaries (see :mod:`meshnet.dataplane.sleeve.vnet`); equal-sized
datagrams let the shell send them all in one UDP GSO call and receive them in one GRO read.
:mod:`meshnet.dataplane.sleeve.reassembly` puts them back together.
"""

from __future__ import annotations

import struct

from meshnet.dataplane.kernel.udp import MAX_SEGMENTS as MAX_GSO_SEGMENTS
from meshnet.dataplane.kernel.udp import MAX_UDP_PAYLOAD as MAX_GSO_BYTES
from meshnet.dataplane.sleeve import vnet as vn
from meshnet.dataplane.sleeve.header import (
    HEADER_SIZE,
    TAG_SIZE,
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
ROW_SIZE = HEADER_SIZE + SEGMENT_PREFIX_SIZE
"""A datagram's own bytes: the header and the segment prefix (id, index, count, L)."""
MAX_SEGMENT_HEADERS = 512
"""Largest header length L a segment may declare (Ethernet + IPv6 with options + TCP fits)."""
SERIAL_MASK = 0xFFFFFFFF
"""Super-frame ids are 32-bit serial numbers (RFC 1982): the sender just counts."""
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def max_segment_payload(max_datagram: int, header_len: int, sealed: bool) -> int:
    """The largest gso_size whose SEGMENT datagrams fit in ``max_datagram`` bytes."""
    return max_datagram - HEADER_SIZE - (TAG_SIZE if sealed else 0) - SEGMENT_OVERHEAD - header_len


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


def segments_per_send(overlay_mtu: int) -> int:
    """The most full-sized segments of a container's super-frame that one GSO send carries,
    sealed, at this overlay MTU: capping the containers' super-frames there (their interface's
    gso_max_segs) makes each one GSO send and one GRO run, the fast path both ways."""
    return _per_send(ROW_SIZE + vn.VNET_HEADER_SIZE + vn.ETH_HEADER_SIZE + overlay_mtu + TAG_SIZE)


def sends_for(stride: int, count: int) -> list[tuple[int, int]]:
    """The datagrams ``[start, end)`` of each GSO send for ``count`` datagrams of ``stride``."""
    per_send = _per_send(stride)
    return [(start, min(start + per_send, count)) for start in range(0, count, per_send)]


def _per_send(stride: int) -> int:
    """Datagrams of ``stride`` bytes one GSO send takes: the kernel's limits on segments and
    on bytes (what one IPv4 UDP datagram could hold)."""
    return max(1, min(MAX_GSO_SEGMENTS, MAX_GSO_BYTES // stride))
