"""meshnet's two nftables tables, as pure script builders; `apply` and `counters` run nft.

* ``bridge meshnet`` — isolation, on the bridge itself (frames, not routes), keyed on the port a
  frame comes in by or goes out of. Every container port may send only from the addresses
  meshnet attached to it and only from its own MAC (anti-spoofing of Ethernet, so that no
  container sprays source MACs into every switch's MAC table, and of IPv4 and ARP; IPv6 only
  for a container with an IPv6 address, as link-local IPv6 would reach every container
  otherwise; VLAN-tagged frames never: they could smuggle IP past the checks), only to its own
  subnets (or broadcast and multicast), and is given only frames whose overlay source lies in
  one of its subnets. Other ethertypes pass: no IP stack answers them (the lab's tests count raw
  broadcasts), but a container's frame never claims to be a fastdp probe (below). That last
  check is what the *receiving* host does for frames from the sleeve TAP or a VXLAN port, whose
  sender it cannot see. Frames for the host itself (bridge ``input``) must not aim at an overlay
  address outside the sender's subnets — so the host is never a router between subnets — and
  the host's own frames to a container (``output``: routed packets too) obey the same rule.
  The one exception is the host's DNS server address (``dns``): every container, whatever its
  subnet, may reach it and be answered from it, so that every container resolves names. That
  address serves nothing but DNS: ``meshnet.dns.firewall`` admits only DNS to it and is in place
  before the address exists. (Replies are let through by address alone: a large UDP answer
  leaves in fragments that carry no port.) A port that is neither a container's nor one of the
  router's own (``own``: the sleeve TAP, the VXLAN port) neither sends nor receives anything
  (counter ``unknown``): a veth plugged in by hand, or one whose container was not found, stays
  shut until meshnet knows it, rather than open without any check. The MAC check comes first, in
  ``prerouting``: the bridge learns a frame's source MAC into its forwarding table (which fastdp
  advertises to every neighbour) before the ``forward`` hook, so a drop there would still let a
  container fill that table. So do the ``claims`` a container's frames make about the network
  (checked once per frame, before the bridge floods it to every port and the host): a container
  is never a router nor a DHCP server (Router Advertisements, Redirects, and UDP from the
  DHCP/DHCPv6 server ports 67 and 547 are dropped), and its Neighbor Discovery speaks only for
  itself (a Neighbor Advertisement's target must be one of its IPv6 addresses, an NS or NA
  carries at most one option, as the kernel's own do, so that no second one hides behind the
  checked first, and a link-layer address option names its own MAC; the router flag stays
  allowed, as any container with forwarding on sets it). Its link-local address is
  the one derived from its MAC (attach sets ``addr_gen_mode`` so), and it may send from no
  other: otherwise a container could answer for the host's link-local address, or another
  container's. Nor may it send a frame with a fastdp probe's ethertype and magic (also in
  ``prerouting``): the router reads probes on the bridge and cannot see which port one came in
  by, so a container could answer the router's probes for a neighbour whose VXLAN path is dead
  and black-hole the traffic to it. All of these count as ``spoofed``: like a forged source, each
  is a container claiming what belongs to someone else (an address, a MAC, the router's or the
  DHCP server's role, the router's probe), and one counter keeps ``status ramps`` and the API as
  they were. Between containers, link-local and unspecified IPv6 addresses (``link_scope``)
  carry only Neighbor Discovery and MLD (counter ``isolated`` for the rest): a link-local
  address belongs to no subnet, so anything else on it would cross subnets, and containers talk
  over their overlay addresses.
* ``inet meshnet`` — the ramps, only while something is exposed, for both families: masquerade
  for traffic from an exposed subnet leaving the overlay (``postrouting``), SNAT to the exposed
  address for traffic from outside the overlay going into it (so replies return through this
  host; with ``--no-masq-local`` not for containers on this host), and only containers of an
  exposed address's subnet may reach that address (``input``; IPv6 Neighbor Discovery aside).

Nothing else is touched: every script names only these two tables. The bridge table's rules never
change: updates flush and refill its sets, so its drop counters (``spoofed``, ``isolated``,
``protocol``) count on. The scripts are applied with ``nft -f -`` (one atomic transaction), through
``meshnet.dataplane.kernel.nft``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)

from meshnet.constants import FASTDP_PROBE_ETHERTYPE, FASTDP_PROBE_MAGIC
from meshnet.dataplane.kernel.nft import NftError, run_nft
from meshnet.errors import UserError

TABLE = "meshnet"
COUNTERS = ("spoofed", "isolated", "protocol", "unknown")
_IFNAME = re.compile(r"^[A-Za-z0-9_.:@+-]{1,15}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

Interface = IPv4Interface | IPv6Interface


@dataclass(frozen=True)
class Port:
    """A container's port on the bridge, the addresses meshnet attached to that container and
    the MAC of its interface (None: unknown, and then the port may send nothing at all)."""

    name: str
    addresses: tuple[Interface, ...]
    mac: str | None = None

    def __post_init__(self) -> None:
        check_ifname(self.name)
        if self.mac is not None:
            check_mac(self.mac)

    def sources(self, version: int) -> list[IPv4Address | IPv6Address]:
        return sorted({a.ip for a in self.addresses if a.version == version})

    def link_local(self) -> IPv6Address | None:
        """The link-local address the kernel derives from the port's MAC (modified EUI-64,
        RFC 4291 2.5.1), the only one the port may use: attach asks the container for it
        (``addr_gen_mode`` 0), so that no container claims another's link-local address."""
        if self.mac is None:
            return None
        octets = bytes.fromhex(self.mac.replace(":", ""))
        eui64 = bytes([octets[0] ^ 0x02]) + octets[1:3] + b"\xff\xfe" + octets[3:]
        return IPv6Address(b"\xfe\x80" + bytes(6) + eui64)

    def sources6(self) -> list[IPv6Address]:
        """The IPv6 addresses the port may send from, or claim in Neighbor Advertisements: its
        own, and its link-local one once it has any IPv6 address at all."""
        own = [a.ip for a in self.addresses if isinstance(a, IPv6Interface)]
        link_local = self.link_local()
        if own and link_local is not None:
            own.append(link_local)
        return sorted(set(own))

    def subnets(self, version: int) -> list[IPv4Network | IPv6Network]:
        """Its subnets, with those inside another of its subnets left out (nft refuses
        overlapping intervals in one set; the union is the same)."""
        nets = [a.network for a in self.addresses if a.version == version]
        return list(ipaddress.collapse_addresses(nets))  # type: ignore[type-var]


