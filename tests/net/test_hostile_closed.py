"""Issue 17, point 8: isolation fails closed, against real routers in lab hosts.

* A router whose host has no working nftables (no `nft` in its PATH, or an `nft` that refuses
  everything) does not start: one line and a non-zero exit. ``--no-isolation`` starts it, and
  its status says isolation is off.
* An attach whose isolation rules cannot be installed (an `nft` that starts refusing scripts
  once the router runs) fails, and leaves nothing attached: no interface, the address free in
  IPAM, no DNS name; the router keeps running and attaches again once nft works.
* A veth plugged into a router's bridge by hand, whose container the router cannot find, can
  neither send into the overlay nor be reached from it (the ``unknown`` counter counts its
  frames), while the containers attached through meshnet keep reaching each other.

The injected `nft` is a shell script first in the routers' PATH that passes everything to the
real one unless a flag file exists (then it refuses every script, as a broken nftables would).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshnet.api.client import ApiClient
from meshnet.constants import BRIDGE
from meshnet.dataplane.kernel import netlink
from meshnet.errors import UserError
from meshnet.lab import lab as lablib
from meshnet.lab import topology
from tests.conftest import run_meshnet, unique_lab_name
from tests.net.conftest import can_ping, ns_run
from tests.net.test_ipam import new_namespace
from tests.net.test_mesh import wait_for
from tests.net.test_ramps import RampsLab

REAL_NFT = shutil.which("nft")
NSENTER = shutil.which("nsenter") or "nsenter"
FAKE_NFT = """#!/bin/sh
# meshnet's tests: a broken nftables while {flag} exists
if [ -e "{flag}" ]; then
    echo "Error: injected failure (test_hostile_closed)" >&2
    exit 1
