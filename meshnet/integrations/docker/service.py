"""The Docker integration's trio shell: attach by id or name, the event watcher, the plugin.

``DockerService.serve`` runs in the daemon's nursery and reports ready at once: Docker may start
after meshnet, stop, or never exist, and none of that delays or stops the router. It connects
to the Engine (retrying with backoff), starts the plugin server the first time the Engine
answers, reconciles with the running containers (releasing what containers that died meanwhile
held), then follows the event stream; when the stream breaks it starts over. Every error is
logged and counted, never raised into the daemon.

An adapter over the node: a container attached because of its labels, or through the API's
``/attach`` by a Docker id or name (the API asks ``docker_container`` first), is the node's one
attach, through its PID's namespace, with IPAM and DNS keyed by its Docker id (see
``lifecycle``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from meshnet.constants import BRIDGE, CONTAINER_IFNAME
from meshnet.dataplane.kernel import attach as attachment
from meshnet.errors import MeshnetError, UserError
from meshnet.integrations.docker import lifecycle
from meshnet.integrations.docker.ipamdriver import OWNER_PREFIX as PLUGIN_OWNER_PREFIX
from meshnet.integrations.docker.ipamdriver import IpamDriver
from meshnet.integrations.docker.netdriver import NetworkDriver
from meshnet.integrations.docker.objects import (
    ContainerInfo,
    DockerError,
    Event,
    NoSuchContainer,
    NotFound,
    is_container_ref,
)
from meshnet.integrations.docker.plugin import PluginApp, serve_plugin
from meshnet.integrations.docker.settings import PLUGIN_NAME, DockerSettings
from meshnet.node.node import Node, Target
from meshnet.node.specs import parse_spec

if TYPE_CHECKING:
    from meshnet.dataplane.service import DataPlane
    from meshnet.dns.service import DnsService
    from meshnet.integrations.docker.engine import DockerEngine
    from meshnet.ipam.service import IpamService

log = logging.getLogger("meshnet.docker")

RETRY_MIN = 0.5
RETRY_MAX = 2.0  # a ping on a local socket: cheap, and Docker is back sooner
EVENT_BUFFER = 256


@dataclass(frozen=True)
class DockerStatistics:
    state: str
    host: str
    api_version: str | None
    plugin: str
    plugin_socket: str | None
    events: int
    attached: int
    forgotten: int
    errors: int
    last_error: str | None
    plugin_calls: dict[str, int] = field(default_factory=dict)
    plugin_errors: int = 0


class DockerService:
    """Construct with the daemon's node and IPAM; ``serve`` with its data plane."""

    def __init__(
        self,
        settings: DockerSettings,
        node: Node,
        *,
        ipam: IpamService,
        dns: DnsService | None = None,
        nickname: str = "",
        port_joined: Callable[[str, tuple[str, ...]], None] = lambda port, addresses: None,
    ) -> None:
        self.settings = settings
        self.node = node
        self.ipam = ipam
        self.dns = dns
        #: The plugin put a container port on the bridge, for an endpoint with these addresses.
        self._port_joined = port_joined
        self._nick = nickname
        self.dataplane: DataPlane | None = None
        self.engine: DockerEngine | None = None  # while connected
        self.state = "starting"
        self.api_version: str | None = None
        self.plugin_state = "off"
        self.plugin_app: PluginApp | None = None
        self._drivers: dict[str, str] = {}  # network id -> driver
        self._registered: dict[str, set[str]] = {}  # container -> IPs named for its networks
        # Plugin addresses held before this start: only these can have leaked (see lifecycle).
        self._held_at_start = {k: list(v) for k, v in ipam.holders(PLUGIN_OWNER_PREFIX).items()}
        self._counters = {"events": 0, "attached": 0, "forgotten": 0, "errors": 0}
        self._last_error: str | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def serve(
        self,
        dataplane: DataPlane | None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if not self.settings.enabled:
            self.state = "off (--no-docker)"
            task_status.started()
            return
        if dataplane is None:
            self.state = "off (no data plane)"
            task_status.started()
            return
        self.dataplane = dataplane
        # Imported here: httpx (~4 MiB) only in a router that talks to Docker.
        from meshnet.integrations.docker.engine import DockerEngine

        async with DockerEngine(self.settings.address) as engine, trio.open_nursery() as nursery:
            task_status.started()
            await self._keep_connected(engine, nursery)

    async def _keep_connected(self, engine: DockerEngine, nursery: trio.Nursery) -> None:
        delay = RETRY_MIN
        reported: str | None = None
        while True:
            try:
                self.api_version = await engine.ping()
                log.info("%s: Docker at %s (API %s)", self._nick, engine.address, self.api_version)
                reported = None
                if self.settings.plugin and self.plugin_state == "off":
                    await self._start_plugin(nursery)  # once: not again on every reconnect
                self.engine = engine
                self.state = "connected"
                await self._follow(engine)
                why = "Docker closed the event stream"
            except Exception as e:  # never into the router: log, retry
                why = self._why(e)
            self.engine = None
            self.state = f"waiting for Docker ({why})"
            if why != reported:
                log.warning("%s: %s; retrying", self._nick, why)
                reported = why
                delay = RETRY_MIN
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _why(self, error: Exception) -> str:
        """One line for a failed connection; a traceback only for what is not Docker's."""
        for leaf in _leaves(error):
            if isinstance(leaf, DockerError):
                return str(leaf)
        log.error("%s: Docker integration failed", self._nick, exc_info=error)
        return f"internal error: {type(error).__name__}: {error}"

    async def _start_plugin(self, nursery: trio.Nursery) -> None:
        assert self.dataplane is not None
        dataplane = self.dataplane
        network = NetworkDriver(
            bridge=BRIDGE, mtu=lambda: dataplane.overlay_mtu, joined=self._port_joined
        )
        ipam_driver = IpamDriver(self.ipam)
        app = PluginApp(
            {**network.handlers(), **ipam_driver.handlers()},
            implements=["NetworkDriver", "IpamDriver"],
        )
        path = self.settings.plugin_socket
        try:
            await nursery.start(serve_plugin, app, path)
        except OSError as e:
            self.plugin_state = f"off (cannot serve on {path}: {e.strerror or e})"
            log.error("%s: Docker plugin not served: %s", self._nick, self.plugin_state)
            return
        self.plugin_app = app
        self.plugin_state = "serving"
        log.info("%s: Docker network and IPAM plugin %r on %s", self._nick, PLUGIN_NAME, path)

    async def _follow(self, engine: DockerEngine) -> None:
        """Subscribe first, then reconcile, then handle events: nothing falls in between."""
        send, receive = trio.open_memory_channel[Event](EVENT_BUFFER)
        async with trio.open_nursery() as nursery:
            await nursery.start(self._pump, engine, send)
            await self._reconcile(engine)
            async with receive:
                async for event in receive:
                    self._counters["events"] += 1
                    await self._handle(engine, event)
            nursery.cancel_scope.cancel()

    async def _pump(
        self,
        engine: DockerEngine,
        send: trio.MemorySendChannel[Event],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with send, engine.event_stream() as events:
            task_status.started()
            async for event in events:
                await send.send(event)

    # --- decisions, and doing them -------------------------------------------------------------

    async def _reconcile(self, engine: DockerEngine) -> None:
        running = []
        for container in await engine.running():
            try:
                running.append(await engine.inspect(container))
            except NoSuchContainer:
                continue  # gone meanwhile: its events follow
        networks = await engine.networks()
        for network in networks:
            self._drivers[network.id] = network.driver
        meshnet_networks = [n.id for n in networks if lifecycle.is_meshnet_network(n)]
        owners = self.ipam.holders(lifecycle.OWNER_PREFIX)
        named = self._dns_containers()
        for action in lifecycle.reconcile(running, meshnet_networks, owners, named):
            await self._do(action)
        if self._held_at_start:
            ours = [n for n in networks if n.ipam_driver == PLUGIN_NAME]
            held, self._held_at_start = self._held_at_start, {}
            for owner in lifecycle.orphaned_plugin_addresses(held, ours):
                released = await self.ipam.release(owner)
                if released:
                    log.info(
                        "%s: released %s: no Docker network uses it any more",
                        self._nick,
                        ", ".join(map(str, released)),
                    )

    async def _handle(self, engine: DockerEngine, event: Event) -> None:
        actions = lifecycle.on_event(event)
        if not actions and lifecycle.needs_inspection(event) and event.container:
            try:
                info = await engine.inspect(event.container)
            except NoSuchContainer:
                actions = [lifecycle.Forget(event.container)]
            else:
                actions = lifecycle.on_running(info, await self._meshnet_networks(engine, info))
        elif (
            event.type == "network"
            and event.action == "disconnect"
            and event.attributes.get("type") == PLUGIN_NAME
            and event.container
        ):
            actions = await self._after_disconnect(engine, event.container)
        for action in actions:
            await self._do(action)

    async def _after_disconnect(self, engine: DockerEngine, container: str) -> list[Any]:
        """A container left a meshnet network: unname the addresses it no longer has there."""
        try:
            info = await engine.inspect(container)
        except NoSuchContainer:
            return [lifecycle.Forget(container)]
        now = set(lifecycle.meshnet_addresses(info, await self._meshnet_networks(engine, info)))
        gone = self._registered.get(container, set()) - now
        return [lifecycle.Unregister(container, tuple(sorted(gone)))] if gone else []

    async def _meshnet_networks(self, engine: DockerEngine, info: ContainerInfo) -> list[str]:
        found = []
        for endpoint in info.endpoints:
            network = endpoint.network_id
            if network and network not in self._drivers:
                try:
                    self._drivers[network] = (await engine.network(network)).driver
                except NotFound:
                    continue
            if self._drivers.get(network) == PLUGIN_NAME:
                found.append(network)
        return found

    async def _do(self, action: lifecycle.Action) -> None:
        try:
            if isinstance(action, lifecycle.Attach):
                if self.engine is None:
                    return
                info = await self.engine.inspect(action.container)
                if not info.running:
                    return
                # No specs (an empty label): IPv4 only for now; Docker containers' IPv6 comes
                # with the plugin's IPv6 pools (`net:default6` in the label asks for it).
                specs = list(action.addresses) or ["net:default"]
                result = await self.attach_container(info, specs, name=info.name)
                log.info(
                    "%s: attached Docker container %s: %s",
                    self._nick,
                    info.name,
                    ", ".join(result["addresses"]),
                )
            elif isinstance(action, lifecycle.Register):
                self._register(action.container, action.name, list(action.addresses))
                self._registered.setdefault(action.container, set()).update(action.addresses)
            elif isinstance(action, lifecycle.Unregister):
                if self.dns is not None:
                    self.dns.detached(action.container, list(action.addresses))
                self._registered.get(action.container, set()).difference_update(action.addresses)
            elif isinstance(action, lifecycle.Forget):
                await self.forget(action.container)
        except (MeshnetError, OSError) as e:
            self._error(f"{type(action).__name__.lower()} {action.container[:12]}: {e}")

    def _error(self, message: str) -> None:
        self._counters["errors"] += 1
        self._last_error = message
        log.warning("%s: Docker: %s", self._nick, message)

    def _register(self, container: str, name: str, addresses: list[str]) -> str | None:
        """Name a container's addresses after it; None if it has no name DNS can take."""
        if self.dns is None or not addresses:
            return None
        try:
            fqdn = self.dns.name_for(name)
        except UserError as e:
            log.info("%s: %s not named in DNS: %s", self._nick, name, e)
            return None
        if fqdn is None:
            return None
        self.dns.add(container, fqdn, addresses)
        return fqdn

    def _dns_containers(self) -> set[str]:
        if self.dns is None:
            return set()
        return {r.container for r in self.dns.records.own_records() if r.live}

    async def forget(self, container: str) -> None:
        """A container is gone: release what IPAM holds for it and remove its names."""
        owners = [
            owner
            for owner in self.ipam.holders(lifecycle.ipam_owner(container))
            if lifecycle.owner_container(owner) == container
        ]
        had_names = container in self._dns_containers()
        released = await self.node.forget(owners, container if had_names else None)
        self._registered.pop(container, None)
        if released or had_names:
            self._counters["forgotten"] += 1
            log.info(
                "%s: Docker container %s gone: released %s%s",
                self._nick,
                container[:12],
                ", ".join(map(str, released)) or "no address",
                ", names removed" if had_names else "",
            )

    # --- attach and detach by Docker id or name ------------------------------------------------

    async def attach_container(
        self,
        info: ContainerInfo,
        specs: list[str],
        *,
        ifname: str = CONTAINER_IFNAME,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Attach a running container through its PID's namespace; IPAM and DNS by its id."""
        if not info.running:
            raise UserError(f"Docker container {info.name} is not running")
        for spec in specs:
            parse_spec(spec)
        fqdn = self.node.dns_name(name)
        target = Target(
            info.namespace, owner=lifecycle.ipam_owner(info.id, ifname), records=info.id
        )
        attached = await self.node.attach(target, specs, ifname, fqdn)
        self._counters["attached"] += 1
        return {
            **attached.attachment,
            "container": info.id,
            "docker_name": info.name,
            "dns_name": attached.dns_name,
        }

    async def detach_container(
        self, info: ContainerInfo, addresses: list[str], ifname: str
    ) -> dict[str, Any]:
        """Detach (if it still runs) and release what IPAM holds for it by its id."""
        namespace = info.namespace if info.running else ""
        target = Target(namespace, owner=lifecycle.ipam_owner(info.id, ifname), records=info.id)
        detached = await self.node.detach(target, addresses, ifname)
        return {"detached": detached.detached or bool(detached.released), "container": info.id}

    async def docker_container(self, spec: Any) -> ContainerInfo | None:
        """The Docker container ``spec`` names, if it names no namespace and Docker knows it.

        A namespace name, a PID or a path keeps meaning what it always meant.
        """
        engine = self.engine
        if engine is None or not isinstance(spec, str) or not is_container_ref(spec.strip()):
            return None
        spec = spec.strip()
        try:
            await trio.to_thread.run_sync(attachment.resolve_namespace, spec)
            return None
        except UserError:
            pass
        try:
            return await engine.inspect(spec)
        except NoSuchContainer:
            raise UserError(f"no such container namespace or Docker container: {spec}") from None
        except DockerError as e:
            raise UserError(f"cannot ask Docker about {spec}: {e}") from None

    # --- status --------------------------------------------------------------------------------

    def statistics(self) -> DockerStatistics:
        plugin = self.plugin_app.statistics() if self.plugin_app is not None else None
        return DockerStatistics(
            state=self.state,
            host=self.settings.host,
            api_version=self.api_version,
            plugin=self.plugin_state if self.settings.plugin else "off (--no-docker-plugin)",
            plugin_socket=str(self.settings.plugin_socket)
            if self.plugin_state == "serving"
            else None,
            events=self._counters["events"],
            attached=self._counters["attached"],
            forgotten=self._counters["forgotten"],
            errors=self._counters["errors"],
            last_error=self._last_error,
            plugin_calls=dict(plugin.calls) if plugin else {},
            plugin_errors=plugin.errors if plugin else 0,
        )

    def status(self) -> dict[str, Any]:
        return asdict(self.statistics())


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for e in error.exceptions for leaf in _leaves(e)]
    return [error]
