"""The ``meshnet`` IPAM driver's handlers against an in-memory IPAM: what Docker asks, in the
order it asks it, with no daemon and no Docker."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_interface,
)
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.errors import UserError
from meshnet.integrations.docker.ipamdriver import (
    GATEWAY_REQUEST,
    NO_IPV6,
    OWNER_PREFIX,
    IpamDriver,
    PluginError,
    parse_address,
    parse_pool,
    parse_pool_id,
)

RANGE = IPv4Network("10.32.0.0/12")
DEFAULT = IPv4Network("10.32.0.0/14")  # a part of the range, so it differs from the range
RANGE6 = IPv6Network("fd12:3456:789a::/48")
DEFAULT6 = IPv6Network("fd12:3456:789a::/64")

Network = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address


@dataclass(frozen=True)
class Settings:
    range: Network
    subnet: Network


class FakeIpam:
    """meshnet's IPAM as the driver sees it: addresses held by owner keys, first free first;
    the IPv6 ring (if ``ipv6``) exists once ``ring6`` has been awaited ``ring6_after`` times."""

    def __init__(
        self,
        allocation_range: IPv4Network = RANGE,
        default: IPv4Network = DEFAULT,
        *,
        ipv6: bool = True,
    ):
        self.config = Settings(allocation_range, default)
        self.ipv6: object | None = object() if ipv6 else None
        self.config6 = Settings(RANGE6, DEFAULT6)
        self.ring6_asked = 0
        self.held: dict[IPAddress, str] = {}

    async def ring6(self) -> Settings:
        assert self.ipv6 is not None, "the driver asked a --no-ipv6 IPAM for its IPv6 ring"
        self.ring6_asked += 1
        await trio.sleep(0)  # it may wait for the ring
        return self.config6

    def _first_free(self, owner: str, where: Network) -> Any:
        for ip in itertools.islice(where.hosts(), 1000):
            if ip not in self.held:
                self.held[ip] = owner
                return ip_interface(f"{ip}/{where.prefixlen}")
        raise UserError(f"{where} is full")

    async def allocate(self, owner: str, subnet: IPv4Network | None = None) -> IPv4Interface:
        found = self._first_free(owner, subnet or self.config.subnet)
        assert isinstance(found, IPv4Interface)
        return found

    async def allocate6(self, owner: str, subnet: IPv6Network | None = None) -> IPv6Interface:
        assert self.ipv6 is not None
        found = self._first_free(owner, subnet or self.config6.subnet)
        assert isinstance(found, IPv6Interface)
        return found

    async def claim(self, owner: str, address: Any) -> Any:
        holder = self.held.get(address.ip)
        if holder is not None and holder != owner:
            raise UserError(f"{address.ip} is in use")
        self.held[address.ip] = owner
        return address

    async def release(self, owner: str, only: list[IPAddress] | None = None) -> list[IPAddress]:
        gone = [ip for ip, o in self.held.items() if o == owner and (only is None or ip in only)]
        for ip in gone:
            del self.held[ip]
        return gone

    def holders(self, prefix: str = "") -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for ip, owner in sorted(
            self.held.items(), key=lambda item: (item[0].version, int(item[0]))
        ):
            if owner.startswith(prefix):
                out.setdefault(owner, []).append(str(ip))
        return out


def driver(ipam: FakeIpam | None = None) -> IpamDriver:
    counter = itertools.count(1)
    return IpamDriver(ipam or FakeIpam(), token=lambda: f"t{next(counter)}")


def call(handler: Any, body: dict[str, Any]) -> Any:
    """A handler's answer, awaiting it if it is async (the plugin app does the same)."""
    result = handler(body)
    if not hasattr(result, "__await__"):
        return result

    async def wait() -> Any:
        return await result

    return trio.run(wait)


# --- parsing ----------------------------------------------------------------------------------


def test_no_pool_means_the_default_subnet() -> None:
    assert parse_pool("", "", RANGE, DEFAULT) == DEFAULT


