"""`meshnet-cni` run exactly as a container runtime runs a CNI plugin, against a lab's routers.

The runtime here does what libcni does with a conflist (without its cache files): it finds each
plugin's executable by ``type`` on CNI_PATH, runs it in the host's network namespace with the
``CNI_*`` variables and the plugin's configuration (the list's ``cniVersion`` and ``name``
merged in, ``prevResult`` and ``runtimeConfig`` added) on stdin, and reads its stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv6Network, ip_interface
from pathlib import Path
from typing import Any

import pytest

from meshnet.api.client import ApiClient
from meshnet.dataplane.kernel import netlink
from meshnet.lab import lab as lablib
from meshnet.lab import topology
from tests.conftest import unique_lab_name
from tests.net.conftest import can_ping, ns_run
from tests.net.test_mesh import wait_for

EXAMPLE = Path(__file__).parents[2] / "examples" / "cni" / "10-meshnet.conflist"
PLUGIN_DIRS = (Path(sys.executable).parent, Path("/usr/lib/cni"))  # meshnet-cni: in the venv


class PluginFailed(AssertionError):
    def __init__(self, plugin: str, command: str, error: Any) -> None:
        super().__init__(f"{plugin} {command} failed: {error}")
        self.error = error


@dataclass
class Runtime:
    """A container runtime's CNI side for one network configuration list."""

    host_namespace: str
    conflist: dict[str, Any]
    results: dict[tuple[str, str], Any] = field(default_factory=dict)

    def execute(
        self,
        plugin: dict[str, Any],
        command: str,
        *,
        container_id: str = "",
        netns: str = "",
        ifname: str = "",
        args: str = "",
        extra: dict[str, Any] | None = None,
    ) -> tuple[int, Any]:
        conf = {
            **plugin,
            "cniVersion": self.conflist["cniVersion"],
            "name": self.conflist["name"],
            **(extra or {}),
        }
        env = {
            "PATH": os.environ["PATH"],
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_ARGS": args,
            "CNI_PATH": ":".join(map(str, PLUGIN_DIRS)),
        }
        return run_plugin(
            self.host_namespace,
            find_plugin(plugin["type"]),
            {k: v for k, v in env.items() if v},
            json.dumps(conf).encode(),
        )

    def _each(self, command: str, plugins: list[dict[str, Any]], **kwargs: Any) -> None:
        for plugin in plugins:
            status, out = self.execute(plugin, command, **kwargs)
            if status != 0:
                raise PluginFailed(plugin["type"], command, out)

    def add(self, container_id: str, netns: str, ifname: str = "eth0", args: str = "") -> Any:
        previous = None
        for plugin in self.conflist["plugins"]:
            extra = {"prevResult": previous} if previous is not None else None
            status, out = self.execute(
                plugin,
                "ADD",
                container_id=container_id,
                netns=netns,
                ifname=ifname,
                args=args,
                extra=extra,
            )
            if status != 0:
                raise PluginFailed(plugin["type"], "ADD", out)
            previous = out
        self.results[(container_id, ifname)] = previous
        return previous

    def check(self, container_id: str, netns: str, ifname: str = "eth0") -> None:
        self._each(
            "CHECK",
            self.conflist["plugins"],
            container_id=container_id,
            netns=netns,
            ifname=ifname,
            extra={"prevResult": self.results[(container_id, ifname)]},
        )

    def delete(self, container_id: str, netns: str, ifname: str = "eth0") -> None:
        previous = self.results.get((container_id, ifname))
        self._each(
            "DEL",
            list(reversed(self.conflist["plugins"])),
            container_id=container_id,
            netns=netns,
            ifname=ifname,
            extra={"prevResult": previous} if previous is not None else None,
        )
        self.results.pop((container_id, ifname), None)

    def status(self) -> None:
        self._each("STATUS", self.conflist["plugins"])

    def gc(self) -> None:
        valid = [{"containerID": c, "ifname": i} for c, i in self.results]
        self._each("GC", self.conflist["plugins"], extra={"cni.dev/valid-attachments": valid})


