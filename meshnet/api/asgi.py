"""ASGI plumbing shared by the API and the Docker plugin: the lifespan protocol, and serving
an app with hypercorn on a unix socket that only root may open."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


async def answer_lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge hypercorn's startup and shutdown: the apps have nothing to set up."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def send_json(send: Send, status: int, body: Any) -> None:
    """One whole JSON response (the API's and the metrics gate's refusals alike)."""
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


SOCKET_KEEP_ALIVE = 60.0  # seconds a connection to the API socket may wait for its request


def _hypercorn(bind: str, logger: str) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [bind]
    config.umask = 0o177
    config.accesslog = None
    config.errorlog = logging.getLogger(logger)
    config.graceful_timeout = 1.0
    return config


async def serve_on_socket(
    app: App,
    socket_path: Path,
    *,
    logger: str,
    remove_file: bool = True,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled on ``socket_path`` (created 0600); the file goes with the server
    unless ``remove_file`` is False (its owner removes it later)."""
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    config = _hypercorn(f"unix:{socket_path}", logger)
    # Hypercorn closes a connection whose request it has not read within this (5 s by default),
    # answering nothing: a router that 100 others starve of CPU (a large lab on 2 cores) missed
    # it, and `lab up` failed. Only root reaches this socket: a slow client costs nothing here.
    config.keep_alive_timeout = SOCKET_KEEP_ALIVE
    try:
        await serve(app, config, task_status=task_status)  # type: ignore[arg-type]
    finally:
        if remove_file:
            socket_path.unlink(missing_ok=True)


async def serve_on_tcp(
    app: App,
    host: str,
    port: int,
    *,
    logger: str,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled on ``host``:``port`` (the caller keeps it to loopback)."""
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    await serve(app, _hypercorn(bind, logger), task_status=task_status)  # type: ignore[arg-type]
