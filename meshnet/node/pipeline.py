"""Steps undone in reverse: how a use case stays all or nothing.

A use case records the undo of each step as the step completes. If a later step fails (or the
task is cancelled), the completed steps are undone in reverse order, each exactly once and
shielded from cancellation, and the original error is raised: an attach that fails in the data
plane gives its address back to IPAM, one that fails in isolation also removes its interface.
An undo that fails itself is logged, never raised over the error that caused it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

import trio

log = logging.getLogger("meshnet.node")

Undo = Callable[[], Awaitable[object]]


class Pipeline:
    """``async with Pipeline(nick) as steps: ...; steps.undo_with(...)`` after each step."""

    def __init__(self, nickname: str = "") -> None:
        self._nick = nickname
        self._undo: list[tuple[str, Undo]] = []

    def undo_with(self, what: str, undo: Undo) -> None:
        """The step ``what`` completed: ``undo`` reverts it if a later step fails."""
        self._undo.append((what, undo))

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        undo, self._undo = self._undo, []
        if exc is None:
            return
        with trio.CancelScope(shield=True):
            for what, step in reversed(undo):
                try:
                    await step()
                except Exception as e:  # the original error matters more: log this one
                    log.error("%s: could not undo %s: %s", self._nick, what, e, exc_info=e)
