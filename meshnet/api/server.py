"""Serve the API on the daemon's unix socket (mode 0600: only root talks to the router), and
optionally over HTTP on loopback for a local Prometheus."""

from __future__ import annotations

import logging
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from meshnet.api.app import ApiApp

log = logging.getLogger("meshnet.api")


async def serve_api(
    app: ApiApp,
    socket_path: Path,
    http_addr: tuple[str, int] | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; also over HTTP on ``http_addr`` (loopback, checked by the CLI)."""
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    config = HypercornConfig()
    config.bind = [f"unix:{socket_path}"]
    if http_addr is not None:
        host, port = http_addr
        config.bind.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    config.umask = 0o177  # the socket is created 0600
    config.accesslog = None
    config.errorlog = logging.getLogger("meshnet.api.hypercorn")
    config.graceful_timeout = 1.0
    try:
        await serve(app, config, task_status=task_status)  # type: ignore[arg-type]
    finally:
        socket_path.unlink(missing_ok=True)
