"""The ``meshnet`` IPAM driver of libnetwork's remote IPAM protocol, over meshnet's IPAM.

Docker asks for a pool when a network is created (``RequestPool``), for the network's gateway
and for each endpoint's address (``RequestAddress``), and gives each address back itself
(``ReleaseAddress``) when the endpoint goes (``docker rm -f``, ``docker network disconnect``,
a container stopping). Only addresses travel in the protocol, no container ids, so each address
is held in meshnet's IPAM under a key of its own (``docker-ipam:<random>``) and found again by
address on release. A pool is a subnet of the allocation range (the default subnet if the
network names none); its id is the subnet itself, so several networks may share one pool and
releasing a pool frees nothing (every address was released before).

With ``docker network create --ipv6`` Docker asks for a second pool (``V6``): a subnet of the
IPv6 ring's range (its default /64 if the network names no IPv6 ``--subnet``), and for the
IPv6 gateway and endpoint addresses from it, exactly as for IPv4. The IPv6 range may be derived
from the IPv4 ring's seed, so the first IPv6 request waits for the rings as an allocation does;
a router launched ``--no-ipv6`` refuses it in one line.

Protocol: https://github.com/moby/libnetwork/blob/master/docs/ipam.md
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_interface,
    ip_network,
)
from typing import Any, Protocol, overload

from meshnet.errors import UserError, bad_address, why

log = logging.getLogger("meshnet.docker")

OWNER_PREFIX = "docker-ipam:"
LOCAL_ADDRESS_SPACE = "meshnet"
GLOBAL_ADDRESS_SPACE = "meshnet-global"
GATEWAY_REQUEST = "com.docker.network.gateway"
NO_IPV6 = "this meshnet router runs with --no-ipv6: it has no IPv6 pools (drop --ipv6)"

Network = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address


class PluginError(UserError):
    """A request the plugin refuses; Docker shows the message to its user."""


class IpamSettings(Protocol):
    """A ring's settings: its range and default subnet."""

    @property
    def range(self) -> IPv4Network | IPv6Network: ...

    @property
    def subnet(self) -> IPv4Network | IPv6Network: ...


class Ipam(Protocol):
    """What the driver needs of ``meshnet.ipam.service.IpamService``."""

    @property
    def config(self) -> IpamSettings:
        """The IPv4 ring's."""
        ...

    @property
    def ipv6(self) -> object | None:
        """None: the router runs ``--no-ipv6``."""
        ...

    async def ring6(self) -> IpamSettings:
        """The IPv6 ring's settings, once it exists."""
        ...

    async def allocate(
        self, container_id: str, subnet: IPv4Network | None = None
    ) -> IPv4Interface: ...

    async def allocate6(
        self, container_id: str, subnet: IPv6Network | None = None
    ) -> IPv6Interface: ...

    @overload
    async def claim(self, container_id: str, address: IPv4Interface) -> IPv4Interface: ...

    @overload
    async def claim(self, container_id: str, address: IPv6Interface) -> IPv6Interface: ...

    async def release(
        self, container_id: str, only: list[IPAddress] | None = None
    ) -> list[IPAddress]: ...

    def holders(self, prefix: str = "") -> dict[str, list[str]]: ...


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key) or ""
    if not isinstance(value, str):
        raise PluginError(f"bad request: {key} must be a string")
    return value


def parse_pool(pool: str, sub_pool: str, allocation_range: Network, default: Network) -> Network:
    """The subnet a network's pool stands for, of the family of ``allocation_range`` (pure)."""
    if sub_pool:
        raise PluginError("meshnet IPAM does not support --ip-range: give the network a --subnet")
    if not pool:
        return default
    try:
        subnet = ip_network(pool)
    except ValueError as e:
        raise PluginError(str(bad_address(pool, why(pool, e, ipv6=True)))) from None
    family = allocation_range.version
    if subnet.version != family:
        raise PluginError(
            str(
                bad_address(
                    pool, f"not an IPv{family} subnet, where Docker asks for an IPv{family} pool"
                )
            )
        )
    if not _inside(subnet, allocation_range):
        raise PluginError(
            f"subnet {subnet} is outside meshnet's allocation range {allocation_range}"
        )
    if subnet.num_addresses < 4:
        raise PluginError(f"subnet {subnet} is too small")
    return subnet


def _inside(subnet: Network, allocation_range: Network) -> bool:
    if isinstance(subnet, IPv4Network) and isinstance(allocation_range, IPv4Network):
        return subnet.subnet_of(allocation_range)
    if isinstance(subnet, IPv6Network) and isinstance(allocation_range, IPv6Network):
        return subnet.subnet_of(allocation_range)
    return False


def pool_family(pool_id: str) -> int:
    """The family of a pool id the driver made (4 or 6); ``unknown pool`` for anything else."""
    try:
        return ip_network(pool_id).version
    except ValueError:
        raise PluginError(f"unknown pool {pool_id!r}") from None


