"""The command line: readable help, and one line on stderr for every user error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshnet import __version__
from tests.conftest import run_meshnet, unique_lab_name


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_version_and_help() -> None:
    assert run_meshnet("--version").stdout.strip() == f"meshnet {__version__}"
    help_text = run_meshnet("--help").stdout
    assert "lab" in help_text and "virtual Ethernet" in help_text
    lab_help = run_meshnet("lab", "up", "--help").stdout
    for option in ("--hosts", "--topology", "--containers", "--mtu", "--name", "--overlay"):
        assert option in lab_help


def test_usage_errors_are_one_line() -> None:
    assert_one_line_error(
        run_meshnet("lab", "up", "--hosts", "many"), "'--hosts'", "is not a valid integer"
    )
    assert_one_line_error(run_meshnet("nonsense"), "No such command")
    assert_one_line_error(run_meshnet("lab", "link", "h1", "h2", "sideways"), "sideways")
    assert_one_line_error(run_meshnet("lab", "up", "--overlay", "ipv5"), "'ipv5' is not one of")


@pytest.mark.skipif(os.geteuid() != 0, reason="the checks after the root check need root")
def test_bad_values_are_one_line() -> None:
    assert_one_line_error(run_meshnet("lab", "up", "--topology", "mesh"), "unknown topology 'mesh'")
    assert_one_line_error(run_meshnet("lab", "up", "--hosts", "0"), "--hosts must be between")
    assert_one_line_error(run_meshnet("lab", "up", "--name", "Bad_Name"), "bad lab name")
    assert_one_line_error(run_meshnet("lab", "up", "--topology", "/nonexistent.toml"), "not found")
    # Refused before anything is built: without routers nothing would give IPv6 addresses.
    no_routers = run_meshnet(
        "lab", "up", "--name", unique_lab_name(), "--no-daemons", "--overlay", "ipv6"
    )
    assert_one_line_error(no_routers, "--overlay ipv6 needs routers attaching the containers")
    narrow = run_meshnet(
        "lab", "up", "--name", unique_lab_name(), "--mtu", "1400", "--overlay", "dual"
    )
    assert_one_line_error(narrow, "--mtu 1400 leaves containers 1254 bytes, and IPv6 needs 1280")
    assert_one_line_error(
        run_meshnet("lab", "status", "--name", "nosuchlab"), "no lab named 'nosuchlab'"
    )


def test_malformed_topology_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[hosts.a\n")
    if os.geteuid() == 0:
        assert_one_line_error(
            run_meshnet("lab", "up", "--topology", str(bad)), "malformed topology file"
        )


def test_without_root_lab_up_says_so(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        if subprocess.run(["which", "setpriv"], capture_output=True).returncode != 0:
            pytest.skip("setpriv is needed to drop root")
        cmd = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "meshnet",
            "lab",
            "up",
        ]
    else:
        cmd = [sys.executable, "-m", "meshnet", "lab", "up"]
    env = {**os.environ, "HOME": str(tmp_path)}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert_one_line_error(result, "needs root")


def test_debug_shows_the_traceback() -> None:
    result = run_meshnet("--debug", "lab", "status", "--name", "nosuchlab")
    if os.geteuid() == 0:
        assert result.returncode != 0 and "Traceback" in result.stderr


#: What only the daemon (and the commands that start or look inside it) may load.
DAEMON_MODULES = ("trio", "pyroute2", "nacl", "textual", "meshnet.daemon", "meshnet.dataplane")


@pytest.mark.parametrize("args", [["--help"], ["status", "--api-socket", "/nonexistent/sock"]])
def test_the_cli_starts_without_the_daemons_modules(args: list[str]) -> None:
    code = (
        "import sys\n"
        "from meshnet.cli import main\n"
        f"main({args!r})\n"
        f"loaded = [m for m in sys.modules if m.startswith({DAEMON_MODULES!r})]\n"
        "print(loaded, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stderr.strip().splitlines()[-1] == "[]"


def test_every_command_has_help() -> None:
    for args in (
        ["launch"], ["stop"], ["connect"], ["forget"], ["attach"], ["detach"], ["ps"],
        ["reset"], ["rmpeer"], ["dns-add"], ["dns-remove"], ["dns-lookup"], ["expose"], ["hide"],
        ["report"], ["tui"], ["run"], ["dns-args"], ["lab", "tui"], ["lab", "up"],
        ["status"], ["status", "peers"], ["status", "ipam"], ["status", "dns"],
        ["status", "ramps"], ["status", "docker"], ["status", "dataplane"],
    ):  # fmt: skip
        result = run_meshnet(*args, "--help")
        assert result.returncode == 0 and "Usage: meshnet" in result.stdout, args


def test_bad_launch_options_get_one_line(tmp_path: Path) -> None:
    common = ("--state-dir", str(tmp_path), "--api-socket", str(tmp_path / "api.sock"))
    nan = run_meshnet("launch", "--foreground", "--heartbeat-interval", "nan", *common)
    assert_one_line_error(nan, "--heartbeat-interval", "not a number of seconds")
    loopback = run_meshnet("launch", "--ipalloc-range", "127.0.0.0/8", *common)
    assert_one_line_error(loopback, "--ipalloc-range", "loopback")
