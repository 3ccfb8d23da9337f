"""The ``meshnet`` IPAM driver of libnetwork's remote IPAM protocol, over meshnet's IPAM.

Docker asks for a pool when a network is created (``RequestPool``), for the network's gateway
and for each endpoint's address (``RequestAddress``), and gives each address back itself
(``ReleaseAddress``) when the endpoint goes (``docker rm -f``, ``docker network disconnect``,
a container stopping). Only addresses travel in the protocol, no container ids, so each address
is held in meshnet's IPAM under a key of its own (``docker-ipam:<random>``) and found again by
address on release. A pool is a subnet of the allocation range (the default subnet if the
network names none); its id is the subnet itself, so several networks may share one pool and
releasing a pool frees nothing (every address was released before).

Protocol: https://github.com/moby/libnetwork/blob/master/docs/ipam.md
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Protocol

from meshnet.errors import UserError, bad_address, why

log = logging.getLogger("meshnet.docker")

OWNER_PREFIX = "docker-ipam:"
LOCAL_ADDRESS_SPACE = "meshnet"
GLOBAL_ADDRESS_SPACE = "meshnet-global"
GATEWAY_REQUEST = "com.docker.network.gateway"


class PluginError(UserError):
    """A request the plugin refuses; Docker shows the message to its user."""


class IpamSettings(Protocol):
    """The IPv4 ring's settings (the plugin hands out no IPv6 pools yet)."""

    @property
    def range(self) -> IPv4Network | IPv6Network: ...

    @property
    def subnet(self) -> IPv4Network | IPv6Network: ...


class Ipam(Protocol):
    """What the driver needs of ``meshnet.ipam.service.IpamService``."""

    @property
    def config(self) -> IpamSettings: ...

    async def allocate(
        self, container_id: str, subnet: IPv4Network | None = None
    ) -> IPv4Interface: ...

    async def claim(self, container_id: str, address: IPv4Interface) -> IPv4Interface: ...

    async def release(
        self, container_id: str, only: list[IPv4Address] | None = None
    ) -> list[IPv4Address | IPv6Address]: ...

    def holders(self, prefix: str = "") -> dict[str, list[str]]: ...


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key) or ""
    if not isinstance(value, str):
        raise PluginError(f"bad request: {key} must be a string")
    return value


def parse_pool(
    pool: str, sub_pool: str, allocation_range: IPv4Network, default: IPv4Network
) -> IPv4Network:
    """The subnet a network's pool stands for (pure)."""
    if sub_pool:
        raise PluginError("meshnet IPAM does not support --ip-range: give the network a --subnet")
    if not pool:
        return default
    try:
        subnet = IPv4Network(pool)
    except ValueError as e:
        raise PluginError(str(bad_address(pool, why(pool, e)))) from None
    if not subnet.subnet_of(allocation_range):
        raise PluginError(
            f"subnet {subnet} is outside meshnet's allocation range {allocation_range}"
        )
    if subnet.num_addresses < 4:
        raise PluginError(f"subnet {subnet} is too small")
    return subnet


def _ipv4(network: IPv4Network | IPv6Network) -> IPv4Network:
    if not isinstance(network, IPv4Network):
        raise PluginError("the IPAM configuration is not IPv4")  # (IpamService's never is)
    return network


def parse_pool_id(pool_id: str, allocation_range: IPv4Network) -> IPv4Network:
    try:
        subnet = IPv4Network(pool_id)
    except ValueError:
        raise PluginError(f"unknown pool {pool_id!r}") from None
    if not subnet.subnet_of(allocation_range):
        raise PluginError(f"unknown pool {pool_id!r}")
    return subnet


def parse_address(address: str) -> IPv4Address:
    try:
        return IPv4Interface(address).ip  # Docker sends "10.32.0.5", sometimes with a length
    except ValueError as e:
        raise PluginError(str(bad_address(address, why(address, e)))) from None


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

    @property
    def _range(self) -> IPv4Network:
        return _ipv4(self.ipam.config.range)

    def get_capabilities(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    def get_default_address_spaces(self, _: dict[str, Any]) -> dict[str, Any]:
        return {
            "LocalDefaultAddressSpace": LOCAL_ADDRESS_SPACE,
            "GlobalDefaultAddressSpace": GLOBAL_ADDRESS_SPACE,
        }

    def request_pool(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("V6"):
            raise PluginError("meshnet IPAM has IPv4 addresses only (drop --ipv6)")
        subnet = parse_pool(
            _text(body, "Pool"),
            _text(body, "SubPool"),
            self._range,
            _ipv4(self.ipam.config.subnet),
        )
        # Without a --subnet, libnetwork checks a local network's pool against the host's
        # routes and asks again while it overlaps one, forever (requestPoolHelper in moby's
        # libnetwork/network.go): the bridge's own route to the range (DNS, `meshnet expose`)
        # always does. "0.0.0.0/0" is the pool it skips that check for; addresses still come
        # from the subnet that the pool id names.
        pool = str(subnet) if body.get("Pool") else "0.0.0.0/0"
        return {"PoolID": str(subnet), "Pool": pool, "Data": {}}

    def release_pool(self, body: dict[str, Any]) -> dict[str, Any]:
        parse_pool_id(_text(body, "PoolID"), self._range)
        return {}  # its addresses were released one by one (other networks may share it)

    async def request_address(self, body: dict[str, Any]) -> dict[str, Any]:
        subnet = parse_pool_id(_text(body, "PoolID"), self._range)
        wanted = _text(body, "Address")
        options = body.get("Options") or {}
        gateway = isinstance(options, dict) and options.get("RequestAddressType") == GATEWAY_REQUEST
        owner = OWNER_PREFIX + ("gw-" if gateway else "") + self._token()
        if wanted:
            ip = parse_address(wanted)
            if ip not in subnet:
                raise PluginError(f"{ip} is not in the network's subnet {subnet}")
            got = await self.ipam.claim(owner, IPv4Interface(f"{ip}/{subnet.prefixlen}"))
        else:
            got = await self.ipam.allocate(owner, subnet)
        log.info("docker: %s %s for the plugin", "gateway" if gateway else "address", got)
        return {"Address": f"{got.ip}/{subnet.prefixlen}", "Data": {}}

    async def release_address(self, body: dict[str, Any]) -> dict[str, Any]:
        parse_pool_id(_text(body, "PoolID"), self._range)
        ip = parse_address(_text(body, "Address"))
        for owner, addresses in self.ipam.holders(OWNER_PREFIX).items():
            if str(ip) in addresses:
                await self.ipam.release(owner, [ip])
                log.info("docker: released %s", ip)
                return {}
        log.info("docker: release of %s: not held by the plugin (already released)", ip)
        return {}
