"""Isolation fails closed (issue 17, point 8), without a kernel: the table shuts unknown bridge
ports, the ramps refuse to run without their table (unless --no-isolation), an attach whose rules
fail is refused and forgotten, and a failed background update is retried, not fatal."""

from __future__ import annotations

import os
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from meshnet.cli.launch import launch
from meshnet.cli.launch_options import config_from_options, launch_warnings
from meshnet.config import Config
from meshnet.dataplane.kernel import nftables
from meshnet.dataplane.kernel.nft import NftError
from meshnet.dataplane.kernel.nftables import Port
from meshnet.errors import UserError
from meshnet.node import ramps as ramps_module
from meshnet.node.ramps import Ramps
from meshnet.node.ramps_state import RampsState

RANGE = IPv4Network("10.32.0.0/12")
OWN = ("vethwe-sleeve", "vxlan-6784")


def rules(script: str) -> list[str]:
    return [line.strip() for line in script.splitlines()]


def chain(lines: list[str], name: str) -> list[str]:
    start = lines.index(f"chain {name} {{")
    return lines[start : lines.index("}", start)]


# --- the table ----------------------------------------------------------------------------------


def test_ports_neither_a_containers_nor_the_routers_are_shut_both_ways() -> None:
    ports = [Port("vethwea", (IPv4Interface("10.32.1.5/24"),))]
    lines = rules(nftables.bridge_table(ports, [RANGE], own=OWN, fresh=True))
    assert 'set own { type ifname; elements = { "vethwe-sleeve", "vxlan-6784" }; }' in lines
    shut_in = 'iifname != @ports iifname != @own counter name "unknown" drop'
    shut_out = 'oifname != @ports oifname != @own counter name "unknown" drop'
    assert shut_in in chain(lines, "forward") and shut_out in chain(lines, "forward")
    assert shut_in in chain(lines, "input")  # the host (DNS, exposed addresses, routing)
    assert shut_out in chain(lines, "output")
    assert "counter unknown {}" in lines and "unknown" in nftables.COUNTERS


def test_an_update_keeps_the_own_ports_and_checks_their_names() -> None:
    lines = rules(nftables.bridge_table([], [RANGE], own=OWN, fresh=False))
    assert "flush set bridge meshnet own" in lines
    assert 'set own { type ifname; elements = { "vethwe-sleeve", "vxlan-6784" }; }' in lines
    with pytest.raises(UserError, match="bad interface name"):
        nftables.bridge_table([], [RANGE], own=['x" }; drop'], fresh=False)


def test_the_state_asks_for_the_own_ports() -> None:
    script = RampsState().script(
        RANGE, no_masq_local=False, fresh_bridge=True, inet_installed=False, own=OWN
    )
    assert '"vxlan-6784"' in next(x for x in rules(script) if x.startswith("set own {"))


# --- the launch option --------------------------------------------------------------------------


def parse(argv: list[str]) -> Config:
    """What `meshnet launch ARGV` would run with."""
    params = dict(launch.make_context("launch", argv).params)
    params.pop("foreground")
    params.pop("password_file")
    return config_from_options(params.pop("peers"), params)


def test_no_isolation_is_a_launch_option_with_a_loud_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert parse([]).isolation
    assert not any("--no-isolation" in w for w in launch_warnings(parse([])))
    config = parse(["--no-isolation"])
    assert not config.isolation
    (warning,) = launch_warnings(config)
    assert "--no-isolation" in warning and "spoof" in warning
    monkeypatch.setitem(os.environ, "MESHNET_NO_ISOLATION", "1")
    assert not parse([]).isolation


# --- the service, with nft faked ----------------------------------------------------------------


def fake_router() -> Any:
    return SimpleNamespace(identity=SimpleNamespace(name=0xAABBCCDDEEFF, nickname="h1"))


