"""Where the TUI's snapshots come from: the daemon's `/stream`, or a recording (tests, demos).

The app is given a source and only iterates it; a source that cannot reach the daemon raises
`SourceUnavailable` with a one-line reason, and the app retries later.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx

from meshnet.api.stream import FrameError, FrameReader


class SourceUnavailable(Exception):
    """The daemon is not there (yet, or any more); the message says why, in one line."""


class SnapshotSource(Protocol):
    description: str

    def snapshots(self) -> AsyncIterator[dict[str, Any]]: ...


class ApiSource:
    """Snapshots from a daemon's API socket: GET /stream, length-prefixed msgpack frames."""

    def __init__(self, socket_path: Path, interval: float = 1.0) -> None:
        self.socket_path = socket_path
        self.interval = interval
        self.description = str(socket_path)

    async def snapshots(self) -> AsyncIterator[dict[str, Any]]:
        if not self.socket_path.exists():
            raise SourceUnavailable(f"no API socket at {self.socket_path}")
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket_path))
        timeout = httpx.Timeout(10.0, read=max(10.0, 5 * self.interval))
        reader = FrameReader()
        try:
            async with (
                httpx.AsyncClient(transport=transport, timeout=timeout) as client,
                client.stream("GET", f"http://meshnet/stream?interval={self.interval}") as reply,
            ):
                if reply.status_code != 200:
                    raise SourceUnavailable(f"the daemon answered {reply.status_code}")
                async for chunk in reply.aiter_bytes():
                    reader.feed(chunk)
                    for snapshot in reader.frames():
                        yield snapshot
        except PermissionError:
            raise SourceUnavailable(f"permission denied on {self.socket_path}") from None
        except httpx.TransportError as e:
            raise SourceUnavailable(f"lost the daemon: {e or type(e).__name__}") from None
        except FrameError as e:
            raise SourceUnavailable(str(e)) from None
        raise SourceUnavailable("the daemon closed the stream")


class RecordedSource:
    """Plays snapshots back with a delay between them, then reports the daemon gone."""

    def __init__(self, snapshots: Sequence[dict[str, Any]], delay: float = 0.0) -> None:
        self.recorded = list(snapshots)
        self.delay = delay
        self.description = "recording"
        self.plays = 0

    async def snapshots(self) -> AsyncIterator[dict[str, Any]]:
        self.plays += 1
        for snapshot in self.recorded:
            yield snapshot
            await asyncio.sleep(self.delay)
        raise SourceUnavailable("end of the recording")


def load_recording(path: Path) -> list[dict[str, Any]]:
    """A recording: one JSON snapshot per line (as `meshnet report --json` prints, compacted)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
