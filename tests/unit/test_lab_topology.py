"""Lab topologies and address plans, without the kernel."""

from __future__ import annotations

import ipaddress
import itertools
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnet.errors import UserError
from meshnet.lab import topology as topo
from meshnet.lab.lab import default_overlay


def edges(t: topo.Topology) -> set[frozenset[str]]:
    return {link.key for link in t.links}


def e(a: str, b: str) -> frozenset[str]:
    return frozenset((a, b))


def test_builtin_shapes() -> None:
    assert edges(topo.builtin("line", 3, 0)) == {e("h1", "h2"), e("h2", "h3")}
    assert edges(topo.builtin("ring", 4, 0)) == {
        e("h1", "h2"),
        e("h2", "h3"),
        e("h3", "h4"),
        e("h4", "h1"),
    }
    assert edges(topo.builtin("star", 4, 0)) == {e("h1", "h2"), e("h1", "h3"), e("h1", "h4")}
    assert len(edges(topo.builtin("full", 5, 0))) == 10
    assert topo.builtin("line", 2, 2).hosts[1].containers == ("h2-c1", "h2-c2")


@given(
    st.sampled_from(topo.BUILTIN_TOPOLOGIES),
    st.integers(1, 22),
    st.integers(0, 3),
    st.sampled_from(topo.UNDERLAYS),
)
def test_plans_never_reuse_an_address(
    shape: str, hosts: int, containers: int, underlay: str
) -> None:
    links, planned = topo.plan_addresses(topo.builtin(shape, hosts, containers, underlay))
    addresses = [a for link in links for end in (link.a, link.b) for a in link.addresses(end)]
    addresses += [c.address for c in planned]
    assert len(addresses) == len(set(addresses))
    assert len(planned) == hosts * containers
    for link in links:  # both ends of a link share its subnets, one per family it carries
        nets = {
            ipaddress.ip_interface(a).network
            for end in (link.a, link.b)
            for a in link.addresses(end)
        }
        assert {n.version for n in nets} == {"ipv4": {4}, "ipv6": {6}, "dual": {4, 6}}[underlay]
        assert len(nets) == (2 if underlay == "dual" else 1)


def test_an_underlay_family_per_link_and_per_file(tmp_path: Path) -> None:
    path = tmp_path / "mixed.toml"
    path.write_text(
        'underlay = "ipv6"\n[hosts.a]\n[hosts.b]\n[hosts.c]\n'
        '[[links]]\nhosts = ["a", "b"]\nunderlay = "ipv4"\n'
        '[[links]]\nhosts = ["b", "c"]\n'
    )
    links, _ = topo.plan_addresses(topo.load_file(path, None))
    assert [(x.a_address, x.a_address6) for x in links] == [
        ("172.31.0.1/24", None),
        (None, "fd6d:6573:686e:1::1/64"),
    ]
    assert links[1].addresses("c") == ("fd6d:6573:686e:1::2/64",)
    # --underlay is the default for links the file leaves open, and the file's own wins.
    path.write_text('[hosts.a]\n[hosts.b]\n[[links]]\nhosts = ["a", "b"]\n')
    assert topo.load_file(path, None, "dual").links[0].underlay == "dual"
    assert topo.load_file(path, None).links[0].underlay == "ipv4"
    path.write_text('underlay = "ipv6"\n[hosts.a]\n[hosts.b]\n[[links]]\nhosts = ["a", "b"]\n')
    assert topo.load_file(path, None, "ipv4").links[0].underlay == "ipv6"


@pytest.mark.parametrize("where", ["top", "link"])
def test_a_bad_underlay_is_one_clear_error(tmp_path: Path, where: str) -> None:
    path = tmp_path / "bad.toml"
    top = 'underlay = "ipv5"\n' if where == "top" else ""
    link = 'underlay = "ipv5"\n' if where == "link" else ""
    path.write_text(f'{top}[hosts.a]\n[hosts.b]\n[[links]]\nhosts = ["a", "b"]\n{link}')
    with pytest.raises(UserError, match="bad underlay 'ipv5': use one of 'ipv4', 'ipv6', 'dual'"):
        topo.load_file(path, None)
    with pytest.raises(UserError, match="bad underlay"):
        topo.builtin("line", 2, 0, "ipv5")


@pytest.mark.parametrize(
    ("shape", "hosts", "message"),
    [
        ("mesh", 3, "unknown topology 'mesh'"),
        ("line", 0, "--hosts must be between 1"),
        ("full", 30, "too many links"),
    ],
)
def test_builtin_rejects(shape: str, hosts: int, message: str) -> None:
    with pytest.raises(UserError, match=message):
        topo.builtin(shape, hosts, 1)


