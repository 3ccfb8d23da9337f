"""`meshnet status` and its subcommands about the router itself: peers, connections, targets,
data plane. The other groups' status subcommands (ipam, dns, ramps, docker) live with their
commands and are added to this group in ``meshnet.cli``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from meshnet import __version__
from meshnet.api.client import ApiClient
from meshnet.cli.common import JSON_OPTION, api_socket_option, ports_text, status_command
from meshnet.cli.ramps import status_rows


@click.group(invoke_without_command=True)
@api_socket_option
@JSON_OPTION
@click.pass_context
def status(ctx: click.Context, api_socket: Path, as_json: bool) -> None:
    """Show the router: identity, encryption, peers, connections, targets."""
    ctx.obj = ApiClient(api_socket)
    if ctx.invoked_subcommand is not None:
        return
    data = ctx.obj.get("/status")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    connections = data["connections"]
    rows = [
        ("Version", __version__),
        ("Name", f"{data['name']} ({data['nickname']})"),
        ("Encryption", "enabled" if data["encryption"] else "disabled"),
        ("Peers", str(data["peers"])),
        (
            "Connections",
            f"{sum(connections.values())} ("
            + ", ".join(f"{n} {state}" for state, n in sorted(connections.items()))
            + ")"
            if connections
            else "0",
        ),
        ("Targets", str(len(data["targets"]))),
        ("Ports", ports_text(data)),
    ]
    rows += status_rows(data)  # what the host exposes, and isolation
    for key, value in rows:
        click.echo(f"{key:>12}: {value}")


def _peers_table(peers: list[dict[str, Any]]) -> Table:
    table = Table("peer", "nickname", "reachable", "route", "connections", box=None)
    for p in peers:
        if p["local"]:
            route = "(this peer)"
        elif not p["reachable"]:
            route = "-"
        elif p["via"]:
            route = "relayed via " + ", ".join(p["via"])
        elif any(c.get("punched") for c in local_connections(peers, p["name"])):
            route = "direct (punched)"
        else:
            route = "direct"
        conns = ", ".join(
            c["nickname"] + ("" if c["established"] else "?") for c in p["connections"]
        )
        table.add_row(
            p["name"], p["nickname"], "yes" if p["reachable"] else "no", route, conns or "-"
        )
    return table


def local_connections(peers: list[dict[str, Any]], peer: str) -> list[dict[str, Any]]:
    """Our own entry's connections to ``peer`` (a punched path is listed there)."""
    local = next((p for p in peers if p["local"]), None)
    return [c for c in (local or {}).get("connections", []) if c["peer"] == peer]


def _connections_table(conns: list[dict[str, Any]]) -> Table:
    table = Table(
        "", "address", "state", "udp", "path", "pmtu", "encrypted", "peer", "last error", box=None
    )
    for c in conns:
        peer = f"{c['peer']} ({c['nickname']})" if c["peer"] else "-"
        path = c.get("data_path") or {}
        table.add_row(
            "->" if c["direction"] == "outbound" else "<-",
            escape(c["address"]),  # "[fd00::2]:6783" is no markup
            c["state"],
            path.get("state", "-"),
            path.get("kind", "-"),
            str(path["pmtu"]) if "pmtu" in path else "-",
            "yes" if c["encrypted"] else "no",
            peer,
            c["last_error"] or "",
        )
    return table


def _targets_table(targets: list[dict[str, Any]]) -> Table:
    table = Table("address", "source", "state", "attempts", "peer", "last error", box=None)
    for t in targets:
        state = t["state"] + (f" (retry in {t['retry_in']:.0f}s)" if t["retry_in"] else "")
        table.add_row(
            escape(t["address"]),
            t["source"],
            state,
            str(t["attempts"]),
            t["peer"] or "-",
            t["last_error"] or "",
        )
    return table


def _dataplane_tables(data: dict[str, Any]) -> Table:
    table = Table(
        "peer",
        "udp path",
        "endpoint",
        "path",
        "pmtu",
        "rtt ms",
        "sent",
        "received",
        "relayed",
        box=None,
        title=f"bridge {data['bridge']}, overlay MTU {data['overlay_mtu']}, UDP {data['port']}"
        + _lanes(data["forwarding"].get("express_lanes", {})),
    )
    forwarding = data["forwarding"]

    def traffic(kind: str, peer: str) -> str:
        row = forwarding[kind].get(peer)
        return f"{row['datagrams']} dg, {row['bytes']} B" if row else "-"

    for peer, path in data["paths"].items():
        table.add_row(
            f"{peer} ({path['nickname']})",
            path["state"],
            escape(path.get("endpoint") or "-")
            + (" (NAT)" if path.get("nat_moved") else "")
            + (" (punched)" if path.get("punched") else ""),
            path["kind"] if path["kind"] == "fastdp" else f"sleeve (fastdp {path['fastdp']})",
            str(path["pmtu"]),
            str(path["rtt_ms"]) if path["rtt_ms"] is not None else "-",
            traffic("sent", peer),
            traffic("received", peer),
            traffic("relayed", peer),
        )
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(forwarding["dropped"].items()))
    fast = data["fastdp"]
    fastdp = f"fastdp on UDP {fast['port']}" if fast["enabled"] else f"fastdp {fast['reason']}"
    foreign = (fast.get("filter") or {}).get("foreign_dropped")
    if foreign is not None:
        fastdp += f" (from strangers: {foreign} dropped)"
    table.caption = (
        f"dropped: {dropped or 'none'}; MACs learned: {len(data['macs'])}; {fastdp}"
        + punch_summary(data.get("punch"))
    )
    return table


def punch_summary(punch: dict[str, Any] | None) -> str:
    """The NAT in front of us as our neighbours see it, and each peer we tried to punch to."""
    if not punch or punch.get("nat") in (None, "none"):
        return ""
    out = f"\nNAT: {punch['nat']}, seen as {escape(', '.join(punch['candidates'])) or '-'}"
    if punch.get("unpunchable"):
        out += f" ({punch['unpunchable']})"
    for peer, record in sorted(punch.get("peers", {}).items()):
        out += f"\n  {peer}: {record['state']}"
        if record["state"] == "relayed" and record.get("reason"):
            out += f": {record['reason']}; again in {record['retry_in']} s"
    return out


status.add_command(
    status_command("/status/peers", _peers_table, "Every peer in the mesh, and the route to it."),
    "peers",
)
status.add_command(
    status_command(
        "/status/connections", _connections_table, "This peer's connections and recent failures."
    ),
    "connections",
)
status.add_command(
    status_command("/status/targets", _targets_table, "Addresses this peer connects to."),
    "targets",
)
status.add_command(
    status_command(
        "/status/dataplane",
        _dataplane_tables,
        "Each peer's path (fastdp or sleeve), sleeve traffic, drops by reason.",
    ),
    "dataplane",
)


def _lanes(lanes: dict[str, Any]) -> str:
    """Which express lanes for small packets the kernel took (see kernel/lanes.py)."""
    on = [name for name in ("tap", "udp") if lanes.get(name)]
    return f", express lanes: {' and '.join(on)}" if on else ""