@dataclass(frozen=True)
class Exposure:
    """An address of the host on the overlay (on the bridge), IPv4 or IPv6."""

    address: Interface
    masquerade: bool = True


def check_ifname(name: str) -> str:
    if not _IFNAME.match(name):
        raise UserError(f"bad interface name {name!r}")
    return name


def check_mac(mac: str) -> str:
    if not _MAC.match(mac):
        raise UserError(f"bad MAC address {mac!r}")
    return mac


def overlay(
    networks: Iterable[IPv4Network | IPv6Network],
) -> tuple[list[IPv4Network], list[IPv6Network]]:
    """The overlay's address space (the allocation range, exposed subnets, every local
    container's subnets), merged: (IPv4, IPv6)."""
    v4 = [n for n in networks if isinstance(n, IPv4Network)]
    v6 = [n for n in networks if isinstance(n, IPv6Network)]
    return list(ipaddress.collapse_addresses(v4)), list(ipaddress.collapse_addresses(v6))


def _elements(items: Sequence[str]) -> str:
    return f"; elements = {{ {', '.join(items)} }}" if items else ""


def _set(name: str, kind: str, items: Sequence[str], *, interval: bool = False) -> str:
    """``kind``: a data type (``ifname . ipv4_addr``), or ``typeof`` and the expression the set
    is looked up with."""
    key = kind if kind.startswith("typeof ") else f"type {kind}"
    flags = "; flags interval" if interval else ""
    return f"\tset {name} {{ {key}{flags}{_elements(items)}; }}\n"


def _prelude(family: str, declarations: str, sets: Sequence[str], fresh: bool) -> str:
    """Start from nothing (``fresh``), or keep the table (and its counters) and empty it."""
    if fresh:
        return f"table {family} {TABLE} {{}}\ndelete table {family} {TABLE}\n"
    flushes = "".join(f"flush set {family} {TABLE} {s}\n" for s in sets)
    return f"table {family} {TABLE} {{\n{declarations}}}\nflush table {family} {TABLE}\n{flushes}"


