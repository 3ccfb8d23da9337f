"""The bridge table's IPv6 rules: no container is a router or a DHCP server, its Neighbor
Discovery speaks only for itself, and link-local addresses are derived from the MAC."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from ipaddress import IPv4Network, IPv6Address, IPv6Network

import pytest

from meshnet.dataplane.kernel import nftables
from meshnet.dataplane.kernel.nftables import Port
from tests.net import nd_frames

RANGE = IPv4Network("10.32.0.0/12")
RANGE6 = IPv6Network("fd00::/64")
MAC = "02:42:0a:20:01:05"


def port(name: str, *addresses: str, mac: str | None = MAC) -> Port:
    return Port(name, tuple(ipaddress.ip_interface(a) for a in addresses), mac)


def rules(script: str) -> list[str]:
    return [line.strip() for line in script.splitlines()]


def chain(script: str, name: str) -> list[str]:
    lines = rules(script)
    start = lines.index(f"chain {name} {{")
    return lines[start + 1 : lines.index("}", start)]


def table(*ports: Port) -> str:
    return nftables.bridge_table(list(ports), [RANGE], [RANGE6], fresh=True)


def test_the_link_local_address_is_the_modified_eui64_of_the_mac() -> None:
    assert port("vethwea").link_local() == IPv6Address("fe80::42:aff:fe20:105")
    # The universal/local bit flips: a locally administered MAC gives a 0 there, and back.
    assert port("vethwea", mac="00:11:22:33:44:55").link_local() == IPv6Address(
        "fe80::211:22ff:fe33:4455"
    )
    assert port("vethwea", mac=None).link_local() is None


def test_a_port_sends_ipv6_from_its_addresses_and_its_own_link_local_only() -> None:
    dual = port("vethwea", "10.32.1.5/24", "fd00::5/64")
    assert dual.sources6() == [IPv6Address("fd00::5"), IPv6Address("fe80::42:aff:fe20:105")]
    assert port("vethweb", "10.32.1.6/24").sources6() == []  # no IPv6: not even link-local
    assert port("vethwec", "fd00::6/64", mac=None).sources6() == [IPv6Address("fd00::6")]

    script = table(dual, port("vethweb", "10.32.1.6/24", mac="02:00:00:00:00:06"))
    lines = rules(script)
    assert (
        'set sources6 { type ifname . ipv6_addr; elements = { "vethwea" . fd00::5, '
        '"vethwea" . fe80::42:aff:fe20:105 }; }'
    ) in lines
    # Only the unspecified address (duplicate address detection, MLD before any address) is
    # exempt: any other link-local source must be the port's own.
    sender = chain(script, "sender")
    assert 'ip6 saddr != :: iifname . ip6 saddr != @sources6 counter name "spoofed" drop' in sender
    assert not any("fe80::/10" in rule for rule in sender)


def test_neighbor_advertisements_and_link_layer_options_are_checked_by_offset() -> None:
    script = table(port("vethwea", "10.32.1.5/24", "fd00::5/64"))
    lines = rules(script)
    targets = next(x for x in lines if x.startswith("set targets6 {"))
    assert targets.startswith("set targets6 { typeof iifname . @th,64,128;")
    # The same addresses as sources6, as the 128-bit integers a raw read yields.
    assert '"vethwea" . 0xfd000000000000000000000000000005' in targets
    assert '"vethwea" . 0xfe8000000000000000420afffe200105' in targets
    assert (
        'set lladdrs { typeof iifname . @th,208,48; elements = { "vethwea" . 0x02420a200105 }; }'
        in lines
    )
    claims = chain(script, "claims")
    assert claims == [
        'icmpv6 type { nd-router-advert, nd-redirect } counter name "spoofed" drop',
        'udp sport { 67, 547 } counter name "spoofed" drop',
        'icmpv6 type nd-neighbor-advert iifname . @th,64,128 != @targets6 counter name "spoofed" '
        "drop",
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } @th,256,8 0-255 "
        'counter name "spoofed" drop',
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } @th,192,8 { 1, 2 } "
        'iifname . @th,208,48 != @lladdrs counter name "spoofed" drop',
    ]


def test_offsets_match_the_frames_an_attacker_builds() -> None:
    """The raw offsets read what RFC 4861 puts there: checked on a real frame."""
    mac, target = "02:00:00:00:00:01", IPv6Address("fd00::3")
    frame = nd_frames.neighbor_advertisement(
        mac, IPv6Address("fd00::1"), IPv6Address("fd00::2"), "02:00:00:00:00:02", target
    )
    icmp = frame[14 + 40 :]
    assert icmp[0] == nd_frames.NEIGHBOR_ADVERTISEMENT
    assert icmp[64 // 8 : (64 + 128) // 8] == target.packed  # @th,64,128
    assert icmp[192 // 8] == nd_frames.OPTION_TARGET_LLADDR  # @th,192,8
    assert icmp[208 // 8 : (208 + 48) // 8] == nd_frames.mac_bytes(mac)  # @th,208,48
    assert len(icmp) == 256 // 8  # one option: nothing at @th,256,8
    # A valid checksum: summing the pseudo-header and the message gives zero.
    pseudo = frame[14 + 8 : 14 + 40] + len(icmp).to_bytes(4, "big") + bytes([0, 0, 0, 58])
    assert nd_frames.checksum(pseudo + icmp) == 0


def test_claims_are_checked_once_per_frame_from_a_container_before_flooding() -> None:
    pre = chain(table(port("vethwea", "fd00::5/64")), "prerouting")
    assert pre[1] == 'iifname @ports iifname . ether saddr != @macs counter name "spoofed" drop'
    # pre[2]: a frame that claims to be a fastdp probe (test_ramps).
    assert pre[3] == "iifname @ports meta l4proto { ipv6-icmp, udp } jump claims"
    # A container without IPv6 sends none at all (counted as a protocol it may not use).
    assert 'ether type ip6 iifname != @ports6 counter name "protocol" drop' in chain(
        table(port("vethwea", "10.32.1.5/24")), "sender"
    )


def test_an_update_keeps_the_new_sets_and_declares_them_before_the_flush() -> None:
    lines = rules(nftables.bridge_table([], [RANGE], fresh=False))
    flush = lines.index("flush table bridge meshnet")
    assert "set targets6 { typeof iifname . @th,64,128; }" in lines[:flush]
    assert "flush set bridge meshnet lladdrs" in lines[flush:]


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft")
def test_the_table_is_valid_nft_with_and_without_ipv6_ports() -> None:
    for ports in (
        [],
        [port("vethwea", "10.32.1.5/24", "fd00::5/64"), port("vethweb", "10.32.1.6/24")],
        [port("vethwec", "fd00::7/64", mac=None)],
    ):
        script = nftables.bridge_table(ports, [RANGE], [RANGE6], fresh=True)
        result = subprocess.run(
            ["nft", "-c", "-f", "-"], input=script, capture_output=True, text=True, check=False
        )
        if "Operation not permitted" in result.stderr:
            pytest.skip("nft -c needs CAP_NET_ADMIN")
        assert result.returncode == 0, result.stderr


def test_link_local_ipv6_between_containers_carries_neighbour_discovery_only() -> None:
    script = table(port("vethwea", "fd00::5/64"))
    jumps = ["ip6 saddr { ::, fe80::/10 } jump link_scope", "ip6 daddr fe80::/10 jump link_scope"]
    # Checked where a container sends and where one is handed a frame (from a remote host too).
    for name in ("from_container", "to_container"):
        assert chain(script, name)[-2:] == jumps
    assert chain(script, "link_scope") == [
        "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, "
        "mld-listener-report, mld-listener-done, mld2-listener-report } return",
        'counter name "isolated" drop',
    ]
    assert not any("link_scope" in rule for rule in chain(script, "to_host"))
