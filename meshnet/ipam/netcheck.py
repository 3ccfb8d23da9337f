"""Does the allocation range clash with the host's own network? (Weave's ``netcheck``.)

Container addresses in a range the host already routes elsewhere (a cloud VPC's 10.0.0.0/8, a
VPN's subnet) fail silently: replies go out the wrong interface. So `launch` refuses a range that
overlaps one of the host's routes and names it; routes out of our own bridge don't count (they
are the overlay's, from an earlier run), nor the default route (it overlaps everything).

``overlapping_route`` is the pure decision; ``host_routes`` reads the routes through netlink.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network

from meshnet.constants import BRIDGE
from meshnet.dataplane.kernel import netlink
from meshnet.errors import UserError


@dataclass(frozen=True)
class HostRoute:
    """One IPv4 route of the host's main table."""

    destination: IPv4Network
    device: str | None
    gateway: str | None = None

    def __str__(self) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        dev = f" dev {self.device}" if self.device else ""
        return f"{self.destination}{via}{dev}"


def overlapping_route(
    allocation_range: IPv4Network, routes: Iterable[HostRoute], *, own_devices: Iterable[str]
) -> HostRoute | None:
    """The first route (most specific first) that ``allocation_range`` overlaps, if any."""
    own = set(own_devices)
    clashes = [
        route
        for route in routes
        if route.destination.prefixlen > 0
        and route.device not in own
        and route.destination.overlaps(allocation_range)
    ]
    clashes.sort(key=lambda r: (-r.destination.prefixlen, int(r.destination.network_address)))
    return clashes[0] if clashes else None


def overlap_message(flag: str, allocation_range: IPv4Network, route: HostRoute) -> str:
    return (
        f"--ipalloc-range {allocation_range} overlaps the host's route {route}: choose another "
        f"range, or {flag} if that is intended"
    )


def host_routes() -> list[HostRoute]:
    """The IPv4 unicast routes of this namespace's main table, with their devices' names."""
    with netlink.namespace(None) as ns:
        names = {link.index: link.name for link in ns.links()}
        routes = ns.routes(family=socket.AF_INET)
    return [
        HostRoute(
            IPv4Network(route.destination, strict=False),
            names.get(route.ifindex) if route.ifindex is not None else None,
            route.gateway,
        )
        for route in routes
    ]


def refuse_overlap(allocation_range: IPv4Network) -> None:
    """`launch`'s check, where the router will run: a range the host already routes elsewhere
    is refused in one line naming the route."""
    clash = overlapping_route(allocation_range, host_routes(), own_devices={BRIDGE})
    if clash is not None:
        raise UserError(overlap_message("--ipalloc-range-overlap-ok", allocation_range, clash))
