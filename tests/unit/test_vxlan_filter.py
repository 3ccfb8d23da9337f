"""fastdp's VXLAN source filter as scripts (no nft, no root): the table, the set diffs, the
counter, and how status and metrics show it."""

from __future__ import annotations

import ipaddress
import json
import re

from hypothesis import given
from hypothesis import strategies as st

from meshnet.api.metrics import dataplane_metrics
from meshnet.dataplane.kernel import vxlan_filter as vf

_ELEMENT = re.compile(r"^(add|delete) element inet meshnet-fastdp (peers6?) \{ (.*) \}$")


def apply_changes(sets: dict[str, set[str]], script: str) -> None:
    """What nft would do with a `changes` script to the two sets (deleting a missing element
    or adding a present one fails in nft: so does it here)."""
    for line in script.splitlines():
        match = _ELEMENT.match(line)
        assert match, line
        verb, name, items = match.groups()
        for item in items.split(", "):
            family = 6 if ":" in item else 4
            assert name == ("peers6" if family == 6 else "peers"), line
            if verb == "add":
                assert item not in sets[name], line
                sets[name].add(item)
            else:
                sets[name].remove(item)


def test_the_table_drops_vxlan_from_anyone_not_in_the_sets_and_counts_it() -> None:
    script = vf.table(6784, ["172.31.0.2", "fd00::2", "172.31.0.10", "not an address"])
    assert script.startswith("table inet meshnet-fastdp {}\ndelete table inet meshnet-fastdp\n")
    assert "\tcounter foreign {}\n" in script
    assert "set peers { type ipv4_addr; elements = { 172.31.0.2, 172.31.0.10 }; }" in script
    assert "set peers6 { type ipv6_addr; elements = { fd00::2 }; }" in script
    assert 'udp dport 6784 ip saddr != @peers counter name "foreign" drop' in script
    assert 'udp dport 6784 ip6 saddr != @peers6 counter name "foreign" drop' in script
    assert "hook input" in script and "policy accept" in script
    assert "elements" not in vf.table(6784)  # empty sets: everything to 6784 is dropped


def test_sources_keep_valid_addresses_only_normalized() -> None:
    assert vf.sources(["172.31.0.2", "FD00::0002", "", "1.2.3.4; flush ruleset", "::ffff"]) == {
        "172.31.0.2",
        "fd00::2",
        "::ffff",
    }


def test_no_change_is_no_script_and_a_change_touches_only_what_differs() -> None:
    have = frozenset({"10.0.0.1", "10.0.0.2"})
    assert vf.changes(have, have) == ""
    script = vf.changes(have, frozenset({"10.0.0.2", "10.0.0.3", "fd00::1"}))
    assert script.splitlines() == [
        "delete element inet meshnet-fastdp peers { 10.0.0.1 }",
        "add element inet meshnet-fastdp peers { 10.0.0.3 }",
        "add element inet meshnet-fastdp peers6 { fd00::1 }",
    ]


_addresses = st.frozensets(
    st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(str),
    ),
    max_size=8,
)


@given(_addresses, _addresses)
def test_changes_turn_any_installed_sets_into_the_wanted_ones(
    have: frozenset[str], want: frozenset[str]
) -> None:
    have, want = vf.sources(have), vf.sources(want)
    sets: dict[str, set[str]] = {
        "peers": {a for a in have if ipaddress.ip_address(a).version == 4},
        "peers6": {a for a in have if ipaddress.ip_address(a).version == 6},
    }
    apply_changes(sets, vf.changes(have, want))
    assert sets["peers"] | sets["peers6"] == want


def test_removal_works_whether_or_not_the_table_exists() -> None:
    assert vf.removal() == "table inet meshnet-fastdp {}\ndelete table inet meshnet-fastdp\n"


def test_the_drop_counter_is_read_from_nft_json() -> None:
    listing = {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"counter": {"table": "meshnet", "name": "foreign", "packets": 7}},
            {"counter": {"table": "meshnet-fastdp", "name": "foreign", "packets": 42}},
        ]
    }
    assert vf.parse_dropped(json.dumps(listing)) == 42
    assert vf.parse_dropped(json.dumps({"nftables": listing["nftables"][:2]})) is None
    assert vf.parse_dropped("not json") is None
    assert vf.parse_dropped("[1, 2]") is None


def test_metrics_show_the_drops_and_zero_without_a_filter() -> None:
    base = {"paths": {}, "forwarding": {"dropped": {}}, "macs": []}

    def value(status: dict[str, object]) -> float:
        for family in dataplane_metrics(status):
            for s in family.samples:
                if s.name == "meshnet_fastdp_foreign_dropped_total":
                    return float(s.value)
        raise AssertionError("no meshnet_fastdp_foreign_dropped_total")

    assert value({**base, "fastdp": {"filter": {"foreign_dropped": 1500}}}) == 1500
    assert value({**base, "fastdp": {"filter": {"foreign_dropped": None}}}) == 0
    assert value(base) == 0
