"""virtio-net headers, TCP super-frame segmentation and rebuilding, ICMP too-big replies.

Packets are built by hand here, and checked against a small reference of what the kernel's GSO
puts on the wire (``wire_packets``), written independently of the code under test.
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.dataplane.sleeve import vnet as vn
from meshnet.errors import RemoteProtocolError

MAC_A = bytes.fromhex("02aabbccdd01")
MAC_B = bytes.fromhex("02aabbccdd02")
IP4_A, IP4_B = bytes([10, 32, 0, 1]), bytes([10, 32, 0, 2])
IP6_A = bytes.fromhex("fd00000000000000000000000000000a")
IP6_B = bytes.fromhex("fd00000000000000000000000000000b")
FIN, PSH, ACK, ECE, CWR = 0x01, 0x08, 0x10, 0x40, 0x80


def csum_sum(data: bytes) -> int:
    """Folded ones' complement sum, the slow obvious way (independent of the code under test)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo_header(version: int, ip: bytes, length: int, proto: int) -> bytes:
    if version == 4:
        return ip[12:20] + struct.pack(">BBH", 0, proto, length)
    return ip[8:40] + struct.pack(">IxxxB", length, proto)


@dataclass(frozen=True)
class Layout:
    version: int
    tcp: int  # offset of the TCP header in the frame
    header_len: int


