"""Underlay addresses of both families, as the sleeve's one dual-stack UDP socket spells them.

The sleeve listens on one AF_INET6 socket with IPV6_V6ONLY off, so one receive thread and one
GSO/GRO path serve IPv4 and IPv6 neighbours alike (UDP_SEGMENT and UDP_GRO work on it for both:
measured on this kernel). That socket sees an IPv4 peer as ``::ffff:a.b.c.d`` and must be given
IPv4 destinations that way too, while the control plane, status and punch candidates use plain
addresses. These pure functions translate at the socket's edge; nothing else needs to know.
"""

from __future__ import annotations

import functools
import ipaddress
import socket

MAPPED_PREFIX = "::ffff:"
IPV4_UDP_HEADERS = 28  # IPv4 (no options) + UDP
IPV6_UDP_HEADERS = 48  # IPv6 (no extension headers) + UDP


@functools.lru_cache(maxsize=1024)  # every heartbeat's sender and every send ask: a few addresses
def plain_ip(text: str) -> str:
    """``text`` as the control plane spells it: an IPv4-mapped address becomes IPv4, an IPv6
    one is compressed (``fd00:0::2`` -> ``fd00::2``; a link-local one keeps its ``%scope``,
    without which it cannot be sent to); anything unparsable is returned as is."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def socket_ip(family: int, text: str) -> str:
    """``text`` (plain) as a socket of ``family`` must be given it: IPv4 mapped on a dual-stack
    AF_INET6 socket, spelled as the kernel reports senders (``::ffff:10.0.0.1``, which
    Python's ``ipaddress`` would print as ``::ffff:a00:1``)."""
    plain = plain_ip(text)
    if family == socket.AF_INET6 and ":" not in plain:
        return MAPPED_PREFIX + plain
    return plain


def version(text: str) -> int:
    """4 or 6 for an underlay address (plain or mapped); 4 for what does not parse."""
    return 6 if ":" in plain_ip(text) else 4


def udp_headers(text: str) -> int:
    """Bytes the underlay's IP and UDP headers take on the way to ``text``."""
    return IPV6_UDP_HEADERS if version(text) == 6 else IPV4_UDP_HEADERS


def endpoint_text(ip: str, port: int) -> str:
    """``10.0.0.2:6783`` or ``[fd00::2]:6783``, as status and targets show endpoints."""
    plain = plain_ip(ip)
    return f"[{plain}]:{port}" if ":" in plain else f"{plain}:{port}"
