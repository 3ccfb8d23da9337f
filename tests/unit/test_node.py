"""The application layer: each use case one pipeline, undone in reverse on failure."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from meshnet.api.app import ApiApp
from meshnet.config import Config
from meshnet.errors import UserError
from meshnet.integrations.docker.objects import ContainerInfo
from meshnet.integrations.docker.service import DockerService
from meshnet.integrations.docker.settings import DockerSettings
from meshnet.node.namespace_owners import NamespaceId, Namespaces, SeenNamespace, owner_id
from meshnet.node.node import Node, Target, Unavailable
from meshnet.node.pipeline import Pipeline
from meshnet.node.ramps import Ramps
from meshnet.node.ramps_state import Exposed, RampsState

RANGE = IPv4Network("10.32.0.0/12")
CID = "abc123" + "0" * 58  # a Docker container's full id
BOOT = "0123456789ab"
COOKIES = {f"c{k}": 4100 + k for k in range(1, 10)}  # the fake data plane's namespaces
C1, C2 = (owner_id(NamespaceId(COOKIES[c], BOOT)) for c in ("c1", "c2"))


# --- the pipeline -------------------------------------------------------------------------------


class Boom(Exception):
    pass


def steps_failing_at(k: int, n: int, log: list[str]) -> Any:
    """A use case of n steps whose step k (1-based) fails; every step and undo is logged."""

    async def use_case() -> None:
        async with Pipeline() as steps:
            for i in range(1, n + 1):
                log.append(f"do {i}")
                if i == k:
                    raise Boom(f"step {i}")

                async def undo(i: int = i) -> None:
                    log.append(f"undo {i}")

                steps.undo_with(f"step {i}", undo)

    return use_case


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_a_failed_step_undoes_the_completed_ones_in_reverse_exactly_once(k: int) -> None:
    log: list[str] = []
    with pytest.raises(Boom, match=f"step {k}"):
        trio.run(steps_failing_at(k, 4, log))
    assert log == [f"do {i}" for i in range(1, k + 1)] + [f"undo {i}" for i in range(k - 1, 0, -1)]


def test_a_pipeline_that_succeeds_undoes_nothing() -> None:
    log: list[str] = []
    trio.run(steps_failing_at(0, 3, log))
    assert log == ["do 1", "do 2", "do 3"]


def test_an_undo_that_fails_is_logged_and_the_rest_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []

    async def main() -> None:
        async with Pipeline("h1") as steps:

            async def first() -> None:
                log.append("undo 1")

            async def broken() -> None:
                raise OSError("gone")

            steps.undo_with("step 1", first)
            steps.undo_with("step 2", broken)
            raise Boom("step 3")

    with pytest.raises(Boom):  # the original error, not the undo's
        trio.run(main)
    assert log == ["undo 1"]
    assert "h1: could not undo step 2: gone" in caplog.text


def test_cancellation_undoes_too_and_the_undo_is_shielded() -> None:
    log: list[str] = []

    async def main() -> None:
        with trio.move_on_after(1):
            async with Pipeline() as steps:

                async def undo() -> None:
                    await trio.sleep(5)  # shielded: runs to the end although cancelled
                    log.append("undone")

                steps.undo_with("step 1", undo)
                await trio.sleep(10)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert log == ["undone"]


# --- fakes for the services ---------------------------------------------------------------------


def fake_router() -> Any:
    return SimpleNamespace(
        identity=SimpleNamespace(name=0xAABBCCDDEEFF, nickname="h1"),
        status=lambda: {"name": "x"},
    )


class Calls(list[str]):
    def fail_at(self, what: str) -> None:
        self.failing = what

    def log(self, what: str) -> None:
        self.append(what)
        if getattr(self, "failing", None) == what.split(" ")[0]:
            raise UserError(f"{what} failed")


class FakeIpam:
    def __init__(self, calls: Calls, held: dict[str, list[IPv4Interface]] | None = None) -> None:
        self.calls = calls
        self.held = held or {}
        self.config = SimpleNamespace(range=RANGE, subnet=RANGE)
        self.next = 5
        self.ipv6 = None  # an IPv4-only IPAM (--no-ipv6)
        self.default_subnet6 = None

    def holders(self, prefix: str = "") -> dict[str, list[str]]:
        return {k: [str(a) for a in v] for k, v in self.held.items() if k.startswith(prefix)}

    def addresses_of(self, owner: str) -> list[IPv4Interface]:
        return list(self.held.get(owner, []))

    def in_range(self, ip: IPv4Address) -> bool:
        return ip in RANGE

    async def allocate(self, owner: str, subnet: IPv4Network | None = None) -> IPv4Interface:
        self.calls.log(f"allocate {owner}")
        net = subnet or RANGE
        address = IPv4Interface(f"{net.network_address + self.next}/{net.prefixlen}")
        self.next += 1
        self.held.setdefault(owner, []).append(address)
        return address

    async def claim(self, owner: str, address: IPv4Interface) -> IPv4Interface:
        self.calls.log(f"claim {owner} {address}")
        return address

    async def release(self, owner: str, only: list[IPv4Address] | None = None) -> list[Any]:
        self.calls.log(f"release {owner}{'' if only is None else ' ' + ','.join(map(str, only))}")
        return [a.ip for a in self.held.pop(owner, [])]

    def rename(self, owner: str, to: str) -> list[Any]:
        self.calls.log(f"rename {owner} {to}")
        moved = self.held.pop(owner, [])
        self.held.setdefault(to, []).extend(moved)
        return [a.ip for a in moved]


class FakeDataPlane:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.overlay_mtu = 1376
        self.seen = Namespaces((), BOOT)  # what `namespaces` shows

    async def namespaces(self, *, interfaces: bool = False) -> Namespaces:
        self.calls.log("look for namespaces" + (" and interfaces" if interfaces else ""))
        return self.seen

    async def namespace_id(self, container: str) -> NamespaceId:
        if container not in COOKIES:
            raise UserError(f"no such container namespace: {container}")
        return NamespaceId(COOKIES[container], BOOT)

    async def attach(self, container: str, addresses: list[str], ifname: str) -> dict[str, Any]:
        self.calls.log(f"attach {container} {','.join(addresses)}")
        return {"namespace": container, "addresses": addresses, "host_ifname": "vethwe1"}

    async def announce(self, container: str, attached: dict[str, Any]) -> None:
        self.calls.log(f"announce {container}")

    async def detach(self, container: str, addresses: list[str], ifname: str) -> bool:
        self.calls.log(f"detach {container} {','.join(addresses)}")
        return True


class FakeRamps:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    async def attached(self, container: str, ifname: str, addresses: list[str], _: Any) -> None:
        self.calls.log(f"isolate {container} {','.join(addresses)}")

    async def detached(self, container: str, ifname: str, addresses: list[str]) -> None:
        self.calls.log(f"unisolate {container} {','.join(addresses)}")


class FakeDns:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def name_for(self, name: str) -> str:
        return f"{name}.meshnet.local."

    def attached(self, result: dict[str, Any], fqdn: str | None) -> str | None:
        self.calls.log(f"name {result['namespace']} {fqdn}")
        return fqdn

    def detached(self, container: str, addresses: list[str]) -> None:
        self.calls.log(f"unname {container} {','.join(addresses)}")

    def forget_addresses(self, addresses: list[str]) -> None:
        self.calls.log(f"unname {','.join(addresses)}")


def node_with_fakes(calls: Calls, **held: list[IPv4Interface]) -> Node:
    return Node(
        fake_router(),
        ipam=FakeIpam(calls, dict(held)),  # type: ignore[arg-type]
        dns=FakeDns(calls),  # type: ignore[arg-type]
        dataplane=FakeDataPlane(calls),  # type: ignore[arg-type]
        ramps=FakeRamps(calls),  # type: ignore[arg-type]
    )


# --- attach and detach --------------------------------------------------------------------------


def test_attach_is_ipam_then_data_plane_then_isolation_then_dns() -> None:
    calls = Calls()
    node = node_with_fakes(calls)
    attached = trio.run(node.attach, Target("c1"), [], "ethwe", "web.meshnet.local.")
    assert calls == [
        f"allocate {C1}",
        "attach c1 10.32.0.5/12",
        "isolate c1 10.32.0.5/12",
        "announce c1",  # its gratuitous ARP: only once isolated (the bridge drops it before)
        "name c1 web.meshnet.local.",
    ]
    assert attached.dns_name == "web.meshnet.local."
    assert attached.attachment["addresses"] == ["10.32.0.5/12"]


@pytest.mark.parametrize(
    ("failing", "undone"),
    [
        ("allocate", []),
        ("attach", [f"release {C1}"]),
        ("isolate", ["detach c1 10.32.0.5/12", f"release {C1}"]),
        ("name", ["unisolate c1 10.32.0.5/12", "detach c1 10.32.0.5/12", f"release {C1}"]),
    ],
)
def test_a_failed_attach_undoes_its_steps_in_reverse_once(failing: str, undone: list[str]) -> None:
    calls = Calls()
    calls.fail_at(failing)
    node = node_with_fakes(calls)
    with pytest.raises(UserError, match=f"^{failing} .* failed"):
        trio.run(node.attach, Target("c1"), [], "ethwe", "web.meshnet.local.")
    done = next(i for i, c in enumerate(calls) if c.startswith(failing)) + 1
    assert calls[done:] == undone


def test_below_ipv6s_mtu_attach_gives_ipv4_only_and_refuses_ipv6_in_one_line() -> None:
    """The kernel turns IPv6 off on a link under 1280 bytes: adding the address failed deep in
    netlink and the API answered 500."""
    calls = Calls()
    node = node_with_fakes(calls)
    ipam: Any = node.ipam
    ipam.ipv6 = object()  # the IPv6 ring is on: attach would be dual stack

    async def allocate6(owner: str, subnet: Any = None) -> IPv6Interface:
        calls.log(f"allocate6 {owner}")
        return IPv6Interface("fd00::5/64")

    ipam.allocate6 = allocate6
    node.dataplane.overlay_mtu = 1200  # type: ignore[union-attr]
    attached = trio.run(node.attach, Target("c1"), [], "ethwe", None)
    assert attached.attachment["addresses"] == ["10.32.0.5/12"]
    with pytest.raises(UserError, match=r"^no IPv6 on this router's overlay: its MTU is 1200"):
        trio.run(node.attach, Target("c2"), ["net:default6"], "ethwe", None)
    node.dataplane.overlay_mtu = 1376  # type: ignore[union-attr]
    attached = trio.run(node.attach, Target("c3"), [], "ethwe", None)
    assert attached.attachment["addresses"] == ["10.32.0.6/12", "fd00::5/64"]
    assert f"allocate6 {C2}" not in calls


def test_a_failed_attach_again_keeps_what_the_container_had() -> None:
    calls = Calls()
    calls.fail_at("isolate")
    had = IPv4Interface("10.32.0.9/12")
    node = node_with_fakes(calls, **{C1: [had]})
    with pytest.raises(UserError):
        trio.run(node.attach, Target("c1"), ["10.32.0.9/12", "net:10.32.1.0/24"], "ethwe", None)
    # Its old address stays on it and in IPAM; only the new one comes off.
    assert [c for c in calls if c.startswith(("detach", "release"))] == ["detach c1 10.32.1.5/24"]


def test_a_runtimes_attach_goes_by_its_keys() -> None:
    calls = Calls()
    node = node_with_fakes(calls)
    target = Target("/proc/7/ns/net", owner="docker:abc", records="abc")
    assert trio.run(node.attach, target, [], "ethwe", None).dns_name is None  # no name: none
    assert calls[0] == "allocate docker:abc" and not any(c.startswith("name") for c in calls)
    calls.clear()
    trio.run(node.attach, target, [], "ethwe", "web.meshnet.local.")
    assert calls[-1] == "name abc web.meshnet.local."


def test_docker_attach_and_detach_are_the_nodes_by_the_containers_id() -> None:
    calls = Calls()
    node = node_with_fakes(calls)
    assert node.ipam is not None
    docker = DockerService(DockerSettings(), node, ipam=node.ipam)  # type: ignore[arg-type]
    info = ContainerInfo(id=CID, name="web", running=True, pid=42)

    async def main() -> None:
        result = await docker.attach_container(info, [], name="web")
        assert result["container"] == CID and result["docker_name"] == "web"
        assert result["dns_name"] == "web.meshnet.local."
        assert calls == [
            f"allocate docker:{CID}",
            "attach /proc/42/ns/net 10.32.0.5/12",
            "isolate /proc/42/ns/net 10.32.0.5/12",
            "announce /proc/42/ns/net",
            f"name {CID} web.meshnet.local.",
        ]
        assert docker.statistics().attached == 1
        calls.clear()
        stopped = ContainerInfo(id=CID, name="web", running=False, pid=0)
        with pytest.raises(UserError, match="not running"):
            await docker.attach_container(stopped, [])
        # Stopped: nothing to take off, but its address goes back and its names go.
        assert await docker.detach_container(stopped, [], "ethwe") == {
            "detached": True,
            "container": CID,
        }
        assert calls == [f"release docker:{CID}", f"unname {CID} "]
        calls.clear()
        await docker.attach_container(info, [], name="web")
        await docker.attach_container(info, [], ifname="eth1")
        calls.clear()
        docker.dns = SimpleNamespace(  # type: ignore[assignment]
            records=SimpleNamespace(own_records=lambda: [SimpleNamespace(container=CID, live=True)])
        )
        await docker.forget(CID)  # gone: every interface's addresses, and its names
        assert calls == [
            f"release docker:{CID}",
            f"release docker:{CID}/eth1",
            f"unname {CID} ",
        ]
        assert docker.statistics().forgotten == 1

    trio.run(main)


def test_detach_takes_off_gives_back_and_unnames() -> None:
    calls = Calls()
    node = node_with_fakes(calls)
    detached = trio.run(node.detach, Target("c1"), ["10.32.0.5/12"])
    assert detached.detached
    assert calls == [
        "detach c1 10.32.0.5/12",
        "unisolate c1 10.32.0.5/12",
        f"release {C1} 10.32.0.5",
        "unname c1 10.32.0.5/12",
    ]


def test_what_gone_namespaces_held_is_released_and_unnamed_and_old_keys_are_renamed() -> None:
    """A namespace deleted without a detach: its addresses and names go back; an inode key
    from before cookies moves to the cookie key of the namespace that carries its address."""
    calls = Calls()
    legacy = "netns:4:4026532174"
    held = {
        C1: [IPv4Interface("10.32.0.5/12")],
        C2: [IPv4Interface("10.32.0.6/12")],
        legacy: [IPv4Interface("10.32.0.7/12")],
        "cni:net:c:eth0": [IPv4Interface("10.32.0.8/12")],
    }
    node = node_with_fakes(calls, **held)
    assert isinstance(node.dataplane, FakeDataPlane)
    node.dataplane.seen = Namespaces(
        (
            SeenNamespace(NamespaceId(COOKIES["c1"], BOOT), (4, 1)),
            SeenNamespace(NamespaceId(9, BOOT), (4, 4026532174), {"ethwe": ["10.32.0.7/12"]}),
        ),
        BOOT,
    )
    trio.run(node.collect_gone_namespaces)
    assert calls == [
        "look for namespaces and interfaces",
        f"release {C2}",
        "unname 10.32.0.6",
        f"rename {legacy} {owner_id(NamespaceId(9, BOOT))}",
    ]
    assert node.owners("") == {
        C1: ["10.32.0.5/12"],
        "cni:net:c:eth0": ["10.32.0.8/12"],
        owner_id(NamespaceId(9, BOOT)): ["10.32.0.7/12"],
    }
    calls.clear()
    trio.run(node.collect_gone_namespaces)  # nothing left to do; no interfaces to read
    assert calls == ["look for namespaces"]
    calls.clear()
    runtimes_only = node_with_fakes(calls, **{"cni:net:c:eth0": held["cni:net:c:eth0"]})
    trio.run(runtimes_only.collect_gone_namespaces)  # no namespace key: nothing to look for
    assert calls == []


def test_an_attach_under_way_keeps_its_key_from_the_collection() -> None:
    """A namespace no file names (held by a descriptor) shows no port until its attach made
    one: a collection meanwhile must not take the addresses the attach just got."""
    calls = Calls()
    node = node_with_fakes(calls)
    dataplane = node.dataplane
    assert isinstance(dataplane, FakeDataPlane)
    gate = trio.Event()
    plain_attach = dataplane.attach

    async def slow_attach(container: str, addresses: list[str], ifname: str) -> dict[str, Any]:
        await gate.wait()
        return await plain_attach(container, addresses, ifname)

    dataplane.attach = slow_attach  # type: ignore[method-assign]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.attach, Target("c1"), [])
            await trio.testing.wait_all_tasks_blocked()
            await node.collect_gone_namespaces()  # nothing in sight, c1 included
            gate.set()
        await node.collect_gone_namespaces()  # done: now only a gone namespace's key goes

    trio.run(main)
    assert calls[:3] == [f"allocate {C1}", "look for namespaces", "attach c1 10.32.0.5/12"]
    assert calls[-3:] == ["look for namespaces", f"release {C1}", "unname 10.32.0.5"]


def test_a_runtimes_detach_of_a_gone_namespace_still_releases_and_unnames() -> None:
    calls = Calls()
    calls.fail_at("detach")
    node = node_with_fakes(calls)
    target = Target("/gone", owner="cni:net:c:eth0", records="cni:net:c:eth0")
    detached = trio.run(lambda: node.detach(target, [], "eth0", gone_ok=True))
    assert not detached.detached
    assert calls[1:] == ["release cni:net:c:eth0", "unname cni:net:c:eth0 "]
    with pytest.raises(UserError):  # without gone_ok the error is the caller's
        trio.run(node.detach, Target("/gone"), [])


def test_without_a_data_plane_attach_is_unavailable() -> None:
    node = Node(fake_router(), ipam=FakeIpam(Calls()))  # type: ignore[arg-type]
    with pytest.raises(Unavailable, match="without a data plane"):
        trio.run(node.attach, Target("c1"), [])


# --- expose, hide, reset, status ----------------------------------------------------------------


def test_without_a_data_plane_expose_is_one_clear_error(tmp_path: Path) -> None:
    ramps = Ramps(Config(state_dir=tmp_path, dataplane=False), fake_router())
    node = Node(fake_router(), ramps=ramps)
    app = ApiApp(fake_router(), lambda: None, node)

    async def main() -> None:
        with pytest.raises(UserError, match="without a data plane"):
            await node.expose([])
        with pytest.raises(UserError, match="expected"):
            await app.routes[("POST", "/expose")]({"addresses": "10.32.0.1/12"})

    trio.run(main)


def test_a_failed_expose_gives_its_address_back(tmp_path: Path) -> None:
    calls = Calls()
    ramps = Ramps(Config(state_dir=tmp_path), fake_router())
    ramps.require_running = lambda: None  # type: ignore[method-assign]

    async def refuse(*_: Any, **__: Any) -> Any:
        calls.append("expose")
        raise UserError("nft failed")

    ramps.expose = refuse  # type: ignore[method-assign]
    node = Node(fake_router(), ipam=FakeIpam(calls), ramps=ramps)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="nft failed"):
        trio.run(node.expose, ["net:10.32.1.0/24"])
    owner = "expose:10.32.1.0/24:aa:bb:cc:dd:ee:ff"
    assert calls == [f"allocate {owner}", "expose", f"release {owner} 10.32.1.5"]


def test_status_shows_what_is_exposed_and_reset_forgets_it(tmp_path: Path) -> None:
    (tmp_path / "ramps.json").write_bytes(
        RampsState(
            exposed={IPv4Network("10.32.0.0/12"): Exposed(IPv4Interface("10.32.0.7/12"))}
        ).encode()
    )
    ramps = Ramps(Config(state_dir=tmp_path), fake_router())
    assert list(ramps.state.exposed) == [IPv4Network("10.32.0.0/12")]
    forgotten: list[str] = []

    async def reset(*, force: bool) -> dict[str, Any]:
        return {"acknowledged": True}

    ipam = SimpleNamespace(reset=reset, forget_state=lambda: forgotten.append("ipam"))
    node = Node(fake_router(), ipam=ipam, ramps=ramps)  # type: ignore[arg-type]
    status = node.status()
    assert status["name"] == "x"
    assert status["exposed"] == [{"address": "10.32.0.7/12", "masquerade": True, "names": ()}]
    assert status["isolation"]["state"] == "off (no data plane)"
    assert trio.run(lambda: node.reset(force=False)) == {"acknowledged": True}
    assert forgotten == ["ipam"]
    assert not (tmp_path / "ramps.json").exists()


def test_the_api_answers_409_for_a_service_the_router_runs_without() -> None:
    app = ApiApp(fake_router(), lambda: None)
    sent: list[dict[str, Any]] = []

    async def main() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b'{"container": "c1"}'}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/attach"}
        await app(scope, receive, send)

    trio.run(main)
    assert sent[0]["status"] == 409
    assert json.loads(sent[1]["body"]) == {
        "error": "this router runs without a data plane (--no-dataplane)"
    }


def test_detach_takes_the_specs_attach_takes() -> None:
    calls = Calls()
    held = [IPv4Interface("10.32.0.5/12"), IPv4Interface("10.32.1.5/24")]
    node = node_with_fakes(calls, **{C1: held})
    trio.run(node.detach, Target("c1"), ["net:10.32.1.0/24", "ip:10.32.0.5"])
    assert calls[:2] == [
        "detach c1 10.32.1.5/24,10.32.0.5/32",
        "unisolate c1 10.32.1.5/24,10.32.0.5/32",
    ]
    assert calls[2] == f"release {C1} 10.32.1.5,10.32.0.5"
    calls.clear()
    node = node_with_fakes(calls, **{C1: held})
    trio.run(node.detach, Target("c1"), ["net:default"])  # the default subnet: here the range
    assert calls[0] == "detach c1 10.32.0.5/12,10.32.1.5/24"
    # A subnet it has nothing in detaches nothing (not everything, as no address would).
    calls.clear()
    with pytest.raises(UserError, match=r"net:10.40.0.0/16: the container has no address in"):
        trio.run(node.detach, Target("c1"), ["net:10.40.0.0/16"])
    assert calls == []


def test_attach_net_default_is_an_address_from_the_default_subnet() -> None:
    calls = Calls()
    node = node_with_fakes(calls)
    attached = trio.run(node.attach, Target("c1"), ["net:default"], "ethwe", None)
    assert calls[:2] == [f"allocate {C1}", "attach c1 10.32.0.5/12"]
    assert attached.attachment["addresses"] == ["10.32.0.5/12"]


class DualIpam(FakeIpam):
    """The fake with an IPv6 ring too; allocations idempotent per family, as IPAM's."""

    def __init__(self, calls: Calls, held: dict[str, list[Any]] | None = None) -> None:
        super().__init__(calls, held)
        self.ipv6 = object()  # type: ignore[assignment]

    async def allocate(self, owner: str, subnet: IPv4Network | None = None) -> IPv4Interface:
        mine = [a for a in self.held.get(owner, []) if isinstance(a, IPv4Interface)]
        return mine[0] if mine else await super().allocate(owner, subnet)

    async def allocate6(self, owner: str, subnet: Any = None) -> IPv6Interface:
        mine = [a for a in self.held.get(owner, []) if isinstance(a, IPv6Interface)]
        if mine:
            return mine[0]
        self.calls.log(f"allocate6 {owner}")
        address = IPv6Interface(f"fd12::{self.next}/64")
        self.next += 1
        self.held.setdefault(owner, []).append(address)
        return address


