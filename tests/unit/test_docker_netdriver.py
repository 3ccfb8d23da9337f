"""The ``meshnet`` network driver's handlers, with the host's netlink faked: what Docker is told
and what would be done to the bridge, for each call libnetwork makes."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from meshnet.dataplane.kernel import netlink
from meshnet.integrations.docker.ipamdriver import PluginError
from meshnet.integrations.docker.netdriver import NetworkDriver, endpoint_mac, veth_names

NETWORK = "n" * 64
ENDPOINT = "0123456789abcdef" * 4
IFNAMSIZ = 16  # the kernel's limit, with its terminating NUL

ids = st.text(alphabet="0123456789abcdefABCDEFxyz", min_size=12, max_size=128)


class FakeNamespace:
    """The host's namespace as the driver uses it: links by name, and a log of every change."""

    def __init__(self, links: set[str], fail: str | None = None) -> None:
        self.links = links
        self.fail = fail  # the operation that raises NetlinkError
        self.log: list[tuple[Any, ...]] = []

    def _maybe_fail(self, operation: str) -> None:
        if operation == self.fail:
            raise netlink.NetlinkError(f"{operation}: Operation not permitted")

    def has_link(self, ifname: str) -> bool:
        return ifname in self.links

    def delete_link(self, ifname: str) -> bool:
        self._maybe_fail("delete")
        self.log.append(("delete", ifname))
        if ifname not in self.links:
            return False
        self.links.discard(ifname)
        return True

    def create_veth_into(
        self,
        ifname: str,
        peer: str,
        *,
        mtu: int | None = None,
        peer_gso_max_segs: int | None = None,
    ) -> None:
        self._maybe_fail("create")
        assert peer_gso_max_segs is not None  # the container's super-frames fit one GSO send
        self.log.append(("veth", ifname, peer, mtu))
        self.links |= {ifname, peer}

    def set_master(self, ifname: str, bridge: str) -> None:
        self.log.append(("master", ifname, bridge))

    def set_up(self, ifname: str) -> None:
        self.log.append(("up", ifname))


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> FakeNamespace:
    """The host's namespace, with the router's bridge in it."""
    fake = FakeNamespace({"meshnet"})

    @contextlib.contextmanager
    def namespace(name: str | None) -> Iterator[FakeNamespace]:
        assert name is None  # always the host's own (dockerd's) namespace
        yield fake

    monkeypatch.setattr(netlink, "namespace", namespace)
    return fake


def run(handler: Any, body: dict[str, Any]) -> Any:
    async def call() -> Any:
        return await handler(body)

    return trio.run(call)


# --- pure parts -------------------------------------------------------------------------------


@given(ids)
def test_veth_names_fit_the_kernels_limit_and_say_which_end_is_which(endpoint: str) -> None:
    host_end, container_end = veth_names(endpoint)
    assert len(host_end) < IFNAMSIZ and len(container_end) < IFNAMSIZ
    assert host_end.startswith("vethwl") and container_end.startswith("vethwg")
    assert host_end != container_end and host_end[6:] == container_end[6:] == endpoint[:9]


def test_an_endpoint_without_an_address_is_refused_with_the_fix() -> None:
    bodies: list[dict[str, Any]] = [
        {},
        {"Interface": None},
        {"Interface": {}},
        {"Interface": {"Address": ""}},
    ]
    for body in bodies:
        with pytest.raises(PluginError, match="--ipam-driver meshnet"):
            endpoint_mac(body)
    with pytest.raises(PluginError, match="Interface must be an object"):
        endpoint_mac({"Interface": "10.32.0.2/12"})


def test_a_mac_is_made_only_when_docker_has_none() -> None:
    assert (
        endpoint_mac({"Interface": {"Address": "10.32.0.2/12", "MacAddress": "02:42:0a:20:00:02"}})
        is None
    )
    mac = endpoint_mac({"Interface": {"Address": "10.32.0.2/12"}})
    assert mac is not None and re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", mac)
    first = int(mac[:2], 16)
    assert first & 1 == 0 and first & 2 == 2  # unicast, locally administered