def test_a_pool_inside_the_range_is_that_subnet() -> None:
    assert parse_pool("10.33.0.0/16", "", RANGE, DEFAULT) == IPv4Network("10.33.0.0/16")
    assert parse_pool(str(RANGE), "", RANGE, DEFAULT) == RANGE


@pytest.mark.parametrize(
    ("pool", "sub_pool", "message"),
    [
        ("10.33.0.0/16", "10.33.1.0/24", "--ip-range"),
        ("", "10.33.1.0/24", "--ip-range"),
        ("192.168.0.0/24", "", "outside meshnet's allocation range 10.32.0.0/12"),
        ("10.0.0.0/8", "", "outside"),  # holds the range, but is not inside it
        ("10.33.0.1/16", "", "bad address '10.33.0.1/16': 10.33.0.1/16 has host bits set"),
        ("10.33.0.0/33", "", "bad address '10.33.0.0/33': "),
        ("fd00::/64", "", "bad address 'fd00::/64': not an IPv4 subnet, where Docker asks for"),
        ("nonsense", "", "bad address 'nonsense': not an IP address"),
        ("10.33.0.0/31", "", "too small"),
        ("10.33.0.0/32", "", "too small"),
    ],
)
def test_pools_meshnet_cannot_serve_are_refused(pool: str, sub_pool: str, message: str) -> None:
    with pytest.raises(PluginError, match=re.escape(message)):
        parse_pool(pool, sub_pool, RANGE, DEFAULT)


@given(st.integers(min_value=12, max_value=30), st.integers(min_value=0, max_value=2**20 - 1))
def test_every_subnet_of_the_range_with_room_is_accepted(prefixlen: int, index: int) -> None:
    size = 2 ** (32 - prefixlen)
    count = RANGE.num_addresses // size
    subnet = IPv4Network((int(RANGE.network_address) + (index % count) * size, prefixlen))
    assert parse_pool(str(subnet), "", RANGE, DEFAULT) == subnet
    assert parse_pool_id(str(subnet), RANGE) == subnet


@given(st.text(max_size=40), st.text(max_size=20))
def test_whatever_the_pool_text_the_answer_is_a_subnet_of_the_range_or_a_plugin_error(
    pool: str, sub_pool: str
) -> None:
    try:
        subnet = parse_pool(pool, sub_pool, RANGE, DEFAULT)
    except PluginError:
        return
    assert subnet.subnet_of(RANGE) and subnet.num_addresses >= 4


@pytest.mark.parametrize("pool_id", ["", "0.0.0.0/0", "192.168.0.0/24", "10.0.0.0/8", "pool-1"])
def test_pool_ids_not_made_by_the_driver_are_unknown(pool_id: str) -> None:
    with pytest.raises(PluginError, match="unknown pool"):
        parse_pool_id(pool_id, RANGE)


@pytest.mark.parametrize("text", ["10.32.0.5", "10.32.0.5/12", "10.32.0.5/32"])
def test_addresses_come_with_or_without_a_length(text: str) -> None:
    assert parse_address(text) == IPv4Address("10.32.0.5")


@pytest.mark.parametrize("text", ["", "10.32.0", "fd00::x", "10.32.0.5/40", "fd00::1/129", "x"])
def test_bad_addresses_are_refused(text: str) -> None:
    with pytest.raises(PluginError, match=f"^bad address '{re.escape(text)}': "):
        parse_address(text)


# --- handlers ---------------------------------------------------------------------------------


def test_capabilities_and_address_spaces() -> None:
    d = driver()
    assert d.get_capabilities({}) == {"RequiresMACAddress": False, "RequiresRequestReplay": False}
    assert d.get_default_address_spaces({}) == {
        "LocalDefaultAddressSpace": "meshnet",
        "GlobalDefaultAddressSpace": "meshnet-global",
    }
    assert set(d.handlers()) == {
        "/IpamDriver.GetCapabilities",
        "/IpamDriver.GetDefaultAddressSpaces",
        "/IpamDriver.RequestPool",
        "/IpamDriver.ReleasePool",
        "/IpamDriver.RequestAddress",
        "/IpamDriver.ReleaseAddress",
    }


