"""The `meshnet` command.

A user's mistake prints one readable line on stderr and exits non-zero; `--debug` (or
MESHNET_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

import click

from meshnet import __version__
from meshnet.dns_commands import COMMANDS as DNS_COMMANDS  # also adds `status dns`
from meshnet.errors import MeshnetError
from meshnet.integrations.docker.commands import COMMANDS as DOCKER_COMMANDS  # `status docker`
from meshnet.lab.commands import lab
from meshnet.ramps_commands import COMMANDS as RAMPS_COMMANDS  # also adds `status ramps`
from meshnet.router_commands import (
    attach,
    connect,
    detach,
    forget,
    launch,
    ps,
    reset,
    rmpeer,
    status,
    stop,
)
from meshnet.tui_commands import COMMANDS as TUI_COMMANDS  # also adds `lab tui`


class _Settings:
    debug = bool(os.environ.get("MESHNET_DEBUG"))


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "--version", prog_name="meshnet", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
def cli(debug: bool) -> None:
    """meshnet: one virtual Ethernet for containers on every host.

    Every host runs a meshnet router; the routers find each other, gossip the topology and carry
    container traffic along the shortest path, encrypted when given a password.

    Try it on one machine with `meshnet lab up`, a set of simulated hosts in network namespaces.
    """
    if debug:
        _Settings.debug = True
    logging.basicConfig(
        level=logging.DEBUG if _Settings.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "httpcore", "hpack"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


for command in (launch, stop, status, connect, forget, attach, detach, ps, lab, reset, rmpeer):
    cli.add_command(command)
for command in DNS_COMMANDS:
    cli.add_command(command)
for command in TUI_COMMANDS:
    cli.add_command(command)
for command in DOCKER_COMMANDS:
    cli.add_command(command)
for command in RAMPS_COMMANDS:
    cli.add_command(command)


def _fail(message: str, code: int = 1) -> int:
    click.echo(f"meshnet: {message}", err=True)
    return code


def _first_meshnet_error(group: BaseExceptionGroup[BaseException]) -> MeshnetError | None:
    """The error to tell the user about, from inside trio's exception groups."""
    for e in group.exceptions:
        if isinstance(e, MeshnetError):
            return e
        if isinstance(e, BaseExceptionGroup):
            found = _first_meshnet_error(e)
            if found is not None:
                return found
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the command and turns every failure into one line and an exit code."""
    try:
        try:
            cli.main(args=argv, prog_name="meshnet", standalone_mode=False)
        except BaseExceptionGroup as group:
            error = _first_meshnet_error(group)
            if error is None:
                raise
            raise error from group
    except click.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
        return _fail(f"{e.format_message()}{hint}", e.exit_code)
    except click.ClickException as e:
        return _fail(e.format_message(), e.exit_code)
    except click.exceptions.Exit as e:
        return int(e.exit_code or 0)
    except (click.Abort, KeyboardInterrupt):
        return _fail("interrupted", 130)
    except MeshnetError as e:
        if _Settings.debug:
            traceback.print_exc()
        return _fail(str(e))
    except PermissionError as e:
        if _Settings.debug:
            traceback.print_exc()
        return _fail(f"permission denied: {e.filename or e} (run as root?)")
    except Exception as e:
        if _Settings.debug:
            traceback.print_exc()
            return 1
        return _fail(f"internal error: {type(e).__name__}: {e} (run with --debug for details)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
