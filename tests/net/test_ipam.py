"""IPAM on the real kernel: lab routers divide the range and give containers unique addresses."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from meshnet.api.client import ApiClient
from meshnet.constants import ALLOCATE_TIMEOUT
from meshnet.dataplane.kernel import netlink
from meshnet.lab import lab as lablib
from tests.conftest import run_meshnet
from tests.net.conftest import can_ping, ns_run
from tests.net.test_mesh import MESHNET, api, daemon_pid, wait_for

RANGE = ipaddress.IPv4Network("10.32.0.0/12")


@pytest.fixture(autouse=True)
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHNET_HEARTBEAT_INTERVAL", "1")


def lab_dir(state: dict[str, Any]) -> Path:
    return Path(state["directory"])


def new_namespace(state: dict[str, Any], suffix: str) -> str:
    """A namespace the lab owns (journalled first), so `lab down` removes it whatever happens."""
    namespace = lablib.namespace_prefix(state["name"]) + suffix
    lablib.Journal(lab_dir(state) / "journal").record("netns", namespace)
    netlink.create_namespace(namespace)
    return namespace


def add_host(
    state: dict[str, Any], name: str, link_to: dict[str, Any], subnet: int, *args: str
) -> dict[str, Any]:
    """Another host, linked to ``link_to`` and running a router that connects to it.

    A lab has a fixed set of hosts; a late joiner is built here the way the lab builds one.
    """
    namespace = new_namespace(state, name)
    with netlink.namespace(link_to["namespace"]) as ns:
        ns.create_veth(f"to-{name}", f"to-{link_to['name']}", namespace, mtu=1500)
        ns.add_address(f"to-{name}", f"172.30.{subnet}.1/30")
        ns.set_up(f"to-{name}")
    with netlink.namespace(namespace) as ns:
        ns.add_address(f"to-{link_to['name']}", f"172.30.{subnet}.2/30")
        ns.set_up(f"to-{link_to['name']}")
        ns.set_up("lo")
    host = {"name": name, "namespace": namespace, "dir": str(lab_dir(state) / "hosts" / name)}
    Path(host["dir"]).mkdir(parents=True)
    launched = subprocess.run(
        [
            "nsenter",
            f"--net={netlink.NETNS_DIR / namespace}",
            *MESHNET,
            "launch",
            "--nickname",
            name,
            *args,
            f"172.30.{subnet}.1",
        ],
        env={**os.environ, **lablib.host_environment(host)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert launched.returncode == 0, launched.stderr
    return host


def client_of(host: dict[str, Any]) -> ApiClient:
    return ApiClient(lablib.host_api_socket(host["dir"]), timeout=45)


def attach(client: ApiClient, namespace: str, *addresses: str) -> str:
    # As long as `meshnet attach` waits: an allocation may wait for the ring or a donation.
    patient = ApiClient(client.socket_path, timeout=ALLOCATE_TIMEOUT + 15)
    result = patient.post("/attach", {"container": namespace, "addresses": list(addresses)})
    return str(result["addresses"][0])


def kernel_addresses(namespace: str) -> list[str]:
    out = ns_run(namespace, "ip", "-o", "-4", "addr", "show", "dev", "ethwe").stdout
    return [line.split()[3] for line in out.splitlines()]


def ring_view(client: ApiClient) -> dict[str, list[str]]:
    return {p["name"]: p["ranges"] for p in client.get("/status/ipam")["peers"]}


def log_of(host: dict[str, Any]) -> str:
    return (Path(host["dir"]) / "meshnet.log").read_text(errors="replace")


def test_sixty_containers_unique_addresses_that_survive_kill_9_of_every_router(
    make_lab: Any,
) -> None:
    started = time.monotonic()
    state = make_lab("full", hosts=3, containers=20)
    built = time.monotonic() - started
    addresses = {c["name"]: c["addresses"] for c in state["containers"]}
    assert all(len(a) == 1 for a in addresses.values()), addresses
    ips = [ipaddress.IPv4Interface(a[0]) for a in addresses.values()]
    assert len({i.ip for i in ips}) == 60, "duplicate addresses"
    assert all(i.network == RANGE for i in ips)
    clients = {h["name"]: api(state, h["name"]) for h in state["hosts"]}

    def agreed() -> list[dict[str, list[str]]] | None:
        views = [ring_view(c) for c in clients.values()]
        return views if all(v == views[0] for v in views) else None

    views = wait_for(agreed, what="every host to see the same ring")
    # Every host owns part of the range, and each owner serves its own containers.
    status = clients["h1"].get("/status/ipam")
    assert status["consensus"] == "ready" and status["allocated_here"] >= 20
    c1 = {c["name"]: c for c in state["containers"]}
    assert can_ping(c1["h1-c1"]["namespace"], c1["h3-c20"]["addresses"][0].split("/")[0])

    # kill -9 every router, then restart them: the persisted state brings the allocations back.
    for host in state["hosts"]:
        os.kill(daemon_pid(state, host["name"]), signal.SIGKILL)
    time.sleep(0.5)
    restart = time.monotonic()
    for host in state["hosts"]:
        lablib.start_router(state["name"], host["name"])
    for c in state["containers"]:
        assert kernel_addresses(c["namespace"]) == c["addresses"]
        again = attach(clients[c["host"]], c["namespace"])  # idempotent per container
        assert again == c["addresses"][0], c["name"]
    views_after = [ring_view(c) for c in clients.values()]
    assert all(v == views[0] for v in views_after), "the ring changed across the restart"

    # New containers after the restart never get an address already held.
    taken = {i.ip for i in ips}
    for host in state["hosts"]:
        for k in range(2):
            namespace = new_namespace(state, f"{host['name']}-n{k}")
            new = ipaddress.IPv4Interface(attach(clients[host["name"]], namespace))
            assert new.ip not in taken, new
            taken.add(new.ip)
    after = time.monotonic() - restart

    # rmpeer is refused while the peer is reachable, with one clear line.
    h3_name = clients["h3"].get("/status")["name"]
    refused = run_meshnet(
        "lab", "exec", "--name", state["name"], "h1", "--", *MESHNET, "rmpeer", h3_name
    )
    assert refused.returncode == 1
    assert "is reachable" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    print(f"3x20 lab built in {built:.1f}s; restart and 66 attaches in {after:.1f}s")


def test_a_late_host_gets_space_by_donation_and_a_dead_one_is_reclaimed(make_lab: Any) -> None:
    state = make_lab("line", hosts=3, containers=1)
    hosts = {h["name"]: h for h in state["hosts"]}
    before = {c["addresses"][0].split("/")[0] for c in state["containers"]}
    h4 = add_host(state, "h4", hosts["h3"], 1, "--ipalloc-init", "observer")
    h4_api = client_of(h4)
    container = new_namespace(state, "h4-c1")
    address = ipaddress.IPv4Interface(attach(h4_api, container))
    assert address.ip in RANGE and str(address.ip) not in before
    status = h4_api.get("/status/ipam")
    assert status["mode"] == "observer" and status["counters"]["donations_received"] >= 1
    mine = next(p for p in status["peers"] if p["local"])
    assert mine["size"] > 0
    wait_for(lambda: ring_view(api(state, "h1")) == ring_view(h4_api), what="the ring to spread")
    # The late host's container reaches one on h1 across the line.
    h1_c1 = next(c for c in state["containers"] if c["name"] == "h1-c1")
    wait_for(
        lambda: can_ping(container, h1_c1["addresses"][0].split("/")[0]),
        what="h4-c1 to reach h1-c1",
    )
    # h4 dies for good: rmpeer on two hosts gives its space to the same single heir.
    h4_name = h4_api.get("/status")["name"]
    for pid in netlink.namespace_pids(h4["namespace"]):
        os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: (
            not next(
                p for p in api(state, "h3").get("/status/ipam")["peers"] if p["name"] == h4_name
            )["reachable"]
        ),
        what="h4 to become unreachable",
    )
    results = [
        run_meshnet("lab", "exec", "--name", state["name"], host, "--", *MESHNET, "rmpeer", h4_name)
        for host in ("h1", "h3")
    ]
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert "reclaimed by" in results[0].stdout

    def settled() -> bool:
        views = [ring_view(api(state, h)) for h in ("h1", "h2", "h3")]
        return all(v == views[0] and h4_name not in v for v in views)

    wait_for(settled, what="every host to agree h4's space has one new owner")


def test_two_meshes_seeded_apart_refuse_to_merge_rings(make_lab: Any) -> None:
    a = make_lab("line", hosts=1, containers=1)
    b = make_lab("line", hosts=1, containers=1)
    a_host, b_host = a["hosts"][0], b["hosts"][0]
    a_ring, b_ring = ring_view(api(a, "h1")), ring_view(api(b, "h1"))
    assert len(a_ring) == len(b_ring) == 1 and a_ring != b_ring
    with netlink.namespace(a_host["namespace"]) as ns:
        ns.create_veth("to-other", "to-other", b_host["namespace"], mtu=1500)
        ns.add_address("to-other", "172.30.7.1/30")
        ns.set_up("to-other")
    with netlink.namespace(b_host["namespace"]) as ns:
        ns.add_address("to-other", "172.30.7.2/30")
        ns.set_up("to-other")
    connect = run_meshnet(
        "lab", "exec", "--name", a["name"], "h1", "--", *MESHNET, "connect", "172.30.7.2"
    )
    assert connect.returncode == 0, connect.stderr
    for host in (a_host, b_host):
        wait_for(
            lambda host=host: "refusing to merge a peer's IPAM ring" in log_of(host),  # type: ignore[misc]
            what=f"{host['namespace']} to log the refused merge",
        )
        line = next(ln for ln in log_of(host).splitlines() if "refusing to merge" in ln)
        assert "seeded" in line, line
    # Neither ring took anything of the other; each mesh still allocates, from its own space.
    assert ring_view(api(a, "h1")) == a_ring and ring_view(api(b, "h1")) == b_ring
    extra = new_namespace(a, "h1-c9")
    new = ipaddress.IPv4Interface(attach(client_of(a_host), extra))
    assert new.ip != ipaddress.IPv4Interface(a["containers"][0]["addresses"][0]).ip
    assert api(a, "h1").get("/status/ipam")["refused_merges"]


def test_attach_net_ip_and_cidr_specs_and_release_on_detach(make_lab: Any) -> None:
    state = make_lab("line", hosts=2, containers=1)
    h1 = client_of(state["hosts"][0])
    one, two, three, four = (new_namespace(state, f"x{k}") for k in range(4))
    net = ipaddress.IPv4Interface(attach(h1, one, "net:10.33.4.0/24"))
    assert net.network == ipaddress.IPv4Network("10.33.4.0/24")
    claimed = attach(h1, two, "ip:10.35.1.9")
    assert claimed == "10.35.1.9/12"
    taken = run_meshnet(
        "lab", "exec", "--name", state["name"], "h2", "--", *MESHNET, "attach",
        "ip:10.35.1.9", three,
    )  # fmt: skip
    assert taken.returncode == 1 and "already in use" in taken.stderr, taken.stderr
    outside = attach(h1, four, "192.168.50.5/24")  # outside the range: used as given
    assert outside == "192.168.50.5/24"
    h1.post("/detach", {"container": two, "addresses": []})
    again = run_meshnet(
        "lab", "exec", "--name", state["name"], "h2", "--", *MESHNET, "attach",
        "ip:10.35.1.9", three,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "10.35.1.9/12" in kernel_addresses(three)
    bad = run_meshnet(
        "lab", "exec", "--name", state["name"], "h1", "--", *MESHNET, "attach",
        "net:10.99.0.0/16", one,
    )  # fmt: skip
    assert bad.returncode == 1 and "not inside the allocation range" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    text = run_meshnet(
        "lab", "exec", "--name", state["name"], "h1", "--", *MESHNET, "status", "ipam"
    )
    assert text.returncode == 0 and "default subnet 10.32.0.0/12" in text.stdout, text.stderr
