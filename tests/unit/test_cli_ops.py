"""Issue 20's operations points as a user meets them: ports, the range check, resume, several
peers per command, the knobs of `launch`. Against a fake API; no root, no daemon."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from meshnet.api.client import ApiClient
from meshnet.cli.common import ports_text
from meshnet.ipam import netcheck
from meshnet.ipam.netcheck import HostRoute
from tests.unit.test_cli_commands import FakeApi, Run, api, meshnet, one_line_error

__all__ = ["api", "meshnet"]  # fixtures


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The configs `launch` would start a background router with."""
    started: list[Any] = []
    monkeypatch.setattr(ApiClient, "is_ready", lambda _: False)
    monkeypatch.setattr(
        "meshnet.cli.launch._launch_background",
        lambda config, _: started.append(config) or {"name": "aa:bb:cc:00:00:01"},
    )
    return started


def common(tmp_path: Path) -> tuple[str, ...]:
    return ("--state-dir", str(tmp_path / "state"), "--api-socket", str(tmp_path / "api.sock"))


# --- 3. the range check ---------------------------------------------------------------------------


def test_launch_refuses_a_range_the_host_routes(
    api: FakeApi,
    meshnet: Callable[..., Run],
    launched: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    routes = [
        HostRoute(IPv4Network("10.32.0.0/12"), "meshnet"),  # our own, from an earlier run
        HostRoute(IPv4Network("10.0.0.0/8"), "eth1", "192.0.2.1"),
    ]
    monkeypatch.setattr(netcheck, "host_routes", lambda: routes)
    run = meshnet("launch", *common(tmp_path))
    one_line_error(run, "--ipalloc-range 10.32.0.0/12 overlaps the host's route 10.0.0.0/8")
    assert "--ipalloc-range-overlap-ok" in run.err and not launched
    assert meshnet("launch", "--ipalloc-range", "172.20.0.0/16", *common(tmp_path)).code == 0
    assert meshnet("launch", "--ipalloc-range-overlap-ok", *common(tmp_path)).code == 0
    monkeypatch.setenv("MESHNET_IPALLOC_RANGE_OVERLAP_OK", "1")
    assert meshnet("launch", *common(tmp_path)).code == 0
    assert [c.ipalloc_range_overlap_ok for c in launched] == [False, True, True]


def test_launch_accepts_its_own_bridges_routes(
    meshnet: Callable[..., Run],
    launched: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    routes = [HostRoute(IPv4Network("10.32.0.0/12"), "meshnet")]
    monkeypatch.setattr(netcheck, "host_routes", lambda: routes)
    assert meshnet("launch", *common(tmp_path)).code == 0 and len(launched) == 1


# --- 3. ports -------------------------------------------------------------------------------------


def test_fastdp_follows_the_port(
    meshnet: Callable[..., Run],
    launched: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(netcheck, "host_routes", list)
    assert meshnet("launch", *common(tmp_path)).code == 0
    assert meshnet("launch", "--port", "7000", *common(tmp_path)).code == 0
    assert meshnet("launch", "--port", "7000", "--fastdp-port", "4789", *common(tmp_path)).code == 0
    assert [c.vxlan_port for c in launched] == [6784, 7001, 4789]
    one_line_error(
        meshnet("launch", "--port", "65535", *common(tmp_path)), "fastdp would use 65536"
    )
    one_line_error(meshnet("launch", "--fastdp-port", "6783", *common(tmp_path)), "a UDP port each")


def test_status_and_report_name_every_port_to_open() -> None:
    assert ports_text({"port": 7000, "fastdp_port": 7001}) == "TCP+UDP 7000, UDP 7001 (fastdp)"
    assert ports_text({"port": 6783, "fastdp_port": None}) == "TCP+UDP 6783"  # --no-fastdp