fi
exec {real} "$@"
"""

pytestmark = pytest.mark.skipif(REAL_NFT is None, reason="needs nft")


def path_without_nft() -> str:
    """The PATH with every directory that holds an `nft` left out."""
    dirs = os.environ.get("PATH", "/usr/bin:/bin").split(":")
    return ":".join(d for d in dirs if d and not (Path(d) / "nft").exists())


def fake_nft(directory: Path, flag: Path) -> Path:
    """A directory holding an `nft` that fails while `flag` exists (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "nft"
    script.write_text(FAKE_NFT.format(flag=flag, real=REAL_NFT))
    script.chmod(0o755)
    return directory


def launch(host: dict[str, Any], *args: str, path: str) -> subprocess.CompletedProcess[str]:
    """`meshnet launch` in a lab host, as the lab starts its routers, with this PATH."""
    env = {**os.environ, **lablib.host_environment(host), "PATH": path}
    return subprocess.run(
        [
            NSENTER,
            f"--net={netlink.NETNS_DIR / host['namespace']}",
            sys.executable,
            "-m",
            "meshnet",
            "launch",
            "--nickname",
            host["name"],
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


def client(host: dict[str, Any], timeout: float = 45) -> ApiClient:
    return ApiClient(lablib.host_api_socket(host["dir"]), timeout=timeout)


def stop(host: dict[str, Any]) -> None:
    api = client(host, timeout=5)
    if api.is_ready():
        api.post("/stop")
        wait_for(lambda: not lablib.host_api_socket(host["dir"]).exists(), 20, "router stops")


# --- (a) launch without working nftables --------------------------------------------------------


def test_launch_refuses_without_nftables_unless_told(make_lab: Any, tmp_path: Path) -> None:
    state = make_lab("line", hosts=1, containers=0, daemons=False)
    host = state["hosts"][0]
    try:
        # No nft at all: one line, non-zero, and no router left behind.
        refused = launch(host, path=path_without_nft())
        assert refused.returncode != 0
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1, refused.stderr
        assert "nft not found" in lines[0] and "--no-isolation" in lines[0], lines[0]
        assert not client(host, 2).is_ready()

        # An nft that refuses every script: the base table cannot be installed.
        flag = tmp_path / "broken"
        flag.touch()
        broken = fake_nft(tmp_path / "bin", flag)
        refused = launch(host, path=f"{broken}:{os.environ['PATH']}")
        assert refused.returncode != 0
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1, refused.stderr
        assert "cannot isolate containers" in lines[0] and "injected failure" in lines[0]
        assert not client(host, 2).is_ready()

        # Told to run without: it starts, says so, and warns in its log.
        started = launch(host, "--no-isolation", path=path_without_nft())
        assert started.returncode == 0, started.stderr
        assert "--no-isolation" in started.stderr  # the launch's warning
        status = client(host).get("/status")
        assert status["isolation"]["state"] == "off (--no-isolation)"
        env = {**os.environ, **lablib.host_environment(host)}
        shown = run_meshnet("status", env=env)
        assert shown.returncode == 0, shown.stderr
        assert "off (--no-isolation)" in shown.stdout
        log = (Path(host["dir"]) / "meshnet.log").read_text()
        assert any(" WARNING " in x and "--no-isolation" in x for x in log.splitlines())
    finally:
        stop(host)


# --- (b) and (c): a lab whose routers run an nft we can break -----------------------------------


class Lab(RampsLab):
    def __init__(self, status: dict[str, Any], flag: Path) -> None:
        super().__init__(status)
        self.dir = lablib.lab_root() / self.name
        self.flag = flag

    def interface(self, container: str) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(self.containers[container]["addresses"][0])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    name = unique_lab_name()
    directory = tmp_path_factory.mktemp("nft")
    flag = directory / "broken"
    broken = fake_nft(directory / "bin", flag)
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{broken}:{path}"  # what the lab's routers are launched with
    try:
        lablib.up(name, topology.builtin("full", 2, 1))
        os.environ["PATH"] = path
        yield Lab(lablib.status(name), flag)
    finally:
        os.environ["PATH"] = path
        flag.unlink(missing_ok=True)
        if (lablib.lab_root() / name).exists():
            lablib.down(name)


def owners(lab: Lab, host: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = lab.client(host).post("/ipam/owners", {"prefix": ""})["owners"]
    return found


def test_an_attach_whose_rules_fail_leaves_nothing_attached(lab: Lab) -> None:
    # The mesh works (the first test on a fresh lab: its path may take a moment under load;
    # one ping with a 1 s timeout failed once in a full CI run).
    wait_for(lambda: can_ping(lab.ns("h1-c1"), lab.address("h2-c1")), timeout=15, what="ping")
    held = owners(lab, "h1")
    newcomer = new_namespace(lab.state, "x1")
    api = lab.client("h1")
    lab.flag.touch()
    try:
        with pytest.raises(UserError, match="isolation"):
            api.post("/attach", {"container": newcomer, "addresses": [], "name": "x1"})
        time.sleep(2)  # the routers' own scans of their bridges, with nft still broken
    finally:
        lab.flag.unlink()
    # Nothing of it stays: no interface in it, no port on the bridge, no address, no name.
    links = ns_run(newcomer, "ip", "-o", "link").stdout
    assert "ethwe" not in links, links
    with netlink.namespace(lab.ns("h1")) as ns:
        on_bridge = {p.name for p in ns.bridge_ports(BRIDGE) if p.kind == "veth"}
    isolated = api.get("/status/ramps")["ports"]
    assert [p["namespace"] for p in isolated] == [lab.ns("h1-c1")]
    assert on_bridge == {p["port"] for p in isolated}
    assert owners(lab, "h1") == held
    assert api.post("/dns/lookup", {"name": "x1"})["addresses"] == []

    # The router lived through it, and attaches (isolated) once nft works again.
    attached = api.post("/attach", {"container": newcomer, "addresses": [], "name": "x1"})
    assert attached["addresses"], attached
    assert wait_for(lambda: can_ping(newcomer, lab.address("h2-c1")), 20, "x1 reaches c2")
    assert can_ping(lab.ns("h1-c1"), lab.address("h2-c1"))
    api.post("/detach", {"container": newcomer})


def hidden_namespace(lab: Lab, name: str) -> Path:
    """A network namespace bound to a file of the lab's directory only: no name under
    /var/run/netns, no process in it, so no router can find whose it is."""
    named = new_namespace(lab.state, name)
    hidden = lab.dir / f"{name}.netns"
    hidden.touch()
    subprocess.run(["mount", "--bind", str(netlink.NETNS_DIR / named), str(hidden)], check=True)
    netlink.remove_namespace(named)
    return hidden


def in_hidden(hidden: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NSENTER, f"--net={hidden}", *cmd], capture_output=True, text=True, timeout=30
    )


def test_a_port_plugged_in_by_hand_is_shut(lab: Lab) -> None:
    # An address of c2's subnet that nobody has: what a spoofer on h1's bridge would take.
    subnet = lab.interface("h2-c1").network
    evil = ipaddress.IPv4Interface(f"{subnet.broadcast_address - 7}/{subnet.prefixlen}")
    hidden = hidden_namespace(lab, "evil")
    h1 = lab.ns("h1")
    try:
        with netlink.namespace(h1) as ns:
            ns.create_veth_into("evil0", "ethwe", peer_path=str(hidden), mtu=1400)
        with netlink.namespace(str(hidden)) as ns:
            ns.add_address("ethwe", str(evil))
            ns.set_up("ethwe")
            ns.set_up("lo")
        before = lab.client("h1").get("/status/ramps")["dropped"].get("unknown", 0)
        with netlink.namespace(h1) as ns:  # only now on the bridge: fully set up, nobody in it
            ns.set_master("evil0", BRIDGE)
            ns.set_up("evil0")
        time.sleep(1)  # the router has seen the new port (a link notification) and looked

        # It cannot reach c2 (on the other host) nor c1 (beside it), nor be reached ...
        sent = in_hidden(hidden, "ping", "-c", "3", "-i", "0.3", "-W", "1", lab.address("h2-c1"))
        assert sent.returncode != 0, sent.stdout
        sent = in_hidden(hidden, "ping", "-c", "2", "-i", "0.3", "-W", "1", lab.address("h1-c1"))
        assert sent.returncode != 0, sent.stdout
        assert not can_ping(lab.ns("h2-c1"), str(evil.ip))
        # ... and its frames are counted as dropped.
        after = lab.client("h1").get("/status/ramps")["dropped"].get("unknown", 0)
        assert after > before
        # Meanwhile the containers attached through meshnet reach each other.
        assert can_ping(lab.ns("h1-c1"), lab.address("h2-c1"))
        assert can_ping(lab.ns("h2-c1"), lab.address("h1-c1"))
    finally:
        with netlink.namespace(h1) as ns:
            ns.delete_link("evil0")
        subprocess.run(["umount", str(hidden)], check=False)
        hidden.unlink(missing_ok=True)
