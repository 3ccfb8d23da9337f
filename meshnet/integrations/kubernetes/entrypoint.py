"""`meshnet kube run`, the trio shell: the router in this process, then what the node needs.

Once the router is ready: the ``meshnet-cni`` plugin goes into the host's CNI bin directory,
the host is exposed on the overlay (so the node reaches its pods and they reach the node and the
world through it; it is retried until IPAM can allocate, which may wait for the other nodes), and
only then the conflist goes into the CNI configuration directory: the kubelet calls the node's
network ready when that file appears, and by then pods can get addresses. With
``MESHNET_KUBE_PEERS`` the node list is read again every poll interval and ``peers.decide``
says what to connect, forget and reclaim; the API server or the router failing one poll is a
warning, and the next poll tries again. When the router stops (SIGTERM from the kubelet,
`meshnet stop`), so does everything else.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from meshnet import daemon
from meshnet.api.client import ApiClient
from meshnet.config import Config
from meshnet.constants import ALLOCATE_TIMEOUT
from meshnet.errors import UserError
from meshnet.gossip.identity import Identity
from meshnet.integrations.kubernetes import cni_files
from meshnet.integrations.kubernetes.apiserver import ApiServer, ApiServerError
from meshnet.integrations.kubernetes.peers import MeshPeer, decide
from meshnet.statefile import set_aside, write_atomically

log = logging.getLogger("meshnet.kubernetes")

MEMORY_FILE = "kube-peers.json"  # in the state directory: peer name -> node name
EXPOSE_RETRY = 5.0  # seconds between attempts to expose while IPAM cannot allocate yet


@dataclass(frozen=True)
class KubeSettings:
    node: str  # this node's name, the router's nickname
    poll_interval: float
    cni_conf_dir: Path | None  # None: leave the node's CNI configuration alone
    cni_bin_dir: Path | None
    expose: bool


async def run(config: Config, settings: KubeSettings, apiserver: ApiServer | None) -> None:
    """The router and, beside it, the node's CNI files, expose and the node list watch."""
    client = ApiClient(config.api_socket, timeout=ALLOCATE_TIMEOUT + 15)
    async with trio.open_nursery() as nursery:

        async def router(task_status: trio.TaskStatus[Identity] = trio.TASK_STATUS_IGNORED) -> None:
            await daemon.run(config, task_status=task_status)
            nursery.cancel_scope.cancel()  # the router stopped: so does the pod

        await nursery.start(router)
        if settings.cni_bin_dir is not None:
            installed = await trio.to_thread.run_sync(
                cni_files.install_plugin, settings.cni_bin_dir
            )
            _log_installed(settings.node, installed)
        nursery.start_soon(_expose_then_conflist, client, config, settings)
        if apiserver is not None:
            nursery.start_soon(_watch_nodes, client, apiserver, config, settings)


def _log_installed(node: str, installed: cni_files.Installed) -> None:
    log.info("%s: %s %s", node, installed.path, "installed" if installed.changed else "up to date")


async def _call(method: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(method, *args)


async def _expose_then_conflist(client: ApiClient, config: Config, settings: KubeSettings) -> None:
    while settings.expose:
        try:
            result = await _call(
                client.post, "/expose", {"addresses": [], "name": None, "masquerade": True}
            )
        except UserError as e:
            log.warning("%s: expose failed (again in %.0f s): %s", settings.node, EXPOSE_RETRY, e)
            await trio.sleep(EXPOSE_RETRY)
            continue
        shown = " ".join(e["address"] for e in result["exposed"])
        log.info("%s: host exposed on the overlay as %s", settings.node, shown)
        break
    if settings.cni_conf_dir is not None:
        installed = await trio.to_thread.run_sync(
            cni_files.install_conflist, settings.cni_conf_dir, config.api_socket
        )
        _log_installed(settings.node, installed)


async def _watch_nodes(
    client: ApiClient, apiserver: ApiServer, config: Config, settings: KubeSettings
) -> None:
    """Every poll: the node list and the router's view in, ``decide``'s actions out."""
    memory_path = config.state_dir / MEMORY_FILE
    remembered = _load_memory(memory_path, settings.node)
    dialled = set(config.peers)  # the launch peers came from the first node list
    while True:
        await trio.sleep(settings.poll_interval)
        try:
            nodes = await trio.to_thread.run_sync(apiserver.list_nodes)
            peers = [
                MeshPeer(p["name"], p["nickname"], p["reachable"], p["local"])
                for p in await _call(client.get, "/status/peers")
            ]
            ipam = await _call(client.get, "/status/ipam")
        except (ApiServerError, UserError) as e:
            log.warning("%s: node list not checked this time: %s", settings.node, e)
            continue
        owners = [p["name"] for p in ipam["peers"] if p["size"] > 0]
        decision = decide(
            settings.node,
            nodes,
            config.port,
            dialled=dialled,
            peers=peers,
            owners=owners,
            remembered=remembered,
        )
        for address in decision.connect:
            if await _act(settings.node, client, "/connect", {"address": address}, "connect"):
                dialled.add(address)
        for address in decision.forget:
            if await _act(settings.node, client, "/forget", {"address": address}, "forget"):
                dialled.discard(address)
        for peer in decision.rmpeer:
            node = remembered.get(peer, "?")
            if await _act(settings.node, client, "/ipam/rmpeer", {"peer": peer}, "rmpeer"):
                log.info(
                    "%s: reclaimed the address space of %s (node %s)", settings.node, peer, node
                )
        if decision.remembered != remembered:
            remembered = dict(decision.remembered)
            await trio.to_thread.run_sync(_save_memory, memory_path, remembered)


async def _act(node: str, client: ApiClient, path: str, body: dict[str, Any], what: str) -> bool:
    try:
        result = await _call(client.post, path, body)
    except UserError as e:  # rmpeer of a peer that is reachable again, say: next poll
        log.warning("%s: %s %s failed: %s", node, what, next(iter(body.values())), e)
        return False
    log.info("%s: %s %s", node, what, json.dumps(result, sort_keys=True))
    return True


def _load_memory(path: Path, node: str) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        aside = set_aside(path)
        log.error("%s: %s unreadable (%s), moved to %s", node, path, e, aside)
        return {}
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        aside = set_aside(path)
        log.error("%s: %s is not a map of peers to nodes, moved to %s", node, path, aside)
        return {}
    return data


def _save_memory(path: Path, remembered: dict[str, str]) -> None:
    write_atomically(path, json.dumps(remembered, indent=2, sort_keys=True) + "\n")
