"""What the Docker Engine answers, as frozen dataclasses: containers, networks and events.

Parsed by pure functions (``parse_*``), so the integration's decisions are tested without a
daemon; the client that asks is :mod:`meshnet.integrations.docker.engine`. A malformed answer is
the Engine's fault: ``DockerError``. The few fields read here have been stable since API 1.24.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshnet.errors import MeshnetError

#: Container names and ids as Docker accepts them (a name may come with its leading "/").
_CONTAINER_REF = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}$")
_FULL_ID = re.compile(r"^[0-9a-f]{64}$")


class DockerError(MeshnetError):
    """The Engine refused a request or answered something we cannot read."""


class DockerUnavailable(DockerError):
    """The Engine cannot be reached (not running, wrong --docker-host, permissions)."""


class NotFound(DockerError):
    """The Engine knows no such object (HTTP 404)."""


class NoSuchContainer(NotFound):
    """The Engine knows no container by that id or name."""


def is_container_ref(text: str) -> bool:
    """Could ``text`` name a Docker container (an id, a prefix of one, or a name)?"""
    return bool(_CONTAINER_REF.match(text))


def is_full_id(text: str) -> bool:
    return bool(_FULL_ID.match(text))


@dataclass(frozen=True)
class Endpoint:
    """A container's place on one Docker network."""

    network: str  # the network's name
    network_id: str
    endpoint_id: str
    address: str  # "10.32.0.5/12", or "" when Docker gave it none
    address6: str = ""  # "fd..::5/64" on a network created with --ipv6, else ""

    @property
    def addresses(self) -> tuple[str, ...]:
        """Its addresses, IPv4 first (CIDRs)."""
        return tuple(a for a in (self.address, self.address6) if a)


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str  # without Docker's leading "/"
    running: bool
    pid: int  # 0 unless running
    hostname: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    env: tuple[str, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()

    def env_value(self, key: str) -> str | None:
        """The value of ``KEY=value`` in the container's environment (the last one wins)."""
        found = None
        for entry in self.env:
            name, sep, value = entry.partition("=")
            if sep and name == key:
                found = value
        return found

    @property
    def namespace(self) -> str:
        """The container's network namespace, as the data plane takes it."""
        return f"/proc/{self.pid}/ns/net"


@dataclass(frozen=True)
class NetworkInfo:
    id: str
    name: str
    driver: str
    ipam_driver: str
    subnets: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()  # its endpoints' addresses, as "10.32.0.5/12" (IPv6 too)


@dataclass(frozen=True)
class Event:
    """One line of ``GET /events``: a container's or a network's."""

    type: str  # "container" | "network"
    action: str  # start, die, destroy, connect, disconnect, ...
    id: str  # the container's id; for network events the network's
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def container(self) -> str | None:
        """The container the event is about (network events name it in their attributes)."""
        if self.type == "container":
            return self.id
        return self.attributes.get("container")


def _str(obj: Mapping[str, Any], key: str, what: str, *, default: str | None = None) -> str:
    value = obj.get(key, default)
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise DockerError(f"the Engine's {what} has no valid {key!r}")
    return value


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DockerError(f"the Engine's {what} is not an object")
    return value


def _str_map(value: Any, what: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in _mapping(value, what).items() if v is not None}


def _cidr(entry: Mapping[str, Any], address: str, length: str) -> str:
    ip, prefix = entry.get(address) or "", entry.get(length) or 0
    return f"{ip}/{prefix}" if ip and isinstance(prefix, int) and prefix else ""


def parse_container(data: Any) -> ContainerInfo:
    """``GET /containers/{id}/json``."""
    obj = _mapping(data, "container")
    state = _mapping(obj.get("State"), "container state")
    config = _mapping(obj.get("Config"), "container config")
    settings = _mapping(obj.get("NetworkSettings"), "container network settings")
    running = state.get("Running") is True
    pid = state.get("Pid", 0)
    if not isinstance(pid, int) or pid < 0:
        raise DockerError("the Engine's container state has no valid 'Pid'")
    endpoints = []
    for name, entry in sorted(_mapping(settings.get("Networks"), "container networks").items()):
        entry = _mapping(entry, f"network {name}")
        endpoints.append(
            Endpoint(
                network=str(name),
                network_id=str(entry.get("NetworkID") or ""),
                endpoint_id=str(entry.get("EndpointID") or ""),
                address=_cidr(entry, "IPAddress", "IPPrefixLen"),
                address6=_cidr(entry, "GlobalIPv6Address", "GlobalIPv6PrefixLen"),
            )
        )
    env = config.get("Env") or []
    if not isinstance(env, list):
        raise DockerError("the Engine's container config has no valid 'Env'")
    return ContainerInfo(
        id=_str(obj, "Id", "container"),
        name=_str(obj, "Name", "container", default="").lstrip("/"),
        running=running,
        pid=pid if running else 0,
        hostname=_str(config, "Hostname", "container config", default=""),
        labels=_str_map(config.get("Labels"), "container labels"),
        env=tuple(str(e) for e in env),
        endpoints=tuple(endpoints),
    )


def parse_network(data: Any) -> NetworkInfo:
    """``GET /networks/{id}``."""
    obj = _mapping(data, "network")
    ipam = _mapping(obj.get("IPAM"), "network IPAM")
    configs = ipam.get("Config") or []
    if not isinstance(configs, list):
        raise DockerError("the Engine's network IPAM config is not a list")
    subnets, gateways = [], []
    for entry in configs:
        entry = _mapping(entry, "network IPAM config")
        if isinstance(entry.get("Subnet"), str) and entry["Subnet"]:
            subnets.append(entry["Subnet"])
        if isinstance(entry.get("Gateway"), str) and entry["Gateway"]:
            gateways.append(entry["Gateway"])
    addresses = []
    for entry in _mapping(obj.get("Containers"), "network containers").values():
        container = _mapping(entry, "network container")
        for key in ("IPv4Address", "IPv6Address"):
            address = container.get(key)
            if isinstance(address, str) and address:
                addresses.append(address)
    return NetworkInfo(
        id=_str(obj, "Id", "network"),
        name=_str(obj, "Name", "network", default=""),
        driver=_str(obj, "Driver", "network", default=""),
        ipam_driver=_str(ipam, "Driver", "network IPAM", default=""),
        subnets=tuple(subnets),
        gateways=tuple(gateways),
        addresses=tuple(sorted(addresses)),
    )


def parse_event(line: str | bytes) -> Event | None:
    """One line of the event stream; None for what is not a container or network event."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    kind = obj.get("Type")
    action = obj.get("Action")
    actor = obj.get("Actor")
    if kind not in ("container", "network") or not isinstance(action, str):
        return None
    if not isinstance(actor, dict) or not isinstance(actor.get("ID"), str):
        return None
    attributes = actor.get("Attributes")
    # Actions may carry details after a colon ("exec_start: sh"): only the verb matters here.
    return Event(
        type=kind,
        action=action.split(":", 1)[0].strip(),
        id=actor["ID"],
        attributes={str(k): str(v) for k, v in attributes.items()}
        if isinstance(attributes, dict)
        else {},
    )