def test_a_pool_without_a_subnet_is_answered_as_0_0_0_0_0_with_the_default_subnet_as_id() -> None:
    # libnetwork checks a local network's pool against the host's routes and asks again while
    # it overlaps one (forever, as the bridge's route to the range always does), except for
    # 0.0.0.0/0; the addresses still come from the subnet the pool id names.
    answer = call(driver().request_pool, {"AddressSpace": "meshnet", "Pool": "", "Options": {}})
    assert answer == {"PoolID": str(DEFAULT), "Pool": "0.0.0.0/0", "Data": {}}


def test_a_pool_with_a_subnet_is_answered_as_that_subnet() -> None:
    answer = call(driver().request_pool, {"Pool": "10.33.0.0/16", "V6": False})
    assert answer == {"PoolID": "10.33.0.0/16", "Pool": "10.33.0.0/16", "Data": {}}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"V6": True, "Pool": "10.33.0.0/16"}, "not an IPv6 subnet"),
        (
            {"V6": True, "Pool": "fd00::/64"},
            "outside meshnet's allocation range fd12:3456:789a::/48",
        ),
        ({"V6": True, "Pool": "fd12:3456:789a::/127"}, "too small"),
        ({"Pool": 5}, "Pool must be a string"),
        ({"Pool": "10.33.0.0/16", "SubPool": "10.33.1.0/24"}, "--ip-range"),
        ({"Pool": "172.16.0.0/16"}, "outside"),
    ],
)
def test_pools_that_are_refused(body: dict[str, Any], message: str) -> None:
    with pytest.raises(PluginError, match=re.escape(message)):
        call(driver().request_pool, body)


def test_releasing_a_pool_frees_nothing_and_an_unknown_one_is_refused() -> None:
    ipam = FakeIpam()
    d = driver(ipam)
    call(d.request_address, {"PoolID": str(DEFAULT)})
    assert call(d.release_pool, {"PoolID": str(DEFAULT)}) == {}
    assert len(ipam.held) == 1  # another network may share the pool
    with pytest.raises(PluginError, match="unknown pool"):
        call(d.release_pool, {"PoolID": "172.16.0.0/16"})


def test_gateway_and_endpoint_addresses_have_keys_of_their_own() -> None:
    ipam = FakeIpam()
    d = driver(ipam)
    pool = call(d.request_pool, {})["PoolID"]
    gateway = call(
        d.request_address,
        {"PoolID": pool, "Options": {"RequestAddressType": GATEWAY_REQUEST}},
    )
    endpoint = call(d.request_address, {"PoolID": pool, "Address": "", "Options": {}})
    assert gateway == {"Address": "10.32.0.1/14", "Data": {}}
    assert endpoint == {"Address": "10.32.0.2/14", "Data": {}}
    assert ipam.holders(OWNER_PREFIX) == {
        f"{OWNER_PREFIX}gw-t1": ["10.32.0.1"],
        f"{OWNER_PREFIX}t2": ["10.32.0.2"],
    }


def test_an_asked_for_address_is_claimed_with_the_pools_length() -> None:
    ipam = FakeIpam()
    d = driver(ipam)
    answer = call(d.request_address, {"PoolID": "10.33.0.0/16", "Address": "10.33.7.9"})
    assert answer == {"Address": "10.33.7.9/16", "Data": {}}
    assert ipam.holders() == {f"{OWNER_PREFIX}t1": ["10.33.7.9"]}


def test_an_address_outside_the_pool_or_held_by_another_is_refused() -> None:
    ipam = FakeIpam()
    d = driver(ipam)
    with pytest.raises(PluginError, match=re.escape("not in the network's subnet 10.33.0.0/16")):
        call(d.request_address, {"PoolID": "10.33.0.0/16", "Address": "10.34.0.1"})
    ipam.held[IPv4Address("10.33.0.9")] = "docker:someone"
    with pytest.raises(UserError, match="in use"):
        call(d.request_address, {"PoolID": "10.33.0.0/16", "Address": "10.33.0.9"})
    with pytest.raises(PluginError, match="unknown pool"):
        call(d.request_address, {"PoolID": "10.0.0.0/8"})
    assert ipam.holders(OWNER_PREFIX) == {}


