"""The CNI plugin without a daemon: the spec's parsing, results and errors, and each command
against a fake of the daemon's API."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from meshnet.api.app import HttpError, _owner
from meshnet.config import DEFAULT_API_SOCKET
from meshnet.integrations.cni import plugin, spec
from meshnet.integrations.cni.daemon import DaemonError, DaemonUnreachable
from meshnet.integrations.cni.spec import CniError, Code, Command

NETNS = "/var/run/netns/cni-unit-test"  # what the plugin sees of the file system: faked below


@pytest.fixture(autouse=True)
def fake_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only NETNS exists, and it is not the plugin's own namespace."""
    monkeypatch.setattr(plugin, "_is_namespace", lambda path: path == NETNS)
    monkeypatch.setattr(plugin, "_same_namespace", lambda a, b: a == b == NETNS)


def config(version: str = "1.1.0", **extra: Any) -> bytes:
    return json.dumps(
        {"cniVersion": version, "name": "mesh", "type": "meshnet-cni", **extra}
    ).encode()


def environ(command: str, **extra: str) -> dict[str, str]:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c0ffee",
        "CNI_NETNS": NETNS,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v != "-"}


ATTACHED = {
    "namespace": NETNS,
    "ifname": "eth0",
    "host_ifname": "vethwe1234abcd",
    "mac": "02:11:22:33:44:55",
    "mtu": 1354,
    "addresses": ["10.32.0.7/12"],
}

ADDRESS6 = "fd12:3456:789a::7/64"  # what the fake daemon gives for any IPv6 subnet