def test_capabilities_are_local_scope() -> None:
    d = NetworkDriver(bridge="meshnet", mtu=lambda: 1354)
    assert d.get_capabilities({}) == {"Scope": "local", "ConnectivityScope": "local"}
    assert all(path.startswith("/NetworkDriver.") for path in d.handlers())
    for quiet in ("DiscoverNew", "DiscoverDelete", "ProgramExternalConnectivity"):
        assert d.handlers()[f"/NetworkDriver.{quiet}"]({"anything": 1}) == {}


def test_networks_come_and_go() -> None:
    d = NetworkDriver(bridge="meshnet", mtu=lambda: 1354)
    assert d.create_network({"NetworkID": NETWORK, "IPv4Data": [{"Pool": "0.0.0.0/0"}]}) == {}
    assert d.networks == {NETWORK}
    assert d.delete_network({"NetworkID": NETWORK}) == {}
    assert d.delete_network({"NetworkID": NETWORK}) == {}  # again: nothing to do
    assert d.networks == set()


@pytest.mark.parametrize(
    "body",
    [{}, {"NetworkID": ""}, {"NetworkID": "short"}, {"NetworkID": 5}, {"NetworkID": "a/b" * 8}],
)
def test_requests_without_a_valid_id_are_refused(body: dict[str, Any]) -> None:
    d = NetworkDriver(bridge="meshnet", mtu=lambda: 1354)
    with pytest.raises(PluginError, match="no valid NetworkID"):
        d.create_network(body)


def test_ipv6_networks_are_accepted_and_malformed_pool_data_refused() -> None:
    d = NetworkDriver(bridge="meshnet", mtu=lambda: 1354)
    body = {
        "NetworkID": NETWORK,
        "IPv4Data": [{"Pool": "0.0.0.0/0"}],
        "IPv6Data": [{"Pool": "fd00::/64", "Gateway": "fd00::1/64"}],
    }
    assert d.create_network(body) == {}
    assert d.networks == {NETWORK}
    other = "o" * 64
    with pytest.raises(PluginError, match="IPv6Data must be a list of objects"):
        d.create_network({"NetworkID": other, "IPv6Data": "fd00::/64"})
    assert d.networks == {NETWORK}


def test_an_endpoints_addresses_of_both_families_are_kept_until_it_goes() -> None:
    d = NetworkDriver(bridge="meshnet", mtu=lambda: 1354)
    interface = {"Address": "10.32.0.2/12", "AddressIPv6": "fd00:0::2/64"}
    d.create_endpoint({"NetworkID": NETWORK, "EndpointID": ENDPOINT, "Interface": interface})
    assert d.addresses == {ENDPOINT: ("10.32.0.2/12", "fd00::2/64")}
    with pytest.raises(PluginError, match="AddressIPv6 is not an address"):
        d.create_endpoint(
            {
                "NetworkID": NETWORK,
                "EndpointID": "e" * 64,
                "Interface": {"Address": "10.32.0.3/12", "AddressIPv6": "fd00::x"},
            }
        )
    assert list(d.addresses) == [ENDPOINT]


def test_an_endpoint_gets_a_mac_only_if_docker_gave_none() -> None:
    d = NetworkDriver(bridge="meshnet", mtu=lambda: 1354)
    made = d.create_endpoint(
        {"NetworkID": NETWORK, "EndpointID": ENDPOINT, "Interface": {"Address": "10.32.0.2/12"}}
    )
    assert set(made) == {"Interface"} and set(made["Interface"]) == {"MacAddress"}
    given_mac = {"Address": "10.32.0.3/12", "MacAddress": "02:42:0a:20:00:03"}
    other = "f" * 64
    assert (
        d.create_endpoint({"NetworkID": NETWORK, "EndpointID": other, "Interface": given_mac}) == {}
    )
    assert d.endpoints == {ENDPOINT: NETWORK, other: NETWORK}
    assert d.endpoint_info({"NetworkID": NETWORK, "EndpointID": ENDPOINT}) == {"Value": {}}


# --- join and leave, against the fake host ----------------------------------------------------


