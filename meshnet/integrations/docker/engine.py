"""The Docker Engine API client, as far as meshnet needs it: containers, networks and events.

The Engine API is plain JSON over HTTP on a unix socket, so httpx (already a dependency, and
trio-capable) talks to it directly; docker-py would add a dependency, a thread per call and no
trio support. Paths carry no API version: every Engine serves its own newest version on them.
What it answers is parsed by :mod:`meshnet.integrations.docker.objects`. Only a router with the
Docker integration on imports this module (httpx costs about 4 MiB of memory).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from meshnet.integrations.docker.objects import (
    ContainerInfo,
    DockerError,
    DockerUnavailable,
    Event,
    NetworkInfo,
    NoSuchContainer,
    NotFound,
    is_container_ref,
    parse_container,
    parse_event,
    parse_network,
)
from meshnet.integrations.docker.settings import EngineAddress


def _message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:200] or f"HTTP {response.status_code}"
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])
    return f"HTTP {response.status_code}"


class DockerEngine:
    """An async Engine API client (one connection pool); use as ``async with``."""

    def __init__(self, address: EngineAddress, *, timeout: float = 10.0) -> None:
        self.address = address
        transport = httpx.AsyncHTTPTransport(uds=address.uds) if address.uds else None
        self._client = httpx.AsyncClient(
            transport=transport, base_url=address.base_url, timeout=timeout
        )

    async def __aenter__(self) -> DockerEngine:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _get(self, path: str, **params: str) -> Any:
        try:
            response = await self._client.get(path, params=params or None)
        except httpx.TransportError as e:
            raise DockerUnavailable(
                f"cannot reach Docker at {self.address}: {e or type(e).__name__}"
            ) from None
        if response.status_code == 404:
            raise NotFound(_message(response))
        if response.status_code >= 400:
            raise DockerError(f"Docker answered {response.status_code}: {_message(response)}")
        try:
            return response.json()
        except ValueError:
            raise DockerError(f"Docker answered {path} without JSON") from None

    async def ping(self) -> str:
        """The Engine's API version; DockerUnavailable if it does not answer."""
        try:
            response = await self._client.get("/_ping")
        except httpx.TransportError as e:
            raise DockerUnavailable(
                f"cannot reach Docker at {self.address}: {e or type(e).__name__}"
            ) from None
        if response.status_code != 200:
            raise DockerUnavailable(f"Docker at {self.address} answered {response.status_code}")
        return str(response.headers.get("api-version", ""))

    async def inspect(self, ref: str) -> ContainerInfo:
        """A container by id, id prefix or name; NoSuchContainer if there is none."""
        if not is_container_ref(ref):
            raise NoSuchContainer(f"No such container: {ref}")
        try:
            data = await self._get(f"/containers/{quote(ref.lstrip('/'), safe='')}/json")
        except NotFound:
            raise NoSuchContainer(f"No such container: {ref}") from None
        return parse_container(data)

    async def running(self) -> list[str]:
        """The ids of the running containers."""
        data = await self._get("/containers/json")
        if not isinstance(data, list):
            raise DockerError("Docker's container list is not a list")
        return [str(c["Id"]) for c in data if isinstance(c, dict) and isinstance(c.get("Id"), str)]

    async def network(self, ref: str) -> NetworkInfo:
        return parse_network(await self._get(f"/networks/{quote(ref, safe='')}"))

    async def networks(self) -> list[NetworkInfo]:
        """Every network, each inspected (the list alone omits the endpoints)."""
        data = await self._get("/networks")
        if not isinstance(data, list):
            raise DockerError("Docker's network list is not a list")
        found = []
        for entry in data:
            if isinstance(entry, dict) and isinstance(entry.get("Id"), str):
                try:
                    found.append(await self.network(entry["Id"]))
                except NotFound:
                    continue  # removed meanwhile
        return found

    @contextlib.asynccontextmanager
    async def event_stream(self) -> AsyncIterator[AsyncIterator[Event]]:
        """Container and network events from now on: subscribed once this is entered, so the
        caller can then list what exists without missing a change. The iterator ends when the
        Engine closes the stream."""
        filters = json.dumps({"type": ["container", "network"]})
        try:
            async with self._client.stream(
                "GET", "/events", params={"filters": filters}, timeout=httpx.Timeout(None)
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise DockerError(f"Docker refused the event stream: {_message(response)}")
                yield self._events(response)
        except httpx.TransportError as e:
            raise DockerUnavailable(
                f"lost Docker's event stream at {self.address}: {e or type(e).__name__}"
            ) from None

    async def _events(self, response: httpx.Response) -> AsyncIterator[Event]:
        async for line in response.aiter_lines():
            event = parse_event(line) if line.strip() else None
            if event is not None:
                yield event