def build_superframe(
    version: int,
    payload: bytes,
    gso_size: int,
    *,
    ip_options: bytes = b"",
    tcp_options: bytes = b"",
    hop_by_hop: bool = False,
    tcp_flags: int = ACK | PSH,
    seq: int = 1000,
    ident: int = 7,
) -> tuple[vn.VnetHeader, bytes, Layout]:
    """A TCP super-frame as the TAP hands it over: lengths for the whole, partial checksum."""
    assert len(ip_options) % 4 == 0 and len(tcp_options) % 4 == 0
    tcp = struct.pack(
        ">HHIIBBHHH", 40000, 5201, seq, 77, (5 + len(tcp_options) // 4) << 4, tcp_flags, 500, 0, 0
    )
    tcp += tcp_options
    eth = MAC_B + MAC_A + (b"\x08\x00" if version == 4 else b"\x86\xdd")
    if version == 4:
        ihl = 5 + len(ip_options) // 4
        ip = bytearray(
            struct.pack(
                ">BBHHHBBH4s4s",
                0x40 | ihl,
                0,
                ihl * 4 + len(tcp) + len(payload),
                ident,
                0x4000,
                64,
                6,
                0,
                IP4_A,
                IP4_B,
            )
            + ip_options
        )
        struct.pack_into(">H", ip, 10, ~csum_sum(bytes(ip)) & 0xFFFF)
        ext = b""
        gso = vn.GSO_TCPV4
    else:
        ext = b"\x06\x00" + bytes([1, 4, 0, 0, 0, 0]) if hop_by_hop else b""  # PadN option
        ip = bytearray(
            struct.pack(
                ">IHBB16s16s",
                0x60000000,
                len(ext) + len(tcp) + len(payload),
                0 if hop_by_hop else 6,
                64,
                IP6_A,
                IP6_B,
            )
        )
        gso = vn.GSO_TCPV6
    ip_bytes = bytes(ip) + ext
    tcp_len = len(tcp) + len(payload)
    partial = csum_sum(pseudo_header(version, bytes(ip), tcp_len, 6))
    tcp = tcp[:16] + struct.pack(">H", partial) + tcp[18:]
    frame = eth + ip_bytes + tcp + payload
    tcp_off = 14 + len(ip_bytes)
    header_len = tcp_off + len(tcp)
    if tcp_flags & CWR:
        gso |= vn.GSO_ECN
    v = vn.VnetHeader(vn.VNET_F_NEEDS_CSUM, gso, header_len, gso_size, tcp_off, 16)
    return v, frame, Layout(version, tcp_off, header_len)


def finish_checksum(frame: bytes, csum_start: int, csum_offset: int) -> bytes:
    """What the kernel (or a NIC) does with CHECKSUM_PARTIAL: sum from csum_start, invert."""
    out = bytearray(frame)
    value = ~csum_sum(bytes(out[csum_start:])) & 0xFFFF
    struct.pack_into(">H", out, csum_start + csum_offset, value)
    return bytes(out)


def tcp_checksum_ok(frame: bytes, layout: Layout) -> bool:
    ip = frame[14 : 14 + (40 if layout.version == 6 else (frame[14] & 15) * 4)]
    segment = frame[layout.tcp :]
    return csum_sum(pseudo_header(layout.version, ip, len(segment), 6) + segment) == 0xFFFF


def ipv4_checksum_ok(frame: bytes) -> bool:
    return csum_sum(frame[14 : 14 + (frame[14] & 15) * 4]) == 0xFFFF


def wire_packets(vnet_raw: bytes, frame: bytes, layout: Layout) -> list[bytes]:
    """The packets the kernel sends for a (virtio header, frame) written to a TAP.

    A reference model of Linux's tcp_gso_segment/inet_gso_segment: fresh lengths, IPv4 id +1
    per segment, sequence + mss, FIN/PSH on the last only, CWR on the first only, checksums
    computed from scratch.
    """
    flags, gso_type, _, gso_size, csum_start, csum_offset = struct.unpack("<BBHHHH", vnet_raw)
    if gso_type == vn.GSO_NONE:
        return [finish_checksum(frame, csum_start, csum_offset) if flags & 1 else frame]
    headers, payload = frame[: layout.header_len], frame[layout.header_len :]
    chunks = [payload[i : i + gso_size] for i in range(0, len(payload), gso_size)]
    out = []
    t = layout.tcp
    for i, chunk in enumerate(chunks):
        h = bytearray(headers)
        if layout.version == 4:
            struct.pack_into(">H", h, 16, len(h) - 14 + len(chunk))
            (ident,) = struct.unpack_from(">H", h, 18)
            struct.pack_into(">H", h, 18, (ident + i) & 0xFFFF)
            struct.pack_into(">H", h, 24, 0)
            ihl = (h[14] & 15) * 4
            struct.pack_into(">H", h, 24, ~csum_sum(bytes(h[14 : 14 + ihl])) & 0xFFFF)
        else:
            struct.pack_into(">H", h, 18, len(h) - 54 + len(chunk))
        (seq,) = struct.unpack_from(">I", h, t + 4)
        struct.pack_into(">I", h, t + 4, (seq + i * gso_size) & 0xFFFFFFFF)
        if i != len(chunks) - 1:
            h[t + 13] &= ~(FIN | PSH)
        if i:
            h[t + 13] &= ~CWR
        struct.pack_into(">H", h, t + 16, 0)
        packet = bytes(h) + chunk
        ip = packet[14 : 14 + (40 if layout.version == 6 else (packet[14] & 15) * 4)]
        segment = packet[t:]
        value = ~csum_sum(pseudo_header(layout.version, ip, len(segment), 6) + segment) & 0xFFFF
        out.append(packet[: t + 16] + struct.pack(">H", value) + packet[t + 18 :])
    return out


options4 = st.sampled_from([b"", b"\x01\x01\x01\x00", bytes([0x94, 4, 0, 0]) + b"\x01" * 4])
tcp_options = st.sampled_from([b"", bytes([2, 4, 5, 0xB4]), b"\x01\x01\x08\x0a" + bytes(8)])


@st.composite
def superframes(draw: st.DrawFn, max_segments: int = 40) -> tuple[vn.VnetHeader, bytes, Layout]:
    version = draw(st.sampled_from([4, 6]))
    gso_size = draw(st.integers(64, 1448))
    length = draw(st.integers(1, gso_size * max_segments))
    payload = draw(st.binary(min_size=length, max_size=length))
    return build_superframe(
        version,
        payload,
        gso_size,
        ip_options=draw(options4) if version == 4 else b"",
        hop_by_hop=version == 6 and draw(st.booleans()),
        tcp_options=draw(tcp_options),
        tcp_flags=draw(st.sampled_from([ACK, ACK | PSH, ACK | FIN | PSH, ACK | CWR | ECE | PSH])),
        seq=draw(st.sampled_from([0, 1000, 0xFFFFFFFF - 3000])),
        ident=draw(st.sampled_from([0, 7, 0xFFFF])),
    )


# --- virtio-net header -------------------------------------------------------------------------


@given(st.binary(min_size=10, max_size=10))
def test_vnet_pack_inverts_parse(raw: bytes) -> None:
    assert vn.pack_vnet(vn.parse_vnet(raw)) == raw


def test_vnet_is_little_endian() -> None:
    h = vn.parse_vnet(bytes([1, 4, 0x36, 0x00, 0xA8, 0x05, 0x36, 0, 0x10, 0]))
    assert h == vn.VnetHeader(1, vn.GSO_TCPV6, 0x36, 1448, 0x36, 16)


def test_vnet_short_is_remote_error() -> None:
    with pytest.raises(RemoteProtocolError):
        vn.parse_vnet(bytes(9))


@given(st.binary(max_size=300), st.integers(0, 0xFFFF))
def test_ones_complement_sum_matches_reference(data: bytes, initial: int) -> None:
    padded = data + b"\0" * (len(data) % 2)
    assert vn.ones_complement_sum(data, initial) == csum_sum(padded + struct.pack(">H", initial))


# --- segmentation ------------------------------------------------------------------------------


@given(superframes())
def test_segment_tcp_cuts_at_gso_size(sf: tuple[vn.VnetHeader, bytes, Layout]) -> None:
    v, frame, layout = sf
    segments = vn.segment_tcp(v, frame)
    payload = frame[layout.header_len :]
    assert len(segments) == -(-len(payload) // v.gso_size)
    assert b"".join(bytes(s.payload) for s in segments) == payload
    for i, s in enumerate(segments):
        assert (s.index, s.count) == (i, len(segments))
        assert bytes(s.headers) == frame[: layout.header_len]
        assert len(s.payload) == v.gso_size or i == len(segments) - 1
    assert vn.tcp_header_length(frame) == layout.header_len


def test_segment_tcp_ignores_hdr_len_hint() -> None:
    v, frame, layout = build_superframe(4, os.urandom(5000), 1000, tcp_options=bytes(12))
    lying = vn.VnetHeader(v.flags, v.gso_type, 20, v.gso_size, v.csum_start, v.csum_offset)
    assert bytes(vn.segment_tcp(lying, frame)[0].headers) == frame[: layout.header_len]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda f: f[:12] + b"\x81\x00" + f[14:],  # VLAN
        lambda f: f[:23] + b"\x11" + f[24:],  # UDP
        lambda f: f[:20] + b"\x20\x00" + f[22:],  # MF: a fragment
        lambda f: f[:14] + b"\x44" + f[15:],  # IHL 4
        lambda f: f[:30],  # truncated
    ],
)
def test_segment_tcp_refuses_what_it_cannot_cut(mutate: object) -> None:
    v, frame, _ = build_superframe(4, os.urandom(3000), 1000)
    with pytest.raises(RemoteProtocolError):
        vn.segment_tcp(v, mutate(frame))  # type: ignore[operator]


