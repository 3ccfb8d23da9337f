"""The DNS shell's pure rules: names, upstreams, resolv.conf, settings, the nftables script."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from meshnet.dns import firewall
from meshnet.dns.settings import (
    DnsSettings,
    check_listen_address,
    parse_resolv_conf,
    parse_upstream,
    qualify,
    render_resolv_conf,
)
from meshnet.errors import UserError


@pytest.mark.parametrize(
    ("name", "fqdn"),
    [
        ("web", "web.meshnet.local."),
        ("Web", "web.meshnet.local."),
        ("web.meshnet.local", "web.meshnet.local."),
        ("web.meshnet.local.", "web.meshnet.local."),
        ("a.b", "a.b.meshnet.local."),
        ("mn-lab-h1-c1", "mn-lab-h1-c1.meshnet.local."),
        ("host.example.", "host.example."),
        ("my_container", "my_container.meshnet.local."),
    ],
)
def test_qualify(name: str, fqdn: str) -> None:
    assert qualify(name, "meshnet.local.") == fqdn


@pytest.mark.parametrize("bad", ["", " ", "a..b", "-x", "x" * 64, "a b", "caf\u00e9"])
def test_qualify_rejects_bad_names(bad: str) -> None:
    with pytest.raises(UserError):
        qualify(bad, "meshnet.local.")


def test_qualify_under_another_domain() -> None:
    assert qualify("db", "Corp.Internal") == "db.corp.internal."
    assert qualify("db.corp.internal", "corp.internal.") == "db.corp.internal."


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("10.0.0.2", ("10.0.0.2", 53)),
        ("10.0.0.2:5353", ("10.0.0.2", 5353)),
        ("fd00::1", ("fd00::1", 53)),
        ("[fd00::1]:5353", ("fd00::1", 5353)),
        (" 192.0.2.1 ", ("192.0.2.1", 53)),
    ],
)
def test_parse_upstream(text: str, parsed: tuple[str, int]) -> None:
    assert parse_upstream(text) == parsed


@pytest.mark.parametrize(
    "bad", ["", "dns.google", "10.0.0.2:0", "10.0.0.2:99999", "10.0.0.2:x", "[fd00::1", "[::1]x"]
)
def test_parse_upstream_rejects(bad: str) -> None:
    with pytest.raises(UserError):
        parse_upstream(bad)


def test_parse_resolv_conf() -> None:
    text = """
    # comment
    domain example.com
    search example.com
    nameserver 10.0.0.2
    nameserver   fe80::1%eth0
    nameserver not-an-address
    nameserver
    nameserver 10.0.0.2
    options ndots:2
    nameserver 10.0.0.3
    nameserver 10.0.0.4
    """
    assert parse_resolv_conf(text) == ["10.0.0.2", "fe80::1%eth0", "10.0.0.3"]
    assert parse_resolv_conf("") == []


def test_render_resolv_conf_round_trips() -> None:
    text = render_resolv_conf("10.32.0.1", "meshnet.local.")
    assert parse_resolv_conf(text) == ["10.32.0.1"]
    assert "search meshnet.local\n" in text


def test_settings_are_checked() -> None:
    assert DnsSettings(domain="Example.Org").domain == "example.org."
    for bad in (
        {"ttl": -1},
        {"upstreams": ("nope",)},
        {"address": "10.32.0.1"},
        {"address": "10.32.0.1/32"},
        {"port": 0},
        {"upstream_timeout": 0.0},
        {"domain": "bad domain"},
    ):
        with pytest.raises(UserError):
            DnsSettings(**bad)  # type: ignore[arg-type]
    assert str(check_listen_address("10.32.1.254/12").network) == "10.32.0.0/12"


def test_firewall_ruleset_keeps_the_address_for_dns_from_the_bridge() -> None:
    script = firewall.ruleset("meshnet", "10.32.0.1", 53)
    lines = [line.strip() for line in script.splitlines()]
    # Replaces any previous table atomically (one nft -f transaction).
    assert lines[:2] == ["table inet meshnet_dns {}", "delete table inet meshnet_dns"]
    rules = lines[lines.index("type filter hook input priority filter - 10; policy accept;") + 1 :]
    assert rules[:4] == [
        'iifname "meshnet" ip daddr 10.32.0.1 udp dport 53 accept',
        'iifname "meshnet" ip daddr 10.32.0.1 tcp dport 53 accept',
        'iifname "meshnet" counter drop',
        "ip daddr 10.32.0.1 counter drop",
    ]
    six = firewall.ruleset("br0", "fd00::53", 5353, table="t")
    assert 'iifname "br0" ip6 daddr fd00::53 udp dport 5353 accept' in six
    assert firewall.removal() == "table inet meshnet_dns {}\ndelete table inet meshnet_dns\n"


def test_firewall_ruleset_with_an_ipv6_address_beside_lets_neighbor_discovery_in() -> None:
    script = firewall.ruleset("meshnet", "10.32.0.1", 53, also=["fd12::2"])
    lines = [line.strip() for line in script.splitlines()]
    rules = lines[lines.index("type filter hook input priority filter - 10; policy accept;") + 1 :]
    assert rules[:8] == [
        'iifname "meshnet" ip daddr 10.32.0.1 udp dport 53 accept',
        'iifname "meshnet" ip daddr 10.32.0.1 tcp dport 53 accept',
        'iifname "meshnet" ip6 daddr fd12::2 udp dport 53 accept',
        'iifname "meshnet" ip6 daddr fd12::2 tcp dport 53 accept',
        'iifname "meshnet" icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept',
        'iifname "meshnet" counter drop',
        "ip daddr 10.32.0.1 counter drop",
        "ip6 daddr fd12::2 counter drop",
    ]
    assert "icmpv6" not in firewall.ruleset("meshnet", "10.32.0.1")


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft")
def test_firewall_ruleset_is_valid_nft() -> None:
    for script in (
        firewall.ruleset("meshnet", "10.32.0.1"),
        firewall.ruleset("m", "fd00::1"),
        firewall.ruleset("meshnet", "10.32.0.1", also=["fd00::1"]),
    ):
        # -c: check only, nothing is applied.
        result = subprocess.run(
            ["nft", "-c", "-f", "-"], input=script, capture_output=True, text=True, check=False
        )
        if "Operation not permitted" in result.stderr:
            pytest.skip("nft -c needs CAP_NET_ADMIN")
        assert result.returncode == 0, result.stderr
