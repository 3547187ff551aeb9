"""The status page (``status_token``, ``status_path``) over real HTTP: off by default, the
token by query or header, 401 without it, and the JSON counts it shows."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from riverside_trio import Config, ConfigError, Connection, Handler, HTTPRequest, HTTPResponse

from ._helpers import NO_TIMERS, RawClient, running, wait_until, ws_open

TOKEN = "s3cret-status"


class Rooms(Handler):
    """Joins the channel it is told; echoes; its own page at /status when the status page
    is off (the path is then the handler's)."""

    async def handle_http(self, req: HTTPRequest) -> HTTPResponse | None:
        if req.path == "/status":
            return HTTPResponse(body="the handler's own /status\n")
        return None

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        if isinstance(msg, dict) and "join" in msg:
            conn.join_channel(msg["join"])
        conn.send(msg)


async def get(port: int, target: str, *headers: str, method: str = "GET") -> tuple[int, Any, Any]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = RawClient(stream)
    lines = "".join(f"{h}\r\n" for h in headers)
    await client.send(f"{method} {target} HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode())
    status, head, body = await client.read_head()
    await client.aclose()
    return status, head, body


async def test_the_status_page_is_off_by_default() -> None:
    assert Config().status_token is None
    async with running(Rooms(), **NO_TIMERS) as server:
        status, _, body = await get(server.port, f"/status?token={TOKEN}")
        assert (status, body) == (200, b"the handler's own /status\n")
        status, _, _ = await get(server.port, "/status.json")
        assert status == 404


@pytest.mark.parametrize(
    "credentials",
    [(), ("Authorization: Bearer wrong",), ("Authorization: Basic czNjcmV0",)],
    ids=["none", "wrong", "not-bearer"],
)
@pytest.mark.parametrize("path", ["/status", "/status.json", "/status?token=wrong"])
async def test_without_the_token_the_status_page_answers_401(
    path: str, credentials: tuple[str, ...]
) -> None:
    async with running(Rooms(), status_token=TOKEN, **NO_TIMERS) as server:
        status, head, body = await get(server.port, path, *credentials)
        assert status == 401
        assert head["www-authenticate"] == 'Bearer realm="status"'
        assert head["cache-control"] == "no-store"
        assert b"status_token" in body and b"?token=" in body and b"Bearer" in body
        assert TOKEN.encode() not in body


async def test_the_token_opens_the_page_and_its_data() -> None:
    async with running(Rooms(), status_token=TOKEN, **NO_TIMERS) as server:
        status, head, body = await get(server.port, f"/status?token={TOKEN}")
        assert status == 200
        assert head["content-type"] == "text/html; charset=utf-8"
        assert head["referrer-policy"] == "no-referrer"
        assert b"riverside-trio status" in body
        status, head, body = await get(
            server.port, "/status.json", f"Authorization: Bearer {TOKEN}"
        )
        assert status == 200
        assert head["content-type"] == "application/json"
        assert json.loads(body)["node_id"] == server.node_id
        status, _, body = await get(server.port, f"/status.json?token={TOKEN}", method="HEAD")
        assert (status, body) == (200, b"")
        status, head, _ = await get(server.port, f"/status.json?token={TOKEN}", method="POST")
        assert status == 405 and head["allow"] == "GET, HEAD"


async def test_the_data_counts_connections_users_channels_and_messages() -> None:
    async with (
        running(Rooms(), status_token=TOKEN, status_path="/ops/live", **NO_TIMERS) as server,
        ws_open(server.url + "?a") as a1,
        ws_open(server.url + "?b") as a2,
        ws_open(server.url) as b,
    ):
        for ws, room in ((a1, "r1"), (a2, "r2"), (b, "r2")):
            await ws.send_message(json.dumps({"join": room}))
            assert json.loads(await ws.get_message()) == {"join": room}
        await wait_until(lambda: server.metrics.outgoing_text == 3)
        status, _, body = await get(server.port, f"/ops/live.json?token={TOKEN}")
        assert status == 200
        data = json.loads(body)
        assert data["connections"] == 3
        assert data["users"] == 3  # the default authenticate: a random user each
        assert data["channels"] == 2
        assert data["messages_in"] == 3
        assert data["messages_out"] == 3
        assert data["dropped_messages"] == 0
        assert data["shed_connections"] == 0
        assert data["cluster"] is None  # no broker
        assert data["uptime"] >= 0
        status, _, _ = await get(server.port, f"/status.json?token={TOKEN}")
        assert status == 404  # moved to status_path


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"status_token": "  "}, "status_token: is empty"),
        ({"status_token": "x", "status_path": "/health"}, "already the health_path"),
        ({"status_token": "x", "status_path": "status"}, "status_path: must be"),
    ],
)
def test_status_settings_are_checked(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as exc_info:
        Config(**settings)
    assert message in str(exc_info.value)