def attach_with(ipam: FakeIpam, specs: list[str]) -> list[str]:
    calls = Calls()
    ipam.calls = calls
    node = Node(
        fake_router(),
        ipam=ipam,  # type: ignore[arg-type]
        dataplane=FakeDataPlane(calls),  # type: ignore[arg-type]
    )
    attached = trio.run(node.attach, Target("c1"), specs, "ethwe", None)
    return list(attached.attachment["addresses"])


def test_attach_without_addresses_is_dual_stack_and_again_keeps_the_families() -> None:
    ipam = DualIpam(Calls())
    assert attach_with(ipam, []) == ["10.32.0.5/12", "fd12::6/64"]
    assert attach_with(ipam, []) == ["10.32.0.5/12", "fd12::6/64"]  # the same, nothing more
    only4 = DualIpam(Calls(), {C1: [IPv4Interface("10.32.0.9/12")]})
    assert attach_with(only4, []) == ["10.32.0.9/12"]  # attached IPv4-only: stays so
    only6 = DualIpam(Calls(), {C1: [IPv6Interface("fd12::9/64")]})
    assert attach_with(only6, []) == ["fd12::9/64"]  # attached --ipv6-only: stays so
    assert attach_with(DualIpam(Calls()), ["net:default6"]) == ["fd12::5/64"]


