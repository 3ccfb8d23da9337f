"""The virtio-net header and the packet surgery the sleeve does on TCP super-frames.

The sleeve's TAP is opened with IFF_VNET_HDR and TSO/checksum offloads, so the kernel hands over
(and accepts back) a 10-byte virtio_net_hdr plus an Ethernet frame of up to ~64 KiB whose TCP
payload the kernel would otherwise have cut into MSS-sized segments. The sender cuts it at those
same boundaries (``gso_size``), so a lost datagram costs one TCP segment. The receiver writes
the whole super-frame back when every piece arrived; when some are missing it rebuilds each
contiguous run it did receive into a valid smaller super-frame (:func:`rebuild`), patching
exactly the fields the kernel's own GSO segmentation patches (``tcp_gso_segment``,
``inet_gso_segment`` in Linux), so the runs are what the kernel would have put on the wire.

The header is little-endian (the kernel's native order on x86 for a non-virtio-1.0 TAP); every
other field here is network order. Checksums of rebuilt frames follow CHECKSUM_PARTIAL: the TCP
checksum field holds the folded pseudo-header sum and the kernel finishes it from ``csum_start``.

Frames come from containers and peers, so malformed ones raise RemoteProtocolError; these
functions run per super-frame in the packet threads and avoid per-packet objects and copies.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from meshnet.constants import IPV6_MIN_MTU
from meshnet.errors import RemoteProtocolError

VNET_HEADER_SIZE = 10
_VNET = struct.Struct("<BBHHHH")

VNET_F_NEEDS_CSUM = 1
VNET_F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_ECN = 0x80

VNET_NONE = bytes(VNET_HEADER_SIZE)
"""The header for a frame that needs nothing from the kernel (no GSO, checksums complete)."""

ETH_HEADER_SIZE = 14
ETH_P_IPV4 = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_ICMPV6 = 58
TCP_CSUM_OFFSET = 16
MIN_TCP_HEADERS = ETH_HEADER_SIZE + 20 + 20
MAX_SUPERFRAME_SIZE = ETH_HEADER_SIZE + 40 + 0xFFFF
"""Largest super-frame: its (and its runs') IP length fields are 16 bits. IPv4: 40 less."""


_TCP_FIN = 0x01
_TCP_PSH = 0x08
_TCP_CWR = 0x80
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_ICMPV4_ERRORS = frozenset({3, 4, 5, 11, 12})
# IPv6 extension headers we can step over to reach TCP: hop-by-hop and destination options.
# Routing headers would change the pseudo-header's destination; fragments cannot be GSO.
_IPV6_SKIPPABLE = frozenset({0, 60})


class VnetHeader(NamedTuple):
    """struct virtio_net_hdr (without num_buffers): what the kernel knows about a TAP frame.

    A NamedTuple: one is parsed per super-frame, and a tuple is made in a third of the time
    a frozen dataclass takes."""

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0


def parse_vnet(buf: bytes | bytearray | memoryview) -> VnetHeader:
    """The header at the start of ``buf`` (a TAP read or the header alone)."""
    if len(buf) < VNET_HEADER_SIZE:
        raise RemoteProtocolError(f"virtio-net header needs 10 bytes, got {len(buf)}")
    return VnetHeader._make(_VNET.unpack_from(buf))


def pack_vnet(h: VnetHeader) -> bytes:
    """The 10 wire bytes of ``h``; ``pack_vnet(parse_vnet(b)) == b`` for every 10 bytes ``b``."""
    return _VNET.pack(h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start, h.csum_offset)


def ones_complement_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The folded 16-bit ones' complement sum of ``data`` (zero-padded to even length).

    Adding 16-bit words with end-around carry is addition modulo 0xFFFF, so one big-int
    conversion and one remainder do it in C, fast even for a 64 KiB payload. ``initial`` is a
    folded sum to continue from.
    """
    total = int.from_bytes(data, "big")
    if len(data) & 1:
        total <<= 8
    total += initial
    folded = total % 0xFFFF
    # Ones' complement has two zeros; a sum of anything non-zero is never +0.
    return 0xFFFF if folded == 0 and total else folded


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The RFC 1071 checksum (the inverted sum) to store in a header."""
    return ~ones_complement_sum(data, initial) & 0xFFFF


def ipv4_header_checksum(header: bytes | bytearray | memoryview) -> int:
    """The checksum for an IPv4 header, ignoring whatever its checksum field holds now."""
    return internet_checksum(bytes(header[:10]) + bytes(header[12:]))


def _locate_tcp(frame: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """(IP version, offset of the TCP header, Ethernet+IP+TCP header length) of a TCP frame.

    Computed from the headers themselves: ``hdr_len`` in a virtio header is only a hint.
    """
    n = len(frame)
    if n < MIN_TCP_HEADERS:
        raise RemoteProtocolError(f"frame of {n} bytes is too short for TCP/IP headers")
    ethertype = frame[12] << 8 | frame[13]
    if ethertype == ETH_P_IPV4:
        first = frame[14]
        ihl = (first & 0x0F) * 4
        if first >> 4 != 4 or ihl < 20:
            raise RemoteProtocolError("malformed IPv4 header")
        if frame[23] != IPPROTO_TCP:
            raise RemoteProtocolError(f"IPv4 protocol {frame[23]} is not TCP")
        if frame[20] & 0x3F or frame[21]:
            raise RemoteProtocolError("an IPv4 fragment cannot be a TCP super-frame")
        version = 4
        tcp = ETH_HEADER_SIZE + ihl
    elif ethertype == ETH_P_IPV6:
        if frame[14] >> 4 != 6:
            raise RemoteProtocolError("malformed IPv6 header")
        next_header = frame[20]
        tcp = ETH_HEADER_SIZE + 40
        while next_header != IPPROTO_TCP:
            if next_header not in _IPV6_SKIPPABLE or n < tcp + 8:
                raise RemoteProtocolError(f"IPv6 next header {next_header} is not TCP")
            next_header, tcp = frame[tcp], tcp + (frame[tcp + 1] + 1) * 8
        version = 6
    else:
        raise RemoteProtocolError(f"ethertype {ethertype:#06x} is not IP (VLANs unsupported)")
    if n < tcp + 20:
        raise RemoteProtocolError("frame too short for its TCP header")
    data_offset = (frame[tcp + 12] >> 4) * 4
    end = tcp + data_offset
    if data_offset < 20 or n < end:
        raise RemoteProtocolError("malformed TCP data offset")
    return version, tcp, end


def tcp_header_length(frame: bytes | bytearray | memoryview) -> int:
    """Length of the Ethernet+IP+TCP headers at the start of ``frame``."""
    return _locate_tcp(frame)[2]


class SegmentPlan(NamedTuple):
    """How a super-frame is cut: the shared headers, then ``segments`` payloads of
    ``gso_size`` bytes (the last may be shorter)."""

    header_len: int
    gso_size: int
    segments: int
    max_size: int
    """The largest frame with these headers whose IP length field can say how long it is."""


def plan_tcp_segments(vnet: VnetHeader, frame: bytes | bytearray | memoryview) -> SegmentPlan:
    """Check that ``frame`` is a TCP GSO super-frame we can cut, and say how.

    The per-packet path uses this instead of :func:`segment_tcp` to skip building objects.
    """
    return plan_gso(vnet.gso_type, vnet.gso_size, frame)


def plan_gso(gso_type: int, size: int, frame: bytes | bytearray | memoryview) -> SegmentPlan:
    """:func:`plan_tcp_segments` from the header's two fields that matter (the packet loop
    reads them from the TAP buffer without parsing the whole header)."""
    gso = gso_type & ~GSO_ECN
    if gso != GSO_TCPV4 and gso != GSO_TCPV6:
        raise RemoteProtocolError(f"gso_type {gso_type:#x} is not TCP")
    version, _, header_len = _locate_tcp(frame)
    if (version == 4) != (gso == GSO_TCPV4):
        raise RemoteProtocolError(f"gso_type {gso_type:#x} does not match IPv{version}")
    payload = len(frame) - header_len
    if size == 0 or payload <= 0:
        raise RemoteProtocolError("TCP super-frame without gso_size or payload")
    max_size = MAX_SUPERFRAME_SIZE if version == 6 else MAX_SUPERFRAME_SIZE - 40
    if len(frame) > max_size:
        raise RemoteProtocolError(f"super-frame of {len(frame)} bytes is too large")
    return SegmentPlan(header_len, size, -(-payload // size), max_size)


@dataclass(frozen=True, slots=True)
class Segment:
    """One gso_size piece of a super-frame's TCP payload; ``headers`` is shared by all pieces."""

    index: int
    count: int
    headers: memoryview
    payload: memoryview


def segment_tcp(vnet: VnetHeader, frame: bytes | bytearray | memoryview) -> list[Segment]:
    """The pieces the kernel would have cut ``frame`` into; views into ``frame``, not copies."""
    header_len, size, count, _ = plan_tcp_segments(vnet, frame)
    view = memoryview(frame)
    headers = view[:header_len]
    return [
        Segment(i, count, headers, view[header_len + i * size : header_len + (i + 1) * size])
        for i in range(count)
    ]


def rebuild(
    vnet: VnetHeader,
    headers: bytes,
    first_index: int,
    payloads: Sequence[bytes | memoryview],
    last: bool,
    count: int,
) -> tuple[bytes, bytes]:
    """(virtio header, frame) for the contiguous run of segments ``first_index``.. of a
    super-frame whose other segments were lost.

    ``vnet`` and ``headers`` are the original super-frame's. The fields patched are those the
    kernel's GSO patches per segment: IP lengths, IPv4 id (+1 per segment) and header checksum,
    TCP sequence, FIN/PSH (last segment only) and CWR (first only). The TCP checksum is left
    partial for the kernel to finish. A run of one segment is an ordinary frame; a longer run
    stays a GSO super-frame the kernel segments exactly as it would have the original.
    """
    n = len(payloads)
    if n == 0 or first_index < 0 or first_index + n > count or last != (first_index + n == count):
        raise ValueError(f"run {first_index}+{n} of {count} (last={last}) is not a valid run")
    version, tcp, header_len = _locate_tcp(headers)
    if header_len != len(headers):
        raise RemoteProtocolError("super-frame headers do not end where TCP's header ends")
    payload_len = sum(map(len, payloads))
    if header_len + payload_len > MAX_SUPERFRAME_SIZE - (40 if version == 4 else 0):
        raise RemoteProtocolError(f"a run of {payload_len} bytes overflows the IP length")
    h = bytearray(headers)
    tcp_len = header_len - tcp + payload_len
    if version == 4:
        _U16.pack_into(h, 16, header_len - ETH_HEADER_SIZE + payload_len)
        _U16.pack_into(h, 18, (_U16.unpack_from(h, 18)[0] + first_index) & 0xFFFF)
        _U16.pack_into(h, 24, ipv4_header_checksum(h[ETH_HEADER_SIZE:tcp]))
        pseudo = ones_complement_sum(h[26:34], IPPROTO_TCP + tcp_len)
    else:
        _U16.pack_into(h, 18, header_len - ETH_HEADER_SIZE - 40 + payload_len)
        pseudo = ones_complement_sum(h[22:54], IPPROTO_TCP + tcp_len)
    seq = (_U32.unpack_from(h, tcp + 4)[0] + first_index * vnet.gso_size) & 0xFFFFFFFF
    _U32.pack_into(h, tcp + 4, seq)
    flags = h[tcp + 13]
    if not last:
        flags &= ~(_TCP_FIN | _TCP_PSH)
    if first_index:
        flags &= ~_TCP_CWR
    h[tcp + 13] = flags
    _U16.pack_into(h, tcp + TCP_CSUM_OFFSET, pseudo)
    if n > 1:
        out = _VNET.pack(
            VNET_F_NEEDS_CSUM, vnet.gso_type, header_len, vnet.gso_size, tcp, TCP_CSUM_OFFSET
        )
    else:
        out = _VNET.pack(VNET_F_NEEDS_CSUM, GSO_NONE, header_len, 0, tcp, TCP_CSUM_OFFSET)
    return out, b"".join((h, *payloads))


def _swapped_ethernet(frame: bytes | bytearray | memoryview, ethertype: bytes) -> bytes:
    return bytes(frame[6:12]) + bytes(frame[0:6]) + ethertype


def icmp_too_big(frame: bytes | bytearray | memoryview, mtu: int) -> bytes | None:
    """The Ethernet frame a router would send back for ``frame`` being larger than ``mtu``.

    ICMP "fragmentation needed" (IPv4 with DF) or ICMPv6 "packet too big": what lets the
    container's TCP lower its MSS instead of blackholing. None where RFC 1812/4443 forbid an
    error: IPv4 without DF or a non-first fragment, a frame to or from a multicast/broadcast or
    unspecified address, an ICMP error itself, or not IP at all. Write it with :data:`VNET_NONE`.
    """
    n = len(frame)
    if n < ETH_HEADER_SIZE + 20 or frame[0] & 1 or frame[6] & 1:
        return None
    ethertype = frame[12] << 8 | frame[13]
    if ethertype == ETH_P_IPV4:
        if not 0 <= mtu <= 0xFFFF:
            raise ValueError(f"IPv4 next-hop MTU out of range: {mtu}")
        return _icmp4_too_big(frame, mtu)
    if ethertype == ETH_P_IPV6:
        if not 0 <= mtu <= 0xFFFFFFFF:
            raise ValueError(f"IPv6 MTU out of range: {mtu}")
        return _icmp6_too_big(frame, mtu)
    return None


def _icmp4_too_big(frame: bytes | bytearray | memoryview, mtu: int) -> bytes | None:
    first = frame[14]
    ihl = (first & 0x0F) * 4
    if first >> 4 != 4 or ihl < 20 or len(frame) < ETH_HEADER_SIZE + ihl:
        return None
    if not frame[20] & 0x40 or frame[20] & 0x1F or frame[21]:
        return None  # no DF: the router fragments; a later fragment: only the first gets one
    src, dst = bytes(frame[26:30]), bytes(frame[30:34])
    if src[0] >= 224 or dst[0] >= 224 or src == bytes(4) or dst == bytes(4):
        return None
    payload = ETH_HEADER_SIZE + ihl
    if frame[23] == IPPROTO_ICMP and (len(frame) <= payload or frame[payload] in _ICMPV4_ERRORS):
        return None
    icmp = bytearray(b"\x03\x04\x00\x00\x00\x00")
    icmp += _U16.pack(mtu)
    icmp += frame[ETH_HEADER_SIZE : payload + 8]
    _U16.pack_into(icmp, 2, internet_checksum(icmp))
    ip = bytearray(
        struct.pack(
            ">BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(icmp), 0, 0, 64, IPPROTO_ICMP, 0, dst, src
        )
    )
    _U16.pack_into(ip, 10, internet_checksum(ip))
    return _swapped_ethernet(frame, b"\x08\x00") + ip + icmp


def _icmp6_too_big(frame: bytes | bytearray | memoryview, mtu: int) -> bytes | None:
    n = len(frame)
    if n < ETH_HEADER_SIZE + 40 or frame[14] >> 4 != 6:
        return None
    src, dst = bytes(frame[22:38]), bytes(frame[38:54])
    if src[0] == 0xFF or dst[0] == 0xFF or src == bytes(16) or dst == bytes(16):
        return None
    next_header = frame[20]
    pos = ETH_HEADER_SIZE + 40
    while next_header in (0, 43, 44, 60):  # hop-by-hop, routing, fragment, destination options
        if n < pos + 8:
            return None
        if next_header == 44:
            if (frame[pos + 2] << 8 | frame[pos + 3]) & 0xFFF8:
                break  # a later fragment: no upper-layer header to look at
            next_header, pos = frame[pos], pos + 8
        else:
            next_header, pos = frame[pos], pos + (frame[pos + 1] + 1) * 8
    if next_header == IPPROTO_ICMPV6 and (n <= pos or frame[pos] < 128):
        return None  # ICMPv6 types below 128 are errors
    declared = _U16.unpack_from(frame, 18)[0]
    ip_len = 40 + declared if declared else n - ETH_HEADER_SIZE
    quote_len = min(ip_len, n - ETH_HEADER_SIZE, IPV6_MIN_MTU - 40 - 8)
    icmp = bytearray(b"\x02\x00\x00\x00")
    icmp += _U32.pack(mtu)
    icmp += frame[ETH_HEADER_SIZE : ETH_HEADER_SIZE + quote_len]
    pseudo = dst + src + _U32.pack(len(icmp)) + b"\x00\x00\x00\x3a"
    _U16.pack_into(icmp, 2, internet_checksum(icmp, ones_complement_sum(pseudo)))
    ip = b"\x60\x00\x00\x00" + _U16.pack(len(icmp)) + b"\x3a\x40" + dst + src
    return _swapped_ethernet(frame, b"\x86\xdd") + ip + icmp
