"""The ``meshnet`` network driver of libnetwork's remote driver protocol.

A container joining a meshnet network gets a veth pair made here, in the host's (and dockerd's)
network namespace: one end on the ``meshnet`` bridge with the overlay MTU, the other handed to
Docker by name (``SrcName``), which moves it into the container, names it ``ethwe<N>``
(``DstPrefix``) and configures the address IPAM gave the endpoint. ``DisableGatewayService``
keeps Docker from adding its ``docker_gwbridge`` network: like a container attached by meshnet,
it sees the overlay and nothing else. The pair is removed when the endpoint goes (and with the
container's namespace, by the kernel, if that comes first).

A network created with ``--ipv6`` (its ``IPv6Data``, a pool from the IPv6 ring) gives each
endpoint an IPv6 address beside its IPv4 one; Docker configures both (without DAD). The driver
answers no gateway for either family: the overlay is one flat Ethernet, each container reaches
its subnets on-link and nothing else, as with IPv4. The endpoint's addresses, as IPAM gave them,
go to the ramps with its port (``joined``), which isolate it with exactly those once Docker has
set them all.

The networks are local-scope: each host's dockerd has its own; create one with the same name on
every host (``docker network create -d meshnet --ipam-driver meshnet NAME``), and containers on
any of them share the one overlay.

Protocol: https://github.com/moby/libnetwork/blob/master/docs/remote.md
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable
from typing import Any

import trio

from meshnet.constants import CONTAINER_IFNAME
from meshnet.dataplane.kernel import netlink
from meshnet.dataplane.kernel.attach import random_mac
from meshnet.dataplane.sleeve.segments import segments_per_send
from meshnet.integrations.docker.ipamdriver import PluginError

log = logging.getLogger("meshnet.docker")

HOST_END_PREFIX = "vethwl"  # on the bridge
CONTAINER_END_PREFIX = "vethwg"  # until Docker moves it into the container and renames it
_ID = re.compile(r"^[0-9a-zA-Z]{12,128}$")


def veth_names(endpoint_id: str) -> tuple[str, str]:
    """The host end's and the container end's names for an endpoint (< IFNAMSIZ, unique)."""
    return HOST_END_PREFIX + endpoint_id[:9], CONTAINER_END_PREFIX + endpoint_id[:9]


def _id(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not _ID.match(value):
        raise PluginError(f"bad request: no valid {key}")
    return value


def endpoint_addresses(body: dict[str, Any]) -> tuple[str, ...]:
    """The addresses IPAM gave an endpoint (IPv4, then IPv6 if the network has it), as CIDRs."""
    interface = body.get("Interface") or {}
    found = []
    for key in ("Address", "AddressIPv6"):
        value = interface.get(key) if isinstance(interface, dict) else None
        if not value:
            continue
        try:
            found.append(str(ipaddress.ip_interface(value)))
        except (TypeError, ValueError):
            raise PluginError(f"bad request: Interface.{key} is not an address") from None
    return tuple(found)


def _pools(body: dict[str, Any], key: str) -> list[str]:
    data = body.get(key) or []
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise PluginError(f"bad request: {key} must be a list of objects")
    return [str(d.get("Pool") or "") for d in data]


def endpoint_mac(body: dict[str, Any]) -> str | None:
    """A MAC for the endpoint if Docker has none (it must not get one back if it gave one)."""
    interface = body.get("Interface")
    if interface is not None and not isinstance(interface, dict):
        raise PluginError("bad request: Interface must be an object")
    interface = interface or {}
    if not interface.get("Address"):
        raise PluginError(
            "the endpoint has no IPv4 address: create the network with --ipam-driver meshnet "
            "(or give it a --subnet)"
        )
    return None if interface.get("MacAddress") else random_mac()


class NetworkDriver:
    """The ``/NetworkDriver.*`` handlers; each takes the request's JSON and returns the answer's.

    ``mtu`` reads the data plane's overlay MTU at each join (it is known once the bridge is up);
    ``joined`` is told of each new port and the endpoint's addresses (the ramps adopt it for
    isolation).
    """

    def __init__(
        self,
        *,
        bridge: str,
        mtu: Callable[[], int],
        joined: Callable[[str, tuple[str, ...]], None] = lambda port, addresses: None,
    ) -> None:
        self.bridge = bridge
        self._mtu = mtu
        self._joined = joined
        self._netlink = trio.CapacityLimiter(1)
        self.networks: set[str] = set()
        self.endpoints: dict[str, str] = {}  # endpoint -> network
        self.addresses: dict[str, tuple[str, ...]] = {}  # endpoint -> what IPAM gave it

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {
            "/NetworkDriver.GetCapabilities": self.get_capabilities,
            "/NetworkDriver.CreateNetwork": self.create_network,
            "/NetworkDriver.DeleteNetwork": self.delete_network,
            "/NetworkDriver.CreateEndpoint": self.create_endpoint,
            "/NetworkDriver.EndpointOperInfo": self.endpoint_info,
            "/NetworkDriver.DeleteEndpoint": self.delete_endpoint,
            "/NetworkDriver.Join": self.join,
            "/NetworkDriver.Leave": self.leave,
            "/NetworkDriver.DiscoverNew": lambda _: {},
            "/NetworkDriver.DiscoverDelete": lambda _: {},
            # Port publishing has no meaning on the overlay; answering keeps Docker quiet.
            "/NetworkDriver.ProgramExternalConnectivity": lambda _: {},
            "/NetworkDriver.RevokeExternalConnectivity": lambda _: {},
        }

    def get_capabilities(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"Scope": "local", "ConnectivityScope": "local"}

    def create_network(self, body: dict[str, Any]) -> dict[str, Any]:
        network = _id(body, "NetworkID")
        pools = _pools(body, "IPv4Data") + _pools(body, "IPv6Data")
        self.networks.add(network)
        log.info("docker: network %s created (%s)", network[:12], ", ".join(pools) or "no pool")
        return {}

    def delete_network(self, body: dict[str, Any]) -> dict[str, Any]:
        network = _id(body, "NetworkID")
        self.networks.discard(network)
        log.info("docker: network %s deleted", network[:12])
        return {}

    def create_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        network, endpoint = _id(body, "NetworkID"), _id(body, "EndpointID")
        mac = endpoint_mac(body)
        self.endpoints[endpoint] = network
        self.addresses[endpoint] = endpoint_addresses(body)
        return {"Interface": {"MacAddress": mac}} if mac else {}

    def endpoint_info(self, body: dict[str, Any]) -> dict[str, Any]:
        _id(body, "EndpointID")
        return {"Value": {}}

    async def delete_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        endpoint = _id(body, "EndpointID")
        self.endpoints.pop(endpoint, None)
        self.addresses.pop(endpoint, None)
        await self._remove(endpoint)
        return {}

    async def join(self, body: dict[str, Any]) -> dict[str, Any]:
        endpoint = _id(body, "EndpointID")
        _id(body, "NetworkID")
        host, src = veth_names(endpoint)
        mtu = self._mtu()

        def make() -> None:
            with netlink.namespace(None) as ns:
                if not ns.has_link(self.bridge):
                    raise PluginError(f"no bridge {self.bridge}: is the meshnet router running?")
                ns.delete_link(host)  # left over from a join that failed halfway
                ns.delete_link(src)
                ns.create_veth_into(host, src, mtu=mtu, peer_gso_max_segs=segments_per_send(mtu))
                ns.set_master(host, self.bridge)
                ns.set_up(host)

        try:
            await trio.to_thread.run_sync(make, limiter=self._netlink)
        except netlink.NetlinkError as e:
            raise PluginError(f"cannot create the container's interface: {e}") from None
        log.info("docker: endpoint %s joins through %s (MTU %d)", endpoint[:12], host, mtu)
        self._joined(host, self.addresses.get(endpoint, ()))
        return {
            # Docker moves it into the container, named CONTAINER_IFNAME and a number (ethwe0...).
            "InterfaceName": {"SrcName": src, "DstPrefix": CONTAINER_IFNAME},
            "DisableGatewayService": True,
        }

    async def leave(self, body: dict[str, Any]) -> dict[str, Any]:
        await self._remove(_id(body, "EndpointID"))
        return {}

    async def _remove(self, endpoint: str) -> None:
        host, src = veth_names(endpoint)

        def remove() -> None:
            with netlink.namespace(None) as ns:
                ns.delete_link(host)  # takes its peer with it, wherever that is
                ns.delete_link(src)

        try:
            await trio.to_thread.run_sync(remove, limiter=self._netlink)
        except netlink.NetlinkError as e:
            log.warning("docker: cannot remove %s: %s", host, e)
