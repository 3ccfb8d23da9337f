"""Underlay addresses of both families at the dual-stack socket's edge (pure)."""

from __future__ import annotations

import ipaddress
import socket

from hypothesis import given
from hypothesis import strategies as st

from meshnet.dataplane import underlay


def test_mapped_ipv4_is_plain_ipv4_and_ipv6_is_compressed() -> None:
    assert underlay.plain_ip("::ffff:10.0.0.1") == "10.0.0.1"
    assert underlay.plain_ip("::FFFF:a00:1") == "10.0.0.1"
    assert underlay.plain_ip("fd00:0:0::2") == "fd00::2"
    assert underlay.plain_ip("fe80::1%to-h2") == "fe80::1%to-h2"
    assert underlay.socket_ip(socket.AF_INET6, "fe80::1%to-h2") == "fe80::1%to-h2"
    assert underlay.plain_ip("172.31.0.1") == "172.31.0.1"
    assert underlay.plain_ip("not an address") == "not an address"


def test_the_dual_stack_socket_is_given_ipv4_mapped_as_the_kernel_spells_it() -> None:
    assert underlay.socket_ip(socket.AF_INET6, "10.0.0.1") == "::ffff:10.0.0.1"
    assert underlay.socket_ip(socket.AF_INET6, "fd00::2") == "fd00::2"
    assert underlay.socket_ip(socket.AF_INET, "10.0.0.1") == "10.0.0.1"
    assert underlay.socket_ip(socket.AF_INET6, "::ffff:10.0.0.1") == "::ffff:10.0.0.1"


def test_headers_and_endpoints_per_family() -> None:
    assert underlay.udp_headers("10.0.0.1") == 28
    assert underlay.udp_headers("::ffff:10.0.0.1") == 28
    assert underlay.udp_headers("fd00::2") == 48
    assert underlay.endpoint_text("fd00::2", 6783) == "[fd00::2]:6783"
    assert underlay.endpoint_text("::ffff:10.0.0.1", 6783) == "10.0.0.1:6783"


@given(st.ip_addresses())
def test_socket_and_plain_spellings_round_trip(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    plain = underlay.plain_ip(str(ip))
    on_the_socket = underlay.socket_ip(socket.AF_INET6, plain)
    assert underlay.plain_ip(on_the_socket) == plain
    assert ipaddress.ip_address(on_the_socket)  # something the kernel takes
    assert underlay.version(on_the_socket) == underlay.version(plain)
    if ip.version == 4:
        # As recvfrom reports an IPv4 sender on a dual-stack socket (inet_ntop's spelling).
        assert on_the_socket == "::ffff:" + str(ip)
