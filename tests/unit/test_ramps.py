"""The ramps' pure parts: nftables scripts, address specs, gateways, state, status lines."""

from __future__ import annotations

import ipaddress
import itertools
import shutil
import subprocess
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from meshnet.cli.ramps import ramps_table, status_rows
from meshnet.config import Config
from meshnet.dataplane.fastdp import core as fastdp
from meshnet.dataplane.kernel import nftables
from meshnet.dataplane.kernel.attach import Attachment
from meshnet.dataplane.kernel.nftables import Exposure, Port
from meshnet.dns import firewall
from meshnet.errors import UserError
from meshnet.node import ramps as ramps_module
from meshnet.node.ramps import Ramps
from meshnet.node.ramps_state import (
    Exposed,
    PortRecord,
    RampsState,
    gateways_for,
    needs_route_to,
    owner_id,
    parse_owner_id,
)
from tests.conftest import run_meshnet
from tests.unit.test_cli import assert_one_line_error

RANGE = IPv4Network("10.32.0.0/12")
RANGE6 = IPv6Network("fd00:aa::/48")


def iface(text: str) -> IPv4Interface | ipaddress.IPv6Interface:
    return ipaddress.ip_interface(text)


def port(name: str, *addresses: str) -> Port:
    return Port(name, tuple(iface(a) for a in addresses))


def rules(script: str) -> list[str]:
    return [line.strip() for line in script.splitlines()]


# --- nftables ---------------------------------------------------------------------------------


def test_bridge_table_keys_every_check_on_the_port() -> None:
    ports = [
        port("vethwea", "10.32.1.5/24", "10.32.0.9/12"),
        port("vethweb", "10.32.2.5/24", "fd00::5/64"),
    ]
    script = nftables.bridge_table(ports, [RANGE], [IPv6Network("fd00::/64")], fresh=True)
    lines = rules(script)
    assert lines[:2] == ["table bridge meshnet {}", "delete table bridge meshnet"]
    assert 'set ports { type ifname; elements = { "vethwea", "vethweb" }; }' in lines
    assert 'set ports6 { type ifname; elements = { "vethweb" }; }' in lines
    sources = next(x for x in lines if x.startswith("set sources {"))
    assert '"vethwea" . 10.32.0.9, "vethwea" . 10.32.1.5, "vethweb" . 10.32.2.5' in sources
    # Nested subnets of one port collapse (nft refuses overlapping intervals in a set).
    subnets = next(x for x in lines if x.startswith("set subnets {"))
    assert '"vethwea" . 10.32.0.0/12, "vethweb" . 10.32.2.0/24' in subnets
    assert "flags interval" in subnets
    assert '"vethweb" . fd00::/64' in next(x for x in lines if x.startswith("set subnets6 {"))
    # Anti-spoofing, then the sender's subnets; delivery checks the receiver's subnets.
    assert 'iifname . ip saddr != @sources counter name "spoofed" drop' in lines
    assert "arp saddr ip != 0.0.0.0 iifname . arp saddr ip != @sources" in script
    assert 'ether type { 8021q, 8021ad } counter name "protocol" drop' in lines
    assert 'ether type ip6 iifname != @ports6 counter name "protocol" drop' in lines
    assert "ip saddr @overlay oifname . ip saddr != @subnets" in script
    assert "ip daddr @overlay iifname . ip daddr != @subnets" in script  # to the host
    for hook in ("forward", "input", "output"):
        assert f"type filter hook {hook} priority filter; policy accept;" in lines


def test_each_port_may_send_only_from_its_own_mac() -> None:
    ports = [
        Port("vethwea", (iface("10.32.1.5/24"),), "02:42:0a:20:01:05"),
        Port("vethweb", (iface("10.32.2.5/24"),)),  # MAC unknown: sends nothing at all
    ]
    lines = rules(nftables.bridge_table(ports, [RANGE], fresh=True))
    assert (
        'set macs { type ifname . ether_addr; elements = { "vethwea" . 02:42:0a:20:01:05 }; }'
        in lines
    )
    # Before the bridge learns the source MAC (it does so ahead of the forward hook).
    pre = lines[lines.index("chain prerouting {") :]
    assert pre[1] == "type filter hook prerouting priority filter; policy accept;"
    assert pre[2] == 'iifname @ports iifname . ether saddr != @macs counter name "spoofed" drop'
    with pytest.raises(UserError):
        Port("vethwea", (), "02:42:0a:20:01:05; drop")
    assert "set macs { type ifname . ether_addr; }" in rules(
        nftables.bridge_table([], [RANGE], fresh=False)
    )


