"""What a lab with NAT hosts tells its routers and its kernel, without building it."""

from __future__ import annotations

from dataclasses import asdict

from meshnet.lab import lab as lablib
from meshnet.lab import topology as topo
from meshnet.lab.record import LabRecord


def record_for(t: topo.Topology) -> LabRecord:
    """The record `up` writes for `t`, without the kernel."""
    links, _ = topo.plan_addresses(t)
    return LabRecord(
        name="x",
        state="up",
        mtu=1500,
        hosts=[{"name": h.name, **({"nat": h.nat} if h.nat else {})} for h in t.hosts],
        links=[{**asdict(link), "up": True} for link in links],
        containers=[],
        created=0.0,
        internet=lablib._internet_record("mn-x-", topo.plan_internet(t, links)),
    )


NAT_LAB = topo.validate(
    topo.Topology(
        hosts=(
            topo.HostSpec("p", ()),
            topo.HostSpec("q", ()),
            topo.HostSpec("r", ()),
            topo.HostSpec("n1", (), "masquerade"),
            topo.HostSpec("n2", (), "random"),
        ),
        links=(topo.LinkSpec("p", "q"),),
    )
)


def test_natted_hosts_dial_every_public_host_and_nobody_dials_them() -> None:
    record = record_for(NAT_LAB)
    public = ["198.18.0.2", "198.18.1.2", "198.18.2.2"]
    assert lablib._neighbour_addresses(record, "n1") == public
    assert lablib._neighbour_addresses(record, "n2") == public
    # Public hosts: their [[links]] as ever, and no private address.
    assert lablib._neighbour_addresses(record, "p") == ["172.31.0.2"]
    assert lablib._neighbour_addresses(record, "r") == []
    assert record.internet is not None
    assert record.internet["nats"][0]["namespace"] == "mn-x-n1-nat"
    assert record.internet["namespace"] == "mn-x-internet"


def test_the_mesh_a_lab_waits_for_includes_the_natted_hosts() -> None:
    assert lablib._components(record_for(NAT_LAB)) == dict.fromkeys(
        (h.name for h in NAT_LAB.hosts), 5
    )


def test_without_nat_the_record_and_neighbours_are_as_before() -> None:
    record = record_for(topo.builtin("line", 3, 0))
    assert record.internet is None
    assert lablib._neighbour_addresses(record, "h2") == ["172.31.0.1", "172.31.1.2"]
    assert lablib._components(record) == {"h1": 3, "h2": 3, "h3": 3}


def test_rulesets() -> None:
    assert 'oifname "wan" masquerade\n' in lablib.nat_ruleset("masquerade")
    assert 'oifname "wan" masquerade random\n' in lablib.nat_ruleset("random")
    internet = lablib.internet_ruleset(["p", "q"])
    assert 'iifname { "to-p", "to-q" } oifname { "to-p", "to-q" } reject' in internet
