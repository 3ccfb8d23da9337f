"""The API's unix socket server: a client slower than hypercorn's default is still answered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from meshnet.api.asgi import SOCKET_KEEP_ALIVE, serve_on_socket


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def ask_after(path: Path, delay: float) -> bytes:
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        await trio.sleep(delay)  # connected, the request not sent yet (a starved client)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: meshnet\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := await stream.receive_some(4096):
            answer += chunk
        return answer


@pytest.mark.parametrize("delay", [1.0, 10.0, SOCKET_KEEP_ALIVE - 5])
def test_a_request_sent_late_is_still_answered(tmp_path: Path, delay: float) -> None:
    path = tmp_path / "api.sock"

    async def main() -> bytes:
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: serve_on_socket(
                hello, path, logger="test", task_status=task_status
            ))  # fmt: skip
            answer = await ask_after(path, delay)
            nursery.cancel_scope.cancel()
        return answer

    answer = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert answer.startswith(b"HTTP/1.1 200") and b"hello" in answer
