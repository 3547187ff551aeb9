"""Delivery to me, a user (all devices), a session and a channel, over real sockets."""

from __future__ import annotations

import json
import socket

import pytest
import trio
from trio_websocket import open_websocket_url

from riverside_trio import Accept, AuthRequest, Connection, Handler

from ._helpers import NO_TIMERS, RawClient, running, wait_until, ws_open


class RoomHandler(Handler):
    """user_id and session_id come from the query; messages are commands."""

    async def authenticate(self, req: AuthRequest) -> Accept:
        return Accept(user_id=req.query["user"], session_id=req.query.get("session"))

    async def handle_message(self, msg: dict, conn: Connection) -> None:
        op = msg["op"]
        if op == "join":
            conn.send({"joined": conn.join_channel(msg["channel"])})
        elif op == "leave":
            conn.send({"left": conn.leave_channel(msg["channel"])})
        elif op == "channel":
            conn.send({"reached": conn.deliver_channel(msg["channel"], msg["body"])})
        elif op == "user":
            conn.send({"reached": conn.deliver_user(msg["user"], msg["body"])})
        elif op == "session":
            conn.send({"reached": conn.deliver_session(msg["user"], msg["session"], msg["body"])})
        elif op == "me":
            conn.send({"reached": conn.deliver_me(msg["body"])})


async def recv(ws) -> object:
    return json.loads(await ws.get_message())


def url(server, user: str, session: str | None = None) -> str:
    q = f"?user={user}" + (f"&session={session}" if session else "")
    return server.url + q


async def test_deliver_user_reaches_every_device_of_that_user_only() -> None:
    async with (
        running(RoomHandler) as server,
        open_websocket_url(url(server, "alice", "phone")) as phone,
        open_websocket_url(url(server, "alice", "laptop")) as laptop,
        open_websocket_url(url(server, "bob")) as bob,
    ):
        await bob.send_message(json.dumps({"op": "user", "user": "alice", "body": "hi"}))
        assert await recv(phone) == "hi"
        assert await recv(laptop) == "hi"
        assert await recv(bob) == {"reached": 2}
        await bob.send_message(json.dumps({"op": "user", "user": "nobody", "body": 1}))
        assert await recv(bob) == {"reached": 0}


async def test_deliver_session_reaches_one_session() -> None:
    async with (
        running(RoomHandler) as server,
        open_websocket_url(url(server, "alice", "phone")) as phone,
        open_websocket_url(url(server, "alice", "laptop")) as laptop,
    ):
        msg = {"op": "session", "user": "alice", "session": "laptop", "body": [1, 2]}
        await phone.send_message(json.dumps(msg))
        assert await recv(laptop) == [1, 2]
        assert await recv(phone) == {"reached": 1}


async def test_channel_join_twice_delivers_once_and_leave_stops_delivery() -> None:
    async with (
        running(RoomHandler) as server,
        open_websocket_url(url(server, "a")) as a,
        open_websocket_url(url(server, "b")) as b,
    ):
        for ws in (a, b):
            await ws.send_message(json.dumps({"op": "join", "channel": "room"}))
            assert await recv(ws) == {"joined": True}
        await a.send_message(json.dumps({"op": "join", "channel": "room"}))
        assert await recv(a) == {"joined": False}
        await a.send_message(json.dumps({"op": "channel", "channel": "room", "body": "x"}))
        # the sender is a member too: exactly one copy each, then the count
        assert await recv(a) == "x"
        assert await recv(a) == {"reached": 2}
        assert await recv(b) == "x"
        await b.send_message(json.dumps({"op": "leave", "channel": "room"}))
        assert await recv(b) == {"left": True}
        await a.send_message(json.dumps({"op": "channel", "channel": "room", "body": "y"}))
        assert await recv(a) == "y"
        assert await recv(a) == {"reached": 1}
        await b.send_message(json.dumps({"op": "me", "body": "only me"}))
        assert await recv(b) == "only me"  # not "y": b left before it was sent
        assert await recv(b) == {"reached": 1}


async def test_disconnect_leaves_every_channel() -> None:
    async with running(RoomHandler) as server, open_websocket_url(url(server, "a")) as a:
        async with open_websocket_url(url(server, "b")) as b:
            await b.send_message(json.dumps({"op": "join", "channel": "room"}))
            assert await recv(b) == {"joined": True}
        # b is gone: wait until the server has noticed
        await wait_until(lambda: server.connection_count == 1)
        await a.send_message(json.dumps({"op": "channel", "channel": "room", "body": "z"}))
        assert await recv(a) == {"reached": 0}
        assert server.deliver_channel("room", "q") == 0
        assert server.deliver_user("a", "from outside") == 1
        assert await recv(a) == "from outside"


# Coalescing: what one task step sends leaves in one write per client, at the end of the step.


async def test_a_burst_from_one_task_step_leaves_when_the_step_ends_in_order() -> None:
    async with running(RoomHandler, **NO_TIMERS) as server:
        client = await RawClient.connect(server)
        status, _, _ = await client.upgrade("/ws?user=burst")
        assert status == 101
        await wait_until(lambda: server.connection_count == 1)
        peek = socket.fromfd(client.stream.socket.fileno(), socket.AF_INET, socket.SOCK_STREAM)
        try:
            for i in range(50):  # fewer than a corked outbox holds before it sends early
                assert server.deliver_user("burst", i) == 1
            with pytest.raises(BlockingIOError):  # held back until this task step ends
                peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        finally:
            peek.close()
        with trio.fail_after(5):
            got = [json.loads((await client.read_frame())[1]) for _ in range(50)]
        assert got == list(range(50))
        await client.stream.aclose()


class SendThenWait(Handler):
    """Sends, then blocks inside handle_message until the test lets it go."""

    def __init__(self) -> None:
        self.release = trio.Event()

    async def handle_message(self, msg: object, conn: Connection) -> None:
        conn.send({"echo": msg})
        await self.release.wait()


async def test_a_send_leaves_as_soon_as_the_handler_waits() -> None:
    handler = SendThenWait()
    async with running(handler, **NO_TIMERS) as server, ws_open(server.url) as ws:
        await ws.send_message('"hi"')
        with trio.fail_after(5):  # the handler is still inside handle_message
            assert json.loads(await ws.get_message()) == {"echo": "hi"}
        handler.release.set()
