"""The address grammar shared by attach, run, expose and hide."""

from __future__ import annotations

from ipaddress import IPv4Interface, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnet.errors import UserError
from meshnet.node.specs import (
    DEFAULT_SUBNET,
    AddressSpec,
    SpecKind,
    looks_like_spec,
    parse_exposure,
    parse_spec,
)

SUBNET = IPv4Network("10.32.1.0/24")
HOST = IPv4Interface("10.32.1.1/24")


def test_attach_specs() -> None:
    assert parse_spec("net:default") == DEFAULT_SUBNET
    assert parse_spec(" net:10.32.1.0/24 ") == AddressSpec(subnet=SUBNET)
    assert parse_spec("10.32.1.1/24") == AddressSpec(SpecKind.CLAIM, address=HOST)
    assert parse_spec("ip:10.32.1.1/24") == AddressSpec(SpecKind.CLAIM, address=HOST)
    assert parse_spec("ip:10.32.1.1").address == IPv4Interface("10.32.1.1/32")
    assert parse_spec("fd00::1/64").kind is SpecKind.STATIC
    assert parse_spec("ip:10.32.1.1").exact and not parse_spec("10.32.1.1/24").exact
    for bad in ("10.32.1.1", "net:10.32.1.1/24", "net:nonsense", "ip:banana", "banana/7"):
        with pytest.raises(UserError, match=f"^bad address '{bad}': "):
            parse_spec(bad)
    with pytest.raises(UserError, match="IPv6 is not supported here yet"):
        parse_spec("net:fd00::/64")


def test_a_spec_is_told_from_a_container() -> None:
    for spec in ("net:default", "net:10.32.1.0/24", "ip:10.32.1.1", "10.32.1.1/24", "fd00::1/64"):
        assert looks_like_spec(spec)
    for container in ("c1", "4242", "/proc/4242/ns/net", "default", "10.32.1.1", "web_1"):
        assert not looks_like_spec(container)


def test_exposure_specs_are_subnets_or_ipv4_host_addresses_with_their_prefix() -> None:
    assert parse_exposure("net:default") == DEFAULT_SUBNET
    assert parse_exposure("net:10.32.1.0/24") == AddressSpec(subnet=SUBNET)
    assert parse_exposure("10.32.1.1/24") == AddressSpec(SpecKind.CLAIM, address=HOST)
    assert parse_exposure("ip:10.32.1.1/24") == AddressSpec(SpecKind.CLAIM, address=HOST)
    for bad in ("10.32.1.1", "ip:10.32.1.1", "net:10.32.1.1/24", "net:nonsense", "fd00::1/64",
                "10.32.1.0/24", "10.32.1.255/24", "10.32.1.1/32", "banana/7"):  # fmt: skip
        with pytest.raises(UserError) as e:
            parse_exposure(bad)
        assert "\n" not in str(e.value)


@given(st.text(max_size=40))
def test_any_text_parses_or_is_one_readable_line(text: str) -> None:
    for parse in (parse_spec, parse_exposure):
        try:
            parse(text)
        except UserError as e:
            assert str(e)
