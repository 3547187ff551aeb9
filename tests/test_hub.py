"""The delivery seam: destinations to members, and the registry's first/last-member events
(what a broker subscribes on), over real connections."""

from __future__ import annotations

import json
from typing import Any

import pytest
from trio_websocket import open_websocket_url

from riverside_trio import (
    Accept,
    AuthRequest,
    Channel,
    Connection,
    Group,
    Handler,
    Name,
    Server,
    Session,
    User,
)
from riverside_trio.delivery.registry import Registry
from riverside_trio.destinations import Destination

from ._helpers import running, wait_until


class Recorder:
    """A membership listener that writes down what the registry tells it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Destination]] = []

    def first_member(self, destination: Destination) -> None:
        self.events.append(("first", destination))

    def last_member(self, destination: Destination) -> None:
        self.events.append(("last", destination))


class CommandHandler(Handler):
    """user and session from the query; each message is a command, answered with "ok"."""

    async def authenticate(self, req: AuthRequest) -> Accept:
        return Accept(user_id=req.query["user"], session_id=req.query.get("session", "s"))

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        op, arg = msg
        if op == "join":
            conn.join_channel(arg)
        elif op == "leave":
            conn.leave_channel(arg)
        elif op == "name":
            conn.register_name(arg)
        elif op == "unname":
            conn.unregister_name(arg)
        elif op == "group":
            conn.join_group(arg)
        elif op == "ungroup":
            conn.leave_group(arg)
        conn.send("ok")


async def command(ws: Any, op: str, arg: str = "") -> None:
    await ws.send_message(json.dumps([op, arg]))
    assert json.loads(await ws.get_message()) == "ok"


def listen(server: Server) -> Recorder:
    recorder = Recorder()
    server._core.registry.listener = recorder
    return recorder


async def test_a_destination_reports_its_first_and_last_local_member_once() -> None:
    async with running(CommandHandler) as server:
        events = listen(server).events
        url = server.url + "?user=alice&session="
        async with open_websocket_url(url + "phone") as phone:
            await command(phone, "join", "lobby")
            assert events == [
                ("first", User("alice")),
                ("first", Session("alice", "phone")),
                ("first", Channel("lobby")),
            ]
            async with open_websocket_url(url + "laptop") as laptop:
                await command(laptop, "join", "lobby")  # not the first: no event
                await command(laptop, "join", "lobby")  # a member already: no event
                assert events[3:] == [("first", Session("alice", "laptop"))]
                await command(laptop, "leave", "lobby")  # not the last: no event
                assert len(events) == 4
            await wait_until(lambda: server.connection_count == 1)
            assert events[4:] == [("last", Session("alice", "laptop"))]
            await command(phone, "leave", "lobby")
            assert events[5:] == [("last", Channel("lobby"))]
        await wait_until(lambda: server.connection_count == 0)
        assert events[6:] == [("last", User("alice")), ("last", Session("alice", "phone"))]


async def test_names_and_groups_report_first_and_last_and_a_closing_connection_leaves_all() -> None:
    async with running(CommandHandler) as server:
        events = listen(server).events
        async with open_websocket_url(server.url + "?user=bob") as ws:
            await command(ws, "name", "bob-console")
            await command(ws, "name", "bob-console")  # held already: no event
            await command(ws, "group", "admins")
            await command(ws, "join", "news")
            await command(ws, "unname", "bob-console")
            await command(ws, "name", "bob-console")
            del events[:2]  # the user's and session's first member
            assert events == [
                ("first", Name("bob-console")),
                ("first", Group("admins")),
                ("first", Channel("news")),
                ("last", Name("bob-console")),
                ("first", Name("bob-console")),
            ]
            del events[:]
        # The client closes: the connection leaves every destination at once.
        await wait_until(lambda: server.connection_count == 0)
        assert sorted(events, key=repr) == sorted(
            [
                ("last", User("bob")),
                ("last", Session("bob", "s")),
                ("last", Channel("news")),
                ("last", Name("bob-console")),
                ("last", Group("admins")),
            ],
            key=repr,
        )
        registry = server._core.registry
        assert (registry.users, registry.sessions, registry.channels) == ({}, {}, {})
        assert (registry.names, registry.groups) == ({}, {})


class Sink(Handler):
    """Messages are (destination kind, argument, body); infos are echoed to the client."""

    async def authenticate(self, req: AuthRequest) -> Accept:
        return Accept(user_id=req.query["user"])

    async def init(self, conn: Connection) -> None:
        conn.register_name(f"name-{conn.user_id}")
        conn.join_group("everyone")

    async def handle_info(self, info: Any, conn: Connection) -> None:
        conn.send({"info": info})


@pytest.mark.parametrize(
    ("destination", "reached"),
    [
        (Name("name-a"), ["a"]),
        ("name-b", ["b"]),
        (Group("everyone"), ["a", "b"]),
        (User("a"), ["a"]),
        (Name("nobody"), []),
        (Group("nobody"), []),
    ],
)
async def test_every_kind_of_destination_takes_messages_and_infos(
    destination: Destination, reached: list[str]
) -> None:
    async with (
        running(Sink) as server,
        open_websocket_url(server.url + "?user=a") as a,
        open_websocket_url(server.url + "?user=b") as b,
    ):
        await wait_until(lambda: len(server._core.registry.groups.get("everyone", ())) == 2)
        hub = server._core.hub
        assert hub.deliver(destination, "message") == len(reached)
        assert hub.send_info(destination, "news") == len(reached)
        for user, ws in (("a", a), ("b", b)):
            if user in reached:
                assert json.loads(await ws.get_message()) == "message"
                assert json.loads(await ws.get_message()) == {"info": "news"}
        # Nothing else arrived: a marker sent to everyone is the next message of each.
        assert server.deliver_user("a", "end") == 1
        assert server.deliver_user("b", "end") == 1
        assert json.loads(await a.get_message()) == "end"
        assert json.loads(await b.get_message()) == "end"


def test_an_unknown_destination_is_a_type_error_naming_what_was_given() -> None:
    with pytest.raises(TypeError, match="got int"):
        Registry().members(42)  # type: ignore[arg-type]
