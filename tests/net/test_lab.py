"""The lab against the real kernel: reachability follows the topology, and nothing leaks."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from meshnet.dataplane.kernel import netlink
from meshnet.lab import lab as lablib
from tests.conftest import run_meshnet, unique_lab_name
from tests.net.conftest import can_ping, kernel_snapshot, ns_run


def linked(state: dict[str, Any]) -> set[frozenset[str]]:
    return {frozenset((link["a"], link["b"])) for link in state["links"]}


def test_line_h1_reaches_h2_and_h2_reaches_h3_but_h1_never_reaches_h3(make_lab: Any) -> None:
    state = make_lab("line", hosts=3, daemons=False)
    hosts = {h["name"]: h for h in state["hosts"]}
    h1, h2, h3 = hosts["h1"], hosts["h2"], hosts["h3"]
    h2_toward_h1 = next(u["address"] for u in h2["underlay"] if u["peer"] == "h1")
    h3_toward_h2 = next(u["address"] for u in h3["underlay"] if u["peer"] == "h2")
    assert can_ping(h1["namespace"], h2_toward_h1.split("/")[0])
    assert can_ping(h2["namespace"], h3_toward_h2.split("/")[0])
    for address in h3["addresses"]:
        assert not can_ping(h1["namespace"], address)
    # Not even with a route added by hand: h2 does not forward.
    ns_run(
        h1["namespace"], "ip", "route", "add", "172.31.0.0/16", "via", h2_toward_h1.split("/")[0]
    )
    assert not can_ping(h1["namespace"], h3["addresses"][0])


@pytest.mark.parametrize("shape", ["full", "star", "ring"])
def test_every_host_reaches_exactly_its_linked_neighbours(make_lab: Any, shape: str) -> None:
    state = make_lab(shape, hosts=4, containers=0, daemons=False)
    links = linked(state)
    assert len(links) == {"full": 6, "star": 3, "ring": 4}[shape]
    for a, b in itertools.permutations(state["hosts"], 2):
        if frozenset((a["name"], b["name"])) in links:
            # A host is reached at its end of the shared link.
            address = next(u["address"] for u in b["underlay"] if u["peer"] == a["name"])
            assert can_ping(a["namespace"], address.split("/")[0]), (a["name"], b["name"])
        else:
            for address in b["addresses"]:
                assert not can_ping(a["namespace"], address), (a["name"], b["name"], address)


def test_containers_on_one_host_share_its_bridge(make_lab: Any) -> None:
    state = make_lab("line", hosts=2, containers=2, daemons=False)
    c = {c["name"]: c for c in state["containers"]}
    assert c["h1-c1"]["interface"] == "ethwe" and c["h1-c1"]["mac"]
    assert can_ping(c["h1-c1"]["namespace"], c["h1-c2"]["addresses"][0].split("/")[0])


def test_link_down_up_loss_and_rate(make_lab: Any) -> None:
    state = make_lab("line", hosts=2, containers=0, daemons=False)
    name, h1 = state["name"], state["hosts"][0]
    peer = state["hosts"][1]["addresses"][0]
    lablib.set_link(name, "h1", "h2", "down")
    assert not can_ping(h1["namespace"], peer)
    lablib.set_link(name, "h1", "h2", "up")
    deadline = time.monotonic() + 5
    while not can_ping(h1["namespace"], peer):
        assert time.monotonic() < deadline, "link did not come back"
    lablib.set_link(name, "h1", "h2", "loss", "100")
    assert not can_ping(h1["namespace"], peer)
    lablib.set_link(name, "h1", "h2", "loss", "30")
    result = ns_run(h1["namespace"], "ping", "-q", "-c", "200", "-i", "0.002", "-W", "1", peer)
    received = int(result.stdout.split(" received")[0].rsplit(" ", 1)[1])
    # Each direction drops 30%: about half of 200 round trips survive; far from 0 and from 200.
    assert 40 < received < 160, result.stdout
    lablib.set_link(name, "h1", "h2", "loss", "0")
    assert (
        ns_run(h1["namespace"], "ping", "-c", "20", "-i", "0.002", "-W", "1", peer).returncode == 0
    )
    lablib.set_link(name, "h1", "h2", "rate", "2mbit")
    qdisc = ns_run(h1["namespace"], "tc", "qdisc", "show", "dev", "to-h2").stdout
    assert "tbf" in qdisc and "2Mbit" in qdisc
    lablib.set_link(name, "h1", "h2", "rate", "none")
    assert "tbf" not in ns_run(h1["namespace"], "tc", "qdisc", "show", "dev", "to-h2").stdout
    links = lablib.status(name)["links"]
    assert links[0]["up"] and links[0]["loss"] == 0 and links[0]["rate"] is None


def test_cli_up_status_exec_down_leaves_the_kernel_as_it_was(tmp_path: Path) -> None:
    before = kernel_snapshot()
    name = unique_lab_name()
    try:
        up = run_meshnet(
            "lab", "up", "--name", name, "--hosts", "3", "--topology", "ring", "--containers", "2"
        )
        assert up.returncode == 0, up.stderr
        assert "h3-c2" in up.stdout  # the summary table
        status = json.loads(run_meshnet("lab", "status", "--name", name, "--json").stdout)
        assert [h["name"] for h in status["hosts"]] == ["h1", "h2", "h3"]
        assert all(h["namespace"].startswith(f"mn-{name}-") for h in status["hosts"])
        assert all(len(h["underlay"]) == 2 for h in status["hosts"])
        assert {c["name"] for c in status["containers"]} == {
            f"h{h}-c{c}" for h in (1, 2, 3) for c in (1, 2)
        }
        assert all(c["addresses"] and c["namespace"] for c in status["containers"])
        exec_ = run_meshnet(
            "lab",
            "exec",
            "--name",
            name,
            "h2-c1",
            "--",
            "sh",
            "-c",
            "ip -o addr show ethwe; exit 3",
        )
        h2_c1 = next(c for c in status["containers"] if c["name"] == "h2-c1")
        assert h2_c1["addresses"][0].startswith("10.")  # given by IPAM
        assert exec_.returncode == 3 and h2_c1["addresses"][0] in exec_.stdout
        dup = run_meshnet("lab", "up", "--name", name, "--hosts", "2")
        assert dup.returncode != 0 and "already exists" in dup.stderr
        assert len(dup.stderr.strip().splitlines()) == 1
    finally:
        down = run_meshnet("lab", "down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert kernel_snapshot() == before


def test_a_failed_up_removes_what_it_built(tmp_path: Path, lab_root: Path) -> None:
    """nft missing is only noticed at the first lossy link, after hosts exist: all must go."""
    before = kernel_snapshot()
    topo = tmp_path / "lossy.toml"
    topo.write_text(
        '[hosts.a]\ncontainers = 1\n[hosts.b]\n[[links]]\nhosts = ["a", "b"]\nloss = 5\n'
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ip", "nsenter"):
        (bin_dir / tool).symlink_to(
            subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        )
    name = unique_lab_name()
    result = run_meshnet(
        "lab",
        "up",
        "--name",
        name,
        "--topology",
        str(topo),
        env={**os.environ, "PATH": str(bin_dir)},
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "meshnet: nft not found: link loss needs nftables (apt-get install nftables)"
    ]
    assert kernel_snapshot() == before
    assert not (lab_root / name).exists()


def test_up_refuses_to_reuse_namespaces_it_does_not_own() -> None:
    name = unique_lab_name()
    foreign = f"mn-{name}-h2"
    netlink.create_namespace(foreign)
    try:
        result = run_meshnet("lab", "up", "--name", name, "--hosts", "2")
        assert result.returncode != 0 and "no lab" in result.stderr
        assert netlink.namespace_exists(foreign)
        assert not netlink.namespace_exists(f"mn-{name}-h1")
    finally:
        netlink.remove_namespace(foreign)


def test_killed_up_then_down_leaves_nothing(lab_root: Path) -> None:
    before = kernel_snapshot()
    name = unique_lab_name()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshnet",
            "lab",
            "up",
            "--name",
            name,
            "--hosts",
            "8",
            "--topology",
            "full",
            "--containers",
            "3",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journal = lab_root / name / "journal"
    try:
        deadline = time.monotonic() + 60
        while not (journal.exists() and journal.read_text().count("\n") >= 5):
            assert proc.poll() is None, "up finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert any(n.startswith(f"mn-{name}-") for n in netlink.list_namespaces())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        down = run_meshnet("lab", "down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert kernel_snapshot() == before
    assert not (lab_root / name).exists()