def ramps_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nft: list[str], **config: Any
) -> Ramps:
    """Ramps whose bridge scans find nothing and whose nft records scripts, failing while
    ``nft`` holds "fail"."""
    ramps = Ramps(Config(state_dir=tmp_path, **config), fake_router())
    ramps._dataplane = SimpleNamespace(own_ports=OWN)  # type: ignore[assignment]

    async def reconcile() -> bool:
        return False

    def apply(script: str) -> None:
        if "fail" in nft:
            raise NftError("nft failed: Error: no nftables here")
        nft.append(script)

    monkeypatch.setattr(ramps, "_reconcile_ports", reconcile)
    monkeypatch.setattr(nftables, "apply", apply)
    return ramps


def test_without_its_table_the_router_refuses_to_run_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ramps = ramps_with(tmp_path, monkeypatch, ["fail"])
    with pytest.raises(UserError) as refused:
        trio.run(ramps._start)
    message = str(refused.value)
    assert "\n" not in message
    assert "cannot isolate containers: nft failed" in message and "--no-isolation" in message
    assert ramps.isolation != "on"


def test_with_no_isolation_it_runs_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ramps = ramps_with(tmp_path, monkeypatch, ["fail"], isolation=False)
    trio.run(ramps._start)
    assert ramps.isolation == "off (--no-isolation)"
    assert ramps.summary()["isolation"]["state"] == "off (--no-isolation)"
    assert any(r.levelname == "WARNING" and "--no-isolation" in r.message for r in caplog.records)


def test_the_table_names_the_routers_own_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripts: list[str] = []
    ramps = ramps_with(tmp_path, monkeypatch, scripts)
    trio.run(ramps._start)
    assert ramps.isolation == "on"
    assert '"vethwe-sleeve"' in next(x for x in rules(scripts[0]) if x.startswith("set own {"))


def test_an_attach_whose_rules_fail_is_refused_and_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nft: list[str] = []
    ramps = ramps_with(tmp_path, monkeypatch, nft)
    result = {"host_ifname": "vethwea", "namespace": "c1", "mac": "02:00:00:00:00:01"}

    async def main() -> None:
        await ramps._start()
        ramps._following = True
        nft.append("fail")
        with pytest.raises(UserError, match=r"^c1 not attached: its isolation rules failed"):
            await ramps.attached("c1", "ethwe", ["10.32.1.5/24"], result)
        assert ramps.state.ports == {}
        nft.remove("fail")
        await ramps.attached("c1", "ethwe", ["10.32.1.5/24"], result)
        assert list(ramps.state.ports) == ["vethwea"]
        # Attached again with one more address, which fails: the port keeps what it had.
        nft.append("fail")
        with pytest.raises(UserError):
            await ramps.attached("c1", "ethwe", ["10.32.2.5/24"], result)
        assert ramps.state.ports["vethwea"].addresses == ("10.32.1.5/24",)

    trio.run(main)


def test_an_attach_while_isolation_is_not_running_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ramps = ramps_with(tmp_path, monkeypatch, [])
    result = {"host_ifname": "vethwea", "namespace": "c1", "mac": "02:00:00:00:00:01"}
    with pytest.raises(UserError, match="isolation is not running"):
        trio.run(ramps.attached, "c1", "ethwe", ["10.32.1.5/24"], result)


def test_a_failed_background_update_is_retried_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nft: list[str] = []
    ramps = ramps_with(tmp_path, monkeypatch, nft)
    changes = [True]  # the first scan finds a change (a port gone), the later ones none
    monkeypatch.setattr(ramps_module, "TICK", 0.02)  # real time: nft runs in a worker thread

    async def reconcile() -> bool:
        return changes.pop() if changes else False

    async def until(check: Any) -> None:
        with trio.fail_after(10):
            while not check():
                await trio.sleep(0.01)

    async def main() -> None:
        await ramps._start()
        monkeypatch.setattr(ramps, "_reconcile_ports", reconcile)
        applied = len(nft)  # scripts applied so far
        nft.append("fail")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ramps._follow_bridge)
            await until(lambda: ramps._stale)  # the scan's update failed; the loop lives on
            assert len(nft) - 1 == applied
            nft.remove("fail")
            await until(lambda: not ramps._stale)  # a later scan tried again, though unchanged
            assert len(nft) == applied + 1
            nursery.cancel_scope.cancel()

    trio.run(main)
