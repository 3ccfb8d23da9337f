"""`meshnet report`: everything a running router knows, as tables, JSON or a template."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from meshnet.api.client import ApiClient
from meshnet.cli.common import api_socket_option, ports_text
from meshnet.cli.output import console
from meshnet.errors import UserError
from meshnet.tui.model import PEER_COLUMNS, format_bytes, peer_rows


@click.command()
@api_socket_option
@click.option("--json", "as_json", is_flag=True, help="The whole report as JSON.")
@click.option(
    "--format",
    "template",
    metavar="TEMPLATE",
    default=None,
    help="Print TEMPLATE filled from the report, Python format style, e.g. "
    "'{router[nickname]} has {router[peers]} peers' (\\n and \\t are understood).",
)
def report(api_socket: Path, as_json: bool, template: str | None) -> None:
    """Show everything the router knows: peers, connections, routes, traffic, IPAM, DNS."""
    if as_json and template is not None:
        raise click.UsageError("--json and --format exclude each other")
    data = ApiClient(api_socket).get("/report")
    if as_json:
        click.echo(json.dumps(data, indent=2))
    elif template is not None:
        click.echo(fill_template(template, data))
    else:
        print_report(data)


def fill_template(template: str, data: dict[str, Any]) -> str:
    """``template`` with ``{key[sub]}`` fields filled from the report; a bad field: UserError."""
    template = template.replace("\\n", "\n").replace("\\t", "\t")
    try:
        return template.format_map(data)
    except (KeyError, IndexError) as e:
        raise UserError(f"--format: the report has no {e}") from None
    except (ValueError, AttributeError, TypeError) as e:
        raise UserError(f"--format: {e}") from None


def print_report(data: dict[str, Any]) -> None:
    out = console()
    router = data["router"]
    connections = router["connections"]
    rows = [
        ("Version", data.get("version", "")),
        ("Name", f"{router['name']} ({router['nickname']})"),
        ("Encryption", "enabled" if router["encryption"] else "disabled"),
        ("Peers", str(router["peers"])),
        ("Connections", ", ".join(f"{n} {s}" for s, n in sorted(connections.items())) or "0"),
        ("Uptime", _duration(router["uptime"])),
        ("Ports", ports_text(router)),
    ]
    for key, value in rows:
        out.print(f"{key:>12}: {value}", highlight=False)

    table = Table(title="Peers", title_justify="left")
    for column in PEER_COLUMNS:
        table.add_column(column)
    for row in peer_rows(data):
        table.add_row(*row.cells())
    out.print(table)

    dataplane = data.get("dataplane")
    if dataplane:
        fwd = dataplane["forwarding"]
        nick = {p["name"]: p["nickname"] for p in data["peers"]}
        table = Table(title="Traffic", title_justify="left")
        for column in ("peer", "sent", "received", "relayed"):
            table.add_column(column, justify="left" if column == "peer" else "right")
        for peer in sorted({*fwd["sent"], *fwd["received"], *fwd["relayed"]}):
            cells = [
                f"{format_bytes(fwd[d][peer]['bytes'])} ({fwd[d][peer]['datagrams']})"
                if peer in fwd[d]
                else "-"
                for d in ("sent", "received", "relayed")
            ]
            table.add_row(f"{nick.get(peer, peer)} (sleeve)", *cells)
        vxlan = (dataplane.get("fastdp") or {}).get("traffic")
        if vxlan:  # counted by the kernel's VXLAN device, for all fastdp peers together
            sent, received = (format_bytes(vxlan[k]) for k in ("tx_bytes", "rx_bytes"))
            table.add_row("fastdp (all peers)", sent, received, "-")
        out.print(table)
        drops = fwd.get("dropped") or {}
        out.print(
            "Drops: " + (", ".join(f"{r} {n}" for r, n in sorted(drops.items())) or "none"),
            highlight=False,
        )

    if data.get("containers"):
        table = Table(title="Containers", title_justify="left")
        for column in ("container", "interface", "MAC", "addresses"):
            table.add_column(column)
        for c in data["containers"]:
            table.add_row(c["namespace"], c["ifname"], c["mac"], " ".join(c["addresses"]))
        out.print(table)

    ipam = data.get("ipam")
    if ipam:
        table = Table(title=f"IPAM {ipam.get('range', '')}", title_justify="left")
        for column in ("peer", "size", "in use", "free", "reachable"):
            table.add_column(column)
        for p in ipam.get("peers", []):
            table.add_row(
                p.get("nickname", "") + (" (here)" if p.get("local") else ""),
                str(p.get("size", "")),
                str(p.get("in_use", "")),
                str(p.get("free", "")),
                "yes" if p.get("reachable") else "no",
            )
        out.print(table)

    dns = data.get("dns")
    if dns:
        records = [r for e in dns.get("entries", []) for r in e.get("records", [])]
        out.print(
            f"DNS: {dns.get('domain')} {dns.get('state')}, {len(records)} records",
            highlight=False,
        )


def _duration(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) + (
        f" (+{int(seconds // 86400)}d)" if seconds >= 86400 else ""
    )
