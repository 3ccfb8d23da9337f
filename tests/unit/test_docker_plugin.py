"""The plugin endpoint as dockerd sees it: JSON in, JSON out, 404 for what it does not implement,
``{"Err": ...}`` for every refusal, and never an exception out of the app."""

from __future__ import annotations

import json
import stat
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.integrations.docker.ipamdriver import PluginError
from meshnet.integrations.docker.plugin import CONTENT_TYPE, MAX_BODY, PluginApp, serve_plugin


class Answer:
    def __init__(self, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = body
        self.json = json.loads(body)


async def request(app: PluginApp, path: str, *chunks: bytes, method: str = "POST") -> Answer:
    """One HTTP request through the ASGI app; ``chunks`` arrive as separate body messages."""
    pending = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks or (b"",))
    ]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": method, "path": path}, receive, send)
    start, body = sent
    assert start["type"] == "http.response.start" and body["type"] == "http.response.body"
    return Answer(start["status"], dict(start["headers"]), body["body"])


def ask(app: PluginApp, path: str, *chunks: bytes, method: str = "POST") -> Answer:
    async def go() -> Answer:
        return await request(app, path, *chunks, method=method)

    return trio.run(go)


def refuse(_: dict[str, Any]) -> Any:
    raise PluginError("subnet 1.2.3.0/24 is outside meshnet's allocation range")


def crash(_: dict[str, Any]) -> Any:
    raise KeyError("a bug")


async def slow_echo(body: dict[str, Any]) -> Any:
    await trio.sleep(0)
    return {"Got": body}


def make_app() -> PluginApp:
    return PluginApp(
        {
            "/NetworkDriver.Echo": lambda body: {"Got": body},
            "/NetworkDriver.AsyncEcho": slow_echo,
            "/IpamDriver.RequestPool": refuse,
            "/NetworkDriver.Join": crash,
        },
        implements=["NetworkDriver", "IpamDriver"],
    )


def test_activate_says_what_the_plugin_implements() -> None:
    answer = ask(make_app(), "/Plugin.Activate")
    assert answer.status == 200
    assert answer.json == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert answer.headers[b"content-type"] == CONTENT_TYPE
    assert answer.headers[b"content-length"] == str(len(answer.raw)).encode()


def test_an_unknown_method_is_404_so_dockerd_takes_it_as_not_implemented() -> None:
    app = make_app()
    answer = ask(app, "/NetworkDriver.AllocateNetwork", b"{}")
    assert answer.status == 404
    assert answer.json == {
        "Err": "/NetworkDriver.AllocateNetwork is not implemented by the meshnet plugin"
    }
    assert ask(app, "/").status == 404
    assert app.statistics().calls == {} and app.statistics().errors == 0  # not a refusal


def test_handlers_get_the_json_object_sync_or_async() -> None:
    app = make_app()
    body = {"NetworkID": "n1", "Options": {"a": [1, 2]}}
    assert ask(app, "/NetworkDriver.Echo", json.dumps(body).encode()).json == {"Got": body}
    assert ask(app, "/NetworkDriver.AsyncEcho", json.dumps(body).encode()).json == {"Got": body}
    assert app.statistics().calls == {"NetworkDriver.Echo": 1, "NetworkDriver.AsyncEcho": 1}


@pytest.mark.parametrize("raw", [b"", b"  \n", b"null"])
def test_no_body_is_an_empty_request(raw: bytes) -> None:
    assert ask(make_app(), "/NetworkDriver.Echo", raw).json == {"Got": {}}


def test_a_refusal_is_err_with_the_message_and_counted() -> None:
    app = make_app()
    answer = ask(app, "/IpamDriver.RequestPool", b'{"Pool": "1.2.3.0/24"}')
    assert answer.status == 500
    assert answer.json == {"Err": "subnet 1.2.3.0/24 is outside meshnet's allocation range"}
    stats = app.statistics()
    assert stats.errors == 1 and stats.calls == {"IpamDriver.RequestPool": 1}
    assert stats.last_error == (
        "IpamDriver.RequestPool: subnet 1.2.3.0/24 is outside meshnet's allocation range"
    )


def test_a_bug_in_a_handler_is_an_err_too_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app()
    answer = ask(app, "/NetworkDriver.Join", b"{}")
    assert answer.status == 500
    assert answer.json == {"Err": "internal error in meshnet: KeyError: 'a bug'"}
    assert "NetworkDriver.Join failed" in caplog.text and "Traceback" in caplog.text


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "request body is not JSON"),
        (b"\xff\xfe", "request body is not JSON"),
        (b"[1, 2]", "request body must be a JSON object"),
        (b'"text"', "request body must be a JSON object"),
        (b"42", "request body must be a JSON object"),
    ],
)
def test_a_body_that_is_no_json_object_is_a_bad_request(raw: bytes, message: str) -> None:
    app = make_app()
    answer = ask(app, "/NetworkDriver.Echo", raw)
    assert answer.status == 400 and answer.json == {"Err": message}
    assert app.statistics().errors == 1


def test_a_body_too_large_is_refused_even_in_pieces() -> None:
    app = make_app()
    whole = ask(app, "/NetworkDriver.Echo", b" " * (MAX_BODY + 1))
    assert whole.status == 400 and whole.json == {"Err": "request body too large"}
    piece = b" " * (MAX_BODY // 4)
    pieces = ask(app, "/NetworkDriver.Echo", *[piece] * 4, b"{}")
    assert pieces.status == 400 and pieces.json == {"Err": "request body too large"}
    # Exactly the limit is fine.
    padded = b"{}" + b" " * (MAX_BODY - 2)
    assert ask(app, "/NetworkDriver.Echo", padded).json == {"Got": {}}


def test_only_post_is_a_call() -> None:
    answer = ask(make_app(), "/Plugin.Activate", method="GET")
    assert answer.status == 400 and answer.json == {"Err": "GET not allowed: plugin calls are POST"}


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_whatever_the_body_the_answer_is_a_json_object(raw: bytes) -> None:
    answer = ask(make_app(), "/NetworkDriver.Echo", raw)
    assert isinstance(answer.json, dict)
    assert (answer.status, sorted(answer.json)) in [(200, ["Got"]), (400, ["Err"])]


@given(st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=10), max_size=5))
def test_any_json_object_reaches_the_handler_as_sent(body: dict[str, Any]) -> None:
    assert ask(make_app(), "/NetworkDriver.Echo", json.dumps(body).encode()).json == {"Got": body}


def test_lifespan_is_acknowledged() -> None:
    sent: list[str] = []
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> MutableMapping[str, Any]:
        return incoming.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message["type"])

    async def go() -> None:
        await make_app()({"type": "lifespan"}, receive, send)

    trio.run(go)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


@pytest.mark.trio
async def test_served_on_a_unix_socket_only_root_may_open_and_removed_after(
    tmp_path: Path,
) -> None:
    path = tmp_path / "plugins" / "meshnet.sock"  # the directory is made if missing
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_plugin, make_app(), path)
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        transport = httpx.AsyncHTTPTransport(uds=str(path))
        async with httpx.AsyncClient(transport=transport, base_url="http://plugin") as client:
            activate = await client.post("/Plugin.Activate", json={})
            unknown = await client.post("/VolumeDriver.Create", json={})
            refused = await client.post("/IpamDriver.RequestPool", content=b"{nope")
        nursery.cancel_scope.cancel()
    assert activate.json() == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert unknown.status_code == 404 and "Err" in unknown.json()
    assert refused.status_code == 400 and refused.json() == {"Err": "request body is not JSON"}
    assert not path.exists()
