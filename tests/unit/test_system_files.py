"""The unit and environment file a system-wide install writes (scripts/install-system.sh)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnet.cli.launch import launch
from meshnet.cli.launch_options import LAUNCH_OPTIONS
from meshnet.cli.system_files import env_file_text, main, unit_text

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_unit_is_the_one_installed() -> None:
    assert (ROOT / "examples" / "meshnet.service").read_text() == unit_text()


def test_the_unit_runs_launch_in_the_foreground_with_the_environment_file() -> None:
    lines = unit_text("/x/meshnet", "/etc/x.env").splitlines()
    assert "ExecStart=/x/meshnet launch --foreground $MESHNET_PEERS" in lines
    assert "EnvironmentFile=-/etc/x.env" in lines
    assert "StateDirectory=meshnet" in lines and "RuntimeDirectory=meshnet" in lines


def test_the_environment_file_names_every_launch_variable() -> None:
    text = env_file_text()
    assignments = {
        line.lstrip("#").split("=", 1)[0]
        for line in text.splitlines()
        if "=" in line and line.lstrip("#").startswith("MESHNET_")
    }
    every = {o.envvar for o in LAUNCH_OPTIONS} | {"MESHNET_PASSWORD_FILE", "MESHNET_PEERS"}
    launch_variables = {
        p.envvar
        for p in launch.params
        if isinstance(p.envvar, str) and p.envvar != "MESHNET_FOREGROUND"
    }
    assert every <= assignments and launch_variables <= assignments
    # Only the peers are set; every other setting is commented out with its default.
    assert [line for line in text.splitlines() if line.startswith("MESHNET_")] == [
        'MESHNET_PEERS=""'
    ]
    assert "#MESHNET_PORT=6783" in text and "#MESHNET_NO_FASTDP=1" in text


def test_the_module_prints_both_and_refuses_anything_else(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["unit"]) == 0 and "ExecStart=" in capsys.readouterr().out
    assert main(["env", "/etc/x"]) == 0 and capsys.readouterr().out.startswith("# /etc/x:")
    assert main(["nonsense"]) == 2 and "usage:" in capsys.readouterr().err