def find_plugin(kind: str) -> Path:
    for directory in PLUGIN_DIRS:
        if (directory / kind).is_file():
            return directory / kind
    raise AssertionError(f"no CNI plugin {kind} in {PLUGIN_DIRS} (pip install -e . first?)")


def run_plugin(
    host_namespace: str, executable: Path, env: dict[str, str], stdin: bytes
) -> tuple[int, Any]:
    """Run a plugin in the host's namespace: its exit status and its stdout as JSON (or None)."""
    proc = subprocess.run(
        ["ip", "netns", "exec", host_namespace, str(executable)],
        input=stdin,
        env=env,
        capture_output=True,
        timeout=90,
    )
    out = proc.stdout.decode().strip()
    return proc.returncode, json.loads(out) if out else None


# --- the lab ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[dict[str, Any]]:
    """Two hosts in a line, a container on each; removed after the module, pass or fail."""
    name = unique_lab_name()
    try:
        lablib.up(name, topology.builtin("line", 2, 1))
        yield lablib.status(name)
    finally:
        if (lablib.lab_root() / name).exists():
            lablib.down(name)


@pytest.fixture
def new_netns(lab: dict[str, Any]) -> Iterator[Callable[[], str]]:
    """Makes fresh container namespaces, journalled in the lab (so `lab down` removes them
    whatever happens) and removed after the test; given as paths, as runtimes pass them."""
    made: list[str] = []

    def make() -> str:
        namespace = f"{lablib.namespace_prefix(lab['name'])}cni{uuid.uuid4().hex[:6]}"
        lablib.Journal(Path(lab["directory"]) / "journal").record("netns", namespace)
        netlink.create_namespace(namespace)
        made.append(namespace)
        return str(netlink.NETNS_DIR / namespace)

    yield make
    for namespace in made:
        netlink.remove_namespace(namespace)


def host(lab: dict[str, Any], name: str) -> dict[str, Any]:
    return next(h for h in lab["hosts"] if h["name"] == name)


def container(lab: dict[str, Any], host_name: str) -> dict[str, Any]:
    return next(c for c in lab["containers"] if c["host"] == host_name)


def meshnet_only(
    lab: dict[str, Any], network: str, version: str = "1.1.0", on: str = "h1"
) -> Runtime:
    plugin = {"type": "meshnet-cni", "apiSocket": host(lab, on)["api_socket"]}
    return Runtime(
        host(lab, on)["namespace"],
        {"cniVersion": version, "name": network, "plugins": [plugin]},
    )


def owners(lab: dict[str, Any], prefix: str) -> dict[str, list[str]]:
    client = ApiClient(Path(host(lab, "h1")["api_socket"]))
    found: dict[str, list[str]] = client.post("/ipam/owners", {"prefix": prefix})["owners"]
    return found


def lookup(lab: dict[str, Any], host_name: str, name: str) -> list[str]:
    client = ApiClient(Path(host(lab, host_name)["api_socket"]))
    addresses: list[str] = client.post("/dns/lookup", {"name": name})["addresses"]
    return addresses


def new_id() -> str:
    return "c" + uuid.uuid4().hex[:12]


# --- the tests --------------------------------------------------------------------------------


