"""Fixtures for tests against the real kernel: labs that are always torn down."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from meshnet.dataplane import netlink
from meshnet.lab import lab as lablib
from meshnet.lab import topology
from tests.conftest import unique_lab_name


def kernel_snapshot() -> tuple[list[str], list[str]]:
    """Namespaces and root-namespace links, to prove a test left nothing behind."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return netlink.list_namespaces(), sorted(
        line.split(":")[1].strip() for line in links.splitlines()
    )


@pytest.fixture
def make_lab() -> Iterator[Callable[..., dict[str, Any]]]:
    """Build labs through meshnet.lab; every one is removed after the test, pass or fail."""
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
    for name in made:
        if (lablib.lab_root() / name).exists():
            lablib.down(name)


def ns_run(namespace: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, *cmd], capture_output=True, text=True, timeout=timeout
    )


def can_ping(namespace: str, address: str) -> bool:
    return ns_run(namespace, "ping", "-c", "1", "-W", "1", address).returncode == 0
