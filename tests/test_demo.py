"""The built-in demo (``riverside-trio serve`` without a handler) over real WebSocket
clients: its greeting, the plain JSON protocol it always spoke, the error answers to what it
cannot understand, direct messages, and the requests of its chat page (sessions, presence,
who is in a room) with the Trio client."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection

from riverside_trio import RequestError, Server, open_client
from riverside_trio._demo import HELP, DemoHandler, demo_page
from riverside_trio.server._status import status_page

from ._helpers import NO_TIMERS, RawClient, running, wait_until, ws_open


@asynccontextmanager
async def demo() -> AsyncIterator[Server]:
    with trio.fail_after(30):
        async with running(DemoHandler(), **NO_TIMERS) as server:
            yield server


@asynccontextmanager
async def plain(server: Server, query: str = "") -> AsyncIterator[WebSocketConnection]:
    """A trio-websocket client that has read the greeting."""
    async with ws_open(f"ws://127.0.0.1:{server.port}/ws{query}") as ws:
        welcome = json.loads(await ws.get_message())
        assert welcome["type"] == "welcome"
        yield ws


async def exchange(ws: WebSocketConnection, message: object) -> Any:
    await ws.send_message(message if isinstance(message, str | bytes) else json.dumps(message))
    return json.loads(await ws.get_message())


async def test_a_new_connection_is_greeted_with_how_to_use_the_demo() -> None:
    async with demo() as server, ws_open(f"ws://127.0.0.1:{server.port}/ws") as ws:
        welcome = json.loads(await ws.get_message())
        assert welcome == {"type": "welcome", "user": welcome["user"], "help": HELP}
        assert len(welcome["user"]) == 40  # anonymous: a random id
        for example in ('"type": "join"', '"type": "say"', '"type": "dm"', '"name": "who"'):
            assert example in welcome["help"]


async def test_the_plain_json_protocol_works_as_before() -> None:
    """echo, join, say and leave: the same replies, and nothing else arrives in between."""
    async with demo() as server, plain(server) as alice, plain(server) as bob:
        echo = {"hello": "world", "n": [1, 2.5, None]}
        assert await exchange(alice, echo) == echo
        assert await exchange(alice, "[1, 2]") == [1, 2]  # any JSON without "type"
        typed_echo = {"type": "echo", "text": "héllo"}
        assert await exchange(alice, typed_echo) == typed_echo
        joined = {"type": "joined", "channel": "lobby"}
        assert await exchange(alice, {"type": "join", "channel": "lobby"}) == joined
        assert await exchange(bob, {"type": "join", "channel": "lobby"}) == joined
        said = await exchange(alice, {"type": "say", "channel": "lobby", "text": "hi"})
        assert said == {"type": "said", "channel": "lobby", "from": said["from"], "text": "hi"}
        assert json.loads(await bob.get_message()) == said
        left = {"type": "left", "channel": "lobby"}
        assert await exchange(bob, {"type": "leave", "channel": "lobby"}) == left
        said = await exchange(alice, {"type": "say", "channel": "lobby", "text": "alone"})
        assert said["text"] == "alone"
        assert await exchange(bob, {"n": 1}) == {"n": 1}  # bob got nothing from the room


@pytest.mark.parametrize(
    ("message", "error", "detail"),
    [
        ("hello there", "not_json", "this is not JSON (invalid JSON: Expecting value"),
        ("{'single': 'quotes'}", "not_json", "this is not JSON (invalid JSON:"),
        (b"\x00\x01binary", "binary", "binary frames are not understood here"),
        (
            {"type": "shout", "text": "hi"},
            "unknown_type",
            "unknown type 'shout'; known: join, leave, say, dm, echo",
        ),
        ({"type": 7}, "unknown_type", "unknown type 7"),
        ({"type": "join"}, "bad_message", 'join is written {"type": "join", "channel"'),
        ({"type": "say", "channel": "x"}, "bad_message", "say is written"),
        ({"type": "dm", "to": "", "text": "x"}, "bad_message", "dm is written"),
    ],
)
async def test_what_the_demo_cannot_understand_gets_an_error_reply(
    message: object, error: str, detail: str
) -> None:
    async with demo() as server, plain(server) as ws:
        reply = await exchange(ws, message)
        assert reply["type"] == "error"
        assert reply["error"] == error
        assert reply["message"].startswith(detail), reply["message"]
        assert reply["help"] == HELP
        assert await exchange(ws, {"still": "open"}) == {"still": "open"}
    assert server.metrics.invalid_messages["undecodable"] == 0  # answered, not dropped


async def test_a_direct_message_reaches_every_connection_of_the_user_and_the_sender() -> None:
    async with (
        demo() as server,
        plain(server, "?user=alice") as alice,
        plain(server, "?user=bob") as bob,
        plain(server, "?user=bob") as bob_phone,
        plain(server, "?user=carol") as carol,
    ):
        dm = {"type": "dm", "from": "alice", "to": "bob", "text": "psst"}
        assert await exchange(alice, {"type": "dm", "to": "bob", "text": "psst"}) == dm
        assert json.loads(await bob.get_message()) == dm
        assert json.loads(await bob_phone.get_message()) == dm
        assert await exchange(carol, {"ping": 1}) == {"ping": 1}  # carol got nothing
        to_self = {"type": "dm", "from": "bob", "to": "bob", "text": "note"}
        assert await exchange(bob, {"type": "dm", "to": "bob", "text": "note"}) == to_self
        assert json.loads(await bob_phone.get_message()) == to_self  # once, not twice
        assert await exchange(bob_phone, {"ping": 2}) == {"ping": 2}


async def test_a_user_name_that_is_not_a_name_is_refused_with_400() -> None:
    async with demo() as server:
        client = await RawClient.connect(server)
        status, _, body = await client.upgrade("/ws?user=no%20spaces%21")
        assert status == 400
        assert b"user must be 1 to 32 letters" in body
        await client.aclose()


async def test_the_chat_page_is_served_at_the_root() -> None:
    async with demo() as server:
        for path, expected in (("/", 200), ("/nothing-here", 404)):
            client = await RawClient.connect(server)
            await client.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            status, headers, body = await client.read_head()
            assert status == expected
            if expected == 200:
                assert headers["content-type"] == "text/html; charset=utf-8"
                assert b'import { RiversideClient } from "/riverside.js"' in body
            await client.aclose()


async def test_page_requests_sessions_presence_who_and_a_restore_after_a_reconnect() -> None:
    async with demo() as server:
        url = f"ws://127.0.0.1:{server.port}/ws"
        async with (
            open_client(url + "?user=alice", backoff_min=0.01, backoff_max=0.05) as alice,
            open_client(url + "?user=bob") as bob,
        ):
            presence: list[Any] = []

            @alice.on_signal("presence")
            async def seen(data: Any) -> None:
                presence.append(data)

            assert (await alice.receive())["type"] == "welcome"
            hello = await alice.request("hello", timeout=10)
            assert hello == {"user": "alice", "rooms": [], "restored": False}
            key = alice.session.key if alice.session else None
            assert key is not None and len(key) == 64
            assert await alice.request("join", "lobby", timeout=10) == ["alice"]
            assert await alice.request("join", "kitchen", timeout=10) == ["alice"]
            assert await bob.request("join", "lobby", timeout=10) == ["alice", "bob"]
            await wait_until(lambda: len(presence) == 3)
            assert presence == [
                {"channel": "lobby", "user": "alice", "event": "joined"},
                {"channel": "kitchen", "user": "alice", "event": "joined"},
                {"channel": "lobby", "user": "bob", "event": "joined"},
            ]
            assert await alice.request("who", "lobby", timeout=10) == ["alice", "bob"]
            with pytest.raises(RequestError) as exc_info:
                await alice.request("who", "", timeout=10)
            assert exc_info.value.code == "bad_room"

            # The server drops alice: the client reconnects, restores the session, and
            # hello puts it back in its rooms (bob sees alice leave and come back).
            assert server.disconnect("alice", code=1012, reason="restart") == 1
            await wait_until(lambda: alice.connects == 2 and alice.connected)
            assert alice.session is not None and alice.session.key == key
            hello = await alice.request("hello", timeout=10)
            assert hello == {"user": "alice", "rooms": ["kitchen", "lobby"], "restored": True}
            assert await bob.request("who", "kitchen", timeout=10) == ["alice"]
            await bob.send({"type": "say", "channel": "lobby", "text": "welcome back"})
            said = await alice.receive()
            while said.get("type") == "welcome":  # the new connection's greeting first
                said = await alice.receive()
            assert said == {
                "type": "said",
                "channel": "lobby",
                "from": "bob",
                "text": "welcome back",
            }
            assert await alice.request("leave", "kitchen", timeout=10) is None
            assert await bob.request("who", "kitchen", timeout=10) == []


async def test_a_plain_join_is_seen_by_the_page_users_of_the_room() -> None:
    async with demo() as server:
        url = f"ws://127.0.0.1:{server.port}/ws"
        async with open_client(url + "?user=page") as page, plain(server, "?user=legacy") as ws:
            presence: list[Any] = []

            @page.on_signal("presence")
            async def seen(data: Any) -> None:
                presence.append(data)

            assert await page.request("join", "lobby", timeout=10) == ["page"]
            await exchange(ws, {"type": "join", "channel": "lobby"})
            await wait_until(lambda: len(presence) == 2)
            assert await page.request("who", "lobby", timeout=10) == ["legacy", "page"]
            await ws.aclose()
            await wait_until(lambda: len(presence) == 3)
            assert presence == [
                {"channel": "lobby", "user": "page", "event": "joined"},
                {"channel": "lobby", "user": "legacy", "event": "joined"},
                {"channel": "lobby", "user": "legacy", "event": "left"},
            ]
            assert await page.request("who", "lobby", timeout=10) == ["page"]


def test_the_pages_are_package_data() -> None:
    """The wheel carries the pages: pyproject's package-data patterns match every file in
    ``_static/`` (the pages are read with importlib.resources, as from an installed wheel)."""
    root = Path(__file__).resolve().parents[1]
    with open(root / "pyproject.toml", "rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["riverside_trio"]
    package = root / "src" / "riverside_trio"
    static = sorted(p.relative_to(package).as_posix() for p in (package / "_static").iterdir())
    assert static == ["_static/demo.html", "_static/status.html"]
    for name in static:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
    assert demo_page().startswith(b"<!doctype html>")
    assert status_page().startswith(b"<!doctype html>")
