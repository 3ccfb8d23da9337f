"""The commands as a user meets them, against a fake API: what each one asks the router, what it
prints, and one line for each mistake (issue 20's rough edges). No root, no daemon."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from meshnet.api.client import ApiClient
from meshnet.cli import main
from meshnet.cli.ipam import _ipam_view
from meshnet.gossip.identity import PEER_NAME_FILE

Answer = Any | Callable[[dict[str, Any]], Any]


@dataclass
class FakeApi:
    """Stands for the daemon behind ``ApiClient``: records each request and answers from
    ``answers`` (by path: a value, or a function of the request's body)."""

    answers: dict[str, Answer] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        self.requests.append((method, path, body))
        answer = self.answers.get(path)
        if answer is None:
            raise AssertionError(f"unexpected request {method} {path}")
        return answer(body or {}) if callable(answer) else answer

    @property
    def bodies(self) -> list[dict[str, Any] | None]:
        return [body for _, _, body in self.requests]


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApi]:
    fake = FakeApi()
    monkeypatch.setattr(ApiClient, "_request", lambda _, *args: fake.request(*args))
    yield fake


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def meshnet(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """`meshnet ARGS...` in this process, through ``main`` as the real command runs it."""

    def run(*args: str) -> Run:
        code = main(list(args))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def one_line_error(run: Run, *fragments: str) -> str:
    assert run.code != 0
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


PEERS = [
    {
        "name": "aa:bb:cc:dd:ee:ff",
        "nickname": "h1",
        "local": True,
        "reachable": True,
        "via": [],
        "connections": [],
    }
]


# 1. The status group's --json reaches its subcommands.
@pytest.mark.parametrize(
    "args",
    [
        ["status", "--json", "peers"],
        ["status", "peers", "--json"],
        ["status", "--json", "peers", "--json"],
    ],
)
def test_status_json_on_either_side_of_the_subcommand(
    api: FakeApi, meshnet: Callable[..., Run], args: list[str]
) -> None:
    api.answers["/status/peers"] = PEERS
    run = meshnet(*args)
    assert run.code == 0 and json.loads(run.out) == PEERS


def test_status_peers_without_json_is_a_table(api: FakeApi, meshnet: Callable[..., Run]) -> None:
    api.answers["/status/peers"] = PEERS
    run = meshnet("status", "peers")
    assert run.code == 0 and "(this peer)" in run.out


# 2. and 3. attach and detach take the same address specs.
ATTACHED = {"addresses": ["10.32.0.5/12"]}


@pytest.mark.parametrize(
    "spec", ["net:default", "net:10.32.1.0/24", "ip:10.32.0.9", "10.32.0.9/12", "fd00::5/64"]
)
def test_attach_and_detach_take_the_same_specs(
    api: FakeApi, meshnet: Callable[..., Run], spec: str
) -> None:
    api.answers |= {"/attach": ATTACHED, "/detach": {"detached": True}}
    assert meshnet("attach", spec, "c1").code == 0
    assert meshnet("detach", spec, "c1").code == 0
    assert [b["addresses"] for b in api.bodies if b] == [[spec], [spec]]


def test_attach_ipv6_only_is_net_default6(api: FakeApi, meshnet: Callable[..., Run]) -> None:
    api.answers |= {"/attach": {"addresses": ["fd12::5/64"]}}
    run = meshnet("attach", "--ipv6-only", "c1")
    assert run.code == 0 and run.out.strip() == "fd12::5"
    assert [b["addresses"] for b in api.bodies if b] == [["net:default6"]]
    one_line_error(meshnet("attach", "--ipv6-only", "net:default", "c1"), "--ipv6-only")


@pytest.mark.parametrize("command", ["attach", "detach"])
def test_specs_without_a_container_are_one_line(
    api: FakeApi, meshnet: Callable[..., Run], command: str
) -> None:
    one_line_error(meshnet(command, "net:default"), "missing CONTAINER")
    one_line_error(meshnet(command), "missing CONTAINER")
    assert api.requests == []


# 4. One shape for every bad address.
@pytest.mark.parametrize(
    "args",
    [
        ["attach", "banana", "c1"],
        ["attach", "10.32.0.300/12", "c1"],
        ["attach", "net:10.32.1.0/33", "c1"],
        ["attach", "ip:fd00::zz", "c1"],
        ["attach", "10.32.0.9", "c1"],
        ["detach", "banana", "c1"],
        ["detach", "net:nonsense", "c1"],
        ["expose", "banana"],
        ["expose", "10.32.1.0/24"],
        ["expose", "fd00::/64"],
        ["hide", "ip:banana"],
        ["run", "net:banana", "--", "nginx"],
        ["dns-add", "banana", "c1", "--hostname", "x"],
        ["dns-remove", "10.1.1.1", "banana", "c1"],
    ],
)
def test_every_bad_address_is_told_in_one_shape(
    api: FakeApi, meshnet: Callable[..., Run], args: list[str]
) -> None:
    line = one_line_error(meshnet(*args), "meshnet: bad address '")
    assert "Expected 4 octets" not in line and "does not appear" not in line
    assert api.requests == []


# 5. -h is help everywhere; a host name is --hostname.
@pytest.mark.parametrize("command", ["expose", "dns-add", "dns-remove", "attach", "status"])
def test_dash_h_is_help_everywhere(api: FakeApi, meshnet: Callable[..., Run], command: str) -> None:
    run = meshnet(command, "-h", "--api-socket", "/x")
    assert run.code == 0 and "Usage: meshnet" in run.out
    assert api.requests == []


def test_hostname_is_a_long_option(api: FakeApi, meshnet: Callable[..., Run]) -> None:
    api.answers["/expose"] = {"exposed": [{"address": "10.32.0.7/12"}]}
    assert meshnet("expose", "--hostname", "gw1").code == 0
    assert api.bodies[-1] == {"addresses": [], "name": "gw1", "masquerade": True}


# 6. IPv6 ranges have flags of their own.
@pytest.mark.parametrize("flag", ["--ipalloc-range", "--ipalloc-default-subnet"])
def test_an_ipv6_range_for_the_ipv4_flags_is_told_in_one_line(
    meshnet: Callable[..., Run], tmp_path: Path, flag: str
) -> None:
    run = meshnet(
        "launch", flag, "fd00::/64", "--state-dir", str(tmp_path), "--api-socket", str(tmp_path)
    )
    line = one_line_error(run, flag, f"IPv6 ones with {flag}6")
    assert "octets" not in line


# 7. --name is the peer name, as Weave's.
def test_launch_name_is_the_peer_name_kept_in_the_state_dir(
    api: FakeApi, meshnet: Callable[..., Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[Any] = []
    monkeypatch.setattr(ApiClient, "is_ready", lambda _: False)
    monkeypatch.setattr(
        "meshnet.cli.launch._launch_background",
        lambda config, _: started.append(config) or {"name": "aa:bb:cc:00:00:01"},
    )
    state = tmp_path / "state"
    common = ("--state-dir", str(state), "--api-socket", str(tmp_path / "api.sock"))
    run = meshnet("launch", "--name", "AA:BB:CC:00:00:01", *common)
    assert run.code == 0 and len(started) == 1
    assert (state / PEER_NAME_FILE).read_text() == "aa:bb:cc:00:00:01\n"  # what the router loads
    assert meshnet("launch", "--name", "aa:bb:cc:00:00:01", *common).code == 0  # the same: fine
    other = meshnet("launch", "--name", "aa:bb:cc:00:00:02", *common)
    one_line_error(other, "--name aa:bb:cc:00:00:02", "this host is peer aa:bb:cc:00:00:01")
    one_line_error(meshnet("launch", "--name", "h1", *common), "bad peer name 'h1'")
    assert len(started) == 2 and "No such option" not in other.err


# 8. DNS names for any address.
def test_dns_add_and_remove_without_a_container(api: FakeApi, meshnet: Callable[..., Run]) -> None:
    api.answers |= {
        "/dns/add": {"name": "ext.meshnet.local.", "addresses": ["10.1.1.1"]},
        "/dns/remove": {"removed": 1},
    }
    assert (
        meshnet("dns-add", "10.1.1.1", "--hostname", "ext").out == "ext.meshnet.local. 10.1.1.1\n"
    )
    assert meshnet("dns-remove", "10.1.1.1").code == 0
    assert meshnet("dns-add", "10.1.1.1", "c1", "--hostname", "web").code == 0  # as before
    assert api.bodies == [
        {"container": None, "addresses": ["10.1.1.1"], "name": "ext"},
        {"container": None, "addresses": ["10.1.1.1"], "name": None},
        {"container": "c1", "addresses": ["10.1.1.1"], "name": "web"},
    ]
    api.answers["/dns/remove"] = {"removed": 0}
    one_line_error(meshnet("dns-remove", "10.1.1.2"), "no DNS record of 10.1.1.2 matched")


def test_dns_add_takes_ipv6_addresses_and_status_shows_every_listen_address(
    api: FakeApi, meshnet: Callable[..., Run]
) -> None:
    api.answers["/dns/add"] = {"name": "web.meshnet.local.", "addresses": ["10.32.0.5", "fd00::5"]}
    run = meshnet("dns-add", "10.32.0.5", "FD00::5", "c1", "--hostname", "web")
    assert run.out == "web.meshnet.local. 10.32.0.5 fd00::5\n"
    assert api.bodies == [{"container": "c1", "addresses": ["10.32.0.5", "FD00::5"], "name": "web"}]
    bad = meshnet("dns-add", "fd00::5::1", "c1", "--hostname", "x")
    one_line_error(bad, "meshnet: bad address '")
    api.answers["/status/dns"] = {
        "domain": "meshnet.local.",
        "ttl": 30,
        "upstreams": ["[fd00::53]:53"],
        "listen": "10.32.0.1/12",
        "listen_addresses": ["10.32.0.1/12", "fd00::1/64"],
        "port": 53,
        "state": "serving",
        "entries": [
            {
                "peer": "aa:bb:cc:00:00:01",
                "nickname": "h1",
                "local": True,
                "records": [
                    {"name": "web.meshnet.local.", "address": "fd00::5", "container": "c1"}
                ],
            }
        ],
        "resolver": None,
        "server": None,
    }
    out = meshnet("status", "dns").out
    assert "listening on 10.32.0.1:53, [fd00::1]:53" in " ".join(out.split())
    assert "upstream [fd00::53]:53" in out and "fd00::5" in out


# 9. ps with nothing attached.
def test_ps_says_when_nothing_is_attached(api: FakeApi, meshnet: Callable[..., Run]) -> None:
    api.answers["/containers"] = []
    assert meshnet("ps").out == "no container is attached on this host\n"
    assert json.loads(meshnet("ps", "--json").out) == []
    api.answers["/containers"] = [
        {"namespace": "c1", "mac": "aa:bb:cc:dd:ee:01", "addresses": ["10.32.0.5/12"]}
    ]
    assert meshnet("ps").out == "c1 aa:bb:cc:dd:ee:01 10.32.0.5/12\n"


# 10. README points only at what the repository has.
def test_readme_links_resolve_inside_the_repository() -> None:
    root = Path(__file__).parents[2]
    readme = (root / "README.md").read_text()
    assert "DESIGN.md" not in readme and "../shared" not in readme
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if "://" not in target:
            assert (root / target).exists(), target


# 8. `meshnet status ipam` shows the IPv6 ring under the IPv4 one.
def test_status_ipam_shows_both_rings() -> None:
    peer = {
        "name": "00:00:00:00:00:01",
        "nickname": "h1",
        "local": True,
        "ranges": ["10.32.0.0-10.47.255.255"],
        "size": 1 << 20,
        "in_use": 2,
        "share": 1.0,
        "reachable": True,
    }
    ring = {"range": "10.32.0.0/12", "default_subnet": "10.32.0.0/12", "allocated_here": 2}
    data = {
        **ring,
        "mode": "consensus",
        "consensus": "ready",
        "consensus_size": 1,
        "seed": [peer["name"]],
        "peers": [peer],
        "leaving": False,
        "refused_merges": {},
        "ipv6": {
            "range": "fd12:3456:789a::/48",
            "default_subnet": "fd12:3456:789a::/64",
            "consensus": "ready",
            "allocated_here": 1,
            "peers": [
                {
                    **peer,
                    "ranges": ["fd12:3456:789a::-fd12:3456:789a:ffff:ffff:ffff:ffff:ffff"],
                    "size": 1 << 80,
                },
                {**peer, "name": "00:00:00:00:00:02", "local": False, "size": 3 << 78},
            ],
        },
    }

    def shown(data: dict[str, Any]) -> str:
        console = Console(width=200, record=True)
        console.print(_ipam_view(data))
        return console.export_text()

    text = shown(data)
    assert "range 10.32.0.0/12" in text and "IPv6 range fd12:3456:789a::/48" in text
    assert "default subnet fd12:3456:789a::/64" in text
    # IPv4 counts exact, an IPv6 share's 2^80 (24 digits) as a power of two.
    assert " 1048576 " in text and " 2^80 " in text and " ~2^79.6 " in text
    assert str(1 << 80) not in text
    idle = {**data, "ipv6": {**data["ipv6"], "peers": [], "range": None}}
    assert "IPv6 ring: a ULA /48 derived from the seed, not divided yet" in shown(idle)
    assert "IPv6" not in shown({**data, "ipv6": None})