_BRIDGE_SETS = (
    ("ports", "ifname", False),
    ("own", "ifname", False),
    ("ports6", "ifname", False),
    ("sources", "ifname . ipv4_addr", False),
    ("subnets", "ifname . ipv4_addr", True),
    ("sources6", "ifname . ipv6_addr", False),
    ("subnets6", "ifname . ipv6_addr", True),
    ("overlay", "ipv4_addr", True),
    ("overlay6", "ipv6_addr", True),
    ("dns", "ipv4_addr", False),
    ("dns6", "ipv6_addr", False),
    ("macs", "ifname . ether_addr", False),
    # The same facts keyed for raw payloads: nft 1.0.6 names no Neighbor Discovery field past
    # the ICMPv6 header, so the target address (@th,64,128) and the first option's link-layer
    # address (@th,208,48) are read by offset, and their sets are typed like those reads.
    ("targets6", "typeof iifname . @th,64,128", False),
    ("lladdrs", "typeof iifname . @th,208,48", False),
)

# A frame that claims to be a fastdp probe: its ethertype and, read by offset (nft names no field
# of an unknown ethertype), the magic that begins its payload, right after the 14-byte Ethernet
# header (checked on this kernel: ``@ll,112`` is that offset in the bridge family).
_PROBE_CLAIM = (
    f"ether type {FASTDP_PROBE_ETHERTYPE:#06x} @ll,112,{len(FASTDP_PROBE_MAGIC) * 8} "
    f"{int.from_bytes(FASTDP_PROBE_MAGIC, 'big'):#x}"
)

_BRIDGE_CHAINS = (
    """\
\tchain prerouting {
\t\ttype filter hook prerouting priority filter; policy accept;
\t\tiifname @ports iifname . ether saddr != @macs counter name "spoofed" drop
"""
    f'\t\tiifname @ports {_PROBE_CLAIM} counter name "spoofed" drop\n'
    """\
\t\tiifname @ports meta l4proto { ipv6-icmp, udp } jump claims
\t\tiifname != @ports iifname != @own counter name "unknown" drop
\t}
\tchain claims {
\t\ticmpv6 type { nd-router-advert, nd-redirect } counter name "spoofed" drop
\t\tudp sport { 67, 547 } counter name "spoofed" drop
\t\ticmpv6 type nd-neighbor-advert iifname . @th,64,128 != @targets6 \
counter name "spoofed" drop
\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } @th,256,8 0-255 \
counter name "spoofed" drop
\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } @th,192,8 { 1, 2 } \
iifname . @th,208,48 != @lladdrs counter name "spoofed" drop
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname @ports jump from_container
\t\toifname @ports jump to_container
\t\tiifname != @ports iifname != @own counter name "unknown" drop
\t\toifname != @ports oifname != @own counter name "unknown" drop
\t}
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname @ports jump to_host
\t\tiifname != @ports iifname != @own counter name "unknown" drop
\t}
\tchain output {
\t\ttype filter hook output priority filter; policy accept;
\t\toifname @ports ip saddr @dns accept
\t\toifname @ports ip6 saddr @dns6 accept
\t\toifname @ports ip saddr @overlay oifname . ip saddr != @subnets counter name "isolated" drop
\t\toifname @ports ip6 saddr @overlay6 oifname . ip6 saddr != @subnets6 \
counter name "isolated" drop
\t\toifname != @ports oifname != @own counter name "unknown" drop
\t}
\tchain sender {
\t\tether type { 8021q, 8021ad } counter name "protocol" drop
\t\tether type ip6 iifname != @ports6 counter name "protocol" drop
\t\tarp saddr ip != 0.0.0.0 iifname . arp saddr ip != @sources counter name "spoofed" drop
\t\tiifname . ip saddr != @sources counter name "spoofed" drop
\t\tip6 saddr != :: iifname . ip6 saddr != @sources6 counter name "spoofed" drop
\t}
\tchain from_container {
\t\tjump sender
\t\tip daddr != { 224.0.0.0/4, 255.255.255.255 } iifname . ip daddr != @subnets \
counter name "isolated" drop
\t\tip6 daddr != { fe80::/10, ff00::/8 } iifname . ip6 daddr != @subnets6 \
counter name "isolated" drop
\t\tip6 saddr { ::, fe80::/10 } jump link_scope
\t\tip6 daddr fe80::/10 jump link_scope
\t}
\tchain link_scope {
\t\ticmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, \
mld-listener-report, mld-listener-done, mld2-listener-report } return
\t\tcounter name "isolated" drop
\t}
\tchain to_host {
\t\tjump sender
\t\tip daddr @dns accept
\t\tip6 daddr @dns6 accept
\t\tip daddr @overlay iifname . ip daddr != @subnets counter name "isolated" drop
\t\tip6 daddr @overlay6 iifname . ip6 daddr != @subnets6 counter name "isolated" drop
\t}
\tchain to_container {
\t\tether type { 8021q, 8021ad } counter name "protocol" drop
\t\tether type ip6 oifname != @ports6 counter name "protocol" drop
\t\tip saddr @overlay oifname . ip saddr != @subnets counter name "isolated" drop
\t\tarp saddr ip @overlay oifname . arp saddr ip != @subnets counter name "isolated" drop
\t\tip6 saddr @overlay6 oifname . ip6 saddr != @subnets6 counter name "isolated" drop
\t\tip6 saddr { ::, fe80::/10 } jump link_scope
\t\tip6 daddr fe80::/10 jump link_scope
\t}
"""
)


