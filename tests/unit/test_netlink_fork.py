"""pyroute2's namespace helper must not run the daemon's signal handlers (no root needed).

`IPRoute(netns=...)` forks a helper and stops it with SIGTERM. In the daemon, SIGTERM has
trio's Python handler, which in a forked child can wait forever for a lock another thread held
at the fork, and the parent waits forever for the child.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from types import FrameType

import pytest
from pyroute2.process import ChildProcess

from meshnet.dataplane.kernel import netlink


def _dispositions() -> bytes:
    """In the child: what SIGTERM and SIGINT do there."""
    term = signal.getsignal(signal.SIGTERM)
    interrupt = signal.getsignal(signal.SIGINT)
    return b"%d %d" % (
        term is signal.SIG_DFL,
        interrupt is signal.default_int_handler,
    )


@pytest.fixture
def daemon_handlers() -> Iterator[None]:
    """Python handlers for SIGTERM and SIGINT, as trio's are in the daemon."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise AssertionError("the daemon's handler ran")

    old_term = signal.signal(signal.SIGTERM, handler)
    old_int = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)


def test_the_forked_netns_helper_has_default_sigterm_and_sigint(daemon_handlers: None) -> None:
    assert netlink.NETNS_DIR  # importing meshnet.dataplane.kernel.netlink configures pyroute2
    with ChildProcess(target=_dispositions, args=[]) as child:
        assert child.mode == "fork"
        assert child.get_data(timeout=30) == b"1 1"
