"""The API's read-only views of the whole router: `/report`, `/metrics`, `/stream`, `/events`.

`/report` is an ordinary JSON route. The others answer with something other than one JSON
document (Prometheus text, endless streams), so they are "raw" ASGI handlers the app calls
directly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from meshnet.api import report, stream

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from meshnet.api.asgi import Receive, Scope, Send
    from meshnet.api.report import Sources

RawHandler = Callable[["Scope", "Receive", "Send"], Awaitable[None]]


def json_routes(sources: Sources) -> dict[tuple[str, str], Callable[[dict[str, Any]], Any]]:
    return {("GET", "/report"): lambda _: report.collect(sources)}


def raw_routes(sources: Sources) -> dict[tuple[str, str], RawHandler]:
    registry: CollectorRegistry | None = None

    async def serve_metrics(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal registry
        # Imported at the first scrape: prometheus_client (~2 MiB) only in a scraped router.
        from meshnet.api import metrics

        if registry is None:
            registry = metrics.registry_for(sources)
        if sources.dataplane is not None and sources.dataplane.forwarder is not None:
            await sources.dataplane.refresh()  # what the kernel counts, read before rendering
        body = metrics.render(registry)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", metrics.CONTENT_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def serve_stream(scope: Scope, receive: Receive, send: Send) -> None:
        await stream.snapshots(sources, scope, receive, send)

    async def serve_events(scope: Scope, receive: Receive, send: Send) -> None:
        await stream.event_lines(sources, scope, receive, send)

    return {
        ("GET", "/metrics"): serve_metrics,
        ("GET", "/stream"): serve_stream,
        ("GET", "/events"): serve_events,
    }
