"""The nftables table that lets VXLAN (UDP 6784) in only from the peers fastdp uses.

The kernel's VXLAN device takes a datagram on its port from any address: without a filter,
anyone on the underlay could put frames on our bridge (isolation lets ARP and frames from
outside the overlay's addresses pass), with or without a password. So ``inet meshnet-fastdp``
drops every datagram to the VXLAN port whose source is not in its ``peers`` (IPv4) or
``peers6`` set, and counts it in the named counter ``foreign``; the fastdp service keeps the sets
equal to the underlay addresses of its current candidates (neighbours both sides want fastdp
with: the probes need the path before a neighbour is up).

The table comes before the VXLAN device and goes after it (``service.py``): if it cannot be
installed, there is no device, and the sleeve carries everything. Its own table, not a chain in
``inet meshnet`` (``nftables``), because that one exists only while something is exposed and is
rebuilt by the ramps; this one lives exactly as long as the device. The input hook sees
datagrams after IPv4 reassembly (``ip_local_deliver`` reassembles first), so fragments cannot
slip past the port match.

Pure script builders, then the three calls that run nft (through ``kernel.nft``).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable

from meshnet.dataplane.kernel.nft import NftError, run_nft

TABLE = "meshnet-fastdp"
COUNTER = "foreign"
_FAMILY = "inet"
_SETS = {4: "peers", 6: "peers6"}
_PRIORITY = "filter - 10"  # any input priority works: a drop in one base chain is final


def sources(addresses: Iterable[str]) -> frozenset[str]:
    """The valid IP addresses among `addresses`, normalized (anything else is left out: never
    fed to nft as text)."""
    found = set()
    for text in addresses:
        try:
            found.add(str(ipaddress.ip_address(text)))
        except ValueError:
            continue
    return frozenset(found)


def _by_family(addresses: Iterable[str]) -> dict[int, list[str]]:
    """`addresses` (already valid) sorted by IP version and value."""
    parsed = sorted((ipaddress.ip_address(a) for a in sources(addresses)), key=_order)
    return {v: [str(a) for a in parsed if a.version == v] for v in _SETS}


def _order(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, int]:
    return address.version, int(address)


def _elements(items: list[str]) -> str:
    return f" elements = {{ {', '.join(items)} }};" if items else ""


def table(port: int, allowed: Iterable[str] = ()) -> str:
    """The whole table, fresh (its counter starts at 0), letting in only `allowed`."""
    items = _by_family(allowed)
    script = f"table {_FAMILY} {TABLE} {{}}\ndelete table {_FAMILY} {TABLE}\n"
    script += f"table {_FAMILY} {TABLE} {{\n\tcounter {COUNTER} {{}}\n"
    script += f"\tset {_SETS[4]} {{ type ipv4_addr;{_elements(items[4])} }}\n"
    script += f"\tset {_SETS[6]} {{ type ipv6_addr;{_elements(items[6])} }}\n"
    script += f"\tchain input {{\n\t\ttype filter hook input priority {_PRIORITY}; policy accept;\n"
    script += f'\t\tudp dport {port} ip saddr != @{_SETS[4]} counter name "{COUNTER}" drop\n'
    script += f'\t\tudp dport {port} ip6 saddr != @{_SETS[6]} counter name "{COUNTER}" drop\n'
    return script + "\t}\n}\n"


def changes(have: frozenset[str], want: frozenset[str]) -> str:
    """A script that turns the sets holding `have` into ones holding `want` ('' if equal):
    element by element, so the rule and its counter stay."""
    script = ""
    for verb, items in (("delete", have - want), ("add", want - have)):
        for version, addresses in _by_family(items).items():
            if addresses:
                script += (
                    f"{verb} element {_FAMILY} {TABLE} {_SETS[version]} "
                    f"{{ {', '.join(addresses)} }}\n"
                )
    return script


def removal() -> str:
    """A script that removes the table, whether or not it exists."""
    return f"table {_FAMILY} {TABLE} {{}}\ndelete table {_FAMILY} {TABLE}\n"


def parse_dropped(text: str) -> int | None:
    """Packets counted by ``foreign``, from ``nft -j list counter``; None if not there."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    for item in data.get("nftables", []) if isinstance(data, dict) else []:
        counter = item.get("counter") if isinstance(item, dict) else None
        if (
            isinstance(counter, dict)
            and counter.get("table") == TABLE
            and counter.get("name") == COUNTER
            and isinstance(counter.get("packets"), int)
        ):
            return int(counter["packets"])
    return None


# --- running them -------------------------------------------------------------------------------


def apply(script: str) -> None:
    """One transaction: all of it, or nothing (NftError)."""
    if script:
        run_nft("-f", "-", script=script, needed_by="fastdp's VXLAN source filter")


def dropped() -> int | None:
    """Datagrams the filter dropped so far; None when the table is not there."""
    try:
        text = run_nft("-j", "list", "counter", _FAMILY, TABLE, COUNTER)
    except NftError:
        return None
    return parse_dropped(text)
