"""A small ASGI app over the router: JSON in, JSON out, no framework needed for a dozen routes."""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from meshnet.api import observe
from meshnet.api.asgi import Receive, Scope, Send, answer_lifespan
from meshnet.api.ipam import addresses_for, release_only
from meshnet.errors import UserError
from meshnet.gossip.connection_maker import normalize_address
from meshnet.gossip.router import Router

if TYPE_CHECKING:
    from meshnet.dataplane.service import DataPlane
    from meshnet.dns.service import DnsService
    from meshnet.integrations.docker.service import DockerService
    from meshnet.ipam.service import IpamService

log = logging.getLogger("meshnet.api")

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
        *,
        ipam: IpamService | None = None,
        dns: DnsService | None = None,
        docker: DockerService | None = None,
    ) -> None:
        self.router = router
        self.request_stop = request_stop
        self.dataplane = dataplane
        self.ipam = ipam
        self._stop_after_response = False
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
            ("GET", "/status/ipam"): lambda _: self._ipam().status(),
            ("POST", "/ipam/reset"): self._ipam_reset,
            ("POST", "/ipam/rmpeer"): self._ipam_rmpeer,
            ("POST", "/ipam/owners"): self._ipam_owners,
        }
        if dns is not None:  # /status/dns, /dns/*; attach registers names, detach removes them
            self.routes.update(dns.api_routes(self._attach, self._detach))
        self.dns = dns
        if docker is not None:  # /status/docker; attach and detach take Docker ids and names too
            attach, detach = self.routes[("POST", "/attach")], self.routes[("POST", "/detach")]
            self.routes.update(docker.api_routes(attach, detach))
        # /report; /metrics, /stream and /events answer with text or endless streams: raw ASGI.
        self.routes.update(observe.json_routes(self))
        self.raw_routes = observe.raw_routes(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        raw = self.raw_routes.get((scope["method"], scope["path"]))
        if raw is not None:
            await raw(scope, receive, send)
            return
        try:
            handler = self.routes.get((scope["method"], scope["path"]))
            if handler is None:
                known = {path for _, path in [*self.routes, *self.raw_routes]}
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
        if status == 200 and (
            (scope["method"], scope["path"]) == ("POST", "/stop") or self._stop_after_response
        ):
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
        if self.ipam is None:
            return await self._dp().attach(container, addresses, ifname)
        # IPAM: no address, net:CIDR, ip:ADDR or a CIDR inside the range (see api/ipam.py).
        container_id = _owner(body) or await self._ipam_id(container, ifname)
        held = self.ipam.addresses_of(container_id)
        addresses = await addresses_for(self.ipam, container_id, addresses)
        try:
            return await self._dp().attach(container, addresses, ifname)
        except BaseException:
            if not held:  # nothing of it is on the container: give it back
                with trio.CancelScope(shield=True):
                    await self.ipam.release(container_id)
            raise

    async def _detach(self, body: dict[str, Any]) -> dict[str, Any]:
        owner = _owner(body)
        if owner is not None:
            return await self._detach_owner(owner, body)
        container, addresses, ifname = _container_request(body)
        container_id = None
        if self.ipam is not None:
            container_id = await self._ipam_id(container, ifname)
        detached = await self._dp().detach(container, addresses, ifname)
        if self.ipam is not None and container_id is not None:
            # Only the addresses named, if any: the rest stay the container's.
            only = release_only(addresses)
            await self.ipam.release(container_id, only)
        return {"detached": detached}

    async def _detach_owner(self, owner: str, body: dict[str, Any]) -> dict[str, Any]:
        """Undo an attach made under a runtime's key (CNI DEL and GC): idempotent, and the
        addresses are released even when the namespace (and with it the veth) is gone."""
        container = body.get("container") or ""
        ifname = body.get("ifname", "ethwe")
        if not isinstance(container, str) or not isinstance(ifname, str):
            raise HttpError(400, 'expected {"owner": ID, "container": NAME|PATH, "ifname": NAME}')
        detached = False
        if container and self.dataplane is not None:
            try:
                detached = await self.dataplane.detach(container, [], ifname)
            except UserError as e:  # the namespace is gone, or that interface is not ours
                log.info("detach %s: %s", owner, e)
        released = await self.ipam.release(owner) if self.ipam is not None else []
        return {"detached": detached, "released": [str(a) for a in released]}

    async def _ipam_id(self, container: str, ifname: str) -> str:
        """IPAM's key: the namespace, and the interface if it is not the usual one (so a second
        interface gets addresses of its own)."""
        container_id = await self._dp().container_id(container)
        return container_id if ifname == "ethwe" else f"{container_id}/{ifname}"

    def _ipam(self) -> IpamService:
        if self.ipam is None:
            raise HttpError(409, "this router runs without IPAM")
        return self.ipam

    async def _ipam_reset(self, body: dict[str, Any]) -> dict[str, Any]:
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise HttpError(400, 'expected {"force": true|false}')
        result = await self._ipam().reset(force=force)
        if result["acknowledged"]:
            self._ipam().forget_state()
            log.info("reset: IPAM handed over; stopping")
            self._stop_after_response = True
        return result

    def _ipam_rmpeer(self, body: dict[str, Any]) -> dict[str, Any]:
        peer = body.get("peer")
        if not isinstance(peer, str) or not peer:
            raise HttpError(400, 'expected {"peer": NAME|NICKNAME}')
        ipam = self._ipam()
        return ipam.rmpeer(ipam.resolve_peer(peer))

    def _ipam_owners(self, body: dict[str, Any]) -> dict[str, Any]:
        prefix = body.get("prefix", "")
        if not isinstance(prefix, str):
            raise HttpError(400, 'expected {"prefix": TEXT}')
        return {"owners": self._ipam().holders(prefix)}


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


_OWNER = re.compile(r"[a-z][a-z0-9-]*:[!-~]{1,250}")  # SCHEME:ID, printable, no spaces
_RESERVED_OWNERS = ("netns", "dns")  # IPAM's own keys: a namespace's identity, a DNS server


def _owner(body: dict[str, Any]) -> str | None:
    """An attach's optional ``owner``: a runtime's own key for its addresses (the CNI plugin
    sends ``cni:NETWORK:CONTAINER:IFNAME``), used by IPAM instead of the namespace's identity
    so that they can be released, listed and collected without the namespace."""
    owner = body.get("owner")
    if owner is None:
        return None
    if (
        not isinstance(owner, str)
        or not _OWNER.fullmatch(owner)
        or owner.partition(":")[0] in _RESERVED_OWNERS
    ):
        raise HttpError(400, 'expected "owner": "SCHEME:ID", as in cni:NETWORK:CONTAINER:IFNAME')
    return owner


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