def bridge_table(
    ports: Sequence[Port],
    overlay4: Sequence[IPv4Network],
    overlay6: Sequence[IPv6Network] = (),
    *,
    dns: Sequence[IPv4Address | IPv6Address] = (),
    own: Sequence[str] = (),
    fresh: bool,
) -> str:
    """The isolation table for these container ports, the router's `own` ports and the host's
    DNS server addresses (see the module docstring)."""
    ports = sorted(ports, key=lambda p: p.name)
    items: dict[str, list[str]] = {
        "ports": [f'"{p.name}"' for p in ports],
        "own": [f'"{check_ifname(name)}"' for name in sorted(set(own))],
        "ports6": [f'"{p.name}"' for p in ports if p.sources(6)],
        "sources": [f'"{p.name}" . {ip}' for p in ports for ip in p.sources(4)],
        "subnets": [f'"{p.name}" . {net}' for p in ports for net in p.subnets(4)],
        "sources6": [f'"{p.name}" . {ip}' for p in ports for ip in p.sources6()],
        "subnets6": [f'"{p.name}" . {net}' for p in ports for net in p.subnets(6)],
        "overlay": [str(n) for n in ipaddress.collapse_addresses(overlay4)],
        "overlay6": [str(n) for n in ipaddress.collapse_addresses(overlay6)],
        "dns": sorted({str(a) for a in dns if a.version == 4}),
        "dns6": sorted({str(a) for a in dns if a.version == 6}),
        "macs": [f'"{p.name}" . {p.mac}' for p in ports if p.mac is not None],
        "targets6": [f'"{p.name}" . {int(ip):#034x}' for p in ports for ip in p.sources6()],
        "lladdrs": [f'"{p.name}" . 0x{p.mac.replace(":", "")}' for p in ports if p.mac is not None],
    }
    counters = "".join(f"\tcounter {c} {{}}\n" for c in COUNTERS)
    empty_sets = "".join(_set(name, kind, [], interval=i) for name, kind, i in _BRIDGE_SETS)
    script = _prelude("bridge", counters + empty_sets, [s[0] for s in _BRIDGE_SETS], fresh)
    script += f"table bridge {TABLE} {{\n{counters}"
    for name, kind, interval in _BRIDGE_SETS:
        script += _set(name, kind, items[name], interval=interval)
    return script + _BRIDGE_CHAINS + "}\n"


