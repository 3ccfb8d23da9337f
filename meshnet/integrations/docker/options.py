"""The Docker flags of `meshnet launch`, kept here so the launch command only wires them in."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from meshnet.integrations.docker.settings import (
    DEFAULT_PLUGIN_DIR,
    DockerSettings,
    default_docker_host,
)

_OPTIONS = [
    click.option(
        "--docker-host",
        default=default_docker_host,
        show_default="$DOCKER_HOST or unix:///var/run/docker.sock",
        metavar="URL",
        help="The Docker Engine API: attach by container id, watch events, serve the plugin.",
    ),
    click.option(
        "--no-docker",
        is_flag=True,
        envvar="MESHNET_NO_DOCKER",
        help="Ignore Docker: no event watcher, no network or IPAM plugin (env MESHNET_NO_DOCKER).",
    ),
    click.option(
        "--docker-plugin-dir",
        type=click.Path(path_type=Path),
        default=DEFAULT_PLUGIN_DIR,
        envvar="MESHNET_DOCKER_PLUGIN_DIR",
        show_default=True,
        help="Where to put the plugin socket meshnet.sock for dockerd to find "
        "(env MESHNET_DOCKER_PLUGIN_DIR).",
    ),
    click.option(
        "--no-docker-plugin",
        is_flag=True,
        help="Watch Docker, but serve no network or IPAM plugin.",
    ),
]


def docker_launch_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Adds the options; the command receives them as ``docker_*`` keyword arguments."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def docker_settings(options: dict[str, Any]) -> DockerSettings:
    """The settings from the keyword arguments of the options above (others are ignored)."""
    return DockerSettings(
        enabled=not options["no_docker"],
        host=options["docker_host"],
        plugin_dir=options["docker_plugin_dir"],
        plugin=not options["no_docker_plugin"],
    )


def docker_launch_args(settings: DockerSettings) -> list[str]:
    """The same settings as command-line arguments (for a background `launch --foreground`)."""
    args = ["--docker-host", settings.host, "--docker-plugin-dir", str(settings.plugin_dir)]
    if not settings.enabled:
        args.append("--no-docker")
    if not settings.plugin:
        args.append("--no-docker-plugin")
    return args
