"""What a Docker container's life means for meshnet: pure decisions, no I/O.

Three kinds of Docker containers are on the overlay:

* attached by meshnet (``meshnet attach ID``, ``meshnet run``, or automatically because of a
  ``meshnet.cidr`` label or a ``MESHNET_CIDR`` variable): IPAM holds their addresses as
  ``docker:<id>`` and DNS names them after the container, keyed by its id;
* on a ``docker network create -d meshnet`` network: Docker asks the IPAM plugin for the
  address and gives it back itself; DNS names them after the container, keyed by its id;
* attached by namespace or PID like any other namespace: nothing here concerns them.

Keying everything by the container's id (never by its namespace, which is gone once it dies)
is what lets a ``die`` event — or, after a restart, a reconciliation against the running
containers — release addresses and names without remembering anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from meshnet.constants import CONTAINER_IFNAME
from meshnet.integrations.docker.objects import ContainerInfo, Event, NetworkInfo, is_full_id
from meshnet.integrations.docker.settings import PLUGIN_NAME

CIDR_LABEL = "meshnet.cidr"
CIDR_ENV = "MESHNET_CIDR"
OWNER_PREFIX = "docker:"
#: Events after which a container is gone (``destroy`` too, in case ``die`` was missed).
GONE = frozenset({"die", "destroy"})


@dataclass(frozen=True)
class Attach:
    """Put a running container on the overlay with these address specs (none: IPAM's)."""

    container: str
    name: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class Register:
    """Name a container on a meshnet network after itself, for the addresses Docker gave it."""

    container: str
    name: str
    addresses: tuple[str, ...]  # bare IPs


@dataclass(frozen=True)
class Unregister:
    """Remove a container's names for some addresses (it left a meshnet network)."""

    container: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class Forget:
    """The container is gone: release its addresses and remove its names."""

    container: str


Action = Attach | Register | Unregister | Forget


def ipam_owner(container_id: str, ifname: str = CONTAINER_IFNAME) -> str:
    """IPAM's key for a container attached by meshnet (per interface beyond ``ethwe``)."""
    return OWNER_PREFIX + container_id + ("" if ifname == CONTAINER_IFNAME else f"/{ifname}")


def owner_container(owner: str) -> str | None:
    """The container id in an IPAM key made by ``ipam_owner``, or None if it is not one."""
    if not owner.startswith(OWNER_PREFIX):
        return None
    container = owner.removeprefix(OWNER_PREFIX).split("/", 1)[0]
    return container if is_full_id(container) else None


def wanted_addresses(info: ContainerInfo) -> tuple[str, ...] | None:
    """The address specs a container asks to be attached with (label first, then env).

    None: it does not ask. An empty value asks for an address from the default subnet;
    ``none`` opts out. Specs are separated by spaces or commas: ``net:10.40.0.0/16 ip:...``.
    """
    value = info.labels.get(CIDR_LABEL)
    if value is None:
        value = info.env_value(CIDR_ENV)
    if value is None:
        return None
    specs = tuple(s for s in re.split(r"[\s,]+", value.strip()) if s)
    if specs == ("none",):
        return None
    return specs


def _ip(cidr: str) -> str:
    return cidr.split("/", 1)[0]


def meshnet_addresses(info: ContainerInfo, meshnet_networks: Iterable[str]) -> tuple[str, ...]:
    """The container's addresses on meshnet-driver networks (given by their ids), both families."""
    networks = set(meshnet_networks)
    return tuple(_ip(a) for e in info.endpoints if e.network_id in networks for a in e.addresses)


def on_running(info: ContainerInfo, meshnet_networks: Iterable[str]) -> list[Action]:
    """A container that started (or was found running): attach it, name it, or nothing."""
    if not info.running:
        return [Forget(info.id)]
    actions: list[Action] = []
    wanted = wanted_addresses(info)
    if wanted is not None:
        actions.append(Attach(info.id, info.name, wanted))
    addresses = meshnet_addresses(info, meshnet_networks)
    if addresses:
        actions.append(Register(info.id, info.name, addresses))
    return actions


def needs_inspection(event: Event) -> bool:
    """Whether an event may change what meshnet does (so the container is worth inspecting)."""
    if event.type == "container":
        return event.action == "start"
    return event.action == "connect" and event.attributes.get("type") == PLUGIN_NAME


def on_event(event: Event) -> list[Action]:
    """What an event means without inspecting anything (gone containers cannot be)."""
    container = event.container
    if container is None or not is_full_id(container):
        return []
    if event.type == "container" and event.action in GONE:
        return [Forget(container)]
    return []


def is_meshnet_network(network: NetworkInfo) -> bool:
    return network.driver == PLUGIN_NAME


def reconcile(
    running: Iterable[ContainerInfo],
    meshnet_networks: Iterable[str],
    owners: Iterable[str],
    named: Iterable[str],
) -> list[Action]:
    """Everything to do after (re)connecting to Docker, having missed any number of events.

    ``owners``: IPAM's keys with addresses here; ``named``: the containers our DNS records are
    for. Containers that are not running any more are forgotten; running ones are handled as
    if they had just started (attaching and naming are idempotent).
    """
    networks = list(meshnet_networks)
    alive = {c.id: c for c in running if c.running}
    actions: list[Action] = []
    for info in sorted(alive.values(), key=lambda c: c.id):
        actions.extend(on_running(info, networks))
    gone = {c for c in map(owner_container, owners) if c is not None}
    gone |= {c for c in named if is_full_id(c)}
    actions.extend(Forget(c) for c in sorted(gone - set(alive)))
    return actions


def orphaned_plugin_addresses(
    held: dict[str, list[str]], networks: Iterable[NetworkInfo]
) -> list[str]:
    """IPAM keys of the plugin whose addresses no meshnet network uses any more.

    ``held``: plugin key -> its addresses (bare IPs), as IPAM had them when the daemon started;
    Docker gives addresses back through the plugin, so these leak only while the daemon was down
    (a container removed then: Docker's ReleaseAddress found no plugin). Endpoints and gateways
    of every meshnet-IPAM network count as used.
    """
    used: set[IPv4Address | IPv6Address] = set()
    for network in networks:
        used.update(_parsed(a) for a in network.addresses + network.gateways)
    return sorted(
        key for key, addresses in held.items() if not used.intersection(map(_parsed, addresses))
    )


def _parsed(cidr: str) -> IPv4Address | IPv6Address:
    """An address as IPAM and Docker may both write it (IPv6 in any of its spellings)."""
    return ip_address(_ip(cidr))
