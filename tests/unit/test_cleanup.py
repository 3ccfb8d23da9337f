"""`reset --force` after a dead router: which links are its, what else it removes."""

from __future__ import annotations

from meshnet.dataplane.kernel.netlink import LinkInfo
from meshnet.node import cleanup


def link(name: str, index: int, kind: str = "veth", master: int | None = None) -> LinkInfo:
    return LinkInfo(name, index, kind, "02:00:00:00:00:01", 1500, True, master, ())


def test_the_bridge_goes_last_after_its_ports_and_devices() -> None:
    links = [
        link("lo", 1, ""),
        link("eth0", 2),
        link("meshnet", 3, "bridge"),
        link("vxlan-7001", 4, "vxlan", master=3),
        link("vethwepl1234", 5, master=3),  # a container's host end
        link("vethwe-sleeve", 6, "tun"),  # no longer on the bridge
        link("vxlan-6784", 7, "vxlan"),  # a crash between create and enslave
        link("vxlan6-6784", 11, "vxlan", master=3),  # fastdp's device for IPv6 neighbours
        link("vxlan-corp", 8, "vxlan"),  # somebody else's
        link("docker0", 9, "bridge"),
        link("veth0", 10, master=9),
    ]
    assert cleanup.leftover_links(links) == [
        "vethwe-sleeve",
        "vethwepl1234",
        "vxlan-6784",
        "vxlan-7001",
        "vxlan6-6784",
        "meshnet",
    ]


def test_nothing_of_ours_nothing_removed() -> None:
    assert cleanup.leftover_links([link("lo", 1, ""), link("eth0", 2)]) == []


def test_state_files_are_the_owners_own_names() -> None:
    assert set(cleanup.STATE_FILES) == {
        "peer-name",
        "ipam.state",
        "ipam6.state",
        "ramps.json",
        "dns-records.msgpack",
        "targets.json",
    }
    assert "meshnet.log" not in cleanup.STATE_FILES
    assert [t for t, _ in cleanup.TABLES] == [
        "bridge+inet meshnet",
        "inet meshnet-fastdp",
        "inet meshnet_dns",
    ]