SUBNET6 = IPv6Network("fd00:aa::/64")


class FakeIpam6(FakeIpam):
    """A dual-stack IPAM: its IPv6 ring's default subnet is ``SUBNET6``."""

    def __init__(self, calls: Calls, held: dict[str, list[Any]] | None = None) -> None:
        super().__init__(calls, held)
        self.ipv6 = object()
        self.default_subnet6 = SUBNET6

    def holders(self, prefix: str = "") -> dict[str, list[str]]:
        """Addresses without their prefix length, as IPAM lists them."""
        return {k: [str(a.ip) for a in v] for k, v in self.held.items() if k.startswith(prefix)}

    def in_range(self, ip: Any) -> bool:
        return ip in (RANGE if ip.version == 4 else SUBNET6.supernet(new_prefix=48))

    async def allocate6(self, owner: str, subnet: IPv6Network | None = None) -> IPv6Interface:
        self.calls.log(f"allocate6 {owner}")
        address = IPv6Interface(f"{(subnet or SUBNET6).network_address + 7}/64")
        self.held.setdefault(owner, []).append(address)
        return address


def ramps_recording(tmp_path: Path, calls: Calls) -> Ramps:
    """Ramps whose kernel part only records what it is asked to expose or hide."""
    ramps = Ramps(Config(state_dir=tmp_path), fake_router())
    ramps.require_running = lambda: None  # type: ignore[method-assign]

    async def expose(addresses: list[Any], **_: Any) -> list[dict[str, Any]]:
        calls.append("expose " + " ".join(map(str, addresses)))
        for address in addresses:
            ramps.state.exposed[address.network] = Exposed(address)
        return [{"address": str(a)} for a in addresses]

    ramps.expose = expose  # type: ignore[method-assign]
    return ramps


