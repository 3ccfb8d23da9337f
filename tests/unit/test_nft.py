"""The one nft runner, with fake `nft` and `nsenter` binaries on PATH (no root, no nftables)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnet.dataplane.kernel.nft import NftError, run_nft
from meshnet.errors import UserError


def fake_tool(bin_dir: Path, name: str, body: str) -> None:
    tool = bin_dir / name
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(0o755)


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", str(directory))
    return directory


def test_missing_nft_says_who_needs_it(bin_dir: Path) -> None:
    with pytest.raises(NftError) as caught:
        run_nft("list", "tables", needed_by="link loss")
    assert str(caught.value) == "nft not found: link loss needs nftables (apt-get install nftables)"
    assert isinstance(caught.value, UserError)


def test_runs_nft_with_the_script_on_stdin_and_returns_its_output(bin_dir: Path) -> None:
    fake_tool(bin_dir, "nft", 'echo "args: $*"; /bin/cat')
    assert run_nft("-f", "-", script="table inet t {}\n") == "args: -f -\ntable inet t {}\n"


def test_a_refusal_is_one_line(bin_dir: Path) -> None:
    fake_tool(bin_dir, "nft", "printf 'Error: syntax error\\n  table x\\n  ^^^\\n' >&2; exit 1")
    with pytest.raises(NftError, match=r"^nft failed: Error: syntax error table x \^\^\^$"):
        run_nft("-f", "-", script="table x")


def test_in_a_namespace_it_runs_under_nsenter_and_says_where_it_failed(bin_dir: Path) -> None:
    fake_tool(bin_dir, "nft", "exit 0")  # only looked up; nsenter stands in for it
    fake_tool(bin_dir, "nsenter", 'echo "$*"')
    assert run_nft("list", "tables", namespace="h1") == "--net=/var/run/netns/h1 nft list tables\n"
    fake_tool(bin_dir, "nsenter", "echo 'no such namespace' >&2; exit 1")
    with pytest.raises(NftError, match=r"^nft failed in h1: no such namespace$"):
        run_nft("list", "tables", namespace="h1")
