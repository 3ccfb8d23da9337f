"""Living with meshnet on real hosts (issue 20): the ports follow --port, the range check,
restarts that keep what the user said, and reset --force after a router died hard."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest

from meshnet.lab import lab as lablib
from tests.conftest import run_meshnet
from tests.net.conftest import ns_run
from tests.net.test_fastdp import host_ns, paths, wait_paths
from tests.net.test_mesh import MESHNET, api, daemon_pid, wait_for
from tests.net.test_overlay import containers, dataplane, ip_of, wait_ping

pytestmark = pytest.mark.netns


@pytest.fixture(autouse=True)
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHNET_HEARTBEAT_INTERVAL", "1")


def in_host(state: dict[str, Any], host: str, *args: str) -> Any:
    """`meshnet ARGS` inside a lab host, talking to its router and state directory."""
    return run_meshnet("lab", "exec", "--name", state["name"], host, "--", *MESHNET, *args)


def links(namespace: str) -> list[str]:
    out = ns_run(namespace, "ip", "-j", "link", "show").stdout
    return sorted(link["ifname"] for link in json.loads(out))


def tables(namespace: str) -> str:
    return ns_run(namespace, "nft", "list", "tables").stdout


def test_fastdp_follows_the_port_and_everyone_takes_the_mtu(
    make_lab: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every router on TCP+UDP 7000 with --mtu 1300: VXLAN on 7001, and containers' traffic
    takes it, at that MTU."""
    monkeypatch.setenv("MESHNET_PORT", "7000")  # the lab's routers inherit them
    monkeypatch.setenv("MESHNET_MTU", "1300")
    state = make_lab("line", hosts=2, containers=1)
    c = containers(state)
    wait_paths(state, "h1", {"h2": "fastdp"})
    wait_ping(c["h1-c1"], c["h2-c1"])
    assert dataplane(state, "h1")["overlay_mtu"] == 1300
    for namespace, ifname in ((c["h1-c1"]["namespace"], "ethwe"), (host_ns(state, "h1"),
                              "meshnet"), (host_ns(state, "h1"), "vxlan-7001")):  # fmt: skip
        shown = json.loads(ns_run(namespace, "ip", "-j", "link", "show", ifname).stdout)
        assert shown[0]["mtu"] == 1300, (namespace, ifname)
    full = ns_run(c["h1-c1"]["namespace"], "ping", "-c", "3", "-M", "do", "-s", "1272",
                  ip_of(c["h2-c1"]))  # fmt: skip
    assert full.returncode == 0, full.stdout
    fastdp = dataplane(state, "h1")["fastdp"]
    assert (fastdp["device"], fastdp["port"]) == ("vxlan-7001", 7001)
    assert "vxlan-7001" in links(host_ns(state, "h1"))
    assert "vxlan-6784" not in links(host_ns(state, "h1"))
    listening = ns_run(host_ns(state, "h1"), "ss", "-Hlun").stdout
    assert ":7001 " in listening and ":7000 " in listening and ":6784 " not in listening
    status = in_host(state, "h1", "status")
    assert "Ports: TCP+UDP 7000, UDP 7001 (fastdp)" in status.stdout, status.stdout
    assert paths(state, "h2") == {"h1": "fastdp"}


