"""Weave's netcheck: a range that overlaps a route the host has is refused, naming the route."""

from __future__ import annotations

from ipaddress import IPv4Network

from meshnet.ipam.netcheck import HostRoute, overlap_message, overlapping_route

RANGE = IPv4Network("10.32.0.0/12")


def route(cidr: str, device: str | None = "eth0", gateway: str | None = None) -> HostRoute:
    return HostRoute(IPv4Network(cidr), device, gateway)


def test_no_overlap_no_route() -> None:
    routes = [route("192.168.1.0/24"), route("10.48.0.0/16"), route("10.31.255.0/24")]
    assert overlapping_route(RANGE, routes, own_devices={"meshnet"}) is None


def test_a_wider_route_and_a_narrower_one_both_overlap() -> None:
    assert overlapping_route(RANGE, [route("10.0.0.0/8")], own_devices=()) == route("10.0.0.0/8")
    assert overlapping_route(RANGE, [route("10.33.4.0/24")], own_devices=()) == route(
        "10.33.4.0/24"
    )


def test_the_most_specific_clash_is_named() -> None:
    routes = [route("10.0.0.0/8", "tun0"), route("10.40.1.0/24", "eth1", "10.40.1.1")]
    assert overlapping_route(RANGE, routes, own_devices=()) == routes[1]


def test_our_own_bridge_and_the_default_route_do_not_count() -> None:
    """A restart finds the overlay's routes on the bridge: still a fine range."""
    routes = [route("10.32.0.0/12", "meshnet"), route("0.0.0.0/0", "eth0", "192.0.2.1")]
    assert overlapping_route(RANGE, routes, own_devices={"meshnet"}) is None


def test_the_message_names_the_route_and_the_way_out() -> None:
    message = overlap_message(
        "--ipalloc-range-overlap-ok", RANGE, route("10.0.0.0/8", "eth1", "192.0.2.1")
    )
    assert message == (
        "--ipalloc-range 10.32.0.0/12 overlaps the host's route 10.0.0.0/8 via 192.0.2.1 dev "
        "eth1: choose another range, or --ipalloc-range-overlap-ok if that is intended"
    )
    assert "\n" not in message
