"""`meshnet kube run` in lab hosts, as the DaemonSet runs it, against a fake API server.

Three lab hosts are the cluster's nodes: each has a node address (its InternalIP, on ``lo``,
routed over the lab's links), the CNI directories are temporary host directories, and the API
server (tests/net/kube_apiserver.py, HTTPS with a test CA and a bearer token) answers the node
list from a file the test rewrites. The entrypoints get exactly the DaemonSet's variables.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshnet.api.client import ApiClient
from meshnet.dataplane.kernel import netlink
from meshnet.lab import lab as lablib
from tests.net.conftest import can_ping, ns_run
from tests.net.test_mesh import wait_for

pytestmark = pytest.mark.netns

API_PORT = 6443
TOKEN = "test-token-" + uuid.uuid4().hex


def node_ip(index: int) -> str:
    return f"198.51.100.{index}"


def setup_node_addresses(state: dict[str, Any]) -> dict[str, str]:
    """Each host hN gets 198.51.100.N/32 on lo, and routes to the others' over its links, from
    that address: as on a real node, whose InternalIP is the address it sends from (a peer's
    heartbeats from another address of the same host would not prove its data path)."""
    hosts = {h["name"]: h for h in state["hosts"]}
    ips = {name: node_ip(int(name[1:])) for name in hosts}
    for name, host in hosts.items():
        ns = host["namespace"]
        assert ns_run(ns, "ip", "addr", "add", f"{ips[name]}/32", "dev", "lo").returncode == 0
    for link in state["links"]:
        a_address, b_address = link["addresses"]
        for here, there, via in (
            (link["a"], link["b"], b_address),
            (link["b"], link["a"], a_address),
        ):
            gateway = via.split("/")[0]
            route = ns_run(
                hosts[here]["namespace"],
                *("ip", "route", "add", ips[there], "via", gateway, "src", ips[here]),
            )
            assert route.returncode == 0, route.stderr
    return ips


def make_ca(directory: Path, address: str) -> tuple[Path, Path, Path]:
    """A self-signed certificate for the API server's address; the service-account directory
    holds it as ca.crt with the token."""
    cert, key = directory / "apiserver.crt", directory / "apiserver.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=kubernetes", "-addext", f"subjectAltName=IP:{address}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    account = directory / "serviceaccount"
    account.mkdir()
    (account / "ca.crt").write_bytes(cert.read_bytes())
    (account / "token").write_text(TOKEN + "\n")
    return cert, key, account


@pytest.fixture
def processes() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Processes started in lab namespaces; stopped (SIGTERM, then SIGKILL) after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(namespace: str, args: list[str], env: dict[str, str], log: Path) -> Any:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", namespace, *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_nodes(path: Path, nodes: dict[str, str]) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(nodes))
    os.replace(temp, path)


def entrypoint_env(host: dict[str, Any], account: Path) -> dict[str, str]:
    """The DaemonSet's variables (examples/kubernetes/meshnet.yaml), with the lab's paths."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MESHNET_", "KUBERNETES_"))}
    directory = Path(host["dir"])
    return {
        **base,
        "MESHNET_NODE_NAME": host["name"],
        "MESHNET_KUBE_PEERS": "1",
        "KUBERNETES_SERVICE_HOST": node_ip(1),
        "KUBERNETES_SERVICE_PORT": str(API_PORT),
        "MESHNET_KUBE_SERVICEACCOUNT_DIR": str(account),
        "MESHNET_CNI_CONF_DIR": str(directory / "etc-cni-net.d"),
        "MESHNET_CNI_BIN_DIR": str(directory / "opt-cni-bin"),
        "MESHNET_STATE_DIR": str(directory),
        "MESHNET_API_SOCKET": str(lablib.host_api_socket(directory)),
        "MESHNET_KUBE_POLL_INTERVAL": "1",
        "MESHNET_HEARTBEAT_INTERVAL": "1",
        "MESHNET_NO_DOCKER": "1",
    }


