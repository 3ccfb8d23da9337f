"""What README's "Running on real hosts" promises: metrics for a Prometheus on another host, and
a rolling restart (upgrading one host at a time) that keeps the mesh and every address."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from meshnet.api.client import ApiClient
from meshnet.lab import lab as lablib
from tests.conftest import run_meshnet
from tests.net.conftest import can_ping, ns_run
from tests.net.test_mesh import wait_for

pytestmark = pytest.mark.netns

METRICS_PORT = 9782

#: Run in another lab host: each request's status and the start of its body, as JSON.
SCRAPER = """
import json, sys, httpx
base = sys.argv[1]
out = []
for method, path in [("GET", "/metrics"), ("GET", "/status"), ("GET", "/report"),
                     ("POST", "/stop"), ("POST", "/attach"), ("POST", "/metrics")]:
    answer = httpx.request(method, base + path, timeout=10)
    out.append([method, path, answer.status_code, answer.text[:20000]])
print(json.dumps(out))
"""


@pytest.fixture(autouse=True)
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHNET_HEARTBEAT_INTERVAL", "1")


def hosts_of(lab: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {h["name"]: h for h in lab["hosts"]}


def meshnet(host: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return run_meshnet(*args, env={**os.environ, **lablib.host_environment(host)})


def client(host: dict[str, Any]) -> ApiClient:
    return ApiClient(lablib.host_api_socket(host["dir"]), timeout=30)


def test_metrics_addr_serves_only_metrics_to_another_host(
    make_lab: Callable[..., dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = make_lab("line", 2, 0)
    hosts = hosts_of(lab)
    h1, h2 = hosts["h1"], hosts["h2"]
    address = h1["addresses"][0]  # h1's underlay address: not loopback
    assert meshnet(h1, "stop").returncode == 0
    monkeypatch.setenv("MESHNET_METRICS_ADDR", f"{address}:{METRICS_PORT}")
    lablib.start_router(lab["name"], "h1")  # the lab's launch, with the variable
    wait_for(lambda: len(client(h1).get("/status/peers")) == 2, 30, "h1 and h2 meshed again")

    scraped = ns_run(
        h2["namespace"], sys.executable, "-c", SCRAPER, f"http://{address}:{METRICS_PORT}"
    )
    assert scraped.returncode == 0, scraped.stderr
    answers = {(m, p): (status, body) for m, p, status, body in json.loads(scraped.stdout)}
    status, body = answers[("GET", "/metrics")]
    assert status == 200
    assert "meshnet_peers 2.0" in body and "meshnet_connection_terminations_total" in body
    assert (
        answers[("GET", "/status")][0] == 404 and "meshnet_" not in answers[("GET", "/status")][1]
    )
    assert answers[("GET", "/report")][0] == 404
    assert answers[("POST", "/stop")][0] == 404 and answers[("POST", "/attach")][0] == 404
    assert answers[("POST", "/metrics")][0] == 405
    # Nothing was stopped or changed: the full API is still only on the socket.
    assert client(h1).get("/status")["peers"] == 2
    # A bad address is one line before anything starts.
    bad = meshnet(h1, "launch", "--metrics-addr", "h1:9782")
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def container_state(lab: dict[str, Any]) -> dict[str, list[str]]:
    """Each container's addresses, as its kernel has them."""
    out = {}
    for c in lab["containers"]:
        shown = ns_run(c["namespace"], "ip", "-o", "-4", "addr", "show", "dev", "ethwe").stdout
        out[c["name"]] = sorted(line.split()[3] for line in shown.splitlines())
    return out


def test_a_rolling_restart_keeps_the_mesh_and_every_address(
    make_lab: Callable[..., dict[str, Any]],
) -> None:
    """Upgrading one host at a time: stop its router, start it again, wait for the mesh; the
    containers keep their addresses (kernel and IPAM), names and connectivity throughout."""
    lab = make_lab("line", 3, 1)
    hosts = hosts_of(lab)
    names = {h: client(hosts[h]).get("/status")["name"] for h in hosts}
    before = container_state(lab)
    assert all(before.values()), before
    targets = {c["name"]: before[c["name"]][0].split("/")[0] for c in lab["containers"]}

    def everyone_reaches_everyone() -> bool:
        return all(
            can_ping(c["namespace"], target)
            for c in lab["containers"]
            for other, target in targets.items()
            if other != c["name"]
        )

    wait_for(everyone_reaches_everyone, 30, "containers to reach each other")
    for restarted in ("h1", "h2", "h3"):
        host = hosts[restarted]
        assert meshnet(host, "stop").returncode == 0
        # Its containers keep talking to each other meanwhile (the bridge stays), and the
        # others keep their addresses; then the router comes back with the same identity.
        lablib.start_router(lab["name"], restarted)
        assert client(host).get("/status")["name"] == names[restarted]
        for h in hosts.values():
            wait_for(lambda h=h: client(h).get("/status")["peers"] == 3, 30, "3 peers")
        wait_for(everyone_reaches_everyone, 30, f"connectivity after restarting {restarted}")
        assert container_state(lablib.status(lab["name"])) == before
        # IPAM still holds each address for its container: asking again gives the same one.
        for c in lab["containers"]:
            if c["host"] == restarted:
                again = client(host).post("/attach", {"container": c["namespace"]})
                assert sorted(again["addresses"]) == before[c["name"]], c["name"]
        ring = [p["ranges"] for p in client(host).get("/status/ipam")["peers"]]
        assert ring and all(ring), ring
    # Every host sees every other's containers' names.
    for h in hosts.values():
        for c in lab["containers"]:
            found = client(h).post("/dns/lookup", {"name": c["name"]})["addresses"]
            assert found == [targets[c["name"]]], (h["name"], c["name"], found)