def test_topology_file(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        '[hosts.alpha]\ncontainers = ["web", "db"]\n[hosts.beta]\ncontainers = 1\n[hosts.gamma]\n'
        '[[links]]\nhosts = ["alpha", "beta"]\nloss = 2.5\nrate = "10mbit"\n'
        '[[links]]\nhosts = ["beta", "gamma"]\n'
    )
    t = topo.load_file(path, default_containers=None)
    assert [h.name for h in t.hosts] == ["alpha", "beta", "gamma"]
    assert t.hosts[0].containers == ("web", "db") and t.hosts[1].containers == ("beta-c1",)
    assert t.links[0] == topo.LinkSpec("alpha", "beta", loss=2.5, rate=10_000_000)


def test_the_shipped_example_loads() -> None:
    example = Path(__file__).parents[2] / "examples" / "topology.toml"
    t = topo.load_file(example, default_containers=None)
    assert len(t.hosts) >= 3 and any(link.loss or link.rate for link in t.links)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[hosts.a\n", "malformed topology file"),
        ("", "no hosts"),
        ('[hosts.a]\n[[links]]\nhosts = ["a", "b"]\n', "no host named 'b'"),
        ('[hosts.a]\n[hosts.b]\n[[links]]\nhosts = ["a", "b"]\nloss = 120\n', "bad loss"),
        ('[hosts.a]\n[hosts.b]\n[[links]]\nhosts = ["a", "b"]\nrate = "fast"\n', "bad rate"),
        ("[hosts.A]\n", "bad host name"),
        ('[hosts.a]\ncontainers = ["a"]\n', "used twice"),
        (
            '[hosts.a]\n[hosts.b]\n[[links]]\nhosts = ["a", "b"]\n[[links]]\nhosts = ["b", "a"]\n',
            "listed twice",
        ),
        ("[hosts.a]\ncolor = 1\n", "unknown keys"),
    ],
)
def test_malformed_topology_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        topo.load_file(path, default_containers=None)


@pytest.mark.parametrize(
    ("text", "bits"),
    [("10mbit", 10**7), ("1.5gbit", 15 * 10**8), ("64kbit", 64_000), ("8000", 8000)],
)
def test_parse_rate(text: str, bits: int) -> None:
    assert topo.parse_rate(text) == bits
    assert topo.parse_rate(topo.format_rate(bits)) == bits


def test_parse_rate_rejects() -> None:
    for text in ("fast", "10 mb", "1bit", ""):
        with pytest.raises(UserError):
            topo.parse_rate(text)


NAT_FILE = (
    '[hosts.p]\n[hosts.q]\n[hosts.n1]\nnat = "masquerade"\n[hosts.n2]\nnat = "random"\n'
    '[[links]]\nhosts = ["p", "q"]\n'
)


def load_text(tmp_path: Path, text: str) -> topo.Topology:
    path = tmp_path / "t.toml"
    path.write_text(text)
    return topo.load_file(path, default_containers=None)


def test_nat_hosts_parse(tmp_path: Path) -> None:
    t = load_text(tmp_path, NAT_FILE)
    assert [(h.name, h.nat) for h in t.hosts] == [
        ("p", None),
        ("q", None),
        ("n1", "masquerade"),
        ("n2", "random"),
    ]


