"""Serve the API on the daemon's unix socket (mode 0600: only root talks to the router), and
optionally over HTTP on loopback for a local Prometheus, read-only (see http_gate)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import trio

from meshnet.api.app import ApiApp
from meshnet.api.asgi import serve_on_socket, serve_on_tcp
from meshnet.api.http_gate import ReadOnlyGate

LOGGER = "meshnet.api.hypercorn"


async def serve_api(
    app: ApiApp,
    socket_path: Path,
    http_addr: tuple[str, int] | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; also over HTTP on ``http_addr`` (loopback, checked by the CLI)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_on_socket, app, socket_path, logger=LOGGER))
        if http_addr is not None:
            host, port = http_addr
            gate = ReadOnlyGate(app, host, port)
            await nursery.start(partial(serve_on_tcp, gate, host, port, logger=LOGGER))
        task_status.started()
