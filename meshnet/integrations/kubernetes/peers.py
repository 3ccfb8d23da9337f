"""Peers from Kubernetes, without I/O: parse the node list, decide whom to dial and reclaim.

A node is a peer whose nickname is the node's name (the entrypoint launches with
``--nickname NODE``). While a node's router is in the mesh, every router remembers which peer
name it has; the router's own topology forgets an unreachable peer's nickname, so this memory
(kept in the state directory) is what lets the cluster reclaim the address space of a node that
was deleted while its router was down.

``decide`` is the reconciler: the node list, the mesh as the router reports it and that memory
go in; targets to connect and forget, peers to reclaim and the new memory come out.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshnet.errors import UserError

_SEPARATORS = re.compile(r"[\s,]+")


class NodeListError(Exception):
    """The API server's answer is not a node list we can read (its fault, not the user's)."""


@dataclass(frozen=True)
class KubeNode:
    """One entry of the node list: its name and the first InternalIP (None: it has none)."""

    name: str
    address: str | None


@dataclass(frozen=True)
class MeshPeer:
    """A peer as the router reports it (``/status/peers``)."""

    name: str  # aa:bb:cc:dd:ee:ff
    nickname: str
    reachable: bool
    local: bool = False


@dataclass(frozen=True)
class Decision:
    """What to do now: dial, stop dialling, reclaim; and what to remember afterwards."""

    connect: tuple[str, ...] = ()
    forget: tuple[str, ...] = ()
    rmpeer: tuple[str, ...] = ()  # peer names; only the leader gets any
    remembered: Mapping[str, str] = field(default_factory=dict)  # peer name -> node name


def parse_peer_list(text: str) -> tuple[str, ...]:
    """``MESHNET_PEERS``: addresses separated by commas and/or spaces, in order, no repeats."""
    out: list[str] = []
    for item in _SEPARATORS.split(text.strip()):
        if item and item not in out:
            out.append(item)
    return tuple(out)


def parse_node_list(data: Any) -> tuple[KubeNode, ...]:
    """A ``NodeList`` (``GET /api/v1/nodes``) as decoded JSON; NodeListError if it is not one."""
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise NodeListError("the API server's answer is not a NodeList (no items)")
    nodes = []
    for item in data["items"]:
        try:
            name = item["metadata"]["name"]
            addresses = (item.get("status") or {}).get("addresses") or []
        except (TypeError, KeyError, AttributeError):
            raise NodeListError("a node in the list has no metadata.name") from None
        if not isinstance(name, str) or not name or not isinstance(addresses, list):
            raise NodeListError(f"malformed node in the list: {name!r}")
        nodes.append(KubeNode(name, _internal_ip(addresses)))
    return tuple(sorted(nodes, key=lambda n: n.name))


def _internal_ip(addresses: list[Any]) -> str | None:
    """The node's first InternalIP, an IPv4 one if it has both (dual-stack)."""
    found = []
    for entry in addresses:
        if not isinstance(entry, dict) or entry.get("type") != "InternalIP":
            continue
        try:
            found.append(ipaddress.ip_address(str(entry.get("address"))))
        except ValueError:
            continue
    found.sort(key=lambda ip: ip.version)  # stable: IPv4 first, else the listed order
    return str(found[0]) if found else None


def target(address: str, port: int) -> str:
    """The address the router dials for a node: ``10.0.0.1:6783``, ``[fd00::1]:6783``."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def peer_targets(nodes: Iterable[KubeNode], me: str, port: int) -> tuple[str, ...]:
    """Every other node's router, at its InternalIP (a node without one cannot be dialled)."""
    return tuple(target(n.address, port) for n in nodes if n.name != me and n.address)


def decide(
    me: str,
    nodes: Iterable[KubeNode],
    port: int,
    *,
    dialled: Iterable[str],
    peers: Iterable[MeshPeer],
    owners: Iterable[str],
    remembered: Mapping[str, str],
) -> Decision:
    """One look at the cluster.

    ``dialled``: the targets we added from earlier lists; ``owners``: the peers owning address
    space (``/status/ipam``); ``remembered``: peer name -> node name from earlier looks.

    A peer is gone when its node left the list, or when its node now runs another peer (its
    state was wiped) that is reachable while this one is not. A gone peer still reachable is left
    alone (rmpeer would be refused: its router still runs); an unreachable one still owning space
    is reclaimed by the leader only, the lowest-named listed node whose router we reach (rmpeer
    is idempotent: two leaders in a split view hand the space to the same heir); one owning
    nothing is forgotten. A list without our own node is not trusted to remove anything: it is a
    lagging or wrong answer, since this pod runs on that node.
    """
    listed = {n.name: n for n in nodes}
    peers = [p for p in peers if not p.local]
    owning = set(owners)
    wanted = set(peer_targets(listed.values(), me, port))
    dialled = set(dialled)
    trusted = me in listed

    memory = dict(remembered)
    for p in peers:
        if p.nickname in listed and p.nickname != me:
            memory[p.name] = p.nickname
    reachable = {p.name for p in peers if p.reachable}
    running = {p.nickname for p in peers if p.reachable}  # nodes whose router answers
    if not trusted:
        return Decision(connect=tuple(sorted(wanted - dialled)), remembered=memory)

    def gone(peer: str, node: str) -> bool:
        if node not in listed:
            return True
        replaced = any(p.nickname == node and p.name != peer and p.reachable for p in peers)
        return replaced and peer not in reachable

    leader = min(name for name in listed if name == me or name in running)
    reclaim = []
    for peer, node in sorted(memory.items()):
        if not gone(peer, node) or peer in reachable:
            continue
        if peer in owning:
            if leader == me:
                reclaim.append(peer)
        else:
            del memory[peer]  # reclaimed (by us or another) or never owned anything
    return Decision(
        connect=tuple(sorted(wanted - dialled)),
        forget=tuple(sorted(dialled - wanted)),
        rmpeer=tuple(reclaim),
        remembered=memory,
    )


def node_name(text: str | None, fallback: str) -> str:
    """``MESHNET_NODE_NAME`` (the downward API's ``spec.nodeName``), else the host name."""
    name = (text or "").strip() or fallback.lower()
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name) or len(name) > 253:
        raise UserError(f"bad node name {name!r}: expected a Kubernetes node name (RFC 1123)")
    return name
