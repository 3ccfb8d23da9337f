"""A flat network (every host reaches every other) under ``--discovery-limit`` (issue 22):
discovery stops dialling at the cap, and the hosts whose containers talk get a connection of
their own, so their traffic goes direct instead of through a relay."""

from __future__ import annotations

from typing import Any

import pytest

from meshnet.lab import lab as lablib
from meshnet.lab import topology as topo
from tests.net.conftest import ns_run
from tests.net.test_mesh import api, wait_for
from tests.net.test_nat import ping_loss, via

pytestmark = pytest.mark.netns

PUBLIC = ("p1", "p2", "p3", "p4")


def flat_network() -> topo.Topology:
    """Four hosts on the lab's internet and one behind a NAT (the lab has an internet only
    with one), which dials all four: a seed they share."""
    hosts = [topo.HostSpec(h, (f"{h}-c1",)) for h in PUBLIC]
    hosts.append(topo.HostSpec("n1", ("n1-c1",), "masquerade"))
    return topo.validate(topo.Topology(hosts=tuple(hosts), links=()))


def neighbours(state: dict[str, Any], host: str) -> set[str]:
    return {
        c["nickname"]
        for c in api(state, host).get("/status/connections")
        if c["state"] == "established"
    }


def target_source(state: dict[str, Any], host: str, peer: str) -> str | None:
    """Why ``host`` dials ``peer``'s internet address (None: it does not)."""
    address = next(u["address"] for u in state["internet"]["public"] if u["host"] == peer)
    targets = api(state, host).get("/status/targets")
    return next((t["source"] for t in targets if t["address"] == f"{address}:6783"), None)


def test_discovery_stops_at_its_limit_and_talking_hosts_connect_directly(
    make_lab: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every public host has its connection from n1: discovery may dial nobody else.
    monkeypatch.setenv("MESHNET_DISCOVERY_LIMIT", "1")
    state = make_lab(flat_network())
    # The lab's internet keeps public hosts apart (their links say who reaches whom): opened,
    # it is one flat network of four.
    internet = state["internet"]["namespace"]
    opened = ns_run(internet, "nft", "flush", "chain", "ip", lablib.INTERNET_TABLE, "forward")
    assert opened.returncode == 0, opened.stderr
    wait_for(
        lambda: all(len(api(state, h).get("/status/peers")) == 5 for h in PUBLIC),
        what="every router knows all five",
    )
    for host in PUBLIC:
        assert neighbours(state, host) == {"n1"}
        targets = api(state, host).get("/status/targets")
        # The other three public hosts are known (n1 lists where it dialled them) but left.
        assert (
            sorted(t["state"] for t in targets if t["source"] == "discovered") == ["waiting"] * 3
        ), targets
    assert via(state, "p1", "p2") == ["n1"]

    # p1's container talks to p2's: relayed by n1 at first, then over a connection of their own.
    assert ping_loss(state, "p1-c1", "p2-c1", count=10) == 0
    # Routes follow once both ends list the connection.
    wait_for(lambda: via(state, "p1", "p2") == [], timeout=40, what="a direct route p1-p2")
    assert ping_loss(state, "p1-c1", "p2-c1", count=10) == 0
    # Dialled as a traffic target, by one side or both (at once: the tie-break keeps one).
    assert "traffic" in {target_source(state, "p1", "p2"), target_source(state, "p2", "p1")}
    # Nobody else gained a connection: the limit still holds where nothing is exchanged.
    assert neighbours(state, "p3") == neighbours(state, "p4") == {"n1"}
    assert neighbours(state, "p1") == {"n1", "p2"}