def test_release_finds_the_address_by_itself_and_frees_only_it() -> None:
    ipam = FakeIpam()
    d = driver(ipam)
    first = call(d.request_address, {"PoolID": str(DEFAULT)})["Address"]
    second = call(d.request_address, {"PoolID": str(DEFAULT)})["Address"]
    ipam.held[IPv4Address("10.32.0.200")] = "docker:attached-by-meshnet"
    assert call(d.release_address, {"PoolID": str(DEFAULT), "Address": first}) == {}
    assert ipam.holders() == {
        f"{OWNER_PREFIX}t2": [second.split("/")[0]],
        "docker:attached-by-meshnet": ["10.32.0.200"],
    }
    # Docker sends the bare address too; and a second release of it changes nothing.
    bare = second.split("/")[0]
    assert call(d.release_address, {"PoolID": str(DEFAULT), "Address": bare}) == {}
    assert call(d.release_address, {"PoolID": str(DEFAULT), "Address": bare}) == {}
    # An address the plugin never gave is not its to release.
    assert call(d.release_address, {"PoolID": str(DEFAULT), "Address": "10.32.0.200"}) == {}
    assert ipam.holders() == {"docker:attached-by-meshnet": ["10.32.0.200"]}


def test_a_networks_whole_life_leaves_nothing_held() -> None:
    """As dockerd calls it: create, two containers come and go, delete."""
    ipam = FakeIpam()
    d = driver(ipam)
    pool = call(d.request_pool, {"AddressSpace": "meshnet"})
    gateway = call(
        d.request_address,
        {"PoolID": pool["PoolID"], "Options": {"RequestAddressType": GATEWAY_REQUEST}},
    )
    a = call(d.request_address, {"PoolID": pool["PoolID"]})
    b = call(d.request_address, {"PoolID": pool["PoolID"]})
    assert len({gateway["Address"], a["Address"], b["Address"]}) == 3
    for address in (a, b, gateway):
        call(d.release_address, {"PoolID": pool["PoolID"], "Address": address["Address"]})
    call(d.release_pool, {"PoolID": pool["PoolID"]})
    assert ipam.held == {}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=7)), max_size=30))
def test_requests_and_releases_in_any_order_hold_exactly_whats_outstanding(
    steps: list[tuple[bool, int]],
) -> None:
    ipam = FakeIpam(default=IPv4Network("10.32.0.0/28"))
    d = driver(ipam)
    outstanding: list[str] = []
    for request, pick in steps:
        if request and len(outstanding) < 14:
            address = call(d.request_address, {"PoolID": "10.32.0.0/28"})["Address"]
            assert address not in outstanding
            outstanding.append(address)
        elif outstanding:
            address = outstanding.pop(pick % len(outstanding))
            call(d.release_address, {"PoolID": "10.32.0.0/28", "Address": address})
    held = ipam.holders(OWNER_PREFIX)
    assert all(len(addresses) == 1 for addresses in held.values())  # one key per address
    assert sorted(a for addresses in held.values() for a in addresses) == sorted(
        a.split("/")[0] for a in outstanding
    )


# --- IPv6 (docker network create --ipv6) ------------------------------------------------------


def test_an_ipv6_pool_without_a_subnet_is_the_ipv6_rings_default_subnet_shown_as_itself() -> None:
    # libnetwork's route-overlap check reads IPv4 routes only: no 0.0.0.0/0 detour needed.
    ipam = FakeIpam()
    answer = call(driver(ipam).request_pool, {"AddressSpace": "meshnet", "V6": True})
    assert answer == {"PoolID": str(DEFAULT6), "Pool": str(DEFAULT6), "Data": {}}
    assert ipam.ring6_asked == 1


def test_an_ipv6_pool_with_a_subnet_inside_the_ipv6_range_is_that_subnet() -> None:
    answer = call(driver().request_pool, {"Pool": "fd12:3456:789a:7::/64", "V6": True})
    assert answer["PoolID"] == answer["Pool"] == "fd12:3456:789a:7::/64"


