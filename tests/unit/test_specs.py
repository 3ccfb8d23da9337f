"""The address grammar shared by attach, run, expose and hide."""

from __future__ import annotations

import re
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnet.errors import UserError
from meshnet.node.specs import (
    DEFAULT_SUBNET,
    DEFAULT_SUBNET6,
    AddressSpec,
    ExposureSpec,
    SpecKind,
    default_exposures,
    default_specs,
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
    assert parse_spec("fd00::1/64") == AddressSpec(
        SpecKind.CLAIM, address=IPv6Interface("fd00::1/64")
    )
    assert parse_spec("ip:10.32.1.1").exact and not parse_spec("10.32.1.1/24").exact
    for bad in ("10.32.1.1", "net:10.32.1.1/24", "net:nonsense", "ip:banana", "banana/7"):
        with pytest.raises(UserError, match=f"^bad address '{bad}': "):
            parse_spec(bad)


def test_ipv6_specs() -> None:
    assert parse_spec("net:default6") == DEFAULT_SUBNET6 and DEFAULT_SUBNET6.family == 6
    assert DEFAULT_SUBNET.family == 4
    assert parse_spec("net:fd00:1::/64") == AddressSpec(subnet=IPv6Network("fd00:1::/64"))
    assert parse_spec("net:fd00:1::/64").family == 6
    assert parse_spec("ip:fd00::5").address == IPv6Interface("fd00::5/128")
    assert parse_spec("ip:fd00::5/64").family == 6 and parse_spec("ip:fd00::5").exact
    assert default_specs(True) == [DEFAULT_SUBNET, DEFAULT_SUBNET6]
    assert default_specs(False) == [DEFAULT_SUBNET]
    for bad in ("net:fd00::1/64", "ip:fd00::zz", "fd00::1", "net:fd00::/129"):
        with pytest.raises(UserError, match=f"^bad address '{re.escape(bad)}': "):
            parse_spec(bad)


def test_a_spec_is_told_from_a_container() -> None:
    for spec in ("net:default", "net:10.32.1.0/24", "ip:10.32.1.1", "10.32.1.1/24", "fd00::1/64"):
        assert looks_like_spec(spec)
    for container in ("c1", "4242", "/proc/4242/ns/net", "default", "10.32.1.1", "web_1"):
        assert not looks_like_spec(container)


def test_exposure_specs_are_subnets_or_host_addresses_with_their_prefix() -> None:
    assert parse_exposure("net:default") == ExposureSpec()
    assert parse_exposure("net:10.32.1.0/24") == ExposureSpec(subnet=SUBNET)
    assert parse_exposure("10.32.1.1/24") == ExposureSpec(address=HOST)
    assert parse_exposure("ip:10.32.1.1/24") == ExposureSpec(address=HOST)
    for bad in ("10.32.1.1", "ip:10.32.1.1", "net:10.32.1.1/24", "net:nonsense", "net:fd00::1/64",
                "fd00::1", "ip:fd00::1", "fd00::/64", "fd00::1/127", "fd00::1/128",
                "10.32.1.0/24", "10.32.1.255/24", "10.32.1.1/32", "banana/7"):  # fmt: skip
        with pytest.raises(UserError) as e:
            parse_exposure(bad)
        assert "\n" not in str(e.value)


def test_ipv6_exposure_specs() -> None:
    six = IPv6Interface("fd00:1::1/64")
    assert parse_exposure("fd00:1::1/64") == ExposureSpec(address=six)
    assert parse_exposure("ip:fd00:1::1/64") == ExposureSpec(address=six)
    assert parse_exposure("fd00:1::1/64").family == 6
    assert parse_exposure("net:fd00:1::/64") == ExposureSpec(subnet=IPv6Network("fd00:1::/64"))
    # The default IPv6 subnet is told from the default IPv4 one only by its family.
    assert parse_exposure("net:default6") == ExposureSpec(version=6)
    assert parse_exposure("net:default6") != parse_exposure("net:default")
    assert parse_exposure("net:default6").family == 6 and parse_exposure("net:default").family == 4
    # Nothing given: both families with the IPv6 ring on (as attach), else IPv4 alone.
    assert default_exposures(True) == [ExposureSpec(), ExposureSpec(version=6)]
    assert default_exposures(False) == [ExposureSpec()]
    with pytest.raises(UserError, match="fd00:1::1/64"):
        parse_exposure("ip:fd00:1::1")  # the prefix length is the subnet's: required


@given(st.text(max_size=40))
def test_any_text_parses_or_is_one_readable_line(text: str) -> None:
    for parse in (parse_spec, parse_exposure):
        try:
            parse(text)
        except UserError as e:
            assert str(e)