def test_no_container_sends_a_frame_that_claims_to_be_a_fastdp_probe() -> None:
    lines = rules(nftables.bridge_table([], [RANGE], fresh=True))
    pre = lines[lines.index("chain prerouting {") :]
    # Its ethertype and magic, right after the Ethernet header; other frames of the ethertype pass.
    frame = fastdp.encode_probe(
        fastdp.Probe(fastdp.ProbeKind.ECHO, 1, 1),
        source="02:00:00:00:00:01",
        destination=fastdp.probe_mac(2),
        size=0,
    )
    assert frame[12:14] == b"\x88\xb5"
    magic = int.from_bytes(frame[14:18], "big")
    assert pre[3] == (
        f'iifname @ports ether type 0x88b5 @ll,112,32 {magic:#x} counter name "spoofed" drop'
    )
    assert magic == 0x4D4E4650


def test_port_records_keep_their_mac_and_older_state_reads_without_one() -> None:
    state = RampsState(
        ports={"vethwea": PortRecord("c1", "ethwe", ("10.32.1.5/24",), "02:aa:bb:cc:dd:ee")}
    )
    again = RampsState.decode(state.encode())
    assert again.ports["vethwea"].mac == "02:aa:bb:cc:dd:ee"
    assert again.nft_ports()[0].mac == "02:aa:bb:cc:dd:ee"
    old = b'{"ports": {"vethwea": {"namespace": "c1", "ifname": "ethwe", "addresses": []}}}'
    assert RampsState.decode(old).ports["vethwea"].mac == ""
    assert RampsState.decode(old).nft_ports()[0].mac is None
    with pytest.raises(ValueError):
        RampsState.decode(old.replace(b'"addresses"', b'"mac": "nope", "addresses"'))


def test_bridge_table_update_keeps_the_table_and_its_counters() -> None:
    script = nftables.bridge_table([], [RANGE], fresh=False)
    lines = rules(script)
    assert "delete table bridge meshnet" not in lines
    flush = lines.index("flush table bridge meshnet")
    # Declared (counters too, so they count on) before the flush, sets emptied after it.
    assert "counter spoofed {}" in lines[:flush]
    assert "flush set bridge meshnet sources" in lines[flush:]
    assert "set ports { type ifname; }" in lines  # no elements: nft needs none, not "{ }"


def test_every_container_may_reach_the_dns_address_and_be_answered_from_it() -> None:
    dns = [IPv4Address("10.32.0.1"), ipaddress.IPv6Address("fd00::53")]
    script = nftables.bridge_table([port("vethwea", "10.32.1.5/24")], [RANGE], dns=dns, fresh=True)
    lines = rules(script)
    assert "set dns { type ipv4_addr; elements = { 10.32.0.1 }; }" in lines
    assert "set dns6 { type ipv6_addr; elements = { fd00::53 }; }" in lines
    # Accepted ahead of the isolation drops (spoofing is still checked first for queries).
    to_host = lines[lines.index("chain to_host {") :]
    assert to_host[1:4] == ["jump sender", "ip daddr @dns accept", "ip6 daddr @dns6 accept"]
    output = lines[lines.index("chain output {") :]
    assert output[2:4] == [
        "oifname @ports ip saddr @dns accept",
        "oifname @ports ip6 saddr @dns6 accept",
    ]
    assert "set dns { type ipv4_addr; }" in rules(nftables.bridge_table([], [RANGE], fresh=False))


