"""Serve the API on the daemon's unix socket (mode 0600: only root talks to the router), and
optionally over HTTP on loopback for a local Prometheus."""

from __future__ import annotations

from pathlib import Path

import trio

from meshnet.api.app import ApiApp
from meshnet.api.asgi import serve_on_socket


async def serve_api(
    app: ApiApp,
    socket_path: Path,
    http_addr: tuple[str, int] | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; also over HTTP on ``http_addr`` (loopback, checked by the CLI)."""
    await serve_on_socket(
        app,
        socket_path,
        logger="meshnet.api.hypercorn",
        http_addr=http_addr,
        task_status=task_status,
    )
