"""`meshnet report`, `meshnet tui` and `meshnet lab tui` as a user meets them without a daemon."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshnet.cli.report import fill_template
from meshnet.errors import UserError
from tests.conftest import run_meshnet
from tests.unit.test_cli import assert_one_line_error
from tests.unit.test_tui import recording


def test_format_fills_fields_from_the_report() -> None:
    report = recording()[-1]
    text = fill_template("{router[nickname]}\\t{router[peers]}\\n{dns[domain]}", report)
    assert text == "h1\t3\nmeshnet.local."
    with pytest.raises(UserError, match="the report has no 'nope'"):
        fill_template("{nope}", report)
    with pytest.raises(UserError, match="--format"):
        fill_template("{router[nickname]", report)


def test_no_daemon_is_one_line(tmp_path: Path) -> None:
    sock = str(tmp_path / "absent.sock")
    assert_one_line_error(run_meshnet("report", "--api-socket", sock), "not running", sock)
    assert_one_line_error(
        run_meshnet("report", "--json", "--format", "{x}", "--api-socket", sock), "exclude"
    )
    assert "--socket" in run_meshnet("tui", "--help").stdout
    assert_one_line_error(run_meshnet("tui", "--interval", "0"), "must be positive")


@pytest.mark.skipif(os.geteuid() != 0, reason="lab commands need root")
def test_lab_tui_without_the_lab_is_one_line() -> None:
    assert_one_line_error(run_meshnet("lab", "tui", "--name", "nosuchlab"), "nosuchlab")