def test_the_shipped_nat_example_loads() -> None:
    example = Path(__file__).parents[2] / "examples" / "nat.toml"
    t = topo.load_file(example, default_containers=None)
    assert {h.name: h.nat for h in t.hosts} == {"p": None, "n1": "masquerade", "n2": "random"}
    assert all(len(h.containers) == 1 for h in t.hosts) and not t.links


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[hosts.a]\nnat = "full-cone"\n', "nat must be one of 'masquerade', 'random'"),
        ("[hosts.a]\nnat = true\n", "nat must be one of"),
        (
            '[hosts.a]\n[hosts.b]\nnat = "random"\n[[links]]\nhosts = ["a", "b"]\n',
            "host b is behind NAT, so it has no links",
        ),
        ('[hosts.a]\nnat = "masquerade"\n[hosts.internet]\n', "name 'internet' is taken"),
        ('[hosts.a]\nnat = "masquerade"\n[hosts.b]\ncontainers = ["a-nat"]\n', "'a-nat' is taken"),
    ],
)
def test_bad_nat(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_text(tmp_path, text)


def test_without_nat_the_names_are_free_and_there_is_no_internet(tmp_path: Path) -> None:
    t = load_text(
        tmp_path, '[hosts.internet]\n[hosts.a-nat]\n[[links]]\nhosts = ["internet", "a-nat"]\n'
    )
    links, _ = topo.plan_addresses(t)
    assert topo.plan_internet(t, links) is None
    assert topo.plan_internet(topo.builtin("full", 4, 1), links) is None


def test_the_internet_plan(tmp_path: Path) -> None:
    t = load_text(tmp_path, NAT_FILE)
    links, _ = topo.plan_addresses(t)
    plan = topo.plan_internet(t, links)
    assert plan is not None
    assert [u.host for u in plan.public] == ["p", "q"]
    assert [(n.host, n.kind) for n in plan.nats] == [("n1", "masquerade"), ("n2", "random")]
    # By position in the file: p is host 0, n2 host 3.
    assert plan.public[0] == topo.PlannedUplink(
        "p", "198.18.0.2/24", "198.18.0.1/24", routed=("172.31.0.1/32",)
    )
    n2 = plan.nats[1]
    assert (n2.host_address, n2.lan_address) == ("192.168.3.2/24", "192.168.3.1/24")
    assert (n2.uplink.address, n2.uplink.router_address) == ("198.18.3.2/24", "198.18.3.1/24")
    assert n2.uplink.routed == ()


@given(st.lists(st.sampled_from([None, "masquerade", "random"]), min_size=1, max_size=40))
def test_nat_plans_never_reuse_an_address(kinds: list[str | None]) -> None:
    hosts = tuple(topo.HostSpec(f"h{i}", (f"c{i}",), nat) for i, nat in enumerate(kinds))
    public = [h.name for h in hosts if h.nat is None]
    t = topo.validate(
        topo.Topology(hosts, tuple(topo.LinkSpec(a, b) for a, b in itertools.pairwise(public)))
    )
    links, containers = topo.plan_addresses(t)
    plan = topo.plan_internet(t, links)
    addresses = [a for link in links for a in (link.a_address, link.b_address)]
    addresses += [c.address for c in containers]
    if plan is None:
        assert all(k is None for k in kinds)
        return
    uplinks = [*plan.public, *(n.uplink for n in plan.nats)]
    addresses += [a for u in uplinks for a in (u.address, u.router_address)]
    addresses += [a for n in plan.nats for a in (n.host_address, n.lan_address)]
    assert len(addresses) == len(set(a.split("/")[0] for a in addresses))
    assert len(uplinks) == len(hosts)
    for nat in plan.nats:
        assert ipaddress.ip_interface(nat.host_address) in topo.PRIVATE_RANGE
        assert ipaddress.ip_interface(nat.uplink.address) in topo.INTERNET_RANGE


@given(
    hosts=st.integers(2, topo.MAX_HOSTS),
    degree=st.floats(2, 8),
    seed=st.integers(0, 2**32),
)
def test_random_sparse_is_connected_with_the_degree_asked(
    hosts: int, degree: float, seed: int
) -> None:
    t = topo.random_sparse(hosts, degree, seed)
    assert [h.name for h in t.hosts] == [f"h{i}" for i in range(1, hosts + 1)]
    assert len(topo.hops_from(t, "h1")) == hosts  # every host reachable from h1
    wanted = min(round(hosts * degree / 2), hosts * (hosts - 1) // 2, 256)
    assert len(t.links) == max(wanted, hosts - 1)
    assert topo.random_sparse(hosts, degree, seed) == t  # the seed decides everything


def test_random_sparse_seeds_differ_and_bad_degrees_are_refused() -> None:
    assert edges(topo.random_sparse(30, 4, 1)) != edges(topo.random_sparse(30, 4, 2))
    with pytest.raises(UserError, match="cannot connect"):
        topo.random_sparse(10, 1, 0)
    with pytest.raises(UserError, match="2 to"):
        topo.random_sparse(1, 4, 0)


@given(seed=st.integers(0, 1000), containers=st.integers(0, 3))
def test_to_toml_reads_back_as_the_same_topology(seed: int, containers: int) -> None:
    t = topo.random_sparse(12, 3, seed, containers)
    lossy = topo.Topology(
        t.hosts, (topo.LinkSpec(t.links[0].a, t.links[0].b, 2.5, 10**7), *t.links[1:])
    )
    mixed = topo.Topology(
        t.hosts,
        (topo.LinkSpec(t.links[0].a, t.links[0].b, underlay="ipv6"), *t.links[1:]),
    )
    for original in (t, lossy, mixed):
        assert topo._from_mapping(tomllib.loads(topo.to_toml(original)), None) == original


def test_hops_from_counts_links() -> None:
    assert topo.hops_from(topo.builtin("line", 4, 0), "h1") == {"h1": 0, "h2": 1, "h3": 2, "h4": 3}
    assert topo.hops_from(topo.builtin("ring", 6, 0), "h1")["h4"] == 3


def test_lab_containers_are_dual_stack_by_default_where_ipv6_fits() -> None:
    assert default_overlay(1500, docker=False, daemons=True) == "dual"
    assert default_overlay(1426, docker=False, daemons=True) == "dual"  # 1280 left for IPv6
    assert default_overlay(1425, docker=False, daemons=True) == "ipv4"
    assert default_overlay(1500, docker=True, daemons=True) == "ipv4"
    assert default_overlay(1500, docker=False, daemons=False) == "ipv4"
