"""The ``meshnet`` IPAM driver's handlers against an in-memory IPAM: what Docker asks, in the
order it asks it, with no daemon and no Docker."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.errors import UserError
from meshnet.integrations.docker.ipamdriver import (
    GATEWAY_REQUEST,
    OWNER_PREFIX,
    IpamDriver,
    PluginError,
    parse_address,
    parse_pool,
    parse_pool_id,
)

RANGE = IPv4Network("10.32.0.0/12")
DEFAULT = IPv4Network("10.32.0.0/14")  # a part of the range, so it differs from the range


@dataclass(frozen=True)
class Settings:
    range: IPv4Network
    subnet: IPv4Network


class FakeIpam:
    """meshnet's IPAM as the driver sees it: addresses held by owner keys, first free first."""

    def __init__(self, allocation_range: IPv4Network = RANGE, default: IPv4Network = DEFAULT):
        self.config = Settings(allocation_range, default)
        self.held: dict[IPv4Address, str] = {}

    async def allocate(self, owner: str, subnet: IPv4Network | None = None) -> IPv4Interface:
        where = subnet or self.config.subnet
        for ip in where.hosts():
            if ip not in self.held:
                self.held[ip] = owner
                return IPv4Interface(f"{ip}/{where.prefixlen}")
        raise UserError(f"{where} is full")

    async def claim(self, owner: str, address: IPv4Interface) -> IPv4Interface:
        holder = self.held.get(address.ip)
        if holder is not None and holder != owner:
            raise UserError(f"{address.ip} is in use")
        self.held[address.ip] = owner
        return address

    async def release(self, owner: str, only: list[IPv4Address] | None = None) -> list[IPv4Address]:
        gone = sorted(
            ip for ip, o in self.held.items() if o == owner and (only is None or ip in only)
        )
        for ip in gone:
            del self.held[ip]
        return gone

    def holders(self, prefix: str = "") -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for ip, owner in sorted(self.held.items()):
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
        ("fd00::/64", "", "bad address 'fd00::/64': IPv6 is not supported here yet"),
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


@pytest.mark.parametrize("text", ["", "10.32.0", "fd00::1", "10.32.0.5/40", "x"])
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
    answer = driver().request_pool({"AddressSpace": "meshnet", "Pool": "", "Options": {}})
    assert answer == {"PoolID": str(DEFAULT), "Pool": "0.0.0.0/0", "Data": {}}


def test_a_pool_with_a_subnet_is_answered_as_that_subnet() -> None:
    answer = driver().request_pool({"Pool": "10.33.0.0/16", "V6": False})
    assert answer == {"PoolID": "10.33.0.0/16", "Pool": "10.33.0.0/16", "Data": {}}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"V6": True}, "IPv4 addresses only"),
        ({"Pool": 5}, "Pool must be a string"),
        ({"Pool": "10.33.0.0/16", "SubPool": "10.33.1.0/24"}, "--ip-range"),
        ({"Pool": "172.16.0.0/16"}, "outside"),
    ],
)
def test_pools_that_are_refused(body: dict[str, Any], message: str) -> None:
    with pytest.raises(PluginError, match=re.escape(message)):
        driver().request_pool(body)


def test_releasing_a_pool_frees_nothing_and_an_unknown_one_is_refused() -> None:
    ipam = FakeIpam()
    d = driver(ipam)
    call(d.request_address, {"PoolID": str(DEFAULT)})
    assert d.release_pool({"PoolID": str(DEFAULT)}) == {}
    assert len(ipam.held) == 1  # another network may share the pool
    with pytest.raises(PluginError, match="unknown pool"):
        d.release_pool({"PoolID": "172.16.0.0/16"})


def test_gateway_and_endpoint_addresses_have_keys_of_their_own() -> None:
    ipam = FakeIpam()
    d = driver(ipam)
    pool = d.request_pool({})["PoolID"]
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
    pool = d.request_pool({"AddressSpace": "meshnet"})
    gateway = call(
        d.request_address,
        {"PoolID": pool["PoolID"], "Options": {"RequestAddressType": GATEWAY_REQUEST}},
    )
    a = call(d.request_address, {"PoolID": pool["PoolID"]})
    b = call(d.request_address, {"PoolID": pool["PoolID"]})
    assert len({gateway["Address"], a["Address"], b["Address"]}) == 3
    for address in (a, b, gateway):
        call(d.release_address, {"PoolID": pool["PoolID"], "Address": address["Address"]})
    d.release_pool({"PoolID": pool["PoolID"]})
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