def test_a_container_needs_a_route_to_the_dns_address_only_outside_its_subnets() -> None:
    dns = IPv4Address("10.32.0.1")
    assert needs_route_to(PortRecord("c", "ethwe", ("10.32.1.5/24",)), dns)
    assert not needs_route_to(PortRecord("c", "ethwe", ("10.32.9.5/12",)), dns)
    assert not needs_route_to(PortRecord("c", "ethwe", ("10.32.1.5/24", "10.32.0.9/12")), dns)
    assert not needs_route_to(PortRecord("c", "ethwe", ("fd00::1/64",)), dns)  # no IPv4 at all
    assert needs_route_to(
        PortRecord("c", "ethwe", ("fd01::1/64",)), ipaddress.IPv6Address("fd00::53")
    )


def test_inet_table_goes_from_the_most_specific_subnet() -> None:
    exposures = [
        Exposure(IPv4Interface("10.32.0.7/12")),
        Exposure(IPv4Interface("10.32.1.1/24"), masquerade=False),
    ]
    lines = rules(nftables.inet_table("meshnet", exposures, [RANGE], fresh=True))
    assert lines[:2] == ["table inet meshnet {}", "delete table inet meshnet"]
    out = [x for x in lines if x.startswith('oifname != "meshnet"')]
    assert out == [
        'oifname != "meshnet" ip saddr 10.32.1.0/24 ip daddr != @overlay '
        "ip daddr != 224.0.0.0/4 accept",
        'oifname != "meshnet" ip saddr 10.32.0.0/12 ip daddr != @overlay '
        "ip daddr != 224.0.0.0/4 masquerade",
    ]
    into = [x for x in lines if x.startswith('oifname "meshnet"')]
    assert into == [
        'oifname "meshnet" ip saddr != @overlay ip daddr 10.32.1.0/24 snat ip to 10.32.1.1',
        'oifname "meshnet" ip saddr != @overlay ip daddr 10.32.0.0/12 snat ip to 10.32.0.7',
    ]
    assert 'iifname "meshnet" ip daddr 10.32.1.1 ip saddr != 10.32.1.0/24 counter drop' in lines


def test_inet_table_without_masquerading_local_containers() -> None:
    script = nftables.inet_table(
        "meshnet",
        [Exposure(IPv4Interface("10.32.0.7/12"))],
        [RANGE],
        local=[IPv4Address("10.32.0.9"), IPv4Address("10.32.0.10")],
        fresh=False,
    )
    assert "set local { type ipv4_addr; elements = { 10.32.0.9, 10.32.0.10 }; }" in rules(script)
    assert "ip daddr 10.32.0.0/12 ip daddr != @local snat ip to 10.32.0.7" in script
    assert "flush set inet meshnet local" in rules(script)


def test_inet_table_carries_ipv6_exposures_in_the_same_shape() -> None:
    exposures = [
        Exposure(IPv4Interface("10.32.0.7/12")),
        Exposure(IPv6Interface("fd00:aa::7/64")),
        Exposure(IPv6Interface("fd00:aa:0:1::1/64"), masquerade=False),
    ]
    script = nftables.inet_table("meshnet", exposures, [RANGE], [RANGE6], fresh=True)
    lines = rules(script)
    assert "set overlay6 { type ipv6_addr; flags interval; elements = { fd00:aa::/48 }; }" in lines
    out = [x for x in lines if x.startswith('oifname != "meshnet"')]
    assert out == [
        'oifname != "meshnet" ip saddr 10.32.0.0/12 ip daddr != @overlay '
        "ip daddr != 224.0.0.0/4 masquerade",
        'oifname != "meshnet" ip6 saddr fd00:aa::/64 ip6 daddr != @overlay6 '
        "ip6 daddr != ff00::/8 masquerade",
        'oifname != "meshnet" ip6 saddr fd00:aa:0:1::/64 ip6 daddr != @overlay6 '
        "ip6 daddr != ff00::/8 accept",
    ]
    assert (
        'oifname "meshnet" ip6 saddr != @overlay6 ip6 daddr fd00:aa::/64 snat ip6 to fd00:aa::7'
        in lines
    )
    # Only the subnet's containers reach the address, but any neighbour may find it (a
    # neighbour's unicast probe comes from its link-local address): ND is let through first.
    guard = lines.index(
        'iifname "meshnet" ip6 daddr fd00:aa::7 ip6 saddr != fd00:aa::/64 counter drop'
    )
    assert lines[guard - 1] == (
        'iifname "meshnet" ip6 daddr fd00:aa::7 ip6 hoplimit 255 '
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept"
    )
    assert 'iifname "meshnet" ip daddr 10.32.0.7 ip saddr != 10.32.0.0/12 counter drop' in lines


