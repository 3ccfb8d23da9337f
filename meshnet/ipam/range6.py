"""The IPv6 ring's range and default subnet, configured or derived from the IPv4 ring's seed.

Without ``--ipalloc-range6`` the range is a ULA /48 (RFC 4193) whose 40-bit Global ID is a
hash of the seed: the sorted peer names the IPv4 ring was first divided among. Every peer of a
mesh knows that seed exactly once its IPv4 ring exists (it is part of the ring, agreed by the
consensus or given with ``--ipalloc-init seed=``), before any IPv6 address is allocated, so
all peers compute the same range with no extra agreement. Two meshes have different seeds (peer
names are 48-bit and random or MAC-derived): their ranges collide with probability 2**-40, as
RFC 4193's random Global IDs do. The default subnet is the range's first /64.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv6Network

from meshnet.errors import UserError
from meshnet.ipam.allocator import InitMode, IpamConfig, inside

#: The IPv6 ring's gossip channel (the IPv4 ring's is ``ipam``): peers that run a version
#: without IPv6 ignore it (counted as an unknown channel) and keep working.
IPAM6_CHANNEL = "ipam6"
#: Where every derived range lies (RFC 4193's locally assigned half of fc00::/7).
DERIVED_RANGES6 = IPv6Network("fd00::/8")
#: Where a container's IPv6 address lives: one /64 (SLAAC-sized, what IPv6 hosts expect).
SUBNET6_PREFIX = 64


@dataclass(frozen=True)
class Ipv6Settings:
    """``--ipalloc-range6`` (None: derived from the seed) and ``--ipalloc-default-subnet6``
    (None: the range's first /64). All peers of a mesh must give the same ones."""

    range: IPv6Network | None = None
    default_subnet: IPv6Network | None = None

    def __post_init__(self) -> None:
        if self.default_subnet is not None:
            if self.range is None:
                raise UserError("--ipalloc-default-subnet6 needs --ipalloc-range6")
            if not inside(self.default_subnet, self.range):
                raise UserError(
                    f"--ipalloc-default-subnet6 {self.default_subnet} is not inside "
                    f"--ipalloc-range6 {self.range}"
                )


def derived_range6(seed: Sequence[int]) -> IPv6Network:
    """``fdXX:XXXX:XXXX::/48`` from a hash of the seed (see the module docstring)."""
    if not seed:
        raise ValueError("no seed: the IPv4 ring does not exist yet")
    digest = hashlib.sha256(b"meshnet ipam6 " + b"".join(p.to_bytes(6, "big") for p in seed))
    global_id = int.from_bytes(digest.digest()[:5], "big")
    return IPv6Network(((0xFD << 120) | (global_id << 80), 48))


def first_subnet6(range6: IPv6Network) -> IPv6Network:
    """The range's first /64 (the range itself if it is smaller)."""
    if range6.prefixlen >= SUBNET6_PREFIX:
        return range6
    return IPv6Network((range6.network_address, SUBNET6_PREFIX))


def config6(settings: Ipv6Settings, name: int, seed: Sequence[int]) -> IpamConfig:
    """The IPv6 allocator's settings once the IPv4 ring's ``seed`` is known."""
    range6 = settings.range or derived_range6(seed)
    subnet = settings.default_subnet or first_subnet6(range6)
    return IpamConfig(name=name, range=range6, default_subnet=subnet, mode=InitMode.FOLLOW)
