"""How the CLI prints tables: fitted to a terminal, or unwrapped when piped to a file or program."""

from __future__ import annotations

import sys

from rich.console import Console


def console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # No emoji codes: a peer name like "96:cd:46:..." would show ":cd:" as a disc.
    if stream.isatty():
        return Console(stderr=stderr, emoji=False)
    return Console(stderr=stderr, width=200, no_color=True, emoji=False)
