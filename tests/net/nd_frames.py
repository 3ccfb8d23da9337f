"""Hand-built Ethernet frames carrying ICMPv6 Neighbor Discovery, for attack tests (no scapy).

The builders are pure; run as a script inside a container's namespace, the module sends the
frames given as hex on its command line out of an interface through a raw AF_PACKET socket:
``nd_frames.py IFNAME HEX...``. Every ICMPv6 message carries a correct checksum and hop limit
255, so that without the bridge's rules the receiving kernel would take it (RFC 4861 6.1.2,
7.1.2: hop limit 255, valid checksum; a Router Advertisement's source must be link-local).
"""

from __future__ import annotations

import socket
import struct
import sys
from ipaddress import IPv6Address

ETH_P_IPV6 = 0x86DD
NEXT_HEADER_ICMPV6 = 58
ROUTER_ADVERTISEMENT = 134
NEIGHBOR_SOLICITATION = 135
NEIGHBOR_ADVERTISEMENT = 136
OPTION_SOURCE_LLADDR = 1
OPTION_TARGET_LLADDR = 2
OPTION_PREFIX_INFORMATION = 3
ALL_NODES = IPv6Address("ff02::1")


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def multicast_mac(address: IPv6Address) -> str:
    """The Ethernet address an IPv6 multicast group maps to (33:33 + its last 32 bits)."""
    return "33:33:" + ":".join(f"{b:02x}" for b in address.packed[-4:])


def solicited_node(address: IPv6Address) -> IPv6Address:
    return IPv6Address(IPv6Address("ff02::1:ff00:0").packed[:13] + address.packed[13:])


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmpv6(source: IPv6Address, destination: IPv6Address, kind: int, body: bytes) -> bytes:
    """An ICMPv6 message (code 0) with its checksum over the IPv6 pseudo-header (RFC 8200 8.1)."""
    message = struct.pack("!BBH", kind, 0, 0) + body
    pseudo = source.packed + destination.packed
    pseudo += struct.pack("!IxxxB", len(message), NEXT_HEADER_ICMPV6)
    return message[:2] + struct.pack("!H", checksum(pseudo + message)) + message[4:]


def frame(
    source_mac: str,
    destination_mac: str,
    source: IPv6Address,
    destination: IPv6Address,
    kind: int,
    body: bytes,
) -> bytes:
    """Ethernet + IPv6 (hop limit 255) + ICMPv6."""
    message = icmpv6(source, destination, kind, body)
    ip = struct.pack("!IHBB", 6 << 28, len(message), NEXT_HEADER_ICMPV6, 255)
    ip += source.packed + destination.packed
    ethernet = mac_bytes(destination_mac) + mac_bytes(source_mac) + struct.pack("!H", ETH_P_IPV6)
    return ethernet + ip + message


def lladdr_option(kind: int, mac: str) -> bytes:
    return struct.pack("!BB", kind, 1) + mac_bytes(mac)


def router_advertisement(
    mac: str, link_local: IPv6Address, prefix: str, *, lifetime: int = 1800
) -> bytes:
    """To all nodes: "I am a default router, and ``prefix`` (a /64) is on-link and
    autoconfigurable"."""
    network, length = prefix.split("/")
    body = struct.pack("!BBHII", 64, 0, lifetime, 0, 0)  # hop limit, flags, lifetime, timers
    on_link_autonomous = 0xC0
    body += struct.pack(
        "!BBBBIII", OPTION_PREFIX_INFORMATION, 4, int(length), on_link_autonomous, 86400, 14400, 0
    )
    body += IPv6Address(network).packed
    body += lladdr_option(OPTION_SOURCE_LLADDR, mac)
    return frame(mac, multicast_mac(ALL_NODES), link_local, ALL_NODES, ROUTER_ADVERTISEMENT, body)


def neighbor_advertisement(
    mac: str,
    source: IPv6Address,
    destination: IPv6Address,
    destination_mac: str,
    target: IPv6Address,
    *,
    lladdr: str | None = None,
) -> bytes:
    """ "``target`` is at ``lladdr`` (default: the sender's MAC)", with the override flag, so
    that a receiver replaces the entry it has (and solicited, unless sent to a group: the
    kernel ignores a solicited one there)."""
    flags = 0x20000000 if destination.is_multicast else 0x60000000  # O, S (RFC 4861 4.4)
    body = struct.pack("!I", flags) + target.packed
    body += lladdr_option(OPTION_TARGET_LLADDR, lladdr or mac)
    return frame(mac, destination_mac, source, destination, NEIGHBOR_ADVERTISEMENT, body)


def neighbor_solicitation(
    mac: str, source: IPv6Address, target: IPv6Address, *, lladdr: str | None = None
) -> bytes:
    """Who has ``target``? Tell ``source`` at ``lladdr`` (default: the sender's MAC)."""
    group = solicited_node(target)
    body = b"\0\0\0\0" + target.packed + lladdr_option(OPTION_SOURCE_LLADDR, lladdr or mac)
    return frame(mac, multicast_mac(group), source, group, NEIGHBOR_SOLICITATION, body)


def send(ifname: str, frames: list[bytes]) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
        raw.bind((ifname, 0))
        for data in frames:
            raw.send(data)


if __name__ == "__main__":
    send(sys.argv[1], [bytes.fromhex(h) for h in sys.argv[2:]])