def cni_add(state: dict[str, Any], host: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """A pod on ``host``: a fresh namespace, then the installed plugin's ADD as a runtime runs
    it (in the host's namespace, the conflist's entry on stdin)."""
    namespace = f"{lablib.namespace_prefix(state['name'])}pod{uuid.uuid4().hex[:6]}"
    lablib.Journal(Path(state["directory"]) / "journal").record("netns", namespace)
    netlink.create_namespace(namespace)
    conflist = json.loads((Path(env["MESHNET_CNI_CONF_DIR"]) / "10-meshnet.conflist").read_text())
    plugin = conflist["plugins"][0]
    conf = {**plugin, "cniVersion": conflist["cniVersion"], "name": conflist["name"]}
    bin_dir = env["MESHNET_CNI_BIN_DIR"]
    proc = subprocess.run(
        ["ip", "netns", "exec", host["namespace"], f"{bin_dir}/{plugin['type']}"],
        input=json.dumps(conf).encode(),
        env={
            "PATH": os.environ["PATH"],
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": uuid.uuid4().hex,
            "CNI_NETNS": str(netlink.NETNS_DIR / namespace),
            "CNI_IFNAME": "eth0",
            "CNI_PATH": bin_dir,
            "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
        },
        capture_output=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    result = json.loads(proc.stdout)
    return {"namespace": namespace, "address": result["ips"][0]["address"].split("/")[0]}


def test_daemonset_entrypoint_finds_peers_installs_cni_and_reclaims_deleted_nodes(
    make_lab: Callable[..., dict[str, Any]],
    processes: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    state = make_lab("full", hosts=3, containers=0, daemons=False)
    hosts = {h["name"]: h for h in state["hosts"]}
    ips = setup_node_addresses(state)
    cert, key, account = make_ca(tmp_path, ips["h1"])
    nodes_file = tmp_path / "nodes.json"
    write_nodes(nodes_file, ips)
    server = Path(__file__).with_name("kube_apiserver.py")
    processes(
        hosts["h1"]["namespace"],
        [sys.executable, str(server), "0.0.0.0", str(API_PORT), str(cert), str(key), TOKEN,
         str(nodes_file)],
        dict(os.environ),
        tmp_path / "apiserver.log",
    )  # fmt: skip

    envs: dict[str, dict[str, str]] = {}
    routers: dict[str, subprocess.Popen[bytes]] = {}
    for name, host in hosts.items():
        envs[name] = env = entrypoint_env(host, account)
        for directory in ("MESHNET_CNI_CONF_DIR", "MESHNET_CNI_BIN_DIR"):
            Path(env[directory]).mkdir()
        routers[name] = processes(
            host["namespace"],
            [sys.executable, "-m", "meshnet", "kube", "run"],
            env,
            Path(host["dir"]) / "meshnet.log",  # shown by make_lab when the test fails
        )
    clients = {n: ApiClient(lablib.host_api_socket(h["dir"])) for n, h in hosts.items()}

    # The routers find each other from the node list, each dialling the others' InternalIPs.
    for name, client in clients.items():
        wait_for(lambda c=client: c.get("/status")["peers"] == 3, 60, f"{name} sees 3 peers")
        targets = set(client.get("/status")["targets"])
        assert targets == {f"{ip}:6783" for n, ip in ips.items() if n != name}, targets
        assert routers[name].poll() is None
    # Every host is exposed, and only then is the conflist there; the plugin beside it.
    for name, env in envs.items():
        conflist = Path(env["MESHNET_CNI_CONF_DIR"]) / "10-meshnet.conflist"
        wait_for(conflist.exists, 60, f"the conflist on {name}")
        assert json.loads(conflist.read_text())["plugins"][0]["apiSocket"] == str(
            lablib.host_api_socket(hosts[name]["dir"])
        )
        assert os.access(Path(env["MESHNET_CNI_BIN_DIR"]) / "meshnet-cni", os.X_OK)
        assert clients[name].get("/status")["exposed"], name

    # A pod on h2 through the installed plugin: its node and another node reach it.
    pod = cni_add(state, hosts["h2"], envs["h2"])
    assert can_ping(hosts["h2"]["namespace"], pod["address"])
    assert wait_for(lambda: can_ping(hosts["h1"]["namespace"], pod["address"]), 20, "h1 -> pod")
    default = ns_run(pod["namespace"], "ip", "route", "show", "default").stdout
    assert "default via" in default, default  # through h2's exposed address

    # h3 owns address space; its node is deleted while its router is down: h1, the
    # lowest-named remaining node, reclaims it, and h2 leaves that to h1.
    ipam = clients["h1"].get("/status/ipam")
    h3 = next(p for p in ipam["peers"] if p["nickname"] == "h3")
    assert h3["size"] > 0
    memory = Path(hosts["h1"]["dir"]) / "kube-peers.json"  # written at h1's next node poll
    wait_for(
        lambda: memory.exists() and json.loads(memory.read_text()).get(h3["name"]) == "h3",
        20,
        "h1 remembers h3's peer",
    )
    routers["h3"].send_signal(signal.SIGTERM)
    assert routers["h3"].wait(timeout=30) == 0
    write_nodes(nodes_file, {n: ip for n, ip in ips.items() if n != "h3"})

    def reclaimed(name: str) -> bool:
        owners = {p["name"] for p in clients[name].get("/status/ipam")["peers"]}
        return h3["name"] not in owners

    for name in ("h1", "h2"):
        wait_for(lambda n=name: reclaimed(n), 60, f"h3's space reclaimed, as {name} sees it")
        wait_for(
            lambda n=name: f"{ips['h3']}:6783" not in clients[n].get("/status")["targets"],
            20,
            f"{name} forgot h3",
        )
    total = sum(p["size"] for p in clients["h1"].get("/status/ipam")["peers"])
    assert total == 2 ** (32 - 12)  # the whole range is owned by live peers again
    logs = {n: (Path(hosts[n]["dir"]) / "meshnet.log").read_text() for n in ("h1", "h2")}
    assert f"reclaimed the address space of {h3['name']} (node h3)" in logs["h1"]
    assert "rmpeer" not in logs["h2"]
    assert can_ping(hosts["h1"]["namespace"], pod["address"])  # h1 and h2 carry on