def test_launch_refuses_a_range_the_host_routes(make_lab: Any) -> None:
    state = make_lab("line", hosts=2, containers=0, daemons=False)
    h1 = state["hosts"][0]
    namespace, uplink = h1["namespace"], h1["underlay"][0]["interface"]
    added = ns_run(namespace, "ip", "route", "add", "10.40.0.0/16", "dev", uplink)
    assert added.returncode == 0, added.stderr
    refused = in_host(state, "h1", "launch", "--ipalloc-range", "10.32.0.0/11")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"meshnet: --ipalloc-range 10.32.0.0/11 overlaps the host's route 10.40.0.0/16 dev "
        f"{uplink}: choose another range, or --ipalloc-range-overlap-ok if that is intended"
    ]
    assert not lablib.host_api_socket(h1["dir"]).exists()  # nothing was started
    # An --mtu the underlay (1500) cannot carry with the sleeve's 146 bytes: one line, from the
    # background router's log.
    too_big = in_host(state, "h1", "launch", "--ipalloc-range-overlap-ok", "--mtu", "1400")
    assert too_big.returncode == 1
    assert too_big.stderr.strip().splitlines() == [
        "meshnet: --mtu 1400: the underlay's MTU 1500 leaves at most 1354 for the overlay "
        "(146 bytes go to encapsulation)"
    ]
    started = in_host(state, "h1", "launch", "--ipalloc-range", "10.32.0.0/11",
                      "--ipalloc-range-overlap-ok")  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert in_host(state, "h1", "stop").returncode == 0

    # Routes out of meshnet's own bridge (kept after a stop, as a dead router's are) don't
    # count: a restart still works.
    assert ns_run(namespace, "ip", "route", "del", "10.40.0.0/16", "dev", uplink).returncode == 0
    on_bridge = ns_run(namespace, "ip", "route", "add", "10.40.0.0/16", "dev", "meshnet")
    assert on_bridge.returncode == 0, on_bridge.stderr
    relaunched = in_host(state, "h1", "launch", "--ipalloc-range", "10.32.0.0/11")
    assert relaunched.returncode == 0, relaunched.stderr
    assert in_host(state, "h1", "stop").returncode == 0


def test_a_restarted_router_keeps_its_targets_and_reset_force_cleans_up_after_kill_9(
    make_lab: Any,
) -> None:
    state = make_lab("line", hosts=2, containers=1)
    h1 = state["hosts"][0]
    namespace = h1["namespace"]
    wait_paths(state, "h1", {"h2": "fastdp"})
    name_before = api(state, "h1").get("/status")["name"]
    connected = in_host(state, "h1", "connect", "192.0.2.77", "192.0.2.78:7000")
    assert connected.returncode == 0, connected.stderr
    assert in_host(state, "h1", "forget", "192.0.2.78:7000").returncode == 0

    # A graceful restart with the same command line: the target added by connect is back.
    assert in_host(state, "h1", "stop").returncode == 0
    lablib.start_router(state["name"], "h1")
    targets = set(api(state, "h1").get("/status")["targets"])
    assert "192.0.2.77:6783" in targets and "192.0.2.78:7000" not in targets

    # kill -9: the bridge, VXLAN, tables and state stay behind...
    wait_paths(state, "h1", {"h2": "fastdp"})
    os.kill(daemon_pid(state, "h1"), signal.SIGKILL)
    time.sleep(0.5)
    left = links(namespace)
    assert {"meshnet", "vxlan-6784"} <= set(left), left
    assert "table inet meshnet-fastdp" in tables(namespace)
    refused = in_host(state, "h1", "reset")
    assert refused.returncode == 1 and "reset --force" in refused.stderr

    # ...until reset --force removes them all, and only what is meshnet's.
    reset = in_host(state, "h1", "reset", "--force")
    assert reset.returncode == 0, reset.stderr
    assert "no router answers" in reset.stdout
    remaining = links(namespace)
    ours = ("vxlan-", "vxlan6-", "vethwe")  # prefixes of what meshnet made

    def meshnets(names: list[str]) -> set[str]:
        return {n for n in names if n == "meshnet" or n.startswith(ours)}

    assert not meshnets(remaining)
    assert set(remaining) == set(left) - meshnets(left)
    assert "meshnet" not in tables(namespace), tables(namespace)
    state_dir = lablib.lab_root() / state["name"] / "hosts" / "h1"
    kept = {p.name for p in state_dir.iterdir()}
    assert not kept & {"peer-name", "ipam.state", "ipam6.state", "targets.json", "ramps.json"}, kept
    assert "meshnet.log" in kept
    assert not lablib.host_api_socket(h1["dir"]).exists()

    # The host launches again, as a new peer, and joins h2.
    new_name = lablib.start_router(state["name"], "h1")
    assert new_name != name_before
    wait_for(lambda: len(api(state, "h1").get("/status/peers")) == 2, what="h1 to rejoin h2")
