"""The Docker integration's settings, and where the Docker Engine API is (pure).

``DockerSettings`` is one field of ``meshnet.config.Config``. The Engine API is HTTP on a unix
socket (``unix:///var/run/docker.sock``, or a bare path) or, rarely, plain TCP
(``tcp://HOST:PORT``); TLS endpoints are not supported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from meshnet.errors import UserError

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
#: Where dockerd looks for plugin sockets (fixed in dockerd: pkg/plugins/discovery.go).
DEFAULT_PLUGIN_DIR = Path("/run/docker/plugins")
#: The network and IPAM driver name: `docker network create -d meshnet --ipam-driver meshnet`.
PLUGIN_NAME = "meshnet"


def default_docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


@dataclass(frozen=True)
class EngineAddress:
    """How httpx reaches the Engine: through ``uds`` (a socket path) or at ``base_url``."""

    base_url: str
    uds: str | None = None

    def __str__(self) -> str:
        return f"unix://{self.uds}" if self.uds is not None else self.base_url


def parse_docker_host(text: str) -> EngineAddress:
    """``unix:///path``, ``/path`` or ``tcp://host:port``; UserError (one line) otherwise."""
    text = text.strip()
    if text.startswith("unix://"):
        path = text.removeprefix("unix://")
        if not path.startswith("/"):
            raise UserError(f"bad --docker-host {text!r}: expected unix:///absolute/path")
        return EngineAddress(base_url="http://docker", uds=path)
    if text.startswith("/"):
        return EngineAddress(base_url="http://docker", uds=text)
    if text.startswith("tcp://"):
        rest = text.removeprefix("tcp://").rstrip("/")
        host, sep, port = rest.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(f"bad --docker-host {text!r}: expected tcp://HOST:PORT")
        return EngineAddress(base_url=f"http://{rest}")
    raise UserError(
        f"bad --docker-host {text!r}: expected unix:///var/run/docker.sock or tcp://HOST:PORT"
    )


@dataclass(frozen=True)
class DockerSettings:
    """``enabled`` False (``--no-docker``): no watcher and no plugin, whatever else is set.

    ``plugin_dir``: where the plugin socket ``meshnet.sock`` is made for dockerd to find. One
    dockerd looks only in /run/docker/plugins (and spec files in /etc/docker/plugins), so a
    machine running several dockerds gives each its own view of that directory (the lab runs
    each in its own mount namespace with the host's plugin directory bind-mounted there).
    """

    enabled: bool = True
    host: str = DEFAULT_DOCKER_HOST
    plugin_dir: Path = DEFAULT_PLUGIN_DIR
    plugin: bool = True  # serve the network and IPAM plugin (besides watching events)

    def __post_init__(self) -> None:
        parse_docker_host(self.host)

    @property
    def address(self) -> EngineAddress:
        return parse_docker_host(self.host)

    @property
    def plugin_socket(self) -> Path:
        return self.plugin_dir / f"{PLUGIN_NAME}.sock"
