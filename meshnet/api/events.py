"""Changes between two reports, as events: what `/events` streams and the TUI's event log shows.

Deriving events from snapshots (instead of hooking every subsystem) keeps them honest: an event
is exactly a difference a user could have seen between two `meshnet report` runs.
"""

from __future__ import annotations

from typing import Any

Event = dict[str, Any]


def diff(before: dict[str, Any] | None, after: dict[str, Any]) -> list[Event]:
    """The events that turn report ``before`` into ``after`` (none for the first report)."""
    if before is None:
        return []
    now = after.get("time", 0.0)
    events: list[Event] = []

    def add(kind: str, text: str, **fields: Any) -> None:
        events.append({"time": now, "kind": kind, "text": text, **fields})

    old_peers = {p["name"]: p for p in before.get("peers", [])}
    new_peers = {p["name"]: p for p in after.get("peers", [])}
    for name in sorted(new_peers.keys() - old_peers.keys()):
        add("peer_joined", f"peer {new_peers[name]['nickname']} ({name}) joined", peer=name)
    for name in sorted(old_peers.keys() - new_peers.keys()):
        add("peer_left", f"peer {old_peers[name]['nickname']} ({name}) left", peer=name)
    for name in sorted(old_peers.keys() & new_peers.keys()):
        old, new = old_peers[name], new_peers[name]
        if new.get("local"):
            continue
        if old.get("reachable") != new.get("reachable"):
            state = "reachable" if new.get("reachable") else "unreachable"
            add(f"peer_{state}", f"peer {new['nickname']} is {state}", peer=name)
        elif new.get("reachable") and old.get("via") != new.get("via"):
            route = "direct" if not new.get("via") else "via " + ", ".join(new["via"])
            add("route_changed", f"route to {new['nickname']}: {route}", peer=name)

    old_conns = _established(before)
    new_conns = _established(after)
    for peer in sorted(new_conns.keys() - old_conns.keys()):
        c = new_conns[peer]
        add(
            "connection_up",
            f"connection to {c['nickname']} ({c['address']}) established",
            peer=peer,
        )
    for peer in sorted(old_conns.keys() - new_conns.keys()):
        c = old_conns[peer]
        add("connection_down", f"connection to {c['nickname']} ({c['address']}) lost", peer=peer)

    old_paths = _paths(before)
    for peer, path in sorted(_paths(after).items()):
        was = old_paths.get(peer)
        if was is not None and was["state"] != path["state"]:
            add(
                "path_changed",
                f"UDP path to {path.get('nickname', peer)}: {path['state']}",
                peer=peer,
                state=path["state"],
            )

    old_containers = _containers(before)
    new_containers = _containers(after)
    for key in sorted(new_containers.keys() - old_containers.keys()):
        c = new_containers[key]
        add(
            "container_attached",
            f"container {key} attached {' '.join(c['addresses'])}",
            container=key,
        )
    for key in sorted(old_containers.keys() - new_containers.keys()):
        add("container_detached", f"container {key} detached", container=key)
    return events


def _established(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        c["peer"]: c
        for c in report.get("connections", [])
        if c.get("state") == "established" and c.get("peer")
    }


def _paths(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    dataplane = report.get("dataplane") or {}
    paths: dict[str, dict[str, Any]] = dataplane.get("paths", {})
    return paths


def _containers(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"{c['namespace']}/{c['ifname']}": {"addresses": list(c.get("addresses", []))}
        for c in report.get("containers", [])
    }