def test_inet_table_without_masquerading_local_ipv6_containers() -> None:
    script = nftables.inet_table(
        "meshnet",
        [Exposure(IPv6Interface("fd00:aa::7/64"))],
        [RANGE],
        [RANGE6],
        local=[IPv6Address("fd00:aa::9"), IPv4Address("10.32.0.9")],
        fresh=False,
    )
    assert "set local6 { type ipv6_addr; elements = { fd00:aa::9 }; }" in rules(script)
    assert "set local { type ipv4_addr; elements = { 10.32.0.9 }; }" in rules(script)
    assert "ip6 daddr fd00:aa::/64 ip6 daddr != @local6 snat ip6 to fd00:aa::7" in script
    assert "flush set inet meshnet local6" in rules(script)


def test_removal_names_only_our_tables() -> None:
    assert nftables.removal() == (
        "table bridge meshnet {}\ndelete table bridge meshnet\n"
        "table inet meshnet {}\ndelete table inet meshnet\n"
    )


def test_bad_interface_names_never_reach_a_script() -> None:
    with pytest.raises(UserError):
        port('veth"; flush ruleset', "10.32.0.1/12")
    with pytest.raises(UserError):
        nftables.inet_table("a b", [], [RANGE], fresh=True)


def test_counters_from_nft_json() -> None:
    text = (
        '{"nftables": [{"metainfo": {"version": "1.0.6"}}, '
        '{"counter": {"family": "bridge", "name": "spoofed", "table": "meshnet", "packets": 3}}, '
        '{"counter": {"family": "bridge", "name": "x", "table": "other", "packets": 9}}]}'
    )
    assert nftables.parse_counters(text) == {"spoofed": 3}
    assert nftables.parse_counters("not json") == {}


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft")
def test_scripts_are_valid_nft() -> None:
    state = RampsState(
        exposed={
            IPv4Network("10.32.0.0/12"): Exposed(IPv4Interface("10.32.0.7/12")),
            IPv4Network("10.32.1.0/24"): Exposed(IPv4Interface("10.32.1.1/24"), False),
        },
        ports={
            "vethwea": PortRecord(
                "c1", "ethwe", ("10.32.1.5/24", "fd00::1/64"), "02:42:0a:20:01:05"
            ),
            "vethweb": PortRecord("c2", "ethwe", ("10.32.0.5/12",)),
        },
    )
    scripts = [
        state.script(RANGE, no_masq_local=True, fresh_bridge=True, inet_installed=False),
        state.script(
            RANGE,
            no_masq_local=False,
            fresh_bridge=False,
            inet_installed=True,
            dns=[IPv4Address("10.32.0.1"), ipaddress.IPv6Address("fd00::53")],
        ),
        RampsState().script(RANGE, no_masq_local=False, fresh_bridge=False, inet_installed=True),
        RampsState(
            exposed={
                IPv4Network("10.32.0.0/12"): Exposed(IPv4Interface("10.32.0.7/12")),
                IPv6Network("fd00:aa::/64"): Exposed(IPv6Interface("fd00:aa::7/64")),
                IPv6Network("fd00:aa:0:1::/64"): Exposed(IPv6Interface("fd00:aa:0:1::1/64"), False),
            },
            ports={"vethwea": PortRecord("c1", "ethwe", ("10.32.1.5/24", "fd00:aa::5/64"))},
        ).script(
            RANGE,
            allocation_range6=RANGE6,
            no_masq_local=True,
            fresh_bridge=False,
            inet_installed=True,
        ),
        firewall.ruleset("meshnet", ["10.32.0.1"], open_addresses=["10.32.0.7"]),
    ]
    for script in scripts:
        # -c: check only, nothing is applied.
        result = subprocess.run(
            ["nft", "-c", "-f", "-"], input=script, capture_output=True, text=True, check=False
        )
        if "Operation not permitted" in result.stderr:
            pytest.skip("nft -c needs CAP_NET_ADMIN")
        assert result.returncode == 0, result.stderr


