"""The nftables table that keeps the DNS address for the overlay's DNS queries and nothing else.

The server's address lives on the bridge, which gives the host a foot in the overlay. The table
(``inet meshnet_dns``, in the daemon's namespace) closes that door again:

* from the bridge, only TCP and UDP port 53 to the DNS address reach the host;
* everything else arriving from the bridge for the host is dropped (ARP is not IP: unaffected);
* the DNS address is unreachable from every other interface, so the server is never an open
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
    address: str,
    port: int = 53,
    table: str = TABLE,
    open_addresses: Sequence[str] = (),
    also: Sequence[str] = (),
) -> str:
    """An nft script that (re)creates the table atomically: any old version goes first.

    ``also``: more addresses the server listens on (its IPv6 one). With an IPv6 address,
    Neighbor Solicitations and Advertisements from the bridge reach the host too: without them
    no container could resolve the address to the bridge's MAC.
    """
    listens = [ipaddress.ip_address(a) for a in (address, *also)]
    serve = "".join(
        f'    iifname "{bridge}" {_family(ip)} daddr {ip} {proto} dport {port} accept\n'
        for ip in listens
        for proto in ("udp", "tcp")
    )
    ndp = ""
    if any(ip.version == 6 for ip in listens):
        ndp = (
            f'    iifname "{bridge}" icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} '
            "accept\n"
        )
    opened = "".join(
        f'    iifname "{bridge}" {_family(o)} daddr {o} accept\n'
        for o in sorted({ipaddress.ip_address(a) for a in open_addresses}, key=str)
    )
    closed = "".join(f"    {_family(ip)} daddr {ip} counter drop\n" for ip in listens)
    return (
        f"table inet {table} {{}}\n"
        f"delete table inet {table}\n"
        f"table inet {table} {{\n"
        "  chain input {\n"
        "    type filter hook input priority filter - 10; policy accept;\n"
        f"{serve}{ndp}{opened}"
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
    address: str,
    port: int = 53,
    table: str = TABLE,
    open_addresses: Sequence[str] = (),
    also: Sequence[str] = (),
) -> None:
    _apply(ruleset(bridge, address, port, table, open_addresses, also))


def remove(table: str = TABLE) -> None:
    _apply(removal(table))
