"""Serve the API on the daemon's unix socket (mode 0600: only root talks to the router), and
optionally over HTTP: read-only on loopback (``--http-addr``), and only ``/metrics`` on any
address (``--metrics-addr``, for a Prometheus on another host); see http_gate."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import trio

from meshnet.api.app import ApiApp
from meshnet.api.asgi import App, serve_on_socket, serve_on_tcp
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
        # The daemon removes the socket file once every service has stopped (see daemon.run).
        await nursery.start(
            partial(serve_on_socket, app, socket_path, logger=LOGGER, remove_file=False)
        )
        if http_addr is not None:
            host, port = http_addr
            gate = ReadOnlyGate(app, host, port)
            await _listen(nursery, gate, http_addr, "--http-addr")
        if metrics_addr is not None:
            await _listen(nursery, MetricsOnlyGate(app), metrics_addr, "--metrics-addr")
        task_status.started()


async def _listen(nursery: trio.Nursery, app: App, address: tuple[str, int], flag: str) -> None:
    """Serve ``app`` over HTTP; an address we cannot listen on is the user's one-line error."""
    host, port = address
    try:
        await nursery.start(partial(serve_on_tcp, app, host, port, logger=LOGGER))
    except* OSError as group:  # raised inside hypercorn's nurseries
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        why = getattr(error, "strerror", None) or str(error)
        raise UserError(f"cannot listen on {flag} {host}:{port}: {why}") from None
