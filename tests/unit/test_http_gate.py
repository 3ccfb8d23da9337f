"""What HTTP clients may ask: `--metrics-addr` serves GET /metrics and nothing else."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

import pytest

from meshnet.api.http_gate import MetricsOnlyGate


class Recorder:
    """The app behind the gate: it notes what reached it and answers 200."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        self.seen.append((scope["method"], scope["path"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"meshnet_peers 1\n"})


async def ask(app: Any, method: str, path: str) -> tuple[int, bytes]:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [(b"host", b"any")]}
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.trio
async def test_only_get_metrics_passes_the_metrics_gate() -> None:
    inner = Recorder()
    gate = MetricsOnlyGate(inner)
    assert await ask(gate, "GET", "/metrics") == (200, b"meshnet_peers 1\n")
    for method, path, status in (
        ("GET", "/status", 404),
        ("GET", "/report", 404),
        ("GET", "/status/peers", 404),
        ("GET", "/stream", 404),
        ("POST", "/stop", 404),
        ("POST", "/attach", 404),
        ("GET", "/metrics/", 404),
        ("POST", "/metrics", 405),
        ("DELETE", "/metrics", 405),
    ):
        answer, body = await ask(gate, method, path)
        assert answer == status, (method, path)
        assert "error" in json.loads(body)
    assert inner.seen == [("GET", "/metrics")]
    assert gate.refused == 9