def test_add_check_status_del_and_the_pod_reaches_another_host(
    lab: dict[str, Any], new_netns: Callable[[], str]
) -> None:
    netns = new_netns()
    runtime = meshnet_only(lab, "mesh")
    cid = new_id()
    runtime.status()
    result = runtime.add(cid, netns, args=f"IgnoreUnknown=1;K8S_POD_NAME=pod-{cid}")

    assert result["cniVersion"] == "1.1.0"
    inner = result["interfaces"][1]
    assert inner["name"] == "eth0" and inner["sandbox"] == netns and inner["mtu"] >= 576
    [ip] = result["ips"]
    assert ip["interface"] == 1 and "version" not in ip
    address = ip["address"].split("/")[0]
    assert result["routes"] == [{"dst": "10.32.0.0/12"}]
    h1_dns = ApiClient(Path(host(lab, "h1")["api_socket"])).get("/status/dns")
    assert result["dns"]["nameservers"] == [h1_dns["listen"].split("/")[0]]
    assert result["dns"]["search"] == ["meshnet.local"]

    # The namespace is on the overlay: it reaches h2's container, and h2 resolves its name.
    namespace = Path(netns).name
    shown = ns_run(namespace, "ip", "-o", "addr", "show", "eth0").stdout
    assert ip["address"] in shown and inner["mac"] in ns_run(namespace, "ip", "link").stdout
    remote = container(lab, "h2")["addresses"][0].split("/")[0]
    assert wait_for(lambda: can_ping(namespace, remote), timeout=10, what="ping h2's container")
    assert can_ping(container(lab, "h2")["namespace"], address)
    assert wait_for(lambda: lookup(lab, "h2", f"pod-{cid}") == [address], timeout=10)
    assert owners(lab, "cni:mesh:") == {f"cni:mesh:{cid}:eth0": [address]}

    runtime.check(cid, netns)

    # CHECK notices what went missing: the address gone from the interface.
    ns_run(namespace, "ip", "addr", "del", ip["address"], "dev", "eth0")
    with pytest.raises(PluginFailed) as failed:
        runtime.check(cid, netns)
    assert failed.value.error["code"] == 101 and address in failed.value.error["msg"]

    runtime.delete(cid, netns)
    assert "eth0" not in ns_run(namespace, "ip", "link").stdout
    assert owners(lab, "cni:mesh:") == {}
    assert wait_for(lambda: lookup(lab, "h2", f"pod-{cid}") == [], timeout=10)
    runtime.delete(cid, netns)  # DEL is idempotent


def test_a_pod_in_a_subnet_of_its_own_resolves_names_through_its_hosts_dns(
    lab: dict[str, Any], new_netns: Callable[[], str]
) -> None:
    netns = new_netns()
    runtime = meshnet_only(lab, "grouped")
    runtime.conflist["plugins"][0]["subnet"] = "10.32.6.0/24"
    cid = new_id()
    result = runtime.add(cid, netns)
    [server] = result["dns"]["nameservers"]
    assert result["routes"] == [{"dst": "10.32.6.0/24"}, {"dst": f"{server}/32"}]
    namespace = Path(netns).name
    assert f"{server} dev eth0" in ns_run(namespace, "ip", "-4", "route").stdout
    remote = container(lab, "h2")["name"]
    answer = ns_run(namespace, "dig", "+short", "+time=2", "+tries=2", f"@{server}",
                    f"{remote}.meshnet.local")  # fmt: skip
    assert answer.stdout.strip() == container(lab, "h2")["addresses"][0].split("/")[0], answer
    runtime.delete(cid, netns)


def test_del_releases_the_address_when_the_namespace_is_gone(
    lab: dict[str, Any], new_netns: Callable[[], str]
) -> None:
    netns = new_netns()
    runtime = meshnet_only(lab, "gone", version="0.4.0")
    cid = new_id()
    result = runtime.add(cid, netns)
    assert result["ips"][0]["version"] == "4"  # the 0.4.0 format
    assert list(owners(lab, "cni:gone:")) == [f"cni:gone:{cid}:eth0"]
    netlink.remove_namespace(Path(netns).name)  # the veth goes with it
    runtime.delete(cid, netns)
    assert owners(lab, "cni:gone:") == {}
    # DEL without CNI_NETNS at all is fine too.
    status, out = runtime.execute(
        runtime.conflist["plugins"][0], "DEL", container_id=cid, ifname="eth0"
    )
    assert (status, out) == (0, None)