class FakeDaemon:
    """The daemon's API as the plugin uses it; records every request."""

    def __init__(self, *, down: bool = False, dns: bool = True) -> None:
        self.down = down
        self.dns = dns
        self.calls: list[tuple[str, str, dict[str, Any] | None]] = []
        self.owners: dict[str, list[str]] = {}
        self.containers = [ATTACHED]
        self.refuse: dict[str, tuple[int, str]] = {}

    def factory(self, socket_path: Path, timeout: float) -> FakeDaemon:
        self.socket_path, self.timeout = socket_path, timeout
        return self

    def _answer(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        self.calls.append((method, path, body))
        if self.down:
            raise DaemonUnreachable("meshnet is not running (no API socket at /x)")
        if path in self.refuse:
            raise DaemonError(*self.refuse[path])
        if path == "/attach":
            assert body is not None
            specs = [a.removeprefix("net:") for a in body["addresses"]]
            addresses = [ADDRESS6 if a == "default6" or ":" in a else "10.32.0.7/12" for a in specs]
            self.owners[body["owner"]] = [a.split("/")[0] for a in addresses]
            return {**ATTACHED, "addresses": addresses}
        if path == "/detach":
            assert body is not None
            return {"detached": True, "released": self.owners.pop(body["owner"], [])}
        if path == "/status/dns":
            if not self.dns:
                raise DaemonError(404, "no such endpoint: /status/dns")
            return {
                "domain": "meshnet.local.",
                "listen": "10.32.0.1/12",
                "listen_addresses": ["10.32.0.1/12", "fd12:3456:789a::1/64"],
                "port": 53,
            }
        if path == "/ipam/owners":
            assert body is not None
            return {
                "owners": {o: a for o, a in self.owners.items() if o.startswith(body["prefix"])}
            }
        if path == "/containers":
            return self.containers
        return {}

    def get(self, path: str) -> Any:
        return self._answer("GET", path, None)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._answer("POST", path, body)


def invoke(
    env: dict[str, str], stdin: bytes, daemon: FakeDaemon | None = None
) -> tuple[int, dict[str, Any] | None]:
    daemon = daemon or FakeDaemon()
    status, out = plugin.run(env, stdin, daemon.factory)  # type: ignore[arg-type]
    return status, json.loads(out) if out else None


# --- environment ------------------------------------------------------------------------------


def test_every_missing_variable_is_named_with_code_4() -> None:
    status, out = invoke(environ("ADD", CNI_CONTAINERID="-", CNI_NETNS="-"), config())
    assert status == 1 and out is not None
    assert out["code"] == Code.INVALID_ENVIRONMENT == 4
    assert "CNI_CONTAINERID" in out["msg"] and "CNI_NETNS" in out["msg"]
    assert out["cniVersion"] == "1.1.0"


def test_missing_command_and_unknown_command_are_code_4() -> None:
    assert invoke({}, config())[1] == {
        "cniVersion": "1.1.0",
        "code": 4,
        "msg": "required env variables [CNI_COMMAND] missing",
    }
    status, out = invoke(environ("FROB"), config())
    assert status == 1 and out is not None and out["code"] == 4 and "FROB" in out["msg"]


def test_del_needs_no_netns_but_add_does() -> None:
    spec.parse_environment(environ("DEL", CNI_NETNS="-"))
    with pytest.raises(CniError) as e:
        spec.parse_environment(environ("ADD", CNI_NETNS=""))
    assert e.value.code == Code.INVALID_ENVIRONMENT


@pytest.mark.parametrize("bad", ["-x", "a b", "a:b", "a/b", ""])
def test_container_ids_follow_the_spec(bad: str) -> None:
    with pytest.raises(CniError) as e:
        spec.parse_environment(environ("ADD", CNI_CONTAINERID=bad or "-"))
    assert e.value.code == Code.INVALID_ENVIRONMENT


@pytest.mark.parametrize("bad", ["a" * 16, ".", "..", "e:0", "e/0", "e 0"])
def test_interface_names_follow_linux(bad: str) -> None:
    with pytest.raises(CniError) as e:
        spec.parse_environment(environ("ADD", CNI_IFNAME=bad))
    assert e.value.code == Code.INVALID_ENVIRONMENT


def test_cni_args() -> None:
    env = spec.parse_environment(environ("ADD", CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=web;X="))
    assert env.args == {"IgnoreUnknown": "1", "K8S_POD_NAME": "web", "X": ""}
    with pytest.raises(CniError) as e:
        spec.parse_args("FOO")
    assert e.value.code == Code.INVALID_ENVIRONMENT


# --- configuration ----------------------------------------------------------------------------


def test_malformed_config_is_code_6_and_a_nameless_one_7() -> None:
    assert invoke(environ("ADD"), b"{not json")[1]["code"] == 6  # type: ignore[index]
    assert invoke(environ("ADD"), b"[1, 2]")[1]["code"] == 6  # type: ignore[index]
    nameless = json.dumps({"cniVersion": "1.0.0", "type": "meshnet-cni"}).encode()
    status, out = invoke(environ("ADD"), nameless)
    assert status == 1 and out == {
        "cniVersion": "1.0.0",
        "code": 7,
        "msg": "missing network name",
    }
    assert invoke(environ("ADD"), config(name="a:b"))[1]["code"] == 7  # type: ignore[index]


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("subnet", "10.40.0.0/33", 7),
        ("subnet", "fd00::/129", 7),
        ("subnet", [], 7),
        ("subnet", ["10.40.0.0/16", 7], 7),
        ("subnet", ["10.40.0.0/16", "default"], 7),  # two IPv4 subnets
        ("subnet", ["fd00::/64", "default6"], 7),  # two IPv6 ones
        ("subnet", 42, 7),
        ("apiSocket", "relative.sock", 7),
        ("timeout", 0, 7),
        ("dns", {"nameservers": "10.0.0.1"}, 6),
        ("prevResult", {"ips": [{"address": "nonsense"}]}, 6),
        ("ipam", {"type": "host-local"}, 2),
        ("ipMasq", True, 2),
    ],
)
def test_bad_fields(field: str, value: Any, code: int) -> None:
    status, out = invoke(environ("ADD"), config(**{field: value}))
    assert status == 1 and out is not None and out["code"] == code, out


def test_unknown_and_missing_versions_are_code_1() -> None:
    for stdin in (
        config("2.0.0"),
        config("0.2.0"),
        json.dumps({"name": "n", "type": "t"}).encode(),
    ):
        status, out = invoke(environ("ADD"), stdin)
        assert status == 1 and out is not None and out["code"] == Code.INCOMPATIBLE_VERSION
        assert out["cniVersion"] == "1.1.0"  # not one we could answer in
    assert invoke(environ("ADD"), config("one"))[1]["code"] == 6  # type: ignore[index]


def test_commands_need_their_versions() -> None:
    for command, old in (("CHECK", "0.3.1"), ("STATUS", "1.0.0"), ("GC", "1.0.0")):
        status, out = invoke(environ(command), config(old, prevResult={"cniVersion": old}))
        assert status == 1 and out is not None and out["code"] == 1, (command, out)
        assert out["cniVersion"] == old


def test_config_values() -> None:
    conf = spec.parse_config(
        config(
            "1.0.0",
            apiSocket="/tmp/x.sock",
            subnet="10.40.0.0/16",
            timeout=5,
            dns={"nameservers": ["10.0.0.2"], "search": ["a.b"]},
            args={"anything": True},
            runtimeConfig={"portMappings": []},
        ),
        Command.ADD,
    )
    assert conf.api_socket == Path("/tmp/x.sock")
    assert conf.subnets == (ipaddress.IPv4Network("10.40.0.0/16"),) and conf.timeout == 5.0
    assert conf.dns == spec.Dns(nameservers=("10.0.0.2",), search=("a.b",))
    assert spec.parse_config(config(), Command.ADD).api_socket == DEFAULT_API_SOCKET


def test_version_echoes_the_input() -> None:
    status, out = invoke({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "0.4.0"}')
    assert status == 0 and out == {
        "cniVersion": "0.4.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }
    assert invoke({"CNI_COMMAND": "VERSION"}, b"")[1]["cniVersion"] == "1.1.0"  # type: ignore[index]


# --- results ----------------------------------------------------------------------------------


def test_add_result_in_every_format() -> None:
    result = spec.add_result(ATTACHED, NETNS, dns=spec.Dns(("10.32.0.1",), "meshnet.local"))
    v11 = result.encode("1.1.0")
    assert v11 == {
        "cniVersion": "1.1.0",
        "interfaces": [
            {"name": "vethwe1234abcd"},
            {"name": "eth0", "mac": "02:11:22:33:44:55", "mtu": 1354, "sandbox": NETNS},
        ],
        "ips": [{"address": "10.32.0.7/12", "interface": 1}],
        "routes": [{"dst": "10.32.0.0/12"}],
        "dns": {"nameservers": ["10.32.0.1"], "domain": "meshnet.local"},
    }
    v10 = result.encode("1.0.0")
    assert "mtu" not in v10["interfaces"][1] and v10["ips"] == v11["ips"]
    v04 = result.encode("0.4.0")
    assert v04["ips"] == [{"version": "4", "address": "10.32.0.7/12", "interface": 1}]
    assert v04["interfaces"][1]["sandbox"] == NETNS
    # Each reads back as what it was.
    for version in ("0.4.0", "1.0.0"):
        assert spec.parse_result(result.encode(version)).encode(version) == result.encode(version)


def test_a_route_to_the_routers_dns_server_outside_the_containers_subnet() -> None:
    in_subnet = {**ATTACHED, "addresses": ["10.32.1.7/24"]}
    dns = spec.Dns(("10.32.0.1",), "meshnet.local")
    result = spec.add_result(in_subnet, NETNS, dns=dns, dns_on_overlay=True)
    assert result.routes == (spec.Route("10.32.1.0/24"), spec.Route("10.32.0.1/32"))
    # Inside the subnet, or a server the configuration named (not on the overlay): no route.
    assert spec.add_result(ATTACHED, NETNS, dns=dns, dns_on_overlay=True).routes == (
        spec.Route("10.32.0.0/12"),
    )
    assert spec.add_result(in_subnet, NETNS, dns=dns).routes == (spec.Route("10.32.1.0/24"),)


def test_a_previous_result_keeps_its_indexes() -> None:
    previous = spec.Result(
        interfaces=(spec.Interface("lo", sandbox=NETNS),),
        ips=(spec.IPConfig("127.0.0.1/8", 0),),
        dns=spec.Dns(("1.1.1.1",)),
    )
    ours = spec.add_result(ATTACHED, NETNS, dns=spec.Dns())
    merged = ours.after(previous)
    assert [i.name for i in merged.interfaces] == ["lo", "vethwe1234abcd", "eth0"]
    assert [ip.interface for ip in merged.ips] == [0, 2]
    assert merged.dns == previous.dns


def test_daemon_dns() -> None:
    status = {"domain": "meshnet.local.", "listen": "10.32.0.1/12", "port": 53}
    assert spec.daemon_dns(status) == spec.Dns(("10.32.0.1",), "meshnet.local", ("meshnet.local",))
    assert spec.daemon_dns({**status, "port": 5353}).nameservers == ()
    assert spec.daemon_dns({**status, "listen": None}).nameservers == ()
    assert spec.daemon_dns(None) == spec.Dns()


def test_owners_and_gc_selection() -> None:
    assert spec.owner_id("mesh", "c1", "eth0") == "cni:mesh:c1:eth0"
    owners = ["cni:mesh:c1:eth0", "cni:mesh:c1:eth1", "cni:mesh:c2:eth0", "cni:other:c9:eth0"]
    assert spec.stale_owners("mesh", owners, [("c1", "eth0")]) == [
        "cni:mesh:c1:eth1",
        "cni:mesh:c2:eth0",
    ]
    assert spec.stale_owners("mesh", owners, []) == owners[:3]


def test_the_api_accepts_only_well_formed_owners() -> None:
    assert _owner({}) is None
    assert _owner({"owner": "cni:mesh:c1:eth0"}) == "cni:mesh:c1:eth0"
    for bad in ("nocolon", "netns:1:2", "dns:aa", "cni:with space", 42, "Cni:x"):
        with pytest.raises(HttpError):
            _owner({"owner": bad})


# --- commands against a fake daemon -----------------------------------------------------------


def test_add_attaches_under_the_owner_and_reports() -> None:
    daemon = FakeDaemon()
    stdin = config("1.0.0", apiSocket="/tmp/h1.sock", subnet="10.40.0.0/16")
    status, out = invoke(environ("ADD", CNI_ARGS="K8S_POD_NAME=web"), stdin, daemon)
    assert status == 0 and out is not None
    assert daemon.socket_path == Path("/tmp/h1.sock")
    assert daemon.calls[0] == (
        "POST",
        "/attach",
        {
            "container": NETNS,
            "ifname": "eth0",
            "owner": "cni:mesh:c0ffee:eth0",
            "addresses": ["net:10.40.0.0/16"],
            "name": "web",
        },
    )
    assert out["cniVersion"] == "1.0.0"
    assert out["ips"] == [{"address": "10.32.0.7/12", "interface": 1}]
    assert out["dns"] == {
        "nameservers": ["10.32.0.1"],
        "domain": "meshnet.local",
        "search": ["meshnet.local"],
    }


def test_add_without_a_daemon_says_try_again_later() -> None:
    status, out = invoke(environ("ADD"), config(), FakeDaemon(down=True))
    assert status == 1 and out is not None and out["code"] == Code.TRY_AGAIN_LATER == 11


def test_add_refused_by_the_daemon_carries_its_reason() -> None:
    daemon = FakeDaemon()
    daemon.refuse["/attach"] = (400, "address 10.32.0.7 is already in use")
    status, out = invoke(environ("ADD"), config(), daemon)
    assert status == 1 and out == {
        "cniVersion": "1.1.0",
        "code": 100,
        "msg": "address 10.32.0.7 is already in use",
    }


def test_add_to_a_missing_namespace_is_an_unknown_container() -> None:
    status, out = invoke(environ("ADD", CNI_NETNS="/nonexistent/ns"), config())
    assert status == 1 and out is not None and out["code"] == Code.UNKNOWN_CONTAINER


def test_add_refuses_the_hosts_own_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real file system: our own namespace exists
    status, out = invoke(environ("ADD", CNI_NETNS="/proc/self/ns/net"), config())
    assert status == 1 and out is not None and out["code"] == Code.INVALID_ENVIRONMENT
    assert "host's own" in out["details"]


def test_an_unexpected_answer_is_still_a_spec_error() -> None:
    daemon = FakeDaemon()
    daemon.containers = None  # type: ignore[assignment]
    _, added = invoke(environ("ADD"), config(), daemon)
    status, out = invoke(environ("CHECK"), config(prevResult=added), daemon)
    assert status == 1 and out is not None and out["code"] == Code.INTERNAL == 999
    assert out["details"].startswith("TypeError")


def test_status_asks_with_a_short_timeout() -> None:
    daemon = FakeDaemon()
    invoke({"CNI_COMMAND": "STATUS"}, config(timeout=120), daemon)
    assert daemon.timeout == plugin.STATUS_TIMEOUT
    invoke(environ("ADD"), config(timeout=120), daemon)
    assert daemon.timeout == 120


def test_add_without_dns_on_the_daemon_uses_the_configs_or_none() -> None:
    status, out = invoke(environ("ADD"), config(), FakeDaemon(dns=False))
    assert status == 0 and out is not None and out["dns"] == {}
    status, out = invoke(environ("ADD"), config(dns={"nameservers": ["9.9.9.9"]}), FakeDaemon())
    assert out is not None and out["dns"] == {"nameservers": ["9.9.9.9"]}


def test_del_is_quiet_idempotent_and_works_without_the_namespace() -> None:
    daemon = FakeDaemon()
    invoke(environ("ADD"), config(), daemon)
    for env in (
        environ("DEL"),
        environ("DEL", CNI_NETNS="/gone/ns"),
        environ("DEL", CNI_NETNS="-"),
    ):
        assert invoke(env, config(), daemon) == (0, None)
    detaches = [body for _, path, body in daemon.calls if path == "/detach"]
    assert detaches[0] == {"owner": "cni:mesh:c0ffee:eth0", "ifname": "eth0", "container": NETNS}
    assert detaches[1] == detaches[2] == {"owner": "cni:mesh:c0ffee:eth0", "ifname": "eth0"}


def test_check_compares_prev_result_with_the_daemon() -> None:
    daemon = FakeDaemon()
    _, added = invoke(environ("ADD"), config(), daemon)
    assert invoke(environ("CHECK"), config(prevResult=added), daemon) == (0, None)
    # The address lost from IPAM, a different MAC, no attachment at all: each fails.
    daemon.owners.clear()
    status, out = invoke(environ("CHECK"), config(prevResult=added), daemon)
    assert status == 1 and out is not None and out["code"] == Code.CHECK_FAILED
    assert "no longer holds 10.32.0.7" in out["msg"]
    daemon.owners["cni:mesh:c0ffee:eth0"] = ["10.32.0.7"]
    daemon.containers = [{**ATTACHED, "mac": "02:00:00:00:00:99"}]
    assert invoke(environ("CHECK"), config(prevResult=added), daemon)[1]["code"] == 101  # type: ignore[index]
    daemon.containers = []
    _, out = invoke(environ("CHECK"), config(prevResult=added), daemon)
    assert out is not None and out["code"] == 101 and "not attached" in out["msg"]
    # CHECK without prevResult: the configuration is invalid.
    assert invoke(environ("CHECK"), config(), daemon)[1]["code"] == 7  # type: ignore[index]


def test_status() -> None:
    assert invoke({"CNI_COMMAND": "STATUS"}, config()) == (0, None)
    status, out = invoke({"CNI_COMMAND": "STATUS"}, config(), FakeDaemon(down=True))
    assert status == 1 and out is not None and out["code"] == Code.PLUGIN_NOT_AVAILABLE == 50
    daemon = FakeDaemon()
    daemon.refuse["/status/ipam"] = (409, "this router runs without IPAM")
    _, out = invoke({"CNI_COMMAND": "STATUS"}, config(), daemon)
    assert out is not None and out["code"] == 50 and "without IPAM" in out["details"]


def test_gc_releases_only_this_networks_stale_attachments() -> None:
    daemon = FakeDaemon()
    daemon.owners = {
        "cni:mesh:keep:eth0": ["10.32.0.1"],
        "cni:mesh:gone:eth0": ["10.32.0.2"],
        "cni:other:gone:eth0": ["10.32.0.3"],
    }
    valid = [{"containerID": "keep", "ifname": "eth0"}]
    stdin = config(**{"cni.dev/valid-attachments": valid})
    assert invoke({"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, stdin, daemon) == (0, None)
    assert sorted(daemon.owners) == ["cni:mesh:keep:eth0", "cni:other:gone:eth0"]
    # Without the list nothing says what is valid: refused, nothing released.
    status, out = invoke({"CNI_COMMAND": "GC"}, config(), daemon)
    assert status == 1 and out is not None and out["code"] == 7
    assert len(daemon.owners) == 2


# --- both families ----------------------------------------------------------------------------


def test_subnets_of_both_families_and_the_default_ones_are_read() -> None:
    def subnets(value: Any) -> tuple[Any, ...]:
        return spec.parse_config(config(subnet=value), Command.ADD).subnets

    assert spec.parse_config(config(), Command.ADD).subnets == (spec.DefaultSubnet.IPV4,)
    assert subnets("fd00::/64") == (ipaddress.IPv6Network("fd00::/64"),)
    assert subnets(["default", "default6"]) == (spec.DefaultSubnet.IPV4, spec.DefaultSubnet.IPV6)
    both = subnets(["fd00:0:0:5::/64", "10.40.0.0/16"])
    assert spec.attach_specs(both) == ["net:fd00:0:0:5::/64", "net:10.40.0.0/16"]
    assert spec.attach_specs(subnets("default6")) == ["net:default6"]


def test_a_dual_stack_add_lists_both_families_with_routes_and_dns_of_both() -> None:
    daemon = FakeDaemon()
    status, out = invoke(environ("ADD"), config(subnet=["default", "default6"]), daemon)
    assert status == 0 and out is not None
    assert daemon.calls[0][2]["addresses"] == ["net:default", "net:default6"]  # type: ignore[index]
    assert out["ips"] == [
        {"address": "10.32.0.7/12", "interface": 1},
        {"address": ADDRESS6, "interface": 1},
    ]
    # Both DNS addresses lie in the container's subnets: no host route to either.
    assert out["routes"] == [{"dst": "10.32.0.0/12"}, {"dst": "fd12:3456:789a::/64"}]
    assert out["dns"]["nameservers"] == ["10.32.0.1", "fd12:3456:789a::1"]
    # The older formats say each address's version.
    _, old = invoke(environ("ADD"), config("0.4.0", subnet=["default", "default6"]), daemon)
    assert old is not None and [ip["version"] for ip in old["ips"]] == ["4", "6"]


def test_an_ipv6_only_add_gets_only_the_ipv6_dns_address_and_a_route_to_it_if_outside() -> None:
    daemon = FakeDaemon()
    status, out = invoke(environ("ADD"), config(subnet="fd12:3456:789a:5::/64"), daemon)
    assert status == 0 and out is not None
    assert daemon.calls[0][2]["addresses"] == ["net:fd12:3456:789a:5::/64"]  # type: ignore[index]
    assert [ip["address"] for ip in out["ips"]] == [ADDRESS6]
    assert out["dns"]["nameservers"] == ["fd12:3456:789a::1"]
    assert {"dst": "fd12:3456:789a::1/128"} not in out["routes"]  # in the fake's /64: none
    lone = {**ATTACHED, "addresses": ["fd12:3456:789a:5::7/64"]}
    dns = spec.Dns(("10.32.0.1", "fd12:3456:789a::1"))
    result = spec.add_result(lone, NETNS, dns=dns, dns_on_overlay=True)
    assert result.routes == (
        spec.Route("fd12:3456:789a:5::/64"),
        spec.Route("fd12:3456:789a::1/128"),
    )
    assert result.dns.nameservers == ("fd12:3456:789a::1",)
    # A configuration's own DNS is reported as given, whatever the families.
    assert spec.add_result(lone, NETNS, dns=dns).dns == dns


def test_check_and_del_cover_both_families() -> None:
    daemon = FakeDaemon()
    stdin = config(subnet=["default", "default6"])
    _, added = invoke(environ("ADD"), stdin, daemon)
    daemon.containers = [{**ATTACHED, "addresses": ["10.32.0.7/12", ADDRESS6]}]
    assert invoke(environ("CHECK"), config(prevResult=added), daemon) == (0, None)
    daemon.owners["cni:mesh:c0ffee:eth0"] = ["10.32.0.7"]  # IPAM lost the IPv6 address
    _, out = invoke(environ("CHECK"), config(prevResult=added), daemon)
    assert out is not None and out["code"] == 101
    assert "no longer holds fd12:3456:789a::7" in out["msg"]
    daemon.owners["cni:mesh:c0ffee:eth0"] = ["10.32.0.7", "fd12:3456:789a::7"]
    daemon.containers = [ATTACHED]  # the interface lost it
    _, out = invoke(environ("CHECK"), config(prevResult=added), daemon)
    assert out is not None and out["code"] == 101 and ADDRESS6 in out["msg"]
    assert invoke(environ("DEL"), stdin, daemon) == (0, None)
    assert daemon.owners == {}  # the daemon's detach releases every family by the key


def test_daemon_dns_lists_every_address_ipv4_first() -> None:
    status = {
        "domain": "meshnet.local.",
        "listen": "fd00::1/64",
        "listen_addresses": ["fd00::1/64", "10.32.0.1/12"],
        "port": 53,
    }
    assert spec.daemon_dns(status).nameservers == ("10.32.0.1", "fd00::1")
    older = {"domain": "meshnet.local.", "listen": "10.32.0.1/12", "port": 53}
    assert spec.daemon_dns(older).nameservers == ("10.32.0.1",)
