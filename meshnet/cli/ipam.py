"""`meshnet reset | rmpeer` and `meshnet status ipam`: the address ranges peers divide."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from meshnet.api.client import ApiClient
from meshnet.cli.common import api_socket_option, status_command
from meshnet.config import DEFAULT_STATE_DIR, default_state_dir
from meshnet.errors import UserError
from meshnet.integrations.docker.settings import DEFAULT_PLUGIN_DIR, PLUGIN_NAME


def _ipam_view(data: dict[str, Any]) -> RenderableType:
    """The IPv4 ring's table, and the IPv6 ring's under it (unless IPv6 is off)."""
    table = _ipam_table(data)
    ipv6 = data.get("ipv6")
    if ipv6 is None:
        return table
    if not ipv6["peers"]:
        where = ipv6["range"] or "a ULA /48 derived from the seed"
        return Group(table, Text(f"\nIPv6 ring: {where}, not divided yet (with the IPv4 ring)"))
    return Group(table, Text(""), _ring_table(ipv6, "IPv6 range", ipv6["consensus"]))


def _ipam_table(data: dict[str, Any]) -> Table:
    consensus = data["consensus"]
    if data["mode"] == "consensus" and consensus != "ready":
        consensus += f" (consensus of {data['consensus_size']})"
    elif data["mode"] == "seed":
        consensus += f" (seeded among {len(data['seed'])})"
    elif data["mode"] == "observer":
        consensus += " (observer)"
    table = _ring_table(data, "range", consensus)
    notes = [f"{data['allocated_here']} addresses in use here"]
    if data["leaving"]:
        notes.append("handing its ranges over (reset)")
    if data["refused_merges"]:
        notes.append(f"refused ring merges: {sum(data['refused_merges'].values())}")
    table.caption = "; ".join(notes)
    return table


def _ring_table(data: dict[str, Any], what: str, consensus: str) -> Table:
    table = Table(
        "peer",
        "nickname",
        "ranges",
        "addresses",
        "in use",
        "share",
        "reachable",
        box=None,
        title=f"{what} {data['range']}, default subnet {data['default_subnet']}, ring {consensus}",
    )
    for p in data["peers"]:
        ranges = p["ranges"]
        shown = ", ".join(ranges[:3]) + (f" (+{len(ranges) - 3})" if len(ranges) > 3 else "")
        table.add_row(
            p["name"] + (" (this peer)" if p["local"] else ""),
            p["nickname"],
            shown or "-",
            _count(p["size"]),
            str(p["in_use"]),
            f"{p['share']:.1%}",
            "yes" if p["reachable"] else "no (unreachable)",
        )
    table.caption = f"{data['allocated_here']} addresses in use here"
    return table


def _count(n: int) -> str:
    """An address count: exact up to 2^32 (every IPv4 range), as a power of two beyond (an IPv6
    share has 24-digit sizes; ``--json`` keeps them exact)."""
    if n <= 1 << 32:
        return str(n)
    if n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    return f"~2^{math.log2(n):.1f}"


status_ipam = status_command(
    "/status/ipam", _ipam_view, "The address ranges: who owns what, what is in use, consensus."
)


@click.command()
@click.option(
    "--force",
    is_flag=True,
    help="Even while containers here hold addresses (they are lost); and if the router is "
    "dead, remove what it left: bridge, VXLAN and TAP devices, nftables tables, its state.",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=None,
    envvar="MESHNET_STATE_DIR",
    show_envvar=True,
    help=f"The dead router's state directory (for --force)  [default: {DEFAULT_STATE_DIR}]",
)
@click.option(
    "--docker-plugin-dir",
    "plugin_dir",
    type=click.Path(path_type=Path),
    default=None,
    envvar="MESHNET_DOCKER_PLUGIN_DIR",
    show_envvar=True,
    help=f"Where its Docker plugin socket was (for --force)  [default: {DEFAULT_PLUGIN_DIR}]",
)
@click.option(
    "--no-docker",
    is_flag=True,
    envvar="MESHNET_NO_DOCKER",
    show_envvar=True,
    help="It ran with --no-docker: leave the Docker plugin directory alone (for --force).",
)
@api_socket_option
def reset(
    force: bool, state_dir: Path | None, plugin_dir: Path | None, no_docker: bool, api_socket: Path
) -> None:
    """Hand this peer's address ranges to a live peer, wait for its acknowledgement, and stop.

    Use it before removing a host for good; a peer that died without it is cleaned up from
    another host with `meshnet rmpeer`. With --force and no router answering on the API
    socket, clean this host up after it instead.
    """
    # Imported here: it pulls in pyroute2 and every owner's module (see below).
    from meshnet.node.cleanup import listening

    if not listening(api_socket):
        if not force:
            raise UserError(
                f"meshnet is not running (no router answers on {api_socket}); "
                "`meshnet reset --force` removes what a dead router left behind"
            )
        plugin_socket = (plugin_dir or DEFAULT_PLUGIN_DIR) / f"{PLUGIN_NAME}.sock"
        _clean_up_after_dead_router(
            state_dir or default_state_dir(), api_socket, None if no_docker else plugin_socket
        )
        return
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


def _clean_up_after_dead_router(
    state_dir: Path, api_socket: Path, plugin_socket: Path | None
) -> None:
    # Imported here: it pulls in pyroute2 and every owner's module, for this one case.
    from meshnet.gossip.identity import PEER_NAME_FILE
    from meshnet.node.cleanup import clean_up

    try:
        name = (state_dir / PEER_NAME_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    cleaned = clean_up(state_dir, api_socket, plugin_socket)
    click.echo(f"reset --force: no router answers on {api_socket}; cleaned up after it")
    click.echo(f"  links removed: {', '.join(cleaned.links) or 'none left'}")
    click.echo(f"  nftables tables removed: {', '.join(cleaned.tables) or 'none'}")
    click.echo(f"  state removed from {state_dir}: {', '.join(cleaned.files) or 'none left'}")
    if name:
        click.echo(
            f"  this host launches as a new peer; its addresses as {name} are reclaimed with "
            f"`meshnet rmpeer {name}` on another host"
        )
    if cleaned.failures:
        raise UserError("reset --force left: " + "; ".join(cleaned.failures))


@click.command()
@click.argument("peers", nargs=-1, required=True, metavar="NAME...")
@api_socket_option
def rmpeer(peers: tuple[str, ...], api_socket: Path) -> None:
    """Reclaim the address ranges of peers that are gone for good (NAME or nickname).

    Refused while a peer is reachable. Running it for the same peer on several hosts is
    safe: they all give its ranges to the same heir.
    """
    client = ApiClient(api_socket)
    failed = []
    for peer in peers:
        try:
            result = client.post("/ipam/rmpeer", {"peer": peer})
        except UserError as e:
            if len(peers) == 1:
                raise
            failed.append(f"{peer}: {e}")
            continue
        if result["heir"] is None:
            click.echo(f"{result['peer']}: owned no addresses")
        else:
            six = result.get("addresses6")
            extra = "" if not six else f" (and {six} IPv6 addresses)"
            click.echo(
                f"{result['peer']}: {result['addresses']} addresses{extra} reclaimed by "
                f"{result['heir']}"
            )
    if failed:
        raise UserError("; ".join(failed))
