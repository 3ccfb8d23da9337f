"""The Kubernetes entrypoint's core: peer lists, node lists, the reconciler, the CNI files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meshnet.cli.kube import run as kube_run
from meshnet.errors import UserError
from meshnet.integrations.kubernetes import cni_files
from meshnet.integrations.kubernetes.apiserver import ApiServer
from meshnet.integrations.kubernetes.peers import (
    KubeNode,
    MeshPeer,
    NodeListError,
    decide,
    node_name,
    parse_node_list,
    parse_peer_list,
    peer_targets,
)
from tests.conftest import run_meshnet
from tests.unit.test_cli import assert_one_line_error

A, B, C = "aa:00:00:00:00:0a", "aa:00:00:00:00:0b", "aa:00:00:00:00:0c"


def node_item(name: str, *addresses: tuple[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]},
    }


def nodes(*names: str) -> tuple[KubeNode, ...]:
    return tuple(KubeNode(n, f"10.0.0.{ord(n[-1]) - ord('a') + 1}") for n in names)


# --- peer and node lists ----------------------------------------------------------------------


def test_peer_list_takes_commas_and_spaces() -> None:
    assert parse_peer_list(" 10.0.0.1, 10.0.0.2 10.0.0.3:7000,,10.0.0.1 ") == (
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.3:7000",
    )
    assert parse_peer_list("") == ()


def test_node_list_gives_internal_ips_ipv4_first() -> None:
    data = {
        "kind": "NodeList",
        "items": [
            node_item(
                "b", ("Hostname", "b"), ("InternalIP", "fd00::2"), ("InternalIP", "10.0.0.2")
            ),
            node_item("a", ("ExternalIP", "192.0.2.1"), ("InternalIP", "10.0.0.1")),
            node_item("c", ("Hostname", "c")),
            {"metadata": {"name": "d"}},  # no status yet
        ],
    }
    assert parse_node_list(data) == (
        KubeNode("a", "10.0.0.1"),
        KubeNode("b", "10.0.0.2"),
        KubeNode("c", None),
        KubeNode("d", None),
    )


@pytest.mark.parametrize(
    "data",
    [[], {"kind": "Status"}, {"items": [{"status": {}}]}, {"items": [{"metadata": {"name": ""}}]}],
)
def test_a_malformed_node_list_is_refused(data: Any) -> None:
    with pytest.raises(NodeListError):
        parse_node_list(data)


def test_targets_skip_this_node_and_nodes_without_address() -> None:
    listed = (*nodes("a", "b"), KubeNode("c", None), KubeNode("v6", "fd00::1"))
    assert peer_targets(listed, "a", 6783) == ("10.0.0.2:6783", "[fd00::1]:6783")


def test_node_name() -> None:
    assert node_name("worker-1", "ignored") == "worker-1"
    assert node_name(None, "Worker-1") == "worker-1"
    with pytest.raises(UserError, match="bad node name"):
        node_name("Bad_Node", "x")


# --- the reconciler ---------------------------------------------------------------------------


def look(me: str, listed: tuple[KubeNode, ...], **kwargs: Any) -> Any:
    args: dict[str, Any] = {"dialled": (), "peers": (), "owners": (), "remembered": {}}
    return decide(me, listed, 6783, **{**args, **kwargs})


def test_new_nodes_are_connected_and_deleted_ones_forgotten() -> None:
    d = look("a", nodes("a", "b", "d"), dialled={"10.0.0.2:6783", "10.0.0.3:6783"})
    assert d.connect == ("10.0.0.4:6783",)
    assert d.forget == ("10.0.0.3:6783",)


def test_peers_of_listed_nodes_are_remembered_by_nickname() -> None:
    peers = [MeshPeer(A, "a", True, local=True), MeshPeer(B, "b", True), MeshPeer(C, "x", True)]
    d = look("a", nodes("a", "b"), peers=peers)
    assert d.remembered == {B: "b"}  # not ourselves, not a peer of no listed node
    assert d.rmpeer == ()


def test_the_lowest_named_reachable_node_reclaims_a_deleted_node() -> None:
    remembered = {B: "b", C: "c"}
    peers = [MeshPeer(A, "a", True, local=True), MeshPeer(B, "b", True)]
    d = look("a", nodes("a", "b"), peers=peers, owners={A, B, C}, remembered=remembered)
    assert d.rmpeer == (C,)
    assert d.remembered == remembered  # until the ring says C owns nothing
    peers_b = [MeshPeer(A, "a", True), MeshPeer(B, "b", True, local=True)]
    d = look("b", nodes("a", "b"), peers=peers_b, owners={A, B, C}, remembered=remembered)
    assert d.rmpeer == ()  # b is not the leader: a is


def test_a_dead_leader_leaves_the_reclaim_to_the_next() -> None:
    peers = [MeshPeer(A, "a", False), MeshPeer(B, "b", True, local=True)]
    remembered = {A: "a", C: "c"}
    d = look("b", nodes("a", "b"), peers=peers, owners={A, B, C}, remembered=remembered)
    assert d.rmpeer == (C,)  # a is listed but down; a itself is not reclaimed (still listed)


def test_a_deleted_node_still_reachable_is_left_alone() -> None:
    peers = [MeshPeer(A, "a", True, local=True), MeshPeer(C, "c", True)]
    d = look("a", nodes("a"), peers=peers, owners={A, C}, remembered={C: "c"})
    assert d.rmpeer == ()
    assert d.remembered == {C: "c"}


def test_a_reclaimed_peer_is_forgotten() -> None:
    peers = [MeshPeer(A, "a", True, local=True)]
    d = look("a", nodes("a"), peers=peers, owners={A}, remembered={C: "c"})
    assert d.rmpeer == ()
    assert d.remembered == {}


def test_a_node_that_came_back_as_another_peer_has_its_old_peer_reclaimed() -> None:
    new_c = "aa:00:00:00:00:cc"
    peers = [MeshPeer(A, "a", True, local=True), MeshPeer(new_c, "c", True)]
    d = look("a", nodes("a", "c"), peers=peers, owners={A, C, new_c}, remembered={C: "c"})
    assert d.rmpeer == (C,)
    assert d.remembered == {C: "c", new_c: "c"}


def test_a_node_down_but_listed_keeps_its_space() -> None:
    peers = [MeshPeer(A, "a", True, local=True), MeshPeer(C, "c", False)]
    d = look("a", nodes("a", "c"), peers=peers, owners={A, C}, remembered={C: "c"})
    assert d.rmpeer == ()


def test_a_list_without_this_node_removes_nothing() -> None:
    d = look(
        "a",
        nodes("b"),
        dialled={"10.0.0.3:6783"},
        peers=[MeshPeer(A, "a", True, local=True)],
        owners={A, C},
        remembered={C: "c"},
    )
    assert (d.forget, d.rmpeer) == ((), ())
    assert d.connect == ("10.0.0.2:6783",)
    assert d.remembered == {C: "c"}


# --- CNI files --------------------------------------------------------------------------------


def test_the_plugin_zipapp_runs_alone(tmp_path: Path) -> None:
    first = cni_files.install_plugin(tmp_path)
    assert first.changed and not cni_files.install_plugin(tmp_path).changed
    assert os.stat(first.path).st_mode & 0o777 == 0o755
    # -I: no site-packages and no meshnet checkout on the path, as on a node's python3.
    proc = subprocess.run(
        [sys.executable, "-I", str(first.path)],
        env={"CNI_COMMAND": "VERSION"},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1.0.0" in json.loads(proc.stdout)["supportedVersions"]
    assert cni_files.plugin_zipapp() == cni_files.plugin_zipapp()  # deterministic


def test_the_conflist_names_the_plugin_and_socket(tmp_path: Path) -> None:
    installed = cni_files.install_conflist(tmp_path, Path("/run/meshnet/meshnet.sock"))
    conf = json.loads(installed.path.read_text())
    assert installed.path.name == "10-meshnet.conflist"
    assert conf["plugins"] == [{"type": "meshnet-cni", "apiSocket": "/run/meshnet/meshnet.sock"}]
    installed.path.write_text("{}")
    assert cni_files.install_conflist(tmp_path, Path("/run/meshnet/meshnet.sock")).changed


# --- in-cluster configuration and the command line --------------------------------------------


def test_in_cluster_configuration(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    (tmp_path / "ca.crt").write_text("x")
    env = {
        "KUBERNETES_SERVICE_HOST": "fd00::1",
        "KUBERNETES_SERVICE_PORT": "6443",
        "MESHNET_KUBE_SERVICEACCOUNT_DIR": str(tmp_path),
    }
    server = ApiServer.in_cluster(env)
    assert server.url == "https://[fd00::1]:6443"
    assert server.token_file == tmp_path / "token"
    with pytest.raises(UserError, match="KUBERNETES_SERVICE_HOST"):
        ApiServer.in_cluster({})
    with pytest.raises(UserError, match="no service-account token"):
        ApiServer.in_cluster({**env, "MESHNET_KUBE_SERVICEACCOUNT_DIR": str(tmp_path / "none")})


def kube_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHNET_", "KUBERNETES_"))}
    return {
        **env,
        "MESHNET_CNI_CONF_DIR": str(tmp_path),
        "MESHNET_CNI_BIN_DIR": str(tmp_path),
        "MESHNET_STATE_DIR": str(tmp_path / "state"),
        "MESHNET_API_SOCKET": str(tmp_path / "meshnet.sock"),
        **extra,
    }


def test_kube_run_mistakes_are_one_line(tmp_path: Path) -> None:
    def run(**extra: str) -> subprocess.CompletedProcess[str]:
        return run_meshnet("kube", "run", env=kube_env(tmp_path, **extra))

    assert_one_line_error(
        run(MESHNET_PEERS="10.0.0.2", MESHNET_KUBE_PEERS="1"), "MESHNET_PEERS or MESHNET_KUBE"
    )
    assert_one_line_error(run(MESHNET_KUBE_PEERS="1"), "KUBERNETES_SERVICE_HOST")
    assert_one_line_error(run(MESHNET_NODE_NAME="Not_A_Node"), "bad node name")
    assert_one_line_error(
        run(MESHNET_NODE_NAME="n1", MESHNET_NICKNAME="other"), "the node's name (n1)"
    )
    assert_one_line_error(run(MESHNET_CNI_BIN_DIR=str(tmp_path / "no")), "no CNI directory")
    assert_one_line_error(run(MESHNET_PEERS="10.0.0.2:http"), "peer address")
    assert "MESHNET_KUBE_PEERS" in run_meshnet("kube", "run", "--help").stdout


def test_the_manifest_sets_only_variables_kube_run_reads() -> None:
    """examples/kubernetes/meshnet.yaml: a misspelt variable would silently do nothing."""
    manifest = Path(__file__).parents[2] / "examples" / "kubernetes" / "meshnet.yaml"
    names = set(re.findall(r"- name: (MESHNET_\w+)", manifest.read_text()))
    known = {p.envvar for p in kube_run.params if isinstance(p.envvar, str)}
    assert {"MESHNET_NODE_NAME", "MESHNET_KUBE_PEERS", "MESHNET_CNI_BIN_DIR"} <= names
    assert names <= known, names - known
