"""Fixtures for tests against the real kernel: labs that are always torn down."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshnet.dataplane.kernel import netlink
from meshnet.lab import lab as lablib
from meshnet.lab import topology
from tests.conftest import unique_lab_name


def kernel_snapshot() -> tuple[list[str], list[str]]:
    """Namespaces and root-namespace links, to prove a test left nothing behind."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return netlink.list_namespaces(), sorted(
        line.split(":")[1].strip() for line in links.splitlines()
    )


_FAILED = pytest.StashKey[bool]()
LOG_TAIL = 40  # lines of each router's log shown when a test with a lab fails


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "setup":
        item.stash[_FAILED] = False  # a rerun starts afresh
    if report.outcome in ("failed", "rerun"):
        item.stash[_FAILED] = True
    return report


def show_router_logs(request: pytest.FixtureRequest, labs: list[str]) -> None:
    """The routers' warnings and the end of their logs, on the real stderr: a lab failure that
    only happens under CI load must be explainable from CI's output alone."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        for name in labs:
            for log in sorted((lablib.lab_root() / name / "hosts").glob("*/meshnet.log")):
                lines = log.read_text(errors="replace").splitlines()
                tail = lines[-LOG_TAIL:]
                warned = [x for x in lines[:-LOG_TAIL] if " WARNING " in x or " ERROR " in x]
                sys.stderr.write(f"\n--- {request.node.nodeid}: {log} ---\n")
                sys.stderr.write("\n".join([*warned[-20:], "...", *tail]) + "\n")


@pytest.fixture
def make_lab(request: pytest.FixtureRequest) -> Iterator[Callable[..., dict[str, Any]]]:
    """Build labs through meshnet.lab; every one is removed after the test, pass or fail (a
    failed test shows its routers' logs first)."""
    made: list[str] = []

    def make(
        shape: str | topology.Topology = "line",
        hosts: int = 3,
        containers: int = 1,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """A built-in shape, or a `Topology` as given."""
        name = unique_lab_name()
        made.append(name)
        plan = shape if isinstance(shape, topology.Topology) else None
        lablib.up(name, plan or topology.builtin(str(shape), hosts, containers), **kwargs)
        return lablib.status(name)

    yield make
    if request.node.stash.get(_FAILED, False):
        show_router_logs(request, made)
    for name in made:
        if (lablib.lab_root() / name).exists():
            lablib.down(name)


def take_inode(
    inode: tuple[int, int],
    make: Callable[[], str],
    remove: Callable[[str], bool],
    timeout: float = 2.0,
) -> str | None:
    """A new namespace (from ``make``) with the inode of one just removed; None if none got it
    in time (another process's namespace may have taken it: try again with another).

    The kernel hands out the lowest free inode, a removed namespace's only once its cleanup
    has run, a moment later: a namespace given a lower one fills a hole below it and is kept, one
    given a higher one came too early and is removed again.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        namespace = make()
        got = netlink.namespace_inode(namespace)
        if got == inode:
            return namespace
        if got > inode:
            remove(namespace)
            time.sleep(0.01)
    return None


def ns_run(namespace: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, *cmd], capture_output=True, text=True, timeout=timeout
    )


def can_ping(namespace: str, address: str) -> bool:
    return ns_run(namespace, "ping", "-c", "1", "-W", "1", address).returncode == 0


def rss_kib(pid: int) -> int:
    """A process's resident memory (VmRSS), KiB: what attack tests keep bounded."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")
