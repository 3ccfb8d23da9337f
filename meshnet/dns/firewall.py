"""The nftables table that keeps the DNS address for the overlay's DNS queries and nothing else.

The server's addresses (one per family) live on the bridge, which gives the host a foot in the
overlay. The table (``inet meshnet_dns``, in the daemon's namespace) closes that door again:

* from the bridge, only TCP and UDP port 53 to a DNS address reach the host (and IPv6 Neighbor
  Discovery, without which IPv6 on the bridge does not work);
* everything else arriving from the bridge for the host is dropped (ARP is not IP: unaffected);
* the DNS addresses are unreachable from every other interface, so the server is never an open
  resolver on the underlay, even for a neighbour that routes the overlay range towards us.

An address the host exposes on the overlay (``meshnet expose``, see meshnet.node.ramps) is
opened on purpose: ``open_addresses`` are accepted from the bridge before the drop.

Only the input hook is filtered: frames bridged between containers never reach it. The table is
installed before the address is added and removed after it is gone, so there is no moment when
the address answers unfiltered; a daemon killed hard leaves the table (failing closed).

``ruleset`` is pure; ``install`` and ``remove`` apply it with ``nft -f -`` (atomically) through
``meshnet.dataplane.kernel.nft``, as meshnet's other tables and the lab do.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from meshnet.dataplane.kernel.nft import run_nft

TABLE = "meshnet_dns"


def ruleset(
    bridge: str,
    addresses: Sequence[str],
    port: int = 53,
    table: str = TABLE,
    open_addresses: Sequence[str] = (),
    also: Sequence[str] = (),
) -> str:
    """An nft script that (re)creates the table atomically: any old version goes first.

    ``addresses``: where the server listens, IPv4 and IPv6 alike (``ip``/``ip6 daddr`` in the
    one ``inet`` table). Neighbor Discovery from the bridge passes too: unlike ARP it is IP
    (ICMPv6), and without it neither side finds the other's MAC address for an IPv6 DNS (or
    exposed) address. Only with hop limit 255, which no router can forward (RFC 4861 §7.1).
    """
    if isinstance(addresses, str):
        raise TypeError("addresses: a sequence of addresses, not one string")
    ips = sorted({ipaddress.ip_address(a) for a in addresses}, key=lambda ip: (ip.version, ip))
    if not ips:
        raise ValueError("no DNS address to filter for")
    opened = "".join(
        f'    iifname "{bridge}" {_family(o)} daddr {o} accept\n'
        for o in sorted({ipaddress.ip_address(a) for a in open_addresses}, key=str)
    )
    accepted = "".join(
        f'    iifname "{bridge}" {_family(ip)} daddr {ip} {proto} dport {port} accept\n'
        for ip in ips
        for proto in ("udp", "tcp")
    )
    accepted += (
        f'    iifname "{bridge}" ip6 hoplimit 255 icmpv6 type '
        "{ nd-neighbor-solicit, nd-neighbor-advert } accept\n"
    )
    closed = "".join(f"    {_family(ip)} daddr {ip} counter drop\n" for ip in ips)
    return (
        f"table inet {table} {{}}\n"
        f"delete table inet {table}\n"
        f"table inet {table} {{\n"
        "  chain input {\n"
        "    type filter hook input priority filter - 10; policy accept;\n"
        f"{accepted}"
        f"{opened}"
        f'    iifname "{bridge}" counter drop\n'
        f"{closed}"
        "  }\n"
        "}\n"
    )


def _family(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return "ip" if ip.version == 4 else "ip6"


def removal(table: str = TABLE) -> str:
    """An nft script that removes the table, whether or not it exists."""
    return f"table inet {table} {{}}\ndelete table inet {table}\n"


def _apply(script: str) -> None:
    run_nft("-f", "-", script=script, needed_by="the DNS server")


def install(
    bridge: str,
    addresses: Sequence[str],
    port: int = 53,
    table: str = TABLE,
    open_addresses: Sequence[str] = (),
    also: Sequence[str] = (),
) -> None:
    _apply(ruleset(bridge, addresses, port, table, open_addresses))


def remove(table: str = TABLE) -> None:
    _apply(removal(table))
