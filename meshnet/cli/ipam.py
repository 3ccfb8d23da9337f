"""`meshnet reset | rmpeer` and `meshnet status ipam`: the address ranges peers divide."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from meshnet.api.client import ApiClient
from meshnet.cli.common import api_socket_option, status_command
from meshnet.errors import UserError


def _ipam_table(data: dict[str, Any]) -> Table:
    consensus = data["consensus"]
    if data["mode"] == "consensus" and consensus != "ready":
        consensus += f" (consensus of {data['consensus_size']})"
    elif data["mode"] == "seed":
        consensus += f" (seeded among {len(data['seed'])})"
    elif data["mode"] == "observer":
        consensus += " (observer)"
    table = Table(
        "peer",
        "nickname",
        "ranges",
        "addresses",
        "in use",
        "share",
        "reachable",
        box=None,
        title=f"range {data['range']}, default subnet {data['default_subnet']}, ring {consensus}",
    )
    for p in data["peers"]:
        ranges = p["ranges"]
        shown = ", ".join(ranges[:3]) + (f" (+{len(ranges) - 3})" if len(ranges) > 3 else "")
        table.add_row(
            p["name"] + (" (this peer)" if p["local"] else ""),
            p["nickname"],
            shown or "-",
            str(p["size"]),
            str(p["in_use"]),
            f"{p['share']:.1%}",
            "yes" if p["reachable"] else "no (unreachable)",
        )
    notes = [f"{data['allocated_here']} addresses in use here"]
    if data["leaving"]:
        notes.append("handing its ranges over (reset)")
    if data["refused_merges"]:
        notes.append(f"refused ring merges: {sum(data['refused_merges'].values())}")
    table.caption = "; ".join(notes)
    return table


status_ipam = status_command(
    "/status/ipam", _ipam_table, "The address ranges: who owns what, what is in use, consensus."
)


@click.command()
@click.option(
    "--force", is_flag=True, help="Even while containers here hold addresses (they are lost)."
)
@api_socket_option
def reset(force: bool, api_socket: Path) -> None:
    """Hand this peer's address ranges to a live peer, wait for its acknowledgement, and stop.

    Use it before removing a host for good; a peer that died without it is cleaned up from
    another host with `meshnet rmpeer`.
    """
    # Imported here: it pulls in trio, which other commands' start-up must not pay for.
    from meshnet.ipam.service import HANDOVER_TIMEOUT

    client = ApiClient(api_socket, timeout=HANDOVER_TIMEOUT + 15)
    result = client.post("/ipam/reset", {"force": force})
    if not result["acknowledged"]:
        raise UserError(
            f"{result.get('nickname') or result['handed_to']} did not acknowledge the "
            f"hand-over within {HANDOVER_TIMEOUT:.0f}s; the router keeps running and re-sending "
            "it: run `meshnet reset` again"
        )
    deadline = time.monotonic() + 15
    while api_socket.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if result["handed_to"] is None:
        click.echo("reset: this peer owned no addresses; stopped")
    else:
        click.echo(
            f"reset: {result['addresses']} addresses handed over to {result['handed_to']} "
            f"({result['nickname']}); stopped"
        )


@click.command()
@click.argument("peer", metavar="NAME")
@api_socket_option
def rmpeer(peer: str, api_socket: Path) -> None:
    """Reclaim the address ranges of a peer that is gone for good (NAME or nickname).

    Refused while that peer is reachable. Running it for the same peer on several hosts is
    safe: they all give its ranges to the same heir.
    """
    result = ApiClient(api_socket).post("/ipam/rmpeer", {"peer": peer})
    if result["heir"] is None:
        click.echo(f"{result['peer']}: owned no addresses")
    else:
        click.echo(
            f"{result['peer']}: {result['addresses']} addresses reclaimed by {result['heir']}"
        )
