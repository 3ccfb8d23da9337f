"""A small ASGI app over the router: JSON in, JSON out, no framework needed for a dozen routes."""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from meshnet.errors import UserError
from meshnet.gossip.connection_maker import normalize_address
from meshnet.gossip.router import Router

if TYPE_CHECKING:
    from meshnet.dataplane.service import DataPlane

log = logging.getLogger("meshnet.api")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
SendFn = Callable[[MutableMapping[str, Any]], Awaitable[None]]
MAX_BODY = 64 * 1024


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ApiApp:
    def __init__(
        self,
        router: Router,
        request_stop: Callable[[], None],
        dataplane: DataPlane | None = None,
    ) -> None:
        self.router = router
        self.request_stop = request_stop
        self.dataplane = dataplane
        self.routes: dict[tuple[str, str], Callable[[dict[str, Any]], Any]] = {
            ("GET", "/status"): lambda _: router.status(),
            ("GET", "/status/peers"): lambda _: router.peers(),
            ("GET", "/status/connections"): lambda _: router.connections(),
            ("GET", "/status/targets"): lambda _: router.targets(),
            ("POST", "/connect"): self._connect,
            ("POST", "/forget"): self._forget,
            ("POST", "/stop"): self._stop,
            ("GET", "/status/dataplane"): lambda _: self._dp().status(),
            ("GET", "/containers"): lambda _: self._dp().containers(),
            ("POST", "/attach"): self._attach,
            ("POST", "/detach"): self._detach,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: SendFn) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        try:
            handler = self.routes.get((scope["method"], scope["path"]))
            if handler is None:
                known = {path for _, path in self.routes}
                if scope["path"] in known:
                    raise HttpError(405, f"{scope['method']} not allowed on {scope['path']}")
                raise HttpError(404, f"no such endpoint: {scope['path']}")
            body = await _read_body(receive)
            result = handler(body)
            if inspect.isawaitable(result):
                result = await result
            status = 200
        except HttpError as e:
            status, result = e.status, {"error": str(e)}
        except UserError as e:
            status, result = 400, {"error": str(e)}
        payload = json.dumps(result).encode()
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
        if (scope["method"], scope["path"], status) == ("POST", "/stop", 200):
            # Only now: stopping cancels the server, which would cut this response short.
            self.request_stop()

    def _connect(self, body: dict[str, Any]) -> dict[str, Any]:
        address = normalize_address(_address(body))
        added = self.router.connect(address)
        return {"address": address, "added": added}

    def _forget(self, body: dict[str, Any]) -> dict[str, Any]:
        address = normalize_address(_address(body))
        return {"address": address, "forgotten": self.router.forget(address)}

    def _stop(self, _: dict[str, Any]) -> dict[str, Any]:
        log.info("stop requested through the API")
        return {"stopping": True}

    def _dp(self) -> DataPlane:
        if self.dataplane is None:
            raise HttpError(409, "this router runs without a data plane (--no-dataplane)")
        return self.dataplane

    async def _attach(self, body: dict[str, Any]) -> dict[str, Any]:
        container, addresses, ifname = _container_request(body)
        return await self._dp().attach(container, addresses, ifname)

    async def _detach(self, body: dict[str, Any]) -> dict[str, Any]:
        container, addresses, ifname = _container_request(body)
        return {"detached": await self._dp().detach(container, addresses, ifname)}


def _container_request(body: dict[str, Any]) -> tuple[str, list[str], str]:
    container = body.get("container")
    addresses = body.get("addresses", [])
    ifname = body.get("ifname", "ethwe")
    if (
        not isinstance(container, str)
        or not container
        or not isinstance(addresses, list)
        or not all(isinstance(a, str) for a in addresses)
        or not isinstance(ifname, str)
    ):
        raise HttpError(
            400, 'expected {"container": NAME|PID|PATH, "addresses": [CIDR...], "ifname": NAME}'
        )
    return container, addresses, ifname


def _address(body: dict[str, Any]) -> str:
    address = body.get("address")
    if not isinstance(address, str):
        raise HttpError(400, 'expected a JSON body {"address": "HOST[:PORT]"}')
    return address


async def _read_body(receive: Receive) -> dict[str, Any]:
    chunks = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise HttpError(413, "request body too large")
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    raw = b"".join(chunks)
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise HttpError(400, "request body is not JSON") from None
    if not isinstance(body, dict):
        raise HttpError(400, "request body must be a JSON object")
    return body
