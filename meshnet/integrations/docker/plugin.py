"""The Docker plugin endpoint: JSON over HTTP on ``<plugin dir>/meshnet.sock``.

dockerd finds a plugin by its socket's name in /run/docker/plugins (a legacy, non-managed
plugin), calls ``/Plugin.Activate`` once to learn what it implements, then POSTs one JSON object
per call to ``/<Interface>.<Method>``. Answers are JSON objects; a refusal is ``{"Err": ...}``
(with HTTP 500, which dockerd reads the same way), an unknown method is 404, which dockerd takes
as "not implemented". The app never raises: whatever goes wrong in a handler is logged and
answered, so the daemon and dockerd both carry on.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from meshnet.api.asgi import Receive, Scope, Send, answer_lifespan, serve_on_socket
from meshnet.errors import MeshnetError

log = logging.getLogger("meshnet.docker")

Handler = Callable[[dict[str, Any]], Any]

CONTENT_TYPE = b"application/vnd.docker.plugins.v1+json"
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class PluginStatistics:
    calls: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    last_error: str | None = None


class _BadRequest(Exception):
    pass


class PluginApp:
    """An ASGI app over a table of ``path -> handler(request) -> answer``."""

    def __init__(self, handlers: dict[str, Handler], implements: list[str]) -> None:
        self.handlers: dict[str, Handler] = {
            "/Plugin.Activate": lambda _: {"Implements": implements},
            **handlers,
        }
        self._calls: dict[str, int] = {}
        self._errors = 0
        self._last_error: str | None = None

    def statistics(self) -> PluginStatistics:
        return PluginStatistics(dict(self._calls), self._errors, self._last_error)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        status, answer = await self.answer(scope["method"], scope["path"], receive)
        payload = json.dumps(answer).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", CONTENT_TYPE),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def answer(self, method: str, path: str, receive: Receive) -> tuple[int, Any]:
        handler = self.handlers.get(path)
        if handler is None:
            return 404, {"Err": f"{path} is not implemented by the meshnet plugin"}
        name = path.lstrip("/")
        self._calls[name] = self._calls.get(name, 0) + 1
        try:
            if method != "POST":
                raise _BadRequest(f"{method} not allowed: plugin calls are POST")
            body = await _read_body(receive)
            result = handler(body)
            if inspect.isawaitable(result):
                result = await result
            return 200, result
        except _BadRequest as e:
            return self._refuse(name, str(e), 400)
        except MeshnetError as e:
            return self._refuse(name, str(e))
        except Exception as e:  # a bug here must not take down the router or hang dockerd
            log.exception("docker: %s failed", name)
            return self._refuse(name, f"internal error in meshnet: {type(e).__name__}: {e}")

    def _refuse(self, name: str, message: str, status: int = 500) -> tuple[int, Any]:
        self._errors += 1
        self._last_error = f"{name}: {message}"
        log.warning("docker: %s refused: %s", name, message)
        return status, {"Err": message}


async def _read_body(receive: Receive) -> dict[str, Any]:
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise _BadRequest("request body too large")
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise _BadRequest("request body is not JSON") from None
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise _BadRequest("request body must be a JSON object")
    return body


async def serve_plugin(
    app: PluginApp,
    socket_path: Path,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve on ``socket_path`` (mode 0600: dockerd runs as root) until cancelled."""
    await serve_on_socket(
        app, socket_path, logger="meshnet.docker.hypercorn", task_status=task_status
    )