def test_segment_tcp_refuses_wrong_gso_type() -> None:
    _, frame, _ = build_superframe(6, os.urandom(3000), 1000)
    for gso_type, size in [(vn.GSO_TCPV4, 1000), (vn.GSO_NONE, 1000), (vn.GSO_TCPV6, 0)]:
        with pytest.raises(RemoteProtocolError):
            vn.segment_tcp(vn.VnetHeader(1, gso_type, 0, size, 54, 16), frame)


@given(st.binary(max_size=200), st.integers(0, 255), st.integers(0, 2000))
def test_segment_tcp_garbage_is_remote_error(frame: bytes, gso: int, size: int) -> None:
    with contextlib.suppress(RemoteProtocolError):
        vn.segment_tcp(vn.VnetHeader(1, gso, 0, size, 0, 0), frame)


# --- rebuilding runs ---------------------------------------------------------------------------


def check_rebuilt(vnet_raw: bytes, frame: bytes, layout: Layout) -> None:
    """Everything a rebuilt run must satisfy on its own."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack("<BBHHHH", vnet_raw)
    assert flags == vn.VNET_F_NEEDS_CSUM
    assert (csum_start, csum_offset) == (layout.tcp, 16)
    assert hdr_len == layout.header_len
    ip = frame[14 : 14 + (40 if layout.version == 6 else (frame[14] & 15) * 4)]
    if layout.version == 4:
        assert ipv4_checksum_ok(frame)
        assert struct.unpack_from(">H", frame, 16)[0] == len(frame) - 14
    else:
        assert struct.unpack_from(">H", frame, 18)[0] == len(frame) - 54
    # CHECKSUM_PARTIAL: the field holds the folded, uninverted pseudo-header sum...
    tcp_len = len(frame) - layout.tcp
    partial = struct.unpack_from(">H", frame, layout.tcp + 16)[0]
    assert partial == csum_sum(pseudo_header(layout.version, ip, tcp_len, 6))
    # ...and finishing it over the segment gives a checksum that verifies.
    assert tcp_checksum_ok(finish_checksum(frame, csum_start, csum_offset), layout)
    if gso_type == vn.GSO_NONE:
        assert gso_size == 0
    else:
        assert len(frame) - layout.header_len > gso_size


@settings(max_examples=150)
@given(superframes(), st.data())
def test_rebuilt_runs_are_what_the_kernel_would_have_sent(
    sf: tuple[vn.VnetHeader, bytes, Layout], data: st.DataObject
) -> None:
    v, frame, layout = sf
    segments = vn.segment_tcp(v, frame)
    count = len(segments)
    first = data.draw(st.integers(0, count - 1))
    end = data.draw(st.integers(first + 1, count))
    vnet_raw, rebuilt = vn.rebuild(
        v,
        frame[: layout.header_len],
        first,
        [s.payload for s in segments[first:end]],
        end == count,
        count,
    )
    check_rebuilt(vnet_raw, rebuilt, layout)
    expected = wire_packets(vn.pack_vnet(v), frame, layout)[first:end]
    assert wire_packets(vnet_raw, rebuilt, layout) == expected


def test_rebuild_single_segment_is_a_plain_frame() -> None:
    v, frame, layout = build_superframe(4, os.urandom(4000), 1000, tcp_flags=ACK | FIN | PSH)
    segments = vn.segment_tcp(v, frame)
    vnet_raw, rebuilt = vn.rebuild(v, frame[: layout.header_len], 3, [segments[3].payload], True, 4)
    h = vn.parse_vnet(vnet_raw)
    assert (h.gso_type, h.gso_size) == (vn.GSO_NONE, 0)
    assert rebuilt[layout.tcp + 13] == ACK | FIN | PSH
    (seq,) = struct.unpack_from(">I", rebuilt, layout.tcp + 4)
    assert seq == 1000 + 3000
    assert struct.unpack_from(">H", rebuilt, 18)[0] == 7 + 3


def test_rebuild_middle_run_drops_fin_psh_and_cwr() -> None:
    flags = ACK | FIN | PSH | CWR | ECE
    v, frame, layout = build_superframe(6, os.urandom(5000), 1000, tcp_flags=flags)
    segments = vn.segment_tcp(v, frame)
    vnet_raw, rebuilt = vn.rebuild(
        v, frame[: layout.header_len], 1, [s.payload for s in segments[1:3]], False, 5
    )
    assert rebuilt[layout.tcp + 13] == ACK | ECE
    assert vn.parse_vnet(vnet_raw).gso_type == vn.GSO_TCPV6 | vn.GSO_ECN


def test_rebuild_rejects_impossible_runs() -> None:
    v, frame, layout = build_superframe(4, os.urandom(3000), 1000)
    headers = frame[: layout.header_len]
    for first, n, last in [(0, 0, False), (2, 2, True), (0, 2, True), (1, 2, False)]:
        with pytest.raises(ValueError):
            vn.rebuild(v, headers, first, [b"x" * 1000] * n, last, 3)
    with pytest.raises(RemoteProtocolError):
        vn.rebuild(v, headers + b"extra", 0, [b"x"], False, 3)


# --- ICMP too big ------------------------------------------------------------------------------


def plain_packet(version: int, proto: int, payload: bytes, *, df: bool = True) -> bytes:
    eth = MAC_B + MAC_A + (b"\x08\x00" if version == 4 else b"\x86\xdd")
    if version == 4:
        ip = bytearray(
            struct.pack(
                ">BBHHHBBH4s4s",
                0x45,
                0,
                20 + len(payload),
                99,
                0x4000 if df else 0,
                64,
                proto,
                0,
                IP4_A,
                IP4_B,
            )
        )
        struct.pack_into(">H", ip, 10, ~csum_sum(bytes(ip)) & 0xFFFF)
        return eth + bytes(ip) + payload
    ip6 = struct.pack(">IHBB16s16s", 0x60000000, len(payload), proto, 64, IP6_A, IP6_B)
    return eth + ip6 + payload


def test_icmp4_too_big() -> None:
    original = plain_packet(4, 6, os.urandom(1480))
    reply = vn.icmp_too_big(original, 1400)
    assert reply is not None
    assert reply[:12] == MAC_A + MAC_B and reply[12:14] == b"\x08\x00"
    assert ipv4_checksum_ok(reply)
    assert reply[23] == 1  # ICMP
    assert reply[26:30] == IP4_B and reply[30:34] == IP4_A
    assert struct.unpack_from(">H", reply, 16)[0] == len(reply) - 14
    icmp = reply[34:]
    assert csum_sum(icmp) == 0xFFFF
    assert icmp[:2] == b"\x03\x04"
    assert struct.unpack_from(">HH", icmp, 4) == (0, 1400)
    assert icmp[8:] == original[14 : 14 + 20 + 8]


def test_icmp4_too_big_for_an_echo_request_but_not_an_icmp_error() -> None:
    assert vn.icmp_too_big(plain_packet(4, 1, b"\x08\x00" + bytes(1500)), 1400) is not None
    assert vn.icmp_too_big(plain_packet(4, 1, b"\x03\x04" + bytes(1500)), 1400) is None
    assert vn.icmp_too_big(plain_packet(4, 1, b"\x0b\x00" + bytes(1500)), 1400) is None


def test_icmp4_too_big_needs_df() -> None:
    assert vn.icmp_too_big(plain_packet(4, 6, bytes(1500), df=False), 1400) is None


def test_icmp_too_big_ignores_non_ip_and_multicast() -> None:
    arp = MAC_B + MAC_A + b"\x08\x06" + bytes(28)
    assert vn.icmp_too_big(arp, 1400) is None
    multicast = b"\x01\x00\x5e\x00\x00\x01" + plain_packet(4, 6, bytes(1500))[6:]
    assert vn.icmp_too_big(multicast, 1400) is None
    assert vn.icmp_too_big(b"\x00" * 10, 1400) is None


@pytest.mark.parametrize("size", [100, 1500, 9000])
def test_icmp6_packet_too_big(size: int) -> None:
    original = plain_packet(6, 17, os.urandom(size))
    reply = vn.icmp_too_big(original, 1280)
    assert reply is not None
    assert reply[:12] == MAC_A + MAC_B and reply[12:14] == b"\x86\xdd"
    assert len(reply) - 14 <= 1280
    ip = reply[14:54]
    assert ip[6] == 58 and ip[8:24] == IP6_B and ip[24:40] == IP6_A
    icmp = reply[54:]
    assert struct.unpack_from(">H", ip, 4)[0] == len(icmp)
    assert csum_sum(pseudo_header(6, ip, len(icmp), 58) + icmp) == 0xFFFF
    assert icmp[:2] == b"\x02\x00"
    assert struct.unpack_from(">I", icmp, 4)[0] == 1280
    quoted = icmp[8:]
    assert quoted == original[14 : 14 + len(quoted)]
    assert len(quoted) == min(size + 40, 1280 - 48)


def test_icmp6_too_big_not_for_icmp6_errors() -> None:
    assert vn.icmp_too_big(plain_packet(6, 58, b"\x01\x00" + bytes(1500)), 1280) is None
    assert vn.icmp_too_big(plain_packet(6, 58, b"\x80\x00" + bytes(1500)), 1280) is not None


@given(st.binary(max_size=200), st.integers(0, 0xFFFF))
def test_icmp_too_big_never_raises_on_garbage(frame: bytes, mtu: int) -> None:
    vn.icmp_too_big(frame, mtu)
