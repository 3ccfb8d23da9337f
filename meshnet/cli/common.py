"""What every command group shares: the --api-socket and --json options, and the shape of a
`meshnet status NAME` subcommand (fetch one API path, print it as a table or as JSON)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import RenderableType

from meshnet.api.client import ApiClient
from meshnet.cli.output import console
from meshnet.config import DEFAULT_API_SOCKET, default_api_socket

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def api_socket_option(
    f: Callable[..., Any], *, names: tuple[str, ...] = ("--api-socket",)
) -> Callable[..., Any]:
    """The daemon's API socket, as the `api_socket` keyword argument."""
    return click.option(
        *names,
        "api_socket",
        type=click.Path(path_type=Path),
        default=default_api_socket,
        envvar="MESHNET_API_SOCKET",
        show_default=str(DEFAULT_API_SOCKET),
        help="The daemon's API socket (env MESHNET_API_SOCKET).",
    )(f)


def status_command(
    path: str,
    render: Callable[[dict[str, Any]], RenderableType] | Callable[[list[Any]], RenderableType],
    help: str,
) -> click.Command:
    """A `meshnet status NAME` subcommand: GET ``path`` and print ``render(data)`` (or JSON).

    It runs under the `status` group, whose context object is the ApiClient; its own hidden
    --api-socket lets the socket also be given after the subcommand's name, and --json may be
    given on either side of it (`status --json peers` or `status peers --json`).
    """

    @click.command(help=help)
    @JSON_OPTION
    @click.option("--api-socket", type=click.Path(path_type=Path), default=None, hidden=True)
    @click.pass_context
    def command(ctx: click.Context, as_json: bool, api_socket: Path | None) -> None:
        client: ApiClient = ctx.obj
        if api_socket is not None:
            client = ApiClient(api_socket)
        as_json = as_json or bool(ctx.parent is not None and ctx.parent.params.get("as_json"))
        data = client.get(path)
        if as_json:
            click.echo(json.dumps(data, indent=2))
        else:
            console().print(render(data))

    return command


def ports_text(router: dict[str, Any]) -> str:
    """What a firewall must open for this router (its status's ports), for status and report."""
    text = f"TCP+UDP {router['port']}"
    if router.get("fastdp_port") is not None:
        text += f", UDP {router['fastdp_port']} (fastdp)"
    return text
