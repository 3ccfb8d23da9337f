"""A small ASGI app over the node: JSON in, JSON out, no framework needed for a dozen routes.

An adapter: each handler parses its request, calls one method of the node (``meshnet.node``;
the router's for its own status) and formats the answer. A container that names no namespace
but a Docker container is handed to the Docker adapter, which resolves it.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meshnet.api import observe
from meshnet.api.asgi import Receive, Scope, Send, answer_lifespan, send_json
from meshnet.constants import CONTAINER_IFNAME
from meshnet.errors import UserError
from meshnet.gossip.connection_maker import normalize_address
from meshnet.gossip.router import Router
from meshnet.node.node import Node, Target, Unavailable

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
    """The API: an adapter that parses each request, asks the node (or the router, for its own
    status) and answers JSON. The route table is built once, here."""

    def __init__(
        self,
        router: Router,
        request_stop: Callable[[], None],
        node: Node | None = None,
        *,
        docker: DockerService | None = None,
    ) -> None:
        self.router = router
        self.request_stop = request_stop
        self.node = node = node if node is not None else Node(router)
        self.docker = docker
        # What the report, metrics and streams read (see report.Sources).
        self.dataplane: DataPlane | None = node.dataplane
        self.ipam: IpamService | None = node.ipam
        self.dns: DnsService | None = node.dns
        self._stop_after_response = False
        self.routes: dict[tuple[str, str], Callable[[dict[str, Any]], Any]] = {
            ("GET", "/status"): lambda _: node.status(),
            ("GET", "/status/peers"): lambda _: router.peers(),
            ("GET", "/status/connections"): lambda _: router.connections(),
            ("GET", "/status/targets"): lambda _: router.targets(),
            ("POST", "/connect"): self._connect,
            ("POST", "/forget"): self._forget,
            ("POST", "/stop"): self._stop,
            ("GET", "/status/dataplane"): self._dataplane_status,
            ("GET", "/containers"): lambda _: node.containers(),
            ("POST", "/attach"): self._attach,
            ("POST", "/detach"): self._detach,
            ("GET", "/status/ipam"): lambda _: node.require_ipam().status(),
            ("POST", "/ipam/reset"): self._ipam_reset,
            ("POST", "/ipam/rmpeer"): self._ipam_rmpeer,
            ("POST", "/ipam/owners"): self._ipam_owners,
        }
        if node.dns is not None:  # /status/dns, /dns/*
            self.routes.update(node.dns.api_routes())
        if docker is not None:
            self.routes[("GET", "/status/docker")] = lambda _: docker.status()
        if node.ramps is not None:
            ramps = node.ramps
            self.routes[("POST", "/expose")] = self._expose
            self.routes[("POST", "/hide")] = self._hide
            self.routes[("GET", "/status/ramps")] = lambda _: ramps.status()
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
        except Unavailable as e:
            status, result = 409, {"error": str(e)}
        except UserError as e:
            status, result = 400, {"error": str(e)}
        await send_json(send, status, result)
        if status == 200 and (
            (scope["method"], scope["path"]) == ("POST", "/stop") or self._stop_after_response
        ):
            # Only now: stopping cancels the server, which would cut this response short.
            self.request_stop()

    async def _dataplane_status(self, _: dict[str, Any]) -> dict[str, Any]:
        dataplane = self.node.require_dataplane()
        await dataplane.refresh()
        return dataplane.status()

    def _connect(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"addresses": [...], "replace": bool}`` (or one ``"address"``): each checked
        before any is added; ``replace`` makes them the only targets the user gave."""
        replace = bool(body.get("replace"))
        port = self.router.config.port  # a peer without a port listens where we do
        addresses = [normalize_address(a, port) for a in _addresses(body, empty_ok=replace)]
        removed: list[str] = []
        if replace:
            before = {t.address for t in self.router.maker.targets()}
            removed = self.router.replace_targets(addresses)
            added = [{"address": a, "added": a not in before} for a in addresses]
        else:
            added = [{"address": a, "added": self.router.connect(a)} for a in addresses]
        return {"targets": added, "removed": removed}

    def _forget(self, body: dict[str, Any]) -> dict[str, Any]:
        addresses = [normalize_address(a, self.router.config.port) for a in _addresses(body)]
        return {"targets": [{"address": a, "forgotten": self.router.forget(a)} for a in addresses]}

    def _stop(self, _: dict[str, Any]) -> dict[str, Any]:
        log.info("stop requested through the API")
        return {"stopping": True}

    async def _attach(self, body: dict[str, Any]) -> dict[str, Any]:
        """A namespace's name, a PID or a path; a Docker container's id or name; or, with an
        ``owner``, a runtime's key (CNI) for IPAM and DNS."""
        if self.docker is not None:
            info = await self.docker.docker_container(body.get("container"))
            if info is not None:
                specs, ifname, name = _docker_request(body)
                return await self.docker.attach_container(
                    info, specs, ifname=ifname, name=name or info.name
                )
        fqdn = self.node.dns_name(body.get("name"))  # a bad name fails before anything is done
        container, specs, ifname = _container_request(body)
        owner = _owner(body)
        target = Target(container, owner=owner, records=owner)
        attached = await self.node.attach(target, specs, ifname, fqdn)
        result = dict(attached.attachment)
        if self.node.dns is not None:
            result["dns_name"] = attached.dns_name
        return result

    async def _detach(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.docker is not None:
            info = await self.docker.docker_container(body.get("container"))
            if info is not None:
                addresses, ifname, _ = _docker_request(body)
                return await self.docker.detach_container(info, addresses, ifname)
        owner = _owner(body)
        if owner is not None:
            return await self._detach_owner(owner, body)
        container, addresses, ifname = _container_request(body)
        detached = await self.node.detach(Target(container), addresses, ifname)
        return {"detached": detached.detached}

    async def _detach_owner(self, owner: str, body: dict[str, Any]) -> dict[str, Any]:
        """Undo an attach made under a runtime's key (CNI DEL and GC): idempotent, and the
        addresses are released even when the namespace (and with it the veth) is gone."""
        container = body.get("container") or ""
        ifname = body.get("ifname", CONTAINER_IFNAME)
        if not isinstance(container, str) or not isinstance(ifname, str):
            raise HttpError(400, 'expected {"owner": ID, "container": NAME|PATH, "ifname": NAME}')
        target = Target(container, owner=owner, records=owner)
        detached = await self.node.detach(target, [], ifname, gone_ok=True)
        return {"detached": detached.detached, "released": [str(a) for a in detached.released]}

    async def _expose(self, body: dict[str, Any]) -> dict[str, Any]:
        specs = body.get("addresses", [])
        name, masquerade = body.get("name"), body.get("masquerade")
        if (
            not isinstance(specs, list)
            or not all(isinstance(s, str) for s in specs)
            or not (name is None or isinstance(name, str))
            or not isinstance(masquerade, bool | None)
        ):
            raise UserError(
                'expected {"addresses": [CIDR|net:CIDR...], "name": FQDN, "masquerade": BOOL}'
            )
        exposed = await self.node.expose(specs, masquerade=masquerade is not False, name=name)
        return {"exposed": exposed}

    async def _hide(self, body: dict[str, Any]) -> dict[str, Any]:
        specs = body.get("addresses", [])
        if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
            raise UserError('expected {"addresses": [CIDR|net:CIDR...]}')
        return {"hidden": [e.as_json() for e in await self.node.hide(specs)]}

    async def _ipam_reset(self, body: dict[str, Any]) -> dict[str, Any]:
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise HttpError(400, 'expected {"force": true|false}')
        result = await self.node.reset(force=force)
        if result["acknowledged"]:
            self._stop_after_response = True
        return result

    def _ipam_rmpeer(self, body: dict[str, Any]) -> dict[str, Any]:
        peer = body.get("peer")
        if not isinstance(peer, str) or not peer:
            raise HttpError(400, 'expected {"peer": NAME|NICKNAME}')
        return self.node.rmpeer(peer)

    def _ipam_owners(self, body: dict[str, Any]) -> dict[str, Any]:
        prefix = body.get("prefix", "")
        if not isinstance(prefix, str):
            raise HttpError(400, 'expected {"prefix": TEXT}')
        return {"owners": self.node.owners(prefix)}


def _container_request(body: dict[str, Any]) -> tuple[str, list[str], str]:
    container = body.get("container")
    addresses = body.get("addresses", [])
    ifname = body.get("ifname", CONTAINER_IFNAME)
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


def _docker_request(body: dict[str, Any]) -> tuple[list[str], str, str | None]:
    addresses = body.get("addresses", [])
    ifname = body.get("ifname", CONTAINER_IFNAME)
    name = body.get("name")
    if (
        not isinstance(addresses, list)
        or not all(isinstance(a, str) for a in addresses)
        or not isinstance(ifname, str)
        or not (name is None or isinstance(name, str))
    ):
        raise UserError(
            'expected {"container": ID|NAME, "addresses": [CIDR...], "ifname": NAME, "name": NAME}'
        )
    return addresses, ifname, name


def _addresses(body: dict[str, Any], *, empty_ok: bool = False) -> list[str]:
    addresses = body.get("addresses", [body["address"]] if "address" in body else None)
    if (
        not isinstance(addresses, list)
        or not (addresses or empty_ok)
        or not all(isinstance(a, str) for a in addresses)
    ):
        raise HttpError(400, 'expected a JSON body {"addresses": ["HOST[:PORT]", ...]}')
    return addresses


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