def test_gc_releases_what_the_runtime_no_longer_knows(
    lab: dict[str, Any], new_netns: Callable[[], str]
) -> None:
    runtime = meshnet_only(lab, "gcnet")
    kept, lost = new_id(), new_id()
    kept_ns, lost_ns = new_netns(), new_netns()
    runtime.add(kept, kept_ns)
    runtime.add(lost, lost_ns)
    other = meshnet_only(lab, "other")
    other.add(new_id(), new_netns())
    assert len(owners(lab, "cni:gcnet:")) == 2

    runtime.results.pop((lost, "eth0"))  # the runtime lost track of it (say, a crash)
    runtime.gc()
    assert list(owners(lab, "cni:gcnet:")) == [f"cni:gcnet:{kept}:eth0"]
    assert len(owners(lab, "cni:other:")) == 1  # another network's attachments stay
    runtime.check(kept, kept_ns)


def test_the_example_conflist_chains_tuning_after_ours(
    lab: dict[str, Any], new_netns: Callable[[], str]
) -> None:
    conflist = json.loads(EXAMPLE.read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["meshnet-cni", "tuning"]
    conflist["plugins"][0]["apiSocket"] = host(lab, "h1")["api_socket"]
    conflist["plugins"][1]["dataDir"] = str(Path(lab["directory"]) / "tuning")  # not /run/cni
    runtime = Runtime(host(lab, "h1")["namespace"], conflist)
    netns = new_netns()
    namespace = Path(netns).name
    cid = new_id()
    result = runtime.add(cid, netns)

    # tuning (Debian's, spec 1.0.0) found our interface in prevResult and passed the result on.
    assert result["cniVersion"] == "1.0.0" and result["interfaces"][1]["sandbox"] == netns
    arp_notify = ns_run(namespace, "sysctl", "-n", "net.ipv4.conf.eth0.arp_notify")
    assert arp_notify.stdout.strip() == "1"
    assert can_ping(namespace, container(lab, "h2")["addresses"][0].split("/")[0])

    runtime.check(cid, netns)
    runtime.delete(cid, netns)
    assert "eth0" not in ns_run(namespace, "ip", "link").stdout
    assert owners(lab, "cni:meshnet:") == {}


def test_errors_carry_the_specs_codes(lab: dict[str, Any], new_netns: Callable[[], str]) -> None:
    netns = new_netns()
    runtime = meshnet_only(lab, "errs")
    plugin = runtime.conflist["plugins"][0]
    executable = find_plugin("meshnet-cni")
    namespace = runtime.host_namespace
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "x1", "CNI_NETNS": netns, "CNI_IFNAME": "eth0"}
    good = {"cniVersion": "1.1.0", "name": "errs", **plugin}

    def code(env: dict[str, str], stdin: bytes) -> int:
        status, out = run_plugin(namespace, executable, env, stdin)
        assert status != 0 and out is not None and {"code", "msg"} <= set(out), out
        return int(out["code"])

    assert code(env, b'{"cniVersion": "1.1.0", "name": ') == 6  # malformed config
    assert code(env, json.dumps({**good, "name": None}).encode()) == 7
    assert code({k: v for k, v in env.items() if k != "CNI_NETNS"}, json.dumps(good).encode()) == 4
    assert code({**env, "CNI_IFNAME": "much-too-long-name"}, json.dumps(good).encode()) == 4
    assert code(env, json.dumps({**good, "cniVersion": "7.0.0"}).encode()) == 1
    assert (
        code({**env, "CNI_COMMAND": "GC"}, json.dumps({**good, "cniVersion": "1.0.0"}).encode())
        == 1
    )
    # STATUS of a daemon that is not there: not available; ADD: try again later.
    absent = json.dumps({**good, "apiSocket": str(Path(lab["directory"]) / "none.sock")}).encode()
    assert code({"CNI_COMMAND": "STATUS"}, absent) == 50
    assert code(env, absent) == 11
    # Nothing was attached by any of these.
    assert owners(lab, "cni:errs:") == {}
    assert "eth0" not in ns_run(Path(netns).name, "ip", "link").stdout


