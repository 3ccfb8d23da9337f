"""What a lab looks like before it is built: hosts, links, containers and their addresses.

Pure: built-in shapes and topology files become a validated `LabPlan`; nothing touches the kernel.

A host may sit behind its own NAT router (`nat = "masquerade"` or `"random"`). A topology with any
such host also gets an "internet": one router that every public host and every NAT router is
linked to (`plan_internet`). Without NAT hosts there is no internet and nothing else changes.
"""

from __future__ import annotations

import ipaddress
import itertools
import random
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshnet.errors import UserError

BUILTIN_TOPOLOGIES = ("full", "line", "star", "ring")
# Underlay links get one /24 each from here; containers get 10.32.<host>.<container>/12, inside
# meshnet's default allocation range, so the static addresses stay valid once hosts are joined.
UNDERLAY_RANGE = ipaddress.IPv4Network("172.31.0.0/16")
# IPv6 underlay links get one /64 each from a ULA /48 ("meshn" in its global id), numbered as the
# IPv4 /24s: link N is 172.31.N.0/24 and fd6d:6573:686e:N::/64 (N in hex there).
UNDERLAY_RANGE6 = ipaddress.IPv6Network("fd6d:6573:686e::/48")
# Which families an underlay link carries: `--underlay` for a whole lab, `underlay = ...` in a
# topology file (at the top for every link, or per link). On a dual link a router is told its
# neighbour's IPv6 address (one target per neighbour: two would only make a duplicate connection).
UNDERLAYS = ("ipv4", "ipv6", "dual")
CONTAINER_RANGE = ipaddress.IPv4Network("10.32.0.0/12")
# Which families the containers' overlay addresses are of (`--overlay`): what each container's
# attach asks its router for. Lab routers always have an IPv6 ring, so "dual" is the default
# where routers attach the containers; a lab without routers, or with Docker's containers (the
# lab attaches them with net:default, as before the Docker integration had IPv6), keeps "ipv4".
OVERLAYS = ("ipv4", "ipv6", "dual")
OVERLAY_SPECS = {
    "ipv4": ("net:default",),
    "ipv6": ("net:default6",),
    "dual": ("net:default", "net:default6"),
}
OVERLAY_VERSIONS = {"ipv4": (4,), "ipv6": (6,), "dual": (4, 6)}
MAX_HOSTS = 250
MAX_CONTAINERS_PER_HOST = 250
# The internet of a lab with NAT hosts: one /24 per host (its own link to the internet router, or
# its NAT router's), numbered by the host's position. 198.18.0.0/15 is set aside for benchmark
# networks (RFC 2544): it looks nothing like the private ranges, as a real public address would
# not, and no real host is ever reached through it.
INTERNET_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
# Behind a NAT: one /24 per NATed host, the home-router range, numbered like the internet.
PRIVATE_RANGE = ipaddress.IPv4Network("192.168.0.0/16")
# nftables `masquerade` keeps the source port when it is free (a home router); `masquerade random`
# picks a fresh port for every mapping (a symmetric NAT, as carrier-grade and cloud NAT gateways).
NAT_KINDS = ("masquerade", "random")
INTERNET = "internet"  # the internet router's name (its namespace is <prefix>internet)
# Interface names hold 15 bytes: "to-" + host and "ve-" + container must fit.
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,11}$")


@dataclass(frozen=True)
class LinkSpec:
    a: str
    b: str
    loss: float = 0.0  # percent of frames dropped in each direction
    rate: int | None = None  # bits per second in each direction
    underlay: str = "ipv4"  # one of UNDERLAYS

    @property
    def key(self) -> frozenset[str]:
        return frozenset((self.a, self.b))


@dataclass(frozen=True)
class HostSpec:
    name: str
    containers: tuple[str, ...]
    nat: str | None = None  # one of NAT_KINDS: the host sits behind its own NAT router


def nat_router_name(host: str) -> str:
    """The NAT router of a NATed host: its namespace is the lab's prefix plus this."""
    return f"{host}-nat"


@dataclass(frozen=True)
class Topology:
    hosts: tuple[HostSpec, ...]
    links: tuple[LinkSpec, ...]