def parse_pool_id(pool_id: str, allocation_range: Network) -> Network:
    """The subnet a pool id names, if it lies in ``allocation_range`` (pure)."""
    try:
        subnet = ip_network(pool_id)
    except ValueError:
        raise PluginError(f"unknown pool {pool_id!r}") from None
    if not _inside(subnet, allocation_range):
        raise PluginError(f"unknown pool {pool_id!r}")
    return subnet


def parse_address(address: str) -> IPAddress:
    try:
        return ip_interface(address).ip  # Docker sends "10.32.0.5", sometimes with a length
    except ValueError as e:
        raise PluginError(str(bad_address(address, why(address, e, ipv6=True)))) from None


class IpamDriver:
    """The ``/IpamDriver.*`` handlers; each takes the request's JSON and returns the answer's."""

    def __init__(self, ipam: Ipam, *, token: Callable[[], str] = lambda: secrets.token_hex(8)):
        self.ipam = ipam
        self._token = token

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {
            "/IpamDriver.GetCapabilities": self.get_capabilities,
            "/IpamDriver.GetDefaultAddressSpaces": self.get_default_address_spaces,
            "/IpamDriver.RequestPool": self.request_pool,
            "/IpamDriver.ReleasePool": self.release_pool,
            "/IpamDriver.RequestAddress": self.request_address,
            "/IpamDriver.ReleaseAddress": self.release_address,
        }

    async def _ring(self, family: int) -> IpamSettings:
        """The settings of the ring of ``family`` (the IPv6 one's once it exists)."""
        if family == 4:
            return self.ipam.config
        if self.ipam.ipv6 is None:
            raise PluginError(NO_IPV6)
        return await self.ipam.ring6()

    async def _pool(self, body: dict[str, Any]) -> Network:
        pool_id = _text(body, "PoolID")
        family = pool_family(pool_id)
        if family == 6 and self.ipam.ipv6 is None:
            raise PluginError(f"unknown pool {pool_id!r}")
        return parse_pool_id(pool_id, (await self._ring(family)).range)

    def get_capabilities(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    def get_default_address_spaces(self, _: dict[str, Any]) -> dict[str, Any]:
        return {
            "LocalDefaultAddressSpace": LOCAL_ADDRESS_SPACE,
            "GlobalDefaultAddressSpace": GLOBAL_ADDRESS_SPACE,
        }

    async def request_pool(self, body: dict[str, Any]) -> dict[str, Any]:
        pool, sub_pool = _text(body, "Pool"), _text(body, "SubPool")
        family = 6 if body.get("V6") else 4
        ring = await self._ring(family)
        subnet = parse_pool(pool, sub_pool, ring.range, ring.subnet)
        # Without a --subnet, libnetwork checks a local network's pool against the host's
        # routes and asks again while it overlaps one, forever (requestPoolHelper in moby's
        # libnetwork/network.go): the bridge's own route to the range (DNS, `meshnet expose`)
        # always does. "0.0.0.0/0" is the pool it skips that check for; addresses still come
        # from the subnet that the pool id names. The check reads IPv4 routes only
        # (netutils.CheckRouteOverlaps): an IPv6 pool is answered as itself.
        shown = str(subnet) if pool or family == 6 else "0.0.0.0/0"
        log.info("docker: IPv%d pool %s", family, subnet)
        return {"PoolID": str(subnet), "Pool": shown, "Data": {}}

    async def release_pool(self, body: dict[str, Any]) -> dict[str, Any]:
        await self._pool(body)
        return {}  # its addresses were released one by one (other networks may share it)

    async def request_address(self, body: dict[str, Any]) -> dict[str, Any]:
        subnet = await self._pool(body)
        wanted = _text(body, "Address")
        options = body.get("Options") or {}
        gateway = isinstance(options, dict) and options.get("RequestAddressType") == GATEWAY_REQUEST
        owner = OWNER_PREFIX + ("gw-" if gateway else "") + self._token()
        got: IPv4Interface | IPv6Interface
        if wanted:
            ip = parse_address(wanted)
            if ip not in subnet:
                raise PluginError(f"{ip} is not in the network's subnet {subnet}")
            if isinstance(ip, IPv4Address):
                got = await self.ipam.claim(owner, IPv4Interface((ip, subnet.prefixlen)))
            else:
                got = await self.ipam.claim(owner, IPv6Interface((ip, subnet.prefixlen)))
        elif isinstance(subnet, IPv4Network):
            got = await self.ipam.allocate(owner, subnet)
        else:
            got = await self.ipam.allocate6(owner, subnet)
        log.info("docker: %s %s for the plugin", "gateway" if gateway else "address", got)
        return {"Address": f"{got.ip}/{subnet.prefixlen}", "Data": {}}

    async def release_address(self, body: dict[str, Any]) -> dict[str, Any]:
        await self._pool(body)
        ip = parse_address(_text(body, "Address"))
        for owner, addresses in self.ipam.holders(OWNER_PREFIX).items():
            if ip in map(ip_address, addresses):
                await self.ipam.release(owner, [ip])
                log.info("docker: released %s", ip)
                return {}
        log.info("docker: release of %s: not held by the plugin (already released)", ip)
        return {}
