"""Shared fixtures: a private lab root per run, the `netns` marker's skip rule, and
hypothesis's settings."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import settings

# No time limit per example: hypothesis's default (200 ms) is a timed assert, and one that
# fails only when the machine is busy (seen with two cores shared with a 100-router lab).
settings.register_profile("meshnet", deadline=None)
settings.load_profile("meshnet")

# Every test run keeps its labs under its own root, so a user's running labs are never touched
# and "the only lab running" means the test's own.
if "MESHNET_LAB_ROOT" not in os.environ:
    _OWN_LAB_ROOT: str | None = tempfile.mkdtemp(prefix="meshnet-test-labs-")
    os.environ["MESHNET_LAB_ROOT"] = _OWN_LAB_ROOT
else:
    _OWN_LAB_ROOT = None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The run's lab root goes when its labs have (a lab left behind keeps it, to be seen)."""
    if _OWN_LAB_ROOT is not None:
        with contextlib.suppress(OSError):
            os.rmdir(_OWN_LAB_ROOT)


@functools.cache
def netns_unavailable() -> str | None:
    """Why namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    name = f"mn-probe{os.getpid()}"
    result = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if result.returncode != 0:
        return f"cannot create a network namespace: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], check=False)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/net/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.netns)
            # Labs share two cores with the routers, dockerds and clients they start: a test
            # that fails gets one more run, and the summary counts it ("1 rerun"). A real
            # failure fails twice.
            item.add_marker(pytest.mark.flaky(reruns=1, reruns_delay=2))
        if item.get_closest_marker("netns") is not None:
            reason = netns_unavailable()
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A rerun test's first failure, in full: a flaky test must still be seen, and fixed."""
    if report.outcome == "rerun":  # type: ignore[comparison-overlap]
        sys.stderr.write(f"\n{report.nodeid} failed, and runs again:\n{report.longreprtext}\n")


def unique_lab_name() -> str:
    return "t" + uuid.uuid4().hex[:8]


def run_meshnet(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The real command line, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "meshnet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture
def lab_root() -> Path:
    return Path(os.environ["MESHNET_LAB_ROOT"])