def parse_rate(text: str) -> int:
    """'10mbit' -> 10_000_000 bits per second (tc's units: bit, kbit, mbit, gbit)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit)?\s*", text.lower())
    if not m:
        raise UserError(
            f"bad rate {text!r}: use a number with bit, kbit, mbit or gbit, e.g. 10mbit"
        )
    scale = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}[m.group(2) or "bit"]
    bits = int(float(m.group(1)) * scale)
    if not 8_000 <= bits <= 100 * 10**9:
        raise UserError(f"bad rate {text!r}: must be between 8kbit and 100gbit")
    return bits


def format_rate(bits: int) -> str:
    for unit, scale in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits >= scale and bits % scale == 0:
            return f"{bits // scale}{unit}"
    return f"{bits}bit"


def check_loss(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise UserError(f"bad loss {value!r}: a percentage from 0 to 100")
    return float(value)


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise UserError(
            f"bad {what} name {name!r}: 1-12 characters, lowercase letters, digits and '-', "
            "starting with a letter"
        )
    return name


def _default_containers(host: str, count: int) -> tuple[str, ...]:
    return tuple(f"{host}-c{i}" for i in range(1, count + 1))


def check_underlay(value: Any) -> str:
    if value not in UNDERLAYS:
        raise UserError(
            f"bad underlay {value!r}: use one of {', '.join(repr(u) for u in UNDERLAYS)}"
        )
    return str(value)


def check_overlay(value: Any) -> str:
    if value not in OVERLAYS:
        raise UserError(f"bad overlay {value!r}: use one of {', '.join(repr(o) for o in OVERLAYS)}")
    return str(value)


def builtin(kind: str, hosts: int, containers: int, underlay: str = "ipv4") -> Topology:
    """One of the named shapes over hosts h1..hN, every link of the ``underlay`` family."""
    check_underlay(underlay)
    if kind not in BUILTIN_TOPOLOGIES:
        raise UserError(
            f"unknown topology {kind!r}: use one of {', '.join(BUILTIN_TOPOLOGIES)} "
            "or a topology file (.toml)"
        )
    if not 1 <= hosts <= MAX_HOSTS:
        raise UserError(f"--hosts must be between 1 and {MAX_HOSTS}, not {hosts}")
    if not 0 <= containers <= MAX_CONTAINERS_PER_HOST:
        raise UserError(f"--containers must be between 0 and {MAX_CONTAINERS_PER_HOST}")
    names = [f"h{i}" for i in range(1, hosts + 1)]
    pairs: list[tuple[str, str]]
    if kind == "full":
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    elif kind == "line":
        pairs = list(itertools.pairwise(names))
    elif kind == "star":
        pairs = [(names[0], b) for b in names[1:]]
    else:  # ring
        pairs = list(itertools.pairwise(names))
        if hosts > 2:
            pairs.append((names[-1], names[0]))
    return validate(
        Topology(
            hosts=tuple(HostSpec(n, _default_containers(n, containers)) for n in names),
            links=tuple(LinkSpec(a, b, underlay=underlay) for a, b in pairs),
        )
    )


def random_sparse(hosts: int, degree: float, seed: int, containers: int = 1) -> Topology:
    """A connected random graph over h1..hN whose average degree is about ``degree``, the same
    for the same seed: a random tree (each host links to a random earlier one) plus random
    extra links until there are N * degree / 2 (at most every pair, and the underlay's room)."""
    if not 2 <= hosts <= MAX_HOSTS:
        raise UserError(f"a random topology needs 2 to {MAX_HOSTS} hosts, not {hosts}")
    if degree < 2 * (hosts - 1) / hosts:
        raise UserError(f"average degree {degree:g} cannot connect {hosts} hosts (a tree has more)")
    rng = random.Random(seed)
    names = [f"h{i}" for i in range(1, hosts + 1)]
    order = names[:1] + rng.sample(names[1:], hosts - 1)  # the tree's shape, not h1-h2-h3...
    pairs = {frozenset((host, rng.choice(order[:i]))) for i, host in enumerate(order) if i}
    room = UNDERLAY_RANGE.num_addresses // 256
    wanted = min(round(hosts * degree / 2), hosts * (hosts - 1) // 2, room)
    while len(pairs) < wanted:
        a, b = rng.sample(names, 2)
        pairs.add(frozenset((a, b)))
    links = sorted(
        (sorted(p, key=_host_number) for p in pairs),
        key=lambda ab: (_host_number(ab[0]), _host_number(ab[1])),
    )
    return validate(
        Topology(
            hosts=tuple(HostSpec(n, _default_containers(n, containers)) for n in names),
            links=tuple(LinkSpec(a, b) for a, b in links),
        )
    )


def _host_number(name: str) -> int:
    return int(name[1:])


def to_toml(topology: Topology) -> str:
    """A topology file that `load_file` reads back as ``topology`` (hosts in order, links with
    their loss, rate and underlay): how a generated topology is kept to be used again."""
    out = []
    for host in topology.hosts:
        out.append(f"[hosts.{host.name}]")
        out.append(f"containers = [{', '.join(_quoted(c) for c in host.containers)}]")
        if host.nat is not None:
            out.append(f"nat = {_quoted(host.nat)}")
        out.append("")
    for link in topology.links:
        out.append("[[links]]")
        out.append(f"hosts = [{_quoted(link.a)}, {_quoted(link.b)}]")
        if link.loss:
            out.append(f"loss = {link.loss:g}")
        if link.rate is not None:
            out.append(f"rate = {_quoted(format_rate(link.rate))}")
        if link.underlay != LinkSpec.underlay:
            out.append(f"underlay = {_quoted(link.underlay)}")
        out.append("")
    return "\n".join(out)


def _quoted(text: str) -> str:
    return '"' + text + '"'  # names, NAT kinds and rates hold no quotes or backslashes


def hops_from(topology: Topology, start: str) -> dict[str, int]:
    """Each host's distance in links from ``start`` (hosts it cannot reach are left out)."""
    adjacent: dict[str, list[str]] = {h.name: [] for h in topology.hosts}
    for link in topology.links:
        adjacent[link.a].append(link.b)
        adjacent[link.b].append(link.a)
    hops = {start: 0}
    frontier = [start]
    while frontier:
        following = []
        for host in frontier:
            for neighbour in adjacent[host]:
                if neighbour not in hops:
                    hops[neighbour] = hops[host] + 1
                    following.append(neighbour)
        frontier = following
    return hops


def load_file(
    path: Path, default_containers: int | None, default_underlay: str | None = None
) -> Topology:
    """A topology file (TOML): see examples/topology.toml. ``default_underlay`` (--underlay)
    is the family of links for which the file names none; the file's own default wins."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"topology file {path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read topology file {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"malformed topology file {path}: {e}") from None
    try:
        return _from_mapping(data, default_containers, default_underlay)
    except UserError as e:
        raise UserError(f"topology file {path}: {e}") from None


def _from_mapping(
    data: Mapping[str, Any], default_containers: int | None, default_underlay: str | None = None
) -> Topology:
    unknown = set(data) - {"hosts", "links", "underlay"}
    if unknown:
        raise UserError(
            f"unknown keys {sorted(unknown)}: expected underlay, [hosts.NAME] and [[links]]"
        )
    file_underlay = check_underlay(data.get("underlay", default_underlay or "ipv4"))
    hosts_data = data.get("hosts")
    if not isinstance(hosts_data, dict) or not hosts_data:
        raise UserError("no hosts: add a [hosts.NAME] table for each host")
    hosts = []
    for name, spec in hosts_data.items():
        _check_name(name, "host")
        if not isinstance(spec, dict):
            raise UserError(f"host {name}: expected a table")
        extra = set(spec) - {"containers", "nat"}
        if extra:
            raise UserError(f"host {name}: unknown keys {sorted(extra)}")
        nat = spec.get("nat")
        if nat is not None and nat not in NAT_KINDS:
            raise UserError(
                f"host {name}: nat must be one of {', '.join(repr(k) for k in NAT_KINDS)}, "
                f"not {nat!r}"
            )
        containers = spec.get("containers", default_containers or 0)
        if isinstance(containers, bool):
            raise UserError(f"host {name}: containers must be a count or a list of names")
        if isinstance(containers, int):
            if not 0 <= containers <= MAX_CONTAINERS_PER_HOST:
                raise UserError(f"host {name}: containers must be 0..{MAX_CONTAINERS_PER_HOST}")
            names: Sequence[Any] = _default_containers(name, containers)
        elif isinstance(containers, list):
            names = containers
        else:
            raise UserError(f"host {name}: containers must be a count or a list of names")
        hosts.append(HostSpec(name, tuple(_check_name(c, "container") for c in names), nat))
    links_data = data.get("links", [])
    if not isinstance(links_data, list):
        raise UserError("links must be an array of tables: [[links]]")
    links = []
    for i, link in enumerate(links_data, 1):
        if not isinstance(link, dict):
            raise UserError(f"link {i}: expected a table")
        extra = set(link) - {"hosts", "loss", "rate", "underlay"}
        if extra:
            raise UserError(f"link {i}: unknown keys {sorted(extra)}")
        ends = link.get("hosts")
        if not (
            isinstance(ends, list) and len(ends) == 2 and all(isinstance(e, str) for e in ends)
        ):
            raise UserError(f'link {i}: hosts must name two hosts, e.g. hosts = ["a", "b"]')
        rate = link.get("rate")
        if rate is not None and not isinstance(rate, str):
            raise UserError(f'link {i}: rate must be a string such as "10mbit"')
        links.append(
            LinkSpec(
                ends[0],
                ends[1],
                loss=check_loss(link.get("loss", 0)),
                rate=parse_rate(rate) if rate is not None else None,
                underlay=check_underlay(link.get("underlay", file_underlay)),
            )
        )
    return validate(Topology(tuple(hosts), tuple(links)))


def validate(topology: Topology) -> Topology:
    hosts = [h.name for h in topology.hosts]
    if not 1 <= len(hosts) <= MAX_HOSTS:
        raise UserError(f"a lab has 1 to {MAX_HOSTS} hosts, not {len(hosts)}")
    seen: set[str] = set()
    for name in hosts + [c for h in topology.hosts for c in h.containers]:
        if name in seen:
            raise UserError(f"name {name!r} is used twice (host and container names are unique)")
        seen.add(name)
    pairs: set[frozenset[str]] = set()
    for link in topology.links:
        for end in (link.a, link.b):
            if end not in hosts:
                raise UserError(f"link {link.a}-{link.b}: no host named {end!r}")
        if link.a == link.b:
            raise UserError(f"link {link.a}-{link.b}: a host cannot link to itself")
        if link.key in pairs:
            raise UserError(f"link {link.a}-{link.b} is listed twice")
        check_underlay(link.underlay)
        pairs.add(link.key)
    if len(topology.links) > UNDERLAY_RANGE.num_addresses // 256:
        raise UserError(f"too many links ({len(topology.links)}): the lab has room for 256")
    _validate_nat(topology, seen)
    return topology


def _validate_nat(topology: Topology, names: set[str]) -> None:
    """A NATed host reaches others only through its NAT: a direct link would bypass it.

    The NAT routers and the internet router are namespaces named like hosts, so those names are
    taken once the topology has any NAT host.
    """
    natted = [h for h in topology.hosts if h.nat is not None]
    for host in natted:
        if host.nat not in NAT_KINDS:
            raise UserError(f"host {host.name}: unknown nat {host.nat!r}")
    if not natted:
        return
    for link in topology.links:
        for end in (link.a, link.b):
            if any(h.name == end for h in natted):
                raise UserError(
                    f"link {link.a}-{link.b}: host {end} is behind NAT, so it has no links of its "
                    "own (it reaches the public hosts through its NAT router and the internet)"
                )
    for reserved in [INTERNET, *(nat_router_name(h.name) for h in natted)]:
        if reserved in names:
            raise UserError(
                f"name {reserved!r} is taken by a router of the lab's NAT (choose another name)"
            )


@dataclass(frozen=True)
class PlannedLink:
    a: str
    b: str
    a_address: str | None  # "172.31.N.1/24" on a's end (None: an IPv6-only link)
    b_address: str | None
    loss: float
    rate: int | None
    a_address6: str | None = None  # "fd6d:6573:686e:N::1/64" (None: an IPv4-only link)
    b_address6: str | None = None

    def addresses(self, end: str) -> tuple[str, ...]:
        """The addresses (with prefix) at ``end``'s side: IPv4 first."""
        pair = (
            (self.a_address, self.a_address6)
            if end == self.a
            else (self.b_address, self.b_address6)
        )
        return tuple(a for a in pair if a is not None)


@dataclass(frozen=True)
class PlannedContainer:
    name: str
    host: str
    address: str  # "10.32.H.C/12"


def plan_addresses(topology: Topology) -> tuple[list[PlannedLink], list[PlannedContainer]]:
    """One /24 (IPv4) and one /64 (IPv6) per underlay link, as its family asks; containers
    numbered by host and position."""
    links = []
    v4_subnets = UNDERLAY_RANGE.subnets(new_prefix=24)
    subnets = zip(v4_subnets, UNDERLAY_RANGE6.subnets(new_prefix=64), strict=False)
    for (subnet, subnet6), link in zip(subnets, topology.links, strict=False):
        v4 = link.underlay in ("ipv4", "dual")
        v6 = link.underlay in ("ipv6", "dual")
        first, second = subnet.network_address + 1, subnet.network_address + 2
        first6, second6 = subnet6.network_address + 1, subnet6.network_address + 2
        links.append(
            PlannedLink(
                link.a,
                link.b,
                f"{first}/24" if v4 else None,
                f"{second}/24" if v4 else None,
                link.loss,
                link.rate,
                f"{first6}/64" if v6 else None,
                f"{second6}/64" if v6 else None,
            )
        )
    containers = []
    base = int(CONTAINER_RANGE.network_address)
    for h, host in enumerate(topology.hosts, 1):
        for c, name in enumerate(host.containers, 1):
            address = ipaddress.IPv4Address(base + h * 256 + c)
            containers.append(
                PlannedContainer(name, host.name, f"{address}/{CONTAINER_RANGE.prefixlen}")
            )
    return links, containers


@dataclass(frozen=True)
class PlannedUplink:
    """A link to the internet router: from a public host, or from a NATed host's NAT router."""

    host: str  # the public host, or the NATed host whose NAT router owns this link
    address: str  # "198.18.N.2/24" at the host's (or NAT router's) end: its public address
    router_address: str  # "198.18.N.1/24" at the internet router's end
    # The host's other underlay addresses (on its [[links]]), which the internet router routes
    # to it so that a NATed host reaches every address of a public host.
    routed: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlannedNat:
    """A NATed host, the link to its own NAT router, and that router's uplink."""

    host: str
    kind: str  # one of NAT_KINDS
    host_address: str  # "192.168.N.2/24": the host's private address
    lan_address: str  # "192.168.N.1/24": the NAT router's end, the host's default gateway
    uplink: PlannedUplink


@dataclass(frozen=True)
class InternetPlan:
    public: tuple[PlannedUplink, ...]  # one per public host, in host order
    nats: tuple[PlannedNat, ...]  # one per NATed host, in host order


def plan_internet(topology: Topology, links: Sequence[PlannedLink]) -> InternetPlan | None:
    """The internet and the NATs of a topology with NAT hosts (None without any).

    Host number i (from 0, in file order) gets 198.18.i.0/24 for its uplink and, behind NAT,
    192.168.i.0/24 for its private link: addresses depend only on the host's position.
    """
    if not any(h.nat for h in topology.hosts):
        return None
    internet = INTERNET_RANGE.subnets(new_prefix=24)
    private = PRIVATE_RANGE.subnets(new_prefix=24)
    public: list[PlannedUplink] = []
    nats: list[PlannedNat] = []
    for host, uplink_net, private_net in zip(topology.hosts, internet, private, strict=False):
        own = [  # the internet is IPv4: it routes a public host's IPv4 addresses
            address
            for link in links
            for end, address in ((link.a, link.a_address), (link.b, link.b_address))
            if end == host.name and address is not None
        ]
        uplink = PlannedUplink(
            host.name,
            f"{uplink_net.network_address + 2}/24",
            f"{uplink_net.network_address + 1}/24",
            routed=tuple(f"{a.split('/')[0]}/32" for a in own),
        )
        if host.nat is None:
            public.append(uplink)
        else:
            nats.append(
                PlannedNat(
                    host.name,
                    host.nat,
                    f"{private_net.network_address + 2}/24",
                    f"{private_net.network_address + 1}/24",
                    uplink,
                )
            )
    return InternetPlan(tuple(public), tuple(nats))
