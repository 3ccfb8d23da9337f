"""What the API shows over HTTP: reading only, and only to a client that named us.

The unix socket (0600) is the API's authentication: only root opens it. `--http-addr` serves the
same app on loopback for a local Prometheus, where any local user, and any web page a local
browser visits, can send requests. So over HTTP:

* only ``GET`` of the read-only endpoints (metrics, status, report) passes; everything that
  changes state (stop, attach, expose, connect...) answers 405 and is done only on the socket;
* the ``Host`` header must name the address we listen on (or ``localhost``): a page on a name
  that the attacker re-binds to 127.0.0.1 (DNS rebinding) sends its own name and is refused.

`--metrics-addr` may listen on any address, where anyone on the network can send requests, so
it serves one thing only: ``GET /metrics`` (what Weave's status address serves to Prometheus).
Any Host header is fine there: Prometheus scrapes by whatever name or address it was given.
"""

from __future__ import annotations

import logging
import time

from meshnet.api.asgi import App, Receive, Scope, Send, send_json

log = logging.getLogger("meshnet.api")

READ_ONLY = frozenset({"/metrics", "/report", "/status"})
READ_ONLY_PREFIXES = ("/status/",)
_LOG_EVERY = 10.0  # seconds between two log lines about refused requests


def allowed_hosts(host: str, port: int) -> frozenset[bytes]:
    """The Host header values that name ``host``:``port`` (with the port or without)."""
    literal = f"[{host}]" if ":" in host else host
    names = {literal, "localhost"}
    return frozenset(n.encode() for name in names for n in (name, f"{name}:{port}"))


METRICS = "/metrics"


async def _refuse(send: Send, status: int, why: str) -> None:
    await send_json(send, status, {"error": why})


class MetricsOnlyGate:
    """An ASGI app in front of the API for `--metrics-addr`: ``GET /metrics`` and nothing else."""

    def __init__(self, app: App) -> None:
        self._app = app
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path == METRICS and method == "GET":
            await self._app(scope, receive, send)
            return
        self.refused += 1
        if path != METRICS:
            await _refuse(send, 404, f"only {METRICS} is served on this address")
        else:
            await _refuse(send, 405, f"{method} {METRICS}: only GET")


class ReadOnlyGate:
    """An ASGI app in front of the API for HTTP clients: refuses what they may not do."""

    def __init__(self, app: App, host: str, port: int) -> None:
        self._app = app
        self._hosts = allowed_hosts(host, port)
        self.refused = 0
        self._logged_at = float("-inf")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is None:
            await self._app(scope, receive, send)
            return
        status, why = refusal
        self.refused += 1
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY:
            self._logged_at = now
            log.warning("HTTP API: refused %s (%d refused so far)", why, self.refused)
        await _refuse(send, status, why)

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        hosts = [value for name, value in scope.get("headers", ()) if name.lower() == b"host"]
        if len(hosts) != 1 or hosts[0].lower() not in self._hosts:
            shown = hosts[0][:64].decode("ascii", "replace") if hosts else "none"
            return 403, f"a request for host {shown!r}: only this address is served"
        path, method = scope["path"], scope["method"]
        if path not in READ_ONLY and not path.startswith(READ_ONLY_PREFIXES):
            return 404, f"{path} is not served over HTTP: use the API socket"
        if method != "GET":
            return 405, f"{method} {path} over HTTP: changes are made on the API socket only"
        return None