def test_expose_without_addresses_is_dual_stack_with_the_ipv6_ring(tmp_path: Path) -> None:
    calls = Calls()
    ramps = ramps_recording(tmp_path, calls)
    node = Node(fake_router(), ipam=FakeIpam6(calls), ramps=ramps)  # type: ignore[arg-type]
    out = trio.run(node.expose, [])
    peer = "aa:bb:cc:dd:ee:ff"
    assert calls == [
        f"allocate expose:10.32.0.0/12:{peer}",
        f"allocate6 expose:fd00:aa::/64:{peer}",
        "expose 10.32.0.5/12 fd00:aa::7/64",
    ]
    assert out == [{"address": "10.32.0.5/12"}, {"address": "fd00:aa::7/64"}]
    # net:default6 alone: the IPv6 one (exposed already: the same address, IPAM not asked).
    calls.clear()
    assert trio.run(node.expose, ["net:default6"]) == [{"address": "fd00:aa::7/64"}]
    assert calls == ["expose fd00:aa::7/64"]
    # Without the IPv6 ring: IPv4 alone, and net:default6 is one clear error.
    ipv4_only = Node(fake_router(), ipam=FakeIpam(calls), ramps=ramps_recording(tmp_path, calls))  # type: ignore[arg-type]
    calls.clear()
    trio.run(ipv4_only.expose, [])
    assert calls == [f"allocate expose:10.32.0.0/12:{peer}", "expose 10.32.0.5/12"]
    with pytest.raises(UserError, match="no IPv6 ring"):
        trio.run(ipv4_only.expose, ["net:default6"])


