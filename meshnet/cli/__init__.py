"""The `meshnet` command: the root group, every command group assembled in one place, and
``main``, which turns every failure into one line and an exit code.

One module per command group:

- ``launch``          launch, stop, connect, forget: the router and its peers
- ``launch_options``  the flags of `meshnet launch`, declared once
- ``status``          `meshnet status` and its subcommands about the router itself
- ``containers``      attach, detach, ps
- ``ipam``            reset, rmpeer, `status ipam`
- ``dns``             dns-add, dns-remove, dns-lookup, `status dns`
- ``ramps``           expose, hide, `status ramps`
- ``docker``          run, dns-args, `status docker`
- ``report``          everything a router knows, as tables, JSON or a template
- ``tui``             `meshnet tui` and `meshnet lab tui`
- ``lab``             `meshnet lab ...` over ``meshnet.lab``
- ``kube``            `meshnet kube run`: the Kubernetes DaemonSet's entrypoint
- ``common``          what they share: --api-socket, --json, the shape of a status subcommand
- ``output``          tables fitted to a terminal, or unwrapped when piped

Nothing registers itself with another module's group on import: this module adds every command,
and every `status` and `lab` subcommand that lives elsewhere. The commands talk to the daemon
through ``meshnet.api.client``. Start-up stays fast: no command module imports the daemon's
modules (trio, pyroute2, textual) before it runs.

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
from meshnet.cli import (
    containers,
    dns,
    docker,
    ipam,
    kube,
    lab,
    launch,
    ramps,
    report,
    status,
    tui,
)
from meshnet.errors import MeshnetError, first_meshnet_error


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


for command in (
    launch.launch,
    launch.stop,
    status.status,
    launch.connect,
    launch.forget,
    containers.attach,
    containers.detach,
    containers.ps,
    lab.lab,
    ipam.reset,
    ipam.rmpeer,
    dns.dns_add,
    dns.dns_remove,
    dns.dns_lookup,
    report.report,
    tui.tui,
    docker.run,
    docker.dns_args,
    ramps.expose,
    ramps.hide,
    kube.kube,
):
    cli.add_command(command)
status.status.add_command(ipam.status_ipam, "ipam")
status.status.add_command(dns.status_dns, "dns")
status.status.add_command(ramps.status_ramps, "ramps")
status.status.add_command(docker.status_docker, "docker")
lab.lab.add_command(tui.lab_tui, "tui")


def _fail(message: str, code: int = 1) -> int:
    click.echo(f"meshnet: {message}", err=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the command and turns every failure into one line and an exit code."""
    try:
        try:
            cli.main(args=argv, prog_name="meshnet", standalone_mode=False)
        except BaseExceptionGroup as group:
            error = first_meshnet_error(group)
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
