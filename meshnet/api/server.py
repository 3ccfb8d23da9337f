"""Serve the API on the daemon's unix socket (mode 0600: only root talks to the router), and
optionally over HTTP: read-only on loopback (``--http-addr``), and only ``/metrics`` on any
address (``--metrics-addr``, for a Prometheus on another host); see http_gate."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import trio

from meshnet.api.app import ApiApp
from meshnet.api.asgi import serve_on_socket, serve_on_tcp
from meshnet.api.http_gate import MetricsOnlyGate, ReadOnlyGate
from meshnet.errors import UserError

LOGGER = "meshnet.api.hypercorn"


async def serve_api(
    app: ApiApp,
    socket_path: Path,
    http_addr: tuple[str, int] | None = None,
    metrics_addr: tuple[str, int] | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; also over HTTP on ``http_addr`` (loopback, checked by the CLI)
    and ``metrics_addr`` (any address: only ``GET /metrics``)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_on_socket, app, socket_path, logger=LOGGER))
        if http_addr is not None:
            host, port = http_addr
            gate = ReadOnlyGate(app, host, port)
            await nursery.start(partial(serve_on_tcp, gate, host, port, logger=LOGGER))
        if metrics_addr is not None:
            host, port = metrics_addr
            try:
                await nursery.start(
                    partial(serve_on_tcp, MetricsOnlyGate(app), host, port, logger=LOGGER)
                )
            except OSError as e:
                raise UserError(f"cannot serve metrics on {host}:{port}: {e.strerror}") from None
        task_status.started()