def test_join_puts_a_veth_on_the_bridge_with_the_overlay_mtu_and_hands_docker_the_other_end(
    host: FakeNamespace,
) -> None:
    mtu = [1354]
    joined: list[tuple[str, str, tuple[str, ...]]] = []
    d = NetworkDriver(
        bridge="meshnet",
        mtu=lambda: mtu[0],
        joined=lambda port, addresses: joined.append((host.log[-1][1], port, addresses)),
    )
    mtu[0] = 1400  # read at each join, not at construction
    interface = {"Address": "10.32.0.2/12", "AddressIPv6": "fd00::2/64"}
    d.create_endpoint({"NetworkID": NETWORK, "EndpointID": ENDPOINT, "Interface": interface})
    answer = run(d.join, {"NetworkID": NETWORK, "EndpointID": ENDPOINT, "SandboxKey": "/x"})
    host_end, container_end = veth_names(ENDPOINT)
    assert answer == {
        "InterfaceName": {"SrcName": container_end, "DstPrefix": "ethwe"},
        "DisableGatewayService": True,
    }
    assert host.log == [
        ("delete", host_end),  # a pair left by a join that failed halfway goes first
        ("delete", container_end),
        ("veth", host_end, container_end, 1400),
        ("master", host_end, "meshnet"),
        ("up", host_end),
    ]
    # Told once the port is up on the bridge, with what IPAM gave it: the ramps adopt it.
    assert joined == [(host_end, host_end, ("10.32.0.2/12", "fd00::2/64"))]


def test_join_without_the_bridge_says_the_router_is_not_running(host: FakeNamespace) -> None:
    host.links.clear()
    d = NetworkDriver(bridge="meshnet", mtu=lambda: 1354)
    with pytest.raises(PluginError, match="no bridge meshnet: is the meshnet router running"):
        run(d.join, {"NetworkID": NETWORK, "EndpointID": ENDPOINT})
    assert host.log == []


def test_a_netlink_failure_at_join_is_a_plugin_error(host: FakeNamespace) -> None:
    host.fail = "create"
    d = NetworkDriver(bridge="meshnet", mtu=lambda: 1354)
    with pytest.raises(PluginError, match="cannot create the container's interface"):
        run(d.join, {"NetworkID": NETWORK, "EndpointID": ENDPOINT})


def test_join_needs_both_ids(host: FakeNamespace) -> None:
    d = NetworkDriver(bridge="meshnet", mtu=lambda: 1354)
    with pytest.raises(PluginError, match="no valid EndpointID"):
        run(d.join, {"NetworkID": NETWORK})
    with pytest.raises(PluginError, match="no valid NetworkID"):
        run(d.join, {"EndpointID": ENDPOINT})
    assert host.log == []


def test_leave_and_delete_endpoint_remove_the_pair_and_are_idempotent(host: FakeNamespace) -> None:
    d = NetworkDriver(bridge="meshnet", mtu=lambda: 1354)
    d.create_endpoint(
        {"NetworkID": NETWORK, "EndpointID": ENDPOINT, "Interface": {"Address": "10.32.0.2/12"}}
    )
    run(d.join, {"NetworkID": NETWORK, "EndpointID": ENDPOINT})
    host_end, container_end = veth_names(ENDPOINT)
    assert {host_end, container_end} <= host.links
    host.log.clear()
    assert run(d.leave, {"NetworkID": NETWORK, "EndpointID": ENDPOINT}) == {}
    assert host.links == {"meshnet"}
    assert run(d.delete_endpoint, {"NetworkID": NETWORK, "EndpointID": ENDPOINT}) == {}
    assert d.endpoints == {}
    assert host.log == [("delete", host_end), ("delete", container_end)] * 2


def test_a_failure_to_remove_is_logged_not_raised(
    host: FakeNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    host.fail = "delete"
    d = NetworkDriver(bridge="meshnet", mtu=lambda: 1354)
    assert run(d.leave, {"EndpointID": ENDPOINT}) == {}  # dockerd must not be stuck on it
    assert "cannot remove vethwl012345678" in caplog.text
