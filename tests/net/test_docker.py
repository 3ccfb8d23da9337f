"""Docker on the overlay, with real dockerds in a lab's hosts and Debian's docker client.

One two-host lab for the module (`meshnet lab up --docker`: a dockerd per host, the lab's
containers Docker containers). Every test starts containers of its own and removes them, pass
or fail, so the tests do not depend on each other's order.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import Any

import httpx
import pytest

from meshnet.errors import UserError
from meshnet.lab import docker as lab_docker
from meshnet.lab import lab as lablib
from meshnet.lab import topology
from tests.conftest import run_meshnet, unique_lab_name
from tests.net.test_mesh import MESHNET, api, wait_for

DOCKER = "/usr/bin/docker"  # Debian's client, matching its dockerd (not /usr/local/bin's)
IMAGE = lab_docker.IMAGE
SLEEP = ("sleep", "1000")
SOON = 5.0  # seconds: what "at once" means for an event to take effect


def _docker_unavailable() -> str | None:
    if not os.access(DOCKER, os.X_OK):
        return f"{DOCKER} not found: apt-get install docker.io"
    try:
        lab_docker.check_available()  # dockerd (wherever it is on PATH), unshare, busybox
    except UserError as e:
        return str(e)
    return None


_UNAVAILABLE = _docker_unavailable()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=f"needs Docker: {_UNAVAILABLE}"),
]


@pytest.fixture(scope="module")
def lab() -> Iterator[dict[str, Any]]:
    """Two hosts in a line with a Docker container each; removed after the module, pass or fail."""
    name = unique_lab_name()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MESHNET_HEARTBEAT_INTERVAL", "1")  # the routers inherit it
        try:
            lablib.up(name, topology.builtin("line", 2, 1), docker=True)
            yield lablib.status(name)
        finally:
            if (lablib.lab_root() / name).exists():
                lablib.down(name)


ATTEMPT = 4  # seconds: one ping, its name lookup included (a lost query is tried again)


def _bounded_ping(target: str, *options: str) -> tuple[str, ...]:
    return ("timeout", str(ATTEMPT), "ping", *options, "-c1", "-W1", target)


@dataclass
class Hosts:
    """The lab's hosts as a user drives them: docker and meshnet commands, and the API."""

    lab: dict[str, Any]
    containers: list[tuple[str, str]] = field(default_factory=list)
    networks: list[tuple[str, str]] = field(default_factory=list)

    def dir(self, host: str) -> str:
        return str(next(h["dir"] for h in self.lab["hosts"] if h["name"] == host))

    def docker(self, host: str, *args: str, check: bool = True) -> str:
        sock = lab_docker.engine_socket(self.dir(host))
        done = subprocess.run(
            [DOCKER, "-H", f"unix://{sock}", *args], capture_output=True, text=True, timeout=60
        )
        if check:
            assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
        return done.stdout.strip()

    def meshnet(self, host: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`meshnet lab exec HOST -- meshnet ARGS`: the host's router, dockerd and client."""
        return run_meshnet("lab", "exec", "--name", self.lab["name"], host, "--", *MESHNET, *args)

    def run(self, host: str, name: str, *args: str) -> str:
        """`docker run -d --name NAME ARGS IMAGE sleep`; the container's id."""
        self.containers.append((host, name))
        return self.docker(host, "run", "-d", "--name", name, *args, IMAGE, *SLEEP)

    def meshnet_run(self, host: str, name: str, *specs: str) -> str:
        self.containers.append((host, name))
        done = self.meshnet(host, "run", *specs, "--", "--name", name, IMAGE, *SLEEP)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    def network(self, host: str, name: str, *options: str) -> str:
        self.networks.append((host, name))
        return self.docker(
            host, "network", "create", "-d", "meshnet", "--ipam-driver", "meshnet", *options, name
        )

    def pings(self, host: str, container: str, target: str, *options: str) -> bool:
        """One ping, by name or address, within ATTEMPT seconds.

        Bounded inside the container (busybox's ``timeout``): a name whose query goes
        unanswered makes the container's resolver wait 5 s per try, twice, for the name with
        the search domain and again without it (20 s measured), longer than a whole
        ``wait_ping``, which would then never try again.
        """
        sock = lab_docker.engine_socket(self.dir(host))
        done = subprocess.run(
            [DOCKER, "-H", f"unix://{sock}", "exec", container, *_bounded_ping(target, *options)],
            capture_output=True,
            timeout=30,
        )
        return done.returncode == 0

    def wait_ping(
        self, host: str, container: str, target: str, *options: str, timeout: float = 15
    ) -> None:
        wait_for(
            lambda: self.pings(host, container, target, *options),
            timeout=timeout,
            what=f"{container} on {host} to ping {' '.join(options)} {target}",
        )

    def ethwe(self, host: str, container: str) -> list[IPv4Interface]:
        """The container's IPv4 addresses on the overlay, as the kernel has them: on ethwe
        (attached by meshnet) or ethwe0 (a meshnet network's; Docker numbers them)."""
        out = self.docker(host, "exec", container, "ip", "-o", "-4", "addr", "show", check=False)
        return [
            IPv4Interface(line.split()[3])
            for line in out.splitlines()
            if line.split()[1].startswith("ethwe")
        ]

    def ethwe6(self, host: str, container: str) -> list[IPv6Interface]:
        """The container's global IPv6 addresses on the overlay (not the link-local one)."""
        out = self.docker(
            host, "exec", container, "ip", "-o", "-6", "addr", "show", "scope", "global",
            check=False,
        )  # fmt: skip
        return [
            IPv6Interface(line.split()[3])
            for line in out.splitlines()
            if line.split()[1].startswith("ethwe")
        ]

    def inspect_address(self, host: str, container: str, network: str, key: str) -> str:
        return self.docker(
            host, "inspect", "-f", f"{{{{.NetworkSettings.Networks.{network}.{key}}}}}", container
        )

    def owners(self, host: str, prefix: str = "") -> dict[str, list[str]]:
        found: dict[str, list[str]] = api(self.lab, host).post("/ipam/owners", {"prefix": prefix})[
            "owners"
        ]
        return found

    def held(self, host: str) -> set[str]:
        return {a for addresses in self.owners(host).values() for a in addresses}

    def lookup(self, host: str, name: str) -> list[str]:
        addresses: list[str] = api(self.lab, host).post("/dns/lookup", {"name": name})["addresses"]
        return addresses

    def isolated(self, host: str) -> set[str]:
        """The addresses the host's bridge lets its container ports send from."""
        ports = api(self.lab, host).get("/status/ramps")["ports"]
        return {a.split("/")[0] for p in ports for a in p["addresses"]}

    def allocation_range(self) -> IPv4Network:
        return IPv4Network(api(self.lab, "h1").get("/status/ipam")["range"])

    def cleanup(self) -> None:
        for host, name in reversed(self.containers):
            self.docker(host, "rm", "-f", name, check=False)
        for host, name in reversed(self.networks):
            self.docker(host, "network", "rm", name, check=False)


@pytest.fixture
def hosts(lab: dict[str, Any]) -> Iterator[Hosts]:
    """The lab's hosts; what a test starts on them is removed after it, pass or fail."""
    h = Hosts(lab)
    try:
        yield h
    finally:
        h.cleanup()


def test_the_labs_docker_containers_ping_each_other_by_name(hosts: Hosts) -> None:
    hosts.wait_ping("h1", "h1-c1", "h2-c1")
    assert hosts.pings("h2", "h2-c1", "h1-c1")
    assert hosts.docker("h2", "exec", "h2-c1", "hostname") == "h2-c1.meshnet.local"


def test_meshnet_run_and_a_meshnet_network_reach_each_other_and_the_lab(hosts: Hosts) -> None:
    web = hosts.meshnet_run("h2", "web")
    assert hosts.docker("h2", "exec", "web", "hostname") == "web.meshnet.local"
    hosts.network("h1", "mnet")
    app = hosts.run("h1", "app", "--network", "mnet")
    address = hosts.docker(
        "h1", "inspect", "-f", "{{.NetworkSettings.Networks.mnet.IPAddress}}", "app"
    )
    assert IPv4Address(address) in hosts.allocation_range()
    assert [a.ip for a in hosts.ethwe("h1", "app")] == [IPv4Address(address)]
    assert address in hosts.held("h1")  # Docker got it from meshnet's IPAM, through the plugin
    # Its port is isolated within moments of the join, not at the next 5 s scan of the bridge.
    wait_for(lambda: address in hosts.isolated("h1"), timeout=3, what="app's port isolated")
    wait_for(lambda: hosts.lookup("h2", "app") == [address], timeout=SOON, what="app's name")
    web_ip = hosts.lookup("h2", "web")
    assert len(web_ip) == 1 and hosts.owners("h2", f"docker:{web}") == {f"docker:{web}": web_ip}
    assert hosts.docker("h1", "inspect", "-f", "{{.Id}}", "app") == app
    hosts.wait_ping("h1", "app", "web")  # Docker's embedded DNS asks meshnet's
    # Each at once, h1-c1 last: app's new port on h1's bridge must not have changed the
    # bridge's MAC (h1-c1's ARP entry for the DNS server would be stale for ~20 s).
    for host, container, target in [
        ("h2", "web", "app"),
        ("h1", "app", "h2-c1"),
        ("h2", "web", "h1-c1"),
        ("h2", "h2-c1", "app"),
        ("h1", "h1-c1", "web"),
    ]:
        assert hosts.pings(host, container, target), f"{container} -> {target}"


def test_an_ipv6_network_gives_both_families_and_its_containers_ping6_by_name_across_hosts(
    hosts: Hosts,
) -> None:
    ipam6 = api(hosts.lab, "h1").get("/status/ipam")["ipv6"]
    range6, default6 = IPv6Network(ipam6["range"]), IPv6Network(ipam6["default_subnet"])
    for host, name in [("h1", "six1"), ("h2", "six2")]:
        hosts.network(host, "v6net", "--ipv6")
        hosts.run(host, name, "--network", "v6net")
    addresses: dict[str, tuple[IPv4Address, IPv6Address]] = {}
    for host, name in [("h1", "six1"), ("h2", "six2")]:
        ip4 = IPv4Address(hosts.inspect_address(host, name, "v6net", "IPAddress"))
        ip6 = IPv6Address(hosts.inspect_address(host, name, "v6net", "GlobalIPv6Address"))
        assert ip4 in hosts.allocation_range() and ip6 in default6  # the IPv6 ring's /64
        assert [a.ip for a in hosts.ethwe(host, name)] == [ip4]
        assert [a for a in hosts.ethwe6(host, name)] == [IPv6Interface(f"{ip6}/64")]
        assert {str(ip4), str(ip6)} <= hosts.held(host)  # both from meshnet's IPAM
        wait_for(
            lambda h=host, a=str(ip6): a in hosts.isolated(h),  # type: ignore[misc]
            timeout=3,
            what=f"{name}'s IPv6 address isolated",
        )
        addresses[name] = (ip4, ip6)
    # The pool Docker shows is the IPv6 ring's default /64, its gateway from IPAM too.
    subnets = hosts.docker("h1", "network", "inspect", "-f", "{{json .IPAM.Config}}", "v6net")
    assert str(default6) in subnets and default6.subnet_of(range6)
    for name in ("six1", "six2"):
        both = sorted(map(str, addresses[name]))
        for other in ("h1", "h2"):  # named by its router, and learnt by gossip
            wait_for(
                lambda h=other, n=name, b=both: sorted(hosts.lookup(h, n)) == b,  # type: ignore[misc]
                timeout=SOON,
                what=f"{name}'s A and AAAA names on {other}",
            )
    # ping -6 by name (an AAAA through Docker's embedded DNS and meshnet's), both ways.
    hosts.wait_ping("h1", "six1", "six2", "-6")
    assert hosts.pings("h2", "six2", "six1", "-6")
    assert hosts.pings("h2", "six2", str(addresses["six1"][1]))
    assert hosts.pings("h1", "six1", "six2", "-4")  # and IPv4 as before
    # An IPv4-only meshnet network beside it is as it always was: no IPv6 address.
    hosts.network("h1", "v4net")
    hosts.run("h1", "four", "--network", "v4net")
    assert hosts.ethwe6("h1", "four") == []
    assert hosts.inspect_address("h1", "four", "v4net", "GlobalIPv6Address") == ""

    # Removed: every address of both families, gateways included, goes back to IPAM.
    for host, name in [("h1", "six1"), ("h2", "six2")]:
        hosts.docker(host, "rm", "-f", name)
        hosts.docker(host, "network", "rm", "v6net")
        hosts.networks.remove((host, "v6net"))
        held = hosts.held(host)
        assert not {str(a) for a in addresses[name]} & held
        plugin = [a for held in hosts.owners(host, "docker-ipam:").values() for a in held]
        assert not [a for a in plugin if ":" in a]  # no IPv6 gateway left either


def test_docker_rm_releases_the_address_and_the_name_of_both_kinds(hosts: Hosts) -> None:
    ran = hosts.meshnet_run("h2", "gone-run")
    hosts.network("h1", "gonenet")
    hosts.run("h1", "gone-net", "--network", "gonenet")
    net_ip = hosts.docker(
        "h1", "inspect", "-f", "{{.NetworkSettings.Networks.gonenet.IPAddress}}", "gone-net"
    )
    run_ip = hosts.lookup("h2", "gone-run")
    assert len(run_ip) == 1 and f"docker:{ran}" in hosts.owners("h2", "docker:")
    assert net_ip in hosts.held("h1")
    wait_for(lambda: hosts.lookup("h2", "gone-net") == [net_ip], timeout=SOON, what="a name")
    wait_for(lambda: hosts.lookup("h1", "gone-run") == run_ip, timeout=SOON, what="a name")
    gateway = hosts.docker(
        "h1", "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", "gonenet"
    )
    assert gateway in hosts.held("h1")  # the gateway Docker asked for (no container has it)

    hosts.docker("h1", "rm", "-f", "gone-net")
    hosts.docker("h2", "rm", "-f", "gone-run")
    wait_for(lambda: net_ip not in hosts.held("h1"), timeout=SOON, what="gone-net's release")
    wait_for(lambda: run_ip[0] not in hosts.held("h2"), timeout=SOON, what="gone-run's release")
    for host in ("h1", "h2"):  # the router that named it, and the one that learnt it by gossip
        for name in ("gone-net", "gone-run"):
            wait_for(
                lambda h=host, n=name: not hosts.lookup(h, n),  # type: ignore[misc]
                timeout=SOON,
                what=f"{name}'s name gone on {host}",
            )
    assert f"docker:{ran}" not in hosts.owners("h2", "docker:")
    # What a user sees: `meshnet dns-lookup` fails.
    lookup = hosts.meshnet("h1", "dns-lookup", "gone-net")
    assert lookup.returncode == 1 and "not found" in lookup.stderr

    # The network is empty now: Docker removes it, giving the gateway back.
    hosts.docker("h1", "network", "rm", "gonenet")
    hosts.networks.remove(("h1", "gonenet"))
    assert hosts.docker("h1", "network", "ls", "-q", "--filter", "name=gonenet") == ""
    assert gateway not in hosts.held("h1")
    assert hosts.owners("h1", "docker-ipam:") == {}


def test_a_label_or_an_environment_variable_attaches_a_container_by_itself(
    hosts: Hosts,
) -> None:
    # A subnet of their own (so the spec is really read): a group that reaches only itself,
    # and its host's DNS server (whose address is in the default subnet), so names resolve.
    subnet = IPv4Network("10.33.0.0/16")
    labelled = hosts.run("h1", "labelled", "--label", f"meshnet.cidr=net:{subnet}")
    hosts.run("h2", "env", "-e", f"MESHNET_CIDR=net:{subnet}")
    hosts.run("h1", "unasked")

    def address(host: str, name: str) -> str | None:
        found = hosts.ethwe(host, name)
        return str(found[0].ip) if [a.network for a in found] == [subnet] else None

    labelled_ip = wait_for(lambda: address("h1", "labelled"), timeout=SOON, what="labelled")
    env_ip = wait_for(lambda: address("h2", "env"), timeout=SOON, what="env attached")
    hosts.wait_ping("h1", "labelled", "env")
    assert hosts.pings("h2", "env", "labelled")
    assert hosts.ethwe("h1", "unasked") == []  # asked for nothing: left alone
    assert hosts.lookup("h2", "labelled") == [labelled_ip]  # named after the container
    assert hosts.lookup("h1", "env") == [env_ip]

    # The label outlives a restart: attached again (its die released the address).
    hosts.docker("h1", "restart", "-t", "0", "labelled")
    again = wait_for(lambda: address("h1", "labelled"), timeout=SOON, what="labelled again")
    # From the restarted side first: its interface has a new MAC, which env's ARP entry only
    # learns from labelled's ARP request (otherwise after its ~8 s of stale-entry probes).
    hosts.wait_ping("h1", "labelled", env_ip)
    assert hosts.pings("h2", "env", again)
    assert hosts.owners("h1", f"docker:{labelled}") == {f"docker:{labelled}": [again]}


def test_attach_and_detach_by_docker_name_or_id(hosts: Hosts) -> None:
    plain = hosts.run("h1", "plain")
    assert hosts.ethwe("h1", "plain") == []
    # net:default: IPv4 only, so one address to follow (without it: one of each family).
    attached = hosts.meshnet("h1", "attach", "net:default", "plain")
    assert attached.returncode == 0, attached.stderr
    ip = attached.stdout.strip()
    assert [str(a.ip) for a in hosts.ethwe("h1", "plain")] == [ip]
    assert hosts.owners("h1", f"docker:{plain}") == {f"docker:{plain}": [ip]}
    assert hosts.lookup("h1", "plain") == [ip]  # named after the container
    hosts.wait_ping("h2", "h2-c1", "plain")

    detached = hosts.meshnet("h1", "detach", "plain")
    assert detached.returncode == 0, detached.stderr
    assert hosts.ethwe("h1", "plain") == []
    assert hosts.owners("h1", f"docker:{plain}") == {}
    assert hosts.lookup("h1", "plain") == []

    # By a prefix of its id, with a subnet of its own; detached by its full id.
    attached = hosts.meshnet("h1", "attach", "--name", "byid", "net:10.34.0.0/16", plain[:12])
    assert attached.returncode == 0, attached.stderr
    assert [str(a) for a in hosts.ethwe("h1", "plain")] == [f"{attached.stdout.strip()}/16"]
    assert hosts.lookup("h1", "byid") == [attached.stdout.strip()]
    assert hosts.meshnet("h1", "detach", plain).returncode == 0
    assert hosts.ethwe("h1", "plain") == [] and hosts.owners("h1", f"docker:{plain}") == {}
    again = hosts.meshnet("h1", "detach", plain)
    assert again.returncode == 1 and "not attached" in again.stderr

    missing = hosts.meshnet("h1", "attach", "no-such-container")
    assert missing.returncode == 1
    assert "no such container namespace or Docker container" in missing.stderr


def test_the_plugin_answers_404_for_an_unknown_method_and_err_for_a_bad_request(
    hosts: Hosts,
) -> None:
    done = hosts.meshnet("h1", "status", "docker", "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["state"] == "connected" and status["plugin"] == "serving"
    transport = httpx.HTTPTransport(uds=status["plugin_socket"])
    with httpx.Client(transport=transport, base_url="http://plugin", timeout=10) as plugin:
        activate = plugin.post("/Plugin.Activate", json={})
        assert activate.json() == {"Implements": ["NetworkDriver", "IpamDriver"]}
        unknown = plugin.post("/NetworkDriver.AllocateNetwork", json={})
        assert unknown.status_code == 404 and "Err" in unknown.json()
        outside = plugin.post("/IpamDriver.RequestPool", json={"Pool": "192.168.7.0/24"})
        assert outside.status_code == 500
        assert "outside meshnet's allocation range" in outside.json()["Err"]
        garbage = plugin.post("/NetworkDriver.Join", content=b"{not json")
        assert garbage.status_code == 400 and garbage.json() == {"Err": "request body is not JSON"}
        no_endpoint = plugin.post("/NetworkDriver.Join", json={"NetworkID": "x"})
        assert no_endpoint.json() == {"Err": "bad request: no valid EndpointID"}
    after = json.loads(hosts.meshnet("h1", "status", "docker", "--json").stdout)
    assert after["plugin_errors"] >= status["plugin_errors"] + 3
    assert after["state"] == "connected"  # the router carried on
    hosts.wait_ping("h1", "h1-c1", "h2-c1")