def test_a_router_without_ipv6_refuses_ipv6_pools_in_one_line_and_knows_no_ipv6_pool() -> None:
    ipam = FakeIpam(ipv6=False)
    d = driver(ipam)
    with pytest.raises(PluginError, match=f"^{re.escape(NO_IPV6)}$"):
        call(d.request_pool, {"V6": True})
    for handler in (d.request_address, d.release_address, d.release_pool):
        with pytest.raises(PluginError, match="unknown pool"):
            call(handler, {"PoolID": str(DEFAULT6), "Address": "fd12:3456:789a::5"})
    # IPv4 is as before.
    assert call(d.request_pool, {})["PoolID"] == str(DEFAULT)


def test_an_ipv6_networks_whole_life_holds_one_key_per_address_and_leaves_nothing() -> None:
    """As dockerd calls it for `--ipv6`: both pools, both gateways, an endpoint of each family
    (one asked for by address, as `--ip6` does), then everything given back."""
    ipam = FakeIpam()
    d = driver(ipam)
    pool4 = call(d.request_pool, {"AddressSpace": "meshnet"})["PoolID"]
    pool6 = call(d.request_pool, {"AddressSpace": "meshnet", "V6": True})["PoolID"]
    gw = {"RequestAddressType": GATEWAY_REQUEST}
    gateway4 = call(d.request_address, {"PoolID": pool4, "Options": gw})["Address"]
    gateway6 = call(d.request_address, {"PoolID": pool6, "Options": gw})["Address"]
    a4 = call(d.request_address, {"PoolID": pool4})["Address"]
    a6 = call(d.request_address, {"PoolID": pool6})["Address"]
    b6 = call(d.request_address, {"PoolID": pool6, "Address": "fd12:3456:789a:0:0:0:0:99"})
    assert (gateway6, a6, b6["Address"]) == (
        "fd12:3456:789a::1/64",
        "fd12:3456:789a::2/64",
        "fd12:3456:789a::99/64",
    )
    assert ipam.holders(OWNER_PREFIX) == {
        f"{OWNER_PREFIX}gw-t1": ["10.32.0.1"],
        f"{OWNER_PREFIX}t3": ["10.32.0.2"],
        f"{OWNER_PREFIX}gw-t2": ["fd12:3456:789a::1"],
        f"{OWNER_PREFIX}t4": ["fd12:3456:789a::2"],
        f"{OWNER_PREFIX}t5": ["fd12:3456:789a::99"],
    }
    # Docker gives IPv6 addresses back spelled as it likes.
    call(d.release_address, {"PoolID": pool6, "Address": "fd12:3456:789a:0::99"})
    assert ip_address("fd12:3456:789a::99") not in ipam.held
    for pool, address in [(pool4, a4), (pool6, a6), (pool4, gateway4), (pool6, gateway6)]:
        call(d.release_address, {"PoolID": pool, "Address": address})
    call(d.release_pool, {"PoolID": pool6})
    call(d.release_pool, {"PoolID": pool4})
    assert ipam.held == {}


def test_an_ipv6_address_outside_its_pool_or_an_ipv4_one_in_an_ipv6_pool_is_refused() -> None:
    ipam = FakeIpam()
    d = driver(ipam)
    pool6 = "fd12:3456:789a:1::/64"
    with pytest.raises(PluginError, match="not in the network's subnet"):
        call(d.request_address, {"PoolID": pool6, "Address": "fd12:3456:789a:2::1"})
    with pytest.raises(PluginError, match="not in the network's subnet"):
        call(d.request_address, {"PoolID": pool6, "Address": "10.32.0.9"})
    with pytest.raises(PluginError, match="unknown pool"):
        call(d.request_address, {"PoolID": "fd00:1::/64"})  # outside the IPv6 range
    assert ipam.holders(OWNER_PREFIX) == {}
    ipam.held[IPv6Address("fd12:3456:789a:1::7")] = "docker:someone"
    with pytest.raises(UserError, match="in use"):
        call(d.request_address, {"PoolID": pool6, "Address": "fd12:3456:789a:1::7"})
