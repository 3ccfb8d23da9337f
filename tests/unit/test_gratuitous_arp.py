"""The announcement a container sends when it is attached: a gratuitous ARP request."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

from hypothesis import given
from hypothesis import strategies as st

from meshnet.dataplane.kernel.attach import gratuitous_arp


@given(st.binary(min_size=6, max_size=6), st.integers(0, 2**32 - 1))
def test_a_broadcast_arp_request_whose_sender_and_target_are_the_address(
    mac: bytes, ip: int
) -> None:
    frame = gratuitous_arp(mac.hex(":"), IPv4Address(ip))
    assert len(frame) == 60  # the Ethernet minimum, padded
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == mac and frame[12:14] == b"\x08\x06"
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", frame, 14)
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)
    assert frame[22:28] == mac and frame[28:32] == IPv4Address(ip).packed
    assert frame[32:38] == bytes(6) and frame[38:42] == IPv4Address(ip).packed