def test_hide_gives_an_ipv6_address_back_to_its_owner(tmp_path: Path) -> None:
    calls = Calls()
    ramps = Ramps(Config(state_dir=tmp_path), fake_router())
    exposed = Exposed(IPv6Interface("fd00:aa::7/64"))

    async def hide(specs: list[str]) -> list[Exposed]:
        calls.append(f"hide {specs}")
        return [exposed]

    ramps.hide = hide  # type: ignore[method-assign]
    node = Node(fake_router(), ipam=FakeIpam6(calls), ramps=ramps)  # type: ignore[arg-type]
    assert trio.run(node.hide, ["net:default6"]) == [exposed]
    assert calls == [
        "hide ['net:default6']",
        "release expose:fd00:aa::/64:aa:bb:cc:dd:ee:ff fd00:aa::7",
    ]


def test_a_lost_state_file_rebuilds_ipv6_exposures_from_ipam(tmp_path: Path) -> None:
    calls = Calls()
    ramps = ramps_recording(tmp_path, calls)
    held = {
        "expose:fd00:aa::/64:aa:bb:cc:dd:ee:ff": [IPv6Interface("fd00:aa::7/64")],
        "expose:10.32.0.0/12:aa:bb:cc:dd:ee:ff": [IPv4Interface("10.32.0.5/12")],
        "expose:fd00:aa::/64:11:22:33:44:55:66": [IPv6Interface("fd00:aa::8/64")],  # another's
    }
    node = Node(fake_router(), ipam=FakeIpam6(calls, held), ramps=ramps)  # type: ignore[arg-type]
    trio.run(node._rebuild_exposed, ramps)
    assert sorted(calls) == ["expose 10.32.0.5/12", "expose fd00:aa::7/64"]
