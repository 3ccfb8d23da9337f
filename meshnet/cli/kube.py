"""`meshnet kube run`: what the Kubernetes DaemonSet's pod runs (examples/kubernetes/).

Every `meshnet launch` option, from the same ``MESHNET_*`` variables, plus the node's: its name
(the router's nickname), where its peers come from, and the host's CNI directories. The work is
in ``meshnet.integrations.kubernetes``; this module only turns flags into its settings.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import click

from meshnet.api.client import ApiClient
from meshnet.cli.launch_options import config_from_options, launch_options, launch_warnings
from meshnet.errors import UserError
from meshnet.integrations.kubernetes.apiserver import ApiServer, ApiServerError
from meshnet.integrations.kubernetes.peers import (
    KubeNode,
    node_name,
    parse_peer_list,
    peer_targets,
)

log = logging.getLogger("meshnet.kubernetes")

FIRST_LIST_TIMEOUT = 60.0  # the API server may come up with the node: keep asking this long
_PATH = click.Path(path_type=Path, file_okay=False)


@click.group()
def kube() -> None:
    """Run meshnet on a Kubernetes cluster (see examples/kubernetes/)."""


@kube.command()
@click.option(
    "--node-name",
    "node_name_text",
    envvar="MESHNET_NODE_NAME",
    show_envvar=True,
    help="This node's name (the DaemonSet sets it from spec.nodeName); the router's nickname  "
    "[default: the host name]",
)
@click.option(
    "--peers",
    "peer_text",
    default="",
    envvar="MESHNET_PEERS",
    show_envvar=True,
    metavar="ADDR[:PORT],...",
    help="The peers to connect to, separated by commas or spaces.",
)
@click.option(
    "--kube-peers",
    is_flag=True,
    envvar="MESHNET_KUBE_PEERS",
    show_envvar=True,
    help="Peers are the cluster's nodes (their InternalIP), read from the Kubernetes API and "
    "watched: new nodes are connected, deleted nodes' address space reclaimed.",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(0.1, 3600),
    default=30.0,
    show_default=True,
    envvar="MESHNET_KUBE_POLL_INTERVAL",
    show_envvar=True,
    metavar="SECONDS",
    help="How often the node list is read again.",
)
@click.option(
    "--cni-conf-dir",
    type=_PATH,
    default=Path("/etc/cni/net.d"),
    show_default=True,
    envvar="MESHNET_CNI_CONF_DIR",
    show_envvar=True,
    help="The host's CNI configuration directory (mounted into the pod): 10-meshnet.conflist.",
)
@click.option(
    "--cni-bin-dir",
    type=_PATH,
    default=Path("/opt/cni/bin"),
    show_default=True,
    envvar="MESHNET_CNI_BIN_DIR",
    show_envvar=True,
    help="The host's CNI plugin directory (mounted into the pod): meshnet-cni.",
)
@click.option(
    "--no-cni",
    is_flag=True,
    envvar="MESHNET_NO_CNI",
    show_envvar=True,
    help="Install no CNI files (another tool manages them).",
)
@click.option(
    "--no-expose",
    is_flag=True,
    envvar="MESHNET_NO_EXPOSE",
    show_envvar=True,
    help="Do not expose the host on the overlay (the node then cannot reach its pods).",
)
@launch_options
def run(
    node_name_text: str | None,
    peer_text: str,
    kube_peers: bool,
    poll_interval: float,
    cni_conf_dir: Path,
    cni_bin_dir: Path,
    no_cni: bool,
    no_expose: bool,
    **options: Any,
) -> None:
    """Install the CNI plugin and configuration, then run the router here with its peers.

    The router runs in the foreground until SIGTERM; the host is exposed on the overlay so the
    node reaches its pods.
    """
    # Imported here: the daemon pulls in trio, pyroute2 and every service, which `--help` and
    # the other commands must not pay for.
    import trio

    from meshnet.integrations.kubernetes.entrypoint import KubeSettings
    from meshnet.integrations.kubernetes.entrypoint import run as run_entrypoint

    node = node_name(node_name_text, socket.gethostname())
    given = options.get("nickname")
    if given and given != node:
        raise UserError(
            f"--nickname {given}: on Kubernetes the nickname is the node's name ({node}), "
            "which is how peers find a deleted node's router"
        )
    options["nickname"] = node
    if kube_peers and peer_text.strip():
        raise UserError("give MESHNET_PEERS or MESHNET_KUBE_PEERS=1, not both")
    for directory in () if no_cni else (cni_conf_dir, cni_bin_dir):
        if not directory.is_dir():
            raise UserError(f"no CNI directory {directory}: mount the host's there, or --no-cni")
    apiserver = ApiServer.in_cluster(os.environ) if kube_peers else None
    port = config_from_options((), options).port
    peers = parse_peer_list(peer_text)
    if apiserver is not None:
        nodes = _first_node_list(apiserver)
        if node not in {n.name for n in nodes}:
            log.warning("%s: this node is not in the node list: is MESHNET_NODE_NAME right?", node)
        peers = peer_targets(nodes, node, port)
        log.info("%s: %d nodes listed; peers %s", node, len(nodes), " ".join(peers) or "none")
    config = config_from_options(peers, options)
    for warning in launch_warnings(config):
        log.warning("%s: %s", node, warning)
    if ApiClient(config.api_socket).is_ready():
        raise UserError(f"meshnet is already running on {config.api_socket}")
    settings = KubeSettings(
        node=node,
        poll_interval=poll_interval,
        cni_conf_dir=None if no_cni else cni_conf_dir,
        cni_bin_dir=None if no_cni else cni_bin_dir,
        expose=not no_expose,
    )
    trio.run(run_entrypoint, config, settings, apiserver)


def _first_node_list(apiserver: ApiServer) -> tuple[KubeNode, ...]:
    """The launch peers: the API server may still be coming up, so ask for a while."""
    deadline = time.monotonic() + FIRST_LIST_TIMEOUT
    while True:
        try:
            return apiserver.list_nodes()
        except ApiServerError as e:
            if time.monotonic() >= deadline:
                raise UserError(f"cannot read the node list: {e}") from None
            log.warning("cannot read the node list (trying again): %s", e)
            time.sleep(2)
