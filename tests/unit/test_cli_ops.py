"""Issue 20's operations points as a user meets them: ports, the range check, resume, several
peers per command, the knobs of `launch`. Against a fake API; no root, no daemon."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from meshnet import cli
from meshnet.api.client import ApiClient
from meshnet.cli.common import ports_text
from meshnet.cli.launch import launch
from meshnet.cli.launch_options import LAUNCH_OPTIONS, envvar, relaunch_args
from meshnet.dataplane.kernel import attach as attach_kernel
from meshnet.dataplane.service import ENCAPSULATION_OVERHEAD, overlay_mtu
from meshnet.errors import UserError
from meshnet.integrations.cni import spec as cni_spec
from meshnet.integrations.cni.spec import CniError
from meshnet.integrations.docker.ipamdriver import PluginError, parse_address, parse_pool
from meshnet.ipam import netcheck
from meshnet.ipam.netcheck import HostRoute
from meshnet.logfile import BACKUPS, StateDirLog, rotate_if_full
from meshnet.node import cleanup
from meshnet.node.cleanup import Cleaned
from tests.unit.test_cli_commands import FakeApi, Run, api, meshnet, one_line_error
from tests.unit.test_daemon import Daemon, daemon

__all__ = ["api", "daemon", "meshnet"]  # fixtures


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


# --- 5. every option has a variable; --mtu; --log-level; the log rotated -------------------------


def test_every_launch_option_has_a_variable_listed_by_help() -> None:
    """Those of LAUNCH_OPTIONS and those declared on the command itself (--foreground, --name,
    --password-file...): a container or a DaemonSet sets each one by environment."""
    result = CliRunner().invoke(launch, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    help_text = " ".join(result.output.split())
    options = [p for p in launch.params if isinstance(p, click.Option)]
    assert len(options) > len(LAUNCH_OPTIONS)  # the command's own ones are checked too
    for option in options:
        flag = max(option.opts, key=len)
        assert option.envvar == envvar(flag), flag
        if not option.hidden and flag != "--help":
            assert f"env var: {option.envvar}" in help_text, flag
    for flag in ("--mtu", "--log-level", "--fastdp-port", "--no-resume", "--foreground"):
        assert flag in help_text and envvar(flag) in help_text


def test_mtu_is_checked_and_reaches_the_router(
    meshnet: Callable[..., Run],
    launched: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(netcheck, "host_routes", list)
    assert meshnet("launch", "--mtu", "1400", *common(tmp_path)).code == 0
    assert launched[-1].mtu == 1400 and "--mtu" in relaunch_args(launched[-1])
    for bad in ("100", "70000", "big"):
        one_line_error(meshnet("launch", "--mtu", bad, *common(tmp_path)), "--mtu")
    # Against the underlay: what the sleeve's headers leave of it, or the whole launch fails.
    assert overlay_mtu(1500, None) == 1500 - ENCAPSULATION_OVERHEAD
    assert overlay_mtu(9001, 8000) == 8000
    with pytest.raises(UserError, match=r"--mtu 1500: the underlay's MTU 1500 leaves at most"):
        overlay_mtu(1500, 1500)


@pytest.mark.parametrize(
    ("args", "env", "level"),
    [
        ([], {}, "info"),
        (["launch", "--log-level", "WARNING"], {}, "warning"),
        (["--debug", "launch"], {}, "debug"),
        (["launch"], {"MESHNET_LOG_LEVEL": "error"}, "error"),
        (["--debug", "launch", "--log-level", "info"], {}, "info"),  # said explicitly: wins
    ],
)
def test_the_log_level_reaches_the_background_router(
    meshnet: Callable[..., Run],
    launched: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    level: str,
) -> None:
    monkeypatch.setattr(netcheck, "host_routes", list)
    monkeypatch.delenv("MESHNET_DEBUG", raising=False)
    monkeypatch.setattr(cli._Settings, "debug", False)  # `--debug` sets it for the process
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert meshnet(*(args or ["launch"]), *common(tmp_path)).code == 0
    child = relaunch_args(launched[-1])
    assert child[child.index("--log-level") + 1] == level
    one_line_error(meshnet("launch", "--log-level", "loud", *common(tmp_path)), "--log-level")


def test_the_log_file_is_rotated_and_capped(tmp_path: Path) -> None:
    path = tmp_path / "meshnet.log"
    stray = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # as the child's stderr
    handler = StateDirLog(path, max_bytes=1000, follow_fds=(stray,))
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("test.rotation")
    log.propagate = False
    log.addHandler(handler)
    try:
        for i in range(200):
            log.warning("line %03d %s", i, "x" * 40)
    finally:
        log.removeHandler(handler)
        handler.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["meshnet.log"] + [f"meshnet.log.{n}" for n in range(1, BACKUPS + 1)]
    assert all(p.stat().st_size <= 1000 for p in tmp_path.iterdir())
    assert path.read_text().splitlines()[-1].startswith("line 199")
    os.write(stray, b"meshnet: a traceback's last line\n")  # follows the rotation
    os.close(stray)
    assert path.read_text().splitlines()[-1] == "meshnet: a traceback's last line"


def test_a_full_log_is_rotated_before_a_background_start(tmp_path: Path) -> None:
    path = tmp_path / "meshnet.log"
    path.write_text("old\n" * 100)
    rotate_if_full(path, max_bytes=1000)
    assert path.read_text() == "old\n" * 100  # not full yet
    rotate_if_full(path, max_bytes=100)
    assert path.read_text() == "" and (tmp_path / "meshnet.log.1").read_text() == "old\n" * 100


# --- 4. several peers per command; connect --replace; reset --force after a dead router -----------


def test_connect_and_forget_take_several_peers(api: FakeApi, meshnet: Callable[..., Run]) -> None:
    api.answers["/connect"] = lambda body: {
        "targets": [{"address": f"{a}:6783", "added": a != "h2"} for a in body["addresses"]],
        "removed": ["h9:6783"] if body["replace"] else [],
    }
    assert meshnet("connect", "h1", "h2").out == "h1:6783: added\nh2:6783: already a target\n"
    assert meshnet("connect", "--replace", "h1").out == "h9:6783: forgotten\nh1:6783: added\n"
    assert meshnet("connect", "--replace").code == 0  # drops them all
    one_line_error(meshnet("connect"), "give at least one HOST[:PORT]")
    assert api.bodies == [
        {"addresses": ["h1", "h2"], "replace": False},
        {"addresses": ["h1"], "replace": True},
        {"addresses": [], "replace": True},
    ]
    api.answers["/forget"] = lambda body: {
        "targets": [{"address": f"{a}:6783", "forgotten": a != "h3"} for a in body["addresses"]]
    }
    run = meshnet("forget", "h1", "h3", "h2")
    assert run.out == "h1:6783: forgotten\nh2:6783: forgotten\n"
    one_line_error(run, "h3:6783 is not a target")


def test_rmpeer_takes_several_peers(api: FakeApi, meshnet: Callable[..., Run]) -> None:
    def rmpeer(body: dict[str, Any]) -> dict[str, Any]:
        if body["peer"] == "alive":
            raise UserError("peer alive (aa:bb:cc:dd:ee:02) is reachable: rmpeer is only ...")
        return {"peer": body["peer"], "heir": "aa:bb:cc:dd:ee:01", "addresses": 1024}

    api.answers["/ipam/rmpeer"] = rmpeer
    run = meshnet("rmpeer", "h3", "alive", "h4")
    assert run.out.splitlines() == [
        "h3: 1024 addresses reclaimed by aa:bb:cc:dd:ee:01",
        "h4: 1024 addresses reclaimed by aa:bb:cc:dd:ee:01",
    ]
    one_line_error(run, "alive: peer alive (aa:bb:cc:dd:ee:02) is reachable")
    assert [b["peer"] for b in api.bodies if b] == ["h3", "alive", "h4"]


def dead_socket(path: Path) -> Path:
    """An API socket file its router left behind: nobody listens on it."""
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
    return path


def test_reset_force_cleans_up_after_a_dead_router(
    meshnet: Callable[..., Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "peer-name").write_text("aa:bb:cc:dd:ee:07\n")
    api_socket = dead_socket(tmp_path / "api.sock")
    calls: list[tuple[Path, Path, Path | None]] = []
    monkeypatch.delenv("MESHNET_DOCKER_PLUGIN_DIR", raising=False)
    monkeypatch.delenv("MESHNET_NO_DOCKER", raising=False)

    def clean_up(state_dir: Path, socket_path: Path, plugin_socket: Path | None) -> Cleaned:
        calls.append((state_dir, socket_path, plugin_socket))
        return Cleaned(("vxlan-6784", "meshnet"), ("inet meshnet_dns",), ("peer-name",), ())

    monkeypatch.setattr(cleanup, "clean_up", clean_up)
    common = ("--state-dir", str(state), "--api-socket", str(api_socket))
    refused = meshnet("reset", *common)
    one_line_error(refused, "meshnet is not running", "reset --force")
    assert not calls
    run = meshnet("reset", "--force", *common)
    assert run.code == 0 and calls == [
        (state, api_socket, Path("/run/docker/plugins/meshnet.sock"))
    ]
    assert "links removed: vxlan-6784, meshnet" in run.out
    assert "meshnet rmpeer aa:bb:cc:dd:ee:07" in run.out
    monkeypatch.setenv("MESHNET_NO_DOCKER", "1")  # it ran without Docker: no plugin socket
    assert meshnet("reset", "--force", *common).code == 0
    assert calls[-1] == (state, api_socket, None)


def test_reset_force_says_what_it_could_not_remove(
    meshnet: Callable[..., Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = Cleaned((), (), (), ("table inet meshnet_dns: nft not found", "links: denied"))
    monkeypatch.setattr(cleanup, "clean_up", lambda *_: failed)
    run = meshnet("reset", "--force", "--state-dir", str(tmp_path), "--api-socket",
                  str(tmp_path / "none.sock"))  # fmt: skip
    one_line_error(run, "reset --force left: table inet meshnet_dns: nft not found; links")


def test_a_live_router_is_never_torn_down(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(tmp_path / "api.sock"))
        listening.listen()
        assert cleanup.listening(tmp_path / "api.sock")
    assert not cleanup.listening(tmp_path / "api.sock")  # closed: refused
    assert not cleanup.listening(tmp_path / "missing.sock")


def test_a_restarted_router_keeps_what_connect_and_forget_said(daemon: Daemon) -> None:
    """A real router (control plane only, in this namespace), stopped and launched again with
    the same command line, as systemd would."""
    launch_args = ("launch", "--port", str(daemon.port), "127.0.0.1:1", "127.0.0.1:2")

    def targets() -> set[str]:
        status = json.loads(daemon.meshnet("status", "--json").stdout)
        return set(status["targets"])

    assert daemon.meshnet(*launch_args).returncode == 0
    assert daemon.meshnet("connect", "127.0.0.1:3", "127.0.0.1:4").returncode == 0
    assert daemon.meshnet("forget", "127.0.0.1:1", "127.0.0.1:4").returncode == 0
    assert targets() == {"127.0.0.1:2", "127.0.0.1:3"}
    assert daemon.meshnet("stop").returncode == 0
    assert daemon.meshnet(*launch_args).returncode == 0
    assert targets() == {"127.0.0.1:2", "127.0.0.1:3"}  # not 1 again, 3 still

    replaced = daemon.meshnet("connect", "--replace", "127.0.0.1:5")
    assert replaced.stdout.splitlines() == [
        "127.0.0.1:2: forgotten",
        "127.0.0.1:3: forgotten",
        "127.0.0.1:5: added",
    ]
    assert daemon.meshnet("stop").returncode == 0
    assert daemon.meshnet(*launch_args).returncode == 0
    assert targets() == {"127.0.0.1:5"}

    # A peer without a port listens where we do (--port), as the launch peers.
    no_port = daemon.meshnet("connect", "192.0.2.9")
    assert no_port.stdout == f"192.0.2.9:{daemon.port}: added\n"
    assert daemon.meshnet("forget", "192.0.2.9").returncode == 0

    assert daemon.meshnet("stop").returncode == 0
    assert daemon.meshnet(*launch_args, "--no-resume").returncode == 0
    assert targets() == {"127.0.0.1:1", "127.0.0.1:2"}  # clean: the launch peers only
    assert daemon.meshnet("stop").returncode == 0
    assert daemon.meshnet(*launch_args).returncode == 0
    assert targets() == {"127.0.0.1:1", "127.0.0.1:2"}  # and the saved ones are gone for good


def test_the_background_router_logs_at_the_level_given(daemon: Daemon, tmp_path: Path) -> None:
    log_file = tmp_path / "state" / "meshnet.log"
    assert (
        daemon.meshnet("launch", "--port", str(daemon.port), "--log-level", "warning").returncode
        == 0
    )
    assert daemon.meshnet("stop").returncode == 0
    assert " INFO " not in log_file.read_text()
    # (Daemon adds --no-dataplane only after a leading "launch": never a bridge in this namespace)
    debug = ("--debug", "launch", "--port", str(daemon.port), "--no-dataplane")
    assert daemon.meshnet(*debug).returncode == 0
    assert daemon.meshnet("stop").returncode == 0
    text = log_file.read_text()
    assert " DEBUG meshnet.daemon: settings: Config(" in text and " INFO " in text


# --- 8. one shape for a bad address, in the kernel attach and the plugins too ---------------------

SHAPE = r"^bad address '[^']*': \S"


@pytest.mark.parametrize("text", ["10.32.0.5", "10.32.0.5/33", "nonsense/12", "224.0.0.1/4"])
def test_the_kernel_attach_words_a_bad_address_as_everywhere(text: str) -> None:
    with pytest.raises(UserError, match=SHAPE) as raised:
        attach_kernel._parse_addresses([text])
    assert str(raised.value).startswith(f"bad address '{text}': ")


@pytest.mark.parametrize("text", ["10.32.0", "fd00::x1", "x"])
def test_the_docker_plugin_words_a_bad_address_as_everywhere(text: str) -> None:
    with pytest.raises(PluginError, match=SHAPE):
        parse_address(text)
    with pytest.raises(PluginError, match=SHAPE):
        parse_pool(text, "", IPv4Network("10.32.0.0/12"), IPv4Network("10.32.0.0/12"))


@pytest.mark.parametrize("subnet", ["10.33.0.0/33", "nonsense", "fd00::/129"])
def test_the_cni_plugin_words_a_bad_address_as_everywhere(subnet: str) -> None:
    with pytest.raises(CniError) as raised:
        cni_spec._subnet(subnet)
    assert raised.value.msg.startswith(f"subnet: bad address '{subnet}': ")