def inet_table(
    bridge: str,
    exposures: Sequence[Exposure],
    overlay4: Sequence[IPv4Network],
    overlay6: Sequence[IPv6Network] = (),
    *,
    local: Sequence[IPv4Address | IPv6Address] | None = None,
    fresh: bool,
) -> str:
    """The ramps for these exposed addresses, IPv4 and IPv6 (see the module docstring).

    ``local``: the addresses of this host's containers, left unmasqueraded on the way in
    (``--no-masq-local``); None masquerades traffic into the overlay for every container.
    Rules go from the most specific subnet to the least, so a subnet nested in another one
    follows its own exposure.
    """
    check_ifname(bridge)
    ordered = sorted(
        exposures,
        key=lambda e: (e.address.version, -e.address.network.prefixlen, int(e.address.ip)),
    )
    sets = [
        ("overlay", "ipv4_addr", True),
        ("overlay6", "ipv6_addr", True),
        ("local", "ipv4_addr", False),
        ("local6", "ipv6_addr", False),
    ]
    locals_ = sorted(set(local or ()), key=lambda a: (a.version, int(a)))
    items = {
        "overlay": [str(n) for n in ipaddress.collapse_addresses(overlay4)],
        "overlay6": [str(n) for n in ipaddress.collapse_addresses(overlay6)],
        "local": [str(a) for a in locals_ if a.version == 4],
        "local6": [str(a) for a in locals_ if a.version == 6],
    }
    declarations = "".join(_set(name, kind, [], interval=i) for name, kind, i in sets)
    script = _prelude("inet", declarations, [s[0] for s in sets], fresh)
    script += f"table inet {TABLE} {{\n"
    for name, kind, interval in sets:
        script += _set(name, kind, items[name], interval=interval)
    script += "\tchain input {\n\t\ttype filter hook input priority filter - 5; policy accept;\n"
    for e in ordered:
        ip, net = _family(e.address), e.address.network
        if net.version == 6:
            # Neighbor Discovery from any container: a neighbour's unicast probe comes from
            # its link-local address, and unanswered it loses the exposed address for a while.
            script += (
                f'\t\tiifname "{bridge}" ip6 daddr {e.address.ip} ip6 hoplimit 255 '
                "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept\n"
            )
        script += (
            f'\t\tiifname "{bridge}" {ip} daddr {e.address.ip} {ip} saddr != {net} counter drop\n'
        )
    script += "\t}\n\tchain postrouting {\n"
    script += "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
    for e in ordered:  # leaving the overlay: masqueraded to the outgoing interface's address
        ip, suffix = _family(e.address), "" if e.address.version == 4 else "6"
        multicast = "224.0.0.0/4" if e.address.version == 4 else "ff00::/8"
        verdict = "masquerade" if e.masquerade else "accept"
        script += (
            f'\t\toifname != "{bridge}" {ip} saddr {e.address.network} '
            f"{ip} daddr != @overlay{suffix} {ip} daddr != {multicast} {verdict}\n"
        )
    for e in ordered:  # entering it from outside: from the exposed address
        ip, suffix = _family(e.address), "" if e.address.version == 4 else "6"
        keep_local = f" {ip} daddr != @local{suffix}" if local is not None else ""
        script += (
            f'\t\toifname "{bridge}" {ip} saddr != @overlay{suffix} {ip} daddr '
            f"{e.address.network}{keep_local} snat {ip} to {e.address.ip}\n"
        )
    return script + "\t}\n}\n"


def _family(address: Interface) -> str:
    """The nft payload keyword of an address's family."""
    return "ip" if address.version == 4 else "ip6"


def removal(families: Iterable[str] = ("bridge", "inet")) -> str:
    """A script that removes our tables, whether or not they exist."""
    return "".join(f"table {f} {TABLE} {{}}\ndelete table {f} {TABLE}\n" for f in families)


def parse_counters(text: str) -> dict[str, int]:
    """Packets per named counter of our bridge table, from ``nft -j list counters ...``."""
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    found: dict[str, int] = {}
    for item in data.get("nftables", []) if isinstance(data, dict) else []:
        counter = item.get("counter") if isinstance(item, dict) else None
        if isinstance(counter, dict) and counter.get("table") == TABLE:
            name, packets = counter.get("name"), counter.get("packets")
            if isinstance(name, str) and isinstance(packets, int):
                found[name] = packets
    return found


# --- applying them ------------------------------------------------------------------------------


def apply(script: str) -> None:
    """Run a script in one transaction: all of it happens, or none."""
    run_nft("-f", "-", script=script)


def counters() -> dict[str, int]:
    """The bridge table's drop counters ({} when it is not there)."""
    try:
        return parse_counters(run_nft("-j", "list", "counters", "table", "bridge", TABLE))
    except NftError:
        return {}