def test_dns_firewall_opens_exposed_addresses_before_its_drop() -> None:
    lines = rules(
        firewall.ruleset("meshnet", ["10.32.0.1"], open_addresses=["10.32.1.1", "10.32.0.7"])
    )
    drop = lines.index('iifname "meshnet" counter drop')
    assert lines[drop - 2 : drop] == [
        'iifname "meshnet" ip daddr 10.32.0.7 accept',
        'iifname "meshnet" ip daddr 10.32.1.1 accept',
    ]


# --- specs, gateways, state ---------------------------------------------------------------------


def test_owner_ids_end_with_the_peer_name_as_reset_expects() -> None:
    owner = owner_id(IPv4Network("10.32.1.0/24"), "aa:bb:cc:dd:ee:ff")
    assert owner == "expose:10.32.1.0/24:aa:bb:cc:dd:ee:ff"
    assert owner.endswith(":aa:bb:cc:dd:ee:ff")
    assert parse_owner_id(owner) == (IPv4Network("10.32.1.0/24"), "aa:bb:cc:dd:ee:ff")
    # An IPv6 subnet holds colons too: it ends at its prefix length.
    owner6 = owner_id(IPv6Network("fd00:aa:0:1::/64"), "aa:bb:cc:dd:ee:ff")
    assert owner6 == "expose:fd00:aa:0:1::/64:aa:bb:cc:dd:ee:ff"
    assert parse_owner_id(owner6) == (IPv6Network("fd00:aa:0:1::/64"), "aa:bb:cc:dd:ee:ff")
    for other in ("dns:aa:bb:cc:dd:ee:ff", "expose:banana/64:aa", "expose:10.32.1.0/24"):
        assert parse_owner_id(other) is None


def test_a_container_routes_via_the_exposed_address_of_its_own_subnet() -> None:
    exposures = [
        Exposure(IPv4Interface("10.32.0.7/12")),
        Exposure(IPv4Interface("10.32.1.1/24")),
    ]
    assert gateways_for([iface("10.32.1.5/24")], exposures) == [IPv4Address("10.32.1.1")]
    assert gateways_for([iface("10.32.9.5/12")], exposures) == [IPv4Address("10.32.0.7")]
    assert gateways_for([iface("fd00::1/64"), iface("10.32.2.5/24")], exposures) == []
    assert gateways_for([iface("10.32.2.5/24"), iface("10.32.9.5/12")], exposures) == [
        IPv4Address("10.32.0.7")
    ]


def test_a_dual_stack_container_gets_a_gateway_of_each_family() -> None:
    exposures = [
        Exposure(IPv4Interface("10.32.0.7/12")),
        Exposure(IPv6Interface("fd00:aa::7/64")),
        Exposure(IPv6Interface("fd00:aa:0:1::1/64")),
    ]
    dual = [iface("10.32.9.5/12"), iface("fd00:aa:0:1::5/64"), iface("fd00:aa::5/64")]
    assert gateways_for(dual, exposures) == [
        IPv4Address("10.32.0.7"),
        IPv6Address("fd00:aa:0:1::1"),  # the first of its IPv6 addresses decides
    ]
    assert gateways_for([iface("fd00:aa::5/64")], exposures) == [IPv6Address("fd00:aa::7")]
    assert gateways_for([iface("fd00:bb::5/64")], exposures) == []


def test_state_round_trips_and_rejects_garbage() -> None:
    state = RampsState(
        exposed={
            IPv4Network("10.32.1.0/24"): Exposed(IPv4Interface("10.32.1.1/24"), False, ("gw.",))
        },
        ports={"vethwea": PortRecord("c1", "ethwe", ("10.32.1.5/24",))},
    )
    back = RampsState.decode(state.encode())
    assert back.exposed == state.exposed and back.ports == state.ports
    state.exposed[IPv6Network("fd00:aa::/64")] = Exposed(IPv6Interface("fd00:aa::7/64"))
    assert RampsState.decode(state.encode()).exposed == state.exposed
    for garbage in (b"[]", b"{", b'{"exposed": [{"address": "x"}]}', b'{"ports": {"a b": {}}}'):
        with pytest.raises(ValueError):
            RampsState.decode(garbage)