def test_a_dual_stack_pod_gets_both_families_and_pings_6_a_pod_on_another_host(
    lab: dict[str, Any], new_netns: Callable[[], str]
) -> None:
    """`subnet: [default, default6]`: ADD lists an address, a route and a DNS server of each
    family; CHECK and DEL cover both."""
    h1 = ApiClient(Path(host(lab, "h1")["api_socket"]))
    default6 = IPv6Network(h1.get("/status/ipam")["ipv6"]["default_subnet"])
    servers = [a.split("/")[0] for a in h1.get("/status/dns")["listen_addresses"]]
    runtime, remote = meshnet_only(lab, "dual"), meshnet_only(lab, "dual", on="h2")
    for r in (runtime, remote):
        r.conflist["plugins"][0]["subnet"] = ["default", "default6"]
    netns, remote_netns = new_netns(), new_netns()
    cid, remote_cid = new_id(), new_id()
    result = runtime.add(cid, netns, args=f"K8S_POD_NAME=dual-{cid}")
    remote_result = remote.add(remote_cid, remote_netns, args=f"K8S_POD_NAME=dual-{remote_cid}")

    ip4, ip6 = (ip_interface(ip["address"]) for ip in result["ips"])
    assert (ip4.version, ip6.version) == (4, 6) and ip6.network == default6
    assert all(ip["interface"] == 1 for ip in result["ips"])
    assert result["routes"] == [{"dst": "10.32.0.0/12"}, {"dst": str(default6)}]
    assert result["dns"]["nameservers"] == sorted(servers, key=lambda a: ":" in a)
    assert len(result["dns"]["nameservers"]) == 2  # the router serves on both families
    namespace = Path(netns).name
    shown = ns_run(namespace, "ip", "-o", "addr", "show", "eth0").stdout
    assert str(ip4) in shown and str(ip6) in shown
    assert owners(lab, "cni:dual:") == {f"cni:dual:{cid}:eth0": [str(ip4.ip), str(ip6.ip)]}

    # IPv6 across the hosts, by address and by an AAAA from the router's IPv6 DNS address.
    remote6 = str(ip_interface(remote_result["ips"][1]["address"]).ip)
    assert wait_for(lambda: can_ping(namespace, remote6), timeout=10, what="ping -6 h2's pod")
    assert can_ping(Path(remote_netns).name, str(ip6.ip))
    server6 = result["dns"]["nameservers"][1]
    wait_for(
        lambda: lookup(lab, "h1", f"dual-{remote_cid}") != [], timeout=10, what="h2's pod name"
    )
    answer = ns_run(namespace, "dig", "+short", "+time=2", "+tries=2", f"@{server6}", "AAAA",
                    f"dual-{remote_cid}.meshnet.local")  # fmt: skip
    assert answer.stdout.strip() == remote6, answer
    assert wait_for(
        lambda: sorted(lookup(lab, "h2", f"dual-{cid}")) == sorted([str(ip4.ip), str(ip6.ip)]),
        timeout=10,
    )

    runtime.check(cid, netns)
    ns_run(namespace, "ip", "addr", "del", str(ip6), "dev", "eth0")
    with pytest.raises(PluginFailed) as failed:
        runtime.check(cid, netns)
    assert failed.value.error["code"] == 101 and str(ip6.ip) in failed.value.error["msg"]

    runtime.delete(cid, netns)
    remote.delete(remote_cid, remote_netns)
    assert "eth0" not in ns_run(namespace, "ip", "link").stdout
    assert owners(lab, "cni:dual:") == {}
    assert wait_for(lambda: lookup(lab, "h2", f"dual-{cid}") == [], timeout=10)
