"""What a Docker container's life means for meshnet (pure decisions), and the Engine's answers
parsed into them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnet.errors import UserError
from meshnet.integrations.docker import lifecycle
from meshnet.integrations.docker.lifecycle import Attach, Forget, Register
from meshnet.integrations.docker.objects import (
    ContainerInfo,
    DockerError,
    Endpoint,
    Event,
    NetworkInfo,
    is_container_ref,
    parse_container,
    parse_event,
    parse_network,
)
from meshnet.integrations.docker.settings import EngineAddress, parse_docker_host

A = "a" * 64
B = "b" * 64
C = "c" * 64
MESHNET_NET = "m" * 64
BRIDGE_NET = "d" * 64

full_ids = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


def container(
    id: str = A,
    name: str = "web",
    *,
    running: bool = True,
    labels: dict[str, str] | None = None,
    env: tuple[str, ...] = (),
    endpoints: tuple[Endpoint, ...] = (),
) -> ContainerInfo:
    return ContainerInfo(
        id=id,
        name=name,
        running=running,
        pid=4242 if running else 0,
        labels=labels or {},
        env=env,
        endpoints=endpoints,
    )


def on_meshnet(address: str = "10.32.0.7/12") -> Endpoint:
    return Endpoint(network="mnet", network_id=MESHNET_NET, endpoint_id="e" * 64, address=address)


def on_bridge() -> Endpoint:
    return Endpoint(
        network="bridge", network_id=BRIDGE_NET, endpoint_id="f" * 64, address="172.17.0.2/16"
    )


# --- keys ---------------------------------------------------------------------------------------


@given(full_ids, st.sampled_from(["ethwe", "eth1", "ethwe2"]))
def test_ipam_keys_name_their_container(container_id: str, ifname: str) -> None:
    owner = lifecycle.ipam_owner(container_id, ifname)
    assert owner.startswith("docker:" + container_id)
    assert lifecycle.owner_container(owner) == container_id


@pytest.mark.parametrize(
    "owner", ["netns:abc", "docker:short", "docker-ipam:" + "a" * 64, "cni:n:" + A, "docker:"]
)
def test_keys_that_are_not_a_containers_are_none(owner: str) -> None:
    assert lifecycle.owner_container(owner) is None


# --- what a container asks for ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "env", "wanted"),
    [
        ({}, (), None),
        ({"meshnet.cidr": ""}, (), ()),
        ({"meshnet.cidr": "net:10.33.0.0/16"}, (), ("net:10.33.0.0/16",)),
        (
            {"meshnet.cidr": "net:10.33.0.0/16, ip:10.32.0.9"},
            (),
            ("net:10.33.0.0/16", "ip:10.32.0.9"),
        ),
        ({"meshnet.cidr": "none"}, ("MESHNET_CIDR=net:10.34.0.0/16",), None),  # opted out
        ({}, ("MESHNET_CIDR=net:10.34.0.0/16",), ("net:10.34.0.0/16",)),
        ({}, ("MESHNET_CIDR=",), ()),
        ({}, ("MESHNET_CIDR=a", "MESHNET_CIDR=ip:10.32.0.5"), ("ip:10.32.0.5",)),  # last wins
        ({}, ("MESHNET_CIDRX=1", "PATH=/bin"), None),
        ({"meshnet.cidr": "ip:10.32.0.5"}, ("MESHNET_CIDR=net:10.34.0.0/16",), ("ip:10.32.0.5",)),
    ],
)
def test_the_label_then_the_environment_ask_to_be_attached(
    labels: dict[str, str], env: tuple[str, ...], wanted: tuple[str, ...] | None
) -> None:
    assert lifecycle.wanted_addresses(container(labels=labels, env=env)) == wanted


def test_a_started_container_is_attached_named_or_left_alone() -> None:
    networks = [MESHNET_NET]
    assert lifecycle.on_running(container(endpoints=(on_bridge(),)), networks) == []
    assert lifecycle.on_running(container(labels={"meshnet.cidr": ""}), networks) == [
        Attach(A, "web", ())
    ]
    assert lifecycle.on_running(container(endpoints=(on_meshnet(), on_bridge())), networks) == [
        Register(A, "web", ("10.32.0.7",))
    ]
    both = container(env=("MESHNET_CIDR=net:10.33.0.0/16",), endpoints=(on_meshnet(),))
    assert lifecycle.on_running(both, networks) == [
        Attach(A, "web", ("net:10.33.0.0/16",)),
        Register(A, "web", ("10.32.0.7",)),
    ]
    assert lifecycle.on_running(container(running=False), networks) == [Forget(A)]
    # An endpoint Docker gave no address yet names nothing.
    assert lifecycle.on_running(container(endpoints=(on_meshnet(""),)), networks) == []


# --- events -------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["die", "destroy"])
def test_a_container_that_dies_is_forgotten_without_asking_docker(action: str) -> None:
    event = Event("container", action, A)
    assert lifecycle.on_event(event) == [Forget(A)]
    assert not lifecycle.needs_inspection(event)


@pytest.mark.parametrize(
    ("event", "inspect"),
    [
        (Event("container", "start", A), True),
        (Event("container", "create", A), False),
        (Event("container", "exec_start", A), False),
        (Event("network", "connect", MESHNET_NET, {"container": A, "type": "meshnet"}), True),
        (Event("network", "connect", BRIDGE_NET, {"container": A, "type": "bridge"}), False),
        (Event("network", "disconnect", MESHNET_NET, {"container": A, "type": "meshnet"}), False),
    ],
)
def test_which_events_are_worth_inspecting_the_container(event: Event, inspect: bool) -> None:
    assert lifecycle.needs_inspection(event) is inspect
    assert lifecycle.on_event(event) == []


def test_events_about_no_full_id_are_ignored() -> None:
    assert lifecycle.on_event(Event("container", "die", "abc123")) == []
    assert lifecycle.on_event(Event("network", "destroy", MESHNET_NET)) == []


# --- reconciling after missed events ------------------------------------------------------------


def test_reconcile_attaches_the_running_and_forgets_the_gone() -> None:
    running = [
        container(B, "b", labels={"meshnet.cidr": ""}),
        container(A, "a", endpoints=(on_meshnet(),)),
        container(C, "stopped", running=False),
    ]
    owners = ["docker:" + C, "docker:" + B, "docker-ipam:t1", "netns:1:2", "docker:" + C + "/eth1"]
    named = [A, "d" * 64, "mynamespace"]
    assert lifecycle.reconcile(running, [MESHNET_NET], owners, named) == [
        Register(A, "a", ("10.32.0.7",)),
        Attach(B, "b", ()),
        Forget(C),
        Forget("d" * 64),
    ]


@given(st.lists(full_ids, max_size=6, unique=True), st.lists(full_ids, max_size=6, unique=True))
def test_reconcile_forgets_exactly_the_keys_of_containers_not_running(
    alive: list[str], held: list[str]
) -> None:
    running = [container(i, f"c{n}", labels={"meshnet.cidr": ""}) for n, i in enumerate(alive)]
    actions = lifecycle.reconcile(running, [], [lifecycle.ipam_owner(i) for i in held], [])
    assert {a.container for a in actions if isinstance(a, Forget)} == set(held) - set(alive)
    assert {a.container for a in actions if isinstance(a, Attach)} == set(alive)


def test_plugin_addresses_leak_only_when_no_meshnet_network_uses_them() -> None:
    held = {
        "docker-ipam:gw-1": ["10.32.0.1"],
        "docker-ipam:2": ["10.32.0.2"],
        "docker-ipam:3": ["10.32.0.3"],
    }
    network = NetworkInfo(
        id=MESHNET_NET,
        name="mnet",
        driver="meshnet",
        ipam_driver="meshnet",
        gateways=("10.32.0.1",),
        addresses=("10.32.0.2/12",),
    )
    assert lifecycle.orphaned_plugin_addresses(held, [network]) == ["docker-ipam:3"]
    assert lifecycle.orphaned_plugin_addresses(held, []) == sorted(held)


# --- the Engine's answers -----------------------------------------------------------------------


def inspect_answer(**overrides: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "Id": A,
        "Name": "/web",
        "State": {"Running": True, "Pid": 4242},
        "Config": {
            "Hostname": "web.meshnet.local",
            "Labels": {"meshnet.cidr": "net:10.33.0.0/16", "other": None},
            "Env": ["PATH=/bin", "MESHNET_CIDR=x"],
        },
        "NetworkSettings": {
            "Networks": {
                "mnet": {
                    "NetworkID": MESHNET_NET,
                    "EndpointID": "e" * 64,
                    "IPAddress": "10.32.0.7",
                    "IPPrefixLen": 12,
                },
                "none": {"NetworkID": BRIDGE_NET, "EndpointID": "", "IPAddress": ""},
            }
        },
    }
    answer.update(overrides)
    return answer


def test_a_container_is_parsed_from_its_inspection() -> None:
    info = parse_container(inspect_answer())
    assert info == ContainerInfo(
        id=A,
        name="web",
        running=True,
        pid=4242,
        hostname="web.meshnet.local",
        labels={"meshnet.cidr": "net:10.33.0.0/16"},
        env=("PATH=/bin", "MESHNET_CIDR=x"),
        endpoints=(
            Endpoint("mnet", MESHNET_NET, "e" * 64, "10.32.0.7/12"),
            Endpoint("none", BRIDGE_NET, "", ""),
        ),
    )
    assert info.namespace == "/proc/4242/ns/net"
    stopped = parse_container(inspect_answer(State={"Running": False, "Pid": 0}))
    assert not stopped.running and stopped.pid == 0


@pytest.mark.parametrize(
    "overrides",
    [
        {"Id": None},
        {"State": "running"},
        {"State": {"Running": True, "Pid": -1}},
        {"Config": {"Env": "PATH=/bin"}},
        {"NetworkSettings": {"Networks": []}},
    ],
)
def test_a_malformed_inspection_is_the_engines_fault(overrides: dict[str, Any]) -> None:
    with pytest.raises(DockerError):
        parse_container(inspect_answer(**overrides))


def test_a_network_is_parsed_with_its_endpoints_addresses() -> None:
    network = parse_network(
        {
            "Id": MESHNET_NET,
            "Name": "mnet",
            "Driver": "meshnet",
            "IPAM": {
                "Driver": "meshnet",
                "Config": [{"Subnet": "0.0.0.0/0", "Gateway": "10.32.0.1"}],
            },
            "Containers": {A: {"IPv4Address": "10.32.0.7/12"}, B: {"IPv4Address": ""}},
        }
    )
    assert network == NetworkInfo(
        MESHNET_NET, "mnet", "meshnet", "meshnet", ("0.0.0.0/0",), ("10.32.0.1",), ("10.32.0.7/12",)
    )
    assert lifecycle.is_meshnet_network(network)


def test_event_lines() -> None:
    line = {
        "Type": "container",
        "Action": "exec_start: sh -c x",
        "Actor": {"ID": A, "Attributes": {"name": "web"}},
    }
    assert parse_event(json.dumps(line)) == Event("container", "exec_start", A, {"name": "web"})
    connect = {
        "Type": "network",
        "Action": "connect",
        "Actor": {"ID": MESHNET_NET, "Attributes": {"container": A}},
    }
    assert parse_event(json.dumps(connect).encode()).container == A  # type: ignore[union-attr]
    for junk in ("", "{", "[]", '{"Type": "image", "Action": "pull", "Actor": {"ID": "x"}}',
                 '{"Type": "container", "Action": 5, "Actor": {"ID": "x"}}',
                 '{"Type": "container", "Action": "die", "Actor": {}}'):  # fmt: skip
        assert parse_event(junk) is None


@given(st.binary(max_size=100))
def test_no_event_line_raises(line: bytes) -> None:
    parse_event(line)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("unix:///var/run/docker.sock", EngineAddress("http://docker", "/var/run/docker.sock")),
        ("/run/d.sock", EngineAddress("http://docker", "/run/d.sock")),
        ("tcp://10.0.0.1:2375", EngineAddress("http://10.0.0.1:2375")),
    ],
)
def test_docker_hosts(text: str, address: EngineAddress) -> None:
    assert parse_docker_host(text) == address


@pytest.mark.parametrize(
    "text", ["unix://relative.sock", "tcp://host", "tcp://:80", "tcp://h:99999", "https://h:1", ""]
)
def test_bad_docker_hosts_are_one_line_errors(text: str) -> None:
    with pytest.raises(UserError, match="bad --docker-host"):
        parse_docker_host(text)


@pytest.mark.parametrize(
    ("text", "ok"),
    [("web", True), ("/web", True), (A, True), ("a1b2c3", True), ("my_app.1", True),
     ("", False), ("-x", False), ("a/b", False), ("has space", False), ("mynetns;rm", False)],
)  # fmt: skip
def test_what_may_name_a_container(text: str, ok: bool) -> None:
    assert is_container_ref(text) is ok


def test_an_ipv6_networks_endpoint_is_named_for_both_its_addresses() -> None:
    mnet = {
        "NetworkID": MESHNET_NET,
        "EndpointID": "e" * 64,
        "IPAddress": "10.32.0.7",
        "IPPrefixLen": 12,
        "GlobalIPv6Address": "fd12:3456:789a::7",
        "GlobalIPv6PrefixLen": 64,
    }
    info = parse_container(inspect_answer(NetworkSettings={"Networks": {"mnet": mnet}}))
    [endpoint] = info.endpoints
    assert endpoint.addresses == ("10.32.0.7/12", "fd12:3456:789a::7/64")
    assert lifecycle.meshnet_addresses(info, [MESHNET_NET]) == ("10.32.0.7", "fd12:3456:789a::7")
    assert Register(A, "web", ("10.32.0.7", "fd12:3456:789a::7")) in lifecycle.on_running(
        info, [MESHNET_NET]
    )


def test_an_ipv6_networks_addresses_and_gateway_count_as_used_however_spelled() -> None:
    network = parse_network(
        {
            "Id": MESHNET_NET,
            "Driver": "meshnet",
            "IPAM": {
                "Driver": "meshnet",
                "Config": [
                    {"Subnet": "0.0.0.0/0", "Gateway": "10.32.0.1"},
                    {"Subnet": "fd12:3456:789a::/64", "Gateway": "fd12:3456:789a::1"},
                ],
            },
            "Containers": {
                A: {"IPv4Address": "10.32.0.7/12", "IPv6Address": "fd12:3456:789a::7/64"}
            },
        }
    )
    assert network.addresses == ("10.32.0.7/12", "fd12:3456:789a::7/64")
    held = {
        "docker-ipam:gw6": ["fd12:3456:789a:0:0:0:0:1"],
        "docker-ipam:a6": ["fd12:3456:789a::7"],
        "docker-ipam:gone6": ["fd12:3456:789a::8"],
    }
    assert lifecycle.orphaned_plugin_addresses(held, [network]) == ["docker-ipam:gone6"]