def test_a_state_file_from_before_ipv6_still_loads() -> None:
    old = (
        b'{"exposed": [{"address": "10.32.0.7/12", "masquerade": true, "names": ["gw."]}], '
        b'"ports": {"vethwea": {"addresses": ["10.32.0.9/12"], "ifname": "ethwe", '
        b'"mac": "02:aa:bb:cc:dd:ee", "namespace": "c1"}}, "version": 1}'
    )
    state = RampsState.decode(old)
    assert state.exposed == {
        IPv4Network("10.32.0.0/12"): Exposed(IPv4Interface("10.32.0.7/12"), True, ("gw.",))
    }
    assert state.ports["vethwea"].addresses == ("10.32.0.9/12",)


def test_the_ipv6_ring_is_overlay_for_both_tables() -> None:
    state = RampsState(
        exposed={IPv6Network("fd00:aa::/64"): Exposed(IPv6Interface("fd00:aa::7/64"))},
        ports={"vethwea": PortRecord("c1", "ethwe", ("10.32.0.9/12", "fd00:aa::9/64"))},
    )
    script = state.script(
        RANGE, allocation_range6=RANGE6, no_masq_local=True, fresh_bridge=True,
        inet_installed=False,
    )  # fmt: skip
    overlay6 = [x for x in rules(script) if x.startswith("set overlay6 {")]
    assert len(overlay6) == 2 and all("elements = { fd00:aa::/48 }" in x for x in overlay6)
    assert "set local6 { type ipv6_addr; elements = { fd00:aa::9 }; }" in rules(script)
    # Without the ring's range (not known yet) the exposed subnet still is.
    before = state.script(RANGE, no_masq_local=False, fresh_bridge=True, inet_installed=False)
    assert "elements = { fd00:aa::/64 }" in before


def test_the_inet_table_exists_only_while_something_is_exposed() -> None:
    empty = RampsState()
    assert "delete table inet meshnet" in empty.script(
        RANGE, no_masq_local=False, fresh_bridge=False, inet_installed=True
    )
    assert "inet" not in empty.script(
        RANGE, no_masq_local=False, fresh_bridge=False, inet_installed=False
    )
    exposed = RampsState(
        exposed={IPv4Network("10.32.0.0/12"): Exposed(IPv4Interface("10.32.0.7/12"))},
        ports={"vethwea": PortRecord("c1", "ethwe", ("192.168.5.5/24",))},
    )
    script = exposed.script(RANGE, no_masq_local=True, fresh_bridge=False, inet_installed=False)
    assert "delete table inet meshnet" in script  # a fresh inet table the first time
    assert "elements = { 192.168.5.5 }" in script  # local containers, kept unmasqueraded
    assert "elements = { 10.32.0.0/12, 192.168.5.0/24 }" in script  # their subnets are overlay


# --- the service without a kernel ---------------------------------------------------------------


def fake_router() -> Any:
    return SimpleNamespace(identity=SimpleNamespace(name=0xAABBCCDDEEFF, nickname="h1"))


# --- the command line ---------------------------------------------------------------------------


def test_status_lines() -> None:
    data = {
        "exposed": [
            {"address": "10.32.0.7/12", "masquerade": True, "names": ["gw.meshnet.local."]},
            {"address": "10.32.1.1/24", "masquerade": False, "names": []},
        ],
        "isolation": {"state": "on", "ports": 3, "subnets": ["10.32.0.0/12", "10.32.1.0/24"]},
    }
    assert status_rows(data) == [
        ("Exposed", "10.32.0.7/12 (gw.meshnet.local.), 10.32.1.1/24 (without masquerade)"),
        ("Isolation", "on (3 container ports; subnets 10.32.0.0/12, 10.32.1.0/24)"),
    ]
    assert status_rows({"name": "x"}) == []
    off = {"exposed": [], "isolation": {"state": "off (no data plane)", "ports": 0, "subnets": []}}
    assert status_rows(off) == [("Exposed", "no"), ("Isolation", "off (no data plane)")]
    table = ramps_table(
        {
            **off,
            "masquerade_local": False,
            "dropped": {"spoofed": 2, "isolated": 0, "protocol": 0},
            "ports": [
                {"port": "vethwea", "namespace": "c1", "ifname": "ethwe", "addresses": ["a/1"]}
            ],
        }
    )
    assert table.caption is not None and "spoofed 2" in str(table.caption)
    assert "--no-masq-local" in str(table.caption)


def test_bad_specs_are_one_line_before_the_daemon_is_asked(tmp_path: Path) -> None:
    env = {"MESHNET_API_SOCKET": str(tmp_path / "none.sock"), "PATH": "/usr/bin:/bin"}
    assert_one_line_error(run_meshnet("expose", "10.32.1.1", env=env), "prefix length")
    assert_one_line_error(run_meshnet("hide", "net:nope", env=env), "bad address 'net:nope'")
    assert_one_line_error(run_meshnet("expose", env=env), "meshnet is not running")


def test_a_port_another_tool_adds_is_looked_for_at_once_and_often(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ramps = Ramps(Config(state_dir=tmp_path, dataplane=False), fake_router())
    scans: list[float] = []

    async def reconcile() -> bool:
        scans.append(trio.current_time())
        return False

    monkeypatch.setattr(ramps, "_reconcile_ports", reconcile)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ramps._follow_bridge)
            await trio.sleep(ramps_module.TICK + 0.1)
            assert scans == [ramps_module.TICK]  # on its own: every TICK
            ramps.adopt_soon()  # Docker's plugin answered a Join
            await trio.sleep(0.01)
            assert len(scans) == 2  # at once
            await trio.sleep(ramps_module.EAGER_FOR)
            eager = [b - a for a, b in itertools.pairwise(scans[1:])]
            assert eager and all(d == pytest.approx(ramps_module.EAGER_TICK) for d in eager)
            before = len(scans)
            await trio.sleep(ramps_module.TICK - 0.5)
            assert len(scans) == before  # back to every TICK
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_port_announced_with_its_addresses_is_adopted_with_exactly_those_once_all_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Docker's plugin announces a port with the addresses IPAM gave it; Docker sets them one
    family after the other, after the join: adopting the port at its first sight would keep it
    shut for IPv6 for good."""
    ramps = Ramps(Config(state_dir=tmp_path, dataplane=False), fake_router())
    shown: list[str] = []

    def scan(known: set[str], unresolved: set[str]) -> tuple[set[str], list[Attachment] | None]:
        present = {"vethwlA", "vethwlB"}
        if present - known == unresolved:
            return present, None
        return present, [
            Attachment("c1", "ethwe0", "vethwlA", "02:00:00:00:00:01", 1354, tuple(shown)),
            Attachment("c2", "ethwe0", "vethwlB", "02:00:00:00:00:02", 1354, ("10.32.0.9/12",)),
        ]

    monkeypatch.setattr(ramps_module, "_scan_bridge", scan)

    async def main() -> None:
        ramps.adopt_soon("vethwlA", ("10.32.0.2/12", "fd00:0::2/64"))
        ramps.adopt_soon("vethwlB", ("10.32.0.9/12", "fd00::9/64"))
        shown.append("10.32.0.2/12")  # IPv4 set, IPv6 not yet
        await ramps._reconcile_ports()
        assert set(ramps.state.ports) == set()  # both wait (and stay shut meanwhile)
        assert ramps._unresolved == set()  # ... without being given up on
        shown.extend(["fd00::2/64", "fd00::66/64"])  # and an address added by hand
        assert await ramps._reconcile_ports()
        assert ramps.state.ports["vethwlA"].addresses == ("10.32.0.2/12", "fd00::2/64")
        assert "vethwlB" not in ramps.state.ports
        # B never shows its IPv6 address: after ANNOUNCED_FOR, adopted with what it shows.
        await trio.sleep(ramps_module.ANNOUNCED_FOR)
        assert await ramps._reconcile_ports()
        assert ramps.state.ports["vethwlB"].addresses == ("10.32.0.9/12",)
        assert ramps._announced == {}

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
